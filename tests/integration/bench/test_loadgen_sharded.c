/*
 * test_loadgen_sharded.c: `strata bench flashsale --shards K` end to end: a
 * `strata serve` (harness redis-server + SQLite) takes the load of the real
 * binary, which creates the sale with "shards":K and verifies the invariants
 * across shards at the end (exit 0, verified=ok) with stock < users and
 * stock == users (the latter forces takes from other shards).  The verifier is
 * proved from the outside too: after a run, a second order for a buyer in
 * another shard, a negative shard stock, or a reservation nobody finishes
 * (the sale hidden from the servers' sweeper) each make a re-run exit 1 with
 * the violation named; the same reservation, once the sweeper may see it, is
 * rolled forward and the re-run verifies ok.  Unsharded sales, hot skus with
 * skew, red packets and the --shards bounds are checked alongside.
 * The same on a Redis Cluster: test_loadgen_sharded_cluster.c.
 */
/* ctest-labels: redis scenarios */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "loadgen_e2e.h"
#include "strata/status.h"

#define K 4

static sh_redis *redis;
static sh_serve *srv;
static char db[1024], url[64];

static int setup(void **state) {
    (void)state;
    if (sh_redis_start(&redis, NULL) != STRATA_OK)
        return -1;
    return lge_serve_start(&srv, sh_redis_url(redis), db, sizeof db, url, sizeof url) == STRATA_OK
               ? 0
               : -1;
}

static int teardown(void **state) {
    (void)state;
    int rc = sh_serve_stop(&srv);
    sh_redis_stop(&redis);
    return rc == 0 ? 0 : -1;
}

/* `strata bench <backend>` against the server, with the verification URLs, plus extra
 * arguments (NULL-terminated); prints the output when the exit code is not `want`. */
static char *bench(int want, const char *backend, ...) {
    const char *args[64] = {backend,
                            "--url",
                            url,
                            "--admin-token",
                            SH_ADMIN_TOKEN,
                            "--redis",
                            sh_redis_url(redis),
                            "--db",
                            db,
                            "--connections",
                            "16",
                            "--threads",
                            "2"};
    size_t n = 13;
    va_list ap;
    va_start(ap, backend);
    for (const char *a = va_arg(ap, const char *); a && n < 63; a = va_arg(ap, const char *))
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    char *out = NULL;
    int rc = lge_runv(&out, args);
    if (rc != want)
        fail_msg("strata bench %s: exit %d, expected %d:\n%s", backend, rc, want, out);
    return out;
}

static long long rint_(const char *fmt, const char *sku, int shard) {
    char *v = sh_redis_cmd(sh_redis_port(redis), fmt, sku, shard);
    assert_non_null(v);
    long long x = strtoll(v, NULL, 10);
    free(v);
    return x;
}

static void sharded_sale_stock_below_users(void **state) {
    (void)state;
    char *out = bench(0, "flashsale", "--sku", "lga", "--shards", "4", "--stock", "60", "--users",
                      "150", "--attempts", "2", NULL);
    assert_string_equal(lge_kv(out, "verified"), "ok");
    assert_int_equal(lge_kv_int(out, "violations"), 0);
    assert_int_equal(lge_kv_int(out, "shards"), K);
    assert_int_equal(lge_kv_int(out, "success"), 60);
    assert_int_equal(lge_kv_int(out, "already"), 60);
    assert_int_equal(lge_kv_int(out, "sold_out"), 300 - 120);
    assert_int_equal(lge_kv_int(out, "errors"), 0);
    free(out);
    /* the sale really is sharded: 15 units per shard, all sold */
    long long sold = 0;
    for (int i = 0; i < K; i++) {
        assert_int_equal(rint_("GET fs:{%s#%d}:stock", "lga", i), 0);
        sold += rint_("HLEN fs:{%s#%d}:orders", "lga", i);
    }
    assert_int_equal(sold, 60);
    char *v = sh_redis_cmd(sh_redis_port(redis), "EXISTS fs:{lga}:stock");
    assert_string_equal(v, "0");
    free(v);
}

