/*
 * test_scenario_scripts.c: the flash-sale and red-packet Lua scripts against
 * a real redis-server (atomicity, idempotency, no oversell under concurrent
 * clients, exact sums, refund exactly once), and the double-average split.
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

#define FS_KEYS(sku)                                                                            \
    {                                                                                           \
        "fs:{" sku "}:stock", "fs:{" sku "}:buyers", "fs:{" sku "}:seq", "fs:{" sku "}:events", \
            "fsflag:{" sku "}", "fs:{" sku "}:orders", "fs:{" sku "}:buyerbits",                \
            "rl:fs:{" sku "}:u"                                                                 \
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
        const char *args[] = {"race", user, "0", "0", "0"};
        redisReply *r = eval(c, a->src, 8, keys, 5, args);
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
    const char *args[] = {"rep", "alice", "0", "0", "0"};
    redisReply *r1 = eval(c, order, 8, keys, 5, args);
    assert_string_equal(tag(r1), "ok");
    assert_string_equal(r1->element[1]->str, "rep-1");
    assert_int_equal(r1->element[2]->integer, 0);
    /* a retry after an unknown outcome: the same order, even though the sale sold out */
    redisReply *r2 = eval(c, order, 8, keys, 5, args);
    assert_string_equal(tag(r2), "already");
    assert_string_equal(r2->element[1]->str, "rep-1");
    const char *bob[] = {"rep", "bob", "0", "0", "0"};
    redisReply *r3 = eval(c, order, 8, keys, 5, bob);
    assert_string_equal(tag(r3), "sold_out");
    const char *nokeys[] = FS_KEYS("nosuch");
    const char *noargs[] = {"nosuch", "alice", "0", "0", "0"};
    redisReply *r4 = eval(c, order, 8, nokeys, 5, noargs);
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
    const char *o1[] = {"bp", "u1", "1", "0", "0"};
    const char *o2[] = {"bp", "u2", "1", "0", "0"};
    redisReply *a = eval(c, order, 8, okeys, 5, o1);
    assert_string_equal(tag(a), "ok");
    const char *bp_argv[] = {"EVAL",   order,    "8",      okeys[0], okeys[1], okeys[2],
                             okeys[3], okeys[4], okeys[5], okeys[6], okeys[7], o2[0],
                             o2[1],    o2[2],    o2[3],    o2[4]};
    redisReply *b = redisCommandArgv(c, 16, bp_argv, NULL);
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
        cmocka_unit_test(redpacket_grab_expire_refund_exactly_once),
        cmocka_unit_test(split_sums_exactly_with_every_share_positive),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
