// tests/debug_hooks_test.cc — CPython 3.11's debug hooks (alloc/debug_hooks.c).
//
// The block, as obmalloc draws it, and what each part must read:
//
//   [SSSS SSSS I FFFFFFF DDDD...DDDD FFFFFFFF]
//    p-16..p-9  size, big-endian      p-8  API id 'r'/'m'/'o'     p-7..p-1  0xFD
//    p..p+n     data: 0xCD new, 0 from calloc, 0xCD where realloc grew it
//    p+n..      eight 0xFD, no rounding;     the whole block 0xDD once freed
//
// What is tested, and how:
//   - the fill patterns, read through the returned pointer; "freed reads 0xDD" and "realloc
//     marks the old block dead" white-box, with a recording allocator installed BELOW the
//     hook that inspects what it is given before passing it down;
//   - idempotent installation, re-installation after pm_set_allocator, the names read back;
//   - every fatal report as a death test whose regex is the FULL stderr of the child, line
//     by line, anchored at both ends (addresses are the only wildcard). Each expected text
//     is what CPython 3.11 prints for the same misuse (PYTHONMALLOC=debug python3.11 with
//     _testcapi.pymem_buffer_overflow / pymem_api_misuse / pymem_malloc_without_gil, and
//     ctypes calls for the other cases), up to and including its "Fatal Python error" line;
//   - a fatal handler that records (func, message) and longjmps back, with the report
//     captured in-process and compared byte for byte, addresses included;
//   - threads hammering the raw domain under the hooks without the GIL (run under TSan).
//
// Death tests use gtest's "threadsafe" style (the child re-executes this binary), which
// works under ASan and TSan alike, so nothing here is tagged no_tsan.
//
// The mem and object domains, pm_setup_allocators and pm_setup_debug_hooks require the GIL
// (PM_GIL_REQUIRED): tests hold it for their whole body (tests/support's GilScope, a scoped
// capability that clang's -Wthread-safety sees), as do SetUp and TearDown. Lambdas run
// inside a GilScope reach the domains through kApis' function pointers, which the analysis
// does not follow. The tests of the GIL check take it only to install the hooks, then make
// their calls without it on purpose, through those same function pointers (the
// *WithoutGil helpers).

#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "alloc/internal/debug_hooks.h"
#include "alloc/internal/domain.h"
#include "alloc/internal/pymalloc.h"
#include "alloc/pymalloc_mt.h"
#include "alloc/pymem_compat.h"
#include "gil/gil.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"

namespace {

// ---- the three domains by API id -----------------------------------------------------------

struct Api {
    char id;
    pm_domain domain;
    void *(*malloc)(size_t);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void (*free)(void *);
};

const Api kApis[] = {
    {'r', PM_DOMAIN_RAW, pm_raw_malloc, pm_raw_calloc, pm_raw_realloc, pm_raw_free},
    {'m', PM_DOMAIN_MEM, pm_mem_malloc, pm_mem_calloc, pm_mem_realloc, pm_mem_free},
    {'o', PM_DOMAIN_OBJ, pm_obj_malloc, pm_obj_calloc, pm_obj_realloc, pm_obj_free},
};

const Api &ApiOf(char id) {
    for (const Api &api : kApis) {
        if (api.id == id) return api;
    }
    return kApis[0];
}

const uint8_t *Bytes(const void *p) {
    return static_cast<const uint8_t *>(p);
}

// Checks the header and trailer of a live block of n bytes from domain `id`.
void ExpectDecorated(const void *p, size_t n, char id) {
    const uint8_t *b = Bytes(p);
    size_t stored = 0;
    for (int i = 16; i > 8; i--) stored = (stored << 8) | b[-i];
    EXPECT_EQ(n, stored) << "size at p-16, big-endian";
    EXPECT_EQ(id, static_cast<char>(b[-8])) << "API id at p-8";
    for (int i = 7; i >= 1; i--) EXPECT_EQ(0xFD, b[-i]) << "leading pad at p-" << i;
    for (size_t i = 0; i < 8; i++) EXPECT_EQ(0xFD, b[n + i]) << "trailing pad at p+n+" << i;
}

bool AllBytesAre(const void *p, size_t n, uint8_t value) {
    for (size_t i = 0; i < n; i++) {
        if (Bytes(p)[i] != value) return false;
    }
    return true;
}

// ---- a recording allocator to install below the hooks --------------------------------------

// Wraps the allocator it replaced; remembers what it was asked and, before passing a block
// down to be freed or reallocated, what the hook left in it.
struct Recorder {
    pm_allocator below{};
    pm_domain domain = PM_DOMAIN_RAW;
    std::map<void *, size_t> sizes;  // live blocks handed up, by their full size
    size_t last_request = 0;
    int mallocs = 0, callocs = 0, reallocs = 0, frees = 0;
    bool fail_realloc = false;
    // Larger requests fail here instead of reaching a sanitizer's malloc, which would abort.
    size_t max_size = size_t{1} << 40;
    std::vector<uint8_t> last_freed;        // contents of the last block freed, whole
    std::vector<uint8_t> last_reallocated;  // contents of the last block given to realloc

