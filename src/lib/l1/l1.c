/*
 * l1.c: the L1 cache's public API: reads, writes, expiry, loading,
 * invalidation, stats (include/strata/l1.h).
 *
 * Concurrency design (measured in docs/notes/l1.md):
 *
 *   readers  hash the key, enter an EBR section (ebr.c), probe the table
 *            (table.c) without a lock, check the exact TTL, copy the value out
 *            or take a reference, and record the hit in their stripe's lossy
 *            ring buffer (Caffeine's read buffer).  No shared cache line is
 *            written on a hit except the reader's own stripe, and a thread
 *            that owns its stripe writes it without read-modify-writes
 *            (docs/notes/l1.md D20).
 *   writers  (set, invalidate, load completion) take the one writer lock,
 *            update table + policy + timer wheel, evict down to capacity and
 *            return: the bound is exact when a set returns.  A reader whose
 *            stripe is half full drains all stripes with a try-lock, so policy
 *            work is batched and never blocks a read.  Exception: a set that
 *            replaces a present key's value at the same cost, without TTL
 *            (~80 % of the sets of a Zipf read/write mix), takes only the
 *            key's segment lock and leaves the policy update to the next
 *            writer-lock holder ("fast replaces", below; docs/notes/l1.md D15);
 *            once the writer lock has been seen contended, so does a set
 *            without TTL of an absent key while the cache has room for it
 *            ("fast inserts", below; D19).
 *
 * Removed entries go through two steps before their memory is freed: the
 * eviction listener (called after the lock is released), then the retire
 * list, from which l1__reclaim frees them once the EBR epoch proves no
 * reader or read-buffer slot can still reach them (table.c).
 *
 * Loading: a miss in get_or_load takes the lock, joins the key's in-flight
 * load or registers a new one (the loads map), and starts the loader outside
 * the lock.  Completion stores the value unless the load was detached by an
 * invalidation or a set in the meantime ("invalidation wins"), then hands each
 * waiter a reference.  Refresh-ahead uses XFetch (Vattani, Chierichetti,
 * Lowenstein, "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015):
 * a hit at time t on a value that took delta to load and goes stale at T
 * triggers one background reload when t - delta * beta * ln(U) >= T, U
 * uniform in (0,1]: the closer to T and the slower the load, the likelier.
 */
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "l1_internal.h"
#include "strata/alloc.h"
#include "strata/status.h"

#define MAX_KEY           65536
#define MAX_VALUE         (1u << 31)
#define MAINT_EVERY       32
#define FAST_INSERT_SLACK 256 /* contended: 1/256 of the capacity is kept free for fast inserts */

static _Thread_local uint64_t tls_rng;

static double rand_unit(void) {
    if (!tls_rng)
        tls_rng = (uint64_t)(uintptr_t)&tls_rng ^ 0x9E3779B97F4A7C15ULL;
    uint64_t x = tls_rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    tls_rng = x;
    return (double)((x >> 11) + 1) / 9007199254740993.0; /* (0, 1] */
}

const char *strata_l1_cause_name(strata_l1_cause cause) {
    static const char *names[] = {"size", "expired", "invalidated", "replaced"};
    return (unsigned)cause < STRATA_L1_CAUSE__COUNT ? names[cause] : "unknown";
}

void strata_l1_config_init(strata_l1_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->capacity = 10000;
    cfg->weigh = STRATA_L1_WEIGH_ENTRIES;
    cfg->policy = STRATA_L1_WTINYLFU;
    cfg->window_pct = 0.01;
    cfg->doorkeeper = 0; /* measured: costs hit ratio at equal sketch size (docs/notes/l1.md) */
    cfg->jitter_pct = 10;
    cfg->fast_replace = 1;
    cfg->fast_insert = STRATA_L1_FAST_INSERT_AUTO;
    cfg->sketch_seed = 0; /* a random seed per cache (policy.c; docs/notes/l1.md D21) */
}

static uint64_t now_ns(const strata_l1 *c) { return strata_clock_now_ns(c->clock); }

/* ---- retire / notify ------------------------------------------------------ */

/* Appends e to the retire list (oldest first, epochs non-decreasing: table.c). */
static void retire(strata_l1 *c, strata_l1_entry *e, uint64_t epoch) {
    e->prev = NULL;
    e->next = (strata_l1_entry *)(uintptr_t)epoch;
    if (c->retired_tail)
        c->retired_tail->prev = e;
    else
        c->retired = e;
    c->retired_tail = e;
    /* One mark per epoch, so reclamation cuts the list without walking it.
     * When the marks run out, the newest absorbs the new epoch: its entries
     * are then freed later than they could be, never earlier. */
    unsigned n = c->nrmark;
    if (n && c->rmark[n - 1].epoch >= epoch) {
        c->rmark[n - 1].last = e;
    } else if (n < sizeof(c->rmark) / sizeof(c->rmark[0])) {
        c->rmark[n].epoch = epoch;
        c->rmark[n].last = e;
        c->nrmark = n + 1;
    } else {
        c->rmark[n - 1].epoch = epoch;
        c->rmark[n - 1].last = e;
    }
}

/* ---- fast replaces (docs/notes/l1.md D15) ----------------------------------
 *
 * A set whose key is present with the same cost and neither the old nor the
 * new value has a TTL (c->fast_replace) does not take the writer lock: under
 * the key's segment lock it swaps the table slot old -> new
 * (l1__table_swap) and pushes the new entry on the segment's pending list
 * (new->prev = old).  Cost and entry count do not change, so the bound holds;
 * the slot store is what a later get sees, so read-your-write holds.  The
 * old entry stays in the policy lists ("replaced") until the writer-lock
 * holder applies the event: new takes old's node, old is counted REPLACED
 * and retired, exactly once, by whoever unlinks the event from the pending
 * list (drain_writes, or settle_key below).
 *
 * Rules every writer-lock path follows:
 *   R1  table_put / table_remove run under the segment lock, after
 *       settle_key has applied the key's pending events: the key's table
 *       entry is then the one in the policy, and no fast replace can
 *       interleave until the segment lock is released.
 *   R2  l1__evict(e) evicts the key's *current* entry: when e was replaced
 *       (still in the policy) or is a replacement not yet applied (found in
 *       the table), settle_key resolves it to the entry now in the table.
 *       Only e's key is settled, so an evictor's other list pointers stay valid.
 *   R3  a pending replacement (L1_Q_PENDING) is ignored by the read drain and
 *       by policy_remove; it joins the policy only through apply_replace.
 *   R4  no load can be mapped for a key whose present entry has no TTL (a
 *       load is registered only for an absent or expired key, and whatever
 *       makes the key present again drops or completes it), so a fast
 *       replace never has to drop one.
 *   R5  with a listener the path is off: REPLACED is then reported before
 *       the set returns, as before. */

/* ---- fast inserts (docs/notes/l1.md D19) -----------------------------------
 *
 * A set without TTL of an absent key, in a cache whose writer lock has been
 * seen contended (c->fast_ins_on, set by lock() unless cfg.fast_insert says
 * OFF or ON: a cache used from one thread never takes this path, so its
 * policy decisions stay exactly those of the locked path), does not take the
 * writer lock either: under the key's segment lock it takes the entry's cost
 * from c->credit, adds the entry to the table (l1__table_add: never a
 * rebuild) and pushes it on the segment's pending list with prev = NULL; the
 * writer-lock holder later adds it to the policy (apply_event), in order
 * with the key's other events (settle_key).
 *
 * The bound: c->credit is cost the writer-lock holder has granted, and
 * c->granted (lock) counts the credit granted and not yet applied, whether
 * still unclaimed, claimed by a set in flight, or pending in a segment.
 * Every lock holder keeps total_cost + granted <= capacity: rebalance()
 * takes the unclaimed credit back, evicts down to capacity - granted (less
 * `slack`, the room kept free for the next fast inserts), then grants what is
 * left.  So the table's cost never exceeds the capacity once a set returns,
 * whichever path it took.  A set that finds no credit takes the locked path,
 * which evicts before it returns, as before.
 *
 * Rules, in addition to R1-R5:
 *   R6  a fast insert checks, under the segment lock, that no load is mapped
 *       for the segment (seg->nloads, changed under that lock by load_map /
 *       load_unmap; a load is mapped under the same lock as the check that its
 *       key is absent, and a completing load is unmapped only after its value
 *       is stored), so "a set wins over an in-flight load" needs no writer
 *       lock: such a set takes the locked path, which drops the load.
 *   R7  a pending insert is L1_Q_PENDING like a pending replace (R3), and
 *       settle_key / drain_writes apply a key's inserts and replaces in the
 *       order they were made (the pending list is per segment, FIFO). */

