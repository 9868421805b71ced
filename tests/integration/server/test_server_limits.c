/*
 * test_server_limits.c: every limit and timeout of the HTTP server, and
 * request smuggling, over real sockets with short timeouts set through the
 * options (no test sleeps long; deadlines are polled).
 *   431 header bytes / header count, 414 URL, 413 body (Content-Length,
 *   chunked, with Expect), 503 at --max-connections, 408 slow headers
 *   (slowloris) and slow body, idle close, 504 handler timeout (the late
 *   response is discarded), Expect: 100-continue and 417, CL+TE and
 *   conflicting lengths refused.
 */
/* ctest-link: strata_server */
#include "integration/server/server_test_util.h"

#include <stdatomic.h>

static tsrv T;
static _Atomic int abandoned_count;
static _Atomic int late_finished;

static void h_fast(strata_http_req *req, void *ctx) {
    (void)ctx;
    strata_http_respond_jsonf(req, 200, "{\"fast\":true}");
}

static void h_echo_body(strata_http_req *req, void *ctx) {
    (void)ctx;
    size_t n;
    const char *b = strata_http_body(req, &n);
    strata_http_respond(req, 200, "text/plain", b, n);
}

typedef struct late {
    uv_timer_t t;
    strata_http_req *req;
} late;

static void late_closed(uv_handle_t *h) {
    late *l = h->data;
    /* the server already answered 504: this response is discarded */
    assert_true(strata_http_is_abandoned(l->req));
    strata_http_respond_jsonf(l->req, 200, "{\"late\":true}");
    atomic_fetch_add(&late_finished, 1);
    free(l);
}

static void late_fire(uv_timer_t *t) { uv_close((uv_handle_t *)t, late_closed); }

static void on_abandon(strata_http_req *req, void *ctx) {
    (void)req;
    (void)ctx;
    atomic_fetch_add(&abandoned_count, 1);
}

static void h_late(strata_http_req *req, void *ctx) {
    (void)ctx;
    late *l = calloc(1, sizeof *l);
    l->req = req;
    strata_http_on_abandon(req, on_abandon, NULL);
    assert_true(strata_http_remaining_ms(req) <= 400);
    uv_timer_init(strata_http_loop(req), &l->t);
    l->t.data = l;
    uv_timer_start(&l->t, late_fire, 900, 0);
}

