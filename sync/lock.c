/*
 * sync/lock.c — the out-of-line halves of sync/lock.h: the spinlock's contended path and
 * the pthread-backed pm_mutex / pm_cond. The design (why FAS + yield, why pthread) is in
 * sync/lock.h.
 *
 * Errors: pthread_mutex_* on a default mutex and pthread_cond_* can only fail on misuse
 * (an uninitialised or destroyed object, unlocking a mutex that is not locked). Nothing a
 * caller could do about it, and returning an error would put a branch in every caller,
 * so we abort with a message written by write(2): stdio may allocate, and these locks are
 * taken inside the allocator.
 */
#include "sync/lock.h"

#include <assert.h>
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sync/atomic.h"

static_assert(sizeof(time_t) == 8, "deadline arithmetic below relies on a 64-bit time_t");

/* ---- fatal errors -------------------------------------------------------------------- */

static void write_all(const char *text) {
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, text, len);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            return; /* stderr is gone; abort anyway */
        }
        text += n;
        len -= (size_t)n;
    }
}

__attribute__((noreturn, cold, noinline)) static void sync_fatal(const char *what, int err) {
    char digits[16];
    size_t i = sizeof digits;
    digits[--i] = '\0';
    unsigned value = err < 0 ? 0u - (unsigned)err : (unsigned)err;
    do {
        digits[--i] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0 && i > 1);
    write_all("pymalloc-mt sync: ");
    write_all(what);
    write_all(" failed with error ");
    write_all(&digits[i]);
    write_all("\n");
    abort();
}

static inline void check(int rc, const char *what) {
    if (PM_SYNC_UNLIKELY(rc != 0)) sync_fatal(what, rc);
}

/* ---- pm_spinlock --------------------------------------------------------------------- */

void pm_spinlock_lock_slow(pm_spinlock *lock) {
    for (;;) {
        for (unsigned spin = 0; spin < PM_SPINLOCK_SPINS; spin++) {
            /* Test before test-and-set: reading shares the cache line, XCHG steals it. */
            if (!ck_spinlock_fas_locked(&lock->fas) && ck_spinlock_fas_trylock(&lock->fas)) {
                return;
            }
            pm_cpu_relax();
        }
        /* The holder is probably preempted (more runnable threads than cores): give it our
         * core instead of spinning out the time slice. See the numbers in sync/lock.h. */
        sched_yield();
    }
}

/* ---- pm_mutex ------------------------------------------------------------------------ */

void pm_mutex_init(pm_mutex *mutex) {
    check(pthread_mutex_init(&mutex->impl, NULL), "pthread_mutex_init");
}

void pm_mutex_destroy(pm_mutex *mutex) {
    check(pthread_mutex_destroy(&mutex->impl), "pthread_mutex_destroy");
}

void pm_mutex_lock(pm_mutex *mutex) PM_NO_THREAD_SAFETY_ANALYSIS {
    check(pthread_mutex_lock(&mutex->impl), "pthread_mutex_lock");
}

static uint64_t monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

void pm_mutex_lock_spinning(pm_mutex *mutex, uint64_t spin_ns) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (pm_mutex_trylock(mutex)) return;
    /* The clock is read once per round of PAUSEs (a vDSO call, ~20 ns), not per PAUSE. */
    uint64_t deadline = monotonic_ns() + spin_ns;
    do {
        for (unsigned i = 0; i < 16; i++) pm_cpu_relax();
        if (pm_mutex_trylock(mutex)) return;
    } while (monotonic_ns() < deadline);
    pm_mutex_lock(mutex);
}

bool pm_mutex_trylock(pm_mutex *mutex) PM_NO_THREAD_SAFETY_ANALYSIS {
    int rc = pthread_mutex_trylock(&mutex->impl);
    if (rc == EBUSY) return false;
    check(rc, "pthread_mutex_trylock");
    return true;
}

void pm_mutex_unlock(pm_mutex *mutex) PM_NO_THREAD_SAFETY_ANALYSIS {
    check(pthread_mutex_unlock(&mutex->impl), "pthread_mutex_unlock");
}

void pm_mutex_reinit_after_fork(pm_mutex *mutex) {
    /* POSIX leaves re-initialising a locked mutex undefined, but in a fork child the owner
     * no longer exists and glibc's own atfork handlers do the same for their locks: for a
     * default (non-robust, non-PI) mutex, init only rewrites the futex word and bookkeeping
     * fields. Going through pthread_mutex_init (not a memcpy) keeps TSan's interceptor
     * informed that this is a fresh mutex. */
    check(pthread_mutex_init(&mutex->impl, NULL), "pthread_mutex_init (after fork)");
}

/* ---- pm_cond ------------------------------------------------------------------------- */

void pm_cond_init(pm_cond *cond) {
    pthread_condattr_t attr;
    check(pthread_condattr_init(&attr), "pthread_condattr_init");
    check(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC), "pthread_condattr_setclock");
    check(pthread_cond_init(&cond->impl, &attr), "pthread_cond_init");
    check(pthread_condattr_destroy(&attr), "pthread_condattr_destroy");
}

void pm_cond_destroy(pm_cond *cond) {
    check(pthread_cond_destroy(&cond->impl), "pthread_cond_destroy");
}

void pm_cond_wait(pm_cond *cond, pm_mutex *mutex) PM_NO_THREAD_SAFETY_ANALYSIS {
    check(pthread_cond_wait(&cond->impl, &mutex->impl), "pthread_cond_wait");
}

int pm_cond_timedwait_ns(pm_cond *cond, pm_mutex *mutex, uint64_t timeout_ns) PM_NO_THREAD_SAFETY_ANALYSIS {
    struct timespec deadline;
    check(clock_gettime(CLOCK_MONOTONIC, &deadline) == 0 ? 0 : errno, "clock_gettime");
    /* No overflow: CLOCK_MONOTONIC counts from boot, and UINT64_MAX ns is ~1.8e10 s, so the
     * sum stays far below INT64_MAX seconds. The kernel clamps deadlines that far out. */
    deadline.tv_sec += (time_t)(timeout_ns / 1000000000u);
    deadline.tv_nsec += (long)(timeout_ns % 1000000000u);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    int rc = pthread_cond_timedwait(&cond->impl, &mutex->impl, &deadline);
    if (rc == ETIMEDOUT) return ETIMEDOUT;
    check(rc, "pthread_cond_timedwait");
    return 0;
}

void pm_cond_signal(pm_cond *cond) {
    check(pthread_cond_signal(&cond->impl), "pthread_cond_signal");
}

void pm_cond_broadcast(pm_cond *cond) {
    check(pthread_cond_broadcast(&cond->impl), "pthread_cond_broadcast");
}
