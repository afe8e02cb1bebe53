// tests/gil_death_test.cc — misuse of the modelled GIL is fatal, with the exact message
// (gil/gil.h, "Misuse is fatal"). Under --config=clang the analysis would (rightly) reject
// these calls at compile time, which is the other half of the protection, so the misuse
// under test goes through function pointers, which the analysis does not follow.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "gil/gil.h"

namespace {

void (*const unchecked_acquire)(void) = pm_gil_acquire;
void (*const unchecked_release)(void) = pm_gil_release;
void (*const unchecked_yield)(void) = pm_gil_yield;

void AcquireTwice() {
    unchecked_acquire();
    unchecked_acquire();
}

void ReleaseWithoutHolding() {
    unchecked_release();
}

void AssertWithoutHolding() {
    pm_gil_assert_held();
}

int NeverHeld(void) {
    return 0;
}

// Holding the modelled GIL does not satisfy the assertion when the embedder's check says no.
void AcquireThenAssertUnderNeverHeldCheck() {
    pm_gil_set_check(NeverHeld);
    unchecked_acquire();
    pm_gil_assert_held();
}

// A thread holds the GIL, a second waits until its drop request is up, and then this
// thread, which does not hold the GIL, calls pm_gil_yield(): the slow path checks.
void YieldWithoutHolding() {
    pm_gil_set_switch_interval_us(100);
    std::atomic<bool> holding{false};
    std::thread holder([&] {
        unchecked_acquire();  // held until the process dies
        holding.store(true);
        for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));  // dies with the process
    });
    holder.detach();
    while (!holding.load()) std::this_thread::sleep_for(std::chrono::microseconds(50));
    std::thread waiter([] {
        pm_gil_acquire();
        pm_gil_release();
    });
    waiter.detach();
    while (!pm_gil_drop_requested()) std::this_thread::sleep_for(std::chrono::microseconds(50));
    unchecked_yield();
}

class GilDeathTest : public ::testing::Test {
   protected:
    void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(GilDeathTest, AcquireIsNotRecursive) {
    EXPECT_DEATH(AcquireTwice(), "pymalloc-mt gil: pm_gil_acquire: this thread already holds the GIL \\(it is not recursive\\)");
}

TEST_F(GilDeathTest, ReleaseWithoutHolding) {
    EXPECT_DEATH(ReleaseWithoutHolding(), "pymalloc-mt gil: pm_gil_release: this thread does not hold the GIL");
}

TEST_F(GilDeathTest, AssertHeldWithoutHolding) {
    EXPECT_DEATH(AssertWithoutHolding(), "pymalloc-mt gil: pm_gil_assert_held: the GIL is not held by this thread");
}

TEST_F(GilDeathTest, AssertHeldFollowsTheInstalledCheck) {
    EXPECT_DEATH(AcquireThenAssertUnderNeverHeldCheck(),
                 "pymalloc-mt gil: pm_gil_assert_held: the GIL is not held by this thread");
    pm_gil_set_check(nullptr);
}

TEST_F(GilDeathTest, YieldWithoutHoldingWhenARequestIsPending) {
    EXPECT_DEATH(YieldWithoutHolding(), "pymalloc-mt gil: pm_gil_yield: this thread does not hold the GIL");
}

}  // namespace
