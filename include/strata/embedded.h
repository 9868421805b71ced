/*
 * strata/embedded.h: files embedded into the binary at build time (Lua
 * scripts, the dashboard page).  cmake/StrataEmbed.cmake generates the tables.
 */
#ifndef STRATA_EMBEDDED_H
#define STRATA_EMBEDDED_H

#include <stddef.h>

typedef struct strata_embedded {
    const char *name; /* file name, e.g. "flashsale_order.lua"; NULL ends a table */
    const char *data; /* NUL-terminated contents */
    size_t len;       /* bytes, without the NUL */
} strata_embedded;

/** Finds `name` in a table; NULL if absent. */
const strata_embedded *strata_embedded_find(const strata_embedded *table, const char *name);

#endif
