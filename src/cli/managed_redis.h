/*
 * managed_redis.h: the redis-server `strata serve` starts itself when no
 * --redis is given.  It lives under <var>/redis/ (config, AOF, pid, log,
 * unix socket) with AOF on (appendfsync everysec) and maxmemory-policy
 * volatile-lfu: cache keys carry TTLs and may be evicted, truth keys (stock,
 * streams) never carry one and never are.  It is a child in its own process
 * group with PR_SET_PDEATHSIG, so it cannot outlive strata; a leftover from
 * a previous run (pid file) is stopped before a new one starts.
 */
#ifndef STRATA_CLI_MANAGED_REDIS_H
#define STRATA_CLI_MANAGED_REDIS_H

#include <sys/types.h>

#include "strata/buf.h"

typedef struct managed_redis managed_redis;

/** Starts redis-server and waits until it answers PING (AOF loaded). Call from the main thread. */
int managed_redis_start(managed_redis **out, const char *var_dir, const char *maxmemory,
                        strata_buf *err);
/** URL the tiers connect to: unix:///.../redis.sock (or redis://127.0.0.1:PORT). */
const char *managed_redis_url(const managed_redis *m);
/** TCP port on 127.0.0.1 (for redis-cli and benchmarks). */
int managed_redis_port(const managed_redis *m);
pid_t managed_redis_pid(const managed_redis *m);
/**
 * Reaps the child if it exited and starts it again (same files: the AOF
 * brings the data back).  Returns 1 if it restarted it, 0 if it was running,
 * negative status if it could not.
 */
int managed_redis_supervise(managed_redis *m, strata_buf *err);
/** Stops it (SIGTERM: Redis fsyncs the AOF and exits), frees, sets *m = NULL. */
void managed_redis_stop(managed_redis **m);

#endif
