/*
 * strata/protect.h: the protections every tier path uses.
 *
 *   circuit breaker   closed -> open -> half-open over a sliding time window,
 *                     by failure rate and by slow-call rate (Resilience4j's model)
 *   bulkhead          a bound on concurrent calls (database loads)
 *   token bucket      a local rate limiter (the distributed one is GCRA in Redis)
 *   GCRA              the generic cell rate algorithm as one Redis Lua call
 *                     (as redis-cell does), using Redis TIME
 *   TTL jitter        spreads expiries so keys written together do not expire together
 *   XFetch            probabilistic early refresh (Vattani, Chierichetti, Lowenstein:
 *                     "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015)
 *   Bloom filter      "certainly absent" answers for keys that do not exist
 *
 * Time is always passed in (`now_ns` from a strata_clock) so tests move it.
 * Every object here is thread-safe unless its doc says otherwise.
 */
#ifndef STRATA_PROTECT_H
#define STRATA_PROTECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/buf.h"
#include "strata/metrics.h"

/* ---- circuit breaker ------------------------------------------------------ */

typedef enum strata_breaker_state {
    STRATA_BREAKER_CLOSED = 0,
    STRATA_BREAKER_OPEN = 1,
    STRATA_BREAKER_HALF_OPEN = 2,
} strata_breaker_state;

typedef struct strata_breaker_config {
    uint32_t window_ms;        /* sliding window length (default 10 000) */
    uint32_t min_calls;        /* no decision below this many calls in the window (default 20) */
    uint32_t failure_rate_pct; /* open at or above this failure rate (default 50) */
    uint32_t slow_call_ms;     /* a call at least this long is slow (default 100) */
    uint32_t slow_rate_pct;    /* open at or above this slow-call rate (default 80; 0 = off) */
    uint32_t open_ms;          /* how long to stay open before probing (default 2 000) */
    uint32_t half_open_probes; /* calls let through while half-open (default 5) */
} strata_breaker_config;

/** Fills the defaults above (sized for a cache tier in front of a database). */
void strata_breaker_config_default(strata_breaker_config *cfg);

typedef struct strata_breaker strata_breaker;

/**
 * Creates a breaker named `name` (used as the metric label); registers
 * strata_breaker_state{name} and strata_breaker_calls_total{name,outcome}
 * in `metrics` when non-NULL.  NULL on ENOMEM or invalid config (zero window,
 * rates above 100).
 */
strata_breaker *strata_breaker_create(const char *name, const strata_breaker_config *cfg,
                                      strata_metrics *metrics);
void strata_breaker_destroy(strata_breaker **b);

/**
 * Asks to make a call at `now_ns`.  STRATA_OK: go ahead, then report it with
 * strata_breaker_record().  STRATA_EBREAKER: open (or half-open with all
 * probes out): fail fast or serve stale.
 */
int strata_breaker_acquire(strata_breaker *b, uint64_t now_ns);

/** Reports the outcome of an acquired call: its duration and whether it failed. */
void strata_breaker_record(strata_breaker *b, uint64_t now_ns, uint64_t duration_ns, bool failed);

strata_breaker_state strata_breaker_get_state(strata_breaker *b, uint64_t now_ns);
const char *strata_breaker_state_name(strata_breaker_state s);

/* ---- bulkhead -------------------------------------------------------------- */

typedef struct strata_bulkhead strata_bulkhead;

/** At most `max` concurrent holders.  NULL on ENOMEM or max == 0. */
strata_bulkhead *strata_bulkhead_create(uint32_t max);
void strata_bulkhead_destroy(strata_bulkhead **b);
/** Non-blocking: STRATA_OK (a slot is held) or STRATA_EBACKPRESSURE. */
int strata_bulkhead_try_acquire(strata_bulkhead *b);
void strata_bulkhead_release(strata_bulkhead *b);
uint32_t strata_bulkhead_in_use(strata_bulkhead *b);

/* ---- token bucket ------------------------------------------------------------ */

typedef struct strata_token_bucket strata_token_bucket;

/** `rate_per_sec` tokens per second, up to `burst`; starts full.  NULL on bad args/ENOMEM. */
strata_token_bucket *strata_token_bucket_create(double rate_per_sec, double burst, uint64_t now_ns);
void strata_token_bucket_destroy(strata_token_bucket **tb);
/**
 * Takes n tokens at now_ns: STRATA_OK, or STRATA_ELIMITED with
 * *retry_after_ns (when non-NULL) set to the wait until n tokens exist.
 * A request for more than `burst` tokens is STRATA_EINVAL.
 */
int strata_token_bucket_take(strata_token_bucket *tb, double n, uint64_t now_ns,
                             uint64_t *retry_after_ns);

/* ---- GCRA in Redis ------------------------------------------------------------- */

/*
 * The script is embedded as "gcra.lua" in strata_lib_lua_table (see
 * strata/embedded.h).  Call it with
 *   KEYS[1] = the limiter key (one per user/route; carry a hash tag in Cluster)
 *   ARGV    = emission interval in microseconds (period / rate),
 *             burst tolerance in microseconds (interval * (burst - 1)),
 *             cost (usually 1)
 * It replies {allowed (0/1), remaining, retry_after_us, reset_after_us} and
 * stores the theoretical arrival time with a PEXPIRE, using Redis TIME so all
 * Strata servers share one clock.
 */
