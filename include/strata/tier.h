/*
 * strata/tier.h: the tiered path L1 -> Redis -> database, with its protections,
 * and the two write paths (cache-aside with an outbox relay; write-behind with a
 * persister).
 *
 * Read path (strata_tier_get), per key:
 *
 *   L1        in-process cache, singleflight (strata_l1_get_or_load): concurrent
 *             misses of one process run one load.
 *   bloom     a local copy of a Bloom filter of existing keys kept in Redis:
 *             "certainly absent" is answered here, without Redis or the database.
 *   Redis     one hash per key holding value, version, soft expiry and compute
 *             time; the key's PEXPIRE is the hard expiry.  One script reads it and,
 *             on a miss (or a due refresh), hands out a LEASE (Facebook memcache,
 *             NSDI'13): one token per key for lease_ms.  Only the holder loads
 *             from the database (through a circuit breaker and a bulkhead) and
 *             fills; the fill is a compare-and-set script that refuses an older
 *             version than the one Redis knows and a token that a delete (the
 *             outbox relay) invalidated.  The others wait (re-read with backoff
 *             until the fill lands), or get the stale value if one is kept
 *             (stale-while-revalidate), or give up at the deadline with
 *             STRATA_ERETRY (HTTP 503).  A value past its soft TTL but before
 *             its hard TTL is served stale while one holder refreshes it; XFetch
 *             (VLDB 2015) starts that refresh early; TTLs carry jitter.
 *   database  strata_db_kv_get on the db pool; ENOTFOUND is cached as a negative
 *             entry with its own short TTL.  While the breaker is open, stale
 *             values are served (stale-if-error) or the call fails fast with
 *             STRATA_EBREAKER.
 *
 * Redis keys of namespace NS and key K (K any bytes of a valid key):
 *   st:{NS:K}          hash  v, ver, soft (wall ms), delta (ms), neg, lt, lx, minver
 *   st:bloom:{NS}      string  the Bloom bitmap (SETBIT order)
 *   st:bloom:{NS}:pending  bits set while the bitmap is being rebuilt
 *   st:rl:{NS}         hash  tat, n, nat: the refresh cap's GCRA and key count
 *   st:hll:{NS}:<e>    HyperLogLog of the keys filled in epoch e (the cap's n)
 * The L1 key of (NS, K) is the Redis key "st:{NS:K}", so Redis tracking
 * (prefix "st:") invalidates L1 entries directly.
 *
 * Write paths:
 *   cache-aside   strata_tier_put / strata_tier_delete write the database and an
 *                 outbox row in one transaction; an OUTBOX RELAY (its own thread)
 *                 claims rows, invalidates the Redis hash (drops value and lease,
 *                 raises minver), sets the Bloom bits of a PUT, invalidates the
 *                 local L1s, then marks the rows done.  A relay that dies between
 *                 the steps leaves its rows to be claimed again (at-least-once,
 *                 every step idempotent).
 *   write-behind  scenario scripts write Redis and XADD an event in one script to
 *                 a stream registered in the Redis set "strata:wb:streams"; the
 *                 PERSISTER (its own thread, consumer group "strata-persister",
 *                 consumer = the node id) applies events to the database in
 *                 batches, idempotent by the event's body id, XACKs after the
 *                 commit, XAUTOCLAIMs stuck entries, retries with backoff and
 *                 moves poison events to "<stream>:dlq".
 *
 * Threads: a strata_tier belongs to one loop (the loop of its Redis client) and
 * is used from that loop's thread only.  The L1 may be shared between tiers of
 * several loops.  Relay and persister run their own threads; their
 * start/stop/drain functions are called from any one control thread.
 * The library never logs: statuses and metrics.
 */
#ifndef STRATA_TIER_H
#define STRATA_TIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "strata/buf.h"
#include "strata/clock.h"
#include "strata/db.h"
#include "strata/l1.h"
#include "strata/metrics.h"
#include "strata/protect.h"
#include "strata/redis.h"
#include "strata/status.h"

/* ---- bounds ---------------------------------------------------------------- */

