// Per-thread pool caches (alloc/thread_cache.c): the mem and object domains from many
// threads, blocks freed by threads that do not own them, threads that come and go.
//
// One source, three binaries (tests/BUILD.bazel), each choosing its mode in main() before
// the first allocation, as an embedder would:
//   thread_cache_test            free-threaded: no GIL anywhere
//   thread_cache_gil_test        GIL mode with thread caches: every call holds the GIL
//   thread_cache_debug_test      free-threaded with the debug hooks on every domain
// Every test ends with the whole heap checked (pm_heap_check) and every block accounted
// for (pm_allocated_blocks back to where it started). Run them under --config=tsan: the
// stress tests are the proof that the lock-free paths race with nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "alloc/internal/pymalloc.h"
#include "alloc/pymalloc_mt.h"
#include "tests/support/gil_scope.h"
#include "tests/support/resident_pages.h"

namespace {

#if defined(PM_TEST_GIL_CACHED)
constexpr bool kFreeThreaded = false;
using AllocScope = GilScope;  // GIL mode: each call holds the GIL
#else
constexpr bool kFreeThreaded = true;
// Free-threaded: no lock at all; the analysis is told so, and it is checked at run time.
class PM_SCOPED_CAPABILITY AllocScope {
  public:
    AllocScope() PM_ACQUIRE(pm_gil) { pm_assert_free_threaded(); }
    ~AllocScope() PM_RELEASE() {}
    AllocScope(const AllocScope &) = delete;
    AllocScope &operator=(const AllocScope &) = delete;
};
#endif

// A block and what we know about it: where it came from and what it must still contain.
struct Block {
    unsigned char *ptr;
    size_t size;
    pm_domain domain;
    unsigned char tag;
};

void *Alloc(pm_domain domain, size_t size, bool zeroed) {
    AllocScope scope;
    switch (domain) {
    case PM_DOMAIN_RAW:
        return zeroed ? pm_raw_calloc(1, size) : pm_raw_malloc(size);
    case PM_DOMAIN_MEM:
        return zeroed ? pm_mem_calloc(1, size) : pm_mem_malloc(size);
    default:
        return zeroed ? pm_obj_calloc(1, size) : pm_obj_malloc(size);
    }
}

void *Realloc(pm_domain domain, void *p, size_t size) {
    AllocScope scope;
    switch (domain) {
    case PM_DOMAIN_RAW:
        return pm_raw_realloc(p, size);
    case PM_DOMAIN_MEM:
        return pm_mem_realloc(p, size);
    default:
        return pm_obj_realloc(p, size);
    }
}

void Free(pm_domain domain, void *p) {
    AllocScope scope;
    switch (domain) {
    case PM_DOMAIN_RAW:
        pm_raw_free(p);
        break;
    case PM_DOMAIN_MEM:
        pm_mem_free(p);
        break;
    default:
        pm_obj_free(p);
        break;
    }
}

// Returns the first byte that is not `tag`, or -1.
long FirstWrongByte(const Block &b) {
    for (size_t i = 0; i < b.size; i++) {
        if (b.ptr[i] != b.tag) return static_cast<long>(i);
    }
    return -1;
}

size_t AllocatedBlocks() {
    AllocScope scope;
    return pm_allocated_blocks();
}

std::string HeapCheck() {
    AllocScope scope;
    const char *problem = pm_heap_check();
    return problem == nullptr ? "" : problem;
}

// Blocks handed between threads: a thread puts one in, any thread takes it out and frees
// it. The mutex orders the hand-over (the block's contents happen-before the free).
class Mailbox {
  public:
    void Put(const Block &b) {
        std::lock_guard<std::mutex> lock(mutex_);
        blocks_.push_back(b);
    }
    bool Take(Block *out) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (blocks_.empty()) return false;
        *out = blocks_.front();
        blocks_.pop_front();
        return true;
    }

  private:
    std::mutex mutex_;
    std::deque<Block> blocks_;
};

