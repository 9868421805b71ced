/*
 * scenario.h: what every scenario service gets from `strata serve`, and the
 * helpers they share.  Scenarios use only libstrata's public headers and the
 * server's handler API (server/http.h); they add no caching logic of their
 * own: truth changes are Lua scripts (the .lua files beside each scenario), reads go
 * through the L1, persistence through the write-behind persister.
 *
 * Life cycle, from src/cli/serve.c:
 *   strata_scenarios_setup()      before the database opens: registers migrations
 *   strata_scenarios_start()      after the server is created: routes, worker slots,
 *                                 the tracking bridge (Redis -> L1 invalidations)
 *   strata_scenarios_stop()       after the server stopped
 */
#ifndef STRATA_SCENARIO_H
#define STRATA_SCENARIO_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "server/http.h"
#include "server/server.h"
#include "strata/db.h"
#include "strata/l1.h"
#include "strata/metrics.h"
#include "strata/options.h"
#include "strata/redis.h"
#include "strata/tier.h"

/** The scenario options table (strategy, per-user rate, backpressure, WAIT). */
extern strata_opt_group strata_scenario_opt_group;

typedef struct strata_scenarios strata_scenarios;

typedef struct strata_scenario_env {
    const char *redis_url; /* borrowed; resolved (managed Redis or --redis) */
    strata_db *db;         /* borrowed */
    strata_metrics *metrics;
    strata_clock *clock;
} strata_scenario_env;

/** Registers the scenarios' schema migrations; call once before strata_db_open*(). */
int strata_scenarios_setup(void);

/**
 * Creates the shared L1, registers every scenario's routes and per-worker
 * Redis clients on `server` (before strata_server_start) and starts the
 * control thread that turns Redis tracking invalidations into L1
 * invalidations.  STRATA_EUNAVAIL with *err when Redis cannot be reached.
 */
int strata_scenarios_start(strata_scenarios **out, strata_server *server,
                           const strata_scenario_env *env, strata_buf *err);

/**
 * The WAIT the scenarios' writes use (--wait-replicas; -1 resolved by asking
 * the master for its replicas) and its timeout: the persister waits the same
 * before applying a batch, so the database never holds an event a failover
 * could still lose.
 */
int strata_scenarios_wait_replicas(const char *redis_url, uint32_t *timeout_ms);

/** Registers every scenario's write-behind event handlers on the persister (before its start). */
int strata_scenarios_handlers(strata_persister *p);

/** Stops the control thread and frees everything (after the server stopped). */
void strata_scenarios_stop(strata_scenarios **sc);

/* ---- shared by the scenario files (not for other layers) ---------------------------- */

/** Keys of the write-behind streams registry the persister reads (a Redis set). */
#define SCN_STREAMS_REGISTRY "strata:wb:streams"

/** The per-worker state: one Redis client bound to the worker's loop. */
typedef struct scn_worker {
    strata_redis *redis;
    uv_loop_t *loop;
} scn_worker;

/** Settings every scenario reads (filled from the options at start). */
typedef struct scn_settings {
    int flashsale_segment_lock; /* --flashsale-strategy=segment-lock */
    int64_t user_rate;          /* per-user attempts per second (GCRA) */
    int64_t user_burst;
    uint64_t stream_max_len; /* write-behind backpressure (0 = none) */
    int wait_replicas;       /* effective: 0 = no WAIT */
    uint32_t wait_timeout_ms;
    uint64_t status_ttl_ns; /* L1 TTL of a sale / packet status */
} scn_settings;

/** The runtime, for handlers (ctx of every route). */
struct strata_scenarios {
    strata_scenario_env env;
    scn_settings cfg;
    strata_l1 *l1;
    int worker_slot;
    /* control thread: tracking bridge */
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t stop;
    strata_redis *tracker;
    strata_redis *sweeper; /* control-thread client for background scenario work */
    uv_timer_t sweep_timer;
    int sweep_inited;
    int loop_inited, stop_inited, thread_started;
    strata_counter *m_l1_flag_hits, *m_retries, *m_unknown;
};

