/*
 * harness_cluster.c: a Redis Cluster of 3 masters + 3 replicas.
 *
 * Six nodes with cluster-enabled, cluster-node-timeout 1000 ms (a killed
 * master is failed over in ~2-3 s: node timeout, FAIL agreement by gossip,
 * then the replica's election delay of 500 ms + random 0-500 ms) and
 * cluster-replica-validity-factor 0 (a replica may always fail over: in a
 * test a slow machine must not leave a slot range without a master).  Each
 * node's port and port+10000 (its cluster bus) must be free, so the harness
 * picks cluster ports below the ephemeral range.
 *
 * `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`
 * assigns slots and replicas and waits for the join; then the harness waits
 * until every node reports cluster_state:ok and all six agree on the
 * topology (the same masters with the same slots and the same replicas, no
 * failure flags): redis-cli returns as soon as the config epochs agree,
 * before every node has heard of every other node's role.
 *
 * A node restarts with its own nodes.conf and so rejoins with its identity;
 * a killed master comes back as a replica of the replica that replaced it.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness_internal.h"

#define SH_NNODES 6

struct sh_cluster {
    sh__rnode nodes[SH_NNODES];
    char *dir;
    char *url;
};

/* ---- CRC16 key slots (Redis Cluster spec: CRC16-CCITT/XMODEM mod 16384) ----------------------------- */

static uint16_t crc16(const char *buf, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

int sh_cluster_keyslot(const char *key) {
    if (!key)
        return -1;
    size_t len = strlen(key);
    const char *open = strchr(key, '{');
    if (open) {
        const char *close = strchr(open + 1, '}');
        if (close && close > open + 1) /* a non-empty {hash tag} */
            return crc16(open + 1, (size_t)(close - open - 1)) & 16383;
    }
    return crc16(key, len) & 16383;
}

/* ---- queries ------------------------------------------------------------------------------------ */

static bool node_live(sh_cluster *c, int i) { return sh__child_running(&c->nodes[i].ch); }

static int index_of_port(const sh_cluster *c, long port) {
    for (int i = 0; i < SH_NNODES; i++)
        if (port > 0 && c->nodes[i].port == port)
            return i;
    return -1;
}

static bool state_ok(uint16_t port) {
    redisReply *r = sh__redis_rcmd(port, 500, "CLUSTER INFO");
    char v[64] = "";
    bool ok = r && r->type == REDIS_REPLY_STRING &&
              sh__info_field(r->str, "cluster_state", v, sizeof v) && strcmp(v, "ok") == 0;
    if (r)
        freeReplyObject(r);
    return ok;
}

/* Port of the master serving `slot` according to the node on `port`; 0 if none/unknown. */
static uint16_t slot_master_per(uint16_t port, int slot) {
    redisReply *r = sh__redis_rcmd(port, 500, "CLUSTER SLOTS");
    uint16_t m = 0;
    if (r && r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements && !m; i++) {
            redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
                e->element[0]->type != REDIS_REPLY_INTEGER ||
                e->element[1]->type != REDIS_REPLY_INTEGER)
                continue;
            if (slot < e->element[0]->integer || slot > e->element[1]->integer)
                continue;
            redisReply *node = e->element[2];
            if (node->type == REDIS_REPLY_ARRAY && node->elements >= 2 &&
                node->element[1]->type == REDIS_REPLY_INTEGER)
                m = (uint16_t)node->element[1]->integer;
        }
    }
    if (r)
        freeReplyObject(r);
    return m;
}

/*
 * CLUSTER NODES reduced to what every node must agree on: one line per node,
 * "<port> <master|slave> <master-port or -> <fail?> <slots...>", sorted.
 */
typedef struct cnode {
    char id[48];
    long port;
    bool master, failing;
    char master_id[48];
    char slots[256];
} cnode;

static int parse_nodes(uint16_t port, cnode *out, int max) {
    redisReply *r = sh__redis_rcmd(port, 500, "CLUSTER NODES");
    int n = 0;
    if (r && r->type == REDIS_REPLY_STRING) {
        char *save = NULL;
        for (char *line = strtok_r(r->str, "\n", &save); line && n < max;
             line = strtok_r(NULL, "\n", &save)) {
            /* <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>... */
            cnode *c = &out[n];
            memset(c, 0, sizeof *c);
            char addr[128], flags[128];
            int off = -1;
            if (sscanf(line, "%47s %127s %127s %47s %*s %*s %*s %*s %n", c->id, addr, flags,
                       c->master_id, &off) < 4)
                continue;
            char *colon = strrchr(addr, ':');
            if (!colon)
                continue;
            c->port = strtol(colon + 1, NULL, 10); /* stops at '@' */
            c->master = strstr(flags, "master") != NULL;
            c->failing = strstr(flags, "fail") != NULL || strstr(flags, "noaddr") != NULL;
            snprintf(c->slots, sizeof c->slots, "%s", off >= 0 ? line + off : "");
            n++;
        }
    } else {
        n = -1;
    }
    if (r)
        freeReplyObject(r);
    return n;
}

