// heap_check_test.cc — pm_heap_check() (alloc/heap_check.c), white box: it passes on healthy
// heaps after varied workloads, and it names each kind of corruption it is built to find.
//
// Corruptions are made in place on a live pool or list and undone before the test goes on:
// pm_heap_check() only reads, and nothing allocates from pymalloc between the damage and
// the repair (GoogleTest uses the C library's malloc), so the heap is whole again
// afterwards, which every TearDown proves with one more check.
//
// Classes are set aside so that tests do not see each other's pools: the workloads stay at
// or below 400 bytes (classes 0..24); free-list damage uses class 7, used-list damage
// class 9 (after the workloads have drained it), class 29 a fresh pool, class 30 an empty
// pool, class 31 full and empty pools. Tests that look at an empty pool raise the arena
// reserve first, so that its arena cannot be unmapped under them. Everything runs with the
// GIL held (GilScope: pm_heap_check and the domains require it), on one thread at a time.

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "alloc/internal/pymalloc.h"
#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"

namespace {

::testing::AssertionResult ReportsProblem(const char *problem, const std::string &want) {
    if (problem == nullptr) {
        return ::testing::AssertionFailure() << "the heap check found nothing; expected \"" << want
                                             << "\"";
    }
    if (std::string(problem).find(want) == std::string::npos) {
        return ::testing::AssertionFailure() << "reported \"" << problem << "\"; expected \""
                                             << want << "\"";
    }
    return ::testing::AssertionSuccess() << problem;
}

std::string Hex(const void *p) {
    char text[32];
    snprintf(text, sizeof text, "%p", p);
    return text;
}

size_t FreeListLength(const pm_pool *pool) {
    size_t n = 0;
    for (const pm_block *b = pool->free; b != nullptr; b = b->next) n++;
    return n;
}

pm_block *FreeListTail(pm_pool *pool) {
    pm_block *b = pool->free;
    while (b != nullptr && b->next != nullptr) b = b->next;
    return b;
}

class HeapCheckTest : public ::testing::Test {
  protected:
    void SetUp() override {
        GilScope gil;
        saved_reserve_ = pm_get_arena_reserve();
        ASSERT_EQ(pm_heap_check(), nullptr) << "the heap was broken before the test";
    }
    void TearDown() override {
        GilScope gil;
        EXPECT_EQ(pm_heap_check(), nullptr) << "a test left the heap broken";
        for (void *p : blocks_) pm_obj_free(p);
        blocks_.clear();
        pm_set_arena_reserve(saved_reserve_);
        EXPECT_EQ(pm_heap_check(), nullptr);
    }

    void *Alloc(size_t n) PM_GIL_REQUIRED {
        void *p = pm_obj_malloc(n);
        EXPECT_NE(p, nullptr) << n;
        if (p != nullptr) blocks_.push_back(p);
        return p;
    }
    void Free(void *p) PM_GIL_REQUIRED {
        for (void *&q : blocks_) {
            if (q == p) {
                pm_obj_free(p);
                q = blocks_.back();
                blocks_.pop_back();
                return;
            }
        }
        ADD_FAILURE() << "freeing a block the test does not hold";
    }

    // A used pool of `size_class`: eight blocks allocated from one pool, then three of them
    // freed, so it has blocks in use and a free list of at least three.
    pm_pool *UsedPool(unsigned size_class) PM_GIL_REQUIRED {
        size_t size = pm_class_block_size(size_class);
        std::vector<void *> mine;
        for (int i = 0; i < 8; i++) mine.push_back(Alloc(size));
        pm_pool *pool = pm_pool_of(mine[0]);
        for (void *p : mine) EXPECT_EQ(pm_pool_of(p), pool) << "blocks spread over pools";
        Free(mine[1]);
        Free(mine[3]);
        Free(mine[5]);
        EXPECT_GE(pm_pool_used(pool), 5u);
        EXPECT_NE(pool->free, nullptr);
        EXPECT_GE(FreeListLength(pool), 3u);
        EXPECT_EQ(pm_heap_check(), nullptr);
        return pool;
    }

