/*
 * db_store.c: the stores on top of the pool (strata/db.h): the versioned
 * key-value store with its transactional outbox, the outbox relay's
 * claim/done, idempotent write-behind apply, key listing, input validation.
 *
 * Versions.  strata_kv.version is assigned by the database for cache-aside
 * writes (1 for a new key, +1 per put or delete) and by the write-behind
 * script for events (apply keeps the greater).  A delete leaves a tombstone
 * (deleted = 1) that keeps the version, so a key deleted at version 5 and
 * written again gets 6, never 1: a cache holding version 5 can always tell
 * the newer value from the older one.
 *
 * Outbox.  Each put/delete inserts (ns, key, version, op) into strata_outbox
 * in the same transaction as the write: either both are committed or neither
 * (tested by failing allocations in between).  A relay claims rows by setting
 * a lease (owner, until) with one UPDATE ... RETURNING; on PostgreSQL the
 * candidate rows are picked with FOR UPDATE SKIP LOCKED, so two relays
 * claiming at once skip each other's rows instead of waiting; SQLite has one
 * writer at a time, so the UPDATE is atomic by itself.  A claimed row whose
 * lease expired (its relay died) is claimed again; done deletes rows.
 *
 * Idempotent apply.  The event id is inserted into strata_applied_events
 * (primary key) with ON CONFLICT DO NOTHING as the first statement of the
 * transaction: no row inserted means the event was applied before (or is
 * being applied by a concurrent transaction, which the insert waits for on
 * PostgreSQL; SQLite's BEGIN IMMEDIATE serialises writers), so nothing else
 * runs.  The event's own writes follow in the same transaction.
 */
#include <stdlib.h>
#include <string.h>

#include "db_internal.h"
#include "strata/alloc.h"
#include "strata/status.h"

/* ---- validation ---- */

/* RFC 3629 UTF-8: no overlongs, no surrogates, nothing above U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf)
            len = 2;
        else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0)
                lo = 0xa0;
            if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0)
                lo = 0x90;
            if (c == 0xf4)
                hi = 0x8f;
        } else
            return false;
        if (i + len > n)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return false;
        i += len;
    }
    return true;
}

int db__check_name(const char *s, size_t len, size_t max) {
    if (!s || len == 0)
        return STRATA_EINVAL;
    if (len > max)
        return STRATA_ETOOBIG;
    if (memchr(s, '\0', len) || !utf8_valid((const unsigned char *)s, len))
        return STRATA_EINVAL;
    return STRATA_OK;
}

static int check_ns_key(const char *ns, const char *key, size_t keylen) {
    int rc = db__check_name(ns, ns ? strlen(ns) : 0, STRATA_DB_NS_MAX);
    if (rc == STRATA_OK)
        rc = db__check_name(key, keylen, STRATA_DB_KEY_MAX);
    return rc;
}

static int check_event_id(const char *id) {
    return db__check_name(id, id ? strlen(id) : 0, STRATA_DB_EVENT_ID_MAX);
}

static int64_t now_ms(strata_db_conn *c) { return strata_clock_wall_ms(c->db->clock); }

/* ---- kv ---- */

int strata_db_conn_kv_get(strata_db_conn *c, const char *ns, const char *key, size_t keylen,
                          strata_buf *value, int64_t *version) {
    int64_t dummy;
    if (!version)
        version = &dummy;
    *version = 0;
    int rc = check_ns_key(ns, key, keylen);
    if (rc != STRATA_OK || !c)
        return c ? rc : STRATA_EINVAL;
    strata_db_param p[2] = {strata_db_p_text(ns), strata_db_p_textn(key, keylen)};
    strata_db_result *r = NULL;
    rc = strata_db_query(c,
                         "SELECT value, version, deleted FROM strata_kv WHERE ns = $1 AND key = $2",
                         p, 2, &r, NULL, NULL);
    if (rc != STRATA_OK)
        return rc;
    if (strata_db_result_rows(r) == 0) {
        strata_db_result_free(&r);
        return STRATA_ENOTFOUND;
    }
    *version = strata_db_result_int64(r, 0, 1, 0);
    if (strata_db_result_int64(r, 0, 2, 0) != 0) {
        strata_db_result_free(&r);
        return STRATA_ENOTFOUND;
    }
    if (value) {
        size_t len;
        const char *v = strata_db_result_value(r, 0, 0, &len);
        if (strata_buf_append(value, v ? v : "", len) != STRATA_OK)
            rc = STRATA_ENOMEM;
    }
    strata_db_result_free(&r);
    return rc;
}

