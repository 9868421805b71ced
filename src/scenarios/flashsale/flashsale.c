/*
 * flashsale.c: the flash-sale service (docs/notes/scenarios.md, docs/API.md).
 *
 *   POST /v1/flashsales                 (admin) create a sale
 *   POST /v1/flashsales/{sku}/orders    buy one unit
 *   GET  /v1/flashsales/{sku}           stock left, sold, status
 *   GET  /v1/orders/{order_id}          an order, from the database once persisted
 *
 * An order goes: input validation -> the sale's flag in L1 (not started,
 * ended, sold out: answered without touching Redis) -> the per-user GCRA
 * limiter in Redis -> one Lua call (check-and-decrement, buyer record, order
 * event XADD) -> WAIT when replicas exist.  The Lua call is idempotent per
 * (sale, user), so a call whose outcome is unknown (connection lost, WAIT
 * unmet, failover) is retried within the request's deadline and the answer is
 * the truth; only when the deadline passes first is the answer 503, and the
 * user's next attempt then learns its order (409 already_purchased).  Each
 * request carries a random token the scripts keep with the order it recorded
 * (fs:{tag}:req:<token>, 2 min), so a retry that finds the order its own lost
 * call recorded answers 201, not 409; and a retry is not charged to the
 * per-user limiter again.
 * Persistence is write-behind: the order event is applied to the `orders`
 * table by the persister, idempotently by order id.
 *
 * --flashsale-strategy=segment-lock runs the seed's design instead: stock in
 * 10 segments, each guarded by a Redis lock taken around GET/DECR (several
 * round trips per order), as the baseline the Lua path is measured against.
 *
 * Stock shards ("shards": K > 1 at creation; docs/notes/scenarios.md).  One
 * sale's stock in one key is one Redis Cluster slot, so one master takes all
 * of a hot sale's writes.  With K shards, shard i's keys carry the hash tag
 * {SKU#i} (stock, buyer records, order sequence, events stream, order index,
 * buyers' Bloom filter, pending reservations, takes), so a Cluster spreads
 * them over its masters; the sale's meta and its tracked flag stay at {SKU}.
 * Both invariants must hold across slots, where no script can see two shards:
 *
 *   one order per user   a user's buyer record lives in ONE shard, their
 *                        HOME h = XXH3(user) % K.  The common path is one call
 *                        there: limiter, buyer check, decrement, record, event
 *                        (the unsharded script on the shard's keys).
 *   no oversell          every order is one decrement of one shard's stock,
 *                        inside that shard's script; a stock never grows.
 *
 * When the home shard is empty, its script RESERVES the buyer record instead
 * ("R:<j>", written in the same call that found the shard empty, with the
 * user's Bloom bits and a pending-set entry), then the server TAKES a unit
 * from shard j (flashsale_take.lua: idempotent per user through j's `taken`
 * hash: a repeat returns the same order) and SETTLES the home record with a
 * compare-and-set (flashsale_settle.lua): "R:<j>" -> the order id (confirm),
 * or, when j is empty, "R:<j>" -> "R:<k>" (the next shard) or -> nothing
 * (release, when every shard is known empty).  Why this is safe:
 *   - while the home record is "R:<j>", every request of that user (and the
 *     sweeper) can only continue the protocol with j: the home script answers
 *     'pending', never buys;
 *   - a take from j that answered sold_out for a user can never answer ok for
 *     them later (the stock never grows), so moving the reservation away from
 *     j cannot strand an order in j; a take that answered ok is repeated by
 *     anyone who finds "R:<j>" (roll forward), so the order always reaches the
 *     home record;
 *   - a reservation holds no stock: one left behind by a crash never makes a
 *     unit unsellable.  The user's next request finishes it ('pending'), and
 *     the control thread's sweeper finishes reservations older than
 *     SWEEP_AGE_MS (scn_flashsale_sweep): take (idempotent), then confirm or
 *     release.
 * The sale is sold out when every shard is; a server that saw each shard at 0
 * (zero is final) sets fsflag:{SKU} (flashsale_soldout.lua), which reaches
 * every L1 by tracking.  Empty shards seen are remembered per server
 * (L1 "fsempty:{SKU}") so later requests skip them.  After sell-out the
 * buyers' Bloom filter of the user's home shard answers non-buyers from the
 * L1; reservations set the bits too, so a user whose order came from another
 * shard is always a "maybe" and learns it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "scenarios/scenario.h"
#include "strata/alloc.h"
#include "strata/embedded.h"
#include "strata/json.h"
#include "strata/log.h"
#include "strata/protect.h"
#include "strata/status.h"

extern const strata_embedded strata_scenario_lua_table[];
extern const strata_embedded strata_lib_lua_table[];

#define NSEGMENTS  10
#define MAX_SHARDS 16
/* The sweeper finishes reservations older than this (well past --request-timeout's
 * default of 5 s, so it rarely races a live request; racing one is harmless). */
#define SWEEP_AGE_MS 10000
/* The set of sharded sales the sweeper visits, members "SKU#K" (ids never hold '#'). */
#define SHARDED_SALES "fs:sharded"
/* A sold-out sale leaves that set only after this long (server clock) with nothing pending:
 * a request that read the sale before it sold out may still leave a reservation (and die)
 * for up to its deadline, --request-timeout, 5 s by default.  Marker: SWEEP_QUIET + member. */
#define SWEEP_GRACE_MS 60000
#define SWEEP_QUIET    "fs:sweepquiet:"

static strata_redis_script s_order, s_create, s_status, s_gcra, s_seg_create, s_unlock, s_take,
    s_settle, s_pending, s_soldout;

/* ---- schema ---------------------------------------------------------------------- */

static const strata_db_migration migrations[] = {
    {"CREATE TABLE IF NOT EXISTS flashsales (sku TEXT PRIMARY KEY, stock_total BIGINT NOT NULL, "
     "starts_at_ms BIGINT NOT NULL, ends_at_ms BIGINT NOT NULL, per_user_limit INTEGER NOT NULL, "
     "created_at_ms BIGINT NOT NULL)",
     NULL, NULL},
    {"CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, "
     "user_id TEXT NOT NULL, created_at_ms BIGINT NOT NULL, UNIQUE (sku, user_id))",
     NULL, NULL},
    {"ALTER TABLE flashsales ADD COLUMN shards INTEGER NOT NULL DEFAULT 1", NULL, NULL},
};

int scn_flashsale_migrations(void) {
    return strata_db_register_migrations("flashsale", migrations,
                                         (int)(sizeof migrations / sizeof migrations[0]));
}

/* ---- keys -------------------------------------------------------------------------- */

/*
 * A shard's keys carry its tag: {SKU} for an unsharded sale, {SKU#i} for
 * shard i of a sharded one.  The sale's own keys (flag, meta, the status
 * script's stock key) always carry {SKU}.
 */
enum {
    K_STOCK,
    K_BUYERS,
    K_SEQ,
    K_EVENTS,
    K_PENDING,
    K_ORDERS,
    K_BUYERBITS,
    K_LIMIT,
    K_L1BUYERS,
    K_TAKEN,
    K_SHARD__COUNT,
    /* the sale's */
    K_FLAG = K_SHARD__COUNT,
    K_META,
    K_SALESTOCK,
    K__COUNT
};

typedef struct fs_keys {
    char k[K__COUNT][160];
    size_t len[K__COUNT];
} fs_keys;

/* The shard's hash tag: "SKU" (shards == 1) or "SKU#i". */
static void shard_tag(char *buf, size_t cap, const char *sku, int shards, int shard) {
    if (shards > 1)
        snprintf(buf, cap, "%s#%d", sku, shard);
    else
        snprintf(buf, cap, "%s", sku);
}

/* Fills the keys of `shard` (0 for an unsharded sale) and the sale's keys. */
static void make_keys(fs_keys *fk, const char *sku, const char *user, int shards, int shard) {
    static const char *const fmt[K__COUNT] = {
        "fs:{%s}:stock",  "fs:{%s}:buyers",    "fs:{%s}:seq",   "fs:{%s}:events", "fs:{%s}:pending",
        "fs:{%s}:orders", "fs:{%s}:buyerbits", "rl:fs:{%s}:%s", "fsbuyers:{%s}",  "fs:{%s}:taken",
        "fsflag:{%s}",    "fs:{%s}:meta",      "fs:{%s}:stock"};
    char tag[96];
    shard_tag(tag, sizeof tag, sku, shards, shard);
    for (int i = 0; i < K__COUNT; i++)
        fk->len[i] = (size_t)snprintf(fk->k[i], sizeof fk->k[i], fmt[i], i < K_FLAG ? tag : sku,
                                      user ? user : "");
}

/* "fs:{tag}:req:<token>": the order one HTTP request recorded in a shard (2 min). */
static size_t req_key(char *buf, size_t cap, const char *sku, int shards, int shard,
                      const char *token) {
    char tag[96];
    shard_tag(tag, sizeof tag, sku, shards, shard);
    return (size_t)snprintf(buf, cap, "fs:{%s}:req:%s", tag, token);
}

/* The user's home shard, and where their search of the other shards starts. */
static int home_shard(const char *user, size_t len, int shards, int *start) {
    uint64_t h = XXH3_64bits(user, len);
    if (start)
        *start = shards > 1 ? (int)((h >> 32) % (uint64_t)(shards - 1)) : 0;
    return shards > 1 ? (int)(h % (uint64_t)shards) : 0;
}

/* ---- the sale's state, cached in L1 under its flag key ------------------------------- */

typedef struct fs_state {
    int64_t stock_total, starts_ms, ends_ms, per_user_limit;
    int64_t stock_left; /* unsharded; -1 for a sharded sale (its shards are summed on GET) */
    int32_t shards;
    uint8_t exists, soldout;
} fs_state;

static int state_from_reply(const strata_redis_reply *r, fs_state *st) {
    memset(st, 0, sizeof *st);
    if (!r || r->type != STRATA_REPLY_ARRAY)
        return STRATA_EPROTO;
    if (r->elements == 0)
        return STRATA_OK; /* unknown sale */
    if (r->elements != 7)
        return STRATA_EPROTO;
    for (int i = 0; i < 7; i++)
        if (r->element[i]->type != STRATA_REPLY_STRING)
            return STRATA_EPROTO;
    st->exists = 1;
    st->stock_total = strtoll(r->element[0]->str, NULL, 10);
    st->starts_ms = strtoll(r->element[1]->str, NULL, 10);
    st->ends_ms = strtoll(r->element[2]->str, NULL, 10);
    st->per_user_limit = strtoll(r->element[3]->str, NULL, 10);
    st->stock_left = strtoll(r->element[4]->str, NULL, 10);
    long long shards = strtoll(r->element[6]->str, NULL, 10);
    if (shards < 1 || shards > MAX_SHARDS)
        return STRATA_EPROTO;
    st->shards = (int32_t)shards;
    st->soldout =
        strcmp(r->element[5]->str, "soldout") == 0 || (st->shards == 1 && st->stock_left <= 0);
    return STRATA_OK;
}

