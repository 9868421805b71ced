/*
 * http.h: the handler API every Strata scenario is written against.
 *
 * A scenario registers routes on the server before it starts:
 *
 *     static void get_item(strata_http_req *req, void *ctx) {
 *         const char *id = strata_http_param(req, "id");
 *         ...
 *         strata_http_respond_jsonf(req, 200, "{\"id\":\"%s\"}", id);
 *     }
 *     strata_server_route(s, "GET", "/v1/items/{id}", get_item, scenario);
 *
 * Threading.  Each worker thread runs one libuv loop; a handler is called on
 * the worker that owns the connection and every call on a request (reading
 * it, responding, streaming) must happen on that same thread, i.e. from the
 * handler itself or from a callback of that worker's loop
 * (strata_http_loop()).  Per-worker state (a Redis connection bound to the
 * loop, say) is set up through strata_server_add_worker_slot().
 *
 * Life of a request.  The handler is called once the whole request (headers
 * and body) has arrived.  It must eventually finish the request exactly once,
 * with one of the strata_http_respond*() functions or, for a stream, with
 * strata_http_stream_end().  It may do so before returning (synchronous) or
 * later from a callback on the worker's loop (asynchronous: simply return
 * without responding).  The request object, its headers, body, params and
 * arena stay valid until it is finished, even when the client has gone away
 * meanwhile or the server has already answered 504 because the request
 * timeout passed: then the late response is discarded, nothing else changes.
 * After finishing, the request must not be touched again.
 *
 * Requests on one connection are handled one at a time, in order (HTTP/1.1
 * pipelining): the next request on a connection is parsed only once the
 * previous one is finished, so responses always leave in request order.
 *
 * Errors.  Every error response has the body
 *     {"error":{"code":"<snake_case>","message":"<text>"}}
 * strata_http_respond_error() writes it; strata_http_respond_status() maps a
 * strata_status onto it (status.h gives the HTTP code).
 */
#ifndef STRATA_SERVER_HTTP_H
#define STRATA_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "server/server.h"
#include "strata/clock.h"
#include "strata/metrics.h"

typedef struct strata_http_req strata_http_req;

/** A route handler (see the life of a request above). */
typedef void (*strata_http_handler)(strata_http_req *req, void *ctx);

/* ---- routes ------------------------------------------------------------ */

enum {
    STRATA_ROUTE_ADMIN = 1u << 0, /* requires Authorization: Bearer <admin token>, 401 otherwise */
};

/**
 * Registers `handler` for `method` ("GET", "POST", ...; HEAD is served by GET
 * routes with the body left out) and `pattern`, a path whose segments are
 * either literal or a parameter `{name}` matching one non-empty segment:
 * "/v1/items/{id}/comments".  Literal segments win over parameters when both
 * match.  A path that matches a pattern but no method gets 405 with `Allow`;
 * no pattern at all, 404.  The pattern is copied; `ctx` is borrowed and handed
 * to every call.  Call before strata_server_start().  Returns STRATA_OK,
 * STRATA_EINVAL for a malformed pattern/method, STRATA_EEXIST when the same
 * method and pattern are already registered, STRATA_ENOMEM.
 */
int strata_server_route(strata_server *s, const char *method, const char *pattern,
                        strata_http_handler handler, void *ctx);

/** As strata_server_route() with STRATA_ROUTE_* flags. */
int strata_server_route_ex(strata_server *s, const char *method, const char *pattern,
                           unsigned flags, strata_http_handler handler, void *ctx);

/* ---- per-worker state ---------------------------------------------------- */

/**
 * Called on each worker thread, with its loop, before it accepts anything:
 * sets *wdata (e.g. a Redis client bound to `loop`).  A non-OK return makes
 * strata_server_start() fail.
 */
typedef int (*strata_server_worker_init_fn)(uv_loop_t *loop, void *ctx, void **wdata);
/** Called on each worker thread after the drain and the shutdown hooks, before its loop closes. */
typedef void (*strata_server_worker_fini_fn)(uv_loop_t *loop, void *ctx, void *wdata);

/**
 * Registers a per-worker slot (before start); returns its index (>= 0) for
 * strata_http_worker_slot(), or STRATA_ENOMEM / STRATA_EINVAL.  Slots are
 * finalised in reverse order of registration.
 */
int strata_server_add_worker_slot(strata_server *s, strata_server_worker_init_fn init,
                                  strata_server_worker_fini_fn fini, void *ctx);

/** The server's dependencies (metrics, clock, option groups) as given to create. */
const strata_server_deps *strata_server_get_deps(const strata_server *s);

/* ---- reading the request ------------------------------------------------- */

/** The method as text ("GET", ...); HEAD requests report "HEAD". */
const char *strata_http_method(const strata_http_req *req);
/** The path without the query string, as sent (not percent-decoded). */
const char *strata_http_path(const strata_http_req *req);
/** The raw query string without '?', "" when none. */
const char *strata_http_query_string(const strata_http_req *req);
/** The route pattern that matched ("/v1/items/{id}"). */
const char *strata_http_route(const strata_http_req *req);

/** A path parameter by name, percent-decoded; NULL if the pattern has none such. */
const char *strata_http_param(const strata_http_req *req, const char *name);
/**
 * A query parameter by name, percent-decoded ('+' is a space); the first one
 * when repeated; NULL if absent.  The string lives in the request arena.
 */
const char *strata_http_query(strata_http_req *req, const char *name);
/** A request header by name (case-insensitive); NULL if absent; repeated headers: the first. */
const char *strata_http_header(const strata_http_req *req, const char *name);

