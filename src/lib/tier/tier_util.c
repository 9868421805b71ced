/*
 * tier_util.c: input checks shared by the tier (keys: UTF-8 per RFC 3629, no
 * NUL, bounded), the Redis key layout of a cached key, and the distributed
 * GCRA rate limiter (gcra.lua) over the async Redis client.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/status.h"
#include "tier_internal.h"

bool strata_utf8_valid(const void *sv, size_t len) {
    const unsigned char *s = sv;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false; /* continuation byte, overlong lead (C0, C1) or > F4 */
        }
        if (len - i - 1 < n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            unsigned cc = s[i + k];
            if ((cc & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

int strata_tier_check_key(const void *key, size_t len) {
    if (!key || len == 0)
        return STRATA_EINVAL;
    if (len > STRATA_TIER_KEY_MAX)
        return STRATA_ETOOBIG;
    if (!strata_utf8_valid(key, len))
        return STRATA_EINVAL;
    return STRATA_OK;
}

static strata_redis_script g_scripts[TIER_SCRIPT__COUNT];
static int g_scripts_rc;
static pthread_once_t g_scripts_once = PTHREAD_ONCE_INIT;
static const char *const g_script_names[TIER_SCRIPT__COUNT] = {
    "gcra.lua",
    "tier_get.lua",
    "tier_fill.lua",
    "tier_lease.lua",
    "tier_invalidate.lua",
    "tier_bloom_add.lua",
    "tier_bloom_swap.lua",
    "tier_refresh.lua",
    "tier_seen.lua",
};

static void scripts_init(void) {
    for (int i = 0; i < TIER_SCRIPT__COUNT; i++) {
        int rc = tier__script(&g_scripts[i], g_script_names[i]);
        if (rc < 0 && g_scripts_rc == 0)
            g_scripts_rc = rc;
    }
}

const strata_redis_script *tier__lib_script(int which) {
    pthread_once(&g_scripts_once, scripts_init);
    if (g_scripts_rc < 0 || which < 0 || which >= TIER_SCRIPT__COUNT)
        return NULL;
    return &g_scripts[which];
}

int strata_tier_redis_key(const char *ns, const void *key, size_t klen, strata_buf *out) {
    if (!ns || !out)
        return STRATA_EINVAL;
    strata_buf_puts(out, "st:{");
    strata_buf_puts(out, ns);
    strata_buf_puts(out, ":");
    strata_buf_append(out, key, klen);
    strata_buf_puts(out, "}");
    return out->oom ? STRATA_ENOMEM : STRATA_OK;
}

/* ---- GCRA ---------------------------------------------------------------------------- */

typedef struct gcra_ctx {
    strata_gcra_cb cb;
    void *ud;
} gcra_ctx;

static void gcra_done(void *ud, int status, const strata_redis_reply *r) {
    gcra_ctx *c = ud;
    strata_gcra_result res;
    memset(&res, 0, sizeof res);
    if (status == STRATA_OK) {
        long long v[4];
        if (!r || r->type != STRATA_REPLY_ARRAY || r->elements != 4) {
            status = STRATA_EPROTO;
        } else {
            for (size_t i = 0; i < 4; i++) {
                if (r->element[i]->type != STRATA_REPLY_INTEGER) {
                    status = STRATA_EPROTO;
                    break;
                }
                v[i] = r->element[i]->integer;
            }
            if (status == STRATA_OK)
                status = strata_gcra_parse(v, 4, &res);
        }
    }
    c->cb(c->ud, status, status == STRATA_OK ? &res : NULL);
    strata_free(c);
}

int strata_ratelimit_gcra(strata_redis *r, const char *key, int64_t rate, int64_t period_ms,
                          int64_t burst, int64_t cost, strata_gcra_cb cb, void *ud) {
    if (!r || !key || !cb || strata_tier_check_key(key, strlen(key)) != STRATA_OK)
        return STRATA_EINVAL;
    char av[3][24];
    int rc = strata_gcra_args(rate, period_ms, burst, cost, av);
    if (rc < 0)
        return rc;
    const strata_redis_script *s = tier__lib_script(TIER_SCRIPT_GCRA);
    if (!s)
        return STRATA_ENOTFOUND;
    gcra_ctx *c = strata_malloc(sizeof *c);
    if (!c)
        return STRATA_ENOMEM;
    c->cb = cb;
    c->ud = ud;
    const char *keys[1] = {key};
    size_t kl[1] = {strlen(key)};
    const char *args[3] = {av[0], av[1], av[2]};
    size_t al[3] = {strlen(av[0]), strlen(av[1]), strlen(av[2])};
    rc = strata_redis_evalsha(r, NULL, s, gcra_done, c, 1, keys, kl, 3, args, al);
    if (rc < 0)
        strata_free(c);
    return rc;
}

/* ---- background worker (relay, persister) -------------------------------------------- */

void tier__worker_init(tier__worker *w) {
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->started = w->kicked = false;
    atomic_init(&w->running, false);
}

void tier__worker_destroy(tier__worker *w) {
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

int tier__worker_start(tier__worker *w, void *(*fn)(void *), void *arg) {
    pthread_mutex_lock(&w->mu);
    if (w->started) {
        pthread_mutex_unlock(&w->mu);
        return STRATA_EEXIST;
    }
    atomic_store(&w->running, true);
    int e = pthread_create(&w->th, NULL, fn, arg);
    if (e == 0)
        w->started = true;
    else
        atomic_store(&w->running, false);
    pthread_mutex_unlock(&w->mu);
    return e == 0 ? STRATA_OK : STRATA_ESYS;
}

void tier__worker_kick(tier__worker *w) {
    pthread_mutex_lock(&w->mu);
    w->kicked = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void tier__worker_stop(tier__worker *w) {
    pthread_mutex_lock(&w->mu);
    bool join = w->started;
    w->started = false;
    atomic_store(&w->running, false);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (join)
        pthread_join(w->th, NULL);
}

void tier__worker_wait(tier__worker *w, uint32_t ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&w->cv, &w->mu, &ts);
}
