/*
 * test_flashsale_sharded.c: a flash sale whose stock is split in shards
 * ("shards": 4), over HTTP on two `strata serve` processes sharing one
 * redis-server and one database.  Users whose home shard runs dry take from
 * another shard (reserve, take, confirm); the invariants hold across shards:
 * exactly `stock` orders, one per user, every buyer's retry names the same
 * order, nothing left reserved, every order persisted once; after sell-out
 * non-buyers are answered from the L1 and buyers still learn their order.
 * The same on a Redis Cluster: test_flashsale_sharded_cluster.c.
 */
/* ctest-labels: redis scenarios */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "flashsale_sharded.h"
#include "strata/status.h"

#define SKU     "shd"
#define K       4
#define STOCK   20
#define THREADS 8
#define USERS   20

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

static sh_serve *serve(const char *db, const char *extra) {
    const char *args[] = {"--redis", sh_redis_url(redis), "--db", db, "--user-burst=100", extra,
                          NULL};
    sh_serve *s = NULL;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    return s;
}

static char *rcmd(const char *fmt, const char *a, int b) {
    char *v = sh_redis_cmd(sh_redis_port(redis), fmt, a, b);
    assert_non_null(v);
    return v;
}

static bool flag_soldout(void *p) {
    (void)p;
    char *v = sh_redis_cmd(sh_redis_port(redis), "GET fsflag:{%s}", SKU);
    bool ok = v && strcmp(v, "soldout") == 0;
    free(v);
    return ok;
}

static bool sale_unlisted(void *p) {
    (void)p;
    char *v = sh_redis_cmd(sh_redis_port(redis), "SISMEMBER fs:sharded %s#%d", SKU, K);
    bool ok = v && strcmp(v, "0") == 0;
    free(v);
    return ok;
}

static bool quiet_marked(void *p) {
    char *v = sh_redis_cmd(sh_redis_port(redis), "EXISTS fs:sweepquiet:%s", (const char *)p);
    bool ok = v && strcmp(v, "1") == 0;
    free(v);
    return ok;
}

static bool sale_listed(const char *member) {
    char *v = sh_redis_cmd(sh_redis_port(redis), "SISMEMBER fs:sharded %s", member);
    bool ok = v && strcmp(v, "1") == 0;
    free(v);
    return ok;
}

static bool sale_gone(void *p) { return !sale_listed(p); }

static void advance_clock(uint16_t port, long long ms) {
    char body[64];
    snprintf(body, sizeof body, "{\"advance_ms\":%lld}", ms);
    free(sh_http_expect(port, "POST", "/v1/admin/clock", body, true, 200));
}

static long long metric(uint16_t port, const char *name) {
    sh_http_resp r;
    long long v = -1;
    if (sh_http(port, "GET", "/metrics", NULL, false, 5000, &r) == 200 && r.body) {
        char needle[128];
        snprintf(needle, sizeof needle, "\n%s ", name);
        const char *p = strstr(r.body, needle);
        if (p)
            v = strtoll(p + strlen(needle), NULL, 10);
    }
    sh_http_free(&r);
    return v;
}

