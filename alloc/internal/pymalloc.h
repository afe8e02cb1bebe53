/*
 * pymalloc.h — pymalloc's structures and its inline fast paths.
 *
 * Geometry (defaults; see "Choosing the pool size" in alloc/pymalloc.c for the numbers):
 *
 *   arena  256 KiB from the arena allocator (mmap), carved lazily into pools
 *   pool   PM_POOL_SIZE bytes of blocks of one size class, nothing else
 *   class  i serves requests of 16*i+1 .. 16*(i+1) bytes; 32 classes up to 512 bytes
 *
 *   pool memory:  [ block | block | ... | block | never carved ... | tail ]
 *                   ^ PM_POOL_SIZE-aligned         ^ carve_offset
 *
 *   arena descriptor (apart from the arena):  [ counts, lists | header 0 | header 1 | ... ]
 *
 * Pool headers live apart from the pools, side by side in their arena's descriptor, one
 * 64-byte line each; the arena map finds a block's header (pm_pool_of). Headers inside the
 * pools, as CPython keeps them, all sit at PM_POOL_SIZE-aligned addresses, which fall into
 * the same few sets of every cache (one L1 set, 4 of the L2's 1024 here), so in random
 * churn over a large heap nearly every header access missed L2: measured with callgrind's
 * cache model, 1.8 misses a step of the churn benchmark came from pool headers, against
 * 0.9 from the blocks themselves. Packed together, a heap's headers take a few cache lines
 * per arena and stay cached.
 *
 * States. A pool is *used* (some blocks handed out, some free: it sits on its owner heap's
 * used list for its class), *full* (no free block: on no list) or *empty* (no block handed
 * out: on its arena's free-pool list). Transitions:
 *
 *   empty --malloc--> used --last block taken, then settled--> full --a block freed--> used (back)
 *   used --last block freed--> empty (back to the arena)
 *
 * Invariants the fast paths rely on: PM_POOL_FULL is set in used_state only on a full pool,
 * which is then on no list; a pool on a list has a free block, except that the head of a
 * heap's list may have none (malloc took its last block and left it there). The next malloc
 * that finds no block settles the head: it carves more blocks, or unlinks the pool and sets
 * the flag (pm_heap_usable_head), so taking a block costs no "was that the last?" test.
 * free finds "was full" or "now empty" in one test of used_state.
 *
 * Ownership. Every pool names its owner heap: the heap whose thread may pop and push its
 * free list without a lock. In GIL mode that is pm_main_heap for every pool; with per-thread
 * caches (alloc/thread_cache.c) each thread has a heap of its own, the shared heap holds the
 * pools no thread owns, and a pool in its arena's free list has no owner (NULL).
 *
 * Locking: in GIL mode everything here is protected by the GIL (callers of the mem and
 * object domains hold it). With per-thread caches a heap's lists and its pools' free lists
 * and counts belong to the heap's thread alone; the arenas, the shared heap and the registry
 * of heaps are behind the locks of alloc/thread_cache.c. The arena map and pool->owner are
 * read by threads that hold none of those, so they are accessed with atomics.
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
#define PM_POOL_BITS 15 /* 32 KiB; chosen by measurement, see alloc/pymalloc.c */
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

/* A pool's header: one cache line, in its arena's descriptor (never in the pool's memory).
 * The fields free and malloc touch come first. */
typedef struct pm_pool {
    pm_block *free;          /* first free block; NULL exactly when the pool is full */
    uint32_t used_state;     /* blocks handed out, plus PM_POOL_FULL while the pool is full */
    uint16_t carve_offset;   /* offset of the first never-carved block */
    uint16_t size_class;     /* PM_NO_CLASS until the pool first serves a class */
    struct pm_heap *owner;   /* the heap whose used list takes the pool when it has room */
    struct pm_pool *next;    /* used list of the owner heap, or the arena's free-pool list */
    struct pm_pool *prev;    /* used list only */
    struct pm_arena *arena;  /* the arena the pool was carved from */
    uintptr_t memory;        /* the pool's PM_POOL_SIZE bytes of blocks */
    /* The tracer's marks while the pool serves the traced heap (alloc/trace.c, "Marks"):
     * a byte a block. Given once, on the pool's first traced block, and kept with the
     * header, across classes and reuse of the header by another arena; NULL until then. */
    uint8_t *marks;
} __attribute__((aligned(64))) pm_pool;

