/*
 * test_scenario_scripts.c: the flash-sale and red-packet Lua scripts against
 * a real redis-server (atomicity, idempotency, no oversell under concurrent
 * clients, exact sums, refund exactly once), the stock-shard protocol
 * (reserve, take, confirm/release; crashes between steps and their recovery;
 * concurrent requests of the same users), and the double-average split.
 */
/* ctest-labels: redis scenarios */
/* ctest-link: strata_server */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness/harness.h"
#include "scenarios/redpacket/split.h"
#include "strata/protect.h"
#include "strata/status.h"

static sh_redis *srv;

/* The order script as the server runs it: composed after strata_gcra(). */
static char *load_order_script(void);

static char *load_script(const char *rel) {
    const char *root = getenv("STRATA_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/src/scenarios/%s", root ? root : ".", rel);
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot open %s", path);
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static char *load_order_script(void) {
    char *raw = load_script("flashsale/flashsale_order.lua");
    strata_buf b = STRATA_BUF_INIT;
    assert_int_equal(strata_gcra_compose(raw, &b), STRATA_OK);
    free(raw);
    char *out = strdup(b.data);
    strata_buf_free(&b);
    return out;
}

static redisContext *conn(void) {
    redisContext *c = redisConnect("127.0.0.1", sh_redis_port(srv));
    assert_true(c && !c->err);
    return c;
}

/* EVAL with argv; returns the reply (caller frees). */
static redisReply *eval(redisContext *c, const char *src, int nkeys, const char **keys, int nargs,
                        const char **args) {
    const char *argv[64];
    char nk[8];
    int n = 0;
    argv[n++] = "EVAL";
    argv[n++] = src;
    snprintf(nk, sizeof nk, "%d", nkeys);
    argv[n++] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[n++] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[n++] = args[i];
    redisReply *r = redisCommandArgv(c, n, argv, NULL);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("script error: %s", r->str);
    return r;
}

static const char *tag(const redisReply *r) {
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_true(r->elements >= 1);
    return r->element[0]->str;
}

static int setup(void **state) {
    (void)state;
    return sh_redis_start(&srv, NULL);
}

static int teardown(void **state) {
    (void)state;
    sh_redis_stop(&srv);
    return 0;
}

static long long rint_cmd(redisContext *c, const char *fmt, const char *sku, int shard);

#define FS_KEYS(sku)                                                                            \
    {                                                                                           \
        "fs:{" sku "}:stock", "fs:{" sku "}:buyers", "fs:{" sku "}:seq", "fs:{" sku "}:events", \
            "fsflag:{" sku "}", "fs:{" sku "}:orders", "fs:{" sku "}:buyerbits",                \
            "rl:fs:{" sku "}:u", "fs:{" sku "}:req:t1"                                          \
    }
#define FS_CKEYS(sku) \
    { "fs:{" sku "}:stock", "fs:{" sku "}:meta", "fsflag:{" sku "}" }

typedef struct {
    const char *src;
    int first_user, users;
    int ok, sold_out;
} buyer_arg;

static void *buyers(void *p) {
    buyer_arg *a = p;
    redisContext *c = conn();
    const char *keys[] = FS_KEYS("race");
    for (int u = a->first_user; u < a->first_user + a->users; u++) {
        char user[32];
        snprintf(user, sizeof user, "u%d", u);
        const char *args[] = {"race", user, "0", "0", "0", "race-", ""};
        redisReply *r = eval(c, a->src, 9, keys, 7, args);
        if (strcmp(tag(r), "ok") == 0)
            a->ok++;
        else if (strcmp(tag(r), "sold_out") == 0)
            a->sold_out++;
        freeReplyObject(r);
    }
    redisFree(c);
    return NULL;
}

static void flashsale_no_oversell_under_concurrent_clients(void **state) {
    (void)state;
    char *create = load_script("flashsale/flashsale_create.lua");
    char *order = load_order_script();
    redisContext *c = conn();
    const char *ckeys[] = FS_CKEYS("race");
    const char *cargs[] = {"25", "0", "0", "1"};
    redisReply *r = eval(c, create, 3, ckeys, 4, cargs);
    assert_string_equal(tag(r), "ok");
    freeReplyObject(r);
    r = eval(c, create, 3, ckeys, 4, cargs); /* never reset */
    assert_string_equal(tag(r), "exists");
    freeReplyObject(r);

    pthread_t t[4];
    buyer_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (buyer_arg){order, i * 100, 100, 0, 0};
        pthread_create(&t[i], NULL, buyers, &a[i]);
    }
    int ok = 0, sold_out = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        ok += a[i].ok;
        sold_out += a[i].sold_out;
    }
    assert_int_equal(ok, 25);
    assert_int_equal(sold_out, 375);
    r = redisCommand(c, "GET fs:{race}:stock");
    assert_string_equal(r->str, "0");
    freeReplyObject(r);
    r = redisCommand(c, "HLEN fs:{race}:buyers");
    assert_int_equal(r->integer, 25);
    freeReplyObject(r);
    r = redisCommand(c, "XLEN fs:{race}:events");
    assert_int_equal(r->integer, 25);
    freeReplyObject(r);
    r = redisCommand(c, "GET fsflag:{race}");
    assert_string_equal(r->str, "soldout");
    freeReplyObject(r);
    r = redisCommand(c, "HLEN fs:{race}:orders");
    assert_int_equal(r->integer, 25);
    freeReplyObject(r);
    redisFree(c);
    free(create);
    free(order);
}

