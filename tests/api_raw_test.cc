// api_raw_test.cc — the documented semantics of alloc/pymalloc_mt.h, black box.
//
// The raw domain in full (its entry points, its statistics), the argument rules that every
// domain applies before an allocator sees a request (zero sizes, sizes above PTRDIFF_MAX,
// overflowing calloc products, realloc(NULL, n), realloc(p, 0), failed realloc, free(NULL)),
// the validation of pm_get_allocator / pm_set_allocator, and the CPython names of
// alloc/pymem_compat.h from C (api_compat_c.c) and C++.
//
// "Without calling the allocator" is proved by installing a failing allocator from
// tests/support in pass-through mode, which counts every call that reaches it; sizes the C
// library must never see (it would abort under ASan) are stopped by its size threshold.
//
// The mem and object domains require the GIL: the argument-rule tests, which run over all
// three domains through function pointers, hold it for their whole body (GilScope; the raw
// domain ignores it), and so does the test that runs the C code (api_compat_c_run is
// PM_GIL_REQUIRED). The raw domain's own tests run without it.

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <climits>
#include <cstdlib>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "alloc/pymalloc_mt.h"
#include "alloc/pymem_compat.h"
#include "gtest/gtest.h"
#include "tests/api_compat_c.h"
#include "tests/support/failing_allocators.h"
#include "tests/support/gil_scope.h"

namespace {

constexpr size_t kPtrdiffMax = static_cast<size_t>(PTRDIFF_MAX);
constexpr size_t kTooBig = kPtrdiffMax + 1;
// Requests at least this big are failed by the counting allocator instead of reaching libc.
constexpr size_t kHuge = size_t{1} << 40;

// One domain's four entry points.
struct DomainApi {
    const char *name;
    pm_domain domain;
    void *(*malloc)(size_t);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void (*free)(void *);
};

const DomainApi kRaw = {"raw", PM_DOMAIN_RAW, pm_raw_malloc, pm_raw_calloc, pm_raw_realloc,
                        pm_raw_free};
const DomainApi kMem = {"mem", PM_DOMAIN_MEM, pm_mem_malloc, pm_mem_calloc, pm_mem_realloc,
                        pm_mem_free};
const DomainApi kObj = {"obj", PM_DOMAIN_OBJ, pm_obj_malloc, pm_obj_calloc, pm_obj_realloc,
                        pm_obj_free};
const DomainApi kDomains[] = {kRaw, kMem, kObj};

// A failing allocator installed in one domain for the scope; pass-through until armed.
class ScopedFailing {
  public:
    explicit ScopedFailing(pm_domain domain) {
        installed_ = pm_failing_allocator_install(&f_, domain) == 0;
        EXPECT_TRUE(installed_) << "errno " << errno;
    }
    ~ScopedFailing() {
        if (installed_) {
            EXPECT_EQ(0, pm_failing_allocator_uninstall(&f_)) << "errno " << errno;
        }
    }
    ScopedFailing(const ScopedFailing &) = delete;
    ScopedFailing &operator=(const ScopedFailing &) = delete;

    pm_fail_policy *policy() { return &f_.policy; }
    pm_failing_counts counts() const { return pm_failing_allocator_counts(&f_); }
    uint64_t total_calls() const {
        pm_failing_counts c = counts();
        return c.mallocs + c.callocs + c.reallocs + c.frees;
    }

  private:
    pm_failing_allocator f_;
    bool installed_ = false;
};

unsigned char PatternByte(size_t i, unsigned seed) {
    return static_cast<unsigned char>((i * 131u + seed * 7u + 1u) & 0xFFu);
}

void Fill(void *p, size_t n, unsigned seed) {
    auto *b = static_cast<unsigned char *>(p);
    for (size_t i = 0; i < n; i++) b[i] = PatternByte(i, seed);
}

// Returns the first index where the pattern differs, or n.
size_t PatternPrefix(const void *p, size_t n, unsigned seed) {
    const auto *b = static_cast<const unsigned char *>(p);
    for (size_t i = 0; i < n; i++) {
        if (b[i] != PatternByte(i, seed)) return i;
    }
    return n;
}

bool AllZero(const void *p, size_t n) {
    const auto *b = static_cast<const unsigned char *>(p);
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0) return false;
    }
    return true;
}

bool SameAllocator(const pm_allocator &a, const pm_allocator &b) {
    return a.ctx == b.ctx && a.malloc == b.malloc && a.calloc == b.calloc &&
           a.realloc == b.realloc && a.free == b.free;
}

pm_allocator Current(pm_domain domain) {
    pm_allocator a;
    memset(&a, 0, sizeof a);
    EXPECT_EQ(0, pm_get_allocator(domain, &a));
    return a;
}

// ---- argument rules, every domain ------------------------------------------------------

class ArgumentRulesTest : public ::testing::TestWithParam<DomainApi> {};

