/*
 * heap_check.c — pm_heap_check(): a whole-heap validator for pymalloc.
 *
 * What it proves, in this order (the first violation found is reported):
 *
 *  1. The arena layer is consistent: pm_arena_check() (lists, buckets, reserve, map), and
 *     each arena's geometry (first_pool is the first pool-aligned address, total_pools is
 *     what fits).
 *  2. Every carved pool of every arena in use, one at a time:
 *       pool->arena is the arena;
 *       size_class < PM_NUM_CLASSES, or PM_NO_CLASS for a pool never used (then nothing is
 *         carved, nothing is free, nothing is in use);
 *       used <= capacity; carve_offset = header + k x block size with k <= capacity;
 *       every free-list block lies in the pool's carved part, on a block boundary;
 *       the free list ends within k steps (so it has no cycle, and no duplicate: a
 *         singly linked list that reaches NULL cannot visit a node twice);
 *       conservation: used + free-list length + never-carved blocks == capacity;
 *       free == NULL exactly when the pool is full (every block carved and in use);
 *       the pool's owner is a heap (the main heap: the only one in GIL mode).
 *  3. Per arena: the free-pool list holds only carved pools of the arena, each empty, and
 *     ends within as many steps as step 2 found empty pools, having visited exactly that
 *     many. A terminating list of distinct empty pools whose length equals the number
 *     of empty pools is the set of empty pools: nothing empty is lost, nothing else listed.
 *  4. pm_no_pool (the head of every empty used list) is still all zeros; every list of
 *     pm_bypass_heap (the routes' stand-in while a hook is installed) is empty; each of
 *     pm_main_heap's 32 used lists is NULL-terminated with consistent prev links, ends
 *     within the number of used pools of its class (no cycle), holds only pools the arena
 *     map says are ours whose headers say "used, not full, this class, this heap", and has
 *     the same length and the same address fingerprint as the set of used pools of that
 *     class found in step 2. Full and empty pools are therefore on no used list.
 *
 * Memory. Nothing is allocated: the walk keeps per-class counters on the stack, and a
 * pointer is dereferenced only after it is shown to lie inside memory the walk already
 * owns (a block inside its pool's carved part; a pool the arena map covers). Marking
 * visited pools would need a bit per pool; instead membership is proved by counting, as
 * above. For the used lists, a listed pool is one the map covers, but whether it is a
 * *carved* pool would take a search over the arenas per pool; the fingerprint (a sum of a
 * 64-bit mixing of each address) makes a listed impostor with a used pool's header show up
 * except with probability about 2^-64, keeping the check O(heap) in time.
 *
 * Cost: O(arenas + carved pools + free blocks). Run it in tests and debug builds, not on a
 * hot path. Contract: the GIL is held, as for every other walk of pymalloc's structures.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "alloc/internal/pymalloc.h"

enum { REPORT_SIZE = 256 };

/* The description of the first violation, per thread (the API's contract). */
static _Thread_local char report[REPORT_SIZE];

typedef struct class_census {
    size_t used_pools;    /* used (not full, not empty) pools of the class on the main heap */
    uint64_t fingerprint; /* sum of mix(address) over them */
} class_census;

typedef struct heap_walk {
    const char *failure; /* NULL until the first violation */
    class_census classes[PM_NUM_CLASSES];
} heap_walk;

__attribute__((format(printf, 2, 3))) static void fail(heap_walk *walk, const char *fmt, ...) {
    if (walk->failure != NULL) return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(report, sizeof report, fmt, args);
    va_end(args);
    walk->failure = report;
}

/* A bijective 64-bit mix (the splitmix64 finaliser): distinct sets of pool addresses,
 * which differ in low bits only by multiples of PM_POOL_SIZE, get unrelated sums. */
