/*
 * loadgen.c: the `strata bench` load-generator backends (loadgen.h):
 *
 *   flashsale  creates S-stock sales (POST /v1/flashsales, admin) unless
 *              --no-create, then U users x A attempts order
 *              (POST /v1/flashsales/{sku}/orders), spread over --hot-skus skus
 *              with a Zipf skew; every order id a client is given is recorded
 *   redpacket  creates P packets (POST /v1/redpackets), then G grabbers grab
 *              each (POST /v1/redpackets/{id}/grab); every amount is recorded
 *   http       one method/path/body against any server (e.g. vs nginx)
 *
 * Each prints the seed-style table (QPS, P50..P999/max, counts and rates per
 * outcome) and key=value lines; flashsale and redpacket then verify the
 * invariants of docs/notes/scenarios.md against Redis and the database
 * (--verify, default on), each violation through strata_bench_fail.
 *
 * Request g (a global sequence number, see lg_sched_global) is mapped to its
 * work by arithmetic, so threads need no shared queue:
 *   flashsale  user = g mod U, attempt = g div U, sku = zipf(hash(g))
 *   redpacket  packet = g mod P, user = (g div P) mod G
 * Outcomes are recorded in per-thread arrays (the classify callback runs on
 * the request's loop thread) and merged after the run.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "loadgen.h"
#include "strata/alloc.h"
#include "strata/status.h"

#define LG_MAX_THREADS 16
#define LG_MAX_SKUS    64
#define LG_MAX_SHARDS  16 /* the server's bound (POST /v1/flashsales "shards") */

/* ---- options shared by the three backends ------------------------------------------ */

#define LG_COMMON_OPTIONS(X)                                                                    \
    X(url, STRATA_OPT_STR, "http://127.0.0.1:8080", 8, 0, NULL, 0,                              \
      "base URL of the server: http://host[:port][/prefix]")                                    \
    X(connections, STRATA_OPT_INT, "64", 1, 100000, NULL, 0, "keep-alive connections in total") \
    X(threads, STRATA_OPT_INT, "1", 1, 16, NULL, 0, "client loop threads")                      \
    X(pipeline, STRATA_OPT_INT, "1", 1, 256, NULL, 0,                                           \
      "requests in flight per connection (1 = no pipelining)")                                  \
    X(rate, STRATA_OPT_INT, "0", 0, 1000000000, NULL, 0,                                        \
      "open loop: requests/s on a fixed schedule, latency from each intended send time "        \
      "(0 = closed loop)")                                                                      \
    X(duration, STRATA_OPT_DURATION, "0", 0, 86400000, NULL, 0,                                 \
      "stop issuing after this long (0 = when --requests are sent)")                            \
    X(timeout, STRATA_OPT_DURATION, "2s", 1, 600000, NULL, 0, "per-request timeout")

#define LG_SCENARIO_OPTIONS(X)                                                                \
    X(admin_token, STRATA_OPT_STR, "", 0, 0, NULL, STRATA_OPT_SECRET,                         \
      "bearer token for the admin create calls")                                              \
    X(verify, STRATA_OPT_BOOL, "true", 0, 0, NULL, 0,                                         \
      "check the invariants against Redis and the database at the end")                       \
    X(var_dir, STRATA_OPT_STR, "./var", 1, 0, NULL, 0,                                        \
      "the server's var dir (for the default --redis and --db)")                              \
    X(redis, STRATA_OPT_STR, "", 0, 0, NULL, STRATA_OPT_SECRET,                               \
      "Redis URL for verification (redis://, unix://, redis-sentinel://, redis-cluster://); " \
      "empty = unix://<var-dir>/redis/redis.sock")                                            \
    X(db, STRATA_OPT_STR, "", 0, 0, NULL, STRATA_OPT_SECRET,                                  \
      "database URL for verification (sqlite:///path, postgres://...); "                      \
      "empty = sqlite://<var-dir>/strata.db")                                                 \
    X(drain_timeout, STRATA_OPT_DURATION, "30s", 0, 3600000, NULL, 0,                         \
      "how long to wait for the persister to write every acknowledged write")                 \
    X(settle, STRATA_OPT_DURATION, "6s", 0, 600000, NULL, 0,                                  \
      "if some outcomes are unknown (timeouts, 5xx), check only once the records have not "   \
      "changed for this long (a server may still be finishing those requests; default: "      \
      "its 5 s request timeout + 1 s)")                                                       \
    X(user_prefix, STRATA_OPT_STR, "u", 1, 0, NULL, 0, "user ids are <prefix><n>, n = 0..users-1")

