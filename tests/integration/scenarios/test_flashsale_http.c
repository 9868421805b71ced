/*
 * test_flashsale_http.c: the flash sale over HTTP, end to end: `strata serve`
 * processes on a real redis-server; every status code of the API, the
 * invariants under concurrent clients against two servers sharing Redis
 * (no oversell, one order per user, buyers learn their order after sell-out),
 * and the segment-lock baseline keeping the same invariants.
 */
/* ctest-labels: redis scenarios */
/* ctest-timeout: 240 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness/harness.h"
#include "strata/status.h"

static sh_redis *redis;

static int setup(void **state) {
    (void)state;
    return sh_redis_start(&redis, NULL);
}

static int teardown(void **state) {
    (void)state;
    sh_redis_stop(&redis);
    return 0;
}

static sh_serve *serve(const char *extra1, const char *extra2) {
    const char *args[] = {"--redis", sh_redis_url(redis), extra1, extra2, NULL};
    sh_serve *s = NULL;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    return s;
}

#define expect sh_http_expect

#define expect_code sh_http_expect_code

static void every_status_code(void **state) {
    (void)state;
    sh_serve *s = serve("--user-rate=1000", "--user-burst=1000");
    uint16_t p = sh_serve_port(s);
    /* create: auth, validation, success, duplicate */
    expect_code(p, "POST", "/v1/flashsales", "{\"sku\":\"a1\",\"stock\":2}", false, 401,
                "unauthorized");
    expect_code(p, "POST", "/v1/flashsales", "{\"sku\":\"a1\",\"stock\":-1}", true, 400,
                "invalid_field");
    expect_code(p, "POST", "/v1/flashsales", "{\"sku\":\"a1\",\"stock\":2.5}", true, 400,
                "invalid_field");
    expect_code(p, "POST", "/v1/flashsales", "{\"sku\":\"a b\",\"stock\":2}", true, 400,
                "invalid_field");
    expect_code(p, "POST", "/v1/flashsales", "{\"sku\":\"a1\",\"stock\":2,\"per_user_limit\":2}",
                true, 400, "invalid_field");
    expect_code(p, "POST", "/v1/flashsales",
                "{\"sku\":\"a1\",\"stock\":2,\"starts_at\":\"tomorrow\"}", true, 400,
                "invalid_field");
    expect_code(p, "POST", "/v1/flashsales", "{\"sku\":\"a1\",\"stock\":2,\"bogus\":1}", true, 400,
                "invalid_field");
    expect_code(p, "POST", "/v1/flashsales", "{\"sku\":\"a1\",\"stock\":2", true, 400,
                "invalid_json");
    free(expect(p, "POST", "/v1/flashsales", "{\"sku\":\"a1\",\"stock\":2}", true, 201));
    expect_code(p, "POST", "/v1/flashsales", "{\"sku\":\"a1\",\"stock\":2}", true, 409, "exists");

    /* orders */
    char *b = expect(p, "POST", "/v1/flashsales/a1/orders", "{\"user_id\":\"u1\"}", false, 201);
    assert_non_null(strstr(b, "\"order_id\":\"a1-1\""));
    free(b);
    b = expect(p, "POST", "/v1/flashsales/a1/orders", "{\"user_id\":\"u1\"}", false, 409);
    assert_non_null(strstr(b, "already_purchased"));
    assert_non_null(strstr(b, "\"order_id\":\"a1-1\""));
    free(b);
    free(expect(p, "POST", "/v1/flashsales/a1/orders", "{\"user_id\":\"u2\"}", false, 201));
    expect_code(p, "POST", "/v1/flashsales/a1/orders", "{\"user_id\":\"u3\"}", false, 409,
                "sold_out");
    expect_code(p, "POST", "/v1/flashsales/a1/orders", "{\"user_id\":\"u4\"}", false, 409,
                "sold_out");
    /* after sell-out a buyer still learns their order */
    b = expect(p, "POST", "/v1/flashsales/a1/orders", "{\"user_id\":\"u2\"}", false, 409);
    assert_non_null(strstr(b, "\"order_id\":\"a1-2\""));
    free(b);
    expect_code(p, "POST", "/v1/flashsales/nosuch/orders", "{\"user_id\":\"u1\"}", false, 404,
                "not_found");
    expect_code(p, "POST", "/v1/flashsales/a1/orders", "{\"user_id\":12}", false, 400,
                "invalid_field");
    expect_code(p, "POST", "/v1/flashsales/a1/orders", "{\"user_id\":\"\"}", false, 400,
                "invalid_field");
    expect_code(p, "POST", "/v1/flashsales/a1/orders", "{\"user_id\":\"x\",\"user_id\":\"y\"}",
                false, 400, "invalid_json");
    expect_code(p, "POST", "/v1/flashsales/a1/orders", "[1,2]", false, 400, "invalid_field");
    expect_code(p, "GET", "/v1/flashsales/a1/orders", NULL, false, 405, "method_not_allowed");

    /* windows: not started, ended */
    free(expect(p, "POST", "/v1/flashsales",
                "{\"sku\":\"later\",\"stock\":5,\"starts_at\":\"2099-01-01T00:00:00Z\"}", true,
                201));
    expect_code(p, "POST", "/v1/flashsales/later/orders", "{\"user_id\":\"u1\"}", false, 403,
                "not_started");
    free(expect(p, "POST", "/v1/flashsales",
                "{\"sku\":\"past\",\"stock\":5,\"starts_at\":946684800,\"ends_at\":\"2000-01-02T00:"
                "00:00+01:00\"}",
                true, 201));
    expect_code(p, "POST", "/v1/flashsales/past/orders", "{\"user_id\":\"u1\"}", false, 403,
                "ended");

    /* reads */
    b = expect(p, "GET", "/v1/flashsales/a1", NULL, false, 200);
    assert_non_null(strstr(b, "\"stock_left\":0"));
    assert_non_null(strstr(b, "\"sold\":2"));
    assert_non_null(strstr(b, "\"status\":\"sold_out\""));
    free(b);
    expect_code(p, "GET", "/v1/flashsales/nosuch", NULL, false, 404, "not_found");
    b = expect(p, "GET", "/v1/orders/a1-1", NULL, false, 200);
    assert_non_null(strstr(b, "\"user_id\":\"u1\""));
    free(b);
    expect_code(p, "GET", "/v1/orders/a1-99", NULL, false, 404, "not_found");
    expect_code(p, "GET", "/v1/orders/garbage", NULL, false, 404, "not_found");
    assert_int_equal(sh_serve_stop(&s), 0);
}

