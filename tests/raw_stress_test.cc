// raw_stress_test.cc — the raw domain under concurrent use, and its per-thread counters.
//
// SwappingHooksUnderLoad: four threads malloc / calloc / realloc / free at random, checking
// every block's contents, while a fifth keeps swapping the raw table between two hooks. Both
// hooks wrap the same system allocator (so either may free what the other made) but have
// their own functions and their own ctx; every function checks that the ctx it received is
// its own, so a call that saw half of one table and half of the other (a torn read) is
// counted. The run ends with a conservation check: every operation the workers made is
// accounted for in the hooks' counts and in pm_get_raw_stats, and no block is left live.
// The swapper and the workers are tied by counts, not time: workers keep going until the
// swapper has made a minimum number of swaps, so the two always overlap.
//
// ExitedThreadsStillCount: counts made by threads that have exited stay in the totals,
// whether a later thread adopts their counter block or more threads run at once than the
// library has static blocks for.
//
// FailingAllocatorCountsEveryThreadsCalls: the test-support counters lose nothing under
// concurrent calls.
//
// No timing assertions; sizes are smaller under ThreadSanitizer.

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <cstdio>
#include <condition_variable>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/failing_allocators.h"

namespace {

#if defined(__SANITIZE_THREAD__)
constexpr bool kTsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kTsan = true;
#else
constexpr bool kTsan = false;
#endif
#else
constexpr bool kTsan = false;
#endif

constexpr int kWorkers = 4;
constexpr int kOpsPerWorker = kTsan ? 10000 : 40000;
constexpr uint64_t kMinSwaps = kTsan ? 10000 : 50000;
constexpr uint64_t kWaitEvery = 31;
constexpr int kSlots = 64;

bool SameAllocator(const pm_allocator &a, const pm_allocator &b) {
    return a.ctx == b.ctx && a.malloc == b.malloc && a.calloc == b.calloc &&
           a.realloc == b.realloc && a.free == b.free;
}

// ---- two tagged hooks over the same base allocator ----------------------------------------

struct TaggedHook {
    pm_allocator base;  // written before the hook is first installed, read-only after
    std::atomic<uint64_t> mallocs{0};
    std::atomic<uint64_t> callocs{0};
    std::atomic<uint64_t> reallocs{0};
    std::atomic<uint64_t> frees{0};
};

TaggedHook g_hooks[2];
std::atomic<uint64_t> g_wrong_ctx{0};  // calls whose ctx was not their function's hook

template <int kWhich>
TaggedHook *Own(void *ctx) {
    TaggedHook *mine = &g_hooks[kWhich];
    if (ctx != mine) g_wrong_ctx.fetch_add(1, std::memory_order_relaxed);
    return mine;  // the base allocator is the same either way; keep going
}

template <int kWhich>
void *HookMalloc(void *ctx, size_t size) {
    TaggedHook *h = Own<kWhich>(ctx);
    h->mallocs.fetch_add(1, std::memory_order_relaxed);
    return h->base.malloc(h->base.ctx, size);
}

template <int kWhich>
void *HookCalloc(void *ctx, size_t nelem, size_t elsize) {
    TaggedHook *h = Own<kWhich>(ctx);
    h->callocs.fetch_add(1, std::memory_order_relaxed);
    return h->base.calloc(h->base.ctx, nelem, elsize);
}

template <int kWhich>
void *HookRealloc(void *ctx, void *ptr, size_t size) {
    TaggedHook *h = Own<kWhich>(ctx);
    h->reallocs.fetch_add(1, std::memory_order_relaxed);
    return h->base.realloc(h->base.ctx, ptr, size);
}

template <int kWhich>
void HookFree(void *ctx, void *ptr) {
    TaggedHook *h = Own<kWhich>(ctx);
    h->frees.fetch_add(1, std::memory_order_relaxed);
    h->base.free(h->base.ctx, ptr);
}

uint64_t HookCalls(int which) {
    const TaggedHook &h = g_hooks[which];
    return h.mallocs.load(std::memory_order_relaxed) + h.callocs.load(std::memory_order_relaxed) +
           h.reallocs.load(std::memory_order_relaxed) + h.frees.load(std::memory_order_relaxed);
}

template <int kWhich>
pm_allocator HookAllocator() {
    return pm_allocator{&g_hooks[kWhich], HookMalloc<kWhich>, HookCalloc<kWhich>,
                        HookRealloc<kWhich>, HookFree<kWhich>};
}

// ---- workers --------------------------------------------------------------------------

struct OpCounts {
    uint64_t mallocs = 0;
    uint64_t callocs = 0;
    uint64_t realloc_nulls = 0;  // realloc(NULL, n)
    uint64_t reallocs = 0;       // realloc(p, n), p != NULL
    uint64_t frees = 0;
    uint64_t bad_blocks = 0;  // content checks that failed
    uint64_t null_results = 0;
};

struct Block {
    unsigned char *p = nullptr;
    size_t size = 0;
    uint8_t seed = 0;
};

uint8_t PatternByte(size_t i, uint8_t seed) {
    return static_cast<uint8_t>(seed + i * 31u);
}

void Fill(Block &b) {
    for (size_t i = 0; i < b.size; i++) b.p[i] = PatternByte(i, b.seed);
}

bool Intact(const Block &b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (b.p[i] != PatternByte(i, b.seed)) return false;
    }
    return true;
}

