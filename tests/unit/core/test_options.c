/*
 * test_options.c: the options engine: parsing of each type, precedence of
 * flags > env > config file > defaults, one-line errors with the right codes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/options.h"
#include "strata/status.h"

#define T_OPTIONS(X)                                                             \
    X(listen, STRATA_OPT_STR, "127.0.0.1:8080", 0, 0, NULL, 0, "address")        \
    X(workers, STRATA_OPT_INT, "2", 1, 64, NULL, 0, "worker threads")            \
    X(admin_token, STRATA_OPT_STR, NULL, 0, 0, NULL, STRATA_OPT_SECRET, "token") \
    X(request_timeout, STRATA_OPT_DURATION, "2s", 1, 60000, NULL, 0, "timeout")  \
    X(max_body, STRATA_OPT_SIZE, "1mb", 0, 1 << 30, NULL, 0, "body limit")       \
    X(debug_clock, STRATA_OPT_BOOL, "false", 0, 0, NULL, 0, "movable clock")     \
    X(mode, STRATA_OPT_ENUM, "lua", 0, 0, "lua|segment-lock", 0, "strategy")

enum { T_OPTIONS(STRATA_OPT_ENUM_ENTRY) T_OPT__COUNT };
static strata_option topts[] = {T_OPTIONS(STRATA_OPT_ROW)};
static strata_opt_group tgroup[] = {{"Test", topts, T_OPT__COUNT}};

static int load(int argc, char **argv, char **envp, strata_buf *err) {
    bool help;
    strata_buf_reset(err);
    return strata_options_load(tgroup, 1, argc, argv, envp, &help, err);
}

static void defaults_and_types(void **state) {
    (void)state;
    strata_buf err = STRATA_BUF_INIT;
    assert_int_equal(load(0, NULL, NULL, &err), STRATA_OK);
    assert_string_equal(topts[OPT_listen].val.s, "127.0.0.1:8080");
    assert_int_equal(topts[OPT_workers].val.i, 2);
    assert_null(topts[OPT_admin_token].val.s);
    assert_int_equal(topts[OPT_request_timeout].val.i, 2000);
    assert_int_equal(topts[OPT_max_body].val.i, 1 << 20);
    assert_int_equal(topts[OPT_debug_clock].val.i, 0);
    assert_int_equal(topts[OPT_mode].val.i, 0);
    assert_string_equal(topts[OPT_workers].source, "default");

    char *argv[] = {"--workers=8", "--request-timeout", "250ms",      "--debug-clock",
                    "--mode",      "segment-lock",      "--max-body", "64k"};
    assert_int_equal(load(8, argv, NULL, &err), STRATA_OK);
    assert_int_equal(topts[OPT_workers].val.i, 8);
    assert_int_equal(topts[OPT_request_timeout].val.i, 250);
    assert_int_equal(topts[OPT_debug_clock].val.i, 1);
    assert_int_equal(topts[OPT_mode].val.i, 1);
    assert_int_equal(topts[OPT_max_body].val.i, 65536);
    assert_string_equal(topts[OPT_workers].source, "flag");
    strata_buf_free(&err);
    strata_options_free(tgroup, 1);
}

static void precedence_flag_env_file(void **state) {
    (void)state;
    char path[] = "/tmp/strata-opt-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# comment\n[server]\nworkers = 3\nlisten = 0.0.0.0:9000\nadmin_token = s3cret\n");
    fclose(f);
    char cfg[64];
    snprintf(cfg, sizeof cfg, "--config=%s", path);
    strata_buf err = STRATA_BUF_INIT;

    char *a1[] = {cfg};
    assert_int_equal(load(1, a1, NULL, &err), STRATA_OK);
    assert_int_equal(topts[OPT_workers].val.i, 3);
    assert_string_equal(topts[OPT_workers].source, "config");

    char *env[] = {"STRATA_WORKERS=5", "STRATA_UNRELATED=1", "PATH=/bin", NULL};
    assert_int_equal(load(1, a1, env, &err), STRATA_OK);
    assert_int_equal(topts[OPT_workers].val.i, 5);
    assert_string_equal(topts[OPT_listen].val.s, "0.0.0.0:9000"); /* file still applies */

    char *a2[] = {cfg, "--workers", "7"};
    assert_int_equal(load(3, a2, env, &err), STRATA_OK);
    assert_int_equal(topts[OPT_workers].val.i, 7);

    /* STRATA_CONFIG names the file when no flag does */
    char envcfg[80];
    snprintf(envcfg, sizeof envcfg, "STRATA_CONFIG=%s", path);
    char *env2[] = {envcfg, NULL};
    assert_int_equal(load(0, NULL, env2, &err), STRATA_OK);
    assert_int_equal(topts[OPT_workers].val.i, 3);

    /* secrets are redacted in the JSON dump */
    strata_buf js = STRATA_BUF_INIT;
    strata_options_json(tgroup, 1, &js);
    assert_null(strstr(js.data, "s3cret"));
    assert_non_null(
        strstr(js.data, "\"admin_token\":{\"value\":\"<redacted>\",\"source\":\"config\"}"));
    assert_non_null(strstr(js.data, "\"workers\":{\"value\":3,\"source\":\"config\"}"));
    strata_buf_free(&js);
    unlink(path);
    strata_buf_free(&err);
    strata_options_free(tgroup, 1);
}

