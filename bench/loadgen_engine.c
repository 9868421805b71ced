/*
 * loadgen_engine.c: the load generator's async HTTP/1.1 client (loadgen.h).
 *
 * Threads.  cfg->threads loop threads, each with its own uv_loop, its share
 * of the connections, its own latency histogram and relaxed-atomic counters
 * that the calling thread sums for the progress line.  Nothing is shared
 * between loops except the start time: the calling thread publishes t0 once
 * every connection is open (or connect_timeout passed), so connection
 * set-up is not part of the measurement (wrk2 does the same).
 *
 * Closed loop (rate 0).  Each connection keeps `depth` requests in flight
 * (depth 1 = no pipelining): a response frees a slot, the slot is refilled at
 * once.  Latency = response time - send time.
 *
 * Open loop (rate R).  Request g is due at t0 + g/R (lg_sched_due_ns); a 1 ms
 * tick and every response send whatever is due on connections with a free
 * slot.  When every connection is busy, due requests wait, and their latency
 * is measured from the due time, not the send time: this is the correction
 * for coordinated omission of Gil Tene's wrk2 ("How NOT to measure latency",
 * 2015): a closed-loop client that stalls with the server stops sending, so
 * the requests it would have sent during the stall are never measured and
 * the percentiles look better than what users see.  `late` counts requests
 * sent more than 1 ms after their due time (the client could not keep up).
 *
 * Failures.  A request with no answer within timeout_ms (from its send)
 * counts TIMEOUT, and so do the requests pipelined behind it, since the
 * connection is closed (HTTP/1.1 has no way to skip one response).  A reset,
 * EOF, or write error counts CONN_ERROR for every request in flight; a
 * malformed response BAD_RESPONSE (the ones behind it CONN_ERROR).  The
 * connection then reconnects at once; only a failed connect (refused, or
 * not established within connect_timeout) waits, with exponential backoff
 * (10 ms .. 1 s), so a dead server is not hammered.  When no
 * connection opens and no response arrives for stall_ms the thread gives up
 * (STRATA_EUNAVAIL) so a dead server ends the run instead of hanging it.
 */
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "loadgen.h"
#include "strata/alloc.h"
#include "strata/status.h"

#define LG_MAX_THREADS 16
#define LG_MAX_CONNS   100000
#define LG_MAX_DEPTH   256
#define LG_READ_BUF    65536
#define LG_LATE_NS     1000000ull

/* ---- the schedule ------------------------------------------------------------------- */

uint64_t lg_sched_due_ns(uint64_t t0_ns, double rate, int nthreads, int thread, uint64_t k) {
    if (rate <= 0)
        return t0_ns;
    long double g = (long double)lg_sched_global(nthreads, thread, k);
    return t0_ns + (uint64_t)(g * 1e9L / (long double)rate);
}

uint64_t lg_sched_share(uint64_t total, int nthreads, int thread) {
    if (total == UINT64_MAX)
        return UINT64_MAX;
    if (nthreads < 1 || thread < 0 || thread >= nthreads)
        return 0;
    uint64_t base = total / (uint64_t)nthreads, rem = total % (uint64_t)nthreads;
    return base + ((uint64_t)thread < rem ? 1 : 0);
}

/* ---- config ------------------------------------------------------------------------- */

void lg_config_default(lg_config *c) {
    memset(c, 0, sizeof *c);
    lg_url_parse("http://127.0.0.1:8080", &c->url, NULL);
    c->threads = 1;
    c->connections = 64;
    c->depth = 1;
    c->timeout_ms = 2000;
    c->connect_timeout_ms = 2000;
    c->stall_ms = 10000;
}

int lg_config_check(const lg_config *c, strata_buf *err) {
    const char *why = NULL;
    if (c->threads < 1 || c->threads > LG_MAX_THREADS)
        why = "threads must be in [1, 16]";
    else if (c->connections < c->threads || c->connections > LG_MAX_CONNS)
        why = "connections must be in [threads, 100000]";
    else if (c->depth < 1 || c->depth > LG_MAX_DEPTH)
        why = "pipeline depth must be in [1, 256]";
    else if (!(c->rate >= 0) || c->rate > 1e9)
        why = "rate must be in [0, 1e9]";
    else if (c->requests == 0 && c->duration_ms == 0)
        why = "give a number of requests or a duration";
    else if (c->timeout_ms < 1 || c->connect_timeout_ms < 1 || c->stall_ms < 1)
        why = "timeouts must be >= 1 ms";
    else if (!c->make || !c->classify)
        why = "make and classify callbacks are required";
    else if (!c->url.host[0] || !c->url.port)
        why = "no URL";
    if (!why)
        return STRATA_OK;
    if (err)
        strata_buf_puts(err, why);
    return STRATA_EINVAL;
}