#define STRATA_TIER_KEY_MAX   STRATA_DB_KEY_MAX   /* bytes; 1..1024, UTF-8, no NUL */
#define STRATA_TIER_VALUE_MAX STRATA_DB_VALUE_MAX /* bytes; any bytes */

/**
 * Checks a key: STRATA_OK, STRATA_EINVAL (empty, NUL byte, invalid UTF-8 per
 * RFC 3629: overlong forms, surrogates, > U+10FFFF) or STRATA_ETOOBIG (over
 * STRATA_TIER_KEY_MAX).  Every tier call checks its key with this first.
 */
int strata_tier_check_key(const void *key, size_t len);

/** True when s[0..len) is valid UTF-8 without NUL bytes. */
bool strata_utf8_valid(const void *s, size_t len);

/* ---- the tier (read path, cache-aside writes) -------------------------------------- */

typedef struct strata_tier strata_tier;
typedef struct strata_outbox_relay strata_outbox_relay;

/** What a successful get found. */
typedef enum strata_tier_outcome {
    STRATA_TIER_HIT_L1 = 0,    /* fresh value from the L1 */
    STRATA_TIER_HIT_REDIS = 1, /* fresh value from Redis */
    STRATA_TIER_LOADED = 2,    /* loaded from the database by this process */
    STRATA_TIER_STALE = 3,     /* a stale value (SWR or stale-if-error) */
} strata_tier_outcome;

/**
 * Completion of strata_tier_get, always on the tier's loop thread, never
 * inside strata_tier_get itself.  status:
 *   STRATA_OK          value[0..len) (borrowed for the call) with its version
 *   STRATA_ENOTFOUND   the key does not exist (database, negative cache or Bloom)
 *   STRATA_ERETRY      waited for another holder's load until the deadline (503)
 *   STRATA_EBREAKER    the database breaker is open and no stale value is kept
 *   STRATA_EBACKPRESSURE  the bulkhead is full and no stale value is kept
 *   STRATA_ETIMEDOUT, STRATA_EUNAVAIL, ...  the database failed
 */
typedef void (*strata_tier_get_cb)(void *ud, int status, strata_tier_outcome outcome,
                                   const void *value, size_t len, int64_t version);

/** Test hook run on a db pool thread right after each database read of a key, before its
 *  result is used (a test may block in it to hold a loaded value back). */
typedef void (*strata_tier_load_hook_fn)(void *ctx, const void *key, size_t klen);