std::atomic<long> g_failures{0};

void Check(bool ok, const char *what, const Block &b) {
    if (ok) return;
    if (g_failures.fetch_add(1) < 5) {
        ADD_FAILURE() << what << ": block " << static_cast<void *>(b.ptr) << " size " << b.size
                      << " domain " << b.domain << " tag " << int(b.tag)
                      << " first wrong byte " << FirstWrongByte(b);
    }
}

void FreeChecked(const Block &b) {
    Check(FirstWrongByte(b) < 0, "contents changed before free", b);
    Free(b.domain, b.ptr);
}

// One worker of the stress run: random malloc/calloc/realloc/free over every size class and
// domain, handing a share of its blocks to other threads and freeing theirs. Leaves with
// some blocks still live, handed to the mailbox, so that they outlive the thread.
void StressWorker(unsigned seed, int operations, Mailbox *mailbox) {
    std::mt19937 rng(seed);
    std::vector<Block> mine;
    unsigned char next_tag = static_cast<unsigned char>(seed);
    auto random_size = [&]() -> size_t {
        unsigned r = rng() % 100;
        if (r < 2) return 0;
        if (r < 92) return 1 + rng() % PM_SMALL_REQUEST_THRESHOLD;  // every class
        return PM_SMALL_REQUEST_THRESHOLD + 1 + rng() % 2000;       // the raw fallback
    };
    for (int i = 0; i < operations; i++) {
        unsigned action = rng() % 100;
        if (action < 40 || mine.empty()) {
            Block b{nullptr, random_size(), static_cast<pm_domain>(rng() % 3), next_tag++};
            bool zeroed = rng() % 4 == 0;
            b.ptr = static_cast<unsigned char *>(Alloc(b.domain, b.size, zeroed));
            Check(b.ptr != nullptr, "allocation failed", b);
            if (b.ptr == nullptr) continue;
            if (zeroed) {
                Block zero = b;
                zero.tag = 0;
                Check(FirstWrongByte(zero) < 0, "calloc memory not zeroed", zero);
            }
            memset(b.ptr, b.tag, b.size);
            mine.push_back(b);
        } else if (action < 60) {
            size_t at = rng() % mine.size();
            FreeChecked(mine[at]);
            mine[at] = mine.back();
            mine.pop_back();
        } else if (action < 72) {
            Block &b = mine[rng() % mine.size()];
            Check(FirstWrongByte(b) < 0, "contents changed before realloc", b);
            size_t size = random_size();
            auto *q = static_cast<unsigned char *>(Realloc(b.domain, b.ptr, size));
            Check(q != nullptr, "realloc failed", b);
            if (q == nullptr) continue;
            b.ptr = q;
            b.size = std::min(b.size, size);
            Check(FirstWrongByte(b) < 0, "realloc lost the contents", b);
            b.size = size;
            memset(b.ptr, b.tag, b.size);
        } else if (action < 86) {
            size_t at = rng() % mine.size();
            mailbox->Put(mine[at]);
            mine[at] = mine.back();
            mine.pop_back();
        } else {
            Block b;
            if (mailbox->Take(&b)) FreeChecked(b);
        }
    }
    // Half of what is left dies with this thread's cache; the rest outlives the thread.
    for (size_t i = 0; i < mine.size(); i++) {
        if (i % 2 == 0) {
            FreeChecked(mine[i]);
        } else {
            mailbox->Put(mine[i]);
        }
    }
}

class ThreadCacheTest : public ::testing::Test {
  protected:
    void SetUp() override {
        g_failures = 0;
        blocks_before_ = AllocatedBlocks();
    }
    void TearDown() override {
        pm_collect();
        EXPECT_EQ(HeapCheck(), "");
        EXPECT_EQ(AllocatedBlocks(), blocks_before_) << "blocks were lost or leaked";
    }
    size_t blocks_before_ = 0;
};

