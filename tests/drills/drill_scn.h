/*
 * drill_scn.h: what the flash-sale and red-packet drills share
 * (tests/drills/test_drill_{flashsale,redpacket}_*.c).
 *
 * A drill runs real `strata serve` processes on real Redis/PostgreSQL, drives
 * them with client threads that behave like careful users, injects a fault
 * in the middle of the sale, then checks the invariants of
 * docs/notes/scenarios.md against Redis and the database.
 *
 * The client model (dr_run).  Each thread takes fresh users from a shared
 * counter (optionally paced to a fixed rate per thread, latency is not
 * measured here) and asks once per user.  An answer that does not tell the
 * outcome (503, 504, 429, no response, connection refused) puts the user on
 * the thread's retry queue: the user asks again after a short client-side
 * backoff, interleaved with fresh users, until a definitive answer or the
 * run's deadline.  So every user ends with one of: an acknowledged order/grab
 * (201 / 200 repeat=false), "you already have one" (409 already_purchased
 * with its order id / 200 repeat=true), or "none left" (409 sold_out / 410
 * gone).  Two definitive answers that disagree (another order id, another
 * amount, an order and then "sold out") are recorded as conflicts.  Threads never call
 * cmocka asserts (longjmp is not thread-safe); the main thread checks.
 *
 * Everything is static inline so each drill includes what it uses without
 * unused-function warnings.  Waiting is always sh_wait_until with a deadline;
 * the only sleeps are the clients' own pacing and retry backoff.
 */
#ifndef STRATA_DRILL_SCN_H
#define STRATA_DRILL_SCN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness/harness.h"
#include "strata/db.h"
#include "strata/status.h"

/* ---- small helpers ----------------------------------------------------------------------- */

static inline void dr_sleep_ms(unsigned ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Copies the JSON string field `name` of `json` into out; false when absent. */
static inline bool dr_json_str(const char *json, const char *name, char *out, size_t cap) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":\"", name);
    const char *p = json ? strstr(json, needle) : NULL;
    if (!p || cap == 0)
        return false;
    p += strlen(needle);
    size_t n = strcspn(p, "\"");
    if (n >= cap)
        n = cap - 1;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

/* The JSON number field `name`; `dflt` when absent. */
static inline long long dr_json_int(const char *json, const char *name, long long dflt) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":", name);
    const char *p = json ? strstr(json, needle) : NULL;
    return p ? strtoll(p + strlen(needle), NULL, 10) : dflt;
}

/* The sum of every sample of a Prometheus metric from GET /metrics whose line starts with
 * `name` (a bare name matches any labels; "name{label=\"v\"" narrows it); -1 on error. */
static inline double dr_metric(uint16_t port, const char *name) {
    sh_http_resp r;
    if (sh_http(port, "GET", "/metrics", NULL, false, 5000, &r) != 200) {
        sh_http_free(&r);
        return -1;
    }
    double sum = 0;
    size_t n = strlen(name);
    for (const char *line = r.body; line && *line;) {
        const char *eol = strchr(line, '\n');
        if (strncmp(line, name, n) == 0 && line[0] != '#' &&
            (line[n] == ' ' || line[n] == '{' || line[n] == ',' || line[n] == '}')) {
            const char *v = strchr(name, '{') || line[n] == '{' ? strchr(line, '}') : line + n;
            if (v)
                sum += strtod(v + 1, NULL);
        }
        line = eol ? eol + 1 : NULL;
    }
    sh_http_free(&r);
    return sum;
}

/* ---- Redis reads ------------------------------------------------------------------------- */

/* A reply of sh_redis_cmd split at '\n' (arrays) into owned lines. */
typedef struct dr_lines {
    char **v;
    size_t n;
    char *text;
} dr_lines;

static inline void dr_lines_free(dr_lines *l) {
    free(l->v);
    free(l->text);
    memset(l, 0, sizeof *l);
}

/* Splits `text` (taken over) into lines; an empty reply gives none. */
static inline dr_lines dr_lines_of(char *text) {
    dr_lines l = {NULL, 0, text};
    if (!text || !*text)
        return l;
    size_t cap = 1;
    for (const char *p = text; *p; p++)
        cap += *p == '\n';
    l.v = calloc(cap, sizeof *l.v);
    for (char *p = text; p;) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = '\0';
        l.v[l.n++] = p;
        p = nl ? nl + 1 : NULL;
    }
    return l;
}

/* One integer from Redis (GET, HLEN, ...); `dflt` when nil/unreachable. */
static inline long long dr_redis_int(uint16_t port, long long dflt, const char *fmt,
                                     const char *arg) {
    char *v = sh_redis_cmd(port, fmt, arg);
    long long x = v && *v >= '0' && *v <= '9' ? strtoll(v, NULL, 10)
                  : v && *v == '-'            ? strtoll(v, NULL, 10)
                                              : dflt;
    free(v);
    return x;
}

/* Entries of a stream's group delivered but not acknowledged ("pending") and never delivered
 * ("lag"), from XINFO GROUPS; -1 when unknown. */
