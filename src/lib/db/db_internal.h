/*
 * db_internal.h: what the files of src/lib/db share (not public).
 *
 *   db.c        open/close, configuration, migrations, ping
 *   db_conn.c   the pool, connections, statement cache, queries, transactions,
 *               error mapping, async submit
 *   db_store.c  kv, outbox, idempotent event apply, input validation
 */
#ifndef STRATA_DB_INTERNAL_H
#define STRATA_DB_INTERNAL_H

#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "strata/db.h"

/* One cached prepared statement.  `sql` is a private copy (key of the cache). */
typedef struct db_stmt {
    char *sql;
    sqlite3_stmt *lite; /* SQLite */
    char name[24];      /* PostgreSQL prepared-statement name */
    int nparams;        /* PostgreSQL: parameters the server expects */
    uint64_t last_used; /* LRU tick */
} db_stmt;

struct strata_db_conn {
    strata_db *db;
    int slot;
    sqlite3 *lite;
    PGconn *pg;
    bool broken; /* server gone / state unknown: close and reconnect */
    bool in_tx;
    unsigned gen;   /* db->loss_gen when connected */
    db_stmt *stmts; /* cfg.stmt_cache entries */
    uint64_t tick;
    unsigned next_name;
};

struct strata_db {
    strata_db_kind kind;
    char *url;
    char *path; /* SQLite file */
    strata_db_config cfg;
    strata_clock *clock;
    int version; /* core component */

    bool pool_ready; /* mu and cv initialised */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    strata_db_conn *conns; /* cfg.pool_size */
    int *free_slots;
    int nfree;
    int waiters;
    atomic_uint loss_gen; /* bumped when a connection finds the server gone */
    atomic_int async_inflight;
};

/* db_conn.c */
int db__pool_init(strata_db *db, strata_buf *err);
void db__pool_deinit(strata_db *db);
/* Opens conn's backend connection (pool slot not connected or broken). */
int db__connect(strata_db_conn *c, strata_buf *err);
/* Runs one statement through the cache, with a single text/int row as answer. */
int db__query1_int(strata_db_conn *c, const char *sql, const strata_db_param *p, int n,
                   int64_t *val, bool *found, strata_buf *err);

/* db.c: the recorded version of a component, or a negative status. */
int db__component_version(strata_db_conn *c, const char *component);

/* db_store.c */
int db__check_name(const char *s, size_t len, size_t max);

#define DB_CORE_COMPONENT "strata"

#endif
