/*
 * respond.c: the request API of http.h: dispatching to routes, reading the
 * request, the per-request arena, writing responses (whole, chunked, SSE),
 * and the per-route metrics.
 *
 * Responses are appended straight into the connection's output buffer, the
 * head assembled from preformatted pieces (status lines, the Date header
 * cached per second per worker), so a response is a few memcpy calls and no
 * allocation; the connection sends everything gathered in one uv_write.
 *
 * Metrics: strata_http_requests_total{route,method,status} counters are
 * registered lazily the first time a route answers a status, and the handle
 * is cached per worker (no lock, no lookup in the registry on the hot path);
 * latencies go to the route's histogram (a relaxed atomic add).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "server/server_internal.h"
#include "strata/alloc.h"
#include "strata/json.h"
#include "strata/log.h"
#include "strata/status.h"

/* ---- arena ---------------------------------------------------------------------- */

#define ARENA_BLOCK 4096

void *srv_arena_alloc(srv_arena *a, size_t size) {
    size = (size + 15) & ~(size_t)15;
    if (size == 0)
        size = 16;
    srv_arena_block *b = a->head;
    if (b && b->cap - b->used >= size) {
        void *p = b->data + b->used;
        b->used += size;
        return p;
    }
    size_t cap =
        size > ARENA_BLOCK - sizeof(srv_arena_block) ? size : ARENA_BLOCK - sizeof(srv_arena_block);
    b = strata_malloc(sizeof(srv_arena_block) + cap);
    if (!b)
        return NULL;
    b->cap = cap;
    b->used = size;
    b->next = a->head;
    a->head = b;
    return b->data;
}

void srv_arena_reset(srv_arena *a) {
    /* Keep the oldest block (the first one allocated, usually enough). */
    srv_arena_block *b = a->head;
    while (b && b->next) {
        srv_arena_block *n = b->next;
        strata_free(b);
        b = n;
    }
    if (b && b->cap > ARENA_BLOCK) {
        strata_free(b);
        b = NULL;
    }
    if (b)
        b->used = 0;
    a->head = b;
}

void srv_arena_free(srv_arena *a) {
    srv_arena_block *b = a->head;
    while (b) {
        srv_arena_block *n = b->next;
        strata_free(b);
        b = n;
    }
    a->head = NULL;
}

void *strata_http_alloc(strata_http_req *req, size_t size) {
    return srv_arena_alloc(&req->arena, size);
}

char *strata_http_strdup(strata_http_req *req, const char *s) {
    size_t n = strlen(s);
    char *p = srv_arena_alloc(&req->arena, n + 1);
    if (p)
        memcpy(p, s, n + 1);
    return p;
}

