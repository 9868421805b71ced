/*
 * scenario.c: the scenario runtime (scenario.h): options, the shared L1, a
 * Redis client per worker loop, the tracking bridge, and shared helpers.
 *
 * Tracking bridge.  Scenario state that every server reads on its hot path
 * (is this sale sold out, is this packet open) lives in one small "flag" key
 * per entity (fsflag:{sku}, rpflag:{id}) that changes a few times in the
 * entity's life.  Every server caches it in its L1; a control thread holds a
 * Redis client with CLIENT TRACKING BCAST on those prefixes and invalidates
 * the L1 entry of any flag key that changes, and the whole prefix when
 * invalidations may have been lost (reconnect, failover).  Busy keys (stock,
 * shares) are never tracked, so invalidation traffic stays tiny however hot
 * the sale.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scenarios/scenario.h"
#include "strata/alloc.h"
#include "strata/json.h"
#include "strata/status.h"

#define SCENARIO_OPTIONS(X)                                                             \
    X(flashsale_strategy, STRATA_OPT_ENUM, "lua", 0, 0, "lua|segment-lock", 0,          \
      "flash-sale order path: one Lua call (lua) or the seed's 10 Redis segment locks " \
      "(segment-lock, a baseline for benchmarks)")                                      \
    X(user_rate, STRATA_OPT_INT, "20", 1, 1000000, NULL, 0,                             \
      "per-user order/grab attempts allowed per second (GCRA in Redis)")                \
    X(user_burst, STRATA_OPT_INT, "20", 1, 1000000, NULL, 0,                            \
      "per-user attempts allowed at once (GCRA burst)")                                 \
    X(stream_max_len, STRATA_OPT_INT, "1000000", 0, 1000000000, NULL, 0,                \
      "write-behind stream length past which writes answer 503 (0 = unbounded)")        \
    X(wait_replicas, STRATA_OPT_INT, "-1", -1, 16, NULL, 0,                             \
      "replicas an order/grab must reach (Redis WAIT) before it is acknowledged; "      \
      "-1 = 1 when the master has replicas, else 0")                                    \
    X(wait_timeout, STRATA_OPT_DURATION, "500ms", 1, 60000, NULL, 0,                    \
      "how long WAIT may take before the outcome counts as unknown (then retried)")     \
    X(l1_capacity, STRATA_OPT_INT, "100000", 16, 100000000, NULL, 0,                    \
      "entries in the in-process L1 cache shared by the scenarios")                     \
    X(status_ttl, STRATA_OPT_DURATION, "2s", 1, 3600000, NULL, 0,                       \
      "L1 TTL of a sale's or packet's status (changes also arrive by tracking at once)")

enum { SCENARIO_OPTIONS(STRATA_OPT_ENUM_ENTRY) SCENARIO_OPT__COUNT };
static strata_option scenario_opts[] = {SCENARIO_OPTIONS(STRATA_OPT_ROW)};
strata_opt_group strata_scenario_opt_group = {"Scenarios", scenario_opts, SCENARIO_OPT__COUNT};

int strata_scenarios_setup(void) {
    int rc = scn_flashsale_migrations();
    if (rc == STRATA_OK)
        rc = scn_redpacket_migrations();
    return rc;
}

static int resolve_wait(const char *redis_url, int64_t opt);

int strata_scenarios_wait_replicas(const char *redis_url, uint32_t *timeout_ms) {
    if (timeout_ms)
        *timeout_ms = (uint32_t)scenario_opts[OPT_wait_timeout].val.i;
    return resolve_wait(redis_url, scenario_opts[OPT_wait_replicas].val.i);
}

int strata_scenarios_handlers(strata_persister *p) {
    int rc = scn_flashsale_handlers(p);
    return rc == STRATA_OK ? scn_redpacket_handlers(p) : rc;
}

/* ---- per-worker Redis -------------------------------------------------------- */

