/*
 * test_tier_persister.c: the write-behind persister (strata/tier.h) against a
 * real redis-server and a SQLite file.
 *
 * Events appended to registered streams reach the database once each (a
 * repeated event id is a duplicate), are acknowledged after the commit; a
 * poison event is retried, then moved to "<stream>:dlq" and replayed from
 * there by strata_wb_dlq_replay once fixed; a malformed event goes to the
 * dead-letter stream at once; a restarted node re-reads its own pending
 * entries; a dead node's entries are taken over by XAUTOCLAIM; lag, pending
 * and dead-letter gauges are exported.
 */
/* ctest-labels: redis tsan */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness/harness.h"
#include "strata/db.h"
#include "strata/metrics.h"
#include "strata/tier.h"

static sh_redis *g_redis;
static strata_db *g_db;
static strata_redis_sync *g_rs;
static atomic_int g_fixed;
static int g_case;

static const strata_db_migration k_steps[] = {
    {.sql = "CREATE TABLE t_orders (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL,"
            " user_id TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 1)"},
};

/* "order" -> INSERT; fails for poison=1 until g_fixed. */
static int order_handler(strata_db_conn *c, const strata_wb_event *e, void *ctx) {
    (void)ctx;
    const char *poison = strata_wb_event_get(e, "poison", NULL);
    if (poison && strcmp(poison, "1") == 0 && !atomic_load(&g_fixed))
        return STRATA_ECONFLICT;
    const char *sku = strata_wb_event_get(e, "sku", NULL);
    const char *user = strata_wb_event_get(e, "user", NULL);
    strata_db_param p[3] = {strata_db_p_text(e->id), strata_db_p_text(sku ? sku : ""),
                            strata_db_p_text(user ? user : "")};
    return strata_db_query(c, "INSERT INTO t_orders (order_id, sku, user_id) VALUES ($1, $2, $3)",
                           p, 3, NULL, NULL, NULL);
}

static int64_t q_int(const char *sql) {
    strata_db_conn *c = NULL;
    assert_int_equal(strata_db_acquire(g_db, &c), STRATA_OK);
    strata_db_result *r = NULL;
    int rc = strata_db_query(c, sql, NULL, 0, &r, NULL, NULL);
    assert_int_equal(rc, STRATA_OK);
    int64_t v = strata_db_result_int64(r, 0, 0, -1);
    strata_db_result_free(&r);
    strata_db_release(&c);
    return v;
}

static long long redis_int(const char *fmt, const char *a) {
    strata_redis_reply *r = NULL;
    int rc = strata_redis_sync_command(g_rs, &r, fmt, a);
    assert_int_equal(rc, STRATA_OK);
    long long v = r && r->type == STRATA_REPLY_INTEGER ? r->integer : -1;
    strata_redis_reply_free(r);
    return v;
}

static void xadd(const char *stream, const char *id, const char *extra) {
    strata_redis_reply *r = NULL;
    int rc;
    if (extra)
        rc = strata_redis_sync_command(g_rs, &r, "XADD %s * type order id %s sku s1 user u%s %s 1",
                                       stream, id, id, extra);
    else
        rc = strata_redis_sync_command(g_rs, &r, "XADD %s * type order id %s sku s1 user u%s",
                                       stream, id, id);
    assert_int_equal(rc, STRATA_OK);
    strata_redis_reply_free(r);
}

static void register_stream(const char *stream) {
    strata_redis_sync_op op = {0};
    int rc = strata_wb_register_stream(strata_redis_sync_client(g_rs), stream, strata_redis_sync_cb,
                                       &op);
    assert_int_equal(rc, STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(g_rs, &op), STRATA_OK);
    strata_redis_reply_free(op.reply);
}