    std::vector<void *> blocks_;
    size_t saved_reserve_ = 0;
};

// ---- healthy heaps --------------------------------------------------------------------

TEST_F(HeapCheckTest, EmptyAndFreshHeapsPass) {
    GilScope gil;
    EXPECT_EQ(pm_heap_check(), nullptr);
    Alloc(1);
    EXPECT_EQ(pm_heap_check(), nullptr);
}

TEST_F(HeapCheckTest, PassesThroughARandomWorkload) {
    GilScope gil;
    std::mt19937 rng(2024);
    std::uniform_int_distribution<size_t> size(0, 400);
    std::uniform_int_distribution<int> op(0, 9);
    std::vector<void *> mem;
    for (int step = 1; step <= 30000; step++) {
        int what = op(rng);
        if (what < 4 || blocks_.empty()) {
            Alloc(size(rng));
        } else if (what < 5) {
            void *p = pm_obj_calloc(1 + size(rng) / 8, 8);
            ASSERT_NE(p, nullptr);
            blocks_.push_back(p);
        } else if (what < 7) {
            size_t i = rng() % blocks_.size();
            void *q = pm_obj_realloc(blocks_[i], size(rng));
            ASSERT_NE(q, nullptr);
            blocks_[i] = q;
        } else if (what < 8) {
            void *p = pm_mem_malloc(size(rng));
            ASSERT_NE(p, nullptr);
            mem.push_back(p);
            if (mem.size() > 200) {
                pm_mem_free(mem.front());
                mem.erase(mem.begin());
            }
        } else {
            Free(blocks_[rng() % blocks_.size()]);
        }
        if (step % 2500 == 0) {
            ASSERT_EQ(pm_heap_check(), nullptr) << "step " << step;
        }
    }
    for (void *p : mem) pm_mem_free(p);
    EXPECT_EQ(pm_heap_check(), nullptr);
}

TEST_F(HeapCheckTest, PassesWhileArenasFillDrainAndGoToTheReserve) {
    GilScope gil;
    pm_set_arena_reserve(0);  // start from the arenas in use only
    pm_set_arena_reserve(2 * PM_ARENA_SIZE);
    const size_t reclaimed_before = pm_counters.arenas_reclaimed;
    const size_t target = pm_counters.arenas_current + 4;
    for (int round = 0; round < 3; round++) {
        // Blocks of 64..384 bytes until four more arenas are in use.
        for (int i = 0; pm_counters.arenas_current < target && i < 1000000; i++) {
            Alloc(64 + static_cast<size_t>(i % 6) * 64);
        }
        ASSERT_EQ(pm_counters.arenas_current, target);
        ASSERT_EQ(pm_heap_check(), nullptr) << "round " << round << " full";
        // Free every other block (pools stay used), then the rest (pools and arenas empty).
        for (size_t i = 0; i < blocks_.size(); i += 2) pm_obj_free(blocks_[i]);
        std::vector<void *> odd;
        for (size_t i = 1; i < blocks_.size(); i += 2) odd.push_back(blocks_[i]);
        blocks_.swap(odd);
        ASSERT_EQ(pm_heap_check(), nullptr) << "round " << round << " half";
        for (void *p : blocks_) pm_obj_free(p);
        blocks_.clear();
        ASSERT_EQ(pm_heap_check(), nullptr) << "round " << round << " drained";
        EXPECT_EQ(pm_arena_reserve_count(), 2u) << "round " << round;
    }
    EXPECT_GT(pm_counters.arenas_reclaimed, reclaimed_before) << "arenas beyond the reserve";
    pm_set_arena_reserve(0);
    EXPECT_EQ(pm_arena_reserve_count(), 0u);
    EXPECT_EQ(pm_heap_check(), nullptr);
}

TEST_F(HeapCheckTest, PassesWithFullPools) {
    GilScope gil;
    const uint32_t capacity = pm_class_capacity(31);
    for (uint32_t i = 0; i < 2 * capacity + 5; i++) Alloc(512);
    bool found_full = false;
    for (void *p : blocks_) found_full |= pm_pool_used(pm_pool_of(p)) == capacity;
    EXPECT_TRUE(found_full);
    EXPECT_EQ(pm_heap_check(), nullptr);
}

// ---- free-list damage -----------------------------------------------------------------

TEST_F(HeapCheckTest, DetectsFreeBlockOutsideThePool) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pm_block *tail = FreeListTail(pool);
    pm_block elsewhere{};
    tail->next = &elsewhere;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "free block " + Hex(&elsewhere) +
                                                    " lies outside the pool"));
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "pool " + Hex(pool) + " (class 7)"));
    tail->next = nullptr;
}

