/*
 * failing_arena_allocator.h — fault injection for pymalloc's arena allocator.
 *
 * The arena-side twin of pm_failing_allocator (failing_allocators.h), driven by the same
 * pm_fail_policy: pymalloc's out-of-memory path for small blocks is "the arena allocator
 * returned NULL", and tests and fuzzers reach it through the product's own seam,
 * pm_set_arena_allocator(), instead of exhausting the machine.
 *
 * A failing arena allocator wraps the arena allocator installed before it. alloc() is
 * judged by the policy with the requested size (pymalloc always asks for pm_arena_size()
 * bytes, so PM_FAIL_SIZE_AT_LEAST fails every arena or none); a failed call returns NULL
 * WITHOUT calling the wrapped alloc. free() never fails: it is counted and passed on.
 *
 *   pm_failing_arena_allocator f;                 // static: see "Lifetime" below
 *   pm_set_arena_reserve(0);                      // so that arenas are really re-requested
 *   pm_failing_arena_allocator_install(&f);       // passes everything through
 *   pm_fail_nth(&f.policy, 1);                    // the next new arena fails ...
 *   pm_fail_from_nth(&f.policy, 1);               // ... or every one from now on
 *   ... pm_mem_malloc(16) ...                      // NULL once it needs a new arena
 *   pm_failing_arena_allocator_uninstall(&f);
 *
 * pymalloc asks for an arena only when no partly used arena and no reserved arena has a
 * free pool, so a test that wants its failure to be reached should first release the
 * reserve (pm_set_arena_reserve(0)) and make sure the pools in use are full or of other
 * size classes.
 *
 * Lifetime. pymalloc records, per arena, the arena allocator that made it and gives the
 * arena back to that one, even after pm_set_arena_allocator() installed another (see
 * alloc/arena.c). So free() may be called on *f after uninstall, for arenas it made and
 * pymalloc still holds (in use, or kept in the reserve). *f must outlive every such arena:
 * in practice make it static, or empty pymalloc and call pm_set_arena_reserve(0) before
 * it goes out of scope; counts().live is how many arenas it still has outstanding.
 *
 * Counters and the policy use relaxed atomics, like the raw failing allocator's, so reading
 * them from another thread is fine; pymalloc itself calls the arena allocator with the GIL
 * held. Install and uninstall change pymalloc's arena allocator and need the GIL.
 *
 * The struct is owned by the caller; its fields other than `policy` are private.
 */
#ifndef PM_TESTS_SUPPORT_FAILING_ARENA_ALLOCATOR_H
#define PM_TESTS_SUPPORT_FAILING_ARENA_ALLOCATOR_H

#include <stddef.h>
#include <stdint.h>

#include "alloc/pymalloc_mt.h"
#include "tests/support/failing_allocators.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pm_failing_arena_allocator {
    pm_fail_policy policy; /* arm it with pm_fail_nth / pm_fail_from_nth / ... */
    /* private */
    pm_arena_allocator wrapped; /* the arena allocator installed before this one */
    int installed;
    uint64_t allocs;       /* every alloc call, failed or not */
    uint64_t frees;        /* every free call */
    uint64_t odd_sizes;    /* alloc or free calls whose size was not pm_arena_size() */
} pm_failing_arena_allocator;

/* A snapshot of what reached a failing arena allocator. */
typedef struct pm_failing_arena_counts {
    uint64_t allocs;    /* alloc calls */
    uint64_t failures;  /* alloc calls that returned NULL by policy */
    uint64_t frees;     /* free calls */
    uint64_t live;      /* arenas handed out and not yet freed: allocs - failures - frees
                           (assuming the wrapped allocator itself never fails) */
    uint64_t odd_sizes; /* calls with a size other than pm_arena_size(): pymalloc promises 0 */
} pm_failing_arena_counts;

/* Initialises *f (policy: never fail, counters zero), saves the installed arena allocator
 * and installs *f in its place. Returns 0, or -1 with errno set by
 * pm_get_arena_allocator/pm_set_arena_allocator (and nothing installed). */
int pm_failing_arena_allocator_install(pm_failing_arena_allocator *f) PM_GIL_REQUIRED;

/* Reinstalls the saved arena allocator (arenas *f made are still freed through *f: see
 * "Lifetime"). Returns 0; or -1 with errno = EINVAL if *f is not installed, or EBUSY if
 * another arena allocator was installed on top of it (unwind that one first). */
int pm_failing_arena_allocator_uninstall(pm_failing_arena_allocator *f) PM_GIL_REQUIRED;

pm_failing_arena_counts pm_failing_arena_allocator_counts(const pm_failing_arena_allocator *f);

/* The pm_arena_allocator that install() installs for *f (ctx = f). */
pm_arena_allocator pm_failing_arena_allocator_as_arena_allocator(pm_failing_arena_allocator *f);

#ifdef __cplusplus
}
#endif

#endif /* PM_TESTS_SUPPORT_FAILING_ARENA_ALLOCATOR_H */