static const char SQL_OUTBOX_INSERT[] =
    "INSERT INTO strata_outbox (ns, key, version, op, created_at) VALUES ($1, $2, $3, $4, $5)";

static int outbox_insert(strata_db_conn *c, const char *ns, const char *key, size_t keylen,
                         int64_t version, strata_db_op op) {
    strata_db_param p[5] = {strata_db_p_text(ns), strata_db_p_textn(key, keylen),
                            strata_db_p_int(version), strata_db_p_int(op),
                            strata_db_p_int(now_ms(c))};
    return strata_db_query(c, SQL_OUTBOX_INSERT, p, 5, NULL, NULL, NULL);
}

static const char SQL_PUT_ANY[] =
    "INSERT INTO strata_kv (ns, key, value, version, deleted, updated_at)"
    " VALUES ($1, $2, $3, 1, 0, $4) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value,"
    " version = strata_kv.version + 1, deleted = 0, updated_at = excluded.updated_at"
    " RETURNING version";
static const char SQL_PUT_NEW[] =
    "INSERT INTO strata_kv (ns, key, value, version, deleted, updated_at)"
    " VALUES ($1, $2, $3, 1, 0, $4) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value,"
    " version = strata_kv.version + 1, deleted = 0, updated_at = excluded.updated_at"
    " WHERE strata_kv.deleted = 1 RETURNING version";
static const char SQL_PUT_IF[] =
    "UPDATE strata_kv SET value = $3, version = version + 1, updated_at = $4"
    " WHERE ns = $1 AND key = $2 AND version = $5 AND deleted = 0 RETURNING version";

int strata_db_conn_kv_put(strata_db_conn *c, const char *ns, const char *key, size_t keylen,
                          const void *value, size_t len, int64_t expected_version,
                          int64_t *new_version) {
    if (new_version)
        *new_version = 0;
    int rc = check_ns_key(ns, key, keylen);
    if (rc != STRATA_OK)
        return rc;
    if (!c || (len > 0 && !value) || expected_version < STRATA_DB_ANY_VERSION)
        return STRATA_EINVAL;
    if (len > STRATA_DB_VALUE_MAX)
        return STRATA_ETOOBIG;
    if (c->in_tx)
        return STRATA_EINVAL;
    strata_db_param p[5] = {strata_db_p_text(ns), strata_db_p_textn(key, keylen),
                            strata_db_p_blob(value, len), strata_db_p_int(now_ms(c)),
                            strata_db_p_int(expected_version)};
    const char *sql = expected_version == STRATA_DB_ANY_VERSION ? SQL_PUT_ANY
                      : expected_version == 0                   ? SQL_PUT_NEW
                                                                : SQL_PUT_IF;
    if ((rc = strata_db_begin(c, NULL)) != STRATA_OK)
        return rc;
    int64_t v = 0;
    bool found = false;
    rc = db__query1_int(c, sql, p, sql == SQL_PUT_IF ? 5 : 4, &v, &found, NULL);
    if (rc == STRATA_OK && !found)
        rc = STRATA_ECONFLICT;
    if (rc == STRATA_OK)
        rc = outbox_insert(c, ns, key, keylen, v, STRATA_DB_OP_PUT);
    if (rc == STRATA_OK)
        rc = strata_db_commit(c, NULL);
    else
        strata_db_rollback(c);
    if (rc == STRATA_OK && new_version)
        *new_version = v;
    return rc;
}

