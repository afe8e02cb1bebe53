// tests/trace_in_block_test.cc — records in blocks (alloc/trace.c): while a session traces
// every call of the mem and object domains over pymalloc in GIL mode, a block of up to 480
// bytes comes from the traced heap with its trace in its first 16 bytes, and one of 481 to
// 512 bytes from the traced heap's largest class, whose records sit beside its pools. What
// users rely on
// is unchanged: exact current bytes, tracebacks, snapshots, track/untrack, realloc that keeps
// contents, clear and stop, allocation failure; and the heap stays
// consistent whatever the session does. White-box where it matters: which heap served a
// block (pm_traced_heap), so that the tests fail if the path under test is not taken.
//
// The mem and object domains and pm_trace_start require the GIL: each test holds it.

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "alloc/internal/pymalloc.h"
#include "alloc/internal/trace.h"
#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"
#include "tests/trace_test_support.h"

namespace {

using trace_test::Current;
using trace_test::Frame;

using TraceInBlockTest = trace_test::ProvidedFramesTest;

bool FromTracedHeap(const void *p) {
    const pm_pool *pool = pm_pool_of(p);
    return pool != nullptr && pm_pool_owner(pool) == &pm_traced_heap;
}

// The most recent frame's line of p's trace in `domain`, or -1 when untraced there.
long TracedLine(pm_domain domain, const void *p) {
    pm_trace_frame frame = {nullptr, 0};
    int n = pm_trace_get_traceback(domain, p, &frame, 1);
    return n < 1 ? -1 : (long)frame.lineno;
}

void ExpectHeapConsistent() PM_GIL_REQUIRED {
    const char *problem = pm_heap_check();
    EXPECT_EQ(nullptr, problem) << problem;
}

// One link of a chain of reallocs in the object domain: p, whose first `kept` bytes are
// (uint8_t)index, to `size` bytes from line `line` of realloc.py. Checks that the bytes up
// to the smaller size are kept and that the trace follows (the size counted, the line),
// then writes the pattern into the rest. Returns the new block (p if the realloc failed).
uint8_t *ReallocKeepingContents(uint8_t *p, size_t kept, size_t size, long line)
    PM_GIL_REQUIRED {
    Frame frame("realloc.py", line);
    auto *q = static_cast<uint8_t *>(pm_obj_realloc(p, size));
    EXPECT_NE(nullptr, q) << size;
    if (q == nullptr) return p;
    size_t common = kept < size ? kept : size;
    for (size_t j = 0; j < common; j++) {
        if (q[j] != (uint8_t)j) {
            ADD_FAILURE() << "byte " << j << " lost by a realloc to " << size;
            break;
        }
    }
    for (size_t j = common; j < size; j++) q[j] = (uint8_t)j;
    EXPECT_EQ(size, Current()) << size;
    EXPECT_EQ(line, TracedLine(PM_DOMAIN_OBJ, q)) << size;
    return q;
}

// Up to 480 bytes, the record is in front of the caller's bytes; 481 to 512 leave no room
// for it in the largest class, whose pools hand out the block itself and keep the records
// beside. Larger blocks come from the raw domain, traced in the table.
TEST_F(TraceInBlockTest, SmallBlocksCarryTheirTraceAndLargeOnesDoNot) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    const size_t sizes[] = {0,   1,   15,  16,  17,  100, 480, 481,
                            490, 495, 496, 497, 505, 512, 513, 4096};
    std::vector<void *> blocks;
    size_t sum = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        Frame frame("sizes.py", 100 + i);
        void *p = i % 2 ? pm_mem_malloc(sizes[i]) : pm_obj_malloc(sizes[i]);
        ASSERT_NE(nullptr, p);
        EXPECT_EQ(0u, (uintptr_t)p % 16) << sizes[i];
        EXPECT_EQ(sizes[i] <= PM_TRACED_MAX_REQUEST, FromTracedHeap(p)) << sizes[i];
        if (sizes[i] > PM_TRACED_MAX_IN_BLOCK && sizes[i] <= PM_TRACED_MAX_REQUEST) {
            const pm_pool *pool = pm_pool_of(p);
            EXPECT_EQ(PM_TRACED_CLASS_BESIDE, pool->size_class) << sizes[i];
            EXPECT_EQ(0u, ((uintptr_t)p - pool->memory) % PM_SMALL_REQUEST_THRESHOLD) << sizes[i];
        }
        memset(p, 0xA5, sizes[i]);  // every byte asked for is the caller's (ASan checks)
        pm_domain domain = i % 2 ? PM_DOMAIN_MEM : PM_DOMAIN_OBJ;
        pm_domain other = i % 2 ? PM_DOMAIN_OBJ : PM_DOMAIN_MEM;
        EXPECT_EQ((long)(100 + i), TracedLine(domain, p)) << sizes[i];
        EXPECT_EQ(-1, TracedLine(other, p)) << "traces are keyed by domain";
        sum += sizes[i];
        EXPECT_EQ(sum, Current());
        blocks.push_back(p);
    }
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    EXPECT_EQ(sum, pm_trace_snapshot_size(snapshot));
    EXPECT_EQ(blocks.size(), pm_trace_snapshot_count(snapshot));
    pm_trace_snapshot_free(snapshot);
    ExpectHeapConsistent();
    for (size_t i = 0; i < blocks.size(); i++) {
        if (i % 2) {
            pm_mem_free(blocks[i]);
        } else {
            pm_obj_free(blocks[i]);
        }
        sum -= sizes[i];
        EXPECT_EQ(sum, Current());
    }
    ExpectHeapConsistent();
}

