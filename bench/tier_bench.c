/*
 * tier_bench.c: `strata bench tier`: the database load rate of the tiered
 * path during a mass expiry of hot keys, against its steady-state rate
 * (issue 6: goal <= 1.2x), with the protections on and off.
 *
 * A strata_tier is driven directly: real Redis (--redis), a SQLite file
 * (--db-dir, /dev/shm by default), no L1 (the Redis/database tiers are what
 * is measured), and a MANUAL clock: time is simulated, in steps of --step.
 * Every step issues rate * step gets of uniformly random keys among --keys,
 * runs the loop until every get and every background refresh/fill of the
 * step is done (strata_tier_quiesce() == 0), then moves the clock.  Database
 * loads (strata_tier_stats.db_loads) are counted per simulated second, so the
 * figures are counts per unit of simulated time: the same on a busy and an
 * idle machine, and no sleep anywhere.
 *
 * Two phases per mode, each on its own namespace (so each starts cold):
 *   steady  the keys are first filled one by one, spread evenly over one TTL
 *           (key i at i*ttl/keys), as in a cache that has run for a long time;
 *           then the loads of the next two TTLs are counted: about keys / mean
 *           TTL per second (plus duplicate loads without leases), the
 *           steady-state rate (two TTLs, so that the keys whose jittered
 *           expiry leaves the window at one end are mostly balanced by those
 *           entering at the other).
 *   mass    all keys are filled in the same step (a cold start, a flushed
 *           Redis, a deploy); then the loads are counted for 2 TTLs, which
 *           covers the first expiry of every key for any jitter <= 50 % and,
 *           with the refresh cap, the drain of its backlog (ttl / 1.1 after the
 *           first expiries).  The figure is the busiest simulated second of
 *           that phase.
 * ratio = mass peak / steady rate.  Also counted in the mass phase (a load hook
 * keeps each key's last load time): duplicate loads (a key loaded again less
 * than ttl * (1 - jitter) - 1 s after its previous load: not a new expiry),
 * keys never refreshed, stale answers and refreshes the cap deferred.  Modes:
 *   on     the defaults of strata_tier_config (leases, SWR with stale = ttl,
 *          XFetch beta 1, TTL jitter --jitter %, refresh cap --cap % of
 *          keys / ttl), breaker off (it would only refuse loads), bulkhead 1024,
 *          the cap's burst = one step (all gets of a step share one instant: a
 *          smaller burst would throttle the stepped clock below the cap);
 *   nocap  the same without the refresh cap;
 *   off    no leases, no stale values, no XFetch, no jitter.
 * Redis' own PEXPIRE (the hard expiry) runs on real time: a phase must take
 * less real time than one TTL (the run warns otherwise).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "bench.h"
#include "strata/alloc.h"
#include "strata/clock.h"
#include "strata/db.h"
#include "strata/protect.h"
#include "strata/redis.h"
#include "strata/status.h"
#include "strata/tier.h"

#define TIER_BENCH_OPTIONS(X)                                                                 \
    X(redis, STRATA_OPT_STR, "redis://127.0.0.1:6379", 1, 0, NULL, 0,                         \
      "Redis URL (keys st:{tb<pid>...} are written; they expire by themselves)")              \
    X(db_dir, STRATA_OPT_STR, "", 0, 0, NULL, 0,                                              \
      "directory of the SQLite file (removed after the run); empty = /dev/shm or /tmp")       \
    X(keys, STRATA_OPT_INT, "10000", 10, 1000000, NULL, 0, "hot keys")                        \
    X(ttl, STRATA_OPT_DURATION, "20s", 1000, 3600000, NULL, 0, "soft TTL (simulated time)")   \
    X(rate, STRATA_OPT_INT, "20000", 10, 10000000, NULL, 0,                                   \
      "gets per simulated second (uniformly random keys)")                                    \
    X(step, STRATA_OPT_DURATION, "100ms", 1, 10000, NULL, 0, "simulated time per step")       \
    X(jitter, STRATA_OPT_INT, "10", 0, 50, NULL, 0, "TTL jitter (+-%) of modes on and nocap") \
    X(cap, STRATA_OPT_INT, "110", 1, 1000, NULL, 0,                                           \
      "refresh cap of mode on, % of keys / ttl (the tier's default)")                         \
    X(modes, STRATA_OPT_ENUM, "all", 0, 0, "all|on|off|nocap|both", 0,                        \
      "which modes to measure (both = on and off)")                                           \
    X(window, STRATA_OPT_INT, "512", 1, 100000, NULL, 0, "gets in flight at most")

enum { TIER_BENCH_OPTIONS(STRATA_OPT_ENUM_ENTRY) TIER_BENCH__COUNT };
static strata_option opts[] = {TIER_BENCH_OPTIONS(STRATA_OPT_ROW)};

/* mass-phase load accounting (the hook runs on db pool threads) */
typedef struct tb_keys {
    strata_clock *clock;
    int nkeys;
    _Atomic int64_t *last_ms; /* last load's simulated time per key; 0 = none */
    atomic_uint_fast64_t dup; /* loads less than min_gap_ms after the key's previous one */
    int64_t min_gap_ms;
    bool on;
} tb_keys;

