/*
 * json.c: strict JSON input over cJSON (strata/json.h).
 *
 * Three passes, each simple:
 *   1. validate(): a recursive-descent recogniser for RFC 8259 that builds
 *      nothing.  It checks the grammar, UTF-8 (RFC 3629: no overlongs, no
 *      surrogates, nothing above U+10FFFF), escapes (\u0000 and unpaired
 *      surrogates refused), nesting depth, and records the span of every
 *      number literal in document order.  Depth is bounded before recursing,
 *      so hostile input cannot exhaust the stack.
 *   2. cJSON_ParseWithLengthOpts() builds the tree.  Because pass 1 accepted
 *      the text, cJSON (more lenient) accepts it too and produces the same
 *      structure.
 *   3. A walk in document order hands each number node its literal text (the
 *      k-th number node is the k-th literal) as `valuestring`, which
 *      cJSON_Delete frees, and checks each object for duplicate keys (after
 *      unescaping, so "a" and "\u0061" collide): quadratic for small
 *      objects, sort-and-compare above 16 members.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/json.h"
#include "strata/status.h"

/* ---- pass 1: the recogniser ------------------------------------------------ */

typedef struct span {
    size_t off, len;
} span;

typedef struct scanner {
    const unsigned char *s;
    size_t len, pos;
    int max_depth;
    const char *error;
    span *nums;
    size_t nnums, capnums;
    bool oom;
} scanner;

static bool fail(scanner *sc, const char *why) {
    if (!sc->error)
        sc->error = why;
    return false;
}

static void skip_ws(scanner *sc) {
    while (sc->pos < sc->len) {
        unsigned char ch = sc->s[sc->pos];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r')
            break;
        sc->pos++;
    }
}

/* Length of a valid UTF-8 sequence starting at p (>= 2 bytes), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t avail) {
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (avail < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && p[1] < 0xA0)
            return 0; /* overlong */
        if (c == 0xED && p[1] >= 0xA0)
            return 0; /* UTF-16 surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (avail < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90)
            return 0; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90)
            return 0; /* above U+10FFFF */
        return 4;
    }
    return 0;
}

static int hex4(const unsigned char *p) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static bool scan_string(scanner *sc) {
    sc->pos++; /* opening quote */
    while (sc->pos < sc->len) {
        unsigned char ch = sc->s[sc->pos];
        if (ch == '"') {
            sc->pos++;
            return true;
        }
        if (ch < 0x20)
            return fail(sc, "control character in string");
        if (ch == '\\') {
            if (sc->pos + 1 >= sc->len)
                return fail(sc, "unterminated string");
            unsigned char e = sc->s[sc->pos + 1];
            if (strchr("\"\\/bfnrt", e) && e) {
                sc->pos += 2;
                continue;
            }
            if (e != 'u')
                return fail(sc, "invalid escape in string");
            if (sc->pos + 6 > sc->len)
                return fail(sc, "truncated \\u escape");
            int u = hex4(sc->s + sc->pos + 2);
            if (u < 0)
                return fail(sc, "invalid \\u escape");
            if (u == 0)
                return fail(sc, "\\u0000 is not allowed in strings");
            sc->pos += 6;
            if (u >= 0xDC00 && u <= 0xDFFF)
                return fail(sc, "unpaired UTF-16 surrogate escape");
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (sc->pos + 6 > sc->len || sc->s[sc->pos] != '\\' || sc->s[sc->pos + 1] != 'u')
                    return fail(sc, "unpaired UTF-16 surrogate escape");
                int lo = hex4(sc->s + sc->pos + 2);
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return fail(sc, "unpaired UTF-16 surrogate escape");
                sc->pos += 6;
            }
            continue;
        }
        if (ch < 0x80) {
            sc->pos++;
            continue;
        }
        size_t n = utf8_seq(sc->s + sc->pos, sc->len - sc->pos);
        if (n == 0)
            return fail(sc, "invalid UTF-8");
        sc->pos += n;
    }
    return fail(sc, "unterminated string");
}

static bool scan_number(scanner *sc) {
    size_t start = sc->pos;
    const unsigned char *s = sc->s;
    size_t n = sc->len, p = sc->pos;
    if (p < n && s[p] == '-')
        p++;
    if (p >= n || !isdigit(s[p]))
        return fail(sc, "invalid number");
    if (s[p] == '0') {
        p++;
        if (p < n && isdigit(s[p]))
            return fail(sc, "leading zero in number");
    } else {
        while (p < n && isdigit(s[p]))
            p++;
    }
    if (p < n && s[p] == '.') {
        p++;
        if (p >= n || !isdigit(s[p]))
            return fail(sc, "invalid number");
        while (p < n && isdigit(s[p]))
            p++;
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        p++;
        if (p < n && (s[p] == '+' || s[p] == '-'))
            p++;
        if (p >= n || !isdigit(s[p]))
            return fail(sc, "invalid number");
        while (p < n && isdigit(s[p]))
            p++;
    }
    if (p - start > 64)
        return fail(sc, "number literal too long");
    sc->pos = p;
    if (sc->nnums == sc->capnums) {
        size_t nc = sc->capnums ? sc->capnums * 2 : 16;
        span *ns = strata_realloc(sc->nums, nc * sizeof *ns);
        if (!ns) {
            sc->oom = true;
            return fail(sc, "out of memory");
        }
        sc->nums = ns;
        sc->capnums = nc;
    }
    sc->nums[sc->nnums].off = start;
    sc->nums[sc->nnums].len = p - start;
    sc->nnums++;
    return true;
}

