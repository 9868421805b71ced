/*
 * metrics.c: registry, counters, gauges, log-linear histograms and the
 * Prometheus text exporter (strata/metrics.h).
 *
 * Histogram layout (HdrHistogram's idea with 5 sub-bucket bits, N = 32):
 *
 *   value v < 32          bucket v                      (exact)
 *   value v >= 32         msb = floor(log2 v), s = msb - 5
 *                         bucket 32 + 32*s + ((v >> s) - 32)
 *
 *   so each power-of-two range [2^k, 2^(k+1)) for k >= 5 is split into 32
 *   equal buckets of width 2^(k-5): the relative width is at most 1/32.
 *   Highest bucket (msb 63): 32 + 32*58 + 31 = 1919  ->  1920 buckets.
 *
 * Every bucket edge 2^k is also a bucket boundary, so the cumulative count
 * at le=2^k (what Prometheus gets) is exact.  Recording is two relaxed
 * atomic adds plus min/max updates; nothing allocates.
 *
 * Registry: families (one name, help, type) each hold a list of series
 * (label sets).  Prometheus wants a family's samples together with one HELP
 * and TYPE line, which this layout gives for free.  A mutex guards
 * registration and rendering; handles are stable pointers.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/metrics.h"
#include "strata/status.h"

#define SUB_BITS  5
#define SUB_COUNT (1u << SUB_BITS)
#define NBUCKETS  (SUB_COUNT + SUB_COUNT * (64 - SUB_BITS - 1) + SUB_COUNT)

enum { T_COUNTER, T_GAUGE, T_HIST };

struct strata_counter {
    _Atomic uint64_t v;
};

struct strata_gauge {
    _Atomic int64_t v;
    int64_t (*fn)(void *ctx);
    void *ctx;
};

struct strata_histogram {
    strata_hist_unit unit;
    _Atomic uint64_t count;
    _Atomic uint64_t sum;
    _Atomic uint64_t min; /* UINT64_MAX when empty */
    _Atomic uint64_t max;
    _Atomic uint64_t buckets[NBUCKETS];
};

typedef struct series {
    struct series *next;
    char *labels; /* NULL or "k=\"v\",..." */
    union {
        strata_counter c;
        strata_gauge g;
        strata_histogram *h;
    } u;
} series;

typedef struct family {
    struct family *next;
    char *name;
    char *help;
    int type;
    series *head, *tail;
} family;

struct strata_metrics {
    pthread_mutex_t mu;
    family *head, *tail;
};

/* ---- histograms ------------------------------------------------------- */

static inline unsigned bucket_of(uint64_t v) {
    if (v < SUB_COUNT)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned s = msb - SUB_BITS;
    return SUB_COUNT + SUB_COUNT * s + (unsigned)((v >> s) - SUB_COUNT);
}

static inline uint64_t bucket_low(unsigned b) {
    if (b < SUB_COUNT)
        return b;
    unsigned s = (b - SUB_COUNT) / SUB_COUNT;
    uint64_t sub = (b - SUB_COUNT) % SUB_COUNT;
    return (SUB_COUNT + sub) << s;
}

static inline uint64_t bucket_width(unsigned b) {
    if (b < SUB_COUNT)
        return 1;
    return 1ull << ((b - SUB_COUNT) / SUB_COUNT);
}

static void hist_init(strata_histogram *h, strata_hist_unit unit) {
    memset(h, 0, sizeof *h);
    h->unit = unit;
    atomic_store(&h->min, UINT64_MAX);
}

strata_histogram *strata_histogram_create(strata_hist_unit unit) {
    strata_histogram *h = strata_malloc(sizeof *h);
    if (h)
        hist_init(h, unit);
    return h;
}

void strata_histogram_destroy(strata_histogram **h) {
    if (!h || !*h)
        return;
    strata_free(*h);
    *h = NULL;
}

void strata_histogram_record_n(strata_histogram *h, uint64_t v, uint64_t n) {
    if (!h || !n)
        return;
    atomic_fetch_add_explicit(&h->buckets[bucket_of(v)], n, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, v * n, memory_order_relaxed);
    uint64_t cur = atomic_load_explicit(&h->max, memory_order_relaxed);
    while (v > cur && !atomic_compare_exchange_weak_explicit(&h->max, &cur, v, memory_order_relaxed,
                                                             memory_order_relaxed)) {
    }
    cur = atomic_load_explicit(&h->min, memory_order_relaxed);
    while (v < cur && !atomic_compare_exchange_weak_explicit(&h->min, &cur, v, memory_order_relaxed,
                                                             memory_order_relaxed)) {
    }
}

void strata_histogram_record(strata_histogram *h, uint64_t v) {
    strata_histogram_record_n(h, v, 1);
}