TEST_F(TraceInBlockTest, CallocZeroesAndReallocKeepsContentsAndRetraces) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    uint8_t *p;
    {
        Frame frame("calloc.py", 1);
        p = static_cast<uint8_t *>(pm_obj_calloc(10, 30));
    }
    ASSERT_NE(nullptr, p);
    ASSERT_TRUE(FromTracedHeap(p));
    for (size_t i = 0; i < 300; i++) ASSERT_EQ(0, p[i]) << i;
    for (size_t i = 0; i < 300; i++) p[i] = (uint8_t)i;
    EXPECT_EQ(300u, Current());
    // Within the block's class (300 + 16 bytes: class of 320), to other classes, into,
    // within and out of the class whose records sit beside (481-512 bytes), to the raw
    // domain, and back: contents kept up to the smaller size, the trace follows. A traced
    // heap's block stays in place exactly when its class does.
    enum placement { MOVES, STAYS, RAW };
    const struct {
        size_t size;
        placement where;
    } steps[] = {{290, STAYS}, {20, MOVES},  {200, MOVES},  {500, MOVES}, {490, STAYS},
                 {512, STAYS}, {480, MOVES}, {505, MOVES},  {1000, RAW},  {60, RAW},
                 {0, RAW},     {33, RAW}};
    size_t kept = 300;
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        uint8_t *q = ReallocKeepingContents(p, kept, steps[i].size, (long)(10 + i));
        kept = steps[i].size;
        // A block that went to the raw domain stays there, as pymalloc's realloc keeps it.
        EXPECT_EQ(steps[i].where != RAW, FromTracedHeap(q)) << steps[i].size;
        if (steps[i].where != RAW) {
            EXPECT_EQ(steps[i].where == STAYS, q == p) << steps[i].size;
        }
        p = q;
    }
    pm_obj_free(p);
    EXPECT_EQ(0u, Current());
    ExpectHeapConsistent();
}

// realloc takes the old trace out before the new block counts, as with the table: the
// peak never sees both (found by fuzz_trace). The peak is checked when the records' count
// rises 8 KiB above its lowest since the last check, so counting both blocks here would
// cross that line.
TEST_F(TraceInBlockTest, AMovingReallocNeverCountsBothBlocks) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("peak.py", 1);
    pm_trace_reset_peak();
    std::vector<void *> blocks;
    for (int i = 0; i < 20; i++) blocks.push_back(pm_obj_malloc(400));  // 8,000 bytes
    void *moved = pm_obj_realloc(blocks[0], 480);  // another class: the block moves
    ASSERT_NE(nullptr, moved);
    ASSERT_NE(blocks[0], moved);
    blocks[0] = moved;
    EXPECT_EQ(8080u, Current());
    EXPECT_EQ(8080u, trace_test::Peak());
    for (void *p : blocks) pm_obj_free(p);
    EXPECT_EQ(0u, Current());
}

