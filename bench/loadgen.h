/*
 * loadgen.h: the load generator behind `strata bench flashsale|redpacket|http`
 * (internal to bench/; the unit tests in tests/unit/bench include it).
 *
 * Four pieces, each testable alone:
 *   lg_http_*    an incremental HTTP/1.1 response parser (Content-Length,
 *                chunked, read-until-close, keep-alive rules, 1xx skipped),
 *                bounded and total: garbage or truncation is an error code,
 *                never a crash; plus a small blocking client for set-up calls
 *   lg_engine    the async client: libuv loop threads, keep-alive connections,
 *                optional pipelining, closed loop (connections x depth requests
 *                in flight) or open loop (--rate: a fixed schedule, latency
 *                from each request's intended send time, as wrk2)
 *   lg_sched_*   the open-loop schedule arithmetic
 *   lg_verify_*  the invariant checks of scenarios.md against Redis and the
 *                database (sqlite3 / libpq directly)
 * The scenarios (bench/loadgen.c) glue them to the `strata bench` driver.
 */
#ifndef STRATA_BENCH_LOADGEN_H
#define STRATA_BENCH_LOADGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/buf.h"
#include "strata/metrics.h"

/* ---- outcomes --------------------------------------------------------------- */

/* X(name, label, is_error, outcome_unknown) — unknown: the request may or may not
 * have been applied by the server (the invariant checks then relax equalities). */
#define LG_OUTCOMES(X)                   \
    X(OK, "success", 0, 0)               \
    X(SOLD_OUT, "sold_out", 0, 0)        \
    X(ALREADY, "already", 0, 0)          \
    X(REJECTED, "rejected_429", 0, 0)    \
    X(WINDOW, "not_started_ended", 0, 0) \
    X(GONE, "gone", 0, 0)                \
    X(NOT_FOUND, "not_found", 1, 0)      \
    X(BAD_REQUEST, "bad_request", 1, 0)  \
    X(OTHER, "other_status", 1, 1)       \
    X(HTTP_5XX, "http_5xx", 1, 1)        \
    X(TIMEOUT, "timeout", 1, 1)          \
    X(CONN_ERROR, "conn_error", 1, 1)    \
    X(BAD_RESPONSE, "bad_response", 1, 1)

typedef enum lg_outcome {
#define LG__OUTCOME_ENUM(n, l, e, u) LG_##n,
    LG_OUTCOMES(LG__OUTCOME_ENUM)
#undef LG__OUTCOME_ENUM
        LG__NOUTCOMES
} lg_outcome;

/** Stable label of an outcome ("sold_out"); "?" out of range. */
const char *lg_outcome_label(int o);
/** True for the outcomes counted as errors. */
bool lg_outcome_is_error(int o);
/** True when the server may or may not have applied the request. */
bool lg_outcome_unknown(int o);

/* ---- HTTP/1.1 responses -------------------------------------------------------- */

#define LG_HTTP_MAX_HEADER (16 * 1024) /* status line + headers */
#define LG_HTTP_MAX_BODY   (1 << 20)   /* decoded body */

/** One complete response; body points into the parser, valid until lg_http_consume. */
typedef struct lg_http_resp {
    int status;          /* 200..599 (1xx responses are skipped) */
    int minor;           /* HTTP/1.<minor> */
    bool keep_alive;     /* false: the server closes after this response */
    int64_t retry_after; /* Retry-After in seconds; -1 when absent or not delta-seconds */
    const char *body;    /* NUL-terminated copy of the decoded body */
    size_t body_len;
} lg_http_resp;

typedef struct lg_http_parser {
    strata_buf in; /* raw bytes received, not yet consumed */
    size_t pos;    /* parse cursor in `in` */
    int state;     /* internal */
    int status, minor;
    bool keep_alive, chunked, until_close, no_body;
    int64_t retry_after;
    int64_t content_length; /* -1 none */
    int64_t chunk_left;
    strata_buf body; /* decoded body */
} lg_http_parser;

void lg_http_parser_init(lg_http_parser *p);
void lg_http_parser_free(lg_http_parser *p);
/** Drops everything (a new connection). */
void lg_http_parser_reset(lg_http_parser *p);
/** Appends received bytes; STRATA_ETOOBIG past the bounds, STRATA_ENOMEM. */
int lg_http_feed(lg_http_parser *p, const char *data, size_t n);
/**
 * Parses what was fed.  Returns 1 with *out filled when a response is
 * complete (call lg_http_consume before the next lg_http_next), 0 when more
 * bytes are needed, STRATA_EPROTO on a malformed response, STRATA_ETOOBIG
 * past the bounds.  After an error the parser must be reset.
 */