static void errors_name_option_value_and_range(void **state) {
    (void)state;
    strata_buf err = STRATA_BUF_INIT;
    char *bad_int[] = {"--workers", "abc"};
    assert_int_equal(load(2, bad_int, NULL, &err), STRATA_ERANGE);
    assert_non_null(strstr(err.data, "--workers"));
    assert_non_null(strstr(err.data, "\"abc\""));
    assert_non_null(strstr(err.data, "from 1 to 64"));
    assert_null(strchr(err.data, '\n'));

    char *out_of_range[] = {"--workers=65"};
    assert_int_equal(load(1, out_of_range, NULL, &err), STRATA_ERANGE);
    char *fraction[] = {"--workers=2.5"};
    assert_int_equal(load(1, fraction, NULL, &err), STRATA_ERANGE);
    char *bad_enum[] = {"--mode=fast"};
    assert_int_equal(load(1, bad_enum, NULL, &err), STRATA_ERANGE);
    assert_non_null(strstr(err.data, "lua|segment-lock"));
    char *bad_dur[] = {"--request-timeout=5 parsecs"};
    assert_int_equal(load(1, bad_dur, NULL, &err), STRATA_ERANGE);
    char *bad_bool[] = {"--debug-clock=maybe"};
    assert_int_equal(load(1, bad_bool, NULL, &err), STRATA_ERANGE);
    char *secret[] = {"--admin-token=\x01hidden"};
    assert_int_equal(load(1, secret, NULL, &err), STRATA_ERANGE);
    assert_null(strstr(err.data, "hidden")); /* secrets never echoed */

    char *unknown[] = {"--wrokers=2"};
    assert_int_equal(load(1, unknown, NULL, &err), STRATA_EINVAL);
    assert_non_null(strstr(err.data, "--wrokers"));
    char *missing[] = {"--workers"};
    assert_int_equal(load(1, missing, NULL, &err), STRATA_EINVAL);
    char *positional[] = {"workers"};
    assert_int_equal(load(1, positional, NULL, &err), STRATA_EINVAL);

    char *env[] = {"STRATA_WORKERS=0", NULL};
    assert_int_equal(load(0, NULL, env, &err), STRATA_ERANGE);
    assert_non_null(strstr(err.data, "(from env)"));

    char *nofile[] = {"--config", "/nonexistent/strata.conf"};
    assert_int_equal(load(2, nofile, NULL, &err), STRATA_ENOTFOUND);
    assert_non_null(strstr(err.data, "/nonexistent/strata.conf"));

    char path[] = "/tmp/strata-opt-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "workers = 2\n\nbogus_key = 1\n");
    fclose(f);
    char cfg[64];
    snprintf(cfg, sizeof cfg, "--config=%s", path);
    char *badfile[] = {cfg};
    assert_int_equal(load(1, badfile, NULL, &err), STRATA_ERANGE);
    assert_non_null(strstr(err.data, "line 3"));
    assert_non_null(strstr(err.data, "bogus_key"));
    f = fopen(path, "w");
    fprintf(f, "workers = 99\n");
    fclose(f);
    assert_int_equal(load(1, badfile, NULL, &err), STRATA_ERANGE);
    assert_non_null(strstr(err.data, "line 1"));
    f = fopen(path, "w");
    fprintf(f, "this is not ini\n");
    fclose(f);
    assert_int_equal(load(1, badfile, NULL, &err), STRATA_ERANGE);
    unlink(path);
    strata_buf_free(&err);
    strata_options_free(tgroup, 1);
}

static void help_lists_every_option(void **state) {
    (void)state;
    strata_buf out = STRATA_BUF_INIT;
    strata_options_help(tgroup, 1, &out);
    for (int i = 0; i < T_OPT__COUNT; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--");
        for (const char *p = topts[i].name; *p; p++)
            strncat(flag, *p == '_' ? "-" : (char[]){*p, 0}, 1);
        if (!strstr(out.data, flag))
            fail_msg("help lacks %s", flag);
        if (!strstr(out.data, topts[i].desc))
            fail_msg("help lacks the description of %s", flag);
    }
    assert_non_null(strstr(out.data, "default: 127.0.0.1:8080"));
    assert_non_null(strstr(out.data, "env: STRATA_ADMIN_TOKEN"));
    strata_buf_free(&out);
}

static void value_parsers(void **state) {
    (void)state;
    int64_t v;
    assert_int_equal(strata_parse_int64("-5", -10, 10, &v), STRATA_OK);
    assert_int_equal(v, -5);
    assert_int_equal(strata_parse_int64("99999999999999999999", INT64_MIN, INT64_MAX, &v),
                     STRATA_ERANGE);
    assert_int_equal(strata_parse_int64(" 5", 0, 10, &v), STRATA_EINVAL);
    assert_int_equal(strata_parse_int64("", 0, 10, &v), STRATA_EINVAL);
    assert_int_equal(strata_parse_duration_ms("1h", &v), STRATA_OK);
    assert_int_equal(v, 3600000);
    assert_int_equal(strata_parse_duration_ms("-1s", &v), STRATA_EINVAL);
    assert_int_equal(strata_parse_size("1g", &v), STRATA_OK);
    assert_int_equal(v, 1 << 30);
    assert_int_equal(strata_parse_size("99999999999999999g", &v), STRATA_ERANGE);
    bool b;
    assert_int_equal(strata_parse_bool("On", &b), STRATA_OK);
    assert_true(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_and_types),
        cmocka_unit_test(precedence_flag_env_file),
        cmocka_unit_test(errors_name_option_value_and_range),
        cmocka_unit_test(help_lists_every_option),
        cmocka_unit_test(value_parsers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