TEST_F(HeapCheckTest, DetectsFreeBlockOffABlockBoundary) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pm_block *first = pool->free;
    pm_block *saved = first->next;
    first->next = reinterpret_cast<pm_block *>(reinterpret_cast<char *>(saved) + 16);
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "is not at a block boundary"));
    first->next = saved;
}

TEST_F(HeapCheckTest, DetectsFreeBlockBeyondTheCarveOffset) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pm_block *tail = FreeListTail(pool);
    // Class 7 (128 bytes) leaves a 16-byte tail, so the carve offset is inside the pool
    // even when every block is carved.
    ASSERT_LT(pool->carve_offset, PM_POOL_SIZE);
    tail->next = reinterpret_cast<pm_block *>(pool->memory + pool->carve_offset);
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "beyond the carve offset"));
    tail->next = nullptr;
}

TEST_F(HeapCheckTest, DetectsACycleInAFreeList) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pm_block *tail = FreeListTail(pool);
    tail->next = pool->free;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "a cycle or a duplicate"));
    tail->next = nullptr;
}

TEST_F(HeapCheckTest, DetectsADoubleFree) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    void *victim = blocks_.back();  // still allocated, in `pool`
    ASSERT_EQ(pm_pool_of(victim), pool);
    pm_block *head_before = pool->free;
    Free(victim);
    pm_obj_free(victim);  // the second free: the block now links to itself
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "a cycle or a duplicate"));
    // Undo the second free: the block stays free once, as after the first.
    static_cast<pm_block *>(victim)->next = head_before;
    pool->used_state++;
}

// ---- pool-header damage ---------------------------------------------------------------

TEST_F(HeapCheckTest, DetectsUsedCountThatDoesNotAddUp) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pool->used_state++;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "blocks in use +"));
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "!= capacity"));
    pool->used_state--;
}

TEST_F(HeapCheckTest, DetectsUsedCountOverCapacity) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    uint32_t saved = pool->used_state;
    pool->used_state = pm_class_capacity(7) + 1;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "more than its capacity"));
    pool->used_state = saved;
}

TEST_F(HeapCheckTest, DetectsInvalidSizeClass) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pool->size_class = 40;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "invalid size class 40"));
    pool->size_class = 7;
}

TEST_F(HeapCheckTest, DetectsWrongArenaPointer) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pm_arena *saved = pool->arena;
    pool->arena = nullptr;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "but it was carved from arena " + Hex(saved)));
    pool->arena = saved;
}

TEST_F(HeapCheckTest, DetectsCarveOffsetOffABlockBoundary) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pool->carve_offset += 8;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "carve offset"));
    pool->carve_offset -= 8;
}

TEST_F(HeapCheckTest, DetectsEmptyFreeListInAPoolThatIsNotFull) {
    GilScope gil;
    // A fresh class-29 pool has blocks never carved. Hiding its free list, counting those
    // blocks as in use and marking the pool full keeps the totals right, so only the "full
    // means every block carved and in use" rule catches it. (Unmarked, the same state is a
    // list head that malloc exhausted and has not settled yet: legal, see below.)
    pm_pool *pool = UsedPool(29);
    uint32_t carved = static_cast<uint32_t>(pool->carve_offset / pm_class_block_size(29));
    ASSERT_LT(carved, pm_class_capacity(29));
    pm_block *saved_free = pool->free;
    uint32_t saved_used = pool->used_state;
    pool->free = nullptr;
    pool->used_state = carved | PM_POOL_FULL;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "free list empty but the pool is not full"));
    pool->free = saved_free;
    pool->used_state = saved_used;
}

