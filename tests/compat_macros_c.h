/*
 * compat_macros_c.h — entry points into compat_macros_c.c, a C translation unit written
 * against CPython's names from alloc/pymem_compat.h: the type-oriented PyMem_New /
 * PyMem_Resize family, the upper-case aliases, the object model and the PyObject_New
 * family, and the arena allocator names. compat_macros_test.cc runs each one.
 *
 * Each returns 0, or the source line of the first check that failed. Each leaves the
 * allocators as it found them. Each calls the mem and object domains, so the caller must
 * hold the GIL (PM_GIL_REQUIRED).
 */
#ifndef PM_TESTS_COMPAT_MACROS_C_H
#define PM_TESTS_COMPAT_MACROS_C_H

#include "gil/gil.h"

#ifdef __cplusplus
extern "C" {
#endif

int compat_c_pymem_new(void) PM_GIL_REQUIRED;
int compat_c_pymem_resize(void) PM_GIL_REQUIRED;
int compat_c_argument_evaluation(void) PM_GIL_REQUIRED;
int compat_c_aliases(void) PM_GIL_REQUIRED;
int compat_c_object_new(void) PM_GIL_REQUIRED;
int compat_c_object_new_var(void) PM_GIL_REQUIRED;
int compat_c_arena_allocator(void) PM_GIL_REQUIRED;

#ifdef __cplusplus
}
#endif

#endif /* PM_TESTS_COMPAT_MACROS_C_H */