static void sharded_sale_keeps_both_invariants(void **state) {
    (void)state;
    char db[1024];
    snprintf(db, sizeof db, "sqlite://%s/fs.db", sh_tmpdir());
    sh_serve *s1 = serve(db, "--debug-clock");
    sh_serve *s2 = serve(db, "--debug-clock");
    uint16_t p1 = sh_serve_port(s1), p2 = sh_serve_port(s2);

    /* creation: bounds of "shards"; the shard count comes back */
    sh_http_expect_code(p1, "POST", "/v1/flashsales", "{\"sku\":\"x\",\"stock\":5,\"shards\":0}",
                        true, 400, "invalid_field");
    sh_http_expect_code(p1, "POST", "/v1/flashsales", "{\"sku\":\"x\",\"stock\":5,\"shards\":17}",
                        true, 400, "invalid_field");
    char body[256];
    snprintf(body, sizeof body, "{\"sku\":\"%s\",\"stock\":%d,\"shards\":%d}", SKU, STOCK, K);
    char *b = sh_http_expect(p1, "POST", "/v1/flashsales", body, true, 201);
    assert_non_null(strstr(b, "\"shards\":4"));
    free(b);
    sh_http_expect_code(p2, "POST", "/v1/flashsales", body, true, 409, "exists");
    for (int i = 0; i < K; i++) { /* 20 / 4: five units each */
        char *v = rcmd("GET fs:{%s#%d}:stock", SKU, i);
        assert_string_equal(v, "5");
        free(v);
    }

    /* deterministic: six users whose home is shard 0; the sixth must take from another */
    char users[6][32], first[6][64];
    int found = 0;
    for (int i = 0; found < 6 && i < 10000; i++) {
        snprintf(users[found], sizeof users[found], "h0-%d", i);
        if (fss_home(users[found], K) == 0)
            found++;
    }
    assert_int_equal(found, 6);
    for (int i = 0; i < 6; i++) {
        char ob[96];
        snprintf(ob, sizeof ob, "{\"user_id\":\"%s\"}", users[i]);
        b = sh_http_expect(i % 2 ? p2 : p1, "POST", "/v1/flashsales/" SKU "/orders", ob, false,
                           201);
        fss_order_id(b, first[i], sizeof first[i]);
        free(b);
        int shard = fss_order_shard(first[i]);
        if (i < 5)
            assert_int_equal(shard, 0);
        else
            assert_true(shard > 0 && shard < K); /* a cross-shard take */
    }
    /* the cross-shard order: readable, and the user's retry names it */
    char path[128];
    snprintf(path, sizeof path, "/v1/orders/%s", first[5]);
    b = sh_http_expect(p2, "GET", path, NULL, false, 200);
    assert_non_null(strstr(b, users[5]));
    free(b);
    /* an order not persisted yet is read from its shard's index (the id names the shard) */
    free(sh_redis_cmd(sh_redis_port(redis), "HSET fs:{%s#2}:orders %s-2.999 ghost", SKU, SKU));
    b = sh_http_expect(p1, "GET", "/v1/orders/" SKU "-2.999", NULL, false, 200);
    assert_non_null(strstr(b, "\"user_id\":\"ghost\""));
    assert_non_null(strstr(b, "\"persisted\":false"));
    free(b);
    free(sh_redis_cmd(sh_redis_port(redis), "HDEL fs:{%s#2}:orders %s-2.999", SKU, SKU));
    sh_http_expect_code(p1, "GET", "/v1/orders/" SKU "-99.1", NULL, false, 404, "not_found");
    sh_http_expect_code(p1, "GET", "/v1/orders/" SKU "-1.", NULL, false, 404, "not_found");
    sh_http_expect_code(p1, "GET", "/v1/orders/" SKU "-1.2.3", NULL, false, 404, "not_found");
    char ob[96], id[64];
    snprintf(ob, sizeof ob, "{\"user_id\":\"%s\"}", users[5]);
    b = sh_http_expect(p2, "POST", "/v1/flashsales/" SKU "/orders", ob, false, 409);
    fss_order_id(b, id, sizeof id);
    assert_string_equal(id, first[5]);
    free(b);

    /* concurrent: 160 more users, each twice, on both servers, for the 14 units left */
    fss_buyer_arg *args = calloc(THREADS, sizeof *args);
    fss_totals t = fss_run_buyers(p1, p2, SKU, THREADS, USERS, args);
    assert_int_equal(t.other, 0);
    assert_int_equal(t.mismatched, 0);
    assert_int_equal(t.created, STOCK - 6);
    assert_int_equal(t.already, STOCK - 6); /* every buyer's second try */
    assert_int_equal(t.sold_out, 2 * THREADS * USERS - 2 * (STOCK - 6));

    /* Redis: every order in exactly one shard's index, one per user, no reservation left */
    int orders = 0, taken = 0, events = 0, records = 0;
    char seen[STOCK + 1][32];
    for (int j = 0; j < K; j++) {
        char *v = rcmd("GET fs:{%s#%d}:stock", SKU, j);
        assert_string_equal(v, "0");
        free(v);
        v = rcmd("HVALS fs:{%s#%d}:orders", SKU, j);
        for (char *tok = strtok(v, "\n"); tok; tok = strtok(NULL, "\n")) {
            assert_true(orders < STOCK);
            for (int k = 0; k < orders; k++)
                if (strcmp(seen[k], tok) == 0)
                    fail_msg("user %s holds two orders", tok);
            snprintf(seen[orders++], sizeof seen[0], "%s", tok);
        }
        free(v);
        v = rcmd("HVALS fs:{%s#%d}:buyers", SKU, j);
        for (char *tok = strtok(v, "\n"); tok; tok = strtok(NULL, "\n")) {
            if (strncmp(tok, "R:", 2) == 0)
                fail_msg("a reservation is left: %s", tok);
            records++;
        }
        free(v);
        v = rcmd("HLEN fs:{%s#%d}:taken", SKU, j);
        taken += atoi(v);
        free(v);
        v = rcmd("XLEN fs:{%s#%d}:events", SKU, j);
        events += atoi(v);
        free(v);
        v = rcmd("ZCARD fs:{%s#%d}:pending", SKU, j);
        assert_string_equal(v, "0");
        free(v);
    }
    assert_int_equal(orders, STOCK);
    assert_int_equal(records, STOCK);
    assert_int_equal(events, STOCK);
    assert_true(taken >= 1);
    char *v = sh_redis_cmd(sh_redis_port(redis), "EXISTS fs:{%s}:stock", SKU);
    assert_string_equal(v, "0"); /* a sharded sale has no single stock key */
    free(v);

    /* the sale: summed over shards; the flag reaches sold out */
    b = sh_http_expect(p1, "GET", "/v1/flashsales/" SKU, NULL, false, 200);
    assert_int_equal(fss_json_int(b, "stock_left"), 0);
    assert_int_equal(fss_json_int(b, "sold"), STOCK);
    assert_int_equal(fss_json_int(b, "shards"), K);
    assert_non_null(strstr(b, "\"status\":\"sold_out\""));
    free(b);
    assert_true(sh_wait_until(10000, 20, flag_soldout, NULL));

    /* after sell-out: non-buyers from the L1 (Bloom filter of their home shard), buyers
     * still learn their order (the cross-shard buyer too) */
    long long before = metric(p1, "strata_scenario_l1_flag_hits_total");
    for (int i = 0; i < 20; i++) {
        char nb[64];
        snprintf(nb, sizeof nb, "{\"user_id\":\"late-%d\"}", i);
        sh_http_expect_code(p1, "POST", "/v1/flashsales/" SKU "/orders", nb, false, 409,
                            "sold_out");
    }
    assert_true(metric(p1, "strata_scenario_l1_flag_hits_total") >= before + 15);
    for (int i = 0; i < 6; i++) {
        snprintf(ob, sizeof ob, "{\"user_id\":\"%s\"}", users[i]);
        b = sh_http_expect(i % 2 ? p1 : p2, "POST", "/v1/flashsales/" SKU "/orders", ob, false,
                           409);
        fss_order_id(b, id, sizeof id);
        assert_string_equal(id, first[i]);
        free(b);
    }

    /* every order persisted once (the persister reads every shard's stream) */
    char(*ids)[64] = calloc(STOCK, sizeof *ids);
    int n = 0;
    for (int j = 0; j < K; j++) {
        v = rcmd("HKEYS fs:{%s#%d}:orders", SKU, j);
        for (char *tok = strtok(v, "\n"); tok && n < STOCK; tok = strtok(NULL, "\n"))
            snprintf(ids[n++], sizeof ids[0], "%s", tok);
        free(v);
    }
    fss_persist_ctx pc = {p1, ids, n};
    assert_true(sh_wait_until(30000, 100, fss_all_persisted, &pc));
    free(ids);
    free(args);
    /* sold out with nothing pending: the sweeper stops visiting the sale once that has
     * lasted SWEEP_GRACE_MS (60 s) on the servers' clocks (moved here, not waited for) */
    assert_true(sh_wait_until(10000, 50, quiet_marked, SKU "#4"));
    assert_true(sale_listed(SKU "#4"));
    advance_clock(p1, 61000);
    advance_clock(p2, 61000);
    assert_true(sh_wait_until(10000, 50, sale_unlisted, NULL));

    /* the segment-lock baseline keeps one slot per sale: it refuses shards */
    sh_serve *s3 = serve(db, "--flashsale-strategy=segment-lock");
    sh_http_expect_code(sh_serve_port(s3), "POST", "/v1/flashsales",
                        "{\"sku\":\"seg\",\"stock\":5,\"shards\":2}", true, 400, "invalid_field");
    sh_http_expect_code(sh_serve_port(s3), "POST", "/v1/flashsales/" SKU "/orders",
                        "{\"user_id\":\"someone\"}", false, 400, "unsupported");
    assert_int_equal(sh_serve_stop(&s3), 0);
    assert_int_equal(sh_serve_stop(&s1), 0);
    assert_int_equal(sh_serve_stop(&s2), 0);
}

