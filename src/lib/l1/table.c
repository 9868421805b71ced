/*
 * table.c: the L1 hash table: open addressing, lock-free reads, one writer per segment.
 *
 * The key space is split into 64 segments by the top bits of the hash; each
 * segment is an array of tagged pointers probed linearly:
 *
 *     slot = 0              empty: a probe stops here
 *     slot = 1              tombstone: a removed entry, probes go on
 *     slot = tag<<48 | ptr  an entry; tag = the top 16 bits of the key hash
 *                           (XXH3-64 seeded per cache: l1__hash)
 *
 * so a probe dereferences an entry only when 16 hash bits already match.
 * Readers load slots with acquire and never write; a writer (holding the
 * segment's lock: the writer-lock holder, or a fast write in l1.c, which
 * swaps one entry of a key for another or adds an absent key's entry where
 * that needs no rebuild) publishes an entry with one
 * release store, so a reader sees either the old or the new pointer, never a
 * torn state.  Entries never move
 * between slots while an array is live, so a reader cannot miss a present
 * key (which backward-shift deletion or Robin Hood would allow), and a get
 * after a set on the same thread always finds the new value.
 *
 * Removal writes a tombstone, or an empty slot when the next slot is empty
 * (then every preceding tombstone can become empty too: no probe path runs
 * through them any more).  When live + tombstones pass 75 % of a segment, it
 * is rebuilt into a fresh array (same size if the tombstones were the
 * problem, twice the size otherwise); the old array is retired through EBR
 * because readers may still be probing it.  Sizing from the expected entry
 * count at 50 % load makes the table cost ~16 bytes per entry: measured, 65 %
 * (12 bytes) cost 40 % of the read throughput in longer probe runs of
 * tombstone-laden clusters (docs/notes/l1.md).
 *
 * Index: multiply-shift range reduction of the 26 hash bits below the
 * segment bits (Lemire's "fastrange"), so sizes need not be powers of two.
 */
#include <string.h>

#include "l1_internal.h"
#include "strata/alloc.h"
#include "strata/status.h"

#define PTR_MASK  ((((uintptr_t)1) << 48) - 1)
#define MIN_SLOTS 8

#define seg_of l1__seg_of

static inline size_t slot_index(uint32_t h, size_t n) {
    return (size_t)(((uint64_t)(uint32_t)(h << L1_SEG_BITS) * n) >> 32);
}

static inline uintptr_t mkslot(const strata_l1_entry *e) {
    return (uintptr_t)e | ((uintptr_t)e->spare << 48);
}

static inline strata_l1_entry *slot_ptr(uintptr_t s) { return (strata_l1_entry *)(s & PTR_MASK); }

static l1_table *table_alloc(size_t n) {
    l1_table *t = strata_calloc(1, sizeof(*t) + n * sizeof(t->slots[0]));
    if (t)
        t->n = n;
    return t;
}

int l1__table_init(strata_l1 *c, uint64_t expected) {
    uint64_t per = expected / L1_NSEG + 1;
    size_t n = (size_t)(per * 15 / 8) + 1; /* ~53 % full at capacity (docs/notes/l1.md D2) */
    if (n < MIN_SLOTS)
        n = MIN_SLOTS;
    for (unsigned i = 0; i < L1_NSEG; i++) {
        l1_table *t = table_alloc(n);
        if (!t)
            return STRATA_ENOMEM;
        atomic_store_explicit(&c->segs[i].tab, t, memory_order_relaxed);
        c->segs[i].live = c->segs[i].tombs = 0;
        c->segs[i].pending = NULL;
        c->segs[i].npending = 0;
    }
    return STRATA_OK;
}

void l1__table_free(strata_l1 *c) {
    for (unsigned i = 0; i < L1_NSEG; i++) {
        l1_table *t = atomic_load_explicit(&c->segs[i].tab, memory_order_relaxed);
        strata_free(t);
        atomic_store_explicit(&c->segs[i].tab, NULL, memory_order_relaxed);
    }
}

strata_l1_entry *l1__table_find(strata_l1 *c, const void *key, size_t klen, uint32_t h,
                                uint16_t tag) {
    l1_seg *seg = seg_of(c, h);
    l1_table *t = atomic_load_explicit(&seg->tab, memory_order_acquire);
    size_t n = t->n, i = slot_index(h, n);
    for (size_t probes = 0; probes < n; probes++) {
        uintptr_t s = atomic_load_explicit(&t->slots[i], memory_order_acquire);
        if (s == 0)
            return NULL;
        if ((uint16_t)(s >> 48) == tag && s != L1_TOMB) {
            strata_l1_entry *e = slot_ptr(s);
            if (e->hash == h && e->klen == klen && l1_bytes_eq(l1_entry_keyp(e), key, klen))
                return e;
        }
        if (++i == n)
            i = 0;
    }
    return NULL;
}

