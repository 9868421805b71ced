/*
 * redis_bench.c: `strata bench redis`: pipelined GET / SET / EVALSHA through
 * the Strata Redis client, shaped like redis-benchmark so the two can be run
 * against the same server in the same run (bench/redis-compare.sh):
 *
 *   redis-benchmark -c C -P P -n N GET key:__rand_int__
 *   strata bench redis --conns C --pipeline P --requests N --command get
 *
 * One uv loop on one thread (redis-benchmark is single-threaded too), C
 * clients each with one connection (conns_per_node = 1), each keeping P
 * calls in flight: a completion issues the next call (a sliding window;
 * redis-benchmark sends P then waits for the P replies, which can only be
 * slower).  Reports ops/s and the latency of each call from submit to callback.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "bench.h"
#include "strata/alloc.h"
#include "strata/redis.h"
#include "strata/status.h"

#define REDIS_BENCH_OPTIONS(X)                                                                     \
    X(url, STRATA_OPT_STR, "redis://127.0.0.1:6379", 1, 0, NULL, 0, "Redis URL to benchmark")      \
    X(command, STRATA_OPT_ENUM, "get", 0, 0, "get|set|evalsha", 0,                                 \
      "get: GET key; set: SET key value; evalsha: EVALSHA of `return redis.call('GET', KEYS[1])`") \
    X(conns, STRATA_OPT_INT, "50", 1, 1024, NULL, 0, "clients (one connection each), like -c")     \
    X(pipeline, STRATA_OPT_INT, "16", 1, 10000, NULL, 0, "calls in flight per client, like -P")    \
    X(requests, STRATA_OPT_INT, "2000000", 1000, 1000000000, NULL, 0, "total calls, like -n")      \
    X(key, STRATA_OPT_STR, "key:__rand_int__", 1, 0, NULL, 0,                                      \
      "the key (as redis-benchmark's default)")                                                    \
    X(value_size, STRATA_OPT_SIZE, "3", 1, 1048576, NULL, 0, "SET value bytes, like -d")           \
    X(timeout, STRATA_OPT_DURATION, "5s", 1, 600000, NULL, 0, "per-call deadline")

enum { REDIS_BENCH_OPTIONS(STRATA_OPT_ENUM_ENTRY) REDIS_BENCH__COUNT };
static strata_option opts[] = {REDIS_BENCH_OPTIONS(STRATA_OPT_ROW)};

static const char script_src[] = "return redis.call('GET', KEYS[1])";

typedef struct bench_state {
    strata_bench *b;
    strata_redis **clients;
    int nclients;
    int cmd;
    int64_t to_issue, done, errors;
    int64_t first_error;
    const char *key;
    char *value;
    size_t value_len;
    strata_redis_script script;
    strata_histogram *lat;
} bench_state;

typedef struct slot {
    bench_state *s;
    int client;
    uint64_t t0;
} slot;

static void issue(slot *sl);

static void on_done(void *ud, int status, const strata_redis_reply *reply) {
    slot *sl = ud;
    bench_state *s = sl->s;
    (void)reply;
    strata_histogram_record(s->lat, uv_hrtime() - sl->t0);
    s->done++;
    if (status != STRATA_OK) {
        if (s->errors++ == 0)
            s->first_error = status;
    }
    if (s->to_issue > 0)
        issue(sl);
    else
        strata_free(sl);
}

static void issue(slot *sl) {
    bench_state *s = sl->s;
    strata_redis *r = s->clients[sl->client];
    s->to_issue--;
    sl->t0 = uv_hrtime();
    int rc;
    const char *k = s->key;
    switch (s->cmd) {
    case 0: {
        const char *argv[] = {"GET", k};
        rc = strata_redis_command_argv(r, NULL, on_done, sl, 2, argv, NULL);
        break;
    }
    case 1: {
        const char *argv[] = {"SET", k, s->value};
        size_t lens[] = {3, strlen(k), s->value_len};
        rc = strata_redis_command_argv(r, NULL, on_done, sl, 3, argv, lens);
        break;
    }
    default: {
        const char *keys[] = {k};
        rc = strata_redis_evalsha(r, NULL, &s->script, on_done, sl, 1, keys, NULL, 0, NULL, NULL);
        break;
    }
    }
    if (rc < 0) {
        s->done++;
        if (s->errors++ == 0)
            s->first_error = rc;
        strata_free(sl);
    }
}

static int run(strata_bench *b) {
    bench_state s = {0};
    s.b = b;
    s.nclients = (int)strata_bench_opt_int(b, "conns");
    int pipeline = (int)strata_bench_opt_int(b, "pipeline");
    int64_t requests = strata_bench_opt_int(b, "requests");
    s.cmd = (int)strata_bench_opt_int(b, "command");
    s.key = strata_bench_opt_str(b, "key");
    s.value_len = (size_t)strata_bench_opt_int(b, "value_size");
    const char *url = strata_bench_opt_str(b, "url");
    static const char *const cmd_names[] = {"GET", "SET", "EVALSHA"};

    s.value = strata_malloc(s.value_len + 1);
    s.clients = strata_calloc((size_t)s.nclients, sizeof(*s.clients));
    s.lat = strata_histogram_create(STRATA_HIST_NS);
    if (!s.value || !s.clients || !s.lat) {
        strata_free(s.value);
        strata_free(s.clients);
        strata_histogram_destroy(&s.lat);
        return STRATA_ENOMEM;
    }
    memset(s.value, 'x', s.value_len);
    s.value[s.value_len] = '\0';
    strata_redis_script_init(&s.script, "bench_get.lua", script_src, sizeof(script_src) - 1);

    uv_loop_t loop;
    uv_loop_init(&loop);
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.command_timeout_ms = (uint32_t)strata_bench_opt_int(b, "timeout");
    o.max_queued = (uint32_t)pipeline + 16;
    int rc = STRATA_OK;
    strata_buf err = STRATA_BUF_INIT;
    for (int i = 0; i < s.nclients && rc == STRATA_OK; i++)
        rc = strata_redis_create(&s.clients[i], &loop, url, &o, &err);
    if (rc != STRATA_OK) {
        strata_bench_fail(b, "redis client: %s", err.data ? err.data : strata_strerror(rc));
        goto out;
    }
    /* Warm up: connect every client and load the script (not timed). */
    {
        strata_redis_sync_op *ops = strata_calloc((size_t)s.nclients, sizeof(*ops));
        if (!ops) {
            rc = STRATA_ENOMEM;
            goto out;
        }
        for (int i = 0; i < s.nclients; i++) {
            const char *argv[] = {"SCRIPT", "LOAD", script_src};
            strata_redis_command_argv(s.clients[i], NULL, strata_redis_sync_cb, &ops[i], 3, argv,
                                      NULL);
        }
        for (int i = 0; i < s.nclients; i++) {
            while (!ops[i].done)
                uv_run(&loop, UV_RUN_ONCE);
            if (ops[i].status != STRATA_OK && rc == STRATA_OK)
                rc = ops[i].status;
            strata_redis_reply_free(ops[i].reply);
        }
        strata_free(ops);
        if (rc != STRATA_OK) {
            strata_bench_fail(b, "warm-up against %s: %s", url, strata_strerror(rc));
            goto out;
        }
    }
    s.to_issue = requests;
    uint64_t t0 = strata_bench_now_ns();
    for (int c = 0; c < s.nclients; c++) {
        for (int p = 0; p < pipeline && s.to_issue > 0; p++) {
            slot *sl = strata_malloc(sizeof(*sl));
            if (!sl) {
                rc = STRATA_ENOMEM;
                break;
            }
            sl->s = &s;
            sl->client = c;
            issue(sl);
        }
    }
    uint64_t last = t0;
    while (s.done < requests) {
        uv_run(&loop, UV_RUN_ONCE);
        uint64_t now = strata_bench_now_ns();
        if (now - last > 100000000ull) {
            last = now;
            strata_bench_progress(b, "%lld/%lld calls, %.0f ops/s", (long long)s.done,
                                  (long long)requests, (double)s.done * 1e9 / (double)(now - t0));
        }
    }
    uint64_t el = strata_bench_now_ns() - t0;
    double ops = (double)requests * 1e9 / (double)el;
    strata_bench_table_header(b, "command|conns|pipeline|requests|ops/s|p50 us|p99 us|errors");
    strata_bench_table_row(
        b, "%s|%d|%d|%lld|%.0f|%.1f|%.1f|%lld", cmd_names[s.cmd], s.nclients, pipeline,
        (long long)requests, ops, (double)strata_histogram_quantile(s.lat, 0.5) / 1000.0,
        (double)strata_histogram_quantile(s.lat, 0.99) / 1000.0, (long long)s.errors);
    strata_bench_kv(b, "command", "%s", cmd_names[s.cmd]);
    strata_bench_kv(b, "conns", "%d", s.nclients);
    strata_bench_kv(b, "pipeline", "%d", pipeline);
    strata_bench_kv(b, "requests", "%lld", (long long)requests);
    strata_bench_kv(b, "errors", "%lld", (long long)s.errors);
    strata_bench_kv_latency(b, "", s.lat);
    strata_bench_kv(b, "ops_per_sec", "%.0f", ops);
    if (s.errors > 0)
        strata_bench_fail(b, "%lld calls failed (first: %s)", (long long)s.errors,
                          strata_status_name((int)s.first_error));
out:
    for (int i = 0; i < s.nclients; i++)
        strata_redis_destroy(&s.clients[i]);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    strata_buf_free(&err);
    strata_free(s.clients);
    strata_free(s.value);
    strata_histogram_destroy(&s.lat);
    return rc;
}

const strata_bench_backend strata_bench_redis = {
    "redis",
    "pipelined GET/SET/EVALSHA through the Strata Redis client (compare: bench/redis-compare.sh)",
    opts,
    REDIS_BENCH__COUNT,
    run,
};
