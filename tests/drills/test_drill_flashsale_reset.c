/*
 * test_drill_flashsale_reset.c: Redis drops every client connection, again
 * and again, in the middle of a flash sale (a network blip, a proxy or
 * firewall resetting connections): `CLIENT KILL TYPE normal` on a real
 * redis-server until the server has retried six calls whose outcome
 * was unknown (the command was sent, the reply was lost).
 *
 * One `strata serve` with one attempt per second per user (--user-rate=1
 * --user-burst=1); eight client threads order as users.  The server retries
 * such a call ~20 ms later: a retry only learns the outcome of the same
 * attempt, so it must neither be refused by the limiter the first call was
 * charged to (a first request answered 429) nor report the user's own order
 * as "already purchased" (a first request answered 409 with an order id:
 * the API says 201 when the request recorded the order).  And as in every
 * drill: no acknowledged order lost, none hidden, none oversold, Redis and
 * the database agree once drained.
 */
/* ctest-labels: slow redis scenarios */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "drill_scn.h"

#define STOCK   2500
#define USERS   5000
#define THREADS 8
#define SKU     "reset"

static dr_run r;
static dr_fs_state st;
static strata_db *db;

typedef struct reset_loop {
    dr_run *run;
    uint16_t redis_port, http_port;
    double from, now;
    int kills;
} reset_loop;

/* One round of resets; true once the server has retried enough unknown outcomes. */
static bool reset_until_retried(void *ctx) {
    reset_loop *w = ctx;
    char *v = sh_redis_cmd(w->redis_port, "CLIENT KILL TYPE normal");
    w->kills += v ? atoi(v) : 0;
    free(v);
    w->now = dr_metric(w->http_port, "strata_scenario_retries_total");
    return w->now >= w->from + 6 || atomic_load(&w->run->threads_done) == w->run->nthreads;
}

static void connections_reset_mid_sale(void **state) {
    (void)state;
    sh_redis *redis = NULL;
    assert_int_equal(sh_redis_start(&redis, NULL), STRATA_OK);
    uint16_t rport = sh_redis_port(redis);
    const char *args[] = {"--redis", sh_redis_url(redis), "--user-rate=1", "--user-burst=1", NULL};
    sh_serve *s = NULL;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    uint16_t port = sh_serve_port(s);
    char dburl[1024], body[96];
    snprintf(dburl, sizeof dburl, "sqlite://%s/strata.db", sh_serve_var_dir(s));
    snprintf(body, sizeof body, "{\"sku\":\"%s\",\"stock\":%d}", SKU, STOCK);
    sh_http_resp resp;
    assert_int_equal(sh_http(port, "POST", "/v1/flashsales", body, true, 10000, &resp), 201);
    sh_http_free(&resp);

    dr_run_init(&r, DR_FLASHSALE, SKU, port, USERS, THREADS, 0, "rs-u");
    dr_run_start(&r);
    if (!dr_wait_acked(&r, STOCK / 5, 60000)) {
        dr_run_print(&r, "flashsale-reset");
        fail_msg("the sale did not reach %d orders: %s", STOCK / 5, r.unexpected);
    }
    reset_loop w = {&r, rport, port, dr_metric(port, "strata_scenario_retries_total"), 0, 0};
    dr_mark_fault(&r);
    uint64_t t0 = sh_now_ms();
    bool retried = sh_wait_until(30000, 2, reset_until_retried, &w) && w.now >= w.from + 6;
    uint64_t reset_ms = sh_now_ms() - t0;
    int acked_at_end_of_resets = atomic_load(&r.acked);
    dr_run_join(&r);
    dr_run_print(&r, "flashsale-reset");
    if (r.unexpected[0])
        fail_msg("unexpected answer: %s", r.unexpected);
    assert_true(retried);
    assert_int_equal(atomic_load(&r.nconflict), 0);
    assert_true(atomic_load(&r.acked) > acked_at_end_of_resets); /* the resets came mid-sale */

    int nv = dr_recheck_unknown(&r);
    dr_learnt l = dr_learnt_of(&r);
    fprintf(stderr,
            "drill flashsale-reset: %d connections killed over %llu ms, server retries %.0f -> "
            "%.0f; users with an unknown outcome=%d: then 201=%d, then already_purchased=%d, "
            "then sold_out=%d, never=%d; first request answered 409 already_purchased=%d, "
            "429=%d\n",
            w.kills, (unsigned long long)reset_ms, w.from, w.now, l.users, l.acked_later,
            l.already_later, l.none_left, l.never, l.already_first, l.limited_first);
    assert_int_equal(nv, 0);
    nv = dr_check_flashsale_redis(&r, rport, SKU, STOCK, &st);
    assert_int_equal(nv, 0);
    assert_int_equal(st.buyers, STOCK);
    db = dr_db_open(dburl);
    assert_non_null(db);
    uint64_t drain_ms = 0;
    nv = dr_check_flashsale_db(&r, db, rport, SKU, &st, 30000, &drain_ms);
    assert_int_equal(nv, 0);
    assert_int_equal(l.limited_first, 0);
    assert_int_equal(l.already_first, 0);
    strata_db_close(&db);
    dr_fs_state_free(&st);
    dr_run_free(&r);
    assert_int_equal(sh_serve_stop(&s), 0);
    sh_redis_stop(&redis);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(connections_reset_mid_sale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
