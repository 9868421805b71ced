/*
 * test_cli.c: the `strata` binary from the outside: exit codes and one-line
 * errors for bad input, and the `strata serve` lifecycle on embedded defaults
 * (managed Redis + SQLite): ready, Ctrl-C/SIGTERM stops everything, a second
 * run works, a second server on the same var dir is refused, a SIGKILLed
 * strata takes its Redis with it, a crashed managed Redis is restarted.
 */
/* ctest-labels: cli */
/* ctest-timeout: 180 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness/harness.h"
#include "strata/proc.h"
#include "strata/status.h"

/* Every server in this test binds a free port so tests can run side by side. */
#define LISTEN_ANY "--listen=127.0.0.1:0"

static const char *bin(void) {
    const char *b = getenv("STRATA_BIN");
    return b ? b : "strata";
}

/* Runs the binary with args (NULL-terminated), captures stderr+stdout; returns exit code. */
static int run(char **out, const char *a1, ...) {
    char cmd[4096];
    int n = snprintf(cmd, sizeof cmd, "'%s'", bin());
    va_list ap;
    va_start(ap, a1);
    for (const char *a = a1; a; a = va_arg(ap, const char *))
        n += snprintf(cmd + n, sizeof cmd - (size_t)n, " '%s'", a);
    va_end(ap);
    snprintf(cmd + n, sizeof cmd - (size_t)n, " 2>&1 </dev/null");
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 65536, len = 0;
    char *buf = calloc(1, cap);
    size_t r;
    while ((r = fread(buf + len, 1, cap - len - 1, p)) > 0)
        len += r;
    int st = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int lines(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void bad_input_gives_one_line_and_sysexits_code(void **state) {
    (void)state;
    char *out;
    assert_int_equal(run(&out, "frobnicate", NULL), 64);
    assert_non_null(strstr(out, "unknown command \"frobnicate\""));
    assert_int_equal(lines(out), 1);
    free(out);
    assert_int_equal(run(&out, NULL), 64);
    free(out);
    assert_int_equal(run(&out, "serve", "--no-such-flag", NULL), 64);
    assert_non_null(strstr(out, "--no-such-flag"));
    assert_int_equal(lines(out), 1);
    free(out);
    assert_int_equal(run(&out, "serve", "--redis-maxmemory", "lots", NULL), 78);
    assert_non_null(strstr(out, "--redis-maxmemory"));
    assert_non_null(strstr(out, "\"lots\""));
    assert_int_equal(lines(out), 1);
    free(out);
    assert_int_equal(run(&out, "serve", "--log-level=loud", NULL), 78);
    assert_non_null(strstr(out, "error|warn|info|debug"));
    free(out);
    assert_int_equal(run(&out, "serve", "--redis", "http://x", NULL), 78);
    assert_int_equal(lines(out), 1);
    free(out);
    assert_int_equal(run(&out, "serve", "--db", "mysql://x", NULL), 78);
    assert_int_equal(lines(out), 1);
    free(out);
    assert_int_equal(run(&out, "serve", "--config", "/nonexistent/strata.conf", NULL), 66);
    assert_non_null(strstr(out, "/nonexistent/strata.conf"));
    assert_int_equal(lines(out), 1);
    free(out);
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/bad.conf", sh_tmpdir());
    FILE *f = fopen(cfg, "w");
    fprintf(f, "redis_maxmemory = -3\n");
    fclose(f);
    assert_int_equal(run(&out, "serve", "--config", cfg, NULL), 78);
    assert_non_null(strstr(out, "line 1"));
    free(out);
    assert_int_equal(run(&out, "bench", "no-such-backend", NULL), 64);
    free(out);
}

static void help_and_version(void **state) {
    (void)state;
    char *out;
    assert_int_equal(run(&out, "version", NULL), 0);
    assert_non_null(strstr(out, "strata "));
    free(out);
    assert_int_equal(run(&out, "serve", "--help", NULL), 0);
    /* every option of the table, with its default and env name */
    assert_non_null(strstr(out, "--var-dir"));
    assert_non_null(strstr(out, "default: ./var"));
    assert_non_null(strstr(out, "env: STRATA_REDIS_MAXMEMORY"));
    free(out);
    assert_int_equal(run(&out, "help", NULL), 0);
    assert_non_null(strstr(out, "serve"));
    free(out);
}

typedef struct {
    char log[1024];
    const char *needle;
    int count;
} log_wait;

static int count_in_file(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static bool log_has(void *ctx) {
    log_wait *w = ctx;
    return count_in_file(w->log, w->needle) >= w->count;
}

static pid_t read_pid_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    long p = 0;
    if (fscanf(f, "%ld", &p) != 1)
        p = 0;
    fclose(f);
    return (pid_t)p;
}

static pid_t start_serve(const char *var, const char *log, int nready) {
    char varflag[600];
    snprintf(varflag, sizeof varflag, "--var-dir=%s", var);
    char *argv[] = {(char *)bin(), "serve", varflag, LISTEN_ANY, NULL};
    strata_proc_opts o = {0};
    o.log_path = log;
    pid_t pid;
    assert_int_equal(strata_proc_spawn(argv, &o, &pid), STRATA_OK);
    log_wait w;
    snprintf(w.log, sizeof w.log, "%s", log);
    w.needle = "event=ready";
    w.count = nready;
    if (!sh_wait_until(30000, 20, log_has, &w))
        fail_msg("strata serve did not log ready within 30 s; log: %s", log);
    return pid;
}

static bool pid_gone(void *ctx) { return !strata_proc_alive(*(pid_t *)ctx); }

/* The port from the last "event=ready ... listen=127.0.0.1:PORT" line of the log. */
static int ready_port(const char *log) {
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[4096];
    int port = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "event=ready");
        if (p && (p = strstr(p, "listen=127.0.0.1:")))
            port = atoi(p + strlen("listen=127.0.0.1:"));
    }
    fclose(f);
    return port;
}

