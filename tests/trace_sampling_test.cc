// tests/trace_sampling_test.cc — sampling mode (alloc/trace.c): a Poisson process over the
// bytes a thread allocates, mean N. A block of s bytes is sampled with probability
// p(s) = 1 - exp(-s/N) and then stands for s / p(s) bytes, so the traced total is an
// unbiased estimate of the live bytes, with variance sum of s^2 (1 - p) / p.
//
// Every run is seeded (pm_trace_test_seed_sampler) and allocates a fixed sequence of sizes,
// so each result is deterministic: the statistical bounds below (5 standard deviations per
// run, and for the mean of 20 runs) were chosen so that a correct sampler passes them with
// overwhelming probability, and with fixed seeds they cannot flake. A biased estimator
// (for example weighting each sample by N, or by max(N, s)) fails the bound on the mean.

#include <math.h>
#include <stdint.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "alloc/internal/trace.h"
#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"

namespace {

constexpr size_t kMean = 4096;

class SamplingTest : public ::testing::Test {
  protected:
    void TearDown() override { pm_trace_stop(); }
};

size_t Current() {
    size_t current = 0;
    pm_trace_get_traced_memory(&current, nullptr);
    return current;
}

// Steps two threads through numbered phases: each waits for the other's step.
class Phases {
  public:
    void Advance(int to) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            phase_ = to;
        }
        changed_.notify_all();
    }
    void WaitFor(int at_least) {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return phase_ >= at_least; });
    }

  private:
    std::mutex mutex_;
    std::condition_variable changed_;
    int phase_ = 0;
};

struct SampledRun {
    double truth = 0;
    double estimate = 0;
    double variance = 0;
    double expected_samples = 0;
    size_t samples = 0;
    size_t blocks = 0;
};

// Allocates 4 MiB in blocks of 1..1024 bytes (sizes from `seed`), reads the estimate, frees.
SampledRun SampleOnce(uint64_t seed) PM_GIL_REQUIRED {
    SampledRun run;
    EXPECT_EQ(0, pm_trace_start_sampling(1, kMean));
    pm_trace_test_seed_sampler(seed);
    uint64_t lcg = seed * 6364136223846793005ull + 1442695040888963407ull;
    std::vector<void *> blocks;
    while (run.truth < 4.0 * 1024 * 1024) {
        lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
        size_t s = 1 + size_t(lcg >> 33) % 1024;
        void *p = pm_raw_malloc(s);
        EXPECT_NE(nullptr, p);
        blocks.push_back(p);
        double probability = -expm1(-double(s) / double(kMean));
        run.truth += double(s);
        run.variance += double(s) * double(s) * (1 - probability) / probability;
        run.expected_samples += probability;
    }
    run.blocks = blocks.size();
    run.estimate = double(Current());
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    EXPECT_NE(nullptr, snapshot);
    run.samples = pm_trace_snapshot_count(snapshot);
    EXPECT_EQ(size_t(run.estimate), pm_trace_snapshot_size(snapshot));
    pm_trace_snapshot_free(snapshot);
    for (void *p : blocks) pm_raw_free(p);
    EXPECT_EQ(0u, Current()) << "every sampled block was untraced by its free";
    pm_trace_stop();
    return run;
}

TEST_F(SamplingTest, TheEstimateIsUnbiasedWithinStatisticalBounds) {
    GilScope gil;
    constexpr int kRuns = 20;
    double truth = 0, estimate = 0, variance = 0;
    for (int i = 0; i < kRuns; i++) {
        SampledRun run = SampleOnce(uint64_t(i) + 1);
        SCOPED_TRACE(i);
        // Each weight is rounded to whole bytes: at most half a byte per block.
        double slack = 5 * sqrt(run.variance) + 0.5 * double(run.blocks);
        EXPECT_NEAR(run.truth, run.estimate, slack);
        double samples_sd = sqrt(run.expected_samples);
        EXPECT_NEAR(run.expected_samples, double(run.samples), 5 * samples_sd + 1);
        EXPECT_LT(run.samples, run.blocks / 2) << "sampling must skip most small blocks";
        truth += run.truth;
        estimate += run.estimate;
        variance += run.variance;
    }
    // The mean of the runs: 5 standard deviations are 3.5% of the truth here, while
    // weighting samples by max(N, s) would be about 6% low.
    EXPECT_NEAR(truth / kRuns, estimate / kRuns, 5 * sqrt(variance) / kRuns + 1.0);
}