int lg_http_next(lg_http_parser *p, lg_http_resp *out);
/**
 * The peer closed the connection: returns 1 with *out when a read-until-close
 * body is thereby complete, 0 when nothing was pending, STRATA_EPROTO when a
 * response was cut short.
 */
int lg_http_eof(lg_http_parser *p, lg_http_resp *out);
/** Forgets the response last returned. */
void lg_http_consume(lg_http_parser *p);
/** True if bytes of an unfinished response are buffered. */
bool lg_http_pending(const lg_http_parser *p);

/* ---- URLs and the blocking client (set-up calls) ---------------------------------- */

typedef struct lg_url {
    char host[256];
    uint16_t port;
    char prefix[256]; /* path prefix without a trailing '/' ("" for none) */
    char hostport[272];
} lg_url;

/** Parses http://host[:port][/prefix]; STRATA_EINVAL with a reason in *err. */
int lg_url_parse(const char *url, lg_url *out, strata_buf *err);

/**
 * One request on a fresh connection (Connection: close), blocking, with a
 * deadline.  `auth` is a bearer token or NULL; `body` JSON or NULL.  On
 * STRATA_OK *status and *resp_body (reset first) hold the answer.  Errors:
 * STRATA_EUNAVAIL (connect), STRATA_ETIMEDOUT, STRATA_EPROTO (bad response),
 * with a reason in *err.
 */
int lg_http_call(const lg_url *u, const char *method, const char *path, const char *auth,
                 const char *body, int timeout_ms, int *status, strata_buf *resp_body,
                 strata_buf *err);

/* ---- the open-loop schedule --------------------------------------------------------- */

/**
 * Open loop with a total rate of `rate` requests/s over `nthreads` threads:
 * request g (global sequence) is due at t0 + g / rate; thread t sends
 * g = k * nthreads + t for its k-th request.  Returns the due time in ns.
 */
uint64_t lg_sched_due_ns(uint64_t t0_ns, double rate, int nthreads, int thread, uint64_t k);
/** How many requests thread `thread` sends when `total` are planned (total = UINT64_MAX: all). */
uint64_t lg_sched_share(uint64_t total, int nthreads, int thread);
/** The global sequence number of thread t's k-th request. */
static inline uint64_t lg_sched_global(int nthreads, int thread, uint64_t k) {
    return k * (uint64_t)nthreads + (uint64_t)thread;
}

/* ---- the engine ----------------------------------------------------------------- */

/** A request the scenario asks for: method, path (after the URL prefix), optional body. */
typedef struct lg_req {
    const char *method; /* "GET", "POST" */
    char path[512];
    char body[512];
    size_t body_len;
} lg_req;

typedef struct lg_config {
    lg_url url;
    int threads;          /* loop threads, 1..16 */
    int connections;      /* total, spread over threads, >= threads */
    int depth;            /* pipelined requests per connection, 1..256 */
    double rate;          /* requests/s in total; 0 = closed loop */
    uint64_t requests;    /* total to send; 0 = unlimited (then duration_ms must be set) */
    uint64_t duration_ms; /* stop issuing after this; 0 = none */
    uint64_t timeout_ms;  /* per request, from its send time */
    uint64_t connect_timeout_ms;
    uint64_t stall_ms; /* give up when nothing connects or answers this long */
    /* Fills *r for global request g; returns false to skip g (counted nowhere). Called on
     * the request's loop thread; threads call it concurrently for different g. */
    bool (*make)(void *ctx, uint64_t g, lg_req *r);
    /* Classifies a response (on the loop thread); must not keep pointers into resp. */
    lg_outcome (*classify)(void *ctx, int thread, uint64_t g, const lg_http_resp *resp);
    /* Optional: a request ended without a response (TIMEOUT, CONN_ERROR, BAD_RESPONSE). */
    void (*failed)(void *ctx, int thread, uint64_t g, lg_outcome why);
    void *ctx;
} lg_config;

/** Fills defaults: 1 thread, 64 connections, depth 1, closed loop, 2 s timeout. */
void lg_config_default(lg_config *c);
/** Checks a config's ranges; STRATA_EINVAL with a reason. */
int lg_config_check(const lg_config *c, strata_buf *err);

typedef struct lg_stats {
    uint64_t counts[LG__NOUTCOMES];
    uint64_t sent, completed;
    uint64_t connects, connect_errors;
    uint64_t late;         /* open loop: requests sent more than 1 ms after their due time */
    double elapsed_s;      /* first send to last completion */
    strata_histogram *lat; /* STRATA_HIST_NS, owned by the caller of lg_run (created there) */
} lg_stats;