/* GET path over a fresh connection; returns the whole response (caller frees). */
static char *http_get(int port, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    char req[256];
    int n =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    char *buf = calloc(1, 65536);
    size_t len = 0;
    ssize_t r;
    while ((r = read(fd, buf + len, 65535 - len)) > 0)
        len += (size_t)r;
    close(fd);
    return buf;
}

static void serve_lifecycle_on_embedded_defaults(void **state) {
    (void)state;
    char var[512], log[600], pidfile[600];
    snprintf(var, sizeof var, "%s/var", sh_tmpdir());
    snprintf(log, sizeof log, "%s/serve.log", sh_tmpdir());
    snprintf(pidfile, sizeof pidfile, "%s/redis/redis.pid", var);

    for (int round = 1; round <= 2; round++) { /* run twice in a row: stale files handled */
        pid_t pid = start_serve(var, log, round);
        pid_t rpid = read_pid_file(pidfile);
        assert_true(rpid > 0);
        assert_true(strata_proc_alive(rpid));
        struct stat st;
        char db[600];
        snprintf(db, sizeof db, "%s/strata.db", var);
        assert_int_equal(stat(db, &st), 0);
        assert_int_equal(count_in_file(log, "level=error"), 0);
        int port = ready_port(log);
        assert_true(port > 0);
        char *resp = http_get(port, "/healthz");
        assert_non_null(strstr(resp, "HTTP/1.1 200"));
        assert_non_null(strstr(resp, "{\"status\":\"ok\"}"));
        free(resp);
        resp = http_get(port, "/readyz"); /* the managed Redis and SQLite answer */
        assert_non_null(strstr(resp, "HTTP/1.1 200"));
        free(resp);

        /* strata dlq finds the managed Redis of the same var dir by default */
        char *out2;
        char vflag[600];
        snprintf(vflag, sizeof vflag, "--var-dir=%s", var);
        assert_int_equal(run(&out2, "dlq", "list", vflag, NULL), 0);
        free(out2);
        assert_int_equal(run(&out2, "dlq", "list", vflag, "--count", "abc", NULL), 78);
        assert_non_null(strstr(out2, "--count"));
        free(out2);
        assert_int_equal(run(&out2, "dlq", "replay", vflag, NULL), 64);
        free(out2);
        assert_int_equal(run(&out2, "dlq", "frobnicate", NULL), 64);
        free(out2);

        /* a second server on the same var dir is refused with a clear message */
        char *out;
        char varflag[600];
        snprintf(varflag, sizeof varflag, "--var-dir=%s", var);
        assert_int_equal(run(&out, "serve", varflag, LISTEN_ANY, NULL), 75);
        assert_non_null(strstr(out, "another strata serve"));
        free(out);

        kill(pid, round == 1 ? SIGINT : SIGTERM);
        int status = 0;
        assert_int_equal(strata_proc_wait(pid, 20000, &status), STRATA_OK);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_true(sh_wait_until(5000, 10, pid_gone, &rpid));
        assert_int_equal(count_in_file(log, "event=stopped"), round);
    }
}

static void sigkilled_serve_takes_its_redis_along(void **state) {
    (void)state;
    char var[512], log[600], pidfile[600];
    snprintf(var, sizeof var, "%s/var-kill", sh_tmpdir());
    snprintf(log, sizeof log, "%s/serve-kill.log", sh_tmpdir());
    snprintf(pidfile, sizeof pidfile, "%s/redis/redis.pid", var);
    pid_t pid = start_serve(var, log, 1);
    pid_t rpid = read_pid_file(pidfile);
    assert_true(rpid > 0);

    /* a crashed managed Redis is restarted from its AOF */
    kill(rpid, SIGKILL);
    log_wait w;
    snprintf(w.log, sizeof w.log, "%s", log);
    w.needle = "event=redis_restarted";
    w.count = 1;
    assert_true(sh_wait_until(20000, 20, log_has, &w));
    pid_t rpid2 = read_pid_file(pidfile);
    assert_true(rpid2 > 0 && rpid2 != rpid);

    kill(pid, SIGKILL);
    strata_proc_wait(pid, 5000, NULL);
    assert_true(sh_wait_until(5000, 10, pid_gone, &rpid2));
    /* and the next start works although the pid file and socket were left behind */
    pid = start_serve(var, log, 2);
    kill(pid, SIGTERM);
    assert_int_equal(strata_proc_wait(pid, 20000, NULL), STRATA_OK);
}

int main(void) {
    sh_init(170);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_input_gives_one_line_and_sysexits_code),
        cmocka_unit_test(help_and_version),
        cmocka_unit_test(serve_lifecycle_on_embedded_defaults),
        cmocka_unit_test(sigkilled_serve_takes_its_redis_along),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
