/*
 * log.c: structured logging for the server and CLI layers (strata/log.h).
 * One line per call, written with a single fwrite so lines from different
 * threads never interleave.
 */
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "strata/log.h"
#include "strata/status.h"

int strata_log_level_current = STRATA_LOG_INFO;
static FILE *log_file;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

strata_log_level strata_log_set_level(strata_log_level level) {
    strata_log_level old = (strata_log_level)strata_log_level_current;
    strata_log_level_current = (int)level;
    return old;
}

int strata_log_parse_level(const char *name, strata_log_level *out) {
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (strata_log_level)i;
            return STRATA_OK;
        }
    }
    return STRATA_EINVAL;
}

void strata_log_set_file(FILE *f) { log_file = f; }

void strata_log_write(strata_log_level level, const char *event, const char *fmt, ...) {
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level < 0 || level > 3 ? 0 : level], event);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    if (fmt && *fmt && len < sizeof line - 2) {
        line[len++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + len, sizeof line - len, fmt, ap);
        va_end(ap);
        if (m > 0)
            len += (size_t)m < sizeof line - len ? (size_t)m : sizeof line - len - 1;
    }
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    FILE *f = log_file ? log_file : stderr;
    fwrite(line, 1, len, f);
    fflush(f);
}
