/*
 * redis_client.c: the asynchronous Redis client core: connections on a libuv
 * loop through hiredis, pipelining, deadlines, reconnects, retries, routing.
 *
 * How a call travels
 * ------------------
 * A call is formatted once into RESP (kept for re-sends) and routed: to the
 * standalone node, to the Sentinel master, or to the Cluster node owning its
 * slot.  A node owns `conns_per_node` pipelined links; the link is picked by
 * a hash of the key, so calls on one key keep their order.  With no ready
 * link the call waits in the node's queue (bounded) until a link is ready or
 * its deadline passes.  Blocking calls take a dedicated link each.
 *
 * hiredis 0.14.1 async does the protocol work; we give it our own libuv
 * hooks (a uv_poll_t per link, like its adapters/libuv.h, but allocated
 * with strata_malloc and with poll errors routed to a read so hiredis sees
 * them).  hiredis has no timeouts, so one repeating timer per client (the
 * tick, `tick_ms`) enforces connect and command deadlines: an expired call
 * that was written closes its link (a stuck connection is useless), which
 * completes every call on it.
 *
 * Sent or never sent
 * ------------------
 * The one thing a caller must know after a failure is whether the command
 * could have run.  hiredis appends commands to an output buffer (an sds) and
 * writes it when the socket is writable, removing what was written.  So per
 * link we count the bytes ever appended; bytes written = appended - what is
 * left in the buffer; a command whose last byte is below that mark reached
 * the kernel and may have run (STRATA_EUNKNOWN); one that did not was never
 * seen by Redis, because Redis runs only complete commands: it is re-routed
 * to a fresh connection if its deadline allows, else STRATA_EUNAVAIL.
 *
 * Refusals
 * --------
 * LOADING, READONLY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN and BUSY mean the
 * command did not run: we trigger rediscovery (Sentinel, Cluster) and retry
 * with a doubling delay, at most max_retries times and within the deadline,
 * then report STRATA_ERETRY.  MOVED updates the slot map and re-sends at
 * once; ASK re-sends once with ASKING; NOSCRIPT sends SCRIPT LOAD + EVALSHA
 * on one connection, once.
 *
 * hiredis rules we live by (0.14.1 async.c): a context must never be freed
 * inside its connect callback; redisAsyncFree inside a reply callback is
 * deferred until the callback returns; freeing runs every pending callback
 * with a NULL reply, then the event "cleanup" hook, then onDisconnect (only if
 * it had connected).  Our cleanup hook is therefore the single place where a
 * link dies, whatever killed it.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/sds.h>

#include "redis_priv.h"
#include "strata/alloc.h"
#include "strata/status.h"

/* Our reply type is hiredis' redisReply, field for field. */
_Static_assert(sizeof(strata_redis_reply) == sizeof(redisReply), "reply layout");
_Static_assert(offsetof(strata_redis_reply, integer) == offsetof(redisReply, integer), "reply");
_Static_assert(offsetof(strata_redis_reply, len) == offsetof(redisReply, len), "reply");
_Static_assert(offsetof(strata_redis_reply, str) == offsetof(redisReply, str), "reply");
_Static_assert(offsetof(strata_redis_reply, elements) == offsetof(redisReply, elements), "reply");
_Static_assert(offsetof(strata_redis_reply, element) == offsetof(redisReply, element), "reply");
_Static_assert(STRATA_REPLY_ERROR == REDIS_REPLY_ERROR && STRATA_REPLY_NIL == REDIS_REPLY_NIL &&
                   STRATA_REPLY_ARRAY == REDIS_REPLY_ARRAY &&
                   STRATA_REPLY_STATUS == REDIS_REPLY_STATUS,
               "reply types");

/* ---- small helpers ------------------------------------------------------- */

uint64_t redis__now(strata_redis *r) { return uv_now(r->loop); }

void redis__list_push(rlist *l, rreq *q) {
    q->next = NULL;
    q->prev = l->tail;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->n++;
}

void redis__list_remove(rlist *l, rreq *q) {
    if (q->prev)
        q->prev->next = q->next;
    else
        l->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        l->tail = q->prev;
    q->next = q->prev = NULL;
    l->n--;
}

rreq *redis__list_pop(rlist *l) {
    rreq *q = l->head;
    if (q)
        redis__list_remove(l, q);
    return q;
}

static void ctr(strata_counter *c) {
    if (c)
        strata_counter_inc(c);
}

void redis__tick_ref(strata_redis *r) {
    /* Calls in progress and long-lived duties (tracking, Sentinel
     * subscriptions) keep the loop alive: they must reconnect by themselves. */
    bool want = r->outstanding > 0 || r->unrouted.n > 0 || r->delayed.n > 0 ||
                (!r->destroying && (r->trk || r->sen));
    if (want && !r->tick_ref) {
        uv_ref((uv_handle_t *)&r->tick);
        r->tick_ref = true;
    } else if (!want && r->tick_ref) {
        uv_unref((uv_handle_t *)&r->tick);
        r->tick_ref = false;
    }
}

/* ---- replies ----------------------------------------------------------------- */

strata_redis_reply *strata_redis_reply_dup(const strata_redis_reply *src) {
    if (!src)
        return NULL;
    strata_redis_reply *d = strata_calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->type = src->type;
    d->integer = src->integer;
    if (src->str) {
        d->str = strata_malloc(src->len + 1);
        if (!d->str)
            goto oom;
        memcpy(d->str, src->str, src->len);
        d->str[src->len] = '\0';
        d->len = src->len;
    }
    if (src->type == STRATA_REPLY_ARRAY && src->elements > 0) {
        d->element = strata_calloc(src->elements, sizeof(*d->element));
        if (!d->element)
            goto oom;
        d->elements = src->elements;
        for (size_t i = 0; i < src->elements; i++) {
            d->element[i] = strata_redis_reply_dup(src->element[i]);
            if (!d->element[i])
                goto oom;
        }
    }
    return d;
oom:
    strata_redis_reply_free(d);
    return NULL;
}

void strata_redis_reply_free(strata_redis_reply *r) {
    if (!r)
        return;
    if (r->element) {
        for (size_t i = 0; i < r->elements; i++)
            strata_redis_reply_free(r->element[i]);
        strata_free(r->element);
    }
    strata_free(r->str);
    strata_free(r);
}

bool strata_redis_reply_is(const strata_redis_reply *r, const char *s) {
    if (!r || (r->type != STRATA_REPLY_STRING && r->type != STRATA_REPLY_STATUS))
        return false;
    size_t n = strlen(s);
    return r->len == n && memcmp(r->str, s, n) == 0;
}