static void cache_state(strata_scenarios *sc, const fs_keys *fk, const fs_state *st) {
    strata_l1_set_opts o = {0};
    /* A sold-out sale never comes back: keep the flag until evicted or invalidated. */
    if (st->exists && st->soldout)
        o.no_ttl = 1;
    else
        o.ttl_ns = sc->cfg.status_ttl_ns;
    strata_l1_set(sc->l1, fk->k[K_FLAG], fk->len[K_FLAG], st, sizeof *st, &o);
}

/*
 * The buyers' Bloom filter of a sale (of each home shard when sharded): sized
 * from the stock and the shard count (immutable), so every server agrees.  A
 * home shard expects stock/K buyers (homes are a uniform hash); twice that
 * leaves room for imbalance, and more buyers only raise the false-positive
 * rate: a "maybe" costs one Redis call, never a wrong answer.
 */
static int buyer_bloom_size(const fs_state *st, uint64_t *bits, uint32_t *k) {
    uint64_t n = st->stock_total > 0 ? (uint64_t)st->stock_total : 1;
    if (st->shards > 1) {
        uint64_t per = 2 * ((n + (uint64_t)st->shards - 1) / (uint64_t)st->shards);
        n = per < n ? per : n;
    }
    return strata_bloom_size(n, 0.01, bits, k);
}

/* ---- one order request ----------------------------------------------------------- */

typedef struct order_ctx {
    strata_scenarios *sc;
    strata_http_req *req;
    scn_worker *w;
    const char *sku, *user;
    size_t userlen;
    fs_keys keys; /* the user's home shard's, and the sale's */
    fs_state st;
    int attempts;
    int skip_limit;
    char rtoken[20]; /* this request's token: the scripts remember the order it recorded */
    /* sharded sales */
    int home, start;     /* the home shard; where the search of the others starts */
    uint32_t empty;      /* shards known to be empty (an empty shard stays empty) */
    int take;            /* the shard being taken from */
    int steps;           /* protocol calls made, bounded */
    int created;         /* this request's take made the order (201, not 409 already) */
    fs_keys tk;          /* shard `take`'s keys */
    char resv[16];       /* the home record this request holds: "R:<j>" */
    char settle_to[112]; /* the record being set: an order id, "R:<k>", or "" */
    /* segment-lock baseline */
    int seg, segs_tried, lock_tries;
    char token[24], order_id[112];
} order_ctx;

static void order_call(void *arg);
static void order_after_state(order_ctx *o);
static void fetch_state(void *arg);
static void sold_out_check(order_ctx *o);
static void seglock_start(order_ctx *o);
static void seg_limit(order_ctx *o);
static void take_call(void *arg);
static void settle_call(void *arg);

/* Every order step may be followed by WAIT: keep its timeout and a margin to answer 503. */
static uint32_t remaining_ms(order_ctx *o) { return scn_call_budget(o->sc, o->req, true); }

/* Retries an idempotent step after a short backoff while the request has time. */
static bool retry_later(order_ctx *o, void (*fn)(void *), int status) {
    (void)status;
    return scn_retry(o->sc, o->req, o->w->loop, &o->attempts, fn, o);
}

static void respond_already(strata_http_req *req, const char *order_id, size_t len) {
    strata_buf b = STRATA_BUF_INIT;
    strata_buf_puts(&b,
                    "{\"error\":{\"code\":\"already_purchased\",\"message\":\"this user already "
                    "bought in this sale\",\"order_id\":");
    strata_buf_json_str(&b, order_id, len);
    strata_buf_puts(&b, "}}");
    strata_http_respond_json(req, 409, b.data, b.len);
    strata_buf_free(&b);
}

static void respond_created(order_ctx *o, const char *order_id, size_t len, long long left) {
    strata_buf b = STRATA_BUF_INIT;
    strata_buf_puts(&b, "{\"order_id\":");
    strata_buf_json_str(&b, order_id, len);
    strata_buf_printf(&b, ",\"sku\":\"%s\",\"user_id\":", o->sku);
    strata_buf_json_str(&b, o->user, o->userlen);
    if (left >= 0)
        strata_buf_printf(&b, ",\"stock_left\":%lld", left);
    strata_buf_puts(&b, "}");
    strata_http_respond_json(o->req, 201, b.data, b.len);
    strata_buf_free(&b);
}

static void respond_sold_out(order_ctx *o) {
    strata_http_respond_error(o->req, 409, "sold_out", "sale %s is sold out", o->sku);
}

static void mark_sold_out(order_ctx *o) {
    o->st.soldout = 1;
    if (o->st.shards <= 1)
        o->st.stock_left = 0;
    cache_state(o->sc, &o->keys, &o->st);
}

/*
 * A step's failure: an unknown outcome or an unavailable Redis is retried
 * (every step is idempotent) while the request has time; anything else is
 * answered.  Returns true when the step is handled here.
 */
static bool step_failed(order_ctx *o, int status, const strata_redis_reply *r,
                        void (*again)(void *), const char *script) {
    if (status == STRATA_EUNKNOWN || status == STRATA_EUNAVAIL || status == STRATA_ERETRY ||
        status == STRATA_ECLOSED) {
        /* The retry learns the outcome of the same attempt: the limiter counted it once
         * (or, never sent, not at all), so it does not run again. */
        if (again == order_call)
            o->skip_limit = 1;
        if (retry_later(o, again, status))
            return true;
        if (status == STRATA_EUNKNOWN)
            strata_counter_inc(o->sc->m_unknown);
        scn_respond_failure(o->req, status, "order");
        return true;
    }
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != STRATA_REPLY_STRING) {
        if (r && r->type == STRATA_REPLY_ERROR && status != STRATA_EBACKPRESSURE)
            LOG_WARN("script_error", "script=%s status=%s reply=\"%.200s\"", script,
                     strata_status_name(status), r->str);
        scn_respond_failure(o->req, status != STRATA_OK ? status : STRATA_EPROTO, "order");
        return true;
    }
    return false;
}

/* ---- sharded sales: reservations, takes, settles ------------------------------------- */

static size_t empty_key(const order_ctx *o, char *buf, size_t cap) {
    return (size_t)snprintf(buf, cap, "fsempty:{%s}", o->sku);
}

/* Remembers that `shard` is empty (for this request, and in the L1 for the next ones:
 * zero is final, so the only cost of a stale entry is one wasted call). */
static void note_empty(order_ctx *o, int shard) {
    uint32_t bit = 1u << shard;
    if (o->empty & bit)
        return;
    o->empty |= bit;
    char k[96];
    size_t kl = empty_key(o, k, sizeof k);
    uint32_t cur = 0;
    if (strata_l1_get_copy(o->sc->l1, k, kl, &cur, sizeof cur, NULL) == STRATA_L1_HIT)
        o->empty |= cur;
    strata_l1_set_opts so = {0};
    so.ttl_ns = o->sc->cfg.status_ttl_ns;
    strata_l1_set(o->sc->l1, k, kl, &o->empty, sizeof o->empty, &so);
}

static bool all_empty(const order_ctx *o) {
    return o->st.soldout || o->empty == (uint32_t)((1ull << o->st.shards) - 1);
}

/* The next shard to try after the home shard is empty, in this user's order; -1 = none left. */
static int next_candidate(const order_ctx *o) {
    int n = o->st.shards;
    if (o->st.soldout || n <= 1)
        return -1;
    for (int i = 0; i < n - 1; i++) {
        int j = (o->home + 1 + (o->start + i) % (n - 1)) % n;
        if (!(o->empty & (1u << j)))
            return j;
    }
    return -1;
}

/* Every shard is empty: tell every server (the tracked flag) and this one's L1. */
static void sale_sold_out(order_ctx *o) {
    if (o->st.soldout)
        return;
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    const char *keys[1] = {o->keys.k[K_FLAG]};
    /* No callback: if it fails, the next server to see every shard empty sets it. */
    strata_redis_evalsha(o->w->redis, &call, &s_soldout, NULL, NULL, 1, keys, &o->keys.len[K_FLAG],
                         0, NULL, NULL);
    mark_sold_out(o);
}

/* Takes hold of the home record "R:<j>" (found or written): the next step is a take from j. */
static bool hold_reservation(order_ctx *o, const char *rec, size_t len) {
    char *end = NULL;
    if (len < 3 || len >= sizeof o->resv || rec[0] != 'R' || rec[1] != ':')
        return false;
    long j = strtol(rec + 2, &end, 10);
    if (end != rec + len || j < 0 || j >= o->st.shards || j == o->home)
        return false;
    memcpy(o->resv, rec, len);
    o->resv[len] = '\0';
    o->take = (int)j;
    make_keys(&o->tk, o->sku, o->user, o->st.shards, o->take);
    return true;
}

/* A malformed reservation or a protocol that does not converge: 503 (the user's retry, or
 * the sweeper, finishes what is left). */
static bool step_budget(order_ctx *o) {
    if (++o->steps <= 8 * o->st.shards + 16)
        return true;
    LOG_WARN("flashsale_steps", "sku=%s user=%s steps=%d record=%s", o->sku, o->user, o->steps,
             o->resv);
    scn_respond_failure(o->req, STRATA_ERETRY, "order");
    return false;
}

static void on_settle(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (step_failed(o, status, r, settle_call, "flashsale_settle.lua"))
        return;
    const char *tag = r->element[0]->str;
    if (strcmp(tag, "ok") == 0) {
        if (o->settle_to[0] == '\0') { /* released: every shard is empty */
            if (all_empty(o))
                sale_sold_out(o);
            respond_sold_out(o);
        } else if (o->settle_to[0] == 'R' && o->settle_to[1] == ':') {
            if (hold_reservation(o, o->settle_to, strlen(o->settle_to)))
                take_call(o);
            else
                scn_respond_failure(o->req, STRATA_EPROTO, "order");
        } else if (o->created) {
            respond_created(o, o->settle_to, strlen(o->settle_to), -1);
        } else {
            respond_already(o->req, o->settle_to, strlen(o->settle_to));
        }
        return;
    }
    if (strcmp(tag, "changed") != 0 || r->elements != 2 ||
        r->element[1]->type != STRATA_REPLY_STRING) {
        scn_respond_failure(o->req, STRATA_EPROTO, "order");
        return;
    }
    /* Another request of this user (or the sweeper) moved the record first: follow it. */
    const strata_redis_reply *cur = r->element[1];
    if (cur->len == 0) {   /* released: back to the home shard, which may reserve again */
        o->skip_limit = 1; /* the same attempt: not limited again */
        order_call(o);
    } else if (cur->len >= 2 && cur->str[0] == 'R' && cur->str[1] == ':') {
        if (hold_reservation(o, cur->str, cur->len))
            take_call(o);
        else
            scn_respond_failure(o->req, STRATA_EPROTO, "order");
    } else {
        if (o->settle_to[0] != '\0' && o->settle_to[0] != 'R' && strcmp(o->settle_to, cur->str))
            LOG_ERROR("flashsale_invariant", "sku=%s user=%s took=%s but holds=%s", o->sku, o->user,
                      o->settle_to, cur->str);
        respond_already(o->req, cur->str, cur->len);
    }
}

