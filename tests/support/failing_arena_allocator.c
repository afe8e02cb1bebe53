/*
 * failing_arena_allocator.c — an arena allocator that fails on demand (see
 * failing_arena_allocator.h).
 *
 * Same shape and same rules as the failing pm_allocator in failing_allocators.c: the policy
 * (pm_fail_policy) decides, every shared field is touched only through relaxed __atomic
 * builtins (they are statistics; nothing is published through them), and a failed call
 * never reaches the wrapped allocator. Only alloc() is judged: pymalloc has no way to
 * survive a failed free, and neither has CPython.
 */
#include "tests/support/failing_arena_allocator.h"

#include <errno.h>
#include <string.h>

static uint64_t load_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void inc_u64(uint64_t *p) {
    (void)__atomic_add_fetch(p, 1, __ATOMIC_RELAXED);
}

static void *failing_arena_alloc(void *ctx, size_t size) {
    pm_failing_arena_allocator *f = ctx;
    inc_u64(&f->allocs);
    if (size != pm_arena_size()) inc_u64(&f->odd_sizes);
    if (pm_fail_policy_judge(&f->policy, size)) return NULL;
    return f->wrapped.alloc(f->wrapped.ctx, size);
}

static void failing_arena_free(void *ctx, void *ptr, size_t size) {
    pm_failing_arena_allocator *f = ctx;
    inc_u64(&f->frees);
    if (size != pm_arena_size()) inc_u64(&f->odd_sizes);
    f->wrapped.free(f->wrapped.ctx, ptr, size);
}

pm_arena_allocator pm_failing_arena_allocator_as_arena_allocator(pm_failing_arena_allocator *f) {
    pm_arena_allocator a = {
        .ctx = f,
        .alloc = failing_arena_alloc,
        .free = failing_arena_free,
    };
    return a;
}

int pm_failing_arena_allocator_install(pm_failing_arena_allocator *f) {
    memset(f, 0, sizeof *f);
    pm_fail_policy_init(&f->policy);
    if (pm_get_arena_allocator(&f->wrapped) != 0) return -1;
    pm_arena_allocator self = pm_failing_arena_allocator_as_arena_allocator(f);
    if (pm_set_arena_allocator(&self) != 0) return -1;
    f->installed = 1;
    return 0;
}

int pm_failing_arena_allocator_uninstall(pm_failing_arena_allocator *f) {
    if (!f->installed) {
        errno = EINVAL;
        return -1;
    }
    pm_arena_allocator current;
    if (pm_get_arena_allocator(&current) != 0) return -1;
    pm_arena_allocator self = pm_failing_arena_allocator_as_arena_allocator(f);
    if (current.ctx != self.ctx || current.alloc != self.alloc || current.free != self.free) {
        errno = EBUSY;
        return -1;
    }
    if (pm_set_arena_allocator(&f->wrapped) != 0) return -1;
    f->installed = 0;
    return 0;
}

pm_failing_arena_counts pm_failing_arena_allocator_counts(const pm_failing_arena_allocator *f) {
    pm_failing_arena_counts c = {
        .allocs = load_u64(&f->allocs),
        .failures = pm_fail_policy_failures(&f->policy),
        .frees = load_u64(&f->frees),
        .odd_sizes = load_u64(&f->odd_sizes),
    };
    c.live = c.allocs - c.failures - c.frees;
    return c;
}
