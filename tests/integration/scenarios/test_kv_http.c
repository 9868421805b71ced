/*
 * test_kv_http.c: the key-value service (src/scenarios/kv/kv.c) end to end:
 * `strata serve` processes on a real redis-server and a real PostgreSQL
 * shared by two servers.
 *
 *   api_and_validation        every status of GET/PUT/DELETE, bad namespaces
 *                             and keys (invalid UTF-8, NUL, too long), 409 on a
 *                             stale expected_version, UTF-8 keys and escaped
 *                             values round-trip
 *   put_visible_on_other_server  a PUT on server A replaces the value server B
 *                             holds in its L1 (L1 TTL 60 s, so only the relay +
 *                             tracking can do it), polled with a deadline
 *   stampede_two_servers_one_load  concurrent GETs of one cold key on two
 *                             servers while PostgreSQL is paused (the loader is
 *                             held until every GET has reached the tier and one
 *                             server waits on the other's lease), then resumed:
 *                             exactly one database load across both
 *                             (strata_tier_db_loads_total), every GET 200
 *   waiters_give_up_then_breaker  a waiter on another server's lease answers
 *                             503 busy with Retry-After at its deadline; with
 *                             the database down, 503 unavailable, then 503
 *                             breaker_open once the breaker opened
 */
/* ctest-labels: redis postgres scenarios */
/* ctest-timeout: 240 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness/harness.h"
#include "strata/status.h"

static sh_redis *redis;
static sh_pg *pg;

static int setup(void **state) {
    (void)state;
    if (sh_redis_start(&redis, NULL) != STRATA_OK)
        return -1;
    return sh_pg_start(&pg);
}

static int teardown(void **state) {
    (void)state;
    sh_redis_stop(&redis);
    sh_pg_stop(&pg);
    return 0;
}

/* A server on the shared Redis and PostgreSQL with up to 6 extra flags. */
static sh_serve *serve(const char *const *extra) {
    const char *args[16] = {"--redis", sh_redis_url(redis), "--db", sh_pg_url(pg)};
    int n = 4;
    for (int i = 0; extra && extra[i] && n < 15; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    sh_serve *s = NULL;
    assert_int_equal(sh_serve_start(&s, args), STRATA_OK);
    return s;
}

static char *expect(uint16_t port, const char *method, const char *path, const char *body,
                    bool admin, int want) {
    sh_http_resp r;
    int got = sh_http(port, method, path, body, admin, 10000, &r);
    if (got != want)
        fail_msg("%s %s %s: want %d got %d: %s", method, path, body ? body : "", want, got,
                 r.body ? r.body : "(no response)");
    char *b = strdup(r.body ? r.body : "");
    sh_http_free(&r);
    return b;
}

static void expect_code(uint16_t port, const char *method, const char *path, const char *body,
                        bool admin, int want, const char *code) {
    char *b = expect(port, method, path, body, admin, want);
    char needle[96];
    snprintf(needle, sizeof needle, "\"code\":\"%s\"", code);
    if (!strstr(b, needle))
        fail_msg("%s %s: want code %s in %s", method, path, code, b);
    free(b);
}

static long long field(const char *json, const char *name) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":", name);
    const char *p = strstr(json, needle);
    if (!p)
        fail_msg("no field %s in %s", name, json);
    return strtoll(p + strlen(needle), NULL, 10);
}

/* GET until it answers `want_status` (and, for 200, version `want_ver`), or the deadline. */
typedef struct poll_get {
    uint16_t port;
    const char *path;
    int want_status;
    long long want_ver;
    char *last;
} poll_get;

static bool poll_get_pred(void *ctx) {
    poll_get *p = ctx;
    sh_http_resp r;
    int st = sh_http(p->port, "GET", p->path, NULL, false, 5000, &r);
    free(p->last);
    p->last = strdup(r.body ? r.body : "");
    bool ok = st == p->want_status;
    if (ok && st == 200 && p->want_ver > 0) {
        const char *v = strstr(p->last, "\"version\":");
        ok = v && strtoll(v + 10, NULL, 10) == p->want_ver;
    }
    sh_http_free(&r);
    return ok;
}

