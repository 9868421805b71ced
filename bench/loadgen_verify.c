/*
 * loadgen_verify.c: the invariant checks of docs/notes/scenarios.md, run by
 * `strata bench flashsale|redpacket` at the end of a run (loadgen.h).
 *
 * Three witnesses are compared: what the clients were told (every 201 order
 * id, every 200 amount), Redis (the truth while a sale runs) and the
 * database (the truth once the write-behind persister drained).  The run
 * first waits, with a deadline, until the database holds what Redis
 * acknowledged; then every check runs and each violation is reported on its
 * own line, so one run shows everything that is wrong, not just the first.
 *
 * Redis is read with hiredis' blocking API: redis:// and unix:// directly;
 * redis-sentinel:// by asking the sentinels for the master first;
 * redis-cluster:// by following MOVED/ASK (every key of one entity carries
 * its hash tag, so one node answers for an entity).  The database is read
 * with sqlite3 (read-only) or libpq directly, through a tiny row helper: the
 * checker must not depend on the code it checks.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <xxhash.h>

#include "loadgen.h"
#include "strata/alloc.h"
#include "strata/redis.h"
#include "strata/status.h"

#define MAX_NODES 16

typedef struct node {
    char addr[280]; /* host:port */
    redisContext *ctx;
} node;

struct lg_verify {
    strata_redis_url ru;
    redisContext *main;
    node nodes[MAX_NODES]; /* cluster nodes learnt from MOVED */
    int nnodes;
    sqlite3 *sq;
    PGconn *pg;
    int64_t settle_ms; /* lg_verify_set_settle */
};

void lg_verify_set_settle(lg_verify *v, int64_t settle_ms) { v->settle_ms = settle_ms; }

/* ---- Redis ------------------------------------------------------------------------- */

static redisContext *redis_dial(const lg_verify *v, const char *host, int port, const char *path) {
    struct timeval tv = {2, 0};
    redisContext *c =
        path ? redisConnectUnixWithTimeout(path, tv) : redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *r = NULL;
    if (v->ru.password) {
        r = v->ru.user ? redisCommand(c, "AUTH %s %s", v->ru.user, v->ru.password)
                       : redisCommand(c, "AUTH %s", v->ru.password);
        if (!r || r->type == REDIS_REPLY_ERROR)
            goto onv;
        freeReplyObject(r);
    }
    if (v->ru.db && v->ru.mode != STRATA_REDIS_CLUSTER) {
        r = redisCommand(c, "SELECT %d", v->ru.db);
        if (!r || r->type == REDIS_REPLY_ERROR)
            goto onv;
        freeReplyObject(r);
    }
    return c;
onv:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return NULL;
}

static int redis_connect_main(lg_verify *v, strata_buf *err) {
    if (v->main) {
        redisFree(v->main);
        v->main = NULL;
    }
    if (v->ru.unix_path)
        v->main = redis_dial(v, NULL, 0, v->ru.unix_path);
    else if (v->ru.mode == STRATA_REDIS_SENTINEL) {
        for (size_t i = 0; i < v->ru.nhosts && !v->main; i++) {
            struct timeval tv = {1, 0};
            redisContext *s = redisConnectWithTimeout(v->ru.hosts[i].host, v->ru.hosts[i].port, tv);
            if (!s || s->err) {
                if (s)
                    redisFree(s);
                continue;
            }
            redisSetTimeout(s, tv);
            redisReply *r =
                redisCommand(s, "SENTINEL get-master-addr-by-name %s", v->ru.master_name);
            if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                r->element[0]->type == REDIS_REPLY_STRING &&
                r->element[1]->type == REDIS_REPLY_STRING)
                v->main = redis_dial(v, r->element[0]->str, atoi(r->element[1]->str), NULL);
            if (r)
                freeReplyObject(r);
            redisFree(s);
        }
    } else {
        for (size_t i = 0; i < v->ru.nhosts && !v->main; i++)
            v->main = redis_dial(v, v->ru.hosts[i].host, v->ru.hosts[i].port, NULL);
    }
    if (!v->main) {
        if (err)
            strata_buf_puts(err, "cannot connect to Redis for verification");
        return STRATA_EUNAVAIL;
    }
    return STRATA_OK;
}

static redisContext *node_for(lg_verify *v, const char *addr) {
    for (int i = 0; i < v->nnodes; i++)
        if (strcmp(v->nodes[i].addr, addr) == 0)
            return v->nodes[i].ctx;
    const char *colon = strrchr(addr, ':');
    if (!colon || v->nnodes >= MAX_NODES)
        return NULL;
    char host[256];
    size_t hl = (size_t)(colon - addr);
    if (hl == 0 || hl >= sizeof host)
        return NULL;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    redisContext *c = redis_dial(v, host, atoi(colon + 1), NULL);
    if (!c)
        return NULL;
    snprintf(v->nodes[v->nnodes].addr, sizeof v->nodes[0].addr, "%s", addr);
    v->nodes[v->nnodes++].ctx = c;
    return c;
}

/* Runs a command (argv form), following MOVED/ASK and reconnecting once; NULL on failure. */
static redisReply *vcmd(lg_verify *v, int argc, const char **argv) {
    redisContext *c = v->main;
    bool asking = false;
    for (int attempt = 0; attempt < 5; attempt++) {
        if (!c || c->err) {
            if (c != v->main || redis_connect_main(v, NULL) != STRATA_OK)
                return NULL;
            c = v->main;
        }
        if (asking) {
            redisReply *a = redisCommand(c, "ASKING");
            if (a)
                freeReplyObject(a);
            asking = false;
        }
        redisReply *r = redisCommandArgv(c, argc, argv, NULL);
        if (!r)
            continue; /* connection error: reconnect (main) and retry */
        if (r->type == REDIS_REPLY_ERROR &&
            (strncmp(r->str, "MOVED ", 6) == 0 || strncmp(r->str, "ASK ", 4) == 0)) {
            asking = r->str[1] == 'S';
            const char *sp = strrchr(r->str, ' ');
            redisContext *n = sp ? node_for(v, sp + 1) : NULL;
            freeReplyObject(r);
            if (!n)
                return NULL;
            c = n;
            continue;
        }
        return r;
    }
    return NULL;
}

static redisReply *vcmd2(lg_verify *v, const char *cmd, const char *key) {
    const char *argv[] = {cmd, key};
    return vcmd(v, 2, argv);
}

/* Reads an integer reply or an integer string; false if neither. */
static bool reply_int(const redisReply *r, int64_t *out) {
    if (!r)
        return false;
    if (r->type == REDIS_REPLY_INTEGER) {
        *out = r->integer;
        return true;
    }
    if (r->type != REDIS_REPLY_STRING || r->len == 0 || r->len > 20)
        return false;
    char *end;
    long long x = strtoll(r->str, &end, 10);
    if (*end)
        return false;
    *out = x;
    return true;
}