typedef struct strata_gcra_result {
    bool allowed;
    int64_t remaining;      /* requests still allowed right now */
    int64_t retry_after_us; /* when refused: wait this long; -1 when allowed */
    int64_t reset_after_us; /* until the limiter is back to full burst */
} strata_gcra_result;

/** Name of the embedded script. */
#define STRATA_GCRA_SCRIPT "gcra.lua"

/**
 * Computes the script's ARGV for `rate` requests per `period_ms` with
 * `burst` requests allowed at once.  STRATA_EINVAL for zero/negative values.
 */
int strata_gcra_args(int64_t rate, int64_t period_ms, int64_t burst, int64_t cost,
                     char argv_out[3][24]);

/**
 * Composes a script that calls the GCRA itself: appends to *out the
 * definition of `strata_gcra(key, interval_us, tau_us, cost)` (the part of
 * gcra.lua above its call) followed by `script`.  Lets a script put the rate
 * limit and its own write in one call when both keys share a slot.
 */
int strata_gcra_compose(const char *script, strata_buf *out);

/** Parses the script's reply (four integers); STRATA_EPROTO if malformed. */
int strata_gcra_parse(const long long reply[4], size_t n, strata_gcra_result *out);

/* ---- TTL jitter and XFetch ---------------------------------------------------- */

/**
 * A TTL spread uniformly over [ttl*(1-pct/100), ttl*(1+pct/100)] using the
 * caller's random 64-bit value `rnd`; pct is clamped to 0..100 and the
 * result is at least 1.
 */
uint64_t strata_ttl_jitter(uint64_t ttl, uint32_t pct, uint64_t rnd);

/**
 * XFetch: true when a value that took `delta_ns` to compute and expires at
 * `expiry_ns` should be recomputed early at `now_ns`:
 *     now - delta * beta * ln(u) >= expiry,   u uniform in (0, 1] from `rnd`.
 * beta = 1.0 is the paper's optimum; > 1 favours earlier refreshes.
 */
bool strata_xfetch_should_refresh(uint64_t now_ns, uint64_t expiry_ns, uint64_t delta_ns,
                                  double beta, uint64_t rnd);

/** A fast thread-local PRNG (xoshiro256**), seeded per thread from getrandom(). */
uint64_t strata_rand64(void);

/* ---- Bloom filter ----------------------------------------------------------------- */

typedef struct strata_bloom strata_bloom;

/**
 * A filter sized for `expected` keys at false-positive rate `fp_rate`
 * (0 < fp_rate < 1): m = -n ln p / (ln 2)^2 bits rounded up to a multiple of
 * 64, k = round(m/n ln 2) hashes (1..16).  NULL on bad args or ENOMEM.
 */
strata_bloom *strata_bloom_create(uint64_t expected, double fp_rate);
void strata_bloom_destroy(strata_bloom **b);
uint64_t strata_bloom_bits(const strata_bloom *b);
uint32_t strata_bloom_hashes(const strata_bloom *b);

/**
 * The k bit positions of a key (double hashing over XXH3-128), written to
 * pos[0..k).  The same positions are what the Redis-kept copy sets with
 * SETBIT inside the insert script, so every server agrees bit for bit.
 */
uint32_t strata_bloom_positions(const strata_bloom *b, const void *key, size_t len, uint64_t *pos);

/** Adds a key (thread-safe: atomic OR). */
void strata_bloom_add(strata_bloom *b, const void *key, size_t len);
/** False means certainly absent; true means maybe present. */
bool strata_bloom_maybe_contains(const strata_bloom *b, const void *key, size_t len);

/**
 * The size a filter for `expected` keys at `fp_rate` gets (what
 * strata_bloom_create would choose), without allocating it.  STRATA_EINVAL
 * on the same bad arguments create refuses.
 */
int strata_bloom_size(uint64_t expected, double fp_rate, uint64_t *bits, uint32_t *hashes);

/** strata_bloom_positions for a filter of `bits` bits and `hashes` hashes (no filter needed). */
uint32_t strata_bloom_positions_mk(uint64_t bits, uint32_t hashes, const void *key, size_t len,
                                   uint64_t *pos);

/**
 * Membership test against raw bytes in Redis bitmap order (a GET of the
 * key SETBIT wrote), for a filter of `bits` bits and `hashes` hashes; bytes
 * beyond `len` count as zero.
 */
bool strata_bloom_bytes_maybe_contains(const void *bytes, size_t len, uint64_t bits,
                                       uint32_t hashes, const void *key, size_t klen);

/**
 * Replaces the bits with a Redis bitmap (GET of the key SETBIT wrote: bit i
 * of the filter is bit (7 - i%8) of byte i/8, Redis's order).  A shorter
 * bitmap is zero-extended; a longer one is STRATA_ERANGE.
 */
int strata_bloom_load_redis_bitmap(strata_bloom *b, const void *bytes, size_t len);

#endif
