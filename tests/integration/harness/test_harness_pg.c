/*
 * test_harness_pg.c: the harness's PostgreSQL 15: start and query, the
 * server runs unprivileged, kill/restart keeps committed data, pause/resume,
 * and a test process that is SIGKILLed takes its postmaster and backends
 * with it.
 */
/* ctest-labels: slow postgres */
#include <fcntl.h>
#include <libpq-fe.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness/harness.h"
#include "strata/proc.h"

static sh_pg *g_pg; /* shared by the tests of this binary: initdb is the slow part */

static int group_setup(void **state) {
    (void)state;
    uint64_t t0 = sh_now_ms();
    if (sh_pg_start(&g_pg) != 0)
        return -1;
    fprintf(stderr, "postgres ready (initdb + start + CREATE DATABASE) in %llu ms\n",
            (unsigned long long)(sh_now_ms() - t0));
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    sh_pg_stop(&g_pg);
    return 0;
}

static void assert_query(const char *expect, const char *sql) {
    char *got = sh_pg_query(g_pg, sql);
    assert_non_null(got);
    assert_string_equal(got, expect);
    free(got);
}

static char proc_state(pid_t pid) {
    char path[64], buf[512] = {0};
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *r = strrchr(buf, ')');
    return r ? r[2] : 0;
}

static long proc_uid(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long uid = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Uid: %ld", &uid) == 1)
            break;
    fclose(f);
    return uid;
}

static void test_query(void **state) {
    (void)state;
    assert_query("2", "SELECT 1 + 1");
    char *v = sh_pg_query(g_pg, "SELECT version()");
    assert_non_null(v);
    assert_true(strncmp(v, "PostgreSQL 15", 13) == 0);
    free(v);
    assert_query("strata", "SELECT current_database()");
    assert_null(sh_pg_query(g_pg, "CREATE TABLE t (k text PRIMARY KEY, v int)")); /* no rows */
    assert_null(sh_pg_query(g_pg, "INSERT INTO t VALUES ('a', 1), ('b', 2)"));
    assert_query("3", "SELECT sum(v) FROM t");
    assert_query("", "SELECT NULL");
    assert_null(sh_pg_query(g_pg, "SELECT * FROM no_such_table")); /* error: NULL, printed */
    char url[96];
    snprintf(url, sizeof url, "postgres://strata@127.0.0.1:%u/strata", sh_pg_port(g_pg));
    assert_string_equal(sh_pg_url(g_pg), url);
    /* The URL works with libpq as is. */
    PGconn *c = PQconnectdb(sh_pg_url(g_pg));
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PQfinish(c);
}

static void test_runs_unprivileged(void **state) {
    (void)state;
    pid_t pid = sh_pg_pid(g_pg);
    assert_true(pid > 0);
    long uid = proc_uid(pid);
    if (geteuid() == 0)
        assert_true(uid > 0);
    else
        assert_int_equal(uid, (long)geteuid());
    assert_non_null(strstr(sh_pg_dir(g_pg), sh_tmpdir()));
}

static void test_kill_restart_keeps_data(void **state) {
    (void)state;
    assert_null(sh_pg_query(g_pg, "CREATE TABLE durable (x int)"));
    assert_null(sh_pg_query(g_pg, "INSERT INTO durable VALUES (42)"));
    uint16_t port = sh_pg_port(g_pg);
    pid_t old = sh_pg_pid(g_pg);
    /* an open session: its backend must go too */
    PGconn *c = PQconnectdb(sh_pg_url(g_pg));
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    assert_int_equal(sh_pg_kill(g_pg), 0);
    assert_int_equal(sh_pg_pid(g_pg), 0);
    assert_int_equal(sh_count_processes_under(sh_pg_dir(g_pg)), 0);
    assert_int_equal(kill(old, 0), -1);
    PQfinish(c);
    assert_null(sh_pg_query(g_pg, "SELECT 1"));
    uint64_t t0 = sh_now_ms();
    assert_int_equal(sh_pg_restart(g_pg), 0);
    fprintf(stderr, "postgres restarted (crash recovery) in %llu ms\n",
            (unsigned long long)(sh_now_ms() - t0));
    assert_int_equal(sh_pg_port(g_pg), port);
    assert_query("42", "SELECT x FROM durable");
    assert_int_equal(sh_pg_restart(g_pg), STRATA_EEXIST);
}

