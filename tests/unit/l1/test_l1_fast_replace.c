/*
 * test_l1_fast_replace.c: the fast write paths of strata_l1_set: the fast
 * replace (a set that replaces a present key's value at the same cost,
 * without TTL, takes only the key's segment lock; docs/notes/l1.md D15) and
 * the fast insert (a set without TTL of an absent key, while the cache has
 * room, once the writer lock was seen contended; D19).  One test per rule the
 * paths rely on (R1-R7, listed in src/lib/l1/l1.c), the concurrent ones also
 * under ThreadSanitizer:
 *
 *   - which sets take the path and which do not (TTL, cost change, insert,
 *     listener, config off), and what the stats and the policy see;
 *   - R2, evictor vs replace: writers replace their own hot keys while
 *     another thread inserts cold keys that evict them; every read after a
 *     set returns that set's value or nothing (never an older version), the
 *     bound holds after every set, every entry written is counted once;
 *   - R1/R2, invalidate (key, prefix, clear) vs replace: same checks;
 *   - R1, a locked replace (TTL or cost change) vs a fast replace of the
 *     same key: reads see a value written for the key, the count adds up;
 *   - R4, load completion vs replace: once a set has returned, no load's
 *     result overwrites it (each writer reads its exact value back);
 *   - references held across replaces and their application stay valid
 *     (exactly-once retirement: ASan/TSan would see a double free or a use
 *     after free; the stats count every entry once);
 *   - fast inserts: off in a cache used from one thread (AUTO), exact credit
 *     accounting (the bound after every set, read-your-write), R6 (a mapped
 *     load sends the set to the locked path, which drops the load), R7
 *     (an invalidation of a pending insert), and every concurrent test above
 *     again with fast inserts ON.
 */
/* ctest-labels: tsan */
/* ctest-timeout: 300 */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "strata/l1.h"
#include "strata/status.h"

#include "l1_test.h"

#ifdef __SANITIZE_THREAD__
#define OPS 30000
#else
#define OPS 150000
#endif

static strata_l1_fast_insert fast_insert_mode = STRATA_L1_FAST_INSERT_AUTO;

static strata_l1 *mk(uint64_t cap, strata_l1_policy pol) {
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = cap;
    cfg.policy = pol;
    cfg.fast_insert = fast_insert_mode;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    return c;
}

static int setv(strata_l1 *c, const char *k, uint64_t v) {
    return strata_l1_set(c, k, strlen(k), &v, sizeof v, NULL);
}

/* Returns the outcome; *v = the value read (a value of another length reads as -1000). */
static int getv(strata_l1 *c, const char *k, uint64_t *v) {
    size_t vl = 0;
    int rc = strata_l1_get_copy(c, k, strlen(k), v, sizeof *v, &vl);
    return rc >= 0 && vl != sizeof *v ? -1000 : rc;
}

static uint64_t gone_total(const strata_l1_stats *st) {
    uint64_t n = 0;
    for (int i = 0; i < STRATA_L1_CAUSE__COUNT; i++)
        n += st->evictions[i];
    return n;
}

/* ---- which sets take the path -------------------------------------------- */

static int listened;
static void count_listener(void *ctx, const strata_l1_entry *e, strata_l1_cause cause) {
    (void)ctx;
    (void)e;
    if (cause == STRATA_L1_CAUSE_REPLACED)
        listened++;
}

