/*
 * relay.c: the outbox relay of cache-aside writes (strata/tier.h).
 *
 * A cache-aside write commits its value and an outbox row in one database
 * transaction (strata_db_kv_put).  The relay turns each row into its cache
 * effects, in this order, then deletes the row:
 *
 *   1. tier_invalidate.lua on st:{NS:K}: drop value and lease, raise minver to
 *      the written version (so an older in-flight fill is refused);
 *   2. on a PUT, tier_bloom_add.lua: the key's Bloom bits (or the pending bits
 *      while the bitmap is being rebuilt);
 *   3. the local L1s: strata_l1_invalidate (other processes' L1s hear of it
 *      through Redis tracking of the "st:" keys);
 *   4. strata_db_outbox_done.
 *
 * Rows are claimed under a lease (strata_db_outbox_claim), so a relay that dies
 * anywhere in 1-4 leaves them to be claimed again after the lease: delivery is
 * at-least-once and every step is idempotent.  A row whose Redis step fails is
 * not marked done; its lease expires and it is retried.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "strata/alloc.h"
#include "strata/status.h"
#include "tier_internal.h"

struct strata_outbox_relay {
    strata_relay_config cfg;
    char *redis_url, *node_id;
    strata_db *db;
    strata_bloom *bloom;   /* for positions only */
    strata_redis_sync *rs; /* the relay thread's, or the run_once caller's */
    tier__worker w;        /* the relay thread */
    atomic_uint_fast64_t relayed, failures;
    strata_counter *m_relayed, *m_failures;
};

void strata_relay_config_init(strata_relay_config *c) {
    memset(c, 0, sizeof *c);
    c->batch = 100;
    c->lease_ms = 10000;
    c->poll_ms = 50;
    c->tombstone_ms = 600000;
    c->bloom_expected = 100000;
    c->bloom_fp = 0.01;
}

int strata_relay_create(const strata_relay_config *cfg, strata_outbox_relay **out,
                        strata_buf *err) {
    if (!out)
        return STRATA_EINVAL;
    *out = NULL;
    if (!cfg || !cfg->db || !cfg->redis_url || !cfg->node_id || !cfg->node_id[0] ||
        strlen(cfg->node_id) > STRATA_DB_OWNER_MAX || cfg->batch == 0 || cfg->batch > 10000 ||
        cfg->lease_ms == 0) {
        if (err)
            strata_buf_puts(err, "relay: redis_url, db, node_id (1..128 bytes), batch 1..10000 "
                                 "and lease_ms > 0 are required");
        return STRATA_EINVAL;
    }
    strata_outbox_relay *r = strata_calloc(1, sizeof *r);
    if (!r)
        return STRATA_ENOMEM;
    r->cfg = *cfg;
    r->db = cfg->db;
    r->redis_url = strata_strdup(cfg->redis_url);
    r->node_id = strata_strdup(cfg->node_id);
    r->bloom = strata_bloom_create(cfg->bloom_expected, cfg->bloom_fp);
    tier__worker_init(&r->w);
    if (!r->redis_url || !r->node_id || !r->bloom || !tier__lib_script(TIER_SCRIPT_INVALIDATE)) {
        strata_relay_destroy(&r);
        return STRATA_ENOMEM;
    }
    if (cfg->metrics) {
        r->m_relayed = strata_metrics_counter(cfg->metrics, "strata_outbox_relayed_total",
                                              "outbox rows published to the cache", NULL);
        r->m_failures =
            strata_metrics_counter(cfg->metrics, "strata_outbox_relay_failures_total",
                                   "outbox rows whose publication failed (retried)", NULL);
    }
    *out = r;
    return STRATA_OK;
}

static int eval_sync(strata_redis_sync *rs, int which, int nkeys, const char *const *keys,
                     const size_t *kl, int nargs, const char *const *args, const size_t *al) {
    strata_redis_sync_op op = {0};
    int rc = strata_redis_evalsha(strata_redis_sync_client(rs), NULL, tier__lib_script(which),
                                  strata_redis_sync_cb, &op, nkeys, keys, kl, nargs, args, al);
    rc = tier__sync_finish(rs, &op, rc);
    strata_redis_reply_free(op.reply);
    return rc;
}

static int publish(strata_outbox_relay *r, strata_redis_sync *rs, const strata_db_outbox_row *row) {
    strata_buf hk = STRATA_BUF_INIT;
    if (strata_tier_redis_key(row->ns, row->key, row->keylen, &hk) != STRATA_OK) {
        strata_buf_free(&hk);
        return STRATA_ENOMEM;
    }
    char ver[24], tomb[16];
    snprintf(ver, sizeof ver, "%lld", (long long)row->version);
    snprintf(tomb, sizeof tomb, "%u", r->cfg.tombstone_ms ? r->cfg.tombstone_ms : 600000);
    const char *keys[1] = {hk.data};
    size_t kl[1] = {hk.len};
    const char *args[2] = {ver, tomb};
    size_t al[2] = {strlen(ver), strlen(tomb)};
    int rc = eval_sync(rs, TIER_SCRIPT_INVALIDATE, 1, keys, kl, 2, args, al);
    if (rc == STRATA_OK && row->op == STRATA_DB_OP_PUT) {
        uint64_t pos[16];
        char pbuf[16][24];
        const char *pargs[16];
        size_t pl[16];
        uint32_t np = strata_bloom_positions(r->bloom, row->key, row->keylen, pos);
        for (uint32_t i = 0; i < np; i++) {
            snprintf(pbuf[i], sizeof pbuf[i], "%llu", (unsigned long long)pos[i]);
            pargs[i] = pbuf[i];
            pl[i] = strlen(pbuf[i]);
        }
        strata_buf bk = STRATA_BUF_INIT, bp = STRATA_BUF_INIT;
        strata_buf_printf(&bk, "st:bloom:{%s}", row->ns);
        strata_buf_printf(&bp, "st:bloom:{%s}:pending", row->ns);
        if (bk.oom || bp.oom) {
            rc = STRATA_ENOMEM;
        } else {
            const char *bkeys[2] = {bk.data, bp.data};
            size_t bkl[2] = {bk.len, bp.len};
            rc = eval_sync(rs, TIER_SCRIPT_BLOOM_ADD, 2, bkeys, bkl, (int)np, pargs, pl);
        }
        strata_buf_free(&bk);
        strata_buf_free(&bp);
    }
    if (rc == STRATA_OK) {
        for (int i = 0; i < 4; i++)
            if (r->cfg.l1[i])
                strata_l1_invalidate(r->cfg.l1[i], hk.data, hk.len);
    }
    strata_buf_free(&hk);
    return rc;
}

