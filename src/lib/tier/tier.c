/*
 * tier.c: the tiered read path L1 -> Redis -> database and the cache-aside
 * writes (strata/tier.h).
 *
 * Stampedes, avalanches and penetration, and what answers each:
 *
 * A stampede is many readers missing one key at once.  Inside a process the
 * L1's singleflight (strata_l1_get_or_load) collapses them into one load.
 * Across processes the load asks Redis first, in one script (tier_get.lua)
 * that either answers with the value or hands out a LEASE, as memcache does
 * at Facebook (Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013,
 * section 3.2.1): a token per key valid for lease_ms.  Only the holder reads
 * the database and fills; everybody else is told "wait" and re-reads with a
 * doubling delay (wait_min_ms .. wait_max_ms) until the fill lands, a stale
 * value is there, the lease expires (then a waiter takes it over: a crashed
 * holder cannot block the key for longer than a lease) or its deadline passes
 * (STRATA_ERETRY, HTTP 503).  The holder extends its lease every lease_ms/3
 * while its database read runs, so a slow database does not hand the key to
 * a second loader.
 *
 * Fills are compare-and-set (tier_fill.lua): refused when the token is no
 * longer the lease (the outbox relay deleted the key and its lease after a
 * write) or when Redis knows a newer version (the relay records the written
 * version as `minver`).  So a reader that loaded version 4 just before a
 * write of version 5 can never put 4 back once 5's invalidation ran, whatever
 * the interleaving; the L1 side is covered by the L1's rule that an
 * invalidation wins over any in-flight load.
 *
 * An avalanche is many keys expiring together.  Every TTL gets +-jitter_pct;
 * each Redis value carries a soft expiry, its compute time (delta) and a hard
 * expiry stale_ms later.  Past the soft expiry the value is served stale
 * while one lease holder refreshes it (stale-while-revalidate), and before
 * it, XFetch (Vattani et al., VLDB 2015) lets one reader refresh early with a
 * probability that grows as expiry nears: now + delta * beta * -ln(u) >= soft.
 * If the database fails, the stale value is served (stale-if-error).  Jitter
 * alone still lets a synchronised expiry reach the database at ~1/(2*jitter)
 * times its steady rate, so refreshes (not misses) also pass a rate cap shared
 * by all servers in Redis, at 1.1x keys / ttl (the refresh cap, below).
 *
 * Penetration is reads of keys that do not exist.  "Not found" is cached as
 * a negative entry with its own short TTL (in Redis and in the L1), and a
 * Bloom filter of existing keys answers "certainly absent" from a local copy
 * of the bitmap kept in Redis (refreshed every bloom_refresh_ms), without
 * touching Redis or the database.
 *
 * The database sits behind a circuit breaker and a bulkhead: while the
 * breaker is open (or the bulkhead full) the holder serves the stale value
 * if one is kept and fails fast otherwise (STRATA_EBREAKER /
 * STRATA_EBACKPRESSURE), releasing its lease so waiters do not wait for it.
 *
 * L1 values are [version: 8 bytes LE][outcome: 1 byte][value].  Everything
 * here runs on the tier's loop; L1 completions from other threads and
 * immediate answers reach callers through one uv_async queue, so a callback
 * never runs inside strata_tier_get.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/status.h"
#include "tier_internal.h"

#define L1_HDR 9

typedef struct tier_req tier_req;
typedef struct tier_load tier_load;

struct tier_req {
    strata_tier *t;
    strata_tier_get_cb cb;
    void *ud;
    /* result */
    int status;
    strata_tier_outcome outcome;
    char *val;
    size_t len;
    int64_t ver;
    tier_req *next;
};

struct strata_tier {
    strata_tier_config cfg;
    char *ns, *name, *prefix;
    uv_loop_t *loop;
    strata_redis *redis;
    strata_db *db;
    strata_l1 *l1;
    strata_clock *clock;
    strata_breaker *breaker;
    strata_bulkhead *bulk;
    strata_bloom *bloom;
    bool bloom_ready;
    bool bloom_fetching;
    char *bloom_key, *bloom_pending;
    uv_timer_t bloom_timer;
    uv_async_t async;
    int handles_open;
    bool closing;

    pthread_mutex_t qmu;
    tier_req *qhead, *qtail;

    atomic_uint_fast64_t gets, l1_hits, redis_hits, stale_served, negative_hits, bloom_absent;
    atomic_uint_fast64_t db_loads, fills, fills_refused, lease_grants, lease_waits, lease_timeouts,
        early_refreshes, breaker_rejects, bulkhead_rejects, errors;
    atomic_int_fast64_t waiting, inflight, loads_inflight;
    strata_counter *m_gets, *m_db_loads, *m_stale, *m_lease_waits, *m_lease_timeouts,
        *m_fills_refused, *m_bloom_absent;

    /* refresh cap (D-T11) */
    char *rl_key;            /* st:rl:{NS} */
    uint64_t seen_window_ms; /* population window: ttl*(1+jitter) + stale */
    uint64_t seen_epoch_ms;  /* one HyperLogLog per window/4 */
    uint64_t seen_expire_ms; /* PEXPIRE of the HLLs and the limiter (real time) */
    int64_t deny_until_ms;   /* refused until then (tier clock): no need to ask */
    atomic_uint_fast64_t refresh_admitted, refresh_deferred, refresh_urgent, refresh_cap_milli,
        refresh_keys;
    strata_counter *m_refresh_deferred, *m_refresh_urgent;
};

/* One Redis -> database load of a key (for the L1's loader or a get without L1). */
struct tier_load {
    strata_tier *t;
    strata_l1_load *ld; /* completion of an L1 load, or NULL */
    tier_req *req;      /* get without L1, or NULL */
    char *key;          /* user key */
    size_t klen;
    char *hkey; /* Redis/L1 key */
    size_t hklen;
    char token[17];
    bool answered;
    bool holder;  /* holds the lease */
    bool no_fill; /* Redis failed: load without filling */
    bool waiting; /* counted in t->waiting */
    uint64_t deadline_ms;
    uint32_t backoff_ms;
    uv_timer_t timer;
    bool timer_on;
    bool timer_init; /* the timer exists only once a lease wait or extension needs it */
    bool db_running;
    /* stale value kept for SWR / stale-if-error */
    bool has_stale;
    bool stale_neg;
    char *stale;
    size_t stale_len;
    int64_t stale_ver;
    /* database result */
    strata_buf dbval;
    int64_t dbver;
    int dbstatus;
    uint64_t db_t0_ns;
    int pending_ops; /* redis calls in flight that reference this load */
    /* refresh cap: the XFetch draw of the HMGET step (reused by the script step), and
     * whether the script may hand out a refresh lease */
    double xf;
    bool xf_set;
    bool may_refresh;
    int64_t soft;
};

/* Deadlines are real time (a manual test clock must not make a waiter wait forever);
 * TTL and lease decisions use the tier's clock. */
static uint64_t mono_ms(const strata_tier *t) {
    (void)t;
    return uv_hrtime() / 1000000u;
}
static int64_t wall_ms(const strata_tier *t) { return strata_clock_wall_ms(t->clock); }

void strata_tier_config_init(strata_tier_config *c) {
    memset(c, 0, sizeof *c);
    c->ns = "default";
    c->ttl_ms = 60000;
    c->stale_ms = 60000;
    c->l1_ttl_ms = 5000;
    c->negative_ttl_ms = 2000;
    c->jitter_pct = 10;
    c->xfetch_beta = 1.0;
    c->lease_ms = 2000;
    c->deadline_ms = 1000;
    c->wait_min_ms = 2;
    c->wait_max_ms = 50;
    c->leases = true;
    c->bloom = true;
    c->bloom_expected = 100000;
    c->bloom_fp = 0.01;
    c->bloom_refresh_ms = 1000;
    c->bulkhead = 16;
    strata_breaker_config_default(&c->breaker);
    c->refresh_cap_pct = 110;
    c->refresh_cap_floor = 10;
    c->refresh_cap_burst_ms = 20;
}