/* A reservation left by a crashed server (planted here, old) is finished by the sweeper. */
typedef struct rec_ctx {
    const char *tag, *user, *want; /* want NULL: any order id (neither absent nor "R:") */
} rec_ctx;

static bool record_is(void *p) {
    const rec_ctx *c = p;
    char *v = sh_redis_cmd(sh_redis_port(redis), "HGET fs:{%s}:buyers %s", c->tag, c->user);
    bool ok = v && (c->want ? strcmp(v, c->want) == 0
                            : strcmp(v, "(nil)") != 0 && strncmp(v, "R:", 2) != 0);
    free(v);
    return ok;
}

#define RDO(...) free(sh_redis_cmd(sh_redis_port(redis), __VA_ARGS__))

static void sweeper_finishes_abandoned_reservations(void **state) {
    (void)state;
    char db[1024];
    snprintf(db, sizeof db, "sqlite://%s/sw.db", sh_tmpdir());
    sh_serve *s = serve(db, "--log-level=info");
    uint16_t p = sh_serve_port(s);
    free(sh_http_expect(p, "POST", "/v1/flashsales", "{\"sku\":\"sw\",\"stock\":4,\"shards\":2}",
                        true, 201));
    int zh = fss_home("zoe", 2), yh = fss_home("yan", 2), zj = 1 - zh, yj = 1 - yh;
    char zk[16], yk[16], zo[32], rz[8], ry[8];
    snprintf(zk, sizeof zk, "sw#%d", zh);
    snprintf(yk, sizeof yk, "sw#%d", yh);
    snprintf(zo, sizeof zo, "sw-%d.77", zj);
    snprintf(rz, sizeof rz, "R:%d", zj);
    snprintf(ry, sizeof ry, "R:%d", yj);
    /* zoe: a server crashed after her take from shard zj (as flashsale_take.lua leaves it),
     * before the confirm; her home record still says R:zj, reserved long ago */
    RDO("DECR fs:{sw#%d}:stock", zj);
    RDO("HSET fs:{sw#%d}:taken zoe %s", zj, zo);
    RDO("HSET fs:{sw#%d}:orders %s zoe", zj, zo);
    RDO("HSET fs:{%s}:buyers zoe %s", zk, rz);
    RDO("ZADD fs:{%s}:pending 1 zoe", zk);
    /* yan: a server crashed after her reservation, before any take */
    RDO("HSET fs:{%s}:buyers yan %s", yk, ry);
    RDO("ZADD fs:{%s}:pending 1 yan", yk);
    /* the sweeper: zoe's take repeats (her order), yan's runs (shard yj has stock) */
    rec_ctx zc = {zk, "zoe", zo}, yc = {yk, "yan", NULL};
    assert_true(sh_wait_until(10000, 50, record_is, &zc));
    assert_true(sh_wait_until(10000, 50, record_is, &yc));
    for (int h = 0; h < 2; h++) {
        char *v = sh_redis_cmd(sh_redis_port(redis), "ZCARD fs:{sw#%d}:pending", h);
        assert_string_equal(v, "0");
        free(v);
    }
    /* both learn their orders; the stock went down once per order */
    char *b =
        sh_http_expect(p, "POST", "/v1/flashsales/sw/orders", "{\"user_id\":\"zoe\"}", false, 409);
    assert_non_null(strstr(b, zo));
    free(b);
    b = sh_http_expect(p, "POST", "/v1/flashsales/sw/orders", "{\"user_id\":\"yan\"}", false, 409);
    assert_non_null(strstr(b, "already_purchased"));
    free(b);
    b = sh_http_expect(p, "GET", "/v1/flashsales/sw", NULL, false, 200);
    assert_int_equal(fss_json_int(b, "sold"), 2);
    free(b);
    assert_int_equal(sh_serve_stop(&s), 0);
}

