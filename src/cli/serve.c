/*
 * serve.c: `strata serve`: composes the tiers and the HTTP server.
 *
 *   1. options: flags > STRATA_* env > --config file > defaults
 *   2. lock <var>/strata.lock (one server per var dir; see docs/DECISIONS.md)
 *   3. Redis: --redis URL, or a managed redis-server under <var>/redis
 *   4. database: --db URL (default sqlite://<var>/strata.db), schema migrated
 *   5. HTTP server, then wait for SIGINT/SIGTERM on the main thread
 *   6. stop in reverse order, leaving no process behind
 *
 * Signals are blocked in every thread and taken with sigwait() here, so no
 * handler runs inside library code.  SIGCHLD wakes the loop too: a managed
 * Redis that died is restarted from its AOF.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "managed_redis.h"
#include "scenarios/scenario.h"
#include "server/server.h"
#include "strata/alloc.h"
#include "strata/clock.h"
#include "strata/db.h"
#include "strata/log.h"
#include "strata/metrics.h"
#include "strata/options.h"
#include "strata/redis.h"
#include "strata/status.h"
#include "strata/tier.h"

extern char **environ;

#define SERVE_OPTIONS(X)                                                                         \
    X(var_dir, STRATA_OPT_STR, "./var", 1, 0, NULL, 0,                                           \
      "directory for the lock, the managed Redis and the default SQLite database")               \
    X(redis, STRATA_OPT_STR, "", 0, 0, NULL, STRATA_OPT_SECRET,                                  \
      "Redis URL: redis://[user:pass@]host:port[/db], unix:///path, "                            \
      "redis-sentinel://h1:p1,h2:p2/master, redis-cluster://h1:p1,h2:p2; empty = managed local") \
    X(db, STRATA_OPT_STR, "", 0, 0, NULL, STRATA_OPT_SECRET,                                     \
      "database URL: sqlite:///path.db or postgres://...; empty = sqlite://<var-dir>/strata.db") \
    X(redis_maxmemory, STRATA_OPT_SIZE, "512mb", 1048576, INT64_MAX, NULL, 0,                    \
      "maxmemory of the managed Redis (cache keys are evicted by volatile-lfu)")                 \
    X(node_id, STRATA_OPT_STR, "", 0, 0, NULL, 0,                                                \
      "stable name of this node (stream consumer name); empty = hostname-port")                  \
    X(log_level, STRATA_OPT_ENUM, "info", 0, 0, "error|warn|info|debug", 0, "log level")

enum { SERVE_OPTIONS(STRATA_OPT_ENUM_ENTRY) SERVE_OPT__COUNT };
static strata_option serve_opts[] = {SERVE_OPTIONS(STRATA_OPT_ROW)};

static strata_opt_group groups[] = {
    {"Serve", serve_opts, SERVE_OPT__COUNT},
    {"HTTP server", NULL, 0}, /* strata_server_opt_group, filled in at start */
    {"Scenarios", NULL, 0},   /* strata_scenario_opt_group */
    {"Key-value", NULL, 0},   /* strata_kv_opt_group */
};
#define SERVE_NGROUPS (sizeof groups / sizeof groups[0])

/* Validates URLs now so a bad one is a configuration error (exit 78), not a late failure. */
static int check_urls(strata_buf *err) {
    const char *redis = serve_opts[OPT_redis].val.s;
    if (redis && *redis) {
        static const char *const schemes[] = {"redis://", "unix://", "redis-sentinel://",
                                              "redis-cluster://", NULL};
        int ok = 0;
        for (int i = 0; schemes[i]; i++)
            ok |= strncmp(redis, schemes[i], strlen(schemes[i])) == 0 && redis[strlen(schemes[i])];
        if (!ok) {
            strata_buf_puts(err,
                            "invalid value for --redis: expected redis://host:port, unix:///path, "
                            "redis-sentinel://h:p,.../master or redis-cluster://h:p,...");
            return STRATA_ERANGE;
        }
    }
    const char *db = serve_opts[OPT_db].val.s;
    strata_db_kind kind;
    if (db && *db && strata_db_url_check(db, &kind, err) != STRATA_OK) {
        return STRATA_ERANGE;
    }
    return STRATA_OK;
}

