/*
 * test_drill_flashsale_crash.c: `strata serve` is SIGKILLed in the middle of
 * a flash sale and a new one is started on the same var dir with the same
 * --node-id (issue 7: "kill Strata with SIGKILL mid-sale and see every
 * acknowledged order persisted after restart").
 *
 * A real redis-server; the default SQLite database in the var dir.  To make
 * sure the crash leaves write-behind work of BOTH kinds behind, the drill
 * holds the SQLite write lock from outside while the sale runs: the
 * persister has read a batch it cannot commit (entries pending for its node
 * id) and later orders are never delivered (group lag).  With both seen,
 * the server is SIGKILLed mid-sale (clients keep ordering: connection
 * refused / reset count as unknown outcomes and are asked again), the lock
 * is released, and a new server starts on the same var dir and node id.
 * Afterwards:
 *   - every acknowledged order is in Redis and, once the new server's
 *     persister drained (its own pending entries re-read at start, not
 *     XAUTOCLAIMed 30 s later, then the undelivered ones), in the database
 *     exactly once, nothing pending or dead-lettered;
 *   - none oversold; every user whose request died with the server learnt
 *     the outcome by asking the new one.
 */
/* ctest-labels: slow redis scenarios */
/* ctest-timeout: 150 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "drill_scn.h"

#define STOCK   2500
#define STOCK_S "2500"
#define USERS   3500
#define THREADS 8
#define SKU     "crash"

static dr_run r;
static dr_fs_state st;
static strata_db *db;

typedef struct backlog {
    dr_run *run;
    uint16_t redis_port;
    long long pending, lag;
} backlog;

/* Orders are flowing and the persister has both kinds of backlog. */
static bool has_backlog(void *ctx) {
    backlog *b = ctx;
    dr_stream_group(b->redis_port, "fs:{" SKU "}:events", &b->pending, &b->lag);
    return atomic_load(&b->run->acked) >= STOCK / 5 && b->pending > 0 && b->lag > 0;
}

static void sigkill_serve_mid_sale(void **state) {
    (void)state;
    sh_redis *redis = NULL;
    assert_int_equal(sh_redis_start(&redis, NULL), STRATA_OK);
    uint16_t rport = sh_redis_port(redis);
    char var[1024], varflag[1100], dburl[1100];
    snprintf(var, sizeof var, "%s/var-crash", sh_tmpdir());
    snprintf(varflag, sizeof varflag, "--var-dir=%s", var);
    snprintf(dburl, sizeof dburl, "sqlite://%s/strata.db", var);
    const char *args[] = {"--redis",          sh_redis_url(redis), varflag, "--node-id=drill-node",
                          "--user-rate=1000", "--user-burst=1000", NULL};
    sh_serve *s = NULL;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    sh_http_resp resp;
    assert_int_equal(sh_http(sh_serve_port(s), "POST", "/v1/flashsales",
                             "{\"sku\":\"" SKU "\",\"stock\":" STOCK_S "}", true, 10000, &resp),
                     201);
    sh_http_free(&resp);

    /* Hold SQLite's write lock: the persister's batch waits (busy timeout) and fails. */
    db = dr_db_open(dburl);
    assert_non_null(db);
    strata_db_conn *lock = NULL;
    assert_int_equal(strata_db_acquire(db, &lock), STRATA_OK);
    assert_int_equal(strata_db_begin(lock, NULL), STRATA_OK);
    assert_int_equal(strata_db_exec(lock,
                                    "INSERT INTO strata_meta (key, value) VALUES "
                                    "('drill_lock', 'held')",
                                    NULL),
                     STRATA_OK);

    /* Paced (8 x 50 users/s): the sale lasts seconds, so the persister finds the stream
     * (registry read every second) and the crash lands mid-sale. */
    dr_run_init(&r, DR_FLASHSALE, SKU, sh_serve_port(s), USERS, THREADS, 50, "cr-u");
    dr_run_start(&r);
    backlog b = {&r, rport, -1, -1};
    if (!sh_wait_until(60000, 5, has_backlog, &b)) {
        dr_run_print(&r, "flashsale-crash");
        fail_msg("no backlog: acked %d pending %lld lag %lld: %s", atomic_load(&r.acked), b.pending,
                 b.lag, r.unexpected);
    }
    int acked_at_kill = atomic_load(&r.acked);
    dr_mark_fault(&r);
    uint64_t t_kill = sh_now_ms();
    sh_serve_kill(&s);
    dr_stream_group(rport, "fs:{" SKU "}:events", &b.pending, &b.lag);
    long long pending_at_kill = b.pending, lag_at_kill = b.lag;
    assert_int_equal(strata_db_rollback(lock), STRATA_OK);
    strata_db_release(&lock);
    long long persisted_at_kill = dr_db_int(db, "SELECT COUNT(*) FROM orders WHERE sku = $1", SKU);

    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    uint64_t t_ready = sh_now_ms();
    atomic_store(&r.port, sh_serve_port(s));
    dr_run_join(&r);
    dr_run_print(&r, "flashsale-crash");
    if (r.unexpected[0])
        fail_msg("unexpected answer: %s", r.unexpected);
    assert_int_equal(atomic_load(&r.nconflict), 0);
    assert_true(atomic_load(&r.acked_after_fault) > 0);

    int nv = dr_recheck_unknown(&r);
    dr_learnt l = dr_learnt_of(&r);
    uint64_t gap_start, gap = dr_max_ack_gap(&r, &gap_start);
    fprintf(stderr,
            "drill flashsale-crash: acked_at_kill=%d persisted_at_kill=%lld pending_at_kill=%lld "
            "undelivered_at_kill=%lld restart_ready_after=%llu ms longest_gap_without_ack=%llu ms; "
            "users with an unknown outcome=%d: then 201=%d, then already_purchased=%d, then "
            "sold_out=%d, never=%d\n",
            acked_at_kill, persisted_at_kill, pending_at_kill, lag_at_kill,
            (unsigned long long)(t_ready - t_kill), (unsigned long long)gap, l.users, l.acked_later,
            l.already_later, l.none_left, l.never);
    assert_int_equal(nv, 0);
    assert_true(pending_at_kill > 0);
    assert_true(lag_at_kill > 0);

    nv = dr_check_flashsale_redis(&r, rport, SKU, STOCK, &st);
    assert_int_equal(nv, 0);
    assert_int_equal(st.buyers, STOCK);
    uint64_t drain_ms = 0;
    nv = dr_check_flashsale_db(&r, db, rport, SKU, &st, 25000, &drain_ms);
    fprintf(stderr,
            "drill flashsale-crash: buyers=%lld all in the database %llu ms after the check "
            "started (%llu ms after the restart), dead letters 0\n",
            st.buyers, (unsigned long long)drain_ms, (unsigned long long)(sh_now_ms() - t_ready));
    assert_int_equal(nv, 0);
    assert_int_equal(l.already_first, 0);
    strata_db_close(&db);
    dr_fs_state_free(&st);
    dr_run_free(&r);
    assert_int_equal(sh_serve_stop(&s), 0);
    sh_redis_stop(&redis);
}

int main(void) {
    sh_init(140);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sigkill_serve_mid_sale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
