/*
 * persister.c: the write-behind persister (strata/tier.h).
 *
 * Write-behind entities (flash-sale orders, red-packet grabs) are true in Redis
 * first: a scenario script changes Redis and XADDs an event in one atomic call.
 * The persister turns those events into database rows, exactly once in effect:
 *
 *   read      XREADGROUP GROUP strata-persister <node-id> over every stream of
 *             the registry set (SMEMBERS strata:wb:streams, re-read every
 *             discover_ms), own pending entries first ("0": a restarted node
 *             resumes the batch it was killed in), then new ones (">").
 *   apply     one database transaction per batch (strata_db_apply_events: one
 *             commit, one fsync), a savepoint per event; each event first
 *             records "<type>:<id>" (the id from the event BODY, never the stream
 *             entry id, which a promoted replica may reissue after a lossy
 *             failover) in the applied-events table, so a re-delivered event is a
 *             DUPLICATE and changes nothing; then the handler registered for its
 *             type runs.
 *   ack       XACK only after the commit.  A crash between commit and XACK
 *             re-delivers the batch, which then applies as duplicates.  An
 *             unknown commit outcome (EUNKNOWN) is the same case.
 *   reclaim   XAUTOCLAIM entries idle longer than claim_idle_ms (a dead node's
 *             pending entries) into this consumer; they are then read as own
 *             pending entries.
 *   retry     a failed batch (database down, timeout) leaves its entries pending;
 *             the stream waits retry_min_ms, doubled up to retry_max_ms, and the
 *             database sits behind a circuit breaker: while it is open nothing
 *             is read, events wait in Redis.
 *   poison    an event whose handler fails is rolled back alone (savepoint) and
 *             counted; after max_attempts it is moved, with the error, to
 *             "<stream>:dlq" and acknowledged, in one script (wb_dlq_move.lua).
 *             Malformed events (no type or id) go there at once.
 *   trim      strata_redis_xtrim_safe: only what every group acknowledged.
 *
 * The thread uses the blocking Redis API (a private loop) and the blocking
 * database API, as db.h intends for the persister thread.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "strata/alloc.h"
#include "strata/status.h"
#include "tier_internal.h"

#define MAX_HANDLERS 32
#define TYPE_MAX     32

typedef struct wb_stream {
    char *name;
    char *dlq;
    bool group_ok;
    uint64_t retry_at_ms; /* entries of this stream wait for a retry until then */
    uint32_t backoff_ms;
} wb_stream;

typedef struct wb_handler {
    char type[TYPE_MAX + 1];
    strata_wb_handler_fn fn;
    void *ctx;
} wb_handler;

typedef struct wb_attempt {
    char *key; /* "stream\nentry-id" */
    uint32_t n;
} wb_attempt;

struct strata_persister {
    strata_persister_config cfg;
    char *redis_url, *node_id, *group, *registry;
    strata_db *db;
    strata_breaker *breaker;
    strata_clock *clock;

    tier__worker w;              /* the persister thread; w.mu also guards what follows */
    uint64_t pass_no, idle_pass; /* drain: last pass that found nothing to do */

    wb_stream *streams; /* under mu for add; the thread reads it under mu */
    size_t nstreams, capstreams;
    wb_handler handlers[MAX_HANDLERS];
    int nhandlers;

    wb_attempt *attempts; /* thread only */
    size_t nattempts, capattempts;

    strata_redis_script dlq_move;

    /* stats */
    atomic_uint_fast64_t applied, duplicates, superseded, failed_events, dead_lettered;
    atomic_uint_fast64_t batches, batch_failures, claimed, acked, trimmed, unreplicated;
    atomic_int_fast64_t lag, pending, dlq;
    strata_counter *m_applied, *m_dup, *m_superseded, *m_failed, *m_dead, *m_batches, *m_batch_fail,
        *m_claimed, *m_unreplicated;
    strata_gauge *g_lag, *g_pending, *g_dlq;
};

void strata_persister_config_init(strata_persister_config *c) {
    memset(c, 0, sizeof *c);
    c->group = STRATA_WB_GROUP;
    c->registry = STRATA_WB_REGISTRY;
    c->batch = 200;
    c->idle_max_ms = 50;
    c->discover_ms = 1000;
    c->claim_idle_ms = 30000;
    c->claim_every_ms = 5000;
    c->max_attempts = 5;
    c->retry_min_ms = 50;
    c->retry_max_ms = 2000;
    c->trim_every_ms = 10000;
    c->stats_every_ms = 1000;
    c->wait_timeout_ms = 500;
    strata_breaker_config_default(&c->breaker);
}

uint64_t tier__mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int tier__sync_finish(strata_redis_sync *s, strata_redis_sync_op *op, int rc) {
    if (rc < 0)
        return rc;
    return strata_redis_sync_wait(s, op);
}

