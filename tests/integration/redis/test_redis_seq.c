/*
 * test_redis_seq.c: invalidation-loss detection with sequence streams
 * (tracked_write.lua + seq_read.lua + the reader in redis_tracking.c),
 * against a real Redis.
 *
 *   - a tracked write appends (seq, key) and returns the command's reply; the
 *     reader applies the entry (on_invalidate) in sequence order;
 *   - the reader falls behind by more than the stream's cap (its loop does not
 *     run while the writer writes, on another loop): the entry after its last
 *     one was trimmed away -> on_resync("t:") once, for that prefix only, and
 *     never on_flush; later writes apply normally again;
 *   - the stream is deleted (reset: top < last) -> on_resync("t:");
 *   - the tracking connection is killed: only the prefix no stream covers
 *     ("u:") is resynced (drop and re-arm), never a full flush;
 *   - argument checks of the new calls.
 */
/* ctest-labels: redis */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness/harness.h"
#include "strata/redis.h"

#define STREAM "strata:seq:t"

typedef struct obs {
    int inval_t, flushes, resync_t, resync_u, resync_other;
} obs;

static void on_inval(void *ud, const char *key, size_t len) {
    obs *o = ud;
    if (len >= 2 && memcmp(key, "t:", 2) == 0)
        o->inval_t++;
}
static void on_flush(void *ud) { ((obs *)ud)->flushes++; }
static void on_resync(void *ud, const char *p, size_t len) {
    obs *o = ud;
    if (len == 2 && memcmp(p, "t:", 2) == 0)
        o->resync_t++;
    else if (len == 2 && memcmp(p, "u:", 2) == 0)
        o->resync_u++;
    else
        o->resync_other++;
}

typedef struct spin {
    uv_loop_t *loop;
    strata_redis *r;
    const int *v;
    size_t off; /* a strata_redis_stats field */
    uint64_t want;
} spin;

