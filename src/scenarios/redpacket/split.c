/* split.c: double-average red-packet split over a ChaCha20 generator (split.h). */
#include <string.h>
#include <sys/random.h>

#include "split.h"
#include "strata/status.h"

#define ROTL(a, b) (((a) << (b)) | ((a) >> (32 - (b))))
#define QR(a, b, c, d)                                                                 \
    (a += b, d ^= a, d = ROTL(d, 16), c += d, b ^= c, b = ROTL(b, 12), a += b, d ^= a, \
     d = ROTL(d, 8), c += d, b ^= c, b = ROTL(b, 7))

/* One ChaCha20 block (RFC 8439, 20 rounds), nonce zero, into g->block. */
static void refill(rp_rng *g) {
    uint32_t in[16] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
    memcpy(in + 4, g->key, sizeof g->key);
    in[12] = g->counter++;
    uint32_t x[16];
    memcpy(x, in, sizeof x);
    for (int i = 0; i < 10; i++) {
        QR(x[0], x[4], x[8], x[12]);
        QR(x[1], x[5], x[9], x[13]);
        QR(x[2], x[6], x[10], x[14]);
        QR(x[3], x[7], x[11], x[15]);
        QR(x[0], x[5], x[10], x[15]);
        QR(x[1], x[6], x[11], x[12]);
        QR(x[2], x[7], x[8], x[13]);
        QR(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 16; i++)
        g->block[i] = x[i] + in[i];
    g->used = 0;
    if (g->counter == 0) { /* 2^32 blocks: rekey from the stream itself */
        memcpy(g->key, g->block, sizeof g->key);
        g->used = 8;
    }
}

int rp_rng_init(rp_rng *g, const uint8_t *seed32) {
    memset(g, 0, sizeof *g);
    if (seed32) {
        memcpy(g->key, seed32, sizeof g->key);
    } else {
        size_t got = 0;
        while (got < sizeof g->key) {
            ssize_t n = getrandom((uint8_t *)g->key + got, sizeof g->key - got, 0);
            if (n <= 0)
                return STRATA_ESYS;
            got += (size_t)n;
        }
    }
    refill(g);
    return STRATA_OK;
}

static uint64_t next64(rp_rng *g) {
    if (g->used + 2 > 16)
        refill(g);
    uint64_t v = (uint64_t)g->block[g->used] << 32 | g->block[g->used + 1];
    g->used += 2;
    return v;
}

uint64_t rp_rng_range(rp_rng *g, uint64_t lo, uint64_t hi) {
    uint64_t span = hi - lo;
    if (span == UINT64_MAX)
        return next64(g);
    uint64_t n = span + 1;
    /* arc4random_uniform's rejection: 2^64 mod n low values are dropped so v % n is uniform. */
    uint64_t threshold = (0 - n) % n;
    uint64_t v;
    do {
        v = next64(g);
    } while (v < threshold);
    return lo + v % n;
}

int rp_split_double_average(rp_rng *g, int64_t total, int64_t count, int64_t *out) {
    if (count < 1 || total < count)
        return STRATA_EINVAL;
    int64_t remain = total;
    for (int64_t i = 0; i < count - 1; i++) {
        int64_t left = count - i; /* shares still to hand out, this one included */
        int64_t max = remain / left * 2 - 1;
        int64_t cap = remain - (left - 1); /* leave 1 cent for each later share */
        if (max > cap)
            max = cap;
        if (max < 1)
            max = 1;
        out[i] = (int64_t)rp_rng_range(g, 1, (uint64_t)max);
        remain -= out[i];
    }
    out[count - 1] = remain;
    return STRATA_OK;
}
