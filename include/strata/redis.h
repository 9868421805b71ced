/*
 * strata/redis.h: Strata's Redis client (standalone, Sentinel, Cluster),
 * built on hiredis 0.14.1 (RESP2) and bound to a libuv loop.
 *
 * One strata_redis belongs to one uv_loop_t and is used from that loop's
 * thread only (one per server worker loop; the control loop owns another for
 * subscriptions and background consumers).  It keeps, per Redis node, a
 * bounded set of pipelined connections plus dedicated connections for
 * blocking commands, and reconnects with exponential backoff.
 *
 * Every asynchronous call follows libuv's rule: when it returns an error, the
 * callback is never called; when it returns STRATA_OK the callback is called
 * exactly once, never from inside the call itself, with one of:
 *
 *   STRATA_OK            the server answered (reply is not an error reply)
 *   STRATA_EUNKNOWN      the command was written to the socket, then the
 *                        connection died or the deadline passed (or a WAIT
 *                        was not satisfied): it may or may not have been
 *                        applied.  Only idempotent commands may be retried.
 *   STRATA_EUNAVAIL      the command was never sent (no connection within the
 *                        deadline, node down, queue full): safe to retry.
 *   STRATA_ERETRY        the server refused it without running it (LOADING,
 *                        READONLY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN, BUSY)
 *                        and the bounded retries ran out: safe to retry.
 *   STRATA_ECANCELED     the client was destroyed first (never sent, or unknown).
 *   other < 0            an error reply, mapped: NOAUTH/WRONGPASS -> EAUTH,
 *                        NOPERM -> EPERM, CROSSSLOT -> ECROSSSLOT,
 *                        BACKPRESSURE -> EBACKPRESSURE, BUSYGROUP -> EEXIST,
 *                        anything else -> EPROTO; `reply` then holds the
 *                        error text (reply->str).
 *
 * Replies handed to a callback are borrowed and valid only during the
 * callback.  The library never logs: outcomes are statuses and metrics.
 */
#ifndef STRATA_REDIS_H
#define STRATA_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "strata/buf.h"
#include "strata/embedded.h"
#include "strata/metrics.h"
#include "strata/status.h"

/* ---- URLs ---------------------------------------------------------------- */

typedef enum strata_redis_mode {
    STRATA_REDIS_STANDALONE = 0, /* redis://host:port[/db] or unix:///path */
    STRATA_REDIS_SENTINEL = 1,   /* redis-sentinel://h1:p1,h2:p2/master */
    STRATA_REDIS_CLUSTER = 2,    /* redis-cluster://h1:p1,h2:p2 */
} strata_redis_mode;

typedef struct strata_redis_host {
    char *host; /* owned; IPv6 without brackets */
    uint16_t port;
} strata_redis_host;

/** A parsed Redis URL; every pointer is owned and freed by strata_redis_url_free(). */
typedef struct strata_redis_url {
    strata_redis_mode mode;
    char *user;               /* ACL user or NULL (AUTH with the password only) */
    char *password;           /* NULL: no AUTH */
    int db;                   /* SELECT index (standalone and Sentinel), 0 by default */
    char *unix_path;          /* standalone over a unix socket; NULL for TCP */
    strata_redis_host *hosts; /* data node (standalone), sentinels, or cluster seeds */
    size_t nhosts;
    char *master_name; /* Sentinel only */
} strata_redis_url;

/**
 * Parses `url`:
 *   redis://[user:pass@]host[:port][/db]          (port 6379)
 *   unix:///path/to/redis.sock[?db=N]
 *   redis-sentinel://[user:pass@]h1[:p1],h2[:p2]/master-name   (port 26379)
 *   redis-cluster://[user:pass@]h1[:p1],h2[:p2]
 * user and password may be %-encoded; hosts may be [IPv6].  The credentials
 * are those of the data nodes (sentinels are contacted without AUTH).
 * Returns STRATA_OK, STRATA_EINVAL with a one-line reason in *err (if not
 * NULL), or STRATA_ENOMEM.  On error *out is left zeroed.
 */