static int worker_init(uv_loop_t *loop, void *ctx, void **wdata) {
    strata_scenarios *sc = ctx;
    scn_worker *w = strata_calloc(1, sizeof *w);
    if (!w)
        return STRATA_ENOMEM;
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.metrics = sc->env.metrics;
    strata_buf err = STRATA_BUF_INIT;
    int rc = strata_redis_create(&w->redis, loop, sc->env.redis_url, &o, &err);
    strata_buf_free(&err);
    if (rc != STRATA_OK) {
        strata_free(w);
        return rc;
    }
    w->loop = loop;
    *wdata = w;
    return STRATA_OK;
}

static void worker_fini(uv_loop_t *loop, void *ctx, void *wdata) {
    scn_worker *w = wdata;
    if (!w)
        return;
    strata_redis_destroy(&w->redis);
    strata_free(w);
}

scn_worker *scn_worker_of(strata_scenarios *sc, strata_http_req *req) {
    return strata_http_worker_slot(req, sc->worker_slot);
}

/* ---- tracking bridge ------------------------------------------------------------ */

static const char *const tracked_prefixes[] = {SCN_FLASHSALE_FLAG_PREFIX,
                                               SCN_REDPACKET_FLAG_PREFIX};

static void on_invalidate(void *ud, const char *key, size_t len) {
    strata_scenarios *sc = ud;
    strata_l1_invalidate(sc->l1, key, len);
}

static void on_flush(void *ud) {
    strata_scenarios *sc = ud;
    for (size_t i = 0; i < sizeof tracked_prefixes / sizeof tracked_prefixes[0]; i++)
        strata_l1_invalidate_prefix(sc->l1, tracked_prefixes[i], strlen(tracked_prefixes[i]));
}

static void on_sweep(uv_timer_t *t) {
    scn_redpacket_sweep(t->data);
    scn_flashsale_sweep(t->data);
}

static void on_stop(uv_async_t *a) {
    strata_scenarios *sc = a->data;
    if (sc->sweep_inited)
        uv_close((uv_handle_t *)&sc->sweep_timer, NULL);
    strata_redis_destroy(&sc->tracker);
    strata_redis_destroy(&sc->sweeper);
    uv_close((uv_handle_t *)a, NULL);
}

static void control_thread(void *arg) {
    strata_scenarios *sc = arg;
    uv_run(&sc->loop, UV_RUN_DEFAULT);
}

/* Effective WAIT: -1 asks the master whether it has replicas. */
static int resolve_wait(const char *redis_url, int64_t opt) {
    if (opt >= 0)
        return (int)opt;
    strata_redis_options o;
    strata_redis_options_init(&o);
    strata_redis_sync *rs = NULL;
    strata_buf err = STRATA_BUF_INIT;
    int n = 0;
    if (strata_redis_sync_create(&rs, redis_url, &o, &err) == STRATA_OK) {
        strata_redis_reply *r = NULL;
        if (strata_redis_sync_command(rs, &r, "INFO replication") == STRATA_OK && r && r->str) {
            const char *p = strstr(r->str, "connected_slaves:");
            if (p && atoi(p + strlen("connected_slaves:")) > 0)
                n = 1;
        }
        strata_redis_reply_free(r);
    }
    strata_redis_sync_destroy(&rs);
    strata_buf_free(&err);
    return n;
}

