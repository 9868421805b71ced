/*
 * test_drill_persister.c: write-behind is exactly-once in effect under faults
 * (issue 6, "Guarantees"), with a real redis-server and PostgreSQL 15.
 *
 *   sigkill_mid_batch_then_restart  the persister runs in a child process (this
 *       binary re-executed with --child); it is SIGKILLed while it applies
 *       batches, events keep arriving, a new child with the SAME node id
 *       resumes its pending entries: every event in the database once, the
 *       per-event counter (incremented by the handler) equals the event count.
 *   database_paused_then_killed  PostgreSQL is SIGSTOPped (queries time out,
 *       the breaker opens, events wait in Redis, lag grows), resumed, then
 *       SIGKILLed and restarted: after recovery everything drains, none lost,
 *       none doubled.
 */
/* ctest-labels: slow postgres redis */
/* ctest-timeout: 180 */
/* ctest-serial */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness/harness.h"
#include "strata/db.h"
#include "strata/proc.h"
#include "strata/tier.h"

#define NSTREAMS 8

static sh_redis *g_redis;
static sh_pg *g_pg;
static strata_db *g_db;
static strata_redis_sync *g_rs;
static char g_self[4096];

static const strata_db_migration k_steps[] = {
    {.sql = "CREATE TABLE d_orders (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL,"
            " user_id TEXT NOT NULL);"
            "CREATE TABLE d_count (k INTEGER PRIMARY KEY, n BIGINT NOT NULL);"
            "INSERT INTO d_count VALUES (1, 0)"},
};

/* INSERT the order and bump a counter: a doubled effect would show in the counter. */
static int order_handler(strata_db_conn *c, const strata_wb_event *e, void *ctx) {
    (void)ctx;
    const char *sku = strata_wb_event_get(e, "sku", NULL);
    const char *user = strata_wb_event_get(e, "user", NULL);
    strata_db_param p[3] = {strata_db_p_text(e->id), strata_db_p_text(sku ? sku : ""),
                            strata_db_p_text(user ? user : "")};
    int rc = strata_db_query(c, "INSERT INTO d_orders (order_id, sku, user_id) VALUES ($1, $2, $3)",
                             p, 3, NULL, NULL, NULL);
    if (rc == STRATA_OK)
        rc = strata_db_query(c, "UPDATE d_count SET n = n + 1 WHERE k = 1", NULL, 0, NULL, NULL,
                             NULL);
    return rc;
}

static strata_db *open_db(const char *url) {
    strata_db_config cfg;
    strata_db_config_default(&cfg);
    cfg.query_timeout_ms = 400;
    cfg.connect_timeout_s = 2;
    cfg.acquire_timeout_ms = 3000;
    strata_db *db = NULL;
    strata_buf err = STRATA_BUF_INIT;
    int rc = strata_db_open_config(&db, url, &cfg, &err);
    if (rc != STRATA_OK)
        fprintf(stderr, "db open: %s %s\n", strata_status_name(rc), err.data ? err.data : "");
    strata_buf_free(&err);
    return db;
}

static strata_persister *make(const char *redis_url, strata_db *db, const char *node) {
    strata_persister_config cfg;
    strata_persister_config_init(&cfg);
    cfg.redis_url = redis_url;
    cfg.db = db;
    cfg.node_id = node;
    cfg.batch = 50;
    cfg.discover_ms = 100;
    cfg.retry_min_ms = 20;
    cfg.retry_max_ms = 200;
    cfg.max_attempts = 1000; /* a database outage must never dead-letter good events */
    cfg.stats_every_ms = 50;
    cfg.breaker.min_calls = 3;
    cfg.breaker.open_ms = 300;
    cfg.breaker.window_ms = 2000;
    cfg.breaker.slow_rate_pct = 0;
    strata_persister *p = NULL;
    if (strata_persister_create(&cfg, &p, NULL) != STRATA_OK)
        return NULL;
    strata_persister_handle(p, "order", order_handler, NULL);
    return p;
}

/* The child: run a persister until killed. */
static int child_main(const char *redis_url, const char *db_url, const char *node) {
    strata_db_register_migrations("drillwb", k_steps, 1);
    strata_db *db = open_db(db_url);
    if (!db)
        return 2;
    strata_persister *p = make(redis_url, db, node);
    if (!p || strata_persister_start(p) != STRATA_OK)
        return 3;
    for (;;)
        pause();
}

