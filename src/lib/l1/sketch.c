/*
 * sketch.c: the TinyLFU frequency sketch: a 4-bit count-min sketch with a
 * doorkeeper and periodic aging.
 *
 * TinyLFU (Einziger, Friedman, Manes, "TinyLFU: A Highly Efficient Cache
 * Admission Policy", ACM ToS 2017) estimates how often each key was seen in
 * a recent sample of W accesses without storing the keys:
 *
 *   - Count-min sketch.  Each key maps to one 4-bit counter in each of four
 *     rows; its estimate is the minimum of the four (over-counts only by
 *     collisions).  The layout and arithmetic are Caffeine 2.6.2's
 *     FrequencySketch (one word per row chosen by a per-row hash, the
 *     counter group picked by two key bits), with one difference: the table
 *     has `capacity` words (16 counters each), not ceil_pow2(capacity), and
 *     a row index is the multiply-high of a 32-bit hash and the word count
 *     (Lemire's reduction), so the sketch costs exactly 8 bytes per entry of
 *     capacity (the overhead target, docs/notes/l1.md).  Caffeine 3's
 *     cache-line-blocked layout (four counters in one 64-byte block) was
 *     used before for large sketches; with everything else equal it cost
 *     0.3-1.4 points on the ARC P3 trace at 25k and 100k-400k entries (a
 *     key's four counters share one 128-counter block; it gained 0.5 at 50k),
 *     so it is gone, and
 *     the drain prefetches the four words of the entries it is about to
 *     count instead (l1.c).  Counters saturate at 15: admission only needs
 *     to compare "hot" with "hotter".
 *   - Doorkeeper.  A Bloom filter in front of the sketch: a key's first
 *     access in a sample only sets its doorkeeper bits; later ones reach the
 *     counters, and the estimate adds 1 if the key is in the doorkeeper.
 *     Most keys in real traces are one-hit wonders; keeping them out of the
 *     counters reduces collisions ("TinyLFU", section 3.4.2).  32 bits per
 *     entry of capacity, three probes (a blocked variant, three bits in one
 *     word, lost 1 point on P3 at 200k entries): measured, an 8-bit/2-probe doorkeeper
 *     saturates (false positives give new keys a free +1) and costs up to 10
 *     points on the LIRS gli trace at 250 entries (docs/notes/l1.md).
 *   - Aging (the "reset" operation).  After W = 10 x capacity additions,
 *     every counter is halved and the doorkeeper cleared, so the sketch
 *     tracks a sliding notion of recent frequency (the paper proves the
 *     halving keeps the estimate within the sample's error bound).
 *   - A hash seeded per cache, as Caffeine 2.6.2's `randomSeed` (drawn from
 *     ThreadLocalRandom in every FrequencySketch, made odd, multiplied into
 *     spread()).  The reason is security: with one fixed hash, anyone who
 *     knows it (it is in this file) can compute keys whose four counters are
 *     a victim key's, then request them to inflate the victim's estimate (so
 *     a cold key of theirs wins admission, or a victim they want kept is
 *     never evicted): admission poisoning.  With a secret per-cache seed the
 *     counter positions cannot be computed offline.  The seed is
 *     strata_l1_config.sketch_seed (0 = drawn from getrandom(2) per cache,
 *     policy.c); its splitmix64 expansion gives Caffeine's odd multiplier in
 *     spread() and the additive constant of the multiply-add before it.
 *     The key hash fed to the sketch is seeded from the same seed
 *     (l1__hash: XXH3 with a per-cache seed), so unlike equal hashCode()s in
 *     Caffeine, even keys sharing a victim's whole hash cannot be found
 *     offline; the random admission of policy.c (admit()) stays as a second
 *     defence, as in Caffeine.  A side effect: hit ratios are a draw over
 *     seeds, so benchmarks report means over fixed seeds (docs/notes/l1.md
 *     D21).
 */
#include <string.h>

#include "l1_internal.h"
#include "strata/alloc.h"
#include "strata/status.h"

static const uint64_t SEED[4] = {0xc3a5c85c97cb3127ULL, 0xb492b66fbe98f273ULL,
                                 0x9ae16a3b2f90404fULL, 0xcbf29ce484222325ULL};
#define RESET_MASK 0x7777777777777777ULL
#define ONE_MASK   0x1111111111111111ULL

static uint64_t ceil_pow2(uint64_t x) {
    uint64_t p = 1;
    while (p < x)
        p <<= 1;
    return p;
}

uint64_t l1__splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

