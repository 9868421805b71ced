/*
 * db_conn.c: the connection pool, prepared-statement cache, portable
 * parameterised queries, transactions, error mapping and async submit of
 * strata/db.h.
 *
 * The pool is a bulkhead: a fixed array of connection slots, a stack of free
 * slots under one mutex, and a condition variable (CLOCK_MONOTONIC) that
 * borrowers wait on with a deadline.  Only `max_waiters` threads may wait;
 * the next one is turned away at once (STRATA_EBACKPRESSURE) so a database
 * that slows down cannot tie up every thread of the process.  Connections are
 * opened lazily by the borrower, outside the mutex.  A PostgreSQL connection
 * whose server went away is marked broken, closed on release and reopened by
 * the next borrower; the first connection that sees the loss also bumps a
 * pool-wide generation, so the other idle connections (which died with the
 * same server) are reopened before use instead of each failing once.
 *
 * Placeholders are $1..$n on both backends: PostgreSQL natively; SQLite reads
 * "$1" as a named parameter, so each is bound by name
 * (sqlite3_bind_parameter_index) and the order in which they appear in the
 * text does not matter.  Statements are prepared once per connection and
 * kept in a small LRU cache keyed by the SQL text (pointer first, then
 * strcmp: most SQL is a string constant).
 *
 * PostgreSQL calls use libpq's asynchronous API with poll(2) and a deadline
 * (query_timeout_ms), so a hung server gives STRATA_ETIMEDOUT instead of a
 * thread stuck forever; the connection is then abandoned (its state is
 * unknown).  Results are copied into one allocation per result through the
 * strata allocator (so fault sweeps reach them); bytea comes back in text
 * form ("\x" hex) and is decoded, so BLOBs read the same on both backends.
 *
 * Async: strata_db_submit() runs the job on libuv's thread pool
 * (uv_queue_work) with a connection borrowed there, and the done callback on
 * the loop.  The thread pool is shared with libuv's file system work, so the
 * borrow is bounded by acquire_timeout_ms and the number of jobs in flight by
 * max_async.
 */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db_internal.h"
#include "strata/alloc.h"
#include "strata/status.h"

/* ---- time ---- */

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * STRATA_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* ---- error mapping ---- */

static int map_sqlite(int rc) {
    switch (rc) {
    case SQLITE_CONSTRAINT_PRIMARYKEY:
    case SQLITE_CONSTRAINT_UNIQUE: return STRATA_EEXIST;
    default: break;
    }
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT: return STRATA_ECONFLICT;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return STRATA_ETIMEDOUT;
    case SQLITE_NOMEM: return STRATA_ENOMEM;
    case SQLITE_TOOBIG: return STRATA_ETOOBIG;
    case SQLITE_CANTOPEN: return STRATA_EUNAVAIL;
    case SQLITE_ERROR:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
    case SQLITE_MISUSE: return STRATA_EINVAL;
    default: return STRATA_EIO;
    }
}

static int lite_fail(strata_db_conn *c, int rc, strata_buf *err) {
    if (err)
        strata_buf_printf(err, "sqlite: %s", sqlite3_errmsg(c->lite));
    return map_sqlite(rc);
}

static void mark_lost(strata_db_conn *c) {
    if (!c->broken) {
        c->broken = true;
        atomic_fetch_add(&c->db->loss_gen, 1);
    }
}

/* Maps a failed PostgreSQL result (r may be NULL: no result at all). */
static int pg_fail(strata_db_conn *c, PGresult *r, strata_buf *err) {
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (err)
        strata_buf_printf(err, "postgres: %s",
                          r && *PQresultErrorMessage(r) ? PQresultErrorMessage(r)
                                                        : PQerrorMessage(c->pg));
    if (PQstatus(c->pg) != CONNECTION_OK || !state) {
        mark_lost(c);
        return STRATA_EUNAVAIL;
    }
    if (strcmp(state, "23505") == 0)
        return STRATA_EEXIST;
    if (strncmp(state, "23", 2) == 0 || strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0)
        return STRATA_ECONFLICT;
    if (strcmp(state, "57014") == 0 || strcmp(state, "55P03") == 0)
        return STRATA_ETIMEDOUT;
    if (strcmp(state, "08P01") == 0) /* protocol violation: our request was bad */
        return STRATA_EINVAL;
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0) {
        mark_lost(c);
        return STRATA_EUNAVAIL;
    }
    if (strcmp(state, "53200") == 0)
        return STRATA_ENOMEM;
    if (strncmp(state, "22", 2) == 0 || strncmp(state, "42", 2) == 0 ||
        strncmp(state, "25", 2) == 0 || strncmp(state, "0A", 2) == 0)
        return STRATA_EINVAL;
    return STRATA_EIO;
}