static void sharded_sale_stock_equals_users(void **state) {
    (void)state;
    /* users u0..u79 over 4 shards of 20: the homes are uneven, so users whose home ran
     * dry must take from another shard; pick a prefix where at least 3 must */
    char prefix[16] = "";
    int must_take = 0;
    for (int p = 0; p < 100 && must_take < 3; p++) {
        int homes[K] = {0};
        snprintf(prefix, sizeof prefix, "e%d-", p);
        for (int u = 0; u < 80; u++) {
            char user[32];
            snprintf(user, sizeof user, "%s%d", prefix, u);
            homes[lge_home(user, K)]++;
        }
        must_take = 0;
        for (int i = 0; i < K; i++)
            must_take += homes[i] > 20 ? homes[i] - 20 : 0;
    }
    assert_true(must_take >= 3);
    char *out = bench(0, "flashsale", "--sku", "lgb", "--shards", "4", "--stock", "80", "--users",
                      "80", "--attempts", "2", "--user-prefix", prefix, NULL);
    assert_string_equal(lge_kv(out, "verified"), "ok");
    assert_int_equal(lge_kv_int(out, "success"), 80);
    assert_int_equal(lge_kv_int(out, "already"), 80);
    assert_int_equal(lge_kv_int(out, "sold_out"), 0);
    free(out);
    long long taken = 0;
    for (int i = 0; i < K; i++)
        taken += rint_("HLEN fs:{%s#%d}:taken", "lgb", i);
    assert_true(taken >= must_take);
}

/* A re-run against an existing sale: a few repeat requests, then the checks. */
static char *recheck(int want, const char *sku, const char *users, const char *drain) {
    return bench(want, "flashsale", "--no-create", "--sku", sku, "--users", users, "--requests",
                 "4", "--drain-timeout", drain, NULL);
}

static void verifier_catches_two_orders_across_shards(void **state) {
    (void)state;
    free(bench(0, "flashsale", "--sku", "lgd", "--shards", "4", "--stock", "20", "--users", "40",
               NULL));
    /* a buyer of shard 0 also gets a unit of shard 1 */
    char *v = sh_redis_cmd(sh_redis_port(redis), "HVALS fs:{lgd#0}:orders");
    assert_non_null(v);
    char user[64];
    snprintf(user, sizeof user, "%.*s", (int)strcspn(v, "\n"), v);
    free(v);
    assert_true(user[0] == 'u');
    v = sh_redis_cmd(sh_redis_port(redis), "HSET fs:{lgd#1}:orders lgd-1.999 %s", user);
    assert_string_equal(v, "1");
    free(v);
    char *out = recheck(1, "lgd", "40", "1s");
    assert_string_equal(lge_kv(out, "verified"), "violations");
    char want[160];
    snprintf(want, sizeof want, "user %s holds 2 orders across shards", user);
    if (!strstr(out, want) || !strstr(out, "shard 1: 6 orders != share 5 - stock_left 0"))
        fail_msg("violations not reported:\n%s", out);
    free(out);
}

static void verifier_catches_negative_shard_stock(void **state) {
    (void)state;
    free(bench(0, "flashsale", "--sku", "lgn", "--shards", "4", "--stock", "20", "--users", "20",
               NULL));
    char *ok = recheck(0, "lgn", "20", "5s"); /* untouched: a re-run verifies */
    assert_string_equal(lge_kv(ok, "verified"), "ok");
    free(ok);
    /* --no-create with --shards: the sale must have that many */
    ok = bench(0, "flashsale", "--no-create", "--sku", "lgn", "--shards", "4", "--users", "20",
               "--requests", "2", NULL);
    free(ok);
    ok = bench(1, "flashsale", "--no-create", "--sku", "lgn", "--shards", "2", "--users", "20",
               "--requests", "2", NULL);
    assert_non_null(strstr(ok, "violation=sku=lgn: shards=4, expected 2 (--shards)"));
    free(ok);
    char *v = sh_redis_cmd(sh_redis_port(redis), "SET fs:{lgn#2}:stock -1");
    assert_string_equal(v, "OK");
    free(v);
    char *out = recheck(1, "lgn", "20", "5s");
    if (!strstr(out, "violation=sku=lgn: shard 2: stock_left=-1 is negative") ||
        !strstr(out, "violation=sku=lgn: orders in db=20 != stock_total-stock_left=20--1"))
        fail_msg("violations not reported:\n%s", out);
    free(out);
}

