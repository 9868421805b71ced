/*
 * redis_priv.h: internals shared by the files of src/lib/redis/.
 *
 * Objects (see redis_client.c for the essay):
 *
 *   strata_redis   one per uv loop; owns nodes, a tick timer, the unrouted
 *                  and delayed queues, and the Sentinel/Cluster/tracking state.
 *   rnode          one Redis data node (host:port or unix path): a fixed set
 *                  of pipelined links, a pool of dedicated links, and the
 *                  queue of requests waiting for a link.
 *   rlink          one hiredis async connection on the loop (our own libuv
 *                  hooks), with the FIFO of requests written to it and the
 *                  byte counter that tells "sent" from "never sent".
 *   rreq           one call: its formatted command (kept for re-sends), its
 *                  deadline, callback and retry state.
 */
#ifndef STRATA_REDIS_PRIV_H
#define STRATA_REDIS_PRIV_H

#include <stdbool.h>
#include <stdint.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "strata/metrics.h"
#include "strata/redis.h"

#define REDIS_NSLOTS 16384
/* Bytes of RESP kept inside a request before it takes a heap buffer. */
#define REQ_INLINE 96
/* Recycled requests kept per client (a freelist; the rest go back to malloc). */
#define REQ_FREE_MAX 4096

typedef struct rreq rreq;
typedef struct rlink rlink;
typedef struct rnode rnode;

/* An intrusive doubly linked FIFO of requests. */
typedef struct rlist {
    rreq *head, *tail;
    size_t n;
} rlist;

enum link_state { LS_CONNECTING, LS_HANDSHAKE, LS_READY, LS_CLOSING, LS_CLOSED };
enum link_kind { LK_PIPE, LK_DEDICATED, LK_CONTROL };

/* Handshake steps a link runs after connecting, before it is READY. */
enum {
    HS_AUTH = 1u << 0,        /* AUTH [user] password, if the URL has one */
    HS_SELECT = 1u << 1,      /* SELECT db, if db != 0 */
    HS_ROLE_MASTER = 1u << 2, /* ROLE must say "master" (Sentinel data nodes) */
};

typedef struct link_ops {
    void (*on_ready)(rlink *l);
    void (*on_dead)(rlink *l); /* after every pending callback ran; l->ac is NULL */
} link_ops;

struct rlink {
    uv_poll_t poll;
    strata_redis *r;
    redisAsyncContext *ac; /* NULL once hiredis freed it */
    const link_ops *ops;
    void *owner; /* rnode for data links; the module's state for control links */
    int kind, state, events;
    unsigned hs_flags;
    int hs_left;
    int hs_error; /* status of a failed handshake (EAUTH, ERETRY...) */
    bool was_ready;
    bool poll_init;
    uint64_t appended;     /* bytes ever appended to hiredis' output buffer */
    uint64_t deadline;     /* connect + handshake deadline (loop ms) */
    uint64_t min_deadline; /* no inflight request expires before this */
    rlist inflight;        /* requests written here, in order */
    rlink *next, *prev;    /* in the node's dedicated list or a module list */
    int index;             /* pipe slot or sentinel index */
    bool busy;             /* dedicated: one call in progress */
    long long client_id;
    /* Deferred writes (see "Writes" in redis_client.c): hiredis asked to write
     * and we hold the write until the loop's prepare phase or the end of the
     * read batch, so many calls leave in one write(2) with no epoll change. */
    rlink *wnext, *wprev; /* in strata_redis.wq while wqueued */
    bool wqueued;
    bool in_flush; /* inside our redisAsyncHandleWrite: addWrite arms the poll */
};

