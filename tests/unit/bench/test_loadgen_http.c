/*
 * test_loadgen_http.c: the load generator's pure parts: the HTTP/1.1
 * response parser (framing, keep-alive rules, chunked, interim responses,
 * every truncation and a set of malformed inputs, fed whole and byte by
 * byte), base-URL parsing, JSON body readers and the open-loop schedule.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

/* The load generator lives in the strata binary (strata_cli, which also pulls the
 * server): its sources are compiled into the test instead. */
#include "../../../bench/loadgen_http.c"
#include "../../../bench/loadgen_engine.c"
#include "strata/status.h"

/* Feeds `in` in pieces of `step` bytes and collects every response: returns how many. */
static int parse_all(const char *in, size_t len, size_t step, lg_http_resp *out, char bodies[][256],
                     int max, int *err, bool eof) {
    lg_http_parser p;
    lg_http_parser_init(&p);
    int n = 0;
    *err = 0;
    for (size_t off = 0; off < len && !*err; off += step) {
        size_t k = len - off < step ? len - off : step;
        if (lg_http_feed(&p, in + off, k) < 0) {
            *err = STRATA_ETOOBIG;
            break;
        }
        for (;;) {
            lg_http_resp r;
            int rc = lg_http_next(&p, &r);
            if (rc < 0) {
                *err = rc;
                break;
            }
            if (rc == 0)
                break;
            if (n < max) {
                out[n] = r;
                snprintf(bodies[n], 256, "%.*s", (int)r.body_len, r.body);
                out[n].body = bodies[n];
            }
            n++;
            lg_http_consume(&p);
        }
    }
    if (eof && !*err) {
        lg_http_resp r;
        int rc = lg_http_eof(&p, &r);
        if (rc < 0)
            *err = rc;
        else if (rc == 1) {
            if (n < max) {
                out[n] = r;
                snprintf(bodies[n], 256, "%.*s", (int)r.body_len, r.body);
                out[n].body = bodies[n];
            }
            n++;
        }
    }
    lg_http_parser_free(&p);
    return n;
}

static const char PIPELINED[] =
    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
    "{\"order_id\":\"a\"}\n"
    "HTTP/1.1 100 Continue\r\n\r\n"
    "HTTP/1.1 409 Conflict\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
    "5;ext=1\r\nhello\r\n1A\r\n abcdefghijklmnopqrstuvwxy\r\n0\r\nX-Trailer: t\r\n\r\n"
    "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
    "HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\ncontent-length: 0\r\n\r\n"
    "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
    "HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx";

static void check_pipelined(const lg_http_resp *r, int n) {
    assert_int_equal(n, 7);
    assert_int_equal(r[0].status, 201);
    assert_true(r[0].keep_alive);
    assert_string_equal(r[0].body, "{\"order_id\":\"a\"}\n");
    assert_int_equal(r[1].status, 409); /* the 100 was skipped */
    assert_string_equal(r[1].body, "hello abcdefghijklmnopqrstuvwxy");
    assert_int_equal(r[2].status, 204);
    assert_int_equal(r[2].body_len, 0);
    assert_int_equal(r[3].status, 429);
    assert_int_equal(r[3].retry_after, 3);
    assert_int_equal(r[4].status, 200);
    assert_false(r[4].keep_alive); /* HTTP/1.0 without keep-alive */
    assert_string_equal(r[4].body, "ok");
    assert_true(r[5].keep_alive); /* HTTP/1.0 with keep-alive */
    assert_int_equal(r[6].status, 503);
    assert_false(r[6].keep_alive);
    assert_int_equal(r[6].retry_after, -1);
}

static void pipelined_responses_whole_and_byte_by_byte(void **state) {
    (void)state;
    size_t len = strlen(PIPELINED);
    size_t steps[] = {len, 1, 2, 3, 7, 64};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        lg_http_resp r[16];
        char bodies[16][256];
        int err;
        int n = parse_all(PIPELINED, len, steps[i], r, bodies, 16, &err, true);
        assert_int_equal(err, 0);
        check_pipelined(r, n);
    }
}

static void body_until_close(void **state) {
    (void)state;
    const char *in = "HTTP/1.1 200 OK\r\nServer: x\r\n\r\nall of it";
    lg_http_resp r[2];
    char bodies[2][256];
    int err;
    assert_int_equal(parse_all(in, strlen(in), 4, r, bodies, 2, &err, false), 0);
    assert_int_equal(parse_all(in, strlen(in), 4, r, bodies, 2, &err, true), 1);
    assert_int_equal(err, 0);
    assert_string_equal(r[0].body, "all of it");
    assert_false(r[0].keep_alive);
}

