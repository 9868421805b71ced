/*
 * test_protect.c: circuit breaker transitions under a moved clock, bulkhead,
 * token bucket, GCRA against a real redis-server, TTL jitter spread, XFetch
 * behaviour, Bloom filter false-positive rate and Redis bitmap round trip.
 */
/* ctest-labels: tsan redis */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "harness/harness.h"
#include "strata/embedded.h"
#include "strata/protect.h"
#include "strata/status.h"

extern const strata_embedded strata_lib_lua_table[];

#define MS 1000000ull

static void breaker_opens_on_failure_rate_and_recovers(void **state) {
    (void)state;
    strata_metrics *m = strata_metrics_create();
    strata_breaker_config c;
    strata_breaker_config_default(&c);
    c.min_calls = 10;
    c.failure_rate_pct = 50;
    c.open_ms = 1000;
    c.half_open_probes = 2;
    strata_breaker *b = strata_breaker_create("db", &c, m);
    assert_non_null(b);
    uint64_t t = 1000 * MS;
    /* 9 failures: below min_calls, stays closed */
    for (int i = 0; i < 9; i++) {
        assert_int_equal(strata_breaker_acquire(b, t), STRATA_OK);
        strata_breaker_record(b, t, 1 * MS, true);
    }
    assert_int_equal(strata_breaker_get_state(b, t), STRATA_BREAKER_CLOSED);
    assert_int_equal(strata_breaker_acquire(b, t), STRATA_OK);
    strata_breaker_record(b, t, 1 * MS, true); /* 10 calls, 100 % failed */
    assert_int_equal(strata_breaker_get_state(b, t), STRATA_BREAKER_OPEN);
    assert_int_equal(strata_breaker_acquire(b, t + 999 * MS), STRATA_EBREAKER);
    /* after open_ms: half-open, two probes allowed, a third refused */
    t += 1000 * MS;
    assert_int_equal(strata_breaker_acquire(b, t), STRATA_OK);
    assert_int_equal(strata_breaker_get_state(b, t), STRATA_BREAKER_HALF_OPEN);
    assert_int_equal(strata_breaker_acquire(b, t), STRATA_OK);
    assert_int_equal(strata_breaker_acquire(b, t), STRATA_EBREAKER);
    /* one failed probe re-opens */
    strata_breaker_record(b, t, 1 * MS, false);
    strata_breaker_record(b, t, 1 * MS, true);
    assert_int_equal(strata_breaker_get_state(b, t), STRATA_BREAKER_OPEN);
    t += 1000 * MS;
    assert_int_equal(strata_breaker_acquire(b, t), STRATA_OK);
    assert_int_equal(strata_breaker_acquire(b, t), STRATA_OK);
    strata_breaker_record(b, t, 1 * MS, false);
    strata_breaker_record(b, t, 1 * MS, false);
    assert_int_equal(strata_breaker_get_state(b, t), STRATA_BREAKER_CLOSED);
    /* the window was reset on closing: 9 more failures do not re-open */
    for (int i = 0; i < 9; i++) {
        assert_int_equal(strata_breaker_acquire(b, t), STRATA_OK);
        strata_breaker_record(b, t, 1 * MS, true);
    }
    assert_int_equal(strata_breaker_get_state(b, t), STRATA_BREAKER_CLOSED);
    strata_buf out = STRATA_BUF_INIT;
    strata_metrics_render_prometheus(m, &out);
    assert_non_null(strstr(out.data, "strata_breaker_opened_total{breaker=\"db\"} 2"));
    assert_non_null(
        strstr(out.data, "strata_breaker_calls_total{breaker=\"db\",outcome=\"rejected\"} 2"));
    strata_buf_free(&out);
    strata_breaker_destroy(&b);
    strata_metrics_destroy(&m);
}

