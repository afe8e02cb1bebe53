/*
 * compat_macros_c.c — C code written against CPython's names, built over
 * alloc/pymem_compat.h (see compat_macros_c.h). Compiled as C with the project's strict
 * warnings, so a macro that only worked from C++ (or tripped -Wextra in C) fails here.
 *
 * Every check sees the domains through a CPython-style hook (get the allocator, set a
 * wrapper that calls it) on the mem and object domains, which counts the calls, records
 * the last size asked for, and refuses sizes of 2^40 bytes or more after recording them so
 * that the largest sizes the macros allow can be seen to reach an allocator without
 * reaching the C library. The only pm_* names are in the test scaffolding (the arena
 * reserve, the live-block count), never in the CPython-style code under test.
 *
 * The GIL: every entry point is PM_GIL_REQUIRED (compat_macros_c.h), as is every static
 * function that calls the mem or object domains; the C++ caller holds it (GilScope).
 */
#include "tests/compat_macros_c.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "alloc/pymem_compat.h"

#define CHECK(cond)                   \
    do {                              \
        if (!(cond)) return __LINE__; \
    } while (0)

/* ---- a counting hook in CPython's style ----------------------------------------------- */

#define HUGE_REQUEST ((size_t)1 << 40)

typedef struct counting_hook {
    PyMemAllocatorEx base;
    PyMemAllocatorDomain domain;
    int mallocs, callocs, reallocs, frees;
    size_t last_size;
    int fail_next; /* refuse the next allocating call */
} counting_hook;

static int refuse(counting_hook *h, size_t size) {
    h->last_size = size;
    if (h->fail_next) {
        h->fail_next = 0;
        return 1;
    }
    return size >= HUGE_REQUEST;
}

static void *hook_malloc(void *ctx, size_t size) {
    counting_hook *h = ctx;
    h->mallocs++;
    return refuse(h, size) ? NULL : h->base.malloc(h->base.ctx, size);
}

static void *hook_calloc(void *ctx, size_t nelem, size_t elsize) {
    counting_hook *h = ctx;
    h->callocs++;
    return refuse(h, nelem * elsize) ? NULL : h->base.calloc(h->base.ctx, nelem, elsize);
}

static void *hook_realloc(void *ctx, void *ptr, size_t new_size) {
    counting_hook *h = ctx;
    h->reallocs++;
    return refuse(h, new_size) ? NULL : h->base.realloc(h->base.ctx, ptr, new_size);
}

static void hook_free(void *ctx, void *ptr) {
    counting_hook *h = ctx;
    h->frees++;
    h->base.free(h->base.ctx, ptr);
}

static int calls(const counting_hook *h) {
    return h->mallocs + h->callocs + h->reallocs + h->frees;
}

/* Static: a hook must outlive its installation. */
static counting_hook mem_hook, obj_hook;

static void hook_install(counting_hook *h, PyMemAllocatorDomain domain) {
    memset(h, 0, sizeof *h);
    h->domain = domain;
    PyMem_GetAllocator(domain, &h->base);
    PyMemAllocatorEx mine = {h, hook_malloc, hook_calloc, hook_realloc, hook_free};
    PyMem_SetAllocator(domain, &mine);
}

static void hook_uninstall(counting_hook *h) {
    PyMem_SetAllocator(h->domain, &h->base);
}

/* Runs body with both hooks installed; they are removed whatever body returns. Every body
 * calls the mem and object domains, so the caller holds the GIL for it. */
static int with_hooks(int (*body)(void)) PM_GIL_REQUIRED {
    hook_install(&mem_hook, PYMEM_DOMAIN_MEM);
    hook_install(&obj_hook, PYMEM_DOMAIN_OBJ);
    int rc = body();
    hook_uninstall(&obj_hook);
    hook_uninstall(&mem_hook);
    return rc;
}

/* ---- the object model, declared as an extension module declares it --------------------- */

typedef struct {
    PyObject_HEAD
    double value;
} FloatObject;

typedef struct {
    PyObject_VAR_HEAD
    char items[1];
} BytesObject;

static PyTypeObject Float_Type = {
    .tp_name = "float",
    .tp_basicsize = sizeof(FloatObject),
};

