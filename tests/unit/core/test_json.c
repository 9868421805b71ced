/*
 * test_json.c: the strict JSON layer (strata/json.h): grammar, UTF-8,
 * escapes, depth, duplicate keys, number literals, and the field readers
 * with their bounds and messages; plus an allocation-failure sweep.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "strata/alloc.h"
#include "strata/json.h"
#include "strata/status.h"

static int parse(const char *text, cJSON **doc, strata_buf *err) {
    strata_buf_reset(err);
    return strata_json_parse(text, strlen(text), 0, doc, err);
}

static void test_accepts_valid(void **state) {
    (void)state;
    const char *ok[] = {
        "{}",
        "[]",
        "0",
        "-0",
        "1.5e-3",
        "\"s\"",
        "true",
        "false",
        "null",
        " \t\r\n{ \"a\" : [ 1 , 2 ] } ",
        "{\"a\":{\"b\":{\"c\":[true,false,null,\"x\\u00e9\\n\\\"\\\\\\/\"]}}}",
        "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"", /* é € 😀 */
        "\"\\ud83d\\ude00\"",                       /* surrogate pair */
        "{\"a\":1,\"A\":2}",                        /* keys are case-sensitive */
    };
    strata_buf err = STRATA_BUF_INIT;
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        cJSON *doc = NULL;
        int rc = parse(ok[i], &doc, &err);
        if (rc != STRATA_OK)
            fprintf(stderr, "rejected %s: %s\n", ok[i], err.data);
        assert_int_equal(rc, STRATA_OK);
        assert_non_null(doc);
        cJSON_Delete(doc);
    }
    strata_buf_free(&err);
}

static void test_rejects_invalid(void **state) {
    (void)state;
    struct {
        const char *text;
        const char *why;
    } bad[] = {
        {"", "unexpected end"},
        {"{", "expected a string key"},
        {"{\"a\":1,}", "expected a string key"},
        {"[1,]", "unexpected character"},
        {"[1 2]", "expected ','"},
        {"01", "leading zero"},
        {"1.", "invalid number"},
        {".5", "unexpected character"},
        {"1e", "invalid number"},
        {"+1", "unexpected character"},
        {"NaN", "unexpected character"},
        {"Infinity", "unexpected character"},
        {"tru", "invalid literal"},
        {"\"abc", "unterminated string"},
        {"\"a\tb\"", "control character"},
        {"\"\\x\"", "invalid escape"},
        {"\"\\u12\"", "\\u escape"},
        {"\"\\u0000\"", "\\u0000"},
        {"\"\\ud800\"", "surrogate"},
        {"\"\\udc00\"", "surrogate"},
        {"\"\\ud800\\u0041\"", "surrogate"},
        {"\"\xff\"", "UTF-8"},
        {"\"\xc0\xaf\"", "UTF-8"},         /* overlong '/' */
        {"\"\xe0\x80\xaf\"", "UTF-8"},     /* overlong */
        {"\"\xed\xa0\x80\"", "UTF-8"},     /* encoded surrogate */
        {"\"\xf4\x90\x80\x80\"", "UTF-8"}, /* > U+10FFFF */
        {"\"\xc3\"", "UTF-8"},             /* truncated */
        {"{\"a\":1} {}", "trailing"},
        {"{\"a\":1,\"a\":2}", "duplicate key \"a\""},
        {"{\"x\":{\"k\":1,\"\\u006b\":2}}", "duplicate key \"k\""},
        {"{'a':1}", "expected a string key"},
    };
    strata_buf err = STRATA_BUF_INIT;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cJSON *doc = (cJSON *)1;
        int rc = parse(bad[i].text, &doc, &err);
        if (rc != STRATA_EINVAL || !err.data || !strstr(err.data, bad[i].why))
            fprintf(stderr, "case %zu [%s]: rc %d err %s\n", i, bad[i].text, rc, err.data);
        assert_int_equal(rc, STRATA_EINVAL);
        assert_null(doc);
        assert_non_null(strstr(err.data, bad[i].why));
    }
    /* the message carries the byte offset */
    parse("[1,2,x]", &(cJSON *){NULL}, &err);
    assert_non_null(strstr(err.data, "at byte 5"));
    strata_buf_free(&err);
}