static void test_fast_replace_taken_when_allowed(void **state) {
    (void)state;
    strata_l1 *c = mk(100, STRATA_L1_WTINYLFU);
    strata_l1_stats st;
    uint64_t v = 0;
    assert_int_equal(setv(c, "a", 1), STRATA_OK); /* insert: locked path */
    assert_int_equal(setv(c, "a", 2), STRATA_OK); /* same cost, no TTL: fast */
    assert_int_equal(getv(c, "a", &v), STRATA_L1_HIT);
    assert_int_equal(v, 2);
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.fast_replaces, 1);
    assert_int_equal(st.evictions[STRATA_L1_CAUSE_REPLACED], 1);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.cost, 1);
    /* a TTL on the new value: locked path */
    strata_l1_set_opts ttl = {.ttl_ns = 1000000000ull};
    v = 3;
    assert_int_equal(strata_l1_set(c, "a", 1, &v, sizeof v, &ttl), STRATA_OK);
    /* a TTL on the old value: locked path again */
    assert_int_equal(setv(c, "a", 4), STRATA_OK);
    /* a cost change: locked path */
    strata_l1_set_opts cost = {.cost = 3};
    v = 5;
    assert_int_equal(strata_l1_set(c, "a", 1, &v, sizeof v, &cost), STRATA_OK);
    v = 6;
    /* the same cost 3 again: fast */
    assert_int_equal(strata_l1_set(c, "a", 1, &v, sizeof v, &cost), STRATA_OK);
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.fast_replaces, 2);
    assert_int_equal(st.evictions[STRATA_L1_CAUSE_REPLACED], 5);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.cost, 3);
    assert_int_equal(getv(c, "a", &v), STRATA_L1_HIT);
    assert_int_equal(v, 6);
    /* invalidation after a fast replace not yet applied removes the new value (R2) */
    assert_int_equal(setv(c, "b", 1), STRATA_OK);
    assert_int_equal(setv(c, "b", 2), STRATA_OK);
    assert_int_equal(strata_l1_invalidate(c, "b", 1), STRATA_OK);
    assert_int_equal(getv(c, "b", &v), STRATA_ENOTFOUND);
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.evictions[STRATA_L1_CAUSE_INVALIDATED], 1);
    assert_int_equal(st.fast_replaces, 3);
    strata_l1_destroy(&c);

    /* the config switch, and a listener (R5), turn the path off */
    for (int variant = 0; variant < 2; variant++) {
        strata_l1_config cfg;
        strata_l1_config_init(&cfg);
        cfg.sketch_seed = TEST_SKETCH_SEED;
        cfg.capacity = 100;
        if (variant == 0) {
            cfg.fast_replace = 0;
        } else {
            cfg.listener = count_listener;
            listened = 0;
        }
        assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
        assert_int_equal(setv(c, "a", 1), STRATA_OK);
        assert_int_equal(setv(c, "a", 2), STRATA_OK);
        if (variant == 1)
            assert_int_equal(listened, 1); /* before the set returned */
        strata_l1_stats_get(c, &st);
        assert_int_equal(st.fast_replaces, 0);
        assert_int_equal(st.evictions[STRATA_L1_CAUSE_REPLACED], 1);
        strata_l1_destroy(&c);
    }
}

/* A replace counts as an access of the key (Caffeine's update): in LRU mode
 * the replaced key moves to the MRU end, and its node is the new entry's. */
static void test_fast_replace_is_an_access(void **state) {
    (void)state;
    strata_l1 *c = mk(4, STRATA_L1_LRU);
    char k[16];
    for (int i = 0; i < 4; i++) {
        snprintf(k, sizeof k, "k%d", i);
        assert_int_equal(setv(c, k, (uint64_t)i), STRATA_OK);
    }
    assert_int_equal(setv(c, "k0", 100), STRATA_OK); /* fast: k0 becomes MRU */
    assert_int_equal(setv(c, "k4", 4), STRATA_OK);   /* evicts the LRU: k1 */
    uint64_t v;
    assert_int_equal(getv(c, "k1", &v), STRATA_ENOTFOUND);
    assert_int_equal(getv(c, "k0", &v), STRATA_L1_HIT);
    assert_int_equal(v, 100);
    /* many replaces of one key, applied in order: the last value wins */
    for (uint64_t i = 0; i < 1000; i++)
        assert_int_equal(setv(c, "k2", 1000 + i), STRATA_OK);
    assert_int_equal(getv(c, "k2", &v), STRATA_L1_HIT);
    assert_int_equal(v, 1999);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.entries, 4);
    assert_int_equal(st.fast_replaces, 1001);
    assert_int_equal(5 + 1001, gone_total(&st) + st.entries);
    strata_l1_destroy(&c);
}

/* ---- R2: evictor vs replace -------------------------------------------- */

#define HOT 64

typedef struct {
    strata_l1 *c;
    int id, nthreads;
    uint64_t cap;
    atomic_int *errors;
    atomic_int *stop;
    atomic_ullong *sets_ok;
    int invalidate; /* the mixer invalidates instead of inserting */
} fr_arg;

/* Replaces its own hot keys (k<id>_<i>) with increasing versions; after each
 * set the read must return that version or nothing (evicted/invalidated),
 * never another; the cost bound holds after every set. */
