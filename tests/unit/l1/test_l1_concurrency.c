/*
 * test_l1_concurrency.c: the L1 cache under threads (also built as a
 * ThreadSanitizer twin): references and copy-out reads racing evictions and
 * replacements, singleflight under contention with loads completed on
 * another thread, invalidations racing in-flight loads, and the read
 * counters of more reading threads than the cache has stripes (owned stripes
 * count with plain stores, the rest share one stripe: the counts stay exact),
 * and the same races with maintenance deferred to an executor thread
 * (strata_l1_config.executor), whose tasks strata_l1_destroy waits for.
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
#include <string.h>

#include <cmocka.h>

#include "strata/l1.h"
#include "strata/status.h"

#ifdef __SANITIZE_THREAD__
#define OPS 40000
#else
#define OPS 200000
#endif

/* Values encode their key ("k17" -> "k17=k17=k17..."), so a torn or
 * recycled entry is detected by any reader. */
static size_t make_value(char *out, size_t cap, const char *key, unsigned len) {
    size_t kl = strlen(key), n = 0;
    while (n + kl + 1 < cap && n < len) {
        memcpy(out + n, key, kl);
        n += kl;
        out[n++] = '=';
    }
    return n;
}

static int value_ok(const char *key, const char *v, size_t vl) {
    size_t kl = strlen(key);
    if (vl == 0 || vl % (kl + 1) != 0)
        return 0;
    for (size_t i = 0; i < vl; i += kl + 1)
        if (memcmp(v + i, key, kl) != 0 || v[i + kl] != '=')
            return 0;
    return 1;
}

typedef struct {
    strata_l1 *c;
    int id;
    atomic_int *errors;
    atomic_int *stop;
} rw_arg;

static void *writer(void *p) {
    rw_arg *a = p;
    uint32_t x = 12345u + (uint32_t)a->id;
    char k[16], v[256];
    for (int i = 0; i < OPS; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        snprintf(k, sizeof k, "k%u", x % 500);
        size_t vl = make_value(v, sizeof v, k, 1 + x % 200);
        int rc = strata_l1_set(a->c, k, strlen(k), v, vl, NULL);
        if (rc != STRATA_OK)
            atomic_fetch_add(a->errors, 1);
        if (x % 97 == 0)
            strata_l1_invalidate(a->c, k, strlen(k));
        if (x % 4999 == 0)
            strata_l1_invalidate_prefix(a->c, "k1", 2);
    }
    return NULL;
}

static void *reader(void *p) {
    rw_arg *a = p;
    uint32_t x = 777u + (uint32_t)a->id;
    char k[16], buf[256];
    strata_l1_entry *held[8] = {0};
    char heldk[8][16];
    for (int i = 0; i < OPS; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        snprintf(k, sizeof k, "k%u", x % 500);
        if (x & 1) {
            size_t vl = 0;
            int rc = strata_l1_get_copy(a->c, k, strlen(k), buf, sizeof buf, &vl);
            if (rc >= 0 && !value_ok(k, buf, vl))
                atomic_fetch_add(a->errors, 1);
        } else {
            /* hold references across many later operations (and evictions) */
            int slot = (int)((x >> 8) & 7);
            if (held[slot]) {
                size_t vl;
                const char *v = strata_l1_entry_value(held[slot], &vl);
                if (!value_ok(heldk[slot], v, vl))
                    atomic_fetch_add(a->errors, 1);
                strata_l1_release(&held[slot]);
            }
            if (strata_l1_acquire(a->c, k, strlen(k), &held[slot]) >= 0)
                memcpy(heldk[slot], k, sizeof k);
        }
    }
    for (int s = 0; s < 8; s++)
        strata_l1_release(&held[s]);
    return NULL;
}

/* ---- an executor for deferred maintenance (strata_l1_config.executor) ---- */

#define EXEC_RING 64

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*fn[EXEC_RING])(void *);
    void *arg[EXEC_RING];
    unsigned head, tail;
    int quit, paused;
    atomic_int ran;
    pthread_t th;
} test_executor;

