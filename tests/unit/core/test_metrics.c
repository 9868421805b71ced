/*
 * test_metrics.c: the registry, histogram accuracy, Prometheus text, and
 * concurrent recording (TSan twin).
 */
/* ctest-labels: tsan */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/alloc.h"
#include "strata/metrics.h"
#include "strata/status.h"

static void registry_returns_same_handle_and_refuses_bad_names(void **state) {
    (void)state;
    strata_metrics *m = strata_metrics_create();
    strata_counter *a =
        strata_metrics_counter(m, "http_requests_total", "requests", "code=\"200\"");
    strata_counter *b =
        strata_metrics_counter(m, "http_requests_total", "requests", "code=\"200\"");
    strata_counter *c =
        strata_metrics_counter(m, "http_requests_total", "requests", "code=\"404\"");
    assert_ptr_equal(a, b);
    assert_ptr_not_equal(a, c);
    assert_null(strata_metrics_gauge(m, "http_requests_total", "x", NULL)); /* type clash */
    assert_null(strata_metrics_counter(m, "9bad", "x", NULL));
    assert_null(strata_metrics_counter(m, "bad-name", "x", NULL));
    strata_counter_add(a, 5);
    strata_counter_inc(c);
    assert_int_equal(strata_counter_get(a), 5);
    strata_gauge *g = strata_metrics_gauge(m, "conns", "open connections", NULL);
    strata_gauge_set(g, 10);
    strata_gauge_add(g, -3);
    assert_int_equal(strata_gauge_get(g), 7);
    strata_metrics_destroy(&m);
    assert_null(m);
    strata_metrics_destroy(&m);
}

static void histogram_quantiles_within_relative_error(void **state) {
    (void)state;
    strata_histogram *h = strata_histogram_create(STRATA_HIST_NS);
    assert_int_equal(strata_histogram_quantile(h, 0.5), 0);
    for (uint64_t v = 1; v <= 100000; v++)
        strata_histogram_record(h, v * 1000); /* 1 µs .. 100 ms uniformly */
    assert_int_equal(strata_histogram_count(h), 100000);
    assert_int_equal(strata_histogram_min(h), 1000);
    assert_int_equal(strata_histogram_max(h), 100000000);
    const double qs[] = {0.5, 0.9, 0.99, 0.999};
    for (size_t i = 0; i < 4; i++) {
        double want = qs[i] * 100000 * 1000;
        double got = (double)strata_histogram_quantile(h, qs[i]);
        double rel = fabs(got - want) / want;
        if (rel > 1.0 / 32)
            fail_msg("q=%g want=%.0f got=%.0f rel=%.4f", qs[i], want, got, rel);
    }
    assert_int_equal(strata_histogram_quantile(h, 1.0), 100000000);
    /* small values are exact; huge values do not overflow the bucket table */
    strata_histogram *s = strata_histogram_create(STRATA_HIST_COUNT);
    strata_histogram_record(s, 0);
    strata_histogram_record(s, 7);
    strata_histogram_record(s, UINT64_MAX);
    assert_int_equal(strata_histogram_quantile(s, 0.33), 0);
    assert_int_equal(strata_histogram_quantile(s, 0.5), 7);
    assert_int_equal(strata_histogram_max(s), UINT64_MAX);
    /* merge */
    assert_int_equal(strata_histogram_merge(h, s), STRATA_EINVAL); /* units differ */
    strata_histogram *h2 = strata_histogram_create(STRATA_HIST_NS);
    strata_histogram_record_n(h2, 5, 10);
    assert_int_equal(strata_histogram_merge(h2, h), STRATA_OK);
    assert_int_equal(strata_histogram_count(h2), 100010);
    assert_int_equal(strata_histogram_min(h2), 5);
    strata_histogram_reset(h2);
    assert_int_equal(strata_histogram_count(h2), 0);
    strata_histogram_destroy(&h);
    strata_histogram_destroy(&s);
    strata_histogram_destroy(&h2);
}

/* Parses one exposition line "name{labels} value"; returns 1 if well-formed. */
static int parse_sample(const char *line, char *name, size_t cap, double *value) {
    const char *p = line;
    size_t n = 0;
    while (*p && *p != '{' && *p != ' ' && n + 1 < cap)
        name[n++] = *p++;
    name[n] = '\0';
    if (!n)
        return 0;
    if (*p == '{') {
        int inq = 0;
        for (p++; *p && (inq || *p != '}'); p++) {
            if (*p == '\\' && inq && p[1])
                p++;
            else if (*p == '"')
                inq = !inq;
        }
        if (*p != '}')
            return 0;
        p++;
    }
    if (*p != ' ')
        return 0;
    char *end;
    *value = strtod(p + 1, &end);
    return end != p + 1 && *end == '\0';
}

