/*
 * l1_replay.c: `strata bench l1-replay`: hit ratio of the L1 cache on a trace.
 *
 *   strata bench l1-replay --trace FILE --format arc|lirs|keys --size N [--policy NAME]
 *                          [--seeds N]
 *   strata bench l1-replay --format synth --trace zipf:S:KEYS:REQUESTS[:SCANPCT] --size N
 *
 * Traces: gzip files are read through `gzip -dc` (popen), plain files
 * directly, so no compression library is linked.  Formats (see
 * shared/traces/README.md): arc = "start count ..." lines expanding to
 * blocks start..start+count-1; lirs = one block number per line (blank
 * lines, '*' markers and CR skipped); keys = one key per line (any text,
 * hashed to 64 bits).  synth generates a Zipf(S) stream over KEYS keys,
 * with SCANPCT % of the requests replaced by one-time sequential scans in
 * runs of 1000 (the "Zipf with scans" mix); seed fixed, so runs repeat.
 * synth also takes recency:D:REQUESTS and reuse:STEP:COUNT:REQUESTS, the
 * recency-heavy streams of the adaptivity target (synth_recency below).
 * --dump FILE writes the generated keys in `keys` format (for the Java
 * harness, which must replay the very same stream).
 *
 * Policies: wtinylfu (the default: the real strata_l1 cache with its
 * adaptive W-TinyLFU, driven through get/set single-threaded), fixed (the same
 * with a fixed 1 % window, i.e. Caffeine 2.6.2's policy), strata-lru (the
 * cache's LRU option), lru (an exact LRU written here), opt (Belady's
 * clairvoyant optimum with bypass), or all (every one, as a table).  The last
 * output line is hit_ratio=NN.NN% for the chosen policy (wtinylfu for all).
 *
 * Seeds: the cache's sketch hash is seeded per cache (strata_l1_config
 * sketch_seed; 0 = random, as Caffeine 2.6.2 seeds each FrequencySketch), so
 * one replay is one draw: on small caches the hit ratio moves by up to a few
 * points between seeds (gli @1000: sd 1.5).  wtinylfu and fixed are therefore
 * replayed with sketch seeds 1..N (--seeds, fixed: the output repeats) and
 * report the MEAN (hit_ratio= is the mean; <policy>_seeds= gives mean, sd,
 * min, max).  strata-lru, lru and opt do not depend on the seed: run once.
 * Default N = 10: a default replay stays quick (P3, 3.9M requests: ~10 s; the
 * LIRS traces well under 1 s), and the standard error of the mean is <= 0.1
 * point on P3, Zipf and OLTP >= 1000 entries; for OLTP, gli and loop (sd up
 * to 2.6 at OLTP @250, gli @1000) bench/l1-compare.sh uses 40 (docs/notes/
 * l1.md D21).
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "bench.h"
#include "strata/alloc.h"
#include "strata/l1.h"
#include "strata/status.h"

#define REPLAY_OPTIONS(X)                                                                    \
    X(trace, STRATA_OPT_STR, NULL, 1, 0, NULL, 0,                                            \
      "trace file (.gz read via gzip -dc) or synth spec")                                    \
    X(format, STRATA_OPT_ENUM, "arc", 0, 0, "arc|lirs|keys|synth", 0, "trace format")        \
    X(size, STRATA_OPT_INT, "1000", 1, 100000000, NULL, 0, "cache size in entries")          \
    X(policy, STRATA_OPT_ENUM, "wtinylfu", 0, 0, "wtinylfu|fixed|strata-lru|lru|opt|all", 0, \
      "replacement policy")                                                                  \
    X(dump, STRATA_OPT_STR, NULL, 0, 0, NULL, 0,                                             \
      "write the key stream to this file (keys format)")                                     \
    X(doorkeeper, STRATA_OPT_BOOL, "false", 0, 0, NULL, 0,                                   \
      "TinyLFU doorkeeper in strata policies")                                               \
    X(seeds, STRATA_OPT_INT, "10", 1, 10000, NULL, 0,                                        \
      "replay wtinylfu/fixed with sketch seeds 1..N and report the mean")

enum { REPLAY_OPTIONS(STRATA_OPT_ENUM_ENTRY) REPLAY__COUNT };
static strata_option opts[] = {REPLAY_OPTIONS(STRATA_OPT_ROW)};

enum { FMT_ARC, FMT_LIRS, FMT_KEYS, FMT_SYNTH };
enum { P_WTINYLFU, P_FIXED, P_SLRU, P_LRU, P_OPT, P_ALL };
static const char *pnames[] = {"wtinylfu", "fixed", "strata-lru", "lru", "opt"};

typedef struct {
    uint64_t *k;
    size_t n, cap;
} keyvec;

static int kv_push(keyvec *v, uint64_t x) {
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 1 << 16;
        uint64_t *p = strata_realloc(v->k, nc * sizeof(*p));
        if (!p)
            return STRATA_ENOMEM;
        v->k = p;
        v->cap = nc;
    }
    v->k[v->n++] = x;
    return STRATA_OK;
}

static int read_trace(const char *path, int fmt, keyvec *v) {
    size_t pl = strlen(path);
    int gz = pl > 3 && strcmp(path + pl - 3, ".gz") == 0;
    FILE *f;
    if (gz) {
        for (const char *p = path; *p; p++) /* it goes through a shell: allow plain paths only */
            if (!(*p == '/' || *p == '.' || *p == '_' || *p == '-' || *p == '+' ||
                  (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
                return STRATA_EINVAL;
        char cmd[4200];
        if (pl > 4000)
            return STRATA_EINVAL;
        snprintf(cmd, sizeof(cmd), "gzip -dc '%s'", path);
        f = popen(cmd, "r");
    } else {
        f = fopen(path, "r");
    }
    if (!f)
        return STRATA_ENOTFOUND;
    char line[4096];
    int rc = STRATA_OK;
    while (rc == STRATA_OK && fgets(line, sizeof(line), f)) {
        size_t len = strcspn(line, "\r\n");
        line[len] = 0;
        if (fmt == FMT_ARC) {
            unsigned long long start, count;
            if (sscanf(line, "%llu %llu", &start, &count) != 2)
                continue;
            for (unsigned long long i = 0; i < count && rc == STRATA_OK; i++)
                rc = kv_push(v, start + i);
        } else if (fmt == FMT_LIRS) {
            if (len == 0 || line[0] == '*')
                continue;
            char *end;
            unsigned long long x = strtoull(line, &end, 10);
            if (end == line)
                continue;
            rc = kv_push(v, x);
        } else {
            if (len == 0)
                continue;
            rc = kv_push(v, XXH3_64bits(line, len));
        }
    }
    int st = gz ? pclose(f) : fclose(f);
    if (rc == STRATA_OK && st != 0)
        rc = STRATA_EIO;
    return rc;
}

static uint64_t rng_state = 0x2545F4914F6CDD1DULL;
static double urand(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return (double)(x >> 11) / 9007199254740992.0;
}

/* Recency-heavy streams (the adaptivity target: docs/notes/l1.md D16).
 *   recency:D:REQUESTS     half the requests are new keys, the other half
 *                          re-read one of the last D new keys, uniformly
 *                          (reuse distances spread from 1 to ~2D requests)
 *   reuse:STEP:COUNT:REQUESTS  new key t, then keys t-STEP, t-2 STEP, ...,
 *                          t-COUNT x STEP: every key is read COUNT+1 times,
 *                          at fixed distances (LRU needs (COUNT+1) x STEP
 *                          entries, and a window smaller than that gains little)
 * Deterministic (fixed seeds). */
static int synth_recency(const char *spec, keyvec *v) {
    unsigned long long a, b, c = 0;
    int rc = STRATA_OK;
    if (sscanf(spec, "recency:%llu:%llu", &a, &b) == 2) {
        if (a == 0 || a > 100000000ULL || b > 1000000000ULL)
            return STRATA_EINVAL;
        uint32_t x = 2463534242u;
        uint64_t next = 0;
        for (unsigned long long i = 0; i < b && rc == STRATA_OK; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            uint64_t key;
            if (next > 0 && (x & 1))
                key = next - 1 - (x >> 1) % (next < a ? next : a);
            else
                key = next++;
            rc = kv_push(v, key);
        }
        return rc;
    }
    if (sscanf(spec, "reuse:%llu:%llu:%llu", &a, &b, &c) == 3) {
        if (a == 0 || b == 0 || b > 1000 || c > 1000000000ULL)
            return STRATA_EINVAL;
        for (uint64_t t = 0; v->n < c && rc == STRATA_OK; t++)
            for (uint64_t j = 0; j <= b && v->n < c && rc == STRATA_OK; j++)
                if (t >= j * a)
                    rc = kv_push(v, t - j * a);
        return rc;
    }
    return STRATA_EINVAL;
}

static int synth(const char *spec, keyvec *v) {
    if (strncmp(spec, "recency:", 8) == 0 || strncmp(spec, "reuse:", 6) == 0)
        return synth_recency(spec, v);
    double s;
    unsigned long long nkeys, nreq, scanpct = 0;
    int n = sscanf(spec, "zipf:%lf:%llu:%llu:%llu", &s, &nkeys, &nreq, &scanpct);
    if (n < 3 || nkeys == 0 || nkeys > 100000000ULL || nreq > 1000000000ULL || scanpct > 100 ||
        s < 0 || s > 5)
        return STRATA_EINVAL;
    double *cdf = strata_malloc(nkeys * sizeof(double));
    if (!cdf)
        return STRATA_ENOMEM;
    double sum = 0;
    for (unsigned long long i = 0; i < nkeys; i++)
        cdf[i] = (sum += 1.0 / pow((double)(i + 1), s));
    rng_state = 0x2545F4914F6CDD1DULL;
    uint64_t scan_next = 1ULL << 40;
    int rc = STRATA_OK;
    for (unsigned long long r = 0; r < nreq && rc == STRATA_OK;) {
        /* a run of 1000 starts with p = pct / (1000 (100 - pct)): scans are pct % of requests */
        if (scanpct && scanpct < 100 &&
            urand() < (double)scanpct / (1000.0 * (double)(100 - scanpct))) {
            for (int j = 0; j < 1000 && r < nreq && rc == STRATA_OK; j++, r++)
                rc = kv_push(v, scan_next++);
            continue;
        }
        double u = urand() * sum;
        size_t lo = 0, hi = nkeys - 1;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        /* scatter ranks so that popularity does not follow key order */
        rc = kv_push(v, XXH3_64bits(&lo, sizeof(lo)) >> 1);
        r++;
    }
    strata_free(cdf);
    return rc;
}

/* ---- a small open-addressing map uint64 -> int64, for the exact policies --- */

typedef struct {
    uint64_t *keys;
    int64_t *vals;
    uint8_t *used;
    size_t cap;
} u64map;

static int map_init(u64map *m, size_t n) {
    m->cap = 16;
    while (m->cap < n * 2)
        m->cap <<= 1;
    m->keys = strata_calloc(m->cap, sizeof(uint64_t));
    m->vals = strata_calloc(m->cap, sizeof(int64_t));
    m->used = strata_calloc(m->cap, 1);
    return m->keys && m->vals && m->used ? STRATA_OK : STRATA_ENOMEM;
}
static void map_free(u64map *m) {
    strata_free(m->keys);
    strata_free(m->vals);
    strata_free(m->used);
}
static size_t map_find(const u64map *m, uint64_t k) { /* slot of k or of the empty slot for it */
    size_t i = (size_t)(XXH3_64bits(&k, 8) & (m->cap - 1));
    while (m->used[i] == 1 && m->keys[i] != k)
        i = (i + 1) & (m->cap - 1);
    return i;
}
/* deletion with backward shift keeps probing exact */
static void map_del(u64map *m, size_t i) {
    m->used[i] = 0;
    size_t j = i;
    for (;;) {
        j = (j + 1) & (m->cap - 1);
        if (!m->used[j])
            return;
        size_t h = (size_t)(XXH3_64bits(&m->keys[j], 8) & (m->cap - 1));
        if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            m->used[i] = 1;
            m->used[j] = 0;
            i = j;
        }
    }
}

