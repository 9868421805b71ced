/*
 * strata/db.h: the source-of-truth database (SQLite embedded, PostgreSQL).
 *
 * One interface, two backends.  A strata_db is a bounded pool of connections
 * (a bulkhead) to one database; work borrows a connection, runs portable
 * parameterised SQL on it ($1..$n placeholders on both backends), and gives
 * it back.  On top of that sit the stores every scenario uses:
 *
 *   kv        versioned values for cache-aside data: the database assigns a
 *             monotonic version per key (kept across deletes by tombstones);
 *             optimistic writes with an expected version
 *   outbox    every kv put/delete inserts an invalidation row in the same
 *             transaction; a relay claims rows under a lease and marks them done
 *   events    idempotent write-behind apply keyed on an event id
 *   migrations per component, (component, version) recorded in the database
 *
 * Threads.  A strata_db is thread-safe.  A strata_db_conn is used by the one
 * thread that acquired it until it is released.  Nothing here ever runs on an
 * event loop: the blocking calls are for pool threads, the persister thread,
 * tools and tests; from a libuv loop use strata_db_submit().
 *
 * Errors are mapped at this boundary onto strata statuses:
 *   STRATA_EEXIST      unique / primary-key violation
 *   STRATA_ECONFLICT   other constraint violations; optimistic version mismatch;
 *                      PostgreSQL serialization failure or deadlock
 *   STRATA_EUNAVAIL    cannot connect; connection lost (the pool reconnects on
 *                      the next acquire)
 *   STRATA_EUNKNOWN    connection lost during COMMIT: the transaction may or may
 *                      not have been applied (idempotent writes can be retried)
 *   STRATA_ETIMEDOUT   pool acquire deadline; SQLite busy timeout; query timeout
 *   STRATA_EBACKPRESSURE  too many waiters for a connection / async queue full
 *   STRATA_EINVAL      bad input, bad SQL; STRATA_ETOOBIG  over a size bound
 *   STRATA_ENOMEM, STRATA_EIO  (disk full, I/O error, anything else)
 *
 * URLs:  sqlite:///absolute/path.db   sqlite://relative/path.db   sqlite::memory:
 *        postgres://user:pass@host:port/dbname (also postgresql://)
 * sqlite::memory: is one private database, so its pool has one connection.
 */
#ifndef STRATA_DB_H
#define STRATA_DB_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "strata/buf.h"
#include "strata/clock.h"

typedef struct strata_db strata_db;
typedef struct strata_db_conn strata_db_conn;
typedef struct strata_db_result strata_db_result;

typedef enum strata_db_kind {
    STRATA_DB_SQLITE = 1,
    STRATA_DB_POSTGRES = 2,
} strata_db_kind;

/* ---- bounds on kv input (checked before touching the database) ---------- */

#define STRATA_DB_NS_MAX       64        /* bytes; 1..64, UTF-8, no NUL */
#define STRATA_DB_KEY_MAX      1024      /* bytes; 1..1024, UTF-8, no NUL */
#define STRATA_DB_VALUE_MAX    (1 << 20) /* bytes; 0..1 MiB, any bytes */
#define STRATA_DB_EVENT_ID_MAX 128       /* bytes; 1..128, UTF-8, no NUL */
#define STRATA_DB_OWNER_MAX    128       /* relay owner name, as a key */

/* ---- configuration ------------------------------------------------------ */

typedef struct strata_db_config {
    int pool_size;          /* connections (bulkhead size); default 4, 1..256 */
    int acquire_timeout_ms; /* default deadline to borrow a connection; default 1000 */
    int max_waiters;        /* threads allowed to wait for a connection; more get
                               STRATA_EBACKPRESSURE at once; default 64 */
    int max_async;          /* strata_db_submit jobs in flight; default 1024 */
    int busy_timeout_ms;    /* SQLite busy timeout; default 5000 */
    int query_timeout_ms;   /* PostgreSQL client-side deadline per statement
                               (a hung server gives ETIMEDOUT); default 5000 */
    int connect_timeout_s;  /* PostgreSQL connect timeout; default 3 (libpq min 2) */
    int stmt_cache;         /* prepared statements kept per connection; default 64 */
    strata_clock *clock;    /* wall time for updated_at and outbox leases; borrowed,
                               must outlive the db; NULL = system clock */
} strata_db_config;