/** Tier configuration; strata_tier_config_init() fills the defaults shown. */
typedef struct strata_tier_config {
    const char *ns;            /* namespace (db kv ns and Redis key part); "default"; 1..64 */
    strata_redis *redis;       /* required, borrowed: its loop is the tier's loop */
    strata_db *db;             /* required, borrowed */
    strata_l1 *l1;             /* borrowed, may be NULL (no L1, no in-process singleflight);
                                 should have refresh_beta 0, stale_ns 0: the tier decides */
    strata_clock *clock;       /* borrowed; NULL = system */
    strata_metrics *metrics;   /* borrowed; NULL = none */
    const char *name;          /* metric label tier="<name>"; copied; NULL = ns */
    uint32_t ttl_ms;           /* soft TTL in Redis: 60 000 */
    uint32_t stale_ms;         /* served stale this long past the soft TTL (hard = soft +
                                 stale): 60 000 (>= ttl_ms, for the refresh cap); 0 = no stale values */
    uint32_t l1_ttl_ms;        /* L1 TTL of a fresh value (capped by the Redis soft TTL): 5 000 */
    uint32_t negative_ttl_ms;  /* TTL of "does not exist" (Redis and L1): 2 000; 0 = off */
    uint32_t jitter_pct;       /* +-% on every TTL: 10 (0..50) */
    double xfetch_beta;        /* XFetch early refresh in Redis: 1.0; 0 = off */
    uint32_t lease_ms;         /* lease time, extended by its holder while it loads: 2 000 */
    uint32_t deadline_ms;      /* longest a get may take: 1 000 */
    uint32_t wait_min_ms;      /* first re-read delay of a waiter, doubled ...: 2 */
    uint32_t wait_max_ms;      /* ... up to this: 50 */
    bool leases;               /* false = every Redis miss loads from the database (tests) */
    bool bloom;                /* Bloom filter of existing keys: true */
    uint64_t bloom_expected;   /* keys the filter is sized for: 100 000 */
    double bloom_fp;           /* false-positive rate: 0.01 */
    uint32_t bloom_refresh_ms; /* local copy refreshed this often: 1 000 */
    bool tracking;             /* start Redis tracking on "st:{NS:" for the L1: false */
    uint32_t bulkhead;         /* concurrent database loads per tier: 16 */
    strata_breaker_config breaker;      /* the database breaker (protect.h defaults) */
    strata_outbox_relay *relay;         /* borrowed, may be NULL: kicked after each write */
    strata_tier_load_hook_fn load_hook; /* tests: run after every database read */
    void *load_hook_ctx;
    /*
     * Refresh-load cap (docs/notes/tier.md D-T11).  A REFRESH load (XFetch's early
     * refresh of a fresh value, or the refresh of a value past its soft TTL: its
     * reader is answered with the value at once either way) is admitted by a GCRA
     * kept in Redis (st:rl:{NS}) and shared by every tier of the namespace, in every
     * process, on the tiers' clock.  Its rate follows the key population:
     *   max(refresh_cap_floor, refresh_cap_pct/100 * n / ttl_ms)   loads per second,
     * n = distinct keys filled in the last ttl*(1+jitter)+stale (a HyperLogLog in
     * Redis per namespace, st:hll:{NS}:<epoch>): about 1.1x the steady refresh rate,
     * whoever runs how many servers.  A refused refresh takes no lease and the value
     * keeps being served (stale or fresh); a later read asks again.  Misses (nothing to
     * serve) are never capped; a refresh in the last eighth of its stale window is
     * admitted whatever the budget (it still uses a token), so the cap never lets a
     * read key reach its hard expiry unless the refreshes due exceed the rate.  Drains
     * a mass expiry in ttl / (pct/100): keep stale_ms >= ttl_ms.
     */
    uint32_t refresh_cap_pct;      /* 110; 0 = off (every due refresh loads at once) */
    uint32_t refresh_cap_floor;    /* loads per second, cluster-wide per namespace: 10 (>= 1) */
    uint32_t refresh_cap_burst_ms; /* the cap's tokens of this many ms may go at once: 20 */
} strata_tier_config;

void strata_tier_config_init(strata_tier_config *cfg);

/**
 * Creates a tier on the Redis client's loop (cfg is copied; borrowed objects
 * must outlive the tier).  Starts the Bloom refresh timer.  STRATA_EINVAL
 * (missing redis/db, bad ns, jitter > 50, refresh_cap_pct > 1000), STRATA_ENOMEM.
 */
int strata_tier_create(const strata_tier_config *cfg, strata_tier **out);

/**
 * Destroys the tier: pending gets complete with STRATA_ECANCELED first.  The
 * loop must run once more to close handles (like strata_redis_destroy).  No
 * database job may be in flight: call after strata_tier_quiesce() returned 0.
 * Sets *t = NULL; NULL is a no-op.
 */
void strata_tier_destroy(strata_tier **t);

/** Number of gets and writes not completed yet (a shutdown waits for 0). */
uint64_t strata_tier_quiesce(const strata_tier *t);

/**
 * Reads key (see the read path above).  Returns STRATA_OK and calls cb later
 * exactly once, or an error (EINVAL/ETOOBIG for a bad key, ENOMEM, ECLOSED)
 * and never calls cb.
 */
int strata_tier_get(strata_tier *t, const void *key, size_t klen, strata_tier_get_cb cb, void *ud);

/** Completion of a write: the new version (put) or the tombstone's version (delete). */
typedef void (*strata_tier_write_cb)(void *ud, int status, int64_t version);

