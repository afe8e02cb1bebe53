/*
 * heap_check.c — pm_heap_check(): a whole-heap validator for pymalloc.
 *
 * What it proves, in this order (the first violation found is reported):
 *
 *  1. The arena layer is consistent: pm_arena_check() (lists, buckets, reserve, map), and
 *     each arena's geometry (pools_start is the first pool-aligned address, total_pools is
 *     what fits, header i describes pool i's memory).
 *  2. Every carved pool of every arena in use, one at a time:
 *       pool->arena is the arena;
 *       size_class < PM_NUM_CLASSES, or PM_NO_CLASS for a pool never used (then nothing is
 *         carved, nothing is free, nothing is in use);
 *       used <= capacity; carve_offset = k x block size with k <= capacity;
 *       every free-list block lies in the pool's carved part, on a block boundary;
 *       the free list ends within k steps (so it has no cycle, and no duplicate: a
 *         singly linked list that reaches NULL cannot visit a node twice);
 *       conservation: used + free-list length + never-carved blocks == capacity;
 *       the full flag set only when the pool is full (every block carved and in use)
 *         and then free == NULL; an unflagged pool with free == NULL only as the head of
 *         its owner's list (exhausted, not yet settled);
 *       a pool in use is owned by a heap (main, shared, or a registered thread heap); an
 *       empty pool is owned by nobody (it is in its arena) or by a thread heap (its stash).
 *  3. Per arena: the free-pool list holds only carved pools of the arena, each empty, and
 *     ends within as many steps as step 2 found ownerless empty pools, having visited
 *     exactly that many. A terminating list of distinct empty pools whose length equals the number
 *     of empty pools is the set of empty pools: nothing empty is lost, nothing else listed.
 *  4. pm_no_pool (the head of every empty used list) is still all zeros; every list of
 *     the stand-in heaps (bypass, sampling, unattached) is empty; for every heap (main,
 *     shared, each thread heap), each of its 32 used lists is NULL-terminated with
 *     consistent prev links and tail, holds only headers of carved pools whose headers
 *     say "used, not full, this class, this heap"; a thread heap's stash holds only its
 *     empty pools, as many per class as it counts. Over all heaps, each class's used
 *     lists have the same length and address fingerprint (of pool and owner) as the used
 *     pools of that class found in step 2, and likewise the stashes, so no list ends in a
 *     cycle and every pool is on exactly the list its state and owner call for (full
 *     pools on none).
 *  5. Every remote-free list and outbox (blocks other threads freed, not yet applied) ends,
 *     and holds only block-aligned blocks inside the carved part of a pool in use (an
 *     outbox as many as it counts, all for one other thread heap); in all, no more blocks
 *     than are counted in use.
 *
 * Memory. Nothing is allocated: the walk keeps per-class counters on the stack, and a
 * pointer is dereferenced only after it is shown to lie inside memory the walk already
 * owns (a block inside its pool's carved part; a header of a carved pool, found by
 * arithmetic over the descriptor slabs, pm_arena_of_header). Marking visited pools would
 * need a bit per pool; instead membership is proved by counting, as above, with a
 * fingerprint (a sum of a 64-bit mixing of each address and owner) that makes a pool
 * listed in place of another show up except with probability about 2^-64 (belt and
 * braces now that only carved pools' headers pass as listed pools).
 *
 * Cost: O(arenas + carved pools + free blocks + listed pools x descriptor slabs). Run it in
 * tests and debug builds, not on a hot path. Contract: the GIL is held, as for every other walk of pymalloc's structures;
 * with thread caches, other threads are quiescent (not inside a mem or object call, with a
 * happens-before edge to this one: joined, or waiting on a barrier). The registry and pool
 * locks are held during the walk so that attach, detach and refills cannot run.
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

typedef struct census {
    size_t pools;         /* pools found in the arenas in this state */
    uint64_t fingerprint; /* sum of pool_print(pool, owner) over them */
} census;