/** Fills *cfg with the defaults above. */
void strata_db_config_default(strata_db_config *cfg);

/* ---- lifecycle ---------------------------------------------------------- */

/**
 * Checks a URL's form without connecting; fills *kind.  STRATA_EINVAL with a
 * message in *err when it is not a supported URL.
 */
int strata_db_url_check(const char *url, strata_db_kind *kind, strata_buf *err);

/**
 * Opens the database with the default configuration: SQLite creates the file
 * and runs in WAL mode with synchronous=FULL and a busy timeout; PostgreSQL
 * connects.  Then migrates every registered component's schema.  Safe when
 * several processes open (and migrate) the same database at once.
 * STRATA_EINVAL (bad URL), STRATA_EUNAVAIL (cannot open/connect), STRATA_EIO.
 * The reason is appended to *err (may be NULL).
 */
int strata_db_open(strata_db **out, const char *url, strata_buf *err);

/** strata_db_open with a configuration (copied; NULL = defaults). */
int strata_db_open_config(strata_db **out, const char *url, const strata_db_config *cfg,
                          strata_buf *err);

/**
 * Closes every connection and frees; sets *db = NULL.  NULL is a no-op.
 * Every connection must have been released and every submitted job's done
 * callback must have run.
 */
void strata_db_close(strata_db **db);

/** Runs a trivial query on a pooled connection; STRATA_OK when the database answers. */
int strata_db_ping(strata_db *db, strata_buf *why);

/** The core ("strata") schema version after migrations. */
int strata_db_schema_version(strata_db *db);

strata_db_kind strata_db_get_kind(const strata_db *db);

/* ---- migrations --------------------------------------------------------- */

/**
 * One schema step.  `sql` is used by both backends unless the dialect's own
 * text is set.  A step may hold several statements separated by ';'.
 */
typedef struct strata_db_migration {
    const char *sql;
    const char *sqlite;
    const char *postgres;
} strata_db_migration;

/**
 * Registers a component's schema steps (process-wide; call before opening a
 * database, e.g. in a module's setup).  Step i brings the component to
 * version i+1.  Every open applies, in registration order after the core
 * "strata" component, the steps a database has not recorded yet, each in its
 * own transaction together with its (component, version) row, under a lock
 * (SQLite write lock / PostgreSQL advisory lock) so two processes starting at
 * once apply each step exactly once.  `steps` is borrowed and must outlive
 * every open; registering a component again replaces its list.
 * STRATA_EINVAL for a bad name (1..64 bytes of [a-z0-9_]) or n < 1;
 * STRATA_EPERM for "strata" (the core component).
 */
int strata_db_register_migrations(const char *component, const strata_db_migration *steps, int n);

/** A component's recorded version in this database (0 = none); negative status on error. */
int strata_db_component_version(strata_db *db, const char *component);

/* ---- the pool ----------------------------------------------------------- */

/**
 * Borrows a connection, waiting at most the configured acquire_timeout_ms
 * (STRATA_ETIMEDOUT); STRATA_EBACKPRESSURE at once when max_waiters threads
 * already wait.  A connection whose server went away is reconnected here
 * (STRATA_EUNAVAIL if that fails).  Release it with strata_db_release().
 */
int strata_db_acquire(strata_db *db, strata_db_conn **out);

/** strata_db_acquire with its own deadline in ms (0 = only if one is free now). */
int strata_db_acquire_timeout(strata_db *db, int timeout_ms, strata_db_conn **out);

/**
 * Gives a connection back and sets *c = NULL (NULL is a no-op).  A transaction
 * still open is rolled back; a broken connection is closed and reconnected by
 * a later acquire.
 */
void strata_db_release(strata_db_conn **c);

/** The kind of the connection's database. */
strata_db_kind strata_db_conn_kind(const strata_db_conn *c);

/** A snapshot of the pool (for metrics and tests). */
typedef struct strata_db_stats {
    int pool_size;      /* connections configured */
    int in_use;         /* borrowed now */
    int waiters;        /* threads waiting in acquire */
    int async_inflight; /* submitted jobs whose done callback has not run */
} strata_db_stats;

void strata_db_get_stats(strata_db *db, strata_db_stats *out);

