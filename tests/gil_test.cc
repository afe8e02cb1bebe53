// tests/gil_test.cc — the modelled GIL (gil/gil.h): mutual exclusion, hand-off to a waiter
// while the holder yields, CPython's forced switching (the dropping thread does not get the
// GIL back before a waiter has had it), no lost wake-ups under contention, pm_gil_held()
// per thread, the embedder's check, the switch interval, and fork.
//
// No test asserts a duration. Waiting for another thread is an "eventually" loop whose
// generous bound (kHangGuard) exists only to turn a hang into a failure; iteration counts
// are sized to finish well within a second under TSan on 2 cores (measured).
//
// Data shared between threads under test is plain (non-atomic) and touched only while the
// GIL is held, so TSan checks that the GIL orders it. std::atomic is used only for test
// scaffolding (start/round flags) outside the GIL.
#include <gtest/gtest.h>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#include "gil/gil.h"
#include "tests/sync_test_util.h"

namespace {

using sync_test::RunThreads;

constexpr auto kHangGuard = std::chrono::seconds(30);

// Polls pred() every 50 µs until it is true or kHangGuard has passed; returns its last value.
template <class Pred>
bool Eventually(Pred pred) {
    const auto deadline = std::chrono::steady_clock::now() + kHangGuard;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return pred();
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return true;
}

bool PastDeadline(std::chrono::steady_clock::time_point deadline) {
    return std::chrono::steady_clock::now() > deadline;
}

// Every test starts and ends with the default interval and no embedder check.
class GilTest : public ::testing::Test {
   protected:
    void SetUp() override { Reset(); }
    void TearDown() override { Reset(); }
    static void Reset() {
        pm_gil_set_check(nullptr);
        pm_gil_set_switch_interval_us(PM_GIL_DEFAULT_SWITCH_INTERVAL_US);
    }
};

// ---- mutual exclusion ----------------------------------------------------------------------

TEST_F(GilTest, MutualExclusionOverPlainCounter) {
    constexpr int kThreads = 4;
    const int iters = 20000;
    long counter = 0;  // plain: only the GIL orders it
    int inside = 0;    // threads inside the critical section right now
    int overlaps = 0;
    RunThreads(kThreads, [&](int) {
        for (int i = 0; i < iters; i++) {
            pm_gil_acquire();
            if (inside++ != 0) overlaps++;
            counter++;
            inside--;
            pm_gil_release();
        }
    });
    EXPECT_EQ(counter, static_cast<long>(kThreads) * iters);
    EXPECT_EQ(overlaps, 0);
}

// Long holders that yield between steps, with an interval short enough that yields really
// hand over: the data stays exact and nobody is ever inside at the same time as another.
TEST_F(GilTest, MutualExclusionAcrossYields) {
    pm_gil_set_switch_interval_us(50);
    constexpr int kThreads = 3;
    constexpr int kBatches = 20;
    const int steps = 2000;
    long counter = 0;
    int inside = 0;
    int overlaps = 0;
    RunThreads(kThreads, [&](int) {
        for (int b = 0; b < kBatches; b++) {
            pm_gil_acquire();
            for (int s = 0; s < steps; s++) {
                if (inside++ != 0) overlaps++;
                counter++;
                inside--;
                pm_gil_yield();
            }
            pm_gil_release();
        }
    });
    EXPECT_EQ(counter, static_cast<long>(kThreads) * kBatches * steps);
    EXPECT_EQ(overlaps, 0);
}

// ---- hand-off while the holder yields ----------------------------------------------------

TEST_F(GilTest, WaiterGetsGilWhileHolderKeepsYielding) {
    pm_gil_set_switch_interval_us(1000);
    std::atomic<bool> holding{false};
    int waiter_ran = 0;  // written by the waiter under the GIL, read by the holder under it
    bool holder_saw_waiter = false;
    std::thread holder([&] {
        pm_gil_acquire();
        holding.store(true);
        const auto deadline = std::chrono::steady_clock::now() + kHangGuard;
        for (uint64_t yields = 1;; yields++) {
            pm_gil_yield();
            if (waiter_ran != 0) {
                holder_saw_waiter = true;
                break;
            }
            if (yields % 1024 == 0 && PastDeadline(deadline)) break;  // hang guard only
        }
        pm_gil_release();
    });
    std::thread waiter([&] {
        ASSERT_TRUE(Eventually([&] { return holding.load(); }));
        pm_gil_acquire();
        waiter_ran = 1;
        pm_gil_release();
    });
    waiter.join();
    holder.join();
    EXPECT_TRUE(holder_saw_waiter) << "the holder yielded for the whole hang guard without handing off";
}

// ---- forced switching: the dropper does not get the GIL back first ------------------------

// Round r: W blocks in pm_gil_acquire while H holds; once W's drop request is visible, H
// calls pm_gil_yield() exactly once. Forced hand-off means that call returns only after W
// has had the GIL, so W's entry for round r is already in the log when H looks. Without it,
// H would usually re-take the GIL before W is even scheduled.
TEST_F(GilTest, ForcedHandOffOnYieldGoesToTheWaiterThatAsked) {
    pm_gil_set_switch_interval_us(500);
    constexpr int kRounds = 20;
    std::atomic<int> round{-1};
    std::vector<int> log;  // rounds in which W held the GIL; under the GIL
    std::thread w([&] {
        for (int r = 0; r < kRounds; r++) {
            if (!Eventually([&] { return round.load() >= r; })) return;
            pm_gil_acquire();
            log.push_back(r);
            pm_gil_release();
        }
    });
    pm_gil_acquire();
    for (int r = 0; r < kRounds; r++) {
        const size_t before = log.size();
        round.store(r);
        const bool requested = Eventually([] { return pm_gil_drop_requested(); });
        EXPECT_TRUE(requested) << "round " << r << ": no drop request within the hang guard";
        if (!requested) break;
        pm_gil_yield();
        // Back in H: the next holder after H's drop was W, not H.
        EXPECT_EQ(log.size(), before + 1) << "round " << r;
        if (log.size() == before + 1) {
            EXPECT_EQ(log.back(), r);
        }
    }
    pm_gil_release();
    w.join();
}

// The same contract on pm_gil_release(): with a request pending it returns only after the
// waiter has taken the GIL, so an immediate re-acquire finds the waiter's work done.
TEST_F(GilTest, ForcedHandOffOnRelease) {
    pm_gil_set_switch_interval_us(500);
    constexpr int kRounds = 20;
    std::atomic<int> round{-1};
    std::vector<int> log;  // under the GIL
    std::thread w([&] {
        for (int r = 0; r < kRounds; r++) {
            if (!Eventually([&] { return round.load() >= r; })) return;
            pm_gil_acquire();
            log.push_back(r);
            pm_gil_release();
        }
    });
    for (int r = 0; r < kRounds; r++) {
        pm_gil_acquire();
        const size_t before = log.size();
        round.store(r);
        const bool requested = Eventually([] { return pm_gil_drop_requested(); });
        EXPECT_TRUE(requested) << "round " << r;
        pm_gil_release();
        if (!requested) break;
        pm_gil_acquire();
        EXPECT_EQ(log.size(), before + 1) << "round " << r;
        pm_gil_release();
    }
    w.join();
}

// Several waiters: one of them (whichever wakes first) is the next holder, never the
// thread that dropped.
TEST_F(GilTest, ForcedHandOffWithSeveralWaitersNeverReturnsToTheDropper) {
    pm_gil_set_switch_interval_us(500);
    constexpr int kWaiters = 3;
    std::atomic<bool> holding{false};
    std::vector<int> log;  // ids of waiters that held the GIL; under the GIL
    std::vector<std::thread> waiters;
    pm_gil_acquire();
    holding.store(true);
    for (int id = 0; id < kWaiters; id++) {
        waiters.emplace_back([&, id] {
            pm_gil_acquire();
            log.push_back(id);
            pm_gil_release();
        });
    }
    const bool requested = Eventually([] { return pm_gil_drop_requested(); });
    EXPECT_TRUE(requested);
    if (requested) {
        pm_gil_yield();
        EXPECT_GE(log.size(), 1u) << "the dropping thread got the GIL back before any waiter";
    }
    pm_gil_release();
    for (std::thread &t : waiters) t.join();
    EXPECT_EQ(log.size(), static_cast<size_t>(kWaiters));
}

// Threads that never release, only yield: every one of them still gets the GIL, again and
// again (forced switching rotates it among them).
TEST_F(GilTest, HoldersThatOnlyYieldAllGetTurns) {
    pm_gil_set_switch_interval_us(200);
    constexpr int kThreads = 3;
    constexpr int kTurns = 3;
    std::vector<int> turns(kThreads, 0);  // times each thread got the GIL; under the GIL
    int last = -1;                        // the thread that held it last; under the GIL
    std::atomic<int> gave_up{0};
    auto everyone_had_turns = [&] {
        for (int t : turns) {
            if (t < kTurns) return false;
        }
        return true;
    };
    RunThreads(kThreads, [&](int id) {
        pm_gil_acquire();
        const auto deadline = std::chrono::steady_clock::now() + kHangGuard;
        for (uint64_t n = 1;; n++) {
            if (last != id) {
                turns[id]++;
                last = id;
            }
            if (everyone_had_turns()) break;
            if (n % 1024 == 0 && PastDeadline(deadline)) {  // hang guard only
                gave_up++;
                break;
            }
            pm_gil_yield();
        }
        pm_gil_release();
    });
    EXPECT_EQ(gave_up.load(), 0);
    for (int id = 0; id < kThreads; id++) EXPECT_GE(turns[id], kTurns) << "thread " << id;
}

// A waiter that went to sleep while a request was already pending (so without a timeout)
// must be woken when another waiter serves that request, to start timing its own
// interval; otherwise, behind a holder that only yields, it would sleep forever.
// H holds; B waits and asks; C starts waiting after the request; H releases. Whichever of
// B and C gets the GIL yields until the other has had it too.
TEST_F(GilTest, WaiterThatSleptThroughAServedRequestGetsItsTurn) {
    pm_gil_set_switch_interval_us(200);
    bool ran[2] = {false, false};  // under the GIL
    std::atomic<int> gave_up{0};
    auto waiter = [&](int id) {
        pm_gil_acquire();
        ran[id] = true;
        const auto deadline = std::chrono::steady_clock::now() + kHangGuard;
        for (uint64_t n = 1; !(ran[0] && ran[1]); n++) {
            if (n % 1024 == 0 && PastDeadline(deadline)) {  // hang guard only
                gave_up++;
                break;
            }
            pm_gil_yield();
        }
        pm_gil_release();
    };
    pm_gil_acquire();
    std::thread b(waiter, 0);
    const bool requested = Eventually([] { return pm_gil_drop_requested(); });
    std::thread c(waiter, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // let C block; not required
    pm_gil_release();
    b.join();
    c.join();
    EXPECT_TRUE(requested);
    EXPECT_EQ(gave_up.load(), 0);
    EXPECT_TRUE(ran[0] && ran[1]);
}

// ---- no lost wake-ups --------------------------------------------------------------------

// Contended acquire/release rounds, with the default interval (few requests) and with a
// 1 µs interval (a drop request and a forced hand-off on nearly every contended release).
// All threads start together, and between rounds each gives its core away, so waiters
// really sleep on the GIL and are woken by releases. A lost wake-up shows as a hang (the
// test's timeout); the counter must be exact. How often the GIL changed hands is printed,
// not asserted (it depends on scheduling).
void ContendedRounds(int threads, int rounds_per_thread) {
    long counter = 0;
    long hand_offs = 0;  // rounds whose holder differs from the previous round's
    int last_holder = -1;
    std::atomic<int> ready{0};
    RunThreads(threads, [&](int id) {
        ready++;
        while (ready.load() < threads) std::this_thread::yield();
        for (int i = 0; i < rounds_per_thread; i++) {
            pm_gil_acquire();
            counter++;
            if (last_holder != id) hand_offs++;
            last_holder = id;
            pm_gil_release();
            if (i % 4 == 0) std::this_thread::yield();
        }
    });
    EXPECT_EQ(counter, static_cast<long>(threads) * rounds_per_thread);
    std::printf("%d threads x %d rounds: the GIL changed hands %ld times\n", threads, rounds_per_thread,
                hand_offs);
}

TEST_F(GilTest, NoLostWakeupsDefaultInterval) {
    ContendedRounds(4, 10000);
}

TEST_F(GilTest, NoLostWakeupsTinyInterval) {
    pm_gil_set_switch_interval_us(1);
    ContendedRounds(3, 10000);
}

// Releases and yields mixed, tiny interval: forced hand-offs from both paths interleave.
TEST_F(GilTest, NoLostWakeupsMixingYieldAndRelease) {
    pm_gil_set_switch_interval_us(1);
    constexpr int kThreads = 4;
    const int rounds = 5000;
    long counter = 0;
    std::atomic<int> ready{0};
    RunThreads(kThreads, [&](int id) {
        ready++;
        while (ready.load() < kThreads) std::this_thread::yield();
        for (int i = 0; i < rounds; i++) {
            pm_gil_acquire();
            counter++;
            if ((i + id) % 2 == 0) {
                pm_gil_yield();
                counter++;
            }
            pm_gil_release();
        }
    });
    // Each thread yields on half of its rounds (which half depends on id's parity).
    long expected = 0;
    for (int id = 0; id < kThreads; id++) {
        for (int i = 0; i < rounds; i++) expected += ((i + id) % 2 == 0) ? 2 : 1;
    }
    EXPECT_EQ(counter, expected);
}

// ---- pm_gil_held ---------------------------------------------------------------------------

TEST_F(GilTest, HeldOnlyInTheHolder) {
    EXPECT_FALSE(pm_gil_held());
    pm_gil_acquire();
    EXPECT_TRUE(pm_gil_held());
    std::atomic<int> others_saying_held{0};
    RunThreads(3, [&](int) {
        if (pm_gil_held()) others_saying_held++;
    });
    EXPECT_EQ(others_saying_held.load(), 0);
    pm_gil_release();
    EXPECT_FALSE(pm_gil_held());

    // The other way round: another thread holds it, this one does not.
    std::atomic<bool> holding{false};
    std::atomic<bool> done{false};
    bool held_in_holder = false;
    std::thread holder([&] {
        pm_gil_acquire();
        held_in_holder = pm_gil_held();
        holding.store(true);
        Eventually([&] { return done.load(); });
        pm_gil_release();
    });
    ASSERT_TRUE(Eventually([&] { return holding.load(); }));
    EXPECT_FALSE(pm_gil_held());
    done.store(true);
    holder.join();
    EXPECT_TRUE(held_in_holder);
}

// ---- the embedder's check ------------------------------------------------------------------

std::atomic<int> fake_answer{0};
std::atomic<int> fake_calls{0};

int FakeCheck(void) {
    fake_calls++;
    return fake_answer.load();
}

// In its own function: after pm_gil_assert_held() the analysis treats the GIL as held for
// the rest of the function, and the test body goes on to acquire it for real.
void AssertHeld() {
    pm_gil_assert_held();
}

TEST_F(GilTest, InstalledCheckAnswersHeld) {
    fake_calls = 0;
    pm_gil_set_check(FakeCheck);

    fake_answer = 1;
    EXPECT_TRUE(pm_gil_held());  // without pm_gil_acquire: the embedder's GIL counts
    AssertHeld();                // and pm_gil_assert_held() does not abort
    fake_answer = 42;            // any non-zero value means held
    EXPECT_TRUE(pm_gil_held());
    fake_answer = 0;
    EXPECT_FALSE(pm_gil_held());

    // The check decides even while the modelled GIL is held by this thread.
    pm_gil_acquire();
    EXPECT_FALSE(pm_gil_held());
    pm_gil_release();

    // It is consulted in every thread.
    fake_answer = 1;
    std::atomic<int> held_elsewhere{0};
    RunThreads(2, [&](int) {
        if (pm_gil_held()) held_elsewhere++;
    });
    EXPECT_EQ(held_elsewhere.load(), 2);
    EXPECT_GE(fake_calls.load(), 7);

    // NULL restores the modelled GIL's own answer.
    pm_gil_set_check(nullptr);
    const int calls_before = fake_calls.load();
    EXPECT_FALSE(pm_gil_held());
    pm_gil_acquire();
    EXPECT_TRUE(pm_gil_held());
    pm_gil_release();
    EXPECT_EQ(fake_calls.load(), calls_before);
}

// ---- switch interval -------------------------------------------------------------------

TEST_F(GilTest, SwitchIntervalGetSet) {
    EXPECT_EQ(pm_gil_get_switch_interval_us(), 5000u);
    EXPECT_EQ(PM_GIL_DEFAULT_SWITCH_INTERVAL_US, 5000u);
    pm_gil_set_switch_interval_us(1234);
    EXPECT_EQ(pm_gil_get_switch_interval_us(), 1234u);
    pm_gil_set_switch_interval_us(0);  // clamped: a zero interval would time out at once
    EXPECT_EQ(pm_gil_get_switch_interval_us(), 1u);
    pm_gil_set_switch_interval_us(UINT64_MAX);
    EXPECT_EQ(pm_gil_get_switch_interval_us(), UINT64_MAX);
}

// An interval too large to express in nanoseconds: waiters never ask, but a plain release
// still wakes them.
TEST_F(GilTest, HugeIntervalStillHandsOverOnRelease) {
    pm_gil_set_switch_interval_us(UINT64_MAX);
    std::atomic<bool> holding{false};
    int waiter_ran = 0;  // under the GIL
    pm_gil_acquire();
    holding.store(true);
    std::thread waiter([&] {
        pm_gil_acquire();
        waiter_ran = 1;
        pm_gil_release();
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // let it block; not required
    EXPECT_FALSE(pm_gil_drop_requested());
    pm_gil_release();
    waiter.join();
    pm_gil_acquire();
    EXPECT_EQ(waiter_ran, 1);
    pm_gil_release();
}

// ---- fork ----------------------------------------------------------------------------------

int WaitForChild(pid_t pid) {
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    if (!WIFEXITED(status)) return -2;
    return WEXITSTATUS(status);
}

enum ChildFailure {
    kNotHeldInChild = 1,
    kHeldInChild = 2,
    kRequestSurvived = 4,
};

// The forking thread held the GIL: the child still holds it, and can release and re-take.
TEST_F(GilTest, ForkChildKeepsGilItHeld) {
    pm_gil_acquire();
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20);  // a hang in the child becomes a signal, not a test timeout
        int failures = 0;
        if (!pm_gil_held()) failures |= kNotHeldInChild;
        pm_gil_release();
        pm_gil_acquire();
        pm_gil_release();
        _exit(failures);
    }
    pm_gil_release();
    ASSERT_GE(pid, 0);
    EXPECT_EQ(WaitForChild(pid), 0);
}

// Another thread held the GIL and a second one was waiting with a drop request: in the
// child, neither exists; the GIL is free and the request gone.
TEST_F(GilTest, ForkChildGetsFreeGilHeldByAnotherThread) {
    pm_gil_set_switch_interval_us(200);
    std::atomic<bool> holding{false};
    std::atomic<bool> forked{false};
    std::thread holder([&] {
        pm_gil_acquire();
        holding.store(true);
        Eventually([&] { return forked.load(); });
        pm_gil_release();
    });
    std::thread waiter;
    const bool setup_ok = Eventually([&] { return holding.load(); });
    if (setup_ok) {
        waiter = std::thread([] {
            pm_gil_acquire();
            pm_gil_release();
        });
    }
    const bool requested = setup_ok && Eventually([] { return pm_gil_drop_requested(); });
    pid_t pid = requested ? fork() : -1;
    if (pid == 0) {
        alarm(20);
        int failures = 0;
        if (pm_gil_held()) failures |= kHeldInChild;
        if (pm_gil_drop_requested()) failures |= kRequestSurvived;
        pm_gil_acquire();  // would hang (then SIGALRM) if the holder's claim survived
        pm_gil_release();
        _exit(failures);
    }
    forked.store(true);
    holder.join();
    if (waiter.joinable()) waiter.join();
    ASSERT_TRUE(requested);
    ASSERT_GE(pid, 0);
    EXPECT_EQ(WaitForChild(pid), 0);
}

}  // namespace
