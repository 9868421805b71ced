/*
 * options.c: the options engine (strata/options.h).
 *
 * Order of sources, later wins: declared defaults, the config file, STRATA_*
 * environment variables, command-line flags.  Values are parsed as they are
 * set, so an error names the source too ("--workers=abc: ...",
 * "config file x.conf line 3: ...").  The file is parsed by libinih; it
 * reports the first bad line, which we turn into the same one-line message.
 */
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/options.h"
#include "strata/status.h"

/* ---- value parsers -------------------------------------------------------- */

int strata_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out) {
    if (!s || !*s || isspace((unsigned char)*s))
        return STRATA_EINVAL;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0')
        return STRATA_EINVAL;
    if (errno == ERANGE || v < min || v > max)
        return STRATA_ERANGE;
    *out = v;
    return STRATA_OK;
}

/* Parses "<digits><suffix>" where suffix picks a multiplier from the table. */
static int parse_scaled(const char *s, const char *const *suffixes, const int64_t *mult,
                        int64_t *out) {
    if (!s || !isdigit((unsigned char)*s))
        return STRATA_EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return STRATA_ERANGE;
    for (int i = 0; suffixes[i]; i++) {
        if (strcasecmp(end, suffixes[i]) == 0) {
            if (v > (unsigned long long)(INT64_MAX / mult[i]))
                return STRATA_ERANGE;
            *out = (int64_t)v * mult[i];
            return STRATA_OK;
        }
    }
    return STRATA_EINVAL;
}

int strata_parse_duration_ms(const char *s, int64_t *out) {
    static const char *const suf[] = {"", "ms", "s", "m", "h", NULL};
    static const int64_t mult[] = {1, 1, 1000, 60000, 3600000};
    return parse_scaled(s, suf, mult, out);
}

int strata_parse_size(const char *s, int64_t *out) {
    static const char *const suf[] = {"", "b", "k", "kb", "m", "mb", "g", "gb", NULL};
    static const int64_t mult[] = {1, 1, 1024, 1024, 1 << 20, 1 << 20, 1 << 30, 1 << 30};
    return parse_scaled(s, suf, mult, out);
}

int strata_parse_bool(const char *s, bool *out) {
    static const char *const yes[] = {"1", "true", "yes", "on", NULL};
    static const char *const no[] = {"0", "false", "no", "off", NULL};
    for (int i = 0; yes[i]; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return STRATA_OK;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return STRATA_OK;
        }
    }
    return STRATA_EINVAL;
}

/* ---- one option ------------------------------------------------------------ */

static void describe_allowed(const strata_option *o, strata_buf *err) {
    switch (o->type) {
    case STRATA_OPT_BOOL: strata_buf_puts(err, "true or false"); break;
    case STRATA_OPT_INT:
        strata_buf_printf(err, "an integer from %lld to %lld", (long long)o->min,
                          (long long)o->max);
        break;
    case STRATA_OPT_DURATION:
        strata_buf_printf(err, "a duration from %lldms to %lldms (e.g. 500ms, 2s, 1m)",
                          (long long)o->min, (long long)o->max);
        break;
    case STRATA_OPT_SIZE:
        strata_buf_printf(err, "a size from %lld to %lld bytes (e.g. 64k, 16mb, 1g)",
                          (long long)o->min, (long long)o->max);
        break;
    case STRATA_OPT_STR:
        if (o->min > 0)
            strata_buf_printf(err, "text of at least %lld characters", (long long)o->min);
        else
            strata_buf_puts(err, "text");
        break;
    case STRATA_OPT_ENUM: strata_buf_printf(err, "one of %s", o->choices); break;
    }
}

static int enum_index(const char *choices, const char *v, int64_t *out) {
    size_t vl = strlen(v);
    int64_t i = 0;
    for (const char *p = choices; p && *p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == vl && strncmp(p, v, len) == 0) {
            *out = i;
            return STRATA_OK;
        }
        p = bar ? bar + 1 : NULL;
    }
    return STRATA_EINVAL;
}

