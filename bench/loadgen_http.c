/*
 * loadgen_http.c: the load generator's HTTP/1.1 pieces (loadgen.h): an
 * incremental response parser, URL parsing, a blocking one-shot client for
 * set-up calls, and small JSON readers for response bodies.
 *
 * The parser is a cursor over the bytes received so far.  States:
 *   STATUS_HEADERS  wait for "\r\n\r\n" (bounded by LG_HTTP_MAX_HEADER), then
 *                   parse the status line and the headers at once
 *   BODY_LENGTH     Content-Length bytes
 *   CHUNK_SIZE / CHUNK_DATA / CHUNK_CRLF / TRAILERS   RFC 9112 section 7.1
 *   UNTIL_CLOSE     no length and not chunked: the body ends at EOF
 *   DONE            a response is ready until lg_http_consume()
 * Framing follows RFC 9112 section 6.3: 1xx, 204 and 304 have no body;
 * Transfer-Encoding wins over Content-Length (both present is refused, as a
 * smuggling guard); differing duplicate Content-Length values are refused.
 * Keep-alive: HTTP/1.1 unless "Connection: close"; HTTP/1.0 only with
 * "Connection: keep-alive".  Every index is checked against the buffer, so
 * garbage and truncation give STRATA_EPROTO or "need more", never a crash.
 */
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "loadgen.h"
#include "strata/alloc.h"
#include "strata/status.h"

/* ---- outcomes ------------------------------------------------------------------ */

static const struct {
    const char *label;
    bool err, unknown;
} outcome_info[] = {
#define LG__OUTCOME_ROW(n, l, e, u) {l, e, u},
    LG_OUTCOMES(LG__OUTCOME_ROW)
#undef LG__OUTCOME_ROW
};

const char *lg_outcome_label(int o) {
    return o >= 0 && o < LG__NOUTCOMES ? outcome_info[o].label : "?";
}
bool lg_outcome_is_error(int o) { return o >= 0 && o < LG__NOUTCOMES && outcome_info[o].err; }
bool lg_outcome_unknown(int o) { return o >= 0 && o < LG__NOUTCOMES && outcome_info[o].unknown; }

/* ---- the parser -------------------------------------------------------------------- */

enum {
    ST_HEADERS = 0,
    ST_BODY_LENGTH,
    ST_CHUNK_SIZE,
    ST_CHUNK_DATA,
    ST_CHUNK_CRLF,
    ST_TRAILERS,
    ST_UNTIL_CLOSE,
    ST_DONE,
};

void lg_http_parser_init(lg_http_parser *p) {
    memset(p, 0, sizeof *p);
    p->content_length = -1;
    p->retry_after = -1;
}

void lg_http_parser_free(lg_http_parser *p) {
    strata_buf_free(&p->in);
    strata_buf_free(&p->body);
    lg_http_parser_init(p);
}

static void start_response(lg_http_parser *p) {
    p->state = ST_HEADERS;
    p->status = p->minor = 0;
    p->keep_alive = p->chunked = p->until_close = p->no_body = false;
    p->retry_after = -1;
    p->content_length = -1;
    p->chunk_left = 0;
    strata_buf_reset(&p->body);
}

void lg_http_parser_reset(lg_http_parser *p) {
    strata_buf_reset(&p->in);
    p->pos = 0;
    start_response(p);
}

int lg_http_feed(lg_http_parser *p, const char *data, size_t n) {
    /* Compact first: bytes before pos are parsed (headers, consumed responses). */
    if (p->pos > 0 && p->pos >= p->in.len / 2 && p->state != ST_DONE) {
        memmove(p->in.data, p->in.data + p->pos, p->in.len - p->pos);
        p->in.len -= p->pos;
        p->in.data[p->in.len] = '\0';
        p->pos = 0;
    }
    if (p->in.len - p->pos + n > (size_t)LG_HTTP_MAX_HEADER + LG_HTTP_MAX_BODY + 4096)
        return STRATA_ETOOBIG;
    return strata_buf_append(&p->in, data, n) == 0 ? STRATA_OK : STRATA_ENOMEM;
}

bool lg_http_pending(const lg_http_parser *p) {
    return p->state != ST_HEADERS || p->pos < p->in.len;
}

static bool token_eq(const char *s, size_t n, const char *lit) {
    size_t m = strlen(lit);
    if (n != m)
        return false;
    for (size_t i = 0; i < n; i++)
        if (tolower((unsigned char)s[i]) != lit[i])
            return false;
    return true;
}

