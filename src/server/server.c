/*
 * server.c: the server's lifecycle: options, worker threads, listeners,
 * graceful shutdown (server.h).
 *
 * Workers.  Each worker thread runs its own libuv loop with its own listening
 * socket on the same address (SO_REUSEPORT: the kernel spreads incoming
 * connections over the listeners, no accept lock, no cross-thread handoff).
 * The sockets are created and bound here, on the caller's thread, so that a
 * bind failure is reported by strata_server_start(); with port 0 the first
 * bind picks a port and the others bind that one.  A connection lives and
 * dies on the worker that accepted it.
 *
 * Shutdown (strata_server_stop), in order:
 *   1. every worker closes its listener, closes idle keep-alive connections,
 *      lets requests in flight finish (their responses say Connection: close),
 *      and asks SSE handlers to end their streams (the abandon callback);
 *   2. the caller waits until all connections are gone or --drain-timeout
 *      passes, then the rest are closed (handlers still holding a request are
 *      told through their abandon callback);
 *   3. the shutdown hooks run, in reverse order of registration, on the
 *      caller's thread (the worker loops are still alive, idle);
 *   4. each worker finalises its slots (reverse order), closes its handles
 *      and exits; the caller joins them.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/server_internal.h"
#include "strata/alloc.h"
#include "strata/log.h"
#include "strata/status.h"

/* ---- options --------------------------------------------------------------------- */

#define STRATA_SERVER_OPTIONS(X)                                                                 \
    X(listen, STRATA_OPT_STR, "127.0.0.1:8080", 1, 0, NULL, 0,                                   \
      "HTTP address HOST:PORT (IPv4, or [IPv6]); port 0 picks a free port")                      \
    X(workers, STRATA_OPT_INT, "0", 0, 256, NULL, 0,                                             \
      "worker threads, each with its own event loop and listener (0 = number of cores)")         \
    X(max_connections, STRATA_OPT_INT, "10000", 1, 1000000, NULL, 0,                             \
      "open client connections at most; beyond it new ones get 503 and are closed")              \
    X(max_header_bytes, STRATA_OPT_SIZE, "16k", 256, 65536, NULL, 0,                             \
      "request line plus headers at most (431 beyond)")                                          \
    X(max_url_bytes, STRATA_OPT_SIZE, "4k", 16, 65536, NULL, 0,                                  \
      "request target length at most (414 beyond)")                                              \
    X(max_body_bytes, STRATA_OPT_SIZE, "1m", 0, 1073741824, NULL, 0,                             \
      "request body at most (413 beyond)")                                                       \
    X(header_timeout, STRATA_OPT_DURATION, "10s", 1, 3600000, NULL, 0,                           \
      "whole header block must arrive within this, from its first byte (408; slowloris)")        \
    X(idle_timeout, STRATA_OPT_DURATION, "60s", 1, 86400000, NULL, 0,                            \
      "keep-alive connections idle this long are closed")                                        \
    X(request_timeout, STRATA_OPT_DURATION, "5s", 1, 3600000, NULL, 0,                           \
      "body upload (408) and handling (504) deadline; passed down to Redis and DB calls")        \
    X(drain_timeout, STRATA_OPT_DURATION, "10s", 0, 3600000, NULL, 0,                            \
      "graceful shutdown waits this long for requests in flight")                                \
    X(output_high_water, STRATA_OPT_SIZE, "1m", 4096, 1073741824, NULL, 0,                       \
      "per-connection queued output above which reading stops (backpressure)")                   \
    X(sse_heartbeat, STRATA_OPT_DURATION, "15s", 10, 3600000, NULL, 0,                           \
      "interval of SSE comment heartbeats (keep-alive, dead-client detection)")                  \
    X(listen_backlog, STRATA_OPT_INT, "4096", 1, 65535, NULL, 0, "listen(2) backlog per worker") \
    X(admin_token, STRATA_OPT_STR, NULL, 0, 0, NULL, STRATA_OPT_SECRET,                          \
      "bearer token for /v1/admin/* (random, printed at start-up, when unset)")                  \
    X(debug_clock, STRATA_OPT_BOOL, "false", 0, 0, NULL, 0,                                      \
      "enable POST /v1/admin/clock to move the server clock (tests only)")

