/*
 * test_redis_tracking.c: tracked L1 invalidation against a real Redis.
 * Two clients share one server: a write by one invalidates the other's
 * "L1" (a flag per key here) within a deadline (latency printed as
 * tracking_invalidation_us=); keys outside the tracked prefixes are not
 * reported; killing the tracking connection (CLIENT KILL) flushes the L1 and
 * re-arms; FLUSHALL flushes; a server restart flushes and re-arms.
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
#include "strata/redis.h"

typedef struct fake_l1 {
    int invalidated_t1, invalidated_other, flushes;
    uint64_t last_inval_ns;
} fake_l1;

static void on_inval(void *ud, const char *key, size_t len) {
    fake_l1 *l1 = ud;
    if (len == 4 && memcmp(key, "t:k1", 4) == 0) {
        l1->invalidated_t1++;
        l1->last_inval_ns = uv_hrtime();
    } else if (!(len >= 2 && memcmp(key, "t:", 2) == 0) &&
               !(len >= 2 && memcmp(key, "u:", 2) == 0)) {
        l1->invalidated_other++;
    }
}

static void on_flush(void *ud) { ((fake_l1 *)ud)->flushes++; }

static void spin_until(uv_loop_t *loop, bool (*pred)(void *), void *ctx, int timeout_ms) {
    uint64_t end = sh_now_ms() + (uint64_t)timeout_ms;
    while (!pred(ctx) && sh_now_ms() < end)
        uv_run(loop, UV_RUN_NOWAIT), uv_sleep(1);
}

static bool armed(void *ctx) { return strata_redis_tracking_armed(ctx); }

typedef struct wctx {
    int *v;
    int want;
} wctx;
static bool reached(void *ctx) {
    wctx *w = ctx;
    return *w->v >= w->want;
}

static void test_tracking(void **state) {
    (void)state;
    sh_redis *srv;
    assert_int_equal(sh_redis_start(&srv, NULL), STRATA_OK);
    uv_loop_t loop;
    uv_loop_init(&loop);
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.connect_timeout_ms = 300;
    strata_redis *reader = NULL, *writer = NULL;
    assert_int_equal(strata_redis_create(&reader, &loop, sh_redis_url(srv), &o, NULL), STRATA_OK);
    assert_int_equal(strata_redis_create(&writer, &loop, sh_redis_url(srv), &o, NULL), STRATA_OK);
    fake_l1 l1 = {0};
    const char *prefixes[] = {"t:", "u:"};
    strata_redis_tracking_cbs cbs = {.on_invalidate = on_inval, .on_flush = on_flush, .ud = &l1};
    assert_int_equal(strata_redis_tracking_start(reader, 2, prefixes, &cbs), STRATA_OK);
    assert_int_equal(strata_redis_tracking_start(reader, 2, prefixes, &cbs), STRATA_EEXIST);
    spin_until(&loop, armed, reader, 5000);
    assert_true(strata_redis_tracking_armed(reader));
    assert_int_equal(l1.flushes, 1); /* armed: start from an empty L1 */

    /* a write by the other client invalidates; measure the delay */
    uint64_t total = 0;
    enum { ROUNDS = 20 };
    for (int i = 0; i < ROUNDS; i++) {
        int before = l1.invalidated_t1;
        uint64_t t0 = uv_hrtime();
        assert_int_equal(strata_redis_command(writer, NULL, NULL, NULL, "SET t:k1 %d", i),
                         STRATA_OK);
        wctx w = {&l1.invalidated_t1, before + 1};
        spin_until(&loop, reached, &w, 2000);
        assert_int_equal(l1.invalidated_t1, before + 1);
        total += l1.last_inval_ns - t0;
    }
    fprintf(stderr, "tracking_invalidation_us=%llu (mean of %d, write issued -> on_invalidate)\n",
            (unsigned long long)(total / ROUNDS / 1000), ROUNDS);
    /* outside the prefixes: nothing */
    assert_int_equal(strata_redis_command(writer, NULL, NULL, NULL, "SET other 1"), STRATA_OK);
    assert_int_equal(strata_redis_command(writer, NULL, NULL, NULL, "SET t:k1 last"), STRATA_OK);
    wctx w = {&l1.invalidated_t1, l1.invalidated_t1 + 1};
    spin_until(&loop, reached, &w, 2000);
    assert_int_equal(l1.invalidated_other, 0);

    /* drop the tracking connection: flush at once, re-arm, flush again */
    int f0 = l1.flushes;
    free(sh_redis_cmd(sh_redis_port(srv), "CLIENT KILL TYPE pubsub"));
    wctx wf = {&l1.flushes, f0 + 2};
    spin_until(&loop, reached, &wf, 5000);
    assert_true(l1.flushes >= f0 + 2);
    spin_until(&loop, armed, reader, 5000);
    assert_true(strata_redis_tracking_armed(reader));
    int before = l1.invalidated_t1;
    assert_int_equal(strata_redis_command(writer, NULL, NULL, NULL, "DEL t:k1"), STRATA_OK);
    wctx w2 = {&l1.invalidated_t1, before + 1};
    spin_until(&loop, reached, &w2, 2000);
    assert_int_equal(l1.invalidated_t1, before + 1);

    /* FLUSHALL: a nil invalidation = flush */
    f0 = l1.flushes;
    assert_int_equal(strata_redis_command(writer, NULL, NULL, NULL, "FLUSHALL"), STRATA_OK);
    wctx w3 = {&l1.flushes, f0 + 1};
    spin_until(&loop, reached, &w3, 2000);
    assert_true(l1.flushes >= f0 + 1);

    /* server restart: flushed, then re-armed by itself */
    f0 = l1.flushes;
    assert_int_equal(sh_redis_kill(srv), STRATA_OK);
    wctx w4 = {&l1.flushes, f0 + 1};
    spin_until(&loop, reached, &w4, 3000);
    assert_true(l1.flushes >= f0 + 1);
    assert_false(strata_redis_tracking_armed(reader));
    assert_int_equal(sh_redis_restart(srv), STRATA_OK);
    spin_until(&loop, armed, reader, 10000);
    assert_true(strata_redis_tracking_armed(reader));
    before = l1.invalidated_t1;
    assert_int_equal(strata_redis_command(writer, NULL, NULL, NULL, "SET t:k1 again"), STRATA_OK);
    wctx w5 = {&l1.invalidated_t1, before + 1};
    spin_until(&loop, reached, &w5, 3000);
    assert_int_equal(l1.invalidated_t1, before + 1);
    strata_redis_stats st;
    strata_redis_get_stats(reader, &st);
    assert_true(st.invalidations >= ROUNDS + 3);

    strata_redis_destroy(&reader);
    strata_redis_destroy(&writer);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    sh_redis_stop(&srv);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tracking),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