static bool scan_lit(scanner *sc, const char *lit) {
    size_t n = strlen(lit);
    if (sc->len - sc->pos < n || memcmp(sc->s + sc->pos, lit, n) != 0)
        return fail(sc, "invalid literal");
    sc->pos += n;
    return true;
}

static bool scan_value(scanner *sc, int depth);

static bool scan_container(scanner *sc, int depth, bool object) {
    if (depth > sc->max_depth)
        return fail(sc, "nesting too deep");
    unsigned char close = object ? '}' : ']';
    sc->pos++;
    skip_ws(sc);
    if (sc->pos < sc->len && sc->s[sc->pos] == close) {
        sc->pos++;
        return true;
    }
    while (1) {
        skip_ws(sc);
        if (object) {
            if (sc->pos >= sc->len || sc->s[sc->pos] != '"')
                return fail(sc, "expected a string key");
            if (!scan_string(sc))
                return false;
            skip_ws(sc);
            if (sc->pos >= sc->len || sc->s[sc->pos] != ':')
                return fail(sc, "expected ':'");
            sc->pos++;
        }
        if (!scan_value(sc, depth))
            return false;
        skip_ws(sc);
        if (sc->pos >= sc->len)
            return fail(sc, object ? "unterminated object" : "unterminated array");
        if (sc->s[sc->pos] == ',') {
            sc->pos++;
            continue;
        }
        if (sc->s[sc->pos] == close) {
            sc->pos++;
            return true;
        }
        return fail(sc, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static bool scan_value(scanner *sc, int depth) {
    skip_ws(sc);
    if (sc->pos >= sc->len)
        return fail(sc, "unexpected end of input");
    switch (sc->s[sc->pos]) {
    case '{': return scan_container(sc, depth + 1, true);
    case '[': return scan_container(sc, depth + 1, false);
    case '"': return scan_string(sc);
    case 't': return scan_lit(sc, "true");
    case 'f': return scan_lit(sc, "false");
    case 'n': return scan_lit(sc, "null");
    default:
        if (sc->s[sc->pos] == '-' || isdigit(sc->s[sc->pos]))
            return scan_number(sc);
        return fail(sc, "unexpected character");
    }
}

/* ---- pass 3: literals and duplicate keys ----------------------------------- */

typedef struct walker {
    const char *text;
    const span *nums;
    size_t nnums, next;
    const char *dup; /* the duplicated key, if found */
    bool oom;
} walker;

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool check_dups(walker *wk, const cJSON *obj) {
    int n = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        n++;
    if (n < 2)
        return true;
    if (n <= 16) {
        for (const cJSON *a = obj->child; a; a = a->next)
            for (const cJSON *b = a->next; b; b = b->next)
                if (strcmp(a->string, b->string) == 0) {
                    wk->dup = a->string;
                    return false;
                }
        return true;
    }
    const char **keys = strata_malloc((size_t)n * sizeof *keys);
    if (!keys) {
        wk->oom = true;
        return false;
    }
    int i = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        keys[i++] = c->string;
    qsort(keys, (size_t)n, sizeof *keys, cmp_str);
    bool ok = true;
    for (i = 1; i < n && ok; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0) {
            wk->dup = keys[i];
            ok = false;
        }
    strata_free(keys);
    return ok;
}

static bool walk(walker *wk, cJSON *node) {
    for (cJSON *c = node; c; c = c->next) {
        if (cJSON_IsNumber(c)) {
            if (wk->next >= wk->nnums)
                return false; /* cannot happen: pass 1 counted them */
            const span *sp = &wk->nums[wk->next++];
            char *lit = cJSON_malloc(sp->len + 1);
            if (!lit) {
                wk->oom = true;
                return false;
            }
            memcpy(lit, wk->text + sp->off, sp->len);
            lit[sp->len] = '\0';
            c->valuestring = lit;
        } else if (cJSON_IsObject(c) || cJSON_IsArray(c)) {
            if (cJSON_IsObject(c) && !check_dups(wk, c))
                return false;
            if (c->child && !walk(wk, c->child))
                return false;
        }
    }
    return true;
}

int strata_json_parse(const char *text, size_t len, int max_depth, cJSON **out, strata_buf *err) {
    *out = NULL;
    if (max_depth <= 0)
        max_depth = STRATA_JSON_MAX_DEPTH;
    if (max_depth > 512) /* cJSON's own limit is 1000 */
        max_depth = 512;
    scanner sc = {.s = (const unsigned char *)text, .len = len, .max_depth = max_depth};
    bool ok = scan_value(&sc, 0);
    if (ok) {
        skip_ws(&sc);
        if (sc.pos != sc.len)
            ok = fail(&sc, "trailing characters after the JSON value");
    }
    if (!ok) {
        strata_free(sc.nums);
        if (sc.oom)
            return STRATA_ENOMEM;
        if (err)
            strata_buf_printf(err, "invalid JSON at byte %zu: %s", sc.pos, sc.error);
        return STRATA_EINVAL;
    }
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!doc) {
        strata_free(sc.nums);
        /* Only an allocation failure can make cJSON refuse what pass 1 accepted. */
        if (err)
            strata_buf_puts(err, "invalid JSON: could not build the document");
        return STRATA_ENOMEM;
    }
    walker wk = {.text = text, .nums = sc.nums, .nnums = sc.nnums};
    ok = walk(&wk, doc);
    strata_free(sc.nums);
    if (!ok) {
        if (err && !wk.oom) {
            if (wk.dup) { /* points into doc: render before freeing it */
                strata_buf_puts(err, "invalid JSON: duplicate key ");
                strata_buf_json_str(err, wk.dup, strlen(wk.dup));
            } else {
                strata_buf_puts(err, "invalid JSON: internal mismatch");
            }
        }
        cJSON_Delete(doc);
        return wk.oom ? STRATA_ENOMEM : STRATA_EINVAL;
    }
    *out = doc;
    return STRATA_OK;
}

/* ---- field readers ---------------------------------------------------------- */

bool strata_json_is_object(const cJSON *obj) { return obj && cJSON_IsObject(obj); }

static void field_err(strata_buf *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void field_err(strata_buf *err, const char *field, const char *fmt, ...) {
    if (!err)
        return;
    strata_buf_puts(err, "field ");
    strata_buf_json_str(err, field, strlen(field));
    strata_buf_puts(err, ": ");
    va_list ap;
    va_start(ap, fmt);
    strata_buf_vprintf(err, fmt, ap);
    va_end(ap);
}

/* Finds `field` in obj; returns 1 if absent/null (EINVAL if required), 0 if found. */
static int lookup(const cJSON *obj, const char *field, bool required, const cJSON **item,
                  strata_buf *err) {
    *item = NULL;
    if (!obj || !cJSON_IsObject(obj)) {
        if (err)
            strata_buf_puts(err, "the body must be a JSON object");
        return STRATA_EINVAL;
    }
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, field);
    if (!it || cJSON_IsNull(it)) {
        if (required) {
            field_err(err, field, "is required");
            return STRATA_EINVAL;
        }
        return 1;
    }
    *item = it;
    return STRATA_OK;
}

/* Text of a number for messages: the literal when known. */
static void num_text(const cJSON *it, char *buf, size_t n) {
    if (it->valuestring)
        snprintf(buf, n, "%s", it->valuestring);
    else
        snprintf(buf, n, "%.17g", it->valuedouble);
}

int strata_json_int_value(const cJSON *it, const char *what, int64_t min, int64_t max, int64_t *out,
                          strata_buf *err) {
    if (min < -STRATA_JSON_MAX_SAFE_INT)
        min = -STRATA_JSON_MAX_SAFE_INT;
    if (max > STRATA_JSON_MAX_SAFE_INT)
        max = STRATA_JSON_MAX_SAFE_INT;
    if (!it || !cJSON_IsNumber(it)) {
        field_err(err, what, "must be an integer in [%lld, %lld]", (long long)min, (long long)max);
        return STRATA_EINVAL;
    }
    char shown[72];
    num_text(it, shown, sizeof shown);
    int64_t v;
    if (it->valuestring) {
        const char *s = it->valuestring;
        if (strpbrk(s, ".eE")) {
            field_err(err, what, "must be an integer in [%lld, %lld], got %s", (long long)min,
                      (long long)max, shown);
            return STRATA_EINVAL;
        }
        errno = 0;
        char *end;
        long long ll = strtoll(s, &end, 10);
        if (*end || errno == ERANGE || ll < -STRATA_JSON_MAX_SAFE_INT ||
            ll > STRATA_JSON_MAX_SAFE_INT) {
            field_err(err, what, "must be an integer in [%lld, %lld], got %s (beyond 2^53)",
                      (long long)min, (long long)max, shown);
            return STRATA_ERANGE;
        }
        v = ll;
    } else {
        double d = it->valuedouble;
        if (!isfinite(d) || d != floor(d) || fabs(d) > (double)STRATA_JSON_MAX_SAFE_INT) {
            field_err(err, what, "must be an integer in [%lld, %lld], got %s", (long long)min,
                      (long long)max, shown);
            return STRATA_EINVAL;
        }
        v = (int64_t)d;
    }
    if (v < min || v > max) {
        field_err(err, what, "must be an integer in [%lld, %lld], got %s", (long long)min,
                  (long long)max, shown);
        return STRATA_ERANGE;
    }
    *out = v;
    return STRATA_OK;
}

int strata_json_get_int(const cJSON *obj, const char *field, bool required, int64_t min,
                        int64_t max, int64_t *out, strata_buf *err) {
    const cJSON *it;
    int rc = lookup(obj, field, required, &it, err);
    if (rc != STRATA_OK)
        return rc;
    return strata_json_int_value(it, field, min, max, out, err);
}

int strata_json_get_double(const cJSON *obj, const char *field, bool required, double min,
                           double max, double *out, strata_buf *err) {
    const cJSON *it;
    int rc = lookup(obj, field, required, &it, err);
    if (rc != STRATA_OK)
        return rc;
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) {
        field_err(err, field, "must be a number in [%g, %g]", min, max);
        return STRATA_EINVAL;
    }
    if (it->valuedouble < min || it->valuedouble > max) {
        char shown[72];
        num_text(it, shown, sizeof shown);
        field_err(err, field, "must be a number in [%g, %g], got %s", min, max, shown);
        return STRATA_ERANGE;
    }
    *out = it->valuedouble;
    return STRATA_OK;
}

int strata_json_get_bool(const cJSON *obj, const char *field, bool required, bool *out,
                         strata_buf *err) {
    const cJSON *it;
    int rc = lookup(obj, field, required, &it, err);
    if (rc != STRATA_OK)
        return rc;
    if (!cJSON_IsBool(it)) {
        field_err(err, field, "must be true or false");
        return STRATA_EINVAL;
    }
    *out = cJSON_IsTrue(it);
    return STRATA_OK;
}

int strata_json_get_str(const cJSON *obj, const char *field, bool required, size_t min_len,
                        size_t max_len, const char **out, size_t *len_out, strata_buf *err) {
    const cJSON *it;
    int rc = lookup(obj, field, required, &it, err);
    if (rc != STRATA_OK)
        return rc;
    if (!cJSON_IsString(it) || !it->valuestring) {
        field_err(err, field, "must be a string of %zu to %zu bytes", min_len, max_len);
        return STRATA_EINVAL;
    }
    size_t n = strlen(it->valuestring);
    if (n < min_len || n > max_len) {
        field_err(err, field, "must be a string of %zu to %zu bytes, got %zu", min_len, max_len, n);
        return STRATA_ERANGE;
    }
    *out = it->valuestring;
    if (len_out)
        *len_out = n;
    return STRATA_OK;
}

int strata_json_get_array(const cJSON *obj, const char *field, bool required, int min_items,
                          int max_items, const cJSON **out, strata_buf *err) {
    const cJSON *it;
    int rc = lookup(obj, field, required, &it, err);
    if (rc != STRATA_OK)
        return rc;
    if (!cJSON_IsArray(it)) {
        field_err(err, field, "must be an array of %d to %d items", min_items, max_items);
        return STRATA_EINVAL;
    }
    int n = cJSON_GetArraySize(it);
    if (n < min_items || n > max_items) {
        field_err(err, field, "must be an array of %d to %d items, got %d", min_items, max_items,
                  n);
        return STRATA_ERANGE;
    }
    *out = it;
    return STRATA_OK;
}

int strata_json_get_object(const cJSON *obj, const char *field, bool required, const cJSON **out,
                           strata_buf *err) {
    const cJSON *it;
    int rc = lookup(obj, field, required, &it, err);
    if (rc != STRATA_OK)
        return rc;
    if (!cJSON_IsObject(it)) {
        field_err(err, field, "must be an object");
        return STRATA_EINVAL;
    }
    *out = it;
    return STRATA_OK;
}

int strata_json_only_fields(const cJSON *obj, const char *const *allowed, strata_buf *err) {
    if (!obj || !cJSON_IsObject(obj)) {
        if (err)
            strata_buf_puts(err, "the body must be a JSON object");
        return STRATA_EINVAL;
    }
    for (const cJSON *c = obj->child; c; c = c->next) {
        bool known = false;
        for (const char *const *a = allowed; *a && !known; a++)
            known = strcmp(*a, c->string) == 0;
        if (!known) {
            field_err(err, c->string, "is not a known field");
            return STRATA_EINVAL;
        }
    }
    return STRATA_OK;
}
