/*
 * kv.c: the cache-aside key-value service over the tiered path
 * (docs/notes/kv.md, docs/API.md "Key-value").
 *
 *   GET    /v1/kv/{ns}/{key}   L1 -> Redis -> database (strata_tier_get)
 *   PUT    /v1/kv/{ns}/{key}   (admin) {"value": string, "expected_version"?: int}
 *   DELETE /v1/kv/{ns}/{key}   (admin) ?expected_version=N
 *
 * This file adds no caching logic: every read is strata_tier_get and every
 * write strata_tier_put / strata_tier_delete (database + outbox row in one
 * transaction; the outbox relay that `strata serve` runs invalidates Redis and
 * sets the Bloom bits).  What it does own is the wiring:
 *
 *   - one strata_tier per (worker loop, namespace), on a Redis client of that
 *     loop (tier.h: a tier belongs to one loop);
 *   - one L1 shared by every worker and namespace (tier.h allows it; the L1
 *     key "st:{NS:K}" carries the namespace), created by the first worker to
 *     start and destroyed by the last to stop;
 *   - one tracking client (on the first worker's loop) for the prefixes
 *     "st:{NS:" of every namespace, turning Redis invalidations (the relay's
 *     writes, from any server) into L1 invalidations; one per process, not
 *     one per tier, because the L1 is shared;
 *   - a Bloom keeper (first worker): the tiers read the filter of a namespace
 *     only once its bitmap exists in Redis, and the relay's inserts go to a
 *     "pending" key while it does not, so somebody has to build it.  Every
 *     kv_bloom_check the keeper looks at each namespace whose local copy is
 *     not loaded; if the bitmap is absent it takes a Redis lock
 *     (SET st:bloom:{NS}:rebuild NX PX) so that two servers never rebuild at
 *     once (two overlapping rebuilds could lose an insert merged by the first),
 *     and runs strata_tier_bloom_rebuild (scan of the database).
 *   - a shutdown hook that waits (bounded) until no tier has work in flight,
 *     because strata_tier_destroy must not run while a database job does.
 *
 * Process-wide state.  The kv state is one static object: serve composes one
 * server per process, and the scenario runtime gives this file no teardown
 * call, so nothing may be heap-allocated before the first worker starts (an
 * error path of `strata serve` would leak it).  Everything on the heap is
 * created by worker init and freed by worker fini.
 *
 * Namespaces are declared (kv_namespaces), like tables: a tier per namespace
 * per worker costs a Bloom copy and a refresh timer, so names taken from
 * request paths must not create them.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scenarios/scenario.h"
#include "strata/alloc.h"
#include "strata/json.h"
#include "strata/log.h"
#include "strata/status.h"

#define KV_OPTIONS(X)                                                                            \
    X(kv_namespaces, STRATA_OPT_STR, "default", 1, 0, NULL, 0,                                   \
      "comma-separated namespaces served under /v1/kv/{ns}/ (each 1..64 of [A-Za-z0-9_.-], at "  \
      "most 16); any other namespace answers 404")                                               \
    X(kv_l1, STRATA_OPT_BOOL, "true", 0, 0, NULL, 0,                                             \
      "in-process L1 in front of Redis (false: every GET is one Redis read; for benchmarks)")    \
    X(kv_l1_capacity, STRATA_OPT_INT, "100000", 16, 100000000, NULL, 0,                          \
      "entries in the key-value L1 (shared by all workers and namespaces)")                      \
    X(kv_l1_ttl, STRATA_OPT_DURATION, "5s", 1, 3600000, NULL, 0,                                 \
      "L1 TTL of a value (capped by its Redis TTL; writes by other servers arrive by tracking)") \
    X(kv_ttl, STRATA_OPT_DURATION, "60s", 1, 2592000000, NULL, 0,                                \
      "soft TTL of a value in Redis (then served stale while one server refreshes it)")          \
    X(kv_stale, STRATA_OPT_DURATION, "60s", 0, 2592000000, NULL, 0,                              \
      "how long past its soft TTL a value may be served stale (0 = never; keep >= kv_ttl so "    \
      "the refresh cap drains a mass expiry before values expire)")                              \
    X(kv_negative_ttl, STRATA_OPT_DURATION, "2s", 0, 3600000, NULL, 0,                           \
      "how long \"does not exist\" is cached in Redis (0 = off)")                                \
    X(kv_jitter, STRATA_OPT_INT, "10", 0, 50, NULL, 0, "+-percent of jitter on every TTL")       \
    X(kv_xfetch_beta, STRATA_OPT_INT, "100", 0, 1000, NULL, 0,                                   \
      "XFetch early-refresh beta in percent (100 = 1.0; 0 = off)")                               \
    X(kv_refresh_cap, STRATA_OPT_INT, "110", 0, 1000, NULL, 0,                                   \
      "refreshes of served values, all servers together, capped at this percent of keys / "      \
      "kv_ttl per second (keys counted in Redis; 0 = off; misses are never capped)")             \
    X(kv_lease, STRATA_OPT_DURATION, "2s", 10, 60000, NULL, 0,                                   \
      "lease time of a database load (extended by its holder while the load runs)")              \
    X(kv_deadline, STRATA_OPT_DURATION, "1s", 10, 600000, NULL, 0,                               \
      "longest a GET waits for another server's load before answering 503")                      \
    X(kv_bulkhead, STRATA_OPT_INT, "16", 1, 4096, NULL, 0,                                       \
      "concurrent database loads per worker and namespace")                                      \
    X(kv_bloom, STRATA_OPT_BOOL, "true", 0, 0, NULL, 0,                                          \
      "Bloom filter of existing keys: absent keys answered 404 without Redis or the database")   \
    X(kv_bloom_check, STRATA_OPT_DURATION, "10s", 100, 3600000, NULL, 0,                         \
      "how often a namespace without a Bloom bitmap in Redis gets one built from the database")

enum { KV_OPTIONS(STRATA_OPT_ENUM_ENTRY) KV_OPT__COUNT };
static strata_option kv_opts[] = {KV_OPTIONS(STRATA_OPT_ROW)};
strata_opt_group strata_kv_opt_group = {"Key-value", kv_opts, KV_OPT__COUNT};

#define KV_NS_MAX          16
#define KV_REBUILD_LOCK_MS 120000
#define KV_QUIESCE_WAIT_MS 5000

typedef struct kv_worker kv_worker;

typedef struct kv_settings {
    char ns[KV_NS_MAX][STRATA_DB_NS_MAX + 1];
    int nns;
    bool l1;
    uint64_t l1_capacity;
    uint32_t l1_ttl_ms, ttl_ms, stale_ms, negative_ttl_ms, jitter_pct, lease_ms, deadline_ms;
    uint32_t bulkhead, bloom_check_ms, refresh_cap_pct;
    double xfetch_beta;
    bool bloom;
} kv_settings;

typedef struct kv_state {
    strata_scenario_env env;
    kv_settings cfg;
    int slot;
    pthread_mutex_t mu; /* guards the fields below */
    int workers;        /* workers started and not yet finalised */
    strata_l1 *l1;      /* shared; created by the first worker, destroyed by the last */
    kv_worker *list;    /* every live worker (for the shutdown hook) */
    bool leaked;        /* a worker could not be freed at exit (see worker_fini) */
} kv_state;