static PyTypeObject Bytes_Type = {
    .tp_name = "bytes",
    .tp_basicsize = offsetof(BytesObject, items),
    .tp_itemsize = 1,
};

typedef struct {
    char bytes[24];
} triple;

/* ---- PyMem_New -------------------------------------------------------------------------- */

static int pymem_new_body(void) PM_GIL_REQUIRED {
    int *a = PyMem_New(int, 10);
    CHECK(a != NULL);
    CHECK(mem_hook.mallocs == 1 && mem_hook.last_size == 10 * sizeof(int));
    for (int i = 0; i < 10; i++) a[i] = i;
    CHECK(a[9] == 9);
    PyMem_Free(a);
    CHECK(mem_hook.frees == 1);

    /* Past the limit n * sizeof(T) <= PTRDIFF_MAX: NULL, and the allocator is not asked. */
    const size_t limit = (size_t)PTRDIFF_MAX / sizeof(triple);
    const int before = calls(&mem_hook);
    CHECK(PyMem_New(triple, limit + 1) == NULL);
    CHECK(PyMem_New(triple, SIZE_MAX) == NULL);
    CHECK(PyMem_New(triple, (size_t)PTRDIFF_MAX) == NULL);
    CHECK(PyMem_New(char, (size_t)PTRDIFF_MAX + 1) == NULL);
    ptrdiff_t minus_one = -1; /* a negative Py_ssize_t is a huge size_t */
    CHECK(PyMem_New(triple, minus_one) == NULL);
    CHECK(PyMem_New(char, minus_one) == NULL);
    /* Counts whose byte size wraps past SIZE_MAX to something small (2^61 * 8 and
     * 2^61 * 24 are 0 modulo 2^64; one more item is sizeof(T)): without the check these
     * would be tiny successful allocations. */
    const size_t wraps = (size_t)1 << 61;
    CHECK(PyMem_New(double, wraps) == NULL);
    CHECK(PyMem_New(double, wraps + 1) == NULL);
    CHECK(PyMem_New(triple, wraps) == NULL);
    CHECK(PyMem_New(triple, wraps + 1) == NULL);
    CHECK(calls(&mem_hook) == before);

    /* At the limit the allocator is asked for exactly n * sizeof(T) (and refuses here). */
    CHECK(PyMem_New(triple, limit) == NULL);
    CHECK(mem_hook.mallocs == 2 && mem_hook.last_size == limit * sizeof(triple));
    CHECK(PyMem_New(char, PTRDIFF_MAX) == NULL);
    CHECK(mem_hook.mallocs == 3 && mem_hook.last_size == (size_t)PTRDIFF_MAX);

    /* Counts of narrow unsigned types: GCC's -Wtype-limits would reject a plain `n > limit`
     * here (it can never be true); the macro must compile cleanly and work. */
    unsigned char uc = 200;
    unsigned short us = 300;
    unsigned int ui = 7;
    double *d = PyMem_New(double, uc);
    CHECK(d != NULL && mem_hook.last_size == 200 * sizeof(double));
    char *c = PyMem_New(char, us);
    CHECK(c != NULL && mem_hook.last_size == 300);
    long long *ll = PyMem_New(long long, ui);
    CHECK(ll != NULL && mem_hook.last_size == 7 * sizeof(long long));
    PyMem_Free(d);
    PyMem_Free(c);
    PyMem_Free(ll);

    /* Zero items: a distinct non-NULL block, as PyMem_Malloc(0). */
    char *z1 = PyMem_New(char, 0);
    triple *z2 = PyMem_New(triple, 0);
    CHECK(z1 != NULL && z2 != NULL && (void *)z1 != (void *)z2);
    CHECK(mem_hook.last_size == 0);
    PyMem_Free(z1);
    PyMem_Free(z2);

    CHECK(calls(&obj_hook) == 0);
    return 0;
}

int compat_c_pymem_new(void) {
    return with_hooks(pymem_new_body);
}

/* ---- PyMem_Resize ----------------------------------------------------------------------- */

