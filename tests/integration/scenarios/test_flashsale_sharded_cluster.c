/*
 * test_flashsale_sharded_cluster.c: a sharded flash sale on a real Redis
 * Cluster (3 masters + 3 replicas from the harness), two `strata serve`
 * processes on `--redis redis-cluster://...`: the sale's shards sit in slots
 * of all three masters (checked), concurrent buyers on both servers, and the
 * invariants across slots: exactly `stock` orders, one per user, each buyer's
 * retry names the same order, no reservation left, the sold-out flag set,
 * every order persisted.
 */
/* ctest-labels: slow cluster redis scenarios */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "flashsale_sharded.h"
#include "strata/status.h"

#define K       4
#define STOCK   24
#define THREADS 8
#define USERS   15

static sh_cluster *cluster;

static int setup(void **state) {
    (void)state;
    return sh_cluster_start(&cluster);
}

static int teardown(void **state) {
    (void)state;
    sh_cluster_stop(&cluster);
    return 0;
}

/* The port of the master that holds `key` now. */
static uint16_t port_of(const char *key) {
    int m = sh_cluster_master_of_slot(cluster, sh_cluster_keyslot(key));
    assert_true(m >= 0);
    return sh_cluster_node_port(cluster, m);
}

static char *kcmd(const char *verb, const char *key) {
    char *v = sh_redis_cmd(port_of(key), "%s %s", verb, key);
    assert_non_null(v);
    return v;
}

typedef struct flag_ctx {
    char key[64];
} flag_ctx;

static bool flag_soldout(void *p) {
    flag_ctx *f = p;
    char *v = sh_redis_cmd(port_of(f->key), "GET %s", f->key);
    bool ok = v && strcmp(v, "soldout") == 0;
    free(v);
    return ok;
}