static const char SQL_DEL_ANY[] =
    "UPDATE strata_kv SET value = $3, version = version + 1, deleted = 1, updated_at = $4"
    " WHERE ns = $1 AND key = $2 AND deleted = 0 RETURNING version";
static const char SQL_DEL_IF[] =
    "UPDATE strata_kv SET value = $3, version = version + 1, deleted = 1, updated_at = $4"
    " WHERE ns = $1 AND key = $2 AND deleted = 0 AND version = $5 RETURNING version";

int strata_db_conn_kv_delete(strata_db_conn *c, const char *ns, const char *key, size_t keylen,
                             int64_t expected_version, int64_t *new_version) {
    if (new_version)
        *new_version = 0;
    int rc = check_ns_key(ns, key, keylen);
    if (rc != STRATA_OK)
        return rc;
    if (!c || expected_version < STRATA_DB_ANY_VERSION || c->in_tx)
        return STRATA_EINVAL;
    if (expected_version == 0) /* "must not exist": there is nothing to delete */
        return STRATA_ENOTFOUND;
    strata_db_param p[5] = {strata_db_p_text(ns), strata_db_p_textn(key, keylen),
                            strata_db_p_blob("", 0), strata_db_p_int(now_ms(c)),
                            strata_db_p_int(expected_version)};
    bool any = expected_version == STRATA_DB_ANY_VERSION;
    if ((rc = strata_db_begin(c, NULL)) != STRATA_OK)
        return rc;
    int64_t v = 0;
    bool found = false;
    rc = db__query1_int(c, any ? SQL_DEL_ANY : SQL_DEL_IF, p, any ? 4 : 5, &v, &found, NULL);
    if (rc == STRATA_OK && !found) {
        /* Tell "absent" from "another version". */
        int64_t cur = 0;
        rc = db__query1_int(c,
                            "SELECT version FROM strata_kv WHERE ns = $1 AND key = $2"
                            " AND deleted = 0",
                            p, 2, &cur, &found, NULL);
        if (rc == STRATA_OK)
            rc = found ? STRATA_ECONFLICT : STRATA_ENOTFOUND;
    }
    if (rc == STRATA_OK)
        rc = outbox_insert(c, ns, key, keylen, v, STRATA_DB_OP_DEL);
    if (rc == STRATA_OK)
        rc = strata_db_commit(c, NULL);
    else
        strata_db_rollback(c);
    if (rc == STRATA_OK && new_version)
        *new_version = v;
    return rc;
}

int strata_db_conn_kv_keys(strata_db_conn *c, const char *ns, const char *after, size_t afterlen,
                           int limit, strata_db_result **out) {
    if (out)
        *out = NULL;
    int rc = db__check_name(ns, ns ? strlen(ns) : 0, STRATA_DB_NS_MAX);
    if (rc != STRATA_OK)
        return rc;
    if (!c || !out || limit < 1 || limit > 10000)
        return STRATA_EINVAL;
    if (after && afterlen > 0 && (rc = db__check_name(after, afterlen, STRATA_DB_KEY_MAX)) != 0)
        return rc;
    strata_db_param p[3] = {strata_db_p_text(ns),
                            strata_db_p_textn(after && afterlen ? after : "", after ? afterlen : 0),
                            strata_db_p_int(limit)};
    return strata_db_query(c,
                           "SELECT key FROM strata_kv WHERE ns = $1 AND key > $2 AND deleted = 0"
                           " ORDER BY key LIMIT $3",
                           p, 3, out, NULL, NULL);
}

/* ---- db-level wrappers: borrow, run, give back ------------------------------------ */