/* Compare-and-set of the home record: o->resv -> o->settle_to. */
static void settle_call(void *arg) {
    order_ctx *o = arg;
    if (!step_budget(o))
        return;
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    call.wait_replicas = o->sc->cfg.wait_replicas;
    call.wait_timeout_ms = o->sc->cfg.wait_timeout_ms;
    const char *keys[2] = {o->keys.k[K_BUYERS], o->keys.k[K_PENDING]};
    size_t kl[2] = {o->keys.len[K_BUYERS], o->keys.len[K_PENDING]};
    const char *args[3] = {o->user, o->resv, o->settle_to};
    size_t al[3] = {o->userlen, strlen(o->resv), strlen(o->settle_to)};
    int rc =
        strata_redis_evalsha(o->w->redis, &call, &s_settle, on_settle, o, 2, keys, kl, 3, args, al);
    if (rc != STRATA_OK)
        scn_respond_failure(o->req, rc, "order");
}

static void on_take(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (step_failed(o, status, r, take_call, "flashsale_take.lua"))
        return;
    const char *tag = r->element[0]->str;
    if ((strcmp(tag, "ok") == 0 && r->elements == 3) ||
        (strcmp(tag, "repeat") == 0 && r->elements == 2)) {
        const strata_redis_reply *id = r->element[1];
        if (id->type != STRATA_REPLY_STRING || id->len == 0 || id->len >= sizeof o->settle_to) {
            scn_respond_failure(o->req, STRATA_EPROTO, "order");
            return;
        }
        o->created = tag[0] == 'o';
        if (o->created && r->element[2]->integer <= 0)
            note_empty(o, o->take);
        memcpy(o->settle_to, id->str, id->len);
        o->settle_to[id->len] = '\0';
        settle_call(o); /* confirm */
    } else if (strcmp(tag, "sold_out") == 0) {
        note_empty(o, o->take);
        int next = next_candidate(o);
        if (next >= 0)
            snprintf(o->settle_to, sizeof o->settle_to, "R:%d", next); /* move on */
        else
            o->settle_to[0] = '\0'; /* release */
        settle_call(o);
    } else {
        LOG_WARN("flashsale_take", "sku=%s shard=%d reply=%s", o->sku, o->take, tag);
        scn_respond_failure(o->req, STRATA_EPROTO, "order");
    }
}

/* Takes one unit from shard o->take for the user (idempotent per user). */
static void take_call(void *arg) {
    order_ctx *o = arg;
    if (!step_budget(o))
        return;
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    call.wait_replicas = o->sc->cfg.wait_replicas;
    call.wait_timeout_ms = o->sc->cfg.wait_timeout_ms;
    char maxlen[24], prefix[96], req[160];
    snprintf(maxlen, sizeof maxlen, "%llu", (unsigned long long)o->sc->cfg.stream_max_len);
    snprintf(prefix, sizeof prefix, "%s-%d.", o->sku, o->take);
    size_t rl = req_key(req, sizeof req, o->sku, o->st.shards, o->take, o->rtoken);
    const char *keys[6] = {o->tk.k[K_STOCK],  o->tk.k[K_TAKEN],  o->tk.k[K_SEQ],
                           o->tk.k[K_EVENTS], o->tk.k[K_ORDERS], req};
    size_t kl[6] = {o->tk.len[K_STOCK],  o->tk.len[K_TAKEN],  o->tk.len[K_SEQ],
                    o->tk.len[K_EVENTS], o->tk.len[K_ORDERS], rl};
    const char *args[4] = {o->sku, o->user, maxlen, prefix};
    size_t al[4] = {strlen(o->sku), o->userlen, strlen(maxlen), strlen(prefix)};
    int rc =
        strata_redis_evalsha(o->w->redis, &call, &s_take, on_take, o, 6, keys, kl, 4, args, al);
    if (rc != STRATA_OK)
        scn_respond_failure(o->req, rc, "order");
}

/* ---- the home shard's call (the whole order for an unsharded sale) -------------------- */

static void on_order(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (step_failed(o, status, r, order_call, "flashsale_order.lua"))
        return;
    bool sharded = o->st.shards > 1;
    const char *tag = r->element[0]->str;
    if (strcmp(tag, "ok") == 0 && r->elements == 3) {
        long long left = r->element[2]->integer;
        if (!sharded && left <= 0)
            mark_sold_out(o);
        else if (sharded && left <= 0)
            note_empty(o, o->home);
        respond_created(o, r->element[1]->str, r->element[1]->len, sharded ? -1 : left);
    } else if (strcmp(tag, "already") == 0 && r->elements == 2) {
        respond_already(o->req, r->element[1]->str, r->element[1]->len);
    } else if (sharded && r->elements == 2 && r->element[1]->type == STRATA_REPLY_STRING &&
               (strcmp(tag, "reserved") == 0 || strcmp(tag, "pending") == 0)) {
        /* reserved: the home shard is empty and the record is ours to finish; pending: an
         * earlier attempt of this user left it (crash, lost reply, a concurrent request):
         * finishing it is the same protocol, since every step is idempotent. */
        if (tag[0] == 'r')
            note_empty(o, o->home);
        if (hold_reservation(o, r->element[1]->str, r->element[1]->len))
            take_call(o);
        else
            scn_respond_failure(o->req, STRATA_EPROTO, "order");
    } else if (strcmp(tag, "sold_out") == 0) {
        if (!sharded) {
            mark_sold_out(o);
        } else {
            note_empty(o, o->home); /* and every other shard was known empty */
            if (all_empty(o))
                sale_sold_out(o);
        }
        respond_sold_out(o);
    } else if (strcmp(tag, "rate_limited") == 0 && r->elements == 2) {
        scn_respond_limited(o->req, r->element[1]->integer);
    } else if (strcmp(tag, "unknown_sale") == 0) {
        strata_l1_invalidate(o->sc->l1, o->keys.k[K_FLAG], o->keys.len[K_FLAG]);
        strata_http_respond_error(o->req, 404, "not_found", "no sale %s", o->sku);
    } else {
        scn_respond_failure(o->req, STRATA_EPROTO, "order");
    }
}

static void order_call(void *arg) {
    order_ctx *o = arg;
    if (o->sc->cfg.flashsale_segment_lock) {
        seg_limit(o);
        return;
    }
    bool sharded = o->st.shards > 1;
    if (sharded && !step_budget(o))
        return;
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    call.wait_replicas = o->sc->cfg.wait_replicas;
    call.wait_timeout_ms = o->sc->cfg.wait_timeout_ms;
    char maxlen[24], posbuf[16][24], gcra[3][24] = {"0", "0", "1"}, prefix[96], cand[16] = "";
    snprintf(maxlen, sizeof maxlen, "%llu", (unsigned long long)o->sc->cfg.stream_max_len);
    /* The limiter counts attempts to buy; a possible buyer learning their order after
     * sell-out (o->skip_limit) is not limited. */
    if (!o->skip_limit)
        strata_gcra_args(o->sc->cfg.user_rate, 1000, o->sc->cfg.user_burst, 1, gcra);
    if (sharded) {
        snprintf(prefix, sizeof prefix, "%s-%d.", o->sku, o->home);
        snprintf(cand, sizeof cand, "%d", next_candidate(o));
    } else {
        snprintf(prefix, sizeof prefix, "%s-", o->sku);
    }
    /* KEYS[5]: the sale's flag (unsharded: set when the stock reaches 0) or the shard's
     * pending reservations (sharded). */
    char req[160];
    size_t rl = req_key(req, sizeof req, o->sku, o->st.shards, o->home, o->rtoken);
    const char *keys[9] = {o->keys.k[K_STOCK],
                           o->keys.k[K_BUYERS],
                           o->keys.k[K_SEQ],
                           o->keys.k[K_EVENTS],
                           o->keys.k[sharded ? K_PENDING : K_FLAG],
                           o->keys.k[K_ORDERS],
                           o->keys.k[K_BUYERBITS],
                           o->keys.k[K_LIMIT],
                           req};
    size_t kl[9] = {o->keys.len[K_STOCK],
                    o->keys.len[K_BUYERS],
                    o->keys.len[K_SEQ],
                    o->keys.len[K_EVENTS],
                    o->keys.len[sharded ? K_PENDING : K_FLAG],
                    o->keys.len[K_ORDERS],
                    o->keys.len[K_BUYERBITS],
                    o->keys.len[K_LIMIT],
                    rl};
    const char *args[7 + 16] = {o->sku, o->user, maxlen, gcra[0], gcra[1], prefix, cand};
    size_t alen[7 + 16] = {strlen(o->sku),  o->userlen,     strlen(maxlen), strlen(gcra[0]),
                           strlen(gcra[1]), strlen(prefix), strlen(cand)};
    uint64_t bits, pos[16];
    uint32_t k = 0;
    if (buyer_bloom_size(&o->st, &bits, &k) == STRATA_OK) {
        if (k > 16)
            k = 16;
        strata_bloom_positions_mk(bits, k, o->user, o->userlen, pos);
        for (uint32_t i = 0; i < k; i++) {
            alen[7 + i] =
                (size_t)snprintf(posbuf[i], sizeof posbuf[i], "%llu", (unsigned long long)pos[i]);
            args[7 + i] = posbuf[i];
        }
    }
    int rc = strata_redis_evalsha(o->w->redis, &call, &s_order, on_order, o, 9, keys, kl,
                                  7 + (int)k, args, alen);
    if (rc != STRATA_OK)
        scn_respond_failure(o->req, rc, "order");
}

/*
 * A sold-out sale: a non-buyer is answered here without Redis; a possible
 * buyer (Bloom "maybe") goes to the Lua call, which answers with the truth
 * (their order, or sold_out on a false positive).  The filter (of the user's
 * home shard, when sharded) is read from Redis once per server per sale and
 * kept in L1: after sell-out it can no longer change.
 */
static void decide_sold_out(order_ctx *o, const void *bytes, size_t len) {
    uint64_t bits;
    uint32_t k;
    if (buyer_bloom_size(&o->st, &bits, &k) == STRATA_OK &&
        !strata_bloom_bytes_maybe_contains(bytes, len, bits, k, o->user, o->userlen)) {
        strata_counter_inc(o->sc->m_l1_flag_hits);
        respond_sold_out(o);
        return;
    }
    o->skip_limit = 1; /* maybe a buyer: the script knows; learning one's order is not limited */
    order_call(o);
}