struct kv_worker {
    kv_state *kv;
    uv_loop_t *loop;
    strata_redis *redis;
    strata_tier *tier[KV_NS_MAX];
    bool keeper;            /* runs the tracking client and the Bloom keeper */
    strata_redis *tracker;  /* keeper only */
    uv_timer_t bloom_timer; /* keeper only */
    bool timer_on;
    bool rebuilding[KV_NS_MAX];
    atomic_int busy; /* Bloom keeper operations in flight */
    bool closing;
    kv_worker *next;
};

static kv_state g_kv = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* ---- validation ------------------------------------------------------------------ */

static bool ns_char_ok(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

/* 1..64 bytes of [A-Za-z0-9_.-]: no ':' (the Redis key st:{NS:K} would become
 * ambiguous), no '{' '}' (hash tags). */
static bool ns_valid(const char *s, size_t len) {
    if (len == 0 || len > STRATA_DB_NS_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!ns_char_ok(s[i]))
            return false;
    return true;
}

static int parse_namespaces(const char *list, kv_settings *cfg, strata_buf *err) {
    cfg->nns = 0;
    const char *p = list ? list : "";
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        size_t n = strcspn(p, ", ");
        if (!ns_valid(p, n)) {
            strata_buf_printf(err,
                              "invalid value for --kv-namespaces: \"%.*s\" must be 1..64 "
                              "characters of [A-Za-z0-9_.-]",
                              (int)(n > 80 ? 80 : n), p);
            return STRATA_ERANGE;
        }
        for (int i = 0; i < cfg->nns; i++)
            if (strlen(cfg->ns[i]) == n && memcmp(cfg->ns[i], p, n) == 0) {
                strata_buf_printf(err, "invalid value for --kv-namespaces: \"%.*s\" is repeated",
                                  (int)n, p);
                return STRATA_ERANGE;
            }
        if (cfg->nns == KV_NS_MAX) {
            strata_buf_printf(err, "invalid value for --kv-namespaces: at most %d namespaces",
                              KV_NS_MAX);
            return STRATA_ERANGE;
        }
        memcpy(cfg->ns[cfg->nns], p, n);
        cfg->ns[cfg->nns][n] = '\0';
        cfg->nns++;
        p += n;
    }
    if (cfg->nns == 0) {
        strata_buf_puts(err, "invalid value for --kv-namespaces: no namespace given");
        return STRATA_ERANGE;
    }
    return STRATA_OK;
}

