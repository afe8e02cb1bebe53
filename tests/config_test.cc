// config_test.cc — configuration by name (alloc/config.c): pm_setup_allocators,
// pm_current_allocator_name and pm_init_from_env.
//
// Every PYTHONMALLOC name against what each domain then holds (checked by record address,
// which also proves the canonical records come back, so the inline fast paths stay on; the
// "_debug" names by the hook's context: API id and wrapped allocator); names read back; the
// refusals (EINVAL, EBUSY) leave everything unchanged; a foreign allocator in any domain
// reads back as NULL. pm_init_from_env is run with the
// variables set by setenv; its stderr line is captured in-process. PYTHONMALLOCSTATS
// changes process-wide state for good (a flag and an atexit handler), so those cases run
// in a child: this binary re-executed with posix_spawn, its stderr read through a pipe
// (no fork of a running test, so it works the same under TSan and ASan).
//
// Configuration, the mem and object domains and the pymalloc state all require the GIL
// (PM_GIL_REQUIRED): every test that uses them holds it for its whole body (GilScope), as
// do SetUp and TearDown; the debug hooks check it at run time too.
// Every test starts and ends on "default" with no hook installed and no variable set.

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "alloc/internal/debug_hooks.h"
#include "alloc/internal/domain.h"
#include "alloc/internal/pymalloc.h"
#include "alloc/pymalloc_mt.h"
#include "gil/gil.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"

extern char **environ;

namespace {

// ---- helpers ------------------------------------------------------------------------------

const pm_allocator *Table(pm_domain domain) {
    return pm_domain_current(domain);
}

// The three records installed, for "nothing changed" checks.
struct Tables {
    const pm_allocator *d[PM_DOMAIN_COUNT];
    bool operator==(const Tables &o) const {
        return d[0] == o.d[0] && d[1] == o.d[1] && d[2] == o.d[2];
    }
};

Tables Snapshot() {
    return Tables{{Table(PM_DOMAIN_RAW), Table(PM_DOMAIN_MEM), Table(PM_DOMAIN_OBJ)}};
}

void ExpectPymallocInstalled() {
    EXPECT_EQ(&pm_system_allocator, Table(PM_DOMAIN_RAW));
    EXPECT_EQ(&pm_pymalloc_allocator, Table(PM_DOMAIN_MEM));
    EXPECT_EQ(&pm_pymalloc_allocator, Table(PM_DOMAIN_OBJ));
}

void ExpectMallocInstalled() {
    EXPECT_EQ(&pm_system_allocator, Table(PM_DOMAIN_RAW));
    EXPECT_EQ(&pm_system_allocator, Table(PM_DOMAIN_MEM));
    EXPECT_EQ(&pm_system_allocator, Table(PM_DOMAIN_OBJ));
}

std::string NameOrNull(const char *name) {
    return name == nullptr ? "(null)" : name;
}

// The debug hook of `domain` (its own API id) wrapping exactly `wrapped`.
void ExpectHookOver(pm_domain domain, const pm_allocator *wrapped) {
    const pm_debug_ctx *hook = pm_debug_hook_ctx(Table(domain));
    ASSERT_NE(nullptr, hook) << "domain " << domain << " holds no debug hook";
    EXPECT_EQ(pm_debug_api_id(domain), hook->api_id);
    EXPECT_TRUE(hook->wrapped.ctx == wrapped->ctx && hook->wrapped.malloc == wrapped->malloc &&
                hook->wrapped.calloc == wrapped->calloc &&
                hook->wrapped.realloc == wrapped->realloc && hook->wrapped.free == wrapped->free)
        << "domain " << domain << " hooks another allocator";
}

void ExpectPymallocDebugInstalled() {
    ExpectHookOver(PM_DOMAIN_RAW, &pm_system_allocator);
    ExpectHookOver(PM_DOMAIN_MEM, &pm_pymalloc_allocator);
    ExpectHookOver(PM_DOMAIN_OBJ, &pm_pymalloc_allocator);
}

void ExpectMallocDebugInstalled() {
    ExpectHookOver(PM_DOMAIN_RAW, &pm_system_allocator);
    ExpectHookOver(PM_DOMAIN_MEM, &pm_system_allocator);
    ExpectHookOver(PM_DOMAIN_OBJ, &pm_system_allocator);
}

// A hook in CPython's style: wraps the allocator it replaced and counts what reaches it.
struct CountingHook {
    pm_allocator saved;
    pm_domain domain;
    int calls;

