/*
 * domain.c — the three allocator domains: their tables and their public entry points.
 *
 * Tables. Each domain holds one pointer to an immutable pm_allocator record:
 *
 *   pm_domain_tables[RAW] ──> { ctx, malloc, calloc, realloc, free }   (never written again)
 *   pm_domain_tables[MEM] ──> { ... }
 *
 * pm_set_allocator() publishes a new record with a single release store; a call loads the
 * pointer once (acquire) and uses that record throughout, so it cannot see half of one
 * allocator and half of another, and no lock is taken on any allocation path.
 *
 * The price is reclamation: a reader may still be using a record long after it was
 * replaced, and tracking readers (epochs, hazard pointers) would put per-thread bookkeeping
 * on the raw path. Instead records are interned and never freed: installing an allocator
 * equal (field by field) to one installed before reuses its record. Hooks that wrap and
 * unwrap, or swap between a few allocators, therefore cost a handful of 48-byte records in
 * total, however often they are installed. Alternatives rejected: a seqlock (readers spin
 * while a writer is preempted mid-update, so the raw path would not be lock-free) and a
 * writer-side lock (the raw path would be lock-free but set/get would block each other for
 * no gain, since interning needs none).
 *
 * Entry points. The public functions apply CPython's argument rules before the allocator
 * sees anything: sizes above PTRDIFF_MAX (PY_SSIZE_T_MAX) and overflowing calloc products
 * return NULL without a call. Everything else reaches the installed functions unchanged.
 */
#include "alloc/internal/domain.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc/internal/pymalloc.h"
#include "alloc/internal/thread_counters.h"
#include "sync/sync.h"

const pm_allocator *pm_domain_tables[PM_DOMAIN_COUNT] = {
    [PM_DOMAIN_RAW] = &pm_system_allocator,
    [PM_DOMAIN_MEM] = &pm_pymalloc_allocator,
    [PM_DOMAIN_OBJ] = &pm_pymalloc_allocator,
};

/* ---- interned allocator records ------------------------------------------------------ */

typedef struct interned_allocator {
    pm_allocator allocator;
    struct interned_allocator *next; /* immutable once on the list */
} interned_allocator;

enum { STATIC_RECORDS = 64 };
static interned_allocator static_records[STATIC_RECORDS];
static size_t static_records_used;       /* fetch-and-add index */
static interned_allocator *interned_list; /* append-only, pushed by CAS */

bool pm_allocator_equal(const pm_allocator *a, const pm_allocator *b) {
    return a->ctx == b->ctx && a->malloc == b->malloc && a->calloc == b->calloc &&
           a->realloc == b->realloc && a->free == b->free;
}

static interned_allocator *new_record(void) {
    size_t index = pm_atomic_faa_size(&static_records_used, 1);
    if (index < STATIC_RECORDS) return &static_records[index];
    /* Past 64 distinct allocators: one page each. Reaching this takes a program that keeps
     * inventing new contexts; it still works, at 4 KiB a record. */
    void *page = mmap(NULL, sizeof(interned_allocator), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return page == MAP_FAILED ? NULL : page;
}

/* Returns a record equal to *in that will never change or be freed, or NULL when no memory
 * is left for a new one. Two threads interning the same new allocator at once may create
 * two equal records; both are valid, so that race costs 48 bytes and nothing else. */
static const pm_allocator *intern_allocator(const pm_allocator *in) {
    /* The built-in records come back as themselves, so that a hook uninstalled by setting
     * the saved allocator again restores the entry points' fast paths. */
    if (pm_allocator_equal(in, &pm_system_allocator)) return &pm_system_allocator;
    if (pm_allocator_equal(in, &pm_pymalloc_allocator)) return &pm_pymalloc_allocator;
    for (interned_allocator *r = pm_atomic_load_ptr_acquire(&interned_list); r; r = r->next) {
        if (pm_allocator_equal(in, &r->allocator)) return &r->allocator;
    }
    interned_allocator *record = new_record();
    if (record == NULL) return NULL;
    record->allocator = *in;
    for (;;) {
        interned_allocator *head = pm_atomic_load_ptr_relaxed(&interned_list);
        record->next = head;
        if (pm_atomic_cas_ptr(&interned_list, head, record)) return &record->allocator;
    }
}

/* ---- get / set ----------------------------------------------------------------------- */

static bool valid_domain(pm_domain domain) {
    return (unsigned)domain < PM_DOMAIN_COUNT;
}

int pm_get_allocator(pm_domain domain, pm_allocator *out) {
    if (out == NULL || !valid_domain(domain)) {
        if (out != NULL) memset(out, 0, sizeof *out);
        errno = EINVAL;
        return -1;
    }
    *out = *pm_domain_current(domain);
    return 0;
}

int pm_set_allocator(pm_domain domain, const pm_allocator *in) {
    if (in == NULL || !valid_domain(domain) || in->malloc == NULL || in->calloc == NULL ||
        in->realloc == NULL || in->free == NULL) {
        errno = EINVAL;
        return -1;
    }
    const pm_allocator *record = intern_allocator(in);
    if (record == NULL) {
        errno = ENOMEM;
        return -1;
    }
    pm_atomic_store_ptr_release(&pm_domain_tables[domain], record);
    pm_domain_route_update(domain, record);
    return 0;
}

int pm_domains_install(const pm_allocator saved[PM_DOMAIN_COUNT],
                       const pm_allocator target[PM_DOMAIN_COUNT]) {
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (pm_allocator_equal(&saved[d], &target[d])) continue;
        if (pm_set_allocator((pm_domain)d, &target[d]) != 0) {
            int error = errno;
            /* Put back what was switched: those records are interned, so this cannot fail. */
            for (int undo = 0; undo < d; undo++) (void)pm_set_allocator((pm_domain)undo, &saved[undo]);
            errno = error;
            return -1;
        }
    }
    return 0;
}

