/*
 * limiter.c: the local token bucket and the client side of the GCRA script
 * (strata/protect.h).  The bucket refills continuously (tokens are a double)
 * so rates below one per second work; one mutex per bucket.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>

#include <string.h>

#include "strata/alloc.h"
#include "strata/embedded.h"
#include "strata/protect.h"
#include "strata/status.h"

struct strata_token_bucket {
    pthread_mutex_t mu;
    double rate_per_ns, burst, tokens;
    uint64_t last_ns;
};

strata_token_bucket *strata_token_bucket_create(double rate_per_sec, double burst,
                                                uint64_t now_ns) {
    if (!(rate_per_sec > 0) || !(burst >= 1) || !isfinite(rate_per_sec) || !isfinite(burst))
        return NULL;
    strata_token_bucket *tb = strata_calloc(1, sizeof *tb);
    if (!tb)
        return NULL;
    pthread_mutex_init(&tb->mu, NULL);
    tb->rate_per_ns = rate_per_sec / 1e9;
    tb->burst = burst;
    tb->tokens = burst;
    tb->last_ns = now_ns;
    return tb;
}

void strata_token_bucket_destroy(strata_token_bucket **tb) {
    if (!tb || !*tb)
        return;
    pthread_mutex_destroy(&(*tb)->mu);
    strata_free(*tb);
    *tb = NULL;
}

int strata_token_bucket_take(strata_token_bucket *tb, double n, uint64_t now_ns,
                             uint64_t *retry_after_ns) {
    if (!(n > 0) || n > tb->burst)
        return STRATA_EINVAL;
    int rc = STRATA_OK;
    pthread_mutex_lock(&tb->mu);
    if (now_ns > tb->last_ns) {
        tb->tokens = fmin(tb->burst, tb->tokens + (double)(now_ns - tb->last_ns) * tb->rate_per_ns);
        tb->last_ns = now_ns;
    }
    if (tb->tokens + 1e-9 >= n) {
        tb->tokens -= n;
        if (retry_after_ns)
            *retry_after_ns = 0;
    } else {
        rc = STRATA_ELIMITED;
        if (retry_after_ns)
            *retry_after_ns = (uint64_t)ceil((n - tb->tokens) / tb->rate_per_ns);
    }
    pthread_mutex_unlock(&tb->mu);
    return rc;
}

int strata_gcra_args(int64_t rate, int64_t period_ms, int64_t burst, int64_t cost,
                     char argv_out[3][24]) {
    if (rate <= 0 || period_ms <= 0 || burst <= 0 || cost <= 0 || cost > burst ||
        period_ms > INT64_MAX / 1000)
        return STRATA_EINVAL;
    int64_t interval_us = period_ms * 1000 / rate;
    if (interval_us <= 0)
        return STRATA_EINVAL; /* more than one request per microsecond */
    if (burst - 1 > INT64_MAX / interval_us)
        return STRATA_EINVAL;
    snprintf(argv_out[0], 24, "%lld", (long long)interval_us);
    snprintf(argv_out[1], 24, "%lld", (long long)(interval_us * (burst - 1)));
    snprintf(argv_out[2], 24, "%lld", (long long)cost);
    return STRATA_OK;
}

int strata_gcra_parse(const long long reply[4], size_t n, strata_gcra_result *out) {
    if (n != 4 || (reply[0] != 0 && reply[0] != 1) || reply[1] < 0)
        return STRATA_EPROTO;
    out->allowed = reply[0] == 1;
    out->remaining = reply[1];
    out->retry_after_us = reply[2];
    out->reset_after_us = reply[3];
    return STRATA_OK;
}

extern const strata_embedded strata_lib_lua_table[];

int strata_gcra_compose(const char *script, strata_buf *out) {
    const strata_embedded *g = strata_embedded_find(strata_lib_lua_table, STRATA_GCRA_SCRIPT);
    if (!g || !script)
        return STRATA_EINVAL;
    const char *mark = strstr(g->data, "-- STRATA_GCRA_CALL");
    if (!mark)
        return STRATA_EINTERNAL;
    strata_buf_append(out, g->data, (size_t)(mark - g->data));
    strata_buf_puts(out, script);
    return out->oom ? STRATA_ENOMEM : STRATA_OK;
}