static void sharded_sale_across_cluster_slots(void **state) {
    (void)state;
    /* a sku whose K shards cover all three masters */
    char sku[32] = "";
    for (int n = 0; n < 1000 && !sku[0]; n++) {
        char cand[32];
        snprintf(cand, sizeof cand, "cl%d", n);
        int masters[K], slots[K], distinct = 0;
        for (int i = 0; i < K; i++) {
            char key[64];
            snprintf(key, sizeof key, "fs:{%s#%d}:stock", cand, i);
            slots[i] = sh_cluster_keyslot(key);
            masters[i] = sh_cluster_master_of_slot(cluster, slots[i]);
            bool dup = false;
            for (int j = 0; j < i; j++)
                dup |= masters[j] == masters[i];
            distinct += !dup;
        }
        if (distinct == 3)
            snprintf(sku, sizeof sku, "%s", cand);
    }
    assert_true(sku[0] != '\0');

    char db[1024];
    snprintf(db, sizeof db, "sqlite://%s/fs.db", sh_tmpdir());
    const char *args[] = {"--redis", sh_cluster_url(cluster), "--db", db, "--user-burst=100", NULL};
    sh_serve *s1 = NULL, *s2 = NULL;
    assert_int_equal(sh_serve_start(&s1, args), STRATA_OK);
    assert_int_equal(sh_serve_start(&s2, args), STRATA_OK);
    uint16_t p1 = sh_serve_port(s1), p2 = sh_serve_port(s2);

    char body[160];
    snprintf(body, sizeof body, "{\"sku\":\"%s\",\"stock\":%d,\"shards\":%d}", sku, STOCK, K);
    free(sh_http_expect(p1, "POST", "/v1/flashsales", body, true, 201));
    for (int i = 0; i < K; i++) {
        char key[64];
        snprintf(key, sizeof key, "fs:{%s#%d}:stock", sku, i);
        char *v = kcmd("GET", key);
        assert_string_equal(v, "6");
        free(v);
    }

    /* deterministic: seven users whose home is shard 0 (6 units): the seventh's order comes
     * from another shard, on another master, through reserve / take / confirm */
    char path[128];
    snprintf(path, sizeof path, "/v1/flashsales/%s/orders", sku);
    int found = 0;
    for (int i = 0; found < 7 && i < 10000; i++) {
        char user[32], ob[96], id[64];
        snprintf(user, sizeof user, "h0-%d", i);
        if (fss_home(user, K) != 0)
            continue;
        snprintf(ob, sizeof ob, "{\"user_id\":\"%s\"}", user);
        char *b = sh_http_expect(found % 2 ? p2 : p1, "POST", path, ob, false, 201);
        fss_order_id(b, id, sizeof id);
        free(b);
        int shard = fss_order_shard(id);
        if (found < 6) {
            assert_int_equal(shard, 0);
        } else {
            assert_true(shard > 0 && shard < K);
            char k0[64], kj[64];
            snprintf(k0, sizeof k0, "fs:{%s#0}:buyers", sku);
            snprintf(kj, sizeof kj, "fs:{%s#%d}:orders", sku, shard);
            assert_true(sh_cluster_keyslot(k0) != sh_cluster_keyslot(kj));
            b = sh_http_expect(found % 2 ? p1 : p2, "POST", path, ob, false, 409);
            assert_non_null(strstr(b, id)); /* the retry names it */
            free(b);
        }
        found++;
    }
    assert_int_equal(found, 7);

    /* concurrent: 120 users, each twice, on both servers, for the 17 units left */
    fss_buyer_arg *a = calloc(THREADS, sizeof *a);
    fss_totals t = fss_run_buyers(p1, p2, sku, THREADS, USERS, a);
    assert_int_equal(t.other, 0);
    assert_int_equal(t.mismatched, 0);
    assert_int_equal(t.created, STOCK - 7);
    assert_int_equal(t.already, STOCK - 7);
    assert_int_equal(t.sold_out, 2 * THREADS * USERS - 2 * (STOCK - 7));

    /* each shard on its own master: orders, records, streams */
    int orders = 0, records = 0, events = 0, taken = 0;
    char seen[STOCK][32];
    char(*ids)[64] = calloc(STOCK, sizeof *ids);
    for (int j = 0; j < K; j++) {
        char key[64];
        snprintf(key, sizeof key, "fs:{%s#%d}:stock", sku, j);
        char *v = kcmd("GET", key);
        assert_string_equal(v, "0");
        free(v);
        snprintf(key, sizeof key, "fs:{%s#%d}:orders", sku, j);
        v = sh_redis_cmd(port_of(key), "HGETALL %s", key);
        assert_non_null(v);
        int field = 0;
        for (char *tok = strtok(v, "\n"); tok; tok = strtok(NULL, "\n"), field ^= 1) {
            if (!field) { /* order id */
                assert_true(orders < STOCK);
                snprintf(ids[orders], sizeof ids[0], "%s", tok);
                assert_int_equal(fss_order_shard(tok), j);
                continue;
            }
            for (int k = 0; k < orders; k++)
                if (strcmp(seen[k], tok) == 0)
                    fail_msg("user %s holds two orders", tok);
            snprintf(seen[orders++], sizeof seen[0], "%s", tok);
        }
        free(v);
        snprintf(key, sizeof key, "fs:{%s#%d}:buyers", sku, j);
        v = kcmd("HVALS", key);
        for (char *tok = strtok(v, "\n"); tok; tok = strtok(NULL, "\n")) {
            if (strncmp(tok, "R:", 2) == 0)
                fail_msg("a reservation is left: %s", tok);
            records++;
        }
        free(v);
        snprintf(key, sizeof key, "fs:{%s#%d}:events", sku, j);
        v = kcmd("XLEN", key);
        events += atoi(v);
        free(v);
        snprintf(key, sizeof key, "fs:{%s#%d}:taken", sku, j);
        v = kcmd("HLEN", key);
        taken += atoi(v);
        free(v);
    }
    assert_int_equal(orders, STOCK);
    assert_int_equal(records, STOCK);
    assert_int_equal(events, STOCK);
    assert_true(taken >= 1);

    /* the sale summed over the masters; the flag at {sku} says sold out */
    snprintf(path, sizeof path, "/v1/flashsales/%s", sku);
    char *b = sh_http_expect(p2, "GET", path, NULL, false, 200);
    assert_int_equal(fss_json_int(b, "stock_left"), 0);
    assert_int_equal(fss_json_int(b, "sold"), STOCK);
    free(b);
    flag_ctx fc;
    snprintf(fc.key, sizeof fc.key, "fsflag:{%s}", sku);
    assert_true(sh_wait_until(10000, 20, flag_soldout, &fc));

    /* every order persisted (streams of every shard, on every master) */
    fss_persist_ctx pc = {p1, ids, orders};
    assert_true(sh_wait_until(30000, 100, fss_all_persisted, &pc));
    free(ids);
    free(a);
    assert_int_equal(sh_serve_stop(&s1), 0);
    assert_int_equal(sh_serve_stop(&s2), 0);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sharded_sale_across_cluster_slots),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
