/*
 * sync/atomic.h — the project's atomic operations: Concurrency Kit's ck_pr, plus the TSan
 * annotations that make ck_pr's ordering visible (see sync/annotate.h). Private to sync/:
 * include "sync/sync.h".
 *
 * Ordering contract (C11 vocabulary, because that is what reviewers reason in):
 *   *_relaxed        atomic, no ordering. Not annotated: TSan neither sees the access nor
 *                    adds an edge, which is exactly "relaxed". Use for counters and hints.
 *   *_acquire loads  later reads and writes of this thread cannot move before the load.
 *   *_release stores earlier reads and writes of this thread cannot move after the store.
 *   RMWs             (cas, swap/fas, faa) are acq_rel unless the name says otherwise;
 *                    pm_atomic_faa_u64 is relaxed (statistics only).
 *   fences           as C11 fences. TSan cannot model a free-standing fence (it has no
 *                    address to hang an edge on), so a fence never replaces an annotated
 *                    acquire/release operation in code that must be TSan-clean.
 *
 * How ck_pr delivers that on x86-64 (TSO, the only target; CK_MD_TSO in ck_md.h): every
 * ck_pr operation is an `asm volatile` with a "memory" clobber, so the compiler never moves
 * memory accesses across it; plain loads are acquire and plain stores are release in
 * hardware; locked RMWs are full barriers. ck_pr_fence_acquire/release are compiler
 * barriers and ck_pr_fence_memory is MFENCE. We still call the fences ck asks for, so the
 * code stays right if ck is ever built for a weaker memory model.
 *
 * A failed CAS is annotated like a successful one (release before, acquire after). That
 * over-approximates ordering for TSan (it could hide a race that is only "fixed" by a CAS
 * that failed), but it is what TSan's own model of C11 atomics does, and the alternative,
 * releasing only on success, is impossible: the release must come before the attempt.
 *
 * Address parameters are void * like ck_pr's, so callers pass &typed_pointer without casts.
 * Every object accessed through these functions must be accessed ONLY through them while
 * it is shared (TSan cannot see a plain access racing with an asm one, so it would not
 * tell you). size_t and uint64_t are both unsigned long on x86-64 Linux, so the size_t
 * functions use ck_pr's 64-bit operations directly.
 */
#ifndef PM_SYNC_ATOMIC_H
#define PM_SYNC_ATOMIC_H

#include <ck_pr.h>

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/annotate.h"

static_assert(sizeof(size_t) == sizeof(uint64_t), "pm_atomic_*_size uses ck_pr's 64-bit ops");
static_assert(sizeof(void *) == sizeof(uint64_t), "sync/ assumes LP64 (x86-64)");

/* ---- pointers ------------------------------------------------------------------------ */

static inline void *pm_atomic_load_ptr_relaxed(const void *addr) {
    return ck_pr_md_load_ptr(addr);
}

static inline void *pm_atomic_load_ptr_acquire(const void *addr) {
    void *value = ck_pr_md_load_ptr(addr);
    ck_pr_fence_acquire();
    PM_TSAN_ACQUIRE(addr);
    return value;
}

static inline void pm_atomic_store_ptr_relaxed(void *addr, const void *value) {
    ck_pr_store_ptr_unsafe(addr, value);
}

static inline void pm_atomic_store_ptr_release(void *addr, const void *value) {
    PM_TSAN_RELEASE(addr);
    ck_pr_fence_release();
    ck_pr_store_ptr_unsafe(addr, value);
}

/* Returns true if *addr was `expected` and is now `desired`. */
static inline bool pm_atomic_cas_ptr(void *addr, const void *expected, const void *desired) {
    PM_TSAN_RELEASE(addr);
    bool ok = ck_pr_cas_ptr(addr, (void *)(uintptr_t)expected, (void *)(uintptr_t)desired);
    PM_TSAN_ACQUIRE(addr);
    return ok;
}

/* Stores `value`, returns the previous value. */
static inline void *pm_atomic_swap_ptr(void *addr, const void *value) {
    PM_TSAN_RELEASE(addr);
    void *old = ck_pr_fas_ptr(addr, (void *)(uintptr_t)value);
    PM_TSAN_ACQUIRE(addr);
    return old;
}

/* ---- size_t -------------------------------------------------------------------------- */

