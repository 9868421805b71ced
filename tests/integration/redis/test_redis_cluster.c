/*
 * test_redis_cluster.c: the client against a real 3+3 Redis Cluster:
 * keys spread over the three masters, cross-slot refusal before sending,
 * a script on one hash tag, a slot migrated under the client's feet
 * (MIGRATING/IMPORTING: ASK handled; then SETSLOT NODE: MOVED handled; no
 * error surfaces), and a master killed: traffic resumes once its replica is
 * promoted (printed as cluster_failover_gap_ms=).
 */
/* ctest-labels: slow cluster redis */
/* ctest-timeout: 240 */
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

static sh_cluster *cl;

static int setup(void **state) {
    (void)state;
    return sh_cluster_start(&cl) == STRATA_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    sh_cluster_stop(&cl);
    return 0;
}

static strata_redis_sync *connect_cluster(uint32_t timeout_ms) {
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.command_timeout_ms = timeout_ms;
    o.connect_timeout_ms = 300;
    strata_redis_sync *s = NULL;
    strata_buf err = STRATA_BUF_INIT;
    int rc = strata_redis_sync_create(&s, sh_cluster_url(cl), &o, &err);
    if (rc != STRATA_OK)
        fail_msg("create: %s", err.data ? err.data : strata_strerror(rc));
    return s;
}

