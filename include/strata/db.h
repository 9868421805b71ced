/*
 * strata/db.h: the source-of-truth database (SQLite embedded, PostgreSQL).
 *
 * This first cut opens and checks the database named by a URL and applies
 * the schema migrations; the store interface with versions, the outbox and
 * the worker pool arrive with the tiered-path issue.
 *
 * URLs:  sqlite:///absolute/path.db   sqlite://relative/path.db   sqlite::memory:
 *        postgres://user:pass@host:port/dbname (also postgresql://)
 */
#ifndef STRATA_DB_H
#define STRATA_DB_H

#include "strata/buf.h"

typedef struct strata_db strata_db;

typedef enum strata_db_kind {
    STRATA_DB_SQLITE = 1,
    STRATA_DB_POSTGRES = 2,
} strata_db_kind;

/**
 * Checks a URL's form without connecting; fills *kind.  STRATA_EINVAL with a
 * message in *err when it is not a supported URL.
 */
int strata_db_url_check(const char *url, strata_db_kind *kind, strata_buf *err);

/**
 * Opens the database (SQLite: creates the file, WAL mode, synchronous=FULL,
 * busy timeout 5 s; PostgreSQL: connects) and migrates the schema to the
 * current version.  The handle is for one thread at a time.
 * STRATA_EINVAL (bad URL), STRATA_EUNAVAIL (cannot open/connect), STRATA_EIO.
 */
int strata_db_open(strata_db **out, const char *url, strata_buf *err);

/** Closes and frees; sets *db = NULL.  NULL is a no-op. */
void strata_db_close(strata_db **db);

/** Runs a trivial query; STRATA_OK when the database answers. */
int strata_db_ping(strata_db *db, strata_buf *why);

/** The schema version after migrations. */
int strata_db_schema_version(strata_db *db);

strata_db_kind strata_db_get_kind(const strata_db *db);

#endif