TEST_P(ArgumentRulesTest, ZeroBytesGiveDistinctNonNullPointers) {
    GilScope gil;
    const DomainApi &d = GetParam();
    std::vector<void *> blocks;
    for (int i = 0; i < 4; i++) blocks.push_back(d.malloc(0));
    blocks.push_back(d.calloc(0, 1));
    blocks.push_back(d.calloc(1, 0));
    blocks.push_back(d.calloc(0, 0));
    blocks.push_back(d.calloc(0, 64));
    blocks.push_back(d.calloc(64, 0));
    // A zero count with any size is zero bytes, not an overflow (and the reverse).
    blocks.push_back(d.calloc(0, SIZE_MAX));
    blocks.push_back(d.calloc(SIZE_MAX, 0));
    blocks.push_back(d.realloc(nullptr, 0));
    blocks.push_back(d.realloc(nullptr, 0));
    std::set<void *> distinct;
    for (size_t i = 0; i < blocks.size(); i++) {
        EXPECT_NE(nullptr, blocks[i]) << "request #" << i;
        distinct.insert(blocks[i]);
    }
    EXPECT_EQ(blocks.size(), distinct.size()) << "zero-byte blocks must be distinct";
    for (void *p : blocks) d.free(p);
}

TEST_P(ArgumentRulesTest, ZeroByteBlocksCanBeReallocatedAndFreed) {
    GilScope gil;
    const DomainApi &d = GetParam();
    void *p = d.malloc(0);
    ASSERT_NE(nullptr, p);
    void *q = d.realloc(p, 0);
    ASSERT_NE(nullptr, q);
    void *r = d.realloc(q, 40);
    ASSERT_NE(nullptr, r);
    Fill(r, 40, 1);
    EXPECT_EQ(40u, PatternPrefix(r, 40, 1));
    d.free(r);
}

TEST_P(ArgumentRulesTest, CallocOverflowReturnsNullWithoutCallingTheAllocator) {
    GilScope gil;
    const DomainApi &d = GetParam();
    ScopedFailing counting(d.domain);
    struct Request {
        size_t nelem, elsize;
    };
    const Request overflowing[] = {
        {kPtrdiffMax / 8 + 1, 8},     // just past PTRDIFF_MAX
        {8, kPtrdiffMax / 8 + 1},     // the same, operands swapped
        {kPtrdiffMax, 2},             // 2^64 - 2: fits size_t, not ptrdiff_t
        {2, kPtrdiffMax / 2 + 1},     // exactly 2^63
        {kTooBig, 1},                 // one element too big
        {1, kTooBig},                 // one element, too big
        {SIZE_MAX / 2 + 2, 2},        // wraps in size_t to 2: a naive product check passes
        {SIZE_MAX, 16},               // wraps to -16
        {SIZE_MAX, SIZE_MAX},         // wraps to 1
        {(size_t{1} << 32) + 1, (size_t{1} << 32) + 1},  // wraps to 2^33 + 1
    };
    for (const Request &r : overflowing) {
        errno = 0;
        EXPECT_EQ(nullptr, d.calloc(r.nelem, r.elsize))
            << d.name << " calloc(" << r.nelem << ", " << r.elsize << ")";
        EXPECT_EQ(0u, counting.total_calls())
            << "calloc(" << r.nelem << ", " << r.elsize << ") reached the allocator";
    }
}

TEST_P(ArgumentRulesTest, CallocUpToPtrdiffMaxReachesTheAllocator) {
    GilScope gil;
    const DomainApi &d = GetParam();
    ScopedFailing counting(d.domain);
    pm_fail_size_at_least(counting.policy(), kHuge);  // keep these away from libc
    struct Request {
        size_t nelem, elsize;
    };
    const Request at_limit[] = {
        {kPtrdiffMax, 1},
        {1, kPtrdiffMax},
        {kPtrdiffMax / 8, 8},
        {8, kPtrdiffMax / 8},
        {kPtrdiffMax / 3, 3},
    };
    uint64_t expected = 0;
    for (const Request &r : at_limit) {
        EXPECT_EQ(nullptr, d.calloc(r.nelem, r.elsize));
        expected++;
        EXPECT_EQ(expected, counting.counts().callocs)
            << "calloc(" << r.nelem << ", " << r.elsize << ") fits PTRDIFF_MAX but was refused";
    }
    EXPECT_EQ(expected, counting.counts().failures);
    EXPECT_EQ(0u, counting.counts().mallocs);
}

TEST_P(ArgumentRulesTest, SizesAbovePtrdiffMaxReturnNullWithoutCallingTheAllocator) {
    GilScope gil;
    const DomainApi &d = GetParam();
    ScopedFailing counting(d.domain);
    const size_t too_big[] = {kTooBig, kTooBig + 1, SIZE_MAX - 1, SIZE_MAX};
    for (size_t n : too_big) {
        EXPECT_EQ(nullptr, d.malloc(n)) << "malloc(" << n << ")";
        EXPECT_EQ(nullptr, d.realloc(nullptr, n)) << "realloc(NULL, " << n << ")";
    }
    EXPECT_EQ(0u, counting.total_calls());

    auto *p = static_cast<unsigned char *>(d.malloc(48));
    ASSERT_NE(nullptr, p);
    Fill(p, 48, 2);
    for (size_t n : too_big) {
        EXPECT_EQ(nullptr, d.realloc(p, n)) << "realloc(p, " << n << ")";
        EXPECT_EQ(48u, PatternPrefix(p, 48, 2)) << "a refused realloc changed the block";
    }
    pm_failing_counts c = counting.counts();
    EXPECT_EQ(1u, c.mallocs);
    EXPECT_EQ(0u, c.reallocs) << "a refused realloc reached the allocator";
    EXPECT_EQ(0u, c.frees) << "a refused realloc freed the block";
    // p is still a live block of this domain: it grows and frees normally.
    auto *q = static_cast<unsigned char *>(d.realloc(p, 96));
    ASSERT_NE(nullptr, q);
    EXPECT_EQ(48u, PatternPrefix(q, 48, 2));
    d.free(q);
}