/* ---- queries ------------------------------------------------------------ */

typedef enum strata_db_type {
    STRATA_DB_T_NULL = 0,
    STRATA_DB_T_INT,  /* int64 */
    STRATA_DB_T_TEXT, /* bytes p[0..len): UTF-8, no NUL (PostgreSQL text) */
    STRATA_DB_T_BLOB, /* bytes p[0..len) (SQLite BLOB, PostgreSQL bytea) */
} strata_db_type;

/** One query parameter; the bytes are borrowed for the duration of the call. */
typedef struct strata_db_param {
    strata_db_type type;
    const void *p;
    size_t len;
    int64_t i;
} strata_db_param;

static inline strata_db_param strata_db_p_null(void) {
    strata_db_param p = {STRATA_DB_T_NULL, NULL, 0, 0};
    return p;
}
static inline strata_db_param strata_db_p_int(int64_t v) {
    strata_db_param p = {STRATA_DB_T_INT, NULL, 0, v};
    return p;
}
/** A NUL-terminated string as text. */
strata_db_param strata_db_p_text(const char *s);
static inline strata_db_param strata_db_p_textn(const char *s, size_t n) {
    strata_db_param p = {STRATA_DB_T_TEXT, s, n, 0};
    return p;
}
static inline strata_db_param strata_db_p_blob(const void *b, size_t n) {
    strata_db_param p = {STRATA_DB_T_BLOB, b, n, 0};
    return p;
}

/**
 * Runs one statement with parameters $1..$n (each may appear any number of
 * times, in any order; the statement must use exactly $1..$n).  The statement
 * is prepared once per connection and cached.  If `out` is not NULL it
 * receives every row (caller frees with strata_db_result_free); when
 * `changes` is not NULL it receives the number of rows the statement
 * inserted, updated or deleted.  Errors as listed at the top; the reason is
 * appended to *err (may be NULL).
 */
int strata_db_query(strata_db_conn *c, const char *sql, const strata_db_param *params, int nparams,
                    strata_db_result **out, int64_t *changes, strata_buf *err);

/**
 * Runs SQL text without parameters and without preparing it (DDL, several
 * statements separated by ';').  No results.
 */
int strata_db_exec(strata_db_conn *c, const char *sql, strata_buf *err);

int strata_db_result_rows(const strata_db_result *r);
int strata_db_result_cols(const strata_db_result *r);
/**
 * A cell's bytes (text as the database prints it; bytea/BLOB decoded to raw
 * bytes), NUL-terminated for convenience, owned by the result; NULL for SQL
 * NULL or out of range.  *len (may be NULL) gets the length.
 */
const char *strata_db_result_value(const strata_db_result *r, int row, int col, size_t *len);
/** A cell as an integer; `dflt` for NULL, out of range or not a number. */
int64_t strata_db_result_int64(const strata_db_result *r, int row, int col, int64_t dflt);
/** Frees and sets *r = NULL; NULL is a no-op. */
void strata_db_result_free(strata_db_result **r);

/* ---- transactions (on a borrowed connection) ----------------------------- */

/**
 * Starts a transaction (SQLite: BEGIN IMMEDIATE, i.e. takes the write lock
 * now, so two writers never deadlock on a lock upgrade; PostgreSQL: BEGIN,
 * READ COMMITTED).  STRATA_EINVAL if one is already open.
 */
int strata_db_begin(strata_db_conn *c, strata_buf *err);
/** Commits.  On failure the transaction is rolled back (or its outcome unknown: EUNKNOWN). */
int strata_db_commit(strata_db_conn *c, strata_buf *err);
/** Rolls back; a no-op without a transaction.  Never allocates. */
int strata_db_rollback(strata_db_conn *c);

/* ---- async ---------------------------------------------------------------- */

/** Runs on a pool thread with a borrowed connection; returns a status. */
typedef int (*strata_db_job_fn)(strata_db_conn *c, void *arg);
/**
 * Runs on the loop's thread with the job's status, or the acquire error
 * (ETIMEDOUT, EBACKPRESSURE, EUNAVAIL) when the job never ran.
 */
typedef void (*strata_db_done_fn)(int status, void *arg);