#define FS_OPTIONS(X)                                                                        \
    LG_COMMON_OPTIONS(X)                                                                     \
    LG_SCENARIO_OPTIONS(X)                                                                   \
    X(sku, STRATA_OPT_STR, "", 0, 0, NULL, 0,                                                \
      "sku (1..60 of [A-Za-z0-9_.:-]); several hot skus get -0, -1, ...; empty = generated") \
    X(stock, STRATA_OPT_INT, "1000", 1, 1000000000, NULL, 0, "stock of each sale")           \
    X(shards, STRATA_OPT_INT, "1", 1, LG_MAX_SHARDS, NULL, 0,                                \
      "stock shards of each sale (\"shards\":K at creation; 1 = one stock key)")             \
    X(users, STRATA_OPT_INT, "10000", 1, 100000000, NULL, 0, "distinct users")               \
    X(attempts, STRATA_OPT_INT, "1", 1, 1000, NULL, 0, "order attempts per user")            \
    X(hot_skus, STRATA_OPT_INT, "1", 1, LG_MAX_SKUS, NULL, 0, "number of skus on sale")      \
    X(skew, STRATA_OPT_INT, "100", 0, 400, NULL, 0,                                          \
      "Zipf exponent x100 of the sku choice (0 = uniform, 100 = s 1.0)")                     \
    X(requests, STRATA_OPT_INT, "0", 0, 1000000000000LL, NULL, 0,                            \
      "requests in total (0 = users x attempts)")                                            \
    X(no_create, STRATA_OPT_BOOL, "false", 0, 0, NULL, 0,                                    \
      "do not create the sales (they exist; stock then unknown to the checks, which read "   \
      "the shards from the sale unless --shards K > 1 is given)")

#define RP_OPTIONS(X)                                                                          \
    LG_COMMON_OPTIONS(X)                                                                       \
    LG_SCENARIO_OPTIONS(X)                                                                     \
    X(packets, STRATA_OPT_INT, "10", 1, 100000, NULL, 0, "red packets to create")              \
    X(grabbers, STRATA_OPT_INT, "1000", 1, 100000000, NULL, 0, "distinct users grabbing")      \
    X(total_cents, STRATA_OPT_INT, "10000", 1, 100000000000LL, NULL, 0,                        \
      "amount of each packet in cents")                                                        \
    X(count, STRATA_OPT_INT, "100", 1, 1000000, NULL, 0, "shares per packet (<= total-cents)") \
    X(expires_in, STRATA_OPT_INT, "3600", 1, 2592000, NULL, 0, "packet lifetime in seconds")   \
    X(attempts, STRATA_OPT_INT, "1", 1, 1000, NULL, 0, "grabs per (grabber, packet)")          \
    X(requests, STRATA_OPT_INT, "0", 0, 1000000000000LL, NULL, 0,                              \
      "requests in total (0 = packets x grabbers x attempts)")

#define HTTP_OPTIONS(X)                                                                  \
    LG_COMMON_OPTIONS(X)                                                                 \
    X(method, STRATA_OPT_ENUM, "GET", 0, 0, "GET|POST|PUT|DELETE", 0, "request method")  \
    X(path, STRATA_OPT_STR, "/", 1, 0, NULL, 0, "request path (after the URL prefix)")   \
    X(body, STRATA_OPT_STR, "", 0, 0, NULL, 0, "request body (JSON), at most 511 bytes") \
    X(requests, STRATA_OPT_INT, "100000", 0, 1000000000000LL, NULL, 0,                   \
      "requests in total (0 = unlimited: give --duration)")

/* Options are looked up by name (strata_bench_opt_*), so no index enums are declared. */
static strata_option fs_opts[] = {FS_OPTIONS(STRATA_OPT_ROW)};
static strata_option rp_opts[] = {RP_OPTIONS(STRATA_OPT_ROW)};
static strata_option http_opts[] = {HTTP_OPTIONS(STRATA_OPT_ROW)};
#define NOPTS(a) (sizeof(a) / sizeof((a)[0]))

/* ---- per-thread records ---------------------------------------------------------------- */

typedef struct rec {
    uint32_t ent;  /* sku or packet index */
    uint32_t user; /* user index */
    int64_t amount;
    char *order_id; /* owned; flashsale only */
} rec;

typedef struct tlocal {
    rec *recs;
    size_t n, cap;
    bool oom;
    uint32_t *unknown; /* per entity: requests with no definite answer */
    uint8_t *saw_end;  /* per entity: sold_out / gone seen */
} tlocal;

typedef struct scen {
    strata_bench *b;
    int kind; /* 0 flashsale, 1 redpacket, 2 http */
    int threads;
    uint64_t users, attempts, nent;
    char prefix[64];
    char (*ent)[80]; /* sku names or packet ids */
    double cdf[LG_MAX_SKUS];
    tlocal tl[LG_MAX_THREADS];
    const char *method, *path, *body;
} scen;

static void tl_add(tlocal *t, uint32_t ent, uint32_t user, int64_t amount, const char *order_id) {
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 1024;
        rec *r = strata_realloc(t->recs, nc * sizeof *r);
        if (!r) {
            t->oom = true;
            return;
        }
        t->recs = r;
        t->cap = nc;
    }
    char *id = NULL;
    if (order_id && !(id = strata_strdup(order_id))) {
        t->oom = true;
        return;
    }
    t->recs[t->n++] = (rec){ent, user, amount, id};
}