TEST_F(ThreadCacheTest, TheModeIsFixedByTheFirstCall) {
    pm_config config;
    pm_get_config(&config);
    EXPECT_EQ(config.free_threaded, kFreeThreaded ? 1 : 0);
    EXPECT_EQ(config.thread_caches, 1);
    EXPECT_EQ(pm_is_free_threaded(), kFreeThreaded ? 1 : 0);
    Block b{static_cast<unsigned char *>(Alloc(PM_DOMAIN_OBJ, 8, false)), 0, PM_DOMAIN_OBJ, 0};
    pm_config_init(&config);
    errno = 0;
    EXPECT_EQ(pm_init(&config), -1) << "the mode cannot change under live blocks";
    EXPECT_EQ(errno, EBUSY);
    errno = 0;
    EXPECT_EQ(pm_init(nullptr), -1);
    EXPECT_EQ(errno, EINVAL);
    Free(b.domain, b.ptr);
}

TEST_F(ThreadCacheTest, EachThreadAllocatesFromAHeapOfItsOwn) {
    void *a = Alloc(PM_DOMAIN_OBJ, 64, false);
    void *b = nullptr;
    std::thread([&] { b = Alloc(PM_DOMAIN_OBJ, 64, false); }).join();
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    EXPECT_NE(pm_pool_of(a), pm_pool_of(b)) << "two threads share a pool";
    EXPECT_NE(pm_pool_owner(pm_pool_of(a)), pm_pool_owner(pm_pool_of(b)));
    Free(PM_DOMAIN_OBJ, a);
    Free(PM_DOMAIN_OBJ, b);  // a block of an exited thread, freed by another
}

TEST_F(ThreadCacheTest, BlocksFreedByAnotherThreadComeBackToTheirOwner) {
    constexpr int kBlocks = 5000;
    std::vector<void *> blocks;
    for (int i = 0; i < kBlocks; i++) blocks.push_back(Alloc(PM_DOMAIN_MEM, 48, false));
    pm_pool *first_pool = pm_pool_of(blocks.front());
    pm_heap *owner = pm_pool_owner(first_pool);
    // A thread that never allocated anything frees them all.
    std::thread([&] {
        for (void *p : blocks) Free(PM_DOMAIN_MEM, p);
    }).join();
    EXPECT_EQ(pm_pool_owner(first_pool), owner) << "a remote free moved the pool";
    EXPECT_FALSE(pm_lifo_is_empty(&owner->remote)) << "the frees wait for the owner";
    pm_collect();
    EXPECT_TRUE(pm_lifo_is_empty(&owner->remote));
    // The owner gets the very same blocks back.
    std::vector<void *> again;
    for (int i = 0; i < 100; i++) again.push_back(Alloc(PM_DOMAIN_MEM, 48, false));
    for (void *p : again) {
        EXPECT_TRUE(std::find(blocks.begin(), blocks.end(), p) != blocks.end());
        Free(PM_DOMAIN_MEM, p);
    }
}

TEST_F(ThreadCacheTest, AnExitedThreadsPoolsAreAdoptedByOthers) {
    char json[4096];
    std::vector<void *> survivors;
    std::thread([&] {
        std::vector<void *> all;
        for (int i = 0; i < 3000; i++) all.push_back(Alloc(PM_DOMAIN_OBJ, 100, false));
        for (size_t i = 0; i < all.size(); i++) {
            if (i % 3 == 0) {
                survivors.push_back(all[i]);
            } else {
                Free(PM_DOMAIN_OBJ, all[i]);
            }
        }
    }).join();  // the thread's partly used pools go to the shared lists
    size_t adopted_before;
    {
        AllocScope scope;
        ASSERT_GT(pm_stats_json(json, sizeof json), 0u);
    }
    std::string text(json);
    auto number_after = [&](const std::string &key) {
        size_t at = text.find("\"" + key + "\":");
        EXPECT_NE(at, std::string::npos) << key;
        return std::stoull(text.substr(at + key.size() + 3));
    };
    EXPECT_GT(number_after("shared_pools"), 0u);
    adopted_before = number_after("pools_adopted");
    // Another thread needing that class takes them instead of new pools from the arenas.
    std::vector<void *> fresh;
    std::thread([&] {
        for (int i = 0; i < 1000; i++) fresh.push_back(Alloc(PM_DOMAIN_OBJ, 100, false));
    }).join();
    {
        AllocScope scope;
        ASSERT_GT(pm_stats_json(json, sizeof json), 0u);
    }
    text = json;
    EXPECT_GT(number_after("pools_adopted"), adopted_before);
    for (void *p : survivors) Free(PM_DOMAIN_OBJ, p);
    for (void *p : fresh) Free(PM_DOMAIN_OBJ, p);
}