int strata_redis_url_parse(const char *url, strata_redis_url *out, strata_buf *err);

/** Frees what a parse allocated and zeroes *u; a zeroed url is a no-op. */
void strata_redis_url_free(strata_redis_url *u);

/** Appends the URL with the password replaced by "***" (for logs and /v1/info). */
int strata_redis_url_format(const strata_redis_url *u, strata_buf *out);

/* ---- replies ------------------------------------------------------------- */

/* The same values as hiredis' REDIS_REPLY_* (RESP2). */
enum {
    STRATA_REPLY_STRING = 1,
    STRATA_REPLY_ARRAY = 2,
    STRATA_REPLY_INTEGER = 3,
    STRATA_REPLY_NIL = 4,
    STRATA_REPLY_STATUS = 5,
    STRATA_REPLY_ERROR = 6,
};

/** A RESP2 reply.  Layout-compatible with hiredis' redisReply (checked at build time). */
typedef struct strata_redis_reply {
    int type;                            /* STRATA_REPLY_* */
    long long integer;                   /* INTEGER */
    size_t len;                          /* STRING, STATUS, ERROR: bytes in str */
    char *str;                           /* NUL-terminated too */
    size_t elements;                     /* ARRAY */
    struct strata_redis_reply **element; /* ARRAY */
} strata_redis_reply;

/** Deep copy of a reply (strata_redis_reply_free it); NULL on ENOMEM or NULL input. */
strata_redis_reply *strata_redis_reply_dup(const strata_redis_reply *r);
/** Frees a reply owned by the caller (from dup or the blocking API); NULL is a no-op. */
void strata_redis_reply_free(strata_redis_reply *r);
/** True when r is a STRING or STATUS equal to s. */
bool strata_redis_reply_is(const strata_redis_reply *r, const char *s);

/* ---- the asynchronous client ----------------------------------------------- */

typedef struct strata_redis strata_redis;

/** Client options; strata_redis_options_init() fills the defaults shown. */
typedef struct strata_redis_options {
    uint32_t connect_timeout_ms; /* 1000: TCP connect + AUTH/SELECT/ROLE handshake */
    uint32_t command_timeout_ms; /* 1000: default deadline of a command */
    uint32_t conns_per_node;     /* 1: pipelined connections per node (1..64) */
    uint32_t max_blocking_conns; /* 16: dedicated connections per node for blocking calls */
    uint32_t reconnect_min_ms;   /* 20: first reconnect delay, doubled per failure ... */
    uint32_t reconnect_max_ms;   /* 1000: ... up to this */
    uint32_t max_retries;        /* 5: retries of refused (ERETRY-class) commands and redirects */
    uint32_t max_queued;         /* 100000: requests waiting for a connection per node */
    uint32_t tick_ms;            /* 5: resolution of deadlines and reconnect timers */
    uint32_t refresh_min_ms;     /* 100: min interval between Sentinel/Cluster rediscoveries */
    strata_metrics *metrics;     /* optional registry (borrowed; must outlive the client) */
    const char *metrics_labels;  /* optional extra labels for every series, e.g. `worker="1"` */
} strata_redis_options;

void strata_redis_options_init(strata_redis_options *o);

/**
 * Creates a client on `loop` for `url` (see strata_redis_url_parse).  No
 * connection is opened here: nodes are connected on first use; Sentinel
 * discovery and the +switch-master subscriptions start at once.  `opts` may
 * be NULL (defaults); it is copied.  STRATA_EINVAL (bad URL or option) with a
 * reason in *err if given, STRATA_ENOMEM.
 */
int strata_redis_create(strata_redis **out, uv_loop_t *loop, const char *url,
                        const strata_redis_options *opts, strata_buf *err);

