/*
 * test_server_10k.c: the server holds 10,000 concurrent idle connections.
 *
 * The client is a separate process (this binary re-executed with
 * `--client PORT N`), so the two sides have their own descriptor tables; both
 * raise RLIMIT_NOFILE (the server itself raises its soft limit to fit
 * --max-connections).  The client opens N connections and reports; the test
 * checks the server counts them all, then the client sends a request on every
 * 250th connection (all must answer) and closes everything; the count must
 * return to zero.
 */
/* ctest-link: strata_server */
/* ctest-serial */
/* ctest-timeout: 300 */
#include "integration/server/server_test_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define NCONN 10000

static const char *g_self;

static int client_main(int port, int n) {
    struct rlimit rl = {(rlim_t)n + 256, (rlim_t)n + 256};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        perror("client setrlimit");
        return 2;
    }
    int *fds = calloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n; i++) {
        fds[i] = tcp_connect_port(port);
        if (fds[i] < 0) {
            fprintf(stderr, "client: connect %d failed: %s\n", i, strerror(errno));
            return 3;
        }
    }
    /* tell the parent, wait for its go */
    if (write(1, "R", 1) != 1)
        return 4;
    char go;
    if (read(0, &go, 1) != 1)
        return 5;
    int bad = 0;
    for (int i = 0; i < n; i += 250) {
        tconn *c = calloc(1, sizeof *c);
        c->fd = fds[i];
        tc_sends(c, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        tresp r;
        if (tc_response(c, &r) != 0 || r.status != 200)
            bad++;
        tresp_free(&r);
        free(c);
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
    if (bad)
        fprintf(stderr, "client: %d requests failed\n", bad);
    return bad ? 6 : 0;
}

static void test_10k_idle(void **state) {
    (void)state;
    tsrv T;
    static const char *const flags[] = {"--max-connections", "12000", "--idle-timeout", "120s",
                                        NULL};
    tsrv_start(&T, flags, NULL, NULL);

    int to_child[2], from_child[2];
    assert_int_equal(pipe2(to_child, O_CLOEXEC), 0);
    assert_int_equal(pipe2(from_child, O_CLOEXEC), 0);
    char port[16], n[16];
    snprintf(port, sizeof port, "%d", T.port);
    snprintf(n, sizeof n, "%d", NCONN);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        char *argv[] = {(char *)g_self, "--client", port, n, NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    char ready = 0;
    struct pollfd p = {.fd = from_child[0], .events = POLLIN};
    assert_true(poll(&p, 1, 120000) == 1);
    assert_int_equal(read(from_child[0], &ready, 1), 1);
    assert_int_equal(ready, 'R');
    /* the server has accepted them all (plus the connection asking) */
    assert_true(tsrv_wait_connections(T.port, NCONN, 30000));
    assert_int_equal(write(to_child[1], "G", 1), 1);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_true(tsrv_wait_connections(T.port, 0, 30000));
    close(to_child[1]);
    close(from_child[0]);
    tsrv_stop(&T);
}

int main(int argc, char **argv) {
    g_self = argv[0];
    if (argc == 4 && strcmp(argv[1], "--client") == 0)
        return client_main(atoi(argv[2]), atoi(argv[3]));
    sh_init(280);
    strata_log_set_level(STRATA_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_10k_idle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