static inline void dr_stream_group(uint16_t port, const char *stream, long long *pending,
                                   long long *lag) {
    *pending = *lag = -1;
    char *v = sh_redis_cmd(port, "XINFO GROUPS %s", stream);
    dr_lines l = dr_lines_of(v);
    for (size_t i = 0; i + 1 < l.n; i++) {
        if (strcmp(l.v[i], "pending") == 0)
            *pending = strtoll(l.v[i + 1], NULL, 10);
        else if (strcmp(l.v[i], "lag") == 0)
            *lag = strtoll(l.v[i + 1], NULL, 10);
    }
    dr_lines_free(&l);
}

typedef struct dr_stream_wait {
    uint16_t port;
    const char *stream;
    long long pending, lag;
} dr_stream_wait;

static inline bool dr_stream_idle(void *ctx) {
    dr_stream_wait *w = ctx;
    dr_stream_group(w->port, w->stream, &w->pending, &w->lag);
    return w->pending == 0 && w->lag <= 0;
}

/* Waits until the persister's group has nothing pending and nothing undelivered. */
static inline bool dr_wait_stream_idle(uint16_t port, const char *stream, int timeout_ms,
                                       long long *pending, long long *lag) {
    dr_stream_wait w = {port, stream, -1, -1};
    bool ok = sh_wait_until(timeout_ms, 20, dr_stream_idle, &w);
    *pending = w.pending;
    *lag = w.lag;
    return ok;
}

/* "cmdstat_<cmd>:calls=N" from INFO commandstats; 0 when never called, -1 if unreachable. */
static inline long long dr_cmd_calls(uint16_t port, const char *cmd) {
    char *v = sh_redis_cmd(port, "INFO commandstats");
    if (!v)
        return -1;
    char needle[64];
    snprintf(needle, sizeof needle, "cmdstat_%s:calls=", cmd);
    const char *p = strstr(v, needle);
    long long n = p ? strtoll(p + strlen(needle), NULL, 10) : 0;
    free(v);
    return n;
}

/* ---- the database -------------------------------------------------------------------------- */

/* Opens the server's database (sqlite://... or postgres://...) for checks. */
static inline strata_db *dr_db_open(const char *url) {
    strata_db_config cfg;
    strata_db_config_default(&cfg);
    cfg.pool_size = 1;
    strata_db *db = NULL;
    strata_buf err = STRATA_BUF_INIT;
    int rc = strata_db_open_config(&db, url, &cfg, &err);
    if (rc != STRATA_OK)
        fprintf(stderr, "drill: cannot open %s: %s %s\n", url, strata_status_name(rc),
                err.data ? err.data : "");
    strata_buf_free(&err);
    return db;
}

/* Runs a query with one text parameter; *out owns the rows (strata_db_result_free). */
static inline int dr_db_rows(strata_db *db, const char *sql, const char *param,
                             strata_db_result **out) {
    strata_db_conn *c = NULL;
    *out = NULL;
    int rc = strata_db_acquire_timeout(db, 5000, &c);
    if (rc != STRATA_OK)
        return rc;
    strata_db_param p[1] = {strata_db_p_text(param)};
    rc = strata_db_query(c, sql, p, param ? 1 : 0, out, NULL, NULL);
    strata_db_release(&c);
    return rc;
}

/* The first column of the first row as an integer; -1 on error or no row. */
static inline long long dr_db_int(strata_db *db, const char *sql, const char *param) {
    strata_db_result *r = NULL;
    long long v = -1;
    if (dr_db_rows(db, sql, param, &r) == STRATA_OK && strata_db_result_rows(r) > 0)
        v = strata_db_result_int64(r, 0, 0, -1);
    strata_db_result_free(&r);
    return v;
}

typedef struct dr_db_count_wait {
    strata_db *db;
    const char *sql, *param;
    long long want, got;
} dr_db_count_wait;

static inline bool dr_db_count_reached(void *ctx) {
    dr_db_count_wait *w = ctx;
    w->got = dr_db_int(w->db, w->sql, w->param);
    return w->got == w->want;
}

/* ---- the client threads ---------------------------------------------------------------------- */

typedef enum dr_kind { DR_FLASHSALE, DR_REDPACKET } dr_kind;

struct dr_run;
typedef struct dr_targ {
    struct dr_run *run;
    int tid;
} dr_targ;

typedef struct dr_user {
    int asked;         /* requests sent */
    int unknown;       /* answers that did not tell the outcome (503, 504, none) */
    int limited;       /* 429 */
    int done;          /* a definitive answer arrived */
    int acked;         /* 201 / 200 repeat=false: this request recorded it */
    int already;       /* 409 already_purchased / 200 repeat=true */
    int none_left;     /* 409 sold_out / 410 gone */
    int conflicts;     /* definitive answers that disagree */
    int final_checked; /* the end-of-drill repeat agreed */
    int already_first; /* the user's first request answered "already" (it recorded it) */
    int replayed;      /* a later 201 / repeat=false with the same order or amount */
    int limited_first; /* the user's first request answered 429 */
    char order_id[64]; /* flash sale: the user's order */
    long long amount;  /* red packet: the user's share (-1 = none) */
    uint64_t acked_ms; /* when the first ack arrived (sh_now_ms) */
} dr_user;