TEST_F(SamplingTest, BlocksFarLargerThanTheMeanAreAlwaysTracedAtTheirSize) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start_sampling(1, kMean));
    pm_trace_test_seed_sampler(7);
    std::vector<void *> blocks;
    for (int i = 0; i < 10; i++) blocks.push_back(pm_raw_malloc(size_t{1} << 20));
    EXPECT_EQ(size_t{10} << 20, Current());
    for (void *p : blocks) pm_raw_free(p);
    EXPECT_EQ(0u, Current());
}

TEST_F(SamplingTest, TheDefaultRateAndModeChecks) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start_sampling(1, 0));  // 0: the default, 512 KiB
    EXPECT_TRUE(pm_trace_is_tracing());
    EXPECT_EQ(0, pm_trace_start_sampling(2, PM_TRACE_DEFAULT_SAMPLE_BYTES));  // same mode
    EXPECT_EQ(2, pm_trace_get_traceback_limit());
    EXPECT_EQ(-1, pm_trace_start_sampling(1, 1024));  // another rate: stop first
    EXPECT_EQ(-1, pm_trace_start(1));
}

TEST_F(SamplingTest, ReallocMovesOrDropsTheSample) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start_sampling(1, kMean));
    pm_trace_test_seed_sampler(3);
    void *p = pm_raw_malloc(size_t{1} << 20);  // certainly sampled
    EXPECT_EQ(size_t{1} << 20, Current());
    p = pm_raw_realloc(p, size_t{2} << 20);  // certainly sampled again, at the new size
    ASSERT_NE(nullptr, p);
    EXPECT_EQ(size_t{2} << 20, Current());
    pm_raw_free(p);
    EXPECT_EQ(0u, Current());
}

TEST_F(SamplingTest, PymallocsFallBackToRawIsNeverSampledAgain) {
    GilScope gil;
    // 1000 bytes go from the object domain to the raw one; at this rate about 40% of the
    // outer calls are skipped, and their nested raw calls must not be sampled instead.
    ASSERT_EQ(0, pm_trace_start_sampling(1, 2000));
    pm_trace_test_seed_sampler(11);
    std::vector<void *> blocks;
    size_t traced = 0;
    for (int i = 0; i < 200; i++) {
        void *p = pm_obj_malloc(1000);
        ASSERT_NE(nullptr, p);
        blocks.push_back(p);
        pm_trace_frame frame;
        EXPECT_EQ(-1, pm_trace_get_traceback(PM_DOMAIN_RAW, p, &frame, 1)) << i;
        if (pm_trace_get_traceback(PM_DOMAIN_OBJ, p, &frame, 1) >= 0) traced++;
    }
    // p = 1 - exp(-1/2) = 0.39 of 200: 79 expected, standard deviation 7; 5 of them each way.
    EXPECT_GT(traced, 44u);
    EXPECT_LT(traced, 114u);
    for (void *p : blocks) pm_obj_free(p);
    EXPECT_EQ(0u, Current());
}

