/*
 * strata/json.h: strict JSON input on top of cJSON.
 *
 * cJSON alone accepts what an API must refuse: 12.5 or 1e2 where an integer
 * is meant, integers beyond 2^53 (silently rounded), invalid UTF-8, lone
 * surrogates, "\u0000", duplicate keys (the first silently wins in lookups)
 * and nesting deep enough to exhaust the stack.  strata_json_parse() checks
 * the text against RFC 8259 first (grammar, UTF-8, depth, escapes), lets
 * cJSON build the tree, then rejects duplicate keys and keeps every number's
 * literal text (in the node's `valuestring`) so that the field readers can
 * tell 12 from 12.0 and 9007199254740993 from 9007199254740992.
 *
 * The readers take a field name and documented bounds and, on failure, write
 * one precise message naming the field and the reason into *err, e.g.
 *   field "qty": must be an integer in [1, 100], got 12.5
 * They return STRATA_OK (0) when the field was read, 1 when an optional
 * field is absent or null (*out untouched: set the default first),
 * STRATA_EINVAL for a wrong type or a missing required field, STRATA_ERANGE
 * for a value outside its bounds.
 *
 * Ownership: the document belongs to the caller (cJSON_Delete); strings
 * returned by the readers point into it.
 */
#ifndef STRATA_JSON_H
#define STRATA_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "strata/buf.h"

/** Default nesting limit for request bodies (objects and arrays). */
#define STRATA_JSON_MAX_DEPTH 32
/** The largest integer magnitude accepted anywhere (2^53: exact in a double, safe in JS). */
#define STRATA_JSON_MAX_SAFE_INT 9007199254740992LL

/**
 * Parses text[0..len) (no NUL needed) strictly.  max_depth >= 1 bounds the
 * nesting of arrays and objects (0 means STRATA_JSON_MAX_DEPTH).  On success
 * *out is the document.  On failure *out is NULL, a message with the byte
 * offset is appended to *err (if not NULL) and the return is STRATA_EINVAL
 * (or STRATA_ENOMEM).
 */
int strata_json_parse(const char *text, size_t len, int max_depth, cJSON **out, strata_buf *err);

/** Integer field of `obj` within [min, max] (and within ±2^53); no fraction or exponent. */
int strata_json_get_int(const cJSON *obj, const char *field, bool required, int64_t min,
                        int64_t max, int64_t *out, strata_buf *err);

/** Any finite number within [min, max]. */
int strata_json_get_double(const cJSON *obj, const char *field, bool required, double min,
                           double max, double *out, strata_buf *err);

/** true or false. */
int strata_json_get_bool(const cJSON *obj, const char *field, bool required, bool *out,
                         strata_buf *err);

/**
 * String field with a length in bytes within [min_len, max_len]; *out points
 * into the document (NUL-terminated, valid UTF-8, no NUL inside), *len_out
 * (optional) gets its length.
 */
int strata_json_get_str(const cJSON *obj, const char *field, bool required, size_t min_len,
                        size_t max_len, const char **out, size_t *len_out, strata_buf *err);

/** Array field with [min_items, max_items] elements; *out borrowed. */
int strata_json_get_array(const cJSON *obj, const char *field, bool required, int min_items,
                          int max_items, const cJSON **out, strata_buf *err);

/** Object field; *out borrowed. */
int strata_json_get_object(const cJSON *obj, const char *field, bool required, const cJSON **out,
                           strata_buf *err);

/**
 * Checks one value (an array element, say) as an integer in [min, max];
 * `what` names it in the message ("items[3]").  STRATA_OK / EINVAL / ERANGE.
 */
int strata_json_int_value(const cJSON *item, const char *what, int64_t min, int64_t max,
                          int64_t *out, strata_buf *err);

/**
 * Refuses members of `obj` not named in `allowed` (NULL-terminated), so a
 * misspelt optional field is an error rather than silently ignored.
 */
int strata_json_only_fields(const cJSON *obj, const char *const *allowed, strata_buf *err);

/** True if `obj` is a JSON object. */
bool strata_json_is_object(const cJSON *obj);

#endif
