/*
 * redis_tracking.c: server-assisted client-side caching (CLIENT TRACKING)
 * feeding the L1 through callbacks.
 *
 * RESP2 has no push messages, so Redis sends invalidations as Pub/Sub
 * messages on `__redis__:invalidate` to a client that REDIRECT names.  We
 * use one connection per data node that is both: it asks CLIENT ID, turns
 * tracking on for itself with `CLIENT TRACKING on REDIRECT <own id> BCAST
 * PREFIX p... NOLOOP`, then SUBSCRIBEs.  One connection instead of a
 * tracker + subscriber pair means the two can never be half-alive: Redis
 * silently drops invalidations whose redirect client is gone, and here
 * "gone" can only mean "this connection dropped", which we see.
 *
 * BCAST mode reports every write to a key under a prefix, whoever wrote it
 * and whether or not we read it, so no read has to go through this
 * connection.  The rules that keep the L1 correct:
 *   - when the connection drops (node death, failover, CLIENT KILL) we call
 *     on_flush at once: invalidations may be lost from then on;
 *   - when it is armed again (SUBSCRIBE confirmed) we call on_flush again:
 *     whatever was written in between was never reported;
 *   - a nil payload (FLUSHALL/FLUSHDB) is an on_flush;
 *   - in Cluster every master gets its own connection; in Sentinel mode it
 *     follows the master (the old node's connection is closed on a switch).
 * The late-reply race (a GET answered before an invalidation that arrives
 * after it) is the L1's to close with a per-key version/placeholder: this
 * side guarantees only that every write after arming is reported.
 */
#include <string.h>

#include "redis_priv.h"
#include "strata/alloc.h"
#include "strata/status.h"

struct tracking_state {
    char **prefixes;
    size_t *lens;
    int n;
    strata_redis_tracking_cbs cbs;
};

static void trk_flush(strata_redis *r) {
    struct tracking_state *t = r->trk;
    r->stats.flushes++;
    if (r->m.flushes)
        strata_counter_inc(r->m.flushes);
    if (t && t->cbs.on_flush)
        t->cbs.on_flush(t->cbs.ud);
}

static void trk_msg(redisAsyncContext *ac, void *reply, void *priv) {
    rlink *l = priv;
    strata_redis *r = l->r;
    rnode *n = l->owner;
    redisReply *rep = reply;
    (void)ac;
    if (!rep || !r->trk || r->destroying || n->trk != l)
        return;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(rep->element[0]->str, "subscribe") == 0) {
        n->trk_armed = true;
        n->trk_fails = 0;
        trk_flush(r); /* whatever changed while we were not armed was never reported */
        return;
    }
    if (strcmp(rep->element[0]->str, "message") != 0)
        return;
    const redisReply *p = rep->element[2];
    if (p->type == REDIS_REPLY_NIL) {
        trk_flush(r);
        return;
    }
    if (p->type != REDIS_REPLY_ARRAY)
        return;
    struct tracking_state *t = r->trk;
    for (size_t i = 0; i < p->elements; i++) {
        const redisReply *k = p->element[i];
        if (k->type != REDIS_REPLY_STRING)
            continue;
        r->stats.invalidations++;
        if (r->m.invalidations)
            strata_counter_inc(r->m.invalidations);
        if (t->cbs.on_invalidate)
            t->cbs.on_invalidate(t->cbs.ud, k->str, k->len);
    }
}

static void trk_on(redisAsyncContext *ac, void *reply, void *priv) {
    rlink *l = priv;
    redisReply *rep = reply;
    (void)ac;
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        l->hs_error = STRATA_EPROTO;
        redis__link_close(l);
    }
}

static void trk_id(redisAsyncContext *ac, void *reply, void *priv) {
    rlink *l = priv;
    strata_redis *r = l->r;
    struct tracking_state *t = r->trk;
    redisReply *rep = reply;
    if (!rep || !t)
        return;
    if (rep->type != REDIS_REPLY_INTEGER) {
        redis__link_close(l);
        return;
    }
    l->client_id = rep->integer;
    int argc = 6 + 2 * t->n + 1;
    const char **argv = strata_malloc((size_t)argc * sizeof(*argv));
    size_t *lens = strata_malloc((size_t)argc * sizeof(*lens));
    char id[32];
    if (!argv || !lens) {
        strata_free(argv);
        strata_free(lens);
        redis__link_close(l);
        return;
    }
    int len = snprintf(id, sizeof(id), "%lld", rep->integer);
    int k = 0;
    argv[k] = "CLIENT", lens[k++] = 6;
    argv[k] = "TRACKING", lens[k++] = 8;
    argv[k] = "on", lens[k++] = 2;
    argv[k] = "REDIRECT", lens[k++] = 8;
    argv[k] = id, lens[k++] = (size_t)len;
    argv[k] = "BCAST", lens[k++] = 5;
    for (int i = 0; i < t->n; i++) {
        argv[k] = "PREFIX", lens[k++] = 6;
        argv[k] = t->prefixes[i], lens[k++] = t->lens[i];
    }
    argv[k] = "NOLOOP", lens[k++] = 6;
    redisAsyncCommandArgv(ac, trk_on, l, k, argv, lens);
    redisAsyncCommand(ac, trk_msg, l, "SUBSCRIBE __redis__:invalidate");
    strata_free(argv);
    strata_free(lens);
}

