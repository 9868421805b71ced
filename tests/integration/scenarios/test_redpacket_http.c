/*
 * test_redpacket_http.c: red packets over HTTP, end to end on a real
 * redis-server: creation and validation, grabs (same amount on repeat, 410
 * when empty), exact sums under concurrent grabbers on two servers, and
 * expiry moved by the debug clock: the remainder is refunded exactly once,
 * by a grab, a read or the sweeper.
 */
/* ctest-labels: redis scenarios */
/* ctest-timeout: 180 */
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

#define expect sh_http_expect

static long long field(const char *json, const char *name) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":", name);
    const char *p = strstr(json, needle);
    if (!p)
        fail_msg("no field %s in %s", name, json);
    return strtoll(p + strlen(needle), NULL, 10);
}

static void create(uint16_t port, const char *body, char id[17]) {
    char *b = expect(port, "POST", "/v1/redpackets", body, true, 201);
    const char *p = strstr(b, "\"id\":\"");
    assert_non_null(p);
    snprintf(id, 17, "%.16s", p + 6);
    free(b);
}

static void validation_and_grabs(void **state) {
    (void)state;
    const char *args[] = {"--redis", sh_redis_url(redis), NULL};
    sh_serve *s;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    uint16_t p = sh_serve_port(s);
    free(expect(p, "POST", "/v1/redpackets", "{\"total_cents\":100,\"count\":2}", false, 401));
    free(expect(p, "POST", "/v1/redpackets", "{\"total_cents\":1,\"count\":2}", true, 400));
    free(expect(p, "POST", "/v1/redpackets", "{\"total_cents\":100,\"count\":0}", true, 400));
    free(expect(p, "POST", "/v1/redpackets", "{\"total_cents\":100,\"count\":20000}", true, 400));
    free(expect(p, "POST", "/v1/redpackets", "{\"total_cents\":100.5,\"count\":2}", true, 400));
    free(expect(p, "POST", "/v1/redpackets", "{\"total_cents\":100,\"count\":2,\"expires_in\":0}",
                true, 400));
    char id[17];
    create(p, "{\"total_cents\":500,\"count\":3,\"expires_in\":600}", id);
    char path[96];
    snprintf(path, sizeof path, "/v1/redpackets/%s/grab", id);
    long long sum = 0, first = 0;
    for (int u = 0; u < 3; u++) {
        char body[64];
        snprintf(body, sizeof body, "{\"user_id\":\"g%d\"}", u);
        char *b = expect(p, "POST", path, body, false, 200);
        long long amt = field(b, "amount_cents");
        assert_true(amt >= 1);
        sum += amt;
        if (u == 0)
            first = amt;
        free(b);
    }
    assert_int_equal(sum, 500);
    char *b = expect(p, "POST", path, "{\"user_id\":\"g0\"}", false, 200);
    assert_int_equal(field(b, "amount_cents"), first); /* a repeat: the same amount */
    assert_non_null(strstr(b, "\"repeat\":true"));
    free(b);
    b = expect(p, "POST", path, "{\"user_id\":\"late\"}", false, 410);
    assert_non_null(strstr(b, "\"code\":\"gone\""));
    free(b);
    free(expect(p, "POST", path, "{\"user_id\":\"\"}", false, 400));
    free(expect(p, "POST", "/v1/redpackets/0123456789abcdef/grab", "{\"user_id\":\"x\"}", false,
                404));
    free(expect(p, "POST", "/v1/redpackets/not-an-id/grab", "{\"user_id\":\"x\"}", false, 404));
    snprintf(path, sizeof path, "/v1/redpackets/%s", id);
    b = expect(p, "GET", path, NULL, false, 200);
    assert_int_equal(field(b, "grabbed_cents"), 500);
    assert_int_equal(field(b, "remaining_count"), 0);
    free(b);
    assert_int_equal(sh_serve_stop(&s), 0);
}

typedef struct {
    uint16_t port[2];
    const char *id;
    int t;
    long long sum;
    int ok, gone, other;
} grabber_arg;

static void *grabbers(void *arg) {
    grabber_arg *a = arg;
    char path[96];
    snprintf(path, sizeof path, "/v1/redpackets/%s/grab", a->id);
    for (int u = 0; u < 30; u++) {
        char body[64];
        snprintf(body, sizeof body, "{\"user_id\":\"t%d-%d\"}", a->t, u);
        sh_http_resp r;
        int st = sh_http(a->port[u % 2], "POST", path, body, false, 15000, &r);
        if (st == 200) {
            a->ok++;
            a->sum += strtoll(strstr(r.body, "\"amount_cents\":") + 15, NULL, 10);
        } else if (st == 410) {
            a->gone++;
        } else {
            a->other++;
        }
        sh_http_free(&r);
    }
    return NULL;
}

