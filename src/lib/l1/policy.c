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
 * So the climber has a witness: a small LRU simulation over a hash-sampled
 * subset of the keys (SHARDS, Waldspurger et al., FAST 2015: sketch.c),
 * ~32 KiB whatever the capacity, fed by the same events.  When, on a
 * sample's sampled requests, exact LRU would have hit clearly more often
 * than the cache did, the window jumps to 99 % of the cache (the cache
 * becomes an LRU with a tiny filtered tail) as a one-sample trial, and stays
 * near there while LRU keeps winning; a probe back to the old window, when
 * the misses are keys the sketch has seen several times, leaves that mode
 * (shadow_check below, docs/notes/l1.md D16).  Recency streams that the
 * climber alone left at 7 % and 46.7 % (LRU 75 % and 50 %) reach 74.5 %
 * and 49.6 %; no trace in the hit-ratio table triggers it.
 * In caches large enough that the shadow samples keys, the same paired
 * counts also check the climber: a move the gap to the shadow does not
 * confirm, or growth while LRU hits under half of the cache's, is held
 * (paired_hold below, docs/notes/l1.md D17), and a move at most halves or
 * doubles the window, so the climber's first step (6 x the 1 % window) does
 * not jump past the small windows to a single entry (decrease_window, D18).
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
#include <errno.h>
#include <stdatomic.h>
#include <sys/random.h>
#include <time.h>

#include "l1_internal.h"
#include "strata/status.h"

#define PERCENT_MAIN_PROTECTED   0.80
#define CLIMBER_STEP_PERCENT     0.0625
#define CLIMBER_STEP_DECAY       0.98
#define CLIMBER_TOLERANCE        0.01 /* hit-rate changes below 1 point are noise */
#define QUEUE_TRANSFER_THRESHOLD 1000
#define ADMIT_HASHDOS_THRESHOLD  6
#define SHADOW_MARGIN            0.03 /* LRU must beat the cache by 3 points on the sample */
#define SHADOW_MARGIN_REL        0.10 /* and by 10 % of its own hit rate */
#define SHADOW_MIN_EVENTS        1000 /* sampled events in a climber sample to judge it */
#define SHADOW_MAX_BACKOFF       64   /* climber samples between jumps that did not pay */
#define SHADOW_LRU_MODE_MARGIN   0.01 /* after a jump that paid: 1 point either way */
#define SHADOW_PROBE_FREQ        1.5  /* mean sketch frequency of misses that starts a probe */
#define PAIRED_LRU_VETO          0.50 /* sampled shadow: no growth while LRU hits < half the cache's */

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

/* A fresh seed for a cache whose config leaves sketch_seed 0: 8 bytes of
 * getrandom(2) (blocks only until the kernel's pool is initialised at boot).
 * Should the call fail (no syscall in a sandbox), the clock, the cache's
 * address and a process-wide counter, mixed: unpredictable enough to make
 * every cache's hash differ, not a secret. */
static uint64_t random_seed(const strata_l1 *c) {
    uint64_t seed = 0;
    ssize_t n;
    do
        n = getrandom(&seed, sizeof seed, 0);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof seed) {
        static atomic_uint_fast64_t counter;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t st = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        st ^= (uint64_t)(uintptr_t)c ^ (atomic_fetch_add(&counter, 1) << 48);
        seed = l1__splitmix64(&st);
    }
    return seed ? seed : 1;
}

