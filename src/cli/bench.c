/*
 * bench.c: the `strata bench` driver and reporter (bench.h).
 *
 *   strata bench                      lists the backends
 *   strata bench <backend> --help     lists a backend's options
 *   strata bench <backend> [opts]     runs it: progress on stderr (tty only),
 *                                     then the table and key=value lines on stdout
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "strata/alloc.h"
#include "strata/buf.h"
#include "strata/status.h"

extern char **environ;

struct strata_bench {
    const strata_bench_backend *backend;
    strata_opt_group group;
    int tty;
    uint64_t last_progress_ns;
    int progress_shown;
    strata_buf header;
    strata_buf rows; /* rows separated by '\n', cells by '|' */
    strata_buf kv;   /* complete "key=value\n" lines */
    int violations;
};

uint64_t strata_bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

const strata_option *strata_bench_opt(strata_bench *b, const char *name) {
    return strata_options_find(&b->group, 1, name);
}

int64_t strata_bench_opt_int(strata_bench *b, const char *name) {
    const strata_option *o = strata_bench_opt(b, name);
    return o ? o->val.i : 0;
}

const char *strata_bench_opt_str(strata_bench *b, const char *name) {
    const strata_option *o = strata_bench_opt(b, name);
    return o && o->val.s ? o->val.s : "";
}

void strata_bench_progress(strata_bench *b, const char *fmt, ...) {
    if (!b->tty)
        return;
    uint64_t now = strata_bench_now_ns();
    if (now - b->last_progress_ns < 100000000ull)
        return;
    b->last_progress_ns = now;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\r\033[K%s", line);
    fflush(stderr);
    b->progress_shown = 1;
}

void strata_bench_table_header(strata_bench *b, const char *cols) {
    strata_buf_reset(&b->header);
    strata_buf_puts(&b->header, cols);
}

void strata_bench_table_row(strata_bench *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    strata_buf_vprintf(&b->rows, fmt, ap);
    va_end(ap);
    strata_buf_puts(&b->rows, "\n");
}

void strata_bench_kv(strata_bench *b, const char *key, const char *fmt, ...) {
    strata_buf_printf(&b->kv, "%s=", key);
    va_list ap;
    va_start(ap, fmt);
    strata_buf_vprintf(&b->kv, fmt, ap);
    va_end(ap);
    strata_buf_puts(&b->kv, "\n");
}

void strata_bench_kv_latency(strata_bench *b, const char *prefix, const strata_histogram *h) {
    static const struct {
        const char *name;
        double q;
    } qs[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"p999", 0.999}, {"max", 1.0}};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        char key[128];
        snprintf(key, sizeof key, "%s%s_us", prefix, qs[i].name);
        strata_bench_kv(b, key, "%.1f", (double)strata_histogram_quantile(h, qs[i].q) / 1000.0);
    }
}

void strata_bench_fail(strata_bench *b, const char *fmt, ...) {
    strata_buf_puts(&b->kv, "violation=");
    va_list ap;
    va_start(ap, fmt);
    strata_buf_vprintf(&b->kv, fmt, ap);
    va_end(ap);
    strata_buf_puts(&b->kv, "\n");
    b->violations++;
}

/* Splits s on sep into at most max cells (pointers into a copy the caller frees). */
static size_t split(char *s, char sep, char **cells, size_t max) {
    size_t n = 0;
    while (s && n < max) {
        cells[n++] = s;
        char *p = strchr(s, sep);
        if (p)
            *p++ = '\0';
        s = p;
    }
    return n;
}