static void tb_hook(void *ctx, const void *key, size_t klen) {
    tb_keys *k = ctx;
    if (!k->on || klen < 2 || klen > 20)
        return;
    char buf[24];
    memcpy(buf, key, klen);
    buf[klen] = 0;
    int i = atoi(buf + 1);
    if (i < 0 || i >= k->nkeys)
        return;
    int64_t now = strata_clock_wall_ms(k->clock);
    int64_t prev = atomic_exchange(&k->last_ms[i], now);
    if (prev != 0 && now - prev < k->min_gap_ms)
        atomic_fetch_add(&k->dup, 1);
}

typedef struct tb {
    strata_bench *b;
    tb_keys hk;
    int cap_pct;
    uv_loop_t loop;
    strata_clock *clock;
    strata_redis *redis;
    strata_db *db;
    int keys;
    uint64_t ttl_ms, step_ms, per_step;
    int window;
    int inflight;
    uint64_t done, errors;
    int first_error;
    bool slow_warned;
} tb;

static void get_cb(void *ud, int status, strata_tier_outcome oc, const void *v, size_t len,
                   int64_t ver) {
    (void)oc;
    (void)v;
    (void)len;
    (void)ver;
    tb *s = ud;
    s->inflight--;
    s->done++;
    if (status != STRATA_OK && s->errors++ == 0)
        s->first_error = status;
}

static void issue(tb *s, strata_tier *t, int key) {
    while (s->inflight >= s->window)
        uv_run(&s->loop, UV_RUN_ONCE);
    char k[24];
    int n = snprintf(k, sizeof k, "k%d", key);
    int rc = strata_tier_get(t, k, (size_t)n, get_cb, s);
    if (rc == STRATA_OK) {
        s->inflight++;
    } else if (s->errors++ == 0) {
        s->first_error = rc;
    }
}

/* Runs the loop until every get and every background load/fill is done. */
static void settle(tb *s, strata_tier *t) {
    while (s->inflight > 0 || strata_tier_quiesce(t) > 0)
        uv_run(&s->loop, UV_RUN_ONCE);
}

static uint64_t loads_of(strata_tier *t) {
    strata_tier_stats st;
    strata_tier_get_stats(t, &st);
    return st.db_loads;
}

