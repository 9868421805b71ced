/*
 * strata/proc.h: child processes that never outlive their parent.
 *
 * Used by `strata serve` for its managed redis-server and by the test harness
 * for every redis-server, redis-sentinel and postgres it starts.  A child is
 * put in its own process group (so a signal to the group reaches everything
 * it forks) and gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the thread
 * that spawned it even when the parent is SIGKILLed.  Spawn from a thread
 * that lives as long as the child should (the main thread).
 */
#ifndef STRATA_PROC_H
#define STRATA_PROC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct strata_proc_opts {
    const char *cwd;      /* chdir here before exec; NULL = inherit */
    const char *log_path; /* stdout+stderr appended here; NULL = /dev/null */
    uid_t uid;            /* run as this user when run_as_user is set (root only) */
    gid_t gid;
    bool run_as_user;
    bool keep_stdio; /* inherit stdout/stderr instead of log_path */
    char **envp;     /* NULL = inherit */
} strata_proc_opts;

/**
 * Starts argv[0] (searched in PATH) with argv; *pid_out gets the child's pid,
 * which is also its process-group id.  STRATA_ESYS if fork fails; if exec
 * fails the child exits 127 (see strata_proc_wait).
 */
int strata_proc_spawn(char *const argv[], const strata_proc_opts *opts, pid_t *pid_out);

/** Sends sig to the child's whole process group; STRATA_ENOTFOUND if it is gone. */
int strata_proc_signal(pid_t pid, int sig);

/**
 * Waits up to timeout_ms for the child to exit (0 = poll once, <0 = forever);
 * STRATA_ETIMEDOUT if still running.  *status gets the wait status when non-NULL.
 */
int strata_proc_wait(pid_t pid, int timeout_ms, int *status);

/**
 * Stops a child: SIGTERM to its group, wait up to grace_ms, then SIGKILL and
 * reap.  Always reaps; returns STRATA_OK, or STRATA_ETIMEDOUT if SIGKILL was needed.
 */
int strata_proc_stop(pid_t pid, int grace_ms);

/** True if a process with this pid exists (kill(pid, 0)). */
bool strata_proc_alive(pid_t pid);

/**
 * Finds a free TCP port on 127.0.0.1 by binding port 0.  Another process may
 * take it before use: callers retry on a bind failure.
 */
int strata_proc_free_port(uint16_t *port);

#endif
