/*
 * cli.h: the `strata` binary's subcommands and shared exit codes.
 * Exit codes follow sysexits(3).
 */
#ifndef STRATA_CLI_H
#define STRATA_CLI_H

#define EXIT_USAGE       64 /* EX_USAGE: bad command line */
#define EXIT_NOINPUT     66 /* EX_NOINPUT: unreadable file */
#define EXIT_UNAVAILABLE 69 /* EX_UNAVAILABLE: a dependency could not be started or reached */
#define EXIT_SOFTWARE    70 /* EX_SOFTWARE: internal error */
#define EXIT_TEMPFAIL    75 /* EX_TEMPFAIL: e.g. another server holds the var dir */
#define EXIT_CONFIG      78 /* EX_CONFIG: a bad configuration value */

/** Maps an options-engine status (strata_options_load) to an exit code. */
int cli_exit_for_options(int rc);

int cli_serve(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_dlq(int argc, char **argv);

#endif
