/*
 * db.c: opening the source-of-truth database, its configuration and the
 * per-component schema migrations (strata/db.h).
 *
 * SQLite runs in WAL mode with synchronous=FULL: a commit is on disk before
 * it returns, which is what "an acknowledged write survives" needs once
 * write-behind events are persisted here (NORMAL would lose the last
 * commits on power loss; see docs/notes/db.md).
 *
 * Migrations.  Every component (the core "strata" first, then each module
 * that registered steps, in registration order) has an ordered list of SQL
 * steps; the table strata_migrations(component, version) records which steps
 * a database has.  Each step runs in its own transaction with its record,
 * after taking a database-wide lock (SQLite: BEGIN IMMEDIATE, the write lock;
 * PostgreSQL: pg_advisory_xact_lock) and re-reading the record inside it, so
 * two processes starting at once apply every step exactly once and a crash
 * between steps resumes at the next one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_internal.h"
#include "strata/alloc.h"
#include "strata/status.h"

/* The core schema.  Step i brings "strata" to version i+1; never edit a
 * released step, add one. */
static const strata_db_migration core_steps[] = {
    {.sql = "CREATE TABLE IF NOT EXISTS strata_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"},
    /* 2: versioned kv with tombstones (deleted=1 keeps the version monotonic
     *    across delete + re-create), the outbox and the applied-events set. */
    {.sqlite = "CREATE TABLE strata_kv (ns TEXT NOT NULL, key TEXT NOT NULL,"
               " value BLOB NOT NULL, version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,"
               " updated_at INTEGER NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID;"
               "CREATE TABLE strata_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
               " ns TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,"
               " op INTEGER NOT NULL, created_at INTEGER NOT NULL,"
               " lease_owner TEXT, lease_until INTEGER NOT NULL DEFAULT 0,"
               " attempts INTEGER NOT NULL DEFAULT 0);"
               "CREATE TABLE strata_applied_events (event_id TEXT PRIMARY KEY,"
               " applied_at INTEGER NOT NULL) WITHOUT ROWID",
     .postgres =
         "CREATE TABLE strata_kv (ns TEXT NOT NULL, key TEXT NOT NULL,"
         " value BYTEA NOT NULL, version BIGINT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,"
         " updated_at BIGINT NOT NULL, PRIMARY KEY (ns, key));"
         "CREATE TABLE strata_outbox (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
         " ns TEXT NOT NULL, key TEXT NOT NULL, version BIGINT NOT NULL,"
         " op INTEGER NOT NULL, created_at BIGINT NOT NULL,"
         " lease_owner TEXT, lease_until BIGINT NOT NULL DEFAULT 0,"
         " attempts INTEGER NOT NULL DEFAULT 0);"
         "CREATE TABLE strata_applied_events (event_id TEXT PRIMARY KEY,"
         " applied_at BIGINT NOT NULL)"},
};
#define NCORE ((int)(sizeof core_steps / sizeof core_steps[0]))

/* ---- registry ---- */

#define MAX_COMPONENTS 32

typedef struct db_component {
    char name[STRATA_DB_NS_MAX + 1];
    const strata_db_migration *steps;
    int n;
} db_component;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static db_component registry[MAX_COMPONENTS];
static int nregistry;