    static void *Malloc(void *ctx, size_t size) {
        auto *h = static_cast<CountingHook *>(ctx);
        h->calls++;
        return h->saved.malloc(h->saved.ctx, size);
    }
    static void *Calloc(void *ctx, size_t nelem, size_t elsize) {
        auto *h = static_cast<CountingHook *>(ctx);
        h->calls++;
        return h->saved.calloc(h->saved.ctx, nelem, elsize);
    }
    static void *Realloc(void *ctx, void *ptr, size_t new_size) {
        auto *h = static_cast<CountingHook *>(ctx);
        h->calls++;
        return h->saved.realloc(h->saved.ctx, ptr, new_size);
    }
    static void Free(void *ctx, void *ptr) {
        auto *h = static_cast<CountingHook *>(ctx);
        h->calls++;
        h->saved.free(h->saved.ctx, ptr);
    }

    void Install(pm_domain d) {
        domain = d;
        calls = 0;
        ASSERT_EQ(0, pm_get_allocator(d, &saved));
        pm_allocator mine = {this, Malloc, Calloc, Realloc, Free};
        ASSERT_EQ(0, pm_set_allocator(d, &mine));
    }
    void Uninstall() { ASSERT_EQ(0, pm_set_allocator(domain, &saved)); }
};

class ConfigTest : public testing::Test {
  protected:
    void SetUp() override {
        GilScope gil;
        unsetenv("PYTHONMALLOC");
        unsetenv("PYTHONMALLOCSTATS");
        ASSERT_EQ(0, pm_setup_allocators("default")) << "errno " << errno;
        ExpectPymallocInstalled();
        baseline_blocks_ = pm_allocated_blocks();
    }
    void TearDown() override {
        GilScope gil;
        unsetenv("PYTHONMALLOC");
        unsetenv("PYTHONMALLOCSTATS");
        EXPECT_EQ(baseline_blocks_, pm_allocated_blocks()) << "a test leaked pymalloc blocks";
        EXPECT_EQ(0, pm_setup_allocators("default")) << "errno " << errno;
        ExpectPymallocInstalled();
        EXPECT_EQ(0, pm_stats_on_new_arena) << "PYTHONMALLOCSTATS leaked into this process";
    }
    size_t baseline_blocks_ = 0;
};

const char *const kPymallocNames[] = {"default", "", "pymalloc"};
const char *const kDebugNames[] = {"debug", "pymalloc_debug", "malloc_debug"};
const char *const kUnknownNames[] = {"bogus",   "Default", "MALLOC",  "malloc ",
                                     " malloc", "pymall",  "debug_malloc", "malloc\n"};

// ---- pm_setup_allocators / pm_current_allocator_name --------------------------------------

// Regression (found while building fuzz_debug): a debug hook covered by another hook still
// counts. Replacing both while the debug hook has live blocks would leave them to be freed
// through a hook over another allocator, a fatal "bad ID".
TEST_F(ConfigTest, ReplacingACoveredDebugHookWithLiveBlocksIsEbusy) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_allocators("malloc_debug"));
    CountingHook cover;
    cover.Install(PM_DOMAIN_MEM);
    void *p = pm_mem_malloc(64);
    ASSERT_NE(p, nullptr);
    errno = 0;
    EXPECT_EQ(-1, pm_setup_allocators("pymalloc_debug"));
    EXPECT_EQ(EBUSY, errno);
    EXPECT_EQ(-1, pm_setup_allocators("malloc")) << "the plain name would strand them too";
    EXPECT_EQ(EBUSY, errno);
    pm_mem_free(p);  // still through the cover and the hook that made it
    EXPECT_EQ(2, cover.calls);
    cover.Uninstall();
    EXPECT_EQ(0, pm_setup_allocators("default")) << "errno " << errno;
}

TEST_F(ConfigTest, StartsOnPymalloc) {
    EXPECT_EQ("pymalloc", NameOrNull(pm_current_allocator_name()));
}

TEST_F(ConfigTest, PymallocNamesInstallSystemRawAndPymallocMemObj) {
    GilScope gil;
    for (const char *name : kPymallocNames) {
        SCOPED_TRACE(std::string("name \"") + name + "\"");
        ASSERT_EQ(0, pm_setup_allocators("malloc"));
        ASSERT_EQ(0, pm_setup_allocators(name)) << "errno " << errno;
        // By address: interning handed back the canonical pymalloc record, so the domains'
        // inline fast paths (which compare the record's address) are on again.
        ExpectPymallocInstalled();
        // "default" reads back as "pymalloc", as in CPython.
        EXPECT_EQ("pymalloc", NameOrNull(pm_current_allocator_name()));
    }
}

