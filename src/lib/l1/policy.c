/*
 * policy.c: the L1 eviction policy: W-TinyLFU with an adaptive window, or
 * plain LRU.
 *
 * The essay.  A cache must decide, when a new key arrives and the cache is
 * full, whether the newcomer is worth more than the entry it would displace.
 * LRU always says yes, so one scan of cold keys flushes a hot working set;
 * LFU keeps the frequently used keys, but needs per-key counts of keys no
 * longer cached and adapts slowly when popularity shifts.
 *
 * TinyLFU (Einziger, Friedman, Manes: "TinyLFU: A Highly Efficient Cache
 * Admission Policy", ACM Transactions on Storage 13(4), 2017) separates the
 * two questions.  Eviction picks a victim as usual; an *admission filter*
 * then compares the victim's and the candidate's estimated frequency in a
 * recent sample (a 4-bit count-min sketch with a doorkeeper, halved every
 * 10 x capacity additions: sketch.c) and admits the candidate only if it is
 * more popular.  Scans and loops lose against established keys.
 *
 * W-TinyLFU, the variant of the same paper that Caffeine implements, puts a
 * small LRU *window* in front of the filter so that a burst of new keys (a
 * recency-heavy workload) gets a chance to build frequency before facing
 * admission.  The main space behind the filter is a segmented LRU (SLRU;
 * Karedla et al., 1994): new arrivals from the window enter *probation*; a hit
 * in probation promotes to *protected* (80 % of main); protected overflow
 * demotes to probation's MRU end.  Eviction compares the window's evictee
 * (the candidate) with probation's LRU entry (the victim).
 *
 *      set ─► [ window LRU ] ─evict─► candidate ┐
 *                                               ├─ TinyLFU: freq(c) > freq(v)? ─► admit c, evict v
 *               [ probation ] ◄─ LRU victim ────┘                                 else evict c
 *                   │ hit
 *                   ▼
 *               [ protected ] ─overflow─► probation
 *
 * The right window size depends on the workload: ~1 % suits frequency-
 * biased traces (search, databases), while recency-biased ones (OLTP,
 * recently-written feeds) want 20-80 %.  A fixed 1 % window (Caffeine 2.6.2)
 * loses several points against LRU on those.  So the window is *adaptive*,
 * sized by hill climbing (Einziger, Eytan, Friedman, Manes: "Adaptive
 * Software Cache Management", Middleware 2018): every sample of 10 x capacity
 * requests, compare the hit rate with the previous sample's; if it improved
 * keep moving the window in the same direction, otherwise reverse; the step
 * starts at 6.25 % of capacity, decays by 0.98 per sample, and restarts at
 * full size when the hit rate jumps by 5 points (the workload changed).
 * Two changes of ours.  A sample whose hit rate moved by less than 1 point
 * holds the window where it is: without it the climber random-walks on
 * stationary workloads (measured: -1.0 point on Zipf 0.99 and -1.0 on the
 * LIRS loop trace against a fixed window), and OLTP improves too (39.8 ->
 * 40.3 % at 1000 entries).  And the step never restarts: on a Zipf stream
 * with 20 % one-time scans, consecutive samples at a fixed window differ by
 * up to 15 points (how many scans fell in the sample), so the restart fired
 * on nearly every sample and the window random-walked at full step between
 * 1 and 300 entries of 1000 (46.35 % against the fixed window's 47.03);
 * without it 46.88, and OLTP keeps its gain.  The price of the hold: a hill
 * climber cannot cross a flat region (a stream whose reuse distances are
 * all beyond 40 % of the cache gains nothing from any nearby window), see
 * docs/notes/l1.md D5.
 * Moving capacity between window and main moves entries across the
 * boundary (at most 1000 per step, the rest follows lazily).
 *
 * As in Caffeine 2.6.2, the sketch starts counting only once the cache is
 * half full (its ensureCapacity is called from the first write at >= half
 * the maximum), and reads before that are not applied to the policy (its
 * skipReadBuffer): the start-up fill is not frequency evidence.  Measured
 * with a fixed window: P3 +1.6 / +1.1 points at 100k / 200k entries; it
 * costs the LIRS gli trace 5.6 / 11.6 points at 500 / 1000 (where Caffeine
 * 2.6.2 shows the same loss), docs/notes/l1.md D11.
 *
 * Admission also has Caffeine's defence against hash flooding: a candidate
 * that is not more frequent than the victim but is itself warm (estimate >=
 * 6) is admitted with probability 1/128, so an attacker cannot pin a victim
 * by colliding with it in the sketch.
 *
 * LRU mode uses the window list alone with the whole capacity.
 *
 * Everything here runs under the cache's writer lock.  Costs are weights:
 * sizes and maxima are in cost units.
 */
