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
#include <string.h>

#include "strata/l1.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

/* L1_Q_PENDING: published in the table by a fast write (l1.c), not yet in the policy. */
enum { L1_Q_NONE = 0, L1_Q_WINDOW = 1, L1_Q_PROBATION = 2, L1_Q_PROTECTED = 3, L1_Q_PENDING = 4 };
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

/* Key comparison and value copy on the read path, inline for the short keys
 * and values a cache mostly holds (4..16 bytes: two possibly overlapping
 * loads a side) and memcmp/memcpy beyond: the library calls cost 15 and 10
 * instructions a read at 8 bytes (callgrind, docs/notes/l1.md round 7). */
static inline uint64_t l1__load64(const void *p) {
    uint64_t x;
    memcpy(&x, p, sizeof(x));
    return x;
}
static inline uint32_t l1__load32(const void *p) {
    uint32_t x;
    memcpy(&x, p, sizeof(x));
    return x;
}
static inline bool l1_bytes_eq(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    if (n >= 8 && n <= 16)
        return ((l1__load64(x) ^ l1__load64(y)) |
                (l1__load64(x + n - 8) ^ l1__load64(y + n - 8))) == 0;
    if (n >= 4 && n < 8)
        return ((l1__load32(x) ^ l1__load32(y)) |
                (l1__load32(x + n - 4) ^ l1__load32(y + n - 4))) == 0;
    return memcmp(a, b, n) == 0;
}
static inline void l1_bytes_copy(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n >= 8 && n <= 16) {
        uint64_t lo = l1__load64(s), hi = l1__load64(s + n - 8);
        memcpy(d, &lo, 8);
        memcpy(d + n - 8, &hi, 8);
    } else if (n >= 4 && n < 8) {
        uint32_t lo = l1__load32(s), hi = l1__load32(s + n - 4);
        memcpy(d, &lo, 4);
        memcpy(d + n - 4, &hi, 4);
    } else {
        memcpy(dst, src, n);
    }
}

/* ---- epoch-based reclamation (ebr.c) ---------------------------------- */

/* A reader's section: l1__ebr_enter() returns the thread's record index, a
 * thread's own below L1_EBR_MAX; L1_EBR_MAX is the shared overflow record. */
#define L1_EBR_MAX 512
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

/* A segment.  `lock` orders every write of its table: the writer-lock
 * holder takes it around table_put/table_remove, a fast write (l1.c) takes
 * it alone.  `pending` lists the fast writes not yet applied to the policy
 * (newest first, linked through the new entry's `next`; the new entry's
 * `prev` names the entry it replaced, NULL for an insert), under `lock`. */
typedef struct l1_seg {
    _Atomic(l1_table *) tab;
    size_t live, tombs;
    strata_l1_entry *pending;
    uint32_t npending;
    uint32_t nloads; /* loads mapped for its keys (under `lock`; fast inserts check it) */
    pthread_mutex_t lock;
    char pad[128 - 40 - sizeof(pthread_mutex_t)]; /* two cache lines per segment (no _Alignas:
                                                     the cache comes from strata_calloc) */
} l1_seg;
_Static_assert(sizeof(l1_seg) == 128, "l1_seg is two cache lines");

/* ---- read buffers ------------------------------------------------------- */

#define L1_NSTRIPE 16
#define L1_RB_SIZE 64

/* Stripe k < L1_NSTRIPE belongs to the first thread of EBR record r with
 * r % L1_NSTRIPE == k that reads through it (`owner` = r + 1, never given up:
 * a record is one live thread's), which is then its only producer: it counts
 * and appends with plain load + store, no read-modify-write.  Readers that
 * find their stripe owned by another thread (more than L1_NSTRIPE reading
 * threads, or the shared overflow record) use the extra stripe L1_NSTRIPE,
 * with atomic read-modify-writes (l1.c: stripe_own, count, record_read). */
typedef struct l1_stripe {
    _Atomic uint64_t tail; /* producers (readers of this stripe) */
    _Atomic uint64_t hits, misses, stale, negative;
    _Atomic int owner;
    char pad0[20];
    _Atomic uint64_t head; /* the drainer */
    char pad1[56];
    _Atomic(strata_l1_entry *) slots[L1_RB_SIZE];
} l1_stripe;
_Static_assert(offsetof(l1_stripe, head) == 64, "tail and head on separate cache lines");
_Static_assert(offsetof(l1_stripe, slots) == 128, "slots start on their own cache line");

