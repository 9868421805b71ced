/*
 * harness_redis.c: one redis-server (or redis-sentinel) process, the
 * standalone topology, and sh_redis_cmd.
 *
 * A node is `redis-server <dir>/redis.conf` (or `--sentinel`) with its own
 * dir as `dir`, stdout logging into <dir>/redis.log, no RDB/AOF unless the
 * caller asks, DEBUG and protected configs enabled (tests use DEBUG SLEEP,
 * DEBUG SET-ACTIVE-EXPIRE and CONFIG SET of protected knobs).  A port may be
 * taken between the harness's check and redis's bind (other test binaries
 * run in parallel): the node then exits with "Address already in use" and
 * the start is retried on a new port.  Readiness is PING -> PONG, polled.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "harness_internal.h"

#define SH_START_TIMEOUT_MS 15000

/* ---- talking to redis ---------------------------------------------------------------------- */

static redisContext *connect_port(uint16_t port, int timeout_ms) {
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c)
        return NULL;
    if (c->err) {
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

redisReply *sh__redis_vcmd(uint16_t port, int timeout_ms, const char *fmt, va_list ap) {
    redisContext *c = connect_port(port, timeout_ms);
    if (!c)
        return NULL;
    redisReply *r = redisvCommand(c, fmt, ap);
    redisFree(c);
    return r;
}

redisReply *sh__redis_rcmd(uint16_t port, int timeout_ms, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = sh__redis_vcmd(port, timeout_ms, fmt, ap);
    va_end(ap);
    return r;
}

static void reply_text(FILE *f, const redisReply *r, bool *first) {
    if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++)
            reply_text(f, r->element[i], first);
        return;
    }
    if (!*first)
        fputc('\n', f);
    *first = false;
    switch (r->type) {
    case REDIS_REPLY_INTEGER: fprintf(f, "%lld", r->integer); break;
    case REDIS_REPLY_NIL: fputs("(nil)", f); break;
    default: /* string, status, error ("ERR ..." as the server sent it) */
        if (r->str)
            fwrite(r->str, 1, r->len, f);
        break;
    }
}

char *sh_redis_cmd(uint16_t port, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = sh__redis_vcmd(port, 2000, fmt, ap);
    va_end(ap);
    if (!r)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        freeReplyObject(r);
        return NULL;
    }
    bool first = true;
    reply_text(f, r, &first);
    fclose(f);
    freeReplyObject(r);
    return buf;
}