// The peak has two accumulators of growth in GIL mode: the records' count (all threads) and
// each thread's table traces. Each may miss less than 8 KiB, so together less than 16 KiB.
// Records that fall while table traces rise and are checked, then rise again, must set off
// their own check: a trigger that frees did not lower missed 24,000 bytes here (found by
// fuzz_trace).
TEST_F(TraceInBlockTest, ThePeakMissesLessThan16KiBWhenRecordsAndTableTracesTakeTurns) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("turns.py", 1);
    pm_trace_reset_peak();
    std::vector<void *> records, table;
    for (int i = 0; i < 40; i++) records.push_back(pm_obj_malloc(400));
    ASSERT_TRUE(FromTracedHeap(records[0]));
    for (void *p : records) pm_obj_free(p);
    records.clear();
    for (int i = 0; i < 40; i++) table.push_back(pm_raw_malloc(400));  // in the table
    for (int i = 0; i < 41; i++) records.push_back(pm_obj_malloc(400));
    const size_t true_peak = 40 * 400 + 41 * 400;  // not queried: a query checks the peak
    for (void *p : records) pm_obj_free(p);
    for (void *p : table) pm_raw_free(p);
    EXPECT_EQ(0u, Current());
    EXPECT_GT(trace_test::Peak(), true_peak - 16 * 1024);
    EXPECT_LE(trace_test::Peak(), true_peak);
}

TEST_F(TraceInBlockTest, ABlockFromBeforeStartIsTracedWhenReallocated) {
    GilScope gil;
    auto *old = static_cast<uint8_t *>(pm_obj_malloc(64));
    ASSERT_NE(nullptr, old);
    ASSERT_FALSE(FromTracedHeap(old));
    for (size_t i = 0; i < 64; i++) old[i] = (uint8_t)(i * 3);
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("grow.py", 7);
    auto *p = static_cast<uint8_t *>(pm_obj_realloc(old, 64));
    ASSERT_NE(nullptr, p);
    EXPECT_TRUE(FromTracedHeap(p));
    for (size_t i = 0; i < 64; i++) ASSERT_EQ((uint8_t)(i * 3), p[i]) << i;
    EXPECT_EQ(64u, Current());
    EXPECT_EQ(7, TracedLine(PM_DOMAIN_OBJ, p));
    pm_obj_free(p);
    EXPECT_EQ(0u, Current());
}

TEST_F(TraceInBlockTest, ClearAndStopLeaveRecordsThatNoLongerCount) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("clear.py", 1);
    void *a = pm_obj_malloc(40);
    void *b = pm_mem_malloc(50);
    ASSERT_TRUE(FromTracedHeap(a) && FromTracedHeap(b));
    EXPECT_EQ(90u, Current());
    pm_trace_clear_traces();
    EXPECT_EQ(0u, Current());
    EXPECT_EQ(-1, TracedLine(PM_DOMAIN_OBJ, a));
    pm_obj_free(a);  // traced before the clear: no effect on the count
    EXPECT_EQ(0u, Current());
    void *c = pm_obj_malloc(30);
    EXPECT_EQ(30u, Current());
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    EXPECT_EQ(1u, pm_trace_snapshot_count(snapshot));  // c alone; b's record is stale
    pm_trace_snapshot_free(snapshot);
    pm_trace_stop();
    // Blocks of the traced heap outlive the session and are freed as usual.
    pm_mem_free(b);
    void *d = pm_obj_realloc(c, 300);  // after stop, through pymalloc's own realloc
    ASSERT_NE(nullptr, d);
    EXPECT_FALSE(FromTracedHeap(d));
    ExpectHeapConsistent();
    ASSERT_EQ(0, pm_trace_start(1));
    EXPECT_EQ(0u, Current());
    pm_obj_free(d);
    EXPECT_EQ(0u, Current());
    ExpectHeapConsistent();
}