    static void *Malloc(void *ctx, size_t size) {
        auto *r = static_cast<Recorder *>(ctx);
        r->mallocs++;
        r->last_request = size;
        if (size > r->max_size) return nullptr;
        void *p = r->below.malloc(r->below.ctx, size);
        if (p != nullptr) r->sizes[p] = size;
        return p;
    }
    static void *Calloc(void *ctx, size_t nelem, size_t elsize) {
        auto *r = static_cast<Recorder *>(ctx);
        r->callocs++;
        r->last_request = nelem * elsize;
        if (nelem * elsize > r->max_size) return nullptr;
        void *p = r->below.calloc(r->below.ctx, nelem, elsize);
        if (p != nullptr) r->sizes[p] = nelem * elsize;
        return p;
    }
    static void *Realloc(void *ctx, void *ptr, size_t new_size) {
        auto *r = static_cast<Recorder *>(ctx);
        r->reallocs++;
        r->last_request = new_size;
        if (ptr != nullptr) {
            const uint8_t *b = Bytes(ptr);
            r->last_reallocated.assign(b, b + r->sizes[ptr]);
        }
        if (r->fail_realloc || new_size > r->max_size) return nullptr;
        void *p = r->below.realloc(r->below.ctx, ptr, new_size);
        if (p != nullptr) {
            r->sizes.erase(ptr);
            r->sizes[p] = new_size;
        }
        return p;
    }
    static void Free(void *ctx, void *ptr) {
        auto *r = static_cast<Recorder *>(ctx);
        r->frees++;
        if (ptr != nullptr) {
            const uint8_t *b = Bytes(ptr);
            r->last_freed.assign(b, b + r->sizes[ptr]);
            r->sizes.erase(ptr);
        }
        r->below.free(r->below.ctx, ptr);
    }

    void Install(pm_domain d) {
        domain = d;
        ASSERT_EQ(0, pm_get_allocator(d, &below));
        pm_allocator mine = {this, Malloc, Calloc, Realloc, Free};
        ASSERT_EQ(0, pm_set_allocator(d, &mine));
    }
    pm_allocator AsAllocator() { return pm_allocator{this, Malloc, Calloc, Realloc, Free}; }
};

// ---- expected reports ----------------------------------------------------------------------

// CPython's report for a block, with "%p" standing for an address (a wildcard in regexes,
// or replaced by the real address for exact comparisons).
struct Report {
    char api = 'm';
    size_t n = 16;
    int bad_lead = 0;    // k in 1..7: p-k holds 0x78 ('x')
    int bad_tail = -1;   // k in 0..7: tail+k holds 0x78
    std::string data;    // after "Data at p:"; unused when n == 0
    std::string func = "_PyMem_DebugRawFree";
    std::string reason;
};

std::string Text(const Report &r, const std::string &p = "%p", const std::string &tail = "%p") {
    std::string s = "Debug memory block at address p=" + p + ": API '" + r.api + "'\n";
    s += "    " + std::to_string(r.n) + " bytes originally requested\n";
    if (r.bad_lead == 0) {
        s += "    The 7 pad bytes at p-7 are FORBIDDENBYTE, as expected.\n";
    } else {
        s += "    The 7 pad bytes at p-7 are not all FORBIDDENBYTE (0xfd):\n";
        for (int k = 7; k >= 1; k--) {
            s += "        at p-" + std::to_string(k) + ": ";
            s += k == r.bad_lead ? "0x78 *** OUCH\n" : "0xfd\n";
        }
        s += "    Because memory is corrupted at the start, the count of bytes requested\n";
        s += "       may be bogus, and checking the trailing pad bytes may segfault.\n";
    }
    if (r.bad_tail < 0) {
        s += "    The 8 pad bytes at tail=" + tail + " are FORBIDDENBYTE, as expected.\n";
    } else {
        s += "    The 8 pad bytes at tail=" + tail + " are not all FORBIDDENBYTE (0xfd):\n";
        for (int k = 0; k < 8; k++) {
            s += "        at tail+" + std::to_string(k) + ": ";
            s += k == r.bad_tail ? "0x78 *** OUCH\n" : "0xfd\n";
        }
    }
    if (r.n > 0) s += "    Data at p: " + r.data + "\n";
    s += "\n";
    s += "Enable tracemalloc to get the memory block allocation traceback\n";
    s += "\n";
    s += "Fatal Python error: " + r.func + ": " + r.reason + "\n";
    return s;
}

// The whole text as a POSIX extended regex anchored at both ends; "%p" matches an address.
std::string Rx(const std::string &text) {
    std::string out = "^";
    for (size_t i = 0; i < text.size(); i++) {
        if (text.compare(i, 2, "%p") == 0) {
            out += "0x[0-9a-f]+";
            i++;
            continue;
        }
        if (strchr(".[]{}()\\*+?|^$", text[i]) != nullptr) out += '\\';
        out += text[i];
    }
    return out + "$";
}

std::string Repeat(const char *pair, size_t count) {
    std::string s;
    for (size_t i = 0; i < count; i++) s += (i == 0 ? "" : " ") + std::string(pair);
    return s;
}

std::string GilFatal(const char *func) {
    return Rx(std::string("Fatal Python error: ") + func +
              ": Python memory allocator called without holding the GIL\n");
}

// ---- fixture -------------------------------------------------------------------------------

class DebugHooksTest : public ::testing::Test {
  protected:
    void SetUp() override {
        GilScope gil;
        GTEST_FLAG_SET(death_test_style, "threadsafe");
        pm_set_fatal_handler(nullptr);
        ASSERT_EQ(0, pm_setup_allocators("default")) << "errno " << errno;
    }
    void TearDown() override {
        GilScope gil;
        pm_set_fatal_handler(nullptr);
        // EBUSY here means a test leaked a hooked block.
        EXPECT_EQ(0, pm_setup_allocators("default")) << "errno " << errno;
    }
    static void Hook(const char *name) PM_GIL_REQUIRED {
        ASSERT_EQ(0, pm_setup_allocators(name)) << name;
    }
};

using DebugHooksDeathTest = DebugHooksTest;

// ---- layout and fill patterns --------------------------------------------------------------

TEST_F(DebugHooksTest, FreshBlockIsDecoratedAndCleanBeyondWhatWasWritten) {
    GilScope gil;
    Hook("pymalloc_debug");
    for (const Api &api : kApis) {
        SCOPED_TRACE(std::string("API ") + api.id);
        uint8_t *p = static_cast<uint8_t *>(api.malloc(40));
        ASSERT_NE(nullptr, p);
        memset(p, 0x11, 10);
        EXPECT_TRUE(AllBytesAre(p, 10, 0x11));
        EXPECT_TRUE(AllBytesAre(p + 10, 30, 0xCD)) << "new data is CLEANBYTE";
        ExpectDecorated(p, 40, api.id);
        EXPECT_EQ(0u, reinterpret_cast<uintptr_t>(p) % 16) << "data stays 16-byte aligned";
        api.free(p);
    }
}

TEST_F(DebugHooksTest, TrailerStartsExactlyAtTheEndWithoutRounding) {
    GilScope gil;
    Hook("malloc_debug");
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{511}}) {
        for (const Api &api : kApis) {
            SCOPED_TRACE(std::string("API ") + api.id + ", n " + std::to_string(n));
            uint8_t *p = static_cast<uint8_t *>(api.malloc(n));
            ASSERT_NE(nullptr, p);
            EXPECT_TRUE(AllBytesAre(p + n, 8, 0xFD)) << "the 8 bytes after the data";
            ExpectDecorated(p, n, api.id);
            api.free(p);
        }
    }
}