static void flag_name(strata_buf *b, const char *name) {
    strata_buf_puts(b, "--");
    for (const char *p = name; *p; p++)
        strata_buf_append(b, *p == '_' ? "-" : p, 1);
}

int strata_option_set(strata_option *o, const char *value, const char *source, strata_buf *err) {
    int64_t i = 0;
    int rc = STRATA_OK;
    if (!value)
        value = "";
    switch (o->type) {
    case STRATA_OPT_BOOL: {
        bool b = false;
        rc = strata_parse_bool(value, &b);
        i = b;
        break;
    }
    case STRATA_OPT_INT: rc = strata_parse_int64(value, o->min, o->max, &i); break;
    case STRATA_OPT_DURATION:
        rc = strata_parse_duration_ms(value, &i);
        if (rc == STRATA_OK && (i < o->min || i > o->max))
            rc = STRATA_ERANGE;
        break;
    case STRATA_OPT_SIZE:
        rc = strata_parse_size(value, &i);
        if (rc == STRATA_OK && (i < o->min || i > o->max))
            rc = STRATA_ERANGE;
        break;
    case STRATA_OPT_STR:
        if ((int64_t)strlen(value) < o->min)
            rc = STRATA_ERANGE;
        for (const char *p = value; rc == STRATA_OK && *p; p++)
            if ((unsigned char)*p < 0x20)
                rc = STRATA_EINVAL;
        i = (int64_t)strlen(value);
        break;
    case STRATA_OPT_ENUM: rc = enum_index(o->choices, value, &i); break;
    }
    if (rc != STRATA_OK) {
        if (err) {
            strata_buf_puts(err, "invalid value for ");
            flag_name(err, o->name);
            strata_buf_printf(err, " (from %s): \"%s\"; expected ", source ? source : "?",
                              (o->flags & STRATA_OPT_SECRET) ? "<redacted>" : value);
            describe_allowed(o, err);
        }
        return STRATA_ERANGE;
    }
    char *copy = strata_strdup(value);
    if (!copy)
        return STRATA_ENOMEM;
    strata_free(o->val.s);
    o->val.s = copy;
    o->val.i = i;
    o->source = source;
    return STRATA_OK;
}

/* ---- the whole set ---------------------------------------------------------- */

strata_option *strata_options_find(strata_opt_group *groups, size_t ngroups, const char *name) {
    for (size_t g = 0; g < ngroups; g++)
        for (size_t i = 0; i < groups[g].n; i++)
            if (strcmp(groups[g].opts[i].name, name) == 0)
                return &groups[g].opts[i];
    return NULL;
}

/* Converts "--admin-token" / "ADMIN_TOKEN" / "admin-token" to "admin_token" in buf. */
static void to_snake(const char *in, size_t n, char *out, size_t cap) {
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) {
        char c = in[i];
        out[j++] = c == '-' ? '_' : (char)tolower((unsigned char)c);
    }
    out[j] = '\0';
}

typedef struct {
    strata_opt_group *groups;
    size_t ngroups;
    strata_buf *err;
    const char *path;
    int rc;
    FILE *f;
    int line; /* lines read so far: Debian's inih is built without line numbers in callbacks */
} file_ctx;

static char *read_line(char *str, int num, void *stream) {
    file_ctx *fc = stream;
    char *r = fgets(str, num, fc->f);
    if (r)
        fc->line++;
    return r;
}