static int pymem_resize_body(void) PM_GIL_REQUIRED {
    int *p = PyMem_New(int, 4);
    CHECK(p != NULL);
    for (int i = 0; i < 4; i++) p[i] = 10 + i;
    PyMem_Resize(p, int, 1000);
    CHECK(p != NULL);
    CHECK(mem_hook.reallocs == 1 && mem_hook.last_size == 1000 * sizeof(int));
    CHECK(p[0] == 10 && p[3] == 13);
    p[999] = 1;

    /* Overflow: p is assigned NULL, the allocator is not asked, the old block stays
     * allocated (it leaks unless saved, as in CPython). */
    int *old = p;
    int before = calls(&mem_hook);
    PyMem_Resize(p, int, (size_t)PTRDIFF_MAX / sizeof(int) + 1);
    CHECK(p == NULL);
    CHECK(calls(&mem_hook) == before);
    CHECK(old[0] == 10 && old[999] == 1); /* still ours (ASan would catch a free) */
    p = old;
    ptrdiff_t minus_one = -1;
    PyMem_Resize(p, int, minus_one);
    CHECK(p == NULL && calls(&mem_hook) == before);
    p = old;
    PyMem_Resize(p, int, ((size_t)1 << 62) + 1); /* 4 * (2^62 + 1) wraps to 4 bytes */
    CHECK(p == NULL && calls(&mem_hook) == before);
    CHECK(old[999] == 1);
    PyMem_Free(old);

    /* Allocator failure: p is NULL too, and the old block is intact. */
    p = PyMem_New(int, 2);
    CHECK(p != NULL);
    p[0] = 7;
    old = p;
    mem_hook.fail_next = 1;
    PyMem_Resize(p, int, 3);
    CHECK(p == NULL && old[0] == 7);
    PyMem_Free(old);

    /* From NULL it allocates (realloc(NULL, n)). */
    int *q = NULL;
    PyMem_Resize(q, int, 3);
    CHECK(q != NULL && mem_hook.last_size == 3 * sizeof(int));
    q[2] = 3;

    /* The macro is an expression whose value is the new pointer. */
    int *r = PyMem_Resize(q, int, 5);
    CHECK(r != NULL && r == q && r[2] == 3);
    PyMem_Free(q);

    CHECK(calls(&obj_hook) == 0);
    return 0;
}

int compat_c_pymem_resize(void) {
    return with_hooks(pymem_resize_body);
}

/* ---- arguments that are expressions ------------------------------------------------------ */

static int argument_evaluation_body(void) PM_GIL_REQUIRED {
    /* Each use of an argument is parenthesised: operators inside keep their meaning. */
    int *a = PyMem_New(int, 2 + 3);
    CHECK(a != NULL && mem_hook.last_size == 5 * sizeof(int));
    int flag = 1;
    int *b = PyMem_New(int, flag ? 2 : 7);
    CHECK(b != NULL && mem_hook.last_size == 2 * sizeof(int));
    char **strings = PyMem_New(char *, 3); /* sizeof applies to the whole type name */
    CHECK(strings != NULL && mem_hook.last_size == 3 * sizeof(char *));

    /* p can be any lvalue expression without side effects. */
    int *slots[2] = {NULL, NULL};
    int **pp = &slots[1];
    PyMem_Resize(*pp, int, 1 + 1);
    CHECK(slots[1] != NULL && mem_hook.last_size == 2 * sizeof(int));
    PyMem_Resize(slots[0], int, flag ? 4 : 1);
    CHECK(slots[0] != NULL && mem_hook.last_size == 4 * sizeof(int));

    PyMem_Free(a);
    PyMem_Free(b);
    PyMem_Free(strings);
    PyMem_Free(slots[0]);
    PyMem_Free(slots[1]);

    /* The object family evaluates each argument exactly once. */
    int type_evaluated = 0, count_evaluated = 0;
    FloatObject *f = PyObject_New(FloatObject, (type_evaluated++, &Float_Type));
    CHECK(f != NULL && type_evaluated == 1);
    BytesObject *v = PyObject_NewVar(BytesObject, (type_evaluated++, &Bytes_Type),
                                     (count_evaluated++, 2 + 1));
    CHECK(v != NULL && type_evaluated == 2 && count_evaluated == 1);
    CHECK(v->ob_base.ob_size == 3 && obj_hook.last_size == 32);
    PyObject_Del(f);
    PyObject_Del(v);
    return 0;
}

int compat_c_argument_evaluation(void) {
    return with_hooks(argument_evaluation_body);
}

