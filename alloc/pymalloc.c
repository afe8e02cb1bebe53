/*
 * pymalloc.c — small blocks from pools: the slow paths behind the inline fast paths in
 * alloc/internal/pymalloc.h, realloc, calloc, and the allocator record the mem and object
 * domains use by default.
 *
 * Fast paths (inline, in the header): malloc pops the head of the class's first used pool;
 * free pushes onto the block's own pool after the arena map says the pointer is ours and
 * names its header. malloc leaves it when there is no free block; free when the pointer is
 * not ours or one test of used_state says "was full or is now empty". Everything else is
 * here:
 *
 *   malloc, list empty        take an empty pool from the arenas, make it the list head
 *   malloc, head exhausted    carve more blocks, or unlink the pool: it is full (the
 *                             malloc that took the last block left it at the head)
 *   free into a full pool     put the pool back at the back of its list
 *   free of the last block    unlink the pool and give it back to its arena
 *   0 or > 512 bytes          the raw domain, through its current allocator
 *   sampling countdown out    the tracer decides: a sample (traced, from the raw
 *                             domain), or the thread's heap serves (malloc_at_sample_point)
 *   arena allocator fails     NULL; nothing was changed
 *   block of another heap     onto that heap's remote list, batched (alloc/thread_cache.c)
 *   thread heap runs dry      its remote frees, stash, the shared pools, then the arenas
 *
 * Carving. A pool's blocks are linked lazily: when its free list runs dry, the blocks that
 * start in the same OS page as the next uncarved block are linked in address order. That
 * touches no page before a block in it is handed out (a fresh arena costs only the pages of
 * the pools in use) and amortises the slow path over a page's worth of blocks instead of
 * taking it for every block, as carving one at a time would. One exception: a class that
 * has filled a pool gets its next fresh pool faulted in whole, in one call, since it will
 * very likely fill it too (pm_pool_populate_if_growing; the cost of faults is in arena.c).
 *
 * Used-list order. malloc takes from the head of its class's list until the head pool is
 * exhausted; a full pool that gets a block back joins the *back* of the list. CPython puts
 * it at the front, so that the block just freed is handed out next while it is hot. In
 * random churn that turns nearly every step into a full -> used -> full round trip: the
 * free lands in a full pool, which goes to the front, and the next malloc of the class takes
 * its one block and unlinks it again. callgrind's branch model counted a mispredicted
 * branch per step for those two tests, plus ~30 instructions of list work. At the back, the
 * head pool serves a run of mallocs and most frees land in pools that have room. Measured
 * (`bench --kernel=churn`, CPU ns per step, 2-core machine under other load, headers
 * already apart): 10,000 live blocks 23.5 -> 11.1, 100,000 live blocks 42 -> 29-32.
 *
 * A pool that empties goes straight back to its arena (with its free list intact, so that
 * taking it again for the same class costs nothing); the arena reserve, not the pool
 * layer, is what stops a program that frees and reallocates from thrashing the OS.
 *
 * Choosing the pool size (256 KiB arenas; `bazel run -c opt //tools/bench:compare`, both
 * sizes built side by side, CPU ns, medians of 3): 16 KiB pools against 4 KiB ones give
 * 3.9 vs 4.4 ns per 64-byte pair, 220 vs 243 ns per block in the 1M-block batch, 54.5 vs
 * 66.5 ns in batch rounds with an unlimited reserve, 30.8 vs 31.2 MiB for 1M live 32-byte
 * blocks, and churn within noise (54.9 vs 52.4). Fewer, larger pools leave the slow path a
 * quarter as often and spend 0.3% on headers instead of 1.2%; with aligned arenas they
 * lose nothing to alignment. The price: a program that touches every class holds up to 32
 * partly used 16 KiB pools, touched only page by page. (Those figures predate moving the
 * pool headers out of the pools, which takes the header's 48 bytes out of every pool.)
 *
 * Then 32 KiB (PM_POOL_BITS 15, the default), once headers had moved out: against 16 KiB,
 * CPU ns, medians of 7 interleaved runs, same machine: churn 25.8 vs 29.5 (tcmalloc 28.9;
 * half as many headers, so more of them stay in cache), 1M live 32-byte blocks 31,332 vs
 * 31,392 KiB anonymous RSS (CPython 3.11: 31,372; half as many 64-byte headers), the batch
 * 221 vs 221, two-thread churn and 8-thread RSS within noise, and the same 39 instructions
 * per 64-byte pair (it never leaves the fast path). The price doubles: up to 32 partly used
 * 32 KiB pools, still touched page by page, and a thread cache's 1 MiB holds 32 pools.
 *
 * Pool headers apart (alloc/internal/pymalloc.h gives the cache-set reason). Measured as
 * above: churn over 100,000 blocks 45-47 -> 39-42 ns a step on its own, and only with it
 * does the used-list order above pay off (in-pool headers plus the new order: 44.5 ns). The
 * price is on free's critical path: the header's address now comes from the map entry (a
 * load) instead of from masking the pointer. That cost the 64-byte malloc+free pair 6
 * instructions, won back by a root that never holds NULL (pymalloc.h, pm_map) and by
 * malloc no longer testing for the last block (pm_heap_usable_head): 38 again. What stays
 * is latency: in the pair's pure dependency chain 3.8 -> 8.5-8.8 ns; CPython's own programs
 * (tools/bench/workloads, run under //tools:pmpython) take the same time as before,
 * 0.998-1.008x, because real code does work between a free and the next malloc.
 * (The suite's later runs put the pair at 4.4 ns and 8.8 ns for the same code: its time
 * moves with the machine more than with this change.)
 *
 * Prefetch. malloc prefetches the block it leaves at the head of the free list
 * (pm_pool_take): churn 34.0 -> 31.0 ns a step, one instruction on the pair (39).
 *
 * Unpooled record. pm_pymalloc_unpooled_allocator serves every request from the raw
 * domain, as pymalloc does for 0 or more than 512 bytes, and frees with pymalloc's free.
 * The tracer uses it for the blocks it samples, so that a pool block is never traced and
 * free's fast path need not ask the tracer (alloc/trace.c, "Sampling over pymalloc").
 */
