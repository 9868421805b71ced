/*
 * redis_stream.c: stream helpers for write-behind (XADD with backpressure,
 * consumer groups, XREADGROUP, XACK, XAUTOCLAIM, safe trimming).
 *
 * Write-behind keeps events in a stream until a persister has committed them
 * to the database and acknowledged them.  Two rules follow, both enforced
 * here in atomic scripts (stream_xadd.lua, stream_trim.lua):
 *   - a stream is never trimmed by MAXLEN (it would drop unpersisted events);
 *     it is trimmed by MINID below the oldest entry some group still needs;
 *   - it cannot grow without bound: past max_len the producer gets
 *     STRATA_EBACKPRESSURE (HTTP 503) instead of an append.
 */
#include <stdio.h>
#include <string.h>

#include "redis_priv.h"
#include "strata/alloc.h"
#include "strata/status.h"

static int lib_load(strata_redis *r) {
    if (r->lib_state == 0) {
        int rc =
            strata_redis_script_embedded(&r->lib_xadd, strata_lib_lua_table, "stream_xadd.lua");
        if (rc == STRATA_OK)
            rc =
                strata_redis_script_embedded(&r->lib_trim, strata_lib_lua_table, "stream_trim.lua");
        r->lib_state = rc == STRATA_OK ? 1 : rc;
    }
    return r->lib_state == 1 ? STRATA_OK : r->lib_state;
}

static bool bad_str(const char *s) { return !s || !*s; }

int strata_redis_xadd(strata_redis *r, const strata_redis_call *call, const char *stream,
                      uint64_t max_len, int nfv, const char *const *fv, const size_t *fvlen,
                      strata_redis_cb cb, void *ud) {
    if (!r || bad_str(stream) || nfv < 2 || nfv % 2 || !fv || nfv > 100000)
        return STRATA_EINVAL;
    int rc = lib_load(r);
    if (rc < 0)
        return rc;
    char maxs[24];
    snprintf(maxs, sizeof(maxs), "%llu", (unsigned long long)max_len);
    const char *sv[33];
    size_t sl[33];
    const char **args = sv;
    size_t *lens = sl;
    if (nfv + 1 > 33) {
        args = strata_malloc((size_t)(nfv + 1) * sizeof(*args));
        lens = strata_malloc((size_t)(nfv + 1) * sizeof(*lens));
        if (!args || !lens) {
            strata_free(args);
            strata_free(lens);
            return STRATA_ENOMEM;
        }
    }
    args[0] = maxs;
    lens[0] = strlen(maxs);
    for (int i = 0; i < nfv; i++) {
        args[1 + i] = fv[i];
        lens[1 + i] = fv[i] ? (fvlen ? fvlen[i] : strlen(fv[i])) : 0;
    }
    const char *keys[1] = {stream};
    rc = strata_redis_evalsha(r, call, &r->lib_xadd, cb, ud, 1, keys, NULL, nfv + 1, args, lens);
    if (args != sv) {
        strata_free(args);
        strata_free(lens);
    }
    return rc;
}

/* BUSYGROUP (the group exists) is success for an idempotent create. */
typedef struct busy_ctx {
    strata_redis_cb cb;
    void *ud;
} busy_ctx;

static void on_group(void *ud, int status, const strata_redis_reply *reply) {
    busy_ctx *c = ud;
    if (status == STRATA_EEXIST)
        status = STRATA_OK;
    if (c->cb)
        c->cb(c->ud, status, reply);
    strata_free(c);
}

int strata_redis_xgroup_create(strata_redis *r, const char *stream, const char *group,
                               const char *start_id, strata_redis_cb cb, void *ud) {
    if (!r || bad_str(stream) || bad_str(group))
        return STRATA_EINVAL;
    busy_ctx *c = strata_malloc(sizeof(*c));
    if (!c)
        return STRATA_ENOMEM;
    c->cb = cb;
    c->ud = ud;
    const char *argv[] = {"XGROUP", "CREATE", stream, group, start_id ? start_id : "0", "MKSTREAM"};
    int rc = strata_redis_command_argv(r, NULL, on_group, c, 6, argv, NULL);
    if (rc < 0)
        strata_free(c);
    return rc;
}

int strata_redis_xreadgroup(strata_redis *r, const strata_redis_call *call, const char *group,
                            const char *consumer, uint32_t count, uint32_t block_ms,
                            const char *stream, const char *id, strata_redis_cb cb, void *ud) {
    if (!r || bad_str(group) || bad_str(consumer) || bad_str(stream) || bad_str(id) || count == 0)
        return STRATA_EINVAL;
    char cnt[16], blk[16];
    snprintf(cnt, sizeof(cnt), "%u", count);
    snprintf(blk, sizeof(blk), "%u", block_ms);
    const char *argv[11];
    int argc = 0;
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = group;
    argv[argc++] = consumer;
    argv[argc++] = "COUNT";
    argv[argc++] = cnt;
    if (block_ms > 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = blk;
    }
    argv[argc++] = "STREAMS";
    argv[argc++] = stream;
    argv[argc++] = id;
    strata_redis_call c = call ? *call : (strata_redis_call){0};
    if (block_ms > 0) {
        c.flags |= STRATA_REDIS_DEDICATED;
        uint32_t base = c.timeout_ms ? c.timeout_ms : r->o.command_timeout_ms;
        c.timeout_ms = base + block_ms;
    }
    return strata_redis_command_argv(r, &c, cb, ud, argc, argv, NULL);
}