static void inc(atomic_uint_fast64_t *a, strata_counter *c) {
    atomic_fetch_add_explicit(a, 1, memory_order_relaxed);
    if (c)
        strata_counter_inc(c);
}

/* ---- completion queue ------------------------------------------------------------ */

static void deliver(tier_req *r) {
    strata_tier *t = r->t;
    pthread_mutex_lock(&t->qmu);
    r->next = NULL;
    if (t->qtail)
        t->qtail->next = r;
    else
        t->qhead = r;
    t->qtail = r;
    pthread_mutex_unlock(&t->qmu);
    uv_async_send(&t->async);
}

static void req_result(tier_req *r, int status, strata_tier_outcome oc, const void *v, size_t len,
                       int64_t ver) {
    r->status = status;
    r->outcome = oc;
    r->ver = ver;
    r->len = 0;
    r->val = NULL;
    if (status == STRATA_OK && len > 0) {
        r->val = strata_malloc(len);
        if (!r->val)
            r->status = STRATA_ENOMEM;
        else {
            memcpy(r->val, v, len);
            r->len = len;
        }
    }
}

static void async_cb(uv_async_t *h) {
    strata_tier *t = h->data;
    pthread_mutex_lock(&t->qmu);
    tier_req *r = t->qhead;
    t->qhead = t->qtail = NULL;
    pthread_mutex_unlock(&t->qmu);
    while (r) {
        tier_req *next = r->next;
        atomic_fetch_sub(&t->inflight, 1);
        r->cb(r->ud, r->status, r->outcome, r->val ? r->val : "", r->len, r->ver);
        strata_free(r->val);
        strata_free(r);
        r = next;
    }
}

/* ---- L1 value encoding -------------------------------------------------------------- */

static void put_i64(unsigned char *p, int64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)((uint64_t)v >> (8 * i));
}
static int64_t get_i64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return (int64_t)v;
}

/* ---- answering -------------------------------------------------------------------------- */

/*
 * Gives the load's answer to its caller(s) once: the L1 (which stores it and
 * wakes its waiters) or the one request.  l1_ttl_ms 0 = the config's.
 */
static void answer(tier_load *l, int status, strata_tier_outcome oc, const void *v, size_t len,
                   int64_t ver, uint64_t l1_ttl_ms) {
    if (l->answered)
        return;
    l->answered = true;
    strata_tier *t = l->t;
    if (oc == STRATA_TIER_STALE && (status == STRATA_OK || status == STRATA_ENOTFOUND))
        inc(&t->stale_served, t->m_stale);
    if (l->ld) {
        strata_l1_set_opts o;
        memset(&o, 0, sizeof o);
        o.ttl_ns = (l1_ttl_ms ? l1_ttl_ms : t->cfg.l1_ttl_ms) * STRATA_NS_PER_MS;
        o.jitter = 1;
        if (status == STRATA_OK) {
            unsigned char *buf = strata_malloc(L1_HDR + len);
            if (!buf) {
                strata_l1_load_complete(l->ld, STRATA_ENOMEM, NULL, 0, NULL);
            } else {
                put_i64(buf, ver);
                buf[8] = (unsigned char)oc;
                if (len)
                    memcpy(buf + L1_HDR, v, len);
                strata_l1_load_complete(l->ld, STRATA_OK, buf, L1_HDR + len, &o);
                strata_free(buf);
            }
        } else {
            strata_l1_load_complete(l->ld, status, NULL, 0, NULL);
        }
        l->ld = NULL;
    } else if (l->req) {
        req_result(l->req, status, oc, v, len, ver);
        deliver(l->req);
        l->req = NULL;
    }
}

static void answer_stale_or(tier_load *l, int status) {
    if (l->has_stale)
        answer(l, l->stale_neg ? STRATA_ENOTFOUND : STRATA_OK, STRATA_TIER_STALE, l->stale,
               l->stale_len, l->stale_ver, 500);
    else
        answer(l, status, STRATA_TIER_LOADED, NULL, 0, 0, 0);
}

/* ---- load lifetime ------------------------------------------------------------------------- */

static void load_free(tier_load *l) {
    strata_tier *t = l->t;
    strata_free(l->key);
    strata_free(l->hkey);
    strata_free(l->stale);
    strata_buf_free(&l->dbval);
    strata_free(l);
    atomic_fetch_sub(&t->loads_inflight, 1);
}

static void load_free_cb(uv_handle_t *h) { load_free(h->data); }

/* Starts the load's timer, creating it on first use (most loads, a Redis hit, never need it). */
static void load_timer_start(tier_load *l, uv_timer_cb cb, uint64_t ms) {
    if (!l->timer_init) {
        uv_timer_init(l->t->loop, &l->timer);
        l->timer.data = l;
        l->timer_init = true;
    }
    uv_timer_start(&l->timer, cb, ms, 0);
}

/* Frees the load once nothing refers to it any more. */
static void load_maybe_free(tier_load *l) {
    if (l->pending_ops > 0 || l->db_running)
        return;
    if (!l->answered)
        answer(l, STRATA_EINTERNAL, STRATA_TIER_LOADED, NULL, 0, 0, 0);
    if (l->waiting) {
        l->waiting = false;
        atomic_fetch_sub(&l->t->waiting, 1);
    }
    if (!l->timer_init) {
        load_free(l); /* every caller returns right after */
        return;
    }
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, load_free_cb);
}

static void start_redis(tier_load *l);
static void start_db(tier_load *l);

static void lease_op(tier_load *l, const char *op);

/* ---- Redis step ------------------------------------------------------------------------ */

static void keep_stale(tier_load *l, const strata_redis_reply *v, const strata_redis_reply *ver,
                       bool neg) {
    strata_free(l->stale);
    l->stale = NULL;
    l->stale_len = 0;
    if (v->len) {
        l->stale = strata_malloc(v->len);
        if (!l->stale)
            return;
        memcpy(l->stale, v->str, v->len);
        l->stale_len = v->len;
    }
    l->has_stale = true;
    l->stale_neg = neg;
    l->stale_ver = strtoll(ver->str, NULL, 10);
}

/* A Redis reply for l arrived: one operation fewer in flight.  Returns true
 * (and frees l when nothing else holds it) when the tier is closing, so the
 * reply is not acted on. */
static bool reply_while_closing(tier_load *l) {
    l->pending_ops--;
    if (!l->t->closing)
        return false;
    load_maybe_free(l);
    return true;
}

/* Answers a fresh Redis hit (a cached value, or a cached absence when neg);
 * the L1 keeps the value for l1_ttl_ms, at most until the soft expiry `left`
 * ms away (at least 1 ms). */
static void answer_redis_hit(tier_load *l, bool neg, const char *val, size_t len, int64_t version,
                             int64_t left) {
    if (neg) {
        answer(l, STRATA_ENOTFOUND, STRATA_TIER_HIT_REDIS, NULL, 0, version, 0);
        return;
    }
    uint64_t l1ttl = l->t->cfg.l1_ttl_ms;
    if (left > 0 && (uint64_t)left < l1ttl)
        l1ttl = (uint64_t)left;
    answer(l, STRATA_OK, STRATA_TIER_HIT_REDIS, val, len, version, l1ttl ? l1ttl : 1);
}

static void wait_timer_cb(uv_timer_t *h) {
    tier_load *l = h->data;
    l->timer_on = false;
    start_redis(l);
}