/* ---- PostgreSQL with a deadline ------------------------------------------ */

/*
 * Collects every result of the command just sent, waiting at most until
 * `deadline`; *out gets the last result (an error result wins).  On a
 * timeout the connection is abandoned (broken) and STRATA_ETIMEDOUT returned.
 */
static int pg_collect(strata_db_conn *c, uint64_t deadline, PGresult **out, strata_buf *err) {
    PGresult *keep = NULL;
    for (;;) {
        while (PQisBusy(c->pg)) {
            uint64_t now = mono_ns();
            if (now >= deadline) {
                PQclear(keep);
                c->broken = true; /* state unknown; the server itself may be fine */
                if (err)
                    strata_buf_printf(err, "postgres: no answer within %d ms",
                                      c->db->cfg.query_timeout_ms);
                return STRATA_ETIMEDOUT;
            }
            struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN};
            int ms = (int)((deadline - now + STRATA_NS_PER_MS - 1) / STRATA_NS_PER_MS);
            int n = poll(&p, 1, ms);
            if (n < 0 && errno != EINTR) {
                PQclear(keep);
                mark_lost(c);
                if (err)
                    strata_buf_printf(err, "postgres: poll: %s", strerror(errno));
                return STRATA_EUNAVAIL;
            }
            if (n > 0 && !PQconsumeInput(c->pg)) {
                PQclear(keep);
                return pg_fail(c, NULL, err);
            }
        }
        PGresult *r = PQgetResult(c->pg);
        if (!r)
            break;
        ExecStatusType st = PQresultStatus(r);
        bool bad = st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;
        if (keep && !bad) {
            ExecStatusType kst = PQresultStatus(keep);
            if (kst == PGRES_FATAL_ERROR || kst == PGRES_BAD_RESPONSE) {
                PQclear(r);
                continue;
            }
        }
        PQclear(keep);
        keep = r;
    }
    if (!keep)
        return pg_fail(c, NULL, err);
    ExecStatusType st = PQresultStatus(keep);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        int rc = pg_fail(c, keep, err);
        PQclear(keep);
        return rc;
    }
    *out = keep;
    return STRATA_OK;
}

static uint64_t query_deadline(strata_db_conn *c) {
    return mono_ns() + (uint64_t)c->db->cfg.query_timeout_ms * STRATA_NS_PER_MS;
}

/* A simple-protocol command (no params, may hold several statements). */
static int pg_exec(strata_db_conn *c, const char *sql, PGresult **out, strata_buf *err) {
    if (!PQsendQuery(c->pg, sql))
        return pg_fail(c, NULL, err);
    PGresult *r = NULL;
    int rc = pg_collect(c, query_deadline(c), &r, err);
    if (out)
        *out = r;
    else
        PQclear(r);
    return rc;
}

/* ---- connections ---- */

static void stmt_drop(strata_db_conn *c, db_stmt *s, bool tell_server) {
    if (s->lite)
        sqlite3_finalize(s->lite);
    if (tell_server && c->pg && !c->broken && s->name[0]) {
        char q[64];
        snprintf(q, sizeof q, "DEALLOCATE %s", s->name);
        pg_exec(c, q, NULL, NULL); /* best effort: a leftover is harmless */
    }
    strata_free(s->sql);
    memset(s, 0, sizeof *s);
}

static void disconnect(strata_db_conn *c) {
    for (int i = 0; i < c->db->cfg.stmt_cache; i++)
        stmt_drop(c, &c->stmts[i], false);
    if (c->lite)
        sqlite3_close_v2(c->lite);
    if (c->pg)
        PQfinish(c->pg);
    c->lite = NULL;
    c->pg = NULL;
    c->broken = false;
    c->in_tx = false;
}