static void l1_retire_or_notify(strata_l1 *c, strata_l1_entry *e, strata_l1_cause cause) {
    c->n_evict[cause]++;
    if (c->cfg.listener) {
        e->spare = (uint16_t)cause;
        e->next = c->notify;
        c->notify = e;
    } else {
        retire(c, e, l1__ebr_epoch());
    }
}

/* Writer lock held: a pending insert (nw->prev == NULL) joins the policy;
 * a pending replace takes the place of the entry it replaced (nw->prev). */
static void apply_event(strata_l1 *c, strata_l1_entry *nw) {
    strata_l1_entry *old = nw->prev;
    if (!old) {
        nw->next = NULL;
        l1__policy_add(c, nw);
        c->granted -= nw->cost;
        c->n_fast_ins++;
        return;
    }
    l1__policy_replace(c, old, nw);
    c->n_fast++;
    l1_retire_or_notify(c, old, STRATA_L1_CAUSE_REPLACED);
}

static bool same_key(const strata_l1_entry *a, const strata_l1_entry *b) {
    return a->hash == b->hash && a->klen == b->klen &&
           l1_bytes_eq(l1_entry_keyp(a), l1_entry_keyp(b), a->klen);
}

/* Writer lock and seg's lock held: applies the pending replaces of e's key,
 * oldest first, and returns the key's entry in the table now (e if none). */
static strata_l1_entry *settle_key(strata_l1 *c, l1_seg *seg, strata_l1_entry *e) {
    if (!seg->pending)
        return e;
    strata_l1_entry *mine = NULL; /* built by pushing a newest-first list: oldest first */
    strata_l1_entry **pp = &seg->pending;
    while (*pp) {
        strata_l1_entry *x = *pp;
        if (same_key(x, e)) {
            *pp = x->next;
            seg->npending--;
            x->next = mine;
            mine = x;
        } else {
            pp = &x->next;
        }
    }
    strata_l1_entry *cur = e;
    while (mine) {
        strata_l1_entry *nx = mine->next;
        apply_event(c, mine);
        cur = mine;
        mine = nx;
    }
    return cur;
}

/* Writer lock held: applies b[0..n) in order, prefetching as drain() does:
 * a replace's replaced entry 2 x REPLACE_AHEAD events ahead, its list
 * neighbours and sketch words REPLACE_AHEAD ahead (an insert's own sketch
 * words). */
#define REPLACE_AHEAD 4
static void apply_batch(strata_l1 *c, strata_l1_entry **b, unsigned n) {
    bool counting = c->sketch_on && c->cfg.policy != STRATA_L1_LRU;
    for (unsigned i = 0; i < n && i < 2 * REPLACE_AHEAD; i++)
        if (b[i]->prev)
            __builtin_prefetch(b[i]->prev, 1, 1);
    for (unsigned i = 0; i < n; i++) {
        if (i + 2 * REPLACE_AHEAD < n && b[i + 2 * REPLACE_AHEAD]->prev)
            __builtin_prefetch(b[i + 2 * REPLACE_AHEAD]->prev, 1, 1);
        if (i + REPLACE_AHEAD < n) {
            const strata_l1_entry *old = b[i + REPLACE_AHEAD]->prev;
            if (old) {
                __builtin_prefetch(old->prev, 1, 1);
                __builtin_prefetch(old->next, 1, 1);
            }
            if (counting)
                l1__sketch_prefetch(&c->sketch, b[i + REPLACE_AHEAD]->hash);
        }
        apply_event(c, b[i]);
    }
}

/* Writer lock held: applies every pending fast write. */
static void drain_writes(strata_l1 *c) {
    if (!atomic_load_explicit(&c->pending_mask, memory_order_relaxed))
        return;
    uint64_t m = atomic_exchange_explicit(&c->pending_mask, 0, memory_order_acquire);
    /* Oldest first per segment (a key's events never span segments), in
     * batches whose replaced entries (and their list neighbours, a few events
     * ahead) and sketch words are prefetched: they are cold by now, and this
     * runs under the writer lock. */
    strata_l1_entry *batch[64];
    unsigned n = 0;
    while (m) {
        l1_seg *seg = &c->segs[__builtin_ctzll(m)];
        m &= m - 1;
        pthread_mutex_lock(&seg->lock);
        strata_l1_entry *list = seg->pending;
        seg->pending = NULL;
        seg->npending = 0;
        pthread_mutex_unlock(&seg->lock);
        strata_l1_entry *fifo = NULL;
        while (list) {
            strata_l1_entry *nx = list->next;
            list->next = fifo;
            fifo = list;
            list = nx;
        }
        while (fifo) {
            batch[n++] = fifo;
            fifo = fifo->next;
            if (n == 64) {
                apply_batch(c, batch, n);
                n = 0;
            }
        }
    }
    if (n)
        apply_batch(c, batch, n);
}

void l1__evict(strata_l1 *c, strata_l1_entry *e, strata_l1_cause cause) {
    l1_seg *seg = l1__seg_of(c, e->hash);
    pthread_mutex_lock(&seg->lock);
    e = settle_key(c, seg, e); /* R2 */
    (void)l1__table_remove(c, e);
    pthread_mutex_unlock(&seg->lock);
    l1__policy_remove(c, e);
    l1__wheel_deschedule(&c->wheel, e);
    l1_retire_or_notify(c, e, cause);
}

/* The writer lock: try for up to LOCK_SPIN_NS before sleeping in the kernel.
 * Measured (docs/notes/l1.md D15): at 2 threads the holder is nearly always
 * running and done within a few microseconds (a drain, an eviction), while a
 * futex sleep + wake costs both threads more than that; glibc's adaptive
 * mutex gives up after ~100 pauses.  Bounded, so a descheduled holder (the
 * case a pure spin lock lost in D10) costs at most LOCK_SPIN_NS. */
#define LOCK_SPIN_NS 20000
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void lock(strata_l1 *c) {
    if (pthread_mutex_trylock(&c->lock) == 0)
        return;
    if (c->cfg.fast_insert == STRATA_L1_FAST_INSERT_AUTO &&
        !atomic_load_explicit(&c->fast_ins_on, memory_order_relaxed))
        atomic_store_explicit(&c->fast_ins_on, 1, memory_order_relaxed); /* contended */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        for (int i = 0; i < 64; i++) {
            cpu_relax();
            if ((i & 7) == 7 && pthread_mutex_trylock(&c->lock) == 0)
                return;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) > LOCK_SPIN_NS)
            break;
    }
    pthread_mutex_lock(&c->lock);
}

/* Releases the lock, then tells the listener about what was removed under it. */
static void unlock(strata_l1 *c) {
    strata_l1_entry *list = c->notify;
    strata_l1_entry *tofree = c->tofree;
    c->notify = NULL;
    c->tofree = NULL;
    pthread_mutex_unlock(&c->lock);
    l1__free_reclaimed(tofree);
    while (list) {
        strata_l1_entry *nx = list->next;
        c->cfg.listener(c->cfg.listener_ctx, list, (strata_l1_cause)list->spare);
        strata_l1_entry *top = atomic_load(&c->notified);
        do {
            list->prev = top;
        } while (!atomic_compare_exchange_weak(&c->notified, &top, list));
        list = nx;
    }
}