/* ---- state -------------------------------------------------------------------------- */

enum { C_IDLE = 0, C_CONNECTING, C_OPEN, C_CLOSING };

typedef struct slot {
    uint64_t g, sent_ns, due_ns;
} slot;

typedef struct engine engine;
typedef struct lthread lthread;

typedef struct conn {
    lthread *t;
    uv_tcp_t tcp;
    uv_connect_t creq;
    int state;
    bool in_ready;
    bool backoff_next; /* the close in progress was a failure */
    uint64_t since_ns; /* connect start */
    uint64_t retry_at_ns;
    uint64_t backoff_ms;
    uint64_t answered; /* responses on this connection since it opened */
    lg_http_parser parser;
    slot *ring;
    int head, n;
} conn;

typedef struct wreq {
    uv_write_t req;
    conn *c;
    size_t len;
    char data[];
} wreq;

struct lthread {
    engine *e;
    const lg_config *cfg;
    int idx;
    pthread_t tid;
    uv_loop_t loop;
    uv_timer_t tick;
    conn *conns;
    int nconns;
    int *ready;
    int nready;
    uint64_t planned, next_k, end_ns, deadline_ns;
    uint64_t t0;
    uint64_t inflight;
    uint64_t last_activity_ns, last_sweep_ns;
    bool stopping, loop_inited;
    int rc;
    strata_histogram *lat;
    strata_buf out;
    char rbuf[LG_READ_BUF];
    uint64_t first_send_ns, last_done_ns;
    _Atomic uint64_t counts[LG__NOUTCOMES];
    _Atomic uint64_t sent, completed, connects, connect_errors, late;
    _Atomic int open_conns;
    _Atomic int finished;
};

struct engine {
    const lg_config *cfg;
    struct sockaddr_storage addr;
    _Atomic uint64_t t0; /* 0 until the calling thread starts the clock */
    _Atomic int abort;   /* set before t0 when the run cannot go ahead */
    lthread *threads;
};

static uint64_t now_ns(void) { return uv_hrtime(); }

static void add(_Atomic uint64_t *a, uint64_t n) {
    atomic_fetch_add_explicit(a, n, memory_order_relaxed);
}
static uint64_t get(_Atomic uint64_t *a) { return atomic_load_explicit(a, memory_order_relaxed); }

static bool open_loop(const lthread *t) { return t->cfg->rate > 0; }

static void start_connect(conn *c);
static void pump(conn *c, uint64_t now);

/* Is there a request to send now?  *due gets its due time (open loop). */
static bool work_due(lthread *t, uint64_t now, uint64_t *due) {
    if (t->stopping || !t->t0 || t->next_k >= t->planned)
        return false;
    if (open_loop(t)) {
        uint64_t d = lg_sched_due_ns(t->t0, t->cfg->rate, t->cfg->threads, t->idx, t->next_k);
        if (t->end_ns && d >= t->end_ns)
            return false;
        *due = d;
        return d <= now;
    }
    *due = now;
    return !t->deadline_ns || now < t->deadline_ns;
}

/* No request will ever be issued again by this thread. */
static bool work_over(lthread *t, uint64_t now) {
    if (t->stopping || t->next_k >= t->planned)
        return true;
    if (!t->t0)
        return false;
    if (open_loop(t)) {
        if (!t->end_ns)
            return false;
        uint64_t d = lg_sched_due_ns(t->t0, t->cfg->rate, t->cfg->threads, t->idx, t->next_k);
        return d >= t->end_ns;
    }
    return t->deadline_ns && now >= t->deadline_ns;
}