int tier__script(strata_redis_script *s, const char *name) {
    return strata_redis_script_embedded(s, strata_lib_lua_table, name);
}

const char *strata_wb_event_get(const strata_wb_event *e, const char *field, size_t *len) {
    if (!e || !field)
        return NULL;
    for (int i = 0; i < e->nfields; i++)
        if (strcmp(e->field[i], field) == 0) {
            if (len)
                *len = e->value_len[i];
            return e->value[i];
        }
    return NULL;
}

static bool name_ok(const char *s, size_t max) {
    if (!s)
        return false;
    size_t n = strlen(s);
    return n >= 1 && n <= max && strata_utf8_valid(s, n);
}

int strata_persister_create(const strata_persister_config *cfg, strata_persister **out,
                            strata_buf *err) {
    if (!out)
        return STRATA_EINVAL;
    *out = NULL;
    if (!cfg || !cfg->db || !cfg->redis_url || !name_ok(cfg->node_id, STRATA_DB_OWNER_MAX)) {
        if (err)
            strata_buf_puts(err,
                            "persister: redis_url, db and node_id (1..128 bytes) are required");
        return STRATA_EINVAL;
    }
    if (cfg->batch == 0 || cfg->batch > 10000 || cfg->max_attempts == 0) {
        if (err)
            strata_buf_puts(err, "persister: batch must be 1..10000 and max_attempts >= 1");
        return STRATA_EINVAL;
    }
    strata_persister *p = strata_calloc(1, sizeof *p);
    if (!p)
        return STRATA_ENOMEM;
    p->cfg = *cfg;
    p->db = cfg->db;
    p->clock = cfg->clock ? cfg->clock : strata_clock_system();
    p->redis_url = strata_strdup(cfg->redis_url);
    p->node_id = strata_strdup(cfg->node_id);
    p->group = strata_strdup(cfg->group ? cfg->group : STRATA_WB_GROUP);
    p->registry = strata_strdup(cfg->registry ? cfg->registry : STRATA_WB_REGISTRY);
    p->breaker = strata_breaker_create("wb_persister", &cfg->breaker, cfg->metrics);
    tier__worker_init(&p->w);
    if (!p->redis_url || !p->node_id || !p->group || !p->registry || !p->breaker ||
        tier__script(&p->dlq_move, "wb_dlq_move.lua") < 0) {
        strata_persister_destroy(&p);
        return STRATA_ENOMEM;
    }
    strata_metrics *m = cfg->metrics;
    if (m) {
        const char *h = "write-behind events by outcome";
        p->m_applied =
            strata_metrics_counter(m, "strata_wb_events_total", h, "outcome=\"applied\"");
        p->m_dup = strata_metrics_counter(m, "strata_wb_events_total", h, "outcome=\"duplicate\"");
        p->m_superseded =
            strata_metrics_counter(m, "strata_wb_events_total", h, "outcome=\"superseded\"");
        p->m_failed = strata_metrics_counter(m, "strata_wb_events_total", h, "outcome=\"failed\"");
        p->m_dead =
            strata_metrics_counter(m, "strata_wb_events_total", h, "outcome=\"dead_lettered\"");
        p->m_batches = strata_metrics_counter(m, "strata_wb_batches_total",
                                              "write-behind batches committed", NULL);
        p->m_batch_fail = strata_metrics_counter(m, "strata_wb_batch_failures_total",
                                                 "write-behind batches lost (retried)", NULL);
        p->m_claimed = strata_metrics_counter(m, "strata_wb_claimed_total",
                                              "entries taken over by XAUTOCLAIM", NULL);
        p->m_unreplicated = strata_metrics_counter(
            m, "strata_wb_unreplicated_total",
            "batches held back because replicas had not acknowledged them (WAIT unmet)", NULL);
        p->g_lag = strata_metrics_gauge(m, "strata_wb_lag",
                                        "entries not yet delivered to the persister group", NULL);
        p->g_pending = strata_metrics_gauge(m, "strata_wb_pending",
                                            "entries delivered and not acknowledged", NULL);
        p->g_dlq = strata_metrics_gauge(m, "strata_wb_dead_letters",
                                        "entries in the dead-letter streams", NULL);
    }
    *out = p;
    return STRATA_OK;
}

int strata_persister_handle(strata_persister *p, const char *type, strata_wb_handler_fn fn,
                            void *ctx) {
    if (!p || !fn || !name_ok(type, TYPE_MAX))
        return STRATA_EINVAL;
    pthread_mutex_lock(&p->w.mu);
    int rc = STRATA_OK;
    if (p->w.started) {
        rc = STRATA_EPERM;
    } else {
        int i;
        for (i = 0; i < p->nhandlers; i++)
            if (strcmp(p->handlers[i].type, type) == 0)
                break;
        if (i == MAX_HANDLERS) {
            rc = STRATA_ERANGE;
        } else {
            snprintf(p->handlers[i].type, sizeof p->handlers[i].type, "%s", type);
            p->handlers[i].fn = fn;
            p->handlers[i].ctx = ctx;
            if (i == p->nhandlers)
                p->nhandlers++;
        }
    }
    pthread_mutex_unlock(&p->w.mu);
    return rc;
}

