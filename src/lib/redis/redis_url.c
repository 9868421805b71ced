/*
 * redis_url.c: parsing and formatting of Strata's Redis URLs.
 *
 *   redis://[user:pass@]host[:port][/db]
 *   unix:///path/to/socket[?db=N]
 *   redis-sentinel://[user:pass@]h1[:p1],h2[:p2]/master-name
 *   redis-cluster://[user:pass@]h1[:p1],h2[:p2]
 *
 * Every input byte is checked: hosts are [A-Za-z0-9.-_] or a bracketed IPv6
 * literal, ports 1..65535, db 0..65535, names printable; user and password
 * may be %-encoded.  The parser never trusts lengths it has not checked.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/redis.h"
#include "strata/status.h"

#define URL_MAX_HOSTS 64
#define URL_MAX_LEN   4096

static int fail(strata_buf *err, const char *what) {
    if (err)
        strata_buf_printf(err, "bad redis url: %s", what);
    return STRATA_EINVAL;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* %-decodes s[0..n) into a new string; NULL on a bad escape or NUL byte (sets *bad) or ENOMEM. */
static char *pct_decode(const char *s, size_t n, int *bad) {
    char *out = strata_malloc(n + 1);
    size_t j = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int h, l;
            if (i + 2 >= n || (h = hexval((unsigned char)s[i + 1])) < 0 ||
                (l = hexval((unsigned char)s[i + 2])) < 0 || (h == 0 && l == 0)) {
                strata_free(out);
                *bad = 1;
                return NULL;
            }
            out[j++] = (char)(h * 16 + l);
            i += 2;
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}

static int parse_port(const char *s, size_t n, uint16_t *out) {
    unsigned v = 0;
    if (n == 0 || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v == 0 || v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

static int parse_db(const char *s, size_t n, int *out) {
    unsigned v = 0;
    if (n == 0 || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (int)v;
    return 0;
}

/* Parses one "host[:port]" or "[v6][:port]" item. */
static int parse_hostport(const char *s, size_t n, uint16_t defport, strata_redis_host *h,
                          strata_buf *err) {
    const char *hs = s, *ps = NULL;
    size_t hn = 0, pn = 0;
    if (n == 0)
        return fail(err, "empty host");
    if (s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return fail(err, "unterminated [ipv6]");
        hs = s + 1;
        hn = (size_t)(close - hs);
        size_t rest = n - (size_t)(close + 1 - s);
        if (rest > 0) {
            if (close[1] != ':')
                return fail(err, "junk after ]");
            ps = close + 2;
            pn = rest - 1;
        }
        for (size_t i = 0; i < hn; i++)
            if (!isxdigit((unsigned char)hs[i]) && hs[i] != ':' && hs[i] != '.')
                return fail(err, "bad character in ipv6 address");
    } else {
        const char *colon = memchr(s, ':', n);
        hn = colon ? (size_t)(colon - s) : n;
        if (colon) {
            ps = colon + 1;
            pn = n - hn - 1;
        }
        for (size_t i = 0; i < hn; i++) {
            unsigned char c = (unsigned char)hs[i];
            if (!isalnum(c) && c != '.' && c != '-' && c != '_')
                return fail(err, "bad character in host");
        }
    }
    if (hn == 0 || hn > 253)
        return fail(err, "bad host length");
    if (ps) {
        if (parse_port(ps, pn, &h->port) < 0)
            return fail(err, "port must be 1..65535");
    } else {
        h->port = defport;
    }
    h->host = strata_strndup(hs, hn);
    return h->host ? STRATA_OK : STRATA_ENOMEM;
}

static int parse_userinfo(const char *s, size_t n, strata_redis_url *u, strata_buf *err) {
    const char *colon = memchr(s, ':', n);
    int bad = 0;
    if (!colon) {
        /* "redis://password@host" is a common shorthand; treat it as the password. */
        u->password = pct_decode(s, n, &bad);
    } else {
        size_t un = (size_t)(colon - s);
        if (un > 0) {
            u->user = pct_decode(s, un, &bad);
            if (!u->user)
                return bad ? fail(err, "bad %-escape in user") : STRATA_ENOMEM;
        }
        u->password = pct_decode(colon + 1, n - un - 1, &bad);
    }
    if (!u->password)
        return bad ? fail(err, "bad %-escape in password") : STRATA_ENOMEM;
    return STRATA_OK;
}

static int parse_hostlist(const char *s, size_t n, uint16_t defport, strata_redis_url *u,
                          strata_buf *err) {
    size_t count = 1;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ',')
            count++;
    if (count > URL_MAX_HOSTS)
        return fail(err, "too many hosts");
    u->hosts = strata_calloc(count, sizeof(*u->hosts));
    if (!u->hosts)
        return STRATA_ENOMEM;
    const char *p = s, *end = s + n;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        int rc = parse_hostport(p, (size_t)(e - p), defport, &u->hosts[u->nhosts], err);
        if (rc < 0)
            return rc;
        u->nhosts++;
        if (!comma)
            break;
        p = comma + 1;
    }
    return STRATA_OK;
}

static int parse_inner(const char *url, strata_redis_url *u, strata_buf *err) {
    size_t len = strlen(url);
    if (len == 0 || len > URL_MAX_LEN)
        return fail(err, "empty or longer than 4096 bytes");
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)url[i] <= ' ' || (unsigned char)url[i] == 0x7f)
            return fail(err, "control character or space");

    static const struct {
        const char *scheme;
        strata_redis_mode mode;
        uint16_t defport;
    } schemes[] = {
        {"redis://", STRATA_REDIS_STANDALONE, 6379},
        {"redis-sentinel://", STRATA_REDIS_SENTINEL, 26379},
        {"redis-cluster://", STRATA_REDIS_CLUSTER, 6379},
    };

    if (strncmp(url, "unix://", 7) == 0) {
        const char *path = url + 7;
        const char *q = strchr(path, '?');
        size_t pn = q ? (size_t)(q - path) : strlen(path);
        u->mode = STRATA_REDIS_STANDALONE;
        if (pn < 2 || path[0] != '/')
            return fail(err, "unix:// needs an absolute path (unix:///path)");
        if (pn > 107)
            return fail(err, "unix socket path longer than 107 bytes");
        if (q) {
            if (strncmp(q, "?db=", 4) != 0 || parse_db(q + 4, strlen(q + 4), &u->db) < 0)
                return fail(err, "unix:// query must be ?db=N (0..65535)");
        }
        u->unix_path = strata_strndup(path, pn);
        return u->unix_path ? STRATA_OK : STRATA_ENOMEM;
    }

    size_t k;
    for (k = 0; k < sizeof(schemes) / sizeof(schemes[0]); k++)
        if (strncmp(url, schemes[k].scheme, strlen(schemes[k].scheme)) == 0)
            break;
    if (k == sizeof(schemes) / sizeof(schemes[0]))
        return fail(err, "scheme must be redis://, unix://, redis-sentinel:// or redis-cluster://");
    u->mode = schemes[k].mode;
    const char *p = url + strlen(schemes[k].scheme);
    const char *end = url + len;

    /* userinfo: up to the last '@' before the path */
    const char *slash = memchr(p, '/', (size_t)(end - p));
    const char *auth_end = slash ? slash : end;
    const char *at = NULL;
    for (const char *c = p; c < auth_end; c++)
        if (*c == '@')
            at = c;
    if (at) {
        int rc = parse_userinfo(p, (size_t)(at - p), u, err);
        if (rc < 0)
            return rc;
        p = at + 1;
    }
    int rc = parse_hostlist(p, (size_t)(auth_end - p), schemes[k].defport, u, err);
    if (rc < 0)
        return rc;

    const char *path = slash ? slash + 1 : NULL;
    size_t pathn = slash ? (size_t)(end - path) : 0;
    switch (u->mode) {
    case STRATA_REDIS_STANDALONE:
        if (u->nhosts != 1)
            return fail(err, "redis:// takes exactly one host");
        if (path && pathn > 0 && parse_db(path, pathn, &u->db) < 0)
            return fail(err, "db must be a number 0..65535");
        break;
    case STRATA_REDIS_SENTINEL:
        if (!path || pathn == 0)
            return fail(err, "redis-sentinel:// needs /master-name");
        if (pathn > 200)
            return fail(err, "master name too long");
        for (size_t i = 0; i < pathn; i++) {
            unsigned char c = (unsigned char)path[i];
            if (!isalnum(c) && c != '-' && c != '_' && c != '.')
                return fail(err, "master name must be [A-Za-z0-9._-]");
        }
        u->master_name = strata_strndup(path, pathn);
        if (!u->master_name)
            return STRATA_ENOMEM;
        break;
    case STRATA_REDIS_CLUSTER:
        if (path && pathn > 0)
            return fail(err, "redis-cluster:// takes no path (cluster has no db)");
        break;
    }
    return STRATA_OK;
}

