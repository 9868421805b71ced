/*
 * test_redis_standalone.c: the Redis client against a real redis-server:
 * every command path (async, blocking, argv/format, errors, AUTH), pipelining
 * order, per-command deadlines against a SIGSTOPped server ("outcome
 * unknown" for sent commands), never-sent commands (EUNAVAIL), reconnect
 * after a kill + restart, dedicated connections for blocking commands, WAIT,
 * EVALSHA with NOSCRIPT, and the stream helpers (backpressure, groups, ack,
 * autoclaim, safe trim).
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
#include "strata/alloc.h"
#include "strata/redis.h"

static sh_redis *srv;

/* ---- a tiny async runner ---------------------------------------------------- */

typedef struct res {
    int done;
    int status;
    strata_redis_reply *reply;
    int order; /* completion order stamp */
} res;

static int stamp;

static void on_res(void *ud, int status, const strata_redis_reply *reply) {
    res *r = ud;
    r->done++;
    r->status = status;
    r->reply = strata_redis_reply_dup(reply);
    r->order = ++stamp;
}

static void res_clear(res *r) {
    strata_redis_reply_free(r->reply);
    memset(r, 0, sizeof(*r));
}

static void run_until(uv_loop_t *loop, int *flag, int want, int timeout_ms) {
    uint64_t end = sh_now_ms() + (uint64_t)timeout_ms;
    while (*flag < want && sh_now_ms() < end)
        uv_run(loop, UV_RUN_NOWAIT), uv_sleep(1);
}

static strata_redis *client(uv_loop_t *loop, const char *url, uint32_t timeout_ms) {
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.command_timeout_ms = timeout_ms;
    o.connect_timeout_ms = timeout_ms;
    strata_redis *r = NULL;
    strata_buf err = STRATA_BUF_INIT;
    int rc = strata_redis_create(&r, loop, url, &o, &err);
    if (rc != STRATA_OK)
        fail_msg("create: %s", err.data ? err.data : strata_strerror(rc));
    return r;
}

static void client_done(uv_loop_t *loop, strata_redis **r) {
    strata_redis_destroy(r);
    uv_run(loop, UV_RUN_DEFAULT);
}