/*
 * Reads the options.  When `strata serve` did not load this group (it is not
 * in its table yet), the values are unset: apply the defaults here, and free
 * the engine's copies at once (nothing else would).
 */
static int read_options(kv_settings *cfg, strata_buf *err) {
    bool self = kv_opts[0].source == NULL;
    int rc = STRATA_OK;
    if (self)
        for (int i = 0; i < KV_OPT__COUNT && rc == STRATA_OK; i++)
            rc = strata_option_set(&kv_opts[i], kv_opts[i].def, "default", err);
    if (rc == STRATA_OK)
        rc = parse_namespaces(kv_opts[OPT_kv_namespaces].val.s, cfg, err);
    cfg->l1 = kv_opts[OPT_kv_l1].val.i != 0;
    cfg->l1_capacity = (uint64_t)kv_opts[OPT_kv_l1_capacity].val.i;
    cfg->l1_ttl_ms = (uint32_t)kv_opts[OPT_kv_l1_ttl].val.i;
    cfg->ttl_ms = (uint32_t)kv_opts[OPT_kv_ttl].val.i;
    cfg->stale_ms = (uint32_t)kv_opts[OPT_kv_stale].val.i;
    cfg->negative_ttl_ms = (uint32_t)kv_opts[OPT_kv_negative_ttl].val.i;
    cfg->jitter_pct = (uint32_t)kv_opts[OPT_kv_jitter].val.i;
    cfg->xfetch_beta = (double)kv_opts[OPT_kv_xfetch_beta].val.i / 100.0;
    cfg->refresh_cap_pct = (uint32_t)kv_opts[OPT_kv_refresh_cap].val.i;
    cfg->lease_ms = (uint32_t)kv_opts[OPT_kv_lease].val.i;
    cfg->deadline_ms = (uint32_t)kv_opts[OPT_kv_deadline].val.i;
    cfg->bulkhead = (uint32_t)kv_opts[OPT_kv_bulkhead].val.i;
    cfg->bloom = kv_opts[OPT_kv_bloom].val.i != 0;
    cfg->bloom_check_ms = (uint32_t)kv_opts[OPT_kv_bloom_check].val.i;
    if (self)
        strata_options_free(&strata_kv_opt_group, 1);
    return rc;
}

/* ---- tracking: Redis invalidations -> the shared L1 ----------------------------------- */

static void tr_invalidate(void *ud, const char *key, size_t len) {
    kv_state *kv = ud;
    strata_l1_invalidate(kv->l1, key, len);
}

static void tr_resync(void *ud, const char *prefix, size_t len) {
    kv_state *kv = ud;
    strata_l1_invalidate_prefix(kv->l1, prefix, len);
}

static void tr_flush(void *ud) {
    kv_state *kv = ud;
    char p[STRATA_DB_NS_MAX + 8];
    for (int i = 0; i < kv->cfg.nns; i++) {
        int n = snprintf(p, sizeof p, "st:{%s:", kv->cfg.ns[i]);
        strata_l1_invalidate_prefix(kv->l1, p, (size_t)n);
    }
}

