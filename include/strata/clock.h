/*
 * strata/clock.h: time, injectable.
 *
 * Every TTL and time-window decision in Strata reads a strata_clock, never the
 * OS directly, so tests move time instead of sleeping (memcached's debug time
 * command, h2o's `now` argument).  A clock has a monotonic reading (for TTLs,
 * deadlines) and a wall reading (for sale windows, timestamps); both are the
 * base reading plus an offset that strata_clock_advance() moves.
 *
 *   system  the OS clocks; advance() is refused (STRATA_EPERM)
 *   offset  the OS clocks plus a movable offset (`strata serve --debug-clock`)
 *   manual  starts at a given time and moves only when advanced (unit tests)
 *
 * Reads are lock-free and safe from any thread.
 */
#ifndef STRATA_CLOCK_H
#define STRATA_CLOCK_H

#include <stdint.h>

typedef struct strata_clock strata_clock;

#define STRATA_NS_PER_MS  1000000ULL
#define STRATA_NS_PER_SEC 1000000000ULL

/** The process-wide system clock; never freed, never NULL. */
strata_clock *strata_clock_system(void);

/** A clock that follows the OS plus a movable offset.  NULL on ENOMEM. */
strata_clock *strata_clock_create_offset(void);

/**
 * A manual clock: monotonic reads start at `start_ns`, wall reads at
 * `wall_start_ms` (Unix epoch ms).  NULL on ENOMEM.
 */
strata_clock *strata_clock_create_manual(uint64_t start_ns, int64_t wall_start_ms);

/** Frees a clock made by a create function and sets *c = NULL; NULL/system is a no-op. */
void strata_clock_destroy(strata_clock **c);

/** Monotonic nanoseconds (arbitrary epoch); never goes backwards unless advanced so. */
uint64_t strata_clock_now_ns(const strata_clock *c);

/** Wall-clock milliseconds since the Unix epoch, including the offset. */
int64_t strata_clock_wall_ms(const strata_clock *c);

/**
 * Moves an offset or manual clock by delta_ns.  The offset may go negative to
 * test wall-time windows, but only the wall reading follows it below zero:
 * the monotonic reading is base + max(offset, 0).  STRATA_EPERM for the
 * system clock.
 */
int strata_clock_advance(strata_clock *c, int64_t delta_ns);

/** The current offset (0 for system and for a manual clock never advanced). */
int64_t strata_clock_offset_ns(const strata_clock *c);

#endif
