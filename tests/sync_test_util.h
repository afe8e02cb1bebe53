// tests/sync_test_util.h — small helpers shared by the sync_* tests (header-only, testonly).
//
// Thread scaffolding here must not add happens-before edges between the threads under
// test, or it could hide a missing TSan annotation in sync/. So: threads are created and
// joined (edges only at the start and end, which the tests account for), and the spin
// helper only yields; it never touches shared memory.
#ifndef PM_TESTS_SYNC_TEST_UTIL_H
#define PM_TESTS_SYNC_TEST_UTIL_H

#include <functional>
#include <thread>
#include <vector>

#include "sync/sync.h"

namespace sync_test {

// Threads per stress test: more than the 2 cores of the test machines, so preemption
// inside critical sections actually happens, but few enough to stay fast under TSan.
constexpr int kThreads = 4;

// For spin-wait loops in tests: PAUSE, and every 64th round give the core away (the other
// side of the hand-off may be waiting for it on a 2-core machine).
inline void Backoff(unsigned &spins) {
    if (++spins % 64 == 0) {
        std::this_thread::yield();
    } else {
        pm_cpu_relax();
    }
}

// Runs body(0) .. body(n-1) on n threads and joins them all.
inline void RunThreads(int n, const std::function<void(int)> &body) {
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; i++) threads.emplace_back(body, i);
    for (std::thread &t : threads) t.join();
}

}  // namespace sync_test

#endif  // PM_TESTS_SYNC_TEST_UTIL_H