TEST_F(HeapCheckTest, AcceptsAnExhaustedListHeadUntilTheNextMallocSettlesIt) {
    GilScope gil;
    const unsigned size_class = static_cast<unsigned>(pm_size_class(464));  // class 28
    ASSERT_EQ(pm_main_heap.used[size_class], &pm_no_pool) << "the class must start empty";
    std::vector<void *> blocks;
    blocks.push_back(Alloc(464));
    pm_pool *pool = pm_pool_of(blocks[0]);
    while (blocks.size() < pm_class_capacity(size_class)) blocks.push_back(Alloc(464));
    ASSERT_EQ(pool->free, nullptr) << "every block of the pool is handed out";
    EXPECT_FALSE(pm_pool_full(pool)) << "taking the last block does not look at the pool";
    EXPECT_EQ(pm_main_heap.used[size_class], pool);
    EXPECT_EQ(pm_heap_check(), nullptr);
    blocks.push_back(Alloc(464));
    EXPECT_TRUE(pm_pool_full(pool)) << "the next malloc marks it full";
    EXPECT_NE(pm_main_heap.used[size_class], pool) << "and takes it off the list";
    EXPECT_NE(pm_pool_of(blocks.back()), pool);
    EXPECT_EQ(pm_heap_check(), nullptr);
    for (void *p : blocks) Free(p);
}

TEST_F(HeapCheckTest, DetectsAFullPoolWithoutItsFullFlag) {
    GilScope gil;
    // free's fast path relies on the flag to notice a block coming back to a full pool.
    size_t capacity = pm_class_capacity(pm_size_class(400));
    std::vector<void *> blocks;
    // One more than a pool holds: the malloc after the pool's last block settles it.
    for (size_t i = 0; i < capacity + 1; i++) blocks.push_back(Alloc(400));
    pm_pool *full = nullptr;
    for (void *p : blocks) {
        if (pm_pool_of(p)->free == nullptr) full = pm_pool_of(p);
    }
    ASSERT_NE(full, nullptr);
    ASSERT_TRUE(pm_pool_full(full));
    full->used_state &= ~PM_POOL_FULL;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "the full flag is clear but the free list is empty"));
    full->used_state |= PM_POOL_FULL;
    for (void *p : blocks) Free(p);
}

TEST_F(HeapCheckTest, DetectsAClasslessPoolThatHasBeenUsed) {
    GilScope gil;
    // An empty pool keeps its class and free list on its arena's free-pool list; claiming it
    // was never given a class contradicts the free list it still has.
    pm_set_arena_reserve(64 * PM_ARENA_SIZE);
    void *p = Alloc(496);  // class 30, used by no other test
    pm_pool *pool = pm_pool_of(p);
    ASSERT_EQ(pm_pool_used(pool), 1u);
    Free(p);
    ASSERT_EQ(pm_pool_used(pool), 0u);
    ASSERT_NE(pool->free, nullptr);
    uint16_t saved = pool->size_class;
    pool->size_class = PM_NO_CLASS;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "pool " + Hex(pool) + " (no class): never used"));
    pool->size_class = saved;
}

TEST_F(HeapCheckTest, DetectsAnOwnerThatIsNotAHeap) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pm_heap *saved = pool->owner;
    pool->owner = nullptr;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "is not a heap"));
    pool->owner = saved;
}

// ---- used-list damage -----------------------------------------------------------------

TEST_F(HeapCheckTest, DetectsAUsedPoolMissingFromItsList) {
    GilScope gil;
    pm_pool *pool = UsedPool(9);
    ASSERT_EQ(pm_main_heap.used[9], pool);
    pm_main_heap.used[9] = &pm_no_pool;
    pm_main_heap.used_last[9] = nullptr;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(),
                               "class 9 used pools: 0 pools on the lists but 1 such pools in the arenas"));
    pm_main_heap.used[9] = pool;
    pm_main_heap.used_last[9] = pool;
}

TEST_F(HeapCheckTest, DetectsANullListHead) {
    GilScope gil;
    pm_pool *pool = UsedPool(9);
    pm_main_heap.used[9] = nullptr;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "class 9: used-list head is NULL"));
    pm_main_heap.used[9] = pool;
}

TEST_F(HeapCheckTest, DetectsABrokenPrevLink) {
    GilScope gil;
    pm_pool *pool = UsedPool(9);
    ASSERT_EQ(pool->prev, nullptr);
    pool->prev = pool;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "on the used list has prev"));
    pool->prev = nullptr;
}

