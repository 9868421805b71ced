/* backends.c: the list of `strata bench` backends (see src/cli/bench.h). */
#include "bench.h"

extern const strata_bench_backend strata_bench_metrics;
extern const strata_bench_backend strata_bench_redis;

const strata_bench_backend *const strata_bench_backends[] = {
    &strata_bench_metrics,
    &strata_bench_redis,
    NULL,
};