#include <string.h>

#include "alloc/internal/domain.h"
#include "alloc/internal/fatal.h"
#include "alloc/internal/pymalloc.h"
#include "alloc/internal/trace.h"

pm_pool pm_no_pool; /* free == NULL: an empty list's head looks full */

#define ALL_LISTS_EMPTY {[0 ... PM_NUM_CLASSES - 1] = &pm_no_pool}

pm_heap pm_main_heap = {.used = ALL_LISTS_EMPTY, .kind = PM_HEAP_MAIN};
pm_heap pm_traced_heap = {.used = ALL_LISTS_EMPTY, .kind = PM_HEAP_TRACED};

/* ---- used lists ---------------------------------------------------------------------- */

/* The main heap's list operations count nothing (GIL mode pays for no bookkeeping it does
 * not use); thread_cache.c wraps them with the counts its bounds need. */
void pm_heap_push_front(pm_heap *heap, pm_pool *pool) {
    pm_pool *head = heap->used[pool->size_class];
    pool->prev = NULL;
    pool->next = head == &pm_no_pool ? NULL : head;
    if (pool->next != NULL) {
        pool->next->prev = pool;
    } else {
        heap->used_last[pool->size_class] = pool;
    }
    heap->used[pool->size_class] = pool;
}

void pm_heap_push_back(pm_heap *heap, pm_pool *pool) {
    pm_pool *last = heap->used_last[pool->size_class];
    if (last == NULL) {
        pm_heap_push_front(heap, pool);
        return;
    }
    pool->prev = last;
    pool->next = NULL;
    last->next = pool;
    heap->used_last[pool->size_class] = pool;
}

void pm_heap_unlink(pm_heap *heap, pm_pool *pool) {
    if (pool->prev != NULL) {
        pool->prev->next = pool->next;
    } else {
        heap->used[pool->size_class] = pool->next != NULL ? pool->next : &pm_no_pool;
    }
    if (pool->next != NULL) {
        pool->next->prev = pool->prev;
    } else {
        heap->used_last[pool->size_class] = pool->prev;
    }
    pool->next = pool->prev = NULL;
}