static void flashsale_repeat_returns_the_same_order(void **state) {
    (void)state;
    char *create = load_script("flashsale/flashsale_create.lua");
    char *order = load_order_script();
    redisContext *c = conn();
    const char *ckeys[] = FS_CKEYS("rep");
    const char *cargs[] = {"1", "0", "0", "1"};
    freeReplyObject(eval(c, create, 3, ckeys, 4, cargs));
    const char *keys[] = FS_KEYS("rep");
    /* alice's three Bloom bits (positions computed by the server) ride along */
    const char *args[] = {"rep", "alice", "0", "0", "0", "rep-", "", "5", "77", "40000"};
    redisReply *r1 = eval(c, order, 9, keys, 10, args);
    assert_string_equal(tag(r1), "ok");
    assert_string_equal(r1->element[1]->str, "rep-1");
    assert_int_equal(r1->element[2]->integer, 0);
    assert_int_equal(rint_cmd(c, "GETBIT fs:{%s}:buyerbits 5", "rep", 0), 1);
    assert_int_equal(rint_cmd(c, "GETBIT fs:{%s}:buyerbits 77", "rep", 0), 1);
    assert_int_equal(rint_cmd(c, "GETBIT fs:{%s}:buyerbits 40000", "rep", 0), 1);
    assert_int_equal(rint_cmd(c, "BITCOUNT fs:{%s}:buyerbits", "rep", 0), 3);
    /* the same request retried after an unknown outcome (its token key): 'ok' again, the
     * answer the lost reply carried, even though the sale sold out since */
    redisReply *r2 = eval(c, order, 9, keys, 10, args);
    assert_string_equal(tag(r2), "ok");
    assert_string_equal(r2->element[1]->str, "rep-1");
    assert_int_equal(r2->element[2]->integer, 0);
    freeReplyObject(r2);
    /* another request of alice's: the same order, as already bought */
    const char *keys2[] = {keys[0], keys[1], keys[2], keys[3],          keys[4],
                           keys[5], keys[6], keys[7], "fs:{rep}:req:t2"};
    r2 = eval(c, order, 9, keys2, 10, args);
    assert_string_equal(tag(r2), "already");
    assert_string_equal(r2->element[1]->str, "rep-1");
    const char *bob[] = {"rep", "bob", "0", "0", "0", "rep-", ""};
    redisReply *r3 = eval(c, order, 9, keys2, 7, bob);
    assert_string_equal(tag(r3), "sold_out");
    const char *nokeys[] = FS_KEYS("nosuch");
    const char *noargs[] = {"nosuch", "alice", "0", "0", "0", "nosuch-", ""};
    redisReply *r4 = eval(c, order, 9, nokeys, 7, noargs);
    assert_string_equal(tag(r4), "unknown_sale");
    freeReplyObject(r1);
    freeReplyObject(r2);
    freeReplyObject(r3);
    freeReplyObject(r4);

    /* backpressure: a full events stream refuses new orders and changes nothing */
    const char *bkeys[] = FS_CKEYS("bp");
    const char *bargs[] = {"10", "0", "0", "1"};
    freeReplyObject(eval(c, create, 3, bkeys, 4, bargs));
    const char *okeys[] = FS_KEYS("bp");
    const char *o1[] = {"bp", "u1", "1", "0", "0", "bp-", ""};
    const char *o2[] = {"bp", "u2", "1", "0", "0", "bp-", ""};
    redisReply *a = eval(c, order, 9, okeys, 7, o1);
    assert_string_equal(tag(a), "ok");
    const char *bp_argv[] = {"EVAL",   order,    "9",      okeys[0], okeys[1], okeys[2], okeys[3],
                             okeys[4], okeys[5], okeys[6], okeys[7], okeys[8], o2[0],    o2[1],
                             o2[2],    o2[3],    o2[4],    o2[5],    o2[6]};
    redisReply *b = redisCommandArgv(c, 19, bp_argv, NULL);
    assert_int_equal(b->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(b->str, "BACKPRESSURE"));
    redisReply *st = redisCommand(c, "GET fs:{bp}:stock");
    assert_string_equal(st->str, "9");
    freeReplyObject(a);
    freeReplyObject(b);
    freeReplyObject(st);
    redisFree(c);
    free(create);
    free(order);
}

/* ---- stock shards: reserve, take, settle (flashsale.c drives the same steps) ------------- */

typedef struct shard_scripts {
    char *order, *take, *settle, *pending, *create;
} shard_scripts;

static void shard_scripts_load(shard_scripts *s) {
    s->order = load_order_script();
    s->take = load_script("flashsale/flashsale_take.lua");
    s->settle = load_script("flashsale/flashsale_settle.lua");
    s->pending = load_script("flashsale/flashsale_pending.lua");
    s->create = load_script("flashsale/flashsale_create.lua");
}

static void shard_scripts_free(shard_scripts *s) {
    free(s->order);
    free(s->take);
    free(s->settle);
    free(s->pending);
    free(s->create);
}