/**
 * Runs job(conn, arg) on libuv's thread pool with a connection borrowed for
 * it (released after the job; an open transaction is rolled back), then
 * done(status, arg) on `loop`.  Never blocks the caller.  Returns STRATA_OK,
 * or STRATA_EBACKPRESSURE when max_async jobs are already in flight,
 * STRATA_ENOMEM; when it returns an error, done is never called.  `arg` is
 * borrowed until done runs.  Call from the loop's thread.
 */
int strata_db_submit(strata_db *db, uv_loop_t *loop, strata_db_job_fn job, strata_db_done_fn done,
                     void *arg);

/* ---- versioned key-value store (cache-aside data) ------------------------ */

/** expected_version for strata_db_kv_put / delete: any version. */
#define STRATA_DB_ANY_VERSION (-1)

/**
 * Reads a live value: appends it to *value (may be NULL) and sets *version.
 * STRATA_ENOTFOUND when absent or deleted; then *version is the tombstone's
 * version (0 if the key never existed), so a cache can store a versioned
 * negative entry.
 */
int strata_db_kv_get(strata_db *db, const char *ns, const char *key, size_t keylen,
                     strata_buf *value, int64_t *version);

/**
 * Writes a value and its outbox row (op PUT) in one transaction.  The
 * database assigns the version: 1 for a new key, previous + 1 otherwise (also
 * after a delete).  expected_version: STRATA_DB_ANY_VERSION, 0 = the key must
 * not exist (or be deleted), > 0 = must be exactly this live version;
 * otherwise STRATA_ECONFLICT and nothing is written.  *new_version (may be
 * NULL) gets the assigned version.
 */
int strata_db_kv_put(strata_db *db, const char *ns, const char *key, size_t keylen,
                     const void *value, size_t len, int64_t expected_version, int64_t *new_version);

/**
 * Deletes (leaves a tombstone with version + 1) and writes the outbox row (op
 * DEL) in one transaction.  STRATA_ENOTFOUND when absent or already deleted,
 * STRATA_ECONFLICT when expected_version (> 0) does not match.
 */
int strata_db_kv_delete(strata_db *db, const char *ns, const char *key, size_t keylen,
                        int64_t expected_version, int64_t *new_version);

/**
 * One page of the live keys of a namespace, in key order, strictly after
 * `after` (NULL/0 = from the start), at most `limit` (1..10000).  The result
 * has one column (the key); pass the last key as the next `after`; a page
 * shorter than limit is the last.  For rebuilding a Bloom filter.
 */
int strata_db_kv_keys(strata_db *db, const char *ns, const char *after, size_t afterlen, int limit,
                      strata_db_result **out);

/* The same operations on a borrowed connection (inside a strata_db_submit job).
 * kv_put/kv_delete open and commit their own transaction: not inside one. */
int strata_db_conn_kv_get(strata_db_conn *c, const char *ns, const char *key, size_t keylen,
                          strata_buf *value, int64_t *version);
int strata_db_conn_kv_put(strata_db_conn *c, const char *ns, const char *key, size_t keylen,
                          const void *value, size_t len, int64_t expected_version,
                          int64_t *new_version);
int strata_db_conn_kv_delete(strata_db_conn *c, const char *ns, const char *key, size_t keylen,
                             int64_t expected_version, int64_t *new_version);
int strata_db_conn_kv_keys(strata_db_conn *c, const char *ns, const char *after, size_t afterlen,
                           int limit, strata_db_result **out);

/* ---- outbox ----------------------------------------------------------------- */

typedef enum strata_db_op {
    STRATA_DB_OP_PUT = 1,
    STRATA_DB_OP_DEL = 2,
} strata_db_op;

/** A claimed outbox row; strings owned by the array (strata_db_outbox_free). */
typedef struct strata_db_outbox_row {
    int64_t id; /* increasing in commit-ish order; pass to outbox_done */
    char *ns;
    char *key;
    size_t keylen;
    int64_t version; /* the version the write produced */
    strata_db_op op;
    int attempts; /* times claimed, this claim included */
} strata_db_outbox_row;

