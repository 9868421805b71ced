/*
 * tier_test_util.h: helpers shared by the tier tests (static, header-only):
 * a tier on a loop of the test's own, blocking get/put wrappers that run the
 * loop until the callback, and a SQLite database with many keys.
 */
#ifndef TIER_TEST_UTIL_H
#define TIER_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "harness/harness.h"
#include "strata/db.h"
#include "strata/l1.h"
#include "strata/redis.h"
#include "strata/tier.h"

typedef struct tt_node {
    uv_loop_t loop;
    strata_redis *redis;
    strata_l1 *l1;
    strata_tier *tier;
} tt_node;

typedef struct tt_get {
    int done;
    int status;
    strata_tier_outcome outcome;
    char val[256];
    size_t len;
    int64_t ver;
} tt_get;

static inline void tt_get_cb(void *ud, int status, strata_tier_outcome oc, const void *v,
                             size_t len, int64_t ver) {
    tt_get *g = ud;
    g->done++;
    g->status = status;
    g->outcome = oc;
    g->len = len;
    g->ver = ver;
    memcpy(g->val, v, len < sizeof g->val - 1 ? len : sizeof g->val - 1);
    g->val[len < sizeof g->val - 1 ? len : sizeof g->val - 1] = 0;
}

typedef struct tt_write {
    int done;
    int status;
    int64_t version;
} tt_write;

static inline void tt_write_cb(void *ud, int status, int64_t version) {
    tt_write *w = ud;
    w->done++;
    w->status = status;
    w->version = version;
}

static inline strata_l1 *tt_l1(strata_clock *clock, uint32_t neg_ms) {
    strata_l1_config c;
    strata_l1_config_init(&c);
    c.capacity = 100000;
    c.clock = clock;
    c.negative_ttl_ns = (uint64_t)neg_ms * 1000000u;
    c.load_ttl_ns = 5ull * 1000000000u;
    c.refresh_beta = 0; /* the tier decides refreshes (XFetch in Redis) */
    c.stale_ns = 0;
    strata_l1 *l1 = NULL;
    if (strata_l1_create(&c, &l1) != STRATA_OK)
        return NULL;
    return l1;
}

/* Creates loop + redis client (+ L1 when with_l1) + tier; cfg fields redis/l1 are set here. */
static inline int tt_node_init(tt_node *n, const char *redis_url, strata_tier_config *cfg,
                               bool with_l1) {
    memset(n, 0, sizeof *n);
    uv_loop_init(&n->loop);
    strata_redis_options ro;
    strata_redis_options_init(&ro);
    ro.max_queued = 1000000;
    int rc = strata_redis_create(&n->redis, &n->loop, redis_url, &ro, NULL);
    if (rc < 0)
        return rc;
    if (with_l1) {
        n->l1 = tt_l1(cfg->clock, cfg->negative_ttl_ms);
        if (!n->l1)
            return STRATA_ENOMEM;
    }
    cfg->redis = n->redis;
    cfg->l1 = n->l1;
    return strata_tier_create(cfg, &n->tier);
}

static inline void tt_run_until(tt_node *n, const int *flag, int want) {
    while (*flag < want)
        uv_run(&n->loop, UV_RUN_ONCE);
}

static inline void tt_node_fini(tt_node *n) {
    while (strata_tier_quiesce(n->tier) > 0)
        uv_run(&n->loop, UV_RUN_ONCE);
    strata_tier_destroy(&n->tier);
    strata_redis_destroy(&n->redis);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    uv_loop_close(&n->loop);
    strata_l1_destroy(&n->l1);
}

static inline tt_get tt_get_sync(tt_node *n, const char *key) {
    tt_get g;
    memset(&g, 0, sizeof g);
    int rc = strata_tier_get(n->tier, key, strlen(key), tt_get_cb, &g);
    if (rc < 0) {
        g.status = rc;
        return g;
    }
    tt_run_until(n, &g.done, 1);
    return g;
}

static inline tt_write tt_put_sync(tt_node *n, const char *key, const char *val) {
    tt_write w;
    memset(&w, 0, sizeof w);
    int rc = strata_tier_put(n->tier, key, strlen(key), val, strlen(val), STRATA_DB_ANY_VERSION,
                             tt_write_cb, &w);
    if (rc < 0) {
        w.status = rc;
        return w;
    }
    tt_run_until(n, &w.done, 1);
    return w;
}

/* Inserts nkeys rows "k<i>" = "v<i>" version 1 into strata_kv in one transaction. */
static inline int tt_bulk_insert(strata_db *db, const char *ns, int nkeys) {
    strata_db_conn *c = NULL;
    int rc = strata_db_acquire(db, &c);
    if (rc < 0)
        return rc;
    rc = strata_db_begin(c, NULL);
    for (int i = 0; i < nkeys && rc == STRATA_OK; i++) {
        char k[32], v[32];
        snprintf(k, sizeof k, "k%d", i);
        snprintf(v, sizeof v, "v%d", i);
        strata_db_param p[3] = {strata_db_p_text(ns), strata_db_p_text(k),
                                strata_db_p_blob(v, strlen(v))};
        rc = strata_db_query(c,
                             "INSERT INTO strata_kv (ns, key, value, version, deleted, updated_at)"
                             " VALUES ($1, $2, $3, 1, 0, 0)",
                             p, 3, NULL, NULL, NULL);
    }
    if (rc == STRATA_OK)
        rc = strata_db_commit(c, NULL);
    strata_db_release(&c);
    return rc;
}

static inline strata_db *tt_sqlite(const char *name) {
    char url[512];
    snprintf(url, sizeof url, "sqlite://%s/%s.db", sh_tmpdir(), name);
    strata_db_config cfg;
    strata_db_config_default(&cfg);
    cfg.pool_size = 4;
    strata_db *db = NULL;
    if (strata_db_open_config(&db, url, &cfg, NULL) != STRATA_OK)
        return NULL;
    return db;
}

#endif
