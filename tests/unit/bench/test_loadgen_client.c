/*
 * test_loadgen_client.c: the load generator's async client (lg_run) against a
 * tiny HTTP responder started inside the test: a thread per connection,
 * plain sockets, canned answers chosen by the request path:
 *   /ok        200, Content-Length, keep-alive
 *   /chunked   201 chunked body {"order_id":"..."}
 *   /close     200 with Connection: close (the client must reconnect)
 *   /delay     200 after 10 ms (service time, answered in order)
 *   /slow      never answers (timeouts)
 *   /garbage   bytes that are not HTTP
 *   /trunc     a response cut short by a close
 *   /5xx       503
 * Checked: counts per outcome, keep-alive reuse (connections opened),
 * pipelining, reconnects, timeouts, open-loop latency measured from the
 * intended send time (a lower bound that holds on any machine speed), and
 * that an unreachable server ends the run with STRATA_EUNAVAIL.
 */
/* ctest-labels: tsan */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The load generator lives in the strata binary (strata_cli, which also pulls the
 * server): its sources are compiled into the test instead. */
#include "../../../bench/loadgen_http.c"
#include "../../../bench/loadgen_engine.c"
#include "strata/status.h"

/* ---- the responder --------------------------------------------------------------- */

#define MAX_CLIENTS 128

typedef struct responder {
    int lfd;
    uint16_t port;
    pthread_t acceptor;
    pthread_t clients[MAX_CLIENTS];
    int cfds[MAX_CLIENTS];
    int nclients;
    pthread_mutex_t mu;
    atomic_int stop;
    atomic_int accepted;
    atomic_int requests;
} responder;

typedef struct client_arg {
    responder *r;
    int fd;
} client_arg;

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void send_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void *client_main(void *arg) {
    client_arg *ca = arg;
    responder *r = ca->r;
    int fd = ca->fd;
    free(ca);
    char buf[65536];
    size_t len = 0;
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 50) == 0) {
            if (atomic_load(&r->stop))
                break;
            continue;
        }
        if (len == sizeof buf)
            break;
        ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        /* Answer every complete request in the buffer (pipelining). */
        bool closed = false;
        for (;;) {
            char *end = memmem(buf, len, "\r\n\r\n", 4);
            if (!end)
                break;
            size_t hl = (size_t)(end - buf) + 4;
            size_t cl = 0;
            char *p = memmem(buf, hl, "Content-Length: ", 16);
            if (p)
                cl = strtoul(p + 16, NULL, 10);
            if (len < hl + cl)
                break;
            char path[64] = "";
            sscanf(buf, "%*s %63s", path);
            atomic_fetch_add(&r->requests, 1);
            memmove(buf, buf + hl + cl, len - hl - cl);
            len -= hl + cl;
            if (strcmp(path, "/ok") == 0) {
                const char *a = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                send_all(fd, a, strlen(a));
            } else if (strcmp(path, "/chunked") == 0) {
                const char *a = "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "6\r\n{\"orde\r\nC\r\nr_id\":\"x-1\"}\r\n0\r\n\r\n";
                send_all(fd, a, strlen(a));
            } else if (strcmp(path, "/close") == 0) {
                const char *a =
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
                send_all(fd, a, strlen(a));
                closed = true;
            } else if (strcmp(path, "/delay") == 0) {
                nap_ms(10);
                const char *a = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                send_all(fd, a, strlen(a));
            } else if (strcmp(path, "/slow") == 0) {
                /* never answers */
            } else if (strcmp(path, "/garbage") == 0) {
                const char *a = "SSH-2.0-OpenSSH_9.2\r\n\r\n";
                send_all(fd, a, strlen(a));
                closed = true;
            } else if (strcmp(path, "/trunc") == 0) {
                const char *a = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort";
                send_all(fd, a, strlen(a));
                closed = true;
            } else {
                const char *a = "HTTP/1.1 503 Unavailable\r\nRetry-After: 1\r\n"
                                "Content-Length: 0\r\n\r\n";
                send_all(fd, a, strlen(a));
            }
            if (closed)
                break;
        }
        if (closed)
            break;
    }
    shutdown(fd, SHUT_RDWR);
    return NULL;
}

