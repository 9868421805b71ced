/*
 * test_server_basic.c: the HTTP server's routes and protocol basics over real
 * sockets: built-in endpoints, routing (404, 405 + Allow, params, HEAD),
 * keep-alive and pipelining order with asynchronous handlers, admin auth,
 * JSON bodies, /metrics as valid Prometheus text, /readyz probes, the debug
 * clock.
 */
/* ctest-link: strata_server */
/* ctest-labels: tsan */
#include "integration/server/server_test_util.h"

#include <ctype.h>
#include <math.h>
#include <stdatomic.h>

#include "strata/json.h"

static tsrv T;
static _Atomic int probe_should_fail;

/* ---- test routes -------------------------------------------------------------------- */

static void h_echo(strata_http_req *req, void *ctx) {
    (void)ctx;
    const char *q = strata_http_query(req, "q");
    strata_buf b = STRATA_BUF_INIT;
    strata_buf_puts(&b, "{\"id\":");
    const char *id = strata_http_param(req, "id");
    strata_buf_json_str(&b, id, strlen(id));
    strata_buf_puts(&b, ",\"q\":");
    if (q)
        strata_buf_json_str(&b, q, strlen(q));
    else
        strata_buf_puts(&b, "null");
    strata_buf_puts(&b, "}");
    strata_http_respond_json(req, 200, b.data, b.len);
    strata_buf_free(&b);
}

static void h_items_new(strata_http_req *req, void *ctx) {
    (void)ctx;
    strata_http_respond_jsonf(req, 200, "{\"route\":\"new\"}");
}

static void h_item(strata_http_req *req, void *ctx) {
    (void)ctx;
    strata_http_respond_jsonf(req, 200, "{\"route\":\"item\",\"id\":\"%s\"}",
                              strata_http_param(req, "id"));
}

static void h_item_post(strata_http_req *req, void *ctx) {
    (void)ctx;
    strata_http_respond_jsonf(req, 201, "{\"created\":true}");
}

static void h_json_int(strata_http_req *req, void *ctx) {
    (void)ctx;
    cJSON *doc;
    if (strata_http_read_json(req, &doc) < 0)
        return;
    int64_t n = 0;
    strata_buf err = STRATA_BUF_INIT;
    int rc = strata_json_get_int(doc, "n", true, 1, 100, &n, &err);
    if (rc != STRATA_OK)
        strata_http_respond_error(req, 400, "invalid_field", "%s", err.data);
    else
        strata_http_respond_jsonf(req, 200, "{\"n\":%lld}", (long long)n);
    strata_buf_free(&err);
}

typedef struct slow_ctx {
    uv_timer_t t;
    strata_http_req *req;
    int ms;
} slow_ctx;

static void slow_closed(uv_handle_t *h) {
    slow_ctx *s = h->data;
    strata_http_respond_jsonf(s->req, 200, "{\"slow\":%d}", s->ms);
    free(s);
}

static void slow_fire(uv_timer_t *t) { uv_close((uv_handle_t *)t, slow_closed); }

static void h_slow(strata_http_req *req, void *ctx) {
    (void)ctx;
    slow_ctx *s = calloc(1, sizeof *s);
    s->req = req;
    s->ms = atoi(strata_http_param(req, "ms"));
    uv_timer_init(strata_http_loop(req), &s->t);
    s->t.data = s;
    uv_timer_start(&s->t, slow_fire, (uint64_t)s->ms, 0);
}

static void h_fast(strata_http_req *req, void *ctx) {
    (void)ctx;
    strata_http_respond_jsonf(req, 200, "{\"fast\":true}");
}

static int probe_ok(void *ctx, strata_buf *why) {
    (void)ctx;
    (void)why;
    return STRATA_OK;
}

static int probe_maybe(void *ctx, strata_buf *why) {
    (void)ctx;
    if (atomic_load(&probe_should_fail)) {
        strata_buf_puts(why, "connection refused");
        return STRATA_EUNAVAIL;
    }
    return STRATA_OK;
}