/* Loads a sale of `k` shards with the given stocks, as the server does (shards, then meta). */
static void shard_sale(redisContext *c, const shard_scripts *s, const char *sku, int k,
                       const int *stock) {
    long long total = 0;
    for (int i = 0; i < k; i++) {
        redisReply *r = redisCommand(c, "SET fs:{%s#%d}:stock %d NX", sku, i, stock[i]);
        freeReplyObject(r);
        total += stock[i];
    }
    char meta[3][96], tot[24], kk[8];
    snprintf(meta[0], sizeof meta[0], "fs:{%s}:stock", sku);
    snprintf(meta[1], sizeof meta[1], "fs:{%s}:meta", sku);
    snprintf(meta[2], sizeof meta[2], "fsflag:{%s}", sku);
    snprintf(tot, sizeof tot, "%lld", total);
    snprintf(kk, sizeof kk, "%d", k);
    const char *keys[] = {meta[0], meta[1], meta[2]};
    const char *args[] = {tot, "0", "0", "1", kk};
    redisReply *r = eval(c, s->create, 3, keys, 5, args);
    assert_string_equal(tag(r), "ok");
    freeReplyObject(r);
    r = redisCommand(c, "EXISTS fs:{%s}:stock", sku); /* a sharded sale has no single stock key */
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
}

/* The home shard's call; cand = the shard to reserve when home is empty (-1 none). */
/* Requests are named by a token (tok): the scripts remember the order a request recorded. */
static const char *tok_of(const char *user, int n) {
    static _Thread_local char buf[64];
    snprintf(buf, sizeof buf, "%s-%d", user, n);
    return buf;
}

static redisReply *shard_order_tok(redisContext *c, const shard_scripts *s, const char *sku,
                                   int home, const char *user, int cand, const char *tok) {
    char k[9][128], prefix[96], cs[16];
    static const char *const fmt[7] = {
        "fs:{%s#%d}:stock",   "fs:{%s#%d}:buyers", "fs:{%s#%d}:seq",      "fs:{%s#%d}:events",
        "fs:{%s#%d}:pending", "fs:{%s#%d}:orders", "fs:{%s#%d}:buyerbits"};
    for (int i = 0; i < 7; i++)
        snprintf(k[i], sizeof k[i], fmt[i], sku, home);
    snprintf(k[7], sizeof k[7], "rl:fs:{%s#%d}:%s", sku, home, user);
    snprintf(k[8], sizeof k[8], "fs:{%s#%d}:req:%s", sku, home, tok);
    snprintf(prefix, sizeof prefix, "%s-%d.", sku, home);
    snprintf(cs, sizeof cs, "%d", cand);
    const char *keys[9] = {k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8]};
    const char *args[8] = {sku, user, "0", "0", "0", prefix, cs, "12345"}; /* one Bloom bit */
    return eval(c, s->order, 9, keys, 8, args);
}

/* Each call a request of its own. */
static atomic_int g_req;
static redisReply *shard_order(redisContext *c, const shard_scripts *s, const char *sku, int home,
                               const char *user, int cand) {
    return shard_order_tok(c, s, sku, home, user, cand, tok_of(user, atomic_fetch_add(&g_req, 1)));
}

static redisReply *shard_take_tok(redisContext *c, const shard_scripts *s, const char *sku, int j,
                                  const char *user, const char *tok) {
    char k[6][128], prefix[96];
    static const char *const fmt[5] = {"fs:{%s#%d}:stock", "fs:{%s#%d}:taken", "fs:{%s#%d}:seq",
                                       "fs:{%s#%d}:events", "fs:{%s#%d}:orders"};
    for (int i = 0; i < 5; i++)
        snprintf(k[i], sizeof k[i], fmt[i], sku, j);
    snprintf(k[5], sizeof k[5], "fs:{%s#%d}:req:%s", sku, j, tok);
    snprintf(prefix, sizeof prefix, "%s-%d.", sku, j);
    const char *keys[6] = {k[0], k[1], k[2], k[3], k[4], k[5]};
    const char *args[4] = {sku, user, "0", prefix};
    return eval(c, s->take, 6, keys, 4, args);
}

static redisReply *shard_take(redisContext *c, const shard_scripts *s, const char *sku, int j,
                              const char *user) {
    return shard_take_tok(c, s, sku, j, user, tok_of(user, atomic_fetch_add(&g_req, 1)));
}

static redisReply *shard_settle(redisContext *c, const shard_scripts *s, const char *sku, int home,
                                const char *user, const char *expect_rec, const char *to) {
    char k[2][128];
    snprintf(k[0], sizeof k[0], "fs:{%s#%d}:buyers", sku, home);
    snprintf(k[1], sizeof k[1], "fs:{%s#%d}:pending", sku, home);
    const char *keys[2] = {k[0], k[1]};
    const char *args[3] = {user, expect_rec, to};
    return eval(c, s->settle, 2, keys, 3, args);
}

static char *hget(redisContext *c, const char *fmt_key, const char *sku, int shard,
                  const char *field) {
    char key[128];
    snprintf(key, sizeof key, fmt_key, sku, shard);
    redisReply *r = redisCommand(c, "HGET %s %s", key, field);
    char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

static long long rint_cmd(redisContext *c, const char *fmt, const char *sku, int shard) {
    char cmd[160];
    snprintf(cmd, sizeof cmd, fmt, sku, shard);
    redisReply *r = redisCommand(c, cmd);
    long long v = r->type == REDIS_REPLY_INTEGER  ? r->integer
                  : r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10)
                                                  : -1;
    freeReplyObject(r);
    return v;
}