TEST_P(ArgumentRulesTest, PtrdiffMaxItselfReachesTheAllocator) {
    GilScope gil;
    const DomainApi &d = GetParam();
    ScopedFailing counting(d.domain);
    pm_fail_size_at_least(counting.policy(), kHuge);
    EXPECT_EQ(nullptr, d.malloc(kPtrdiffMax));
    EXPECT_EQ(nullptr, d.realloc(nullptr, kPtrdiffMax));
    void *p = d.malloc(16);
    ASSERT_NE(nullptr, p);
    Fill(p, 16, 3);
    EXPECT_EQ(nullptr, d.realloc(p, kPtrdiffMax));
    pm_failing_counts c = counting.counts();
    EXPECT_EQ(2u, c.mallocs);
    EXPECT_EQ(2u, c.reallocs);
    EXPECT_EQ(3u, c.failures);
    EXPECT_EQ(16u, PatternPrefix(p, 16, 3));
    d.free(p);
}

TEST_P(ArgumentRulesTest, ReallocOfNullIsPassedOnAsReallocAndActsAsMalloc) {
    GilScope gil;
    const DomainApi &d = GetParam();
    ScopedFailing counting(d.domain);
    auto *p = static_cast<unsigned char *>(d.realloc(nullptr, 48));
    ASSERT_NE(nullptr, p);
    Fill(p, 48, 4);
    EXPECT_EQ(48u, PatternPrefix(p, 48, 4));
    pm_failing_counts c = counting.counts();
    // CPython hands realloc(NULL, n) to the allocator's realloc unchanged; so do we.
    EXPECT_EQ(1u, c.reallocs);
    EXPECT_EQ(0u, c.mallocs);
    d.free(p);
    EXPECT_EQ(1u, counting.counts().frees);
}

TEST_P(ArgumentRulesTest, ReallocToZeroReturnsAUsableBlockAndNeverFrees) {
    GilScope gil;
    const DomainApi &d = GetParam();
    ScopedFailing counting(d.domain);
    void *p = d.malloc(64);
    ASSERT_NE(nullptr, p);
    Fill(p, 64, 5);
    void *q = d.realloc(p, 0);
    ASSERT_NE(nullptr, q) << "realloc(p, 0) must not free and return NULL";
    EXPECT_EQ(0u, counting.counts().frees) << "realloc(p, 0) freed through the allocator";
    // Still a live block: it can be resized again, written, and freed once.
    auto *r = static_cast<unsigned char *>(d.realloc(q, 32));
    ASSERT_NE(nullptr, r);
    Fill(r, 32, 6);
    EXPECT_EQ(32u, PatternPrefix(r, 32, 6));
    void *s = d.realloc(r, 0);
    ASSERT_NE(nullptr, s);
    d.free(s);
    pm_failing_counts c = counting.counts();
    EXPECT_EQ(1u, c.mallocs);
    EXPECT_EQ(3u, c.reallocs);
    EXPECT_EQ(1u, c.frees);
}

TEST_P(ArgumentRulesTest, ReallocPreservesContent) {
    GilScope gil;
    const DomainApi &d = GetParam();
    // Grow and shrink across small, medium and large sizes; the common prefix survives.
    const size_t sizes[] = {1, 16, 0, 17, 512, 513, 0, 100, 4096, 300000, 0, 8, 1000, 3};
    size_t size = 24;
    void *p = d.malloc(size);
    ASSERT_NE(nullptr, p);
    unsigned seed = 10;
    Fill(p, size, seed);
    for (size_t next : sizes) {
        void *q = d.realloc(p, next);
        ASSERT_NE(nullptr, q) << "realloc to " << next;
        size_t keep = next < size ? next : size;
        EXPECT_EQ(keep, PatternPrefix(q, keep, seed)) << size << " -> " << next;
        p = q;
        size = next;
        Fill(p, size, ++seed);
    }
    d.free(p);
}

