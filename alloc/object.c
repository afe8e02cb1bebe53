/*
 * object.c — the object family: pm_object_new, pm_object_new_var, pm_object_del
 * (CPython's _PyObject_New, _PyObject_NewVar and PyObject_Del).
 *
 * What it owns. Only the arithmetic and the header: memory comes from the object domain
 * (pm_obj_malloc), so whatever is installed there (pymalloc, the C library, a hook) serves
 * objects exactly as it serves PyObject_Malloc, and pm_object_del is pm_obj_free.
 *
 *   fixed:     [ ob_refcnt | ob_type | ... tp_basicsize bytes in all ... ]
 *   variable:  [ ob_refcnt | ob_type | ob_size | ... | item 0 | item 1 | ... | pad ]
 *              |<------------- tp_basicsize ------------>|<- nitems * tp_itemsize ->|
 *              total rounded up to a multiple of sizeof(void *)
 *
 * Sizes. A fixed object takes exactly tp_basicsize bytes (CPython's _PyObject_SIZE: no
 * rounding). A variable one takes basicsize + nitems * itemsize rounded up to a multiple of
 * sizeof(void *), as CPython's _PyObject_VAR_SIZE, so that a subtype can put pointer fields
 * after the items. CPython computes that expression unchecked and relies on its callers;
 * here every step is checked, because a wrapped size is a small allocation that the caller
 * then writes nitems items into:
 *
 *   nitems > PTRDIFF_MAX                  ob_size could not hold it
 *   nitems * itemsize overflows size_t    the multiply
 *   basicsize + that overflows            the add
 *   rounding up passes PTRDIFF_MAX        the round (which could otherwise wrap to 0)
 *                                         and the domain's own size limit, in one test
 *
 * Any of them returns NULL with errno = ENOMEM before the allocator is called, as CPython's
 * size-checked paths raise MemoryError. An allocator that returns NULL gives NULL with
 * errno = ENOMEM too, so callers have one rule. A NULL type, or a tp_basicsize too small to
 * hold the header that is about to be written (CPython does not check; here it would be a
 * heap overflow), gives NULL with errno = EINVAL.
 *
 * Only the header is initialised, as in CPython: ob_refcnt = 1, ob_type, and ob_size for a
 * variable object. The rest is whatever the allocator returned. Like every object-domain
 * call, these need the GIL.
 */
#include "alloc/pymalloc_mt.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define POINTER_ALIGNMENT sizeof(void *)
_Static_assert((POINTER_ALIGNMENT & (POINTER_ALIGNMENT - 1)) == 0,
               "rounding to a multiple of sizeof(void *) needs a power of two");

/* The bytes of a variable object of `nitems` items, or false if any step overflows or the
 * result would exceed PTRDIFF_MAX. */
static bool var_object_size(const pm_type *type, size_t nitems, size_t *out) {
    size_t items_bytes, unrounded;
    if (nitems > (size_t)PTRDIFF_MAX) return false;
    if (__builtin_mul_overflow(nitems, type->tp_itemsize, &items_bytes)) return false;
    if (__builtin_add_overflow(type->tp_basicsize, items_bytes, &unrounded)) return false;
    /* Rounding adds at most POINTER_ALIGNMENT - 1, so this bound keeps the result at or
     * below PTRDIFF_MAX and rules out wrapping past SIZE_MAX to a tiny size. */
    if (unrounded > (size_t)PTRDIFF_MAX - (POINTER_ALIGNMENT - 1)) return false;
    *out = (unrounded + (POINTER_ALIGNMENT - 1)) & ~(POINTER_ALIGNMENT - 1);
    return true;
}

pm_object *pm_object_new(const pm_type *type) {
    if (type == NULL || type->tp_basicsize < sizeof(pm_object)) {
        errno = EINVAL;
        return NULL;
    }
    /* tp_basicsize > PTRDIFF_MAX is refused by pm_obj_malloc before the allocator sees it. */
    pm_object *op = pm_obj_malloc(type->tp_basicsize);
    if (op == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    op->ob_refcnt = 1;
    op->ob_type = type;
    return op;
}

pm_var_object *pm_object_new_var(const pm_type *type, size_t nitems) {
    if (type == NULL || type->tp_basicsize < sizeof(pm_var_object)) {
        errno = EINVAL;
        return NULL;
    }
    size_t size;
    if (!var_object_size(type, nitems, &size)) {
        errno = ENOMEM;
        return NULL;
    }
    pm_var_object *op = pm_obj_malloc(size);
    if (op == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    op->ob_base.ob_refcnt = 1;
    op->ob_base.ob_type = type;
    op->ob_size = (ptrdiff_t)nitems;
    return op;
}

void pm_object_del(void *op) {
    pm_obj_free(op);
}