/** The worker state of the request's worker. */
scn_worker *scn_worker_of(strata_scenarios *sc, strata_http_req *req);

/** strata/json.h readers return 1 for an absent optional field: that is success here. */
static inline int scn_opt(int rc) { return rc > 0 ? 0 : rc; }

/** True when s is 1..64 bytes of [A-Za-z0-9_.:-] (ids used inside Redis keys). */
bool scn_valid_id(const char *s, size_t len);

/**
 * Reads a body that must be exactly {"user_id": <id>}: on any error answers
 * 400 (or the JSON layer's error) and returns false.
 */
bool scn_read_user(strata_http_req *req, const char **user);

/** A zeroed per-request context from the request's arena; answers 503 and returns NULL on ENOMEM. */
void *scn_request_ctx(strata_http_req *req, size_t size, const char *what);

/**
 * Schedules fn(arg) after a backoff (20 ms doubling to 640 ms, by *attempts,
 * which it increments) when the request still has time for it; counts a
 * retry.  False when it is abandoned or out of time: answer instead.
 */
bool scn_retry(strata_scenarios *sc, strata_http_req *req, uv_loop_t *loop, int *attempts,
               void (*fn)(void *arg), void *arg);

/**
 * The deadline (ms) to give a Redis call so the answer still beats the
 * request's own deadline: what is left, minus a margin to answer, minus
 * --wait-timeout when the call is followed by WAIT.  At least 1.
 */
uint32_t scn_call_budget(const strata_scenarios *sc, strata_http_req *req, bool waits);

/** 429 rate_limited with Retry-After (whole seconds, rounded up). */
void scn_respond_limited(strata_http_req *req, long long retry_after_us);

/** Reads a required id field of the JSON body; on error answers 400 and returns false. */
bool scn_json_id(strata_http_req *req, const cJSON *doc, const char *field, const char **out);

/**
 * Answers a failed Redis/DB status: 503 with Retry-After for unavailable,
 * unknown outcome, backpressure and breaker; 504 for timeouts; else by status.
 */
void scn_respond_failure(strata_http_req *req, int status, const char *what);

/** A timer that calls fn(arg) after delay_ms on the worker loop (for retries). */
int scn_after(uv_loop_t *loop, uint64_t delay_ms, void (*fn)(void *arg), void *arg);

/** Parses an RFC 3339 time string into Unix epoch milliseconds; STRATA_EINVAL if malformed. */
int scn_parse_rfc3339(const char *s, int64_t *ms);

/**
 * Reads an optional time field: an RFC 3339 string or integer epoch seconds.
 * *ms keeps its value when absent.  On error answers 400 and returns false.
 */
bool scn_json_time(strata_http_req *req, const cJSON *doc, const char *field, int64_t *ms);

/** The route registrations of each scenario (scenario.c calls them). */
int scn_flashsale_routes(strata_scenarios *sc, strata_server *server);
int scn_redpacket_routes(strata_scenarios *sc, strata_server *server);
/** The cache-aside key-value service (kv/kv.c) and its options table ("Key-value"). */
int scn_kv_routes(strata_scenarios *sc, strata_server *server);
extern strata_opt_group strata_kv_opt_group;
/** Closes red packets past their expiry that nobody touched (control thread, every second). */
void scn_redpacket_sweep(strata_scenarios *sc);
/** Finishes stock-shard reservations left by crashed servers (control thread, every second). */
void scn_flashsale_sweep(strata_scenarios *sc);
/** Their write-behind event handlers. */
int scn_flashsale_handlers(strata_persister *p);
int scn_redpacket_handlers(strata_persister *p);
/** Their migrations. */
int scn_flashsale_migrations(void);
int scn_redpacket_migrations(void);
/** The L1 key prefixes their tracked flag keys use (tracking bridge). */
#define SCN_FLASHSALE_FLAG_PREFIX "fsflag:"
#define SCN_REDPACKET_FLAG_PREFIX "rpflag:"

#endif
