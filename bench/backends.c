/* backends.c: the list of `strata bench` backends (see src/cli/bench.h). */
#include "bench.h"

extern const strata_bench_backend strata_bench_metrics;
extern const strata_bench_backend strata_bench_flashsale;
extern const strata_bench_backend strata_bench_redpacket;
extern const strata_bench_backend strata_bench_http;
extern const strata_bench_backend strata_bench_l1_replay;
extern const strata_bench_backend strata_bench_l1_throughput;
extern const strata_bench_backend strata_bench_redis;
extern const strata_bench_backend strata_bench_tier;

const strata_bench_backend *const strata_bench_backends[] = {
    &strata_bench_metrics, &strata_bench_flashsale, &strata_bench_redpacket,
    &strata_bench_http,    &strata_bench_l1_replay, &strata_bench_l1_throughput,
    &strata_bench_redis,   &strata_bench_tier,      NULL,
};