// While sampling over pymalloc, a sampled block never comes from a pool (free's fast path
// takes pool blocks without asking the tracer), yet every free still untraces its block:
// at a mean of 1 byte every call of 40 bytes or more is sampled (with probability
// 1 - exp(-40)), and all must be untraced by their frees.
TEST_F(SamplingTest, EverySampledMemAndObjectBlockIsUntracedByItsFree) {
    GilScope gil;
    size_t blocks_before = pm_allocated_blocks();
    void *before_session = pm_obj_malloc(64);  // a pool block from before the session
    ASSERT_NE(nullptr, before_session);
    ASSERT_EQ(0, pm_trace_start_sampling(1, 1));
    pm_trace_test_seed_sampler(5);
    std::vector<void *> obj, mem;
    for (size_t s = 40; s <= 512; s += 7) {
        void *p = pm_obj_malloc(s);
        void *q = pm_mem_calloc(1, s);
        ASSERT_NE(nullptr, p);
        ASSERT_NE(nullptr, q);
        EXPECT_EQ(0, static_cast<unsigned char *>(q)[s - 1]);
        pm_trace_frame frame;
        EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_OBJ, p, &frame, 1)) << s;
        EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_MEM, q, &frame, 1)) << s;
        obj.push_back(p);
        mem.push_back(q);
    }
    // A pool block from before the session, reallocated: the sampled result is traced.
    void *moved = pm_obj_realloc(before_session, 48);
    ASSERT_NE(nullptr, moved);
    pm_trace_frame frame;
    EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_OBJ, moved, &frame, 1));
    for (void *p : obj) pm_obj_free(p);
    for (void *q : mem) pm_mem_free(q);
    pm_obj_free(moved);
    EXPECT_EQ(0u, Current()) << "a sampled block outlived its free in the tracer";
    pm_trace_stop();
    EXPECT_EQ(blocks_before, pm_allocated_blocks());
    EXPECT_EQ(nullptr, pm_heap_check());
}

// A session at a new rate starts its own countdown on the starting thread: after a session
// at the default 512 KiB, whose countdown had megabytes left, a session at 1 byte samples
// its first call of 40 bytes or more (found by fuzz/fuzz_trace.c).
TEST_F(SamplingTest, ANewRateDrawsAFreshCountdown) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start_sampling(1, 0));
    pm_trace_test_seed_sampler(9);
    void *p = pm_obj_malloc(16);  // draws a countdown at the default rate
    ASSERT_NE(nullptr, p);
    pm_obj_free(p);
    pm_trace_stop();
    ASSERT_EQ(0, pm_trace_start_sampling(1, 1));
    pm_trace_frame frame;
    void *q = pm_mem_malloc(64);
    ASSERT_NE(nullptr, q);
    EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_MEM, q, &frame, 1));
    void *r = pm_raw_malloc(40);
    ASSERT_NE(nullptr, r);
    EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_RAW, r, &frame, 1));
    pm_mem_free(q);
    pm_raw_free(r);
    EXPECT_EQ(0u, Current());
}

// Every thread's countdown follows the session's rate, not only the starting thread's: a
// thread whose countdown was drawn at the default 512 KiB, with most of it left, samples
// its first call of 40 bytes or more in a session at 1 byte, through pymalloc's fast path
// (mem) and through the hook (raw).
TEST_F(SamplingTest, ANewRateReachesOtherThreadsToo) {
    Phases phases;
    bool mem_traced = false, raw_traced = false;
    std::thread worker([&] {
        phases.WaitFor(1);
        {
            GilScope gil;
            void *p = pm_obj_malloc(16);  // draws this thread's countdown at the default rate
            pm_raw_free(pm_raw_malloc(16));
            pm_obj_free(p);
        }
        phases.Advance(2);
        phases.WaitFor(3);
        {
            GilScope gil;
            void *q = pm_mem_malloc(64);
            void *r = pm_raw_malloc(40);
            pm_trace_frame frame;
            mem_traced = q != nullptr && pm_trace_get_traceback(PM_DOMAIN_MEM, q, &frame, 1) == 1;
            raw_traced = r != nullptr && pm_trace_get_traceback(PM_DOMAIN_RAW, r, &frame, 1) == 1;
            pm_mem_free(q);
            pm_raw_free(r);
        }
        phases.Advance(4);
    });
    {
        GilScope gil;
        EXPECT_EQ(0, pm_trace_start_sampling(1, 0));
    }
    phases.Advance(1);
    phases.WaitFor(2);
    {
        GilScope gil;
        pm_trace_stop();
        EXPECT_EQ(0, pm_trace_start_sampling(1, 1));
    }
    phases.Advance(3);
    phases.WaitFor(4);
    worker.join();
    EXPECT_TRUE(mem_traced) << "the worker's mem call used a countdown of the old rate";
    EXPECT_TRUE(raw_traced) << "the worker's raw call used a countdown of the old rate";
    EXPECT_EQ(0u, Current());
}

