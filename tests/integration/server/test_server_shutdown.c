/*
 * test_server_shutdown.c: graceful shutdown.  Requests in flight finish (with
 * Connection: close), idle keep-alive connections are closed, SSE handlers
 * are asked to end, new connections are refused, shutdown hooks run once in
 * reverse order after the drain, per-worker slots are initialised and
 * finalised on every worker; a handler that never finishes is cut off at
 * --drain-timeout (told through its abandon callback).
 */
/* ctest-link: strata_server */
#include "integration/server/server_test_util.h"

#include <pthread.h>
#include <stdatomic.h>

static _Atomic int slow_started, slot_inits, slot_finis, hang_abandoned, sse_abandoned;
static int hook_order[8];
static _Atomic int nhooks_run;

/* ---- handlers --------------------------------------------------------------------- */

typedef struct slow_ctx {
    uv_timer_t t;
    strata_http_req *req;
} slow_ctx;

static void slow_closed(uv_handle_t *h) {
    slow_ctx *s = h->data;
    strata_http_respond_jsonf(s->req, 200, "{\"slow\":\"done\"}");
    free(s);
}

static void slow_fire(uv_timer_t *t) { uv_close((uv_handle_t *)t, slow_closed); }

static void h_slow(strata_http_req *req, void *ctx) {
    (void)ctx;
    slow_ctx *s = calloc(1, sizeof *s);
    s->req = req;
    uv_timer_init(strata_http_loop(req), &s->t);
    s->t.data = s;
    uv_timer_start(&s->t, slow_fire, 300, 0);
    atomic_fetch_add(&slow_started, 1);
}

static void hang_abandon(strata_http_req *req, void *ctx) {
    (void)ctx;
    atomic_fetch_add(&hang_abandoned, 1);
    strata_http_respond_jsonf(req, 200, "{}");
}

static void h_hang(strata_http_req *req, void *ctx) {
    (void)ctx;
    strata_http_on_abandon(req, hang_abandon, NULL);
    atomic_fetch_add(&slow_started, 1);
}

static void sse_abandon(strata_http_req *req, void *ctx) {
    (void)ctx;
    atomic_fetch_add(&sse_abandoned, 1);
    strata_http_sse_send(req, "bye", NULL, "server stopping", 15);
    strata_http_stream_end(req);
}

static void h_sse(strata_http_req *req, void *ctx) {
    (void)ctx;
    strata_http_on_abandon(req, sse_abandon, NULL);
    strata_http_sse_begin(req);
    atomic_fetch_add(&slow_started, 1);
}

static int slot_value = 77;

static void h_slot(strata_http_req *req, void *ctx) {
    int slot = *(int *)ctx;
    int *v = strata_http_worker_slot(req, slot);
    strata_http_respond_jsonf(req, 200, "{\"slot\":%d}", v ? *v : -1);
}

static int slot_init(uv_loop_t *loop, void *ctx, void **wdata) {
    assert_non_null(loop);
    atomic_fetch_add(&slot_inits, 1);
    *wdata = ctx;
    return STRATA_OK;
}

static void slot_fini(uv_loop_t *loop, void *ctx, void *wdata) {
    (void)loop;
    assert_ptr_equal(ctx, wdata);
    atomic_fetch_add(&slot_finis, 1);
}

static void hook(void *ctx) {
    int n = atomic_fetch_add(&nhooks_run, 1);
    if (n < 8)
        hook_order[n] = (int)(intptr_t)ctx;
}

static int slot_index;

static void setup_routes(strata_server *s, void *ctx) {
    (void)ctx;
    assert_int_equal(strata_server_route(s, "GET", "/slow", h_slow, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/hang", h_hang, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/sse", h_sse, NULL), STRATA_OK);
    slot_index = strata_server_add_worker_slot(s, slot_init, slot_fini, &slot_value);
    assert_true(slot_index >= 0);
    assert_int_equal(strata_server_route(s, "GET", "/slot", h_slot, &slot_index), STRATA_OK);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(strata_server_add_shutdown_hook(s, hook, (void *)(intptr_t)i), STRATA_OK);
}

static void *stop_thread(void *arg) {
    strata_server_stop(arg);
    return NULL;
}

static bool started_n(void *ctx) { return atomic_load(&slow_started) >= *(int *)ctx; }

static void reset_counters(void) {
    atomic_store(&slow_started, 0);
    atomic_store(&slot_inits, 0);
    atomic_store(&slot_finis, 0);
    atomic_store(&hang_abandoned, 0);
    atomic_store(&sse_abandoned, 0);
    atomic_store(&nhooks_run, 0);
    memset(hook_order, 0, sizeof hook_order);
}

static bool refused(int port) {
    int fd = tcp_connect_port(port);
    if (fd < 0)
        return true;
    close(fd);
    return false;
}