static void *replacer(void *p) {
    fr_arg *a = p;
    uint64_t ver[HOT] = {0};
    uint32_t x = 2463534242u + 7919u * (uint32_t)a->id;
    char k[32];
    for (int i = 0; i < OPS; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        int h = (int)(x % HOT);
        snprintf(k, sizeof k, "hot%d_%d", a->id, h);
        uint64_t v = ((uint64_t)a->id << 48) | ++ver[h];
        if (setv(a->c, k, v) != STRATA_OK) {
            atomic_fetch_add(a->errors, 1);
            continue;
        }
        atomic_fetch_add(a->sets_ok, 1);
        uint64_t got = 0;
        int rc = getv(a->c, k, &got);
        if (rc >= 0 && got != v)
            atomic_fetch_add(a->errors, 1);
        if (rc != STRATA_ENOTFOUND && rc != STRATA_L1_HIT)
            atomic_fetch_add(a->errors, 1);
        if ((x & 63) == 0 && strata_l1_cost(a->c) > a->cap)
            atomic_fetch_add(a->errors, 1);
        if ((x & 255) == 1) { /* hold a reference across later replaces */
            strata_l1_entry *e = NULL;
            if (strata_l1_acquire(a->c, k, strlen(k), &e) >= 0) {
                for (int j = 0; j < 8; j++) {
                    if (setv(a->c, k, ((uint64_t)a->id << 48) | ++ver[h]) == STRATA_OK)
                        atomic_fetch_add(a->sets_ok, 1);
                    else
                        atomic_fetch_add(a->errors, 1);
                }
                size_t vl;
                const uint64_t *pv = strata_l1_entry_value(e, &vl);
                uint64_t held;
                memcpy(&held, pv, sizeof held);
                if (vl != sizeof held || (held >> 48) != (uint64_t)a->id)
                    atomic_fetch_add(a->errors, 1);
                strata_l1_release(&e);
            }
        }
    }
    return NULL;
}

/* Inserts cold keys (forcing evictions of everything, hot keys included) or,
 * with a->invalidate, invalidates hot keys by key, by prefix, and all. */
static void *mixer(void *p) {
    fr_arg *a = p;
    uint32_t x = 88172645u;
    char k[32];
    uint64_t n = 0;
    while (!atomic_load(a->stop)) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        if (!a->invalidate) {
            snprintf(k, sizeof k, "cold%u", x % 100000);
            if (setv(a->c, k, n++) == STRATA_OK)
                atomic_fetch_add(a->sets_ok, 1);
            else
                atomic_fetch_add(a->errors, 1);
            if ((x & 31) == 0 && strata_l1_cost(a->c) > a->cap)
                atomic_fetch_add(a->errors, 1);
            if ((x & 1023) == 0)
                strata_l1_maintain(a->c);
        } else {
            int t = (int)(x % (uint32_t)a->nthreads);
            snprintf(k, sizeof k, "hot%d_%u", t, (x >> 8) % HOT);
            if ((x & 4095) == 0)
                (void)strata_l1_clear(a->c);
            else if ((x & 511) == 0)
                (void)strata_l1_invalidate_prefix(a->c, k, 5); /* "hot<t>_" */
            else
                (void)strata_l1_invalidate(a->c, k, strlen(k));
            if ((x & 7) == 0)
                sched_yield();
        }
    }
    return NULL;
}

static void run_mixed(int invalidate) {
    const uint64_t cap = 100;
    strata_l1 *c = mk(cap, STRATA_L1_WTINYLFU);
    atomic_int errors = 0, stop = 0;
    atomic_ullong sets_ok = 0;
    enum { NR = 2 };
    pthread_t th[NR + 1];
    fr_arg args[NR + 1];
    for (int i = 0; i <= NR; i++) {
        args[i] = (fr_arg){c, i, NR, cap, &errors, &stop, &sets_ok, invalidate};
        assert_int_equal(pthread_create(&th[i], NULL, i < NR ? replacer : mixer, &args[i]), 0);
    }
    for (int i = 0; i < NR; i++)
        pthread_join(th[i], NULL);
    atomic_store(&stop, 1);
    pthread_join(th[NR], NULL);
    assert_int_equal(atomic_load(&errors), 0);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_true(st.cost <= cap);
    assert_true(st.fast_replaces > 0);
    /* every entry written is cached or was counted once, by one cause */
    assert_int_equal(atomic_load(&sets_ok), gone_total(&st) + st.entries);
    if (invalidate)
        assert_true(st.evictions[STRATA_L1_CAUSE_INVALIDATED] > 0);
    else
        assert_true(st.evictions[STRATA_L1_CAUSE_SIZE] > 0);
    if (fast_insert_mode == STRATA_L1_FAST_INSERT_ON)
        assert_true(st.fast_inserts > 0);
    if (fast_insert_mode == STRATA_L1_FAST_INSERT_OFF)
        assert_int_equal(st.fast_inserts, 0);
    strata_l1_destroy(&c);
}

