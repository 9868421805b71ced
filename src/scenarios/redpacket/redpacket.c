/*
 * redpacket.c: the red-packet service (docs/notes/scenarios.md, docs/API.md).
 *
 *   POST /v1/redpackets              (admin) create: pre-split, stored in Redis and the DB
 *   POST /v1/redpackets/{id}/grab    take one share; a repeat returns the same amount
 *   GET  /v1/redpackets/{id}         remaining count/amount, grabs, status
 *
 * A packet is split once at creation (double average, split.h) into a Redis
 * list; a grab is one Lua call (LPOP + grabber record + event XADD) that is
 * idempotent per (packet, user), so a call with an unknown outcome is retried
 * within the deadline and the user always sees one amount.  Expiry (server
 * clock) is one Lua call that closes the packet and refunds the remainder
 * exactly once; it runs when a grab or a read finds the packet past its time,
 * and from a sweeper on the control thread for packets nobody touches.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scenarios/redpacket/split.h"
#include "scenarios/scenario.h"
#include "strata/alloc.h"
#include "strata/embedded.h"
#include "strata/json.h"
#include "strata/protect.h"
#include "strata/status.h"

extern const strata_embedded strata_scenario_lua_table[];
extern const strata_embedded strata_lib_lua_table[];

#define MAX_COUNT     10000
#define MAX_TOTAL     100000000000LL /* 1e9 currency units */
#define MAX_EXPIRES_S (7 * 24 * 3600)

static strata_redis_script s_create, s_grab, s_expire, s_status;

static const strata_db_migration migrations[] = {
    {"CREATE TABLE IF NOT EXISTS redpackets (id TEXT PRIMARY KEY, total_cents BIGINT NOT NULL, "
     "count INTEGER NOT NULL, expires_at_ms BIGINT NOT NULL, status TEXT NOT NULL, "
     "refunded_cents BIGINT NOT NULL DEFAULT 0, created_at_ms BIGINT NOT NULL)",
     NULL, NULL},
    {"CREATE TABLE IF NOT EXISTS grabs (grab_id TEXT PRIMARY KEY, packet_id TEXT NOT NULL, "
     "user_id TEXT NOT NULL, amount_cents BIGINT NOT NULL, created_at_ms BIGINT NOT NULL, "
     "UNIQUE (packet_id, user_id))",
     NULL, NULL},
};

int scn_redpacket_migrations(void) {
    return strata_db_register_migrations("redpacket", migrations,
                                         (int)(sizeof migrations / sizeof migrations[0]));
}

enum { R_SHARES, R_META, R_GRABS, R_EVENTS, R_FLAG, R__COUNT };

typedef struct rp_keys {
    char k[R__COUNT][64];
    size_t len[R__COUNT];
} rp_keys;

static void make_keys(rp_keys *rk, const char *id) {
    static const char *const fmt[R__COUNT] = {"rp:{%s}:shares", "rp:{%s}:meta", "rp:{%s}:grabs",
                                              "rp:{%s}:events", "rpflag:{%s}"};
    for (int i = 0; i < R__COUNT; i++)
        rk->len[i] = (size_t)snprintf(rk->k[i], sizeof rk->k[i], fmt[i], id);
}

/* Packet ids are 16 lowercase hex characters chosen here. */
static bool valid_packet_id(const char *id) {
    if (!id || strlen(id) != 16)
        return false;
    return strspn(id, "0123456789abcdef") == 16;
}

/* The L1 flag of a packet: present = gone (emptied or expired). */
static const char GONE = 'g';

/* ---- grab ------------------------------------------------------------------------- */

typedef struct grab_ctx {
    strata_scenarios *sc;
    strata_http_req *req;
    scn_worker *w;
    const char *id, *user;
    rp_keys keys;
    char limit_key[112];
    int attempts;
    /* Do not count this call in the user's limiter: the packet is known gone (only a
     * winner's repeat can succeed), or it retries a call that may have counted already. */
    int skip_limit;
    int maybe_recorded; /* an earlier call of this request may have run (outcome unknown) */
} grab_ctx;

static void grab_call(void *arg);

/*
 * The deadline of one Redis call: what is left of the request less a margin
 * to answer and, for a call followed by WAIT, less the WAIT's own timeout
 * (the client adds it to the call's deadline).  So a call Redis cannot finish
 * (failover) ends here first and is answered 503 + Retry-After ("outcome
 * unknown, ask again"), not by the HTTP server's request deadline (a bare 504).
 */