/* ---- frequency sketch (sketch.c) --------------------------------------- */

#define L1_SKETCH_MEMO 64 /* positions memoised between prefetch and increment (a power of two) */

typedef struct l1_sketch {
    uint64_t *table;    /* 16 four-bit counters per word */
    uint64_t *door;     /* doorkeeper bloom filter bits (NULL = off) */
    uint32_t words;     /* table words (= entries of capacity, at least 8) */
    uint32_t door_mask; /* doorkeeper bits - 1 */
    uint32_t mul, add;  /* the per-cache hash seed: spread()'s odd multiplier, its added constant */
    uint64_t size;      /* additions since the last reset */
    uint64_t sample;    /* reset (age) every `sample` additions */
    uint64_t resets;
    /* The positions l1__sketch_prefetch computed for the last few hashes, so
     * the increment that follows a few entries later does not compute them
     * again (they depend only on the hash and the fixed seed and sizes, so a
     * memo entry never goes stale).  Direct-mapped by the hash's low bits. */
    struct l1_sketch_pos {
        uint32_t hash;    /* the key hash these are for */
        uint32_t spread;  /* spread_seeded(hash): its low two bits pick the counter group */
        uint32_t word[4]; /* the counter word of each row */
        uint32_t door[3]; /* the doorkeeper bits */
    } memo[L1_SKETCH_MEMO];
} l1_sketch;

/* seed: the cache's resolved sketch seed (nonzero; policy.c draws it when the config's is 0). */
int l1__sketch_init(l1_sketch *s, uint64_t entries, int doorkeeper, uint64_t seed);
/* splitmix64 (Steele, Lea, Flood 2014): the next output; advances *state. */
uint64_t l1__splitmix64(uint64_t *state);
void l1__sketch_free(l1_sketch *s);
void l1__sketch_increment(l1_sketch *s, uint32_t hash);
int l1__sketch_frequency(const l1_sketch *s, uint32_t hash);
void l1__sketch_reset(l1_sketch *s);
/* Prefetches the four counter words and the doorkeeper words of hash, and
 * memoises their positions for the increment (the drain calls it a few
 * entries ahead). */
void l1__sketch_prefetch(l1_sketch *s, uint32_t hash);

/* ---- sampled shadow LRU (sketch.c): does exact LRU beat the policy? ------ */

/* An LRU simulation over a hash-sampled subset of the keys (SHARDS: Waldspurger
 * et al., FAST 2015): a key is sampled iff a mix of its hash falls below
 * `threshold` (rate R = slots / expected entries, or every key when the cache
 * has at most L1_SHADOW_SLOTS entries), and the shadow holds R x capacity.
 * Over each climber sample it counts, on the sampled events only, the hits
 * an exact LRU would have had and the hits the cache had (policy.c). */
#define L1_SHADOW_SLOTS 2048
typedef struct l1_shadow_slot {
    uint32_t hash, cost;
    uint16_t prev, next; /* LRU list; slot 0 is the sentinel: next = LRU end, prev = MRU end */
} l1_shadow_slot;

typedef struct l1_shadow {
    l1_shadow_slot *slot; /* nslots + 1 (slot 0 = sentinel); NULL = shadow off */
    uint16_t *index;      /* open addressing by hash: slot number, 0 = empty */
    uint32_t nslots, imask, used, freel;
    uint64_t threshold; /* sampled iff l1_shadow_mix(hash) < threshold: 0 = off, 2^32 = all keys */
    int evicting;       /* inside policy_evict: removals are the policy's own evictions */
    uint64_t capacity, size; /* cost units, scaled by the sampling rate */
    /* sampled events of the current climber sample: all, LRU hits,
     * LRU-only hits (the cache missed), cache-only hits (LRU would have missed) */
    uint64_t events, lru_hits, lru_only, act_only;
    /* the jump (policy.c) */
    int trial;              /* the last sample jumped: check it paid */
    int moving;             /* window_max is walking to target_window */
    uint32_t backoff, wait; /* samples to wait before the next jump after a failed one */
    uint64_t saved_window, saved_protected, target_window, target_protected;
    double saved_rate;
    int lru_mode; /* a jump paid: stay near LRU (policy.c shadow_lru_mode) */
    int probing;  /* LRU mode: this sample tries the pre-jump window */
    uint32_t probe_backoff, probe_wait;
    uint64_t miss_count, miss_freq; /* LRU mode: misses and their summed sketch frequency */
    uint64_t jumps, reverts, rejumps, probes;
    /* the paired check of climber moves (policy.c paired_hold): the previous sample's
     * gap to the shadow, (cache-only - LRU-only hits) / events, when gap_set */
    double gap;
    int gap_set;
} l1_shadow;

