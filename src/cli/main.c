/*
 * main.c: the `strata` binary: dispatches to subcommands.
 *   strata serve [options]        run the server (see `strata serve --help`)
 *   strata bench <backend> [...]  run a benchmark (see `strata bench --help`)
 *   strata version | help
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "strata/status.h"

static void usage(FILE *f) {
    fprintf(f,
            "strata %s: a multi-level cache platform (L1 -> Redis -> database)\n"
            "\n"
            "usage: strata <command> [options]\n"
            "\n"
            "commands:\n"
            "  serve     run the HTTP server on embedded defaults or the given tiers\n"
            "  bench     run a benchmark backend (strata bench --help lists them)\n"
            "  dlq       list or replay write-behind dead letters (strata dlq --help)\n"
            "  version   print the version\n"
            "  help      print this help\n"
            "\n"
            "`strata <command> --help` describes a command's options.\n",
            STRATA_VERSION);
}

int cli_exit_for_options(int rc) {
    switch (rc) {
    case STRATA_OK: return 0;
    case STRATA_EINVAL: return EXIT_USAGE;
    case STRATA_ENOTFOUND: return EXIT_NOINPUT;
    case STRATA_ERANGE: return EXIT_CONFIG;
    default: return EXIT_SOFTWARE;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return cli_serve(argc - 2, argv + 2);
    if (strcmp(cmd, "bench") == 0)
        return cli_bench(argc - 2, argv + 2);
    if (strcmp(cmd, "dlq") == 0)
        return cli_dlq(argc - 2, argv + 2);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("strata %s\n", STRATA_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "strata: unknown command \"%s\" (try `strata help`)\n", cmd);
    return EXIT_USAGE;
}