static void count(lthread *t, uint64_t g, lg_outcome o, bool failed) {
    add(&t->counts[o], 1);
    add(&t->completed, 1);
    if (failed && t->cfg->failed)
        t->cfg->failed(t->cfg->ctx, t->idx, g, o);
}

static void on_closed(uv_handle_t *h) {
    conn *c = h->data;
    lthread *t = c->t;
    c->state = C_IDLE;
    lg_http_parser_reset(&c->parser);
    uint64_t now = now_ns();
    if (c->backoff_next) {
        c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : 10;
        if (c->backoff_ms > 1000)
            c->backoff_ms = 1000;
        c->retry_at_ns = now + c->backoff_ms * 1000000ull;
    } else {
        c->retry_at_ns = now;
        if (!t->stopping && !work_over(t, now))
            start_connect(c);
    }
}

/* Closes c: every request in flight ends as `why` (the first as `head_why`). */
static void close_conn(conn *c, lg_outcome head_why, lg_outcome why, bool backoff) {
    lthread *t = c->t;
    if (c->state == C_IDLE || c->state == C_CLOSING)
        return;
    if (c->state == C_OPEN)
        atomic_fetch_sub_explicit(&t->open_conns, 1, memory_order_relaxed);
    for (int i = 0; i < c->n; i++) {
        slot *s = &c->ring[(c->head + i) % t->cfg->depth];
        count(t, s->g, i == 0 ? head_why : why, true);
    }
    t->inflight -= (uint64_t)c->n;
    c->n = c->head = 0;
    c->backoff_next = backoff && c->state == C_CONNECTING; /* see on_connect */
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void mark_ready(conn *c) {
    lthread *t = c->t;
    if (!c->in_ready && c->state == C_OPEN && c->n < t->cfg->depth) {
        c->in_ready = true;
        t->ready[t->nready++] = (int)(c - t->conns);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    conn *c = h->data;
    buf->base = c->t->rbuf;
    buf->len = sizeof c->t->rbuf;
}

static void finish_one(conn *c, const lg_http_resp *r, uint64_t now) {
    lthread *t = c->t;
    slot *s = &c->ring[c->head];
    c->head = (c->head + 1) % t->cfg->depth;
    c->n--;
    t->inflight--;
    lg_outcome o = t->cfg->classify(t->cfg->ctx, t->idx, s->g, r);
    if ((int)o < 0 || o >= LG__NOUTCOMES)
        o = LG_OTHER;
    uint64_t from = open_loop(t) ? s->due_ns : s->sent_ns;
    strata_histogram_record(t->lat, now > from ? now - from : 0);
    count(t, s->g, o, false);
    c->answered++;
    c->backoff_ms = 0;
    t->last_activity_ns = now;
    t->last_done_ns = now;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    conn *c = st->data;
    lthread *t = c->t;
    if (c->state != C_OPEN || nread == 0)
        return;
    uint64_t now = now_ns();
    lg_http_resp r;
    if (nread < 0) {
        int got = nread == UV_EOF ? lg_http_eof(&c->parser, &r) : 0;
        if (got == 1 && c->n > 0)
            finish_one(c, &r, now);
        close_conn(c, got < 0 ? LG_BAD_RESPONSE : LG_CONN_ERROR, LG_CONN_ERROR,
                   c->answered == 0 || got < 0);
        return;
    }
    if (lg_http_feed(&c->parser, buf->base, (size_t)nread) < 0) {
        close_conn(c, LG_BAD_RESPONSE, LG_CONN_ERROR, true);
        return;
    }
    for (;;) {
        int got = lg_http_next(&c->parser, &r);
        if (got == 0)
            break;
        if (got < 0) {
            close_conn(c, LG_BAD_RESPONSE, LG_CONN_ERROR, true);
            return;
        }
        if (c->n == 0) { /* an answer nobody asked for */
            add(&t->counts[LG_BAD_RESPONSE], 1);
            close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, true);
            return;
        }
        bool keep = r.keep_alive;
        finish_one(c, &r, now);
        lg_http_consume(&c->parser);
        if (!keep) {
            close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, false);
            return;
        }
    }
    mark_ready(c);
    pump(c, now);
}

static void on_write(uv_write_t *req, int status) {
    wreq *w = (wreq *)req;
    conn *c = w->c;
    strata_free(w);
    if (status < 0 && c->state == C_OPEN)
        close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, true);
}