int strata_redis_url_parse(const char *url, strata_redis_url *out, strata_buf *err) {
    if (!out)
        return STRATA_EINVAL;
    memset(out, 0, sizeof(*out));
    if (!url)
        return fail(err, "missing");
    int rc = parse_inner(url, out, err);
    if (rc < 0)
        strata_redis_url_free(out);
    return rc;
}

void strata_redis_url_free(strata_redis_url *u) {
    if (!u)
        return;
    strata_free(u->user);
    if (u->password) {
        /* Do not leave the secret in freed memory. */
        volatile char *p = u->password;
        while (*p)
            *p++ = 0;
        strata_free(u->password);
    }
    strata_free(u->unix_path);
    for (size_t i = 0; i < u->nhosts; i++)
        strata_free(u->hosts[i].host);
    strata_free(u->hosts);
    strata_free(u->master_name);
    memset(u, 0, sizeof(*u));
}

int strata_redis_url_format(const strata_redis_url *u, strata_buf *out) {
    if (u->unix_path) {
        strata_buf_printf(out, "unix://%s", u->unix_path);
        if (u->db)
            strata_buf_printf(out, "?db=%d", u->db);
        return out->oom ? STRATA_ENOMEM : STRATA_OK;
    }
    static const char *const names[] = {"redis://", "redis-sentinel://", "redis-cluster://"};
    strata_buf_puts(out, names[u->mode]);
    if (u->user || u->password)
        strata_buf_printf(out, "%s%s@", u->user ? u->user : "", u->password ? ":***" : "");
    for (size_t i = 0; i < u->nhosts; i++) {
        const char *h = u->hosts[i].host;
        if (strchr(h, ':'))
            strata_buf_printf(out, "%s[%s]:%u", i ? "," : "", h, u->hosts[i].port);
        else
            strata_buf_printf(out, "%s%s:%u", i ? "," : "", h, u->hosts[i].port);
    }
    if (u->mode == STRATA_REDIS_SENTINEL)
        strata_buf_printf(out, "/%s", u->master_name);
    else if (u->mode == STRATA_REDIS_STANDALONE && u->db)
        strata_buf_printf(out, "/%d", u->db);
    return out->oom ? STRATA_ENOMEM : STRATA_OK;
}
