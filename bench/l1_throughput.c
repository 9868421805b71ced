/*
 * l1_throughput.c: `strata bench l1-throughput`: L1 operations per second.
 *
 *   strata bench l1-throughput [--threads 1,2] [--keys 1000000] [--zipf 0.99]
 *                              [--mix all|read100|read90|read75] [--rounds 5]
 *                              [--read-api copy|ref] [--maintenance inline|thread]
 *
 * The workload of the issue: Zipf(0.99) over 1M keys (8-byte integers,
 * ranks scattered by a hash), pre-generated per thread before timing; the
 * cache holds 10 % of the keys (W-TinyLFU, entries) and is warmed with one
 * pass of the stream; 100 % reads, 90/10 and 75/25 read/write.  A read is the
 * `get` the server uses: copy-out into a caller buffer (--read-api copy), or
 * acquire + release of a reference (ref).  A write is strata_l1_set with an
 * 8-byte value; the table counts the sets that took the fast replace and
 * fast insert paths (docs/notes/l1.md D15, D19).  --maintenance thread hands
 * the cache's maintenance to a one-thread executor (strata_l1_config.executor),
 * as Caffeine's default executor does (docs/notes/l1.md D25).  Each (mix, threads) cell runs `rounds` timed rounds of
 * `ops` operations per thread; the median is reported.
 *
 * Also measures the memory overhead per entry: allocator bytes in use (the
 * counting allocator, malloc_usable_size) minus key and value bytes, with
 * the cache full of 8-byte keys and values, divided by the entry count.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "bench.h"
#include "strata/alloc.h"
#include "strata/l1.h"
#include "strata/status.h"

#define TP_OPTIONS(X)                                                                          \
    X(threads, STRATA_OPT_STR, "1,2", 1, 0, NULL, 0, "thread counts, comma separated")         \
    X(keys, STRATA_OPT_INT, "1000000", 1000, 100000000, NULL, 0, "key universe")               \
    X(zipf, STRATA_OPT_STR, "0.99", 1, 0, NULL, 0, "Zipf exponent")                            \
    X(mix, STRATA_OPT_ENUM, "all", 0, 0, "all|read100|read90|read75", 0, "read/write mix")     \
    X(rounds, STRATA_OPT_INT, "5", 1, 100, NULL, 0, "timed rounds per cell (median reported)") \
    X(ops, STRATA_OPT_INT, "4000000", 10000, 1000000000, NULL, 0,                              \
      "operations per thread per round")                                                       \
    X(read_api, STRATA_OPT_ENUM, "copy", 0, 0, "copy|ref", 0, "get path timed")                \
    X(cache_pct, STRATA_OPT_INT, "10", 1, 100, NULL, 0, "cache size, % of the keys")           \
    X(maintenance, STRATA_OPT_ENUM, "inline", 0, 0, "inline|thread", 0,                        \
      "where maintenance runs: the calling threads, or an executor thread")

enum { TP_OPTIONS(STRATA_OPT_ENUM_ENTRY) TP__COUNT };
static strata_option opts[] = {TP_OPTIONS(STRATA_OPT_ROW)};

#define STREAM (1u << 22) /* pre-generated keys per thread */

typedef struct {
    strata_l1 *c;
    const uint64_t *stream;
    int64_t ops;
    int write_pct;
    int ref;
    pthread_barrier_t *bar;
    double secs;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    char buf[64];
    size_t vlen;
    uint64_t val = 42;
    uint32_t x = 2463534242u;
    pthread_barrier_wait(w->bar);
    uint64_t t0 = strata_bench_now_ns();
    for (int64_t i = 0; i < w->ops; i++) {
        uint64_t k = w->stream[i & (STREAM - 1)];
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        if (w->write_pct && (int)(x % 100) < w->write_pct) {
            strata_l1_set(w->c, &k, sizeof(k), &val, sizeof(val), NULL);
        } else if (w->ref) {
            strata_l1_entry *e;
            if (strata_l1_acquire(w->c, &k, sizeof(k), &e) >= 0)
                strata_l1_release(&e);
        } else {
            (void)strata_l1_get_copy(w->c, &k, sizeof(k), buf, sizeof(buf), &vlen);
        }
    }
    w->secs = (double)(strata_bench_now_ns() - t0) / 1e9;
    return NULL;
}

/* --maintenance thread: a one-thread executor for strata_l1_config.executor,
 * as Caffeine's default runs its maintenance on ForkJoinPool.commonPool().
 * The worker spins a while before it sleeps (as a pool worker scans before
 * parking), so a task queued soon after the last does not wait for a
 * futex wake-up. */