static void *executor_main(void *p) {
    test_executor *x = p;
    pthread_mutex_lock(&x->mu);
    for (;;) {
        while ((x->head == x->tail || x->paused) && !x->quit)
            pthread_cond_wait(&x->cv, &x->mu);
        if (x->head == x->tail)
            break; /* quit, nothing left */
        void (*fn)(void *) = x->fn[x->head % EXEC_RING];
        void *arg = x->arg[x->head % EXEC_RING];
        x->head++;
        pthread_mutex_unlock(&x->mu);
        fn(arg);
        atomic_fetch_add(&x->ran, 1);
        pthread_mutex_lock(&x->mu);
    }
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

/* Queues the task for the worker; runs it here when the ring is full (the
 * contract allows either). */
static void executor_execute(void *ctx, void (*fn)(void *), void *arg) {
    test_executor *x = ctx;
    pthread_mutex_lock(&x->mu);
    if (x->tail - x->head == EXEC_RING) {
        pthread_mutex_unlock(&x->mu);
        fn(arg);
        return;
    }
    x->fn[x->tail % EXEC_RING] = fn;
    x->arg[x->tail % EXEC_RING] = arg;
    x->tail++;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

static void executor_start(test_executor *x, int paused) {
    memset(x, 0, sizeof(*x));
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    x->paused = paused;
    assert_int_equal(pthread_create(&x->th, NULL, executor_main, x), 0);
}

static void executor_set_paused(test_executor *x, int paused) {
    pthread_mutex_lock(&x->mu);
    x->paused = paused;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

/* Runs what is queued, then ends the worker. */
static void executor_stop(test_executor *x) {
    pthread_mutex_lock(&x->mu);
    x->quit = 1;
    x->paused = 0;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
    pthread_join(x->th, NULL);
    pthread_cond_destroy(&x->cv);
    pthread_mutex_destroy(&x->mu);
}

static strata_l1_executor executor_of(test_executor *x) {
    return (strata_l1_executor){executor_execute, x};
}

/* Two writers and two readers (copy-out and held references) on a
 * 64-entry cache; with ex, maintenance runs on the executor's thread. */
static void refs_survive(const strata_l1_executor *ex) {
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.capacity = 64;
    if (ex)
        cfg.executor = *ex;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    atomic_int errors = 0, stop = 0;
    pthread_t t[4];
    rw_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (rw_arg){c, i, &errors, &stop};
        assert_int_equal(pthread_create(&t[i], NULL, i < 2 ? writer : reader, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&errors), 0);
    assert_true(strata_l1_size(c) <= 64);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_true(st.evictions[STRATA_L1_CAUSE_SIZE] > 0);
    assert_true(st.hits > 0);
    strata_l1_destroy(&c);
}

static void test_refs_survive_concurrent_eviction(void **state) {
    (void)state;
    refs_survive(NULL);
}

/* Runs body with maintenance on an executor thread, which must have run tasks. */
static void with_executor(void (*body)(const strata_l1_executor *ex)) {
    test_executor x;
    executor_start(&x, 0);
    strata_l1_executor ex = executor_of(&x);
    body(&ex);
    assert_true(atomic_load(&x.ran) > 0); /* maintenance did run there */
    executor_stop(&x);
}

static void test_refs_survive_with_executor(void **state) {
    (void)state;
    with_executor(refs_survive);
}

/* ---- singleflight with completion on another thread ------------------------ */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    strata_l1_load *queue[1024]; /* > ROUNDS: workers may run ahead of completions */
    int n;
    int quit;
    atomic_int started;
} completer;

static void async_loader(void *ctx, strata_l1_load *ld, const void *key, size_t klen) {
    (void)key;
    (void)klen;
    completer *cp = ctx;
    atomic_fetch_add(&cp->started, 1);
    pthread_mutex_lock(&cp->mu);
    cp->queue[cp->n++] = ld;
    pthread_cond_signal(&cp->cv);
    pthread_mutex_unlock(&cp->mu);
}

static void *completer_main(void *p) {
    completer *cp = p;
    pthread_mutex_lock(&cp->mu);
    for (;;) {
        while (cp->n == 0 && !cp->quit)
            pthread_cond_wait(&cp->cv, &cp->mu);
        if (cp->n == 0 && cp->quit)
            break;
        strata_l1_load *ld = cp->queue[--cp->n];
        pthread_mutex_unlock(&cp->mu);
        size_t kl;
        const char *k = strata_l1_load_key(ld, &kl);
        char v[64];
        snprintf(v, sizeof v, "%.*s", (int)kl, k);
        strata_l1_load_complete(ld, STRATA_OK, v, strlen(v), NULL);
        pthread_mutex_lock(&cp->mu);
    }
    pthread_mutex_unlock(&cp->mu);
    return NULL;
}

typedef struct {
    strata_l1 *c;
    completer *cp;
    pthread_barrier_t *bar;
    atomic_int *done_calls;
    atomic_int *bad;
    int rounds;
} sf_arg;

static void sf_done(void *ud, int status, strata_l1_outcome outcome, strata_l1_entry *e) {
    sf_arg *a = ud;
    if (status != STRATA_OK || !e)
        atomic_fetch_add(a->bad, 1);
    strata_l1_release(&e);
    (void)outcome;
    atomic_fetch_add(a->done_calls, 1);
}

static void *sf_worker(void *p) {
    sf_arg *a = p;
    for (int r = 0; r < a->rounds; r++) {
        char k[16];
        snprintf(k, sizeof k, "sf%d", r);
        pthread_barrier_wait(a->bar);
        strata_l1_entry *e = NULL;
        int rc = strata_l1_get_or_load(a->c, k, strlen(k), async_loader, a->cp, sf_done, a, &e);
        if (rc == STRATA_L1_HIT) {
            size_t vl;
            const char *v = strata_l1_entry_value(e, &vl);
            if (vl != strlen(k) || memcmp(v, k, vl) != 0)
                atomic_fetch_add(a->bad, 1);
            strata_l1_release(&e);
            atomic_fetch_add(a->done_calls, 1);
        } else if (rc != STRATA_L1_PENDING) {
            atomic_fetch_add(a->bad, 1);
        }
    }
    return NULL;
}

static void test_singleflight_contention(void **state) {
    (void)state;
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.capacity = 10000;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    completer cp = {.n = 0, .quit = 0};
    pthread_mutex_init(&cp.mu, NULL);
    pthread_cond_init(&cp.cv, NULL);
    atomic_init(&cp.started, 0);
    pthread_t ct;
    pthread_create(&ct, NULL, completer_main, &cp);
    enum { T = 4, ROUNDS = 200 };
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, T);
    atomic_int done_calls = 0, bad = 0;
    sf_arg a = {c, &cp, &bar, &done_calls, &bad, ROUNDS};
    pthread_t t[T];
    for (int i = 0; i < T; i++)
        pthread_create(&t[i], NULL, sf_worker, &a);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    pthread_mutex_lock(&cp.mu);
    cp.quit = 1;
    pthread_cond_signal(&cp.cv);
    pthread_mutex_unlock(&cp.mu);
    pthread_join(ct, NULL);
    /* every caller answered exactly once; one load per key */
    assert_int_equal(atomic_load(&done_calls), T * ROUNDS);
    assert_int_equal(atomic_load(&bad), 0);
    assert_int_equal(atomic_load(&cp.started), ROUNDS);
    pthread_barrier_destroy(&bar);
    pthread_cond_destroy(&cp.cv);
    pthread_mutex_destroy(&cp.mu);
    strata_l1_destroy(&c);
}

/* ---- invalidation racing loads --------------------------------------------- */

typedef struct {
    strata_l1 *c;
    atomic_int phase; /* 0 idle, 1 load registered, 2 invalidated */
    strata_l1_load *ld;
    int rounds;
} race_arg;

static void race_loader(void *ctx, strata_l1_load *ld, const void *key, size_t klen) {
    (void)key;
    (void)klen;
    race_arg *r = ctx;
    r->ld = ld;
    atomic_store(&r->phase, 1);
}

static void race_done(void *ud, int status, strata_l1_outcome outcome, strata_l1_entry *e) {
    (void)ud;
    (void)status;
    (void)outcome;
    strata_l1_release(&e);
}

static void *invalidator(void *p) {
    race_arg *r = p;
    for (int i = 0; i < r->rounds; i++) {
        while (atomic_load(&r->phase) != 1) {
            sched_yield();
        }
        strata_l1_invalidate(r->c, "race", 4);
        atomic_store(&r->phase, 2);
    }
    return NULL;
}

static void *load_completer(void *p) {
    race_arg *r = p;
    for (int i = 0; i < r->rounds; i++) {
        while (atomic_load(&r->phase) != 2) {
            sched_yield();
        }
        strata_l1_load *ld = r->ld;
        atomic_store(&r->phase, 0);
        strata_l1_load_complete(ld, STRATA_OK, "stale", 5, NULL);
    }
    return NULL;
}

static void test_invalidation_races_load(void **state) {
    (void)state;
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.capacity = 100;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    race_arg r = {.c = c, .rounds = 1000};
    atomic_init(&r.phase, 0);
    pthread_t ti, tc;
    pthread_create(&ti, NULL, invalidator, &r);
    pthread_create(&tc, NULL, load_completer, &r);
    int cached = 0;
    for (int i = 0; i < r.rounds; i++) {
        while (atomic_load(&r.phase) != 0) {
            sched_yield();
        }
        strata_l1_entry *e = NULL;
        int rc = strata_l1_get_or_load(c, "race", 4, race_loader, &r, race_done, NULL, &e);
        if (rc >= 0 && rc != STRATA_L1_PENDING) {
            cached++; /* a dropped load's value must never be found */
            strata_l1_release(&e);
            atomic_store(&r.phase, 0);
        }
    }
    pthread_join(ti, NULL);
    pthread_join(tc, NULL);
    char buf[8];
    assert_int_equal(cached, 0);
    assert_int_equal(strata_l1_get_copy(c, "race", 4, buf, sizeof buf, NULL), STRATA_ENOTFOUND);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.loads_dropped, (uint64_t)r.rounds);
    strata_l1_destroy(&c);
}

