/*
 * strata/l1.h: the L1 in-process cache.
 *
 * A concurrent, bounded map from byte keys to byte values, the first tier of
 * every Strata read path.  Properties (each one tested in tests/unit/l1/):
 *
 *   - Reads never take a lock.  Lookups run inside an epoch-based reclamation
 *     (EBR) section over an open-addressing table of tagged pointers; a hit is
 *     recorded into a per-thread-stripe lossy ring buffer that the policy
 *     drains in batches (Caffeine's "read buffer").  Writes (set, invalidate,
 *     load completion, eviction) are serialised on one writer lock.
 *   - Keys and values are copied into the entry (one allocation).  Readers
 *     either copy the value out (strata_l1_get_copy / _get_buf) or take a
 *     reference (strata_l1_acquire ... strata_l1_release): an entry evicted or
 *     replaced while referenced stays valid until its last release.
 *   - Bounded by cost: each entry costs 1 (WEIGH_ENTRIES), its key + value +
 *     header bytes (WEIGH_BYTES), or what the caller passes per set.  Once a
 *     set returns, the total cost is <= capacity (the honest bound).
 *   - Eviction is W-TinyLFU with an adaptive window (default) or plain LRU.
 *   - Per-entry TTL (soft = fresh until, hard = usable-as-stale until), with
 *     jitter for loaded entries, reaped by a hierarchical timer wheel and
 *     checked on every read.
 *   - Asynchronous get_or_load with singleflight, negative caching,
 *     refresh-ahead (XFetch) and stale-while-revalidate / stale-if-error.
 *   - Invalidation by key, prefix or all wins over any in-flight load.
 *   - An eviction listener told the cause; stats in the metrics registry.
 *
 * Threads: every function is safe from any thread unless noted.  Callbacks
 * (loader, done, listener) are never called with an internal lock held, so
 * they may call back into the cache.
 *
 * Allocation goes through strata_malloc; any failed allocation makes the
 * call return STRATA_ENOMEM and leaves the cache as it was.
 */
#ifndef STRATA_L1_H
#define STRATA_L1_H

#include <stddef.h>
#include <stdint.h>

#include "strata/buf.h"
#include "strata/clock.h"
#include "strata/metrics.h"

typedef struct strata_l1 strata_l1;
/** A cached entry.  Immutable once published; reference-counted. */
typedef struct strata_l1_entry strata_l1_entry;
/** The completion handle of one load (see strata_l1_get_or_load). */
typedef struct strata_l1_load strata_l1_load;

/** Eviction policy. */
typedef enum strata_l1_policy {
    STRATA_L1_WTINYLFU = 0,       /* W-TinyLFU, adaptive window (the default) */
    STRATA_L1_LRU = 1,            /* plain LRU, for workloads known to be recency-only */
    STRATA_L1_WTINYLFU_FIXED = 2, /* W-TinyLFU with a fixed window (no hill climbing) */
} strata_l1_policy;

/** How the cost of an entry is computed when a set does not give one. */
typedef enum strata_l1_weigh {
    STRATA_L1_WEIGH_ENTRIES = 0, /* cost 1: capacity is a number of entries */
    STRATA_L1_WEIGH_BYTES = 1,   /* key + value + STRATA_L1_ENTRY_OVERHEAD bytes */
} strata_l1_weigh;

/** The bytes WEIGH_BYTES charges per entry beyond key and value. */
#define STRATA_L1_ENTRY_OVERHEAD 64u /* measured 63.3 at 100k entries: see docs/notes/l1.md */

/** Why an entry left the cache (eviction listener, stats). */
typedef enum strata_l1_cause {
    STRATA_L1_CAUSE_SIZE = 0,        /* evicted by the policy to stay within capacity */
    STRATA_L1_CAUSE_EXPIRED = 1,     /* its hard TTL passed */
    STRATA_L1_CAUSE_INVALIDATED = 2, /* strata_l1_invalidate* or strata_l1_clear */
    STRATA_L1_CAUSE_REPLACED = 3,    /* a set or load stored a new value for its key */
} strata_l1_cause;
#define STRATA_L1_CAUSE__COUNT 4

/** What a read found (non-negative return values of the get functions). */
typedef enum strata_l1_outcome {
    STRATA_L1_HIT = 0,      /* a fresh value */
    STRATA_L1_STALE = 1,    /* a value past its soft TTL but before its hard TTL */
    STRATA_L1_NEGATIVE = 2, /* a cached failure (negative caching): strata_l1_entry_status() */
    STRATA_L1_PENDING = 3,  /* get_or_load only: `done` will be called with the load's result */
} strata_l1_outcome;

