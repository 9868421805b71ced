/*
 * conn.c: one HTTP/1.1 connection: reading, parsing (http-parser), limits,
 * timeouts, pipelining, output buffering with backpressure, lingering close.
 *
 * The state machine (srv_conn_state), with the deadline that applies in each:
 *
 *   IDLE ──first byte──▶ HEADERS ──headers done──▶ BODY ──body done──▶ HANDLER
 *    ▲   idle_timeout      header_timeout (absolute,  request_timeout     request_timeout
 *    │   → close           from the first byte: a     → 408               → 504 (the handler
 *    │                     slowloris client cannot                          keeps its request)
 *    │                     extend it) → 408                                   │
 *    └──────────── response queued (keep-alive) ◀────────────────────────────┤
 *                                                         stream_begin ──▶ STREAM (heartbeats)
 *   any "Connection: close" response ──written──▶ LINGER (write side shut, input
 *                                                 drained ≤ 1 s so the client reads
 *                                                 the response instead of a RST) → close
 *
 * Timers are lazy: each connection has one uv_timer armed for its earliest
 * deadline; moving a deadline later is a field write, and the timer re-arms
 * itself when it fires early.  So a keep-alive request costs no timer heap
 * operation in the steady state.
 *
 * Pipelining: requests are parsed and handled one at a time.  When a handler
 * does not finish synchronously, the parser is paused and any further input
 * is kept in `pending` (bounded; reading stops beyond that) until it does;
 * responses therefore leave in request order.  Responses produced while
 * handling one read are gathered in `out` and sent with a single uv_write;
 * while a write is in flight, new output accumulates in `out` and goes next.
 * When the queued output passes --output-high-water, parsing and reading
 * stop until the socket drains (backpressure).
 *
 * Reads go into one 64 KiB buffer per worker (the parser copies what it keeps),
 * so 10,000 idle connections hold no read buffers.
 *
 * Request smuggling: a request with both Content-Length and Transfer-Encoding,
 * more than one Content-Length, or a transfer coding other than "chunked" is
 * refused (400/501) and the connection closed, whatever http-parser would
 * have accepted (RFC 9112 §6.1, §6.3).
 */
#include <string.h>
#include <strings.h>

#include "server/server_internal.h"
#include "strata/alloc.h"
#include "strata/log.h"
#include "strata/status.h"

static int on_message_begin(http_parser *p);
static int on_url(http_parser *p, const char *at, size_t len);
static int on_header_field(http_parser *p, const char *at, size_t len);
static int on_header_value(http_parser *p, const char *at, size_t len);
static int on_headers_complete(http_parser *p);
static int on_body(http_parser *p, const char *at, size_t len);
static int on_message_complete(http_parser *p);

static const http_parser_settings g_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void conn_continue(srv_conn *c);
static void update_reading(srv_conn *c);

static inline uint64_t now_ms(srv_conn *c) { return uv_now(&c->w->loop); }

static inline const srv_config *cfg(srv_conn *c) { return &c->w->s->cfg; }

uint64_t srv_conn_queued(const srv_conn *c) { return c->out.len + (c->writing ? c->wbuf.len : 0); }

static inline bool over_hwm(const srv_conn *c) {
    return srv_conn_queued(c) > (uint64_t)c->w->s->cfg.output_high_water;
}

/* Upper bound on input held back while a request is handled. */
static inline size_t pending_cap(const srv_conn *c) {
    return (size_t)c->w->s->cfg.max_header_bytes + 64 * 1024;
}