static void test_duplicates_large_object(void **state) {
    (void)state;
    strata_buf text = STRATA_BUF_INIT, err = STRATA_BUF_INIT;
    strata_buf_puts(&text, "{");
    for (int i = 0; i < 100; i++)
        strata_buf_printf(&text, "%s\"k%d\":%d", i ? "," : "", i, i);
    strata_buf_puts(&text, "}");
    cJSON *doc = NULL;
    assert_int_equal(parse(text.data, &doc, &err), STRATA_OK);
    cJSON_Delete(doc);
    text.len--; /* drop '}' and add a duplicate far from its twin */
    strata_buf_puts(&text, ",\"k3\":0}");
    assert_int_equal(parse(text.data, &doc, &err), STRATA_EINVAL);
    assert_non_null(strstr(err.data, "duplicate key \"k3\""));
    strata_buf_free(&text);
    strata_buf_free(&err);
}

static void test_depth(void **state) {
    (void)state;
    char buf[2100];
    strata_buf err = STRATA_BUF_INIT;
    for (int depth = 31; depth <= 33; depth++) {
        int n = 0;
        for (int i = 0; i < depth; i++)
            buf[n++] = '[';
        for (int i = 0; i < depth; i++)
            buf[n++] = ']';
        buf[n] = '\0';
        cJSON *doc = NULL;
        int rc = parse(buf, &doc, &err);
        assert_int_equal(rc, depth <= STRATA_JSON_MAX_DEPTH ? STRATA_OK : STRATA_EINVAL);
        cJSON_Delete(doc);
    }
    /* hostile depth: refused quickly, no stack exhaustion */
    memset(buf, '[', 2000);
    buf[2000] = '\0';
    cJSON *doc = NULL;
    assert_int_equal(parse(buf, &doc, &err), STRATA_EINVAL);
    assert_non_null(strstr(err.data, "nesting too deep"));
    /* a custom limit */
    strata_buf_reset(&err);
    assert_int_equal(strata_json_parse("[[1]]", 5, 1, &doc, &err), STRATA_EINVAL);
    assert_int_equal(strata_json_parse("[[1]]", 5, 2, &doc, &err), STRATA_OK);
    cJSON_Delete(doc);
    strata_buf_free(&err);
}

static void test_not_nul_terminated(void **state) {
    (void)state;
    const char text[] = "{\"a\":12}GARBAGE";
    cJSON *doc = NULL;
    strata_buf err = STRATA_BUF_INIT;
    assert_int_equal(strata_json_parse(text, 8, 0, &doc, &err), STRATA_OK);
    int64_t v;
    assert_int_equal(strata_json_get_int(doc, "a", true, 0, 100, &v, &err), STRATA_OK);
    assert_int_equal(v, 12);
    cJSON_Delete(doc);
    /* an embedded NUL is not whitespace */
    assert_int_equal(strata_json_parse("{}\0", 3, 0, &doc, &err), STRATA_EINVAL);
    strata_buf_free(&err);
}

