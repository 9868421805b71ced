/*
 * proc.c: child processes that die with their parent (strata/proc.h).
 *
 * The child calls setpgid(0, 0) so signals can reach its whole group, then
 * prctl(PR_SET_PDEATHSIG, SIGKILL) so the kernel kills it when the spawning
 * thread dies, however it dies.  The classic race (the parent dies between
 * fork and prctl) is closed by checking getppid() against the pid recorded
 * before fork.  Exec errors are reported through a CLOEXEC pipe so the parent
 * learns of them at once instead of from a later wait.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "strata/proc.h"
#include "strata/status.h"

extern char **environ;

static void child_fail(int fd, int err) {
    ssize_t w = write(fd, &err, sizeof err);
    (void)w;
    _exit(127);
}

int strata_proc_spawn(char *const argv[], const strata_proc_opts *opts, pid_t *pid_out) {
    strata_proc_opts none = {0};
    if (!opts)
        opts = &none;
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return STRATA_ESYS;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return STRATA_ESYS;
    }
    if (pid == 0) {
        close(pfd[0]);
        setpgid(0, 0);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (opts->cwd && chdir(opts->cwd) != 0)
            child_fail(pfd[1], errno);
        if (!opts->keep_stdio) {
            int out = opts->log_path ? open(opts->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644)
                                     : open("/dev/null", O_WRONLY);
            if (out < 0)
                child_fail(pfd[1], errno);
            if (opts->run_as_user && opts->log_path && fchown(out, opts->uid, opts->gid) != 0)
                child_fail(pfd[1], errno);
            dup2(out, 1);
            dup2(out, 2);
            if (out > 2)
                close(out);
        }
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0) {
            dup2(in, 0);
            if (in > 0)
                close(in);
        }
        if (opts->run_as_user) {
            if (setgroups(0, NULL) != 0 || setgid(opts->gid) != 0 || setuid(opts->uid) != 0)
                child_fail(pfd[1], errno);
            /* The kernel clears the parent-death signal when credentials change: set it again. */
            if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
                _exit(127);
        }
        execvpe(argv[0], argv, opts->envp ? opts->envp : environ);
        child_fail(pfd[1], errno);
    }
    close(pfd[1]);
    int child_err = 0;
    ssize_t n;
    do {
        n = read(pfd[0], &child_err, sizeof child_err);
    } while (n < 0 && errno == EINTR);
    close(pfd[0]);
    if (n == (ssize_t)sizeof child_err) {
        waitpid(pid, NULL, 0);
        errno = child_err;
        return child_err == ENOENT ? STRATA_ENOTFOUND : STRATA_ESYS;
    }
    /* Also set the group from the parent side: no window where a signal to -pid misses. */
    setpgid(pid, pid);
    *pid_out = pid;
    return STRATA_OK;
}

int strata_proc_signal(pid_t pid, int sig) {
    if (pid <= 0)
        return STRATA_EINVAL;
    if (kill(-pid, sig) == 0 || kill(pid, sig) == 0)
        return STRATA_OK;
    return errno == ESRCH ? STRATA_ENOTFOUND : STRATA_ESYS;
}

int strata_proc_wait(pid_t pid, int timeout_ms, int *status) {
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (status)
                *status = st;
            return STRATA_OK;
        }
        if (r < 0 && errno == ECHILD) {
            if (status)
                *status = 0;
            return STRATA_OK; /* not our child, or already reaped */
        }
        if (timeout_ms == 0)
            return STRATA_ETIMEDOUT;
        if (timeout_ms > 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long el = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
            if (el >= timeout_ms)
                return STRATA_ETIMEDOUT;
        }
        struct timespec d = {0, 5 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
}

int strata_proc_stop(pid_t pid, int grace_ms) {
    if (pid <= 0)
        return STRATA_EINVAL;
    strata_proc_signal(pid, SIGCONT); /* a SIGSTOPped child must be able to handle SIGTERM */
    strata_proc_signal(pid, SIGTERM);
    if (strata_proc_wait(pid, grace_ms, NULL) == STRATA_OK) {
        strata_proc_signal(pid, SIGKILL); /* stragglers left in its group */
        return STRATA_OK;
    }
    strata_proc_signal(pid, SIGKILL);
    strata_proc_wait(pid, -1, NULL);
    return STRATA_ETIMEDOUT;
}

bool strata_proc_alive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

int strata_proc_free_port(uint16_t *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return STRATA_ESYS;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        close(fd);
        return STRATA_ESYS;
    }
    *port = ntohs(sa.sin_port);
    close(fd);
    return STRATA_OK;
}
