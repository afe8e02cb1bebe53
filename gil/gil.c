/*
 * gil/gil.c — the modelled GIL (API and contract in gil/gil.h).
 *
 * What it owns: one global lock with CPython's forced-switching fairness, the switch
 * interval, the embedder's check, and the per-thread "I hold it" flag.
 *
 * ---- State -------------------------------------------------------------------------------
 *
 *   gil_mutex        pm_mutex; protects everything below except drop_request's fast read
 *   gil_locked       0 = free, 1 = held                                   (under gil_mutex)
 *   switch_number    incremented by every acquisition                     (under gil_mutex)
 *   waiters          threads in take_gil_locked()'s wait loop            (under gil_mutex)
 *   drop_request     a waiter asked the holder to let go. Written under gil_mutex, read
 *                    there too, and read WITHOUT it (relaxed) by pm_gil_yield's fast path:
 *                    so it is accessed only through pm_atomic_*_int
 *   held_here        thread-local: this thread holds the GIL. Read and written only by its
 *                    own thread, hence no lock
 *   gil_cond         "the GIL became free" (and "the drop request was cleared")
 *   switch_cond      "switch_number moved": a dropping holder waits here for a hand-off
 *
 * ---- State machine -----------------------------------------------------------------------
 *
 * The GIL's state is the pair (gil_locked, drop_request):
 *
 *            acquire                 a waiter's interval
 *   FREE --------------> HELD ----------------------------> HELD+REQ
 *   (0,0) <-------------  (1,0)        times out             (1,1)
 *            release       ^                                   |  holder's yield / release:
 *                          |  a waiter (or newcomer) acquires  |  gil_locked = 0, then the
 *                          |  and clears the request           v  holder sleeps on switch_cond
 *                          +----------------------------- FREE+REQ (0,1)
 *
 * switch_number counts the arrows into HELD. The old holder, asleep in FREE+REQ, wakes only
 * when it moves, i.e. after another thread has taken the GIL; in pm_gil_yield it then
 * queues for the GIL like any waiter.
 *
 *   - Every acquisition: gil_locked = 1, switch_number++, broadcast switch_cond, and if a
 *     drop request is set, clear it (the request has been served, whoever took the GIL).
 *   - A waiter loops on gil_cond while gil_locked. With no request pending it waits at most
 *     one interval; if that wait timed out, the GIL is still held, switch_number has not
 *     moved during the wait and nobody else has asked meanwhile, it sets drop_request. With
 *     a request pending it waits without a timeout: timing again could only set a flag that
 *     is already set, and periodic wake-ups would burn CPU at small intervals.
 *   - Release: gil_locked = 0 and signal one waiter on gil_cond. If drop_request is set,
 *     this is a FORCED hand-off: note switch_number and wait on switch_cond until it moves.
 *     Yield = (if a request is pending under the mutex) that release, then acquire.
 *
 * ---- Why the forced hand-off cannot hang ---------------------------------------------------
 *
 * Invariant: drop_request is set only by a thread inside take_gil_locked()'s wait loop, and is
 * cleared by the next acquisition. A thread leaves that loop only by acquiring. So while
 * the request is set, its setter is still a waiter; the dropping holder has just freed the
 * GIL and signalled gil_cond, so some waiter (or a newcomer that finds it free) acquires,
 * switch_number moves and switch_cond is broadcast. The dropper checks its predicate under
 * gil_mutex before each wait, so the broadcast cannot fall between check and wait.
 *
 * ---- Why a second condition variable ------------------------------------------------------
 *
 * The two kinds of sleeper wait for different predicates: waiters for "free", the dropping
 * holder for "someone else took it". On one condition variable a pm_cond_signal after a
 * release could wake the dropper instead of a waiter; the dropper's predicate is false, it
 * sleeps again, and the waiter never hears that the GIL is free: a lost wake-up, with
 * everyone asleep. Broadcasting every change on one condition would fix that by waking
 * every sleeper for every event. Two conditions over the SAME mutex keep each signal aimed
 * at the threads that can act on it. (CPython also gives switch_cond its own mutex; one
 * mutex is simpler and enough, since every predicate lives under gil_mutex.)
 *
 * Why the dropper must wait at all: without it, a holder that yields in a tight loop
 * releases and re-acquires before the woken waiter has even been scheduled (the waiter
 * needs a context switch; the holder is already running), so the waiter loses every time
 * and the interval means nothing. That is the "convoy" CPython's FORCE_SWITCHING fixes.
 * Measured by removing the wait: a holder yielding in a loop then kept the GIL for the
 * whole 30 s hang guard of gil_test's WaiterGetsGilWhileHolderKeepsYielding, and all three
 * ForcedHandOff* tests failed.
 *
 * Why clearing a request broadcasts gil_cond when other waiters remain: they wait without
 * a timeout while a request is pending (see above). Once it is served by someone else,
 * they must wake to start timing their own interval again, or a holder that only ever
 * yields would keep them waiting forever (measured by removing the broadcast:
 * gil_test's WaiterThatSleptThroughAServedRequestGetsItsTurn then hangs, 3 runs of 3).
 *
 * ---- The switch interval ------------------------------------------------------------------
 *
 * Relaxed atomic, microseconds, default 5000 (CPython's 5 ms), at least 1. Read by each
 * waiter before each timed wait, so a change applies to the next wait. Timed waits use
 * pm_cond_timedwait_ns, i.e. CLOCK_MONOTONIC: setting the wall clock changes nothing. A
 * spurious or early wake-up simply restarts the interval (CPython does the same); the
 * interval is a minimum time before a request, not a deadline.
 *
 * ---- What ThreadSanitizer sees -----------------------------------------------------------
 *
 * All GIL hand-offs go through pthread_mutex_* / pthread_cond_* (pm_mutex, pm_cond), which
 * TSan intercepts: release -> unlock(gil_mutex) -> lock(gil_mutex) in the next holder's
 * take_gil is a happens-before edge, so data protected by the GIL is race-free for TSan
 * exactly as it ships. drop_request is the only state touched outside the mutex; its
 * relaxed accesses are ck_pr operations TSan does not see, and nothing is published
 * through it (a stale read only delays or needlessly enters the slow path, which re-reads
 * it under the mutex). The check pointer is published with a release store and read with
 * an acquire load (annotated in sync/atomic.h). No busy waiting anywhere: every wait is a
 * pm_cond wait. Checked: the tests keep their shared data plain and run clean under
 * --config=tsan, and a thread that touches such data without the GIL is reported.
 *
 * ---- Alternatives rejected ----------------------------------------------------------------
 *
 *  - A plain pm_mutex as the GIL: no fairness. A holder that unlocks and relocks in a loop
 *    starves waiters (glibc mutexes are not FIFO and the running thread wins the race).
 *  - A ticket/FIFO lock: fair, but it switches at every yield instead of every interval,
 *    and a FIFO lock is at its worst when the next ticket's thread is preempted.
 *  - Handing the GIL directly to the requesting thread (ownership transfer while it
 *    sleeps): stronger ordering with several waiters, but then a preempted requester
 *    blocks everyone; CPython's rule (the dropper waits until SOMEONE else took it) gives
 *    the guarantee that matters, that the dropper cannot take it straight back.
 */