static void test_spread_and_crossslot(void **state) {
    (void)state;
    sh_cluster_flush(cl);
    strata_redis_sync *s = connect_cluster(1000);
    for (int i = 0; i < 300; i++) {
        char k[32];
        snprintf(k, sizeof(k), "k:%d", i);
        const char *argv[] = {"SET", k, k};
        assert_int_equal(strata_redis_sync_command_argv(s, NULL, NULL, 3, argv, NULL), STRATA_OK);
    }
    /* every master holds some keys */
    int masters = 0;
    for (int i = 0; i < sh_cluster_nnodes(cl); i++) {
        char *role = sh_redis_cmd(sh_cluster_node_port(cl, i), "ROLE");
        if (role && strncmp(role, "master", 6) == 0) {
            char *n = sh_redis_cmd(sh_cluster_node_port(cl, i), "DBSIZE");
            assert_non_null(n);
            assert_true(atoi(n) > 50);
            free(n);
            masters++;
        }
        free(role);
    }
    assert_int_equal(masters, 3);
    strata_redis_reply *rep = NULL;
    assert_int_equal(strata_redis_sync_command(s, &rep, "GET k:7"), STRATA_OK);
    assert_string_equal(rep->str, "k:7");
    strata_redis_reply_free(rep);
    /* refused before sending */
    const char *mget[] = {"MGET", "k:1", "k:2"};
    assert_int_equal(
        strata_redis_command_argv(strata_redis_sync_client(s), NULL, NULL, NULL, 3, mget, NULL),
        STRATA_ECROSSSLOT);
    const char *mget2[] = {"MGET", "{u1}a", "{u1}b"};
    assert_int_equal(strata_redis_sync_command_argv(s, NULL, &rep, 3, mget2, NULL), STRATA_OK);
    assert_int_equal(rep->elements, 2);
    strata_redis_reply_free(rep);
    /* a script on one hash tag; a cross-slot script is refused */
    static const char src[] =
        "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])";
    strata_redis_script sc;
    strata_redis_script_init(&sc, "t", src, sizeof(src) - 1);
    const char *keys[] = {"{order:9}:doc", "{order:9}:ver"};
    const char *args[] = {"v"};
    strata_redis_sync_op op = {0};
    assert_int_equal(strata_redis_evalsha(strata_redis_sync_client(s), NULL, &sc,
                                          strata_redis_sync_cb, &op, 2, keys, NULL, 1, args, NULL),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    assert_int_equal(op.reply->integer, 1);
    strata_redis_reply_free(op.reply);
    const char *bad[] = {"a", "b"};
    assert_int_equal(strata_redis_evalsha(strata_redis_sync_client(s), NULL, &sc, NULL, NULL, 2,
                                          bad, NULL, 1, args, NULL),
                     STRATA_ECROSSSLOT);
    /* keyless commands go to any master */
    assert_int_equal(strata_redis_sync_command(s, &rep, "PING"), STRATA_OK);
    strata_redis_reply_free(rep);
    strata_redis_sync_destroy(&s);
}

static char *node_id(uint16_t port) {
    char *id = sh_redis_cmd(port, "CLUSTER MYID");
    assert_non_null(id);
    return id;
}

static void test_migrate_slot_ask_then_moved(void **state) {
    (void)state;
    sh_cluster_flush(cl);
    strata_redis_sync *s = connect_cluster(1000);
    const char *key = "migrating-key";
    int slot = (int)strata_redis_key_slot(key, strlen(key));
    int src = sh_cluster_master_of_slot(cl, slot);
    assert_true(src >= 0);
    int dst = -1;
    for (int i = 0; i < sh_cluster_nnodes(cl) && dst < 0; i++) {
        if (i == src)
            continue;
        char *role = sh_redis_cmd(sh_cluster_node_port(cl, i), "ROLE");
        if (role && strncmp(role, "master", 6) == 0)
            dst = i;
        free(role);
    }
    assert_true(dst >= 0);
    uint16_t sp = sh_cluster_node_port(cl, src), dp = sh_cluster_node_port(cl, dst);
    char *sid = node_id(sp), *did = node_id(dp);
    /* warm the client's map while the slot is still at src */
    assert_int_equal(strata_redis_sync_command(s, NULL, "SET %s before", "other{migrating-key}"),
                     STRATA_OK);
    free(sh_redis_cmd(dp, "CLUSTER SETSLOT %d IMPORTING %s", slot, sid));
    free(sh_redis_cmd(sp, "CLUSTER SETSLOT %d MIGRATING %s", slot, did));

    /* the key does not exist at src: src answers ASK, the client follows */
    strata_redis_reply *rep = NULL;
    assert_int_equal(strata_redis_sync_command(s, &rep, "SET %s v1", key), STRATA_OK);
    strata_redis_reply_free(rep);
    assert_int_equal(strata_redis_sync_command(s, &rep, "GET %s", key), STRATA_OK);
    assert_string_equal(rep->str, "v1");
    strata_redis_reply_free(rep);
    strata_redis_stats st;
    strata_redis_get_stats(strata_redis_sync_client(s), &st);
    assert_true(st.ask >= 2);
    assert_int_equal(st.moved, 0);
    char *v = sh_redis_cmd(dp, "CLUSTER COUNTKEYSINSLOT %d", slot); /* at the importing node */
    assert_string_equal(v, "1");
    free(v);

    /* move the remaining key and finish the migration */
    char *m = sh_redis_cmd(sp, "MIGRATE 127.0.0.1 %u %s 0 5000", dp, "other{migrating-key}");
    assert_non_null(m);
    free(m);
    for (int i = 0; i < sh_cluster_nnodes(cl); i++)
        free(sh_redis_cmd(sh_cluster_node_port(cl, i), "CLUSTER SETSLOT %d NODE %s", slot, did));
    assert_int_equal(strata_redis_sync_command(s, &rep, "GET %s", "other{migrating-key}"),
                     STRATA_OK);
    assert_string_equal(rep->str, "before");
    strata_redis_reply_free(rep);
    strata_redis_get_stats(strata_redis_sync_client(s), &st);
    assert_true(st.moved >= 1);
    /* the map learnt it: no more redirects */
    uint64_t moved = st.moved;
    for (int i = 0; i < 20; i++)
        assert_int_equal(strata_redis_sync_command(s, NULL, "GET %s", key), STRATA_OK);
    strata_redis_get_stats(strata_redis_sync_client(s), &st);
    assert_true(st.moved <= moved + 1);
    free(sid);
    free(did);
    strata_redis_sync_destroy(&s);
}

static void test_master_killed(void **state) {
    (void)state;
    strata_redis_sync *s = connect_cluster(500);
    const char *key = "survivor";
    int slot = (int)strata_redis_key_slot(key, strlen(key));
    assert_int_equal(strata_redis_sync_command(s, NULL, "SET %s 1", key), STRATA_OK);
    int m = sh_cluster_master_of_slot(cl, slot);
    assert_true(m >= 0);
    assert_int_equal(sh_cluster_kill_node(cl, m), STRATA_OK);
    uint64_t t0 = sh_now_ms(), ok_at = 0;
    int counts[32] = {0};
    while (sh_now_ms() - t0 < 30000) {
        int rc = strata_redis_sync_command(s, NULL, "INCR %s", key);
        counts[-rc < 32 ? -rc : 31]++;
        if (rc == STRATA_OK) {
            ok_at = sh_now_ms();
            break;
        }
        assert_true(rc == STRATA_EUNAVAIL || rc == STRATA_EUNKNOWN || rc == STRATA_ERETRY);
        strata_redis_sync_run_for(s, 20);
    }
    assert_true(ok_at > 0);
    fprintf(stderr, "cluster_failover_gap_ms=%llu unavail=%d unknown=%d retry=%d\n",
            (unsigned long long)(ok_at - t0), counts[-STRATA_EUNAVAIL], counts[-STRATA_EUNKNOWN],
            counts[-STRATA_ERETRY]);
    assert_true(sh_cluster_wait_ok(cl, slot, 20000));
    strata_redis_sync_destroy(&s);
    assert_int_equal(sh_cluster_restart_node(cl, m), STRATA_OK);
}

int main(void) {
    sh_init(230);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spread_and_crossslot),
        cmocka_unit_test(test_migrate_slot_ask_then_moved),
        cmocka_unit_test(test_master_killed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
