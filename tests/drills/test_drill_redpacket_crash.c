/*
 * test_drill_redpacket_crash.c: red-packet grabs through two faults at once:
 * PostgreSQL stops, and while it is down `strata serve` is SIGKILLed; the
 * database comes back and a new server starts on the same var dir and
 * --node-id (issue 7 drills, applied to red packets).
 *
 * A real redis-server and PostgreSQL 15; eight paced client threads grab a
 * packet of COUNT shares as more users than shares (so it empties: 410 gone
 * at the end).  Sequence: grabs flow -> SIGSTOP PostgreSQL -> grabs keep
 * succeeding (the truth is in Redis), the persister's batch fails and leaves
 * entries pending for its node id, later ones stay undelivered -> SIGKILL
 * the server mid-grab (its in-flight requests die: clients ask again) ->
 * SIGCONT PostgreSQL -> a new server, same var dir and node id -> grabs run
 * until the packet is empty.  Afterwards:
 *   - every acknowledged grab (200) is in Redis with the told amount and, once
 *     the persister drained, in the database exactly once (nothing pending,
 *     nothing dead-lettered);
 *   - money exact: the shares of all grabs add up to the total, one grab per
 *     share, no user with two amounts, none holding a share they were not told;
 *   - users whose request died with the server learnt their amount (or gone)
 *     by asking the new one.
 * Second case, connections_reset_mid_grabs: Redis resets every client
 * connection mid-grab; see its comment.
 */
/* ctest-labels: slow postgres redis scenarios */
/* ctest-timeout: 150 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "drill_scn.h"

#define TOTAL   250000 /* cents */
#define COUNT   2500
#define USERS   3000
#define THREADS 8
#define RATE    40

static dr_run r;
static dr_rp_state st;
static strata_db *db;

typedef struct backlog {
    dr_run *run;
    uint16_t redis_port, http_port;
    char stream[64];
    int acked_from;
    long long pending, lag;
    double failures;
} backlog;

/* Grabs kept succeeding with the database down; the persister failed a batch and holds
 * pending entries, and newer ones were never delivered. */
static bool backlog_built(void *ctx) {
    backlog *b = ctx;
    dr_stream_group(b->redis_port, b->stream, &b->pending, &b->lag);
    b->failures = dr_metric(b->http_port, "strata_wb_batch_failures_total");
    return atomic_load(&b->run->acked) >= b->acked_from + 150 && b->pending > 0 && b->lag > 0 &&
           b->failures > 0;
}

