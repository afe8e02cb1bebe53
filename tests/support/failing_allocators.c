/*
 * failing_allocators.c — allocators for tests that fail on demand (see failing_allocators.h).
 *
 * Every shared field is touched only through the relaxed __atomic builtins below: the
 * counters are statistics, and the policy needs no ordering with the memory it guards
 * (a test that re-arms while other threads allocate cannot say which call is "next" anyway).
 * This file is test support, not part of sync/, so it uses the compiler's builtins directly.
 */
#include "tests/support/failing_allocators.h"

#include <errno.h>
#include <string.h>

/* ---- relaxed atomics ------------------------------------------------------------------ */

static uint64_t load_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void store_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* Returns the new value. */
static uint64_t inc_u64(uint64_t *p) {
    return __atomic_add_fetch(p, 1, __ATOMIC_RELAXED);
}

/* ---- the policy ----------------------------------------------------------------------- */

static void arm(pm_fail_policy *policy, pm_fail_mode mode, uint64_t n, size_t threshold) {
    __atomic_store_n(&policy->n, n, __ATOMIC_RELAXED);
    __atomic_store_n(&policy->threshold, threshold, __ATOMIC_RELAXED);
    store_u64(&policy->since, 0);
    __atomic_store_n(&policy->mode, (int)mode, __ATOMIC_RELAXED);
}

void pm_fail_policy_init(pm_fail_policy *policy) {
    arm(policy, PM_FAIL_NEVER, 0, 0);
    store_u64(&policy->calls, 0);
    store_u64(&policy->failures, 0);
}

void pm_fail_never(pm_fail_policy *policy) {
    arm(policy, PM_FAIL_NEVER, 0, 0);
}

void pm_fail_nth(pm_fail_policy *policy, uint64_t n) {
    arm(policy, PM_FAIL_NTH, n, 0);
}

void pm_fail_from_nth(pm_fail_policy *policy, uint64_t n) {
    arm(policy, PM_FAIL_FROM_NTH, n, 0);
}

void pm_fail_size_at_least(pm_fail_policy *policy, size_t threshold) {
    arm(policy, PM_FAIL_SIZE_AT_LEAST, 0, threshold);
}

int pm_fail_policy_judge(pm_fail_policy *policy, size_t size) {
    inc_u64(&policy->calls);
    uint64_t index = inc_u64(&policy->since); /* 1 for the first call since arming */
    int fail = 0;
    switch (__atomic_load_n(&policy->mode, __ATOMIC_RELAXED)) {
    case PM_FAIL_NTH:
        fail = index == __atomic_load_n(&policy->n, __ATOMIC_RELAXED);
        break;
    case PM_FAIL_FROM_NTH:
        fail = index >= __atomic_load_n(&policy->n, __ATOMIC_RELAXED);
        break;
    case PM_FAIL_SIZE_AT_LEAST:
        fail = size >= __atomic_load_n(&policy->threshold, __ATOMIC_RELAXED);
        break;
    default:
        break;
    }
    if (fail) inc_u64(&policy->failures);
    return fail;
}

uint64_t pm_fail_policy_calls(const pm_fail_policy *policy) {
    return load_u64(&policy->calls);
}

uint64_t pm_fail_policy_failures(const pm_fail_policy *policy) {
    return load_u64(&policy->failures);
}

/* ---- the failing pm_allocator --------------------------------------------------------- */

static void *failing_malloc(void *ctx, size_t size) {
    pm_failing_allocator *f = ctx;
    inc_u64(&f->mallocs);
    if (pm_fail_policy_judge(&f->policy, size)) return NULL;
    return f->wrapped.malloc(f->wrapped.ctx, size);
}

static void *failing_calloc(void *ctx, size_t nelem, size_t elsize) {
    pm_failing_allocator *f = ctx;
    inc_u64(&f->callocs);
    size_t size;
    if (__builtin_mul_overflow(nelem, elsize, &size)) size = SIZE_MAX;
    if (pm_fail_policy_judge(&f->policy, size)) return NULL;
    return f->wrapped.calloc(f->wrapped.ctx, nelem, elsize);
}

static void *failing_realloc(void *ctx, void *ptr, size_t new_size) {
    pm_failing_allocator *f = ctx;
    inc_u64(&f->reallocs);
    if (pm_fail_policy_judge(&f->policy, new_size)) return NULL;
    return f->wrapped.realloc(f->wrapped.ctx, ptr, new_size);
}

static void failing_free(void *ctx, void *ptr) {
    pm_failing_allocator *f = ctx;
    inc_u64(&f->frees);
    f->wrapped.free(f->wrapped.ctx, ptr);
}

pm_allocator pm_failing_allocator_as_allocator(pm_failing_allocator *f) {
    pm_allocator a = {
        .ctx = f,
        .malloc = failing_malloc,
        .calloc = failing_calloc,
        .realloc = failing_realloc,
        .free = failing_free,
    };
    return a;
}

int pm_failing_allocator_install(pm_failing_allocator *f, pm_domain domain) {
    memset(f, 0, sizeof *f);
    pm_fail_policy_init(&f->policy);
    f->domain = domain;
    /* The wrapped allocator is saved before *f is published by pm_set_allocator, whose
     * release store orders these writes before any call that reaches *f. */
    if (pm_get_allocator(domain, &f->wrapped) != 0) return -1;
    pm_allocator self = pm_failing_allocator_as_allocator(f);
    if (pm_set_allocator(domain, &self) != 0) return -1;
    f->installed = 1;
    return 0;
}

int pm_failing_allocator_uninstall(pm_failing_allocator *f) {
    if (!f->installed) {
        errno = EINVAL;
        return -1;
    }
    pm_allocator current;
    if (pm_get_allocator(f->domain, &current) != 0) return -1;
    pm_allocator self = pm_failing_allocator_as_allocator(f);
    if (current.ctx != self.ctx || current.malloc != self.malloc ||
        current.calloc != self.calloc || current.realloc != self.realloc ||
        current.free != self.free) {
        errno = EBUSY;
        return -1;
    }
    if (pm_set_allocator(f->domain, &f->wrapped) != 0) return -1;
    f->installed = 0;
    return 0;
}

pm_failing_counts pm_failing_allocator_counts(const pm_failing_allocator *f) {
    pm_failing_counts c = {
        .mallocs = load_u64(&f->mallocs),
        .callocs = load_u64(&f->callocs),
        .reallocs = load_u64(&f->reallocs),
        .frees = load_u64(&f->frees),
        .failures = pm_fail_policy_failures(&f->policy),
    };
    return c;
}