size_t RandomSize(std::mt19937_64 &rng) {
    uint64_t r = rng();
    switch (r % 16) {
    case 0: return 0;
    case 1: return 1 + (r >> 8) % 8192;  // now and then a bigger block
    default: return 1 + (r >> 8) % 512;
    }
}

std::atomic<uint64_t> g_swaps{0};

void Worker(int id, OpCounts *out) {
    std::mt19937_64 rng(0x9E3779B97F4A7C15ull * static_cast<uint64_t>(id + 1));
    Block slots[kSlots];
    OpCounts c;
    for (int op = 0; op < kOpsPerWorker || g_swaps.load(std::memory_order_relaxed) < kMinSwaps;
         op++) {
        Block &b = slots[rng() % kSlots];
        uint64_t choice = rng() % 8;
        if (b.p == nullptr) {
            size_t size = RandomSize(rng);
            if (choice < 4) {
                b.p = static_cast<unsigned char *>(pm_raw_malloc(size));
                c.mallocs++;
            } else if (choice < 6) {
                b.p = static_cast<unsigned char *>(pm_raw_calloc(1, size));
                c.callocs++;
                if (b.p != nullptr) {
                    for (size_t i = 0; i < size; i++) {
                        if (b.p[i] != 0) {
                            c.bad_blocks++;
                            break;
                        }
                    }
                }
            } else {
                b.p = static_cast<unsigned char *>(pm_raw_realloc(nullptr, size));
                c.realloc_nulls++;
            }
            if (b.p == nullptr) {
                c.null_results++;
                continue;
            }
            b.size = size;
            b.seed = static_cast<uint8_t>(rng());
            Fill(b);
            continue;
        }
        if (!Intact(b, b.size)) c.bad_blocks++;
        if (choice < 3) {
            pm_raw_free(b.p);
            c.frees++;
            b = Block();
            continue;
        }
        size_t size = RandomSize(rng);
        auto *q = static_cast<unsigned char *>(pm_raw_realloc(b.p, size));
        c.reallocs++;
        if (q == nullptr) {
            c.null_results++;
            continue;  // the old block stays, as documented
        }
        b.p = q;
        size_t kept = size < b.size ? size : b.size;
        if (!Intact(b, kept)) c.bad_blocks++;
        b.size = size;
        b.seed = static_cast<uint8_t>(rng());
        Fill(b);
    }
    for (Block &b : slots) {
        if (b.p == nullptr) continue;
        if (!Intact(b, b.size)) c.bad_blocks++;
        pm_raw_free(b.p);
        c.frees++;
    }
    *out = c;
}