typedef struct dr_run {
    dr_kind kind;
    char path[160];        /* POST path: /v1/flashsales/SKU/orders, /v1/redpackets/ID/grab */
    char prefix[24];       /* user id prefix */
    _Atomic uint16_t port; /* server asked; the test changes it after a restart */
    dr_user *users;        /* [max_users] */
    int max_users, nthreads;
    int rate_per_thread;  /* fresh users per second per thread; 0 = as fast as answered */
    int http_timeout_ms;  /* per request (above the server's request deadline) */
    uint64_t deadline_ms; /* sh_now_ms() after which threads give up retrying */
    atomic_int next_user; /* fresh users handed out */
    atomic_int stop;      /* no more fresh users */
    atomic_int exhausted; /* a "none left" answer was seen: no more fresh users */
    atomic_int acked, answers, n503, n504, n429, n0, nother, nconflict;
    atomic_int acked_after_fault;
    atomic_int no_retry_after;        /* 503 / 429 answers without Retry-After */
    _Atomic uint64_t fault_ms;        /* set by the test at the fault (0 = none yet) */
    _Atomic uint64_t last_unknown_ms; /* last answer that did not tell the outcome */
    _Atomic int threads_done;
    char unexpected[300]; /* first unexpected answer (written once) */
    atomic_flag unexpected_set;
    pthread_t th[16];
    dr_targ targ[16];
} dr_run;

static inline void dr_run_init(dr_run *r, dr_kind kind, const char *entity, uint16_t port,
                               int max_users, int nthreads, int rate_per_thread,
                               const char *prefix) {
    free(r->users); /* a run left by a failed test (r is zeroed static storage at first) */
    memset(r, 0, sizeof *r);
    r->kind = kind;
    if (kind == DR_FLASHSALE)
        snprintf(r->path, sizeof r->path, "/v1/flashsales/%s/orders", entity);
    else
        snprintf(r->path, sizeof r->path, "/v1/redpackets/%s/grab", entity);
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    atomic_store(&r->port, port);
    r->users = calloc((size_t)max_users, sizeof *r->users);
    for (int i = 0; i < max_users; i++)
        r->users[i].amount = -1;
    r->max_users = max_users;
    r->nthreads = nthreads > 16 ? 16 : nthreads;
    r->rate_per_thread = rate_per_thread;
    r->http_timeout_ms = 20000;
    r->deadline_ms = sh_now_ms() + 60000; /* a drill's sale takes seconds */
    atomic_flag_clear(&r->unexpected_set);
}

static inline void dr_user_id(const dr_run *r, int i, char *out, size_t cap) {
    snprintf(out, cap, "%s%d", r->prefix, i);
}

static inline void dr_note_unexpected(dr_run *r, int status, const char *body) {
    atomic_fetch_add(&r->nother, 1);
    if (!atomic_flag_test_and_set(&r->unexpected_set))
        snprintf(r->unexpected, sizeof r->unexpected, "HTTP %d: %.240s", status,
                 body ? body : "(none)");
}

static inline void dr_conflict(dr_run *r, dr_user *u) {
    u->conflicts++;
    atomic_fetch_add(&r->nconflict, 1);
}

/* Applies one answer to the user's record; true when it was definitive. */
static inline bool dr_apply(dr_run *r, dr_user *u, int status, const char *body) {
    atomic_fetch_add(&r->answers, 1);
    if (status == 0 || status == 503 || status == 504 || status == 429) {
        if (status == 429) {
            if (u->asked == 1)
                u->limited_first = 1; /* the server charged its own retry to the user */
            u->limited++;
            atomic_fetch_add(&r->n429, 1);
        } else {
            u->unknown++;
            atomic_fetch_add(status == 503 ? &r->n503 : status == 504 ? &r->n504 : &r->n0, 1);
            atomic_store(&r->last_unknown_ms, sh_now_ms());
        }
        return false;
    }
    char oid[64] = "";
    bool ack = false;
    if (r->kind == DR_FLASHSALE) {
        if (status == 201 && dr_json_str(body, "order_id", oid, sizeof oid)) {
            if (u->order_id[0] && strcmp(u->order_id, oid) != 0)
                dr_conflict(r, u); /* a second order for one user */
            else if (u->order_id[0])
                u->replayed++; /* the same order again: an idempotent replay, not a second one */
            ack = !u->acked;
            u->acked = 1;
            snprintf(u->order_id, sizeof u->order_id, "%s", oid);
        } else if (status == 409 && strstr(body, "already_purchased") &&
                   dr_json_str(body, "order_id", oid, sizeof oid)) {
            if (u->order_id[0] && strcmp(u->order_id, oid) != 0)
                dr_conflict(r, u);
            if (!u->order_id[0] && u->asked == 1)
                u->already_first = 1; /* this very request recorded it: the API says 201 */
            u->already = 1;
            snprintf(u->order_id, sizeof u->order_id, "%s", oid);
        } else if (status == 409 && strstr(body, "\"sold_out\"")) {
            if (u->order_id[0])
                dr_conflict(r, u); /* told of an order, then told none */
            u->none_left = 1;
            atomic_store(&r->exhausted, 1);
        } else {
            dr_note_unexpected(r, status, body);
        }
    } else {
        if (status == 200 && strstr(body, "\"amount_cents\":")) {
            long long amount = dr_json_int(body, "amount_cents", -1);
            bool repeat = strstr(body, "\"repeat\":true") != NULL;
            if (u->amount >= 0 && u->amount != amount)
                dr_conflict(r, u); /* two amounts for one user */
            else if (u->amount >= 0 && !repeat)
                u->replayed++;
            if (u->amount < 0 && u->asked == 1 && repeat)
                u->already_first = 1; /* "repeat" on the user's first request */
            if (!repeat) {
                ack = !u->acked;
                u->acked = 1;
            } else {
                u->already = 1;
            }
            u->amount = amount;
        } else if (status == 410) {
            if (u->amount >= 0)
                dr_conflict(r, u);
            u->none_left = 1;
            atomic_store(&r->exhausted, 1);
        } else {
            dr_note_unexpected(r, status, body);
        }
    }
    if (ack) {
        uint64_t now = sh_now_ms();
        u->acked_ms = now;
        atomic_fetch_add(&r->acked, 1);
        uint64_t fault = atomic_load(&r->fault_ms);
        if (fault && now > fault)
            atomic_fetch_add(&r->acked_after_fault, 1);
    }
    u->done = 1;
    return true;
}

