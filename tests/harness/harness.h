/*
 * harness.h: real Redis, Sentinel, Cluster and PostgreSQL processes for tests.
 *
 * Every process is started on free loopback ports, in a private temp dir
 * under $TMPDIR/strata-harness/, in its own process group with
 * PR_SET_PDEATHSIG, recorded in a process-wide registry that an atexit hook,
 * fatal-signal handlers and a watchdog thread (the test's own deadline) reap,
 * so nothing outlives the test binary even when a test fails or times out.
 * Never uses the Debian packages' own services.
 *
 * Blocking and simple: tests call these from their main thread.  Start
 * processes from the main thread only: PR_SET_PDEATHSIG fires when the
 * *thread* that spawned a child exits.
 * All functions return STRATA_OK or a negative strata_status; on failure
 * they print the reason (and the tail of the process log) to stderr.
 * Objects are owned by the caller until their stop call; one a failing test
 * never stops is stopped and freed by the exit reaper.
 *
 * Typical cmocka main():
 *     int main(void) {
 *         sh_init(100);   // below the CTest timeout (default 120 s)
 *         return cmocka_run_group_tests(tests, group_setup, group_teardown);
 *     }
 * See docs/notes/harness.md for how reaping works.
 */
#ifndef STRATA_HARNESS_H
#define STRATA_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "strata/status.h"

/* ---- process-wide ---------------------------------------------------- */

/**
 * Call first in main(): creates this binary's temp dir, installs the reaper
 * (atexit; SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGABRT handlers that SIGKILL every
 * child, then re-raise), ignores SIGPIPE, and starts a watchdog that kills
 * every child and exits the test with status 124 after `deadline_sec`
 * (0 = no watchdog).  Pass ~10 s less than the test's CTest timeout.
 * Calling it again only moves the deadline.  Harness calls made without it
 * run sh_init(0) themselves.
 */
void sh_init(int deadline_sec);

/** Moves the watchdog deadline to now + deadline_sec (0 = none); starts the watchdog if needed. */
void sh_set_deadline(int deadline_sec);

/** A fresh private directory for this test (removed at exit unless STRATA_KEEP_TMP is set). */
const char *sh_tmpdir(void);

/** The root of every harness's temp dirs: "$TMPDIR/strata-harness" (or /tmp/...). */
const char *sh_harness_root(void);

/**
 * Polls pred(ctx) every `interval_ms` until it returns true or `timeout_ms`
 * passes; returns true if it became true.  The one way tests wait.
 */
bool sh_wait_until(int timeout_ms, int interval_ms, bool (*pred)(void *ctx), void *ctx);

/** Monotonic milliseconds, for measuring recovery times. */
uint64_t sh_now_ms(void);

/* ---- redis-server ------------------------------------------------------ */

typedef struct sh_redis sh_redis;

/**
 * Starts a standalone redis-server on a free port; `extra_conf` is appended
 * to its config (NULL for none), e.g. "appendonly yes\n", and wins over the
 * harness defaults (bind 127.0.0.1, no RDB/AOF, DEBUG and protected CONFIG
 * enabled).  Waits until PING answers PONG (~15 ms).  A bad config fails
 * cleanly with the log tail printed.
 */
int sh_redis_start(sh_redis **out, const char *extra_conf);
/** Stops (SIGTERM, then SIGKILL) and frees; sets *r = NULL. */
void sh_redis_stop(sh_redis **r);
uint16_t sh_redis_port(const sh_redis *r);
/** Its private dir (config, log, data files; owned by r). */
const char *sh_redis_dir(const sh_redis *r);
pid_t sh_redis_pid(const sh_redis *r);
/** "redis://127.0.0.1:PORT" (owned by r). */
const char *sh_redis_url(const sh_redis *r);
/** SIGKILL the server (it stays stopped until sh_redis_restart). */
int sh_redis_kill(sh_redis *r);
/** Starts it again on the same port and dir (keeps its data if persistence is on). */
int sh_redis_restart(sh_redis *r);
/** SIGSTOP / SIGCONT (for timeout tests); STRATA_ENOTFOUND if it is not running. */
int sh_redis_pause(sh_redis *r);
int sh_redis_resume(sh_redis *r);
/**
 * Runs one command on a fresh blocking connection and returns the reply as
 * text (integers as decimal, arrays joined by '\n', nil as "(nil)", errors
 * as "ERR ..." text); caller frees with free().  NULL if unreachable or
 * no reply within 2 s (e.g. the server is paused).  fmt is hiredis's
 * format: "SET %s %b", key, val, len.
 */
char *sh_redis_cmd(uint16_t port, const char *fmt, ...);

/**
 * SET key val, then WAIT nrep 5000, on ONE connection (WAIT covers only the
 * writes of the connection that sends it).  Returns how many replicas
 * acknowledged, or -1 if the SET failed or the server is unreachable.
 */
