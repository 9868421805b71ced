/* buf.c: the growable byte buffer (strata/buf.h). */
#include <stdio.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/buf.h"
#include "strata/status.h"

int strata_buf_reserve(strata_buf *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len - 1) {
        b->oom = 1;
        return STRATA_ENOMEM;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return STRATA_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = strata_realloc(b->data, cap);
    if (!p) {
        b->oom = 1;
        return STRATA_ENOMEM;
    }
    b->data = p;
    b->cap = cap;
    return STRATA_OK;
}

int strata_buf_append(strata_buf *b, const void *p, size_t n) {
    if (strata_buf_reserve(b, n) < 0)
        return STRATA_ENOMEM;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return STRATA_OK;
}

int strata_buf_puts(strata_buf *b, const char *s) { return strata_buf_append(b, s, strlen(s)); }

int strata_buf_vprintf(strata_buf *b, const char *fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return STRATA_EINVAL;
    if ((size_t)n < sizeof small)
        return strata_buf_append(b, small, (size_t)n);
    if (strata_buf_reserve(b, (size_t)n) < 0)
        return STRATA_ENOMEM;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return STRATA_OK;
}

int strata_buf_printf(strata_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = strata_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

int strata_buf_json_str(strata_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (strata_buf_reserve(b, n + 2) < 0)
        return STRATA_ENOMEM;
    strata_buf_append(b, "\"", 1);
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        strata_buf_append(b, s + start, i - start);
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t elen = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        strata_buf_append(b, esc, elen);
        start = i + 1;
    }
    strata_buf_append(b, s + start, n - start);
    return strata_buf_append(b, "\"", 1) < 0 || b->oom ? STRATA_ENOMEM : STRATA_OK;
}

void strata_buf_reset(strata_buf *b) {
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void strata_buf_free(strata_buf *b) {
    strata_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

char *strata_buf_steal(strata_buf *b, size_t *len) {
    char *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
    return p;
}
