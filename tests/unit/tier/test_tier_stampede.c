/*
 * test_tier_stampede.c: cross-instance stampede protection (issue 6,
 * "Guarantees"): 1,000 concurrent gets of one cold key, split over two tier
 * instances on two threads with their own loops and Redis clients sharing one
 * redis-server and one database, cause exactly ONE database load.  The load
 * hook holds the loader until all 1,000 gets are in flight and the other
 * instance is waiting on the lease, so the result does not depend on timing.
 *
 *   with_l1     each instance has its own L1 (in-process singleflight + lease)
 *   without_l1  no L1: all 1,000 gets reach Redis; 999 wait on the lease
 */
/* ctest-labels: redis tsan */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "tier_test_util.h"

#define PER_NODE 500

static sh_redis *g_redis;
static strata_db *g_db;
static bool g_with_l1;
static strata_tier *_Atomic g_tiers[2];
static atomic_int g_loads, g_hook_timeouts;
static pthread_barrier_t g_bar;

typedef struct node_res {
    int ok, other, wrong_value;
} node_res;
static node_res g_res[2];

static bool all_waiting(void) {
    strata_tier *a = atomic_load(&g_tiers[0]), *b = atomic_load(&g_tiers[1]);
    if (!a || !b)
        return false;
    strata_tier_stats sa, sb;
    strata_tier_get_stats(a, &sa);
    strata_tier_get_stats(b, &sb);
    if (sa.inflight + sb.inflight != 2 * PER_NODE)
        return false;
    /* without L1 every other get waits on the lease; with L1 the other
     * instance's one loader does (its other gets joined its L1 load) */
    return g_with_l1 ? sa.waiting + sb.waiting >= 1 : sa.waiting + sb.waiting == 2 * PER_NODE - 1;
}

static void hook(void *ctx, const void *key, size_t klen) {
    (void)ctx;
    (void)key;
    (void)klen;
    atomic_fetch_add(&g_loads, 1);
    uint64_t end = sh_now_ms() + 20000;
    while (!all_waiting()) {
        if (sh_now_ms() > end) {
            atomic_fetch_add(&g_hook_timeouts, 1);
            strata_tier_stats sa, sb;
            strata_tier_get_stats(atomic_load(&g_tiers[0]), &sa);
            strata_tier_get_stats(atomic_load(&g_tiers[1]), &sb);
            fprintf(stderr, "hook gave up: inflight %llu+%llu waiting %llu+%llu grants %llu+%llu\n",
                    (unsigned long long)sa.inflight, (unsigned long long)sb.inflight,
                    (unsigned long long)sa.waiting, (unsigned long long)sb.waiting,
                    (unsigned long long)sa.lease_grants, (unsigned long long)sb.lease_grants);
            return;
        }
        usleep(1000);
    }
}

static void get_cb(void *ud, int status, strata_tier_outcome oc, const void *v, size_t len,
                   int64_t ver) {
    (void)oc;
    (void)ver;
    node_res *r = ud;
    if (status != STRATA_OK)
        r->other++;
    else if (len != 4 || memcmp(v, "cold", 4) != 0)
        r->wrong_value++;
    else
        r->ok++;
}

static void *node_main(void *arg) {
    int idx = (int)(intptr_t)arg;
    strata_tier_config c;
    strata_tier_config_init(&c);
    c.ns = "st";
    c.db = g_db;
    c.bloom = false;
    c.deadline_ms = 60000; /* waiters outlive the held loader */
    c.load_hook = hook;
    tt_node n;
    if (tt_node_init(&n, sh_redis_url(g_redis), &c, g_with_l1) != STRATA_OK)
        abort();
    atomic_store(&g_tiers[idx], n.tier);
    pthread_barrier_wait(&g_bar);
    node_res *r = &g_res[idx];
    memset(r, 0, sizeof *r);
    for (int i = 0; i < PER_NODE; i++)
        if (strata_tier_get(n.tier, "cold-key", 8, get_cb, r) != STRATA_OK)
            r->other++;
    while (r->ok + r->other + r->wrong_value < PER_NODE)
        uv_run(&n.loop, UV_RUN_ONCE);
    /* the holder's fill is still in flight: keep the loop running until it lands */
    while (strata_tier_quiesce(n.tier) > 0)
        uv_run(&n.loop, UV_RUN_ONCE);
    if (getenv("STAMPEDE_DEBUG")) {
        strata_tier_stats st;
        strata_tier_get_stats(n.tier, &st);
        fprintf(stderr,
                "node %d: loads=%llu fills=%llu refused=%llu hits=%llu waits=%llu ok=%d other=%d\n",
                idx, (unsigned long long)st.db_loads, (unsigned long long)st.fills,
                (unsigned long long)st.fills_refused, (unsigned long long)st.redis_hits,
                (unsigned long long)st.lease_waits, r->ok, r->other);
    }
    pthread_barrier_wait(&g_bar); /* both done before either tier goes away */
    atomic_store(&g_tiers[idx], NULL);
    tt_node_fini(&n);
    return NULL;
}

static void run(bool with_l1) {
    g_with_l1 = with_l1;
    atomic_store(&g_loads, 0);
    atomic_store(&g_hook_timeouts, 0);
    char *r = sh_redis_cmd(sh_redis_port(g_redis), "FLUSHALL");
    free(r);
    pthread_barrier_init(&g_bar, NULL, 2);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, node_main, (void *)(intptr_t)i);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&g_bar);
    assert_int_equal(atomic_load(&g_hook_timeouts), 0);
    assert_int_equal(atomic_load(&g_loads), 1);
    assert_int_equal(g_res[0].ok + g_res[1].ok, 2 * PER_NODE);
    assert_int_equal(g_res[0].other + g_res[1].other, 0);
    assert_int_equal(g_res[0].wrong_value + g_res[1].wrong_value, 0);
}

static void with_l1(void **state) {
    (void)state;
    run(true);
}

static void without_l1(void **state) {
    (void)state;
    run(false);
}

int main(void) {
    sh_init(110);
    if (sh_redis_start(&g_redis, NULL) != STRATA_OK)
        return 1;
    g_db = tt_sqlite("stampede");
    if (!g_db)
        return 1;
    strata_db_conn *c = NULL;
    strata_db_acquire(g_db, &c);
    strata_db_conn_kv_put(c, "st", "cold-key", 8, "cold", 4, STRATA_DB_ANY_VERSION, NULL);
    strata_db_release(&c);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(with_l1),
        cmocka_unit_test(without_l1),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    strata_db_close(&g_db);
    sh_redis_stop(&g_redis);
    return rc;
}