TEST_F(HeapCheckTest, DetectsAStaleUsedListTail) {
    GilScope gil;
    pm_pool *pool = UsedPool(9);
    ASSERT_EQ(pm_main_heap.used_last[9], pool) << "expected the only used pool of class 9";
    pm_main_heap.used_last[9] = nullptr;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "class 9: heap " + Hex(&pm_main_heap) +
                                                    "'s used list ends at " + Hex(pool) +
                                                    " but its tail is (nil)"));
    pm_main_heap.used_last[9] = pool;
}

TEST_F(HeapCheckTest, DetectsACycleInAUsedList) {
    GilScope gil;
    pm_pool *pool = UsedPool(9);
    ASSERT_EQ(pool->next, nullptr) << "expected the only used pool of class 9";
    pool->next = pool;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "class 9: used lists longer than the 1 used pools"));
    pool->next = nullptr;
}

TEST_F(HeapCheckTest, DetectsAForeignPointerInAUsedList) {
    GilScope gil;
    pm_pool *pool = UsedPool(9);
    alignas(64) static pm_pool impostor;
    pool->next = &impostor;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "which is not one of our pools"));
    pool->next = nullptr;
}

// A never-carved pool whose header is forged to look like the used pool it replaces on the
// list passes every per-pool test and the count; only carved pools' headers may be listed.
TEST_F(HeapCheckTest, DetectsAnImpostorPoolOnAUsedList) {
    GilScope gil;
    pm_pool *pool = UsedPool(9);
    auto find_uncarved = [] {
        pm_pool *found = nullptr;
        pm_arena_for_each(
            [](const pm_arena *arena, void *arg) {
                auto *out = static_cast<pm_pool **>(arg);
                if (*out == nullptr && arena->carved_pools < arena->total_pools) {
                    *out = const_cast<pm_pool *>(&arena->pools[arena->carved_pools]);
                }
            },
            &found);
        return found;
    };
    pm_pool *impostor = find_uncarved();
    const size_t arenas_before = pm_counters.arenas_allocated_total;
    while (impostor == nullptr && pm_counters.arenas_allocated_total == arenas_before) {
        Alloc(512);  // a new arena has pools never carved
        impostor = find_uncarved();
    }
    ASSERT_NE(impostor, nullptr);
    ASSERT_TRUE(pm_pymalloc_owns(reinterpret_cast<void *>(impostor->memory)));

    pm_pool saved;
    memcpy(&saved, impostor, sizeof saved);
    memcpy(impostor, pool, sizeof *impostor);  // same class, counts, owner, links
    impostor->memory = saved.memory;           // but still describing its own memory
    pm_main_heap.used[9] = impostor;
    pm_main_heap.used_last[9] = impostor;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "which is not one of our pools"));
    pm_main_heap.used[9] = pool;
    pm_main_heap.used_last[9] = pool;
    memcpy(impostor, &saved, sizeof saved);
}

TEST_F(HeapCheckTest, DetectsAPoolOfAnotherClassInAUsedList) {
    GilScope gil;
    pm_pool *pool = UsedPool(9);
    pm_pool *other = UsedPool(7);
    pm_pool *saved = pm_main_heap.used[9];
    pm_main_heap.used[9] = other;  // other->prev is NULL: it heads class 7's list
    ASSERT_EQ(other->prev, nullptr);
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "class 9: pool " + Hex(other) + " of class 7"));
    pm_main_heap.used[9] = saved;
    (void)pool;
}

TEST_F(HeapCheckTest, DetectsAFullPoolOnAUsedList) {
    GilScope gil;
    // Two full pools of class 31 and a used one; make a full one the list head.
    const uint32_t capacity = pm_class_capacity(31);
    for (uint32_t i = 0; i < 2 * capacity + 5; i++) Alloc(512);
    pm_pool *full = nullptr;
    for (void *p : blocks_) {
        if (pm_pool_used(pm_pool_of(p)) == capacity) full = pm_pool_of(p);
    }
    ASSERT_NE(full, nullptr);
    ASSERT_EQ(full->next, nullptr);
    ASSERT_EQ(full->prev, nullptr);
    pm_pool *saved = pm_main_heap.used[31];
    pm_main_heap.used[31] = full;
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "full pool " + Hex(full) + " is on the used list"));
    pm_main_heap.used[31] = saved;
}