static void test_fast_replace_vs_eviction(void **state) {
    (void)state;
    run_mixed(0);
}

static void test_fast_replace_vs_invalidation(void **state) {
    (void)state;
    run_mixed(1);
}

/* ---- R1: locked replace vs fast replace of the same key ------------------- */

typedef struct {
    strata_l1 *c;
    int id;
    atomic_int *errors;
    atomic_ullong *sets_ok;
} same_arg;

/* Thread 0 sets cost-1 values without TTL (fast when the key's entry is
 * cost 1 without TTL); thread 1 sets the same few keys with a TTL or cost 2
 * (the locked path, replacing whatever the fast path just published).  Every
 * read returns a value some thread wrote for that key. */
static void *same_key_setter(void *p) {
    same_arg *a = p;
    uint32_t x = 1234567u + 99991u * (uint32_t)a->id;
    char k[16];
    for (int i = 0; i < OPS; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        unsigned key = x % 4;
        snprintf(k, sizeof k, "s%u", key);
        uint64_t v = ((uint64_t)key << 32) | (uint64_t)i;
        strata_l1_set_opts o = {0};
        if (a->id == 1) {
            if (x & 0x100)
                o.ttl_ns = 3600ull * 1000000000ull;
            else
                o.cost = 2;
        }
        if (strata_l1_set(a->c, k, strlen(k), &v, sizeof v, &o) == STRATA_OK)
            atomic_fetch_add(a->sets_ok, 1);
        else
            atomic_fetch_add(a->errors, 1);
        uint64_t got = 0;
        int rc = getv(a->c, k, &got);
        if (rc >= 0 && (got >> 32) != key)
            atomic_fetch_add(a->errors, 1);
        if (rc < 0 && rc != STRATA_ENOTFOUND)
            atomic_fetch_add(a->errors, 1);
    }
    return NULL;
}

