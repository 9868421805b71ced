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
 *   (both with the refresh cap off: the clock does not move while they read)
 *
 *   refresh_cap_mass_expiry  the refresh cap (D-T11) on defaults, the clock moving in
 *                    100 ms steps, every key read once per simulated second through
 *                    one of two tiers: in every simulated second the database loads stay
 *                    within the cap (1.1 x keys / ttl, counted by the tiers' shared
 *                    HyperLogLog), every get is answered (stale while its refresh waits),
 *                    every key is loaded for its expiry and never twice within one soft
 *                    TTL.
 *   refresh_cap_off_bursts  the same with the cap off: the peak second is several
 *                    times the cap (the cap is what removes the burst).
 */
/* ctest-labels: redis */
/* ctest-timeout: 400 */
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
/* refresh-cap tests: simulated time of the current step, each key's soft expiry after its
 * last load (0 = not loaded), keys loaded in the current step, loads within a soft TTL */
static _Atomic int64_t g_now_ms;
static int64_t g_soft_after[NKEYS];
static int g_step_keys[NKEYS];
static atomic_int g_nstep;
static atomic_int g_early_loads;

static void hook(void *ctx, const void *key, size_t klen) {
    (void)ctx;
    char buf[32];
    if (klen < 2 || klen >= sizeof buf)
        return;
    memcpy(buf, key, klen);
    buf[klen] = 0;
    int i = atoi(buf + 1);
    if (i >= 0 && i < NKEYS) {
        atomic_fetch_add(&g_per_key[i], 1);
        /* g_soft_after[i] is written by the test thread between steps only.  XFetch may
         * refresh a few ms before the soft expiry (delta = 1 ms here): a load more than
         * 1 s before it is a second load within one TTL */
        if (g_soft_after[i] != 0 && atomic_load(&g_now_ms) < g_soft_after[i] - 1000)
            atomic_fetch_add(&g_early_loads, 1);
        int n = atomic_fetch_add(&g_nstep, 1);
        if (n < NKEYS)
            g_step_keys[n] = i;
    }
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

/* An empty Redis, a manual clock (returned: the caller destroys it) and the
 * config both runs share: namespace, database, clock, no Bloom filter, the
 * load-counting hook, a bulkhead above the tests' windows (no backpressure). */
static strata_clock *fresh_run(strata_tier_config *c) {
    char *fr = sh_redis_cmd(sh_redis_port(g_redis), "FLUSHALL");
    free(fr);
    strata_clock *clock = strata_clock_create_manual(1000000000ull, 1700000000000LL);
    strata_tier_config_init(c);
    c->ns = "exp";
    c->db = g_db;
    c->clock = clock;
    c->bloom = false;
    c->deadline_ms = 30000;
    c->load_hook = hook;
    c->bulkhead = 128;
    return clock;
}

static void run(bool protections) {
    strata_tier_config c;
    strata_clock *clock = fresh_run(&c);
    c.ttl_ms = 10000;
    c.l1_ttl_ms = 1000;
    c.refresh_cap_pct = 0; /* the clock stands still while these read: see refresh_cap_* */
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
        if (!protections || rounds == 8)
            break;
        /* a refresh refused by the bulkhead is retried by a later reader: read
         * again until every key was refreshed; none may be loaded twice.  The L1s keep
         * a stale answer 500 ms: move the clock past that (7 rounds at most stay far
         * below the refreshed keys' next soft expiry, >= 9 s away) */
        int missing = 0;
        for (int i = 0; i < NKEYS; i++)
            missing += atomic_load(&g_per_key[i]) == 0;
        if (missing == 0)
            break;
        strata_clock_advance(clock, 700 * STRATA_NS_PER_MS);
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
    {
        strata_tier_stats s1, s2;
        strata_tier_get_stats(a.tier, &s1);
        strata_tier_get_stats(t2, &s2);
        fprintf(stderr, "bulkhead_rejects=%llu breaker_rejects=%llu errors=%llu ",
                (unsigned long long)(s1.bulkhead_rejects + s2.bulkhead_rejects),
                (unsigned long long)(s1.breaker_rejects + s2.breaker_rejects),
                (unsigned long long)(s1.errors + s2.errors));
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

#define STEP_MS 100
#define TTL_MS  10000

typedef struct cap_run {
    int peak;         /* busiest simulated second */
    int max_cap;      /* largest cap (loads/s) the tiers reported */
    int gets, errors; /* gets of the stepped phase */
    uint64_t stale_served, deferred, urgent, keys_est;
} cap_run;

/* Reads the soft expiry of every key loaded in the step just settled. */
static void note_step_loads(void) {
    int n = atomic_load(&g_nstep);
    if (n > NKEYS)
        n = NKEYS;
    for (int j = 0; j < n; j++) {
        int i = g_step_keys[j];
        strata_redis_reply *r = NULL;
        assert_int_equal(strata_redis_sync_command(g_rs, &r, "HGET st:{exp:k%d} soft", i),
                         STRATA_OK);
        assert_int_equal(r->type, STRATA_REPLY_STRING);
        g_soft_after[i] = atoll(r->str);
        strata_redis_reply_free(r);
    }
    atomic_store(&g_nstep, 0);
}

/*
 * Warms every key at t0 (one cold fill: all soft expiries in [t0 + 9 s, t0 + 11 s]),
 * jumps to t0 + 8.5 s, then runs `secs` simulated seconds in 100 ms steps, each step
 * reading a tenth of the keys round robin (so every key once per second) through the
 * two tiers alternately, settling every load before the clock moves.
 */
static void run_cap(bool cap, int secs, cap_run *out) {
    memset(out, 0, sizeof *out);
    strata_tier_config c;
    strata_clock *clock = fresh_run(&c);
    c.ttl_ms = TTL_MS;
    /* Redis' hard expiry (PEXPIRE) runs on real time: keep it far beyond the run */
    c.stale_ms = 600000;
    /* All gets of a step share one instant; the cap's burst must cover a step for the
     * stepped clock to behave as a continuous one (the bench does the same). */
    c.refresh_cap_burst_ms = STEP_MS;
    if (!cap)
        c.refresh_cap_pct = 0;
    tt_node a;
    assert_int_equal(tt_node_init(&a, sh_redis_url(g_redis), &c, false), STRATA_OK);
    strata_tier_config c2 = c;
    strata_redis *r2 = NULL;
    strata_redis_options ro;
    strata_redis_options_init(&ro);
    ro.max_queued = 1000000;
    assert_int_equal(strata_redis_create(&r2, &a.loop, sh_redis_url(g_redis), &ro, NULL),
                     STRATA_OK);
    c2.redis = r2;
    c2.l1 = NULL;
    strata_tier *t2 = NULL;
    assert_int_equal(strata_tier_create(&c2, &t2), STRATA_OK);
    strata_tier *tiers[2] = {a.tier, t2};

    reset_counts();
    memset(g_soft_after, 0, sizeof g_soft_after);
    atomic_store(&g_nstep, 0);
    atomic_store(&g_early_loads, 0);
    atomic_store(&g_now_ms, strata_clock_wall_ms(clock));
    pump p;
    load_all(&a.loop, tiers, 1, 1, &p);
    assert_int_equal(p.errors, 0);
    while (strata_tier_quiesce(a.tier) > 0)
        uv_run(&a.loop, UV_RUN_ONCE);
    assert_int_equal(atomic_load(&g_loads), NKEYS);
    note_step_loads();
    reset_counts();

    strata_clock_advance(clock, 8500 * STRATA_NS_PER_MS);
    int steps_per_sec = 1000 / STEP_MS, slice = NKEYS / steps_per_sec, next = 0;
    for (int sec = 0; sec < secs; sec++) {
        int loads0 = atomic_load(&g_loads);
        for (int st = 0; st < steps_per_sec; st++) {
            atomic_store(&g_now_ms, strata_clock_wall_ms(clock));
            memset(&p, 0, sizeof p);
            for (int j = 0; j < slice; j++, next = (next + 1) % NKEYS) {
                char k[32];
                snprintf(k, sizeof k, "k%d", next);
                while (p.inflight >= WINDOW)
                    uv_run(&a.loop, UV_RUN_ONCE);
                if (strata_tier_get(tiers[(next + st) % 2], k, strlen(k), pump_cb, &p) ==
                    STRATA_OK) {
                    p.issued++;
                    p.inflight++;
                } else {
                    p.errors++;
                    p.done++;
                }
            }
            while (p.done < slice || strata_tier_quiesce(a.tier) + strata_tier_quiesce(t2) > 0)
                uv_run(&a.loop, UV_RUN_ONCE);
            out->gets += p.issued;
            out->errors += p.errors;
            note_step_loads();
            strata_clock_advance(clock, STEP_MS * STRATA_NS_PER_MS);
        }
        int in_sec = atomic_load(&g_loads) - loads0;
        out->peak = in_sec > out->peak ? in_sec : out->peak;
        for (int i = 0; i < 2; i++) {
            strata_tier_stats s;
            strata_tier_get_stats(tiers[i], &s);
            if ((int)s.refresh_cap_per_s > out->max_cap)
                out->max_cap = (int)s.refresh_cap_per_s;
        }
        fprintf(stderr, "%s", sec == 0 ? "loads per simulated second:" : "");
        fprintf(stderr, " %d", in_sec);
    }
    fprintf(stderr, "\n");
    for (int i = 0; i < 2; i++) {
        strata_tier_stats s;
        strata_tier_get_stats(tiers[i], &s);
        out->stale_served += s.stale_served;
        out->deferred += s.refresh_deferred;
        out->urgent += s.refresh_urgent;
        if (s.refresh_keys > out->keys_est)
            out->keys_est = s.refresh_keys;
    }
    strata_tier_destroy(&t2);
    strata_redis_destroy(&r2);
    tt_node_fini(&a);
    strata_clock_destroy(&clock);
}

static void refresh_cap_mass_expiry(void **state) {
    (void)state;
    cap_run r;
    run_cap(true, 12, &r); /* t0 + 8.5 s .. t0 + 20.5 s: the first expiry and its drain */
    int once = 0, none = 0, twice = 0;
    for (int i = 0; i < NKEYS; i++) {
        int n = atomic_load(&g_per_key[i]);
        once += n == 1;
        none += n == 0;
        twice += n > 1;
    }
    fprintf(stderr,
            "cap on: peak=%d loads/s cap=%d keys_est=%llu gets=%d errors=%d stale_served=%llu "
            "deferred=%llu urgent=%llu loads=%d once=%d twice=%d none=%d early=%d\n",
            r.peak, r.max_cap, (unsigned long long)r.keys_est, r.gets, r.errors,
            (unsigned long long)r.stale_served, (unsigned long long)r.deferred,
            (unsigned long long)r.urgent, atomic_load(&g_loads), once, twice, none,
            atomic_load(&g_early_loads));
    /* the population the HyperLogLog counted: 10,000 keys within its error */
    assert_true(r.keys_est >= NKEYS * 97 / 100 && r.keys_est <= NKEYS * 103 / 100);
    /* cap = 1.1 x keys / ttl, from that count */
    assert_true(r.max_cap >= 1067 && r.max_cap <= 1133);
    /* every second within the cap: GCRA admits at most rate x 1 s + 1 in a second of
     * steps (the burst covers the step the second starts with) */
    assert_true(r.peak <= r.max_cap + 2);
    assert_int_equal(r.errors, 0);
    assert_true(r.deferred > 0);     /* the cap did refuse refreshes ... */
    assert_true(r.stale_served > 0); /* ... and their readers were served stale */
    assert_int_equal(r.urgent, 0);   /* stale >> ttl: nothing came near its hard expiry */
    assert_int_equal(none, 0);       /* every key was refreshed for its expiry */
    assert_int_equal(atomic_load(&g_early_loads), 0); /* never twice within one soft TTL */
}

static void refresh_cap_off_bursts(void **state) {
    (void)state;
    cap_run r;
    run_cap(false, 5, &r); /* t0 + 8.5 s .. t0 + 13.5 s: the first expiry */
    int none = 0;
    for (int i = 0; i < NKEYS; i++)
        none += atomic_load(&g_per_key[i]) == 0;
    fprintf(stderr, "cap off: peak=%d loads/s gets=%d errors=%d none=%d early=%d\n", r.peak, r.gets,
            r.errors, none, atomic_load(&g_early_loads));
    assert_int_equal(r.errors, 0);
    assert_int_equal(none, 0);
    assert_int_equal(atomic_load(&g_early_loads), 0); /* leases: still once per expiry */
    /* the burst: jitter alone spreads 10,000 expiries over 2 s, about 5,000 loads in the
     * busiest second, > 3x the 1,100/s the cap holds them to */
    assert_true(r.peak > 3 * (NKEYS * 11 / 10) * 1000 / TTL_MS);
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
        cmocka_unit_test(refresh_cap_mass_expiry),
        cmocka_unit_test(refresh_cap_off_bursts),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    strata_db_close(&g_db);
    strata_redis_sync_destroy(&g_rs);
    sh_redis_stop(&g_redis);
    return rc;
}