/* ---- carving ------------------------------------------------------------------------- */

/* Links the uncarved blocks that start in the OS page of the next uncarved one. The pool's
 * free list must be empty. Returns false when the pool has nothing left to carve. */
static inline bool pool_carve(pm_pool *pool) {
    size_t size = pm_class_block_size(pool->size_class);
    size_t offset = pool->carve_offset;
    if (offset + size > PM_POOL_SIZE) return false;
    size_t page_end = (offset & ~(PM_OS_PAGE_SIZE - 1)) + PM_OS_PAGE_SIZE;
    uintptr_t base = pool->memory; /* block offsets are multiples of 16 */
    pm_block *first = (pm_block *)(base + offset);
    pm_block *last = first;
    for (offset += size; offset < page_end && offset + size <= PM_POOL_SIZE; offset += size) {
        pm_block *block = (pm_block *)(base + offset);
        last->next = block;
        last = block;
    }
    last->next = NULL;
    pool->free = first;
    pool->carve_offset = (uint16_t)offset;
    return true;
}

static_assert(PM_POOL_BITS <= 15, "carve_offset can reach PM_POOL_SIZE, which must fit 16 bits");

bool pm_pool_carve(pm_pool *pool) {
    return pool_carve(pool);
}

/* A class that has filled a pool and needs a fresh one is growing: it will very likely
 * fill this one too, so its pages are faulted in at once (pm_arena_populate_pool) rather
 * than one fault per page as carving reaches them. A class's first pool, and a pool used
 * before (its pages are in memory already), are left alone. */
void pm_pool_populate_if_growing(const pm_heap *heap, const pm_pool *pool, unsigned size_class) {
    if (pool->size_class == PM_NO_CLASS && (heap->filled_classes >> size_class & 1) != 0) {
        pm_arena_populate_pool(pool);
    }
}

/* Gets an empty pool ready to serve `size_class`. An empty pool last used for the same class
 * keeps its free list, which then holds every carved block; anything else starts carving
 * afresh. */
void pm_pool_prepare(pm_pool *pool, unsigned size_class) {
    if (pool->size_class != size_class) {
        pool->size_class = (uint16_t)size_class;
        pool->carve_offset = 0;
        pool->free = NULL;
        pool_carve(pool);
    }
}

/* Pops the first block of `pool`, the head of its heap's list, which has one. */
void *pm_pool_pop_first(pm_pool *pool) {
    pm_block *block = pool->free;
    pool->free = block->next;
    pool->used_state++;
    return block;
}

/* ---- routes -------------------------------------------------------------------------- */

pm_heap pm_bypass_heap = {.used = ALL_LISTS_EMPTY, .kind = PM_HEAP_SENTINEL};
pm_heap pm_sampling_heap = {.used = ALL_LISTS_EMPTY, .kind = PM_HEAP_SENTINEL};
pm_heap pm_traced_route_heap = {.used = ALL_LISTS_EMPTY, .kind = PM_HEAP_SENTINEL};
pm_heap pm_unattached_heap = {.used = ALL_LISTS_EMPTY, .kind = PM_HEAP_SENTINEL};
/* Every leaf offset 0, so every lookup finds none_pool. Never written, yet not const: a
 * const object of 1.5 MiB of zeros would be stored in the binary (.rodata); this is .bss. */
pm_map pm_bypass_map;

pm_domain_route pm_domain_routes[PM_DOMAIN_COUNT] = {
    [PM_DOMAIN_RAW] = {.map = &pm_bypass_map}, /* raw has no pymalloc path */
    [PM_DOMAIN_MEM] = {.map = &pm_arena_map},
    [PM_DOMAIN_OBJ] = {.map = &pm_arena_map},
};

/* Something other than pymalloc is installed in `route`'s domain: call it through the table,
 * applying CPython's size rule first as every entry point does. */
static void *malloc_through_table(size_t nbytes, int route) {
    const pm_allocator *a = pm_domain_current((pm_domain)route);
    if (a == &pm_pymalloc_allocator) {
        return pm_pymalloc_malloc_inline(pm_own_heap(), nbytes, PM_ROUTE_PYMALLOC);
    }
    if (nbytes > (size_t)PTRDIFF_MAX) return NULL;
    return a->malloc(a->ctx, nbytes);
}