/* Sends every due request that fits on c, in one write. */
static void pump(conn *c, uint64_t now) {
    lthread *t = c->t;
    if (c->state != C_OPEN)
        return;
    const lg_config *cfg = t->cfg;
    strata_buf_reset(&t->out);
    uint64_t due;
    while (c->n < cfg->depth && work_due(t, now, &due)) {
        uint64_t g = lg_sched_global(cfg->threads, t->idx, t->next_k);
        t->next_k++;
        lg_req r;
        memset(&r, 0, sizeof r);
        if (!cfg->make(cfg->ctx, g, &r))
            continue;
        size_t bl = r.body_len < sizeof r.body ? r.body_len : sizeof r.body;
        strata_buf_printf(&t->out, "%s %s%s HTTP/1.1\r\nHost: %s\r\n", r.method ? r.method : "GET",
                          cfg->url.prefix, r.path, cfg->url.hostport);
        if (bl || (r.method && strcmp(r.method, "GET") != 0))
            strata_buf_printf(&t->out,
                              "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", bl);
        else
            strata_buf_puts(&t->out, "\r\n");
        strata_buf_append(&t->out, r.body, bl);
        slot *s = &c->ring[(c->head + c->n) % cfg->depth];
        s->g = g;
        s->sent_ns = now;
        s->due_ns = due;
        c->n++;
        t->inflight++;
        add(&t->sent, 1);
        if (open_loop(t) && now > due + LG_LATE_NS)
            add(&t->late, 1);
        if (!t->first_send_ns)
            t->first_send_ns = now;
    }
    if (t->out.len == 0)
        return;
    if (t->out.oom) {
        t->rc = STRATA_ENOMEM;
        close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, true);
        return;
    }
    wreq *w = strata_malloc(sizeof *w + t->out.len);
    if (!w) {
        t->rc = STRATA_ENOMEM;
        close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, true);
        return;
    }
    w->c = c;
    w->len = t->out.len;
    memcpy(w->data, t->out.data, t->out.len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        strata_free(w);
        close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, true);
    }
}

static void on_connect(uv_connect_t *req, int status) {
    conn *c = req->data;
    lthread *t = c->t;
    if (c->state != C_CONNECTING)
        return; /* closed meanwhile (connect timeout, stop) */
    uint64_t now = now_ns();
    if (status < 0) {
        add(&t->connect_errors, 1);
        close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, true);
        return;
    }
    c->state = C_OPEN;
    c->answered = 0;
    c->backoff_ms = 0; /* backoff is for connect failures: a server that answers badly
                          is reconnected at once (its requests count as errors) */
    atomic_fetch_add_explicit(&t->open_conns, 1, memory_order_relaxed);
    add(&t->connects, 1);
    t->last_activity_ns = now;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, true);
        return;
    }
    mark_ready(c);
    pump(c, now);
}

static void start_connect(conn *c) {
    lthread *t = c->t;
    if (uv_tcp_init(&t->loop, &c->tcp) != 0) {
        c->retry_at_ns = now_ns() + 100000000ull;
        return;
    }
    c->tcp.data = c;
    c->creq.data = c;
    c->state = C_CONNECTING;
    c->since_ns = now_ns();
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&t->e->addr, on_connect) != 0) {
        add(&t->connect_errors, 1);
        close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, true);
    }
}

static void stop_thread(lthread *t) {
    t->stopping = true;
    for (int i = 0; i < t->nconns; i++)
        close_conn(&t->conns[i], LG_CONN_ERROR, LG_CONN_ERROR, false);
    if (!uv_is_closing((uv_handle_t *)&t->tick))
        uv_close((uv_handle_t *)&t->tick, NULL);
}

