/*
 * builtin.c: the server's own routes.
 *
 *   GET  /healthz           200 {"status":"ok"}: the process is up and serving
 *   GET  /readyz            runs the registered probes on libuv's thread pool;
 *                           200 {"status":"ready",...} or 503 {"status":"unavailable",...}
 *   GET  /metrics           the registry in Prometheus text format 0.0.4
 *   GET  /v1/info           version, uptime, workers, options in effect, latency quantiles
 *   GET  /v1/admin/config   (admin) the effective configuration, secrets redacted
 *   POST /v1/admin/clock    (admin, --debug-clock only) {"advance_ms":N} moves the clock
 *
 * See docs/notes/api.md for the bodies.
 */
#include <string.h>

#include "server/server_internal.h"
#include "strata/alloc.h"
#include "strata/json.h"
#include "strata/status.h"

static void h_healthz(strata_http_req *req, void *ctx) {
    (void)ctx;
    static const char body[] = "{\"status\":\"ok\"}";
    strata_http_respond(req, 200, "application/json", body, sizeof body - 1);
}

/* ---- /readyz ------------------------------------------------------------------ */

typedef struct ready_job ready_job;
typedef struct ready_item {
    uv_work_t work;
    ready_job *job;
    const srv_probe *probe;
    strata_buf why;
    int rc;
} ready_item;

struct ready_job {
    strata_http_req *req;
    int pending;
    int n;
    ready_item items[];
};

static void probe_work(uv_work_t *w) {
    ready_item *it = w->data;
    it->rc = it->probe->fn(it->probe->ctx, &it->why);
}

static void ready_finish(ready_job *job) {
    strata_http_req *req = job->req;
    strata_buf b = STRATA_BUF_INIT;
    bool ok = true;
    for (int i = 0; i < job->n; i++)
        ok = ok && job->items[i].rc == STRATA_OK;
    strata_buf_printf(&b, "{\"status\":\"%s\",\"checks\":{", ok ? "ready" : "unavailable");
    for (int i = 0; i < job->n; i++) {
        ready_item *x = &job->items[i];
        if (i)
            strata_buf_puts(&b, ",");
        strata_buf_json_str(&b, x->probe->name, strlen(x->probe->name));
        if (x->rc == STRATA_OK) {
            strata_buf_puts(&b, ":{\"ok\":true}");
        } else {
            strata_buf_puts(&b, ":{\"ok\":false,\"error\":");
            const char *why = x->why.data && x->why.len ? x->why.data : strata_strerror(x->rc);
            strata_buf_json_str(&b, why, strlen(why));
            strata_buf_puts(&b, "}");
        }
        strata_buf_free(&x->why);
    }
    strata_buf_puts(&b, "}}");
    if (b.oom)
        strata_http_respond_status(req, STRATA_ENOMEM, NULL);
    else
        strata_http_respond_json(req, ok ? 200 : 503, b.data, b.len);
    strata_buf_free(&b);
}

static void probe_done(uv_work_t *w, int status) {
    ready_item *it = w->data;
    ready_job *job = it->job;
    if (status < 0) /* cancelled */
        it->rc = STRATA_ECANCELED;
    if (--job->pending == 0)
        ready_finish(job);
}

static void h_readyz(strata_http_req *req, void *ctx) {
    strata_server *s = ctx;
    if (s->nprobes == 0) {
        strata_http_respond_jsonf(req, 200, "{\"status\":\"ready\",\"checks\":{}}");
        return;
    }
    ready_job *job = strata_http_alloc(req, sizeof *job + (size_t)s->nprobes * sizeof(ready_item));
    if (!job) {
        strata_http_respond_status(req, STRATA_ENOMEM, NULL);
        return;
    }
    memset(job, 0, sizeof *job + (size_t)s->nprobes * sizeof(ready_item));
    job->req = req;
    job->n = s->nprobes;
    for (int i = 0; i < s->nprobes; i++) {
        ready_item *it = &job->items[i];
        it->job = job;
        it->probe = &s->probes[i];
        it->work.data = it;
        job->pending++;
        if (uv_queue_work(strata_http_loop(req), &it->work, probe_work, probe_done) != 0) {
            it->rc = STRATA_ESYS;
            job->pending--;
        }
    }
    if (job->pending == 0)
        ready_finish(job); /* nothing could be queued */
}

/* ---- /metrics ----------------------------------------------------------------- */

static void h_metrics(strata_http_req *req, void *ctx) {
    strata_server *s = ctx;
    strata_buf b = STRATA_BUF_INIT;
    if (s->deps.metrics)
        strata_metrics_render_prometheus(s->deps.metrics, &b);
    if (b.oom) {
        strata_buf_free(&b);
        strata_http_respond_status(req, STRATA_ENOMEM, NULL);
        return;
    }
    strata_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "",
                        b.len);
    strata_buf_free(&b);
}

/* ---- /v1/info and admin -------------------------------------------------------- */

static void options_json(strata_server *s, strata_buf *b) {
    if (s->deps.groups && s->deps.ngroups)
        strata_options_json(s->deps.groups, s->deps.ngroups, b);
    else
        strata_options_json(&strata_server_opt_group, 1, b);
}