/* ---- Bloom keeper ------------------------------------------------------------------------ */

typedef struct keeper_op {
    kv_worker *w;
    int ns;
    char lock[STRATA_DB_NS_MAX + 32];
    char bitmap[STRATA_DB_NS_MAX + 16];
} keeper_op;

static void keeper_end(keeper_op *op) {
    op->w->rebuilding[op->ns] = false;
    atomic_fetch_sub(&op->w->busy, 1);
    strata_free(op);
}

static void keeper_unlocked(void *ud, int status, const strata_redis_reply *r) {
    (void)status;
    (void)r;
    keeper_end(ud);
}

static void keeper_unlock(keeper_op *op) {
    if (op->w->closing || strata_redis_command(op->w->redis, NULL, keeper_unlocked, op, "DEL %s",
                                               op->lock) != STRATA_OK)
        keeper_end(op);
}

static void keeper_rebuilt(void *ud, int status, int64_t version) {
    (void)status;
    (void)version;
    keeper_unlock(ud);
}

static void keeper_exists(void *ud, int status, const strata_redis_reply *r) {
    keeper_op *op = ud;
    if (op->w->closing || status != STRATA_OK || !r || r->type != STRATA_REPLY_INTEGER ||
        r->integer != 0 ||
        strata_tier_bloom_rebuild(op->w->tier[op->ns], keeper_rebuilt, op) != STRATA_OK) {
        /* the bitmap exists (the tiers load it on their next refresh), or we could not ask */
        keeper_unlock(op);
    }
}

static void keeper_locked(void *ud, int status, const strata_redis_reply *r) {
    keeper_op *op = ud;
    if (op->w->closing || status != STRATA_OK || !r || r->type != STRATA_REPLY_STATUS ||
        strata_redis_command(op->w->redis, NULL, keeper_exists, op, "EXISTS %s", op->bitmap) !=
            STRATA_OK)
        keeper_end(op); /* another server holds the lock (nil reply), or Redis failed */
}

static void keeper_tick(uv_timer_t *h) {
    kv_worker *w = h->data;
    if (w->closing)
        return;
    for (int i = 0; i < w->kv->cfg.nns; i++) {
        if (w->rebuilding[i] || strata_tier_bloom_ready(w->tier[i]))
            continue;
        keeper_op *op = strata_calloc(1, sizeof *op);
        if (!op)
            return;
        op->w = w;
        op->ns = i;
        snprintf(op->lock, sizeof op->lock, "st:bloom:{%s}:rebuild", w->kv->cfg.ns[i]);
        snprintf(op->bitmap, sizeof op->bitmap, "st:bloom:{%s}", w->kv->cfg.ns[i]);
        char ms[16];
        snprintf(ms, sizeof ms, "%d", KV_REBUILD_LOCK_MS);
        w->rebuilding[i] = true;
        atomic_fetch_add(&w->busy, 1);
        if (strata_redis_command(w->redis, NULL, keeper_locked, op, "SET %s %d NX PX %s", op->lock,
                                 (int)getpid(), ms) != STRATA_OK)
            keeper_end(op);
    }
}

/* ---- workers ------------------------------------------------------------------------------- */

static void worker_free(kv_worker *w) {
    for (int i = 0; i < KV_NS_MAX; i++)
        strata_tier_destroy(&w->tier[i]);
    strata_redis_destroy(&w->tracker);
    strata_redis_destroy(&w->redis);
}

