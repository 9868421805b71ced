/*
 * test_core_basics.c: status codes, the allocator hooks, clocks, buffers and
 * the embedded-file table (src/lib/core).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/buf.h"
#include "strata/clock.h"
#include "strata/embedded.h"
#include "strata/status.h"

static void status_names_messages_and_http(void **state) {
    (void)state;
    assert_int_equal(STRATA_OK, 0);
    assert_string_equal(strata_status_name(STRATA_ETIMEDOUT), "ETIMEDOUT");
    assert_string_equal(strata_strerror(STRATA_OK), "ok");
    assert_int_equal(strata_status_http(STRATA_ENOTFOUND), 404);
    assert_int_equal(strata_status_http(STRATA_ELIMITED), 429);
    assert_int_equal(strata_status_http(STRATA_EUNKNOWN), 503);
    assert_string_equal(strata_strerror(-9999), "unknown status");
    assert_int_equal(strata_status_http(-9999), 500);
    assert_int_equal(strata_status_from_errno(ETIMEDOUT), STRATA_ETIMEDOUT);
    assert_int_equal(strata_status_from_errno(ECONNRESET), STRATA_ECLOSED);
    assert_int_equal(strata_status_from_errno(ENOSPC), STRATA_ESYS);
}

static void alloc_counts_bytes_and_fails_the_nth(void **state) {
    (void)state;
    strata_alloc_counting(1);
    int64_t before = strata_alloc_bytes_in_use();
    void *p = strata_malloc(1000);
    assert_non_null(p);
    assert_true(strata_alloc_bytes_in_use() - before >= 1000);
    p = strata_realloc(p, 5000);
    assert_non_null(p);
    assert_true(strata_alloc_bytes_in_use() - before >= 5000);
    strata_free(p);
    assert_int_equal(strata_alloc_bytes_in_use(), before);

    strata_alloc_fail_at(3, 0);
    void *a = strata_malloc(8), *b = strata_calloc(2, 8), *c = strata_malloc(8),
         *d = strata_malloc(8);
    assert_non_null(a);
    assert_non_null(b);
    assert_null(c);     /* the third fails */
    assert_non_null(d); /* not sticky: the fourth works */
    assert_int_equal(strata_alloc_failures(), 1);
    strata_alloc_fail_at(1, 1);
    assert_null(strata_malloc(1));
    assert_null(strata_strdup("x"));
    strata_alloc_fail_at(0, 0);
    strata_free(a);
    strata_free(b);
    strata_free(d);
    strata_alloc_counting(0);
    /* calloc overflow is refused, not wrapped */
    assert_null(strata_calloc(SIZE_MAX / 2, 4));
}

static void clocks_move_only_when_allowed(void **state) {
    (void)state;
    strata_clock *sys = strata_clock_system();
    assert_int_equal(strata_clock_advance(sys, 1), STRATA_EPERM);
    uint64_t a = strata_clock_now_ns(sys), b = strata_clock_now_ns(sys);
    assert_true(b >= a);

    strata_clock *m = strata_clock_create_manual(1000, 1700000000000);
    assert_non_null(m);
    assert_int_equal(strata_clock_now_ns(m), 1000);
    assert_int_equal(strata_clock_wall_ms(m), 1700000000000);
    assert_int_equal(strata_clock_advance(m, 5 * (int64_t)STRATA_NS_PER_SEC), STRATA_OK);
    assert_int_equal(strata_clock_now_ns(m), 1000 + 5 * STRATA_NS_PER_SEC);
    assert_int_equal(strata_clock_wall_ms(m), 1700000005000);
    /* a negative offset moves wall time back but never the monotonic reading */
    assert_int_equal(strata_clock_advance(m, -10 * (int64_t)STRATA_NS_PER_SEC), STRATA_OK);
    assert_int_equal(strata_clock_now_ns(m), 1000);
    assert_int_equal(strata_clock_wall_ms(m), 1699999995000);
    strata_clock_destroy(&m);
    assert_null(m);

    strata_clock *o = strata_clock_create_offset();
    int64_t w0 = strata_clock_wall_ms(o);
    strata_clock_advance(o, 3600 * (int64_t)STRATA_NS_PER_SEC);
    int64_t w1 = strata_clock_wall_ms(o);
    assert_true(w1 - w0 >= 3600 * 1000);
    assert_true(w1 - w0 < 3600 * 1000 + 60 * 1000);
    assert_int_equal(strata_clock_offset_ns(o), 3600 * (int64_t)STRATA_NS_PER_SEC);
    strata_clock_destroy(&o);
    strata_clock_destroy(&sys); /* the system clock is never freed */
    assert_non_null(strata_clock_system());
}

static void buf_appends_formats_and_escapes(void **state) {
    (void)state;
    strata_buf b = STRATA_BUF_INIT;
    for (int i = 0; i < 1000; i++)
        assert_int_equal(strata_buf_printf(&b, "%d,", i), STRATA_OK);
    assert_true(b.len > 2000);
    assert_int_equal(b.data[b.len], '\0');
    assert_memory_equal(b.data, "0,1,2,", 6);
    strata_buf_reset(&b);
    assert_int_equal(b.len, 0);
    const char raw[] = "a\"b\\c\n\x01z";
    strata_buf_json_str(&b, raw, sizeof raw - 1);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\n\\u0001z\"");
    size_t len;
    char *s = strata_buf_steal(&b, &len);
    assert_int_equal(len, strlen(s));
    assert_null(b.data);
    strata_free(s);

    /* allocation failure: reported, contents kept, flag set */
    strata_buf c = STRATA_BUF_INIT;
    strata_buf_puts(&c, "keep");
    strata_alloc_fail_at(1, 1);
    char big[300];
    memset(big, 'x', sizeof big);
    assert_int_equal(strata_buf_append(&c, big, sizeof big), STRATA_ENOMEM);
    strata_alloc_fail_at(0, 0);
    strata_alloc_counting(0);
    assert_true(c.oom);
    assert_string_equal(c.data, "keep");
    strata_buf_free(&c);
}

static void embedded_lookup(void **state) {
    (void)state;
    static const strata_embedded table[] = {{"a.lua", "return 1", 8}, {NULL, NULL, 0}};
    assert_non_null(strata_embedded_find(table, "a.lua"));
    assert_null(strata_embedded_find(table, "b.lua"));
    assert_null(strata_embedded_find(NULL, "a.lua"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(status_names_messages_and_http),
        cmocka_unit_test(alloc_counts_bytes_and_fails_the_nth),
        cmocka_unit_test(clocks_move_only_when_allowed),
        cmocka_unit_test(buf_appends_formats_and_escapes),
        cmocka_unit_test(embedded_lookup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
