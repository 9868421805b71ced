/*
 * test_tier_expiry.c: mass expiry of 10,000 hot keys, counted, not timed
 * (issue 6, "Guarantees").  Two tier instances (own L1 and Redis client each)
 * on one loop share Redis and a SQLite database; TTL decisions use a manual
 * clock, so "expiry" is one clock move, never a sleep.
 *
 *   protections_on   after warming, every soft expiry is spread over the
 *                    jitter window; the clock jumps past all of them; under
 *                    load (4 concurrent gets per key, 2 per instance) each key
 *                    is loaded from the database exactly once.
 *   protections_off  no L1, no leases, no stale serving, no jitter: the same
 *                    load loads keys repeatedly (the protections matter).
 */
/* ctest-labels: redis */
/* ctest-timeout: 150 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>

#include "tier_test_util.h"

#define NKEYS  10000
#define WINDOW 64

static sh_redis *g_redis;
static strata_redis_sync *g_rs;
static strata_db *g_db;
static atomic_int g_per_key[NKEYS];
static atomic_int g_loads;

static void hook(void *ctx, const void *key, size_t klen) {
    (void)ctx;
    char buf[32];
    if (klen < 2 || klen >= sizeof buf)
        return;
    memcpy(buf, key, klen);
    buf[klen] = 0;
    int i = atoi(buf + 1);
    if (i >= 0 && i < NKEYS)
        atomic_fetch_add(&g_per_key[i], 1);
    atomic_fetch_add(&g_loads, 1);
}

typedef struct pump {
    int issued, done, errors, inflight;
} pump;

static void pump_cb(void *ud, int status, strata_tier_outcome oc, const void *v, size_t len,
                    int64_t ver) {
    (void)oc;
    (void)v;
    (void)len;
    (void)ver;
    pump *p = ud;
    p->done++;
    p->inflight--;
    if (status != STRATA_OK)
        p->errors++;
}

/* Gets every key `per` times on each tier, at most WINDOW gets in flight. */
static void load_all(uv_loop_t *loop, strata_tier **tiers, int ntiers, int per, pump *p) {
    memset(p, 0, sizeof *p);
    int total = NKEYS * per * ntiers;
    for (int i = 0; i < NKEYS; i++) {
        char k[32];
        snprintf(k, sizeof k, "k%d", i);
        for (int t = 0; t < ntiers; t++)
            for (int r = 0; r < per; r++) {
                while (p->inflight >= WINDOW)
                    uv_run(loop, UV_RUN_ONCE);
                if (strata_tier_get(tiers[t], k, strlen(k), pump_cb, p) == STRATA_OK) {
                    p->issued++;
                    p->inflight++;
                } else {
                    p->errors++;
                    p->done++;
                }
            }
    }
    while (p->done < total)
        uv_run(loop, UV_RUN_ONCE);
}

static void reset_counts(void) {
    for (int i = 0; i < NKEYS; i++)
        atomic_store(&g_per_key[i], 0);
    atomic_store(&g_loads, 0);
}

