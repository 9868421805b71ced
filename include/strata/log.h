/*
 * strata/log.h: level-checked, structured (key=value) logging.
 *
 * Policy: libstrata never logs (it returns status codes and counts metrics);
 * the server, the CLI and the scenario layers log.  Levels:
 *   error  something failed that an operator must act on (cannot bind, Redis
 *          unreachable past its retry budget, a write that could not be made
 *          durable); never per-request for client mistakes
 *   warn   degraded but serving (breaker opened, failover seen, retrying)
 *   info   lifecycle: started, listening, ready, stopping, stopped
 *   debug  per-request and per-connection detail; off by default
 * Lines look like:  ts=2026-11-26T00:00:00.123Z level=info event=ready listen=127.0.0.1:8080
 * The macros check the level before evaluating their arguments.
 */
#ifndef STRATA_LOG_H
#define STRATA_LOG_H

#include <stdio.h>

typedef enum strata_log_level {
    STRATA_LOG_ERROR = 0,
    STRATA_LOG_WARN = 1,
    STRATA_LOG_INFO = 2,
    STRATA_LOG_DEBUG = 3,
} strata_log_level;

extern int strata_log_level_current;

/** Sets the level; returns the previous one. */
strata_log_level strata_log_set_level(strata_log_level level);
/** Parses "error|warn|info|debug"; STRATA_EINVAL if unknown. */
int strata_log_parse_level(const char *name, strata_log_level *out);
/** Sends log lines to `f` (default stderr).  Not owned. */
void strata_log_set_file(FILE *f);

/**
 * Writes one line: ts, level and event, then the caller's key=value text.
 * Use the macros, which skip the call (and its arguments) when filtered out.
 */
void strata_log_write(strata_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define STRATA_LOG(level, event, ...)                        \
    do {                                                     \
        if ((int)(level) <= strata_log_level_current)        \
            strata_log_write((level), (event), __VA_ARGS__); \
    } while (0)
#define LOG_ERROR(event, ...) STRATA_LOG(STRATA_LOG_ERROR, event, __VA_ARGS__)
#define LOG_WARN(event, ...)  STRATA_LOG(STRATA_LOG_WARN, event, __VA_ARGS__)
#define LOG_INFO(event, ...)  STRATA_LOG(STRATA_LOG_INFO, event, __VA_ARGS__)
#define LOG_DEBUG(event, ...) STRATA_LOG(STRATA_LOG_DEBUG, event, __VA_ARGS__)

#endif