/* ---- slow paths ---------------------------------------------------------------------- */

bool pm_pool_settle(pm_pool *pool) {
    if (pool->free != NULL) return false;
    /* In steady state most exhausted pools are fully carved: test that before calling. */
    bool carvable = pool->carve_offset + pm_class_block_size(pool->size_class) <= PM_POOL_SIZE;
    if (carvable && pool_carve(pool)) return false;
    pool->used_state |= PM_POOL_FULL;
    return true;
}

/* Takes the head, just marked full, off its list until a block comes back; returns the new
 * head. Only the head is ever popped, so the next pool has free blocks. */
static inline pm_pool *unlink_full_head(pm_heap *heap, pm_pool *head, unsigned size_class) {
    heap->filled_classes |= 1u << size_class;
    pm_pool *next = head->next;
    head->next = NULL;
    if (next != NULL) {
        heap->used[size_class] = next;
        next->prev = NULL;
        return next;
    }
    heap->used[size_class] = &pm_no_pool;
    heap->used_last[size_class] = NULL;
    return &pm_no_pool;
}

/* pm_heap_usable_head for a list that is not empty. */
static inline pm_pool *settle_head(pm_heap *heap, pm_pool *head, unsigned size_class) {
    return pm_pool_settle(head) ? unlink_full_head(heap, head, size_class) : head;
}

pm_pool *pm_heap_usable_head(pm_heap *heap, unsigned size_class) {
    pm_pool *head = heap->used[size_class];
    return head == &pm_no_pool ? head : settle_head(heap, head, size_class);
}

static void *malloc_from_new_pool(pm_heap *heap, unsigned size_class) {
    pm_pool *pool = pm_arena_take_pool();
    if (pool == NULL) return NULL;
    pm_pool_populate_if_growing(heap, pool, size_class);
    pm_pool_set_owner(pool, heap);
    pm_pool_prepare(pool, size_class);
    pm_heap_push_front(heap, pool);
    return pm_pool_pop_first(pool);
}

static inline void *malloc_uncharged(pm_heap *heap, size_t nbytes, int route);
static void *malloc_at_sample_point(size_t nbytes, pm_heap *heap, int route);

/* Everything malloc's slow path does but its commonest case (below). */
static __attribute__((noinline)) void *malloc_slower(size_t nbytes, pm_heap *heap, int route) {
    if (nbytes - 1 < PM_SMALL_REQUEST_THRESHOLD) {
        unsigned size_class = (unsigned)pm_size_class(nbytes);
        pm_pool *head = heap->used[size_class];
        if (head != &pm_no_pool) {
            head = settle_head(heap, head, size_class);
            if (head != &pm_no_pool) return pm_pool_pop_first(head);
        }
    }
    if (heap == &pm_unattached_heap) {
        if (pm_thread_attach() == NULL) return NULL;
        heap = pm_route_heap(route);
        if (nbytes - 1 >= PM_SMALL_REQUEST_THRESHOLD) {
            return pm_pymalloc_malloc_inline(heap, nbytes, route);
        }
        /* This call was charged already. Attaching may have put the thread on the sampling
         * stand-in, whose way out redraws a countdown of another rate (found by
         * fuzz/fuzz_threads.c: arming here directly kept a parked countdown). */
        if (heap == &pm_sampling_heap) return malloc_at_sample_point(nbytes, heap, route);
        return malloc_uncharged(heap, nbytes, route);
    }
    if (heap == &pm_traced_route_heap) return pm_trace_route_malloc(nbytes, route);
    if (heap == &pm_bypass_heap || heap == &pm_sampling_heap) {
        return malloc_through_table(nbytes, route);
    }
    if (nbytes - 1 < PM_SMALL_REQUEST_THRESHOLD) {
        unsigned size_class = (unsigned)pm_size_class(nbytes);
        if (heap->kind == PM_HEAP_THREAD) return pm_thread_cache_refill(heap, size_class);
        return malloc_from_new_pool(heap, size_class);
    }
    /* 0 or more than 512 bytes while the tracer samples over pymalloc: its hook samples
     * these (an armed route no longer leads there by itself). */
    if (route != PM_ROUTE_PYMALLOC &&
        pm_atomic_load_int_relaxed(&pm_domain_routes[route].sampling) != 0) {
        return malloc_through_table(nbytes, route);
    }
    void *p = pm_raw_malloc(nbytes); /* refuses sizes above PTRDIFF_MAX itself */
    if (p != NULL) pm_raw_blocks_add();
    return p;
}

