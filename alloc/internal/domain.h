/*
 * domain.h — the per-domain allocator tables, for the library's own layers.
 *
 * Each domain's installed allocator is a pointer to an immutable pm_allocator record. A
 * caller loads the pointer once (acquire) and uses that record for the whole call, so it
 * sees one allocator whole, whatever pm_set_allocator() does meanwhile.
 */
#ifndef PM_ALLOC_INTERNAL_DOMAIN_H
#define PM_ALLOC_INTERNAL_DOMAIN_H

#include <stdbool.h>

#include "alloc/pymalloc_mt.h"
#include "sync/sync.h"

/* Internal symbols: hidden, so the fast paths reach them without the GOT. */
#pragma GCC visibility push(hidden)

#ifdef __cplusplus
extern "C" { /* white-box tests are C++ */
#endif

extern const pm_allocator *pm_domain_tables[PM_DOMAIN_COUNT];

static inline const pm_allocator *pm_domain_current(pm_domain domain) {
    return (const pm_allocator *)pm_atomic_load_ptr_acquire(&pm_domain_tables[domain]);
}

/* Field-by-field equality of two allocators. */
bool pm_allocator_equal(const pm_allocator *a, const pm_allocator *b);

/* Installs target[d] in every domain d where it differs from saved[d] (what is installed now),
 * all or nothing: if one installation fails, the domains already switched get saved[] back
 * and -1 is returned with errno from the failure. Used by configuration by name and by the
 * debug hooks. */
int pm_domains_install(const pm_allocator saved[PM_DOMAIN_COUNT],
                       const pm_allocator target[PM_DOMAIN_COUNT]);

/* The raw domain's default: the C library's allocator, adjusted to CPython's semantics. */
extern const pm_allocator pm_system_allocator;

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif /* PM_ALLOC_INTERNAL_DOMAIN_H */