int strata_histogram_merge(strata_histogram *dst, const strata_histogram *src) {
    if (dst->unit != src->unit)
        return STRATA_EINVAL;
    uint64_t n = atomic_load(&((strata_histogram *)src)->count);
    if (!n)
        return STRATA_OK;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        uint64_t c =
            atomic_load_explicit(&((strata_histogram *)src)->buckets[b], memory_order_relaxed);
        if (c)
            atomic_fetch_add_explicit(&dst->buckets[b], c, memory_order_relaxed);
    }
    atomic_fetch_add(&dst->count, n);
    atomic_fetch_add(&dst->sum, atomic_load(&((strata_histogram *)src)->sum));
    uint64_t smax = strata_histogram_max(src), smin = strata_histogram_min(src);
    uint64_t cur = atomic_load(&dst->max);
    while (smax > cur && !atomic_compare_exchange_weak(&dst->max, &cur, smax)) {
    }
    cur = atomic_load(&dst->min);
    while (smin < cur && !atomic_compare_exchange_weak(&dst->min, &cur, smin)) {
    }
    return STRATA_OK;
}

void strata_histogram_reset(strata_histogram *h) { hist_init(h, h->unit); }

uint64_t strata_histogram_count(const strata_histogram *h) {
    return atomic_load(&((strata_histogram *)h)->count);
}

uint64_t strata_histogram_sum(const strata_histogram *h) {
    return atomic_load(&((strata_histogram *)h)->sum);
}

uint64_t strata_histogram_min(const strata_histogram *h) {
    uint64_t m = atomic_load(&((strata_histogram *)h)->min);
    return m == UINT64_MAX ? 0 : m;
}

uint64_t strata_histogram_max(const strata_histogram *h) {
    return atomic_load(&((strata_histogram *)h)->max);
}

double strata_histogram_mean(const strata_histogram *h) {
    uint64_t n = strata_histogram_count(h);
    return n ? (double)strata_histogram_sum(h) / (double)n : 0.0;
}

uint64_t strata_histogram_quantile(const strata_histogram *h, double q) {
    /* Sum the buckets first: concurrent recorders may make `count` disagree. */
    uint64_t total = 0;
    for (unsigned b = 0; b < NBUCKETS; b++)
        total += atomic_load_explicit(&((strata_histogram *)h)->buckets[b], memory_order_relaxed);
    if (!total)
        return 0;
    if (q <= 0)
        return strata_histogram_min(h);
    if (q >= 1)
        return strata_histogram_max(h);
    uint64_t rank = (uint64_t)ceil(q * (double)total);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        seen += atomic_load_explicit(&((strata_histogram *)h)->buckets[b], memory_order_relaxed);
        if (seen >= rank) {
            uint64_t v = bucket_low(b) + bucket_width(b) / 2;
            uint64_t lo = strata_histogram_min(h), hi = strata_histogram_max(h);
            return v < lo ? lo : v > hi ? hi : v;
        }
    }
    return strata_histogram_max(h);
}

/* Cumulative count of values < 2^k (k <= 64). */
static uint64_t hist_count_below_pow2(const strata_histogram *h, unsigned k) {
    uint64_t limit = k >= 64 ? UINT64_MAX : (1ull << k);
    uint64_t n = 0;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        if (k < 64 && bucket_low(b) >= limit)
            break;
        n += atomic_load_explicit(&((strata_histogram *)h)->buckets[b], memory_order_relaxed);
    }
    return n;
}

/* ---- registry ------------------------------------------------------------- */

strata_metrics *strata_metrics_create(void) {
    strata_metrics *m = strata_calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->mu, NULL);
    return m;
}

void strata_metrics_destroy(strata_metrics **mp) {
    if (!mp || !*mp)
        return;
    strata_metrics *m = *mp;
    for (family *f = m->head; f;) {
        family *fn = f->next;
        for (series *s = f->head; s;) {
            series *sn = s->next;
            if (f->type == T_HIST)
                strata_histogram_destroy(&s->u.h);
            strata_free(s->labels);
            strata_free(s);
            s = sn;
        }
        strata_free(f->name);
        strata_free(f->help);
        strata_free(f);
        f = fn;
    }
    pthread_mutex_destroy(&m->mu);
    strata_free(m);
    *mp = NULL;
}

