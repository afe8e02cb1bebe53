/*
 * pymalloc.h — pymalloc's structures and its inline fast paths.
 *
 * Geometry (defaults; see "Choosing the pool size" in alloc/pymalloc.c for the numbers):
 *
 *   arena  256 KiB from the arena allocator (mmap), carved lazily into pools
 *   pool   PM_POOL_SIZE bytes: a 48-byte header, then blocks of one size class
 *   class  i serves requests of 16*i+1 .. 16*(i+1) bytes; 32 classes up to 512 bytes
 *
 *   pool:  [ header | block | block | ... | block | never carved ... | tail ]
 *            ^ pool address (PM_POOL_SIZE-aligned)      ^ carve_offset
 *
 * States. A pool is *used* (some blocks handed out, some free: it sits on its owner heap's
 * used list for its class), *full* (no free block: on no list) or *empty* (no block handed
 * out: on its arena's free-pool list). Transitions:
 *
 *   empty --malloc--> used --last free block taken--> full --a block freed--> used (front)
 *   used --last block freed--> empty (back to the arena)
 *
 * Invariant that the fast paths rely on: pool->free == NULL exactly when the pool is full, and
 * then PM_POOL_FULL is set in used_state. malloc keeps it by carving more blocks (or
 * unlinking the pool and setting the flag) when it takes the last free block; free finds
 * "was full" or "now empty" in one test of used_state.
 *
 * Ownership. Every pool names its owner heap. With the GIL there is one heap; the
 * per-thread caches give each thread its own heap, and the pool header is where a block
 * finds the heap to go back to.
 *
 * Locking: in GIL mode everything here is protected by the GIL (callers of the mem and
 * object domains hold it). The arena map is the exception: it is read without the GIL by
 * pm_pymalloc_owns(), so its entries are atomics (see alloc/arena.c).
 */
#ifndef PM_ALLOC_INTERNAL_PYMALLOC_H
#define PM_ALLOC_INTERNAL_PYMALLOC_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloc/pymalloc_mt.h"
#include "sync/sync.h"

/* Internal symbols: hidden, so the fast paths reach them without the GOT. */
#pragma GCC visibility push(hidden)