static void get_done(void *ud, int status, const strata_redis_reply *r) {
    tier_load *l = ud;
    strata_tier *t = l->t;
    if (reply_while_closing(l))
        return;
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements != 5 ||
        r->element[0]->type != STRATA_REPLY_STRING || r->element[1]->type != STRATA_REPLY_STRING ||
        r->element[2]->type != STRATA_REPLY_STRING) {
        /* Redis is failing: read the database directly (still behind the
         * breaker and the bulkhead; the L1 singleflight still holds), no fill. */
        inc(&t->errors, NULL);
        l->no_fill = true;
        start_db(l);
        return;
    }
    const char *st = r->element[0]->str;
    const strata_redis_reply *v = r->element[1], *ver = r->element[2];
    bool neg = r->element[3]->type == STRATA_REPLY_INTEGER && r->element[3]->integer == 1;
    int64_t soft = r->element[4]->type == STRATA_REPLY_INTEGER ? r->element[4]->integer : 0;
    int64_t version = strtoll(ver->str, NULL, 10);
    if (l->waiting && strcmp(st, "wait") != 0) {
        l->waiting = false;
        atomic_fetch_sub(&t->waiting, 1);
    }
    if (strcmp(st, "hit") == 0 || strcmp(st, "refresh") == 0) {
        inc(&t->redis_hits, NULL);
        if (neg)
            inc(&t->negative_hits, NULL);
        answer_redis_hit(l, neg, v->str, v->len, version, soft - wall_ms(t));
        if (strcmp(st, "refresh") == 0) {
            inc(&t->early_refreshes, NULL);
            inc(&t->lease_grants, NULL);
            l->holder = true;
            keep_stale(l, v, ver, neg);
            start_db(l);
            return;
        }
        load_maybe_free(l);
        return;
    }
    if (strcmp(st, "stale") == 0 || strcmp(st, "stale_lease") == 0) {
        keep_stale(l, v, ver, neg);
        answer_stale_or(l, STRATA_OK);
        if (strcmp(st, "stale_lease") == 0) {
            inc(&t->lease_grants, NULL);
            l->holder = true;
            start_db(l);
            return;
        }
        load_maybe_free(l);
        return;
    }
    if (strcmp(st, "lease") == 0 || strcmp(st, "miss") == 0) {
        if (st[0] == 'l') {
            inc(&t->lease_grants, NULL);
            l->holder = true;
        }
        start_db(l);
        return;
    }
    /* wait: somebody else loads; re-read with backoff until the deadline. */
    uint64_t now = mono_ms(t);
    if (!l->waiting) {
        l->waiting = true;
        atomic_fetch_add(&t->waiting, 1);
        inc(&t->lease_waits, t->m_lease_waits);
    }
    if (now >= l->deadline_ms) {
        inc(&t->lease_timeouts, t->m_lease_timeouts);
        answer(l, STRATA_ERETRY, STRATA_TIER_LOADED, NULL, 0, 0, 0);
        load_maybe_free(l);
        return;
    }
    uint32_t d = l->backoff_ms ? l->backoff_ms * 2 : t->cfg.wait_min_ms;
    if (d > t->cfg.wait_max_ms)
        d = t->cfg.wait_max_ms;
    if (d == 0)
        d = 1;
    l->backoff_ms = d;
    /* +-25% so that waiters of one key do not re-read in lockstep */
    uint64_t jd = strata_ttl_jitter(d, 25, strata_rand64());
    if (now + jd > l->deadline_ms)
        jd = l->deadline_ms - now;
    l->timer_on = true;
    load_timer_start(l, wait_timer_cb, jd);
}

static void start_script(tier_load *l);

static double xfetch_draw(const strata_tier *t) {
    if (t->cfg.xfetch_beta <= 0)
        return 0;
    double u = (double)((strata_rand64() >> 11) + 1) * (1.0 / 9007199254740992.0);
    return t->cfg.xfetch_beta * -log(u);
}

/* ---- refresh cap (D-T11) ----------------------------------------------------------------
 *
 * A refresh load is one whose reader already has a value to serve: XFetch chose it to
 * refresh a fresh value early, or the value is past its soft TTL (SWR).  Jitter spreads
 * a synchronised expiry of N keys over 2 * jitter * ttl only, so without a cap the
 * database sees about 1 / (2 * jitter) times its steady rate N / ttl (5x at the default
 * 10 %).  Refreshes can wait (their readers are served), misses cannot; so refreshes,
 * and only they, pass a GCRA in Redis shared by every tier of the namespace (so the cap
 * does not multiply with the number of servers), whose rate is pct % of N / ttl with N
 * counted by a HyperLogLog of the keys filled in the last ttl * (1 + jitter) + stale
 * (every value Redis still holds was filled in that window): it follows the population
 * without tuning.  A refused refresh takes no lease; its reader gets the value; the next
 * reader asks again (this tier does not ask Redis again before the GCRA's retry time).
 * A refresh in the last eighth of the stale window is admitted whatever the budget (and
 * charged, so the long-run rate holds): the cap never turns a servable key into a miss
 * while it could still refresh it.  A mass expiry drains in ttl / (pct / 100), before
 * the hard expiries when stale_ms >= ttl_ms.  Fail-open: a cap script error admits.
 */
static bool cap_on(const strata_tier *t) {
    return t->cfg.refresh_cap_pct > 0 && t->cfg.leases && t->rl_key;
}

/* Answers a get whose refresh was refused: the value it read, fresh or stale. */
static void defer_refresh(tier_load *l, int64_t now) {
    strata_tier *t = l->t;
    inc(&t->refresh_deferred, t->m_refresh_deferred);
    if (now < l->soft) {
        inc(&t->redis_hits, NULL);
        answer_redis_hit(l, l->stale_neg, l->stale, l->stale_len, l->stale_ver, l->soft - now);
    } else {
        answer_stale_or(l, STRATA_OK);
    }
    load_maybe_free(l);
}

static void cap_done(void *ud, int status, const strata_redis_reply *r) {
    tier_load *l = ud;
    strata_tier *t = l->t;
    if (reply_while_closing(l))
        return;
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements != 4 ||
        r->element[0]->type != STRATA_REPLY_INTEGER ||
        r->element[1]->type != STRATA_REPLY_INTEGER ||
        r->element[2]->type != STRATA_REPLY_INTEGER ||
        r->element[3]->type != STRATA_REPLY_INTEGER) {
        inc(&t->errors, NULL);
        l->may_refresh = true; /* fail open: the tier without the cap */
        start_script(l);
        return;
    }
    atomic_store(&t->refresh_cap_milli, (uint_fast64_t)r->element[2]->integer);
    atomic_store(&t->refresh_keys, (uint_fast64_t)r->element[3]->integer);
    if (r->element[0]->integer == 1) {
        inc(&t->refresh_admitted, NULL);
        l->may_refresh = true;
        start_script(l);
        return;
    }
    int64_t now = wall_ms(t);
    t->deny_until_ms = now + (r->element[1]->integer > 0 ? r->element[1]->integer : 1);
    defer_refresh(l, now);
}