static char *await_get(uint16_t port, const char *path, int status, long long ver) {
    poll_get p = {port, path, status, ver, NULL};
    if (!sh_wait_until(10000, 20, poll_get_pred, &p))
        fail_msg("GET %s never answered %d (version %lld); last: %s", path, status, ver,
                 p.last ? p.last : "");
    return p.last;
}

/* The sum of a metric's samples whose label text contains `label` ("" = all). */
static long long metric(uint16_t port, const char *name, const char *label) {
    sh_http_resp r;
    int st = sh_http(port, "GET", "/metrics", NULL, false, 5000, &r);
    if (st != 200)
        fail_msg("GET /metrics: %d", st);
    long long sum = 0;
    size_t nl = strlen(name);
    for (const char *line = r.body; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > nl && strncmp(line, name, nl) == 0 && (line[nl] == '{' || line[nl] == ' ')) {
            const char *sp = memchr(line, ' ', len);
            char lab[256] = "";
            if (line[nl] == '{' && sp)
                snprintf(lab, sizeof lab, "%.*s", (int)(sp - line - nl), line + nl);
            while (sp && memchr(sp + 1, ' ', len - (size_t)(sp + 1 - line)))
                sp = memchr(sp + 1, ' ', len - (size_t)(sp + 1 - line));
            if (sp && strstr(lab, label))
                sum += strtoll(sp + 1, NULL, 10);
        }
        line = end ? end + 1 : NULL;
    }
    sh_http_free(&r);
    return sum;
}

/* The relay ran for (ns, key) at version `ver` (the Redis hash holds minver >= ver). */
typedef struct relay_wait {
    const char *hkey;
    long long ver;
} relay_wait;

static bool relayed(void *ctx) {
    relay_wait *w = ctx;
    char *v = sh_redis_cmd(sh_redis_port(redis), "HGET %s minver", w->hkey);
    bool ok = v && strtoll(v, NULL, 10) >= w->ver;
    free(v);
    return ok;
}

static void await_relay(const char *hkey, long long ver) {
    relay_wait w = {hkey, ver};
    if (!sh_wait_until(10000, 10, relayed, &w))
        fail_msg("the outbox relay never invalidated %s at version %lld", hkey, ver);
}

/* ---- tests ------------------------------------------------------------------------- */