static uint64_t mix64(uint64_t x) { /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Zipf over n skus with exponent s: cdf[i] = sum_{j<=i} 1/(j+1)^s / H. */
static void zipf_cdf(double *cdf, int n, double s) {
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += 1.0 / pow((double)(i + 1), s);
    double acc = 0;
    for (int i = 0; i < n; i++) {
        acc += 1.0 / pow((double)(i + 1), s) / sum;
        cdf[i] = acc;
    }
    cdf[n - 1] = 1.0;
}

static uint32_t fs_sku_of(const scen *s, uint64_t g) {
    if (s->nent == 1)
        return 0;
    double u = (double)(mix64(g) >> 11) / 9007199254740992.0;
    uint32_t i = 0;
    while (i + 1 < s->nent && u >= s->cdf[i])
        i++;
    return i;
}

static void fs_map(const scen *s, uint64_t g, uint32_t *ent, uint32_t *user) {
    *user = (uint32_t)(g % s->users);
    *ent = fs_sku_of(s, g);
}

static void rp_map(const scen *s, uint64_t g, uint32_t *ent, uint32_t *user) {
    *ent = (uint32_t)(g % s->nent);
    *user = (uint32_t)((g / s->nent) % s->users);
}

static bool make_req(void *ctx, uint64_t g, lg_req *r) {
    scen *s = ctx;
    uint32_t ent, user;
    r->method = "POST";
    if (s->kind == 2) {
        r->method = s->method;
        snprintf(r->path, sizeof r->path, "%s", s->path);
        r->body_len = (size_t)snprintf(r->body, sizeof r->body, "%s", s->body);
        return true;
    }
    if (s->kind == 0) {
        fs_map(s, g, &ent, &user);
        snprintf(r->path, sizeof r->path, "/v1/flashsales/%s/orders", s->ent[ent]);
    } else {
        rp_map(s, g, &ent, &user);
        snprintf(r->path, sizeof r->path, "/v1/redpackets/%s/grab", s->ent[ent]);
    }
    r->body_len =
        (size_t)snprintf(r->body, sizeof r->body, "{\"user_id\":\"%s%u\"}", s->prefix, user);
    return true;
}

static void mark_unknown(scen *s, int thread, uint64_t g) {
    uint32_t ent = 0, user;
    if (s->kind == 0)
        fs_map(s, g, &ent, &user);
    else if (s->kind == 1)
        rp_map(s, g, &ent, &user);
    else
        return;
    s->tl[thread].unknown[ent]++;
}

static lg_outcome status_outcome(int st) {
    switch (st) {
    case 429: return LG_REJECTED;
    case 403: return LG_WINDOW;
    case 404: return LG_NOT_FOUND;
    case 400: return LG_BAD_REQUEST;
    case 410: return LG_GONE;
    default: return st >= 500 ? LG_HTTP_5XX : LG_OTHER;
    }
}

static lg_outcome classify(void *ctx, int thread, uint64_t g, const lg_http_resp *r) {
    scen *s = ctx;
    tlocal *t = &s->tl[thread];
    if (s->kind == 2) {
        if (r->status >= 200 && r->status < 400)
            return LG_OK;
        return status_outcome(r->status);
    }
    uint32_t ent, user;
    lg_outcome o;
    if (s->kind == 0) {
        fs_map(s, g, &ent, &user);
        char id[160], code[64];
        if (r->status == 201) {
            if (lg_json_str(r->body, r->body_len, "order_id", id, sizeof id)) {
                tl_add(t, ent, user, 0, id);
                return LG_OK;
            }
            o = LG_BAD_RESPONSE;
        } else if (r->status == 409 &&
                   lg_json_str(r->body, r->body_len, "code", code, sizeof code)) {
            if (strcmp(code, "sold_out") == 0) {
                t->saw_end[ent] = 1;
                return LG_SOLD_OUT;
            }
            if (strcmp(code, "already_purchased") == 0) {
                if (lg_json_str(r->body, r->body_len, "order_id", id, sizeof id))
                    tl_add(t, ent, user, 0, id);
                return LG_ALREADY;
            }
            o = LG_OTHER;
        } else
            o = r->status == 409 ? LG_OTHER : status_outcome(r->status);
    } else {
        rp_map(s, g, &ent, &user);
        int64_t amt;
        if (r->status == 200) {
            if (lg_json_int(r->body, r->body_len, "amount_cents", &amt)) {
                tl_add(t, ent, user, amt, NULL);
                return LG_OK;
            }
            o = LG_BAD_RESPONSE;
        } else if (r->status == 410) {
            t->saw_end[ent] = 1;
            return LG_GONE;
        } else
            o = status_outcome(r->status);
    }
    if (lg_outcome_unknown(o))
        t->unknown[ent]++;
    return o;
}

static void failed(void *ctx, int thread, uint64_t g, lg_outcome why) {
    mark_unknown(ctx, thread, g);
}

static void progress(void *ctx, const lg_stats *st, double el) {
    scen *s = ctx;
    uint64_t errs = 0;
    for (int o = 0; o < LG__NOUTCOMES; o++)
        if (lg_outcome_is_error(o))
            errs += st->counts[o];
    strata_bench_progress(
        s->b, "%6.1fs sent=%llu done=%llu qps=%.0f ok=%llu end=%llu 429=%llu err=%llu", el,
        (unsigned long long)st->sent, (unsigned long long)st->completed,
        el > 0 ? (double)st->completed / el : 0.0, (unsigned long long)st->counts[LG_OK],
        (unsigned long long)(st->counts[LG_SOLD_OUT] + st->counts[LG_GONE]),
        (unsigned long long)st->counts[LG_REJECTED], (unsigned long long)errs);
}

/* ---- reporting -------------------------------------------------------------------------- */

static void report(strata_bench *b, const lg_config *cfg, const lg_stats *st) {
    double el = st->elapsed_s > 0 ? st->elapsed_s : 1e-9;
    uint64_t done = st->completed, errs = 0;
    for (int o = 0; o < LG__NOUTCOMES; o++)
        if (lg_outcome_is_error(o))
            errs += st->counts[o];
    double qps = (double)done / el;
    strata_bench_table_header(b, "metric|value|rate");
    strata_bench_table_row(b, "mode|%s|", cfg->rate > 0 ? "open loop" : "closed loop");
    if (cfg->rate > 0)
        strata_bench_table_row(b, "target rate|%.0f/s|", cfg->rate);
    strata_bench_table_row(b, "connections x pipeline|%d x %d|", cfg->connections, cfg->depth);
    strata_bench_table_row(b, "requests|%llu|", (unsigned long long)done);
    strata_bench_table_row(b, "duration|%.2f s|", st->elapsed_s);
    strata_bench_table_row(b, "QPS|%.0f|", qps);
    static const struct {
        const char *n;
        double q;
    } qs[] = {{"P50", .5}, {"P90", .9}, {"P99", .99}, {"P999", .999}, {"max", 1}};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++)
        strata_bench_table_row(b, "%s latency|%.3f ms|", qs[i].n,
                               (double)strata_histogram_quantile(st->lat, qs[i].q) / 1e6);
    for (int o = 0; o < LG__NOUTCOMES; o++)
        if (st->counts[o] || o <= LG_GONE)
            strata_bench_table_row(b, "%s|%llu|%.2f%%", lg_outcome_label(o),
                                   (unsigned long long)st->counts[o],
                                   done ? 100.0 * (double)st->counts[o] / (double)done : 0.0);
    strata_bench_table_row(b, "errors (5xx, timeouts, conn)|%llu|%.2f%%", (unsigned long long)errs,
                           done ? 100.0 * (double)errs / (double)done : 0.0);
    if (st->connect_errors)
        strata_bench_table_row(b, "connect errors|%llu|", (unsigned long long)st->connect_errors);
    if (cfg->rate > 0)
        strata_bench_table_row(b, "sent >1 ms late|%llu|%.2f%%", (unsigned long long)st->late,
                               st->sent ? 100.0 * (double)st->late / (double)st->sent : 0.0);

    strata_bench_kv(b, "mode", "%s", cfg->rate > 0 ? "open" : "closed");
    strata_bench_kv(b, "rate", "%.0f", cfg->rate);
    strata_bench_kv(b, "connections", "%d", cfg->connections);
    strata_bench_kv(b, "pipeline", "%d", cfg->depth);
    strata_bench_kv(b, "requests", "%llu", (unsigned long long)done);
    strata_bench_kv(b, "duration_s", "%.3f", st->elapsed_s);
    strata_bench_kv(b, "qps", "%.0f", qps);
    strata_bench_kv_latency(b, "", st->lat);
    for (int o = 0; o < LG__NOUTCOMES; o++)
        strata_bench_kv(b, lg_outcome_label(o), "%llu", (unsigned long long)st->counts[o]);
    strata_bench_kv(b, "errors", "%llu", (unsigned long long)errs);
    strata_bench_kv(b, "success_rate", "%.4f",
                    done ? (double)st->counts[LG_OK] / (double)done : 0.0);
    strata_bench_kv(b, "error_rate", "%.4f", done ? (double)errs / (double)done : 0.0);
    strata_bench_kv(b, "connect_errors", "%llu", (unsigned long long)st->connect_errors);
    strata_bench_kv(b, "late", "%llu", (unsigned long long)st->late);
}