/* Caller holds mu. */
static int do_add_stream(strata_persister *p, const char *name, size_t len) {
    for (size_t i = 0; i < p->nstreams; i++)
        if (strlen(p->streams[i].name) == len && memcmp(p->streams[i].name, name, len) == 0)
            return STRATA_EEXIST;
    if (p->nstreams == p->capstreams) {
        size_t cap = p->capstreams ? p->capstreams * 2 : 8;
        wb_stream *n = strata_realloc(p->streams, cap * sizeof *n);
        if (!n)
            return STRATA_ENOMEM;
        p->streams = n;
        p->capstreams = cap;
    }
    wb_stream *s = &p->streams[p->nstreams];
    memset(s, 0, sizeof *s);
    s->name = strata_strndup(name, len);
    s->dlq = strata_malloc(len + sizeof STRATA_WB_DLQ_SUFFIX);
    if (!s->name || !s->dlq) {
        strata_free(s->name);
        strata_free(s->dlq);
        return STRATA_ENOMEM;
    }
    memcpy(s->dlq, name, len);
    memcpy(s->dlq + len, STRATA_WB_DLQ_SUFFIX, sizeof STRATA_WB_DLQ_SUFFIX);
    p->nstreams++;
    return STRATA_OK;
}

static bool stream_name_ok(const char *s, size_t n) {
    /* A dead-letter stream is never itself a source. */
    size_t sl = sizeof STRATA_WB_DLQ_SUFFIX - 1;
    if (n >= sl && memcmp(s + n - sl, STRATA_WB_DLQ_SUFFIX, sl) == 0)
        return false;
    return n >= 1 && n <= 512 && memchr(s, 0, n) == NULL;
}

int strata_persister_add_stream(strata_persister *p, const char *stream) {
    if (!p || !stream || !stream_name_ok(stream, strlen(stream)))
        return STRATA_EINVAL;
    pthread_mutex_lock(&p->w.mu);
    int rc = do_add_stream(p, stream, strlen(stream));
    pthread_mutex_unlock(&p->w.mu);
    return rc == STRATA_EEXIST ? STRATA_OK : rc;
}

/* ---- attempts (thread only) ---------------------------------------------------- */

static wb_attempt *attempt_find(strata_persister *p, const char *key, bool create) {
    for (size_t i = 0; i < p->nattempts; i++)
        if (strcmp(p->attempts[i].key, key) == 0)
            return &p->attempts[i];
    if (!create)
        return NULL;
    if (p->nattempts == p->capattempts) {
        size_t cap = p->capattempts ? p->capattempts * 2 : 16;
        wb_attempt *n = strata_realloc(p->attempts, cap * sizeof *n);
        if (!n)
            return NULL;
        p->attempts = n;
        p->capattempts = cap;
    }
    char *k = strata_strdup(key);
    if (!k)
        return NULL;
    p->attempts[p->nattempts].key = k;
    p->attempts[p->nattempts].n = 0;
    return &p->attempts[p->nattempts++];
}

static void attempt_forget(strata_persister *p, const char *key) {
    for (size_t i = 0; i < p->nattempts; i++)
        if (strcmp(p->attempts[i].key, key) == 0) {
            strata_free(p->attempts[i].key);
            p->attempts[i] = p->attempts[--p->nattempts];
            return;
        }
}

/* ---- one batch --------------------------------------------------------------------- */

typedef struct wb_item {
    strata_persister *p;
    const wb_handler *h;
    strata_wb_event ev;
    const char *fields[128];
    const char *values[128];
    size_t vlens[128];
    char event_id[TYPE_MAX + 1 + STRATA_DB_EVENT_ID_MAX + 1];
    const char *entry_id;
    bool malformed;
    bool deleted; /* entry deleted while pending: only ack */
} wb_item;

typedef struct wb_batch {
    strata_persister *p;
    wb_stream *s;
    wb_item *items;
    size_t n, cap;
} wb_batch;

static int tx_trampoline(strata_db_conn *c, void *arg) {
    wb_item *it = arg;
    if (!it->h)
        return STRATA_ENOTFOUND; /* no handler for this type */
    return it->h->fn(c, &it->ev, it->h->ctx);
}

static const wb_handler *find_handler(strata_persister *p, const char *type) {
    for (int i = 0; i < p->nhandlers; i++)
        if (strcmp(p->handlers[i].type, type) == 0)
            return &p->handlers[i];
    return NULL;
}

