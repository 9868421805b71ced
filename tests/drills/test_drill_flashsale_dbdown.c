/*
 * test_drill_flashsale_dbdown.c: PostgreSQL is unavailable for a while in
 * the middle of a flash sale (issue 7 drills; docs/notes/tier.md D-T8).
 *
 * `strata serve --db postgres://...` (PostgreSQL 15 from the harness) on a
 * real redis-server; eight paced client threads order as users.  The truth
 * of an order is in Redis, so orders must keep succeeding while the database
 * is gone; the write-behind events wait in the stream and drain afterwards.
 * Two outages, each lasting until the persister has seen it fail AND at
 * least 200 more orders were acknowledged:
 *   1. SIGSTOP (postmaster and backends): queries hang until the client-side
 *      query timeout, the batch fails, entries stay pending, the breaker opens;
 *      then SIGCONT;
 *   2. SIGKILL, then a restart (crash recovery): connections are refused,
 *      then the pool reconnects.
 * Afterwards: no order answer other than 201 / 409 (no 503 at all), every
 * acknowledged order in Redis and, once drained, in the database exactly
 * once, nothing pending or dead-lettered; none oversold.
 */
/* ctest-labels: slow postgres redis scenarios */
/* ctest-timeout: 150 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "drill_scn.h"

#define STOCK   100000
#define USERS   20000
#define THREADS 8
#define RATE    40 /* users per second per thread */
#define SKU     "dbdown"

static dr_run r;
static dr_fs_state st;
static strata_db *db;

typedef struct outage_wait {
    dr_run *run;
    uint16_t port;
    int acked_from;
    double failures_from, failures;
} outage_wait;

/* The persister noticed (a failed batch) and 200 more orders were acknowledged meanwhile. */
static bool outage_seen(void *ctx) {
    outage_wait *w = ctx;
    w->failures = dr_metric(w->port, "strata_wb_batch_failures_total");
    return w->failures > w->failures_from && atomic_load(&w->run->acked) >= w->acked_from + 200;
}

static uint64_t outage(dr_run *run, uint16_t port, int (*down)(sh_pg *), int (*up)(sh_pg *),
                       sh_pg *pg, const char *what, int *acked_during, double *failures) {
    outage_wait w = {run, port, atomic_load(&run->acked),
                     dr_metric(port, "strata_wb_batch_failures_total"), 0};
    uint64_t t0 = sh_now_ms();
    assert_int_equal(down(pg), STRATA_OK);
    if (!sh_wait_until(60000, 20, outage_seen, &w)) {
        dr_run_print(run, what);
        fail_msg("%s: persister failures %.0f -> %.0f, acked %d -> %d", what, w.failures_from,
                 w.failures, w.acked_from, atomic_load(&run->acked));
    }
    *acked_during = atomic_load(&run->acked) - w.acked_from;
    *failures = w.failures - w.failures_from;
    assert_int_equal(up(pg), STRATA_OK);
    return sh_now_ms() - t0;
}

static int pg_kill(sh_pg *pg) { return sh_pg_kill(pg); }
static int pg_restart(sh_pg *pg) { return sh_pg_restart(pg); }

static void database_down_mid_sale(void **state) {
    (void)state;
    sh_redis *redis = NULL;
    sh_pg *pg = NULL;
    assert_int_equal(sh_redis_start(&redis, NULL), STRATA_OK);
    assert_int_equal(sh_pg_start(&pg), STRATA_OK);
    uint16_t rport = sh_redis_port(redis);
    const char *args[] = {"--redis",          sh_redis_url(redis), "--db", sh_pg_url(pg),
                          "--user-rate=1000", "--user-burst=1000", NULL};
    sh_serve *s = NULL;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    uint16_t port = sh_serve_port(s);
    char body[96];
    snprintf(body, sizeof body, "{\"sku\":\"%s\",\"stock\":%d}", SKU, STOCK);
    sh_http_resp resp;
    assert_int_equal(sh_http(port, "POST", "/v1/flashsales", body, true, 10000, &resp), 201);
    sh_http_free(&resp);
    db = dr_db_open(sh_pg_url(pg));
    assert_non_null(db);

    dr_run_init(&r, DR_FLASHSALE, SKU, port, USERS, THREADS, RATE, "db-u");
    dr_run_start(&r);
    assert_true(dr_wait_acked(&r, 100, 30000));
    dr_mark_fault(&r);

    int acked_paused, acked_killed;
    double fail_paused, fail_killed;
    uint64_t paused_ms =
        outage(&r, port, sh_pg_pause, sh_pg_resume, pg, "pause", &acked_paused, &fail_paused);
    assert_true(dr_wait_acked(&r, atomic_load(&r.acked) + 100, 30000));
    uint64_t killed_ms =
        outage(&r, port, pg_kill, pg_restart, pg, "kill", &acked_killed, &fail_killed);
    uint64_t t_back = sh_now_ms();
    assert_true(dr_wait_acked(&r, atomic_load(&r.acked) + 100, 30000));
    atomic_store(&r.stop, 1);
    dr_run_join(&r);
    dr_run_print(&r, "flashsale-dbdown");
    if (r.unexpected[0])
        fail_msg("unexpected answer: %s", r.unexpected);
    assert_int_equal(atomic_load(&r.nconflict), 0);
    /* The database is not on the order path: no order was refused or left unknown. */
    assert_int_equal(atomic_load(&r.n503) + atomic_load(&r.n504) + atomic_load(&r.n0), 0);

    int nv = dr_check_flashsale_redis(&r, rport, SKU, STOCK, &st);
    assert_int_equal(nv, 0);
    assert_int_equal(st.buyers, atomic_load(&r.acked));
    uint64_t drain_ms = 0;
    nv = dr_check_flashsale_db(&r, db, rport, SKU, &st, 60000, &drain_ms);
    fprintf(stderr,
            "drill flashsale-dbdown: SIGSTOP for %llu ms: %d orders acknowledged, %.0f failed "
            "batches; SIGKILL+restart after %llu ms: %d orders acknowledged, %.0f failed "
            "batches; orders=%lld, all in the database %llu ms after recovery (check waited "
            "%llu ms), breaker opened=%.0f\n",
            (unsigned long long)paused_ms, acked_paused, fail_paused, (unsigned long long)killed_ms,
            acked_killed, fail_killed, st.buyers, (unsigned long long)(sh_now_ms() - t_back),
            (unsigned long long)drain_ms,
            dr_metric(port, "strata_breaker_opened_total{breaker=\"wb_persister\""));
    assert_int_equal(nv, 0);
    assert_true(acked_paused >= 200 && acked_killed >= 200);
    strata_db_close(&db);
    dr_fs_state_free(&st);
    dr_run_free(&r);
    assert_int_equal(sh_serve_stop(&s), 0);
    sh_pg_stop(&pg);
    sh_redis_stop(&redis);
}

int main(void) {
    sh_init(140);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(database_down_mid_sale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