/* log2(sizeof(pm_pool)): one cache line per header, which also keeps two threads' pools
 * off each other's lines. (128-byte headers, against adjacent-line effects, changed nothing
 * on two-thread churn: 13.83 against 13.71 ns, medians of 11.) */
#define PM_POOL_HEADER_SHIFT 6

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
static_assert(sizeof(pm_pool) == (size_t)1 << PM_POOL_HEADER_SHIFT, "pool header layout");

/* Blocks a pool of this class can ever hold. */
static inline uint32_t pm_class_capacity(unsigned size_class) {
    return (uint32_t)(PM_POOL_SIZE / pm_class_block_size(size_class));
}

/* Per-heap counters for the statistics. Each is written by one thread at a time (the heap's
 * owner, or the holder of the pool lock for the shared heap) with a relaxed load and store,
 * and read by anyone with relaxed loads. */
typedef struct pm_heap_counters {
    uint64_t remote_frees;    /* blocks this heap's thread freed into another heap's pool */
    uint64_t remote_received; /* blocks other threads freed into this heap's pools, applied */
    uint64_t drains;          /* times the remote-free list was taken */
    uint64_t pools_adopted;   /* partly used pools taken from the shared heap */
    uint64_t pools_given;     /* partly used or full pools given to the shared heap */
    uint64_t pools_from_arena;
    uint64_t pools_to_arena;
    uint64_t stash_hits;      /* empty pools reused from this heap's stash */
} pm_heap_counters;

typedef enum pm_heap_kind {
    PM_HEAP_MAIN,     /* pm_main_heap: every pool in GIL mode without caches */
    PM_HEAP_SHARED,   /* pm_shared_heap: pools no thread owns (thread caches on) */
    PM_HEAP_THREAD,   /* one per attached thread; recycled after the thread detaches */
    PM_HEAP_TRACED,   /* pm_traced_heap: blocks with the tracer's record in front (GIL mode) */
    PM_HEAP_SENTINEL, /* pm_bypass_heap, pm_sampling_heap, pm_traced_route_heap,
                       * pm_unattached_heap: own nothing */
} pm_heap_kind;

/* A heap: the used-pool lists, one per size class, that malloc draws from. An empty list's
 * head is &pm_no_pool, whose free pointer is NULL, so the fast path needs no separate
 * "is the list empty?" test: an empty list looks like a full pool and takes the slow path.
 * Only used[] is read by the fast paths; everything after it belongs to the slow paths. */
typedef struct pm_heap {
    pm_pool *used[PM_NUM_CLASSES];
    pm_pool *used_last[PM_NUM_CLASSES]; /* tail of each used list; NULL when it is empty */
    pm_heap_kind kind;
    uint32_t filled_classes;             /* bit c: a pool of class c has filled up here */
    pm_pool *stash;                      /* empty pools kept for reuse, via next */
    uint32_t stash_count;
    uint32_t stash_per_class[PM_NUM_CLASSES]; /* by each stashed pool's last class */
    struct pm_heap *registry_next;       /* every thread heap ever made (never freed) */
    struct pm_heap **slots;              /* the attached thread's pm_thread_heaps */
    /* Remote frees this heap's thread made and has not handed over yet: a chain for one
     * other heap at a time, pushed there in one CAS when it reaches PM_OUTBOX_BLOCKS, when
     * the blocks are for another heap, and whenever this thread refills, collects or
     * detaches. */
    struct pm_heap *outbox_to;
    pm_lifo_node *outbox_first, *outbox_last;
    uint32_t outbox_count;
    pm_heap_counters counters;
    /* Blocks freed by other threads into this heap's pools, taken by the owner in batches.
     * On a cache line of its own (other threads write it while the owner reads used[]),
     * with the one other field a remote free reads: whether a thread uses the heap. */
    pm_lifo remote __attribute__((aligned(64)));
    int attached; /* PM_HEAP_THREAD: a thread uses it; changes under the pool lock */
    char remote_line_pad[64 - sizeof(pm_lifo) - sizeof(int)];
} pm_heap;

extern pm_pool pm_no_pool;
extern pm_heap pm_main_heap;

