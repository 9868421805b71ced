/* status.c: names, messages and HTTP mapping of strata_status (strata/status.h). */
#include <errno.h>
#include <stddef.h>

#include "strata/status.h"

typedef struct {
    int value;
    int http;
    const char *name;
    const char *msg;
} status_row;

static const status_row rows[] = {
#define ROW(name, value, http, msg) {value, http, #name, msg},
    STRATA_STATUS_MAP(ROW)
#undef ROW
};

static const status_row *find(int status) {
    int idx = -status;
    if (idx >= 0 && (size_t)idx < sizeof rows / sizeof rows[0] && rows[idx].value == status)
        return &rows[idx];
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (rows[i].value == status)
            return &rows[i];
    return NULL;
}

const char *strata_strerror(int status) {
    const status_row *r = find(status);
    return r ? r->msg : "unknown status";
}

const char *strata_status_name(int status) {
    const status_row *r = find(status);
    return r ? r->name : "EUNKNOWNSTATUS";
}

int strata_status_http(int status) {
    const status_row *r = find(status);
    return r ? r->http : 500;
}

strata_status strata_status_from_errno(int err) {
    switch (err) {
    case 0: return STRATA_OK;
    case ENOMEM: return STRATA_ENOMEM;
    case EINVAL: return STRATA_EINVAL;
    case ENOENT: return STRATA_ENOTFOUND;
    case EEXIST: return STRATA_EEXIST;
    case ERANGE:
    case EOVERFLOW: return STRATA_ERANGE;
    case E2BIG:
    case EMSGSIZE: return STRATA_ETOOBIG;
    case ETIMEDOUT: return STRATA_ETIMEDOUT;
    case EIO: return STRATA_EIO;
    case ECONNREFUSED:
    case EHOSTUNREACH:
    case ENETUNREACH: return STRATA_EUNAVAIL;
    case EAGAIN:
    case EBUSY:
    case EINTR: return STRATA_ERETRY;
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN: return STRATA_ECLOSED;
    case ECANCELED: return STRATA_ECANCELED;
    case EACCES:
    case EPERM: return STRATA_EPERM;
    default: return STRATA_ESYS;
    }
}