static void rate_limit_answers_429_with_retry_after(void **state) {
    (void)state;
    sh_serve *s = serve("--user-rate=1", "--user-burst=2");
    uint16_t p = sh_serve_port(s);
    free(expect(p, "POST", "/v1/flashsales", "{\"sku\":\"rl\",\"stock\":100}", true, 201));
    /* the same user: two attempts pass the limiter (one buys, one is a repeat), the third is limited */
    free(expect(p, "POST", "/v1/flashsales/rl/orders", "{\"user_id\":\"hammer\"}", false, 201));
    free(expect(p, "POST", "/v1/flashsales/rl/orders", "{\"user_id\":\"hammer\"}", false, 409));
    sh_http_resp r;
    assert_int_equal(sh_http(p, "POST", "/v1/flashsales/rl/orders", "{\"user_id\":\"hammer\"}",
                             false, 10000, &r),
                     429);
    assert_non_null(strstr(r.body, "rate_limited"));
    assert_true(atoi(sh_http_header(&r, "Retry-After")) >= 1);
    sh_http_free(&r);
    /* another user is not affected */
    free(expect(p, "POST", "/v1/flashsales/rl/orders", "{\"user_id\":\"other\"}", false, 201));
    assert_int_equal(sh_serve_stop(&s), 0);
}