/* ---- timers ---------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

static void set_deadline(srv_conn *c, uint64_t deadline) {
    c->deadline = deadline;
    if (deadline == 0 || c->closing)
        return;
    if (!c->timer_on || c->timer_due > deadline) {
        uint64_t now = now_ms(c);
        uv_timer_start(&c->timer, on_timer, deadline > now ? deadline - now : 0, 0);
        c->timer_on = true;
        c->timer_due = deadline;
    }
}

void srv_conn_set_deadline(srv_conn *c, uint64_t deadline) { set_deadline(c, deadline); }

static void start_linger(srv_conn *c);

static void on_timer(uv_timer_t *t) {
    srv_conn *c = t->data;
    c->timer_on = false;
    if (c->closing || c->deadline == 0)
        return;
    uint64_t now = now_ms(c);
    if (now < c->deadline) {
        set_deadline(c, c->deadline);
        return;
    }
    strata_server *s = c->w->s;
    switch (c->state) {
    case CS_IDLE:
        LOG_DEBUG("http_idle_timeout", "fd_conn=%p", (void *)c);
        strata_counter_inc(s->m_timeouts[3]);
        srv_conn_close(c);
        return;
    case CS_HEADERS:
    case CS_BODY:
        strata_counter_inc(s->m_timeouts[c->state == CS_HEADERS ? 0 : 1]);
        srv_respond_error_raw(c, 408, "request_timeout",
                              c->state == CS_HEADERS ? "request headers not received in time"
                                                     : "request body not received in time");
        return;
    case CS_HANDLER: {
        strata_http_req *req = &c->req;
        if (!req->dispatched || req->answered) {
            srv_conn_close(c);
            return;
        }
        strata_counter_inc(s->m_timeouts[2]);
        /* Answer 504 now; the handler keeps its request until it finishes. */
        req->keepalive = false;
        strata_buf_reset(&req->resp_hdrs);
        srv_write_error(req, 504, "timeout",
                        "the request did not complete within --request-timeout");
        req->answered = true;
        c->close_after_write = true;
        srv_notify_abandon(req);
        if (c->closing)
            return;
        set_deadline(c, now + SRV_LINGER_MS + (uint64_t)s->cfg.idle_timeout_ms);
        srv_conn_flush(c);
        update_reading(c);
        return;
    }
    case CS_STREAM: {
        strata_http_req *req = &c->req;
        if (c->writing && over_hwm(c)) {
            /* The client has not taken a heartbeat's worth of data: drop it. */
            srv_conn_close(c);
            return;
        }
        if (req->sse && req->dispatched && !req->answered) {
            static const char hb[] = "3\r\n:\n\n\r\n";
            if (req->chunked_out)
                strata_buf_append(&c->out, hb, sizeof hb - 1);
            else
                strata_buf_append(&c->out, ":\n\n", 3);
            srv_conn_flush(c);
        }
        if (!c->closing)
            set_deadline(c, now + (uint64_t)s->cfg.sse_heartbeat_ms);
        return;
    }
    case CS_LINGER: srv_conn_close(c); return;
    }
}

/* ---- closing ---------------------------------------------------------------- */

static void req_reset(strata_http_req *req);

static void zombie_remove(srv_worker *w, srv_conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        w->zombies = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->zombie = false;
}

static void conn_free(srv_conn *c) {
    srv_worker *w = c->w;
    if (c->zombie)
        zombie_remove(w, c);
    strata_buf_free(&c->out);
    strata_buf_free(&c->wbuf);
    strata_buf_free(&c->pending);
    strata_buf_free(&c->req.hbuf);
    strata_buf_free(&c->req.body);
    strata_buf_free(&c->req.resp_hdrs);
    if (c->req.json)
        cJSON_Delete(c->req.json);
    srv_arena_free(&c->req.arena);
    strata_free(c);
}

void srv_worker_free_zombies(srv_worker *w) {
    while (w->zombies) {
        srv_conn *c = w->zombies;
        LOG_WARN("http_request_leaked", "worker=%d reason=\"handler never finished the request\"",
                 w->id);
        c->req.dispatched = false;
        conn_free(c);
    }
}

static void conn_maybe_free(srv_conn *c) {
    if (c->open_handles == 0 && !c->req.dispatched)
        conn_free(c);
}

