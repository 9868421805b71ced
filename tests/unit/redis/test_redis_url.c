/*
 * test_redis_url.c: unit tests of the Redis client's pure parts: URL parsing
 * (valid forms and every refusal), key slots with hash tags (values from the
 * Redis Cluster specification), SHA1 of scripts (values from redis-cli
 * SCRIPT LOAD), RESP formatting/splitting and key extraction for routing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "redis/redis_priv.h"
#include "strata/alloc.h"
#include "strata/redis.h"

static void test_url_standalone(void **state) {
    (void)state;
    strata_redis_url u;
    assert_int_equal(strata_redis_url_parse("redis://127.0.0.1:6380/3", &u, NULL), STRATA_OK);
    assert_int_equal(u.mode, STRATA_REDIS_STANDALONE);
    assert_int_equal(u.nhosts, 1);
    assert_string_equal(u.hosts[0].host, "127.0.0.1");
    assert_int_equal(u.hosts[0].port, 6380);
    assert_int_equal(u.db, 3);
    assert_null(u.password);
    strata_redis_url_free(&u);

    assert_int_equal(strata_redis_url_parse("redis://app:s%40cret@cache.local", &u, NULL),
                     STRATA_OK);
    assert_string_equal(u.user, "app");
    assert_string_equal(u.password, "s@cret");
    assert_int_equal(u.hosts[0].port, 6379);
    strata_buf b = STRATA_BUF_INIT;
    assert_int_equal(strata_redis_url_format(&u, &b), STRATA_OK);
    assert_string_equal(b.data, "redis://app:***@cache.local:6379");
    strata_buf_free(&b);
    strata_redis_url_free(&u);

    assert_int_equal(strata_redis_url_parse("redis://:pw@[::1]:7000", &u, NULL), STRATA_OK);
    assert_null(u.user);
    assert_string_equal(u.password, "pw");
    assert_string_equal(u.hosts[0].host, "::1");
    assert_int_equal(u.hosts[0].port, 7000);
    strata_redis_url_free(&u);

    assert_int_equal(strata_redis_url_parse("unix:///tmp/r.sock?db=2", &u, NULL), STRATA_OK);
    assert_string_equal(u.unix_path, "/tmp/r.sock");
    assert_int_equal(u.db, 2);
    strata_redis_url_free(&u);
}

static void test_url_sentinel_cluster(void **state) {
    (void)state;
    strata_redis_url u;
    assert_int_equal(strata_redis_url_parse("redis-sentinel://a:1,b,c:3/mymaster", &u, NULL),
                     STRATA_OK);
    assert_int_equal(u.mode, STRATA_REDIS_SENTINEL);
    assert_int_equal(u.nhosts, 3);
    assert_int_equal(u.hosts[1].port, 26379);
    assert_string_equal(u.master_name, "mymaster");
    strata_redis_url_free(&u);

    assert_int_equal(strata_redis_url_parse("redis-cluster://u:p@h1:7000,h2:7001", &u, NULL),
                     STRATA_OK);
    assert_int_equal(u.mode, STRATA_REDIS_CLUSTER);
    assert_int_equal(u.nhosts, 2);
    assert_string_equal(u.hosts[1].host, "h2");
    assert_int_equal(u.hosts[1].port, 7001);
    assert_string_equal(u.user, "u");
    strata_redis_url_free(&u);
}

static void test_url_refusals(void **state) {
    (void)state;
    static const char *const bad[] = {
        "",
        "http://x",
        "redis://",
        "redis://h:0",
        "redis://h:65536",
        "redis://h:12a",
        "redis://h/x",
        "redis://h/70000",
        "redis://a,b",
        "redis://h o",
        "redis://h\n",
        "redis-sentinel://h1,h2",
        "redis-sentinel://h1/bad name",
        "redis-sentinel://h1/",
        "redis-cluster://h1/0",
        "unix://",
        "unix://relative",
        "unix:///p?x=1",
        "redis://u:%zz@h",
        "redis://u:%00@h",
        "redis://[::1",
        "redis://[::1]x",
        "redis://h:",
        "redis://,h",
        "redis://h!",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        strata_redis_url u;
        strata_buf err = STRATA_BUF_INIT;
        int rc = strata_redis_url_parse(bad[i], &u, &err);
        if (rc != STRATA_EINVAL)
            fail_msg("accepted bad url '%s' (rc %d)", bad[i], rc);
        assert_non_null(err.data);
        assert_non_null(strstr(err.data, "bad redis url"));
        assert_null(u.hosts);
        strata_buf_free(&err);
    }
    char longurl[5000];
    memset(longurl, 'a', sizeof(longurl) - 1);
    memcpy(longurl, "redis://", 8);
    longurl[sizeof(longurl) - 1] = '\0';
    strata_redis_url u;
    assert_int_equal(strata_redis_url_parse(longurl, &u, NULL), STRATA_EINVAL);
    assert_int_equal(strata_redis_url_parse(NULL, &u, NULL), STRATA_EINVAL);
}

static void test_url_oom_sweep(void **state) {
    (void)state;
    /* Fail each allocation in turn: the parser must return ENOMEM and leak nothing. */
    for (uint64_t n = 1; n < 40; n++) {
        strata_redis_url u;
        strata_alloc_fail_at(n, 0);
        int rc = strata_redis_url_parse("redis-sentinel://u:p@h1:1,h2:2,h3:3/m", &u, NULL);
        strata_alloc_fail_at(0, 0);
        if (rc == STRATA_OK) {
            strata_redis_url_free(&u);
            break;
        }
        assert_int_equal(rc, STRATA_ENOMEM);
    }
}