static void reservation_left_is_reported_then_recovered(void **state) {
    (void)state;
    free(bench(0, "flashsale", "--sku", "lgr", "--shards", "4", "--stock", "40", "--users", "8",
               NULL));
    /* a crashed server's reservation: home h holds "R:<j>", pending since long ago;
     * the sale is first hidden from the sweeper so nobody finishes it */
    char *v = sh_redis_cmd(sh_redis_port(redis), "SREM fs:sharded lgr#4");
    assert_string_equal(v, "1");
    free(v);
    const char *user = "crashed-1";
    int h = lge_home(user, K), j = (h + 1) % K;
    char resv[8];
    snprintf(resv, sizeof resv, "R:%d", j);
    char key[64];
    snprintf(key, sizeof key, "fs:{lgr#%d}:buyers", h);
    free(sh_redis_cmd(sh_redis_port(redis), "HSET %s %s %s", key, user, resv));
    snprintf(key, sizeof key, "fs:{lgr#%d}:pending", h);
    free(sh_redis_cmd(sh_redis_port(redis), "ZADD %s 1 %s", key, user));
    char *out = recheck(1, "lgr", "8", "1500ms");
    char want[160];
    snprintf(want, sizeof want, "user %s: reservation %s left unconfirmed in shard %d", user, resv,
             h);
    if (!strstr(out, want) || !strstr(out, "1 reservations still pending"))
        fail_msg("violations not reported:\n%s", out);
    free(out);
    /* back on the sweeper's list: it takes from j and confirms (the drain waits for it) */
    v = sh_redis_cmd(sh_redis_port(redis), "SADD fs:sharded lgr#4");
    assert_string_equal(v, "1");
    free(v);
    out = recheck(0, "lgr", "8", "30s");
    assert_string_equal(lge_kv(out, "verified"), "ok");
    free(out);
    snprintf(key, sizeof key, "fs:{lgr#%d}:buyers", h);
    v = sh_redis_cmd(sh_redis_port(redis), "HGET %s %s", key, user);
    char want_id[32];
    snprintf(want_id, sizeof want_id, "lgr-%d.", j);
    if (!v || strncmp(v, want_id, strlen(want_id)) != 0)
        fail_msg("reservation not confirmed with an order of shard %d: %s", j, v ? v : "(null)");
    free(v);
}

static void unsharded_hot_skus_and_red_packets_unaffected(void **state) {
    (void)state;
    char *out = bench(0, "flashsale", "--sku", "lgu", "--stock", "30", "--users", "60",
                      "--attempts", "2", NULL);
    assert_string_equal(lge_kv(out, "verified"), "ok");
    assert_int_equal(lge_kv_int(out, "success"), 30);
    assert_null(strstr(out, "\nshards="));
    free(out);
    char *v = sh_redis_cmd(sh_redis_port(redis), "GET fs:{lgu}:stock");
    assert_string_equal(v, "0");
    free(v);
    /* three hot skus with Zipf skew, each sharded */
    out = bench(0, "flashsale", "--sku", "lgh", "--hot-skus", "3", "--skew", "100", "--shards", "2",
                "--stock", "10", "--users", "90", NULL);
    assert_string_equal(lge_kv(out, "verified"), "ok");
    for (int i = 0; i < 3; i++) {
        char want[32];
        snprintf(want, sizeof want, "\nsku=lgh-%d\n", i);
        assert_non_null(strstr(out, want));
        assert_int_equal(rint_("HGET fs:{%s-%d}:meta shards", "lgh", i), 2);
    }
    free(out);
    out = bench(0, "redpacket", "--packets", "2", "--grabbers", "50", "--count", "20",
                "--total-cents", "1000", NULL);
    assert_string_equal(lge_kv(out, "verified"), "ok");
    assert_int_equal(lge_kv_int(out, "success"), 40);
    free(out);
}

static void shards_out_of_range_refused(void **state) {
    (void)state;
    static const char *bad[] = {"0", "17", "four", "1.5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *args[] = {"flashsale", "--url", url, "--shards", bad[i], NULL};
        char *out = NULL;
        /* a bad value is EX_CONFIG (78), like every option of the CLI (test_cli.c) */
        assert_int_equal(lge_runv(&out, args), 78);
        if (!strstr(out, "--shards") || !strstr(out, "from 1 to 16") ||
            strchr(out, '\n') != out + strlen(out) - 1)
            fail_msg("not one line naming --shards and its range:\n%s", out);
        free(out);
    }
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sharded_sale_stock_below_users),
        cmocka_unit_test(sharded_sale_stock_equals_users),
        cmocka_unit_test(verifier_catches_two_orders_across_shards),
        cmocka_unit_test(verifier_catches_negative_shard_stock),
        cmocka_unit_test(reservation_left_is_reported_then_recovered),
        cmocka_unit_test(unsharded_hot_skus_and_red_packets_unaffected),
        cmocka_unit_test(shards_out_of_range_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