static int collect_entry(void *ud, const strata_redis_xentry *x) {
    wb_batch *b = ud;
    if (b->n == b->cap)
        return 1;
    wb_item *it = &b->items[b->n++];
    memset(it, 0, sizeof *it);
    it->p = b->p;
    it->entry_id = x->id;
    if (x->nfv == 0) {
        it->deleted = true;
        return 0;
    }
    size_t nf = x->nfv / 2;
    if (nf > 128 || x->nfv % 2) {
        it->malformed = true;
        return 0;
    }
    for (size_t i = 0; i < nf; i++) {
        const strata_redis_reply *f = x->fv[2 * i], *v = x->fv[2 * i + 1];
        if (!f || !v || f->type != STRATA_REPLY_STRING || v->type != STRATA_REPLY_STRING) {
            it->malformed = true;
            return 0;
        }
        it->fields[i] = f->str;
        it->values[i] = v->str;
        it->vlens[i] = v->len;
    }
    it->ev.stream = b->s->name;
    it->ev.entry_id = x->id;
    it->ev.nfields = (int)nf;
    it->ev.field = it->fields;
    it->ev.value = it->values;
    it->ev.value_len = it->vlens;
    size_t tl = 0, il = 0;
    const char *type = strata_wb_event_get(&it->ev, "type", &tl);
    const char *id = strata_wb_event_get(&it->ev, "id", &il);
    if (!type || !id || tl == 0 || tl > TYPE_MAX || il == 0 ||
        tl + 1 + il > STRATA_DB_EVENT_ID_MAX || !strata_utf8_valid(type, tl) ||
        !strata_utf8_valid(id, il)) {
        it->malformed = true;
        return 0;
    }
    it->ev.type = type;
    it->ev.id = id;
    snprintf(it->event_id, sizeof it->event_id, "%s:%s", type, id);
    it->h = find_handler(b->p, type);
    return 0;
}

static void count(atomic_uint_fast64_t *a, strata_counter *c, uint64_t n) {
    if (!n)
        return;
    atomic_fetch_add(a, n);
    if (c)
        strata_counter_add(c, n);
}

static int dlq_move(strata_persister *p, strata_redis_sync *rs, wb_stream *s, const char *entry,
                    const char *why, uint32_t attempts) {
    const char *keys[2] = {s->name, s->dlq};
    size_t kl[2] = {strlen(s->name), strlen(s->dlq)};
    char att[16];
    snprintf(att, sizeof att, "%u", attempts);
    const char *args[5] = {p->group, entry, why, att, p->node_id};
    size_t al[5] = {strlen(p->group), strlen(entry), strlen(why), strlen(att), strlen(p->node_id)};
    strata_redis_sync_op op = {0};
    int rc = strata_redis_evalsha(strata_redis_sync_client(rs), NULL, &p->dlq_move,
                                  strata_redis_sync_cb, &op, 2, keys, kl, 5, args, al);
    rc = tier__sync_finish(rs, &op, rc);
    strata_redis_reply_free(op.reply);
    if (rc == STRATA_OK)
        count(&p->dead_lettered, p->m_dead, 1);
    return rc;
}

static void stream_backoff(strata_persister *p, wb_stream *s) {
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : p->cfg.retry_min_ms;
    if (s->backoff_ms > p->cfg.retry_max_ms)
        s->backoff_ms = p->cfg.retry_max_ms;
    s->retry_at_ms = tier__mono_ms() + s->backoff_ms;
}

/*
 * Reads and applies one batch of stream s from `id` ("0" own pending, ">" new).
 * Returns entries handled (> 0), 0 when there were none, or a negative status.
 */
