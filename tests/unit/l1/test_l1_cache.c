/*
 * test_l1_cache.c: unit tests of the L1 cache (include/strata/l1.h):
 * table semantics, capacity bound, listener causes, references, TTL with a
 * manual clock (no sleeps), negative caching, loading (singleflight,
 * invalidation and set racing a load, stale-if-error, refresh-ahead), policy
 * decisions (admission, window adaptation, aging), metrics, and a sweep
 * that fails the N-th allocation.
 */
/* ctest-labels: quick */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "strata/alloc.h"
#include "strata/clock.h"
#include "strata/l1.h"
#include "strata/metrics.h"
#include "strata/status.h"

#include "l1/l1_internal.h" /* l1_bytes_eq, l1__hash */
#include "l1_test.h"

#define SEC STRATA_NS_PER_SEC

static strata_l1 *mk(uint64_t cap, strata_l1_policy pol, strata_clock *clk) {
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = cap;
    cfg.policy = pol;
    cfg.clock = clk;
    strata_l1 *c = NULL;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    return c;
}

static int setk(strata_l1 *c, const char *k, const char *v) {
    return strata_l1_set(c, k, strlen(k), v, strlen(v), NULL);
}

/* Returns the outcome and the value in buf (NUL-terminated) */
static int getk(strata_l1 *c, const char *k, char *buf, size_t cap) {
    size_t vlen = 0;
    int rc = strata_l1_get_copy(c, k, strlen(k), buf, cap - 1, &vlen);
    buf[rc >= 0 ? vlen : 0] = 0;
    return rc;
}

/* Fills half of a W-TinyLFU cache with one-off keys: the sketch (as in
 * Caffeine 2.6.2) starts counting at half full, and the policy tests below
 * are about a warmed cache. */
static void warm_half(strata_l1 *c, uint64_t cap) {
    char k[32];
    for (uint64_t i = 0; i <= cap / 2; i++) {
        snprintf(k, sizeof k, "fill%llu", (unsigned long long)i);
        assert_int_equal(setk(c, k, "w"), STRATA_OK);
    }
}

/* Keys and values of every length around the inline compare and copy of
 * the read path (l1_internal.h: 4..16 bytes as two overlapping words,
 * memcmp and memcpy beyond).  The compare itself first: a lookup reaches it
 * only when 48 hash bits match, so through the API a wrong compare could
 * not show.  Then the API: a key one byte off misses, the key hits, and the
 * copy writes exactly vlen bytes. */
static void test_key_and_value_lengths(void **state) {
    (void)state;
    unsigned char a[40], b[40];
    for (size_t n = 1; n <= sizeof a; n++) {
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] = (unsigned char)(i * 13 + n);
        assert_true(l1_bytes_eq(a, b, n));
        for (size_t i = 0; i < n; i++) {
            b[i] ^= 0x80;
            assert_false(l1_bytes_eq(a, b, n));
            b[i] ^= 0x80;
        }
    }
    strata_l1 *c = mk(1000, STRATA_L1_WTINYLFU, NULL);
    unsigned char key[40], val[40], probe[40], out[48];
    for (size_t n = 1; n <= sizeof key; n++) {
        for (size_t i = 0; i < n; i++) {
            key[i] = (unsigned char)(0xA0 + n);
            val[i] = (unsigned char)(n * 7 + i);
        }
        assert_int_equal(strata_l1_set(c, key, n, val, n, NULL), STRATA_OK);
        for (size_t i = 0; i < n; i++) { /* one byte off at every position */
            memcpy(probe, key, n);
            probe[i] ^= 0x01;
            assert_int_equal(strata_l1_get_copy(c, probe, n, NULL, 0, NULL), STRATA_ENOTFOUND);
        }
        memset(out, 0xEE, sizeof out);
        size_t vlen = 0;
        assert_int_equal(strata_l1_get_copy(c, key, n, out, sizeof out, &vlen), STRATA_L1_HIT);
        assert_int_equal(vlen, n);
        assert_memory_equal(out, val, n);
        for (size_t i = n; i < sizeof out; i++)
            assert_int_equal(out[i], 0xEE); /* nothing written past vlen */
    }
    for (size_t n = 1; n <= sizeof key; n++) { /* every length is a distinct key */
        memset(key, (int)(0xA0 + n), n);
        size_t vlen = 0;
        assert_int_equal(strata_l1_get_copy(c, key, n, NULL, 0, &vlen), STRATA_L1_HIT);
        assert_int_equal(vlen, n);
    }
    strata_l1_destroy(&c);
}