/* The traced heap: while the tracer traces every call of a mem or object domain over
 * pymalloc in GIL mode without thread caches (alloc/trace.c, "Records in blocks"), each small
 * traced block comes from here. Up to PM_TRACED_MAX_IN_BLOCK bytes, the block is
 * PM_TRACE_RECORD_BYTES larger than asked, with the tracer's record in its first bytes and
 * the caller's pointer just after it; larger ones take the largest class, whose pools keep
 * their records beside the pool and hand out the block itself. Free's owner test fails for
 * its pools (the calling thread's heap is pm_main_heap), so every free of such a block
 * reaches pm_pymalloc_free_other_heap, which hands it to pm_trace_free_in_block. Protected
 * by the GIL, like the main heap. */
extern pm_heap pm_traced_heap;
#define PM_TRACE_RECORD_BYTES 16
#define PM_TRACED_MAX_REQUEST PM_SMALL_REQUEST_THRESHOLD
#define PM_TRACED_CLASS_BESIDE (PM_NUM_CLASSES - 1)
#define PM_TRACED_MAX_IN_BLOCK (PM_SMALL_REQUEST_THRESHOLD - 2 * PM_TRACE_RECORD_BYTES)
static_assert(PM_TRACE_RECORD_BYTES == PM_ALIGNMENT, "a record is one class");

static inline pm_heap *pm_pool_owner(const pm_pool *pool) {
    return (pm_heap *)pm_atomic_load_ptr_acquire(&pool->owner);
}

/* Whether the blocks of `pool`, a traced heap's pool, have the tracer's record in front. */
static inline bool pm_traced_pool_records_in_block(const pm_pool *pool) {
    return pool->size_class != PM_TRACED_CLASS_BESIDE;
}

/* Bytes the caller may use of a block of `pool`: the block, less the tracer's record in
 * front of a traced heap's blocks. */
static inline size_t pm_pool_usable_size(const pm_pool *pool) {
    size_t size = pm_class_block_size(pool->size_class);
    return pm_pool_owner(pool) == &pm_traced_heap && pm_traced_pool_records_in_block(pool)
               ? size - PM_TRACE_RECORD_BYTES
               : size;
}

/* The owner as its owner sees it: a plain load, for the slow paths of the thread that owns
 * the pool (or holds the lock that does). Nobody else writes the field meanwhile, so there is
 * no race, and the compiler keeps the freedom an atomic load (a compiler barrier) takes away. */
static inline pm_heap *pm_pool_owner_mine(const pm_pool *pool) {
    return pool->owner;
}

static inline void pm_pool_set_owner(pm_pool *pool, pm_heap *owner) {
    pm_atomic_store_ptr_release(&pool->owner, owner);
}

/* An arena's descriptor. The installed arena allocator is recorded per arena so that each
 * arena is given back to the allocator that made it, even if pm_set_arena_allocator() ran
 * in between. Descriptors are never freed (alloc/arena.c), so neither are pool headers. */
typedef struct pm_arena {
    uintptr_t address;       /* what the arena allocator returned; 0 when the slot is unused */
    pm_arena_allocator allocator;
    uintptr_t pools_start;   /* first PM_POOL_SIZE-aligned address in the arena: pool 0 */
    pm_pool *free_pools;     /* empty pools given back, linked through pool->next */
    uint32_t total_pools;    /* pools that fit (one fewer when the arena is unaligned) */
    uint32_t carved_pools;   /* pools handed out at least once: pools[0 .. carved) */
    uint32_t free_count;     /* pools on free_pools + pools never carved */
    uint32_t in_reserve;     /* wholly free and kept mapped (on the reserve list) */
    struct pm_arena *next;   /* bucket list / reserve list / unused-descriptor list */
    struct pm_arena *prev;   /* bucket list only */
    struct pm_arena *all_next; /* every descriptor ever made, for walks */
    pm_pool pools[PM_POOLS_PER_ARENA]; /* headers; pools[i] describes pools_start + i * size */
} pm_arena;

/* pymalloc's counters, CPython's names. Protected by the GIL (with thread caches, by the pool
 * lock), except raw_allocated_blocks, which is updated atomically. */
typedef struct pm_pymalloc_counters {
    size_t arenas_allocated_total;
    size_t arenas_reclaimed;
    size_t arenas_highwater;
    size_t arenas_current;
    size_t raw_allocated_blocks; /* live blocks pymalloc passed to the raw domain (atomic) */
    size_t map_leaf_nodes;       /* arena map leaves allocated (never freed) */
} pm_pymalloc_counters;

extern pm_pymalloc_counters pm_counters;

/* ---- the arena map: "is this pointer ours?" ------------------------------------------ */