TEST_F(ThreadCacheTest, AnExitedThreadsFullPoolGoesSharedOnItsFirstFree) {
    std::vector<void *> blocks;
    pm_pool *full = nullptr;
    std::thread([&] {
        blocks.push_back(Alloc(PM_DOMAIN_OBJ, 200, false));
        pm_pool *pool = pm_pool_of(blocks[0]);
        while (!pm_pool_full(pool)) blocks.push_back(Alloc(PM_DOMAIN_OBJ, 200, false));
        full = pool;
    }).join();
    ASSERT_NE(full, nullptr);
    pm_heap *exited = pm_pool_owner(full);
    EXPECT_EQ(exited->attached, 0) << "the thread has exited";
    std::vector<void *> in_full;
    for (void *p : blocks) {
        if (pm_pool_of(p) == full) in_full.push_back(p);
    }
    Free(PM_DOMAIN_OBJ, in_full[0]);
    EXPECT_EQ(pm_pool_owner(full), &pm_shared_heap) << "claimed by the shared heap at once";
    EXPECT_FALSE(pm_pool_full(full));
    for (void *p : blocks) {
        if (p != in_full[0]) Free(PM_DOMAIN_OBJ, p);
    }
}

TEST_F(ThreadCacheTest, DetachHandsEverythingBackAndTheThreadMayComeBack) {
    std::thread([&] {
        std::vector<void *> blocks;
        for (int i = 0; i < 2000; i++) blocks.push_back(Alloc(PM_DOMAIN_OBJ, 1 + i % 512, false));
        for (void *p : blocks) Free(PM_DOMAIN_OBJ, p);
        pm_thread_detach();
        EXPECT_EQ(pm_own_heap(), &pm_unattached_heap);
        pm_thread_detach();  // twice is harmless
        void *p = Alloc(PM_DOMAIN_OBJ, 32, false);  // attaches again
        EXPECT_NE(pm_own_heap(), &pm_unattached_heap);
        Free(PM_DOMAIN_OBJ, p);
    }).join();
}

// An arena that empties goes back to the OS before the call that emptied it returns. With
// thread caches the arena is released under the pool lock and unmapped just after it
// (arena.c, "Releasing"): that must not become "some time later". Only arenas all of whose
// pools this thread took are checked: others may hold pools of earlier tests' threads.
TEST_F(ThreadCacheTest, AnArenaThatEmptiesIsUnmappedBeforeTheFreeReturns) {
    size_t reserve;
    {
        AllocScope scope;
        reserve = pm_get_arena_reserve();
        pm_set_arena_reserve(0);
    }
    std::thread([&] {
        std::vector<void *> blocks;
        size_t per_arena = PM_POOLS_PER_ARENA * pm_class_capacity(pm_size_class(64));
        for (size_t i = 0; i < 4 * per_arena; i++) {
            blocks.push_back(Alloc(PM_DOMAIN_OBJ, 64, false));
            ASSERT_NE(nullptr, blocks.back());
        }
        std::vector<uintptr_t> ours;
        for (void *p : blocks) {
            const pm_arena *arena = pm_pool_of(p)->arena;
            bool all_mine = true;
            for (uint32_t i = 0; i < arena->total_pools; i++) {
                all_mine = all_mine && pm_pool_owner(&arena->pools[i]) == pm_own_heap();
            }
            if (all_mine && std::find(ours.begin(), ours.end(), arena->address) == ours.end()) {
                ours.push_back(arena->address);
            }
        }
        ASSERT_GE(ours.size(), 2u);
        for (void *p : blocks) Free(PM_DOMAIN_OBJ, p);
        pm_thread_detach();  // what the cache kept goes back too
        for (uintptr_t arena : ours) {
            EXPECT_EQ(SIZE_MAX, ResidentPages(arena, pm_arena_size()))
                << "the arena at " << reinterpret_cast<void *>(arena) << " is still mapped";
        }
    }).join();
    AllocScope scope;
    pm_set_arena_reserve(reserve);
}