struct rnode {
    strata_redis *r;
    char *host;
    uint16_t port;
    char *unix_path;
    char addr[300]; /* "host:port" or the unix path */
    rlink **pipes;
    uint32_t npipes, rr;
    rlink *dedicated; /* list of dedicated links */
    uint32_t ndedicated;
    rlist queue;  /* waiting for a pipelined link */
    rlist dqueue; /* waiting for a dedicated link */
    uint64_t next_connect_ms;
    uint32_t fails;    /* consecutive failed connects */
    int last_error;    /* status that made the last link fail (EAUTH ...) */
    unsigned hs_flags; /* handshake for its data links */
    bool retired;      /* no longer a master (Sentinel switch) */
    int nslots;        /* Cluster: slots owned in the current map */
    rnode *next;
    /* tracking */
    rlink *trk;
    bool trk_armed;
    bool trk_ever_armed; /* a re-arm (not the first arm) of this node */
    uint64_t trk_next_ms;
    uint32_t trk_fails;
};

enum req_phase_flags {
    RQ_ASKING = 1u << 0,   /* prefix ASKING (one-shot, Cluster ASK) */
    RQ_LOAD = 1u << 1,     /* prefix SCRIPT LOAD (after NOSCRIPT) */
    RQ_LOADED = 1u << 2,   /* NOSCRIPT already handled once */
    RQ_INTERNAL = 1u << 3, /* issued by the library itself (no user stats) */
};

struct rreq {
    rreq *next, *prev;
    strata_redis *r;
    strata_redis_cb cb;
    void *ud;
    char *cmd; /* formatted RESP, owned (strata_malloc) */
    size_t cmdlen;
    uint64_t deadline; /* loop ms */
    uint64_t retry_at; /* delayed queue */
    uint64_t start_ns;
    uint64_t end_off;                  /* link->appended after this command's bytes */
    rlink *link;                       /* while written to a link */
    rnode *fixed_node;                 /* route to this node (internal requests) */
    rnode *ask_node;                   /* one-shot ASK target */
    const strata_redis_script *script; /* for NOSCRIPT */
    int slot;                          /* Cluster slot, -1 = keyless */
    uint32_t keyhash;                  /* picks the pipelined link so one key keeps its order */
    uint32_t flags;                    /* STRATA_REDIS_* of the call */
    uint32_t rq;                       /* RQ_* */
    int wait_n;
    uint32_t wait_ms;
    int retries;
    int cbs_pending;           /* hiredis callbacks still to come for this request */
    bool dead;                 /* the link died under one of its callbacks */
    bool wait_short;           /* WAIT answered with fewer replicas */
    int last_status;           /* status to report if the deadline passes while delayed */
    strata_redis_reply *stash; /* owned: main reply kept while WAIT is pending */
    int where;                 /* which list holds it (WQ_*) */
    /* Small commands are formatted here (no allocation); cmd points at it.
     * Must stay the last field: a recycled request is zeroed up to it. */
    char inl[REQ_INLINE];
};

enum { WQ_NONE, WQ_NODE, WQ_DNODE, WQ_UNROUTED, WQ_DELAYED, WQ_LINK };

typedef struct redis_metrics {
    strata_counter *commands, *unknown, *unavail, *timeouts, *retries, *moved, *ask, *reconnects,
        *failovers, *invalidations, *flushes, *errors;
    strata_histogram *latency;
} redis_metrics;

struct sentinel_state;
struct cluster_state;
struct tracking_state;

struct strata_redis {
    uv_loop_t *loop;
    strata_redis_url url;
    strata_redis_options o;
    uv_timer_t tick;
    bool tick_ref;
    rnode *nodes;
    rnode *master; /* standalone node, or the Sentinel master; NULL while unknown */
    rlist unrouted;
    rlist delayed;
    size_t outstanding;
    bool destroying;
    int handles_open;
    strata_redis_stats stats;
    redis_metrics m;
    struct sentinel_state *sen;
    struct cluster_state *cl;
    struct tracking_state *trk;
    char master_addr[300];
    char last_master[300]; /* the last non-NULL master: a change of it is a failover */
    uint64_t nlinks_made;
    uv_prepare_t prep; /* flushes deferred writes before the loop blocks */
    rlink *wq;         /* links with a deferred write */
    rreq *req_free;    /* recycled requests (singly linked through next) */
    uint32_t req_nfree;
    strata_redis_script lib_xadd, lib_trim;      /* library scripts (stream_*.lua) */
    strata_redis_script lib_twrite, lib_seqread; /* tracked_write.lua, seq_read.lua */
    int lib_seq_state;                           /* 0 not loaded, 1 ok, < 0 status */
    int lib_state;                               /* 0 not loaded, 1 ok, < 0 status */
};