#include "gil/gil.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

pm_gil_capability pm_gil;

/* ---- state ----------------------------------------------------------------------------- */

static pm_mutex gil_mutex = PM_MUTEX_INITIALIZER;
static int gil_locked PM_GUARDED_BY(gil_mutex);
static uint64_t switch_number PM_GUARDED_BY(gil_mutex);
static unsigned waiters PM_GUARDED_BY(gil_mutex);
static pm_cond gil_cond;
static pm_cond switch_cond;

/* Set (1) by a waiter, cleared by the next acquisition; both under gil_mutex. Read without
 * the mutex only by pm_gil_yield's fast path. Only through pm_atomic_*_int. */
static int drop_request;

static uint64_t switch_interval_us = PM_GIL_DEFAULT_SWITCH_INTERVAL_US; /* relaxed atomic */
static void *gil_check;                                                  /* int (*)(void) */

/* initial-exec like alloc/'s thread counters: one %fs-relative load, no __tls_get_addr. */
static __thread bool held_here __attribute__((tls_model("initial-exec")));

/* pm_cond has no static initializer (CLOCK_MONOTONIC needs pthread_condattr_setclock). */
static pthread_once_t gil_once = PTHREAD_ONCE_INIT;

/* ---- fatal errors ---------------------------------------------------------------------- */