/**
 * Destroys the client: every pending callback is called with
 * STRATA_ECANCELED (or EUNKNOWN if its command was already sent), then
 * handles are closed.  The loop must run once more (uv_run) to finish
 * closing before uv_loop_close().  Sets *r = NULL; NULL is a no-op.  Must not
 * be called from inside one of this client's callbacks.
 */
void strata_redis_destroy(strata_redis **r);

strata_redis_mode strata_redis_get_mode(const strata_redis *r);
uv_loop_t *strata_redis_loop(const strata_redis *r);

/** Completion callback; see the statuses at the top.  reply is borrowed (may be NULL). */
typedef void (*strata_redis_cb)(void *ud, int status, const strata_redis_reply *reply);

enum {
    /* Run on a dedicated connection (XREADGROUP BLOCK, BLPOP, long scripts):
     * it never holds up the pipelined connection; the deadline covers the
     * blocking time too, so give a timeout_ms above the command's own. */
    STRATA_REDIS_DEDICATED = 1u << 0,
    /* Do not retry ERETRY-class refusals (report them at once). */
    STRATA_REDIS_NO_RETRY = 1u << 1,
};

/** Per-call options; a zeroed struct (or NULL) means the client defaults. */
typedef struct strata_redis_call {
    uint32_t timeout_ms; /* deadline from now; 0 = options.command_timeout_ms */
    uint32_t flags;      /* STRATA_REDIS_* */
    /* > 0: the command is followed on the same connection by
     * `WAIT wait_replicas wait_timeout_ms` (run on a dedicated connection so
     * the pipeline never waits); fewer acknowledgements give STRATA_EUNKNOWN
     * with the command's own reply. */
    int wait_replicas;
    uint32_t wait_timeout_ms;
    /* Cluster routing key; NULL = derived from the command (first key). */
    const char *route_key;
    size_t route_keylen;
} strata_redis_call;

/**
 * Sends a command given as argv.  In Cluster mode the keys are found from
 * the command (GET/SET-like: argv[1]; MGET/DEL/EXISTS/...: all; MSET: every
 * other; EVAL/EVALSHA/FCALL: numkeys; XREAD/XREADGROUP: after STREAMS) and
 * a command whose keys span slots is refused with STRATA_ECROSSSLOT.
 * Arguments are copied.  cb may be NULL.  Errors: EINVAL, ECROSSSLOT,
 * EUNAVAIL (node down and queue full), ECLOSED (destroyed), ENOMEM.
 */
int strata_redis_command_argv(strata_redis *r, const strata_redis_call *call, strata_redis_cb cb,
                              void *ud, int argc, const char *const *argv, const size_t *argvlen);

/** The same with hiredis' printf-like format (%s, %b binary+len, %d ...). */
int strata_redis_command(strata_redis *r, const strata_redis_call *call, strata_redis_cb cb,
                         void *ud, const char *fmt, ...);

/* ---- scripts ----------------------------------------------------------------- */

/** A Lua script known by name and SHA1.  Plain struct; the source is borrowed. */
typedef struct strata_redis_script {
    const char *name; /* borrowed, e.g. "flashsale_order.lua" */
    const char *src;  /* borrowed; must outlive every call using the script */
    size_t len;
    char sha1[41]; /* hex, computed locally */
} strata_redis_script;

/** Fills s for the given source (computes the SHA1).  STRATA_EINVAL on NULL/empty. */
int strata_redis_script_init(strata_redis_script *s, const char *name, const char *src, size_t len);

/** Fills s from an embedded table (strata_lib_lua_table, strata_scenario_lua_table). ENOTFOUND. */
int strata_redis_script_embedded(strata_redis_script *s, const strata_embedded *table,
                                 const char *name);

/**
 * EVALSHA s with keys and args.  A NOSCRIPT reply (a new master, a restarted
 * node, SCRIPT FLUSH) is answered by SCRIPT LOAD + EVALSHA on the same
 * connection, once per call, without surfacing.  In Cluster mode all keys
 * must hash to one slot (else STRATA_ECROSSSLOT); a script with no keys runs
 * on the node of call->route_key (or any node).
 */