static void test_fast_replace_vs_locked_replace(void **state) {
    (void)state;
    strata_l1 *c = mk(1000, STRATA_L1_WTINYLFU);
    atomic_int errors = 0;
    atomic_ullong sets_ok = 0;
    pthread_t th[2];
    same_arg args[2];
    for (int i = 0; i < 2; i++) {
        args[i] = (same_arg){c, i, &errors, &sets_ok};
        assert_int_equal(pthread_create(&th[i], NULL, same_key_setter, &args[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&errors), 0);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_true(st.fast_replaces > 0);
    assert_true(st.entries <= 4);
    assert_int_equal(atomic_load(&sets_ok), gone_total(&st) + st.entries);
    uint64_t readable = 0;
    char k[16];
    for (unsigned key = 0; key < 4; key++) { /* the stats match what the table holds */
        snprintf(k, sizeof k, "s%u", key);
        strata_l1_entry *e = NULL;
        if (strata_l1_acquire(c, k, strlen(k), &e) >= 0) {
            readable++;
            strata_l1_release(&e);
        }
    }
    assert_int_equal(readable, st.entries);
    assert_true(st.cost >= st.entries && st.cost <= 2 * st.entries);
    strata_l1_destroy(&c);
}

/* ---- R4: load completion vs replace ------------------------------------ */

#define LKEYS 16
#define LQ    256

typedef struct {
    strata_l1 *c;
    pthread_mutex_t mu;
    strata_l1_load *q[LQ];
    int n;
    atomic_int stop, errors;
    atomic_ullong done_calls;
} load_ctx;

static void loader(void *ctx, strata_l1_load *ld, const void *key, size_t klen) {
    (void)key;
    (void)klen;
    load_ctx *lc = ctx;
    pthread_mutex_lock(&lc->mu);
    if (lc->n < LQ) {
        lc->q[lc->n++] = ld;
        ld = NULL;
    }
    pthread_mutex_unlock(&lc->mu);
    if (ld) { /* queue full: complete here */
        uint64_t v = UINT64_MAX;
        strata_l1_load_complete(ld, STRATA_OK, &v, sizeof v, NULL);
    }
}

static void on_done(void *ud, int status, strata_l1_outcome oc, strata_l1_entry *e) {
    load_ctx *lc = ud;
    (void)status;
    (void)oc;
    atomic_fetch_add(&lc->done_calls, 1);
    strata_l1_release(&e);
}

/* Completes queued loads in random order with the value UINT64_MAX. */
static void *completer(void *p) {
    load_ctx *lc = p;
    uint32_t x = 362436069u;
    for (;;) {
        strata_l1_load *ld = NULL;
        pthread_mutex_lock(&lc->mu);
        if (lc->n > 0) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            int i = (int)(x % (uint32_t)lc->n);
            ld = lc->q[i];
            lc->q[i] = lc->q[--lc->n];
        }
        int empty = lc->n == 0;
        pthread_mutex_unlock(&lc->mu);
        if (ld) {
            uint64_t v = UINT64_MAX;
            strata_l1_load_complete(ld, STRATA_OK, &v, sizeof v, NULL);
        } else if (empty && atomic_load(&lc->stop)) {
            return NULL;
        } else {
            sched_yield();
        }
    }
}

static void *load_starter(void *p) {
    load_ctx *lc = p;
    uint32_t x = 521288629u;
    char k[16];
    while (!atomic_load(&lc->stop)) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        snprintf(k, sizeof k, "L%u", x % LKEYS);
        strata_l1_entry *e = NULL;
        int rc = strata_l1_get_or_load(lc->c, k, strlen(k), loader, lc, on_done, lc, &e);
        if (rc >= 0 && rc != STRATA_L1_PENDING)
            strata_l1_release(&e);
    }
    return NULL;
}

/* The writer owns the keys: it invalidates a key (loads may then start and
 * store UINT64_MAX), then sets it several times (the first set inserts and
 * detaches any load in flight; the next ones are fast replaces).  After each
 * set the key is present and only the writer removes it, so no load can have
 * been registered since: the read must return exactly the value just set. */
static void *owner_writer(void *p) {
    load_ctx *lc = p;
    uint32_t x = 88675123u;
    char k[16];
    uint64_t ver = 0;
    for (int i = 0; i < OPS / 8; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        snprintf(k, sizeof k, "L%u", x % LKEYS);
        (void)strata_l1_invalidate(lc->c, k, strlen(k));
        if ((x & 3) == 0)
            sched_yield(); /* let loads start */
        for (int j = 0; j < 4; j++) {
            uint64_t v = ++ver, got = 0;
            int src = setv(lc->c, k, v), grc = getv(lc->c, k, &got);
            if (src != STRATA_OK || grc != STRATA_L1_HIT || got != v) {
                fprintf(stderr, "owner_writer: %s set %d get %d got %llu want %llu (j %d)\n", k,
                        src, grc, (unsigned long long)got, (unsigned long long)v, j);
                atomic_fetch_add(&lc->errors, 1);
            }
        }
    }
    return NULL;
}

static void test_fast_replace_vs_load(void **state) {
    (void)state;
    load_ctx *lc = calloc(1, sizeof *lc);
    assert_non_null(lc);
    lc->c = mk(1000, STRATA_L1_WTINYLFU);
    pthread_mutex_init(&lc->mu, NULL);
    pthread_t w, s, cp;
    assert_int_equal(pthread_create(&cp, NULL, completer, lc), 0);
    assert_int_equal(pthread_create(&s, NULL, load_starter, lc), 0);
    assert_int_equal(pthread_create(&w, NULL, owner_writer, lc), 0);
    pthread_join(w, NULL);
    atomic_store(&lc->stop, 1);
    pthread_join(s, NULL);
    pthread_join(cp, NULL);
    assert_int_equal(atomic_load(&lc->errors), 0);
    strata_l1_stats st;
    strata_l1_stats_get(lc->c, &st);
    assert_true(st.fast_replaces > 0);
    assert_true(st.loads > 0);
    strata_l1_destroy(&lc->c);
    pthread_mutex_destroy(&lc->mu);
    free(lc);
}

