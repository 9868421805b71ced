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
 * side guarantees only that every write after arming is reported
 * (tests/integration/redis/test_redis_late_reply.c proves the pair end to end).
 *
 * Sequence streams: making a loss visible
 * ---------------------------------------
 * The connection-drop rule above catches every loss we can see, but not one
 * we cannot (a message lost without the connection dropping), and it costs a
 * full L1 flush each time.  Counting messages does not work: BCAST
 * coalesces the keys written in one event-loop pass into one message.  So
 * writers append (seq, key) to a capped stream per prefix (per hash tag in
 * Cluster) in the same script as the write (tracked_write.lua: entry id
 * `0-<seq>`, dense thanks to XADD's `0-*`), and the reader here polls each
 * stream with seq_read.lua, applying entries in order.  A reader that finds
 * the entry after its last one gone (trimmed past it: it was slower than cap
 * writes) or skipped, or the stream reset (top < last: deleted, or a failover
 * lost its tail), knows exactly which prefix may have lost invalidations and
 * resyncs only that one (on_resync).  This is the per-writer sequence idea
 * of log-based cache invalidation (Facebook's McSqueal/"Scaling Memcache at
 * Facebook", NSDI 2013, and Debezium-style CDC readers that resnapshot a
 * table when their offset has been purged), shrunk to a Redis stream.
 * With streams watched, a tracking drop or re-arm resyncs only the tracked
 * prefixes no stream covers (the streams carry the rest); a master change or
 * a first arm still flushes everything.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_priv.h"
#include "strata/alloc.h"
#include "strata/status.h"

typedef struct seq_watch {
    strata_redis *r;
    char *prefix, *stream;
    size_t plen, slen;
    uint32_t poll_ms;
    uint64_t last;    /* last sequence applied */
    bool based;       /* last is known (first poll done) */
    bool inflight;    /* a poll is out */
    bool orphan;      /* the client is being destroyed: the poll's callback frees it */
    uint64_t next_ms; /* next poll (loop ms) */
} seq_watch;

#define SEQ_BATCH 512

struct tracking_state {
    char **prefixes;
    size_t *lens;
    int n;
    strata_redis_tracking_cbs cbs;
    seq_watch **w;
    int nw;
};

static void trk_flush(strata_redis *r) {
    struct tracking_state *t = r->trk;
    r->stats.flushes++;
    if (r->m.flushes)
        strata_counter_inc(r->m.flushes);
    if (t && t->cbs.on_flush)
        t->cbs.on_flush(t->cbs.ud);
}

static void trk_resync(strata_redis *r, const char *prefix, size_t len) {
    struct tracking_state *t = r->trk;
    r->stats.resyncs++;
    if (t && t->cbs.on_resync)
        t->cbs.on_resync(t->cbs.ud, prefix, len);
    else
        trk_flush(r);
}

static bool prefix_covered(const struct tracking_state *t, int i) {
    for (int k = 0; k < t->nw; k++)
        if (t->w[k]->plen >= t->lens[i] && memcmp(t->w[k]->prefix, t->prefixes[i], t->lens[i]) == 0)
            return true;
    return false;
}

/* Invalidations may have been lost on a node's tracking connection (drop or
 * re-arm).  full: a master change or a first arm (everything may be stale). */
static void trk_loss(strata_redis *r, bool full) {
    struct tracking_state *t = r->trk;
    if (full || !t || t->nw == 0) {
        trk_flush(r);
        return;
    }
    bool flushed = false;
    for (int i = 0; i < t->n; i++) {
        if (prefix_covered(t, i))
            continue;
        if (!t->cbs.on_resync) {
            if (!flushed)
                trk_flush(r);
            flushed = true;
            continue;
        }
        trk_resync(r, t->prefixes[i], t->lens[i]);
    }
    for (int k = 0; k < t->nw; k++)
        t->w[k]->next_ms = 0; /* the streams carry the rest: read them now */
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
        bool rearm = n->trk_ever_armed;
        n->trk_armed = true;
        n->trk_ever_armed = true;
        n->trk_fails = 0;
        /* whatever changed while we were not armed was never reported */
        trk_loss(r, !rearm);
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
    if (was_armed) {
        /* from now on invalidations may be lost; a master change may also have
         * lost writes the streams had reported: flush everything then */
        bool master_change = n->retired || !redis__node_is_master(r, n);
        if (master_change)
            n->trk_ever_armed = false;
        trk_loss(r, master_change);
    }
}

static const link_ops trk_ops = {trk_ready, trk_dead};

static bool should_track(strata_redis *r, rnode *n) {
    if (n->retired)
        return false;
    return redis__node_is_master(r, n);
}

static int seq_scripts(strata_redis *r) {
    if (r->lib_seq_state == 0) {
        int rc =
            strata_redis_script_embedded(&r->lib_twrite, strata_lib_lua_table, "tracked_write.lua");
        if (rc == STRATA_OK)
            rc =
                strata_redis_script_embedded(&r->lib_seqread, strata_lib_lua_table, "seq_read.lua");
        r->lib_seq_state = rc == STRATA_OK ? 1 : rc;
    }
    return r->lib_seq_state == 1 ? STRATA_OK : r->lib_seq_state;
}

/* Parses an entry id "0-<seq>"; false for anything else. */
static bool parse_seq(const redisReply *e, uint64_t *out) {
    if (!e || e->type != REDIS_REPLY_STRING || e->len < 3 || e->len > 24 || e->str[0] != '0' ||
        e->str[1] != '-')
        return false;
    uint64_t v = 0;
    for (size_t i = 2; i < e->len; i++) {
        if (e->str[i] < '0' || e->str[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(e->str[i] - '0');
    }
    *out = v;
    return true;
}

static void seq_gap(strata_redis *r, seq_watch *w) {
    r->stats.seq_gaps++;
    trk_resync(r, w->prefix, w->plen);
}

static void seq_cb(void *ud, int status, const strata_redis_reply *reply) {
    seq_watch *w = ud;
    strata_redis *r = w->r;
    if (w->orphan) {
        strata_free(w->prefix);
        strata_free(w->stream);
        strata_free(w);
        return;
    }
    w->inflight = false;
    uint64_t now = redis__now(r);
    w->next_ms = now + w->poll_ms;
    struct tracking_state *t = r->trk;
    const redisReply *rep = (const redisReply *)reply;
    if (status != STRATA_OK || !t || r->destroying || !rep || rep->type != REDIS_REPLY_ARRAY ||
        rep->elements < 1 || rep->elements % 2 != 1)
        return; /* node unreachable or odd reply: try again at the next poll */
    uint64_t top = 0;
    if (rep->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (rep->element[0]->len > 0 && !parse_seq(rep->element[0], &top)) {
        /* Not a sequence stream (ids not 0-<seq>): every read is a gap. */
        w->based = false;
        seq_gap(r, w);
        return;
    }
    if (!w->based) {
        w->last = top; /* the arming flush covers what came before */
        w->based = true;
        return;
    }
    size_t n = (rep->elements - 1) / 2;
    uint64_t expect = w->last + 1, seq = 0;
    bool gap = n == 0 && top < w->last; /* reset: deleted, or a failover lost its tail */
    for (size_t i = 0; i < n && !gap; i++) {
        const redisReply *id = rep->element[1 + 2 * i], *key = rep->element[2 + 2 * i];
        if (!parse_seq(id, &seq) || seq != expect || key->type != REDIS_REPLY_STRING) {
            gap = true; /* trimmed away or skipped */
            break;
        }
        expect++;
        w->last = seq;
        r->stats.seq_applied++;
        if (key->len > 0 && t->cbs.on_invalidate)
            t->cbs.on_invalidate(t->cbs.ud, key->str, key->len);
        if (r->trk != t || w->orphan)
            return; /* the callback destroyed the client (not allowed) or the session */
    }
    if (gap) {
        w->last = top;
        seq_gap(r, w);
        return;
    }
    if (n >= SEQ_BATCH)
        w->next_ms = now; /* behind: read on at the next tick */
}

static void seq_poll(strata_redis *r, seq_watch *w) {
    if (seq_scripts(r) < 0)
        return;
    char last[24];
    char batch[16];
    snprintf(last, sizeof(last), "%llu", (unsigned long long)w->last);
    snprintf(batch, sizeof(batch), "%d", SEQ_BATCH);
    const char *keys[] = {w->stream};
    size_t klens[] = {w->slen};
    const char *args[] = {last, batch};
    strata_redis_call call = {0};
    call.route_key = w->stream;
    call.route_keylen = w->slen;
    if (strata_redis_evalsha(r, &call, &r->lib_seqread, seq_cb, w, 1, keys, klens, 2, args, NULL) ==
        STRATA_OK)
        w->inflight = true;
    else
        w->next_ms = redis__now(r) + w->poll_ms;
}

void redis__tracking_tick(strata_redis *r, uint64_t now) {
    struct tracking_state *t = r->trk;
    for (int k = 0; t && k < t->nw && !r->destroying; k++) {
        seq_watch *w = t->w[k];
        if (!w->inflight && now >= w->next_ms)
            seq_poll(r, w);
    }
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
    for (int k = 0; k < t->nw; k++) {
        seq_watch *w = t->w[k];
        if (w->inflight) {
            w->orphan = true; /* its callback (ECANCELED) frees it */
            continue;
        }
        strata_free(w->prefix);
        strata_free(w->stream);
        strata_free(w);
    }
    strata_free(t->w);
    for (int i = 0; i < t->n; i++)
        strata_free(t->prefixes[i]);
    strata_free(t->prefixes);
    strata_free(t->lens);
    strata_free(t);
}

int strata_redis_tracking_watch_seq(strata_redis *r, const char *prefix, const char *stream,
                                    uint32_t poll_ms) {
    if (!r || !r->trk || !prefix || !stream || !*stream || r->destroying)
        return STRATA_EINVAL;
    struct tracking_state *t = r->trk;
    size_t slen = strlen(stream);
    for (int k = 0; k < t->nw; k++)
        if (t->w[k]->slen == slen && memcmp(t->w[k]->stream, stream, slen) == 0)
            return STRATA_EEXIST;
    int rc = seq_scripts(r);
    if (rc < 0)
        return rc;
    seq_watch **nwv = strata_realloc(t->w, (size_t)(t->nw + 1) * sizeof(*nwv));
    if (!nwv)
        return STRATA_ENOMEM;
    t->w = nwv;
    seq_watch *w = strata_calloc(1, sizeof(*w));
    if (!w)
        return STRATA_ENOMEM;
    w->r = r;
    w->prefix = strata_strdup(prefix);
    w->stream = strata_strdup(stream);
    if (!w->prefix || !w->stream) {
        strata_free(w->prefix);
        strata_free(w->stream);
        strata_free(w);
        return STRATA_ENOMEM;
    }
    w->plen = strlen(prefix);
    w->slen = slen;
    w->poll_ms = poll_ms ? poll_ms : 100;
    t->w[t->nw++] = w;
    seq_poll(r, w); /* learn the newest sequence now */
    return STRATA_OK;
}

#define TW_STACK_ARGS 32

int strata_redis_tracked_write(strata_redis *r, const strata_redis_call *call, const char *stream,
                               uint32_t cap, int argc, const char *const *argv,
                               const size_t *argvlen, strata_redis_cb cb, void *ud) {
    if (!r || !stream || cap == 0 || argc < 2 || !argv || argc > 1000000)
        return STRATA_EINVAL;
    for (int i = 0; i < argc; i++)
        if (!argv[i])
            return STRATA_EINVAL;
    int rc = seq_scripts(r);
    if (rc < 0)
        return rc;
    /* keys: key, stream; args: cap, command, the arguments after the key */
    int nargs = argc;
    const char *sa[TW_STACK_ARGS];
    size_t sl[TW_STACK_ARGS];
    const char **args = sa;
    size_t *lens = sl;
    if (nargs > TW_STACK_ARGS) {
        args = strata_malloc((size_t)nargs * sizeof(*args));
        lens = strata_malloc((size_t)nargs * sizeof(*lens));
        if (!args || !lens) {
            strata_free(args);
            strata_free(lens);
            return STRATA_ENOMEM;
        }
    }
    char capbuf[16];
    snprintf(capbuf, sizeof(capbuf), "%u", cap);
    args[0] = capbuf;
    lens[0] = strlen(capbuf);
    args[1] = argv[0];
    lens[1] = argvlen ? argvlen[0] : strlen(argv[0]);
    for (int i = 2; i < argc; i++) {
        args[i] = argv[i];
        lens[i] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
    const char *keys[] = {argv[1], stream};
    size_t klens[] = {argvlen ? argvlen[1] : strlen(argv[1]), strlen(stream)};
    rc = strata_redis_evalsha(r, call, &r->lib_twrite, cb, ud, 2, keys, klens, nargs, args, lens);
    if (args != sa) {
        strata_free(args);
        strata_free(lens);
    }
    return rc;
}
