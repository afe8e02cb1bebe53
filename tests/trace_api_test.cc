// tests/trace_api_test.cc — tracing (alloc/trace.c) as a user relies on it, one thread:
// starting and stopping, what is recorded (domain, outermost size, traceback), exact
// accounting, peak and reset, clearing, track/untrack return codes, native tracebacks, and
// the failure rules (a fresh allocation whose trace cannot be stored fails cleanly; a
// realloc keeps its block).
//
// The mem and object domains and pm_trace_start require the GIL: each test holds it.

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "alloc/internal/trace.h"
#include "alloc/pymalloc_mt.h"
#include "alloc/pymem_compat.h"
#include "gtest/gtest.h"
#include "tests/support/failing_allocators.h"
#include "tests/support/gil_scope.h"
#include "tests/trace_test_support.h"

namespace {

using trace_test::Current;
using trace_test::Frame;
using trace_test::Peak;

class TraceTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_EQ(0, pm_trace_set_frame_provider(trace_test::ProvideFrames, nullptr));
    }
    void TearDown() override {
        pm_trace_stop();
        pm_trace_test_fail_memory(0);
        ASSERT_EQ(0, pm_trace_set_frame_provider(nullptr, nullptr));
    }
};

bool SameAllocator(const pm_allocator &a, const pm_allocator &b) {
    return a.ctx == b.ctx && a.malloc == b.malloc && a.calloc == b.calloc && a.realloc == b.realloc &&
           a.free == b.free;
}

TEST_F(TraceTest, StartTakesOneTo65535FramesAndReportsItsLimit) {
    GilScope gil;
    for (int bad : {0, -1, 65536}) {
        errno = 0;
        EXPECT_EQ(-1, pm_trace_start(bad)) << bad;
        EXPECT_EQ(EINVAL, errno);
        EXPECT_FALSE(pm_trace_is_tracing());
    }
    EXPECT_EQ(0, pm_trace_get_traceback_limit());
    ASSERT_EQ(0, pm_trace_start(1));
    EXPECT_TRUE(pm_trace_is_tracing());
    EXPECT_EQ(1, pm_trace_get_traceback_limit());
    // Starting again sets the limit for new traces, as tracemalloc.start(n) does.
    ASSERT_EQ(0, pm_trace_start(PM_TRACE_MAX_FRAMES));
    EXPECT_EQ(65535, pm_trace_get_traceback_limit());
    // Another mode needs a stop first.
    errno = 0;
    EXPECT_EQ(-1, pm_trace_start_sampling(1, 4096));
    EXPECT_EQ(EBUSY, errno);
    pm_trace_stop();
    EXPECT_FALSE(pm_trace_is_tracing());
    EXPECT_EQ(0, pm_trace_get_traceback_limit());
}

TEST_F(TraceTest, HooksEveryDomainAndStopPutsTheAllocatorsBack) {
    GilScope gil;
    pm_allocator before[PM_DOMAIN_COUNT], during[PM_DOMAIN_COUNT], after[PM_DOMAIN_COUNT];
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) ASSERT_EQ(0, pm_get_allocator(pm_domain(d), &before[d]));
    ASSERT_EQ(0, pm_trace_start(1));
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        ASSERT_EQ(0, pm_get_allocator(pm_domain(d), &during[d]));
        EXPECT_FALSE(SameAllocator(before[d], during[d])) << "domain " << d;
    }
    EXPECT_EQ(nullptr, pm_current_allocator_name());  // a hook is installed
    pm_trace_stop();
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        ASSERT_EQ(0, pm_get_allocator(pm_domain(d), &after[d]));
        EXPECT_TRUE(SameAllocator(before[d], after[d])) << "domain " << d;
    }
    EXPECT_STREQ("pymalloc", pm_current_allocator_name());
}

