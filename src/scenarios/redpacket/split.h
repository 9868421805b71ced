/*
 * split.h: pre-splitting a red packet with the double-average algorithm.
 *
 * Each share i (of n, with R cents and k shares left) is drawn uniformly from
 * [1, 2R/k - 1] (capped so every later share can still get 1 cent); the last
 * share takes the remainder.  The expected value of every share is the
 * average R/k, the sum is exactly the total, and each share is >= 1 cent.
 * Randomness is a ChaCha20 keystream keyed from getrandom(2) (or from an
 * explicit seed in tests), with rejection sampling so ranges are unbiased.
 */
#ifndef STRATA_SCENARIO_REDPACKET_SPLIT_H
#define STRATA_SCENARIO_REDPACKET_SPLIT_H

#include <stddef.h>
#include <stdint.h>

/** ChaCha20-based generator; opaque contents. */
typedef struct rp_rng {
    uint32_t key[8];
    uint32_t counter;
    uint32_t block[16];
    unsigned used; /* words of `block` consumed */
} rp_rng;

/** Keys the generator from the OS (seed == NULL) or from 32 bytes of seed. STRATA_ESYS on failure. */
int rp_rng_init(rp_rng *g, const uint8_t *seed32);

/** A uniform integer in [lo, hi] (lo <= hi). */
uint64_t rp_rng_range(rp_rng *g, uint64_t lo, uint64_t hi);

/**
 * Splits `total` cents into `count` shares written to out[0..count).
 * STRATA_EINVAL unless 1 <= count <= total.
 */
int rp_split_double_average(rp_rng *g, int64_t total, int64_t count, int64_t *out);

#endif
