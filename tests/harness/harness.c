/*
 * harness.c: the process-wide part of the test harness: the registry of
 * running children, the reaper (atexit, fatal signals, watchdog), temp dirs,
 * free ports, waiting with a deadline, and the leftover scan.
 *
 * How nothing outlives a test binary (four layers, each covering a gap in
 * the one before):
 *
 *   1. strata_proc_spawn puts every child in its own process group with
 *      PR_SET_PDEATHSIG(SIGKILL): if the test binary dies in any way, even
 *      by SIGKILL from CTest's timeout, the kernel kills its direct children.
 *   2. An atexit hook stops every tracked topology object (so a test that
 *      failed an assert and longjmp'ed past its stop call is still cleaned
 *      up), kills any remaining process whose cwd or command line lies in
 *      this binary's temp dir (postgres backends, redis fork children,
 *      redis-cli), then removes the temp dir.
 *   3. Handlers for SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGABRT SIGKILL every
 *      registered process group (async-signal-safe: the registry is an
 *      array of atomics), then re-raise.  SIGSEGV and friends are left to
 *      ASan/cmocka; layer 1 covers them.
 *   4. A watchdog thread enforces the test's own deadline (sh_init): at the
 *      deadline it kills everything, removes the temp dir and _exit(124)s,
 *      well before CTest's harder timeout.
 *
 * Temp dirs are $TMPDIR/strata-harness/<test>-<pid>/ with an ".owner" file
 * holding the owner's pid and start time.  That makes "leftover" precise:
 * a process whose cwd or command line is inside a test's dir while that
 * test binary is no longer running.  Processes of tests that are still
 * running (ctest -j) are not leftovers.  sh_init also garbage-collects dirs
 * of dead owners that no process uses any more.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness_internal.h"
#include "strata/proc.h"

#define SH_MAX_CHILDREN 256

/* ---- state ---------------------------------------------------------------- */

static _Atomic pid_t g_children[SH_MAX_CHILDREN]; /* process-group ids of running children */
static _Atomic pid_t g_owner;                     /* pid that ran sh_init */
static atomic_bool g_inited;
static _Atomic uint64_t g_deadline_ms; /* monotonic; 0 = none */
static atomic_bool g_watchdog_started;
static atomic_bool g_exiting;

static char g_root[PATH_MAX];   /* $TMPDIR/strata-harness */
static char g_tmpdir[PATH_MAX]; /* g_root/<test>-<pid> */

typedef struct tracked {
    void *obj;
    void (*destroy)(void *obj);
} tracked;

static pthread_mutex_t g_track_lock = PTHREAD_MUTEX_INITIALIZER;
static tracked *g_tracked;
static size_t g_ntracked, g_captracked;

/* ---- small helpers ---------------------------------------------------------------- */

static void oom(void) {
    fputs("harness: out of memory\n", stderr);
    abort();
}

void *sh__calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom();
    return p;
}

char *sh__strdup(const char *s) {
    char *p = strdup(s ? s : "");
    if (!p)
        oom();
    return p;
}

char *sh__fmt(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *p = NULL;
    int n = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom();
    return p;
}

uint64_t sh_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void sh__sleep_ms(int ms) {
    if (ms <= 0)
        return;
    struct timespec d = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&d, &d) != 0 && errno == EINTR) {
    }
}

bool sh_wait_until(int timeout_ms, int interval_ms, bool (*pred)(void *ctx), void *ctx) {
    if (interval_ms <= 0)
        interval_ms = 10;
    uint64_t deadline = sh_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        if (pred(ctx))
            return true;
        uint64_t now = sh_now_ms();
        if (now >= deadline)
            return false;
        uint64_t left = deadline - now;
        sh__sleep_ms((int)(left < (uint64_t)interval_ms ? left : (uint64_t)interval_ms));
    }
}

int sh__mkdirs(const char *path, mode_t mode) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return -1;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, mode) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

int sh__write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    size_t n = strlen(text);
    int rc = (fwrite(text, 1, n, f) == n) ? 0 : -1;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