static void prometheus_text_round_trips(void **state) {
    (void)state;
    strata_metrics *m = strata_metrics_create();
    strata_counter_add(strata_metrics_counter(m, "strata_requests_total", "Requests\nserved",
                                              "route=\"/healthz\",status=\"200\""),
                       3);
    strata_gauge_set(strata_metrics_gauge(m, "strata_connections", "Open", NULL), 2);
    strata_histogram *h = strata_metrics_histogram(m, "strata_request_seconds", "Latency",
                                                   "route=\"/healthz\"", STRATA_HIST_NS);
    strata_histogram_record(h, 1500);      /* 1.5 µs */
    strata_histogram_record(h, 2000000);   /* 2 ms */
    strata_histogram_record(h, 900000000); /* 0.9 s */
    strata_buf out = STRATA_BUF_INIT;
    assert_int_equal(strata_metrics_render_prometheus(m, &out), STRATA_OK);
    char *text = strata_strdup(out.data);
    int samples = 0, helps = 0, types = 0;
    double last_bucket = -1, inf = -1, count = -1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "# HELP ", 7) == 0) {
            helps++;
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            types++;
            continue;
        }
        char name[128];
        double v = 0;
        if (!parse_sample(line, name, sizeof name, &v))
            fail_msg("malformed sample line: %s", line);
        samples++;
        if (strcmp(name, "strata_request_seconds_bucket") == 0) {
            if (v < last_bucket)
                fail_msg("buckets not cumulative at %s", line);
            last_bucket = v;
            if (strstr(line, "le=\"+Inf\""))
                inf = v;
        }
        if (strcmp(name, "strata_request_seconds_count") == 0)
            count = v;
    }
    assert_int_equal(helps, 3);
    assert_int_equal(types, 3);
    assert_true(samples > 20);
    assert_true(inf == 3 && count == 3);
    assert_non_null(
        strstr(out.data, "strata_requests_total{route=\"/healthz\",status=\"200\"} 3\n"));
    assert_non_null(strstr(out.data, "# HELP strata_requests_total Requests\\nserved\n"));
    assert_non_null(strstr(out.data, "# TYPE strata_request_seconds histogram\n"));
    /* 2^21 ns = 2.097 ms holds the 1.5 µs and 2 ms samples, not the 0.9 s one */
    assert_non_null(strstr(
        out.data, "strata_request_seconds_bucket{route=\"/healthz\",le=\"0.002097152\"} 2\n"));
    strata_free(text);
    strata_buf_reset(&out);
    assert_int_equal(strata_metrics_render_json(m, &out), STRATA_OK);
    assert_non_null(strstr(out.data, "\"strata_connections\":2"));
    assert_non_null(strstr(out.data, "\"count\":3"));
    strata_buf_free(&out);
    strata_metrics_destroy(&m);
}

static int64_t answer(void *ctx) { return *(int64_t *)ctx; }

static void gauge_fn_is_sampled_at_render(void **state) {
    (void)state;
    strata_metrics *m = strata_metrics_create();
    int64_t v = 41;
    strata_gauge *g = strata_metrics_gauge_fn(m, "l1_entries", "entries", NULL, answer, &v);
    v = 42;
    assert_int_equal(strata_gauge_get(g), 42);
    strata_buf out = STRATA_BUF_INIT;
    strata_metrics_render_prometheus(m, &out);
    assert_non_null(strstr(out.data, "l1_entries 42\n"));
    strata_buf_free(&out);
    strata_metrics_destroy(&m);
}

typedef struct {
    strata_metrics *m;
    int id;
} thr_arg;

static void *recorder(void *p) {
    thr_arg *a = p;
    for (int i = 0; i < 20000; i++) {
        strata_counter_inc(
            strata_metrics_counter(a->m, "c_total", "c", i % 2 ? "k=\"a\"" : "k=\"b\""));
        strata_histogram_record(
            strata_metrics_histogram(a->m, "h_seconds", "h", NULL, STRATA_HIST_NS),
            (uint64_t)(i + a->id));
        if (i % 5000 == 0) {
            strata_buf out = STRATA_BUF_INIT;
            strata_metrics_render_prometheus(a->m, &out);
            strata_buf_free(&out);
        }
    }
    return NULL;
}

static void concurrent_registration_recording_and_rendering(void **state) {
    (void)state;
    strata_metrics *m = strata_metrics_create();
    pthread_t t[4];
    thr_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thr_arg){m, i};
        pthread_create(&t[i], NULL, recorder, &args[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    uint64_t total = strata_counter_get(strata_metrics_counter(m, "c_total", "c", "k=\"a\"")) +
                     strata_counter_get(strata_metrics_counter(m, "c_total", "c", "k=\"b\""));
    assert_int_equal(total, 80000);
    assert_int_equal(strata_histogram_count(strata_metrics_find_histogram(m, "h_seconds", NULL)),
                     80000);
    strata_metrics_destroy(&m);
}

static void registration_survives_allocation_failures(void **state) {
    (void)state;
    for (uint64_t n = 1; n <= 8; n++) {
        strata_metrics *m = strata_metrics_create();
        assert_non_null(m);
        strata_alloc_fail_at(n, 0);
        strata_histogram *h =
            strata_metrics_histogram(m, "x_seconds", "x", "a=\"b\"", STRATA_HIST_NS);
        strata_alloc_fail_at(0, 0);
        /* either it failed cleanly (NULL) or it works; a retry must work either way */
        strata_histogram *h2 =
            strata_metrics_histogram(m, "x_seconds", "x", "a=\"b\"", STRATA_HIST_NS);
        assert_non_null(h2);
        if (h)
            assert_ptr_equal(h, h2);
        strata_buf out = STRATA_BUF_INIT;
        assert_int_equal(strata_metrics_render_prometheus(m, &out), STRATA_OK);
        strata_buf_free(&out);
        strata_metrics_destroy(&m);
    }
    strata_alloc_counting(0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(registry_returns_same_handle_and_refuses_bad_names),
        cmocka_unit_test(histogram_quantiles_within_relative_error),
        cmocka_unit_test(prometheus_text_round_trips),
        cmocka_unit_test(gauge_fn_is_sampled_at_render),
        cmocka_unit_test(concurrent_registration_recording_and_rendering),
        cmocka_unit_test(registration_survives_allocation_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