/* ---- upper-case and deprecated aliases ------------------------------------------------- */

static int aliases_body(void) PM_GIL_REQUIRED {
    void *m = PyMem_MALLOC(10);
    CHECK(m != NULL && mem_hook.mallocs == 1 && mem_hook.last_size == 10);
    m = PyMem_REALLOC(m, 20);
    CHECK(m != NULL && mem_hook.reallocs == 1 && mem_hook.last_size == 20);
    PyMem_FREE(m);
    CHECK(mem_hook.frees == 1);

    int *n = PyMem_NEW(int, 3);
    CHECK(n != NULL && mem_hook.mallocs == 2 && mem_hook.last_size == 3 * sizeof(int));
    PyMem_RESIZE(n, int, 6);
    CHECK(n != NULL && mem_hook.reallocs == 2 && mem_hook.last_size == 6 * sizeof(int));
    CHECK(PyMem_NEW(int, (size_t)PTRDIFF_MAX) == NULL && mem_hook.mallocs == 2);
    PyMem_Del(n);
    CHECK(mem_hook.frees == 2);
    n = PyMem_NEW(int, 1);
    PyMem_DEL(n);
    CHECK(mem_hook.frees == 3);

    /* The parameterless ones are function names, as in CPython (dealloc = PyMem_Del). */
    void (*mem_free_fns[])(void *) = {PyMem_Del, PyMem_DEL};
    for (int i = 0; i < 2; i++) mem_free_fns[i](PyMem_Malloc(1));
    CHECK(mem_hook.frees == 5);
    CHECK(calls(&obj_hook) == 0);

    /* Object domain aliases. */
    const int mem_calls = calls(&mem_hook);
    void *(*obj_malloc)(size_t) = PyObject_MALLOC;
    void *(*obj_realloc)(void *, size_t) = PyObject_REALLOC;
    void (*obj_frees[])(void *) = {PyObject_FREE, PyObject_Del, PyObject_DEL};
    void *o = PyObject_MALLOC(16);
    CHECK(o != NULL && obj_hook.mallocs == 1 && obj_hook.last_size == 16);
    o = PyObject_REALLOC(o, 32);
    CHECK(o != NULL && obj_hook.reallocs == 1 && obj_hook.last_size == 32);
    PyObject_FREE(o);
    o = PyObject_MALLOC(8);
    PyObject_Del(o);
    o = PyObject_MALLOC(8);
    PyObject_DEL(o);
    CHECK(obj_hook.mallocs == 3 && obj_hook.frees == 3);
    for (int i = 0; i < 3; i++) {
        void *x = obj_realloc(obj_malloc(4), 40);
        CHECK(x != NULL);
        obj_frees[i](x);
    }
    CHECK(obj_hook.mallocs == 6 && obj_hook.reallocs == 4 && obj_hook.frees == 6);
    CHECK(calls(&mem_hook) == mem_calls);
    return 0;
}

int compat_c_aliases(void) {
    return with_hooks(aliases_body);
}

/* ---- PyObject_New ----------------------------------------------------------------------- */

static int object_new_body(void) PM_GIL_REQUIRED {
    CHECK(offsetof(FloatObject, ob_base) == 0);
    FloatObject *f = PyObject_New(FloatObject, &Float_Type);
    CHECK(f != NULL);
    CHECK(obj_hook.mallocs == 1 && obj_hook.last_size == sizeof(FloatObject));
    CHECK(f->ob_base.ob_refcnt == 1 && f->ob_base.ob_type == &Float_Type);
    f->value = 2.5;
    PyObject *as_object = (PyObject *)f; /* the CPython cast */
    CHECK(as_object->ob_type == &Float_Type);
    PyObject_Del(f);
    CHECK(obj_hook.frees == 1);

    FloatObject *g = PyObject_NEW(FloatObject, &Float_Type);
    CHECK(g != NULL && g->ob_base.ob_refcnt == 1 && obj_hook.mallocs == 2);
    void (*tp_free)(void *) = PyObject_Del; /* tp_free = PyObject_Del */
    tp_free(g);
    CHECK(obj_hook.frees == 2);

    /* Allocator failure. */
    obj_hook.fail_next = 1;
    CHECK(PyObject_New(FloatObject, &Float_Type) == NULL);
    CHECK(calls(&mem_hook) == 0);
    return 0;
}