static void test_set_get_replace_invalidate(void **state) {
    (void)state;
    strata_l1 *c = mk(100, STRATA_L1_WTINYLFU, NULL);
    char buf[64];
    assert_int_equal(getk(c, "a", buf, sizeof buf), STRATA_ENOTFOUND);
    assert_int_equal(setk(c, "a", "1"), STRATA_OK);
    assert_int_equal(getk(c, "a", buf, sizeof buf), STRATA_L1_HIT);
    assert_string_equal(buf, "1");
    assert_int_equal(setk(c, "a", "22"), STRATA_OK); /* replace */
    assert_int_equal(getk(c, "a", buf, sizeof buf), STRATA_L1_HIT);
    assert_string_equal(buf, "22");
    assert_int_equal(strata_l1_size(c), 1);
    /* too small a buffer: ERANGE and the length */
    size_t vlen = 0;
    assert_int_equal(strata_l1_get_copy(c, "a", 1, buf, 1, &vlen), STRATA_ERANGE);
    assert_int_equal(vlen, 2);
    /* get_buf */
    strata_buf b = STRATA_BUF_INIT;
    assert_int_equal(strata_l1_get_buf(c, "a", 1, &b), STRATA_L1_HIT);
    assert_int_equal(b.len, 2);
    assert_memory_equal(b.data, "22", 2);
    strata_buf_free(&b);
    assert_int_equal(strata_l1_invalidate(c, "a", 1), STRATA_OK);
    assert_int_equal(strata_l1_invalidate(c, "a", 1), STRATA_ENOTFOUND);
    assert_int_equal(getk(c, "a", buf, sizeof buf), STRATA_ENOTFOUND);
    /* bad input */
    assert_int_equal(strata_l1_set(c, NULL, 1, "x", 1, NULL), STRATA_EINVAL);
    assert_int_equal(strata_l1_set(c, "k", 0, "x", 1, NULL), STRATA_EINVAL);
    assert_int_equal(strata_l1_get_copy(c, "", 0, buf, 1, NULL), STRATA_EINVAL);
    strata_l1_set_opts big = {.cost = 101};
    assert_int_equal(strata_l1_set(c, "k", 1, "x", 1, &big), STRATA_ETOOBIG);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.evictions[STRATA_L1_CAUSE_REPLACED], 1);
    assert_int_equal(st.evictions[STRATA_L1_CAUSE_INVALIDATED], 1);
    assert_true(st.hits >= 3);
    strata_l1_destroy(&c);
    assert_null(c);
    strata_l1_destroy(&c); /* NULL is a no-op */
}

static void test_prefix_and_clear(void **state) {
    (void)state;
    strata_l1 *c = mk(1000, STRATA_L1_WTINYLFU, NULL);
    char k[32], buf[32];
    for (int i = 0; i < 50; i++) {
        snprintf(k, sizeof k, "user:%d", i);
        assert_int_equal(setk(c, k, "u"), STRATA_OK);
        snprintf(k, sizeof k, "feed:%d", i);
        assert_int_equal(setk(c, k, "f"), STRATA_OK);
    }
    assert_int_equal(strata_l1_invalidate_prefix(c, "user:", 5), 50);
    assert_int_equal(getk(c, "user:7", buf, sizeof buf), STRATA_ENOTFOUND);
    assert_int_equal(getk(c, "feed:7", buf, sizeof buf), STRATA_L1_HIT);
    assert_int_equal(strata_l1_size(c), 50);
    assert_int_equal(strata_l1_clear(c), 50);
    assert_int_equal(strata_l1_size(c), 0);
    assert_int_equal(getk(c, "feed:7", buf, sizeof buf), STRATA_ENOTFOUND);
    strata_l1_destroy(&c);
}

typedef struct {
    int count[STRATA_L1_CAUSE__COUNT];
    char last_key[32];
} listen_log;

static void listener(void *ctx, const strata_l1_entry *e, strata_l1_cause cause) {
    listen_log *l = ctx;
    l->count[cause]++;
    size_t kl;
    const void *k = strata_l1_entry_key(e, &kl);
    if (kl < sizeof l->last_key) {
        memcpy(l->last_key, k, kl);
        l->last_key[kl] = 0;
    }
}

static void test_capacity_bound_and_listener(void **state) {
    (void)state;
    for (int pol = 0; pol < 3; pol++) {
        listen_log log = {{0}, ""};
        strata_l1_config cfg;
        strata_l1_config_init(&cfg);
        cfg.sketch_seed = TEST_SKETCH_SEED;
        cfg.capacity = 64;
        cfg.policy = (strata_l1_policy)pol;
        cfg.listener = listener;
        cfg.listener_ctx = &log;
        strata_l1 *c;
        assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
        char k[32], buf[32];
        for (int i = 0; i < 1000; i++) {
            snprintf(k, sizeof k, "k%d", i);
            assert_int_equal(setk(c, k, "v"), STRATA_OK);
            /* the honest bound, and read-your-write, after every set */
            assert_true(strata_l1_size(c) <= 64);
            assert_int_equal(getk(c, k, buf, sizeof buf), STRATA_L1_HIT);
        }
        assert_int_equal(log.count[STRATA_L1_CAUSE_SIZE], 1000 - (int)strata_l1_size(c));
        setk(c, "k999", "w");
        assert_int_equal(log.count[STRATA_L1_CAUSE_REPLACED], 1);
        assert_string_equal(log.last_key, "k999");
        strata_l1_invalidate(c, "k999", 4);
        assert_int_equal(log.count[STRATA_L1_CAUSE_INVALIDATED], 1);
        strata_l1_destroy(&c);
    }
}

static void test_weighted_capacity(void **state) {
    (void)state;
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = 10000;
    cfg.weigh = STRATA_L1_WEIGH_BYTES;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    char v[300];
    memset(v, 'x', sizeof v);
    for (int i = 0; i < 200; i++) {
        char k[16];
        snprintf(k, sizeof k, "w%d", i);
        assert_int_equal(strata_l1_set(c, k, strlen(k), v, (size_t)(i % 300), NULL), STRATA_OK);
        assert_true(strata_l1_cost(c) <= 10000);
    }
    assert_int_equal(strata_l1_set(c, "huge", 4, v, 300, &(strata_l1_set_opts){.cost = 20000}),
                     STRATA_ETOOBIG);
    strata_l1_destroy(&c);
}