static void on_handle_closed(uv_handle_t *h) {
    srv_conn *c = h->data;
    if (--c->open_handles == 0)
        conn_maybe_free(c);
}

static void list_remove(srv_worker *w, srv_conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void check_drained(srv_worker *w);

void srv_conn_close(srv_conn *c) {
    if (c->closing)
        return;
    c->closing = true;
    srv_worker *w = c->w;
    list_remove(w, c);
    w->nconns--;
    atomic_fetch_sub(&w->s->nconns, 1);
    if (c->req.dispatched) {
        c->zombie = true;
        c->next = w->zombies;
        if (w->zombies)
            w->zombies->prev = c;
        w->zombies = c;
        c->req.answered = true;
        srv_notify_abandon(&c->req);
    }
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    if (w->draining)
        check_drained(w);
}

static void on_shutdown(uv_shutdown_t *sr, int status) {
    srv_conn *c = sr->data;
    if (status < 0 && !c->closing)
        srv_conn_close(c);
}

static void start_linger(srv_conn *c) {
    if (c->closing || c->state == CS_LINGER)
        return;
    c->state = CS_LINGER;
    strata_buf_reset(&c->pending);
    if (c->peer_eof) {
        srv_conn_close(c);
        return;
    }
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        srv_conn_close(c);
        return;
    }
    c->deadline = 0;
    set_deadline(c, now_ms(c) + SRV_LINGER_MS);
    update_reading(c);
}

/* ---- output ---------------------------------------------------------------- */

static void on_write(uv_write_t *wr, int status) {
    srv_conn *c = wr->data;
    c->writing = false;
    if (c->wbuf.cap > 256 * 1024)
        strata_buf_free(&c->wbuf);
    else
        strata_buf_reset(&c->wbuf);
    if (c->closing)
        return;
    if (status < 0) {
        srv_conn_close(c);
        return;
    }
    if (c->out.len) {
        srv_conn_flush(c);
        return;
    }
    if (c->close_after_write && (!c->req.dispatched || c->req.answered)) {
        start_linger(c);
        return;
    }
    conn_continue(c);
}

void srv_conn_flush(srv_conn *c) {
    if (c->closing || c->writing || c->out.len == 0)
        return;
    if (c->out.oom) {
        srv_conn_close(c);
        return;
    }
    if (!c->close_after_write) {
        /* Usually the socket takes it all at once: no write request, no callback. */
        uv_buf_t tb = uv_buf_init(c->out.data, (unsigned)c->out.len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &tb, 1);
        if (n == (int)c->out.len) {
            strata_buf_reset(&c->out);
            return;
        }
        if (n > 0) {
            memmove(c->out.data, c->out.data + n, c->out.len - (size_t)n);
            c->out.len -= (size_t)n;
            c->out.data[c->out.len] = '\0';
        } else if (n != UV_EAGAIN) {
            srv_conn_close(c);
            return;
        }
    }
    strata_buf t = c->wbuf;
    c->wbuf = c->out;
    c->out = t;
    uv_buf_t b = uv_buf_init(c->wbuf.data, (unsigned)c->wbuf.len);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc < 0) {
        srv_conn_close(c);
        return;
    }
    c->writing = true;
}

/* ---- reading ----------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    srv_conn *c = h->data;
    (void)suggested;
    buf->base = c->w->rbuf;
    buf->len = SRV_READ_BUF;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void update_reading(srv_conn *c) {
    if (c->closing)
        return;
    bool want;
    if (c->peer_eof)
        want = false;
    else if (c->state == CS_LINGER)
        want = true;
    else if (c->close_after_write)
        want = false;
    else
        want = c->pending.len < pending_cap(c) && !over_hwm(c);
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* Refuses the request being parsed; the connection closes after the answer. */
void srv_respond_error_raw(srv_conn *c, int status, const char *code, const char *msg) {
    if (c->closing)
        return;
    strata_http_req *req = &c->req;
    if (req->dispatched) {
        /* only the timer path may get here with a handler running; it has its own */
        srv_conn_close(c);
        return;
    }
    req->keepalive = false;
    strata_buf_reset(&req->resp_hdrs);
    srv_write_error(req, status, code, msg);
    srv_count(c->w, NULL, status, 0); /* on the unmatched pseudo-route */
    req_reset(req);
    c->close_after_write = true;
    c->state = CS_IDLE;
    strata_buf_reset(&c->pending);
    set_deadline(c, now_ms(c) + SRV_LINGER_MS + (uint64_t)cfg(c)->idle_timeout_ms);
    srv_conn_flush(c);
    update_reading(c);
}