TEST_F(TraceTest, CurrentIsTheSumOfLiveTracedSizesAcrossDomains) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    EXPECT_EQ(0u, Current());
    Frame frame("app.py", 1);
    void *raw = pm_raw_malloc(100);
    void *raw_zeroed = pm_raw_calloc(3, 10);
    void *mem = pm_mem_malloc(200);
    void *obj = pm_obj_malloc(300);
    void *big = pm_obj_malloc(1000);  // pymalloc passes it to raw: traced once, as 1000
    void *empty = pm_obj_malloc(0);   // also through raw
    ASSERT_TRUE(raw && raw_zeroed && mem && obj && big && empty);
    EXPECT_EQ(100u + 30 + 200 + 300 + 1000 + 0, Current());
    mem = pm_mem_realloc(mem, 500);
    ASSERT_NE(nullptr, mem);
    EXPECT_EQ(100u + 30 + 500 + 300 + 1000 + 0, Current());

    // Each block under the domain that made it, and only there.
    pm_trace_frame frames[4];
    EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_OBJ, big, frames, 4));
    EXPECT_EQ(-1, pm_trace_get_traceback(PM_DOMAIN_RAW, big, frames, 4));
    EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_MEM, mem, frames, 4));
    EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_RAW, raw, frames, 4));
    EXPECT_STREQ("app.py", frames[0].filename);
    EXPECT_EQ(1u, frames[0].lineno);

    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    EXPECT_EQ(6u, pm_trace_snapshot_count(snapshot));
    EXPECT_EQ(Current(), pm_trace_snapshot_size(snapshot));
    pm_trace_snapshot_free(snapshot);

    pm_raw_free(raw);
    pm_raw_free(raw_zeroed);
    pm_mem_free(mem);
    pm_obj_free(obj);
    pm_obj_free(big);
    pm_obj_free(empty);
    EXPECT_EQ(0u, Current());
}

TEST_F(TraceTest, TracebacksKeepAtMostNframesMostRecentFirst) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(2));
    Frame outer("main.py", 10);
    Frame middle("lib.py", 20);
    Frame inner("leaf.py", 30);
    void *p = pm_obj_malloc(64);
    pm_trace_frame frames[4] = {};
    ASSERT_EQ(2, pm_trace_get_traceback(PM_DOMAIN_OBJ, p, frames, 4));
    EXPECT_STREQ("leaf.py", frames[0].filename);
    EXPECT_EQ(30u, frames[0].lineno);
    EXPECT_STREQ("lib.py", frames[1].filename);
    EXPECT_EQ(20u, frames[1].lineno);
    pm_obj_free(p);
}

TEST_F(TraceTest, AProviderWithoutFramesGivesTheUnknownFrame) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(5));
    void *p = pm_raw_malloc(8);  // the stack is empty
    pm_trace_frame frame{};
    ASSERT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_RAW, p, &frame, 1));
    EXPECT_STREQ("<unknown>", frame.filename);
    EXPECT_EQ(0u, frame.lineno);
    pm_raw_free(p);
}

// A NULL filename from the provider reads "<unknown>" at its line, on the first capture and
// on later ones, which the thread's traceback cache answers with the frames as given. The
// line is never taken for a native frame's address, even when it looks like one: here it
// is an address inside this test binary, which symbolising would name.
TEST_F(TraceTest, AProviderFrameWithoutAFilenameIsUnknownAtItsLine) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    const size_t line = reinterpret_cast<uintptr_t>(&Current) + 1;
    Frame nameless(nullptr, line);
    void *blocks[] = {pm_obj_malloc(32), pm_obj_malloc(32), pm_mem_malloc(600), pm_raw_malloc(8)};
    pm_domain domains[] = {PM_DOMAIN_OBJ, PM_DOMAIN_OBJ, PM_DOMAIN_MEM, PM_DOMAIN_RAW};
    for (size_t i = 0; i < 4; i++) {
        ASSERT_NE(nullptr, blocks[i]);
        pm_trace_frame frame{};
        ASSERT_EQ(1, pm_trace_get_traceback(domains[i], blocks[i], &frame, 1)) << "block " << i;
        EXPECT_STREQ("<unknown>", frame.filename) << "block " << i;
        EXPECT_EQ(line, frame.lineno) << "block " << i;
    }
    pm_obj_free(blocks[0]);
    pm_obj_free(blocks[1]);
    pm_mem_free(blocks[2]);
    pm_raw_free(blocks[3]);
    EXPECT_EQ(0u, Current());
}