static int64_t q_int_once(const char *sql) {
    strata_db_conn *c = NULL;
    if (strata_db_acquire(g_db, &c) != STRATA_OK)
        return -1;
    strata_db_result *r = NULL;
    int64_t v = -1;
    if (strata_db_query(c, sql, NULL, 0, &r, NULL, NULL) == STRATA_OK)
        v = strata_db_result_int64(r, 0, 0, -1);
    strata_db_result_free(&r);
    strata_db_release(&c);
    return v;
}

/* The test's own pool may hold connections that died with a killed server:
 * the first use fails (EUNAVAIL) and the pool reconnects; retry a few times. */
static int64_t q_int(const char *sql) {
    int64_t v = -1;
    for (int i = 0; i < 5 && v < 0; i++)
        v = q_int_once(sql);
    return v;
}

static void produce(int from, int to) {
    for (int i = from; i < to; i++) {
        char stream[64], id[32];
        snprintf(stream, sizeof stream, "fs:{sku%d}:events", i % NSTREAMS);
        snprintf(id, sizeof id, "sku%d-%d", i % NSTREAMS, i);
        strata_redis_reply *r = NULL;
        assert_int_equal(strata_redis_sync_command(g_rs, &r,
                                                   "XADD %s * type order id %s sku %s user u%d",
                                                   stream, id, stream, i),
                         STRATA_OK);
        strata_redis_reply_free(r);
    }
}

static void reset(void) {
    strata_redis_reply *r = NULL;
    strata_redis_sync_command(g_rs, &r, "FLUSHALL");
    strata_redis_reply_free(r);
    for (int i = 0; i < NSTREAMS; i++) {
        char stream[64];
        snprintf(stream, sizeof stream, "fs:{sku%d}:events", i);
        strata_redis_sync_op op = {0};
        assert_int_equal(strata_wb_register_stream(strata_redis_sync_client(g_rs), stream,
                                                   strata_redis_sync_cb, &op),
                         STRATA_OK);
        assert_int_equal(strata_redis_sync_wait(g_rs, &op), STRATA_OK);
        strata_redis_reply_free(op.reply);
    }
    q_int("DELETE FROM d_orders");
    q_int("UPDATE d_count SET n = 0");
    q_int("DELETE FROM strata_applied_events");
}

static pid_t spawn_child(const char *node) {
    char *argv[] = {g_self,       "--child", (char *)sh_redis_url(g_redis), (char *)sh_pg_url(g_pg),
                    (char *)node, NULL};
    strata_proc_opts o;
    memset(&o, 0, sizeof o);
    o.keep_stdio = true;
    pid_t pid = 0;
    assert_int_equal(strata_proc_spawn(argv, &o, &pid), STRATA_OK);
    return pid;
}

typedef struct want {
    int64_t n;
} want;
static bool orders_at_least(void *ctx) {
    return q_int("SELECT COUNT(*) FROM d_orders") >= ((want *)ctx)->n;
}

static void sigkill_mid_batch_then_restart(void **state) {
    (void)state;
    reset();
    const int total = 6000;
    produce(0, 4000);
    pid_t c1 = spawn_child("node-a");
    want w = {500};
    assert_true(sh_wait_until(60000, 2, orders_at_least, &w));
    assert_int_equal(strata_proc_signal(c1, SIGKILL), STRATA_OK);
    strata_proc_wait(c1, 5000, NULL);
    int64_t at_kill = q_int("SELECT COUNT(*) FROM d_orders");
    fprintf(stderr, "killed persister with %lld of 4000 applied\n", (long long)at_kill);
    assert_true(at_kill < 4000); /* killed mid-run */
    /* it held a batch: pending entries of node-a */
    produce(4000, total);
    pid_t c2 = spawn_child("node-a");
    w.n = total;
    assert_true(sh_wait_until(90000, 10, orders_at_least, &w));
    assert_int_equal(q_int("SELECT COUNT(*) FROM d_orders"), total);
    assert_int_equal(q_int("SELECT n FROM d_count WHERE k = 1"), total); /* none doubled */
    assert_int_equal(q_int("SELECT COUNT(*) FROM strata_applied_events"), total);
    strata_proc_stop(c2, 2000);
    /* nothing left pending (the restarted node acknowledged the killed batch) */
    long long pending = 0;
    for (int i = 0; i < NSTREAMS; i++) {
        strata_redis_reply *r = NULL;
        char stream[64];
        snprintf(stream, sizeof stream, "fs:{sku%d}:events", i);
        assert_int_equal(
            strata_redis_sync_command(g_rs, &r, "XPENDING %s " STRATA_WB_GROUP, stream), STRATA_OK);
        pending += r->element[0]->integer;
        strata_redis_reply_free(r);
    }
    assert_int_equal(pending, 0);
}

