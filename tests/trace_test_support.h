// trace_test_support.h — a frame provider for the tracing tests: each thread pushes the
// (file, line) frames it pretends to run in, as a language runtime would hand over its own
// stack, and the tracer records them. Filenames are string literals (they must outlive the
// traces), frames are most recent first.
#ifndef PM_TESTS_TRACE_TEST_SUPPORT_H
#define PM_TESTS_TRACE_TEST_SUPPORT_H

#include <stddef.h>

#include <vector>

#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"

namespace trace_test {

inline std::vector<pm_trace_frame> &Stack() {
    static thread_local std::vector<pm_trace_frame> stack;
    return stack;
}

// The provider: copies this thread's stack, most recent (last pushed) first.
inline size_t ProvideFrames(void *, pm_trace_frame *frames, size_t max_frames) {
    const std::vector<pm_trace_frame> &stack = Stack();
    size_t n = 0;
    for (auto it = stack.rbegin(); it != stack.rend() && n < max_frames; ++it) frames[n++] = *it;
    return n;
}

// Pushes a frame for the scope of the object.
class Frame {
  public:
    Frame(const char *file, size_t line) { Stack().push_back(pm_trace_frame{file, line}); }
    ~Frame() { Stack().pop_back(); }
    Frame(const Frame &) = delete;
    Frame &operator=(const Frame &) = delete;
};

// A fixture whose tests trace with ProvideFrames installed; tracing is stopped after each.
class ProvidedFramesTest : public ::testing::Test {
  protected:
    void SetUp() override { ASSERT_EQ(0, pm_trace_set_frame_provider(ProvideFrames, nullptr)); }
    void TearDown() override {
        pm_trace_stop();
        ASSERT_EQ(0, pm_trace_set_frame_provider(nullptr, nullptr));
    }
};

inline size_t Current() {
    size_t current = 0;
    pm_trace_get_traced_memory(&current, nullptr);
    return current;
}

inline size_t Peak() {
    size_t peak = 0;
    pm_trace_get_traced_memory(nullptr, &peak);
    return peak;
}

}  // namespace trace_test

#endif  // PM_TESTS_TRACE_TEST_SUPPORT_H