/* ---- fast inserts (D19) ------------------------------------------------- */

/* Inserts n distinct keys from this thread into a 100-entry cache of the given
 * mode; returns how many took the fast insert path. */
static uint64_t fast_inserts_of(strata_l1_fast_insert mode, int n) {
    fast_insert_mode = mode;
    strata_l1 *c = mk(100, STRATA_L1_WTINYLFU);
    fast_insert_mode = STRATA_L1_FAST_INSERT_AUTO;
    char k[32];
    for (int i = 0; i < n; i++) {
        snprintf(k, sizeof k, "a%d", i);
        assert_int_equal(setv(c, k, (uint64_t)i), STRATA_OK);
    }
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    strata_l1_destroy(&c);
    return st.fast_inserts;
}

static void test_fast_insert_taken_when_allowed(void **state) {
    (void)state;
    strata_l1_stats st;
    uint64_t v = 0;
    char k[32];
    /* AUTO, one thread: the writer lock is never contended, every insert is
     * locked; OFF: never, even with fast replaces on */
    assert_int_equal(fast_inserts_of(STRATA_L1_FAST_INSERT_AUTO, 1000), 0);
    assert_int_equal(fast_inserts_of(STRATA_L1_FAST_INSERT_OFF, 50), 0);

    /* ON, capacity 100 (no slack below 256): the first insert is locked and
     * grants the 99 free units; the next 99 inserts are fast; once full, every
     * insert is locked again (nothing left to grant). */
    fast_insert_mode = STRATA_L1_FAST_INSERT_ON;
    strata_l1 *c = mk(100, STRATA_L1_WTINYLFU);
    for (int i = 0; i < 300; i++) {
        snprintf(k, sizeof k, "b%d", i);
        assert_int_equal(setv(c, k, (uint64_t)i), STRATA_OK);
        assert_int_equal(getv(c, k, &v), STRATA_L1_HIT); /* read-your-write */
        assert_int_equal(v, (uint64_t)i);
        assert_true(strata_l1_cost(c) <= 100); /* the bound once the set returned */
    }
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.fast_inserts, 99);
    assert_int_equal(st.entries, 100);
    assert_int_equal(300, gone_total(&st) + st.entries);
    /* R7: an invalidation of a pending insert removes it, counted once */
    assert_int_equal(strata_l1_invalidate(c, "b299", 4), STRATA_OK);
    int second = 0; /* and one more present key (which ones the policy kept: its business) */
    for (int i = 0; i < 299 && !second; i++) {
        snprintf(k, sizeof k, "b%d", i);
        second = strata_l1_invalidate(c, k, strlen(k)) == STRATA_OK;
    }
    assert_true(second);
    /* the invalidations' maintenance granted the 2 units they freed */
    assert_int_equal(setv(c, "c1", 1), STRATA_OK); /* fast */
    assert_int_equal(setv(c, "c2", 2), STRATA_OK); /* fast: pending */
    assert_int_equal(strata_l1_invalidate(c, "c2", 2), STRATA_OK);
    assert_int_equal(getv(c, "c2", &v), STRATA_ENOTFOUND);
    assert_int_equal(getv(c, "c1", &v), STRATA_L1_HIT);
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.fast_inserts, 101);
    assert_int_equal(st.entries, 99);
    assert_int_equal(st.evictions[STRATA_L1_CAUSE_INVALIDATED], 3);
    assert_int_equal(302, gone_total(&st) + st.entries);
    strata_l1_destroy(&c);

    /* ON, capacity 2560 (slack 10): when full, each locked insert evicts down
     * to capacity - slack and the next inserts are fast; the bound holds
     * after every set, and every entry is counted once. */
    c = mk(2560, STRATA_L1_WTINYLFU);
    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof k, "d%d", i);
        assert_int_equal(setv(c, k, (uint64_t)i), STRATA_OK);
        assert_int_equal(getv(c, k, &v), STRATA_L1_HIT);
        if (i % 16 == 0)
            assert_true(strata_l1_cost(c) <= 2560);
    }
    strata_l1_stats_get(c, &st);
    assert_true(st.cost <= 2560 && st.cost >= 2560 - 10);
    /* after the first 2560, at least half the inserts were fast */
    assert_true(st.fast_inserts >= 2559 + (20000 - 2560) / 2);
    assert_int_equal(20000, gone_total(&st) + st.entries);
    strata_l1_destroy(&c);
    fast_insert_mode = STRATA_L1_FAST_INSERT_AUTO;
}

