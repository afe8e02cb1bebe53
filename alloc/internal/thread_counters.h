/*
 * thread_counters.h — statistics counters that cost no lock and no atomic read-modify-write.
 *
 * Each thread owns one counter block; only its owner writes it, with a relaxed load and a
 * relaxed store (a plain add on x86-64: no LOCK prefix, no cache-line ping-pong). Readers sum
 * every block with relaxed loads. A block outlives its thread: when the thread exits its
 * block is marked unowned and a later thread adopts it, counts and all, so totals stay
 * monotonic and the number of blocks is bounded by the peak number of live threads.
 *
 *   block_list -> [owned=1 | counts...] -> [owned=0 | counts...] -> ... (append-only)
 *
 * The list is append-only (push by CAS) and blocks are never freed, so a reader can walk it
 * at any time without a lock or a reference count.
 */
#ifndef PM_ALLOC_INTERNAL_THREAD_COUNTERS_H
#define PM_ALLOC_INTERNAL_THREAD_COUNTERS_H

#include <stdint.h>

#include "sync/sync.h"

/* Internal symbols: hidden, so the fast paths reach them without the GOT. */
#pragma GCC visibility push(hidden)

#ifdef __cplusplus
extern "C" { /* white-box tests are C++ */
#endif

typedef enum pm_counter {
    PM_COUNTER_RAW_MALLOC,
    PM_COUNTER_RAW_CALLOC,
    PM_COUNTER_RAW_REALLOC,
    PM_COUNTER_RAW_FREE,
    PM_COUNTER_RAW_FAILED_ALLOC,   /* malloc/calloc/realloc(NULL) that returned NULL */
    PM_COUNTER_RAW_FAILED_REALLOC, /* realloc of a live block that returned NULL */
    PM_COUNTER_COUNT,
} pm_counter;

/* One cache line per thread, so owners never share a line. */
typedef struct pm_counter_block {
    uint64_t count[PM_COUNTER_COUNT];
    struct pm_counter_block *next; /* immutable once the block is on the list */
    int owned;                     /* 1 while a live thread writes count[] */
} __attribute__((aligned(64))) pm_counter_block;

extern __thread pm_counter_block *pm_counter_tls
    __attribute__((tls_model("initial-exec"), visibility("hidden")));

/* Gives the calling thread a block (adopting an unowned one or making a new one). */
pm_counter_block *pm_counter_attach_slow(void);

static inline void pm_counter_add(pm_counter which, uint64_t delta) {
    pm_counter_block *block = pm_counter_tls;
    if (__builtin_expect(block == NULL, 0)) block = pm_counter_attach_slow();
    uint64_t *slot = &block->count[which];
    /* Single writer: load + store is exact without a read-modify-write instruction. */
    pm_atomic_store_u64_relaxed(slot, pm_atomic_load_u64_relaxed(slot) + delta);
}

/* Sums counter `which` over every block, live threads and exited ones. */
uint64_t pm_counter_sum(pm_counter which);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif /* PM_ALLOC_INTERNAL_THREAD_COUNTERS_H */