// A provider that allocates through the domains itself: those calls are not traced.
size_t AllocatingProvider(void *, pm_trace_frame *frames, size_t max_frames) {
    void *scratch = pm_raw_malloc(4096);
    pm_raw_free(scratch);
    return trace_test::ProvideFrames(nullptr, frames, max_frames);
}

TEST_F(TraceTest, WhatAFrameProviderAllocatesIsNotTraced) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_set_frame_provider(AllocatingProvider, nullptr));
    ASSERT_EQ(0, pm_trace_start(1));
    void *p = pm_obj_malloc(48);
    EXPECT_EQ(48u, Current());
    pm_obj_free(p);
    EXPECT_EQ(0u, Current());
}

// The null pointer is never traced, and asking about it is harmless even when tables hold
// empty slots: a probe for address 0 once matched an empty slot and read its traceback
// (NULL, or one freed by an earlier clear). Found by fuzz/fuzz_trace.c in CI.
TEST_F(TraceTest, TheNullPointerIsNeverTracedAndAskingIsSafe) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    // Enough tracked addresses that every shard has a table, then most taken out again, so
    // that empty slots both fresh (no traceback) and vacated (a stale one) exist.
    constexpr uintptr_t kBase = 0x10000, kCount = 20000;
    for (uintptr_t i = 0; i < kCount; i++) ASSERT_EQ(0, pm_trace_track(7, kBase + 16 * i, 16));
    for (uintptr_t i = 0; i < kCount; i += 2) ASSERT_EQ(0, pm_trace_untrack(7, kBase + 16 * i));
    pm_trace_clear_traces();  // tracebacks freed; tables emptied
    for (uintptr_t i = 0; i < kCount; i += 3) ASSERT_EQ(0, pm_trace_track(7, kBase + 16 * i, 16));
    for (unsigned domain : {0u, 1u, 2u, 7u}) {
        pm_trace_frame frame;
        EXPECT_EQ(-1, pm_trace_get_traceback(domain, nullptr, &frame, 1)) << domain;
        EXPECT_EQ(0, pm_trace_untrack(domain, 0)) << domain;
    }
    EXPECT_EQ(-1, pm_trace_track(7, 0, 16));
    void *p = pm_raw_realloc(nullptr, 32);  // realloc from NULL: a new block, traced
    ASSERT_NE(nullptr, p);
    pm_trace_frame frame;
    EXPECT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_RAW, p, &frame, 1));
    pm_raw_free(p);
}

// Resident memory of the process, in KiB (VmRSS).
long ResidentKiB() {
    FILE *status = fopen("/proc/self/status", "r");
    if (status == nullptr) return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, status) != nullptr) {
        if (strncmp(line, "VmRSS:", 6) == 0) kib = strtol(line + 6, nullptr, 10);
    }
    fclose(status);
    return kib;
}

// A runtime may install and remove its provider around every piece of work: installing the
// same one again reuses its record. Records are never freed, and each install used to take
// a new one, a page each past the first 64: 5000 installs kept 20 MiB (found by
// fuzz/fuzz_trace.c, which installs its provider per input).
TEST_F(TraceTest, ReinstallingAProviderKeepsNoMoreMemory) {
    for (int i = 0; i < 100; i++) {  // past the static records, if each install took one
        ASSERT_EQ(0, pm_trace_set_frame_provider(trace_test::ProvideFrames, nullptr));
    }
    long before = ResidentKiB();
    ASSERT_GT(before, 0);
    for (int i = 0; i < 5000; i++) {
        ASSERT_EQ(0, pm_trace_set_frame_provider(trace_test::ProvideFrames, nullptr));
        ASSERT_EQ(0, pm_trace_set_frame_provider(nullptr, nullptr));
    }
    EXPECT_LT(ResidentKiB() - before, 2048);
}

