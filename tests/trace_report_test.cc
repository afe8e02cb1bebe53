// tests/trace_report_test.cc — the debug hooks' block report with tracing on: CPython's
// _PyMem_DumpTraceback text in place of "Enable tracemalloc to get the memory block
// allocation traceback":
//
//   Memory block allocated at (most recent call first):
//     File "script.py", line 10
//     File "main.py", line 3
//   <empty line>
//
// nothing at all for a block tracing does not know, and the "Enable tracemalloc" line again
// once tracing has stopped. Death tests in gtest's "threadsafe" style: the child re-runs
// the test body, hooks and tracing included, up to the statement that must die.

#include <stdint.h>

#include <string>

#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"
#include "tests/trace_test_support.h"

namespace {

using trace_test::Frame;

class TraceReportDeathTest : public ::testing::Test {
  protected:
    void SetUp() override {
        GTEST_FLAG_SET(death_test_style, "threadsafe");
        GilScope gil;
        ASSERT_EQ(0, pm_setup_allocators("pymalloc_debug"));
        ASSERT_EQ(0, pm_trace_set_frame_provider(trace_test::ProvideFrames, nullptr));
    }
    void TearDown() override {
        GilScope gil;
        pm_trace_stop();
        ASSERT_EQ(0, pm_trace_set_frame_provider(nullptr, nullptr));
        ASSERT_EQ(0, pm_setup_allocators("pymalloc"));
    }
};

// The end of the report: the data line, then what tracing says, then the fatal error.
std::string Tail(const std::string &traceback, const std::string &fatal) {
    return "    Data at p: [0-9a-f. ]+\n\n" + traceback + "Fatal Python error: " + fatal + "\n$";
}

const char kScriptTraceback[] =
    "Memory block allocated at \\(most recent call first\\):\n"
    "  File \"script\\.py\", line 10\n"
    "  File \"main\\.py\", line 3\n"
    "\n";

void OverflowAndFree(uint8_t *p, size_t n) PM_GIL_REQUIRED {
    p[n] = 'x';
    pm_obj_free(p);
}

void OverflowAndRealloc(uint8_t *p, size_t n) PM_GIL_REQUIRED {
    p[n] = 'x';
    (void)pm_obj_realloc(p, n * 2);
}

uint8_t *AllocateIn(const char *file, size_t line, size_t n) PM_GIL_REQUIRED {
    Frame outer("main.py", 3);
    Frame inner(file, line);
    return static_cast<uint8_t *>(pm_obj_malloc(n));
}

TEST_F(TraceReportDeathTest, AFreedTracedBlockShowsWhereItWasAllocated) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(5));
    uint8_t *p = AllocateIn("script.py", 10, 16);
    EXPECT_DEATH(OverflowAndFree(p, 16),
                 Tail(kScriptTraceback, "_PyMem_DebugRawFree: bad trailing pad byte"));
    pm_obj_free(p);
}

TEST_F(TraceReportDeathTest, AReallocatedTracedBlockShowsWhereItWasAllocated) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(5));
    uint8_t *p = AllocateIn("script.py", 10, 24);
    EXPECT_DEATH(OverflowAndRealloc(p, 24),
                 Tail(kScriptTraceback, "_PyMem_DebugRawRealloc: bad trailing pad byte"));
    pm_obj_free(p);
}

TEST_F(TraceReportDeathTest, TheTracebackHasAtMostNframesLines) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    uint8_t *p = AllocateIn("script.py", 10, 16);
    EXPECT_DEATH(OverflowAndFree(p, 16),
                 Tail("Memory block allocated at \\(most recent call first\\):\n"
                      "  File \"script\\.py\", line 10\n\n",
                      "_PyMem_DebugRawFree: bad trailing pad byte"));
    pm_obj_free(p);
}

TEST_F(TraceReportDeathTest, ABlockTracingDoesNotKnowPrintsNothing) {
    GilScope gil;
    uint8_t *p = static_cast<uint8_t *>(pm_obj_malloc(16));  // before tracing: untraced
    ASSERT_EQ(0, pm_trace_start(5));
    EXPECT_DEATH(OverflowAndFree(p, 16), Tail("", "_PyMem_DebugRawFree: bad trailing pad byte"));
    pm_obj_free(p);
}

TEST_F(TraceReportDeathTest, AfterStopTheReportAsksForTracemallocAgain) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(5));
    uint8_t *p = AllocateIn("script.py", 10, 16);
    pm_trace_stop();
    EXPECT_DEATH(OverflowAndFree(p, 16),
                 Tail("Enable tracemalloc to get the memory block allocation traceback\n\n",
                      "_PyMem_DebugRawFree: bad trailing pad byte"));
    pm_obj_free(p);
}

TEST_F(TraceReportDeathTest, NativeFramesNameTheObjectFileAndOffset) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_set_frame_provider(nullptr, nullptr));
    ASSERT_EQ(0, pm_trace_start(1));
    uint8_t *p = static_cast<uint8_t *>(pm_obj_malloc(16));
    EXPECT_DEATH(OverflowAndFree(p, 16),
                 Tail("Memory block allocated at \\(most recent call first\\):\n"
                      "  File \"[^\"]*trace_report_test\", line [0-9]+\n\n",
                      "_PyMem_DebugRawFree: bad trailing pad byte"));
    pm_obj_free(p);
}

}  // namespace