#define WITH_CONN(db, call)                     \
    do {                                        \
        if (!(db))                              \
            return STRATA_EINVAL;               \
        strata_db_conn *c_ = NULL;              \
        int rc_ = strata_db_acquire((db), &c_); \
        if (rc_ != STRATA_OK)                   \
            return rc_;                         \
        rc_ = (call);                           \
        strata_db_release(&c_);                 \
        return rc_;                             \
    } while (0)

int strata_db_kv_get(strata_db *db, const char *ns, const char *key, size_t keylen,
                     strata_buf *value, int64_t *version) {
    int rc = check_ns_key(ns, key, keylen); /* bad input never waits for a connection */
    if (rc != STRATA_OK)
        return rc;
    WITH_CONN(db, strata_db_conn_kv_get(c_, ns, key, keylen, value, version));
}

int strata_db_kv_put(strata_db *db, const char *ns, const char *key, size_t keylen,
                     const void *value, size_t len, int64_t expected_version,
                     int64_t *new_version) {
    int rc = check_ns_key(ns, key, keylen);
    if (rc != STRATA_OK)
        return rc;
    if (len > STRATA_DB_VALUE_MAX)
        return STRATA_ETOOBIG;
    WITH_CONN(
        db, strata_db_conn_kv_put(c_, ns, key, keylen, value, len, expected_version, new_version));
}

int strata_db_kv_delete(strata_db *db, const char *ns, const char *key, size_t keylen,
                        int64_t expected_version, int64_t *new_version) {
    int rc = check_ns_key(ns, key, keylen);
    if (rc != STRATA_OK)
        return rc;
    WITH_CONN(db, strata_db_conn_kv_delete(c_, ns, key, keylen, expected_version, new_version));
}

int strata_db_kv_keys(strata_db *db, const char *ns, const char *after, size_t afterlen, int limit,
                      strata_db_result **out) {
    WITH_CONN(db, strata_db_conn_kv_keys(c_, ns, after, afterlen, limit, out));
}

/* ---- outbox ---- */

static const char SQL_CLAIM_SQLITE[] =
    "UPDATE strata_outbox SET lease_owner = $1, lease_until = $2, attempts = attempts + 1"
    " WHERE id IN (SELECT id FROM strata_outbox WHERE lease_until <= $3 ORDER BY id LIMIT $4)"
    " RETURNING id, ns, key, version, op, attempts";
static const char SQL_CLAIM_PG[] =
    "UPDATE strata_outbox SET lease_owner = $1, lease_until = $2, attempts = attempts + 1"
    " WHERE id IN (SELECT id FROM strata_outbox WHERE lease_until <= $3 ORDER BY id LIMIT $4"
    " FOR UPDATE SKIP LOCKED) RETURNING id, ns, key, version, op, attempts";

static int cmp_row(const void *a, const void *b) {
    int64_t x = ((const strata_db_outbox_row *)a)->id, y = ((const strata_db_outbox_row *)b)->id;
    return (x > y) - (x < y);
}

void strata_db_outbox_free(strata_db_outbox_row *rows, size_t n) {
    if (!rows)
        return;
    for (size_t i = 0; i < n; i++) {
        strata_free(rows[i].ns);
        strata_free(rows[i].key);
    }
    strata_free(rows);
}