static uint64_t mix(uintptr_t address) {
    uint64_t x = (uint64_t)address;
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

/* The heaps a pool may name as its owner. In GIL mode there is one; per-thread heaps will
 * be recognised here (and their used lists walked in check_used_lists). */
static bool is_heap(const pm_heap *heap) {
    return heap == &pm_main_heap;
}

static const pm_pool *pool_at(const pm_arena *arena, uint32_t index) {
    return (const pm_pool *)((uintptr_t)arena->first_pool + (uintptr_t)index * PM_POOL_SIZE);
}

/* ---- one pool ------------------------------------------------------------------------ */

/* Checks one carved pool; returns true when it is empty (used == 0). */
static bool check_pool(heap_walk *walk, const pm_arena *arena, const pm_pool *pool) {
    const void *at = pool;
    if (pool->arena != arena) {
        fail(walk, "pool %p: its arena is %p, but it was carved from arena %p", at,
             (const void *)pool->arena, (const void *)arena);
        return false;
    }
    if (pool->size_class == PM_NO_CLASS) {
        /* Taken from the arena but never given a class: nothing may have happened to it. */
        if (pool->used_state != 0 || pool->free != NULL || pool->carve_offset != PM_POOL_HEADER_SIZE) {
            fail(walk,
                 "pool %p (no class): never used, yet used state %#x, free list %p, "
                 "carve offset %u",
                 at, pool->used_state, (const void *)pool->free, pool->carve_offset);
        }
        return pool->used_state == 0;
    }
    unsigned size_class = pool->size_class;
    if (size_class >= PM_NUM_CLASSES) {
        fail(walk, "pool %p: invalid size class %u", at, size_class);
        return false;
    }
    size_t size = pm_class_block_size(size_class);
    uint32_t capacity = pm_class_capacity(size_class);
    if (pm_pool_used(pool) > capacity) {
        fail(walk, "pool %p (class %u): %u blocks in use, more than its capacity of %u", at,
             size_class, pm_pool_used(pool), capacity);
        return false;
    }
    size_t carve_offset = pool->carve_offset;
    if (carve_offset < PM_POOL_HEADER_SIZE || (carve_offset - PM_POOL_HEADER_SIZE) % size != 0 ||
        (carve_offset - PM_POOL_HEADER_SIZE) / size > capacity) {
        fail(walk, "pool %p (class %u): carve offset %zu is not a block boundary within the pool",
             at, size_class, carve_offset);
        return false;
    }
    uint32_t carved = (uint32_t)((carve_offset - PM_POOL_HEADER_SIZE) / size);

    /* The free list: each block is validated before its link is read. */
    uintptr_t base = (uintptr_t)pool;
    uint32_t listed = 0;
    for (const pm_block *b = pool->free; b != NULL; b = b->next) {
        uintptr_t address = (uintptr_t)b;
        if (address < base || address >= base + PM_POOL_SIZE) {
            fail(walk, "pool %p (class %u): free block %p lies outside the pool", at, size_class,
                 (const void *)b);
            return false;
        }
        size_t offset = address - base;
        if (offset < PM_POOL_HEADER_SIZE) {
            fail(walk, "pool %p (class %u): free block %p lies in the pool header", at,
                 size_class, (const void *)b);
            return false;
        }
        if ((offset - PM_POOL_HEADER_SIZE) % size != 0) {
            fail(walk, "pool %p (class %u): free block %p is not at a block boundary", at,
                 size_class, (const void *)b);
            return false;
        }
        if (offset >= carve_offset) {
            fail(walk, "pool %p (class %u): free block %p lies beyond the carve offset %zu", at,
                 size_class, (const void *)b, carve_offset);
            return false;
        }
        if (++listed > carved) {
            fail(walk,
                 "pool %p (class %u): free list longer than the %u blocks carved "
                 "(a cycle or a duplicate at %p)",
                 at, size_class, carved, (const void *)b);
            return false;
        }
    }
    if ((uint64_t)pm_pool_used(pool) + listed + (capacity - carved) != capacity) {
        fail(walk,
             "pool %p (class %u): %u blocks in use + %u free + %u never carved != capacity %u",
             at, size_class, pm_pool_used(pool), listed, capacity - carved, capacity);
        return false;
    }
    if (pool->free == NULL && pm_pool_used(pool) != capacity) {
        fail(walk,
             "pool %p (class %u): free list empty but the pool is not full "
             "(%u of %u blocks in use, %u never carved)",
             at, size_class, pm_pool_used(pool), capacity, capacity - carved);
        return false;
    }
    if (pm_pool_full(pool) != (pool->free == NULL)) {
        fail(walk, "pool %p (class %u): the full flag is %s but the free list is %s", at,
             size_class, pm_pool_full(pool) ? "set" : "clear",
             pool->free == NULL ? "empty" : "not empty");
        return false;
    }
    if (pm_pool_used(pool) == 0) return true;
    if (!is_heap(pool->owner)) {
        fail(walk, "pool %p (class %u): %u blocks in use but its owner %p is not a heap", at,
             size_class, pm_pool_used(pool), (const void *)pool->owner);
        return false;
    }
    if (pool->free != NULL && pool->owner == &pm_main_heap) {
        class_census *census = &walk->classes[size_class];
        census->used_pools++;
        census->fingerprint += mix((uintptr_t)pool);
    }
    return false;
}

/* ---- one arena ----------------------------------------------------------------------- */

static void check_arena(const pm_arena *arena, void *arg) {
    heap_walk *walk = arg;
    if (walk->failure != NULL) return;
    const void *at = (const void *)arena->address;

    uintptr_t first = (arena->address + PM_POOL_MASK) & ~(uintptr_t)PM_POOL_MASK;
    uint32_t total = (uint32_t)((arena->address + PM_ARENA_SIZE - first) / PM_POOL_SIZE);
    if ((uintptr_t)arena->first_pool != first || arena->total_pools != total) {
        fail(walk, "arena %p: first pool %p and %u pools, expected %p and %u", at,
             (const void *)arena->first_pool, arena->total_pools, (const void *)first, total);
        return;
    }

    uint32_t empty = 0;
    for (uint32_t i = 0; i < arena->carved_pools && walk->failure == NULL; i++) {
        if (check_pool(walk, arena, pool_at(arena, i))) empty++;
    }
    if (walk->failure != NULL) return;

    uintptr_t carved_end = first + (uintptr_t)arena->carved_pools * PM_POOL_SIZE;
    uint32_t listed = 0;
    for (const pm_pool *p = arena->free_pools; p != NULL; p = p->next) {
        uintptr_t address = (uintptr_t)p;
        if (address < first || address >= carved_end || (address & PM_POOL_MASK) != 0) {
            fail(walk, "arena %p: free pool %p is not one of its carved pools", at,
                 (const void *)p);
            return;
        }
        if (pm_pool_used(p) != 0) {
            fail(walk, "arena %p: pool %p is on the free-pool list with %u blocks in use", at,
                 (const void *)p, pm_pool_used(p));
            return;
        }
        if (++listed > empty) {
            fail(walk, "arena %p: free-pool list longer than its %u empty pools (cycle?)", at,
                 empty);
            return;
        }
    }
    if (listed != empty) {
        fail(walk, "arena %p: %u empty pools but only %u on its free-pool list", at, empty,
             listed);
    }
}

/* ---- the used lists ------------------------------------------------------------------ */

static void check_no_pool(heap_walk *walk) {
    const pm_pool *np = &pm_no_pool;
    if (np->free != NULL || np->next != NULL || np->prev != NULL || np->used_state != 0) {
        fail(walk,
             "pm_no_pool (the empty-list head) was written: free %p, next %p, prev %p, used %u",
             (const void *)np->free, (const void *)np->next, (const void *)np->prev, np->used_state);
    }
}

/* The bypass heap must look full in every class, so that the fast path always leaves it. */
static void check_bypass_heap(heap_walk *walk) {
    for (unsigned c = 0; c < PM_NUM_CLASSES; c++) {
        if (pm_bypass_heap.used[c] != &pm_no_pool) {
            fail(walk, "class %u: the bypass heap's used list holds %p (it must stay empty)", c,
                 (const void *)pm_bypass_heap.used[c]);
            return;
        }
    }
}

static void check_used_list(heap_walk *walk, const pm_heap *heap, unsigned c) {
    const class_census *census = &walk->classes[c];
    const pm_pool *head = heap->used[c];
    if (head == NULL) {
        fail(walk, "class %u: used-list head is NULL (an empty list is &pm_no_pool)", c);
        return;
    }
    size_t count = 0;
    uint64_t fingerprint = 0;
    if (head != &pm_no_pool) {
        const pm_pool *prev = NULL;
        for (const pm_pool *p = head; p != NULL; prev = p, p = p->next) {
            const void *at = p;
            if (p == &pm_no_pool) {
                fail(walk, "class %u: used list continues into pm_no_pool after pool %p", c,
                     (const void *)prev);
                return;
            }
            if (((uintptr_t)p & PM_POOL_MASK) != 0 || !pm_pymalloc_owns(p)) {
                fail(walk, "class %u: used list holds %p, which is not one of our pools", c, at);
                return;
            }
            if (++count > census->used_pools) {
                fail(walk,
                     "class %u: used list longer than the %zu used pools of the class "
                     "(cycle, or a pool listed twice, at %p)",
                     c, census->used_pools, at);
                return;
            }
            if (p->prev != prev) {
                fail(walk, "class %u: pool %p on the used list has prev %p, expected %p", c, at,
                     (const void *)p->prev, (const void *)prev);
                return;
            }
            if (p->size_class != c) {
                fail(walk, "class %u: pool %p of class %u is on the used list", c, at,
                     p->size_class);
                return;
            }
            if (pm_pool_used(p) == 0) {
                fail(walk, "class %u: empty pool %p is on the used list", c, at);
                return;
            }
            if (p->free == NULL) {
                fail(walk, "class %u: full pool %p is on the used list", c, at);
                return;
            }
            if (p->owner != heap) {
                fail(walk, "class %u: pool %p owned by %p is on the used list of heap %p", c, at,
                     (const void *)p->owner, (const void *)heap);
                return;
            }
            fingerprint += mix((uintptr_t)p);
        }
    }
    if (count != census->used_pools) {
        fail(walk, "class %u: %zu pools on the used list but %zu used pools in the arenas", c,
             count, census->used_pools);
    } else if (fingerprint != census->fingerprint) {
        fail(walk, "class %u: the used list holds a pool that is not a used pool of the arenas",
             c);
    }
}

/* ---- entry point --------------------------------------------------------------------- */

const char *pm_heap_check(void) {
    const char *problem = pm_arena_check(report, sizeof report);
    if (problem != NULL) return problem;

    heap_walk walk;
    memset(&walk, 0, sizeof walk);
    pm_arena_for_each(check_arena, &walk);
    if (walk.failure == NULL) check_no_pool(&walk);
    if (walk.failure == NULL) check_bypass_heap(&walk);
    for (unsigned c = 0; c < PM_NUM_CLASSES && walk.failure == NULL; c++) {
        check_used_list(&walk, &pm_main_heap, c);
    }
    return walk.failure;
}