/* Places e into t at its first free (empty or tombstone) slot; t is private or locked. */
static void place(l1_table *t, strata_l1_entry *e, size_t *tombs_reused) {
    size_t n = t->n, i = slot_index(e->hash, n);
    for (;;) {
        uintptr_t s = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
        if (s == 0 || s == L1_TOMB) {
            if (s == L1_TOMB && tombs_reused)
                (*tombs_reused)++;
            atomic_store_explicit(&t->slots[i], mkslot(e), memory_order_release);
            return;
        }
        if (++i == n)
            i = 0;
    }
}

static void retire_table(strata_l1 *c, l1_table *t) {
    t->repoch = l1__ebr_epoch();
    t->rnext = c->retired_tabs;
    c->retired_tabs = t;
}

static int rebuild(strata_l1 *c, l1_seg *seg, size_t need) {
    l1_table *old = atomic_load_explicit(&seg->tab, memory_order_relaxed);
    size_t n = old->n;
    if (need * 10 > n * 6) /* live above 60 %: grow, else just sweep the tombstones */
        n = n * 2;
    if (n < MIN_SLOTS)
        n = MIN_SLOTS;
    l1_table *t = table_alloc(n);
    if (!t)
        return STRATA_ENOMEM;
    for (size_t i = 0; i < old->n; i++) {
        uintptr_t s = atomic_load_explicit(&old->slots[i], memory_order_relaxed);
        if (s > L1_TOMB)
            place(t, slot_ptr(s), NULL);
    }
    atomic_store_explicit(&seg->tab, t, memory_order_release);
    seg->tombs = 0;
    retire_table(c, old);
    return STRATA_OK;
}

/* Segment lock held: the slot holding e's key in t (its entry in *found), or NULL. */
static _Atomic uintptr_t *find_key(l1_table *t, const strata_l1_entry *e, uint16_t tag,
                                   strata_l1_entry **found) {
    const void *key = l1_entry_keyp(e);
    size_t n = t->n, i = slot_index(e->hash, n);
    for (size_t probes = 0; probes < n; probes++) {
        uintptr_t s = atomic_load_explicit(&t->slots[i], memory_order_acquire);
        if (s == 0)
            break;
        if (s != L1_TOMB && (uint16_t)(s >> 48) == tag) {
            strata_l1_entry *x = slot_ptr(s);
            if (x->hash == e->hash && x->klen == e->klen &&
                l1_bytes_eq(l1_entry_keyp(x), key, e->klen)) {
                *found = x;
                return &t->slots[i];
            }
        }
        if (++i == n)
            i = 0;
    }
    return NULL;
}

int l1__table_put(strata_l1 *c, strata_l1_entry *e, uint16_t tag, strata_l1_entry **old) {
    l1_seg *seg = seg_of(c, e->hash);
    l1_table *t = atomic_load_explicit(&seg->tab, memory_order_relaxed);
    e->spare = tag;
    *old = NULL;
    strata_l1_entry *x = NULL;
    _Atomic uintptr_t *slot = find_key(t, e, tag, &x);
    if (slot) {
        atomic_store_explicit(slot, mkslot(e), memory_order_release);
        *old = x;
        return STRATA_OK;
    }
    if ((seg->live + seg->tombs + 1) * 4 > t->n * 3) {
        int rc = rebuild(c, seg, seg->live + 1);
        if (rc < 0)
            return rc;
        t = atomic_load_explicit(&seg->tab, memory_order_relaxed);
    }
    size_t reused = 0;
    place(t, e, &reused);
    seg->tombs -= reused;
    seg->live++;
    return STRATA_OK;
}

strata_l1_entry *l1__table_swap(strata_l1 *c, strata_l1_entry *e, uint16_t tag, bool *absent) {
    l1_seg *seg = seg_of(c, e->hash);
    l1_table *t = atomic_load_explicit(&seg->tab, memory_order_relaxed);
    e->spare = tag;
    strata_l1_entry *x = NULL;
    _Atomic uintptr_t *slot = find_key(t, e, tag, &x);
    *absent = slot == NULL;
    if (!slot || x->cost != e->cost || (x->flags & L1_F_TTL))
        return NULL;
    atomic_store_explicit(slot, mkslot(e), memory_order_release);
    return x;
}

