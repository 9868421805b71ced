/*
 * harness_serve.c: `strata serve` as a child of the test, and a minimal
 * blocking HTTP/1.1 client for integration tests (harness.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "harness_internal.h"

struct sh_serve {
    sh__child child;
    char *var;
    uint16_t port;
};

static void serve_destroy(void *obj) {
    sh_serve *s = obj;
    sh__child_stop(&s->child, SIGTERM, 10000);
    sh__child_clear(&s->child);
    free(s->var);
    free(s);
}

/* The port of the last "event=ready ... listen=127.0.0.1:PORT" line, 0 if none yet. */
static uint16_t ready_port(const char *log) {
    char *text = sh__read_file(log, NULL);
    if (!text)
        return 0;
    uint16_t port = 0;
    for (char *p = text; (p = strstr(p, "event=ready")); p++) {
        char *l = strstr(p, "listen=");
        char *nl = strchr(p, '\n');
        if (l && (!nl || l < nl)) {
            char *colon = strrchr(l, ':');
            char *end = nl ? nl : l + strlen(l);
            if (colon && colon < end)
                port = (uint16_t)atoi(colon + 1);
        }
    }
    free(text);
    return port;
}

int sh_serve_start(sh_serve **out, const char *const *args) {
    sh__ensure_init();
    const char *bin = getenv("STRATA_BIN");
    if (!bin)
        bin = "strata";
    sh_serve *s = sh__calloc(1, sizeof *s);
    s->child.dir = sh__new_subdir("serve");
    s->child.log = sh__fmt("%s/serve.log", s->child.dir);
    s->child.name = sh__strdup("strata-serve");
    s->var = sh__fmt("%s/var", s->child.dir);
    const char *argv[64];
    int n = 0;
    char *varflag = sh__fmt("--var-dir=%s", s->var);
    argv[n++] = bin;
    argv[n++] = "serve";
    argv[n++] = varflag;
    argv[n++] = "--listen=127.0.0.1:0";
    argv[n++] = "--admin-token=" SH_ADMIN_TOKEN;
    argv[n++] = "--workers=2";
    for (int i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    sh__child_set_argv(&s->child, argv);
    free(varflag);
    int rc = sh__child_spawn(&s->child);
    if (rc != STRATA_OK) {
        fprintf(stderr, "harness: cannot start %s serve\n", bin);
        sh__child_clear(&s->child);
        free(s->var);
        free(s);
        return rc;
    }
    sh__track(s, serve_destroy);
    uint64_t deadline = sh_now_ms() + 30000;
    while (sh_now_ms() < deadline) {
        if ((s->port = ready_port(s->child.log)) != 0) {
            *out = s;
            return STRATA_OK;
        }
        if (!sh__child_running(&s->child))
            break;
        sh__sleep_ms(20);
    }
    sh__child_dump_log(&s->child, "strata serve did not become ready", 40);
    sh__untrack(s);
    serve_destroy(s);
    return STRATA_ETIMEDOUT;
}

int sh_serve_stop(sh_serve **sp) {
    if (!sp || !*sp)
        return -1;
    sh_serve *s = *sp;
    int status = -1;
    sh__child_signal(&s->child, SIGTERM);
    if (sh__child_wait(&s->child, 20000, &status) != STRATA_OK) {
        sh__child_dump_log(&s->child, "strata serve did not stop on SIGTERM", 40);
        sh__child_kill(&s->child);
        status = -1;
    }
    sh__untrack(s);
    sh__child_clear(&s->child);
    free(s->var);
    free(s);
    *sp = NULL;
    return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void sh_serve_kill(sh_serve **sp) {
    if (!sp || !*sp)
        return;
    sh_serve *s = *sp;
    sh__child_kill(&s->child);
    sh__untrack(s);
    sh__child_clear(&s->child);
    free(s->var);
    free(s);
    *sp = NULL;
}

uint16_t sh_serve_port(const sh_serve *s) { return s->port; }
pid_t sh_serve_pid(const sh_serve *s) { return s->child.pid; }
const char *sh_serve_log(const sh_serve *s) { return s->child.log; }
const char *sh_serve_var_dir(const sh_serve *s) { return s->var; }

/* ---- HTTP ------------------------------------------------------------------------------ */

static bool wait_fd(int fd, short ev, uint64_t deadline) {
    for (;;) {
        uint64_t now = sh_now_ms();
        if (now >= deadline)
            return false;
        struct pollfd p = {fd, ev, 0};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r > 0)
            return true;
        if (r < 0 && errno != EINTR)
            return false;
    }
}

int sh_http(uint16_t port, const char *method, const char *path, const char *json_body, bool admin,
            int timeout_ms, sh_http_resp *resp) {
    memset(resp, 0, sizeof *resp);
    uint64_t deadline = sh_now_ms() + (uint64_t)timeout_ms;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return 0;
    }
    size_t blen = json_body ? strlen(json_body) : 0;
    char *req = sh__fmt("%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n%s%s%s"
                        "Content-Length: %zu\r\n\r\n%s",
                        method, path, json_body ? "Content-Type: application/json\r\n" : "",
                        admin ? "Authorization: Bearer " SH_ADMIN_TOKEN : "", admin ? "\r\n" : "",
                        blen, json_body ? json_body : "");
    size_t len = strlen(req), off = 0;
    while (off < len) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0) {
            free(req);
            close(fd);
            return 0;
        }
        off += (size_t)w;
    }
    free(req);
    size_t cap = 65536, got = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!wait_fd(fd, POLLIN, deadline))
            break;
        if (got + 4096 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t r = recv(fd, buf + got, cap - got - 1, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    char *sep = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.1 ", 9) != 0 || !sep) {
        free(buf);
        return 0;
    }
    resp->status = atoi(buf + 9);
    *sep = '\0';
    resp->headers = sh__strdup(buf);
    resp->body = sh__strdup(sep + 4);
    resp->body_len = strlen(resp->body);
    free(buf);
    return resp->status;
}