TEST_P(ArgumentRulesTest, FailedReallocReturnsNullAndKeepsTheBlock) {
    GilScope gil;
    const DomainApi &d = GetParam();
    ScopedFailing failing(d.domain);
    auto *p = static_cast<unsigned char *>(d.malloc(100));
    ASSERT_NE(nullptr, p);
    Fill(p, 100, 7);

    pm_fail_nth(failing.policy(), 1);
    EXPECT_EQ(nullptr, d.realloc(p, 200));
    EXPECT_EQ(100u, PatternPrefix(p, 100, 7));

    pm_fail_from_nth(failing.policy(), 1);
    const size_t attempts[] = {1000, 50, 100, 1, 0};
    for (size_t n : attempts) {
        EXPECT_EQ(nullptr, d.realloc(p, n)) << "realloc(p, " << n << ") while failing";
        EXPECT_EQ(100u, PatternPrefix(p, 100, 7)) << "failed realloc to " << n;
    }
    pm_failing_counts c = failing.counts();
    EXPECT_EQ(6u, c.failures);
    EXPECT_EQ(6u, c.reallocs);
    EXPECT_EQ(0u, c.frees) << "a failed realloc freed the block";

    pm_fail_never(failing.policy());
    auto *q = static_cast<unsigned char *>(d.realloc(p, 300));
    ASSERT_NE(nullptr, q);
    EXPECT_EQ(100u, PatternPrefix(q, 100, 7));
    d.free(q);
    EXPECT_EQ(1u, failing.counts().frees);
}

TEST_P(ArgumentRulesTest, FailedAllocationsReturnNull) {
    GilScope gil;
    const DomainApi &d = GetParam();
    ScopedFailing failing(d.domain);
    pm_fail_from_nth(failing.policy(), 1);
    EXPECT_EQ(nullptr, d.malloc(8));
    EXPECT_EQ(nullptr, d.malloc(0));
    EXPECT_EQ(nullptr, d.calloc(2, 4));
    EXPECT_EQ(nullptr, d.realloc(nullptr, 8));
    EXPECT_EQ(4u, failing.counts().failures);
    pm_fail_never(failing.policy());
    void *p = d.malloc(8);
    EXPECT_NE(nullptr, p);
    d.free(p);
}

TEST_P(ArgumentRulesTest, FreeOfNullDoesNothing) {
    GilScope gil;
    const DomainApi &d = GetParam();
    d.free(nullptr);
    {
        // With a hook installed too. CPython passes free(NULL) on to the mem and object
        // allocators (and a hook must accept it); only the raw domain is specified here to
        // stop it (see RawDomainTest.FreeOfNullDoesNotReachTheAllocator).
        ScopedFailing counting(d.domain);
        d.free(nullptr);
        d.free(nullptr);
        EXPECT_EQ(0u, counting.counts().mallocs + counting.counts().reallocs);
    }
    void *p = d.malloc(10);
    ASSERT_NE(nullptr, p);
    d.free(p);
}

TEST_P(ArgumentRulesTest, CallocZeroes) {
    GilScope gil;
    const DomainApi &d = GetParam();
    struct Request {
        size_t nelem, elsize;
    };
    const Request requests[] = {{1, 1},  {7, 1},   {1, 16},   {3, 17},    {16, 32},
                                {1, 513}, {64, 64}, {3, 1000}, {1, 200000}, {1024, 300}};
    for (const Request &r : requests) {
        size_t n = r.nelem * r.elsize;
        // Dirty memory of the same size first, so a calloc that reuses it must clear it.
        for (int round = 0; round < 4; round++) {
            void *dirty = d.malloc(n);
            ASSERT_NE(nullptr, dirty);
            memset(dirty, 0xA5, n);
            d.free(dirty);
            void *z = d.calloc(r.nelem, r.elsize);
            ASSERT_NE(nullptr, z);
            EXPECT_TRUE(AllZero(z, n)) << "calloc(" << r.nelem << ", " << r.elsize << ")";
            memset(z, 0x5A, n);
            d.free(z);
        }
    }
}

TEST_P(ArgumentRulesTest, CallocReachesTheAllocatorsCalloc) {
    GilScope gil;
    const DomainApi &d = GetParam();
    ScopedFailing counting(d.domain);
    void *z = d.calloc(5, 9);
    ASSERT_NE(nullptr, z);
    EXPECT_TRUE(AllZero(z, 45));
    d.free(z);
    pm_failing_counts c = counting.counts();
    EXPECT_EQ(1u, c.callocs);
    EXPECT_EQ(0u, c.mallocs) << "calloc must stay calloc: the allocator may zero cheaply";
}

INSTANTIATE_TEST_SUITE_P(AllDomains, ArgumentRulesTest, ::testing::ValuesIn(kDomains),
                         [](const ::testing::TestParamInfo<DomainApi> &param) {
                             return std::string(param.param.name);
                         });

// ---- raw-domain specifics ------------------------------------------------------------

TEST(RawDomainTest, FreeOfNullDoesNotReachTheAllocator) {
    ScopedFailing counting(PM_DOMAIN_RAW);
    pm_raw_free(nullptr);
    pm_raw_free(nullptr);
    EXPECT_EQ(0u, counting.total_calls());
}