static void on_buyer_bits(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (status != STRATA_OK) {
        o->skip_limit = 1; /* cannot tell: the script answers */
        order_call(o);
        return;
    }
    const char *bytes = r && r->type == STRATA_REPLY_STRING ? r->str : "";
    size_t len = r && r->type == STRATA_REPLY_STRING ? r->len : 0;
    strata_l1_set_opts so = {0};
    so.no_ttl = 1;
    strata_l1_set(o->sc->l1, o->keys.k[K_L1BUYERS], o->keys.len[K_L1BUYERS], bytes, len, &so);
    decide_sold_out(o, bytes, len);
}

static void sold_out_check(order_ctx *o) {
    if (o->sc->cfg.flashsale_segment_lock) {
        /* The baseline keeps no buyers' Bloom filter: a buyer must still learn its order. */
        o->skip_limit = 1;
        order_call(o);
        return;
    }
    strata_buf bits = STRATA_BUF_INIT;
    int rc = strata_l1_get_buf(o->sc->l1, o->keys.k[K_L1BUYERS], o->keys.len[K_L1BUYERS], &bits);
    if (rc == STRATA_L1_HIT) {
        decide_sold_out(o, bits.data ? bits.data : "", bits.len);
        strata_buf_free(&bits);
        return;
    }
    strata_buf_free(&bits);
    const char *argv[2] = {"GET", o->keys.k[K_BUYERBITS]};
    size_t al[2] = {3, o->keys.len[K_BUYERBITS]};
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    if (strata_redis_command_argv(o->w->redis, &call, on_buyer_bits, o, 2, argv, al) != STRATA_OK) {
        o->skip_limit = 1;
        order_call(o);
    }
}

/* Decides with the sale's state (from L1 or just read); the server clock rules windows. */
static void order_after_state(order_ctx *o) {
    if (!o->st.exists) {
        strata_http_respond_error(o->req, 404, "not_found", "no sale %s", o->sku);
        return;
    }
    int64_t now = strata_clock_wall_ms(o->sc->env.clock);
    if (now < o->st.starts_ms) {
        strata_http_respond_error(o->req, 403, "not_started", "sale %s starts in %lld ms", o->sku,
                                  (long long)(o->st.starts_ms - now));
        return;
    }
    if (o->st.ends_ms > 0 && now >= o->st.ends_ms) {
        strata_http_respond_error(o->req, 403, "ended", "sale %s has ended", o->sku);
        return;
    }
    if (o->st.shards > 1) {
        if (o->sc->cfg.flashsale_segment_lock) {
            strata_http_respond_error(o->req, 400, "unsupported",
                                      "sale %s has stock shards, which the segment-lock strategy "
                                      "does not serve",
                                      o->sku);
            return;
        }
        o->home = home_shard(o->user, o->userlen, o->st.shards, &o->start);
        make_keys(&o->keys, o->sku, o->user, o->st.shards, o->home);
        char k[96];
        size_t kl = empty_key(o, k, sizeof k);
        uint32_t mask = 0;
        if (strata_l1_get_copy(o->sc->l1, k, kl, &mask, sizeof mask, NULL) == STRATA_L1_HIT)
            o->empty = mask & (uint32_t)((1ull << o->st.shards) - 1);
    }
    if (o->st.soldout) {
        sold_out_check(o);
        return;
    }
    order_call(o);
}

static void on_state(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (status != STRATA_OK) {
        if ((status == STRATA_EUNAVAIL || status == STRATA_EUNKNOWN || status == STRATA_ERETRY) &&
            retry_later(o, fetch_state, status))
            return;
        scn_respond_failure(o->req, status, "sale state");
        return;
    }
    if (state_from_reply(r, &o->st) != STRATA_OK) {
        scn_respond_failure(o->req, STRATA_EPROTO, "sale state");
        return;
    }
    cache_state(o->sc, &o->keys, &o->st);
    order_after_state(o);
}

static void fetch_state(void *arg) {
    order_ctx *o = arg;
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    const char *keys[3] = {o->keys.k[K_SALESTOCK], o->keys.k[K_META], o->keys.k[K_FLAG]};
    size_t kl[3] = {o->keys.len[K_SALESTOCK], o->keys.len[K_META], o->keys.len[K_FLAG]};
    int rc = strata_redis_evalsha(o->w->redis, &call, &s_status, on_state, o, 3, keys, kl, 0, NULL,
                                  NULL);
    if (rc != STRATA_OK)
        scn_respond_failure(o->req, rc, "sale state");
}

/* Validates the sku path parameter; answers 404 for ids that cannot exist. */
static const char *path_sku(strata_http_req *req) {
    const char *sku = strata_http_param(req, "sku");
    if (!sku || !scn_valid_id(sku, strlen(sku))) {
        strata_http_respond_error(req, 404, "not_found",
                                  "a sale id is 1..64 characters of [A-Za-z0-9_.:-]");
        return NULL;
    }
    return sku;
}

static void post_order(strata_http_req *req, void *ctx) {
    strata_scenarios *sc = ctx;
    const char *sku = path_sku(req);
    if (!sku)
        return;
    const char *user;
    if (!scn_read_user(req, &user))
        return;
    order_ctx *o = scn_request_ctx(req, sizeof *o, "order");
    if (!o)
        return;
    o->sc = sc;
    o->req = req;
    o->w = scn_worker_of(sc, req);
    o->sku = sku;
    o->user = user;
    o->userlen = strlen(user);
    snprintf(o->rtoken, sizeof o->rtoken, "%016llx", (unsigned long long)strata_rand64());
    make_keys(&o->keys, sku, user, 1, 0); /* the sale's keys; a shard's once the state is known */
    int rc = strata_l1_get_copy(sc->l1, o->keys.k[K_FLAG], o->keys.len[K_FLAG], &o->st,
                                sizeof o->st, NULL);
    if (rc == STRATA_L1_HIT) {
        order_after_state(o);
        return;
    }
    fetch_state(o);
}

/* ---- GET /v1/flashsales/{sku} ------------------------------------------------------- */

typedef struct status_ctx {
    strata_scenarios *sc;
    strata_http_req *req;
    fs_keys keys;
    const char *sku;
    fs_state st;
    int outstanding, failed; /* sharded: GETs of the shards' stock in flight; first failure */
    int64_t left;
} status_ctx;

static void respond_status(status_ctx *c) {
    const fs_state *st = &c->st;
    int64_t now = strata_clock_wall_ms(c->sc->env.clock);
    int64_t left = c->left < 0 ? 0 : c->left;
    const char *s = now < st->starts_ms                     ? "not_started"
                    : st->ends_ms > 0 && now >= st->ends_ms ? "ended"
                    : st->soldout || left == 0              ? "sold_out"
                                                            : "open";
    strata_http_respond_jsonf(c->req, 200,
                              "{\"sku\":\"%s\",\"stock_total\":%lld,\"stock_left\":%lld,"
                              "\"sold\":%lld,\"starts_at_ms\":%lld,\"ends_at_ms\":%lld,"
                              "\"per_user_limit\":%lld,\"shards\":%d,\"status\":\"%s\"}",
                              c->sku, (long long)st->stock_total, (long long)left,
                              (long long)(st->stock_total - left), (long long)st->starts_ms,
                              (long long)st->ends_ms, (long long)st->per_user_limit,
                              (int)st->shards, s);
}

static void on_shard_stock(void *ud, int status, const strata_redis_reply *r) {
    status_ctx *c = ud;
    if (status == STRATA_OK && r && r->type == STRATA_REPLY_STRING)
        c->left += strtoll(r->str, NULL, 10);
    else if (status == STRATA_OK && !(r && r->type == STRATA_REPLY_NIL))
        status = STRATA_EPROTO;
    if (status != STRATA_OK && c->failed == STRATA_OK)
        c->failed = status;
    if (--c->outstanding > 0)
        return;
    if (c->failed != STRATA_OK)
        scn_respond_failure(c->req, c->failed, "sale state");
    else
        respond_status(c);
}

static void on_status(void *ud, int status, const strata_redis_reply *r) {
    status_ctx *c = ud;
    if (status != STRATA_OK) {
        scn_respond_failure(c->req, status, "sale state");
        return;
    }
    if (state_from_reply(r, &c->st) != STRATA_OK) {
        scn_respond_failure(c->req, STRATA_EPROTO, "sale state");
        return;
    }
    if (!c->st.exists) {
        strata_http_respond_error(c->req, 404, "not_found", "no sale %s", c->sku);
        return;
    }
    cache_state(c->sc, &c->keys, &c->st);
    c->left = c->st.stock_left;
    if (c->st.shards <= 1) {
        respond_status(c);
        return;
    }
    /* Sharded: the sum of the shards' stock (one GET each, in their own slots; each only
     * decreases, so the sum is a value the stock had or will have passed). */
    c->left = 0;
    c->outstanding = c->st.shards;
    scn_worker *w = scn_worker_of(c->sc, c->req);
    for (int i = 0; i < c->st.shards; i++) {
        char key[112];
        char tag[96];
        shard_tag(tag, sizeof tag, c->sku, c->st.shards, i);
        int kl = snprintf(key, sizeof key, "fs:{%s}:stock", tag);
        const char *argv[2] = {"GET", key};
        size_t al[2] = {3, (size_t)kl};
        strata_redis_call call = {0};
        call.timeout_ms = (uint32_t)strata_http_remaining_ms(c->req);
        int rc = strata_redis_command_argv(w->redis, &call, on_shard_stock, c, 2, argv, al);
        if (rc != STRATA_OK) {
            /* this GET's callback never comes: count it as done, with the failure */
            on_shard_stock(c, rc, NULL);
        }
    }
}

static void get_sale(strata_http_req *req, void *ctx) {
    strata_scenarios *sc = ctx;
    const char *sku = path_sku(req);
    if (!sku)
        return;
    status_ctx *c = scn_request_ctx(req, sizeof *c, "sale state");
    if (!c)
        return;
    c->sc = sc;
    c->req = req;
    c->sku = sku;
    make_keys(&c->keys, sku, NULL, 1, 0);
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(req);
    const char *keys[3] = {c->keys.k[K_SALESTOCK], c->keys.k[K_META], c->keys.k[K_FLAG]};
    size_t kl[3] = {c->keys.len[K_SALESTOCK], c->keys.len[K_META], c->keys.len[K_FLAG]};
    int rc = strata_redis_evalsha(scn_worker_of(sc, req)->redis, &call, &s_status, on_status, c, 3,
                                  keys, kl, 0, NULL, NULL);
    if (rc != STRATA_OK)
        scn_respond_failure(req, rc, "sale state");
}

/* ---- POST /v1/flashsales (admin) ------------------------------------------------------- */

/*
 * Creation: the database row first (the sale's record); the sale's event
 * streams registered for the persister (before anything can be appended);
 * for a sharded sale each shard's stock (SET NX: a retry keeps it); last the
 * meta and the flag, which make the sale visible.  A retry after a lost reply
 * or a crash finishes the sale as the row records it.
 */