char *sh__read_file(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = sh__calloc(1, cap + 1);
    for (;;) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb)
                oom();
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0 && errno != ENOENT)
        return 0; /* keep going: remove what we can */
    return 0;
}

int sh__rmtree(const char *path) {
    if (!path || !*path || strcmp(path, "/") == 0)
        return -1;
    return nftw(path, rm_cb, 32, FTW_DEPTH | FTW_PHYS);
}

/* ---- process registry (async-signal-safe reads) ------------------------------------------ */

static void registry_add(pid_t pid) {
    for (int i = 0; i < SH_MAX_CHILDREN; i++) {
        pid_t expect = 0;
        if (atomic_compare_exchange_strong(&g_children[i], &expect, pid))
            return;
    }
    fprintf(stderr, "harness: more than %d children; pid %d is not in the registry\n",
            SH_MAX_CHILDREN, (int)pid);
}

static void registry_remove(pid_t pid) {
    for (int i = 0; i < SH_MAX_CHILDREN; i++) {
        pid_t expect = pid;
        if (atomic_compare_exchange_strong(&g_children[i], &expect, 0))
            return;
    }
}

/* Async-signal-safe: kill every registered group. */
static void registry_kill_all(void) {
    for (int i = 0; i < SH_MAX_CHILDREN; i++) {
        pid_t p = atomic_load(&g_children[i]);
        if (p > 0) {
            kill(-p, SIGKILL);
            kill(p, SIGKILL);
        }
    }
}

/* Not signal-safe: kill and reap every registered child. */
static void registry_reap_all(void) {
    registry_kill_all();
    for (int i = 0; i < SH_MAX_CHILDREN; i++) {
        pid_t p = atomic_exchange(&g_children[i], 0);
        if (p > 0)
            strata_proc_wait(p, 2000, NULL);
    }
}

/* ---- children ------------------------------------------------------------------------------ */

void sh__child_set_argv(sh__child *c, const char *const *argv) {
    if (c->argv) {
        for (char **a = c->argv; *a; a++)
            free(*a);
        free(c->argv);
    }
    size_t n = 0;
    while (argv[n])
        n++;
    c->argv = sh__calloc(n + 1, sizeof *c->argv);
    for (size_t i = 0; i < n; i++)
        c->argv[i] = sh__strdup(argv[i]);
}

int sh__child_spawn(sh__child *c) {
    sh__ensure_init();
    if (c->pid > 0)
        return STRATA_EEXIST;
    strata_proc_opts o = {0};
    o.cwd = c->dir;
    o.log_path = c->log;
    o.run_as_user = c->as_user;
    o.uid = c->uid;
    o.gid = c->gid;
    pid_t pid = 0;
    char **argv = c->argv;
    char **wrapped = NULL;
    if (c->as_user) {
        /*
         * The kernel clears PR_SET_PDEATHSIG when a process changes its
         * credentials (commit_creds), and strata_proc_spawn sets it before
         * setuid.  Re-arm it after the switch: setpriv(1) from util-linux
         * runs as the new user, sets the parent-death signal, then execs.
         */
        size_t n = 0;
        while (argv[n])
            n++;
        wrapped = sh__calloc(n + 5, sizeof *wrapped);
        wrapped[0] = (char *)"setpriv";
        wrapped[1] = (char *)"--pdeathsig";
        wrapped[2] = (char *)"KILL";
        wrapped[3] = (char *)"--";
        memcpy(wrapped + 4, argv, n * sizeof *argv);
        argv = wrapped;
    }
    int rc = strata_proc_spawn(argv, &o, &pid);
    free(wrapped);
    if (rc < 0) {
        fprintf(stderr, "harness: cannot start %s (%s): %s\n", c->name ? c->name : c->argv[0],
                c->argv[0], strerror(errno));
        return rc;
    }
    c->pid = pid;
    registry_add(pid);
    return STRATA_OK;
}

bool sh__child_running(sh__child *c) {
    if (c->pid <= 0)
        return false;
    int st = 0;
    pid_t r = waitpid(c->pid, &st, WNOHANG);
    if (r == 0)
        return true;
    if (r == c->pid || (r < 0 && errno == ECHILD)) {
        kill(-c->pid, SIGKILL); /* stragglers in its group */
        registry_remove(c->pid);
        c->pid = 0;
        return false;
    }
    return true;
}

