// fork() while other threads allocate and free through their caches (free-threaded mode).
// The child must be able to allocate and free at once, free blocks that the parent's
// other threads allocated (their caches vanished mid-update), and pass the heap check.
// Tagged no_tsan: TSan does not support a multi-threaded process that forks and goes on.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "alloc/pymalloc_mt.h"

namespace {

constexpr int kWorkers = 3;
constexpr int kPublished = 256;  // per worker: blocks the child will free

std::atomic<bool> g_stop{false};
std::atomic<void *> g_published[kWorkers][kPublished];

void Worker(int id) {
    pm_assert_free_threaded();
    std::mt19937 rng(id + 1);
    std::vector<void *> mine;
    int published = 0;
    while (!g_stop.load(std::memory_order_relaxed)) {
        if (mine.size() < 2000 && rng() % 3 != 0) {
            void *p = pm_obj_malloc(1 + rng() % 512);
            if (p == nullptr) continue;
            if (published < kPublished && rng() % 50 == 0) {
                g_published[id][published++].store(p, std::memory_order_release);
            } else {
                mine.push_back(p);
            }
        } else if (!mine.empty()) {
            size_t at = rng() % mine.size();
            pm_obj_free(mine[at]);
            mine[at] = mine.back();
            mine.pop_back();
        }
    }
    for (void *p : mine) pm_obj_free(p);
}

// Runs in the child; returns its exit status.
int Child() {
    pm_assert_free_threaded();
    std::vector<void *> blocks;
    for (int i = 0; i < 20000; i++) {
        void *p = pm_obj_malloc(1 + i % 512);
        if (p == nullptr) return 10;
        memset(p, 0xab, 1);
        blocks.push_back(p);
    }
    for (void *p : blocks) pm_obj_free(p);
    // Blocks of threads that do not exist here.
    for (auto &row : g_published) {
        for (auto &slot : row) {
            void *p = slot.load(std::memory_order_acquire);
            if (p != nullptr) pm_obj_free(p);
        }
    }
    pm_collect();
    const char *problem = pm_heap_check();
    if (problem != nullptr) {
        fprintf(stderr, "child heap check: %s\n", problem);
        return 11;
    }
    return 0;
}

TEST(ThreadCacheForkTest, ChildAllocatesAndFreesWhileParentThreadsWereBusy) {
    std::vector<std::thread> workers;
    for (int id = 0; id < kWorkers; id++) workers.emplace_back(Worker, id);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    // Several forks, each at an arbitrary point of the workers' loops.
    for (int round = 0; round < 5; round++) {
        pid_t pid = fork();
        ASSERT_NE(pid, -1);
        if (pid == 0) _exit(Child());
        int status = 0;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status)) << "child died, status " << status;
        EXPECT_EQ(WEXITSTATUS(status), 0) << "round " << round;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    g_stop = true;
    for (auto &w : workers) w.join();
    pm_assert_free_threaded();
    for (auto &row : g_published) {
        for (auto &slot : row) pm_obj_free(slot.exchange(nullptr));
    }
    pm_collect();
    const char *problem = pm_heap_check();
    EXPECT_EQ(problem == nullptr ? "" : std::string(problem), "");
    EXPECT_EQ(pm_allocated_blocks(), 0u);
}

}  // namespace

int main(int argc, char **argv) {
    pm_config config;
    pm_config_init(&config);
    config.free_threaded = 1;
    if (pm_init(&config) != 0) return 2;
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