static void test_reference_outlives_eviction(void **state) {
    (void)state;
    strata_l1 *c = mk(4, STRATA_L1_LRU, NULL);
    setk(c, "held", "value-held");
    strata_l1_entry *e = NULL;
    assert_int_equal(strata_l1_acquire(c, "held", 4, &e), STRATA_L1_HIT);
    char k[16];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "x%d", i);
        setk(c, k, "v");
        strata_l1_maintain(c); /* runs reclamation: the held entry must survive it */
    }
    char buf[32];
    assert_int_equal(getk(c, "held", buf, sizeof buf), STRATA_ENOTFOUND);
    size_t vl;
    const char *v = strata_l1_entry_value(e, &vl);
    assert_int_equal(vl, 10);
    assert_memory_equal(v, "value-held", 10);
    strata_l1_release(&e);
    assert_null(e);
    strata_l1_destroy(&c);
}

static void test_ttl_manual_clock(void **state) {
    (void)state;
    strata_clock *clk = strata_clock_create_manual(1000 * SEC, 0);
    listen_log log = {{0}, ""};
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = 100;
    cfg.clock = clk;
    cfg.ttl_ns = 10 * SEC;
    cfg.listener = listener;
    cfg.listener_ctx = &log;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    char buf[32];
    setk(c, "default", "d"); /* 10 s */
    strata_l1_set(c, "short", 5, "s", 1, &(strata_l1_set_opts){.ttl_ns = 2 * SEC});
    strata_l1_set(c, "forever", 7, "f", 1, &(strata_l1_set_opts){.no_ttl = 1});
    strata_l1_set(c, "swr", 3, "w", 1,
                  &(strata_l1_set_opts){.ttl_ns = 3 * SEC, .stale_ns = 4 * SEC});
    assert_int_equal(getk(c, "short", buf, sizeof buf), STRATA_L1_HIT);
    strata_clock_advance(clk, 2 * SEC);
    /* expiry on read is exact, before any reaping */
    assert_int_equal(getk(c, "short", buf, sizeof buf), STRATA_ENOTFOUND);
    assert_int_equal(getk(c, "default", buf, sizeof buf), STRATA_L1_HIT);
    strata_clock_advance(clk, 1 * SEC + 1);
    assert_int_equal(getk(c, "swr", buf, sizeof buf), STRATA_L1_STALE); /* soft passed */
    assert_string_equal(buf, "w");
    strata_clock_advance(clk, 5 * SEC);
    assert_int_equal(getk(c, "swr", buf, sizeof buf), STRATA_ENOTFOUND);  /* hard passed */
    assert_int_equal(getk(c, "default", buf, sizeof buf), STRATA_L1_HIT); /* 8 s of 10 */
    assert_int_equal(getk(c, "forever", buf, sizeof buf), STRATA_L1_HIT);
    /* the wheel reclaims expired entries without a read */
    strata_clock_advance(clk, 2 * SEC);
    assert_int_equal(getk(c, "default", buf, sizeof buf), STRATA_ENOTFOUND);
    strata_l1_maintain(c);
    assert_int_equal(strata_l1_size(c), 1);
    assert_int_equal(log.count[STRATA_L1_CAUSE_EXPIRED], 3);
    /* a long TTL lands on a coarse level and cascades down */
    strata_l1_set(c, "hour", 4, "h", 1, &(strata_l1_set_opts){.ttl_ns = 3600 * SEC});
    for (int i = 0; i < 59; i++) {
        strata_clock_advance(clk, 60 * SEC);
        strata_l1_maintain(c);
    }
    assert_int_equal(getk(c, "hour", buf, sizeof buf), STRATA_L1_HIT);
    strata_clock_advance(clk, 61 * SEC);
    strata_l1_maintain(c);
    assert_int_equal(log.count[STRATA_L1_CAUSE_EXPIRED], 4);
    assert_int_equal(strata_l1_size(c), 1);
    strata_l1_destroy(&c);
    strata_clock_destroy(&clk);
}

static void test_ttl_jitter(void **state) {
    (void)state;
    strata_clock *clk = strata_clock_create_manual(SEC, 0);
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = 1000;
    cfg.clock = clk;
    cfg.jitter_pct = 20;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    char k[16], buf[16];
    for (int i = 0; i < 200; i++) {
        snprintf(k, sizeof k, "j%d", i);
        strata_l1_set(c, k, strlen(k), "v", 1,
                      &(strata_l1_set_opts){.ttl_ns = 100 * SEC, .jitter = 1});
    }
    /* at 85 s (within -20 %) some have expired, at 79 s none, at 121 s all */
    strata_clock_advance(clk, 79 * SEC);
    int alive = 0;
    for (int i = 0; i < 200; i++) {
        snprintf(k, sizeof k, "j%d", i);
        alive += getk(c, k, buf, sizeof buf) == STRATA_L1_HIT;
    }
    assert_int_equal(alive, 200);
    strata_clock_advance(clk, 21 * SEC);
    alive = 0;
    for (int i = 0; i < 200; i++) {
        snprintf(k, sizeof k, "j%d", i);
        alive += getk(c, k, buf, sizeof buf) == STRATA_L1_HIT;
    }
    assert_true(alive > 20 && alive < 180); /* spread around the nominal TTL */
    strata_clock_advance(clk, 21 * SEC);
    alive = 0;
    for (int i = 0; i < 200; i++) {
        snprintf(k, sizeof k, "j%d", i);
        alive += getk(c, k, buf, sizeof buf) == STRATA_L1_HIT;
    }
    assert_int_equal(alive, 0);
    strata_l1_destroy(&c);
    strata_clock_destroy(&clk);
}

/* ---- loading ------------------------------------------------------------- */

typedef struct {
    int started;
    strata_l1_load *pending[8];
    int npending;
    int sync_status; /* complete synchronously with this status when >= -100 */
    const char *sync_value;
    int sync;
} loader_state;