static uint32_t call_budget(const strata_scenarios *sc, strata_http_req *req, bool waits) {
    return scn_call_budget(sc, req, waits);
}

static bool grab_retry(grab_ctx *g, void (*fn)(void *)) {
    return scn_retry(g->sc, g->req, g->w->loop, &g->attempts, fn, g);
}

static void mark_gone(grab_ctx *g) {
    strata_l1_set_opts o = {0};
    o.no_ttl = 1;
    strata_l1_set(g->sc->l1, g->keys.k[R_FLAG], g->keys.len[R_FLAG], &GONE, 1, &o);
}

static void on_expired_for_grab(void *ud, int status, const strata_redis_reply *r) {
    grab_ctx *g = ud;
    (void)r;
    if (status != STRATA_OK) {
        scn_respond_failure(g->req, status, "expire packet");
        return;
    }
    mark_gone(g);
    strata_http_respond_error(g->req, 410, "gone", "red packet %s has expired", g->id);
}

static void run_expire(strata_redis *redis, const rp_keys *rk, const char *id, int64_t now_ms,
                       uint32_t timeout_ms, strata_redis_cb cb, void *ud, int wait_replicas,
                       uint32_t wait_ms) {
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    const char *keys[R__COUNT];
    for (int i = 0; i < R__COUNT; i++)
        keys[i] = rk->k[i];
    const char *av[2] = {id, now};
    size_t al[2] = {strlen(id), strlen(now)};
    strata_redis_call call = {0};
    call.timeout_ms = timeout_ms;
    call.wait_replicas = wait_replicas;
    call.wait_timeout_ms = wait_ms;
    int rc =
        strata_redis_evalsha(redis, &call, &s_expire, cb, ud, R__COUNT, keys, rk->len, 2, av, al);
    if (rc != STRATA_OK && cb)
        cb(ud, rc, NULL);
}

static void on_grab(void *ud, int status, const strata_redis_reply *r) {
    grab_ctx *g = ud;
    if (status == STRATA_EUNKNOWN || status == STRATA_EUNAVAIL || status == STRATA_ERETRY ||
        status == STRATA_ECLOSED) {
        if (status == STRATA_EUNKNOWN) {
            /* The call may have run: its limiter charge stands, so the retry, which only
             * learns the outcome of the same attempt, is not charged (nor refused) again. */
            g->maybe_recorded = 1;
            g->skip_limit = 1;
        }
        if (grab_retry(g, grab_call))
            return;
        if (status == STRATA_EUNKNOWN)
            strata_counter_inc(g->sc->m_unknown);
        scn_respond_failure(g->req, status, "grab");
        return;
    }
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != STRATA_REPLY_STRING) {
        scn_respond_failure(g->req, status != STRATA_OK ? status : STRATA_EPROTO, "grab");
        return;
    }
    const char *tag = r->element[0]->str;
    if ((strcmp(tag, "ok") == 0 || strcmp(tag, "already") == 0) && r->elements == 2) {
        /* "already" after an unknown outcome is, as far as the server can tell, this
         * request's own grab (WAIT unmet or connection lost after the script ran): a
         * user's first request must not be told it is a repeat.  (Had the user also
         * grabbed in an earlier request, "repeat":false is the smaller error: the amount,
         * which is what the API promises, is the same either way.) */
        bool repeat = tag[0] == 'a' && !g->maybe_recorded;
        strata_http_respond_jsonf(g->req, 200,
                                  "{\"packet_id\":\"%s\",\"user_id\":\"%s\",\"amount_cents\":%lld,"
                                  "\"repeat\":%s}",
                                  g->id, g->user, r->element[1]->integer,
                                  repeat ? "true" : "false");
    } else if (strcmp(tag, "gone") == 0) {
        mark_gone(g);
        strata_http_respond_error(g->req, 410, "gone", "red packet %s is empty or expired", g->id);
    } else if (strcmp(tag, "expired") == 0) {
        run_expire(g->w->redis, &g->keys, g->id, strata_clock_wall_ms(g->sc->env.clock),
                   call_budget(g->sc, g->req, true), on_expired_for_grab, g,
                   g->sc->cfg.wait_replicas, g->sc->cfg.wait_timeout_ms);
    } else if (strcmp(tag, "rate_limited") == 0 && r->elements == 2) {
        scn_respond_limited(g->req, r->element[1]->integer);
    } else if (strcmp(tag, "unknown") == 0) {
        strata_http_respond_error(g->req, 404, "not_found", "no red packet %s", g->id);
    } else {
        scn_respond_failure(g->req, STRATA_EPROTO, "grab");
    }
}

