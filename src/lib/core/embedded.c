/* embedded.c: look-up in the build-time embedded file tables (strata/embedded.h). */
#include <string.h>

#include "strata/embedded.h"

const strata_embedded *strata_embedded_find(const strata_embedded *table, const char *name) {
    for (; table && table->name; table++)
        if (strcmp(table->name, name) == 0)
            return table;
    return NULL;
}