int strata_redis_xack(strata_redis *r, const char *stream, const char *group, int nids,
                      const char *const *ids, strata_redis_cb cb, void *ud) {
    if (!r || bad_str(stream) || bad_str(group) || nids <= 0 || !ids || nids > 100000)
        return STRATA_EINVAL;
    const char **argv = strata_malloc((size_t)(nids + 3) * sizeof(*argv));
    if (!argv)
        return STRATA_ENOMEM;
    argv[0] = "XACK";
    argv[1] = stream;
    argv[2] = group;
    for (int i = 0; i < nids; i++)
        argv[3 + i] = ids[i];
    int rc = strata_redis_command_argv(r, NULL, cb, ud, nids + 3, argv, NULL);
    strata_free(argv);
    return rc;
}

int strata_redis_xautoclaim(strata_redis *r, const char *stream, const char *group,
                            const char *consumer, uint64_t min_idle_ms, const char *start,
                            uint32_t count, strata_redis_cb cb, void *ud) {
    if (!r || bad_str(stream) || bad_str(group) || bad_str(consumer) || count == 0)
        return STRATA_EINVAL;
    char idle[24], cnt[16];
    snprintf(idle, sizeof(idle), "%llu", (unsigned long long)min_idle_ms);
    snprintf(cnt, sizeof(cnt), "%u", count);
    const char *argv[] = {"XAUTOCLAIM",          stream,  group, consumer, idle,
                          start ? start : "0-0", "COUNT", cnt};
    return strata_redis_command_argv(r, NULL, cb, ud, 8, argv, NULL);
}

int strata_redis_xtrim_safe(strata_redis *r, const char *stream, strata_redis_cb cb, void *ud) {
    if (!r || bad_str(stream))
        return STRATA_EINVAL;
    int rc = lib_load(r);
    if (rc < 0)
        return rc;
    const char *keys[1] = {stream};
    return strata_redis_evalsha(r, NULL, &r->lib_trim, cb, ud, 1, keys, NULL, 0, NULL, NULL);
}

static bool is_str(const strata_redis_reply *r) {
    return r && (r->type == STRATA_REPLY_STRING || r->type == STRATA_REPLY_STATUS);
}

/* [[id, [f, v, ...]], ...] */
static int walk_entries(const strata_redis_reply *list, const strata_redis_reply *stream,
                        int (*fn)(void *ud, const strata_redis_xentry *e), void *ud) {
    if (list->type == STRATA_REPLY_NIL)
        return 0;
    if (list->type != STRATA_REPLY_ARRAY)
        return STRATA_EPROTO;
    for (size_t i = 0; i < list->elements; i++) {
        const strata_redis_reply *e = list->element[i];
        if (e->type != STRATA_REPLY_ARRAY || e->elements != 2 || !is_str(e->element[0]))
            return STRATA_EPROTO;
        strata_redis_xentry x = {0};
        if (stream) {
            x.stream = stream->str;
            x.streamlen = stream->len;
        }
        x.id = e->element[0]->str;
        x.idlen = e->element[0]->len;
        const strata_redis_reply *fv = e->element[1];
        if (fv->type == STRATA_REPLY_ARRAY) {
            if (fv->elements % 2)
                return STRATA_EPROTO;
            x.fv = (const strata_redis_reply *const *)fv->element;
            x.nfv = fv->elements;
        } else if (fv->type != STRATA_REPLY_NIL) {
            return STRATA_EPROTO;
        }
        int rc = fn(ud, &x);
        if (rc)
            return rc;
    }
    return 0;
}

int strata_redis_xentries(const strata_redis_reply *reply,
                          int (*fn)(void *ud, const strata_redis_xentry *e), void *ud) {
    if (!reply || !fn)
        return STRATA_EINVAL;
    if (reply->type == STRATA_REPLY_NIL)
        return 0;
    if (reply->type != STRATA_REPLY_ARRAY)
        return STRATA_EPROTO;
    if (reply->elements == 0)
        return 0;
    const strata_redis_reply *first = reply->element[0];
    /* XREAD shape: [[stream, entries], ...]; an entry list: [[id, fv], ...] where
     * element[1] of the first item is an array of entries (XREAD) or of strings (entry). */
    bool xread = first->type == STRATA_REPLY_ARRAY && first->elements == 2 &&
                 first->element[1]->type == STRATA_REPLY_ARRAY &&
                 (first->element[1]->elements == 0 ||
                  first->element[1]->element[0]->type == STRATA_REPLY_ARRAY);
    if (!xread)
        return walk_entries(reply, NULL, fn, ud);
    for (size_t i = 0; i < reply->elements; i++) {
        const strata_redis_reply *s = reply->element[i];
        if (s->type != STRATA_REPLY_ARRAY || s->elements != 2 || !is_str(s->element[0]))
            return STRATA_EPROTO;
        int rc = walk_entries(s->element[1], s->element[0], fn, ud);
        if (rc)
            return rc;
    }
    return 0;
}
