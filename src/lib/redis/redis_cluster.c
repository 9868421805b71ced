/*
 * redis_cluster.c: Redis Cluster support: key slots, the slot map, MOVED.
 *
 * Slots.  A key's slot is CRC16-XMODEM(key) mod 16384 (Redis Cluster spec,
 * "Keys distribution model"), where a key holding a non-empty {hash tag}
 * hashes only the tag, so `{user42}:cart` and `{user42}:orders` share a slot.
 *
 * Keys of a command.  The client must know which arguments are keys to route
 * (and to refuse a multi-key command whose keys span slots, which Redis
 * would answer with CROSSSLOT after a round trip).  A small table covers the
 * commands Strata uses: first key, last key (negative = from the end), step;
 * EVAL-family commands carry numkeys; XREAD/XREADGROUP name their keys after
 * STREAMS.  An unknown command is treated as keyless and goes to any node.
 *
 * The map.  `CLUSTER SLOTS` from any reachable node gives ranges and their
 * master; the map is an array of 16384 node pointers.  MOVED updates one slot
 * at once and asks for a full refresh (rate-limited by refresh_min_ms); a
 * failed connection, TRYAGAIN or CLUSTERDOWN asks for one too.  After every
 * refresh, requests queued on nodes that lost their slots are re-routed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "redis_priv.h"
#include "strata/alloc.h"
#include "strata/status.h"

struct cluster_state {
    rnode *slots[REDIS_NSLOTS];
    bool refreshing;
    bool wanted;
    uint64_t last_ms;
    unsigned rr;
};

/* CRC16 XMODEM (polynomial 0x1021), as in the Redis Cluster specification. */
static uint16_t crc16(const char *buf, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned strata_redis_key_slot(const char *key, size_t len) {
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open + 1 - key);
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & (REDIS_NSLOTS - 1);
    }
    return crc16(key, len) & (REDIS_NSLOTS - 1);
}

/* first, last (negative: counted from the end, -1 = last arg), step; first 0 = keyless */
typedef struct keyspec {
    const char *name;
    int first, last, step;
} keyspec;

