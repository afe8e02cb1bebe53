// pymalloc_test.cc — pymalloc as the mem and object domains use it: size classes, pools,
// realloc's in-place and moving paths, ownership of foreign pointers, arena release and
// reserve, and injected arena-allocator failure. Every test ends with a heap check.
//
// The mem and object domains and pymalloc's state functions require the GIL: each test
// holds it for its whole body (GilScope), as do SetUp and TearDown; all on one thread.

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "alloc/internal/pymalloc.h"
#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"
#include "tests/support/resident_pages.h"

namespace {

// Counts arena allocator calls and fails on demand, wrapping the allocator it replaces.
struct ArenaSpy {
    pm_arena_allocator saved{};
    int allocs = 0;
    int frees = 0;
    bool fail = false;
    std::vector<uintptr_t> arenas;  // every arena handed out, in order

    static void *Alloc(void *ctx, size_t size) {
        auto *self = static_cast<ArenaSpy *>(ctx);
        EXPECT_EQ(size, pm_arena_size());
        if (self->fail) return nullptr;
        void *p = self->saved.alloc(self->saved.ctx, size);
        if (p != nullptr) {
            self->allocs++;
            self->arenas.push_back(reinterpret_cast<uintptr_t>(p));
        }
        return p;
    }
    static void Free(void *ctx, void *ptr, size_t size) {
        auto *self = static_cast<ArenaSpy *>(ctx);
        EXPECT_EQ(size, pm_arena_size());
        self->frees++;
        self->saved.free(self->saved.ctx, ptr, size);
    }
    void Install() PM_GIL_REQUIRED {
        ASSERT_EQ(pm_get_arena_allocator(&saved), 0);
        pm_arena_allocator spy{this, Alloc, Free};
        ASSERT_EQ(pm_set_arena_allocator(&spy), 0);
    }
    void Uninstall() PM_GIL_REQUIRED { ASSERT_EQ(pm_set_arena_allocator(&saved), 0); }
};

class PymallocTest : public ::testing::Test {
  protected:
    void SetUp() override {
        GilScope gil;
        saved_reserve_ = pm_get_arena_reserve();
        blocks_at_start_ = pm_allocated_blocks();
    }
    void TearDown() override {
        GilScope gil;
        EXPECT_EQ(pm_heap_check(), nullptr);
        EXPECT_EQ(pm_allocated_blocks(), blocks_at_start_) << "a test leaked blocks";
        pm_set_arena_reserve(saved_reserve_);
    }
    size_t saved_reserve_ = 0;
    size_t blocks_at_start_ = 0;
};

uint64_t RawMallocs() {
    pm_raw_stats stats;
    pm_get_raw_stats(&stats);
    return stats.mallocs;
}

TEST_F(PymallocTest, SizeClassBoundariesDecideWhoServes) {
    GilScope gil;
    struct Case {
        size_t size;
        bool pymalloc;
    } cases[] = {{0, false}, {1, true}, {16, true}, {17, true}, {511, true}, {512, true}, {513, false}};
    for (const Case &c : cases) {
        uint64_t raw_before = RawMallocs();
        void *p = pm_obj_malloc(c.size);
        ASSERT_NE(p, nullptr) << c.size;
        EXPECT_EQ(pm_pymalloc_owns(p), c.pymalloc) << c.size;
        EXPECT_EQ(RawMallocs() - raw_before, c.pymalloc ? 0u : 1u) << "raw sees what pymalloc passes on";
        if (c.pymalloc) {
            EXPECT_EQ(pm_pool_of(p)->size_class, pm_size_class(c.size)) << c.size;
            EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % PM_ALIGNMENT, 0u);
        }
        pm_obj_free(p);
    }
}

TEST_F(PymallocTest, ClassIndexAndBlockSize) {
    EXPECT_EQ(pm_size_class(1), 0u);
    EXPECT_EQ(pm_size_class(16), 0u);
    EXPECT_EQ(pm_size_class(17), 1u);
    EXPECT_EQ(pm_size_class(512), 31u);
    EXPECT_EQ(pm_class_block_size(31), 512u);
    EXPECT_EQ(PM_NUM_CLASSES, 32);
}