/* Address space is cut into units of PM_POOL_SIZE, and the map has one word per unit: where
 * the header of our pool there is, or nothing. Pools are PM_POOL_SIZE-aligned even in an
 * arena that is not (it loses a pool instead), so a unit is wholly one pool of ours or wholly
 * not ours, and the lookup is exact for any pointer with no bound to compare.
 *
 * Each word holds the header's address minus the map's own address, so that 0, what a
 * fresh leaf holds, names the map's first member: `none_pool`, a header of zeros whose owner
 * (NULL) is no heap's. free's fast path therefore adds where it would otherwise test for
 * "not ours": a pointer that is not ours finds an owner that is not the calling thread's
 * heap, which sends it to the slow path anyway, and only there is none_pool told apart
 * (pm_map_is_none). Words are read and written atomically: a pool's header is ready before
 * its word is stored, and the word is cleared before the arena's memory goes back.
 *
 * Two levels: a root of leaves, each named by its offset from the map's `none` leaf, so that
 * a root of zeros (the map is static, in .bss) needs no initialisation and never sends a
 * lookup to NULL. The root covers 48-bit addresses; above them nothing is ours, which costs
 * the lookup one compare (masking the index instead would let such a pointer alias a lower
 * unit that may be ours).
 *
 * Against the map it replaced (one 32-byte entry per arena-sized chunk, with bounds for the
 * unaligned arenas a custom arena allocator may give): five instructions fewer on free's fast
 * path, and the header's address is one load instead of a load, a shift and an add. */
#define PM_ADDRESS_BITS 48
#define PM_MAP_KEY_BITS (PM_ADDRESS_BITS - PM_POOL_BITS)
#define PM_MAP_LEAF_BITS (PM_MAP_KEY_BITS - PM_MAP_KEY_BITS / 2)
#define PM_MAP_ROOT_BITS (PM_MAP_KEY_BITS - PM_MAP_LEAF_BITS)
#define PM_MAP_ROOT_LENGTH ((size_t)1 << PM_MAP_ROOT_BITS)
#define PM_MAP_LEAF_LENGTH ((size_t)1 << PM_MAP_LEAF_BITS)

typedef struct pm_map_leaf {
    uintptr_t pool_offset[PM_MAP_LEAF_LENGTH]; /* header address - map address; 0: none_pool */
} pm_map_leaf;

typedef struct pm_map {
    pm_pool none_pool; /* first: offset 0 names it; never written */
    pm_map_leaf none;  /* the leaf of every root entry not yet given one: all zeros */
    uintptr_t leaf_offset[PM_MAP_ROOT_LENGTH]; /* leaf address - &none; 0: none */
} pm_map;

extern pm_map pm_arena_map;

/* The header of the pool holding p, or map->none_pool when p is not in one of our pools.
 * Reads only the map, never the memory p points at. `map` is pm_arena_map, or a domain
 * route's stand-in that owns nothing (see pm_domain_route). */
static inline pm_pool *pm_map_lookup(const pm_map *map, const void *p) {
    uintptr_t address = (uintptr_t)p;
    uintptr_t root_index = address >> (PM_POOL_BITS + PM_MAP_LEAF_BITS);
    if (__builtin_expect(root_index >= PM_MAP_ROOT_LENGTH, 0)) return (pm_pool *)&map->none_pool;
    const pm_map_leaf *leaf = (const pm_map_leaf *)((uintptr_t)&map->none +
        pm_atomic_load_size_acquire(&map->leaf_offset[root_index]));
    uintptr_t unit = (address >> PM_POOL_BITS) & (PM_MAP_LEAF_LENGTH - 1);
    return (pm_pool *)((uintptr_t)map + pm_atomic_load_size_acquire(&leaf->pool_offset[unit]));
}

/* Is `pool`, found by pm_map_lookup, the map's "not ours"? Every real header describes
 * memory; none_pool's is 0. */
static inline bool pm_map_is_none(const pm_pool *pool) {
    return pool->memory == 0;
}

/* The header of the pool holding p, or NULL when p is not in one of our pools. */
static inline pm_pool *pm_map_pool(const pm_map *map, const void *p) {
    pm_pool *pool = pm_map_lookup(map, p);
    return pm_map_is_none(pool) ? NULL : pool;
}

/* The header of the pool holding p; NULL when p is not ours. */
static inline pm_pool *pm_pool_of(const void *p) {
    return pm_map_pool(&pm_arena_map, p);
}

