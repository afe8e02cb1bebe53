// allocator_hooks_test.cc — what an allocator installed with pm_set_allocator() receives.
//
// Proves, for each domain, that the public entry points hand the installed functions their
// own ctx and the caller's sizes and pointers unchanged, and hand the caller the allocator's
// result unchanged; that hooks in CPython's style (get the current allocator, set a wrapper
// that calls it) work one and two deep and unwind back to the exact original; that each
// domain's table is its own; that many distinct allocators stay distinct; and that a block
// is freed by the allocator that made it only because hooks wrap: the domain itself hands a
// free to whatever is installed now (documented with an allocator that owns its memory).
//
// The mem and object domains require the GIL: the tests that call them (through function
// pointers, over all three domains) hold it for their whole body (GilScope; the raw domain
// ignores it). The raw-only test runs without it.

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <string>
#include <vector>

#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"

namespace {

constexpr size_t kPtrdiffMax = static_cast<size_t>(PTRDIFF_MAX);

struct DomainApi {
    const char *name;
    pm_domain domain;
    void *(*malloc)(size_t);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void (*free)(void *);
};

const DomainApi kDomains[] = {
    {"raw", PM_DOMAIN_RAW, pm_raw_malloc, pm_raw_calloc, pm_raw_realloc, pm_raw_free},
    {"mem", PM_DOMAIN_MEM, pm_mem_malloc, pm_mem_calloc, pm_mem_realloc, pm_mem_free},
    {"obj", PM_DOMAIN_OBJ, pm_obj_malloc, pm_obj_calloc, pm_obj_realloc, pm_obj_free},
};

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

// Puts a domain's allocator back when a test leaves early (a failed ASSERT), so a hook whose
// ctx lives on the test's stack is never called after the test returns.
class RestoreOnExit {
  public:
    explicit RestoreOnExit(pm_domain domain) : domain_(domain), saved_(Current(domain)) {}
    ~RestoreOnExit() { pm_set_allocator(domain_, &saved_); }
    RestoreOnExit(const RestoreOnExit &) = delete;
    RestoreOnExit &operator=(const RestoreOnExit &) = delete;