static void *acceptor_main(void *arg) {
    responder *r = arg;
    while (!atomic_load(&r->stop)) {
        struct pollfd pf = {r->lfd, POLLIN, 0};
        if (poll(&pf, 1, 20) <= 0)
            continue;
        int fd = accept(r->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        pthread_mutex_lock(&r->mu);
        if (r->nclients == MAX_CLIENTS) {
            pthread_mutex_unlock(&r->mu);
            close(fd);
            continue;
        }
        client_arg *ca = malloc(sizeof *ca);
        ca->r = r;
        ca->fd = fd;
        r->cfds[r->nclients] = fd;
        if (pthread_create(&r->clients[r->nclients], NULL, client_main, ca) == 0)
            r->nclients++;
        else {
            free(ca);
            close(fd);
        }
        pthread_mutex_unlock(&r->mu);
        atomic_fetch_add(&r->accepted, 1);
    }
    return NULL;
}

static responder *responder_start(void) {
    responder *r = calloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(r->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(r->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(r->lfd, 256), 0);
    socklen_t sl = sizeof a;
    getsockname(r->lfd, (struct sockaddr *)&a, &sl);
    r->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&r->acceptor, NULL, acceptor_main, r), 0);
    return r;
}

static void responder_stop(responder *r) {
    atomic_store(&r->stop, 1);
    pthread_join(r->acceptor, NULL);
    for (int i = 0; i < r->nclients; i++) {
        pthread_join(r->clients[i], NULL);
        close(r->cfds[i]);
    }
    close(r->lfd);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* ---- the scenario under test ---------------------------------------------------------- */

typedef struct scen {
    const char *path;
    atomic_int made;
    atomic_int failed;
    atomic_int bodies_ok; /* /chunked bodies decoded right */
} scen;

static bool make(void *ctx, uint64_t g, lg_req *r) {
    scen *s = ctx;
    atomic_fetch_add(&s->made, 1);
    r->method = "POST";
    snprintf(r->path, sizeof r->path, "%s", s->path);
    r->body_len =
        (size_t)snprintf(r->body, sizeof r->body, "{\"user_id\":\"u%llu\"}", (unsigned long long)g);
    return true;
}

static lg_outcome classify(void *ctx, int thread, uint64_t g, const lg_http_resp *r) {
    scen *s = ctx;
    char id[32];
    if (r->status == 201 && lg_json_str(r->body, r->body_len, "order_id", id, sizeof id) &&
        strcmp(id, "x-1") == 0)
        atomic_fetch_add(&s->bodies_ok, 1);
    if (r->status >= 500)
        return LG_HTTP_5XX;
    return r->status < 300 ? LG_OK : LG_OTHER;
}

static void failed(void *ctx, int thread, uint64_t g, lg_outcome why) {
    scen *s = ctx;
    atomic_fetch_add(&s->failed, 1);
}

static void setup_cfg(lg_config *c, responder *r, scen *s, const char *path) {
    lg_config_default(c);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)r->port);
    assert_int_equal(lg_url_parse(url, &c->url, NULL), STRATA_OK);
    s->path = path;
    c->make = make;
    c->classify = classify;
    c->failed = failed;
    c->ctx = s;
    c->timeout_ms = 5000;
}

static uint64_t total(const lg_stats *st) {
    uint64_t n = 0;
    for (int i = 0; i < LG__NOUTCOMES; i++)
        n += st->counts[i];
    return n;
}

/* ---- tests -------------------------------------------------------------------------- */

