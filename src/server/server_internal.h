/*
 * server_internal.h: the server's private structures, shared by the files of
 * src/server/ (server.c: lifecycle and workers; conn.c: connections and the
 * HTTP/1.1 state machine; router.c: routes; respond.c: responses and the
 * request API; builtin.c: /healthz, /readyz, /metrics, /v1/info, admin).
 *
 * Ownership in one picture:
 *
 *   strata_server ──┬── routes[]  (immutable once started; read by all workers)
 *                   ├── probes[], hooks[], slots[]
 *                   └── workers[] ── srv_worker: one thread, one uv_loop_t,
 *                                    its listener, its connections (a list),
 *                                    a shared 64 KiB read buffer, a scratch buffer,
 *                                    per-route metric handles (cached)
 *   srv_conn (malloc'd per connection, owned by its worker)
 *     ├── uv_tcp_t + uv_timer_t   (both closed before the conn is freed)
 *     ├── http_parser, output buffers (out = filling, wbuf = in flight),
 *     │   pending = input held back while a request is being handled
 *     └── strata_http_req (embedded: one request at a time per connection)
 *          hbuf (URL + headers), body, arena: kept across requests and only
 *          reset, so a keep-alive request mallocs nothing in the steady state.
 *
 * A conn is freed when both its handles are closed AND its request is not
 * held by a handler (an asynchronous handler may finish after the client left).
 */
#ifndef STRATA_SERVER_INTERNAL_H
#define STRATA_SERVER_INTERNAL_H

#include <http_parser.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "server/http.h"
#include "server/server.h"
#include "strata/buf.h"

#define SRV_MAX_HEADERS  100
#define SRV_MAX_PARAMS   8
#define SRV_MAX_SEGS     16
#define SRV_READ_BUF     (64 * 1024)
#define SRV_STATUS_CACHE 12
#define SRV_LINGER_MS    1000

/* ---- configuration (copied from the option group at create) ------------- */

typedef struct srv_config {
    char host[64];
    int port;
    int workers;
    int64_t max_connections;
    int64_t max_header_bytes;
    int64_t max_body_bytes;
    int64_t max_url_bytes;
    int64_t header_timeout_ms;
    int64_t idle_timeout_ms;
    int64_t request_timeout_ms;
    int64_t drain_timeout_ms;
    int64_t output_high_water;
    int64_t sse_heartbeat_ms;
    int64_t backlog;
    bool debug_clock;
} srv_config;

/* ---- routes ---------------------------------------------------------------- */

typedef struct srv_seg {
    char *text; /* literal text, or the parameter name */
    size_t len;
    bool param;
} srv_seg;

typedef struct srv_route {
    char method[16];
    char *pattern;
    unsigned flags;
    strata_http_handler fn;
    void *ctx;
    srv_seg segs[SRV_MAX_SEGS];
    int nseg;
    int index;                 /* into per-worker stats */
    strata_histogram *latency; /* strata_http_request_duration_seconds{route=} */
} srv_route;

/* Per-worker cache of counter handles: route x status. */
typedef struct srv_route_stats {
    int n;
    struct {
        int status;
        strata_counter *c;
    } st[SRV_STATUS_CACHE];
} srv_route_stats;

typedef struct srv_match {
    const srv_route *route;
    int nparams;
    const char *names[SRV_MAX_PARAMS];
    const char *vals[SRV_MAX_PARAMS]; /* percent-decoded, in the arena */
    char allow[96];                   /* for 405 */
    int status;                       /* 0 matched, 404, 405, 400 (bad encoding) */
} srv_match;

/* ---- the per-request arena ----------------------------------------------------- */

typedef struct srv_arena_block {
    struct srv_arena_block *next;
    size_t cap, used;
    _Alignas(16) char data[];
} srv_arena_block;

typedef struct srv_arena {
    srv_arena_block *head; /* the current block; the last in the chain is kept on reset */
} srv_arena;

