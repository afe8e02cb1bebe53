/*
 * pymem_compat.h — CPython's documented memory API, spelled over pymalloc-mt.
 *
 * Code written against CPython's "Memory Management" C API compiles unchanged when it
 * includes this header instead of Python.h. Every name here is a macro or a typedef over a
 * pm_* name, so no symbol is defined that could clash with a real libpython in the same
 * process. Including both this header and Python.h in one file is an error: the names
 * would mean two different allocators.
 */
#ifndef PYMALLOC_MT_PYMEM_COMPAT_H
#define PYMALLOC_MT_PYMEM_COMPAT_H

#ifdef Py_PYTHON_H
#error "pymem_compat.h spells CPython's memory API over pymalloc-mt; do not include Python.h too"
#endif

#include "alloc/pymalloc_mt.h"

/* Domains and the allocator struct. */
typedef pm_domain PyMemAllocatorDomain;
typedef pm_allocator PyMemAllocatorEx;
#define PYMEM_DOMAIN_RAW PM_DOMAIN_RAW
#define PYMEM_DOMAIN_MEM PM_DOMAIN_MEM
#define PYMEM_DOMAIN_OBJ PM_DOMAIN_OBJ

/* CPython's get/set return nothing and ignore an unknown domain. */
#define PyMem_GetAllocator(domain, allocator) ((void)pm_get_allocator((domain), (allocator)))
#define PyMem_SetAllocator(domain, allocator) ((void)pm_set_allocator((domain), (allocator)))

/* Raw domain. */
#define PyMem_RawMalloc pm_raw_malloc
#define PyMem_RawCalloc pm_raw_calloc
#define PyMem_RawRealloc pm_raw_realloc
#define PyMem_RawFree pm_raw_free

/* Mem domain. */
#define PyMem_Malloc pm_mem_malloc
#define PyMem_Calloc pm_mem_calloc
#define PyMem_Realloc pm_mem_realloc
#define PyMem_Free pm_mem_free

/* Object domain. */
#define PyObject_Malloc pm_obj_malloc
#define PyObject_Calloc pm_obj_calloc
#define PyObject_Realloc pm_obj_realloc
#define PyObject_Free pm_obj_free

#endif /* PYMALLOC_MT_PYMEM_COMPAT_H */
