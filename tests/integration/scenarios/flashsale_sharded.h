/*
 * flashsale_sharded.h: what the sharded flash-sale HTTP tests share
 * (test_flashsale_sharded.c on one redis-server, test_flashsale_sharded_cluster.c
 * on a Redis Cluster): users with a chosen home shard, concurrent buyers on two
 * `strata serve` processes, and the invariant checks.  Header-only: each test
 * binary includes it once.
 */
#ifndef STRATA_TEST_FLASHSALE_SHARDED_H
#define STRATA_TEST_FLASHSALE_SHARDED_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "harness/harness.h"

/* The server's home shard of a user (flashsale.c: XXH3 of the user id, mod K). */
static inline int fss_home(const char *user, int k) {
    return (int)(XXH3_64bits(user, strlen(user)) % (uint64_t)k);
}

/* The shard an order id names: "<sku>-<shard>.<n>"; -1 if it names none. */
static inline int fss_order_shard(const char *id) {
    const char *dash = strrchr(id, '-');
    if (!dash || !strchr(dash, '.'))
        return -1;
    return atoi(dash + 1);
}

/* "order_id" of a 201 or 409 already_purchased body, into out ("" if none). */
static inline void fss_order_id(const char *body, char *out, size_t cap) {
    const char *o = body ? strstr(body, "\"order_id\":\"") : NULL;
    out[0] = '\0';
    if (o)
        snprintf(out, cap, "%.*s", (int)strcspn(o + 12, "\""), o + 12);
}

enum { FSS_MAX_USERS = 64 };

typedef struct fss_buyer_arg {
    uint16_t port[2];
    const char *sku;
    int id, users;
    int created, sold_out, already, other, mismatched;
    char first[FSS_MAX_USERS][64]; /* order id told on the first attempt, per user */
} fss_buyer_arg;

/* Every user tries twice, alternating servers; a buyer's second try must name the same order. */
static inline void *fss_buyers(void *p) {
    fss_buyer_arg *a = p;
    for (int u = 0; u < a->users && u < FSS_MAX_USERS; u++) {
        for (int attempt = 0; attempt < 2; attempt++) {
            char path[128], body[96], id[64];
            snprintf(path, sizeof path, "/v1/flashsales/%s/orders", a->sku);
            snprintf(body, sizeof body, "{\"user_id\":\"t%d-u%d\"}", a->id, u);
            sh_http_resp r;
            int st =
                sh_http(a->port[(u + attempt + a->id) % 2], "POST", path, body, false, 15000, &r);
            fss_order_id(r.body, id, sizeof id);
            if (st == 201) {
                a->created++;
            } else if (st == 409 && r.body && strstr(r.body, "sold_out")) {
                a->sold_out++;
            } else if (st == 409 && r.body && strstr(r.body, "already_purchased")) {
                a->already++;
            } else {
                a->other++;
                fprintf(stderr, "unexpected: %d %s\n", st, r.body ? r.body : "");
            }
            if (attempt == 0 && id[0])
                snprintf(a->first[u], sizeof a->first[u], "%s", id);
            if (attempt == 1 && a->first[u][0] && strcmp(id, a->first[u]) != 0)
                a->mismatched++;
            sh_http_free(&r);
        }
    }
    return NULL;
}

typedef struct fss_totals {
    int created, sold_out, already, other, mismatched;
} fss_totals;

/* Runs `threads` buyer threads of `users` users each against both servers. */
static inline fss_totals fss_run_buyers(uint16_t p1, uint16_t p2, const char *sku, int threads,
                                        int users, fss_buyer_arg *args) {
    pthread_t t[16];
    fss_totals tot = {0};
    for (int i = 0; i < threads; i++) {
        memset(&args[i], 0, sizeof args[i]);
        args[i].port[0] = p1;
        args[i].port[1] = p2;
        args[i].sku = sku;
        args[i].id = i;
        args[i].users = users;
        pthread_create(&t[i], NULL, fss_buyers, &args[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        tot.created += args[i].created;
        tot.sold_out += args[i].sold_out;
        tot.already += args[i].already;
        tot.other += args[i].other;
        tot.mismatched += args[i].mismatched;
    }
    return tot;
}

/* Integer value of a JSON field in a body (-1 if absent). */
static inline long long fss_json_int(const char *body, const char *field) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":", field);
    const char *p = body ? strstr(body, needle) : NULL;
    return p ? strtoll(p + strlen(needle), NULL, 10) : -1;
}

typedef struct fss_persist_ctx {
    uint16_t port;
    char (*ids)[64];
    int n;
} fss_persist_ctx;

static inline bool fss_all_persisted(void *p) {
    fss_persist_ctx *c = p;
    for (int i = 0; i < c->n; i++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/orders/%s", c->ids[i]);
        sh_http_resp r;
        int st = sh_http(c->port, "GET", path, NULL, false, 5000, &r);
        bool ok = st == 200 && r.body && strstr(r.body, "\"persisted\":true");
        sh_http_free(&r);
        if (!ok)
            return false;
    }
    return true;
}

#endif