enum { L1_SHADOW_HIT = 0, L1_SHADOW_MISS = 1, L1_SHADOW_TOUCH = 2 };
/* The sampling hash: independent of the table's (low bits) and the sketch's (spread). */
static inline uint32_t l1_shadow_mix(uint32_t hash) {
    return (uint32_t)(((uint64_t)hash * 0x9E3779B97F4A7C15ULL) >> 32);
}
static inline bool l1_shadow_sampled(const l1_shadow *s, uint32_t hash) {
    return l1_shadow_mix(hash) < s->threshold;
}
int l1__shadow_init(l1_shadow *s, uint64_t capacity, uint64_t entries);
void l1__shadow_free(l1_shadow *s);
/* A hit (HIT) or an insert after a miss (MISS) of the cache, or a write of a
 * present key (TOUCH: reorders, not counted). */
void l1__shadow_ref(l1_shadow *s, uint32_t hash, uint32_t cost, int kind);
/* The key left the cache other than by the policy's eviction (invalidated, expired, replaced). */
void l1__shadow_drop(l1_shadow *s, uint32_t hash);

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
    l1_stripe stripes[L1_NSTRIPE + 1]; /* + the shared one */

    strata_l1_config cfg;
    uint64_t key_seed; /* XXH3's seed for this cache's key hashes (l1__hash; from sketch_seed) */
    char *name;
    strata_clock *clock;
    pthread_mutex_t lock;          /* the writer lock: table writes, policy, wheel, loads */
    _Atomic int maint_scheduled;   /* cfg.executor: a maintenance task is queued, not yet started */
    _Atomic int maint_tasks;       /* cfg.executor: tasks handed over and not yet finished */
    _Atomic uint64_t pending_mask; /* bit k: segment k has fast writes to apply */
    int fast_replace;              /* cfg.fast_replace && no listener */
    /* fast inserts (l1.c): the cost they may still add without the writer
     * lock, granted by the lock holder once the lock was seen contended */
    _Atomic int64_t credit;
    _Atomic int fast_ins_on; /* fast inserts enabled (cfg.fast_insert, or seen contended) */
    uint64_t granted;        /* (lock) credit granted and not yet applied as an insert */
    uint64_t slack;          /* (lock) cost kept free for fast inserts when contended */
    uint64_t evict_to;       /* (lock) l1__policy_evict's target: capacity less granted and slack */

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
    l1_shadow shadow;        /* the LRU check of the adaptive window (policy.c) */
    strata_l1_entry *pinned; /* the entry a set is storing: never its own victim */
    _Atomic uint64_t size_snapshot, cost_snapshot; /* for lock-free strata_l1_size */

    /* expiry (lock) */
    l1_wheel wheel;
    int has_ttl;

    /* reclamation (lock) */
    strata_l1_entry *retired, *retired_tail; /* FIFO (oldest first); prev = link, next = epoch */
    struct {
        uint64_t epoch;        /* retire epoch of the entries up to and including `last` */
        strata_l1_entry *last; /* (after the previous mark's last) */
    } rmark[8];                /* epoch boundaries of the retire list, oldest first */
    unsigned nrmark;
    strata_l1_entry *tofree;             /* reclaimed: freed by unlock() (linked by prev) */
    strata_l1_entry *notify;             /* removed, listener not yet called (linked by next) */
    _Atomic(strata_l1_entry *) notified; /* listener called, to retire (lock-free stack, by prev) */
    l1_table *retired_tabs;
    uint64_t ops_since_reclaim;

    /* loads (lock) */
    strata_l1_load **loads;
    size_t nloads, loads_cap;

    /* counters (lock) */
    uint64_t n_loads, n_load_fail, n_dropped, n_joins, n_refresh, n_fast, n_fast_ins;
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
/* XXH3-64 of the key, seeded per cache, inlined (xxhash's XXH_INLINE_ALL: a
 * read hashes an 8-16 byte key in a few instructions instead of a call
 * through the PLT and the library's length dispatch); *tag = the top 16
 * bits, returns the low 32.  Seeded because this hash places keys in the
 * table, the sketch and the shadow's sample: with a known hash, keys chosen
 * offline could pile into one probe run (hash flooding) or share a victim's
 * sketch counters (docs/notes/l1.md round 7). */
