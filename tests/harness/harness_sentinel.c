/*
 * harness_sentinel.c: a Sentinel set: 1 master + 2 replicas + 3 sentinels.
 *
 * Start order: the master, then the replicas (`replicaof` in their config),
 * wait until the master reports both replicas online, then the sentinels
 * (`sentinel monitor strata-master 127.0.0.1 <master> 2`, down-after 1000 ms,
 * failover-timeout 3000 ms).  Each sentinel then gets Redis's own test
 * speed-ups through SENTINEL DEBUG (info-period, ping-period, publish-period,
 * ask-period), which only shorten the polling that discovery and failure
 * detection wait on; the timeouts the drills care about are the real ones.
 * Ready means: every sentinel reports the master with 2 known replicas and
 * 2 other sentinels.
 *
 * A killed data node is restarted with `replicaof <current master>` so it
 * rejoins as a replica at once (Sentinel would reconfigure it anyway, after
 * a few seconds).  Sentinels rewrite the data nodes' config files with
 * CONFIG REWRITE during a failover; the harness regenerates a node's config
 * on restart.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness_internal.h"

#define SH_MASTER_NAME "strata-master"
#define SH_NDATA       3
#define SH_NSENT       3

struct sh_sentinel_set {
    sh__rnode data[SH_NDATA];
    sh__rnode sent[SH_NSENT];
    char *dir;
    char *url;
};

/* ---- queries ------------------------------------------------------------------------------------ */

/* Port the sentinel on `sport` reports for the master, 0 if unknown/unreachable. */
static uint16_t sentinel_says_master(uint16_t sport) {
    redisReply *r =
        sh__redis_rcmd(sport, 500, "SENTINEL GET-MASTER-ADDR-BY-NAME %s", SH_MASTER_NAME);
    uint16_t port = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING)
        port = (uint16_t)atoi(r->element[1]->str);
    if (r)
        freeReplyObject(r);
    return port;
}

/* Field of SENTINEL MASTER <name> (a flat key/value array) as an integer; -1 if absent. */
static long sentinel_master_field(uint16_t sport, const char *field) {
    redisReply *r = sh__redis_rcmd(sport, 500, "SENTINEL MASTER %s", SH_MASTER_NAME);
    long v = -1;
    if (r && r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            if (r->element[i]->type == REDIS_REPLY_STRING &&
                strcmp(r->element[i]->str, field) == 0 &&
                r->element[i + 1]->type == REDIS_REPLY_STRING)
                v = atol(r->element[i + 1]->str);
        }
    }
    if (r)
        freeReplyObject(r);
    return v;
}

/* "master" / "slave" / "sentinel" from ROLE, or "" if unreachable. */
static void node_role(uint16_t port, char *out, size_t n) {
    out[0] = '\0';
    redisReply *r = sh__redis_rcmd(port, 500, "ROLE");
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING)
        snprintf(out, n, "%s", r->element[0]->str);
    if (r)
        freeReplyObject(r);
}

static int index_of_port(const sh_sentinel_set *s, uint16_t port) {
    for (int i = 0; i < SH_NDATA; i++)
        if (port && s->data[i].port == port)
            return i;
    return -1;
}

uint16_t sh_sentinel_master_port(const sh_sentinel_set *s) {
    if (!s)
        return 0;
    /* The majority's answer; else any answer. */
    uint16_t seen[SH_NSENT] = {0};
    for (int i = 0; i < SH_NSENT; i++)
        seen[i] = s->sent[i].ch.pid > 0 ? sentinel_says_master(s->sent[i].port) : 0;
    for (int i = 0; i < SH_NSENT; i++) {
        int votes = 0;
        for (int j = 0; j < SH_NSENT; j++)
            votes += seen[i] && seen[i] == seen[j];
        if (votes * 2 > SH_NSENT)
            return seen[i];
    }
    for (int i = 0; i < SH_NSENT; i++)
        if (seen[i])
            return seen[i];
    return 0;
}

int sh_sentinel_master_index(const sh_sentinel_set *s) {
    return s ? index_of_port(s, sh_sentinel_master_port(s)) : -1;
}

/* ---- readiness --------------------------------------------------------------------------------------- */