static const keyspec keyspecs[] = {
    {"APPEND", 1, 1, 1},
    {"BITCOUNT", 1, 1, 1},
    {"BLMOVE", 1, 2, 1},
    {"BLPOP", 1, -2, 1},
    {"BRPOP", 1, -2, 1},
    {"COPY", 1, 2, 1},
    {"DECR", 1, 1, 1},
    {"DECRBY", 1, 1, 1},
    {"DEL", 1, -1, 1},
    {"DUMP", 1, 1, 1},
    {"EXISTS", 1, -1, 1},
    {"EXPIRE", 1, 1, 1},
    {"EXPIREAT", 1, 1, 1},
    {"GET", 1, 1, 1},
    {"GETBIT", 1, 1, 1},
    {"GETDEL", 1, 1, 1},
    {"GETEX", 1, 1, 1},
    {"GETRANGE", 1, 1, 1},
    {"GETSET", 1, 1, 1},
    {"HDEL", 1, 1, 1},
    {"HEXISTS", 1, 1, 1},
    {"HGET", 1, 1, 1},
    {"HGETALL", 1, 1, 1},
    {"HINCRBY", 1, 1, 1},
    {"HINCRBYFLOAT", 1, 1, 1},
    {"HKEYS", 1, 1, 1},
    {"HLEN", 1, 1, 1},
    {"HMGET", 1, 1, 1},
    {"HMSET", 1, 1, 1},
    {"HSET", 1, 1, 1},
    {"HSETNX", 1, 1, 1},
    {"HVALS", 1, 1, 1},
    {"INCR", 1, 1, 1},
    {"INCRBY", 1, 1, 1},
    {"INCRBYFLOAT", 1, 1, 1},
    {"LINDEX", 1, 1, 1},
    {"LLEN", 1, 1, 1},
    {"LMOVE", 1, 2, 1},
    {"LPOP", 1, 1, 1},
    {"LPUSH", 1, 1, 1},
    {"LRANGE", 1, 1, 1},
    {"LREM", 1, 1, 1},
    {"LSET", 1, 1, 1},
    {"LTRIM", 1, 1, 1},
    {"MGET", 1, -1, 1},
    {"MSET", 1, -1, 2},
    {"MSETNX", 1, -1, 2},
    {"PERSIST", 1, 1, 1},
    {"PEXPIRE", 1, 1, 1},
    {"PEXPIREAT", 1, 1, 1},
    {"PFADD", 1, 1, 1},
    {"PFCOUNT", 1, -1, 1},
    {"PSETEX", 1, 1, 1},
    {"PTTL", 1, 1, 1},
    {"RENAME", 1, 2, 1},
    {"RENAMENX", 1, 2, 1},
    {"RPOP", 1, 1, 1},
    {"RPOPLPUSH", 1, 2, 1},
    {"RPUSH", 1, 1, 1},
    {"SADD", 1, 1, 1},
    {"SCARD", 1, 1, 1},
    {"SDIFF", 1, -1, 1},
    {"SET", 1, 1, 1},
    {"SETBIT", 1, 1, 1},
    {"SETEX", 1, 1, 1},
    {"SETNX", 1, 1, 1},
    {"SETRANGE", 1, 1, 1},
    {"SINTER", 1, -1, 1},
    {"SISMEMBER", 1, 1, 1},
    {"SMEMBERS", 1, 1, 1},
    {"SMOVE", 1, 2, 1},
    {"SPOP", 1, 1, 1},
    {"SRANDMEMBER", 1, 1, 1},
    {"SREM", 1, 1, 1},
    {"STRLEN", 1, 1, 1},
    {"SUNION", 1, -1, 1},
    {"TOUCH", 1, -1, 1},
    {"TTL", 1, 1, 1},
    {"TYPE", 1, 1, 1},
    {"UNLINK", 1, -1, 1},
    {"WATCH", 1, -1, 1},
    {"XACK", 1, 1, 1},
    {"XADD", 1, 1, 1},
    {"XAUTOCLAIM", 1, 1, 1},
    {"XCLAIM", 1, 1, 1},
    {"XDEL", 1, 1, 1},
    {"XGROUP", 2, 2, 1},
    {"XINFO", 2, 2, 1},
    {"XLEN", 1, 1, 1},
    {"XPENDING", 1, 1, 1},
    {"XRANGE", 1, 1, 1},
    {"XREVRANGE", 1, 1, 1},
    {"XSETID", 1, 1, 1},
    {"XTRIM", 1, 1, 1},
    {"ZADD", 1, 1, 1},
    {"ZCARD", 1, 1, 1},
    {"ZCOUNT", 1, 1, 1},
    {"ZINCRBY", 1, 1, 1},
    {"ZRANGE", 1, 1, 1},
    {"ZRANGEBYSCORE", 1, 1, 1},
    {"ZRANK", 1, 1, 1},
    {"ZREM", 1, 1, 1},
    {"ZREMRANGEBYSCORE", 1, 1, 1},
    {"ZREVRANGE", 1, 1, 1},
    {"ZSCORE", 1, 1, 1},
};

static int keyspec_cmp(const void *a, const void *b) {
    return strcasecmp(((const keyspec *)a)->name, ((const keyspec *)b)->name);
}