__attribute__((noreturn, cold, noinline)) static void gil_fatal(const char *message) {
    /* write(2), not stdio: the GIL is taken around allocator calls. */
    static const char prefix[] = "pymalloc-mt gil: ";
    ssize_t ignored = write(STDERR_FILENO, prefix, sizeof prefix - 1);
    ignored = write(STDERR_FILENO, message, strlen(message));
    ignored = write(STDERR_FILENO, "\n", 1);
    (void)ignored;
    abort();
}

/* ---- initialisation and fork ----------------------------------------------------------- */

static void gil_atfork_child(void) {
    pm_gil_reinit_after_fork();
}

static void gil_init_once(void) {
    pm_cond_init(&gil_cond);
    pm_cond_init(&switch_cond);
    if (pthread_atfork(NULL, NULL, gil_atfork_child) != 0) {
        gil_fatal("pthread_atfork failed");
    }
}

static void gil_init(void) {
    if (pthread_once(&gil_once, gil_init_once) != 0) gil_fatal("pthread_once failed");
}

void pm_gil_reinit_after_fork(void) {
    /* Only the calling thread exists. Whoever held gil_mutex or waited on the conditions
     * in the parent is gone, so all three are re-created rather than unlocked or
     * signalled. gil_init() first: if the GIL was never used it creates the conditions
     * (and if the parent was inside pthread_once, glibc restarts it in the child), and
     * re-creating freshly made ones is harmless. */
    pm_mutex_reinit_after_fork(&gil_mutex);
    gil_init();
    pm_cond_init(&gil_cond);
    pm_cond_init(&switch_cond);
    pm_mutex_lock(&gil_mutex);
    gil_locked = held_here ? 1 : 0;
    waiters = 0;
    pm_atomic_store_int_relaxed(&drop_request, 0);
    pm_mutex_unlock(&gil_mutex);
}

/* ---- take and drop --------------------------------------------------------------------- */

static void take_gil_locked(void) PM_REQUIRES(gil_mutex) {
    if (gil_locked) {
        waiters++;
        while (gil_locked) {
            if (pm_atomic_load_int_relaxed(&drop_request) != 0) {
                /* Someone has asked already; it is served when the holder lets go. */
                pm_cond_wait(&gil_cond, &gil_mutex);
                continue;
            }
            uint64_t seen = switch_number;
            uint64_t interval_us = pm_gil_get_switch_interval_us();
            uint64_t timeout_ns = interval_us > UINT64_MAX / 1000u ? UINT64_MAX : interval_us * 1000u;
            int rc = pm_cond_timedwait_ns(&gil_cond, &gil_mutex, timeout_ns);
            if (rc == ETIMEDOUT && gil_locked && switch_number == seen &&
                pm_atomic_load_int_relaxed(&drop_request) == 0) {
                pm_atomic_store_int_relaxed(&drop_request, 1);
            }
        }
        waiters--;
    }
    gil_locked = 1;
    switch_number++;
    if (pm_atomic_load_int_relaxed(&drop_request) != 0) {
        pm_atomic_store_int_relaxed(&drop_request, 0);
        /* Remaining waiters sleep untimed while a request is pending: restart their clocks. */
        if (waiters > 0) pm_cond_broadcast(&gil_cond);
    }
    /* A dropping holder may be waiting for this switch. */
    pm_cond_broadcast(&switch_cond);
}