TEST_F(PymallocTest, ZeroBytesGivesDistinctPointersInBothDomains) {
    GilScope gil;
    void *a = pm_mem_malloc(0), *b = pm_mem_malloc(0), *c = pm_obj_malloc(0), *d = pm_obj_calloc(0, 8);
    ASSERT_TRUE(a && b && c && d);
    EXPECT_EQ(std::set<void *>({a, b, c, d}).size(), 4u);
    pm_mem_free(a);
    pm_mem_free(b);
    pm_obj_free(c);
    pm_obj_free(d);
}

TEST_F(PymallocTest, EveryBlockHoldsItsWholeClassWithoutTouchingNeighbours) {
    GilScope gil;
    for (size_t size = 1; size <= PM_SMALL_REQUEST_THRESHOLD; size += 7) {
        std::vector<unsigned char *> blocks;
        for (int i = 0; i < 40; i++) {
            auto *p = static_cast<unsigned char *>(pm_mem_malloc(size));
            ASSERT_NE(p, nullptr);
            memset(p, i, pm_class_block_size(pm_size_class(size)));
            blocks.push_back(p);
        }
        for (int i = 0; i < 40; i++) {
            size_t full = pm_class_block_size(pm_size_class(size));
            for (size_t k = 0; k < full; k++) ASSERT_EQ(blocks[i][k], (unsigned char)i) << size;
        }
        for (auto *p : blocks) pm_mem_free(p);
    }
}

TEST_F(PymallocTest, CallocZeroesRecycledBlocks) {
    GilScope gil;
    auto *p = static_cast<unsigned char *>(pm_obj_malloc(200));
    memset(p, 0xAB, 200);
    pm_obj_free(p);
    auto *q = static_cast<unsigned char *>(pm_obj_calloc(25, 8));  // same class, likely same block
    ASSERT_NE(q, nullptr);
    for (int i = 0; i < 200; i++) ASSERT_EQ(q[i], 0) << i;
    pm_obj_free(q);
    auto *big = static_cast<unsigned char *>(pm_obj_calloc(1000, 3));
    ASSERT_NE(big, nullptr);
    for (int i = 0; i < 3000; i++) ASSERT_EQ(big[i], 0);
    pm_obj_free(big);
    EXPECT_EQ(pm_obj_calloc(SIZE_MAX / 2, 3), nullptr) << "count x size overflow";
}

TEST_F(PymallocTest, ReallocStaysInPlaceWhenShrinkingByLessThanAQuarter) {
    GilScope gil;
    void *p = pm_obj_malloc(64);
    memset(p, 7, 64);
    EXPECT_EQ(pm_obj_realloc(p, 64), p);
    EXPECT_EQ(pm_obj_realloc(p, 49), p) << "4*49 > 3*64: stays";
    void *q = pm_obj_realloc(p, 48);  // 4*48 == 3*64: moves to the 48-byte class
    ASSERT_NE(q, nullptr);
    EXPECT_NE(q, p);
    EXPECT_EQ(pm_pool_of(q)->size_class, pm_size_class(48));
    for (int i = 0; i < 48; i++) ASSERT_EQ(static_cast<unsigned char *>(q)[i], 7);
    pm_obj_free(q);
}

TEST_F(PymallocTest, ReallocMovesAcrossClassesAndIntoAndOutOfRaw) {
    GilScope gil;
    auto *p = static_cast<unsigned char *>(pm_mem_malloc(30));
    for (int i = 0; i < 30; i++) p[i] = (unsigned char)i;
    auto *q = static_cast<unsigned char *>(pm_mem_realloc(p, 300));  // grows to another class
    ASSERT_NE(q, nullptr);
    EXPECT_TRUE(pm_pymalloc_owns(q));
    for (int i = 0; i < 30; i++) ASSERT_EQ(q[i], i);
    auto *r = static_cast<unsigned char *>(pm_mem_realloc(q, 5000));  // into raw
    ASSERT_NE(r, nullptr);
    EXPECT_FALSE(pm_pymalloc_owns(r));
    for (int i = 0; i < 30; i++) ASSERT_EQ(r[i], i);
    auto *s = static_cast<unsigned char *>(pm_mem_realloc(r, 8));  // a raw block stays raw
    ASSERT_NE(s, nullptr);
    EXPECT_FALSE(pm_pymalloc_owns(s));
    for (int i = 0; i < 8; i++) ASSERT_EQ(s[i], i);
    pm_mem_free(s);
}

