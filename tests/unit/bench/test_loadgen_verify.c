/*
 * test_loadgen_verify.c: the load generator's invariant checker
 * (lg_verify_*) against a real redis-server (tests/harness) and a SQLite
 * file with the tables of docs/notes/scenarios.md, which the test creates and
 * fills itself: consistent flash sales and red packets (open and expired)
 * pass with no violation; each kind of corruption is reported by name; the
 * drain wait sees rows the "persister" writes late; bad URLs are refused.
 */
/* ctest-labels: redis */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

/* The load generator lives in the strata binary (strata_cli, which also pulls the
 * server): its sources are compiled into the test instead. */
#include "../../../bench/loadgen_http.c"
#include "../../../bench/loadgen_verify.c"
#include "harness.h"
#include "strata/status.h"

static sh_redis *redis;
static char db_path[1024], db_url[1100];
static sqlite3 *sq;

static const char SCHEMA[] =
    "CREATE TABLE flashsales(sku TEXT PRIMARY KEY, stock_total BIGINT, starts_at_ms BIGINT, "
    "ends_at_ms BIGINT, per_user_limit INT, created_at_ms BIGINT);"
    "CREATE TABLE orders(order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, user_id TEXT NOT NULL, "
    "created_at_ms BIGINT NOT NULL, UNIQUE(sku, user_id));"
    "CREATE TABLE redpackets(id TEXT PRIMARY KEY, total_cents BIGINT, count INT, "
    "expires_at_ms BIGINT, status TEXT, refunded_cents BIGINT, created_at_ms BIGINT);"
    "CREATE TABLE grabs(grab_id TEXT PRIMARY KEY, packet_id TEXT NOT NULL, user_id TEXT NOT NULL, "
    "amount_cents BIGINT NOT NULL, created_at_ms BIGINT NOT NULL, UNIQUE(packet_id, user_id));";

static void sql(const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *err = NULL;
    if (sqlite3_exec(sq, buf, NULL, NULL, &err) != SQLITE_OK) {
        print_error("sql %s: %s\n", buf, err);
        sqlite3_free(err);
        fail();
    }
}

static void redis_do(const char *cmd) {
    /* Space-separated arguments without spaces inside. */
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", cmd);
    const char *argv[32];
    size_t n = 0;
    for (char *t = strtok(buf, " "); t && n < 32; t = strtok(NULL, " "))
        argv[n++] = t;
    /* sh_redis_cmd takes a hiredis format: join with %s each. */
    char fmt[256] = "";
    for (size_t i = 0; i < n; i++)
        strcat(fmt, i ? " %s" : "%s");
    char *r = NULL;
    switch (n) {
    case 2: r = sh_redis_cmd(sh_redis_port(redis), fmt, argv[0], argv[1]); break;
    case 3: r = sh_redis_cmd(sh_redis_port(redis), fmt, argv[0], argv[1], argv[2]); break;
    case 4: r = sh_redis_cmd(sh_redis_port(redis), fmt, argv[0], argv[1], argv[2], argv[3]); break;
    case 5:
        r = sh_redis_cmd(sh_redis_port(redis), fmt, argv[0], argv[1], argv[2], argv[3], argv[4]);
        break;
    case 6:
        r = sh_redis_cmd(sh_redis_port(redis), fmt, argv[0], argv[1], argv[2], argv[3], argv[4],
                         argv[5]);
        break;
    case 7:
        r = sh_redis_cmd(sh_redis_port(redis), fmt, argv[0], argv[1], argv[2], argv[3], argv[4],
                         argv[5], argv[6]);
        break;
    case 8:
        r = sh_redis_cmd(sh_redis_port(redis), fmt, argv[0], argv[1], argv[2], argv[3], argv[4],
                         argv[5], argv[6], argv[7]);
        break;
    default: fail_msg("rcmd: %zu args", n);
    }
    assert_non_null(r);
    if (strncmp(r, "ERR", 3) == 0 || strncmp(r, "WRONGTYPE", 9) == 0)
        fail_msg("redis %s: %s", cmd, r);
    free(r);
}