static void trim(const char **s, size_t *n) {
    while (*n && (**s == ' ' || **s == '\t'))
        (*s)++, (*n)--;
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

/* Parses a non-negative decimal of at most 18 digits; -1 if not one. */
static int64_t parse_dec(const char *s, size_t n) {
    if (n == 0 || n > 18)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Does the comma-separated list s[0..n) hold the token `tok` (case-insensitive)? */
static bool list_has(const char *s, size_t n, const char *tok) {
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] != ',')
            j++;
        const char *e = s + i;
        size_t el = j - i;
        trim(&e, &el);
        if (token_eq(e, el, tok))
            return true;
        i = j + 1;
    }
    return false;
}

/* The last element of a comma-separated list. */
static bool list_last_is(const char *s, size_t n, const char *tok) {
    size_t i = n;
    while (i > 0 && s[i - 1] != ',')
        i--;
    const char *e = s + i;
    size_t el = n - i;
    trim(&e, &el);
    return token_eq(e, el, tok);
}

/* Parses status line + headers in h[0..n) (n excludes the final CRLFCRLF's last CRLF). */
static int parse_head(lg_http_parser *p, const char *h, size_t n) {
    /* "HTTP/1.x SSS[ reason]" */
    if (n < 12 || memcmp(h, "HTTP/1.", 7) != 0 || (h[7] != '0' && h[7] != '1') || h[8] != ' ')
        return STRATA_EPROTO;
    p->minor = h[7] - '0';
    if (!isdigit((unsigned char)h[9]) || !isdigit((unsigned char)h[10]) ||
        !isdigit((unsigned char)h[11]))
        return STRATA_EPROTO;
    p->status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    if (p->status < 100 || p->status > 599)
        return STRATA_EPROTO;
    size_t i = 12;
    if (i < n && h[i] != ' ' && h[i] != '\r')
        return STRATA_EPROTO;
    while (i < n && h[i] != '\n')
        i++;
    if (i >= n || h[i - 1] != '\r')
        return STRATA_EPROTO;
    i++;
    bool conn_close = false, conn_keep = false, te = false;
    while (i < n) {
        size_t e = i;
        while (e < n && h[e] != '\n')
            e++;
        if (e >= n || e == i || h[e - 1] != '\r')
            return STRATA_EPROTO;
        size_t le = e - 1; /* line is h[i..le) */
        size_t c = i;
        while (c < le && h[c] != ':')
            c++;
        if (c == le || c == i)
            return STRATA_EPROTO;
        for (size_t k = i; k < c; k++)
            if (h[k] <= ' ' || h[k] >= 127)
                return STRATA_EPROTO; /* no space before ':' (RFC 9112 5.1) */
        const char *name = h + i;
        size_t nl = c - i;
        const char *val = h + c + 1;
        size_t vl = le - c - 1;
        trim(&val, &vl);
        for (size_t k = 0; k < vl; k++)
            if ((unsigned char)val[k] < 0x20 && val[k] != '\t')
                return STRATA_EPROTO;
        if (token_eq(name, nl, "content-length")) {
            int64_t v = parse_dec(val, vl);
            if (v < 0 || (p->content_length >= 0 && p->content_length != v))
                return STRATA_EPROTO;
            if (v > LG_HTTP_MAX_BODY)
                return STRATA_ETOOBIG;
            p->content_length = v;
        } else if (token_eq(name, nl, "transfer-encoding")) {
            te = true;
            p->chunked = list_last_is(val, vl, "chunked");
        } else if (token_eq(name, nl, "connection")) {
            conn_close |= list_has(val, vl, "close");
            conn_keep |= list_has(val, vl, "keep-alive");
        } else if (token_eq(name, nl, "retry-after")) {
            p->retry_after = parse_dec(val, vl);
        }
        i = e + 1;
    }
    if (te && p->content_length >= 0)
        return STRATA_EPROTO;
    p->keep_alive = p->minor == 1 ? !conn_close : (conn_keep && !conn_close);
    p->no_body = p->status < 200 || p->status == 204 || p->status == 304;
    if (p->no_body)
        p->state = ST_DONE;
    else if (te && p->chunked)
        p->state = ST_CHUNK_SIZE;
    else if (te) {
        p->state = ST_UNTIL_CLOSE; /* a non-chunked coding: the body runs to EOF */
        p->keep_alive = false;
    } else if (p->content_length >= 0)
        p->state = p->content_length == 0 ? ST_DONE : ST_BODY_LENGTH;
    else {
        p->state = ST_UNTIL_CLOSE;
        p->keep_alive = false;
    }
    return STRATA_OK;
}