static void ask_cap(tier_load *l, int64_t now, bool urgent) {
    strata_tier *t = l->t;
    const strata_redis_script *s = tier__lib_script(TIER_SCRIPT_REFRESH);
    enum { EPOCHS = 5 };
    char hk[EPOCHS][STRATA_DB_NS_MAX + 48];
    const char *keys[1 + EPOCHS];
    size_t kl[1 + EPOCHS];
    keys[0] = t->rl_key;
    kl[0] = strlen(t->rl_key);
    int nk = 1;
    int64_t cur = now / (int64_t)t->seen_epoch_ms;
    for (int i = 0; i < EPOCHS && cur - i >= 0; i++, nk++) {
        int n = snprintf(hk[i], sizeof hk[i], "st:hll:{%s}:%lld", t->ns, (long long)(cur - i));
        keys[nk] = hk[i];
        kl[nk] = (size_t)n;
    }
    char a_now[24], a_ttl[16], a_pct[16], a_floor[16], a_tau[24], a_exp[24];
    snprintf(a_now, sizeof a_now, "%lld", (long long)now);
    snprintf(a_ttl, sizeof a_ttl, "%u", t->cfg.ttl_ms ? t->cfg.ttl_ms : 1);
    snprintf(a_pct, sizeof a_pct, "%u", t->cfg.refresh_cap_pct);
    snprintf(a_floor, sizeof a_floor, "%u",
             t->cfg.refresh_cap_floor ? t->cfg.refresh_cap_floor : 1);
    snprintf(a_tau, sizeof a_tau, "%llu", (unsigned long long)t->cfg.refresh_cap_burst_ms * 1000u);
    snprintf(a_exp, sizeof a_exp, "%llu", (unsigned long long)t->seen_expire_ms);
    const char *args[7] = {a_now, a_ttl, a_pct, a_floor, urgent ? "1" : "0", a_tau, a_exp};
    size_t al[7] = {strlen(a_now), strlen(a_ttl), strlen(a_pct), strlen(a_floor), 1,
                    strlen(a_tau), strlen(a_exp)};
    if (urgent)
        inc(&t->refresh_urgent, t->m_refresh_urgent);
    strata_redis_call call = {0};
    uint64_t nowms = mono_ms(t);
    call.timeout_ms = l->deadline_ms > nowms + 5 ? (uint32_t)(l->deadline_ms - nowms) : 5;
    if (s && strata_redis_evalsha(t->redis, &call, s, cap_done, l, nk, keys, kl, 7, args, al) ==
                 STRATA_OK) {
        l->pending_ops++;
        return;
    }
    inc(&t->errors, NULL);
    l->may_refresh = true; /* fail open */
    start_script(l);
}

/* Counts a filled key in the namespace's population (the cap's N). */
static void note_filled(tier_load *l) {
    strata_tier *t = l->t;
    const strata_redis_script *s = tier__lib_script(TIER_SCRIPT_SEEN);
    if (!s)
        return;
    char hk[STRATA_DB_NS_MAX + 48], exp[24];
    int n = snprintf(hk, sizeof hk, "st:hll:{%s}:%lld", t->ns,
                     (long long)(wall_ms(t) / (int64_t)t->seen_epoch_ms));
    snprintf(exp, sizeof exp, "%llu", (unsigned long long)t->seen_expire_ms);
    const char *keys[1] = {hk};
    size_t kl[1] = {(size_t)n};
    const char *args[2] = {l->key, exp};
    size_t al[2] = {l->klen, strlen(exp)};
    (void)strata_redis_evalsha(t->redis, NULL, s, NULL, NULL, 1, keys, kl, 2, args, al);
}

/* A fresh hit needs no script (measured: tier_get.lua costs Redis 4.3 us, HMGET 0.6 us).  HMGET the
 * fields; a value before its soft expiry whose XFetch draw does not ask for an
 * early refresh is answered here; a due refresh with a free lease asks the refresh
 * cap first (D-T11); everything else goes to tier_get.lua. */
static void hmget_done(void *ud, int status, const strata_redis_reply *r) {
    tier_load *l = ud;
    strata_tier *t = l->t;
    if (reply_while_closing(l))
        return;
    if (status == STRATA_OK && r && r->type == STRATA_REPLY_ARRAY && r->elements == 6 &&
        r->element[0]->type == STRATA_REPLY_STRING && r->element[1]->type == STRATA_REPLY_STRING &&
        r->element[2]->type == STRATA_REPLY_STRING) {
        int64_t soft = strtoll(r->element[2]->str, NULL, 10);
        int64_t delta =
            r->element[3]->type == STRATA_REPLY_STRING ? strtoll(r->element[3]->str, NULL, 10) : 0;
        bool neg = r->element[4]->type == STRATA_REPLY_STRING && r->element[4]->str[0] == '1';
        int64_t now = wall_ms(t);
        double x = t->cfg.leases ? xfetch_draw(t) : 0;
        bool fresh = now < soft;
        bool early = fresh && (double)now + (double)delta * x >= (double)soft;
        if (fresh && !early) {
            int64_t version = strtoll(r->element[1]->str, NULL, 10);
            inc(&t->redis_hits, NULL);
            if (neg)
                inc(&t->negative_hits, NULL);
            answer_redis_hit(l, neg, r->element[0]->str, r->element[0]->len, version, soft - now);
            load_maybe_free(l);
            return;
        }
        bool lease_free = r->element[5]->type != STRATA_REPLY_STRING ||
                          strtoll(r->element[5]->str, NULL, 10) <= now;
        if (cap_on(t) && lease_free && (early || t->cfg.stale_ms > 0)) {
            /* a refresh is due and this reader could take its lease: ask the cap */
            l->xf = x;
            l->xf_set = true;
            l->soft = soft;
            keep_stale(l, r->element[0], r->element[1], neg);
            if (!l->has_stale) { /* ENOMEM: no copy to serve, let the script decide */
                l->xf_set = false;
                start_script(l);
                return;
            }
            uint64_t guard = t->cfg.stale_ms / 8;
            bool urgent = !fresh && now >= soft + (int64_t)(t->cfg.stale_ms - guard);
            if (!urgent && now < t->deny_until_ms) {
                defer_refresh(l, now);
                return;
            }
            ask_cap(l, now, urgent);
            return;
        }
    }
    start_script(l);
}

static void start_redis(tier_load *l) {
    strata_tier *t = l->t;
    const char *argv[8] = {"HMGET", l->hkey, "v", "ver", "soft", "delta", "neg", "lx"};
    size_t lens[8] = {5, l->hklen, 1, 3, 4, 5, 3, 2};
    strata_redis_call call = {0};
    uint64_t nowms = mono_ms(t);
    call.timeout_ms = l->deadline_ms > nowms + 5 ? (uint32_t)(l->deadline_ms - nowms) : 5;
    if (strata_redis_command_argv(t->redis, &call, hmget_done, l, 8, argv, lens) == STRATA_OK) {
        l->pending_ops++;
        return;
    }
    start_script(l);
}

static void start_script(tier_load *l) {
    strata_tier *t = l->t;
    const strata_redis_script *s = tier__lib_script(TIER_SCRIPT_GET);
    char now[24], lease[16], xf[32];
    snprintf(now, sizeof now, "%lld", (long long)wall_ms(t));
    snprintf(lease, sizeof lease, "%u", t->cfg.lease_ms);
    double x = l->xf_set ? l->xf : xfetch_draw(t);
    l->xf_set = false;
    snprintf(xf, sizeof xf, "%.6f", x);
    const char *keys[1] = {l->hkey};
    size_t kl[1] = {l->hklen};
    /* with the refresh cap on, only a refresh it admitted may take a refresh lease */
    bool may_refresh = !cap_on(t) || l->may_refresh;
    l->may_refresh = false;
    const char *args[7] = {now,
                           lease,
                           l->token,
                           xf,
                           t->cfg.leases ? "1" : "0",
                           t->cfg.stale_ms ? "1" : "0",
                           may_refresh ? "1" : "0"};
    size_t al[7] = {strlen(now), strlen(lease), 16, strlen(xf), 1, 1, 1};
    strata_redis_call call = {0};
    uint64_t nowms = mono_ms(t);
    call.timeout_ms = l->deadline_ms > nowms + 5 ? (uint32_t)(l->deadline_ms - nowms) : 5;
    int rc = s ? strata_redis_evalsha(t->redis, &call, s, get_done, l, 1, keys, kl, 7, args, al)
               : STRATA_ENOTFOUND;
    if (rc < 0) {
        inc(&t->errors, NULL);
        l->no_fill = true;
        start_db(l);
        return;
    }
    l->pending_ops++;
}

/* ---- database step ----------------------------------------------------------------------- */

static void fill_done(void *ud, int status, const strata_redis_reply *r) {
    tier_load *l = ud;
    strata_tier *t = l->t;
    l->pending_ops--;
    if (status == STRATA_OK && r && strata_redis_reply_is(r, "ok"))
        inc(&t->fills, NULL);
    else
        inc(&t->fills_refused, t->m_fills_refused);
    load_maybe_free(l);
}