TEST(RawDomainTest, BlocksAreWritableToTheirFullSize) {
    // ASan checks every byte; without it this still catches blocks that overlap.
    const size_t sizes[] = {1, 8, 15, 16, 100, 511, 512, 513, 4096, 65536, 1 << 20};
    std::vector<void *> blocks;
    unsigned seed = 20;
    for (size_t n : sizes) {
        void *p = pm_raw_malloc(n);
        ASSERT_NE(nullptr, p);
        Fill(p, n, seed++);
        blocks.push_back(p);
    }
    seed = 20;
    for (size_t i = 0; i < blocks.size(); i++) {
        EXPECT_EQ(sizes[i], PatternPrefix(blocks[i], sizes[i], seed++)) << sizes[i];
        pm_raw_free(blocks[i]);
    }
}

// ---- pm_get_allocator / pm_set_allocator -------------------------------------------

const int kBadDomains[] = {PM_DOMAIN_COUNT, PM_DOMAIN_COUNT + 1, 100, -1, INT_MAX, INT_MIN};

struct Snapshot {
    pm_allocator a[PM_DOMAIN_COUNT];
};

Snapshot TakeSnapshot() {
    Snapshot s;
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) s.a[d] = Current(static_cast<pm_domain>(d));
    return s;
}

void ExpectUnchanged(const Snapshot &before, const std::string &what) {
    Snapshot now = TakeSnapshot();
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        EXPECT_TRUE(SameAllocator(before.a[d], now.a[d])) << what << " changed domain " << d;
    }
}

// A pass-through allocator (to the raw default) with a ctx of its own.
void *PassMalloc(void *, size_t size) {
    return malloc(size == 0 ? 1 : size);
}
void *PassCalloc(void *, size_t nelem, size_t elsize) {
    return nelem == 0 || elsize == 0 ? calloc(1, 1) : calloc(nelem, elsize);
}
void *PassRealloc(void *, void *ptr, size_t size) {
    return realloc(ptr, size == 0 ? 1 : size);
}
void PassFree(void *, void *ptr) {
    free(ptr);
}

int g_tags[4];

pm_allocator PassThrough(void *ctx) {
    return pm_allocator{ctx, PassMalloc, PassCalloc, PassRealloc, PassFree};
}

TEST(AllocatorTableTest, GetRejectsUnknownDomainsAndZeroesOut) {
    for (int bad : kBadDomains) {
        pm_allocator out;
        memset(&out, 0xA5, sizeof out);
        errno = 0;
        EXPECT_EQ(-1, api_c_get_allocator(bad, &out)) << "domain " << bad;
        EXPECT_EQ(EINVAL, errno) << "domain " << bad;
        EXPECT_TRUE(AllZero(&out, sizeof out)) << "domain " << bad;
    }
}

TEST(AllocatorTableTest, GetRejectsNullOut) {
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        errno = 0;
        EXPECT_EQ(-1, pm_get_allocator(static_cast<pm_domain>(d), nullptr));
        EXPECT_EQ(EINVAL, errno);
    }
    errno = 0;
    EXPECT_EQ(-1, api_c_get_allocator(100, nullptr));
    EXPECT_EQ(EINVAL, errno);
}

TEST(AllocatorTableTest, SetRejectsBadArgumentsAndChangesNothing) {
    // A counting allocator underneath proves calls still go where they went before.
    ScopedFailing counting(PM_DOMAIN_RAW);
    Snapshot before = TakeSnapshot();
    const pm_allocator good = PassThrough(&g_tags[0]);

    for (int bad : kBadDomains) {
        errno = 0;
        EXPECT_EQ(-1, api_c_set_allocator(bad, &good)) << "domain " << bad;
        EXPECT_EQ(EINVAL, errno) << "domain " << bad;
        ExpectUnchanged(before, "set in domain " + std::to_string(bad));
    }
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        const pm_domain domain = static_cast<pm_domain>(d);
        errno = 0;
        EXPECT_EQ(-1, pm_set_allocator(domain, nullptr));
        EXPECT_EQ(EINVAL, errno);
        ExpectUnchanged(before, "set(NULL)");

        for (int field = 0; field < 4; field++) {
            pm_allocator a = good;
            switch (field) {
            case 0: a.malloc = nullptr; break;
            case 1: a.calloc = nullptr; break;
            case 2: a.realloc = nullptr; break;
            default: a.free = nullptr; break;
            }
            errno = 0;
            EXPECT_EQ(-1, pm_set_allocator(domain, &a)) << "domain " << d << " field " << field;
            EXPECT_EQ(EINVAL, errno) << "domain " << d << " field " << field;
            ExpectUnchanged(before, "a NULL function (field " + std::to_string(field) + ")");
        }
    }
    void *p = pm_raw_malloc(8);
    ASSERT_NE(nullptr, p);
    pm_raw_free(p);
    EXPECT_EQ(1u, counting.counts().mallocs);
    EXPECT_EQ(1u, counting.counts().frees);
}