/* Finds "\r\n" at or after `from` in the input; returns its index or -1. */
static int64_t find_crlf(const lg_http_parser *p, size_t from) {
    for (size_t i = from; i + 1 < p->in.len; i++)
        if (p->in.data[i] == '\r' && p->in.data[i + 1] == '\n')
            return (int64_t)i;
    return -1;
}

static int body_add(lg_http_parser *p, const char *d, size_t n) {
    if (p->body.len + n > LG_HTTP_MAX_BODY)
        return STRATA_ETOOBIG;
    return strata_buf_append(&p->body, d, n) == 0 ? STRATA_OK : STRATA_ENOMEM;
}

static void fill(lg_http_parser *p, lg_http_resp *out) {
    out->status = p->status;
    out->minor = p->minor;
    out->keep_alive = p->keep_alive;
    out->retry_after = p->retry_after;
    out->body = p->body.data ? p->body.data : "";
    out->body_len = p->body.len;
}

int lg_http_next(lg_http_parser *p, lg_http_resp *out) {
    for (;;) {
        size_t avail = p->in.len - p->pos;
        const char *d = p->in.data ? p->in.data + p->pos : NULL;
        switch (p->state) {
        case ST_HEADERS: {
            if (avail == 0)
                return 0;
            /* Tolerate stray CRLFs between responses (RFC 9112 2.2). */
            while (avail >= 2 && d[0] == '\r' && d[1] == '\n')
                p->pos += 2, d += 2, avail -= 2;
            size_t end = 0;
            bool found = false;
            for (size_t i = 0; i + 3 < avail && i < LG_HTTP_MAX_HEADER; i++)
                if (d[i] == '\r' && d[i + 1] == '\n' && d[i + 2] == '\r' && d[i + 3] == '\n') {
                    end = i;
                    found = true;
                    break;
                }
            if (!found) {
                if (avail >= 5 && memcmp(d, "HTTP/", 5) != 0)
                    return STRATA_EPROTO; /* garbage: fail fast instead of waiting */
                return avail >= LG_HTTP_MAX_HEADER ? STRATA_ETOOBIG : 0;
            }
            int rc = parse_head(p, d, end + 2);
            if (rc < 0)
                return rc;
            p->pos += end + 4;
            if (p->state == ST_DONE && p->status < 200) { /* interim: skip */
                start_response(p);
                continue;
            }
            break;
        }
        case ST_BODY_LENGTH: {
            size_t want = (size_t)p->content_length - p->body.len;
            size_t take = avail < want ? avail : want;
            if (take) {
                int rc = body_add(p, d, take);
                if (rc < 0)
                    return rc;
                p->pos += take;
            }
            if (p->body.len < (size_t)p->content_length)
                return 0;
            p->state = ST_DONE;
            break;
        }
        case ST_CHUNK_SIZE: {
            int64_t e = find_crlf(p, p->pos);
            if (e < 0)
                return avail > 1024 ? STRATA_EPROTO : 0;
            size_t len = (size_t)e - p->pos;
            int64_t v = 0;
            size_t k = 0;
            for (; k < len && isxdigit((unsigned char)d[k]); k++) {
                if (k >= 8)
                    return STRATA_ETOOBIG;
                int c = tolower((unsigned char)d[k]);
                v = v * 16 + (c <= '9' ? c - '0' : c - 'a' + 10);
            }
            if (k == 0 || (k < len && d[k] != ';' && d[k] != ' ' && d[k] != '\t'))
                return STRATA_EPROTO;
            if (v > LG_HTTP_MAX_BODY)
                return STRATA_ETOOBIG;
            p->pos = (size_t)e + 2;
            p->chunk_left = v;
            p->state = v == 0 ? ST_TRAILERS : ST_CHUNK_DATA;
            break;
        }
        case ST_CHUNK_DATA: {
            size_t take = avail < (size_t)p->chunk_left ? avail : (size_t)p->chunk_left;
            if (take) {
                int rc = body_add(p, d, take);
                if (rc < 0)
                    return rc;
                p->pos += take;
                p->chunk_left -= (int64_t)take;
            }
            if (p->chunk_left > 0)
                return 0;
            p->state = ST_CHUNK_CRLF;
            break;
        }
        case ST_CHUNK_CRLF:
            if (avail < 2)
                return 0;
            if (d[0] != '\r' || d[1] != '\n')
                return STRATA_EPROTO;
            p->pos += 2;
            p->state = ST_CHUNK_SIZE;
            break;
        case ST_TRAILERS: {
            int64_t e = find_crlf(p, p->pos);
            if (e < 0)
                return avail > LG_HTTP_MAX_HEADER ? STRATA_ETOOBIG : 0;
            bool empty = (size_t)e == p->pos;
            p->pos = (size_t)e + 2;
            if (empty)
                p->state = ST_DONE;
            break;
        }
        case ST_UNTIL_CLOSE:
            if (avail) {
                int rc = body_add(p, d, avail);
                if (rc < 0)
                    return rc;
                p->pos += avail;
            }
            return 0;
        case ST_DONE:
            if (!p->body.data && strata_buf_append(&p->body, "", 0) != 0)
                return STRATA_ENOMEM;
            fill(p, out);
            return 1;
        default: return STRATA_EPROTO;
        }
    }
}

