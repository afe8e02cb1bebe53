// resident_pages.h — how much of a range is in memory, for tests that check that memory
// is touched only when needed and given back when freed.
#ifndef PM_TESTS_SUPPORT_RESIDENT_PAGES_H
#define PM_TESTS_SUPPORT_RESIDENT_PAGES_H

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <vector>

// Pages of [p, p + size) in memory, by mincore(2); SIZE_MAX when any part of the range is
// not mapped at all (mincore fails with ENOMEM), which is how a test sees an unmapped arena.
inline size_t ResidentPages(uintptr_t p, size_t size) {
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    std::vector<unsigned char> in_core(size / page);
    if (mincore(reinterpret_cast<void *>(p), size, in_core.data()) != 0) return SIZE_MAX;
    size_t resident = 0;
    for (unsigned char c : in_core) resident += c & 1;
    return resident;
}

#endif  // PM_TESTS_SUPPORT_RESIDENT_PAGES_H