static void grab_call(void *arg) {
    grab_ctx *g = arg;
    char now[24], maxlen[24], gcra[3][24] = {"0", "0", "1"};
    snprintf(now, sizeof now, "%lld", (long long)strata_clock_wall_ms(g->sc->env.clock));
    snprintf(maxlen, sizeof maxlen, "%llu", (unsigned long long)g->sc->cfg.stream_max_len);
    if (!g->skip_limit)
        strata_gcra_args(g->sc->cfg.user_rate, 1000, g->sc->cfg.user_burst, 1, gcra);
    const char *keys[R__COUNT + 1];
    size_t kl[R__COUNT + 1];
    for (int i = 0; i < R__COUNT; i++) {
        keys[i] = g->keys.k[i];
        kl[i] = g->keys.len[i];
    }
    keys[R__COUNT] = g->limit_key;
    kl[R__COUNT] = strlen(g->limit_key);
    const char *av[6] = {g->id, g->user, now, maxlen, gcra[0], gcra[1]};
    size_t al[6] = {strlen(g->id),  strlen(g->user), strlen(now),
                    strlen(maxlen), strlen(gcra[0]), strlen(gcra[1])};
    strata_redis_call call = {0};
    call.timeout_ms = call_budget(g->sc, g->req, true);
    call.wait_replicas = g->sc->cfg.wait_replicas;
    call.wait_timeout_ms = g->sc->cfg.wait_timeout_ms;
    int rc = strata_redis_evalsha(g->w->redis, &call, &s_grab, on_grab, g, R__COUNT + 1, keys, kl,
                                  6, av, al);
    if (rc != STRATA_OK)
        scn_respond_failure(g->req, rc, "grab");
}

static void post_grab(strata_http_req *req, void *ctx) {
    strata_scenarios *sc = ctx;
    const char *id = strata_http_param(req, "id");
    if (!valid_packet_id(id)) {
        strata_http_respond_error(req, 404, "not_found", "a red packet id is 16 hex characters");
        return;
    }
    const char *user;
    if (!scn_read_user(req, &user))
        return;
    grab_ctx *g = scn_request_ctx(req, sizeof *g, "grab");
    if (!g)
        return;
    g->sc = sc;
    g->req = req;
    g->w = scn_worker_of(sc, req);
    g->id = id;
    g->user = user;
    make_keys(&g->keys, id);
    snprintf(g->limit_key, sizeof g->limit_key, "rl:rp:{%s}:%s", id, user);
    /* A repeat grab by a winner must still get its amount, so the gone flag
     * cannot short-cut everyone: the script decides.  The flag spares the limiter. */
    char flag = 0;
    if (strata_l1_get_copy(sc->l1, g->keys.k[R_FLAG], g->keys.len[R_FLAG], &flag, 1, NULL) ==
            STRATA_L1_HIT &&
        flag == GONE) {
        strata_counter_inc(sc->m_l1_flag_hits);
        g->skip_limit = 1;
    }
    grab_call(g);
}

/* ---- GET /v1/redpackets/{id} -------------------------------------------------------- */

typedef struct status_ctx {
    strata_scenarios *sc;
    strata_http_req *req;
    const char *id;
    rp_keys keys;
    int expired_once;
} status_ctx;

static void status_fetch(status_ctx *c);

static void on_status_expired(void *ud, int status, const strata_redis_reply *r) {
    status_ctx *c = ud;
    (void)r;
    if (status != STRATA_OK) {
        scn_respond_failure(c->req, status, "expire packet");
        return;
    }
    status_fetch(c);
}

