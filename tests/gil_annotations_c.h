/*
 * tests/gil_annotations_c.h — C functions that use the GIL's thread-safety annotations the
 * way alloc/'s pm_mem_* and pm_obj_* declarations will (see tests/gil_annotations_c.c).
 */
#ifndef PM_TESTS_GIL_ANNOTATIONS_C_H
#define PM_TESTS_GIL_ANNOTATIONS_C_H

#include "gil/gil.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Stand-ins for GIL-protected API: the callers must hold the GIL. */
void gil_annot_bump(void) PM_GIL_REQUIRED;
int gil_annot_count(void) PM_GIL_REQUIRED;

/* Correct callers, each proving the GIL to the analysis in a different way. */
void gil_annot_acquire_and_bump(int times); /* takes and releases it itself */
void gil_annot_bump_twice(void) PM_GIL_REQUIRED; /* passes the contract on to its callers */
void gil_annot_bump_after_assert(void); /* asserts it (run-time check + analysis fact) */

#ifdef __cplusplus
}
#endif

#endif /* PM_TESTS_GIL_ANNOTATIONS_C_H */