/* Exclusive lock on <var>/strata.lock, held for the life of the process. */
static int lock_var_dir(const char *var, int *fd_out, strata_buf *err) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/strata.lock", var);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        strata_buf_printf(err, "cannot open %s: %s", path, strerror(errno));
        return STRATA_ESYS;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char holder[32] = "?";
        ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        strata_buf_printf(
            err, "another strata serve (pid %s) is using %s; stop it or pick another --var-dir",
            holder, var);
        close(fd);
        return STRATA_EEXIST;
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        strata_buf_printf(err, "cannot write %s: %s", path, strerror(errno));
        close(fd);
        return STRATA_ESYS;
    }
    *fd_out = fd;
    return STRATA_OK;
}

/* The default node id: stable across restarts of the same deployment (same host, same var dir). */
static void default_node_id(const char *var, char *out, size_t cap) {
    char host[64] = "strata";
    gethostname(host, sizeof host - 1);
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = var; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    snprintf(out, cap, "%s-%08llx", host, (unsigned long long)(h & 0xffffffffull));
}

/* Graceful shutdown hook: apply what is already in the streams before exiting. */
static void drain_persister(void *ctx) { strata_persister_drain(ctx, 5000); }

/* GET /readyz probes: run on libuv's thread pool, so blocking calls are fine here. */
static int probe_redis(void *ctx, strata_buf *why) {
    const char *url = ctx;
    strata_redis_options o;
    strata_redis_options_init(&o);
    o.connect_timeout_ms = 500;
    o.command_timeout_ms = 500;
    strata_redis_sync *rs = NULL;
    int rc = strata_redis_sync_create(&rs, url, &o, why);
    if (rc == STRATA_OK) {
        strata_redis_reply *reply = NULL;
        rc = strata_redis_sync_command(rs, &reply, "PING");
        if (rc != STRATA_OK)
            strata_buf_printf(why, "PING: %s", strata_strerror(rc));
        strata_redis_reply_free(reply);
    }
    strata_redis_sync_destroy(&rs);
    return rc;
}

static int probe_db(void *ctx, strata_buf *why) { return strata_db_ping(ctx, why); }

static void help(void) {
    strata_buf b = STRATA_BUF_INIT;
    strata_buf_puts(
        &b, "usage: strata serve [--config FILE] [options]\n\n"
            "Runs Strata. With no --redis it starts and manages its own redis-server under\n"
            "<var-dir>/redis; with no --db it uses SQLite at <var-dir>/strata.db.\n"
            "Every option can also be set as STRATA_<NAME> in the environment or as\n"
            "`name = value` in the config file; flags win over the environment, which\n"
            "wins over the file.\n\n"
            "  --config FILE                config file (also STRATA_CONFIG)\n");
    strata_options_help(groups, SERVE_NGROUPS, &b);
    fputs(b.data, stdout);
    strata_buf_free(&b);
}