int db__connect(strata_db_conn *c, strata_buf *err) {
    strata_db *db = c->db;
    disconnect(c);
    if (db->kind == STRATA_DB_SQLITE) {
        int rc =
            sqlite3_open_v2(db->path, &c->lite,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc != SQLITE_OK) {
            if (err)
                strata_buf_printf(err, "cannot open SQLite database %s: %s", db->path,
                                  c->lite ? sqlite3_errmsg(c->lite) : "out of memory");
            disconnect(c);
            return rc == SQLITE_NOMEM ? STRATA_ENOMEM : STRATA_EUNAVAIL;
        }
        sqlite3_extended_result_codes(c->lite, 1);
        sqlite3_busy_timeout(c->lite, db->cfg.busy_timeout_ms);
        /* WAL: readers never block the writer; synchronous=FULL: a commit is
         * on disk (WAL fsynced) before it returns: see docs/notes/db.md. */
        /* Switching a brand-new file to WAL takes an exclusive lock, and SQLite may answer
         * SQLITE_BUSY at once, without its busy handler, when another connection opens the same
         * new file at that moment (lock-upgrade deadlock avoidance): retry within the timeout. */
        uint64_t until = (mono_ns() / 1000000u) + (uint64_t)db->cfg.busy_timeout_ms;
        for (;;) {
            strata_buf tmp = STRATA_BUF_INIT;
            rc = strata_db_exec(c,
                                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                                "PRAGMA foreign_keys=ON",
                                &tmp);
            if (rc != STRATA_ETIMEDOUT || (mono_ns() / 1000000u) >= until) {
                if (rc != STRATA_OK && err && tmp.data)
                    strata_buf_puts(err, tmp.data);
                strata_buf_free(&tmp);
                break;
            }
            strata_buf_free(&tmp);
            struct timespec d = {0, 10 * 1000 * 1000};
            nanosleep(&d, NULL);
        }
        if (rc != STRATA_OK) {
            disconnect(c);
            return rc;
        }
    } else {
        char timeout[16], opts[96];
        snprintf(timeout, sizeof timeout, "%d", db->cfg.connect_timeout_s);
        snprintf(opts, sizeof opts, "-c client_min_messages=warning -c statement_timeout=%d",
                 db->cfg.query_timeout_ms);
        const char *keys[] = {"dbname", "connect_timeout", "options", "application_name", NULL};
        const char *vals[] = {db->url, timeout, opts, "strata", NULL};
        c->pg = PQconnectdbParams(keys, vals, 1);
        if (!c->pg || PQstatus(c->pg) != CONNECTION_OK) {
            if (err)
                strata_buf_printf(err, "cannot connect to PostgreSQL: %s",
                                  c->pg ? PQerrorMessage(c->pg) : "out of memory");
            disconnect(c);
            return STRATA_EUNAVAIL;
        }
    }
    c->gen = atomic_load(&db->loss_gen);
    return STRATA_OK;
}

static bool connected(const strata_db_conn *c) { return c->lite || c->pg; }

int db__pool_init(strata_db *db, strata_buf *err) {
    (void)err;
    int n = db->cfg.pool_size;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&db->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&db->mu, NULL);
    db->pool_ready = true;
    db->conns = strata_calloc((size_t)n, sizeof *db->conns);
    db->free_slots = strata_calloc((size_t)n, sizeof *db->free_slots);
    if (!db->conns || !db->free_slots)
        return STRATA_ENOMEM;
    for (int i = 0; i < n; i++) {
        strata_db_conn *c = &db->conns[i];
        c->db = db;
        c->slot = i;
        c->stmts = strata_calloc((size_t)db->cfg.stmt_cache, sizeof *c->stmts);
        if (!c->stmts)
            return STRATA_ENOMEM;
        db->free_slots[n - 1 - i] = i; /* slot 0 is handed out first */
    }
    db->nfree = n;
    return STRATA_OK;
}

void db__pool_deinit(strata_db *db) {
    if (db->conns) {
        for (int i = 0; i < db->cfg.pool_size; i++) {
            if (db->conns[i].stmts)
                disconnect(&db->conns[i]);
            strata_free(db->conns[i].stmts);
        }
    }
    if (db->pool_ready) {
        pthread_mutex_destroy(&db->mu);
        pthread_cond_destroy(&db->cv);
    }
    strata_free(db->conns);
    strata_free(db->free_slots);
    db->conns = NULL;
    db->free_slots = NULL;
}

int strata_db_acquire_timeout(strata_db *db, int timeout_ms, strata_db_conn **out) {
    if (!db || !out || timeout_ms < 0)
        return STRATA_EINVAL;
    *out = NULL;
    pthread_mutex_lock(&db->mu);
    if (db->nfree == 0) {
        if (timeout_ms == 0 || db->waiters >= db->cfg.max_waiters) {
            pthread_mutex_unlock(&db->mu);
            return timeout_ms == 0 ? STRATA_ETIMEDOUT : STRATA_EBACKPRESSURE;
        }
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        db->waiters++;
        while (db->nfree == 0) {
            if (pthread_cond_timedwait(&db->cv, &db->mu, &dl) == ETIMEDOUT && db->nfree == 0)
                break;
        }
        db->waiters--;
        if (db->nfree == 0) {
            pthread_mutex_unlock(&db->mu);
            return STRATA_ETIMEDOUT;
        }
    }
    strata_db_conn *c = &db->conns[db->free_slots[--db->nfree]];
    pthread_mutex_unlock(&db->mu);

    if (!connected(c) || c->broken || (c->pg && c->gen != atomic_load(&db->loss_gen))) {
        int rc = db__connect(c, NULL);
        if (rc != STRATA_OK) {
            pthread_mutex_lock(&db->mu);
            db->free_slots[db->nfree++] = c->slot;
            pthread_cond_signal(&db->cv);
            pthread_mutex_unlock(&db->mu);
            return rc;
        }
    }
    *out = c;
    return STRATA_OK;
}