static void expect_reply(redisReply *r, const char *want_tag, const char *want_str) {
    assert_string_equal(tag(r), want_tag);
    if (want_str) {
        assert_true(r->elements >= 2);
        assert_string_equal(r->element[1]->str, want_str);
    }
    freeReplyObject(r);
}

static void flashsale_shards_reserve_take_confirm_release(void **state) {
    (void)state;
    shard_scripts s;
    shard_scripts_load(&s);
    redisContext *c = conn();
    const int stock[3] = {1, 1, 0};
    shard_sale(c, &s, "sh", 3, stock);
    /* the common path: home shard 0 has stock */
    redisReply *r = shard_order(c, &s, "sh", 0, "alice", 1);
    assert_string_equal(tag(r), "ok");
    assert_string_equal(r->element[1]->str, "sh-0.1");
    assert_int_equal(r->element[2]->integer, 0);
    freeReplyObject(r);
    r = redisCommand(c, "GET fsflag:{sh}"); /* a shard's script never sets the sale's flag */
    assert_string_equal(r->str, "open");
    freeReplyObject(r);
    /* home empty: reserve shard 2 in the same call (record, pending entry, Bloom bit) */
    expect_reply(shard_order(c, &s, "sh", 0, "bob", 2), "reserved", "R:2");
    char *rec = hget(c, "fs:{%s#%d}:buyers", "sh", 0, "bob");
    assert_string_equal(rec, "R:2");
    free(rec);
    assert_int_equal(rint_cmd(c, "ZCARD fs:{%s#%d}:pending", "sh", 0), 1);
    assert_int_equal(rint_cmd(c, "GETBIT fs:{%s#%d}:buyerbits 12345", "sh", 0), 1);
    /* a repeat while it is pending answers 'pending', never buys */
    expect_reply(shard_order(c, &s, "sh", 0, "bob", 1), "pending", "R:2");
    /* shard 2 is empty: move the reservation on to shard 1 */
    expect_reply(shard_take(c, &s, "sh", 2, "bob"), "sold_out", NULL);
    expect_reply(shard_settle(c, &s, "sh", 0, "bob", "R:2", "R:1"), "ok", NULL);
    expect_reply(shard_settle(c, &s, "sh", 0, "bob", "R:2", "R:1"), "ok", NULL); /* idempotent */
    r = shard_take(c, &s, "sh", 1, "bob");
    assert_string_equal(tag(r), "ok");
    assert_string_equal(r->element[1]->str, "sh-1.1");
    assert_int_equal(r->element[2]->integer, 0);
    freeReplyObject(r);
    expect_reply(shard_take(c, &s, "sh", 1, "bob"), "repeat", "sh-1.1"); /* idempotent per user */
    expect_reply(shard_settle(c, &s, "sh", 0, "bob", "R:1", "sh-1.1"), "ok", NULL);
    expect_reply(shard_settle(c, &s, "sh", 0, "bob", "R:1", "sh-1.1"), "ok", NULL);
    expect_reply(shard_order(c, &s, "sh", 0, "bob", 1), "already", "sh-1.1");
    assert_int_equal(rint_cmd(c, "ZCARD fs:{%s#%d}:pending", "sh", 0), 0);
    /* a stale step of another request of bob's sees the record moved on */
    expect_reply(shard_settle(c, &s, "sh", 0, "bob", "R:2", ""), "changed", "sh-1.1");
    /* carol: every shard empty -> release; then sold out with no candidate */
    expect_reply(shard_order(c, &s, "sh", 0, "carol", 1), "reserved", "R:1");
    expect_reply(shard_take(c, &s, "sh", 1, "carol"), "sold_out", NULL);
    expect_reply(shard_settle(c, &s, "sh", 0, "carol", "R:1", ""), "ok", NULL);
    assert_null(hget(c, "fs:{%s#%d}:buyers", "sh", 0, "carol"));
    assert_int_equal(rint_cmd(c, "ZCARD fs:{%s#%d}:pending", "sh", 0), 0);
    expect_reply(shard_settle(c, &s, "sh", 0, "carol", "R:1", "R:2"), "changed", "");
    expect_reply(shard_order(c, &s, "sh", 0, "carol", -1), "sold_out", NULL);
    /* the order of a take lives in the shard it came from, its event in that shard's stream */
    char *who = hget(c, "fs:{%s#%d}:orders", "sh", 1, "sh-1.1");
    assert_string_equal(who, "bob");
    free(who);
    assert_int_equal(rint_cmd(c, "XLEN fs:{%s#%d}:events", "sh", 0), 1);
    assert_int_equal(rint_cmd(c, "XLEN fs:{%s#%d}:events", "sh", 1), 1);
    assert_int_equal(rint_cmd(c, "XLEN fs:{%s#%d}:events", "sh", 2), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rint_cmd(c, "GET fs:{%s#%d}:stock", "sh", i), 0);
    redisFree(c);
    shard_scripts_free(&s);
}