/* One request for user i; applies the answer. */
static inline bool dr_ask(dr_run *r, int i, int *status) {
    char uid[48], body[96];
    dr_user_id(r, i, uid, sizeof uid);
    snprintf(body, sizeof body, "{\"user_id\":\"%s\"}", uid);
    dr_user *u = &r->users[i];
    u->asked++;
    sh_http_resp resp;
    int st =
        sh_http(atomic_load(&r->port), "POST", r->path, body, false, r->http_timeout_ms, &resp);
    if ((st == 503 || st == 429) && !sh_http_header(&resp, "Retry-After")[0])
        atomic_fetch_add(&r->no_retry_after, 1);
    bool done = dr_apply(r, u, st, resp.body ? resp.body : "");
    sh_http_free(&resp);
    *status = st;
    return done;
}

typedef struct dr_retry {
    int user;
    uint64_t due_ms;
} dr_retry;

static inline void *dr_thread(void *arg) {
    dr_run *r = ((dr_targ *)arg)->run;
    int cap = r->max_users, head = 0, tail = 0, queued = 0;
    dr_retry *q = calloc((size_t)cap, sizeof *q); /* ring: at most one entry per user */
    uint64_t start = sh_now_ms();
    long long fresh_sent = 0;
    int st = 0;
    for (;;) {
        uint64_t now = sh_now_ms();
        if (now >= r->deadline_ms)
            break;
        if (queued > 0 && q[head].due_ms <= now) { /* a user asks again */
            dr_retry e = q[head];
            head = (head + 1) % cap;
            queued--;
            if (!dr_ask(r, e.user, &st)) {
                q[tail] = (dr_retry){e.user, sh_now_ms() + 40};
                tail = (tail + 1) % cap;
                queued++;
                if (st == 0)
                    dr_sleep_ms(10); /* no server: slow down instead of spinning */
            }
            continue;
        }
        bool fresh_ok = !atomic_load(&r->stop) && !atomic_load(&r->exhausted);
        if (fresh_ok && r->rate_per_thread > 0) {
            uint64_t due = start + (uint64_t)(fresh_sent * 1000 / r->rate_per_thread);
            if (due > now) { /* pacing: wait for the next arrival or a due retry */
                uint64_t until = queued > 0 && q[head].due_ms < due ? q[head].due_ms : due;
                dr_sleep_ms((unsigned)(until - now < 50 ? until - now : 50));
                continue;
            }
        }
        int i = fresh_ok ? atomic_fetch_add(&r->next_user, 1) : r->max_users;
        if (i < r->max_users) {
            fresh_sent++;
            if (!dr_ask(r, i, &st)) {
                q[tail] = (dr_retry){i, sh_now_ms() + 40};
                tail = (tail + 1) % cap;
                queued++;
                if (st == 0)
                    dr_sleep_ms(10);
            }
            continue;
        }
        if (fresh_ok)
            atomic_store(&r->stop, 1); /* every user handed out */
        if (queued == 0)
            break;
        uint64_t wait = q[head].due_ms > now ? q[head].due_ms - now : 0;
        dr_sleep_ms((unsigned)(wait > 50 ? 50 : wait));
    }
    free(q);
    atomic_fetch_add(&r->threads_done, 1);
    return NULL;
}

static inline void dr_run_start(dr_run *r) {
    for (int t = 0; t < r->nthreads; t++) {
        r->targ[t] = (dr_targ){r, t};
        pthread_create(&r->th[t], NULL, dr_thread, &r->targ[t]);
    }
}

static inline void dr_run_join(dr_run *r) {
    for (int t = 0; t < r->nthreads; t++)
        pthread_join(r->th[t], NULL);
}

static inline void dr_run_free(dr_run *r) {
    free(r->users);
    r->users = NULL;
}

static inline bool dr_acked_at_least(void *ctx) {
    dr_run *r = ((void **)ctx)[0];
    int want = *(int *)((void **)ctx)[1];
    return atomic_load(&r->acked) >= want || atomic_load(&r->threads_done) == r->nthreads;
}

/* Waits (deadline) until `want` acknowledgements arrived; false on timeout or if the
 * clients finished first. */
static inline bool dr_wait_acked(dr_run *r, int want, int timeout_ms) {
    void *ctx[2] = {r, &want};
    return sh_wait_until(timeout_ms, 5, dr_acked_at_least, ctx) && atomic_load(&r->acked) >= want;
}

/* Marks the fault: acks arriving after this count as "after the fault". */
static inline void dr_mark_fault(dr_run *r) { atomic_store(&r->fault_ms, sh_now_ms()); }

