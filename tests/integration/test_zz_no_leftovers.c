/*
 * test_zz_no_leftovers.c: the suite's last test.  No redis-server,
 * redis-sentinel, postgres (or anything else) started by a harness may
 * still run once its test binary has exited: every such process has its
 * cwd or command line inside $TMPDIR/strata-harness/<test>-<pid>/, and
 * sh_leftover_processes() lists those whose test is no longer running.
 * Leftovers are listed, then killed so that the next run starts clean.
 */
/* ctest-last */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "harness/harness.h"

static void test_no_process_outlived_its_test(void **state) {
    (void)state;
    int left = sh_leftover_processes(); /* prints each one */
    if (left > 0)
        fprintf(stderr, "%d process(es) outlived their test binary; killed: %d\n", left,
                sh_reap_leftovers());
    assert_int_equal(left, 0);
}

int main(void) {
    sh_init(60);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_process_outlived_its_test),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
