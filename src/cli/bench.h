/*
 * bench.h: the `strata bench` driver and its backend interface.
 *
 * One driver, pluggable backends, one reporter (conventions, habit 12).  A
 * backend declares its options as a table (strata/options.h) and a run
 * function; the driver parses `strata bench <backend> [--opt value ...]`,
 * calls run, and reports:
 *   - a live progress line on stderr while running (only when stderr is a tty)
 *   - a final table on stdout (rows the backend added, columns aligned)
 *   - then machine-readable `key=value` lines on stdout, in the order the
 *     backend gave them (the last one is the last line of output)
 * Exit status: 0 on success, 1 when run returns an error or an invariant
 * check failed (strata_bench_fail), 64 on bad usage, 78 on a bad option value.
 *
 * Backends live in bench/<name>.c and are listed in bench/backends.c.
 */
#ifndef STRATA_CLI_BENCH_H
#define STRATA_CLI_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "strata/metrics.h"
#include "strata/options.h"

typedef struct strata_bench strata_bench;

typedef struct strata_bench_backend {
    const char *name;    /* e.g. "l1-replay" */
    const char *summary; /* one line for `strata bench --help` */
    strata_option *opts; /* this backend's options (may be NULL) */
    size_t nopts;
    /* Runs the benchmark; returns STRATA_OK or a status (the driver prints it). */
    int (*run)(strata_bench *b);
} strata_bench_backend;

/** The registered backends, NULL-terminated (bench/backends.c). */
extern const strata_bench_backend *const strata_bench_backends[];

/** The backend's option `name` (as declared in its table); NULL if none. */
const strata_option *strata_bench_opt(strata_bench *b, const char *name);
int64_t strata_bench_opt_int(strata_bench *b, const char *name);
const char *strata_bench_opt_str(strata_bench *b, const char *name);

/** Updates the live progress line (rate-limited to ~10/s; no-op when not a tty). */
void strata_bench_progress(strata_bench *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/** Sets the table's header: column names separated by '|'. */
void strata_bench_table_header(strata_bench *b, const char *cols);
/** Adds a table row: cells separated by '|'. */
void strata_bench_table_row(strata_bench *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/** Adds a `key=value` result line (printed after the table). */
void strata_bench_kv(strata_bench *b, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Adds the standard latency columns of a histogram as kv lines prefixed by `prefix`:
 *  <prefix>p50_us, p90, p99, p999, max (microseconds, from a STRATA_HIST_NS histogram). */
void strata_bench_kv_latency(strata_bench *b, const char *prefix, const strata_histogram *h);

/** Records an invariant violation (printed as `violation=<text>`); the exit code becomes 1. */
void strata_bench_fail(strata_bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Monotonic ns, for timing runs (the system clock). */
uint64_t strata_bench_now_ns(void);

#endif