static void parse_error(srv_conn *c) {
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    int status = c->err_status;
    const char *code = c->err_code, *msg = c->err_msg;
    if (!status) {
        status = 400;
        code = "bad_request";
        msg = http_errno_description(e);
        if (e == HPE_HEADER_OVERFLOW) {
            status = 431;
            code = "headers_too_large";
        } else if (e == HPE_UNEXPECTED_CONTENT_LENGTH) {
            msg = "conflicting Content-Length / Transfer-Encoding";
        } else if (e == HPE_INVALID_METHOD) {
            status = 501;
            code = "not_implemented";
            msg = "unknown method";
        }
    }
    strata_counter_inc(c->w->s->m_bad_requests);
    LOG_DEBUG("http_bad_request", "status=%d reason=\"%s\"", status, msg);
    srv_respond_error_raw(c, status, code, msg);
}

/*
 * Feeds data to the parser; returns the bytes consumed.  Stops early when the
 * parser was paused (a request is being handled, backpressure); the caller
 * keeps the rest.  A parse error answers and discards the input.
 */
static size_t parse(srv_conn *c, const char *data, size_t len) {
    c->in_parser = true;
    size_t n = http_parser_execute(&c->parser, &g_settings, data, len);
    c->in_parser = false;
    if (c->closing)
        return len;
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED)
        return n;
    if (e != HPE_OK) {
        parse_error(c);
        return len;
    }
    if (c->parser.upgrade && n < len) {
        /* The request asked to upgrade; we answered it as plain HTTP and close. */
        c->close_after_write = true;
        return len;
    }
    return n;
}

/* Runs the parser over `pending` as far as it goes. */
static void process_pending(srv_conn *c) {
    while (c->pending.len && !c->closing && !c->parser_paused && !c->close_after_write) {
        size_t n = parse(c, c->pending.data, c->pending.len);
        if (c->closing)
            return;
        if (n >= c->pending.len || c->close_after_write) {
            strata_buf_reset(&c->pending);
        } else {
            memmove(c->pending.data, c->pending.data + n, c->pending.len - n);
            c->pending.len -= n;
            c->pending.data[c->pending.len] = '\0';
        }
        if (n == 0)
            break;
    }
}

/* Resumes parsing once the request is finished and the output has room. */
static void conn_continue(srv_conn *c) {
    if (c->closing)
        return;
    if (!c->req.dispatched && !c->close_after_write && !over_hwm(c)) {
        if (c->parser_paused) {
            http_parser_pause(&c->parser, 0);
            c->parser_paused = false;
        }
        process_pending(c);
        if (c->closing)
            return;
    }
    srv_conn_flush(c);
    if (!c->closing && c->close_after_write && !c->writing && c->out.len == 0 &&
        (!c->req.dispatched || c->req.answered)) {
        start_linger(c);
        return;
    }
    update_reading(c);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    srv_conn *c = st->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && c->state != CS_LINGER && c->req.dispatched && !c->req.streaming &&
            !c->req.answered) {
            /* Half-close after a request: still answer it, then close. */
            c->peer_eof = true;
            c->close_after_write = true;
            update_reading(c);
            return;
        }
        srv_conn_close(c);
        return;
    }
    srv_conn_input(c, buf->base, (size_t)nread);
}