int strata_db_acquire(strata_db *db, strata_db_conn **out) {
    if (!db)
        return STRATA_EINVAL;
    return strata_db_acquire_timeout(db, db->cfg.acquire_timeout_ms, out);
}

void strata_db_release(strata_db_conn **cp) {
    if (!cp || !*cp)
        return;
    strata_db_conn *c = *cp;
    *cp = NULL;
    if (c->in_tx)
        strata_db_rollback(c);
    if (c->broken)
        disconnect(c);
    strata_db *db = c->db;
    pthread_mutex_lock(&db->mu);
    db->free_slots[db->nfree++] = c->slot;
    pthread_cond_signal(&db->cv);
    pthread_mutex_unlock(&db->mu);
}

strata_db_kind strata_db_conn_kind(const strata_db_conn *c) { return c->db->kind; }

void strata_db_get_stats(strata_db *db, strata_db_stats *out) {
    pthread_mutex_lock(&db->mu);
    out->pool_size = db->cfg.pool_size;
    out->in_use = db->cfg.pool_size - db->nfree;
    out->waiters = db->waiters;
    pthread_mutex_unlock(&db->mu);
    out->async_inflight = atomic_load(&db->async_inflight);
}

/* ---- results ---- */

typedef struct db_cell {
    size_t off, len;
    bool null;
} db_cell;

struct strata_db_result {
    int rows, cols;
    db_cell *cells;
    size_t cap;
    strata_buf data;
};

static strata_db_result *result_new(int cols) {
    strata_db_result *r = strata_calloc(1, sizeof *r);
    if (r)
        r->cols = cols;
    return r;
}

/* Appends one cell; rows are counted by the caller. */
static int result_cell(strata_db_result *r, size_t idx, const void *p, size_t len, bool null) {
    if (idx >= r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        while (cap <= idx)
            cap *= 2;
        db_cell *nc = strata_realloc(r->cells, cap * sizeof *nc);
        if (!nc)
            return STRATA_ENOMEM;
        r->cells = nc;
        r->cap = cap;
    }
    db_cell *cell = &r->cells[idx];
    cell->null = null;
    cell->off = r->data.len;
    cell->len = null ? 0 : len;
    if (!null) {
        if (strata_buf_append(&r->data, p ? p : "", len) != STRATA_OK ||
            strata_buf_append(&r->data, "", 1) != STRATA_OK) /* NUL after each cell */
            return STRATA_ENOMEM;
    }
    return STRATA_OK;
}

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* bytea text output "\x0a1b..." -> raw bytes appended as one cell. */
static int result_cell_bytea(strata_db_result *r, size_t idx, const char *s, size_t len) {
    if (len < 2 || s[0] != '\\' || s[1] != 'x' || (len - 2) % 2)
        return result_cell(r, idx, s, len, false); /* not hex form: as is */
    size_t n = (len - 2) / 2;
    int rc = result_cell(r, idx, NULL, 0, false);
    if (rc != STRATA_OK)
        return rc;
    /* overwrite: drop the NUL just added, then append decoded bytes + NUL */
    r->data.len = r->cells[idx].off;
    if (strata_buf_reserve(&r->data, n + 1) != STRATA_OK)
        return STRATA_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval((unsigned char)s[2 + 2 * i]), lo = hexval((unsigned char)s[3 + 2 * i]);
        if (hi < 0 || lo < 0)
            return STRATA_EPROTO;
        r->data.data[r->data.len++] = (char)(hi << 4 | lo);
    }
    r->data.data[r->data.len++] = '\0';
    r->data.data[r->data.len] = '\0';
    r->cells[idx].len = n;
    return STRATA_OK;
}

int strata_db_result_rows(const strata_db_result *r) { return r ? r->rows : 0; }
int strata_db_result_cols(const strata_db_result *r) { return r ? r->cols : 0; }