static inline uint32_t l1__hash(const strata_l1 *c, const void *key, size_t klen, uint16_t *tag) {
    uint64_t h = XXH3_64bits_withSeed(key, klen, c->key_seed);
    *tag = (uint16_t)(h >> 48);
    return (uint32_t)h;
}
/* Lock-free lookup (caller inside an EBR section, or holding the lock). */
strata_l1_entry *l1__table_find(strata_l1 *c, const void *key, size_t klen, uint32_t hash,
                                uint16_t tag);
static inline l1_seg *l1__seg_of(strata_l1 *c, uint32_t h) {
    return &c->segs[h >> (32 - L1_SEG_BITS)];
}
/* Writer lock and the segment's lock held.  Inserts or replaces; *old = the
 * replaced entry.  STRATA_ENOMEM on growth failure. */
int l1__table_put(strata_l1 *c, strata_l1_entry *e, uint16_t tag, strata_l1_entry **old);
/* Writer lock and the segment's lock held.  Removes exactly e if present; returns whether it was. */
bool l1__table_remove(strata_l1 *c, strata_l1_entry *e);
/* The segment's lock held (writer lock NOT needed).  If the slot of e's key
 * holds an entry x with the same cost and no TTL, stores e there and returns x;
 * otherwise changes nothing and returns NULL, with *absent telling whether
 * the key is absent. */
strata_l1_entry *l1__table_swap(strata_l1 *c, strata_l1_entry *e, uint16_t tag, bool *absent);
/* The segment's lock held (writer lock NOT needed), e's key absent and its
 * tag set (by l1__table_swap): adds e unless the segment needs a rebuild
 * (then returns false, changing nothing). */
bool l1__table_add(strata_l1 *c, strata_l1_entry *e);
/* Writer lock held.  Calls fn on every live entry (fn may remove the entry it is given). */
void l1__table_foreach(strata_l1 *c, void (*fn)(void *ctx, strata_l1_entry *e), void *ctx);
/* Frees retired tables, and moves the retired entries that no reader can
 * still see to c->tofree (lock held). */
void l1__reclaim(strata_l1 *c, uint64_t epoch);
/* Drops the cache's reference of each entry of a c->tofree list (lock not needed). */
void l1__free_reclaimed(strata_l1_entry *list);

/* policy.c (writer lock held) */
int l1__policy_init(strata_l1 *c);
void l1__policy_free(strata_l1 *c);
void l1__policy_add(strata_l1 *c, strata_l1_entry *e);
void l1__policy_access(strata_l1 *c, strata_l1_entry *e);
void l1__policy_remove(strata_l1 *c, strata_l1_entry *e);
/* nw (same cost) takes old's place in its queue, then counts as an access of the key. */
void l1__policy_replace(strata_l1 *c, strata_l1_entry *old, strata_l1_entry *nw);
/* Evicts until the total cost is within capacity, calling l1__evict for each victim. */
void l1__policy_evict(strata_l1 *c);
/* Hill climbing step (called after draining). */
void l1__policy_climb(strata_l1 *c);

/* l1.c (writer lock held): removes e from table, policy and wheel, and retires it. */
void l1__evict(strata_l1 *c, strata_l1_entry *e, strata_l1_cause cause);

#endif