static void test_pause_resume(void **state) {
    (void)state;
    PGconn *c = PQconnectdb(sh_pg_url(g_pg));
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    assert_int_equal(sh_pg_pause(g_pg), 0);
    assert_int_equal(proc_state(sh_pg_pid(g_pg)), 'T');
    int backend = PQbackendPID(c);
    assert_int_equal(proc_state(backend), 'T'); /* backends too, though in their own sessions */
    assert_int_equal(sh_pg_resume(g_pg), 0);
    assert_int_not_equal(proc_state(sh_pg_pid(g_pg)), 'T');
    PGresult *r = PQexec(c, "SELECT 7");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "7");
    PQclear(r);
    PQfinish(c);
}

/* ---- a SIGKILLed test process takes its postgres along ------------------------------ */

static int child_main(void) {
    sh_init(60);
    sh_pg *p = NULL;
    if (sh_pg_start(&p) != 0)
        return 3;
    printf("READY %u %d %s\n", sh_pg_port(p), (int)sh_pg_pid(p), sh_pg_dir(p));
    fflush(stdout);
    for (;;)
        pause();
}

static bool nothing_under(void *dir) { return sh_count_processes_under(dir) == 0; }

static void test_sigkill_of_test_kills_its_postgres(void **state) {
    (void)state;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    int from[2];
    assert_int_equal(pipe(from), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(from[1], 1);
        close(from[0]);
        close(from[1]);
        char *argv[] = {exe, (char *)"--child", NULL};
        execv(exe, argv);
        _exit(127);
    }
    close(from[1]);
    FILE *f = fdopen(from[0], "r");
    assert_non_null(f);
    char line[PATH_MAX + 64] = {0};
    assert_non_null(fgets(line, sizeof line, f)); /* blocks until READY or the child dies */
    fclose(f);
    unsigned port = 0;
    int pm = 0;
    char dir[PATH_MAX];
    assert_int_equal(sscanf(line, "READY %u %d %4095s", &port, &pm, dir), 3);
    char *ci = NULL;
    assert_true(asprintf(&ci, "host=127.0.0.1 port=%u user=strata dbname=strata", port) > 0);
    PGconn *c = PQconnectdb(ci); /* a backend exists */
    free(ci);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    assert_true(sh_count_processes_under(dir) >= 2);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(strata_proc_wait(pid, 10000, NULL), 0);
    uint64_t t0 = sh_now_ms();
    bool gone = sh_wait_until(10000, 10, nothing_under, dir);
    fprintf(stderr, "postgres processes %s %llu ms after their test process was SIGKILLed\n",
            gone ? "gone" : "STILL THERE", (unsigned long long)(sh_now_ms() - t0));
    if (!gone) {
        sh_leftover_processes();
        sh_reap_leftovers();
    }
    PQfinish(c);
    char *cmd = NULL;
    *strrchr(dir, '/') = '\0'; /* the child's whole temp dir */
    assert_true(asprintf(&cmd, "rm -rf '%s'", dir) > 0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    assert_true(gone);
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--child") == 0)
        return child_main();
    sh_init(110);
    prctl(PR_SET_CHILD_SUBREAPER, 1); /* orphaned postgres processes come back to us */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query),
        cmocka_unit_test(test_runs_unprivileged),
        cmocka_unit_test(test_kill_restart_keeps_data),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_sigkill_of_test_kills_its_postgres),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