void srv_conn_input(srv_conn *c, const char *data, size_t nread) {
    if (c->closing || c->state == CS_LINGER || c->close_after_write)
        return; /* discarded */
    if (c->pending.len || c->parser_paused) {
        if (strata_buf_append(&c->pending, data, nread) < 0) {
            srv_conn_close(c);
            return;
        }
        update_reading(c);
        return;
    }
    size_t n = parse(c, data, nread);
    if (c->closing)
        return;
    if (n < nread && !c->close_after_write) {
        if (strata_buf_append(&c->pending, data + n, nread - n) < 0) {
            srv_conn_close(c);
            return;
        }
    }
    srv_conn_flush(c);
    if (!c->closing && c->close_after_write && !c->writing && c->out.len == 0 &&
        (!c->req.dispatched || c->req.answered)) {
        start_linger(c); /* everything went out without a write callback */
        return;
    }
    update_reading(c);
}

/* ---- parser callbacks ----------------------------------------------------------- */

static int refuse(srv_conn *c, int status, const char *code, const char *msg) {
    c->err_status = status;
    c->err_code = code;
    c->err_msg = msg;
    return -1;
}

static void req_reset(strata_http_req *req) {
    req->active = false;
    req->dispatched = false;
    req->answered = false;
    req->abandon_notified = false;
    req->abandon_fn = NULL;
    req->abandon_ctx = NULL;
    req->streaming = false;
    req->sse = false;
    req->chunked_out = false;
    req->nhdrs = 0;
    req->last_cb = 0;
    req->header_bytes = 0;
    req->path = req->query = NULL;
    req->url_len = 0;
    memset(&req->m, 0, sizeof req->m);
    if (req->json) {
        cJSON_Delete(req->json);
        req->json = NULL;
    }
    /* keep the memory of small buffers for the next request */
    if (req->hbuf.cap > 16 * 1024)
        strata_buf_free(&req->hbuf);
    else
        strata_buf_reset(&req->hbuf);
    if (req->body.cap > 64 * 1024)
        strata_buf_free(&req->body);
    else
        strata_buf_reset(&req->body);
    strata_buf_reset(&req->resp_hdrs);
    srv_arena_reset(&req->arena);
}

static int on_message_begin(http_parser *p) {
    srv_conn *c = p->data;
    strata_http_req *req = &c->req;
    req->active = true;
    c->err_status = 0;
    c->state = CS_HEADERS;
    /* Absolute deadline for the whole header block: not extended by trickling bytes. */
    c->deadline = 0;
    set_deadline(c, now_ms(c) + (uint64_t)cfg(c)->header_timeout_ms);
    return 0;
}

