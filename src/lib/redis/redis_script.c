/*
 * redis_script.c: Lua scripts called by SHA1 (EVALSHA), loaded on demand.
 *
 * Scripts live as .lua files in the repository and are embedded at build
 * time (strata/embedded.h).  A strata_redis_script carries the source and its
 * SHA1, computed here (FIPS 180-4, the digest Redis uses for SCRIPT LOAD), so
 * the first call is a plain EVALSHA with no round trip to load it.  A node
 * that never saw the script (a new master after failover, a restart, SCRIPT
 * FLUSH) answers NOSCRIPT; the core then sends SCRIPT LOAD and EVALSHA back
 * to back on the same connection, once per call (redis_client.c).  NOSCRIPT
 * means the script did not run, so the re-send is always safe.
 */
#include <stdio.h>
#include <string.h>

#include "redis_priv.h"
#include "strata/alloc.h"
#include "strata/status.h"

/* ---- SHA-1 (FIPS 180-4), compact ----------------------------------------------- */

typedef struct sha1_ctx {
    uint32_t h[5];
    uint64_t len;
    unsigned char buf[64];
    size_t n;
} sha1_ctx;

static uint32_t rol(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

static void sha1_block(sha1_ctx *c, const unsigned char *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & cc) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ cc ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & cc) | (b & d) | (cc & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ cc ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = cc;
        cc = rol(b, 30);
        b = a;
        a = t;
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += cc;
    c->h[3] += d;
    c->h[4] += e;
}

static void sha1_update(sha1_ctx *c, const unsigned char *p, size_t len) {
    c->len += len;
    while (len > 0) {
        size_t take = 64 - c->n < len ? 64 - c->n : len;
        memcpy(c->buf + c->n, p, take);
        c->n += take;
        p += take;
        len -= take;
        if (c->n == 64) {
            sha1_block(c, c->buf);
            c->n = 0;
        }
    }
}

void redis__sha1_hex(const void *data, size_t len, char out[41]) {
    sha1_ctx c = {{0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}, 0, {0}, 0};
    sha1_update(&c, data, len);
    uint64_t bits = c.len * 8;
    unsigned char pad = 0x80;
    sha1_update(&c, &pad, 1);
    unsigned char zero = 0;
    while (c.n != 56)
        sha1_update(&c, &zero, 1);
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha1_update(&c, lenb, 8);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 20; i++) {
        unsigned char b = (unsigned char)(c.h[i / 4] >> (24 - 8 * (i % 4)));
        out[2 * i] = hex[b >> 4];
        out[2 * i + 1] = hex[b & 15];
    }
    out[40] = '\0';
}

/* ---- scripts ------------------------------------------------------------------ */

int strata_redis_script_init(strata_redis_script *s, const char *name, const char *src,
                             size_t len) {
    if (!s || !src || len == 0)
        return STRATA_EINVAL;
    s->name = name ? name : "";
    s->src = src;
    s->len = len;
    redis__sha1_hex(src, len, s->sha1);
    return STRATA_OK;
}

int strata_redis_script_embedded(strata_redis_script *s, const strata_embedded *table,
                                 const char *name) {
    if (!s || !table || !name)
        return STRATA_EINVAL;
    const strata_embedded *e = strata_embedded_find(table, name);
    if (!e)
        return STRATA_ENOTFOUND;
    return strata_redis_script_init(s, e->name, e->data, e->len);
}

#define EVAL_STACK_ARGS 32

int strata_redis_evalsha(strata_redis *r, const strata_redis_call *call,
                         const strata_redis_script *s, strata_redis_cb cb, void *ud, int nkeys,
                         const char *const *keys, const size_t *keylens, int nargs,
                         const char *const *args, const size_t *arglens) {
    if (!r || !s || !s->src || nkeys < 0 || nargs < 0 || (nkeys > 0 && !keys) ||
        (nargs > 0 && !args) || nkeys > 1000000 || nargs > 1000000)
        return STRATA_EINVAL;
    int argc = 3 + nkeys + nargs;
    const char *sv[EVAL_STACK_ARGS];
    size_t sl[EVAL_STACK_ARGS];
    const char **argv = sv;
    size_t *lens = sl;
    if (argc > EVAL_STACK_ARGS) {
        argv = strata_malloc((size_t)argc * sizeof(*argv));
        lens = strata_malloc((size_t)argc * sizeof(*lens));
        if (!argv || !lens) {
            strata_free(argv);
            strata_free(lens);
            return STRATA_ENOMEM;
        }
    }
    char nk[24];
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[0] = "EVALSHA";
    lens[0] = 7;
    argv[1] = s->sha1;
    lens[1] = 40;
    argv[2] = nk;
    lens[2] = strlen(nk);
    int rc = STRATA_OK;
    for (int i = 0; i < nkeys; i++) {
        if (!keys[i]) {
            rc = STRATA_EINVAL;
            break;
        }
        argv[3 + i] = keys[i];
        lens[3 + i] = keylens ? keylens[i] : strlen(keys[i]);
    }
    for (int i = 0; i < nargs && rc == STRATA_OK; i++) {
        if (!args[i]) {
            rc = STRATA_EINVAL;
            break;
        }
        argv[3 + nkeys + i] = args[i];
        lens[3 + nkeys + i] = arglens ? arglens[i] : strlen(args[i]);
    }
    if (rc == STRATA_OK)
        rc = redis__submit_argv(r, call, cb, ud, argc, argv, lens, s);
    if (argv != sv) {
        strata_free(argv);
        strata_free(lens);
    }
    return rc;
}