static int conn_outbox_claim(strata_db_conn *c, const char *owner, int limit, int64_t lease_ms,
                             strata_db_outbox_row **rows, size_t *n) {
    int64_t now = now_ms(c);
    strata_db_param p[4] = {strata_db_p_text(owner), strata_db_p_int(now + lease_ms),
                            strata_db_p_int(now), strata_db_p_int(limit)};
    strata_db_result *r = NULL;
    int rc = strata_db_query(c, c->lite ? SQL_CLAIM_SQLITE : SQL_CLAIM_PG, p, 4, &r, NULL, NULL);
    if (rc != STRATA_OK)
        return rc;
    int nr = strata_db_result_rows(r);
    if (nr == 0) {
        strata_db_result_free(&r);
        return STRATA_OK;
    }
    /* The rows are leased now: on ENOMEM below they return after the lease. */
    strata_db_outbox_row *out = strata_calloc((size_t)nr, sizeof *out);
    if (!out) {
        strata_db_result_free(&r);
        return STRATA_ENOMEM;
    }
    for (int i = 0; i < nr; i++) {
        size_t nslen, klen;
        const char *ns = strata_db_result_value(r, i, 1, &nslen);
        const char *key = strata_db_result_value(r, i, 2, &klen);
        out[i].id = strata_db_result_int64(r, i, 0, 0);
        out[i].ns = strata_strndup(ns ? ns : "", nslen);
        out[i].key = strata_strndup(key ? key : "", klen);
        out[i].keylen = klen;
        out[i].version = strata_db_result_int64(r, i, 3, 0);
        out[i].op = (strata_db_op)strata_db_result_int64(r, i, 4, 0);
        out[i].attempts = (int)strata_db_result_int64(r, i, 5, 0);
        if (!out[i].ns || !out[i].key) {
            strata_db_outbox_free(out, (size_t)nr);
            strata_db_result_free(&r);
            return STRATA_ENOMEM;
        }
    }
    strata_db_result_free(&r);
    qsort(out, (size_t)nr, sizeof *out, cmp_row);
    *rows = out;
    *n = (size_t)nr;
    return STRATA_OK;
}

int strata_db_outbox_claim(strata_db *db, const char *owner, int limit, int64_t lease_ms,
                           strata_db_outbox_row **rows, size_t *n) {
    if (!rows || !n)
        return STRATA_EINVAL;
    *rows = NULL;
    *n = 0;
    int rc = db__check_name(owner, owner ? strlen(owner) : 0, STRATA_DB_OWNER_MAX);
    if (rc != STRATA_OK)
        return rc;
    if (limit < 1 || limit > 10000 || lease_ms <= 0 || lease_ms > INT64_C(1) << 40)
        return STRATA_EINVAL;
    WITH_CONN(db, conn_outbox_claim(c_, owner, limit, lease_ms, rows, n));
}

static int conn_outbox_done(strata_db_conn *c, const int64_t *ids, size_t n) {
    int rc = strata_db_begin(c, NULL);
    for (size_t i = 0; rc == STRATA_OK && i < n; i++) {
        strata_db_param p = strata_db_p_int(ids[i]);
        rc = strata_db_query(c, "DELETE FROM strata_outbox WHERE id = $1", &p, 1, NULL, NULL, NULL);
    }
    if (rc == STRATA_OK)
        return strata_db_commit(c, NULL);
    strata_db_rollback(c);
    return rc;
}

int strata_db_outbox_done(strata_db *db, const int64_t *ids, size_t n) {
    if (n == 0)
        return STRATA_OK;
    if (!ids)
        return STRATA_EINVAL;
    WITH_CONN(db, conn_outbox_done(c_, ids, n));
}

int64_t strata_db_outbox_pending(strata_db *db) {
    if (!db)
        return STRATA_EINVAL;
    strata_db_conn *c = NULL;
    int rc = strata_db_acquire(db, &c);
    if (rc != STRATA_OK)
        return rc;
    int64_t v = 0;
    bool found;
    rc = db__query1_int(c, "SELECT COUNT(*) FROM strata_outbox", NULL, 0, &v, &found, NULL);
    strata_db_release(&c);
    return rc != STRATA_OK ? rc : v;
}

/* ---- idempotent apply ---- */