static void breaker_window_slides_and_counts_slow_calls(void **state) {
    (void)state;
    strata_breaker_config c;
    strata_breaker_config_default(&c);
    c.min_calls = 10;
    c.window_ms = 10000;
    c.slow_call_ms = 100;
    c.slow_rate_pct = 80;
    strata_breaker *b = strata_breaker_create("x", &c, NULL);
    uint64_t t = 50000 * MS;
    /* 5 failures, then 11 s later 5 more: the first five left the window */
    for (int i = 0; i < 5; i++)
        strata_breaker_record(b, t, MS, true);
    t += 11000 * MS;
    for (int i = 0; i < 5; i++)
        strata_breaker_record(b, t, MS, true);
    assert_int_equal(strata_breaker_get_state(b, t), STRATA_BREAKER_CLOSED);
    for (int i = 0; i < 5; i++)
        strata_breaker_record(b, t, MS, false);
    assert_int_equal(strata_breaker_get_state(b, t), STRATA_BREAKER_OPEN); /* 5/10 = 50 % */
    strata_breaker_destroy(&b);
    /* slow calls alone open it */
    b = strata_breaker_create("y", &c, NULL);
    for (int i = 0; i < 8; i++)
        strata_breaker_record(b, t, 150 * MS, false);
    for (int i = 0; i < 2; i++)
        strata_breaker_record(b, t, 1 * MS, false);
    assert_int_equal(strata_breaker_get_state(b, t), STRATA_BREAKER_OPEN);
    strata_breaker_destroy(&b);
    c.window_ms = 0;
    assert_null(strata_breaker_create("z", &c, NULL));
}

static void *hammer_breaker(void *p) {
    strata_breaker *b = p;
    for (int i = 0; i < 20000; i++) {
        uint64_t t = (uint64_t)i * MS;
        if (strata_breaker_acquire(b, t) == STRATA_OK)
            strata_breaker_record(b, t, MS, i % 3 == 0);
        (void)strata_breaker_get_state(b, t);
    }
    return NULL;
}

static void breaker_and_bulkhead_under_threads(void **state) {
    (void)state;
    strata_breaker *b = strata_breaker_create("t", NULL, NULL);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, hammer_breaker, b);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    strata_breaker_destroy(&b);

    strata_bulkhead *h = strata_bulkhead_create(2);
    assert_int_equal(strata_bulkhead_try_acquire(h), STRATA_OK);
    assert_int_equal(strata_bulkhead_try_acquire(h), STRATA_OK);
    assert_int_equal(strata_bulkhead_try_acquire(h), STRATA_EBACKPRESSURE);
    assert_int_equal(strata_bulkhead_in_use(h), 2);
    strata_bulkhead_release(h);
    assert_int_equal(strata_bulkhead_try_acquire(h), STRATA_OK);
    strata_bulkhead_release(h);
    strata_bulkhead_release(h);
    assert_int_equal(strata_bulkhead_in_use(h), 0);
    strata_bulkhead_destroy(&h);
    assert_null(strata_bulkhead_create(0));
}

static void token_bucket_rate_and_retry_after(void **state) {
    (void)state;
    uint64_t t = 0;
    strata_token_bucket *tb = strata_token_bucket_create(10, 5, t); /* 10/s, burst 5 */
    uint64_t ra;
    for (int i = 0; i < 5; i++)
        assert_int_equal(strata_token_bucket_take(tb, 1, t, &ra), STRATA_OK);
    assert_int_equal(strata_token_bucket_take(tb, 1, t, &ra), STRATA_ELIMITED);
    assert_int_equal(ra, 100 * MS); /* one token every 100 ms */
    t += 100 * MS;
    assert_int_equal(strata_token_bucket_take(tb, 1, t, &ra), STRATA_OK);
    assert_int_equal(strata_token_bucket_take(tb, 1, t, &ra), STRATA_ELIMITED);
    t += 10000 * MS; /* refills only up to the burst */
    for (int i = 0; i < 5; i++)
        assert_int_equal(strata_token_bucket_take(tb, 1, t, NULL), STRATA_OK);
    assert_int_equal(strata_token_bucket_take(tb, 1, t, NULL), STRATA_ELIMITED);
    assert_int_equal(strata_token_bucket_take(tb, 6, t, NULL), STRATA_EINVAL);
    strata_token_bucket_destroy(&tb);
    assert_null(strata_token_bucket_create(0, 5, 0));
    assert_null(strata_token_bucket_create(NAN, 5, 0));
}

