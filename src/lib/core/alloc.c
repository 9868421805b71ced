/*
 * alloc.c: the hookable allocator (strata/alloc.h).
 *
 * Fast path: one relaxed load of `mode`; when 0 the calls go straight to libc.
 * Counting mode adds malloc_usable_size() of each block to a global counter
 * (so the measure includes allocator rounding, which is what "bytes in use"
 * honestly means) and supports failing the N-th allocation for fault sweeps.
 * Blocks allocated before counting was switched on are freed uncounted-safe:
 * the counter is signed and may dip; tests switch counting on before they
 * allocate what they measure.
 */
#include <malloc.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "strata/alloc.h"

static _Atomic int mode; /* 0 plain, 1 counting */
static _Atomic int64_t bytes_in_use;
static _Atomic uint64_t nallocs;
static _Atomic uint64_t fail_at; /* allocation number that fails; 0 = never */
static _Atomic int fail_sticky;
static _Atomic uint64_t nfailures;

static int should_fail(void) {
    uint64_t target = atomic_load_explicit(&fail_at, memory_order_relaxed);
    if (target == 0)
        return 0;
    uint64_t n = atomic_fetch_add_explicit(&nallocs, 1, memory_order_relaxed) + 1;
    if (n == target || (n > target && atomic_load_explicit(&fail_sticky, memory_order_relaxed))) {
        atomic_fetch_add_explicit(&nfailures, 1, memory_order_relaxed);
        return 1;
    }
    return 0;
}

static void *counted(void *p) {
    if (p)
        atomic_fetch_add_explicit(&bytes_in_use, (int64_t)malloc_usable_size(p),
                                  memory_order_relaxed);
    return p;
}

void *strata_malloc(size_t size) {
    if (!atomic_load_explicit(&mode, memory_order_relaxed))
        return malloc(size);
    if (should_fail())
        return NULL;
    if (atomic_load_explicit(&fail_at, memory_order_relaxed) == 0)
        atomic_fetch_add_explicit(&nallocs, 1, memory_order_relaxed);
    return counted(malloc(size));
}

void *strata_calloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size)
        return NULL;
    if (!atomic_load_explicit(&mode, memory_order_relaxed))
        return calloc(n, size);
    if (should_fail())
        return NULL;
    if (atomic_load_explicit(&fail_at, memory_order_relaxed) == 0)
        atomic_fetch_add_explicit(&nallocs, 1, memory_order_relaxed);
    return counted(calloc(n, size));
}

void *strata_realloc(void *ptr, size_t size) {
    if (!atomic_load_explicit(&mode, memory_order_relaxed))
        return realloc(ptr, size);
    if (should_fail())
        return NULL;
    if (atomic_load_explicit(&fail_at, memory_order_relaxed) == 0)
        atomic_fetch_add_explicit(&nallocs, 1, memory_order_relaxed);
    size_t old = ptr ? malloc_usable_size(ptr) : 0;
    void *p = realloc(ptr, size);
    if (!p)
        return NULL;
    atomic_fetch_add_explicit(&bytes_in_use, (int64_t)malloc_usable_size(p) - (int64_t)old,
                              memory_order_relaxed);
    return p;
}

void strata_free(void *ptr) {
    if (!ptr)
        return;
    if (atomic_load_explicit(&mode, memory_order_relaxed))
        atomic_fetch_sub_explicit(&bytes_in_use, (int64_t)malloc_usable_size(ptr),
                                  memory_order_relaxed);
    free(ptr);
}

char *strata_strndup(const char *s, size_t n) {
    char *p = strata_malloc(n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *strata_strdup(const char *s) { return strata_strndup(s, strlen(s)); }

void strata_alloc_counting(int on) {
    if (on && !atomic_load(&mode)) {
        atomic_store(&bytes_in_use, 0);
        atomic_store(&nallocs, 0);
    }
    atomic_store(&mode, on ? 1 : 0);
}

int64_t strata_alloc_bytes_in_use(void) { return atomic_load(&bytes_in_use); }

uint64_t strata_alloc_count(void) { return atomic_load(&nallocs); }

void strata_alloc_fail_at(uint64_t n, int sticky) {
    if (n) {
        if (!atomic_load(&mode))
            strata_alloc_counting(1);
        atomic_store(&nallocs, 0);
    }
    atomic_store(&fail_sticky, sticky ? 1 : 0);
    atomic_store(&fail_at, n);
}

uint64_t strata_alloc_failures(void) { return atomic_load(&nfailures); }
