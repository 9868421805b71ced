/*
 * test_l1_model.c: the L1 cache against a simple reference model, with
 * random operations (set with and without TTL, get, acquire, invalidate,
 * prefix invalidation, clear, clock moves) for every policy.
 *
 * The model knows each key's last written value and deadlines, but not the
 * eviction policy's choices, so it checks what must hold whatever the policy
 * evicts: a read returns the latest value written (never an older one, never
 * another key's) or nothing; a read right after a set returns that value;
 * nothing is readable after its hard TTL or an invalidation; a value between
 * its soft and hard TTL reads as STALE; the size never exceeds capacity; the
 * listener saw exactly the entries that left.
 *
 * Each policy also runs without a listener, which turns on the fast replace
 * path (a same-cost set of a present key without TTL skips the writer lock:
 * docs/notes/l1.md D15): the same checks hold, the accounting comes from the
 * stats (every entry written is cached or counted once by cause), and the
 * run must have taken the fast path.
 */
/* ctest-labels: quick */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "strata/clock.h"
#include "strata/l1.h"
#include "strata/status.h"

#include "l1_test.h"

#define NKEYS 300
#define CAP   64
#define STEPS 60000

typedef struct {
    int present;         /* written and not invalidated (may be evicted) */
    unsigned version;    /* value written last */
    uint64_t soft, hard; /* 0 = no TTL */
} model_key;

static model_key model[NKEYS];
static uint64_t left; /* entries the listener was told about */

static void on_leave(void *ctx, const strata_l1_entry *e, strata_l1_cause cause) {
    (void)ctx;
    (void)e;
    (void)cause;
    left++;
}

static uint32_t rnd(uint32_t *x) {
    *x ^= *x << 13, *x ^= *x >> 17, *x ^= *x << 5;
    return *x;
}

static void check_read(strata_l1 *c, int k, uint64_t now) {
    char key[16], buf[32];
    snprintf(key, sizeof key, "key%d", k);
    size_t vl = 0;
    int rc = strata_l1_get_copy(c, key, strlen(key), buf, sizeof buf - 1, &vl);
    model_key *m = &model[k];
    int alive = m->present && (m->hard == 0 || now < m->hard);
    if (!alive) {
        assert_int_equal(rc, STRATA_ENOTFOUND);
        return;
    }
    if (rc == STRATA_ENOTFOUND)
        return; /* evicted: allowed */
    buf[vl] = 0;
    char want[32];
    snprintf(want, sizeof want, "%s#%u", key, m->version);
    assert_string_equal(buf, want);
    assert_int_equal(rc, (m->soft && now >= m->soft) ? STRATA_L1_STALE : STRATA_L1_HIT);
}