static void keep_alive_reuses_connections(void **state) {
    (void)state;
    responder *r = responder_start();
    scen s = {0};
    lg_config c;
    setup_cfg(&c, r, &s, "/ok");
    c.threads = 2;
    c.connections = 4;
    c.requests = 2000;
    lg_stats st;
    assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_OK);
    assert_int_equal(st.counts[LG_OK], 2000);
    assert_int_equal(total(&st), 2000);
    assert_int_equal(st.sent, 2000);
    assert_int_equal(st.connects, 4); /* keep-alive: no reconnects */
    assert_int_equal(atomic_load(&r->accepted), 4);
    assert_int_equal(strata_histogram_count(st.lat), 2000);
    assert_true(st.elapsed_s > 0);
    assert_int_equal(atomic_load(&s.made), 2000);
    lg_stats_free(&st);
    responder_stop(r);
}

static void pipelining_and_chunked(void **state) {
    (void)state;
    responder *r = responder_start();
    scen s = {0};
    lg_config c;
    setup_cfg(&c, r, &s, "/chunked");
    c.connections = 2;
    c.depth = 16;
    c.requests = 3000;
    lg_stats st;
    assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_OK);
    assert_int_equal(st.counts[LG_OK], 3000);
    assert_int_equal(atomic_load(&s.bodies_ok), 3000);
    assert_int_equal(st.connects, 2);
    assert_int_equal(atomic_load(&r->requests), 3000);
    lg_stats_free(&st);
    responder_stop(r);
}

static void connection_close_reconnects(void **state) {
    (void)state;
    responder *r = responder_start();
    scen s = {0};
    lg_config c;
    setup_cfg(&c, r, &s, "/close");
    c.connections = 3;
    c.requests = 60;
    lg_stats st;
    assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_OK);
    assert_int_equal(st.counts[LG_OK], 60);
    assert_int_equal(total(&st), 60);
    assert_true(st.connects >= 60); /* one connection per request */
    assert_int_equal(atomic_load(&s.failed), 0);
    lg_stats_free(&st);
    responder_stop(r);
}

static void timeouts_count_and_end_the_run(void **state) {
    (void)state;
    responder *r = responder_start();
    scen s = {0};
    lg_config c;
    setup_cfg(&c, r, &s, "/slow");
    c.connections = 2;
    c.depth = 2;
    c.requests = 8;
    c.timeout_ms = 100;
    lg_stats st;
    assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_OK);
    assert_int_equal(st.counts[LG_TIMEOUT], 8);
    assert_int_equal(total(&st), 8);
    assert_int_equal(atomic_load(&s.failed), 8);
    assert_int_equal(strata_histogram_count(st.lat), 0);
    lg_stats_free(&st);
    responder_stop(r);
}

static void garbage_and_truncation_are_errors(void **state) {
    (void)state;
    const char *paths[] = {"/garbage", "/trunc", "/5xx"};
    for (int i = 0; i < 3; i++) {
        responder *r = responder_start();
        scen s = {0};
        lg_config c;
        setup_cfg(&c, r, &s, paths[i]);
        c.connections = 2;
        c.requests = 20;
        lg_stats st;
        assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_OK);
        assert_int_equal(total(&st), 20);
        if (i < 2) {
            assert_int_equal(st.counts[LG_BAD_RESPONSE], 20);
            assert_int_equal(atomic_load(&s.failed), 20);
        } else {
            assert_int_equal(st.counts[LG_HTTP_5XX], 20);
            assert_int_equal(atomic_load(&s.failed), 0);
        }
        lg_stats_free(&st);
        responder_stop(r);
    }
}

/*
 * One connection, a server that takes 10 ms per request, 50 requests due
 * within 98 ms (500/s).  The server needs >= 500 ms, so the last request
 * completes >= 500 ms after the first send (>= t0), while it was due at
 * t0 + 98 ms: measured from its intended time its latency is >= 402 ms.  A
 * closed-loop client would report ~10 ms for every request.
 */