typedef struct create_ctx {
    strata_scenarios *sc;
    strata_http_req *req;
    scn_worker *w;
    const char *sku;
    int64_t stock, starts_ms, ends_ms, per_user_limit, shards, now_ms;
    fs_keys keys;
    strata_buf dberr;
    int db_status;
    int differs;             /* the row exists with other parameters: 409 after finishing it */
    int outstanding, failed; /* shard stock loads in flight; first failure */
} create_ctx;

static int create_job(strata_db_conn *c, void *arg) {
    create_ctx *cc = arg;
    strata_db_param p[7] = {strata_db_p_text(cc->sku),           strata_db_p_int(cc->stock),
                            strata_db_p_int(cc->starts_ms),      strata_db_p_int(cc->ends_ms),
                            strata_db_p_int(cc->per_user_limit), strata_db_p_int(cc->now_ms),
                            strata_db_p_int(cc->shards)};
    int rc = strata_db_query(c,
                             "INSERT INTO flashsales (sku, stock_total, starts_at_ms, ends_at_ms, "
                             "per_user_limit, created_at_ms, shards) "
                             "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                             p, 7, NULL, NULL, &cc->dberr);
    if (rc != STRATA_EEXIST)
        return rc;
    /* Created before: Redis is loaded from the row, whatever this request asks. */
    strata_db_result *res = NULL;
    int qrc = strata_db_query(c,
                              "SELECT stock_total, starts_at_ms, ends_at_ms, per_user_limit, "
                              "shards FROM flashsales WHERE sku = $1",
                              p, 1, &res, NULL, &cc->dberr);
    if (qrc == STRATA_OK && strata_db_result_rows(res) == 1) {
        int64_t v[5];
        for (int i = 0; i < 5; i++)
            v[i] = strata_db_result_int64(res, 0, i, 0);
        cc->differs = v[0] != cc->stock || v[1] != cc->starts_ms || v[2] != cc->ends_ms ||
                      v[3] != cc->per_user_limit || v[4] != cc->shards;
        cc->stock = v[0];
        cc->starts_ms = v[1];
        cc->ends_ms = v[2];
        cc->per_user_limit = v[3];
        cc->shards = v[4] >= 1 && v[4] <= MAX_SHARDS ? v[4] : 1;
    } else if (qrc == STRATA_OK) {
        qrc = STRATA_EPROTO;
    }
    strata_db_result_free(&res);
    return qrc == STRATA_OK ? STRATA_EEXIST : qrc;
}

static void create_fail(create_ctx *cc, int status, const char *what) {
    strata_buf_free(&cc->dberr);
    scn_respond_failure(cc->req, status, what);
}

static void respond_sale_created(create_ctx *cc) {
    strata_buf_free(&cc->dberr);
    if (cc->differs) {
        strata_http_respond_error(cc->req, 409, "exists",
                                  "sale %s already exists with other parameters", cc->sku);
        return;
    }
    strata_http_respond_jsonf(cc->req, 201,
                              "{\"sku\":\"%s\",\"stock\":%lld,\"starts_at_ms\":%lld,"
                              "\"ends_at_ms\":%lld,\"per_user_limit\":%lld,\"shards\":%lld,"
                              "\"strategy\":\"%s\"}",
                              cc->sku, (long long)cc->stock, (long long)cc->starts_ms,
                              (long long)cc->ends_ms, (long long)cc->per_user_limit,
                              (long long)cc->shards,
                              cc->sc->cfg.flashsale_segment_lock ? "segment-lock" : "lua");
}

/* The last Redis step of a creation (baseline segments, sharded registration): answer 201. */
static void on_created_last_step(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    (void)r;
    if (status != STRATA_OK) {
        create_fail(cc, status, "finish creating the sale");
        return;
    }
    respond_sale_created(cc);
}

static void on_redis_create(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != STRATA_REPLY_STRING) {
        create_fail(cc, status != STRATA_OK ? status : STRATA_EPROTO, "create sale");
        return;
    }
    if (strcmp(r->element[0]->str, "exists") == 0 && cc->db_status == STRATA_EEXIST) {
        strata_buf_free(&cc->dberr);
        strata_http_respond_error(cc->req, 409, "exists", "sale %s already exists", cc->sku);
        return;
    }
    strata_l1_invalidate(cc->sc->l1, cc->keys.k[K_FLAG], cc->keys.len[K_FLAG]);
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(cc->req);
    if (cc->shards > 1) {
        /* The sweeper's list of sharded sales (it finishes reservations left by crashes). */
        char member[96];
        int ml = snprintf(member, sizeof member, "%s#%lld", cc->sku, (long long)cc->shards);
        const char *argv[3] = {"SADD", SHARDED_SALES, member};
        size_t al[3] = {4, strlen(SHARDED_SALES), (size_t)ml};
        int rc =
            strata_redis_command_argv(cc->w->redis, &call, on_created_last_step, cc, 3, argv, al);
        if (rc != STRATA_OK)
            create_fail(cc, rc, "register the sharded sale");
        return;
    }
    if (!cc->sc->cfg.flashsale_segment_lock) {
        respond_sale_created(cc);
        return;
    }
    /* The baseline's 10 stock segments (the Lua path ignores them; SET NX keeps a retry safe). */
    char stock[24], segkeys[NSEGMENTS][112];
    const char *keys[NSEGMENTS];
    size_t kl[NSEGMENTS];
    for (int i = 0; i < NSEGMENTS; i++) {
        kl[i] = (size_t)snprintf(segkeys[i], sizeof segkeys[i], "fs:{%s}:seg:%d", cc->sku, i);
        keys[i] = segkeys[i];
    }
    snprintf(stock, sizeof stock, "%lld", (long long)cc->stock);
    const char *av[1] = {stock};
    size_t al[1] = {strlen(stock)};
    int rc = strata_redis_evalsha(cc->w->redis, &call, &s_seg_create, on_created_last_step, cc,
                                  NSEGMENTS, keys, kl, 1, av, al);
    if (rc != STRATA_OK)
        create_fail(cc, rc, "create segments");
}

static void create_in_redis(create_ctx *cc) {
    char a[5][24];
    snprintf(a[0], sizeof a[0], "%lld", (long long)cc->stock);
    snprintf(a[1], sizeof a[1], "%lld", (long long)cc->starts_ms);
    snprintf(a[2], sizeof a[2], "%lld", (long long)cc->ends_ms);
    snprintf(a[3], sizeof a[3], "%lld", (long long)cc->per_user_limit);
    snprintf(a[4], sizeof a[4], "%lld", (long long)cc->shards);
    const char *keys[3] = {cc->keys.k[K_SALESTOCK], cc->keys.k[K_META], cc->keys.k[K_FLAG]};
    size_t kl[3] = {cc->keys.len[K_SALESTOCK], cc->keys.len[K_META], cc->keys.len[K_FLAG]};
    const char *av[5] = {a[0], a[1], a[2], a[3], a[4]};
    size_t al[5] = {strlen(a[0]), strlen(a[1]), strlen(a[2]), strlen(a[3]), strlen(a[4])};
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(cc->req);
    call.wait_replicas = cc->sc->cfg.wait_replicas;
    call.wait_timeout_ms = cc->sc->cfg.wait_timeout_ms;
    int rc = strata_redis_evalsha(cc->w->redis, &call, &s_create, on_redis_create, cc, 3, keys, kl,
                                  5, av, al);
    if (rc != STRATA_OK)
        create_fail(cc, rc, "create sale");
}

static void on_shard_loaded(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    (void)r;
    if (status != STRATA_OK && cc->failed == STRATA_OK)
        cc->failed = status;
    if (--cc->outstanding > 0)
        return;
    if (cc->failed != STRATA_OK)
        create_fail(cc, cc->failed, "load the sale's stock shards");
    else
        create_in_redis(cc);
}

/* Shard i holds stock/K, the first stock%K shards one more. */
static void load_shards(create_ctx *cc) {
    cc->outstanding = (int)cc->shards;
    for (int i = 0; i < (int)cc->shards; i++) {
        int64_t share = cc->stock / cc->shards + (i < cc->stock % cc->shards ? 1 : 0);
        char tag[96], key[112], val[24];
        shard_tag(tag, sizeof tag, cc->sku, (int)cc->shards, i);
        int kl = snprintf(key, sizeof key, "fs:{%s}:stock", tag);
        int vl = snprintf(val, sizeof val, "%lld", (long long)share);
        const char *argv[4] = {"SET", key, val, "NX"};
        size_t al[4] = {3, (size_t)kl, (size_t)vl, 2};
        strata_redis_call call = {0};
        call.timeout_ms = (uint32_t)strata_http_remaining_ms(cc->req);
        call.wait_replicas = cc->sc->cfg.wait_replicas;
        call.wait_timeout_ms = cc->sc->cfg.wait_timeout_ms;
        int rc = strata_redis_command_argv(cc->w->redis, &call, on_shard_loaded, cc, 4, argv, al);
        if (rc != STRATA_OK)
            on_shard_loaded(cc, rc, NULL); /* its callback never comes */
    }
}

static void on_registered(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    (void)r;
    if (status != STRATA_OK) {
        create_fail(cc, status, "register the sale's event stream");
        return;
    }
    if (cc->shards > 1)
        load_shards(cc);
    else
        create_in_redis(cc);
}

static void on_db_created(int status, void *arg) {
    create_ctx *cc = arg;
    cc->db_status = status;
    if (status != STRATA_OK && status != STRATA_EEXIST) {
        /* The row is the sale's record: without it nothing is created in Redis. */
        create_fail(cc, status, "create sale in the database");
        return;
    }
    if (cc->sc->cfg.flashsale_segment_lock && cc->shards > 1) {
        strata_buf_free(&cc->dberr);
        strata_http_respond_error(cc->req, 409, "exists",
                                  "sale %s exists with stock shards, which the segment-lock "
                                  "strategy does not serve",
                                  cc->sku);
        return;
    }
    /* EEXIST: created before; Redis decides (a retry after a lost reply completes it).
     * The streams are registered before anything can be appended to them. */
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(cc->req);
    char streams[MAX_SHARDS][112];
    const char *argv[2 + MAX_SHARDS] = {"SADD", SCN_STREAMS_REGISTRY};
    size_t al[2 + MAX_SHARDS] = {4, strlen(SCN_STREAMS_REGISTRY)};
    for (int i = 0; i < (int)cc->shards; i++) {
        char tag[96];
        shard_tag(tag, sizeof tag, cc->sku, (int)cc->shards, i);
        al[2 + i] = (size_t)snprintf(streams[i], sizeof streams[i], "fs:{%s}:events", tag);
        argv[2 + i] = streams[i];
    }
    int rc = strata_redis_command_argv(cc->w->redis, &call, on_registered, cc, 2 + (int)cc->shards,
                                       argv, al);
    if (rc != STRATA_OK)
        create_fail(cc, rc, "register the sale's event stream");
}