/* ---- maintenance (lock held) ---------------------------------------------- */

/* Applies the buffered reads.  A stripe's entries are first collected, then
 * applied with the header of the entry 2 x PREFETCH_AHEAD places later and
 * the sketch words of the one PREFETCH_AHEAD places later prefetched: the four counters of a key sit in four random words of a sketch
 * that outgrows the cache at ~100k entries, and overlapping those misses is
 * what Caffeine 3's blocked layout bought, without its collisions. */
#define PREFETCH_AHEAD 4
static void drain(strata_l1 *c) {
    strata_l1_entry *batch[L1_RB_SIZE];
    bool counting = c->sketch_on && c->cfg.policy != STRATA_L1_LRU;
    for (unsigned s = 0; s <= L1_NSTRIPE; s++) {
        l1_stripe *st = &c->stripes[s];
        uint64_t h = atomic_load_explicit(&st->head, memory_order_relaxed);
        uint64_t t = atomic_load_explicit(&st->tail, memory_order_acquire);
        unsigned n = 0;
        while (h < t) {
            _Atomic(strata_l1_entry *) *slot = &st->slots[h & (L1_RB_SIZE - 1)];
            strata_l1_entry *e = atomic_load_explicit(slot, memory_order_acquire);
            if (!e)
                break; /* claimed, not yet written */
            atomic_store_explicit(slot, NULL, memory_order_relaxed);
            batch[n++] = e;
            h++;
        }
        atomic_store_explicit(&st->head, h, memory_order_release);
        for (unsigned i = 0; i < n && i < 2 * PREFETCH_AHEAD; i++)
            __builtin_prefetch(batch[i], 1, 1);
        if (counting)
            for (unsigned i = 0; i < n && i < PREFETCH_AHEAD; i++)
                l1__sketch_prefetch(&c->sketch, batch[i]->hash);
        for (unsigned i = 0; i < n; i++) {
            if (i + 2 * PREFETCH_AHEAD < n)
                __builtin_prefetch(batch[i + 2 * PREFETCH_AHEAD], 1, 1); /* its header */
            if (counting && i + PREFETCH_AHEAD < n)
                l1__sketch_prefetch(&c->sketch, batch[i + PREFETCH_AHEAD]->hash);
            l1__policy_access(c, batch[i]);
        }
    }
}

/* Writer lock held: evicts down to the capacity and, once the lock has been
 * seen contended, keeps the fast inserts' credit topped up (see "fast
 * inserts"): unclaimed credit is taken back, the policy evicts down to
 * capacity - granted - slack, and what is left up to the capacity is granted
 * again.  Uncontended it is the plain "evict down to capacity". */
static void rebalance(strata_l1 *c) {
    bool fast = atomic_load_explicit(&c->fast_ins_on, memory_order_relaxed) && c->fast_replace;
    if (fast) {
        int64_t back = atomic_exchange_explicit(&c->credit, 0, memory_order_relaxed);
        c->granted -= (uint64_t)back;
        uint64_t keep = c->granted + c->slack;
        c->evict_to = keep < c->capacity ? c->capacity - keep : 0;
    }
    if (c->total_cost > c->evict_to || c->window_size > c->window_max)
        l1__policy_evict(c);
    if (fast) {
        uint64_t used = c->total_cost + c->granted;
        if (used < c->capacity) {
            c->granted += c->capacity - used;
            atomic_fetch_add_explicit(&c->credit, (int64_t)(c->capacity - used),
                                      memory_order_relaxed);
        }
        c->evict_to = c->capacity;
    }
}

static void expire_cb(void *ctx, strata_l1_entry *e) {
    l1__evict((strata_l1 *)ctx, e, STRATA_L1_CAUSE_EXPIRED);
}

static void stripe_counts(l1_stripe *st, uint64_t v[4]) {
    v[0] += atomic_load_explicit(&st->hits, memory_order_relaxed);
    v[1] += atomic_load_explicit(&st->misses, memory_order_relaxed);
    v[2] += atomic_load_explicit(&st->stale, memory_order_relaxed);
    v[3] += atomic_load_explicit(&st->negative, memory_order_relaxed);
}

static void report_metrics(strata_l1 *c) {
    if (!c->cfg.metrics)
        return;
    uint64_t v[16] = {0};
    for (unsigned s = 0; s <= L1_NSTRIPE; s++)
        stripe_counts(&c->stripes[s], v);
    v[4] = c->n_loads;
    v[5] = c->n_load_fail;
    v[6] = c->n_dropped;
    for (int i = 0; i < STRATA_L1_CAUSE__COUNT; i++)
        v[7 + i] = c->n_evict[i];
    strata_counter *ctr[11] = {c->m_hits,     c->m_misses,    c->m_stale,   c->m_negative,
                               c->m_loads,    c->m_load_fail, c->m_dropped, c->m_evict[0],
                               c->m_evict[1], c->m_evict[2],  c->m_evict[3]};
    for (int i = 0; i < 11; i++) {
        if (ctr[i] && v[i] > c->rep[i])
            strata_counter_add(ctr[i], v[i] - c->rep[i]);
        c->rep[i] = v[i];
    }
    if (c->m_entries)
        strata_gauge_set(c->m_entries, (int64_t)c->entries);
    if (c->m_cost)
        strata_gauge_set(c->m_cost, (int64_t)c->total_cost);
    if (c->m_window)
        strata_gauge_set(c->m_window, (int64_t)c->window_max);
}

static void maintain_locked(strata_l1 *c, bool full) {
    uint64_t epoch = 0;
    if (full) {
        /* Entries the listener has seen join the retire list at today's epoch. */
        strata_l1_entry *n = atomic_exchange(&c->notified, NULL);
        uint64_t cur = l1__ebr_epoch();
        while (n) {
            strata_l1_entry *nx = n->prev;
            retire(c, n, cur);
            n = nx;
        }
        epoch = l1__ebr_advance(); /* observe the epoch BEFORE draining (see table.c) */
    }
    drain_writes(c); /* first: buffered reads of the new entries then count */
    drain(c);
    if (c->has_ttl)
        l1__wheel_advance(&c->wheel, now_ns(c), expire_cb, c);
    rebalance(c);
    l1__policy_climb(c);
    if (full) {
        l1__reclaim(c, epoch);
        report_metrics(c);
    }
    atomic_store_explicit(&c->size_snapshot, c->entries, memory_order_relaxed);
    atomic_store_explicit(&c->cost_snapshot, c->total_cost, memory_order_relaxed);
}

/* After a write or a full read buffer: cheap drain every time, the full cycle
 * every MAINT_EVERY calls. */
static void maintain_step(strata_l1 *c) {
    maintain_locked(c, (++c->ops_since_reclaim % MAINT_EVERY) == 0);
}

/* ---- deferred maintenance (cfg.executor) ------------------------------------
 *
 * With an executor, the calls that would run maintain_step on a reader's or
 * a lock-free writer's thread queue one task instead.  maint_scheduled keeps
 * one task queued at a time (it is cleared when the task starts, so triggers
 * during a task queue the next one); maint_tasks counts the tasks handed
 * over and not finished, for strata_l1_destroy to wait on.  The decrement
 * is a task's last touch of the cache. */

static void maint_task(void *arg) {
    strata_l1 *c = arg;
    lock(c);
    atomic_store_explicit(&c->maint_scheduled, 0, memory_order_relaxed);
    maintain_step(c);
    unlock(c);
    atomic_fetch_sub_explicit(&c->maint_tasks, 1, memory_order_release);
}

