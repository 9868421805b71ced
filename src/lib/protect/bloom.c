/*
 * bloom.c: Bloom filter (strata/protect.h) for "certainly absent" answers.
 *
 * Bits are kept in Redis's bitmap order (bit i = byte i/8, mask 0x80 >> i%8),
 * so the local read copy and the copy in Redis (written by SETBIT in the
 * insert script, with positions computed here and passed as ARGV) are the
 * same bytes: a refresh is one GET and a memcpy.  Positions use double
 * hashing over XXH3-128 (Kirsch and Mitzenmacher, "Less Hashing, Same
 * Performance", 2006): pos_i = (h1 + i*h2) mod m.
 */
#include <math.h>
#include <string.h>
#include <xxhash.h>

#include "strata/alloc.h"
#include "strata/protect.h"
#include "strata/status.h"

struct strata_bloom {
    uint64_t m; /* bits, a multiple of 64 */
    uint32_t k;
    unsigned char *bytes;
};

int strata_bloom_size(uint64_t expected, double fp_rate, uint64_t *bits, uint32_t *hashes) {
    if (expected == 0 || !(fp_rate > 0) || !(fp_rate < 1) || expected > (1ull << 36))
        return STRATA_EINVAL;
    double ln2 = log(2.0);
    double m = ceil(-(double)expected * log(fp_rate) / (ln2 * ln2));
    uint64_t mb = ((uint64_t)m + 63) / 64 * 64;
    if (mb > (1ull << 32)) /* Redis strings (and SETBIT offsets) stop at 2^32 bits */
        return STRATA_EINVAL;
    double k = round((double)mb / (double)expected * ln2);
    *bits = mb;
    *hashes = k < 1 ? 1 : k > 16 ? 16 : (uint32_t)k;
    return STRATA_OK;
}

strata_bloom *strata_bloom_create(uint64_t expected, double fp_rate) {
    uint64_t mb;
    uint32_t k;
    if (strata_bloom_size(expected, fp_rate, &mb, &k) != STRATA_OK)
        return NULL;
    strata_bloom *b = strata_calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->m = mb;
    b->k = k;
    b->bytes = strata_calloc(mb / 8, 1);
    if (!b->bytes) {
        strata_free(b);
        return NULL;
    }
    return b;
}

void strata_bloom_destroy(strata_bloom **bp) {
    if (!bp || !*bp)
        return;
    strata_free((*bp)->bytes);
    strata_free(*bp);
    *bp = NULL;
}

uint64_t strata_bloom_bits(const strata_bloom *b) { return b->m; }
uint32_t strata_bloom_hashes(const strata_bloom *b) { return b->k; }

uint32_t strata_bloom_positions_mk(uint64_t bits, uint32_t hashes, const void *key, size_t len,
                                   uint64_t *pos) {
    XXH128_hash_t h = XXH3_128bits(key, len);
    uint64_t h1 = h.low64, h2 = h.high64 | 1;
    for (uint32_t i = 0; i < hashes; i++)
        pos[i] = (h1 + (uint64_t)i * h2) % bits;
    return hashes;
}

uint32_t strata_bloom_positions(const strata_bloom *b, const void *key, size_t len, uint64_t *pos) {
    return strata_bloom_positions_mk(b->m, b->k, key, len, pos);
}

bool strata_bloom_bytes_maybe_contains(const void *bytes, size_t len, uint64_t bits,
                                       uint32_t hashes, const void *key, size_t klen) {
    uint64_t pos[16];
    if (hashes > 16 || bits == 0)
        return true; /* cannot tell: "maybe" is the safe answer */
    strata_bloom_positions_mk(bits, hashes, key, klen, pos);
    const unsigned char *b = bytes;
    for (uint32_t i = 0; i < hashes; i++) {
        uint64_t byte = pos[i] >> 3;
        if (byte >= len || !(b[byte] & (0x80u >> (pos[i] & 7))))
            return false;
    }
    return true;
}

void strata_bloom_add(strata_bloom *b, const void *key, size_t len) {
    uint64_t pos[16];
    strata_bloom_positions(b, key, len, pos);
    for (uint32_t i = 0; i < b->k; i++)
        __atomic_fetch_or(&b->bytes[pos[i] >> 3], (unsigned char)(0x80u >> (pos[i] & 7)),
                          __ATOMIC_RELAXED);
}

bool strata_bloom_maybe_contains(const strata_bloom *b, const void *key, size_t len) {
    uint64_t pos[16];
    strata_bloom_positions(b, key, len, pos);
    for (uint32_t i = 0; i < b->k; i++) {
        unsigned char byte = __atomic_load_n(&b->bytes[pos[i] >> 3], __ATOMIC_RELAXED);
        if (!(byte & (0x80u >> (pos[i] & 7))))
            return false;
    }
    return true;
}

int strata_bloom_load_redis_bitmap(strata_bloom *b, const void *bytes, size_t len) {
    if (len > b->m / 8)
        return STRATA_ERANGE;
    /* Byte-wise relaxed stores: a concurrent reader sees old or new bytes, never torn bits. */
    const unsigned char *src = bytes;
    for (size_t i = 0; i < b->m / 8; i++)
        __atomic_store_n(&b->bytes[i], i < len ? src[i] : 0, __ATOMIC_RELAXED);
    return STRATA_OK;
}