/**
 * Eviction listener: called once for every entry that leaves the cache, on the
 * thread whose call removed it, after the cache's lock is released.  `e` is
 * borrowed for the call (strata_l1_acquire_entry it to keep it).
 */
typedef void (*strata_l1_listener_fn)(void *ctx, const strata_l1_entry *e, strata_l1_cause cause);

/** When a set of an absent key may skip the writer lock (strata_l1_config.fast_insert). */
typedef enum strata_l1_fast_insert {
    STRATA_L1_FAST_INSERT_AUTO = 0, /* once the writer lock has been seen contended */
    STRATA_L1_FAST_INSERT_OFF = 1,  /* never: every insert evicts under the writer lock */
    STRATA_L1_FAST_INSERT_ON = 2,   /* from the start */
} strata_l1_fast_insert;

/** Where a cache's deferred maintenance runs (strata_l1_config.executor).
 * execute(ctx, fn, arg) must call fn(arg) exactly once, soon, on any thread
 * (a worker thread, a pool); it may also call it before returning.  The cache
 * calls execute with no lock of its own held, and has at most a few tasks in
 * flight; strata_l1_destroy() waits for them. */
typedef struct strata_l1_executor {
    void (*execute)(void *ctx, void (*fn)(void *arg), void *arg);
    void *ctx;
} strata_l1_executor;

/** Cache configuration; start from strata_l1_config_init(). */
typedef struct strata_l1_config {
    uint64_t capacity;         /* maximum total cost, > 0 */
    strata_l1_weigh weigh;     /* default cost of an entry */
    uint64_t expected_entries; /* table/sketch sizing hint for WEIGH_BYTES (0 = capacity / 256) */
    strata_l1_policy policy;
    double window_pct;        /* initial (or fixed) window share, 0 < w < 1; default 0.01 */
    int doorkeeper;           /* TinyLFU doorkeeper (Bloom filter before the sketch); default 0:
                                 measured, it costs up to 4.8 points (docs/notes/l1.md) */
    strata_clock *clock;      /* borrowed; NULL = strata_clock_system() */
    strata_metrics *metrics;  /* borrowed, must outlive the cache; NULL = no registration */
    const char *name;         /* metric label value cache="<name>"; copied; NULL = "l1" */
    uint64_t ttl_ns;          /* default TTL of strata_l1_set (0 = none) */
    uint64_t load_ttl_ns;     /* default TTL of loaded values (0 = ttl_ns) */
    unsigned jitter_pct;      /* +-% applied to loaded entries' TTL; default 10 (0..50) */
    uint64_t stale_ns;        /* stale window after the soft TTL of loaded values (SWR); 0 = off */
    uint64_t negative_ttl_ns; /* TTL of cached load failures; 0 = negative caching off */
    double refresh_beta;      /* XFetch beta for refresh-ahead of loaded values; 0 = off */
    strata_l1_listener_fn listener; /* may be NULL */
    void *listener_ctx;
    int fast_replace; /* default 1: a set that replaces a present key's value at the same cost,
                         neither old nor new value with a TTL, takes only the key's segment
                         lock; the policy applies the replacement later (docs/notes/l1.md D15).
                         Ignored (off) when a listener is set: the listener's REPLACED call
                         then always happens before the set returns. */
    strata_l1_fast_insert fast_insert; /* with fast_replace: when a set without TTL of an
                         absent key takes only its segment lock while the cache has room for
                         it (D19); default AUTO: once the writer lock was seen contended. */
    uint64_t sketch_seed;        /* seed of the key hash (table, sketch, sampling), the TinyLFU
                         sketch's hash and the random admission; default 0 = a fresh one per
                         cache from getrandom(2), as Caffeine 2.6.2 draws one per
                         FrequencySketch.  Why per cache: with a known, fixed hash an attacker
                         can compute keys whose sketch counters are a victim key's and request
                         them to inflate its frequency (a cold key of theirs then wins
                         admission, or a victim is never evicted: admission poisoning), or
                         keys that pile into one probe run of the table.  Nonzero = that
                         seed: every policy decision repeats exactly (tests, reproducible
                         benchmarks; strata_l1_sketch_seed() tells the seed a cache drew).
                         Hit ratios depend on the seed by up to a few points on small caches
                         (docs/notes/l1.md D21). */
    strata_l1_executor executor; /* default {NULL}: maintenance (applying buffered reads and
                         writes to the policy, expiry, reclamation) runs on the threads that
                         use the cache, when a read buffer is half full or a write calls for
                         it.  With execute set, those calls hand it to the executor instead,
                         as Caffeine does with its executor (default: ForkJoinPool's common
                         pool), so a reader never runs it; a set that takes the writer lock
                         still evicts down to the capacity before it returns (the bound
                         holds), without first applying the buffered reads.  The listener
                         then also runs on the executor's thread, for the evictions a task
                         makes (docs/notes/l1.md D25). */
} strata_l1_config;

