/*
 * test_loadgen_sharded_cluster.c: `strata bench flashsale --shards 4` against a
 * `strata serve` on a real Redis Cluster (3 masters + 3 replicas from the
 * harness), verifying through redis-cluster:// (the checker follows MOVED to
 * each shard's master): a sale whose shards sit on all three masters passes
 * with stock < users and with stock == users; a shard's stock made negative
 * on its master makes a re-run exit 1 naming it.
 */
/* ctest-labels: slow cluster redis scenarios */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "loadgen_e2e.h"
#include "strata/status.h"

#define K 4

static sh_cluster *cluster;
static sh_serve *srv;
static char db[1024], url[64];

static int setup(void **state) {
    (void)state;
    if (sh_cluster_start(&cluster) != STRATA_OK)
        return -1;
    return lge_serve_start(&srv, sh_cluster_url(cluster), db, sizeof db, url, sizeof url) ==
                   STRATA_OK
               ? 0
               : -1;
}

static int teardown(void **state) {
    (void)state;
    int rc = sh_serve_stop(&srv);
    sh_cluster_stop(&cluster);
    return rc == 0 ? 0 : -1;
}

/* The port of the master that holds `key` now. */
static uint16_t port_of(const char *key) {
    int m = sh_cluster_master_of_slot(cluster, sh_cluster_keyslot(key));
    assert_true(m >= 0);
    return sh_cluster_node_port(cluster, m);
}

/* A sku whose K shards' stock keys sit on all three masters. */
static void spread_sku(const char *base, char *sku, size_t cap) {
    sku[0] = '\0';
    for (int n = 0; n < 1000 && !sku[0]; n++) {
        char cand[32];
        snprintf(cand, sizeof cand, "%s%d", base, n);
        int masters[K], distinct = 0;
        for (int i = 0; i < K; i++) {
            char key[64];
            snprintf(key, sizeof key, "fs:{%s#%d}:stock", cand, i);
            masters[i] = sh_cluster_master_of_slot(cluster, sh_cluster_keyslot(key));
            bool dup = false;
            for (int j = 0; j < i; j++)
                dup |= masters[j] == masters[i];
            distinct += !dup;
        }
        if (distinct == 3)
            snprintf(sku, cap, "%s", cand);
    }
    assert_true(sku[0] != '\0');
}

static char *bench(int want, const char *sku, ...) {
    const char *args[64] = {"flashsale",
                            "--url",
                            url,
                            "--admin-token",
                            SH_ADMIN_TOKEN,
                            "--redis",
                            sh_cluster_url(cluster),
                            "--db",
                            db,
                            "--connections",
                            "16",
                            "--threads",
                            "2",
                            "--sku",
                            sku};
    size_t n = 15;
    va_list ap;
    va_start(ap, sku);
    for (const char *a = va_arg(ap, const char *); a && n < 63; a = va_arg(ap, const char *))
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    char *out = NULL;
    int rc = lge_runv(&out, args);
    if (rc != want)
        fail_msg("strata bench flashsale: exit %d, expected %d:\n%s", rc, want, out);
    return out;
}

static void sharded_sales_verified_across_masters(void **state) {
    (void)state;
    char sku[32];
    spread_sku("lgc", sku, sizeof sku);
    char *out =
        bench(0, sku, "--shards", "4", "--stock", "40", "--users", "100", "--attempts", "2", NULL);
    assert_string_equal(lge_kv(out, "verified"), "ok");
    assert_int_equal(lge_kv_int(out, "success"), 40);
    assert_int_equal(lge_kv_int(out, "already"), 40);
    assert_int_equal(lge_kv_int(out, "errors"), 0);
    free(out);

    char sku2[32];
    spread_sku("lge", sku2, sizeof sku2);
    out =
        bench(0, sku2, "--shards", "4", "--stock", "60", "--users", "60", "--attempts", "2", NULL);
    assert_string_equal(lge_kv(out, "verified"), "ok");
    assert_int_equal(lge_kv_int(out, "success"), 60);
    assert_int_equal(lge_kv_int(out, "sold_out"), 0);
    free(out);

    /* a shard's stock driven negative on its own master: the re-run names it */
    char key[64];
    snprintf(key, sizeof key, "fs:{%s#1}:stock", sku);
    char *v = sh_redis_cmd(port_of(key), "SET %s -3", key);
    assert_string_equal(v, "OK");
    free(v);
    out = bench(1, sku, "--no-create", "--users", "100", "--requests", "4", "--drain-timeout", "5s",
                NULL);
    char want[128];
    snprintf(want, sizeof want, "violation=sku=%s: shard 1: stock_left=-3 is negative", sku);
    if (!strstr(out, want))
        fail_msg("violation not reported:\n%s", out);
    free(out);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sharded_sales_verified_across_masters),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