static void concurrent_grabs_sum_exactly(void **state) {
    (void)state;
    const char *args[] = {"--redis", sh_redis_url(redis), NULL};
    sh_serve *s1, *s2;
    assert_int_equal(sh_serve_start(&s1, args), STRATA_OK);
    assert_int_equal(sh_serve_start(&s2, args), STRATA_OK);
    char id[17];
    create(sh_serve_port(s1), "{\"total_cents\":10000,\"count\":50}", id);
    pthread_t t[4];
    grabber_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (grabber_arg){{sh_serve_port(s1), sh_serve_port(s2)}, id, i, 0, 0, 0, 0};
        pthread_create(&t[i], NULL, grabbers, &a[i]);
    }
    long long sum = 0;
    int ok = 0, gone = 0, other = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        sum += a[i].sum;
        ok += a[i].ok;
        gone += a[i].gone;
        other += a[i].other;
    }
    assert_int_equal(other, 0);
    assert_int_equal(ok, 50);
    assert_int_equal(gone, 70);
    assert_int_equal(sum, 10000);
    assert_int_equal(sh_serve_stop(&s1), 0);
    assert_int_equal(sh_serve_stop(&s2), 0);
}

static bool packet_expired(void *ctx) {
    char *st = sh_redis_cmd(sh_redis_port(redis), "HGET rp:{%s}:meta status", (const char *)ctx);
    bool done = st && strcmp(st, "expired") == 0;
    free(st);
    return done;
}

static void expiry_refunds_exactly_once(void **state) {
    (void)state;
    const char *args[] = {"--redis", sh_redis_url(redis), "--debug-clock", NULL};
    sh_serve *s;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    uint16_t p = sh_serve_port(s);
    char id[17], id2[17];
    create(p, "{\"total_cents\":1000,\"count\":10,\"expires_in\":60}", id);
    create(p, "{\"total_cents\":700,\"count\":7,\"expires_in\":60}", id2);
    char path[96];
    snprintf(path, sizeof path, "/v1/redpackets/%s/grab", id);
    long long grabbed = 0;
    for (int u = 0; u < 4; u++) {
        char body[64];
        snprintf(body, sizeof body, "{\"user_id\":\"e%d\"}", u);
        char *b = expect(p, "POST", path, body, false, 200);
        grabbed += field(b, "amount_cents");
        free(b);
    }
    /* 61 s later on the server's clock: the next grab finds it expired and refunds */
    free(expect(p, "POST", "/v1/admin/clock", "{\"advance_ms\":61000}", true, 200));
    char *b = expect(p, "POST", path, "{\"user_id\":\"after\"}", false, 410);
    free(b);
    snprintf(path, sizeof path, "/v1/redpackets/%s", id);
    b = expect(p, "GET", path, NULL, false, 200);
    assert_non_null(strstr(b, "\"status\":\"expired\""));
    assert_int_equal(field(b, "refunded_cents") + grabbed, 1000);
    assert_int_equal(field(b, "grabbed_cents"), grabbed);
    free(b);
    /* the refund event exists exactly once in the packet's stream */
    char *v = sh_redis_cmd(sh_redis_port(redis), "XLEN rp:{%s}:events", id);
    assert_string_equal(v, "5"); /* 4 grabs + 1 refund */
    free(v);
    b = expect(p, "GET", path, NULL, false, 200); /* reading again changes nothing */
    free(b);
    v = sh_redis_cmd(sh_redis_port(redis), "XLEN rp:{%s}:events", id);
    assert_string_equal(v, "5");
    free(v);
    /* the untouched packet is closed by the sweeper (runs every second) */
    assert_true(sh_wait_until(10000, 50, packet_expired, id2));
    v = sh_redis_cmd(sh_redis_port(redis), "HGET rp:{%s}:meta refunded_cents", id2);
    assert_string_equal(v, "700");
    free(v);
    assert_int_equal(sh_serve_stop(&s), 0);
}

static void grab_rate_limit(void **state) {
    (void)state;
    const char *args[] = {"--redis", sh_redis_url(redis), "--user-rate=1", "--user-burst=1", NULL};
    sh_serve *s;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    uint16_t p = sh_serve_port(s);
    char id[17], path[96];
    create(p, "{\"total_cents\":100,\"count\":10}", id);
    snprintf(path, sizeof path, "/v1/redpackets/%s/grab", id);
    free(expect(p, "POST", path, "{\"user_id\":\"rl\"}", false, 200));
    sh_http_resp r;
    assert_int_equal(sh_http(p, "POST", path, "{\"user_id\":\"rl\"}", false, 10000, &r), 429);
    assert_non_null(strstr(r.body, "rate_limited"));
    assert_true(atoi(sh_http_header(&r, "Retry-After")) >= 1);
    sh_http_free(&r);
    free(expect(p, "POST", path, "{\"user_id\":\"other\"}", false, 200)); /* per user */
    assert_int_equal(sh_serve_stop(&s), 0);
}

int main(void) {
    sh_init(170);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(validation_and_grabs),
        cmocka_unit_test(concurrent_grabs_sum_exactly),
        cmocka_unit_test(expiry_refunds_exactly_once),
        cmocka_unit_test(grab_rate_limit),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