TEST_F(DebugHooksTest, SizeIsStoredBigEndian) {
    GilScope gil;
    Hook("debug");
    uint8_t *p = static_cast<uint8_t *>(pm_mem_malloc(0x0102));
    ASSERT_NE(nullptr, p);
    const uint8_t expected[8] = {0, 0, 0, 0, 0, 0, 0x01, 0x02};
    EXPECT_EQ(0, memcmp(p - 16, expected, 8));
    pm_mem_free(p);
}

TEST_F(DebugHooksTest, CallocIsZeroedAndDecorated) {
    GilScope gil;
    Hook("pymalloc_debug");
    for (const Api &api : kApis) {
        SCOPED_TRACE(std::string("API ") + api.id);
        uint8_t *p = static_cast<uint8_t *>(api.calloc(7, 9));
        ASSERT_NE(nullptr, p);
        EXPECT_TRUE(AllBytesAre(p, 63, 0));
        ExpectDecorated(p, 63, api.id);
        api.free(p);
    }
}

// CPython's calloc hook asks the allocator below for calloc(1, n + 24).
TEST_F(DebugHooksTest, CallocAsksTheWrappedAllocatorForOneBlockOfTheTotal) {
    GilScope gil;
    Recorder rec;
    rec.Install(PM_DOMAIN_RAW);
    ASSERT_EQ(0, pm_setup_debug_hooks());
    void *p = pm_raw_calloc(3, 5);
    ASSERT_NE(nullptr, p);
    EXPECT_EQ(1, rec.callocs);
    EXPECT_EQ(15u + 24u, rec.last_request);
    pm_raw_free(p);
}

TEST_F(DebugHooksTest, ReallocGrowthIsCleanAndContentsAreKept) {
    GilScope gil;
    Hook("pymalloc_debug");
    for (const Api &api : kApis) {
        SCOPED_TRACE(std::string("API ") + api.id);
        uint8_t *p = static_cast<uint8_t *>(api.malloc(8));
        ASSERT_NE(nullptr, p);
        memcpy(p, "abcdefgh", 8);
        p = static_cast<uint8_t *>(api.realloc(p, 100));
        ASSERT_NE(nullptr, p);
        EXPECT_EQ(0, memcmp(p, "abcdefgh", 8));
        EXPECT_TRUE(AllBytesAre(p + 8, 92, 0xCD)) << "growth is CLEANBYTE";
        ExpectDecorated(p, 100, api.id);
        p = static_cast<uint8_t *>(api.realloc(p, 3));  // shrink
        ASSERT_NE(nullptr, p);
        EXPECT_EQ(0, memcmp(p, "abc", 3));
        ExpectDecorated(p, 3, api.id);
        api.free(p);
        void *q = api.realloc(nullptr, 5);  // realloc(NULL) is malloc
        ASSERT_NE(nullptr, q);
        EXPECT_TRUE(AllBytesAre(q, 5, 0xCD));
        ExpectDecorated(q, 5, api.id);
        api.free(q);
    }
}

// Above 128 bytes realloc saves only 64 bytes at each end; the middle must survive through
// the wrapped realloc itself, in every direction.
TEST_F(DebugHooksTest, ReallocOfLargeBlocksKeepsEveryByte) {
    GilScope gil;
    Hook("malloc_debug");
    for (size_t from : {size_t{129}, size_t{200}, size_t{5000}}) {
        for (size_t to : {size_t{1}, size_t{64}, size_t{100}, size_t{150}, size_t{4000},
                          size_t{10000}}) {
            SCOPED_TRACE(std::to_string(from) + " -> " + std::to_string(to));
            uint8_t *p = static_cast<uint8_t *>(pm_raw_malloc(from));
            ASSERT_NE(nullptr, p);
            for (size_t i = 0; i < from; i++) p[i] = static_cast<uint8_t>(i * 7 + 1);
            p = static_cast<uint8_t *>(pm_raw_realloc(p, to));
            ASSERT_NE(nullptr, p);
            size_t kept = from < to ? from : to;
            bool same = true;
            for (size_t i = 0; i < kept; i++) {
                same = same && p[i] == static_cast<uint8_t>(i * 7 + 1);
            }
            EXPECT_TRUE(same);
            if (to > from) {
                EXPECT_TRUE(AllBytesAre(p + from, to - from, 0xCD));
            }
            ExpectDecorated(p, to, 'r');
            pm_raw_free(p);
        }
    }
}

// ---- white-box: what the hook leaves in memory it gives back -------------------------------

TEST_F(DebugHooksTest, FreedBlockReadsDeadbyteBeforeItIsReleased) {
    GilScope gil;
    for (const Api &api : kApis) {
        SCOPED_TRACE(std::string("API ") + api.id);
        ASSERT_EQ(0, pm_setup_allocators("pymalloc"));
        Recorder rec;
        rec.Install(api.domain);
        ASSERT_EQ(0, pm_setup_debug_hooks());
        for (size_t n : {size_t{0}, size_t{16}, size_t{300}, size_t{2000}}) {
            void *p = api.malloc(n);
            ASSERT_NE(nullptr, p);
            EXPECT_EQ(n + 24, rec.last_request);
            memset(p, 0x42, n);
            api.free(p);
            ASSERT_EQ(n + 24, rec.last_freed.size());
            EXPECT_TRUE(AllBytesAre(rec.last_freed.data(), n + 24, 0xDD))
                << "header, data and trailer are DEADBYTE when the block is passed down";
        }
        ASSERT_EQ(0, pm_setup_allocators("default"));
    }
}