int compat_c_object_new(void) {
    return with_hooks(object_new_body);
}

static int object_new_var_body(void) PM_GIL_REQUIRED {
    BytesObject *b = PyObject_NewVar(BytesObject, &Bytes_Type, 10);
    CHECK(b != NULL);
    /* 24 header bytes + 10 items, rounded up to a multiple of sizeof(void *). */
    CHECK(obj_hook.mallocs == 1 && obj_hook.last_size == 40);
    CHECK(b->ob_base.ob_size == 10);
    CHECK(b->ob_base.ob_base.ob_refcnt == 1 && b->ob_base.ob_base.ob_type == &Bytes_Type);
    memcpy(b->items, "0123456789", 10);
    PyObject_Del(b);

    BytesObject *e = PyObject_NEW_VAR(BytesObject, &Bytes_Type, 0);
    CHECK(e != NULL && e->ob_base.ob_size == 0 && obj_hook.last_size == 24);
    PyObject_DEL(e);

    /* A negative count (a Py_ssize_t in CPython) or an overflowing size: NULL, no call. */
    const int before = calls(&obj_hook);
    ptrdiff_t minus_one = -1;
    CHECK(PyObject_NewVar(BytesObject, &Bytes_Type, minus_one) == NULL);
    CHECK(PyObject_NewVar(BytesObject, &Bytes_Type, PTRDIFF_MAX) == NULL);
    CHECK(PyObject_NEW_VAR(BytesObject, &Bytes_Type, SIZE_MAX) == NULL);
    CHECK(calls(&obj_hook) == before);
    CHECK(calls(&mem_hook) == 0);
    return 0;
}

int compat_c_object_new_var(void) {
    return with_hooks(object_new_var_body);
}

/* ---- PyObjectArenaAllocator -------------------------------------------------------------- */

static struct {
    PyObjectArenaAllocator base;
    int allocs, frees;
    size_t last_size;
} arena_hook;

static void *arena_alloc(void *ctx, size_t size) {
    (void)ctx;
    arena_hook.allocs++;
    arena_hook.last_size = size;
    return arena_hook.base.alloc(arena_hook.base.ctx, size);
}

static void arena_free(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    arena_hook.frees++;
    arena_hook.base.free(arena_hook.base.ctx, ptr, size);
}

int compat_c_arena_allocator(void) {
    PyObjectArenaAllocator before, now;
    memset(&before, 0, sizeof before);
    PyObject_GetArenaAllocator(&before);
    CHECK(before.alloc != NULL && before.free != NULL);

    /* Set copies the struct; get reads it back. */
    PyObjectArenaAllocator copy = before;
    PyObject_SetArenaAllocator(&copy);
    memset(&copy, 0, sizeof copy);
    PyObject_GetArenaAllocator(&now);
    CHECK(memcmp(&now, &before, sizeof now) == 0);

    /* An allocator with NULL functions is ignored (both macros are statements). */
    PyObjectArenaAllocator junk;
    memset(&junk, 0, sizeof junk);
    PyObject_SetArenaAllocator(&junk);
    PyObject_GetArenaAllocator(&now);
    CHECK(memcmp(&now, &before, sizeof now) == 0);

    /* A wrapper sees the arenas pymalloc asks for. With no live block and no reserve, the
     * first small allocation needs a new arena and its free gives the arena back. */
    CHECK(pm_allocated_blocks() == 0);
    const size_t reserve = pm_get_arena_reserve();
    pm_set_arena_reserve(0);
    memset(&arena_hook, 0, sizeof arena_hook);
    arena_hook.base = before;
    PyObjectArenaAllocator mine = {&arena_hook, arena_alloc, arena_free};
    PyObject_SetArenaAllocator(&mine);
    void *p = PyObject_Malloc(16);
    PyObject_Free(p);
    PyObject_SetArenaAllocator(&before);
    pm_set_arena_reserve(reserve);
    CHECK(p != NULL);
    CHECK(arena_hook.allocs == 1 && arena_hook.last_size == pm_arena_size());
    CHECK(arena_hook.frees == 1);
    return 0;
}
