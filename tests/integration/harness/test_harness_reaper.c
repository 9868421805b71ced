/*
 * test_harness_reaper.c: nothing a test binary starts outlives it.
 *
 * Each case runs this binary again as a child "test" (argv: --child MODE)
 * that starts a redis-server through the harness, reports its port, pid and
 * temp dir on stdout, and then dies in one way: SIGKILL (only
 * PR_SET_PDEATHSIG can help), SIGTERM/SIGINT (the signal handlers), abort(),
 * a plain exit without stopping anything (atexit), a failed cmocka assert,
 * or a hang past its deadline (the watchdog).  This process is a child
 * subreaper, so orphaned grandchildren are reparented here and we can see
 * how they died.
 */
/* ctest-labels: redis */
#include <errno.h>
#include <fcntl.h>
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness/harness.h"
#include "strata/proc.h"

/* ---- the child side ----------------------------------------------------------------- */

static sh_redis *g_child_redis;

static void child_report(void) {
    printf("READY %u %d %s\n", sh_redis_port(g_child_redis), (int)sh_redis_pid(g_child_redis),
           sh_tmpdir());
    fflush(stdout);
}

static void child_fail_test(void **state) {
    (void)state;
    sh_redis *r = NULL; /* never stopped: the assert below longjmps past the end */
    assert_int_equal(sh_redis_start(&r, NULL), 0);
    g_child_redis = r;
    child_report();
    char c;
    if (read(0, &c, 1) < 0)
        return;
    assert_int_equal(1, 2); /* fails on purpose */
}

static int child_main(const char *mode) {
    if (strcmp(mode, "fail") == 0) {
        sh_init(30);
        const struct CMUnitTest t[] = {cmocka_unit_test(child_fail_test)};
        int failed = cmocka_run_group_tests(t, NULL, NULL);
        return failed ? 1 : 0; /* returning from main runs the atexit reaper */
    }
    sh_init(strcmp(mode, "watchdog") == 0 ? 2 : 30);
    if (sh_redis_start(&g_child_redis, NULL) != 0)
        return 3;
    child_report();
    if (strcmp(mode, "hold") == 0 || strcmp(mode, "watchdog") == 0) {
        for (;;)
            pause();
    }
    char c;
    if (read(0, &c, 1) < 0)
        return 4;
    if (strcmp(mode, "abort") == 0)
        abort();
    exit(0); /* "exit": without stopping the redis */
}

/* ---- the parent side ------------------------------------------------------------------ */

typedef struct child {
    pid_t pid;
    int in;  /* write end: the child's stdin */
    int out; /* read end: the child's stdout */
    uint16_t redis_port;
    pid_t redis_pid;
    char dir[PATH_MAX];
} child;

static void start_child(child *ch, const char *mode) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    int to[2], from[2];
    assert_int_equal(pipe(to), 0);
    assert_int_equal(pipe(from), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[0]);
        close(to[1]);
        close(from[0]);
        close(from[1]);
        signal(SIGPIPE, SIG_DFL);
        char *argv[] = {exe, (char *)"--child", (char *)mode, NULL};
        execv(exe, argv);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    ch->pid = pid;
    ch->in = to[1];
    ch->out = from[0];
    /* read lines until READY (cmocka also prints on stdout), with a deadline */
    char line[PATH_MAX + 64];
    uint64_t deadline = sh_now_ms() + 20000;
    do {
        size_t len = 0;
        while (len < sizeof line - 1 && (len == 0 || line[len - 1] != '\n')) {
            uint64_t now = sh_now_ms();
            assert_true(now < deadline);
            struct pollfd pfd = {ch->out, POLLIN, 0};
            if (poll(&pfd, 1, (int)(deadline - now)) <= 0)
                continue;
            ssize_t r = read(ch->out, line + len, 1);
            assert_true(r == 1);
            len++;
        }
        line[len] = '\0';
    } while (strncmp(line, "READY ", 6) != 0);
    unsigned port = 0;
    int rpid = 0;
    assert_int_equal(sscanf(line, "READY %u %d %4095s", &port, &rpid, ch->dir), 3);
    ch->redis_port = (uint16_t)port;
    ch->redis_pid = rpid;
    char *pong = sh_redis_cmd(ch->redis_port, "PING");
    assert_non_null(pong);
    assert_string_equal(pong, "PONG");
    free(pong);
    assert_int_equal(sh_count_processes_under(ch->dir), 1);
}

/* Gone = reaped by us (we are a subreaper), or no longer in /proc, or a zombie. */
static bool pid_gone(pid_t pid, int *how) {
    int st = 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
        if (how)
            *how = st;
        return true;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    char buf[512] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *rp = strrchr(buf, ')');
    return rp && (rp[2] == 'Z' || rp[2] == 'X') && r != 0;
}

typedef struct gone_ctx {
    pid_t pid;
    int how;
    bool gone;
} gone_ctx;

static bool redis_gone(void *vctx) {
    gone_ctx *g = vctx;
    if (!g->gone)
        g->gone = pid_gone(g->pid, &g->how);
    return g->gone;
}

static int g_redis_how = -1; /* wait status of the orphaned redis, if we reaped it */