#include "l1_internal.h"

#define PERCENT_MAIN_PROTECTED   0.80
#define CLIMBER_STEP_PERCENT     0.0625
#define CLIMBER_STEP_DECAY       0.98
#define CLIMBER_TOLERANCE        0.01 /* hit-rate changes below 1 point are noise */
#define QUEUE_TRANSFER_THRESHOLD 1000
#define ADMIT_HASHDOS_THRESHOLD  6

/* ---- intrusive lists ---------------------------------------------------- */

static void list_init(l1_list *l) { l->head.prev = l->head.next = &l->head; }
static strata_l1_entry *list_first(l1_list *l) {
    return l->head.next == &l->head ? NULL : l->head.next;
}
static strata_l1_entry *list_last(l1_list *l) {
    return l->head.prev == &l->head ? NULL : l->head.prev;
}
static strata_l1_entry *list_next(l1_list *l, strata_l1_entry *e) {
    return e->next == &l->head ? NULL : e->next;
}
static strata_l1_entry *list_prevv(l1_list *l, strata_l1_entry *e) {
    return e->prev == &l->head ? NULL : e->prev;
}
static void list_unlink(strata_l1_entry *e) {
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = NULL;
}
static void list_push_mru(l1_list *l, strata_l1_entry *e) {
    e->prev = l->head.prev;
    e->next = &l->head;
    l->head.prev->next = e;
    l->head.prev = e;
}
static void list_move_mru(l1_list *l, strata_l1_entry *e) {
    list_unlink(e);
    list_push_mru(l, e);
}

static uint64_t rng_next(strata_l1 *c) {
    uint64_t x = c->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return c->rng = x;
}

static bool wtinylfu(const strata_l1 *c) { return c->cfg.policy != STRATA_L1_LRU; }

static void set_maxima(strata_l1 *c, uint64_t window) {
    if (window < 1)
        window = 1;
    if (window > c->capacity)
        window = c->capacity;
    c->window_max = window;
    c->protected_max = (uint64_t)((double)(c->capacity - window) * PERCENT_MAIN_PROTECTED);
}

int l1__policy_init(strata_l1 *c) {
    list_init(&c->window);
    list_init(&c->probation);
    list_init(&c->protected_);
    c->rng = 0x9E3779B97F4A7C15ULL;
    if (!wtinylfu(c)) {
        c->window_max = c->capacity;
        c->protected_max = 0;
        return 0;
    }
    set_maxima(c, (uint64_t)((double)c->capacity * c->cfg.window_pct));
    c->step_size = -CLIMBER_STEP_PERCENT * (double)c->capacity;
    uint64_t entries =
        c->cfg.weigh == STRATA_L1_WEIGH_ENTRIES ? c->capacity : c->cfg.expected_entries;
    return l1__sketch_init(&c->sketch, entries, c->cfg.doorkeeper);
}

void l1__policy_free(strata_l1 *c) { l1__sketch_free(&c->sketch); }

void l1__policy_add(strata_l1 *c, strata_l1_entry *e) {
    e->queue = L1_Q_WINDOW;
    list_push_mru(&c->window, e);
    c->window_size += e->cost;
    c->total_cost += e->cost;
    c->entries++;
    if (wtinylfu(c)) {
        if (!c->sketch_on && c->total_cost - e->cost >= c->capacity / 2)
            c->sketch_on = 1; /* Caffeine 2.6.2: the sketch starts at half full */
        if (c->sketch_on)
            l1__sketch_increment(&c->sketch, e->hash);
        c->misses_in_sample++;
        if (!c->warm && c->total_cost >= c->capacity / 2)
            c->warm = 1;
    }
}

void l1__policy_access(strata_l1 *c, strata_l1_entry *e) {
    if (!c->sketch_on && wtinylfu(c))
        return; /* Caffeine 2.6.2 skips the read buffer until the sketch starts */
    switch (e->queue) {
    case L1_Q_NONE: return; /* removed since the read was buffered */
    case L1_Q_WINDOW: list_move_mru(&c->window, e); break;
    case L1_Q_PROBATION:
        list_unlink(e);
        if (e->cost > c->protected_max) {
            list_push_mru(&c->probation, e);
        } else {
            e->queue = L1_Q_PROTECTED;
            list_push_mru(&c->protected_, e);
            c->protected_size += e->cost;
        }
        break;
    case L1_Q_PROTECTED: list_move_mru(&c->protected_, e); break;
    }
    if (wtinylfu(c)) {
        l1__sketch_increment(&c->sketch, e->hash);
        c->hits_in_sample++;
    }
}