static void db_down_then_sigkill_mid_grabs(void **state) {
    (void)state;
    sh_redis *redis = NULL;
    sh_pg *pg = NULL;
    assert_int_equal(sh_redis_start(&redis, NULL), STRATA_OK);
    assert_int_equal(sh_pg_start(&pg), STRATA_OK);
    uint16_t rport = sh_redis_port(redis);
    char var[1024], varflag[1100];
    snprintf(var, sizeof var, "%s/var-rp", sh_tmpdir());
    snprintf(varflag, sizeof varflag, "--var-dir=%s", var);
    const char *args[] = {"--redis",
                          sh_redis_url(redis),
                          "--db",
                          sh_pg_url(pg),
                          varflag,
                          "--node-id=rp-node",
                          "--user-rate=1000",
                          "--user-burst=1000",
                          NULL};
    sh_serve *s = NULL;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    char body[128], id[24] = "";
    snprintf(body, sizeof body, "{\"total_cents\":%d,\"count\":%d}", TOTAL, COUNT);
    sh_http_resp resp;
    assert_int_equal(sh_http(sh_serve_port(s), "POST", "/v1/redpackets", body, true, 10000, &resp),
                     201);
    assert_true(dr_json_str(resp.body, "id", id, sizeof id));
    sh_http_free(&resp);
    db = dr_db_open(sh_pg_url(pg));
    assert_non_null(db);

    dr_run_init(&r, DR_REDPACKET, id, sh_serve_port(s), USERS, THREADS, RATE, "rc-u");
    dr_run_start(&r);
    assert_true(dr_wait_acked(&r, 100, 30000));
    dr_mark_fault(&r);
    uint64_t t_down = sh_now_ms();
    assert_int_equal(sh_pg_pause(pg), STRATA_OK);
    backlog b = {&r, rport, sh_serve_port(s), "", atomic_load(&r.acked), -1, -1, 0};
    snprintf(b.stream, sizeof b.stream, "rp:{%s}:events", id);
    if (!sh_wait_until(60000, 20, backlog_built, &b)) {
        dr_run_print(&r, "redpacket-crash");
        fail_msg("no backlog: acked %d (from %d) pending %lld lag %lld failures %.0f: %s",
                 atomic_load(&r.acked), b.acked_from, b.pending, b.lag, b.failures, r.unexpected);
    }
    int acked_db_down = atomic_load(&r.acked) - b.acked_from;
    uint64_t t_kill = sh_now_ms();
    sh_serve_kill(&s);
    dr_stream_group(rport, b.stream, &b.pending, &b.lag);
    long long pending_at_kill = b.pending, lag_at_kill = b.lag;
    assert_int_equal(sh_pg_resume(pg), STRATA_OK);
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    uint64_t t_ready = sh_now_ms();
    atomic_store(&r.port, sh_serve_port(s));
    dr_run_join(&r);
    dr_run_print(&r, "redpacket-crash");
    if (r.unexpected[0])
        fail_msg("unexpected answer: %s", r.unexpected);
    assert_int_equal(atomic_load(&r.nconflict), 0);
    assert_true(atomic_load(&r.acked) > b.acked_from + 150);

    int nv = dr_recheck_unknown(&r);
    dr_learnt l = dr_learnt_of(&r);
    uint64_t gap_start, gap = dr_max_ack_gap(&r, &gap_start);
    fprintf(stderr,
            "drill redpacket-crash: database down %llu ms before the kill, %d grabs acknowledged "
            "meanwhile; at the kill %lld pending, %lld undelivered; restart ready after %llu ms; "
            "longest gap without ack %llu ms; users with an unknown outcome=%d: then a new "
            "grab=%d, then their earlier grab=%d, then gone=%d, never=%d; first request "
            "answered repeat=true: %d\n",
            (unsigned long long)(t_kill - t_down), acked_db_down, pending_at_kill, lag_at_kill,
            (unsigned long long)(t_ready - t_kill), (unsigned long long)gap, l.users, l.acked_later,
            l.already_later, l.none_left, l.never, l.already_first);
    assert_int_equal(nv, 0);
    assert_true(pending_at_kill > 0);
    assert_true(lag_at_kill > 0);

    nv = dr_check_redpacket_redis(&r, rport, id, &st);
    assert_int_equal(nv, 0);
    assert_int_equal(st.grabs, COUNT); /* emptied: every share went to exactly one user */
    assert_int_equal(st.grabbed_sum, TOTAL);
    uint64_t drain_ms = 0;
    nv = dr_check_redpacket_db(&r, db, rport, id, &st, 30000, &drain_ms);
    fprintf(stderr,
            "drill redpacket-crash: grabs=%d (%lld cents) all in the database %llu ms after the "
            "restart\n",
            COUNT, st.grabbed_sum, (unsigned long long)(sh_now_ms() - t_ready));
    assert_int_equal(nv, 0);
    assert_int_equal(l.already_first, 0);
    strata_db_close(&db);
    dr_rp_state_free(&st);
    dr_run_free(&r);
    assert_int_equal(sh_serve_stop(&s), 0);
    sh_pg_stop(&pg);
    sh_redis_stop(&redis);
}

typedef struct reset_loop {
    dr_run *run;
    uint16_t redis_port, http_port;
    double from, now;
    int kills;
} reset_loop;

static bool reset_until_retried(void *ctx) {
    reset_loop *w = ctx;
    char *v = sh_redis_cmd(w->redis_port, "CLIENT KILL TYPE normal");
    w->kills += v ? atoi(v) : 0;
    free(v);
    w->now = dr_metric(w->http_port, "strata_scenario_retries_total");
    return w->now >= w->from + 6 || atomic_load(&w->run->threads_done) == w->run->nthreads;
}

