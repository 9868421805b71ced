/*
 * bench_server.c: the HTTP layer alone (no Redis, no database), for
 * bench/http-compare.sh when `strata serve` is not wanted or not available:
 * the same strata_server as `strata serve`, with its built-in routes
 * (GET /healthz is the static-JSON route measured).  Options are the server
 * group's flags (--listen, --workers, ...).  Runs until SIGTERM/SIGINT.
 * Built by the script straight from the sources (src/server, src/lib/core),
 * so it depends on nothing else in the tree.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "server/server.h"
#include "strata/log.h"
#include "strata/metrics.h"
#include "strata/status.h"

int main(int argc, char **argv) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* workers inherit the mask */
    strata_buf err = STRATA_BUF_INIT;
    if (strata_options_load(&strata_server_opt_group, 1, argc - 1, argv + 1, NULL, NULL, &err) !=
        STRATA_OK) {
        fprintf(stderr, "bench_server: %s\n", err.data);
        return 64;
    }
    strata_metrics *m = strata_metrics_create();
    strata_server_deps deps = {.metrics = m, .groups = &strata_server_opt_group, .ngroups = 1};
    strata_server *s = NULL;
    if (strata_server_create(&s, &deps, &err) != STRATA_OK ||
        strata_server_start(s, &err) != STRATA_OK) {
        fprintf(stderr, "bench_server: %s\n", err.data);
        return 1;
    }
    printf("listening %s\n", strata_server_address(s));
    fflush(stdout);
    int sig;
    sigwait(&set, &sig);
    strata_server_destroy(&s);
    strata_metrics_destroy(&m);
    strata_options_free(&strata_server_opt_group, 1);
    strata_buf_free(&err);
    return 0;
}