void l1__policy_remove(strata_l1 *c, strata_l1_entry *e) {
    switch (e->queue) {
    case L1_Q_NONE: return;
    case L1_Q_WINDOW: c->window_size -= e->cost; break;
    case L1_Q_PROTECTED: c->protected_size -= e->cost; break;
    default: break;
    }
    list_unlink(e);
    e->queue = L1_Q_NONE;
    c->total_cost -= e->cost;
    c->entries--;
}

static void demote_from_protected(strata_l1 *c) {
    while (c->protected_size > c->protected_max) {
        strata_l1_entry *e = list_first(&c->protected_);
        if (!e)
            break;
        list_unlink(e);
        c->protected_size -= e->cost;
        e->queue = L1_Q_PROBATION;
        list_push_mru(&c->probation, e);
    }
}

/* Moves window overflow to probation's MRU end; returns how many moved (the candidates). */
static int evict_from_window(strata_l1 *c) {
    int candidates = 0;
    strata_l1_entry *e = list_first(&c->window);
    while (e && c->window_size > c->window_max) {
        strata_l1_entry *nx = list_next(&c->window, e);
        if (e->cost != 0 && e != c->pinned) {
            list_unlink(e);
            c->window_size -= e->cost;
            e->queue = L1_Q_PROBATION;
            list_push_mru(&c->probation, e);
            candidates++;
        }
        e = nx;
    }
    return candidates;
}

static bool admit(strata_l1 *c, strata_l1_entry *cand, strata_l1_entry *victim) {
    int vf = l1__sketch_frequency(&c->sketch, victim->hash);
    int cf = l1__sketch_frequency(&c->sketch, cand->hash);
    if (cf > vf)
        return true;
    if (cf >= ADMIT_HASHDOS_THRESHOLD)
        return (rng_next(c) & 127) == 0;
    return false;
}

enum { Q_PROB, Q_PROT, Q_WIN, Q_DONE };

static l1_list *qlist(strata_l1 *c, int q) {
    return q == Q_PROB ? &c->probation : q == Q_PROT ? &c->protected_ : &c->window;
}

/* Caffeine's evictFromMain: candidates walk probation from its MRU end (the
 * entries just moved in from the window), victims from its LRU end; when
 * probation runs dry, victims come from protected, then the window. */
static void evict_from_main(strata_l1 *c, int candidates) {
    int vq = Q_PROB, cq = Q_PROB;
    strata_l1_entry *victim = list_first(&c->probation);
    strata_l1_entry *cand = list_last(&c->probation);
    while (c->total_cost > c->capacity) {
        if (candidates <= 0 && cq == Q_PROB) {
            cand = list_first(&c->window);
            cq = Q_WIN;
        }
        if (!cand && !victim) {
            if (vq == Q_PROB) {
                vq = Q_PROT;
                victim = list_first(&c->protected_);
                continue;
            } else if (vq == Q_PROT) {
                vq = Q_WIN;
                victim = list_first(&c->window);
                continue;
            }
            break;
        }
        if (victim && victim == c->pinned) {
            victim = list_next(qlist(c, vq), victim);
            continue;
        }
        if (cand && cand == c->pinned) {
            cand = cq == Q_WIN ? list_next(&c->window, cand) : list_prevv(&c->probation, cand);
            continue;
        }
        if (victim && victim->cost == 0) {
            victim = list_next(qlist(c, vq), victim);
            continue;
        }
        if (cand && cand->cost == 0) {
            cand = cq == Q_WIN ? list_next(&c->window, cand) : list_prevv(&c->probation, cand);
            candidates--;
            continue;
        }
        if (!victim) {
            strata_l1_entry *ev = cand;
            cand = cq == Q_WIN ? list_next(&c->window, cand) : list_prevv(&c->probation, cand);
            candidates--;
            l1__evict(c, ev, STRATA_L1_CAUSE_SIZE);
            continue;
        }
        if (!cand) {
            strata_l1_entry *ev = victim;
            victim = list_next(qlist(c, vq), victim);
            l1__evict(c, ev, STRATA_L1_CAUSE_SIZE);
            continue;
        }
        if (cand == victim) {
            victim = list_next(qlist(c, vq), victim);
            l1__evict(c, cand, STRATA_L1_CAUSE_SIZE);
            cand = NULL;
            continue;
        }
        if (cand->cost > c->capacity) {
            strata_l1_entry *ev = cand;
            cand = cq == Q_WIN ? list_next(&c->window, cand) : list_prevv(&c->probation, cand);
            candidates--;
            l1__evict(c, ev, STRATA_L1_CAUSE_SIZE);
            continue;
        }
        candidates--;
        if (admit(c, cand, victim)) {
            strata_l1_entry *ev = victim;
            victim = list_next(qlist(c, vq), victim);
            l1__evict(c, ev, STRATA_L1_CAUSE_SIZE);
            cand = cq == Q_WIN ? list_next(&c->window, cand) : list_prevv(&c->probation, cand);
        } else {
            strata_l1_entry *ev = cand;
            cand = cq == Q_WIN ? list_next(&c->window, cand) : list_prevv(&c->probation, cand);
            l1__evict(c, ev, STRATA_L1_CAUSE_SIZE);
        }
    }
}