static void post_sale(strata_http_req *req, void *ctx) {
    strata_scenarios *sc = ctx;
    cJSON *doc;
    if (strata_http_read_json(req, &doc) < 0)
        return;
    static const char *const allowed[] = {
        "sku", "stock", "starts_at", "ends_at", "per_user_limit", "shards", NULL};
    strata_buf err = STRATA_BUF_INIT;
    const char *sku;
    int64_t stock = 0, per_user = 1, shards = 1;
    int rc = strata_json_only_fields(doc, allowed, &err);
    if (rc == STRATA_OK)
        rc = strata_json_get_int(doc, "stock", true, 0, 1000000000, &stock, &err);
    if (rc == STRATA_OK)
        rc = scn_opt(strata_json_get_int(doc, "per_user_limit", false, 1, 1, &per_user, &err));
    if (rc == STRATA_OK)
        rc = scn_opt(strata_json_get_int(doc, "shards", false, 1, MAX_SHARDS, &shards, &err));
    if (rc == STRATA_OK && shards > 1 && sc->cfg.flashsale_segment_lock) {
        strata_buf_printf(&err, "field \"shards\" must be 1 with --flashsale-strategy="
                                "segment-lock (its 10 segments live in one slot)");
        rc = STRATA_EINVAL;
    }
    if (rc != STRATA_OK) {
        strata_http_respond_error(req, 400, "invalid_field", "%s", err.data ? err.data : "");
        strata_buf_free(&err);
        return;
    }
    strata_buf_free(&err);
    if (!scn_json_id(req, doc, "sku", &sku))
        return;
    int64_t now = strata_clock_wall_ms(sc->env.clock);
    int64_t starts = now, ends = 0;
    if (!scn_json_time(req, doc, "starts_at", &starts) ||
        !scn_json_time(req, doc, "ends_at", &ends))
        return;
    if (ends != 0 && ends <= starts) {
        strata_http_respond_error(req, 400, "invalid_field", "ends_at must be after starts_at");
        return;
    }
    create_ctx *cc = scn_request_ctx(req, sizeof *cc, "create sale");
    if (!cc)
        return;
    cc->sc = sc;
    cc->req = req;
    cc->w = scn_worker_of(sc, req);
    cc->sku = sku;
    cc->stock = stock;
    cc->starts_ms = starts;
    cc->ends_ms = ends;
    cc->per_user_limit = per_user;
    cc->shards = shards;
    cc->now_ms = now;
    make_keys(&cc->keys, sku, NULL, 1, 0);
    rc = strata_db_submit(sc->env.db, cc->w->loop, create_job, on_db_created, cc);
    if (rc != STRATA_OK)
        scn_respond_failure(req, rc, "create sale in the database");
}

/* ---- GET /v1/orders/{order_id} -------------------------------------------------------- */

typedef struct lookup_ctx {
    strata_scenarios *sc;
    strata_http_req *req;
    const char *order_id;
    char sku[72];
    char user[72];
    int shard; /* -1: an unsharded sale's order ("<sku>-<n>"), else "<sku>-<shard>.<n>" */
    strata_buf dberr;
    int found;
    int64_t created_ms;
} lookup_ctx;

static int lookup_job(strata_db_conn *c, void *arg) {
    lookup_ctx *lc = arg;
    strata_db_param p[1] = {strata_db_p_text(lc->order_id)};
    strata_db_result *res = NULL;
    int rc =
        strata_db_query(c, "SELECT sku, user_id, created_at_ms FROM orders WHERE order_id = $1", p,
                        1, &res, NULL, &lc->dberr);
    if (rc == STRATA_OK && strata_db_result_rows(res) == 1) {
        lc->found = 1;
        snprintf(lc->sku, sizeof lc->sku, "%s", strata_db_result_value(res, 0, 0, NULL));
        snprintf(lc->user, sizeof lc->user, "%s", strata_db_result_value(res, 0, 1, NULL));
        lc->created_ms = strata_db_result_int64(res, 0, 2, 0);
    }
    strata_db_result_free(&res);
    return rc;
}

static void on_redis_lookup(void *ud, int status, const strata_redis_reply *r) {
    lookup_ctx *lc = ud;
    if (status != STRATA_OK) {
        scn_respond_failure(lc->req, status, "order lookup");
        return;
    }
    if (!r || r->type != STRATA_REPLY_STRING) {
        strata_http_respond_error(lc->req, 404, "not_found", "no order %s", lc->order_id);
        return;
    }
    strata_buf b = STRATA_BUF_INIT;
    strata_buf_printf(&b, "{\"order_id\":\"%s\",\"sku\":\"%s\",\"user_id\":", lc->order_id,
                      lc->sku);
    strata_buf_json_str(&b, r->str, r->len);
    strata_buf_puts(&b, ",\"persisted\":false}");
    strata_http_respond_json(lc->req, 200, b.data, b.len);
    strata_buf_free(&b);
}

static void on_db_lookup(int status, void *arg) {
    lookup_ctx *lc = arg;
    strata_buf_free(&lc->dberr);
    if (status == STRATA_OK && lc->found) {
        strata_http_respond_jsonf(lc->req, 200,
                                  "{\"order_id\":\"%s\",\"sku\":\"%s\",\"user_id\":\"%s\","
                                  "\"created_at_ms\":%lld,\"persisted\":true}",
                                  lc->order_id, lc->sku, lc->user, (long long)lc->created_ms);
        return;
    }
    /* Not persisted yet (or the database is down): Redis holds it until the persister runs. */
    char key[112];
    int klen = lc->shard < 0 ? snprintf(key, sizeof key, "fs:{%s}:orders", lc->sku)
                             : snprintf(key, sizeof key, "fs:{%s#%d}:orders", lc->sku, lc->shard);
    const char *argv[3] = {"HGET", key, lc->order_id};
    size_t al[3] = {4, (size_t)klen, strlen(lc->order_id)};
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(lc->req);
    int rc = strata_redis_command_argv(scn_worker_of(lc->sc, lc->req)->redis, &call,
                                       on_redis_lookup, lc, 3, argv, al);
    if (rc != STRATA_OK)
        scn_respond_failure(lc->req, rc, "order lookup");
}

/*
 * Order ids: "<sku>-<n>" for an unsharded sale, "<sku>-<shard>.<n>" for a
 * sharded one (the shard whose stock it took, whose keys index it).  A sku may
 * hold '-' and '.', but what follows the last '-' is digits, or digits '.'
 * digits, so the split is unambiguous.  Returns the shard (-1 unsharded) or -2
 * when `id` cannot be an order id.
 */
static int parse_order_id(const char *id, size_t *skulen) {
    size_t len = id ? strlen(id) : 0;
    const char *dash = id ? strrchr(id, '-') : NULL;
    if (!id || len > 64 + 1 + 3 + 20 || !dash || dash == id ||
        !scn_valid_id(id, (size_t)(dash - id)))
        return -2;
    const char *t = dash + 1;
    size_t d1 = strspn(t, "0123456789");
    if (d1 == 0 || d1 > 20)
        return -2;
    *skulen = (size_t)(dash - id);
    if (t[d1] == '\0')
        return -1;
    size_t d2 = strspn(t + d1 + 1, "0123456789");
    if (t[d1] != '.' || d1 > 2 || d2 == 0 || d2 > 20 || t[d1 + 1 + d2] != '\0')
        return -2;
    int shard = atoi(t);
    return shard < MAX_SHARDS ? shard : -2;
}

static void get_order(strata_http_req *req, void *ctx) {
    strata_scenarios *sc = ctx;
    const char *id = strata_http_param(req, "order_id");
    size_t skulen = 0;
    int shard = parse_order_id(id, &skulen);
    if (shard == -2) {
        strata_http_respond_error(
            req, 404, "not_found",
            "an order id looks like <sku>-<number> or <sku>-<shard>.<number>");
        return;
    }
    lookup_ctx *lc = scn_request_ctx(req, sizeof *lc, "order lookup");
    if (!lc)
        return;
    lc->sc = sc;
    lc->req = req;
    lc->order_id = id;
    lc->shard = shard;
    snprintf(lc->sku, sizeof lc->sku, "%.*s", (int)skulen, id);
    int rc = strata_db_submit(sc->env.db, strata_http_loop(req), lookup_job, on_db_lookup, lc);
    if (rc != STRATA_OK)
        on_db_lookup(rc, lc);
}

/* ---- the seed's segment-lock baseline ------------------------------------------------ */

/*
 * Per order: SET lock NX PX -> HGET buyer -> GET segment -> DECR segment ->
 * INCR seq -> (HSET buyer, HSET order, XADD event, DECR stock) pipelined ->
 * release the lock (compare-and-delete script, pipelined).  A busy lock is
 * retried every millisecond; an empty segment moves on to the next one, so a
 * sale is sold out only when all ten are empty.  Correct (no oversell: the
 * lock serialises GET/DECR per segment; one user's requests walk the
 * segments in the same order, so the buyer check under the lock holds), but
 * every order costs ~6 round trips plus lock waits.  The order id is kept in
 * o->order_id; the lock key is rebuilt from o->seg.
 */
static void seg_lock_try(void *arg);

static int seg_send(order_ctx *o, strata_redis_cb cb, int argc, const char *const *argv) {
    size_t al[12];
    for (int i = 0; i < argc; i++)
        al[i] = strlen(argv[i]);
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    int rc = strata_redis_command_argv(o->w->redis, &call, cb, o, argc, argv, al);
    if (rc != STRATA_OK && cb)
        scn_respond_failure(o->req, rc, "order (segment-lock)");
    return rc;
}

static void seg_lock_name(order_ctx *o, char *buf, size_t cap) {
    snprintf(buf, cap, "fs:{%s}:lock:%d", o->sku, o->seg);
}

static void seg_unlock(order_ctx *o) {
    char lk[112];
    seg_lock_name(o, lk, sizeof lk);
    const char *keys[1] = {lk};
    size_t kl[1] = {strlen(lk)};
    const char *av[1] = {o->token};
    size_t al[1] = {strlen(o->token)};
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    /* Pipelined behind the last command; a lost release expires after 200 ms. */
    strata_redis_evalsha(o->w->redis, &call, &s_unlock, NULL, NULL, 1, keys, kl, 1, av, al);
}

static bool seg_ok(order_ctx *o, int status) {
    if (status == STRATA_OK)
        return true;
    scn_respond_failure(o->req, status, "order (segment-lock)");
    return false;
}

static void on_seg_recorded(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    (void)r;
    seg_unlock(o);
    if (seg_ok(o, status))
        respond_created(o, o->order_id, strlen(o->order_id), -1);
}

