/*
 * strata/status.h: the one set of status codes every Strata call returns.
 *
 * Success is STRATA_OK (0); failures are negative, so `if (rc < 0)` works and a
 * function may return a non-negative count on success.  Errors from hiredis,
 * libpq, SQLite and the OS are mapped onto this small stable set at the
 * boundary where they arise; the table is the single source of the names,
 * the messages and the HTTP status an error maps to by default.
 */
#ifndef STRATA_STATUS_H
#define STRATA_STATUS_H

/* X(name, value, http_status, message) */
#define STRATA_STATUS_MAP(X)                                                              \
    X(OK, 0, 200, "ok")                                                                   \
    X(ENOMEM, -1, 503, "out of memory")                                                   \
    X(EINVAL, -2, 400, "invalid argument")                                                \
    X(ENOTFOUND, -3, 404, "not found")                                                    \
    X(EEXIST, -4, 409, "already exists")                                                  \
    X(ERANGE, -5, 400, "value out of range")                                              \
    X(ETOOBIG, -6, 413, "too large")                                                      \
    X(ETIMEDOUT, -7, 504, "timed out")                                                    \
    X(EUNKNOWN, -8, 503, "outcome unknown: the request may or may not have been applied") \
    X(EIO, -9, 503, "i/o error")                                                          \
    X(EUNAVAIL, -10, 503, "service unavailable")                                          \
    X(ERETRY, -11, 503, "temporarily unavailable, retry")                                 \
    X(EPROTO, -12, 502, "protocol error")                                                 \
    X(EBACKPRESSURE, -13, 503, "backpressure: queue full")                                \
    X(ECROSSSLOT, -14, 400, "keys span more than one cluster slot")                       \
    X(ECLOSED, -15, 503, "closed")                                                        \
    X(ECANCELED, -16, 503, "canceled")                                                    \
    X(ECONFLICT, -17, 409, "version conflict")                                            \
    X(ELIMITED, -18, 429, "rate limited")                                                 \
    X(EBREAKER, -19, 503, "circuit breaker open")                                         \
    X(EAUTH, -20, 401, "authentication failed")                                           \
    X(EPERM, -21, 403, "not permitted")                                                   \
    X(ESYS, -22, 500, "system call failed")                                               \
    X(EINTERNAL, -23, 500, "internal error")

typedef enum strata_status {
#define STRATA__STATUS_ENUM(name, value, http, msg) STRATA_##name = (value),
    STRATA_STATUS_MAP(STRATA__STATUS_ENUM)
#undef STRATA__STATUS_ENUM
} strata_status;

/** Human-readable message for a status; never NULL (unknown codes get a generic text). */
const char *strata_strerror(int status);

/** Stable short name of a status, e.g. "ETIMEDOUT"; never NULL. */
const char *strata_status_name(int status);

/** The HTTP status an error maps to when a layer has no better answer. */
int strata_status_http(int status);

/** Maps an errno value (positive) onto a Strata status. */
strata_status strata_status_from_errno(int err);

#endif