static int hbuf_add(srv_conn *c, const char *at, size_t len) {
    strata_http_req *req = &c->req;
    req->header_bytes += len;
    if (req->header_bytes > (size_t)cfg(c)->max_header_bytes)
        return refuse(c, 431, "headers_too_large", "request headers exceed --max-header-bytes");
    if (strata_buf_append(&req->hbuf, at, len) < 0)
        return refuse(c, 503, "unavailable", "out of memory");
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
    srv_conn *c = p->data;
    strata_http_req *req = &c->req;
    if (req->last_cb != 'u') {
        req->url_off = (uint32_t)req->hbuf.len;
        req->url_len = 0;
        req->last_cb = 'u';
    }
    req->url_len += (uint32_t)len;
    if (req->url_len > (uint64_t)cfg(c)->max_url_bytes)
        return refuse(c, 414, "uri_too_long", "request target exceeds --max-url-bytes");
    return hbuf_add(c, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
    srv_conn *c = p->data;
    strata_http_req *req = &c->req;
    if (req->last_cb != 'f') {
        if (req->nhdrs >= SRV_MAX_HEADERS)
            return refuse(c, 431, "headers_too_large", "too many request headers");
        if (strata_buf_append(&req->hbuf, "", 1) < 0) /* ends the URL or the previous value */
            return refuse(c, 503, "unavailable", "out of memory");
        req->hdr_name[req->nhdrs] = (uint32_t)req->hbuf.len;
        req->hdr_val[req->nhdrs] = UINT32_MAX;
        req->nhdrs++;
        req->last_cb = 'f';
    }
    return hbuf_add(c, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    srv_conn *c = p->data;
    strata_http_req *req = &c->req;
    if (req->last_cb != 'v') {
        if (req->nhdrs == 0)
            return refuse(c, 400, "bad_request", "header value without a name");
        if (strata_buf_append(&req->hbuf, "", 1) < 0)
            return refuse(c, 503, "unavailable", "out of memory");
        req->hdr_val[req->nhdrs - 1] = (uint32_t)req->hbuf.len;
        req->last_cb = 'v';
    }
    return hbuf_add(c, at, len);
}

static const char *hname(const strata_http_req *req, int i) {
    return req->hbuf.data + req->hdr_name[i];
}

static const char *hval(const strata_http_req *req, int i) {
    return req->hdr_val[i] == UINT32_MAX ? "" : req->hbuf.data + req->hdr_val[i];
}

/* RFC 9110 token: no whitespace (a space before the colon is refused, RFC 9112 §5.1). */
static bool is_token(const char *s) {
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              strchr("!#$%&'*+-.^_`|~", ch)))
            return false;
    }
    return true;
}

static bool ieq_trim(const char *v, const char *want) {
    while (*v == ' ' || *v == '\t')
        v++;
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return n == strlen(want) && strncasecmp(v, want, n) == 0;
}