/**
 * Cache-aside write: the database (value + outbox row in one transaction,
 * optimistic when expected_version >= 0, see strata_db_kv_put), then this
 * process's L1 entry is dropped and the relay is woken; Redis is invalidated by
 * the relay.  Value over STRATA_TIER_VALUE_MAX: STRATA_ETOOBIG (no callback).
 */
int strata_tier_put(strata_tier *t, const void *key, size_t klen, const void *value, size_t len,
                    int64_t expected_version, strata_tier_write_cb cb, void *ud);

/** Cache-aside delete (tombstone + outbox row), like strata_tier_put. */
int strata_tier_delete(strata_tier *t, const void *key, size_t klen, int64_t expected_version,
                       strata_tier_write_cb cb, void *ud);

/**
 * Rebuilds the Bloom filter of the namespace from the database (on the db
 * pool): the bitmap is removed first (every tier then answers "maybe" and
 * asks the database), rebuilt from strata_db_kv_keys, merged with the bits
 * inserts set meanwhile, and stored.  cb(ud, status, 0) when done.
 */
int strata_tier_bloom_rebuild(strata_tier *t, strata_tier_write_cb cb, void *ud);

/** True when the local Bloom copy holds a loaded bitmap (tests). */
bool strata_tier_bloom_ready(const strata_tier *t);

/** Fetches the Bloom bitmap from Redis now (it is also refreshed on a timer). */
void strata_tier_bloom_refresh(strata_tier *t);

/** Appends the Redis (and L1) key of (ns, key): "st:{ns:key}". */
int strata_tier_redis_key(const char *ns, const void *key, size_t klen, strata_buf *out);

/** Counters since create. */
typedef struct strata_tier_stats {
    uint64_t gets, l1_hits, redis_hits, stale_served, negative_hits, bloom_absent;
    uint64_t db_loads;             /* database loads started by this tier */
    uint64_t fills, fills_refused; /* fill script outcomes (refused: older version/lost lease) */
    uint64_t lease_grants, lease_waits, lease_timeouts, early_refreshes;
    uint64_t breaker_rejects, bulkhead_rejects, errors;
    uint64_t waiting;  /* gets waiting on another holder's lease now */
    uint64_t inflight; /* gets not completed now */
    /* refresh cap: refreshes admitted (urgent ones included), refused (the value was
     * served without a refresh), admitted as urgent; the last rate (loads/s) and key
     * population n the cap reported */
    uint64_t refresh_admitted, refresh_deferred, refresh_urgent;
    uint64_t refresh_cap_per_s, refresh_keys;
} strata_tier_stats;

void strata_tier_get_stats(const strata_tier *t, strata_tier_stats *out);

/* ---- outbox relay ----------------------------------------------------------------- */

typedef struct strata_relay_config {
    const char *redis_url;   /* required (copied) */
    strata_db *db;           /* required, borrowed */
    const char *node_id;     /* lease owner; required, 1..128 bytes (copied) */
    uint32_t batch;          /* rows per claim: 100 */
    uint32_t lease_ms;       /* claim lease: 10 000 */
    uint32_t poll_ms;        /* idle wait between claims (woken early by kick): 50 */
    uint32_t tombstone_ms;   /* how long an invalidated key remembers its version: 600 000 */
    uint64_t bloom_expected; /* must equal the tiers' bloom_expected: 100 000 */
    double bloom_fp;         /* must equal the tiers' bloom_fp: 0.01 */
    strata_l1 *l1[4];        /* local L1s to invalidate (borrowed, may be NULL) */
    strata_metrics *metrics; /* borrowed; NULL = none */
} strata_relay_config;

void strata_relay_config_init(strata_relay_config *cfg);

/** Creates the relay (no thread yet).  STRATA_EINVAL, STRATA_ENOMEM; reason in *err. */
int strata_relay_create(const strata_relay_config *cfg, strata_outbox_relay **out, strata_buf *err);
/** Starts the relay thread.  STRATA_EEXIST when running, STRATA_ESYS. */
int strata_relay_start(strata_outbox_relay *r);
/** Wakes the relay now (after a write). */
void strata_relay_kick(strata_outbox_relay *r);
/**
 * Runs one claim-publish-done round on the caller's thread (when the thread is
 * not started; tests).  Returns rows relayed (>= 0) or a status.
 */