static bool valid_component(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > STRATA_DB_NS_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

int strata_db_register_migrations(const char *name, const strata_db_migration *steps, int n) {
    if (!valid_component(name) || !steps || n < 1)
        return STRATA_EINVAL;
    if (strcmp(name, DB_CORE_COMPONENT) == 0)
        return STRATA_EPERM;
    pthread_mutex_lock(&reg_mu);
    int rc = STRATA_OK;
    int i;
    for (i = 0; i < nregistry; i++)
        if (strcmp(registry[i].name, name) == 0)
            break;
    if (i == nregistry) {
        if (nregistry == MAX_COMPONENTS) {
            rc = STRATA_ERANGE;
            goto out;
        }
        snprintf(registry[i].name, sizeof registry[i].name, "%s", name);
        nregistry++;
    }
    registry[i].steps = steps;
    registry[i].n = n;
out:
    pthread_mutex_unlock(&reg_mu);
    return rc;
}

/* ---- configuration ---- */

void strata_db_config_default(strata_db_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->pool_size = 4;
    cfg->acquire_timeout_ms = 1000;
    cfg->max_waiters = 64;
    cfg->max_async = 1024;
    cfg->busy_timeout_ms = 5000;
    cfg->query_timeout_ms = 5000;
    cfg->connect_timeout_s = 3;
    cfg->stmt_cache = 64;
    cfg->clock = NULL;
}

static int check_config(const strata_db_config *c, strata_buf *err) {
#define RANGE(f, lo, hi)                                                                       \
    if (c->f < (lo) || c->f > (hi)) {                                                          \
        strata_buf_printf(err, "database option " #f "=%d is out of range [%d, %d]", c->f, lo, \
                          hi);                                                                 \
        return STRATA_ERANGE;                                                                  \
    }
    RANGE(pool_size, 1, 256)
    RANGE(acquire_timeout_ms, 0, 3600000)
    RANGE(max_waiters, 0, 1000000)
    RANGE(max_async, 1, 10000000)
    RANGE(busy_timeout_ms, 0, 3600000)
    RANGE(query_timeout_ms, 1, 3600000)
    RANGE(connect_timeout_s, 1, 3600)
    RANGE(stmt_cache, 4, 4096)
#undef RANGE
    return STRATA_OK;
}

/* ---- URLs ------------------------------------------------------------------------ */

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

/* ---- migrations ---- */

/* An arbitrary constant: the advisory lock that serialises migrations. */
#define MIGRATION_LOCK "SELECT pg_advisory_xact_lock(7310582617438208113)"

static const char *step_sql(strata_db_kind kind, const strata_db_migration *m) {
    const char *own = kind == STRATA_DB_SQLITE ? m->sqlite : m->postgres;
    return own ? own : m->sql;
}

/* Applies step `version` of `comp` unless the database already has it. */
static int migrate_step(strata_db_conn *c, const char *comp, int version, const char *sql,
                        int *applied, strata_buf *err) {
    *applied = 0;
    int rc = strata_db_begin(c, err);
    if (rc != STRATA_OK)
        return rc;
    if (c->pg)
        rc = strata_db_exec(c, MIGRATION_LOCK, err);
    if (rc == STRATA_OK)
        rc = strata_db_exec(c,
                            "CREATE TABLE IF NOT EXISTS strata_migrations (component TEXT NOT NULL,"
                            " version INTEGER NOT NULL, applied_at BIGINT NOT NULL,"
                            " PRIMARY KEY (component, version))",
                            err);
    int64_t have = 0;
    bool found = false;
    strata_db_param p[3] = {strata_db_p_text(comp), strata_db_p_int(version),
                            strata_db_p_int(strata_clock_wall_ms(c->db->clock))};
    if (rc == STRATA_OK)
        rc = db__query1_int(c,
                            "SELECT version FROM strata_migrations WHERE component = $1"
                            " AND version = $2",
                            p, 2, &have, &found, err);
    if (rc == STRATA_OK && !found) {
        if (!sql) {
            strata_buf_printf(err, "migration %s/%d has no SQL for this database", comp, version);
            rc = STRATA_EINVAL;
        }
        if (rc == STRATA_OK && (rc = strata_db_exec(c, sql, err)) != STRATA_OK)
            strata_buf_printf(err, " (in migration %s/%d)", comp, version);
        if (rc == STRATA_OK)
            rc = strata_db_query(c,
                                 "INSERT INTO strata_migrations (component, version, applied_at)"
                                 " VALUES ($1, $2, $3)",
                                 p, 3, NULL, NULL, err);
        *applied = rc == STRATA_OK;
    }
    if (rc == STRATA_OK)
        return strata_db_commit(c, err);
    strata_db_rollback(c);
    return rc;
}

static int migrate_component(strata_db_conn *c, const char *comp, const strata_db_migration *steps,
                             int n, strata_buf *err) {
    for (int v = 1; v <= n; v++) {
        int applied;
        int rc = migrate_step(c, comp, v, step_sql(c->db->kind, &steps[v - 1]), &applied, err);
        if (rc != STRATA_OK)
            return rc;
    }
    return STRATA_OK;
}

static int migrate(strata_db *db, strata_buf *err) {
    strata_db_conn *c = NULL;
    int rc = strata_db_acquire(db, &c);
    if (rc != STRATA_OK) {
        strata_buf_printf(err, "cannot connect to the database: %s", strata_strerror(rc));
        return rc;
    }
    rc = migrate_component(c, DB_CORE_COMPONENT, core_steps, NCORE, err);
    /* Copy the registry so the lock is not held across database calls. */
    db_component regs[MAX_COMPONENTS];
    pthread_mutex_lock(&reg_mu);
    int nregs = nregistry;
    memcpy(regs, registry, sizeof regs);
    pthread_mutex_unlock(&reg_mu);
    for (int i = 0; rc == STRATA_OK && i < nregs; i++)
        rc = migrate_component(c, regs[i].name, regs[i].steps, regs[i].n, err);
    if (rc == STRATA_OK) {
        int v = db__component_version(c, DB_CORE_COMPONENT);
        if (v < 0)
            rc = v;
        else
            db->version = v;
    }
    strata_db_release(&c);
    return rc;
}

int db__component_version(strata_db_conn *c, const char *component) {
    int64_t v = 0;
    bool found = false;
    strata_db_param p = strata_db_p_text(component);
    int rc = db__query1_int(c, "SELECT MAX(version) FROM strata_migrations WHERE component = $1",
                            &p, 1, &v, &found, NULL);
    return rc != STRATA_OK ? rc : (int)v;
}

int strata_db_component_version(strata_db *db, const char *component) {
    if (!db || !component)
        return STRATA_EINVAL;
    strata_db_conn *c = NULL;
    int rc = strata_db_acquire(db, &c);
    if (rc != STRATA_OK)
        return rc;
    rc = db__component_version(c, component);
    strata_db_release(&c);
    return rc;
}

/* ---- lifecycle ---- */

int strata_db_open(strata_db **out, const char *url, strata_buf *err) {
    return strata_db_open_config(out, url, NULL, err);
}

int strata_db_open_config(strata_db **out, const char *url, const strata_db_config *cfg,
                          strata_buf *err) {
    strata_buf scratch = STRATA_BUF_INIT;
    if (!err)
        err = &scratch;
    if (!out) {
        strata_buf_free(&scratch);
        return STRATA_EINVAL;
    }
    *out = NULL;
    strata_db_kind kind;
    int rc = strata_db_url_check(url, &kind, err);
    strata_db_config conf;
    if (cfg)
        conf = *cfg;
    else
        strata_db_config_default(&conf);
    if (rc == STRATA_OK)
        rc = check_config(&conf, err);
    if (rc != STRATA_OK) {
        strata_buf_free(&scratch);
        return rc;
    }
    strata_db *db = strata_calloc(1, sizeof *db);
    if (!db) {
        strata_buf_free(&scratch);
        return STRATA_ENOMEM;
    }
    db->kind = kind;
    db->cfg = conf;
    db->clock = conf.clock ? conf.clock : strata_clock_system();
    db->url = strata_strdup(url);
    rc = db->url ? STRATA_OK : STRATA_ENOMEM;
    if (rc == STRATA_OK && kind == STRATA_DB_SQLITE) {
        db->path = strata_strdup(sqlite_path(url));
        if (!db->path)
            rc = STRATA_ENOMEM;
        else if (strcmp(db->path, ":memory:") == 0)
            db->cfg.pool_size = 1; /* every connection would be its own database */
    }
    if (rc == STRATA_OK)
        rc = db__pool_init(db, err);
    if (rc == STRATA_OK) {
        /* Connect one now, so a bad URL fails here with the reason. */
        rc = db__connect(&db->conns[0], err);
    }
    if (rc == STRATA_OK)
        rc = migrate(db, err);
    strata_buf_free(&scratch);
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
    db__pool_deinit(db);
    strata_free(db->url);
    strata_free(db->path);
    strata_free(db);
    *dbp = NULL;
}

int strata_db_ping(strata_db *db, strata_buf *why) {
    if (!db)
        return STRATA_EINVAL;
    strata_db_conn *c = NULL;
    int rc = strata_db_acquire(db, &c);
    if (rc != STRATA_OK) {
        if (why)
            strata_buf_printf(why, "no database connection: %s", strata_strerror(rc));
        return rc;
    }
    strata_db_result *r = NULL;
    rc = strata_db_query(c, "SELECT 1", NULL, 0, &r, NULL, why);
    strata_db_result_free(&r);
    strata_db_release(&c);
    return rc;
}

int strata_db_schema_version(strata_db *db) { return db->version; }

strata_db_kind strata_db_get_kind(const strata_db *db) { return db->kind; }

strata_db_param strata_db_p_text(const char *s) { return strata_db_p_textn(s, s ? strlen(s) : 0); }