static void loader(void *ctx, strata_l1_load *ld, const void *key, size_t klen) {
    loader_state *ls = ctx;
    ls->started++;
    if (ls->sync) {
        strata_l1_load_complete(ld, ls->sync_status, ls->sync_value,
                                ls->sync_value ? strlen(ls->sync_value) : 0, NULL);
        return;
    }
    assert_true(ls->npending < 8);
    ls->pending[ls->npending++] = ld;
    size_t kl;
    assert_memory_equal(strata_l1_load_key(ld, &kl), key, klen);
}

typedef struct {
    int calls;
    int status;
    int outcome;
    char value[32];
} waiter;

static void done(void *ud, int status, strata_l1_outcome outcome, strata_l1_entry *e) {
    waiter *w = ud;
    w->calls++;
    w->status = status;
    w->outcome = (int)outcome;
    w->value[0] = 0;
    if (e) {
        size_t vl;
        const char *v = strata_l1_entry_value(e, &vl);
        if (vl < sizeof w->value) {
            memcpy(w->value, v, vl);
            w->value[vl] = 0;
        }
        strata_l1_release(&e);
    }
}

static void test_singleflight(void **state) {
    (void)state;
    strata_l1 *c = mk(100, STRATA_L1_WTINYLFU, NULL);
    loader_state ls = {0};
    waiter w[5] = {{0}};
    strata_l1_entry *e = NULL;
    for (int i = 0; i < 5; i++)
        assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w[i], &e),
                         STRATA_L1_PENDING);
    assert_int_equal(ls.started, 1); /* one loader for five misses */
    assert_int_equal(strata_l1_load_complete(ls.pending[0], STRATA_OK, "val", 3, NULL), STRATA_OK);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(w[i].calls, 1);
        assert_int_equal(w[i].status, STRATA_OK);
        assert_int_equal(w[i].outcome, STRATA_L1_HIT);
        assert_string_equal(w[i].value, "val");
    }
    /* now cached: a hit, done not called, loader not started */
    waiter w2 = {0};
    assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w2, &e), STRATA_L1_HIT);
    assert_non_null(e);
    strata_l1_release(&e);
    assert_int_equal(w2.calls, 0);
    assert_int_equal(ls.started, 1);
    /* a loader completing synchronously calls done before returning */
    loader_state sy = {.sync = 1, .sync_status = STRATA_OK, .sync_value = "now"};
    waiter w3 = {0};
    assert_int_equal(strata_l1_get_or_load(c, "s", 1, loader, &sy, done, &w3, &e),
                     STRATA_L1_PENDING);
    assert_int_equal(w3.calls, 1);
    assert_string_equal(w3.value, "now");
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.loads, 2);
    assert_int_equal(st.load_joins, 4);
    strata_l1_destroy(&c);
}

static void test_load_errors_and_negative_caching(void **state) {
    (void)state;
    strata_clock *clk = strata_clock_create_manual(SEC, 0);
    strata_l1 *c = mk(100, STRATA_L1_WTINYLFU, clk);
    loader_state ls = {0};
    waiter w = {0};
    strata_l1_entry *e = NULL;
    /* without negative caching an error is not cached */
    assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e),
                     STRATA_L1_PENDING);
    strata_l1_load_complete(ls.pending[0], STRATA_EUNAVAIL, NULL, 0, NULL);
    assert_int_equal(w.status, STRATA_EUNAVAIL);
    assert_int_equal(w.outcome, STRATA_L1_PENDING);
    assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e),
                     STRATA_L1_PENDING);
    assert_int_equal(ls.started, 2);
    strata_l1_load_complete(ls.pending[1], STRATA_ENOTFOUND, NULL, 0, NULL);
    strata_l1_destroy(&c);

    /* with it: cached for negative_ttl, then loaded again */
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = 100;
    cfg.clock = clk;
    cfg.negative_ttl_ns = 5 * SEC;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    loader_state l2 = {0};
    waiter w2 = {0};
    assert_int_equal(strata_l1_get_or_load(c, "n", 1, loader, &l2, done, &w2, &e),
                     STRATA_L1_PENDING);
    strata_l1_load_complete(l2.pending[0], STRATA_ENOTFOUND, NULL, 0, NULL);
    assert_int_equal(w2.status, STRATA_ENOTFOUND);
    assert_int_equal(w2.outcome, STRATA_L1_NEGATIVE);
    assert_int_equal(strata_l1_get_or_load(c, "n", 1, loader, &l2, done, &w2, &e),
                     STRATA_L1_NEGATIVE);
    assert_non_null(e);
    assert_int_equal(strata_l1_entry_status(e), STRATA_ENOTFOUND);
    strata_l1_release(&e);
    assert_int_equal(l2.started, 1);
    strata_clock_advance(clk, 5 * SEC);
    assert_int_equal(strata_l1_get_or_load(c, "n", 1, loader, &l2, done, &w2, &e),
                     STRATA_L1_PENDING);
    assert_int_equal(l2.started, 2);
    strata_l1_load_complete(l2.pending[1], STRATA_OK, "found", 5, NULL);
    assert_string_equal(w2.value, "found");
    strata_l1_destroy(&c);
    strata_clock_destroy(&clk);
}