TEST_F(ConfigTest, MallocInstallsSystemEverywhere) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_allocators("malloc")) << "errno " << errno;
    ExpectMallocInstalled();
    EXPECT_EQ("malloc", NameOrNull(pm_current_allocator_name()));
    // Blocks still flow in every domain.
    void *a = pm_mem_malloc(16), *b = pm_obj_malloc(16), *c = pm_raw_malloc(16);
    ASSERT_TRUE(a && b && c);
    EXPECT_EQ(baseline_blocks_, pm_allocated_blocks()) << "pymalloc served a block";
    pm_mem_free(a);
    pm_obj_free(b);
    pm_raw_free(c);
}

TEST_F(ConfigTest, CurrentNameRoundTrips) {
    GilScope gil;
    for (const char *name : {"default", "malloc", "pymalloc", "malloc", "", "malloc", "debug",
                             "malloc_debug", "pymalloc_debug", "malloc", "malloc_debug"}) {
        SCOPED_TRACE(name);
        ASSERT_EQ(0, pm_setup_allocators(name));
        Tables before = Snapshot();
        const char *current = pm_current_allocator_name();
        ASSERT_NE(nullptr, current);
        ASSERT_EQ(0, pm_setup_allocators(current));
        EXPECT_TRUE(before == Snapshot());
        EXPECT_EQ(NameOrNull(current), NameOrNull(pm_current_allocator_name()));
    }
}

TEST_F(ConfigTest, RepeatingTheCurrentNameIsNoChange) {
    GilScope gil;
    for (const char *name : {"pymalloc", "malloc", "pymalloc_debug", "malloc_debug"}) {
        SCOPED_TRACE(name);
        ASSERT_EQ(0, pm_setup_allocators(name));
        Tables before = Snapshot();
        EXPECT_EQ(0, pm_setup_allocators(name));
        EXPECT_TRUE(before == Snapshot());
    }
}

// CPython's meanings: "debug" is the default allocators plus the hooks, and reads back as
// "pymalloc_debug" (as "default" reads back as "pymalloc").
TEST_F(ConfigTest, DebugNamesInstallTheHooksOverThePlainConfiguration) {
    GilScope gil;
    struct {
        const char *name;
        const char *reads_back;
        bool over_pymalloc;
    } const cases[] = {{"debug", "pymalloc_debug", true},
                       {"pymalloc_debug", "pymalloc_debug", true},
                       {"malloc_debug", "malloc_debug", false}};
    for (const char *start : {"pymalloc", "malloc", "malloc_debug", "pymalloc_debug"}) {
        for (const auto &c : cases) {
            SCOPED_TRACE(std::string(start) + " then " + c.name);
            ASSERT_EQ(0, pm_setup_allocators(start));
            ASSERT_EQ(0, pm_setup_allocators(c.name)) << "errno " << errno;
            if (c.over_pymalloc) {
                ExpectPymallocDebugInstalled();
            } else {
                ExpectMallocDebugInstalled();
            }
            EXPECT_EQ(c.reads_back, NameOrNull(pm_current_allocator_name()));
            // Blocks flow in every domain, through the hooks (the GIL is checked).
            void *a = pm_mem_malloc(16), *b = pm_obj_malloc(16), *r = pm_raw_malloc(16);
            ASSERT_TRUE(a && b && r);
            EXPECT_EQ('m', static_cast<char *>(a)[-8]);
            EXPECT_EQ('o', static_cast<char *>(b)[-8]);
            EXPECT_EQ('r', static_cast<char *>(r)[-8]);
            EXPECT_EQ(c.over_pymalloc ? baseline_blocks_ + 2 : baseline_blocks_,
                      pm_allocated_blocks());
            pm_mem_free(a);
            pm_obj_free(b);
            pm_raw_free(r);
        }
    }
}

