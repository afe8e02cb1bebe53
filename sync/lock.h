/*
 * sync/lock.h — the project's two locks and its condition variable. Private to sync/:
 * include "sync/sync.h".
 *
 * pm_spinlock: Concurrency Kit's test-and-test-and-set lock (ck_spinlock_fas_t, one
 *   unsigned int, zero = free). For short critical sections that never block (a pool's
 *   free list, a size class's partial list). The fast path is one XCHG, inline. On
 *   contention pm_spinlock_lock_slow() spins PM_SPINLOCK_SPINS times on a plain load
 *   (PAUSE between reads), then calls sched_yield() and repeats. Why yield: these machines
 *   have 2 cores and we routinely run more threads than that; a pure spinner that waits for
 *   a preempted holder burns its whole time slice. Measured (gcc -O2, 2 cores, 20,000 lock
 *   + 500-iteration critical section per thread, 3 runs): 8 threads took 83-91 ms with
 *   ck_spinlock_fas_lock (pure spin), 53-54 ms with 100 spins then yield, 55 ms with 1000
 *   spins then yield, 59-68 ms with pthread_mutex_t; 4 threads were equal (24-30 ms) for
 *   all spinlock variants. With a 20-iteration section, 2 threads: 11.7 ms pure spin,
 *   5.3 ms at 100 spins, 16.6 ms at 1000. Hence 100.
 *   Not ck_spinlock_ticket: a FIFO lock is worst under preemption (every waiter queues
 *   behind a descheduled one) and its fairness buys nothing for allocator critical
 *   sections. Not MCS/CLH: they need a per-thread queue node, which the allocator's own
 *   bootstrap paths cannot provide.
 *   TSan: ck's XCHG is invisible to TSan, so every operation is bracketed by the
 *   __tsan_mutex_* annotations; TSan then treats pm_spinlock as a real mutex (happens-before
 *   from unlock to the next lock, double-unlock and lock-order-inversion reports, held
 *   locks in race reports). Inside the brackets TSan ignores memory accesses, so the
 *   lock's own word is never reported.
 *
 * pm_mutex: a thin wrapper over pthread_mutex_t (glibc: a futex word, uncontended
 *   lock/unlock are one locked instruction each, contended waiters sleep in the kernel).
 *   Chosen over "ck spin + raw futex" because (a) TSan intercepts pthread_mutex_* and
 *   pthread_cond_* natively, so there is nothing to annotate and nothing to get wrong;
 *   (b) the GIL needs a condition variable with a CLOCK_MONOTONIC timeout, and glibc's
 *   condvar (correct under spurious wakeups, cancellation and fork) is far harder to
 *   re-create than to reuse; (c) glibc never allocates in these calls, so they are safe
 *   inside the allocator. The cost is size (40 bytes vs 4) and one extra call per
 *   operation, acceptable for a lock that is allowed to sleep.
 *
 *   pm_mutex_lock_spinning retries for a bounded time before it sleeps, for locks whose
 *   holders rarely keep them long: a sleeper is woken by the unlocking thread, and on a VM
 *   the scheduler often places the woken thread on its waker's CPU even when its own CPU
 *   is idle (seen with perf sched; presumably an idle vCPU, descheduled by the host, looks
 *   busy to the guest), which then leaves two threads sharing one CPU for milliseconds.
 *   The bound is in time, not iterations: PAUSE takes anywhere from ~10 to ~140 cycles
 *   depending on the microarchitecture.
 *
 * pm_cond: pthread_cond_t created with CLOCK_MONOTONIC, so timeouts do not jump when the
 *   wall clock is set. It has no static initializer for that reason: call pm_cond_init.
 *   Waits may wake spuriously; always wait in a loop on the predicate.
 *
 * Fork: after fork() only the forking thread exists in the child; a lock another thread
 *   held stays locked forever. An atfork child handler calls pm_mutex_reinit_after_fork /
 *   pm_spinlock_init to reset such locks to unlocked. A lock the forking thread itself
 *   holds (because the prepare handler took it) is better released with *_unlock in the
 *   child: TSan's view of it then stays consistent.
 *
 * Never allocates: nothing here calls malloc, directly or through stdio (fatal errors are
 * written with write(2)). The allocator takes these locks while it is the malloc.
 *
 * Thread-safety analysis: the lock types are capabilities; every function states what it
 * acquires or requires. Only the implementations carry PM_NO_THREAD_SAFETY_ANALYSIS.
 */
#ifndef PM_SYNC_LOCK_H
#define PM_SYNC_LOCK_H

/* ck_spinlock.h would also pull in ck's CLH/MCS locks, which are not valid C++; only the
 * FAS lock is used, and its header is self-contained. */
#include <spinlock/fas.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "sync/annotate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- pm_spinlock ----------------------------------------------------------------------- */

typedef struct PM_CAPABILITY("mutex") pm_spinlock {
    ck_spinlock_fas_t fas;
} pm_spinlock;

#define PM_SPINLOCK_INITIALIZER { CK_SPINLOCK_FAS_INITIALIZER }

/* Spins on a plain load this many times (PAUSE between) before each sched_yield(). */
#define PM_SPINLOCK_SPINS 100

/* Runtime initialisation (equivalent to PM_SPINLOCK_INITIALIZER); also resets a lock in a
 * fork child. */
static inline void pm_spinlock_init(pm_spinlock *lock);
/* Optional: tells TSan the lock is gone, so its memory can be reused for something else
 * (e.g. an arena page that held a pool header) without TSan remembering the old lock.
 * The lock must be unlocked. No effect outside TSan builds. */