/** Live progress, read by the thread that called lg_run (relaxed atomics). */
typedef void (*lg_progress_fn)(void *ctx, const lg_stats *sofar, double elapsed_s);

/**
 * Runs the load: starts cfg->threads loop threads and waits for them, calling
 * progress (may be NULL) about every 100 ms from the calling thread.  Fills
 * *st (st->lat created here: the caller destroys it).  STRATA_OK, or
 * STRATA_EUNAVAIL when the server could not be reached at all (stall),
 * STRATA_ENOMEM, STRATA_ESYS; *st is filled in every case.
 */
int lg_run(const lg_config *cfg, lg_progress_fn progress, void *pctx, lg_stats *st);

/** Frees st->lat. */
void lg_stats_free(lg_stats *st);

/* ---- response bodies ---------------------------------------------------------------- */

/**
 * Copies the string member `field` of a JSON body (top level, or inside
 * "error") into out (size cap); false if absent, not a string, or too long.
 */
bool lg_json_str(const char *body, size_t len, const char *field, char *out, size_t cap);
/** Integer member `field` (top level or inside "error"); false if absent or not an integer. */
bool lg_json_int(const char *body, size_t len, const char *field, int64_t *out);

/* ---- invariant verification ----------------------------------------------------------- */

typedef struct lg_verify lg_verify;

/** Reports one violation (bench: strata_bench_fail). */
typedef void (*lg_violation_fn)(void *ctx, const char *text);

/**
 * Connects to Redis (redis://, unix://; redis-sentinel:// asks a sentinel for
 * the master; redis-cluster:// follows MOVED) and opens the database
 * (sqlite:///path read-only, postgres://...).  STRATA_EINVAL (bad URL),
 * STRATA_EUNAVAIL with a reason in *err.
 */
int lg_verify_open(lg_verify **out, const char *redis_url, const char *db_url, strata_buf *err);
void lg_verify_close(lg_verify **v);

/** What the clients saw for one flash-sale sku. */
typedef struct lg_fs_seen {
    const char *sku;
    int64_t stock; /* stock the run created the sale with (-1: unknown, --no-create) */
    /* (user, order_id) from every 201 and every 409 already_purchased with an order_id;
     * a user may appear several times (repeats must agree). Borrowed. */
    const char *const *users;
    const char *const *order_ids;
    size_t n;
    bool complete;     /* every request of the run got a definite answer */
    bool saw_sold_out; /* some client got 409 sold_out */
    /* Stock shards the run created the sale with (0: unknown, --no-create; the checks
     * follow the sale's meta either way). */
    int64_t shards;
    /* Distinct users who asked, when every request was answered 201, 409 sold_out or
     * 409 already_purchased (then orders == min(stock, asked)); 0: unknown. */
    int64_t asked;
} lg_fs_seen;

/** What the clients saw for one red packet. */
typedef struct lg_rp_seen {
    const char *id;
    int64_t total_cents, count; /* as created (-1: unknown) */
    const char *const *users;   /* (user, amount) of every 200, repeats included; borrowed */
    const int64_t *amounts;
    size_t n;
    bool complete;
    bool saw_gone;
} lg_rp_seen;

/**
 * Waits (polling every 50 ms, up to drain_ms) until the database holds as
 * many orders for each sku as Redis's buyers hash and every order id the
 * clients saw; returns true if drained in time.
 */
bool lg_verify_fs_drain(lg_verify *v, const lg_fs_seen *s, size_t nskus, int64_t drain_ms);
/**
 * Makes the drains also wait until the sale's (packet's) records in Redis and the
 * database have not changed for settle_ms (0, the default: no wait).  For runs in
 * which some requests' outcome is unknown to the client (timeouts, lost connections,
 * 5xx): a server may still be finishing them.
 */
void lg_verify_set_settle(lg_verify *v, int64_t settle_ms);
/** Checks the flash-sale invariants of scenarios.md for one sku; returns violations found. */
int lg_verify_fs(lg_verify *v, const lg_fs_seen *s, lg_violation_fn fail, void *fctx);

bool lg_verify_rp_drain(lg_verify *v, const lg_rp_seen *s, size_t npackets, int64_t drain_ms);
/** Checks the red-packet invariants of scenarios.md for one packet; returns violations found. */
int lg_verify_rp(lg_verify *v, const lg_rp_seen *s, lg_violation_fn fail, void *fctx);

#endif
