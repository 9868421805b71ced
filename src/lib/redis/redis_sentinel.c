/*
 * redis_sentinel.c: master discovery through Redis Sentinel.
 *
 * Follows the Sentinel client guidelines (redis.io, "Sentinel client spec"):
 *   1. ask each sentinel in turn `SENTINEL get-master-addr-by-name <name>`;
 *      the first that answers gives the master's address (the next
 *      discovery starts with the sentinel that answered last);
 *   2. confirm: every data connection runs `ROLE` in its handshake and is
 *      refused unless the node says "master" (a sentinel may be stale);
 *      a refusal (or READONLY/MASTERDOWN on a command) starts discovery again;
 *   3. stay subscribed to `+switch-master` on every sentinel and switch at
 *      once when it names our master: queued calls move to the new master,
 *      connections to the old one close (calls in flight there complete as
 *      "outcome unknown" if they were sent).
 * Discoveries are rate-limited by refresh_min_ms.  Sentinels are contacted
 * without AUTH (the URL's credentials are the data nodes').
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_priv.h"
#include "strata/alloc.h"
#include "strata/status.h"

struct sentinel_state {
    size_t n;
    rlink **subs;
    uint64_t *sub_next_ms;
    uint32_t *sub_fails;
    rlink *query;     /* the one discovery connection */
    size_t cur, good; /* sentinel being asked; the last that answered */
    size_t tried;
    bool discovering, wanted;
    uint64_t last_ms;
};

static void query_next(strata_redis *r);

/* ---- discovery ------------------------------------------------------------------- */

static void q_reply(redisAsyncContext *ac, void *reply, void *priv) {
    rlink *l = priv;
    strata_redis *r = l->r;
    struct sentinel_state *s = r->sen;
    redisReply *rep = reply;
    (void)ac;
    if (!rep || !s)
        return;
    l->busy = true; /* answered: its death is not a failure */
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_STRING &&
        rep->element[1]->type == REDIS_REPLY_STRING) {
        long port = strtol(rep->element[1]->str, NULL, 10);
        if (port > 0 && port <= 65535 && rep->element[0]->len > 0 && rep->element[0]->len < 256) {
            rnode *n = redis__node_get(r, rep->element[0]->str, (uint16_t)port, NULL);
            if (n) {
                s->good = l->index >= 0 ? (size_t)l->index : 0;
                s->discovering = false;
                if (r->master != n)
                    redis__set_master(r, n); /* counts a failover if n is new */
                redis__link_close(l);
                return;
            }
        }
    }
    /* nil (unknown master) or junk: ask the next sentinel */
    redis__link_close(l);
    query_next(r);
}

static void q_ready(rlink *l) {
    strata_redis *r = l->r;
    redisAsyncCommand(l->ac, q_reply, l, "SENTINEL get-master-addr-by-name %s", r->url.master_name);
}

static void q_dead(rlink *l) {
    strata_redis *r = l->r;
    struct sentinel_state *s = r->sen;
    if (!s)
        return;
    if (s->query == l)
        s->query = NULL;
    if (!l->busy && s->discovering && !r->destroying)
        query_next(r); /* could not connect or no answer: next sentinel */
}

static const link_ops query_ops = {q_ready, q_dead};

static void query_open(strata_redis *r, size_t i) {
    struct sentinel_state *s = r->sen;
    rlink *l = redis__link_open(r, r->url.hosts[i].host, r->url.hosts[i].port, NULL, LK_CONTROL, 0,
                                &query_ops, s);
    if (!l) {
        query_next(r);
        return;
    }
    l->index = (int)i;
    s->query = l;
}

static void query_next(strata_redis *r) {
    struct sentinel_state *s = r->sen;
    if (!s->discovering || r->destroying)
        return;
    s->tried++;
    if (s->tried >= s->n) {
        s->discovering = false;
        s->wanted = true; /* try again after refresh_min_ms */
        return;
    }
    s->cur = (s->cur + 1) % s->n;
    query_open(r, s->cur);
}

void redis__sentinel_discover(strata_redis *r) {
    struct sentinel_state *s = r->sen;
    if (!s || r->destroying)
        return;
    s->wanted = true;
    if (s->discovering || redis__now(r) < s->last_ms + r->o.refresh_min_ms)
        return;
    s->wanted = false;
    s->discovering = true;
    s->tried = 0;
    s->cur = s->good;
    s->last_ms = redis__now(r);
    query_open(r, s->cur);
}

/* ---- +switch-master subscriptions ------------------------------------------------------- */

