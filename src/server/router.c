/*
 * router.c: route registration and matching.
 *
 * Routes are few (tens) and fixed before the server starts, so the table is a
 * plain array scanned linearly: for each route, the request path is walked
 * segment by segment against the pattern's segments (literal or {param}).
 * When several patterns match, the most specific wins: patterns are compared
 * by the positions of their literal segments, earliest first (so
 * "/v1/items/new" beats "/v1/items/{id}").  A path matched by patterns that
 * have no route for the method gives 405 with the union of their methods in
 * `Allow`; a path matched by none, 404.  Parameter values are percent-decoded
 * into the request arena; an invalid escape or an encoded NUL gives 400.
 */
#include <ctype.h>
#include <string.h>

#include "server/server_internal.h"
#include "strata/alloc.h"
#include "strata/metrics.h"
#include "strata/status.h"

static bool valid_method(const char *m) {
    size_t n = strlen(m);
    if (n == 0 || n >= 16)
        return false;
    for (size_t i = 0; i < n; i++)
        if (m[i] < 'A' || m[i] > 'Z')
            return false;
    return true;
}

static bool pattern_char_ok(char ch) {
    return isalnum((unsigned char)ch) || strchr("-._~!$&'()*+,;=:@", ch) != NULL;
}

/* Splits `pattern` into r->segs; false on a malformed pattern. */
static bool parse_pattern(srv_route *r, const char *pattern) {
    if (pattern[0] != '/' || strlen(pattern) > 256)
        return false;
    const char *p = pattern + 1;
    r->nseg = 0;
    if (*p == '\0')
        return true; /* "/" */
    while (1) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0 || r->nseg >= SRV_MAX_SEGS)
            return false;
        srv_seg *sg = &r->segs[r->nseg];
        if (p[0] == '{') {
            if (len < 3 || p[len - 1] != '}')
                return false;
            for (size_t i = 1; i + 1 < len; i++)
                if (!isalnum((unsigned char)p[i]) && p[i] != '_')
                    return false;
            sg->param = true;
            sg->text = strata_strndup(p + 1, len - 2);
            sg->len = len - 2;
        } else {
            for (size_t i = 0; i < len; i++)
                if (!pattern_char_ok(p[i]))
                    return false;
            sg->param = false;
            sg->text = strata_strndup(p, len);
            sg->len = len;
        }
        if (!sg->text)
            return false;
        r->nseg++;
        if (!e)
            break;
        p = e + 1;
    }
    int params = 0;
    for (int i = 0; i < r->nseg; i++)
        params += r->segs[i].param;
    return params <= SRV_MAX_PARAMS;
}

static void route_free(srv_route *r) {
    if (!r)
        return;
    for (int i = 0; i < r->nseg; i++)
        strata_free(r->segs[i].text);
    strata_free(r->pattern);
    strata_free(r);
}

int srv_router_add(strata_server *s, const char *method, const char *pattern, unsigned flags,
                   strata_http_handler fn, void *ctx) {
    if (!s || !method || !pattern || !fn || s->started || !valid_method(method))
        return STRATA_EINVAL;
    srv_route *r = strata_calloc(1, sizeof *r);
    if (!r)
        return STRATA_ENOMEM;
    if (!parse_pattern(r, pattern)) {
        route_free(r);
        return STRATA_EINVAL;
    }
    for (int i = 0; i < s->nroutes; i++) {
        if (strcmp(s->routes[i]->method, method) == 0 &&
            strcmp(s->routes[i]->pattern, pattern) == 0) {
            route_free(r);
            return STRATA_EEXIST;
        }
    }
    snprintf(r->method, sizeof r->method, "%s", method);
    r->pattern = strata_strdup(pattern);
    r->flags = flags;
    r->fn = fn;
    r->ctx = ctx;
    if (!r->pattern) {
        route_free(r);
        return STRATA_ENOMEM;
    }
    /* One latency histogram per pattern (shared by its methods). */
    if (s->deps.metrics) {
        char labels[320];
        snprintf(labels, sizeof labels, "route=\"%s\"", pattern);
        r->latency =
            strata_metrics_histogram(s->deps.metrics, "strata_http_request_duration_seconds",
                                     "HTTP request latency from the last request byte "
                                     "to the response being queued",
                                     labels, STRATA_HIST_NS);
    }
    if (s->nroutes == s->routes_cap) {
        int ncap = s->routes_cap ? s->routes_cap * 2 : 16;
        srv_route **nr = strata_realloc(s->routes, (size_t)ncap * sizeof *nr);
        if (!nr) {
            route_free(r);
            return STRATA_ENOMEM;
        }
        s->routes = nr;
        s->routes_cap = ncap;
    }
    r->index = s->nroutes;
    s->routes[s->nroutes++] = r;
    return STRATA_OK;
}

void srv_routes_free(strata_server *s) {
    for (int i = 0; i < s->nroutes; i++)
        route_free(s->routes[i]);
    strata_free(s->routes);
    s->routes = NULL;
    s->nroutes = s->routes_cap = 0;
    route_free(s->unmatched);
    s->unmatched = NULL;
}

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch |= 0x20;
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/*
 * Percent-decodes src[0..n) into the arena; plus_space turns '+' into ' '
 * (query strings).  NULL on a bad escape, an encoded NUL, or ENOMEM.
 */
