// tests/sync_lock_test.cc — pm_spinlock, pm_mutex and pm_cond (sync/lock.h): mutual
// exclusion (a plain, non-atomic counter under the lock must come out exact), trylock,
// and condition-variable wake-ups and timeouts. No test asserts how long anything took,
// except the one thing a timeout promises: ETIMEDOUT means the deadline has passed.
#include <gtest/gtest.h>

#include <errno.h>
#include <stdint.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "sync/sync.h"
#include "tests/sync_test_util.h"

namespace {

using sync_test::kThreads;
using sync_test::RunThreads;

constexpr int kIncrements = 20000;

uint64_t MonotonicNs() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// ---- pm_spinlock --------------------------------------------------------------------------

struct SpinCounter {
    pm_spinlock lock = PM_SPINLOCK_INITIALIZER;
    // Two plain words updated in two steps: a torn critical section shows up either as a
    // lost increment or as first != second.
    long first PM_GUARDED_BY(lock) = 0;
    long second PM_GUARDED_BY(lock) = 0;
    long mismatches PM_GUARDED_BY(lock) = 0;

    void Increment() {
        pm_spinlock_lock(&lock);
        long v = first;
        first = v + 1;
        if (second != v) mismatches++;
        second = v + 1;
        pm_spinlock_unlock(&lock);
    }
};

TEST(SyncSpinlock, StaticInitializerIsUnlocked) {
    pm_spinlock lock = PM_SPINLOCK_INITIALIZER;
    EXPECT_FALSE(pm_spinlock_is_locked(&lock));
    pm_spinlock_lock(&lock);
    EXPECT_TRUE(pm_spinlock_is_locked(&lock));
    pm_spinlock_unlock(&lock);
    EXPECT_FALSE(pm_spinlock_is_locked(&lock));
}

TEST(SyncSpinlock, InitResetsAndDestroyIsHarmless) {
    pm_spinlock lock;
    pm_spinlock_init(&lock);
    EXPECT_FALSE(pm_spinlock_is_locked(&lock));
    pm_spinlock_lock(&lock);
    pm_spinlock_unlock(&lock);
    pm_spinlock_destroy(&lock);
    pm_spinlock_init(&lock);  // memory reused for a new lock
    pm_spinlock_lock(&lock);
    EXPECT_TRUE(pm_spinlock_is_locked(&lock));
    pm_spinlock_unlock(&lock);
    pm_spinlock_destroy(&lock);
}

TEST(SyncSpinlock, TrylockFailsWhileHeldElsewhere) {
    pm_spinlock lock = PM_SPINLOCK_INITIALIZER;
    bool got = false;
    if (pm_spinlock_trylock(&lock)) {
        got = true;
        bool other_got = true;
        std::thread([&] {
            if (pm_spinlock_trylock(&lock)) {
                pm_spinlock_unlock(&lock);
            } else {
                other_got = false;
            }
        }).join();
        EXPECT_FALSE(other_got) << "trylock must fail while another thread holds the lock";
        pm_spinlock_unlock(&lock);
    }
    EXPECT_TRUE(got) << "trylock of a free lock must succeed";

    bool got_after = false;
    std::thread([&] {
        if (pm_spinlock_trylock(&lock)) {
            got_after = true;
            pm_spinlock_unlock(&lock);
        }
    }).join();
    EXPECT_TRUE(got_after) << "trylock must succeed once the lock is released";
}

TEST(SyncSpinlock, MutualExclusionOfPlainCounter) {
    SpinCounter c;
    RunThreads(kThreads, [&](int) {
        for (int i = 0; i < kIncrements; i++) c.Increment();
    });
    pm_spinlock_lock(&c.lock);
    EXPECT_EQ(c.first, static_cast<long>(kThreads) * kIncrements);
    EXPECT_EQ(c.second, c.first);
    EXPECT_EQ(c.mismatches, 0);
    pm_spinlock_unlock(&c.lock);
}

// Half the threads use trylock in a loop: a trylock that "succeeds" without exclusion
// would break the count just like a broken lock().
TEST(SyncSpinlock, TrylockAlsoExcludes) {
    SpinCounter c;
    RunThreads(kThreads, [&](int t) {
        for (int i = 0; i < kIncrements / 2; i++) {
            if (t % 2 == 0) {
                c.Increment();
                continue;
            }
            unsigned spins = 0;
            while (!pm_spinlock_trylock(&c.lock)) sync_test::Backoff(spins);
            c.first++;
            c.second++;
            pm_spinlock_unlock(&c.lock);
        }
    });
    pm_spinlock_lock(&c.lock);
    EXPECT_EQ(c.first, static_cast<long>(kThreads) * (kIncrements / 2));
    EXPECT_EQ(c.second, c.first);
    EXPECT_EQ(c.mismatches, 0);
    pm_spinlock_unlock(&c.lock);
}

// ---- pm_mutex -----------------------------------------------------------------------------

struct MutexCounter {
    pm_mutex mutex = PM_MUTEX_INITIALIZER;
    long value PM_GUARDED_BY(mutex) = 0;
};

TEST(SyncMutex, MutualExclusionOfPlainCounter) {
    MutexCounter c;
    RunThreads(kThreads, [&](int) {
        for (int i = 0; i < kIncrements; i++) {
            pm_mutex_lock(&c.mutex);
            long v = c.value;
            c.value = v + 1;
            pm_mutex_unlock(&c.mutex);
        }
    });
    pm_mutex_lock(&c.mutex);
    EXPECT_EQ(c.value, static_cast<long>(kThreads) * kIncrements);
    pm_mutex_unlock(&c.mutex);
}

// pm_mutex_lock_spinning excludes exactly as pm_mutex_lock does, whether waiters get the
// mutex while polling (a long window) or sleep for it (no window at all), and the two kinds
// of lock call mix on one mutex.
TEST(SyncMutex, SpinningLockExcludesWhetherWaitersPollOrSleep) {
    for (uint64_t spin_ns : {uint64_t{0}, uint64_t{1000}, uint64_t{1000000}}) {
        MutexCounter c;
        RunThreads(kThreads, [&](int t) {
            for (int i = 0; i < kIncrements; i++) {
                if (t % 2 == 0) {
                    pm_mutex_lock_spinning(&c.mutex, spin_ns);
                } else {
                    pm_mutex_lock(&c.mutex);
                }
                long v = c.value;
                c.value = v + 1;
                pm_mutex_unlock(&c.mutex);
            }
        });
        pm_mutex_lock(&c.mutex);
        EXPECT_EQ(c.value, static_cast<long>(kThreads) * kIncrements)
            << "spin " << spin_ns << " ns";
        pm_mutex_unlock(&c.mutex);
    }
}

// A holder that keeps the mutex far past the waiter's window: the waiter stops polling,
// sleeps, and gets the mutex once it is released, not before.
TEST(SyncMutex, SpinningLockWaitsOutALongHolder) {
    MutexCounter c;
    std::atomic<bool> holding{false};
    std::atomic<uint64_t> released_at{0};
    uint64_t acquired_at = 0;
    std::thread holder([&] {
        pm_mutex_lock(&c.mutex);
        holding = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        c.value = 1;
        released_at = MonotonicNs();
        pm_mutex_unlock(&c.mutex);
    });
    while (!holding) std::this_thread::yield();
    pm_mutex_lock_spinning(&c.mutex, 1000);
    acquired_at = MonotonicNs();
    EXPECT_EQ(c.value, 1) << "got the mutex while the holder still had it";
    pm_mutex_unlock(&c.mutex);
    holder.join();
    EXPECT_GE(acquired_at, released_at.load());
}

TEST(SyncMutex, RuntimeInitAndTrylock) {
    pm_mutex m;
    pm_mutex_init(&m);
    bool got = false;
    if (pm_mutex_trylock(&m)) {
        got = true;
        bool other_got = true;
        std::thread([&] {
            if (pm_mutex_trylock(&m)) {
                pm_mutex_unlock(&m);
            } else {
                other_got = false;
            }
        }).join();
        EXPECT_FALSE(other_got) << "trylock must fail while another thread holds the mutex";
        pm_mutex_unlock(&m);
    }
    EXPECT_TRUE(got);
    bool got_after = false;
    std::thread([&] {
        if (pm_mutex_trylock(&m)) {
            got_after = true;
            pm_mutex_unlock(&m);
        }
    }).join();
    EXPECT_TRUE(got_after);
    pm_mutex_destroy(&m);
}

// ---- pm_cond --------------------------------------------------------------------------------

struct Gate {
    pm_mutex mutex = PM_MUTEX_INITIALIZER;
    pm_cond cond;
    bool open PM_GUARDED_BY(mutex) = false;
    int woken PM_GUARDED_BY(mutex) = 0;