/* The sweeper's step on one home shard: every old reservation finished (take, then settle). */
static int sweep_shard(redisContext *c, const shard_scripts *s, const char *sku, int home,
                       const char *age) {
    char k[2][128];
    snprintf(k[0], sizeof k[0], "fs:{%s#%d}:pending", sku, home);
    snprintf(k[1], sizeof k[1], "fs:{%s#%d}:buyers", sku, home);
    const char *keys[2] = {k[0], k[1]};
    const char *args[2] = {age, "1000"};
    redisReply *r = eval(c, s->pending, 2, keys, 2, args);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    int done = 0;
    for (size_t i = 1; i + 1 < r->elements; i += 2) {
        const char *user = r->element[i]->str, *resv = r->element[i + 1]->str;
        int j = atoi(resv + 2);
        redisReply *t = shard_take(c, s, sku, j, user);
        const char *to = strcmp(tag(t), "sold_out") == 0 ? "" : t->element[1]->str;
        redisReply *st = shard_settle(c, s, sku, home, user, resv, to);
        assert_string_equal(tag(st), "ok");
        freeReplyObject(st);
        freeReplyObject(t);
        done++;
    }
    freeReplyObject(r);
    return done;
}

static void flashsale_shards_crash_between_steps_then_recovery(void **state) {
    (void)state;
    shard_scripts s;
    shard_scripts_load(&s);
    redisContext *c = conn();
    const int stock[2] = {0, 3};
    shard_sale(c, &s, "cr", 2, stock);
    /* dave: crash after the reservation, before the take; his next request finishes it */
    expect_reply(shard_order(c, &s, "cr", 0, "dave", 1), "reserved", "R:1");
    expect_reply(shard_order(c, &s, "cr", 0, "dave", 1), "pending", "R:1");
    expect_reply(shard_take(c, &s, "cr", 1, "dave"), "ok", "cr-1.1");
    expect_reply(shard_settle(c, &s, "cr", 0, "dave", "R:1", "cr-1.1"), "ok", NULL);
    /* erin: crash after the take, before the confirm: the repeat take returns her order */
    expect_reply(shard_order_tok(c, &s, "cr", 0, "erin", 1, "e1"), "reserved", "R:1");
    expect_reply(shard_take_tok(c, &s, "cr", 1, "erin", "e1"), "ok", "cr-1.2");
    /* the same request retrying its take (reply lost): 'ok' again, so it can answer 201 */
    expect_reply(shard_take_tok(c, &s, "cr", 1, "erin", "e1"), "ok", "cr-1.2");
    expect_reply(shard_order(c, &s, "cr", 0, "erin", 1), "pending", "R:1");
    expect_reply(shard_take(c, &s, "cr", 1, "erin"), "repeat", "cr-1.2");
    expect_reply(shard_settle(c, &s, "cr", 0, "erin", "R:1", "cr-1.2"), "ok", NULL);
    assert_int_equal(rint_cmd(c, "GET fs:{%s#%d}:stock", "cr", 1), 1); /* two takes, not three */
    /* frank and gina: servers crashed after the take / after the reservation, and the
     * users never come back: the sweeper finishes both, once they are old enough */
    expect_reply(shard_order(c, &s, "cr", 0, "frank", 1), "reserved", "R:1");
    expect_reply(shard_take(c, &s, "cr", 1, "frank"), "ok", "cr-1.3");
    expect_reply(shard_order(c, &s, "cr", 0, "gina", 1), "reserved", "R:1");
    assert_int_equal(sweep_shard(c, &s, "cr", 0, "60000"), 0); /* too young */
    assert_int_equal(sweep_shard(c, &s, "cr", 0, "0"), 2);
    char *f = hget(c, "fs:{%s#%d}:buyers", "cr", 0, "frank");
    assert_string_equal(f, "cr-1.3");
    free(f);
    assert_null(hget(c, "fs:{%s#%d}:buyers", "cr", 0, "gina")); /* shard 1 was empty: released */
    assert_int_equal(rint_cmd(c, "ZCARD fs:{%s#%d}:pending", "cr", 0), 0);
    assert_int_equal(rint_cmd(c, "HLEN fs:{%s#%d}:orders", "cr", 1), 3);
    assert_int_equal(rint_cmd(c, "XLEN fs:{%s#%d}:events", "cr", 1), 3);
    /* a confirm whose reservation vanished still records the order (no second purchase) */
    expect_reply(shard_settle(c, &s, "cr", 0, "hank", "R:1", "cr-1.9"), "ok", NULL);
    /* a move whose reservation vanished does not resurrect it */
    expect_reply(shard_settle(c, &s, "cr", 0, "ivan", "R:1", "R:0"), "changed", "");
    redisFree(c);
    shard_scripts_free(&s);
}

/*
 * Many requests of the same users at once, some "crashing" between steps:
 * the client side of the protocol as flashsale.c runs it.
 */
enum { CS_K = 4, CS_USERS = 40, CS_THREADS = 8 };
enum { P_CREATED, P_ALREADY, P_SOLD_OUT, P_CRASHED };

static int next_cand(int home, uint32_t empty) {
    for (int i = 1; i < CS_K; i++) {
        int j = (home + i) % CS_K;
        if (!(empty & (1u << j)))
            return j;
    }
    return -1;
}