TEST(AllocatorTableTest, GetReturnsExactlyWhatSetInstalled) {
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        const pm_domain domain = static_cast<pm_domain>(d);
        const Snapshot original = TakeSnapshot();

        pm_allocator first = PassThrough(&g_tags[1]);
        ASSERT_EQ(0, pm_set_allocator(domain, &first));
        EXPECT_TRUE(SameAllocator(first, Current(domain)));
        // Set copies: changing the caller's struct afterwards changes nothing installed.
        first.ctx = &g_tags[3];
        first.free = nullptr;
        EXPECT_TRUE(SameAllocator(PassThrough(&g_tags[1]), Current(domain)));

        // Same functions, another ctx: a different allocator, reported as such.
        const pm_allocator second = PassThrough(&g_tags[2]);
        ASSERT_EQ(0, pm_set_allocator(domain, &second));
        EXPECT_TRUE(SameAllocator(second, Current(domain)));
        // A NULL ctx is allowed.
        const pm_allocator null_ctx = PassThrough(nullptr);
        ASSERT_EQ(0, pm_set_allocator(domain, &null_ctx));
        EXPECT_TRUE(SameAllocator(null_ctx, Current(domain)));
        // Reinstalling an earlier allocator gives it back exactly.
        const pm_allocator again = PassThrough(&g_tags[1]);
        ASSERT_EQ(0, pm_set_allocator(domain, &again));
        EXPECT_TRUE(SameAllocator(again, Current(domain)));

        // The other domains never moved.
        for (int other = 0; other < PM_DOMAIN_COUNT; other++) {
            if (other == d) continue;
            EXPECT_TRUE(SameAllocator(original.a[other], Current(static_cast<pm_domain>(other))))
                << "setting domain " << d << " changed domain " << other;
        }
        ASSERT_EQ(0, pm_set_allocator(domain, &original.a[d]));
        EXPECT_TRUE(SameAllocator(original.a[d], Current(domain)));
    }
}

TEST(AllocatorTableTest, DefaultAllocatorsAreInstalled) {
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        pm_allocator a = Current(static_cast<pm_domain>(d));
        EXPECT_NE(nullptr, a.malloc);
        EXPECT_NE(nullptr, a.calloc);
        EXPECT_NE(nullptr, a.realloc);
        EXPECT_NE(nullptr, a.free);
    }
}

// ---- pm_get_raw_stats ----------------------------------------------------------------

pm_raw_stats Stats() {
    pm_raw_stats s;
    memset(&s, 0xA5, sizeof s);
    pm_get_raw_stats(&s);
    return s;
}

// Expected movement of each counter between two snapshots.
struct Delta {
    int64_t mallocs, callocs, reallocs, frees, failures, live;
};

::testing::AssertionResult Moved(const pm_raw_stats &before, const pm_raw_stats &after,
                                 const Delta &want) {
    const Delta got = {
        static_cast<int64_t>(after.mallocs - before.mallocs),
        static_cast<int64_t>(after.callocs - before.callocs),
        static_cast<int64_t>(after.reallocs - before.reallocs),
        static_cast<int64_t>(after.frees - before.frees),
        static_cast<int64_t>(after.failures - before.failures),
        static_cast<int64_t>(after.live - before.live),
    };
    if (memcmp(&got, &want, sizeof got) == 0) return ::testing::AssertionSuccess();
    auto show = [](const Delta &x) {
        return "{mallocs " + std::to_string(x.mallocs) + ", callocs " +
               std::to_string(x.callocs) + ", reallocs " + std::to_string(x.reallocs) +
               ", frees " + std::to_string(x.frees) + ", failures " +
               std::to_string(x.failures) + ", live " + std::to_string(x.live) + "}";
    };
    return ::testing::AssertionFailure() << "moved " << show(got) << ", want " << show(want);
}

TEST(RawStatsTest, EachEntryPointMovesItsCounters) {
    pm_raw_stats s = Stats();
    pm_raw_stats t;

    void *a = pm_raw_malloc(10);
    ASSERT_NE(nullptr, a);
    EXPECT_TRUE(Moved(s, t = Stats(), {1, 0, 0, 0, 0, 1}));
    s = t;

    void *b = pm_raw_calloc(3, 5);
    ASSERT_NE(nullptr, b);
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 1, 0, 0, 0, 1}));
    s = t;

    a = pm_raw_realloc(a, 2000);
    ASSERT_NE(nullptr, a);
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 0, 1, 0, 0, 0}));
    s = t;

    void *c = pm_raw_realloc(nullptr, 7);  // counted as a malloc
    ASSERT_NE(nullptr, c);
    EXPECT_TRUE(Moved(s, t = Stats(), {1, 0, 0, 0, 0, 1}));
    s = t;

    c = pm_raw_realloc(c, 0);  // a resize, not a free
    ASSERT_NE(nullptr, c);
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 0, 1, 0, 0, 0}));
    s = t;

    void *z = pm_raw_malloc(0);
    ASSERT_NE(nullptr, z);
    EXPECT_TRUE(Moved(s, t = Stats(), {1, 0, 0, 0, 0, 1}));
    s = t;

    pm_raw_free(a);
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 0, 0, 1, 0, -1}));
    s = t;

    pm_raw_free(nullptr);  // not counted
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 0, 0, 0, 0, 0}));
    s = t;

    pm_raw_free(b);
    pm_raw_free(c);
    pm_raw_free(z);
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 0, 0, 3, 0, -3}));
}

