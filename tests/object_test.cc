// object_test.cc — the object family (alloc/object.c): pm_object_new, pm_object_new_var,
// pm_object_del.
//
// What reaches the object domain is observed with a recording hook installed on
// PM_DOMAIN_OBJ that wraps the allocator it replaced (pymalloc by default): the exact size
// asked for, and, for every overflowing request, that no call was made at all. Sizes that
// must never reach the C library (ASan would abort on them) are refused by the hook itself,
// after being recorded, so the tests can still see that they were asked for.
//
// The object family and configuration require the GIL: each test holds it for its whole
// body (GilScope), as do SetUp and TearDown. Each test ends on "default" with no hook
// installed.

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"

namespace {

constexpr size_t kPtrdiffMax = static_cast<size_t>(PTRDIFF_MAX);
// Requests at least this big are recorded and refused by the hook instead of reaching libc.
constexpr size_t kHuge = size_t{1} << 40;

// Wraps the object domain's allocator; records what reaches it.
class RecordingHook {
  public:
    void Install(pm_domain domain) {
        domain_ = domain;
        ASSERT_EQ(0, pm_get_allocator(domain, &saved_));
        pm_allocator mine = {this, Malloc, Calloc, Realloc, Free};
        ASSERT_EQ(0, pm_set_allocator(domain, &mine));
        installed_ = true;
    }
    void Uninstall() {
        if (installed_) {
            EXPECT_EQ(0, pm_set_allocator(domain_, &saved_));
        }
        installed_ = false;
    }

    int allocations = 0;  // malloc, calloc and realloc calls
    int frees = 0;
    size_t last_size = 0;
    bool fail_all = false;  // return NULL from every allocating call (after recording it)

  private:
    bool Refuse(size_t size) {
        allocations++;
        last_size = size;
        return fail_all || size >= kHuge;
    }
    static void *Malloc(void *ctx, size_t size) {
        auto *h = static_cast<RecordingHook *>(ctx);
        return h->Refuse(size) ? nullptr : h->saved_.malloc(h->saved_.ctx, size);
    }
    static void *Calloc(void *ctx, size_t nelem, size_t elsize) {
        auto *h = static_cast<RecordingHook *>(ctx);
        return h->Refuse(nelem * elsize) ? nullptr : h->saved_.calloc(h->saved_.ctx, nelem, elsize);
    }
    static void *Realloc(void *ctx, void *ptr, size_t new_size) {
        auto *h = static_cast<RecordingHook *>(ctx);
        return h->Refuse(new_size) ? nullptr : h->saved_.realloc(h->saved_.ctx, ptr, new_size);
    }
    static void Free(void *ctx, void *ptr) {
        auto *h = static_cast<RecordingHook *>(ctx);
        h->frees++;
        h->saved_.free(h->saved_.ctx, ptr);
    }

    pm_domain domain_ = PM_DOMAIN_OBJ;
    pm_allocator saved_{};
    bool installed_ = false;
};

class ObjectTest : public testing::Test {
  protected:
    void SetUp() override {
        GilScope gil;
        ASSERT_EQ(0, pm_setup_allocators("default")) << "errno " << errno;
        mem_.Install(PM_DOMAIN_MEM);
        obj_.Install(PM_DOMAIN_OBJ);
    }
    void TearDown() override {
        GilScope gil;
        obj_.Uninstall();
        EXPECT_EQ(0, mem_.allocations + mem_.frees) << "objects must not use the mem domain";
        mem_.Uninstall();
        EXPECT_EQ(0, pm_setup_allocators("default")) << "errno " << errno;
    }

    // Expects NULL with `error` and no call to the object domain's allocator.
    void ExpectRefusedVar(const pm_type *type, size_t nitems, int error) PM_GIL_REQUIRED {
        int before = obj_.allocations;
        errno = 0;
        EXPECT_EQ(nullptr, pm_object_new_var(type, nitems));
        EXPECT_EQ(error, errno);
        EXPECT_EQ(before, obj_.allocations) << "the allocator was called";
    }