static int finish_child(child *ch, int *child_status) {
    int st = 0;
    assert_int_equal(strata_proc_wait(ch->pid, 20000, &st), 0);
    if (child_status)
        *child_status = st;
    close(ch->in);
    close(ch->out);
    gone_ctx g = {.pid = ch->redis_pid, .how = -1};
    uint64_t t0 = sh_now_ms();
    assert_true(sh_wait_until(5000, 5, redis_gone, &g));
    fprintf(stderr, "  redis pid %d gone %llu ms after its test process exited\n",
            (int)ch->redis_pid, (unsigned long long)(sh_now_ms() - t0));
    g_redis_how = g.how;
    assert_int_equal(sh_count_processes_under(ch->dir), 0);
    assert_null(sh_redis_cmd(ch->redis_port, "PING"));
    struct stat sb;
    return stat(ch->dir, &sb) == 0;
}

static void remove_dir(const char *dir) {
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "rm -rf '%s'", dir) > 0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

static void test_sigkill_of_test_kills_its_redis(void **state) {
    (void)state;
    child ch;
    start_child(&ch, "hold");
    assert_int_equal(kill(ch.pid, SIGKILL), 0);
    int st = 0;
    int dir_left = finish_child(&ch, &st);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGKILL);
    /* The orphaned redis was reparented to us (subreaper): PDEATHSIG killed it. */
    assert_true(g_redis_how != -1);
    assert_true(WIFSIGNALED(g_redis_how));
    assert_int_equal(WTERMSIG(g_redis_how), SIGKILL);
    assert_true(dir_left); /* nobody could remove it: the next sh_init garbage-collects it */
    remove_dir(ch.dir);
}

static void test_sigterm_of_test_kills_its_redis(void **state) {
    (void)state;
    child ch;
    start_child(&ch, "hold");
    assert_int_equal(kill(ch.pid, SIGTERM), 0);
    int st = 0;
    finish_child(&ch, &st);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGTERM);
    remove_dir(ch.dir);
}

static void test_sigint_of_test_kills_its_redis(void **state) {
    (void)state;
    child ch;
    start_child(&ch, "hold");
    assert_int_equal(kill(ch.pid, SIGINT), 0);
    int st = 0;
    finish_child(&ch, &st);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGINT);
    remove_dir(ch.dir);
}

static void test_abort_kills_its_redis(void **state) {
    (void)state;
    child ch;
    start_child(&ch, "abort");
    assert_int_equal(write(ch.in, "x", 1), 1);
    int st = 0;
    finish_child(&ch, &st);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
    remove_dir(ch.dir);
}

static void test_exit_without_stop_reaps_and_removes_dir(void **state) {
    (void)state;
    child ch;
    start_child(&ch, "exit");
    assert_int_equal(write(ch.in, "x", 1), 1);
    int st = 0;
    int dir_left = finish_child(&ch, &st);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_false(dir_left);
}

static void test_failed_assert_reaps_and_removes_dir(void **state) {
    (void)state;
    child ch;
    fprintf(stderr, "  (the child's failing test below is on purpose)\n");
    start_child(&ch, "fail");
    assert_int_equal(write(ch.in, "x", 1), 1);
    int st = 0;
    int dir_left = finish_child(&ch, &st);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 1); /* cmocka: one failed test */
    assert_false(dir_left);
}

static void test_watchdog_kills_hung_test(void **state) {
    (void)state;
    child ch;
    uint64_t t0 = sh_now_ms();
    start_child(&ch, "watchdog"); /* deadline 2 s, then hangs */
    int st = 0;
    int dir_left = finish_child(&ch, &st);
    uint64_t el = sh_now_ms() - t0;
    fprintf(stderr, "  watchdog fired after %llu ms (deadline 2000 ms)\n", (unsigned long long)el);
    assert_true(el >= 1500);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 124);
    assert_false(dir_left);
}

static void test_leftover_detection(void **state) {
    (void)state;
    int before = sh_leftover_processes();
    /* Our own running redis is not a leftover: its test (this process) is alive. */
    sh_redis *r = NULL;
    assert_int_equal(sh_redis_start(&r, NULL), 0);
    assert_int_equal(sh_leftover_processes(), before);
    sh_redis_stop(&r);
    /* A process in the dir of a test that no longer runs is. */
    char *dir = NULL;
    assert_true(asprintf(&dir, "%s/fake-leftover-%d", sh_harness_root(), (int)getpid()) > 0);
    assert_int_equal(mkdir(dir, 0755), 0);
    char *owner = NULL;
    assert_true(asprintf(&owner, "%s/.owner", dir) > 0);
    FILE *f = fopen(owner, "w");
    assert_non_null(f);
    fprintf(f, "%d 1\n", (int)INT32_MAX); /* a pid that cannot exist */
    fclose(f);
    char *argv[] = {(char *)"sleep", (char *)"60", NULL};
    strata_proc_opts o = {.cwd = dir};
    pid_t pid = 0;
    assert_int_equal(strata_proc_spawn(argv, &o, &pid), 0);
    assert_int_equal(sh_leftover_processes(), before + 1);
    assert_true(sh_reap_leftovers() >= 1);
    assert_int_equal(strata_proc_wait(pid, 5000, NULL), 0);
    assert_int_equal(sh_leftover_processes(), before);
    remove_dir(dir);
    free(owner);
    free(dir);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--child") == 0)
        return child_main(argv[2]);
    sh_init(100);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigkill_of_test_kills_its_redis),
        cmocka_unit_test(test_sigterm_of_test_kills_its_redis),
        cmocka_unit_test(test_sigint_of_test_kills_its_redis),
        cmocka_unit_test(test_abort_kills_its_redis),
        cmocka_unit_test(test_exit_without_stop_reaps_and_removes_dir),
        cmocka_unit_test(test_failed_assert_reaps_and_removes_dir),
        cmocka_unit_test(test_watchdog_kills_hung_test),
        cmocka_unit_test(test_leftover_detection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