int l1__policy_init(strata_l1 *c) {
    list_init(&c->window);
    list_init(&c->probation);
    list_init(&c->protected_);
    /* The per-cache seed (include/strata/l1.h sketch_seed, sketch.c): the
     * key hash, the sketch's hash and the random admission's generator
     * (admit()) all come from it, so none can be predicted from outside,
     * and a nonzero configured seed replays every decision exactly. */
    if (c->cfg.sketch_seed == 0)
        c->cfg.sketch_seed = random_seed(c);
    uint64_t st = c->cfg.sketch_seed ^ 0x5DEECE66DULL;
    c->rng = l1__splitmix64(&st);
    c->key_seed = l1__splitmix64(&st); /* the key hash too (l1__hash): no hash flooding */
    if (c->rng == 0)
        c->rng = 0x9E3779B97F4A7C15ULL; /* xorshift's one forbidden state */
    if (!wtinylfu(c)) {
        c->window_max = c->capacity;
        c->protected_max = 0;
        return 0;
    }
    set_maxima(c, (uint64_t)((double)c->capacity * c->cfg.window_pct));
    c->step_size = -CLIMBER_STEP_PERCENT * (double)c->capacity;
    uint64_t entries =
        c->cfg.weigh == STRATA_L1_WEIGH_ENTRIES ? c->capacity : c->cfg.expected_entries;
    int rc = l1__sketch_init(&c->sketch, entries, c->cfg.doorkeeper, c->cfg.sketch_seed);
    if (rc == STRATA_OK && c->cfg.policy == STRATA_L1_WTINYLFU) {
        rc = l1__shadow_init(&c->shadow, c->capacity, entries);
        if (rc < 0)
            l1__sketch_free(&c->sketch);
    }
    return rc;
}

void l1__policy_free(strata_l1 *c) {
    l1__sketch_free(&c->sketch);
    l1__shadow_free(&c->shadow);
}

void l1__policy_add(strata_l1 *c, strata_l1_entry *e) {
    e->queue = L1_Q_WINDOW;
    list_push_mru(&c->window, e);
    c->window_size += e->cost;
    c->total_cost += e->cost;
    c->entries++;
    if (wtinylfu(c)) {
        if (!c->sketch_on && c->total_cost - e->cost >= c->capacity / 2)
            c->sketch_on = 1; /* Caffeine 2.6.2: the sketch starts at half full */
        if (c->shadow.lru_mode && c->sketch_on) { /* what LRU mode keeps missing */
            c->shadow.miss_count++;
            c->shadow.miss_freq += (uint64_t)l1__sketch_frequency(&c->sketch, e->hash);
        }
        if (c->sketch_on)
            l1__sketch_increment(&c->sketch, e->hash);
        c->misses_in_sample++;
        if (l1_shadow_sampled(&c->shadow, e->hash)) /* inline: most keys are not */
            l1__shadow_ref(&c->shadow, e->hash, e->cost, L1_SHADOW_MISS);
        if (!c->warm && c->total_cost >= c->capacity / 2)
            c->warm = 1;
    }
}