static void on_seg_seq(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (status == STRATA_OK && (!r || r->type != STRATA_REPLY_INTEGER))
        status = STRATA_EPROTO;
    if (!seg_ok(o, status)) {
        seg_unlock(o);
        return;
    }
    snprintf(o->order_id, sizeof o->order_id, "%s-%lld", o->sku, r->integer);
    const char *h1[] = {"HSET", o->keys.k[K_BUYERS], o->user, o->order_id};
    const char *h2[] = {"HSET", o->keys.k[K_ORDERS], o->order_id, o->user};
    const char *xa[] = {"XADD", o->keys.k[K_EVENTS], "*",   "type", "order",
                        "id",   o->order_id,         "sku", o->sku, "user",
                        o->user};
    const char *ds[] = {"DECR", o->keys.k[K_STOCK]};
    /* Pipelined: the client keeps per-connection order, so only the last reply is awaited. */
    seg_send(o, NULL, 4, h1);
    seg_send(o, NULL, 4, h2);
    seg_send(o, NULL, 11, xa);
    seg_send(o, on_seg_recorded, 2, ds);
}

static void on_seg_decr(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    (void)r;
    if (!seg_ok(o, status)) {
        seg_unlock(o);
        return;
    }
    const char *inc[] = {"INCR", o->keys.k[K_SEQ]};
    seg_send(o, on_seg_seq, 2, inc);
}

static void on_seg_get(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (!seg_ok(o, status)) {
        seg_unlock(o);
        return;
    }
    long long left = r && r->type == STRATA_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
    if (left <= 0) {
        seg_unlock(o);
        if (++o->segs_tried >= NSEGMENTS) {
            mark_sold_out(o);
            strata_http_respond_error(o->req, 409, "sold_out", "sale %s is sold out", o->sku);
            return;
        }
        o->seg = (o->seg + 1) % NSEGMENTS;
        o->lock_tries = 0;
        seg_lock_try(o);
        return;
    }
    char segkey[112];
    snprintf(segkey, sizeof segkey, "fs:{%s}:seg:%d", o->sku, o->seg);
    const char *decr[] = {"DECR", segkey};
    seg_send(o, on_seg_decr, 2, decr);
}

static void on_seg_buyer(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (!seg_ok(o, status)) {
        seg_unlock(o);
        return;
    }
    if (r && r->type == STRATA_REPLY_STRING) {
        seg_unlock(o);
        respond_already(o->req, r->str, r->len);
        return;
    }
    char segkey[112];
    snprintf(segkey, sizeof segkey, "fs:{%s}:seg:%d", o->sku, o->seg);
    const char *get[] = {"GET", segkey};
    seg_send(o, on_seg_get, 2, get);
}

static void on_seg_lock(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (!seg_ok(o, status))
        return;
    if (!r || r->type == STRATA_REPLY_NIL) { /* busy: spin with a 1 ms back-off */
        if (++o->lock_tries > 2000 || remaining_ms(o) < 10 ||
            scn_after(o->w->loop, 1, seg_lock_try, o) != STRATA_OK)
            scn_respond_failure(o->req, STRATA_ETIMEDOUT, "order (segment-lock)");
        return;
    }
    const char *hget[] = {"HGET", o->keys.k[K_BUYERS], o->user};
    seg_send(o, on_seg_buyer, 3, hget);
}

static void seg_lock_try(void *arg) {
    order_ctx *o = arg;
    char lk[112];
    seg_lock_name(o, lk, sizeof lk);
    const char *set[] = {"SET", lk, o->token, "NX", "PX", "200"};
    seg_send(o, on_seg_lock, 6, set);
}

/* The baseline runs the per-user limiter as its own call, then the lock protocol. */
static void on_seg_limit(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    long long v[4];
    strata_gcra_result g;
    if (status == STRATA_OK && r && r->type == STRATA_REPLY_ARRAY && r->elements == 4) {
        for (int i = 0; i < 4; i++)
            v[i] = r->element[i]->integer;
        if (strata_gcra_parse(v, 4, &g) == STRATA_OK) {
            if (g.allowed)
                seglock_start(o);
            else
                scn_respond_limited(o->req, g.retry_after_us);
            return;
        }
        status = STRATA_EPROTO;
    }
    scn_respond_failure(o->req, status, "rate limiter");
}

static void seg_limit(order_ctx *o) {
    if (o->skip_limit) {
        seglock_start(o);
        return;
    }
    char args[3][24];
    strata_gcra_args(o->sc->cfg.user_rate, 1000, o->sc->cfg.user_burst, 1, args);
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    const char *keys[1] = {o->keys.k[K_LIMIT]};
    const char *av[3] = {args[0], args[1], args[2]};
    size_t al[3] = {strlen(args[0]), strlen(args[1]), strlen(args[2])};
    int rc = strata_redis_evalsha(o->w->redis, &call, &s_gcra, on_seg_limit, o, 1, keys,
                                  &o->keys.len[K_LIMIT], 3, av, al);
    if (rc != STRATA_OK)
        scn_respond_failure(o->req, rc, "rate limiter");
}

static void seglock_start(order_ctx *o) {
    o->seg = (int)(XXH3_64bits(o->user, o->userlen) % NSEGMENTS);
    o->segs_tried = 0;
    o->lock_tries = 0;
    snprintf(o->token, sizeof o->token, "%016llx", (unsigned long long)strata_rand64());
    seg_lock_try(o);
}

/* ---- the sweeper: reservations left by crashed servers ------------------------------------ */

/*
 * Every second on the scenario control thread (scn_flashsale_sweep): for each
 * sharded sale of SHARDED_SALES and each of its shards h, the reservations of
 * h older than SWEEP_AGE_MS (flashsale_pending.lua), each finished as a live
 * request would: take from j (idempotent: it returns the order if the crashed
 * request's take ran), then confirm the order or release the reservation.
 * Rolling forward is what the user asked for (their request may have been
 * answered 503, and the API says a retry then reveals the order); it is never
 * wrong to race a live request doing the same, every step being idempotent.
 * A sale leaves the list once sold out with nothing pending for SWEEP_GRACE_MS
 * (a request that read it before the sell-out may still leave a reservation
 * within its deadline); a reservation after that (a --request-timeout above
 * the grace) is finished by the user's next request.
 * One sweep runs at a time; it stops at the first Redis failure (next tick).
 */
typedef struct fs_sweep {
    strata_scenarios *sc;
    strata_redis_reply *sales; /* SMEMBERS reply (owned) */
    size_t sale;
    char sku[72];
    int shards, shard;
    long long pending;         /* reservations of the sale's shards (any age) */
    strata_redis_reply *items; /* the current shard's old reservations (owned) */
    size_t item;
    int take;
    char order[112];
    char resv[16];
} fs_sweep;

static int sweep_running; /* control thread only */

static void sweep_next_sale(fs_sweep *s);
static void sweep_next_item(fs_sweep *s);

static void sweep_end(fs_sweep *s) {
    strata_redis_reply_free(s->sales);
    strata_redis_reply_free(s->items);
    strata_free(s);
    sweep_running = 0;
}

static void sweep_call(fs_sweep *s, const strata_redis_script *script, strata_redis_cb cb,
                       int nkeys, const char *const *keys, int nargs, const char *const *args) {
    size_t kl[8], al[8];
    for (int i = 0; i < nkeys; i++)
        kl[i] = strlen(keys[i]);
    for (int i = 0; i < nargs; i++)
        al[i] = strlen(args[i]);
    strata_redis_call call = {0};
    call.timeout_ms = 2000;
    call.wait_replicas = s->sc->cfg.wait_replicas;
    call.wait_timeout_ms = s->sc->cfg.wait_timeout_ms;
    if (strata_redis_evalsha(s->sc->sweeper, &call, script, cb, s, nkeys, keys, kl, nargs, args,
                             al) != STRATA_OK)
        sweep_end(s);
}

/* A plain command of the sweep's chain (cb continues it); a refusal ends the sweep. */
static void sweep_command(fs_sweep *s, strata_redis_cb cb, int argc, const char *const *argv,
                          const size_t *al) {
    strata_redis_call call = {0};
    call.timeout_ms = 2000;
    if (strata_redis_command_argv(s->sc->sweeper, &call, cb, s, argc, argv, al) != STRATA_OK)
        sweep_end(s);
}

static void sweep_keys(const fs_sweep *s, int shard, fs_keys *fk, const char *user) {
    make_keys(fk, s->sku, user, s->shards, shard);
}

static void on_sweep_settle(void *ud, int status, const strata_redis_reply *r) {
    fs_sweep *s = ud;
    if (status != STRATA_OK) {
        sweep_end(s);
        return;
    }
    (void)r; /* ok, or changed: someone else moved it on, which is all we wanted */
    s->item += 2;
    sweep_next_item(s);
}

static void sweep_settle(fs_sweep *s, const char *user, const char *to) {
    fs_keys fk;
    sweep_keys(s, s->shard, &fk, user);
    const char *keys[2] = {fk.k[K_BUYERS], fk.k[K_PENDING]};
    const char *args[3] = {user, s->resv, to};
    sweep_call(s, &s_settle, on_sweep_settle, 2, keys, 3, args);
}

static void on_sweep_take(void *ud, int status, const strata_redis_reply *r) {
    fs_sweep *s = ud;
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != STRATA_REPLY_STRING) {
        sweep_end(s); /* e.g. backpressure: the next tick tries again */
        return;
    }
    const char *user = s->items->element[s->item]->str;
    const char *tag = r->element[0]->str;
    if ((strcmp(tag, "ok") == 0 || strcmp(tag, "repeat") == 0) && r->elements >= 2 &&
        r->element[1]->type == STRATA_REPLY_STRING && r->element[1]->len < sizeof s->order) {
        memcpy(s->order, r->element[1]->str, r->element[1]->len);
        s->order[r->element[1]->len] = '\0';
        sweep_settle(s, user, s->order); /* confirm */
    } else if (strcmp(tag, "sold_out") == 0) {
        sweep_settle(s, user, ""); /* release: the user's next attempt searches again */
    } else {
        s->item += 2; /* unknown_sale: leave it */
        sweep_next_item(s);
    }
}

static void sweep_next_shard(fs_sweep *s);