static void on_tick(uv_timer_t *tm) {
    lthread *t = tm->data;
    const lg_config *cfg = t->cfg;
    uint64_t now = now_ns();
    if (!t->t0) {
        uint64_t t0 = atomic_load_explicit(&t->e->t0, memory_order_acquire);
        if (t0 && atomic_load_explicit(&t->e->abort, memory_order_acquire)) {
            stop_thread(t);
            return;
        }
        if (t0) {
            t->t0 = t0;
            t->last_activity_ns = now;
            if (cfg->duration_ms) {
                t->deadline_ns = t0 + cfg->duration_ms * 1000000ull;
                if (open_loop(t))
                    t->end_ns = t->deadline_ns;
            }
        }
    }
    /* Open loop (and closed loop once the clock starts): fill connections with room. */
    uint64_t due;
    while (t->nready > 0 && work_due(t, now, &due)) {
        conn *c = &t->conns[t->ready[t->nready - 1]];
        pump(c, now);
        if (c->state != C_OPEN || c->n >= cfg->depth) {
            c->in_ready = false;
            t->nready--;
        }
    }
    /* Drop stale ready entries (closed connections). */
    while (t->nready > 0 && t->conns[t->ready[t->nready - 1]].state != C_OPEN) {
        t->conns[t->ready[t->nready - 1]].in_ready = false;
        t->nready--;
    }
    if (now - t->last_sweep_ns >= 10000000ull || !open_loop(t)) {
        t->last_sweep_ns = now;
        bool over = work_over(t, now);
        for (int i = 0; i < t->nconns; i++) {
            conn *c = &t->conns[i];
            if (c->state == C_OPEN && c->n > 0 &&
                now - c->ring[c->head].sent_ns > cfg->timeout_ms * 1000000ull)
                close_conn(c, LG_TIMEOUT, LG_TIMEOUT, false);
            else if (c->state == C_CONNECTING &&
                     now - c->since_ns > cfg->connect_timeout_ms * 1000000ull) {
                add(&t->connect_errors, 1);
                close_conn(c, LG_CONN_ERROR, LG_CONN_ERROR, true);
            } else if (c->state == C_IDLE && !over && now >= c->retry_at_ns)
                start_connect(c);
        }
        if (t->t0 && !over && now - t->last_activity_ns > cfg->stall_ms * 1000000ull) {
            t->rc = STRATA_EUNAVAIL; /* nothing connects, nothing answers */
            stop_thread(t);
            return;
        }
        if (over && t->inflight == 0) {
            stop_thread(t);
            return;
        }
    }
    if (t->rc == STRATA_ENOMEM)
        stop_thread(t);
}

static void *thread_main(void *arg) {
    lthread *t = arg;
    uv_timer_start(&t->tick, on_tick, 1, open_loop(t) ? 1 : 5);
    for (int i = 0; i < t->nconns; i++)
        start_connect(&t->conns[i]);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    atomic_store_explicit(&t->finished, 1, memory_order_release);
    return NULL;
}

static void thread_free(lthread *t) {
    if (t->conns) {
        for (int i = 0; i < t->nconns; i++) {
            lg_http_parser_free(&t->conns[i].parser);
            strata_free(t->conns[i].ring);
        }
        strata_free(t->conns);
    }
    strata_free(t->ready);
    strata_buf_free(&t->out);
    strata_histogram_destroy(&t->lat);
}

static int thread_init(lthread *t, engine *e, int idx) {
    const lg_config *cfg = e->cfg;
    t->e = e;
    t->cfg = cfg;
    t->idx = idx;
    t->nconns = cfg->connections / cfg->threads + (idx < cfg->connections % cfg->threads ? 1 : 0);
    t->planned = lg_sched_share(cfg->requests ? cfg->requests : UINT64_MAX, cfg->threads, idx);
    t->lat = strata_histogram_create(STRATA_HIST_NS);
    t->conns = strata_calloc((size_t)t->nconns, sizeof *t->conns);
    t->ready = strata_calloc((size_t)t->nconns, sizeof *t->ready);
    if (!t->lat || !t->conns || !t->ready)
        return STRATA_ENOMEM;
    for (int i = 0; i < t->nconns; i++) {
        conn *c = &t->conns[i];
        c->t = t;
        lg_http_parser_init(&c->parser);
        c->ring = strata_calloc((size_t)cfg->depth, sizeof *c->ring);
        if (!c->ring)
            return STRATA_ENOMEM;
    }
    if (uv_loop_init(&t->loop) != 0)
        return STRATA_ESYS;
    t->loop_inited = true;
    uv_timer_init(&t->loop, &t->tick);
    t->tick.data = t;
    return STRATA_OK;
}