static void lease_done(void *ud, int status, const strata_redis_reply *r) {
    (void)status;
    (void)r;
    tier_load *l = ud;
    l->pending_ops--;
    load_maybe_free(l);
}

static void lease_op(tier_load *l, const char *op) {
    strata_tier *t = l->t;
    const strata_redis_script *s = tier__lib_script(TIER_SCRIPT_LEASE);
    char now[24], lease[16];
    snprintf(now, sizeof now, "%lld", (long long)wall_ms(t));
    snprintf(lease, sizeof lease, "%u", t->cfg.lease_ms);
    const char *keys[1] = {l->hkey};
    size_t kl[1] = {l->hklen};
    const char *args[4] = {l->token, op, now, lease};
    size_t al[4] = {16, strlen(op), strlen(now), strlen(lease)};
    if (s && strata_redis_evalsha(t->redis, NULL, s, lease_done, l, 1, keys, kl, 4, args, al) ==
                 STRATA_OK)
        l->pending_ops++;
}

static void fill(tier_load *l, bool neg) {
    strata_tier *t = l->t;
    const strata_redis_script *s = tier__lib_script(TIER_SCRIPT_FILL);
    uint64_t ttl = neg ? t->cfg.negative_ttl_ms : t->cfg.ttl_ms;
    if (ttl == 0) {
        if (l->holder)
            lease_op(l, "release");
        return;
    }
    ttl = strata_ttl_jitter(ttl, t->cfg.jitter_pct, strata_rand64());
    uint64_t hard = ttl + (neg ? 0 : t->cfg.stale_ms);
    uint64_t delta = (strata_clock_now_ns(t->clock) - l->db_t0_ns) / 1000000u;
    if (delta == 0)
        delta = 1;
    char ver[24], soft[24], hards[24], deltas[24];
    snprintf(ver, sizeof ver, "%lld", (long long)l->dbver);
    snprintf(soft, sizeof soft, "%lld", (long long)(wall_ms(t) + (int64_t)ttl));
    snprintf(hards, sizeof hards, "%llu", (unsigned long long)hard);
    snprintf(deltas, sizeof deltas, "%llu", (unsigned long long)delta);
    const char *keys[1] = {l->hkey};
    size_t kl[1] = {l->hklen};
    const char *val = neg ? "" : (l->dbval.data ? l->dbval.data : "");
    size_t vlen = neg ? 0 : l->dbval.len;
    const char *args[7] = {
        l->holder ? l->token : "", ver, val, soft, hards, deltas, neg ? "1" : "0"};
    size_t al[7] = {l->holder ? 16u : 0u, strlen(ver),    vlen, strlen(soft),
                    strlen(hards),        strlen(deltas), 1};
    if (s && strata_redis_evalsha(t->redis, NULL, s, fill_done, l, 1, keys, kl, 7, args, al) ==
                 STRATA_OK)
        l->pending_ops++;
    if (!neg && cap_on(t))
        note_filled(l);
}

typedef struct db_job {
    tier_load *l;
} db_job;

static int db_job_fn(strata_db_conn *c, void *arg) {
    tier_load *l = arg;
    strata_tier *t = l->t;
    int rc = strata_db_conn_kv_get(c, t->ns, l->key, l->klen, &l->dbval, &l->dbver);
    if (t->cfg.load_hook)
        t->cfg.load_hook(t->cfg.load_hook_ctx, l->key, l->klen);
    return rc;
}

static void extend_timer_cb(uv_timer_t *h) {
    tier_load *l = h->data;
    strata_tier *t = l->t;
    if (!l->db_running)
        return;
    uint64_t now = mono_ms(t);
    if (!l->answered && now >= l->deadline_ms) {
        /* the caller's deadline: answer now, the load goes on and fills */
        answer_stale_or(l, STRATA_ETIMEDOUT);
    }
    if (l->holder)
        lease_op(l, "extend");
    uint64_t period = t->cfg.lease_ms / 3 ? t->cfg.lease_ms / 3 : 1;
    if (!l->answered && l->deadline_ms > now && l->deadline_ms - now < period)
        period = l->deadline_ms - now;
    load_timer_start(l, extend_timer_cb, period);
}

static void db_done(int status, void *arg) {
    tier_load *l = arg;
    strata_tier *t = l->t;
    l->db_running = false;
    if (l->timer_init)
        uv_timer_stop(&l->timer);
    uint64_t now = strata_clock_now_ns(t->clock);
    bool failed = status < 0 && status != STRATA_ENOTFOUND;
    strata_breaker_record(t->breaker, now, now - l->db_t0_ns, failed);
    strata_bulkhead_release(t->bulk);
    if (status == STRATA_OK) {
        answer(l, STRATA_OK, STRATA_TIER_LOADED, l->dbval.data ? l->dbval.data : "", l->dbval.len,
               l->dbver, 0);
        if (!l->no_fill)
            fill(l, false);
    } else if (status == STRATA_ENOTFOUND) {
        answer(l, STRATA_ENOTFOUND, STRATA_TIER_LOADED, NULL, 0, l->dbver, 0);
        if (!l->no_fill)
            fill(l, true);
    } else {
        inc(&t->errors, NULL);
        answer_stale_or(l, status);
        if (l->holder && !l->no_fill)
            lease_op(l, "release");
    }
    load_maybe_free(l);
}

static void start_db(tier_load *l) {
    strata_tier *t = l->t;
    uint64_t now = strata_clock_now_ns(t->clock);
    int rc = strata_breaker_acquire(t->breaker, now);
    if (rc != STRATA_OK) {
        inc(&t->breaker_rejects, NULL);
        answer_stale_or(l, STRATA_EBREAKER);
        if (l->holder && !l->no_fill)
            lease_op(l, "release");
        load_maybe_free(l);
        return;
    }
    if (strata_bulkhead_try_acquire(t->bulk) != STRATA_OK) {
        /* the breaker call was acquired: report it as neither slow nor failed */
        strata_breaker_record(t->breaker, now, 0, false);
        inc(&t->bulkhead_rejects, NULL);
        answer_stale_or(l, STRATA_EBACKPRESSURE);
        if (l->holder && !l->no_fill)
            lease_op(l, "release");
        load_maybe_free(l);
        return;
    }
    l->db_t0_ns = now;
    strata_buf_reset(&l->dbval);
    l->dbver = 0;
    rc = strata_db_submit(t->db, t->loop, db_job_fn, db_done, l);
    if (rc < 0) {
        strata_bulkhead_release(t->bulk);
        strata_breaker_record(t->breaker, now, 0, true);
        answer_stale_or(l, rc);
        if (l->holder && !l->no_fill)
            lease_op(l, "release");
        load_maybe_free(l);
        return;
    }
    inc(&t->db_loads, t->m_db_loads);
    l->db_running = true;
    uint64_t period = t->cfg.lease_ms / 3 ? t->cfg.lease_ms / 3 : 1;
    uint64_t nowms = mono_ms(t);
    if (!l->answered && l->deadline_ms > nowms && l->deadline_ms - nowms < period)
        period = l->deadline_ms - nowms;
    if (!l->answered && l->deadline_ms <= nowms)
        period = 1;
    load_timer_start(l, extend_timer_cb, period);
}

/* ---- starting a load -------------------------------------------------------------------- */

static tier_load *load_new(strata_tier *t, const void *hkey, size_t hklen) {
    tier_load *l = strata_calloc(1, sizeof *l);
    if (!l)
        return NULL;
    size_t pl = strlen(t->prefix);
    /* hkey = prefix + key + "}" */
    l->klen = hklen - pl - 1;
    l->key = strata_strndup((const char *)hkey + pl, l->klen);
    l->hkey = strata_strndup(hkey, hklen);
    if (!l->key || !l->hkey) {
        strata_free(l->key);
        strata_free(l->hkey);
        strata_free(l);
        return NULL;
    }
    l->hklen = hklen;
    l->t = t;
    snprintf(l->token, sizeof l->token, "%016llx", (unsigned long long)strata_rand64());
    l->deadline_ms = mono_ms(t) + t->cfg.deadline_ms;
    atomic_fetch_add(&t->loads_inflight, 1);
    return l;
}

