/*
 * l1_internal.h: private structures of the L1 cache (for the .c files of src/lib/l1 only).
 *
 * Memory layout of one entry (one strata_malloc block, 40-byte header):
 *
 *   +------------------+------------------+-----------------------------+
 *   | prev, next (16)  | hash refs klen   | [l1_ttl, 40 bytes, if TTL]  |
 *   | policy list      | vlen cost queue  | wheel links, soft, hard,    |
 *   | (after removal:  | flags (24)       | load time                   |
 *   |  retire link +   |                  +-----------------------------+
 *   |  retire epoch)   |                  | key bytes | value bytes     |
 *   +------------------+------------------+-----------------------------+
 *
 * Everything from `hash` on is immutable once the entry is published in the
 * table (readers run without a lock); prev/next/queue belong to the writer
 * lock.  An entry holds one reference for the cache (dropped only when
 * reclamation proves that no lock-free reader and no read buffer can still
 * see it) plus one per strata_l1_acquire.
 */
#ifndef STRATA_L1_INTERNAL_H
#define STRATA_L1_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "strata/l1.h"

enum { L1_Q_NONE = 0, L1_Q_WINDOW = 1, L1_Q_PROBATION = 2, L1_Q_PROTECTED = 3 };
enum { L1_F_TTL = 1u << 0, L1_F_NEG = 1u << 1 };

struct strata_l1_entry {
    strata_l1_entry *prev, *next; /* policy list (writer lock); retire list once removed */
    uint32_t hash;                /* low 32 bits of XXH3-64(key) */
    _Atomic uint32_t refs;
    uint32_t klen, vlen;
    uint32_t cost;
    uint8_t queue; /* L1_Q_* (writer lock) */
    uint8_t flags; /* L1_F_* (immutable) */
    uint16_t spare;
    /* followed by [l1_ttl] key value: l1_entry_data().  Not a flexible array
     * member, because l1_list embeds an entry as its sentinel (clang's
     * -Wgnu-variable-sized-type-not-at-end). */
};

static inline unsigned char *l1_entry_data(const strata_l1_entry *e) {
    return (unsigned char *)(uintptr_t)(e + 1);
}

typedef struct l1_ttl {
    struct l1_ttl *wprev, *wnext; /* timer wheel bucket ring (writer lock); NULL = not scheduled */
    uint64_t soft_ns;             /* fresh until */
    uint64_t hard_ns;             /* usable (stale) until; the wheel fires here */
    uint32_t delta_us;            /* how long the load took (XFetch) */
    int32_t neg_status;           /* the cached error of a negative entry */
} l1_ttl;

_Static_assert(sizeof(strata_l1_entry) % _Alignof(l1_ttl) == 0, "l1_ttl follows the header");

static inline l1_ttl *l1_entry_ttl(const strata_l1_entry *e) {
    return (e->flags & L1_F_TTL) ? (l1_ttl *)(void *)l1_entry_data(e) : NULL;
}
static inline strata_l1_entry *l1_ttl_entry(l1_ttl *t) {
    return (strata_l1_entry *)(void *)((char *)t - sizeof(strata_l1_entry));
}
static inline unsigned char *l1_entry_keyp(const strata_l1_entry *e) {
    return l1_entry_data(e) + ((e->flags & L1_F_TTL) ? sizeof(l1_ttl) : 0);
}
static inline unsigned char *l1_entry_valp(const strata_l1_entry *e) {
    return l1_entry_keyp(e) + e->klen;
}

/* ---- epoch-based reclamation (ebr.c) ---------------------------------- */

/* A reader's section: l1__ebr_enter() returns the thread's record index. */
int l1__ebr_enter(void);
void l1__ebr_exit(int rec);
/* Tries to advance the global epoch; returns the epoch now in force. */
uint64_t l1__ebr_advance(void);
uint64_t l1__ebr_epoch(void);

/* ---- open-addressing table (table.c) ----------------------------------- */