static int relay_round(strata_outbox_relay *r, strata_redis_sync *rs) {
    strata_db_outbox_row *rows = NULL;
    size_t n = 0;
    int rc =
        strata_db_outbox_claim(r->db, r->node_id, (int)r->cfg.batch, r->cfg.lease_ms, &rows, &n);
    if (rc < 0)
        return rc;
    if (n == 0)
        return 0;
    int64_t *done = strata_calloc(n, sizeof *done);
    if (!done) {
        strata_db_outbox_free(rows, n);
        return STRATA_ENOMEM;
    }
    size_t nd = 0;
    for (size_t i = 0; i < n; i++) {
        if (publish(r, rs, &rows[i]) == STRATA_OK) {
            done[nd++] = rows[i].id;
        } else {
            atomic_fetch_add(&r->failures, 1);
            if (r->m_failures)
                strata_counter_inc(r->m_failures);
        }
    }
    if (nd > 0) {
        rc = strata_db_outbox_done(r->db, done, nd);
        if (rc == STRATA_OK) {
            atomic_fetch_add(&r->relayed, nd);
            if (r->m_relayed)
                strata_counter_add(r->m_relayed, nd);
        }
        /* done failed: the rows are claimed again after the lease (idempotent) */
    }
    strata_free(done);
    strata_db_outbox_free(rows, n);
    return rc < 0 ? rc : (int)nd;
}

int strata_relay_run_once(strata_outbox_relay *r) {
    if (!r)
        return STRATA_EINVAL;
    pthread_mutex_lock(&r->w.mu);
    bool started = r->w.started;
    pthread_mutex_unlock(&r->w.mu);
    if (started)
        return STRATA_EPERM;
    if (!r->rs) {
        int rc = strata_redis_sync_create(&r->rs, r->redis_url, NULL, NULL);
        if (rc < 0)
            return rc;
    }
    return relay_round(r, r->rs);
}

static void *relay_main(void *arg) {
    strata_outbox_relay *r = arg;
    strata_redis_sync *rs = NULL;
    if (strata_redis_sync_create(&rs, r->redis_url, NULL, NULL) != STRATA_OK) {
        atomic_store(&r->w.running, false);
        return NULL;
    }
    while (atomic_load(&r->w.running)) {
        int n = relay_round(r, rs);
        pthread_mutex_lock(&r->w.mu);
        pthread_cond_broadcast(&r->w.cv); /* drain waiters re-check */
        if (n <= 0 && !r->w.kicked && atomic_load(&r->w.running)) {
            tier__worker_wait(&r->w, n < 0 ? r->cfg.poll_ms * 4 : r->cfg.poll_ms);
        }
        r->w.kicked = false;
        pthread_mutex_unlock(&r->w.mu);
    }
    strata_redis_sync_destroy(&rs);
    return NULL;
}

int strata_relay_start(strata_outbox_relay *r) {
    return r ? tier__worker_start(&r->w, relay_main, r) : STRATA_EINVAL;
}

void strata_relay_kick(strata_outbox_relay *r) {
    if (r)
        tier__worker_kick(&r->w);
}

int strata_relay_drain(strata_outbox_relay *r, uint32_t timeout_ms) {
    if (!r)
        return STRATA_EINVAL;
    uint64_t end = tier__mono_ms() + timeout_ms;
    for (;;) {
        int64_t n = strata_db_outbox_pending(r->db);
        if (n == 0)
            return STRATA_OK;
        if (tier__mono_ms() >= end)
            return STRATA_ETIMEDOUT;
        strata_relay_kick(r);
        pthread_mutex_lock(&r->w.mu);
        if (!r->w.started) {
            pthread_mutex_unlock(&r->w.mu);
            int rc = strata_relay_run_once(r);
            if (rc < 0)
                return rc;
            continue;
        }
        tier__worker_wait(&r->w, 5);
        pthread_mutex_unlock(&r->w.mu);
    }
}

void strata_relay_stop(strata_outbox_relay *r) {
    if (r)
        tier__worker_stop(&r->w);
}

void strata_relay_destroy(strata_outbox_relay **rp) {
    if (!rp || !*rp)
        return;
    strata_outbox_relay *r = *rp;
    strata_relay_stop(r);
    strata_redis_sync_destroy(&r->rs);
    strata_bloom_destroy(&r->bloom);
    strata_free(r->redis_url);
    strata_free(r->node_id);
    tier__worker_destroy(&r->w);
    strata_free(r);
    *rp = NULL;
}

uint64_t strata_relay_relayed(const strata_outbox_relay *r) {
    return r ? atomic_load(&((strata_outbox_relay *)r)->relayed) : 0;
}