// ---- native stacks ----------------------------------------------------------------------

__attribute__((noinline)) void *AllocateFromHere(size_t size) {
    void *p = pm_raw_malloc(size);
    __asm__ volatile("" ::: "memory");  // not a tail call: this frame stays on the stack
    return p;
}

TEST_F(TraceTest, NativeTracebacksStartAtTheCallerOfTheDomain) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_set_frame_provider(nullptr, nullptr));
    ASSERT_EQ(0, pm_trace_start(3));
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        for (int op = 0; op < 3; op++) {
            EXPECT_GE(pm_trace_test_native_skip(pm_domain(d), op), 1) << d << "/" << op;
        }
    }
    void *p = AllocateFromHere(24);
    pm_trace_frame frames[3] = {};
    ASSERT_GE(pm_trace_get_traceback(PM_DOMAIN_RAW, p, frames, 3), 1);
    // The most recent frame is a return address inside AllocateFromHere: the object file
    // that holds it, and its offset there.
    Dl_info info;
    ASSERT_NE(0, dladdr(reinterpret_cast<void *>(&AllocateFromHere), &info));
    EXPECT_STREQ(info.dli_fname, frames[0].filename);
    uintptr_t function = reinterpret_cast<uintptr_t>(&AllocateFromHere) -
                         reinterpret_cast<uintptr_t>(info.dli_fbase);
    EXPECT_GT(frames[0].lineno, function);
    EXPECT_LT(frames[0].lineno, function + 256);
    pm_raw_free(p);
}

// Every domain, operation and size class of path: pymalloc's small blocks (kept with their
// trace in the block while tracing everything over pymalloc in GIL mode), its large ones
// (from the raw domain, traced in the table), a realloc that moves a block. Each must start
// at the caller, whatever route led to the capture.
__attribute__((noinline)) void *AllocateThrough(int domain, int op, void *old, size_t size)
    PM_GIL_REQUIRED {
    void *p = nullptr;
    switch (domain * 3 + op) {
    case 0: p = pm_raw_malloc(size); break;
    case 1: p = pm_raw_calloc(1, size); break;
    case 2: p = pm_raw_realloc(old, size); break;
    case 3: p = pm_mem_malloc(size); break;
    case 4: p = pm_mem_calloc(1, size); break;
    case 5: p = pm_mem_realloc(old, size); break;
    case 6: p = pm_obj_malloc(size); break;
    case 7: p = pm_obj_calloc(1, size); break;
    default: p = pm_obj_realloc(old, size); break;
    }
    __asm__ volatile("" ::: "memory");  // not a tail call: this frame stays on the stack
    return p;
}

void FreeIn(int domain, void *p) PM_GIL_REQUIRED {
    if (domain == PM_DOMAIN_RAW) {
        pm_raw_free(p);
    } else if (domain == PM_DOMAIN_MEM) {
        pm_mem_free(p);
    } else {
        pm_obj_free(p);
    }
}

