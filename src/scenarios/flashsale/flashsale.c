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
 * user's next attempt then learns its order (409 already_purchased).
 * Persistence is write-behind: the order event is applied to the `orders`
 * table by the persister, idempotently by order id.
 *
 * --flashsale-strategy=segment-lock runs the seed's design instead: stock in
 * 10 segments, each guarded by a Redis lock taken around GET/DECR (several
 * round trips per order), as the baseline the Lua path is measured against.
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

#define NSEGMENTS 10

static strata_redis_script s_order, s_create, s_status, s_gcra, s_seg_create, s_unlock;

/* ---- schema ---------------------------------------------------------------------- */

static const strata_db_migration migrations[] = {
    {"CREATE TABLE IF NOT EXISTS flashsales (sku TEXT PRIMARY KEY, stock_total BIGINT NOT NULL, "
     "starts_at_ms BIGINT NOT NULL, ends_at_ms BIGINT NOT NULL, per_user_limit INTEGER NOT NULL, "
     "created_at_ms BIGINT NOT NULL)",
     NULL, NULL},
    {"CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, "
     "user_id TEXT NOT NULL, created_at_ms BIGINT NOT NULL, UNIQUE (sku, user_id))",
     NULL, NULL},
};

int scn_flashsale_migrations(void) {
    return strata_db_register_migrations("flashsale", migrations,
                                         (int)(sizeof migrations / sizeof migrations[0]));
}

/* ---- keys -------------------------------------------------------------------------- */

/* The first eight are the order script's KEYS, in its order. */
enum {
    K_STOCK,
    K_BUYERS,
    K_SEQ,
    K_EVENTS,
    K_FLAG,
    K_ORDERS,
    K_BUYERBITS,
    K_LIMIT,
    K_META,
    K_L1BUYERS,
    K__COUNT
};

typedef struct fs_keys {
    char k[K__COUNT][160];
    size_t len[K__COUNT];
} fs_keys;

static void make_keys(fs_keys *fk, const char *sku, const char *user) {
    static const char *const fmt[K__COUNT] = {
        "fs:{%s}:stock",  "fs:{%s}:buyers",    "fs:{%s}:seq",   "fs:{%s}:events", "fsflag:{%s}",
        "fs:{%s}:orders", "fs:{%s}:buyerbits", "rl:fs:{%s}:%s", "fs:{%s}:meta",   "fsbuyers:{%s}"};
    for (int i = 0; i < K__COUNT; i++)
        fk->len[i] = (size_t)snprintf(fk->k[i], sizeof fk->k[i], fmt[i], sku, user ? user : "");
}

/* ---- the sale's state, cached in L1 under its flag key ------------------------------- */

typedef struct fs_state {
    int64_t stock_total, starts_ms, ends_ms, per_user_limit, stock_left;
    uint8_t exists, soldout;
} fs_state;