static int on_headers_complete(http_parser *p) {
    srv_conn *c = p->data;
    strata_http_req *req = &c->req;
    const srv_config *cf = cfg(c);
    /* terminate the last piece; an empty value never got a callback */
    if (strata_buf_append(&req->hbuf, "", 1) < 0)
        return refuse(c, 503, "unavailable", "out of memory");
    if (req->last_cb == 'f')
        req->hdr_val[req->nhdrs - 1] = UINT32_MAX;
    req->method = p->method;
    req->http_major = p->http_major;
    req->http_minor = p->http_minor;
    req->head = p->method == HTTP_HEAD;
    req->keepalive = http_should_keep_alive(p) && !p->upgrade;
    req->expect_continue = false;

    if (p->http_major != 1)
        return refuse(c, 505, "http_version_not_supported",
                      "only HTTP/1.0 and HTTP/1.1 are served");
    /* The request target: origin-form "/path?query" or absolute-form "http://h/path". */
    char *url = req->hbuf.data + req->url_off;
    if (req->url_len == 0)
        return refuse(c, 400, "bad_request", "empty request target");
    if (p->method == HTTP_CONNECT)
        return refuse(c, 405, "method_not_allowed", "CONNECT is not supported");
    char *path = url;
    if (url[0] != '/') {
        if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
            char *s = strstr(url, "//") + 2;
            path = strchr(s, '/');
            if (!path) {
                /* "http://host" or "http://host?q": the path is "/" */
                char *q = strchr(s, '?');
                path = srv_arena_alloc(&req->arena, (q ? strlen(q) : 0) + 2);
                if (!path)
                    return refuse(c, 503, "unavailable", "out of memory");
                path[0] = '/';
                strcpy(path + 1, q ? q : "");
            }
        } else if (!(url[0] == '*' && url[1] == '\0')) {
            return refuse(c, 400, "bad_request", "malformed request target");
        }
    }
    char *q = strchr(path, '?');
    if (q) {
        *q = '\0';
        req->query = q + 1;
    } else {
        req->query = "";
    }
    char *hash = strchr(req->query, '#');
    if (hash)
        *hash = '\0';
    hash = strchr(path, '#');
    if (hash)
        *hash = '\0';
    req->path = path;

    /* Framing and smuggling checks. */
    int ncl = 0, nte = 0;
    const char *cl = NULL;
    bool host = false;
    for (int i = 0; i < req->nhdrs; i++) {
        const char *n = hname(req, i);
        if (!is_token(n))
            return refuse(c, 400, "bad_request", "invalid header field name");
        if (strcasecmp(n, "content-length") == 0) {
            if (ncl && strcmp(cl, hval(req, i)) != 0)
                return refuse(c, 400, "bad_request", "conflicting Content-Length headers");
            cl = hval(req, i);
            ncl++;
        } else if (strcasecmp(n, "transfer-encoding") == 0) {
            nte++;
            if (!ieq_trim(hval(req, i), "chunked"))
                return refuse(c, 501, "not_implemented",
                              "only Transfer-Encoding: chunked is supported");
        } else if (strcasecmp(n, "expect") == 0) {
            if (!ieq_trim(hval(req, i), "100-continue"))
                return refuse(c, 417, "expectation_failed",
                              "only Expect: 100-continue is supported");
            req->expect_continue = true;
        } else if (strcasecmp(n, "host") == 0) {
            host = true;
        }
    }
    if (nte && ncl)
        return refuse(c, 400, "bad_request",
                      "both Content-Length and Transfer-Encoding: refused (request smuggling)");
    if (nte > 1)
        return refuse(c, 400, "bad_request", "repeated Transfer-Encoding");
    if (!host && req->http_major == 1 && req->http_minor >= 1)
        return refuse(c, 400, "bad_request", "HTTP/1.1 request without Host");
    bool chunked = (p->flags & F_CHUNKED) != 0;
    if (nte && !chunked)
        return refuse(c, 400, "bad_request", "malformed Transfer-Encoding");
    if (!chunked && ncl && p->content_length > (uint64_t)cf->max_body_bytes)
        return refuse(c, 413, "payload_too_large", "request body exceeds --max-body-bytes");
    bool has_body = chunked || (ncl && p->content_length > 0);
    if (req->expect_continue && has_body && !c->w->draining && req->http_minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        strata_buf_append(&c->out, cont, sizeof cont - 1);
        srv_conn_flush(c);
    }
    if (!chunked && ncl && p->content_length > 0)
        strata_buf_reserve(&req->body, (size_t)p->content_length);
    c->state = CS_BODY;
    c->deadline = 0;
    set_deadline(c, now_ms(c) + (uint64_t)cf->request_timeout_ms);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
    srv_conn *c = p->data;
    strata_http_req *req = &c->req;
    if (req->body.len + len > (uint64_t)cfg(c)->max_body_bytes)
        return refuse(c, 413, "payload_too_large", "request body exceeds --max-body-bytes");
    if (strata_buf_append(&req->body, at, len) < 0)
        return refuse(c, 503, "unavailable", "out of memory");
    return 0;
}

static int on_message_complete(http_parser *p) {
    srv_conn *c = p->data;
    c->state = CS_HANDLER;
    c->deadline = 0;
    set_deadline(c, now_ms(c) + (uint64_t)cfg(c)->request_timeout_ms);
    srv_dispatch(&c->req);
    if (c->closing) {
        http_parser_pause(p, 1);
        c->parser_paused = true;
        return 0;
    }
    if (c->req.dispatched || c->close_after_write || over_hwm(c)) {
        http_parser_pause(p, 1);
        c->parser_paused = true;
    }
    return 0;
}

/* ---- finishing requests ----------------------------------------------------------- */

void srv_conn_request_finished(srv_conn *c) {
    strata_http_req *req = &c->req;
    bool keep = req->keepalive && !c->w->draining && !req->answered;
    bool was_answered = req->answered;
    req_reset(req);
    if (c->closing) {
        conn_maybe_free(c);
        return;
    }
    if (!keep || was_answered)
        c->close_after_write = true;
    c->state = CS_IDLE;
    c->deadline = 0;
    set_deadline(c, now_ms(c) + (uint64_t)cfg(c)->idle_timeout_ms);
    if (!c->in_parser)
        conn_continue(c);
}