/**
 * Claims up to `limit` (1..10000) outbox rows whose lease is free or expired,
 * leasing them to `owner` (1..128 bytes) for lease_ms (> 0) of the config
 * clock's wall time.  Two relays never hold the same row at once while the
 * lease runs (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: one writer).  A
 * relay that dies leaves its rows to be claimed again after the lease: the
 * relay's work (invalidate, bump a sequence) must be idempotent.  Rows come
 * in id order.  *rows is NULL when *n is 0; free with strata_db_outbox_free.
 */
int strata_db_outbox_claim(strata_db *db, const char *owner, int limit, int64_t lease_ms,
                           strata_db_outbox_row **rows, size_t *n);

/** Marks rows done (deletes them), in one transaction.  Unknown ids are ignored. */
int strata_db_outbox_done(strata_db *db, const int64_t *ids, size_t n);

/** Rows waiting in the outbox (claimed or not); negative status on error. */
int64_t strata_db_outbox_pending(strata_db *db);

/** Frees claimed rows (NULL is a no-op). */
void strata_db_outbox_free(strata_db_outbox_row *rows, size_t n);

/* ---- idempotent write-behind apply ------------------------------------------ */

typedef enum strata_db_apply_result {
    STRATA_DB_APPLIED = 1,    /* first time: event recorded, value written */
    STRATA_DB_DUPLICATE = 2,  /* the event id was applied before; nothing changed */
    STRATA_DB_SUPERSEDED = 3, /* first time, recorded, but the stored version was
                                 already >= this one, so the value was kept */
} strata_db_apply_result;

/**
 * In one transaction: records event_id (1..128 bytes) in the applied-events
 * table and upserts (ns, key) = value with `version` (>= 1, assigned by the
 * write-behind script) only if it is newer than the stored one.  Writes no
 * outbox row (the truth is already in Redis).  Two callers applying the same
 * event at once: exactly one gets APPLIED, the other DUPLICATE.
 */
int strata_db_apply_event(strata_db *db, const char *event_id, const char *ns, const char *key,
                          size_t keylen, const void *value, size_t len, int64_t version,
                          strata_db_apply_result *res);

/** A statement for strata_db_apply_event_stmts: params borrowed for the call. */
typedef struct strata_db_stmt {
    const char *sql;
    const strata_db_param *params;
    int nparams;
} strata_db_stmt;

/**
 * In one transaction: records event_id, then runs the statements in order
 * (scenarios insert orders, grabs, refunds).  If the event was applied before
 * nothing runs and *res = DUPLICATE; if a statement fails everything is
 * rolled back (the event stays unapplied) and its status returned.
 */
int strata_db_apply_event_stmts(strata_db *db, const char *event_id, const strata_db_stmt *stmts,
                                int n, strata_db_apply_result *res, strata_buf *err);

/** Callback run inside the apply transaction; a negative return rolls back. */
typedef int (*strata_db_tx_fn)(strata_db_conn *c, void *arg);

/** The general form, on a borrowed connection (not inside a transaction). */
int strata_db_conn_apply_event_fn(strata_db_conn *c, const char *event_id, strata_db_tx_fn fn,
                                  void *arg, strata_db_apply_result *res, strata_buf *err);

/** One event of a batch: in: event_id, fn, arg; out: status, res. */
typedef struct strata_db_event {
    const char *event_id;
    strata_db_tx_fn fn; /* may be NULL: only records the id */
    void *arg;
    int status;                 /* out: STRATA_OK or the event's own error */
    strata_db_apply_result res; /* out, when status is STRATA_OK */
} strata_db_event;

/**
 * Applies a batch in ONE transaction (one commit, one fsync: what a
 * write-behind persister wants), each event inside its own savepoint: an
 * event whose fn fails (a poison event) is rolled back alone, gets its
 * status, and the others still commit.  Returns STRATA_OK when the batch
 * committed (look at each event's status), or the error that lost the whole
 * batch (then no event was applied, except on STRATA_EUNKNOWN: outcome
 * unknown, re-apply the batch: duplicates are detected).
 */
int strata_db_conn_apply_events(strata_db_conn *c, strata_db_event *evs, int n, strata_buf *err);

/** strata_db_conn_apply_events on a pooled connection. */
int strata_db_apply_events(strata_db *db, strata_db_event *evs, int n, strata_buf *err);

/** Whether event_id was applied (1), not (0), or a negative status. */
int strata_db_event_applied(strata_db *db, const char *event_id);

#endif