static int worker_init(uv_loop_t *loop, void *ctx, void **wdata) {
    kv_state *kv = ctx;
    kv_worker *w = strata_calloc(1, sizeof *w);
    if (!w)
        return STRATA_ENOMEM;
    w->kv = kv;
    w->loop = loop;
    atomic_init(&w->busy, 0);
    pthread_mutex_lock(&kv->mu);
    int rc = STRATA_OK;
    if (kv->workers == 0 && kv->cfg.l1) {
        strata_l1_config lc;
        strata_l1_config_init(&lc);
        lc.capacity = kv->cfg.l1_capacity;
        lc.clock = kv->env.clock;
        lc.metrics = kv->env.metrics;
        lc.name = "kv";
        /* The tier decides staleness and refreshes (tier.h); the L1's own
         * negative cache would keep every failure (503s too), so it is off:
         * "does not exist" is cached in Redis and answered by the Bloom copy. */
        lc.refresh_beta = 0;
        lc.stale_ns = 0;
        lc.negative_ttl_ns = 0;
        rc = strata_l1_create(&lc, &kv->l1);
    }
    if (rc == STRATA_OK) {
        w->keeper = kv->workers == 0;
        kv->workers++;
    }
    pthread_mutex_unlock(&kv->mu);
    if (rc != STRATA_OK) {
        strata_free(w);
        return rc;
    }
    *wdata = w;

    strata_redis_options o;
    strata_redis_options_init(&o);
    o.metrics = kv->env.metrics;
    o.metrics_labels = "role=\"kv\"";
    strata_buf err = STRATA_BUF_INIT;
    rc = strata_redis_create(&w->redis, loop, kv->env.redis_url, &o, &err);
    strata_relay_config relay_defaults;
    strata_relay_config_init(&relay_defaults);
    for (int i = 0; i < kv->cfg.nns && rc == STRATA_OK; i++) {
        strata_tier_config tc;
        strata_tier_config_init(&tc);
        char name[STRATA_DB_NS_MAX + 8];
        snprintf(name, sizeof name, "kv_%s", kv->cfg.ns[i]);
        tc.ns = kv->cfg.ns[i];
        tc.name = name;
        tc.redis = w->redis;
        tc.db = kv->env.db;
        tc.l1 = kv->l1; /* NULL with kv_l1 = false */
        tc.clock = kv->env.clock;
        tc.metrics = kv->env.metrics;
        tc.ttl_ms = kv->cfg.ttl_ms;
        tc.stale_ms = kv->cfg.stale_ms;
        tc.l1_ttl_ms = kv->cfg.l1_ttl_ms;
        tc.negative_ttl_ms = kv->cfg.negative_ttl_ms;
        tc.jitter_pct = kv->cfg.jitter_pct;
        tc.xfetch_beta = kv->cfg.xfetch_beta;
        tc.refresh_cap_pct = kv->cfg.refresh_cap_pct;
        tc.lease_ms = kv->cfg.lease_ms;
        tc.deadline_ms = kv->cfg.deadline_ms;
        tc.bulkhead = kv->cfg.bulkhead;
        tc.bloom = kv->cfg.bloom;
        /* The relay computes the bit positions of inserts with its own sizing:
         * the tiers must use the same (serve creates the relay with the defaults). */
        tc.bloom_expected = relay_defaults.bloom_expected;
        tc.bloom_fp = relay_defaults.bloom_fp;
        tc.tracking = false; /* one tracking client per process, below */
        rc = strata_tier_create(&tc, &w->tier[i]);
    }
    if (rc == STRATA_OK && w->keeper && kv->l1) {
        o.metrics_labels = "role=\"kv_tracking\"";
        rc = strata_redis_create(&w->tracker, loop, kv->env.redis_url, &o, &err);
        const char *pfx[KV_NS_MAX];
        char pbuf[KV_NS_MAX][STRATA_DB_NS_MAX + 8];
        for (int i = 0; i < kv->cfg.nns; i++) {
            snprintf(pbuf[i], sizeof pbuf[i], "st:{%s:", kv->cfg.ns[i]);
            pfx[i] = pbuf[i];
        }
        strata_redis_tracking_cbs cbs = {
            .on_invalidate = tr_invalidate, .on_flush = tr_flush, .on_resync = tr_resync, .ud = kv};
        if (rc == STRATA_OK)
            rc = strata_redis_tracking_start(w->tracker, kv->cfg.nns, pfx, &cbs);
    }
    if (rc == STRATA_OK && w->keeper && kv->cfg.bloom) {
        uv_timer_init(loop, &w->bloom_timer);
        w->bloom_timer.data = w;
        w->timer_on = true;
        uv_timer_start(&w->bloom_timer, keeper_tick, 100, kv->cfg.bloom_check_ms);
        uv_unref((uv_handle_t *)&w->bloom_timer);
    }
    strata_buf_free(&err);
    /* listed for the shutdown hook once its tiers exist (also after an error:
     * fini still runs for this slot's data, *wdata is set) */
    pthread_mutex_lock(&kv->mu);
    w->next = kv->list;
    kv->list = w;
    pthread_mutex_unlock(&kv->mu);
    return rc;
}

