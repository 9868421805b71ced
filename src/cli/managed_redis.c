/* managed_redis.c: the redis-server owned by `strata serve` (managed_redis.h). */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "managed_redis.h"
#include "strata/alloc.h"
#include "strata/proc.h"
#include "strata/status.h"

struct managed_redis {
    char dir[4096];
    char conf[4200];
    char pidfile[4200];
    char sock[4200];
    char url[4300];
    int use_sock;
    uint16_t port;
    pid_t pid;
};

/* Stops a redis-server left by a previous run that could not clean up. */
static void stop_stale(const char *pidfile) {
    FILE *f = fopen(pidfile, "r");
    if (!f)
        return;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pid <= 1)
        return;
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%ld/comm", pid);
    FILE *c = fopen(path, "r");
    if (c) {
        if (!fgets(comm, sizeof comm, c))
            comm[0] = '\0';
        fclose(c);
    }
    if (strncmp(comm, "redis-server", 12) != 0)
        return; /* pid reused by something else: leave it alone */
    kill((pid_t)pid, SIGTERM);
    for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++) {
        struct timespec d = {0, 10 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
    if (kill((pid_t)pid, 0) == 0)
        kill((pid_t)pid, SIGKILL);
    unlink(pidfile);
}

static int write_conf(managed_redis *m, const char *maxmemory, strata_buf *err) {
    FILE *f = fopen(m->conf, "w");
    if (!f) {
        strata_buf_printf(err, "cannot write %s: %s", m->conf, strerror(errno));
        return STRATA_ESYS;
    }
    fprintf(f,
            "# Written by strata serve at every start; edits are overwritten.\n"
            "bind 127.0.0.1\n"
            "protected-mode yes\n"
            "port %u\n"
            "dir %s\n"
            "pidfile %s\n"
            "logfile redis.log\n"
            "daemonize no\n"
            "appendonly yes\n"
            "appendfsync everysec\n"
            "appendfilename appendonly.aof\n"
            "save \"\"\n"
            "maxmemory %s\n"
            "maxmemory-policy volatile-lfu\n"
            "tcp-keepalive 60\n"
            "timeout 0\n",
            m->port, m->dir, m->pidfile, maxmemory);
    if (m->use_sock)
        fprintf(f, "unixsocket %s\nunixsocketperm 700\n", m->sock);
    if (fclose(f) != 0) {
        strata_buf_printf(err, "cannot write %s: %s", m->conf, strerror(errno));
        return STRATA_ESYS;
    }
    return STRATA_OK;
}

/* 1: PONG; 0: not yet (refused, LOADING); the server is polled until a deadline. */
static int ping(const managed_redis *m) {
    struct timeval tv = {0, 500 * 1000};
    redisContext *c = m->use_sock ? redisConnectUnixWithTimeout(m->sock, tv)
                                  : redisConnectWithTimeout("127.0.0.1", m->port, tv);
    if (!c)
        return 0;
    int ok = 0;
    if (!c->err) {
        redisReply *r = redisCommand(c, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r)
            freeReplyObject(r);
    }
    redisFree(c);
    return ok;
}

static int spawn(managed_redis *m, strata_buf *err) {
    char *argv[] = {"redis-server", m->conf, NULL};
    strata_proc_opts o = {0};
    o.cwd = m->dir;
    int rc = strata_proc_spawn(argv, &o, &m->pid);
    if (rc != STRATA_OK) {
        strata_buf_printf(err,
                          "cannot start redis-server: %s (is it installed? run scripts/setup-deps)",
                          strerror(errno));
        return rc;
    }
    for (int i = 0; i < 1000; i++) { /* up to ~20 s: a large AOF takes a while to load */
        if (ping(m))
            return STRATA_OK;
        int st;
        if (strata_proc_wait(m->pid, 0, &st) == STRATA_OK) {
            m->pid = 0;
            strata_buf_printf(err, "redis-server exited at start-up (see %s/redis.log)", m->dir);
            return STRATA_EUNAVAIL;
        }
        struct timespec d = {0, 20 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
    strata_buf_printf(err, "redis-server did not answer PING within 20 s (see %s/redis.log)",
                      m->dir);
    strata_proc_stop(m->pid, 1000);
    m->pid = 0;
    return STRATA_ETIMEDOUT;
}

int managed_redis_start(managed_redis **out, const char *var_dir, const char *maxmemory,
                        strata_buf *err) {
    managed_redis *m = strata_calloc(1, sizeof *m);
    if (!m)
        return STRATA_ENOMEM;
    snprintf(m->dir, sizeof m->dir, "%s/redis", var_dir);
    if (mkdir(m->dir, 0700) != 0 && errno != EEXIST) {
        strata_buf_printf(err, "cannot create %s: %s", m->dir, strerror(errno));
        strata_free(m);
        return STRATA_ESYS;
    }
    snprintf(m->conf, sizeof m->conf, "%s/redis.conf", m->dir);
    snprintf(m->pidfile, sizeof m->pidfile, "%s/redis.pid", m->dir);
    snprintf(m->sock, sizeof m->sock, "%s/redis.sock", m->dir);
    m->use_sock = strlen(m->sock) < sizeof(((struct sockaddr_un *)0)->sun_path);
    stop_stale(m->pidfile);
    unlink(m->sock);
    int rc = STRATA_EUNAVAIL;
    for (int attempt = 0; attempt < 5; attempt++) { /* a free port can be taken before use */
        if ((rc = strata_proc_free_port(&m->port)) != STRATA_OK)
            break;
        if ((rc = write_conf(m, maxmemory, err)) != STRATA_OK)
            break;
        strata_buf_reset(err);
        if ((rc = spawn(m, err)) == STRATA_OK)
            break;
    }
    if (rc != STRATA_OK) {
        strata_free(m);
        return rc;
    }
    if (m->use_sock)
        snprintf(m->url, sizeof m->url, "unix://%s", m->sock);
    else
        snprintf(m->url, sizeof m->url, "redis://127.0.0.1:%u", m->port);
    *out = m;
    return STRATA_OK;
}

const char *managed_redis_url(const managed_redis *m) { return m->url; }
int managed_redis_port(const managed_redis *m) { return m->port; }
pid_t managed_redis_pid(const managed_redis *m) { return m->pid; }

int managed_redis_supervise(managed_redis *m, strata_buf *err) {
    if (m->pid > 0 && strata_proc_wait(m->pid, 0, NULL) == STRATA_ETIMEDOUT)
        return 0;
    m->pid = 0;
    int rc = spawn(m, err);
    return rc == STRATA_OK ? 1 : rc;
}

void managed_redis_stop(managed_redis **mp) {
    if (!mp || !*mp)
        return;
    managed_redis *m = *mp;
    if (m->pid > 0)
        strata_proc_stop(m->pid, 10000);
    unlink(m->pidfile);
    strata_free(m);
    *mp = NULL;
}