TEST_F(TraceTest, NativeTracebacksStartAtTheCallerOnEveryRoute) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_set_frame_provider(nullptr, nullptr));
    ASSERT_EQ(0, pm_trace_start(2));
    Dl_info info;
    ASSERT_NE(0, dladdr(reinterpret_cast<void *>(&AllocateThrough), &info));
    uintptr_t function = reinterpret_cast<uintptr_t>(&AllocateThrough) -
                         reinterpret_cast<uintptr_t>(info.dli_fbase);
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        for (int op = 0; op < 3; op++) {
            for (size_t size : {size_t(24), size_t(2000)}) {
                for (bool moving : {false, true}) {
                    if (moving && op != 2) continue;
                    // A realloc that moves: from a block of another size class.
                    void *old = moving ? AllocateThrough(d, 0, nullptr, size / 2 + 100) : nullptr;
                    void *p = AllocateThrough(d, op, old, size);
                    ASSERT_NE(nullptr, p);
                    pm_trace_frame frames[2] = {};
                    ASSERT_GE(pm_trace_get_traceback(pm_domain(d), p, frames, 2), 1);
                    EXPECT_STREQ(info.dli_fname, frames[0].filename)
                        << d << "/" << op << "/" << size << "/" << moving;
                    EXPECT_GT(frames[0].lineno, function) << d << "/" << op << "/" << size;
                    EXPECT_LT(frames[0].lineno, function + 512)
                        << d << "/" << op << "/" << size << "/" << moving;
                    FreeIn(d, p);
                }
            }
        }
    }
}

// ---- blocks across start and stop ---------------------------------------------------------

TEST_F(TraceTest, BlocksCrossTheStartAndTheStopOfTracing) {
    GilScope gil;
    void *before = pm_obj_malloc(100);
    void *before_raw = pm_raw_malloc(5000);
    ASSERT_EQ(0, pm_trace_start(1));
    void *during = pm_obj_malloc(200);
    void *during_big = pm_obj_malloc(2000);
    EXPECT_EQ(2200u, Current());
    pm_obj_free(before);  // untraced: nothing to take out
    before_raw = pm_raw_realloc(before_raw, 6000);  // now traced, as a realloc's result is
    ASSERT_NE(nullptr, before_raw);
    EXPECT_EQ(8200u, Current());
    pm_trace_stop();
    // The hooks added no header: whatever is installed now frees and resizes them.
    during_big = pm_obj_realloc(during_big, 3000);
    ASSERT_NE(nullptr, during_big);
    pm_obj_free(during);
    pm_obj_free(during_big);
    pm_raw_free(before_raw);
    EXPECT_EQ(nullptr, pm_heap_check());
}

// A wrapper a user installs over the tracer's hook, passing everything down.
pm_allocator g_below;
void *UserMalloc(void *, size_t n) { return g_below.malloc(g_below.ctx, n); }
void *UserCalloc(void *, size_t n, size_t e) { return g_below.calloc(g_below.ctx, n, e); }
void *UserRealloc(void *, void *p, size_t n) { return g_below.realloc(g_below.ctx, p, n); }
void UserFree(void *, void *p) { g_below.free(g_below.ctx, p); }

TEST_F(TraceTest, AHookWrappedBySomeoneElseStaysAndPassesThrough) {
    GilScope gil;
    pm_allocator original;
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &original));
    ASSERT_EQ(0, pm_trace_start(1));
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &g_below));
    pm_allocator user = {nullptr, UserMalloc, UserCalloc, UserRealloc, UserFree};
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_RAW, &user));
    void *p = pm_raw_malloc(10);
    EXPECT_EQ(10u, Current());  // through the user's wrapper, then traced
    pm_trace_stop();
    pm_allocator now;
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &now));
    EXPECT_TRUE(SameAllocator(user, now)) << "the user's wrapper must not be torn out";
    pm_raw_free(p);
    void *q = pm_raw_malloc(20);  // the buried hook passes it through
    pm_raw_free(q);
    // The user unwinds; a new session reuses the hook on top and stop then unwinds it too.
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_RAW, &g_below));
    ASSERT_EQ(0, pm_trace_start(1));
    pm_trace_stop();
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &now));
    EXPECT_TRUE(SameAllocator(original, now));
}

// ---- peak, reset, clear --------------------------------------------------------------------