/* A sold-out sale stays on the sweeper's list through the grace: a straggler's reservation
 * (a request that read the sale before the sell-out and died after reserving) made while
 * the sale was already quiet is still finished by the sweeper. */
static bool no_record(void *p) {
    const rec_ctx *c = p;
    char *v = sh_redis_cmd(sh_redis_port(redis), "HGET fs:{%s}:buyers %s", c->tag, c->user);
    bool ok = v && strcmp(v, "(nil)") == 0;
    free(v);
    return ok;
}

static void sweeper_keeps_a_sold_out_sale_through_the_grace(void **state) {
    (void)state;
    char db[1024];
    snprintf(db, sizeof db, "sqlite://%s/gr.db", sh_tmpdir());
    sh_serve *s = serve(db, "--debug-clock");
    uint16_t p = sh_serve_port(s);
    free(sh_http_expect(p, "POST", "/v1/flashsales", "{\"sku\":\"gr\",\"stock\":2,\"shards\":2}",
                        true, 201));
    free(sh_http_expect(p, "POST", "/v1/flashsales/gr/orders", "{\"user_id\":\"a1\"}", false, 201));
    free(sh_http_expect(p, "POST", "/v1/flashsales/gr/orders", "{\"user_id\":\"a2\"}", false, 201));
    /* a third buyer finds every shard empty: sold out, the sale's flag is set */
    sh_http_expect_code(p, "POST", "/v1/flashsales/gr/orders", "{\"user_id\":\"a3\"}", false, 409,
                        "sold_out");
    assert_true(sh_wait_until(10000, 50, quiet_marked, "gr#2"));
    assert_true(sale_listed("gr#2"));
    /* the straggler: zed's reservation toward the other shard, left by a dead server */
    int zh = fss_home("zed", 2);
    char zk[16];
    snprintf(zk, sizeof zk, "gr#%d", zh);
    RDO("HSET fs:{%s}:buyers zed R:%d", zk, 1 - zh);
    RDO("ZADD fs:{%s}:pending 1 zed", zk);
    rec_ctx zc = {zk, "zed", NULL};
    assert_true(sh_wait_until(10000, 50, no_record, &zc)); /* released: nothing to take */
    char *v = sh_redis_cmd(sh_redis_port(redis), "ZCARD fs:{%s}:pending", zk);
    assert_string_equal(v, "0");
    free(v);
    assert_true(sale_listed("gr#2"));
    /* quiet again for the whole grace: the sweeper lets the sale go */
    assert_true(sh_wait_until(10000, 50, quiet_marked, "gr#2"));
    advance_clock(p, 61000);
    assert_true(sh_wait_until(10000, 50, sale_gone, "gr#2"));
    sh_http_expect_code(p, "POST", "/v1/flashsales/gr/orders", "{\"user_id\":\"zed\"}", false, 409,
                        "sold_out");
    assert_int_equal(sh_serve_stop(&s), 0);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sharded_sale_keeps_both_invariants),
        cmocka_unit_test(sweeper_finishes_abandoned_reservations),
        cmocka_unit_test(sweeper_keeps_a_sold_out_sale_through_the_grace),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