/* HGET key field as an integer; -1 (and *ok false) if missing. */
static int64_t hget_int(lg_verify *v, const char *key, const char *field, bool *ok) {
    const char *argv[] = {"HGET", key, field};
    redisReply *r = vcmd(v, 3, argv);
    int64_t x = -1;
    *ok = reply_int(r, &x);
    if (r)
        freeReplyObject(r);
    return x;
}

/* ---- the database -------------------------------------------------------------------- */

typedef struct rows {
    int n, cols;
    char **cell; /* n * cols strings (NULL for SQL NULL), owned */
} rows;

static void rows_free(rows *r) {
    for (int i = 0; i < r->n * r->cols; i++)
        strata_free(r->cell[i]);
    strata_free(r->cell);
    memset(r, 0, sizeof *r);
}

static const char *cell(const rows *r, int row, int col) {
    return row < r->n && col < r->cols ? r->cell[row * r->cols + col] : NULL;
}

static int64_t cell_int(const rows *r, int row, int col, int64_t dflt) {
    const char *s = cell(r, row, col);
    if (!s || !*s)
        return dflt;
    char *end;
    long long x = strtoll(s, &end, 10);
    return *end ? dflt : x;
}

static int rows_push(rows *r, char **vals) {
    char **nc = strata_realloc(r->cell, sizeof *nc * (size_t)(r->n + 1) * (size_t)r->cols);
    if (!nc) {
        for (int i = 0; i < r->cols; i++)
            strata_free(vals[i]);
        return STRATA_ENOMEM;
    }
    r->cell = nc;
    memcpy(nc + (size_t)r->n * (size_t)r->cols, vals, sizeof *vals * (size_t)r->cols);
    r->n++;
    return STRATA_OK;
}

/* Runs sql with text parameters $1..$np; fills *out.  STRATA_EIO with a reason. */
static int dbq(lg_verify *v, rows *out, strata_buf *err, const char *sql, int np, ...) {
    memset(out, 0, sizeof *out);
    const char *params[8];
    va_list ap;
    va_start(ap, np);
    if (np > 8)
        np = 8;
    for (int i = 0; i < np; i++)
        params[i] = va_arg(ap, const char *);
    va_end(ap);
    if (v->sq) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(v->sq, sql, -1, &st, NULL) != SQLITE_OK) {
            if (err)
                strata_buf_printf(err, "sqlite: %s", sqlite3_errmsg(v->sq));
            return STRATA_EIO;
        }
        for (int i = 0; i < np; i++) {
            char name[16];
            snprintf(name, sizeof name, "$%d", i + 1);
            int idx = sqlite3_bind_parameter_index(st, name);
            if (idx > 0)
                sqlite3_bind_text(st, idx, params[i], -1, SQLITE_TRANSIENT);
        }
        out->cols = sqlite3_column_count(st);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            char *vals[16] = {0};
            for (int c = 0; c < out->cols && c < 16; c++) {
                const unsigned char *t = sqlite3_column_text(st, c);
                vals[c] = t ? strata_strdup((const char *)t) : NULL;
            }
            if (rows_push(out, vals) != STRATA_OK) {
                rc = SQLITE_NOMEM;
                break;
            }
        }
        if (rc != SQLITE_DONE) {
            if (err)
                strata_buf_printf(err, "sqlite: %s", sqlite3_errmsg(v->sq));
            sqlite3_finalize(st);
            rows_free(out);
            return STRATA_EIO;
        }
        sqlite3_finalize(st);
        return STRATA_OK;
    }
    PGresult *res = PQexecParams(v->pg, sql, np, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (err)
            strata_buf_printf(err, "postgres: %s", PQerrorMessage(v->pg));
        PQclear(res);
        if (PQstatus(v->pg) != CONNECTION_OK)
            PQreset(v->pg);
        return STRATA_EIO;
    }
    out->cols = PQnfields(res);
    for (int i = 0; i < PQntuples(res); i++) {
        char *vals[16] = {0};
        for (int c = 0; c < out->cols && c < 16; c++)
            vals[c] = PQgetisnull(res, i, c) ? NULL : strata_strdup(PQgetvalue(res, i, c));
        if (rows_push(out, vals) != STRATA_OK) {
            PQclear(res);
            rows_free(out);
            return STRATA_ENOMEM;
        }
    }
    PQclear(res);
    return STRATA_OK;
}

/* ---- open / close --------------------------------------------------------------------- */