const char *strata_db_result_value(const strata_db_result *r, int row, int col, size_t *len) {
    if (len)
        *len = 0;
    if (!r || row < 0 || col < 0 || row >= r->rows || col >= r->cols)
        return NULL;
    const db_cell *c = &r->cells[(size_t)row * (size_t)r->cols + (size_t)col];
    if (c->null)
        return NULL;
    if (len)
        *len = c->len;
    return r->data.data + c->off;
}

int64_t strata_db_result_int64(const strata_db_result *r, int row, int col, int64_t dflt) {
    size_t len;
    const char *s = strata_db_result_value(r, row, col, &len);
    if (!s || len == 0 || len > 20)
        return dflt;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end != s + len)
        return dflt;
    return (int64_t)v;
}

void strata_db_result_free(strata_db_result **rp) {
    if (!rp || !*rp)
        return;
    strata_buf_free(&(*rp)->data);
    strata_free((*rp)->cells);
    strata_free(*rp);
    *rp = NULL;
}

/* ---- statement cache ---- */

static db_stmt *stmt_find(strata_db_conn *c, const char *sql) {
    int n = c->db->cfg.stmt_cache;
    for (int i = 0; i < n; i++)
        if (c->stmts[i].sql == sql)
            return &c->stmts[i];
    for (int i = 0; i < n; i++)
        if (c->stmts[i].sql && strcmp(c->stmts[i].sql, sql) == 0)
            return &c->stmts[i];
    return NULL;
}

static bool only_space(const char *s) {
    for (; *s; s++)
        if (!isspace((unsigned char)*s) && *s != ';')
            return false;
    return true;
}

static int stmt_prepare(strata_db_conn *c, const char *sql, db_stmt **out, strata_buf *err) {
    db_stmt *s = stmt_find(c, sql);
    if (s) {
        s->last_used = ++c->tick;
        *out = s;
        return STRATA_OK;
    }
    /* A free entry, or the least recently used one. */
    int n = c->db->cfg.stmt_cache;
    s = &c->stmts[0];
    for (int i = 0; i < n; i++) {
        if (!c->stmts[i].sql) {
            s = &c->stmts[i];
            break;
        }
        if (c->stmts[i].last_used < s->last_used)
            s = &c->stmts[i];
    }
    if (s->sql)
        stmt_drop(c, s, true);
    char *copy = strata_strdup(sql);
    if (!copy)
        return STRATA_ENOMEM;
    if (c->lite) {
        const char *tail = NULL;
        int rc = sqlite3_prepare_v3(c->lite, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->lite, &tail);
        if (rc != SQLITE_OK) {
            strata_free(copy);
            return lite_fail(c, rc, err);
        }
        if (!s->lite || (tail && !only_space(tail))) {
            sqlite3_finalize(s->lite);
            s->lite = NULL;
            strata_free(copy);
            if (err)
                strata_buf_puts(err, "strata_db_query takes exactly one statement");
            return STRATA_EINVAL;
        }
        s->nparams = sqlite3_bind_parameter_count(s->lite);
        for (int i = 1; i <= s->nparams; i++) {
            char name[16];
            snprintf(name, sizeof name, "$%d", i);
            if (sqlite3_bind_parameter_index(s->lite, name) == 0) {
                sqlite3_finalize(s->lite);
                s->lite = NULL;
                strata_free(copy);
                if (err)
                    strata_buf_printf(err, "parameters must be $1..$%d; %s is missing", s->nparams,
                                      name);
                return STRATA_EINVAL;
            }
        }
    } else {
        char name[24];
        snprintf(name, sizeof name, "strata_%u", c->next_name++);
        uint64_t dl = query_deadline(c);
        PGresult *r = NULL;
        int rc = PQsendPrepare(c->pg, name, sql, 0, NULL) ? pg_collect(c, dl, &r, err)
                                                          : pg_fail(c, NULL, err);
        PQclear(r);
        r = NULL;
        if (rc == STRATA_OK)
            rc = PQsendDescribePrepared(c->pg, name) ? pg_collect(c, dl, &r, err)
                                                     : pg_fail(c, NULL, err);
        if (rc != STRATA_OK) {
            strata_free(copy);
            return rc;
        }
        s->nparams = PQnparams(r);
        PQclear(r);
        memcpy(s->name, name, sizeof name);
    }
    s->sql = copy;
    s->last_used = ++c->tick;
    *out = s;
    return STRATA_OK;
}

/* ---- queries ---- */

