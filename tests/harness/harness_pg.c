/*
 * harness_pg.c: a private PostgreSQL 15 server for tests.
 *
 * initdb into <tmpdir>/pg-N/data (trust auth, superuser "strata", UTF8, C
 * locale, --no-sync), then the postmaster itself is the harness's child:
 *
 *     postgres -D data -p PORT -k <dir> -c listen_addresses=127.0.0.1
 *              -c fsync=off -c full_page_writes=off
 *
 * rather than `pg_ctl start`, which daemonizes the postmaster away from us:
 * run directly, the postmaster stays in the process group we created, gets
 * PR_SET_PDEATHSIG, and we can wait for it.  Its backends call setsid() and
 * so leave that group; they exit on postmaster death by themselves, and the
 * harness also kills any process whose cwd is inside the data dir.
 *
 * PostgreSQL refuses to run as root.  When the harness is root (CI), initdb
 * and postgres run as the "postgres" system user that Debian's postgresql
 * package creates (falling back to "nobody"); the pg dir is chowned to it.
 * The binaries come from $STRATA_PG_BINDIR, `pg_config --bindir`, or
 * /usr/lib/postgresql/15/bin, whichever first holds both initdb and postgres.
 */
#include <errno.h>
#include <glob.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness_internal.h"
#include "strata/proc.h"

#define SH_PG_START_TIMEOUT_MS 30000

struct sh_pg {
    sh__child ch;
    uint16_t port;
    char *dir;     /* <tmpdir>/pg-N, owned by the postgres user */
    char *datadir; /* dir/data */
    char *url;
    bool paused;
};

/* ---- finding binaries and the user ------------------------------------------------------------- */

static bool has_pg_bins(const char *dir) {
    char *a = sh__fmt("%s/initdb", dir), *b = sh__fmt("%s/postgres", dir);
    bool ok = access(a, X_OK) == 0 && access(b, X_OK) == 0;
    free(a);
    free(b);
    return ok;
}

static char *pg_bindir(void) {
    const char *env = getenv("STRATA_PG_BINDIR");
    if (env && *env && has_pg_bins(env))
        return sh__strdup(env);
    FILE *f = popen("pg_config --bindir 2>/dev/null", "r");
    if (f) {
        char line[512] = {0};
        char *got = fgets(line, sizeof line, f);
        pclose(f);
        if (got) {
            line[strcspn(line, "\r\n")] = '\0';
            if (line[0] && has_pg_bins(line))
                return sh__strdup(line);
        }
    }
    if (has_pg_bins("/usr/lib/postgresql/15/bin"))
        return sh__strdup("/usr/lib/postgresql/15/bin");
    glob_t g;
    char *found = NULL;
    if (glob("/usr/lib/postgresql/*/bin", 0, NULL, &g) == 0) {
        for (size_t i = g.gl_pathc; i-- > 0 && !found;)
            if (has_pg_bins(g.gl_pathv[i]))
                found = sh__strdup(g.gl_pathv[i]);
        globfree(&g);
    }
    return found;
}

static void pg_user(sh__child *c) {
    c->as_user = false;
    if (geteuid() != 0)
        return;
    struct passwd *pw = getpwnam("postgres");
    if (!pw)
        pw = getpwnam("nobody");
    if (!pw) {
        fprintf(stderr, "harness: running as root and neither user postgres nor nobody exists\n");
        return;
    }
    c->as_user = true;
    c->uid = pw->pw_uid;
    c->gid = pw->pw_gid;
}

/* ---- libpq ---------------------------------------------------------------------------------------- */

static char *conninfo(const sh_pg *p, const char *db) {
    return sh__fmt("host=127.0.0.1 port=%u user=strata dbname=%s connect_timeout=2", p->port, db);
}

static PGresult *exec_on(const sh_pg *p, const char *db, const char *sql, PGconn **keep) {
    char *ci = conninfo(p, db);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "harness: pg connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        fprintf(stderr, "harness: pg query failed: %s: %s", sql, PQerrorMessage(c));
        PQclear(r);
        r = NULL;
    }
    if (keep)
        *keep = c;
    else
        PQfinish(c);
    return r;
}

char *sh_pg_query(sh_pg *p, const char *sql) {
    if (!p || !sql)
        return NULL;
    PGresult *r = exec_on(p, "strata", sql, NULL);
    char *out = NULL;
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0)
        out = sh__strdup(PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
    PQclear(r);
    return out;
}

