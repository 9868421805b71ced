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
 *           Redis, a deploy); then the loads are counted for 1.6 TTL, which
 *           covers the first expiry of every key for any jitter <= 50 %.  The
 *           figure is the busiest simulated second of that phase.
 * ratio = mass peak / steady rate.  Modes:
 *   on   the defaults of strata_tier_config (leases, SWR with stale = ttl/2,
 *        XFetch beta 1, TTL jitter --jitter %), breaker off (it would only
 *        refuse loads), bulkhead 1024;
 *   off  no leases, no stale values, no XFetch, no jitter.
 * Redis' own PEXPIRE (the hard expiry) runs on real time: a phase must take
 * less real time than one TTL (the run warns otherwise).
 */
#include <math.h>
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
    X(jitter, STRATA_OPT_INT, "10", 0, 50, NULL, 0, "TTL jitter (+-%) of mode on")            \
    X(modes, STRATA_OPT_ENUM, "both", 0, 0, "both|on|off", 0, "which protections to measure") \
    X(window, STRATA_OPT_INT, "512", 1, 100000, NULL, 0, "gets in flight at most")

enum { TIER_BENCH_OPTIONS(STRATA_OPT_ENUM_ENTRY) TIER_BENCH__COUNT };
static strata_option opts[] = {TIER_BENCH_OPTIONS(STRATA_OPT_ROW)};

typedef struct tb {
    strata_bench *b;
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

static int make_tier(tb *s, const char *ns, bool on, int jitter, strata_tier **out) {
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
    if (on) {
        c.stale_ms = (uint32_t)(s->ttl_ms / 2);
        c.jitter_pct = (uint32_t)jitter;
    } else {
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
    double steady_rate;  /* loads per simulated second, steady state */
    double mass_peak;    /* busiest simulated second of the mass phase */
    double mass_window;  /* loads / width of the window holding the middle 98 % of them */
    uint64_t mass_loads; /* loads in the mass phase after the initial fill */
} result;

static int run_mode(tb *s, bool on, int jitter, int idx, result *res) {
    memset(res, 0, sizeof *res);
    char ns[64];
    uint64_t steps_per_ttl = s->ttl_ms / s->step_ms;
    uint64_t steps_per_sec = 1000 / s->step_ms ? 1000 / s->step_ms : 1;
    strata_tier *t = NULL;

    /* steady: fill spread over one TTL, then count a TTL of loads */
    snprintf(ns, sizeof ns, "tb%ld_%d_steady", (long)getpid(), idx);
    int rc = make_tier(s, ns, on, jitter, &t);
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
        strata_bench_progress(s->b, "mode %s steady fill %d/%d", on ? "on" : "off", filled,
                              s->keys);
    }
    uint64_t steady = 0;
    for (uint64_t st = 0; st < 2 * steps_per_ttl; st++) {
        steady += step(s, t, s->keys);
        strata_bench_progress(s->b, "mode %s steady %llu/%llu", on ? "on" : "off",
                              (unsigned long long)st, (unsigned long long)(2 * steps_per_ttl));
        if (st % steps_per_ttl == 0) {
            check_real_time(s, t0, "steady");
            t0 = strata_bench_now_ns();
        }
    }
    check_real_time(s, t0, "steady");
    res->steady_rate = (double)steady * 1000.0 / (double)(2 * steps_per_ttl * s->step_ms);
    destroy_tier(s, &t);

    /* mass: every key filled in one step, then 1.6 TTL of load */
    snprintf(ns, sizeof ns, "tb%ld_%d_mass", (long)getpid(), idx);
    if ((rc = make_tier(s, ns, on, jitter, &t)) != STRATA_OK)
        return rc;
    t0 = strata_bench_now_ns();
    for (int k = 0; k < s->keys; k++)
        issue(s, t, k);
    settle(s, t);
    strata_clock_advance(s->clock, (int64_t)(s->step_ms * STRATA_NS_PER_MS));
    uint64_t nsteps = steps_per_ttl * 16 / 10;
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
        strata_bench_progress(s->b, "mode %s mass %llu/%llu", on ? "on" : "off",
                              (unsigned long long)st, (unsigned long long)nsteps);
    }
    check_real_time(s, t0, "mass");
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
    strata_buf err = STRATA_BUF_INIT;
    strata_redis_options ro;
    strata_redis_options_init(&ro);
    ro.command_timeout_ms = 10000;
    strata_db_config dc;
    strata_db_config_default(&dc);
    dc.pool_size = 4;
    dc.clock = s.clock;
    int rc = s.clock ? STRATA_OK : STRATA_ENOMEM;
    if (rc == STRATA_OK)
        rc = strata_redis_create(&s.redis, &s.loop, strata_bench_opt_str(b, "redis"), &ro, &err);
    if (rc == STRATA_OK)
        rc = strata_db_open_config(&s.db, url, &dc, &err);
    if (rc != STRATA_OK) {
        strata_bench_fail(b, "setup: %s", err.data ? err.data : strata_strerror(rc));
        goto out;
    }

    strata_bench_table_header(
        b, "mode|jitter %|steady loads/s|mass peak loads/s (1 s)|mass window loads/s|"
           "peak / steady|loads per key (mass)");
    result res[2];
    int idx = 0;
    for (int m = 0; m < 2 && rc == STRATA_OK; m++) {
        bool on = m == 0;
        if ((modes == 1 && !on) || (modes == 2 && on))
            continue;
        rc = run_mode(&s, on, on ? jitter : 0, idx++, &res[m]);
        if (rc != STRATA_OK) {
            strata_bench_fail(b, "mode %s: %s", on ? "on" : "off", strata_strerror(rc));
            break;
        }
        double ratio = res[m].steady_rate > 0 ? res[m].mass_peak / res[m].steady_rate : 0;
        strata_bench_table_row(b, "%s|%d|%.0f|%.0f|%.0f|%.2f|%.2f", on ? "on" : "off",
                               on ? jitter : 0, res[m].steady_rate, res[m].mass_peak,
                               res[m].mass_window, ratio,
                               (double)res[m].mass_loads / (double)s.keys);
        const char *p = on ? "on" : "off";
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
    "(manual clock; protections on and off)",
    opts,
    TIER_BENCH__COUNT,
    run,
};