typedef struct heap_walk {
    const char *failure;            /* NULL until the first violation */
    census used[PM_NUM_CLASSES];    /* used (not full, not empty) pools per class */
    census stashed;                 /* empty pools owned by thread heaps */
    census listed_used[PM_NUM_CLASSES], listed_stashed; /* found on lists */
    size_t blocks_in_use;           /* sum of used counts */
    size_t remote_blocks;           /* blocks on remote-free lists */
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

static uint64_t pool_print(const pm_pool *pool, const pm_heap *owner) {
    return mix((uintptr_t)pool ^ mix((uintptr_t)owner));
}

static void census_add(census *c, const pm_pool *pool, const pm_heap *owner) {
    c->pools++;
    c->fingerprint += pool_print(pool, owner);
}

static bool is_thread_heap(const pm_heap *heap) {
    for (const pm_heap *h = pm_atomic_load_ptr_acquire(&pm_thread_heaps_registry); h != NULL;
         h = h->registry_next) {
        if (h == heap) return true;
    }
    return false;
}

/* The heaps a pool in use may name as its owner. */
static bool is_heap(const pm_heap *heap) {
    return heap == &pm_main_heap || heap == &pm_traced_heap || heap == &pm_shared_heap ||
           is_thread_heap(heap);
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
        if (pool->used_state != 0 || pool->free != NULL || pool->carve_offset != 0) {
            fail(walk,
                 "pool %p (no class): never used, yet used state %#x, free list %p, "
                 "carve offset %u",
                 at, pool->used_state, (const void *)pool->free, pool->carve_offset);
        }
        if (pool->used_state == 0 && pm_pool_owner(pool) != NULL) {
            if (!is_thread_heap(pm_pool_owner(pool))) {
                fail(walk, "pool %p (no class): owned by %p, which is not a thread heap", at,
                     (const void *)pm_pool_owner(pool));
            } else {
                census_add(&walk->stashed, pool, pm_pool_owner(pool));
            }
            return false;
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
    if (carve_offset % size != 0 || carve_offset / size > capacity) {
        fail(walk, "pool %p (class %u): carve offset %zu is not a block boundary within the pool",
             at, size_class, carve_offset);
        return false;
    }
    uint32_t carved = (uint32_t)(carve_offset / size);

    /* The free list: each block is validated before its link is read. */
    uintptr_t base = pool->memory;
    uint32_t listed = 0;
    for (const pm_block *b = pool->free; b != NULL; b = b->next) {
        uintptr_t address = (uintptr_t)b;
        if (address < base || address >= base + PM_POOL_SIZE) {
            fail(walk, "pool %p (class %u): free block %p lies outside the pool", at, size_class,
                 (const void *)b);
            return false;
        }
        size_t offset = address - base;
        if (offset % size != 0) {
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
    const pm_heap *owner = pm_pool_owner(pool);
    /* The tracer's marks (alloc/trace.c, "Marks"): a traced heap's pool has them, and no
     * free block of it counts; any other pool gave its marks back when it left. */
    if ((owner == &pm_traced_heap) != (pool->marks != NULL)) {
        fail(walk, "pool %p (class %u): owned by %s heap, but %s marks", at, size_class,
             owner == &pm_traced_heap ? "the traced" : "another",
             pool->marks != NULL ? "has" : "has no");
        return false;
    }
    for (const pm_block *b = pool->free; b != NULL && pool->marks != NULL; b = b->next) {
        if (pool->marks[((uintptr_t)b - base) / size] != 0) {
            fail(walk, "pool %p (class %u): free block %p is marked as traced", at, size_class,
                 (const void *)b);
            return false;
        }
    }
    /* No free block and not marked full: legal only for the head of its owner's list, which
     * malloc exhausted and has not settled yet (alloc/internal/pymalloc.h). */
    bool exhausted_head = pool->free == NULL && !pm_pool_full(pool) && is_heap(owner) &&
                          owner->used[size_class] == pool;
    if (pool->free == NULL && pm_pool_used(pool) != capacity && !exhausted_head) {
        fail(walk,
             "pool %p (class %u): free list empty but the pool is not full "
             "(%u of %u blocks in use, %u never carved)",
             at, size_class, pm_pool_used(pool), capacity, capacity - carved);
        return false;
    }
    if (pm_pool_full(pool) ? pool->free != NULL : pool->free == NULL && !exhausted_head) {
        fail(walk, "pool %p (class %u): the full flag is %s but the free list is %s", at,
             size_class, pm_pool_full(pool) ? "set" : "clear",
             pool->free == NULL ? "empty" : "not empty");
        return false;
    }
    if (pm_pool_used(pool) == 0) {
        if (owner == NULL) return true; /* in its arena */
        if (!is_thread_heap(owner)) {
            fail(walk, "pool %p (class %u): empty, owned by %p, which is not a thread heap", at,
                 size_class, (const void *)owner);
        } else {
            census_add(&walk->stashed, pool, owner);
        }
        return false;
    }
    if (!is_heap(owner)) {
        fail(walk, "pool %p (class %u): %u blocks in use but its owner %p is not a heap", at,
             size_class, pm_pool_used(pool), (const void *)owner);
        return false;
    }
    walk->blocks_in_use += pm_pool_used(pool);
    if (!pm_pool_full(pool)) census_add(&walk->used[size_class], pool, owner);
    return false;
}

/* ---- one arena ----------------------------------------------------------------------- */

static void check_arena(const pm_arena *arena, void *arg) {
    heap_walk *walk = arg;
    if (walk->failure != NULL) return;
    const void *at = (const void *)arena->address;

    uintptr_t first = (arena->address + PM_POOL_MASK) & ~(uintptr_t)PM_POOL_MASK;
    uint32_t total = (uint32_t)((arena->address + PM_ARENA_SIZE - first) / PM_POOL_SIZE);
    if (arena->pools_start != first || arena->total_pools != total) {
        fail(walk, "arena %p: first pool %p and %u pools, expected %p and %u", at,
             (const void *)arena->pools_start, arena->total_pools, (const void *)first, total);
        return;
    }
    for (uint32_t i = 0; i < total; i++) {
        const pm_pool *pool = &arena->pools[i];
        uintptr_t memory = first + (uintptr_t)i * PM_POOL_SIZE;
        if (pool->memory != memory || pm_pool_of((void *)memory) != pool) {
            fail(walk, "arena %p: header %u (%p) describes pool memory %p, expected %p", at, i,
                 (const void *)pool, (const void *)pool->memory, (const void *)memory);
            return;
        }
    }

    uint32_t empty = 0;
    for (uint32_t i = 0; i < arena->carved_pools && walk->failure == NULL; i++) {
        if (check_pool(walk, arena, &arena->pools[i])) empty++;
    }
    if (walk->failure != NULL) return;

    uint32_t listed = 0;
    for (const pm_pool *p = arena->free_pools; p != NULL; p = p->next) {
        if (!pm_arena_has_header(arena, p, arena->carved_pools)) {
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
            fail(walk, "arena %p: free-pool list longer than its %u ownerless empty pools (cycle?)",
                 at, empty);
            return;
        }
    }
    if (listed != empty) {
        fail(walk, "arena %p: %u ownerless empty pools but only %u on its free-pool list", at,
             empty, listed);
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

/* The stand-in heaps must look full in every class, so that the fast path always leaves
 * them. */
static void check_sentinel_heap(heap_walk *walk, const pm_heap *heap, const char *name) {
    for (unsigned c = 0; c < PM_NUM_CLASSES; c++) {
        if (heap->used[c] != &pm_no_pool) {
            fail(walk, "class %u: the %s heap's used list holds %p (it must stay empty)", c, name,
                 (const void *)heap->used[c]);
            return;
        }
    }
}

/* A pool found on one of `heap`'s lists: the header of a carved pool (so it may be read). */
static bool listed_pool_ours(heap_walk *walk, const pm_heap *heap, const pm_pool *p,
                             const char *list) {
    if (pm_arena_of_header(p) == NULL) {
        fail(walk, "heap %p: its %s holds %p, which is not one of our pools", (const void *)heap,
             list, (const void *)p);
        return false;
    }
    return true;
}

/* ... and owned by `heap`. */
static bool listed_pool_ok(heap_walk *walk, const pm_heap *heap, const pm_pool *p,
                           const char *list) {
    if (!listed_pool_ours(walk, heap, p, list)) return false;
    if (pm_pool_owner(p) != heap) {
        fail(walk, "heap %p: pool %p on its %s is owned by %p", (const void *)heap,
             (const void *)p, list, (const void *)pm_pool_owner(p));
        return false;
    }
    return true;
}

static void check_used_list(heap_walk *walk, const pm_heap *heap, unsigned c) {
    census *listed = &walk->listed_used[c];
    const pm_pool *head = heap->used[c];
    if (head == NULL) {
        fail(walk, "class %u: used-list head is NULL (an empty list is &pm_no_pool)", c);
        return;
    }
    if (head == &pm_no_pool) {
        if (heap->used_last[c] != NULL) {
            fail(walk, "class %u: heap %p's used list is empty but its tail is %p", c,
                 (const void *)heap, (const void *)heap->used_last[c]);
        }
        return;
    }
    size_t count = 0;
    const pm_pool *prev = NULL;
    for (const pm_pool *p = head; p != NULL; prev = p, p = p->next) {
        const void *at = p;
        if (p == &pm_no_pool) {
            fail(walk, "class %u: used list continues into pm_no_pool after pool %p", c,
                 (const void *)prev);
            return;
        }
        if (!listed_pool_ours(walk, heap, p, "used list")) return;
        if (++listed->pools > walk->used[c].pools) {
            fail(walk,
                 "class %u: used lists longer than the %zu used pools of the class "
                 "(cycle, or a pool listed twice, at %p)",
                 c, walk->used[c].pools, at);
            return;
        }
        count++;
        if (p->prev != prev) {
            fail(walk, "class %u: pool %p on the used list has prev %p, expected %p", c, at,
                 (const void *)p->prev, (const void *)prev);
            return;
        }
        if (p->size_class != c) {
            fail(walk, "class %u: pool %p of class %u is on the used list", c, at, p->size_class);
            return;
        }
        if (pm_pool_used(p) == 0) {
            fail(walk, "class %u: empty pool %p is on the used list", c, at);
            return;
        }
        if (pm_pool_full(p) || (p->free == NULL && p != head)) {
            fail(walk, "class %u: full pool %p is on the used list", c, at);
            return;
        }
        if (!listed_pool_ok(walk, heap, p, "used list")) return;
        listed->fingerprint += pool_print(p, heap);
    }
    if (heap->used_last[c] != prev) {
        fail(walk, "class %u: heap %p's used list ends at %p but its tail is %p", c,
             (const void *)heap, (const void *)prev, (const void *)heap->used_last[c]);
    }
}

static void check_stash(heap_walk *walk, const pm_heap *heap) {
    uint32_t count = 0;
    uint32_t per_class[PM_NUM_CLASSES] = {0};
    for (const pm_pool *p = heap->stash; p != NULL; p = p->next) {
        if (!listed_pool_ok(walk, heap, p, "stash")) return;
        if (++walk->listed_stashed.pools > walk->stashed.pools) {
            fail(walk, "heap %p: stashes longer than the %zu stashed pools (cycle?)",
                 (const void *)heap, walk->stashed.pools);
            return;
        }
        if (pm_pool_used(p) != 0) {
            fail(walk, "heap %p: pool %p in its stash has %u blocks in use", (const void *)heap,
                 (const void *)p, pm_pool_used(p));
            return;
        }
        count++;
        if (p->size_class < PM_NUM_CLASSES) per_class[p->size_class]++;
        walk->listed_stashed.fingerprint += pool_print(p, heap);
    }
    for (unsigned c = 0; c < PM_NUM_CLASSES; c++) {
        if (per_class[c] != heap->stash_per_class[c]) {
            fail(walk, "heap %p: %u stashed pools of class %u but it counts %u",
                 (const void *)heap, per_class[c], c, heap->stash_per_class[c]);
            return;
        }
    }
    if (count != heap->stash_count) {
        fail(walk, "heap %p: %u pools in its stash but it counts %u", (const void *)heap, count,
             heap->stash_count);
    }
}

/* Blocks freed by other threads and not yet applied: each must be a block of a pool in use
 * (its pool still counts it), and there cannot be more of them than blocks in use. */
static void check_block_chain(heap_walk *walk, const pm_heap *heap, const pm_lifo_node *node,
                              const char *list) {
    for (; node != NULL && walk->failure == NULL; node = node->next) {
        const pm_pool *pool = pm_pool_of(node);
        size_t offset = pool != NULL ? (uintptr_t)node - pool->memory : 0;
        if (pool == NULL || pool->size_class >= PM_NUM_CLASSES || pm_pool_used(pool) == 0 ||
            offset % pm_class_block_size(pool->size_class) != 0 || offset >= pool->carve_offset) {
            fail(walk, "heap %p: its %s holds %p, which is not a block in use",
                 (const void *)heap, list, (const void *)node);
            return;
        }
        if (++walk->remote_blocks > walk->blocks_in_use) {
            fail(walk, "remote-free lists hold more blocks than the %zu in use (cycle?)",
                 walk->blocks_in_use);
        }
    }
}

static void check_remote_list(heap_walk *walk, const pm_heap *heap) {
    check_block_chain(walk, heap, pm_atomic_load_ptr_acquire(&heap->remote.head),
                      "remote-free list");
}

/* Remote frees the heap's thread has not handed over yet: a chain of outbox_count blocks,
 * all for outbox_to, which is another thread heap. */
static void check_outbox(heap_walk *walk, const pm_heap *heap) {
    uint32_t count = 0;
    size_t before = walk->remote_blocks;
    check_block_chain(walk, heap, heap->outbox_first, "outbox");
    count = (uint32_t)(walk->remote_blocks - before);
    if (walk->failure != NULL) return;
    if (count != heap->outbox_count || (count > 0) != (heap->outbox_to != NULL) ||
        (count > 0 && !is_thread_heap(heap->outbox_to))) {
        fail(walk, "heap %p: outbox of %u blocks (counted %u) for heap %p", (const void *)heap,
             count, heap->outbox_count, (const void *)heap->outbox_to);
    }
}

static void check_heap(pm_heap *heap, void *arg) {
    heap_walk *walk = arg;
    for (unsigned c = 0; c < PM_NUM_CLASSES && walk->failure == NULL; c++) {
        check_used_list(walk, heap, c);
    }
    if (walk->failure == NULL && heap->kind == PM_HEAP_THREAD) check_stash(walk, heap);
    if (walk->failure == NULL) check_remote_list(walk, heap);
    if (walk->failure == NULL && heap->kind == PM_HEAP_THREAD) check_outbox(walk, heap);
}

static void compare_census(heap_walk *walk, const census *found, const census *listed,
                           const char *what) {
    if (walk->failure != NULL) return;
    if (found->pools != listed->pools) {
        fail(walk, "%s: %zu pools on the lists but %zu such pools in the arenas", what,
             listed->pools, found->pools);
    } else if (found->fingerprint != listed->fingerprint) {
        fail(walk, "%s: the lists hold a pool that is not such a pool of the arenas (or is "
                   "on another heap's list)", what);
    }
}

/* ---- entry point --------------------------------------------------------------------- */

static const char *heap_check_locked(void) {
    const char *problem = pm_arena_check(report, sizeof report);
    if (problem != NULL) return problem;

    heap_walk walk;
    memset(&walk, 0, sizeof walk);
    pm_arena_for_each(check_arena, &walk);
    if (walk.failure == NULL) check_no_pool(&walk);
    if (walk.failure == NULL) check_sentinel_heap(&walk, &pm_bypass_heap, "bypass");
    if (walk.failure == NULL) check_sentinel_heap(&walk, &pm_sampling_heap, "sampling");
    if (walk.failure == NULL) check_sentinel_heap(&walk, &pm_unattached_heap, "unattached");
    if (walk.failure == NULL) pm_for_each_heap(check_heap, &walk);
    char what[32];
    for (unsigned c = 0; c < PM_NUM_CLASSES && walk.failure == NULL; c++) {
        snprintf(what, sizeof what, "class %u used pools", c);
        compare_census(&walk, &walk.used[c], &walk.listed_used[c], what);
    }
    compare_census(&walk, &walk.stashed, &walk.listed_stashed, "thread heaps' stashed pools");
    return walk.failure;
}

const char *pm_heap_check(void) {
    pm_heap_walk_lock();
    const char *problem = heap_check_locked();
    pm_heap_walk_unlock();
    return problem;
}