static void run_model_ex(strata_l1_policy pol, uint32_t seed, int with_listener) {
    memset(model, 0, sizeof model);
    left = 0;
    strata_clock *clk = strata_clock_create_manual(STRATA_NS_PER_SEC, 0);
    strata_l1_config cfg;
    strata_l1_config_init(&cfg);
    cfg.sketch_seed = TEST_SKETCH_SEED;
    cfg.capacity = CAP;
    cfg.policy = pol;
    cfg.clock = clk;
    if (with_listener)
        cfg.listener = on_leave;
    strata_l1 *c;
    assert_int_equal(strata_l1_create(&cfg, &c), STRATA_OK);
    uint32_t x = seed;
    uint64_t written = 0;
    char key[16], val[32];
    for (int step = 0; step < STEPS; step++) {
        uint64_t now = strata_clock_now_ns(clk);
        uint32_t r = rnd(&x);
        /* skewed key choice: low keys are hot */
        int k = (int)((rnd(&x) % NKEYS) * (rnd(&x) % NKEYS) / NKEYS);
        snprintf(key, sizeof key, "key%d", k);
        switch (r % 16) {
        case 0:
        case 1:
        case 2: { /* set */
            model_key *m = &model[k];
            m->version++;
            snprintf(val, sizeof val, "%s#%u", key, m->version);
            strata_l1_set_opts o = {0};
            if (r & 0x100) {
                o.ttl_ns = (1 + (r >> 9) % 20) * STRATA_NS_PER_SEC;
                o.stale_ns = (r & 0x200) ? 5 * STRATA_NS_PER_SEC : 0;
            }
            assert_int_equal(strata_l1_set(c, key, strlen(key), val, strlen(val), &o), STRATA_OK);
            written++;
            m->present = 1;
            m->soft = o.ttl_ns ? now + o.ttl_ns : 0;
            m->hard = o.ttl_ns ? m->soft + o.stale_ns : 0;
            check_read(c, k, now); /* read-your-write */
            break;
        }
        case 3: /* invalidate */
            strata_l1_invalidate(c, key, strlen(key));
            model[k].present = 0;
            break;
        case 4: /* acquire and compare */
            if (r % 7 == 0) {
                strata_l1_entry *e = NULL;
                int rc = strata_l1_acquire(c, key, strlen(key), &e);
                if (rc >= 0) {
                    size_t vl;
                    const char *v = strata_l1_entry_value(e, &vl);
                    snprintf(val, sizeof val, "%s#%u", key, model[k].version);
                    assert_int_equal(vl, strlen(val));
                    assert_memory_equal(v, val, vl);
                    strata_l1_release(&e);
                }
            }
            break;
        case 5: /* time passes */
            strata_clock_advance(clk, (int64_t)((r >> 8) % 3000) * (int64_t)STRATA_NS_PER_MS);
            if (r % 5 == 0)
                strata_l1_maintain(c);
            break;
        case 6:
            if (r % 211 == 0) { /* prefix: key1, key1x, key1xx */
                strata_l1_invalidate_prefix(c, "key1", 4);
                for (int i = 0; i < NKEYS; i++) {
                    char kk[16];
                    snprintf(kk, sizeof kk, "key%d", i);
                    if (strncmp(kk, "key1", 4) == 0)
                        model[i].present = 0;
                }
            } else if (r % 1999 == 0) {
                strata_l1_clear(c);
                for (int i = 0; i < NKEYS; i++)
                    model[i].present = 0;
            }
            break;
        default: check_read(c, k, now); break;
        }
        assert_true(strata_l1_size(c) <= CAP);
    }
    /* everything written either is still cached or was reported as gone */
    strata_l1_maintain(c);
    strata_l1_stats st;
    strata_l1_stats_get(c, &st);
    if (with_listener) {
        assert_int_equal(written, left + strata_l1_size(c));
        assert_int_equal(st.fast_replaces, 0); /* R5: a listener turns the fast path off */
    } else {
        uint64_t gone = 0;
        for (int i = 0; i < STRATA_L1_CAUSE__COUNT; i++)
            gone += st.evictions[i];
        assert_int_equal(written, gone + st.entries);
        assert_true(st.fast_replaces > 0);
        assert_true(st.evictions[STRATA_L1_CAUSE_REPLACED] >= st.fast_replaces);
    }
    strata_l1_destroy(&c);
    strata_clock_destroy(&clk);
}

static void run_model(strata_l1_policy pol, uint32_t seed) {
    run_model_ex(pol, seed, 1);
    run_model_ex(pol, seed ^ 0x5bd1e995u, 0);
}

static void test_model_wtinylfu(void **state) {
    (void)state;
    run_model(STRATA_L1_WTINYLFU, 2463534242u);
    run_model(STRATA_L1_WTINYLFU, 88172645u);
}
static void test_model_lru(void **state) {
    (void)state;
    run_model(STRATA_L1_LRU, 123456789u);
}
static void test_model_fixed(void **state) {
    (void)state;
    run_model(STRATA_L1_WTINYLFU_FIXED, 987654321u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_wtinylfu),
        cmocka_unit_test(test_model_lru),
        cmocka_unit_test(test_model_fixed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