static uint32_t fnv(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int slot_of_args(int argc, const char **argv, const size_t *lens, uint32_t *keyhash);

static bool eq_nocase(const char *a, size_t n, const char *lit) {
    return strlen(lit) == n && strncasecmp(a, lit, n) == 0;
}

int redis__cmd_slot(const char *cmd, size_t len, uint32_t *keyhash) {
    const char *sargv[64];
    size_t slens[64];
    const char **argv = sargv;
    size_t *lens = slens;
    int argc = redis__split(cmd, len, argv, lens, 64);
    if (argc <= 0)
        return STRATA_EINVAL;
    if (argc > 64) {
        argv = strata_malloc((size_t)argc * sizeof(*argv));
        lens = strata_malloc((size_t)argc * sizeof(*lens));
        if (!argv || !lens) {
            strata_free(argv);
            strata_free(lens);
            return STRATA_ENOMEM;
        }
        redis__split(cmd, len, argv, lens, argc);
    }
    int rc = slot_of_args(argc, argv, lens, keyhash);
    if (argv != sargv) {
        strata_free(argv);
        strata_free(lens);
    }
    return rc;
}

static int slot_of_args(int argc, const char **argv, const size_t *lens, uint32_t *keyhash) {
    char name[32];
    if (lens[0] >= sizeof(name))
        return -1;
    memcpy(name, argv[0], lens[0]);
    name[lens[0]] = '\0';
    int first = 0, last = 0, step = 1;
    if (eq_nocase(argv[0], lens[0], "EVAL") || eq_nocase(argv[0], lens[0], "EVALSHA") ||
        eq_nocase(argv[0], lens[0], "EVAL_RO") || eq_nocase(argv[0], lens[0], "EVALSHA_RO") ||
        eq_nocase(argv[0], lens[0], "FCALL") || eq_nocase(argv[0], lens[0], "FCALL_RO")) {
        if (argc < 3)
            return STRATA_EINVAL;
        long nk = strtol(argv[2], NULL, 10);
        if (nk < 0 || nk > argc - 3)
            return STRATA_EINVAL;
        if (nk == 0)
            return -1;
        first = 3;
        last = 3 + (int)nk - 1;
    } else if (eq_nocase(argv[0], lens[0], "XREAD") || eq_nocase(argv[0], lens[0], "XREADGROUP")) {
        int s = -1;
        for (int i = 1; i < argc; i++)
            if (eq_nocase(argv[i], lens[i], "STREAMS")) {
                s = i;
                break;
            }
        if (s < 0 || (argc - s - 1) < 2 || (argc - s - 1) % 2)
            return STRATA_EINVAL;
        first = s + 1;
        last = s + (argc - s - 1) / 2;
    } else {
        keyspec k = {name, 0, 0, 0};
        const keyspec *ks = bsearch(&k, keyspecs, sizeof(keyspecs) / sizeof(keyspecs[0]),
                                    sizeof(keyspecs[0]), keyspec_cmp);
        if (!ks)
            return -1;
        first = ks->first;
        last = ks->last < 0 ? argc + ks->last : ks->last;
        step = ks->step;
        if (first >= argc)
            return STRATA_EINVAL;
        if (last >= argc)
            last = argc - 1;
    }
    int slot = -1;
    for (int i = first; i <= last; i += step) {
        int s = (int)strata_redis_key_slot(argv[i], lens[i]);
        if (slot < 0) {
            slot = s;
            if (keyhash)
                *keyhash = fnv(argv[i], lens[i]);
        } else if (s != slot) {
            return STRATA_ECROSSSLOT;
        }
    }
    return slot;
}

/* ---- the slot map ----------------------------------------------------------------- */

int redis__cluster_start(strata_redis *r) {
    r->cl = strata_calloc(1, sizeof(*r->cl));
    if (!r->cl)
        return STRATA_ENOMEM;
    for (size_t i = 0; i < r->url.nhosts; i++)
        if (!redis__node_get(r, r->url.hosts[i].host, r->url.hosts[i].port, NULL))
            return STRATA_ENOMEM;
    redis__cluster_refresh(r);
    return STRATA_OK;
}

void redis__cluster_destroy(strata_redis *r) {
    strata_free(r->cl);
    r->cl = NULL;
}

bool redis__node_is_master(strata_redis *r, rnode *n) {
    if (r->url.mode != STRATA_REDIS_CLUSTER)
        return n == r->master;
    return n->nslots > 0;
}

rnode *redis__cluster_route(strata_redis *r, int slot) {
    struct cluster_state *c = r->cl;
    if (!c)
        return NULL;
    if (slot >= 0)
        return c->slots[slot];
    /* keyless: any master that is not known down, else any master */
    rnode *any = NULL;
    for (rnode *n = r->nodes; n; n = n->next) {
        if (n->nslots <= 0)
            continue;
        if (n->fails == 0)
            return n;
        any = n;
    }
    return any;
}

static rnode *node_from_addr(strata_redis *r, const char *addr, size_t len) {
    char buf[300];
    if (len == 0 || len >= sizeof(buf))
        return NULL;
    memcpy(buf, addr, len);
    buf[len] = '\0';
    char *colon = strrchr(buf, ':');
    if (!colon || colon == buf)
        return NULL;
    *colon = '\0';
    long port = strtol(colon + 1, NULL, 10);
    if (port <= 0 || port > 65535)
        return NULL;
    return redis__node_get(r, buf, (uint16_t)port, NULL);
}

rnode *redis__cluster_node_for_addr(strata_redis *r, const char *addr, size_t len) {
    return node_from_addr(r, addr, len);
}

void redis__cluster_moved(strata_redis *r, int slot, const char *addr, size_t len) {
    rnode *n = node_from_addr(r, addr, len);
    if (!n || !r->cl)
        return;
    rnode *old = r->cl->slots[slot];
    if (old != n) {
        if (old)
            old->nslots--;
        n->nslots++;
        r->cl->slots[slot] = n;
    }
    redis__cluster_refresh(r);
}

static void on_slots(void *ud, int status, const strata_redis_reply *rep) {
    rnode *asked = ud;
    strata_redis *r = asked->r;
    struct cluster_state *c = r->cl;
    if (!c)
        return;
    c->refreshing = false;
    if (status != STRATA_OK || !rep || rep->type != STRATA_REPLY_ARRAY || rep->elements == 0) {
        c->wanted = true; /* try another node on the next tick */
        return;
    }
    rnode *map[REDIS_NSLOTS];
    memset(map, 0, sizeof(map));
    for (size_t i = 0; i < rep->elements; i++) {
        const strata_redis_reply *e = rep->element[i];
        if (e->type != STRATA_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != STRATA_REPLY_INTEGER ||
            e->element[1]->type != STRATA_REPLY_INTEGER ||
            e->element[2]->type != STRATA_REPLY_ARRAY || e->element[2]->elements < 2)
            continue;
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        const strata_redis_reply *m = e->element[2];
        if (lo < 0 || hi >= REDIS_NSLOTS || lo > hi || m->element[0]->type != STRATA_REPLY_STRING ||
            m->element[1]->type != STRATA_REPLY_INTEGER)
            continue;
        const char *host = m->element[0]->len ? m->element[0]->str : asked->host;
        long long port = m->element[1]->integer;
        if (!host || port <= 0 || port > 65535)
            continue;
        rnode *n = redis__node_get(r, host, (uint16_t)port, NULL);
        if (!n)
            continue;
        for (long long s = lo; s <= hi; s++)
            map[s] = n;
    }
    for (rnode *n = r->nodes; n; n = n->next)
        n->nslots = 0;
    for (int s = 0; s < REDIS_NSLOTS; s++) {
        c->slots[s] = map[s];
        if (map[s])
            map[s]->nslots++;
    }
    r->stats.failovers++;
    if (r->m.failovers)
        strata_counter_inc(r->m.failovers);
    /* Requests queued on nodes that are no longer masters, or waiting for a
     * map, go where the new map says. */
    for (rnode *n = r->nodes; n; n = n->next) {
        if (n->nslots == 0 || n->fails > 0) {
            redis__reroute_list(r, &n->queue);
            redis__reroute_list(r, &n->dqueue);
        }
    }
    redis__reroute_list(r, &r->unrouted);
}

static void do_refresh(strata_redis *r) {
    struct cluster_state *c = r->cl;
    /* Ask a node that is not known down, rotating so a dead one is not asked twice in a row. */
    unsigned count = 0;
    for (rnode *n = r->nodes; n; n = n->next)
        count++;
    if (count == 0)
        return;
    rnode *pick = NULL;
    for (unsigned tries = 0; tries < count && !pick; tries++) {
        unsigned idx = (c->rr++) % count;
        rnode *n = r->nodes;
        for (unsigned i = 0; i < idx; i++)
            n = n->next;
        if (n->fails == 0 || redis__now(r) >= n->next_connect_ms)
            pick = n;
    }
    if (!pick)
        return;
    static const char *const argv[] = {"CLUSTER", "SLOTS"};
    c->refreshing = true;
    c->wanted = false;
    c->last_ms = redis__now(r);
    if (redis__internal(r, pick, on_slots, pick, 2, argv, NULL) < 0) {
        c->refreshing = false;
        c->wanted = true;
    }
}

void redis__cluster_refresh(strata_redis *r) {
    struct cluster_state *c = r->cl;
    if (!c || r->destroying)
        return;
    c->wanted = true;
    if (!c->refreshing && (c->last_ms == 0 || redis__now(r) >= c->last_ms + r->o.refresh_min_ms))
        do_refresh(r);
}

void redis__cluster_tick(strata_redis *r, uint64_t now) {
    struct cluster_state *c = r->cl;
    if (!c)
        return;
    /* While requests wait on an unreachable node, keep asking for the map. */
    for (rnode *n = r->nodes; n && !c->wanted; n = n->next)
        if (n->fails > 0 && (n->queue.n > 0 || n->dqueue.n > 0))
            c->wanted = true;
    if (r->unrouted.n > 0)
        c->wanted = true;
    if (c->wanted && !c->refreshing && now >= c->last_ms + r->o.refresh_min_ms)
        do_refresh(r);
}