static void sweep_next_item(fs_sweep *s) {
    while (s->items && s->item + 1 < s->items->elements) {
        const strata_redis_reply *u = s->items->element[s->item];
        const strata_redis_reply *rec = s->items->element[s->item + 1];
        char *end = NULL;
        long j = -1;
        if (u->type == STRATA_REPLY_STRING && rec->type == STRATA_REPLY_STRING &&
            rec->len < sizeof s->resv && rec->len > 2 && rec->str[0] == 'R' && rec->str[1] == ':' &&
            scn_valid_id(u->str, u->len))
            j = strtol(rec->str + 2, &end, 10);
        if (j < 0 || j >= s->shards || j == s->shard || end != rec->str + rec->len) {
            s->item += 2; /* not ours to finish */
            continue;
        }
        memcpy(s->resv, rec->str, rec->len);
        s->resv[rec->len] = '\0';
        s->take = (int)j;
        fs_keys fk;
        sweep_keys(s, s->take, &fk, u->str);
        char maxlen[24], prefix[96];
        snprintf(maxlen, sizeof maxlen, "%llu", (unsigned long long)s->sc->cfg.stream_max_len);
        snprintf(prefix, sizeof prefix, "%s-%d.", s->sku, s->take);
        char req[160];
        req_key(req, sizeof req, s->sku, s->shards, s->take, "sweeper");
        const char *keys[6] = {fk.k[K_STOCK],  fk.k[K_TAKEN],  fk.k[K_SEQ],
                               fk.k[K_EVENTS], fk.k[K_ORDERS], req};
        const char *args[4] = {s->sku, u->str, maxlen, prefix};
        sweep_call(s, &s_take, on_sweep_take, 6, keys, 4, args);
        return;
    }
    s->shard++;
    sweep_next_shard(s);
}

static void on_sweep_pending(void *ud, int status, const strata_redis_reply *r) {
    fs_sweep *s = ud;
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != STRATA_REPLY_INTEGER) {
        sweep_end(s);
        return;
    }
    s->pending += r->element[0]->integer;
    strata_redis_reply_free(s->items);
    s->items = strata_redis_reply_dup(r);
    s->item = 1;
    if (!s->items) {
        sweep_end(s);
        return;
    }
    sweep_next_item(s);
}

static int quiet_key(const fs_sweep *s, char *buf, size_t cap) {
    const strata_redis_reply *m = s->sales->element[s->sale];
    int n = snprintf(buf, cap, SWEEP_QUIET "%s", m->str);
    return n > 0 && (size_t)n < cap ? n : -1;
}

/* Drops the sale's quiet marker (fire and forget): its grace starts again next time. */
static void forget_quiet(const fs_sweep *s) {
    char qk[128];
    int ql = quiet_key(s, qk, sizeof qk);
    const char *dv[2] = {"DEL", qk};
    size_t dl[2] = {3, (size_t)ql};
    if (ql > 0)
        strata_redis_command_argv(s->sc->sweeper, NULL, NULL, NULL, 2, dv, dl);
}

/* SET quiet NX GET: nil the first time the sale is seen sold out and quiet (the grace
 * starts), else the time it was; after SWEEP_GRACE_MS the sale leaves the list. */
static void on_sweep_quiet(void *ud, int status, const strata_redis_reply *r) {
    fs_sweep *s = ud;
    if (status != STRATA_OK) {
        sweep_end(s);
        return;
    }
    int64_t now = strata_clock_wall_ms(s->sc->env.clock);
    if (r && r->type == STRATA_REPLY_STRING && now - strtoll(r->str, NULL, 10) >= SWEEP_GRACE_MS) {
        const strata_redis_reply *m = s->sales->element[s->sale];
        const char *argv[3] = {"SREM", SHARDED_SALES, m->str};
        size_t al[3] = {4, strlen(SHARDED_SALES), m->len};
        strata_redis_command_argv(s->sc->sweeper, NULL, NULL, NULL, 3, argv, al);
        forget_quiet(s);
    }
    s->sale++;
    sweep_next_sale(s);
}

static void on_sweep_flag(void *ud, int status, const strata_redis_reply *r) {
    fs_sweep *s = ud;
    if (status != STRATA_OK) {
        sweep_end(s);
        return;
    }
    char qk[128], now[24];
    int ql = quiet_key(s, qk, sizeof qk);
    if (r && r->type == STRATA_REPLY_STRING && strcmp(r->str, "soldout") == 0 && ql > 0) {
        int nl =
            snprintf(now, sizeof now, "%lld", (long long)strata_clock_wall_ms(s->sc->env.clock));
        const char *argv[7] = {"SET", qk, now, "NX", "GET", "PX", "86400000"};
        size_t al[7] = {3, (size_t)ql, (size_t)nl, 2, 3, 2, 8};
        sweep_command(s, on_sweep_quiet, 7, argv, al);
        return;
    }
    s->sale++;
    sweep_next_sale(s);
}

static void sweep_next_shard(fs_sweep *s) {
    if (s->shard < s->shards) {
        fs_keys fk;
        sweep_keys(s, s->shard, &fk, NULL);
        char age[24];
        snprintf(age, sizeof age, "%d", SWEEP_AGE_MS);
        const char *keys[2] = {fk.k[K_PENDING], fk.k[K_BUYERS]};
        const char *args[2] = {age, "64"};
        sweep_call(s, &s_pending, on_sweep_pending, 2, keys, 2, args);
        return;
    }
    if (s->pending > 0) /* a reservation: the sold-out grace (if any) starts again */
        forget_quiet(s);
    if (s->pending == 0) { /* nothing pending: done with it once sold out (and quiet) */
        char flag[96];
        int fl = snprintf(flag, sizeof flag, "fsflag:{%s}", s->sku);
        const char *argv[2] = {"GET", flag};
        size_t al[2] = {3, (size_t)fl};
        sweep_command(s, on_sweep_flag, 2, argv, al);
        return;
    }
    s->sale++;
    sweep_next_sale(s);
}

static void sweep_next_sale(fs_sweep *s) {
    for (; s->sale < s->sales->elements; s->sale++) {
        const strata_redis_reply *m = s->sales->element[s->sale];
        const char *hash = m->type == STRATA_REPLY_STRING ? strrchr(m->str, '#') : NULL;
        if (!hash)
            continue;
        size_t skulen = (size_t)(hash - m->str);
        char *end = NULL;
        long k = strtol(hash + 1, &end, 10);
        if (!scn_valid_id(m->str, skulen) || k < 2 || k > MAX_SHARDS || *end != '\0')
            continue;
        memcpy(s->sku, m->str, skulen);
        s->sku[skulen] = '\0';
        s->shards = (int)k;
        s->shard = 0;
        s->pending = 0;
        sweep_next_shard(s);
        return;
    }
    sweep_end(s);
}

static void on_sweep_sales(void *ud, int status, const strata_redis_reply *r) {
    fs_sweep *s = ud;
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements == 0 ||
        !(s->sales = strata_redis_reply_dup(r))) {
        sweep_end(s);
        return;
    }
    sweep_next_sale(s);
}

void scn_flashsale_sweep(strata_scenarios *sc) {
    if (sweep_running || !sc->sweeper || sc->cfg.flashsale_segment_lock)
        return;
    fs_sweep *s = strata_calloc(1, sizeof *s);
    if (!s)
        return;
    s->sc = sc;
    sweep_running = 1;
    const char *argv[2] = {"SMEMBERS", SHARDED_SALES};
    size_t al[2] = {8, strlen(SHARDED_SALES)};
    strata_redis_call call = {0};
    call.timeout_ms = 2000;
    if (strata_redis_command_argv(sc->sweeper, &call, on_sweep_sales, s, 2, argv, al) != STRATA_OK)
        sweep_end(s);
}

/* ---- routes ------------------------------------------------------------------------ */

static int init_scripts(void) {
    static int done;
    if (done)
        return STRATA_OK;
    int rc;
    /* The order script calls the GCRA itself: compose it after strata_gcra() (lives as long
     * as the process; the script struct borrows it). */
    static strata_buf order_src = STRATA_BUF_INIT;
    const strata_embedded *e =
        strata_embedded_find(strata_scenario_lua_table, "flashsale_order.lua");
    if (!e)
        return STRATA_ENOTFOUND;
    if ((rc = strata_gcra_compose(e->data, &order_src)) ||
        (rc = strata_redis_script_init(&s_order, "flashsale_order.lua", order_src.data,
                                       order_src.len)) ||
        (rc = strata_redis_script_embedded(&s_create, strata_scenario_lua_table,
                                           "flashsale_create.lua")) ||
        (rc = strata_redis_script_embedded(&s_status, strata_scenario_lua_table,
                                           "flashsale_status.lua")) ||
        (rc = strata_redis_script_embedded(&s_seg_create, strata_scenario_lua_table,
                                           "flashsale_segments.lua")) ||
        (rc = strata_redis_script_embedded(&s_unlock, strata_scenario_lua_table,
                                           "flashsale_unlock.lua")) ||
        (rc = strata_redis_script_embedded(&s_take, strata_scenario_lua_table,
                                           "flashsale_take.lua")) ||
        (rc = strata_redis_script_embedded(&s_settle, strata_scenario_lua_table,
                                           "flashsale_settle.lua")) ||
        (rc = strata_redis_script_embedded(&s_pending, strata_scenario_lua_table,
                                           "flashsale_pending.lua")) ||
        (rc = strata_redis_script_embedded(&s_soldout, strata_scenario_lua_table,
                                           "flashsale_soldout.lua")) ||
        (rc = strata_redis_script_embedded(&s_gcra, strata_lib_lua_table, STRATA_GCRA_SCRIPT)))
        return rc;
    done = 1;
    return STRATA_OK;
}

int scn_flashsale_routes(strata_scenarios *sc, strata_server *server) {
    int rc = init_scripts();
    if (rc == STRATA_OK)
        rc = strata_server_route_ex(server, "POST", "/v1/flashsales", STRATA_ROUTE_ADMIN, post_sale,
                                    sc);
    if (rc == STRATA_OK)
        rc = strata_server_route(server, "POST", "/v1/flashsales/{sku}/orders", post_order, sc);
    if (rc == STRATA_OK)
        rc = strata_server_route(server, "GET", "/v1/flashsales/{sku}", get_sale, sc);
    if (rc == STRATA_OK)
        rc = strata_server_route(server, "GET", "/v1/orders/{order_id}", get_order, sc);
    return rc;
}

/* ---- persistence (write-behind events -> database) ------------------------------------- */

/* "order" events: one row per order.  The persister skips event ids already applied. */
static int apply_order(strata_db_conn *c, const strata_wb_event *e, void *ctx) {
    (void)ctx;
    const char *sku = strata_wb_event_get(e, "sku", NULL);
    const char *user = strata_wb_event_get(e, "user", NULL);
    const char *ts = strata_wb_event_get(e, "ts_ms", NULL);
    if (!sku || !user || !scn_valid_id(sku, strlen(sku)) || !scn_valid_id(user, strlen(user)))
        return STRATA_EINVAL; /* poison: dead-lettered after its attempts */
    strata_db_param p[4] = {strata_db_p_text(e->id), strata_db_p_text(sku), strata_db_p_text(user),
                            strata_db_p_int(ts ? strtoll(ts, NULL, 10) : 0)};
    return strata_db_query(c,
                           "INSERT INTO orders (order_id, sku, user_id, created_at_ms) "
                           "VALUES ($1, $2, $3, $4)",
                           p, 4, NULL, NULL, NULL);
}

int scn_flashsale_handlers(strata_persister *p) {
    return strata_persister_handle(p, "order", apply_order, NULL);
}