static void test_invalidation_wins_over_load(void **state) {
    (void)state;
    strata_l1 *c = mk(100, STRATA_L1_WTINYLFU, NULL);
    loader_state ls = {0};
    waiter w = {0}, w2 = {0};
    strata_l1_entry *e = NULL;
    char buf[32];
    /* invalidate by key while loading: the result reaches the waiter, not the cache */
    strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e);
    assert_int_equal(strata_l1_invalidate(c, "k", 1), STRATA_ENOTFOUND);
    /* a miss after the invalidation starts a fresh load */
    assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w2, &e),
                     STRATA_L1_PENDING);
    assert_int_equal(ls.started, 2);
    strata_l1_load_complete(ls.pending[0], STRATA_OK, "old", 3, NULL);
    assert_string_equal(w.value, "old");
    assert_int_equal(getk(c, "k", buf, sizeof buf), STRATA_ENOTFOUND); /* dropped */
    strata_l1_load_complete(ls.pending[1], STRATA_OK, "new", 3, NULL);
    assert_int_equal(getk(c, "k", buf, sizeof buf), STRATA_L1_HIT);
    assert_string_equal(buf, "new");
    /* prefix and clear also win */
    strata_l1_get_or_load(c, "p:1", 3, loader, &ls, done, &w, &e);
    strata_l1_get_or_load(c, "q:1", 3, loader, &ls, done, &w, &e);
    assert_int_equal(strata_l1_invalidate_prefix(c, "p:", 2), 0);
    strata_l1_load_complete(ls.pending[2], STRATA_OK, "x", 1, NULL);
    assert_int_equal(getk(c, "p:1", buf, sizeof buf), STRATA_ENOTFOUND);
    strata_l1_clear(c);
    strata_l1_load_complete(ls.pending[3], STRATA_OK, "y", 1, NULL);
    assert_int_equal(getk(c, "q:1", buf, sizeof buf), STRATA_ENOTFOUND);
    /* a set during a load wins too (read-your-write) */
    strata_l1_get_or_load(c, "s", 1, loader, &ls, done, &w, &e);
    setk(c, "s", "written");
    strata_l1_load_complete(ls.pending[4], STRATA_OK, "loaded", 6, NULL);
    assert_int_equal(getk(c, "s", buf, sizeof buf), STRATA_L1_HIT);
    assert_string_equal(buf, "written");
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.loads_dropped, 4);
    strata_l1_destroy(&c);
}

static void test_stale_while_revalidate_and_if_error(void **state) {
    (void)state;
    strata_clock *clk = strata_clock_create_manual(SEC, 0);
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = 100;
    cfg.clock = clk;
    cfg.load_ttl_ns = 10 * SEC;
    cfg.stale_ns = 60 * SEC;
    cfg.jitter_pct = 0;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    loader_state ls = {0};
    waiter w = {0};
    strata_l1_entry *e = NULL;
    strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e);
    strata_l1_load_complete(ls.pending[0], STRATA_OK, "v1", 2, NULL);
    strata_clock_advance(clk, 11 * SEC);
    /* stale: served at once, one background refresh started */
    assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e), STRATA_L1_STALE);
    strata_l1_release(&e);
    assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e), STRATA_L1_STALE);
    strata_l1_release(&e);
    assert_int_equal(ls.started, 2);
    assert_int_equal(w.calls, 1);
    /* the refresh fails: stale-if-error keeps the old value */
    strata_l1_load_complete(ls.pending[1], STRATA_EUNAVAIL, NULL, 0, NULL);
    char buf[16];
    assert_int_equal(getk(c, "k", buf, sizeof buf), STRATA_L1_STALE);
    assert_string_equal(buf, "v1");
    /* next stale read refreshes again; this one succeeds */
    assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e), STRATA_L1_STALE);
    strata_l1_release(&e);
    strata_l1_load_complete(ls.pending[2], STRATA_OK, "v2", 2, NULL);
    assert_int_equal(getk(c, "k", buf, sizeof buf), STRATA_L1_HIT);
    assert_string_equal(buf, "v2");
    /* past the hard TTL a failing load has nothing to fall back on */
    strata_clock_advance(clk, 80 * SEC);
    waiter w2 = {0};
    assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w2, &e),
                     STRATA_L1_PENDING);
    strata_l1_load_complete(ls.pending[3], STRATA_EUNAVAIL, NULL, 0, NULL);
    assert_int_equal(w2.status, STRATA_EUNAVAIL);
    strata_l1_destroy(&c);
    strata_clock_destroy(&clk);
}

static void test_refresh_ahead_xfetch(void **state) {
    (void)state;
    strata_clock *clk = strata_clock_create_manual(SEC, 0);
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = 100;
    cfg.clock = clk;
    cfg.load_ttl_ns = 10 * SEC;
    cfg.jitter_pct = 0;
    cfg.refresh_beta = 1.0;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    loader_state ls = {0};
    waiter w = {0};
    strata_l1_entry *e = NULL;
    strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e);
    strata_clock_advance(clk, 2 * SEC); /* the load took 2 s: delta = 2 s */
    strata_l1_load_complete(ls.pending[0], STRATA_OK, "v1", 2, NULL);
    /* right after the load, an early refresh is very unlikely: P = exp(-10/2) */
    int early = 0;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e),
                         STRATA_L1_HIT);
        strata_l1_release(&e);
    }
    early = ls.started - 1;
    assert_true(early <= 1);
    /* at 9.9 s of 10, with delta 2 s, XFetch refreshes with P ~ 95 %, once */
    strata_clock_advance(clk, 9900 * STRATA_NS_PER_MS);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(strata_l1_get_or_load(c, "k", 1, loader, &ls, done, &w, &e),
                         STRATA_L1_HIT);
        strata_l1_release(&e);
    }
    /* exactly one refresh in flight either way: an early one (rare) blocks
     * a second, otherwise the 9.9 s reads started it */
    assert_int_equal(ls.started, 2);
    strata_l1_load_complete(ls.pending[ls.npending - 1], STRATA_OK, "v2", 2, NULL);
    char buf[8];
    assert_int_equal(getk(c, "k", buf, sizeof buf), STRATA_L1_HIT);
    assert_string_equal(buf, "v2");
    strata_l1_destroy(&c);
    strata_clock_destroy(&clk);
}

