/*
 * redis_sync.c: the blocking Redis API for tools, tests and the CLI.
 *
 * Rather than a second client on hiredis' blocking calls (which have no
 * Sentinel or Cluster logic and their own timeout rules), a blocking client
 * is the asynchronous client on a private uv loop: a call submits and runs
 * the loop until its callback fired.  Deadlines, reconnects, MOVED, NOSCRIPT
 * and "outcome unknown" behave exactly as they do in the server.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "redis_priv.h"
#include "strata/alloc.h"
#include "strata/status.h"

struct strata_redis_sync {
    uv_loop_t loop;
    strata_redis *r;
};

int strata_redis_sync_create(strata_redis_sync **out, const char *url,
                             const strata_redis_options *opts, strata_buf *err) {
    if (!out)
        return STRATA_EINVAL;
    *out = NULL;
    strata_redis_sync *s = strata_calloc(1, sizeof(*s));
    if (!s)
        return STRATA_ENOMEM;
    if (uv_loop_init(&s->loop) != 0) {
        strata_free(s);
        return STRATA_ESYS;
    }
    int rc = strata_redis_create(&s->r, &s->loop, url, opts, err);
    if (rc < 0) {
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        strata_free(s);
        return rc;
    }
    *out = s;
    return STRATA_OK;
}

void strata_redis_sync_destroy(strata_redis_sync **sp) {
    if (!sp || !*sp)
        return;
    strata_redis_sync *s = *sp;
    *sp = NULL;
    strata_redis_destroy(&s->r);
    uv_run(&s->loop, UV_RUN_DEFAULT); /* lets every handle close */
    uv_loop_close(&s->loop);
    strata_free(s);
}

strata_redis *strata_redis_sync_client(strata_redis_sync *s) { return s->r; }

void strata_redis_sync_cb(void *ud, int status, const strata_redis_reply *reply) {
    strata_redis_sync_op *op = ud;
    op->done = true;
    op->status = status;
    op->reply = reply ? strata_redis_reply_dup(reply) : NULL;
    if (reply && !op->reply && status == STRATA_OK)
        op->status = STRATA_ENOMEM;
}

int strata_redis_sync_wait(strata_redis_sync *s, strata_redis_sync_op *op) {
    while (!op->done)
        uv_run(&s->loop, UV_RUN_ONCE);
    return op->status;
}

static void run_for_cb(uv_timer_t *t) { *(bool *)t->data = true; }
static void close_cb(uv_handle_t *h) { (void)h; }

void strata_redis_sync_run_for(strata_redis_sync *s, uint32_t ms) {
    uv_timer_t t;
    bool fired = false;
    uv_timer_init(&s->loop, &t);
    t.data = &fired;
    uv_timer_start(&t, run_for_cb, ms, 0);
    while (!fired)
        uv_run(&s->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, close_cb);
    uv_run(&s->loop, UV_RUN_NOWAIT);
}

static int finish(strata_redis_sync *s, strata_redis_sync_op *op, int rc,
                  strata_redis_reply **reply) {
    if (reply)
        *reply = NULL;
    if (rc < 0)
        return rc;
    rc = strata_redis_sync_wait(s, op);
    if (reply)
        *reply = op->reply;
    else
        strata_redis_reply_free(op->reply);
    return rc;
}

int strata_redis_sync_command_argv(strata_redis_sync *s, const strata_redis_call *call,
                                   strata_redis_reply **reply, int argc, const char *const *argv,
                                   const size_t *argvlen) {
    strata_redis_sync_op op = {0};
    uv_update_time(&s->loop);
    int rc = strata_redis_command_argv(s->r, call, strata_redis_sync_cb, &op, argc, argv, argvlen);
    return finish(s, &op, rc, reply);
}

int strata_redis_sync_command(strata_redis_sync *s, strata_redis_reply **reply, const char *fmt,
                              ...) {
    if (!s || !fmt)
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
    strata_redis_sync_op op = {0};
    uv_update_time(&s->loop);
    int rc = redis__submit_formatted(s->r, NULL, strata_redis_sync_cb, &op, cmd, (size_t)len, NULL);
    return finish(s, &op, rc, reply);
}