static inline bool pm_pymalloc_owns(const void *p) {
    return pm_pool_of(p) != NULL;
}

/* ---- arenas (alloc/arena.c) ---------------------------------------------------------- *
 * Callers hold the GIL, or with thread caches the pool lock (alloc/thread_cache.c). */

/* An empty pool for a heap, from the busiest arena that has one; NULL when the arena
 * allocator fails (the heap is then unchanged). */
pm_pool *pm_arena_take_pool(void);
/* Faults in the pages of a pool taken from its arena for the first time, in one call
 * instead of a fault per page, when its arena came from the default arena allocator and
 * the kernel can (MADV_POPULATE_WRITE); otherwise does nothing. Call it without locks. */
void pm_arena_populate_pool(const pm_pool *pool);
/* Gives an empty pool back; may release its arena to the OS (with thread caches, maybe
 * only at the next pm_pool_unlock: see pm_arena_take_unmaps). */
void pm_arena_return_pool(pm_pool *pool);
/* Arenas of the default allocator released under the pool lock, to unmap once it is free:
 * pm_pool_unlock takes them (the lock held) and unmaps them (after unlocking). */
enum { PM_UNMAPS_PENDING_MAX = 16 };
typedef struct pm_arena_unmaps {
    size_t count;
    uintptr_t address[PM_UNMAPS_PENDING_MAX];
} pm_arena_unmaps;
void pm_arena_take_unmaps(pm_arena_unmaps *out);
void pm_arena_unmap(const pm_arena_unmaps *unmaps);

/* Calls fn for every arena in use (reserve included). */
void pm_arena_for_each(void (*fn)(const pm_arena *arena, void *arg), void *arg);
/* Whether `pool` is one of the first `count` headers of `arena` (pointer arithmetic only). */
bool pm_arena_has_header(const pm_arena *arena, const pm_pool *pool, uint32_t count);
/* The arena in use whose carved pools include the header `pool`, or NULL; a walk of every
 * descriptor, for checks that must not read a header before knowing it is one. */
const pm_arena *pm_arena_of_header(const pm_pool *pool);
/* Checks the arena lists, buckets and map; NULL when consistent. */
const char *pm_arena_check(char *buf, size_t size);
size_t pm_arena_reserve_count(void);
/* Memory held by arena descriptors (and so by pool headers), slab table included. */
size_t pm_arena_descriptor_bytes(void);
size_t pm_arena_reserve_limit(void);

/* ---- pymalloc (alloc/pymalloc.c) ----------------------------------------------------- */

/* The allocator record installed in the mem and object domains by default. */
extern const pm_allocator pm_pymalloc_allocator;
/* pymalloc with every new block taken from the raw domain, never from a pool (its free is
 * pymalloc's). The tracer's sampled calls over pymalloc use it, so that no pool block is
 * ever traced while sampling and free's fast path may skip the tracer (see the routes). */
extern const pm_allocator pm_pymalloc_unpooled_allocator;

/* Routes: how the mem and object entry points know, without comparing tables, that pymalloc
 * is what the domain has installed, and which heap serves the calling thread.
 *
 *   pm_thread_heaps[PM_DOMAIN_MEM/OBJ]  (per thread) the heap malloc pops from: the thread's
 *                                       heap while pymalloc is installed in the domain,
 *                                       pm_sampling_heap when the tracer has begun
 *                                       to sample over it, until the thread's next
 *                                       malloc draws its countdown at the session's
 *                                       rate and puts its own heap back (the fast path
 *                                       then counts down to each sample point),
 *                                       pm_traced_route_heap while it traces every call
 *                                       over it with records in blocks (malloc's slow
 *                                       path calls pm_trace_route_malloc),
 *                                       pm_bypass_heap while anything else is
 *   pm_thread_heaps[PM_ROUTE_PYMALLOC]  (per thread) the thread's own heap, whatever is
 *                                       installed: pymalloc's record and free's owner test
 *   pm_domain_routes[d].map             (global) the arena map while pymalloc is installed
 *                                       or the tracer samples or keeps records in blocks
 *                                       over it (no block of the main heap's pools is
 *                                       traced then), a stand-in that owns nothing
 *                                       otherwise
 *
 * The stand-ins never match: the bypass heap's lists all look full and the bypass map owns
 * nothing, so every call leaves the fast path and the slow path dispatches through the
 * table. The "is a hook installed?" test thus costs nothing: it is folded into loads the
 * fast paths make anyway. pm_set_allocator() keeps the routes of every thread in step with
 * the table (alloc/thread_cache.c walks the registered threads). A thread that has not
 * called yet starts on pm_unattached_heap, another all-full stand-in, and attaches in the
 * slow path. Other threads write a thread's mem/obj slots, so those are read with atomics;
 * the own-heap slot is written only by its thread. */