static int protocol(redisContext *c, const shard_scripts *s, const char *sku, const char *user,
                    int home, int crash_at, char *out, size_t cap) {
    uint32_t empty = 0;
    char resv[96], tok[64];
    snprintf(tok, sizeof tok, "%s", tok_of(user, atomic_fetch_add(&g_req, 1))); /* one request */
    for (int steps = 0; steps < 64; steps++) {
        redisReply *r = shard_order_tok(c, s, sku, home, user, next_cand(home, empty), tok);
        const char *t = tag(r);
        if (strcmp(t, "ok") == 0 || strcmp(t, "already") == 0) {
            snprintf(out, cap, "%s", r->element[1]->str);
            int res = t[0] == 'o' ? P_CREATED : P_ALREADY;
            freeReplyObject(r);
            return res;
        }
        if (strcmp(t, "sold_out") == 0) {
            freeReplyObject(r);
            return P_SOLD_OUT;
        }
        assert_true(strcmp(t, "reserved") == 0 || strcmp(t, "pending") == 0);
        if (t[0] == 'r')
            empty |= 1u << home;
        snprintf(resv, sizeof resv, "%s", r->element[1]->str);
        freeReplyObject(r);
        bool reorder = false;
        while (!reorder) {
            if (crash_at == 1)
                return P_CRASHED;
            int j = atoi(resv + 2);
            assert_true(j >= 0 && j < CS_K && j != home);
            redisReply *tk = shard_take_tok(c, s, sku, j, user, tok);
            char to[96];
            bool created = strcmp(tag(tk), "ok") == 0;
            if (created || strcmp(tag(tk), "repeat") == 0) {
                snprintf(to, sizeof to, "%s", tk->element[1]->str);
                freeReplyObject(tk);
                if (crash_at == 2)
                    return P_CRASHED;
            } else {
                assert_string_equal(tag(tk), "sold_out");
                freeReplyObject(tk);
                empty |= 1u << j;
                int n = next_cand(home, empty);
                if (n >= 0)
                    snprintf(to, sizeof to, "R:%d", n);
                else
                    to[0] = '\0';
            }
            redisReply *st = shard_settle(c, s, sku, home, user, resv, to);
            if (strcmp(tag(st), "ok") == 0) {
                freeReplyObject(st);
                if (to[0] == '\0')
                    return P_SOLD_OUT;
                if (to[0] == 'R') {
                    snprintf(resv, sizeof resv, "%s", to);
                    continue;
                }
                snprintf(out, cap, "%s", to);
                return created ? P_CREATED : P_ALREADY;
            }
            const char *cur = st->element[1]->str;
            if (cur[0] == '\0') {
                reorder = true;
            } else if (cur[0] == 'R') {
                snprintf(resv, sizeof resv, "%s", cur);
            } else {
                snprintf(out, cap, "%s", cur);
                freeReplyObject(st);
                return P_ALREADY;
            }
            freeReplyObject(st);
        }
    }
    fail_msg("the protocol did not converge for %s", user);
    return -1;
}

typedef struct {
    const shard_scripts *s;
    int id;
    int created, crashed;
    char orders[CS_USERS][48]; /* what this thread was told per user */
} cs_arg;

static void *cs_thread(void *p) {
    cs_arg *a = p;
    redisContext *c = conn();
    uint32_t seed = 0x9e3779b9u * (uint32_t)(a->id + 1);
    for (int n = 0; n < CS_USERS; n++) {
        int u = (n + a->id / 2) % CS_USERS; /* several threads on one user at once */
        char user[16];
        snprintf(user, sizeof user, "u%d", u);
        seed = seed * 1103515245u + 12345u;
        int roll = (int)((seed >> 16) % 10);
        int crash = roll == 0 ? 1 : roll == 1 ? 2 : 0;
        char out[48] = "";
        int res = protocol(c, a->s, "cs", user, u % CS_K, crash, out, sizeof out);
        if (res == P_CREATED)
            a->created++;
        if (res == P_CRASHED)
            a->crashed++;
        if (res == P_CREATED || res == P_ALREADY)
            snprintf(a->orders[u], sizeof a->orders[u], "%s", out);
    }
    redisFree(c);
    return NULL;
}