/* The commonest way here in steady state: the previous malloc of the class took the last
 * block of the head pool, which has nothing left to carve and is not the only pool. It is
 * marked full and unlinked here, and the next pool serves, with no call and so no stack
 * frame. Anything else goes on to malloc_slower. The countdown is not charged again. */
static inline void *malloc_uncharged_slow(size_t nbytes, pm_heap *heap, int route) {
    if (nbytes - 1 < PM_SMALL_REQUEST_THRESHOLD) {
        unsigned size_class = (unsigned)pm_size_class(nbytes);
        pm_pool *head = heap->used[size_class];
        /* pm_no_pool's next is NULL, so a stand-in's empty list fails the test below. */
        if (head->free == NULL && head->next != NULL &&
            head->carve_offset + pm_class_block_size(size_class) > PM_POOL_SIZE) {
            head->used_state |= PM_POOL_FULL;
            return pm_pool_pop_first(unlink_full_head(heap, head, size_class));
        }
    }
    return malloc_slower(nbytes, heap, route);
}

/* malloc's fast path without the countdown: for a call already charged. */
static inline void *malloc_uncharged(pm_heap *heap, size_t nbytes, int route) {
    pm_pool *pool = heap->used[pm_size_class(nbytes)];
    pm_block *block = pool->free;
    if (__builtin_expect(block != NULL, 1)) return pm_pool_take(pool, block);
    return malloc_uncharged_slow(nbytes, heap, route);
}

/* A small malloc whose countdown ran out, or whose route still names the sampling stand-in
 * (see the routes in alloc/internal/pymalloc.h): the tracer decides whether it is a sample;
 * if not, the thread's heap serves it. */
static __attribute__((noinline)) void *malloc_at_sample_point(size_t nbytes, pm_heap *heap,
                                                              int route) {
    if (heap == &pm_sampling_heap) heap = pm_thread_route_arm(route);
    if (pm_trace_pymalloc_sample_point(nbytes, route)) {
        return pm_trace_sampled_malloc(nbytes, route);
    }
    return malloc_uncharged(heap, nbytes, route);
}

void *pm_pymalloc_malloc_slow(size_t nbytes, pm_heap *heap, int route) {
    /* Straight to the tracer: every call is traced, none is sampled. */
    if (heap == &pm_traced_route_heap) return pm_trace_route_malloc(nbytes, route);
    if (nbytes - 1 < PM_SMALL_REQUEST_THRESHOLD &&
        __builtin_expect(pm_trace_gate.countdown <= 0 || heap == &pm_sampling_heap, 0)) {
        return malloc_at_sample_point(nbytes, heap, route);
    }
    return malloc_uncharged_slow(nbytes, heap, route);
}

/* free's fast path found used_state <= 0: the pool was full, or is now empty, or both (a
 * pool of one block). The caller owns the pool: its thread, or the pool lock for the shared
 * heap, or the GIL for the main heap. */
void pm_pymalloc_free_slow(pm_pool *pool) {
    pm_heap *heap = pm_pool_owner_mine(pool);
    uint32_t state = pool->used_state;
    if (state & PM_POOL_FULL) {
        pool->used_state = state & ~PM_POOL_FULL;
        if (pool->used_state != 0) {
            pm_heap_push_back(heap, pool);
            return;
        }
        /* Full and now empty (a pool of one block): it was on no list. */
    } else {
        pm_heap_unlink(heap, pool); /* empty */
    }
    if (__builtin_expect(heap == &pm_main_heap, 1) || heap == &pm_traced_heap) {
        if (heap == &pm_traced_heap) pm_trace_pool_leaves_traced_heap(pool);
        pm_arena_return_pool(pool);
    } else {
        pm_thread_cache_pool_empty(heap, pool);
    }
}