/* Exact LRU: map key -> node, nodes in an array-backed doubly linked list. */
static int run_lru(const keyvec *v, size_t size, uint64_t *hits) {
    u64map m;
    int64_t *prev = strata_malloc((size + 1) * sizeof(int64_t));
    int64_t *next = strata_malloc((size + 1) * sizeof(int64_t));
    uint64_t *nk = strata_malloc((size + 1) * sizeof(uint64_t));
    int rc = map_init(&m, size + 1);
    if (!prev || !next || !nk || rc < 0) {
        rc = STRATA_ENOMEM;
        goto out;
    }
    /* node 0 = sentinel; next = towards LRU... here: next[0] = MRU end, prev[0] = LRU end */
    prev[0] = next[0] = 0;
    size_t used = 0;
    *hits = 0;
    for (size_t i = 0; i < v->n; i++) {
        uint64_t k = v->k[i];
        size_t s = map_find(&m, k);
        int64_t node;
        if (m.used[s]) {
            (*hits)++;
            node = m.vals[s];
            next[prev[node]] = next[node];
            prev[next[node]] = prev[node];
        } else {
            if (used < size) {
                node = (int64_t)++used;
            } else {
                node = prev[0]; /* LRU */
                next[prev[node]] = next[node];
                prev[next[node]] = prev[node];
                map_del(&m, map_find(&m, nk[node]));
                s = map_find(&m, k);
            }
            nk[node] = k;
            m.used[s] = 1;
            m.keys[s] = k;
            m.vals[s] = node;
        }
        next[node] = next[0];
        prev[node] = 0;
        prev[next[0]] = node;
        next[0] = node;
    }
out:
    map_free(&m);
    strata_free(prev);
    strata_free(next);
    strata_free(nk);
    return rc;
}

