/*
 * breaker.c: circuit breaker and bulkhead (strata/protect.h).
 *
 * The breaker follows Resilience4j's time-based model.  Calls are counted in
 * a ring of 10 buckets that together span the window; a bucket is reset when
 * the clock enters it again, so the window slides in tenths without a timer.
 *
 *   CLOSED     every call goes through; after each outcome, if the window
 *              holds >= min_calls and the failure rate or the slow-call rate
 *              reaches its threshold, the breaker OPENs.
 *   OPEN       every call is refused (STRATA_EBREAKER) until open_ms passed;
 *              the next acquire moves it to HALF_OPEN.
 *   HALF_OPEN  up to half_open_probes calls go through; a probe that fails
 *              (or is slow, when the slow threshold is on) re-OPENs it at once;
 *              when all probes succeed it CLOSEs with a fresh window.
 *
 * One mutex per breaker: a breaker guards a database, whose calls cost
 * milliseconds, so a few tens of nanoseconds of locking are noise.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/protect.h"
#include "strata/status.h"

#define NBUCKETS 10

typedef struct {
    uint64_t epoch; /* which window tenth this bucket holds (now / bucket_ns) */
    uint32_t calls, failures, slow;
} bucket;

struct strata_breaker {
    pthread_mutex_t mu;
    strata_breaker_config cfg;
    uint64_t bucket_ns;
    bucket ring[NBUCKETS];
    strata_breaker_state state;
    uint64_t opened_at_ns;
    uint32_t probes_issued, probes_ok;
    strata_gauge *m_state;
    strata_counter *m_ok, *m_failed, *m_slow, *m_rejected, *m_opened;
};

void strata_breaker_config_default(strata_breaker_config *c) {
    c->window_ms = 10000;
    c->min_calls = 20;
    c->failure_rate_pct = 50;
    c->slow_call_ms = 100;
    c->slow_rate_pct = 80;
    c->open_ms = 2000;
    c->half_open_probes = 5;
}

const char *strata_breaker_state_name(strata_breaker_state s) {
    switch (s) {
    case STRATA_BREAKER_CLOSED: return "closed";
    case STRATA_BREAKER_OPEN: return "open";
    case STRATA_BREAKER_HALF_OPEN: return "half_open";
    }
    return "?";
}

strata_breaker *strata_breaker_create(const char *name, const strata_breaker_config *cfg,
                                      strata_metrics *metrics) {
    strata_breaker_config d;
    if (!cfg) {
        strata_breaker_config_default(&d);
        cfg = &d;
    }
    if (cfg->window_ms < NBUCKETS || cfg->failure_rate_pct > 100 || cfg->slow_rate_pct > 100 ||
        cfg->half_open_probes == 0 || cfg->min_calls == 0)
        return NULL;
    strata_breaker *b = strata_calloc(1, sizeof *b);
    if (!b)
        return NULL;
    pthread_mutex_init(&b->mu, NULL);
    b->cfg = *cfg;
    b->bucket_ns = (uint64_t)cfg->window_ms * 1000000ull / NBUCKETS;
    b->state = STRATA_BREAKER_CLOSED;
    if (metrics && name) {
        char l[256];
        snprintf(l, sizeof l, "breaker=\"%s\"", name);
        b->m_state =
            strata_metrics_gauge(metrics, "strata_breaker_state",
                                 "Circuit breaker state: 0 closed, 1 open, 2 half-open", l);
        const char *help = "Calls through a circuit breaker by outcome";
        snprintf(l, sizeof l, "breaker=\"%s\",outcome=\"ok\"", name);
        b->m_ok = strata_metrics_counter(metrics, "strata_breaker_calls_total", help, l);
        snprintf(l, sizeof l, "breaker=\"%s\",outcome=\"failed\"", name);
        b->m_failed = strata_metrics_counter(metrics, "strata_breaker_calls_total", help, l);
        snprintf(l, sizeof l, "breaker=\"%s\",outcome=\"slow\"", name);
        b->m_slow = strata_metrics_counter(metrics, "strata_breaker_calls_total", help, l);
        snprintf(l, sizeof l, "breaker=\"%s\",outcome=\"rejected\"", name);
        b->m_rejected = strata_metrics_counter(metrics, "strata_breaker_calls_total", help, l);
        snprintf(l, sizeof l, "breaker=\"%s\"", name);
        b->m_opened = strata_metrics_counter(metrics, "strata_breaker_opened_total",
                                             "Times a circuit breaker opened", l);
    }
    return b;
}

void strata_breaker_destroy(strata_breaker **bp) {
    if (!bp || !*bp)
        return;
    pthread_mutex_destroy(&(*bp)->mu);
    strata_free(*bp);
    *bp = NULL;
}