static void run(bool protections) {
    char *fr = sh_redis_cmd(sh_redis_port(g_redis), "FLUSHALL");
    free(fr);
    strata_clock *clock = strata_clock_create_manual(1000000000ull, 1700000000000LL);
    strata_tier_config c;
    strata_tier_config_init(&c);
    c.ns = "exp";
    c.db = g_db;
    c.clock = clock;
    c.bloom = false;
    c.ttl_ms = 10000;
    c.deadline_ms = 30000;
    c.load_hook = hook;
    c.l1_ttl_ms = 1000;
    c.bulkhead = 128; /* above the test's window: no backpressure while warming */
    if (protections) {
        c.jitter_pct = 10;
        c.stale_ms = 120000;
    } else {
        c.jitter_pct = 0;
        c.stale_ms = 0;
        c.leases = false;
        c.xfetch_beta = 0;
    }
    tt_node a;
    assert_int_equal(tt_node_init(&a, sh_redis_url(g_redis), &c, protections), STRATA_OK);
    strata_tier_config c2 = c;
    strata_redis *r2 = NULL;
    strata_redis_options ro;
    strata_redis_options_init(&ro);
    ro.max_queued = 1000000;
    assert_int_equal(strata_redis_create(&r2, &a.loop, sh_redis_url(g_redis), &ro, NULL),
                     STRATA_OK);
    c2.redis = r2;
    c2.l1 = protections ? tt_l1(clock, c.negative_ttl_ms) : NULL;
    strata_tier *t2 = NULL;
    assert_int_equal(strata_tier_create(&c2, &t2), STRATA_OK);
    strata_tier *tiers[2] = {a.tier, t2};

    /* warm: every key once */
    reset_counts();
    pump p;
    load_all(&a.loop, tiers, 1, 1, &p);
    assert_int_equal(p.errors, 0);
    assert_int_equal(atomic_load(&g_loads), NKEYS);
    while (strata_tier_quiesce(a.tier) > 0)
        uv_run(&a.loop, UV_RUN_ONCE);

    if (protections) {
        /* soft expiries spread over [now + 9 s, now + 11 s]: 10 buckets of 200 ms */
        int64_t now = strata_clock_wall_ms(clock);
        int buckets[10] = {0};
        int64_t mn = INT64_MAX, mx = 0;
        for (int i = 0; i < NKEYS; i++) {
            strata_redis_reply *r = NULL;
            assert_int_equal(strata_redis_sync_command(g_rs, &r, "HGET st:{exp:k%d} soft", i),
                             STRATA_OK);
            assert_int_equal(r->type, STRATA_REPLY_STRING);
            int64_t soft = atoll(r->str) - now;
            strata_redis_reply_free(r);
            mn = soft < mn ? soft : mn;
            mx = soft > mx ? soft : mx;
            int b = (int)((soft - 9000) / 200);
            assert_true(b >= 0 && b <= 10);
            buckets[b > 9 ? 9 : b]++;
        }
        fprintf(stderr, "soft expiry spread: min=%lld ms max=%lld ms buckets:", (long long)mn,
                (long long)mx);
        for (int b = 0; b < 10; b++) {
            fprintf(stderr, " %d", buckets[b]);
            assert_true(buckets[b] > NKEYS / 20); /* uniform would be NKEYS/10 each */
        }
        fprintf(stderr, "\n");
    }

    /* every key past its soft expiry at once; then load from both instances */
    strata_clock_advance(clock, 11001 * STRATA_NS_PER_MS);
    reset_counts();
    int rounds = 0;
    int errors = 0;
    for (;;) {
        load_all(&a.loop, tiers, 2, 2, &p);
        errors += p.errors;
        while (strata_tier_quiesce(a.tier) + strata_tier_quiesce(t2) > 0)
            uv_run(&a.loop, UV_RUN_ONCE);
        rounds++;
        if (!protections || rounds == 10)
            break;
        /* a refresh refused by the bulkhead is retried by a later reader: read
         * again until every key was refreshed; none may be loaded twice */
        int missing = 0;
        for (int i = 0; i < NKEYS; i++)
            missing += atomic_load(&g_per_key[i]) == 0;
        if (missing == 0)
            break;
    }
    int once = 0, more = 0, none = 0, maxk = 0;
    for (int i = 0; i < NKEYS; i++) {
        int n = atomic_load(&g_per_key[i]);
        if (n == 1)
            once++;
        else if (n == 0)
            none++;
        else
            more++;
        maxk = n > maxk ? n : maxk;
    }
    fprintf(stderr, "rounds=%d ", rounds);
    fprintf(stderr, "protections=%s: gets=%d loads=%d keys loaded once=%d more=%d none=%d max=%d\n",
            protections ? "on" : "off", p.issued, atomic_load(&g_loads), once, more, none, maxk);
    if (protections) {
        assert_int_equal(errors, 0);
        assert_int_equal(once, NKEYS); /* each key loaded exactly once for its expiry */
        assert_int_equal(atomic_load(&g_loads), NKEYS);
    } else {
        assert_true(more > NKEYS / 2); /* repeated loads of the same keys */
        assert_true(atomic_load(&g_loads) > NKEYS * 3 / 2);
    }
    strata_tier_destroy(&t2);
    strata_redis_destroy(&r2);
    strata_l1_destroy(&c2.l1);
    tt_node_fini(&a);
    strata_clock_destroy(&clock);
}

static void protections_on(void **state) {
    (void)state;
    run(true);
}

static void protections_off(void **state) {
    (void)state;
    run(false);
}

int main(void) {
    sh_init(140);
    if (sh_redis_start(&g_redis, NULL) != STRATA_OK)
        return 1;
    if (strata_redis_sync_create(&g_rs, sh_redis_url(g_redis), NULL, NULL) != STRATA_OK)
        return 1;
    g_db = tt_sqlite("expiry");
    if (!g_db || tt_bulk_insert(g_db, "exp", NKEYS) != STRATA_OK)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(protections_on),
        cmocka_unit_test(protections_off),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    strata_db_close(&g_db);
    strata_redis_sync_destroy(&g_rs);
    sh_redis_stop(&g_redis);
    return rc;
}