// A thread that attaches while a session samples (here: it detached, as runtimes that
// manage their threads do) draws its countdown at the session's rate even though its
// countdown was parked, with exabytes left, while no session ran. Found by
// fuzz/fuzz_threads.c: attaching put the thread's own heap back in its route without
// looking at the countdown.
TEST_F(SamplingTest, AThreadAttachingDuringASessionSamplesAtItsRate) {
    Phases phases;
    bool traced = false;
    std::thread worker([&] {
        {
            GilScope gil;
            pm_obj_free(pm_obj_malloc(16));  // no session: parks this thread's countdown
        }
        pm_thread_detach();
        phases.Advance(1);
        phases.WaitFor(2);
        {
            GilScope gil;
            void *p = pm_obj_malloc(258);  // attaches again, on the sampling route
            pm_trace_frame frame;
            traced = p != nullptr && pm_trace_get_traceback(PM_DOMAIN_OBJ, p, &frame, 1) == 1;
            pm_obj_free(p);
        }
        phases.Advance(3);
    });
    phases.WaitFor(1);
    {
        GilScope gil;
        EXPECT_EQ(0, pm_trace_start_sampling(1, 1));
    }
    phases.Advance(2);
    phases.WaitFor(3);
    worker.join();
    EXPECT_TRUE(traced) << "the attaching thread kept its parked countdown";
    EXPECT_EQ(0u, Current());
}

// Once a thread's small mallocs run on pymalloc's fast path again (its first one in the
// session put its heap back in its route), its calls of more than 512 bytes still reach
// the tracer's hook and are sampled.
TEST_F(SamplingTest, LargeBlocksAreSampledAfterTheRouteIsArmed) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start_sampling(1, 1));
    void *small = pm_obj_malloc(16);
    void *small_mem = pm_mem_malloc(16);
    void *large = pm_obj_malloc(1000);
    void *large_mem = pm_mem_malloc(600);
    ASSERT_NE(nullptr, small);
    ASSERT_NE(nullptr, small_mem);
    ASSERT_NE(nullptr, large);
    ASSERT_NE(nullptr, large_mem);
    pm_trace_frame frame;
    EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_OBJ, large, &frame, 1));
    EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_MEM, large_mem, &frame, 1));
    pm_obj_free(small);
    pm_mem_free(small_mem);
    pm_obj_free(large);
    pm_mem_free(large_mem);
    EXPECT_EQ(0u, Current());
}

// After a sampling session, a full one traces pool blocks again, and their frees (back
// through the tracer) untrace them.
TEST_F(SamplingTest, AFullSessionAfterSamplingTracesAndUntracesPoolBlocks) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start_sampling(1, kMean));
    void *sampled_era = pm_obj_malloc(32);
    ASSERT_NE(nullptr, sampled_era);
    pm_trace_stop();
    ASSERT_EQ(0, pm_trace_start(1));
    std::vector<void *> blocks;
    size_t total = 0;
    for (size_t s = 1; s <= 512; s += 13) {
        blocks.push_back(pm_obj_malloc(s));
        ASSERT_NE(nullptr, blocks.back());
        total += s;
    }
    EXPECT_EQ(total, Current());
    for (void *p : blocks) pm_obj_free(p);
    EXPECT_EQ(0u, Current());
    pm_obj_free(sampled_era);
    EXPECT_EQ(0u, Current());
    pm_trace_stop();
    EXPECT_EQ(nullptr, pm_heap_check());
}

}  // namespace