int strata_scenarios_start(strata_scenarios **out, strata_server *server,
                           const strata_scenario_env *env, strata_buf *err) {
    strata_scenarios *sc = strata_calloc(1, sizeof *sc);
    if (!sc)
        return STRATA_ENOMEM;
    sc->env = *env;
    sc->cfg.flashsale_segment_lock = scenario_opts[OPT_flashsale_strategy].val.i == 1;
    sc->cfg.user_rate = scenario_opts[OPT_user_rate].val.i;
    sc->cfg.user_burst = scenario_opts[OPT_user_burst].val.i;
    sc->cfg.stream_max_len = (uint64_t)scenario_opts[OPT_stream_max_len].val.i;
    sc->cfg.wait_timeout_ms = (uint32_t)scenario_opts[OPT_wait_timeout].val.i;
    sc->cfg.status_ttl_ns = (uint64_t)scenario_opts[OPT_status_ttl].val.i * 1000000ull;
    sc->cfg.wait_replicas = resolve_wait(env->redis_url, scenario_opts[OPT_wait_replicas].val.i);
    sc->m_l1_flag_hits =
        strata_metrics_counter(env->metrics, "strata_scenario_l1_flag_hits_total",
                               "Requests answered from an L1 flag (sold out, gone)", NULL);
    sc->m_retries =
        strata_metrics_counter(env->metrics, "strata_scenario_retries_total",
                               "Idempotent script calls retried after an unknown outcome", NULL);
    sc->m_unknown =
        strata_metrics_counter(env->metrics, "strata_scenario_unknown_total",
                               "Requests answered 503 because the outcome stayed unknown", NULL);

    strata_l1_config lc;
    strata_l1_config_init(&lc);
    lc.capacity = (uint64_t)scenario_opts[OPT_l1_capacity].val.i;
    lc.clock = env->clock;
    lc.metrics = env->metrics;
    lc.name = "scenarios";
    int rc = strata_l1_create(&lc, &sc->l1);
    if (rc != STRATA_OK) {
        strata_buf_printf(err, "cannot create the L1: %s", strata_strerror(rc));
        strata_scenarios_stop(&sc);
        return rc;
    }
    rc = strata_server_add_worker_slot(server, worker_init, worker_fini, sc);
    if (rc < 0) {
        strata_buf_printf(err, "cannot add the scenario worker slot: %s", strata_strerror(rc));
        strata_scenarios_stop(&sc);
        return rc;
    }
    sc->worker_slot = rc;
    if ((rc = scn_flashsale_routes(sc, server)) != STRATA_OK ||
        (rc = scn_redpacket_routes(sc, server)) != STRATA_OK ||
        (rc = scn_kv_routes(sc, server)) != STRATA_OK) {
        strata_buf_printf(err, "cannot register scenario routes: %s", strata_strerror(rc));
        strata_scenarios_stop(&sc);
        return rc;
    }

    /* The control thread: tracking -> L1. */
    if (uv_loop_init(&sc->loop) != 0) {
        strata_scenarios_stop(&sc);
        return STRATA_ESYS;
    }
    sc->loop_inited = 1;
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.metrics = env->metrics;
    o.metrics_labels = "role=\"tracking\"";
    rc = strata_redis_create(&sc->tracker, &sc->loop, env->redis_url, &o, err);
    if (rc == STRATA_OK) {
        strata_redis_tracking_cbs cbs = {
            .on_invalidate = on_invalidate, .on_flush = on_flush, .ud = sc};
        rc = strata_redis_tracking_start(
            sc->tracker, (int)(sizeof tracked_prefixes / sizeof tracked_prefixes[0]),
            tracked_prefixes, &cbs);
    }
    if (rc == STRATA_OK) {
        o.metrics_labels = "role=\"sweeper\"";
        rc = strata_redis_create(&sc->sweeper, &sc->loop, env->redis_url, &o, err);
    }
    if (rc == STRATA_OK) {
        uv_timer_init(&sc->loop, &sc->sweep_timer);
        sc->sweep_timer.data = sc;
        sc->sweep_inited = 1;
        uv_timer_start(&sc->sweep_timer, on_sweep, 1000, 1000);
        uv_async_init(&sc->loop, &sc->stop, on_stop);
        sc->stop.data = sc;
        sc->stop_inited = 1;
        if (uv_thread_create(&sc->thread, control_thread, sc) == 0)
            sc->thread_started = 1;
        else
            rc = STRATA_ESYS;
    }
    if (rc != STRATA_OK) {
        strata_buf_printf(err, "%scannot start Redis tracking: %s", err->len ? "; " : "",
                          strata_strerror(rc));
        strata_scenarios_stop(&sc);
        return rc;
    }
    *out = sc;
    return STRATA_OK;
}