typedef struct pm_domain_route {
    const pm_map *map;
    int sampling; /* the tracer samples over pymalloc here: 0 or > 512 bytes go to its hook */
} pm_domain_route;

extern pm_domain_route pm_domain_routes[PM_DOMAIN_COUNT];
extern pm_heap pm_bypass_heap;
extern pm_heap pm_sampling_heap;
extern pm_heap pm_traced_route_heap;
extern pm_heap pm_unattached_heap;
extern pm_map pm_bypass_map;

/* `route` names the caller: PM_DOMAIN_MEM or PM_DOMAIN_OBJ for the public entry points, or
 * PM_ROUTE_PYMALLOC for pymalloc's own record (called through a table, e.g. by a hook).
 * The raw domain never reaches pymalloc, so its slot holds the thread's own heap. */
#define PM_ROUTE_PYMALLOC PM_DOMAIN_RAW

/* TLS access model: in an executable (non-PIC or PIE code) local-exec, one %fs-relative
 * instruction; in a shared library initial-exec, which adds a GOT load (and still works for
 * a library loaded at start-up, or dlopen'ed while glibc's static TLS surplus lasts). Bazel
 * builds the two kinds of objects separately, so each gets its own. */
#if defined(__PIE__) || !defined(__PIC__)
#define PM_TLS_MODEL "local-exec"
#else
#define PM_TLS_MODEL "initial-exec"
#endif

extern __thread pm_heap *pm_thread_heaps[PM_DOMAIN_COUNT]
    __attribute__((tls_model(PM_TLS_MODEL), visibility("hidden")));

/* The tracer's per-thread state (alloc/trace.c), here because malloc's fast path charges
 * the countdown. Sample points form a Poisson process over the bytes a thread allocates:
 * the countdown is the bytes left to the next one. While no sampling session runs it is
 * parked at PM_COUNTDOWN_PARKED, which 512-byte charges never exhaust. */
struct pm_trace_gate {
    int64_t countdown; /* bytes to the next sample point; <= 0: malloc's slow path decides */
    int depth;         /* > 0 inside a tracer hook: nested calls are neither traced nor
                        * sampled (pymalloc's fast path still charges them, harmlessly:
                        * a point that falls in such a call is lost, see alloc/trace.c) */
};
extern __thread struct pm_trace_gate pm_trace_gate
    __attribute__((tls_model(PM_TLS_MODEL), visibility("hidden")));
#define PM_COUNTDOWN_PARKED INT64_MAX

static inline pm_heap *pm_route_heap(int route) {
    return (pm_heap *)pm_atomic_load_ptr_relaxed(&pm_thread_heaps[route]);
}

/* The calling thread's own heap (pm_unattached_heap until its first call). */
static inline pm_heap *pm_own_heap(void) {
    return pm_thread_heaps[PM_ROUTE_PYMALLOC];
}

/* The calling thread's route for `route` names pm_sampling_heap: points it at the thread's
 * own heap unless a route update replaced the stand-in meanwhile; returns the own heap. */
pm_heap *pm_thread_route_arm(int route);

/* Called by pm_set_allocator() after it installs `installed` in a mem or object domain. */
void pm_domain_route_update(pm_domain domain, const pm_allocator *installed);
/* Recomputes the mem and object routes from what is installed: the tracer calls it when a
 * session's mode changes what pm_trace_samples_over_pymalloc answers. */
void pm_domain_routes_refresh(void);

/* nbytes first: it arrives in the first argument register and stays there for the tail
 * call, so the fast path moves nothing. */
void *pm_pymalloc_malloc_slow(size_t nbytes, pm_heap *heap, int route);
void pm_pymalloc_free_slow(pm_pool *pool);
void pm_pymalloc_free_unowned(void *p, int route);
void pm_pymalloc_free_other_heap(pm_pool *pool, void *p, int route);

/* Remote frees are handed over in chains of up to this many blocks: one CAS on the owner's
 * list per chain instead of per block (measured on the producer/consumer benchmark). */
#define PM_OUTBOX_BLOCKS 64u