static void drop_gil_locked(void) PM_REQUIRES(gil_mutex) {
    gil_locked = 0;
    if (waiters > 0) pm_cond_signal(&gil_cond);
    if (pm_atomic_load_int_relaxed(&drop_request) != 0) {
        /* Forced hand-off: a waiter asked, so do not come back (return to a caller who may
         * re-acquire at once) until someone else has taken the GIL. Ends: see the
         * invariant in the design note. */
        uint64_t mine = switch_number;
        while (switch_number == mine) pm_cond_wait(&switch_cond, &gil_mutex);
    }
}

/* ---- public API ------------------------------------------------------------------------ */

/* The GIL is not a lock object the analysis can follow: it is gil_locked, changed under
 * gil_mutex. These two empty functions are where the capability `pm_gil` changes hands
 * for the analysis, so that everything else in this file, gil_mutex included, is checked. */
static inline void gil_capability_acquired(void) PM_ACQUIRE(pm_gil) PM_NO_THREAD_SAFETY_ANALYSIS {}
static inline void gil_capability_released(void) PM_RELEASE(pm_gil) PM_NO_THREAD_SAFETY_ANALYSIS {}

void pm_gil_acquire(void) {
    if (held_here) gil_fatal("pm_gil_acquire: this thread already holds the GIL (it is not recursive)");
    gil_init();
    pm_mutex_lock(&gil_mutex);
    take_gil_locked();
    pm_mutex_unlock(&gil_mutex);
    held_here = true;
    gil_capability_acquired();
}

void pm_gil_release(void) {
    if (!held_here) gil_fatal("pm_gil_release: this thread does not hold the GIL");
    held_here = false;
    pm_mutex_lock(&gil_mutex);
    drop_gil_locked();
    pm_mutex_unlock(&gil_mutex);
    gil_capability_released();
}

__attribute__((noinline)) static void yield_slow(void) {
    if (!held_here) gil_fatal("pm_gil_yield: this thread does not hold the GIL");
    pm_mutex_lock(&gil_mutex);
    /* The fast path's read was relaxed and may be stale; decide under the mutex. */
    if (pm_atomic_load_int_relaxed(&drop_request) != 0) {
        held_here = false;
        drop_gil_locked();
        take_gil_locked();
        held_here = true;
    }
    pm_mutex_unlock(&gil_mutex);
}

void pm_gil_yield(void) {
    if (PM_SYNC_LIKELY(pm_atomic_load_int_relaxed(&drop_request) == 0)) return;
    yield_slow();
}

bool pm_gil_drop_requested(void) {
    return pm_atomic_load_int_relaxed(&drop_request) != 0;
}

bool pm_gil_held(void) {
    void *check = pm_atomic_load_ptr_acquire(&gil_check);
    if (check != NULL) {
        int (*held)(void) = (int (*)(void))(uintptr_t)check;
        return held() != 0;
    }
    return held_here;
}

void pm_gil_assert_held(void) {
    if (PM_SYNC_UNLIKELY(!pm_gil_held())) gil_fatal("pm_gil_assert_held: the GIL is not held by this thread");
}

void pm_gil_set_check(int (*held)(void)) {
    pm_atomic_store_ptr_release(&gil_check, (const void *)(uintptr_t)held);
}

void pm_gil_set_switch_interval_us(uint64_t interval_us) {
    pm_atomic_store_u64_relaxed(&switch_interval_us, interval_us < 1 ? 1 : interval_us);
}

uint64_t pm_gil_get_switch_interval_us(void) {
    return pm_atomic_load_u64_relaxed(&switch_interval_us);
}