int strata_db_conn_apply_event_fn(strata_db_conn *c, const char *event_id, strata_db_tx_fn fn,
                                  void *arg, strata_db_apply_result *res, strata_buf *err) {
    int rc = check_event_id(event_id);
    if (rc != STRATA_OK)
        return rc;
    if (!c || !res || c->in_tx)
        return STRATA_EINVAL;
    if ((rc = strata_db_begin(c, err)) != STRATA_OK)
        return rc;
    strata_db_param p[2] = {strata_db_p_text(event_id), strata_db_p_int(now_ms(c))};
    int64_t changes = 0;
    rc = strata_db_query(c,
                         "INSERT INTO strata_applied_events (event_id, applied_at) VALUES ($1, $2)"
                         " ON CONFLICT (event_id) DO NOTHING",
                         p, 2, NULL, &changes, err);
    if (rc == STRATA_OK && changes == 0) {
        strata_db_rollback(c);
        *res = STRATA_DB_DUPLICATE;
        return STRATA_OK;
    }
    if (rc == STRATA_OK && fn)
        rc = fn(c, arg);
    if (rc < 0) {
        strata_db_rollback(c);
        return rc;
    }
    int fn_res = rc;
    if ((rc = strata_db_commit(c, err)) != STRATA_OK)
        return rc;
    *res = fn_res == STRATA_DB_SUPERSEDED ? STRATA_DB_SUPERSEDED : STRATA_DB_APPLIED;
    return STRATA_OK;
}

int strata_db_conn_apply_events(strata_db_conn *c, strata_db_event *evs, int n, strata_buf *err) {
    if (!c || n < 0 || (n > 0 && !evs) || c->in_tx)
        return STRATA_EINVAL;
    for (int i = 0; i < n; i++) {
        evs[i].status = check_event_id(evs[i].event_id);
        evs[i].res = 0;
    }
    int rc = strata_db_begin(c, err);
    if (rc != STRATA_OK)
        return rc;
    for (int i = 0; i < n && rc == STRATA_OK; i++) {
        strata_db_event *e = &evs[i];
        if (e->status != STRATA_OK)
            continue;
        if ((rc = strata_db_exec(c, "SAVEPOINT strata_ev", err)) != STRATA_OK)
            break;
        strata_db_param p[2] = {strata_db_p_text(e->event_id), strata_db_p_int(now_ms(c))};
        int64_t changes = 0;
        int st = strata_db_query(c,
                                 "INSERT INTO strata_applied_events (event_id, applied_at)"
                                 " VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
                                 p, 2, NULL, &changes, err);
        if (st == STRATA_OK && changes == 0)
            e->res = STRATA_DB_DUPLICATE;
        else if (st == STRATA_OK && e->fn) {
            st = e->fn(c, e->arg);
            if (st >= 0) {
                e->res = st == STRATA_DB_SUPERSEDED ? STRATA_DB_SUPERSEDED : STRATA_DB_APPLIED;
                st = STRATA_OK;
            }
        } else if (st == STRATA_OK)
            e->res = STRATA_DB_APPLIED;
        e->status = st;
        if (st == STRATA_EUNAVAIL || st == STRATA_ETIMEDOUT || c->broken) {
            rc = st; /* the connection, not the event: the batch is lost */
            break;
        }
        rc = strata_db_exec(
            c, st == STRATA_OK ? "RELEASE SAVEPOINT strata_ev" : "ROLLBACK TO SAVEPOINT strata_ev",
            NULL);
        if (rc == STRATA_OK && st != STRATA_OK)
            rc = strata_db_exec(c, "RELEASE SAVEPOINT strata_ev", NULL);
    }
    if (rc == STRATA_OK)
        rc = strata_db_commit(c, err);
    else
        strata_db_rollback(c);
    if (rc != STRATA_OK)
        for (int i = 0; i < n; i++) {
            if (evs[i].status == STRATA_OK || evs[i].status == STRATA_EUNAVAIL ||
                evs[i].status == STRATA_ETIMEDOUT)
                evs[i].status = rc;
            evs[i].res = 0;
        }
    return rc;
}

int strata_db_apply_events(strata_db *db, strata_db_event *evs, int n, strata_buf *err) {
    WITH_CONN(db, strata_db_conn_apply_events(c_, evs, n, err));
}