  private:
    pm_domain domain_;
    pm_allocator saved_;
};

// ---- a hook that records every call -----------------------------------------------------

enum class Fn { kMalloc, kCalloc, kRealloc, kFree };

const char *FnName(Fn fn) {
    switch (fn) {
    case Fn::kMalloc: return "malloc";
    case Fn::kCalloc: return "calloc";
    case Fn::kRealloc: return "realloc";
    default: return "free";
    }
}

struct Call {
    Fn fn;
    void *ctx;
    void *ptr;     // realloc's and free's pointer argument
    size_t a;      // malloc: size; calloc: nelem; realloc: new_size
    size_t b;      // calloc: elsize
    void *result;  // what the hook returned
};

struct Recorder {
    pm_allocator saved;
    size_t refuse_at_least = SIZE_MAX;  // larger requests return NULL without calling saved
    std::vector<Call> calls;            // std::vector allocates from libc, not from pm_*
};

void *RecMalloc(void *ctx, size_t size) {
    auto *r = static_cast<Recorder *>(ctx);
    void *res = size >= r->refuse_at_least ? nullptr : r->saved.malloc(r->saved.ctx, size);
    r->calls.push_back({Fn::kMalloc, ctx, nullptr, size, 0, res});
    return res;
}

void *RecCalloc(void *ctx, size_t nelem, size_t elsize) {
    auto *r = static_cast<Recorder *>(ctx);
    size_t bytes;
    bool refuse = __builtin_mul_overflow(nelem, elsize, &bytes) || bytes >= r->refuse_at_least;
    void *res = refuse ? nullptr : r->saved.calloc(r->saved.ctx, nelem, elsize);
    r->calls.push_back({Fn::kCalloc, ctx, nullptr, nelem, elsize, res});
    return res;
}

void *RecRealloc(void *ctx, void *ptr, size_t size) {
    auto *r = static_cast<Recorder *>(ctx);
    void *res =
        size >= r->refuse_at_least ? nullptr : r->saved.realloc(r->saved.ctx, ptr, size);
    r->calls.push_back({Fn::kRealloc, ctx, ptr, size, 0, res});
    return res;
}

void RecFree(void *ctx, void *ptr) {
    auto *r = static_cast<Recorder *>(ctx);
    r->saved.free(r->saved.ctx, ptr);
    r->calls.push_back({Fn::kFree, ctx, ptr, 0, 0, nullptr});
}

pm_allocator RecorderAllocator(Recorder *r) {
    return pm_allocator{r, RecMalloc, RecCalloc, RecRealloc, RecFree};
}

// ---- a wrapping hook that logs its name ---------------------------------------------------

struct Layer {
    std::string name;
    pm_allocator saved;
    std::vector<std::string> *log = nullptr;  // shared by every layer of one test
    int calls = 0;
    void Note(const char *fn) {
        calls++;
        if (log != nullptr) log->push_back(name + "." + fn);
    }
};

void *LayerMalloc(void *ctx, size_t size) {
    auto *l = static_cast<Layer *>(ctx);
    l->Note("malloc");
    return l->saved.malloc(l->saved.ctx, size);
}

void *LayerCalloc(void *ctx, size_t nelem, size_t elsize) {
    auto *l = static_cast<Layer *>(ctx);
    l->Note("calloc");
    return l->saved.calloc(l->saved.ctx, nelem, elsize);
}

void *LayerRealloc(void *ctx, void *ptr, size_t size) {
    auto *l = static_cast<Layer *>(ctx);
    l->Note("realloc");
    return l->saved.realloc(l->saved.ctx, ptr, size);
}

void LayerFree(void *ctx, void *ptr) {
    auto *l = static_cast<Layer *>(ctx);
    l->Note("free");
    l->saved.free(l->saved.ctx, ptr);
}

pm_allocator LayerAllocator(Layer *l) {
    return pm_allocator{l, LayerMalloc, LayerCalloc, LayerRealloc, LayerFree};
}

// CPython's idiom: save the current allocator, install a wrapper that calls it.
::testing::AssertionResult Wrap(pm_domain domain, pm_allocator *saved, const pm_allocator &hook) {
    if (pm_get_allocator(domain, saved) != 0) return ::testing::AssertionFailure() << "get";
    if (pm_set_allocator(domain, &hook) != 0) return ::testing::AssertionFailure() << "set";
    return ::testing::AssertionSuccess();
}

// ---- an allocator that owns its memory (a fixed pool), and notices foreign frees ----------

class Owner {
  public:
    static constexpr size_t kSlots = 16;
    static constexpr size_t kSlotSize = 256;

    bool Owns(const void *p) const {
        auto addr = reinterpret_cast<uintptr_t>(p);
        auto base = reinterpret_cast<uintptr_t>(pool_);
        return addr >= base && addr < base + sizeof pool_ && (addr - base) % kSlotSize == 0;
    }
    int frees = 0;          // blocks of its own it freed
    int foreign_frees = 0;  // frees of pointers it never made (ignored)
    int reallocs = 0;

    static void *Malloc(void *ctx, size_t size) {
        return static_cast<Owner *>(ctx)->Take(size);
    }
    static void *Calloc(void *ctx, size_t nelem, size_t elsize) {
        size_t bytes;
        if (__builtin_mul_overflow(nelem, elsize, &bytes)) return nullptr;
        void *p = static_cast<Owner *>(ctx)->Take(bytes);
        if (p != nullptr) memset(p, 0, kSlotSize);
        return p;
    }
    static void *Realloc(void *ctx, void *ptr, size_t size) {
        auto *o = static_cast<Owner *>(ctx);
        o->reallocs++;
        if (ptr == nullptr) return o->Take(size);
        if (!o->Owns(ptr) || size > kSlotSize) return nullptr;
        return ptr;  // every block already has kSlotSize bytes
    }
    static void Free(void *ctx, void *ptr) {
        auto *o = static_cast<Owner *>(ctx);
        if (!o->Owns(ptr)) {
            o->foreign_frees++;
            return;
        }
        o->used_[Slot(o, ptr)] = false;
        o->frees++;
    }
    pm_allocator AsAllocator() {
        return pm_allocator{this, Malloc, Calloc, Realloc, Free};
    }