TEST_F(TraceInBlockTest, SnapshotsSeeEveryLiveRecordAndNoFreedOne) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    std::vector<void *> blocks;
    for (size_t i = 0; i < 3000; i++) {
        Frame frame("snap.py", i % 3);
        blocks.push_back(pm_obj_malloc(8 + i % 3));  // many pools' worth, three sites
    }
    for (size_t i = 0; i < blocks.size(); i += 2) pm_obj_free(blocks[i]);  // holes everywhere
    pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
    ASSERT_NE(nullptr, snapshot);
    EXPECT_EQ(1500u, pm_trace_snapshot_count(snapshot));
    pm_trace_stats *stats = pm_trace_snapshot_statistics(snapshot, PM_TRACE_BY_LINENO);
    ASSERT_NE(nullptr, stats);
    ASSERT_EQ(3u, stats->count);
    size_t total = 0;
    for (size_t i = 0; i < stats->count; i++) {
        EXPECT_EQ(500u, stats->items[i].count);
        EXPECT_EQ(500u * (8 + stats->items[i].frames[0].lineno), stats->items[i].size);
        total += stats->items[i].size;
    }
    EXPECT_EQ(Current(), total);
    pm_trace_stats_free(stats);
    pm_trace_snapshot_free(snapshot);
    for (size_t i = 1; i < blocks.size(); i += 2) pm_obj_free(blocks[i]);
    EXPECT_EQ(0u, Current());
}

TEST_F(TraceInBlockTest, TrackReplacesTheRecordsTraceAndUntrackRemovesIt) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    void *p;
    {
        Frame frame("track.py", 1);
        p = pm_obj_malloc(64);
    }
    ASSERT_TRUE(FromTracedHeap(p));
    {
        Frame frame("track.py", 2);
        EXPECT_EQ(0, pm_trace_track(PM_DOMAIN_OBJ, (uintptr_t)p, 10));
        EXPECT_EQ(0, pm_trace_track(77, (uintptr_t)p, 5));  // another domain: its own trace
    }
    EXPECT_EQ(15u, Current());
    EXPECT_EQ(2, TracedLine(PM_DOMAIN_OBJ, p));
    // More than the block holds: its mark cannot say the size, the record does.
    EXPECT_EQ(0, pm_trace_track(PM_DOMAIN_OBJ, (uintptr_t)p, 5000));
    EXPECT_EQ(5005u, Current());
    EXPECT_EQ(0, pm_trace_untrack(PM_DOMAIN_OBJ, (uintptr_t)p));
    EXPECT_EQ(5u, Current());
    EXPECT_EQ(-1, TracedLine(PM_DOMAIN_OBJ, p));
    pm_obj_free(p);  // untracked: no effect; the other domain's trace is the caller's
    EXPECT_EQ(5u, Current());
    EXPECT_EQ(0, pm_trace_untrack(77, (uintptr_t)p));
    EXPECT_EQ(0u, Current());
}

// Pools of the largest class fill, empty (their marks and records go back, zeroed) and are
// taken again: counts, snapshots and the heap stay exact.
TEST_F(TraceInBlockTest, PoolsWithRecordsBesideGoBackAndAreTakenAgain) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("refill.py", 1);
    const size_t per_pool = PM_POOL_SIZE / PM_SMALL_REQUEST_THRESHOLD;
    for (int round = 0; round < 3; round++) {
        std::vector<void *> blocks;
        for (size_t i = 0; i < 3 * per_pool + 1; i++) blocks.push_back(pm_obj_malloc(500));
        EXPECT_EQ(blocks.size() * 500, Current());
        pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
        ASSERT_NE(nullptr, snapshot);
        EXPECT_EQ(blocks.size(), pm_trace_snapshot_count(snapshot));
        pm_trace_snapshot_free(snapshot);
        ExpectHeapConsistent();
        for (void *p : blocks) pm_obj_free(p);
        EXPECT_EQ(0u, Current());
        ExpectHeapConsistent();
    }
}