int lg_http_eof(lg_http_parser *p, lg_http_resp *out) {
    if (p->state == ST_UNTIL_CLOSE) {
        if (!p->body.data && strata_buf_append(&p->body, "", 0) != 0)
            return STRATA_ENOMEM;
        p->state = ST_DONE;
        fill(p, out);
        return 1;
    }
    if (p->state == ST_DONE) {
        fill(p, out);
        return 1;
    }
    return lg_http_pending(p) ? STRATA_EPROTO : 0;
}

void lg_http_consume(lg_http_parser *p) {
    if (p->state != ST_DONE)
        return;
    start_response(p);
    if (p->pos == p->in.len) {
        strata_buf_reset(&p->in);
        p->pos = 0;
    }
}

/* ---- URLs ------------------------------------------------------------------------- */

int lg_url_parse(const char *url, lg_url *out, strata_buf *err) {
    memset(out, 0, sizeof *out);
    if (!url || strncmp(url, "http://", 7) != 0) {
        if (err)
            strata_buf_printf(err, "URL \"%s\": only http://host[:port][/prefix] is supported",
                              url ? url : "");
        return STRATA_EINVAL;
    }
    const char *h = url + 7, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    const char *host = h, *colon = NULL;
    size_t hostlen = hl;
    if (hl && h[0] == '[') { /* [IPv6] */
        const char *rb = memchr(h, ']', hl);
        if (!rb)
            goto bad;
        host = h + 1;
        hostlen = (size_t)(rb - host);
        if ((size_t)(rb + 1 - h) < hl) {
            if (rb[1] != ':')
                goto bad;
            colon = rb + 1;
        }
    } else {
        colon = memchr(h, ':', hl);
        if (colon)
            hostlen = (size_t)(colon - h);
    }
    if (hostlen == 0 || hostlen >= sizeof out->host)
        goto bad;
    for (size_t i = 0; i < hostlen; i++)
        if (!isalnum((unsigned char)host[i]) && !strchr(".-_:", host[i]))
            goto bad;
    memcpy(out->host, host, hostlen);
    out->port = 80;
    if (colon) {
        int64_t v = parse_dec(colon + 1, (size_t)(h + hl - colon - 1));
        if (v < 1 || v > 65535)
            goto bad;
        out->port = (uint16_t)v;
    }
    if (slash) {
        size_t pl = strlen(slash);
        while (pl && slash[pl - 1] == '/')
            pl--;
        if (pl >= sizeof out->prefix)
            goto bad;
        for (size_t i = 0; i < pl; i++)
            if ((unsigned char)slash[i] <= ' ' || slash[i] == '?' || slash[i] == '#' ||
                (unsigned char)slash[i] >= 127)
                goto bad;
        memcpy(out->prefix, slash, pl);
    }
    snprintf(out->hostport, sizeof out->hostport, "%s%s%s:%u", host[-1] == '[' ? "[" : "",
             out->host, host[-1] == '[' ? "]" : "", (unsigned)out->port);
    return STRATA_OK;
bad:
    if (err)
        strata_buf_printf(err, "URL \"%s\": expected http://host[:port][/prefix]", url);
    memset(out, 0, sizeof *out);
    return STRATA_EINVAL;
}

/* ---- the blocking client ------------------------------------------------------------ */

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int wait_fd(int fd, short ev, uint64_t deadline) {
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline)
            return STRATA_ETIMEDOUT;
        struct pollfd pf = {fd, ev, 0};
        int r = poll(&pf, 1, (int)(deadline - now));
        if (r > 0)
            return STRATA_OK;
        if (r < 0 && errno != EINTR)
            return STRATA_ESYS;
    }
}

