/*
 * test_redis_late_reply.c: the late-reply race, end to end (issue 5).
 *
 * A GET reply that arrives after its key's invalidation must not be stored in
 * the L1.  The pieces are real: the L1 (strata_l1_get_or_load: a load is
 * dropped when an invalidation of its key happened since it began), a data
 * client whose loader runs GET on one loop (a worker loop), and a tracking
 * client on another loop (the control loop) whose on_invalidate calls
 * strata_l1_invalidate, against a real redis-server.
 *
 * The window is made deterministic, with no sleeps:
 *   1. the server is SIGSTOPped; the load starts and its GET is written to
 *      the socket (the server cannot answer);
 *   2. SIGCONT; we poll INFO commandstats until the server has executed the
 *      GET: the old value is now on its way, but the worker loop does not run,
 *      so the reply stays unread in the socket;
 *   3. another client writes the key; the control loop runs until the
 *      tracking invalidation has reached the L1;
 *   4. only now the worker loop runs: the (stale) GET reply completes the
 *      load.  The waiter gets the value, the L1 must not keep it.
 * A control run of the same steps without the write proves the loaded value
 * is stored otherwise (so the assertion above can fail).
 */
/* ctest-labels: redis */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness/harness.h"
#include "strata/l1.h"
#include "strata/redis.h"

typedef struct world {
    sh_redis *srv;
    uv_loop_t wloop, cloop; /* worker (data) and control (tracking) loops */
    strata_redis *data, *trk;
    strata_redis_sync *writer;
    strata_l1 *l1;
    int invalidations; /* of "t:k" reaching the L1 */
    int flushes;
    /* the load in flight */
    bool done;
    int done_status;
    char got[64];
} world;

static void on_inval(void *ud, const char *key, size_t len) {
    world *w = ud;
    strata_l1_invalidate(w->l1, key, len);
    if (len == 3 && memcmp(key, "t:k", 3) == 0)
        w->invalidations++;
}

static void on_flush(void *ud) {
    world *w = ud;
    strata_l1_clear(w->l1);
    w->flushes++;
}

/* The loader: GET on the worker loop's client; the reply completes the load. */
static void get_done(void *ud, int status, const strata_redis_reply *reply) {
    strata_l1_load *ld = ud;
    if (status == STRATA_OK && reply && reply->type == STRATA_REPLY_STRING)
        strata_l1_load_complete(ld, STRATA_OK, reply->str, reply->len, NULL);
    else if (status == STRATA_OK)
        strata_l1_load_complete(ld, STRATA_ENOTFOUND, NULL, 0, NULL);
    else
        strata_l1_load_complete(ld, status, NULL, 0, NULL);
}

static void loader(void *ctx, strata_l1_load *ld, const void *key, size_t klen) {
    world *w = ctx;
    const char *argv[] = {"GET", (const char *)key};
    size_t lens[] = {3, klen};
    int rc = strata_redis_command_argv(w->data, NULL, get_done, ld, 2, argv, lens);
    if (rc < 0)
        strata_l1_load_complete(ld, rc, NULL, 0, NULL);
}

static void load_done(void *ud, int status, strata_l1_outcome outcome, strata_l1_entry *e) {
    world *w = ud;
    (void)outcome;
    w->done = true;
    w->done_status = status;
    if (e) {
        size_t n;
        const void *v = strata_l1_entry_value(e, &n);
        if (n >= sizeof(w->got))
            n = sizeof(w->got) - 1;
        memcpy(w->got, v, n);
        w->got[n] = '\0';
        strata_l1_release(&e);
    }
}

static bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *ctx, int timeout_ms) {
    uint64_t end = sh_now_ms() + (uint64_t)timeout_ms;
    while (!pred(ctx)) {
        if (sh_now_ms() >= end)
            return false;
        uv_run(loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
    return true;
}

static bool trk_armed(void *ctx) { return strata_redis_tracking_armed(((world *)ctx)->trk); }
static bool load_finished(void *ctx) { return ((world *)ctx)->done; }

typedef struct iwait {
    world *w;
    int want;
} iwait;
static bool inval_reached(void *ctx) {
    iwait *i = ctx;
    return i->w->invalidations >= i->want;
}

/* GET calls the server has executed (INFO commandstats); -1 if unreadable. */
static long get_calls(uint16_t port) {
    char *info = sh_redis_cmd(port, "INFO commandstats");
    if (!info)
        return -1;
    long n = 0;
    const char *p = strstr(info, "cmdstat_get:calls=");
    if (p)
        n = strtol(p + strlen("cmdstat_get:calls="), NULL, 10);
    free(info);
    return n;
}

typedef struct gwait {
    uint16_t port;
    long want;
} gwait;
static bool gets_reached(void *ctx) {
    gwait *g = ctx;
    return get_calls(g->port) >= g->want;
}

static void setup_world(world *w) {
    memset(w, 0, sizeof(*w));
    assert_int_equal(sh_redis_start(&w->srv, NULL), STRATA_OK);
    uv_loop_init(&w->wloop);
    uv_loop_init(&w->cloop);
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.command_timeout_ms = 10000; /* the stopped server must not time the GET out */
    assert_int_equal(strata_redis_create(&w->data, &w->wloop, sh_redis_url(w->srv), &o, NULL),
                     STRATA_OK);
    assert_int_equal(strata_redis_create(&w->trk, &w->cloop, sh_redis_url(w->srv), &o, NULL),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_create(&w->writer, sh_redis_url(w->srv), &o, NULL),
                     STRATA_OK);
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.capacity = 1000;
    assert_int_equal(strata_l1_create(&cfg, &w->l1), STRATA_OK);
    const char *prefixes[] = {"t:"};
    strata_redis_tracking_cbs cbs = {.on_invalidate = on_inval, .on_flush = on_flush, .ud = w};
    assert_int_equal(strata_redis_tracking_start(w->trk, 1, prefixes, &cbs), STRATA_OK);
    assert_true(run_until(&w->cloop, trk_armed, w, 5000));
    /* the data client's connection is up before the race starts */
    strata_redis_reply *rep = NULL;
    assert_int_equal(strata_redis_sync_command(w->writer, &rep, "SET t:k old"), STRATA_OK);
    strata_redis_reply_free(rep);
    strata_redis_sync_op op = {0};
    const char *argv[] = {"PING"};
    assert_int_equal(
        strata_redis_command_argv(w->data, NULL, strata_redis_sync_cb, &op, 1, argv, NULL),
        STRATA_OK);
    while (!op.done)
        uv_run(&w->wloop, UV_RUN_ONCE);
    assert_int_equal(op.status, STRATA_OK);
    strata_redis_reply_free(op.reply);
    /* the SET above reaches the tracking side too: let it land before we start */
    iwait iw = {w, 1};
    assert_true(run_until(&w->cloop, inval_reached, &iw, 5000));
}

static void teardown_world(world *w) {
    strata_redis_destroy(&w->data);
    strata_redis_destroy(&w->trk);
    uv_run(&w->wloop, UV_RUN_DEFAULT);
    uv_run(&w->cloop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->wloop), 0);
    assert_int_equal(uv_loop_close(&w->cloop), 0);
    strata_redis_sync_destroy(&w->writer);
    strata_l1_destroy(&w->l1);
    sh_redis_stop(&w->srv);
}

/* Steps 1-2: a load whose GET the server has executed but whose reply is unread. */
static void start_load_and_park_reply(world *w) {
    uint16_t port = sh_redis_port(w->srv);
    long before = get_calls(port);
    assert_true(before >= 0);
    assert_int_equal(sh_redis_pause(w->srv), STRATA_OK);
    strata_l1_entry *e = NULL;
    w->done = false;
    int rc = strata_l1_get_or_load(w->l1, "t:k", 3, loader, w, load_done, w, &e);
    assert_int_equal(rc, STRATA_L1_PENDING);
    /* write the GET out (the stopped server cannot answer) */
    for (int i = 0; i < 5; i++)
        uv_run(&w->wloop, UV_RUN_NOWAIT);
    assert_false(w->done);
    assert_int_equal(sh_redis_resume(w->srv), STRATA_OK);
    gwait g = {port, before + 1};
    assert_true(sh_wait_until(5000, 2, gets_reached, &g));
    assert_false(w->done); /* the worker loop has not run: the reply waits in the socket */
}

static void test_control_load_is_stored(void **state) {
    (void)state;
    world w;
    setup_world(&w);
    start_load_and_park_reply(&w);
    assert_true(run_until(&w.wloop, load_finished, &w, 5000));
    assert_int_equal(w.done_status, STRATA_OK);
    assert_string_equal(w.got, "old");
    char buf[16];
    size_t n = 0;
    assert_int_equal(strata_l1_get_copy(w.l1, "t:k", 3, buf, sizeof(buf), &n), STRATA_L1_HIT);
    assert_int_equal(n, 3);
    assert_memory_equal(buf, "old", 3);
    strata_l1_stats st;
    strata_l1_stats_get(w.l1, &st);
    assert_int_equal(st.loads_dropped, 0);
    teardown_world(&w);
}

static void test_late_reply_is_dropped(void **state) {
    (void)state;
    world w;
    setup_world(&w);
    start_load_and_park_reply(&w);
    /* step 3: the key changes; its invalidation reaches the L1 first */
    int inv0 = w.invalidations;
    strata_redis_reply *rep = NULL;
    assert_int_equal(strata_redis_sync_command(w.writer, &rep, "SET t:k new"), STRATA_OK);
    strata_redis_reply_free(rep);
    iwait iw = {&w, inv0 + 1};
    assert_true(run_until(&w.cloop, inval_reached, &iw, 5000));
    assert_false(w.done);
    /* step 4: the stale reply arrives */
    assert_true(run_until(&w.wloop, load_finished, &w, 5000));
    assert_int_equal(w.done_status, STRATA_OK);
    assert_string_equal(w.got, "old"); /* the waiter gets what it asked for ... */
    char buf[16];
    size_t n = 0;
    /* ... but the L1 did not keep it */
    assert_int_equal(strata_l1_get_copy(w.l1, "t:k", 3, buf, sizeof(buf), &n), STRATA_ENOTFOUND);
    strata_l1_stats st;
    strata_l1_stats_get(w.l1, &st);
    assert_int_equal(st.loads_dropped, 1);
    /* the next read loads the new value */
    w.done = false;
    strata_l1_entry *e = NULL;
    int rc = strata_l1_get_or_load(w.l1, "t:k", 3, loader, &w, load_done, &w, &e);
    assert_int_equal(rc, STRATA_L1_PENDING);
    assert_true(run_until(&w.wloop, load_finished, &w, 5000));
    assert_string_equal(w.got, "new");
    assert_int_equal(strata_l1_get_copy(w.l1, "t:k", 3, buf, sizeof(buf), &n), STRATA_L1_HIT);
    assert_memory_equal(buf, "new", 3);
    teardown_world(&w);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_control_load_is_stored),
        cmocka_unit_test(test_late_reply_is_dropped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