static int lite_bind(strata_db_conn *c, db_stmt *s, const strata_db_param *p, int n,
                     strata_buf *err) {
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "$%d", i + 1);
        int idx = sqlite3_bind_parameter_index(s->lite, name);
        int rc;
        switch (p[i].type) {
        case STRATA_DB_T_NULL: rc = sqlite3_bind_null(s->lite, idx); break;
        case STRATA_DB_T_INT: rc = sqlite3_bind_int64(s->lite, idx, p[i].i); break;
        case STRATA_DB_T_TEXT:
            rc = sqlite3_bind_text64(s->lite, idx, p[i].p ? p[i].p : "", p[i].len, SQLITE_STATIC,
                                     SQLITE_UTF8);
            break;
        case STRATA_DB_T_BLOB:
            rc = sqlite3_bind_blob64(s->lite, idx, p[i].p ? p[i].p : "", p[i].len, SQLITE_STATIC);
            break;
        default: rc = SQLITE_MISUSE;
        }
        if (rc != SQLITE_OK) {
            sqlite3_clear_bindings(s->lite);
            return lite_fail(c, rc, err);
        }
    }
    return STRATA_OK;
}

static int lite_run(strata_db_conn *c, db_stmt *s, const strata_db_param *p, int n,
                    strata_db_result **out, int64_t *changes, strata_buf *err) {
    int rc = lite_bind(c, s, p, n, err);
    if (rc != STRATA_OK)
        return rc;
    strata_db_result *r = NULL;
    if (out && !(r = result_new(sqlite3_column_count(s->lite)))) {
        sqlite3_clear_bindings(s->lite);
        return STRATA_ENOMEM;
    }
    size_t idx = 0;
    int st;
    while ((st = sqlite3_step(s->lite)) == SQLITE_ROW) {
        if (!r)
            continue;
        for (int col = 0; col < r->cols && rc == STRATA_OK; col++) {
            int t = sqlite3_column_type(s->lite, col);
            if (t == SQLITE_NULL) {
                rc = result_cell(r, idx++, NULL, 0, true);
            } else if (t == SQLITE_BLOB) {
                const void *b = sqlite3_column_blob(s->lite, col);
                rc = result_cell(r, idx++, b, (size_t)sqlite3_column_bytes(s->lite, col), false);
            } else {
                const unsigned char *txt = sqlite3_column_text(s->lite, col);
                rc = result_cell(r, idx++, txt, (size_t)sqlite3_column_bytes(s->lite, col), false);
            }
        }
        if (rc != STRATA_OK)
            break;
        r->rows++;
    }
    if (rc == STRATA_OK && st != SQLITE_DONE)
        rc = lite_fail(c, st, err);
    if (rc == STRATA_OK && changes)
        *changes = sqlite3_stmt_readonly(s->lite) ? 0 : sqlite3_changes64(c->lite);
    sqlite3_reset(s->lite);
    sqlite3_clear_bindings(s->lite);
    if (rc != STRATA_OK) {
        strata_db_result_free(&r);
        return rc;
    }
    if (out)
        *out = r;
    return STRATA_OK;
}