/* Users handed out so far (the rest never asked). */
static inline int dr_users_asked(dr_run *r) {
    int n = atomic_load(&r->next_user);
    return n > r->max_users ? r->max_users : n;
}

static inline int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The longest time without any acknowledgement between the first and the last one: the
 * gap the fault tore into the sale, as users saw it. */
static inline uint64_t dr_max_ack_gap(const dr_run *r, uint64_t *gap_start) {
    int n = 0;
    uint64_t *t = malloc(((size_t)r->max_users + 1) * sizeof *t);
    for (int i = 0; i < r->max_users; i++)
        if (r->users[i].acked_ms)
            t[n++] = r->users[i].acked_ms;
    qsort(t, (size_t)n, sizeof *t, cmp_u64);
    uint64_t gap = 0;
    *gap_start = 0;
    for (int i = 1; i < n; i++)
        if (t[i] - t[i - 1] > gap) {
            gap = t[i] - t[i - 1];
            *gap_start = t[i - 1];
        }
    free(t);
    return gap;
}

/* Prints the run's counters (one line, for the drill's log and docs). */
static inline void dr_run_print(dr_run *r, const char *what) {
    fprintf(stderr,
            "drill %s: users=%d answers=%d acked=%d acked_after_fault=%d 503=%d 504=%d "
            "no_response=%d 429=%d other=%d conflicts=%d without_retry_after=%d\n",
            what, dr_users_asked(r), atomic_load(&r->answers), atomic_load(&r->acked),
            atomic_load(&r->acked_after_fault), atomic_load(&r->n503), atomic_load(&r->n504),
            atomic_load(&r->n0), atomic_load(&r->n429), atomic_load(&r->nother),
            atomic_load(&r->nconflict), atomic_load(&r->no_retry_after));
}

/* ---- invariant checks ----------------------------------------------------------------------- */

/* Every check prints each violation (the first 10 of a kind) and returns how many there were. */
#define DR_VIOLATION(nv, ...)                                 \
    do {                                                      \
        if ((nv)++ < 10) {                                    \
            fprintf(stderr, "drill violation: " __VA_ARGS__); \
            fputc('\n', stderr);                              \
        }                                                     \
    } while (0)

/* The user index of an id made by dr_user_id, -1 if it is not one of this run's users. */
static inline int dr_user_index(const dr_run *r, const char *id) {
    size_t n = strlen(r->prefix);
    if (strncmp(id, r->prefix, n) != 0 || id[n] < '0' || id[n] > '9')
        return -1;
    char *end;
    long i = strtol(id + n, &end, 10);
    return *end == '\0' && i >= 0 && i < r->max_users ? (int)i : -1;
}

/* What the users learnt after an answer that did not tell the outcome. */
typedef struct dr_learnt {
    int users;         /* users who got at least one 503/504/no answer */
    int acked_later;   /* ... then a new 201/200: the earlier call had not been recorded */
    int already_later; /* ... then "already": the earlier call had been recorded */
    int none_left;     /* ... then sold out / gone */
    int never;         /* ... and never a definitive answer (violation) */
    int already_first; /* users whose FIRST request was answered "already" */
    int replayed;      /* users answered a second ack with the same order/amount */
    int limited_first; /* users whose FIRST request was answered 429 (with burst >= 1 only
                           the server's own retries can have used the allowance) */
} dr_learnt;

static inline dr_learnt dr_learnt_of(const dr_run *r) {
    dr_learnt l = {0};
    for (int i = 0; i < dr_users_asked((dr_run *)r); i++) {
        const dr_user *u = &r->users[i];
        l.already_first += u->already_first;
        l.replayed += u->replayed > 0;
        l.limited_first += u->limited_first;
        if (!u->unknown)
            continue;
        l.users++;
        if (!u->done)
            l.never++;
        else if (u->acked)
            l.acked_later++;
        else if (u->already)
            l.already_later++;
        else
            l.none_left++;
    }
    return l;
}

/*
 * After the run: every user whose answers included an unknown outcome asks
 * once more; the answer must repeat what they learnt (the same order id /
 * amount as "already", or none left).  Returns the violations.
 */
static inline int dr_recheck_unknown(dr_run *r) {
    int nv = 0;
    for (int i = 0; i < dr_users_asked(r); i++) {
        dr_user *u = &r->users[i];
        if (!u->unknown || !u->done)
            continue;
        char uid[48], body[96];
        dr_user_id(r, i, uid, sizeof uid);
        snprintf(body, sizeof body, "{\"user_id\":\"%s\"}", uid);
        sh_http_resp resp;
        int st = 0;
        for (int attempt = 0; attempt < 60; attempt++) { /* busy server, or 429 for ~1 s */
            st = sh_http(atomic_load(&r->port), "POST", r->path, body, false, r->http_timeout_ms,
                         &resp);
            if (st != 0 && st != 503 && st != 429 && st != 504)
                break;
            sh_http_free(&resp);
            dr_sleep_ms(50);
        }
        const char *b = resp.body ? resp.body : "";
        bool ok;
        char oid[64] = "";
        if (r->kind == DR_FLASHSALE)
            ok = u->order_id[0] ? ((st == 409 && strstr(b, "already_purchased")) || st == 201) &&
                                      dr_json_str(b, "order_id", oid, sizeof oid) &&
                                      strcmp(oid, u->order_id) == 0
                                : st == 409 && strstr(b, "\"sold_out\"");
        else
            ok = u->amount >= 0 ? st == 200 && dr_json_int(b, "amount_cents", -2) == u->amount
                                : st == 410;
        if (ok)
            u->final_checked = 1;
        else
            DR_VIOLATION(nv, "user %s learnt %s %lld, a repeat answered %d %s", uid,
                         u->order_id[0] ? u->order_id : "-", u->amount, st, b);
        sh_http_free(&resp);
    }
    return nv;
}