/* Called with no cache lock held (execute may run the task at once). */
static void schedule_maintenance(strata_l1 *c) {
    if (atomic_load_explicit(&c->maint_scheduled, memory_order_relaxed) ||
        atomic_exchange_explicit(&c->maint_scheduled, 1, memory_order_acq_rel))
        return;
    atomic_fetch_add_explicit(&c->maint_tasks, 1, memory_order_relaxed);
    c->cfg.executor.execute(c->cfg.executor.ctx, maint_task, c);
}

void strata_l1_maintain(strata_l1 *c) {
    lock(c);
    maintain_locked(c, true);
    unlock(c);
}

/* ---- create / destroy ----------------------------------------------------- */

static void register_metrics(strata_l1 *c) {
    strata_metrics *m = c->cfg.metrics;
    char lbl[192];
    snprintf(lbl, sizeof(lbl), "cache=\"%s\"", c->name);
    c->m_hits =
        strata_metrics_counter(m, "strata_l1_hits_total", "L1 reads that found a fresh value", lbl);
    c->m_misses =
        strata_metrics_counter(m, "strata_l1_misses_total", "L1 reads that found nothing", lbl);
    c->m_stale = strata_metrics_counter(m, "strata_l1_stale_hits_total",
                                        "L1 reads served stale (past soft TTL)", lbl);
    c->m_negative = strata_metrics_counter(m, "strata_l1_negative_hits_total",
                                           "L1 reads of a cached failure", lbl);
    c->m_loads = strata_metrics_counter(m, "strata_l1_loads_total", "L1 loads started", lbl);
    c->m_load_fail =
        strata_metrics_counter(m, "strata_l1_load_failures_total", "L1 loads that failed", lbl);
    c->m_dropped = strata_metrics_counter(m, "strata_l1_loads_dropped_total",
                                          "L1 load results dropped by an invalidation or set", lbl);
    for (int i = 0; i < STRATA_L1_CAUSE__COUNT; i++) {
        char l2[256];
        snprintf(l2, sizeof(l2), "%s,cause=\"%s\"", lbl, strata_l1_cause_name((strata_l1_cause)i));
        c->m_evict[i] = strata_metrics_counter(m, "strata_l1_evictions_total",
                                               "L1 entries removed, by cause", l2);
    }
    c->m_entries = strata_metrics_gauge(m, "strata_l1_entries", "L1 entries now", lbl);
    c->m_cost = strata_metrics_gauge(m, "strata_l1_cost", "L1 total cost now", lbl);
    c->m_window =
        strata_metrics_gauge(m, "strata_l1_window_size", "L1 W-TinyLFU window size (cost)", lbl);
}

int strata_l1_create(const strata_l1_config *cfg, strata_l1 **out) {
    *out = NULL;
    if (!cfg || cfg->capacity == 0 || cfg->jitter_pct > 50 || cfg->window_pct <= 0 ||
        cfg->window_pct >= 1 || (unsigned)cfg->policy > STRATA_L1_WTINYLFU_FIXED ||
        (unsigned)cfg->weigh > STRATA_L1_WEIGH_BYTES || cfg->refresh_beta < 0 ||
        (unsigned)cfg->fast_insert > STRATA_L1_FAST_INSERT_ON)
        return STRATA_EINVAL;
    strata_l1 *c = strata_calloc(1, sizeof(*c));
    if (!c)
        return STRATA_ENOMEM;
    c->cfg = *cfg;
    c->capacity = cfg->capacity;
    if (c->cfg.weigh == STRATA_L1_WEIGH_BYTES && c->cfg.expected_entries == 0)
        c->cfg.expected_entries = cfg->capacity / 256 + 16;
    uint64_t expected =
        c->cfg.weigh == STRATA_L1_WEIGH_ENTRIES ? c->capacity : c->cfg.expected_entries;
    if (expected > (1ULL << 32))
        expected = 1ULL << 32;
    c->name = strata_strdup(cfg->name ? cfg->name : "l1");
    c->clock = cfg->clock ? cfg->clock : strata_clock_system();
    c->cfg.name = NULL;
    c->loads_cap = 64;
    c->loads = strata_calloc(c->loads_cap, sizeof(*c->loads));
    int rc = (c->name && c->loads) ? STRATA_OK : STRATA_ENOMEM;
    if (rc == STRATA_OK)
        rc = l1__table_init(c, expected);
    if (rc == STRATA_OK)
        rc = l1__policy_init(c);
    if (rc != STRATA_OK) {
        l1__policy_free(c);
        l1__table_free(c);
        strata_free(c->loads);
        strata_free(c->name);
        strata_free(c);
        return rc;
    }
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&c->lock, &ma);
    for (unsigned i = 0; i < L1_NSEG; i++)
        pthread_mutex_init(&c->segs[i].lock, &ma);
    pthread_mutexattr_destroy(&ma);
    c->fast_replace = cfg->fast_replace && !cfg->listener; /* R5 */
    c->evict_to = c->capacity;
    if (cfg->fast_insert == STRATA_L1_FAST_INSERT_ON)
        atomic_store_explicit(&c->fast_ins_on, 1, memory_order_relaxed);
    c->slack = c->capacity / FAST_INSERT_SLACK; /* measured: docs/notes/l1.md D19 */
    l1__wheel_init(&c->wheel, now_ns(c));
    if (c->cfg.metrics)
        register_metrics(c);
    *out = c;
    return STRATA_OK;
}

static void drop_cache_ref(strata_l1_entry *e) {
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        strata_free(e);
}

static void destroy_entry_cb(void *ctx, strata_l1_entry *e) {
    (void)ctx;
    drop_cache_ref(e);
}

void strata_l1_destroy(strata_l1 **pc) {
    if (!pc || !*pc)
        return;
    strata_l1 *c = *pc;
    *pc = NULL;
    while (atomic_load_explicit(&c->maint_tasks, memory_order_acquire) > 0)
        sched_yield(); /* tasks handed to cfg.executor still to run */
    lock(c);
    drain_writes(c); /* replaced entries leave the policy lists for the retire list */
    report_metrics(c);
    if (c->m_entries)
        strata_gauge_set(c->m_entries, 0);
    if (c->m_cost)
        strata_gauge_set(c->m_cost, 0);
    l1__table_foreach(c, destroy_entry_cb, NULL);
    strata_l1_entry *n = atomic_exchange(&c->notified, NULL);
    while (n) {
        strata_l1_entry *nx = n->prev;
        drop_cache_ref(n);
        n = nx;
    }
    l1__reclaim(c, UINT64_MAX); /* nobody reads any more: free the whole list */
    l1__free_reclaimed(c->tofree);
    c->tofree = NULL;
    for (size_t i = 0; i < c->loads_cap; i++) {
        strata_l1_load *ld = c->loads[i];
        while (ld) {
            strata_l1_load *nx = ld->hnext;
            ld->mapped = false;
            ld->hnext = NULL;
            ld = nx;
        }
    }
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_destroy(&c->lock);
    for (unsigned i = 0; i < L1_NSEG; i++)
        pthread_mutex_destroy(&c->segs[i].lock);
    l1__policy_free(c);
    l1__table_free(c);
    strata_free(c->loads);
    strata_free(c->name);
    strata_free(c);
}

/* ---- entries -------------------------------------------------------------- */

static strata_l1_entry *entry_new(const void *key, size_t klen, uint32_t hash, const void *val,
                                  size_t vlen, bool ttl) {
    size_t size = sizeof(strata_l1_entry) + (ttl ? sizeof(l1_ttl) : 0) + klen + vlen;
    strata_l1_entry *e = strata_malloc(size);
    if (!e)
        return NULL;
    e->prev = e->next = NULL;
    e->hash = hash;
    atomic_init(&e->refs, 1);
    e->klen = (uint32_t)klen;
    e->vlen = (uint32_t)vlen;
    e->cost = 1;
    e->queue = L1_Q_NONE;
    e->flags = ttl ? L1_F_TTL : 0;
    e->spare = 0;
    if (ttl)
        memset(l1_entry_data(e), 0, sizeof(l1_ttl));
    memcpy(l1_entry_keyp(e), key, klen);
    if (vlen)
        memcpy(l1_entry_valp(e), val, vlen);
    return e;
}

