// tests/trace_fast_paths_test.cc — what tracing's cheap paths (alloc/trace.c) must not
// change: each thread's cache of recent tracebacks never hands back a wrong or freed one,
// a session of full tracing (which keeps no filter of traced addresses) and a session of
// sampling (which does) each untrace every block they traced, whatever the sessions before
// them were, and blocks no session traced are freed without effect.
//
// The mem and object domains and pm_trace_start require the GIL: each test holds it.

#include <stddef.h>

#include <vector>

#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"
#include "tests/trace_test_support.h"

namespace {

using trace_test::Current;
using trace_test::Frame;

using TraceFastPathsTest = trace_test::ProvidedFramesTest;

// Two file names (string literals outlive every trace) and a line per call site.
const char *SiteFile(size_t site) { return site % 2 ? "odd.py" : "even.py"; }

// More call sites than a thread's traceback cache holds (1024 entries), visited in an
// order that makes sites collide in the cache and evict each other, twice over.
TEST_F(TraceFastPathsTest, InterleavedCallSitesEachKeepTheirOwnTraceback) {
    GilScope gil;
    constexpr size_t kSites = 3000;
    ASSERT_EQ(0, pm_trace_start(2));
    std::vector<void *> blocks;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < kSites; i++) {
            size_t site = (i * 7919) % kSites;  // a permutation: 7919 is a prime, coprime to kSites
            Frame outer("main.py", 1 + site % 3);
            Frame inner(SiteFile(site), site);
            void *p = pm_obj_malloc(16 + site % 64);
            ASSERT_NE(nullptr, p);
            blocks.push_back(p);
            pm_trace_frame frames[2];
            ASSERT_EQ(2, pm_trace_get_traceback(PM_DOMAIN_OBJ, p, frames, 2));
            EXPECT_STREQ(SiteFile(site), frames[0].filename);
            EXPECT_EQ(site, frames[0].lineno);
            EXPECT_STREQ("main.py", frames[1].filename);
            EXPECT_EQ(1 + site % 3, frames[1].lineno);
        }
    }
    // Identical tracebacks were stored once: every group holds its site's two blocks.
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    pm_trace_stats *stats = pm_trace_snapshot_statistics(snapshot, PM_TRACE_BY_TRACEBACK);
    ASSERT_NE(nullptr, stats);
    EXPECT_EQ(kSites, stats->count);
    for (size_t i = 0; i < stats->count; i++) EXPECT_EQ(2u, stats->items[i].count) << i;
    pm_trace_stats_free(stats);
    pm_trace_snapshot_free(snapshot);
    for (void *p : blocks) pm_obj_free(p);
    EXPECT_EQ(0u, Current());
}

// Clear frees every traceback; a thread that cached one in the session before must intern
// it again. Reading a freed traceback would fault here (its memory is unmapped).
TEST_F(TraceFastPathsTest, ATracebackCachedBeforeAClearIsNeverReused) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("cached.py", 7);
    for (int session = 0; session < 3; session++) {
        void *first = pm_mem_malloc(40);
        void *second = pm_mem_malloc(40);  // from the cache, in every session
        ASSERT_TRUE(first && second);
        pm_trace_frame f;
        ASSERT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_MEM, second, &f, 1));
        EXPECT_STREQ("cached.py", f.filename);
        EXPECT_EQ(7u, f.lineno);
        pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
        ASSERT_NE(nullptr, snapshot);
        pm_trace_stats *stats = pm_trace_snapshot_statistics(snapshot, PM_TRACE_BY_TRACEBACK);
        ASSERT_NE(nullptr, stats);
        ASSERT_EQ(1u, stats->count);
        EXPECT_EQ(2u, stats->items[0].count);
        EXPECT_STREQ("cached.py", stats->items[0].frames[0].filename);
        pm_trace_stats_free(stats);
        pm_trace_snapshot_free(snapshot);
        pm_trace_clear_traces();
        pm_mem_free(first);  // untraced since the clear
        pm_mem_free(second);
        EXPECT_EQ(0u, Current());
    }
}

// Blocks from before start, of every kind: small object blocks, object blocks that pymalloc
// hands to the raw domain, raw blocks. Freeing them while tracing changes nothing.
TEST_F(TraceFastPathsTest, BlocksFromBeforeStartAreFreedWithoutEffectInEitherMode) {
    GilScope gil;
    for (int sampling = 0; sampling < 2; sampling++) {
        std::vector<void *> small, large, raw;
        for (int i = 0; i < 50; i++) {
            small.push_back(pm_obj_malloc(48));
            large.push_back(pm_obj_malloc(4096));
            raw.push_back(pm_raw_malloc(64));
        }
        ASSERT_EQ(0, sampling ? pm_trace_start_sampling(1, 1) : pm_trace_start(1));
        Frame frame("app.py", 3);
        void *traced_large = pm_obj_malloc(5000);  // sampled too: at a mean of 1 byte, p = 1
        ASSERT_NE(nullptr, traced_large);
        size_t with_one = Current();
        EXPECT_GE(with_one, 5000u);
        for (void *p : small) pm_obj_free(p);
        for (void *p : large) pm_obj_free(p);
        for (void *p : raw) pm_raw_free(p);
        EXPECT_EQ(with_one, Current());
        pm_obj_free(traced_large);  // its raw block is freed nested inside: not looked up twice
        EXPECT_EQ(0u, Current());
        pm_trace_stop();
    }
}

// Sessions alternate between full tracing and sampling every block (a mean of 1 byte, so a
// block of s >= 32 bytes is sampled with p = 1 - e^-s and weighs s): in each, what was
// traced is untraced by its free, exactly, including across a clear; blocks traced by the
// session before are freed without effect.
struct Block {
    void *ptr;
    size_t size;
    bool raw;
};

void FreeBlock(const Block &b) PM_GIL_REQUIRED {
    if (b.raw) {
        pm_raw_free(b.ptr);
    } else {
        pm_mem_free(b.ptr);
    }
}

TEST_F(TraceFastPathsTest, AlternatingModesUntraceEveryBlockTheyTraced) {
    GilScope gil;
    std::vector<Block> left_over;
    for (int session = 0; session < 6; session++) {
        bool sampling = session % 2 == 1;
        ASSERT_EQ(0, sampling ? pm_trace_start_sampling(1, 1) : pm_trace_start(1));
        Frame frame(sampling ? "sampled.py" : "full.py", size_t(session));
        for (const Block &b : left_over) FreeBlock(b);  // traced by the session before
        left_over.clear();
        EXPECT_EQ(0u, Current()) << session;
        size_t kept = 0;
        for (int i = 0; i < 200; i++) {
            Block b{nullptr, size_t(32 + i), i % 3 == 0};
            b.ptr = b.raw ? pm_raw_malloc(b.size) : pm_mem_malloc(b.size);
            ASSERT_NE(nullptr, b.ptr);
            if (i % 2 == 0) {
                left_over.push_back(b);
                kept += b.size;
            } else {
                FreeBlock(b);
            }
        }
        EXPECT_EQ(kept, Current()) << session;
        pm_trace_clear_traces();
        EXPECT_EQ(0u, Current());
        // After a clear, tracing goes on in the same mode and still untraces exactly.
        void *fresh = pm_mem_malloc(100);
        ASSERT_NE(nullptr, fresh);
        EXPECT_EQ(100u, Current());
        pm_mem_free(fresh);
        EXPECT_EQ(0u, Current()) << session;
        pm_trace_stop();
    }
    for (const Block &b : left_over) FreeBlock(b);
}

}  // namespace