static int run_batch(strata_persister *p, strata_redis_sync *rs, wb_stream *s, const char *id) {
    strata_redis_sync_op op = {0};
    strata_redis_call call = {0};
    call.wait_replicas = p->cfg.wait_replicas;
    call.wait_timeout_ms = p->cfg.wait_timeout_ms;
    int rc = strata_redis_xreadgroup(strata_redis_sync_client(rs), &call, p->group, p->node_id,
                                     p->cfg.batch, 0, s->name, id, strata_redis_sync_cb, &op);
    rc = tier__sync_finish(rs, &op, rc);
    if (rc == STRATA_EUNKNOWN && p->cfg.wait_replicas > 0) {
        /* Read, but not yet on enough replicas: apply nothing.  The entries stay pending to
         * this consumer and are read again ("0") once the replicas catch up. */
        strata_redis_reply_free(op.reply);
        count(&p->unreplicated, p->m_unreplicated, 1);
        stream_backoff(p, s);
        return rc;
    }
    if (rc < 0) {
        /* A stream recreated without its group (deleted, or lost in a failover): create it again. */
        if (op.reply && op.reply->type == STRATA_REPLY_ERROR && strstr(op.reply->str, "NOGROUP"))
            s->group_ok = false;
        strata_redis_reply_free(op.reply);
        return rc;
    }
    wb_batch b = {p, s, NULL, 0, p->cfg.batch};
    b.items = strata_calloc(p->cfg.batch, sizeof *b.items);
    strata_db_event *evs = strata_calloc(p->cfg.batch, sizeof *evs);
    int *map = strata_calloc(p->cfg.batch, sizeof *map);
    const char **acks = strata_calloc(p->cfg.batch, sizeof *acks);
    if (!b.items || !evs || !map || !acks) {
        rc = STRATA_ENOMEM;
        goto out;
    }
    rc = strata_redis_xentries(op.reply, collect_entry, &b);
    if (rc < 0)
        goto out;
    if (b.n == 0) {
        rc = 0;
        goto out;
    }
    int nev = 0, nack = 0;
    for (size_t i = 0; i < b.n; i++) {
        wb_item *it = &b.items[i];
        if (it->deleted) {
            acks[nack++] = it->entry_id;
        } else if (it->malformed) {
            dlq_move(p, rs, s, it->entry_id, "malformed event: needs type and id fields", 1);
        } else {
            evs[nev].event_id = it->event_id;
            evs[nev].fn = tx_trampoline;
            evs[nev].arg = it;
            map[nev] = (int)i;
            nev++;
        }
    }
    bool any_failed = false;
    if (nev > 0) {
        strata_buf err = STRATA_BUF_INIT;
        uint64_t t0 = strata_clock_now_ns(p->clock);
        int arc = strata_breaker_acquire(p->breaker, t0);
        if (arc == STRATA_OK) {
            arc = strata_db_apply_events(p->db, evs, nev, &err);
            uint64_t t1 = strata_clock_now_ns(p->clock);
            strata_breaker_record(p->breaker, t1, t1 - t0, arc < 0);
        }
        strata_buf_free(&err);
        if (arc < 0) {
            /* Nothing committed (or unknown: the retry finds duplicates).  The
             * entries stay pending to this consumer and are read again ("0"). */
            count(&p->batch_failures, p->m_batch_fail, 1);
            stream_backoff(p, s);
            rc = arc;
            goto ack;
        }
        count(&p->batches, p->m_batches, 1);
        for (int k = 0; k < nev; k++) {
            wb_item *it = &b.items[map[k]];
            char akey[600];
            snprintf(akey, sizeof akey, "%s\n%s", s->name, it->entry_id);
            if (evs[k].status == STRATA_OK) {
                acks[nack++] = it->entry_id;
                attempt_forget(p, akey);
                if (evs[k].res == STRATA_DB_APPLIED)
                    count(&p->applied, p->m_applied, 1);
                else if (evs[k].res == STRATA_DB_DUPLICATE)
                    count(&p->duplicates, p->m_dup, 1);
                else
                    count(&p->superseded, p->m_superseded, 1);
                continue;
            }
            count(&p->failed_events, p->m_failed, 1);
            wb_attempt *a = attempt_find(p, akey, true);
            uint32_t n = a ? ++a->n : p->cfg.max_attempts;
            if (n >= p->cfg.max_attempts) {
                char why[160];
                snprintf(why, sizeof why, "%s: %s%s", strata_status_name(evs[k].status),
                         strata_strerror(evs[k].status),
                         it->h ? "" : " (no handler for this event type)");
                if (dlq_move(p, rs, s, it->entry_id, why, n) == STRATA_OK)
                    attempt_forget(p, akey);
            } else {
                any_failed = true;
            }
        }
    }
    if (any_failed)
        stream_backoff(p, s);
    else
        s->backoff_ms = 0;
    rc = (int)b.n;
ack:
    if (nack > 0) {
        strata_redis_sync_op aop = {0};
        int xrc = strata_redis_xack(strata_redis_sync_client(rs), s->name, p->group, nack, acks,
                                    strata_redis_sync_cb, &aop);
        xrc = tier__sync_finish(rs, &aop, xrc);
        if (xrc == STRATA_OK && aop.reply && aop.reply->type == STRATA_REPLY_INTEGER)
            atomic_fetch_add(&p->acked, (uint64_t)aop.reply->integer);
        strata_redis_reply_free(aop.reply);
        /* A lost XACK re-delivers entries that then apply as duplicates. */
    }
out:
    strata_free(b.items);
    strata_free(evs);
    strata_free(map);
    strata_free(acks);
    strata_redis_reply_free(op.reply);
    return rc;
}

/* ---- periodic work ---------------------------------------------------------------- */