TEST_F(ConfigTest, UnknownNamesAndNullAreEinvalAndChangeNothing) {
    GilScope gil;
    for (const char *start : {"pymalloc", "malloc"}) {
        ASSERT_EQ(0, pm_setup_allocators(start));
        Tables before = Snapshot();
        for (const char *name : kUnknownNames) {
            SCOPED_TRACE(std::string(start) + " then \"" + name + "\"");
            errno = 0;
            EXPECT_EQ(-1, pm_setup_allocators(name));
            EXPECT_EQ(EINVAL, errno);
            EXPECT_TRUE(before == Snapshot());
        }
        errno = 0;
        EXPECT_EQ(-1, pm_setup_allocators(nullptr));
        EXPECT_EQ(EINVAL, errno);
        EXPECT_TRUE(before == Snapshot());
        EXPECT_EQ(start, NameOrNull(pm_current_allocator_name()));
    }
}

// ---- EBUSY: never strand pymalloc's blocks ----------------------------------------------

TEST_F(ConfigTest, LeavingPymallocWithLiveMemBlockIsEbusy) {
    GilScope gil;
    void *p = pm_mem_malloc(16);
    ASSERT_NE(nullptr, p);
    ASSERT_GT(pm_allocated_blocks(), baseline_blocks_);
    Tables before = Snapshot();
    errno = 0;
    EXPECT_EQ(-1, pm_setup_allocators("malloc"));
    EXPECT_EQ(EBUSY, errno);
    EXPECT_TRUE(before == Snapshot());
    EXPECT_EQ("pymalloc", NameOrNull(pm_current_allocator_name()));
    // Staying on pymalloc is no change, so it is allowed with blocks live.
    EXPECT_EQ(0, pm_setup_allocators("default"));
    EXPECT_EQ(0, pm_setup_allocators("pymalloc"));
    pm_mem_free(p);
    ASSERT_EQ(baseline_blocks_, pm_allocated_blocks());
    EXPECT_EQ(0, pm_setup_allocators("malloc")) << "errno " << errno;
}

TEST_F(ConfigTest, LeavingPymallocWithLiveObjBlockIsEbusy) {
    GilScope gil;
    void *p = pm_obj_malloc(100);
    ASSERT_NE(nullptr, p);
    Tables before = Snapshot();
    errno = 0;
    EXPECT_EQ(-1, pm_setup_allocators("malloc"));
    EXPECT_EQ(EBUSY, errno);
    EXPECT_TRUE(before == Snapshot());
    pm_obj_free(p);
    EXPECT_EQ(0, pm_setup_allocators("malloc"));
}

// A block pymalloc passed to the raw domain still counts (pm_allocated_blocks includes it,
// and freeing it through the C library would leave pymalloc's count wrong for good).
TEST_F(ConfigTest, LiveLargeBlockAlsoCountsForEbusy) {
    GilScope gil;
    void *p = pm_mem_malloc(4096);
    ASSERT_NE(nullptr, p);
    ASSERT_GT(pm_allocated_blocks(), baseline_blocks_);
    errno = 0;
    EXPECT_EQ(-1, pm_setup_allocators("malloc"));
    EXPECT_EQ(EBUSY, errno);
    pm_mem_free(p);
}

// The refusal covers only one mem or obj domain changing: a user who put the system
// allocator in mem by hand, with pymalloc blocks live in obj, still may not go to "malloc".
TEST_F(ConfigTest, EbusyWhenOnlyObjWouldLosePymalloc) {
    GilScope gil;
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_MEM, &pm_system_allocator));
    void *p = pm_obj_malloc(32);
    ASSERT_NE(nullptr, p);
    errno = 0;
    EXPECT_EQ(-1, pm_setup_allocators("malloc"));
    EXPECT_EQ(EBUSY, errno);
    EXPECT_EQ(&pm_system_allocator, Table(PM_DOMAIN_MEM));
    EXPECT_EQ(&pm_pymalloc_allocator, Table(PM_DOMAIN_OBJ));
    // Back to pymalloc in both is fine with the block live.
    EXPECT_EQ(0, pm_setup_allocators("pymalloc"));
    pm_obj_free(p);
}

// A hook wrapping pymalloc is replaced by "malloc" only when pymalloc has no live blocks.
TEST_F(ConfigTest, HookWrappingPymallocWithLiveBlockIsEbusy) {
    GilScope gil;
    CountingHook hook;
    hook.Install(PM_DOMAIN_MEM);
    void *p = pm_mem_malloc(24);
    ASSERT_NE(nullptr, p);
    EXPECT_EQ(1, hook.calls);
    Tables before = Snapshot();
    errno = 0;
    EXPECT_EQ(-1, pm_setup_allocators("malloc"));
    EXPECT_EQ(EBUSY, errno);
    EXPECT_TRUE(before == Snapshot());
    pm_mem_free(p);
    EXPECT_EQ(2, hook.calls);
    hook.Uninstall();
}

