// tests/trace_snapshot_test.cc — snapshots (alloc/trace_snapshot.c): grouping by
// traceback, by file and line, by file; the order tracemalloc gives; the difference of two
// snapshots; the text (tracemalloc's own wording, checked against CPython 3.11's
// Statistic.__str__ and _format_size) and JSON forms.

#include <errno.h>

#include <string>
#include <vector>

#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"
#include "tests/trace_test_support.h"

namespace {

using trace_test::Frame;

class SnapshotTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_EQ(0, pm_trace_set_frame_provider(trace_test::ProvideFrames, nullptr));
    }
    void TearDown() override {
        GilScope gil;
        for (void *p : blocks_) pm_obj_free(p);
        pm_trace_stop();
        ASSERT_EQ(0, pm_trace_set_frame_provider(nullptr, nullptr));
    }
    void Allocate(size_t size, int times = 1) PM_GIL_REQUIRED {
        for (int i = 0; i < times; i++) {
            void *p = pm_obj_malloc(size);
            ASSERT_NE(nullptr, p);
            blocks_.push_back(p);
        }
    }
    std::vector<void *> blocks_;
};

std::string Text(const pm_trace_stats *stats, size_t limit = 0) {
    size_t needed = pm_trace_stats_format(stats, limit, nullptr, 0);
    std::string text(needed + 1, '\0');
    EXPECT_EQ(needed, pm_trace_stats_format(stats, limit, &text[0], text.size()));
    text.resize(needed);
    return text;
}

std::string Json(const pm_trace_stats *stats, size_t limit = 0) {
    size_t needed = pm_trace_stats_json(stats, limit, nullptr, 0);
    std::string text(needed + 1, '\0');
    EXPECT_EQ(needed, pm_trace_stats_json(stats, limit, &text[0], text.size()));
    text.resize(needed);
    return text;
}

// The statistics of a snapshot taken now, as text.
std::string SnapshotText(pm_trace_group by) {
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    EXPECT_NE(nullptr, snapshot);
    pm_trace_stats *stats = pm_trace_snapshot_statistics(snapshot, by);
    EXPECT_NE(nullptr, stats);
    std::string text = Text(stats);
    pm_trace_stats_free(stats);
    pm_trace_snapshot_free(snapshot);
    return text;
}

TEST_F(SnapshotTest, NeedsTracing) {
    errno = 0;
    EXPECT_EQ(nullptr, pm_trace_take_snapshot());
    EXPECT_EQ(EINVAL, errno);
}

TEST_F(SnapshotTest, StatisticsGroupByLineByFileAndByTracebackLargestFirst) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(2));
    {
        Frame main_frame("main.py", 1);
        {
            Frame f("a.py", 1);
            Allocate(100, 3);
        }
        {
            Frame f("a.py", 2);
            Allocate(1000);
        }
        {
            Frame f("b.py", 5);
            Allocate(10, 2);
        }
    }
    {
        Frame other_caller("other.py", 7);
        Frame f("a.py", 1);  // same line, another traceback
        Allocate(50);
    }
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    EXPECT_EQ(7u, pm_trace_snapshot_count(snapshot));
    EXPECT_EQ(1370u, pm_trace_snapshot_size(snapshot));

    pm_trace_stats *by_line = pm_trace_snapshot_statistics(snapshot, PM_TRACE_BY_LINENO);
    ASSERT_NE(nullptr, by_line);
    EXPECT_EQ("a.py:2: size=1000 B, count=1, average=1000 B\n"
              "a.py:1: size=350 B, count=4, average=88 B\n"
              "b.py:5: size=20 B, count=2, average=10 B\n",
              Text(by_line));
    EXPECT_EQ("a.py:2: size=1000 B, count=1, average=1000 B\n", Text(by_line, 1));

    pm_trace_stats *by_file = pm_trace_snapshot_statistics(snapshot, PM_TRACE_BY_FILENAME);
    ASSERT_NE(nullptr, by_file);
    EXPECT_EQ("a.py:0: size=1350 B, count=5, average=270 B\n"
              "b.py:0: size=20 B, count=2, average=10 B\n",
              Text(by_file));

    pm_trace_stats *by_traceback = pm_trace_snapshot_statistics(snapshot, PM_TRACE_BY_TRACEBACK);
    ASSERT_NE(nullptr, by_traceback);
    ASSERT_EQ(4u, by_traceback->count);
    const pm_trace_stat &second = by_traceback->items[1];
    EXPECT_EQ(300u, second.size);
    EXPECT_EQ(3u, second.count);
    ASSERT_EQ(2u, second.nframes);
    EXPECT_STREQ("a.py", second.frames[0].filename);
    EXPECT_STREQ("main.py", second.frames[1].filename);
    EXPECT_EQ(50u, by_traceback->items[2].size);
    EXPECT_STREQ("other.py", by_traceback->items[2].frames[1].filename);

    pm_trace_stats_free(by_line);
    pm_trace_stats_free(by_file);
    pm_trace_stats_free(by_traceback);
    pm_trace_snapshot_free(snapshot);
}