void *srv_arena_alloc(srv_arena *a, size_t size);
void srv_arena_reset(srv_arena *a);
void srv_arena_free(srv_arena *a);

/* ---- requests and connections -------------------------------------------------- */

typedef enum srv_conn_state {
    CS_IDLE,    /* between requests (keep-alive), idle timeout */
    CS_HEADERS, /* first byte of a request seen; absolute header deadline */
    CS_BODY,    /* headers done, reading the body; request deadline */
    CS_HANDLER, /* dispatched, waiting for the handler; request deadline (504) */
    CS_STREAM,  /* streaming (chunked/SSE); heartbeat timer */
    CS_LINGER,  /* response with close sent, write side shut; draining input briefly */
} srv_conn_state;

typedef struct srv_worker srv_worker;
typedef struct srv_conn srv_conn;

struct strata_http_req {
    srv_conn *conn;
    srv_worker *w;
    /* parsing */
    strata_buf hbuf; /* URL then "name\0value\0" pairs */
    uint32_t url_off, url_len;
    uint32_t hdr_name[SRV_MAX_HEADERS], hdr_val[SRV_MAX_HEADERS];
    int nhdrs;
    char last_cb; /* 0, 'u', 'f', 'v' */
    size_t header_bytes;
    strata_buf body;
    int method;
    unsigned http_minor, http_major;
    const char *path, *query; /* in hbuf/arena, NUL-terminated */
    bool head, keepalive, expect_continue;
    /* dispatch */
    srv_match m;
    uint64_t start_ns, deadline_ns;
    srv_arena arena;
    strata_buf resp_hdrs; /* extra "Name: value\r\n" lines */
    cJSON *json;
    void (*abandon_fn)(strata_http_req *req, void *ctx);
    void *abandon_ctx;
    /* state */
    bool active;     /* a request is being received or handled */
    bool dispatched; /* the handler was called and has not finished */
    bool answered;   /* the server already answered (504) or the client is gone */
    bool abandon_notified;
    bool streaming;
    bool sse;
    bool chunked_out; /* stream uses chunked framing (HTTP/1.1) */
    int status;       /* response status, for metrics */
};

struct srv_conn {
    uv_tcp_t tcp; /* must stay first: the handle's address is the conn's */
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    http_parser parser;
    srv_worker *w;
    srv_conn *prev, *next;
    srv_conn_state state;
    uint64_t deadline; /* loop ms (uv_now) */
    uint64_t timer_due;
    bool timer_on;
    strata_buf out;  /* responses being assembled */
    strata_buf wbuf; /* the write in flight */
    bool writing;
    strata_buf pending; /* input not yet given to the parser */
    bool reading;
    bool in_parser; /* inside http_parser_execute (do not re-enter) */
    bool parser_paused;
    bool close_after_write;
    bool peer_eof;
    bool closing;
    bool zombie;      /* on w->zombies */
    int open_handles; /* tcp + timer until their close callbacks ran */
    int err_status;   /* set by a parser callback that refused the request */
    const char *err_code, *err_msg;
    strata_http_req req;
};

/* ---- workers and the server ---------------------------------------------------- */

enum { SRV_CMD_NONE = 0, SRV_CMD_DRAIN = 1, SRV_CMD_FORCE = 2, SRV_CMD_EXIT = 3 };

struct srv_worker {
    strata_server *s;
    int id;
    pthread_t thread;
    bool thread_started;
    uv_loop_t loop;
    bool loop_inited;
    uv_tcp_t listener;
    int listen_fd;
    bool listening;
    uv_async_t wake;
    _Atomic int cmd;
    int cmd_done;
    bool draining;
    bool drain_reported;
    srv_conn *conns;   /* open connections, doubly linked */
    srv_conn *zombies; /* closed, but a handler still holds the request */
    int nconns;
    char *rbuf; /* shared read buffer */
    bool rbuf_busy;
    strata_buf scratch;
    srv_route_stats *rstats; /* [nroutes + 1]: last = unmatched */
    void **slot_data;
    int init_rc;
    /* Date header cache */
    time_t date_sec;
    char date[40];
};

