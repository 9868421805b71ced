/*
 * server_test_util.h: helpers shared by the test_server_*.c integration tests
 * (header-only: each test file is its own executable).
 *
 * An in-process server on 127.0.0.1:0 configured through the real options
 * engine (flags), and a tiny blocking HTTP/1.1 client over raw sockets that
 * can send arbitrary bytes (smuggling, slow headers, pipelining) and parse
 * responses (Content-Length, chunked, or until close).
 */
#ifndef STRATA_TEST_SERVER_UTIL_H
#define STRATA_TEST_SERVER_UTIL_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include "harness/harness.h"
#include "server/http.h"
#include "server/server.h"
#include "strata/alloc.h"
#include "strata/log.h"
#include "strata/metrics.h"
#include "strata/options.h"
#include "strata/status.h"

typedef struct tsrv {
    strata_server *s;
    strata_metrics *m;
    strata_clock *clock;
    int port;
} tsrv;

typedef void (*tsrv_setup_fn)(strata_server *s, void *ctx);

/* Loads the server options from `flags` (NULL-terminated) on top of test defaults and starts. */
static inline void tsrv_start(tsrv *t, const char *const *flags, tsrv_setup_fn setup, void *ctx) {
    char *argv[64];
    int argc = 0;
    static const char *const base[] = {"--listen",      "127.0.0.1:0",    "--workers", "2",
                                       "--admin-token", "test-token-123", NULL};
    for (int i = 0; base[i]; i++)
        argv[argc++] = (char *)base[i];
    for (int i = 0; flags && flags[i]; i++)
        argv[argc++] = (char *)flags[i];
    strata_buf err = STRATA_BUF_INIT;
    bool help = false;
    int rc = strata_options_load(&strata_server_opt_group, 1, argc, argv, NULL, &help, &err);
    if (rc != STRATA_OK)
        fprintf(stderr, "options: %s\n", err.data);
    assert_int_equal(rc, STRATA_OK);
    t->m = strata_metrics_create();
    assert_non_null(t->m);
    t->clock = strata_clock_create_offset();
    strata_server_deps deps = {
        .metrics = t->m, .clock = t->clock, .groups = &strata_server_opt_group, .ngroups = 1};
    rc = strata_server_create(&t->s, &deps, &err);
    if (rc != STRATA_OK)
        fprintf(stderr, "create: %s\n", err.data);
    assert_int_equal(rc, STRATA_OK);
    if (setup)
        setup(t->s, ctx);
    rc = strata_server_start(t->s, &err);
    if (rc != STRATA_OK)
        fprintf(stderr, "start: %s\n", err.data);
    assert_int_equal(rc, STRATA_OK);
    const char *addr = strata_server_address(t->s);
    t->port = atoi(strrchr(addr, ':') + 1);
    assert_true(t->port > 0);
    strata_buf_free(&err);
}

static inline void tsrv_stop(tsrv *t) {
    strata_server_destroy(&t->s);
    assert_null(t->s);
    strata_metrics_destroy(&t->m);
    strata_clock_destroy(&t->clock);
    strata_options_free(&strata_server_opt_group, 1);
}

/* ---- a raw client ---------------------------------------------------------------- */

typedef struct tconn {
    int fd;
    char buf[1 << 20];
    size_t len;
} tconn;

typedef struct tresp {
    int status;
    char headers[8192];
    char *body; /* malloc'd, NUL-terminated */
    size_t body_len;
    bool closed; /* the server closed after this response (EOF seen) */
} tresp;

static inline int tcp_connect_port(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static inline tconn *tc_open(int port) {
    tconn *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = tcp_connect_port(port);
    assert_true(c->fd >= 0);
    return c;
}

static inline void tc_close(tconn *c) {
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

static inline void tc_send(tconn *c, const char *data, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(c->fd, data + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        assert_true(w > 0);
        off += (size_t)w;
    }
}

static inline void tc_sends(tconn *c, const char *s) { tc_send(c, s, strlen(s)); }

/* Reads more bytes (waits up to timeout_ms); returns bytes read, 0 on EOF, -1 on timeout/error. */
static inline ssize_t tc_fill(tconn *c, int timeout_ms) {
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int r = poll(&p, 1, timeout_ms);
    if (r <= 0)
        return -1;
    if (c->len >= sizeof c->buf - 1)
        return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
    if (n < 0)
        return errno == ECONNRESET ? 0 : -1;
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    return n;
}

/* True when the server closes the connection within timeout_ms (EOF or RST). */
static inline bool tc_wait_closed(tconn *c, int timeout_ms) {
    uint64_t end = sh_now_ms() + (uint64_t)timeout_ms;
    while (sh_now_ms() < end) {
        c->len = 0;
        ssize_t n = tc_fill(c, (int)(end - sh_now_ms()) + 1);
        if (n == 0)
            return true;
        if (n < 0 && c->len == 0 && sh_now_ms() >= end)
            return false;
    }
    return false;
}

static inline void tresp_free(tresp *r) {
    free(r->body);
    r->body = NULL;
}

/* Header value of a parsed response (first match), copied into out; false if absent. */
static inline bool tresp_header(const tresp *r, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    const char *p = r->headers;
    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= cap)
                n = cap - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return true;
        }
    }
    return false;
}

/*
 * Reads one response.  head_only: a response to HEAD (no body).  Returns 0,
 * or -1 if nothing complete arrived within timeout_ms (r->status 0 when no
 * bytes at all).  Skips 100 Continue unless keep_100.
 */