/* ---- policy decisions ---------------------------------------------------- */

static void test_admission_protects_hot_keys_from_scan(void **state) {
    (void)state;
    for (int pol = 0; pol < 2; pol++) {
        strata_l1 *c = mk(100, pol ? STRATA_L1_LRU : STRATA_L1_WTINYLFU, NULL);
        char k[32], buf[16];
        warm_half(c, 100);
        for (int round = 0; round < 20; round++)
            for (int i = 0; i < 50; i++) {
                snprintf(k, sizeof k, "hot%d", i);
                if (getk(c, k, buf, sizeof buf) < 0)
                    setk(c, k, "h");
            }
        for (int i = 0; i < 1000; i++) { /* a one-time scan */
            snprintf(k, sizeof k, "scan%d", i);
            setk(c, k, "s");
        }
        int hot = 0;
        for (int i = 0; i < 50; i++) {
            snprintf(k, sizeof k, "hot%d", i);
            hot += getk(c, k, buf, sizeof buf) == STRATA_L1_HIT;
        }
        if (pol == 0)
            assert_true(hot >= 48); /* TinyLFU rejects the scan */
        else
            assert_int_equal(hot, 0); /* LRU is flushed by it */
        strata_l1_destroy(&c);
    }
}

static void test_lru_order(void **state) {
    (void)state;
    strata_l1 *c = mk(3, STRATA_L1_LRU, NULL);
    char buf[8];
    setk(c, "a", "1");
    setk(c, "b", "2");
    setk(c, "c", "3");
    assert_int_equal(getk(c, "a", buf, sizeof buf), STRATA_L1_HIT); /* a is now MRU */
    setk(c, "d", "4");                                              /* evicts b */
    assert_int_equal(getk(c, "b", buf, sizeof buf), STRATA_ENOTFOUND);
    assert_int_equal(getk(c, "a", buf, sizeof buf), STRATA_L1_HIT);
    assert_int_equal(getk(c, "c", buf, sizeof buf), STRATA_L1_HIT);
    assert_int_equal(getk(c, "d", buf, sizeof buf), STRATA_L1_HIT);
    strata_l1_destroy(&c);
}

static void test_sketch_aging(void **state) {
    (void)state;
    strata_l1 *c = mk(64, STRATA_L1_WTINYLFU, NULL);
    char buf[8];
    warm_half(c, 64);
    setk(c, "f", "1");
    for (int i = 0; i < 20; i++)
        getk(c, "f", buf, sizeof buf);
    int f1 = strata_l1_frequency(c, "f", 1);
    assert_true(f1 >= 14); /* saturated counter (+ doorkeeper) */
    /* 10 x capacity other additions age the sketch: the estimate halves */
    char k[16];
    for (int i = 0; i < 700; i++) {
        snprintf(k, sizeof k, "o%d", i);
        setk(c, k, "o");
    }
    int f2 = strata_l1_frequency(c, "f", 1);
    assert_true(f2 <= f1 / 2 + 1);
    assert_true(f2 >= 3);
    strata_l1_destroy(&c);
}

/* Caffeine 2.6.2's lazy sketch: nothing is counted until the cache has been
 * half full; from then on writes and reads are. */
static void test_sketch_starts_at_half_full(void **state) {
    (void)state;
    strata_l1 *c = mk(64, STRATA_L1_WTINYLFU, NULL);
    char buf[8], k[16];
    setk(c, "early", "1");
    for (int i = 0; i < 5; i++)
        assert_int_equal(getk(c, "early", buf, sizeof buf), STRATA_L1_HIT);
    assert_int_equal(strata_l1_frequency(c, "early", 5), 0);
    for (int i = 0; i < 31; i++) { /* 32 entries: half full */
        snprintf(k, sizeof k, "f%d", i);
        setk(c, k, "f");
    }
    assert_int_equal(strata_l1_frequency(c, "f30", 3), 0);
    setk(c, "late", "1"); /* the first write at half full starts the sketch */
    assert_int_equal(strata_l1_frequency(c, "late", 4), 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(getk(c, "late", buf, sizeof buf), STRATA_L1_HIT);
    strata_l1_maintain(c); /* apply the buffered reads */
    assert_int_equal(strata_l1_frequency(c, "late", 4), 4);
    strata_l1_destroy(&c);
}

static void test_doorkeeper(void **state) {
    (void)state;
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = 64;
    cfg.doorkeeper = 1;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    char buf[8], k[16];
    warm_half(c, 64);
    assert_int_equal(strata_l1_frequency(c, "d", 1), 0);
    setk(c, "d", "1"); /* first sighting: the doorkeeper only */
    assert_int_equal(strata_l1_frequency(c, "d", 1), 1);
    getk(c, "d", buf, sizeof buf); /* second: the counters */
    assert_int_equal(strata_l1_frequency(c, "d", 1), 2);
    for (int i = 0; i < 700; i++) { /* aging clears the doorkeeper, halves counters */
        snprintf(k, sizeof k, "o%d", i);
        setk(c, k, "o");
    }
    assert_true(strata_l1_frequency(c, "d", 1) <= 1);
    strata_l1_destroy(&c);
}

/* The sketch's hash is seeded per cache (strata_l1_config.sketch_seed; 0 = a
 * fresh one per cache, as Caffeine 2.6.2's randomSeed), so which keys share
 * counters differs between caches and cannot be computed from outside.  One
 * cache of 64 entries (64 sketch words) counts 1000 inserted keys; then the
 * estimates of 200 keys it never saw are read: each is the minimum of four
 * counters that other keys incremented, i.e. exactly what the seed changes. */
#define SEED_PROBES 200
static strata_l1 *seeded_cache(uint64_t seed, int probes[SEED_PROBES]) {
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.capacity = 64;
    cfg.sketch_seed = seed;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    char k[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof k, "s%d", i);
        assert_int_equal(setk(c, k, "v"), STRATA_OK);
    }
    for (int i = 0; i < SEED_PROBES; i++) {
        snprintf(k, sizeof k, "u%d", i);
        probes[i] = strata_l1_frequency(c, k, strlen(k));
    }
    return c;
}

