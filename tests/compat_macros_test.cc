// compat_macros_test.cc — CPython's type-oriented memory macros, their upper-case aliases,
// the object model and the PyObject_New family, and the arena allocator names, as
// alloc/pymem_compat.h spells them.
//
// The checks themselves are C (compat_macros_c.c, compiled as C with the project's strict
// warnings): that is the language extension modules are written in. This file runs each
// one and then does the same few things from C++, where the macros must also compile.
//
// The mem and object domains, the object family and the arena allocator require the GIL:
// each test holds it for its whole body (GilScope), as do SetUp and TearDown, and the C
// checks are declared PM_GIL_REQUIRED (compat_macros_c.h).

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include <type_traits>

#include "alloc/pymalloc_mt.h"
#include "alloc/pymem_compat.h"
#include "gtest/gtest.h"
#include "tests/compat_macros_c.h"
#include "tests/support/gil_scope.h"

namespace {

class CompatMacrosTest : public testing::Test {
  protected:
    void SetUp() override {
        GilScope gil;
        ASSERT_EQ(0, pm_setup_allocators("default")) << "errno " << errno;
    }
    void TearDown() override {
        GilScope gil;
        // Each C check restores what it installed: the names read back unchanged.
        EXPECT_STREQ("pymalloc", pm_current_allocator_name());
        EXPECT_EQ(0u, pm_allocated_blocks()) << "a check leaked pymalloc blocks";
        EXPECT_EQ(0, pm_setup_allocators("default"));
    }
};

#define EXPECT_C_CHECKS_PASS(fn) \
    EXPECT_EQ(0, fn()) << "first failing check at tests/compat_macros_c.c line " << fn()

TEST_F(CompatMacrosTest, PyMemNewFromC) {
    GilScope gil;
    EXPECT_C_CHECKS_PASS(compat_c_pymem_new);
}

TEST_F(CompatMacrosTest, PyMemResizeFromC) {
    GilScope gil;
    EXPECT_C_CHECKS_PASS(compat_c_pymem_resize);
}

TEST_F(CompatMacrosTest, ArgumentEvaluationFromC) {
    GilScope gil;
    EXPECT_C_CHECKS_PASS(compat_c_argument_evaluation);
}

TEST_F(CompatMacrosTest, AliasesFromC) {
    GilScope gil;
    EXPECT_C_CHECKS_PASS(compat_c_aliases);
}

TEST_F(CompatMacrosTest, ObjectNewFromC) {
    GilScope gil;
    EXPECT_C_CHECKS_PASS(compat_c_object_new);
}

TEST_F(CompatMacrosTest, ObjectNewVarFromC) {
    GilScope gil;
    EXPECT_C_CHECKS_PASS(compat_c_object_new_var);
}

TEST_F(CompatMacrosTest, ArenaAllocatorFromC) {
    GilScope gil;
    EXPECT_C_CHECKS_PASS(compat_c_arena_allocator);
}

// ---- the same names from C++ --------------------------------------------------------------

struct CxxFloat {
    PyObject_HEAD
    double value;
};

struct CxxBytes {
    PyObject_VAR_HEAD
    char items[1];
};

TEST_F(CompatMacrosTest, TypesAreThePmTypes) {
    static_assert(std::is_same<PyObject, pm_object>::value, "PyObject");
    static_assert(std::is_same<PyVarObject, pm_var_object>::value, "PyVarObject");
    static_assert(std::is_same<PyTypeObject, pm_type>::value, "PyTypeObject");
    static_assert(std::is_same<PyObjectArenaAllocator, pm_arena_allocator>::value,
                  "PyObjectArenaAllocator");
    static_assert(offsetof(CxxFloat, ob_base) == 0, "PyObject_HEAD comes first");
    static_assert(offsetof(CxxBytes, items) == sizeof(PyVarObject), "PyObject_VAR_HEAD");
}

TEST_F(CompatMacrosTest, MacrosCompileAndWorkInCxx) {
    GilScope gil;
    double *d = PyMem_New(double, 4);
    ASSERT_NE(nullptr, d);
    d[3] = 1.0;
    PyMem_Resize(d, double, 8);
    ASSERT_NE(nullptr, d);
    EXPECT_EQ(1.0, d[3]);
    double *saved = d;
    PyMem_Resize(d, double, static_cast<size_t>(PTRDIFF_MAX));
    EXPECT_EQ(nullptr, d);
    PyMem_Del(saved);
    EXPECT_EQ(nullptr, PyMem_NEW(double, SIZE_MAX));

    static const PyTypeObject float_type = {"float", sizeof(CxxFloat), 0};
    static const PyTypeObject bytes_type = {"bytes", offsetof(CxxBytes, items), 1};
    CxxFloat *f = PyObject_New(CxxFloat, &float_type);
    ASSERT_NE(nullptr, f);
    EXPECT_EQ(1, f->ob_base.ob_refcnt);
    EXPECT_EQ(&float_type, f->ob_base.ob_type);
    PyObject_Del(f);
    CxxBytes *b = PyObject_NewVar(CxxBytes, &bytes_type, 5);
    ASSERT_NE(nullptr, b);
    EXPECT_EQ(5, b->ob_base.ob_size);
    PyObject_DEL(b);
    EXPECT_EQ(nullptr, PyObject_NEW_VAR(CxxBytes, &bytes_type, -1));

    PyObjectArenaAllocator arenas;
    PyObject_GetArenaAllocator(&arenas);
    EXPECT_NE(nullptr, arenas.alloc);
    PyObject_SetArenaAllocator(&arenas);
}

}  // namespace
