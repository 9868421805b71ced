/* clock.c: system, offset and manual clocks (strata/clock.h). */
#include <stdatomic.h>
#include <time.h>

#include "strata/alloc.h"
#include "strata/clock.h"
#include "strata/status.h"

enum { CLOCK_SYSTEM, CLOCK_OFFSET, CLOCK_MANUAL };

struct strata_clock {
    int kind;
    _Atomic int64_t offset_ns; /* added to both readings */
    uint64_t start_ns;         /* manual: monotonic reading at offset 0 */
    int64_t wall_start_ms;     /* manual: wall reading at offset 0 */
};

static strata_clock system_clock = {CLOCK_SYSTEM, 0, 0, 0};

strata_clock *strata_clock_system(void) { return &system_clock; }

static strata_clock *create(int kind, uint64_t start_ns, int64_t wall_ms) {
    strata_clock *c = strata_malloc(sizeof *c);
    if (!c)
        return NULL;
    c->kind = kind;
    atomic_init(&c->offset_ns, 0);
    c->start_ns = start_ns;
    c->wall_start_ms = wall_ms;
    return c;
}

strata_clock *strata_clock_create_offset(void) { return create(CLOCK_OFFSET, 0, 0); }

strata_clock *strata_clock_create_manual(uint64_t start_ns, int64_t wall_start_ms) {
    return create(CLOCK_MANUAL, start_ns, wall_start_ms);
}

void strata_clock_destroy(strata_clock **c) {
    if (!c || !*c)
        return;
    if (*c != &system_clock)
        strata_free(*c);
    *c = NULL;
}

static uint64_t os_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * STRATA_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static int64_t os_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t strata_clock_now_ns(const strata_clock *c) {
    if (c->kind == CLOCK_SYSTEM)
        return os_mono_ns();
    int64_t off = atomic_load_explicit(&((strata_clock *)c)->offset_ns, memory_order_relaxed);
    uint64_t base = c->kind == CLOCK_MANUAL ? c->start_ns : os_mono_ns();
    /* A negative offset moves only the wall reading: monotonic time never runs back. */
    return off > 0 ? base + (uint64_t)off : base;
}

int64_t strata_clock_wall_ms(const strata_clock *c) {
    if (c->kind == CLOCK_SYSTEM)
        return os_wall_ms();
    int64_t off = atomic_load_explicit(&((strata_clock *)c)->offset_ns, memory_order_relaxed);
    int64_t base = c->kind == CLOCK_MANUAL ? c->wall_start_ms : os_wall_ms();
    return base + off / (int64_t)STRATA_NS_PER_MS;
}

int strata_clock_advance(strata_clock *c, int64_t delta_ns) {
    if (!c || c->kind == CLOCK_SYSTEM)
        return STRATA_EPERM;
    atomic_fetch_add_explicit(&c->offset_ns, delta_ns, memory_order_relaxed);
    return STRATA_OK;
}

int64_t strata_clock_offset_ns(const strata_clock *c) {
    return atomic_load_explicit(&((strata_clock *)c)->offset_ns, memory_order_relaxed);
}
