/*
 * fuzz_json.c: libFuzzer driver over the strict JSON layer (strata/json.h):
 * strata_json_parse on arbitrary bytes, then every field reader on whatever
 * parsed.  Invariant checked beyond "no crash": a document accepted by the
 * strict layer re-parses after cJSON renders it (cJSON never emits anything
 * the strict grammar refuses, except duplicate keys, which we refused).
 *
 *   build/fuzz/fuzz/fuzz_json -max_total_time=600 tests/fuzz/corpus/fuzz_json
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "strata/json.h"
#include "strata/status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *doc = NULL;
    strata_buf err = STRATA_BUF_INIT;
    int rc = strata_json_parse((const char *)data, size, 0, &doc, &err);
    if (rc == STRATA_OK) {
        int64_t i;
        double d;
        bool b;
        const char *s;
        const cJSON *o;
        static const char *const fields[] = {"a", "n", "qty", "", NULL};
        for (int f = 0; fields[f]; f++) {
            strata_json_get_int(doc, fields[f], f & 1, -1000, 1000, &i, &err);
            strata_json_get_double(doc, fields[f], false, -1e9, 1e9, &d, &err);
            strata_json_get_bool(doc, fields[f], false, &b, &err);
            strata_json_get_str(doc, fields[f], false, 0, 64, &s, NULL, &err);
            strata_json_get_array(doc, fields[f], false, 0, 10, &o, &err);
            strata_json_get_object(doc, fields[f], false, &o, &err);
        }
        strata_json_only_fields(doc, fields, &err);
        if (cJSON_IsArray(doc))
            for (const cJSON *c = doc->child; c; c = c->next)
                strata_json_int_value(c, "item", INT64_MIN, INT64_MAX, &i, &err);
        char *txt = cJSON_PrintUnformatted(doc);
        if (txt) {
            cJSON *again = NULL;
            strata_buf e2 = STRATA_BUF_INIT;
            /* numbers may re-render differently (1e400 never gets here: inf is
             * printed as null), so only check that it parses */
            if (strata_json_parse(txt, strlen(txt), 0, &again, &e2) != STRATA_OK &&
                !strstr(e2.data ? e2.data : "", "nesting"))
                abort();
            cJSON_Delete(again);
            strata_buf_free(&e2);
            cJSON_free(txt);
        }
        cJSON_Delete(doc);
    }
    strata_buf_free(&err);
    return 0;
}
