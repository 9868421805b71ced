/*
 * jitter.c: TTL jitter, XFetch early refresh and the thread-local PRNG
 * (strata/protect.h).
 *
 * XFetch (Vattani et al., VLDB 2015): each reader of a cached value that
 * took `delta` to compute refreshes it early when
 *     now - delta * beta * ln(rand()) >= expiry.
 * -ln(rand()) is exponentially distributed, so the chance of an early refresh
 * grows smoothly as expiry nears and with the cost of recomputation; with
 * many readers one of them refreshes shortly before expiry and the others
 * keep the current value.  The paper proves beta = 1 optimal in expectation.
 */
#include <math.h>
#include <sys/random.h>
#include <time.h>

#include "strata/protect.h"

static _Thread_local uint64_t rng_s[4];
static _Thread_local int rng_seeded;

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t strata_rand64(void) {
    if (!rng_seeded) {
        if (getrandom(rng_s, sizeof rng_s, 0) != (ssize_t)sizeof rng_s) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t z = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)&rng_s;
            for (int i = 0; i < 4; i++) { /* splitmix64 */
                z += 0x9e3779b97f4a7c15ull;
                uint64_t x = z;
                x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
                x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
                rng_s[i] = x ^ (x >> 31);
            }
        }
        if (!(rng_s[0] | rng_s[1] | rng_s[2] | rng_s[3]))
            rng_s[0] = 1;
        rng_seeded = 1;
    }
    uint64_t result = rotl(rng_s[1] * 5, 7) * 9, t = rng_s[1] << 17;
    rng_s[2] ^= rng_s[0];
    rng_s[3] ^= rng_s[1];
    rng_s[1] ^= rng_s[2];
    rng_s[0] ^= rng_s[3];
    rng_s[2] ^= t;
    rng_s[3] = rotl(rng_s[3], 45);
    return result;
}

uint64_t strata_ttl_jitter(uint64_t ttl, uint32_t pct, uint64_t rnd) {
    if (pct > 100)
        pct = 100;
    if (ttl == 0 || pct == 0)
        return ttl ? ttl : 1;
    /* spread = ttl * pct / 100, computed without overflow for large ttl */
    uint64_t spread = ttl / 100 * pct + ttl % 100 * pct / 100;
    uint64_t low = ttl - spread;
    uint64_t width = spread * 2 + 1;
    uint64_t v = low + (width ? rnd % width : 0);
    return v ? v : 1;
}

bool strata_xfetch_should_refresh(uint64_t now_ns, uint64_t expiry_ns, uint64_t delta_ns,
                                  double beta, uint64_t rnd) {
    if (now_ns >= expiry_ns)
        return true;
    double u = (double)((rnd >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
    double early = (double)delta_ns * beta * -log(u);
    return (double)now_ns + early >= (double)expiry_ns;
}