int lg_http_call(const lg_url *u, const char *method, const char *path, const char *auth,
                 const char *body, int timeout_ms, int *status, strata_buf *resp_body,
                 strata_buf *err) {
    uint64_t deadline = mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 1);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)u->port);
    if (getaddrinfo(u->host, port, &hints, &ai) != 0 || !ai) {
        if (err)
            strata_buf_printf(err, "cannot resolve %s", u->host);
        return STRATA_EUNAVAIL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = STRATA_OK;
    strata_buf req = STRATA_BUF_INIT;
    lg_http_parser p;
    lg_http_parser_init(&p);
    if (fd < 0) {
        rc = STRATA_ESYS;
        goto out;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        rc = STRATA_EUNAVAIL;
        goto out;
    }
    if ((rc = wait_fd(fd, POLLOUT, deadline)) < 0)
        goto out;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
        rc = STRATA_EUNAVAIL;
        goto out;
    }
    size_t blen = body ? strlen(body) : 0;
    strata_buf_printf(&req, "%s %s%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method,
                      u->prefix, path, u->hostport);
    if (auth && *auth)
        strata_buf_printf(&req, "Authorization: Bearer %s\r\n", auth);
    if (body)
        strata_buf_printf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
    strata_buf_puts(&req, "\r\n");
    if (body)
        strata_buf_append(&req, body, blen);
    if (req.oom) {
        rc = STRATA_ENOMEM;
        goto out;
    }
    for (size_t off = 0; off < req.len;) {
        ssize_t w = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            rc = STRATA_EUNAVAIL;
            goto out;
        }
        if ((rc = wait_fd(fd, POLLOUT, deadline)) < 0)
            goto out;
    }
    for (;;) {
        lg_http_resp r;
        int got = lg_http_next(&p, &r);
        if (got < 0) {
            rc = STRATA_EPROTO;
            goto out;
        }
        if (got == 1) {
            *status = r.status;
            strata_buf_reset(resp_body);
            strata_buf_append(resp_body, r.body, r.body_len);
            goto out;
        }
        if ((rc = wait_fd(fd, POLLIN, deadline)) < 0)
            goto out;
        char tmp[16384];
        ssize_t n = recv(fd, tmp, sizeof tmp, 0);
        if (n > 0) {
            if ((rc = lg_http_feed(&p, tmp, (size_t)n)) < 0)
                goto out;
        } else if (n == 0) {
            got = lg_http_eof(&p, &r);
            if (got == 1) {
                *status = r.status;
                strata_buf_reset(resp_body);
                strata_buf_append(resp_body, r.body, r.body_len);
            } else
                rc = STRATA_EPROTO;
            goto out;
        } else if (errno != EAGAIN && errno != EINTR) {
            rc = STRATA_EUNAVAIL;
            goto out;
        }
    }
out:
    if (rc < 0 && err)
        strata_buf_printf(err, "%s %s%s on %s: %s", method, u->prefix, path, u->hostport,
                          rc == STRATA_EPROTO ? "malformed HTTP response" : strata_strerror(rc));
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    strata_buf_free(&req);
    lg_http_parser_free(&p);
    return rc;
}

/* ---- JSON bodies ------------------------------------------------------------------- */

static const cJSON *json_member(const cJSON *doc, const char *field) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(doc, field);
    if (!f) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(doc, "error");
        if (cJSON_IsObject(e))
            f = cJSON_GetObjectItemCaseSensitive(e, field);
    }
    return f;
}

bool lg_json_str(const char *body, size_t len, const char *field, char *out, size_t cap) {
    if (!body || len == 0 || cap == 0)
        return false;
    cJSON *doc = cJSON_ParseWithLength(body, len);
    bool ok = false;
    if (cJSON_IsObject(doc)) {
        const cJSON *f = json_member(doc, field);
        if (cJSON_IsString(f) && f->valuestring && strlen(f->valuestring) < cap) {
            strcpy(out, f->valuestring);
            ok = true;
        }
    }
    cJSON_Delete(doc);
    return ok;
}

bool lg_json_int(const char *body, size_t len, const char *field, int64_t *out) {
    if (!body || len == 0)
        return false;
    cJSON *doc = cJSON_ParseWithLength(body, len);
    bool ok = false;
    if (cJSON_IsObject(doc)) {
        const cJSON *f = json_member(doc, field);
        if (cJSON_IsNumber(f) && f->valuedouble >= -9007199254740992.0 &&
            f->valuedouble <= 9007199254740992.0 &&
            f->valuedouble == (double)(int64_t)f->valuedouble) {
            *out = (int64_t)f->valuedouble;
            ok = true;
        }
    }
    cJSON_Delete(doc);
    return ok;
}
