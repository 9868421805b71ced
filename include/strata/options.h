/*
 * strata/options.h: options as data.
 *
 * Each module declares its options in one table (name, type, default, bounds,
 * description); the engine fills the values from the config file, then
 * STRATA_* environment variables, then command-line flags (later wins), and
 * renders `--help` from the same table.  One naming rule links the three:
 *   admin_token  <->  --admin-token  <->  STRATA_ADMIN_TOKEN
 * A bad value is refused with a message that names the option, the value and
 * what is allowed.  The config file is INI-style `key = value` lines (parsed
 * by libinih); a [section] header is allowed and ignored.
 *
 * Declaring a table with the X-macro keeps the index enum and the rows in step:
 *
 *   #define SERVER_OPTIONS(X)                                                   \
 *       X(listen, STRATA_OPT_STR, "127.0.0.1:8080", 0, 0, NULL, 0, "address") \
 *       X(workers, STRATA_OPT_INT, "0", 0, 64, NULL, 0, "worker threads")
 *   enum { SERVER_OPTIONS(STRATA_OPT_ENUM_ENTRY) SERVER_OPT__COUNT };
 *   static strata_option server_opts[] = { SERVER_OPTIONS(STRATA_OPT_ROW) };
 */
#ifndef STRATA_OPTIONS_H
#define STRATA_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/buf.h"

typedef enum strata_opt_type {
    STRATA_OPT_BOOL, /* true/false, yes/no, on/off, 1/0; a bare flag means true */
    STRATA_OPT_INT,  /* signed 64-bit integer within [min, max] */
    STRATA_OPT_DURATION, /* milliseconds; accepts "250", "250ms", "2s", "5m", "1h" within [min, max] ms */
    STRATA_OPT_SIZE, /* bytes; accepts "512", "64k", "16mb", "1g" within [min, max] */
    STRATA_OPT_STR,  /* any text (may be empty unless min > 0: min is the minimum length) */
    STRATA_OPT_ENUM, /* one of `choices`, "a|b|c"; the index is in val.i */
} strata_opt_type;

enum {
    STRATA_OPT_SECRET = 1u << 0, /* redacted whenever shown (config dumps, /v1/admin/config) */
};

typedef struct strata_option {
    /* declared */
    const char *name;
    strata_opt_type type;
    const char *def; /* default, as text; NULL = unset (val.s NULL, val.i 0) */
    int64_t min, max;
    const char *choices;
    unsigned flags;
    const char *desc;
    /* filled by the engine */
    struct {
        int64_t i; /* BOOL, INT, DURATION, SIZE, ENUM index */
        char *s;   /* the text as given (owned by the engine), for every type */
    } val;
    const char *source; /* "default", "config", "env", "flag" */
} strata_option;

#define STRATA_OPT_ENUM_ENTRY(name, type, def, min, max, choices, flags, desc) OPT_##name,
#define STRATA_OPT_ROW(name, type, def, min, max, choices, flags, desc) \
    {#name, type, def, min, max, choices, flags, desc, {0, NULL}, NULL},

/** A module's table, as handed to the engine. */
typedef struct strata_opt_group {
    const char *title; /* heading in --help, e.g. "HTTP server" */
    strata_option *opts;
    size_t n;
} strata_opt_group;

/*
 * Loads every group's values: defaults, then the config file (the value of
 * --config / STRATA_CONFIG if given), then environment variables (from envp,
 * NULL-terminated; pass `environ`), then argv flags.  argv[0..argc) holds
 * only flags (the caller strips the program and subcommand names); flags are
 * `--name value`, `--name=value`, or `--name` for a BOOL.  `--config` and
 * `--help` are understood here: *help_requested is set for --help/-h.
 *
 * Returns STRATA_OK, or on error writes a one-line message to *err and returns
 *   STRATA_EINVAL    usage: unknown flag, missing value           (exit 64)
 *   STRATA_ENOTFOUND the config file is missing or unreadable     (exit 66)
 *   STRATA_ERANGE    a bad value or an unknown key in the file    (exit 78)
 */
int strata_options_load(strata_opt_group *groups, size_t ngroups, int argc, char **argv,
                        char **envp, bool *help_requested, strata_buf *err);

/** Sets one option from text; STRATA_ERANGE with a message on a bad value. */
int strata_option_set(strata_option *o, const char *value, const char *source, strata_buf *err);

/** Finds an option by its snake_case name across groups; NULL if none. */
strata_option *strata_options_find(strata_opt_group *groups, size_t ngroups, const char *name);

/** Appends `--help` text: each option with its type, default and description. */
void strata_options_help(const strata_opt_group *groups, size_t ngroups, strata_buf *out);

/** Appends the effective values as a JSON object {name: {"value":..,"source":..}}; secrets redacted. */
void strata_options_json(const strata_opt_group *groups, size_t ngroups, strata_buf *out);

/** Frees the engine's copies of the values (the tables stay usable; values reset). */
void strata_options_free(strata_opt_group *groups, size_t ngroups);

/** Parsers shared with other inputs (HTTP, JSON). STRATA_OK or STRATA_EINVAL/ERANGE. */
int strata_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out);
int strata_parse_duration_ms(const char *s, int64_t *out);
int strata_parse_size(const char *s, int64_t *out);
int strata_parse_bool(const char *s, bool *out);

#endif