/* Hands the outbox of `heap` (this thread's own) to the heap it is for. */
void pm_outbox_flush(pm_heap *heap);

/* Pool helpers shared with alloc/thread_cache.c. */
void pm_pool_prepare(pm_pool *pool, unsigned size_class);
void pm_pool_populate_if_growing(const pm_heap *heap, const pm_pool *pool, unsigned size_class);
bool pm_pool_carve(pm_pool *pool); /* free list empty: carve the next page's blocks */
void *pm_pool_pop_first(pm_pool *pool);
/* A pool whose free list is empty (malloc took its last block and left it at the head of
 * its list: exhaustion is noticed by the next malloc, not by this one): carve more blocks
 * if it has any left, else mark it full. Returns true when it is full; false when it has a
 * free block (it may have had one all along). The caller owns the pool. */
bool pm_pool_settle(pm_pool *pool);
/* The head of `heap`'s list for the class, after settling it: a full head is unlinked (and
 * the next pool, which has free blocks, returned). &pm_no_pool when the list is empty. */
pm_pool *pm_heap_usable_head(pm_heap *heap, unsigned size_class);
void pm_heap_push_front(pm_heap *heap, pm_pool *pool);
void pm_heap_push_back(pm_heap *heap, pm_pool *pool);
void pm_heap_unlink(pm_heap *heap, pm_pool *pool);

void *pm_pymalloc_calloc(void *ctx, size_t nelem, size_t elsize);
void *pm_pymalloc_realloc(void *ctx, void *p, size_t nbytes);

/* Statistics hook: prints the stats when PYTHONMALLOCSTATS asked for it (alloc/stats.c). */
extern int pm_stats_on_new_arena;
void pm_stats_print_on_new_arena(void);
/* pm_print_stats() for the two callers that run under the GIL but cannot show it to the
 * thread-safety analysis: the new-arena report above (deep inside malloc's slow path) and the
 * report at exit. */
void pm_stats_print_unchecked(FILE *out);

/* Takes `block`, the first free block of `pool`, off its free list.
 *
 * The new first block is prefetched for writing. It is usually cold (freed into this pool
 * long ago), and the next malloc of the class, typically dozens of calls later, reads its
 * link and its caller writes it: without the prefetch that read was a demand miss on every
 * churn step, which tcmalloc avoids by handing out its most recently freed block. One
 * instruction on the pair (39); churn 34.0 -> 31.0 ns a step (medians of 21 interleaved
 * runs; tcmalloc 33.6). */
static inline void *pm_pool_take(pm_pool *pool, pm_block *block) {
    pm_block *next = block->next;
    pool->free = next;
    __builtin_prefetch(next, 1);
    pool->used_state++;
    return block;
}

/* Charges a small malloc's bytes to the thread's sampling countdown; false when it ran out
 * (or was never drawn). On x86-64 one `subq reg, %fs:mem` whose flags feed the branch; gcc
 * would otherwise load, subtract, store and test. TSan sees the plain C form. */
static inline bool pm_sample_countdown_runs_on(size_t nbytes) {
#if defined(__x86_64__) && defined(__GCC_ASM_FLAG_OUTPUTS__) && !PM_TSAN
    bool positive;
    __asm__("subq %2, %0"
            : "+m"(pm_trace_gate.countdown), "=@ccg"(positive)
            : "r"((int64_t)nbytes));
    return positive;
#else
    return (pm_trace_gate.countdown -= (int64_t)nbytes) > 0;
#endif
}

/* malloc's fast path: charge the sampling countdown, pop the first free block of the
 * class's first used pool. Besides a sample point, the only test that leaves it is "no
 * free block", which also covers an exhausted head pool (taking the last block does not
 * look at what is left: the next malloc finds out, and carves or unlinks, see
 * pm_heap_usable_head), an empty list (&pm_no_pool), the stand-in heaps (bypass, sampling,
 * unattached), and sizes pymalloc does not serve. */
static inline void *pm_pymalloc_malloc_inline(pm_heap *heap, size_t nbytes, int route) {
    if (__builtin_expect(nbytes - 1 < PM_SMALL_REQUEST_THRESHOLD, 1) &&
        __builtin_expect(pm_sample_countdown_runs_on(nbytes), 1)) {
        pm_pool *pool = heap->used[pm_size_class(nbytes)];
        pm_block *block = pool->free;
        if (__builtin_expect(block != NULL, 1)) return pm_pool_take(pool, block);
    }
    return pm_pymalloc_malloc_slow(nbytes, heap, route);
}

