/*
 * test_tier_read.c: the tiered read path and cache-aside writes (strata/tier.h)
 * with a real redis-server and a SQLite file.
 *
 *   read_through_fills_each_tier   miss -> LOADED, then HIT_L1; a second tier
 *                                  without L1 -> HIT_REDIS; version carried
 *   negative_cache_and_bloom       absent keys are cached negative; once the
 *                                  Bloom filter is rebuilt an absent key is
 *                                  answered without a database load; a put
 *                                  relayed by the outbox relay sets its bits
 *   fill_vs_write_race_is_refused  a loader holding version 1 while version 2 is
 *                                  written and relayed: its fill is refused, the
 *                                  L1 keeps nothing stale, the next get sees 2
 *   concurrent_fills_and_writes    readers on two tiers racing 200 writes: after
 *                                  each relay, Redis and the L1 never hold an
 *                                  older version than the one relayed
 *   stale_while_revalidate         past the soft TTL (manual clock) the stale
 *                                  value is served and one holder refreshes
 *   bad_inputs                     oversized keys/values, NUL, invalid UTF-8
 *   gcra_limiter                   remaining quota and retry-after from Redis
 */
/* ctest-labels: redis */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "tier_test_util.h"

static sh_redis *g_redis;
static strata_redis_sync *g_rs;
static strata_db *g_db;
static strata_clock *g_clock;
static int g_case;

/* load hook: optionally held until released */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static bool g_hold, g_held;
static atomic_int g_loads;

static void hook(void *ctx, const void *key, size_t klen) {
    (void)ctx;
    (void)key;
    (void)klen;
    atomic_fetch_add(&g_loads, 1);
    pthread_mutex_lock(&g_mu);
    if (g_hold) {
        g_held = true;
        pthread_cond_broadcast(&g_cv);
        while (g_hold)
            pthread_cond_wait(&g_cv, &g_mu);
        g_held = false;
    }
    pthread_mutex_unlock(&g_mu);
}

static bool is_held(void *ctx) {
    (void)ctx;
    pthread_mutex_lock(&g_mu);
    bool h = g_held;
    pthread_mutex_unlock(&g_mu);
    return h;
}

