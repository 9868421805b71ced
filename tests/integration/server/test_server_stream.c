/*
 * test_server_stream.c: chunked responses and Server-Sent Events, and
 * clients that go away: mid-request, mid-handler and mid-SSE (the abandon
 * callback fires promptly, nothing leaks: ASan checks at exit), plus
 * per-connection backpressure (stream_write reports the high-water mark).
 */
/* ctest-link: strata_server */
#include "integration/server/server_test_util.h"

#include <stdatomic.h>

static tsrv T;
static _Atomic int sse_abandoned, hang_abandoned, flood_backpressure, flood_abandoned, sse_started,
    hang_started;

/* ---- /chunks: a plain chunked stream ---------------------------------------------- */

static void h_chunks(strata_http_req *req, void *ctx) {
    (void)ctx;
    assert_int_equal(strata_http_stream_begin(req, 200, "text/plain"), STRATA_OK);
    assert_int_equal(strata_http_stream_write(req, "a", 1), STRATA_OK);
    assert_int_equal(strata_http_stream_write(req, "", 0), STRATA_OK); /* no-op, not the end */
    assert_int_equal(strata_http_stream_write(req, "bb", 2), STRATA_OK);
    assert_int_equal(strata_http_stream_write(req, "ccc", 3), STRATA_OK);
    strata_http_stream_end(req);
}

/* ---- /sse: ticks every 20 ms until the client goes ----------------------------------- */

typedef struct sse_state {
    uv_timer_t t;
    strata_http_req *req;
    int n;
} sse_state;

static void sse_closed(uv_handle_t *h) {
    sse_state *s = h->data;
    strata_http_stream_end(s->req);
    free(s);
}

static void sse_tick(uv_timer_t *t) {
    sse_state *s = t->data;
    char id[16], data[64];
    snprintf(id, sizeof id, "%d", ++s->n);
    int n = snprintf(data, sizeof data, "tick %d\nsecond line", s->n);
    int rc = strata_http_sse_send(s->req, "tick", id, data, (size_t)n);
    assert_true(rc == STRATA_OK || rc == STRATA_ECLOSED || rc == STRATA_EBACKPRESSURE);
}

static void sse_abandon(strata_http_req *req, void *ctx) {
    (void)req;
    sse_state *s = ctx;
    atomic_fetch_add(&sse_abandoned, 1);
    uv_timer_stop(&s->t);
    uv_close((uv_handle_t *)&s->t, sse_closed);
}

static void h_sse(strata_http_req *req, void *ctx) {
    (void)ctx;
    sse_state *s = calloc(1, sizeof *s);
    s->req = req;
    uv_timer_init(strata_http_loop(req), &s->t);
    s->t.data = s;
    strata_http_on_abandon(req, sse_abandon, s);
    assert_int_equal(strata_http_sse_begin(req), STRATA_OK);
    assert_int_equal(strata_http_sse_send(req, "hello", "0", "hi", 2), STRATA_OK);
    assert_int_equal(strata_http_sse_send(req, "bad\nevent", NULL, "x", 1), STRATA_EINVAL);
    uv_timer_start(&s->t, sse_tick, 20, 20);
    atomic_fetch_add(&sse_started, 1);
}

/* ---- /hang: never answers until the client goes --------------------------------------- */

static void hang_abandon(strata_http_req *req, void *ctx) {
    (void)ctx;
    atomic_fetch_add(&hang_abandoned, 1);
    assert_true(strata_http_is_abandoned(req));
    strata_http_respond_jsonf(req, 200, "{\"never\":\"seen\"}");
}

static void h_hang(strata_http_req *req, void *ctx) {
    (void)ctx;
    strata_http_on_abandon(req, hang_abandon, NULL);
    atomic_fetch_add(&hang_started, 1);
}

static bool hang_began(void *ctx) {
    (void)ctx;
    return atomic_load(&hang_started) >= 1;
}

/* ---- /flood: writes until backpressure ------------------------------------------------ */

static void flood_abandon(strata_http_req *req, void *ctx) {
    (void)ctx;
    atomic_fetch_add(&flood_abandoned, 1);
    strata_http_stream_end(req);
}

static void h_flood(strata_http_req *req, void *ctx) {
    (void)ctx;
    static char chunk[64 * 1024];
    memset(chunk, 'f', sizeof chunk);
    strata_http_on_abandon(req, flood_abandon, NULL);
    assert_int_equal(strata_http_stream_begin(req, 200, "application/octet-stream"), STRATA_OK);
    /* The client reads nothing: socket buffers fill, then our queue passes the mark. */
    for (int i = 0; i < 2048; i++) {
        int rc = strata_http_stream_write(req, chunk, sizeof chunk);
        if (rc == STRATA_EBACKPRESSURE) {
            atomic_store(&flood_backpressure, 1);
            return; /* keep the stream open until the client goes */
        }
        assert_int_equal(rc, STRATA_OK);
    }
}