static void print_table(strata_bench *b) {
    if (!b->header.len && !b->rows.len)
        return;
    enum { MAXC = 32 };
    size_t width[MAXC] = {0};
    char *hdr = strata_strdup(b->header.data ? b->header.data : "");
    char *rows = strata_strdup(b->rows.data ? b->rows.data : "");
    if (!hdr || !rows)
        goto done;
    char *hc[MAXC];
    size_t nh = b->header.len ? split(hdr, '|', hc, MAXC) : 0;
    for (size_t i = 0; i < nh; i++)
        width[i] = strlen(hc[i]);
    /* First pass: widths. */
    char *copy = strata_strdup(rows);
    if (!copy)
        goto done;
    for (char *line = copy, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *c[MAXC];
        size_t n = split(line, '|', c, MAXC);
        for (size_t i = 0; i < n; i++)
            if (strlen(c[i]) > width[i])
                width[i] = strlen(c[i]);
    }
    strata_free(copy);
    if (nh) {
        for (size_t i = 0; i < nh; i++)
            printf("%s%-*s", i ? "  " : "", i + 1 < nh ? (int)width[i] : 0, hc[i]);
        printf("\n");
        for (size_t i = 0; i < nh; i++) {
            printf("%s", i ? "  " : "");
            for (size_t k = 0; k < width[i]; k++)
                putchar('-');
        }
        printf("\n");
    }
    for (char *line = rows, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *c[MAXC];
        size_t n = split(line, '|', c, MAXC);
        for (size_t i = 0; i < n; i++)
            printf("%s%-*s", i ? "  " : "", i + 1 < n ? (int)width[i] : 0, c[i]);
        printf("\n");
    }
done:
    strata_free(hdr);
    strata_free(rows);
}

static void list_backends(FILE *f) {
    fprintf(
        f,
        "usage: strata bench <backend> [options]   (strata bench <backend> --help)\n\nbackends:\n");
    for (size_t i = 0; strata_bench_backends[i]; i++)
        fprintf(f, "  %-18s %s\n", strata_bench_backends[i]->name,
                strata_bench_backends[i]->summary);
}

int cli_bench(int argc, char **argv) {
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        list_backends(argc < 1 ? stderr : stdout);
        return argc < 1 ? EXIT_USAGE : 0;
    }
    const strata_bench_backend *be = NULL;
    for (size_t i = 0; strata_bench_backends[i]; i++)
        if (strcmp(strata_bench_backends[i]->name, argv[0]) == 0)
            be = strata_bench_backends[i];
    if (!be) {
        fprintf(stderr, "strata bench: unknown backend \"%s\"\n", argv[0]);
        list_backends(stderr);
        return EXIT_USAGE;
    }
    strata_bench b = {0};
    b.backend = be;
    b.group = (strata_opt_group){be->name, be->opts, be->nopts};
    b.tty = isatty(2);
    strata_buf err = STRATA_BUF_INIT;
    bool want_help = false;
    int rc = strata_options_load(&b.group, 1, argc - 1, argv + 1, environ, &want_help, &err);
    if (rc != STRATA_OK) {
        fprintf(stderr, "strata bench %s: %s\n", be->name,
                err.data ? err.data : strata_strerror(rc));
        strata_buf_free(&err);
        strata_options_free(&b.group, 1);
        return cli_exit_for_options(rc);
    }
    if (want_help) {
        strata_buf h = STRATA_BUF_INIT;
        strata_buf_printf(&h, "usage: strata bench %s [options]\n%s\n", be->name, be->summary);
        strata_options_help(&b.group, 1, &h);
        fputs(h.data, stdout);
        strata_buf_free(&h);
        strata_options_free(&b.group, 1);
        return 0;
    }
    rc = be->run(&b);
    if (b.progress_shown)
        fprintf(stderr, "\r\033[K");
    print_table(&b);
    if (b.kv.len)
        fputs(b.kv.data, stdout);
    fflush(stdout);
    if (rc != STRATA_OK)
        fprintf(stderr, "strata bench %s: %s\n", be->name, strata_strerror(rc));
    int code = rc != STRATA_OK || b.violations ? 1 : 0;
    strata_buf_free(&b.header);
    strata_buf_free(&b.rows);
    strata_buf_free(&b.kv);
    strata_buf_free(&err);
    strata_options_free(&b.group, 1);
    return code;
}