static int gcra_call(redisContext *c, const char *key, char args[3][24], strata_gcra_result *r) {
    const strata_embedded *s = strata_embedded_find(strata_lib_lua_table, STRATA_GCRA_SCRIPT);
    assert_non_null(s);
    redisReply *rep =
        redisCommand(c, "EVAL %s 1 %s %s %s %s", s->data, key, args[0], args[1], args[2]);
    assert_non_null(rep);
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 4)
        fail_msg("unexpected GCRA reply type %d: %s", rep->type, rep->str ? rep->str : "");
    long long v[4];
    for (int i = 0; i < 4; i++)
        v[i] = rep->element[i]->integer;
    freeReplyObject(rep);
    return strata_gcra_parse(v, 4, r);
}

static void gcra_script_in_real_redis(void **state) {
    (void)state;
    sh_redis *r;
    assert_int_equal(sh_redis_start(&r, NULL), STRATA_OK);
    redisContext *c = redisConnect("127.0.0.1", sh_redis_port(r));
    assert_true(c && !c->err);
    char args[3][24];
    /* 5 per hour, burst 3: a burst of 3 passes, the 4th is refused for ~12 min */
    assert_int_equal(strata_gcra_args(5, 3600 * 1000, 3, 1, args), STRATA_OK);
    strata_gcra_result res;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(gcra_call(c, "rl:{u1}", args, &res), STRATA_OK);
        assert_true(res.allowed);
        assert_int_equal(res.remaining, 2 - i);
    }
    assert_int_equal(gcra_call(c, "rl:{u1}", args, &res), STRATA_OK);
    assert_false(res.allowed);
    assert_int_equal(res.remaining, 0);
    /* retry after ~720 s (the emission interval), minus the few ms the calls took */
    assert_true(res.retry_after_us > 700LL * 1000000 && res.retry_after_us <= 720LL * 1000000);
    /* another user is independent; the key carries an expiry */
    assert_int_equal(gcra_call(c, "rl:{u2}", args, &res), STRATA_OK);
    assert_true(res.allowed);
    redisReply *ttl = redisCommand(c, "PTTL rl:{u1}");
    assert_true(ttl->integer > 0 && ttl->integer <= 3 * 720 * 1000);
    freeReplyObject(ttl);
    assert_int_equal(strata_gcra_args(0, 1000, 1, 1, args), STRATA_EINVAL);
    assert_int_equal(strata_gcra_args(10, 1000, 1, 2, args), STRATA_EINVAL);
    long long bad[4] = {2, 0, 0, 0};
    assert_int_equal(strata_gcra_parse(bad, 4, &res), STRATA_EPROTO);
    redisFree(c);
    sh_redis_stop(&r);
}

static void jitter_spreads_within_bounds(void **state) {
    (void)state;
    uint64_t lo = UINT64_MAX, hi = 0;
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        uint64_t v = strata_ttl_jitter(1000, 10, strata_rand64());
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        sum += (double)v;
    }
    assert_true(lo >= 900 && hi <= 1100);
    assert_true(lo <= 905 && hi >= 1095); /* the whole range is used */
    assert_true(fabs(sum / 100000 - 1000) < 5);
    assert_int_equal(strata_ttl_jitter(1000, 0, 12345), 1000);
    assert_int_equal(strata_ttl_jitter(0, 10, 12345), 1);
    assert_true(strata_ttl_jitter(UINT64_MAX, 100, UINT64_MAX) >= 1);
}