/* ---- set-up ------------------------------------------------------------------------- */

static bool valid_id(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || strchr("_.:-", s[i])))
            return false;
    return true;
}

static int common_config(strata_bench *b, lg_config *cfg) {
    lg_config_default(cfg);
    strata_buf err = STRATA_BUF_INIT;
    if (lg_url_parse(strata_bench_opt_str(b, "url"), &cfg->url, &err) != STRATA_OK) {
        fprintf(stderr, "strata bench: --url: %s\n", err.data ? err.data : "invalid");
        strata_buf_free(&err);
        return STRATA_EINVAL;
    }
    cfg->threads = (int)strata_bench_opt_int(b, "threads");
    cfg->connections = (int)strata_bench_opt_int(b, "connections");
    if (cfg->connections < cfg->threads)
        cfg->threads = cfg->connections;
    cfg->depth = (int)strata_bench_opt_int(b, "pipeline");
    cfg->rate = (double)strata_bench_opt_int(b, "rate");
    cfg->duration_ms = (uint64_t)strata_bench_opt_int(b, "duration");
    cfg->timeout_ms = (uint64_t)strata_bench_opt_int(b, "timeout");
    cfg->connect_timeout_ms = cfg->timeout_ms > 2000 ? cfg->timeout_ms : 2000;
    cfg->stall_ms = cfg->timeout_ms * 3 > 10000 ? cfg->timeout_ms * 3 : 10000;
    cfg->make = make_req;
    cfg->classify = classify;
    cfg->failed = failed;
    return STRATA_OK;
}