int sh_redis_set_wait(uint16_t port, const char *key, const char *val, int nrep);

/* ---- Sentinel: 1 master + 2 replicas + 3 sentinels --------------------- */

typedef struct sh_sentinel_set sh_sentinel_set;

/**
 * Starts the set (master name "strata-master", quorum 2,
 * down-after-milliseconds 1000, failover-timeout 3000) and waits until all
 * three sentinels know the master, both replicas and each other, and both
 * replicas are in sync.  ~1-3 s.  A killed master is replaced by a promoted
 * replica ~2 s later (measured by test_harness_sentinel).
 */
int sh_sentinel_start(sh_sentinel_set **out);
void sh_sentinel_stop(sh_sentinel_set **s);
/** "redis-sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/strata-master" (owned). */
const char *sh_sentinel_url(const sh_sentinel_set *s);
/** The current master's port as the sentinels report it (0 if unknown). */
uint16_t sh_sentinel_master_port(const sh_sentinel_set *s);
/** Data nodes: index 0 is the first master; ports of all 3 data nodes. */
uint16_t sh_sentinel_node_port(const sh_sentinel_set *s, int i);
pid_t sh_sentinel_node_pid(const sh_sentinel_set *s, int i);
/** Index (0..2) of the data node that is master now per the sentinels, -1 if unknown. */
int sh_sentinel_master_index(const sh_sentinel_set *s);
/** Port of sentinel i (0..2). */
uint16_t sh_sentinel_sentinel_port(const sh_sentinel_set *s, int i);
/** SIGKILL data node i; STRATA_ENOTFOUND if it is not running. */
int sh_sentinel_kill_node(sh_sentinel_set *s, int i);
/** SIGSTOP / SIGCONT data node i (a paused master is "down" to the sentinels after 1 s). */
int sh_sentinel_pause_node(sh_sentinel_set *s, int i);
int sh_sentinel_resume_node(sh_sentinel_set *s, int i);
/** Restart data node i (it rejoins as a replica of the current master). */
int sh_sentinel_restart_node(sh_sentinel_set *s, int i);
/**
 * Waits until the sentinels report a master other than `old_port` and that
 * node answers ROLE as master; returns the new port or 0 on timeout.
 */
uint16_t sh_sentinel_wait_failover(sh_sentinel_set *s, uint16_t old_port, int timeout_ms);

/* ---- Cluster: 3 masters + 3 replicas ----------------------------------- */

typedef struct sh_cluster sh_cluster;

/**
 * Starts 6 nodes, runs `redis-cli --cluster create ... --cluster-replicas 1`,
 * waits until every node reports cluster_state:ok and all six agree on the
 * topology (masters, their slots, replicas).  cluster-node-timeout 1000.
 * Slow (seconds): share one cluster per test binary and sh_cluster_flush
 * between tests.  Nodes 0..5 in start order; which are masters is
 * redis-cli's choice: ask sh_cluster_master_of_slot.
 */
int sh_cluster_start(sh_cluster **out);
void sh_cluster_stop(sh_cluster **c);
/** "redis-cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3" (owned). */
const char *sh_cluster_url(const sh_cluster *c);
int sh_cluster_nnodes(const sh_cluster *c);
uint16_t sh_cluster_node_port(const sh_cluster *c, int i);
/** Index of the node that is master for `slot` now per the first live node, -1 if unknown. */
int sh_cluster_master_of_slot(const sh_cluster *c, int slot);
/** Pid of node i (0 while killed). */
pid_t sh_cluster_node_pid(const sh_cluster *c, int i);
/** Index of a live replica of master node `master` now, -1 if none. */
int sh_cluster_replica_of(const sh_cluster *c, int master);
/** The hash slot of a key (CRC16 mod 16384, honouring {hash tags}), as CLUSTER KEYSLOT. */
int sh_cluster_keyslot(const char *key);
/** SIGSTOP / SIGCONT node i. */
int sh_cluster_pause_node(sh_cluster *c, int i);
int sh_cluster_resume_node(sh_cluster *c, int i);
/** FLUSHALL SYNC on every live master, then WAIT for its replicas. */
int sh_cluster_flush(sh_cluster *c);
/** SIGKILL node i; its replica takes over after ~2-3 s (cluster-node-timeout 1000). */
int sh_cluster_kill_node(sh_cluster *c, int i);
/** Restarts node i with its nodes.conf: it rejoins (a replaced master as a replica). */
int sh_cluster_restart_node(sh_cluster *c, int i);
/** Waits until cluster_state:ok on all live nodes and slot `slot` has a live master; false on timeout. */
bool sh_cluster_wait_ok(sh_cluster *c, int slot, int timeout_ms);
/**
 * Waits until all six nodes run, report cluster_state:ok and agree on one
 * topology of 3 masters (with all slots) and 3 replicas without failure
 * flags: use after restarting nodes, before the next test relies on roles.
 */