// The other direction is always safe: pymalloc recognises blocks it did not make and gives
// them to the raw domain, so "malloc" -> "pymalloc" with system blocks live is allowed and
// those blocks are then freed correctly through the mem and object domains.
TEST_F(ConfigTest, ToPymallocWithLiveSystemBlocksIsAllowed) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_allocators("malloc"));
    void *a = pm_mem_malloc(16);
    void *b = pm_obj_malloc(16);
    ASSERT_TRUE(a && b);
    ASSERT_EQ(0, pm_setup_allocators("pymalloc")) << "errno " << errno;
    ExpectPymallocInstalled();
    void *grown = pm_mem_realloc(a, 32);  // a foreign block: realloc'd by the raw domain
    ASSERT_NE(nullptr, grown);
    pm_mem_free(grown);
    pm_obj_free(b);
    EXPECT_EQ(baseline_blocks_, pm_allocated_blocks());
}

// ---- EBUSY with the debug hooks: their blocks and plain ones cannot free each other ------

TEST_F(ConfigTest, AddingHooksOverLivePymallocBlocksIsEbusy) {
    GilScope gil;
    void *p = pm_obj_malloc(16);
    ASSERT_NE(nullptr, p);
    Tables before = Snapshot();
    for (const char *name : kDebugNames) {
        SCOPED_TRACE(name);
        errno = 0;
        EXPECT_EQ(-1, pm_setup_allocators(name));
        EXPECT_EQ(EBUSY, errno);
        EXPECT_TRUE(before == Snapshot());
    }
    pm_obj_free(p);
    EXPECT_EQ(0, pm_setup_allocators("debug"));
}

TEST_F(ConfigTest, RemovingHooksWithTheirBlocksLiveIsEbusy) {
    GilScope gil;
    struct {
        const char *hooked;
        const char *plain;
    } const cases[] = {{"pymalloc_debug", "pymalloc"}, {"malloc_debug", "malloc"},
                       {"malloc_debug", "pymalloc"}, {"pymalloc_debug", "malloc_debug"}};
    for (const auto &c : cases) {
        SCOPED_TRACE(std::string(c.hooked) + " then " + c.plain);
        ASSERT_EQ(0, pm_setup_allocators(c.hooked));
        Tables before = Snapshot();
        void *p = pm_mem_malloc(16);
        ASSERT_NE(nullptr, p);
        errno = 0;
        EXPECT_EQ(-1, pm_setup_allocators(c.plain));
        EXPECT_EQ(EBUSY, errno);
        EXPECT_TRUE(before == Snapshot());
        pm_mem_free(p);
        EXPECT_EQ(0, pm_setup_allocators(c.plain)) << "errno " << errno;
    }
}

TEST_F(ConfigTest, HookedRawBlockLiveKeepsTheRawHook) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_allocators("malloc_debug"));
    void *r = pm_raw_malloc(16);
    ASSERT_NE(nullptr, r);
    Tables before = Snapshot();
    for (const char *name : {"malloc", "pymalloc"}) {
        SCOPED_TRACE(name);
        errno = 0;
        EXPECT_EQ(-1, pm_setup_allocators(name));
        EXPECT_EQ(EBUSY, errno);
        EXPECT_TRUE(before == Snapshot());
    }
    // Between two hooked names the raw domain does not change, so that is allowed.
    EXPECT_EQ(0, pm_setup_allocators("pymalloc_debug"));
    pm_raw_free(r);
}

// ---- foreign allocators read back as NULL --------------------------------------------------

TEST_F(ConfigTest, ForeignHookInAnyDomainGivesNullName) {
    GilScope gil;
    for (const char *start : {"pymalloc", "malloc", "pymalloc_debug", "malloc_debug"}) {
        ASSERT_EQ(0, pm_setup_allocators(start));
        for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
            SCOPED_TRACE(std::string(start) + ", hook in domain " + std::to_string(d));
            CountingHook hook;
            hook.Install(static_cast<pm_domain>(d));
            EXPECT_EQ(nullptr, pm_current_allocator_name());
            hook.Uninstall();
            EXPECT_EQ(start, NameOrNull(pm_current_allocator_name()));
        }
    }
}