static int probes_differing(const int *a, const int *b) {
    int n = 0;
    for (int i = 0; i < SEED_PROBES; i++)
        n += a[i] != b[i];
    return n;
}

static void test_sketch_seed_per_cache(void **state) {
    (void)state;
    int a[SEED_PROBES], a2[SEED_PROBES], b[SEED_PROBES], r1[SEED_PROBES], r2[SEED_PROBES],
        replay[SEED_PROBES];
    int nonzero = 0;
    /* a fixed seed: the same counters, the same estimates, cache after cache */
    strata_l1 *ca = seeded_cache(7, a), *ca2 = seeded_cache(7, a2);
    assert_true(strata_l1_sketch_seed(ca) == 7);
    assert_int_equal(probes_differing(a, a2), 0);
    for (int i = 0; i < SEED_PROBES; i++)
        nonzero += a[i] > 0;
    assert_true(nonzero >= SEED_PROBES / 4); /* the probes do read shared counters */
    /* another seed: other keys share the probes' counters */
    strata_l1 *cb = seeded_cache(8, b);
    assert_true(probes_differing(a, b) >= SEED_PROBES / 10);
    /* the default: each cache draws its own seed, nonzero, and reports it... */
    strata_l1 *c1 = seeded_cache(0, r1), *c2 = seeded_cache(0, r2);
    uint64_t s1 = strata_l1_sketch_seed(c1), s2 = strata_l1_sketch_seed(c2);
    assert_true(s1 != 0 && s2 != 0 && s1 != s2);
    assert_true(probes_differing(r1, r2) >= SEED_PROBES / 10);
    /* ...which, passed back, replays that cache's sketch exactly */
    strata_l1 *cr = seeded_cache(s1, replay);
    assert_int_equal(probes_differing(r1, replay), 0);
    /* The key hash (table slots, tags, the sketch's input) is seeded too: the
     * same under one seed, different under another, for (nearly) every key. */
    int same = 0, other = 0;
    for (uint64_t k = 0; k < 1000; k++) {
        uint16_t ta, ta2, tb;
        uint32_t ha = l1__hash(ca, &k, sizeof k, &ta), ha2 = l1__hash(ca2, &k, sizeof k, &ta2);
        uint32_t hb = l1__hash(cb, &k, sizeof k, &tb);
        same += ha == ha2 && ta == ta2;
        other += ha != hb && ta != tb;
    }
    assert_int_equal(same, 1000);
    assert_true(other >= 990);
    strata_l1_destroy(&ca);
    strata_l1_destroy(&ca2);
    strata_l1_destroy(&cb);
    strata_l1_destroy(&c1);
    strata_l1_destroy(&c2);
    strata_l1_destroy(&cr);
}

/* Recency-heavy stream: half the requests are new keys, the other half
 * re-read one of the last 100 new keys (reuse distances spread from 1 to
 * ~200 requests), so a larger window keeps paying until it holds them all.
 * Returns the hits of a cache of 200 entries with the given policy. */
static uint64_t recency_stream(strata_l1_policy pol, uint64_t *window) {
    strata_l1 *c = mk(200, pol, NULL);
    char k[32], buf[8];
    uint32_t x = 2463534242u;
    uint64_t next = 0, hits = 0;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        uint64_t key = next;
        if (next > 0 && (x & 1))
            key = next - 1 - (x >> 1) % (next < 100 ? next : 100);
        else
            key = next++;
        snprintf(k, sizeof k, "r%llu", (unsigned long long)key);
        if (getk(c, k, buf, sizeof buf) >= 0)
            hits++;
        else
            setk(c, k, "v");
    }
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    *window = st.window_max;
    strata_l1_destroy(&c);
    return hits;
}

/* The climber grows the window well past 1 % on recency and stays close to
 * LRU there; on a frequency-biased stream the window stays small. */
static void test_window_adapts(void **state) {
    (void)state;
    uint64_t win = 0, lru_win = 0;
    uint64_t hits = recency_stream(STRATA_L1_WTINYLFU, &win);
    uint64_t lru_hits = recency_stream(STRATA_L1_LRU, &lru_win);
    assert_true(win >= 40);                   /* grew from 2 (1 %) */
    assert_true(hits * 100 >= lru_hits * 90); /* measured 49.6 % vs LRU 50.0 % (shadow LRU, D16) */
    strata_l1 *c;
    strata_l1_stats st;
    char k[32], buf[8];

    /* a frequency-biased stream (a small hot set plus one-off keys) keeps it small */
    c = mk(200, STRATA_L1_WTINYLFU, NULL);
    for (int i = 0; i < 60000; i++) {
        if (i % 2)
            snprintf(k, sizeof k, "h%d", (i * 7) % 150);
        else
            snprintf(k, sizeof k, "once%d", i);
        if (getk(c, k, buf, sizeof buf) < 0)
            setk(c, k, "v");
    }
    strata_l1_stats_get(c, &st);
    assert_true(st.window_max <= 60);
    assert_true(st.hits > 25000); /* the hot set stays cached */
    strata_l1_destroy(&c);
}

