/*
 * loadgen_e2e.h: what the end-to-end tests of `strata bench flashsale|redpacket`
 * share (test_loadgen_sharded.c on one redis-server, test_loadgen_sharded_cluster.c
 * on a Redis Cluster): running the binary against a `strata serve` started by the
 * harness and reading its key=value lines.  Header-only: each test binary includes
 * it once.
 */
#ifndef STRATA_TEST_LOADGEN_E2E_H
#define STRATA_TEST_LOADGEN_E2E_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <xxhash.h>

#include "harness/harness.h"

/* The server's home shard of a user (flashsale.c: XXH3 of the user id, mod K). */
static inline int lge_home(const char *user, int k) {
    return (int)(XXH3_64bits(user, strlen(user)) % (uint64_t)k);
}

/*
 * Runs `$STRATA_BIN bench <args...>` (NULL-terminated; no argument may hold a single
 * quote), stdout and stderr into *out (caller frees); returns the exit code.
 */
static inline int lge_runv(char **out, const char *const *args) {
    const char *bin = getenv("STRATA_BIN");
    char cmd[8192];
    int n = snprintf(cmd, sizeof cmd, "'%s' bench", bin ? bin : "strata");
    for (size_t i = 0; args[i] && n < (int)sizeof cmd; i++)
        n += snprintf(cmd + n, sizeof cmd - (size_t)n, " '%s'", args[i]);
    snprintf(cmd + n, sizeof cmd - (size_t)n, " 2>&1 </dev/null");
    FILE *p = popen(cmd, "r");
    if (!p) {
        *out = strdup("popen failed");
        return -1;
    }
    size_t cap = 1 << 20, len = 0, r;
    char *buf = calloc(1, cap);
    while (buf && (r = fread(buf + len, 1, cap - len - 1, p)) > 0)
        len += r;
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The value of the first "key=value" line of a run's output, "" when absent (static). */
static inline const char *lge_kv(const char *out, const char *key) {
    static char val[256];
    char needle[128];
    snprintf(needle, sizeof needle, "\n%s=", key);
    const char *p = out ? strstr(out, needle) : NULL;
    val[0] = '\0';
    if (p)
        snprintf(val, sizeof val, "%.*s", (int)strcspn(p + strlen(needle), "\n"),
                 p + strlen(needle));
    return val;
}

static inline long long lge_kv_int(const char *out, const char *key) {
    const char *v = lge_kv(out, key);
    return *v ? strtoll(v, NULL, 10) : -1;
}

/* Starts `strata serve` on the Redis at redis_url with a SQLite file in the test's
 * tmpdir (its URL into db, for the load generator's checks) and a per-user burst
 * large enough for the load generator; its base URL ("http://127.0.0.1:PORT")
 * goes into url. */
static inline int lge_serve_start(sh_serve **srv, const char *redis_url, char *db, size_t dbcap,
                                  char *url, size_t urlcap) {
    snprintf(db, dbcap, "sqlite://%s/lg.db", sh_tmpdir());
    const char *args[] = {"--redis", redis_url, "--db", db, "--user-burst=100", NULL};
    int rc = sh_serve_start(srv, args);
    if (rc == STRATA_OK)
        snprintf(url, urlcap, "http://127.0.0.1:%u", (unsigned)sh_serve_port(*srv));
    return rc;
}

#endif