static void set_state(strata_breaker *b, strata_breaker_state s, uint64_t now_ns) {
    b->state = s;
    if (s == STRATA_BREAKER_OPEN) {
        b->opened_at_ns = now_ns;
        strata_counter_inc(b->m_opened);
    }
    if (s == STRATA_BREAKER_HALF_OPEN)
        b->probes_issued = b->probes_ok = 0;
    if (s == STRATA_BREAKER_CLOSED)
        memset(b->ring, 0, sizeof b->ring);
    strata_gauge_set(b->m_state, (int64_t)s);
}

/* Moves OPEN to HALF_OPEN once open_ms passed.  Caller holds mu. */
static void do_tick(strata_breaker *b, uint64_t now_ns) {
    if (b->state == STRATA_BREAKER_OPEN &&
        now_ns - b->opened_at_ns >= (uint64_t)b->cfg.open_ms * 1000000ull)
        set_state(b, STRATA_BREAKER_HALF_OPEN, now_ns);
}

int strata_breaker_acquire(strata_breaker *b, uint64_t now_ns) {
    int rc = STRATA_OK;
    pthread_mutex_lock(&b->mu);
    do_tick(b, now_ns);
    if (b->state == STRATA_BREAKER_OPEN)
        rc = STRATA_EBREAKER;
    else if (b->state == STRATA_BREAKER_HALF_OPEN) {
        if (b->probes_issued < b->cfg.half_open_probes)
            b->probes_issued++;
        else
            rc = STRATA_EBREAKER;
    }
    pthread_mutex_unlock(&b->mu);
    if (rc != STRATA_OK)
        strata_counter_inc(b->m_rejected);
    return rc;
}

void strata_breaker_record(strata_breaker *b, uint64_t now_ns, uint64_t duration_ns, bool failed) {
    bool slow = duration_ns >= (uint64_t)b->cfg.slow_call_ms * 1000000ull;
    strata_counter_inc(failed ? b->m_failed : slow ? b->m_slow : b->m_ok);
    pthread_mutex_lock(&b->mu);
    if (b->state == STRATA_BREAKER_HALF_OPEN) {
        if (failed || (slow && b->cfg.slow_rate_pct > 0))
            set_state(b, STRATA_BREAKER_OPEN, now_ns);
        else if (++b->probes_ok >= b->cfg.half_open_probes)
            set_state(b, STRATA_BREAKER_CLOSED, now_ns);
        pthread_mutex_unlock(&b->mu);
        return;
    }
    uint64_t epoch = now_ns / b->bucket_ns;
    bucket *k = &b->ring[epoch % NBUCKETS];
    if (k->epoch != epoch)
        *k = (bucket){epoch, 0, 0, 0};
    k->calls++;
    k->failures += failed;
    k->slow += slow;
    if (b->state == STRATA_BREAKER_CLOSED) {
        uint64_t calls = 0, fails = 0, slows = 0;
        for (int i = 0; i < NBUCKETS; i++) {
            if (b->ring[i].epoch + NBUCKETS > epoch && b->ring[i].epoch <= epoch) {
                calls += b->ring[i].calls;
                fails += b->ring[i].failures;
                slows += b->ring[i].slow;
            }
        }
        if (calls >= b->cfg.min_calls &&
            (fails * 100 >= (uint64_t)b->cfg.failure_rate_pct * calls ||
             (b->cfg.slow_rate_pct > 0 && slows * 100 >= (uint64_t)b->cfg.slow_rate_pct * calls)))
            set_state(b, STRATA_BREAKER_OPEN, now_ns);
    }
    pthread_mutex_unlock(&b->mu);
}

strata_breaker_state strata_breaker_get_state(strata_breaker *b, uint64_t now_ns) {
    pthread_mutex_lock(&b->mu);
    do_tick(b, now_ns);
    strata_breaker_state s = b->state;
    pthread_mutex_unlock(&b->mu);
    return s;
}

/* ---- bulkhead ---------------------------------------------------------------- */

struct strata_bulkhead {
    _Atomic uint32_t in_use;
    uint32_t max;
};

strata_bulkhead *strata_bulkhead_create(uint32_t max) {
    if (max == 0)
        return NULL;
    strata_bulkhead *b = strata_calloc(1, sizeof *b);
    if (b)
        b->max = max;
    return b;
}

void strata_bulkhead_destroy(strata_bulkhead **b) {
    if (!b || !*b)
        return;
    strata_free(*b);
    *b = NULL;
}

int strata_bulkhead_try_acquire(strata_bulkhead *b) {
    uint32_t cur = atomic_load_explicit(&b->in_use, memory_order_relaxed);
    do {
        if (cur >= b->max)
            return STRATA_EBACKPRESSURE;
    } while (!atomic_compare_exchange_weak_explicit(&b->in_use, &cur, cur + 1, memory_order_acquire,
                                                    memory_order_relaxed));
    return STRATA_OK;
}

void strata_bulkhead_release(strata_bulkhead *b) {
    atomic_fetch_sub_explicit(&b->in_use, 1, memory_order_release);
}

uint32_t strata_bulkhead_in_use(strata_bulkhead *b) { return atomic_load(&b->in_use); }