/* Runs the loop until pred holds or timeout_ms passes (no fixed sleeps). */
static bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *ctx, int timeout_ms) {
    uint64_t end = sh_now_ms() + (uint64_t)timeout_ms;
    while (!pred(ctx)) {
        if (sh_now_ms() >= end)
            return false;
        uv_run(loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
    return true;
}

static bool armed(void *ctx) { return strata_redis_tracking_armed(ctx); }
static bool int_reached(void *ctx) {
    spin *s = ctx;
    return (uint64_t)*s->v >= s->want;
}
static bool stat_reached(void *ctx) {
    spin *s = ctx;
    strata_redis_stats st;
    strata_redis_get_stats(s->r, &st);
    uint64_t v;
    memcpy(&v, (char *)&st + s->off, sizeof(v));
    return v >= s->want;
}

#define STAT_OFF(f) offsetof(strata_redis_stats, f)

static uint64_t stat_of(strata_redis *r, size_t off) {
    strata_redis_stats st;
    strata_redis_get_stats(r, &st);
    uint64_t v;
    memcpy(&v, (char *)&st + off, sizeof(v));
    return v;
}

/* One tracked write through the blocking client (its own loop). */
static void tracked_set(strata_redis_sync *w, const char *key, const char *val, uint32_t cap) {
    const char *argv[] = {"SET", key, val};
    strata_redis_sync_op op = {0};
    assert_int_equal(strata_redis_tracked_write(strata_redis_sync_client(w), NULL, STREAM, cap, 3,
                                                argv, NULL, strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(w, &op), STRATA_OK);
    assert_true(strata_redis_reply_is(op.reply, "OK")); /* the command's own reply */
    strata_redis_reply_free(op.reply);
}

static void test_seq_streams(void **state) {
    (void)state;
    sh_redis *srv;
    assert_int_equal(sh_redis_start(&srv, NULL), STRATA_OK);
    uv_loop_t loop;
    uv_loop_init(&loop);
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.connect_timeout_ms = 500;
    strata_redis *reader = NULL;
    strata_redis_sync *w = NULL;
    assert_int_equal(strata_redis_create(&reader, &loop, sh_redis_url(srv), &o, NULL), STRATA_OK);
    assert_int_equal(strata_redis_sync_create(&w, sh_redis_url(srv), &o, NULL), STRATA_OK);

    /* argument checks */
    assert_int_equal(strata_redis_tracking_watch_seq(reader, "t:", STREAM, 20), STRATA_EINVAL);
    const char *bad[] = {"SET", "t:x", "1"};
    assert_int_equal(strata_redis_tracked_write(reader, NULL, STREAM, 0, 3, bad, NULL, NULL, NULL),
                     STRATA_EINVAL);
    assert_int_equal(strata_redis_tracked_write(reader, NULL, STREAM, 5, 1, bad, NULL, NULL, NULL),
                     STRATA_EINVAL);

    obs ob = {0};
    const char *prefixes[] = {"t:", "u:"};
    strata_redis_tracking_cbs cbs = {on_inval, on_flush, &ob, on_resync};
    assert_int_equal(strata_redis_tracking_start(reader, 2, prefixes, &cbs), STRATA_OK);
    assert_int_equal(strata_redis_tracking_watch_seq(reader, "t:", STREAM, 20), STRATA_OK);
    assert_int_equal(strata_redis_tracking_watch_seq(reader, "t:", STREAM, 20), STRATA_EEXIST);
    assert_true(run_until(&loop, armed, reader, 5000));
    /* the first poll (baseline) has completed: the reader's only commands are polls */
    spin sc = {.r = reader, .off = STAT_OFF(commands), .want = 1};
    assert_true(run_until(&loop, stat_reached, &sc, 5000));
    assert_int_equal(ob.flushes, 1); /* the first arm flushes (empty L1) */

    /* applied in order */
    tracked_set(w, "t:a", "1", 5);
    tracked_set(w, "t:b", "2", 5);
    spin sa = {.r = reader, .off = STAT_OFF(seq_applied), .want = 2};
    assert_true(run_until(&loop, stat_reached, &sa, 5000));
    assert_int_equal(stat_of(reader, offsetof(strata_redis_stats, seq_gaps)), 0);
    assert_int_equal(ob.resync_t, 0);
    char *len = sh_redis_cmd(sh_redis_port(srv), "XLEN %s", STREAM);
    assert_non_null(len);
    assert_string_equal(len, "2");
    free(len);

    /* trimmed past the reader: 12 writes with cap 5 while its loop is idle */
    for (int i = 0; i < 12; i++) {
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        tracked_set(w, "t:c", v, 5);
    }
    len = sh_redis_cmd(sh_redis_port(srv), "XLEN %s", STREAM);
    assert_string_equal(len, "5");
    free(len);
    spin sg = {.v = &ob.resync_t, .want = 1};
    assert_true(run_until(&loop, int_reached, &sg, 5000));
    assert_int_equal(ob.resync_t, 1);
    assert_int_equal(ob.resync_u, 0);
    assert_int_equal(ob.flushes, 1); /* only that prefix, never everything */
    assert_int_equal(stat_of(reader, offsetof(strata_redis_stats, seq_gaps)), 1);
    assert_int_equal(stat_of(reader, offsetof(strata_redis_stats, seq_applied)), 2);

    /* caught up: the next write is applied, no new gap */
    tracked_set(w, "t:d", "x", 5);
    spin sa2 = {.r = reader, .off = STAT_OFF(seq_applied), .want = 3};
    assert_true(run_until(&loop, stat_reached, &sa2, 5000));
    assert_int_equal(ob.resync_t, 1);

    /* reset (the stream was deleted): top < last -> resync t: */
    free(sh_redis_cmd(sh_redis_port(srv), "DEL %s", STREAM));
    spin sr = {.v = &ob.resync_t, .want = 2};
    assert_true(run_until(&loop, int_reached, &sr, 5000));
    assert_int_equal(ob.flushes, 1);
    /* and it restarts from seq 1 without another gap */
    tracked_set(w, "t:e", "y", 5);
    spin sa3 = {.r = reader, .off = STAT_OFF(seq_applied), .want = 4};
    assert_true(run_until(&loop, stat_reached, &sa3, 5000));
    assert_int_equal(ob.resync_t, 2);

    /* tracking connection dropped: only the uncovered prefix is resynced */
    free(sh_redis_cmd(sh_redis_port(srv), "CLIENT KILL TYPE pubsub"));
    spin su = {.v = &ob.resync_u, .want = 2}; /* drop + re-arm */
    assert_true(run_until(&loop, int_reached, &su, 5000));
    assert_true(run_until(&loop, armed, reader, 5000));
    assert_int_equal(ob.flushes, 1);
    assert_int_equal(ob.resync_t, 2);
    assert_int_equal(ob.resync_other, 0);
    strata_redis_stats st;
    strata_redis_get_stats(reader, &st);
    assert_int_equal(st.resyncs, (uint64_t)(ob.resync_t + ob.resync_u));

    /* the script error path: a wrong-type key fails the call */
    free(sh_redis_cmd(sh_redis_port(srv), "LPUSH t:list a"));
    const char *argv[] = {"INCR", "t:list"};
    strata_redis_sync_op op = {0};
    assert_int_equal(strata_redis_tracked_write(strata_redis_sync_client(w), NULL, STREAM, 5, 2,
                                                argv, NULL, strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_true(strata_redis_sync_wait(w, &op) < 0);
    strata_redis_reply_free(op.reply);

    strata_redis_destroy(&reader);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    strata_redis_sync_destroy(&w);
    sh_redis_stop(&srv);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seq_streams),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