TEST(RawStressTest, SwappingHooksUnderLoad) {
    for (TaggedHook &h : g_hooks) {
        h.mallocs = h.callocs = h.reallocs = h.frees = 0;
    }
    g_wrong_ctx = 0;
    g_swaps = 0;
    pm_allocator original;
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &original));
    g_hooks[0].base = original;
    g_hooks[1].base = original;
    const pm_allocator hook_a = HookAllocator<0>();
    const pm_allocator hook_b = HookAllocator<1>();
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_RAW, &hook_a));

    pm_raw_stats before;
    pm_get_raw_stats(&before);

    std::atomic<bool> workers_done{false};
    std::atomic<int> set_failures{0};
    // Every kWaitEvery-th installation waits until some call has gone through it (kWaitEvery
    // is odd, so the hook waited on alternates): both hooks are used under load whatever the
    // scheduler does, and the swapper yields its core only rarely.
    std::thread swapper([&] {
        uint64_t swaps = 0;
        while (!workers_done.load(std::memory_order_acquire) || swaps < kMinSwaps) {
            const int next = (swaps & 1) ? 0 : 1;
            const uint64_t seen = HookCalls(next);
            if (pm_set_allocator(PM_DOMAIN_RAW, next == 0 ? &hook_a : &hook_b) != 0) {
                set_failures.fetch_add(1);
            }
            swaps++;
            g_swaps.store(swaps, std::memory_order_relaxed);
            if (swaps % kWaitEvery != 0) continue;
            // Spin briefly first: calls are frequent, and a yield costs a time slice.
            for (int spins = 0; HookCalls(next) == seen &&
                                !workers_done.load(std::memory_order_acquire);
                 spins++) {
                if (spins >= 20000) std::this_thread::yield();
            }
        }
    });
    OpCounts counts[kWorkers];
    std::vector<std::thread> workers;
    for (int i = 0; i < kWorkers; i++) workers.emplace_back(Worker, i, &counts[i]);
    for (std::thread &t : workers) t.join();
    workers_done.store(true, std::memory_order_release);
    swapper.join();

    pm_raw_stats after;
    pm_get_raw_stats(&after);
    pm_allocator last;
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &last));
    EXPECT_TRUE(SameAllocator(last, hook_a) || SameAllocator(last, hook_b));
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_RAW, &original));

    OpCounts total;
    for (const OpCounts &c : counts) {
        total.mallocs += c.mallocs;
        total.callocs += c.callocs;
        total.realloc_nulls += c.realloc_nulls;
        total.reallocs += c.reallocs;
        total.frees += c.frees;
        total.bad_blocks += c.bad_blocks;
        total.null_results += c.null_results;
    }
    EXPECT_EQ(0u, g_wrong_ctx.load()) << "a call got the other hook's ctx: a torn table";
    EXPECT_EQ(0, set_failures.load());
    EXPECT_EQ(0u, total.bad_blocks) << "block contents were corrupted";
    EXPECT_EQ(0u, total.null_results);
    EXPECT_GE(g_swaps.load(), kMinSwaps);
    // Every waited-on installation but the last was used by at least one call.
    EXPECT_GE(HookCalls(0), kMinSwaps / kWaitEvery / 2 - 1);
    EXPECT_GE(HookCalls(1), kMinSwaps / kWaitEvery / 2 - 1);

    // Every operation reached exactly one hook, once.
    uint64_t mallocs = g_hooks[0].mallocs + g_hooks[1].mallocs;
    uint64_t callocs = g_hooks[0].callocs + g_hooks[1].callocs;
    uint64_t reallocs = g_hooks[0].reallocs + g_hooks[1].reallocs;
    uint64_t frees = g_hooks[0].frees + g_hooks[1].frees;
    EXPECT_EQ(total.mallocs, mallocs);
    EXPECT_EQ(total.callocs, callocs);
    EXPECT_EQ(total.reallocs + total.realloc_nulls, reallocs);
    EXPECT_EQ(total.frees, frees);
    EXPECT_EQ(total.mallocs + total.callocs + total.realloc_nulls, total.frees)
        << "workers must free everything they allocated";

    // And the raw counters saw the same, with nothing left live.
    EXPECT_EQ(total.mallocs + total.realloc_nulls, after.mallocs - before.mallocs);
    EXPECT_EQ(total.callocs, after.callocs - before.callocs);
    EXPECT_EQ(total.reallocs, after.reallocs - before.reallocs);
    EXPECT_EQ(total.frees, after.frees - before.frees);
    EXPECT_EQ(0u, after.failures - before.failures);
    EXPECT_EQ(before.live, after.live);

    std::printf("ops: %llu mallocs, %llu callocs, %llu reallocs, %llu frees; %llu swaps; "
                "hook A saw %llu calls, hook B %llu\n",
                static_cast<unsigned long long>(total.mallocs + total.realloc_nulls),
                static_cast<unsigned long long>(total.callocs),
                static_cast<unsigned long long>(total.reallocs),
                static_cast<unsigned long long>(total.frees),
                static_cast<unsigned long long>(g_swaps.load()),
                static_cast<unsigned long long>(HookCalls(0)),
                static_cast<unsigned long long>(HookCalls(1)));
}

// ---- the failing allocator's counters under threads -------------------------------------

