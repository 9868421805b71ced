/*
 * dlq.c: `strata dlq list|replay`: inspect and replay the write-behind
 * dead-letter streams ("<stream>:dlq", see strata/tier.h).
 *
 *   strata dlq list   [--redis URL] [--stream S] [--count N]
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
#include "strata/redis.h"
#include "strata/status.h"
#include "strata/tier.h"

static void dlq_usage(FILE *f) {
    fprintf(f, "usage: strata dlq list   [--redis URL] [--stream S] [--count N]\n"
               "       strata dlq replay [--redis URL] --stream S (--id ID | --all) [--count N]\n"
               "  --redis   Redis URL (default redis://127.0.0.1:6379; env STRATA_REDIS_URL)\n");
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
    const char *url = getenv("STRATA_REDIS_URL");
    if (!url)
        url = "redis://127.0.0.1:6379";
    const char *stream = NULL, *id = NULL;
    bool all = false;
    long count = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--redis") == 0 && v) {
            url = v;
            i++;
        } else if (strcmp(a, "--stream") == 0 && v) {
            stream = v;
            i++;
        } else if (strcmp(a, "--id") == 0 && v) {
            id = v;
            i++;
        } else if (strcmp(a, "--count") == 0 && v) {
            char *end = NULL;
            count = strtol(v, &end, 10);
            if (!end || *end || count < 0 || count > 100000) {
                fprintf(stderr, "strata dlq: --count must be 0..100000, got \"%s\"\n", v);
                return EXIT_USAGE;
            }
            i++;
        } else if (strcmp(a, "--all") == 0) {
            all = true;
        } else {
            fprintf(stderr, "strata dlq: unknown or incomplete option \"%s\"\n", a);
            dlq_usage(stderr);
            return EXIT_USAGE;
        }
    }
    strata_redis_sync *s = NULL;
    strata_buf err = STRATA_BUF_INIT;
    if (strata_redis_sync_create(&s, url, NULL, &err) != STRATA_OK) {
        fprintf(stderr, "strata dlq: bad Redis URL: %s\n", err.data ? err.data : url);
        strata_buf_free(&err);
        return EXIT_USAGE;
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
    } else if (strcmp(cmd, "replay") == 0) {
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
    } else {
        fprintf(stderr, "strata dlq: unknown subcommand \"%s\"\n", cmd);
        dlq_usage(stderr);
        rc = EXIT_USAGE;
    }
    strata_redis_sync_destroy(&s);
    return rc;
}