TEST_F(DebugHooksTest, ReallocMarksTheOldBlockDeadBeforeTheWrappedReallocSeesIt) {
    GilScope gil;
    Recorder rec;
    rec.Install(PM_DOMAIN_RAW);
    ASSERT_EQ(0, pm_setup_debug_hooks());

    // Up to 128 data bytes: the whole old block is DEADBYTE.
    void *p = pm_raw_malloc(100);
    ASSERT_NE(nullptr, p);
    memset(p, 0x42, 100);
    p = pm_raw_realloc(p, 300);
    ASSERT_NE(nullptr, p);
    ASSERT_EQ(124u, rec.last_reallocated.size());
    EXPECT_TRUE(AllBytesAre(rec.last_reallocated.data(), 124, 0xDD));
    pm_raw_free(p);

    // More: the header and the first 64 data bytes, the last 64 and the trailer; the
    // middle is left for the wrapped realloc to carry over.
    p = pm_raw_malloc(1000);
    ASSERT_NE(nullptr, p);
    memset(p, 0x42, 1000);
    p = pm_raw_realloc(p, 3000);
    ASSERT_NE(nullptr, p);
    const std::vector<uint8_t> &old = rec.last_reallocated;
    ASSERT_EQ(1024u, old.size());
    EXPECT_TRUE(AllBytesAre(old.data(), 16 + 64, 0xDD));
    EXPECT_TRUE(AllBytesAre(old.data() + 16 + 64, 1000 - 128, 0x42));
    EXPECT_TRUE(AllBytesAre(old.data() + 16 + 1000 - 64, 64 + 8, 0xDD));
    EXPECT_TRUE(AllBytesAre(p, 1000, 0x42));
    EXPECT_TRUE(AllBytesAre(static_cast<uint8_t *>(p) + 1000, 2000, 0xCD));
    pm_raw_free(p);
}

TEST_F(DebugHooksTest, FailedReallocRestoresTheOldBlockWhole) {
    GilScope gil;
    Recorder rec;
    rec.Install(PM_DOMAIN_RAW);
    ASSERT_EQ(0, pm_setup_debug_hooks());
    for (size_t n : {size_t{5}, size_t{128}, size_t{129}, size_t{1000}}) {
        SCOPED_TRACE(n);
        uint8_t *p = static_cast<uint8_t *>(pm_raw_malloc(n));
        ASSERT_NE(nullptr, p);
        for (size_t i = 0; i < n; i++) p[i] = static_cast<uint8_t>(i + 3);
        rec.fail_realloc = true;
        EXPECT_EQ(nullptr, pm_raw_realloc(p, n * 4));
        rec.fail_realloc = false;
        bool same = true;
        for (size_t i = 0; i < n; i++) same = same && p[i] == static_cast<uint8_t>(i + 3);
        EXPECT_TRUE(same);
        ExpectDecorated(p, n, 'r');
        pm_raw_free(p);  // and it is still a valid block
    }
}

// Sizes whose total would exceed PY_SSIZE_T_MAX: NULL, and the allocator below is not asked.
TEST_F(DebugHooksTest, OverflowingSizesReturnNullWithoutCallingTheWrappedAllocator) {
    GilScope gil;
    Recorder rec;
    rec.Install(PM_DOMAIN_RAW);
    ASSERT_EQ(0, pm_setup_debug_hooks());
    const size_t too_big = static_cast<size_t>(PTRDIFF_MAX) - 23;  // passes the entry point
    EXPECT_EQ(nullptr, pm_raw_malloc(too_big));
    EXPECT_EQ(nullptr, pm_raw_calloc(1, too_big));
    void *p = pm_raw_malloc(10);
    ASSERT_NE(nullptr, p);
    EXPECT_EQ(nullptr, pm_raw_realloc(p, too_big));
    ExpectDecorated(p, 10, 'r');  // untouched
    // Straight through the table, past the entry points' own checks.
    pm_allocator hook;
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &hook));
    EXPECT_EQ(nullptr, hook.malloc(hook.ctx, SIZE_MAX));
    EXPECT_EQ(nullptr, hook.calloc(hook.ctx, SIZE_MAX / 2, 4));
    EXPECT_EQ(nullptr, hook.realloc(hook.ctx, p, SIZE_MAX - 10));
    EXPECT_EQ(1, rec.mallocs);
    EXPECT_EQ(0, rec.callocs);
    EXPECT_EQ(0, rec.reallocs);
    pm_raw_free(p);
    // The largest size that fits is passed down (and refused there, not here).
    EXPECT_EQ(nullptr, pm_raw_malloc(too_big - 1));
    EXPECT_EQ(static_cast<size_t>(PTRDIFF_MAX), rec.last_request);
}

// ---- installing ----------------------------------------------------------------------------

const pm_allocator *Table(pm_domain d) {
    return pm_domain_current(d);
}

TEST_F(DebugHooksTest, ContextsHoldTheApiIdAndACopyOfTheWrappedAllocator) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_debug_hooks());
    const char ids[] = {'r', 'm', 'o'};
    const pm_allocator *wrapped[] = {&pm_system_allocator, &pm_pymalloc_allocator,
                                     &pm_pymalloc_allocator};
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        const pm_debug_ctx *ctx = pm_debug_hook_ctx(Table(static_cast<pm_domain>(d)));
        ASSERT_NE(nullptr, ctx);
        EXPECT_EQ(ids[d], ctx->api_id);
        EXPECT_EQ(0, memcmp(&ctx->wrapped, wrapped[d], sizeof(pm_allocator)));
    }
}