TEST(RawStatsTest, RefusedRequestsCountAsFailures) {
    void *p = pm_raw_malloc(16);
    ASSERT_NE(nullptr, p);
    pm_raw_stats s = Stats();
    pm_raw_stats t;

    EXPECT_EQ(nullptr, pm_raw_malloc(kTooBig));
    EXPECT_TRUE(Moved(s, t = Stats(), {1, 0, 0, 0, 1, 0}));
    s = t;

    EXPECT_EQ(nullptr, pm_raw_calloc(SIZE_MAX, 2));
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 1, 0, 0, 1, 0}));
    s = t;

    EXPECT_EQ(nullptr, pm_raw_realloc(nullptr, SIZE_MAX));
    EXPECT_TRUE(Moved(s, t = Stats(), {1, 0, 0, 0, 1, 0}));
    s = t;

    EXPECT_EQ(nullptr, pm_raw_realloc(p, kTooBig));
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 0, 1, 0, 1, 0}));
    pm_raw_free(p);
}

TEST(RawStatsTest, AllocatorFailuresCountAsFailures) {
    ScopedFailing failing(PM_DOMAIN_RAW);
    void *p = pm_raw_malloc(16);
    ASSERT_NE(nullptr, p);
    pm_fail_from_nth(failing.policy(), 1);
    pm_raw_stats s = Stats();
    pm_raw_stats t;

    EXPECT_EQ(nullptr, pm_raw_malloc(8));
    EXPECT_TRUE(Moved(s, t = Stats(), {1, 0, 0, 0, 1, 0}));
    s = t;

    EXPECT_EQ(nullptr, pm_raw_calloc(2, 8));
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 1, 0, 0, 1, 0}));
    s = t;

    EXPECT_EQ(nullptr, pm_raw_realloc(nullptr, 8));
    EXPECT_TRUE(Moved(s, t = Stats(), {1, 0, 0, 0, 1, 0}));
    s = t;

    EXPECT_EQ(nullptr, pm_raw_realloc(p, 64));
    EXPECT_TRUE(Moved(s, t = Stats(), {0, 0, 1, 0, 1, 0}));
    s = t;

    pm_fail_never(failing.policy());
    pm_raw_free(p);
    EXPECT_TRUE(Moved(s, Stats(), {0, 0, 0, 1, 0, -1}));
}

TEST(RawStatsTest, TableCallsAndReadingDoNotMoveRawCounters) {
    pm_raw_stats s = Stats();
    pm_allocator a;
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &a));
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_RAW, &a));
    pm_raw_stats ignored;
    pm_get_raw_stats(&ignored);
    pm_get_raw_stats(nullptr);  // tolerated
    EXPECT_TRUE(Moved(s, Stats(), {0, 0, 0, 0, 0, 0}));
}

// ---- the failing allocator itself (tests/support) ---------------------------------------

TEST(FailingAllocatorTest, FailsExactlyTheNthCallFromArming) {
    ScopedFailing failing(PM_DOMAIN_RAW);
    void *warmup = pm_raw_malloc(8);  // calls before arming do not count towards N
    ASSERT_NE(nullptr, warmup);
    pm_fail_nth(failing.policy(), 3);
    void *p[5];
    for (void *&q : p) q = pm_raw_malloc(16);
    EXPECT_NE(nullptr, p[0]);
    EXPECT_NE(nullptr, p[1]);
    EXPECT_EQ(nullptr, p[2]);
    EXPECT_NE(nullptr, p[3]);
    EXPECT_NE(nullptr, p[4]);
    for (void *q : p) pm_raw_free(q);
    pm_raw_free(warmup);
    pm_failing_counts c = failing.counts();
    EXPECT_EQ(6u, c.mallocs);
    EXPECT_EQ(1u, c.failures);
    EXPECT_EQ(5u, c.frees);  // free(NULL) of p[2] never reaches a raw allocator
    EXPECT_EQ(6u, pm_fail_policy_calls(failing.policy()));
}

TEST(FailingAllocatorTest, FailsEveryCallFromTheNthUntilDisarmed) {
    ScopedFailing failing(PM_DOMAIN_RAW);
    pm_fail_from_nth(failing.policy(), 2);
    void *first = pm_raw_malloc(8);
    EXPECT_NE(nullptr, first);
    EXPECT_EQ(nullptr, pm_raw_malloc(8));
    EXPECT_EQ(nullptr, pm_raw_calloc(1, 8));
    EXPECT_EQ(nullptr, pm_raw_realloc(first, 64));
    EXPECT_EQ(nullptr, pm_raw_realloc(nullptr, 64));
    EXPECT_EQ(4u, failing.counts().failures);
    pm_fail_never(failing.policy());
    void *again = pm_raw_realloc(first, 64);
    EXPECT_NE(nullptr, again);
    pm_raw_free(again);
}