    RecordingHook mem_;
    RecordingHook obj_;
};

// A fixed-size object as an extension would declare it.
struct PointObject {
    pm_object ob_base;
    double x, y;
};

// A variable-size one: items right after the header.
struct BytesObject {
    pm_var_object ob_base;
    char items[1];
};

const pm_type kPointType = {"point", sizeof(PointObject), 0};

// ---- pm_object_new ----------------------------------------------------------------------

TEST_F(ObjectTest, NewSetsHeaderAndTakesBasicsizeFromObjectDomain) {
    GilScope gil;
    pm_object *op = pm_object_new(&kPointType);
    ASSERT_NE(nullptr, op);
    EXPECT_EQ(1, obj_.allocations);
    EXPECT_EQ(sizeof(PointObject), obj_.last_size);
    EXPECT_EQ(1, op->ob_refcnt);
    EXPECT_EQ(&kPointType, op->ob_type);
    auto *point = reinterpret_cast<PointObject *>(op);
    point->x = 1.5;  // the whole basicsize is ours (ASan checks)
    point->y = -2.5;
    EXPECT_EQ(-1.0, point->x + point->y);
    pm_object_del(op);
    EXPECT_EQ(1, obj_.frees);
}

TEST_F(ObjectTest, NewDoesNotRoundBasicsize) {
    GilScope gil;
    // CPython's _PyObject_SIZE is tp_basicsize exactly.
    const pm_type odd = {"odd", sizeof(pm_object) + 5, 0};
    pm_object *op = pm_object_new(&odd);
    ASSERT_NE(nullptr, op);
    EXPECT_EQ(sizeof(pm_object) + 5, obj_.last_size);
    memset(reinterpret_cast<char *>(op) + sizeof(pm_object), 0x5a, 5);
    pm_object_del(op);
}

TEST_F(ObjectTest, NewRefusesNullTypeAndTooSmallBasicsize) {
    GilScope gil;
    errno = 0;
    EXPECT_EQ(nullptr, pm_object_new(nullptr));
    EXPECT_EQ(EINVAL, errno);
    const pm_type tiny = {"tiny", sizeof(pm_object) - 1, 0};
    errno = 0;
    EXPECT_EQ(nullptr, pm_object_new(&tiny));
    EXPECT_EQ(EINVAL, errno);
    EXPECT_EQ(0, obj_.allocations);
}

TEST_F(ObjectTest, NewAbovePtrdiffMaxIsRefusedWithoutCall) {
    GilScope gil;
    const pm_type huge = {"huge", kPtrdiffMax + 1, 0};
    errno = 0;
    EXPECT_EQ(nullptr, pm_object_new(&huge));
    EXPECT_EQ(ENOMEM, errno);
    EXPECT_EQ(0, obj_.allocations);
    const pm_type largest = {"largest", kPtrdiffMax, 0};  // allowed: reaches the allocator
    errno = 0;
    EXPECT_EQ(nullptr, pm_object_new(&largest));
    EXPECT_EQ(ENOMEM, errno);
    EXPECT_EQ(1, obj_.allocations);
    EXPECT_EQ(kPtrdiffMax, obj_.last_size);
}

TEST_F(ObjectTest, NewAllocatorFailureIsEnomem) {
    GilScope gil;
    obj_.fail_all = true;
    errno = 0;
    EXPECT_EQ(nullptr, pm_object_new(&kPointType));
    EXPECT_EQ(ENOMEM, errno);
    EXPECT_EQ(1, obj_.allocations);
    errno = 0;
    const pm_type bytes = {"bytes", sizeof(pm_var_object), 1};
    EXPECT_EQ(nullptr, pm_object_new_var(&bytes, 3));
    EXPECT_EQ(ENOMEM, errno);
    EXPECT_EQ(2, obj_.allocations);
}

// ---- pm_object_new_var ------------------------------------------------------------------

TEST_F(ObjectTest, NewVarSetsHeaderAndSize) {
    GilScope gil;
    const pm_type bytes = {"bytes", offsetof(BytesObject, items), 1};
    pm_var_object *op = pm_object_new_var(&bytes, 11);
    ASSERT_NE(nullptr, op);
    EXPECT_EQ(1, op->ob_base.ob_refcnt);
    EXPECT_EQ(&bytes, op->ob_base.ob_type);
    EXPECT_EQ(11, op->ob_size);
    auto *b = reinterpret_cast<BytesObject *>(op);
    memcpy(b->items, "hello world", 11);  // all 11 items are ours (ASan checks)
    EXPECT_EQ(0, memcmp(b->items, "hello world", 11));
    pm_object_del(op);
    EXPECT_EQ(1, obj_.frees);
}

TEST_F(ObjectTest, NewVarSizeIsRoundedToPointerSize) {
    GilScope gil;
    static_assert(sizeof(void *) == 8, "the expected sizes below assume 64-bit pointers");
    struct Case {
        size_t basicsize, itemsize, nitems, expected;
    };
    const size_t header = sizeof(pm_var_object);  // 24
    const Case cases[] = {
        {header, 1, 0, 24},       {header, 1, 1, 32},       {header, 1, 8, 32},
        {header, 1, 9, 40},       {header, 8, 3, 48},       {header, 3, 5, 40},
        {header + 1, 0, 7, 32},   {header + 1, 4, 0, 32},   {header + 7, 1, 1, 32},
        {header + 7, 1, 2, 40},   {header, 16, 100, 1624},  {header, 1, 1000, 1024},
        {header, 0, kPtrdiffMax, 24},  // no items to hold: ob_size may still say many
    };
    for (const Case &c : cases) {
        SCOPED_TRACE(testing::Message() << "basicsize " << c.basicsize << " itemsize "
                                        << c.itemsize << " nitems " << c.nitems);
        const pm_type t = {"var", c.basicsize, c.itemsize};
        pm_var_object *op = pm_object_new_var(&t, c.nitems);
        ASSERT_NE(nullptr, op);
        EXPECT_EQ(c.expected, obj_.last_size);
        EXPECT_EQ(static_cast<ptrdiff_t>(c.nitems), op->ob_size);
        memset(reinterpret_cast<char *>(op) + header, 0x77, c.expected - header);
        pm_object_del(op);
    }
}

TEST_F(ObjectTest, NewVarRefusesNullTypeAndTooSmallBasicsize) {
    GilScope gil;
    ExpectRefusedVar(nullptr, 1, EINVAL);
    const pm_type fixed_header = {"short", sizeof(pm_object), 8};  // no room for ob_size
    ExpectRefusedVar(&fixed_header, 1, EINVAL);
}

TEST_F(ObjectTest, NewVarOverflowsAreRefusedWithoutCall) {
    GilScope gil;
    const size_t header = sizeof(pm_var_object);  // 24
    // nitems that ob_size (a ptrdiff_t) cannot hold, even when it costs no bytes.
    const pm_type no_items = {"v", header, 0};
    ExpectRefusedVar(&no_items, kPtrdiffMax + 1, ENOMEM);
    ExpectRefusedVar(&no_items, SIZE_MAX, ENOMEM);
    // The multiply overflows size_t: 2^60 * 16 = 2^64.
    const pm_type sixteen = {"v", header, 16};
    ExpectRefusedVar(&sixteen, size_t{1} << 60, ENOMEM);
    // The add overflows: (SIZE_MAX - 8) + 16.
    const pm_type huge_base = {"v", SIZE_MAX - 8, 16};
    ExpectRefusedVar(&huge_base, 1, ENOMEM);
    // The sum is SIZE_MAX - 3 (24 + 2 * (PTRDIFF_MAX - 13)): rounding it would wrap to 0.
    const pm_type two = {"v", header, 2};
    ExpectRefusedVar(&two, kPtrdiffMax - 13, ENOMEM);
    // The sum is PTRDIFF_MAX + 1, no wrap anywhere.
    const pm_type one = {"v", header, 1};
    ExpectRefusedVar(&one, kPtrdiffMax - header + 1, ENOMEM);
    // The sum is PTRDIFF_MAX - 3: only the rounding takes it past PTRDIFF_MAX.
    ExpectRefusedVar(&one, kPtrdiffMax - header - 3, ENOMEM);
    EXPECT_EQ(0, obj_.allocations);
}

TEST_F(ObjectTest, NewVarLargestSizeReachesTheAllocator) {
    GilScope gil;
    // 24 + (PTRDIFF_MAX - 31) = PTRDIFF_MAX - 7 = 2^63 - 8, already a multiple of 8: the
    // largest size allowed. It must reach the allocator (which refuses it here).
    const pm_type one = {"v", sizeof(pm_var_object), 1};
    errno = 0;
    EXPECT_EQ(nullptr, pm_object_new_var(&one, kPtrdiffMax - 31));
    EXPECT_EQ(ENOMEM, errno);
    EXPECT_EQ(1, obj_.allocations);
    EXPECT_EQ(kPtrdiffMax - 7, obj_.last_size);
}

// ---- pm_object_del, and the domain's allocator is whatever is installed -------------------

TEST_F(ObjectTest, DelOfNullDoesNothing) {
    GilScope gil;
    pm_object_del(nullptr);
    EXPECT_EQ(0, obj_.allocations);
}

TEST_F(ObjectTest, ObjectsFollowTheObjectDomainUnderMalloc) {
    GilScope gil;
    obj_.Uninstall();
    ASSERT_EQ(0, pm_setup_allocators("malloc"));
    obj_.Install(PM_DOMAIN_OBJ);  // now wrapping the C library's allocator
    size_t blocks = pm_allocated_blocks();
    std::vector<pm_object *> objects;
    for (int i = 0; i < 100; i++) {
        pm_object *op = pm_object_new(&kPointType);
        ASSERT_NE(nullptr, op);
        objects.push_back(op);
    }
    EXPECT_EQ(100, obj_.allocations);
    EXPECT_EQ(blocks, pm_allocated_blocks()) << "pymalloc served an object under \"malloc\"";
    for (pm_object *op : objects) pm_object_del(op);
    EXPECT_EQ(100, obj_.frees);
}

TEST_F(ObjectTest, ManyObjectsComeFromPymallocByDefault) {
    GilScope gil;
    size_t blocks = pm_allocated_blocks();
    std::vector<pm_var_object *> objects;
    const pm_type bytes = {"bytes", sizeof(pm_var_object), 1};
    for (size_t i = 0; i < 200; i++) {
        pm_var_object *op = pm_object_new_var(&bytes, i);
        ASSERT_NE(nullptr, op);
        EXPECT_EQ(static_cast<ptrdiff_t>(i), op->ob_size);
        objects.push_back(op);
    }
    EXPECT_EQ(blocks + 200, pm_allocated_blocks());
    for (pm_var_object *op : objects) pm_object_del(op);
    EXPECT_EQ(blocks, pm_allocated_blocks());
    EXPECT_EQ(nullptr, pm_heap_check());
}

}  // namespace