TEST_F(DebugHooksTest, InstallingTwiceDoesNotWrapTwice) {
    GilScope gil;
    Recorder rec;
    rec.Install(PM_DOMAIN_MEM);
    ASSERT_EQ(0, pm_setup_debug_hooks());
    const pm_allocator *first[] = {Table(PM_DOMAIN_RAW), Table(PM_DOMAIN_MEM),
                                   Table(PM_DOMAIN_OBJ)};
    ASSERT_EQ(0, pm_setup_debug_hooks());
    PyMem_SetupDebugHooks();  // the compat spelling
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) EXPECT_EQ(first[d], Table(static_cast<pm_domain>(d)));
    void *p = pm_mem_malloc(10);
    ASSERT_NE(nullptr, p);
    EXPECT_EQ(34u, rec.last_request) << "one header and trailer, not two";
    pm_mem_free(p);
}

TEST_F(DebugHooksTest, HooksCanBeInstalledAgainAfterSetAllocator) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_debug_hooks());
    const pm_allocator *mem_hook = Table(PM_DOMAIN_MEM);
    const pm_allocator *obj_hook = Table(PM_DOMAIN_OBJ);
    // Replace the raw hook by a plain allocator (no hooked raw block is live).
    Recorder rec;
    rec.below = pm_system_allocator;
    pm_allocator plain = rec.AsAllocator();
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_RAW, &plain));
    EXPECT_EQ(nullptr, pm_debug_hook_ctx(Table(PM_DOMAIN_RAW)));
    ASSERT_EQ(0, pm_setup_debug_hooks());
    const pm_debug_ctx *raw = pm_debug_hook_ctx(Table(PM_DOMAIN_RAW));
    ASSERT_NE(nullptr, raw);
    EXPECT_EQ('r', raw->api_id);
    EXPECT_EQ(0, memcmp(&raw->wrapped, &plain, sizeof plain)) << "wraps what is there now";
    EXPECT_EQ(mem_hook, Table(PM_DOMAIN_MEM)) << "already hooked domains are left alone";
    EXPECT_EQ(obj_hook, Table(PM_DOMAIN_OBJ));
    void *p = pm_raw_malloc(1);
    ASSERT_NE(nullptr, p);
    EXPECT_EQ(25u, rec.last_request);
    pm_raw_free(p);
}

TEST_F(DebugHooksTest, NamesReadBackAndRoundTrip) {
    GilScope gil;
    struct {
        const char *name;
        const char *reads_back;
    } const cases[] = {{"debug", "pymalloc_debug"},   {"pymalloc_debug", "pymalloc_debug"},
                       {"malloc_debug", "malloc_debug"}, {"malloc", "malloc"},
                       {"default", "pymalloc"},        {"pymalloc_debug", "pymalloc_debug"},
                       {"pymalloc", "pymalloc"}};
    for (const auto &c : cases) {
        SCOPED_TRACE(c.name);
        ASSERT_EQ(0, pm_setup_allocators(c.name)) << "errno " << errno;
        const char *name = pm_current_allocator_name();
        ASSERT_NE(nullptr, name);
        EXPECT_STREQ(c.reads_back, name);
        const pm_allocator *before[] = {Table(PM_DOMAIN_RAW), Table(PM_DOMAIN_MEM),
                                        Table(PM_DOMAIN_OBJ)};
        ASSERT_EQ(0, pm_setup_allocators(name));
        for (int d = 0; d < PM_DOMAIN_COUNT; d++)
            EXPECT_EQ(before[d], Table(static_cast<pm_domain>(d))) << "no change";
    }
}

TEST_F(DebugHooksTest, SetupDebugHooksOverAPlainNameReadsBackAsItsDebugName) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_allocators("malloc"));
    ASSERT_EQ(0, pm_setup_debug_hooks());
    EXPECT_STREQ("malloc_debug", pm_current_allocator_name());
    ASSERT_EQ(0, pm_setup_allocators("pymalloc"));
    ASSERT_EQ(0, pm_setup_debug_hooks());
    EXPECT_STREQ("pymalloc_debug", pm_current_allocator_name());
}

TEST_F(DebugHooksTest, HooksOverAnythingElseHaveNoName) {
    GilScope gil;
    Recorder rec;
    rec.Install(PM_DOMAIN_OBJ);
    ASSERT_EQ(0, pm_setup_debug_hooks());
    EXPECT_EQ(nullptr, pm_current_allocator_name());
    ASSERT_EQ(0, pm_setup_allocators("pymalloc_debug"));
    // The raw hook copied into mem: a hook, but not mem's own.
    pm_allocator raw_hook;
    ASSERT_EQ(0, pm_get_allocator(PM_DOMAIN_RAW, &raw_hook));
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_MEM, &raw_hook));
    EXPECT_EQ(nullptr, pm_current_allocator_name());
}

// ---- the GIL -------------------------------------------------------------------------------

TEST_F(DebugHooksTest, RawHooksNeverLookAtTheGil) {
    {
        GilScope gil;
        Hook("pymalloc_debug");
    }
    ASSERT_FALSE(pm_gil_held());
    void *p = pm_raw_malloc(10);
    ASSERT_NE(nullptr, p);
    p = pm_raw_realloc(p, 20);
    ASSERT_NE(nullptr, p);
    pm_raw_free(p);
    pm_raw_free(pm_raw_calloc(2, 2));
    pm_raw_free(nullptr);
}

TEST_F(DebugHooksTest, MemAndObjectWorkWithTheGil) {
    GilScope gil;
    Hook("pymalloc_debug");
    pm_mem_free(nullptr);
    pm_obj_free(nullptr);
    void *p = pm_obj_calloc(4, 4);
    ASSERT_NE(nullptr, p);
    pm_obj_free(pm_obj_realloc(p, 40));
}

// ---- death tests: the reports, line by line ------------------------------------------------

void WriteAndFree(char id, size_t n, ptrdiff_t offset) {
    const Api &api = ApiOf(id);
    uint8_t *p = static_cast<uint8_t *>(api.malloc(n));
    p[offset] = 'x';
    api.free(p);
}