TEST(FailingAllocatorTest, FailsRequestsFromASizeOn) {
    ScopedFailing failing(PM_DOMAIN_RAW);
    pm_fail_size_at_least(failing.policy(), 1000);
    void *p = pm_raw_malloc(999);
    EXPECT_NE(nullptr, p);
    EXPECT_EQ(nullptr, pm_raw_malloc(1000));
    EXPECT_EQ(nullptr, pm_raw_calloc(10, 100));  // judged by nelem * elsize
    void *q = pm_raw_calloc(9, 111);
    EXPECT_NE(nullptr, q);
    EXPECT_EQ(nullptr, pm_raw_realloc(p, 5000));
    void *r = pm_raw_realloc(p, 10);
    EXPECT_NE(nullptr, r);
    pm_raw_free(q);
    pm_raw_free(r);
    EXPECT_EQ(3u, failing.counts().failures);
}

TEST(FailingAllocatorTest, AFailedCallNeverReachesTheWrappedAllocator) {
    // Static: should an ASSERT end the test early, they stay valid while installed.
    static pm_failing_allocator inner, outer;
    ASSERT_EQ(0, pm_failing_allocator_install(&inner, PM_DOMAIN_RAW));
    ASSERT_EQ(0, pm_failing_allocator_install(&outer, PM_DOMAIN_RAW));
    pm_allocator installed;
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &installed));
    EXPECT_TRUE(SameAllocator(pm_failing_allocator_as_allocator(&outer), installed));

    pm_fail_from_nth(&outer.policy, 1);
    EXPECT_EQ(nullptr, pm_raw_malloc(8));
    EXPECT_EQ(nullptr, pm_raw_calloc(2, 2));
    pm_fail_never(&outer.policy);
    void *p = pm_raw_malloc(8);  // passes through both
    ASSERT_NE(nullptr, p);
    pm_raw_free(p);
    pm_failing_counts in = pm_failing_allocator_counts(&inner);
    EXPECT_EQ(1u, in.mallocs);
    EXPECT_EQ(0u, in.callocs);
    EXPECT_EQ(1u, in.frees);
    EXPECT_EQ(0u, in.failures);
    EXPECT_EQ(2u, pm_failing_allocator_counts(&outer).failures);

    // Unwinding out of order is refused; in order it restores the original.
    errno = 0;
    EXPECT_EQ(-1, pm_failing_allocator_uninstall(&inner));
    EXPECT_EQ(EBUSY, errno);
    ASSERT_EQ(0, pm_failing_allocator_uninstall(&outer));
    ASSERT_EQ(0, pm_failing_allocator_uninstall(&inner));
    errno = 0;
    EXPECT_EQ(-1, pm_failing_allocator_uninstall(&inner));
    EXPECT_EQ(EINVAL, errno);
    pm_allocator now;
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &now));
    EXPECT_TRUE(SameAllocator(inner.wrapped, now));
}

// ---- alloc/pymem_compat.h ------------------------------------------------------------

TEST(CompatTest, CStyleCodeBuildsAndRunsUnchanged) {
    GilScope gil;
    EXPECT_EQ(0, api_compat_c_run()) << "first failing check at tests/api_compat_c.c line "
                                     << api_compat_c_run();
}

TEST(CompatTest, NamesMeanTheirPmCounterparts) {
    static_assert(std::is_same<PyMemAllocatorEx, pm_allocator>::value, "struct");
    static_assert(std::is_same<PyMemAllocatorDomain, pm_domain>::value, "domain enum");
    static_assert(PYMEM_DOMAIN_RAW == 0 && PYMEM_DOMAIN_MEM == 1 && PYMEM_DOMAIN_OBJ == 2,
                  "CPython's domain numbers");
    PyMemAllocatorEx a;
    // CPython's get and set return nothing.
    static_assert(std::is_void<decltype(PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &a))>::value, "");
    static_assert(std::is_void<decltype(PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &a))>::value, "");

    EXPECT_EQ(&pm_raw_malloc, &PyMem_RawMalloc);
    EXPECT_EQ(&pm_raw_calloc, &PyMem_RawCalloc);
    EXPECT_EQ(&pm_raw_realloc, &PyMem_RawRealloc);
    EXPECT_EQ(&pm_raw_free, &PyMem_RawFree);
    EXPECT_EQ(&pm_mem_malloc, &PyMem_Malloc);
    EXPECT_EQ(&pm_mem_calloc, &PyMem_Calloc);
    EXPECT_EQ(&pm_mem_realloc, &PyMem_Realloc);
    EXPECT_EQ(&pm_mem_free, &PyMem_Free);
    EXPECT_EQ(&pm_obj_malloc, &PyObject_Malloc);
    EXPECT_EQ(&pm_obj_calloc, &PyObject_Calloc);
    EXPECT_EQ(&pm_obj_realloc, &PyObject_Realloc);
    EXPECT_EQ(&pm_obj_free, &PyObject_Free);

    // Get and set through the compat names reach the real tables.
    memset(&a, 0, sizeof a);
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &a);
    EXPECT_TRUE(SameAllocator(Current(PM_DOMAIN_OBJ), a));
    const pm_allocator mine = PassThrough(&g_tags[0]);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &mine);
    EXPECT_TRUE(SameAllocator(mine, Current(PM_DOMAIN_OBJ)));
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &a);
    EXPECT_TRUE(SameAllocator(a, Current(PM_DOMAIN_OBJ)));
}

}  // namespace