bool l1__table_add(strata_l1 *c, strata_l1_entry *e) {
    l1_seg *seg = seg_of(c, e->hash);
    l1_table *t = atomic_load_explicit(&seg->tab, memory_order_relaxed);
    if ((seg->live + seg->tombs + 1) * 4 > t->n * 3)
        return false; /* a rebuild retires the array: the writer lock's job */
    size_t reused = 0;
    place(t, e, &reused);
    seg->tombs -= reused;
    seg->live++;
    return true;
}

bool l1__table_remove(strata_l1 *c, strata_l1_entry *e) {
    l1_seg *seg = seg_of(c, e->hash);
    l1_table *t = atomic_load_explicit(&seg->tab, memory_order_relaxed);
    size_t n = t->n, i = slot_index(e->hash, n);
    for (size_t probes = 0; probes < n; probes++) {
        uintptr_t s = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
        if (s == 0)
            return false;
        if (slot_ptr(s) == e && s != L1_TOMB) {
            size_t nx = (i + 1 == n) ? 0 : i + 1;
            seg->live--;
            if (atomic_load_explicit(&t->slots[nx], memory_order_relaxed) != 0) {
                atomic_store_explicit(&t->slots[i], L1_TOMB, memory_order_release);
                seg->tombs++;
                return true;
            }
            /* The chain ends here: this slot and the tombstones before it become empty. */
            atomic_store_explicit(&t->slots[i], 0, memory_order_release);
            for (size_t k = 0; k < n; k++) {
                i = (i == 0) ? n - 1 : i - 1;
                if (atomic_load_explicit(&t->slots[i], memory_order_relaxed) != L1_TOMB)
                    break;
                atomic_store_explicit(&t->slots[i], 0, memory_order_release);
                seg->tombs--;
            }
            return true;
        }
        if (++i == n)
            i = 0;
    }
    return false;
}

void l1__table_foreach(strata_l1 *c, void (*fn)(void *ctx, strata_l1_entry *e), void *ctx) {
    for (unsigned k = 0; k < L1_NSEG; k++) {
        l1_table *t = atomic_load_explicit(&c->segs[k].tab, memory_order_relaxed);
        for (size_t i = 0; i < t->n; i++) {
            /* acquire: a fast replace may publish an entry here concurrently */
            uintptr_t s = atomic_load_explicit(&t->slots[i], memory_order_acquire);
            if (s > L1_TOMB)
                fn(ctx, slot_ptr(s));
        }
        /* fn may have rebuilt nothing (removal never reallocates), so t stays valid. */
    }
}

void l1__free_reclaimed(strata_l1_entry *list) {
    while (list) {
        strata_l1_entry *nx = list->prev;
        if (atomic_fetch_sub_explicit(&list->refs, 1, memory_order_acq_rel) == 1)
            strata_free(list);
        list = nx;
    }
}

void l1__reclaim(strata_l1 *c, uint64_t epoch) {
    /* The retire list is oldest first and its epochs never decrease (every
     * retire runs under the writer lock and reads the global epoch); the marks
     * (retire() in l1.c) say where each epoch ends, so the entries old enough
     * are cut off in one piece, without touching them: they are cold, and
     * this runs under the writer lock.  (Round 2 walked a newest-first list
     * down to the cut on every call: 14 % of the 2-thread read75 profile.)
     * The cache's references are dropped after the lock is released
     * (l1__free_reclaimed, called by unlock() in l1.c). */
    unsigned k = 0;
    while (k < c->nrmark && c->rmark[k].epoch + 3 <= epoch)
        k++;
    if (k) {
        strata_l1_entry *first = c->retired, *last = c->rmark[k - 1].last;
        c->retired = last->prev;
        if (!c->retired)
            c->retired_tail = NULL;
        last->prev = c->tofree;
        c->tofree = first;
        memmove(c->rmark, c->rmark + k, (c->nrmark - k) * sizeof(c->rmark[0]));
        c->nrmark -= k;
    }
    l1_table **tp = &c->retired_tabs;
    while (*tp && (*tp)->repoch + 3 > epoch)
        tp = &(*tp)->rnext;
    l1_table *t = *tp;
    *tp = NULL;
    while (t) {
        l1_table *nx = t->rnext;
        strata_free(t);
        t = nx;
    }
}