void sh_http_free(sh_http_resp *resp) {
    free(resp->headers);
    free(resp->body);
    memset(resp, 0, sizeof *resp);
}

const char *sh_http_header(const sh_http_resp *resp, const char *name) {
    /* Per thread: drills call this from many client threads at once, and a
     * shared buffer let one thread's reset blank another's found header (a
     * 503 then counted as "without Retry-After"). */
    static _Thread_local char value[512];
    value[0] = '\0';
    size_t n = strlen(name);
    for (const char *p = resp->headers; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        size_t linelen = eol ? (size_t)(eol - p) : strlen(p);
        if (linelen > n && strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            snprintf(value, sizeof value, "%.*s", (int)(linelen - (size_t)(v - p)), v);
            return value;
        }
        p = eol ? eol + 2 : NULL;
    }
    return value;
}

char *sh_http_expect(uint16_t port, const char *method, const char *path, const char *json_body,
                     bool admin, int want) {
    sh_http_resp r;
    int got = sh_http(port, method, path, json_body, admin, 10000, &r);
    if (got != want)
        fail_msg("%s %s %s: want %d got %d: %s", method, path, json_body ? json_body : "", want,
                 got, r.body ? r.body : "(no response)");
    char *b = sh__strdup(r.body ? r.body : "");
    sh_http_free(&r);
    return b;
}

void sh_http_expect_code(uint16_t port, const char *method, const char *path, const char *body,
                         bool admin, int want, const char *code) {
    char *b = sh_http_expect(port, method, path, body, admin, want);
    char needle[96];
    snprintf(needle, sizeof needle, "\"code\":\"%s\"", code);
    if (!strstr(b, needle))
        fail_msg("%s %s: want error code %s in %s", method, path, code, b);
    free(b);
}