typedef struct {
    uint16_t port[2];
    const char *sku;
    int id, users, created, sold_out, already, other;
    char orders[64][32];
} buyer_arg;

static void *buyers(void *p) {
    buyer_arg *a = p;
    for (int u = 0; u < a->users; u++) {
        for (int attempt = 0; attempt < 2; attempt++) { /* every user tries twice */
            char path[96], body[96];
            snprintf(path, sizeof path, "/v1/flashsales/%s/orders", a->sku);
            snprintf(body, sizeof body, "{\"user_id\":\"t%d-u%d\"}", a->id, u);
            sh_http_resp r;
            int st = sh_http(a->port[(u + attempt) % 2], "POST", path, body, false, 15000, &r);
            if (st == 201) {
                const char *o = strstr(r.body, "\"order_id\":\"");
                if (o && a->created < 64)
                    sscanf(o + 12, "%31[^\"]", a->orders[a->created]);
                a->created++;
            } else if (st == 409 && strstr(r.body, "sold_out")) {
                a->sold_out++;
            } else if (st == 409 && strstr(r.body, "already_purchased")) {
                a->already++;
            } else {
                a->other++;
            }
            sh_http_free(&r);
        }
    }
    return NULL;
}

static void concurrent_buyers_two_servers(const char *strategy, const char *sku) {
    sh_serve *s1 = serve(strategy, "--user-burst=100");
    sh_serve *s2 = serve(strategy, "--user-burst=100");
    char body[96];
    snprintf(body, sizeof body, "{\"sku\":\"%s\",\"stock\":30}", sku);
    free(expect(sh_serve_port(s1), "POST", "/v1/flashsales", body, true, 201));
    enum { T = 6, U = 25 };
    pthread_t t[T];
    buyer_arg a[T];
    for (int i = 0; i < T; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].port[0] = sh_serve_port(s1);
        a[i].port[1] = sh_serve_port(s2);
        a[i].sku = sku;
        a[i].id = i;
        a[i].users = U;
        pthread_create(&t[i], NULL, buyers, &a[i]);
    }
    int created = 0, sold_out = 0, already = 0, other = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(t[i], NULL);
        created += a[i].created;
        sold_out += a[i].sold_out;
        already += a[i].already;
        other += a[i].other;
    }
    /* 150 users, stock 30: exactly 30 orders; each buyer's second try is "already" */
    assert_int_equal(other, 0);
    assert_int_equal(created, 30);
    assert_int_equal(already, 30);
    assert_int_equal(sold_out, 2 * T * U - 60);
    char *v = sh_redis_cmd(sh_redis_port(redis), "HLEN fs:{%s}:buyers", sku);
    assert_string_equal(v, "30");
    free(v);
    v = sh_redis_cmd(sh_redis_port(redis), "GET fs:{%s}:stock", sku);
    assert_string_equal(v, "0");
    free(v);
    v = sh_redis_cmd(sh_redis_port(redis), "XLEN fs:{%s}:events", sku);
    assert_string_equal(v, "30");
    free(v);
    assert_int_equal(sh_serve_stop(&s1), 0);
    assert_int_equal(sh_serve_stop(&s2), 0);
}

static void lua_strategy_invariants(void **state) {
    (void)state;
    concurrent_buyers_two_servers("--flashsale-strategy=lua", "conc-lua");
}

static void segment_lock_strategy_invariants(void **state) {
    (void)state;
    concurrent_buyers_two_servers("--flashsale-strategy=segment-lock", "conc-seg");
}

int main(void) {
    sh_init(230);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_status_code),
        cmocka_unit_test(rate_limit_answers_429_with_retry_after),
        cmocka_unit_test(lua_strategy_invariants),
        cmocka_unit_test(segment_lock_strategy_invariants),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