TEST_F(TraceTest, PeakFollowsTheHighestTracedMemoryAndResetsToCurrent) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    void *big = pm_raw_malloc(1 << 20);
    pm_raw_free(big);
    EXPECT_EQ(0u, Current());
    EXPECT_EQ(size_t{1} << 20, Peak());  // one block of at least 8 KiB: exact
    pm_trace_reset_peak();
    EXPECT_EQ(0u, Peak());
    void *small = pm_mem_malloc(100);
    EXPECT_EQ(100u, Peak());  // a query folds in the current value
    // Many small blocks: the peak may miss up to 16 KiB of a transient rise (one thread:
    // 8 KiB of its table traces, 8 KiB of the records in blocks).
    std::vector<void *> blocks;
    for (int i = 0; i < 256; i++) blocks.push_back(pm_mem_malloc(256));
    for (void *b : blocks) pm_mem_free(b);
    EXPECT_GE(Peak(), 100u + 256 * 256 - 16 * 1024);
    EXPECT_LE(Peak(), 100u + 256 * 256);
    pm_mem_free(small);
}

TEST_F(TraceTest, ClearForgetsEveryTraceAndTracingGoesOn) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    void *old_block = pm_obj_malloc(64);
    pm_trace_clear_traces();
    EXPECT_TRUE(pm_trace_is_tracing());
    EXPECT_EQ(0u, Current());
    EXPECT_EQ(0u, Peak());
    pm_trace_frame frame;
    EXPECT_EQ(-1, pm_trace_get_traceback(PM_DOMAIN_OBJ, old_block, &frame, 1));
    void *fresh = pm_obj_malloc(32);
    EXPECT_EQ(32u, Current());
    pm_obj_free(old_block);  // untraced now: the count does not move
    EXPECT_EQ(32u, Current());
    pm_obj_free(fresh);
    EXPECT_EQ(0u, Current());
}

// ---- PyTraceMalloc_Track / Untrack -----------------------------------------------------------

TEST_F(TraceTest, TrackAndUntrackReturnCPythonsCodes) {
    GilScope gil;
    EXPECT_EQ(-2, PyTraceMalloc_Track(7, 0x1000, 100));  // not tracing
    EXPECT_EQ(-2, PyTraceMalloc_Untrack(7, 0x1000));
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("gpu.py", 5);
    EXPECT_EQ(0, PyTraceMalloc_Track(7, 0x1000, 100));
    EXPECT_EQ(100u, Current());
    EXPECT_EQ(0, PyTraceMalloc_Track(7, 0x1000, 40));  // replaces the trace
    EXPECT_EQ(40u, Current());
    EXPECT_EQ(0, PyTraceMalloc_Track(8, 0x1000, 1));  // another domain, another trace
    EXPECT_EQ(41u, Current());
    pm_trace_frame f;
    ASSERT_EQ(1, pm_trace_get_traceback(7, reinterpret_cast<void *>(0x1000), &f, 1));
    EXPECT_STREQ("gpu.py", f.filename);
    EXPECT_EQ(0, PyTraceMalloc_Untrack(7, 0x1000));
    EXPECT_EQ(1u, Current());
    EXPECT_EQ(0, PyTraceMalloc_Untrack(7, 0x1000));  // unknown: fine
    EXPECT_EQ(0, PyTraceMalloc_Untrack(8, 0x1000));
    EXPECT_EQ(0u, Current());
    EXPECT_EQ(-1, PyTraceMalloc_Track(7, 0, 10));  // nothing to key a trace on
    pm_trace_stop();
    ASSERT_EQ(0, pm_trace_start(1));  // fresh session: no tables until first use
    pm_trace_test_fail_memory(1);
    EXPECT_EQ(-1, PyTraceMalloc_Track(9, 0x2000, 10));  // no memory: cannot store
    EXPECT_EQ(0u, Current());
}

// ---- failure ------------------------------------------------------------------------------------