/* ---- processes ------------------------------------------------------------------------------------- */

static int wait_ready(sh_pg *p, int timeout_ms) {
    char *ci = conninfo(p, "postgres");
    uint64_t deadline = sh_now_ms() + (uint64_t)timeout_ms;
    int rc = STRATA_ETIMEDOUT;
    while (sh_now_ms() < deadline) {
        if (!sh__child_running(&p->ch)) {
            rc = STRATA_EUNAVAIL;
            break;
        }
        if (PQping(ci) == PQPING_OK) {
            rc = STRATA_OK;
            break;
        }
        sh__sleep_ms(20);
    }
    free(ci);
    return rc;
}

static void set_postgres_argv(sh_pg *p, const char *bindir) {
    char *bin = sh__fmt("%s/postgres", bindir);
    char *port = sh__fmt("%u", p->port);
    const char *argv[] = {bin,
                          "-D",
                          p->datadir,
                          "-p",
                          port,
                          "-k",
                          p->dir,
                          "-c",
                          "listen_addresses=127.0.0.1",
                          "-c",
                          "fsync=off",
                          "-c",
                          "full_page_writes=off",
                          "-c",
                          "shared_buffers=32MB",
                          "-c",
                          "max_connections=100",
                          "-c",
                          "log_min_messages=warning",
                          NULL};
    sh__child_set_argv(&p->ch, argv);
    free(bin);
    free(port);
}

/* Starts the postmaster; retries on a new port when it lost a bind race (fixed_port: never). */
static int spawn_postgres(sh_pg *p, const char *bindir, bool fixed_port) {
    int rc = STRATA_EUNAVAIL;
    for (int attempt = 0; attempt < 8; attempt++) {
        if (!fixed_port && (rc = sh__pick_port(&p->port, false)) < 0)
            return rc;
        if (bindir)
            set_postgres_argv(p, bindir); /* else a restart: same argv */
        free(p->ch.name);
        p->ch.name = sh__fmt("postgres:%u", p->port);
        if ((rc = sh__child_spawn(&p->ch)) < 0)
            return rc;
        rc = wait_ready(p, SH_PG_START_TIMEOUT_MS);
        if (rc == STRATA_OK)
            return rc;
        bool in_use = sh__child_log_contains(&p->ch, "Address already in use");
        sh__child_kill(&p->ch);
        sh__kill_processes_under(p->dir, 2000);
        if (!in_use) {
            sh__child_dump_log(&p->ch, "did not become ready", 30);
            return rc;
        }
        if (fixed_port)
            sh__sleep_ms(100);
    }
    return rc;
}

static int run_initdb(sh_pg *p, const char *bindir) {
    sh__child init = {0};
    init.dir = sh__strdup(p->dir);
    init.log = sh__fmt("%s/initdb.log", p->dir);
    init.name = sh__strdup("initdb");
    init.as_user = p->ch.as_user;
    init.uid = p->ch.uid;
    init.gid = p->ch.gid;
    char *bin = sh__fmt("%s/initdb", bindir);
    const char *argv[] = {bin,     "-D", p->datadir, "-U",         "strata",    "-A",
                          "trust", "-E", "UTF8",     "--locale=C", "--no-sync", "--no-instructions",
                          NULL};
    sh__child_set_argv(&init, argv);
    free(bin);
    int rc = sh__child_spawn(&init);
    if (rc == STRATA_OK) {
        int st = 0;
        if (sh__child_wait(&init, 60000, &st) != STRATA_OK) {
            sh__child_kill(&init);
            rc = STRATA_ETIMEDOUT;
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            rc = STRATA_EIO;
        }
        if (rc != STRATA_OK)
            sh__child_dump_log(&init, "initdb failed", 30);
    }
    sh__child_clear(&init);
    return rc;
}

static void pg_destroy(void *obj) {
    sh_pg *p = obj;
    sh_pg_stop(&p);
}