static void sum_stats(engine *e, lg_stats *st) {
    const lg_config *cfg = e->cfg;
    for (int o = 0; o < LG__NOUTCOMES; o++)
        st->counts[o] = 0;
    st->sent = st->completed = st->connects = st->connect_errors = st->late = 0;
    for (int i = 0; i < cfg->threads; i++) {
        lthread *t = &e->threads[i];
        for (int o = 0; o < LG__NOUTCOMES; o++)
            st->counts[o] += get(&t->counts[o]);
        st->sent += get(&t->sent);
        st->completed += get(&t->completed);
        st->connects += get(&t->connects);
        st->connect_errors += get(&t->connect_errors);
        st->late += get(&t->late);
    }
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int lg_run(const lg_config *cfg, lg_progress_fn progress, void *pctx, lg_stats *st) {
    memset(st, 0, sizeof *st);
    st->lat = strata_histogram_create(STRATA_HIST_NS);
    if (!st->lat)
        return STRATA_ENOMEM;
    if (lg_config_check(cfg, NULL) != STRATA_OK)
        return STRATA_EINVAL;
    engine e;
    memset(&e, 0, sizeof e);
    e.cfg = cfg;
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)cfg->url.port);
    if (getaddrinfo(cfg->url.host, port, &hints, &ai) != 0 || !ai)
        return STRATA_EUNAVAIL;
    memcpy(&e.addr, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    e.threads = strata_calloc((size_t)cfg->threads, sizeof *e.threads);
    if (!e.threads)
        return STRATA_ENOMEM;
    int rc = STRATA_OK, inited = 0, started = 0;
    for (; inited < cfg->threads; inited++)
        if ((rc = thread_init(&e.threads[inited], &e, inited)) != STRATA_OK) {
            inited++; /* thread_free below frees what it allocated */
            goto out;
        }
    for (; started < cfg->threads; started++)
        if (pthread_create(&e.threads[started].tid, NULL, thread_main, &e.threads[started]) != 0) {
            rc = STRATA_ESYS;
            break;
        }
    /* Start the clock once every connection is open, or after connect_timeout. */
    uint64_t t_start = now_ns();
    for (;;) {
        int open = 0;
        for (int i = 0; i < started; i++)
            open += atomic_load_explicit(&e.threads[i].open_conns, memory_order_relaxed);
        if (open >= cfg->connections || rc != STRATA_OK ||
            now_ns() - t_start > cfg->connect_timeout_ms * 1000000ull)
            break;
        sleep_ms(2);
    }
    uint64_t t0 = now_ns();
    atomic_store_explicit(&e.t0, t0, memory_order_release);
    if (rc != STRATA_OK) /* threads that did start stop at once */
        atomic_store_explicit(&e.abort, 1, memory_order_release);
    for (;;) {
        bool all = true;
        for (int i = 0; i < started; i++)
            all &= atomic_load_explicit(&e.threads[i].finished, memory_order_acquire) != 0;
        if (all)
            break;
        sleep_ms(20);
        if (progress) {
            sum_stats(&e, st);
            progress(pctx, st, (double)(now_ns() - t0) / 1e9);
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(e.threads[i].tid, NULL);
out:
    sum_stats(&e, st);
    {
        uint64_t end = 0;
        for (int i = 0; i < inited; i++) {
            lthread *t = &e.threads[i];
            if (t->last_done_ns > end)
                end = t->last_done_ns;
            if (t->lat)
                strata_histogram_merge(st->lat, t->lat);
            if (rc == STRATA_OK && t->rc != STRATA_OK)
                rc = t->rc;
        }
        uint64_t t0v = atomic_load(&e.t0);
        st->elapsed_s = end > t0v && t0v ? (double)(end - t0v) / 1e9 : 0;
    }
    for (int i = 0; i < inited; i++) {
        if (e.threads[i].loop_inited) {
            if (i >= started) { /* never ran: close the timer handle */
                uv_close((uv_handle_t *)&e.threads[i].tick, NULL);
                uv_run(&e.threads[i].loop, UV_RUN_DEFAULT);
            }
            uv_loop_close(&e.threads[i].loop);
        }
        thread_free(&e.threads[i]);
    }
    strata_free(e.threads);
    return rc;
}

void lg_stats_free(lg_stats *st) { strata_histogram_destroy(&st->lat); }