static int valid_name(const char *n) {
    if (!n || !*n)
        return 0;
    for (const char *p = n; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                 (p != n && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

static int same_labels(const char *a, const char *b) {
    if (!a || !*a)
        return !b || !*b;
    return b && strcmp(a, b) == 0;
}

/* Finds or creates the series; returns NULL on error.  Caller holds no lock. */
static series *get_series(strata_metrics *m, const char *name, const char *help, const char *labels,
                          int type, strata_hist_unit unit) {
    if (!m || !valid_name(name))
        return NULL;
    pthread_mutex_lock(&m->mu);
    family *f = m->head;
    while (f && strcmp(f->name, name) != 0)
        f = f->next;
    series *s = NULL;
    if (f) {
        if (f->type != type)
            goto out;
        for (s = f->head; s; s = s->next)
            if (same_labels(s->labels, labels))
                goto out;
    } else {
        f = strata_calloc(1, sizeof *f);
        if (!f)
            goto out;
        f->name = strata_strdup(name);
        f->help = strata_strdup(help ? help : "");
        f->type = type;
        if (!f->name || !f->help) {
            strata_free(f->name);
            strata_free(f->help);
            strata_free(f);
            f = NULL;
            goto out;
        }
        if (m->tail)
            m->tail->next = f;
        else
            m->head = f;
        m->tail = f;
    }
    s = strata_calloc(1, sizeof *s);
    if (!s)
        goto out;
    if (labels && *labels && !(s->labels = strata_strdup(labels))) {
        strata_free(s);
        s = NULL;
        goto out;
    }
    if (type == T_HIST && !(s->u.h = strata_histogram_create(unit))) {
        strata_free(s->labels);
        strata_free(s);
        s = NULL;
        goto out;
    }
    if (f->tail)
        f->tail->next = s;
    else
        f->head = s;
    f->tail = s;
out:
    pthread_mutex_unlock(&m->mu);
    return s;
}

strata_counter *strata_metrics_counter(strata_metrics *m, const char *name, const char *help,
                                       const char *labels) {
    series *s = get_series(m, name, help, labels, T_COUNTER, 0);
    return s ? &s->u.c : NULL;
}

strata_gauge *strata_metrics_gauge(strata_metrics *m, const char *name, const char *help,
                                   const char *labels) {
    series *s = get_series(m, name, help, labels, T_GAUGE, 0);
    return s ? &s->u.g : NULL;
}

strata_gauge *strata_metrics_gauge_fn(strata_metrics *m, const char *name, const char *help,
                                      const char *labels, int64_t (*fn)(void *ctx), void *ctx) {
    series *s = get_series(m, name, help, labels, T_GAUGE, 0);
    if (!s)
        return NULL;
    pthread_mutex_lock(&m->mu);
    s->u.g.fn = fn;
    s->u.g.ctx = ctx;
    pthread_mutex_unlock(&m->mu);
    return &s->u.g;
}

strata_histogram *strata_metrics_histogram(strata_metrics *m, const char *name, const char *help,
                                           const char *labels, strata_hist_unit unit) {
    series *s = get_series(m, name, help, labels, T_HIST, unit);
    return s ? s->u.h : NULL;
}

strata_histogram *strata_metrics_find_histogram(strata_metrics *m, const char *name,
                                                const char *labels) {
    strata_histogram *h = NULL;
    pthread_mutex_lock(&m->mu);
    for (family *f = m->head; f; f = f->next) {
        if (f->type != T_HIST || strcmp(f->name, name) != 0)
            continue;
        for (series *s = f->head; s; s = s->next)
            if (same_labels(s->labels, labels))
                h = s->u.h;
    }
    pthread_mutex_unlock(&m->mu);
    return h;
}

void strata_counter_add(strata_counter *c, uint64_t n) {
    if (c)
        atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

uint64_t strata_counter_get(const strata_counter *c) {
    return c ? atomic_load_explicit(&((strata_counter *)c)->v, memory_order_relaxed) : 0;
}

void strata_gauge_set(strata_gauge *g, int64_t v) {
    if (g)
        atomic_store_explicit(&g->v, v, memory_order_relaxed);
}

void strata_gauge_add(strata_gauge *g, int64_t d) {
    if (g)
        atomic_fetch_add_explicit(&g->v, d, memory_order_relaxed);
}

int64_t strata_gauge_get(const strata_gauge *g) {
    if (!g)
        return 0;
    if (g->fn)
        return g->fn(g->ctx);
    return atomic_load_explicit(&((strata_gauge *)g)->v, memory_order_relaxed);
}

/* ---- exporters ------------------------------------------------------------- */

static void help_escaped(strata_buf *out, const char *s) {
    for (; *s; s++) {
        if (*s == '\\')
            strata_buf_puts(out, "\\\\");
        else if (*s == '\n')
            strata_buf_puts(out, "\\n");
        else
            strata_buf_append(out, s, 1);
    }
}

static void sample_name(strata_buf *out, const char *name, const char *suffix, const char *labels,
                        const char *extra) {
    strata_buf_puts(out, name);
    strata_buf_puts(out, suffix);
    int has = labels && *labels;
    if (has || extra) {
        strata_buf_puts(out, "{");
        if (has)
            strata_buf_puts(out, labels);
        if (has && extra)
            strata_buf_puts(out, ",");
        if (extra)
            strata_buf_puts(out, extra);
        strata_buf_puts(out, "}");
    }
}

static void render_hist(strata_buf *out, const char *name, const char *labels,
                        const strata_histogram *h) {
    unsigned lo = h->unit == STRATA_HIST_NS ? 10 : 0;
    unsigned hi = h->unit == STRATA_HIST_NS ? 36 : 32;
    char le[64];
    for (unsigned k = lo; k <= hi; k++) {
        if (h->unit == STRATA_HIST_NS)
            snprintf(le, sizeof le, "le=\"%.9g\"", (double)(1ull << k) / 1e9);
        else
            snprintf(le, sizeof le, "le=\"%llu\"", 1ull << k);
        sample_name(out, name, "_bucket", labels, le);
        strata_buf_printf(out, " %llu\n", (unsigned long long)hist_count_below_pow2(h, k));
    }
    uint64_t total = hist_count_below_pow2(h, 64);
    sample_name(out, name, "_bucket", labels, "le=\"+Inf\"");
    strata_buf_printf(out, " %llu\n", (unsigned long long)total);
    sample_name(out, name, "_sum", labels, NULL);
    if (h->unit == STRATA_HIST_NS)
        strata_buf_printf(out, " %.9f\n", (double)strata_histogram_sum(h) / 1e9);
    else
        strata_buf_printf(out, " %llu\n", (unsigned long long)strata_histogram_sum(h));
    sample_name(out, name, "_count", labels, NULL);
    strata_buf_printf(out, " %llu\n", (unsigned long long)total);
}

int strata_metrics_render_prometheus(strata_metrics *m, strata_buf *out) {
    static const char *const types[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&m->mu);
    for (family *f = m->head; f; f = f->next) {
        strata_buf_printf(out, "# HELP %s ", f->name);
        help_escaped(out, f->help);
        strata_buf_printf(out, "\n# TYPE %s %s\n", f->name, types[f->type]);
        for (series *s = f->head; s; s = s->next) {
            if (f->type == T_HIST) {
                render_hist(out, f->name, s->labels, s->u.h);
                continue;
            }
            sample_name(out, f->name, "", s->labels, NULL);
            if (f->type == T_COUNTER)
                strata_buf_printf(out, " %llu\n", (unsigned long long)strata_counter_get(&s->u.c));
            else
                strata_buf_printf(out, " %lld\n", (long long)strata_gauge_get(&s->u.g));
        }
    }
    pthread_mutex_unlock(&m->mu);
    return out->oom ? STRATA_ENOMEM : STRATA_OK;
}

int strata_metrics_render_json(strata_metrics *m, strata_buf *out) {
    strata_buf key = STRATA_BUF_INIT;
    int first = 1;
    strata_buf_puts(out, "{");
    pthread_mutex_lock(&m->mu);
    for (family *f = m->head; f; f = f->next) {
        for (series *s = f->head; s; s = s->next) {
            strata_buf_reset(&key);
            strata_buf_puts(&key, f->name);
            if (s->labels)
                strata_buf_printf(&key, "{%s}", s->labels);
            if (!first)
                strata_buf_puts(out, ",");
            first = 0;
            strata_buf_json_str(out, key.data ? key.data : "", key.len);
            strata_buf_puts(out, ":");
            if (f->type == T_COUNTER) {
                strata_buf_printf(out, "%llu", (unsigned long long)strata_counter_get(&s->u.c));
            } else if (f->type == T_GAUGE) {
                strata_buf_printf(out, "%lld", (long long)strata_gauge_get(&s->u.g));
            } else {
                const strata_histogram *h = s->u.h;
                strata_buf_printf(out,
                                  "{\"count\":%llu,\"sum\":%llu,\"p50\":%llu,\"p90\":%llu,"
                                  "\"p99\":%llu,\"p999\":%llu,\"max\":%llu}",
                                  (unsigned long long)strata_histogram_count(h),
                                  (unsigned long long)strata_histogram_sum(h),
                                  (unsigned long long)strata_histogram_quantile(h, 0.5),
                                  (unsigned long long)strata_histogram_quantile(h, 0.9),
                                  (unsigned long long)strata_histogram_quantile(h, 0.99),
                                  (unsigned long long)strata_histogram_quantile(h, 0.999),
                                  (unsigned long long)strata_histogram_max(h));
            }
        }
    }
    pthread_mutex_unlock(&m->mu);
    strata_buf_puts(out, "}");
    strata_buf_free(&key);
    return out->oom ? STRATA_ENOMEM : STRATA_OK;
}