int sh__child_wait(sh__child *c, int timeout_ms, int *status) {
    if (c->pid <= 0)
        return STRATA_ENOTFOUND;
    int rc = strata_proc_wait(c->pid, timeout_ms, status);
    if (rc == STRATA_OK) {
        registry_remove(c->pid);
        c->pid = 0;
    }
    return rc;
}

void sh__child_kill(sh__child *c) {
    if (c->pid <= 0)
        return;
    strata_proc_signal(c->pid, SIGKILL);
    strata_proc_wait(c->pid, -1, NULL);
    registry_remove(c->pid);
    c->pid = 0;
}

void sh__child_stop(sh__child *c, int sig, int grace_ms) {
    if (c->pid <= 0)
        return;
    strata_proc_signal(c->pid, SIGCONT);
    if (sig == SIGTERM) {
        strata_proc_stop(c->pid, grace_ms);
    } else {
        kill(c->pid, sig);
        if (strata_proc_wait(c->pid, grace_ms, NULL) != STRATA_OK)
            strata_proc_signal(c->pid, SIGKILL);
        strata_proc_signal(c->pid, SIGKILL);
        strata_proc_wait(c->pid, -1, NULL);
    }
    registry_remove(c->pid);
    c->pid = 0;
}

static char proc_state(pid_t pid);

int sh__child_signal(sh__child *c, int sig) {
    if (!sh__child_running(c))
        return STRATA_ENOTFOUND;
    int rc = strata_proc_signal(c->pid, sig);
    if (rc < 0 || (sig != SIGSTOP && sig != SIGCONT))
        return rc;
    /* Signals are delivered asynchronously: return once the state has changed, so
     * a test that pauses a server and then acts knows the server is stopped. */
    uint64_t deadline = sh_now_ms() + 2000;
    while (sh_now_ms() < deadline) {
        char st = proc_state(c->pid);
        if (st == 0 || (sig == SIGSTOP) == (st == 'T'))
            break;
        sh__sleep_ms(1);
    }
    return rc;
}

void sh__child_clear(sh__child *c) {
    if (c->argv) {
        for (char **a = c->argv; *a; a++)
            free(*a);
        free(c->argv);
    }
    free(c->name);
    free(c->dir);
    free(c->log);
    memset(c, 0, sizeof *c);
}

void sh__child_dump_log(const sh__child *c, const char *why, int lines) {
    fprintf(stderr, "harness: %s: %s\n", c->name ? c->name : "child", why);
    if (!c->log)
        return;
    size_t n = 0;
    char *text = sh__read_file(c->log, &n);
    if (!text)
        return;
    size_t start = n;
    int seen = 0;
    while (start > 0) {
        if (text[start - 1] == '\n' && start != n && ++seen > lines)
            break;
        start--;
    }
    fprintf(stderr, "---- last lines of %s ----\n%s----\n", c->log, text + start);
    free(text);
}

bool sh__child_log_contains(const sh__child *c, const char *needle) {
    if (!c->log)
        return false;
    char *text = sh__read_file(c->log, NULL);
    bool found = text && strstr(text, needle);
    free(text);
    return found;
}

/* ---- tracked objects ------------------------------------------------------------------------------ */

void sh__track(void *obj, void (*destroy)(void *obj)) {
    pthread_mutex_lock(&g_track_lock);
    if (g_ntracked == g_captracked) {
        size_t cap = g_captracked ? g_captracked * 2 : 16;
        tracked *t = realloc(g_tracked, cap * sizeof *t);
        if (!t)
            oom();
        g_tracked = t;
        g_captracked = cap;
    }
    g_tracked[g_ntracked++] = (tracked){obj, destroy};
    pthread_mutex_unlock(&g_track_lock);
}

void sh__untrack(void *obj) {
    pthread_mutex_lock(&g_track_lock);
    for (size_t i = 0; i < g_ntracked; i++) {
        if (g_tracked[i].obj == obj) {
            g_tracked[i] = g_tracked[--g_ntracked];
            break;
        }
    }
    pthread_mutex_unlock(&g_track_lock);
}