void l1__policy_evict(strata_l1 *c) {
    if (!wtinylfu(c)) {
        while (c->total_cost > c->capacity) {
            strata_l1_entry *e = list_first(&c->window);
            if (!e)
                break;
            l1__evict(c, e, STRATA_L1_CAUSE_SIZE);
        }
        return;
    }
    int candidates = evict_from_window(c);
    evict_from_main(c, candidates);
}

/* ---- hill climbing ------------------------------------------------------ */

static void determine_adjustment(strata_l1 *c) {
    uint64_t requests = c->hits_in_sample + c->misses_in_sample;
    if (!c->warm) {
        c->prev_hit_rate = 0;
        c->hits_in_sample = c->misses_in_sample = 0;
        return;
    }
    if (requests < c->sketch.sample)
        return;
    double hit_rate = (double)c->hits_in_sample / (double)requests;
    double change = hit_rate - c->prev_hit_rate;
    double amount = change >= 0 ? c->step_size : -c->step_size;
    if (change < CLIMBER_TOLERANCE && change > -CLIMBER_TOLERANCE) {
        /* within sampling noise: hold the window, let the step decay */
        c->prev_hit_rate = hit_rate;
        c->step_size *= CLIMBER_STEP_DECAY;
        c->adjustment = 0;
        c->hits_in_sample = c->misses_in_sample = 0;
        return;
    }
    double next_step = CLIMBER_STEP_DECAY * amount; /* no restart: see the essay */
    c->prev_hit_rate = hit_rate;
    c->adjustment = (int64_t)amount;
    c->step_size = next_step;
    c->hits_in_sample = c->misses_in_sample = 0;
}

static void increase_window(strata_l1 *c) {
    if (c->protected_max == 0)
        return;
    uint64_t quota = (uint64_t)c->adjustment;
    if (quota > c->protected_max)
        quota = c->protected_max;
    c->protected_max -= quota;
    c->window_max += quota;
    demote_from_protected(c);
    for (int i = 0; i < QUEUE_TRANSFER_THRESHOLD; i++) {
        strata_l1_entry *e = list_first(&c->probation);
        bool prob = true;
        if (!e || quota < e->cost) {
            e = list_first(&c->protected_);
            prob = false;
        }
        if (!e || quota < e->cost)
            break;
        quota -= e->cost;
        list_unlink(e);
        if (!prob)
            c->protected_size -= e->cost;
        c->window_size += e->cost;
        e->queue = L1_Q_WINDOW;
        list_push_mru(&c->window, e);
    }
    c->protected_max += quota;
    c->window_max -= quota;
    c->adjustment = (int64_t)quota;
}

static void decrease_window(strata_l1 *c) {
    if (c->window_max <= 1)
        return;
    uint64_t quota = (uint64_t)(-c->adjustment);
    if (quota > c->window_max - 1)
        quota = c->window_max - 1;
    c->protected_max += quota;
    c->window_max -= quota;
    for (int i = 0; i < QUEUE_TRANSFER_THRESHOLD; i++) {
        strata_l1_entry *e = list_first(&c->window);
        if (!e || quota < e->cost)
            break;
        quota -= e->cost;
        list_unlink(e);
        c->window_size -= e->cost;
        e->queue = L1_Q_PROBATION;
        list_push_mru(&c->probation, e);
    }
    c->protected_max -= quota;
    c->window_max += quota;
    c->adjustment = -(int64_t)quota;
}

void l1__policy_climb(strata_l1 *c) {
    if (!wtinylfu(c))
        return;
    if (c->cfg.policy == STRATA_L1_WTINYLFU) {
        determine_adjustment(c);
    }
    demote_from_protected(c);
    int64_t amount = c->adjustment;
    if (amount > 0)
        increase_window(c);
    else if (amount < 0)
        decrease_window(c);
}
