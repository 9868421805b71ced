/*
 * server.h: the HTTP/JSON server (libuv + http-parser), as used by `strata serve`.
 *
 * One event loop per worker thread, SO_REUSEPORT listeners, keep-alive and
 * pipelining, limits, SSE, /healthz /readyz /metrics /v1/info, admin auth.
 * See docs/ARCHITECTURE.md and docs/API.md.
 *
 * Lifecycle (from the CLI's main thread):
 *   strata_server_create()  reads the server option group, binds nothing
 *   strata_server_start()   binds (port 0 gets a free port), starts the workers
 *   strata_server_stop()    graceful: stop accepting, drain, run shutdown hooks
 *   strata_server_destroy() joins the workers and frees everything
 */
#ifndef STRATA_SERVER_H
#define STRATA_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "strata/buf.h"
#include "strata/clock.h"
#include "strata/metrics.h"
#include "strata/options.h"

typedef struct strata_server strata_server;

/** The server's options table (listen, workers, limits, timeouts, admin token, ...). */
extern strata_opt_group strata_server_opt_group;

/**
 * A readiness probe for GET /readyz: a blocking check run off the event loop
 * (on libuv's thread pool); returns STRATA_OK when the dependency is reachable
 * and may write a short reason into `why` otherwise.
 */
typedef int (*strata_server_probe_fn)(void *ctx, strata_buf *why);

/** A hook run once during graceful shutdown, after the drain (e.g. persister flush). */
typedef void (*strata_server_hook_fn)(void *ctx);

typedef struct strata_server_deps {
    strata_metrics *metrics;  /* borrowed; the registry /metrics serves */
    strata_clock *clock;      /* borrowed; an offset clock when --debug-clock */
    strata_opt_group *groups; /* borrowed; every option group, for /v1/admin/config and /v1/info */
    size_t ngroups;
} strata_server_deps;

/** Creates the server from the option group's values; STRATA_ERANGE with *err on bad values. */
int strata_server_create(strata_server **out, const strata_server_deps *deps, strata_buf *err);

/** Registers a readiness probe under `name` (before start). */
int strata_server_add_probe(strata_server *s, const char *name, strata_server_probe_fn fn,
                            void *ctx);

/** Registers a shutdown hook (before start); hooks run in reverse order of registration. */
int strata_server_add_shutdown_hook(strata_server *s, strata_server_hook_fn fn, void *ctx);

/** Binds and starts the worker threads; STRATA_ESYS with *err when it cannot bind. */
int strata_server_start(strata_server *s, strata_buf *err);

/** The bound address as "host:port" (valid after start). */
const char *strata_server_address(const strata_server *s);

/** The admin token in effect (given, or generated at create when none was). */
const char *strata_server_admin_token(const strata_server *s);

/** Graceful stop: blocks until drained (bounded by the drain timeout) and hooks ran. */
void strata_server_stop(strata_server *s);

/** Frees the server (stopping it first if needed); sets *s = NULL. */
void strata_server_destroy(strata_server **s);

#endif