static void load_begin(tier_load *l) {
    strata_tier *t = l->t;
    if (t->bloom && t->bloom_ready && !strata_bloom_maybe_contains(t->bloom, l->key, l->klen)) {
        inc(&t->bloom_absent, t->m_bloom_absent);
        answer(l, STRATA_ENOTFOUND, STRATA_TIER_LOADED, NULL, 0, 0, 0);
        load_maybe_free(l);
        return;
    }
    start_redis(l);
}

static void l1_loader(void *ctx, strata_l1_load *ld, const void *key, size_t klen) {
    strata_tier *t = ctx;
    tier_load *l = load_new(t, key, klen);
    if (!l) {
        strata_l1_load_complete(ld, STRATA_ENOMEM, NULL, 0, NULL);
        return;
    }
    l->ld = ld;
    load_begin(l);
}

static void req_from_entry(tier_req *r, int outcome, strata_l1_entry *e, bool fresh_load) {
    int st = e ? strata_l1_entry_status(e) : STRATA_EINTERNAL;
    if (!e) {
        req_result(r, STRATA_EINTERNAL, STRATA_TIER_LOADED, NULL, 0, 0);
        return;
    }
    if (st != STRATA_OK) {
        req_result(r, st, STRATA_TIER_HIT_L1, NULL, 0, 0);
        return;
    }
    size_t vlen = 0;
    const unsigned char *v = strata_l1_entry_value(e, &vlen);
    if (vlen < L1_HDR) {
        req_result(r, STRATA_EINTERNAL, STRATA_TIER_HIT_L1, NULL, 0, 0);
        return;
    }
    strata_tier_outcome oc = fresh_load                   ? (strata_tier_outcome)v[8]
                             : outcome == STRATA_L1_STALE ? STRATA_TIER_STALE
                                                          : STRATA_TIER_HIT_L1;
    req_result(r, STRATA_OK, oc, v + L1_HDR, vlen - L1_HDR, get_i64(v));
}

static void l1_done(void *ud, int status, strata_l1_outcome outcome, strata_l1_entry *e) {
    tier_req *r = ud;
    if (status == STRATA_OK && e) {
        req_from_entry(r, outcome, e, true);
    } else {
        /* the load's status; ENOTFOUND is "does not exist" */
        req_result(r, status == STRATA_OK ? STRATA_EINTERNAL : status, STRATA_TIER_LOADED, NULL, 0,
                   0);
    }
    if (e)
        strata_l1_release(&e);
    deliver(r);
}

int strata_tier_get(strata_tier *t, const void *key, size_t klen, strata_tier_get_cb cb, void *ud) {
    if (!t || !cb)
        return STRATA_EINVAL;
    if (t->closing)
        return STRATA_ECLOSED;
    int rc = strata_tier_check_key(key, klen);
    if (rc < 0)
        return rc;
    strata_buf hk = STRATA_BUF_INIT;
    strata_buf_puts(&hk, t->prefix);
    strata_buf_append(&hk, key, klen);
    strata_buf_puts(&hk, "}");
    if (hk.oom) {
        strata_buf_free(&hk);
        return STRATA_ENOMEM;
    }
    tier_req *r = strata_calloc(1, sizeof *r);
    if (!r) {
        strata_buf_free(&hk);
        return STRATA_ENOMEM;
    }
    r->t = t;
    r->cb = cb;
    r->ud = ud;
    inc(&t->gets, t->m_gets);
    atomic_fetch_add(&t->inflight, 1);
    if (t->l1) {
        strata_l1_entry *e = NULL;
        rc = strata_l1_get_or_load(t->l1, hk.data, hk.len, l1_loader, t, l1_done, r, &e);
        if (rc == STRATA_L1_PENDING) {
            strata_buf_free(&hk);
            return STRATA_OK;
        }
        if (rc < 0) {
            atomic_fetch_sub(&t->inflight, 1);
            strata_free(r);
            strata_buf_free(&hk);
            return rc;
        }
        inc(&t->l1_hits, NULL);
        if (rc == STRATA_L1_NEGATIVE)
            inc(&t->negative_hits, NULL);
        req_from_entry(r, rc, e, false);
        strata_l1_release(&e);
        deliver(r);
        strata_buf_free(&hk);
        return STRATA_OK;
    }
    tier_load *l = load_new(t, hk.data, hk.len);
    strata_buf_free(&hk);
    if (!l) {
        atomic_fetch_sub(&t->inflight, 1);
        strata_free(r);
        return STRATA_ENOMEM;
    }
    l->req = r;
    load_begin(l);
    return STRATA_OK;
}

/* ---- Bloom ---------------------------------------------------------------------------- */

static void bloom_get_done(void *ud, int status, const strata_redis_reply *r) {
    strata_tier *t = ud;
    t->bloom_fetching = false;
    if (t->closing || !t->bloom)
        return;
    if (status != STRATA_OK || !r)
        return; /* keep the last copy */
    if (r->type == STRATA_REPLY_NIL) {
        t->bloom_ready = false;
    } else if (r->type == STRATA_REPLY_STRING) {
        t->bloom_ready = strata_bloom_load_redis_bitmap(t->bloom, r->str, r->len) == STRATA_OK;
    }
}

void strata_tier_bloom_refresh(strata_tier *t) {
    if (!t || !t->bloom || t->closing || t->bloom_fetching)
        return;
    if (strata_redis_command(t->redis, NULL, bloom_get_done, t, "GET %s", t->bloom_key) ==
        STRATA_OK)
        t->bloom_fetching = true;
}

static void bloom_timer_cb(uv_timer_t *h) { strata_tier_bloom_refresh(h->data); }

bool strata_tier_bloom_ready(const strata_tier *t) { return t && t->bloom && t->bloom_ready; }

typedef struct rebuild {
    strata_tier *t;
    strata_tier_write_cb cb;
    void *ud;
    unsigned char *bits;
    size_t nbytes;
    int status;
} rebuild;

static int rebuild_job(strata_db_conn *c, void *arg) {
    rebuild *rb = arg;
    strata_tier *t = rb->t;
    char *after = NULL;
    size_t afterlen = 0;
    uint64_t pos[16];
    for (;;) {
        strata_db_result *res = NULL;
        int rc = strata_db_conn_kv_keys(c, t->ns, after, afterlen, 1000, &res);
        if (rc < 0) {
            strata_free(after);
            return rc;
        }
        int n = strata_db_result_rows(res);
        for (int i = 0; i < n; i++) {
            size_t kl = 0;
            const char *k = strata_db_result_value(res, i, 0, &kl);
            if (!k)
                continue;
            uint32_t np = strata_bloom_positions(t->bloom, k, kl, pos);
            for (uint32_t j = 0; j < np; j++)
                rb->bits[pos[j] >> 3] |= (unsigned char)(0x80u >> (pos[j] & 7));
        }
        strata_free(after);
        after = NULL;
        if (n > 0) {
            size_t kl = 0;
            const char *k = strata_db_result_value(res, n - 1, 0, &kl);
            after = k ? strata_strndup(k, kl) : NULL;
            afterlen = kl;
        }
        strata_db_result_free(&res);
        if (n < 1000 || !after)
            break;
    }
    strata_free(after);
    return STRATA_OK;
}

static void rebuild_swap_done(void *ud, int status, const strata_redis_reply *r) {
    (void)r;
    rebuild *rb = ud;
    if (rb->cb)
        rb->cb(rb->ud, status, 0);
    if (status == STRATA_OK)
        strata_tier_bloom_refresh(rb->t);
    strata_free(rb->bits);
    strata_free(rb);
}