static inline void pm_spinlock_destroy(pm_spinlock *lock);
static inline void pm_spinlock_lock(pm_spinlock *lock) PM_ACQUIRE(lock) PM_NO_THREAD_SAFETY_ANALYSIS;
/* Returns true if the lock was taken. Never waits. */
static inline bool pm_spinlock_trylock(pm_spinlock *lock)
    PM_TRY_ACQUIRE(true, lock) PM_NO_THREAD_SAFETY_ANALYSIS;
static inline void pm_spinlock_unlock(pm_spinlock *lock) PM_RELEASE(lock) PM_NO_THREAD_SAFETY_ANALYSIS;
/* A relaxed snapshot, for assertions and diagnostics only: it synchronises nothing and
 * may be stale by the time it returns. */
static inline bool pm_spinlock_is_locked(const pm_spinlock *lock);

/* Contended path of pm_spinlock_lock; not for direct use. Returns with the lock held. */
void pm_spinlock_lock_slow(pm_spinlock *lock);

static inline void pm_spinlock_init(pm_spinlock *lock) {
    ck_spinlock_fas_init(&lock->fas);
    PM_TSAN_MUTEX_CREATE(lock, PM_TSAN_MUTEX_NOT_STATIC);
}

static inline void pm_spinlock_destroy(pm_spinlock *lock) {
    PM_TSAN_MUTEX_DESTROY(lock, PM_TSAN_MUTEX_NOT_STATIC);
}

static inline void pm_spinlock_lock(pm_spinlock *lock) {
    PM_TSAN_MUTEX_PRE_LOCK(lock, 0);
    if (PM_SYNC_UNLIKELY(!ck_spinlock_fas_trylock(&lock->fas))) {
        pm_spinlock_lock_slow(lock);
    }
    PM_TSAN_MUTEX_POST_LOCK(lock, 0, 0);
}

static inline bool pm_spinlock_trylock(pm_spinlock *lock) {
    PM_TSAN_MUTEX_PRE_LOCK(lock, PM_TSAN_MUTEX_TRY_LOCK);
    bool locked = ck_spinlock_fas_trylock(&lock->fas);
    PM_TSAN_MUTEX_POST_LOCK(
        lock, locked ? PM_TSAN_MUTEX_TRY_LOCK : PM_TSAN_MUTEX_TRY_LOCK | PM_TSAN_MUTEX_TRY_LOCK_FAILED,
        0);
    return locked;
}

static inline void pm_spinlock_unlock(pm_spinlock *lock) {
    PM_TSAN_MUTEX_PRE_UNLOCK(lock, 0);
    ck_spinlock_fas_unlock(&lock->fas);
    PM_TSAN_MUTEX_POST_UNLOCK(lock, 0);
}

static inline bool pm_spinlock_is_locked(const pm_spinlock *lock) {
    return ck_pr_load_uint(&lock->fas.value) != 0;
}

/* ---- pm_mutex ------------------------------------------------------------------------ */

typedef struct PM_CAPABILITY("mutex") pm_mutex {
    pthread_mutex_t impl;
} pm_mutex;

#define PM_MUTEX_INITIALIZER { PTHREAD_MUTEX_INITIALIZER }

void pm_mutex_init(pm_mutex *mutex);
/* The mutex must be unlocked and have no waiters. */
void pm_mutex_destroy(pm_mutex *mutex);
void pm_mutex_lock(pm_mutex *mutex) PM_ACQUIRE(mutex);
/* As pm_mutex_lock, but a contended caller first retries for up to `spin_ns` (polling
 * with PAUSE) before it sleeps. For locks held briefly by threads that should keep their
 * CPUs: every sleep ends in a wake-up, and a wake-up may move the sleeper onto its waker's
 * CPU (measured in alloc/thread_cache.c, where the pool and registry locks use it). */
void pm_mutex_lock_spinning(pm_mutex *mutex, uint64_t spin_ns) PM_ACQUIRE(mutex);
/* Returns true if the mutex was taken. Never waits. */
bool pm_mutex_trylock(pm_mutex *mutex) PM_TRY_ACQUIRE(true, mutex);
void pm_mutex_unlock(pm_mutex *mutex) PM_RELEASE(mutex);
/* Only in a pthread_atfork child handler (or right after fork() in the child): makes the
 * mutex unlocked, whoever held it in the parent. Any other use is a bug. */
void pm_mutex_reinit_after_fork(pm_mutex *mutex);

/* ---- pm_cond ------------------------------------------------------------------------- */

typedef struct pm_cond {
    pthread_cond_t impl;
} pm_cond;

/* Uses CLOCK_MONOTONIC for timeouts. */
void pm_cond_init(pm_cond *cond);
/* No thread may be waiting. */
void pm_cond_destroy(pm_cond *cond);
/* Atomically releases `mutex` and waits; re-acquires it before returning. May return
 * without a signal (spurious wakeup): re-check the predicate. */
void pm_cond_wait(pm_cond *cond, pm_mutex *mutex) PM_REQUIRES(mutex);
/* As pm_cond_wait, but gives up `timeout_ns` nanoseconds (CLOCK_MONOTONIC) after the
 * call: returns 0 when woken (possibly spuriously) or ETIMEDOUT. The mutex is held again
 * in both cases. Any timeout, including UINT64_MAX, is valid. */
int pm_cond_timedwait_ns(pm_cond *cond, pm_mutex *mutex, uint64_t timeout_ns) PM_REQUIRES(mutex);
/* Wakes at least one / all waiters. Holding the mutex is allowed but not required. */
void pm_cond_signal(pm_cond *cond);
void pm_cond_broadcast(pm_cond *cond);

#ifdef __cplusplus
}
#endif

#endif /* PM_SYNC_LOCK_H */