int strata_redis_evalsha(strata_redis *r, const strata_redis_call *call,
                         const strata_redis_script *s, strata_redis_cb cb, void *ud, int nkeys,
                         const char *const *keys, const size_t *keylens, int nargs,
                         const char *const *args, const size_t *arglens);

/* ---- streams (write-behind) ----------------------------------------------------- */

/**
 * XADD stream * f1 v1 ... with backpressure: when max_len > 0 and the stream
 * already holds max_len entries or more, nothing is added and the callback
 * gets STRATA_EBACKPRESSURE (one atomic script; a Strata write-behind stream
 * is never trimmed by MAXLEN).  The reply is the new entry id.  nfv is the
 * count of field and value strings (even, >= 2).
 */
int strata_redis_xadd(strata_redis *r, const strata_redis_call *call, const char *stream,
                      uint64_t max_len, int nfv, const char *const *fv, const size_t *fvlen,
                      strata_redis_cb cb, void *ud);

/** XGROUP CREATE stream group start MKSTREAM; an existing group is STRATA_OK (idempotent). */
int strata_redis_xgroup_create(strata_redis *r, const char *stream, const char *group,
                               const char *start_id, strata_redis_cb cb, void *ud);

/**
 * XREADGROUP GROUP group consumer COUNT count [BLOCK block_ms] STREAMS s ids;
 * block_ms > 0 runs on a dedicated connection with a deadline of
 * block_ms + the call timeout.  ids: ">" for new entries, "0" for own pending.
 * The reply (nil when nothing arrived) is walked with strata_redis_xentries().
 */
int strata_redis_xreadgroup(strata_redis *r, const strata_redis_call *call, const char *group,
                            const char *consumer, uint32_t count, uint32_t block_ms,
                            const char *stream, const char *id, strata_redis_cb cb, void *ud);

/** XACK stream group id...; the reply is the number acknowledged. */
int strata_redis_xack(strata_redis *r, const char *stream, const char *group, int nids,
                      const char *const *ids, strata_redis_cb cb, void *ud);

/**
 * XAUTOCLAIM stream group consumer min_idle_ms start COUNT count: takes over
 * entries pending longer than min_idle_ms (a dead consumer's).  Reply:
 * [next-start, entries, deleted-ids]; walk reply->element[1] with strata_redis_xentries().
 */
int strata_redis_xautoclaim(strata_redis *r, const char *stream, const char *group,
                            const char *consumer, uint64_t min_idle_ms, const char *start,
                            uint32_t count, strata_redis_cb cb, void *ud);

/**
 * Trims entries that every consumer group has acknowledged: XTRIM MINID at
 * the lowest of each group's oldest pending entry and its last-delivered id,
 * in one script; never trims a stream with no group.  Reply: entries removed.
 */
int strata_redis_xtrim_safe(strata_redis *r, const char *stream, strata_redis_cb cb, void *ud);

/** One stream entry as seen by strata_redis_xentries(); pointers are borrowed from the reply. */
typedef struct strata_redis_xentry {
    const char *stream;
    size_t streamlen; /* NULL for XAUTOCLAIM/XRANGE-shaped lists */
    const char *id;
    size_t idlen;
    const strata_redis_reply *const *fv; /* field, value, field, value ... */
    size_t nfv;                          /* 0 for an entry deleted while pending */
} strata_redis_xentry;

/**
 * Calls fn for each entry of an XREADGROUP/XREAD reply ([[stream, [[id, [f, v..]]..]]..])
 * or an entry list ([[id, [f, v..]]..]); stops early when fn returns non-zero
 * and returns that value.  STRATA_EPROTO on a malformed reply, 0 otherwise.
 */
int strata_redis_xentries(const strata_redis_reply *reply,
                          int (*fn)(void *ud, const strata_redis_xentry *e), void *ud);