static void on_status(void *ud, int status, const strata_redis_reply *r) {
    status_ctx *c = ud;
    if (status != STRATA_OK) {
        scn_respond_failure(c->req, status, "packet state");
        return;
    }
    if (!r || r->type != STRATA_REPLY_ARRAY) {
        scn_respond_failure(c->req, STRATA_EPROTO, "packet state");
        return;
    }
    if (r->elements == 0) {
        strata_http_respond_error(c->req, 404, "not_found", "no red packet %s", c->id);
        return;
    }
    if (r->elements != 8) {
        scn_respond_failure(c->req, STRATA_EPROTO, "packet state");
        return;
    }
    long long v[8];
    for (int i = 0; i < 8; i++)
        v[i] =
            r->element[i]->type == STRATA_REPLY_STRING ? strtoll(r->element[i]->str, NULL, 10) : 0;
    const char *st = r->element[3]->type == STRATA_REPLY_STRING ? r->element[3]->str : "?";
    int64_t now = strata_clock_wall_ms(c->sc->env.clock);
    if (strcmp(st, "open") == 0 && now >= v[2] && !c->expired_once) {
        /* Past its time: close it (refund exactly once) before answering. */
        c->expired_once = 1;
        run_expire(scn_worker_of(c->sc, c->req)->redis, &c->keys, c->id, now,
                   call_budget(c->sc, c->req, true), on_status_expired, c, c->sc->cfg.wait_replicas,
                   c->sc->cfg.wait_timeout_ms);
        return;
    }
    long long remaining_cents = v[0] - v[4] - v[6];
    strata_http_respond_jsonf(c->req, 200,
                              "{\"id\":\"%s\",\"total_cents\":%lld,\"count\":%lld,"
                              "\"expires_at_ms\":%lld,\"status\":\"%s\",\"grabbed_cents\":%lld,"
                              "\"grabbed_count\":%lld,\"refunded_cents\":%lld,"
                              "\"remaining_count\":%lld,\"remaining_cents\":%lld}",
                              c->id, v[0], v[1], v[2], strcmp(st, "open") == 0 ? "open" : "expired",
                              v[4], v[5], v[6], v[7], remaining_cents < 0 ? 0 : remaining_cents);
}

static void status_fetch(status_ctx *c) {
    strata_redis_call call = {0};
    call.timeout_ms = call_budget(c->sc, c->req, false);
    const char *keys[2] = {c->keys.k[R_SHARES], c->keys.k[R_META]};
    size_t kl[2] = {c->keys.len[R_SHARES], c->keys.len[R_META]};
    int rc = strata_redis_evalsha(scn_worker_of(c->sc, c->req)->redis, &call, &s_status, on_status,
                                  c, 2, keys, kl, 0, NULL, NULL);
    if (rc != STRATA_OK)
        scn_respond_failure(c->req, rc, "packet state");
}

static void get_packet(strata_http_req *req, void *ctx) {
    const char *id = strata_http_param(req, "id");
    if (!valid_packet_id(id)) {
        strata_http_respond_error(req, 404, "not_found", "a red packet id is 16 hex characters");
        return;
    }
    status_ctx *c = scn_request_ctx(req, sizeof *c, "packet state");
    if (!c)
        return;
    c->sc = ctx;
    c->req = req;
    c->id = id;
    make_keys(&c->keys, id);
    status_fetch(c);
}

/* ---- POST /v1/redpackets (admin) ------------------------------------------------------- */

typedef struct create_ctx {
    strata_scenarios *sc;
    strata_http_req *req;
    scn_worker *w;
    char id[17];
    int64_t total, count, expires_at_ms, now_ms;
    int64_t *shares;
    rp_keys keys;
    strata_buf dberr;
} create_ctx;

static int create_job(strata_db_conn *c, void *arg) {
    create_ctx *cc = arg;
    strata_db_param p[5] = {strata_db_p_text(cc->id), strata_db_p_int(cc->total),
                            strata_db_p_int(cc->count), strata_db_p_int(cc->expires_at_ms),
                            strata_db_p_int(cc->now_ms)};
    return strata_db_query(c,
                           "INSERT INTO redpackets (id, total_cents, count, expires_at_ms, status, "
                           "refunded_cents, created_at_ms) VALUES ($1, $2, $3, $4, 'open', 0, $5)",
                           p, 5, NULL, NULL, &cc->dberr);
}