static void api_and_validation(void **state) {
    (void)state;
    const char *extra[] = {"--kv-namespaces", "default,users", NULL};
    sh_serve *s = serve(extra);
    uint16_t p = sh_serve_port(s);

    /* writes need the admin token; bodies are checked */
    expect_code(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"x\"}", false, 401, "unauthorized");
    expect_code(p, "PUT", "/v1/kv/users/alice", "{\"value\":1}", true, 400, "invalid_field");
    expect_code(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"x\",\"extra\":1}", true, 400,
                "invalid_field");
    expect_code(p, "PUT", "/v1/kv/users/alice", "{}", true, 400, "invalid_field");
    expect_code(p, "PUT", "/v1/kv/users/alice", "[\"x\"]", true, 400, "invalid_field");
    expect_code(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"x\",\"expected_version\":-1}", true,
                400, "invalid_field");
    expect_code(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"x\"", true, 400, "invalid_json");
    expect_code(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"a\\u0000b\"}", true, 400,
                "invalid_json");

    /* namespaces and keys */
    expect_code(p, "GET", "/v1/kv/nope/alice", NULL, false, 404, "unknown_namespace");
    expect_code(p, "GET", "/v1/kv/a:b/alice", NULL, false, 400, "invalid_namespace");
    expect_code(p, "GET", "/v1/kv/a%7Bb/alice", NULL, false, 400, "invalid_namespace");
    expect_code(p, "GET", "/v1/kv/users/%FF", NULL, false, 400, "invalid_key");
    expect_code(p, "GET", "/v1/kv/users/%C0%AF", NULL, false, 400, "invalid_key"); /* overlong */
    expect_code(p, "GET", "/v1/kv/users/%ED%A0%80", NULL, false, 400,
                "invalid_key"); /* surrogate */
    expect_code(p, "GET", "/v1/kv/users/a%00b", NULL, false, 400, "bad_request");
    expect_code(p, "PUT", "/v1/kv/users/%FF", "{\"value\":\"x\"}", true, 400, "invalid_key");
    char longpath[1200];
    int n = snprintf(longpath, sizeof longpath, "/v1/kv/users/");
    memset(longpath + n, 'k', 1025);
    longpath[n + 1025] = '\0';
    expect_code(p, "GET", longpath, NULL, false, 400, "invalid_key");
    longpath[n + 1024] = '\0'; /* exactly the limit: a valid (absent) key */
    expect_code(p, "GET", longpath, NULL, false, 404, "not_found");
    expect_code(p, "GET", "/v1/kv/users/absent", NULL, false, 404, "not_found");

    /* create, read, conditional update, conflict */
    char *b = expect(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"v1\",\"expected_version\":0}",
                     true, 200);
    assert_int_equal(field(b, "version"), 1);
    free(b);
    expect_code(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"again\",\"expected_version\":0}",
                true, 409, "conflict");
    b = await_get(p, "/v1/kv/users/alice", 200, 1);
    assert_non_null(strstr(b, "\"ns\":\"users\",\"key\":\"alice\",\"value\":\"v1\",\"version\":1"));
    free(b);
    b = expect(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"v2\",\"expected_version\":1}", true,
               200);
    assert_int_equal(field(b, "version"), 2);
    free(b);
    expect_code(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"v3\",\"expected_version\":1}", true,
                409, "conflict");
    b = await_get(p, "/v1/kv/users/alice", 200, 2);
    assert_non_null(strstr(b, "\"value\":\"v2\""));
    free(b);
    /* the same key in another namespace is another key */
    expect_code(p, "GET", "/v1/kv/default/alice", NULL, false, 404, "not_found");

    /* UTF-8 keys and values needing escapes round-trip */
    b = expect(p, "PUT", "/v1/kv/users/caf%C3%A9%2F1", "{\"value\":\"q\\\"b\\\\s\\n\\u00e9\"}",
               true, 200);
    free(b);
    b = await_get(p, "/v1/kv/users/caf%C3%A9%2F1", 200, 1);
    assert_non_null(strstr(b, "\"key\":\"caf\xC3\xA9/1\""));
    assert_non_null(strstr(b, "\"value\":\"q\\\"b\\\\s\\n\xC3\xA9\""));
    free(b);

    /* delete: conditional, then gone, then 404 */
    expect_code(p, "DELETE", "/v1/kv/users/alice?expected_version=abc", NULL, true, 400,
                "invalid_field");
    expect_code(p, "DELETE", "/v1/kv/users/alice", NULL, false, 401, "unauthorized");
    expect_code(p, "DELETE", "/v1/kv/users/alice?expected_version=1", NULL, true, 409, "conflict");
    b = expect(p, "DELETE", "/v1/kv/users/alice?expected_version=2", NULL, true, 200);
    assert_int_equal(field(b, "version"), 3);
    free(b);
    free(await_get(p, "/v1/kv/users/alice", 404, 0));
    expect_code(p, "DELETE", "/v1/kv/users/alice", NULL, true, 404, "not_found");
    /* a PUT after a delete continues the version sequence */
    b = expect(p, "PUT", "/v1/kv/users/alice", "{\"value\":\"back\",\"expected_version\":0}", true,
               200);
    assert_int_equal(field(b, "version"), 4);
    free(b);
    free(await_get(p, "/v1/kv/users/alice", 200, 4));
    assert_int_equal(sh_serve_stop(&s), 0);
}

static void put_visible_on_other_server(void **state) {
    (void)state;
    const char *extra[] = {"--kv-namespaces", "xs", "--kv-l1-ttl", "60s", NULL};
    sh_serve *a = serve(extra), *b = serve(extra);
    uint16_t pa = sh_serve_port(a), pb = sh_serve_port(b);
    char *r = expect(pa, "PUT", "/v1/kv/xs/item", "{\"value\":\"one\"}", true, 200);
    free(r);
    free(await_get(pb, "/v1/kv/xs/item", 200, 1));
    /* B now serves version 1 from its L1 (60 s TTL); the L1's own counters are
     * published lazily, so the response header tells where the answer came from */
    int l1_hits = 0;
    for (int i = 0; i < 4; i++) {
        sh_http_resp hr;
        assert_int_equal(sh_http(pb, "GET", "/v1/kv/xs/item", NULL, false, 10000, &hr), 200);
        l1_hits += strcmp(sh_http_header(&hr, "X-Strata-Tier"), "l1") == 0;
        sh_http_free(&hr);
    }
    assert_true(l1_hits >= 1);
    uint64_t t0 = sh_now_ms();
    r = expect(pa, "PUT", "/v1/kv/xs/item", "{\"value\":\"two\",\"expected_version\":1}", true,
               200);
    assert_int_equal(field(r, "version"), 2);
    free(r);
    r = await_get(pb, "/v1/kv/xs/item", 200, 2);
    print_message("kv_put_visible_on_other_server_ms=%llu\n",
                  (unsigned long long)(sh_now_ms() - t0));
    assert_non_null(strstr(r, "\"value\":\"two\""));
    free(r);
    /* and a delete */
    free(expect(pa, "DELETE", "/v1/kv/xs/item", NULL, true, 200));
    free(await_get(pb, "/v1/kv/xs/item", 404, 0));
    assert_int_equal(sh_serve_stop(&a), 0);
    assert_int_equal(sh_serve_stop(&b), 0);
}