static int pg_run(strata_db_conn *c, db_stmt *s, const strata_db_param *p, int n,
                  strata_db_result **out, int64_t *changes, strata_buf *err) {
    enum { SMALL = 16 };
    const char *vals_s[SMALL];
    int lens_s[SMALL], fmts_s[SMALL];
    char ints_s[SMALL][24];
    const char **vals = vals_s;
    int *lens = lens_s, *fmts = fmts_s;
    char(*ints)[24] = ints_s;
    void *heap = NULL;
    strata_buf texts = STRATA_BUF_INIT;
    int rc = STRATA_OK;
    if (n > SMALL) {
        size_t each = sizeof(char *) + 2 * sizeof(int) + 24;
        heap = strata_malloc((size_t)n * each);
        if (!heap)
            return STRATA_ENOMEM;
        ints = (char(*)[24])heap;
        vals = (const char **)((char *)heap + (size_t)n * 24);
        lens = (int *)((char *)vals + (size_t)n * sizeof(char *));
        fmts = lens + n;
    }
    /* Text parameters need NUL-terminated copies; record offsets, then point. */
    size_t offs[SMALL];
    for (int i = 0; i < n && rc == STRATA_OK; i++) {
        fmts[i] = 0;
        lens[i] = 0;
        vals[i] = NULL;
        switch (p[i].type) {
        case STRATA_DB_T_NULL: break;
        case STRATA_DB_T_INT:
            snprintf(ints[i], 24, "%lld", (long long)p[i].i);
            vals[i] = ints[i];
            break;
        case STRATA_DB_T_TEXT:
            if (p[i].len > 0x3fffffff) {
                rc = STRATA_ETOOBIG;
                break;
            }
            if (i < SMALL)
                offs[i] = texts.len;
            else
                lens[i] = (int)texts.len; /* temporarily: offset */
            if (strata_buf_append(&texts, p[i].p ? p[i].p : "", p[i].len) != STRATA_OK ||
                strata_buf_append(&texts, "", 1) != STRATA_OK)
                rc = STRATA_ENOMEM;
            break;
        case STRATA_DB_T_BLOB:
            if (p[i].len > 0x3fffffff) {
                rc = STRATA_ETOOBIG;
                break;
            }
            vals[i] = p[i].p ? p[i].p : "";
            lens[i] = (int)p[i].len;
            fmts[i] = 1;
            break;
        default: rc = STRATA_EINVAL;
        }
    }
    if (rc == STRATA_OK) {
        for (int i = 0; i < n; i++) {
            if (p[i].type != STRATA_DB_T_TEXT)
                continue;
            size_t off = i < SMALL ? offs[i] : (size_t)lens[i];
            vals[i] = texts.data + off;
            lens[i] = 0;
        }
    }
    PGresult *res = NULL;
    if (rc == STRATA_OK) {
        if (!PQsendQueryPrepared(c->pg, s->name, n, vals, lens, fmts, 0))
            rc = pg_fail(c, NULL, err);
        else
            rc = pg_collect(c, query_deadline(c), &res, err);
    }
    strata_buf_free(&texts);
    strata_free(heap);
    if (rc != STRATA_OK)
        return rc;
    if (changes) {
        const char *t = PQcmdTuples(res);
        *changes = *t ? strtoll(t, NULL, 10) : 0;
    }
    if (out) {
        int rows = PQntuples(res), cols = PQnfields(res);
        strata_db_result *r = result_new(cols);
        if (!r)
            rc = STRATA_ENOMEM;
        size_t idx = 0;
        for (int row = 0; row < rows && rc == STRATA_OK; row++) {
            for (int col = 0; col < cols && rc == STRATA_OK; col++) {
                if (PQgetisnull(res, row, col))
                    rc = result_cell(r, idx++, NULL, 0, true);
                else if (PQftype(res, col) == 17 /* BYTEAOID */)
                    rc = result_cell_bytea(r, idx++, PQgetvalue(res, row, col),
                                           (size_t)PQgetlength(res, row, col));
                else
                    rc = result_cell(r, idx++, PQgetvalue(res, row, col),
                                     (size_t)PQgetlength(res, row, col), false);
            }
            if (rc == STRATA_OK)
                r->rows++;
        }
        if (rc != STRATA_OK)
            strata_db_result_free(&r);
        else
            *out = r;
    }
    PQclear(res);
    return rc;
}

int strata_db_query(strata_db_conn *c, const char *sql, const strata_db_param *params, int nparams,
                    strata_db_result **out, int64_t *changes, strata_buf *err) {
    if (out)
        *out = NULL;
    if (changes)
        *changes = 0;
    if (!c || !sql || nparams < 0 || (nparams > 0 && !params))
        return STRATA_EINVAL;
    if (c->broken)
        return STRATA_EUNAVAIL;
    db_stmt *s = NULL;
    int rc = stmt_prepare(c, sql, &s, err);
    if (rc != STRATA_OK)
        return rc;
    if (s->nparams != nparams) {
        if (err)
            strata_buf_printf(err, "statement takes %d parameters, %d given", s->nparams, nparams);
        return STRATA_EINVAL;
    }
    if (c->lite)
        return lite_run(c, s, params, nparams, out, changes, err);
    return pg_run(c, s, params, nparams, out, changes, err);
}

int strata_db_exec(strata_db_conn *c, const char *sql, strata_buf *err) {
    if (!c || !sql)
        return STRATA_EINVAL;
    if (c->lite) {
        char *msg = NULL;
        int rc = sqlite3_exec(c->lite, sql, NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
            if (err)
                strata_buf_printf(err, "sqlite: %s", msg ? msg : sqlite3_errmsg(c->lite));
            sqlite3_free(msg);
            return map_sqlite(sqlite3_extended_errcode(c->lite));
        }
        return STRATA_OK;
    }
    if (!c->pg || c->broken)
        return STRATA_EUNAVAIL;
    return pg_exec(c, sql, NULL, err);
}