/** The body (NUL-terminated, so text bodies can be read as strings) and its length. */
const char *strata_http_body(const strata_http_req *req, size_t *len);

/**
 * Parses the body as JSON through the strict layer of strata/json.h (depth
 * limit, duplicate keys, UTF-8, number grammar).  On success *out is the
 * document (owned by the request: freed when it is finished).  On failure it
 * has already answered 400 invalid_json and returns a negative status: the
 * handler just returns.
 */
int strata_http_read_json(strata_http_req *req, cJSON **out);

/** Monotonic deadline (ns, uv_hrtime base) by which the answer is due (--request-timeout). */
uint64_t strata_http_deadline_ns(const strata_http_req *req);
/** Milliseconds left before the deadline (0 when passed): pass it to Redis and DB calls. */
uint64_t strata_http_remaining_ms(const strata_http_req *req);

/** True once the client is gone or the server already answered (504): skip further work. */
bool strata_http_is_abandoned(const strata_http_req *req);

/**
 * Called at most once, on the worker, when the client disconnects (or the
 * request timed out) before the request is finished: stop work, then still
 * finish the request (respond or stream_end), which then only frees it.
 */
void strata_http_on_abandon(strata_http_req *req, void (*fn)(strata_http_req *req, void *ctx),
                            void *ctx);

/** The worker's loop (for timers, Redis adapters, uv_queue_work). */
uv_loop_t *strata_http_loop(const strata_http_req *req);
/** The worker's data of a slot from strata_server_add_worker_slot(); NULL for a bad index. */
void *strata_http_worker_slot(const strata_http_req *req, int slot);
/** The server's clock (the debug clock when --debug-clock). */
strata_clock *strata_http_clock(const strata_http_req *req);
/** The server's metrics registry. */
strata_metrics *strata_http_metrics(const strata_http_req *req);

/* ---- the per-request arena ----------------------------------------------- */

/**
 * Allocates `size` bytes (16-byte aligned) that live until the request is
 * finished; NULL on ENOMEM.  No free: everything goes at once.
 */
void *strata_http_alloc(strata_http_req *req, size_t size);
/** Copies a string into the arena. */
char *strata_http_strdup(strata_http_req *req, const char *s);
/** printf into the arena. */
char *strata_http_sprintf(strata_http_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- responding ---------------------------------------------------------- */

/**
 * Adds a response header for the response to come (before respond or
 * stream_begin).  Both strings are copied.  Server, Date, Content-Length,
 * Content-Type, Connection and Transfer-Encoding are written by the server.
 * STRATA_EINVAL if a name or value holds CR, LF or (name) ':'.
 */
int strata_http_add_header(strata_http_req *req, const char *name, const char *value);

/** Finishes the request with `body` (copied) and the given content type (NULL: none). */
void strata_http_respond(strata_http_req *req, int status, const char *content_type,
                         const void *body, size_t len);
/** Finishes the request with a JSON body (application/json). */
void strata_http_respond_json(strata_http_req *req, int status, const char *json, size_t len);
/** Finishes the request with a JSON body formatted by printf. */
void strata_http_respond_jsonf(strata_http_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** Finishes the request with cJSON's compact rendering of `doc` (borrowed). */
void strata_http_respond_cjson(strata_http_req *req, int status, const cJSON *doc);
/**
 * Finishes the request with {"error":{"code":code,"message":<printf>}}; the
 * message is JSON-escaped.
 */
void strata_http_respond_error(strata_http_req *req, int status, const char *code, const char *fmt,
                               ...) __attribute__((format(printf, 4, 5)));
/**
 * Finishes the request with the error for a strata_status: HTTP status from
 * strata_status_http(), code = lower-case status name without the E
 * ("timedout", "unavail"...), message = `msg` or strata_strerror().
 */
void strata_http_respond_status(strata_http_req *req, int rc, const char *msg);

/* ---- streaming: chunked responses and Server-Sent Events ------------------ */

/**
 * Starts a streamed response: status line and headers now, then the body in
 * chunks (Transfer-Encoding: chunked; HTTP/1.0 clients get a body ended by
 * closing the connection).  The request timeout no longer applies.  Returns
 * STRATA_OK, or STRATA_ECLOSED when the client is gone (still call
 * stream_end).
 */
int strata_http_stream_begin(strata_http_req *req, int status, const char *content_type);

/**
 * Sends one chunk (copied).  STRATA_OK; STRATA_ECLOSED when the client is
 * gone; STRATA_EBACKPRESSURE when the connection's output is over its
 * high-water mark (the data was still queued; slow down or drop the client by
 * calling stream_end).
 */
int strata_http_stream_write(strata_http_req *req, const void *data, size_t len);

/** Ends the stream (writes the last chunk) and finishes the request. */
void strata_http_stream_end(strata_http_req *req);

/**
 * Starts an SSE stream: 200, text/event-stream, no caching.  While it is open
 * the server sends a comment line every --sse-heartbeat, which both keeps
 * proxies from timing out and detects a dead client promptly (the
 * disconnect reaches strata_http_on_abandon()).
 */
int strata_http_sse_begin(strata_http_req *req);

/**
 * Sends one event: optional `event:` and `id:` lines (NULL to omit; must not
 * hold CR/LF), then `data` split into one `data:` line per line.  Returns as
 * strata_http_stream_write().
 */
int strata_http_sse_send(strata_http_req *req, const char *event, const char *id, const char *data,
                         size_t len);

#endif
