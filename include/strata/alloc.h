/*
 * strata/alloc.h: the one allocator every Strata module allocates through.
 *
 * By default these are thin calls to libc.  Tests install the counting hook to
 * measure bytes in use (L1 per-entry overhead) and to fail the N-th
 * allocation (fault sweeps: every caller must then return STRATA_ENOMEM and
 * stay consistent).  Hooks are process-wide; install them before threads start.
 */
#ifndef STRATA_ALLOC_H
#define STRATA_ALLOC_H

#include <stddef.h>
#include <stdint.h>

/** malloc(3)-alike; returns NULL on failure (or on an injected failure). */
void *strata_malloc(size_t size);
/** calloc(3)-alike with overflow check. */
void *strata_calloc(size_t n, size_t size);
/** realloc(3)-alike; on failure the old block is untouched. */
void *strata_realloc(void *ptr, size_t size);
/** free(3)-alike; NULL is a no-op. */
void strata_free(void *ptr);
/** strdup(3)-alike; the copy is freed with strata_free(). */
char *strata_strdup(const char *s);
/** Copies n bytes of s and adds a NUL. */
char *strata_strndup(const char *s, size_t n);

/**
 * Switches to the counting allocator (off by default).  While on, every
 * allocation is counted with malloc_usable_size() and
 * strata_alloc_bytes_in_use() is exact for memory allocated while on.
 */
void strata_alloc_counting(int on);

/** Bytes allocated through strata_* and not yet freed, while counting is on. */
int64_t strata_alloc_bytes_in_use(void);

/** Number of successful allocations since counting was switched on. */
uint64_t strata_alloc_count(void);

/**
 * Makes the n-th allocation from now (1 = the next one) fail, and every one
 * after it while `sticky` is set; n = 0 disarms.  Implies counting.
 */
void strata_alloc_fail_at(uint64_t n, int sticky);

/** Number of allocations that were failed on purpose. */
uint64_t strata_alloc_failures(void);

#endif