static void test_metrics_registered(void **state) {
    (void)state;
    strata_metrics *m = strata_metrics_create();
    assert_non_null(m);
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = 10;
    cfg.metrics = m;
    cfg.name = "profiles";
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    char buf[8], k[16];
    for (int i = 0; i < 20; i++) {
        snprintf(k, sizeof k, "k%d", i);
        setk(c, k, "v");
        getk(c, k, buf, sizeof buf);
    }
    getk(c, "none", buf, sizeof buf);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st); /* folds the counters into the registry */
    strata_buf out = STRATA_BUF_INIT;
    assert_int_equal(strata_metrics_render_prometheus(m, &out), STRATA_OK);
    assert_non_null(strstr(out.data, "strata_l1_hits_total{cache=\"profiles\"} 20"));
    assert_non_null(strstr(out.data, "strata_l1_misses_total{cache=\"profiles\"} 1"));
    assert_non_null(
        strstr(out.data, "strata_l1_evictions_total{cache=\"profiles\",cause=\"size\"} 10"));
    assert_non_null(strstr(out.data, "strata_l1_entries{cache=\"profiles\"} 10"));
    strata_buf_free(&out);
    strata_l1_destroy(&c);
    strata_metrics_destroy(&m);
}

/* Fails the N-th allocation inside a fixed sequence of operations, for every
 * N until the sequence runs clean: each call returns OK or ENOMEM, and the
 * cache stays consistent (bound held, every present key readable, no leak:
 * ASan checks the last). */
static void test_alloc_failure_sweep(void **state) {
    (void)state;
    int clean = 0;
    for (uint64_t n = 1; n < 400 && !clean; n++) {
        strata_l1_config cfg;
        strata_l1_config_init(&cfg);
        cfg.sketch_seed = TEST_SKETCH_SEED;
        cfg.capacity = 16;
        cfg.negative_ttl_ns = SEC;
        strata_alloc_fail_at(n, 0);
        uint64_t before = strata_alloc_failures();
        strata_l1 *c = NULL;
        int rc = strata_l1_create(&cfg, &c);
        if (rc != STRATA_OK) {
            assert_int_equal(rc, STRATA_ENOMEM);
            assert_null(c);
            continue;
        }
        char k[16], buf[16];
        for (int i = 0; i < 60; i++) {
            snprintf(k, sizeof k, "k%d", i);
            rc = setk(c, k, "v");
            assert_true(rc == STRATA_OK || rc == STRATA_ENOMEM);
            if (rc == STRATA_OK)
                assert_int_equal(getk(c, k, buf, sizeof buf), STRATA_L1_HIT);
            assert_true(strata_l1_size(c) <= 16);
        }
        loader_state ls = {0};
        waiter w[3] = {{0}};
        strata_l1_entry *e = NULL;
        for (int i = 0; i < 3; i++) {
            rc = strata_l1_get_or_load(c, "L", 1, loader, &ls, done, &w[i], &e);
            assert_true(rc == STRATA_L1_PENDING || rc == STRATA_ENOMEM);
            if (rc == STRATA_ENOMEM)
                assert_int_equal(w[i].calls, 0);
        }
        for (int i = 0; i < ls.npending; i++) {
            rc = strata_l1_load_complete(ls.pending[i], STRATA_OK, "lv", 2, NULL);
            assert_true(rc == STRATA_OK || rc == STRATA_ENOMEM);
        }
        for (int i = 0; i < 3; i++)
            assert_true(w[i].calls <= 1);
        strata_l1_invalidate_prefix(c, "k1", 2);
        strata_l1_maintain(c);
        /* consistency: what the stats count equals what can be read */
        int found = 0;
        for (int i = 0; i < 60; i++) {
            snprintf(k, sizeof k, "k%d", i);
            found += getk(c, k, buf, sizeof buf) == STRATA_L1_HIT;
        }
        found += getk(c, "L", buf, sizeof buf) == STRATA_L1_HIT;
        assert_int_equal((uint64_t)found, strata_l1_size(c));
        if (strata_alloc_failures() == before)
            clean = 1; /* N passed the sequence's last allocation */
        strata_alloc_fail_at(0, 0);
        strata_l1_destroy(&c);
    }
    strata_alloc_fail_at(0, 0);
    assert_true(clean);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_get_replace_invalidate),
        cmocka_unit_test(test_key_and_value_lengths),
        cmocka_unit_test(test_prefix_and_clear),
        cmocka_unit_test(test_capacity_bound_and_listener),
        cmocka_unit_test(test_weighted_capacity),
        cmocka_unit_test(test_reference_outlives_eviction),
        cmocka_unit_test(test_ttl_manual_clock),
        cmocka_unit_test(test_ttl_jitter),
        cmocka_unit_test(test_singleflight),
        cmocka_unit_test(test_load_errors_and_negative_caching),
        cmocka_unit_test(test_invalidation_wins_over_load),
        cmocka_unit_test(test_stale_while_revalidate_and_if_error),
        cmocka_unit_test(test_refresh_ahead_xfetch),
        cmocka_unit_test(test_admission_protects_hot_keys_from_scan),
        cmocka_unit_test(test_lru_order),
        cmocka_unit_test(test_sketch_aging),
        cmocka_unit_test(test_sketch_starts_at_half_full),
        cmocka_unit_test(test_doorkeeper),
        cmocka_unit_test(test_sketch_seed_per_cache),
        cmocka_unit_test(test_window_adapts),
        cmocka_unit_test(test_metrics_registered),
        cmocka_unit_test(test_alloc_failure_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