enum { STRATA_SERVER_OPTIONS(STRATA_OPT_ENUM_ENTRY) SERVER_OPT__COUNT };
static strata_option server_opts[] = {STRATA_SERVER_OPTIONS(STRATA_OPT_ROW)};

strata_opt_group strata_server_opt_group = {"HTTP server", server_opts, SERVER_OPT__COUNT};

/* The option's value, applying the declared default when the table was never loaded. */
static strata_option *opt(int i) {
    strata_option *o = &server_opts[i];
    if (!o->source && o->def)
        strata_option_set(o, o->def, "default", NULL);
    return o;
}

static int parse_listen(const char *s, char *host, size_t hostcap, int *port) {
    const char *colon;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return STRATA_EINVAL;
        if ((size_t)(rb - s - 1) >= hostcap)
            return STRATA_EINVAL;
        memcpy(host, s + 1, (size_t)(rb - s - 1));
        host[rb - s - 1] = '\0';
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= hostcap)
            return STRATA_EINVAL;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
    }
    int64_t p;
    if (strata_parse_int64(colon + 1, 0, 65535, &p) != STRATA_OK)
        return STRATA_EINVAL;
    *port = (int)p;
    if (host[0] == '\0' || strcmp(host, "localhost") == 0)
        snprintf(host, hostcap, "127.0.0.1");
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    if (uv_ip4_addr(host, 0, &a4) != 0 && uv_ip6_addr(host, 0, &a6) != 0)
        return STRATA_EINVAL;
    return STRATA_OK;
}

/* ---- create / register ------------------------------------------------------------ */