/* Decrements used_state; true when the result is <= 0 as a signed number (the pool was full
 * or is now empty). On x86-64 one `subl $1, mem` whose flags feed the branch: gcc otherwise
 * loads, subtracts, stores and tests (two instructions more on every free). Under TSan the
 * plain C form is kept, so that the sanitizer still sees every access to the count. */
static inline bool pm_pool_release_one(pm_pool *pool) {
#if defined(__x86_64__) && defined(__GCC_ASM_FLAG_OUTPUTS__) && !PM_TSAN
    bool now_le_zero;
    __asm__("subl $1, %0" : "+m"(pool->used_state), "=@ccle"(now_le_zero));
    return now_le_zero;
#else
    return (int32_t)--pool->used_state <= 0;
#endif
}

/* Pushes a block onto a pool this thread owns (or, for the shared heap, holds the pool lock
 * for); the slow path handles "was full" and "is now empty". */
static inline void pm_pool_free_block(pm_pool *pool, pm_block *block) {
    block->next = pool->free;
    pool->free = block;
    if (__builtin_expect(pm_pool_release_one(pool), 0)) pm_pymalloc_free_slow(pool);
}

/* free's fast path: the map says whether p is ours; a block of a pool this thread owns goes
 * on the pool's free list; one of another heap's pool goes to that heap's remote list. */
static inline void pm_pymalloc_free_inline(const pm_map *map, void *p, int route) {
    pm_pool *pool = pm_map_lookup(map, p);
    /* Not ours (none_pool, whose owner is NULL) fails this test too. */
    if (__builtin_expect(pm_pool_owner(pool) != pm_own_heap(), 0)) {
        pm_pymalloc_free_other_heap(pool, p, route);
        return;
    }
    pm_pool_free_block(pool, (pm_block *)p);
}

/* ---- per-thread caches (alloc/thread_cache.c) ---------------------------------------- */

/* Read-only after pm_init() (which may run only before the first mem/object call). */
typedef struct pm_threading_state {
    bool caches;        /* each thread has a heap; the pool and registry locks are used */
    bool free_threaded; /* mem/object need no GIL; the debug hooks do not ask for it */
    size_t pools_per_class, bytes_per_thread, bytes_total;
} pm_threading_state;

extern pm_threading_state pm_threading;
extern pm_heap pm_shared_heap;
/* Every thread heap ever made, linked through registry_next (read with acquire). */
extern pm_heap *pm_thread_heaps_registry;

/* Gives the calling thread its heap and routes. Returns the heap (pm_main_heap in GIL mode
 * without caches), or NULL when no memory is left for a heap (the thread stays unattached
 * and its calls fail cleanly). */
pm_heap *pm_thread_attach(void);

/* A thread heap's malloc found class `size_class` empty: fill it from the heap's remote
 * frees, its stash, the shared heap or the arenas. Returns a block or NULL. */
void *pm_thread_cache_refill(pm_heap *heap, unsigned size_class);
/* A pool of a thread heap (or of the shared heap, pool lock held) became empty and is off
 * every list: into the stash, or back to its arena. */
void pm_thread_cache_pool_empty(pm_heap *heap, pm_pool *pool);
/* A free into a pool no attached thread owns (the shared heap's, or a detached heap's full
 * pool), by any thread: onto `owner`'s remote list, applied at once if the pool lock is
 * free. */
void pm_thread_cache_free_to_shared(pm_heap *owner, void *p);

/* Visits every heap that can own pools: main, shared and each thread heap. Quiescence is
 * the caller's business (heap check, statistics). */
void pm_for_each_heap(void (*fn)(pm_heap *heap, void *arg), void *arg);

/* The pool lock: the arenas and the shared heap. A no-op in GIL mode without caches, where
 * the GIL protects them. */
void pm_pool_lock(void);
void pm_pool_unlock(void);

/* Locks for walks of the whole heap (heap check, statistics): the registry, then the pool
 * lock. No-ops in GIL mode without caches. */
void pm_heap_walk_lock(void);
void pm_heap_walk_unlock(void);

/* Atomic raw-block count (pymalloc's blocks passed to the raw domain). */
void pm_raw_blocks_add(void);
void pm_raw_blocks_sub(void);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif /* PM_ALLOC_INTERNAL_PYMALLOC_H */