static bool breaker_seen(void *ctx) {
    strata_persister_stats st;
    strata_persister_get_stats(ctx, &st);
    return st.batch_failures >= 3;
}
static bool lag_seen(void *ctx) {
    strata_persister_stats st;
    strata_persister_get_stats(ctx, &st);
    if (getenv("DRILL_DEBUG"))
        fprintf(stderr, "lag=%lld pending=%lld failures=%llu applied=%llu\n", (long long)st.lag,
                (long long)st.pending, (unsigned long long)st.batch_failures,
                (unsigned long long)st.applied);
    return st.lag + st.pending > 0;
}

static void database_paused_then_killed(void **state) {
    (void)state;
    reset();
    strata_db *db = open_db(sh_pg_url(g_pg));
    assert_non_null(db);
    strata_persister *p = make(sh_redis_url(g_redis), db, "node-b");
    assert_non_null(p);
    assert_int_equal(strata_persister_start(p), STRATA_OK);
    produce(0, 500);
    assert_int_equal(strata_persister_drain(p, 30000), STRATA_OK);
    assert_int_equal(q_int("SELECT COUNT(*) FROM d_orders"), 500);

    /* 1. hung database: statements time out, the breaker opens, events wait */
    assert_int_equal(sh_pg_pause(g_pg), STRATA_OK);
    produce(500, 1500);
    assert_true(sh_wait_until(30000, 10, breaker_seen, p));
    assert_true(sh_wait_until(40000, 10, lag_seen, p));
    assert_int_equal(sh_pg_resume(g_pg), STRATA_OK);
    assert_int_equal(strata_persister_drain(p, 60000), STRATA_OK);
    assert_int_equal(q_int("SELECT COUNT(*) FROM d_orders"), 1500);

    /* 2. killed database: connections refused until the restart */
    assert_int_equal(sh_pg_kill(g_pg), STRATA_OK);
    strata_persister_stats before;
    strata_persister_get_stats(p, &before);
    produce(1500, 2500);
    uint64_t t0 = sh_now_ms();
    assert_int_equal(strata_persister_drain(p, 1000), STRATA_ETIMEDOUT); /* cannot drain */
    (void)t0;
    assert_int_equal(sh_pg_restart(g_pg), STRATA_OK);
    assert_int_equal(strata_persister_drain(p, 60000), STRATA_OK);
    assert_int_equal(q_int("SELECT COUNT(*) FROM d_orders"), 2500);
    assert_int_equal(q_int("SELECT n FROM d_count WHERE k = 1"), 2500);
    strata_persister_stats st;
    strata_persister_get_stats(p, &st);
    assert_true(st.batch_failures > before.batch_failures);
    assert_int_equal(st.dead_lettered, 0);
    fprintf(stderr, "db outage: batch_failures=%llu applied=%llu duplicates=%llu\n",
            (unsigned long long)st.batch_failures, (unsigned long long)st.applied,
            (unsigned long long)st.duplicates);
    strata_persister_destroy(&p);
    strata_db_close(&db);
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "--child") == 0)
        return child_main(argv[2], argv[3], argv[4]);
    sh_init(170);
    ssize_t n = readlink("/proc/self/exe", g_self, sizeof g_self - 1);
    if (n <= 0)
        return 1;
    g_self[n] = 0;
    if (sh_redis_start(&g_redis, NULL) != STRATA_OK || sh_pg_start(&g_pg) != STRATA_OK)
        return 1;
    strata_db_register_migrations("drillwb", k_steps, 1);
    g_db = open_db(sh_pg_url(g_pg));
    if (!g_db || strata_redis_sync_create(&g_rs, sh_redis_url(g_redis), NULL, NULL) != STRATA_OK)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sigkill_mid_batch_then_restart),
        cmocka_unit_test(database_paused_then_killed),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    strata_redis_sync_destroy(&g_rs);
    strata_db_close(&g_db);
    sh_pg_stop(&g_pg);
    sh_redis_stop(&g_redis);
    return rc;
}