static void scen_free(scen *s) {
    for (int i = 0; i < LG_MAX_THREADS; i++) {
        for (size_t k = 0; k < s->tl[i].n; k++)
            strata_free(s->tl[i].recs[k].order_id);
        strata_free(s->tl[i].recs);
        strata_free(s->tl[i].unknown);
        strata_free(s->tl[i].saw_end);
    }
    strata_free(s->ent);
}

static int scen_alloc(scen *s, uint64_t nent) {
    s->nent = nent;
    s->ent = strata_calloc(nent, sizeof *s->ent);
    if (!s->ent)
        return STRATA_ENOMEM;
    for (int i = 0; i < LG_MAX_THREADS; i++) {
        s->tl[i].unknown = strata_calloc(nent, sizeof *s->tl[i].unknown);
        s->tl[i].saw_end = strata_calloc(nent, 1);
        if (!s->tl[i].unknown || !s->tl[i].saw_end)
            return STRATA_ENOMEM;
    }
    return STRATA_OK;
}

/* Resolves --redis / --db defaults from --var-dir. */
static void verify_urls(strata_bench *b, char *redis, size_t rcap, char *db, size_t dcap) {
    const char *var = strata_bench_opt_str(b, "var_dir");
    char abs[4096];
    if (var[0] != '/' && getcwd(abs, sizeof abs))
        ;
    else
        abs[0] = '\0';
    char base[8192];
    snprintf(base, sizeof base, "%s%s%s", abs, abs[0] ? "/" : "", var);
    const char *r = strata_bench_opt_str(b, "redis"), *d = strata_bench_opt_str(b, "db");
    if (*r)
        snprintf(redis, rcap, "%s", r);
    else
        snprintf(redis, rcap, "unix://%s/redis/redis.sock", base);
    if (*d)
        snprintf(db, dcap, "%s", d);
    else
        snprintf(db, dcap, "sqlite://%s/strata.db", base);
}

static void on_violation(void *ctx, const char *text) { strata_bench_fail(ctx, "%s", text); }

static int rec_cmp(const void *a, const void *b) {
    const rec *x = *(const rec *const *)a, *y = *(const rec *const *)b;
    return x->ent < y->ent ? -1 : x->ent > y->ent;
}

/* Sorted pointers to every record of every thread (by entity). */
static const rec **gather(scen *s, size_t *n) {
    size_t total = 0;
    for (int i = 0; i < s->threads; i++)
        total += s->tl[i].n;
    const rec **all = strata_calloc(total + 1, sizeof *all);
    if (!all)
        return NULL;
    size_t k = 0;
    for (int i = 0; i < s->threads; i++)
        for (size_t j = 0; j < s->tl[i].n; j++)
            all[k++] = &s->tl[i].recs[j];
    qsort(all, total, sizeof *all, rec_cmp);
    *n = total;
    return all;
}