static void on_create_done(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    (void)r;
    if (status != STRATA_OK) {
        scn_respond_failure(cc->req, status, "register packet");
        return;
    }
    strata_http_respond_jsonf(cc->req, 201,
                              "{\"id\":\"%s\",\"total_cents\":%lld,\"count\":%lld,"
                              "\"expires_at_ms\":%lld}",
                              cc->id, (long long)cc->total, (long long)cc->count,
                              (long long)cc->expires_at_ms);
}

static void on_redis_create(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != STRATA_REPLY_STRING || strcmp(r->element[0]->str, "ok") != 0) {
        scn_respond_failure(cc->req, status != STRATA_OK ? status : STRATA_EPROTO, "create packet");
        return;
    }
    /* The sweeper finds it by its expiry (a lost ZADD only means the next read expires it). */
    char score[24];
    snprintf(score, sizeof score, "%lld", (long long)cc->expires_at_ms);
    const char *zadd[4] = {"ZADD", "rp:expiries", score, cc->id};
    size_t zl[4] = {4, 11, strlen(score), strlen(cc->id)};
    strata_redis_call call = {0};
    call.timeout_ms = call_budget(cc->sc, cc->req, false);
    int rc = strata_redis_command_argv(cc->w->redis, &call, on_create_done, cc, 4, zadd, zl);
    if (rc != STRATA_OK)
        scn_respond_failure(cc->req, rc, "register packet");
}

static void create_in_redis(create_ctx *cc) {
    /* argv: total, count, expires_at, then the shares */
    int n = 3 + (int)cc->count;
    const char **av = strata_http_alloc(cc->req, sizeof(char *) * (size_t)n);
    size_t *al = strata_http_alloc(cc->req, sizeof(size_t) * (size_t)n);
    if (!av || !al) {
        scn_respond_failure(cc->req, STRATA_ENOMEM, "create packet");
        return;
    }
    av[0] = strata_http_sprintf(cc->req, "%lld", (long long)cc->total);
    av[1] = strata_http_sprintf(cc->req, "%lld", (long long)cc->count);
    av[2] = strata_http_sprintf(cc->req, "%lld", (long long)cc->expires_at_ms);
    for (int64_t i = 0; i < cc->count; i++)
        av[3 + i] = strata_http_sprintf(cc->req, "%lld", (long long)cc->shares[i]);
    for (int i = 0; i < n; i++) {
        if (!av[i]) {
            scn_respond_failure(cc->req, STRATA_ENOMEM, "create packet");
            return;
        }
        al[i] = strlen(av[i]);
    }
    const char *keys[3] = {cc->keys.k[R_SHARES], cc->keys.k[R_META], cc->keys.k[R_FLAG]};
    size_t kl[3] = {cc->keys.len[R_SHARES], cc->keys.len[R_META], cc->keys.len[R_FLAG]};
    strata_redis_call call = {0};
    call.timeout_ms = call_budget(cc->sc, cc->req, true);
    call.wait_replicas = cc->sc->cfg.wait_replicas;
    call.wait_timeout_ms = cc->sc->cfg.wait_timeout_ms;
    int rc = strata_redis_evalsha(cc->w->redis, &call, &s_create, on_redis_create, cc, 3, keys, kl,
                                  n, av, al);
    if (rc != STRATA_OK)
        scn_respond_failure(cc->req, rc, "create packet");
}

static void on_registered(void *ud, int status, const strata_redis_reply *r) {
    create_ctx *cc = ud;
    (void)r;
    if (status != STRATA_OK) {
        scn_respond_failure(cc->req, status, "register the packet's event stream");
        return;
    }
    create_in_redis(cc);
}

static void on_db_created(int status, void *arg) {
    create_ctx *cc = arg;
    strata_buf_free(&cc->dberr);
    if (status != STRATA_OK) {
        scn_respond_failure(cc->req, status == STRATA_EEXIST ? STRATA_EINTERNAL : status,
                            "create packet in the database");
        return;
    }
    /* Register the stream before anything can be appended to it, so the persister reads it. */
    const char *sadd[3] = {"SADD", SCN_STREAMS_REGISTRY, cc->keys.k[R_EVENTS]};
    size_t sl[3] = {4, strlen(SCN_STREAMS_REGISTRY), cc->keys.len[R_EVENTS]};
    strata_redis_call call = {0};
    call.timeout_ms = call_budget(cc->sc, cc->req, false);
    int rc = strata_redis_command_argv(cc->w->redis, &call, on_registered, cc, 3, sadd, sl);
    if (rc != STRATA_OK)
        scn_respond_failure(cc->req, rc, "register the packet's event stream");
}