/** Per-set options (NULL = defaults). */
typedef struct strata_l1_set_opts {
    uint64_t ttl_ns;   /* soft TTL (fresh until now + ttl); 0 = config default */
    uint64_t stale_ns; /* extra time the value may be served stale; hard = soft + stale */
    uint32_t cost;     /* 0 = by the config's weigh */
    int jitter;        /* apply the config's jitter_pct to ttl_ns */
    int no_ttl;        /* ignore every default TTL: the entry never expires */
} strata_l1_set_opts;

/** Counters (monotonic since create) and the current size. */
typedef struct strata_l1_stats {
    uint64_t hits, misses, stale_hits, negative_hits;
    uint64_t loads, load_failures, loads_dropped, load_joins, refreshes;
    uint64_t evictions[STRATA_L1_CAUSE__COUNT]; /* by cause */
    uint64_t entries, cost, capacity;
    uint64_t window_max;    /* current W-TinyLFU window size (cost units) */
    uint64_t fast_replaces; /* sets that took the fast replace path (also counted as REPLACED) */
    uint64_t fast_inserts;  /* sets of an absent key that took the fast path (D19) */
} strata_l1_stats;

/** Fills cfg with the defaults (capacity 10000 entries, W-TinyLFU adaptive). */
void strata_l1_config_init(strata_l1_config *cfg);

/**
 * Creates a cache.  Returns STRATA_OK and *out, STRATA_EINVAL for a bad
 * config (capacity 0, window_pct out of (0,1), jitter > 50), STRATA_ENOMEM.
 */
int strata_l1_create(const strata_l1_config *cfg, strata_l1 **out);

/**
 * Destroys the cache and sets *c = NULL (NULL is a no-op).  No other thread
 * may use the cache during or after the call; no load may be in flight.
 * References still held stay valid until released.
 */
void strata_l1_destroy(strata_l1 **c);

/**
 * Stores key -> value (both copied).  Replaces any current value (listener:
 * REPLACED) and wins over a load in flight for the key (its result is
 * dropped).  Evicts as needed before returning.  Returns STRATA_OK,
 * STRATA_EINVAL (key NULL/empty, key > 64 KiB), STRATA_ETOOBIG (cost above
 * capacity, or value >= 2 GiB), STRATA_ENOMEM.
 */
int strata_l1_set(strata_l1 *c, const void *key, size_t klen, const void *val, size_t vlen,
                  const strata_l1_set_opts *opts);

/**
 * Copy-out read.  Returns an outcome (HIT, STALE, NEGATIVE) and copies the
 * value into buf when it fits (*vlen = value length either way; when it does
 * not fit returns STRATA_ERANGE and copies nothing); STRATA_ENOTFOUND when
 * absent or past its hard TTL.  vlen may be NULL when buf is NULL.
 */
int strata_l1_get_copy(strata_l1 *c, const void *key, size_t klen, void *buf, size_t cap,
                       size_t *vlen);

/** Copy-out read appending the value to out (see strata_l1_get_copy); ENOMEM if out cannot grow. */
int strata_l1_get_buf(strata_l1 *c, const void *key, size_t klen, strata_buf *out);

/**
 * Reference read: on HIT / STALE / NEGATIVE sets *e to a reference the
 * caller must give back with strata_l1_release(); STRATA_ENOTFOUND otherwise.
 */
int strata_l1_acquire(strata_l1 *c, const void *key, size_t klen, strata_l1_entry **e);

/** Takes one more reference to an entry the caller already holds (or is lent). */
strata_l1_entry *strata_l1_acquire_entry(const strata_l1_entry *e);

/** Gives back a reference; *e = NULL.  The entry is freed after its last release. */
void strata_l1_release(strata_l1_entry **e);