/* ---- the honest bound under concurrent sets ------------------------------- */

typedef struct bound_arg {
    strata_l1 *c;
    unsigned seed;
    _Atomic int *violations;
} bound_arg;

enum { BOUND_CAP = 400, BOUND_SETS = 20000 };

static void *bound_setter(void *p) {
    bound_arg *a = p;
    uint32_t x = a->seed;
    char k[24];
    for (int i = 0; i < BOUND_SETS; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        snprintf(k, sizeof k, "b%u", x % 5000);
        strata_l1_set_opts o = {.cost = 1 + x % 7};
        uint64_t v = x;
        if (strata_l1_set(a->c, k, strlen(k), &v, sizeof v, &o) != STRATA_OK)
            atomic_fetch_add(a->violations, 1);
        /* once this set has returned, the cost is within capacity (other
         * threads' sets evict before they return too) */
        if (strata_l1_cost(a->c) > BOUND_CAP)
            atomic_fetch_add(a->violations, 1);
        if ((i & 7) == 0) {
            uint64_t got = 0;
            (void)strata_l1_get_copy(a->c, k, strlen(k), &got, sizeof got, NULL);
        }
    }
    return NULL;
}

/* Four threads set weighted entries into a small cache; after every set the
 * total cost is checked against the capacity, and at the end the stats add
 * up (entries and cost as the table holds them). */