static void flashsale_shards_concurrent_same_user_requests(void **state) {
    (void)state;
    shard_scripts s;
    shard_scripts_load(&s);
    redisContext *c = conn();
    const int stock[CS_K] = {6, 2, 1, 1}; /* homes 2 and 3 run dry first */
    shard_sale(c, &s, "cs", CS_K, stock);
    pthread_t t[CS_THREADS];
    cs_arg *a = calloc(CS_THREADS, sizeof *a);
    for (int i = 0; i < CS_THREADS; i++) {
        a[i].s = &s;
        a[i].id = i;
        pthread_create(&t[i], NULL, cs_thread, &a[i]);
    }
    int created = 0, crashed = 0;
    for (int i = 0; i < CS_THREADS; i++) {
        pthread_join(t[i], NULL);
        created += a[i].created;
        crashed += a[i].crashed;
    }
    assert_true(crashed > 0);
    /* the sweeper finishes what the crashes left */
    for (int h = 0; h < CS_K; h++)
        sweep_shard(c, &s, "cs", h, "0");
    /* every order is in exactly one shard's index; one per user; none beyond the stock */
    char owner[CS_USERS][48];
    memset(owner, 0, sizeof owner);
    long long orders = 0, events = 0, left = 0;
    for (int j = 0; j < CS_K; j++) {
        char key[64];
        snprintf(key, sizeof key, "fs:{cs#%d}:orders", j);
        redisReply *r = redisCommand(c, "HGETALL %s", key);
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            int u = atoi(r->element[i + 1]->str + 1);
            if (owner[u][0])
                fail_msg("user u%d holds two orders: %s and %s", u, owner[u], r->element[i]->str);
            snprintf(owner[u], sizeof owner[u], "%s", r->element[i]->str);
            orders++;
        }
        freeReplyObject(r);
        events += rint_cmd(c, "XLEN fs:{%s#%d}:events", "cs", j);
        left += rint_cmd(c, "GET fs:{%s#%d}:stock", "cs", j);
        assert_int_equal(rint_cmd(c, "ZCARD fs:{%s#%d}:pending", "cs", j), 0);
    }
    long long taken = 0;
    for (int j = 0; j < CS_K; j++)
        taken += rint_cmd(c, "HLEN fs:{%s#%d}:taken", "cs", j);
    assert_true(taken > 0); /* cross-shard takes happened */
    assert_true(left >= 0);
    assert_int_equal(orders + left, 10);
    assert_int_equal(events, orders);
    assert_true(created <= orders);
    /* home records: the user's order exactly, no reservation left */
    for (int u = 0; u < CS_USERS; u++) {
        char user[16];
        snprintf(user, sizeof user, "u%d", u);
        char *rec = hget(c, "fs:{%s#%d}:buyers", "cs", u % CS_K, user);
        if (owner[u][0]) {
            assert_non_null(rec);
            assert_string_equal(rec, owner[u]);
        } else if (rec) {
            fail_msg("user u%d has record %s but no order", u, rec);
        }
        free(rec);
        for (int i = 0; i < CS_THREADS; i++) /* whatever a request was told is the truth */
            if (a[i].orders[u][0])
                assert_string_equal(a[i].orders[u], owner[u]);
    }
    /* every user's next request: their order, or sold out; the stock ends at zero */
    for (int u = 0; u < CS_USERS; u++) {
        char user[16], out[48] = "";
        snprintf(user, sizeof user, "u%d", u);
        int res = protocol(c, &s, "cs", user, u % CS_K, 0, out, sizeof out);
        if (owner[u][0]) {
            assert_int_equal(res, P_ALREADY);
            assert_string_equal(out, owner[u]);
        } else {
            assert_true(res == P_SOLD_OUT || res == P_CREATED);
        }
    }
    long long end = 0;
    for (int j = 0; j < CS_K; j++)
        end += rint_cmd(c, "GET fs:{%s#%d}:stock", "cs", j);
    assert_int_equal(end, 0);
    free(a);
    redisFree(c);
    shard_scripts_free(&s);
}

#define RP_KEYS(id)                                                                          \
    {                                                                                        \
        "rp:{" id "}:shares", "rp:{" id "}:meta", "rp:{" id "}:grabs", "rp:{" id "}:events", \
            "rpflag:{" id "}", "rl:rp:{" id "}:u"                                            \
    }
#define RP_CKEYS(id) \
    { "rp:{" id "}:shares", "rp:{" id "}:meta", "rpflag:{" id "}" }

static void redpacket_grab_expire_refund_exactly_once(void **state) {
    (void)state;
    char *create = load_script("redpacket/redpacket_create.lua");
    char *grab_raw = load_script("redpacket/redpacket_grab.lua");
    strata_buf grab_buf = STRATA_BUF_INIT;
    assert_int_equal(strata_gcra_compose(grab_raw, &grab_buf), STRATA_OK);
    free(grab_raw);
    char *grab = strdup(grab_buf.data);
    strata_buf_free(&grab_buf);
    char *expire = load_script("redpacket/redpacket_expire.lua");
    redisContext *c = conn();
    rp_rng g;
    assert_int_equal(rp_rng_init(&g, NULL), STRATA_OK);
    int64_t shares[10];
    assert_int_equal(rp_split_double_average(&g, 1000, 10, shares), STRATA_OK);
    const char *args[13];
    char sbuf[10][24];
    args[0] = "1000";
    args[1] = "10";
    args[2] = "5000"; /* expires at t = 5000 ms */
    for (int i = 0; i < 10; i++) {
        snprintf(sbuf[i], sizeof sbuf[i], "%lld", (long long)shares[i]);
        args[3 + i] = sbuf[i];
    }
    const char *keys[] = RP_KEYS("p1");
    const char *ckeys[] = RP_CKEYS("p1");
    redisReply *r = eval(c, create, 3, ckeys, 13, args);
    assert_string_equal(tag(r), "ok");
    freeReplyObject(r);
    const char *bad[] = {"1000", "2", "5000", "500", "499"};
    const char *bkeys[] = RP_CKEYS("p2");
    r = eval(c, create, 3, bkeys, 5, bad);
    assert_string_equal(tag(r), "bad_split");
    freeReplyObject(r);

    /* 6 grabs before expiry, one repeated */
    long long got = 0;
    long long first_amount = 0;
    for (int u = 0; u < 6; u++) {
        char user[16];
        snprintf(user, sizeof user, "g%d", u);
        const char *gargs[] = {"p1", user, "1000", "0", "0", "0"};
        r = eval(c, grab, 6, keys, 6, gargs);
        assert_string_equal(tag(r), "ok");
        assert_true(r->element[1]->integer >= 1);
        got += r->element[1]->integer;
        if (u == 0)
            first_amount = r->element[1]->integer;
        freeReplyObject(r);
    }
    const char *again[] = {"p1", "g0", "1000", "0", "0", "0"};
    r = eval(c, grab, 6, keys, 6, again);
    assert_string_equal(tag(r), "already");
    assert_int_equal(r->element[1]->integer, first_amount);
    freeReplyObject(r);

    const char *early[] = {"p1", "4999"};
    r = eval(c, expire, 5, keys, 2, early);
    assert_string_equal(tag(r), "not_expired");
    freeReplyObject(r);
    const char *late_grab[] = {"p1", "late", "5000", "0", "0", "0"};
    r = eval(c, grab, 6, keys, 6, late_grab);
    assert_string_equal(tag(r), "expired");
    freeReplyObject(r);
    const char *at[] = {"p1", "5000"};
    r = eval(c, expire, 5, keys, 2, at);
    assert_string_equal(tag(r), "refunded");
    long long refunded = r->element[1]->integer;
    freeReplyObject(r);
    assert_int_equal(got + refunded, 1000);
    r = eval(c, expire, 5, keys, 2, at); /* exactly once */
    assert_string_equal(tag(r), "already");
    assert_int_equal(r->element[1]->integer, refunded);
    freeReplyObject(r);
    r = eval(c, grab, 6, keys, 6, late_grab);
    assert_string_equal(tag(r), "gone");
    freeReplyObject(r);
    r = redisCommand(c, "XLEN rp:{p1}:events");
    assert_int_equal(r->integer, 7); /* 6 grabs + 1 refund */
    freeReplyObject(r);

    /* a fully grabbed packet is gone for the next grabber */
    int64_t two[2];
    rp_split_double_average(&g, 3, 2, two);
    char s0[24], s1[24];
    snprintf(s0, sizeof s0, "%lld", (long long)two[0]);
    snprintf(s1, sizeof s1, "%lld", (long long)two[1]);
    const char *small[] = {"3", "2", "99999999999999", s0, s1};
    const char *k3[] = RP_KEYS("p3");
    const char *c3[] = RP_CKEYS("p3");
    freeReplyObject(eval(c, create, 3, c3, 5, small));
    const char *ga[] = {"p3", "a", "1", "0", "0", "0"}, *gb[] = {"p3", "b", "1", "0", "0", "0"},
               *gc[] = {"p3", "c", "1", "0", "0", "0"};
    freeReplyObject(eval(c, grab, 6, k3, 6, ga));
    freeReplyObject(eval(c, grab, 6, k3, 6, gb));
    r = eval(c, grab, 6, k3, 6, gc);
    assert_string_equal(tag(r), "gone");
    freeReplyObject(r);
    r = redisCommand(c, "GET rpflag:{p3}");
    assert_string_equal(r->str, "gone"); /* every L1 learns it through tracking */
    freeReplyObject(r);
    redisFree(c);
    free(create);
    free(grab);
    free(expire);
}