static bool replicas_online(void *ctx) {
    sh_sentinel_set *s = ctx;
    char *info = sh__redis_info(s->data[0].port, "replication");
    if (!info)
        return false;
    int online = 0;
    for (int i = 0; i < SH_NDATA; i++) {
        char key[32], val[256];
        snprintf(key, sizeof key, "slave%d", i);
        if (sh__info_field(info, key, val, sizeof val) && strstr(val, "state=online"))
            online++;
    }
    free(info);
    return online == SH_NDATA - 1;
}

static bool sentinels_ready(void *ctx) {
    sh_sentinel_set *s = ctx;
    for (int i = 0; i < SH_NSENT; i++) {
        uint16_t p = s->sent[i].port;
        if (sentinel_says_master(p) != s->data[0].port)
            return false;
        if (sentinel_master_field(p, "num-slaves") != SH_NDATA - 1)
            return false;
        if (sentinel_master_field(p, "num-other-sentinels") != SH_NSENT - 1)
            return false;
    }
    return true;
}

/* ---- lifecycle ---------------------------------------------------------------------------------------- */

static void set_destroy(void *obj) {
    sh_sentinel_set *s = obj;
    sh_sentinel_stop(&s);
}

static char *data_conf(uint16_t master_port) {
    if (!master_port)
        return sh__strdup("");
    return sh__fmt("replicaof 127.0.0.1 %u\n", master_port);
}

int sh_sentinel_start(sh_sentinel_set **out) {
    *out = NULL;
    sh__ensure_init();
    sh_sentinel_set *s = sh__calloc(1, sizeof *s);
    int rc = STRATA_EIO;
    uint64_t t0 = sh_now_ms();
    s->dir = sh__new_subdir("sentinel");
    if (!s->dir)
        goto fail;
    for (int i = 0; i < SH_NDATA; i++) {
        char *dir = sh__fmt("%s/data-%d", s->dir, i);
        char *conf = data_conf(i == 0 ? 0 : s->data[0].port);
        rc = sh__mkdirs(dir, 0755) == 0 ? sh__rnode_start(&s->data[i], dir, conf) : STRATA_EIO;
        free(dir);
        free(conf);
        if (rc < 0)
            goto fail;
    }
    if (!sh_wait_until(15000, 20, replicas_online, s)) {
        fprintf(stderr, "harness: sentinel set: replicas did not come online\n");
        rc = STRATA_ETIMEDOUT;
        goto fail;
    }
    for (int i = 0; i < SH_NSENT; i++) {
        s->sent[i].sentinel = true;
        char *dir = sh__fmt("%s/sentinel-%d", s->dir, i);
        char *conf = sh__fmt("sentinel monitor %s 127.0.0.1 %u 2\n"
                             "sentinel down-after-milliseconds %s 1000\n"
                             "sentinel failover-timeout %s 3000\n"
                             "sentinel parallel-syncs %s 1\n",
                             SH_MASTER_NAME, s->data[0].port, SH_MASTER_NAME, SH_MASTER_NAME,
                             SH_MASTER_NAME);
        rc = sh__mkdirs(dir, 0755) == 0 ? sh__rnode_start(&s->sent[i], dir, conf) : STRATA_EIO;
        free(dir);
        free(conf);
        if (rc < 0)
            goto fail;
        /* Faster polling, as Redis's own sentinel tests do. */
        redisReply *r = sh__redis_rcmd(s->sent[i].port, 1000,
                                       "SENTINEL DEBUG info-period 500 ping-period 250 "
                                       "publish-period 500 ask-period 250");
        if (r)
            freeReplyObject(r);
    }
    if (!sh_wait_until(20000, 25, sentinels_ready, s)) {
        fprintf(stderr, "harness: sentinel set: sentinels did not agree on the master, its 2 "
                        "replicas and each other\n");
        for (int i = 0; i < SH_NSENT; i++)
            sh__child_dump_log(&s->sent[i].ch, "sentinel log", 10);
        rc = STRATA_ETIMEDOUT;
        goto fail;
    }
    if (getenv("STRATA_HARNESS_VERBOSE"))
        fprintf(stderr, "harness: sentinel set ready in %llu ms\n",
                (unsigned long long)(sh_now_ms() - t0));
    s->url = sh__fmt("redis-sentinel://127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u/" SH_MASTER_NAME,
                     s->sent[0].port, s->sent[1].port, s->sent[2].port);
    sh__track(s, set_destroy);
    *out = s;
    return STRATA_OK;
fail:
    sh_sentinel_stop(&s);
    return rc < 0 ? rc : STRATA_EIO;
}