/* ---- core (redis_client.c) ---- */
uint64_t redis__now(strata_redis *r);
void redis__list_push(rlist *l, rreq *q);
void redis__list_remove(rlist *l, rreq *q);
rreq *redis__list_pop(rlist *l);
rlink *redis__link_open(strata_redis *r, const char *host, uint16_t port, const char *unix_path,
                        int kind, unsigned hs_flags, const link_ops *ops, void *owner);
void redis__link_close(rlink *l);
rnode *redis__node_get(strata_redis *r, const char *host, uint16_t port, const char *unix_path);
void redis__node_close_links(rnode *n);
void redis__reroute(rreq *q);
void redis__reroute_list(strata_redis *r, rlist *l);
/* Internal request to a fixed node (or routed when node is NULL); cb gets the reply. */
int redis__internal(strata_redis *r, rnode *node, strata_redis_cb cb, void *ud, int argc,
                    const char *const *argv, const size_t *argvlen);
int redis__submit_formatted(strata_redis *r, const strata_redis_call *call, strata_redis_cb cb,
                            void *ud, char *cmd, size_t len, const strata_redis_script *script);
/* Formats argv straight into a (recycled) request and submits it: no copy of the
 * command beyond the one hiredis makes into its output buffer. */
int redis__submit_argv(strata_redis *r, const strata_redis_call *call, strata_redis_cb cb, void *ud,
                       int argc, const char *const *argv, const size_t *argvlen,
                       const strata_redis_script *script);
int redis__map_error(const char *s, size_t len);
void redis__tick_ref(strata_redis *r);
void redis__set_master(strata_redis *r, rnode *n);
/* Own RESP formatter (strata_malloc'd). */
int redis__format_argv(char **out, size_t *outlen, int argc, const char *const *argv,
                       const size_t *argvlen);
/* Splits a formatted command back into argv (pointers into cmd); returns argc or -1. */
int redis__split(const char *cmd, size_t len, const char **argv, size_t *lens, int max);

/* ---- Sentinel (redis_sentinel.c) ---- */
int redis__sentinel_start(strata_redis *r);
void redis__sentinel_discover(strata_redis *r);
void redis__sentinel_tick(strata_redis *r, uint64_t now);
void redis__sentinel_destroy(strata_redis *r);

/* ---- Cluster (redis_cluster.c) ---- */
int redis__cluster_start(strata_redis *r);
void redis__cluster_refresh(strata_redis *r);
rnode *redis__cluster_route(strata_redis *r, int slot);
void redis__cluster_moved(strata_redis *r, int slot, const char *addr, size_t len);
rnode *redis__cluster_node_for_addr(strata_redis *r, const char *addr, size_t len);
void redis__cluster_tick(strata_redis *r, uint64_t now);
void redis__cluster_destroy(strata_redis *r);
/* Slot of a formatted command: -1 keyless, >= 0 slot, STRATA_ECROSSSLOT. */
int redis__cmd_slot(const char *cmd, size_t len, uint32_t *keyhash);
bool redis__node_is_master(strata_redis *r, rnode *n);

/* ---- tracking (redis_tracking.c) ---- */
void redis__tracking_tick(strata_redis *r, uint64_t now);
void redis__tracking_node_gone(strata_redis *r, rnode *n);
void redis__tracking_destroy(strata_redis *r);

/* ---- scripts (redis_script.c) ---- */
void redis__sha1_hex(const void *data, size_t len, char out[41]);

/* The embedded library scripts (generated from src/lib/redis/ .lua files). */
extern const strata_embedded strata_lib_lua_table[];

#endif