TEST_F(SnapshotTest, FileNamesAreComparedByContent) {
    GilScope gil;
    static const char first[] = "same.py";
    static const char second[] = "same.py";  // another pointer, the same name
    ASSERT_NE(static_cast<const void *>(first), static_cast<const void *>(second));
    ASSERT_EQ(0, pm_trace_start(1));
    {
        Frame f(first, 3);
        Allocate(16);
    }
    {
        Frame f(second, 3);
        Allocate(16);
    }
    EXPECT_EQ("same.py:3: size=32 B, count=2, average=16 B\n", SnapshotText(PM_TRACE_BY_TRACEBACK));
}

TEST_F(SnapshotTest, SizesPrintInTracemallocsUnits) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    {
        Frame f("units.py", 1);
        Allocate(500, 41);  // 20500 B: "20.0 KiB", as tracemalloc prints it
    }
    {
        Frame f("units.py", 2);
        Allocate(10239);  // under 10 KiB stays in bytes
    }
    EXPECT_EQ("units.py:1: size=20.0 KiB, count=41, average=500 B\n"
              "units.py:2: size=10239 B, count=1, average=10239 B\n",
              SnapshotText(PM_TRACE_BY_LINENO));
}

TEST_F(SnapshotTest, CompareShowsWhatGrewShrankAppearedAndVanished) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    void *vanishing;
    {
        Frame f("gone.py", 4);
        vanishing = pm_obj_malloc(64);
    }
    {
        Frame f("grow.py", 1);
        Allocate(100, 3);
    }
    pm_trace_snapshot *old = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, old);
    pm_obj_free(vanishing);
    {
        Frame f("grow.py", 1);
        Allocate(100, 2);
    }
    {
        Frame f("new.py", 8);
        Allocate(40);
    }
    pm_trace_snapshot *now = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, now);
    pm_trace_stats *diff = pm_trace_snapshot_compare(now, old, PM_TRACE_BY_LINENO);
    ASSERT_NE(nullptr, diff);
    EXPECT_EQ(1, diff->is_diff);
    EXPECT_EQ("grow.py:1: size=500 B (+200 B), count=5 (+2), average=100 B\n"
              "gone.py:4: size=0 B (-64 B), count=0 (-1)\n"
              "new.py:8: size=40 B (+40 B), count=1 (+1), average=40 B\n",
              Text(diff));
    EXPECT_EQ("[{\"file\":\"grow.py\",\"line\":1,\"size\":500,\"count\":5,\"size_diff\":200,"
              "\"count_diff\":2,\"traceback\":[{\"file\":\"grow.py\",\"line\":1}]}]",
              Json(diff, 1));
    pm_trace_stats_free(diff);
    pm_trace_snapshot_free(now);
    pm_trace_snapshot_free(old);
}

TEST_F(SnapshotTest, JsonEscapesFileNames) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    {
        Frame f("we\"ird\\na\tme.py", 2);
        Allocate(8);
    }
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    pm_trace_stats *stats = pm_trace_snapshot_statistics(snapshot, PM_TRACE_BY_FILENAME);
    ASSERT_NE(nullptr, stats);
    EXPECT_EQ("[{\"file\":\"we\\\"ird\\\\na\\u0009me.py\",\"line\":0,\"size\":8,\"count\":1,"
              "\"traceback\":[{\"file\":\"we\\\"ird\\\\na\\u0009me.py\",\"line\":0}]}]",
              Json(stats));
    // A short buffer gets a truncated, terminated prefix and the full length.
    char small[8];
    EXPECT_EQ(Json(stats).size(), pm_trace_stats_json(stats, 0, small, sizeof small));
    EXPECT_EQ(std::string("[{\"file"), std::string(small));
    pm_trace_stats_free(stats);
    pm_trace_snapshot_free(snapshot);
}

TEST_F(SnapshotTest, ASnapshotOutlivesTheTracesItCopied) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    {
        Frame f("kept.py", 12);
        Allocate(24, 2);
    }
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    pm_trace_stop();  // tracebacks freed; the snapshot has its own copies
    pm_trace_stats *stats = pm_trace_snapshot_statistics(snapshot, PM_TRACE_BY_LINENO);
    ASSERT_NE(nullptr, stats);
    EXPECT_EQ("kept.py:12: size=48 B, count=2, average=24 B\n", Text(stats));
    pm_trace_stats_free(stats);
    pm_trace_snapshot_free(snapshot);
}

TEST_F(SnapshotTest, BadArgumentsAreRefused) {
    errno = 0;
    EXPECT_EQ(nullptr, pm_trace_snapshot_statistics(nullptr, PM_TRACE_BY_LINENO));
    EXPECT_EQ(EINVAL, errno);
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    errno = 0;
    EXPECT_EQ(nullptr, pm_trace_snapshot_statistics(snapshot, static_cast<pm_trace_group>(9)));
    EXPECT_EQ(EINVAL, errno);
    errno = 0;
    EXPECT_EQ(nullptr, pm_trace_snapshot_compare(snapshot, nullptr, PM_TRACE_BY_FILENAME));
    EXPECT_EQ(EINVAL, errno);
    pm_trace_snapshot_free(snapshot);
}

}  // namespace