/** Entry accessors: borrowed pointers, valid while the reference is held. */
const void *strata_l1_entry_key(const strata_l1_entry *e, size_t *klen);
const void *strata_l1_entry_value(const strata_l1_entry *e, size_t *vlen);
/** STRATA_OK for a value, the cached error for a negative entry. */
int strata_l1_entry_status(const strata_l1_entry *e);

/** Removes key (listener: INVALIDATED) and drops any in-flight load's result.  OK or ENOTFOUND. */
int strata_l1_invalidate(strata_l1 *c, const void *key, size_t klen);
/** Removes every key starting with prefix (and drops matching loads); returns the count removed. */
int64_t strata_l1_invalidate_prefix(strata_l1 *c, const void *prefix, size_t plen);
/** Removes everything and drops every in-flight load; returns the count removed. */
int64_t strata_l1_clear(strata_l1 *c);

/*
 * Loading.
 *
 * A loader is started with a completion handle and must call
 * strata_l1_load_complete() exactly once, from any thread, at any later
 * time (or before it returns).  The library never blocks on it.
 */

/** Starts a load of key; ld stays valid until strata_l1_load_complete(ld, ...). */
typedef void (*strata_l1_loader_fn)(void *loader_ctx, strata_l1_load *ld, const void *key,
                                    size_t klen);

/**
 * A waiter's completion.  status STRATA_OK: `e` holds the value, outcome HIT
 * (freshly loaded) or STALE (the load failed and stale-if-error served the
 * old value).  An error status: the loader's error (or STRATA_ENOMEM), e is
 * NULL, outcome NEGATIVE when the failure is now cached (negative caching) or
 * PENDING when nothing was cached.  `e`, when not NULL, is a reference the
 * callee owns and must release.  Called on the thread that completed the
 * load, with no lock held; the server layer hands it to its own loop.
 */
typedef void (*strata_l1_done_fn)(void *ud, int status, strata_l1_outcome outcome,
                                  strata_l1_entry *e);

/**
 * Reads key; on a miss joins the in-flight load of key or starts `loader`
 * (singleflight: concurrent misses run it once).  Returns:
 *   HIT / STALE / NEGATIVE with *e = a reference (release it); `done` is not
 *     called.  STALE (past the soft TTL) and an XFetch early refresh start a
 *     background reload that callers do not wait for;
 *   PENDING: `done(ud, ...)` will be called exactly once, possibly before this
 *     function returns (a loader that completes synchronously);
 *   an error (STRATA_EINVAL, STRATA_ENOMEM): done will never be called.
 */
int strata_l1_get_or_load(strata_l1 *c, const void *key, size_t klen, strata_l1_loader_fn loader,
                          void *loader_ctx, strata_l1_done_fn done, void *ud, strata_l1_entry **e);

/** The key a load is for (borrowed, valid until the load completes). */
const void *strata_l1_load_key(const strata_l1_load *ld, size_t *klen);

/**
 * Completes a load: status STRATA_OK with the value (copied), or an error
 * (STRATA_ENOTFOUND for "does not exist").  opts may give a TTL / cost
 * (NULL = the config's load defaults, with jitter).  The value is stored
 * unless an invalidation or a set of the key happened since the load began;
 * waiters get it either way.  Consumes ld.  Returns STRATA_OK, or
 * STRATA_ENOMEM when the value could not be stored (waiters then get
 * STRATA_ENOMEM too).
 */
int strata_l1_load_complete(strata_l1_load *ld, int status, const void *val, size_t vlen,
                            const strata_l1_set_opts *opts);

/** Runs pending maintenance now: drains read buffers, reaps expired entries, frees retired memory. */
void strata_l1_maintain(strata_l1 *c);

/** Snapshot of the counters (exact: sums the per-stripe counters). */
void strata_l1_stats_get(strata_l1 *c, strata_l1_stats *out);

/** Number of entries / total cost now. */
uint64_t strata_l1_size(strata_l1 *c);
uint64_t strata_l1_cost(strata_l1 *c);

/** The cache's sketch seed: the configured one, or the one drawn at create when it was 0
 *  (pass it back as strata_l1_config.sketch_seed to replay the same decisions). */
uint64_t strata_l1_sketch_seed(const strata_l1 *c);

/** Estimated access frequency of key in the TinyLFU sketch (0..15; tests and diagnostics). */
int strata_l1_frequency(strata_l1 *c, const void *key, size_t klen);

/** Human-readable name of a cause ("size", "expired", "invalidated", "replaced"). */
const char *strata_l1_cause_name(strata_l1_cause cause);

#endif