int db__query1_int(strata_db_conn *c, const char *sql, const strata_db_param *p, int n,
                   int64_t *val, bool *found, strata_buf *err) {
    strata_db_result *r = NULL;
    int rc = strata_db_query(c, sql, p, n, &r, NULL, err);
    if (rc != STRATA_OK)
        return rc;
    *found = strata_db_result_rows(r) > 0;
    *val = strata_db_result_int64(r, 0, 0, 0);
    strata_db_result_free(&r);
    return STRATA_OK;
}

/* ---- transactions ---- */

int strata_db_begin(strata_db_conn *c, strata_buf *err) {
    if (!c)
        return STRATA_EINVAL;
    if (c->in_tx) {
        if (err)
            strata_buf_puts(err, "a transaction is already open on this connection");
        return STRATA_EINVAL;
    }
    int rc = strata_db_exec(c, c->lite ? "BEGIN IMMEDIATE" : "BEGIN", err);
    if (rc == STRATA_OK)
        c->in_tx = true;
    return rc;
}

int strata_db_commit(strata_db_conn *c, strata_buf *err) {
    if (!c || !c->in_tx)
        return STRATA_EINVAL;
    if (c->lite) {
        int rc = strata_db_exec(c, "COMMIT", err);
        if (rc != STRATA_OK) {
            strata_db_rollback(c); /* e.g. SQLITE_BUSY on commit: give up the lock */
            return rc;
        }
        c->in_tx = false;
        return STRATA_OK;
    }
    PGresult *r = NULL;
    int rc = c->broken ? STRATA_EUNAVAIL : pg_exec(c, "COMMIT", &r, err);
    c->in_tx = false;
    if (rc == STRATA_EUNAVAIL || rc == STRATA_ETIMEDOUT) {
        /* The COMMIT may or may not have reached the server. */
        c->broken = true;
        return STRATA_EUNKNOWN;
    }
    if (rc == STRATA_OK && strcmp(PQcmdStatus(r), "ROLLBACK") == 0) {
        if (err)
            strata_buf_puts(err, "postgres: the transaction had failed and was rolled back");
        rc = STRATA_ECONFLICT;
    }
    PQclear(r);
    return rc;
}

int strata_db_rollback(strata_db_conn *c) {
    if (!c || !c->in_tx)
        return STRATA_OK;
    c->in_tx = false;
    if (c->lite) {
        /* sqlite3_exec allocates only through SQLite's allocator, never ours. */
        if (sqlite3_exec(c->lite, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK &&
            !sqlite3_get_autocommit(c->lite)) {
            c->broken = true;
            return STRATA_EIO;
        }
        return STRATA_OK;
    }
    if (c->broken)
        return STRATA_EUNAVAIL;
    int rc = pg_exec(c, "ROLLBACK", NULL, NULL);
    if (rc != STRATA_OK)
        c->broken = true;
    return rc;
}

/* ---- async ---- */

typedef struct db_work {
    uv_work_t req;
    strata_db *db;
    strata_db_job_fn job;
    strata_db_done_fn done;
    void *arg;
    int status;
} db_work;

static void work_cb(uv_work_t *req) {
    db_work *w = req->data;
    strata_db_conn *c = NULL;
    w->status = strata_db_acquire(w->db, &c);
    if (w->status != STRATA_OK)
        return;
    w->status = w->job(c, w->arg);
    strata_db_release(&c);
}

static void after_work_cb(uv_work_t *req, int status) {
    db_work *w = req->data;
    if (status == UV_ECANCELED)
        w->status = STRATA_ECANCELED;
    atomic_fetch_sub(&w->db->async_inflight, 1);
    strata_db_done_fn done = w->done;
    void *arg = w->arg;
    int st = w->status;
    strata_free(w);
    done(st, arg);
}

int strata_db_submit(strata_db *db, uv_loop_t *loop, strata_db_job_fn job, strata_db_done_fn done,
                     void *arg) {
    if (!db || !loop || !job || !done)
        return STRATA_EINVAL;
    if (atomic_fetch_add(&db->async_inflight, 1) >= db->cfg.max_async) {
        atomic_fetch_sub(&db->async_inflight, 1);
        return STRATA_EBACKPRESSURE;
    }
    db_work *w = strata_calloc(1, sizeof *w);
    if (!w) {
        atomic_fetch_sub(&db->async_inflight, 1);
        return STRATA_ENOMEM;
    }
    w->req.data = w;
    w->db = db;
    w->job = job;
    w->done = done;
    w->arg = arg;
    int rc = uv_queue_work(loop, &w->req, work_cb, after_work_cb);
    if (rc != 0) {
        strata_free(w);
        atomic_fetch_sub(&db->async_inflight, 1);
        return STRATA_EINTERNAL;
    }
    return STRATA_OK;
}
