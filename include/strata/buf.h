/*
 * strata/buf.h: a growable byte buffer (the one string builder of Strata).
 *
 * A strata_buf is a plain struct the caller owns (usually on the stack):
 * zero-initialise it or use STRATA_BUF_INIT, append to it, read data/len,
 * then strata_buf_free().  `data` is always NUL-terminated once anything was
 * appended, so it can be printed.  On allocation failure an append returns
 * STRATA_ENOMEM, leaves the contents as they were and sets `oom`, so a caller
 * that appends many pieces may check once at the end.
 */
#ifndef STRATA_BUF_H
#define STRATA_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct strata_buf {
    char *data; /* owned; NULL until the first append */
    size_t len; /* bytes used, not counting the trailing NUL */
    size_t cap; /* bytes allocated */
    int oom;    /* set once any append failed */
} strata_buf;

#define STRATA_BUF_INIT \
    { NULL, 0, 0, 0 }

/** Makes room for `extra` more bytes (plus the NUL). */
int strata_buf_reserve(strata_buf *b, size_t extra);
/** Appends n bytes. */
int strata_buf_append(strata_buf *b, const void *p, size_t n);
/** Appends a NUL-terminated string. */
int strata_buf_puts(strata_buf *b, const char *s);
/** Appends formatted text. */
int strata_buf_printf(strata_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int strata_buf_vprintf(strata_buf *b, const char *fmt, va_list ap);
/** Appends s as a JSON string literal, quotes included (escapes control chars, " and \). */
int strata_buf_json_str(strata_buf *b, const char *s, size_t n);
/** Empties the buffer, keeping its memory. */
void strata_buf_reset(strata_buf *b);
/** Frees the memory and zeroes the struct. */
void strata_buf_free(strata_buf *b);
/** Hands the data to the caller (free with strata_free) and zeroes the struct. */
char *strata_buf_steal(strata_buf *b, size_t *len);

#endif