static void release_hold(void) {
    pthread_mutex_lock(&g_mu);
    g_hold = false;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

static strata_tier_config base_cfg(void) {
    strata_tier_config c;
    strata_tier_config_init(&c);
    c.ns = "t";
    c.db = g_db;
    c.clock = g_clock;
    c.load_hook = hook;
    c.bloom = false;
    c.deadline_ms = 5000;
    return c;
}

static int setup(void **state) {
    (void)state;
    char name[32];
    snprintf(name, sizeof name, "read%d", ++g_case);
    g_db = tt_sqlite(name);
    if (!g_db)
        return -1;
    strata_redis_reply *r = NULL;
    strata_redis_sync_command(g_rs, &r, "FLUSHALL");
    strata_redis_reply_free(r);
    atomic_store(&g_loads, 0);
    g_clock = strata_clock_create_manual(1000000000ull, 1700000000000LL);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    strata_db_close(&g_db);
    strata_clock_destroy(&g_clock);
    return 0;
}

static strata_outbox_relay *relay_for(strata_l1 *l1a, strata_l1 *l1b) {
    strata_relay_config rc;
    strata_relay_config_init(&rc);
    rc.redis_url = sh_redis_url(g_redis);
    rc.db = g_db;
    rc.node_id = "relay-1";
    rc.l1[0] = l1a;
    rc.l1[1] = l1b;
    strata_outbox_relay *r = NULL;
    assert_int_equal(strata_relay_create(&rc, &r, NULL), STRATA_OK);
    return r;
}

static long long redis_ver(const char *hkey) {
    strata_redis_reply *r = NULL;
    assert_int_equal(strata_redis_sync_command(g_rs, &r, "HGET %s ver", hkey), STRATA_OK);
    long long v = r->type == STRATA_REPLY_STRING ? atoll(r->str) : -1;
    strata_redis_reply_free(r);
    return v;
}

/* Version of the L1 entry (-1 when absent). */
static long long l1_ver(strata_l1 *l1, const char *hkey) {
    strata_buf b = STRATA_BUF_INIT;
    int rc = strata_l1_get_buf(l1, hkey, strlen(hkey), &b);
    long long v = -1;
    if (rc >= 0 && b.len >= 8) {
        uint64_t x = 0;
        for (int i = 0; i < 8; i++)
            x |= (uint64_t)(unsigned char)b.data[i] << (8 * i);
        v = (long long)x;
    }
    strata_buf_free(&b);
    return v;
}

static void read_through_fills_each_tier(void **state) {
    (void)state;
    strata_tier_config c = base_cfg();
    tt_node a, b;
    assert_int_equal(tt_node_init(&a, sh_redis_url(g_redis), &c, true), STRATA_OK);
    strata_tier_config c2 = base_cfg();
    assert_int_equal(tt_node_init(&b, sh_redis_url(g_redis), &c2, false), STRATA_OK);
    tt_write w = tt_put_sync(&a, "user:1", "alice");
    assert_int_equal(w.status, STRATA_OK);
    assert_int_equal(w.version, 1);
    tt_get g = tt_get_sync(&a, "user:1");
    assert_int_equal(g.status, STRATA_OK);
    assert_int_equal(g.outcome, STRATA_TIER_LOADED);
    assert_string_equal(g.val, "alice");
    assert_int_equal(g.ver, 1);
    g = tt_get_sync(&a, "user:1");
    assert_int_equal(g.status, STRATA_OK);
    assert_int_equal(g.outcome, STRATA_TIER_HIT_L1);
    assert_int_equal(g.ver, 1);
    /* a's fill is sent by a's loop: let it land before b (another loop) reads */
    while (strata_tier_quiesce(a.tier) > 0)
        uv_run(&a.loop, UV_RUN_ONCE);
    g = tt_get_sync(&b, "user:1");
    assert_int_equal(g.status, STRATA_OK);
    assert_int_equal(g.outcome, STRATA_TIER_HIT_REDIS);
    assert_string_equal(g.val, "alice");
    assert_int_equal(atomic_load(&g_loads), 1);
    /* a value with NUL bytes round-trips (values are bytes) */
    tt_write w2;
    memset(&w2, 0, sizeof w2);
    assert_int_equal(
        strata_tier_put(a.tier, "bin", 3, "a\0b", 3, STRATA_DB_ANY_VERSION, tt_write_cb, &w2),
        STRATA_OK);
    tt_run_until(&a, &w2.done, 1);
    g = tt_get_sync(&b, "bin");
    assert_int_equal(g.status, STRATA_OK);
    assert_int_equal(g.len, 3);
    assert_memory_equal(g.val, "a\0b", 3);
    strata_tier_stats st;
    strata_tier_get_stats(a.tier, &st);
    assert_int_equal(st.l1_hits, 1);
    assert_int_equal(st.db_loads, 1);
    tt_node_fini(&a);
    tt_node_fini(&b);
}

static void negative_cache_and_bloom(void **state) {
    (void)state;
    strata_tier_config c = base_cfg();
    c.bloom = true;
    c.bloom_refresh_ms = 10;
    tt_node a, b;
    assert_int_equal(tt_node_init(&a, sh_redis_url(g_redis), &c, false), STRATA_OK);
    strata_tier_config c2 = c;
    assert_int_equal(tt_node_init(&b, sh_redis_url(g_redis), &c2, false), STRATA_OK);
    assert_int_equal(tt_bulk_insert(g_db, "t", 100), STRATA_OK);
    /* negative caching: the second get of a missing key does not load */
    tt_get g = tt_get_sync(&a, "nope");
    assert_int_equal(g.status, STRATA_ENOTFOUND);
    assert_int_equal(atomic_load(&g_loads), 1);
    g = tt_get_sync(&a, "nope");
    assert_int_equal(g.status, STRATA_ENOTFOUND);
    assert_int_equal(g.outcome, STRATA_TIER_HIT_REDIS);
    assert_int_equal(atomic_load(&g_loads), 1);
    /* Bloom: rebuilt from the database, then absent keys never load */
    tt_write w;
    memset(&w, 0, sizeof w);
    assert_int_equal(strata_tier_bloom_rebuild(a.tier, tt_write_cb, &w), STRATA_OK);
    tt_run_until(&a, &w.done, 1);
    assert_int_equal(w.status, STRATA_OK);
    while (!strata_tier_bloom_ready(b.tier)) {
        strata_tier_bloom_refresh(b.tier);
        uv_run(&b.loop, UV_RUN_ONCE);
    }
    int before = atomic_load(&g_loads);
    int absent = 0;
    for (int i = 0; i < 200; i++) {
        char k[32];
        snprintf(k, sizeof k, "missing-%d", i);
        g = tt_get_sync(&b, k);
        assert_int_equal(g.status, STRATA_ENOTFOUND);
    }
    strata_tier_stats st;
    strata_tier_get_stats(b.tier, &st);
    absent = (int)st.bloom_absent;
    assert_true(absent >= 190); /* fp rate 1 % */
    assert_int_equal(atomic_load(&g_loads) - before, 200 - absent);
    /* existing keys are still found */
    g = tt_get_sync(&b, "k42");
    assert_int_equal(g.status, STRATA_OK);
    assert_string_equal(g.val, "v42");
    /* an insert through the outbox relay reaches another tier's Bloom copy */
    strata_outbox_relay *rl = relay_for(NULL, NULL);
    w = tt_put_sync(&a, "fresh-key", "x");
    assert_int_equal(w.status, STRATA_OK);
    assert_int_equal(strata_relay_drain(rl, 10000), STRATA_OK);
    strata_tier_bloom_refresh(b.tier);
    for (int i = 0; i < 20; i++)
        uv_run(&b.loop, UV_RUN_NOWAIT);
    tt_get g2;
    for (int tries = 0;; tries++) {
        g2 = tt_get_sync(&b, "fresh-key");
        if (g2.status == STRATA_OK || tries > 1000)
            break;
        uv_run(&b.loop, UV_RUN_ONCE); /* let the Bloom refresh timer run */
    }
    assert_int_equal(g2.status, STRATA_OK);
    assert_string_equal(g2.val, "x");
    strata_relay_destroy(&rl);
    tt_node_fini(&a);
    tt_node_fini(&b);
}

static void fill_vs_write_race_is_refused(void **state) {
    (void)state;
    strata_tier_config c = base_cfg();
    tt_node a;
    assert_int_equal(tt_node_init(&a, sh_redis_url(g_redis), &c, true), STRATA_OK);
    strata_outbox_relay *rl = relay_for(a.l1, NULL);
    assert_int_equal(tt_put_sync(&a, "race", "one").status, STRATA_OK);
    assert_int_equal(strata_relay_run_once(rl), 1);
    /* a get loads version 1 and is held before its fill */
    pthread_mutex_lock(&g_mu);
    g_hold = true;
    pthread_mutex_unlock(&g_mu);
    tt_get g;
    memset(&g, 0, sizeof g);
    assert_int_equal(strata_tier_get(a.tier, "race", 4, tt_get_cb, &g), STRATA_OK);
    while (!is_held(NULL))
        uv_run(&a.loop, UV_RUN_NOWAIT);
    /* meanwhile version 2 is written and relayed */
    tt_write w = tt_put_sync(&a, "race", "two");
    assert_int_equal(w.version, 2);
    assert_int_equal(strata_relay_run_once(rl), 1);
    release_hold();
    tt_run_until(&a, &g.done, 1);
    assert_int_equal(g.status, STRATA_OK);
    assert_int_equal(g.ver, 1); /* read before the write: fine to return */
    while (strata_tier_quiesce(a.tier) > 0)
        uv_run(&a.loop, UV_RUN_ONCE);
    strata_tier_stats st;
    strata_tier_get_stats(a.tier, &st);
    assert_int_equal(st.fills_refused, 1);
    assert_true(redis_ver("st:{t:race}") == -1); /* nothing cached, certainly not 1 */
    assert_true(l1_ver(a.l1, "st:{t:race}") == -1);
    g = tt_get_sync(&a, "race");
    assert_int_equal(g.ver, 2);
    assert_string_equal(g.val, "two");
    strata_relay_destroy(&rl);
    tt_node_fini(&a);
}

typedef struct racer {
    tt_node *n;
    int inflight;
    bool stop;
    long long relayed; /* newest relayed version */
    int violations;
    int completed;
} racer;

static void racer_cb(void *ud, int status, strata_tier_outcome oc, const void *v, size_t len,
                     int64_t ver);

static void racer_issue(racer *r) {
    static tt_get sink;
    (void)sink;
    if (strata_tier_get(r->n->tier, "hot", 3, racer_cb, r) == STRATA_OK)
        r->inflight++;
}

static void racer_cb(void *ud, int status, strata_tier_outcome oc, const void *v, size_t len,
                     int64_t ver) {
    (void)status;
    (void)oc;
    (void)v;
    (void)len;
    (void)ver;
    racer *r = ud;
    r->inflight--;
    r->completed++;
    if (!r->stop)
        racer_issue(r);
}

static void concurrent_fills_and_writes(void **state) {
    (void)state;
    strata_tier_config c = base_cfg();
    c.load_hook = NULL;
    c.lease_ms = 200;
    c.deadline_ms = 2000;
    tt_node a;
    assert_int_equal(tt_node_init(&a, sh_redis_url(g_redis), &c, true), STRATA_OK);
    /* a second tier without L1 on the same loop: more concurrent fills */
    strata_tier_config c2 = c;
    c2.leases = false; /* every miss fills: the CAS alone must hold */
    c2.redis = a.redis;
    c2.l1 = NULL;
    strata_tier *t2 = NULL;
    assert_int_equal(strata_tier_create(&c2, &t2), STRATA_OK);
    strata_outbox_relay *rl = relay_for(a.l1, NULL);
    assert_int_equal(tt_put_sync(&a, "hot", "0").status, STRATA_OK);
    assert_int_equal(strata_relay_run_once(rl), 1);
    racer ra = {&a, 0, false, 0, 0, 0};
    tt_node b = a;
    b.tier = t2;
    racer rb = {&b, 0, false, 0, 0, 0};
    for (int i = 0; i < 8; i++) {
        racer_issue(&ra);
        racer_issue(&rb);
    }
    int violations = 0;
    for (int i = 1; i <= 200; i++) {
        char v[16];
        snprintf(v, sizeof v, "%d", i);
        tt_write w;
        memset(&w, 0, sizeof w);
        assert_int_equal(
            strata_tier_put(a.tier, "hot", 3, v, strlen(v), STRATA_DB_ANY_VERSION, tt_write_cb, &w),
            STRATA_OK);
        tt_run_until(&a, &w.done, 1);
        assert_int_equal(w.status, STRATA_OK);
        assert_int_equal(strata_relay_run_once(rl), 1);
        /* let some reads and fills happen, then check both tiers' caches */
        for (int k = 0; k < 20; k++)
            uv_run(&a.loop, UV_RUN_NOWAIT);
        long long rv = redis_ver("st:{t:hot}");
        long long lv = l1_ver(a.l1, "st:{t:hot}");
        if ((rv != -1 && rv < w.version) || (lv != -1 && lv < w.version)) {
            fprintf(stderr, "stale after relay of v%lld: redis=%lld l1=%lld\n",
                    (long long)w.version, rv, lv);
            violations++;
        }
    }
    ra.stop = rb.stop = true;
    while (ra.inflight > 0 || rb.inflight > 0)
        uv_run(&a.loop, UV_RUN_ONCE);
    while (strata_tier_quiesce(a.tier) + strata_tier_quiesce(t2) > 0)
        uv_run(&a.loop, UV_RUN_ONCE);
    long long rv = redis_ver("st:{t:hot}");
    long long lv = l1_ver(a.l1, "st:{t:hot}");
    assert_true(rv == -1 || rv == 201);
    assert_true(lv == -1 || lv == 201);
    assert_int_equal(violations, 0);
    strata_tier_stats s1, s2;
    strata_tier_get_stats(a.tier, &s1);
    strata_tier_get_stats(t2, &s2);
    fprintf(stderr, "reads=%d fills=%llu refused=%llu\n", ra.completed + rb.completed,
            (unsigned long long)(s1.fills + s2.fills),
            (unsigned long long)(s1.fills_refused + s2.fills_refused));
    assert_true(ra.completed + rb.completed > 200);
    strata_tier_destroy(&t2);
    strata_relay_destroy(&rl);
    tt_node_fini(&a);
}

static void stale_while_revalidate(void **state) {
    (void)state;
    strata_tier_config c = base_cfg();
    c.ttl_ms = 1000;
    c.stale_ms = 60000;
    c.jitter_pct = 0;
    c.xfetch_beta = 0;
    tt_node a;
    assert_int_equal(tt_node_init(&a, sh_redis_url(g_redis), &c, false), STRATA_OK);
    assert_int_equal(tt_put_sync(&a, "s", "old").status, STRATA_OK);
    assert_int_equal(tt_get_sync(&a, "s").outcome, STRATA_TIER_LOADED);
    assert_int_equal(tt_get_sync(&a, "s").outcome, STRATA_TIER_HIT_REDIS);
    /* the database changes behind the cache's back (no relay), then time passes */
    strata_db_conn *cn = NULL;
    assert_int_equal(strata_db_acquire(g_db, &cn), STRATA_OK);
    assert_int_equal(strata_db_conn_kv_put(cn, "t", "s", 1, "new", 3, -1, NULL), STRATA_OK);
    strata_db_release(&cn);
    strata_clock_advance(g_clock, 2 * STRATA_NS_PER_SEC);
    tt_get g = tt_get_sync(&a, "s");
    assert_int_equal(g.outcome, STRATA_TIER_STALE);
    assert_string_equal(g.val, "old");
    while (strata_tier_quiesce(a.tier) > 0)
        uv_run(&a.loop, UV_RUN_ONCE);
    g = tt_get_sync(&a, "s");
    assert_int_equal(g.outcome, STRATA_TIER_HIT_REDIS);
    assert_string_equal(g.val, "new");
    assert_int_equal(atomic_load(&g_loads), 2);
    tt_node_fini(&a);
}

static void bad_inputs(void **state) {
    (void)state;
    strata_tier_config c = base_cfg();
    tt_node a;
    assert_int_equal(tt_node_init(&a, sh_redis_url(g_redis), &c, true), STRATA_OK);
    static char big[STRATA_TIER_KEY_MAX + 2];
    memset(big, 'k', sizeof big - 1);
    tt_get g;
    memset(&g, 0, sizeof g);
    assert_int_equal(strata_tier_get(a.tier, big, STRATA_TIER_KEY_MAX + 1, tt_get_cb, &g),
                     STRATA_ETOOBIG);
    assert_int_equal(strata_tier_get(a.tier, big, STRATA_TIER_KEY_MAX, tt_get_cb, &g), STRATA_OK);
    tt_run_until(&a, &g.done, 1);
    assert_int_equal(g.status, STRATA_ENOTFOUND);
    assert_int_equal(strata_tier_get(a.tier, "", 0, tt_get_cb, &g), STRATA_EINVAL);
    assert_int_equal(strata_tier_get(a.tier, "a\0b", 3, tt_get_cb, &g), STRATA_EINVAL);
    const char *bad_utf8[] = {"\xc3\x28", "\xc0\x80", "\xed\xa0\x80",    "\xf5\x80\x80\x80",
                              "\xe2\x82", "\x80",     "\xf0\x82\x82\xac"};
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof *bad_utf8; i++) {
        assert_int_equal(strata_tier_get(a.tier, bad_utf8[i], strlen(bad_utf8[i]), tt_get_cb, &g),
                         STRATA_EINVAL);
        assert_int_equal(strata_tier_put(a.tier, bad_utf8[i], strlen(bad_utf8[i]), "v", 1, -1,
                                         tt_write_cb, NULL),
                         STRATA_EINVAL);
    }
    const char *good = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80";
    assert_true(strata_utf8_valid(good, strlen(good)));
    char *huge = malloc(STRATA_TIER_VALUE_MAX + 1);
    memset(huge, 'v', STRATA_TIER_VALUE_MAX + 1);
    assert_int_equal(
        strata_tier_put(a.tier, "k", 1, huge, STRATA_TIER_VALUE_MAX + 1, -1, tt_write_cb, NULL),
        STRATA_ETOOBIG);
    free(huge);
    assert_int_equal(strata_tier_put(a.tier, "k", 1, NULL, 5, -1, tt_write_cb, NULL),
                     STRATA_EINVAL);
    /* namespace with a hash-tag brace, missing dependencies */
    strata_tier_config bad = base_cfg();
    bad.ns = "a{b";
    bad.redis = a.redis;
    strata_tier *t = NULL;
    assert_int_equal(strata_tier_create(&bad, &t), STRATA_EINVAL);
    bad.ns = "t";
    bad.db = NULL;
    assert_int_equal(strata_tier_create(&bad, &t), STRATA_EINVAL);
    /* optimistic conflict is a clear status */
    assert_int_equal(tt_put_sync(&a, "opt", "1").status, STRATA_OK);
    tt_write w;
    memset(&w, 0, sizeof w);
    assert_int_equal(strata_tier_put(a.tier, "opt", 3, "2", 1, 7, tt_write_cb, &w), STRATA_OK);
    tt_run_until(&a, &w.done, 1);
    assert_int_equal(w.status, STRATA_ECONFLICT);
    tt_node_fini(&a);
}

