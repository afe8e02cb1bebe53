// tests/gil_annotations_test.cc — runs the C functions of tests/gil_annotations_c.c, whose
// real test is that they compile clean under --config=clang (-Wthread-safety -Werror); see
// that file for the by-hand negative check. Here: they also do what they say, from C++,
// whose calls are checked by the same analysis.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "gil/gil.h"
#include "tests/gil_annotations_c.h"

namespace {

int CountUnderGil() {
    pm_gil_acquire();
    const int n = gil_annot_count();
    pm_gil_release();
    return n;
}

TEST(GilAnnotations, AnnotatedCallersWork) {
    const int start = CountUnderGil();

    gil_annot_acquire_and_bump(3);
    EXPECT_EQ(CountUnderGil(), start + 3);

    pm_gil_acquire();
    gil_annot_bump_twice();
    gil_annot_bump_after_assert();
    EXPECT_EQ(gil_annot_count(), start + 6);
    pm_gil_release();
}

TEST(GilAnnotations, GuardedCounterIsExactAcrossThreads) {
    const int start = CountUnderGil();
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; t++) threads.emplace_back([] { gil_annot_acquire_and_bump(1000); });
    for (std::thread &t : threads) t.join();
    EXPECT_EQ(CountUnderGil(), start + 3000);
}

}  // namespace