/*
 * Redis drops every client connection again and again mid-grab (CLIENT KILL
 * TYPE normal) until the server has retried 6 calls whose outcome was
 * unknown; one attempt per second per user (--user-rate=1 --user-burst=1).
 * A retry ~20 ms later only learns the outcome of the same attempt: a user's
 * first request is never answered 429 (limiter charged twice) nor
 * "repeat":true; amounts and money stay exact, Redis and the database agree.
 */
static void connections_reset_mid_grabs(void **state) {
    (void)state;
    sh_redis *redis = NULL;
    assert_int_equal(sh_redis_start(&redis, NULL), STRATA_OK);
    uint16_t rport = sh_redis_port(redis);
    const char *args[] = {"--redis", sh_redis_url(redis), "--user-rate=1", "--user-burst=1", NULL};
    sh_serve *s = NULL;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    uint16_t port = sh_serve_port(s);
    char dburl[1024], body[128], id[24] = "";
    snprintf(dburl, sizeof dburl, "sqlite://%s/strata.db", sh_serve_var_dir(s));
    snprintf(body, sizeof body, "{\"total_cents\":%d,\"count\":%d}", 250000, 2500);
    sh_http_resp resp;
    assert_int_equal(sh_http(port, "POST", "/v1/redpackets", body, true, 10000, &resp), 201);
    assert_true(dr_json_str(resp.body, "id", id, sizeof id));
    sh_http_free(&resp);

    dr_run_init(&r, DR_REDPACKET, id, port, 3500, THREADS, 0, "rr-u");
    dr_run_start(&r);
    assert_true(dr_wait_acked(&r, 200, 60000));
    reset_loop w = {&r, rport, port, dr_metric(port, "strata_scenario_retries_total"), 0, 0};
    dr_mark_fault(&r);
    bool retried = sh_wait_until(30000, 2, reset_until_retried, &w) && w.now >= w.from + 6;
    int acked_at_end_of_resets = atomic_load(&r.acked);
    dr_run_join(&r);
    dr_run_print(&r, "redpacket-reset");
    if (r.unexpected[0])
        fail_msg("unexpected answer: %s", r.unexpected);
    assert_true(retried);
    assert_int_equal(atomic_load(&r.nconflict), 0);
    assert_true(atomic_load(&r.acked) > acked_at_end_of_resets);
    int nv = dr_recheck_unknown(&r);
    dr_learnt l = dr_learnt_of(&r);
    fprintf(stderr,
            "drill redpacket-reset: %d connections killed, server retries %.0f -> %.0f; users "
            "with an unknown outcome=%d (then a new grab=%d, their earlier grab=%d, gone=%d, "
            "never=%d); first request answered repeat=true: %d, 429: %d\n",
            w.kills, w.from, w.now, l.users, l.acked_later, l.already_later, l.none_left, l.never,
            l.already_first, l.limited_first);
    assert_int_equal(nv, 0);
    nv = dr_check_redpacket_redis(&r, rport, id, &st);
    assert_int_equal(nv, 0);
    assert_int_equal(st.grabs, 2500);
    assert_int_equal(st.grabbed_sum, 250000);
    db = dr_db_open(dburl);
    assert_non_null(db);
    uint64_t drain_ms = 0;
    nv = dr_check_redpacket_db(&r, db, rport, id, &st, 30000, &drain_ms);
    assert_int_equal(nv, 0);
    assert_int_equal(l.limited_first, 0);
    assert_int_equal(l.already_first, 0);
    strata_db_close(&db);
    dr_rp_state_free(&st);
    dr_run_free(&r);
    assert_int_equal(sh_serve_stop(&s), 0);
    sh_redis_stop(&redis);
}

int main(void) {
    sh_init(140);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(db_down_then_sigkill_mid_grabs),
        cmocka_unit_test(connections_reset_mid_grabs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