/* Maps an error reply's text onto a status (the code is its first word). */
int redis__map_error(const char *s, size_t len) {
    static const struct {
        const char *prefix;
        int status;
    } map[] = {
        {"NOAUTH", STRATA_EAUTH},
        {"WRONGPASS", STRATA_EAUTH},
        {"NOPERM", STRATA_EPERM},
        {"CROSSSLOT", STRATA_ECROSSSLOT},
        {"BACKPRESSURE", STRATA_EBACKPRESSURE},
        {"BUSYGROUP", STRATA_EEXIST},
        {"LOADING", STRATA_ERETRY},
        {"READONLY", STRATA_ERETRY},
        {"MASTERDOWN", STRATA_ERETRY},
        {"TRYAGAIN", STRATA_ERETRY},
        {"CLUSTERDOWN", STRATA_ERETRY},
        {"BUSY", STRATA_ERETRY},
        {"OOM", STRATA_ENOMEM},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        size_t n = strlen(map[i].prefix);
        if (len >= n && memcmp(s, map[i].prefix, n) == 0 && (len == n || s[n] == ' '))
            return map[i].status;
    }
    /* Errors raised inside a script come back as "ERR user_script:..: BACKPRESSURE ..."
     * on some versions; a script's own error_reply keeps its text as is. */
    if (len > 4 && memmem(s, len, "BACKPRESSURE", 12))
        return STRATA_EBACKPRESSURE;
    return STRATA_EPROTO;
}

static bool err_is(const redisReply *rep, const char *code) {
    size_t n = strlen(code);
    return rep->len >= n && memcmp(rep->str, code, n) == 0 && (rep->len == n || rep->str[n] == ' ');
}

/* ---- RESP formatting ------------------------------------------------------------ */

/* Writes the decimal digits of v at p; returns the count. */
static size_t put_uint(char *p, size_t v) {
    if (v < 10) { /* argument counts and short keys: the common case */
        p[0] = (char)('0' + v);
        return 1;
    }
    if (v < 100) {
        p[0] = (char)('0' + v / 10);
        p[1] = (char)('0' + v % 10);
        return 2;
    }
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

static size_t dec_len(size_t v) {
    if (v < 10)
        return 1;
    if (v < 100)
        return 2;
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* Exact RESP size of argv (without the trailing NUL). */
static size_t resp_size(int argc, const char *const *argv, const size_t *argvlen) {
    size_t total = 3 + dec_len((size_t)argc);
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen ? argvlen[i] : strlen(argv[i]);
        total += 5 + dec_len(n) + n;
    }
    return total;
}

/* Writes the RESP of argv at b (room: resp_size + 1); returns its length. */
static size_t resp_write(char *b, int argc, const char *const *argv, const size_t *argvlen) {
    size_t p = 0;
    b[p++] = '*';
    p += put_uint(b + p, (size_t)argc);
    b[p++] = '\r';
    b[p++] = '\n';
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen ? argvlen[i] : strlen(argv[i]);
        b[p++] = '$';
        p += put_uint(b + p, n);
        b[p++] = '\r';
        b[p++] = '\n';
        memcpy(b + p, argv[i], n);
        p += n;
        b[p++] = '\r';
        b[p++] = '\n';
    }
    b[p] = '\0';
    return p;
}

int redis__format_argv(char **out, size_t *outlen, int argc, const char *const *argv,
                       const size_t *argvlen) {
    char *b = strata_malloc(resp_size(argc, argv, argvlen) + 1);
    if (!b)
        return STRATA_ENOMEM;
    *outlen = resp_write(b, argc, argv, argvlen);
    *out = b;
    return STRATA_OK;
}

int redis__split(const char *cmd, size_t len, const char **argv, size_t *lens, int max) {
    const char *p = cmd, *end = cmd + len;
    if (p >= end || *p != '*')
        return -1;
    char *e;
    long n = strtol(p + 1, &e, 10);
    if (e + 2 > end || e[0] != '\r' || n < 0)
        return -1;
    p = e + 2;
    int argc = 0;
    for (long i = 0; i < n; i++) {
        if (p >= end || *p != '$')
            return -1;
        long l = strtol(p + 1, &e, 10);
        if (l < 0 || e + 2 > end)
            return -1;
        p = e + 2;
        if ((size_t)(end - p) < (size_t)l + 2)
            return -1;
        if (argc < max) {
            argv[argc] = p;
            lens[argc] = (size_t)l;
        }
        argc++;
        p += l + 2;
    }
    return argc;
}

/* ---- requests ------------------------------------------------------------------- */

/*
 * Requests are recycled through a per-client freelist (bounded by
 * REQ_FREE_MAX), and a command of up to REQ_INLINE bytes is formatted inside
 * the request itself: a pipelined GET costs no allocation on our side.  The
 * command must be kept until the call completes (a call never sent is
 * re-routed; MOVED/ASK/NOSCRIPT/refusals re-send it), so "no copy" is not an
 * option, but this copy is a memcpy of a few dozen bytes into memory that is
 * already hot.  The zeroing stops at `inl`.
 */
static rreq *req_new(strata_redis *r, size_t cmdcap) {
    rreq *q = r->req_free;
    if (q) {
        r->req_free = q->next;
        r->req_nfree--;
        memset(q, 0, offsetof(rreq, inl));
    } else {
        q = strata_malloc(sizeof(*q));
        if (!q)
            return NULL;
        memset(q, 0, offsetof(rreq, inl));
    }
    q->r = r;
    q->slot = -1;
    if (cmdcap > REQ_INLINE) {
        q->cmd = strata_malloc(cmdcap);
        if (!q->cmd) {
            q->next = r->req_free;
            r->req_free = q;
            r->req_nfree++;
            return NULL;
        }
    } else {
        q->cmd = cmdcap ? q->inl : NULL;
    }
    return q;
}

static void req_free(rreq *q) {
    strata_redis *r = q->r;
    if (q->stash)
        strata_redis_reply_free(q->stash);
    if (q->cmd != q->inl)
        strata_free(q->cmd);
    if (!r->destroying && r->req_nfree < REQ_FREE_MAX) {
        q->next = r->req_free;
        r->req_free = q;
        r->req_nfree++;
        return;
    }
    strata_free(q);
}

/* Completes a request that is in no list; calls its callback once. */
static void req_complete(rreq *q, int status, const strata_redis_reply *reply) {
    strata_redis *r = q->r;
    if (!(q->rq & RQ_INTERNAL)) {
        r->stats.commands++;
        ctr(r->m.commands);
        if (status == STRATA_EUNKNOWN) {
            r->stats.unknown++;
            ctr(r->m.unknown);
        } else if (status == STRATA_EUNAVAIL) {
            r->stats.unavail++;
            ctr(r->m.unavail);
        } else if (status < 0) {
            ctr(r->m.errors);
        }
        if (r->m.latency && q->start_ns)
            strata_histogram_record(r->m.latency, uv_hrtime() - q->start_ns);
    }
    r->outstanding--;
    if (q->cb)
        q->cb(q->ud, status, reply);
    req_free(q);
    redis__tick_ref(r);
}

/* ---- links: hiredis event hooks on libuv -------------------------------------------- */

/* The client is freed when its last handle has closed (close callbacks run in any order). */
static void handle_closed(strata_redis *r) {
    if (--r->handles_open == 0 && r->destroying) {
        rreq *q = r->req_free;
        while (q) {
            rreq *next = q->next;
            strata_free(q);
            q = next;
        }
        strata_free(r);
    }
}

static void link_free_cb(uv_handle_t *h) {
    rlink *l = h->data;
    strata_redis *r = l->r;
    strata_free(l);
    handle_closed(r);
}

