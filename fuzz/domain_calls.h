/*
 * fuzz/domain_calls.h — malloc, calloc, realloc and free in a domain named at run time,
 * for the harnesses whose programs pick the domain per operation (tape.c, fuzz_trace.c).
 * The mem and object calls need the GIL, so these do too.
 */
#ifndef PM_FUZZ_DOMAIN_CALLS_H
#define PM_FUZZ_DOMAIN_CALLS_H

#include <stddef.h>

#include "alloc/pymalloc_mt.h"

static inline void *domain_malloc(pm_domain d, size_t n) PM_GIL_REQUIRED {
    switch (d) {
    case PM_DOMAIN_RAW: return pm_raw_malloc(n);
    case PM_DOMAIN_MEM: return pm_mem_malloc(n);
    default: return pm_obj_malloc(n);
    }
}

static inline void *domain_calloc(pm_domain d, size_t nelem, size_t elsize) PM_GIL_REQUIRED {
    switch (d) {
    case PM_DOMAIN_RAW: return pm_raw_calloc(nelem, elsize);
    case PM_DOMAIN_MEM: return pm_mem_calloc(nelem, elsize);
    default: return pm_obj_calloc(nelem, elsize);
    }
}

static inline void *domain_realloc(pm_domain d, void *p, size_t n) PM_GIL_REQUIRED {
    switch (d) {
    case PM_DOMAIN_RAW: return pm_raw_realloc(p, n);
    case PM_DOMAIN_MEM: return pm_mem_realloc(p, n);
    default: return pm_obj_realloc(p, n);
    }
}

static inline void domain_free(pm_domain d, void *p) PM_GIL_REQUIRED {
    switch (d) {
    case PM_DOMAIN_RAW: pm_raw_free(p); break;
    case PM_DOMAIN_MEM: pm_mem_free(p); break;
    default: pm_obj_free(p); break;
    }
}

#endif /* PM_FUZZ_DOMAIN_CALLS_H */
