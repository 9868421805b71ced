/*
 * fuzz_http.c: libFuzzer driver over the HTTP/1.1 request path: the parser
 * callbacks, limits, smuggling checks, pipelining, the router (params,
 * percent-decoding, 404/405), admin auth, JSON bodies and the response writer.
 *
 * One worker is set up without its thread; each input becomes one connection
 * (a socketpair adopted by the worker) and is fed in pieces whose sizes come
 * from the input's first byte, so request boundaries fall everywhere.  The
 * worker's loop then runs until the output is flushed, and the connection is
 * closed.  Anything ASan/UBSan reports, or a leak, is a finding.
 *
 *   cmake -S . -B build/fuzz -DCMAKE_C_COMPILER=clang-14 -DCMAKE_BUILD_TYPE=Fuzz
 *   cmake --build build/fuzz --target fuzz_http
 *   build/fuzz/fuzz/fuzz_http -max_total_time=600 tests/fuzz/corpus/fuzz_http
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/server_internal.h"
#include "strata/json.h"
#include "strata/status.h"
#include "strata/log.h"
#include "strata/metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static strata_server *g_srv;
static srv_worker g_w;
static strata_metrics *g_m;

static void h_param(strata_http_req *req, void *ctx) {
    (void)ctx;
    const char *a = strata_http_param(req, "a");
    const char *q = strata_http_query(req, "q");
    strata_http_respond_jsonf(req, 200, "{\"a\":\"%zu\",\"q\":%zu}", a ? strlen(a) : 0,
                              q ? strlen(q) : 0);
}

static void h_json(strata_http_req *req, void *ctx) {
    (void)ctx;
    cJSON *doc;
    if (strata_http_read_json(req, &doc) < 0)
        return;
    int64_t n;
    strata_buf err = STRATA_BUF_INIT;
    if (strata_json_get_int(doc, "n", true, 0, 1000, &n, &err) != STRATA_OK)
        strata_http_respond_error(req, 400, "invalid_field", "%s", err.data ? err.data : "");
    else
        strata_http_respond_jsonf(req, 200, "{\"n\":%lld}", (long long)n);
    strata_buf_free(&err);
}

static void h_stream(strata_http_req *req, void *ctx) {
    (void)ctx;
    strata_http_sse_begin(req);
    strata_http_sse_send(req, "e", "1", "a\nb", 3);
    strata_http_stream_end(req);
}

static void setup(void) {
    strata_log_set_level(STRATA_LOG_ERROR);
    char *argv[] = {"--listen",         "127.0.0.1:0", "--workers",          "1",
                    "--admin-token",    "tok",         "--max-header-bytes", "2k",
                    "--max-body-bytes", "4k",          "--max-url-bytes",    "512"};
    strata_buf err = STRATA_BUF_INIT;
    if (strata_options_load(&strata_server_opt_group, 1, 12, argv, NULL, NULL, &err) != STRATA_OK)
        abort();
    g_m = strata_metrics_create();
    strata_server_deps deps = {.metrics = g_m};
    if (strata_server_create(&g_srv, &deps, &err) != STRATA_OK)
        abort();
    strata_server_route(g_srv, "GET", "/p/{a}/x", h_param, NULL);
    strata_server_route(g_srv, "POST", "/p/{a}/x", h_param, NULL);
    strata_server_route(g_srv, "GET", "/p/lit/x", h_param, NULL);
    strata_server_route(g_srv, "POST", "/json", h_json, NULL);
    strata_server_route(g_srv, "GET", "/sse", h_stream, NULL);
    strata_buf_free(&err);
    if (srv_worker_setup(g_srv, &g_w, 0) != STRATA_OK)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_srv)
        setup();
    if (size < 1)
        return 0;
    size_t step = (size_t)(data[0] % 64) + 1;
    data++;
    size--;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        return 0;
    int big = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    srv_conn *c = srv_conn_adopt(&g_w, sv[0]);
    if (!c) {
        close(sv[1]);
        return 0;
    }
    char sink[65536];
    for (size_t off = 0; off < size && !c->closing; off += step) {
        size_t n = size - off < step ? size - off : step;
        srv_conn_input(c, (const char *)data + off, n);
        uv_run(&g_w.loop, UV_RUN_NOWAIT);
        while (read(sv[1], sink, sizeof sink) > 0) {
        }
    }
    if (!c->closing)
        srv_conn_close(c);
    uv_run(&g_w.loop, UV_RUN_NOWAIT);
    uv_run(&g_w.loop, UV_RUN_NOWAIT);
    while (read(sv[1], sink, sizeof sink) > 0) {
    }
    close(sv[1]);
    return 0;
}