static void destroy_tracked(void) {
    for (;;) {
        pthread_mutex_lock(&g_track_lock);
        if (g_ntracked == 0) {
            pthread_mutex_unlock(&g_track_lock);
            break;
        }
        tracked t = g_tracked[g_ntracked - 1];
        pthread_mutex_unlock(&g_track_lock);
        t.destroy(t.obj); /* untracks itself */
        sh__untrack(t.obj);
    }
    pthread_mutex_lock(&g_track_lock);
    free(g_tracked);
    g_tracked = NULL;
    g_ntracked = g_captracked = 0;
    pthread_mutex_unlock(&g_track_lock);
}

/* ---- /proc scanning ------------------------------------------------------------------------ */

typedef struct procinfo {
    pid_t pid;
    char state;
    char comm[64];
    char cwd[PATH_MAX];
    char cmd[1024];
} procinfo;

static bool read_proc(pid_t pid, procinfo *pi) {
    char path[64];
    memset(pi, 0, sizeof *pi);
    pi->pid = pid;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *stat = sh__read_file(path, NULL);
    if (!stat)
        return false;
    char *l = strchr(stat, '('), *r = strrchr(stat, ')');
    if (l && r && r > l) {
        size_t n = (size_t)(r - l - 1);
        if (n >= sizeof pi->comm)
            n = sizeof pi->comm - 1;
        memcpy(pi->comm, l + 1, n);
        if (r[1] == ' ')
            pi->state = r[2];
    }
    free(stat);
    snprintf(path, sizeof path, "/proc/%d/cwd", (int)pid);
    ssize_t n = readlink(path, pi->cwd, sizeof pi->cwd - 1);
    pi->cwd[n > 0 ? n : 0] = '\0';
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t m = read(fd, pi->cmd, sizeof pi->cmd - 1);
        close(fd);
        if (m > 0) {
            for (ssize_t i = 0; i < m; i++)
                if (pi->cmd[i] == '\0')
                    pi->cmd[i] = ' ';
            pi->cmd[m] = '\0';
        }
    }
    return true;
}

/* Where (cwd or command line) a process refers to `dir`; NULL if it does not. */
static const char *proc_ref_under(const procinfo *pi, const char *dir) {
    size_t n = strlen(dir);
    if (strncmp(pi->cwd, dir, n) == 0 &&
        (pi->cwd[n] == '/' || pi->cwd[n] == '\0' || pi->cwd[n] == ' '))
        return pi->cwd;
    const char *hit = strstr(pi->cmd, dir);
    if (hit && (hit[n] == '/' || hit[n] == '\0' || hit[n] == ' '))
        return hit;
    return NULL;
}

static char proc_state(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *stat = sh__read_file(path, NULL);
    if (!stat)
        return 0;
    char *r = strrchr(stat, ')');
    char st = r && r[1] == ' ' ? r[2] : 0;
    free(stat);
    return st;
}

typedef bool (*proc_fn)(const procinfo *pi, void *ctx);

static void for_each_proc(proc_fn fn, void *ctx) {
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *e;
    pid_t self = getpid();
    while ((e = readdir(d))) {
        char *end;
        long v = strtol(e->d_name, &end, 10);
        if (*end || v <= 0 || (pid_t)v == self)
            continue;
        procinfo pi;
        if (!read_proc((pid_t)v, &pi) || pi.state == 'Z' || pi.state == 'X')
            continue;
        if (!fn(&pi, ctx))
            break;
    }
    closedir(d);
}

static unsigned long long proc_starttime(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *stat = sh__read_file(path, NULL);
    if (!stat)
        return 0;
    unsigned long long st = 0;
    char *r = strrchr(stat, ')');
    if (r) {
        /* fields after ")": state(3) ... starttime(22) */
        char *p = r + 2;
        for (int field = 3; field < 22 && p; field++) {
            p = strchr(p, ' ');
            if (p)
                p++;
        }
        if (p)
            st = strtoull(p, NULL, 10);
    }
    free(stat);
    return st;
}