/* ---- entry points -------------------------------------------------------------------- */

/* CPython refuses sizes that do not fit Py_ssize_t before any allocator sees them. */
static inline bool size_refused(size_t size) {
    return size > (size_t)PTRDIFF_MAX;
}

static inline bool calloc_refused(size_t nelem, size_t elsize) {
    return elsize != 0 && nelem > (size_t)PTRDIFF_MAX / elsize;
}

void *pm_raw_malloc(size_t size) {
    void *p = NULL;
    if (!size_refused(size)) {
        const pm_allocator *a = pm_domain_current(PM_DOMAIN_RAW);
        p = a->malloc(a->ctx, size);
    }
    pm_counter_add(PM_COUNTER_RAW_MALLOC, 1);
    if (p == NULL) pm_counter_add(PM_COUNTER_RAW_FAILED_ALLOC, 1);
    return p;
}

void *pm_raw_calloc(size_t nelem, size_t elsize) {
    void *p = NULL;
    if (!calloc_refused(nelem, elsize)) {
        const pm_allocator *a = pm_domain_current(PM_DOMAIN_RAW);
        p = a->calloc(a->ctx, nelem, elsize);
    }
    pm_counter_add(PM_COUNTER_RAW_CALLOC, 1);
    if (p == NULL) pm_counter_add(PM_COUNTER_RAW_FAILED_ALLOC, 1);
    return p;
}

void *pm_raw_realloc(void *ptr, size_t new_size) {
    void *p = NULL;
    if (!size_refused(new_size)) {
        const pm_allocator *a = pm_domain_current(PM_DOMAIN_RAW);
        p = a->realloc(a->ctx, ptr, new_size);
    }
    if (ptr == NULL) {
        pm_counter_add(PM_COUNTER_RAW_MALLOC, 1);
        if (p == NULL) pm_counter_add(PM_COUNTER_RAW_FAILED_ALLOC, 1);
    } else {
        pm_counter_add(PM_COUNTER_RAW_REALLOC, 1);
        if (p == NULL) pm_counter_add(PM_COUNTER_RAW_FAILED_REALLOC, 1);
    }
    return p;
}

void pm_raw_free(void *ptr) {
    if (ptr == NULL) return;
    const pm_allocator *a = pm_domain_current(PM_DOMAIN_RAW);
    a->free(a->ctx, ptr);
    pm_counter_add(PM_COUNTER_RAW_FREE, 1);
}

void pm_get_raw_stats(pm_raw_stats *out) {
    if (out == NULL) return;
    uint64_t mallocs = pm_counter_sum(PM_COUNTER_RAW_MALLOC);
    uint64_t callocs = pm_counter_sum(PM_COUNTER_RAW_CALLOC);
    uint64_t failed_alloc = pm_counter_sum(PM_COUNTER_RAW_FAILED_ALLOC);
    uint64_t frees = pm_counter_sum(PM_COUNTER_RAW_FREE);
    out->mallocs = mallocs;
    out->callocs = callocs;
    out->reallocs = pm_counter_sum(PM_COUNTER_RAW_REALLOC);
    out->frees = frees;
    out->failures = failed_alloc + pm_counter_sum(PM_COUNTER_RAW_FAILED_REALLOC);
    out->live = mallocs + callocs - failed_alloc - frees;
}

/* The mem and object domains. malloc and free go through the domain's route (see
 * pm_domain_route in alloc/internal/pymalloc.h): pymalloc's inline fast path, on the calling
 * thread's heap, when pymalloc is installed, the table otherwise, with no comparison of
 * tables on the way. calloc and realloc
 * always dispatch through the table. */
#define DEFINE_GIL_DOMAIN(prefix, domain)                                            \
    void *prefix##_malloc(size_t size) {                                             \
        return pm_pymalloc_malloc_inline(pm_route_heap(domain), size, domain);       \
    }                                                                                \
    void *prefix##_calloc(size_t nelem, size_t elsize) {                             \
        if (calloc_refused(nelem, elsize)) return NULL;                              \
        const pm_allocator *a = pm_domain_current(domain);                           \
        return a->calloc(a->ctx, nelem, elsize);                                     \
    }                                                                                \
    void *prefix##_realloc(void *ptr, size_t new_size) {                             \
        if (size_refused(new_size)) return NULL;                                     \
        const pm_allocator *a = pm_domain_current(domain);                           \
        return a->realloc(a->ctx, ptr, new_size);                                    \
    }                                                                                \
    void prefix##_free(void *ptr) {                                                  \
        const pm_map *map = pm_atomic_load_ptr_relaxed(&pm_domain_routes[domain].map); \
        pm_pymalloc_free_inline(map, ptr, domain);                                   \
    }

DEFINE_GIL_DOMAIN(pm_mem, PM_DOMAIN_MEM)
DEFINE_GIL_DOMAIN(pm_obj, PM_DOMAIN_OBJ)