static inline int tc_response_ex(tconn *c, tresp *r, int timeout_ms, bool head_only,
                                 bool keep_100) {
    memset(r, 0, sizeof *r);
    uint64_t end = sh_now_ms() + (uint64_t)timeout_ms;
again:;
    char *hend;
    while (!(hend = strstr(c->buf, "\r\n\r\n"))) {
        int left = (int)(end - sh_now_ms());
        if (left <= 0)
            return -1;
        ssize_t n = tc_fill(c, left);
        if (n <= 0) {
            r->closed = n == 0;
            return -1;
        }
    }
    size_t hlen = (size_t)(hend - c->buf) + 4;
    if (sscanf(c->buf, "HTTP/1.%*d %d", &r->status) != 1)
        return -1;
    if (r->status == 100 && !keep_100) {
        memmove(c->buf, c->buf + hlen, c->len - hlen);
        c->len -= hlen;
        c->buf[c->len] = '\0';
        goto again;
    }
    size_t hc = hlen < sizeof r->headers ? hlen : sizeof r->headers - 1;
    memcpy(r->headers, c->buf, hc);
    r->headers[hc] = '\0';
    char v[64];
    size_t consumed = hlen;
    if (head_only || r->status == 204 || r->status == 304 || r->status == 100) {
        r->body = calloc(1, 1);
    } else if (tresp_header(r, "Content-Length", v, sizeof v)) {
        size_t cl = (size_t)strtoull(v, NULL, 10);
        while (c->len < hlen + cl) {
            int left = (int)(end - sh_now_ms());
            if (left <= 0 || tc_fill(c, left) <= 0)
                return -1;
        }
        r->body = malloc(cl + 1);
        memcpy(r->body, c->buf + hlen, cl);
        r->body[cl] = '\0';
        r->body_len = cl;
        consumed = hlen + cl;
    } else if (tresp_header(r, "Transfer-Encoding", v, sizeof v)) {
        /* chunked: decode until the last chunk */
        size_t pos = hlen, cap = 1024, blen = 0;
        char *body = malloc(cap);
        while (1) {
            char *crlf;
            while (!(crlf = strstr(c->buf + pos, "\r\n"))) {
                int left = (int)(end - sh_now_ms());
                if (left <= 0 || tc_fill(c, left) <= 0) {
                    free(body);
                    return -1;
                }
            }
            size_t sz = (size_t)strtoull(c->buf + pos, NULL, 16);
            size_t data = (size_t)(crlf - c->buf) + 2;
            while (c->len < data + sz + 2) {
                int left = (int)(end - sh_now_ms());
                if (left <= 0 || tc_fill(c, left) <= 0) {
                    free(body);
                    return -1;
                }
            }
            if (blen + sz + 1 > cap) {
                cap = (blen + sz + 1) * 2;
                body = realloc(body, cap);
            }
            memcpy(body + blen, c->buf + data, sz);
            blen += sz;
            pos = data + sz + 2;
            if (sz == 0)
                break;
        }
        body[blen] = '\0';
        r->body = body;
        r->body_len = blen;
        consumed = pos;
    } else {
        /* until close */
        while (1) {
            int left = (int)(end - sh_now_ms());
            if (left <= 0)
                return -1;
            ssize_t n = tc_fill(c, left);
            if (n == 0)
                break;
            if (n < 0)
                return -1;
        }
        r->closed = true;
        size_t bl = c->len - hlen;
        r->body = malloc(bl + 1);
        memcpy(r->body, c->buf + hlen, bl);
        r->body[bl] = '\0';
        r->body_len = bl;
        consumed = c->len;
    }
    memmove(c->buf, c->buf + consumed, c->len - consumed);
    c->len -= consumed;
    c->buf[c->len] = '\0';
    return 0;
}

static inline int tc_response(tconn *c, tresp *r) {
    return tc_response_ex(c, r, 5000, false, false);
}

/* One request on a fresh connection; returns the status (0 if none) and the body in r. */
static inline int http_raw(int port, const char *request, tresp *r) {
    tconn *c = tc_open(port);
    tc_sends(c, request);
    bool head = strncmp(request, "HEAD ", 5) == 0;
    int rc = tc_response_ex(c, r, 5000, head, false);
    tc_close(c);
    return rc == 0 ? r->status : 0;
}

static inline int http_get(int port, const char *path, tresp *r) {
    char req[2048];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    return http_raw(port, req, r);
}

static inline int http_post(int port, const char *path, const char *extra_headers, const char *body,
                            tresp *r) {
    char *req = malloc(strlen(body) + 4096);
    sprintf(req, "POST %s HTTP/1.1\r\nHost: t\r\n%sContent-Length: %zu\r\n\r\n%s", path,
            extra_headers ? extra_headers : "", strlen(body), body);
    int st = http_raw(port, req, r);
    free(req);
    return st;
}

/* Connections the server holds, as /v1/info reports it (the asking connection included). */
static inline int tsrv_connections(int port) {
    tresp r;
    if (http_get(port, "/v1/info", &r) != 200) {
        tresp_free(&r);
        return -1;
    }
    const char *p = strstr(r.body, "\"connections\":");
    int n = p ? atoi(p + 14) : -1;
    tresp_free(&r);
    return n;
}

typedef struct tsrv_conn_wait {
    int port, want;
} tsrv_conn_wait;

static inline bool tsrv_conn_pred(void *ctx) {
    tsrv_conn_wait *w = ctx;
    return tsrv_connections(w->port) == w->want;
}

/* Waits until the server holds exactly `want` connections besides the asking one. */
static inline bool tsrv_wait_connections(int port, int want, int timeout_ms) {
    tsrv_conn_wait w = {port, want + 1};
    return sh_wait_until(timeout_ms, 10, tsrv_conn_pred, &w);
}

#endif