/* Moves e as a hit does (MRU end; probation -> protected); false if e is in no queue. */
static bool reorder(strata_l1 *c, strata_l1_entry *e) {
    switch (e->queue) {
    case L1_Q_NONE:                  /* removed since the read was buffered */
    case L1_Q_PENDING: return false; /* a fast replace not applied yet (l1.c) */
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
    return true;
}

void l1__policy_access(strata_l1 *c, strata_l1_entry *e) {
    if (!c->sketch_on && wtinylfu(c))
        return; /* Caffeine 2.6.2 skips the read buffer until the sketch starts */
    if (!reorder(c, e))
        return;
    if (wtinylfu(c)) {
        l1__sketch_increment(&c->sketch, e->hash);
        c->hits_in_sample++;
        if (l1_shadow_sampled(&c->shadow, e->hash)) /* inline: most keys are not */
            l1__shadow_ref(&c->shadow, e->hash, e->cost, L1_SHADOW_HIT);
    }
}

/* A fast replace (same key, same cost): nw takes old's node, then the write
 * counts as an access, as Caffeine's update of a present key does (onAccess:
 * reorder + sketch increment; not a hit for the climber's sample). */
void l1__policy_replace(strata_l1 *c, strata_l1_entry *old, strata_l1_entry *nw) {
    nw->queue = old->queue;
    nw->prev = old->prev;
    nw->next = old->next;
    nw->prev->next = nw;
    nw->next->prev = nw;
    old->prev = old->next = NULL;
    old->queue = L1_Q_NONE;
    if (l1_shadow_sampled(&c->shadow, nw->hash))
        l1__shadow_ref(&c->shadow, nw->hash, nw->cost, L1_SHADOW_TOUCH);
    if (!c->sketch_on && wtinylfu(c))
        return;
    reorder(c, nw);
    if (wtinylfu(c))
        l1__sketch_increment(&c->sketch, nw->hash);
}

void l1__policy_remove(strata_l1 *c, strata_l1_entry *e) {
    switch (e->queue) {
    case L1_Q_NONE:
    case L1_Q_PENDING: return;
    case L1_Q_WINDOW: c->window_size -= e->cost; break;
    case L1_Q_PROTECTED: c->protected_size -= e->cost; break;
    default: break;
    }
    list_unlink(e);
    e->queue = L1_Q_NONE;
    c->total_cost -= e->cost;
    c->entries--;
    if (!c->shadow.evicting && l1_shadow_sampled(&c->shadow, e->hash))
        l1__shadow_drop(&c->shadow,
                        e->hash); /* invalidated, expired, replaced: gone from LRU too */
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
    while (c->total_cost > c->evict_to) {
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
        while (c->total_cost > c->evict_to) {
            strata_l1_entry *e = list_first(&c->window);
            if (!e)
                break;
            l1__evict(c, e, STRATA_L1_CAUSE_SIZE);
        }
        return;
    }
    int candidates = evict_from_window(c);
    c->shadow.evicting = 1;
    evict_from_main(c, candidates);
    c->shadow.evicting = 0;
}

/* ---- hill climbing ------------------------------------------------------ */

/* Sets the window and protected maxima the mover (shadow_move) walks to. */
static void shadow_target(strata_l1 *c, uint64_t window, uint64_t prot) {
    c->shadow.target_window = window;
    c->shadow.target_protected = prot;
    c->shadow.moving = 1;
    c->adjustment = 0;
}

/* The LRU check (docs/notes/l1.md D16), at the end of each climber sample:
 * did the shadow LRU beat the cache, on the sample's sampled events, by
 * SHADOW_MARGIN points and by SHADOW_MARGIN_REL of LRU's own hits, plus
 * three standard errors of the paired difference (LRU-only hits minus
 * cache-only hits, whose variance is about their sum).  If so, the window
 * jumps to all but 1 % of the capacity (main keeps 1 %, 80 % of it
 * protected), so the cache behaves like an LRU, and the climber continues
 * from there.  The jump is a trial: if the next full sample's hit rate is
 * not above the one before the jump, window and protected return to where
 * they were, and jumps wait 1, 2, 4 ... SHADOW_MAX_BACKOFF samples.
 * (Checking within a sample, every 1000 sampled events, was tried: on P3 it
 * jumped in the start-up transient, where LRU leads for a while, and the
 * trial could not tell: P3 @50k 25.04 -> 6.71 %.)  hit_rate: the sample's.
 * Returns whether it moved the window (the climber's sample then restarts). */
static bool shadow_check(strata_l1 *c, double hit_rate);

/* After a jump that paid ("LRU mode"), the climber keeps exploring, but its
 * sample-to-sample noise (+-2 points on a stationary recency stream) walks
 * the window down where every step costs a point against LRU.  The paired
 * comparison with the shadow is far less noisy (its variance is the sum of
 * the discordant events only), so in LRU mode a 1-point loss against LRU
 * (and three standard errors) returns the window to its maximum.
 * Leaving LRU mode: an LRU-like cache cannot see that a small window would
 * do better (the flat region again, from the other side), so the misses
 * are watched: when their mean sketch frequency reaches SHADOW_PROBE_FREQ
 * (LRU keeps missing keys it has seen several times: a hot set larger than
 * it, a loop), the window goes back to where it was before the jump for one
 * sample (a probe).  If the cache then beats LRU by 1 point, LRU mode ends
 * and the climber continues from there; otherwise the window returns to its
 * maximum and probes wait 1, 2, 4 ... SHADOW_MAX_BACKOFF samples.  Returns
 * whether it moved the window. */
static bool shadow_lru_mode(strata_l1 *c, uint64_t ev, uint64_t a, uint64_t b) {
    l1_shadow *sh = &c->shadow;
    double gap = (double)a - (double)b, need = SHADOW_LRU_MODE_MARGIN * (double)ev;
    bool sure = ev >= SHADOW_MIN_EVENTS && gap * gap >= 9.0 * (double)(a + b);
    uint64_t mc = sh->miss_count, mf = sh->miss_freq;
    sh->miss_count = sh->miss_freq = 0;
    uint64_t main_min = c->capacity / 100 ? c->capacity / 100 : 1;
    uint64_t top = c->capacity - main_min;
    uint64_t top_protected = (uint64_t)((double)main_min * PERCENT_MAIN_PROTECTED);
    if (sh->probing) {
        sh->probing = 0;
        if (sure && gap <= -need) { /* the old window beats LRU: leave LRU mode */
            sh->lru_mode = 0;
            sh->probe_backoff = 0;
            return false;
        }
        sh->probe_backoff = sh->probe_backoff ? sh->probe_backoff * 2 : 1;
        if (sh->probe_backoff > SHADOW_MAX_BACKOFF)
            sh->probe_backoff = SHADOW_MAX_BACKOFF;
        sh->probe_wait = sh->probe_backoff;
        shadow_target(c, top, top_protected);
        return true;
    }
    if (sh->probe_wait) {
        sh->probe_wait--;
    } else if (mc >= SHADOW_MIN_EVENTS / 10 && (double)mf >= SHADOW_PROBE_FREQ * (double)mc &&
               !sh->moving) {
        sh->probes++;
        sh->probing = 1;
        shadow_target(c, sh->saved_window, sh->saved_protected);
        return true;
    }
    if (!sure || gap < need || c->window_max >= top || sh->moving)
        return false;
    sh->rejumps++;
    shadow_target(c, top, top_protected);
    return true;
}

static bool shadow_check(strata_l1 *c, double hit_rate) {
    l1_shadow *sh = &c->shadow;
    uint64_t ev = sh->events, lru = sh->lru_hits, a = sh->lru_only, b = sh->act_only;
    sh->events = sh->lru_hits = sh->lru_only = sh->act_only = 0;
    if (sh->trial) {
        sh->trial = 0;
        if (hit_rate <= sh->saved_rate) { /* did not pay: back to the old window */
            sh->reverts++;
            sh->backoff = sh->backoff ? sh->backoff * 2 : 1;
            if (sh->backoff > SHADOW_MAX_BACKOFF)
                sh->backoff = SHADOW_MAX_BACKOFF;
            sh->wait = sh->backoff;
            shadow_target(c, sh->saved_window, sh->saved_protected);
            c->prev_hit_rate = sh->saved_rate;
            return true;
        }
        sh->backoff = 0;
        sh->lru_mode = 1;
        return false;
    }
    if (sh->lru_mode) /* saved_* keep the pre-jump window for the probes */
        return shadow_lru_mode(c, ev, a, b);
    if (sh->wait) {
        sh->wait--;
        return false;
    }
    uint64_t main_min = c->capacity / 100 ? c->capacity / 100 : 1;
    uint64_t window = c->capacity - main_min;
    double gap = (double)a - (double)b, need = SHADOW_MARGIN * (double)ev;
    if (need < SHADOW_MARGIN_REL * (double)lru)
        need = SHADOW_MARGIN_REL * (double)lru;
    if (ev < SHADOW_MIN_EVENTS || gap * gap < 9.0 * (double)(a + b) || gap < need ||
        c->window_max >= window || sh->moving)
        return false;
    sh->jumps++;
    sh->trial = 1;
    sh->saved_window = c->window_max;
    sh->saved_protected = c->protected_max;
    sh->saved_rate = hit_rate;
    c->prev_hit_rate = hit_rate;
    c->step_size = c->step_size < 0 ? -c->step_size : c->step_size; /* up: keep going */
    shadow_target(c, window, (uint64_t)((double)main_min * PERCENT_MAIN_PROTECTED));
    return true;
}

/* Walks window_max towards the shadow's target, moving at most
 * QUEUE_TRANSFER_THRESHOLD entries per call (the climber's own bound).
 * Growing takes main's entries into the window's LRU end, protected's first
 * (down to its target), most recent first, so the window keeps recency order;
 * shrinking moves the window's LRU entries to probation. */
static void shadow_move(strata_l1 *c) {
    l1_shadow *sh = &c->shadow;
    for (int i = 0; i < QUEUE_TRANSFER_THRESHOLD; i++) {
        if (c->window_max < sh->target_window) {
            strata_l1_entry *e = NULL;
            if (c->protected_size > sh->target_protected)
                e = list_last(&c->protected_);
            if (!e)
                e = list_last(&c->probation);
            if (!e)
                e = list_last(&c->protected_);
            if (!e) {
                c->window_max = sh->target_window; /* main is empty */
                continue;
            }
            list_unlink(e);
            if (e->queue == L1_Q_PROTECTED)
                c->protected_size -= e->cost;
            e->queue = L1_Q_WINDOW;
            e->next = c->window.head.next; /* the LRU end */
            e->prev = &c->window.head;
            c->window.head.next->prev = e;
            c->window.head.next = e;
            c->window_size += e->cost;
            c->window_max += e->cost;
            if (c->window_max > sh->target_window)
                c->window_max = sh->target_window;
        } else if (c->window_max > sh->target_window) {
            strata_l1_entry *e = list_first(&c->window);
            if (!e || c->window_size <= sh->target_window || e->cost > c->window_max) {
                c->window_max = sh->target_window;
                continue;
            }
            list_unlink(e);
            c->window_size -= e->cost;
            c->window_max -= e->cost;
            if (c->window_max < sh->target_window)
                c->window_max = sh->target_window;
            e->queue = L1_Q_PROBATION;
            list_push_mru(&c->probation, e);
        } else {
            break;
        }
    }
    if (c->window_max == sh->target_window) {
        c->protected_max = sh->target_protected;
        sh->moving = 0;
    }
}

/* Whether the shadow LRU samples keys (the cache expects more than
 * L1_SHADOW_SLOTS entries): the caches where a climber sample (10 x capacity
 * requests) is a large share of a workload's phase, and where D17 and D18
 * apply. */
static bool shadow_sampled_cache(const strata_l1 *c) {
    return c->shadow.slot && c->shadow.threshold < (1ULL << 32);
}

/* The paired check of a climber move (docs/notes/l1.md D17), for caches whose
 * shadow LRU is sampled (more than L1_SHADOW_SLOTS expected entries): there
 * a climber sample is 10 x capacity requests long and its hit rate moves with
 * the workload's phases (P3) and with how many scans fell in it (Zipf +
 * scans) far more than with the window.  The shadow LRU sees the same sampled
 * requests, so the cache's gap to it, g = (cache-only hits - LRU-only hits) /
 * sampled events, cancels what both felt.  A move is held (as a change under
 * CLIMBER_TOLERANCE is) when
 *  - the hit rate and g moved in opposite directions since the last sample
 *    (the change was the workload's, not the window's), or
 *  - the move would grow the window while LRU hit less than PAIRED_LRU_VETO
 *    of what the cache hit on the sample (a frequency-dominated workload:
 *    the window is the recency part, and recency is what LRU measures).
 * The previous g is kept in the shadow (gap, gap_set).
 * Caches of at most L1_SHADOW_SLOTS entries keep the plain climber: on OLTP
 * (250-2000 entries) both rules were measured to cost up to 5.7 points. */
static bool paired_hold(strata_l1 *c, double change, uint64_t ev, uint64_t a, uint64_t b,
                        uint64_t lru) {
    l1_shadow *sh = &c->shadow;
    if (!shadow_sampled_cache(c) || ev < SHADOW_MIN_EVENTS)
        return false;
    double g = ((double)b - (double)a) / (double)ev;
    bool had = sh->gap_set != 0;
    double prev = sh->gap;
    sh->gap = g;
    sh->gap_set = 1;
    if (change < CLIMBER_TOLERANCE && change > -CLIMBER_TOLERANCE)
        return false; /* holds anyway */
    if (had && change * (g - prev) <= 0)
        return true;
    double amount = change >= 0 ? c->step_size : -c->step_size;
    double act = (double)lru - (double)a + (double)b; /* the cache's sampled hits */
    return amount > 0 && (double)lru < PAIRED_LRU_VETO * act;
}

static void determine_adjustment(strata_l1 *c) {
    uint64_t requests = c->hits_in_sample + c->misses_in_sample;
    if (!c->warm) {
        c->prev_hit_rate = 0;
        c->hits_in_sample = c->misses_in_sample = 0;
        c->shadow.events = c->shadow.lru_hits = c->shadow.lru_only = c->shadow.act_only = 0;
        return;
    }
    if (requests < c->sketch.sample)
        return;
    double hit_rate = (double)c->hits_in_sample / (double)requests;
    uint64_t ev = c->shadow.events, a = c->shadow.lru_only, b = c->shadow.act_only,
             lru = c->shadow.lru_hits; /* shadow_check clears them */
    if (c->shadow.slot && shadow_check(c, hit_rate)) {
        c->shadow.gap_set = 0; /* the window jumped: no previous gap to compare with */
        c->hits_in_sample = c->misses_in_sample = 0;
        return;
    }
    double change = hit_rate - c->prev_hit_rate;
    if (paired_hold(c, change, ev, a, b, lru))
        change = 0;
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
    if (shadow_sampled_cache(c) && quota > c->window_max)
        quota = c->window_max; /* at most doubles (D18) */
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

/* In a cache whose shadow samples keys, a shrink takes at most half the
 * window and a growth (increase_window) at most doubles it (docs/notes/l1.md
 * D18).  The climber's step is a share of the
 * capacity (6.25 %), 6 x the initial 1 % window: its first move down (the
 * comparison with 0 always reads as a gain) took the window from 1 % to a
 * single entry in one sample, past the region of small windows it never
 * measured.  Halving at most, the window approaches 1 geometrically and each
 * halving is judged by the next sample (and the paired check, D17).  Caches
 * of at most L1_SHADOW_SLOTS entries keep the full step: their climber's
 * walk is what OLTP's gain over the fixed window comes from (measured with
 * the bound there: OLTP @500 -0.69 points).  The growth half keeps the
 * climber symmetric in log scale: with the shrink bound alone, a window of a
 * few entries grew by a full step (4 -> 342 on test_l1_adapt's zipscan
 * stream) and walked up to 975 (the D17 test's bound is 750). */
static void decrease_window(strata_l1 *c) {
    if (c->window_max <= 1)
        return;
    uint64_t quota = (uint64_t)(-c->adjustment);
    if (quota > c->window_max - 1)
        quota = c->window_max - 1;
    if (shadow_sampled_cache(c) && quota > c->window_max / 2)
        quota = c->window_max / 2;
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
    if (c->shadow.moving) {
        shadow_move(c);
        return;
    }
    demote_from_protected(c);
    int64_t amount = c->adjustment;
    if (amount > 0)
        increase_window(c);
    else if (amount < 0)
        decrease_window(c);
}