/* ---- accepting ------------------------------------------------------------------- */

static void on_reject_closed(uv_handle_t *h) { strata_free(h); }

static srv_conn *conn_new(srv_worker *w);
static void conn_begin(srv_conn *c);

void srv_on_connection(uv_stream_t *listener, int status) {
    srv_worker *w = listener->data;
    strata_server *s = w->s;
    if (status < 0) {
        LOG_WARN("http_accept_failed", "error=\"%s\"", uv_strerror(status));
        return;
    }
    if (atomic_load(&s->nconns) >= s->cfg.max_connections) {
        uv_tcp_t *t = strata_malloc(sizeof *t);
        if (!t)
            return;
        uv_tcp_init(&w->loop, t);
        if (uv_accept(listener, (uv_stream_t *)t) == 0) {
            static const char busy[] =
                "HTTP/1.1 503 Service Unavailable\r\nServer: strata\r\n"
                "Content-Type: application/json\r\nContent-Length: 78\r\nConnection: close\r\n\r\n"
                "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"--max-connections "
                "reached\"}}";
            uv_buf_t b = uv_buf_init((char *)busy, sizeof busy - 1);
            uv_try_write((uv_stream_t *)t, &b, 1);
        }
        uv_close((uv_handle_t *)t, on_reject_closed);
        strata_counter_inc(s->m_rej_limit);
        return;
    }
    srv_conn *c = conn_new(w);
    if (!c)
        return;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        srv_conn_close(c);
        return;
    }
    conn_begin(c);
}

static srv_conn *conn_new(srv_worker *w) {
    strata_server *s = w->s;
    srv_conn *c = strata_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->w = w;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    c->req.conn = c;
    c->req.w = w;
    /* linked first so that close can unlink it */
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    atomic_fetch_add(&s->nconns, 1);
    strata_counter_inc(s->m_conn_total);
    return c;
}

static void conn_begin(srv_conn *c) {
    strata_server *s = c->w->s;
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->state = CS_IDLE;
    set_deadline(c, now_ms(c) + (uint64_t)s->cfg.idle_timeout_ms);
    update_reading(c);
    if (!c->reading)
        srv_conn_close(c);
}

srv_conn *srv_conn_adopt(srv_worker *w, int fd) {
    srv_conn *c = conn_new(w);
    if (!c)
        return NULL;
    if (uv_tcp_open(&c->tcp, fd) != 0) {
        srv_conn_close(c);
        return NULL;
    }
    conn_begin(c);
    return c->closing ? NULL : c;
}

/* ---- draining ---------------------------------------------------------------------- */

static void check_drained(srv_worker *w) {
    if (!w->draining || w->nconns > 0 || w->drain_reported)
        return;
    w->drain_reported = true;
    strata_server *s = w->s;
    pthread_mutex_lock(&s->mu);
    s->workers_drained++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void on_listener_closed(uv_handle_t *h) { (void)h; }

void srv_worker_drain(srv_worker *w, bool force) {
    w->draining = true;
    if (w->listening) {
        uv_close((uv_handle_t *)&w->listener, on_listener_closed);
        w->listening = false;
    }
    srv_conn *next;
    for (srv_conn *c = w->conns; c; c = next) {
        next = c->next;
        if (force) {
            srv_conn_close(c);
            continue;
        }
        if (!c->req.active && !c->writing && c->out.len == 0) {
            srv_conn_close(c); /* idle keep-alive connection */
        } else if (c->req.streaming) {
            c->req.keepalive = false;
            srv_notify_abandon(&c->req); /* asks the handler to end its stream */
        } else {
            c->req.keepalive = false; /* answer the request in flight, then close */
        }
    }
    check_drained(w);
}
