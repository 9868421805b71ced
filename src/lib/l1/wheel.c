/*
 * wheel.c: a hierarchical timer wheel for L1 expiry (O(1) schedule and
 * deschedule, reaping without scanning the cache).
 *
 * Varghese and Lauck, "Hashed and Hierarchical Timing Wheels" (SOSP 1987),
 * in the layout Caffeine uses: five levels whose buckets span powers of two
 * of nanoseconds, so a bucket index is a shift and a mask:
 *
 *   level  bucket span       buckets  level span
 *     0    2^30 ns ~ 1.07 s     64     ~ 1.14 min
 *     1    2^36 ns ~ 1.14 min   64     ~ 1.22 h
 *     2    2^42 ns ~ 1.22 h     32     ~ 1.63 d
 *     3    2^47 ns ~ 1.63 d      4     ~ 6.5 d
 *     4    overflow              1
 *
 * An entry goes to the finest level whose span covers its remaining time.
 * Advancing from the previous time to `now` visits, at each level, only the
 * buckets whose ticks passed; an entry found there is expired if its
 * deadline passed, otherwise rescheduled (it cascades to a finer level).
 * Reaping is therefore at most ~1 s late on level 0; reads check the exact
 * deadline themselves, so a late reap never serves an expired value.
 * Buckets are rings with a sentinel, so deschedule is an unlink.
 */
#include "l1_internal.h"

static const int BUCKETS[L1_WHEEL_LEVELS] = {64, 64, 32, 4, 1};
static const int SHIFT[L1_WHEEL_LEVELS] = {30, 36, 42, 47, 49};

void l1__wheel_init(l1_wheel *w, uint64_t now) {
    for (int i = 0; i < L1_WHEEL_LEVELS; i++)
        for (int j = 0; j < 64; j++)
            w->buckets[i][j].wprev = w->buckets[i][j].wnext = &w->buckets[i][j];
    w->nanos = now;
}

static l1_ttl *find_bucket(l1_wheel *w, uint64_t deadline) {
    int64_t duration = (int64_t)(deadline - w->nanos);
    for (int i = 0; i < L1_WHEEL_LEVELS - 1; i++) {
        if (duration < (int64_t)(1ULL << SHIFT[i + 1])) {
            uint64_t ticks = deadline >> SHIFT[i];
            return &w->buckets[i][ticks & (uint64_t)(BUCKETS[i] - 1)];
        }
    }
    return &w->buckets[L1_WHEEL_LEVELS - 1][0];
}

void l1__wheel_schedule(l1_wheel *w, strata_l1_entry *e) {
    l1_ttl *t = l1_entry_ttl(e);
    l1_ttl *s = find_bucket(w, t->hard_ns);
    t->wnext = s;
    t->wprev = s->wprev;
    s->wprev->wnext = t;
    s->wprev = t;
}

void l1__wheel_deschedule(l1_wheel *w, strata_l1_entry *e) {
    (void)w;
    l1_ttl *t = l1_entry_ttl(e);
    if (!t || !t->wnext)
        return;
    t->wprev->wnext = t->wnext;
    t->wnext->wprev = t->wprev;
    t->wprev = t->wnext = NULL;
}

void l1__wheel_advance(l1_wheel *w, uint64_t now, void (*expire)(void *ctx, strata_l1_entry *e),
                       void *ctx) {
    uint64_t prev = w->nanos;
    if (now <= prev)
        return;
    w->nanos = now;
    for (int i = 0; i < L1_WHEEL_LEVELS; i++) {
        uint64_t prev_ticks = prev >> SHIFT[i], cur_ticks = now >> SHIFT[i];
        if (cur_ticks == prev_ticks)
            break;
        uint64_t delta = cur_ticks - prev_ticks;
        uint64_t mask = (uint64_t)BUCKETS[i] - 1;
        uint64_t steps = delta + 1 < (uint64_t)BUCKETS[i] ? delta + 1 : (uint64_t)BUCKETS[i];
        for (uint64_t k = 0; k < steps; k++) {
            l1_ttl *s = &w->buckets[i][(prev_ticks + k) & mask];
            if (s->wnext == s)
                continue;
            /* Detach the ring, then expire or reschedule each member. */
            l1_ttl *t = s->wnext;
            s->wprev->wnext = NULL;
            s->wprev = s->wnext = s;
            while (t) {
                l1_ttl *nx = t->wnext;
                t->wprev = t->wnext = NULL;
                if ((int64_t)(t->hard_ns - now) <= 0)
                    expire(ctx, l1_ttl_entry(t));
                else
                    l1__wheel_schedule(w, l1_ttl_entry(t));
                t = nx;
            }
        }
    }
}