static void random_token(char *out, size_t cap) {
    unsigned char rnd[24];
    size_t got = 0;
    while (got < sizeof rnd) {
        ssize_t n = getrandom(rnd + got, sizeof rnd - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* no entropy source: fall back on something unique per process */
            uint64_t t = uv_hrtime() ^ ((uint64_t)getpid() << 32);
            for (size_t i = got; i < sizeof rnd; i++)
                rnd[i] = (unsigned char)(t >> ((i % 8) * 8)) ^ (unsigned char)(i * 131);
            break;
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    size_t j = 0;
    for (size_t i = 0; i < sizeof rnd && j + 2 < cap; i++) {
        out[j++] = hex[rnd[i] >> 4];
        out[j++] = hex[rnd[i] & 15];
    }
    out[j] = '\0';
}

static int64_t gauge_conns(void *ctx) {
    strata_server *s = ctx;
    return atomic_load(&s->nconns);
}

int strata_server_create(strata_server **out, const strata_server_deps *deps, strata_buf *err) {
    *out = NULL;
    strata_server *s = strata_calloc(1, sizeof *s);
    if (!s)
        return STRATA_ENOMEM;
    if (deps)
        s->deps = *deps;
    s->clock = s->deps.clock ? s->deps.clock : strata_clock_system();
    srv_config *c = &s->cfg;
    if (parse_listen(opt(OPT_listen)->val.s ? opt(OPT_listen)->val.s : "", c->host, sizeof c->host,
                     &c->port) != STRATA_OK) {
        if (err)
            strata_buf_printf(
                err,
                "invalid value for --listen: \"%s\"; expected HOST:PORT with a numeric "
                "IPv4 or [IPv6] address and a port in [0, 65535]",
                opt(OPT_listen)->val.s ? opt(OPT_listen)->val.s : "");
        strata_free(s);
        return STRATA_ERANGE;
    }
    c->workers = (int)opt(OPT_workers)->val.i;
    if (c->workers == 0)
        c->workers = (int)uv_available_parallelism();
    if (c->workers < 1)
        c->workers = 1;
    c->max_connections = opt(OPT_max_connections)->val.i;
    c->max_header_bytes = opt(OPT_max_header_bytes)->val.i;
    c->max_url_bytes = opt(OPT_max_url_bytes)->val.i;
    c->max_body_bytes = opt(OPT_max_body_bytes)->val.i;
    c->header_timeout_ms = opt(OPT_header_timeout)->val.i;
    c->idle_timeout_ms = opt(OPT_idle_timeout)->val.i;
    c->request_timeout_ms = opt(OPT_request_timeout)->val.i;
    c->drain_timeout_ms = opt(OPT_drain_timeout)->val.i;
    c->output_high_water = opt(OPT_output_high_water)->val.i;
    c->sse_heartbeat_ms = opt(OPT_sse_heartbeat)->val.i;
    c->backlog = opt(OPT_listen_backlog)->val.i;
    c->debug_clock = opt(OPT_debug_clock)->val.i != 0;
    if (c->max_url_bytes > c->max_header_bytes)
        c->max_url_bytes = c->max_header_bytes;
    const char *tok = opt(OPT_admin_token)->val.s;
    if (tok && *tok) {
        if (strlen(tok) >= sizeof s->admin_token) {
            if (err)
                strata_buf_printf(err, "invalid value for --admin-token: longer than %zu bytes",
                                  sizeof s->admin_token - 1);
            strata_free(s);
            return STRATA_ERANGE;
        }
        snprintf(s->admin_token, sizeof s->admin_token, "%s", tok);
    } else {
        random_token(s->admin_token, sizeof s->admin_token);
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    atomic_init(&s->nconns, 0);
    s->start_ns = uv_hrtime();

    strata_metrics *m = s->deps.metrics;
    if (m) {
        s->m_conn_total = strata_metrics_counter(m, "strata_http_connections_total",
                                                 "HTTP connections accepted", NULL);
        s->m_rej_limit = strata_metrics_counter(m, "strata_http_connections_rejected_total",
                                                "connections refused at --max-connections", NULL);
        static const char *const kinds[4] = {"header", "body", "handler", "idle"};
        for (int i = 0; i < 4; i++) {
            char labels[40];
            snprintf(labels, sizeof labels, "phase=\"%s\"", kinds[i]);
            s->m_timeouts[i] = strata_metrics_counter(m, "strata_http_timeouts_total",
                                                      "HTTP timeouts by phase", labels);
        }
        s->m_bad_requests = strata_metrics_counter(m, "strata_http_bad_requests_total",
                                                   "requests refused while parsing (4xx)", NULL);
        s->m_conns = strata_metrics_gauge_fn(m, "strata_http_connections", "open HTTP connections",
                                             NULL, gauge_conns, s);
    }
    /* The pseudo-route that accounts 404/405 and refused requests. */
    s->unmatched = strata_calloc(1, sizeof *s->unmatched);
    if (!s->unmatched) {
        strata_server_destroy(&s);
        return STRATA_ENOMEM;
    }
    snprintf(s->unmatched->method, sizeof s->unmatched->method, "*");
    s->unmatched->pattern = strata_strdup("unmatched");
    if (m)
        s->unmatched->latency = strata_metrics_histogram(
            m, "strata_http_request_duration_seconds",
            "HTTP request latency from the last request byte to the response being queued",
            "route=\"unmatched\"", STRATA_HIST_NS);
    int rc = srv_builtin_register(s);
    if (rc != STRATA_OK) {
        strata_server_destroy(&s);
        return rc;
    }
    *out = s;
    return STRATA_OK;
}

int strata_server_route(strata_server *s, const char *method, const char *pattern,
                        strata_http_handler handler, void *ctx) {
    return srv_router_add(s, method, pattern, 0, handler, ctx);
}

int strata_server_route_ex(strata_server *s, const char *method, const char *pattern,
                           unsigned flags, strata_http_handler handler, void *ctx) {
    return srv_router_add(s, method, pattern, flags, handler, ctx);
}

int strata_server_add_probe(strata_server *s, const char *name, strata_server_probe_fn fn,
                            void *ctx) {
    if (!s || !name || !fn || s->started)
        return STRATA_EINVAL;
    srv_probe *np = strata_realloc(s->probes, (size_t)(s->nprobes + 1) * sizeof *np);
    if (!np)
        return STRATA_ENOMEM;
    s->probes = np;
    char *nm = strata_strdup(name);
    if (!nm)
        return STRATA_ENOMEM;
    s->probes[s->nprobes++] = (srv_probe){nm, fn, ctx};
    return STRATA_OK;
}

int strata_server_add_shutdown_hook(strata_server *s, strata_server_hook_fn fn, void *ctx) {
    if (!s || !fn || s->stopped)
        return STRATA_EINVAL;
    srv_hook *nh = strata_realloc(s->hooks, (size_t)(s->nhooks + 1) * sizeof *nh);
    if (!nh)
        return STRATA_ENOMEM;
    s->hooks = nh;
    s->hooks[s->nhooks++] = (srv_hook){fn, ctx};
    return STRATA_OK;
}

int strata_server_add_worker_slot(strata_server *s, strata_server_worker_init_fn init,
                                  strata_server_worker_fini_fn fini, void *ctx) {
    if (!s || s->started || (!init && !fini))
        return STRATA_EINVAL;
    srv_slot *ns = strata_realloc(s->slots, (size_t)(s->nslots + 1) * sizeof *ns);
    if (!ns)
        return STRATA_ENOMEM;
    s->slots = ns;
    s->slots[s->nslots] = (srv_slot){init, fini, ctx};
    return s->nslots++;
}

const strata_server_deps *strata_server_get_deps(const strata_server *s) { return &s->deps; }

const char *strata_server_address(const strata_server *s) { return s->address; }

const char *strata_server_admin_token(const strata_server *s) { return s->admin_token; }

/* ---- listeners ------------------------------------------------------------------------- */

static int open_listener(strata_server *s, int port, int *fd_out, int *bound, strata_buf *err) {
    struct sockaddr_storage ss;
    socklen_t slen;
    memset(&ss, 0, sizeof ss);
    int family;
    if (uv_ip4_addr(s->cfg.host, port, (struct sockaddr_in *)&ss) == 0) {
        family = AF_INET;
        slen = sizeof(struct sockaddr_in);
    } else if (uv_ip6_addr(s->cfg.host, port, (struct sockaddr_in6 *)&ss) == 0) {
        family = AF_INET6;
        slen = sizeof(struct sockaddr_in6);
    } else {
        if (err)
            strata_buf_printf(err, "cannot parse listen host %s", s->cfg.host);
        return STRATA_EINVAL;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    if (bind(fd, (struct sockaddr *)&ss, slen) < 0)
        goto fail;
    if (listen(fd, (int)s->cfg.backlog) < 0)
        goto fail;
    struct sockaddr_storage got;
    socklen_t glen = sizeof got;
    if (getsockname(fd, (struct sockaddr *)&got, &glen) < 0)
        goto fail;
    *bound = ntohs(family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                     : ((struct sockaddr_in6 *)&got)->sin6_port);
    *fd_out = fd;
    return STRATA_OK;
fail : {
    int e = errno;
    if (fd >= 0)
        close(fd);
    if (err)
        strata_buf_printf(err, "cannot listen on %s:%d: %s", s->cfg.host, port, strerror(e));
    return STRATA_ESYS;
}
}

static void raise_nofile(strata_server *s) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)s->cfg.max_connections + 256 + (rlim_t)s->cfg.workers * 16;
    if (rl.rlim_cur >= want)
        return;
    rlim_t before = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        LOG_INFO("rlimit_nofile_raised", "from=%llu to=%llu", (unsigned long long)before,
                 (unsigned long long)rl.rlim_cur);
    if (rl.rlim_cur < want)
        LOG_WARN("rlimit_nofile_low", "limit=%llu max_connections=%lld",
                 (unsigned long long)rl.rlim_cur, (long long)s->cfg.max_connections);
}

/* ---- workers ------------------------------------------------------------------------------ */

static void on_wake(uv_async_t *a);

static void close_cb_noop(uv_handle_t *h) { (void)h; }

static void worker_exit(srv_worker *w) {
    strata_server *s = w->s;
    srv_worker_drain(w, true);
    for (int i = s->nslots - 1; i >= 0; i--)
        if (s->slots[i].fini)
            s->slots[i].fini(&w->loop, s->slots[i].ctx, w->slot_data[i]);
    uv_close((uv_handle_t *)&w->wake, close_cb_noop);
}

static void on_wake(uv_async_t *a) {
    srv_worker *w = a->data;
    int cmd = atomic_load(&w->cmd);
    while (w->cmd_done < cmd) {
        int next = ++w->cmd_done;
        if (next == SRV_CMD_DRAIN)
            srv_worker_drain(w, false);
        else if (next == SRV_CMD_FORCE)
            srv_worker_drain(w, true);
        else if (next == SRV_CMD_EXIT)
            worker_exit(w);
    }
}

static void walk_close(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void *worker_main(void *arg) {
    srv_worker *w = arg;
    strata_server *s = w->s;
    int rc = STRATA_OK;
    for (int i = 0; i < s->nslots && rc == STRATA_OK; i++) {
        if (s->slots[i].init) {
            rc = s->slots[i].init(&w->loop, s->slots[i].ctx, &w->slot_data[i]);
            if (rc != STRATA_OK)
                LOG_ERROR("worker_init_failed", "worker=%d slot=%d status=%s", w->id, i,
                          strata_status_name(rc));
        }
    }
    if (rc == STRATA_OK) {
        uv_tcp_init(&w->loop, &w->listener);
        w->listener.data = w;
        int e = uv_tcp_open(&w->listener, w->listen_fd);
        if (e == 0)
            e = uv_listen((uv_stream_t *)&w->listener, (int)s->cfg.backlog, srv_on_connection);
        if (e != 0) {
            LOG_ERROR("listen_failed", "worker=%d error=\"%s\"", w->id, uv_strerror(e));
            rc = STRATA_ESYS;
        }
        w->listening = true; /* the handle is initialised either way: close it at exit */
        w->listen_fd = -1;   /* owned by the handle now */
    }
    pthread_mutex_lock(&s->mu);
    w->init_rc = rc;
    s->workers_ready++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);

    uv_run(&w->loop, UV_RUN_DEFAULT);
    /* Whatever a component left open: close it so the loop can be freed. */
    uv_walk(&w->loop, walk_close, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    srv_worker_free_zombies(w);
    return NULL;
}

static void send_cmd(strata_server *s, int cmd) {
    for (int i = 0; i < s->nworkers; i++) {
        srv_worker *w = &s->workers[i];
        if (!w->thread_started)
            continue;
        if (atomic_load(&w->cmd) < cmd)
            atomic_store(&w->cmd, cmd);
        uv_async_send(&w->wake);
    }
}

static void join_workers(strata_server *s) {
    send_cmd(s, SRV_CMD_EXIT);
    for (int i = 0; i < s->nworkers; i++) {
        srv_worker *w = &s->workers[i];
        if (w->thread_started) {
            pthread_join(w->thread, NULL);
            w->thread_started = false;
        }
    }
}

static void free_workers(strata_server *s) {
    for (int i = 0; i < s->nworkers; i++) {
        srv_worker *w = &s->workers[i];
        if (w->listen_fd >= 0)
            close(w->listen_fd);
        if (w->loop_inited) {
            if (uv_loop_close(&w->loop) != 0)
                LOG_WARN("loop_close_busy", "worker=%d", w->id);
            w->loop_inited = false;
        }
        strata_free(w->rbuf);
        strata_free(w->rstats);
        strata_free(w->slot_data);
        strata_buf_free(&w->scratch);
    }
    strata_free(s->workers);
    s->workers = NULL;
    s->nworkers = 0;
}

int srv_worker_setup(strata_server *s, srv_worker *w, int id) {
    w->s = s;
    w->id = id;
    w->rbuf = strata_malloc(SRV_READ_BUF);
    w->rstats = strata_calloc((size_t)s->nroutes + 1, sizeof *w->rstats);
    w->slot_data = strata_calloc((size_t)s->nslots + 1, sizeof *w->slot_data);
    if (!w->rbuf || !w->rstats || !w->slot_data || uv_loop_init(&w->loop) != 0)
        return STRATA_ENOMEM;
    w->loop_inited = true;
    uv_async_init(&w->loop, &w->wake, on_wake);
    w->wake.data = w;
    atomic_init(&w->cmd, SRV_CMD_NONE);
    return STRATA_OK;
}

void srv_worker_teardown(srv_worker *w) {
    srv_worker_drain(w, true);
    if (!uv_is_closing((uv_handle_t *)&w->wake))
        uv_close((uv_handle_t *)&w->wake, close_cb_noop);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_walk(&w->loop, walk_close, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    srv_worker_free_zombies(w);
    uv_loop_close(&w->loop);
    w->loop_inited = false;
    strata_free(w->rbuf);
    strata_free(w->rstats);
    strata_free(w->slot_data);
    strata_buf_free(&w->scratch);
    w->rbuf = NULL;
    w->rstats = NULL;
    w->slot_data = NULL;
}

int strata_server_start(strata_server *s, strata_buf *err) {
    if (!s || s->started)
        return STRATA_EINVAL;
    s->started = true;
    raise_nofile(s);
    int n = s->cfg.workers;
    s->workers = strata_calloc((size_t)n, sizeof *s->workers);
    if (!s->workers)
        return STRATA_ENOMEM;
    s->nworkers = n;
    for (int i = 0; i < n; i++)
        s->workers[i].listen_fd = -1;
    int port = s->cfg.port, rc = STRATA_OK;
    for (int i = 0; i < n && rc == STRATA_OK; i++) {
        srv_worker *w = &s->workers[i];
        w->s = s;
        w->id = i;
        int bound = 0;
        rc = open_listener(s, port, &w->listen_fd, &bound, err);
        if (rc != STRATA_OK)
            break;
        port = bound;
        rc = srv_worker_setup(s, w, i);
    }
    if (rc == STRATA_OK) {
        if (strchr(s->cfg.host, ':'))
            snprintf(s->address, sizeof s->address, "[%s]:%d", s->cfg.host, port);
        else
            snprintf(s->address, sizeof s->address, "%s:%d", s->cfg.host, port);
        int started = 0;
        for (int i = 0; i < n; i++) {
            srv_worker *w = &s->workers[i];
            if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
                if (err)
                    strata_buf_printf(err, "cannot start worker thread: %s", strerror(errno));
                rc = STRATA_ESYS;
                break;
            }
            w->thread_started = true;
            started++;
        }
        pthread_mutex_lock(&s->mu);
        while (s->workers_ready < started)
            pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
        for (int i = 0; i < started && rc == STRATA_OK; i++) {
            if (s->workers[i].init_rc != STRATA_OK) {
                rc = s->workers[i].init_rc;
                if (err)
                    strata_buf_printf(err, "worker %d failed to start: %s", i, strata_strerror(rc));
            }
        }
    }
    if (rc != STRATA_OK) {
        join_workers(s);
        free_workers(s);
        s->stopped = true;
        return rc;
    }
    LOG_INFO("http_listening", "listen=%s workers=%d max_connections=%lld", s->address, n,
             (long long)s->cfg.max_connections);
    return STRATA_OK;
}

void strata_server_stop(strata_server *s) {
    if (!s || !s->started || s->stopped)
        return;
    s->stopped = true;
    LOG_INFO("http_draining", "connections=%lld drain_timeout_ms=%lld",
             (long long)atomic_load(&s->nconns), (long long)s->cfg.drain_timeout_ms);
    send_cmd(s, SRV_CMD_DRAIN);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    uint64_t ns = (uint64_t)until.tv_nsec + (uint64_t)s->cfg.drain_timeout_ms * 1000000u;
    until.tv_sec += (time_t)(ns / 1000000000u);
    until.tv_nsec = (long)(ns % 1000000000u);
    pthread_mutex_lock(&s->mu);
    while (s->workers_drained < s->nworkers) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT)
            break;
    }
    bool drained = s->workers_drained >= s->nworkers;
    pthread_mutex_unlock(&s->mu);
    if (!drained) {
        LOG_WARN("http_drain_timeout", "connections=%lld", (long long)atomic_load(&s->nconns));
        send_cmd(s, SRV_CMD_FORCE);
        pthread_mutex_lock(&s->mu);
        while (s->workers_drained < s->nworkers)
            pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
    }
    for (int i = s->nhooks - 1; i >= 0; i--)
        s->hooks[i].fn(s->hooks[i].ctx);
    join_workers(s);
    free_workers(s);
    LOG_INFO("http_stopped", "drained=%s", drained ? "true" : "false");
}

void strata_server_destroy(strata_server **sp) {
    if (!sp || !*sp)
        return;
    strata_server *s = *sp;
    if (s->started && !s->stopped)
        strata_server_stop(s);
    free_workers(s);
    srv_routes_free(s);
    for (int i = 0; i < s->nprobes; i++)
        strata_free(s->probes[i].name);
    strata_free(s->probes);
    strata_free(s->hooks);
    strata_free(s->slots);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    strata_free(s);
    *sp = NULL;
}
