/*
 * dlq.c: `strata dlq list|replay`: inspect and replay the write-behind
 * dead-letter streams ("<stream>:dlq", see strata/tier.h).
 *
 *   strata dlq list   [--var-dir DIR | --redis URL] [--stream S] [--count N]
 *       every registered stream (SMEMBERS strata:wb:streams) or one stream:
 *       its dead-letter count, then up to N entries with their error and body
 *   strata dlq replay [--redis URL] --stream S [--id ID | --all] [--count N]
 *       moves dead letters back to S (the persister applies them again;
 *       an event applied meanwhile is a duplicate, by its body id)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "strata/options.h"
#include "strata/redis.h"
#include "strata/status.h"
#include "strata/tier.h"

extern char **environ;

#define DLQ_OPTIONS(X)                                                                           \
    X(redis, STRATA_OPT_STR, "", 0, 0, NULL, STRATA_OPT_SECRET,                                  \
      "Redis URL (as for strata serve); empty = the managed Redis of --var-dir")                 \
    X(var_dir, STRATA_OPT_STR, "./var", 1, 0, NULL, 0, "var dir of the strata serve to inspect") \
    X(stream, STRATA_OPT_STR, "", 0, 0, NULL, 0,                                                 \
      "one write-behind stream (list: default every registered stream; replay: required)")       \
    X(id, STRATA_OPT_STR, "", 0, 0, NULL, 0, "replay: the dead-letter entry id to move back")    \
    X(all, STRATA_OPT_BOOL, "false", 0, 0, NULL, 0, "replay: move back every dead letter")       \
    X(count, STRATA_OPT_INT, "10", 0, 100000, NULL, 0, "entries to show / to replay at most")

enum { DLQ_OPTIONS(STRATA_OPT_ENUM_ENTRY) DLQ_OPT__COUNT };
static strata_option dlq_opts[] = {DLQ_OPTIONS(STRATA_OPT_ROW)};
static strata_opt_group dlq_group[] = {{"dlq", dlq_opts, DLQ_OPT__COUNT}};

static void dlq_usage(FILE *f) {
    strata_buf b = STRATA_BUF_INIT;
    strata_buf_puts(
        &b, "usage: strata dlq list   [--stream S] [--count N] [--var-dir DIR | --redis URL]\n"
            "       strata dlq replay --stream S (--id ID | --all) [--count N] [...]\n"
            "Inspects and replays write-behind events that could not be applied.\n");
    strata_options_help(dlq_group, 1, &b);
    fputs(b.data, f);
    strata_buf_free(&b);
}

static void print_stream(strata_redis_sync *s, const char *stream, long count) {
    char dlq[600];
    snprintf(dlq, sizeof dlq, "%s%s", stream, STRATA_WB_DLQ_SUFFIX);
    strata_redis_reply *r = NULL;
    long long n = 0;
    if (strata_redis_sync_command(s, &r, "XLEN %s", dlq) == STRATA_OK && r &&
        r->type == STRATA_REPLY_INTEGER)
        n = r->integer;
    strata_redis_reply_free(r);
    printf("%s dead_letters=%lld\n", stream, n);
    if (n == 0 || count <= 0)
        return;
    r = NULL;
    if (strata_redis_sync_command(s, &r, "XRANGE %s - + COUNT %ld", dlq, count) != STRATA_OK ||
        !r || r->type != STRATA_REPLY_ARRAY) {
        strata_redis_reply_free(r);
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const strata_redis_reply *e = r->element[i];
        if (e->type != STRATA_REPLY_ARRAY || e->elements != 2)
            continue;
        printf("  %s", e->element[0]->str);
        const strata_redis_reply *fv = e->element[1];
        for (size_t k = 0; k + 1 < fv->elements; k += 2)
            printf(" %s=%.*s", fv->element[k]->str, (int)fv->element[k + 1]->len,
                   fv->element[k + 1]->str);
        printf("\n");
    }
    strata_redis_reply_free(r);
}

int cli_dlq(int argc, char **argv) {
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        dlq_usage(argc < 1 ? stderr : stdout);
        return argc < 1 ? EXIT_USAGE : 0;
    }
    const char *cmd = argv[0];
    if (strcmp(cmd, "list") != 0 && strcmp(cmd, "replay") != 0) {
        fprintf(stderr, "strata dlq: unknown command \"%s\" (list or replay)\n", cmd);
        return EXIT_USAGE;
    }
    strata_buf oerr = STRATA_BUF_INIT;
    bool help = false;
    int orc = strata_options_load(dlq_group, 1, argc - 1, argv + 1, environ, &help, &oerr);
    if (orc != STRATA_OK || help) {
        if (orc != STRATA_OK)
            fprintf(stderr, "strata dlq: %s\n", oerr.data ? oerr.data : strata_strerror(orc));
        else
            dlq_usage(stdout);
        strata_buf_free(&oerr);
        strata_options_free(dlq_group, 1);
        return orc != STRATA_OK ? cli_exit_for_options(orc) : 0;
    }
    strata_buf_free(&oerr);
    char urlbuf[4200];
    const char *url = dlq_opts[OPT_redis].val.s;
    if (!url || !*url) {
        snprintf(urlbuf, sizeof urlbuf, "unix://%s/redis/redis.sock", dlq_opts[OPT_var_dir].val.s);
        url = urlbuf;
    }
    const char *stream = *dlq_opts[OPT_stream].val.s ? dlq_opts[OPT_stream].val.s : NULL;
    const char *id = *dlq_opts[OPT_id].val.s ? dlq_opts[OPT_id].val.s : NULL;
    bool all = dlq_opts[OPT_all].val.i != 0;
    long count = (long)dlq_opts[OPT_count].val.i;
    strata_redis_sync *s = NULL;
    strata_buf err = STRATA_BUF_INIT;
    if (strata_redis_sync_create(&s, url, NULL, &err) != STRATA_OK) {
        fprintf(stderr, "strata dlq: invalid value for --redis: %s\n", err.data ? err.data : url);
        strata_buf_free(&err);
        strata_options_free(dlq_group, 1);
        return EXIT_CONFIG;
    }
    strata_buf_free(&err);
    int rc = 0;
    if (strcmp(cmd, "list") == 0) {
        if (stream) {
            print_stream(s, stream, count);
        } else {
            strata_redis_reply *r = NULL;
            int st = strata_redis_sync_command(s, &r, "SMEMBERS %s", STRATA_WB_REGISTRY);
            if (st != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY) {
                fprintf(stderr, "strata dlq: cannot read %s: %s\n", STRATA_WB_REGISTRY,
                        strata_strerror(st));
                rc = EXIT_UNAVAILABLE;
            } else {
                for (size_t i = 0; i < r->elements; i++)
                    print_stream(s, r->element[i]->str, count);
            }
            strata_redis_reply_free(r);
        }
    } else {
        if (!stream || (!id && !all) || (id && all)) {
            fprintf(stderr, "strata dlq replay: needs --stream and one of --id or --all\n");
            rc = EXIT_USAGE;
        } else {
            int n = strata_wb_dlq_replay(s, stream, id, count > 0 ? (uint32_t)count : 10);
            if (n < 0) {
                fprintf(stderr, "strata dlq replay: %s\n", strata_strerror(n));
                rc = n == STRATA_EINVAL ? EXIT_USAGE : EXIT_UNAVAILABLE;
            } else {
                printf("replayed=%d stream=%s\n", n, stream);
            }
        }
    }
    strata_redis_sync_destroy(&s);
    strata_options_free(dlq_group, 1);
    return rc;
}
