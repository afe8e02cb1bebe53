// tests/sync_fork_test.cc — locks across fork() (sync/lock.h, "Fork"). In the child only
// the forking thread exists, so a lock another thread held in the parent stays locked
// until an atfork child handler resets it with pm_mutex_reinit_after_fork /
// pm_spinlock_init. The child reports what it saw through its exit status, a bit per
// failed expectation, so the parent can name the failure.
#include <gtest/gtest.h>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "sync/sync.h"
#include "tests/sync_test_util.h"

namespace {

using sync_test::Backoff;

int WaitForChild(pid_t pid) {
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    if (!WIFEXITED(status)) return -2;
    return WEXITSTATUS(status);
}

enum ChildFailure {
    kMutexNotHeldInChild = 1,
    kSpinlockNotHeldInChild = 2,
    kMutexNotFreeAfterReinit = 4,
    kSpinlockNotFreeAfterInit = 8,
};

TEST(SyncFork, ChildResetsLocksHeldByAnotherThread) {
    static pm_mutex mutex = PM_MUTEX_INITIALIZER;
    static pm_spinlock spin = PM_SPINLOCK_INITIALIZER;
    int holding = 0;
    int release = 0;
    std::thread holder([&] {
        pm_mutex_lock(&mutex);
        pm_spinlock_lock(&spin);
        pm_atomic_store_int_release(&holding, 1);
        unsigned spins = 0;
        while (pm_atomic_load_int_acquire(&release) == 0) Backoff(spins);
        pm_spinlock_unlock(&spin);
        pm_mutex_unlock(&mutex);
    });
    unsigned spins = 0;
    while (pm_atomic_load_int_acquire(&holding) == 0) Backoff(spins);

    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        int failures = 0;
        // The holder thread does not exist here, but its locks are still taken.
        if (pm_mutex_trylock(&mutex)) {
            failures |= kMutexNotHeldInChild;
            pm_mutex_unlock(&mutex);
        }
        if (pm_spinlock_trylock(&spin)) {
            failures |= kSpinlockNotHeldInChild;
            pm_spinlock_unlock(&spin);
        }
        // What an atfork child handler does.
        pm_mutex_reinit_after_fork(&mutex);
        pm_spinlock_init(&spin);
        if (pm_mutex_trylock(&mutex)) {
            pm_mutex_unlock(&mutex);
        } else {
            failures |= kMutexNotFreeAfterReinit;
        }
        if (pm_spinlock_trylock(&spin)) {
            pm_spinlock_unlock(&spin);
        } else {
            failures |= kSpinlockNotFreeAfterInit;
        }
        pm_mutex_lock(&mutex);  // would hang (test timeout) if the reset were incomplete
        pm_mutex_unlock(&mutex);
        _exit(failures);
    }

    pm_atomic_store_int_release(&release, 1);
    holder.join();
    EXPECT_EQ(WaitForChild(pid), 0) << "bits: 1 mutex not held in child, 2 spinlock not held, "
                                       "4 mutex not free after reinit, 8 spinlock not free after init";
}

// A lock the forking thread itself holds (an atfork prepare handler took it) is released
// in the child with a plain unlock; the parent unlocks its own copy.
TEST(SyncFork, ForkingThreadUnlocksItsOwnLocksInTheChild) {
    static pm_mutex mutex = PM_MUTEX_INITIALIZER;
    static pm_spinlock spin = PM_SPINLOCK_INITIALIZER;
    pm_mutex_lock(&mutex);
    pm_spinlock_lock(&spin);
    pid_t pid = fork();
    if (pid == 0) {
        pm_spinlock_unlock(&spin);
        pm_mutex_unlock(&mutex);
        int failures = 0;
        if (pm_mutex_trylock(&mutex)) {
            pm_mutex_unlock(&mutex);
        } else {
            failures |= kMutexNotFreeAfterReinit;
        }
        if (pm_spinlock_trylock(&spin)) {
            pm_spinlock_unlock(&spin);
        } else {
            failures |= kSpinlockNotFreeAfterInit;
        }
        _exit(failures);
    }
    pm_spinlock_unlock(&spin);
    pm_mutex_unlock(&mutex);
    ASSERT_GE(pid, 0);
    EXPECT_EQ(WaitForChild(pid), 0);
}

}  // namespace