// A size from the environment (tools/stress_thread_caches.sh sets them for long runs).
int FromEnv(const char *name, int fallback) {
    const char *text = getenv(name);
    return text != nullptr && atoi(text) > 0 ? atoi(text) : fallback;
}

TEST_F(ThreadCacheTest, StressWithThreadsComingAndGoing) {
    // 2 to 8 threads at once, 16 in all by default; each hands blocks to the others and some
    // of its blocks outlive it. Short enough for TSan in CI; tools/stress_thread_caches.sh
    // runs it long.
    const int kWaves = FromEnv("PM_STRESS_WAVES", 4);
    const int kOperations = FromEnv("PM_STRESS_OPERATIONS", 3000);
    Mailbox mailbox;
    unsigned seed = 1;
    for (int wave = 0; wave < kWaves; wave++) {
        int threads = 2 << (wave % 3);  // 2, 4, 8, 2
        std::vector<std::thread> workers;
        for (int t = 0; t < threads; t++) {
            workers.emplace_back(StressWorker, seed++, kOperations, &mailbox);
        }
        // Meanwhile this thread frees what the workers hand over.
        for (int i = 0; i < kOperations; i++) {
            Block b;
            if (mailbox.Take(&b)) FreeChecked(b);
        }
        for (auto &w : workers) w.join();
    }
    Block b;
    while (mailbox.Take(&b)) FreeChecked(b);
    EXPECT_EQ(g_failures.load(), 0);
}

// Sampling while threads allocate, hand blocks over and exit: in free-threaded mode and in
// GIL mode with caches the tracer samples over pymalloc (free's fast path never asks it;
// malloc's slow path counts down on each thread), with the debug hooks it wraps them.
// Either way every sampled block is untraced by its free, whichever thread frees it.
TEST_F(ThreadCacheTest, SamplingStaysExactWhileThreadsComeAndGo) {
    {
        AllocScope scope;
        ASSERT_EQ(0, pm_trace_start_sampling(1, 2048));
    }
    Mailbox mailbox;
    size_t traced_midway = 0;
    unsigned seed = 100;
    for (int wave = 0; wave < 2; wave++) {
        std::vector<std::thread> workers;
        for (int t = 0; t < 4; t++) workers.emplace_back(StressWorker, seed++, 2000, &mailbox);
        for (auto &w : workers) w.join();
        size_t current = 0;
        pm_trace_get_traced_memory(&current, nullptr);
        traced_midway = std::max(traced_midway, current);
    }
    Block b;
    while (mailbox.Take(&b)) FreeChecked(b);
    size_t current = 1;
    pm_trace_get_traced_memory(&current, nullptr);
    EXPECT_EQ(current, 0u) << "a sampled block outlived its free in the tracer";
    EXPECT_GT(traced_midway, 0u) << "blocks left in the mailbox were sampled at this rate";
    pm_trace_stop();
    EXPECT_EQ(g_failures.load(), 0);
}