/* The block's pool belongs to another thread's heap, or this thread has no heap yet, or
 * the map found no pool of ours at p (its none_pool). */
__attribute__((noinline)) static void free_not_traced(pm_pool *pool, void *p, int route) {
    if (pm_map_is_none(pool)) {
        pm_pymalloc_free_unowned(p, route);
        return;
    }
    pm_heap *own = pm_own_heap();
    if (own == &pm_unattached_heap) {
        own = pm_thread_attach();
        if (own == NULL) pm_fatal_error("pm_free", "no memory left to attach the calling thread");
    }
    pm_heap *owner = pm_pool_owner(pool);
    if (owner == own) {
        pm_pool_free_block(pool, (pm_block *)p);
        return;
    }
    if (owner == NULL || owner->kind == PM_HEAP_SENTINEL || owner == &pm_main_heap) {
        /* The pool is back in its arena: p was freed already, or never allocated (or, for
         * the main heap, the mode changed under live blocks, which pm_init refuses). */
        pm_fatal_error("pm_free", "the block's pool is not in use (double free?)");
    }
    if (owner == &pm_shared_heap || !pm_atomic_load_int_acquire(&owner->attached)) {
        pm_thread_cache_free_to_shared(owner, p);
    } else {
        /* Batched: the chain goes to the owner in one CAS (pm_outbox_flush). */
        pm_lifo_node *node = (pm_lifo_node *)p;
        if (own->outbox_to != owner) {
            if (own->outbox_to != NULL) pm_outbox_flush(own);
            own->outbox_to = owner;
            own->outbox_last = node;
            node->next = NULL;
        } else {
            node->next = own->outbox_first;
        }
        own->outbox_first = node;
        if (++own->outbox_count >= PM_OUTBOX_BLOCKS) pm_outbox_flush(own);
    }
    uint64_t *sent = &own->counters.remote_frees;
    pm_atomic_store_u64_relaxed(sent, pm_atomic_load_u64_relaxed(sent) + 1);
}

/* The block's pool belongs to another heap (or this thread has no heap yet), or the map
 * found no pool of ours at p (its none_pool). Only a dispatch, so that a traced heap's
 * block, every free while tracing with records in blocks, goes to the tracer without
 * the register saves of free_not_traced (12 instructions a traced step). */
void pm_pymalloc_free_other_heap(pm_pool *pool, void *p, int route) {
    if (pm_pool_owner(pool) == &pm_traced_heap) {
        pm_trace_free_in_block(pool, p);
        return;
    }
    free_not_traced(pool, p, route);
}

void pm_pymalloc_free_unowned(void *p, int route) {
    if (route != PM_ROUTE_PYMALLOC) {
        const pm_allocator *a = pm_domain_current((pm_domain)route);
        if (a != &pm_pymalloc_allocator) {
            a->free(a->ctx, p);
            return;
        }
        /* pymalloc is installed but the route still said otherwise: test the real map. */
        if (pm_pymalloc_owns(p)) {
            pm_pymalloc_free_inline(&pm_arena_map, p, PM_ROUTE_PYMALLOC);
            return;
        }
    }
    if (p == NULL) return;
    pm_raw_free(p);
    pm_raw_blocks_sub();
}

/* A foreign block may predate pymalloc (allocated before the domain was switched to it); the
 * count is of blocks pymalloc passed on, so it never goes below zero. */
void pm_raw_blocks_add(void) {
    pm_atomic_faa_size(&pm_counters.raw_allocated_blocks, 1);
}

void pm_raw_blocks_sub(void) {
    size_t *count = &pm_counters.raw_allocated_blocks;
    for (size_t seen = pm_atomic_load_size_relaxed(count); seen > 0;
         seen = pm_atomic_load_size_relaxed(count)) {
        if (pm_atomic_cas_size(count, seen, seen - 1)) return;
    }
}

/* ---- calloc and realloc -------------------------------------------------------------- */