/* Every strict prefix of a response is "need more", and EOF there is an error. */
static void every_truncation_is_need_more_then_eproto(void **state) {
    (void)state;
    const char *full[] = {
        "HTTP/1.1 201 Created\r\nContent-Length: 12\r\n\r\n{\"a\":\"bcd\"}\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    };
    for (size_t f = 0; f < 2; f++) {
        size_t len = strlen(full[f]);
        for (size_t cut = 1; cut < len; cut++) {
            lg_http_resp r[2];
            char bodies[2][256];
            int err;
            int n = parse_all(full[f], cut, 1, r, bodies, 2, &err, true);
            assert_int_equal(n, 0);
            assert_int_equal(err, STRATA_EPROTO);
        }
        lg_http_resp r[2];
        char bodies[2][256];
        int err;
        assert_int_equal(parse_all(full[f], len, 5, r, bodies, 2, &err, true), 1);
        assert_int_equal(err, 0);
    }
}

static void malformed_responses_are_errors(void **state) {
    (void)state;
    const char *bad[] = {
        "garbage garbage garbage\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
        "HTTP/1.1 600 High\r\n\r\n",
        "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: "
        "chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        "HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n",
        "\x00\x01\x02\x03\x04\x05\x06\x07",
    };
    size_t lens[sizeof bad / sizeof bad[0]];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        lens[i] = i == sizeof bad / sizeof bad[0] - 1 ? 8 : strlen(bad[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lg_http_resp r[2];
        char bodies[2][256];
        int err;
        int n = parse_all(bad[i], lens[i], lens[i], r, bodies, 2, &err, true);
        if (err != STRATA_EPROTO)
            print_error("input %zu: n=%d err=%d\n", i, n, err);
        assert_int_equal(n, 0);
        assert_int_equal(err, STRATA_EPROTO);
    }
}

static void bounds_are_enforced(void **state) {
    (void)state;
    lg_http_resp r[2];
    char bodies[2][256];
    int err;
    const char *huge = "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n";
    assert_int_equal(parse_all(huge, strlen(huge), 64, r, bodies, 2, &err, false), 0);
    assert_int_equal(err, STRATA_ETOOBIG);
    const char *bigchunk = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffff\r\n";
    assert_int_equal(parse_all(bigchunk, strlen(bigchunk), 64, r, bodies, 2, &err, false), 0);
    assert_int_equal(err, STRATA_ETOOBIG);
    /* A header section that never ends. */
    static char endless[LG_HTTP_MAX_HEADER + 100];
    memset(endless, 'a', sizeof endless);
    memcpy(endless, "HTTP/1.1 200 OK\r\nX: ", 20);
    assert_int_equal(parse_all(endless, sizeof endless, 4096, r, bodies, 2, &err, false), 0);
    assert_int_equal(err, STRATA_ETOOBIG);
}

/* Deterministic pseudo-random mutations of a valid stream: never a crash (ASan). */
static void mutated_streams_never_crash(void **state) {
    (void)state;
    size_t len = strlen(PIPELINED);
    char buf[sizeof PIPELINED];
    uint64_t x = 0x243f6a8885a308d3ull;
    int errors = 0, oks = 0;
    for (int round = 0; round < 3000; round++) {
        memcpy(buf, PIPELINED, len);
        for (int m = 0; m < 1 + round % 4; m++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            buf[x % len] = (char)(x >> 32);
        }
        size_t cut = round % 2 ? len : (size_t)(x >> 40) % len;
        lg_http_resp r[16];
        char bodies[16][256];
        int err;
        int n = parse_all(buf, cut, 1 + round % 13, r, bodies, 16, &err, true);
        assert_true(n >= 0 && n <= 16);
        if (err)
            errors++;
        else
            oks++;
    }
    assert_true(errors > 0); /* the mutations do hit the parser's checks */
}

static void urls(void **state) {
    (void)state;
    lg_url u;
    assert_int_equal(lg_url_parse("http://127.0.0.1:8080", &u, NULL), STRATA_OK);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 8080);
    assert_string_equal(u.prefix, "");
    assert_string_equal(u.hostport, "127.0.0.1:8080");
    assert_int_equal(lg_url_parse("http://localhost/api/", &u, NULL), STRATA_OK);
    assert_int_equal(u.port, 80);
    assert_string_equal(u.prefix, "/api");
    assert_int_equal(lg_url_parse("http://[::1]:9/x", &u, NULL), STRATA_OK);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.hostport, "[::1]:9");
    const char *bad[] = {"https://x",      "http://",     "http://:80", "http://h:0",
                         "http://h:65536", "http://h:8x", "http://h h", "ftp://h",
                         "http://h/a b",   "http://[::1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        strata_buf err = STRATA_BUF_INIT;
        assert_int_equal(lg_url_parse(bad[i], &u, &err), STRATA_EINVAL);
        assert_non_null(err.data);
        strata_buf_free(&err);
    }
}