TEST(RawStressTest, FailingAllocatorCountsEveryThreadsCalls) {
    constexpr int kThreads = 4;
    constexpr int kCalls = kTsan ? 500 : 5000;
    pm_failing_allocator f;
    ASSERT_EQ(0, pm_failing_allocator_install(&f, PM_DOMAIN_RAW));
    pm_fail_size_at_least(&f.policy, 4096);
    std::vector<std::thread> threads;
    std::atomic<uint64_t> nulls{0};
    for (int t = 0; t < kThreads; t++) {
        threads.emplace_back([&] {
            for (int i = 0; i < kCalls; i++) {
                void *p = pm_raw_malloc(i % 2 == 0 ? 64 : 8192);  // every other one fails
                if (p == nullptr) nulls.fetch_add(1, std::memory_order_relaxed);
                pm_raw_free(p);
            }
        });
    }
    for (std::thread &t : threads) t.join();
    ASSERT_EQ(0, pm_failing_allocator_uninstall(&f));
    const pm_failing_counts c = pm_failing_allocator_counts(&f);
    EXPECT_EQ(uint64_t{kThreads} * kCalls, c.mallocs);
    EXPECT_EQ(uint64_t{kThreads} * kCalls / 2, c.failures);
    EXPECT_EQ(c.failures, nulls.load());
    EXPECT_EQ(uint64_t{kThreads} * kCalls / 2, c.frees);
    EXPECT_EQ(c.mallocs, pm_fail_policy_calls(&f.policy));
}

// ---- counters of exited threads ---------------------------------------------------------

// Each thread: kAllocs malloc+free pairs, one calloc handed back live, one refused malloc.
constexpr int kAllocs = 50;

void CountingThread(void **handed_back) {
    for (int i = 0; i < kAllocs; i++) {
        void *p = pm_raw_malloc(static_cast<size_t>(8 + i));
        if (p == nullptr) return;
        pm_raw_free(p);
    }
    *handed_back = pm_raw_calloc(2, 8);
    (void)pm_raw_malloc(SIZE_MAX);  // refused: a failure
}

void ExpectCountsOf(int threads, const pm_raw_stats &before, const pm_raw_stats &after) {
    const uint64_t n = static_cast<uint64_t>(threads);
    EXPECT_EQ(n * (kAllocs + 1), after.mallocs - before.mallocs);
    EXPECT_EQ(n, after.callocs - before.callocs);
    EXPECT_EQ(0u, after.reallocs - before.reallocs);
    EXPECT_EQ(n * kAllocs, after.frees - before.frees);
    EXPECT_EQ(n, after.failures - before.failures);
    EXPECT_EQ(n, after.live - before.live);  // the calloc'd blocks, still live
}

void FreeAll(std::vector<void *> &blocks) {
    for (void *p : blocks) {
        EXPECT_NE(nullptr, p);
        pm_raw_free(p);
    }
}

TEST(RawStatsThreadsTest, ExitedThreadsStillCountOneAfterAnother) {
    // Each thread exits before the next starts, so later ones adopt earlier counter blocks.
    constexpr int kThreads = 12;
    pm_raw_stats before, after;
    pm_get_raw_stats(&before);
    std::vector<void *> blocks(kThreads, nullptr);
    for (int i = 0; i < kThreads; i++) std::thread(CountingThread, &blocks[i]).join();
    pm_get_raw_stats(&after);
    ExpectCountsOf(kThreads, before, after);

    FreeAll(blocks);  // freed here, counted by this thread
    pm_get_raw_stats(&after);
    EXPECT_EQ(before.live, after.live);
}

TEST(RawStatsThreadsTest, ExitedThreadsStillCountManyAtOnce) {
    // More threads alive at the same time than the library's static counter blocks (256).
    constexpr int kThreads = 300;
    pm_raw_stats before, after;
    pm_get_raw_stats(&before);
    std::vector<void *> blocks(kThreads, nullptr);
    std::mutex mu;
    std::condition_variable cv;
    int arrived = 0;
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; i++) {
        threads.emplace_back([&, i] {
            CountingThread(&blocks[i]);
            std::unique_lock<std::mutex> lock(mu);
            if (++arrived == kThreads) cv.notify_all();
            cv.wait(lock, [&] { return arrived == kThreads; });  // all alive together
        });
    }
    for (std::thread &t : threads) t.join();
    pm_get_raw_stats(&after);
    ExpectCountsOf(kThreads, before, after);

    // A second wave adopts the blocks the first one left behind; totals keep adding up.
    pm_raw_stats mid = after;
    std::vector<void *> more(kThreads / 2, nullptr);
    std::vector<std::thread> wave;
    for (int i = 0; i < kThreads / 2; i++) wave.emplace_back(CountingThread, &more[i]);
    for (std::thread &t : wave) t.join();
    pm_get_raw_stats(&after);
    ExpectCountsOf(kThreads / 2, mid, after);

    FreeAll(blocks);
    FreeAll(more);
    pm_get_raw_stats(&after);
    EXPECT_EQ(before.live, after.live);
}

}  // namespace