static void discover(strata_persister *p, strata_redis_sync *rs) {
    strata_redis_reply *r = NULL;
    int rc = strata_redis_sync_command(rs, &r, "SMEMBERS %s", p->registry);
    if (rc == STRATA_OK && r && r->type == STRATA_REPLY_ARRAY) {
        pthread_mutex_lock(&p->w.mu);
        for (size_t i = 0; i < r->elements; i++) {
            const strata_redis_reply *e = r->element[i];
            if (e->type == STRATA_REPLY_STRING && stream_name_ok(e->str, e->len))
                do_add_stream(p, e->str, e->len);
        }
        pthread_mutex_unlock(&p->w.mu);
    }
    strata_redis_reply_free(r);
    for (size_t i = 0; i < p->nstreams; i++) {
        wb_stream *s = &p->streams[i];
        if (s->group_ok)
            continue;
        strata_redis_sync_op op = {0};
        /* "0": a group created after events were appended still sees them all. */
        int grc = strata_redis_xgroup_create(strata_redis_sync_client(rs), s->name, p->group, "0",
                                             strata_redis_sync_cb, &op);
        grc = tier__sync_finish(rs, &op, grc);
        strata_redis_reply_free(op.reply);
        if (grc == STRATA_OK || grc == STRATA_EEXIST)
            s->group_ok = true;
    }
}

static void autoclaim(strata_persister *p, strata_redis_sync *rs) {
    for (size_t i = 0; i < p->nstreams; i++) {
        wb_stream *s = &p->streams[i];
        if (!s->group_ok)
            continue;
        char start[64] = "0-0";
        for (int round = 0; round < 100; round++) {
            strata_redis_sync_op op = {0};
            int rc = strata_redis_xautoclaim(strata_redis_sync_client(rs), s->name, p->group,
                                             p->node_id, p->cfg.claim_idle_ms, start, p->cfg.batch,
                                             strata_redis_sync_cb, &op);
            rc = tier__sync_finish(rs, &op, rc);
            const strata_redis_reply *r = op.reply;
            bool more = false;
            if (rc == STRATA_OK && r && r->type == STRATA_REPLY_ARRAY && r->elements >= 2) {
                const strata_redis_reply *ents = r->element[1];
                if (ents->type == STRATA_REPLY_ARRAY && ents->elements > 0) {
                    count(&p->claimed, p->m_claimed, ents->elements);
                }
                if (r->element[0]->type == STRATA_REPLY_STRING &&
                    strcmp(r->element[0]->str, "0-0") != 0 && r->element[0]->len < sizeof start) {
                    snprintf(start, sizeof start, "%s", r->element[0]->str);
                    more = true;
                }
            }
            strata_redis_reply_free(op.reply);
            if (!more)
                break;
        }
    }
}

static void refresh_stats(strata_persister *p, strata_redis_sync *rs) {
    int64_t lag = 0, pending = 0, dlq = 0;
    for (size_t i = 0; i < p->nstreams; i++) {
        wb_stream *s = &p->streams[i];
        strata_redis_reply *r = NULL;
        if (strata_redis_sync_command(rs, &r, "XINFO GROUPS %s", s->name) == STRATA_OK && r &&
            r->type == STRATA_REPLY_ARRAY) {
            for (size_t g = 0; g < r->elements; g++) {
                const strata_redis_reply *gr = r->element[g];
                if (gr->type != STRATA_REPLY_ARRAY)
                    continue;
                bool mine = false;
                int64_t gp = 0, gl = 0;
                for (size_t k = 0; k + 1 < gr->elements; k += 2) {
                    const strata_redis_reply *f = gr->element[k], *v = gr->element[k + 1];
                    if (f->type != STRATA_REPLY_STRING)
                        continue;
                    if (strcmp(f->str, "name") == 0 && v->type == STRATA_REPLY_STRING)
                        mine = strcmp(v->str, p->group) == 0;
                    else if (strcmp(f->str, "pending") == 0 && v->type == STRATA_REPLY_INTEGER)
                        gp = v->integer;
                    else if (strcmp(f->str, "lag") == 0 && v->type == STRATA_REPLY_INTEGER)
                        gl = v->integer;
                }
                if (mine) {
                    pending += gp;
                    lag += gl;
                }
            }
        }
        strata_redis_reply_free(r);
        r = NULL;
        if (strata_redis_sync_command(rs, &r, "XLEN %s", s->dlq) == STRATA_OK && r &&
            r->type == STRATA_REPLY_INTEGER)
            dlq += r->integer;
        strata_redis_reply_free(r);
    }
    atomic_store(&p->lag, lag);
    atomic_store(&p->pending, pending);
    atomic_store(&p->dlq, dlq);
    if (p->g_lag) {
        strata_gauge_set(p->g_lag, lag);
        strata_gauge_set(p->g_pending, pending);
        strata_gauge_set(p->g_dlq, dlq);
    }
}