static void setup_routes(strata_server *s, void *ctx) {
    (void)ctx;
    assert_int_equal(strata_server_route(s, "GET", "/chunks", h_chunks, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/sse", h_sse, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/hang", h_hang, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/flood", h_flood, NULL), STRATA_OK);
}

static int group_setup(void **state) {
    (void)state;
    static const char *const flags[] = {
        "--sse-heartbeat", "50ms", "--output-high-water", "64k", "--request-timeout", "10s", NULL};
    tsrv_start(&T, flags, setup_routes, NULL);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    tsrv_stop(&T);
    return 0;
}

static void test_chunked(void **state) {
    (void)state;
    tresp r;
    assert_int_equal(http_get(T.port, "/chunks", &r), 200);
    char v[64];
    assert_true(tresp_header(&r, "Transfer-Encoding", v, sizeof v));
    assert_string_equal(v, "chunked");
    assert_string_equal(r.body, "abbccc");
    tresp_free(&r);
    /* keep-alive continues after a chunked response */
    tconn *c = tc_open(T.port);
    tc_sends(c, "GET /chunks HTTP/1.1\r\nHost: t\r\n\r\nGET /chunks HTTP/1.1\r\nHost: t\r\n\r\n");
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tc_response(c, &r), 0);
        assert_string_equal(r.body, "abbccc");
        tresp_free(&r);
    }
    tc_close(c);
    /* HTTP/1.0: no chunked framing, the body ends with the connection */
    assert_int_equal(http_raw(T.port, "GET /chunks HTTP/1.0\r\n\r\n", &r), 200);
    assert_false(tresp_header(&r, "Transfer-Encoding", v, sizeof v));
    assert_string_equal(r.body, "abbccc");
    assert_true(r.closed);
    tresp_free(&r);
}

static bool sse_gone(void *ctx) {
    int *want = ctx;
    return atomic_load(&sse_abandoned) >= *want;
}

static void test_sse_and_disconnect(void **state) {
    (void)state;
    tconn *c = tc_open(T.port);
    tc_sends(c, "GET /sse HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n");
    /* read the head and events until two ticks and a heartbeat have arrived */
    uint64_t end = sh_now_ms() + 5000;
    while (sh_now_ms() < end) {
        if (strstr(c->buf, "data: tick 2\n") && strstr(c->buf, "\r\n:\n\n\r\n"))
            break;
        tc_fill(c, 100);
    }
    assert_non_null(strstr(c->buf, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(c->buf, "Content-Type: text/event-stream\r\n"));
    assert_non_null(strstr(c->buf, "Cache-Control: no-store\r\n"));
    assert_non_null(strstr(c->buf, "Transfer-Encoding: chunked\r\n"));
    assert_non_null(strstr(c->buf, "event: hello\nid: 0\ndata: hi\n\n"));
    assert_non_null(strstr(c->buf, "event: tick\nid: 1\ndata: tick 1\ndata: second line\n\n"));
    assert_non_null(strstr(c->buf, "\r\n:\n\n\r\n")); /* heartbeat chunk */
    /* the client vanishes: the handler hears about it promptly */
    tc_close(c);
    int want = 1;
    assert_true(sh_wait_until(3000, 5, sse_gone, &want));
    assert_true(tsrv_wait_connections(T.port, 0, 3000));
}

static bool hang_gone(void *ctx) {
    int *want = ctx;
    return atomic_load(&hang_abandoned) >= *want;
}

static void test_disconnect_mid_request(void **state) {
    (void)state;
    /* half a request line, half the headers, half a body: then gone */
    const char *partial[] = {
        "GET /hang HT", "GET /hang HTTP/1.1\r\nHost: t\r\nX-Y",
        "POST /hang HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc",
        "POST /hang HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"};
    for (size_t i = 0; i < sizeof partial / sizeof *partial; i++) {
        tconn *c = tc_open(T.port);
        tc_sends(c, partial[i]);
        tc_close(c);
    }
    assert_true(tsrv_wait_connections(T.port, 0, 3000));
    assert_int_equal(atomic_load(&hang_abandoned), 0);
    /* a whole request whose handler waits: the client leaves (RST), the handler is told */
    tconn *c = tc_open(T.port);
    tc_sends(c, "GET /hang HTTP/1.1\r\nHost: t\r\n\r\n");
    struct linger lg = {1, 0};
    assert_true(sh_wait_until(3000, 5, hang_began, NULL));
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    tc_close(c);
    int want = 1;
    assert_true(sh_wait_until(3000, 5, hang_gone, &want));
    /* a half-close (FIN) after a whole request still gets its answer... from /chunks */
    c = tc_open(T.port);
    tc_sends(c, "GET /chunks HTTP/1.1\r\nHost: t\r\n\r\n");
    shutdown(c->fd, SHUT_WR);
    tresp r;
    assert_int_equal(tc_response(c, &r), 0);
    assert_string_equal(r.body, "abbccc");
    tresp_free(&r);
    tc_close(c);
    assert_true(tsrv_wait_connections(T.port, 0, 3000));
}

static bool flood_pred(void *ctx) {
    (void)ctx;
    return atomic_load(&flood_backpressure) == 1;
}

static bool flood_gone(void *ctx) {
    (void)ctx;
    return atomic_load(&flood_abandoned) == 1;
}

static void test_backpressure(void **state) {
    (void)state;
    tconn *c = tc_open(T.port);
    int small = 4096;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    tc_sends(c, "GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(sh_wait_until(5000, 5, flood_pred, NULL));
    tc_close(c);
    assert_true(sh_wait_until(5000, 5, flood_gone, NULL));
    assert_true(tsrv_wait_connections(T.port, 0, 3000));
}

int main(void) {
    sh_init(100);
    strata_log_set_level(STRATA_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_sse_and_disconnect),
        cmocka_unit_test(test_disconnect_mid_request),
        cmocka_unit_test(test_backpressure),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
