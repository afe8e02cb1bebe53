/*
 * gil/gil.h — the modelled GIL: the one public header of gil/, the layer between sync/ and
 * alloc/ (sync <- gil <- alloc).
 *
 * CPython requires the GIL for its mem and object domains (pm_mem_*, pm_obj_*). Runtimes
 * without a lock of their own, and our tests, get the same contract from this package:
 *
 *   pm_gil_acquire / pm_gil_release   a real, non-recursive global lock that blocks (sleeps)
 *   pm_gil_yield                      for long loops: hands the GIL to a thread that asked
 *                                     for it, then takes it back; one relaxed load when
 *                                     nobody asked
 *   pm_gil_held                       does THIS thread hold the GIL?
 *   pm_gil_drop_requested             has a waiter asked for it? (a relaxed snapshot)
 *   pm_gil_set_switch_interval_us     how long a waiter waits before it asks the holder to
 *                                     let go (CPython's sys.setswitchinterval, default 5 ms)
 *
 * Fairness is CPython's FORCE_SWITCHING: a thread that has waited longer than the switch
 * interval sets a drop request; the holder honours it at its next pm_gil_yield() or
 * pm_gil_release(), and does not return from that call until another thread has taken the
 * GIL, so it cannot win it straight back. With a single waiter, that waiter is the next
 * holder; with several, one of them is (whichever the kernel wakes first), never the thread
 * that dropped. The design and the state machine are described at the top of gil/gil.c.
 *
 * Embedders that have a GIL of their own (CPython itself) plug in its check with
 * pm_gil_set_check(PyGILState_Check); pm_gil_held() then answers with that function, and
 * the modelled lock is simply not used by them.
 *
 * Clang thread-safety analysis (--config=clang, -Wthread-safety): the GIL is the capability
 * `pm_gil`. pm_gil_acquire/release acquire and release it, pm_gil_assert_held() asserts it,
 * and PM_GIL_REQUIRED marks a declaration whose callers must hold it, e.g.
 *
 *     void *pm_mem_malloc(size_t size) PM_GIL_REQUIRED;
 *
 * clang then reports every call made where the analysis cannot prove the GIL is held
 * ("calling function 'pm_mem_malloc' requires holding mutex 'pm_gil' exclusively").
 * Under gcc the macros expand to nothing. Code that gets the GIL some other way (an
 * embedder's own lock, a callback documented to run under the GIL) states it with
 * pm_gil_assert_held(), which also checks it at run time.
 *
 * Misuse is fatal, with a message on stderr: acquiring the GIL twice in one thread,
 * releasing or yielding it from a thread that does not hold it (yield checks only when a
 * drop request is pending: its fast path is a single load).
 *
 * Fork: pthread_atfork runs pm_gil_reinit_after_fork() in the child. If the forking thread
 * held the GIL it still holds it; otherwise the GIL is free. Pending requests, waiters
 * (threads that do not exist in the child) and the internal lock are reset.
 *
 * Usable from C (gnu11) and C++. Nothing here allocates except pthread_atfork's
 * registration, once, at the first pm_gil_acquire().
 */
#ifndef PM_GIL_GIL_H
#define PM_GIL_GIL_H

#include <stdbool.h>
#include <stdint.h>

#include "sync/sync.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The GIL as a capability for clang's thread-safety analysis. The object carries no state
 * (the lock lives in gil/gil.c); it exists only to be named in attributes. The member is
 * there because an empty struct has size 0 in C and 1 in C++. */
typedef struct PM_CAPABILITY("mutex") pm_gil_capability {
    char unused;
} pm_gil_capability;

extern pm_gil_capability pm_gil;

/* On a declaration: callers must hold the GIL. Empty unless compiled by clang. */
#define PM_GIL_REQUIRED PM_REQUIRES(pm_gil)

/* Default switch interval, as CPython's sys.getswitchinterval() (0.005 s). */
#define PM_GIL_DEFAULT_SWITCH_INTERVAL_US 5000u

/* Blocks until this thread holds the GIL. Not recursive: fatal if this thread holds it. */
void pm_gil_acquire(void) PM_ACQUIRE(pm_gil);

/* Releases the GIL. Fatal if this thread does not hold it. If a waiter has asked for the
 * GIL (drop request), returns only after another thread has taken it. */
void pm_gil_release(void) PM_RELEASE(pm_gil);

/* Call regularly in long loops that hold the GIL. If a waiter has asked for the GIL, gives
 * it away, waits until another thread has taken it, then takes it back (which blocks until
 * that thread releases or yields). Otherwise one relaxed load and returns. */
void pm_gil_yield(void) PM_REQUIRES(pm_gil);

/* A relaxed snapshot: true if a waiter has asked the holder to let go (drop request), so
 * the next pm_gil_yield() will hand the GIL over. For diagnostics, tests, and loops that
 * want to reach a consistent state before yielding; it synchronises nothing and may be
 * stale by the time it returns. */
bool pm_gil_drop_requested(void);

/* True only in the thread that holds the GIL. With a check installed (pm_gil_set_check),
 * returns held() != 0 instead. */
bool pm_gil_held(void);

/* Aborts with a message unless pm_gil_held(). Tells the thread-safety analysis that the GIL
 * is held from here on. */
void pm_gil_assert_held(void) PM_ASSERT_CAPABILITY(pm_gil);

/* Installs the embedder's "is the GIL held by this thread?" function (CPython:
 * PyGILState_Check). NULL restores the modelled GIL's own answer. May be called at any time
 * from any thread; each pm_gil_held() call uses either the old or the new function. */
void pm_gil_set_check(int (*held)(void));

/* How long a waiting thread waits before it sets a drop request. Values below 1 are
 * treated as 1 (a zero interval would make every wait time out at once). Takes effect
 * at each waiter's next wait. */
void pm_gil_set_switch_interval_us(uint64_t interval_us);
uint64_t pm_gil_get_switch_interval_us(void);

/* Only in a fork child (it is registered with pthread_atfork, so normally nothing needs to
 * call it). The child's only thread keeps the GIL if it held it; otherwise the GIL is
 * released. The drop request is cleared and the internal mutex and conditions are
 * re-created, since threads of the parent that held or waited on them are gone. */
void pm_gil_reinit_after_fork(void);

#ifdef __cplusplus
}
#endif

#endif /* PM_GIL_GIL_H */