bool sh_cluster_wait_healthy(sh_cluster *c, int timeout_ms);

/* ---- PostgreSQL 15 ------------------------------------------------------ */

typedef struct sh_pg sh_pg;

/**
 * initdb into a temp dir and starts postgres on a free port as an
 * unprivileged user (the harness may run as root), with fsync off for speed.
 * Superuser "strata", trust auth on 127.0.0.1, database "strata".  Waits
 * until it accepts connections.  ~1-2 s (initdb is most of it).  The
 * postmaster is run directly (not via pg_ctl) so that it stays our child.
 */
int sh_pg_start(sh_pg **out);
void sh_pg_stop(sh_pg **p);
/** libpq URL "postgres://strata@127.0.0.1:PORT/strata" (owned). */
const char *sh_pg_url(const sh_pg *p);
uint16_t sh_pg_port(const sh_pg *p);
/** SIGKILL the postmaster and wait until every backend is gone. */
int sh_pg_kill(sh_pg *p);
/** Starts it again on the same port and data dir (crash recovery runs if it was killed). */
int sh_pg_restart(sh_pg *p);
/** Runs SQL on database "strata" over a fresh connection; returns the first column of
 *  the first row as text (free(); "" for SQL NULL), or NULL on error (printed) or no rows. */
char *sh_pg_query(sh_pg *p, const char *sql);
/** The postmaster's pid (0 while killed). */
pid_t sh_pg_pid(const sh_pg *p);
/** Its private dir (data dir is <dir>/data, log <dir>/postgres.log; owned by p). */
const char *sh_pg_dir(const sh_pg *p);
/** SIGSTOP / SIGCONT the postmaster and all its backends. */
int sh_pg_pause(sh_pg *p);
int sh_pg_resume(sh_pg *p);

/* ---- leftovers ------------------------------------------------------------ */

/**
 * Lists processes (redis-server, redis-sentinel, postgres, or anything else)
 * started by a harness whose test binary is no longer running (found by
 * their cwd or command line inside $TMPDIR/strata-harness/<test>-<pid>/);
 * returns how many, printing each to stderr.  Processes of test binaries
 * still running are not counted.  Used by the suite's last test.
 */
int sh_leftover_processes(void);

/** SIGKILLs what sh_leftover_processes would list; returns how many. */
int sh_reap_leftovers(void);

/** How many live processes have their cwd or command line inside `dir` (any owner). */
int sh_count_processes_under(const char *dir);

/* ---- strata serve and HTTP (integration tests of the server) -------------- */

typedef struct sh_serve sh_serve;

/**
 * Starts `$STRATA_BIN serve` with a private --var-dir, --listen 127.0.0.1:0,
 * --admin-token "test-admin-token" and the extra flags in `args`
 * (NULL-terminated; e.g. "--redis", url), logging to a file; waits until it
 * logs event=ready and reads the bound port from that line.
 */
int sh_serve_start(sh_serve **out, const char *const *args);
/** SIGTERM and wait (graceful stop); returns its exit status (or -1). */
int sh_serve_stop(sh_serve **s);
/** SIGKILL it (no cleanup: its managed children die by PDEATHSIG). */
void sh_serve_kill(sh_serve **s);
uint16_t sh_serve_port(const sh_serve *s);
pid_t sh_serve_pid(const sh_serve *s);
const char *sh_serve_log(const sh_serve *s);
const char *sh_serve_var_dir(const sh_serve *s);
#define SH_ADMIN_TOKEN "test-admin-token"

/** An HTTP response read by sh_http. */
typedef struct sh_http_resp {
    int status;    /* 0 when the connection failed */
    char *headers; /* raw header block (malloc) */
    char *body;    /* body, NUL-terminated (malloc) */
    size_t body_len;
} sh_http_resp;

/**
 * One request on a fresh connection (Connection: close): method, path, an
 * optional JSON body and whether to send the admin token.  Waits up to
 * timeout_ms.  Returns resp.status (0 on connection failure).
 */
int sh_http(uint16_t port, const char *method, const char *path, const char *json_body, bool admin,
            int timeout_ms, sh_http_resp *resp);
void sh_http_free(sh_http_resp *resp);
/**
 * sh_http, then fails the test (cmocka fail_msg, with the body) unless the
 * status is `want`; returns the body (caller frees).
 */
char *sh_http_expect(uint16_t port, const char *method, const char *path, const char *json_body,
                     bool admin, int want);

/** sh_http_expect, and also requires the error code `code` in the body. */
void sh_http_expect_code(uint16_t port, const char *method, const char *path, const char *body,
                         bool admin, int want, const char *code);

/** A header's value in a response ("" when absent), in a per-thread buffer valid until
 * this thread's next call. */
const char *sh_http_header(const sh_http_resp *resp, const char *name);

#endif