#ifdef __cplusplus
extern "C" { /* white-box tests are C++ */
#endif

/* ---- geometry ------------------------------------------------------------------------ */

/* `--define=pm_geometry=cpython310` selects CPython 3.10+'s 64-bit geometry. */
#ifndef PM_ARENA_BITS
#define PM_ARENA_BITS 18 /* 256 KiB, the documented pymalloc arena */
#endif
#ifndef PM_POOL_BITS
#define PM_POOL_BITS 14 /* 16 KiB; chosen by measurement, see alloc/pymalloc.c */
#endif

#define PM_ARENA_SIZE ((size_t)1 << PM_ARENA_BITS)
#define PM_POOL_SIZE ((size_t)1 << PM_POOL_BITS)
#define PM_POOL_MASK (PM_POOL_SIZE - 1)
#define PM_POOLS_PER_ARENA (PM_ARENA_SIZE / PM_POOL_SIZE)
#define PM_OS_PAGE_SIZE ((size_t)4096)

#define PM_ALIGNMENT 16
#define PM_ALIGNMENT_SHIFT 4
#define PM_SMALL_REQUEST_THRESHOLD 512
#define PM_NUM_CLASSES (PM_SMALL_REQUEST_THRESHOLD / PM_ALIGNMENT)

static_assert(PM_POOL_BITS >= 12 && PM_POOL_BITS <= 16, "pool offsets are kept in 16 bits");
static_assert(PM_ARENA_BITS > PM_POOL_BITS, "an arena holds several pools");
static_assert(PM_POOLS_PER_ARENA <= 256, "arena bucket bitmap is 256 bits");

static inline size_t pm_size_class(size_t nbytes) {
    return (nbytes - 1) >> PM_ALIGNMENT_SHIFT;
}

static inline size_t pm_class_block_size(unsigned size_class) {
    return ((size_t)size_class + 1) << PM_ALIGNMENT_SHIFT;
}

/* ---- structures ---------------------------------------------------------------------- */

typedef struct pm_block {
    struct pm_block *next;
} pm_block;

struct pm_arena;
struct pm_heap;

/* 48 bytes, so blocks start 16-byte aligned right after it. */
typedef struct pm_pool {
    pm_block *free;          /* first free block; NULL exactly when the pool is full */
    struct pm_pool *next;    /* used list of the owner heap, or the arena's free-pool list */
    struct pm_pool *prev;    /* used list only */
    struct pm_arena *arena;  /* the arena the pool was carved from */
    struct pm_heap *owner;   /* the heap whose used list takes the pool when it has room */
    uint32_t used_state;     /* blocks handed out, plus PM_POOL_FULL while the pool is full */
    uint16_t carve_offset;   /* offset of the first never-carved block */
    uint16_t size_class;     /* PM_NO_CLASS until the pool first serves a class */
} pm_pool;

#define PM_POOL_HEADER_SIZE sizeof(pm_pool)

/* Set in used_state while a pool is full (and so on no list). Keeping the flag in the count's
 * word lets free's fast path decide "slow path?" with one decrement and one sign test: the
 * result is <= 0 as a signed number exactly when the pool was full (flag set) or has just
 * become empty (count 0). A pool on a used list never has the flag, so malloc's increment
 * leaves it alone. */
#define PM_POOL_FULL 0x80000000u

static inline uint32_t pm_pool_used(const pm_pool *pool) {
    return pool->used_state & ~PM_POOL_FULL;
}

static inline bool pm_pool_full(const pm_pool *pool) {
    return (pool->used_state & PM_POOL_FULL) != 0;
}
#define PM_NO_CLASS 0xFFFF
static_assert(sizeof(pm_pool) == 48, "pool header layout");
static_assert(sizeof(pm_pool) % PM_ALIGNMENT == 0, "blocks after the header stay aligned");

/* Blocks a pool of this class can ever hold. */
static inline uint32_t pm_class_capacity(unsigned size_class) {
    return (uint32_t)((PM_POOL_SIZE - PM_POOL_HEADER_SIZE) / pm_class_block_size(size_class));
}

/* A heap: the used-pool lists, one per size class, that malloc draws from. An empty list's
 * head is &pm_no_pool, whose free pointer is NULL, so the fast path needs no separate
 * "is the list empty?" test: an empty list looks like a full pool and takes the slow path. */
typedef struct pm_heap {
    pm_pool *used[PM_NUM_CLASSES];
} pm_heap;

extern pm_pool pm_no_pool;
extern pm_heap pm_main_heap;

/* The installed arena allocator, recorded per arena so that each arena is given back to
 * the allocator that made it, even if pm_set_arena_allocator() ran in between. */
typedef struct pm_arena {
    uintptr_t address;       /* what the arena allocator returned; 0 when the slot is unused */
    pm_arena_allocator allocator;
    pm_pool *first_pool;     /* first PM_POOL_SIZE-aligned address in the arena */
    pm_pool *free_pools;     /* empty pools given back, linked through pool->next */
    uint32_t total_pools;    /* pools that fit (one fewer when the arena is unaligned) */
    uint32_t carved_pools;   /* pools handed out at least once: first_pool[0 .. carved) */
    uint32_t free_count;     /* pools on free_pools + pools never carved */
    uint32_t in_reserve;     /* wholly free and kept mapped (on the reserve list) */
    struct pm_arena *next;   /* bucket list / reserve list / unused-descriptor list */
    struct pm_arena *prev;   /* bucket list only */
    struct pm_arena *all_next; /* every descriptor ever made, for walks */
} pm_arena;

/* pymalloc's counters, CPython's names. Protected by the GIL. */
typedef struct pm_pymalloc_counters {
    size_t arenas_allocated_total;
    size_t arenas_reclaimed;
    size_t arenas_highwater;
    size_t arenas_current;
    size_t raw_allocated_blocks; /* live blocks pymalloc passed to the raw domain */
    size_t map_leaf_nodes;       /* arena map leaves allocated (never freed) */
} pm_pymalloc_counters;

extern pm_pymalloc_counters pm_counters;

/* ---- the arena map: "is this pointer ours?" ------------------------------------------ */

/* Address space is cut into chunks of PM_ARENA_SIZE. An arena's pools [lo, hi) cover at most
 * two chunks, and each chunk is shared by at most two arenas: one that began at or before the
 * chunk's start and ends inside it (the chunk's low part) and one that begins inside it (its
 * high part). So a chunk's entry holds two absolute addresses:
 *
 *   chunk:  [ low part: ours below low_end | ... | high part: ours from high_start on ]
 *
 * p is ours when p < low_end, or when p >= high_start. The common case, an arena aligned to
 * its size, is one chunk whose low_end is the chunk's end: one compare of p with memory.
 * high_start is stored complemented so that a zeroed entry (a fresh leaf) owns nothing. Each
 * word is a fact of its own and is updated atomically, so a reader never needs both to agree. */
#define PM_ADDRESS_BITS 48
#define PM_MAP_KEY_BITS (PM_ADDRESS_BITS - PM_ARENA_BITS)
#define PM_MAP_LEAF_BITS (PM_MAP_KEY_BITS / 2)
#define PM_MAP_ROOT_BITS (PM_MAP_KEY_BITS - PM_MAP_LEAF_BITS)
#define PM_MAP_ROOT_LENGTH ((size_t)1 << PM_MAP_ROOT_BITS)
#define PM_MAP_LEAF_LENGTH ((size_t)1 << PM_MAP_LEAF_BITS)

typedef struct pm_map_entry {
    uintptr_t low_end;              /* p < low_end is ours; 0: no low part */
    uintptr_t high_start_inverted;  /* ~p <= this is ours; 0: no high part */
} pm_map_entry;

typedef struct pm_map_leaf {
    pm_map_entry chunk[PM_MAP_LEAF_LENGTH];
} pm_map_leaf;

extern pm_map_leaf *pm_map_root[PM_MAP_ROOT_LENGTH];

/* Exact for any pointer: reads only the map, never the memory p points at. `root` is
 * pm_map_root, or a domain route's stand-in that owns nothing (see pm_domain_route). */
static inline bool pm_map_owns(pm_map_leaf *const *root, const void *p) {
    uintptr_t address = (uintptr_t)p;
    uintptr_t root_index = address >> (PM_ARENA_BITS + PM_MAP_LEAF_BITS);
    if (root_index >= PM_MAP_ROOT_LENGTH) return false;
    const pm_map_leaf *leaf = (const pm_map_leaf *)pm_atomic_load_ptr_acquire(&root[root_index]);
    if (leaf == NULL) return false;
    const pm_map_entry *entry = &leaf->chunk[(address >> PM_ARENA_BITS) & (PM_MAP_LEAF_LENGTH - 1)];
    if (address < pm_atomic_load_size_relaxed(&entry->low_end)) return true;
    return ~address <= pm_atomic_load_size_relaxed(&entry->high_start_inverted);
}

static inline bool pm_pymalloc_owns(const void *p) {
    return pm_map_owns(pm_map_root, p);
}

static inline pm_pool *pm_pool_of(const void *p) {
    return (pm_pool *)((uintptr_t)p & ~(uintptr_t)PM_POOL_MASK);
}

/* ---- arenas (alloc/arena.c) ---------------------------------------------------------- */

/* An empty pool for a heap, from the busiest arena that has one; NULL when the arena
 * allocator fails (the heap is then unchanged). */
pm_pool *pm_arena_take_pool(void);
/* Gives an empty pool back; may release its arena to the OS. */
void pm_arena_return_pool(pm_pool *pool);

/* Calls fn for every arena in use (reserve included). */
void pm_arena_for_each(void (*fn)(const pm_arena *arena, void *arg), void *arg);
/* Checks the arena lists, buckets and map; NULL when consistent. */
const char *pm_arena_check(char *buf, size_t size);
size_t pm_arena_reserve_count(void);
size_t pm_arena_reserve_limit(void);

/* ---- pymalloc (alloc/pymalloc.c) ----------------------------------------------------- */

/* The allocator record installed in the mem and object domains by default. */
extern const pm_allocator pm_pymalloc_allocator;

/* Routes: how the mem and object entry points know, without comparing tables, that pymalloc
 * is what the domain has installed. While it is, the domain's route holds the real heap and
 * arena map; while anything else is installed (a hook, "malloc"), it holds stand-ins that
 * never match: the bypass heap's lists all look full and the bypass map owns nothing. Every
 * call then leaves the fast path, and the slow path dispatches through the table. The
 * "is a hook installed?" test thus costs nothing: it is folded into loads the fast paths
 * make anyway. pm_set_allocator() keeps each route in step with its table. */
typedef struct pm_domain_route {
    pm_heap *heap;
    pm_map_leaf *const *map_root;
} pm_domain_route;

extern pm_domain_route pm_domain_routes[PM_DOMAIN_COUNT];
extern pm_heap pm_bypass_heap;
extern pm_map_leaf *const pm_bypass_map_root[PM_MAP_ROOT_LENGTH];

/* Called by pm_set_allocator() after it installs `installed` in a mem or object domain. */
void pm_domain_route_update(pm_domain domain, const pm_allocator *installed);

/* `route` names the caller: PM_DOMAIN_MEM or PM_DOMAIN_OBJ for the public entry points, or
 * PM_ROUTE_PYMALLOC for pymalloc's own record (called through a table, e.g. by a hook). */
#define PM_ROUTE_PYMALLOC (-1)

void *pm_pymalloc_malloc_slow(pm_heap *heap, size_t nbytes, int route);
void *pm_pymalloc_pool_exhausted(pm_pool *pool, pm_block *block);
void pm_pymalloc_free_slow(pm_pool *pool);
void pm_pymalloc_free_unowned(void *p, int route);

void *pm_pymalloc_calloc(void *ctx, size_t nelem, size_t elsize);
void *pm_pymalloc_realloc(void *ctx, void *p, size_t nbytes);

/* Statistics hook: prints the stats when PYTHONMALLOCSTATS asked for it (alloc/stats.c). */
extern int pm_stats_on_new_arena;
void pm_stats_print_on_new_arena(void);
/* pm_print_stats() for the two callers that run under the GIL but cannot show it to the
 * thread-safety analysis: the new-arena report above (deep inside malloc's slow path) and the
 * report at exit. */
void pm_stats_print_unchecked(FILE *out);

/* malloc's fast path: pop the first free block of the class's first used pool. The only
 * test that leaves it is "no free block", which also covers an empty list (&pm_no_pool), the
 * bypass heap, and sizes pymalloc does not serve. The exhausted-pool exit is a tail call,
 * so the function needs no stack frame. */
static inline void *pm_pymalloc_malloc_inline(pm_heap *heap, size_t nbytes, int route) {
    if (__builtin_expect(nbytes - 1 < PM_SMALL_REQUEST_THRESHOLD, 1)) {
        pm_pool *pool = heap->used[pm_size_class(nbytes)];
        pm_block *block = pool->free;
        if (__builtin_expect(block != NULL, 1)) {
            pm_block *next = block->next;
            pool->free = next;
            pool->used_state++;
            if (__builtin_expect(next == NULL, 0)) return pm_pymalloc_pool_exhausted(pool, block);
            return block;
        }
    }
    return pm_pymalloc_malloc_slow(heap, nbytes, route);
}

/* free's fast path: the map says whether p is ours, then p goes on its pool's free list. */
static inline void pm_pymalloc_free_inline(pm_map_leaf *const *map_root, void *p, int route) {
    if (__builtin_expect(!pm_map_owns(map_root, p), 0)) {
        pm_pymalloc_free_unowned(p, route);
        return;
    }
    pm_pool *pool = pm_pool_of(p);
    pm_block *block = (pm_block *)p;
    block->next = pool->free;
    pool->free = block;
    if (__builtin_expect((int32_t)--pool->used_state <= 0, 0)) pm_pymalloc_free_slow(pool);
}

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif /* PM_ALLOC_INTERNAL_PYMALLOC_H */
