/*
 * metrics_bench.c: `strata bench metrics`: what the metrics hot path costs.
 * Every request records a counter and a latency histogram, so this cost is
 * paid on every request of every route; measured per thread count.
 */
#include <pthread.h>
#include <stdio.h>

#include "bench.h"
#include "strata/metrics.h"
#include "strata/status.h"

#define METRICS_BENCH_OPTIONS(X)                                         \
    X(threads, STRATA_OPT_INT, "2", 1, 64, NULL, 0, "recording threads") \
    X(ops, STRATA_OPT_INT, "5000000", 1000, 1000000000, NULL, 0, "operations per thread")

enum { METRICS_BENCH_OPTIONS(STRATA_OPT_ENUM_ENTRY) METRICS_BENCH__COUNT };
static strata_option opts[] = {METRICS_BENCH_OPTIONS(STRATA_OPT_ROW)};

typedef struct {
    strata_counter *c;
    strata_histogram *h;
    int64_t ops;
    int hist;
} worker;

static void *run_worker(void *arg) {
    worker *w = arg;
    uint64_t x = 88172645463325252ull;
    for (int64_t i = 0; i < w->ops; i++) {
        if (w->hist) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift: spread over buckets */
            strata_histogram_record(w->h, 1000 + (x & 0xfffff));
        } else {
            strata_counter_inc(w->c);
        }
    }
    return NULL;
}

static int run(strata_bench *b) {
    int threads = (int)strata_bench_opt_int(b, "threads");
    int64_t ops = strata_bench_opt_int(b, "ops");
    strata_metrics *m = strata_metrics_create();
    if (!m)
        return STRATA_ENOMEM;
    strata_counter *c = strata_metrics_counter(m, "bench_ops_total", "ops", NULL);
    strata_histogram *h =
        strata_metrics_histogram(m, "bench_latency_seconds", "lat", NULL, STRATA_HIST_NS);
    strata_bench_table_header(b, "op|threads|Mops/s|ns/op");
    const char *names[] = {"counter_inc", "histogram_record"};
    int rc = STRATA_OK;
    for (int kind = 0; kind < 2 && rc == STRATA_OK; kind++) {
        pthread_t tid[64];
        worker w = {c, h, ops, kind};
        uint64_t t0 = strata_bench_now_ns();
        int started = 0;
        for (; started < threads; started++)
            if (pthread_create(&tid[started], NULL, run_worker, &w) != 0) {
                rc = STRATA_ESYS;
                break;
            }
        for (int i = 0; i < started; i++)
            pthread_join(tid[i], NULL);
        double secs = (double)(strata_bench_now_ns() - t0) / 1e9;
        double total = (double)ops * threads;
        strata_bench_table_row(b, "%s|%d|%.1f|%.2f", names[kind], threads, total / secs / 1e6,
                               secs * 1e9 * threads / total);
        strata_bench_kv(b, names[kind], "%.0f", total / secs);
    }
    /* Invariants of the run itself: nothing lost between threads. */
    if (strata_counter_get(c) != (uint64_t)(ops * threads))
        strata_bench_fail(b, "counter=%llu expected=%lld",
                          (unsigned long long)strata_counter_get(c), (long long)(ops * threads));
    if (strata_histogram_count(h) != (uint64_t)(ops * threads))
        strata_bench_fail(b, "histogram_count=%llu expected=%lld",
                          (unsigned long long)strata_histogram_count(h),
                          (long long)(ops * threads));
    strata_metrics_destroy(&m);
    return rc;
}

const strata_bench_backend strata_bench_metrics = {
    "metrics", "cost of the metrics hot path (counter add, histogram record) per thread count",
    opts,      METRICS_BENCH__COUNT,
    run,
};