typedef struct gres {
    int done;
    int status;
    strata_gcra_result r;
} gres;

static void gcra_cb(void *ud, int status, const strata_gcra_result *r) {
    gres *g = ud;
    g->done++;
    g->status = status;
    if (r)
        g->r = *r;
}

static void gcra_limiter(void **state) {
    (void)state;
    strata_redis *r = strata_redis_sync_client(g_rs);
    int allowed = 0, refused = 0;
    int64_t last_remaining = 100, retry = 0;
    for (int i = 0; i < 8; i++) {
        gres g = {0, 0, {0}};
        /* 5 per minute, burst 5: the first 5 pass, the rest wait ~12 s */
        assert_int_equal(strata_ratelimit_gcra(r, "rl:{u1}", 5, 60000, 5, 1, gcra_cb, &g),
                         STRATA_OK);
        while (!g.done)
            strata_redis_sync_run_for(g_rs, 1);
        assert_int_equal(g.status, STRATA_OK);
        if (g.r.allowed) {
            allowed++;
            assert_true(g.r.remaining < last_remaining);
            last_remaining = g.r.remaining;
        } else {
            refused++;
            retry = g.r.retry_after_us;
            assert_int_equal(g.r.remaining, 0);
        }
    }
    assert_int_equal(allowed, 5);
    assert_int_equal(refused, 3);
    assert_true(retry > 10 * 1000000LL && retry <= 12 * 1000000LL);
    assert_int_equal(strata_ratelimit_gcra(r, "rl:{u1}", 0, 1000, 1, 1, gcra_cb, NULL),
                     STRATA_EINVAL);
    assert_int_equal(strata_ratelimit_gcra(r, "rl:\xff", 1, 1000, 1, 1, gcra_cb, NULL),
                     STRATA_EINVAL);
}

int main(void) {
    sh_init(110);
    if (sh_redis_start(&g_redis, NULL) != STRATA_OK)
        return 1;
    if (strata_redis_sync_create(&g_rs, sh_redis_url(g_redis), NULL, NULL) != STRATA_OK)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(read_through_fills_each_tier, setup, teardown),
        cmocka_unit_test_setup_teardown(negative_cache_and_bloom, setup, teardown),
        cmocka_unit_test_setup_teardown(fill_vs_write_race_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(concurrent_fills_and_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(stale_while_revalidate, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_inputs, setup, teardown),
        cmocka_unit_test_setup_teardown(gcra_limiter, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    strata_redis_sync_destroy(&g_rs);
    sh_redis_stop(&g_redis);
    return rc;
}