TEST_F(DebugHooksDeathTest, OneBytePastTheEnd) {
    GilScope gil;
    Hook("pymalloc_debug");
    for (char id : {'m', 'o', 'r'}) {
        SCOPED_TRACE(id);
        Report r;
        r.api = id;
        r.bad_tail = 0;
        r.data = Repeat("cd", 16);
        r.reason = "bad trailing pad byte";
        EXPECT_DEATH(WriteAndFree(id, 16, 16), Rx(Text(r)));
    }
}

TEST_F(DebugHooksDeathTest, OneBytePastTheEndOfAnEmptyBlockHasNoDataLine) {
    GilScope gil;
    Hook("malloc_debug");
    Report r;
    r.n = 0;
    r.bad_tail = 0;
    r.reason = "bad trailing pad byte";
    EXPECT_DEATH(WriteAndFree('m', 0, 0), Rx(Text(r)));
}

TEST_F(DebugHooksDeathTest, OneByteBeforeTheStart) {
    GilScope gil;
    Hook("pymalloc_debug");
    for (char id : {'m', 'o', 'r'}) {
        SCOPED_TRACE(id);
        Report r;
        r.api = id;
        r.bad_lead = 1;
        r.data = Repeat("cd", 16);
        r.reason = "bad leading pad byte";
        EXPECT_DEATH(WriteAndFree(id, 16, -1), Rx(Text(r)));
    }
}

// The leading pad is checked before the trailing one: both damaged reports "leading".
TEST_F(DebugHooksDeathTest, LeadingPadIsCheckedFirst) {
    GilScope gil;
    Hook("pymalloc_debug");
    auto both = [] {
        const Api &mem = ApiOf('m');
        uint8_t *p = static_cast<uint8_t *>(mem.malloc(3));
        p[-7] = 'x';
        p[3 + 7] = 'x';
        mem.free(p);
    };
    std::string expected =
        "Debug memory block at address p=%p: API 'm'\n"
        "    3 bytes originally requested\n"
        "    The 7 pad bytes at p-7 are not all FORBIDDENBYTE (0xfd):\n"
        "        at p-7: 0x78 *** OUCH\n"
        "        at p-6: 0xfd\n"
        "        at p-5: 0xfd\n"
        "        at p-4: 0xfd\n"
        "        at p-3: 0xfd\n"
        "        at p-2: 0xfd\n"
        "        at p-1: 0xfd\n"
        "    Because memory is corrupted at the start, the count of bytes requested\n"
        "       may be bogus, and checking the trailing pad bytes may segfault.\n"
        "    The 8 pad bytes at tail=%p are not all FORBIDDENBYTE (0xfd):\n"
        "        at tail+0: 0xfd\n"
        "        at tail+1: 0xfd\n"
        "        at tail+2: 0xfd\n"
        "        at tail+3: 0xfd\n"
        "        at tail+4: 0xfd\n"
        "        at tail+5: 0xfd\n"
        "        at tail+6: 0xfd\n"
        "        at tail+7: 0x78 *** OUCH\n"
        "    Data at p: cd cd cd\n"
        "\n"
        "Enable tracemalloc to get the memory block allocation traceback\n"
        "\n"
        "Fatal Python error: _PyMem_DebugRawFree: bad leading pad byte\n";
    EXPECT_DEATH(both(), Rx(expected));
}

void AllocInFreeIn(char alloc_id, char free_id) {
    void *p = ApiOf(alloc_id).malloc(16);
    ApiOf(free_id).free(p);
}

void AllocInReallocIn(char alloc_id, char realloc_id) {
    void *p = ApiOf(alloc_id).malloc(16);
    ApiOf(realloc_id).realloc(p, 32);
}

const std::pair<char, char> kWrongPairs[] = {{'m', 'r'}, {'m', 'o'}, {'o', 'r'},
                                             {'o', 'm'}, {'r', 'm'}, {'r', 'o'}};

TEST_F(DebugHooksDeathTest, FreeThroughTheWrongDomain) {
    GilScope gil;
    Hook("pymalloc_debug");
    for (const auto &pair : kWrongPairs) {
        SCOPED_TRACE(std::string("allocated '") + pair.first + "', freed '" + pair.second + "'");
        Report r;
        r.api = pair.first;
        r.data = Repeat("cd", 16);
        r.reason = std::string("bad ID: Allocated using API '") + pair.first +
                   "', verified using API '" + pair.second + "'";
        EXPECT_DEATH(AllocInFreeIn(pair.first, pair.second), Rx(Text(r)));
    }
}

TEST_F(DebugHooksDeathTest, ReallocThroughTheWrongDomain) {
    GilScope gil;
    Hook("pymalloc_debug");
    for (const auto &pair : kWrongPairs) {
        SCOPED_TRACE(std::string("allocated '") + pair.first + "', realloc '" + pair.second + "'");
        Report r;
        r.api = pair.first;
        r.data = Repeat("cd", 16);
        r.func = "_PyMem_DebugRawRealloc";
        r.reason = std::string("bad ID: Allocated using API '") + pair.first +
                   "', verified using API '" + pair.second + "'";
        EXPECT_DEATH(AllocInReallocIn(pair.first, pair.second), Rx(Text(r)));
    }
}

TEST_F(DebugHooksDeathTest, ReallocOfAnOverflowedBlock) {
    GilScope gil;
    Hook("malloc_debug");
    auto overflow_then_realloc = [] {
        uint8_t *p = static_cast<uint8_t *>(pm_raw_malloc(3));
        p[3] = 'x';
        pm_raw_realloc(p, 100);
    };
    Report r;
    r.api = 'r';
    r.n = 3;
    r.bad_tail = 0;
    r.data = "cd cd cd";
    r.func = "_PyMem_DebugRawRealloc";
    r.reason = "bad trailing pad byte";
    EXPECT_DEATH(overflow_then_realloc(), Rx(Text(r)));
}

