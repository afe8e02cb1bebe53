// tests/sync_atomic_test.cc — the documented semantics of pm_atomic_* (sync/atomic.h):
// return values, success/failure of CAS, wrap-around, and atomicity under contention
// (exact totals). Ordering is tested in sync_publish_test.cc.
#include <gtest/gtest.h>

#include <stddef.h>
#include <stdint.h>

#include <algorithm>
#include <vector>

#include "sync/sync.h"
#include "tests/sync_test_util.h"

namespace {

using sync_test::kThreads;
using sync_test::RunThreads;

struct Node {
    int value;
};

TEST(SyncAtomicPtr, LoadAndStoreEveryOrdering) {
    int a = 0, b = 0;
    void *slot = &a;
    EXPECT_EQ(pm_atomic_load_ptr_relaxed(&slot), &a);
    EXPECT_EQ(pm_atomic_load_ptr_acquire(&slot), &a);
    pm_atomic_store_ptr_release(&slot, &b);
    EXPECT_EQ(slot, &b);
    pm_atomic_store_ptr_relaxed(&slot, nullptr);
    EXPECT_EQ(slot, nullptr);
}

TEST(SyncAtomicPtr, TakesTheAddressOfATypedPointer) {
    Node n1{1}, n2{2};
    Node *head = &n1;  // callers pass &head, not a void **
    Node *seen = static_cast<Node *>(pm_atomic_load_ptr_acquire(&head));
    EXPECT_EQ(seen->value, 1);
    pm_atomic_store_ptr_release(&head, &n2);
    EXPECT_EQ(head, &n2);
    const Node *const_target = &n1;  // a pointer-to-const value is accepted too
    EXPECT_TRUE(pm_atomic_cas_ptr(&head, &n2, const_target));
    EXPECT_EQ(head, &n1);
}

TEST(SyncAtomicPtr, CasSucceedsOnlyWhenExpectedMatches) {
    int a = 0, b = 0, c = 0;
    void *slot = &a;
    EXPECT_FALSE(pm_atomic_cas_ptr(&slot, &b, &c));
    EXPECT_EQ(slot, &a) << "a failed CAS must not write";
    EXPECT_TRUE(pm_atomic_cas_ptr(&slot, &a, &c));
    EXPECT_EQ(slot, &c);
    EXPECT_FALSE(pm_atomic_cas_ptr(&slot, &a, &b)) << "the old value no longer matches";
    EXPECT_EQ(slot, &c);
    EXPECT_TRUE(pm_atomic_cas_ptr(&slot, &c, nullptr));
    EXPECT_EQ(slot, nullptr);
}

TEST(SyncAtomicPtr, SwapReturnsThePreviousValue) {
    int a = 0, b = 0;
    void *slot = nullptr;
    EXPECT_EQ(pm_atomic_swap_ptr(&slot, &a), nullptr);
    EXPECT_EQ(pm_atomic_swap_ptr(&slot, &b), &a);
    EXPECT_EQ(pm_atomic_swap_ptr(&slot, nullptr), &b);
    EXPECT_EQ(slot, nullptr);
}

TEST(SyncAtomicSize, LoadStoreFaaFasCas) {
    size_t v = 5;
    EXPECT_EQ(pm_atomic_load_size_relaxed(&v), 5u);
    pm_atomic_store_size_release(&v, 7);
    EXPECT_EQ(pm_atomic_load_size_acquire(&v), 7u);
    pm_atomic_store_size_relaxed(&v, 10);
    EXPECT_EQ(pm_atomic_faa_size(&v, 3), 10u) << "faa returns the old value";
    EXPECT_EQ(v, 13u);
    EXPECT_EQ(pm_atomic_faa_size(&v, SIZE_MAX), 13u) << "adding SIZE_MAX subtracts one";
    EXPECT_EQ(v, 12u);
    EXPECT_EQ(pm_atomic_fas_size(&v, 99), 12u);
    EXPECT_EQ(v, 99u);
    EXPECT_FALSE(pm_atomic_cas_size(&v, 98, 1));
    EXPECT_EQ(v, 99u);
    EXPECT_TRUE(pm_atomic_cas_size(&v, 99, 1));
    EXPECT_EQ(v, 1u);
}

TEST(SyncAtomicSize, FaaWrapsAround) {
    size_t v = SIZE_MAX;
    EXPECT_EQ(pm_atomic_faa_size(&v, 2), SIZE_MAX);
    EXPECT_EQ(v, 1u);
}

TEST(SyncAtomicU64, RelaxedStatistics) {
    uint64_t v = 0;
    pm_atomic_store_u64_relaxed(&v, UINT64_MAX - 1);
    EXPECT_EQ(pm_atomic_load_u64_relaxed(&v), UINT64_MAX - 1);
    EXPECT_EQ(pm_atomic_faa_u64(&v, 3), UINT64_MAX - 1);
    EXPECT_EQ(pm_atomic_load_u64_relaxed(&v), 1u);
}

TEST(SyncAtomicInt, LoadStoreFaaCas) {
    int v = -3;
    EXPECT_EQ(pm_atomic_load_int_relaxed(&v), -3);
    pm_atomic_store_int_release(&v, 4);
    EXPECT_EQ(pm_atomic_load_int_acquire(&v), 4);
    pm_atomic_store_int_relaxed(&v, 10);
    EXPECT_EQ(pm_atomic_faa_int(&v, -15), 10);
    EXPECT_EQ(v, -5);
    EXPECT_FALSE(pm_atomic_cas_int(&v, 5, 0));
    EXPECT_EQ(v, -5);
    EXPECT_TRUE(pm_atomic_cas_int(&v, -5, 0));
    EXPECT_EQ(v, 0);
}

TEST(SyncAtomicFence, FencesAndRelaxCanBeCalled) {
    // On x86-64 only the seq_cst fence emits an instruction; this checks they link and
    // compile in C++.
    pm_atomic_fence_acquire();
    pm_atomic_fence_release();
    pm_atomic_fence_seq_cst();
    pm_cpu_relax();
    SUCCEED();
}

// Atomicity: a lost update shows up as a short total.
TEST(SyncAtomicContended, FetchAndAddTotalsAreExact) {
    constexpr int kIters = 20000;
    size_t size_counter = 0;
    uint64_t u64_counter = 0;
    int int_counter = 0;
    RunThreads(kThreads, [&](int) {
        for (int i = 0; i < kIters; i++) {
            pm_atomic_faa_size(&size_counter, 1);
            pm_atomic_faa_u64(&u64_counter, 2);
            pm_atomic_faa_int(&int_counter, -1);
        }
    });
    EXPECT_EQ(size_counter, static_cast<size_t>(kThreads) * kIters);
    EXPECT_EQ(u64_counter, 2u * kThreads * kIters);
    EXPECT_EQ(int_counter, -kThreads * kIters);
}

TEST(SyncAtomicContended, CasLoopsTotalsAreExact) {
    constexpr int kIters = 10000;
    size_t size_counter = 0;
    int int_counter = 0;
    RunThreads(kThreads, [&](int) {
        for (int i = 0; i < kIters; i++) {
            size_t s = pm_atomic_load_size_relaxed(&size_counter);
            while (!pm_atomic_cas_size(&size_counter, s, s + 1)) s = pm_atomic_load_size_relaxed(&size_counter);
            int v = pm_atomic_load_int_relaxed(&int_counter);
            while (!pm_atomic_cas_int(&int_counter, v, v + 1)) v = pm_atomic_load_int_relaxed(&int_counter);
        }
    });
    EXPECT_EQ(size_counter, static_cast<size_t>(kThreads) * kIters);
    EXPECT_EQ(int_counter, kThreads * kIters);
}

// Every token swapped in is swapped out exactly once (by a later swap or the final read):
// a non-atomic swap would lose or duplicate tokens.
TEST(SyncAtomicContended, SwapNeitherLosesNorDuplicates) {
    constexpr int kPerThread = 5000;
    std::vector<int> tokens(kThreads * kPerThread);
    std::vector<std::vector<void *>> got(kThreads);
    void *slot = nullptr;
    RunThreads(kThreads, [&](int t) {
        for (int i = 0; i < kPerThread; i++) {
            void *old = pm_atomic_swap_ptr(&slot, &tokens[t * kPerThread + i]);
            if (old != nullptr) got[t].push_back(old);
        }
    });
    std::vector<void *> all;
    for (auto &g : got) all.insert(all.end(), g.begin(), g.end());
    all.push_back(slot);
    ASSERT_EQ(all.size(), tokens.size());
    std::sort(all.begin(), all.end());
    for (size_t i = 0; i < tokens.size(); i++) EXPECT_EQ(all[i], &tokens[i]);
}

}  // namespace