static void worker_fini(uv_loop_t *loop, void *ctx, void *wdata) {
    (void)loop;
    kv_state *kv = ctx;
    kv_worker *w = wdata;
    if (!w)
        return;
    w->closing = true;
    if (w->timer_on) {
        uv_timer_stop(&w->bloom_timer);
        uv_close((uv_handle_t *)&w->bloom_timer, NULL);
    }
    uint64_t busy = (uint64_t)atomic_load(&w->busy);
    for (int i = 0; i < KV_NS_MAX; i++)
        busy += strata_tier_quiesce(w->tier[i]);
    if (busy == 0) {
        worker_free(w);
    } else {
        /* A database job still references a tier (the hook's wait ran out):
         * destroying it would be a use-after-free; leaking is the lesser evil. */
        LOG_WARN("kv_worker_leaked", "inflight=%llu reason=\"database work still running at exit\"",
                 (unsigned long long)busy);
    }
    pthread_mutex_lock(&kv->mu);
    for (kv_worker **p = &kv->list; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    bool last = --kv->workers == 0;
    if (busy != 0)
        kv->leaked = true; /* its tiers still point at the L1: keep it too */
    bool free_l1 = last && !kv->leaked;
    pthread_mutex_unlock(&kv->mu);
    if (busy == 0)
        strata_free(w);
    if (free_l1)
        strata_l1_destroy(&kv->l1);
}

/* Shutdown hook (main thread, workers still running, requests drained). */
static void kv_quiesce(void *ctx) {
    kv_state *kv = ctx;
    for (int waited = 0; waited < KV_QUIESCE_WAIT_MS; waited += 5) {
        uint64_t busy = 0;
        pthread_mutex_lock(&kv->mu);
        for (kv_worker *w = kv->list; w; w = w->next) {
            busy += (uint64_t)atomic_load(&w->busy);
            for (int i = 0; i < KV_NS_MAX; i++)
                busy += strata_tier_quiesce(w->tier[i]);
        }
        pthread_mutex_unlock(&kv->mu);
        if (busy == 0)
            return;
        usleep(5000);
    }
}

/* ---- requests ----------------------------------------------------------------------------- */

typedef struct kv_call {
    strata_http_req *req;
    const char *ns;
    const char *key;
    size_t klen;
} kv_call;

/* Resolves {ns} and {key}; on failure answers and returns NULL. */
static kv_call *kv_begin(kv_state *kv, strata_http_req *req, strata_tier **tier) {
    const char *ns = strata_http_param(req, "ns");
    const char *key = strata_http_param(req, "key");
    size_t nl = ns ? strlen(ns) : 0, kl = key ? strlen(key) : 0;
    if (!ns_valid(ns, nl)) {
        strata_http_respond_error(req, 400, "invalid_namespace",
                                  "a namespace is 1..64 characters of [A-Za-z0-9_.-]");
        return NULL;
    }
    int idx = -1;
    for (int i = 0; i < kv->cfg.nns; i++)
        if (strcmp(kv->cfg.ns[i], ns) == 0)
            idx = i;
    if (idx < 0) {
        strata_http_respond_error(req, 404, "unknown_namespace",
                                  "namespace %s is not served here (see --kv-namespaces)", ns);
        return NULL;
    }
    int rc = strata_tier_check_key(key, kl);
    if (rc == STRATA_ETOOBIG) {
        strata_http_respond_error(req, 400, "invalid_key", "a key is at most %d bytes, got %zu",
                                  STRATA_TIER_KEY_MAX, kl);
        return NULL;
    }
    if (rc != STRATA_OK) {
        strata_http_respond_error(req, 400, "invalid_key",
                                  "a key is 1..%d bytes of valid UTF-8 without NUL "
                                  "(percent-encoded in the path)",
                                  STRATA_TIER_KEY_MAX);
        return NULL;
    }
    kv_worker *w = strata_http_worker_slot(req, kv->slot);
    kv_call *c = strata_http_alloc(req, sizeof *c);
    if (!w || !w->tier[idx] || !c) {
        strata_http_respond_status(req, w ? STRATA_ENOMEM : STRATA_EUNAVAIL, NULL);
        return NULL;
    }
    c->req = req;
    c->ns = ns;
    c->key = key;
    c->klen = kl;
    *tier = w->tier[idx];
    return c;
}

/* Transient failures of the read path: 503 with Retry-After (the lease wait
 * ran out, the breaker is open, the bulkhead is full, the database or Redis
 * timed out or is unreachable). */
static void respond_failure(strata_http_req *req, int status, const char *what) {
    const char *code;
    switch (status) {
    case STRATA_ERETRY: code = "busy"; break;
    case STRATA_EBREAKER: code = "breaker_open"; break;
    case STRATA_EBACKPRESSURE: code = "overloaded"; break;
    case STRATA_ETIMEDOUT: code = "timeout"; break;
    case STRATA_EUNAVAIL:
    case STRATA_EUNKNOWN:
    case STRATA_ECLOSED:
    case STRATA_ECANCELED:
    case STRATA_EIO: code = "unavailable"; break;
    default: strata_http_respond_status(req, status, what); return;
    }
    strata_http_add_header(req, "Retry-After", "1");
    strata_http_respond_error(req, 503, code, "%s: %s; retry", what, strata_strerror(status));
}

static const char *outcome_name(strata_tier_outcome oc) {
    switch (oc) {
    case STRATA_TIER_HIT_L1: return "l1";
    case STRATA_TIER_HIT_REDIS: return "redis";
    case STRATA_TIER_LOADED: return "db";
    case STRATA_TIER_STALE: return "stale";
    }
    return "?";
}

static void on_get(void *ud, int status, strata_tier_outcome outcome, const void *value, size_t len,
                   int64_t version) {
    kv_call *c = ud;
    strata_http_req *req = c->req;
    if (status == STRATA_ENOTFOUND) {
        strata_http_add_header(req, "X-Strata-Tier", outcome_name(outcome));
        strata_http_respond_error(req, 404, "not_found", "no key in namespace %s", c->ns);
        return;
    }
    if (status != STRATA_OK) {
        respond_failure(req, status, "read");
        return;
    }
    if (!strata_utf8_valid(value, len)) {
        /* written by something else than this API (it only stores JSON strings) */
        strata_http_respond_error(req, 500, "value_not_text", "the stored value is not UTF-8 text");
        return;
    }
    strata_buf b = STRATA_BUF_INIT;
    strata_buf_puts(&b, "{\"ns\":");
    strata_buf_json_str(&b, c->ns, strlen(c->ns));
    strata_buf_puts(&b, ",\"key\":");
    strata_buf_json_str(&b, c->key, c->klen);
    strata_buf_puts(&b, ",\"value\":");
    strata_buf_json_str(&b, value, len);
    strata_buf_printf(&b, ",\"version\":%lld}", (long long)version);
    strata_http_add_header(req, "X-Strata-Tier", outcome_name(outcome));
    if (b.oom)
        strata_http_respond_status(req, STRATA_ENOMEM, NULL);
    else
        strata_http_respond_json(req, 200, b.data, b.len);
    strata_buf_free(&b);
}

static void kv_get(strata_http_req *req, void *ctx) {
    strata_tier *tier = NULL;
    kv_call *c = kv_begin(ctx, req, &tier);
    if (!c)
        return;
    int rc = strata_tier_get(tier, c->key, c->klen, on_get, c);
    if (rc != STRATA_OK)
        respond_failure(req, rc, "read");
}

static void on_write(void *ud, int status, int64_t version) {
    kv_call *c = ud;
    strata_http_req *req = c->req;
    if (status == STRATA_OK) {
        strata_buf b = STRATA_BUF_INIT;
        strata_buf_puts(&b, "{\"ns\":");
        strata_buf_json_str(&b, c->ns, strlen(c->ns));
        strata_buf_puts(&b, ",\"key\":");
        strata_buf_json_str(&b, c->key, c->klen);
        strata_buf_printf(&b, ",\"version\":%lld}", (long long)version);
        if (b.oom)
            strata_http_respond_status(req, STRATA_ENOMEM, NULL);
        else
            strata_http_respond_json(req, 200, b.data, b.len);
        strata_buf_free(&b);
    } else if (status == STRATA_ECONFLICT) {
        strata_http_respond_error(req, 409, "conflict",
                                  "expected_version does not match the stored version");
    } else if (status == STRATA_ENOTFOUND) {
        strata_http_respond_error(req, 404, "not_found", "no key in namespace %s", c->ns);
    } else {
        respond_failure(req, status, "write");
    }
}

static void kv_put(strata_http_req *req, void *ctx) {
    strata_tier *tier = NULL;
    kv_call *c = kv_begin(ctx, req, &tier);
    if (!c)
        return;
    cJSON *doc = NULL;
    if (strata_http_read_json(req, &doc) < 0)
        return;
    static const char *const allowed[] = {"value", "expected_version", NULL};
    strata_buf err = STRATA_BUF_INIT;
    const char *value = NULL;
    size_t vlen = 0;
    int64_t expected = STRATA_DB_ANY_VERSION;
    int rc = strata_json_is_object(doc) ? STRATA_OK : STRATA_EINVAL;
    if (rc != STRATA_OK)
        strata_buf_puts(&err, "the body must be a JSON object {\"value\": string}");
    if (rc == STRATA_OK)
        rc = strata_json_only_fields(doc, allowed, &err);
    if (rc == STRATA_OK)
        rc = strata_json_get_str(doc, "value", true, 0, STRATA_TIER_VALUE_MAX, &value, &vlen, &err);
    if (rc == STRATA_OK)
        rc = scn_opt(strata_json_get_int(doc, "expected_version", false, 0,
                                         STRATA_JSON_MAX_SAFE_INT, &expected, &err));
    if (rc != STRATA_OK) {
        strata_http_respond_error(req, rc == STRATA_ERANGE && value == NULL ? 413 : 400,
                                  "invalid_field", "%s", err.data ? err.data : "invalid body");
        strata_buf_free(&err);
        return;
    }
    strata_buf_free(&err);
    rc = strata_tier_put(tier, c->key, c->klen, value, vlen, expected, on_write, c);
    if (rc != STRATA_OK)
        respond_failure(req, rc, "write");
}

static void kv_delete(strata_http_req *req, void *ctx) {
    strata_tier *tier = NULL;
    kv_call *c = kv_begin(ctx, req, &tier);
    if (!c)
        return;
    int64_t expected = STRATA_DB_ANY_VERSION;
    const char *ev = strata_http_query(req, "expected_version");
    if (ev && strata_parse_int64(ev, 1, STRATA_JSON_MAX_SAFE_INT, &expected) != STRATA_OK) {
        strata_http_respond_error(req, 400, "invalid_field",
                                  "query parameter expected_version must be an integer in "
                                  "[1, 9007199254740992]");
        return;
    }
    int rc = strata_tier_delete(tier, c->key, c->klen, expected, on_write, c);
    if (rc != STRATA_OK)
        respond_failure(req, rc, "delete");
}

/* ---- registration ------------------------------------------------------------------------ */

int scn_kv_routes(strata_scenarios *sc, strata_server *server) {
    kv_state *kv = &g_kv;
    pthread_mutex_lock(&kv->mu);
    bool busy = kv->workers > 0;
    pthread_mutex_unlock(&kv->mu);
    if (busy)
        return STRATA_EEXIST; /* one key-value service per process */
    kv->env = sc->env;
    kv->l1 = NULL;
    kv->list = NULL;
    kv->leaked = false;
    strata_buf err = STRATA_BUF_INIT;
    int rc = read_options(&kv->cfg, &err);
    if (rc != STRATA_OK) {
        /* the options engine already checked bounds; only the namespace list can fail */
        LOG_ERROR("kv_config", "reason=\"%s\"", err.data ? err.data : "?");
        strata_buf_free(&err);
        return rc;
    }
    strata_buf_free(&err);
    rc = strata_server_add_worker_slot(server, worker_init, worker_fini, kv);
    if (rc < 0)
        return rc;
    kv->slot = rc;
    const char *path = "/v1/kv/{ns}/{key}";
    if ((rc = strata_server_route(server, "GET", path, kv_get, kv)) != STRATA_OK ||
        (rc = strata_server_route_ex(server, "PUT", path, STRATA_ROUTE_ADMIN, kv_put, kv)) !=
            STRATA_OK ||
        (rc = strata_server_route_ex(server, "DELETE", path, STRATA_ROUTE_ADMIN, kv_delete, kv)) !=
            STRATA_OK ||
        (rc = strata_server_add_shutdown_hook(server, kv_quiesce, kv)) != STRATA_OK)
        return rc;
    return STRATA_OK;
}