static long port_of_id(const cnode *ns, int n, const char *id) {
    for (int i = 0; i < n; i++)
        if (strcmp(ns[i].id, id) == 0)
            return ns[i].port;
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Canonical topology text as seen from `port`, NULL if unreachable (caller frees). */
static char *topology(uint16_t port) {
    cnode ns[SH_NNODES * 2];
    int n = parse_nodes(port, ns, SH_NNODES * 2);
    if (n < 0)
        return NULL;
    char *lines[SH_NNODES * 2];
    for (int i = 0; i < n; i++)
        lines[i] = sh__fmt("%ld %s %ld %s %s", ns[i].port, ns[i].master ? "master" : "slave",
                           ns[i].master ? 0 : port_of_id(ns, n, ns[i].master_id),
                           ns[i].failing ? "fail" : "ok", ns[i].slots);
    qsort(lines, (size_t)n, sizeof lines[0], cmp_str);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        abort();
    for (int i = 0; i < n; i++) {
        fprintf(f, "%s\n", lines[i]);
        free(lines[i]);
    }
    fclose(f);
    return buf;
}

int sh_cluster_master_of_slot(const sh_cluster *cc, int slot) {
    sh_cluster *c = (sh_cluster *)cc;
    if (!c || slot < 0 || slot > 16383)
        return -1;
    for (int i = 0; i < SH_NNODES; i++) {
        if (!node_live(c, i))
            continue;
        uint16_t m = slot_master_per(c->nodes[i].port, slot);
        if (m)
            return index_of_port(c, m);
    }
    return -1;
}

int sh_cluster_replica_of(const sh_cluster *cc, int master) {
    sh_cluster *c = (sh_cluster *)cc;
    if (!c || master < 0 || master >= SH_NNODES)
        return -1;
    for (int i = 0; i < SH_NNODES; i++) {
        if (!node_live(c, i))
            continue;
        cnode ns[SH_NNODES * 2];
        int n = parse_nodes(c->nodes[i].port, ns, SH_NNODES * 2);
        if (n < 0)
            continue;
        const char *mid = NULL;
        for (int k = 0; k < n; k++)
            if (ns[k].port == c->nodes[master].port)
                mid = ns[k].id;
        for (int k = 0; mid && k < n; k++) {
            int idx = index_of_port(c, ns[k].port);
            if (!ns[k].master && strcmp(ns[k].master_id, mid) == 0 && idx >= 0 && node_live(c, idx))
                return idx;
        }
        return -1;
    }
    return -1;
}

/* ---- readiness ------------------------------------------------------------------------------------------ */

/* Every node ok and all six agree on a healthy topology of 3 masters with slots and 3 replicas. */
static bool all_agree(void *ctx) {
    sh_cluster *c = ctx;
    char *first = NULL;
    bool ok = true;
    for (int i = 0; i < SH_NNODES && ok; i++) {
        if (!state_ok(c->nodes[i].port)) {
            ok = false;
            break;
        }
        char *t = topology(c->nodes[i].port);
        if (!t || strstr(t, " fail ")) {
            free(t);
            ok = false;
            break;
        }
        if (!first) {
            first = t;
            int masters = 0, replicas = 0;
            for (char *p = first; (p = strstr(p, " master ")); p++)
                masters++;
            for (char *p = first; (p = strstr(p, " slave ")); p++)
                replicas++;
            ok = masters == 3 && replicas == 3 && !strstr(first, " slave 0 ");
        } else {
            ok = strcmp(first, t) == 0;
            free(t);
        }
    }
    free(first);
    return ok;
}

typedef struct slot_ctx {
    sh_cluster *c;
    int slot;
} slot_ctx;

static bool slot_ok(void *vctx) {
    slot_ctx *s = vctx;
    int want = -1;
    for (int i = 0; i < SH_NNODES; i++) {
        if (!node_live(s->c, i))
            continue;
        if (!state_ok(s->c->nodes[i].port))
            return false;
        int m = index_of_port(s->c, slot_master_per(s->c->nodes[i].port, s->slot));
        if (m < 0 || !node_live(s->c, m) || (want >= 0 && m != want))
            return false;
        want = m;
    }
    if (want < 0)
        return false;
    /* and the master itself agrees it is one */
    redisReply *r = sh__redis_rcmd(s->c->nodes[want].port, 500, "ROLE");
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
              r->element[0]->type == REDIS_REPLY_STRING &&
              strcmp(r->element[0]->str, "master") == 0;
    if (r)
        freeReplyObject(r);
    return ok;
}

bool sh_cluster_wait_healthy(sh_cluster *c, int timeout_ms) {
    return c && sh_wait_until(timeout_ms, 20, all_agree, c);
}

bool sh_cluster_wait_ok(sh_cluster *c, int slot, int timeout_ms) {
    if (!c || slot < 0 || slot > 16383)
        return false;
    slot_ctx s = {c, slot};
    return sh_wait_until(timeout_ms, 20, slot_ok, &s);
}

/* ---- lifecycle ---------------------------------------------------------------------------------------------- */

static void cluster_destroy(void *obj) {
    sh_cluster *c = obj;
    sh_cluster_stop(&c);
}

static int run_create(sh_cluster *c) {
    sh__child cli = {0};
    cli.dir = sh__strdup(c->dir);
    cli.log = sh__fmt("%s/cluster-create.log", c->dir);
    cli.name = sh__strdup("redis-cli --cluster create");
    char addr[SH_NNODES][32];
    const char *argv[SH_NNODES + 8];
    int k = 0;
    argv[k++] = "redis-cli";
    argv[k++] = "--cluster";
    argv[k++] = "create";
    for (int i = 0; i < SH_NNODES; i++) {
        snprintf(addr[i], sizeof addr[i], "127.0.0.1:%u", c->nodes[i].port);
        argv[k++] = addr[i];
    }
    argv[k++] = "--cluster-replicas";
    argv[k++] = "1";
    argv[k++] = "--cluster-yes";
    argv[k] = NULL;
    sh__child_set_argv(&cli, argv);
    int rc = sh__child_spawn(&cli);
    if (rc == STRATA_OK) {
        int st = 0;
        if (sh__child_wait(&cli, 60000, &st) != STRATA_OK) {
            sh__child_kill(&cli);
            rc = STRATA_ETIMEDOUT;
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            rc = STRATA_EIO;
        }
        if (rc != STRATA_OK)
            sh__child_dump_log(&cli, "cluster create failed", 30);
    }
    sh__child_clear(&cli);
    return rc;
}

int sh_cluster_start(sh_cluster **out) {
    *out = NULL;
    sh__ensure_init();
    sh_cluster *c = sh__calloc(1, sizeof *c);
    int rc = STRATA_EIO;
    uint64_t t0 = sh_now_ms();
    c->dir = sh__new_subdir("cluster");
    if (!c->dir)
        goto fail;
    for (int i = 0; i < SH_NNODES; i++) {
        c->nodes[i].cluster = true;
        char *dir = sh__fmt("%s/node-%d", c->dir, i);
        rc = sh__mkdirs(dir, 0755) == 0 ? sh__rnode_start(&c->nodes[i], dir,
                                                          "cluster-node-timeout 1000\n"
                                                          "cluster-replica-validity-factor 0\n"
                                                          "cluster-allow-replica-migration no\n")
                                        : STRATA_EIO;
        free(dir);
        if (rc < 0)
            goto fail;
    }
    uint64_t t1 = sh_now_ms();
    if ((rc = run_create(c)) < 0)
        goto fail;
    uint64_t t2 = sh_now_ms();
    if (!sh_cluster_wait_healthy(c, 30000)) {
        fprintf(stderr, "harness: cluster: the nodes did not agree on a healthy topology\n");
        for (int i = 0; i < SH_NNODES; i++) {
            char *t = topology(c->nodes[i].port);
            fprintf(stderr, "  view of node %d (port %u):\n%s", i, c->nodes[i].port,
                    t ? t : "(none)\n");
            free(t);
        }
        rc = STRATA_ETIMEDOUT;
        goto fail;
    }
    if (getenv("STRATA_HARNESS_VERBOSE"))
        fprintf(stderr, "harness: cluster ready in %llu ms (nodes %llu, create %llu, agree %llu)\n",
                (unsigned long long)(sh_now_ms() - t0), (unsigned long long)(t1 - t0),
                (unsigned long long)(t2 - t1), (unsigned long long)(sh_now_ms() - t2));
    c->url = sh__fmt("redis-cluster://127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u", c->nodes[0].port,
                     c->nodes[1].port, c->nodes[2].port);
    sh__track(c, cluster_destroy);
    *out = c;
    return STRATA_OK;
fail:
    sh_cluster_stop(&c);
    return rc < 0 ? rc : STRATA_EIO;
}

void sh_cluster_stop(sh_cluster **cp) {
    if (!cp || !*cp)
        return;
    sh_cluster *c = *cp;
    *cp = NULL;
    sh__untrack(c);
    for (int i = 0; i < SH_NNODES; i++)
        sh__child_kill(&c->nodes[i].ch); /* no data to keep: SIGKILL is the fast stop */
    for (int i = 0; i < SH_NNODES; i++)
        sh__child_clear(&c->nodes[i].ch);
    if (c->dir)
        sh__kill_processes_under(c->dir, 0);
    free(c->dir);
    free(c->url);
    free(c);
}

const char *sh_cluster_url(const sh_cluster *c) { return c ? c->url : NULL; }
int sh_cluster_nnodes(const sh_cluster *c) { return c ? SH_NNODES : 0; }

uint16_t sh_cluster_node_port(const sh_cluster *c, int i) {
    return c && i >= 0 && i < SH_NNODES ? c->nodes[i].port : 0;
}

pid_t sh_cluster_node_pid(const sh_cluster *c, int i) {
    return c && i >= 0 && i < SH_NNODES ? c->nodes[i].ch.pid : 0;
}

int sh_cluster_flush(sh_cluster *c) {
    if (!c)
        return STRATA_EINVAL;
    int rc = STRATA_OK;
    for (int i = 0; i < SH_NNODES; i++) {
        if (!node_live(c, i))
            continue;
        redisReply *role = sh__redis_rcmd(c->nodes[i].port, 1000, "ROLE");
        bool master = role && role->type == REDIS_REPLY_ARRAY && role->elements > 0 &&
                      role->element[0]->type == REDIS_REPLY_STRING &&
                      strcmp(role->element[0]->str, "master") == 0;
        if (role)
            freeReplyObject(role);
        if (!master)
            continue;
        /* SYNC flush, then WAIT on the same connection (WAIT covers only that connection's
         * writes) so replicas have flushed too before the next test reads them. */
        char *info = sh__redis_info(c->nodes[i].port, "replication");
        char nrep[16] = "0";
        if (!info || !sh__info_field(info, "connected_slaves", nrep, sizeof nrep))
            snprintf(nrep, sizeof nrep, "0");
        free(info);
        redisContext *rc_conn = redisConnect("127.0.0.1", c->nodes[i].port);
        redisReply *r = rc_conn && !rc_conn->err ? redisCommand(rc_conn, "FLUSHALL SYNC") : NULL;
        bool flushed = r && r->type != REDIS_REPLY_ERROR;
        if (!flushed)
            rc = STRATA_EIO;
        if (r)
            freeReplyObject(r);
        if (flushed && atoi(nrep) > 0 && (r = redisCommand(rc_conn, "WAIT %d 2000", atoi(nrep))))
            freeReplyObject(r);
        if (rc_conn)
            redisFree(rc_conn);
    }
    return rc;
}

int sh_cluster_kill_node(sh_cluster *c, int i) {
    if (!c || i < 0 || i >= SH_NNODES)
        return STRATA_EINVAL;
    if (!node_live(c, i))
        return STRATA_ENOTFOUND;
    sh__child_kill(&c->nodes[i].ch);
    return STRATA_OK;
}

int sh_cluster_restart_node(sh_cluster *c, int i) {
    if (!c || i < 0 || i >= SH_NNODES)
        return STRATA_EINVAL;
    return sh__rnode_restart(&c->nodes[i]);
}

int sh_cluster_pause_node(sh_cluster *c, int i) {
    if (!c || i < 0 || i >= SH_NNODES)
        return STRATA_EINVAL;
    return sh__child_signal(&c->nodes[i].ch, SIGSTOP);
}

int sh_cluster_resume_node(sh_cluster *c, int i) {
    if (!c || i < 0 || i >= SH_NNODES)
        return STRATA_EINVAL;
    return sh__child_signal(&c->nodes[i].ch, SIGCONT);
}