#define STAMPEDE_PER_SERVER 60

typedef struct getter {
    uint16_t port;
    int status;
    char body[256];
} getter;

static void *getter_main(void *arg) {
    getter *g = arg;
    sh_http_resp r;
    g->status = sh_http(g->port, "GET", "/v1/kv/stamp/cold", NULL, false, 60000, &r);
    snprintf(g->body, sizeof g->body, "%s", r.body ? r.body : "");
    sh_http_free(&r);
    return NULL;
}

typedef struct stampede_state {
    uint16_t port[2];
    long long gets, loads, waits;
} stampede_state;

static bool all_waiting(void *ctx) {
    stampede_state *s = ctx;
    s->gets = s->loads = s->waits = 0;
    for (int i = 0; i < 2; i++) {
        s->gets += metric(s->port[i], "strata_tier_gets_total", "kv_stamp");
        s->loads += metric(s->port[i], "strata_tier_db_loads_total", "kv_stamp");
        s->waits += metric(s->port[i], "strata_tier_lease_waits_total", "kv_stamp");
    }
    return s->gets == 2 * STAMPEDE_PER_SERVER && s->loads == 1 && s->waits >= 1;
}

static void stampede_two_servers_one_load(void **state) {
    (void)state;
    /* The key is written through a third server, whose relay empties the
     * outbox; the two servers under test start afterwards, so their Bloom
     * copies already hold the key and nothing of theirs has read it. */
    const char *extra[] = {
        "--kv-namespaces", "stamp", "--kv-deadline", "30s", "--request-timeout", "60s", NULL};
    sh_serve *w = serve(extra);
    char *r =
        expect(sh_serve_port(w), "PUT", "/v1/kv/stamp/cold", "{\"value\":\"hot\"}", true, 200);
    free(r);
    await_relay("st:{stamp:cold}", 1);
    sh_serve *a = serve(extra), *b = serve(extra);
    stampede_state st = {{sh_serve_port(a), sh_serve_port(b)}, 0, 0, 0};

    /* Hold every database read: the first GET's load blocks inside PostgreSQL. */
    assert_int_equal(sh_pg_pause(pg), STRATA_OK);
    getter g[2 * STAMPEDE_PER_SERVER];
    pthread_t th[2 * STAMPEDE_PER_SERVER];
    for (int i = 0; i < 2 * STAMPEDE_PER_SERVER; i++) {
        g[i].port = st.port[i % 2];
        g[i].status = 0;
        assert_int_equal(pthread_create(&th[i], NULL, getter_main, &g[i]), 0);
    }
    bool waiting = sh_wait_until(20000, 20, all_waiting, &st);
    assert_int_equal(sh_pg_resume(pg), STRATA_OK);
    if (!waiting)
        fail_msg("not all waiting: gets=%lld loads=%lld lease_waits=%lld", st.gets, st.loads,
                 st.waits);
    int ok = 0;
    for (int i = 0; i < 2 * STAMPEDE_PER_SERVER; i++) {
        pthread_join(th[i], NULL);
        if (g[i].status == 200 && strstr(g[i].body, "\"value\":\"hot\",\"version\":1"))
            ok++;
        else
            print_error("GET %d: %d %s\n", i, g[i].status, g[i].body);
    }
    assert_int_equal(ok, 2 * STAMPEDE_PER_SERVER);
    long long loads = metric(st.port[0], "strata_tier_db_loads_total", "kv_stamp") +
                      metric(st.port[1], "strata_tier_db_loads_total", "kv_stamp");
    assert_int_equal(loads, 1);
    print_message("kv_stampede gets=%d db_loads=%lld lease_waits=%lld\n", 2 * STAMPEDE_PER_SERVER,
                  loads, st.waits);
    assert_int_equal(sh_serve_stop(&a), 0);
    assert_int_equal(sh_serve_stop(&b), 0);
    assert_int_equal(sh_serve_stop(&w), 0);
}