static int run_verify(scen *s, int64_t stock, int64_t shards, int64_t asked, int64_t total_cents,
                      int64_t count) {
    strata_bench *b = s->b;
    char redis[8300], db[8300];
    verify_urls(b, redis, sizeof redis, db, sizeof db);
    strata_buf err = STRATA_BUF_INIT;
    lg_verify *v = NULL;
    int rc = lg_verify_open(&v, redis, db, &err);
    if (rc != STRATA_OK) {
        strata_bench_fail(b, "cannot verify: %s", err.data ? err.data : strata_strerror(rc));
        strata_buf_free(&err);
        return STRATA_OK;
    }
    size_t n = 0;
    const rec **all = gather(s, &n);
    char(*users)[80] = strata_calloc(n + 1, sizeof *users);
    const char **uptr = strata_calloc(n + 1, sizeof *uptr);
    const char **ids = strata_calloc(n + 1, sizeof *ids);
    int64_t *amounts = strata_calloc(n + 1, sizeof *amounts);
    lg_fs_seen *fs = strata_calloc(s->nent, sizeof *fs);
    lg_rp_seen *rp = strata_calloc(s->nent, sizeof *rp);
    bool oom = false;
    for (int i = 0; i < s->threads; i++)
        oom |= s->tl[i].oom;
    if (!all || !users || !uptr || !ids || !amounts || !fs || !rp || oom) {
        strata_bench_fail(b, "cannot verify: out of memory recording outcomes");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(users[i], sizeof users[i], "%s%u", s->prefix, all[i]->user);
        uptr[i] = users[i];
        ids[i] = all[i]->order_id ? all[i]->order_id : "";
        amounts[i] = all[i]->amount;
    }
    size_t pos = 0;
    bool any_unknown = false;
    for (uint64_t e = 0; e < s->nent; e++) {
        size_t start = pos;
        while (pos < n && all[pos]->ent == e)
            pos++;
        uint64_t unknown = 0;
        bool saw = false;
        for (int i = 0; i < s->threads; i++) {
            unknown += s->tl[i].unknown[e];
            any_unknown |= s->tl[i].unknown[e] != 0;
            saw |= s->tl[i].saw_end[e] != 0;
        }
        /* --no-create (stock unknown): earlier runs' buyers are not in what this run saw,
         * so "every buyer was acknowledged here" cannot be required. */
        if (s->kind == 0)
            fs[e] = (lg_fs_seen){s->ent[e],   stock,       uptr + start,
                                 ids + start, pos - start, unknown == 0 && stock >= 0,
                                 saw,         shards,      asked};
        else
            rp[e] = (lg_rp_seen){s->ent[e],       total_cents, count,        uptr + start,
                                 amounts + start, pos - start, unknown == 0, saw};
    }
    int64_t drain = strata_bench_opt_int(b, "drain_timeout");
    if (any_unknown) /* those requests may still be at work in a server */
        lg_verify_set_settle(v, strata_bench_opt_int(b, "settle"));
    uint64_t t0 = strata_bench_now_ns();
    bool drained = s->kind == 0 ? lg_verify_fs_drain(v, fs, s->nent, drain)
                                : lg_verify_rp_drain(v, rp, s->nent, drain);
    strata_bench_kv(b, "drain_ms", "%.0f", (double)(strata_bench_now_ns() - t0) / 1e6);
    if (!drained)
        strata_bench_fail(b, "persister did not drain within %lld ms", (long long)drain);
    int nv = 0;
    for (uint64_t e = 0; e < s->nent; e++)
        nv += s->kind == 0 ? lg_verify_fs(v, &fs[e], on_violation, b)
                           : lg_verify_rp(v, &rp[e], on_violation, b);
    strata_bench_kv(b, "verified", "%s", nv == 0 && drained ? "ok" : "violations");
    strata_bench_kv(b, "violations", "%d", nv + (drained ? 0 : 1));
out:
    strata_free(all);
    strata_free(users);
    strata_free(uptr);
    strata_free(ids);
    strata_free(amounts);
    strata_free(fs);
    strata_free(rp);
    lg_verify_close(&v);
    strata_buf_free(&err);
    return STRATA_OK;
}

