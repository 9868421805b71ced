/*
 * db.c: opening the source-of-truth database and migrating its schema
 * (strata/db.h).  SQLite runs in WAL mode with synchronous=FULL: a commit is
 * on disk before it returns, which is what "an acknowledged write survives"
 * needs once write-behind events are persisted here.  Migrations are an
 * ordered list of SQL scripts; `strata_schema(version)` records how far a
 * database has come, and each step runs in its own transaction.
 */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/db.h"
#include "strata/status.h"

struct strata_db {
    strata_db_kind kind;
    sqlite3 *lite;
    PGconn *pg;
    int version;
};

/* Schema steps; index i brings the database to version i+1.  Both dialects. */
static const char *const migrations[] = {
    "CREATE TABLE IF NOT EXISTS strata_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
};
#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

int strata_db_url_check(const char *url, strata_db_kind *kind, strata_buf *err) {
    if (url && strncmp(url, "sqlite:", 7) == 0) {
        const char *p = url + 7;
        if (strncmp(p, "//", 2) == 0)
            p += 2;
        if (*p == '\0') {
            strata_buf_printf(err, "database URL %s names no file", url);
            return STRATA_EINVAL;
        }
        *kind = STRATA_DB_SQLITE;
        return STRATA_OK;
    }
    if (url && (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0)) {
        *kind = STRATA_DB_POSTGRES;
        return STRATA_OK;
    }
    strata_buf_printf(
        err, "unsupported database URL \"%s\": expected sqlite:///path.db or postgres://...",
        url ? url : "");
    return STRATA_EINVAL;
}

/* sqlite:///abs -> /abs ; sqlite://rel -> rel ; sqlite::memory: -> :memory: */
static const char *sqlite_path(const char *url) {
    const char *p = url + 7;
    if (strncmp(p, "//", 2) == 0)
        p += 2;
    return p;
}

static int exec_sql(strata_db *db, const char *sql, strata_buf *err) {
    if (db->kind == STRATA_DB_SQLITE) {
        char *msg = NULL;
        if (sqlite3_exec(db->lite, sql, NULL, NULL, &msg) != SQLITE_OK) {
            strata_buf_printf(err, "sqlite: %s", msg ? msg : sqlite3_errmsg(db->lite));
            sqlite3_free(msg);
            return STRATA_EIO;
        }
        return STRATA_OK;
    }
    PGresult *r = PQexec(db->pg, sql);
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        strata_buf_printf(err, "postgres: %s", PQerrorMessage(db->pg));
    PQclear(r);
    return ok ? STRATA_OK : (PQstatus(db->pg) == CONNECTION_OK ? STRATA_EIO : STRATA_EUNAVAIL);
}

static int read_version(strata_db *db, int *version) {
    const char *sql = "SELECT COALESCE(MAX(version), 0) FROM strata_schema";
    if (db->kind == STRATA_DB_SQLITE) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db->lite, sql, -1, &st, NULL) != SQLITE_OK)
            return STRATA_EIO;
        int rc = sqlite3_step(st) == SQLITE_ROW ? STRATA_OK : STRATA_EIO;
        *version = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
        return rc;
    }
    PGresult *r = PQexec(db->pg, sql);
    int rc = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? STRATA_OK : STRATA_EIO;
    if (rc == STRATA_OK)
        *version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return rc;
}

static int migrate(strata_db *db, strata_buf *err) {
    int rc =
        exec_sql(db, "CREATE TABLE IF NOT EXISTS strata_schema (version INTEGER PRIMARY KEY)", err);
    if (rc != STRATA_OK)
        return rc;
    if ((rc = read_version(db, &db->version)) != STRATA_OK) {
        strata_buf_puts(err, "cannot read the schema version");
        return rc;
    }
    for (int v = db->version; v < NMIGRATIONS; v++) {
        char ins[96];
        snprintf(ins, sizeof ins, "INSERT INTO strata_schema(version) VALUES (%d)", v + 1);
        if ((rc = exec_sql(db, "BEGIN", err)) != STRATA_OK)
            return rc;
        if ((rc = exec_sql(db, migrations[v], err)) != STRATA_OK ||
            (rc = exec_sql(db, ins, err)) != STRATA_OK) {
            strata_buf tmp = STRATA_BUF_INIT;
            exec_sql(db, "ROLLBACK", &tmp);
            strata_buf_free(&tmp);
            return rc;
        }
        if ((rc = exec_sql(db, "COMMIT", err)) != STRATA_OK)
            return rc;
        db->version = v + 1;
    }
    return STRATA_OK;
}

int strata_db_open(strata_db **out, const char *url, strata_buf *err) {
    strata_db_kind kind;
    int rc = strata_db_url_check(url, &kind, err);
    if (rc != STRATA_OK)
        return rc;
    strata_db *db = strata_calloc(1, sizeof *db);
    if (!db)
        return STRATA_ENOMEM;
    db->kind = kind;
    if (kind == STRATA_DB_SQLITE) {
        const char *path = sqlite_path(url);
        if (sqlite3_open_v2(path, &db->lite,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                            NULL) != SQLITE_OK) {
            strata_buf_printf(err, "cannot open SQLite database %s: %s", path,
                              db->lite ? sqlite3_errmsg(db->lite) : "out of memory");
            strata_db_close(&db);
            return STRATA_EUNAVAIL;
        }
        sqlite3_busy_timeout(db->lite, 5000);
        rc = exec_sql(
            db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON", err);
    } else {
        db->pg = PQconnectdb(url);
        if (!db->pg || PQstatus(db->pg) != CONNECTION_OK) {
            strata_buf_printf(err, "cannot connect to PostgreSQL: %s",
                              db->pg ? PQerrorMessage(db->pg) : "out of memory");
            strata_db_close(&db);
            return STRATA_EUNAVAIL;
        }
        rc = exec_sql(db, "SET client_min_messages = warning", err);
    }
    if (rc == STRATA_OK)
        rc = migrate(db, err);
    if (rc != STRATA_OK) {
        strata_db_close(&db);
        return rc;
    }
    *out = db;
    return STRATA_OK;
}

void strata_db_close(strata_db **dbp) {
    if (!dbp || !*dbp)
        return;
    strata_db *db = *dbp;
    if (db->lite)
        sqlite3_close_v2(db->lite);
    if (db->pg)
        PQfinish(db->pg);
    strata_free(db);
    *dbp = NULL;
}

int strata_db_ping(strata_db *db, strata_buf *why) {
    if (db->kind == STRATA_DB_POSTGRES && PQstatus(db->pg) != CONNECTION_OK) {
        PQreset(db->pg);
        if (PQstatus(db->pg) != CONNECTION_OK) {
            strata_buf_printf(why, "postgres: %s", PQerrorMessage(db->pg));
            return STRATA_EUNAVAIL;
        }
    }
    return exec_sql(db, "SELECT 1", why);
}

int strata_db_schema_version(strata_db *db) { return db->version; }

strata_db_kind strata_db_get_kind(const strata_db *db) { return db->kind; }
