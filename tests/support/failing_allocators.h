/*
 * failing_allocators.h — fault injection for tests: allocators that fail on demand.
 *
 * Tests (and fuzz replays) reach the out-of-memory paths through the product's own seam,
 * pm_set_allocator(), rather than by exhausting the machine. A failing allocator wraps the
 * one installed before it: every call it does not fail is passed through unchanged, with the
 * wrapped allocator's ctx, so blocks made before, during and after the installation can all
 * be freed through it.
 *
 * Two parts, so that every failing allocator is driven the same way:
 *
 *   pm_fail_policy    when to fail: never, the Nth call from now, every call from the Nth,
 *                     or every request of at least some size. It counts the calls it judges
 *                     and the failures it orders. Shared by every failing allocator.
 *   pm_failing_allocator
 *                     a pm_allocator (any domain; tests use raw) built on a policy. Allocating
 *                     calls (malloc, calloc, realloc, including realloc(NULL, n)) are judged;
 *                     free never fails and is only counted. A failed call returns NULL
 *                     WITHOUT calling the wrapped function.
 *
 * A failing arena allocator (pm_object_arena_allocator, when alloc/ has one) belongs here in
 * the same shape: a struct holding a pm_fail_policy, the saved arena allocator and counters,
 * with install/uninstall functions; its alloc() is judged with the arena size, its free() is
 * only counted.
 *
 * Counters and the policy are read and written with relaxed atomics, so any thread may
 * allocate through an installed failing allocator while another re-arms or reads it. A
 * policy armed while other threads allocate applies from some call on; which one is up to
 * the scheduler. Install and uninstall change the domain's table and are not atomic with
 * respect to another thread doing the same: do them from one thread.
 *
 * Usage:
 *   pm_failing_allocator f;
 *   pm_failing_allocator_install(&f, PM_DOMAIN_RAW);   // passes everything through
 *   pm_fail_nth(&f.policy, 2);                           // the 2nd allocating call fails
 *   ... pm_raw_malloc(...) ...
 *   pm_failing_allocator_uninstall(&f);                  // the saved allocator is back
 *
 * The struct is owned by the caller and must outlive its installation; its fields are
 * private: read them through the functions below.
 */
#ifndef PM_TESTS_SUPPORT_FAILING_ALLOCATORS_H
#define PM_TESTS_SUPPORT_FAILING_ALLOCATORS_H

#include <stddef.h>
#include <stdint.h>

#include "alloc/pymalloc_mt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the policy: when to fail --------------------------------------------------------- */

typedef enum pm_fail_mode {
    PM_FAIL_NEVER = 0,        /* pass every call through */
    PM_FAIL_NTH = 1,          /* fail exactly the Nth judged call from arming (N >= 1) */
    PM_FAIL_FROM_NTH = 2,     /* fail the Nth judged call from arming and every later one */
    PM_FAIL_SIZE_AT_LEAST = 3 /* fail every request of at least `threshold` bytes */
} pm_fail_mode;

typedef struct pm_fail_policy {
    /* All fields are accessed with relaxed atomics only. */
    int mode;          /* a pm_fail_mode */
    uint64_t n;        /* for NTH / FROM_NTH */
    size_t threshold;  /* for SIZE_AT_LEAST */
    uint64_t since;    /* judged calls since the policy was last armed */
    uint64_t calls;    /* judged calls since pm_fail_policy_init */
    uint64_t failures; /* failures ordered since pm_fail_policy_init */
} pm_fail_policy;

/* Sets the policy to PM_FAIL_NEVER with every counter at zero. */
void pm_fail_policy_init(pm_fail_policy *policy);

/* Arming: each one replaces the previous mode and restarts the "from now" count. Total
 * calls and failures keep counting. n must be at least 1 (n = 1 is the very next call). */
void pm_fail_never(pm_fail_policy *policy);
void pm_fail_nth(pm_fail_policy *policy, uint64_t n);
void pm_fail_from_nth(pm_fail_policy *policy, uint64_t n);
void pm_fail_size_at_least(pm_fail_policy *policy, size_t threshold);

/* Judges one request of `size` bytes: counts it and returns 1 if it must fail (counting the
 * failure too), 0 if it may go through. For the allocators in this file; also usable by a
 * test's own hook. */
int pm_fail_policy_judge(pm_fail_policy *policy, size_t size);

uint64_t pm_fail_policy_calls(const pm_fail_policy *policy);
uint64_t pm_fail_policy_failures(const pm_fail_policy *policy);

/* ---- a failing pm_allocator ----------------------------------------------------------- */

typedef struct pm_failing_allocator {
    pm_fail_policy policy; /* arm it with the pm_fail_* functions above */
    /* private */
    pm_domain domain;
    pm_allocator wrapped; /* the allocator that was installed before this one */
    int installed;
    uint64_t mallocs;  /* every call that reached this allocator, failed or not */
    uint64_t callocs;
    uint64_t reallocs; /* realloc(NULL, n) included: it reaches realloc */
    uint64_t frees;    /* free(NULL) included, if the domain passes it on */
} pm_failing_allocator;

/* A snapshot of what reached a failing allocator. */
typedef struct pm_failing_counts {
    uint64_t mallocs;
    uint64_t callocs;
    uint64_t reallocs;
    uint64_t frees;
    uint64_t failures; /* how many of the allocating calls returned NULL by policy */
} pm_failing_counts;

/* Initialises *f (policy: never fail, counters zero), saves the allocator installed in
 * `domain` and installs *f in its place. Returns 0, or -1 with errno set by
 * pm_get_allocator/pm_set_allocator (and nothing installed). */
int pm_failing_allocator_install(pm_failing_allocator *f, pm_domain domain);

/* Reinstalls the saved allocator. Returns 0; or -1 with errno = EINVAL if *f is not
 * installed, or EBUSY if another allocator was installed on top of it (unwind that one
 * first: removing *f from under it would leave it wrapping an allocator no longer in use). */
int pm_failing_allocator_uninstall(pm_failing_allocator *f);

pm_failing_counts pm_failing_allocator_counts(const pm_failing_allocator *f);

/* The pm_allocator that pm_failing_allocator_install() installs for *f (ctx = f). Lets a
 * test check what a domain holds, or install *f by hand. */
pm_allocator pm_failing_allocator_as_allocator(pm_failing_allocator *f);

#ifdef __cplusplus
}
#endif

#endif /* PM_TESTS_SUPPORT_FAILING_ALLOCATORS_H */