static strata_persister *make(const char *node, strata_metrics *m, uint32_t claim_idle_ms) {
    strata_persister_config cfg;
    strata_persister_config_init(&cfg);
    cfg.redis_url = sh_redis_url(g_redis);
    cfg.db = g_db;
    cfg.node_id = node;
    cfg.batch = 64;
    cfg.max_attempts = 3;
    cfg.retry_min_ms = 5;
    cfg.retry_max_ms = 20;
    cfg.discover_ms = 50;
    cfg.claim_idle_ms = claim_idle_ms;
    cfg.claim_every_ms = 50;
    cfg.stats_every_ms = 20;
    cfg.metrics = m;
    strata_persister *p = NULL;
    strata_buf err = STRATA_BUF_INIT;
    assert_int_equal(strata_persister_create(&cfg, &p, &err), STRATA_OK);
    strata_buf_free(&err);
    assert_int_equal(strata_persister_handle(p, "order", order_handler, NULL), STRATA_OK);
    return p;
}

static int setup(void **state) {
    (void)state;
    g_case++;
    char url[512];
    snprintf(url, sizeof url, "sqlite://%s/wb%d.db", sh_tmpdir(), g_case);
    strata_buf err = STRATA_BUF_INIT;
    if (strata_db_open(&g_db, url, &err) != STRATA_OK) {
        fprintf(stderr, "open: %s\n", err.data);
        return -1;
    }
    strata_buf_free(&err);
    strata_redis_reply *r = NULL;
    strata_redis_sync_command(g_rs, &r, "FLUSHALL");
    strata_redis_reply_free(r);
    atomic_store(&g_fixed, 0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    strata_db_close(&g_db);
    return 0;
}

static void applies_each_event_once_and_acks(void **state) {
    (void)state;
    strata_metrics *m = strata_metrics_create();
    register_stream("fs:{a}:events");
    register_stream("fs:{b}:events");
    char id[32];
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "a-%d", i);
        xadd("fs:{a}:events", id, NULL);
        snprintf(id, sizeof id, "b-%d", i);
        xadd("fs:{b}:events", id, NULL);
    }
    /* the same event ids again (a producer retry, a replay): duplicates */
    for (int i = 0; i < 50; i++) {
        snprintf(id, sizeof id, "a-%d", i);
        xadd("fs:{a}:events", id, NULL);
    }
    strata_persister *p = make("node-1", m, 30000);
    assert_int_equal(strata_persister_start(p), STRATA_OK);
    assert_int_equal(strata_persister_drain(p, 20000), STRATA_OK);
    assert_int_equal(q_int("SELECT COUNT(*) FROM t_orders"), 600);
    assert_int_equal(q_int("SELECT COUNT(*) FROM strata_applied_events"), 600);
    assert_int_equal(strata_db_event_applied(g_db, "order:a-7"), 1);
    strata_persister_stats st;
    strata_persister_get_stats(p, &st);
    assert_int_equal(st.applied, 600);
    assert_int_equal(st.duplicates, 50);
    assert_int_equal(st.streams, 2);
    assert_int_equal(redis_int("XLEN %s", "fs:{a}:events:dlq"), 0);
    /* everything acknowledged */
    strata_redis_reply *r = NULL;
    assert_int_equal(strata_redis_sync_command(g_rs, &r, "XPENDING fs:{a}:events " STRATA_WB_GROUP),
                     STRATA_OK);
    assert_int_equal(r->element[0]->integer, 0);
    strata_redis_reply_free(r);
    /* events appended while running are picked up too */
    xadd("fs:{b}:events", "b-late", NULL);
    assert_int_equal(strata_persister_drain(p, 20000), STRATA_OK);
    assert_int_equal(q_int("SELECT COUNT(*) FROM t_orders WHERE order_id = 'b-late'"), 1);
    /* gauges: refreshed every 20 ms; lag and pending are 0 once drained */
    strata_buf out = STRATA_BUF_INIT;
    assert_int_equal(strata_metrics_render_prometheus(m, &out), STRATA_OK);
    assert_non_null(strstr(out.data, "strata_wb_lag"));
    assert_non_null(strstr(out.data, "strata_wb_pending"));
    assert_non_null(strstr(out.data, "strata_wb_dead_letters"));
    assert_non_null(strstr(out.data, "strata_wb_events_total{outcome=\"duplicate\"} 50"));
    strata_buf_free(&out);
    strata_persister_destroy(&p);
    assert_null(p);
    strata_metrics_destroy(&m);
}