// "Data at p": the first 8 bytes, then " ..." and the last 8 when more than 8 remain.
TEST_F(DebugHooksDeathTest, DataLineShowsBothEndsOfLongBlocks) {
    GilScope gil;
    Hook("pymalloc_debug");
    auto numbered = [](size_t n) {
        const Api &mem = ApiOf('m');
        uint8_t *p = static_cast<uint8_t *>(mem.malloc(n));
        for (size_t i = 0; i < n; i++) p[i] = static_cast<uint8_t>(i);
        p[n] = 'x';
        mem.free(p);
    };
    struct {
        size_t n;
        const char *data;
    } const cases[] = {
        {9, "00 01 02 03 04 05 06 07 08"},
        {16, "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"},
        {17, "00 01 02 03 04 05 06 07 ... 09 0a 0b 0c 0d 0e 0f 10"},
        {40, "00 01 02 03 04 05 06 07 ... 20 21 22 23 24 25 26 27"},
    };
    for (const auto &c : cases) {
        SCOPED_TRACE(c.n);
        Report r;
        r.n = c.n;
        r.bad_tail = 0;
        r.data = c.data;
        r.reason = "bad trailing pad byte";
        EXPECT_DEATH(numbered(c.n), Rx(Text(r)));
    }
}

// ---- death tests: the GIL ------------------------------------------------------------------

// The deliberate misuse under test: mem and object calls made WITHOUT the GIL. They go
// through kApis' function pointers, which clang's thread-safety analysis does not follow,
// so these helpers compile under -Wthread-safety without hiding anything else; at run time
// the debug hooks catch them.
void MallocWithoutGil(char id) {
    ApiOf(id).malloc(16);
}
void CallocWithoutGil(char id) {
    ApiOf(id).calloc(2, 8);
}
void ReallocWithoutGil(char id, void *p) {
    ApiOf(id).realloc(p, 32);
}
void FreeWithoutGil(char id, void *p) {
    ApiOf(id).free(p);
}

TEST_F(DebugHooksDeathTest, MemAndObjectCallsWithoutTheGil) {
    {
        GilScope gil;
        Hook("pymalloc_debug");
    }
    for (char id : {'m', 'o'}) {
        SCOPED_TRACE(id);
        void *block;
        {
            GilScope gil;
            block = ApiOf(id).malloc(16);
            ASSERT_NE(nullptr, block);
        }
        ASSERT_FALSE(pm_gil_held());
        EXPECT_DEATH(MallocWithoutGil(id), GilFatal("_PyMem_DebugMalloc"));
        EXPECT_DEATH(CallocWithoutGil(id), GilFatal("_PyMem_DebugCalloc"));
        EXPECT_DEATH(ReallocWithoutGil(id, block), GilFatal("_PyMem_DebugRealloc"));
        EXPECT_DEATH(ReallocWithoutGil(id, nullptr), GilFatal("_PyMem_DebugRealloc"));
        EXPECT_DEATH(FreeWithoutGil(id, block), GilFatal("_PyMem_DebugFree"));
        EXPECT_DEATH(FreeWithoutGil(id, nullptr), GilFatal("_PyMem_DebugFree"));
        GilScope gil;
        ApiOf(id).free(block);
    }
}

// The GIL is checked before the block: a wrong-domain free without the GIL reports the GIL.
TEST_F(DebugHooksDeathTest, GilIsCheckedBeforeTheBlock) {
    {
        GilScope gil;
        Hook("pymalloc_debug");
    }
    ASSERT_FALSE(pm_gil_held());
    void *raw = pm_raw_malloc(16);
    ASSERT_NE(nullptr, raw);
    EXPECT_DEATH(FreeWithoutGil('m', raw), GilFatal("_PyMem_DebugFree"));
    pm_raw_free(raw);
}

// ---- fatal handlers ------------------------------------------------------------------------

jmp_buf g_jump;
std::string g_func;
std::string g_message;
int g_calls;

void RecordAndJump(const char *func, const char *message) {
    g_calls++;
    g_func = func;
    g_message = message;
    longjmp(g_jump, 1);
}

std::string Address(const void *p) {
    char text[32];
    snprintf(text, sizeof text, "%p", p);
    return text;
}

// Runs `fatal` with RecordAndJump installed and stderr captured; true if the handler ran.
template <typename F>
bool CatchFatal(F fatal, std::string *err) {
    g_calls = 0;
    g_func.clear();
    g_message.clear();
    pm_set_fatal_handler(RecordAndJump);
    testing::internal::CaptureStderr();
    if (setjmp(g_jump) == 0) fatal();
    *err = testing::internal::GetCapturedStderr();
    pm_set_fatal_handler(nullptr);
    return g_calls == 1;
}

TEST_F(DebugHooksTest, HandlerSeesCpythonsFunctionAndReasonAndTheExactReport) {
    GilScope gil;
    Hook("pymalloc_debug");
    uint8_t *p = static_cast<uint8_t *>(pm_mem_malloc(40));
    ASSERT_NE(nullptr, p);
    for (int i = 0; i < 40; i++) p[i] = static_cast<uint8_t>(i);
    p[40] = 'x';
    std::string err;
    ASSERT_TRUE(CatchFatal([&] { ApiOf('m').free(p); }, &err));
    EXPECT_EQ("_PyMem_DebugRawFree", g_func);
    EXPECT_EQ("bad trailing pad byte", g_message);
    Report r;
    r.n = 40;
    r.bad_tail = 0;
    r.data = "00 01 02 03 04 05 06 07 ... 20 21 22 23 24 25 26 27";
    r.reason = "bad trailing pad byte";
    std::string expected = Text(r, Address(p), Address(p + 40));
    // The handler, not the library, prints the "Fatal Python error" line.
    expected.erase(expected.find("Fatal Python error"));
    EXPECT_EQ(expected, err);

    // Nothing was changed before the handler ran: repair the pad and free normally.
    p[40] = 0xFD;
    ExpectDecorated(p, 40, 'm');
    pm_mem_free(p);
}