static int on_ini(void *user, const char *section, const char *name, const char *value) {
    file_ctx *fc = user;
    int line = fc->line;
    (void)section;
    if (fc->rc != STRATA_OK)
        return 0;
    char key[128];
    to_snake(name, strlen(name), key, sizeof key);
    strata_option *o = strata_options_find(fc->groups, fc->ngroups, key);
    if (!o || strcmp(key, "config") == 0) {
        strata_buf_printf(fc->err, "config file %s line %d: unknown option \"%s\"", fc->path, line,
                          name);
        fc->rc = STRATA_ERANGE;
        return 0;
    }
    strata_buf tmp = STRATA_BUF_INIT;
    int rc = strata_option_set(o, value, "config", &tmp);
    if (rc != STRATA_OK) {
        strata_buf_printf(fc->err, "config file %s line %d: %s", fc->path, line,
                          tmp.data ? tmp.data : strata_strerror(rc));
        fc->rc = rc;
    }
    strata_buf_free(&tmp);
    return rc == STRATA_OK;
}

static int load_file(strata_opt_group *groups, size_t ngroups, const char *path, strata_buf *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        strata_buf_printf(err, "cannot read config file %s: %s", path, strerror(errno));
        return STRATA_ENOTFOUND;
    }
    file_ctx fc = {groups, ngroups, err, path, STRATA_OK, f, 0};
    int line = ini_parse_stream(read_line, &fc, on_ini, &fc);
    fclose(f);
    if (fc.rc != STRATA_OK)
        return fc.rc;
    if (line != 0) {
        strata_buf_printf(err, "config file %s line %d: not a `key = value` line", path, line);
        return STRATA_ERANGE;
    }
    return STRATA_OK;
}

int strata_options_load(strata_opt_group *groups, size_t ngroups, int argc, char **argv,
                        char **envp, bool *help_requested, strata_buf *err) {
    if (help_requested)
        *help_requested = false;
    for (size_t g = 0; g < ngroups; g++) {
        for (size_t i = 0; i < groups[g].n; i++) {
            strata_option *o = &groups[g].opts[i];
            strata_free(o->val.s);
            o->val.s = NULL;
            o->val.i = 0;
            o->source = "default";
            if (o->def) {
                int rc = strata_option_set(o, o->def, "default", err);
                if (rc != STRATA_OK)
                    return rc; /* a bad declared default is a programming error */
            }
        }
    }

    /* Pass 1: the config file (flag, then environment). */
    const char *config = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (help_requested)
                *help_requested = true;
            return STRATA_OK;
        }
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                strata_buf_puts(err, "--config needs a file name");
                return STRATA_EINVAL;
            }
            config = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config = argv[i] + 9;
        }
    }
    for (char **e = envp; !config && e && *e; e++)
        if (strncmp(*e, "STRATA_CONFIG=", 14) == 0)
            config = *e + 14;
    if (config) {
        int rc = load_file(groups, ngroups, config, err);
        if (rc != STRATA_OK)
            return rc;
    }

    /* Pass 2: environment.  Unknown STRATA_* names are ignored (tools set their own). */
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, "STRATA_", 7) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        char key[128];
        to_snake(*e + 7, (size_t)(eq - *e - 7), key, sizeof key);
        strata_option *o = strata_options_find(groups, ngroups, key);
        if (!o)
            continue;
        int rc = strata_option_set(o, eq + 1, "env", err);
        if (rc != STRATA_OK)
            return rc;
    }

    /* Pass 3: flags. */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            strata_buf_printf(err, "unexpected argument \"%s\"", a);
            return STRATA_EINVAL;
        }
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        char key[128];
        if (nlen >= sizeof key) {
            strata_buf_printf(err, "unknown option %.64s...", a);
            return STRATA_EINVAL;
        }
        to_snake(a + 2, nlen, key, sizeof key);
        if (strcmp(key, "config") == 0) {
            if (!eq)
                i++;
            continue;
        }
        strata_option *o = strata_options_find(groups, ngroups, key);
        if (!o) {
            strata_buf_printf(err, "unknown option --%.*s (see --help)", (int)nlen, a + 2);
            return STRATA_EINVAL;
        }
        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (o->type == STRATA_OPT_BOOL &&
                   (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) {
            value = "true";
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            strata_buf_printf(err, "option --%.*s needs a value", (int)nlen, a + 2);
            return STRATA_EINVAL;
        }
        int rc = strata_option_set(o, value, "flag", err);
        if (rc != STRATA_OK)
            return rc;
    }
    return STRATA_OK;
}