  private:
    static size_t Slot(const Owner *o, const void *p) {
        return (reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(o->pool_)) /
               kSlotSize;
    }
    void *Take(size_t size) {
        if (size > kSlotSize) return nullptr;
        for (size_t i = 0; i < kSlots; i++) {
            if (!used_[i]) {
                used_[i] = true;
                return pool_[i];
            }
        }
        return nullptr;
    }
    alignas(16) unsigned char pool_[kSlots][kSlotSize] = {};
    bool used_[kSlots] = {};
};

// ---- tests ---------------------------------------------------------------------------

class HookTest : public ::testing::TestWithParam<DomainApi> {};

TEST_P(HookTest, EveryCallReachesTheHookUnchanged) {
    GilScope gil;
    const DomainApi &d = GetParam();
    const pm_allocator original = Current(d.domain);
    RestoreOnExit restore(d.domain);
    Recorder rec;
    ASSERT_TRUE(Wrap(d.domain, &rec.saved, RecorderAllocator(&rec)));
    EXPECT_TRUE(SameAllocator(original, rec.saved));

    void *p1 = d.malloc(37);
    void *p2 = d.calloc(3, 11);
    void *p3 = d.realloc(p1, 1000);
    void *p4 = d.realloc(nullptr, 5);
    void *p5 = d.realloc(p4, 0);
    void *p6 = d.malloc(0);
    void *p7 = d.calloc(0, 9);
    d.free(p3);
    d.free(p2);
    d.free(p5);
    d.free(p6);
    d.free(p7);
    // Sizes near the limit arrive exactly as asked (the recorder refuses them itself).
    rec.refuse_at_least = size_t{1} << 40;
    void *n1 = d.malloc(kPtrdiffMax);
    void *n2 = d.calloc(kPtrdiffMax / 16, 16);
    void *p8 = d.malloc(8);
    void *n3 = d.realloc(p8, kPtrdiffMax - 1);
    d.free(p8);
    ASSERT_EQ(0, pm_set_allocator(d.domain, &rec.saved));
    EXPECT_TRUE(SameAllocator(original, Current(d.domain)));

    for (void *p : {p1, p2, p3, p4, p5, p6, p7, p8}) EXPECT_NE(nullptr, p);
    EXPECT_EQ(nullptr, n1);
    EXPECT_EQ(nullptr, n2);
    EXPECT_EQ(nullptr, n3);

    const std::vector<Call> want = {
        {Fn::kMalloc, &rec, nullptr, 37, 0, p1},
        {Fn::kCalloc, &rec, nullptr, 3, 11, p2},
        {Fn::kRealloc, &rec, p1, 1000, 0, p3},
        {Fn::kRealloc, &rec, nullptr, 5, 0, p4},
        {Fn::kRealloc, &rec, p4, 0, 0, p5},
        {Fn::kMalloc, &rec, nullptr, 0, 0, p6},
        {Fn::kCalloc, &rec, nullptr, 0, 9, p7},
        {Fn::kFree, &rec, p3, 0, 0, nullptr},
        {Fn::kFree, &rec, p2, 0, 0, nullptr},
        {Fn::kFree, &rec, p5, 0, 0, nullptr},
        {Fn::kFree, &rec, p6, 0, 0, nullptr},
        {Fn::kFree, &rec, p7, 0, 0, nullptr},
        {Fn::kMalloc, &rec, nullptr, kPtrdiffMax, 0, nullptr},
        {Fn::kCalloc, &rec, nullptr, kPtrdiffMax / 16, 16, nullptr},
        {Fn::kMalloc, &rec, nullptr, 8, 0, p8},
        {Fn::kRealloc, &rec, p8, kPtrdiffMax - 1, 0, nullptr},
        {Fn::kFree, &rec, p8, 0, 0, nullptr},
    };
    ASSERT_EQ(want.size(), rec.calls.size()) << d.name << ": calls recorded";
    for (size_t i = 0; i < want.size(); i++) {
        const Call &w = want[i];
        const Call &g = rec.calls[i];
        SCOPED_TRACE("call #" + std::to_string(i) + " (" + FnName(w.fn) + ")");
        EXPECT_EQ(FnName(w.fn), std::string(FnName(g.fn)));
        EXPECT_EQ(w.ctx, g.ctx);
        EXPECT_EQ(w.ptr, g.ptr);
        EXPECT_EQ(w.a, g.a);
        EXPECT_EQ(w.b, g.b);
        EXPECT_EQ(w.result, g.result);
    }
}

TEST_P(HookTest, WrappersNestAndUnwindToTheOriginal) {
    GilScope gil;
    const DomainApi &d = GetParam();
    const pm_allocator original = Current(d.domain);
    RestoreOnExit restore(d.domain);
    std::vector<std::string> log;
    Layer inner;
    inner.name = "inner";
    inner.log = &log;
    Layer outer;
    outer.name = "outer";
    outer.log = &log;

    ASSERT_TRUE(Wrap(d.domain, &inner.saved, LayerAllocator(&inner)));
    EXPECT_TRUE(SameAllocator(original, inner.saved));
    void *early = d.malloc(24);  // made under one layer, freed under two
    ASSERT_NE(nullptr, early);
    ASSERT_TRUE(Wrap(d.domain, &outer.saved, LayerAllocator(&outer)));
    EXPECT_TRUE(SameAllocator(LayerAllocator(&inner), outer.saved));
    log.clear();

    void *p = d.malloc(10);
    ASSERT_NE(nullptr, p);
    memset(p, 0x11, 10);
    p = d.realloc(p, 300);
    ASSERT_NE(nullptr, p);
    void *q = d.calloc(4, 4);
    ASSERT_NE(nullptr, q);
    d.free(q);
    d.free(early);
    void *late = d.malloc(12);  // made under two layers, freed under none
    ASSERT_NE(nullptr, late);
    const std::vector<std::string> want = {
        "outer.malloc",  "inner.malloc",  "outer.realloc", "inner.realloc",
        "outer.calloc",  "inner.calloc",  "outer.free",    "inner.free",
        "outer.free",    "inner.free",    "outer.malloc",  "inner.malloc",
    };
    EXPECT_EQ(want, log);

    // Unwind in reverse order: each step restores exactly what the layer saved.
    ASSERT_EQ(0, pm_set_allocator(d.domain, &outer.saved));
    EXPECT_TRUE(SameAllocator(LayerAllocator(&inner), Current(d.domain)));
    ASSERT_EQ(0, pm_set_allocator(d.domain, &inner.saved));
    EXPECT_TRUE(SameAllocator(original, Current(d.domain)));

    log.clear();
    d.free(late);
    d.free(p);
    void *r = d.malloc(5);
    ASSERT_NE(nullptr, r);
    d.free(r);
    EXPECT_TRUE(log.empty()) << "an unwound layer was still called: " << log.front();
}

TEST_P(HookTest, AHookInstalledLaterFreesEarlierBlocksThroughTheAllocatorThatMadeThem) {
    GilScope gil;
    const DomainApi &d = GetParam();
    const pm_allocator original = Current(d.domain);
    RestoreOnExit restore(d.domain);
    Owner owner;  // a base allocator, replacing the default for this test
    const pm_allocator owner_allocator = owner.AsAllocator();
    ASSERT_EQ(0, pm_set_allocator(d.domain, &owner_allocator));

    auto *p = static_cast<unsigned char *>(d.malloc(100));
    ASSERT_TRUE(owner.Owns(p));
    memset(p, 0x3C, 100);

    Layer wrapper;
    wrapper.name = "wrapper";
    ASSERT_TRUE(Wrap(d.domain, &wrapper.saved, LayerAllocator(&wrapper)));
    // The block made before the hook reaches its maker through the hook.
    auto *p2 = static_cast<unsigned char *>(d.realloc(p, 200));
    EXPECT_EQ(p, p2);
    EXPECT_EQ(1, owner.reallocs);
    EXPECT_EQ(0x3C, p2[99]);
    d.free(p2);
    EXPECT_EQ(1, owner.frees);
    EXPECT_EQ(0, owner.foreign_frees);
    EXPECT_EQ(2, wrapper.calls);

    // And a block made through the hook is freed by its maker once the hook is gone.
    void *q = d.malloc(50);
    ASSERT_TRUE(owner.Owns(q));
    ASSERT_EQ(0, pm_set_allocator(d.domain, &wrapper.saved));
    d.free(q);
    EXPECT_EQ(2, owner.frees);
    EXPECT_EQ(3, wrapper.calls);

    ASSERT_EQ(0, pm_set_allocator(d.domain, &original));
}

TEST_P(HookTest, TheDomainHandsAFreeToWhateverIsInstalledNow) {
    GilScope gil;
    // Why hooks must wrap: the domain does not remember which allocator made a block.
    const DomainApi &d = GetParam();
    const pm_allocator original = Current(d.domain);
    RestoreOnExit restore(d.domain);
    Owner maker;
    Owner stranger;
    const pm_allocator maker_allocator = maker.AsAllocator();
    const pm_allocator stranger_allocator = stranger.AsAllocator();
    ASSERT_EQ(0, pm_set_allocator(d.domain, &maker_allocator));
    void *p = d.malloc(10);
    ASSERT_TRUE(maker.Owns(p));

    ASSERT_EQ(0, pm_set_allocator(d.domain, &stranger_allocator));  // does not wrap
    d.free(p);
    EXPECT_EQ(1, stranger.foreign_frees);
    EXPECT_EQ(0, maker.frees);

    ASSERT_EQ(0, pm_set_allocator(d.domain, &maker_allocator));
    d.free(p);
    EXPECT_EQ(1, maker.frees);
    ASSERT_EQ(0, pm_set_allocator(d.domain, &original));
}

INSTANTIATE_TEST_SUITE_P(AllDomains, HookTest, ::testing::ValuesIn(kDomains),
                         [](const ::testing::TestParamInfo<DomainApi> &param) {
                             return std::string(param.param.name);
                         });

TEST(HookTablesTest, EachDomainHasItsOwnTable) {
    GilScope gil;
    RestoreOnExit restore_raw(PM_DOMAIN_RAW);
    RestoreOnExit restore_mem(PM_DOMAIN_MEM);
    RestoreOnExit restore_obj(PM_DOMAIN_OBJ);
    Recorder rec[PM_DOMAIN_COUNT];
    for (int i = 0; i < PM_DOMAIN_COUNT; i++) {
        ASSERT_TRUE(Wrap(static_cast<pm_domain>(i), &rec[i].saved, RecorderAllocator(&rec[i])));
    }
    for (const DomainApi &d : kDomains) {
        for (Recorder &r : rec) r.calls.clear();
        void *p = d.malloc(16);
        ASSERT_NE(nullptr, p);
        d.free(p);
        EXPECT_EQ(2u, rec[d.domain].calls.size()) << d.name;
        for (int other = PM_DOMAIN_MEM; other < PM_DOMAIN_COUNT; other++) {
            // The raw domain is left out: mem and obj may use it for their own needs.
            if (other == d.domain) continue;
            EXPECT_EQ(0u, rec[other].calls.size()) << d.name << " call reached domain " << other;
        }
        for (const Call &c : rec[d.domain].calls) EXPECT_EQ(&rec[d.domain], c.ctx);
    }
    for (int i = PM_DOMAIN_COUNT - 1; i >= 0; i--) {
        ASSERT_EQ(0, pm_set_allocator(static_cast<pm_domain>(i), &rec[i].saved));
    }
}

TEST(HookTablesTest, ManyDistinctAllocatorsStayDistinct) {
    // More distinct allocators than the tables keep in their first, static batch of records.
    constexpr int kLayers = 150;
    const pm_allocator original = Current(PM_DOMAIN_RAW);
    RestoreOnExit restore(PM_DOMAIN_RAW);
    std::vector<Layer> layers(kLayers);
    for (int i = 0; i < kLayers; i++) {
        layers[i].name = "layer" + std::to_string(i);
        layers[i].saved = original;
    }
    for (int round = 1; round <= 2; round++) {
        for (int i = 0; i < kLayers; i++) {
            const pm_allocator a = LayerAllocator(&layers[i]);
            ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_RAW, &a)) << i;
            ASSERT_TRUE(SameAllocator(a, Current(PM_DOMAIN_RAW))) << i;
            void *p = pm_raw_malloc(8);
            ASSERT_NE(nullptr, p);
            pm_raw_free(p);
            ASSERT_EQ(2 * round, layers[i].calls) << "layer " << i << " round " << round;
        }
    }
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_RAW, &original));
    EXPECT_TRUE(SameAllocator(original, Current(PM_DOMAIN_RAW)));
}

}  // namespace
