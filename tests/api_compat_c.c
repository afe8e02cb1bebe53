/*
 * api_compat_c.c — C code written as an extension module would write it against CPython's
 * "Memory Management" API, built over alloc/pymem_compat.h without a single pm_* name in
 * the CPython-style part (see api_compat_c.h). Compiled as C, with the project's strict
 * warnings, so a compat header that only worked from C++ would fail to build here.
 */
#include "tests/api_compat_c.h"

#include <string.h>

#include "alloc/pymem_compat.h"

#define CHECK(cond)                  \
    do {                             \
        if (!(cond)) return __LINE__; \
    } while (0)

/* A hook in CPython's style: saves the previous allocator and passes every call on. */
typedef struct counting_hook {
    PyMemAllocatorEx base;
    int mallocs, callocs, reallocs, frees;
} counting_hook;

static void *hook_malloc(void *ctx, size_t size) {
    counting_hook *h = ctx;
    h->mallocs++;
    return h->base.malloc(h->base.ctx, size);
}

static void *hook_calloc(void *ctx, size_t nelem, size_t elsize) {
    counting_hook *h = ctx;
    h->callocs++;
    return h->base.calloc(h->base.ctx, nelem, elsize);
}

static void *hook_realloc(void *ctx, void *ptr, size_t new_size) {
    counting_hook *h = ctx;
    h->reallocs++;
    return h->base.realloc(h->base.ctx, ptr, new_size);
}

static void hook_free(void *ctx, void *ptr) {
    counting_hook *h = ctx;
    h->frees++;
    h->base.free(h->base.ctx, ptr);
}

static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0) return 0;
    }
    return 1;
}

/* malloc / realloc / calloc / free of one domain, through whatever names the caller uses.
 * round_trip and hook_domain are given the mem and object domains too, so they need the GIL
 * (held by api_compat_c_run's caller). */
typedef struct domain_names {
    void *(*malloc_fn)(size_t);
    void *(*calloc_fn)(size_t, size_t);
    void *(*realloc_fn)(void *, size_t);
    void (*free_fn)(void *);
} domain_names;

static int round_trip(const domain_names *d) PM_GIL_REQUIRED {
    char *p = d->malloc_fn(6);
    CHECK(p != NULL);
    memcpy(p, "hello", 6);
    char *q = d->realloc_fn(p, 4000);
    CHECK(q != NULL);
    CHECK(memcmp(q, "hello", 6) == 0);
    d->free_fn(q);
    unsigned char *z = d->calloc_fn(25, 4);
    CHECK(z != NULL);
    CHECK(all_zero(z, 100));
    d->free_fn(z);
    d->free_fn(NULL);
    return 0;
}

static int hook_domain(PyMemAllocatorDomain domain, const domain_names *d)
    PM_GIL_REQUIRED {
    static counting_hook hook; /* static: it must outlive its installation */
    memset(&hook, 0, sizeof hook);
    PyMem_GetAllocator(domain, &hook.base);
    CHECK(hook.base.malloc != NULL);
    /* Positional initialisation, in CPython's field order: ctx, malloc, calloc, realloc, free. */
    PyMemAllocatorEx mine = {&hook, hook_malloc, hook_calloc, hook_realloc, hook_free};
    PyMem_SetAllocator(domain, &mine);
    PyMemAllocatorEx now;
    PyMem_GetAllocator(domain, &now);
    CHECK(now.ctx == &hook && now.malloc == hook_malloc && now.free == hook_free);
    int rc = round_trip(d);
    PyMem_SetAllocator(domain, &hook.base);
    CHECK(rc == 0);
    CHECK(hook.mallocs == 1 && hook.callocs == 1 && hook.reallocs == 1);
    /* Two frees of blocks; free(NULL) may or may not reach a hook (raw skips it). */
    CHECK(hook.frees == 2 || hook.frees == 3);
    return 0;
}

int api_compat_c_run(void) {
    CHECK(PYMEM_DOMAIN_RAW == 0 && PYMEM_DOMAIN_MEM == 1 && PYMEM_DOMAIN_OBJ == 2);
    CHECK(sizeof(PyMemAllocatorEx) == 5 * sizeof(void *));

    const domain_names raw = {PyMem_RawMalloc, PyMem_RawCalloc, PyMem_RawRealloc, PyMem_RawFree};
    const domain_names mem = {PyMem_Malloc, PyMem_Calloc, PyMem_Realloc, PyMem_Free};
    const domain_names obj = {PyObject_Malloc, PyObject_Calloc, PyObject_Realloc, PyObject_Free};
    int rc;
    if ((rc = round_trip(&raw)) != 0) return rc;
    if ((rc = round_trip(&mem)) != 0) return rc;
    if ((rc = round_trip(&obj)) != 0) return rc;
    if ((rc = hook_domain(PYMEM_DOMAIN_RAW, &raw)) != 0) return rc;
    if ((rc = hook_domain(PYMEM_DOMAIN_MEM, &mem)) != 0) return rc;
    if ((rc = hook_domain(PYMEM_DOMAIN_OBJ, &obj)) != 0) return rc;

    /* The names used directly, as most code does. */
    void *a = PyMem_RawMalloc(0);
    void *b = PyMem_Malloc(0);
    void *c = PyObject_Malloc(0);
    CHECK(a != NULL && b != NULL && c != NULL);
    PyMem_RawFree(a);
    PyMem_Free(b);
    PyObject_Free(c);

    /* CPython's get and set are statements that ignore an unknown domain. */
    PyMemAllocatorEx before, after, junk;
    PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &before);
    memset(&junk, 0, sizeof junk);
    PyMem_SetAllocator((PyMemAllocatorDomain)7, &before);
    PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &junk); /* NULL functions: refused, nothing changes */
    PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &after);
    CHECK(memcmp(&before, &after, sizeof before) == 0);
    return 0;
}

int api_c_get_allocator(int domain, pm_allocator *out) {
    return pm_get_allocator((pm_domain)domain, out);
}

int api_c_set_allocator(int domain, const pm_allocator *in) {
    return pm_set_allocator((pm_domain)domain, in);
}
