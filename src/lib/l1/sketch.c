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

int l1__sketch_init(l1_sketch *s, uint64_t entries, int doorkeeper) {
    memset(s, 0, sizeof(*s));
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

/* Caffeine's spread(), after one multiply-add that decorrelates it from the
 * table's own use of the hash (the low XXH3 bits also pick table slots). */
static inline uint32_t spread(uint32_t x) {
    x = x * 0x9E3779B1u + 0x7f4a7c15u;
    x = ((x >> 16) ^ x) * 0x45d9f3b;
    x = ((x >> 16) ^ x) * 0x45d9f3b;
    return (x >> 16) ^ x;
}

/* The doorkeeper: a Bloom filter with three probes. */
static inline bool door_test_set(l1_sketch *s, uint32_t h, bool set) {
    bool in = true;
    uint32_t x = h;
    for (int i = 0; i < 3; i++) {
        uint32_t b = x & s->door_mask;
        if (!(s->door[b >> 6] & (1ULL << (b & 63))))
            in = false;
        x = spread(x ^ 0x9e3779b9u);
    }
    if (set && !in) {
        x = h;
        for (int i = 0; i < 3; i++) {
            uint32_t b = x & s->door_mask;
            s->door[b >> 6] |= 1ULL << (b & 63);
            x = spread(x ^ 0x9e3779b9u);
        }
    }
    return in;
}

/* Row i of key hash h: the word (Caffeine's indexOf, reduced by multiply-high
 * instead of a power-of-two mask) and the counter's bit offset in it. */
static inline void locate(const l1_sketch *s, uint32_t h, int i, uint32_t *word, int *shift) {
    uint64_t x = SEED[i] * h;
    x += x >> 32;
    *word = (uint32_t)(((uint64_t)(uint32_t)x * s->words) >> 32);
    *shift = (int)(((h & 3) << 2) + (uint32_t)i) << 2;
}

void l1__sketch_prefetch(const l1_sketch *s, uint32_t hash) {
    uint32_t h = spread(hash);
    for (int i = 0; i < 4; i++) {
        uint32_t w;
        int sh;
        locate(s, h, i, &w, &sh);
        __builtin_prefetch(&s->table[w], 1, 1);
    }
}

void l1__sketch_increment(l1_sketch *s, uint32_t hash) {
    uint32_t h = spread(hash);
    bool added = false;
    if (s->door && !door_test_set(s, h, true)) {
        added = true; /* first sighting in this sample: doorkeeper only */
    } else {
        for (int i = 0; i < 4; i++) {
            uint32_t w;
            int sh;
            locate(s, h, i, &w, &sh);
            if (((s->table[w] >> sh) & 0xf) != 0xf) {
                s->table[w] += 1ULL << sh;
                added = true;
            }
        }
    }
    if (added && ++s->size >= s->sample)
        l1__sketch_reset(s);
}

int l1__sketch_frequency(const l1_sketch *s, uint32_t hash) {
    uint32_t h = spread(hash);
    int f = 15;
    for (int i = 0; i < 4; i++) {
        uint32_t w;
        int sh;
        locate(s, h, i, &w, &sh);
        int c = (int)((s->table[w] >> sh) & 0xf);
        if (c < f)
            f = c;
    }
    if (s->door && door_test_set((l1_sketch *)s, h, false))
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
