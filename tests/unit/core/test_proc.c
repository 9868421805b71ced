/*
 * test_proc.c: child processes: spawn, exec errors, group signals, stop with
 * grace, and PR_SET_PDEATHSIG (a child dies with a SIGKILLed parent).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "strata/proc.h"
#include "strata/status.h"

static void spawn_wait_and_stop(void **state) {
    (void)state;
    pid_t pid;
    char *argv[] = {"sleep", "30", NULL};
    assert_int_equal(strata_proc_spawn(argv, NULL, &pid), STRATA_OK);
    assert_int_equal(getpgid(pid), pid); /* own process group */
    assert_true(strata_proc_alive(pid));
    assert_int_equal(strata_proc_wait(pid, 0, NULL), STRATA_ETIMEDOUT);
    assert_int_equal(strata_proc_stop(pid, 2000), STRATA_OK);
    assert_false(strata_proc_alive(pid));

    char *t[] = {"true", NULL};
    assert_int_equal(strata_proc_spawn(t, NULL, &pid), STRATA_OK);
    int st = -1;
    assert_int_equal(strata_proc_wait(pid, 5000, &st), STRATA_OK);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void exec_failure_is_reported_at_once(void **state) {
    (void)state;
    pid_t pid = 0;
    char *argv[] = {"strata-no-such-binary-xyz", NULL};
    assert_int_equal(strata_proc_spawn(argv, NULL, &pid), STRATA_ENOTFOUND);
    strata_proc_opts o = {0};
    o.cwd = "/nonexistent-dir";
    char *t[] = {"true", NULL};
    assert_int_equal(strata_proc_spawn(t, &o, &pid), STRATA_ENOTFOUND);
}

static void stop_escalates_to_sigkill(void **state) {
    (void)state;
    pid_t pid;
    char *argv[] = {"sh", "-c", "trap '' TERM; sleep 30", NULL};
    assert_int_equal(strata_proc_spawn(argv, NULL, &pid), STRATA_OK);
    struct timespec d = {0, 100 * 1000 * 1000};
    nanosleep(&d, NULL); /* let sh install its trap; the outcome is checked either way */
    int rc = strata_proc_stop(pid, 200);
    assert_true(rc == STRATA_OK || rc == STRATA_ETIMEDOUT);
    assert_false(strata_proc_alive(pid));
}

static void child_dies_with_killed_parent(void **state) {
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t mid = fork();
    if (mid == 0) {
        close(fds[0]);
        pid_t grandchild;
        char *argv[] = {"sleep", "60", NULL};
        if (strata_proc_spawn(argv, NULL, &grandchild) != STRATA_OK)
            _exit(1);
        if (write(fds[1], &grandchild, sizeof grandchild) != (ssize_t)sizeof grandchild)
            _exit(1);
        pause();
        _exit(0);
    }
    close(fds[1]);
    pid_t gc = 0;
    assert_int_equal(read(fds[0], &gc, sizeof gc), (ssize_t)sizeof gc);
    close(fds[0]);
    assert_true(strata_proc_alive(gc));
    kill(mid, SIGKILL);
    waitpid(mid, NULL, 0);
    /* The grandchild is reparented and killed by the kernel: poll until it is gone. */
    int gone = 0;
    for (int i = 0; i < 500 && !gone; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)gc);
        FILE *f = fopen(path, "r");
        if (!f) {
            gone = 1;
            break;
        }
        char st = 0;
        int dummy;
        if (fscanf(f, "%d %*s %c", &dummy, &st) == 2 && st == 'Z')
            gone = 1; /* killed, waiting for its new parent to reap it */
        fclose(f);
        struct timespec d = {0, 10 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
    assert_true(gone);
}

static void free_port_is_bindable(void **state) {
    (void)state;
    uint16_t p = 0;
    assert_int_equal(strata_proc_free_port(&p), STRATA_OK);
    assert_true(p > 0);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(spawn_wait_and_stop),
        cmocka_unit_test(exec_failure_is_reported_at_once),
        cmocka_unit_test(stop_escalates_to_sigkill),
        cmocka_unit_test(child_dies_with_killed_parent),
        cmocka_unit_test(free_port_is_bindable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