static void test_int_fields(void **state) {
    (void)state;
    cJSON *doc = NULL;
    strata_buf err = STRATA_BUF_INIT;
    assert_int_equal(parse("{\"a\":12,\"b\":12.5,\"c\":12.0,\"d\":1e2,\"e\":9007199254740992,"
                           "\"f\":9007199254740993,\"g\":-9007199254740993,\"h\":\"12\",\"i\":null,"
                           "\"j\":-7,\"k\":123456789012345678901234567890,\"l\":true}",
                           &doc, &err),
                     STRATA_OK);
    int64_t v = -1;
    assert_int_equal(strata_json_get_int(doc, "a", true, 1, 100, &v, &err), STRATA_OK);
    assert_int_equal(v, 12);
    struct {
        const char *f;
        int rc;
        const char *msg;
    } cases[] = {
        {"b", STRATA_EINVAL,
         "field \"b\": must be an integer in [-9007199254740992, 9007199254740992], got 12.5"},
        {"c", STRATA_EINVAL, "got 12.0"},
        {"d", STRATA_EINVAL, "got 1e2"},
        {"f", STRATA_ERANGE, "beyond 2^53"},
        {"g", STRATA_ERANGE, "beyond 2^53"},
        {"h", STRATA_EINVAL, "must be an integer"},
        {"k", STRATA_ERANGE, "beyond 2^53"},
        {"l", STRATA_EINVAL, "must be an integer"},
        {"missing", STRATA_EINVAL, "field \"missing\": is required"},
        {"i", STRATA_EINVAL, "is required"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        strata_buf_reset(&err);
        v = -1;
        int rc = strata_json_get_int(doc, cases[i].f, true, INT64_MIN, INT64_MAX, &v, &err);
        if (rc != cases[i].rc || !strstr(err.data, cases[i].msg))
            fprintf(stderr, "field %s: rc %d err %s\n", cases[i].f, rc, err.data);
        assert_int_equal(rc, cases[i].rc);
        assert_non_null(strstr(err.data, cases[i].msg));
        assert_int_equal(v, -1); /* untouched */
    }
    /* 2^53 itself is fine; bounds are inclusive */
    assert_int_equal(strata_json_get_int(doc, "e", true, 0, INT64_MAX, &v, &err), STRATA_OK);
    assert_int_equal(v, 9007199254740992LL);
    assert_int_equal(strata_json_get_int(doc, "j", true, -7, -7, &v, &err), STRATA_OK);
    strata_buf_reset(&err);
    assert_int_equal(strata_json_get_int(doc, "j", true, 0, 10, &v, &err), STRATA_ERANGE);
    assert_string_equal(err.data, "field \"j\": must be an integer in [0, 10], got -7");
    /* optional: absent and null give 1 and leave the default */
    v = 5;
    assert_int_equal(strata_json_get_int(doc, "missing", false, 0, 10, &v, &err), 1);
    assert_int_equal(strata_json_get_int(doc, "i", false, 0, 10, &v, &err), 1);
    assert_int_equal(v, 5);
    /* not an object */
    cJSON *arr = cJSON_CreateArray();
    strata_buf_reset(&err);
    assert_int_equal(strata_json_get_int(arr, "a", true, 0, 1, &v, &err), STRATA_EINVAL);
    assert_non_null(strstr(err.data, "must be a JSON object"));
    cJSON_Delete(arr);
    /* a tree built by cJSON (no literal) still works, by value */
    cJSON *built = cJSON_CreateObject();
    cJSON_AddNumberToObject(built, "x", 3);
    cJSON_AddNumberToObject(built, "y", 3.5);
    assert_int_equal(strata_json_get_int(built, "x", true, 0, 9, &v, &err), STRATA_OK);
    assert_int_equal(v, 3);
    assert_int_equal(strata_json_get_int(built, "y", true, 0, 9, &v, &err), STRATA_EINVAL);
    cJSON_Delete(built);
    cJSON_Delete(doc);
    strata_buf_free(&err);
}

static void test_other_fields(void **state) {
    (void)state;
    cJSON *doc = NULL;
    strata_buf err = STRATA_BUF_INIT;
    assert_int_equal(parse("{\"s\":\"h\xc3\xa9llo\",\"b\":true,\"d\":2.5,\"a\":[1,2,3],\"o\":{},"
                           "\"n\":\"\"}",
                           &doc, &err),
                     STRATA_OK);
    const char *s;
    size_t len;
    assert_int_equal(strata_json_get_str(doc, "s", true, 1, 10, &s, &len, &err), STRATA_OK);
    assert_string_equal(s, "h\xc3\xa9llo");
    assert_int_equal(len, 6);
    strata_buf_reset(&err);
    assert_int_equal(strata_json_get_str(doc, "s", true, 1, 3, &s, NULL, &err), STRATA_ERANGE);
    assert_string_equal(err.data, "field \"s\": must be a string of 1 to 3 bytes, got 6");
    assert_int_equal(strata_json_get_str(doc, "n", true, 1, 3, &s, NULL, &err), STRATA_ERANGE);
    assert_int_equal(strata_json_get_str(doc, "b", true, 0, 3, &s, NULL, &err), STRATA_EINVAL);
    bool b = false;
    assert_int_equal(strata_json_get_bool(doc, "b", true, &b, &err), STRATA_OK);
    assert_true(b);
    assert_int_equal(strata_json_get_bool(doc, "s", true, &b, &err), STRATA_EINVAL);
    double d;
    assert_int_equal(strata_json_get_double(doc, "d", true, 0, 3, &d, &err), STRATA_OK);
    assert_true(d == 2.5);
    assert_int_equal(strata_json_get_double(doc, "d", true, 0, 2, &d, &err), STRATA_ERANGE);
    const cJSON *a;
    assert_int_equal(strata_json_get_array(doc, "a", true, 1, 3, &a, &err), STRATA_OK);
    int64_t v;
    assert_int_equal(strata_json_int_value(cJSON_GetArrayItem(a, 2), "a[2]", 0, 9, &v, &err),
                     STRATA_OK);
    assert_int_equal(v, 3);
    assert_int_equal(strata_json_get_array(doc, "a", true, 4, 9, &a, &err), STRATA_ERANGE);
    assert_int_equal(strata_json_get_array(doc, "o", true, 0, 9, &a, &err), STRATA_EINVAL);
    const cJSON *o;
    assert_int_equal(strata_json_get_object(doc, "o", true, &o, &err), STRATA_OK);
    assert_int_equal(strata_json_get_object(doc, "a", true, &o, &err), STRATA_EINVAL);
    static const char *const allowed[] = {"s", "b", "d", "a", "o", NULL};
    strata_buf_reset(&err);
    assert_int_equal(strata_json_only_fields(doc, allowed, &err), STRATA_EINVAL);
    assert_string_equal(err.data, "field \"n\": is not a known field");
    static const char *const all[] = {"s", "b", "d", "a", "o", "n", NULL};
    assert_int_equal(strata_json_only_fields(doc, all, &err), STRATA_OK);
    assert_true(strata_json_is_object(doc));
    assert_false(strata_json_is_object(a));
    cJSON_Delete(doc);
    strata_buf_free(&err);
}

static void test_alloc_failures(void **state) {
    (void)state;
    /* Fail each allocation in turn: always a clean error or the right answer, never a leak. */
    const char *text = "{\"a\":[1,2,3,{\"b\":4.5}],\"c\":\"x\",\"d\":{\"e\":1,\"f\":2,\"g\":3,"
                       "\"h\":4,\"i\":5,\"j\":6,\"k\":7,\"l\":8,\"m\":9,\"n\":10,\"o\":11,\"p\":12,"
                       "\"q\":13,\"r\":14,\"s\":15,\"t\":16,\"u\":17}}";
    for (uint64_t n = 1; n < 40; n++) {
        strata_alloc_fail_at(n, 0);
        cJSON *doc = NULL;
        strata_buf err = STRATA_BUF_INIT;
        int rc = strata_json_parse(text, strlen(text), 0, &doc, &err);
        strata_alloc_fail_at(0, 0);
        assert_true(rc == STRATA_OK || rc == STRATA_ENOMEM);
        if (rc == STRATA_OK)
            cJSON_Delete(doc);
        else
            assert_null(doc);
        strata_buf_free(&err);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts_valid),
        cmocka_unit_test(test_rejects_invalid),
        cmocka_unit_test(test_duplicates_large_object),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_not_nul_terminated),
        cmocka_unit_test(test_int_fields),
        cmocka_unit_test(test_other_fields),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
