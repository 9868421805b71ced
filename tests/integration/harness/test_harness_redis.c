/*
 * test_harness_redis.c: the harness's standalone redis-server: start/stop,
 * sh_redis_cmd reply formatting, kill/restart with persistence, pause/resume,
 * extra config, several servers at once, sh_wait_until.
 */
/* ctest-labels: redis */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness/harness.h"

static void assert_cmd(uint16_t port, const char *expect, const char *cmd) {
    char *got = sh_redis_cmd(port, cmd);
    assert_non_null(got);
    assert_string_equal(got, expect);
    free(got);
}

static void test_start_stop(void **state) {
    (void)state;
    sh_redis *r = NULL;
    uint64_t t0 = sh_now_ms();
    assert_int_equal(sh_redis_start(&r, NULL), 0);
    fprintf(stderr, "redis-server ready in %llu ms\n", (unsigned long long)(sh_now_ms() - t0));
    uint16_t port = sh_redis_port(r);
    pid_t pid = sh_redis_pid(r);
    assert_true(port > 0);
    assert_true(pid > 0);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%u", port);
    assert_string_equal(sh_redis_url(r), url);
    char *dir = strdup(sh_redis_dir(r));
    assert_non_null(strstr(dir, sh_tmpdir()));
    assert_int_equal(sh_count_processes_under(dir), 1);
    assert_cmd(port, "PONG", "PING");
    sh_redis_stop(&r);
    assert_null(r);
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(sh_count_processes_under(dir), 0);
    assert_null(sh_redis_cmd(port, "PING"));
    sh_redis_stop(&r); /* NULL is a no-op */
    free(dir);
}

static void test_cmd_replies(void **state) {
    (void)state;
    sh_redis *r = NULL;
    assert_int_equal(sh_redis_start(&r, NULL), 0);
    uint16_t p = sh_redis_port(r);
    assert_cmd(p, "OK", "SET k v1");
    assert_cmd(p, "v1", "GET k");
    assert_cmd(p, "(nil)", "GET missing");
    assert_cmd(p, "1", "INCR n");
    assert_cmd(p, "3", "RPUSH l a b c");
    assert_cmd(p, "a\nb\nc", "LRANGE l 0 -1");
    char *err = sh_redis_cmd(p, "INCR k");
    assert_non_null(err);
    assert_true(strncmp(err, "ERR ", 4) == 0);
    free(err);
    /* binary-safe argument through hiredis's %b */
    char *ok = sh_redis_cmd(p, "SET %s %b", "bin", "a\0b", (size_t)3);
    assert_string_equal(ok, "OK");
    free(ok);
    assert_cmd(p, "3", "STRLEN bin");
    sh_redis_stop(&r);
}

static void test_kill_restart_keeps_aof_data(void **state) {
    (void)state;
    sh_redis *r = NULL;
    assert_int_equal(sh_redis_start(&r, "appendonly yes\nappendfsync always\n"), 0);
    uint16_t port = sh_redis_port(r);
    pid_t old = sh_redis_pid(r);
    assert_cmd(port, "OK", "SET durable yes");
    assert_int_equal(sh_redis_kill(r), 0);
    assert_int_equal(sh_redis_pid(r), 0);
    assert_int_equal(kill(old, 0), -1);
    assert_null(sh_redis_cmd(port, "PING"));
    assert_int_equal(sh_redis_kill(r), STRATA_ENOTFOUND);
    assert_int_equal(sh_redis_restart(r), 0);
    assert_int_equal(sh_redis_port(r), port);
    assert_true(sh_redis_pid(r) > 0);
    assert_cmd(port, "yes", "GET durable");
    assert_int_equal(sh_redis_restart(r), STRATA_EEXIST); /* already running */
    sh_redis_stop(&r);
}

static void test_pause_resume(void **state) {
    (void)state;
    sh_redis *r = NULL;
    assert_int_equal(sh_redis_start(&r, NULL), 0);
    uint16_t port = sh_redis_port(r);
    assert_int_equal(sh_redis_pause(r), 0);
    uint64_t t0 = sh_now_ms();
    assert_null(sh_redis_cmd(port, "PING")); /* times out: stopped process */
    assert_true(sh_now_ms() - t0 >= 1000);
    assert_int_equal(sh_redis_resume(r), 0);
    assert_cmd(port, "PONG", "PING");
    /* stopping a paused server works too */
    assert_int_equal(sh_redis_pause(r), 0);
    pid_t pid = sh_redis_pid(r);
    sh_redis_stop(&r);
    assert_int_equal(kill(pid, 0), -1);
}

static void test_extra_conf(void **state) {
    (void)state;
    sh_redis *r = NULL;
    assert_int_equal(sh_redis_start(&r, "maxmemory 10mb\nmaxmemory-policy volatile-lfu\n"), 0);
    assert_cmd(sh_redis_port(r), "maxmemory\n10485760", "CONFIG GET maxmemory");
    assert_cmd(sh_redis_port(r), "maxmemory-policy\nvolatile-lfu", "CONFIG GET maxmemory-policy");
    sh_redis_stop(&r);
    /* a bad config is refused with a clean error, not a hang */
    uint64_t t0 = sh_now_ms();
    assert_true(sh_redis_start(&r, "no-such-directive 1\n") < 0);
    assert_null(r);
    assert_true(sh_now_ms() - t0 < 10000);
}

static void test_several_servers(void **state) {
    (void)state;
    enum { N = 5 };
    sh_redis *rs[N] = {0};
    for (int i = 0; i < N; i++)
        assert_int_equal(sh_redis_start(&rs[i], NULL), 0);
    for (int i = 0; i < N; i++) {
        for (int j = i + 1; j < N; j++)
            assert_int_not_equal(sh_redis_port(rs[i]), sh_redis_port(rs[j]));
        char *v = sh_redis_cmd(sh_redis_port(rs[i]), "SET who %d", i);
        assert_string_equal(v, "OK");
        free(v);
    }
    for (int i = 0; i < N; i++) {
        char expect[16];
        snprintf(expect, sizeof expect, "%d", i);
        assert_cmd(sh_redis_port(rs[i]), expect, "GET who");
        sh_redis_stop(&rs[i]);
    }
}

static bool count_to_three(void *ctx) { return ++*(int *)ctx >= 3; }
static bool never(void *ctx) {
    ++*(int *)ctx;
    return false;
}

static void test_wait_until(void **state) {
    (void)state;
    int n = 0;
    assert_true(sh_wait_until(5000, 1, count_to_three, &n));
    assert_int_equal(n, 3);
    n = 0;
    uint64_t t0 = sh_now_ms();
    assert_false(sh_wait_until(100, 10, never, &n));
    uint64_t el = sh_now_ms() - t0;
    assert_true(el >= 100);
    assert_true(n >= 2);
}

int main(void) {
    sh_init(100);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_stop),
        cmocka_unit_test(test_cmd_replies),
        cmocka_unit_test(test_kill_restart_keeps_aof_data),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_extra_conf),
        cmocka_unit_test(test_several_servers),
        cmocka_unit_test(test_wait_until),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