int strata_relay_run_once(strata_outbox_relay *r);
/** Waits until the outbox is empty or timeout_ms passed: STRATA_OK / STRATA_ETIMEDOUT. */
int strata_relay_drain(strata_outbox_relay *r, uint32_t timeout_ms);
/** Stops and joins the thread (idempotent). */
void strata_relay_stop(strata_outbox_relay *r);
/** Stops and frees; *r = NULL. */
void strata_relay_destroy(strata_outbox_relay **r);
/** Rows relayed since create. */
uint64_t strata_relay_relayed(const strata_outbox_relay *r);

/* ---- write-behind persister ------------------------------------------------------------ */

typedef struct strata_persister strata_persister;

/** The Redis set listing every write-behind stream (scenarios SADD theirs). */
#define STRATA_WB_REGISTRY "strata:wb:streams"
/** The persister's consumer group. */
#define STRATA_WB_GROUP "strata-persister"
/** Suffix of a stream's dead-letter stream (same hash tag). */
#define STRATA_WB_DLQ_SUFFIX ":dlq"

/**
 * One event handed to a handler: the body's fields, borrowed for the call.
 * The event body must carry "type" and "id" (the idempotency id, NOT the
 * stream entry id); the id recorded in the database is "<type>:<id>".
 */
typedef struct strata_wb_event {
    const char *stream;   /* NUL-terminated */
    const char *entry_id; /* stream entry id (informational only) */
    const char *type;     /* NUL-terminated */
    const char *id;       /* NUL-terminated */
    int nfields;
    const char *const *field; /* NUL-terminated names */
    const char *const *value; /* NUL-terminated values (binary values: use value_len) */
    const size_t *value_len;
} strata_wb_event;

/** A field of the event by name (NULL if absent); *len (may be NULL) gets its length. */
const char *strata_wb_event_get(const strata_wb_event *e, const char *field, size_t *len);

/**
 * Applies one event on c, inside the batch transaction (in its own savepoint).
 * Return STRATA_OK, or a negative status: the event is rolled back alone and
 * retried later; after max_attempts it goes to the dead-letter stream.  Must
 * be idempotent only in the sense that it runs at most once per commit: the
 * persister records "<type>:<id>" in the same transaction and skips ids
 * already applied.
 */
typedef int (*strata_wb_handler_fn)(strata_db_conn *c, const strata_wb_event *e, void *ctx);

typedef struct strata_persister_config {
    const char *redis_url;   /* required (copied) */
    strata_db *db;           /* required, borrowed */
    const char *node_id;     /* consumer name; required and STABLE across restarts */
    const char *group;       /* STRATA_WB_GROUP */
    const char *registry;    /* STRATA_WB_REGISTRY */
    uint32_t batch;          /* entries per read and per transaction: 200 */
    uint32_t idle_max_ms;    /* idle polling backs off up to this: 50 */
    uint32_t discover_ms;    /* re-read the registry this often: 1 000 */
    uint32_t claim_idle_ms;  /* XAUTOCLAIM entries idle this long (a dead node's): 30 000 */
    uint32_t claim_every_ms; /* run XAUTOCLAIM this often: 5 000 */
    uint32_t max_attempts;   /* failures before the dead-letter stream: 5 */
    uint32_t retry_min_ms;   /* backoff after a failed batch, doubled ...: 50 */
    uint32_t retry_max_ms;   /* ... up to: 2 000 */
    uint32_t trim_every_ms;  /* strata_redis_xtrim_safe each stream this often: 10 000 */
    uint32_t stats_every_ms; /* refresh lag/pending/dlq gauges: 1 000 */
    /* > 0: a batch is applied only once `wait_replicas` replicas acknowledged it (WAIT
     * right after the XREADGROUP, which is itself a replicated write, so the events read
     * are on the replicas too).  Otherwise a failover that loses writes could leave the
     * database holding events the new master never saw, and its reissued ids would then
     * be skipped as duplicates.  0 (default) = no replicas to wait for. */
    int wait_replicas;
    uint32_t wait_timeout_ms;      /* WAIT's timeout: 500 */
    strata_breaker_config breaker; /* around the database */
    strata_metrics *metrics;       /* borrowed; NULL = none */
    strata_clock *clock;           /* borrowed; NULL = system (breaker time) */
} strata_persister_config;

