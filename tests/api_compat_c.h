/*
 * api_compat_c.h — entry points into api_compat_c.c, a C translation unit that api_raw_test
 * calls: it proves that C code written against CPython's memory API names builds unchanged
 * over alloc/pymem_compat.h, and lets the C++ tests pass domain numbers that C++ could not
 * hold in a pm_domain without undefined behaviour.
 */
#ifndef PM_TESTS_API_COMPAT_C_H
#define PM_TESTS_API_COMPAT_C_H

#include "alloc/pymalloc_mt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Runs CPython-style code against the compat names. Returns 0, or the source line of the
 * first check that failed. It calls the mem and object domains: the caller holds the GIL. */
int api_compat_c_run(void) PM_GIL_REQUIRED;

/* pm_get_allocator / pm_set_allocator with the domain given as any int (converted in C,
 * where an enum is an integer type). */
int api_c_get_allocator(int domain, pm_allocator *out);
int api_c_set_allocator(int domain, const pm_allocator *in);

#ifdef __cplusplus
}
#endif

#endif /* PM_TESTS_API_COMPAT_C_H */