int l1__sketch_init(l1_sketch *s, uint64_t entries, int doorkeeper, uint64_t seed) {
    memset(s, 0, sizeof(*s));
    uint64_t st = seed, x = l1__splitmix64(&st);
    for (uint32_t i = 0; i < L1_SKETCH_MEMO; i++)
        s->memo[i].hash = ~i;  /* ~i & (L1_SKETCH_MEMO - 1) != i: matches no hash of slot i */
    s->mul = (uint32_t)x | 1u; /* Caffeine 2.6.2: randomSeed, made odd */
    s->add = (uint32_t)(x >> 32);
    if (entries < 8)
        entries = 8;
    if (entries > (1ULL << 30))
        entries = 1ULL << 30;
    uint64_t words = entries;
    s->table = strata_calloc(words, sizeof(uint64_t));
    if (!s->table)
        return STRATA_ENOMEM;
    s->words = (uint32_t)words;
    s->sample = 10 * entries;
    if (doorkeeper) {
        uint64_t bits = ceil_pow2(entries) * 32; /* 4 bytes per entry of capacity, 3 probes */
        s->door = strata_calloc(bits / 64, sizeof(uint64_t));
        if (!s->door) {
            strata_free(s->table);
            s->table = NULL;
            return STRATA_ENOMEM;
        }
        s->door_mask = (uint32_t)(bits - 1);
    }
    return STRATA_OK;
}

void l1__sketch_free(l1_sketch *s) {
    strata_free(s->table);
    strata_free(s->door);
    s->table = s->door = NULL;
}

/* Caffeine 2.6.2's spread() with its per-sketch odd multiplier (randomSeed),
 * after one multiply-add that decorrelates it from the table's own use of the
 * hash (the low XXH3 bits also pick table slots); the additive constant is
 * seeded too. */
static inline uint32_t spread_seeded(const l1_sketch *s, uint32_t x) {
    x = x * 0x9E3779B1u + s->add;
    x = ((x >> 16) ^ x) * 0x45d9f3b;
    x = ((x >> 16) ^ x) * s->mul;
    return (x >> 16) ^ x;
}

/* The unseeded mix that steps the doorkeeper's probes (their first position
 * is the seeded spread). */
static inline uint32_t spread(uint32_t x) {
    x = x * 0x9E3779B1u + 0x7f4a7c15u;
    x = ((x >> 16) ^ x) * 0x45d9f3b;
    x = ((x >> 16) ^ x) * 0x45d9f3b;
    return (x >> 16) ^ x;
}

typedef struct l1_sketch_pos l1_sketch_pos;

static inline uint32_t row_word(const l1_sketch *s, uint32_t h, int i) {
    uint64_t x = SEED[i] * h;
    x += x >> 32;
    return (uint32_t)(((uint64_t)(uint32_t)x * s->words) >> 32);
}

/* The positions of hash: the word of each row (Caffeine's indexOf, reduced
 * by multiply-high instead of a power-of-two mask; the counter's offset in
 * it is ((spread & 3) * 4 + row) * 4), and the doorkeeper's three bits (a
 * Bloom filter: the first at the seeded spread, the next ones stepped by the
 * unseeded mix). */
static inline void locate(const l1_sketch *s, uint32_t hash, l1_sketch_pos *p) {
    uint32_t h = spread_seeded(s, hash);
    p->hash = hash;
    p->spread = h;
    p->word[0] = row_word(s, h, 0); /* unrolled by hand: gcc -O2 keeps the loop */
    p->word[1] = row_word(s, h, 1);
    p->word[2] = row_word(s, h, 2);
    p->word[3] = row_word(s, h, 3);
    if (s->door) {
        uint32_t x = h;
        for (int i = 0; i < 3; i++) {
            p->door[i] = x & s->door_mask;
            x = spread(x ^ 0x9e3779b9u);
        }
    }
}

/* The bit offset of row 0's counter in its word; row i's is 4 i further. */
static inline int group_shift(const l1_sketch_pos *p) { return (int)(p->spread & 3) << 4; }

/* Adds one to the 4-bit counter at bit sh of *w unless it is saturated. */
static inline bool count_up(uint64_t *w, int sh) {
    if (((*w >> sh) & 0xf) == 0xf)
        return false;
    *w += 1ULL << sh;
    return true;
}

static inline bool door_has(const l1_sketch *s, const l1_sketch_pos *p) {
    for (int i = 0; i < 3; i++)
        if (!(s->door[p->door[i] >> 6] & (1ULL << (p->door[i] & 63))))
            return false;
    return true;
}

/* The memoised positions of hash, or NULL. */
static inline const l1_sketch_pos *memo_get(const l1_sketch *s, uint32_t hash) {
    const l1_sketch_pos *p = &s->memo[hash & (L1_SKETCH_MEMO - 1)];
    return p->hash == hash ? p : NULL;
}