static void setup_routes(strata_server *s, void *ctx) {
    (void)ctx;
    assert_int_equal(strata_server_route(s, "GET", "/fast", h_fast, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "POST", "/echo-body", h_echo_body, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/late", h_late, NULL), STRATA_OK);
}

static int group_setup(void **state) {
    (void)state;
    static const char *const flags[] = {"--max-header-bytes",
                                        "1024",
                                        "--max-url-bytes",
                                        "256",
                                        "--max-body-bytes",
                                        "1000",
                                        "--max-connections",
                                        "20",
                                        "--header-timeout",
                                        "300ms",
                                        "--idle-timeout",
                                        "600ms",
                                        "--request-timeout",
                                        "400ms",
                                        NULL};
    tsrv_start(&T, flags, setup_routes, NULL);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    tsrv_stop(&T);
    return 0;
}

/* Sends `req` on a fresh connection; expects `status` then the connection closed. */
static void expect_refused(const char *req, size_t len, int status) {
    tconn *c = tc_open(T.port);
    tc_send(c, req, len);
    tresp r;
    int rc = tc_response(c, &r);
    if (rc != 0 || r.status != status)
        fprintf(stderr, "request [%.60s...] -> rc %d status %d\n", req, rc, r.status);
    assert_int_equal(rc, 0);
    assert_int_equal(r.status, status);
    assert_non_null(strstr(r.body, "{\"error\":{\"code\":\""));
    char v[32];
    assert_true(tresp_header(&r, "Connection", v, sizeof v));
    assert_string_equal(v, "close");
    tresp_free(&r);
    assert_true(tc_wait_closed(c, 3000));
    tc_close(c);
}

static void test_header_limits(void **state) {
    (void)state;
    char req[4096];
    /* 431: one big header */
    int n = snprintf(req, sizeof req, "GET /fast HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + n, 'a', 1500);
    n += 1500;
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n\r\n");
    expect_refused(req, (size_t)n, 431);
    /* 431: too many small headers */
    n = snprintf(req, sizeof req, "GET /fast HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 120; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "A%d: b\r\n", i % 10);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    expect_refused(req, (size_t)n, 431);
    /* 414: long URL */
    n = snprintf(req, sizeof req, "GET /");
    memset(req + n, 'u', 400);
    n += 400;
    n += snprintf(req + n, sizeof req - (size_t)n, " HTTP/1.1\r\nHost: t\r\n\r\n");
    expect_refused(req, (size_t)n, 414);
    /* just under the limits still works */
    tresp r;
    n = snprintf(req, sizeof req, "GET /fast HTTP/1.1\r\nHost: t\r\nX-Ok: ");
    memset(req + n, 'a', 600);
    n += 600;
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n\r\n");
    assert_int_equal(http_raw(T.port, req, &r), 200);
    tresp_free(&r);
}

static void test_body_limits(void **state) {
    (void)state;
    /* 413 from Content-Length alone, before any body byte */
    const char *big = "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n";
    expect_refused(big, strlen(big), 413);
    /* 413 with Expect: 100-continue: no 100 is sent */
    tconn *c = tc_open(T.port);
    tc_sends(c, "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                "Expect: 100-continue\r\n\r\n");
    tresp r;
    assert_int_equal(tc_response_ex(c, &r, 5000, false, true), 0);
    assert_int_equal(r.status, 413);
    tresp_free(&r);
    tc_close(c);
    /* 413 for a chunked body that grows past the limit */
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        n += snprintf(req + n, sizeof req - (size_t)n, "190\r\n");
        memset(req + n, 'x', 400);
        n += 400;
        n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    }
    n += snprintf(req + n, sizeof req - (size_t)n, "0\r\n\r\n");
    expect_refused(req, (size_t)n, 413);
    /* exactly the limit is fine */
    char *ok = malloc(2000);
    n = sprintf(ok, "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
    memset(ok + n, 'y', 1000);
    ok[n + 1000] = '\0';
    assert_int_equal(http_raw(T.port, ok, &r), 200);
    assert_int_equal(r.body_len, 1000);
    tresp_free(&r);
    free(ok);
}

static void test_expect_continue(void **state) {
    (void)state;
    tconn *c = tc_open(T.port);
    tc_sends(c, "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                "Expect: 100-continue\r\n\r\n");
    tresp r;
    assert_int_equal(tc_response_ex(c, &r, 5000, false, true), 0);
    assert_int_equal(r.status, 100);
    tresp_free(&r);
    tc_sends(c, "hello");
    assert_int_equal(tc_response(c, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    tresp_free(&r);
    tc_close(c);
    const char *bad = "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                      "Expect: something-else\r\n\r\nhello";
    expect_refused(bad, strlen(bad), 417);
}

static void test_smuggling(void **state) {
    (void)state;
    /* CL + TE: refused, and the smuggled second request is never executed */
    const char *clte =
        "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n";
    tconn *c = tc_open(T.port);
    tc_sends(c, clte);
    tresp r;
    assert_int_equal(tc_response(c, &r), 0);
    assert_int_equal(r.status, 400);
    tresp_free(&r);
    assert_true(tc_wait_closed(c, 3000));
    tc_close(c);
    /* TE + CL in the other order */
    const char *tecl = "POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                       "Content-Length: 3\r\n\r\n0\r\n\r\n";
    expect_refused(tecl, strlen(tecl), 400);
    /* conflicting Content-Length */
    const char *cl2 = "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                      "Content-Length: 30\r\n\r\nabc";
    expect_refused(cl2, strlen(cl2), 400);
    /* repeated identical Content-Length is refused by the parser too (never ambiguous) */
    const char *cl3 = "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                      "Content-Length: 3\r\n\r\nabc";
    expect_refused(cl3, strlen(cl3), 400);
    /* a list of lengths, a signed length */
    const char *cl4 = "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc";
    expect_refused(cl4, strlen(cl4), 400);
    const char *cl5 = "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc";
    expect_refused(cl5, strlen(cl5), 400);
    /* transfer codings other than chunked */
    const char *te1 =
        "POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    expect_refused(te1, strlen(te1), 501);
    const char *te2 = "POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    expect_refused(te2, strlen(te2), 400);
    /* obs-fold / space before colon are refused by the parser */
    const char *sp = "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length : 3\r\n\r\nabc";
    expect_refused(sp, strlen(sp), 400);
    /* the server still works */
    assert_int_equal(http_get(T.port, "/fast", &r), 200);
    tresp_free(&r);
}

static void test_max_connections(void **state) {
    (void)state;
    /* earlier tests' connections are closed asynchronously by the server */
    assert_true(tsrv_wait_connections(T.port, 0, 5000));
    tconn *cs[20];
    for (int i = 0; i < 20; i++) {
        cs[i] = tc_open(T.port);
        tc_sends(cs[i], "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
        tresp r;
        assert_int_equal(tc_response(cs[i], &r), 0);
        assert_int_equal(r.status, 200);
        tresp_free(&r);
    }
    /* the 21st is refused */
    tconn *x = tc_open(T.port);
    tresp r;
    assert_int_equal(tc_response(x, &r), 0);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "too_many_connections"));
    tresp_free(&r);
    assert_true(tc_wait_closed(x, 3000));
    tc_close(x);
    /* closing one makes room (the server notices the close asynchronously: poll) */
    tc_close(cs[0]);
    bool ok = false;
    uint64_t end = sh_now_ms() + 3000;
    while (!ok && sh_now_ms() < end) {
        tconn *y = tc_open(T.port);
        tc_sends(y, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
        if (tc_response(y, &r) == 0) {
            ok = r.status == 200;
            tresp_free(&r);
        }
        tc_close(y);
    }
    assert_true(ok);
    for (int i = 1; i < 20; i++)
        tc_close(cs[i]);
}

static void test_slowloris(void **state) {
    (void)state;
    /* Trickle header bytes every 40 ms for up to 3 s: the absolute 300 ms header
     * deadline must end it long before, whatever the activity. */
    tconn *c = tc_open(T.port);
    tc_sends(c, "GET /fast HTTP/1.1\r\n");
    uint64_t start = sh_now_ms();
    bool got408 = false;
    for (int i = 0; i < 75 && !got408; i++) {
        if (send(c->fd, "X-a: b\r\n", 8, MSG_NOSIGNAL) < 0)
            break;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, 40) > 0) {
            tresp r;
            if (tc_response(c, &r) == 0) {
                got408 = r.status == 408;
                tresp_free(&r);
            }
            break;
        }
    }
    assert_true(got408);
    assert_true(sh_now_ms() - start < 2500);
    assert_true(tc_wait_closed(c, 3000));
    tc_close(c);
}

static void test_slow_body(void **state) {
    (void)state;
    tconn *c = tc_open(T.port);
    tc_sends(c, "POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    tresp r;
    assert_int_equal(tc_response(c, &r), 0);
    assert_int_equal(r.status, 408);
    tresp_free(&r);
    assert_true(tc_wait_closed(c, 3000));
    tc_close(c);
}

static void test_idle_timeout(void **state) {
    (void)state;
    tconn *c = tc_open(T.port);
    tc_sends(c, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
    tresp r;
    assert_int_equal(tc_response(c, &r), 0);
    tresp_free(&r);
    /* idle after a request: closed by the server (600 ms) */
    assert_true(tc_wait_closed(c, 5000));
    tc_close(c);
    /* a connection that never sends anything is closed too */
    c = tc_open(T.port);
    assert_true(tc_wait_closed(c, 5000));
    tc_close(c);
}

static bool late_done(void *ctx) {
    (void)ctx;
    return atomic_load(&late_finished) == 1;
}

static void test_request_timeout_504(void **state) {
    (void)state;
    tconn *c = tc_open(T.port);
    tc_sends(c, "GET /late HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
    tresp r;
    assert_int_equal(tc_response(c, &r), 0);
    assert_int_equal(r.status, 504);
    assert_non_null(strstr(r.body, "\"code\":\"timeout\""));
    tresp_free(&r);
    /* the pipelined request is not served on a connection whose handler is stuck */
    assert_true(tc_wait_closed(c, 3000));
    tc_close(c);
    assert_int_equal(atomic_load(&abandoned_count), 1);
    /* the handler finishes later; its response is dropped without harm */
    assert_true(sh_wait_until(5000, 10, late_done, NULL));
    assert_int_equal(http_get(T.port, "/fast", &r), 200);
    tresp_free(&r);
}

int main(void) {
    sh_init(100);
    strata_log_set_level(STRATA_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_limits),       cmocka_unit_test(test_body_limits),
        cmocka_unit_test(test_expect_continue),     cmocka_unit_test(test_smuggling),
        cmocka_unit_test(test_max_connections),     cmocka_unit_test(test_slowloris),
        cmocka_unit_test(test_slow_body),           cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_request_timeout_504),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