#define L1_SEG_BITS 6
#define L1_NSEG     (1u << L1_SEG_BITS)
#define L1_TOMB     ((uintptr_t)1)

typedef struct l1_table {
    struct l1_table *rnext; /* retire list */
    uint64_t repoch;
    size_t n; /* slots */
    _Atomic uintptr_t slots[];
} l1_table;

typedef struct l1_seg {
    _Atomic(l1_table *) tab;
    size_t live, tombs;
    char pad[40];
} l1_seg;

/* ---- read buffers ------------------------------------------------------- */

#define L1_NSTRIPE 16
#define L1_RB_SIZE 64

typedef struct l1_stripe {
    _Atomic uint64_t tail; /* producers (readers of this stripe) */
    _Atomic uint64_t hits, misses, stale, negative;
    char pad0[24];
    _Atomic uint64_t head; /* the drainer */
    char pad1[56];
    _Atomic(strata_l1_entry *) slots[L1_RB_SIZE];
} l1_stripe;

/* ---- frequency sketch (sketch.c) --------------------------------------- */

typedef struct l1_sketch {
    uint64_t *table;    /* 16 four-bit counters per word */
    uint64_t *door;     /* doorkeeper bloom filter bits (NULL = off) */
    uint32_t words;     /* table words (= entries of capacity, at least 8) */
    uint32_t door_mask; /* doorkeeper bits - 1 */
    uint64_t size;      /* additions since the last reset */
    uint64_t sample;    /* reset (age) every `sample` additions */
    uint64_t resets;
} l1_sketch;

int l1__sketch_init(l1_sketch *s, uint64_t entries, int doorkeeper);
void l1__sketch_free(l1_sketch *s);
void l1__sketch_increment(l1_sketch *s, uint32_t hash);
int l1__sketch_frequency(const l1_sketch *s, uint32_t hash);
void l1__sketch_reset(l1_sketch *s);
/* Prefetches the four counter words of hash (the drain calls it a few entries ahead). */
void l1__sketch_prefetch(const l1_sketch *s, uint32_t hash);

/* ---- timer wheel (wheel.c) --------------------------------------------- */

#define L1_WHEEL_LEVELS 5
typedef struct l1_wheel {
    uint64_t nanos;                      /* time of the last advance */
    l1_ttl buckets[L1_WHEEL_LEVELS][64]; /* sentinels of circular lists */
} l1_wheel;

void l1__wheel_init(l1_wheel *w, uint64_t now);
void l1__wheel_schedule(l1_wheel *w, strata_l1_entry *e);
void l1__wheel_deschedule(l1_wheel *w, strata_l1_entry *e);
/* Calls expire(ctx, e) for each entry whose hard deadline is <= now. */
void l1__wheel_advance(l1_wheel *w, uint64_t now, void (*expire)(void *ctx, strata_l1_entry *e),
                       void *ctx);

/* ---- loads ---------------------------------------------------------------- */

typedef struct l1_waiter {
    struct l1_waiter *next;
    strata_l1_done_fn done;
    void *ud;
} l1_waiter;

struct strata_l1_load {
    strata_l1 *c;
    struct strata_l1_load *hnext; /* loads map chain */
    uint32_t hash;
    bool mapped;  /* still in the loads map (not dropped by invalidation/set) */
    bool refresh; /* background refresh: a current entry keeps being served */
    uint64_t start_ns;
    l1_waiter first; /* the starter's waiter (done == NULL for a refresh) */
    l1_waiter *more;
    size_t klen;
    unsigned char key[];
};

/* ---- the cache ------------------------------------------------------------ */

typedef struct l1_list {
    strata_l1_entry head; /* sentinel: head.next = LRU end, head.prev = MRU end */
} l1_list;

struct strata_l1 {
    l1_seg segs[L1_NSEG];
    l1_stripe stripes[L1_NSTRIPE];