    Gate() { pm_cond_init(&cond); }
    ~Gate() { pm_cond_destroy(&cond); }

    void Wait() {
        pm_mutex_lock(&mutex);
        while (!open) pm_cond_wait(&cond, &mutex);
        woken++;
        pm_mutex_unlock(&mutex);
    }
    void Open(bool broadcast) {
        pm_mutex_lock(&mutex);
        open = true;
        pm_mutex_unlock(&mutex);
        if (broadcast) {
            pm_cond_broadcast(&cond);
        } else {
            pm_cond_signal(&cond);
        }
    }
};

TEST(SyncCond, SignalWakesTheWaiter) {
    Gate g;
    std::thread waiter([&] { g.Wait(); });
    g.Open(false);
    waiter.join();  // hangs (and the test times out) if the signal were lost
    pm_mutex_lock(&g.mutex);
    EXPECT_EQ(g.woken, 1);
    pm_mutex_unlock(&g.mutex);
}

TEST(SyncCond, BroadcastWakesEveryWaiter) {
    Gate g;
    std::thread waiters[kThreads];
    for (auto &w : waiters) w = std::thread([&] { g.Wait(); });
    g.Open(true);
    for (auto &w : waiters) w.join();
    pm_mutex_lock(&g.mutex);
    EXPECT_EQ(g.woken, kThreads);
    pm_mutex_unlock(&g.mutex);
}

TEST(SyncCond, TimedWaitTimesOutOnlyAfterTheDeadline) {
    Gate g;
    constexpr uint64_t kTimeout = 2000000;  // 2 ms
    pm_mutex_lock(&g.mutex);
    uint64_t start = MonotonicNs();
    int rc = 0;
    // Spurious wake-ups return 0 early; the deadline is relative to each call, so a loop
    // of retries can only make the elapsed time longer.
    for (int tries = 0; tries < 100 && rc == 0; tries++) rc = pm_cond_timedwait_ns(&g.cond, &g.mutex, kTimeout);
    uint64_t elapsed = MonotonicNs() - start;
    pm_mutex_unlock(&g.mutex);
    EXPECT_EQ(rc, ETIMEDOUT);
    EXPECT_GE(elapsed, kTimeout) << "ETIMEDOUT before the CLOCK_MONOTONIC deadline";
}

TEST(SyncCond, ZeroTimeoutReturnsTimedOut) {
    Gate g;
    pm_mutex_lock(&g.mutex);
    int rc = pm_cond_timedwait_ns(&g.cond, &g.mutex, 0);
    pm_mutex_unlock(&g.mutex);
    EXPECT_EQ(rc, ETIMEDOUT);
}

// A huge timeout must not overflow into a deadline in the past (which would return
// ETIMEDOUT at once): with the gate opened later, every return must be 0.
TEST(SyncCond, HugeTimeoutWaitsForTheSignal) {
    Gate g;
    int timeouts = 0;
    std::thread waiter([&] {
        pm_mutex_lock(&g.mutex);
        while (!g.open) {
            if (pm_cond_timedwait_ns(&g.cond, &g.mutex, UINT64_MAX) == ETIMEDOUT) timeouts++;
            if (timeouts > 1000) break;  // clearly broken: do not spin forever
        }
        pm_mutex_unlock(&g.mutex);
    });
    std::this_thread::yield();
    g.Open(false);
    waiter.join();
    EXPECT_EQ(timeouts, 0);
}

}  // namespace