char *strata_http_sprintf(strata_http_req *req, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *p = srv_arena_alloc(&req->arena, (size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

/* ---- status lines and the head ---------------------------------------------------- */

const char *srv_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static const char *date_header(srv_worker *w) {
    time_t now = time(NULL);
    if (now != w->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(w->date, sizeof w->date, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        w->date_sec = now;
    }
    return w->date;
}

static inline void put(strata_buf *b, const char *s, size_t n) { strata_buf_append(b, s, n); }
#define PUTS(b, lit) put((b), (lit), sizeof(lit) - 1)

static void put_u64(strata_buf *b, uint64_t v) {
    char tmp[24];
    int i = (int)sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(b, tmp + i, sizeof tmp - (size_t)i);
}

/*
 * Appends the status line and headers.  clen >= 0: Content-Length; -1:
 * chunked; -2: no length (body ends with the connection).
 */
void srv_write_head(strata_http_req *req, int status, const char *ctype, int64_t clen, bool close) {
    srv_conn *c = req->conn;
    strata_buf *o = &c->out;
    strata_buf_reserve(o, 256 + req->resp_hdrs.len);
    if (status == 200) {
        PUTS(o, "HTTP/1.1 200 OK\r\nServer: strata\r\n");
    } else {
        char line[80];
        int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\nServer: strata\r\n", status,
                         srv_reason(status));
        put(o, line, (size_t)n);
    }
    const char *d = date_header(req->w);
    put(o, d, strlen(d));
    if (ctype) {
        PUTS(o, "Content-Type: ");
        put(o, ctype, strlen(ctype));
        PUTS(o, "\r\n");
    }
    if (clen >= 0 && status != 204 && status != 304) {
        PUTS(o, "Content-Length: ");
        put_u64(o, (uint64_t)clen);
        PUTS(o, "\r\n");
    } else if (clen == -1) {
        PUTS(o, "Transfer-Encoding: chunked\r\n");
    }
    if (close)
        PUTS(o, "Connection: close\r\n");
    else if (req->http_minor == 0)
        PUTS(o, "Connection: keep-alive\r\n");
    if (req->resp_hdrs.len)
        put(o, req->resp_hdrs.data, req->resp_hdrs.len);
    PUTS(o, "\r\n");
}

static bool must_close(const strata_http_req *req) {
    return !req->keepalive || req->w->draining || req->conn->close_after_write;
}

void srv_write_error(strata_http_req *req, int status, const char *code, const char *msg) {
    srv_worker *w = req->w;
    strata_buf *sc = &w->scratch;
    strata_buf_reset(sc);
    PUTS(sc, "{\"error\":{\"code\":\"");
    put(sc, code, strlen(code));
    PUTS(sc, "\",\"message\":");
    strata_buf_json_str(sc, msg, strlen(msg));
    PUTS(sc, "}}");
    srv_write_head(req, status, "application/json", (int64_t)sc->len, must_close(req));
    if (!req->head)
        put(&req->conn->out, sc->data, sc->len);
}

/* ---- metrics ----------------------------------------------------------------------- */

void srv_count(srv_worker *w, const srv_route *r, int status, uint64_t ns) {
    strata_server *s = w->s;
    if (!s->deps.metrics)
        return;
    int idx = r ? r->index : s->nroutes;
    srv_route_stats *rs = &w->rstats[idx];
    strata_counter *ctr = NULL;
    for (int i = 0; i < rs->n; i++) {
        if (rs->st[i].status == status) {
            ctr = rs->st[i].c;
            break;
        }
    }
    if (!ctr) {
        char labels[360];
        snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\",status=\"%d\"",
                 r ? r->pattern : "unmatched", r ? r->method : "*", status);
        ctr = strata_metrics_counter(s->deps.metrics, "strata_http_requests_total",
                                     "HTTP requests answered, by route, method and status", labels);
        if (!ctr)
            return;
        if (rs->n < SRV_STATUS_CACHE) {
            rs->st[rs->n].status = status;
            rs->st[rs->n].c = ctr;
            rs->n++;
        }
    }
    strata_counter_inc(ctr);
    const srv_route *hr = r ? r : s->unmatched;
    if (ns && hr && hr->latency)
        strata_histogram_record(hr->latency, ns);
}

/* ---- finishing -------------------------------------------------------------------- */

void srv_notify_abandon(strata_http_req *req) {
    if (req->abandon_notified || !req->dispatched)
        return;
    req->abandon_notified = true;
    if (req->abandon_fn)
        req->abandon_fn(req, req->abandon_ctx);
}

/* Common tail of every respond/stream_end: metrics, then the connection moves on. */
void srv_finish(strata_http_req *req) {
    srv_conn *c = req->conn;
    if (!req->answered) {
        uint64_t ns = uv_hrtime() - req->start_ns;
        srv_count(req->w, req->m.route, req->status, ns);
    }
    req->dispatched = false;
    srv_conn_request_finished(c);
}

/* True when the response should really be written (false: client gone or already answered). */
static bool can_write(strata_http_req *req) { return !req->answered && !req->conn->closing; }

static bool begin_respond(strata_http_req *req, const char *fn) {
    if (!req->dispatched || req->streaming) {
        LOG_ERROR("http_bad_respond", "call=%s reason=\"request already finished or streaming\"",
                  fn);
        return false;
    }
    return true;
}

void strata_http_respond(strata_http_req *req, int status, const char *content_type,
                         const void *body, size_t len) {
    if (!begin_respond(req, "respond"))
        return;
    if (status < 200 || status > 599)
        status = 500;
    req->status = status;
    if (can_write(req)) {
        bool nobody = status == 204 || status == 304;
        srv_write_head(req, status, nobody ? NULL : content_type, nobody ? 0 : (int64_t)len,
                       must_close(req));
        if (!req->head && !nobody && len)
            put(&req->conn->out, body, len);
    }
    srv_finish(req);
}

void strata_http_respond_json(strata_http_req *req, int status, const char *json, size_t len) {
    strata_http_respond(req, status, "application/json", json, len);
}

void strata_http_respond_jsonf(strata_http_req *req, int status, const char *fmt, ...) {
    strata_buf *sc = &req->w->scratch;
    strata_buf_reset(sc);
    va_list ap;
    va_start(ap, fmt);
    strata_buf_vprintf(sc, fmt, ap);
    va_end(ap);
    if (sc->oom) {
        strata_http_respond_status(req, STRATA_ENOMEM, NULL);
        return;
    }
    strata_http_respond(req, status, "application/json", sc->data, sc->len);
}

void strata_http_respond_cjson(strata_http_req *req, int status, const cJSON *doc) {
    char *txt = cJSON_PrintUnformatted(doc);
    if (!txt) {
        strata_http_respond_status(req, STRATA_ENOMEM, NULL);
        return;
    }
    strata_http_respond(req, status, "application/json", txt, strlen(txt));
    cJSON_free(txt);
}

void strata_http_respond_error(strata_http_req *req, int status, const char *code, const char *fmt,
                               ...) {
    if (!begin_respond(req, "respond_error"))
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (status < 200 || status > 599)
        status = 500;
    req->status = status;
    if (can_write(req))
        srv_write_error(req, status, code, msg);
    srv_finish(req);
}

static const char *status_code_name(int rc) {
    switch (rc) {
    case STRATA_ENOMEM: return "out_of_memory";
    case STRATA_EINVAL: return "invalid_argument";
    case STRATA_ENOTFOUND: return "not_found";
    case STRATA_EEXIST: return "already_exists";
    case STRATA_ERANGE: return "out_of_range";
    case STRATA_ETOOBIG: return "too_large";
    case STRATA_ETIMEDOUT: return "timeout";
    case STRATA_EUNKNOWN: return "outcome_unknown";
    case STRATA_EIO: return "io_error";
    case STRATA_EUNAVAIL: return "unavailable";
    case STRATA_ERETRY: return "retry";
    case STRATA_EPROTO: return "protocol_error";
    case STRATA_EBACKPRESSURE: return "overloaded";
    case STRATA_ECROSSSLOT: return "cross_slot";
    case STRATA_ECLOSED: return "closed";
    case STRATA_ECANCELED: return "canceled";
    case STRATA_ECONFLICT: return "conflict";
    case STRATA_ELIMITED: return "rate_limited";
    case STRATA_EBREAKER: return "breaker_open";
    case STRATA_EAUTH: return "unauthorized";
    case STRATA_EPERM: return "forbidden";
    case STRATA_ESYS: return "system_error";
    default: return "internal";
    }
}

void strata_http_respond_status(strata_http_req *req, int rc, const char *msg) {
    if (rc >= 0) {
        strata_http_respond_json(req, 200, "{\"status\":\"ok\"}", 15);
        return;
    }
    strata_http_respond_error(req, strata_status_http(rc), status_code_name(rc), "%s",
                              msg ? msg : strata_strerror(rc));
}

int strata_http_add_header(strata_http_req *req, const char *name, const char *value) {
    if (!*name || strpbrk(name, "\r\n: \t") || strpbrk(value, "\r\n"))
        return STRATA_EINVAL;
    strata_buf *b = &req->resp_hdrs;
    strata_buf_puts(b, name);
    PUTS(b, ": ");
    strata_buf_puts(b, value);
    PUTS(b, "\r\n");
    return b->oom ? STRATA_ENOMEM : STRATA_OK;
}

/* ---- streaming ----------------------------------------------------------------------- */

int strata_http_stream_begin(strata_http_req *req, int status, const char *content_type) {
    if (!req->dispatched || req->streaming)
        return STRATA_EINVAL;
    srv_conn *c = req->conn;
    req->streaming = true;
    req->status = status;
    if (!can_write(req))
        return STRATA_ECLOSED;
    req->chunked_out = req->http_minor >= 1;
    if (!req->chunked_out)
        req->keepalive = false;
    srv_write_head(req, status, content_type, req->chunked_out ? -1 : -2, must_close(req));
    c->state = CS_STREAM;
    c->deadline = 0;
    if (req->sse)
        srv_conn_set_deadline(c, uv_now(&req->w->loop) + (uint64_t)req->w->s->cfg.sse_heartbeat_ms);
    srv_conn_flush(c);
    return c->closing ? STRATA_ECLOSED : STRATA_OK;
}

int strata_http_stream_write(strata_http_req *req, const void *data, size_t len) {
    if (!req->streaming || !req->dispatched)
        return STRATA_EINVAL;
    srv_conn *c = req->conn;
    if (!can_write(req))
        return STRATA_ECLOSED;
    if (len == 0)
        return STRATA_OK;
    if (req->head) /* HEAD: headers only */
        return STRATA_OK;
    strata_buf *o = &c->out;
    if (req->chunked_out) {
        char hex[24];
        int n = snprintf(hex, sizeof hex, "%zx\r\n", len);
        put(o, hex, (size_t)n);
        put(o, data, len);
        PUTS(o, "\r\n");
    } else {
        put(o, data, len);
    }
    srv_conn_flush(c);
    if (c->closing)
        return STRATA_ECLOSED;
    return srv_conn_queued(c) > (uint64_t)req->w->s->cfg.output_high_water ? STRATA_EBACKPRESSURE
                                                                           : STRATA_OK;
}

void strata_http_stream_end(strata_http_req *req) {
    if (!req->streaming || !req->dispatched) {
        LOG_ERROR("http_bad_respond", "call=stream_end reason=\"not streaming\"");
        return;
    }
    if (can_write(req)) {
        if (req->chunked_out && !req->head)
            PUTS(&req->conn->out, "0\r\n\r\n");
    }
    req->streaming = false;
    srv_finish(req);
}

int strata_http_sse_begin(strata_http_req *req) {
    if (!req->dispatched || req->streaming)
        return STRATA_EINVAL;
    strata_http_add_header(req, "Cache-Control", "no-store");
    strata_http_add_header(req, "X-Accel-Buffering", "no");
    req->sse = true;
    return strata_http_stream_begin(req, 200, "text/event-stream");
}

int strata_http_sse_send(strata_http_req *req, const char *event, const char *id, const char *data,
                         size_t len) {
    if ((event && strpbrk(event, "\r\n")) || (id && strpbrk(id, "\r\n")))
        return STRATA_EINVAL;
    if (!req->streaming || !req->dispatched)
        return STRATA_EINVAL;
    if (!can_write(req))
        return STRATA_ECLOSED;
    strata_buf *sc = &req->w->scratch;
    strata_buf_reset(sc);
    if (event) {
        PUTS(sc, "event: ");
        strata_buf_puts(sc, event);
        PUTS(sc, "\n");
    }
    if (id) {
        PUTS(sc, "id: ");
        strata_buf_puts(sc, id);
        PUTS(sc, "\n");
    }
    size_t i = 0;
    do {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - data) : len;
        size_t l = e - i;
        if (l && data[i + l - 1] == '\r')
            l--;
        PUTS(sc, "data: ");
        put(sc, data + i, l);
        PUTS(sc, "\n");
        i = e + 1;
    } while (i < len);
    PUTS(sc, "\n");
    if (sc->oom)
        return STRATA_ENOMEM;
    /* stream_write copies the scratch into the output before it can be reused */
    return strata_http_stream_write(req, sc->data, sc->len);
}

/* ---- dispatch ----------------------------------------------------------------------- */

bool srv_token_equal(const char *a, size_t alen, const char *b, size_t blen) {
    /* Constant time in the length of the expected token b: every byte is looked at. */
    volatile unsigned char d = (unsigned char)(alen != blen);
    for (size_t i = 0; i < blen; i++) {
        unsigned char x = i < alen ? (unsigned char)a[i] : 0;
        d |= (unsigned char)(x ^ (unsigned char)b[i]);
    }
    return d == 0;
}

static bool admin_ok(strata_http_req *req) {
    const char *auth = strata_http_header(req, "authorization");
    const char *tok = req->w->s->admin_token;
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return false;
    const char *given = auth + 7;
    while (*given == ' ')
        given++;
    size_t gl = strlen(given);
    while (gl && (given[gl - 1] == ' ' || given[gl - 1] == '\t'))
        gl--;
    return srv_token_equal(given, gl, tok, strlen(tok));
}

void srv_dispatch(strata_http_req *req) {
    srv_conn *c = req->conn;
    strata_server *s = req->w->s;
    req->start_ns = uv_hrtime();
    req->deadline_ns = req->start_ns + (uint64_t)s->cfg.request_timeout_ms * 1000000u;
    req->dispatched = true;
    req->status = 0;
    srv_router_match(s, req, &req->m);
    const srv_route *r = req->m.route;
    if (!r) {
        const char *method = http_method_str((enum http_method)req->method);
        if (req->m.status == 405) {
            strata_http_add_header(req, "Allow", req->m.allow);
            strata_http_respond_error(req, 405, "method_not_allowed",
                                      "%s is not allowed on %s; allowed: %s", method, req->path,
                                      req->m.allow);
        } else if (req->m.status == 400) {
            strata_http_respond_error(req, 400, "bad_request",
                                      "invalid percent-encoding in the path");
        } else {
            strata_http_respond_error(req, 404, "not_found", "no route for %s %s", method,
                                      req->path);
        }
        return;
    }
    if ((r->flags & STRATA_ROUTE_ADMIN) && !admin_ok(req)) {
        strata_http_add_header(req, "WWW-Authenticate", "Bearer realm=\"strata-admin\"");
        strata_http_respond_error(req, 401, "unauthorized",
                                  "admin routes need Authorization: Bearer <admin token>");
        return;
    }
    (void)c;
    r->fn(req, r->ctx);
}

/* ---- reading the request ---------------------------------------------------------------- */

const char *strata_http_method(const strata_http_req *req) {
    return http_method_str((enum http_method)req->method);
}
const char *strata_http_path(const strata_http_req *req) { return req->path; }
const char *strata_http_query_string(const strata_http_req *req) {
    return req->query ? req->query : "";
}
const char *strata_http_route(const strata_http_req *req) {
    return req->m.route ? req->m.route->pattern : NULL;
}

const char *strata_http_header(const strata_http_req *req, const char *name) {
    for (int i = 0; i < req->nhdrs; i++) {
        if (strcasecmp(req->hbuf.data + req->hdr_name[i], name) == 0)
            return req->hdr_val[i] == UINT32_MAX ? "" : req->hbuf.data + req->hdr_val[i];
    }
    return NULL;
}

const char *strata_http_body(const strata_http_req *req, size_t *len) {
    if (len)
        *len = req->body.len;
    return req->body.data ? req->body.data : "";
}

int strata_http_read_json(strata_http_req *req, cJSON **out) {
    *out = NULL;
    strata_buf err = STRATA_BUF_INIT;
    cJSON *doc = NULL;
    int rc = strata_json_parse(req->body.data ? req->body.data : "", req->body.len,
                               STRATA_JSON_MAX_DEPTH, &doc, &err);
    if (rc < 0) {
        strata_http_respond_error(req, 400, "invalid_json", "%s",
                                  err.data ? err.data : "invalid JSON body");
        strata_buf_free(&err);
        return rc;
    }
    strata_buf_free(&err);
    if (req->json)
        cJSON_Delete(req->json);
    req->json = doc;
    *out = doc;
    return STRATA_OK;
}

uint64_t strata_http_deadline_ns(const strata_http_req *req) { return req->deadline_ns; }

uint64_t strata_http_remaining_ms(const strata_http_req *req) {
    uint64_t now = uv_hrtime();
    return now >= req->deadline_ns ? 0 : (req->deadline_ns - now) / 1000000u;
}

bool strata_http_is_abandoned(const strata_http_req *req) {
    return req->answered || req->conn->closing;
}

void strata_http_on_abandon(strata_http_req *req, void (*fn)(strata_http_req *req, void *ctx),
                            void *ctx) {
    req->abandon_fn = fn;
    req->abandon_ctx = ctx;
}

uv_loop_t *strata_http_loop(const strata_http_req *req) { return &req->w->loop; }

void *strata_http_worker_slot(const strata_http_req *req, int slot) {
    if (slot < 0 || slot >= req->w->s->nslots)
        return NULL;
    return req->w->slot_data[slot];
}

strata_clock *strata_http_clock(const strata_http_req *req) { return req->w->s->clock; }
strata_metrics *strata_http_metrics(const strata_http_req *req) { return req->w->s->deps.metrics; }