void *pm_pymalloc_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    if (elsize != 0 && nelem > (size_t)PTRDIFF_MAX / elsize) return NULL;
    size_t nbytes = nelem * elsize;
    if (nbytes - 1 < PM_SMALL_REQUEST_THRESHOLD) {
        void *p = pm_pymalloc_malloc_inline(pm_own_heap(), nbytes, PM_ROUTE_PYMALLOC);
        if (p != NULL) memset(p, 0, nbytes);
        return p;
    }
    void *p = pm_raw_calloc(nelem, elsize);
    if (p != NULL) pm_raw_blocks_add();
    return p;
}

void *pm_pymalloc_realloc(void *ctx, void *p, size_t nbytes) {
    (void)ctx;
    if (p == NULL) return pm_pymalloc_malloc_inline(pm_own_heap(), nbytes, PM_ROUTE_PYMALLOC);
    pm_pool *pool = pm_pool_of(p);
    if (pool == NULL) {
        /* Not ours (a large block, or one from before pymalloc was installed): it stays in
         * the raw domain whatever its new size, as in CPython. */
        return pm_raw_realloc(p, nbytes);
    }
    size_t size = pm_pool_usable_size(pool);
    size_t keep = size;
    if (nbytes <= size) {
        /* Shrinking by less than a quarter: not worth a copy. A traced heap's block always
         * moves, so that its record, which only the tracer writes, leaves with it. */
        if (4 * nbytes > 3 * size && pm_pool_owner(pool) != &pm_traced_heap) return p;
        keep = nbytes;
    }
    void *q = pm_pymalloc_malloc_inline(pm_own_heap(), nbytes, PM_ROUTE_PYMALLOC);
    if (q == NULL) return NULL; /* p untouched and still valid */
    memcpy(q, p, keep);
    pm_pymalloc_free_inline(&pm_arena_map, p, PM_ROUTE_PYMALLOC);
    return q;
}

/* ---- the allocator record ------------------------------------------------------------ */

static void *pymalloc_malloc(void *ctx, size_t nbytes) {
    (void)ctx;
    return pm_pymalloc_malloc_inline(pm_own_heap(), nbytes, PM_ROUTE_PYMALLOC);
}

static void pymalloc_free(void *ctx, void *p) {
    (void)ctx;
    pm_pymalloc_free_inline(&pm_arena_map, p, PM_ROUTE_PYMALLOC);
}

const pm_allocator pm_pymalloc_allocator = {
    .ctx = NULL,
    .malloc = pymalloc_malloc,
    .calloc = pm_pymalloc_calloc,
    .realloc = pm_pymalloc_realloc,
    .free = pymalloc_free,
};

/* ---- the unpooled record: new blocks from the raw domain ----------------------------- */

/* Blocks handed out here are the kind pymalloc hands out for 0 or more than 512 bytes:
 * from the raw domain, counted in raw_allocated_blocks, freed by pymalloc's free. */
static void *unpooled_malloc(void *ctx, size_t nbytes) {
    (void)ctx;
    void *p = pm_raw_malloc(nbytes);
    if (p != NULL) pm_raw_blocks_add();
    return p;
}

static void *unpooled_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    void *p = pm_raw_calloc(nelem, elsize);
    if (p != NULL) pm_raw_blocks_add();
    return p;
}

/* A pool block moves out of its pool whatever the new size; a raw block stays raw. */
static void *unpooled_realloc(void *ctx, void *p, size_t nbytes) {
    if (p == NULL) return unpooled_malloc(ctx, nbytes);
    pm_pool *pool = pm_pool_of(p);
    if (pool == NULL) return pm_raw_realloc(p, nbytes);
    size_t size = pm_pool_usable_size(pool);
    void *q = unpooled_malloc(ctx, nbytes);
    if (q == NULL) return NULL; /* p untouched and still valid */
    memcpy(q, p, nbytes < size ? nbytes : size);
    pm_pymalloc_free_inline(&pm_arena_map, p, PM_ROUTE_PYMALLOC);
    return q;
}

const pm_allocator pm_pymalloc_unpooled_allocator = {
    .ctx = NULL,
    .malloc = unpooled_malloc,
    .calloc = unpooled_calloc,
    .realloc = unpooled_realloc,
    .free = pymalloc_free,
};