/* Belady's OPT with bypass: evict (or do not admit) whichever is next used farthest away. */
typedef struct {
    int64_t next;
    uint64_t key;
} heapent;

static void heap_push(heapent *h, size_t *n, heapent x) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].next >= x.next)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}
static heapent heap_pop(heapent *h, size_t *n) {
    heapent top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, b = i;
        int64_t bv = x.next;
        if (l < *n && h[l].next > bv)
            b = l, bv = h[l].next;
        if (r < *n && h[r].next > bv)
            b = r;
        if (b == i)
            break;
        h[i] = h[b];
        i = b;
    }
    if (*n)
        h[i] = x;
    return top;
}

static int run_opt(const keyvec *v, size_t size, uint64_t *hits) {
    int64_t *nextuse = strata_malloc(v->n * sizeof(int64_t) + 1);
    heapent *heap = strata_malloc((v->n + 1) * sizeof(heapent));
    u64map m, cache;
    int rc = map_init(&m, v->n + 16);
    int rc2 = map_init(&cache, size + 1);
    if (!nextuse || !heap || rc < 0 || rc2 < 0) {
        rc = STRATA_ENOMEM;
        goto out;
    }
    for (size_t i = v->n; i-- > 0;) {
        size_t s = map_find(&m, v->k[i]);
        if (!m.used[s]) {
            m.used[s] = 1;
            m.keys[s] = v->k[i];
            nextuse[i] = INT64_MAX;
        } else {
            nextuse[i] = m.vals[s];
        }
        m.vals[s] = (int64_t)i;
    }
    size_t hn = 0, in = 0;
    *hits = 0;
    for (size_t i = 0; i < v->n; i++) {
        uint64_t k = v->k[i];
        size_t s = map_find(&cache, k);
        if (cache.used[s]) {
            (*hits)++;
            cache.vals[s] = nextuse[i];
            heap_push(heap, &hn, (heapent){nextuse[i], k});
            continue;
        }
        if (nextuse[i] == INT64_MAX)
            continue; /* never used again: bypass */
        if (in == size) {
            /* farthest live entry (skip heap entries made stale by later hits) */
            heapent top;
            for (;;) {
                top = heap[0];
                size_t t = map_find(&cache, top.key);
                if (cache.used[t] && cache.vals[t] == top.next)
                    break;
                heap_pop(heap, &hn);
            }
            if (top.next < nextuse[i])
                continue; /* bypass: the newcomer is needed later than everything cached */
            heap_pop(heap, &hn);
            map_del(&cache, map_find(&cache, top.key));
            in--;
            s = map_find(&cache, k);
        }
        cache.used[s] = 1;
        cache.keys[s] = k;
        cache.vals[s] = nextuse[i];
        heap_push(heap, &hn, (heapent){nextuse[i], k});
        in++;
    }
    rc = STRATA_OK;
out:
    map_free(&m);
    map_free(&cache);
    strata_free(nextuse);
    strata_free(heap);
    return rc;
}