void strata_scenarios_stop(strata_scenarios **scp) {
    if (!scp || !*scp)
        return;
    strata_scenarios *sc = *scp;
    if (sc->thread_started) {
        uv_async_send(&sc->stop); /* on_stop destroys the tracker and closes the async */
        uv_thread_join(&sc->thread);
    } else if (sc->loop_inited) {
        strata_redis_destroy(&sc->tracker);
        strata_redis_destroy(&sc->sweeper);
        if (sc->sweep_inited)
            uv_close((uv_handle_t *)&sc->sweep_timer, NULL);
        if (sc->stop_inited)
            uv_close((uv_handle_t *)&sc->stop, NULL);
    }
    if (sc->loop_inited) {
        uv_run(&sc->loop, UV_RUN_DEFAULT); /* finish closing handles */
        uv_loop_close(&sc->loop);
    }
    strata_l1_destroy(&sc->l1);
    strata_free(sc);
    *scp = NULL;
}

/* ---- helpers ------------------------------------------------------------------ */

bool scn_valid_id(const char *s, size_t len) {
    if (!s || len == 0 || len > 64)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!(isalnum((unsigned char)c) || c == '_' || c == '.' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

bool scn_json_id(strata_http_req *req, const cJSON *doc, const char *field, const char **out) {
    strata_buf err = STRATA_BUF_INIT;
    size_t len = 0;
    int rc = strata_json_get_str(doc, field, true, 1, 64, out, &len, &err);
    if (rc == STRATA_OK && !scn_valid_id(*out, len)) {
        strata_buf_printf(&err, "field \"%s\" must be 1..64 characters of [A-Za-z0-9_.:-]", field);
        rc = STRATA_EINVAL;
    }
    if (rc != STRATA_OK)
        strata_http_respond_error(req, 400, "invalid_field", "%s",
                                  err.data ? err.data : "invalid field");
    strata_buf_free(&err);
    return rc == STRATA_OK;
}

bool scn_read_user(strata_http_req *req, const char **user) {
    cJSON *doc;
    if (strata_http_read_json(req, &doc) < 0)
        return false;
    static const char *const allowed[] = {"user_id", NULL};
    strata_buf err = STRATA_BUF_INIT;
    if (strata_json_only_fields(doc, allowed, &err) != STRATA_OK) {
        strata_http_respond_error(req, 400, "invalid_field", "%s", err.data ? err.data : "");
        strata_buf_free(&err);
        return false;
    }
    strata_buf_free(&err);
    return scn_json_id(req, doc, "user_id", user);
}

void *scn_request_ctx(strata_http_req *req, size_t size, const char *what) {
    void *p = strata_http_alloc(req, size);
    if (!p) {
        scn_respond_failure(req, STRATA_ENOMEM, what);
        return NULL;
    }
    memset(p, 0, size);
    return p;
}

bool scn_retry(strata_scenarios *sc, strata_http_req *req, uv_loop_t *loop, int *attempts,
               void (*fn)(void *arg), void *arg) {
    uint64_t delay = 20u << (*attempts < 5 ? *attempts : 5); /* 20 ms .. 640 ms */
    (*attempts)++;
    if (strata_http_is_abandoned(req) || strata_http_remaining_ms(req) <= delay + 50)
        return false;
    if (scn_after(loop, delay, fn, arg) != STRATA_OK)
        return false;
    strata_counter_inc(sc->m_retries);
    return true;
}

/* Time kept back to answer (503 with Retry-After) before the server's own 504. */
#define ANSWER_MARGIN_MS 30

uint32_t scn_call_budget(const strata_scenarios *sc, strata_http_req *req, bool waits) {
    uint64_t left = strata_http_remaining_ms(req);
    uint64_t reserve =
        ANSWER_MARGIN_MS + (waits && sc->cfg.wait_replicas > 0 ? sc->cfg.wait_timeout_ms : 0);
    return left > reserve ? (uint32_t)(left - reserve > UINT32_MAX ? UINT32_MAX : left - reserve)
                          : 1;
}

void scn_respond_limited(strata_http_req *req, long long retry_after_us) {
    char ra[24];
    snprintf(ra, sizeof ra, "%lld", (retry_after_us + 999999) / 1000000);
    strata_http_add_header(req, "Retry-After", ra);
    strata_http_respond_error(req, 429, "rate_limited",
                              "too many attempts by this user; retry in %lld ms",
                              (retry_after_us + 999) / 1000);
}

void scn_respond_failure(strata_http_req *req, int status, const char *what) {
    switch (status) {
    case STRATA_EUNAVAIL:
    case STRATA_ERETRY:
    case STRATA_EUNKNOWN:
    case STRATA_ECLOSED:
    case STRATA_EBREAKER:
    case STRATA_EBACKPRESSURE:
        strata_http_add_header(req, "Retry-After", "1");
        strata_http_respond_error(req, 503, "unavailable", "%s: %s; retry", what,
                                  strata_strerror(status));
        return;
    case STRATA_ETIMEDOUT:
        strata_http_respond_error(req, 504, "timeout", "%s: %s", what, strata_strerror(status));
        return;
    default:
        /* Whatever else maps to 503 (EIO, ECANCELED, ENOMEM...) is also worth a retry. */
        if (strata_status_http(status) == 503)
            strata_http_add_header(req, "Retry-After", "1");
        strata_http_respond_status(req, status, what);
    }
}

typedef struct {
    uv_timer_t t;
    void (*fn)(void *);
    void *arg;
} after_timer;

static void after_closed(uv_handle_t *h) { strata_free(h->data); }

static void after_fire(uv_timer_t *t) {
    after_timer *a = t->data;
    a->fn(a->arg);
    uv_close((uv_handle_t *)&a->t, after_closed);
}

int scn_after(uv_loop_t *loop, uint64_t delay_ms, void (*fn)(void *arg), void *arg) {
    after_timer *a = strata_calloc(1, sizeof *a);
    if (!a)
        return STRATA_ENOMEM;
    a->fn = fn;
    a->arg = arg;
    uv_timer_init(loop, &a->t);
    a->t.data = a;
    uv_timer_start(&a->t, after_fire, delay_ms, 0);
    return STRATA_OK;
}

static int digits(const char **p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return -1;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

int scn_parse_rfc3339(const char *s, int64_t *ms) {
    /* YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM) */
    const char *p = s;
    int Y, M, D, h, m, sec, frac_ms = 0;
    if (digits(&p, 4, &Y) || *p++ != '-' || digits(&p, 2, &M) || *p++ != '-' || digits(&p, 2, &D) ||
        (*p != 'T' && *p != 't' && *p != ' '))
        return STRATA_EINVAL;
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &m) || *p++ != ':' || digits(&p, 2, &sec))
        return STRATA_EINVAL;
    if (*p == '.') {
        p++;
        int n = 0;
        while (isdigit((unsigned char)*p)) {
            if (n < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
            n++;
            p++;
        }
        if (n == 0)
            return STRATA_EINVAL;
        for (; n < 3; n++)
            frac_ms *= 10;
    }
    int off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
            return STRATA_EINVAL;
        off = sign * (oh * 60 + om);
    } else {
        return STRATA_EINVAL;
    }
    if (*p != '\0' || Y < 1970 || Y > 9999 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 ||
        m > 59 || sec > 60)
        return STRATA_EINVAL;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (D > mdays[M - 1] || (M == 2 && D == 29 && !leap))
        return STRATA_EINVAL;
    struct tm tm = {0};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_sec = sec > 59 ? 59 : sec;
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - (int64_t)off * 60) * 1000 + frac_ms;
    return STRATA_OK;
}

bool scn_json_time(strata_http_req *req, const cJSON *doc, const char *field, int64_t *ms) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, field);
    if (!v || cJSON_IsNull(v))
        return true;
    if (cJSON_IsString(v)) {
        if (scn_parse_rfc3339(v->valuestring, ms) == STRATA_OK)
            return true;
        strata_http_respond_error(req, 400, "invalid_field",
                                  "field \"%s\" must be an RFC 3339 time such as "
                                  "2026-11-11T00:00:00Z, or epoch seconds",
                                  field);
        return false;
    }
    strata_buf err = STRATA_BUF_INIT;
    int64_t secs;
    int rc = strata_json_int_value(v, field, 0, 253402300799LL, &secs, &err); /* up to 9999 */
    if (rc == STRATA_OK)
        *ms = secs * 1000;
    else
        strata_http_respond_error(req, 400, "invalid_field", "%s", err.data ? err.data : field);
    strata_buf_free(&err);
    return rc == STRATA_OK;
}