static void poison_goes_to_dlq_and_replays(void **state) {
    (void)state;
    register_stream("rp:{x}:events");
    xadd("rp:{x}:events", "ok-1", NULL);
    xadd("rp:{x}:events", "bad-1", "poison");
    xadd("rp:{x}:events", "ok-2", NULL);
    /* malformed: no id field -> dead-lettered at once */
    strata_redis_reply *r = NULL;
    assert_int_equal(strata_redis_sync_command(g_rs, &r, "XADD rp:{x}:events * type order"),
                     STRATA_OK);
    strata_redis_reply_free(r);
    /* an event type nobody handles -> retried, then dead-lettered */
    assert_int_equal(
        strata_redis_sync_command(g_rs, &r, "XADD rp:{x}:events * type refund id r-1 amount 5"),
        STRATA_OK);
    strata_redis_reply_free(r);

    strata_persister *p = make("node-1", NULL, 30000);
    assert_int_equal(strata_persister_start(p), STRATA_OK);
    assert_int_equal(strata_persister_drain(p, 20000), STRATA_OK);
    assert_int_equal(q_int("SELECT COUNT(*) FROM t_orders"), 2);
    assert_int_equal(redis_int("XLEN %s", "rp:{x}:events:dlq"), 3);
    strata_persister_stats st;
    strata_persister_get_stats(p, &st);
    assert_int_equal(st.dead_lettered, 3);
    assert_true(st.failed_events >= 3); /* bad-1 and r-1: 3 attempts each */
    /* the dead letter keeps the body and says why */
    assert_int_equal(strata_redis_sync_command(g_rs, &r, "XRANGE rp:{x}:events:dlq - +"),
                     STRATA_OK);
    assert_int_equal(r->elements, 3);
    bool saw_bad = false;
    for (size_t i = 0; i < r->elements; i++) {
        const strata_redis_reply *fv = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < fv->elements; k += 2)
            if (strcmp(fv->element[k]->str, "id") == 0 &&
                strcmp(fv->element[k + 1]->str, "bad-1") == 0)
                saw_bad = true;
        assert_string_equal(fv->element[0]->str, "dlq_source_id");
        assert_string_equal(fv->element[2]->str, "dlq_error");
    }
    assert_true(saw_bad);
    strata_redis_reply_free(r);
    /* nothing pending in the source stream */
    assert_int_equal(strata_redis_sync_command(g_rs, &r, "XPENDING rp:{x}:events " STRATA_WB_GROUP),
                     STRATA_OK);
    assert_int_equal(r->element[0]->integer, 0);
    strata_redis_reply_free(r);

    /* fixed: replay everything; bad-1 applies, the others fail again */
    atomic_store(&g_fixed, 1);
    assert_int_equal(strata_wb_dlq_replay(g_rs, "rp:{x}:events", NULL, 100), 3);
    assert_int_equal(strata_persister_drain(p, 20000), STRATA_OK);
    assert_int_equal(q_int("SELECT COUNT(*) FROM t_orders WHERE order_id = 'bad-1'"), 1);
    assert_int_equal(redis_int("XLEN %s", "rp:{x}:events:dlq"), 2);
    /* replaying one by id; bad input */
    assert_int_equal(strata_wb_dlq_replay(g_rs, "rp:{x}:events", "0-1", 10), 0);
    assert_int_equal(strata_wb_dlq_replay(g_rs, "rp:{x}:events:dlq", NULL, 10), STRATA_EINVAL);
    strata_persister_destroy(&p);
}