/* Is the test binary owning g_root/<entry> still running? */
static bool owner_alive(const char *entry) {
    char *path = sh__fmt("%s/%s/.owner", g_root, entry);
    char *txt = sh__read_file(path, NULL);
    free(path);
    if (!txt)
        return false;
    long pid = 0;
    unsigned long long st = 0;
    bool alive = false;
    if (sscanf(txt, "%ld %llu", &pid, &st) == 2 && pid > 0)
        alive = proc_starttime((pid_t)pid) == st && st != 0;
    free(txt);
    return alive;
}

typedef struct scan_ctx {
    const char *dir;   /* match processes referring to this dir */
    bool only_orphans; /* skip processes whose owning test is still running */
    bool print;
    int sig; /* send this signal to each match (0 = none) */
    int count;
    int stopped; /* how many of the matches are in state T */
} scan_ctx;

static bool scan_cb(const procinfo *pi, void *vctx) {
    scan_ctx *sc = vctx;
    const char *ref = proc_ref_under(pi, sc->dir);
    if (!ref)
        return true;
    if (sc->only_orphans) {
        /* ref = "<root>/<entry>/..." : find <entry> */
        const char *p = ref + strlen(sc->dir);
        while (*p == '/')
            p++;
        char entry[NAME_MAX + 1];
        size_t n = strcspn(p, "/ ");
        if (n == 0 || n > NAME_MAX)
            return true;
        memcpy(entry, p, n);
        entry[n] = '\0';
        if (owner_alive(entry))
            return true;
    }
    sc->count++;
    if (pi->state == 'T')
        sc->stopped++;
    if (sc->print)
        fprintf(stderr, "harness: leftover process %d (%s, state %c) cwd=%s cmd=%s\n", (int)pi->pid,
                pi->comm, pi->state, pi->cwd, pi->cmd);
    if (sc->sig == SIGKILL)
        kill(pi->pid, SIGCONT);
    if (sc->sig)
        kill(pi->pid, sc->sig);
    return true;
}

int sh_count_processes_under(const char *dir) {
    scan_ctx sc = {.dir = dir};
    for_each_proc(scan_cb, &sc);
    return sc.count;
}

static void init_root(void);

int sh_leftover_processes(void) {
    init_root();
    scan_ctx sc = {.dir = g_root, .only_orphans = true, .print = true};
    for_each_proc(scan_cb, &sc);
    return sc.count;
}

int sh_reap_leftovers(void) {
    init_root();
    scan_ctx sc = {.dir = g_root, .only_orphans = true, .sig = SIGKILL};
    for_each_proc(scan_cb, &sc);
    return sc.count;
}

int sh__signal_processes_under(const char *dir, int sig) {
    scan_ctx sc = {.dir = dir, .sig = sig};
    for_each_proc(scan_cb, &sc);
    return sc.count;
}

int sh__stop_processes_under(const char *dir, bool stop) {
    scan_ctx sc = {.dir = dir, .sig = stop ? SIGSTOP : SIGCONT};
    for_each_proc(scan_cb, &sc);
    uint64_t deadline = sh_now_ms() + 2000;
    while (sh_now_ms() < deadline) {
        scan_ctx chk = {.dir = dir};
        for_each_proc(scan_cb, &chk);
        if (stop ? chk.stopped == chk.count : chk.stopped == 0)
            break;
        sh__sleep_ms(1);
    }
    return sc.count;
}

int sh__kill_processes_under(const char *dir, int grace_ms) {
    uint64_t deadline = sh_now_ms() + (uint64_t)(grace_ms > 0 ? grace_ms : 0);
    int killed = 0;
    for (;;) {
        bool late = sh_now_ms() >= deadline;
        scan_ctx sc = {.dir = dir, .sig = late ? SIGKILL : 0};
        for_each_proc(scan_cb, &sc);
        if (sc.count == 0)
            return killed;
        if (late)
            killed += sc.count;
        sh__sleep_ms(10);
        if (sh_now_ms() > deadline + 5000)
            return killed; /* unkillable (D state?): give up, the leftover test will say */
    }
}

