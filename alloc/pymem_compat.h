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

/* CPython's returns nothing either (it cannot fail there: its hook state is static). */
#define PyMem_SetupDebugHooks() ((void)pm_setup_debug_hooks())

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

/* ---- type-oriented memory interface (CPython's pymem.h) ------------------------------ *
 * PyMem_New(T, n) allocates n objects of type T from the mem domain, PyMem_Resize(p, T, n)
 * resizes p to n of them. When n * sizeof(T) would exceed PTRDIFF_MAX (PY_SSIZE_T_MAX;
 * a negative n converts to a huge size_t and is refused too) the result is NULL and the
 * allocator is not called.
 *
 * PyMem_Resize ALWAYS assigns p: the new block, or NULL when the allocator fails or on that
 * overflow. In both NULL cases the old block is still allocated, and since p no longer
 * points at it, it leaks unless the caller saved p first; CPython's macro behaves the same
 * (its header tells callers to keep the old value for their error handling). So:
 *
 *     T *old = p;  PyMem_Resize(p, T, n);  if (p == NULL) { PyMem_Free(old); ... }
 *
 * Evaluation, as CPython's macros: T is only used in sizeof; n is evaluated twice (the
 * check and the size), and p twice (the realloc argument and the assignment; it must be an
 * lvalue), so neither may have side effects. The check is written n / (limit + 1) != 0
 * rather than n > limit: the same test, but GCC's -Wtype-limits (in -Wextra) rejects the
 * comparison when n is an unsigned type too narrow to ever exceed the limit. */
#define PM_COMPAT_TOO_MANY(type, n) \
    ((size_t)(n) / ((size_t)PTRDIFF_MAX / sizeof(type) + 1) != 0)

#define PyMem_New(type, n) \
    (PM_COMPAT_TOO_MANY(type, n) ? NULL : (type *)pm_mem_malloc((size_t)(n) * sizeof(type)))
#define PyMem_Resize(p, type, n)                                                       \
    ((p) = (PM_COMPAT_TOO_MANY(type, n)                                                \
                ? NULL                                                                 \
                : (type *)pm_mem_realloc((p), (size_t)(n) * sizeof(type))))
/* Object-like, as in CPython, so it can be used as a function pointer (dealloc = PyMem_Del). */
#define PyMem_Del pm_mem_free

/* Deprecated upper-case aliases CPython 3.11 still defines. Those it defines with
 * parameters take them here too (so they cannot be taken as function pointers there
 * either); the others are the function's name. */
#define PyMem_MALLOC(n) PyMem_Malloc(n)
#define PyMem_REALLOC(p, n) PyMem_Realloc(p, n)
#define PyMem_FREE(p) PyMem_Free(p)
#define PyMem_NEW(type, n) PyMem_New(type, n)
#define PyMem_RESIZE(p, type, n) PyMem_Resize(p, type, n)
#define PyMem_DEL pm_mem_free

#define PyObject_MALLOC pm_obj_malloc
#define PyObject_REALLOC pm_obj_realloc
#define PyObject_FREE pm_obj_free

/* ---- the object model (CPython's object.h, the fields the allocator touches) ---------- *
 * Field names are CPython's: ob_refcnt, ob_type, ob_size; tp_name, tp_basicsize,
 * tp_itemsize. A type is declared as in CPython with designated initialisers:
 *
 *     typedef struct { PyObject_HEAD double value; } FloatObject;
 *     static PyTypeObject Float_Type = { .tp_name = "float",
 *                                        .tp_basicsize = sizeof(FloatObject) };
 *     FloatObject *f = PyObject_New(FloatObject, &Float_Type);   ...   PyObject_Del(f); */
typedef pm_object PyObject;
typedef pm_var_object PyVarObject;
typedef pm_type PyTypeObject;

#define PyObject_HEAD PyObject ob_base;
#define PyObject_VAR_HEAD PyVarObject ob_base;

/* ---- the object family (CPython's objimpl.h) ------------------------------------------ *
 * Each argument is evaluated once. n is converted to size_t, so a negative count is a
 * huge one and gives NULL without calling the allocator. */
#define PyObject_New(type, typeobj) ((type *)pm_object_new(typeobj))
#define PyObject_NewVar(type, typeobj, n) ((type *)pm_object_new_var((typeobj), (size_t)(n)))
/* Object-like, as in CPython, so that tp_free = PyObject_Del works. */
#define PyObject_Del pm_object_del

/* Aliases CPython 3.11 keeps for backward compatibility. */
#define PyObject_NEW(type, typeobj) PyObject_New(type, typeobj)
#define PyObject_NEW_VAR(type, typeobj, n) PyObject_NewVar(type, typeobj, n)
#define PyObject_DEL pm_object_del

/* ---- the arena allocator (CPython's cpython/objimpl.h) -------------------------------- *
 * CPython's get/set return nothing; set ignores an invalid allocator here (NULL or a NULL
 * function), where CPython would install it and crash later. */
typedef pm_arena_allocator PyObjectArenaAllocator;
#define PyObject_GetArenaAllocator(allocator) ((void)pm_get_arena_allocator((allocator)))
#define PyObject_SetArenaAllocator(allocator) ((void)pm_set_arena_allocator((allocator)))

/* ---- tracemalloc's C API (CPython's tracemalloc.h) ------------------------------------ *
 * 0 on success, -1 when the trace cannot be stored, -2 when tracing is off. */
#define PyTraceMalloc_Track(domain, ptr, size) pm_trace_track((domain), (ptr), (size))
#define PyTraceMalloc_Untrack(domain, ptr) pm_trace_untrack((domain), (ptr))

#endif /* PYMALLOC_MT_PYMEM_COMPAT_H */