// The size of a traced heap's block is said by its mark (the block's slack) when it can
// be, else by its record: every size tracked on a block leaves the count exactly at free,
// and a snapshot sees the same sizes.
TEST_F(TraceInBlockTest, TrackedSizesLeaveTheCountExactlyWhateverTheirSlack) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("slack.py", 1);
    void *other = pm_obj_malloc(7);  // keeps the class's pool in the heap
    ASSERT_TRUE(FromTracedHeap(other));
    // A 400-byte request has 400 usable bytes: slack 253 is the last a mark can say; a
    // 500-byte one, whose record sits beside, 512: slack 253 is 259 bytes.
    const size_t sizes[] = {400, 399, 259, 258, 147, 146, 1, 0, 496, 5000, (size_t)1 << 40};
    for (size_t request : {400, 500}) {
        for (size_t size : sizes) {
            void *p = pm_obj_malloc(request);
            ASSERT_TRUE(FromTracedHeap(p));
            ASSERT_EQ(0, pm_trace_track(PM_DOMAIN_OBJ, (uintptr_t)p, size)) << size;
            EXPECT_EQ(7 + size, Current()) << request << " " << size;
            pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
            ASSERT_NE(nullptr, snapshot);
            EXPECT_EQ(7 + size, pm_trace_snapshot_size(snapshot)) << request << " " << size;
            pm_trace_snapshot_free(snapshot);
            pm_obj_free(p);
            EXPECT_EQ(7u, Current()) << request << " " << size;
        }
    }
    pm_obj_free(other);
    EXPECT_EQ(0u, Current());
    ExpectHeapConsistent();
}

// pm_heap_check knows the marks: a free block marked as traced (which free would count
// again when the block is next handed out and freed) is reported.
TEST_F(TraceInBlockTest, TheHeapCheckReportsAFreeBlockMarkedAsTraced) {
    GilScope gil;
    ASSERT_EQ(0, pm_trace_start(1));
    Frame frame("marks.py", 1);
    // Two blocks of one pool, so that freeing one leaves the pool (and its marks) in the
    // traced heap: of three blocks in a row, two share a pool whatever the head pool had left.
    void *blocks[3];
    for (void *&b : blocks) {
        b = pm_obj_malloc(48);
        ASSERT_TRUE(FromTracedHeap(b));
    }
    size_t first = pm_pool_of(blocks[0]) == pm_pool_of(blocks[1]) ? 0 : 1;
    void *freed = blocks[first], *kept = blocks[first + 1];
    pm_pool *pool = pm_pool_of(kept);
    ASSERT_EQ(pool, pm_pool_of(freed));
    pm_obj_free(freed);
    ASSERT_NE(nullptr, pool->marks);
    size_t index = ((uintptr_t)freed - PM_TRACE_RECORD_BYTES - pool->memory) /
                   pm_class_block_size(pool->size_class);
    ASSERT_EQ(0, pool->marks[index]);
    pool->marks[index] = 1;
    const char *problem = pm_heap_check();
    ASSERT_NE(nullptr, problem);
    EXPECT_NE(nullptr, strstr(problem, "is marked as traced")) << problem;
    pool->marks[index] = 0;
    ExpectHeapConsistent();
    for (void *b : blocks) {
        if (b != freed) pm_obj_free(b);
    }
    pm_trace_stop();
    ExpectHeapConsistent();  // a pool that went back to its arena gave its marks back
}

TEST_F(TraceInBlockTest, ATraceThatCannotBeStoredFailsTheCallAndKeepsNoBlock) {
    GilScope gil;
    auto *old = static_cast<uint8_t *>(pm_obj_malloc(100));  // from before the session
    ASSERT_NE(nullptr, old);
    memset(old, 0x5A, 100);
    ASSERT_EQ(0, pm_trace_start(1));  // a fresh session: no traceback stored yet
    size_t blocks_before = pm_allocated_blocks();
    pm_trace_test_fail_memory(1);
    {
        Frame frame("fail.py", 1);
        errno = 0;
        EXPECT_EQ(nullptr, pm_obj_malloc(100));
        EXPECT_EQ(ENOMEM, errno);
        errno = 0;
        EXPECT_EQ(nullptr, pm_mem_calloc(2, 50));
        EXPECT_EQ(ENOMEM, errno);
        errno = 0;
        EXPECT_EQ(nullptr, pm_obj_realloc(old, 200));  // old stays valid
        EXPECT_EQ(ENOMEM, errno);
    }
    pm_trace_test_fail_memory(0);
    EXPECT_EQ(blocks_before, pm_allocated_blocks()) << "no block was kept";
    EXPECT_EQ(0u, Current());
    for (size_t i = 0; i < 100; i++) ASSERT_EQ(0x5A, old[i]) << i;
    ExpectHeapConsistent();
    pm_obj_free(old);
    EXPECT_EQ(0u, Current());
}

}  // namespace