typedef struct one_get {
    uint16_t port;
    const char *path;
    sh_http_resp r;
    int status;
} one_get;

static void *one_get_main(void *arg) {
    one_get *g = arg;
    g->status = sh_http(g->port, "GET", g->path, NULL, false, 20000, &g->r);
    return NULL;
}

typedef struct held_load {
    uint16_t port;
} held_load;

static bool load_started(void *ctx) {
    held_load *h = ctx;
    return metric(h->port, "strata_tier_db_loads_total", "kv_brk") >= 1;
}

static void waiters_give_up_then_breaker(void **state) {
    (void)state;
    /* No Bloom filter here: the cold keys below must reach the database. */
    const char *extra[] = {"--kv-namespaces", "brk", "--kv-deadline", "300ms", "--kv-bloom",
                           "false",           NULL};
    sh_serve *a = serve(extra), *b = serve(extra);
    uint16_t pa = sh_serve_port(a), pb = sh_serve_port(b);

    /* A holds the lease of a cold key while its load is stuck in a paused database. */
    assert_int_equal(sh_pg_pause(pg), STRATA_OK);
    one_get holder = {pa, "/v1/kv/brk/k0", {0}, 0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, one_get_main, &holder), 0);
    held_load h = {pa};
    bool started = sh_wait_until(10000, 10, load_started, &h);
    sh_http_resp r;
    int st = started ? sh_http(pb, "GET", "/v1/kv/brk/k0", NULL, false, 10000, &r) : 0;
    assert_int_equal(sh_pg_resume(pg), STRATA_OK);
    pthread_join(th, NULL);
    assert_true(started);
    /* B waited on A's lease until its deadline: 503 busy, Retry-After */
    if (st != 503 || !strstr(r.body, "\"code\":\"busy\""))
        fail_msg("waiter: want 503 busy, got %d %s", st, r.body ? r.body : "");
    assert_string_equal(sh_http_header(&r, "Retry-After"), "1");
    sh_http_free(&r);
    /* A's own caller got its answer at the deadline too (the load went on) */
    assert_int_equal(holder.status, 503);
    assert_string_equal(sh_http_header(&holder.r, "Retry-After"), "1");
    sh_http_free(&holder.r);

    /* The database goes away: failures, then the breaker opens (per worker). */
    assert_int_equal(sh_pg_kill(pg), STRATA_OK);
    int unavailable = 0, breaker = 0;
    uint64_t deadline = sh_now_ms() + 60000;
    for (int i = 0; breaker < 4 && sh_now_ms() < deadline; i++) {
        char path[64];
        snprintf(path, sizeof path, "/v1/kv/brk/miss%d", i);
        st = sh_http(pa, "GET", path, NULL, false, 10000, &r);
        if (st != 503)
            fail_msg("GET %s with the database down: want 503, got %d %s", path, st,
                     r.body ? r.body : "");
        assert_string_equal(sh_http_header(&r, "Retry-After"), "1");
        if (strstr(r.body, "\"code\":\"breaker_open\""))
            breaker++;
        else
            unavailable++;
        sh_http_free(&r);
    }
    print_message("kv_breaker unavailable_before_open=%d breaker_open=%d\n", unavailable, breaker);
    assert_true(breaker >= 4);
    assert_true(unavailable >= 1);
    assert_int_equal(sh_pg_restart(pg), STRATA_OK);
    assert_int_equal(sh_serve_stop(&a), 0);
    assert_int_equal(sh_serve_stop(&b), 0);
}

int main(void) {
    sh_init(225);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(api_and_validation),
        cmocka_unit_test(put_visible_on_other_server),
        cmocka_unit_test(stampede_two_servers_one_load),
        cmocka_unit_test(waiters_give_up_then_breaker),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