static void restarted_node_resumes_its_pending_entries(void **state) {
    (void)state;
    register_stream("fs:{c}:events");
    for (int i = 0; i < 20; i++) {
        char id[16];
        snprintf(id, sizeof id, "c-%d", i);
        xadd("fs:{c}:events", id, NULL);
    }
    /* node-9 read 10 entries and died before applying them */
    strata_redis_reply *r = NULL;
    assert_int_equal(strata_redis_sync_command(g_rs, &r,
                                               "XREADGROUP GROUP " STRATA_WB_GROUP
                                               " node-9 COUNT 10 STREAMS fs:{c}:events >"),
                     STRATA_OK);
    strata_redis_reply_free(r);
    /* a dead node-7 read the other 10 */
    assert_int_equal(strata_redis_sync_command(g_rs, &r,
                                               "XREADGROUP GROUP " STRATA_WB_GROUP
                                               " node-7 COUNT 10 STREAMS fs:{c}:events >"),
                     STRATA_OK);
    strata_redis_reply_free(r);
    /* node-9 restarts (same node id): its own 10 come back at once, node-7's
     * are claimed after 100 ms idle */
    strata_persister *p = make("node-9", NULL, 100);
    assert_int_equal(strata_persister_start(p), STRATA_OK);
    assert_int_equal(strata_persister_drain(p, 20000), STRATA_OK);
    /* node-7's entries become claimable after 100 ms; drain until they are in */
    uint64_t end = sh_now_ms() + 20000;
    while (q_int("SELECT COUNT(*) FROM t_orders") < 20 && sh_now_ms() < end)
        assert_int_equal(strata_persister_drain(p, 20000), STRATA_OK);
    assert_int_equal(q_int("SELECT COUNT(*) FROM t_orders"), 20);
    strata_persister_stats st;
    strata_persister_get_stats(p, &st);
    assert_true(st.claimed >= 10);
    assert_int_equal(st.applied, 20);
    strata_persister_destroy(&p);
}

static void bad_config_and_inputs(void **state) {
    (void)state;
    strata_persister_config cfg;
    strata_persister_config_init(&cfg);
    strata_persister *p = NULL;
    strata_buf err = STRATA_BUF_INIT;
    assert_int_equal(strata_persister_create(&cfg, &p, &err), STRATA_EINVAL);
    assert_non_null(err.data);
    strata_buf_free(&err);
    cfg.redis_url = sh_redis_url(g_redis);
    cfg.db = g_db;
    cfg.node_id = "bad\xff";
    assert_int_equal(strata_persister_create(&cfg, &p, NULL), STRATA_EINVAL);
    cfg.node_id = "n";
    assert_int_equal(strata_persister_create(&cfg, &p, NULL), STRATA_OK);
    assert_int_equal(strata_persister_handle(p, "", order_handler, NULL), STRATA_EINVAL);
    assert_int_equal(strata_persister_handle(p, "x\xc0\x80", order_handler, NULL), STRATA_EINVAL);
    assert_int_equal(strata_persister_add_stream(p, "s:dlq"), STRATA_EINVAL);
    assert_int_equal(strata_persister_add_stream(p, "s"), STRATA_OK);
    assert_int_equal(strata_persister_drain(p, 10), STRATA_ECLOSED);
    strata_persister_destroy(&p);
    assert_int_equal(strata_wb_register_stream(strata_redis_sync_client(g_rs), "", NULL, NULL),
                     STRATA_EINVAL);
}

int main(void) {
    sh_init(110);
    if (sh_redis_start(&g_redis, NULL) != STRATA_OK)
        return 1;
    if (strata_redis_sync_create(&g_rs, sh_redis_url(g_redis), NULL, NULL) != STRATA_OK)
        return 1;
    strata_db_register_migrations("tiertest", k_steps, 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(applies_each_event_once_and_acks, setup, teardown),
        cmocka_unit_test_setup_teardown(poison_goes_to_dlq_and_replays, setup, teardown),
        cmocka_unit_test_setup_teardown(restarted_node_resumes_its_pending_entries, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(bad_config_and_inputs, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    strata_redis_sync_destroy(&g_rs);
    sh_redis_stop(&g_redis);
    return rc;
}
