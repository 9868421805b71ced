/*
 * strata/metrics.h: the metrics registry (counters, gauges, histograms) and
 * its Prometheus text exporter.
 *
 * Modules declare their series as data (a table of names, help texts and
 * types) and register them once at setup; the hot path then only touches the
 * handle: a relaxed atomic add.  Handles are owned by the registry and live
 * until it is destroyed.  Registration is thread-safe; registering the same
 * (name, labels) twice returns the same handle.
 *
 * Histograms are log-linear (HdrHistogram-style): 32 linear sub-buckets per
 * power of two, so any recorded value is known within 1/32 (3.1 %) and
 * quantiles are exact to that relative error, over the whole uint64 range,
 * in 1920 fixed buckets (no allocation when recording).  Prometheus gets
 * cumulative `le` buckets at powers of two (exact, because bucket edges
 * align with them), `_sum` and `_count`; quantiles (P50..P999, max) are for
 * reports and /v1/info, never exported as Prometheus quantiles.
 */
#ifndef STRATA_METRICS_H
#define STRATA_METRICS_H

#include <stdint.h>

#include "strata/buf.h"

typedef struct strata_metrics strata_metrics;
typedef struct strata_counter strata_counter;
typedef struct strata_gauge strata_gauge;
typedef struct strata_histogram strata_histogram;

/** What a histogram's values are, which decides how they are exported. */
typedef enum strata_hist_unit {
    STRATA_HIST_NS = 0,    /* nanoseconds; exported in seconds, le from 1.024 µs to 68.7 s */
    STRATA_HIST_COUNT = 1, /* plain numbers; exported as is, le from 1 to 2^32 */
} strata_hist_unit;

/** A new empty registry; NULL on ENOMEM. */
strata_metrics *strata_metrics_create(void);
/** Frees the registry and every handle it gave out; sets *m = NULL. */
void strata_metrics_destroy(strata_metrics **m);

/*
 * Registration.  `name` must match [a-zA-Z_:][a-zA-Z0-9_:]*; `labels` is
 * Prometheus label text without braces (`route="/healthz",status="200"`) or
 * NULL.  Both are copied.  Returns NULL on ENOMEM, an invalid name, or when
 * the name is already registered as another type.
 */
strata_counter *strata_metrics_counter(strata_metrics *m, const char *name, const char *help,
                                       const char *labels);
strata_gauge *strata_metrics_gauge(strata_metrics *m, const char *name, const char *help,
                                   const char *labels);
/** A gauge whose value is read by calling fn(ctx) at render time (fn must be thread-safe). */
strata_gauge *strata_metrics_gauge_fn(strata_metrics *m, const char *name, const char *help,
                                      const char *labels, int64_t (*fn)(void *ctx), void *ctx);
strata_histogram *strata_metrics_histogram(strata_metrics *m, const char *name, const char *help,
                                           const char *labels, strata_hist_unit unit);

void strata_counter_add(strata_counter *c, uint64_t n);
static inline void strata_counter_inc(strata_counter *c) { strata_counter_add(c, 1); }
uint64_t strata_counter_get(const strata_counter *c);

void strata_gauge_set(strata_gauge *g, int64_t v);
void strata_gauge_add(strata_gauge *g, int64_t delta);
int64_t strata_gauge_get(const strata_gauge *g);

/*
 * Histograms.  They also work outside a registry (benchmarks keep one per
 * thread and merge them): create/destroy are for those only.
 */
strata_histogram *strata_histogram_create(strata_hist_unit unit);
void strata_histogram_destroy(strata_histogram **h);
/** Records one value (thread-safe, lock-free). */
void strata_histogram_record(strata_histogram *h, uint64_t value);
/** Records `count` occurrences of one value. */
void strata_histogram_record_n(strata_histogram *h, uint64_t value, uint64_t count);
/** Adds src's counts into dst (units must match; STRATA_EINVAL otherwise). */
int strata_histogram_merge(strata_histogram *dst, const strata_histogram *src);
void strata_histogram_reset(strata_histogram *h);
uint64_t strata_histogram_count(const strata_histogram *h);
/** Sum of recorded values (wraps past 2^64; fine for latencies). */
uint64_t strata_histogram_sum(const strata_histogram *h);
/** Exact smallest / largest value recorded; 0 when empty. */
uint64_t strata_histogram_min(const strata_histogram *h);
uint64_t strata_histogram_max(const strata_histogram *h);
/**
 * The value at quantile q (0 < q <= 1) within 1/32 relative error: the
 * midpoint of the bucket holding that rank, clamped to [min, max]; 0 when empty.
 */
uint64_t strata_histogram_quantile(const strata_histogram *h, double q);
double strata_histogram_mean(const strata_histogram *h);

/** Appends the whole registry in Prometheus text exposition format 0.0.4. */
int strata_metrics_render_prometheus(strata_metrics *m, strata_buf *out);

/**
 * Appends the registry as one JSON object: {"name{labels}": value, ...};
 * histograms as {"count":..,"sum":..,"p50":..,"p90":..,"p99":..,"p999":..,"max":..}
 * in their own unit (ns for latencies).  For the dashboard and /v1/info.
 */
int strata_metrics_render_json(strata_metrics *m, strata_buf *out);

/** Finds a histogram already registered; NULL if none. */
strata_histogram *strata_metrics_find_histogram(strata_metrics *m, const char *name,
                                                const char *labels);

#endif