static void trk_ready(rlink *l) { redisAsyncCommand(l->ac, trk_id, l, "CLIENT ID"); }

static void trk_dead(rlink *l) {
    rnode *n = l->owner;
    strata_redis *r = l->r;
    if (n->trk != l)
        return;
    bool was_armed = n->trk_armed;
    n->trk = NULL;
    n->trk_armed = false;
    if (r->destroying || !r->trk)
        return;
    n->trk_fails++;
    uint64_t b = (uint64_t)r->o.reconnect_min_ms << (n->trk_fails < 10 ? n->trk_fails : 10);
    if (b > r->o.reconnect_max_ms)
        b = r->o.reconnect_max_ms;
    n->trk_next_ms = redis__now(r) + (was_armed ? 0 : b);
    if (was_armed)
        trk_flush(r); /* from now on invalidations may be lost */
}

static const link_ops trk_ops = {trk_ready, trk_dead};

static bool should_track(strata_redis *r, rnode *n) {
    if (n->retired)
        return false;
    return redis__node_is_master(r, n);
}

void redis__tracking_tick(strata_redis *r, uint64_t now) {
    for (rnode *n = r->nodes; n; n = n->next) {
        bool want = should_track(r, n);
        if (want && !n->trk && now >= n->trk_next_ms) {
            rlink *l = redis__link_open(r, n->host, n->port, n->unix_path, LK_CONTROL,
                                        n->hs_flags & ~HS_SELECT, &trk_ops, n);
            if (!l) {
                n->trk_fails++;
                n->trk_next_ms = now + r->o.reconnect_max_ms;
                continue;
            }
            n->trk = l;
        } else if (!want && n->trk) {
            redis__link_close(n->trk);
        } else if (n->trk && n->trk->state < LS_READY && now >= n->trk->deadline) {
            redis__link_close(n->trk);
        }
    }
}

void redis__tracking_node_gone(strata_redis *r, rnode *n) {
    (void)r;
    if (n->trk)
        redis__link_close(n->trk);
}

int strata_redis_tracking_start(strata_redis *r, int nprefixes, const char *const *prefixes,
                                const strata_redis_tracking_cbs *cbs) {
    if (!r || nprefixes <= 0 || nprefixes > 1000 || !prefixes || !cbs)
        return STRATA_EINVAL;
    if (r->trk)
        return STRATA_EEXIST;
    struct tracking_state *t = strata_calloc(1, sizeof(*t));
    if (!t)
        return STRATA_ENOMEM;
    t->prefixes = strata_calloc((size_t)nprefixes, sizeof(*t->prefixes));
    t->lens = strata_calloc((size_t)nprefixes, sizeof(*t->lens));
    if (!t->prefixes || !t->lens)
        goto oom;
    for (int i = 0; i < nprefixes; i++) {
        if (!prefixes[i])
            goto inval;
        t->prefixes[i] = strata_strdup(prefixes[i]);
        if (!t->prefixes[i])
            goto oom;
        t->lens[i] = strlen(prefixes[i]);
        t->n = i + 1;
    }
    t->cbs = *cbs;
    r->trk = t;
    redis__tick_ref(r);
    redis__tracking_tick(r, redis__now(r));
    return STRATA_OK;
inval:
    r->trk = t;
    redis__tracking_destroy(r);
    return STRATA_EINVAL;
oom:
    r->trk = t;
    redis__tracking_destroy(r);
    return STRATA_ENOMEM;
}

bool strata_redis_tracking_armed(const strata_redis *r) {
    if (!r->trk)
        return false;
    int armed = 0;
    for (rnode *n = r->nodes; n; n = n->next) {
        if (!should_track((strata_redis *)r, n))
            continue;
        if (!n->trk_armed)
            return false;
        armed++;
    }
    return armed > 0;
}

void redis__tracking_destroy(strata_redis *r) {
    struct tracking_state *t = r->trk;
    if (!t)
        return;
    for (rnode *n = r->nodes; n; n = n->next)
        if (n->trk)
            redis__link_close(n->trk);
    r->trk = NULL;
    for (int i = 0; i < t->n; i++)
        strata_free(t->prefixes[i]);
    strata_free(t->prefixes);
    strata_free(t->lens);
    strata_free(t);
}
