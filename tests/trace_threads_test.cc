// tests/trace_threads_test.cc — tracing with threads (alloc/trace.c), run under TSan too:
// exact accounting when many threads allocate and free across each other (raw without the
// GIL, object with it); start, stop, clear and snapshots while threads allocate; the raw
// hook working while another thread holds the GIL for as long as it likes.

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "alloc/pymalloc_mt.h"
#include "gil/gil.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"
#include "tests/trace_test_support.h"

namespace {

using trace_test::Current;
using trace_test::Frame;

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PM_TEST_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define PM_TEST_TSAN 1
#endif
#ifdef PM_TEST_TSAN
constexpr int kScale = 4;  // TSan is slow: smaller loops, the same interleavings
#else
constexpr int kScale = 1;
#endif

using TraceThreadsTest = trace_test::ProvidedFramesTest;

struct Block {
    void *p;
    size_t size;
    bool object;
};

TEST_F(TraceThreadsTest, CurrentIsExactAcrossThreadsAndCrossThreadFrees) {
    {
        GilScope gil;
        ASSERT_EQ(0, pm_trace_start(2));
    }
    constexpr int kThreads = 6;
    constexpr int kPerThread = 4000 / kScale;
    std::vector<std::vector<Block>> kept(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; t++) {
        threads.emplace_back([t, &kept] {
            Frame frame("worker.py", size_t(t));
            bool object = t % 2 == 1;  // odd threads use the object domain, with the GIL
            std::vector<Block> live;
            for (int i = 0; i < kPerThread; i++) {
                size_t size = 1 + (size_t(i) * 131 + size_t(t)) % 900;
                void *p;
                if (object) {
                    pm_gil_acquire();
                    p = pm_obj_malloc(size);
                    pm_gil_release();
                } else {
                    p = pm_raw_malloc(size);
                }
                ASSERT_NE(nullptr, p);
                live.push_back({p, size, object});
                if (i % 3 == 2) {  // free an earlier one
                    Block b = live[live.size() / 2];
                    live.erase(live.begin() + long(live.size() / 2));
                    if (b.object) {
                        pm_gil_acquire();
                        pm_obj_free(b.p);
                        pm_gil_release();
                    } else {
                        pm_raw_free(b.p);
                    }
                }
            }
            kept[size_t(t)] = live;
        });
    }
    for (auto &thread : threads) thread.join();
    size_t expected = 0, count = 0;
    for (const auto &live : kept) {
        for (const Block &b : live) {
            expected += b.size;
            count++;
        }
    }
    EXPECT_EQ(expected, Current());
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    EXPECT_EQ(count, pm_trace_snapshot_count(snapshot));
    EXPECT_EQ(expected, pm_trace_snapshot_size(snapshot));
    pm_trace_snapshot_free(snapshot);
    // Freed by another thread than the one that allocated them.
    GilScope gil;
    for (const auto &live : kept) {
        for (const Block &b : live) b.object ? pm_obj_free(b.p) : pm_raw_free(b.p);
    }
    EXPECT_EQ(0u, Current());
    size_t peak = 0;
    pm_trace_get_traced_memory(nullptr, &peak);
    EXPECT_GE(peak, expected);
}

TEST_F(TraceThreadsTest, StartStopClearAndSnapshotsWhileThreadsAllocate) {
    std::atomic<bool> done{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; t++) {
        threads.emplace_back([t, &done] {
            Frame frame("busy.py", size_t(t));
            std::vector<void *> live(64, nullptr);
            unsigned i = 0;
            while (!done.load(std::memory_order_relaxed)) {
                size_t slot = (i * 7) % live.size();
                size_t size = 1 + (i * 53) % 2000;
                if (t == 2) {  // the object domain, handing the GIL over now and then
                    pm_gil_acquire();
                    for (int k = 0; k < 16; k++, i++) {
                        slot = (i * 7) % live.size();
                        if (live[slot] != nullptr && i % 2) {
                            void *q = pm_obj_realloc(live[slot], size + size_t(k));
                            if (q != nullptr) live[slot] = q;
                        } else {
                            pm_obj_free(live[slot]);
                            live[slot] = pm_obj_malloc(size);
                        }
                    }
                    pm_gil_release();
                    continue;
                }
                if (live[slot] != nullptr && i % 2) {
                    void *q = pm_raw_realloc(live[slot], size);
                    if (q != nullptr) live[slot] = q;
                } else {
                    pm_raw_free(live[slot]);
                    live[slot] = pm_raw_calloc(1, size);
                }
                i++;
            }
            if (t == 2) {
                GilScope gil;
                for (void *p : live) pm_obj_free(p);
            } else {
                for (void *p : live) pm_raw_free(p);
            }
        });
    }
    const int kRounds = 60 / kScale;
    for (int round = 0; round < kRounds; round++) {
        {
            GilScope gil;
            ASSERT_EQ(0, round % 2 ? pm_trace_start(3) : pm_trace_start_sampling(1, 4096));
        }
        std::this_thread::yield();
        if (round % 3 == 0) pm_trace_clear_traces();
        pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
        ASSERT_NE(nullptr, snapshot);
        pm_trace_stats *stats = pm_trace_snapshot_statistics(snapshot, PM_TRACE_BY_FILENAME);
        ASSERT_NE(nullptr, stats);
        pm_trace_stats_free(stats);
        pm_trace_snapshot_free(snapshot);
        pm_trace_stop();
        EXPECT_FALSE(pm_trace_is_tracing());
        size_t current = 1, peak = 1;
        pm_trace_get_traced_memory(&current, &peak);
        EXPECT_EQ(0u, current);
        EXPECT_EQ(0u, peak);
    }
    done = true;
    for (auto &thread : threads) thread.join();
    GilScope gil;
    EXPECT_EQ(nullptr, pm_heap_check());
    // A fresh session starts from nothing.
    ASSERT_EQ(0, pm_trace_start(1));
    EXPECT_EQ(0u, Current());
}

TEST_F(TraceThreadsTest, TheRawHookNeverWaitsForTheGil) {
    {
        GilScope gil;
        ASSERT_EQ(0, pm_trace_start(1));
    }
    GilScope held;  // this thread keeps the GIL while another uses the raw domain
    std::thread raw_user([] {
        Frame frame("nogil.py", 1);
        for (int i = 0; i < 1000; i++) {
            void *p = pm_raw_malloc(size_t(i) + 1);
            ASSERT_NE(nullptr, p);
            pm_raw_free(p);
        }
    });
    raw_user.join();  // would deadlock if the raw hook took the GIL
    EXPECT_EQ(0u, Current());
}

// fork() while other threads trace: the child goes on tracing from empty tables, with no
// lock left held by a thread that does not exist there.
TEST_F(TraceThreadsTest, AForkedChildKeepsTracing) {
    {
        GilScope gil;
        ASSERT_EQ(0, pm_trace_start(1));
    }
    std::atomic<bool> done{false};
    std::thread busy([&done] {
        Frame frame("busy.py", 1);
        while (!done.load(std::memory_order_relaxed)) {
            void *p = pm_raw_malloc(64);
            pm_raw_free(p);
        }
    });
    void *kept = pm_raw_malloc(1000);
    for (int round = 0; round < 5; round++) {
        pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            // Only this thread exists here; the busy one may have been inside a shard.
            bool ok = pm_trace_is_tracing() && Current() == 0;
            void *p = pm_raw_malloc(300);
            ok = ok && p != nullptr && Current() == 300;
            pm_raw_free(p);
            pm_raw_free(kept);  // the parent's trace: not in the child's tables
            ok = ok && Current() == 0;
            _exit(ok ? 0 : 1);
        }
        int status = 0;
        ASSERT_EQ(pid, waitpid(pid, &status, 0));
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "round " << round;
    }
    done = true;
    busy.join();
    pm_raw_free(kept);
}

}  // namespace