static int setup(void **state) {
    (void)state;
    return sh_redis_start(&srv, NULL) == STRATA_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    sh_redis_stop(&srv);
    return 0;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_sync_basics(void **state) {
    (void)state;
    strata_redis_sync *s;
    assert_int_equal(strata_redis_sync_create(&s, sh_redis_url(srv), NULL, NULL), STRATA_OK);
    strata_redis_reply *rep = NULL;
    assert_int_equal(strata_redis_sync_command(s, &rep, "SET %s %b", "k1", "v\0x", (size_t)3),
                     STRATA_OK);
    assert_true(strata_redis_reply_is(rep, "OK"));
    strata_redis_reply_free(rep);
    assert_int_equal(strata_redis_sync_command(s, &rep, "GET k1"), STRATA_OK);
    assert_int_equal(rep->type, STRATA_REPLY_STRING);
    assert_int_equal(rep->len, 3);
    assert_memory_equal(rep->str, "v\0x", 3);
    strata_redis_reply_free(rep);
    assert_int_equal(strata_redis_sync_command(s, &rep, "GET nope"), STRATA_OK);
    assert_int_equal(rep->type, STRATA_REPLY_NIL);
    strata_redis_reply_free(rep);
    /* an error reply: mapped status + the text */
    assert_int_equal(strata_redis_sync_command(s, &rep, "LPUSH k1 x"), STRATA_EPROTO);
    assert_non_null(rep);
    assert_int_equal(rep->type, STRATA_REPLY_ERROR);
    assert_non_null(strstr(rep->str, "WRONGTYPE"));
    strata_redis_reply_free(rep);
    const char *argv[] = {"HSET", "h", "f", "v"};
    assert_int_equal(strata_redis_sync_command_argv(s, NULL, &rep, 4, argv, NULL), STRATA_OK);
    assert_int_equal(rep->type, STRATA_REPLY_INTEGER);
    assert_int_equal(rep->integer, 1);
    strata_redis_reply_free(rep);
    /* refusals without a callback */
    assert_int_equal(
        strata_redis_command_argv(strata_redis_sync_client(s), NULL, NULL, NULL, 0, argv, NULL),
        STRATA_EINVAL);
    assert_int_equal(strata_redis_sync_command(s, NULL, "PING"), STRATA_OK);
    strata_redis_sync_destroy(&s);
    assert_null(s);
    strata_redis_sync_destroy(&s); /* NULL is a no-op */
}

static void test_db_select_and_auth(void **state) {
    (void)state;
    char url[128];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u/5", sh_redis_port(srv));
    strata_redis_sync *s;
    assert_int_equal(strata_redis_sync_create(&s, url, NULL, NULL), STRATA_OK);
    assert_int_equal(strata_redis_sync_command(s, NULL, "SET indb5 1"), STRATA_OK);
    strata_redis_sync_destroy(&s);
    char *v = sh_redis_cmd(sh_redis_port(srv), "EXISTS indb5");
    assert_string_equal(v, "0"); /* not in db 0 */
    free(v);

    /* ACL user + password */
    free(sh_redis_cmd(sh_redis_port(srv), "ACL SETUSER app on >s3cret ~* &* +@all"));
    snprintf(url, sizeof(url), "redis://app:s3cret@127.0.0.1:%u", sh_redis_port(srv));
    assert_int_equal(strata_redis_sync_create(&s, url, NULL, NULL), STRATA_OK);
    strata_redis_reply *rep = NULL;
    assert_int_equal(strata_redis_sync_command(s, &rep, "ACL WHOAMI"), STRATA_OK);
    assert_true(strata_redis_reply_is(rep, "app"));
    strata_redis_reply_free(rep);
    strata_redis_sync_destroy(&s);

    snprintf(url, sizeof(url), "redis://app:wrong@127.0.0.1:%u", sh_redis_port(srv));
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.command_timeout_ms = 2000;
    assert_int_equal(strata_redis_sync_create(&s, url, &o, NULL), STRATA_OK);
    uint64_t t0 = sh_now_ms();
    assert_int_equal(strata_redis_sync_command(s, NULL, "PING"), STRATA_EAUTH);
    assert_true(sh_now_ms() - t0 < 1500); /* reported at once, not at the deadline */
    strata_redis_sync_destroy(&s);
    free(sh_redis_cmd(sh_redis_port(srv), "ACL DELUSER app"));
}

static void test_pipeline_order(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    strata_redis *r = client(&loop, sh_redis_url(srv), 2000);
    enum { N = 2000 };
    static res rs[N];
    memset(rs, 0, sizeof(rs));
    stamp = 0;
    free(sh_redis_cmd(sh_redis_port(srv), "DEL ctr"));
    for (int i = 0; i < N; i++)
        assert_int_equal(strata_redis_command(r, NULL, on_res, &rs[i], "INCR ctr"), STRATA_OK);
    /* the callback never runs inside the call */
    assert_int_equal(rs[0].done, 0);
    for (int i = 0; i < N; i++)
        run_until(&loop, &rs[i].done, 1, 5000);
    for (int i = 0; i < N; i++) {
        assert_int_equal(rs[i].status, STRATA_OK);
        assert_int_equal(rs[i].reply->integer, i + 1);
        assert_int_equal(rs[i].order, i + 1);
        res_clear(&rs[i]);
    }
    strata_redis_stats st;
    strata_redis_get_stats(r, &st);
    assert_int_equal(st.commands, N);
    assert_int_equal(st.unknown, 0);
    client_done(&loop, &r);
    uv_loop_close(&loop);
}

static void test_timeout_sigstop_is_unknown(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    strata_redis *r = client(&loop, sh_redis_url(srv), 300);
    res a = {0}, b = {0};
    assert_int_equal(strata_redis_command(r, NULL, on_res, &a, "SET before stop"), STRATA_OK);
    run_until(&loop, &a.done, 1, 3000);
    assert_int_equal(a.status, STRATA_OK);
    res_clear(&a);

    assert_int_equal(sh_redis_pause(srv), STRATA_OK);
    uint64_t t0 = sh_now_ms();
    assert_int_equal(strata_redis_command(r, NULL, on_res, &a, "INCR during_stop"), STRATA_OK);
    strata_redis_call c = {.timeout_ms = 600};
    assert_int_equal(strata_redis_command(r, &c, on_res, &b, "INCR during_stop"), STRATA_OK);
    run_until(&loop, &a.done, 1, 5000);
    run_until(&loop, &b.done, 1, 5000);
    uint64_t el = sh_now_ms() - t0;
    assert_int_equal(a.status, STRATA_EUNKNOWN); /* written, then no answer */
    assert_int_equal(b.status, STRATA_EUNKNOWN); /* same connection, closed with it */
    assert_true(el >= 290);
    assert_true(el < 3000);
    strata_redis_stats st;
    strata_redis_get_stats(r, &st);
    assert_true(st.timeouts >= 1);
    assert_int_equal(st.unknown, 2);
    res_clear(&a);
    res_clear(&b);
    assert_int_equal(sh_redis_resume(srv), STRATA_OK);

    /* the server processes both INCRs once it resumes: "unknown" was right */
    res g = {0};
    for (int tries = 0; tries < 100; tries++) {
        res_clear(&g);
        assert_int_equal(strata_redis_command(r, NULL, on_res, &g, "GET during_stop"), STRATA_OK);
        run_until(&loop, &g.done, 1, 3000);
        if (g.status == STRATA_OK && g.reply->type == STRATA_REPLY_STRING)
            break;
    }
    assert_int_equal(g.status, STRATA_OK);
    assert_string_equal(g.reply->str, "2");
    res_clear(&g);
    client_done(&loop, &r);
    uv_loop_close(&loop);
}

static bool get_ok(void *ctx) {
    strata_redis_sync *s = ctx;
    strata_redis_reply *rep = NULL;
    int rc = strata_redis_sync_command(s, &rep, "GET survives");
    bool ok = rc == STRATA_OK && rep && rep->type == STRATA_REPLY_STRING;
    strata_redis_reply_free(rep);
    return ok;
}

static void test_kill_restart_reconnect(void **state) {
    (void)state;
    sh_redis *p;
    assert_int_equal(sh_redis_start(&p, "appendonly yes\nappendfsync always\n"), STRATA_OK);
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.command_timeout_ms = 300;
    o.connect_timeout_ms = 300;
    strata_redis_sync *s;
    assert_int_equal(strata_redis_sync_create(&s, sh_redis_url(p), &o, NULL), STRATA_OK);
    assert_int_equal(strata_redis_sync_command(s, NULL, "SET survives yes"), STRATA_OK);

    /* a blocking command in flight when the server dies: sent -> unknown */
    strata_redis_sync_op op = {0};
    strata_redis_call blk = {.timeout_ms = 5000, .flags = STRATA_REDIS_DEDICATED};
    assert_int_equal(strata_redis_command(strata_redis_sync_client(s), &blk, strata_redis_sync_cb,
                                          &op, "BLPOP never 4"),
                     STRATA_OK);
    strata_redis_sync_run_for(s, 50);
    assert_false(op.done);
    assert_int_equal(sh_redis_kill(p), STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_EUNKNOWN);

    /* down: never sent */
    int rc = strata_redis_sync_command(s, NULL, "PING");
    assert_int_equal(rc, STRATA_EUNAVAIL);
    rc = strata_redis_sync_command(s, NULL, "PING");
    assert_int_equal(rc, STRATA_EUNAVAIL);

    assert_int_equal(sh_redis_restart(p), STRATA_OK);
    assert_true(sh_wait_until(5000, 10, get_ok, s));
    strata_redis_stats st;
    strata_redis_get_stats(strata_redis_sync_client(s), &st);
    assert_true(st.reconnects >= 1);
    assert_true(st.unavail >= 2);
    strata_redis_sync_destroy(&s);
    sh_redis_stop(&p);
}

static void test_dedicated_does_not_block_pipeline(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    strata_redis *r = client(&loop, sh_redis_url(srv), 1000);
    res blk = {0}, get = {0};
    strata_redis_call c = {.timeout_ms = 3000, .flags = STRATA_REDIS_DEDICATED};
    stamp = 0;
    assert_int_equal(strata_redis_command(r, &c, on_res, &blk, "BLPOP blist 1"), STRATA_OK);
    assert_int_equal(strata_redis_command(r, NULL, on_res, &get, "PING"), STRATA_OK);
    run_until(&loop, &get.done, 1, 3000);
    assert_int_equal(get.status, STRATA_OK);
    assert_int_equal(blk.done, 0);
    free(sh_redis_cmd(sh_redis_port(srv), "RPUSH blist item"));
    run_until(&loop, &blk.done, 1, 3000);
    assert_int_equal(blk.status, STRATA_OK);
    assert_int_equal(blk.reply->elements, 2);
    assert_string_equal(blk.reply->element[1]->str, "item");
    res_clear(&blk);
    res_clear(&get);
    client_done(&loop, &r);
    uv_loop_close(&loop);
}

static void test_wait_without_replicas_is_unknown(void **state) {
    (void)state;
    strata_redis_sync *s;
    assert_int_equal(strata_redis_sync_create(&s, sh_redis_url(srv), NULL, NULL), STRATA_OK);
    strata_redis_call c = {.wait_replicas = 1, .wait_timeout_ms = 50};
    const char *argv[] = {"SET", "waited", "1"};
    strata_redis_reply *rep = NULL;
    assert_int_equal(strata_redis_sync_command_argv(s, &c, &rep, 3, argv, NULL), STRATA_EUNKNOWN);
    assert_true(strata_redis_reply_is(rep, "OK")); /* the command's own reply */
    strata_redis_reply_free(rep);
    /* and an error reply is reported as such, not as unknown */
    const char *bad[] = {"LPUSH", "waited", "x"};
    assert_int_equal(strata_redis_sync_command_argv(s, &c, &rep, 3, bad, NULL), STRATA_EPROTO);
    strata_redis_reply_free(rep);
    strata_redis_sync_destroy(&s);
}

static void test_evalsha_noscript(void **state) {
    (void)state;
    strata_redis_sync *s;
    assert_int_equal(strata_redis_sync_create(&s, sh_redis_url(srv), NULL, NULL), STRATA_OK);
    strata_redis *r = strata_redis_sync_client(s);
    static const char src[] = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    strata_redis_script sc;
    assert_int_equal(strata_redis_script_init(&sc, "incrby", src, sizeof(src) - 1), STRATA_OK);
    free(sh_redis_cmd(sh_redis_port(srv), "SCRIPT FLUSH"));
    const char *keys[] = {"scripted"};
    const char *args[] = {"5"};
    for (int round = 1; round <= 3; round++) {
        strata_redis_sync_op op = {0};
        assert_int_equal(strata_redis_evalsha(r, NULL, &sc, strata_redis_sync_cb, &op, 1, keys,
                                              NULL, 1, args, NULL),
                         STRATA_OK);
        assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
        assert_int_equal(op.reply->integer, 5 * round);
        strata_redis_reply_free(op.reply);
        if (round == 2)
            free(sh_redis_cmd(sh_redis_port(srv), "SCRIPT FLUSH"));
    }
    strata_redis_stats st;
    strata_redis_get_stats(r, &st);
    assert_int_equal(st.retries, 2); /* one NOSCRIPT reload after each flush */
    /* the SHA is the one Redis computes */
    char *sha = sh_redis_cmd(sh_redis_port(srv), "SCRIPT LOAD %s", src);
    assert_string_equal(sha, sc.sha1);
    free(sha);
    /* a script error is an error reply, not a retry */
    static const char bad[] = "return redis.error_reply('SOLD_OUT')";
    strata_redis_script sb;
    strata_redis_script_init(&sb, "bad", bad, sizeof(bad) - 1);
    strata_redis_sync_op op = {0};
    assert_int_equal(
        strata_redis_evalsha(r, NULL, &sb, strata_redis_sync_cb, &op, 0, NULL, NULL, 0, NULL, NULL),
        STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_EPROTO);
    assert_non_null(strstr(op.reply->str, "SOLD_OUT")); /* Redis 7 may prefix "ERR " */
    strata_redis_reply_free(op.reply);
    strata_redis_sync_destroy(&s);
}

typedef struct seen {
    int n;
    char ids[16][32];
    char vals[16][32];
} seen;

static int collect(void *ud, const strata_redis_xentry *e) {
    seen *s = ud;
    if (s->n >= 16)
        return 1;
    snprintf(s->ids[s->n], 32, "%.*s", (int)e->idlen, e->id);
    if (e->nfv >= 2)
        snprintf(s->vals[s->n], 32, "%s", e->fv[1]->str);
    s->n++;
    return 0;
}

static int sync_do(strata_redis_sync *s, strata_redis_sync_op *op, int rc) {
    memset(op, 0, sizeof(*op));
    (void)rc;
    return 0;
}

static void test_streams(void **state) {
    (void)state;
    strata_redis_sync *s;
    assert_int_equal(strata_redis_sync_create(&s, sh_redis_url(srv), NULL, NULL), STRATA_OK);
    strata_redis *r = strata_redis_sync_client(s);
    strata_redis_sync_op op;
    free(sh_redis_cmd(sh_redis_port(srv), "DEL wb"));

    /* no group yet: safe trim trims nothing */
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xgroup_create(r, "wb", "persist", "0", strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    strata_redis_reply_free(op.reply);
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xgroup_create(r, "wb", "persist", "0", strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK); /* BUSYGROUP = ok */
    strata_redis_reply_free(op.reply);

    char vbuf[16];
    for (int i = 0; i < 3; i++) {
        snprintf(vbuf, sizeof(vbuf), "e%d", i);
        const char *fv[] = {"order", vbuf};
        sync_do(s, &op, 0);
        assert_int_equal(
            strata_redis_xadd(r, NULL, "wb", 3, 2, fv, NULL, strata_redis_sync_cb, &op), STRATA_OK);
        assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
        assert_int_equal(op.reply->type, STRATA_REPLY_STRING); /* the id */
        strata_redis_reply_free(op.reply);
    }
    const char *fv[] = {"order", "e3"};
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xadd(r, NULL, "wb", 3, 2, fv, NULL, strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_EBACKPRESSURE);
    strata_redis_reply_free(op.reply);
    const char *odd[] = {"order"};
    assert_int_equal(strata_redis_xadd(r, NULL, "wb", 3, 1, odd, NULL, NULL, NULL), STRATA_EINVAL);

    /* consumer c1 reads 2, consumer c2 reads 1 */
    seen a = {0}, b = {0};
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xreadgroup(r, NULL, "persist", "c1", 2, 0, "wb", ">",
                                             strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    assert_int_equal(strata_redis_xentries(op.reply, collect, &a), 0);
    strata_redis_reply_free(op.reply);
    assert_int_equal(a.n, 2);
    assert_string_equal(a.vals[0], "e0");
    assert_string_equal(a.vals[1], "e1");
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xreadgroup(r, NULL, "persist", "c2", 10, 100, "wb", ">",
                                             strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    assert_int_equal(strata_redis_xentries(op.reply, collect, &b), 0);
    strata_redis_reply_free(op.reply);
    assert_int_equal(b.n, 1);
    assert_string_equal(b.vals[0], "e2");

    /* ack e1 and e2 only: e0 is still pending, so the trim keeps everything from e0 */
    const char *ids[] = {a.ids[1], b.ids[0]};
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xack(r, "wb", "persist", 2, ids, strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    assert_int_equal(op.reply->integer, 2);
    strata_redis_reply_free(op.reply);
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xtrim_safe(r, "wb", strata_redis_sync_cb, &op), STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    assert_int_equal(op.reply->integer, 0);
    strata_redis_reply_free(op.reply);

    /* c1 died: c3 reclaims e0 after it idled, acks it; now the trim removes all
     * delivered entries up to the last delivered (kept as the marker) */
    strata_redis_sync_run_for(s, 30);
    seen c = {0};
    sync_do(s, &op, 0);
    assert_int_equal(
        strata_redis_xautoclaim(r, "wb", "persist", "c3", 20, "0-0", 10, strata_redis_sync_cb, &op),
        STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    assert_int_equal(op.reply->elements >= 2, 1);
    assert_int_equal(strata_redis_xentries(op.reply->element[1], collect, &c), 0);
    strata_redis_reply_free(op.reply);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.vals[0], "e0");
    const char *ids2[] = {c.ids[0]};
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xack(r, "wb", "persist", 1, ids2, strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    strata_redis_reply_free(op.reply);
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xtrim_safe(r, "wb", strata_redis_sync_cb, &op), STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    assert_int_equal(op.reply->integer, 2); /* e0, e1 gone; e2 (last delivered) kept */
    strata_redis_reply_free(op.reply);
    char *len = sh_redis_cmd(sh_redis_port(srv), "XLEN wb");
    assert_string_equal(len, "1");
    free(len);
    /* the producer has room again */
    sync_do(s, &op, 0);
    assert_int_equal(strata_redis_xadd(r, NULL, "wb", 3, 2, fv, NULL, strata_redis_sync_cb, &op),
                     STRATA_OK);
    assert_int_equal(strata_redis_sync_wait(s, &op), STRATA_OK);
    strata_redis_reply_free(op.reply);
    strata_redis_sync_destroy(&s);
}

static void test_destroy_cancels(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    strata_redis *r = client(&loop, sh_redis_url(srv), 1000);
    res a = {0};
    assert_int_equal(strata_redis_command(r, NULL, on_res, &a, "PING"), STRATA_OK);
    strata_redis_destroy(&r);
    assert_int_equal(a.done, 1);
    assert_true(a.status == STRATA_ECANCELED || a.status == STRATA_EUNKNOWN);
    res_clear(&a);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_basics),
        cmocka_unit_test(test_db_select_and_auth),
        cmocka_unit_test(test_pipeline_order),
        cmocka_unit_test(test_timeout_sigstop_is_unknown),
        cmocka_unit_test(test_kill_restart_reconnect),
        cmocka_unit_test(test_dedicated_does_not_block_pipeline),
        cmocka_unit_test(test_wait_without_replicas_is_unknown),
        cmocka_unit_test(test_evalsha_noscript),
        cmocka_unit_test(test_streams),
        cmocka_unit_test(test_destroy_cancels),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