bool sh__info_field(const char *info, const char *key, char *out, size_t outlen) {
    size_t klen = strlen(key);
    for (const char *p = info; p && *p;) {
        if (strncmp(p, key, klen) == 0 && p[klen] == ':') {
            const char *v = p + klen + 1;
            size_t n = strcspn(v, "\r\n");
            if (n >= outlen)
                n = outlen - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return true;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return false;
}

char *sh__redis_info(uint16_t port, const char *section) {
    redisReply *r = sh__redis_rcmd(port, 1000, "INFO %s", section);
    char *text = NULL;
    if (r && r->type == REDIS_REPLY_STRING)
        text = sh__strdup(r->str);
    if (r)
        freeReplyObject(r);
    return text;
}

/* ---- one node --------------------------------------------------------------------------------- */

int sh__rnode_wait_ready(sh__rnode *n, int timeout_ms) {
    uint64_t deadline = sh_now_ms() + (uint64_t)timeout_ms;
    while (sh_now_ms() < deadline) {
        if (!sh__child_running(&n->ch))
            return STRATA_EUNAVAIL;
        redisReply *r = sh__redis_rcmd(n->port, 200, "PING");
        bool ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r)
            freeReplyObject(r);
        if (ok)
            return STRATA_OK;
        sh__sleep_ms(10);
    }
    return STRATA_ETIMEDOUT;
}

char *sh__rnode_conf_text(const sh__rnode *n, const char *conf) {
    if (n->sentinel)
        return sh__fmt("port %u\nbind 127.0.0.1\ndir \"%s\"\nprotected-mode no\n"
                       "daemonize no\nlogfile \"\"\nsentinel resolve-hostnames no\n%s\n",
                       n->port, n->ch.dir, conf ? conf : "");
    return sh__fmt("port %u\nbind 127.0.0.1\ndir \"%s\"\nprotected-mode no\n"
                   "daemonize no\nlogfile \"\"\nsave \"\"\nappendonly no\n"
                   "enable-debug-command yes\nenable-protected-configs yes\n"
                   "repl-diskless-sync-delay 0\n%s%s\n",
                   n->port, n->ch.dir,
                   n->cluster ? "cluster-enabled yes\ncluster-config-file nodes.conf\n" : "",
                   conf ? conf : "");
}

static const char *conf_name(const sh__rnode *n) {
    return n->sentinel ? "sentinel.conf" : "redis.conf";
}

int sh__rnode_start(sh__rnode *n, const char *dir, const char *conf) {
    sh__ensure_init();
    n->ch.dir = sh__strdup(dir);
    n->ch.log = sh__fmt("%s/%s.log", dir, n->sentinel ? "sentinel" : "redis");
    char *conf_path = sh__fmt("%s/%s", dir, conf_name(n));
    const char *argv_data[] = {"redis-server", conf_path, NULL};
    const char *argv_sent[] = {"redis-server", conf_path, "--sentinel", NULL};
    sh__child_set_argv(&n->ch, n->sentinel ? argv_sent : argv_data);
    bool fixed_port = n->port != 0;
    int rc = STRATA_EUNAVAIL;
    for (int attempt = 0; attempt < 8; attempt++) {
        if (!fixed_port && (rc = sh__pick_port(&n->port, n->cluster)) < 0)
            break;
        free(n->ch.name);
        n->ch.name = sh__fmt("%s:%u", n->sentinel ? "sentinel" : "redis", n->port);
        char *text = sh__rnode_conf_text(n, conf);
        int w = sh__write_file(conf_path, text);
        free(text);
        if (w != 0 || sh__write_file(n->ch.log, "") != 0) {
            fprintf(stderr, "harness: cannot write %s: %s\n", conf_path, strerror(errno));
            rc = STRATA_EIO;
            break;
        }
        if ((rc = sh__child_spawn(&n->ch)) < 0)
            break;
        rc = sh__rnode_wait_ready(n, SH_START_TIMEOUT_MS);
        if (rc == STRATA_OK)
            break;
        bool in_use = sh__child_log_contains(&n->ch, "Address already in use");
        if (!in_use || fixed_port) {
            sh__child_dump_log(&n->ch, "did not become ready", 20);
            sh__child_kill(&n->ch);
            break;
        }
        sh__child_kill(&n->ch); /* lost a port race: try another port */
    }
    free(conf_path);
    return rc;
}

int sh__rnode_restart(sh__rnode *n) {
    if (sh__child_running(&n->ch))
        return STRATA_EEXIST;
    int rc = STRATA_EUNAVAIL;
    /* The port may still be in TIME_WAIT-free but briefly held: retry a few times. */
    for (int attempt = 0; attempt < 20; attempt++) {
        if ((rc = sh__child_spawn(&n->ch)) < 0)
            return rc;
        rc = sh__rnode_wait_ready(n, SH_START_TIMEOUT_MS);
        if (rc == STRATA_OK)
            return rc;
        bool in_use = sh__child_log_contains(&n->ch, "Address already in use");
        sh__child_kill(&n->ch);
        if (!in_use)
            break;
        sh__sleep_ms(100);
    }
    sh__child_dump_log(&n->ch, "restart failed", 20);
    return rc;
}

/* ---- standalone ------------------------------------------------------------------------------------- */

struct sh_redis {
    sh__rnode node;
    char *url;
};

static void redis_destroy(void *obj) {
    sh_redis *r = obj;
    sh_redis_stop(&r);
}

int sh_redis_start(sh_redis **out, const char *extra_conf) {
    *out = NULL;
    sh_redis *r = sh__calloc(1, sizeof *r);
    char *dir = sh__new_subdir("redis");
    if (!dir) {
        free(r);
        return STRATA_EIO;
    }
    int rc = sh__rnode_start(&r->node, dir, extra_conf);
    free(dir);
    if (rc < 0) {
        sh__child_clear(&r->node.ch);
        free(r);
        return rc;
    }
    r->url = sh__fmt("redis://127.0.0.1:%u", r->node.port);
    sh__track(r, redis_destroy);
    *out = r;
    return STRATA_OK;
}

void sh_redis_stop(sh_redis **rp) {
    if (!rp || !*rp)
        return;
    sh_redis *r = *rp;
    *rp = NULL;
    sh__untrack(r);
    sh__child_stop(&r->node.ch, SIGTERM, 3000);
    sh__child_clear(&r->node.ch);
    free(r->url);
    free(r);
}

uint16_t sh_redis_port(const sh_redis *r) { return r ? r->node.port : 0; }
pid_t sh_redis_pid(const sh_redis *r) { return r ? r->node.ch.pid : 0; }
const char *sh_redis_url(const sh_redis *r) { return r ? r->url : NULL; }
const char *sh_redis_dir(const sh_redis *r) { return r ? r->node.ch.dir : NULL; }

int sh_redis_kill(sh_redis *r) {
    if (!r)
        return STRATA_EINVAL;
    if (!sh__child_running(&r->node.ch))
        return STRATA_ENOTFOUND;
    sh__child_kill(&r->node.ch);
    return STRATA_OK;
}

int sh_redis_restart(sh_redis *r) {
    if (!r)
        return STRATA_EINVAL;
    return sh__rnode_restart(&r->node);
}

int sh_redis_pause(sh_redis *r) {
    return r ? sh__child_signal(&r->node.ch, SIGSTOP) : STRATA_EINVAL;
}
int sh_redis_resume(sh_redis *r) {
    return r ? sh__child_signal(&r->node.ch, SIGCONT) : STRATA_EINVAL;
}

int sh_redis_set_wait(uint16_t port, const char *key, const char *val, int nrep) {
    redisContext *c = redisConnect("127.0.0.1", port);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return -1;
    }
    int acked = -1;
    redisReply *r = redisCommand(c, "SET %s %s", key, val);
    if (r && r->type == REDIS_REPLY_STATUS) {
        freeReplyObject(r);
        r = redisCommand(c, "WAIT %d 5000", nrep);
        if (r && r->type == REDIS_REPLY_INTEGER)
            acked = (int)r->integer;
    }
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return acked;
}