TEST_F(ThreadCacheTest, CachesStayWithinTheirBounds) {
    pm_config config;
    pm_get_config(&config);
    // Fill many pools of one class, then empty them all: the cache may keep only
    // `pools_per_class` of them (and its byte bound); the rest go back to their arenas.
    char json[4096];
    auto to_arena = [&]() {
        AllocScope scope;
        EXPECT_GT(pm_stats_json(json, sizeof json), 0u);
        std::string text(json);
        size_t at = text.find("\"pools_to_arena\":");
        return std::stoull(text.substr(at + 17));
    };
    unsigned long long returned_before = to_arena();
    std::thread([&] {
        std::vector<void *> blocks;
        blocks.push_back(Alloc(PM_DOMAIN_OBJ, 256, false));
        unsigned size_class = pm_pool_of(blocks[0])->size_class;  // with the debug hooks' pads
        size_t pools = 4 * config.cache_pools_per_class;
        while (blocks.size() < pools * pm_class_capacity(size_class)) {
            blocks.push_back(Alloc(PM_DOMAIN_OBJ, 256, false));
        }
        for (void *p : blocks) Free(PM_DOMAIN_OBJ, p);
        pm_heap *heap = pm_own_heap();
        EXPECT_LE(heap->stash_per_class[size_class], config.cache_pools_per_class);
        EXPECT_LE(heap->stash_count * PM_POOL_SIZE, config.cache_bytes_per_thread);
        EXPECT_EQ(heap->used[size_class], &pm_no_pool);
    }).join();
    EXPECT_GE(to_arena(), returned_before + 2 * config.cache_pools_per_class)
        << "the pools beyond the bound went back to their arenas";
}

TEST_F(ThreadCacheTest, ProducerAndConsumerOnDifferentThreads) {
    // Every block is freed by the other thread, through a bounded hand-over queue.
    constexpr int kBlocks = 20000;
    std::mutex mutex;
    std::deque<void *> queue;
    std::atomic<bool> done{false};
    std::thread producer([&] {
        for (int i = 0; i < kBlocks; i++) {
            void *p = Alloc(PM_DOMAIN_OBJ, 16 + (i % 8) * 16, false);
            ASSERT_NE(p, nullptr);
            memset(p, 0x5a, 16);
            for (;;) {
                std::lock_guard<std::mutex> lock(mutex);
                if (queue.size() < 1000) {
                    queue.push_back(p);
                    break;
                }
            }
        }
        done = true;
    });
    std::thread consumer([&] {
        for (;;) {
            void *p = nullptr;
            {
                std::lock_guard<std::mutex> lock(mutex);
                if (!queue.empty()) {
                    p = queue.front();
                    queue.pop_front();
                }
            }
            if (p == nullptr) {
                if (done) {
                    std::lock_guard<std::mutex> lock(mutex);
                    if (queue.empty()) break;
                }
                continue;
            }
            EXPECT_EQ(static_cast<unsigned char *>(p)[15], 0x5a);
            Free(PM_DOMAIN_OBJ, p);
        }
    });
    producer.join();
    consumer.join();
}

#ifndef NDEBUG
// Debug builds check the lock order on every acquisition: registry, then pool.
TEST(ThreadCacheDeathTest, TakingTheRegistryLockUnderThePoolLockIsFatal) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            pm_pool_lock();
            pm_heap_walk_lock();  // registry, then pool: the wrong way round here
        },
        "registry lock: lock order violated \\(registry, then pool; never recursive\\)");
}
#endif

}  // namespace

int main(int argc, char **argv) {
    pm_config config;
    pm_config_init(&config);
    config.free_threaded = kFreeThreaded;
    config.thread_caches = 1;
    if (pm_init(&config) != 0) {
        perror("pm_init");
        return 2;
    }
#if defined(PM_TEST_DEBUG_HOOKS)
    {
        AllocScope scope;
        if (pm_setup_debug_hooks() != 0) {
            perror("pm_setup_debug_hooks");
            return 2;
        }
    }
#endif
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