const void *strata_l1_entry_key(const strata_l1_entry *e, size_t *klen) {
    if (klen)
        *klen = e->klen;
    return l1_entry_keyp(e);
}

const void *strata_l1_entry_value(const strata_l1_entry *e, size_t *vlen) {
    if (vlen)
        *vlen = e->vlen;
    return l1_entry_valp(e);
}

int strata_l1_entry_status(const strata_l1_entry *e) {
    return (e->flags & L1_F_NEG) ? l1_entry_ttl(e)->neg_status : STRATA_OK;
}

strata_l1_entry *strata_l1_acquire_entry(const strata_l1_entry *e) {
    strata_l1_entry *m = (strata_l1_entry *)e;
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void strata_l1_release(strata_l1_entry **pe) {
    if (!pe || !*pe)
        return;
    strata_l1_entry *e = *pe;
    *pe = NULL;
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        strata_free(e);
}

static uint32_t entry_cost(const strata_l1 *c, size_t klen, size_t vlen, uint32_t given) {
    if (given)
        return given;
    if (c->cfg.weigh == STRATA_L1_WEIGH_BYTES) {
        uint64_t v = (uint64_t)klen + vlen + STRATA_L1_ENTRY_OVERHEAD;
        return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
    }
    return 1;
}

static uint64_t jittered(uint64_t ttl, unsigned pct) {
    if (!pct || !ttl)
        return ttl;
    double f = 1.0 + ((double)pct / 100.0) * (2.0 * rand_unit() - 1.0);
    double v = (double)ttl * f;
    return v < 1 ? 1 : (uint64_t)v;
}

/* ---- the loads map (lock held) -------------------------------------------- */

static strata_l1_load **load_slot(strata_l1 *c, const void *key, size_t klen, uint32_t hash) {
    strata_l1_load **pp = &c->loads[hash & (c->loads_cap - 1)];
    while (*pp &&
           !((*pp)->hash == hash && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

static void load_unmap(strata_l1 *c, strata_l1_load *ld) {
    strata_l1_load **pp = &c->loads[ld->hash & (c->loads_cap - 1)];
    while (*pp && *pp != ld)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = ld->hnext;
        c->nloads--;
        l1_seg *seg = l1__seg_of(c, ld->hash);
        pthread_mutex_lock(&seg->lock); /* R6 */
        seg->nloads--;
        pthread_mutex_unlock(&seg->lock);
    }
    ld->hnext = NULL;
    ld->mapped = false;
}

/* Writer lock and the key's segment lock held, the key checked absent or
 * current under the latter (R6). */
static void load_map(strata_l1 *c, strata_l1_load *ld) {
    l1__seg_of(c, ld->hash)->nloads++;
    if (c->nloads >= c->loads_cap) { /* grow; on ENOMEM chains just get longer */
        size_t ncap = c->loads_cap * 2;
        strata_l1_load **nb = strata_calloc(ncap, sizeof(*nb));
        if (nb) {
            for (size_t i = 0; i < c->loads_cap; i++) {
                strata_l1_load *x = c->loads[i];
                while (x) {
                    strata_l1_load *nx = x->hnext;
                    x->hnext = nb[x->hash & (ncap - 1)];
                    nb[x->hash & (ncap - 1)] = x;
                    x = nx;
                }
            }
            strata_free(c->loads);
            c->loads = nb;
            c->loads_cap = ncap;
        }
    }
    strata_l1_load **b = &c->loads[ld->hash & (c->loads_cap - 1)];
    ld->hnext = *b;
    *b = ld;
    ld->mapped = true;
    c->nloads++;
}

/* An invalidation or set detaches the key's in-flight load: its result will not be stored. */
static void drop_load(strata_l1 *c, const void *key, size_t klen, uint32_t hash) {
    strata_l1_load *ld = *load_slot(c, key, klen, hash);
    if (ld) {
        load_unmap(c, ld);
        c->n_dropped++;
    }
}

/* ---- writes ---------------------------------------------------------------- */

static void detach_old(strata_l1 *c, strata_l1_entry *old) {
    l1__policy_remove(c, old);
    l1__wheel_deschedule(&c->wheel, old);
    l1_retire_or_notify(c, old, STRATA_L1_CAUSE_REPLACED);
}

/* Lock held: publishes e (refs = 1, the cache's) for its key. */
static int store_locked(strata_l1 *c, strata_l1_entry *e, uint16_t tag) {
    strata_l1_entry *old = NULL;
    drain_writes(c);
    if (!c->cfg.executor.execute)
        drain(c); /* reads that happened before this write count before its eviction */
    l1_seg *seg = l1__seg_of(c, e->hash);
    pthread_mutex_lock(&seg->lock);
    (void)settle_key(c, seg, e); /* R1 */
    int rc = l1__table_put(c, e, tag, &old);
    pthread_mutex_unlock(&seg->lock);
    if (rc < 0)
        return rc;
    if (old)
        detach_old(c, old);
    l1__policy_add(c, e);
    if (e->flags & L1_F_TTL) {
        l1__wheel_schedule(&c->wheel, e);
        c->has_ttl = 1;
    }
    /* Evict down to capacity; the new entry itself is never the one to go
     * while anything else can (read-your-write: no silently dropped set). */
    c->pinned = e;
    rebalance(c);
    c->pinned = NULL;
    return STRATA_OK;
}

static void fill_ttl(strata_l1_entry *e, uint64_t now, uint64_t soft, uint64_t stale) {
    l1_ttl *t = l1_entry_ttl(e);
    t->soft_ns = now + soft;
    t->hard_ns = t->soft_ns + stale;
}

#define FAST_DRAIN_EVERY 8  /* pending writes per segment before a set tries to apply them */
#define FAST_DRAIN_FORCE 64 /* ... before it waits for the writer lock to apply them */

/* Seg's lock held: takes cost from the fast inserts' credit, if there is that much. */
static bool claim_credit(strata_l1 *c, uint32_t cost, int64_t *left) {
    int64_t cr = atomic_load_explicit(&c->credit, memory_order_relaxed);
    do {
        if (cr < (int64_t)cost)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&c->credit, &cr, cr - (int64_t)cost,
                                                    memory_order_relaxed, memory_order_relaxed));
    *left = cr - (int64_t)cost;
    return true;
}

/* The fast replace and the fast insert (see the comments at the top of the
 * file).  e is private (no TTL); returns false, changing nothing, when e's
 * key is present with a different cost or a TTL, or absent while fast
 * inserts are off, a load is mapped in the segment (R6), the credit is short
 * or the segment needs a rebuild: the caller then takes the locked path. */
static bool fast_write(strata_l1 *c, strata_l1_entry *e, uint16_t tag) {
    l1_seg *seg = l1__seg_of(c, e->hash);
    bool absent = false, done = false, insert = false;
    int64_t left = INT64_MAX;
    e->queue = L1_Q_PENDING; /* R3: written before the slot store publishes e */
    pthread_mutex_lock(&seg->lock);
    strata_l1_entry *old = l1__table_swap(c, e, tag, &absent);
    if (old) {
        e->prev = old;
        done = true;
    } else if (absent && seg->nloads == 0 &&
               atomic_load_explicit(&c->fast_ins_on, memory_order_relaxed) &&
               claim_credit(c, e->cost, &left)) {
        if (l1__table_add(c, e)) {
            e->prev = NULL; /* an insert (R7) */
            done = insert = true;
        } else {
            atomic_fetch_add_explicit(&c->credit, (int64_t)e->cost, memory_order_relaxed);
        }
    }
    uint32_t n = 0;
    if (done) {
        e->next = seg->pending;
        if (!seg->pending)
            atomic_fetch_or_explicit(&c->pending_mask, 1ULL << (seg - c->segs),
                                     memory_order_release);
        seg->pending = e;
        n = ++seg->npending;
    }
    pthread_mutex_unlock(&seg->lock);
    if (!done) {
        e->queue = L1_Q_NONE;
        return false;
    }
    /* Apply the segment's events every FAST_DRAIN_EVERY, and top the credit
     * up when it runs low, if the lock is free; wait for it when a segment
     * has FAST_DRAIN_FORCE events queued. */
    bool low = left < (int64_t)(c->slack / 2 + 1);
    if (n % FAST_DRAIN_EVERY == 0 || low) {
        if (n >= FAST_DRAIN_FORCE) {
            lock(c);
        } else if (c->cfg.executor.execute) {
            schedule_maintenance(c);
            return true;
        } else if (pthread_mutex_trylock(&c->lock) != 0) {
            return true;
        }
        /* an insert is not its own victim (read-your-write); e may be applied,
         * even evicted by now: it is only compared with */
        c->pinned = insert ? e : NULL;
        maintain_step(c);
        c->pinned = NULL;
        unlock(c);
    }
    return true;
}

int strata_l1_set(strata_l1 *c, const void *key, size_t klen, const void *val, size_t vlen,
                  const strata_l1_set_opts *opts) {
    if (!c || !key || klen == 0 || klen > MAX_KEY || (!val && vlen))
        return STRATA_EINVAL;
    if (vlen >= MAX_VALUE)
        return STRATA_ETOOBIG;
    uint32_t cost = entry_cost(c, klen, vlen, opts ? opts->cost : 0);
    if (cost > c->capacity)
        return STRATA_ETOOBIG;
    uint64_t ttl = opts && opts->ttl_ns ? opts->ttl_ns : c->cfg.ttl_ns;
    uint64_t stale = opts ? opts->stale_ns : 0;
    if (opts && opts->no_ttl)
        ttl = stale = 0;
    if (opts && opts->jitter)
        ttl = jittered(ttl, c->cfg.jitter_pct);
    uint16_t tag;
    uint32_t hash = l1__hash(c, key, klen, &tag);
    strata_l1_entry *e = entry_new(key, klen, hash, val, vlen, ttl != 0);
    if (!e)
        return STRATA_ENOMEM;
    e->cost = cost;
    if (ttl)
        fill_ttl(e, now_ns(c), ttl, stale);
    if (c->fast_replace && !ttl && fast_write(c, e, tag))
        return STRATA_OK;
    lock(c);
    int rc = store_locked(c, e, tag);
    bool deferred = c->cfg.executor.execute != NULL;
    if (rc == STRATA_OK) {
        drop_load(c, key, klen, hash); /* a set wins over an in-flight load */
        if (!deferred)
            maintain_step(c);
    }
    unlock(c);
    if (rc < 0)
        strata_free(e);
    else if (deferred)
        schedule_maintenance(c);
    return rc;
}

/* ---- reads ----------------------------------------------------------------- */

/* Appends e to the stripe's ring (lossy when full or contended).  An owned
 * stripe has one producer, its owner, so a plain store claims the slot. */
static inline void record_read(l1_stripe *st, strata_l1_entry *e, bool own) {
    uint64_t t = atomic_load_explicit(&st->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&st->head, memory_order_acquire);
    if (t - h >= L1_RB_SIZE)
        return; /* full: lossy */
    if (own)
        atomic_store_explicit(&st->tail, t + 1, memory_order_relaxed);
    else if (!atomic_compare_exchange_strong_explicit(&st->tail, &t, t + 1, memory_order_acq_rel,
                                                      memory_order_relaxed))
        return; /* contended: lossy */
    atomic_store_explicit(&st->slots[t & (L1_RB_SIZE - 1)], e, memory_order_release);
}

static inline void maybe_drain(strata_l1 *c, l1_stripe *st) {
    uint64_t t = atomic_load_explicit(&st->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&st->head, memory_order_relaxed);
    if (t - h < L1_RB_SIZE / 2)
        return;
    if (c->cfg.executor.execute) {
        schedule_maintenance(c);
        return;
    }
    if (pthread_mutex_trylock(&c->lock) != 0)
        return;
    maintain_step(c);
    unlock(c);
}

/* Classifies a found entry at time now (loaded lazily); -1 = expired. */
static inline int classify(const strata_l1 *c, const strata_l1_entry *e, uint64_t *now) {
    if (!(e->flags & L1_F_TTL))
        return STRATA_L1_HIT;
    const l1_ttl *t = l1_entry_ttl(e);
    if (!*now)
        *now = now_ns(c);
    if (*now >= t->hard_ns)
        return -1;
    if (e->flags & L1_F_NEG)
        return STRATA_L1_NEGATIVE;
    return *now >= t->soft_ns ? STRATA_L1_STALE : STRATA_L1_HIT;
}

static inline void count(l1_stripe *st, int outcome, bool own) {
    _Atomic uint64_t *p = outcome == STRATA_L1_HIT        ? &st->hits
                          : outcome == STRATA_L1_STALE    ? &st->stale
                          : outcome == STRATA_L1_NEGATIVE ? &st->negative
                                                          : &st->misses;
    if (own) /* the only writer: no read-modify-write */
        atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + 1,
                              memory_order_relaxed);
    else
        atomic_fetch_add_explicit(p, 1, memory_order_relaxed);
}

/* Whether the thread of EBR record r owns st (claiming it if nobody does). */
static inline bool stripe_own(l1_stripe *st, int r) {
    int o = atomic_load_explicit(&st->owner, memory_order_relaxed);
    if (o == r + 1)
        return true;
    if (o != 0 || r >= L1_EBR_MAX)
        return false;
    return atomic_compare_exchange_strong_explicit(&st->owner, &o, r + 1, memory_order_relaxed,
                                                   memory_order_relaxed);
}

/* The lock-free read: returns the outcome or STRATA_ENOTFOUND; calls fn on the entry inside the section. */
typedef struct read_ctx {
    void *buf;
    size_t cap;
    size_t vlen;
    strata_buf *out;
    strata_l1_entry *ref;
    int rc;
    uint64_t now;
} read_ctx;

enum { READ_COPY, READ_BUF, READ_REF };

static inline __attribute__((always_inline)) int do_read(strata_l1 *c, const void *key, size_t klen,
                                                         int mode, read_ctx *rx) {
    if (!c || !key || klen == 0 || klen > MAX_KEY)
        return STRATA_EINVAL;
    uint16_t tag;
    uint32_t hash = l1__hash(c, key, klen, &tag);
    int r = l1__ebr_enter();
    l1_stripe *st = &c->stripes[r & (L1_NSTRIPE - 1)];
    bool own = stripe_own(st, r);
    if (!own)
        st = &c->stripes[L1_NSTRIPE];
    strata_l1_entry *e = l1__table_find(c, key, klen, hash, tag);
    int oc = e ? classify(c, e, &rx->now) : -1;
    if (oc < 0) {
        l1__ebr_exit(r);
        count(st, -1, own);
        return STRATA_ENOTFOUND;
    }
    int rc = oc;
    rx->vlen = e->vlen;
    if (mode == READ_COPY) {
        if (rx->buf && e->vlen <= rx->cap)
            l1_bytes_copy(rx->buf, l1_entry_valp(e), e->vlen);
        else if (rx->buf)
            rc = STRATA_ERANGE;
    } else if (mode == READ_BUF) {
        if (strata_buf_append(rx->out, l1_entry_valp(e), e->vlen) < 0)
            rc = STRATA_ENOMEM;
    } else {
        rx->ref = strata_l1_acquire_entry(e);
    }
    record_read(st, e, own);
    l1__ebr_exit(r);
    count(st, oc, own);
    maybe_drain(c, st);
    return rc;
}

int strata_l1_get_copy(strata_l1 *c, const void *key, size_t klen, void *buf, size_t cap,
                       size_t *vlen) {
    read_ctx rx = {buf, cap, 0, NULL, NULL, 0, 0};
    int rc = do_read(c, key, klen, READ_COPY, &rx);
    if (vlen && (rc >= 0 || rc == STRATA_ERANGE))
        *vlen = rx.vlen;
    return rc;
}

int strata_l1_get_buf(strata_l1 *c, const void *key, size_t klen, strata_buf *out) {
    if (!out)
        return STRATA_EINVAL;
    read_ctx rx = {NULL, 0, 0, out, NULL, 0, 0};
    return do_read(c, key, klen, READ_BUF, &rx);
}

int strata_l1_acquire(strata_l1 *c, const void *key, size_t klen, strata_l1_entry **pe) {
    if (!pe)
        return STRATA_EINVAL;
    *pe = NULL;
    read_ctx rx = {NULL, 0, 0, NULL, NULL, 0, 0};
    int rc = do_read(c, key, klen, READ_REF, &rx);
    *pe = rx.ref;
    return rc;
}

/* ---- invalidation ------------------------------------------------------------ */

int strata_l1_invalidate(strata_l1 *c, const void *key, size_t klen) {
    if (!c || !key || klen == 0 || klen > MAX_KEY)
        return STRATA_EINVAL;
    uint16_t tag;
    uint32_t hash = l1__hash(c, key, klen, &tag);
    lock(c);
    drop_load(c, key, klen, hash);
    strata_l1_entry *e = l1__table_find(c, key, klen, hash, tag);
    if (e)
        l1__evict(c, e, STRATA_L1_CAUSE_INVALIDATED);
    maintain_step(c);
    unlock(c);
    return e ? STRATA_OK : STRATA_ENOTFOUND;
}

typedef struct prefix_ctx {
    strata_l1 *c;
    const void *p;
    size_t n;
    int64_t removed;
} prefix_ctx;

static void prefix_cb(void *ctx, strata_l1_entry *e) {
    prefix_ctx *px = ctx;
    if (e->klen >= px->n && memcmp(l1_entry_keyp(e), px->p, px->n) == 0) {
        l1__evict(px->c, e, STRATA_L1_CAUSE_INVALIDATED);
        px->removed++;
    }
}

int64_t strata_l1_invalidate_prefix(strata_l1 *c, const void *prefix, size_t plen) {
    if (!c || (!prefix && plen))
        return STRATA_EINVAL;
    lock(c);
    for (size_t i = 0; i < c->loads_cap; i++) {
        strata_l1_load *ld = c->loads[i];
        while (ld) {
            strata_l1_load *nx = ld->hnext;
            if (ld->klen >= plen && memcmp(ld->key, prefix, plen) == 0) {
                load_unmap(c, ld);
                c->n_dropped++;
            }
            ld = nx;
        }
    }
    prefix_ctx px = {c, prefix, plen, 0};
    l1__table_foreach(c, prefix_cb, &px);
    maintain_locked(c, true);
    unlock(c);
    return px.removed;
}

int64_t strata_l1_clear(strata_l1 *c) {
    if (!c)
        return STRATA_EINVAL;
    return strata_l1_invalidate_prefix(c, "", 0);
}

/* ---- loading ----------------------------------------------------------------- */

const void *strata_l1_load_key(const strata_l1_load *ld, size_t *klen) {
    if (klen)
        *klen = ld->klen;
    return ld->key;
}

static strata_l1_load *load_new(strata_l1 *c, const void *key, size_t klen, uint32_t hash) {
    strata_l1_load *ld = strata_calloc(1, sizeof(*ld) + klen);
    if (!ld)
        return NULL;
    ld->c = c;
    ld->hash = hash;
    ld->klen = klen;
    memcpy(ld->key, key, klen);
    ld->start_ns = now_ns(c);
    return ld;
}

/* Starts a background refresh of key (lock not held) if none is in flight
 * and `seen`, the entry the caller read, is still the key's: a set or an
 * invalidation since then wins over the refresh as over any load. */
static void start_refresh(strata_l1 *c, const void *key, size_t klen, uint32_t hash, uint16_t tag,
                          const strata_l1_entry *seen, strata_l1_loader_fn loader,
                          void *loader_ctx) {
    lock(c);
    l1_seg *seg = l1__seg_of(c, hash);
    pthread_mutex_lock(&seg->lock);
    strata_l1_load *ld = NULL;
    if (l1__table_find(c, key, klen, hash, tag) == seen && !*load_slot(c, key, klen, hash)) {
        ld = load_new(c, key, klen, hash); /* NULL: the current value keeps being served */
        if (ld) {
            ld->refresh = true;
            load_map(c, ld);
            c->n_loads++;
            c->n_refresh++;
        }
    }
    pthread_mutex_unlock(&seg->lock);
    unlock(c);
    if (ld)
        loader(loader_ctx, ld, ld->key, ld->klen);
}

static bool xfetch_due(const strata_l1 *c, const strata_l1_entry *e, uint64_t now) {
    if (c->cfg.refresh_beta <= 0 || !(e->flags & L1_F_TTL) || (e->flags & L1_F_NEG))
        return false;
    const l1_ttl *t = l1_entry_ttl(e);
    double delta = (double)t->delta_us * 1000.0;
    if (delta <= 0)
        delta = 1e6; /* unknown load time: assume 1 ms */
    double early = -delta * c->cfg.refresh_beta * log(rand_unit());
    return (double)now + early >= (double)t->soft_ns;
}

int strata_l1_get_or_load(strata_l1 *c, const void *key, size_t klen, strata_l1_loader_fn loader,
                          void *loader_ctx, strata_l1_done_fn done, void *ud,
                          strata_l1_entry **pe) {
    if (!c || !key || klen == 0 || klen > MAX_KEY || !loader || !done || !pe)
        return STRATA_EINVAL;
    *pe = NULL;
    read_ctx rx = {NULL, 0, 0, NULL, NULL, 0, 0};
    int rc = do_read(c, key, klen, READ_REF, &rx);
    uint16_t tag;
    uint32_t hash = l1__hash(c, key, klen, &tag);
    if (rc >= 0) {
        *pe = rx.ref;
        uint64_t now = rx.now ? rx.now : now_ns(c);
        if (rc == STRATA_L1_STALE || (rc == STRATA_L1_HIT && xfetch_due(c, rx.ref, now)))
            start_refresh(c, key, klen, hash, tag, rx.ref, loader, loader_ctx);
        return rc;
    }
    lock(c);
    /* Re-check under the lock: a load may have completed since the read.  The
     * segment lock is held from the check to the load's mapping (R6). */
    l1_seg *seg = l1__seg_of(c, hash);
    pthread_mutex_lock(&seg->lock);
    strata_l1_entry *e = l1__table_find(c, key, klen, hash, tag);
    if (e) {
        uint64_t now = 0;
        int oc = classify(c, e, &now);
        if (oc >= 0) {
            *pe = strata_l1_acquire_entry(e);
            pthread_mutex_unlock(&seg->lock);
            unlock(c);
            if (oc == STRATA_L1_STALE)
                start_refresh(c, key, klen, hash, tag, e, loader, loader_ctx);
            return oc;
        }
    }
    strata_l1_load *ld = *load_slot(c, key, klen, hash);
    if (ld) {
        pthread_mutex_unlock(&seg->lock);
        if (!ld->first.done) { /* a background refresh: become its first waiter */
            ld->first.done = done;
            ld->first.ud = ud;
        } else {
            l1_waiter *w = strata_malloc(sizeof(*w));
            if (!w) {
                unlock(c);
                return STRATA_ENOMEM;
            }
            w->done = done;
            w->ud = ud;
            w->next = ld->more;
            ld->more = w;
        }
        c->n_joins++;
        unlock(c);
        return STRATA_L1_PENDING;
    }
    ld = load_new(c, key, klen, hash);
    if (ld) {
        ld->first.done = done;
        ld->first.ud = ud;
        load_map(c, ld);
        c->n_loads++;
    }
    pthread_mutex_unlock(&seg->lock);
    unlock(c);
    if (!ld)
        return STRATA_ENOMEM;
    loader(loader_ctx, ld, ld->key, ld->klen);
    return STRATA_L1_PENDING;
}

int strata_l1_load_complete(strata_l1_load *ld, int status, const void *val, size_t vlen,
                            const strata_l1_set_opts *opts) {
    if (!ld)
        return STRATA_EINVAL;
    strata_l1 *c = ld->c;
    uint64_t now = now_ns(c);
    uint64_t took = now > ld->start_ns ? now - ld->start_ns : 0;
    strata_l1_entry *e = NULL;
    int rc = STRATA_OK;
    bool negative = false;
    if (status == STRATA_OK && vlen >= MAX_VALUE)
        status = STRATA_ETOOBIG;
    if (status == STRATA_OK) {
        uint64_t ttl = opts && opts->ttl_ns ? opts->ttl_ns
                       : c->cfg.load_ttl_ns ? c->cfg.load_ttl_ns
                                            : c->cfg.ttl_ns;
        uint64_t stale = opts && opts->stale_ns ? opts->stale_ns : c->cfg.stale_ns;
        if (opts && opts->no_ttl)
            ttl = stale = 0;
        if (!opts || opts->jitter || !opts->ttl_ns)
            ttl = jittered(ttl, c->cfg.jitter_pct);
        e = entry_new(ld->key, ld->klen, ld->hash, val, vlen, ttl != 0 || stale != 0);
        if (e) {
            e->cost = entry_cost(c, ld->klen, vlen, opts ? opts->cost : 0);
            if (e->flags & L1_F_TTL) {
                fill_ttl(e, now, ttl ? ttl : UINT64_MAX / 4, stale);
                l1_entry_ttl(e)->delta_us =
                    (uint32_t)(took / 1000 > UINT32_MAX ? UINT32_MAX : took / 1000);
            }
        } else {
            rc = STRATA_ENOMEM;
        }
    } else if (c->cfg.negative_ttl_ns) {
        e = entry_new(ld->key, ld->klen, ld->hash, NULL, 0, true);
        if (e) {
            e->flags |= L1_F_NEG;
            e->cost = entry_cost(c, ld->klen, 0, 0);
            fill_ttl(e, now, c->cfg.negative_ttl_ns, 0);
            l1_entry_ttl(e)->neg_status = status;
            negative = true;
        }
    }
    uint16_t tag;
    (void)l1__hash(c, ld->key, ld->klen, &tag);

    lock(c);
    bool store = ld->mapped;
    if (status != STRATA_OK)
        c->n_load_fail++;
    strata_l1_entry *give = NULL; /* what the waiters get */
    int wstatus = status, woutcome = STRATA_L1_HIT;
    if (status == STRATA_OK && !e) {
        wstatus = STRATA_ENOMEM;
    } else if (status != STRATA_OK) {
        /* stale-if-error: a current entry still within its hard TTL is served */
        strata_l1_entry *cur = l1__table_find(c, ld->key, ld->klen, ld->hash, tag);
        uint64_t t0 = now;
        int oc = cur ? classify(c, cur, &t0) : -1;
        if (cur && (oc == STRATA_L1_HIT || oc == STRATA_L1_STALE)) {
            give = cur;
            wstatus = STRATA_OK;
            woutcome = STRATA_L1_STALE;
            if (e) {
                strata_free(e); /* keep the stale value rather than caching the failure */
                e = NULL;
                negative = false;
            }
        } else {
            woutcome = STRATA_L1_PENDING; /* nothing cached; NEGATIVE once stored below */
        }
    }
    bool stored = false;
    if (e && store) {
        if (store_locked(c, e, tag) == STRATA_OK) {
            stored = true;
            maintain_step(c);
        } else if (!negative) {
            rc = STRATA_ENOMEM; /* the table could not grow: waiters still get the value */
        }
    }
    if (e && !stored && negative) {
        strata_free(e);
        e = NULL;
    }
    /* Unmapped only now: until the value is in the table, the mapped load
     * keeps the key's segment off the fast insert path (R6), so no set can
     * return before this store and then be overwritten by it. */
    if (ld->mapped)
        load_unmap(c, ld);
    if (negative && stored)
        woutcome = STRATA_L1_NEGATIVE;
    if (e && !negative)
        give = e;
    /* One reference per waiter, taken under the lock. */
    int nw = (ld->first.done ? 1 : 0);
    for (l1_waiter *w = ld->more; w; w = w->next)
        nw++;
    if (give && stored) {
        atomic_fetch_add_explicit(&give->refs, (uint32_t)nw, memory_order_relaxed);
    } else if (give && give == e) {
        /* never published: the waiters own it */
        atomic_store_explicit(&give->refs, (uint32_t)nw, memory_order_relaxed);
        if (nw == 0) {
            strata_free(give);
            give = NULL;
        }
    } else if (give) {
        atomic_fetch_add_explicit(&give->refs, (uint32_t)nw, memory_order_relaxed);
    }
    unlock(c);

    if (ld->first.done)
        ld->first.done(ld->first.ud, wstatus, (strata_l1_outcome)woutcome, give);
    l1_waiter *w = ld->more;
    while (w) {
        l1_waiter *nx = w->next;
        w->done(w->ud, wstatus, (strata_l1_outcome)woutcome, give);
        strata_free(w);
        w = nx;
    }
    strata_free(ld);
    return rc;
}

/* ---- stats ------------------------------------------------------------------- */

void strata_l1_stats_get(strata_l1 *c, strata_l1_stats *out) {
    memset(out, 0, sizeof(*out));
    uint64_t v[4] = {0};
    for (unsigned s = 0; s <= L1_NSTRIPE; s++)
        stripe_counts(&c->stripes[s], v);
    out->hits = v[0];
    out->misses = v[1];
    out->stale_hits = v[2];
    out->negative_hits = v[3];
    lock(c);
    drain_writes(c);
    out->fast_replaces = c->n_fast;
    out->fast_inserts = c->n_fast_ins;
    out->loads = c->n_loads;
    out->load_failures = c->n_load_fail;
    out->loads_dropped = c->n_dropped;
    out->load_joins = c->n_joins;
    out->refreshes = c->n_refresh;
    for (int i = 0; i < STRATA_L1_CAUSE__COUNT; i++)
        out->evictions[i] = c->n_evict[i];
    out->entries = c->entries;
    out->cost = c->total_cost;
    out->capacity = c->capacity;
    out->window_max = c->window_max;
    report_metrics(c);
    unlock(c);
}

uint64_t strata_l1_size(strata_l1 *c) {
    lock(c);
    drain_writes(c); /* pending fast inserts count */
    uint64_t n = c->entries;
    unlock(c);
    return n;
}

uint64_t strata_l1_cost(strata_l1 *c) {
    lock(c);
    drain_writes(c);
    uint64_t n = c->total_cost;
    unlock(c);
    return n;
}

uint64_t strata_l1_sketch_seed(const strata_l1 *c) { return c ? c->cfg.sketch_seed : 0; }

int strata_l1_frequency(strata_l1 *c, const void *key, size_t klen) {
    if (!c || c->cfg.policy == STRATA_L1_LRU)
        return 0;
    uint16_t tag;
    uint32_t hash = l1__hash(c, key, klen, &tag);
    lock(c);
    drain_writes(c);
    drain(c);
    int f = l1__sketch_frequency(&c->sketch, hash);
    unlock(c);
    return f;
}