/* Collects violations as one text. */
typedef struct found {
    char text[8192];
    int n;
} found;

static void collect(void *ctx, const char *text) {
    found *f = ctx;
    f->n++;
    strncat(f->text, text, sizeof f->text - strlen(f->text) - 2);
    strcat(f->text, "\n");
}

static int group_setup(void **state) {
    (void)state;
    if (sh_redis_start(&redis, NULL) != STRATA_OK)
        return -1;
    snprintf(db_path, sizeof db_path, "%s/scenarios.db", sh_tmpdir());
    snprintf(db_url, sizeof db_url, "sqlite://%s", db_path);
    if (sqlite3_open(db_path, &sq) != SQLITE_OK)
        return -1;
    sqlite3_exec(sq, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
    return sqlite3_exec(sq, SCHEMA, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    sqlite3_close(sq);
    sh_redis_stop(&redis);
    return 0;
}

static lg_verify *open_verify(void) {
    lg_verify *v = NULL;
    strata_buf err = STRATA_BUF_INIT;
    int rc = lg_verify_open(&v, sh_redis_url(redis), db_url, &err);
    if (rc != STRATA_OK)
        print_error("open: %s\n", err.data ? err.data : "?");
    assert_int_equal(rc, STRATA_OK);
    strata_buf_free(&err);
    return v;
}

/* A sale of `stock` with `sold` orders u0..u<sold-1> -> SKU-1.., consistent everywhere. */
static void make_sale(const char *sku, int stock, int sold) {
    char c[256];
    snprintf(c, sizeof c, "SET fs:{%s}:stock %d", sku, stock - sold);
    redis_do(c);
    snprintf(c, sizeof c, "HSET fs:{%s}:meta stock_total %d per_user_limit 1", sku, stock);
    redis_do(c);
    sql("INSERT INTO flashsales VALUES('%s', %d, 0, 0, 1, 0)", sku, stock);
    for (int i = 0; i < sold; i++) {
        snprintf(c, sizeof c, "HSET fs:{%s}:buyers u%d %s-%d", sku, i, sku, i + 1);
        redis_do(c);
        sql("INSERT INTO orders VALUES('%s-%d', '%s', 'u%d', 0)", sku, i + 1, sku, i);
    }
}

static void fs_consistent_sale_passes(void **state) {
    (void)state;
    make_sale("ok1", 5, 3);
    lg_verify *v = open_verify();
    /* u0 saw its order twice (201, then 409 already_purchased with the same id). */
    const char *users[] = {"u0", "u1", "u2", "u0"};
    const char *ids[] = {"ok1-1", "ok1-2", "ok1-3", "ok1-1"};
    lg_fs_seen s = {"ok1", 5, users, ids, 4, true, false, 0, 0};
    assert_true(lg_verify_fs_drain(v, &s, 1, 1000));
    found f = {0};
    assert_int_equal(lg_verify_fs(v, &s, collect, &f), 0);
    assert_int_equal(f.n, 0);
    /* A sold-out sale where a client saw sold_out is consistent too. */
    make_sale("ok2", 2, 2);
    const char *u2[] = {"u0", "u1"};
    const char *i2[] = {"ok2-1", "ok2-2"};
    lg_fs_seen s2 = {"ok2", 2, u2, i2, 2, true, true, 0, 0};
    assert_int_equal(lg_verify_fs(v, &s2, collect, &f), 0);
    /* An incomplete run (timeouts): fewer acknowledged buyers than orders is allowed. */
    lg_fs_seen s3 = {"ok1", 5, users, ids, 2, false, false, 0, 0};
    assert_int_equal(lg_verify_fs(v, &s3, collect, &f), 0);
    /* Three users asked, each got an order (or all would be told sold out): 3 == min(5, 3). */
    lg_fs_seen s4 = {"ok1", 5, users, ids, 4, true, false, 1, 3};
    assert_int_equal(lg_verify_fs(v, &s4, collect, &f), 0);
    assert_string_equal(f.text, "");
    /* A fourth user asked and was neither sold to nor told sold out. */
    s4.asked = 4;
    assert_int_equal(lg_verify_fs(v, &s4, collect, &f), 1);
    assert_non_null(strstr(f.text, "3 orders in db != min(stock 5, users who asked 4)"));
    lg_verify_close(&v);
    assert_null(v);
}

static void fs_violations_are_reported(void **state) {
    (void)state;
    /* Oversold: stock 2, three orders, stock_left -1. */
    make_sale("bad1", 3, 3);
    redis_do("SET fs:{bad1}:stock -1");
    redis_do("HSET fs:{bad1}:meta stock_total 2");
    sql("UPDATE flashsales SET stock_total = 2 WHERE sku = 'bad1'");
    /* Buyers hash disagrees with the database for u1, and has an extra buyer. */
    redis_do("HSET fs:{bad1}:buyers u1 bad1-99 ux bad1-77");
    lg_verify *v = open_verify();
    const char *users[] = {"u0", "u0", "u2", "u9", "u1"};
    const char *ids[] = {"bad1-1", "bad1-5", "bad1-3", "bad1-42", "bad1-3"};
    lg_fs_seen s = {"bad1", 2, users, ids, 5, true, true, 0, 0};
    assert_false(lg_verify_fs_drain(v, &s, 1, 100)); /* bad1-42 never arrives */
    found f = {0};
    int n = lg_verify_fs(v, &s, collect, &f);
    assert_int_equal(n, f.n);
    const char *want[] = {
        "stock_left=-1 outside [0, 2]",                  /* negative stock */
        "OVERSELL: 3 orders for stock 2",                /* oversell */
        "orders in db=3 != stock_total-stock_left=2--1", /* consistent by chance? no: 3 == 3 */
        "acknowledged order bad1-42 (user u9) not in db",
        "order bad1-3 belongs to u2 in db, given to u1",
        "user u0 was given two orders (bad1-1, bad1-5)",
        "acknowledged order bad1-5 (user u0) not in db",
        "HLEN buyers=4 != orders in db=3",
        "user u1: buyers says bad1-99, db says bad1-2",
        "a client was told sold_out but stock_left=-1",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (i == 2)
            continue; /* 2 - (-1) = 3 == 3 orders: not a violation */
        if (!strstr(f.text, want[i]))
            fail_msg("missing violation \"%s\" in:\n%s", want[i], f.text);
    }
    assert_null(strstr(f.text, "!= stock_total-stock_left"));
    /* A sale that was never created in the database. */
    found g = {0};
    lg_fs_seen s2 = {"nosuch", 10, users, ids, 0, true, false, 0, 0};
    assert_true(lg_verify_fs(v, &s2, collect, &g) >= 2);
    assert_non_null(strstr(g.text, "0 rows in flashsales"));
    assert_non_null(strstr(g.text, "missing"));
    /* Stock in Redis differs from what the run created. */
    found h = {0};
    make_sale("bad2", 4, 1);
    const char *u3[] = {"u0"};
    const char *i3[] = {"bad2-1"};
    lg_fs_seen s3 = {"bad2", 5, u3, i3, 1, true, false, 0, 0};
    assert_int_equal(lg_verify_fs(v, &s3, collect, &h), 1);
    assert_non_null(strstr(h.text, "stock_total=4 but the sale was created with 5"));
    /* Complete run, but a buyer's order was never acknowledged to anyone. */
    found k = {0};
    lg_fs_seen s4 = {"bad2", 4, u3, i3, 0, true, false, 0, 0};
    assert_int_equal(lg_verify_fs(v, &s4, collect, &k), 1);
    assert_non_null(strstr(k.text, "0 distinct buyers were acknowledged but db holds 1"));
    lg_verify_close(&v);
}

/*
 * A sharded sale (docs/notes/scenarios.md, "Stock shards") as the server leaves it:
 * users u0..u<n-1> buy in order; a user whose home shard (XXH3 % k) is empty takes
 * from the next shard with stock (taken + orders there, the order id in the home
 * record).  Returns how many took from another shard.
 */
static int make_sharded_sale(const char *sku, int k, int stock, int n) {
    char c[256];
    int left[16], seq[16], takes = 0;
    for (int i = 0; i < k; i++) {
        left[i] = stock / k + (i < stock % k ? 1 : 0);
        seq[i] = 0;
    }
    snprintf(c, sizeof c, "HSET fs:{%s}:meta stock_total %d per_user_limit 1 shards %d", sku, stock,
             k);
    redis_do(c);
    sql("INSERT INTO flashsales VALUES('%s', %d, 0, 0, 1, 0)", sku, stock);
    for (int u = 0; u < n; u++) {
        char user[32];
        snprintf(user, sizeof user, "u%d", u);
        int h = (int)(XXH3_64bits(user, strlen(user)) % (uint64_t)k), j = h;
        for (int t = 0; t < k && left[j] == 0; t++)
            j = (h + t + 1) % k;
        if (left[j] == 0)
            continue; /* sold out: told so */
        left[j]--;
        char id[64];
        snprintf(id, sizeof id, "%s-%d.%d", sku, j, ++seq[j]);
        snprintf(c, sizeof c, "HSET fs:{%s#%d}:orders %s %s", sku, j, id, user);
        redis_do(c);
        snprintf(c, sizeof c, "HSET fs:{%s#%d}:buyers %s %s", sku, h, user, id);
        redis_do(c);
        if (j != h) {
            snprintf(c, sizeof c, "HSET fs:{%s#%d}:taken %s %s", sku, j, user, id);
            redis_do(c);
            takes++;
        }
        sql("INSERT INTO orders VALUES('%s', '%s', '%s', 0)", id, sku, user);
    }
    for (int i = 0; i < k; i++) {
        snprintf(c, sizeof c, "SET fs:{%s#%d}:stock %d", sku, i, left[i]);
        redis_do(c);
    }
    return takes;
}

/* The (user, order id) of every order of a sale in the database, as the clients saw them. */
typedef struct sale_seen {
    char users[64][16], ids[64][64];
    const char *up[64], *ip[64];
    size_t n;
} sale_seen;

static void seen_from_db(const char *sku, sale_seen *ss) {
    char q[160];
    snprintf(q, sizeof q, "SELECT user_id, order_id FROM orders WHERE sku = '%s'", sku);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(sq, q, -1, &st, NULL), SQLITE_OK);
    ss->n = 0;
    while (sqlite3_step(st) == SQLITE_ROW && ss->n < 64) {
        snprintf(ss->users[ss->n], sizeof ss->users[0], "%s", sqlite3_column_text(st, 0));
        snprintf(ss->ids[ss->n], sizeof ss->ids[0], "%s", sqlite3_column_text(st, 1));
        ss->up[ss->n] = ss->users[ss->n];
        ss->ip[ss->n] = ss->ids[ss->n];
        ss->n++;
    }
    sqlite3_finalize(st);
}

static void fs_sharded_sale_passes(void **state) {
    (void)state;
    /* 30 users for 20 units in 4 shards of 5: homes are uneven, so some users take */
    assert_true(make_sharded_sale("sh1", 4, 20, 30) > 0);
    sale_seen ss;
    seen_from_db("sh1", &ss);
    assert_int_equal(ss.n, 20);
    lg_verify *v = open_verify();
    lg_fs_seen s = {"sh1", 20, ss.up, ss.ip, ss.n, true, true, 4, 30};
    assert_true(lg_verify_fs_drain(v, &s, 1, 1000));
    found f = {0};
    assert_int_equal(lg_verify_fs(v, &s, collect, &f), 0);
    assert_string_equal(f.text, "");
    /* stock == users: every user bought; 7 shards, some empty-handed at home */
    assert_true(make_sharded_sale("sh2", 7, 12, 12) > 0);
    seen_from_db("sh2", &ss);
    lg_fs_seen s2 = {"sh2", 12, ss.up, ss.ip, ss.n, true, false, 7, 12};
    assert_int_equal(lg_verify_fs(v, &s2, collect, &f), 0);
    assert_string_equal(f.text, "");
    lg_verify_close(&v);
}

static void fs_sharded_violations_are_reported(void **state) {
    (void)state;
    make_sharded_sale("sh3", 4, 20, 30);
    sale_seen ss;
    seen_from_db("sh3", &ss);
    char c[256], user0[16] = "u0";
    int h0 = (int)(XXH3_64bits(user0, 2) % 4u), other = (h0 + 1) % 4;
    /* a shard's stock negative; another above its share */
    redis_do("SET fs:{sh3#1}:stock -2");
    redis_do("SET fs:{sh3#3}:stock 9");
    /* u0 (a buyer) gets a second unit from another shard */
    snprintf(c, sizeof c, "HSET fs:{sh3#%d}:orders sh3-%d.90 u0", other, other);
    redis_do(c);
    /* a reservation nobody finished */
    snprintf(c, sizeof c, "HSET fs:{sh3#%d}:buyers ux R:2", (int)(XXH3_64bits("ux", 2) % 4u));
    redis_do(c);
    snprintf(c, sizeof c, "ZADD fs:{sh3#%d}:pending 1 ux", (int)(XXH3_64bits("ux", 2) % 4u));
    redis_do(c);
    /* a record outside the user's home shard; a take with no order behind it; an order id
     * naming another shard */
    int hy = (int)(XXH3_64bits("uy", 2) % 4u);
    snprintf(c, sizeof c, "HSET fs:{sh3#%d}:buyers uy sh3-0.77", (hy + 1) % 4);
    redis_do(c);
    int hz = (int)(XXH3_64bits("uz", 2) % 4u);
    snprintf(c, sizeof c, "HSET fs:{sh3#%d}:taken uz sh3-%d.55", (hz + 1) % 4, (hz + 1) % 4);
    redis_do(c);
    redis_do("HSET fs:{sh3#2}:orders sh3-3.99 uw");
    /* a cross-shard order whose take was forgotten (found in the consistent sale's data) */
    char taker[16] = "", took[64] = "";
    int tshard = -1;
    for (int i = 0; i < 4 && !taker[0]; i++) {
        char *t = sh_redis_cmd(sh_redis_port(redis), "HGETALL fs:{sh3#%d}:taken", i);
        assert_non_null(t);
        if (*t) {
            snprintf(taker, sizeof taker, "%.*s", (int)strcspn(t, "\n"), t);
            const char *id = t + strcspn(t, "\n") + 1;
            snprintf(took, sizeof took, "%.*s", (int)strcspn(id, "\n"), id);
            tshard = i;
        }
        free(t);
    }
    assert_true(taker[0] != '\0');
    snprintf(c, sizeof c, "HDEL fs:{sh3#%d}:taken %s", tshard, taker);
    redis_do(c);
    lg_verify *v = open_verify();
    lg_fs_seen s = {"sh3", 20, ss.up, ss.ip, ss.n, true, true, 8, 30};
    assert_false(lg_verify_fs_drain(v, &s, 1, 100)); /* the reservation stays pending */
    found f = {0};
    int n = lg_verify_fs(v, &s, collect, &f);
    assert_int_equal(n, f.n);
    char w[8][200];
    snprintf(w[0], sizeof w[0], "user u0 holds 2 orders across shards");
    snprintf(w[1], sizeof w[1], "user ux: reservation R:2 left unconfirmed in shard %d",
             (int)(XXH3_64bits("ux", 2) % 4u));
    snprintf(w[2], sizeof w[2], "user uy has a buyer record in shard %d, home is %d", (hy + 1) % 4,
             hy);
    snprintf(w[3], sizeof w[3], "shard %d: taken uz -> sh3-%d.55 not in its orders", (hz + 1) % 4,
             (hz + 1) % 4);
    snprintf(w[4], sizeof w[4], "user %s: order %s from shard %d not in its taken hash", taker,
             took, tshard);
    const char *want[] = {
        w[4],
        "shard 1: stock_left=-2 is negative",
        "shard 3: stock_left=9 above its share 5",
        "shards=4, expected 8 (--shards)",
        "shard 2 holds order sh3-3.99 of another shard",
        "1 reservations still pending",
        "user uy: buyer record sh3-0.77",
        w[0],
        w[1],
        w[2],
        w[3],
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(f.text, want[i]))
            fail_msg("missing violation \"%s\" in:\n%s", want[i], f.text);
    lg_verify_close(&v);
}

static void fs_drain_sees_late_rows(void **state) {
    (void)state;
    make_sale("late", 10, 1);
    /* Redis acknowledged a second order; the persister has not written it yet. */
    redis_do("SET fs:{late}:stock 8");
    redis_do("HSET fs:{late}:buyers u1 late-2");
    lg_verify *v = open_verify();
    const char *users[] = {"u0", "u1"};
    const char *ids[] = {"late-1", "late-2"};
    lg_fs_seen s = {"late", 10, users, ids, 2, true, false, 0, 0};
    assert_false(lg_verify_fs_drain(v, &s, 1, 150));
    found f = {0};
    assert_true(lg_verify_fs(v, &s, collect, &f) > 0);
    sql("INSERT INTO orders VALUES('late-2', 'late', 'u1', 0)");
    assert_true(lg_verify_fs_drain(v, &s, 1, 1000));
    found g = {0};
    assert_int_equal(lg_verify_fs(v, &s, collect, &g), 0);
    lg_verify_close(&v);
}

/* With requests of unknown outcome a server may still be recording them: the drain then
 * also waits until the records have not changed for the settle time (lower bounds only:
 * nothing here depends on the machine's speed). */
static void fs_drain_settles_when_outcomes_are_unknown(void **state) {
    (void)state;
    make_sale("stl", 10, 2);
    lg_verify *v = open_verify();
    const char *users[] = {"u0", "u1"};
    const char *ids[] = {"stl-1", "stl-2"};
    lg_fs_seen s = {"stl", 10, users, ids, 2, false, false, 0, 0};
    assert_true(lg_verify_fs_drain(v, &s, 1, 1000)); /* no settle: at once */
    lg_verify_set_settle(v, 300);
    assert_false(lg_verify_fs_drain(v, &s, 1, 100)); /* consistent, but not quiet for 300 ms */
    uint64_t t0 = mono_ms();
    assert_true(lg_verify_fs_drain(v, &s, 1, 5000));
    assert_true(mono_ms() - t0 >= 300);
    /* a request the client gave up on lands now: the checks must wait for it */
    redis_do("SET fs:{stl}:stock 7");
    redis_do("HSET fs:{stl}:buyers u2 stl-3");
    sql("INSERT INTO orders VALUES('stl-3', 'stl', 'u2', 0)");
    t0 = mono_ms();
    assert_true(lg_verify_fs_drain(v, &s, 1, 5000));
    assert_true(mono_ms() - t0 >= 300);
    found f = {0};
    assert_int_equal(lg_verify_fs(v, &s, collect, &f), 0);
    lg_verify_close(&v);
}

/* A packet of `total` in `count` shares: grabs (user, amount) and the shares left. */
static void make_packet(const char *id, int total, int count, const char *status, int refunded,
                        const int *grabs, int ngrabs, const int *left, int nleft) {
    char c[256];
    int gsum = 0;
    for (int i = 0; i < ngrabs; i++) {
        snprintf(c, sizeof c, "HSET rp:{%s}:grabs g%d %d", id, i, grabs[i]);
        redis_do(c);
        sql("INSERT INTO grabs VALUES('%s:g%d', '%s', 'g%d', %d, 0)", id, i, id, i, grabs[i]);
        gsum += grabs[i];
    }
    for (int i = 0; i < nleft; i++) {
        snprintf(c, sizeof c, "RPUSH rp:{%s}:shares %d", id, left[i]);
        redis_do(c);
    }
    snprintf(c, sizeof c, "HSET rp:{%s}:meta total_cents %d count %d status %s", id, total, count,
             status);
    redis_do(c);
    snprintf(c, sizeof c, "HSET rp:{%s}:meta grabbed_cents %d grabbed_count %d refunded_cents %d",
             id, gsum, ngrabs, refunded);
    redis_do(c);
    sql("INSERT INTO redpackets VALUES('%s', %d, %d, 0, '%s', %d, 0)", id, total, count, status,
        refunded);
}

static void rp_consistent_packets_pass(void **state) {
    (void)state;
    int grabs[] = {30, 40}, left[] = {10, 20};
    make_packet("00000000000000a1", 100, 4, "open", 0, grabs, 2, left, 2);
    int grabs2[] = {30, 40, 1};
    make_packet("00000000000000a2", 100, 5, "expired", 29, grabs2, 3, NULL, 0);
    lg_verify *v = open_verify();
    const char *users[] = {"g0", "g0", "g1"};
    int64_t amounts[] = {30, 30, 40};
    lg_rp_seen s[2] = {{"00000000000000a1", 100, 4, users, amounts, 3, true, false},
                       {"00000000000000a2", 100, 5, users, amounts, 3, false, true}};
    assert_true(lg_verify_rp_drain(v, s, 2, 1000));
    found f = {0};
    assert_int_equal(lg_verify_rp(v, &s[0], collect, &f), 0);
    assert_int_equal(lg_verify_rp(v, &s[1], collect, &f), 0);
    assert_string_equal(f.text, "");
    lg_verify_close(&v);
}

static void rp_violations_are_reported(void **state) {
    (void)state;
    /* Open packet: a zero share, sums off by one, and a client told two amounts. */
    int grabs[] = {30, 0, 40}, left[] = {10, 21};
    make_packet("00000000000000b1", 100, 4, "open", 0, grabs, 3, left, 2);
    redis_do("HSET rp:{00000000000000b1}:grabs g2 41"); /* redis differs from the db */
    lg_verify *v = open_verify();
    const char *users[] = {"g0", "g0", "g2", "g7"};
    int64_t amounts[] = {30, 31, 40, 5};
    lg_rp_seen s = {"00000000000000b1", 100, 4, users, amounts, 4, true, true};
    found f = {0};
    int n = lg_verify_rp(v, &s, collect, &f);
    assert_int_equal(n, f.n);
    const char *want[] = {
        "user g1 has a share of 0 cents in db",
        "bad share in Redis grabs for g1",
        "open: grabbed 71 + ungrabbed 31 != total 100 (redis)",
        "open: 3 grabs + 2 shares left != count 4",
        "a client was told gone but 2 shares are left",
        "user g2: redis 41 cents, db 40 cents",
        "meta grabbed_cents=70, sum of grabs=71",
        "user g0 was given 30 and 31 cents",
        "acknowledged grab of g7 (5 cents) not in db",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(f.text, want[i]))
            fail_msg("missing violation \"%s\" in:\n%s", want[i], f.text);
    assert_null(strstr(f.text, "distinct")); /* 3 acknowledged grabbers, 3 grabs: as it should */
    /* Expired packet whose refund does not make up the total; more grabs than shares. */
    int grabs2[] = {50, 40, 5};
    make_packet("00000000000000b2", 100, 2, "expired", 10, grabs2, 3, NULL, 0);
    lg_rp_seen s2 = {"00000000000000b2", 100, 2, NULL, NULL, 0, false, false};
    found g = {0};
    assert_true(lg_verify_rp(v, &s2, collect, &g) >= 3);
    assert_non_null(strstr(g.text, "3 grabs for 2 shares"));
    assert_non_null(strstr(g.text, "expired: grabs 95 + refunded 10 != total 100 (db)"));
    assert_non_null(strstr(g.text, "expired: grabbed 95 + refunded 10 != total 100 (redis)"));
    /* A packet only in Redis: never persisted. */
    found h = {0};
    lg_rp_seen s3 = {"00000000000000ff", 100, 2, NULL, NULL, 0, true, false};
    assert_false(lg_verify_rp_drain(v, &s3, 1, 0) && false);
    assert_true(lg_verify_rp(v, &s3, collect, &h) >= 1);
    assert_non_null(strstr(h.text, "0 rows in redpackets"));
    lg_verify_close(&v);
}

static void rp_drain_waits_for_the_refund(void **state) {
    (void)state;
    int grabs[] = {60};
    make_packet("00000000000000c1", 100, 2, "open", 0, grabs, 1, NULL, 0);
    /* Redis expired it and refunded 40; the database still says open. */
    redis_do("HSET rp:{00000000000000c1}:meta status expired refunded_cents 40");
    lg_verify *v = open_verify();
    lg_rp_seen s = {"00000000000000c1", 100, 2, NULL, NULL, 0, false, false};
    assert_false(lg_verify_rp_drain(v, &s, 1, 100));
    sql("UPDATE redpackets SET status = 'expired', refunded_cents = 40 WHERE id = "
        "'00000000000000c1'");
    assert_true(lg_verify_rp_drain(v, &s, 1, 1000));
    found f = {0};
    assert_int_equal(lg_verify_rp(v, &s, collect, &f), 0);
    lg_verify_close(&v);
}

static void bad_urls_are_refused(void **state) {
    (void)state;
    lg_verify *v = (lg_verify *)1;
    strata_buf err = STRATA_BUF_INIT;
    assert_int_equal(lg_verify_open(&v, "nope://x", db_url, &err), STRATA_EINVAL);
    assert_null(v);
    strata_buf_reset(&err);
    assert_int_equal(lg_verify_open(&v, sh_redis_url(redis), "mysql://x", &err), STRATA_EINVAL);
    assert_non_null(strstr(err.data, "sqlite"));
    strata_buf_reset(&err);
    char missing[1200];
    snprintf(missing, sizeof missing, "sqlite://%s/none/x.db", sh_tmpdir());
    assert_int_equal(lg_verify_open(&v, sh_redis_url(redis), missing, &err), STRATA_EUNAVAIL);
    strata_buf_reset(&err);
    /* Redis not listening (port 1). */
    assert_int_equal(lg_verify_open(&v, "redis://127.0.0.1:1", db_url, &err), STRATA_EUNAVAIL);
    assert_null(v);
    strata_buf_free(&err);
}

int main(void) {
    sh_init(100);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fs_consistent_sale_passes),
        cmocka_unit_test(fs_violations_are_reported),
        cmocka_unit_test(fs_drain_sees_late_rows),
        cmocka_unit_test(fs_drain_settles_when_outcomes_are_unknown),
        cmocka_unit_test(fs_sharded_sale_passes),
        cmocka_unit_test(fs_sharded_violations_are_reported),
        cmocka_unit_test(rp_consistent_packets_pass),
        cmocka_unit_test(rp_violations_are_reported),
        cmocka_unit_test(rp_drain_waits_for_the_refund),
        cmocka_unit_test(bad_urls_are_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