/* Kills everything referring to our own temp dir: postgres backends, fork children. */
static void kill_procs_under_tmpdir(void) {
    if (g_tmpdir[0])
        sh__kill_processes_under(g_tmpdir, 0);
}

/* ---- temp dirs ------------------------------------------------------------------------------------- */

static void init_root(void) {
    if (g_root[0])
        return;
    const char *base = getenv("TMPDIR");
    if (!base || !*base || base[0] != '/')
        base = "/tmp";
    snprintf(g_root, sizeof g_root, "%s/strata-harness", base);
    size_t n = strlen(g_root);
    while (n > 1 && g_root[n - 1] == '/')
        g_root[--n] = '\0';
}

const char *sh_harness_root(void) {
    init_root();
    return g_root;
}

/* Removes dirs of test binaries that are gone and that no process uses any more. */
static void gc_stale_dirs(void) {
    DIR *d = opendir(g_root);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (owner_alive(e->d_name))
            continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", g_root, e->d_name) >= (int)sizeof path)
            continue;
        struct stat sb;
        if (lstat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
            continue;
        /* A dir may be being created right now (no .owner yet): leave young ones alone. */
        if (time(NULL) - sb.st_mtime < 30)
            continue;
        if (sh_count_processes_under(path) > 0)
            continue; /* a leftover: keep it for sh_leftover_processes to report */
        sh__rmtree(path);
    }
    closedir(d);
}