static void bound_under_sets(const strata_l1_executor *ex) {
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.capacity = BOUND_CAP;
    if (ex)
        cfg.executor = *ex;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    _Atomic int violations = 0;
    pthread_t th[4];
    bound_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (bound_arg){c, 2463534242u + 7919u * (unsigned)i, &violations};
        assert_int_equal(pthread_create(&th[i], NULL, bound_setter, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&violations), 0);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_true(st.cost <= BOUND_CAP);
    assert_true(st.cost >= BOUND_CAP / 2); /* it did fill up */
    assert_true(st.evictions[STRATA_L1_CAUSE_SIZE] > 0);
    strata_l1_destroy(&c);
}

static void test_bound_under_concurrent_sets(void **state) {
    (void)state;
    bound_under_sets(NULL);
}

/* With maintenance deferred to an executor, a set still evicts down to the
 * capacity before it returns. */
static void test_bound_with_executor(void **state) {
    (void)state;
    with_executor(bound_under_sets);
}

/* strata_l1_destroy waits for a task it handed over: here the task is held
 * in a paused executor while destroy runs on another thread; destroy must
 * not return (and free the cache) before the task has run.  If it did, the
 * task would touch freed memory (AddressSanitizer) and destroyed would be
 * set before the task ran. */
typedef struct {
    strata_l1 *c;
    atomic_int destroyed;
} destroy_arg;

static void *destroyer(void *p) {
    destroy_arg *a = p;
    strata_l1_destroy(&a->c);
    atomic_store(&a->destroyed, 1);
    return NULL;
}