static int run_strata(const keyvec *v, size_t size, strata_l1_policy pol, int dk, uint64_t seed,
                      uint64_t *hits, uint64_t *window) {
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.doorkeeper = dk;
    cfg.sketch_seed = seed;
    cfg.capacity = size;
    cfg.policy = pol;
    strata_l1 *c;
    int rc = strata_l1_create(&cfg, &c);
    if (rc < 0)
        return rc;
    *hits = 0;
    for (size_t i = 0; i < v->n; i++) {
        uint64_t k = v->k[i];
        if (strata_l1_get_copy(c, &k, sizeof(k), NULL, 0, NULL) >= 0) {
            (*hits)++;
        } else if ((rc = strata_l1_set(c, &k, sizeof(k), NULL, 0, NULL)) < 0) {
            break;
        }
    }
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    *window = st.window_max;
    strata_l1_destroy(&c);
    return rc < 0 ? rc : STRATA_OK;
}

static int run(strata_bench *b) {
    const char *trace = strata_bench_opt_str(b, "trace");
    int fmt = (int)strata_bench_opt_int(b, "format");
    size_t size = (size_t)strata_bench_opt_int(b, "size");
    int pol = (int)strata_bench_opt_int(b, "policy");
    const char *dump = strata_bench_opt_str(b, "dump");
    if (!trace || !*trace)
        return STRATA_EINVAL;
    keyvec v = {0};
    int rc = fmt == FMT_SYNTH ? synth(trace, &v) : read_trace(trace, fmt, &v);
    if (rc < 0 || v.n == 0) {
        strata_free(v.k);
        return rc < 0 ? rc : STRATA_EINVAL;
    }
    if (dump && *dump) {
        FILE *f = fopen(dump, "w");
        if (!f) {
            strata_free(v.k);
            return STRATA_EIO;
        }
        for (size_t i = 0; i < v.n; i++)
            fprintf(f, "%llu\n", (unsigned long long)v.k[i]);
        if (fclose(f) != 0)
            rc = STRATA_EIO;
    }
    /* hits and window: means over the seeds for wtinylfu/fixed; secs: all seeds together */
    strata_bench_table_header(b, "policy|size|requests|hits|hit_ratio|window|seeds|secs");
    double chosen = -1;
    int want = pol == P_ALL ? P_WTINYLFU : pol;
    uint64_t nseeds = (uint64_t)strata_bench_opt_int(b, "seeds");
    char seedline[P_ALL][160] = {{0}};
    for (int p = 0; p < P_ALL && rc == STRATA_OK; p++) {
        if (pol != P_ALL && p != pol)
            continue;
        bool seeded = p == P_WTINYLFU || p == P_FIXED;
        uint64_t runs = seeded ? nseeds : 1;
        double sum = 0, sumsq = 0, lo = 101, hi = -1, hsum = 0, wsum = 0;
        uint64_t t0 = strata_bench_now_ns();
        for (uint64_t seed = 1; seed <= runs && rc == STRATA_OK; seed++) {
            uint64_t hits = 0, window = 0;
            if (p == P_LRU)
                rc = run_lru(&v, size, &hits);
            else if (p == P_OPT)
                rc = run_opt(&v, size, &hits);
            else
                rc = run_strata(&v, size,
                                p == P_WTINYLFU ? STRATA_L1_WTINYLFU
                                : p == P_FIXED  ? STRATA_L1_WTINYLFU_FIXED
                                                : STRATA_L1_LRU,
                                (int)strata_bench_opt_int(b, "doorkeeper"), seed, &hits, &window);
            double r = 100.0 * (double)hits / (double)v.n;
            sum += r;
            sumsq += r * r;
            lo = r < lo ? r : lo;
            hi = r > hi ? r : hi;
            hsum += (double)hits;
            wsum += (double)window;
        }
        if (rc < 0)
            break;
        double secs = (double)(strata_bench_now_ns() - t0) / 1e9;
        double ratio = sum / (double)runs;
        double var = runs > 1 ? (sumsq - sum * sum / (double)runs) / (double)(runs - 1) : 0;
        strata_bench_table_row(b, "%s|%zu|%zu|%.0f|%.2f%%|%.0f|%llu|%.2f", pnames[p], size, v.n,
                               hsum / (double)runs, ratio, wsum / (double)runs,
                               (unsigned long long)runs, secs);
        if (seeded)
            snprintf(seedline[p], sizeof seedline[p],
                     "mean=%.2f%% sd=%.2f min=%.2f%% max=%.2f%% seeds=1..%llu", ratio,
                     sqrt(var > 0 ? var : 0), lo, hi, (unsigned long long)runs);
        if (pol == P_ALL)
            strata_bench_kv(b, pnames[p], "%.2f%%", ratio);
        if (p == want)
            chosen = ratio;
    }
    for (int p = 0; p < P_ALL && rc == STRATA_OK; p++)
        if (seedline[p][0])
            strata_bench_kv(b, p == P_WTINYLFU ? "wtinylfu_seeds" : "fixed_seeds", "%s",
                            seedline[p]);
    strata_free(v.k);
    if (rc == STRATA_OK)
        strata_bench_kv(b, "hit_ratio", "%.2f%%", chosen);
    return rc;
}

const strata_bench_backend strata_bench_l1_replay = {
    "l1-replay", "L1 hit ratio on a trace (strata W-TinyLFU vs LRU, Belady's OPT)", opts,
    REPLAY__COUNT, run};