static void xfetch_refreshes_more_often_near_expiry(void **state) {
    (void)state;
    const uint64_t expiry = 1000 * MS, delta = 10 * MS;
    int far = 0, near = 0;
    for (int i = 0; i < 100000; i++) {
        far += strata_xfetch_should_refresh(expiry - 100 * MS, expiry, delta, 1.0, strata_rand64());
        near += strata_xfetch_should_refresh(expiry - 1 * MS, expiry, delta, 1.0, strata_rand64());
    }
    /* P(refresh) = exp(-remaining/delta): ~e^-10 far from expiry, ~e^-0.1 = 0.905 near it */
    assert_true(far < 50);
    assert_true(near > 88000 && near < 93000);
    assert_true(strata_xfetch_should_refresh(expiry, expiry, delta, 1.0, 0));
}

static void bloom_fp_rate_and_redis_bitmap(void **state) {
    (void)state;
    strata_bloom *b = strata_bloom_create(10000, 0.01);
    assert_non_null(b);
    assert_true(strata_bloom_hashes(b) >= 6 && strata_bloom_hashes(b) <= 8);
    char key[32];
    for (int i = 0; i < 10000; i++) {
        int n = snprintf(key, sizeof key, "sku:%d", i);
        strata_bloom_add(b, key, (size_t)n);
    }
    for (int i = 0; i < 10000; i++) {
        int n = snprintf(key, sizeof key, "sku:%d", i);
        assert_true(strata_bloom_maybe_contains(b, key, (size_t)n)); /* no false negatives */
    }
    int fp = 0;
    for (int i = 0; i < 100000; i++) {
        int n = snprintf(key, sizeof key, "absent:%d", i);
        fp += strata_bloom_maybe_contains(b, key, (size_t)n);
    }
    assert_true(fp < 1500); /* 1 % target, 1.5 % allowed */

    /* SETBIT the positions into a real Redis, GET the bitmap, load it: same answers */
    sh_redis *r;
    assert_int_equal(sh_redis_start(&r, NULL), STRATA_OK);
    redisContext *c = redisConnect("127.0.0.1", sh_redis_port(r));
    strata_bloom *small = strata_bloom_create(100, 0.01);
    uint64_t pos[16];
    for (int i = 0; i < 100; i += 2) {
        int n = snprintf(key, sizeof key, "k%d", i);
        uint32_t k = strata_bloom_positions(small, key, (size_t)n, pos);
        for (uint32_t j = 0; j < k; j++)
            freeReplyObject(redisCommand(c, "SETBIT bloom %llu 1", (unsigned long long)pos[j]));
    }
    redisReply *bm = redisCommand(c, "GET bloom");
    assert_int_equal(bm->type, REDIS_REPLY_STRING);
    strata_bloom *copy = strata_bloom_create(100, 0.01);
    assert_int_equal(strata_bloom_load_redis_bitmap(copy, bm->str, bm->len), STRATA_OK);
    for (int i = 0; i < 100; i += 2) {
        int n = snprintf(key, sizeof key, "k%d", i);
        assert_true(strata_bloom_maybe_contains(copy, key, (size_t)n));
    }
    char toolong[4096] = {0};
    assert_int_equal(strata_bloom_load_redis_bitmap(copy, toolong, sizeof toolong), STRATA_ERANGE);
    freeReplyObject(bm);
    redisFree(c);
    sh_redis_stop(&r);
    strata_bloom_destroy(&small);
    strata_bloom_destroy(&copy);
    strata_bloom_destroy(&b);
    assert_null(strata_bloom_create(0, 0.01));
    assert_null(strata_bloom_create(10, 1.5));
}

int main(void) {
    sh_init(100);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(breaker_opens_on_failure_rate_and_recovers),
        cmocka_unit_test(breaker_window_slides_and_counts_slow_calls),
        cmocka_unit_test(breaker_and_bulkhead_under_threads),
        cmocka_unit_test(token_bucket_rate_and_retry_after),
        cmocka_unit_test(gcra_script_in_real_redis),
        cmocka_unit_test(jitter_spreads_within_bounds),
        cmocka_unit_test(xfetch_refreshes_more_often_near_expiry),
        cmocka_unit_test(bloom_fp_rate_and_redis_bitmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