TEST_F(DebugHooksTest, HandlerSeesEachReason) {
    GilScope gil;
    Hook("pymalloc_debug");
    std::string err;

    uint8_t *p = static_cast<uint8_t *>(pm_obj_malloc(8));
    p[-3] = 0;
    ASSERT_TRUE(CatchFatal([&] { ApiOf('o').realloc(p, 16); }, &err));
    EXPECT_EQ("_PyMem_DebugRawRealloc", g_func);
    EXPECT_EQ("bad leading pad byte", g_message);
    p[-3] = 0xFD;
    ExpectDecorated(p, 8, 'o');

    ASSERT_TRUE(CatchFatal([&] { pm_raw_free(p); }, &err));
    EXPECT_EQ("_PyMem_DebugRawFree", g_func);
    EXPECT_EQ("bad ID: Allocated using API 'o', verified using API 'r'", g_message);
    pm_obj_free(p);
}

TEST_F(DebugHooksTest, HandlerSeesTheGilFailureWithNoReport) {
    {
        GilScope gil;
        Hook("pymalloc_debug");
    }
    ASSERT_FALSE(pm_gil_held());
    std::string err;
    ASSERT_TRUE(CatchFatal([] { MallocWithoutGil('o'); }, &err));
    EXPECT_EQ("_PyMem_DebugMalloc", g_func);
    EXPECT_EQ("Python memory allocator called without holding the GIL", g_message);
    EXPECT_EQ("", err);
}

// A NUL API id: the report prints the raw byte, as CPython's does; the handler's C string
// spells it "\x00" rather than end there.
TEST_F(DebugHooksTest, NulApiIdIsReportedRawAndSpelledOutForTheHandler) {
    GilScope gil;
    Hook("pymalloc_debug");
    uint8_t *p = static_cast<uint8_t *>(pm_mem_malloc(16));
    ASSERT_NE(nullptr, p);
    p[-8] = 0;
    std::string err;
    ASSERT_TRUE(CatchFatal([&] { ApiOf('m').free(p); }, &err));
    EXPECT_EQ("bad ID: Allocated using API '\\x00', verified using API 'm'", g_message);
    std::string head = "Debug memory block at address p=" + Address(p) + ": API '";
    EXPECT_EQ(head + std::string(1, '\0') + "'\n", err.substr(0, head.size() + 3));
    p[-8] = 'm';
    pm_mem_free(p);
}

void RecordAndReturn(const char *func, const char *message) {
    g_func = func;
    g_message = message;
}

void FreeOverflowedWithReturningHandler() {
    pm_set_fatal_handler(RecordAndReturn);
    uint8_t *p = static_cast<uint8_t *>(pm_raw_malloc(1));
    p[1] = 'x';
    pm_raw_free(p);
}

// A handler that returns does not make the error go away: the default still runs.
TEST_F(DebugHooksDeathTest, HandlerThatReturnsFallsBackToTheDefault) {
    GilScope gil;
    Hook("malloc_debug");
    Report r;
    r.api = 'r';
    r.n = 1;
    r.bad_tail = 0;
    r.data = "cd";
    r.reason = "bad trailing pad byte";
    EXPECT_DEATH(FreeOverflowedWithReturningHandler(), Rx(Text(r)));
}

// ---- threads on the raw domain -------------------------------------------------------------

// Raw calls from several threads without the GIL, checked byte by byte, while another
// thread re-runs pm_setup_debug_hooks() (a no-op once installed), holding the GIL for each
// call as its contract requires. Under TSan this is the
// proof that the hooks add no unsynchronised shared state to the raw path.
TEST_F(DebugHooksTest, ThreadsUseTheRawDomainUnderTheHooks) {
    {
        GilScope gil;
        Hook("malloc_debug");
    }
    const pm_debug_ctx *ctx = pm_debug_hook_ctx(Table(PM_DOMAIN_RAW));
    ASSERT_NE(nullptr, ctx);
    const size_t live_before = pm_atomic_load_size_relaxed(&ctx->live_blocks);
    constexpr int kThreads = 4;
    constexpr int kRounds = 5000;
    std::atomic<int> failures{0};
    std::atomic<bool> stop{false};
    // The installer takes the GIL for each call (pm_setup_debug_hooks requires it); this
    // thread does not hold it, so it can join the installer, and the raw threads never
    // take it.
    std::thread installer([&] {
        while (!stop.load()) {
            {
                GilScope gil;
                if (pm_setup_debug_hooks() != 0) failures++;
            }
            std::this_thread::yield();
        }
    });
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; t++) {
        threads.emplace_back([&, t] {
            void *held[8] = {};
            for (int i = 0; i < kRounds; i++) {
                size_t n = static_cast<size_t>((i * 37 + t * 11) % 300);
                int slot = i % 8;
                uint8_t *p;
                if (held[slot] == nullptr) {
                    p = static_cast<uint8_t *>(i % 3 == 0 ? pm_raw_calloc(1, n) : pm_raw_malloc(n));
                    if (p == nullptr || !AllBytesAre(p, n, i % 3 == 0 ? 0 : 0xCD)) failures++;
                } else {
                    p = static_cast<uint8_t *>(pm_raw_realloc(held[slot], n));
                }
                if (p == nullptr) {
                    failures++;
                    continue;
                }
                memset(p, t + 1, n);
                if (p[n] != 0xFD || p[-8] != 'r') failures++;
                if (i % 2 == 0) {
                    pm_raw_free(p);
                    held[slot] = nullptr;
                } else {
                    held[slot] = p;
                }
            }
            for (void *p : held) pm_raw_free(p);
        });
    }
    for (std::thread &t : threads) t.join();
    stop.store(true);
    installer.join();
    EXPECT_EQ(0, failures.load());
    EXPECT_EQ(ctx, pm_debug_hook_ctx(Table(PM_DOMAIN_RAW))) << "never re-wrapped";
    EXPECT_EQ(live_before, pm_atomic_load_size_relaxed(&ctx->live_blocks));
}

}  // namespace
