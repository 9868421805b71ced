/*
 * test_harness_cluster.c: the harness's Redis Cluster (3 masters + 3
 * replicas): topology and slot routing after start, key slots, flush
 * between tests, and a killed master replaced by its replica (the takeover
 * time is measured and printed), the old master rejoining as a replica.
 * One cluster is shared by the whole binary.
 */
/* ctest-labels: slow cluster redis */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness/harness.h"

static sh_cluster *g_c;

static int group_setup(void **state) {
    (void)state;
    uint64_t t0 = sh_now_ms();
    if (sh_cluster_start(&g_c) != 0)
        return -1;
    fprintf(stderr, "cluster (3 masters + 3 replicas) created and agreed in %llu ms\n",
            (unsigned long long)(sh_now_ms() - t0));
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    sh_cluster_stop(&g_c);
    return 0;
}

static int setup_flush(void **state) {
    (void)state;
    return sh_cluster_flush(g_c) == 0 ? 0 : -1;
}

static bool role_is(uint16_t port, const char *role) {
    char *r = sh_redis_cmd(port, "ROLE");
    bool ok = r && strncmp(r, role, strlen(role)) == 0 && r[strlen(role)] == '\n';
    free(r);
    return ok;
}

static void assert_reply(uint16_t port, const char *expect, const char *fmt, const char *arg) {
    char *got = sh_redis_cmd(port, fmt, arg);
    assert_non_null(got);
    assert_string_equal(got, expect);
    free(got);
}

static void test_topology(void **state) {
    (void)state;
    assert_int_equal(sh_cluster_nnodes(g_c), 6);
    int masters = 0, replicas = 0;
    for (int i = 0; i < 6; i++) {
        assert_true(sh_cluster_node_pid(g_c, i) > 0);
        for (int j = i + 1; j < 6; j++)
            assert_int_not_equal(sh_cluster_node_port(g_c, i), sh_cluster_node_port(g_c, j));
        masters += role_is(sh_cluster_node_port(g_c, i), "master");
        replicas += role_is(sh_cluster_node_port(g_c, i), "slave");
    }
    assert_int_equal(masters, 3);
    assert_int_equal(replicas, 3);
    for (int slot = 0; slot < 16384; slot += 1111) {
        int m = sh_cluster_master_of_slot(g_c, slot);
        assert_true(m >= 0);
        assert_true(role_is(sh_cluster_node_port(g_c, m), "master"));
        int r = sh_cluster_replica_of(g_c, m);
        assert_true(r >= 0 && r != m);
        assert_true(role_is(sh_cluster_node_port(g_c, r), "slave"));
    }
    assert_int_equal(sh_cluster_master_of_slot(g_c, 16384), -1);
    char url[128];
    snprintf(url, sizeof url, "redis-cluster://127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u",
             sh_cluster_node_port(g_c, 0), sh_cluster_node_port(g_c, 1),
             sh_cluster_node_port(g_c, 2));
    assert_string_equal(sh_cluster_url(g_c), url);
    assert_true(sh_cluster_wait_ok(g_c, 0, 1000));
}

static void test_keyslot_matches_server(void **state) {
    (void)state;
    const char *keys[] = {"foo", "",    "a",      "{user1000}.following", "{user1000}.followers",
                          "{}x", "x{}", "{a}{b}", "stock:{sku-42}",       "\xff\xfe"};
    uint16_t any = sh_cluster_node_port(g_c, 0);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char *got = sh_redis_cmd(any, "CLUSTER KEYSLOT %s", keys[i]);
        assert_non_null(got);
        assert_int_equal(sh_cluster_keyslot(keys[i]), atoi(got));
        free(got);
    }
    assert_int_equal(sh_cluster_keyslot("foo"), 12182); /* from the cluster spec */
    assert_int_equal(sh_cluster_keyslot("{user1000}.following"),
                     sh_cluster_keyslot("{user1000}.followers"));
}