typedef struct srv_probe {
    char *name;
    strata_server_probe_fn fn;
    void *ctx;
} srv_probe;

typedef struct srv_hook {
    strata_server_hook_fn fn;
    void *ctx;
} srv_hook;

typedef struct srv_slot {
    strata_server_worker_init_fn init;
    strata_server_worker_fini_fn fini;
    void *ctx;
} srv_slot;

struct strata_server {
    strata_server_deps deps;
    strata_clock *clock; /* deps.clock or the system clock */
    srv_config cfg;
    char admin_token[96];
    char address[96];
    srv_route **routes;
    int nroutes, routes_cap;
    srv_probe *probes;
    int nprobes;
    srv_hook *hooks;
    int nhooks;
    srv_slot *slots;
    int nslots;
    srv_worker *workers;
    int nworkers;
    bool started, stopped;
    uint64_t start_ns;
    _Atomic int64_t nconns;
    /* drain accounting */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int workers_drained;
    int workers_ready;
    /* metrics */
    strata_counter *m_conn_total;
    strata_counter *m_rej_limit;
    strata_counter *m_timeouts[4]; /* header, body, handler, idle */
    strata_counter *m_bad_requests;
    strata_gauge *m_conns;
    srv_route *unmatched; /* pseudo route for 404/405/400 accounting */
};

/* server.c: one worker's state without its thread (start uses it; so does the fuzzer,
 * which drives a worker's loop itself).  teardown force-closes, runs the loop dry, frees. */
int srv_worker_setup(strata_server *s, srv_worker *w, int id);
void srv_worker_teardown(srv_worker *w);

/* router.c */
int srv_router_add(strata_server *s, const char *method, const char *pattern, unsigned flags,
                   strata_http_handler fn, void *ctx);
void srv_router_match(const strata_server *s, strata_http_req *req, srv_match *m);
void srv_routes_free(strata_server *s);

/* conn.c */
void srv_on_connection(uv_stream_t *listener, int status);
void srv_conn_close(srv_conn *c);
/* Feeds bytes read from the peer (what the read callback does; the fuzzer calls it too). */
void srv_conn_input(srv_conn *c, const char *data, size_t len);
/* Wraps an already connected stream socket as a connection of w (tests, fuzzing). */
srv_conn *srv_conn_adopt(srv_worker *w, int fd);
void srv_conn_flush(srv_conn *c);
void srv_conn_set_deadline(srv_conn *c, uint64_t deadline_ms);
void srv_conn_request_finished(srv_conn *c);
void srv_worker_drain(srv_worker *w, bool force);
/* Frees the zombies left when the loop has ended (no callback can finish them any more). */
void srv_worker_free_zombies(srv_worker *w);
uint64_t srv_conn_queued(const srv_conn *c);

/* respond.c */
void srv_write_head(strata_http_req *req, int status, const char *ctype, int64_t clen, bool close);
void srv_respond_error_raw(srv_conn *c, int status, const char *code, const char *msg);
/* Appends a whole error response (head + {"error":...} body) to the conn's output. */
void srv_write_error(strata_http_req *req, int status, const char *code, const char *msg);
/* Counts one response on route r (NULL: the unmatched pseudo-route); ns = latency (0: none). */
void srv_count(srv_worker *w, const srv_route *r, int status, uint64_t ns);
void srv_finish(strata_http_req *req);
void srv_notify_abandon(strata_http_req *req);
void srv_dispatch(strata_http_req *req);
const char *srv_reason(int status);
bool srv_token_equal(const char *a, size_t alen, const char *b, size_t blen);

/* builtin.c */
int srv_builtin_register(strata_server *s);

#endif