void sh_sentinel_stop(sh_sentinel_set **sp) {
    if (!sp || !*sp)
        return;
    sh_sentinel_set *s = *sp;
    *sp = NULL;
    sh__untrack(s);
    /* Sentinels first, so that they do not start a failover while the data nodes stop. */
    for (int i = 0; i < SH_NSENT; i++)
        sh__child_kill(&s->sent[i].ch);
    for (int i = 0; i < SH_NDATA; i++)
        sh__child_kill(&s->data[i].ch);
    for (int i = 0; i < SH_NSENT; i++)
        sh__child_clear(&s->sent[i].ch);
    for (int i = 0; i < SH_NDATA; i++)
        sh__child_clear(&s->data[i].ch);
    free(s->dir);
    free(s->url);
    free(s);
}

const char *sh_sentinel_url(const sh_sentinel_set *s) { return s ? s->url : NULL; }

uint16_t sh_sentinel_node_port(const sh_sentinel_set *s, int i) {
    return s && i >= 0 && i < SH_NDATA ? s->data[i].port : 0;
}

pid_t sh_sentinel_node_pid(const sh_sentinel_set *s, int i) {
    return s && i >= 0 && i < SH_NDATA ? s->data[i].ch.pid : 0;
}

uint16_t sh_sentinel_sentinel_port(const sh_sentinel_set *s, int i) {
    return s && i >= 0 && i < SH_NSENT ? s->sent[i].port : 0;
}

int sh_sentinel_kill_node(sh_sentinel_set *s, int i) {
    if (!s || i < 0 || i >= SH_NDATA)
        return STRATA_EINVAL;
    if (!sh__child_running(&s->data[i].ch))
        return STRATA_ENOTFOUND;
    sh__child_kill(&s->data[i].ch);
    return STRATA_OK;
}

int sh_sentinel_pause_node(sh_sentinel_set *s, int i) {
    if (!s || i < 0 || i >= SH_NDATA)
        return STRATA_EINVAL;
    return sh__child_signal(&s->data[i].ch, SIGSTOP);
}

int sh_sentinel_resume_node(sh_sentinel_set *s, int i) {
    if (!s || i < 0 || i >= SH_NDATA)
        return STRATA_EINVAL;
    return sh__child_signal(&s->data[i].ch, SIGCONT);
}

int sh_sentinel_restart_node(sh_sentinel_set *s, int i) {
    if (!s || i < 0 || i >= SH_NDATA)
        return STRATA_EINVAL;
    sh__rnode *n = &s->data[i];
    if (sh__child_running(&n->ch))
        return STRATA_EEXIST;
    uint16_t master = sh_sentinel_master_port(s);
    char *conf = data_conf(master == n->port ? 0 : master);
    char *path = sh__fmt("%s/redis.conf", n->ch.dir);
    char *text = sh__rnode_conf_text(n, conf);
    int rc = sh__write_file(path, text) == 0 ? sh__rnode_restart(n) : STRATA_EIO;
    free(conf);
    free(path);
    free(text);
    return rc;
}

typedef struct failover_ctx {
    sh_sentinel_set *s;
    uint16_t old_port;
    uint16_t new_port;
} failover_ctx;

static bool failed_over(void *vctx) {
    failover_ctx *f = vctx;
    uint16_t p = sh_sentinel_master_port(f->s);
    if (!p || p == f->old_port)
        return false;
    char role[32];
    node_role(p, role, sizeof role);
    if (strcmp(role, "master") != 0)
        return false;
    f->new_port = p;
    return true;
}

uint16_t sh_sentinel_wait_failover(sh_sentinel_set *s, uint16_t old_port, int timeout_ms) {
    if (!s)
        return 0;
    failover_ctx f = {s, old_port, 0};
    return sh_wait_until(timeout_ms, 20, failed_over, &f) ? f.new_port : 0;
}