static void test_routing_and_flush(void **state) {
    (void)state;
    const char *key = "routing-key";
    int m = sh_cluster_master_of_slot(g_c, sh_cluster_keyslot(key));
    assert_true(m >= 0);
    uint16_t mp = sh_cluster_node_port(g_c, m);
    assert_reply(mp, "OK", "SET %s v", key);
    assert_reply(mp, "v", "GET %s", key);
    /* another master redirects */
    int other = sh_cluster_master_of_slot(g_c, (sh_cluster_keyslot(key) + 8192) % 16384);
    assert_true(other >= 0 && other != m);
    char *moved = sh_redis_cmd(sh_cluster_node_port(g_c, other), "GET %s", key);
    assert_non_null(moved);
    assert_true(strncmp(moved, "MOVED ", 6) == 0);
    free(moved);
    assert_int_equal(sh_cluster_flush(g_c), 0);
    assert_reply(mp, "(nil)", "GET %s", key);
    assert_reply(mp, "0", "DBSIZE", NULL);
    /* the replica flushed too (flush WAITs for replicas) */
    int r = sh_cluster_replica_of(g_c, m);
    assert_true(r >= 0);
    assert_reply(sh_cluster_node_port(g_c, r), "0", "DBSIZE", NULL);
}

typedef struct follow_ctx {
    uint16_t replica, master;
} follow_ctx;

static bool follows(void *vctx) {
    follow_ctx *f = vctx;
    char *r = sh_redis_cmd(f->replica, "ROLE");
    char expect[64];
    snprintf(expect, sizeof expect, "slave\n127.0.0.1\n%u\nconnected\n", f->master);
    bool ok = r && strncmp(r, expect, strlen(expect)) == 0;
    free(r);
    return ok;
}

static void test_master_kill_replica_takes_over(void **state) {
    (void)state;
    const char *key = "failover-key";
    int slot = sh_cluster_keyslot(key);
    int m = sh_cluster_master_of_slot(g_c, slot);
    assert_true(m >= 0);
    int r = sh_cluster_replica_of(g_c, m);
    assert_true(r >= 0);
    uint16_t mp = sh_cluster_node_port(g_c, m), rp = sh_cluster_node_port(g_c, r);
    /* Wait for every replica the master has (after earlier restarts it may have two):
     * WAIT 1 could be met by one replica while the one promoted below still lags. */
    char *info = sh_redis_cmd(mp, "INFO %s", "replication");
    assert_non_null(info);
    const char *cs = strstr(info, "connected_slaves:");
    assert_non_null(cs);
    int nrep = atoi(cs + strlen("connected_slaves:"));
    free(info);
    assert_true(nrep >= 1);
    assert_int_equal(sh_redis_set_wait(mp, key, "before", nrep), nrep);

    assert_int_equal(sh_cluster_kill_node(g_c, m), 0);
    assert_int_equal(sh_cluster_kill_node(g_c, m), STRATA_ENOTFOUND);
    uint64_t t0 = sh_now_ms();
    assert_true(sh_cluster_wait_ok(g_c, slot, 20000));
    fprintf(stderr,
            "cluster: replica took over %llu ms after its master was SIGKILLed "
            "(cluster-node-timeout 1000)\n",
            (unsigned long long)(sh_now_ms() - t0));
    assert_int_equal(sh_cluster_master_of_slot(g_c, slot), r);
    assert_true(role_is(rp, "master"));
    assert_reply(rp, "before", "GET %s", key);
    assert_reply(rp, "OK", "SET %s after", key);

    /* the old master rejoins as a replica of its replacement */
    assert_int_equal(sh_cluster_restart_node(g_c, m), 0);
    assert_int_equal(sh_cluster_node_port(g_c, m), mp);
    follow_ctx f = {mp, rp};
    t0 = sh_now_ms();
    assert_true(sh_wait_until(20000, 50, follows, &f));
    fprintf(stderr, "cluster: the old master rejoined as a replica in %llu ms\n",
            (unsigned long long)(sh_now_ms() - t0));
    assert_true(sh_cluster_wait_ok(g_c, slot, 10000));
    t0 = sh_now_ms();
    assert_true(sh_cluster_wait_healthy(g_c, 20000));
    fprintf(stderr, "cluster: all six nodes agreed on the new topology %llu ms later\n",
            (unsigned long long)(sh_now_ms() - t0));
    assert_int_equal(sh_cluster_replica_of(g_c, r), m);
    assert_int_equal(sh_cluster_master_of_slot(g_c, slot), r);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topology),
        cmocka_unit_test(test_keyslot_matches_server),
        cmocka_unit_test_setup(test_routing_and_flush, setup_flush),
        cmocka_unit_test_setup(test_master_kill_replica_takes_over, setup_flush),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