TEST_F(ConfigTest, MixedCanonicalRecordsGiveNullName) {
    GilScope gil;
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_OBJ, &pm_system_allocator));
    EXPECT_EQ(nullptr, pm_current_allocator_name());  // mem pymalloc, obj system
    ASSERT_EQ(0, pm_setup_allocators("malloc"));
    ASSERT_EQ(0, pm_set_allocator(PM_DOMAIN_MEM, &pm_pymalloc_allocator));
    EXPECT_EQ(nullptr, pm_current_allocator_name());  // mem pymalloc, obj system
}

// With nothing live, a name replaces a foreign hook, in any domain.
TEST_F(ConfigTest, NameReplacesForeignHooks) {
    GilScope gil;
    CountingHook hooks[PM_DOMAIN_COUNT];
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) hooks[d].Install(static_cast<pm_domain>(d));
    ASSERT_EQ(nullptr, pm_current_allocator_name());
    ASSERT_EQ(0, pm_setup_allocators("default")) << "errno " << errno;
    ExpectPymallocInstalled();
    void *p = pm_mem_malloc(8);
    pm_mem_free(p);
    for (const CountingHook &h : hooks) EXPECT_EQ(0, h.calls);
}

// ---- pm_init_from_env ------------------------------------------------------------------

// Runs pm_init_from_env() with stderr captured; returns its result.
int InitFromEnvCapturing(std::string *err) PM_GIL_REQUIRED {
    testing::internal::CaptureStderr();
    int rc = pm_init_from_env();
    *err = testing::internal::GetCapturedStderr();
    return rc;
}

TEST_F(ConfigTest, EnvUnsetChangesNothing) {
    GilScope gil;
    for (const char *start : {"pymalloc", "malloc"}) {
        SCOPED_TRACE(start);
        ASSERT_EQ(0, pm_setup_allocators(start));
        Tables before = Snapshot();
        std::string err;
        EXPECT_EQ(0, InitFromEnvCapturing(&err));
        EXPECT_EQ("", err);
        EXPECT_TRUE(before == Snapshot());
    }
}

TEST_F(ConfigTest, EnvEmptyChangesNothing) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_allocators("malloc"));
    ASSERT_EQ(0, setenv("PYTHONMALLOC", "", 1));
    ASSERT_EQ(0, setenv("PYTHONMALLOCSTATS", "", 1));  // empty: off, as in CPython
    std::string err;
    EXPECT_EQ(0, InitFromEnvCapturing(&err));
    EXPECT_EQ("", err);
    ExpectMallocInstalled();
    EXPECT_EQ(0, pm_stats_on_new_arena);
}

TEST_F(ConfigTest, EnvNamesAreApplied) {
    GilScope gil;
    struct {
        const char *value;
        const char *reads_back;
    } const cases[] = {{"malloc", "malloc"},   {"pymalloc", "pymalloc"}, {"malloc", "malloc"},
                       {"default", "pymalloc"}};
    for (const auto &c : cases) {
        SCOPED_TRACE(c.value);
        ASSERT_EQ(0, setenv("PYTHONMALLOC", c.value, 1));
        std::string err;
        EXPECT_EQ(0, InitFromEnvCapturing(&err));
        EXPECT_EQ("", err);
        EXPECT_EQ(c.reads_back, NameOrNull(pm_current_allocator_name()));
    }
    ExpectPymallocInstalled();
}

TEST_F(ConfigTest, EnvUnknownNameFailsLoudlyAndChangesNothing) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_allocators("malloc"));
    Tables before = Snapshot();
    ASSERT_EQ(0, setenv("PYTHONMALLOC", "bogus", 1));
    // An unknown allocator name must stop here, before PYTHONMALLOCSTATS is applied.
    ASSERT_EQ(0, setenv("PYTHONMALLOCSTATS", "1", 1));
    std::string err;
    EXPECT_EQ(-1, InitFromEnvCapturing(&err));
    EXPECT_EQ(
        "pymalloc-mt: PYTHONMALLOC=bogus: unknown allocator (known: default, debug, malloc, "
        "malloc_debug, pymalloc, pymalloc_debug)\n",
        err);
    EXPECT_TRUE(before == Snapshot());
    EXPECT_EQ(0, pm_stats_on_new_arena);
}