static void trim_all(strata_persister *p, strata_redis_sync *rs) {
    for (size_t i = 0; i < p->nstreams; i++) {
        strata_redis_sync_op op = {0};
        int rc = strata_redis_xtrim_safe(strata_redis_sync_client(rs), p->streams[i].name,
                                         strata_redis_sync_cb, &op);
        rc = tier__sync_finish(rs, &op, rc);
        if (rc == STRATA_OK && op.reply && op.reply->type == STRATA_REPLY_INTEGER)
            atomic_fetch_add(&p->trimmed, (uint64_t)op.reply->integer);
        strata_redis_reply_free(op.reply);
    }
}

/* ---- the thread -------------------------------------------------------------------- */

static void *persister_main(void *arg) {
    strata_persister *p = arg;
    strata_redis_sync *rs = NULL;
    strata_redis_options ro;
    strata_redis_options_init(&ro);
    ro.command_timeout_ms = 2000;
    if (strata_redis_sync_create(&rs, p->redis_url, &ro, NULL) != STRATA_OK) {
        atomic_store(&p->w.running, false);
        return NULL;
    }
    uint64_t next_discover = 0, next_claim = 0, next_stats = 0;
    uint64_t next_trim = tier__mono_ms() + p->cfg.trim_every_ms;
    uint32_t idle_ms = 1;
    while (atomic_load(&p->w.running)) {
        uint64_t now = tier__mono_ms();
        if (now >= next_discover) {
            discover(p, rs);
            next_discover = now + p->cfg.discover_ms;
        }
        if (now >= next_claim) {
            autoclaim(p, rs);
            next_claim = now + p->cfg.claim_every_ms;
        }
        pthread_mutex_lock(&p->w.mu);
        uint64_t pass = ++p->pass_no;
        size_t ns = p->nstreams;
        pthread_mutex_unlock(&p->w.mu);
        bool idle = true, worked = false;
        for (size_t i = 0; i < ns && atomic_load(&p->w.running); i++) {
            wb_stream *s = &p->streams[i];
            if (!s->group_ok) {
                idle = false;
                continue;
            }
            if (s->retry_at_ms > tier__mono_ms()) {
                idle = false;
                continue;
            }
            if (strata_breaker_get_state(p->breaker, strata_clock_now_ns(p->clock)) ==
                STRATA_BREAKER_OPEN) {
                /* Database breaker open: events wait in Redis. */
                idle = false;
                continue;
            }
            int n = run_batch(p, rs, s, "0");
            if (n == 0)
                n = run_batch(p, rs, s, ">");
            if (n != 0) {
                idle = false;
                if (n > 0)
                    worked = true;
            }
        }
        if (ns == 0)
            idle = true;
        now = tier__mono_ms();
        if (now >= next_stats) {
            refresh_stats(p, rs);
            next_stats = now + p->cfg.stats_every_ms;
        }
        if (now >= next_trim) {
            trim_all(p, rs);
            next_trim = now + p->cfg.trim_every_ms;
        }
        pthread_mutex_lock(&p->w.mu);
        if (idle)
            p->idle_pass = pass;
        pthread_cond_broadcast(&p->w.cv);
        if (!worked && atomic_load(&p->w.running) && !p->w.kicked) {
            tier__worker_wait(&p->w, idle_ms);
            idle_ms = idle_ms * 2 > p->cfg.idle_max_ms ? p->cfg.idle_max_ms : idle_ms * 2;
        } else {
            idle_ms = 1;
        }
        p->w.kicked = false;
        pthread_mutex_unlock(&p->w.mu);
    }
    strata_redis_sync_destroy(&rs);
    return NULL;
}

int strata_persister_start(strata_persister *p) {
    return p ? tier__worker_start(&p->w, persister_main, p) : STRATA_EINVAL;
}

int strata_persister_drain(strata_persister *p, uint32_t timeout_ms) {
    if (!p)
        return STRATA_EINVAL;
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    dl.tv_sec += dl.tv_nsec / 1000000000L;
    dl.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&p->w.mu);
    if (!p->w.started || !atomic_load(&p->w.running)) {
        pthread_mutex_unlock(&p->w.mu);
        return STRATA_ECLOSED;
    }
    uint64_t want = p->pass_no + 1;
    p->w.kicked = true;
    pthread_cond_broadcast(&p->w.cv);
    int rc = STRATA_OK;
    while (p->idle_pass < want) {
        if (!atomic_load(&p->w.running)) {
            rc = STRATA_ECLOSED;
            break;
        }
        if (pthread_cond_timedwait(&p->w.cv, &p->w.mu, &dl) != 0 && p->idle_pass < want) {
            rc = STRATA_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&p->w.mu);
    return rc;
}

void strata_persister_stop(strata_persister *p) {
    if (p)
        tier__worker_stop(&p->w);
}