    strata_l1_config cfg;
    char *name;
    strata_clock *clock;
    pthread_mutex_t lock; /* the writer lock: table writes, policy, wheel, loads */
    _Atomic int drain_pending;

    /* policy (lock) */
    l1_list window, probation, protected_;
    uint64_t capacity;
    uint64_t window_size, protected_size, total_cost, entries;
    uint64_t window_max, protected_max;
    l1_sketch sketch;
    int sketch_on; /* the cache was half full once: the sketch counts, reads reorder */
    int warm;      /* the cache has been at least half full (climber on) */
    uint64_t hits_in_sample, misses_in_sample;
    double prev_hit_rate, step_size;
    int64_t adjustment;
    uint64_t rng;
    strata_l1_entry *pinned; /* the entry a set is storing: never its own victim */
    _Atomic uint64_t size_snapshot, cost_snapshot; /* for lock-free strata_l1_size */

    /* expiry (lock) */
    l1_wheel wheel;
    int has_ttl;

    /* reclamation (lock) */
    strata_l1_entry *retired;            /* newest first; prev = link, next = epoch */
    strata_l1_entry *notify;             /* removed, listener not yet called (linked by next) */
    _Atomic(strata_l1_entry *) notified; /* listener called, to retire (lock-free stack, by prev) */
    l1_table *retired_tabs;
    uint64_t ops_since_reclaim;

    /* loads (lock) */
    strata_l1_load **loads;
    size_t nloads, loads_cap;

    /* counters (lock) */
    uint64_t n_loads, n_load_fail, n_dropped, n_joins, n_refresh;
    uint64_t n_evict[STRATA_L1_CAUSE__COUNT];

    /* metrics handles, and what was already reported to them (lock) */
    strata_counter *m_hits, *m_misses, *m_stale, *m_negative, *m_loads, *m_load_fail, *m_dropped;
    strata_counter *m_evict[STRATA_L1_CAUSE__COUNT];
    strata_gauge *m_entries, *m_cost, *m_window;
    uint64_t rep[16];
};

/* table.c */
int l1__table_init(strata_l1 *c, uint64_t expected);
void l1__table_free(strata_l1 *c);
uint32_t l1__hash(const void *key, size_t klen, uint16_t *tag);
/* Lock-free lookup (caller inside an EBR section, or holding the lock). */
strata_l1_entry *l1__table_find(strata_l1 *c, const void *key, size_t klen, uint32_t hash,
                                uint16_t tag);
/* Writer lock held.  Inserts or replaces; *old = the replaced entry.  STRATA_ENOMEM on growth failure. */
int l1__table_put(strata_l1 *c, strata_l1_entry *e, uint16_t tag, strata_l1_entry **old);
/* Writer lock held.  Removes exactly e if present; returns whether it was. */
bool l1__table_remove(strata_l1 *c, strata_l1_entry *e);
/* Writer lock held.  Calls fn on every live entry (fn may remove the entry it is given). */
void l1__table_foreach(strata_l1 *c, void (*fn)(void *ctx, strata_l1_entry *e), void *ctx);
/* Frees retired tables and entries that no reader can still see (lock held). */
void l1__reclaim(strata_l1 *c, uint64_t epoch);

/* policy.c (writer lock held) */
int l1__policy_init(strata_l1 *c);
void l1__policy_free(strata_l1 *c);
void l1__policy_add(strata_l1 *c, strata_l1_entry *e);
void l1__policy_access(strata_l1 *c, strata_l1_entry *e);
void l1__policy_remove(strata_l1 *c, strata_l1_entry *e);
/* Evicts until the total cost is within capacity, calling l1__evict for each victim. */
void l1__policy_evict(strata_l1 *c);
/* Hill climbing step (called after draining). */
void l1__policy_climb(strata_l1 *c);

/* l1.c (writer lock held): removes e from table, policy and wheel, and retires it. */
void l1__evict(strata_l1 *c, strata_l1_entry *e, strata_l1_cause cause);

#endif