static void sub_msg(redisAsyncContext *ac, void *reply, void *priv) {
    rlink *l = priv;
    strata_redis *r = l->r;
    redisReply *rep = reply;
    (void)ac;
    if (!rep || !r->sen || r->destroying)
        return;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING || rep->element[2]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(rep->element[0]->str, "subscribe") == 0) {
        /* (Re)subscribed: a switch may have happened while we were away. */
        r->sen->sub_fails[l->index] = 0;
        redis__sentinel_discover(r);
        return;
    }
    if (strcmp(rep->element[0]->str, "message") != 0)
        return;
    /* "<name> <old-ip> <old-port> <new-ip> <new-port>" */
    char name[256], oldip[256], newip[256];
    unsigned oldport, newport;
    if (rep->element[2]->len >= 1024 || sscanf(rep->element[2]->str, "%255s %255s %u %255s %u",
                                               name, oldip, &oldport, newip, &newport) != 5)
        return;
    if (strcmp(name, r->url.master_name) != 0 || newport == 0 || newport > 65535)
        return;
    rnode *n = redis__node_get(r, newip, (uint16_t)newport, NULL);
    if (!n || n == r->master)
        return;
    redis__set_master(r, n); /* counts the failover */
}

static void sub_ready(rlink *l) {
    redisAsyncCommand(l->ac, sub_msg, l, "SUBSCRIBE +switch-master");
}

static void sub_dead(rlink *l) {
    strata_redis *r = l->r;
    struct sentinel_state *s = r->sen;
    if (!s || l->index < 0 || (size_t)l->index >= s->n)
        return;
    if (s->subs[l->index] == l)
        s->subs[l->index] = NULL;
    uint32_t f = ++s->sub_fails[l->index];
    uint64_t b = (uint64_t)r->o.reconnect_min_ms << (f < 10 ? f : 10);
    if (b > r->o.reconnect_max_ms)
        b = r->o.reconnect_max_ms;
    s->sub_next_ms[l->index] = redis__now(r) + b;
}

static const link_ops sub_ops = {sub_ready, sub_dead};

static void sub_open(strata_redis *r, size_t i) {
    struct sentinel_state *s = r->sen;
    rlink *l = redis__link_open(r, r->url.hosts[i].host, r->url.hosts[i].port, NULL, LK_CONTROL, 0,
                                &sub_ops, s);
    if (!l) {
        s->sub_fails[i]++;
        s->sub_next_ms[i] = redis__now(r) + r->o.reconnect_max_ms;
        return;
    }
    l->index = (int)i;
    /* A subscription has no deadline of its own: never time it out. */
    s->subs[i] = l;
}

/* ---- lifecycle ------------------------------------------------------------------- */

int redis__sentinel_start(strata_redis *r) {
    struct sentinel_state *s = strata_calloc(1, sizeof(*s));
    if (!s)
        return STRATA_ENOMEM;
    r->sen = s;
    s->n = r->url.nhosts;
    s->subs = strata_calloc(s->n, sizeof(*s->subs));
    s->sub_next_ms = strata_calloc(s->n, sizeof(*s->sub_next_ms));
    s->sub_fails = strata_calloc(s->n, sizeof(*s->sub_fails));
    if (!s->subs || !s->sub_next_ms || !s->sub_fails)
        return STRATA_ENOMEM;
    for (size_t i = 0; i < s->n; i++)
        sub_open(r, i);
    redis__sentinel_discover(r);
    redis__tick_ref(r);
    return STRATA_OK;
}

void redis__sentinel_tick(strata_redis *r, uint64_t now) {
    struct sentinel_state *s = r->sen;
    for (size_t i = 0; i < s->n; i++)
        if (!s->subs[i] && now >= s->sub_next_ms[i])
            sub_open(r, i);
    if (s->query && s->query->state < LS_READY && now >= s->query->deadline)
        redis__link_close(s->query);
    for (size_t i = 0; i < s->n; i++)
        if (s->subs[i] && s->subs[i]->state < LS_READY && now >= s->subs[i]->deadline)
            redis__link_close(s->subs[i]);
    if ((s->wanted || !r->master) && !s->discovering)
        redis__sentinel_discover(r);
}

void redis__sentinel_destroy(strata_redis *r) {
    struct sentinel_state *s = r->sen;
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        redis__link_close(s->subs[i]);
    redis__link_close(s->query);
    r->sen = NULL;
    strata_free(s->subs);
    strata_free(s->sub_next_ms);
    strata_free(s->sub_fails);
    strata_free(s);
}