static void post_packet(strata_http_req *req, void *ctx) {
    strata_scenarios *sc = ctx;
    cJSON *doc;
    if (strata_http_read_json(req, &doc) < 0)
        return;
    static const char *const allowed[] = {"total_cents", "count", "expires_in", NULL};
    strata_buf err = STRATA_BUF_INIT;
    int64_t total = 0, count = 0, expires_in = 86400;
    int rc = strata_json_only_fields(doc, allowed, &err);
    if (rc == STRATA_OK)
        rc = strata_json_get_int(doc, "total_cents", true, 1, MAX_TOTAL, &total, &err);
    if (rc == STRATA_OK)
        rc = strata_json_get_int(doc, "count", true, 1, MAX_COUNT, &count, &err);
    if (rc == STRATA_OK)
        rc = scn_opt(
            strata_json_get_int(doc, "expires_in", false, 1, MAX_EXPIRES_S, &expires_in, &err));
    if (rc == STRATA_OK && total < count) {
        strata_buf_printf(&err,
                          "total_cents (%lld) must be at least count (%lld): every share is "
                          "at least 1 cent",
                          (long long)total, (long long)count);
        rc = STRATA_EINVAL;
    }
    if (rc != STRATA_OK) {
        strata_http_respond_error(req, 400, "invalid_field", "%s", err.data ? err.data : "");
        strata_buf_free(&err);
        return;
    }
    strata_buf_free(&err);
    create_ctx *cc = strata_http_alloc(req, sizeof *cc);
    int64_t *shares = strata_http_alloc(req, sizeof(int64_t) * (size_t)count);
    rp_rng g;
    if (!cc || !shares || rp_rng_init(&g, NULL) != STRATA_OK) {
        scn_respond_failure(req, STRATA_ENOMEM, "create packet");
        return;
    }
    memset(cc, 0, sizeof *cc);
    cc->sc = sc;
    cc->req = req;
    cc->w = scn_worker_of(sc, req);
    snprintf(cc->id, sizeof cc->id, "%016llx", (unsigned long long)rp_rng_range(&g, 0, UINT64_MAX));
    cc->total = total;
    cc->count = count;
    cc->now_ms = strata_clock_wall_ms(sc->env.clock);
    cc->expires_at_ms = cc->now_ms + expires_in * 1000;
    cc->shares = shares;
    rp_split_double_average(&g, total, count, shares);
    make_keys(&cc->keys, cc->id);
    rc = strata_db_submit(sc->env.db, cc->w->loop, create_job, on_db_created, cc);
    if (rc != STRATA_OK)
        scn_respond_failure(req, rc, "create packet in the database");
}

/* ---- routes --------------------------------------------------------------------------- */

int scn_redpacket_routes(strata_scenarios *sc, strata_server *server) {
    int rc;
    /* The grab script calls the GCRA itself (composed; lives as long as the process). */
    static strata_buf grab_src = STRATA_BUF_INIT;
    const strata_embedded *e =
        strata_embedded_find(strata_scenario_lua_table, "redpacket_grab.lua");
    if (!e)
        return STRATA_ENOTFOUND;
    if ((rc = strata_redis_script_embedded(&s_create, strata_scenario_lua_table,
                                           "redpacket_create.lua")) ||
        (!grab_src.len && (rc = strata_gcra_compose(e->data, &grab_src))) ||
        (rc = strata_redis_script_init(&s_grab, "redpacket_grab.lua", grab_src.data,
                                       grab_src.len)) ||
        (rc = strata_redis_script_embedded(&s_expire, strata_scenario_lua_table,
                                           "redpacket_expire.lua")) ||
        (rc = strata_redis_script_embedded(&s_status, strata_scenario_lua_table,
                                           "redpacket_status.lua")))
        return rc;
    if ((rc = strata_server_route_ex(server, "POST", "/v1/redpackets", STRATA_ROUTE_ADMIN,
                                     post_packet, sc)) ||
        (rc = strata_server_route(server, "POST", "/v1/redpackets/{id}/grab", post_grab, sc)) ||
        (rc = strata_server_route(server, "GET", "/v1/redpackets/{id}", get_packet, sc)))
        return rc;
    return STRATA_OK;
}