void l1__sketch_prefetch(l1_sketch *s, uint32_t hash) {
    l1_sketch_pos *p = &s->memo[hash & (L1_SKETCH_MEMO - 1)];
    locate(s, hash, p);
    __builtin_prefetch(&s->table[p->word[0]], 1, 1);
    __builtin_prefetch(&s->table[p->word[1]], 1, 1);
    __builtin_prefetch(&s->table[p->word[2]], 1, 1);
    __builtin_prefetch(&s->table[p->word[3]], 1, 1);
    if (s->door)
        for (int i = 0; i < 3; i++)
            __builtin_prefetch(&s->door[p->door[i] >> 6], 1, 1);
}

void l1__sketch_increment(l1_sketch *s, uint32_t hash) {
    l1_sketch_pos local;
    const l1_sketch_pos *p = memo_get(s, hash);
    if (!p) {
        locate(s, hash, &local);
        p = &local;
    }
    bool added = false;
    if (s->door && !door_has(s, p)) {
        for (int i = 0; i < 3; i++) /* first sighting in this sample: doorkeeper only */
            s->door[p->door[i] >> 6] |= 1ULL << (p->door[i] & 63);
        added = true;
    } else {
        int sh = group_shift(p);
        added |= count_up(&s->table[p->word[0]], sh);
        added |= count_up(&s->table[p->word[1]], sh + 4);
        added |= count_up(&s->table[p->word[2]], sh + 8);
        added |= count_up(&s->table[p->word[3]], sh + 12);
    }
    if (added && ++s->size >= s->sample)
        l1__sketch_reset(s);
}

int l1__sketch_frequency(const l1_sketch *s, uint32_t hash) {
    l1_sketch_pos local;
    const l1_sketch_pos *p = memo_get(s, hash);
    if (!p) {
        locate(s, hash, &local);
        p = &local;
    }
    int f = 15;
    for (int i = 0; i < 4; i++) {
        int c = (int)((s->table[p->word[i]] >> (group_shift(p) + 4 * i)) & 0xf);
        if (c < f)
            f = c;
    }
    if (s->door && door_has(s, p))
        f++;
    return f;
}

void l1__sketch_reset(l1_sketch *s) {
    uint64_t odd = 0;
    for (uint64_t i = 0; i < s->words; i++) {
        odd += (uint64_t)__builtin_popcountll(s->table[i] & ONE_MASK);
        s->table[i] = (s->table[i] >> 1) & RESET_MASK;
    }
    if (s->door)
        memset(s->door, 0, ((uint64_t)s->door_mask + 1) / 8);
    s->size = (odd >> 2) > s->size ? 0 : (s->size - (odd >> 2)) >> 1;
    s->resets++;
}

/* ---- the sampled shadow LRU ----------------------------------------------
 *
 * policy.c asks, once per climber sample, whether an exact LRU of the same
 * capacity would have hit more often than the cache did, because a hill
 * climber cannot see it on its own when the gain is behind a flat region
 * (every window below the reuse distances gains nothing: docs/notes/l1.md
 * D5, D16).  Simulating LRU over every key would cost a second set of
 * entries; SHARDS (Waldspurger, Park, Garthwaite, Ahmad: "Efficient MRC
 * Construction with SHARDS", FAST 2015) shows that LRU over the keys whose
 * hash falls below a threshold, in a cache scaled by the same rate, has the
 * hit ratio of the full LRU up to sampling error.  So: at most
 * L1_SHADOW_SLOTS (2048) slots of 12 bytes plus a 16-bit index of twice
 * that, ~32 KiB whatever the capacity (0.33 B per entry at 100k entries);
 * a cache of at most 2048 entries simulates every key (exact LRU).  Every
 * operation is O(1): one hash lookup in the index, list relinking. */

static inline uint32_t shadow_pos(const l1_shadow *s, uint32_t h) {
    h ^= h >> 16; /* murmur3's fmix32: unrelated to l1_shadow_mix */
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h & s->imask;
}