static void test_graceful(void **state) {
    (void)state;
    reset_counters();
    tsrv T;
    static const char *const flags[] = {"--drain-timeout", "5s", NULL};
    tsrv_start(&T, flags, setup_routes, NULL);
    assert_int_equal(atomic_load(&slot_inits), 2); /* one per worker */

    tresp r;
    assert_int_equal(http_get(T.port, "/slot", &r), 200);
    assert_string_equal(r.body, "{\"slot\":77}");
    tresp_free(&r);

    /* an idle keep-alive connection */
    tconn *idle = tc_open(T.port);
    tc_sends(idle, "GET /slot HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(tc_response(idle, &r), 0);
    tresp_free(&r);
    /* a request in flight, and an SSE stream */
    tconn *busy = tc_open(T.port);
    tc_sends(busy, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    tconn *sse = tc_open(T.port);
    tc_sends(sse, "GET /sse HTTP/1.1\r\nHost: t\r\n\r\n");
    int two = 2;
    assert_true(sh_wait_until(3000, 5, started_n, &two));

    pthread_t th;
    uint64_t t0 = sh_now_ms();
    strata_server *srv = T.s;
    assert_int_equal(pthread_create(&th, NULL, stop_thread, srv), 0);

    /* the request in flight completes, marked Connection: close */
    assert_int_equal(tc_response(busy, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"slow\":\"done\"}");
    char v[32];
    assert_true(tresp_header(&r, "Connection", v, sizeof v));
    assert_string_equal(v, "close");
    tresp_free(&r);
    assert_true(tc_wait_closed(busy, 3000));
    /* the idle one is closed without a response */
    assert_true(tc_wait_closed(idle, 3000));
    /* the SSE stream got its goodbye and ended */
    uint64_t end = sh_now_ms() + 3000;
    while (!strstr(sse->buf, "0\r\n\r\n") && sh_now_ms() < end)
        if (tc_fill(sse, 100) == 0)
            break;
    assert_non_null(strstr(sse->buf, "event: bye\ndata: server stopping\n\n"));
    assert_non_null(strstr(sse->buf, "0\r\n\r\n"));
    pthread_join(th, NULL);
    assert_true(sh_now_ms() - t0 < 5000); /* did not need the drain timeout */
    assert_int_equal(atomic_load(&sse_abandoned), 1);
    /* hooks ran once each, in reverse order; slots finalised on each worker */
    assert_int_equal(atomic_load(&nhooks_run), 3);
    assert_int_equal(hook_order[0], 3);
    assert_int_equal(hook_order[1], 2);
    assert_int_equal(hook_order[2], 1);
    assert_int_equal(atomic_load(&slot_finis), 2);
    /* nobody listens any more */
    assert_true(refused(T.port));
    tc_close(idle);
    tc_close(busy);
    tc_close(sse);
    strata_server_stop(srv); /* idempotent */
    tsrv_stop(&T);
}

static void test_drain_timeout(void **state) {
    (void)state;
    reset_counters();
    tsrv T;
    static const char *const flags[] = {"--drain-timeout", "200ms", NULL};
    tsrv_start(&T, flags, setup_routes, NULL);
    tconn *c = tc_open(T.port);
    tc_sends(c, "GET /hang HTTP/1.1\r\nHost: t\r\n\r\n");
    int one = 1;
    assert_true(sh_wait_until(3000, 5, started_n, &one));
    uint64_t t0 = sh_now_ms();
    strata_server_stop(T.s);
    uint64_t took = sh_now_ms() - t0;
    assert_true(took >= 150); /* waited for the drain... */
    assert_true(took < 3000); /* ...but not much longer */
    assert_int_equal(atomic_load(&hang_abandoned), 1);
    assert_int_equal(atomic_load(&nhooks_run), 3);
    assert_true(tc_wait_closed(c, 3000));
    tc_close(c);
    tsrv_stop(&T);
}

static void test_stop_without_start(void **state) {
    (void)state;
    strata_buf err = STRATA_BUF_INIT;
    char *argv[] = {"--listen", "127.0.0.1:0", "--workers", "1"};
    assert_int_equal(strata_options_load(&strata_server_opt_group, 1, 4, argv, NULL, NULL, &err),
                     STRATA_OK);
    strata_server *s = NULL;
    assert_int_equal(strata_server_create(&s, NULL, &err), STRATA_OK);
    /* a generated admin token: 48 hex characters */
    assert_int_equal(strlen(strata_server_admin_token(s)), 48);
    strata_server_stop(s);
    strata_server_destroy(&s);
    assert_null(s);
    strata_server_destroy(&s); /* NULL is a no-op */
    /* a bad listen address is refused at create, naming the option */
    char *bad[] = {"--listen", "nohost:99999"};
    assert_int_equal(strata_options_load(&strata_server_opt_group, 1, 2, bad, NULL, NULL, &err),
                     STRATA_OK);
    strata_buf_reset(&err);
    assert_int_equal(strata_server_create(&s, NULL, &err), STRATA_ERANGE);
    assert_non_null(strstr(err.data, "--listen"));
    /* a port in use is reported by start */
    char *argv2[] = {"--listen", "127.0.0.1:0", "--workers", "1"};
    assert_int_equal(strata_options_load(&strata_server_opt_group, 1, 4, argv2, NULL, NULL, &err),
                     STRATA_OK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 1), 0); /* no SO_REUSEPORT: the server cannot share it */
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    char lst[64];
    snprintf(lst, sizeof lst, "127.0.0.1:%d", ntohs(a.sin_port));
    char *argv3[] = {"--listen", lst, "--workers", "1"};
    assert_int_equal(strata_options_load(&strata_server_opt_group, 1, 4, argv3, NULL, NULL, &err),
                     STRATA_OK);
    assert_int_equal(strata_server_create(&s, NULL, &err), STRATA_OK);
    strata_buf_reset(&err);
    assert_int_equal(strata_server_start(s, &err), STRATA_ESYS);
    assert_non_null(strstr(err.data, "cannot listen"));
    strata_server_destroy(&s);
    close(fd);
    strata_buf_free(&err);
    strata_options_free(&strata_server_opt_group, 1);
}

int main(void) {
    sh_init(100);
    strata_log_set_level(STRATA_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_graceful),
        cmocka_unit_test(test_drain_timeout),
        cmocka_unit_test(test_stop_without_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