/* Redis state of a flash sale, read from the node on `port` (the master now). */
typedef struct dr_fs_state {
    long long buyers, stock_left, orders, seq;
    char **order_of; /* [max_users]: the user's order id in fs:{SKU}:buyers, NULL if none */
    dr_lines lines;
} dr_fs_state;

static inline void dr_fs_state_free(dr_fs_state *st) {
    free(st->order_of);
    dr_lines_free(&st->lines);
    memset(st, 0, sizeof *st);
}

static inline int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * The flash-sale invariants against Redis: no acknowledged order lost (each
 * 201/already answer's order id is the user's entry in fs:{SKU}:buyers), no
 * hidden order (everyone in buyers was told), none oversold (buyers + stock
 * left == stock, stock left >= 0), order ids distinct, the orders hash in step.
 */
static inline int dr_check_flashsale_redis(dr_run *r, uint16_t port, const char *sku,
                                           long long stock_total, dr_fs_state *st) {
    int nv = 0;
    memset(st, 0, sizeof *st);
    char key[128];
    snprintf(key, sizeof key, "fs:{%s}:buyers", sku);
    st->lines = dr_lines_of(sh_redis_cmd(port, "HGETALL %s", key));
    st->order_of = calloc((size_t)r->max_users, sizeof *st->order_of);
    if (!st->lines.text) {
        DR_VIOLATION(nv, "cannot read %s from port %u", key, port);
        return nv;
    }
    if (st->lines.n % 2 != 0)
        DR_VIOLATION(nv, "HGETALL %s: odd reply (%zu lines)", key, st->lines.n);
    char **ids = calloc(st->lines.n / 2 + 1, sizeof *ids);
    for (size_t k = 0; k + 1 < st->lines.n; k += 2) {
        int i = dr_user_index(r, st->lines.v[k]);
        if (i < 0)
            DR_VIOLATION(nv, "buyer %s is not a user of this drill", st->lines.v[k]);
        else
            st->order_of[i] = st->lines.v[k + 1];
        ids[st->buyers++] = st->lines.v[k + 1];
    }
    qsort(ids, (size_t)st->buyers, sizeof *ids, cmp_str);
    for (long long k = 1; k < st->buyers; k++)
        if (strcmp(ids[k - 1], ids[k]) == 0)
            DR_VIOLATION(nv, "order id %s held by two buyers", ids[k]);
    free(ids);
    snprintf(key, sizeof key, "fs:{%s}:stock", sku);
    st->stock_left = dr_redis_int(port, -999, "GET %s", key);
    snprintf(key, sizeof key, "fs:{%s}:orders", sku);
    st->orders = dr_redis_int(port, -1, "HLEN %s", key);
    snprintf(key, sizeof key, "fs:{%s}:seq", sku);
    st->seq = dr_redis_int(port, 0, "GET %s", key);
    if (st->stock_left < 0)
        DR_VIOLATION(nv, "stock left %lld < 0 (oversold)", st->stock_left);
    if (st->buyers > stock_total)
        DR_VIOLATION(nv, "%lld buyers for a stock of %lld (oversold)", st->buyers, stock_total);
    if (st->buyers + st->stock_left != stock_total)
        DR_VIOLATION(nv, "buyers %lld + stock left %lld != stock %lld", st->buyers, st->stock_left,
                     stock_total);
    if (st->orders != st->buyers)
        DR_VIOLATION(nv, "orders hash has %lld entries, buyers %lld", st->orders, st->buyers);
    for (int i = 0; i < dr_users_asked(r); i++) {
        const dr_user *u = &r->users[i];
        char uid[48];
        dr_user_id(r, i, uid, sizeof uid);
        if (u->conflicts)
            DR_VIOLATION(nv, "user %s got %d contradicting answers", uid, u->conflicts);
        if (u->unknown && !u->done)
            DR_VIOLATION(nv, "user %s never learnt the outcome (%d unknown answers)", uid,
                         u->unknown);
        if (u->order_id[0] && (!st->order_of[i] || strcmp(st->order_of[i], u->order_id) != 0))
            DR_VIOLATION(nv, "acknowledged order %s of %s lost (buyers has %s)", u->order_id, uid,
                         st->order_of[i] ? st->order_of[i] : "nothing");
        if (st->order_of[i] && !u->order_id[0])
            DR_VIOLATION(nv,
                         "user %s holds order %s but was never told (answers: %d asked, "
                         "%d unknown, sold_out=%d)",
                         uid, st->order_of[i], u->asked, u->unknown, u->none_left);
    }
    return nv;
}

/*
 * The flash-sale invariants against the database once the persister drained:
 * the orders table holds exactly the buyers of Redis (same order id per user,
 * each once), every event applied once, nothing pending or dead-lettered.
 */