static char *pct_decode(strata_http_req *req, const char *src, size_t n, bool plus_space) {
    char *out = srv_arena_alloc(&req->arena, n + 1);
    if (!out)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = src[i];
        if (ch == '%') {
            if (i + 2 >= n)
                return NULL;
            int hi = hexval((unsigned char)src[i + 1]), lo = hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0)
                return NULL;
            ch = (char)(hi * 16 + lo);
            if (ch == '\0')
                return NULL;
            i += 2;
        } else if (ch == '+' && plus_space) {
            ch = ' ';
        }
        out[j++] = ch;
    }
    out[j] = '\0';
    return out;
}

const char *strata_http_query(strata_http_req *req, const char *name) {
    const char *q = req->query;
    size_t nlen = strlen(name);
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        size_t klen = eq ? (size_t)(eq - q) : len;
        /* Compare the decoded key with name. */
        char *key = pct_decode(req, q, klen, true);
        if (key && strlen(key) == nlen && memcmp(key, name, nlen) == 0) {
            if (!eq)
                return "";
            return pct_decode(req, eq + 1, len - klen - 1, true);
        }
        if (!amp)
            break;
        q = amp + 1;
    }
    return NULL;
}

/* Specificity: bit (SRV_MAX_SEGS-1-i) set when segment i is literal; higher is more specific. */
static unsigned specificity(const srv_route *r) {
    unsigned v = 0;
    for (int i = 0; i < r->nseg; i++)
        if (!r->segs[i].param)
            v |= 1u << (SRV_MAX_SEGS - 1 - i);
    return v;
}

/* Does `path` (already split) match route r's segments? */
static bool seg_match(const srv_route *r, const char *const *seg, const size_t *seglen, int nseg) {
    if (r->nseg != nseg)
        return false;
    for (int i = 0; i < nseg; i++) {
        if (r->segs[i].param) {
            if (seglen[i] == 0)
                return false;
        } else if (r->segs[i].len != seglen[i] || memcmp(r->segs[i].text, seg[i], seglen[i]) != 0) {
            return false;
        }
    }
    return true;
}

static void allow_add(srv_match *m, const char *method) {
    size_t n = strlen(m->allow);
    size_t ml = strlen(method);
    /* skip duplicates */
    const char *p = m->allow;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == ml && memcmp(p, method, ml) == 0)
            return;
        p = e ? e + 2 : p + l;
    }
    if (n + ml + 3 >= sizeof m->allow)
        return;
    if (n)
        memcpy(m->allow + n, ", ", 2), n += 2;
    memcpy(m->allow + n, method, ml + 1);
}

void srv_router_match(const strata_server *s, strata_http_req *req, srv_match *m) {
    memset(m, 0, sizeof *m);
    const char *path = req->path;
    const char *seg[SRV_MAX_SEGS];
    size_t seglen[SRV_MAX_SEGS];
    int nseg = 0;
    if (path[0] != '/') {
        m->status = 404;
        return;
    }
    const char *p = path + 1;
    if (*p) {
        while (1) {
            if (nseg >= SRV_MAX_SEGS) {
                m->status = 404;
                return;
            }
            const char *e = strchr(p, '/');
            size_t len = e ? (size_t)(e - p) : strlen(p);
            seg[nseg] = p;
            seglen[nseg] = len;
            nseg++;
            if (!e)
                break;
            p = e + 1;
        }
    }
    const char *method = http_method_str((enum http_method)req->method);
    bool is_head = req->method == HTTP_HEAD;
    const srv_route *best = NULL;
    unsigned best_spec = 0;
    bool any = false;
    for (int i = 0; i < s->nroutes; i++) {
        const srv_route *r = s->routes[i];
        if (!seg_match(r, seg, seglen, nseg))
            continue;
        any = true;
        bool method_ok =
            strcmp(r->method, method) == 0 || (is_head && strcmp(r->method, "GET") == 0);
        if (!method_ok)
            continue;
        unsigned sp = specificity(r);
        /* An exact HEAD route beats GET-serving-HEAD at equal specificity. */
        if (!best || sp > best_spec ||
            (sp == best_spec && is_head && strcmp(r->method, "HEAD") == 0)) {
            best = r;
            best_spec = sp;
        }
    }
    if (!best) {
        m->status = any ? 405 : 404;
        if (any) {
            for (int i = 0; i < s->nroutes; i++) {
                const srv_route *r = s->routes[i];
                if (!seg_match(r, seg, seglen, nseg))
                    continue;
                allow_add(m, r->method);
                if (strcmp(r->method, "GET") == 0)
                    allow_add(m, "HEAD");
            }
        }
        return;
    }
    /* Among the patterns of the same specificity another may be a better fit only
     * by method; specificity already ordered them.  Collect the parameters. */
    m->route = best;
    for (int i = 0; i < nseg; i++) {
        if (!best->segs[i].param)
            continue;
        const char *v = pct_decode(req, seg[i], seglen[i], false);
        if (!v) {
            m->status = 400;
            m->route = NULL;
            return;
        }
        m->names[m->nparams] = best->segs[i].text;
        m->vals[m->nparams] = v;
        m->nparams++;
    }
}

const char *strata_http_param(const strata_http_req *req, const char *name) {
    for (int i = 0; i < req->m.nparams; i++)
        if (strcmp(req->m.names[i], name) == 0)
            return req->m.vals[i];
    return NULL;
}
