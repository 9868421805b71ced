/*
 * ebr.c: epoch-based reclamation for the L1 cache's lock-free readers.
 *
 * Readers look entries up without a lock, so an entry (or a table array)
 * unlinked by a writer may still be in a reader's hands.  Fraser's EBR
 * ("Practical lock-freedom", 2004; Hart et al., "Performance of memory
 * reclamation for lockless synchronization", 2007) bounds that window: a
 * reader announces the global epoch in its own record while it reads; the
 * writer side advances the epoch only when every active reader has announced
 * the current one; memory unlinked while the epoch was e is freed once the
 * epoch reaches e + 3 (two advances prove every reader that could have seen it
 * has left; the third orders the read-buffer slots those readers wrote before
 * the drain that precedes the free: see l1__reclaim in table.c).
 *
 * Records are process-wide (one per thread, shared by every cache), kept in a
 * static array so a reader never allocates; a thread's record is claimed on
 * its first read and given back at thread exit.  If more than L1_EBR_MAX
 * threads read at once, the extras share an overflow counter that simply
 * holds the epoch still while any of them reads.
 *
 * Cost of a read section: one sequentially consistent store (an xchg on
 * x86-64) on a cache line only this thread writes, and one release store.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "l1_internal.h"

typedef struct {
    _Atomic uint64_t epoch; /* (epoch << 1) | 1 while active, 0 when idle */
    _Atomic int used;
    char pad[52];
} ebr_rec;

static _Alignas(64) ebr_rec recs[L1_EBR_MAX];
static _Atomic uint64_t global_epoch = 1;
static _Atomic int rec_hwm;
static _Atomic int overflow_active;
static _Thread_local int tls_rec = -1;
static pthread_key_t rec_key;
static pthread_once_t rec_once = PTHREAD_ONCE_INIT;

static void rec_release(void *arg) {
    int i = (int)(intptr_t)arg - 1;
    if (i >= 0 && i < L1_EBR_MAX) {
        atomic_store_explicit(&recs[i].epoch, 0, memory_order_release);
        atomic_store_explicit(&recs[i].used, 0, memory_order_release);
    }
}

static void rec_key_init(void) { (void)pthread_key_create(&rec_key, rec_release); }

static int rec_claim(void) {
    pthread_once(&rec_once, rec_key_init);
    for (int i = 0; i < L1_EBR_MAX; i++) {
        int expect = 0;
        if (atomic_load_explicit(&recs[i].used, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong(&recs[i].used, &expect, 1)) {
            int hwm = atomic_load(&rec_hwm);
            while (hwm < i + 1 && !atomic_compare_exchange_weak(&rec_hwm, &hwm, i + 1)) {
            }
            (void)pthread_setspecific(rec_key, (void *)(intptr_t)(i + 1));
            return i;
        }
    }
    return L1_EBR_MAX; /* overflow */
}

int l1__ebr_enter(void) {
    int i = tls_rec;
    if (i < 0)
        i = tls_rec = rec_claim();
    if (i == L1_EBR_MAX) {
        atomic_fetch_add(&overflow_active, 1);
        return i;
    }
    uint64_t e = atomic_load_explicit(&global_epoch, memory_order_relaxed);
    atomic_store_explicit(&recs[i].epoch, (e << 1) | 1, memory_order_seq_cst);
    return i;
}

void l1__ebr_exit(int i) {
    if (i == L1_EBR_MAX) {
        atomic_fetch_sub_explicit(&overflow_active, 1, memory_order_release);
        return;
    }
    atomic_store_explicit(&recs[i].epoch, 0, memory_order_release);
}

uint64_t l1__ebr_epoch(void) { return atomic_load(&global_epoch); }

uint64_t l1__ebr_advance(void) {
    uint64_t g = atomic_load_explicit(&global_epoch, memory_order_seq_cst);
    if (atomic_load_explicit(&overflow_active, memory_order_seq_cst) > 0)
        return g;
    int n = atomic_load(&rec_hwm);
    for (int i = 0; i < n; i++) {
        uint64_t e = atomic_load_explicit(&recs[i].epoch, memory_order_seq_cst);
        if ((e & 1) && (e >> 1) != g)
            return g;
    }
    if (atomic_compare_exchange_strong(&global_epoch, &g, g + 1))
        return g + 1;
    return g; /* another cache advanced it; g now holds the current value */
}