/* ---- the expiry sweeper (control thread) ------------------------------------------------ */

typedef struct sweep_item {
    strata_scenarios *sc;
    strata_redis *redis;
    char id[17];
    rp_keys keys;
} sweep_item;

static void on_swept(void *ud, int status, const strata_redis_reply *r) {
    sweep_item *it = ud;
    (void)r;
    if (status == STRATA_OK) {
        const char *zrem[3] = {"ZREM", "rp:expiries", it->id};
        size_t zl[3] = {4, 11, strlen(it->id)};
        strata_redis_command_argv(it->redis, NULL, NULL, NULL, 3, zrem, zl);
    }
    strata_free(it);
}

static void on_due(void *ud, int status, const strata_redis_reply *r) {
    strata_scenarios *sc = ud;
    if (status != STRATA_OK || !r || r->type != STRATA_REPLY_ARRAY)
        return;
    int64_t now = strata_clock_wall_ms(sc->env.clock);
    for (size_t i = 0; i < r->elements; i++) {
        const strata_redis_reply *e = r->element[i];
        if (e->type != STRATA_REPLY_STRING || !valid_packet_id(e->str))
            continue;
        sweep_item *it = strata_calloc(1, sizeof *it);
        if (!it)
            return;
        it->sc = sc;
        it->redis = sc->sweeper;
        snprintf(it->id, sizeof it->id, "%s", e->str);
        make_keys(&it->keys, it->id);
        run_expire(sc->sweeper, &it->keys, it->id, now, 5000, on_swept, it, 0, 0);
    }
}

void scn_redpacket_sweep(strata_scenarios *sc) {
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)strata_clock_wall_ms(sc->env.clock));
    const char *argv[7] = {"ZRANGEBYSCORE", "rp:expiries", "-inf", now, "LIMIT", "0", "100"};
    size_t al[7];
    for (int i = 0; i < 7; i++)
        al[i] = strlen(argv[i]);
    strata_redis_command_argv(sc->sweeper, NULL, on_due, sc, 7, argv, al);
}

/* ---- persistence (write-behind events -> database) ------------------------------------- */

static int apply_grab(strata_db_conn *c, const strata_wb_event *e, void *ctx) {
    (void)ctx;
    const char *packet = strata_wb_event_get(e, "packet", NULL);
    const char *user = strata_wb_event_get(e, "user", NULL);
    const char *amount = strata_wb_event_get(e, "amount", NULL);
    const char *ts = strata_wb_event_get(e, "ts_ms", NULL);
    if (!valid_packet_id(packet) || !user || !scn_valid_id(user, strlen(user)) || !amount)
        return STRATA_EINVAL;
    strata_db_param p[5] = {strata_db_p_text(e->id), strata_db_p_text(packet),
                            strata_db_p_text(user), strata_db_p_int(strtoll(amount, NULL, 10)),
                            strata_db_p_int(ts ? strtoll(ts, NULL, 10) : 0)};
    return strata_db_query(c,
                           "INSERT INTO grabs (grab_id, packet_id, user_id, amount_cents, "
                           "created_at_ms) VALUES ($1, $2, $3, $4, $5)",
                           p, 5, NULL, NULL, NULL);
}

static int apply_refund(strata_db_conn *c, const strata_wb_event *e, void *ctx) {
    (void)ctx;
    const char *packet = strata_wb_event_get(e, "packet", NULL);
    const char *amount = strata_wb_event_get(e, "amount", NULL);
    if (!valid_packet_id(packet) || !amount)
        return STRATA_EINVAL;
    strata_db_param p[2] = {strata_db_p_text(packet), strata_db_p_int(strtoll(amount, NULL, 10))};
    int64_t changes = 0;
    int rc = strata_db_query(c,
                             "UPDATE redpackets SET status = 'expired', refunded_cents = $2 "
                             "WHERE id = $1",
                             p, 2, NULL, &changes, NULL);
    return rc == STRATA_OK && changes != 1 ? STRATA_ENOTFOUND : rc;
}

int scn_redpacket_handlers(strata_persister *p) {
    int rc = strata_persister_handle(p, "grab", apply_grab, NULL);
    return rc == STRATA_OK ? strata_persister_handle(p, "refund", apply_refund, NULL) : rc;
}