static void json_bodies(void **state) {
    (void)state;
    char s[32];
    int64_t v;
    const char *ok = "{\"order_id\":\"SKU-17\",\"sku\":\"SKU\"}";
    assert_true(lg_json_str(ok, strlen(ok), "order_id", s, sizeof s));
    assert_string_equal(s, "SKU-17");
    const char *err = "{\"error\":{\"code\":\"already_purchased\",\"order_id\":\"SKU-3\"}}";
    assert_true(lg_json_str(err, strlen(err), "code", s, sizeof s));
    assert_string_equal(s, "already_purchased");
    assert_true(lg_json_str(err, strlen(err), "order_id", s, sizeof s));
    assert_string_equal(s, "SKU-3");
    assert_false(lg_json_str(ok, strlen(ok), "missing", s, sizeof s));
    assert_false(lg_json_str(ok, strlen(ok), "order_id", s, 4)); /* does not fit */
    assert_false(lg_json_str("{\"order_id\":", 12, "order_id", s, sizeof s));
    assert_false(lg_json_str("[1,2]", 5, "order_id", s, sizeof s));
    assert_false(lg_json_str("", 0, "order_id", s, sizeof s));
    const char *amt = "{\"amount_cents\":137}";
    assert_true(lg_json_int(amt, strlen(amt), "amount_cents", &v));
    assert_int_equal(v, 137);
    assert_false(lg_json_int("{\"amount_cents\":1.5}", 20, "amount_cents", &v));
    assert_false(lg_json_int("{\"amount_cents\":\"7\"}", 20, "amount_cents", &v));
    assert_false(lg_json_int("{\"amount_cents\":1e300}", 22, "amount_cents", &v));
}

static void open_loop_schedule(void **state) {
    (void)state;
    /* 1000 req/s over 4 threads: global request g is due at g ms; thread t sends g = 4k + t. */
    assert_int_equal(lg_sched_global(4, 2, 5), 22);
    assert_int_equal(lg_sched_due_ns(1000, 1000.0, 4, 2, 5), 1000 + 22 * 1000000ull);
    assert_int_equal(lg_sched_due_ns(0, 1000.0, 4, 0, 0), 0);
    /* Exact at high rates and long runs: request 10^9 at 10^6/s is due at 1000 s. */
    assert_int_equal(lg_sched_due_ns(0, 1e6, 1, 0, 1000000000ull), 1000ull * 1000000000ull);
    /* Due times of all threads merge into one evenly spaced sequence. */
    uint64_t prev = 0;
    for (uint64_t g = 0; g < 1000; g++) {
        int t = (int)(g % 3);
        uint64_t d = lg_sched_due_ns(0, 300.0, 3, t, g / 3);
        if (g)
            assert_true(d > prev);
        assert_true(d / 1000 == (g * 1000000000ull / 300) / 1000);
        prev = d;
    }
    /* Shares add up to the total and differ by at most one. */
    for (uint64_t total = 0; total < 50; total++)
        for (int n = 1; n <= 7; n++) {
            uint64_t sum = 0, lo = UINT64_MAX, hi = 0;
            for (int t = 0; t < n; t++) {
                uint64_t s = lg_sched_share(total, n, t);
                sum += s;
                lo = s < lo ? s : lo;
                hi = s > hi ? s : hi;
            }
            assert_int_equal(sum, total);
            assert_true(hi - lo <= 1);
        }
    assert_true(lg_sched_share(UINT64_MAX, 3, 1) == UINT64_MAX);
}

static void outcome_table(void **state) {
    (void)state;
    assert_string_equal(lg_outcome_label(LG_OK), "success");
    assert_string_equal(lg_outcome_label(LG_REJECTED), "rejected_429");
    assert_string_equal(lg_outcome_label(-1), "?");
    assert_string_equal(lg_outcome_label(LG__NOUTCOMES), "?");
    assert_false(lg_outcome_is_error(LG_SOLD_OUT));
    assert_true(lg_outcome_is_error(LG_TIMEOUT));
    assert_true(lg_outcome_unknown(LG_HTTP_5XX));
    assert_false(lg_outcome_unknown(LG_REJECTED));
    assert_false(lg_outcome_unknown(LG_NOT_FOUND));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pipelined_responses_whole_and_byte_by_byte),
        cmocka_unit_test(body_until_close),
        cmocka_unit_test(every_truncation_is_need_more_then_eproto),
        cmocka_unit_test(malformed_responses_are_errors),
        cmocka_unit_test(bounds_are_enforced),
        cmocka_unit_test(mutated_streams_never_crash),
        cmocka_unit_test(urls),
        cmocka_unit_test(json_bodies),
        cmocka_unit_test(open_loop_schedule),
        cmocka_unit_test(outcome_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