#define EXEC_RING 256
#define EXEC_SPIN 20000 /* polls before sleeping */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*fn[EXEC_RING])(void *);
    void *arg[EXEC_RING];
    _Atomic unsigned tail;
    unsigned head;
    _Atomic int quit;
    int sleeping;
    pthread_t th;
} bench_executor;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *exec_main(void *p) {
    bench_executor *x = p;
    for (;;) {
        for (int i = 0; i < EXEC_SPIN && atomic_load(&x->tail) == x->head && !x->quit; i++)
            cpu_relax();
        pthread_mutex_lock(&x->mu);
        while (atomic_load(&x->tail) == x->head && !x->quit) {
            x->sleeping = 1;
            pthread_cond_wait(&x->cv, &x->mu);
            x->sleeping = 0;
        }
        if (atomic_load(&x->tail) == x->head) {
            pthread_mutex_unlock(&x->mu);
            return NULL;
        }
        void (*fn)(void *) = x->fn[x->head % EXEC_RING];
        void *arg = x->arg[x->head % EXEC_RING];
        x->head++;
        pthread_mutex_unlock(&x->mu);
        fn(arg);
    }
}

static void exec_execute(void *ctx, void (*fn)(void *), void *arg) {
    bench_executor *x = ctx;
    pthread_mutex_lock(&x->mu);
    unsigned t = atomic_load(&x->tail);
    if (t - x->head == EXEC_RING) { /* full: run it here */
        pthread_mutex_unlock(&x->mu);
        fn(arg);
        return;
    }
    x->fn[t % EXEC_RING] = fn;
    x->arg[t % EXEC_RING] = arg;
    atomic_store(&x->tail, t + 1);
    if (x->sleeping)
        pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

static int exec_start(bench_executor *x) {
    memset(x, 0, sizeof(*x));
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    return pthread_create(&x->th, NULL, exec_main, x) == 0 ? STRATA_OK : STRATA_ESYS;
}

static void exec_stop(bench_executor *x) {
    pthread_mutex_lock(&x->mu);
    x->quit = 1;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
    pthread_join(x->th, NULL);
    pthread_cond_destroy(&x->cv);
    pthread_mutex_destroy(&x->mu);
}

static int gen_stream(uint64_t *out, size_t n, uint64_t nkeys, double s, uint64_t seed) {
    double *cdf = strata_malloc(nkeys * sizeof(double));
    if (!cdf)
        return STRATA_ENOMEM;
    double sum = 0;
    for (uint64_t i = 0; i < nkeys; i++)
        cdf[i] = (sum += 1.0 / pow((double)(i + 1), s));
    uint64_t r = seed;
    for (size_t i = 0; i < n; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        double u = (double)(r >> 11) / 9007199254740992.0 * sum;
        uint64_t lo = 0, hi = nkeys - 1;
        while (lo < hi) {
            uint64_t mid = (lo + hi) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        out[i] = XXH3_64bits(&lo, sizeof(lo));
    }
    strata_free(cdf);
    return STRATA_OK;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double measure_overhead(uint64_t n) {
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.capacity = n;
    strata_alloc_counting(1);
    int64_t before = strata_alloc_bytes_in_use();
    strata_l1 *c;
    if (strata_l1_create(&cfg, &c) < 0)
        return -1;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = i;
        strata_l1_set(c, &i, sizeof(i), &v, sizeof(v), NULL);
    }
    strata_l1_maintain(c);
    uint64_t entries = strata_l1_size(c);
    int64_t used = strata_alloc_bytes_in_use() - before;
    strata_l1_destroy(&c);
    return ((double)used - (double)entries * 16.0) / (double)entries;
}

static int run(strata_bench *b) {
    const char *tlist = strata_bench_opt_str(b, "threads");
    uint64_t nkeys = (uint64_t)strata_bench_opt_int(b, "keys");
    double s = atof(strata_bench_opt_str(b, "zipf"));
    int mix = (int)strata_bench_opt_int(b, "mix");
    int rounds = (int)strata_bench_opt_int(b, "rounds");
    int64_t ops = strata_bench_opt_int(b, "ops");
    int ref = strata_bench_opt_int(b, "read_api") == 1;
    int pct = (int)strata_bench_opt_int(b, "cache_pct");
    int threaded = strata_bench_opt_int(b, "maintenance") == 1;
    int tcounts[8], nt = 0;
    for (const char *p = tlist; *p && nt < 8;) {
        int t = atoi(p);
        if (t < 1 || t > 64)
            return STRATA_EINVAL;
        tcounts[nt++] = t;
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    if (s <= 0 || s > 5 || nt == 0)
        return STRATA_EINVAL;
    int maxt = 0;
    for (int i = 0; i < nt; i++)
        maxt = tcounts[i] > maxt ? tcounts[i] : maxt;
    uint64_t *streams = strata_malloc((size_t)maxt * STREAM * sizeof(uint64_t));
    if (!streams)
        return STRATA_ENOMEM;
    int rc = STRATA_OK;
    for (int t = 0; t < maxt && rc == STRATA_OK; t++)
        rc = gen_stream(streams + (size_t)t * STREAM, STREAM, nkeys, s,
                        0x9E3779B97F4A7C15ULL + (uint64_t)t * 7919);
    static const int wpct[3] = {0, 10, 25};
    static const char *mnames[3] = {"read100", "read90", "read75"};
    strata_bench_table_header(
        b, "mix|threads|Mops/s (median)|min|max|hit_ratio|fast_replaces|fast_inserts");
    for (int m = 0; m < 3 && rc == STRATA_OK; m++) {
        if (mix != 0 && mix != m + 1)
            continue;
        for (int ti = 0; ti < nt && rc == STRATA_OK; ti++) {
            int threads = tcounts[ti];
            strata_l1_config cfg;
            strata_l1_config_init(&cfg);
            cfg.capacity = nkeys * (uint64_t)pct / 100;
            bench_executor ex;
            if (threaded) {
                if ((rc = exec_start(&ex)) < 0)
                    break;
                cfg.executor = (strata_l1_executor){exec_execute, &ex};
            }
            strata_l1 *c;
            if ((rc = strata_l1_create(&cfg, &c)) < 0) {
                if (threaded)
                    exec_stop(&ex);
                break;
            }
            uint64_t val = 7;
            for (size_t i = 0; i < STREAM; i++) { /* warm: one pass, reads then fills */
                uint64_t k = streams[i];
                if (strata_l1_get_copy(c, &k, 8, NULL, 0, NULL) < 0)
                    strata_l1_set(c, &k, 8, &val, 8, NULL);
            }
            strata_l1_stats st0, st1;
            strata_l1_stats_get(c, &st0);
            double res[100];
            for (int r = 0; r < rounds; r++) {
                pthread_t tid[64];
                worker w[64];
                pthread_barrier_t bar;
                pthread_barrier_init(&bar, NULL, (unsigned)threads);
                for (int i = 0; i < threads; i++) {
                    w[i] = (worker){c, streams + (size_t)i * STREAM, ops, wpct[m], ref, &bar, 0};
                    pthread_create(&tid[i], NULL, work, &w[i]);
                }
                double slowest = 0;
                for (int i = 0; i < threads; i++) {
                    pthread_join(tid[i], NULL);
                    slowest = w[i].secs > slowest ? w[i].secs : slowest;
                }
                pthread_barrier_destroy(&bar);
                res[r] = (double)ops * threads / slowest;
            }
            strata_l1_stats_get(c, &st1);
            double hr = 100.0 * (double)(st1.hits - st0.hits) /
                        (double)((st1.hits - st0.hits) + (st1.misses - st0.misses) + 1);
            if (st1.cost > st1.capacity)
                strata_bench_fail(b, "cost %llu above capacity %llu", (unsigned long long)st1.cost,
                                  (unsigned long long)st1.capacity);
            strata_l1_destroy(&c);
            if (threaded)
                exec_stop(&ex);
            qsort(res, (size_t)rounds, sizeof(double), cmp_double);
            double med = res[rounds / 2];
            strata_bench_table_row(b, "%s|%d|%.2f|%.2f|%.2f|%.1f%%|%llu|%llu", mnames[m], threads,
                                   med / 1e6, res[0] / 1e6, res[rounds - 1] / 1e6, hr,
                                   (unsigned long long)(st1.fast_replaces - st0.fast_replaces),
                                   (unsigned long long)(st1.fast_inserts - st0.fast_inserts));
            char key[64];
            snprintf(key, sizeof(key), "strata_%s_%dt", mnames[m], threads);
            strata_bench_kv(b, key, "%.0f", med);
        }
    }
    strata_free(streams);
    if (rc == STRATA_OK) {
        double ov = measure_overhead(100000);
        strata_bench_kv(b, "overhead_bytes_per_entry", "%.1f", ov);
    }
    return rc;
}

const strata_bench_backend strata_bench_l1_throughput = {
    "l1-throughput", "L1 ops/s: Zipf 0.99 over 1M keys, 1-2 threads, read/write mixes", opts,
    TP__COUNT, run};