static void open_loop_measures_from_intended_time(void **state) {
    (void)state;
    responder *r = responder_start();
    scen s = {0};
    lg_config c;
    setup_cfg(&c, r, &s, "/delay");
    c.connections = 1;
    c.requests = 50;
    c.rate = 500;
    lg_stats st;
    assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_OK);
    assert_int_equal(st.counts[LG_OK], 50);
    assert_true(strata_histogram_max(st.lat) >= 402000000ull * 31 / 32);
    assert_true(st.late > 0);
    assert_true(st.elapsed_s >= 0.5);
    lg_stats_free(&st);

    /* Closed loop on the same server: every latency is one service time, never the queue. */
    scen s2 = {0};
    setup_cfg(&c, r, &s2, "/delay");
    c.connections = 1;
    c.requests = 20;
    assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_OK);
    assert_int_equal(st.counts[LG_OK], 20);
    assert_true(strata_histogram_min(st.lat) >= 10000000ull);
    lg_stats_free(&st);
    responder_stop(r);
}

/* Open loop with a duration: exactly rate x duration requests are scheduled. */
static void open_loop_duration_sends_the_schedule(void **state) {
    (void)state;
    responder *r = responder_start();
    scen s = {0};
    lg_config c;
    setup_cfg(&c, r, &s, "/ok");
    c.threads = 2;
    c.connections = 4;
    c.rate = 1000;
    c.duration_ms = 300;
    lg_stats st;
    assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_OK);
    assert_int_equal(st.sent, 300);
    assert_int_equal(st.counts[LG_OK], 300);
    lg_stats_free(&st);
    responder_stop(r);
}

static void unreachable_server_ends_with_eunavail(void **state) {
    (void)state;
    /* A port with nothing listening: bind, read the port, close. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t sl = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &sl);
    close(fd);
    scen s = {0};
    lg_config c;
    lg_config_default(&c);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
    assert_int_equal(lg_url_parse(url, &c.url, NULL), STRATA_OK);
    s.path = "/ok";
    c.make = make;
    c.classify = classify;
    c.ctx = &s;
    c.connections = 2;
    c.requests = 10;
    c.connect_timeout_ms = 100;
    c.stall_ms = 300;
    lg_stats st;
    assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_EUNAVAIL);
    assert_true(st.connect_errors > 0);
    assert_int_equal(st.counts[LG_OK], 0);
    lg_stats_free(&st);
}

static void config_is_checked(void **state) {
    (void)state;
    lg_config c;
    lg_config_default(&c);
    c.make = make;
    c.classify = classify;
    c.requests = 1;
    assert_int_equal(lg_config_check(&c, NULL), STRATA_OK);
    c.threads = 0;
    assert_int_equal(lg_config_check(&c, NULL), STRATA_EINVAL);
    c.threads = 4;
    c.connections = 2; /* fewer connections than threads */
    assert_int_equal(lg_config_check(&c, NULL), STRATA_EINVAL);
    c.connections = 4;
    c.depth = 257;
    assert_int_equal(lg_config_check(&c, NULL), STRATA_EINVAL);
    c.depth = 1;
    c.requests = 0; /* neither requests nor duration */
    strata_buf err = STRATA_BUF_INIT;
    assert_int_equal(lg_config_check(&c, &err), STRATA_EINVAL);
    assert_non_null(strstr(err.data, "duration"));
    strata_buf_free(&err);
    lg_stats st;
    assert_int_equal(lg_run(&c, NULL, NULL, &st), STRATA_EINVAL);
    lg_stats_free(&st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(keep_alive_reuses_connections),
        cmocka_unit_test(pipelining_and_chunked),
        cmocka_unit_test(connection_close_reconnects),
        cmocka_unit_test(timeouts_count_and_end_the_run),
        cmocka_unit_test(garbage_and_truncation_are_errors),
        cmocka_unit_test(open_loop_measures_from_intended_time),
        cmocka_unit_test(open_loop_duration_sends_the_schedule),
        cmocka_unit_test(unreachable_server_ends_with_eunavail),
        cmocka_unit_test(config_is_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