static void rebuild_done(int status, void *arg) {
    rebuild *rb = arg;
    strata_tier *t = rb->t;
    if (status == STRATA_OK) {
        const strata_redis_script *s = tier__lib_script(TIER_SCRIPT_BLOOM_SWAP);
        const char *keys[2] = {t->bloom_key, t->bloom_pending};
        size_t kl[2] = {strlen(t->bloom_key), strlen(t->bloom_pending)};
        const char *args[1] = {(const char *)rb->bits};
        size_t al[1] = {rb->nbytes};
        status = s ? strata_redis_evalsha(t->redis, NULL, s, rebuild_swap_done, rb, 2, keys, kl, 1,
                                          args, al)
                   : STRATA_ENOTFOUND;
        if (status == STRATA_OK)
            return;
    }
    if (rb->cb)
        rb->cb(rb->ud, status, 0);
    strata_free(rb->bits);
    strata_free(rb);
}

static void rebuild_del_done(void *ud, int status, const strata_redis_reply *r) {
    (void)r;
    rebuild *rb = ud;
    if (status == STRATA_OK)
        status = strata_db_submit(rb->t->db, rb->t->loop, rebuild_job, rebuild_done, rb);
    if (status == STRATA_OK)
        return;
    if (rb->cb)
        rb->cb(rb->ud, status, 0);
    strata_free(rb->bits);
    strata_free(rb);
}

int strata_tier_bloom_rebuild(strata_tier *t, strata_tier_write_cb cb, void *ud) {
    if (!t || !t->bloom)
        return STRATA_EINVAL;
    rebuild *rb = strata_calloc(1, sizeof *rb);
    if (!rb)
        return STRATA_ENOMEM;
    rb->t = t;
    rb->cb = cb;
    rb->ud = ud;
    rb->nbytes = strata_bloom_bits(t->bloom) / 8;
    rb->bits = strata_calloc(rb->nbytes, 1);
    if (!rb->bits) {
        strata_free(rb);
        return STRATA_ENOMEM;
    }
    /* Remove the bitmap first: from now on every tier answers "maybe" and
     * inserts set their bits in the pending key, merged at the swap. */
    t->bloom_ready = false;
    int rc = strata_redis_command(t->redis, NULL, rebuild_del_done, rb, "DEL %s", t->bloom_key);
    if (rc < 0) {
        strata_free(rb->bits);
        strata_free(rb);
    }
    return rc;
}

/* ---- cache-aside writes ---------------------------------------------------------------- */

typedef struct write_req {
    strata_tier *t;
    strata_tier_write_cb cb;
    void *ud;
    char *key;
    size_t klen;
    char *val;
    size_t vlen;
    int64_t expected;
    int64_t version;
    bool del;
} write_req;

static int write_job(strata_db_conn *c, void *arg) {
    write_req *w = arg;
    if (w->del)
        return strata_db_conn_kv_delete(c, w->t->ns, w->key, w->klen, w->expected, &w->version);
    return strata_db_conn_kv_put(c, w->t->ns, w->key, w->klen, w->val ? w->val : "", w->vlen,
                                 w->expected, &w->version);
}

static void write_done(int status, void *arg) {
    write_req *w = arg;
    strata_tier *t = w->t;
    if (status == STRATA_OK) {
        if (t->l1) {
            strata_buf hk = STRATA_BUF_INIT;
            strata_buf_puts(&hk, t->prefix);
            strata_buf_append(&hk, w->key, w->klen);
            strata_buf_puts(&hk, "}");
            if (!hk.oom)
                strata_l1_invalidate(t->l1, hk.data, hk.len);
            strata_buf_free(&hk);
        }
        if (!w->del && t->bloom)
            strata_bloom_add(t->bloom, w->key, w->klen);
        if (t->cfg.relay)
            strata_relay_kick(t->cfg.relay);
    }
    atomic_fetch_sub(&t->inflight, 1);
    if (w->cb)
        w->cb(w->ud, status, w->version);
    strata_free(w->key);
    strata_free(w->val);
    strata_free(w);
}

static int write_submit(strata_tier *t, const void *key, size_t klen, const void *val, size_t vlen,
                        int64_t expected, bool del, strata_tier_write_cb cb, void *ud) {
    if (!t)
        return STRATA_EINVAL;
    if (t->closing)
        return STRATA_ECLOSED;
    int rc = strata_tier_check_key(key, klen);
    if (rc < 0)
        return rc;
    if (!del && !val && vlen)
        return STRATA_EINVAL;
    if (vlen > STRATA_TIER_VALUE_MAX)
        return STRATA_ETOOBIG;
    write_req *w = strata_calloc(1, sizeof *w);
    if (!w)
        return STRATA_ENOMEM;
    w->t = t;
    w->cb = cb;
    w->ud = ud;
    w->klen = klen;
    w->vlen = vlen;
    w->expected = expected;
    w->del = del;
    w->key = strata_strndup(key, klen);
    w->val = vlen ? strata_malloc(vlen) : NULL;
    if (!w->key || (vlen && !w->val)) {
        strata_free(w->key);
        strata_free(w->val);
        strata_free(w);
        return STRATA_ENOMEM;
    }
    if (vlen)
        memcpy(w->val, val, vlen);
    atomic_fetch_add(&t->inflight, 1);
    rc = strata_db_submit(t->db, t->loop, write_job, write_done, w);
    if (rc < 0) {
        atomic_fetch_sub(&t->inflight, 1);
        strata_free(w->key);
        strata_free(w->val);
        strata_free(w);
    }
    return rc;
}

int strata_tier_put(strata_tier *t, const void *key, size_t klen, const void *value, size_t len,
                    int64_t expected_version, strata_tier_write_cb cb, void *ud) {
    return write_submit(t, key, klen, value, len, expected_version, false, cb, ud);
}