void strata_persister_config_init(strata_persister_config *cfg);

/** Creates a persister (no thread yet).  STRATA_EINVAL with a reason in *err, ENOMEM. */
int strata_persister_create(const strata_persister_config *cfg, strata_persister **out,
                            strata_buf *err);

/**
 * Registers the handler of an event type (before start; type copied, 1..32
 * bytes).  Events of a type without a handler are poison (dead-lettered).
 */
int strata_persister_handle(strata_persister *p, const char *type, strata_wb_handler_fn fn,
                            void *ctx);

/** Adds a stream to read besides the registry's (before or after start; copied). */
int strata_persister_add_stream(strata_persister *p, const char *stream);

/**
 * Starts the persister thread: its own Redis client (blocking API on a
 * private loop) and the blocking database API.  On start it first re-reads
 * its own pending entries (a restarted node resumes its batch).
 */
int strata_persister_start(strata_persister *p);

/**
 * Waits until one full pass over every stream found nothing to do (no own
 * pending entry apart from those waiting for a retry, nothing undelivered),
 * starting after this call; STRATA_OK or STRATA_ETIMEDOUT.  For graceful
 * shutdown and tests.
 */
int strata_persister_drain(strata_persister *p, uint32_t timeout_ms);

/** Stops and joins the thread (the current batch finishes first); idempotent. */
void strata_persister_stop(strata_persister *p);

/** Stops and frees; *p = NULL. */
void strata_persister_destroy(strata_persister **p);

typedef struct strata_persister_stats {
    uint64_t applied, duplicates, superseded, failed_events, dead_lettered;
    uint64_t batches, batch_failures, claimed, acked, trimmed;
    int64_t lag, pending, dlq; /* last refresh of the gauges */
    uint64_t streams;
} strata_persister_stats;

void strata_persister_get_stats(strata_persister *p, strata_persister_stats *out);

/**
 * Registers a stream in the registry (SADD strata:wb:streams stream) and creates
 * the persister group on it (so nothing appended afterwards is missed even
 * before a persister discovers it).  Async on r; cb may be NULL.
 */
int strata_wb_register_stream(strata_redis *r, const char *stream, strata_redis_cb cb, void *ud);

/* ---- dead letters (the `strata dlq` CLI) ---------------------------------------------- */

/**
 * Moves dead-letter entries back to their source stream (new entry ids; the
 * event id in the body is unchanged, so a replay of an event already applied is
 * a duplicate).  `id` = one dlq entry id, or NULL for all (at most `max`).
 * Blocking, on a sync client.  Returns the number replayed or a status.
 */
int strata_wb_dlq_replay(strata_redis_sync *s, const char *stream, const char *id, uint32_t max);

/* ---- distributed rate limiter (GCRA in Redis) ----------------------------------------- */

/** Completion of strata_ratelimit_gcra: status STRATA_OK with res, or the Redis error. */
typedef void (*strata_gcra_cb)(void *ud, int status, const strata_gcra_result *res);

/**
 * One GCRA decision for `key` in one Lua call (gcra.lua, Redis TIME): `rate`
 * requests per `period_ms`, `burst` at once, this call costing `cost`.
 * res->allowed, remaining, retry_after_us (-1 when allowed), reset_after_us.
 * Errors as strata_redis_evalsha; STRATA_EINVAL for bad numbers or key.
 */
int strata_ratelimit_gcra(strata_redis *r, const char *key, int64_t rate, int64_t period_ms,
                          int64_t burst, int64_t cost, strata_gcra_cb cb, void *ud);

#endif