int l1__shadow_init(l1_shadow *s, uint64_t capacity, uint64_t entries) {
    memset(s, 0, sizeof(*s));
    if (entries < 1)
        entries = 1;
    uint64_t threshold;
    if (entries <= L1_SHADOW_SLOTS) {
        threshold = 1ULL << 32; /* every key */
        s->nslots = (uint32_t)entries;
        s->capacity = capacity;
    } else {
        double rate = (double)L1_SHADOW_SLOTS / (double)entries;
        s->nslots = L1_SHADOW_SLOTS;
        threshold = (uint64_t)(rate * 4294967296.0);
        s->capacity = (uint64_t)((double)capacity * rate + 0.5);
        if (s->capacity < 1)
            s->capacity = 1;
    }
    uint32_t isize = 16;
    while (isize < 2 * s->nslots)
        isize <<= 1;
    s->imask = isize - 1;
    s->slot = strata_calloc((size_t)s->nslots + 1, sizeof(l1_shadow_slot));
    s->index = strata_calloc(isize, sizeof(uint16_t));
    if (!s->slot || !s->index) {
        l1__shadow_free(s);
        return STRATA_ENOMEM;
    }
    /* free list through `next`, slots 1..nslots */
    for (uint32_t i = 1; i <= s->nslots; i++)
        s->slot[i].next = (uint16_t)(i < s->nslots ? i + 1 : 0);
    s->freel = 1;
    s->threshold = threshold; /* last: nonzero only once the slots exist */
    return STRATA_OK;
}

void l1__shadow_free(l1_shadow *s) {
    strata_free(s->slot);
    strata_free(s->index);
    s->threshold = 0;
    s->slot = NULL;
    s->index = NULL;
}

static uint32_t shadow_find(const l1_shadow *s, uint32_t hash, uint32_t *pos) {
    uint32_t i = shadow_pos(s, hash);
    for (;;) {
        uint16_t x = s->index[i];
        if (x == 0 || s->slot[x].hash == hash) {
            *pos = i;
            return x;
        }
        i = (i + 1) & s->imask;
    }
}

/* Backward-shift deletion keeps linear probing exact without tombstones. */
static void shadow_index_del(l1_shadow *s, uint32_t i) {
    s->index[i] = 0;
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & s->imask;
        uint16_t x = s->index[j];
        if (x == 0)
            return;
        uint32_t h = shadow_pos(s, s->slot[x].hash);
        if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) {
            s->index[i] = x;
            s->index[j] = 0;
            i = j;
        }
    }
}

static void shadow_unlink(l1_shadow *s, uint32_t x) {
    s->slot[s->slot[x].prev].next = s->slot[x].next;
    s->slot[s->slot[x].next].prev = s->slot[x].prev;
}

static void shadow_push_mru(l1_shadow *s, uint32_t x) {
    uint16_t mru = s->slot[0].prev;
    s->slot[x].prev = mru;
    s->slot[x].next = 0;
    s->slot[mru].next = (uint16_t)x;
    s->slot[0].prev = (uint16_t)x;
}

/* Removes slot x (at index position pos) and returns it to the free list. */
static void shadow_remove(l1_shadow *s, uint32_t x, uint32_t pos) {
    shadow_unlink(s, x);
    shadow_index_del(s, pos);
    s->size -= s->slot[x].cost;
    s->used--;
    s->slot[x].next = (uint16_t)s->freel;
    s->freel = x;
}

static void shadow_evict_lru(l1_shadow *s) {
    uint32_t x = s->slot[0].next, pos;
    (void)shadow_find(s, s->slot[x].hash, &pos);
    shadow_remove(s, x, pos);
}

void l1__shadow_ref(l1_shadow *s, uint32_t hash, uint32_t cost, int kind) {
    if (!l1_shadow_sampled(s, hash))
        return;
    uint32_t pos, x = shadow_find(s, hash, &pos);
    if (kind != L1_SHADOW_TOUCH) {
        s->events++;
        s->lru_hits += x != 0;
        s->lru_only += x != 0 && kind == L1_SHADOW_MISS;
        s->act_only += x == 0 && kind == L1_SHADOW_HIT;
    }
    if (x) {
        shadow_unlink(s, x);
        s->size += (uint64_t)cost - s->slot[x].cost;
        s->slot[x].cost = cost;
        shadow_push_mru(s, x);
    } else {
        if (cost > s->capacity)
            return;
        s->size += cost;
        while (s->used > 0 && (s->size > s->capacity || s->used == s->nslots)) {
            shadow_evict_lru(s);
        }
        (void)shadow_find(s, hash, &pos); /* evictions may have shifted the index */
        x = s->freel;
        s->freel = s->slot[x].next;
        s->slot[x].hash = hash;
        s->slot[x].cost = cost;
        s->index[pos] = (uint16_t)x;
        s->used++;
        shadow_push_mru(s, x);
    }
    while (s->size > s->capacity && s->slot[0].next != 0) /* a heavier rewrite */
        shadow_evict_lru(s);
}

void l1__shadow_drop(l1_shadow *s, uint32_t hash) {
    if (!l1_shadow_sampled(s, hash))
        return;
    uint32_t pos, x = shadow_find(s, hash, &pos);
    if (x)
        shadow_remove(s, x, pos);
}