int cli_serve(int argc, char **argv) {
    strata_buf err = STRATA_BUF_INIT;
    bool want_help = false;
    groups[1] = strata_server_opt_group;
    groups[2] = strata_scenario_opt_group;
    groups[3] = strata_kv_opt_group;
    int rc = strata_options_load(groups, SERVE_NGROUPS, argc, argv, environ, &want_help, &err);
    if (rc == STRATA_OK && !want_help)
        rc = check_urls(&err);
    if (rc != STRATA_OK) {
        fprintf(stderr, "strata serve: %s\n", err.data ? err.data : strata_strerror(rc));
        strata_buf_free(&err);
        strata_options_free(groups, SERVE_NGROUPS);
        return cli_exit_for_options(rc);
    }
    if (want_help) {
        help();
        strata_options_free(groups, SERVE_NGROUPS);
        return 0;
    }
    strata_log_level lvl = STRATA_LOG_INFO;
    strata_log_parse_level(serve_opts[OPT_log_level].val.s, &lvl);
    strata_log_set_level(lvl);

    int exit_code = 0, lock_fd = -1;
    managed_redis *mredis = NULL;
    strata_db *db = NULL;
    strata_server *server = NULL;
    strata_scenarios *scenarios = NULL;
    strata_persister *persister = NULL;
    strata_outbox_relay *relay = NULL;
    char node_id[160];
    strata_metrics *metrics = strata_metrics_create();
    strata_clock *clock = strata_clock_system();
    const strata_option *dbg = strata_options_find(groups, SERVE_NGROUPS, "debug_clock");
    if (dbg && dbg->val.i)
        clock = strata_clock_create_offset();
    if (!metrics || !clock) {
        fprintf(stderr, "strata serve: out of memory\n");
        exit_code = EXIT_SOFTWARE;
        goto out;
    }
    char var[PATH_MAX], redis_url[PATH_MAX + 64], db_url[PATH_MAX + 64];

    const char *var_arg = serve_opts[OPT_var_dir].val.s;
    if (mkdir(var_arg, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "strata serve: cannot create --var-dir %s: %s\n", var_arg, strerror(errno));
        exit_code = EXIT_CONFIG;
        goto out;
    }
    if (!realpath(var_arg, var)) {
        fprintf(stderr, "strata serve: --var-dir %s: %s\n", var_arg, strerror(errno));
        exit_code = EXIT_CONFIG;
        goto out;
    }
    if (lock_var_dir(var, &lock_fd, &err) != STRATA_OK) {
        fprintf(stderr, "strata serve: %s\n", err.data);
        exit_code = EXIT_TEMPFAIL;
        goto out;
    }

    /* Block the signals we wait for before any thread exists, so every thread inherits it. */
    sigset_t waitset;
    sigemptyset(&waitset);
    sigaddset(&waitset, SIGINT);
    sigaddset(&waitset, SIGTERM);
    sigaddset(&waitset, SIGHUP);
    sigaddset(&waitset, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &waitset, NULL);
    signal(SIGPIPE, SIG_IGN);

    const char *redis_opt = serve_opts[OPT_redis].val.s;
    if (redis_opt && *redis_opt) {
        snprintf(redis_url, sizeof redis_url, "%s", redis_opt);
    } else {
        strata_buf_reset(&err);
        if (managed_redis_start(&mredis, var, serve_opts[OPT_redis_maxmemory].val.s, &err) !=
            STRATA_OK) {
            LOG_ERROR("redis_start_failed", "reason=\"%s\"", err.data ? err.data : "?");
            exit_code = EXIT_UNAVAILABLE;
            goto out;
        }
        snprintf(redis_url, sizeof redis_url, "%s", managed_redis_url(mredis));
        LOG_INFO("redis_started",
                 "mode=managed pid=%ld url=%s port=%d dir=%s/redis aof=everysec "
                 "maxmemory_policy=volatile-lfu",
                 (long)managed_redis_pid(mredis), redis_url, managed_redis_port(mredis), var);
    }

    const char *db_opt = serve_opts[OPT_db].val.s;
    if (db_opt && *db_opt)
        snprintf(db_url, sizeof db_url, "%s", db_opt);
    else
        snprintf(db_url, sizeof db_url, "sqlite://%s/strata.db", var);
    if (strata_scenarios_setup() != STRATA_OK) {
        LOG_ERROR("scenario_setup_failed", "reason=\"cannot register migrations\"");
        exit_code = EXIT_SOFTWARE;
        goto out;
    }
    strata_buf_reset(&err);
    strata_db_config dbcfg;
    strata_db_config_default(&dbcfg);
    dbcfg.clock = clock;
    if (strata_db_open_config(&db, db_url, &dbcfg, &err) != STRATA_OK) {
        LOG_ERROR("db_open_failed", "reason=\"%s\"", err.data ? err.data : "?");
        exit_code = EXIT_UNAVAILABLE;
        goto out;
    }
    LOG_INFO("db_opened", "kind=%s schema_version=%d%s%s",
             strata_db_get_kind(db) == STRATA_DB_SQLITE ? "sqlite" : "postgres",
             strata_db_schema_version(db),
             strata_db_get_kind(db) == STRATA_DB_SQLITE ? " path=" : "",
             strata_db_get_kind(db) == STRATA_DB_SQLITE ? db_url + 9 : "");

    const char *nid = serve_opts[OPT_node_id].val.s;
    if (nid && *nid)
        snprintf(node_id, sizeof node_id, "%s", nid);
    else
        default_node_id(var, node_id, sizeof node_id);

    /* Write-behind persister and outbox relay: every node runs both. */
    strata_persister_config pc;
    strata_persister_config_init(&pc);
    pc.redis_url = redis_url;
    pc.db = db;
    pc.node_id = node_id;
    pc.metrics = metrics;
    pc.clock = clock;
    pc.wait_replicas = strata_scenarios_wait_replicas(redis_url, &pc.wait_timeout_ms);
    strata_relay_config rcfg;
    strata_relay_config_init(&rcfg);
    rcfg.redis_url = redis_url;
    rcfg.db = db;
    rcfg.node_id = node_id;
    rcfg.metrics = metrics;
    strata_buf_reset(&err);
    if (strata_persister_create(&pc, &persister, &err) != STRATA_OK ||
        strata_scenarios_handlers(persister) != STRATA_OK ||
        strata_persister_start(persister) != STRATA_OK ||
        strata_relay_create(&rcfg, &relay, &err) != STRATA_OK ||
        strata_relay_start(relay) != STRATA_OK) {
        LOG_ERROR("write_behind_start_failed", "reason=\"%s\"", err.data ? err.data : "?");
        exit_code = EXIT_UNAVAILABLE;
        goto out;
    }
    LOG_INFO("write_behind_started", "node_id=%s group=%s registry=%s wait_replicas=%d", node_id,
             STRATA_WB_GROUP, STRATA_WB_REGISTRY, pc.wait_replicas);

    strata_server_deps deps = {metrics, clock, groups, SERVE_NGROUPS};
    strata_buf_reset(&err);
    if (strata_server_create(&server, &deps, &err) != STRATA_OK ||
        strata_server_add_probe(server, "redis", probe_redis, redis_url) != STRATA_OK ||
        strata_server_add_probe(server, "db", probe_db, db) != STRATA_OK ||
        strata_server_add_shutdown_hook(server, drain_persister, persister) != STRATA_OK) {
        LOG_ERROR("server_create_failed", "reason=\"%s\"", err.data ? err.data : "out of memory");
        exit_code = EXIT_CONFIG;
        goto out;
    }
    strata_scenario_env senv = {redis_url, db, metrics, clock};
    strata_buf_reset(&err);
    if (strata_scenarios_start(&scenarios, server, &senv, &err) != STRATA_OK) {
        LOG_ERROR("scenarios_start_failed", "reason=\"%s\"", err.data ? err.data : "?");
        exit_code = EXIT_UNAVAILABLE;
        goto out;
    }
    strata_buf_reset(&err);
    if (strata_server_start(server, &err) != STRATA_OK) {
        LOG_ERROR("listen_failed", "reason=\"%s\"", err.data ? err.data : "?");
        exit_code = EXIT_UNAVAILABLE;
        goto out;
    }
    const strata_option *tok = strata_options_find(groups, SERVE_NGROUPS, "admin_token");
    if (!tok || !tok->val.s || !*tok->val.s)
        LOG_INFO("admin_token_generated",
                 "token=%s hint=\"set --admin-token or STRATA_ADMIN_TOKEN to choose one\"",
                 strata_server_admin_token(server));
    LOG_INFO("ready", "pid=%ld listen=%s var_dir=%s redis=%s debug_clock=%s", (long)getpid(),
             strata_server_address(server), var, mredis ? managed_redis_url(mredis) : "external",
             clock != strata_clock_system() ? "on" : "off");

    for (;;) {
        int sig = 0;
        if (sigwait(&waitset, &sig) != 0)
            continue;
        if (sig == SIGCHLD) {
            if (!mredis)
                continue;
            strata_buf_reset(&err);
            int r = managed_redis_supervise(mredis, &err);
            if (r == 1)
                LOG_WARN("redis_restarted", "pid=%ld reason=\"managed redis-server exited\"",
                         (long)managed_redis_pid(mredis));
            else if (r < 0)
                LOG_ERROR("redis_restart_failed", "reason=\"%s\"", err.data ? err.data : "?");
            continue;
        }
        LOG_INFO("stopping", "signal=%s",
                 sig == SIGINT    ? "SIGINT"
                 : sig == SIGTERM ? "SIGTERM"
                                  : "SIGHUP");
        break;
    }

out:
    if (server) {
        strata_server_stop(server);
        strata_server_destroy(&server);
    }
    strata_scenarios_stop(&scenarios);
    if (relay) {
        strata_relay_stop(relay);
        strata_relay_destroy(&relay);
    }
    if (persister) {
        strata_persister_stop(persister);
        strata_persister_destroy(&persister);
    }
    strata_db_close(&db);
    if (mredis) {
        managed_redis_stop(&mredis);
        LOG_INFO("redis_stopped", "mode=managed");
    }
    if (lock_fd >= 0) {
        close(lock_fd);
        LOG_INFO("stopped", "exit_code=%d", exit_code);
    }
    strata_metrics_destroy(&metrics);
    strata_clock_destroy(&clock);
    strata_buf_free(&err);
    strata_options_free(groups, SERVE_NGROUPS);
    return exit_code;
}