void strata_persister_destroy(strata_persister **pp) {
    if (!pp || !*pp)
        return;
    strata_persister *p = *pp;
    strata_persister_stop(p);
    for (size_t i = 0; i < p->nstreams; i++) {
        strata_free(p->streams[i].name);
        strata_free(p->streams[i].dlq);
    }
    strata_free(p->streams);
    for (size_t i = 0; i < p->nattempts; i++)
        strata_free(p->attempts[i].key);
    strata_free(p->attempts);
    strata_breaker_destroy(&p->breaker);
    strata_free(p->redis_url);
    strata_free(p->node_id);
    strata_free(p->group);
    strata_free(p->registry);
    tier__worker_destroy(&p->w);
    strata_free(p);
    *pp = NULL;
}

void strata_persister_get_stats(strata_persister *p, strata_persister_stats *o) {
    memset(o, 0, sizeof *o);
    if (!p)
        return;
    o->applied = atomic_load(&p->applied);
    o->duplicates = atomic_load(&p->duplicates);
    o->superseded = atomic_load(&p->superseded);
    o->failed_events = atomic_load(&p->failed_events);
    o->dead_lettered = atomic_load(&p->dead_lettered);
    o->batches = atomic_load(&p->batches);
    o->batch_failures = atomic_load(&p->batch_failures);
    o->claimed = atomic_load(&p->claimed);
    o->acked = atomic_load(&p->acked);
    o->trimmed = atomic_load(&p->trimmed);
    o->lag = atomic_load(&p->lag);
    o->pending = atomic_load(&p->pending);
    o->dlq = atomic_load(&p->dlq);
    pthread_mutex_lock(&p->w.mu);
    o->streams = p->nstreams;
    pthread_mutex_unlock(&p->w.mu);
}

/* ---- registry and dead letters -------------------------------------------------------- */

typedef struct reg_ctx {
    strata_redis *r;
    char *stream;
    strata_redis_cb cb;
    void *ud;
} reg_ctx;

static void reg_group_done(void *ud, int status, const strata_redis_reply *reply) {
    reg_ctx *c = ud;
    if (status == STRATA_EEXIST)
        status = STRATA_OK;
    if (c->cb)
        c->cb(c->ud, status, reply);
    strata_free(c->stream);
    strata_free(c);
}

static void reg_sadd_done(void *ud, int status, const strata_redis_reply *reply) {
    reg_ctx *c = ud;
    if (status == STRATA_OK) {
        int rc =
            strata_redis_xgroup_create(c->r, c->stream, STRATA_WB_GROUP, "0", reg_group_done, c);
        if (rc == STRATA_OK)
            return;
        status = rc;
    }
    if (c->cb)
        c->cb(c->ud, status, reply);
    strata_free(c->stream);
    strata_free(c);
}

int strata_wb_register_stream(strata_redis *r, const char *stream, strata_redis_cb cb, void *ud) {
    if (!r || !stream || !stream_name_ok(stream, strlen(stream)))
        return STRATA_EINVAL;
    reg_ctx *c = strata_calloc(1, sizeof *c);
    if (!c || !(c->stream = strata_strdup(stream))) {
        strata_free(c);
        return STRATA_ENOMEM;
    }
    c->r = r;
    c->cb = cb;
    c->ud = ud;
    int rc =
        strata_redis_command(r, NULL, reg_sadd_done, c, "SADD %s %s", STRATA_WB_REGISTRY, stream);
    if (rc < 0) {
        strata_free(c->stream);
        strata_free(c);
    }
    return rc;
}

int strata_wb_dlq_replay(strata_redis_sync *s, const char *stream, const char *id, uint32_t max) {
    if (!s || !stream || !stream_name_ok(stream, strlen(stream)) || max == 0)
        return STRATA_EINVAL;
    strata_redis_script sc;
    int rc = tier__script(&sc, "wb_dlq_replay.lua");
    if (rc < 0)
        return rc;
    char dlq[600];
    if (snprintf(dlq, sizeof dlq, "%s%s", stream, STRATA_WB_DLQ_SUFFIX) >= (int)sizeof dlq)
        return STRATA_ETOOBIG;
    char maxs[16];
    snprintf(maxs, sizeof maxs, "%u", max);
    const char *keys[2] = {dlq, stream};
    size_t kl[2] = {strlen(dlq), strlen(stream)};
    const char *args[2] = {id ? id : "", maxs};
    size_t al[2] = {strlen(args[0]), strlen(maxs)};
    strata_redis_sync_op op = {0};
    rc = strata_redis_evalsha(strata_redis_sync_client(s), NULL, &sc, strata_redis_sync_cb, &op, 2,
                              keys, kl, 2, args, al);
    rc = tier__sync_finish(s, &op, rc);
    if (rc == STRATA_OK)
        rc = op.reply && op.reply->type == STRATA_REPLY_INTEGER ? (int)op.reply->integer
                                                                : STRATA_EPROTO;
    strata_redis_reply_free(op.reply);
    return rc;
}