typedef struct apply_kv {
    const char *ns, *key;
    size_t keylen;
    const void *value;
    size_t len;
    int64_t version;
} apply_kv;

static int apply_kv_fn(strata_db_conn *c, void *arg) {
    apply_kv *a = arg;
    strata_db_param p[5] = {strata_db_p_text(a->ns), strata_db_p_textn(a->key, a->keylen),
                            strata_db_p_blob(a->value, a->len), strata_db_p_int(a->version),
                            strata_db_p_int(now_ms(c))};
    int64_t changes = 0;
    int rc = strata_db_query(
        c,
        "INSERT INTO strata_kv (ns, key, value, version, deleted, updated_at)"
        " VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (ns, key) DO UPDATE SET"
        " value = excluded.value, version = excluded.version, deleted = 0,"
        " updated_at = excluded.updated_at WHERE strata_kv.version < excluded.version",
        p, 5, NULL, &changes, NULL);
    if (rc != STRATA_OK)
        return rc;
    return changes == 0 ? STRATA_DB_SUPERSEDED : STRATA_OK;
}

int strata_db_apply_event(strata_db *db, const char *event_id, const char *ns, const char *key,
                          size_t keylen, const void *value, size_t len, int64_t version,
                          strata_db_apply_result *res) {
    int rc = check_event_id(event_id);
    if (rc == STRATA_OK)
        rc = check_ns_key(ns, key, keylen);
    if (rc != STRATA_OK)
        return rc;
    if (!res || (len > 0 && !value) || version < 1)
        return STRATA_EINVAL;
    if (len > STRATA_DB_VALUE_MAX)
        return STRATA_ETOOBIG;
    apply_kv a = {ns, key, keylen, value, len, version};
    WITH_CONN(db, strata_db_conn_apply_event_fn(c_, event_id, apply_kv_fn, &a, res, NULL));
}

typedef struct apply_stmts {
    const strata_db_stmt *stmts;
    int n;
    strata_buf *err;
} apply_stmts;

static int apply_stmts_fn(strata_db_conn *c, void *arg) {
    apply_stmts *a = arg;
    for (int i = 0; i < a->n; i++) {
        int rc = strata_db_query(c, a->stmts[i].sql, a->stmts[i].params, a->stmts[i].nparams, NULL,
                                 NULL, a->err);
        if (rc != STRATA_OK)
            return rc;
    }
    return STRATA_OK;
}

int strata_db_apply_event_stmts(strata_db *db, const char *event_id, const strata_db_stmt *stmts,
                                int n, strata_db_apply_result *res, strata_buf *err) {
    int rc = check_event_id(event_id);
    if (rc != STRATA_OK)
        return rc;
    if (n < 0 || (n > 0 && !stmts) || !res)
        return STRATA_EINVAL;
    for (int i = 0; i < n; i++)
        if (!stmts[i].sql)
            return STRATA_EINVAL;
    apply_stmts a = {stmts, n, err};
    WITH_CONN(db, strata_db_conn_apply_event_fn(c_, event_id, apply_stmts_fn, &a, res, err));
}

int strata_db_event_applied(strata_db *db, const char *event_id) {
    int rc = check_event_id(event_id);
    if (rc != STRATA_OK)
        return rc;
    if (!db)
        return STRATA_EINVAL;
    strata_db_conn *c = NULL;
    if ((rc = strata_db_acquire(db, &c)) != STRATA_OK)
        return rc;
    int64_t v = 0;
    bool found = false;
    strata_db_param p = strata_db_p_text(event_id);
    rc = db__query1_int(c, "SELECT 1 FROM strata_applied_events WHERE event_id = $1", &p, 1, &v,
                        &found, NULL);
    strata_db_release(&c);
    return rc != STRATA_OK ? rc : found ? 1 : 0;
}