static inline int dr_check_flashsale_db(dr_run *r, strata_db *db, uint16_t port, const char *sku,
                                        const dr_fs_state *st, int drain_timeout_ms,
                                        uint64_t *drain_ms) {
    int nv = 0;
    uint64_t t0 = sh_now_ms();
    dr_db_count_wait w = {db, "SELECT COUNT(*) FROM orders WHERE sku = $1", sku, st->buyers, -1};
    if (!sh_wait_until(drain_timeout_ms, 20, dr_db_count_reached, &w))
        DR_VIOLATION(nv, "orders in the database: %lld, buyers in Redis: %lld after %d ms", w.got,
                     st->buyers, drain_timeout_ms);
    *drain_ms = sh_now_ms() - t0;
    strata_db_result *res = NULL;
    int rc = dr_db_rows(db, "SELECT order_id, user_id FROM orders WHERE sku = $1", sku, &res);
    if (rc != STRATA_OK)
        DR_VIOLATION(nv, "cannot read orders: %s", strata_status_name(rc));
    long long matched = 0;
    for (int k = 0; res && k < strata_db_result_rows(res); k++) {
        const char *oid = strata_db_result_value(res, k, 0, NULL);
        const char *user = strata_db_result_value(res, k, 1, NULL);
        int i = user ? dr_user_index(r, user) : -1;
        if (i < 0 || !st->order_of[i] || strcmp(st->order_of[i], oid) != 0)
            DR_VIOLATION(nv, "database order %s of %s is not in Redis (Redis: %s)", oid,
                         user ? user : "?", i >= 0 && st->order_of[i] ? st->order_of[i] : "none");
        else
            matched++;
    }
    strata_db_result_free(&res);
    if (matched != st->buyers)
        DR_VIOLATION(nv, "%lld of %lld Redis orders found in the database", matched, st->buyers);
    long long applied = dr_db_int(db,
                                  "SELECT COUNT(*) FROM strata_applied_events WHERE event_id LIKE "
                                  "'order:' || $1 || '-%'",
                                  sku);
    if (applied != st->buyers)
        DR_VIOLATION(nv, "%lld order events applied, %lld orders", applied, st->buyers);
    char stream[128], dlq[140];
    snprintf(stream, sizeof stream, "fs:{%s}:events", sku);
    snprintf(dlq, sizeof dlq, "%s:dlq", stream);
    long long pending, lag;
    if (!dr_wait_stream_idle(port, stream, 10000, &pending, &lag))
        DR_VIOLATION(nv, "stream %s: %lld pending, %lld undelivered after 10 s", stream, pending,
                     lag);
    long long dead = dr_redis_int(port, -1, "XLEN %s", dlq);
    if (dead != 0)
        DR_VIOLATION(nv, "stream %s: %lld dead letters", stream, dead);
    return nv;
}

/* Redis state of a red packet. */
typedef struct dr_rp_state {
    long long grabs, grabbed_sum, shares, shares_sum, total, count, grabbed_cents, grabbed_count,
        refunded;
    char status[16];
    long long *amount_of; /* [max_users]: the user's share in rp:{ID}:grabs, -1 if none */
} dr_rp_state;

static inline void dr_rp_state_free(dr_rp_state *st) {
    free(st->amount_of);
    memset(st, 0, sizeof *st);
}

static inline long long dr_hget_int(uint16_t port, const char *key, const char *field) {
    char *v = sh_redis_cmd(port, "HGET %s %s", key, field);
    long long x = v && *v && strcmp(v, "(nil)") != 0 ? strtoll(v, NULL, 10) : -1;
    free(v);
    return x;
}

/*
 * The red-packet invariants against Redis: no acknowledged grab lost (each
 * 200's amount is the user's entry in rp:{ID}:grabs), no hidden grab, money
 * conserved exactly (grabs + shares left + refund == total; grabs + shares
 * == count while open), the meta counters in step, every share >= 1 cent.
 */