int lg_verify_open(lg_verify **out, const char *redis_url, const char *db_url, strata_buf *err) {
    *out = NULL;
    lg_verify *v = strata_calloc(1, sizeof *v);
    if (!v)
        return STRATA_ENOMEM;
    int rc = strata_redis_url_parse(redis_url, &v->ru, err);
    if (rc != STRATA_OK)
        goto onv;
    if (strncmp(db_url, "sqlite://", 9) == 0) {
        const char *path = db_url + 9;
        if (!*path) {
            rc = STRATA_EINVAL;
            if (err)
                strata_buf_printf(err, "database URL \"%s\": no path", db_url);
            goto onv;
        }
        if (sqlite3_open_v2(path, &v->sq, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
            if (err)
                strata_buf_printf(err, "cannot open %s: %s", path,
                                  v->sq ? sqlite3_errmsg(v->sq) : "out of memory");
            rc = STRATA_EUNAVAIL;
            goto onv;
        }
        sqlite3_busy_timeout(v->sq, 5000);
    } else if (strncmp(db_url, "postgres://", 11) == 0 ||
               strncmp(db_url, "postgresql://", 13) == 0) {
        v->pg = PQconnectdb(db_url);
        if (!v->pg || PQstatus(v->pg) != CONNECTION_OK) {
            if (err)
                strata_buf_printf(err, "cannot connect to the database: %s",
                                  v->pg ? PQerrorMessage(v->pg) : "out of memory");
            rc = STRATA_EUNAVAIL;
            goto onv;
        }
    } else {
        if (err)
            strata_buf_printf(err, "database URL \"%s\": expected sqlite:///path or postgres://...",
                              db_url);
        rc = STRATA_EINVAL;
        goto onv;
    }
    if ((rc = redis_connect_main(v, err)) != STRATA_OK)
        goto onv;
    *out = v;
    return STRATA_OK;
onv:
    lg_verify_close(&v);
    return rc;
}

void lg_verify_close(lg_verify **pv) {
    lg_verify *v = *pv;
    if (!v)
        return;
    if (v->main)
        redisFree(v->main);
    for (int i = 0; i < v->nnodes; i++)
        redisFree(v->nodes[i].ctx);
    if (v->sq)
        sqlite3_close(v->sq);
    if (v->pg)
        PQfinish(v->pg);
    strata_redis_url_free(&v->ru);
    strata_free(v);
    *pv = NULL;
}

/* ---- helpers -------------------------------------------------------------------------- */

typedef struct pair {
    const char *k;
    const char *v;
    int64_t n;
} pair;

static int pair_cmp(const void *a, const void *b) {
    const pair *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : strcmp(x->v ? x->v : "", y->v ? y->v : "");
}

static const pair *pair_find(const pair *ps, size_t n, const char *k) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(ps[mid].k, k);
        if (c == 0) {
            while (mid > 0 && strcmp(ps[mid - 1].k, k) == 0)
                mid--;
            return &ps[mid];
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void violation(int *nv, lg_violation_fn onv, void *fctx, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void violation(int *nv, lg_violation_fn onv, void *fctx, const char *fmt, ...) {
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    (*nv)++;
    if (onv)
        onv(fctx, text);
}

static uint64_t verify_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void verify_nap_ms(int ms) {
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

static void key(char *out, size_t cap, const char *prefix, const char *id, const char *suffix) {
    snprintf(out, cap, "%s:{%s}:%s", prefix, id, suffix);
}

/* ---- flash sale ---------------------------------------------------------------------- */
/*
 * A sale created with "shards": K > 1 has no fs:{SKU}:stock and no fs:{SKU}:buyers:
 * shard i's keys carry the tag {SKU#i} (docs/notes/scenarios.md, "Stock shards"), its
 * stock starts at stock/K (the first stock%K shards one more), its `orders` hash holds
 * the units it sold (order ids "SKU-<i>.<n>"), its `buyers` hash the records of the users
 * whose home is i (XXH3(user) % K), its `taken` hash the units taken by users homed
 * elsewhere, its `pending` zset the reservations not yet settled.  The checker reads K
 * from the sale's meta, so --no-create runs are checked as created.
 */

#define FS_MAX_SHARDS 64

/* The sale's meta: stock_total, shards (1 when absent: created before sharding), limit. */
typedef struct fs_meta {
    bool have_total;
    int64_t total, shards, limit;
} fs_meta;

static void fs_read_meta(lg_verify *v, const char *sku, fs_meta *m) {
    char k[160];
    bool ok;
    key(k, sizeof k, "fs", sku, "meta");
    m->total = hget_int(v, k, "stock_total", &m->have_total);
    m->shards = hget_int(v, k, "shards", &ok);
    if (!ok)
        m->shards = 1;
    m->limit = hget_int(v, k, "per_user_limit", &ok);
    if (!ok || m->limit < 1)
        m->limit = 1;
}

/* "fs:{SKU#i}:<suffix>" */
static void shard_key(char *out, size_t cap, const char *sku, int64_t i, const char *suffix) {
    snprintf(out, cap, "fs:{%s#%lld}:%s", sku, (long long)i, suffix);
}

static int64_t shard_share(int64_t total, int64_t k, int64_t i) {
    return total / k + (i < total % k ? 1 : 0);
}

static int64_t home_of(const char *user, int64_t k) {
    return (int64_t)(XXH3_64bits(user, strlen(user)) % (uint64_t)k);
}

/* The shard an order id "SKU-<i>.<n>" names; -1 if it names none. */
static int64_t order_shard(const char *sku, const char *id) {
    size_t n = strlen(sku);
    if (strncmp(id, sku, n) != 0 || id[n] != '-')
        return -1;
    char *end;
    long long i = strtoll(id + n + 1, &end, 10);
    if (end == id + n + 1 || *end != '.' || i < 0)
        return -1;
    const char *d = end + 1;
    if (!*d)
        return -1;
    for (; *d; d++)
        if (*d < '0' || *d > '9')
            return -1;
    return i;
}

/* Sum over the K shards of a command's integer reply on `suffix` (HLEN, ZCARD); -1 on error. */
static int64_t shards_sum(lg_verify *v, const char *sku, int64_t shards, const char *cmd,
                          const char *suffix) {
    int64_t sum = 0;
    for (int64_t i = 0; i < shards; i++) {
        char k[200];
        shard_key(k, sizeof k, sku, i, suffix);
        redisReply *r = vcmd2(v, cmd, k);
        int64_t x = 0;
        bool ok = reply_int(r, &x);
        if (r)
            freeReplyObject(r);
        if (!ok)
            return -1;
        sum += x;
    }
    return sum;
}

/* Whether column 0 of db holds every one of want[0..n) (false on ENOMEM too). */
static bool rows_hold_all(const rows *db, const char *const *want, size_t n) {
    if (n == 0)
        return true;
    pair *have = strata_calloc((size_t)db->n + 1, sizeof *have);
    if (!have)
        return false;
    for (int i = 0; i < db->n; i++)
        have[i].k = cell(db, i, 0) ? cell(db, i, 0) : "";
    qsort(have, (size_t)db->n, sizeof *have, pair_cmp);
    bool all = true;
    for (size_t i = 0; i < n && all; i++)
        all = pair_find(have, (size_t)db->n, want[i]) != NULL;
    strata_free(have);
    return all;
}

static bool fs_drained(lg_verify *v, const lg_fs_seen *s, int64_t *count) {
    char k[160];
    fs_meta m;
    fs_read_meta(v, s->sku, &m);
    int64_t hlen = 0;
    if (m.shards > 1 && m.shards <= FS_MAX_SHARDS) {
        /* Every unit sold is in its shard's `orders`; reservations still pending are
         * finished by their user's next request or by the servers' sweeper. */
        hlen = shards_sum(v, s->sku, m.shards, "HLEN", "orders");
        if (hlen < 0 || shards_sum(v, s->sku, m.shards, "ZCARD", "pending") != 0)
            return false;
    } else {
        key(k, sizeof k, "fs", s->sku, "buyers");
        redisReply *r = vcmd2(v, "HLEN", k);
        bool ok = reply_int(r, &hlen);
        if (r)
            freeReplyObject(r);
        if (!ok)
            return false;
    }
    rows db;
    if (dbq(v, &db, NULL, "SELECT order_id FROM orders WHERE sku = $1", 1, s->sku) != STRATA_OK)
        return false;
    *count += hlen + db.n;
    bool drained = db.n >= hlen && rows_hold_all(&db, s->order_ids, s->n);
    rows_free(&db);
    return drained;
}

/*
 * Settling: a request the client gave up on (timeout, lost connection, 5xx) may
 * still be at work in a server, which goes on recording its order or grab after
 * the run ended.  With lg_verify_set_settle(v, ms > 0) a drain counts only once
 * the records in Redis and the database have not changed for that long, so the
 * checks do not read a sale half-way through such a request.
 */
typedef struct {
    int64_t last;
    uint64_t since_ms;
} settle_state;

static bool settled(const lg_verify *v, settle_state *st, int64_t count, uint64_t now) {
    if (count != st->last) {
        st->last = count;
        st->since_ms = now;
    }
    return v->settle_ms <= 0 || now - st->since_ms >= (uint64_t)v->settle_ms;
}

/* Polls every 50 ms, up to drain_ms, until one(v, item i, &count) holds for every item
 * (and, with a settle time, count has not changed for that long). */
static bool drain_loop(lg_verify *v, int64_t drain_ms, size_t n,
                       bool (*one)(lg_verify *v, const void *items, size_t i, int64_t *count),
                       const void *items) {
    uint64_t now = verify_now_ms();
    uint64_t deadline = now + (uint64_t)(drain_ms > 0 ? drain_ms : 0);
    settle_state st = {-1, now};
    for (;;) {
        bool all = true;
        int64_t count = 0;
        for (size_t i = 0; i < n; i++)
            all &= one(v, items, i, &count);
        now = verify_now_ms();
        if (settled(v, &st, count, now) && all)
            return true;
        if (now >= deadline)
            return false;
        verify_nap_ms(50);
    }
}

static bool fs_drained_at(lg_verify *v, const void *items, size_t i, int64_t *count) {
    return fs_drained(v, &((const lg_fs_seen *)items)[i], count);
}

bool lg_verify_fs_drain(lg_verify *v, const lg_fs_seen *s, size_t nskus, int64_t drain_ms) {
    return drain_loop(v, drain_ms, nskus, fs_drained_at, s);
}

/* HGETALL as pairs (pointing into *reply, which the caller frees); NULL on failure. */
static pair *hgetall_pairs(lg_verify *v, const char *k, redisReply **reply, size_t *n) {
    *reply = vcmd2(v, "HGETALL", k);
    redisReply *r = *reply;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements % 2)
        return NULL;
    *n = r->elements / 2;
    pair *p = strata_calloc(*n + 1, sizeof *p);
    if (!p)
        return NULL;
    for (size_t i = 0; i < *n; i++)
        p[i] = (pair){r->element[2 * i]->str ? r->element[2 * i]->str : "",
                      r->element[2 * i + 1]->str ? r->element[2 * i + 1]->str : "", 0};
    return p;
}

/*
 * The stock of each shard: present, 0 <= left <= the shard's initial share.  Returns the
 * sum (*ok false when a shard's stock could not be read).
 */
static int64_t fs_shard_stock(lg_verify *v, const char *sku, int64_t shards, int64_t total,
                              int64_t *left, bool *ok, int *nv, lg_violation_fn onv, void *fctx) {
    int64_t sum = 0;
    *ok = true;
    for (int64_t i = 0; i < shards; i++) {
        char k[200];
        shard_key(k, sizeof k, sku, i, "stock");
        redisReply *r = vcmd2(v, "GET", k);
        bool got = reply_int(r, &left[i]);
        if (r)
            freeReplyObject(r);
        if (!got) {
            violation(nv, onv, fctx, "sku=%s: shard %lld: stock missing or not an integer in Redis",
                      sku, (long long)i);
            *ok = false;
            left[i] = 0;
            continue;
        }
        int64_t share = total >= 0 ? shard_share(total, shards, i) : -1;
        if (left[i] < 0)
            violation(nv, onv, fctx, "sku=%s: shard %lld: stock_left=%lld is negative", sku,
                      (long long)i, (long long)left[i]);
        else if (share >= 0 && left[i] > share)
            violation(nv, onv, fctx, "sku=%s: shard %lld: stock_left=%lld above its share %lld",
                      sku, (long long)i, (long long)left[i], (long long)share);
        sum += left[i];
    }
    return sum;
}

/*
 * The records of a sharded sale against each other and the database (db: the orders,
 * sorted by user, k = user, v = order id):
 *   orders   each shard's units sold == its share - its stock left; every order id names
 *            its shard; no user holds more than per_user_limit orders across shards; the
 *            union equals the database's orders
 *   buyers   each record in the user's home shard; no reservation ("R:<j>") left and every
 *            `pending` set empty (a crash's reservations are finished by the sweeper:
 *            the drain waits for it); each buyer's home record == their order in the db;
 *            as many records as orders
 *   taken    a unit taken from shard j by a user homed elsewhere, the same order as in j's
 *            `orders`
 */
static void fs_check_shards(lg_verify *v, const char *sku, const fs_meta *m, const int64_t *left,
                            bool have_left, const pair *db, int64_t norders, int *nv,
                            lg_violation_fn onv, void *fctx) {
    int64_t k = m->shards;
    redisReply *rep[3 * FS_MAX_SHARDS] = {0};
    pair *hp[3 * FS_MAX_SHARDS] = {0};
    size_t hn[3 * FS_MAX_SHARDS] = {0};
    static const char *const what[3] = {"orders", "buyers", "taken"};
    pair *all = NULL;
    size_t nall = 0, nbuyers = 0;
    for (int64_t i = 0; i < k; i++)
        for (int w = 0; w < 3; w++) {
            char kk[200];
            shard_key(kk, sizeof kk, sku, i, what[w]);
            size_t at = (size_t)(3 * i + w);
            hp[at] = hgetall_pairs(v, kk, &rep[at], &hn[at]);
            if (!hp[at]) {
                violation(nv, onv, fctx, "sku=%s: shard %lld: HGETALL %s failed", sku, (long long)i,
                          what[w]);
                goto out;
            }
            if (w == 0)
                nall += hn[at];
        }

    /* orders: per shard, and the union by user (k = user, v = order id, n = shard). */
    all = strata_calloc(nall + 1, sizeof *all);
    if (!all)
        goto out;
    size_t at = 0;
    int64_t sold_total = 0;
    for (int64_t i = 0; i < k; i++) {
        const pair *o = hp[3 * i];
        size_t n = hn[3 * i];
        if (have_left && m->have_total && (int64_t)n != shard_share(m->total, k, i) - left[i])
            violation(nv, onv, fctx,
                      "sku=%s: shard %lld: %zu orders != share %lld - stock_left %lld", sku,
                      (long long)i, n, (long long)shard_share(m->total, k, i), (long long)left[i]);
        for (size_t j = 0; j < n; j++) {
            if (order_shard(sku, o[j].k) != i)
                violation(nv, onv, fctx, "sku=%s: shard %lld holds order %s of another shard", sku,
                          (long long)i, o[j].k);
            all[at++] = (pair){o[j].v, o[j].k, i};
        }
        sold_total += (int64_t)n;
    }
    qsort(all, nall, sizeof *all, pair_cmp);
    for (size_t i = 0; i < nall;) {
        size_t j = i + 1;
        while (j < nall && strcmp(all[j].k, all[i].k) == 0)
            j++;
        if ((int64_t)(j - i) > m->limit)
            violation(nv, onv, fctx,
                      "sku=%s: user %s holds %zu orders across shards (%s in shard %lld, %s in "
                      "shard %lld), limit %lld",
                      sku, all[i].k, j - i, all[i].v, (long long)all[i].n, all[i + 1].v,
                      (long long)all[i + 1].n, (long long)m->limit);
        i = j;
    }
    if (sold_total != norders)
        violation(nv, onv, fctx, "sku=%s: %lld orders in the shards' orders hashes, %lld in db",
                  sku, (long long)sold_total, (long long)norders);
    for (int64_t i = 0; i < norders; i++) {
        const pair *p = pair_find(all, nall, db[i].k);
        bool found = false;
        for (; p && p < all + nall && strcmp(p->k, db[i].k) == 0 && !found; p++)
            found = strcmp(p->v, db[i].v) == 0;
        if (!found)
            violation(nv, onv, fctx, "sku=%s: order %s of user %s in db but in no shard's orders",
                      sku, db[i].v, db[i].k);
    }

    /* buyers: home shard, no reservation left, record == the order. */
    for (int64_t i = 0; i < k; i++) {
        const pair *b = hp[3 * i + 1];
        for (size_t j = 0; j < hn[3 * i + 1]; j++) {
            int64_t home = home_of(b[j].k, k);
            if (home != i)
                violation(nv, onv, fctx,
                          "sku=%s: user %s has a buyer record in shard %lld, home is %lld", sku,
                          b[j].k, (long long)i, (long long)home);
            if (strncmp(b[j].v, "R:", 2) == 0) {
                violation(nv, onv, fctx,
                          "sku=%s: user %s: reservation %s left unconfirmed in shard %lld", sku,
                          b[j].k, b[j].v, (long long)i);
                continue;
            }
            nbuyers++;
            /* an order from another shard is remembered there (the take is idempotent) */
            int64_t from = order_shard(sku, b[j].v);
            if (from >= 0 && from < k && from != i) {
                bool in_taken = false;
                for (size_t q = 0; q < hn[3 * from + 2] && !in_taken; q++)
                    in_taken = strcmp(hp[3 * from + 2][q].k, b[j].k) == 0 &&
                               strcmp(hp[3 * from + 2][q].v, b[j].v) == 0;
                if (!in_taken)
                    violation(nv, onv, fctx,
                              "sku=%s: user %s: order %s from shard %lld not in its taken hash",
                              sku, b[j].k, b[j].v, (long long)from);
            }
            const pair *p = pair_find(db, (size_t)norders, b[j].k);
            if (!p)
                violation(nv, onv, fctx,
                          "sku=%s: user %s: buyer record %s in shard %lld, no order in db", sku,
                          b[j].k, b[j].v, (long long)i);
            else if (strcmp(p->v, b[j].v) != 0)
                violation(nv, onv, fctx, "sku=%s: user %s: buyers says %s, db says %s", sku, b[j].k,
                          b[j].v, p->v);
        }
    }
    if ((int64_t)nbuyers != norders)
        violation(nv, onv, fctx, "sku=%s: %zu buyer records in the shards != orders in db=%lld",
                  sku, nbuyers, (long long)norders);
    int64_t pending = shards_sum(v, sku, k, "ZCARD", "pending");
    if (pending != 0)
        violation(nv, onv, fctx, "sku=%s: %lld reservations still pending (ZCARD pending)", sku,
                  (long long)pending);

    /* taken: a unit of shard i for a user homed elsewhere, the order in i's `orders`. */
    for (int64_t i = 0; i < k; i++) {
        const pair *t = hp[3 * i + 2];
        for (size_t j = 0; j < hn[3 * i + 2]; j++) {
            if (home_of(t[j].k, k) == i)
                violation(nv, onv, fctx, "sku=%s: user %s took from their home shard %lld", sku,
                          t[j].k, (long long)i);
            bool found = false;
            for (const pair *p = pair_find(all, nall, t[j].k);
                 p && p < all + nall && strcmp(p->k, t[j].k) == 0 && !found; p++)
                found = p->n == i && strcmp(p->v, t[j].v) == 0;
            if (!found)
                violation(nv, onv, fctx, "sku=%s: shard %lld: taken %s -> %s not in its orders",
                          sku, (long long)i, t[j].k, t[j].v);
        }
    }
out:
    for (int i = 0; i < 3 * FS_MAX_SHARDS; i++) {
        strata_free(hp[i]);
        if (rep[i])
            freeReplyObject(rep[i]);
    }
    strata_free(all);
}

int lg_verify_fs(lg_verify *v, const lg_fs_seen *s, lg_violation_fn onv, void *fctx) {
    int nv = 0;
    const char *sku = s->sku;
    char k[160];
    strata_buf err = STRATA_BUF_INIT;
    rows sale = {0}, orders = {0};
    pair *db = NULL, *seen = NULL, *redis_b = NULL;
    size_t nredis = 0;
    redisReply *hr = NULL;
    int64_t shard_left[FS_MAX_SHARDS] = {0};

    /* Redis: the meta (stock_total, shards), stock left (summed over the shards), buyers. */
    fs_meta m;
    fs_read_meta(v, sku, &m);
    if (!m.have_total)
        violation(&nv, onv, fctx, "sku=%s: meta.stock_total missing in Redis", sku);
    bool sharded = m.shards > 1;
    if (m.shards < 1 || m.shards > FS_MAX_SHARDS) {
        violation(&nv, onv, fctx, "sku=%s: meta.shards=%lld outside [1, %d]", sku,
                  (long long)m.shards, FS_MAX_SHARDS);
        sharded = false;
        m.shards = 1;
    }
    if (s->shards > 0 && m.shards != s->shards)
        violation(&nv, onv, fctx, "sku=%s: shards=%lld, expected %lld (--shards)", sku,
                  (long long)m.shards, (long long)s->shards);
    int64_t left = -1;
    bool have_left;
    if (sharded) {
        left = fs_shard_stock(v, sku, m.shards, m.have_total ? m.total : -1, shard_left, &have_left,
                              &nv, onv, fctx);
    } else {
        key(k, sizeof k, "fs", sku, "stock");
        redisReply *r = vcmd2(v, "GET", k);
        have_left = reply_int(r, &left);
        if (r)
            freeReplyObject(r);
        if (!have_left)
            violation(&nv, onv, fctx, "sku=%s: %s missing or not an integer in Redis", sku,
                      "stock");
    }

    /* Database: the sale and its orders (the shards column came with stock shards). */
    int have_shards_col = 1;
    if (dbq(v, &sale, NULL, "SELECT stock_total, shards FROM flashsales WHERE sku = $1", 1, sku) !=
        0) {
        have_shards_col = 0;
        if (dbq(v, &sale, &err, "SELECT stock_total FROM flashsales WHERE sku = $1", 1, sku) != 0) {
            violation(&nv, onv, fctx, "sku=%s: database query failed: %s", sku,
                      err.data ? err.data : "?");
            goto out;
        }
    }
    if (dbq(v, &orders, &err, "SELECT order_id, user_id FROM orders WHERE sku = $1", 1, sku) != 0) {
        violation(&nv, onv, fctx, "sku=%s: database query failed: %s", sku,
                  err.data ? err.data : "?");
        goto out;
    }
    int64_t total_db = sale.n == 1 ? cell_int(&sale, 0, 0, -1) : -1;
    if (sale.n != 1)
        violation(&nv, onv, fctx, "sku=%s: %d rows in flashsales (expected 1)", sku, sale.n);
    if (m.have_total && sale.n == 1 && total_db != m.total)
        violation(&nv, onv, fctx, "sku=%s: stock_total differs: redis=%lld db=%lld", sku,
                  (long long)m.total, (long long)total_db);
    if (have_shards_col && sale.n == 1 && cell_int(&sale, 0, 1, 1) != m.shards)
        violation(&nv, onv, fctx, "sku=%s: shards differ: redis=%lld db=%lld", sku,
                  (long long)m.shards, (long long)cell_int(&sale, 0, 1, 1));
    int64_t total = m.have_total ? m.total : total_db;
    if (s->stock >= 0 && total >= 0 && total != s->stock)
        violation(&nv, onv, fctx, "sku=%s: stock_total=%lld but the sale was created with %lld",
                  sku, (long long)total, (long long)s->stock);
    int64_t norders = orders.n;
    if (have_left && total >= 0) {
        if (left < 0 || left > total)
            violation(&nv, onv, fctx, "sku=%s: stock_left=%lld outside [0, %lld]", sku,
                      (long long)left, (long long)total);
        if (norders != total - left)
            violation(&nv, onv, fctx,
                      "sku=%s: orders in db=%lld != stock_total-stock_left=%lld-%lld", sku,
                      (long long)norders, (long long)total, (long long)left);
        if (s->saw_sold_out && left != 0)
            violation(&nv, onv, fctx, "sku=%s: a client was told sold_out but stock_left=%lld", sku,
                      (long long)left);
    }
    if (total >= 0 && norders > total)
        violation(&nv, onv, fctx, "sku=%s: OVERSELL: %lld orders for stock %lld", sku,
                  (long long)norders, (long long)total);
    /* Every user who asked got an order or was told sold out: orders == min(stock, askers). */
    if (s->asked > 0 && total >= 0) {
        int64_t want = s->asked < total ? s->asked : total;
        if (norders != want)
            violation(&nv, onv, fctx,
                      "sku=%s: %lld orders in db != min(stock %lld, users who asked %lld)", sku,
                      (long long)norders, (long long)total, (long long)s->asked);
    }

    /* No user twice, no order id twice (db sorted by user). */
    db = strata_calloc((size_t)norders + 1, sizeof *db);
    if (!db)
        goto out;
    for (int i = 0; i < orders.n; i++) {
        db[i].k = cell(&orders, i, 1) ? cell(&orders, i, 1) : "";
        db[i].v = cell(&orders, i, 0) ? cell(&orders, i, 0) : "";
    }
    qsort(db, (size_t)norders, sizeof *db, pair_cmp);
    for (int64_t i = 1; i < norders; i++)
        if (strcmp(db[i].k, db[i - 1].k) == 0)
            violation(&nv, onv, fctx, "sku=%s: user %s holds two orders (%s, %s)", sku, db[i].k,
                      db[i - 1].v, db[i].v);
    {
        pair *byid = strata_calloc((size_t)norders + 1, sizeof *byid);
        if (!byid)
            goto out;
        for (int64_t i = 0; i < norders; i++)
            byid[i] = (pair){db[i].v, db[i].k, 0};
        qsort(byid, (size_t)norders, sizeof *byid, pair_cmp);
        for (int64_t i = 1; i < norders; i++)
            if (strcmp(byid[i].k, byid[i - 1].k) == 0)
                violation(&nv, onv, fctx, "sku=%s: order id %s stored twice", sku, byid[i].k);
        /* Every order id a client was given is in the database exactly once, for that user. */
        for (size_t i = 0; i < s->n; i++) {
            const pair *p = pair_find(byid, (size_t)norders, s->order_ids[i]);
            if (!p)
                violation(&nv, onv, fctx, "sku=%s: acknowledged order %s (user %s) not in db", sku,
                          s->order_ids[i], s->users[i]);
            else if (strcmp(p->v, s->users[i]) != 0)
                violation(&nv, onv, fctx, "sku=%s: order %s belongs to %s in db, given to %s", sku,
                          s->order_ids[i], p->v, s->users[i]);
        }
        strata_free(byid);
    }

    /* Clients: one order id per user; distinct buyers vs orders. */
    seen = strata_calloc(s->n + 1, sizeof *seen);
    if (!seen)
        goto out;
    for (size_t i = 0; i < s->n; i++)
        seen[i] = (pair){s->users[i], s->order_ids[i], 0};
    qsort(seen, s->n, sizeof *seen, pair_cmp);
    int64_t distinct = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (i == 0 || strcmp(seen[i].k, seen[i - 1].k) != 0)
            distinct++;
        else if (strcmp(seen[i].v, seen[i - 1].v) != 0)
            violation(&nv, onv, fctx, "sku=%s: user %s was given two orders (%s, %s)", sku,
                      seen[i].k, seen[i - 1].v, seen[i].v);
    }
    if (s->complete && distinct != norders)
        violation(&nv, onv, fctx,
                  "sku=%s: %lld distinct buyers were acknowledged but db holds %lld orders "
                  "(every request got a definite answer)",
                  sku, (long long)distinct, (long long)norders);
    else if (distinct > norders)
        violation(&nv, onv, fctx, "sku=%s: %lld distinct buyers acknowledged, only %lld orders",
                  sku, (long long)distinct, (long long)norders);

    if (sharded) {
        fs_check_shards(v, sku, &m, shard_left, have_left, db, norders, &nv, onv, fctx);
        goto out;
    }
    /* Redis buyers hash == database orders. */
    key(k, sizeof k, "fs", sku, "buyers");
    hr = vcmd2(v, "HGETALL", k);
    if (!hr || hr->type != REDIS_REPLY_ARRAY || hr->elements % 2) {
        violation(&nv, onv, fctx, "sku=%s: HGETALL buyers failed", sku);
        goto out;
    }
    nredis = hr->elements / 2;
    if ((int64_t)nredis != norders)
        violation(&nv, onv, fctx, "sku=%s: HLEN buyers=%zu != orders in db=%lld", sku, nredis,
                  (long long)norders);
    redis_b = strata_calloc(nredis + 1, sizeof *redis_b);
    if (!redis_b)
        goto out;
    for (size_t i = 0; i < nredis; i++)
        redis_b[i] = (pair){hr->element[2 * i]->str ? hr->element[2 * i]->str : "",
                            hr->element[2 * i + 1]->str ? hr->element[2 * i + 1]->str : "", 0};
    qsort(redis_b, nredis, sizeof *redis_b, pair_cmp);
    for (int64_t i = 0; i < norders; i++) {
        const pair *p = pair_find(redis_b, nredis, db[i].k);
        if (!p)
            violation(&nv, onv, fctx, "sku=%s: order %s of user %s in db but not in buyers", sku,
                      db[i].v, db[i].k);
        else if (strcmp(p->v, db[i].v) != 0)
            violation(&nv, onv, fctx, "sku=%s: user %s: buyers says %s, db says %s", sku, db[i].k,
                      p->v, db[i].v);
    }
out:
    if (hr)
        freeReplyObject(hr);
    strata_free(redis_b);
    strata_free(seen);
    strata_free(db);
    rows_free(&sale);
    rows_free(&orders);
    strata_buf_free(&err);
    return nv;
}

/* ---- red packets ------------------------------------------------------------------- */

static bool rp_drained(lg_verify *v, const lg_rp_seen *s, int64_t *count) {
    char k[160];
    key(k, sizeof k, "rp", s->id, "grabs");
    redisReply *r = vcmd2(v, "HLEN", k);
    int64_t hlen = 0;
    bool ok = reply_int(r, &hlen);
    if (r)
        freeReplyObject(r);
    if (!ok)
        return false;
    rows db;
    if (dbq(v, &db, NULL, "SELECT user_id FROM grabs WHERE packet_id = $1", 1, s->id) != 0)
        return false;
    *count += hlen + db.n;
    bool drained = db.n >= hlen && rows_hold_all(&db, s->users, s->n);
    rows_free(&db);
    if (!drained)
        return false;
    /* An expired packet's refund must be recorded too. */
    key(k, sizeof k, "rp", s->id, "meta");
    const char *argv[] = {"HGET", k, "status"};
    r = vcmd(v, 3, argv);
    bool expired = r && r->type == REDIS_REPLY_STRING && strcmp(r->str, "expired") == 0;
    if (r)
        freeReplyObject(r);
    if (expired) {
        if (dbq(v, &db, NULL, "SELECT status FROM redpackets WHERE id = $1", 1, s->id) != 0)
            return false;
        drained = db.n == 1 && cell(&db, 0, 0) && strcmp(cell(&db, 0, 0), "expired") == 0;
        rows_free(&db);
    }
    return drained;
}

static bool rp_drained_at(lg_verify *v, const void *items, size_t i, int64_t *count) {
    return rp_drained(v, &((const lg_rp_seen *)items)[i], count);
}

bool lg_verify_rp_drain(lg_verify *v, const lg_rp_seen *s, size_t n, int64_t drain_ms) {
    return drain_loop(v, drain_ms, n, rp_drained_at, s);
}

int lg_verify_rp(lg_verify *v, const lg_rp_seen *s, lg_violation_fn onv, void *fctx) {
    int nv = 0;
    const char *id = s->id;
    char k[160];
    strata_buf err = STRATA_BUF_INIT;
    rows pk = {0}, grabs = {0};
    pair *db = NULL, *seen = NULL, *rg = NULL;
    redisReply *hr = NULL, *lr = NULL;

    /* Redis meta. */
    key(k, sizeof k, "rp", id, "meta");
    bool ok_total, ok_count, ok_gc, ok_gn, ok_ref;
    int64_t total = hget_int(v, k, "total_cents", &ok_total);
    int64_t count = hget_int(v, k, "count", &ok_count);
    int64_t grabbed_cents = hget_int(v, k, "grabbed_cents", &ok_gc);
    int64_t grabbed_count = hget_int(v, k, "grabbed_count", &ok_gn);
    int64_t refunded_r = hget_int(v, k, "refunded_cents", &ok_ref);
    const char *argv[] = {"HGET", k, "status"};
    redisReply *sr = vcmd(v, 3, argv);
    char status_r[32] = "";
    if (sr && sr->type == REDIS_REPLY_STRING)
        snprintf(status_r, sizeof status_r, "%s", sr->str);
    if (sr)
        freeReplyObject(sr);
    if (!ok_total || !ok_count)
        violation(&nv, onv, fctx, "packet=%s: meta total_cents/count missing in Redis", id);

    /* Database. */
    if (dbq(v, &pk, &err,
            "SELECT total_cents, count, status, refunded_cents FROM redpackets WHERE id = $1", 1,
            id) != 0 ||
        dbq(v, &grabs, &err, "SELECT user_id, amount_cents FROM grabs WHERE packet_id = $1", 1,
            id) != 0) {
        violation(&nv, onv, fctx, "packet=%s: database query failed: %s", id,
                  err.data ? err.data : "?");
        goto out;
    }
    if (pk.n != 1) {
        violation(&nv, onv, fctx, "packet=%s: %d rows in redpackets (expected 1)", id, pk.n);
        goto out;
    }
    int64_t total_db = cell_int(&pk, 0, 0, -1), count_db = cell_int(&pk, 0, 1, -1);
    const char *status_db = cell(&pk, 0, 2) ? cell(&pk, 0, 2) : "";
    int64_t refunded_db = cell_int(&pk, 0, 3, 0);
    if (ok_total && total != total_db)
        violation(&nv, onv, fctx, "packet=%s: total_cents redis=%lld db=%lld", id, (long long)total,
                  (long long)total_db);
    if (ok_count && count != count_db)
        violation(&nv, onv, fctx, "packet=%s: count redis=%lld db=%lld", id, (long long)count,
                  (long long)count_db);
    if (!ok_total)
        total = total_db;
    if (!ok_count)
        count = count_db;
    if (s->total_cents >= 0 && total != s->total_cents)
        violation(&nv, onv, fctx, "packet=%s: total_cents=%lld, created with %lld", id,
                  (long long)total, (long long)s->total_cents);
    if (s->count >= 0 && count != s->count)
        violation(&nv, onv, fctx, "packet=%s: count=%lld, created with %lld", id, (long long)count,
                  (long long)s->count);

    /* Database grabs: shares >= 1, one per user, count and sum bounded. */
    int64_t ngrabs = grabs.n, sum_db = 0;
    db = strata_calloc((size_t)ngrabs + 1, sizeof *db);
    if (!db)
        goto out;
    for (int i = 0; i < grabs.n; i++) {
        db[i].k = cell(&grabs, i, 0) ? cell(&grabs, i, 0) : "";
        db[i].n = cell_int(&grabs, i, 1, 0);
        if (db[i].n < 1)
            violation(&nv, onv, fctx, "packet=%s: user %s has a share of %lld cents in db", id,
                      db[i].k, (long long)db[i].n);
        sum_db += db[i].n;
    }
    qsort(db, (size_t)ngrabs, sizeof *db, pair_cmp);
    for (int64_t i = 1; i < ngrabs; i++)
        if (strcmp(db[i].k, db[i - 1].k) == 0)
            violation(&nv, onv, fctx, "packet=%s: user %s grabbed twice in db", id, db[i].k);
    if (count >= 0 && ngrabs > count)
        violation(&nv, onv, fctx, "packet=%s: %lld grabs for %lld shares", id, (long long)ngrabs,
                  (long long)count);
    bool expired = strcmp(status_db, "expired") == 0 || strcmp(status_r, "expired") == 0;
    if (expired) {
        if (sum_db + refunded_db != total)
            violation(&nv, onv, fctx,
                      "packet=%s: expired: grabs %lld + refunded %lld != total %lld (db)", id,
                      (long long)sum_db, (long long)refunded_db, (long long)total);
        if (ok_ref && refunded_r != refunded_db)
            violation(&nv, onv, fctx, "packet=%s: refunded_cents redis=%lld db=%lld", id,
                      (long long)refunded_r, (long long)refunded_db);
    } else if (sum_db + refunded_db > total)
        violation(&nv, onv, fctx, "packet=%s: open: grabs %lld + refunded %lld > total %lld", id,
                  (long long)sum_db, (long long)refunded_db, (long long)total);

    /* Redis grabs and remaining shares. */
    key(k, sizeof k, "rp", id, "grabs");
    hr = vcmd2(v, "HGETALL", k);
    key(k, sizeof k, "rp", id, "shares");
    const char *largv[] = {"LRANGE", k, "0", "-1"};
    lr = vcmd(v, 4, largv);
    if (!hr || hr->type != REDIS_REPLY_ARRAY || hr->elements % 2 || !lr ||
        lr->type != REDIS_REPLY_ARRAY) {
        violation(&nv, onv, fctx, "packet=%s: reading grabs/shares from Redis failed", id);
        goto out;
    }
    size_t nr = hr->elements / 2;
    int64_t sum_r = 0, sum_left = 0;
    rg = strata_calloc(nr + 1, sizeof *rg);
    if (!rg)
        goto out;
    for (size_t i = 0; i < nr; i++) {
        int64_t amt = 0;
        if (!reply_int(hr->element[2 * i + 1], &amt) || amt < 1)
            violation(&nv, onv, fctx, "packet=%s: bad share in Redis grabs for %s", id,
                      hr->element[2 * i]->str ? hr->element[2 * i]->str : "?");
        rg[i] = (pair){hr->element[2 * i]->str ? hr->element[2 * i]->str : "", NULL, amt};
        sum_r += amt;
    }
    qsort(rg, nr, sizeof *rg, pair_cmp);
    for (size_t i = 0; i < lr->elements; i++) {
        int64_t amt = 0;
        if (!reply_int(lr->element[i], &amt) || amt < 1)
            violation(&nv, onv, fctx, "packet=%s: bad ungrabbed share in Redis at index %zu", id,
                      i);
        sum_left += amt;
    }
    if ((int64_t)nr != ngrabs)
        violation(&nv, onv, fctx, "packet=%s: grabs redis=%zu db=%lld", id, nr, (long long)ngrabs);
    if (ok_gn && grabbed_count != (int64_t)nr)
        violation(&nv, onv, fctx, "packet=%s: meta grabbed_count=%lld, HLEN grabs=%zu", id,
                  (long long)grabbed_count, nr);
    if (ok_gc && grabbed_cents != sum_r)
        violation(&nv, onv, fctx, "packet=%s: meta grabbed_cents=%lld, sum of grabs=%lld", id,
                  (long long)grabbed_cents, (long long)sum_r);
    if (!expired) {
        if (sum_r + sum_left != total)
            violation(&nv, onv, fctx,
                      "packet=%s: open: grabbed %lld + ungrabbed %lld != total %lld (redis)", id,
                      (long long)sum_r, (long long)sum_left, (long long)total);
        if (count >= 0 && (int64_t)(nr + lr->elements) != count)
            violation(&nv, onv, fctx, "packet=%s: open: %zu grabs + %zu shares left != count %lld",
                      id, nr, lr->elements, (long long)count);
        if (s->saw_gone && lr->elements > 0)
            violation(&nv, onv, fctx,
                      "packet=%s: a client was told gone but %zu shares are left (open)", id,
                      lr->elements);
    } else if (ok_ref && sum_r + refunded_r != total)
        violation(&nv, onv, fctx,
                  "packet=%s: expired: grabbed %lld + refunded %lld != total %lld (redis)", id,
                  (long long)sum_r, (long long)refunded_r, (long long)total);
    for (int64_t i = 0; i < ngrabs; i++) {
        const pair *p = pair_find(rg, nr, db[i].k);
        if (!p)
            violation(&nv, onv, fctx, "packet=%s: user %s grab in db, not in Redis", id, db[i].k);
        else if (p->n != db[i].n)
            violation(&nv, onv, fctx, "packet=%s: user %s: redis %lld cents, db %lld cents", id,
                      db[i].k, (long long)p->n, (long long)db[i].n);
    }

    /* Clients: one amount per user, equal to the stored one. */
    seen = strata_calloc(s->n + 1, sizeof *seen);
    if (!seen)
        goto out;
    for (size_t i = 0; i < s->n; i++)
        seen[i] = (pair){s->users[i], NULL, s->amounts[i]};
    qsort(seen, s->n, sizeof *seen, pair_cmp);
    int64_t distinct = 0;
    for (size_t i = 0; i < s->n; i++) {
        bool first = i == 0 || strcmp(seen[i].k, seen[i - 1].k) != 0;
        if (!first) {
            if (seen[i].n != seen[i - 1].n)
                violation(&nv, onv, fctx, "packet=%s: user %s was given %lld and %lld cents", id,
                          seen[i].k, (long long)seen[i - 1].n, (long long)seen[i].n);
            continue;
        }
        distinct++;
        const pair *p = pair_find(db, (size_t)ngrabs, seen[i].k);
        if (!p)
            violation(&nv, onv, fctx, "packet=%s: acknowledged grab of %s (%lld cents) not in db",
                      id, seen[i].k, (long long)seen[i].n);
        else if (p->n != seen[i].n)
            violation(&nv, onv, fctx, "packet=%s: user %s was given %lld cents, db says %lld", id,
                      seen[i].k, (long long)seen[i].n, (long long)p->n);
    }
    if (s->complete && distinct != ngrabs)
        violation(&nv, onv, fctx,
                  "packet=%s: %lld distinct grabbers acknowledged but db holds %lld grabs "
                  "(every request got a definite answer)",
                  id, (long long)distinct, (long long)ngrabs);
out:
    if (hr)
        freeReplyObject(hr);
    if (lr)
        freeReplyObject(lr);
    strata_free(rg);
    strata_free(seen);
    strata_free(db);
    rows_free(&pk);
    rows_free(&grabs);
    strata_buf_free(&err);
    return nv;
}
