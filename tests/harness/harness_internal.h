/*
 * harness_internal.h: what the harness's own files share (not for tests).
 *
 * The harness is split by topology: harness.c (process registry, reaper,
 * watchdog, temp dirs, leftovers), harness_redis.c (one redis-server or
 * redis-sentinel process, standalone servers, sh_redis_cmd),
 * harness_sentinel.c, harness_cluster.c and harness_pg.c.  Internal names
 * carry a double underscore: sh__.
 */
#ifndef STRATA_HARNESS_INTERNAL_H
#define STRATA_HARNESS_INTERNAL_H

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "harness.h"

/* ---- one child process ----------------------------------------------------- */

/**
 * A process the harness started.  argv and strings are owned (freed by
 * sh__child_clear).  While pid != 0 the pid is in the reaper's registry.
 */
typedef struct sh__child {
    pid_t pid;
    char *name; /* for messages, e.g. "redis:21034" */
    char *dir;  /* cwd of the child; everything it writes lives here */
    char *log;  /* stdout+stderr of the child */
    char **argv;
    bool as_user; /* drop root to uid/gid (postgres) */
    uid_t uid;
    gid_t gid;
} sh__child;

/** Sets argv (copied; NULL-terminated list of strings). */
void sh__child_set_argv(sh__child *c, const char *const *argv);
/** Spawns the child (own process group, PDEATHSIG) and registers it with the reaper. */
int sh__child_spawn(sh__child *c);
/** True while the child has not exited (reaps it if it has). */
bool sh__child_running(sh__child *c);
/** Waits up to timeout_ms (<0: forever) for the child to exit; reaps and unregisters it. */
int sh__child_wait(sh__child *c, int timeout_ms, int *status);
/** SIGKILL the child's group and reap; no-op if not running. */
void sh__child_kill(sh__child *c);
/** Sends `sig` (e.g. SIGINT for postgres), waits grace_ms, then SIGKILL; always reaps. */
void sh__child_stop(sh__child *c, int sig, int grace_ms);
/** Sends a signal to the child's group (SIGSTOP/SIGCONT); STRATA_ENOTFOUND if not running. */
int sh__child_signal(sh__child *c, int sig);
/** Frees strings and argv (the child must have been stopped). */
void sh__child_clear(sh__child *c);
/** Prints the last `lines` lines of the child's log to stderr, prefixed by why. */
void sh__child_dump_log(const sh__child *c, const char *why, int lines);
/** True if the child's log contains `needle`. */
bool sh__child_log_contains(const sh__child *c, const char *needle);

/* ---- the harness's objects ----------------------------------------------------- */

/**
 * Tracks a live topology object so that the exit reaper can stop and free
 * it even if a failing test never reaches its stop call (cmocka longjmps out).
 */
void sh__track(void *obj, void (*destroy)(void *obj));
void sh__untrack(void *obj);
/** Lazily runs sh_init(0) if the test did not. */
void sh__ensure_init(void);

/* ---- helpers ----------------------------------------------------------------------- */

/** malloc-or-abort, printf into a new string (abort on ENOMEM: this is test code). */
char *sh__strdup(const char *s);
char *sh__fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *sh__calloc(size_t n, size_t size);
/** mkdir -p with mode; 0 or -1. */
int sh__mkdirs(const char *path, mode_t mode);
/** Writes a whole file; 0 or -1. */
int sh__write_file(const char *path, const char *text);
/** Reads a whole file (NUL-terminated; caller frees); NULL on error. */
char *sh__read_file(const char *path, size_t *len);
/** rm -rf; 0 or -1. */
int sh__rmtree(const char *path);
/** A new subdirectory "<tmpdir>/<prefix>-<n>" (owned string). */
char *sh__new_subdir(const char *prefix);
void sh__sleep_ms(int ms);
/** Sends sig to every live process whose cwd or command line is inside dir; returns how many. */
int sh__signal_processes_under(const char *dir, int sig);
/** SIGSTOP (stop) or SIGCONT every process inside dir and wait until their state shows it. */
int sh__stop_processes_under(const char *dir, bool stop);
/**
 * Waits up to grace_ms for every process inside dir to exit on its own,
 * then SIGKILLs what is left and waits until they are gone; returns how
 * many needed SIGKILL.
 */
int sh__kill_processes_under(const char *dir, int grace_ms);
/** Picks a free loopback port, avoiding ports the harness handed out recently;
 *  with_bus also requires port+10000 (Cluster bus) to be free. */
int sh__pick_port(uint16_t *port, bool with_bus);

/* ---- redis -------------------------------------------------------------------------------- */

/** One command on a fresh connection with `timeout_ms` for connect and reply; NULL if unreachable. */
redisReply *sh__redis_vcmd(uint16_t port, int timeout_ms, const char *fmt, va_list ap);
redisReply *sh__redis_rcmd(uint16_t port, int timeout_ms, const char *fmt, ...);
/** Finds "key:value" in an INFO text; copies value (up to the line end) into out. */
bool sh__info_field(const char *info, const char *key, char *out, size_t outlen);
/** INFO <section> as text (caller frees), NULL if unreachable. */
char *sh__redis_info(uint16_t port, const char *section);

/**
 * One redis-server (or sentinel) process: writes `conf` (which must not set
 * port/dir: they are added) into dir/<file>, spawns, waits for PING.  Picks a
 * fresh port and retries when the chosen one was taken meanwhile; with
 * *port != 0 on entry it keeps that port (restart).
 */
typedef struct sh__rnode {
    sh__child ch;
    uint16_t port;
    bool sentinel;
    bool cluster;
} sh__rnode;

int sh__rnode_start(sh__rnode *n, const char *dir, const char *conf);
/** The config file text for the node (its port and dir, the harness defaults, then conf). */
char *sh__rnode_conf_text(const sh__rnode *n, const char *conf);
/** Starts the node again with its (possibly rewritten) config file on the same port. */
int sh__rnode_restart(sh__rnode *n);
/** Waits for PING -> PONG while the process lives; STRATA_OK or an error. */
int sh__rnode_wait_ready(sh__rnode *n, int timeout_ms);

#endif