static inline int dr_check_redpacket_redis(dr_run *r, uint16_t port, const char *id,
                                           dr_rp_state *st) {
    int nv = 0;
    memset(st, 0, sizeof *st);
    st->amount_of = malloc((size_t)r->max_users * sizeof *st->amount_of);
    for (int i = 0; i < r->max_users; i++)
        st->amount_of[i] = -1;
    char key[128];
    snprintf(key, sizeof key, "rp:{%s}:grabs", id);
    dr_lines l = dr_lines_of(sh_redis_cmd(port, "HGETALL %s", key));
    if (!l.text)
        DR_VIOLATION(nv, "cannot read %s", key);
    for (size_t k = 0; k + 1 < l.n; k += 2) {
        int i = dr_user_index(r, l.v[k]);
        long long a = strtoll(l.v[k + 1], NULL, 10);
        if (i < 0)
            DR_VIOLATION(nv, "grabber %s is not a user of this drill", l.v[k]);
        else
            st->amount_of[i] = a;
        if (a < 1)
            DR_VIOLATION(nv, "grab of %s is %lld cents", l.v[k], a);
        st->grabs++;
        st->grabbed_sum += a;
    }
    dr_lines_free(&l);
    snprintf(key, sizeof key, "rp:{%s}:shares", id);
    l = dr_lines_of(sh_redis_cmd(port, "LRANGE %s 0 -1", key));
    for (size_t k = 0; k < l.n; k++) {
        long long a = strtoll(l.v[k], NULL, 10);
        if (a < 1)
            DR_VIOLATION(nv, "share of %lld cents left", a);
        st->shares++;
        st->shares_sum += a;
    }
    dr_lines_free(&l);
    snprintf(key, sizeof key, "rp:{%s}:meta", id);
    st->total = dr_hget_int(port, key, "total_cents");
    st->count = dr_hget_int(port, key, "count");
    st->grabbed_cents = dr_hget_int(port, key, "grabbed_cents");
    st->grabbed_count = dr_hget_int(port, key, "grabbed_count");
    st->refunded = dr_hget_int(port, key, "refunded_cents");
    char *s = sh_redis_cmd(port, "HGET %s status", key);
    snprintf(st->status, sizeof st->status, "%s", s ? s : "?");
    free(s);
    if (st->grabbed_sum + st->shares_sum + st->refunded != st->total)
        DR_VIOLATION(nv, "grabs %lld + shares left %lld + refunded %lld != total %lld",
                     st->grabbed_sum, st->shares_sum, st->refunded, st->total);
    if (strcmp(st->status, "open") == 0 && st->grabs + st->shares != st->count)
        DR_VIOLATION(nv, "grabs %lld + shares left %lld != count %lld", st->grabs, st->shares,
                     st->count);
    if (st->grabs > st->count)
        DR_VIOLATION(nv, "%lld grabs of a %lld-share packet", st->grabs, st->count);
    if (st->grabbed_cents != st->grabbed_sum || st->grabbed_count != st->grabs)
        DR_VIOLATION(nv, "meta says %lld cents in %lld grabs, the grabs hash %lld in %lld",
                     st->grabbed_cents, st->grabbed_count, st->grabbed_sum, st->grabs);
    for (int i = 0; i < dr_users_asked(r); i++) {
        const dr_user *u = &r->users[i];
        char uid[48];
        dr_user_id(r, i, uid, sizeof uid);
        if (u->conflicts)
            DR_VIOLATION(nv, "user %s got %d contradicting answers", uid, u->conflicts);
        if (u->unknown && !u->done)
            DR_VIOLATION(nv, "user %s never learnt the outcome (%d unknown answers)", uid,
                         u->unknown);
        if (u->amount >= 0 && st->amount_of[i] != u->amount)
            DR_VIOLATION(nv, "acknowledged grab of %lld by %s lost (Redis has %lld)", u->amount,
                         uid, st->amount_of[i]);
        if (st->amount_of[i] >= 0 && u->amount < 0)
            DR_VIOLATION(nv, "user %s holds %lld cents but was never told", uid, st->amount_of[i]);
    }
    return nv;
}

/* The red-packet invariants against the database once drained: the grabs table holds exactly
 * Redis's grabs (same amount per user, once each), nothing pending or dead-lettered. */
static inline int dr_check_redpacket_db(dr_run *r, strata_db *db, uint16_t port, const char *id,
                                        const dr_rp_state *st, int drain_timeout_ms,
                                        uint64_t *drain_ms) {
    int nv = 0;
    uint64_t t0 = sh_now_ms();
    dr_db_count_wait w = {db, "SELECT COUNT(*) FROM grabs WHERE packet_id = $1", id, st->grabs, -1};
    if (!sh_wait_until(drain_timeout_ms, 20, dr_db_count_reached, &w))
        DR_VIOLATION(nv, "grabs in the database: %lld, in Redis: %lld after %d ms", w.got,
                     st->grabs, drain_timeout_ms);
    *drain_ms = sh_now_ms() - t0;
    strata_db_result *res = NULL;
    int rc =
        dr_db_rows(db, "SELECT user_id, amount_cents FROM grabs WHERE packet_id = $1", id, &res);
    if (rc != STRATA_OK)
        DR_VIOLATION(nv, "cannot read grabs: %s", strata_status_name(rc));
    long long matched = 0, sum = 0;
    for (int k = 0; res && k < strata_db_result_rows(res); k++) {
        const char *user = strata_db_result_value(res, k, 0, NULL);
        long long a = strata_db_result_int64(res, k, 1, -1);
        int i = user ? dr_user_index(r, user) : -1;
        sum += a;
        if (i < 0 || st->amount_of[i] != a)
            DR_VIOLATION(nv, "database grab of %lld by %s is not Redis's (%lld)", a,
                         user ? user : "?", i >= 0 ? st->amount_of[i] : -1);
        else
            matched++;
    }
    strata_db_result_free(&res);
    if (matched != st->grabs || sum != st->grabbed_sum)
        DR_VIOLATION(nv, "database: %lld grabs matched (%lld cents), Redis: %lld (%lld cents)",
                     matched, sum, st->grabs, st->grabbed_sum);
    char stream[128], dlq[140];
    snprintf(stream, sizeof stream, "rp:{%s}:events", id);
    snprintf(dlq, sizeof dlq, "%s:dlq", stream);
    long long pending, lag;
    if (!dr_wait_stream_idle(port, stream, 10000, &pending, &lag))
        DR_VIOLATION(nv, "stream %s: %lld pending, %lld undelivered after 10 s", stream, pending,
                     lag);
    long long dead = dr_redis_int(port, -1, "XLEN %s", dlq);
    if (dead != 0)
        DR_VIOLATION(nv, "stream %s: %lld dead letters", stream, dead);
    return nv;
}

#endif