static void test_destroy_waits_for_executor_task(void **state) {
    (void)state;
    test_executor x;
    executor_start(&x, 1);
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.capacity = 100;
    cfg.executor = executor_of(&x);
    destroy_arg a = {NULL, 0};
    assert_int_equal(strata_l1_create(&cfg, &a.c), STRATA_OK);
    char k[16], buf[8];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "d%d", i);
        assert_int_equal(strata_l1_set(a.c, k, strlen(k), "v", 1, NULL), STRATA_OK);
    }
    for (int r = 0; r < 4; r++) /* fill the read buffer past half: queues a task */
        for (int i = 0; i < 100; i++) {
            snprintf(k, sizeof k, "d%d", i);
            (void)strata_l1_get_copy(a.c, k, strlen(k), buf, sizeof buf, NULL);
        }
    pthread_mutex_lock(&x.mu);
    unsigned queued = x.tail - x.head;
    pthread_mutex_unlock(&x.mu);
    assert_true(queued >= 1);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, destroyer, &a), 0);
    for (int i = 0; i < 100; i++)
        sched_yield(); /* give destroy a chance to run ahead (it must not) */
    assert_int_equal(atomic_load(&a.destroyed), 0);
    executor_set_paused(&x, 0);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&a.destroyed), 1);
    assert_true(atomic_load(&x.ran) >= 1);
    executor_stop(&x);
}

/* ---- read counters with more threads than stripes ------------------------ */

#define COUNT_THREADS 24 /* > the cache's 16 owned stripes */
#define COUNT_READS   (OPS / 10)

typedef struct {
    strata_l1 *c;
    unsigned id;
    uint64_t hits, misses;
    pthread_barrier_t *bar;
} count_arg;

/* Reads keys h0..h63 (present) and m0..m63 (absent) with its own counts. */
static void *counting_reader(void *p) {
    count_arg *a = p;
    char k[16], buf[8];
    uint32_t x = 2463534242u + 7919u * a->id;
    pthread_barrier_wait(a->bar);
    for (int i = 0; i < COUNT_READS; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        snprintf(k, sizeof k, "%c%u", (x & 64) ? 'h' : 'm', x % 64);
        if (strata_l1_get_copy(a->c, k, strlen(k), buf, sizeof buf, NULL) == STRATA_L1_HIT)
            a->hits++;
        else
            a->misses++;
    }
    return NULL;
}

static void test_read_counts_exact_with_many_threads(void **state) {
    (void)state;
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.capacity = 1000;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    char k[16];
    for (unsigned i = 0; i < 64; i++) {
        snprintf(k, sizeof k, "h%u", i);
        assert_int_equal(strata_l1_set(c, k, strlen(k), "v", 1, NULL), STRATA_OK);
    }
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, COUNT_THREADS);
    pthread_t th[COUNT_THREADS];
    count_arg args[COUNT_THREADS];
    for (unsigned i = 0; i < COUNT_THREADS; i++) {
        args[i] = (count_arg){c, i, 0, 0, &bar};
        assert_int_equal(pthread_create(&th[i], NULL, counting_reader, &args[i]), 0);
    }
    uint64_t hits = 0, misses = 0;
    for (unsigned i = 0; i < COUNT_THREADS; i++) {
        pthread_join(th[i], NULL);
        hits += args[i].hits;
        misses += args[i].misses;
    }
    pthread_barrier_destroy(&bar);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    assert_int_equal(st.hits, hits);
    assert_int_equal(st.misses, misses);
    assert_int_equal(hits + misses, (uint64_t)COUNT_THREADS * COUNT_READS);
    assert_true(hits > 0 && misses > 0);
    assert_int_equal(st.entries, 64); /* reads evict nothing */
    strata_l1_destroy(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refs_survive_concurrent_eviction),
        cmocka_unit_test(test_refs_survive_with_executor),
        cmocka_unit_test(test_bound_with_executor),
        cmocka_unit_test(test_destroy_waits_for_executor_task),
        cmocka_unit_test(test_singleflight_contention),
        cmocka_unit_test(test_invalidation_races_load),
        cmocka_unit_test(test_bound_under_concurrent_sets),
        cmocka_unit_test(test_read_counts_exact_with_many_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