static int state_from_reply(const strata_redis_reply *r, fs_state *st) {
    memset(st, 0, sizeof *st);
    if (!r || r->type != STRATA_REPLY_ARRAY)
        return STRATA_EPROTO;
    if (r->elements == 0)
        return STRATA_OK; /* unknown sale */
    if (r->elements != 6)
        return STRATA_EPROTO;
    for (int i = 0; i < 6; i++)
        if (r->element[i]->type != STRATA_REPLY_STRING)
            return STRATA_EPROTO;
    st->exists = 1;
    st->stock_total = strtoll(r->element[0]->str, NULL, 10);
    st->starts_ms = strtoll(r->element[1]->str, NULL, 10);
    st->ends_ms = strtoll(r->element[2]->str, NULL, 10);
    st->per_user_limit = strtoll(r->element[3]->str, NULL, 10);
    st->stock_left = strtoll(r->element[4]->str, NULL, 10);
    st->soldout = strcmp(r->element[5]->str, "soldout") == 0 || st->stock_left <= 0;
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

/* The buyers' Bloom filter of a sale: sized by its stock (immutable), so every server agrees. */
static int buyer_bloom_size(const fs_state *st, uint64_t *bits, uint32_t *k) {
    return strata_bloom_size(st->stock_total > 0 ? (uint64_t)st->stock_total : 1, 0.01, bits, k);
}

/* ---- one order request ----------------------------------------------------------- */

typedef struct order_ctx {
    strata_scenarios *sc;
    strata_http_req *req;
    scn_worker *w;
    const char *sku, *user;
    size_t userlen;
    fs_keys keys;
    fs_state st;
    int attempts;
    int skip_limit;
    /* segment-lock baseline */
    int seg, segs_tried, lock_tries;
    char token[24], order_id[96];
} order_ctx;

static void order_call(void *arg);
static void order_after_state(order_ctx *o);
static void fetch_state(void *arg);
static void sold_out_check(order_ctx *o);
static void seglock_start(order_ctx *o);
static void seg_limit(order_ctx *o);
static void respond_limited(strata_http_req *req, long long retry_after_us);

static uint32_t remaining_ms(order_ctx *o) {
    uint64_t ms = strata_http_remaining_ms(o->req);
    return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

/* Retries an idempotent step after a short backoff while the request has time. */
static bool retry_later(order_ctx *o, void (*fn)(void *), int status) {
    uint64_t delay = 20u << (o->attempts < 5 ? o->attempts : 5); /* 20 ms .. 640 ms */
    o->attempts++;
    if (strata_http_is_abandoned(o->req) || remaining_ms(o) <= delay + 50)
        return false;
    strata_counter_inc(o->sc->m_retries);
    if (scn_after(o->w->loop, delay, fn, o) != STRATA_OK)
        return false;
    (void)status;
    return true;
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

static void mark_sold_out(order_ctx *o) {
    o->st.soldout = 1;
    o->st.stock_left = 0;
    cache_state(o->sc, &o->keys, &o->st);
}

static void on_order(void *ud, int status, const strata_redis_reply *r) {
    order_ctx *o = ud;
    if (status == STRATA_EUNKNOWN || status == STRATA_EUNAVAIL || status == STRATA_ERETRY ||
        status == STRATA_ECLOSED) {
        /* Idempotent per (sale, user): ask again; the answer is the truth. */
        if (retry_later(o, order_call, status))
            return;
        if (status == STRATA_EUNKNOWN)
            strata_counter_inc(o->sc->m_unknown);
        scn_respond_failure(o->req, status, "order");
        return;
    }
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != STRATA_REPLY_STRING) {
        if (r && r->type == STRATA_REPLY_ERROR && status != STRATA_EBACKPRESSURE)
            LOG_WARN("script_error", "script=flashsale_order.lua status=%s reply=\"%.200s\"",
                     strata_status_name(status), r->str);
        scn_respond_failure(o->req, status != STRATA_OK ? status : STRATA_EPROTO, "order");
        return;
    }
    const char *tag = r->element[0]->str;
    if (strcmp(tag, "ok") == 0 && r->elements == 3) {
        long long left = r->element[2]->integer;
        if (left <= 0)
            mark_sold_out(o);
        respond_created(o, r->element[1]->str, r->element[1]->len, left);
    } else if (strcmp(tag, "already") == 0 && r->elements == 2) {
        respond_already(o->req, r->element[1]->str, r->element[1]->len);
    } else if (strcmp(tag, "sold_out") == 0) {
        mark_sold_out(o);
        strata_http_respond_error(o->req, 409, "sold_out", "sale %s is sold out", o->sku);
    } else if (strcmp(tag, "rate_limited") == 0 && r->elements == 2) {
        respond_limited(o->req, r->element[1]->integer);
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
    strata_redis_call call = {0};
    call.timeout_ms = remaining_ms(o);
    call.wait_replicas = o->sc->cfg.wait_replicas;
    call.wait_timeout_ms = o->sc->cfg.wait_timeout_ms;
    char maxlen[24], posbuf[16][24], gcra[3][24] = {"0", "0", "1"};
    snprintf(maxlen, sizeof maxlen, "%llu", (unsigned long long)o->sc->cfg.stream_max_len);
    /* The limiter counts attempts to buy; a possible buyer learning their order after
     * sell-out (o->skip_limit) is not limited. */
    if (!o->skip_limit)
        strata_gcra_args(o->sc->cfg.user_rate, 1000, o->sc->cfg.user_burst, 1, gcra);
    const char *keys[8];
    for (int i = 0; i < 8; i++)
        keys[i] = o->keys.k[i];
    const char *args[5 + 16] = {o->sku, o->user, maxlen, gcra[0], gcra[1]};
    size_t alen[5 + 16] = {strlen(o->sku), o->userlen, strlen(maxlen), strlen(gcra[0]),
                           strlen(gcra[1])};
    uint64_t bits, pos[16];
    uint32_t k = 0;
    if (buyer_bloom_size(&o->st, &bits, &k) == STRATA_OK) {
        strata_bloom_positions_mk(bits, k, o->user, o->userlen, pos);
        for (uint32_t i = 0; i < k; i++) {
            alen[5 + i] =
                (size_t)snprintf(posbuf[i], sizeof posbuf[i], "%llu", (unsigned long long)pos[i]);
            args[5 + i] = posbuf[i];
        }
    }
    int rc = strata_redis_evalsha(o->w->redis, &call, &s_order, on_order, o, 8, keys, o->keys.len,
                                  5 + (int)k, args, alen);
    if (rc != STRATA_OK)
        scn_respond_failure(o->req, rc, "order");
}

static void respond_limited(strata_http_req *req, long long retry_after_us) {
    char ra[24];
    snprintf(ra, sizeof ra, "%lld", (retry_after_us + 999999) / 1000000);
    strata_http_add_header(req, "Retry-After", ra);
    strata_http_respond_error(req, 429, "rate_limited",
                              "too many attempts by this user; retry in %lld ms",
                              (retry_after_us + 999) / 1000);
}

/*
 * A sold-out sale: a non-buyer is answered here without Redis; a possible
 * buyer (Bloom "maybe") goes to the Lua call, which answers with the truth
 * (their order, or sold_out on a false positive).  The filter is read from
 * Redis once per server per sale and kept in L1: after sell-out it can no
 * longer change.
 */
static void decide_sold_out(order_ctx *o, const void *bytes, size_t len) {
    uint64_t bits;
    uint32_t k;
    if (buyer_bloom_size(&o->st, &bits, &k) == STRATA_OK &&
        !strata_bloom_bytes_maybe_contains(bytes, len, bits, k, o->user, o->userlen)) {
        strata_counter_inc(o->sc->m_l1_flag_hits);
        strata_http_respond_error(o->req, 409, "sold_out", "sale %s is sold out", o->sku);
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
    const char *keys[3] = {o->keys.k[K_STOCK], o->keys.k[K_META], o->keys.k[K_FLAG]};
    size_t kl[3] = {o->keys.len[K_STOCK], o->keys.len[K_META], o->keys.len[K_FLAG]};
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
    cJSON *doc;
    if (strata_http_read_json(req, &doc) < 0)
        return;
    static const char *const allowed[] = {"user_id", NULL};
    strata_buf err = STRATA_BUF_INIT;
    if (strata_json_only_fields(doc, allowed, &err) != STRATA_OK) {
        strata_http_respond_error(req, 400, "invalid_field", "%s", err.data ? err.data : "");
        strata_buf_free(&err);
        return;
    }
    strata_buf_free(&err);
    const char *user;
    if (!scn_json_id(req, doc, "user_id", &user))
        return;
    order_ctx *o = strata_http_alloc(req, sizeof *o);
    if (!o) {
        scn_respond_failure(req, STRATA_ENOMEM, "order");
        return;
    }
    memset(o, 0, sizeof *o);
    o->sc = sc;
    o->req = req;
    o->w = scn_worker_of(sc, req);
    o->sku = sku;
    o->user = user;
    o->userlen = strlen(user);
    make_keys(&o->keys, sku, user);
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
} status_ctx;

static void on_status(void *ud, int status, const strata_redis_reply *r) {
    status_ctx *c = ud;
    fs_state st;
    if (status != STRATA_OK) {
        scn_respond_failure(c->req, status, "sale state");
        return;
    }
    if (state_from_reply(r, &st) != STRATA_OK) {
        scn_respond_failure(c->req, STRATA_EPROTO, "sale state");
        return;
    }
    if (!st.exists) {
        strata_http_respond_error(c->req, 404, "not_found", "no sale %s", c->sku);
        return;
    }
    cache_state(c->sc, &c->keys, &st);
    int64_t now = strata_clock_wall_ms(c->sc->env.clock);
    const char *s = now < st.starts_ms                    ? "not_started"
                    : st.ends_ms > 0 && now >= st.ends_ms ? "ended"
                    : st.soldout                          ? "sold_out"
                                                          : "open";
    int64_t left = st.stock_left < 0 ? 0 : st.stock_left;
    strata_http_respond_jsonf(c->req, 200,
                              "{\"sku\":\"%s\",\"stock_total\":%lld,\"stock_left\":%lld,"
                              "\"sold\":%lld,\"starts_at_ms\":%lld,\"ends_at_ms\":%lld,"
                              "\"per_user_limit\":%lld,\"status\":\"%s\"}",
                              c->sku, (long long)st.stock_total, (long long)left,
                              (long long)(st.stock_total - left), (long long)st.starts_ms,
                              (long long)st.ends_ms, (long long)st.per_user_limit, s);
}

static void get_sale(strata_http_req *req, void *ctx) {
    strata_scenarios *sc = ctx;
    const char *sku = path_sku(req);
    if (!sku)
        return;
    status_ctx *c = strata_http_alloc(req, sizeof *c);
    if (!c) {
        scn_respond_failure(req, STRATA_ENOMEM, "sale state");
        return;
    }
    c->sc = sc;
    c->req = req;
    c->sku = sku;
    make_keys(&c->keys, sku, NULL);
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(req);
    const char *keys[3] = {c->keys.k[K_STOCK], c->keys.k[K_META], c->keys.k[K_FLAG]};
    size_t kl[3] = {c->keys.len[K_STOCK], c->keys.len[K_META], c->keys.len[K_FLAG]};
    int rc = strata_redis_evalsha(scn_worker_of(sc, req)->redis, &call, &s_status, on_status, c, 3,
                                  keys, kl, 0, NULL, NULL);
    if (rc != STRATA_OK)
        scn_respond_failure(req, rc, "sale state");
}

/* ---- POST /v1/flashsales (admin) ------------------------------------------------------- */

typedef struct create_ctx {
    strata_scenarios *sc;
    strata_http_req *req;
    scn_worker *w;
    const char *sku;
    int64_t stock, starts_ms, ends_ms, per_user_limit, now_ms;
    fs_keys keys;
    strata_buf dberr;
    int db_status;
} create_ctx;

static int create_job(strata_db_conn *c, void *arg) {
    create_ctx *cc = arg;
    strata_db_param p[6] = {strata_db_p_text(cc->sku),           strata_db_p_int(cc->stock),
                            strata_db_p_int(cc->starts_ms),      strata_db_p_int(cc->ends_ms),
                            strata_db_p_int(cc->per_user_limit), strata_db_p_int(cc->now_ms)};
    return strata_db_query(c,
                           "INSERT INTO flashsales (sku, stock_total, starts_at_ms, ends_at_ms, "
                           "per_user_limit, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                           p, 6, NULL, NULL, &cc->dberr);
}

static void respond_sale_created(create_ctx *cc) {
    strata_buf_free(&cc->dberr);
    strata_http_respond_jsonf(cc->req, 201,
                              "{\"sku\":\"%s\",\"stock\":%lld,\"starts_at_ms\":%lld,"
                              "\"ends_at_ms\":%lld,\"per_user_limit\":%lld,\"strategy\":\"%s\"}",
                              cc->sku, (long long)cc->stock, (long long)cc->starts_ms,
                              (long long)cc->ends_ms, (long long)cc->per_user_limit,
                              cc->sc->cfg.flashsale_segment_lock ? "segment-lock" : "lua");
}

static void on_segments(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    (void)r;
    if (status != STRATA_OK) {
        strata_buf_free(&cc->dberr);
        scn_respond_failure(cc->req, status, "create segments");
        return;
    }
    respond_sale_created(cc);
}

static void on_redis_create(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != STRATA_REPLY_STRING) {
        strata_buf_free(&cc->dberr);
        scn_respond_failure(cc->req, status != STRATA_OK ? status : STRATA_EPROTO, "create sale");
        return;
    }
    if (strcmp(r->element[0]->str, "exists") == 0 && cc->db_status == STRATA_EEXIST) {
        strata_buf_free(&cc->dberr);
        strata_http_respond_error(cc->req, 409, "exists", "sale %s already exists", cc->sku);
        return;
    }
    strata_l1_invalidate(cc->sc->l1, cc->keys.k[K_FLAG], cc->keys.len[K_FLAG]);
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
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(cc->req);
    int rc = strata_redis_evalsha(cc->w->redis, &call, &s_seg_create, on_segments, cc, NSEGMENTS,
                                  keys, kl, 1, av, al);
    if (rc != STRATA_OK) {
        strata_buf_free(&cc->dberr);
        scn_respond_failure(cc->req, rc, "create segments");
    }
}

static void create_in_redis(create_ctx *cc) {
    char a[4][24];
    snprintf(a[0], sizeof a[0], "%lld", (long long)cc->stock);
    snprintf(a[1], sizeof a[1], "%lld", (long long)cc->starts_ms);
    snprintf(a[2], sizeof a[2], "%lld", (long long)cc->ends_ms);
    snprintf(a[3], sizeof a[3], "%lld", (long long)cc->per_user_limit);
    const char *keys[3] = {cc->keys.k[K_STOCK], cc->keys.k[K_META], cc->keys.k[K_FLAG]};
    size_t kl[3] = {cc->keys.len[K_STOCK], cc->keys.len[K_META], cc->keys.len[K_FLAG]};
    const char *av[4] = {a[0], a[1], a[2], a[3]};
    size_t al[4] = {strlen(a[0]), strlen(a[1]), strlen(a[2]), strlen(a[3])};
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(cc->req);
    call.wait_replicas = cc->sc->cfg.wait_replicas;
    call.wait_timeout_ms = cc->sc->cfg.wait_timeout_ms;
    int rc = strata_redis_evalsha(cc->w->redis, &call, &s_create, on_redis_create, cc, 3, keys, kl,
                                  4, av, al);
    if (rc != STRATA_OK) {
        strata_buf_free(&cc->dberr);
        scn_respond_failure(cc->req, rc, "create sale");
    }
}

static void on_registered(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    (void)r;
    if (status != STRATA_OK) {
        strata_buf_free(&cc->dberr);
        scn_respond_failure(cc->req, status, "register the sale's event stream");
        return;
    }
    create_in_redis(cc);
}

static void on_db_created(int status, void *arg) {
    create_ctx *cc = arg;
    cc->db_status = status;
    if (status != STRATA_OK && status != STRATA_EEXIST) {
        /* The row is the sale's record: without it nothing is created in Redis. */
        strata_buf_free(&cc->dberr);
        scn_respond_failure(cc->req, status, "create sale in the database");
        return;
    }
    /* EEXIST: created before; Redis decides (a retry after a lost reply completes it).
     * The stream is registered before anything can be appended to it. */
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(cc->req);
    const char *argv[3] = {"SADD", SCN_STREAMS_REGISTRY, cc->keys.k[K_EVENTS]};
    size_t al[3] = {4, strlen(SCN_STREAMS_REGISTRY), cc->keys.len[K_EVENTS]};
    int rc = strata_redis_command_argv(cc->w->redis, &call, on_registered, cc, 3, argv, al);
    if (rc != STRATA_OK) {
        strata_buf_free(&cc->dberr);
        scn_respond_failure(cc->req, rc, "register the sale's event stream");
    }
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
        rc = scn_opt(strata_json_get_int(doc, "shards", false, 1, 1, &shards, &err));
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
    create_ctx *cc = strata_http_alloc(req, sizeof *cc);
    if (!cc) {
        scn_respond_failure(req, STRATA_ENOMEM, "create sale");
        return;
    }
    memset(cc, 0, sizeof *cc);
    cc->sc = sc;
    cc->req = req;
    cc->w = scn_worker_of(sc, req);
    cc->sku = sku;
    cc->stock = stock;
    cc->starts_ms = starts;
    cc->ends_ms = ends;
    cc->per_user_limit = per_user;
    cc->now_ms = now;
    make_keys(&cc->keys, sku, NULL);
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
    int klen = snprintf(key, sizeof key, "fs:{%s}:orders", lc->sku);
    const char *argv[3] = {"HGET", key, lc->order_id};
    size_t al[3] = {4, (size_t)klen, strlen(lc->order_id)};
    strata_redis_call call = {0};
    call.timeout_ms = (uint32_t)strata_http_remaining_ms(lc->req);
    int rc = strata_redis_command_argv(scn_worker_of(lc->sc, lc->req)->redis, &call,
                                       on_redis_lookup, lc, 3, argv, al);
    if (rc != STRATA_OK)
        scn_respond_failure(lc->req, rc, "order lookup");
}

static void get_order(strata_http_req *req, void *ctx) {
    strata_scenarios *sc = ctx;
    const char *id = strata_http_param(req, "order_id");
    const char *dash = id ? strrchr(id, '-') : NULL;
    size_t len = id ? strlen(id) : 0;
    if (!id || !scn_valid_id(id, len) || !dash || dash == id || dash[1] == '\0' ||
        (size_t)(dash - id) > 64 || strspn(dash + 1, "0123456789") != strlen(dash + 1)) {
        strata_http_respond_error(req, 404, "not_found", "an order id looks like <sku>-<number>");
        return;
    }
    lookup_ctx *lc = strata_http_alloc(req, sizeof *lc);
    if (!lc) {
        scn_respond_failure(req, STRATA_ENOMEM, "order lookup");
        return;
    }
    memset(lc, 0, sizeof *lc);
    lc->sc = sc;
    lc->req = req;
    lc->order_id = id;
    snprintf(lc->sku, sizeof lc->sku, "%.*s", (int)(dash - id), id);
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
                respond_limited(o->req, g.retry_after_us);
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
