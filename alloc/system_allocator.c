/*
 * system_allocator.c — the raw domain's default allocator: the C library's malloc family,
 * adjusted to CPython's semantics where the C standard leaves room.
 *
 * C allows malloc(0) to return NULL and realloc(p, 0) to free p; CPython requires a distinct
 * non-NULL pointer and a realloc that never frees. Asking the C library for one byte instead
 * of zero gives both, as CPython's own raw allocator does.
 */
#include <stdlib.h>

#include "alloc/internal/domain.h"

static void *system_malloc(void *ctx, size_t size) {
    (void)ctx;
    return malloc(size == 0 ? 1 : size);
}

static void *system_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    if (nelem == 0 || elsize == 0) {
        nelem = 1;
        elsize = 1;
    }
    return calloc(nelem, elsize);
}

static void *system_realloc(void *ctx, void *ptr, size_t new_size) {
    (void)ctx;
    return realloc(ptr, new_size == 0 ? 1 : new_size);
}

static void system_free(void *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

const pm_allocator pm_system_allocator = {
    .ctx = NULL,
    .malloc = system_malloc,
    .calloc = system_calloc,
    .realloc = system_realloc,
    .free = system_free,
};