static void split_sums_exactly_with_every_share_positive(void **state) {
    (void)state;
    uint8_t seed[32] = {1, 2, 3};
    rp_rng g;
    rp_rng_init(&g, seed);
    int64_t *out = malloc(sizeof(int64_t) * 10000);
    for (int trial = 0; trial < 2000; trial++) {
        int64_t count = 1 + (int64_t)rp_rng_range(&g, 0, 199);
        int64_t total = count + (int64_t)rp_rng_range(&g, 0, 100000);
        assert_int_equal(rp_split_double_average(&g, total, count, out), STRATA_OK);
        int64_t sum = 0;
        for (int64_t i = 0; i < count; i++) {
            if (out[i] < 1)
                fail_msg("share %lld of %lld/%lld is %lld", (long long)i, (long long)total,
                         (long long)count, (long long)out[i]);
            sum += out[i];
        }
        assert_int_equal(sum, total);
    }
    /* the edge: as many shares as cents */
    assert_int_equal(rp_split_double_average(&g, 7, 7, out), STRATA_OK);
    for (int i = 0; i < 7; i++)
        assert_int_equal(out[i], 1);
    assert_int_equal(rp_split_double_average(&g, 5, 6, out), STRATA_EINVAL);
    assert_int_equal(rp_split_double_average(&g, 5, 0, out), STRATA_EINVAL);
    /* the first share averages total/count over many packets (double average is fair) */
    double mean = 0;
    for (int i = 0; i < 20000; i++) {
        rp_split_double_average(&g, 10000, 10, out);
        mean += (double)out[0];
    }
    mean /= 20000;
    assert_true(mean > 980 && mean < 1020);
    /* the same seed gives the same split; the range is unbiased at its ends */
    rp_rng a, b;
    rp_rng_init(&a, seed);
    rp_rng_init(&b, seed);
    assert_int_equal(rp_rng_range(&a, 0, UINT64_MAX - 1), rp_rng_range(&b, 0, UINT64_MAX - 1));
    int lo = 0, hi = 0;
    for (int i = 0; i < 30000; i++) {
        uint64_t v = rp_rng_range(&a, 5, 7);
        assert_true(v >= 5 && v <= 7);
        lo += v == 5;
        hi += v == 7;
    }
    assert_true(lo > 9000 && lo < 11000 && hi > 9000 && hi < 11000);
    free(out);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(flashsale_no_oversell_under_concurrent_clients),
        cmocka_unit_test(flashsale_repeat_returns_the_same_order),
        cmocka_unit_test(flashsale_shards_reserve_take_confirm_release),
        cmocka_unit_test(flashsale_shards_crash_between_steps_then_recovery),
        cmocka_unit_test(flashsale_shards_concurrent_same_user_requests),
        cmocka_unit_test(redpacket_grab_expire_refund_exactly_once),
        cmocka_unit_test(split_sums_exactly_with_every_share_positive),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