static strata_l1_load *parked;
static void park_loader(void *ctx, strata_l1_load *ld, const void *key, size_t klen) {
    (void)ctx;
    (void)key;
    (void)klen;
    parked = ld;
}
static int park_done_calls;
static void park_done(void *ud, int status, strata_l1_outcome oc, strata_l1_entry *e) {
    (void)ud;
    (void)status;
    (void)oc;
    park_done_calls++;
    strata_l1_release(&e);
}

/* R6: while a load is mapped for a key's segment, a set of the absent key
 * takes the locked path, which drops the load: the load's result is not
 * stored over the set's value. */
static void test_fast_insert_vs_mapped_load(void **state) {
    (void)state;
    fast_insert_mode = STRATA_L1_FAST_INSERT_ON;
    strata_l1 *c = mk(1000, STRATA_L1_WTINYLFU);
    fast_insert_mode = STRATA_L1_FAST_INSERT_AUTO;
    uint64_t v = 0;
    strata_l1_stats st;
    assert_int_equal(setv(c, "warm", 1), STRATA_OK); /* locked: grants the free room */
    assert_int_equal(setv(c, "free", 1), STRATA_OK); /* fast */
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.fast_inserts, 1);
    strata_l1_entry *e = NULL;
    assert_int_equal(strata_l1_get_or_load(c, "K", 1, park_loader, NULL, park_done, NULL, &e),
                     STRATA_L1_PENDING);
    assert_non_null(parked);
    assert_int_equal(setv(c, "K", 7), STRATA_OK);
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.fast_inserts, 1); /* locked */
    assert_int_equal(st.loads_dropped, 1);
    uint64_t old = 99;
    assert_int_equal(strata_l1_load_complete(parked, STRATA_OK, &old, sizeof old, NULL), STRATA_OK);
    parked = NULL;
    assert_int_equal(park_done_calls, 1);
    assert_int_equal(getv(c, "K", &v), STRATA_L1_HIT);
    assert_int_equal(v, 7);
    /* the load is gone: the next absent key of any segment is fast again */
    assert_int_equal(strata_l1_invalidate(c, "K", 1), STRATA_OK);
    assert_int_equal(setv(c, "K", 8), STRATA_OK);
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.fast_inserts, 2);
    assert_int_equal(getv(c, "K", &v), STRATA_L1_HIT);
    assert_int_equal(v, 8);
    strata_l1_destroy(&c);
}

/* The concurrent tests again, with fast inserts from the start. */
static void test_fast_insert_vs_eviction(void **state) {
    fast_insert_mode = STRATA_L1_FAST_INSERT_ON;
    test_fast_replace_vs_eviction(state);
    fast_insert_mode = STRATA_L1_FAST_INSERT_AUTO;
}

static void test_fast_insert_vs_invalidation(void **state) {
    fast_insert_mode = STRATA_L1_FAST_INSERT_ON;
    test_fast_replace_vs_invalidation(state);
    fast_insert_mode = STRATA_L1_FAST_INSERT_AUTO;
}

static void test_fast_insert_vs_load(void **state) {
    fast_insert_mode = STRATA_L1_FAST_INSERT_ON;
    test_fast_replace_vs_load(state);
    fast_insert_mode = STRATA_L1_FAST_INSERT_AUTO;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_replace_taken_when_allowed),
        cmocka_unit_test(test_fast_replace_is_an_access),
        cmocka_unit_test(test_fast_replace_vs_eviction),
        cmocka_unit_test(test_fast_replace_vs_invalidation),
        cmocka_unit_test(test_fast_replace_vs_locked_replace),
        cmocka_unit_test(test_fast_replace_vs_load),
        cmocka_unit_test(test_fast_insert_taken_when_allowed),
        cmocka_unit_test(test_fast_insert_vs_mapped_load),
        cmocka_unit_test(test_fast_insert_vs_eviction),
        cmocka_unit_test(test_fast_insert_vs_invalidation),
        cmocka_unit_test(test_fast_insert_vs_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