static const char *type_name(strata_opt_type t) {
    switch (t) {
    case STRATA_OPT_BOOL: return "bool";
    case STRATA_OPT_INT: return "int";
    case STRATA_OPT_DURATION: return "duration";
    case STRATA_OPT_SIZE: return "size";
    case STRATA_OPT_STR: return "text";
    case STRATA_OPT_ENUM: return "choice";
    }
    return "?";
}

void strata_options_help(const strata_opt_group *groups, size_t ngroups, strata_buf *out) {
    for (size_t g = 0; g < ngroups; g++) {
        strata_buf_printf(out, "\n%s:\n", groups[g].title);
        for (size_t i = 0; i < groups[g].n; i++) {
            const strata_option *o = &groups[g].opts[i];
            strata_buf flag = STRATA_BUF_INIT;
            flag_name(&flag, o->name);
            strata_buf_printf(out, "  %-28s %s", flag.data, o->desc);
            strata_buf_free(&flag);
            strata_buf_printf(out, "\n  %-28s [%s", "", type_name(o->type));
            if (o->type == STRATA_OPT_ENUM)
                strata_buf_printf(out, ": %s", o->choices);
            else if (o->type == STRATA_OPT_INT || o->type == STRATA_OPT_DURATION ||
                     o->type == STRATA_OPT_SIZE)
                strata_buf_printf(out, ", %lld..%lld%s", (long long)o->min, (long long)o->max,
                                  o->type == STRATA_OPT_DURATION ? "ms" : "");
            strata_buf_printf(out, "; default: %s; env: STRATA_",
                              o->def && *o->def ? o->def : "(none)");
            for (const char *p = o->name; *p; p++) {
                char c = (char)toupper((unsigned char)*p);
                strata_buf_append(out, &c, 1);
            }
            strata_buf_puts(out, "]\n");
        }
    }
}

void strata_options_json(const strata_opt_group *groups, size_t ngroups, strata_buf *out) {
    int first = 1;
    strata_buf_puts(out, "{");
    for (size_t g = 0; g < ngroups; g++) {
        for (size_t i = 0; i < groups[g].n; i++) {
            const strata_option *o = &groups[g].opts[i];
            if (!first)
                strata_buf_puts(out, ",");
            first = 0;
            strata_buf_json_str(out, o->name, strlen(o->name));
            strata_buf_puts(out, ":{\"value\":");
            if (o->flags & STRATA_OPT_SECRET)
                strata_buf_puts(out, o->val.s && *o->val.s ? "\"<redacted>\"" : "null");
            else if (!o->val.s)
                strata_buf_puts(out, "null");
            else if (o->type == STRATA_OPT_BOOL)
                strata_buf_puts(out, o->val.i ? "true" : "false");
            else if (o->type == STRATA_OPT_INT || o->type == STRATA_OPT_DURATION ||
                     o->type == STRATA_OPT_SIZE)
                strata_buf_printf(out, "%lld", (long long)o->val.i);
            else
                strata_buf_json_str(out, o->val.s, strlen(o->val.s));
            strata_buf_puts(out, ",\"source\":");
            const char *src = o->source ? o->source : "default";
            strata_buf_json_str(out, src, strlen(src));
            strata_buf_puts(out, "}");
        }
    }
    strata_buf_puts(out, "}");
}

void strata_options_free(strata_opt_group *groups, size_t ngroups) {
    for (size_t g = 0; g < ngroups; g++) {
        for (size_t i = 0; i < groups[g].n; i++) {
            strata_free(groups[g].opts[i].val.s);
            groups[g].opts[i].val.s = NULL;
            groups[g].opts[i].val.i = 0;
            groups[g].opts[i].source = NULL;
        }
    }
}