static void h_info(strata_http_req *req, void *ctx) {
    strata_server *s = ctx;
    strata_buf b = STRATA_BUF_INIT;
    uint64_t up_ms = (uv_hrtime() - s->start_ns) / 1000000u;
    strata_buf_printf(&b,
                      "{\"name\":\"strata\",\"version\":\"%s\",\"uptime_ms\":%llu,\"workers\":%d,"
                      "\"connections\":%lld,\"listen\":",
                      STRATA_VERSION, (unsigned long long)up_ms, s->nworkers,
                      (long long)atomic_load(&s->nconns));
    strata_buf_json_str(&b, s->address, strlen(s->address));
    strata_buf_puts(&b, ",\"options\":");
    options_json(s, &b);
    strata_buf_puts(&b, ",\"latency_us\":{");
    bool first = true;
    for (int i = 0; i <= s->nroutes; i++) {
        const srv_route *r = i < s->nroutes ? s->routes[i] : s->unmatched;
        if (!r || !r->latency)
            continue;
        /* several methods share a pattern's histogram: list it once */
        bool seen = false;
        for (int j = 0; j < i && j < s->nroutes && !seen; j++)
            seen = s->routes[j]->latency == r->latency;
        if (seen)
            continue;
        const strata_histogram *h = r->latency;
        if (!first)
            strata_buf_puts(&b, ",");
        first = false;
        strata_buf_json_str(&b, r->pattern, strlen(r->pattern));
        strata_buf_printf(
            &b,
            ":{\"count\":%llu,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,"
            "\"max\":%.1f}",
            (unsigned long long)strata_histogram_count(h), strata_histogram_quantile(h, 0.5) / 1e3,
            strata_histogram_quantile(h, 0.9) / 1e3, strata_histogram_quantile(h, 0.99) / 1e3,
            strata_histogram_quantile(h, 0.999) / 1e3, strata_histogram_max(h) / 1e3);
    }
    strata_buf_puts(&b, "}}");
    if (b.oom)
        strata_http_respond_status(req, STRATA_ENOMEM, NULL);
    else
        strata_http_respond_json(req, 200, b.data, b.len);
    strata_buf_free(&b);
}

static void h_admin_config(strata_http_req *req, void *ctx) {
    strata_server *s = ctx;
    strata_buf b = STRATA_BUF_INIT;
    strata_buf_puts(&b, "{\"options\":");
    options_json(s, &b);
    strata_buf_puts(&b, "}");
    if (b.oom)
        strata_http_respond_status(req, STRATA_ENOMEM, NULL);
    else
        strata_http_respond_json(req, 200, b.data, b.len);
    strata_buf_free(&b);
}

/* Ten years either way is plenty for any time-window test. */
#define CLOCK_MAX_ADVANCE_MS (10LL * 366 * 24 * 3600 * 1000)

static void h_admin_clock(strata_http_req *req, void *ctx) {
    strata_server *s = ctx;
    cJSON *doc;
    if (strata_http_read_json(req, &doc) < 0)
        return;
    strata_buf err = STRATA_BUF_INIT;
    static const char *const allowed[] = {"advance_ms", NULL};
    int64_t adv = 0;
    int rc = strata_json_only_fields(doc, allowed, &err);
    if (rc == STRATA_OK)
        rc = strata_json_get_int(doc, "advance_ms", true, -CLOCK_MAX_ADVANCE_MS,
                                 CLOCK_MAX_ADVANCE_MS, &adv, &err);
    if (rc != STRATA_OK) {
        strata_http_respond_error(req, 400, "invalid_field", "%s",
                                  err.data ? err.data : "bad body");
        strata_buf_free(&err);
        return;
    }
    strata_buf_free(&err);
    rc = strata_clock_advance(s->clock, adv * (int64_t)STRATA_NS_PER_MS);
    if (rc != STRATA_OK) {
        strata_http_respond_error(req, 409, "clock_fixed", "the server clock cannot be moved (%s)",
                                  strata_strerror(rc));
        return;
    }
    strata_http_respond_jsonf(
        req, 200, "{\"wall_ms\":%lld,\"offset_ms\":%lld}",
        (long long)strata_clock_wall_ms(s->clock),
        (long long)(strata_clock_offset_ns(s->clock) / (int64_t)STRATA_NS_PER_MS));
}

int srv_builtin_register(strata_server *s) {
    int rc = STRATA_OK;
    if (rc == STRATA_OK)
        rc = srv_router_add(s, "GET", "/healthz", 0, h_healthz, s);
    if (rc == STRATA_OK)
        rc = srv_router_add(s, "GET", "/readyz", 0, h_readyz, s);
    if (rc == STRATA_OK)
        rc = srv_router_add(s, "GET", "/metrics", 0, h_metrics, s);
    if (rc == STRATA_OK)
        rc = srv_router_add(s, "GET", "/v1/info", 0, h_info, s);
    if (rc == STRATA_OK)
        rc = srv_router_add(s, "GET", "/v1/admin/config", STRATA_ROUTE_ADMIN, h_admin_config, s);
    if (rc == STRATA_OK && s->cfg.debug_clock)
        rc = srv_router_add(s, "POST", "/v1/admin/clock", STRATA_ROUTE_ADMIN, h_admin_clock, s);
    return rc;
}