static void test_key_slot(void **state) {
    (void)state;
    /* Values from the Redis Cluster spec / CLUSTER KEYSLOT. */
    assert_int_equal(strata_redis_key_slot("123456789", 9), 0x31C3 & 16383); /* CRC16 check value */
    assert_int_equal(strata_redis_key_slot("foo", 3), 12182);
    assert_int_equal(strata_redis_key_slot("bar", 3), 5061);
    assert_int_equal(strata_redis_key_slot("{user1000}.following", 20),
                     strata_redis_key_slot("user1000", 8));
    assert_int_equal(strata_redis_key_slot("foo{}{bar}", 10),
                     strata_redis_key_slot("foo{}{bar}", 10));
    /* an empty tag hashes the whole key */
    assert_int_not_equal(strata_redis_key_slot("foo{}{bar}", 10), strata_redis_key_slot("bar", 3));
    assert_int_equal(strata_redis_key_slot("foo{{bar}}zap", 13), strata_redis_key_slot("{bar", 4));
    assert_int_equal(strata_redis_key_slot("foo{bar}{zap}", 13), strata_redis_key_slot("bar", 3));
}

static void test_sha1(void **state) {
    (void)state;
    char hex[41];
    redis__sha1_hex("", 0, hex);
    assert_string_equal(hex, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    redis__sha1_hex("abc", 3, hex);
    assert_string_equal(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
    /* redis-cli SCRIPT LOAD "return 1" */
    redis__sha1_hex("return 1", 8, hex);
    assert_string_equal(hex, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    /* two blocks */
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    redis__sha1_hex(m, strlen(m), hex);
    assert_string_equal(hex, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    strata_redis_script s;
    assert_int_equal(strata_redis_script_init(&s, "one", "return 1", 8), STRATA_OK);
    assert_string_equal(s.sha1, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    assert_int_equal(strata_redis_script_init(&s, "x", "", 0), STRATA_EINVAL);
    assert_int_equal(strata_redis_script_embedded(&s, strata_lib_lua_table, "nope.lua"),
                     STRATA_ENOTFOUND);
    assert_int_equal(strata_redis_script_embedded(&s, strata_lib_lua_table, "stream_xadd.lua"),
                     STRATA_OK);
}

static int slot_of(const char **a, int n) {
    char *c;
    size_t l;
    redis__format_argv(&c, &l, n, a, NULL);
    int s = redis__cmd_slot(c, l, NULL);
    strata_free(c);
    return s;
}

static void test_format_split_slot(void **state) {
    (void)state;
    const char *argv[] = {"SET", "k\r\ney", "v"};
    size_t lens[] = {3, 5, 1};
    char *cmd;
    size_t len;
    assert_int_equal(redis__format_argv(&cmd, &len, 3, argv, lens), STRATA_OK);
    assert_string_equal(cmd, "*3\r\n$3\r\nSET\r\n$5\r\nk\r\ney\r\n$1\r\nv\r\n");
    const char *out[4];
    size_t ol[4];
    assert_int_equal(redis__split(cmd, len, out, ol, 4), 3);
    assert_int_equal(ol[1], 5);
    assert_memory_equal(out[1], "k\r\ney", 5);
    assert_int_equal(redis__split(cmd, len - 1, out, ol, 4), -1); /* truncated */
    uint32_t h;
    assert_int_equal(redis__cmd_slot(cmd, len, &h), (int)strata_redis_key_slot("k\r\ney", 5));
    strata_free(cmd);

#define SLOT_OF(...)                       \
    slot_of((const char *[]){__VA_ARGS__}, \
            (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(char *)))
    int foo = (int)strata_redis_key_slot("foo", 3);
    assert_int_equal(SLOT_OF("get", "foo"), foo);
    assert_int_equal(SLOT_OF("PING"), -1);
    assert_int_equal(SLOT_OF("MGET", "{a}1", "{a}2", "{a}3"), (int)strata_redis_key_slot("a", 1));
    assert_int_equal(SLOT_OF("MGET", "foo", "bar"), STRATA_ECROSSSLOT);
    assert_int_equal(SLOT_OF("MSET", "{t}x", "foo", "{t}y", "bar"),
                     (int)strata_redis_key_slot("t", 1));
    assert_int_equal(SLOT_OF("EVALSHA", "abc", "2", "{t}1", "{t}2", "foo"),
                     (int)strata_redis_key_slot("t", 1));
    assert_int_equal(SLOT_OF("EVALSHA", "abc", "2", "foo", "bar"), STRATA_ECROSSSLOT);
    assert_int_equal(SLOT_OF("EVALSHA", "abc", "0", "foo"), -1);
    assert_int_equal(SLOT_OF("EVALSHA", "abc", "5", "foo"), STRATA_EINVAL);
    assert_int_equal(SLOT_OF("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "foo", ">"),
                     foo);
    assert_int_equal(SLOT_OF("XGROUP", "CREATE", "foo", "g", "0"), foo);
    assert_int_equal(SLOT_OF("BLPOP", "foo", "{foo}x", "0"), foo);
    assert_int_equal(SLOT_OF("BLPOP", "foo", "bar", "0"), STRATA_ECROSSSLOT);
    /* every table entry must be found (the table is binary-searched) */
    static const char *const names[] = {
        "APPEND", "DEL",       "EXISTS", "GET",  "HSET",    "INCR",         "LPUSH",    "MGET",
        "MSET",   "SET",       "SETEX",  "XACK", "XADD",    "XAUTOCLAIM",   "XTRIM",    "ZADD",
        "ZSCORE", "ZREVRANGE", "UNLINK", "TTL",  "PEXPIRE", "HINCRBYFLOAT", "GETRANGE", "SREM"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *a[] = {names[i], "foo", "{foo}x", "{foo}y"};
        char *c;
        size_t l;
        redis__format_argv(&c, &l, 4, a, NULL);
        int s = redis__cmd_slot(c, l, NULL);
        strata_free(c);
        if (s != foo)
            fail_msg("%s not routed by its key (%d)", names[i], s);
    }
}

static void test_error_map(void **state) {
    (void)state;
    static const struct {
        const char *e;
        int st;
    } m[] = {
        {"NOAUTH Authentication required.", STRATA_EAUTH},
        {"WRONGPASS invalid username-password pair", STRATA_EAUTH},
        {"NOPERM this user has no permissions", STRATA_EPERM},
        {"LOADING Redis is loading the dataset in memory", STRATA_ERETRY},
        {"READONLY You can't write against a read only replica.", STRATA_ERETRY},
        {"MASTERDOWN Link with MASTER is down", STRATA_ERETRY},
        {"CLUSTERDOWN The cluster is down", STRATA_ERETRY},
        {"TRYAGAIN Multiple keys request during rehashing of slot", STRATA_ERETRY},
        {"CROSSSLOT Keys in request don't hash to the same slot", STRATA_ECROSSSLOT},
        {"BUSYGROUP Consumer Group name already exists", STRATA_EEXIST},
        {"BACKPRESSURE stream full", STRATA_EBACKPRESSURE},
        {"ERR Error running script: BACKPRESSURE x", STRATA_EBACKPRESSURE},
        {"WRONGTYPE Operation against a key", STRATA_EPROTO},
        {"LOADINGX", STRATA_EPROTO},
    };
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
        assert_int_equal(redis__map_error(m[i].e, strlen(m[i].e)), m[i].st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_standalone),    cmocka_unit_test(test_url_sentinel_cluster),
        cmocka_unit_test(test_url_refusals),      cmocka_unit_test(test_url_oom_sweep),
        cmocka_unit_test(test_key_slot),          cmocka_unit_test(test_sha1),
        cmocka_unit_test(test_format_split_slot), cmocka_unit_test(test_error_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