static int create_fs(strata_bench *b, const lg_config *cfg, const char *sku, int64_t stock,
                     int64_t shards) {
    char body[256], sh[32] = "";
    if (shards > 1) /* 1 is the default: not sent, so servers without sharding accept it */
        snprintf(sh, sizeof sh, ",\"shards\":%lld", (long long)shards);
    snprintf(body, sizeof body, "{\"sku\":\"%s\",\"stock\":%lld,\"per_user_limit\":1%s}", sku,
             (long long)stock, sh);
    strata_buf resp = STRATA_BUF_INIT, err = STRATA_BUF_INIT;
    int status = 0, rc;
    /* A 503 means the server could not learn the outcome in time (a failover, replicas
     * not yet confirming): creation is idempotent, so retry for a while.  After such a
     * retry, 409 "exists" is our own earlier attempt (the checks read the sale's real
     * parameters from Redis, so a sale made with others would still be reported). */
    bool retried = false;
    for (int attempt = 0;; attempt++) {
        status = 0;
        strata_buf_reset(&resp);
        strata_buf_reset(&err);
        rc = lg_http_call(&cfg->url, "POST", "/v1/flashsales",
                          strata_bench_opt_str(b, "admin_token"), body, (int)cfg->timeout_ms + 3000,
                          &status, &resp, &err);
        if (rc != STRATA_OK || status != 503 || attempt >= 20)
            break;
        retried = true;
        fprintf(stderr, "strata bench flashsale: creating sku %s: HTTP 503, retrying\n", sku);
        struct timespec nap = {0, 250 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    if (rc == STRATA_OK && status == 409 && retried) {
        fprintf(stderr, "strata bench flashsale: sku %s exists after a retry: taken as created\n",
                sku);
        status = 201;
    }
    if (rc == STRATA_OK && status != 201) {
        fprintf(stderr, "strata bench flashsale: creating sku %s: HTTP %d %.200s\n", sku, status,
                resp.data ? resp.data : "");
        rc = status == 409 ? STRATA_EEXIST : status == 401 ? STRATA_EAUTH : STRATA_EPROTO;
    } else if (rc != STRATA_OK)
        fprintf(stderr, "strata bench flashsale: %s\n", err.data ? err.data : strata_strerror(rc));
    strata_buf_free(&resp);
    strata_buf_free(&err);
    return rc;
}

static int create_rp(strata_bench *b, const lg_config *cfg, int64_t total, int64_t count,
                     int64_t expires, char *id_out, size_t cap) {
    char body[256];
    snprintf(body, sizeof body, "{\"total_cents\":%lld,\"count\":%lld,\"expires_in\":%lld}",
             (long long)total, (long long)count, (long long)expires);
    strata_buf resp = STRATA_BUF_INIT, err = STRATA_BUF_INIT;
    int status = 0;
    int rc =
        lg_http_call(&cfg->url, "POST", "/v1/redpackets", strata_bench_opt_str(b, "admin_token"),
                     body, (int)cfg->timeout_ms + 3000, &status, &resp, &err);
    if (rc == STRATA_OK && status != 201) {
        fprintf(stderr, "strata bench redpacket: creating a packet: HTTP %d %.200s\n", status,
                resp.data ? resp.data : "");
        rc = status == 401 ? STRATA_EAUTH : STRATA_EPROTO;
    } else if (rc != STRATA_OK)
        fprintf(stderr, "strata bench redpacket: %s\n", err.data ? err.data : strata_strerror(rc));
    else if (!lg_json_str(resp.data, resp.len, "id", id_out, cap) || !valid_id(id_out)) {
        fprintf(stderr, "strata bench redpacket: create answered without a valid id: %.200s\n",
                resp.data ? resp.data : "");
        rc = STRATA_EPROTO;
    }
    strata_buf_free(&resp);
    strata_buf_free(&err);
    return rc;
}

static int run_scenario(strata_bench *b, int kind) {
    lg_config cfg;
    int rc = common_config(b, &cfg);
    if (rc != STRATA_OK)
        return rc;
    scen *s = strata_calloc(1, sizeof *s);
    if (!s)
        return STRATA_ENOMEM;
    s->b = b;
    s->kind = kind;
    s->threads = cfg.threads;
    int64_t stock = -1, total_cents = -1, count = -1, shards = 0;
    uint64_t planned = 0;
    if (kind != 2) {
        const char *pfx = strata_bench_opt_str(b, "user_prefix");
        if (strlen(pfx) > 40 || !valid_id(pfx)) {
            fprintf(stderr, "strata bench: --user-prefix \"%s\": 1..40 of [A-Za-z0-9_.:-]\n", pfx);
            rc = STRATA_EINVAL;
            goto out;
        }
        snprintf(s->prefix, sizeof s->prefix, "%s", pfx);
    }
    if (kind == 0) {
        s->users = (uint64_t)strata_bench_opt_int(b, "users");
        s->attempts = (uint64_t)strata_bench_opt_int(b, "attempts");
        int hot = (int)strata_bench_opt_int(b, "hot_skus");
        if ((rc = scen_alloc(s, (uint64_t)hot)) != STRATA_OK)
            goto out;
        zipf_cdf(s->cdf, hot, (double)strata_bench_opt_int(b, "skew") / 100.0);
        char base[64];
        const char *sku = strata_bench_opt_str(b, "sku");
        if (*sku)
            snprintf(base, sizeof base, "%.63s", sku);
        else
            snprintf(base, sizeof base, "lg%lx%x", (unsigned long)time(NULL), (unsigned)getpid());
        if (strlen(base) > 60 || !valid_id(base)) {
            fprintf(stderr, "strata bench flashsale: --sku \"%s\": 1..60 of [A-Za-z0-9_.:-]\n",
                    sku);
            rc = STRATA_EINVAL;
            goto out;
        }
        for (int i = 0; i < hot; i++) {
            if (hot == 1)
                snprintf(s->ent[i], sizeof s->ent[i], "%s", base);
            else
                snprintf(s->ent[i], sizeof s->ent[i], "%s-%u", base, (unsigned)i & 63u);
        }
        stock = strata_bench_opt_int(b, "stock");
        shards = strata_bench_opt_int(b, "shards");
        planned = s->users * s->attempts;
        if (!strata_bench_opt_int(b, "no_create")) {
            for (int i = 0; i < hot && rc == STRATA_OK; i++)
                rc = create_fs(b, &cfg, s->ent[i], stock, shards);
            if (rc != STRATA_OK)
                goto out;
        } else {
            stock = -1;
            if (shards == 1) /* not given: the checks follow the sale's meta */
                shards = 0;
        }
    } else if (kind == 1) {
        s->users = (uint64_t)strata_bench_opt_int(b, "grabbers");
        s->attempts = (uint64_t)strata_bench_opt_int(b, "attempts");
        uint64_t np = (uint64_t)strata_bench_opt_int(b, "packets");
        total_cents = strata_bench_opt_int(b, "total_cents");
        count = strata_bench_opt_int(b, "count");
        if (count > total_cents) {
            fprintf(stderr,
                    "strata bench redpacket: --count %lld > --total-cents %lld: every "
                    "share needs at least 1 cent\n",
                    (long long)count, (long long)total_cents);
            rc = STRATA_ERANGE;
            goto out;
        }
        if ((rc = scen_alloc(s, np)) != STRATA_OK)
            goto out;
        for (uint64_t i = 0; i < np && rc == STRATA_OK; i++)
            rc = create_rp(b, &cfg, total_cents, count, strata_bench_opt_int(b, "expires_in"),
                           s->ent[i], sizeof s->ent[i]);
        if (rc != STRATA_OK)
            goto out;
        planned = np * s->users * s->attempts;
    } else {
        static const char *methods[] = {"GET", "POST", "PUT", "DELETE"};
        s->method = methods[strata_bench_opt_int(b, "method") & 3];
        s->path = strata_bench_opt_str(b, "path");
        s->body = strata_bench_opt_str(b, "body");
        if (s->path[0] != '/' || strlen(s->path) >= sizeof(((lg_req *)0)->path) ||
            strpbrk(s->path, " \r\n\t")) {
            fprintf(stderr, "strata bench http: --path must start with '/', hold no spaces and "
                            "be < 512 bytes\n");
            rc = STRATA_EINVAL;
            goto out;
        }
        if (strlen(s->body) >= sizeof(((lg_req *)0)->body)) {
            fprintf(stderr, "strata bench http: --body longer than 511 bytes\n");
            rc = STRATA_EINVAL;
            goto out;
        }
        if ((rc = scen_alloc(s, 1)) != STRATA_OK)
            goto out;
    }
    int64_t req = strata_bench_opt_int(b, "requests");
    cfg.requests = req > 0 ? (uint64_t)req : (cfg.duration_ms ? 0 : planned);
    cfg.ctx = s;
    strata_buf err = STRATA_BUF_INIT;
    if ((rc = lg_config_check(&cfg, &err)) != STRATA_OK) {
        fprintf(stderr, "strata bench: %s\n", err.data ? err.data : "invalid options");
        strata_buf_free(&err);
        goto out;
    }
    lg_stats st;
    rc = lg_run(&cfg, progress, s, &st);
    report(b, &cfg, &st);
    lg_stats_free(&st);
    if (kind == 0 && shards > 1)
        strata_bench_kv(b, "shards", "%lld", (long long)shards);
    if (kind == 0)
        for (uint64_t i = 0; i < s->nent; i++)
            strata_bench_kv(b, "sku", "%s", s->ent[i]);
    /* One sku and every planned request answered 201 / sold_out / already: each of the
     * first min(users, requests) users asked and got an order or was told sold out. */
    int64_t asked = 0;
    if (kind == 0 && stock >= 0 && s->nent == 1 && cfg.requests > 0 &&
        st.counts[LG_OK] + st.counts[LG_SOLD_OUT] + st.counts[LG_ALREADY] == cfg.requests)
        asked = (int64_t)(cfg.requests < s->users ? cfg.requests : s->users);
    if (rc == STRATA_OK && kind != 2 && strata_bench_opt_int(b, "verify"))
        rc = run_verify(s, stock, shards, asked, total_cents, count);
out:
    scen_free(s);
    strata_free(s);
    return rc;
}

static int run_fs(strata_bench *b) { return run_scenario(b, 0); }
static int run_rp(strata_bench *b) { return run_scenario(b, 1); }
static int run_http(strata_bench *b) { return run_scenario(b, 2); }

const strata_bench_backend strata_bench_flashsale = {
    "flashsale",
    "flash sale load (HTTP orders, open or closed loop) + oversell/duplicate/persistence checks",
    fs_opts,
    NOPTS(fs_opts),
    run_fs,
};
const strata_bench_backend strata_bench_redpacket = {
    "redpacket",
    "red-packet grab load (HTTP, open or closed loop) + exact-sum/one-amount-per-user checks",
    rp_opts,
    NOPTS(rp_opts),
    run_rp,
};
const strata_bench_backend strata_bench_http = {
    "http",    "one HTTP request repeated (any server, e.g. nginx), open or closed loop",
    http_opts, NOPTS(http_opts),
    run_http,
};