/*
 * Writes
 * ------
 * hiredis asks for a write (addWrite) every time a command is appended to its
 * output buffer; arming the poll for it costs an epoll_ctl now, a loop
 * iteration to learn the socket is writable, and another epoll_ctl to disarm.
 * Once a link is connected we defer instead: the link joins the client's
 * write queue, and the queue is flushed by one redisAsyncHandleWrite per link
 * (i) at the end of a read batch on that link (replies processed, next calls
 * appended by their callbacks: the classic pipelined turn-around) and (ii) in
 * the loop's prepare phase, before it blocks (calls issued from other
 * handles' callbacks: HTTP requests, timers), the way Redis' beforeSleep
 * flushes its clients.  Only when the socket does not take everything is
 * the poll armed for writing (hiredis' addWrite inside our own flush).
 * Nothing changes for "sent or never sent": that is read from the buffer.
 */
static void wq_remove(rlink *l) {
    if (!l->wqueued)
        return;
    strata_redis *r = l->r;
    if (l->wprev)
        l->wprev->wnext = l->wnext;
    else
        r->wq = l->wnext;
    if (l->wnext)
        l->wnext->wprev = l->wprev;
    l->wnext = l->wprev = NULL;
    l->wqueued = false;
}

static void link_flush(rlink *l) {
    wq_remove(l);
    if (!l->ac || !(l->ac->c.flags & REDIS_CONNECTED))
        return;
    l->in_flush = true;
    redisAsyncHandleWrite(l->ac); /* may free the context: l stays valid until closed */
    l->in_flush = false;
}

static void on_prepare(uv_prepare_t *h) {
    strata_redis *r = h->data;
    while (r->wq)
        link_flush(r->wq);
}

static void ev_poll_cb(uv_poll_t *h, int status, int events) {
    rlink *l = h->data;
    if (!l->ac)
        return;
    if (status < 0)
        events = UV_READABLE; /* let hiredis read and see the error */
    if (events & UV_READABLE)
        redisAsyncHandleRead(l->ac);
    if (l->ac && (events & UV_WRITABLE)) {
        wq_remove(l);
        l->in_flush = true;
        redisAsyncHandleWrite(l->ac);
        l->in_flush = false;
    } else if (l->wqueued) {
        link_flush(l);
    }
}

static void ev_update(rlink *l) {
    if (!l->poll_init)
        return;
    if (l->events)
        uv_poll_start(&l->poll, l->events, ev_poll_cb);
    else
        uv_poll_stop(&l->poll);
}

static void ev_add_read(void *p) {
    rlink *l = p;
    if (!(l->events & UV_READABLE)) {
        l->events |= UV_READABLE;
        ev_update(l);
    }
}

static void ev_del_read(void *p) {
    rlink *l = p;
    if (l->events & UV_READABLE) {
        l->events &= ~UV_READABLE;
        ev_update(l);
    }
}

static void ev_add_write(void *p) {
    rlink *l = p;
    if (!l->in_flush && !(l->events & UV_WRITABLE) && l->ac && (l->ac->c.flags & REDIS_CONNECTED)) {
        /* defer (see "Writes") */
        if (!l->wqueued) {
            strata_redis *r = l->r;
            l->wqueued = true;
            l->wprev = NULL;
            l->wnext = r->wq;
            if (r->wq)
                r->wq->wprev = l;
            r->wq = l;
        }
        return;
    }
    if (!(l->events & UV_WRITABLE)) {
        l->events |= UV_WRITABLE;
        ev_update(l);
    }
}

static void ev_del_write(void *p) {
    rlink *l = p;
    if (l->events & UV_WRITABLE) {
        l->events &= ~UV_WRITABLE;
        ev_update(l);
    }
}

/* The one place where a link dies (every pending callback has already run). */
static void ev_cleanup(void *p) {
    rlink *l = p;
    wq_remove(l);
    l->ac = NULL;
    l->state = LS_CLOSED;
    l->events = 0;
    if (l->poll_init)
        uv_poll_stop(&l->poll);
    if (l->ops && l->ops->on_dead)
        l->ops->on_dead(l);
    if (l->poll_init) {
        uv_close((uv_handle_t *)&l->poll, link_free_cb);
    } else {
        strata_redis *r = l->r;
        strata_free(l);
        handle_closed(r);
    }
}