/* ---- tracked invalidation (L1) -------------------------------------------------- */

/** What the tracking side tells the L1 (called on the client's loop). */
typedef struct strata_redis_tracking_cbs {
    /* A key under a tracked prefix was changed or expired on `node` (keys are
     * binary-safe; borrowed). */
    void (*on_invalidate)(void *ud, const char *key, size_t len);
    /* Everything tracked may be stale: the tracking connection dropped or was
     * re-armed (failover, reconnect), or the node was flushed.  The L1 must
     * drop (or mark stale) every entry under the tracked prefixes. */
    void (*on_flush)(void *ud);
    void *ud;
    /* Optional (NULL: on_flush is called instead).  Every entry under
     * `prefix` may be stale: drop (or mark stale) those only.  Called when a
     * sequence stream (strata_redis_tracking_watch_seq) shows a gap, and, once
     * sequence streams are watched, instead of on_flush for the tracked
     * prefixes no stream covers when the tracking connection drops or re-arms. */
    void (*on_resync)(void *ud, const char *prefix, size_t len);
} strata_redis_tracking_cbs;

/**
 * Starts tracked invalidation for keys under `prefixes` (BCAST, RESP2:
 * one connection per data node runs CLIENT TRACKING on REDIRECT <own id>
 * BCAST PREFIX ... and is subscribed to __redis__:invalidate; in Cluster, one
 * per master).  It re-arms itself after every reconnect or failover and calls
 * on_flush whenever invalidations may have been missed.  Prefixes are copied.
 * One tracking session per client; STRATA_EEXIST if already started.
 */
int strata_redis_tracking_start(strata_redis *r, int nprefixes, const char *const *prefixes,
                                const strata_redis_tracking_cbs *cbs);

/** True when every data node's tracking connection is armed (for tests and /v1/info). */
bool strata_redis_tracking_armed(const strata_redis *r);

/*
 * Invalidation-loss detection with sequence streams.
 *
 * Counting invalidation messages cannot detect a loss (BCAST coalesces the
 * keys written in one event-loop pass), so every write to a key under a
 * watched prefix also appends (seq, key) to a capped stream in the same script
 * (strata_redis_tracked_write, or the one-line XADD documented in
 * tracked_write.lua for scenario scripts).  The reader polls each watched
 * stream (EVALSHA of seq_read.lua on the client's pipelined connection, every
 * poll_ms, at once again while it is behind) and
 *   - calls on_invalidate for every entry, in sequence order (a write whose
 *     tracking message was lost is still invalidated, poll_ms later);
 *   - when the entry after the last one it applied was trimmed away or
 *     skipped, or the stream was reset (deleted, or a failover lost its tail),
 *     calls on_resync(prefix) for that stream's prefix only, and goes on from
 *     the newest entry.
 * Once a stream covers a tracked prefix (the watch's prefix starts with it),
 * a drop or re-arm of the tracking connection no longer flushes everything:
 * on_resync is called for the tracked prefixes no stream covers, and the
 * streams are polled at once (a master change still calls on_flush: the new
 * master's stream may have lost entries the reader never saw).
 */

/**
 * Watches `stream` for writes under `prefix` (both copied; prefix should be,
 * or lie under, a tracked prefix; in Cluster use one stream per hash tag, e.g.
 * prefix "p:{7}" and stream "strata:seq:p:{7}", and do not put streams under
 * a tracked prefix).  The first poll only learns the newest sequence (the
 * arming flush covers what came before).  poll_ms 0 = 100.  Call after
 * strata_redis_tracking_start.  STRATA_EINVAL (no tracking session, bad
 * argument), STRATA_ENOMEM, STRATA_EEXIST (stream already watched).
 */
int strata_redis_tracking_watch_seq(strata_redis *r, const char *prefix, const char *stream,
                                    uint32_t poll_ms);