TEST_F(ConfigTest, EnvUnknownNameIsPrintedOnOneLine) {
    GilScope gil;
    ASSERT_EQ(0, setenv("PYTHONMALLOC", "mal\nloc\\\x7f", 1));
    std::string err;
    EXPECT_EQ(-1, InitFromEnvCapturing(&err));
    EXPECT_EQ(0u, err.find("pymalloc-mt: PYTHONMALLOC=mal\\x0aloc\\x5c\\x7f: unknown allocator"))
        << err;
    EXPECT_EQ(err.size() - 1, err.find('\n')) << "more than one line: " << err;
}

TEST_F(ConfigTest, EnvDebugNamesAreApplied) {
    GilScope gil;
    struct {
        const char *value;
        const char *reads_back;
    } const cases[] = {{"debug", "pymalloc_debug"},
                       {"malloc_debug", "malloc_debug"},
                       {"pymalloc_debug", "pymalloc_debug"}};
    for (const auto &c : cases) {
        SCOPED_TRACE(c.value);
        ASSERT_EQ(0, setenv("PYTHONMALLOC", c.value, 1));
        std::string err;
        EXPECT_EQ(0, InitFromEnvCapturing(&err));
        EXPECT_EQ("", err);
        EXPECT_EQ(c.reads_back, NameOrNull(pm_current_allocator_name()));
    }
    ExpectPymallocDebugInstalled();
}

TEST_F(ConfigTest, EnvPlainNameWithHookedBlocksLiveFailsLoudly) {
    GilScope gil;
    ASSERT_EQ(0, pm_setup_allocators("malloc_debug"));
    void *p = pm_obj_malloc(48);
    ASSERT_NE(nullptr, p);
    Tables before = Snapshot();
    ASSERT_EQ(0, setenv("PYTHONMALLOC", "malloc", 1));
    std::string err;
    EXPECT_EQ(-1, InitFromEnvCapturing(&err));
    EXPECT_EQ(
        "pymalloc-mt: PYTHONMALLOC=malloc: live blocks could not be freed after this "
        "change (the debug hooks' blocks and plain ones cannot be freed by each other); set "
        "PYTHONMALLOC before the first allocation\n",
        err);
    EXPECT_TRUE(before == Snapshot());
    pm_obj_free(p);
}

TEST_F(ConfigTest, EnvMallocWithLiveBlocksFailsLoudly) {
    GilScope gil;
    void *p = pm_obj_malloc(48);
    ASSERT_NE(nullptr, p);
    Tables before = Snapshot();
    ASSERT_EQ(0, setenv("PYTHONMALLOC", "malloc", 1));
    std::string err;
    EXPECT_EQ(-1, InitFromEnvCapturing(&err));
    EXPECT_EQ(0u, err.find("pymalloc-mt: PYTHONMALLOC=malloc: pymalloc already has ")) << err;
    EXPECT_NE(std::string::npos, err.find("live blocks")) << err;
    EXPECT_TRUE(before == Snapshot());
    pm_obj_free(p);
}

// ---- PYTHONMALLOCSTATS, in a child process ----------------------------------------------
//
// The child is this binary, re-executed with PM_CONFIG_TEST_CHILD naming one of the
// ConfigChild tests below (which skip themselves otherwise) and a filter selecting it.

struct ChildResult {
    int status = -1;
    std::string err;
};

ChildResult RunChild(const std::string &test, const std::vector<std::string> &extra_env) {
    ChildResult result;
    // Drop what would make the child write the parent's test reports or shard itself away.
    static const char *const kDropped[] = {"XML_OUTPUT_FILE=", "GTEST_OUTPUT=",
                                           "TEST_PREMATURE_EXIT_FILE=", "TEST_SHARD_INDEX=",
                                           "TEST_TOTAL_SHARDS=", "GTEST_SHARD_STATUS_FILE=",
                                           "PYTHONMALLOC=", "PYTHONMALLOCSTATS=",
                                           "GTEST_FILTER="};
    std::vector<std::string> env;
    for (char **e = environ; *e != nullptr; e++) {
        bool keep = true;
        for (const char *d : kDropped) keep = keep && strncmp(*e, d, strlen(d)) != 0;
        if (keep) env.emplace_back(*e);
    }
    env.push_back("PM_CONFIG_TEST_CHILD=" + test);
    for (const std::string &e : extra_env) env.push_back(e);
    std::vector<char *> envp;
    for (std::string &e : env) envp.push_back(&e[0]);
    envp.push_back(nullptr);

    std::string filter = "--gtest_filter=ConfigChild." + test;
    char exe[] = "/proc/self/exe";
    char *argv[] = {exe, &filter[0], nullptr};

    int pipe_fds[2];
    if (pipe(pipe_fds) != 0) return result;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
    posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
    posix_spawn_file_actions_addclose(&actions, pipe_fds[1]);
    pid_t pid;
    int rc = posix_spawn(&pid, exe, &actions, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&actions);
    close(pipe_fds[1]);
    if (rc == 0) {
        char buf[4096];
        ssize_t n;
        while ((n = read(pipe_fds[0], buf, sizeof buf)) > 0) result.err.append(buf, (size_t)n);
        waitpid(pid, &result.status, 0);
    }
    close(pipe_fds[0]);
    return result;
}

