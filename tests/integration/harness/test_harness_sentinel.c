/*
 * test_harness_sentinel.c: the harness's Sentinel set: topology after start,
 * a killed master is replaced by a promoted replica (the promotion time is
 * measured and printed), the old master rejoins as a replica, and a paused
 * (SIGSTOP) master is failed over too and demoted when it wakes up.
 */
/* ctest-labels: slow sentinel redis */
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

static sh_sentinel_set *g_set;

static int group_setup(void **state) {
    (void)state;
    uint64_t t0 = sh_now_ms();
    if (sh_sentinel_start(&g_set) != 0)
        return -1;
    fprintf(stderr, "sentinel set (1 master, 2 replicas, 3 sentinels) ready in %llu ms\n",
            (unsigned long long)(sh_now_ms() - t0));
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    sh_sentinel_stop(&g_set);
    return 0;
}

static char *cmd(uint16_t port, const char *c) {
    char *r = sh_redis_cmd(port, c);
    assert_non_null(r);
    return r;
}

/* First line of ROLE: "master" / "slave" / "sentinel". */
static bool has_role(uint16_t port, const char *role) {
    char *r = sh_redis_cmd(port, "ROLE");
    bool ok = r && strncmp(r, role, strlen(role)) == 0 && r[strlen(role)] == '\n';
    free(r);
    return ok;
}

typedef struct follow_ctx {
    uint16_t replica, master;
} follow_ctx;

/* ROLE of a replica: slave \n host \n port \n state \n offset */
static bool follows(void *vctx) {
    follow_ctx *f = vctx;
    char *r = sh_redis_cmd(f->replica, "ROLE");
    char expect[64];
    snprintf(expect, sizeof expect, "slave\n127.0.0.1\n%u\nconnected\n", f->master);
    bool ok = r && strncmp(r, expect, strlen(expect)) == 0;
    free(r);
    return ok;
}

static void test_topology(void **state) {
    (void)state;
    assert_int_equal(sh_sentinel_master_index(g_set), 0);
    uint16_t m = sh_sentinel_node_port(g_set, 0);
    assert_int_equal(sh_sentinel_master_port(g_set), m);
    char url[160];
    snprintf(url, sizeof url,
             "redis-sentinel://127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u/strata-master",
             sh_sentinel_sentinel_port(g_set, 0), sh_sentinel_sentinel_port(g_set, 1),
             sh_sentinel_sentinel_port(g_set, 2));
    assert_string_equal(sh_sentinel_url(g_set), url);
    assert_true(has_role(m, "master"));
    for (int i = 1; i < 3; i++) {
        follow_ctx f = {sh_sentinel_node_port(g_set, i), m};
        assert_true(follows(&f));
        assert_true(sh_sentinel_node_pid(g_set, i) > 0);
    }
    for (int i = 0; i < 3; i++)
        assert_true(has_role(sh_sentinel_sentinel_port(g_set, i), "sentinel"));
    assert_int_equal(sh_redis_set_wait(m, "before-failover", "1", 2), 2);
    assert_int_equal(sh_sentinel_node_port(g_set, 3), 0);
    assert_int_equal(sh_sentinel_kill_node(g_set, 7), STRATA_EINVAL);
}

static void test_master_kill_promotes_replica(void **state) {
    (void)state;
    int old_idx = sh_sentinel_master_index(g_set);
    assert_true(old_idx >= 0);
    uint16_t old = sh_sentinel_node_port(g_set, old_idx);
    assert_int_equal(sh_redis_set_wait(old, "k-kill", "v", 2), 2);

    assert_int_equal(sh_sentinel_kill_node(g_set, old_idx), 0);
    uint64_t t0 = sh_now_ms();
    uint16_t now_master = sh_sentinel_wait_failover(g_set, old, 20000);
    uint64_t took = sh_now_ms() - t0;
    fprintf(stderr,
            "sentinel promoted a replica %llu ms after the master was SIGKILLed "
            "(down-after-milliseconds 1000)\n",
            (unsigned long long)took);
    assert_int_not_equal(now_master, 0);
    assert_int_not_equal(now_master, old);
    int new_idx = sh_sentinel_master_index(g_set);
    assert_true(new_idx >= 0 && new_idx != old_idx);
    assert_int_equal(sh_sentinel_node_port(g_set, new_idx), now_master);
    assert_true(has_role(now_master, "master"));
    char *v = cmd(now_master, "GET k-kill");
    assert_string_equal(v, "v"); /* acknowledged by both replicas before the kill */
    free(v);

    /* the other replica follows the new master */
    int other = 3 - old_idx - new_idx;
    follow_ctx f = {sh_sentinel_node_port(g_set, other), now_master};
    assert_true(sh_wait_until(15000, 50, follows, &f));

    /* the old master comes back as a replica of the new one */
    assert_int_equal(sh_sentinel_restart_node(g_set, old_idx), 0);
    assert_int_equal(sh_sentinel_node_port(g_set, old_idx), old);
    follow_ctx back = {old, now_master};
    assert_true(sh_wait_until(15000, 50, follows, &back));
    char *v2 = cmd(old, "GET k-kill");
    assert_string_equal(v2, "v");
    free(v2);
}

static void test_paused_master_is_failed_over_and_demoted(void **state) {
    (void)state;
    int old_idx = sh_sentinel_master_index(g_set);
    assert_true(old_idx >= 0);
    uint16_t old = sh_sentinel_node_port(g_set, old_idx);
    assert_int_equal(sh_sentinel_pause_node(g_set, old_idx), 0);
    uint64_t t0 = sh_now_ms();
    uint16_t now_master = sh_sentinel_wait_failover(g_set, old, 20000);
    fprintf(stderr, "sentinel promoted a replica %llu ms after the master was SIGSTOPped\n",
            (unsigned long long)(sh_now_ms() - t0));
    assert_int_not_equal(now_master, 0);
    assert_int_equal(sh_sentinel_resume_node(g_set, old_idx), 0);
    /* The sentinels reconfigure the woken old master as a replica. */
    t0 = sh_now_ms();
    follow_ctx f = {old, now_master};
    assert_true(sh_wait_until(20000, 50, follows, &f));
    fprintf(stderr, "the woken old master was demoted to a replica %llu ms after SIGCONT\n",
            (unsigned long long)(sh_now_ms() - t0));
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topology),
        cmocka_unit_test(test_master_kill_promotes_replica),
        cmocka_unit_test(test_paused_master_is_failed_over_and_demoted),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