int strata_tier_delete(strata_tier *t, const void *key, size_t klen, int64_t expected_version,
                       strata_tier_write_cb cb, void *ud) {
    return write_submit(t, key, klen, NULL, 0, expected_version, true, cb, ud);
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static void tr_invalidate(void *ud, const char *key, size_t len) {
    strata_tier *t = ud;
    if (t->l1)
        strata_l1_invalidate(t->l1, key, len);
}

static void tr_flush(void *ud) {
    strata_tier *t = ud;
    if (t->l1)
        strata_l1_invalidate_prefix(t->l1, t->prefix, strlen(t->prefix));
}

static void tr_resync(void *ud, const char *prefix, size_t len) {
    strata_tier *t = ud;
    if (t->l1)
        strata_l1_invalidate_prefix(t->l1, prefix, len);
}

int strata_tier_create(const strata_tier_config *cfg, strata_tier **out) {
    if (!out)
        return STRATA_EINVAL;
    *out = NULL;
    if (!cfg || !cfg->redis || !cfg->db || !cfg->ns || cfg->jitter_pct > 50 ||
        cfg->refresh_cap_pct > 1000 || cfg->lease_ms == 0 || cfg->deadline_ms == 0)
        return STRATA_EINVAL;
    size_t nl = strlen(cfg->ns);
    if (nl == 0 || nl > STRATA_DB_NS_MAX || !strata_utf8_valid(cfg->ns, nl) ||
        strchr(cfg->ns, '{') || strchr(cfg->ns, '}'))
        return STRATA_EINVAL;
    if (!tier__lib_script(TIER_SCRIPT_GET))
        return STRATA_ENOTFOUND;
    strata_tier *t = strata_calloc(1, sizeof *t);
    if (!t)
        return STRATA_ENOMEM;
    t->cfg = *cfg;
    t->redis = cfg->redis;
    t->db = cfg->db;
    t->l1 = cfg->l1;
    t->loop = strata_redis_loop(cfg->redis);
    t->clock = cfg->clock ? cfg->clock : strata_clock_system();
    t->ns = strata_strdup(cfg->ns);
    t->name = strata_strdup(cfg->name ? cfg->name : cfg->ns);
    strata_buf b = STRATA_BUF_INIT;
    strata_buf_printf(&b, "st:{%s:", cfg->ns);
    t->prefix = strata_buf_steal(&b, NULL);
    strata_buf_printf(&b, "st:bloom:{%s}", cfg->ns);
    t->bloom_key = strata_buf_steal(&b, NULL);
    strata_buf_printf(&b, "st:bloom:{%s}:pending", cfg->ns);
    t->bloom_pending = strata_buf_steal(&b, NULL);
    strata_buf_printf(&b, "st:rl:{%s}", cfg->ns);
    t->rl_key = strata_buf_steal(&b, NULL);
    /* every value Redis holds was filled within ttl * (1 + jitter) + stale */
    t->seen_window_ms = (uint64_t)cfg->ttl_ms * (100u + cfg->jitter_pct) / 100u + cfg->stale_ms;
    t->seen_epoch_ms = t->seen_window_ms / 4 ? t->seen_window_ms / 4 : 1;
    /* real time, generous: PFCOUNT only reads the epochs of the window (tier clock) */
    t->seen_expire_ms = 2 * t->seen_window_ms + 600000u;
    char bname[96];
    snprintf(bname, sizeof bname, "tier_db_%s", t->name ? t->name : "x");
    t->breaker = strata_breaker_create(bname, &cfg->breaker, cfg->metrics);
    t->bulk = strata_bulkhead_create(cfg->bulkhead ? cfg->bulkhead : 1);
    if (cfg->bloom)
        t->bloom = strata_bloom_create(cfg->bloom_expected, cfg->bloom_fp);
    pthread_mutex_init(&t->qmu, NULL);
    if (!t->ns || !t->name || !t->prefix || !t->bloom_key || !t->bloom_pending || !t->rl_key ||
        !t->breaker || !t->bulk || (cfg->bloom && !t->bloom)) {
        strata_free(t->rl_key);
        strata_free(t->ns);
        strata_free(t->name);
        strata_free(t->prefix);
        strata_free(t->bloom_key);
        strata_free(t->bloom_pending);
        strata_breaker_destroy(&t->breaker);
        strata_bulkhead_destroy(&t->bulk);
        strata_bloom_destroy(&t->bloom);
        pthread_mutex_destroy(&t->qmu);
        strata_free(t);
        return STRATA_ENOMEM;
    }
    if (cfg->metrics) {
        char lab[128];
        snprintf(lab, sizeof lab, "tier=\"%s\"", t->name);
        strata_metrics *m = cfg->metrics;
        t->m_gets = strata_metrics_counter(m, "strata_tier_gets_total", "tier gets", lab);
        t->m_db_loads = strata_metrics_counter(m, "strata_tier_db_loads_total",
                                               "database loads started by the tier", lab);
        t->m_stale = strata_metrics_counter(m, "strata_tier_stale_served_total",
                                            "stale values served (SWR, stale-if-error)", lab);
        t->m_lease_waits = strata_metrics_counter(
            m, "strata_tier_lease_waits_total", "gets that waited on another holder's lease", lab);
        t->m_lease_timeouts = strata_metrics_counter(m, "strata_tier_lease_timeouts_total",
                                                     "waiters that reached their deadline", lab);
        t->m_fills_refused =
            strata_metrics_counter(m, "strata_tier_fills_refused_total",
                                   "fills refused (older version or lost lease)", lab);
        t->m_bloom_absent = strata_metrics_counter(m, "strata_tier_bloom_absent_total",
                                                   "gets answered absent by the Bloom filter", lab);
        t->m_refresh_deferred = strata_metrics_counter(
            m, "strata_tier_refresh_deferred_total",
            "refreshes refused by the refresh cap (the value was served, fresh or stale)", lab);
        t->m_refresh_urgent = strata_metrics_counter(
            m, "strata_tier_refresh_urgent_total",
            "refreshes admitted past the refresh cap (last eighth of the stale window)", lab);
    }
    uv_async_init(t->loop, &t->async, async_cb);
    t->async.data = t;
    t->handles_open = 1;
    if (t->bloom) {
        uv_timer_init(t->loop, &t->bloom_timer);
        t->bloom_timer.data = t;
        uv_timer_start(&t->bloom_timer, bloom_timer_cb, 0,
                       cfg->bloom_refresh_ms ? cfg->bloom_refresh_ms : 1000);
        uv_unref((uv_handle_t *)&t->bloom_timer);
        t->handles_open++;
    }
    uv_unref((uv_handle_t *)&t->async);
    if (cfg->tracking) {
        const char *pfx[1] = {t->prefix};
        strata_redis_tracking_cbs cbs;
        memset(&cbs, 0, sizeof cbs);
        cbs.on_invalidate = tr_invalidate;
        cbs.on_flush = tr_flush;
        cbs.on_resync = tr_resync;
        cbs.ud = t;
        strata_redis_tracking_start(t->redis, 1, pfx, &cbs);
    }
    *out = t;
    return STRATA_OK;
}

uint64_t strata_tier_quiesce(const strata_tier *t) {
    if (!t)
        return 0;
    int64_t a = atomic_load(&((strata_tier *)t)->inflight);
    int64_t b = atomic_load(&((strata_tier *)t)->loads_inflight);
    return (uint64_t)(a + b);
}

static void tier_handle_closed(uv_handle_t *h) {
    strata_tier *t = h->data;
    if (--t->handles_open > 0)
        return;
    strata_free(t->ns);
    strata_free(t->name);
    strata_free(t->prefix);
    strata_free(t->bloom_key);
    strata_free(t->bloom_pending);
    strata_free(t->rl_key);
    strata_breaker_destroy(&t->breaker);
    strata_bulkhead_destroy(&t->bulk);
    strata_bloom_destroy(&t->bloom);
    pthread_mutex_destroy(&t->qmu);
    strata_free(t);
}

void strata_tier_destroy(strata_tier **tp) {
    if (!tp || !*tp)
        return;
    strata_tier *t = *tp;
    *tp = NULL;
    t->closing = true;
    async_cb(&t->async); /* deliver what is queued */
    if (t->bloom) {
        uv_timer_stop(&t->bloom_timer);
        uv_close((uv_handle_t *)&t->bloom_timer, tier_handle_closed);
    }
    uv_close((uv_handle_t *)&t->async, tier_handle_closed);
}

void strata_tier_get_stats(const strata_tier *tc, strata_tier_stats *o) {
    memset(o, 0, sizeof *o);
    if (!tc)
        return;
    strata_tier *t = (strata_tier *)tc;
    o->gets = atomic_load(&t->gets);
    o->l1_hits = atomic_load(&t->l1_hits);
    o->redis_hits = atomic_load(&t->redis_hits);
    o->stale_served = atomic_load(&t->stale_served);
    o->negative_hits = atomic_load(&t->negative_hits);
    o->bloom_absent = atomic_load(&t->bloom_absent);
    o->db_loads = atomic_load(&t->db_loads);
    o->fills = atomic_load(&t->fills);
    o->fills_refused = atomic_load(&t->fills_refused);
    o->lease_grants = atomic_load(&t->lease_grants);
    o->lease_waits = atomic_load(&t->lease_waits);
    o->lease_timeouts = atomic_load(&t->lease_timeouts);
    o->early_refreshes = atomic_load(&t->early_refreshes);
    o->breaker_rejects = atomic_load(&t->breaker_rejects);
    o->bulkhead_rejects = atomic_load(&t->bulkhead_rejects);
    o->errors = atomic_load(&t->errors);
    o->waiting = (uint64_t)atomic_load(&t->waiting);
    o->inflight = (uint64_t)atomic_load(&t->inflight);
    o->refresh_admitted = atomic_load(&t->refresh_admitted);
    o->refresh_deferred = atomic_load(&t->refresh_deferred);
    o->refresh_urgent = atomic_load(&t->refresh_urgent);
    o->refresh_cap_per_s = (atomic_load(&t->refresh_cap_milli) + 500) / 1000;
    o->refresh_keys = atomic_load(&t->refresh_keys);
}