static bool link_usable(const rlink *l) {
    return l && l->ac && l->state == LS_READY &&
           !(l->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

void redis__link_close(rlink *l) {
    if (!l || !l->ac || l->state == LS_CLOSING)
        return;
    l->state = LS_CLOSING;
    redisAsyncFree(l->ac); /* deferred by hiredis when inside one of its callbacks */
}

/* ---- handshake ------------------------------------------------------------------- */

static void hs_done(rlink *l) {
    if (l->hs_left > 0 || l->state != LS_HANDSHAKE)
        return;
    l->state = LS_READY;
    l->was_ready = true;
    if (l->ops && l->ops->on_ready)
        l->ops->on_ready(l);
}

static void hs_reply(redisAsyncContext *ac, void *reply, void *priv) {
    rlink *l = priv;
    redisReply *rep = reply;
    (void)ac;
    if (!rep)
        return; /* dying; cleanup follows */
    l->hs_left--;
    if (rep->type == REDIS_REPLY_ERROR) {
        l->hs_error = redis__map_error(rep->str, rep->len);
        if (l->hs_error == STRATA_EPROTO)
            l->hs_error = STRATA_EUNAVAIL;
        redis__link_close(l);
        return;
    }
    hs_done(l);
}

static void hs_role_reply(redisAsyncContext *ac, void *reply, void *priv) {
    rlink *l = priv;
    redisReply *rep = reply;
    (void)ac;
    if (!rep)
        return;
    l->hs_left--;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(rep->element[0]->str, "master") != 0) {
        /* Not (or no longer) the master: the Sentinel code rediscovers. */
        l->hs_error = STRATA_ERETRY;
        redis__link_close(l);
        return;
    }
    hs_done(l);
}

static void on_connect(const redisAsyncContext *cac, int status) {
    rlink *l = cac->data;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    if (status != REDIS_OK)
        return; /* hiredis frees the context; ev_cleanup follows */
    strata_redis *r = l->r;
    l->state = LS_HANDSHAKE;
    l->hs_left = 0;
    if ((l->hs_flags & HS_AUTH) && r->url.password) {
        if (r->url.user)
            redisAsyncCommand(ac, hs_reply, l, "AUTH %s %s", r->url.user, r->url.password);
        else
            redisAsyncCommand(ac, hs_reply, l, "AUTH %s", r->url.password);
        l->hs_left++;
    }
    if ((l->hs_flags & HS_SELECT) && r->url.db != 0) {
        redisAsyncCommand(ac, hs_reply, l, "SELECT %d", r->url.db);
        l->hs_left++;
    }
    if (l->hs_flags & HS_ROLE_MASTER) {
        redisAsyncCommand(ac, hs_role_reply, l, "ROLE");
        l->hs_left++;
    }
    /* The bytes of the handshake are not requests; count them so offsets stay right. */
    l->appended = sdslen(ac->c.obuf);
    hs_done(l);
}

rlink *redis__link_open(strata_redis *r, const char *host, uint16_t port, const char *unix_path,
                        int kind, unsigned hs_flags, const link_ops *ops, void *owner) {
    rlink *l = strata_calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->r = r;
    l->kind = kind;
    l->ops = ops;
    l->owner = owner;
    l->hs_flags = hs_flags;
    l->state = LS_CONNECTING;
    l->deadline = redis__now(r) + r->o.connect_timeout_ms;
    l->min_deadline = UINT64_MAX;
    l->client_id = -1;
    redisAsyncContext *ac =
        unix_path ? redisAsyncConnectUnix(unix_path) : redisAsyncConnect(host, port);
    if (!ac) {
        strata_free(l);
        return NULL;
    }
    r->handles_open++;
    if (ac->err || ac->c.fd < 0 || uv_poll_init(r->loop, &l->poll, ac->c.fd) != 0) {
        /* Immediate failure (bad address, ENOENT socket): hooks are not set, so
         * hiredis will not call ev_cleanup; the caller sees NULL and backs off. */
        redisAsyncFree(ac);
        r->handles_open--;
        strata_free(l);
        return NULL;
    }
    l->poll_init = true;
    l->poll.data = l;
    l->ac = ac;
    ac->data = l;
    ac->ev.data = l;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetConnectCallback(ac, on_connect); /* also arms the write watcher */
    r->nlinks_made++;
    return l;
}

/* ---- nodes ---------------------------------------------------------------------- */

static void node_on_ready(rlink *l);
static void node_on_dead(rlink *l);
static const link_ops node_link_ops = {node_on_ready, node_on_dead};

rnode *redis__node_get(strata_redis *r, const char *host, uint16_t port, const char *unix_path) {
    char addr[300];
    if (unix_path)
        snprintf(addr, sizeof(addr), "%s", unix_path);
    else
        snprintf(addr, sizeof(addr), "%s:%u", host, port);
    for (rnode *n = r->nodes; n; n = n->next)
        if (strcmp(n->addr, addr) == 0)
            return n;
    rnode *n = strata_calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->r = r;
    n->port = port;
    n->npipes = r->o.conns_per_node;
    n->pipes = strata_calloc(n->npipes, sizeof(*n->pipes));
    n->host = host ? strata_strdup(host) : NULL;
    n->unix_path = unix_path ? strata_strdup(unix_path) : NULL;
    if (!n->pipes || (host && !n->host) || (unix_path && !n->unix_path)) {
        strata_free(n->pipes);
        strata_free(n->host);
        strata_free(n->unix_path);
        strata_free(n);
        return NULL;
    }
    memcpy(n->addr, addr, sizeof(addr));
    n->hs_flags = HS_AUTH;
    if (r->url.mode != STRATA_REDIS_CLUSTER)
        n->hs_flags |= HS_SELECT;
    if (r->url.mode == STRATA_REDIS_SENTINEL)
        n->hs_flags |= HS_ROLE_MASTER;
    n->next = r->nodes;
    r->nodes = n;
    return n;
}

static bool node_connecting(const rnode *n) {
    for (uint32_t i = 0; i < n->npipes; i++)
        if (n->pipes[i] && n->pipes[i]->state < LS_READY)
            return true;
    return false;
}

/* Opens the missing pipelined links if the backoff allows. */
static void node_connect(rnode *n) {
    strata_redis *r = n->r;
    if (r->destroying || redis__now(r) < n->next_connect_ms)
        return;
    for (uint32_t i = 0; i < n->npipes; i++) {
        if (n->pipes[i])
            continue;
        rlink *l = redis__link_open(r, n->host, n->port, n->unix_path, LK_PIPE, n->hs_flags,
                                    &node_link_ops, n);
        if (!l) {
            n->fails++;
            uint64_t b = (uint64_t)r->o.reconnect_min_ms << (n->fails < 16 ? n->fails : 16);
            if (b > r->o.reconnect_max_ms)
                b = r->o.reconnect_max_ms;
            n->next_connect_ms = redis__now(r) + b;
            n->last_error = STRATA_EUNAVAIL;
            return;
        }
        l->index = (int)i;
        n->pipes[i] = l;
    }
}

void redis__cb_aux(redisAsyncContext *ac, void *reply, void *priv);
void redis__cb_main(redisAsyncContext *ac, void *reply, void *priv);
void redis__cb_wait(redisAsyncContext *ac, void *reply, void *priv);

/* Writes q on link l (which must be usable). */
static void link_send(rlink *l, rreq *q) {
    redisAsyncContext *ac = l->ac;
    size_t before = sdslen(ac->c.obuf);
    q->cbs_pending = 0;
    q->dead = false;
    q->wait_short = false;
    if (q->rq & RQ_ASKING) {
        redisAsyncCommand(ac, redis__cb_aux, q, "ASKING");
        q->cbs_pending++;
        q->rq &= ~RQ_ASKING;
    }
    if ((q->rq & RQ_LOAD) && q->script) {
        redisAsyncCommand(ac, redis__cb_aux, q, "SCRIPT LOAD %b", q->script->src, q->script->len);
        q->cbs_pending++;
        q->rq &= ~RQ_LOAD;
    }
    redisAsyncFormattedCommand(ac, redis__cb_main, q, q->cmd, q->cmdlen);
    q->cbs_pending++;
    l->appended += sdslen(ac->c.obuf) - before;
    q->end_off = l->appended;
    if (q->wait_n > 0) {
        size_t b2 = sdslen(ac->c.obuf);
        redisAsyncCommand(ac, redis__cb_wait, q, "WAIT %d %u", q->wait_n, q->wait_ms);
        q->cbs_pending++;
        l->appended += sdslen(ac->c.obuf) - b2;
    }
    q->link = l;
    q->where = WQ_LINK;
    redis__list_push(&l->inflight, q);
    if (q->deadline < l->min_deadline)
        l->min_deadline = q->deadline;
}

static rlink *node_idle_dedicated(rnode *n) {
    for (rlink *l = n->dedicated; l; l = l->next)
        if (!l->busy && link_usable(l))
            return l;
    return NULL;
}

static void dedicated_open(rnode *n) {
    strata_redis *r = n->r;
    if (n->ndedicated >= r->o.max_blocking_conns || redis__now(r) < n->next_connect_ms)
        return;
    rlink *l = redis__link_open(r, n->host, n->port, n->unix_path, LK_DEDICATED, n->hs_flags,
                                &node_link_ops, n);
    if (!l) {
        n->fails++;
        n->next_connect_ms = redis__now(r) + r->o.reconnect_min_ms;
        return;
    }
    l->next = n->dedicated;
    if (n->dedicated)
        n->dedicated->prev = l;
    n->dedicated = l;
    n->ndedicated++;
}

static void node_dispatch(rnode *n) {
    while (n->queue.head) {
        rreq *q = n->queue.head;
        rlink *l = n->pipes[q->keyhash % n->npipes];
        if (!link_usable(l)) {
            l = NULL;
            for (uint32_t i = 0; i < n->npipes && !l; i++)
                if (link_usable(n->pipes[i]))
                    l = n->pipes[i];
        }
        if (!l)
            break;
        redis__list_pop(&n->queue);
        link_send(l, q);
    }
    while (n->dqueue.head) {
        rlink *l = node_idle_dedicated(n);
        if (!l)
            break;
        rreq *q = redis__list_pop(&n->dqueue);
        l->busy = true;
        link_send(l, q);
    }
    if (n->queue.n > 0)
        node_connect(n);
    if (n->dqueue.n > 0 && !node_idle_dedicated(n)) {
        bool pending = false;
        for (rlink *l = n->dedicated; l; l = l->next)
            if (l->state < LS_READY)
                pending = true;
        if (!pending)
            dedicated_open(n);
    }
}

/* Queues or sends q on node n.  Returns STRATA_OK or EUNAVAIL (node down, queue full). */
static int node_submit(rnode *n, rreq *q) {
    strata_redis *r = n->r;
    bool dedicated = (q->flags & STRATA_REDIS_DEDICATED) || q->wait_n > 0;
    if (dedicated) {
        rlink *l = node_idle_dedicated(n);
        if (l && n->dqueue.n == 0) {
            l->busy = true;
            link_send(l, q);
            return STRATA_OK;
        }
        if (n->dqueue.n >= r->o.max_queued)
            return STRATA_EUNAVAIL;
        q->where = WQ_DNODE;
        redis__list_push(&n->dqueue, q);
        node_dispatch(n);
        return STRATA_OK;
    }
    rlink *l = n->pipes[q->keyhash % n->npipes];
    if (link_usable(l) && n->queue.n == 0) {
        link_send(l, q);
        return STRATA_OK;
    }
    /* Fail fast when the node is known down and no attempt is under way. */
    if (n->fails >= 2 && !node_connecting(n) && redis__now(r) < n->next_connect_ms &&
        r->url.mode == STRATA_REDIS_STANDALONE)
        return n->last_error == STRATA_EAUTH ? STRATA_EAUTH : STRATA_EUNAVAIL;
    if (n->queue.n >= r->o.max_queued)
        return STRATA_EUNAVAIL;
    q->where = WQ_NODE;
    redis__list_push(&n->queue, q);
    node_dispatch(n);
    return STRATA_OK;
}

static void node_on_ready(rlink *l) {
    rnode *n = l->owner;
    strata_redis *r = n->r;
    n->fails = 0;
    n->last_error = 0;
    n->next_connect_ms = 0;
    if (r->url.mode == STRATA_REDIS_SENTINEL && r->master == n)
        snprintf(r->master_addr, sizeof(r->master_addr), "%s", n->addr);
    node_dispatch(n);
}

/* Fails (or re-routes) every request queued on n with status st. */
static void node_fail_queue(rnode *n, rlist *lst, int st) {
    rreq *q;
    while ((q = redis__list_pop(lst)) != NULL) {
        q->where = WQ_NONE;
        req_complete(q, st, NULL);
    }
    (void)n;
}

static void node_on_dead(rlink *l) {
    rnode *n = l->owner;
    strata_redis *r = n->r;
    if (l->kind == LK_PIPE) {
        if (l->index >= 0 && (uint32_t)l->index < n->npipes && n->pipes[l->index] == l)
            n->pipes[l->index] = NULL;
    } else {
        if (l->prev)
            l->prev->next = l->next;
        else if (n->dedicated == l)
            n->dedicated = l->next;
        if (l->next)
            l->next->prev = l->prev;
        n->ndedicated--;
    }
    if (r->destroying)
        return;
    if (l->was_ready) {
        r->stats.reconnects++;
        ctr(r->m.reconnects);
        n->next_connect_ms = redis__now(r); /* reconnect at once, once */
    } else {
        n->fails++;
        uint64_t b = (uint64_t)r->o.reconnect_min_ms << (n->fails < 16 ? n->fails : 16);
        if (b > r->o.reconnect_max_ms)
            b = r->o.reconnect_max_ms;
        n->next_connect_ms = redis__now(r) + b;
        n->last_error = l->hs_error ? l->hs_error : STRATA_EUNAVAIL;
    }
    if (l->hs_error == STRATA_EAUTH || l->hs_error == STRATA_EPERM) {
        /* Wrong credentials will not heal by waiting: fail what waits. */
        node_fail_queue(n, &n->queue, l->hs_error);
        node_fail_queue(n, &n->dqueue, l->hs_error);
    }
    if (r->url.mode == STRATA_REDIS_SENTINEL && (l->hs_error == STRATA_ERETRY || !l->was_ready) &&
        r->master == n) {
        /* The node we were told is master is not: ask the sentinels again,
         * and let what waits here be routed to the next master. */
        redis__set_master(r, NULL);
        redis__sentinel_discover(r);
    }
    if (r->url.mode == STRATA_REDIS_CLUSTER)
        redis__cluster_refresh(r);
    if (l->kind == LK_PIPE && n->queue.n > 0 && redis__now(r) >= n->next_connect_ms)
        node_connect(n);
}

void redis__node_close_links(rnode *n) {
    for (uint32_t i = 0; i < n->npipes; i++)
        redis__link_close(n->pipes[i]);
    rlink *l = n->dedicated;
    while (l) {
        rlink *next = l->next;
        redis__link_close(l);
        l = next;
    }
}

/* ---- routing -------------------------------------------------------------------- */

static rnode *route_node(strata_redis *r, rreq *q) {
    if (q->ask_node)
        return q->ask_node;
    if (q->fixed_node)
        return q->fixed_node;
    switch (r->url.mode) {
    case STRATA_REDIS_STANDALONE:
    case STRATA_REDIS_SENTINEL: return r->master;
    case STRATA_REDIS_CLUSTER: return redis__cluster_route(r, q->slot);
    }
    return NULL;
}

/* Routes q (in no list); on failure completes it. */
void redis__reroute(rreq *q) {
    strata_redis *r = q->r;
    q->link = NULL;
    q->where = WQ_NONE;
    if (r->destroying) {
        req_complete(q, STRATA_ECANCELED, NULL);
        return;
    }
    if (redis__now(r) >= q->deadline) {
        r->stats.timeouts++;
        ctr(r->m.timeouts);
        req_complete(q, q->last_status ? q->last_status : STRATA_EUNAVAIL, q->stash);
        return;
    }
    rnode *n = route_node(r, q);
    if (q->ask_node) {
        q->rq |= RQ_ASKING;
        q->ask_node = NULL;
    }
    if (!n) {
        q->where = WQ_UNROUTED;
        redis__list_push(&r->unrouted, q);
        redis__tick_ref(r);
        return;
    }
    int rc = node_submit(n, q);
    if (rc < 0)
        req_complete(q, rc, NULL);
}

void redis__reroute_list(strata_redis *r, rlist *l) {
    rlist tmp = *l;
    memset(l, 0, sizeof(*l));
    rreq *q;
    while ((q = redis__list_pop(&tmp)) != NULL)
        redis__reroute(q);
    (void)r;
}

void redis__set_master(strata_redis *r, rnode *n) {
    rnode *old = r->master;
    if (old == n)
        return;
    r->master = n;
    if (n) {
        snprintf(r->master_addr, sizeof(r->master_addr), "%s", n->addr);
        /* Counted against the last master known, not the current one: a dead master is
         * often dropped (NULL) before the sentinels name its successor. */
        if (r->last_master[0] && strcmp(r->last_master, n->addr) != 0) {
            r->stats.failovers++;
            if (r->m.failovers)
                strata_counter_inc(r->m.failovers);
        }
        snprintf(r->last_master, sizeof(r->last_master), "%s", n->addr);
    } else {
        r->master_addr[0] = '\0';
    }
    if (old) {
        old->retired = true;
        /* Queued requests go to the new master; in-flight ones finish on the
         * old links or fail as unknown when those close. */
        redis__reroute_list(r, &old->queue);
        redis__reroute_list(r, &old->dqueue);
        redis__node_close_links(old);
        redis__tracking_node_gone(r, old);
    }
    if (n) {
        n->retired = false;
        redis__reroute_list(r, &r->unrouted);
    }
}

/* Delays a retry of q by a doubling backoff (in no list). */
static void req_delay(rreq *q, int status) {
    strata_redis *r = q->r;
    q->last_status = status;
    uint64_t d = 10ull << (q->retries < 8 ? q->retries : 8);
    q->retry_at = redis__now(r) + d;
    q->where = WQ_DELAYED;
    redis__list_push(&r->delayed, q);
    redis__tick_ref(r);
}

/* ---- reply handling ---------------------------------------------------------------- */

static bool req_was_sent(rreq *q, redisAsyncContext *ac) {
    rlink *l = q->link;
    uint64_t written = l->appended - sdslen(ac->c.obuf);
    return written >= q->end_off;
}

/* The last hiredis callback of q ran: decide its fate. */
static void req_settle(rreq *q, redisAsyncContext *ac, const redisReply *rep) {
    strata_redis *r = q->r;
    rlink *l = q->link;
    redis__list_remove(&l->inflight, q);
    q->where = WQ_NONE;
    if (l->kind == LK_DEDICATED) {
        l->busy = false;
        if (l->state == LS_READY)
            node_dispatch((rnode *)l->owner);
    }
    if (!rep || q->dead) {
        /* The link died under this request. */
        if (l->state == LS_READY)
            l->state = LS_CLOSING;
        if (req_was_sent(q, ac) || q->stash) {
            req_complete(q, STRATA_EUNKNOWN, NULL);
        } else {
            q->link = NULL;
            if (q->rq & RQ_LOADED)
                q->rq |= RQ_LOAD; /* the new connection may be to a node without it */
            redis__reroute(q);
        }
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        int st = redis__map_error(rep->str, rep->len);
        bool cluster = r->url.mode == STRATA_REDIS_CLUSTER;
        if (cluster && (err_is(rep, "MOVED") || err_is(rep, "ASK"))) {
            /* "MOVED 3999 127.0.0.1:6381" */
            bool ask = rep->str[0] == 'A';
            const char *sp1 = memchr(rep->str, ' ', rep->len);
            const char *sp2 =
                sp1 ? memchr(sp1 + 1, ' ', rep->len - (size_t)(sp1 + 1 - rep->str)) : NULL;
            if (sp2 && q->retries < (int)r->o.max_retries * 2) {
                int slot = atoi(sp1 + 1);
                const char *addr = sp2 + 1;
                size_t alen = rep->len - (size_t)(addr - rep->str);
                q->retries++;
                if (ask) {
                    r->stats.ask++;
                    ctr(r->m.ask);
                    q->ask_node = redis__cluster_node_for_addr(r, addr, alen);
                } else {
                    r->stats.moved++;
                    ctr(r->m.moved);
                    if (slot >= 0 && slot < REDIS_NSLOTS)
                        redis__cluster_moved(r, slot, addr, alen);
                }
                q->link = NULL;
                redis__reroute(q);
                return;
            }
        }
        if (err_is(rep, "NOSCRIPT") && q->script && !(q->rq & RQ_LOADED)) {
            q->rq |= RQ_LOAD | RQ_LOADED;
            r->stats.retries++;
            ctr(r->m.retries);
            q->link = NULL;
            redis__reroute(q);
            return;
        }
        if (st == STRATA_ERETRY && !err_is(rep, "BUSY") && !(q->flags & STRATA_REDIS_NO_RETRY) &&
            q->retries < (int)r->o.max_retries) {
            q->retries++;
            r->stats.retries++;
            ctr(r->m.retries);
            if (r->url.mode == STRATA_REDIS_SENTINEL &&
                (err_is(rep, "READONLY") || err_is(rep, "MASTERDOWN"))) {
                /* Talking to a demoted master: drop it and ask the sentinels. */
                if (l->owner == r->master && l->kind != LK_CONTROL) {
                    redis__set_master(r, NULL);
                    redis__sentinel_discover(r);
                }
            }
            if (cluster)
                redis__cluster_refresh(r);
            strata_redis_reply_free(q->stash);
            q->stash = strata_redis_reply_dup((const strata_redis_reply *)rep);
            q->link = NULL;
            req_delay(q, STRATA_ERETRY);
            return;
        }
        req_complete(q, st, (const strata_redis_reply *)rep);
        return;
    }
    if (q->wait_short) {
        req_complete(q, STRATA_EUNKNOWN, (const strata_redis_reply *)rep);
        return;
    }
    req_complete(q, STRATA_OK, (const strata_redis_reply *)rep);
}

void redis__cb_aux(redisAsyncContext *ac, void *reply, void *priv) {
    rreq *q = priv;
    (void)ac;
    q->cbs_pending--;
    if (!reply)
        q->dead = true;
}

void redis__cb_main(redisAsyncContext *ac, void *reply, void *priv) {
    rreq *q = priv;
    q->cbs_pending--;
    if (!reply)
        q->dead = true;
    if (q->cbs_pending == 0) {
        req_settle(q, ac, q->dead ? NULL : reply);
        return;
    }
    /* WAIT follows: keep the reply (and remember it was sent: it answered). */
    if (reply) {
        q->stash = strata_redis_reply_dup(reply);
        if (!q->stash)
            q->dead = true;
    }
}

void redis__cb_wait(redisAsyncContext *ac, void *reply, void *priv) {
    rreq *q = priv;
    redisReply *rep = reply;
    q->cbs_pending--;
    if (!rep) {
        /* The command ran (it answered) but WAIT did not: unknown. */
        if (q->stash) {
            strata_redis_reply *s = q->stash;
            q->stash = NULL;
            rlink *l = q->link;
            redis__list_remove(&l->inflight, q);
            if (l->kind == LK_DEDICATED)
                l->busy = false;
            q->where = WQ_NONE;
            req_complete(q, STRATA_EUNKNOWN, s);
            strata_redis_reply_free(s);
            return;
        }
        q->dead = true;
        req_settle(q, ac, NULL);
        return;
    }
    if (rep->type != REDIS_REPLY_INTEGER || rep->integer < q->wait_n)
        q->wait_short = true;
    strata_redis_reply *s = q->stash;
    q->stash = NULL;
    if (!s) {
        req_settle(q, ac, NULL);
        return;
    }
    if (s->type == STRATA_REPLY_ERROR)
        q->wait_short = false; /* the command failed; report its error */
    req_settle(q, ac, (const redisReply *)s);
    strata_redis_reply_free(s);
}

/* ---- the tick: deadlines, reconnects, delayed retries ------------------------------------ */

static void expire_list(strata_redis *r, rlist *l, uint64_t now, int st) {
    rreq *q = l->head;
    while (q) {
        rreq *next = q->next;
        if (now >= q->deadline) {
            redis__list_remove(l, q);
            q->where = WQ_NONE;
            r->stats.timeouts++;
            ctr(r->m.timeouts);
            strata_redis_reply *s = q->stash;
            q->stash = NULL;
            req_complete(q, q->last_status ? q->last_status : st, s);
            strata_redis_reply_free(s);
        }
        q = next;
    }
}

static void link_check_deadlines(rlink *l, uint64_t now) {
    if (!l || !l->ac)
        return;
    if (l->state < LS_READY) {
        if (now >= l->deadline) {
            l->hs_error = l->hs_error ? l->hs_error : STRATA_EUNAVAIL;
            redis__link_close(l);
        }
        return;
    }
    if (now < l->min_deadline)
        return;
    uint64_t min = UINT64_MAX;
    for (rreq *q = l->inflight.head; q; q = q->next) {
        if (now >= q->deadline) {
            l->r->stats.timeouts++;
            ctr(l->r->m.timeouts);
            redis__link_close(l);
            return;
        }
        if (q->deadline < min)
            min = q->deadline;
    }
    l->min_deadline = min;
}

static void on_tick(uv_timer_t *t) {
    strata_redis *r = t->data;
    uint64_t now = redis__now(r);
    for (rnode *n = r->nodes; n; n = n->next) {
        for (uint32_t i = 0; i < n->npipes; i++)
            link_check_deadlines(n->pipes[i], now);
        for (rlink *l = n->dedicated; l;) {
            rlink *next = l->next;
            link_check_deadlines(l, now);
            l = next;
        }
        expire_list(r, &n->queue, now, STRATA_EUNAVAIL);
        expire_list(r, &n->dqueue, now, STRATA_EUNAVAIL);
        if (n->queue.n > 0 || n->dqueue.n > 0)
            node_dispatch(n);
    }
    expire_list(r, &r->unrouted, now, STRATA_EUNAVAIL);
    /* delayed retries that are due */
    rreq *q = r->delayed.head;
    while (q) {
        rreq *next = q->next;
        if (now >= q->retry_at || now >= q->deadline) {
            redis__list_remove(&r->delayed, q);
            redis__reroute(q);
        }
        q = next;
    }
    if (r->sen)
        redis__sentinel_tick(r, now);
    if (r->cl)
        redis__cluster_tick(r, now);
    if (r->trk)
        redis__tracking_tick(r, now);
    redis__tick_ref(r);
}

/* ---- create / destroy ------------------------------------------------------------------- */

void strata_redis_options_init(strata_redis_options *o) {
    memset(o, 0, sizeof(*o));
    o->connect_timeout_ms = 1000;
    o->command_timeout_ms = 1000;
    o->conns_per_node = 1;
    o->max_blocking_conns = 16;
    o->reconnect_min_ms = 20;
    o->reconnect_max_ms = 1000;
    o->max_retries = 5;
    o->max_queued = 100000;
    o->tick_ms = 5;
    o->refresh_min_ms = 100;
}

static void register_metrics(strata_redis *r) {
    strata_metrics *m = r->o.metrics;
    const char *lb = r->o.metrics_labels;
    if (!m)
        return;
#define C(field, name, help) r->m.field = strata_metrics_counter(m, name, help, lb)
    C(commands, "strata_redis_commands_total", "Redis calls completed");
    C(unknown, "strata_redis_unknown_total", "Redis calls whose outcome is unknown");
    C(unavail, "strata_redis_unavailable_total", "Redis calls never sent (no connection)");
    C(timeouts, "strata_redis_timeouts_total", "Redis deadlines passed");
    C(retries, "strata_redis_retries_total", "Redis calls re-sent after a refusal or NOSCRIPT");
    C(moved, "strata_redis_moved_total", "Cluster MOVED redirects followed");
    C(ask, "strata_redis_ask_total", "Cluster ASK redirects followed");
    C(reconnects, "strata_redis_reconnects_total", "Redis connections lost and re-opened");
    C(failovers, "strata_redis_topology_changes_total", "Sentinel master changes / slot map loads");
    C(invalidations, "strata_redis_invalidations_total", "tracked keys invalidated");
    C(flushes, "strata_redis_tracking_flushes_total", "L1 flushes caused by tracking gaps");
    C(errors, "strata_redis_errors_total", "Redis calls completed with an error");
#undef C
    r->m.latency = strata_metrics_histogram(m, "strata_redis_command_duration_seconds",
                                            "Redis call latency", lb, STRATA_HIST_NS);
}

static void tick_close_cb(uv_handle_t *h) { handle_closed(h->data); }

int strata_redis_create(strata_redis **out, uv_loop_t *loop, const char *url,
                        const strata_redis_options *opts, strata_buf *err) {
    if (!out || !loop)
        return STRATA_EINVAL;
    *out = NULL;
    strata_redis *r = strata_calloc(1, sizeof(*r));
    if (!r)
        return STRATA_ENOMEM;
    if (opts)
        r->o = *opts;
    else
        strata_redis_options_init(&r->o);
    strata_redis_options o0;
    strata_redis_options_init(&o0);
    if (r->o.conns_per_node == 0 || r->o.conns_per_node > 64 || r->o.tick_ms == 0 ||
        r->o.tick_ms > 1000 || r->o.command_timeout_ms == 0 || r->o.connect_timeout_ms == 0 ||
        r->o.max_queued == 0) {
        if (err)
            strata_buf_puts(err, "bad redis options: conns_per_node 1..64, tick_ms 1..1000, "
                                 "timeouts and max_queued > 0");
        strata_free(r);
        return STRATA_EINVAL;
    }
    if (r->o.reconnect_min_ms == 0)
        r->o.reconnect_min_ms = o0.reconnect_min_ms;
    if (r->o.reconnect_max_ms < r->o.reconnect_min_ms)
        r->o.reconnect_max_ms = r->o.reconnect_min_ms;
    if (r->o.max_blocking_conns == 0)
        r->o.max_blocking_conns = 1;
    int rc = strata_redis_url_parse(url, &r->url, err);
    if (rc < 0) {
        strata_free(r);
        return rc;
    }
    r->loop = loop;
    if (uv_timer_init(loop, &r->tick) != 0) {
        strata_redis_url_free(&r->url);
        strata_free(r);
        return STRATA_ESYS;
    }
    r->tick.data = r;
    r->handles_open = 1;
    uv_timer_start(&r->tick, on_tick, r->o.tick_ms, r->o.tick_ms);
    uv_unref((uv_handle_t *)&r->tick);
    if (uv_prepare_init(loop, &r->prep) != 0) {
        strata_redis_url_free(&r->url);
        r->destroying = true;
        uv_close((uv_handle_t *)&r->tick, tick_close_cb);
        return STRATA_ESYS;
    }
    r->prep.data = r;
    r->handles_open++;
    uv_prepare_start(&r->prep, on_prepare);
    uv_unref((uv_handle_t *)&r->prep); /* never keeps the loop alive by itself */
    register_metrics(r);
    switch (r->url.mode) {
    case STRATA_REDIS_STANDALONE:
        r->master = redis__node_get(r, r->url.unix_path ? NULL : r->url.hosts[0].host,
                                    r->url.unix_path ? 0 : r->url.hosts[0].port, r->url.unix_path);
        if (!r->master)
            rc = STRATA_ENOMEM;
        else
            snprintf(r->master_addr, sizeof(r->master_addr), "%s", r->master->addr);
        break;
    case STRATA_REDIS_SENTINEL: rc = redis__sentinel_start(r); break;
    case STRATA_REDIS_CLUSTER: rc = redis__cluster_start(r); break;
    }
    if (rc < 0) {
        strata_redis_destroy(&r);
        return rc;
    }
    *out = r;
    return STRATA_OK;
}

void strata_redis_destroy(strata_redis **rp) {
    if (!rp || !*rp)
        return;
    strata_redis *r = *rp;
    *rp = NULL;
    r->destroying = true;
    redis__tracking_destroy(r);
    redis__sentinel_destroy(r);
    /* Close every link: their callbacks complete in-flight requests. */
    for (rnode *n = r->nodes; n; n = n->next)
        redis__node_close_links(n);
    for (rnode *n = r->nodes; n; n = n->next) {
        node_fail_queue(n, &n->queue, STRATA_ECANCELED);
        node_fail_queue(n, &n->dqueue, STRATA_ECANCELED);
    }
    node_fail_queue(NULL, &r->unrouted, STRATA_ECANCELED);
    rreq *q;
    while ((q = redis__list_pop(&r->delayed)) != NULL) {
        q->where = WQ_NONE;
        req_complete(q, STRATA_ECANCELED, NULL);
    }
    redis__cluster_destroy(r);
    rnode *n = r->nodes;
    while (n) {
        rnode *next = n->next;
        strata_free(n->pipes);
        strata_free(n->host);
        strata_free(n->unix_path);
        strata_free(n);
        n = next;
    }
    r->nodes = NULL;
    strata_redis_url_free(&r->url);
    uv_timer_stop(&r->tick);
    uv_close((uv_handle_t *)&r->tick, tick_close_cb);
    uv_prepare_stop(&r->prep);
    uv_close((uv_handle_t *)&r->prep, tick_close_cb);
}

strata_redis_mode strata_redis_get_mode(const strata_redis *r) { return r->url.mode; }
uv_loop_t *strata_redis_loop(const strata_redis *r) { return r->loop; }
const char *strata_redis_master_addr(const strata_redis *r) { return r->master_addr; }

void strata_redis_get_stats(const strata_redis *r, strata_redis_stats *out) { *out = r->stats; }

/* ---- submitting ---------------------------------------------------------------------------- */

static uint32_t fnv1a(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* Submits q (its command formatted); frees it on error. */
static int submit_req(strata_redis *r, const strata_redis_call *call, strata_redis_cb cb, void *ud,
                      rreq *q, const strata_redis_script *script) {
    static const strata_redis_call defaults;
    if (!call)
        call = &defaults;
    const char *cmd = q->cmd;
    size_t len = q->cmdlen;
    q->cb = cb;
    q->ud = ud;
    q->script = script;
    q->flags = call->flags;
    if (call->wait_replicas > 0) {
        q->wait_n = call->wait_replicas;
        q->wait_ms = call->wait_timeout_ms ? call->wait_timeout_ms : 100;
    }
    /* Callers outside a loop callback would see a stale uv_now(); libuv's
     * refresh is a coarse-clock read, cheap enough for every call. */
    uv_update_time(r->loop);
    uint32_t t = call->timeout_ms ? call->timeout_ms : r->o.command_timeout_ms;
    q->deadline = redis__now(r) + t + (q->wait_n > 0 ? q->wait_ms : 0);
    if (r->m.latency)
        q->start_ns = uv_hrtime();
    if (call->route_key) {
        q->slot = (int)strata_redis_key_slot(call->route_key, call->route_keylen);
        q->keyhash = fnv1a(call->route_key, call->route_keylen);
    } else if (r->url.mode == STRATA_REDIS_CLUSTER || r->o.conns_per_node > 1) {
        int s = redis__cmd_slot(cmd, len, &q->keyhash);
        if (s == STRATA_ECROSSSLOT || s == STRATA_EINVAL) {
            req_free(q);
            return s;
        }
        q->slot = s;
    }
    rnode *n = route_node(r, q);
    r->outstanding++;
    if (!n) {
        if (r->url.mode == STRATA_REDIS_CLUSTER)
            redis__cluster_refresh(r);
        q->where = WQ_UNROUTED;
        redis__list_push(&r->unrouted, q);
        redis__tick_ref(r);
        return STRATA_OK;
    }
    int rc = node_submit(n, q);
    if (rc < 0) {
        r->outstanding--;
        req_free(q);
        if (rc == STRATA_EUNAVAIL) {
            r->stats.unavail++; /* refused at once: counted like a completion */
            ctr(r->m.unavail);
        }
        return rc;
    }
    redis__tick_ref(r);
    return STRATA_OK;
}

int redis__submit_formatted(strata_redis *r, const strata_redis_call *call, strata_redis_cb cb,
                            void *ud, char *cmd, size_t len, const strata_redis_script *script) {
    if (r->destroying) {
        strata_free(cmd);
        return STRATA_ECLOSED;
    }
    rreq *q = req_new(r, 0);
    if (!q) {
        strata_free(cmd);
        return STRATA_ENOMEM;
    }
    q->cmd = cmd; /* owned */
    q->cmdlen = len;
    return submit_req(r, call, cb, ud, q, script);
}

int redis__submit_argv(strata_redis *r, const strata_redis_call *call, strata_redis_cb cb, void *ud,
                       int argc, const char *const *argv, const size_t *argvlen,
                       const strata_redis_script *script) {
    if (r->destroying)
        return STRATA_ECLOSED;
    size_t need = resp_size(argc, argv, argvlen) + 1;
    rreq *q = req_new(r, need);
    if (!q)
        return STRATA_ENOMEM;
    q->cmdlen = resp_write(q->cmd, argc, argv, argvlen);
    return submit_req(r, call, cb, ud, q, script);
}

int strata_redis_command_argv(strata_redis *r, const strata_redis_call *call, strata_redis_cb cb,
                              void *ud, int argc, const char *const *argv, const size_t *argvlen) {
    if (!r || argc <= 0 || !argv)
        return STRATA_EINVAL;
    for (int i = 0; i < argc; i++)
        if (!argv[i])
            return STRATA_EINVAL;
    return redis__submit_argv(r, call, cb, ud, argc, argv, argvlen, NULL);
}

int strata_redis_command(strata_redis *r, const strata_redis_call *call, strata_redis_cb cb,
                         void *ud, const char *fmt, ...) {
    if (!r || !fmt)
        return STRATA_EINVAL;
    char *hcmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&hcmd, fmt, ap);
    va_end(ap);
    if (len <= 0 || !hcmd)
        return len == -2 ? STRATA_ENOMEM : STRATA_EINVAL;
    char *cmd = strata_malloc((size_t)len + 1);
    if (!cmd) {
        redisFreeCommand(hcmd);
        return STRATA_ENOMEM;
    }
    memcpy(cmd, hcmd, (size_t)len + 1);
    redisFreeCommand(hcmd);
    return redis__submit_formatted(r, call, cb, ud, cmd, (size_t)len, NULL);
}

int redis__internal(strata_redis *r, rnode *node, strata_redis_cb cb, void *ud, int argc,
                    const char *const *argv, const size_t *argvlen) {
    rreq *q = req_new(r, resp_size(argc, argv, argvlen) + 1);
    if (!q)
        return STRATA_ENOMEM;
    q->cmdlen = resp_write(q->cmd, argc, argv, argvlen);
    q->cb = cb;
    q->ud = ud;
    q->rq = RQ_INTERNAL;
    q->fixed_node = node;
    q->flags = STRATA_REDIS_NO_RETRY;
    uv_update_time(r->loop);
    q->deadline = redis__now(r) + r->o.command_timeout_ms;
    r->outstanding++;
    redis__reroute(q);
    return STRATA_OK;
}