static inline size_t pm_atomic_load_size_relaxed(const size_t *addr) {
    return ck_pr_load_64((const uint64_t *)addr);
}

static inline size_t pm_atomic_load_size_acquire(const size_t *addr) {
    size_t value = ck_pr_load_64((const uint64_t *)addr);
    ck_pr_fence_acquire();
    PM_TSAN_ACQUIRE(addr);
    return value;
}

static inline void pm_atomic_store_size_relaxed(size_t *addr, size_t value) {
    ck_pr_store_64((uint64_t *)addr, value);
}

static inline void pm_atomic_store_size_release(size_t *addr, size_t value) {
    PM_TSAN_RELEASE(addr);
    ck_pr_fence_release();
    ck_pr_store_64((uint64_t *)addr, value);
}

/* Adds `delta` (wrapping), returns the previous value. */
static inline size_t pm_atomic_faa_size(size_t *addr, size_t delta) {
    PM_TSAN_RELEASE(addr);
    size_t old = ck_pr_faa_64((uint64_t *)addr, delta);
    PM_TSAN_ACQUIRE(addr);
    return old;
}

/* Stores `value`, returns the previous value. */
static inline size_t pm_atomic_fas_size(size_t *addr, size_t value) {
    PM_TSAN_RELEASE(addr);
    size_t old = ck_pr_fas_64((uint64_t *)addr, value);
    PM_TSAN_ACQUIRE(addr);
    return old;
}

static inline bool pm_atomic_cas_size(size_t *addr, size_t expected, size_t desired) {
    PM_TSAN_RELEASE(addr);
    bool ok = ck_pr_cas_64((uint64_t *)addr, expected, desired);
    PM_TSAN_ACQUIRE(addr);
    return ok;
}

/* ---- uint64_t: statistics only, all relaxed -------------------------------------------- */

static inline uint64_t pm_atomic_load_u64_relaxed(const uint64_t *addr) {
    return ck_pr_load_64(addr);
}

static inline void pm_atomic_store_u64_relaxed(uint64_t *addr, uint64_t value) {
    ck_pr_store_64(addr, value);
}

/* Relaxed: a counter bumped here orders nothing else. Returns the previous value. */
static inline uint64_t pm_atomic_faa_u64(uint64_t *addr, uint64_t delta) {
    return ck_pr_faa_64(addr, delta);
}

/* ---- int ----------------------------------------------------------------------------- */

static inline int pm_atomic_load_int_relaxed(const int *addr) {
    return ck_pr_load_int(addr);
}

static inline int pm_atomic_load_int_acquire(const int *addr) {
    int value = ck_pr_load_int(addr);
    ck_pr_fence_acquire();
    PM_TSAN_ACQUIRE(addr);
    return value;
}

static inline void pm_atomic_store_int_relaxed(int *addr, int value) {
    ck_pr_store_int(addr, value);
}

static inline void pm_atomic_store_int_release(int *addr, int value) {
    PM_TSAN_RELEASE(addr);
    ck_pr_fence_release();
    ck_pr_store_int(addr, value);
}

/* Adds `delta` (two's-complement wrap, never UB: it is a locked XADD), returns the old value. */
static inline int pm_atomic_faa_int(int *addr, int delta) {
    PM_TSAN_RELEASE(addr);
    int old = ck_pr_faa_int(addr, delta);
    PM_TSAN_ACQUIRE(addr);
    return old;
}

static inline bool pm_atomic_cas_int(int *addr, int expected, int desired) {
    PM_TSAN_RELEASE(addr);
    bool ok = ck_pr_cas_int(addr, expected, desired);
    PM_TSAN_ACQUIRE(addr);
    return ok;
}

/* ---- fences and spinning --------------------------------------------------------------- */

static inline void pm_atomic_fence_acquire(void) {
    ck_pr_fence_acquire();
}

static inline void pm_atomic_fence_release(void) {
    ck_pr_fence_release();
}

/* The only fence that orders an earlier store before a later load (MFENCE on x86-64). */
static inline void pm_atomic_fence_seq_cst(void) {
    ck_pr_fence_memory();
}

/* Inside spin-wait loops: PAUSE, which saves power and lets the sibling hyperthread run. */
static inline void pm_cpu_relax(void) {
    ck_pr_stall();
}

#endif /* PM_SYNC_ATOMIC_H */