static int bulk_insert(strata_db *db, const char *ns, int nkeys) {
    strata_db_conn *c = NULL;
    int rc = strata_db_acquire(db, &c);
    if (rc < 0)
        return rc;
    rc = strata_db_begin(c, NULL);
    for (int i = 0; i < nkeys && rc == STRATA_OK; i++) {
        char k[24], v[32];
        snprintf(k, sizeof k, "k%d", i);
        snprintf(v, sizeof v, "value-%d", i);
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

static int make_tier(tb *s, const char *ns, int mode, int jitter, strata_tier **out) {
    bool on = mode != 2;
    int rc = bulk_insert(s->db, ns, s->keys);
    if (rc != STRATA_OK)
        return rc;
    strata_tier_config c;
    strata_tier_config_init(&c);
    c.ns = ns;
    c.redis = s->redis;
    c.db = s->db;
    c.l1 = NULL;
    c.clock = s->clock;
    c.ttl_ms = (uint32_t)s->ttl_ms;
    c.deadline_ms = 10000;
    c.lease_ms = 5000;
    c.bloom = false;
    c.bulkhead = 1024;
    c.breaker.min_calls = UINT32_MAX; /* never opens: it could only refuse loads */
    c.load_hook = tb_hook;
    c.load_hook_ctx = &s->hk;
    if (on) {
        c.stale_ms = (uint32_t)s->ttl_ms; /* the default's ratio: stale = ttl */
        c.jitter_pct = (uint32_t)jitter;
        c.refresh_cap_pct = mode == 0 ? (uint32_t)s->cap_pct : 0;
        c.refresh_cap_burst_ms = (uint32_t)s->step_ms;
    } else {
        c.refresh_cap_pct = 0;
        c.leases = false;
        c.stale_ms = 0;
        c.xfetch_beta = 0;
        c.jitter_pct = 0;
    }
    return strata_tier_create(&c, out);
}

static void destroy_tier(tb *s, strata_tier **t) {
    settle(s, *t);
    strata_tier_destroy(t);
    uv_run(&s->loop, UV_RUN_NOWAIT);
}

/* One simulated step of random gets; returns the loads it caused. */
static uint64_t step(tb *s, strata_tier *t, int max_key) {
    uint64_t before = loads_of(t);
    for (uint64_t i = 0; i < s->per_step; i++)
        issue(s, t, (int)(strata_rand64() % (uint64_t)max_key));
    settle(s, t);
    strata_clock_advance(s->clock, (int64_t)(s->step_ms * STRATA_NS_PER_MS));
    return loads_of(t) - before;
}

static void check_real_time(tb *s, uint64_t phase_t0_ns, const char *phase) {
    uint64_t real_ms = (strata_bench_now_ns() - phase_t0_ns) / 1000000u;
    if (real_ms >= s->ttl_ms && !s->slow_warned) {
        s->slow_warned = true;
        strata_bench_fail(s->b,
                          "phase %s took %llu ms of real time, more than one TTL (%llu ms): "
                          "Redis' real-time hard expiry may have interfered; lower --rate or "
                          "raise --ttl",
                          phase, (unsigned long long)real_ms, (unsigned long long)s->ttl_ms);
    }
}

typedef struct result {
    double steady_rate;   /* loads per simulated second, steady state */
    double mass_peak;     /* busiest simulated second of the mass phase */
    double mass_window;   /* loads / width of the window holding the middle 98 % of them */
    uint64_t mass_loads;  /* loads in the mass phase after the initial fill */
    uint64_t dup;         /* mass phase: loads of a key too soon after its previous one */
    uint64_t unrefreshed; /* mass phase: keys not loaded again after the initial fill */
    uint64_t stale_served, deferred, urgent, cap_per_s, keys_est; /* mass phase, tier stats */
} result;

static const char *const mode_name[3] = {"on", "nocap", "off"};

static int run_mode(tb *s, int mode, int jitter, int idx, result *res) {
    memset(res, 0, sizeof *res);
    bool on = mode != 2;
    const char *mn = mode_name[mode];
    char ns[64];
    uint64_t steps_per_ttl = s->ttl_ms / s->step_ms;
    uint64_t steps_per_sec = 1000 / s->step_ms ? 1000 / s->step_ms : 1;
    strata_tier *t = NULL;

    /* steady: fill spread over one TTL, then count a TTL of loads */
    snprintf(ns, sizeof ns, "tb%ld_%d_steady", (long)getpid(), idx);
    int rc = make_tier(s, ns, mode, jitter, &t);
    if (rc != STRATA_OK)
        return rc;
    uint64_t t0 = strata_bench_now_ns();
    int filled = 0;
    for (uint64_t st = 0; st < steps_per_ttl; st++) {
        int upto = (int)((st + 1) * (uint64_t)s->keys / steps_per_ttl);
        for (; filled < upto; filled++)
            issue(s, t, filled);
        settle(s, t);
        if (filled > 0)
            step(s, t, filled);
        else
            strata_clock_advance(s->clock, (int64_t)(s->step_ms * STRATA_NS_PER_MS));
        strata_bench_progress(s->b, "mode %s steady fill %d/%d", mn, filled, s->keys);
    }
    uint64_t steady = 0;
    for (uint64_t st = 0; st < 2 * steps_per_ttl; st++) {
        steady += step(s, t, s->keys);
        strata_bench_progress(s->b, "mode %s steady %llu/%llu", mn, (unsigned long long)st,
                              (unsigned long long)(2 * steps_per_ttl));
        if (st % steps_per_ttl == 0) {
            check_real_time(s, t0, "steady");
            t0 = strata_bench_now_ns();
        }
    }
    check_real_time(s, t0, "steady");
    res->steady_rate = (double)steady * 1000.0 / (double)(2 * steps_per_ttl * s->step_ms);
    destroy_tier(s, &t);

    /* mass: every key filled in one step, then 2 TTLs of load */
    snprintf(ns, sizeof ns, "tb%ld_%d_mass", (long)getpid(), idx);
    if ((rc = make_tier(s, ns, mode, jitter, &t)) != STRATA_OK)
        return rc;
    t0 = strata_bench_now_ns();
    for (int k = 0; k < s->keys; k++)
        atomic_store(&s->hk.last_ms[k], 0);
    atomic_store(&s->hk.dup, 0);
    s->hk.min_gap_ms = (int64_t)(s->ttl_ms * (uint64_t)(100 - (on ? jitter : 0)) / 100) - 1000;
    s->hk.on = true;
    int64_t fill_ms = strata_clock_wall_ms(s->clock);
    for (int k = 0; k < s->keys; k++)
        issue(s, t, k);
    settle(s, t);
    strata_clock_advance(s->clock, (int64_t)(s->step_ms * STRATA_NS_PER_MS));
    strata_tier_stats st0;
    strata_tier_get_stats(t, &st0);
    uint64_t nsteps = steps_per_ttl * 2;
    uint64_t nsec = nsteps / steps_per_sec + 1;
    uint64_t *per_sec = strata_calloc(nsec, sizeof *per_sec);
    uint64_t *per_step = strata_calloc(nsteps, sizeof *per_step);
    if (!per_sec || !per_step) {
        strata_free(per_sec);
        strata_free(per_step);
        destroy_tier(s, &t);
        return STRATA_ENOMEM;
    }
    for (uint64_t st = 0; st < nsteps; st++) {
        per_step[st] = step(s, t, s->keys);
        per_sec[st / steps_per_sec] += per_step[st];
        res->mass_loads += per_step[st];
        strata_bench_progress(s->b, "mode %s mass %llu/%llu", mn, (unsigned long long)st,
                              (unsigned long long)nsteps);
    }
    check_real_time(s, t0, "mass");
    s->hk.on = false;
    res->dup = atomic_load(&s->hk.dup);
    for (int k = 0; k < s->keys; k++)
        res->unrefreshed += atomic_load(&s->hk.last_ms[k]) <= fill_ms;
    strata_tier_stats st1;
    strata_tier_get_stats(t, &st1);
    res->stale_served = st1.stale_served - st0.stale_served;
    res->deferred = st1.refresh_deferred - st0.refresh_deferred;
    res->urgent = st1.refresh_urgent - st0.refresh_urgent;
    res->cap_per_s = st1.refresh_cap_per_s;
    res->keys_est = st1.refresh_keys;
    for (uint64_t i = 0; i < nsteps / steps_per_sec; i++) /* whole seconds only */
        if ((double)per_sec[i] > res->mass_peak)
            res->mass_peak = (double)per_sec[i];
    /* the window holding the middle 98 % of the phase's loads */
    uint64_t lo = 0, hi = nsteps, acc = 0, cut = res->mass_loads / 100;
    for (uint64_t i = 0; i < nsteps; i++) {
        acc += per_step[i];
        if (acc > cut) {
            lo = i;
            break;
        }
    }
    acc = 0;
    for (uint64_t i = nsteps; i-- > 0;) {
        acc += per_step[i];
        if (acc > cut) {
            hi = i + 1;
            break;
        }
    }
    uint64_t width_ms = (hi > lo ? hi - lo : 1) * s->step_ms;
    res->mass_window = (double)res->mass_loads * 0.98 * 1000.0 / (double)width_ms;
    strata_free(per_sec);
    strata_free(per_step);
    destroy_tier(s, &t);
    return STRATA_OK;
}

static int run(strata_bench *b) {
    tb s;
    memset(&s, 0, sizeof s);
    s.b = b;
    s.keys = (int)strata_bench_opt_int(b, "keys");
    s.ttl_ms = (uint64_t)strata_bench_opt_int(b, "ttl");
    s.step_ms = (uint64_t)strata_bench_opt_int(b, "step");
    s.window = (int)strata_bench_opt_int(b, "window");
    int64_t rate = strata_bench_opt_int(b, "rate");
    int jitter = (int)strata_bench_opt_int(b, "jitter");
    int modes = (int)strata_bench_opt_int(b, "modes");
    if (s.step_ms > 1000 || s.ttl_ms < 10 * s.step_ms) {
        strata_bench_fail(b, "--step must be <= 1s and at most a tenth of --ttl");
        return STRATA_EINVAL;
    }
    s.per_step = (uint64_t)rate * s.step_ms / 1000;
    if (s.per_step == 0)
        s.per_step = 1;

    const char *dir = strata_bench_opt_str(b, "db_dir");
    struct stat sb;
    if (!dir || !*dir)
        dir = stat("/dev/shm", &sb) == 0 ? "/dev/shm" : "/tmp";
    char path[512], url[600];
    snprintf(path, sizeof path, "%s/strata-tier-bench-%ld.db", dir, (long)getpid());
    snprintf(url, sizeof url, "sqlite://%s", path);

    uv_loop_init(&s.loop);
    s.clock = strata_clock_create_manual(1000000000ull, 1700000000000LL);
    s.cap_pct = (int)strata_bench_opt_int(b, "cap");
    s.hk.clock = s.clock;
    s.hk.nkeys = s.keys;
    s.hk.last_ms = strata_calloc((size_t)s.keys, sizeof *s.hk.last_ms);
    strata_buf err = STRATA_BUF_INIT;
    strata_redis_options ro;
    strata_redis_options_init(&ro);
    ro.command_timeout_ms = 10000;
    strata_db_config dc;
    strata_db_config_default(&dc);
    dc.pool_size = 4;
    dc.clock = s.clock;
    int rc = s.clock && s.hk.last_ms ? STRATA_OK : STRATA_ENOMEM;
    if (rc == STRATA_OK)
        rc = strata_redis_create(&s.redis, &s.loop, strata_bench_opt_str(b, "redis"), &ro, &err);
    if (rc == STRATA_OK)
        rc = strata_db_open_config(&s.db, url, &dc, &err);
    if (rc != STRATA_OK) {
        strata_bench_fail(b, "setup: %s", err.data ? err.data : strata_strerror(rc));
        goto out;
    }

    strata_bench_table_header(
        b, "mode|jitter %|steady loads/s|mass peak loads/s (1 s)|peak / steady|"
           "loads per key (mass)|duplicate loads|keys not refreshed|stale served|"
           "refreshes deferred|urgent|cap loads/s (keys est.)");
    result res[3];
    int idx = 0;
    /* modes option: all|on|off|nocap|both */
    static const bool sel[5][3] = {{true, true, true},
                                   {true, false, false},
                                   {false, false, true},
                                   {false, true, false},
                                   {true, false, true}};
    for (int m = 0; m < 3 && rc == STRATA_OK; m++) {
        if (modes < 0 || modes > 4 || !sel[modes][m])
            continue;
        bool on = m != 2;
        rc = run_mode(&s, m, on ? jitter : 0, idx++, &res[m]);
        if (rc != STRATA_OK) {
            strata_bench_fail(b, "mode %s: %s", mode_name[m], strata_strerror(rc));
            break;
        }
        double ratio = res[m].steady_rate > 0 ? res[m].mass_peak / res[m].steady_rate : 0;
        char capcol[64] = "-";
        if (m == 0)
            snprintf(capcol, sizeof capcol, "%llu (%llu)", (unsigned long long)res[m].cap_per_s,
                     (unsigned long long)res[m].keys_est);
        strata_bench_table_row(
            b, "%s|%d|%.0f|%.0f|%.2f|%.3f|%llu|%llu|%llu|%llu|%llu|%s", mode_name[m],
            on ? jitter : 0, res[m].steady_rate, res[m].mass_peak, ratio,
            (double)res[m].mass_loads / (double)s.keys, (unsigned long long)res[m].dup,
            (unsigned long long)res[m].unrefreshed, (unsigned long long)res[m].stale_served,
            (unsigned long long)res[m].deferred, (unsigned long long)res[m].urgent, capcol);
        const char *p = mode_name[m];
        char key[64];
        snprintf(key, sizeof key, "%s_steady_loads_per_s", p);
        strata_bench_kv(b, key, "%.1f", res[m].steady_rate);
        snprintf(key, sizeof key, "%s_mass_peak_loads_per_s", p);
        strata_bench_kv(b, key, "%.1f", res[m].mass_peak);
        snprintf(key, sizeof key, "%s_mass_window_loads_per_s", p);
        strata_bench_kv(b, key, "%.1f", res[m].mass_window);
        snprintf(key, sizeof key, "%s_mass_loads_per_key", p);
        strata_bench_kv(b, key, "%.3f", (double)res[m].mass_loads / (double)s.keys);
        snprintf(key, sizeof key, "%s_ratio_peak_to_steady", p);
        strata_bench_kv(b, key, "%.3f", ratio);
        snprintf(key, sizeof key, "%s_mass_duplicate_loads", p);
        strata_bench_kv(b, key, "%llu", (unsigned long long)res[m].dup);
        snprintf(key, sizeof key, "%s_mass_keys_not_refreshed", p);
        strata_bench_kv(b, key, "%llu", (unsigned long long)res[m].unrefreshed);
        snprintf(key, sizeof key, "%s_mass_stale_served", p);
        strata_bench_kv(b, key, "%llu", (unsigned long long)res[m].stale_served);
        snprintf(key, sizeof key, "%s_mass_refreshes_deferred", p);
        strata_bench_kv(b, key, "%llu", (unsigned long long)res[m].deferred);
    }
    strata_bench_kv(b, "keys", "%d", s.keys);
    strata_bench_kv(b, "ttl_ms", "%llu", (unsigned long long)s.ttl_ms);
    strata_bench_kv(b, "gets_per_sim_s", "%lld", (long long)rate);
    strata_bench_kv(b, "gets", "%llu", (unsigned long long)s.done);
    strata_bench_kv(b, "errors", "%llu", (unsigned long long)s.errors);
    if (s.errors)
        strata_bench_fail(b, "%llu gets failed (first: %s)", (unsigned long long)s.errors,
                          strata_status_name(s.first_error));
out:
    strata_redis_destroy(&s.redis);
    uv_run(&s.loop, UV_RUN_DEFAULT);
    uv_loop_close(&s.loop);
    strata_db_close(&s.db);
    strata_clock_destroy(&s.clock);
    strata_free((void *)s.hk.last_ms);
    strata_buf_free(&err);
    unlink(path);
    char side[600];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    return rc;
}

const strata_bench_backend strata_bench_tier = {
    "tier",
    "database load rate of the tiered path during a mass expiry of hot keys vs steady state "
    "(manual clock; protections on with the refresh cap, on without it, off)",
    opts,
    TIER_BENCH__COUNT,
    run,
};