TEST_F(TraceTest, AFreshAllocationWhoseTraceCannotBeStoredFailsCleanly) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));  // tables are made on first use
    size_t blocks_before = pm_allocated_blocks();
    pm_trace_test_fail_memory(1);
    void *(*const allocators[])(size_t) = {pm_raw_malloc, pm_mem_malloc, pm_obj_malloc};
    for (auto allocate : allocators) {
        errno = 0;
        EXPECT_EQ(nullptr, allocate(100));
        EXPECT_EQ(ENOMEM, errno);
    }
    errno = 0;
    EXPECT_EQ(nullptr, pm_obj_calloc(4, 4));
    EXPECT_EQ(ENOMEM, errno);
    EXPECT_EQ(blocks_before, pm_allocated_blocks()) << "the blocks went back";
    EXPECT_EQ(0u, Current());
    pm_trace_test_fail_memory(0);
    void *p = pm_obj_malloc(100);
    ASSERT_NE(nullptr, p);
    EXPECT_EQ(100u, Current());
    pm_obj_free(p);
}

TEST_F(TraceTest, FailuresNeverCorruptTheTables) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    std::vector<void *> live;
    size_t live_bytes = 0, failures = 0;
    for (int i = 0; i < 40000; i++) {
        // Memory fails in stretches, so that table growth fails at different fill levels
        // (each shard's table grows at 96, 192, 384... traces).
        pm_trace_test_fail_memory((i / 2000) % 2);
        size_t size = 1 + (size_t(i) * 37) % 700;
        Frame frame("loop.py", size_t(i % 50));  // new tracebacks need memory too
        void *p = pm_obj_malloc(size);
        if (p == nullptr) {
            failures++;
            continue;
        }
        live.push_back(p);
        live_bytes += size;
    }
    pm_trace_test_fail_memory(0);
    EXPECT_GT(failures, 0u);
    EXPECT_EQ(live_bytes, Current());
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    EXPECT_EQ(live.size(), pm_trace_snapshot_count(snapshot));
    pm_trace_snapshot_free(snapshot);
    for (void *p : live) pm_obj_free(p);
    EXPECT_EQ(0u, Current());
    EXPECT_EQ(nullptr, pm_heap_check());
}

TEST_F(TraceTest, AFailedReallocKeepsTheOldBlockAndItsTrace) {
    GilScope gil;
    pm_failing_allocator failing;
    ASSERT_EQ(0, pm_failing_allocator_install(&failing, PM_DOMAIN_RAW));
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("resize.py", 3);
    void *p = pm_raw_malloc(100);
    ASSERT_NE(nullptr, p);
    pm_fail_nth(&failing.policy, 1);
    EXPECT_EQ(nullptr, pm_raw_realloc(p, 200));
    EXPECT_EQ(100u, Current());
    pm_trace_frame f;
    ASSERT_EQ(1, pm_trace_get_traceback(PM_DOMAIN_RAW, p, &f, 1));
    EXPECT_STREQ("resize.py", f.filename);
    pm_raw_free(p);
    EXPECT_EQ(0u, Current());
    pm_trace_stop();
    ASSERT_EQ(0, pm_failing_allocator_uninstall(&failing));
}

TEST_F(TraceTest, AReallocWhoseNewTraceCannotBeStoredKeepsTheBlockUntraced) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    char *p = static_cast<char *>(pm_raw_malloc(100));
    ASSERT_NE(nullptr, p);
    memset(p, 'a', 100);
    pm_trace_clear_traces();  // frees the tracebacks' memory: a new one needs more
    size_t lost = pm_trace_lost_traces();
    pm_trace_test_fail_memory(1);
    Frame frame("grow.py", 9);
    char *q = static_cast<char *>(pm_raw_realloc(p, 5000));
    pm_trace_test_fail_memory(0);
    ASSERT_NE(nullptr, q) << "CPython aborts here; we keep the block";
    EXPECT_EQ('a', q[99]);
    memset(q, 'b', 5000);
    EXPECT_EQ(lost + 1, pm_trace_lost_traces());
    EXPECT_EQ(0u, Current());
    pm_raw_free(q);
}

}  // namespace