static void setup_routes(strata_server *s, void *ctx) {
    (void)ctx;
    assert_int_equal(strata_server_route(s, "GET", "/echo/{id}", h_echo, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/items/new", h_items_new, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/items/{id}", h_item, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "POST", "/items/{id}", h_item_post, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "POST", "/json-int", h_json_int, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/slow/{ms}", h_slow, NULL), STRATA_OK);
    assert_int_equal(strata_server_route(s, "GET", "/fast", h_fast, NULL), STRATA_OK);
    /* malformed patterns and duplicates are refused */
    assert_int_equal(strata_server_route(s, "GET", "/fast", h_fast, NULL), STRATA_EEXIST);
    assert_int_equal(strata_server_route(s, "GET", "no-slash", h_fast, NULL), STRATA_EINVAL);
    assert_int_equal(strata_server_route(s, "GET", "/a/{b", h_fast, NULL), STRATA_EINVAL);
    assert_int_equal(strata_server_route(s, "get", "/x", h_fast, NULL), STRATA_EINVAL);
    assert_int_equal(strata_server_add_probe(s, "always", probe_ok, NULL), STRATA_OK);
    assert_int_equal(strata_server_add_probe(s, "redis", probe_maybe, NULL), STRATA_OK);
}

static int group_setup(void **state) {
    (void)state;
    static const char *const flags[] = {"--debug-clock", NULL};
    tsrv_start(&T, flags, setup_routes, NULL);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    tsrv_stop(&T);
    return 0;
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_healthz(void **state) {
    (void)state;
    tresp r;
    assert_int_equal(http_get(T.port, "/healthz", &r), 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    char v[128];
    assert_true(tresp_header(&r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "application/json");
    assert_true(tresp_header(&r, "Date", v, sizeof v));
    assert_true(strstr(v, "GMT") != NULL);
    tresp_free(&r);
}

static void test_not_found_and_method(void **state) {
    (void)state;
    tresp r;
    assert_int_equal(http_get(T.port, "/nope", &r), 404);
    assert_true(strstr(r.body, "\"code\":\"not_found\"") != NULL);
    tresp_free(&r);

    assert_int_equal(http_raw(T.port, "DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n", &r), 405);
    char allow[128];
    assert_true(tresp_header(&r, "Allow", allow, sizeof allow));
    assert_string_equal(allow, "GET, HEAD");
    assert_true(strstr(r.body, "\"code\":\"method_not_allowed\"") != NULL);
    tresp_free(&r);

    /* /items/{id} has GET and POST */
    assert_int_equal(http_raw(T.port, "PUT /items/7 HTTP/1.1\r\nHost: t\r\n\r\n", &r), 405);
    assert_true(tresp_header(&r, "Allow", allow, sizeof allow));
    assert_true(strstr(allow, "GET") && strstr(allow, "POST") && strstr(allow, "HEAD"));
    tresp_free(&r);
}

static void test_params_and_specificity(void **state) {
    (void)state;
    tresp r;
    assert_int_equal(http_get(T.port, "/echo/a%20b?q=x+y%21&z=1", &r), 200);
    assert_string_equal(r.body, "{\"id\":\"a b\",\"q\":\"x y!\"}");
    tresp_free(&r);
    assert_int_equal(http_get(T.port, "/echo/plain", &r), 200);
    assert_string_equal(r.body, "{\"id\":\"plain\",\"q\":null}");
    tresp_free(&r);
    /* literal beats parameter */
    assert_int_equal(http_get(T.port, "/items/new", &r), 200);
    assert_string_equal(r.body, "{\"route\":\"new\"}");
    tresp_free(&r);
    assert_int_equal(http_get(T.port, "/items/42", &r), 200);
    assert_string_equal(r.body, "{\"route\":\"item\",\"id\":\"42\"}");
    tresp_free(&r);
    assert_int_equal(http_post(T.port, "/items/42", NULL, "", &r), 201);
    tresp_free(&r);
    /* bad escapes in a parameter, an encoded NUL */
    assert_int_equal(http_get(T.port, "/echo/%zz", &r), 400);
    tresp_free(&r);
    assert_int_equal(http_get(T.port, "/echo/a%00b", &r), 400);
    tresp_free(&r);
    /* empty segment does not match a parameter */
    assert_int_equal(http_get(T.port, "/echo/", &r), 404);
    tresp_free(&r);
    /* absolute-form target */
    assert_int_equal(http_raw(T.port, "GET http://t/echo/abs HTTP/1.1\r\nHost: t\r\n\r\n", &r),
                     200);
    assert_string_equal(r.body, "{\"id\":\"abs\",\"q\":null}");
    tresp_free(&r);
}

static void test_head(void **state) {
    (void)state;
    tconn *c = tc_open(T.port);
    tc_sends(c,
             "HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    tresp r;
    assert_int_equal(tc_response_ex(c, &r, 5000, true, false), 0);
    assert_int_equal(r.status, 200);
    char v[32];
    assert_true(tresp_header(&r, "Content-Length", v, sizeof v));
    assert_string_equal(v, "15");
    tresp_free(&r);
    /* the next response starts right after the head: no body was sent */
    assert_int_equal(tc_response(c, &r), 0);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    tresp_free(&r);
    tc_close(c);
}

static void test_keepalive(void **state) {
    (void)state;
    tconn *c = tc_open(T.port);
    for (int i = 0; i < 50; i++) {
        tc_sends(c, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
        tresp r;
        assert_int_equal(tc_response(c, &r), 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "{\"fast\":true}");
        char v[32];
        assert_false(tresp_header(&r, "Connection", v, sizeof v));
        tresp_free(&r);
    }
    /* HTTP/1.0 with keep-alive is honoured and says so */
    tc_sends(c, "GET /fast HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    tresp r;
    assert_int_equal(tc_response(c, &r), 0);
    char v[32];
    assert_true(tresp_header(&r, "Connection", v, sizeof v));
    assert_string_equal(v, "keep-alive");
    tresp_free(&r);
    /* Connection: close is answered, then the server closes */
    tc_sends(c, "GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_int_equal(tc_response(c, &r), 0);
    assert_true(tresp_header(&r, "Connection", v, sizeof v));
    assert_string_equal(v, "close");
    tresp_free(&r);
    assert_true(tc_wait_closed(c, 3000));
    tc_close(c);
}

static void test_pipelining_order(void **state) {
    (void)state;
    tconn *c = tc_open(T.port);
    /* slow (async, 150 ms), fast (sync), slow 20, fast: must come back in this order */
    tc_sends(c, "GET /slow/150 HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /slow/20 HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /echo/last HTTP/1.1\r\nHost: t\r\n\r\n");
    const char *want[] = {"{\"slow\":150}", "{\"fast\":true}", "{\"slow\":20}",
                          "{\"id\":\"last\",\"q\":null}"};
    for (int i = 0; i < 4; i++) {
        tresp r;
        assert_int_equal(tc_response(c, &r), 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, want[i]);
        tresp_free(&r);
    }
    /* A burst of 200 pipelined requests split across many segments. */
    char *burst = malloc(200 * 64);
    size_t n = 0;
    for (int i = 0; i < 200; i++)
        n += (size_t)sprintf(burst + n, "GET /echo/%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
    for (size_t off = 0; off < n; off += 7)
        tc_send(c, burst + off, n - off < 7 ? n - off : 7);
    free(burst);
    for (int i = 0; i < 200; i++) {
        tresp r;
        assert_int_equal(tc_response(c, &r), 0);
        char exp[64];
        snprintf(exp, sizeof exp, "{\"id\":\"%d\",\"q\":null}", i);
        assert_string_equal(r.body, exp);
        tresp_free(&r);
    }
    tc_close(c);
}

static void test_admin_auth(void **state) {
    (void)state;
    tresp r;
    /* missing */
    assert_int_equal(http_get(T.port, "/v1/admin/config", &r), 401);
    assert_true(strstr(r.body, "\"code\":\"unauthorized\"") != NULL);
    char v[128];
    assert_true(tresp_header(&r, "WWW-Authenticate", v, sizeof v));
    tresp_free(&r);
    /* wrong: other token, a prefix, a longer one, another scheme */
    const char *bad[] = {"Bearer nope", "Bearer test-token-12", "Bearer test-token-1234",
                         "Basic dGVzdC10b2tlbi0xMjM=", "Bearer "};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char req[256];
        snprintf(req, sizeof req,
                 "GET /v1/admin/config HTTP/1.1\r\nHost: t\r\nAuthorization: %s\r\n\r\n", bad[i]);
        assert_int_equal(http_raw(T.port, req, &r), 401);
        tresp_free(&r);
    }
    /* right */
    assert_int_equal(http_raw(T.port,
                              "GET /v1/admin/config HTTP/1.1\r\nHost: t\r\n"
                              "Authorization: Bearer test-token-123\r\n\r\n",
                              &r),
                     200);
    assert_true(strstr(r.body, "\"admin_token\":{\"value\":\"<redacted>\"") != NULL);
    assert_null(strstr(r.body, "test-token-123"));
    assert_true(strstr(r.body, "\"max_body_bytes\"") != NULL);
    tresp_free(&r);
    assert_string_equal(strata_server_admin_token(T.s), "test-token-123");
}

static void test_debug_clock(void **state) {
    (void)state;
    tresp r;
    int64_t before = strata_clock_wall_ms(T.clock);
    assert_int_equal(http_post(T.port, "/v1/admin/clock", NULL, "{\"advance_ms\":3600000}", &r),
                     401);
    tresp_free(&r);
    const char *auth = "Authorization: Bearer test-token-123\r\n";
    assert_int_equal(http_post(T.port, "/v1/admin/clock", auth, "{\"advance_ms\":3600000}", &r),
                     200);
    long long wall = 0, off = 0;
    assert_int_equal(sscanf(r.body, "{\"wall_ms\":%lld,\"offset_ms\":%lld}", &wall, &off), 2);
    assert_true(wall >= before + 3600000);
    assert_int_equal(off, 3600000);
    tresp_free(&r);
    assert_true(strata_clock_wall_ms(T.clock) >= before + 3600000);
    /* invalid bodies */
    assert_int_equal(http_post(T.port, "/v1/admin/clock", auth, "{\"advance_ms\":1.5}", &r), 400);
    assert_true(strstr(r.body, "advance_ms") != NULL);
    tresp_free(&r);
    assert_int_equal(http_post(T.port, "/v1/admin/clock", auth, "{\"advance\":1}", &r), 400);
    tresp_free(&r);
    assert_int_equal(http_post(T.port, "/v1/admin/clock", auth, "{\"advance_ms\":-3600000}", &r),
                     200);
    tresp_free(&r);
    assert_int_equal(strata_clock_offset_ns(T.clock), 0);
}

static void test_json_bodies(void **state) {
    (void)state;
    tresp r;
    struct {
        const char *body;
        int status;
        const char *needle;
    } cases[] = {
        {"{\"n\":5}", 200, "{\"n\":5}"},
        {"{\"n\":12.5}", 400, "must be an integer"},
        {"{\"n\":5.0}", 400, "must be an integer"},
        {"{\"n\":1e1}", 400, "must be an integer"},
        {"{\"n\":9007199254740993}", 400, "2^53"},
        {"{\"n\":101}", 400, "[1, 100]"},
        {"{\"n\":0}", 400, "[1, 100]"},
        {"{\"n\":\"5\"}", 400, "must be an integer"},
        {"{}", 400, "is required"},
        {"{\"n\":5,\"n\":6}", 400, "duplicate key"},
        {"{\"n\":5,\"\\u006e\":6}", 400, "duplicate key"},
        {"{\"n\":5,\"s\":\"\xff\"}", 400, "UTF-8"},
        {"{\"n\":5,\"s\":\"\xc0\xaf\"}", 400, "UTF-8"},
        {"{\"n\":5,\"s\":\"\\ud800\"}", 400, "surrogate"},
        {"{\"n\":5,\"s\":\"\\u0000\"}", 400, "u0000"},
        {"{\"n\":5", 400, "invalid_json"},
        {"{\"n\":5} x", 400, "trailing"},
        {"", 400, "invalid_json"},
        {"[1,2]", 400, "must be a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int st = http_post(T.port, "/json-int", NULL, cases[i].body, &r);
        if (st != cases[i].status || !strstr(r.body, cases[i].needle))
            fprintf(stderr, "case %zu: %s -> %d %s\n", i, cases[i].body, st, r.body);
        assert_int_equal(st, cases[i].status);
        assert_non_null(strstr(r.body, cases[i].needle));
        if (st == 400)
            assert_non_null(strstr(r.body, "{\"error\":{\"code\":\""));
        tresp_free(&r);
    }
    /* deep nesting */
    char deep[200];
    int d = 0;
    d += sprintf(deep + d, "{\"n\":1,\"x\":");
    for (int i = 0; i < 40; i++)
        deep[d++] = '[';
    for (int i = 0; i < 40; i++)
        deep[d++] = ']';
    deep[d++] = '}';
    deep[d] = '\0';
    assert_int_equal(http_post(T.port, "/json-int", NULL, deep, &r), 400);
    assert_non_null(strstr(r.body, "nesting too deep"));
    tresp_free(&r);
    /* chunked body */
    assert_int_equal(
        http_raw(T.port,
                 "POST /json-int HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "3\r\n{\"n\r\n4\r\n\":42\r\n1\r\n}\r\n0\r\n\r\n",
                 &r),
        200);
    assert_string_equal(r.body, "{\"n\":42}");
    tresp_free(&r);
}

static void test_readyz(void **state) {
    (void)state;
    tresp r;
    atomic_store(&probe_should_fail, 0);
    assert_int_equal(http_get(T.port, "/readyz", &r), 200);
    assert_string_equal(
        r.body,
        "{\"status\":\"ready\",\"checks\":{\"always\":{\"ok\":true},\"redis\":{\"ok\":true}}}");
    tresp_free(&r);
    atomic_store(&probe_should_fail, 1);
    assert_int_equal(http_get(T.port, "/readyz", &r), 503);
    assert_non_null(strstr(r.body, "\"redis\":{\"ok\":false,\"error\":\"connection refused\"}"));
    assert_non_null(strstr(r.body, "\"status\":\"unavailable\""));
    tresp_free(&r);
    atomic_store(&probe_should_fail, 0);
}

static void test_info(void **state) {
    (void)state;
    tresp r;
    assert_int_equal(http_get(T.port, "/healthz", &r), 200);
    tresp_free(&r);
    assert_int_equal(http_get(T.port, "/v1/info", &r), 200);
    assert_non_null(strstr(r.body, "\"version\":\"" STRATA_VERSION "\""));
    assert_non_null(strstr(r.body, "\"uptime_ms\":"));
    assert_non_null(strstr(r.body, "\"workers\":2"));
    assert_non_null(strstr(r.body, "\"admin_token\":{\"value\":\"<redacted>\""));
    assert_non_null(strstr(r.body, "\"/healthz\":{\"count\":"));
    cJSON *doc = NULL;
    assert_int_equal(strata_json_parse(r.body, r.body_len, 0, &doc, NULL), STRATA_OK);
    cJSON *lat = cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "latency_us"), "/healthz");
    assert_non_null(lat);
    assert_true(cJSON_GetObjectItem(lat, "count")->valuedouble >= 1);
    assert_true(cJSON_GetObjectItem(lat, "p99")->valuedouble > 0);
    cJSON_Delete(doc);
    tresp_free(&r);
}

/* ---- a small Prometheus text-format parser ------------------------------------------- */

typedef struct prom_sample {
    char name[128];
    char labels[512]; /* canonical: k="v",k2="v2" */
    double value;
} prom_sample;

static bool prom_name_ok(const char *s, size_t n, bool metric) {
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool ok = isalpha((unsigned char)ch) || ch == '_' || (metric && ch == ':') ||
                  (i > 0 && isdigit((unsigned char)ch));
        if (!ok)
            return false;
    }
    return true;
}

/* Parses one sample line; false if malformed.  Fills `canon` with the re-rendered line. */
static bool prom_parse_sample(const char *line, prom_sample *ps, char *canon, size_t cap) {
    const char *p = line;
    const char *ns = p;
    while (*p && *p != '{' && *p != ' ')
        p++;
    size_t nl = (size_t)(p - ns);
    if (!prom_name_ok(ns, nl, true) || nl >= sizeof ps->name)
        return false;
    memcpy(ps->name, ns, nl);
    ps->name[nl] = '\0';
    ps->labels[0] = '\0';
    size_t ll = 0;
    if (*p == '{') {
        p++;
        while (*p != '}') {
            const char *ks = p;
            while (*p && *p != '=')
                p++;
            if (!prom_name_ok(ks, (size_t)(p - ks), false) || *p != '=' || p[1] != '"')
                return false;
            size_t kl = (size_t)(p - ks);
            p += 2;
            const char *vs = p;
            while (*p && *p != '"') {
                if (*p == '\\') {
                    if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
                        return false;
                    p++;
                }
                p++;
            }
            if (*p != '"')
                return false;
            size_t vl = (size_t)(p - vs);
            p++;
            if (ll + kl + vl + 5 >= sizeof ps->labels)
                return false;
            if (ll)
                ps->labels[ll++] = ',';
            memcpy(ps->labels + ll, ks, kl);
            ll += kl;
            ps->labels[ll++] = '=';
            ps->labels[ll++] = '"';
            memcpy(ps->labels + ll, vs, vl);
            ll += vl;
            ps->labels[ll++] = '"';
            ps->labels[ll] = '\0';
            if (*p == ',')
                p++;
            else if (*p != '}')
                return false;
        }
        p++;
    }
    if (*p != ' ')
        return false;
    p++;
    char *end;
    if (strcmp(p, "+Inf") == 0)
        ps->value = INFINITY;
    else if (strcmp(p, "-Inf") == 0)
        ps->value = -INFINITY;
    else if (strcmp(p, "NaN") == 0)
        ps->value = NAN;
    else {
        ps->value = strtod(p, &end);
        if (end == p || *end != '\0')
            return false; /* timestamps are not used by Strata */
    }
    snprintf(canon, cap, "%s%s%s%s %s", ps->name, ll ? "{" : "", ps->labels, ll ? "}" : "", p);
    return true;
}

static void test_metrics_prometheus(void **state) {
    (void)state;
    tresp r;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(http_get(T.port, "/healthz", &r), 200);
        tresp_free(&r);
    }
    assert_int_equal(http_get(T.port, "/does-not-exist", &r), 404);
    tresp_free(&r);
    assert_int_equal(http_get(T.port, "/metrics", &r), 200);
    char ct[128];
    assert_true(tresp_header(&r, "Content-Type", ct, sizeof ct));
    assert_non_null(strstr(ct, "text/plain; version=0.0.4"));

    char *text = r.body;
    assert_true(r.body_len > 0 && text[r.body_len - 1] == '\n');
    char types[64][128];
    int ntypes = 0;
    int samples = 0;
    bool saw_healthz = false, saw_404 = false, saw_hist_count = false, saw_inf = false;
    double healthz_count = -1, inf_bucket = -1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') {
            char kind[16], name[128];
            assert_int_equal(sscanf(line, "# %15s %127s", kind, name), 2);
            assert_true(strcmp(kind, "HELP") == 0 || strcmp(kind, "TYPE") == 0);
            assert_true(prom_name_ok(name, strlen(name), true));
            if (strcmp(kind, "TYPE") == 0) {
                const char *t = line + strlen("# TYPE ") + strlen(name) + 1;
                assert_true(strcmp(t, "counter") == 0 || strcmp(t, "gauge") == 0 ||
                            strcmp(t, "histogram") == 0 || strcmp(t, "summary") == 0 ||
                            strcmp(t, "untyped") == 0);
                assert_true(ntypes < 64);
                snprintf(types[ntypes++], sizeof types[0], "%s", name);
            }
            continue;
        }
        prom_sample ps;
        char canon[1024];
        bool ok = prom_parse_sample(line, &ps, canon, sizeof canon);
        if (!ok || strcmp(canon, line) != 0)
            fprintf(stderr, "bad sample line: [%s]\n canon: [%s]\n", line, canon);
        assert_true(ok);
        assert_string_equal(canon, line); /* round trip */
        samples++;
        /* every sample belongs to a family declared by a TYPE line before it */
        bool declared = false;
        for (int i = 0; i < ntypes && !declared; i++) {
            size_t tl = strlen(types[i]);
            declared = strncmp(ps.name, types[i], tl) == 0 &&
                       (ps.name[tl] == '\0' || strcmp(ps.name + tl, "_bucket") == 0 ||
                        strcmp(ps.name + tl, "_sum") == 0 || strcmp(ps.name + tl, "_count") == 0);
        }
        assert_true(declared);
        if (strcmp(ps.name, "strata_http_requests_total") == 0 &&
            strcmp(ps.labels, "route=\"/healthz\",method=\"GET\",status=\"200\"") == 0) {
            saw_healthz = true;
            healthz_count = ps.value;
        }
        if (strcmp(ps.name, "strata_http_requests_total") == 0 &&
            strstr(ps.labels, "route=\"unmatched\"") && strstr(ps.labels, "status=\"404\""))
            saw_404 = true;
        if (strcmp(ps.name, "strata_http_request_duration_seconds_count") == 0 &&
            strcmp(ps.labels, "route=\"/healthz\"") == 0) {
            saw_hist_count = true;
            assert_true(ps.value >= 3);
            /* +Inf bucket equals the count */
            assert_true(inf_bucket == ps.value);
        }
        if (strcmp(ps.name, "strata_http_request_duration_seconds_bucket") == 0 &&
            strstr(ps.labels, "route=\"/healthz\"") && strstr(ps.labels, "le=\"+Inf\"")) {
            saw_inf = true;
            inf_bucket = ps.value;
        }
    }
    assert_true(samples > 10);
    assert_true(saw_healthz);
    assert_true(healthz_count >= 3);
    assert_true(saw_404);
    assert_true(saw_inf);
    assert_true(saw_hist_count);
    tresp_free(&r);
}

static void test_bad_requests(void **state) {
    (void)state;
    tresp r;
    assert_int_equal(http_raw(T.port, "GARBAGE\r\n\r\n", &r), 501);
    tresp_free(&r);
    assert_int_equal(http_raw(T.port, "GET / HTTP/9.9\r\n\r\n", &r), 505);
    tresp_free(&r);
    assert_int_equal(http_raw(T.port, "GET /healthz HTTP/1.1\r\n\r\n", &r), 400); /* no Host */
    assert_non_null(strstr(r.body, "Host"));
    tresp_free(&r);
    assert_int_equal(http_raw(T.port, "GET /healthz HTTP/1.0\r\n\r\n", &r), 200); /* 1.0: fine */
    assert_true(r.closed || true);
    tresp_free(&r);
    assert_int_equal(http_raw(T.port, "GET nope HTTP/1.1\r\nHost: t\r\n\r\n", &r), 400);
    tresp_free(&r);
    assert_int_equal(http_raw(T.port, "CONNECT t:443 HTTP/1.1\r\nHost: t\r\n\r\n", &r), 405);
    tresp_free(&r);
    /* Upgrade is ignored: answered as plain HTTP/1.1, then closed */
    tconn *c = tc_open(T.port);
    tc_sends(c, "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    assert_int_equal(tc_response(c, &r), 0);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    assert_true(tc_wait_closed(c, 3000));
    tc_close(c);
}

int main(void) {
    sh_init(100);
    strata_log_set_level(STRATA_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_healthz),
        cmocka_unit_test(test_not_found_and_method),
        cmocka_unit_test(test_params_and_specificity),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_pipelining_order),
        cmocka_unit_test(test_admin_auth),
        cmocka_unit_test(test_debug_clock),
        cmocka_unit_test(test_json_bodies),
        cmocka_unit_test(test_readyz),
        cmocka_unit_test(test_info),
        cmocka_unit_test(test_metrics_prometheus),
        cmocka_unit_test(test_bad_requests),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