/**
 * Runs argv (argv[1] is the key) through tracked_write.lua: XADD stream
 * MAXLEN cap 0-* k key, then the command, atomically (cap >= 1; in Cluster
 * the key and the stream must share a slot, else STRATA_ECROSSSLOT).  The
 * reply is the command's own.  Errors as strata_redis_evalsha.
 */
int strata_redis_tracked_write(strata_redis *r, const strata_redis_call *call, const char *stream,
                               uint32_t cap, int argc, const char *const *argv,
                               const size_t *argvlen, strata_redis_cb cb, void *ud);

/* ---- introspection (tests, /v1/info) -------------------------------------------- */

typedef struct strata_redis_stats {
    uint64_t commands;      /* completed calls */
    uint64_t unknown;       /* completed with STRATA_EUNKNOWN */
    uint64_t unavail;       /* completed with STRATA_EUNAVAIL */
    uint64_t timeouts;      /* deadlines passed (sent or not) */
    uint64_t retries;       /* ERETRY-class and NOSCRIPT re-sends */
    uint64_t moved, ask;    /* Cluster redirects followed */
    uint64_t reconnects;    /* connections established after the first */
    uint64_t failovers;     /* master changes seen (Sentinel) / slot map refreshes (Cluster) */
    uint64_t invalidations; /* keys delivered to on_invalidate */
    uint64_t flushes;       /* on_flush calls */
    uint64_t seq_applied;   /* sequence-stream entries applied (on_invalidate) */
    uint64_t seq_gaps;      /* sequence-stream gaps / resets found (each one on_resync) */
    uint64_t resyncs;       /* on_resync calls (gaps + uncovered prefixes on drop/re-arm) */
} strata_redis_stats;

void strata_redis_get_stats(const strata_redis *r, strata_redis_stats *out);

/** "host:port" of the current master (Sentinel) or the node (standalone); "" if unknown. */
const char *strata_redis_master_addr(const strata_redis *r);

/** CRC16 (XMODEM) slot of a key with {hash tag} rules, 0..16383. */
unsigned strata_redis_key_slot(const char *key, size_t len);

/* ---- the blocking API (tools, tests, CLI) ------------------------------------------ */

typedef struct strata_redis_sync strata_redis_sync;

/**
 * A blocking client: a private uv loop running a strata_redis, so every mode
 * (Sentinel, Cluster) and every helper above works the same.  Not
 * thread-safe: one per thread.  Same errors as strata_redis_create.
 */
int strata_redis_sync_create(strata_redis_sync **out, const char *url,
                             const strata_redis_options *opts, strata_buf *err);
void strata_redis_sync_destroy(strata_redis_sync **s);

/**
 * Runs one command and waits.  On success *reply (if reply is not NULL) is
 * an owned reply (strata_redis_reply_free); on an error reply it is set too.
 * Returns the status the callback would have got.
 */
int strata_redis_sync_command(strata_redis_sync *s, strata_redis_reply **reply, const char *fmt,
                              ...);
int strata_redis_sync_command_argv(strata_redis_sync *s, const strata_redis_call *call,
                                   strata_redis_reply **reply, int argc, const char *const *argv,
                                   const size_t *argvlen);

/** The async client inside, to use any helper synchronously with strata_redis_sync_wait(). */
strata_redis *strata_redis_sync_client(strata_redis_sync *s);

/** A completion for any async helper: pass strata_redis_sync_cb and &op, then wait. */
typedef struct strata_redis_sync_op {
    bool done;
    int status;
    strata_redis_reply *reply; /* owned copy, or NULL */
} strata_redis_sync_op;

void strata_redis_sync_cb(void *op, int status, const strata_redis_reply *reply);

/** Runs the private loop until op->done; returns op->status. */
int strata_redis_sync_wait(strata_redis_sync *s, strata_redis_sync_op *op);

/** Runs the private loop for up to ms milliseconds (lets background work progress). */
void strata_redis_sync_run_for(strata_redis_sync *s, uint32_t ms);

#endif