size_t Count(const std::string &text, const std::string &what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) n++;
    return n;
}

const char kStatsTitle[] = "Small block threshold = 512, in 32 size classes.";
const char kMarker[] = "--- child: end of main work ---\n";

bool InChild(const char *test) {
    const char *child = getenv("PM_CONFIG_TEST_CHILD");
    return child != nullptr && strcmp(child, test) == 0;
}

// The child: runs only when re-executed by the parent tests below. It applies the
// environment twice (the exit report must still come once), makes the process's first
// arena, and marks the end of its work so the parent can tell new-arena reports from the
// exit report.
TEST(ConfigChild, InitAllocateExit) {
    GilScope gil;
    if (!InChild("InitAllocateExit")) GTEST_SKIP() << "runs as a child of ConfigStatsTest";
    ASSERT_EQ(0, pm_init_from_env());
    ASSERT_EQ(0, pm_init_from_env());
    void *p = pm_mem_malloc(16);  // a fresh process has no arena yet: this makes one
    ASSERT_NE(nullptr, p);
    pm_mem_free(p);
    fputs(kMarker, stderr);
    fflush(stderr);
}

TEST(ConfigStatsTest, NewArenaAndExitEachPrintTheStatsOnce) {
    ChildResult child = RunChild("InitAllocateExit", {"PYTHONMALLOCSTATS=1"});
    ASSERT_TRUE(WIFEXITED(child.status)) << child.err;
    ASSERT_EQ(0, WEXITSTATUS(child.status)) << child.err;
    size_t marker = child.err.find(kMarker);
    ASSERT_NE(std::string::npos, marker) << child.err;
    std::string before = child.err.substr(0, marker);
    std::string after = child.err.substr(marker + strlen(kMarker));
    EXPECT_EQ(1u, Count(before, kStatsTitle)) << "new arena report:\n" << before;
    EXPECT_EQ(1u, Count(after, kStatsTitle)) << "exit report:\n" << after;
    EXPECT_NE(std::string::npos, after.find("# arenas allocated total")) << after;
}

TEST(ConfigStatsTest, NothingPrintedWithoutTheVariable) {
    const char *const values[] = {"", nullptr};  // set but empty; unset
    for (const char *value : values) {
        std::vector<std::string> env;
        if (value != nullptr) env.push_back(std::string("PYTHONMALLOCSTATS=") + value);
        ChildResult child = RunChild("InitAllocateExit", env);
        ASSERT_TRUE(WIFEXITED(child.status)) << child.err;
        ASSERT_EQ(0, WEXITSTATUS(child.status)) << child.err;
        EXPECT_EQ(kMarker, child.err);
    }
}

// CPython prints nothing at exit when pymalloc is not the allocator; nor do we.
TEST(ConfigStatsTest, MallocPrintsNothingAtExit) {
    ChildResult child =
        RunChild("InitAllocateExit", {"PYTHONMALLOC=malloc", "PYTHONMALLOCSTATS=1"});
    ASSERT_TRUE(WIFEXITED(child.status)) << child.err;
    ASSERT_EQ(0, WEXITSTATUS(child.status)) << child.err;
    EXPECT_EQ(kMarker, child.err);
}

// The real thing end to end: an unknown name in the environment fails the child's init.
TEST(ConfigStatsTest, UnknownNameFailsInit) {
    ChildResult child =
        RunChild("InitAllocateExit", {"PYTHONMALLOC=bogus", "PYTHONMALLOCSTATS=1"});
    ASSERT_TRUE(WIFEXITED(child.status)) << child.err;
    EXPECT_NE(0, WEXITSTATUS(child.status));
    EXPECT_EQ(0u, child.err.find("pymalloc-mt: PYTHONMALLOC=bogus: unknown allocator"))
        << child.err;
    EXPECT_EQ(0u, Count(child.err, kStatsTitle)) << child.err;
}

}  // namespace