static void make_tmpdir(void) {
    init_root();
    if (mkdir(g_root, 01777) == 0)
        chmod(g_root, 01777);
    char name[NAME_MAX];
    snprintf(name, sizeof name, "%s", program_invocation_short_name);
    for (char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.'))
            *p = '_';
    name[40] = '\0';
    if (snprintf(g_tmpdir, sizeof g_tmpdir, "%.*s/%s-%d", PATH_MAX - 64, g_root, name,
                 (int)getpid()) >= (int)sizeof g_tmpdir)
        abort();
    sh__rmtree(g_tmpdir); /* stale dir from a recycled pid */
    if (sh__mkdirs(g_tmpdir, 0755) != 0) {
        fprintf(stderr, "harness: cannot create %s: %s\n", g_tmpdir, strerror(errno));
        abort();
    }
    chmod(g_tmpdir, 0755); /* postgres runs as another user and must reach its dir */
    /* Written to a temp name and renamed: a concurrent sh_init's garbage
     * collector must never read a half-written .owner (and delete our dir). */
    char *owner = sh__fmt("%d %llu\n", (int)getpid(), proc_starttime(getpid()));
    char *tmp = sh__fmt("%s/.owner.tmp", g_tmpdir);
    char *op = sh__fmt("%s/.owner", g_tmpdir);
    if (sh__write_file(tmp, owner) != 0 || rename(tmp, op) != 0) {
        fprintf(stderr, "harness: cannot write %s: %s\n", op, strerror(errno));
        abort();
    }
    free(owner);
    free(tmp);
    free(op);
}

const char *sh_tmpdir(void) {
    sh__ensure_init();
    return g_tmpdir;
}

char *sh__new_subdir(const char *prefix) {
    static atomic_int counter;
    int n = atomic_fetch_add(&counter, 1);
    char *p = sh__fmt("%s/%s-%d", sh_tmpdir(), prefix, n);
    if (sh__mkdirs(p, 0755) != 0) {
        fprintf(stderr, "harness: cannot create %s: %s\n", p, strerror(errno));
        free(p);
        return NULL;
    }
    return p;
}

/* ---- ports ---------------------------------------------------------------------------------- */

static bool port_bindable(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* as redis/postgres do */
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(port);
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

static pthread_mutex_t g_port_lock = PTHREAD_MUTEX_INITIALIZER;
static uint16_t g_recent_ports[128];
static unsigned g_nrecent;

int sh__pick_port(uint16_t *port, bool with_bus) {
    static unsigned seed;
    pthread_mutex_lock(&g_port_lock);
    if (!seed)
        seed = (unsigned)getpid() * 2654435761u ^ (unsigned)sh_now_ms();
    int rc = STRATA_EUNAVAIL;
    for (int attempt = 0; attempt < 200; attempt++) {
        uint16_t p = 0;
        if (with_bus) {
            /* The Cluster bus is port+10000: stay below the ephemeral range. */
            p = (uint16_t)(20000 + rand_r(&seed) % 10000);
        } else if (strata_proc_free_port(&p) != STRATA_OK) {
            continue;
        }
        bool recent = false;
        for (unsigned i = 0; i < g_nrecent && i < 128; i++)
            if (g_recent_ports[i] == p || (with_bus && g_recent_ports[i] == p + 10000))
                recent = true;
        if (recent || !port_bindable(p) || (with_bus && !port_bindable((uint16_t)(p + 10000))))
            continue;
        g_recent_ports[g_nrecent++ % 128] = p;
        if (with_bus)
            g_recent_ports[g_nrecent++ % 128] = (uint16_t)(p + 10000);
        *port = p;
        rc = STRATA_OK;
        break;
    }
    pthread_mutex_unlock(&g_port_lock);
    return rc;
}

/* ---- reaper and watchdog ---------------------------------------------------------------------------- */

static void cleanup_all(void) {
    /* Kill first (fast, no grace at exit), then let each object reap and free
     * its own children (pids stay valid until reaped), then reap the rest. */
    registry_kill_all();
    destroy_tracked();
    registry_reap_all();
    kill_procs_under_tmpdir();
    if (g_tmpdir[0] && !getenv("STRATA_KEEP_TMP"))
        sh__rmtree(g_tmpdir);
}

static void at_exit(void) {
    if (atomic_load(&g_owner) != getpid())
        return; /* a forked child of the test: the children are not its own */
    atomic_store(&g_exiting, true);
    cleanup_all();
}

static void on_fatal_signal(int sig) {
    int saved = errno;
    if (atomic_load(&g_owner) == getpid())
        registry_kill_all();
    signal(sig, SIG_DFL);
    raise(sig);
    errno = saved;
}

static void *watchdog_main(void *arg) {
    (void)arg;
    for (;;) {
        sh__sleep_ms(100);
        if (atomic_load(&g_exiting))
            return NULL;
        uint64_t dl = atomic_load(&g_deadline_ms);
        if (dl == 0 || sh_now_ms() < dl)
            continue;
        if (atomic_exchange(&g_exiting, true))
            return NULL; /* exit already in progress */
        fprintf(stderr, "harness: watchdog: the test passed its deadline; killing every child "
                        "and exiting with status 124\n");
        registry_kill_all();
        kill_procs_under_tmpdir();
        if (g_tmpdir[0] && !getenv("STRATA_KEEP_TMP"))
            sh__rmtree(g_tmpdir);
        _exit(124);
    }
}

void sh_set_deadline(int deadline_sec) {
    atomic_store(&g_deadline_ms,
                 deadline_sec > 0 ? sh_now_ms() + (uint64_t)deadline_sec * 1000u : 0);
    if (deadline_sec > 0 && !atomic_exchange(&g_watchdog_started, true)) {
        pthread_t t;
        if (pthread_create(&t, NULL, watchdog_main, NULL) == 0)
            pthread_detach(t);
        else
            fprintf(stderr, "harness: cannot start the watchdog thread\n");
    }
}

void sh_init(int deadline_sec) {
    if (!atomic_exchange(&g_inited, true)) {
        atomic_store(&g_owner, getpid());
        signal(SIGPIPE, SIG_IGN); /* a write to a killed server must not kill the test */
        make_tmpdir();
        gc_stale_dirs();
        atexit(at_exit);
        static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGABRT};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = on_fatal_signal;
            sigemptyset(&sa.sa_mask);
            sa.sa_flags = SA_RESETHAND;
            sigaction(sigs[i], &sa, NULL);
        }
    }
    if (deadline_sec > 0)
        sh_set_deadline(deadline_sec);
}

void sh__ensure_init(void) {
    if (!atomic_load(&g_inited))
        sh_init(0);
}