int sh_pg_start(sh_pg **out) {
    *out = NULL;
    sh__ensure_init();
    char *bindir = pg_bindir();
    if (!bindir) {
        fprintf(stderr, "harness: PostgreSQL binaries not found (set STRATA_PG_BINDIR, or install "
                        "postgresql: scripts/setup-deps)\n");
        return STRATA_ENOTFOUND;
    }
    sh_pg *p = sh__calloc(1, sizeof *p);
    int rc = STRATA_EIO;
    p->dir = sh__new_subdir("pg");
    if (!p->dir)
        goto fail;
    if (strlen(p->dir) > 80) {
        fprintf(stderr, "harness: %s is too long for a unix socket path; set a shorter TMPDIR\n",
                p->dir);
        goto fail;
    }
    pg_user(&p->ch);
    if (p->ch.as_user && chown(p->dir, p->ch.uid, p->ch.gid) != 0) {
        fprintf(stderr, "harness: chown %s: %s\n", p->dir, strerror(errno));
        goto fail;
    }
    chmod(p->dir, 0700);
    p->datadir = sh__fmt("%s/data", p->dir);
    p->ch.dir = sh__strdup(p->dir);
    p->ch.log = sh__fmt("%s/postgres.log", p->dir);
    uint64_t t0 = sh_now_ms();
    if ((rc = run_initdb(p, bindir)) < 0)
        goto fail;
    uint64_t t1 = sh_now_ms();
    if ((rc = spawn_postgres(p, bindir, false)) < 0)
        goto fail;
    PGresult *r = exec_on(p, "postgres", "CREATE DATABASE strata", NULL);
    if (!r) {
        rc = STRATA_EIO;
        goto fail;
    }
    PQclear(r);
    if (getenv("STRATA_HARNESS_VERBOSE"))
        fprintf(stderr, "harness: postgres:%u ready: initdb %llu ms, start %llu ms\n", p->port,
                (unsigned long long)(t1 - t0), (unsigned long long)(sh_now_ms() - t1));
    p->url = sh__fmt("postgres://strata@127.0.0.1:%u/strata", p->port);
    free(bindir);
    sh__track(p, pg_destroy);
    *out = p;
    return STRATA_OK;
fail:
    free(bindir);
    sh__child_kill(&p->ch);
    if (p->dir)
        sh__kill_processes_under(p->dir, 0);
    sh__child_clear(&p->ch);
    free(p->dir);
    free(p->datadir);
    free(p);
    return rc < 0 ? rc : STRATA_EIO;
}

void sh_pg_stop(sh_pg **pp) {
    if (!pp || !*pp)
        return;
    sh_pg *p = *pp;
    *pp = NULL;
    sh__untrack(p);
    if (p->paused)
        sh__stop_processes_under(p->dir, false);
    /* SIGINT = fast shutdown: aborts open sessions instead of waiting for them (SIGTERM). */
    sh__child_stop(&p->ch, SIGINT, 10000);
    sh__kill_processes_under(p->dir, 2000);
    sh__child_clear(&p->ch);
    free(p->dir);
    free(p->datadir);
    free(p->url);
    free(p);
}

const char *sh_pg_url(const sh_pg *p) { return p ? p->url : NULL; }
uint16_t sh_pg_port(const sh_pg *p) { return p ? p->port : 0; }
pid_t sh_pg_pid(const sh_pg *p) { return p ? p->ch.pid : 0; }
const char *sh_pg_dir(const sh_pg *p) { return p ? p->dir : NULL; }

int sh_pg_kill(sh_pg *p) {
    if (!p)
        return STRATA_EINVAL;
    if (!sh__child_running(&p->ch))
        return STRATA_ENOTFOUND;
    if (p->paused)
        sh__stop_processes_under(p->dir, false);
    p->paused = false;
    sh__child_kill(&p->ch);
    /* Backends notice the postmaster's death within moments; a restart needs them gone. */
    sh__kill_processes_under(p->dir, 2000);
    return STRATA_OK;
}

int sh_pg_restart(sh_pg *p) {
    if (!p)
        return STRATA_EINVAL;
    if (sh__child_running(&p->ch))
        return STRATA_EEXIST;
    sh__kill_processes_under(p->dir, 0);
    return spawn_postgres(p, NULL, true);
}

int sh_pg_pause(sh_pg *p) {
    if (!p)
        return STRATA_EINVAL;
    if (!sh__child_running(&p->ch))
        return STRATA_ENOTFOUND;
    /* The postmaster and every backend (they are in their own sessions). */
    sh__stop_processes_under(p->dir, true);
    p->paused = true;
    return STRATA_OK;
}

int sh_pg_resume(sh_pg *p) {
    if (!p)
        return STRATA_EINVAL;
    if (!sh__child_running(&p->ch))
        return STRATA_ENOTFOUND;
    sh__stop_processes_under(p->dir, false);
    p->paused = false;
    return STRATA_OK;
}