TEST_F(PymallocTest, ReallocToZeroResizesAndNeverFrees) {
    GilScope gil;
    void *p = pm_obj_malloc(100);
    void *q = pm_obj_realloc(p, 0);
    ASSERT_NE(q, nullptr);
    pm_obj_free(q);
    void *r = pm_obj_realloc(nullptr, 40);  // realloc(NULL, n) is malloc
    ASSERT_NE(r, nullptr);
    EXPECT_TRUE(pm_pymalloc_owns(r));
    pm_obj_free(r);
}

TEST_F(PymallocTest, OwnershipIsExactForForeignPointers) {
    GilScope gil;
    int on_stack = 0;
    EXPECT_FALSE(pm_pymalloc_owns(&on_stack));
    EXPECT_FALSE(pm_pymalloc_owns(nullptr));
    EXPECT_FALSE(pm_pymalloc_owns(reinterpret_cast<void *>(UINTPTR_MAX)));
    EXPECT_FALSE(pm_pymalloc_owns(reinterpret_cast<void *>(uintptr_t{1} << 60)));
    void *mapped = mmap(nullptr, 1 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(mapped, MAP_FAILED);
    for (size_t off = 0; off < (1u << 20); off += 4096) {
        ASSERT_FALSE(pm_pymalloc_owns(static_cast<char *>(mapped) + off)) << "PROT_NONE page read";
    }
    munmap(mapped, 1 << 20);

    // Blocks from elsewhere are handed to the raw domain's free and realloc.
    void *from_malloc = malloc(24);
    pm_raw_stats before, after;
    pm_get_raw_stats(&before);
    pm_obj_free(from_malloc);
    pm_get_raw_stats(&after);
    EXPECT_EQ(after.frees - before.frees, 1u);
    void *from_raw = pm_raw_malloc(16);
    void *grown = pm_mem_realloc(from_raw, 32);
    ASSERT_NE(grown, nullptr);
    EXPECT_FALSE(pm_pymalloc_owns(grown));
    pm_raw_free(grown);
}

TEST_F(PymallocTest, OwnershipCoversEveryPoolByteAndNothingAroundIt) {
    GilScope gil;
    void *p = pm_obj_malloc(32);
    const pm_arena *arena = pm_pool_of(p)->arena;
    uintptr_t lo = arena->pools_start;
    uintptr_t hi = lo + arena->total_pools * PM_POOL_SIZE;
    EXPECT_TRUE(pm_pymalloc_owns(reinterpret_cast<void *>(lo)));
    EXPECT_TRUE(pm_pymalloc_owns(reinterpret_cast<void *>(hi - 1)));
    if (lo > arena->address) {
        EXPECT_FALSE(pm_pymalloc_owns(reinterpret_cast<void *>(lo - 1)));
    }
    pm_obj_free(p);
}

TEST_F(PymallocTest, UnalignedArenasWorkAndLoseOnlyTheirPartialPool) {
    GilScope gil;
    // An arena allocator whose memory starts 64 bytes past an arena boundary, as malloc'd
    // memory might: the first partial pool is skipped.
    struct Unaligned {
        static void *Alloc(void *, size_t size) {
            char *p = static_cast<char *>(mmap(nullptr, 2 * size, PROT_READ | PROT_WRITE,
                                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
            if (p == MAP_FAILED) return nullptr;
            auto aligned = (reinterpret_cast<uintptr_t>(p) + size - 1) & ~(uintptr_t)(size - 1);
            return reinterpret_cast<void *>(aligned + 64);
        }
        static void Free(void *, void *ptr, size_t size) {
            // Unmaps the pages the arena covered; the rest of the double-size mapping is
            // left behind (address space only, in a test).
            munmap(reinterpret_cast<void *>(reinterpret_cast<uintptr_t>(ptr) & ~uintptr_t{4095}), size);
        }
    };
    pm_set_arena_reserve(0);
    pm_arena_allocator saved;
    pm_get_arena_allocator(&saved);
    pm_arena_allocator unaligned{nullptr, Unaligned::Alloc, Unaligned::Free};
    pm_set_arena_allocator(&unaligned);
    size_t capacity = pm_class_capacity(pm_size_class(512));
    std::vector<void *> blocks;
    for (size_t i = 0; i < 3 * PM_POOLS_PER_ARENA * capacity; i++) {
        void *p = pm_obj_malloc(512);
        ASSERT_NE(p, nullptr);
        ASSERT_TRUE(pm_pymalloc_owns(p));
        memset(p, 1, 512);
        blocks.push_back(p);
    }
    const pm_arena *arena = pm_pool_of(blocks.back())->arena;
    EXPECT_EQ(arena->total_pools, PM_POOLS_PER_ARENA - 1);
    EXPECT_EQ(pm_heap_check(), nullptr);
    for (void *p : blocks) pm_obj_free(p);
    pm_set_arena_allocator(&saved);
}

TEST_F(PymallocTest, FreedArenasGoBackToTheOsBeyondTheReserve) {
    GilScope gil;
    pm_set_arena_reserve(0);
    ArenaSpy spy;
    spy.Install();
    size_t arenas_before = pm_counters.arenas_current;
    std::vector<void *> blocks;
    // 64-byte blocks for about ten arenas.
    size_t per_arena = PM_POOLS_PER_ARENA * pm_class_capacity(pm_size_class(64));
    for (size_t i = 0; i < 10 * per_arena; i++) blocks.push_back(pm_obj_malloc(64));
    EXPECT_GE(spy.allocs, 9);
    EXPECT_GE(pm_counters.arenas_current, arenas_before + 9);
    std::shuffle(blocks.begin(), blocks.end(), std::mt19937(42));
    for (void *p : blocks) pm_obj_free(p);
    EXPECT_EQ(spy.frees, spy.allocs) << "every arena this test made went back to the OS";
    EXPECT_EQ(pm_counters.arenas_current, arenas_before);
    spy.Uninstall();
}

TEST_F(PymallocTest, TheReserveKeepsABoundedNumberOfFreeArenasMapped) {
    GilScope gil;
    pm_set_arena_reserve(2 * pm_arena_size());
    ArenaSpy spy;
    spy.Install();
    std::vector<void *> blocks;
    size_t per_arena = PM_POOLS_PER_ARENA * pm_class_capacity(pm_size_class(128));
    for (size_t i = 0; i < 6 * per_arena; i++) blocks.push_back(pm_obj_malloc(128));
    for (void *p : blocks) pm_obj_free(p);
    EXPECT_EQ(pm_arena_reserve_count(), 2u);
    EXPECT_EQ(spy.allocs - spy.frees, 2) << "two kept, the rest released";
    // Allocating again draws on the reserve before mapping anything new.
    int allocs_before = spy.allocs;
    void *p = pm_obj_malloc(128);
    EXPECT_EQ(spy.allocs, allocs_before);
    pm_obj_free(p);
    pm_set_arena_reserve(0);  // lowering the limit releases the excess at once
    EXPECT_EQ(pm_arena_reserve_count(), 0u);
    EXPECT_EQ(spy.frees, spy.allocs);
    spy.Uninstall();
}

TEST_F(PymallocTest, AFailingArenaAllocatorGivesNullAndLosesNothing) {
    GilScope gil;
    pm_set_arena_reserve(0);
    ArenaSpy spy;
    spy.Install();
    // Some blocks while arenas can be had, then fail: pymalloc goes on from the pools and
    // arenas it has until it needs a new arena, and then returns NULL.
    std::vector<void *> blocks;
    for (int i = 0; i < 100; i++) blocks.push_back(pm_obj_malloc(330));
    spy.fail = true;
    void *p;
    while ((p = pm_obj_malloc(330)) != nullptr) blocks.push_back(p);
    EXPECT_EQ(pm_heap_check(), nullptr) << "failure left the heap consistent";
    EXPECT_EQ(pm_obj_calloc(1, 330), nullptr);
    for (void *b : blocks) memset(b, 3, 330);  // every block handed out is still usable
    // A failed realloc leaves the block valid.
    void *keep = pm_obj_malloc(16);
    if (keep != nullptr) {  // class 0 may also be out of pools
        memset(keep, 9, 16);
        EXPECT_EQ(pm_obj_realloc(keep, 330), nullptr);
        for (int i = 0; i < 16; i++) ASSERT_EQ(static_cast<unsigned char *>(keep)[i], 9);
        pm_obj_free(keep);
    }
    spy.fail = false;  // the allocator recovers: so does pymalloc
    p = pm_obj_malloc(330);
    ASSERT_NE(p, nullptr);
    blocks.push_back(p);
    for (void *b : blocks) pm_obj_free(b);
    spy.Uninstall();
}

TEST_F(PymallocTest, PoolsComeFromTheBusiestArena) {
    GilScope gil;
    pm_set_arena_reserve(0);
    size_t per_pool = pm_class_capacity(pm_size_class(256));
    // Two arenas' worth, then empty most of the first arena's pools.
    std::vector<void *> blocks;
    for (size_t i = 0; i < 2 * PM_POOLS_PER_ARENA * per_pool; i++) blocks.push_back(pm_obj_malloc(256));
    const pm_arena *first = pm_pool_of(blocks.front())->arena;
    const pm_arena *second = pm_pool_of(blocks.back())->arena;
    ASSERT_NE(first, second);
    // Free 3 whole pools of the first arena and 1 of the second.
    std::vector<void *> kept;
    size_t freed_first = 0, freed_second = 0;
    for (void *b : blocks) {
        pm_pool *pool = pm_pool_of(b);
        size_t index = static_cast<size_t>(pool - pool->arena->pools);
        bool free_it = (pool->arena == first && index < 3) || (pool->arena == second && index < 1);
        if (free_it) {
            (pool->arena == first ? freed_first : freed_second)++;
            pm_obj_free(b);
        } else {
            kept.push_back(b);
        }
    }
    ASSERT_EQ(first->free_count, 3u);
    ASSERT_EQ(second->free_count, 1u);
    void *p = pm_obj_malloc(8);  // another class: needs a new pool
    EXPECT_EQ(pm_pool_of(p)->arena, second) << "the arena with fewer free pools is drained first";
    pm_obj_free(p);
    for (void *b : kept) pm_obj_free(b);
}

TEST_F(PymallocTest, AFullPoolReturnsToTheBackOfItsList) {
    GilScope gil;
    size_t capacity = pm_class_capacity(pm_size_class(400));
    std::vector<void *> blocks;
    for (size_t i = 0; i < capacity + 1; i++) blocks.push_back(pm_obj_malloc(400));
    pm_pool *full = pm_pool_of(blocks.front());
    pm_pool *other = pm_pool_of(blocks.back());
    ASSERT_NE(full, other);
    EXPECT_EQ(full->free, nullptr);
    EXPECT_TRUE(pm_pool_full(full));
    EXPECT_EQ(pm_main_heap.used[pm_size_class(400)], other);
    pm_obj_free(blocks.front());
    blocks.erase(blocks.begin());
    EXPECT_FALSE(pm_pool_full(full));
    // Back, not front: the head keeps serving until it is exhausted, so a pool that regains
    // one block is not made full again by the next malloc (pymalloc.c, "Used-list order").
    EXPECT_EQ(pm_main_heap.used[pm_size_class(400)], other);
    EXPECT_EQ(pm_main_heap.used_last[pm_size_class(400)], full);
    blocks.push_back(pm_obj_malloc(400));
    EXPECT_EQ(pm_pool_of(blocks.back()), other) << "the head pool serves first";
    for (void *b : blocks) pm_obj_free(b);
}

// Takes pools from the arenas until one has never been used (its pages never touched).
pm_pool *TakeFreshPool(std::vector<pm_pool *> *taken) PM_GIL_REQUIRED {
    for (;;) {
        pm_pool *pool = pm_arena_take_pool();
        if (pool == nullptr) return nullptr;
        taken->push_back(pool);
        if (pool->size_class == PM_NO_CLASS) return pool;
    }
}

// The default arena allocator maps arenas sixteen at a time (one mmap, not one or four an
// arena), yet an arena that empties still goes back to the OS on its own, and the arenas of
// a mapping not yet handed out hold no memory. mincore(2) fails with ENOMEM on unmapped
// addresses, which ResidentPages reports as SIZE_MAX.
TEST_F(PymallocTest, ArenasMappedAheadHoldNoMemoryAndEachGoesBackAlone) {
    GilScope gil;
    pm_set_arena_reserve(0);
    ArenaSpy spy;
    spy.Install();
    std::vector<void *> blocks;
    size_t per_arena = PM_POOLS_PER_ARENA * pm_class_capacity(pm_size_class(64));
    for (size_t i = 0; i < 3 * per_arena; i++) blocks.push_back(pm_obj_malloc(64));
    ASSERT_GE(spy.allocs, 3);
    // The arena after the newest is mapped ahead unless the newest ended a mapping.
    uintptr_t last = spy.arenas.back();
    size_t ahead = ResidentPages(last + pm_arena_size(), pm_arena_size());
    EXPECT_TRUE(ahead == 0 || ahead == SIZE_MAX) << ahead << " pages of an unused arena resident";
    std::vector<uintptr_t> made = spy.arenas;
    for (void *p : blocks) pm_obj_free(p);
    ASSERT_EQ(spy.frees, spy.allocs);
    for (uintptr_t arena : made) {
        EXPECT_EQ(SIZE_MAX, ResidentPages(arena, pm_arena_size()))
            << "the arena at " << reinterpret_cast<void *>(arena) << " is still mapped";
    }
    spy.Uninstall();
}

// Memory is touched only as it is needed: a pool's first block faults in its first page
// alone. The one exception is a class that has filled a pool: its next fresh pool is
// faulted in whole, in one call, because it will very likely fill too.
TEST_F(PymallocTest, PagesAreTouchedAsNeededExceptAGrowingClassesNextPool) {
    GilScope gil;
    std::vector<pm_pool *> taken;
    pm_pool *lazy = TakeFreshPool(&taken);
    pm_pool *grown = TakeFreshPool(&taken);
    ASSERT_NE(nullptr, lazy);
    ASSERT_NE(nullptr, grown);
    ASSERT_EQ(0u, ResidentPages(lazy->memory, PM_POOL_SIZE));
    ASSERT_EQ(0u, ResidentPages(grown->memory, PM_POOL_SIZE));

    pm_heap heap{};  // a heap none of whose classes has filled a pool
    const unsigned size_class = 3;
    pm_pool_populate_if_growing(&heap, lazy, size_class);
    pm_pool_prepare(lazy, size_class);  // links the blocks of the first page
    EXPECT_EQ(1u, ResidentPages(lazy->memory, PM_POOL_SIZE)) << "a first pool is touched lazily";

    heap.filled_classes = 1u << size_class;
    pm_pool_populate_if_growing(&heap, grown, size_class);
    size_t pages = PM_POOL_SIZE / static_cast<size_t>(sysconf(_SC_PAGESIZE));
    // MADV_POPULATE_WRITE needs Linux 5.14; without it the pages stay lazy.
    void *probe = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(MAP_FAILED, probe);
    bool kernel_populates = madvise(probe, 4096, 23 /* MADV_POPULATE_WRITE */) == 0;
    munmap(probe, 4096);
    EXPECT_EQ(kernel_populates ? pages : 0u, ResidentPages(grown->memory, PM_POOL_SIZE));

    // Give everything back: the carved pool holds only free blocks.
    for (pm_pool *pool : taken) pm_arena_return_pool(pool);
    EXPECT_EQ(nullptr, pm_heap_check());
}

TEST_F(PymallocTest, RandomChurnKeepsTheHeapConsistent) {
    GilScope gil;
    std::mt19937 rng(7);
    std::vector<std::pair<unsigned char *, size_t>> live;
    for (int step = 0; step < 200000; step++) {
        if (live.empty() || rng() % 3 != 0) {
            size_t n = 1 + rng() % 600;
            auto *p = static_cast<unsigned char *>(rng() % 2 ? pm_obj_malloc(n) : pm_mem_malloc(n));
            ASSERT_NE(p, nullptr);
            memset(p, (int)(n & 0xFF), n);
            live.emplace_back(p, n);
        } else {
            size_t i = rng() % live.size();
            auto [p, n] = live[i];
            for (size_t k = 0; k < n; k++) ASSERT_EQ(p[k], (unsigned char)(n & 0xFF));
            if (rng() % 4 == 0) {
                size_t m = 1 + rng() % 600;
                auto *q = static_cast<unsigned char *>(pm_obj_realloc(p, m));
                ASSERT_NE(q, nullptr);
                for (size_t k = 0; k < std::min(n, m); k++) ASSERT_EQ(q[k], (unsigned char)(n & 0xFF));
                memset(q, (int)(m & 0xFF), m);
                live[i] = {q, m};
                continue;
            }
            pm_obj_free(p);
            live[i] = live.back();
            live.pop_back();
        }
        if (step % 20000 == 0) {
            ASSERT_EQ(pm_heap_check(), nullptr) << "step " << step;
        }
    }
    for (auto [p, n] : live) pm_obj_free(p);
}

}  // namespace