TEST_F(HeapCheckTest, DetectsAnEmptyPoolOnAUsedList) {
    GilScope gil;
    pm_set_arena_reserve(64 * PM_ARENA_SIZE);
    const uint32_t capacity = pm_class_capacity(31);
    for (uint32_t i = 0; i < capacity + 5; i++) Alloc(512);
    pm_pool *empty = nullptr;
    for (void *p : blocks_) {
        if (pm_pool_used(pm_pool_of(p)) == capacity) empty = pm_pool_of(p);
    }
    ASSERT_NE(empty, nullptr);
    std::vector<void *> in_empty;
    for (void *p : blocks_) {
        if (pm_pool_of(p) == empty) in_empty.push_back(p);
    }
    for (void *p : in_empty) Free(p);  // the pool goes back to its arena's free-pool list
    ASSERT_EQ(pm_pool_used(empty), 0u);
    ASSERT_EQ(empty->prev, nullptr);
    ASSERT_EQ(pm_heap_check(), nullptr);
    // Its `next` is the arena free-pool link; the used-list walk stops at the empty pool.
    pm_pool *saved = pm_main_heap.used[31];
    pm_main_heap.used[31] = empty;
    EXPECT_TRUE(
        ReportsProblem(pm_heap_check(), "empty pool " + Hex(empty) + " is on the used list"));
    pm_main_heap.used[31] = saved;
}

TEST_F(HeapCheckTest, DetectsAWrittenEmptyListHead) {
    GilScope gil;
    pm_block fake{};
    pm_no_pool.free = &fake;  // every empty class would now "allocate" this: allocate nothing
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "pm_no_pool"));
    pm_no_pool.free = nullptr;
}

TEST_F(HeapCheckTest, DetectsAPoolOnTheBypassHeap) {
    GilScope gil;
    pm_pool *pool = UsedPool(9);
    pm_bypass_heap.used[9] = pool;  // the fast path would now serve a hooked domain itself
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), "class 9: the bypass heap's used list holds"));
    pm_bypass_heap.used[9] = &pm_no_pool;
}

// ---- arena damage (reported by the arena layer, first) ---------------------------------

TEST_F(HeapCheckTest, ReportsArenaLayerProblemsFirst) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pm_arena *arena = pool->arena;
    uint32_t saved = arena->free_count;
    arena->free_count = saved > 0 ? saved - 1 : saved + 1;
    std::string named = "arena " + Hex(reinterpret_cast<void *>(arena->address));
    EXPECT_TRUE(ReportsProblem(pm_heap_check(), named));
    arena->free_count = saved;
}

TEST_F(HeapCheckTest, DetectsAnArenaPoolCountThatDoesNotFit) {
    GilScope gil;
    pm_pool *pool = UsedPool(7);
    pm_arena *arena = pool->arena;
    uint32_t saved = arena->total_pools;
    arena->total_pools = saved - 1;  // too few for its pools, or for its free count
    const char *problem = pm_heap_check();
    arena->total_pools = saved;
    EXPECT_TRUE(ReportsProblem(problem, "arena " + Hex(reinterpret_cast<void *>(arena->address))));
}

TEST_F(HeapCheckTest, ReportBufferIsPerThread) {
    pm_pool *pool;
    const char *mine;
    std::string copy;
    {
        GilScope gil;
        pool = UsedPool(7);
        pool->used_state++;
        mine = pm_heap_check();
        ASSERT_NE(mine, nullptr);
        copy = mine;
    }
    // Another thread (after this one, never at the same time: the GIL's rule) gets its own
    // buffer, and leaves this thread's report alone. This thread has released the GIL so
    // that the other can take it while this one waits in join().
    const char *theirs = nullptr;
    std::string their_copy;
    std::thread other([&] {
        GilScope gil;
        theirs = pm_heap_check();
        if (theirs != nullptr) their_copy = theirs;
    });
    other.join();
    GilScope gil;
    pool->used_state--;
    EXPECT_NE(theirs, mine);
    EXPECT_EQ(their_copy, copy);
    EXPECT_EQ(std::string(mine), copy);
}

}  // namespace
