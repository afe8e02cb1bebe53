/*
 * arena.c — where pools come from: arenas, their order, their reserve, and the arena map.
 *
 * An arena is PM_ARENA_SIZE bytes from the arena allocator (by default mmap, 16 arenas a
 * mapping, each unmapped on its own: see mmap_arena_alloc; with thread caches, after the
 * pool lock is released: see Releasing), cut into pools on demand:
 * pools [0, carved) have been handed out at least once, the rest have never been touched.
 * Empty pools come back on the arena's free_pools list.
 *
 * Order: "take from the busiest arena". Arenas that are partly used sit in buckets by their
 * number of free pools, with a bitmap of non-empty buckets:
 *
 *   bucket[1] -> A -> B      bitmap ...0110      take: lowest set bit -> bucket[1] -> A
 *   bucket[2] -> C           return a pool to A: A moves from bucket[1] to bucket[2]
 *
 * so every pool taken or returned costs O(1) list operations and one find-first-set over at
 * most four words, never a scan of arenas. Drawing from the fullest arena lets the emptiest
 * ones drain and go back to the OS. (CPython keeps one sorted list plus an index of the last
 * arena per free count; buckets give the same order with less to explain.) Full arenas sit
 * in no bucket; wholly free arenas either go back to the OS or into the reserve.
 *
 * The reserve. Releasing every arena the moment it empties makes a program that frees
 * everything and allocates again pay for munmap, mmap and a page fault per page each round;
 * keeping every arena never returns memory. We keep wholly free arenas mapped up to a byte
 * limit (default 768 KiB = 3 arenas) and release the rest at once; the reserve is used only
 * when no partly used arena has a free pool. Measured (tools/bench, batch_rounds: 1M blocks
 * allocated then freed, five rounds): the cost of later rounds is page faults on released
 * memory, so a reserve helps only once it holds the whole working set (reserve=inf: 3.6x
 * faster rounds, 256 MiB kept); 0.5, 1 or 4 MiB all cost the same as none there. What a small
 * reserve does buy is the case CPython fixed in bpo-37257 by keeping one arena: a program
 * whose usage crosses an arena boundary back and forth. Hence a small default, settable.
 *
 * Faulting in. On this machine (a VM) a page fault costs about 2.2 us and releasing a
 * page about 0.35-0.45 us, so in the batch benchmark (1M blocks allocated, then freed in
 * random order, one round) faults take over half the time and the release of what was
 * freed adds ~30 ns a block: 218 ns a block against mimalloc's 199, which keeps the memory
 * (reserve=inf: 195). MADV_POPULATE_WRITE faults a range in with one call at about 1.6 us
 * a page, so pm_arena_populate_pool does that for a fresh pool of a class that has already
 * filled one (pymalloc.c, pm_pool_populate_if_growing): 188 ns a block, medians of 9
 * interleaved runs, releasing as before. The price is at most one populated pool per class
 * and heap beyond what is used (1M live 32-byte blocks: 31,348 KiB against 31,336; 8
 * threads holding 10,000 blocks each: 24.4 MiB against 21.3). A class's first pool is
 * still touched page by page, and arenas from other arena allocators never are.
 *
 * The arena map answers "is p in one of our pools, and which pool header describes it?" for
 * any pointer without touching p's memory (alloc/internal/pymalloc.h has the encoding). It
 * is a two-level radix tree over the 48-bit address space: a static root of leaf offsets
 * (virtual memory only until used; offset 0 names a built-in empty leaf) and leaves of one
 * word per pool-sized unit, mmap'd on demand and never freed. Writers hold the GIL (with
 * thread caches, the pool lock); readers may run anywhere, so leaf offsets and entries are
 * published with atomics, and an arena's entries are cleared before its memory is given
 * back, so a pointer the OS later hands to someone else is never taken for ours.
 *
 * Descriptors live apart from arenas, in mmap'd slabs that are never freed, so a pool's
 * `arena` pointer and a reader's view of a descriptor stay valid after the arena is gone.
 * A slab's descriptors are handed out one by one, so its pages become resident only as
 * descriptors are used (about 1.1 KiB per arena).
 * Each descriptor holds its arena's pool headers (alloc/internal/pymalloc.h says why they
 * are not in the pools); the map word of a pool leads from a block to its header.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc/internal/pymalloc.h"

pm_pymalloc_counters pm_counters;
pm_map pm_arena_map;

/* ---- the default arena allocator: mmap / munmap -------------------------------------- */

static void *map_anonymous(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* An arena aligned to its own size loses no pool to alignment (with 32 KiB pools in a
 * 256 KiB arena an unaligned one loses 1 pool in 8). Linux places each new mapping just
 * below the previous one, so once one mapping is aligned the next usually is too and the
 * plain mmap succeeds; otherwise map an arena more and trim both ends. */
static char *map_aligned(size_t size) {
    char *p = map_anonymous(size);
    if (p == NULL || ((uintptr_t)p & (PM_ARENA_SIZE - 1)) == 0) return p;
    munmap(p, size);
    char *wide = map_anonymous(size + PM_ARENA_SIZE);
    if (wide == NULL) return NULL;
    uintptr_t mask = PM_ARENA_SIZE - 1;
    char *aligned = (char *)(((uintptr_t)wide + mask) & ~mask);
    if (aligned > wide) munmap(wide, (size_t)(aligned - wide));
    char *end = wide + size + PM_ARENA_SIZE;
    if (end > aligned + size) munmap(aligned + size, (size_t)(end - (aligned + size)));
    return aligned;
}

/* Arenas are cut from chunks of ARENAS_PER_CHUNK arenas, one mmap each, so that
 * a growing heap makes one mmap per 4 MiB, not one (or four, when trimming) per arena:
 * each is a write lock on the process's memory map, which stalls the page faults of every
 * other thread, and it is made under the pool lock (free-threaded mode), which other
 * threads then wait for. What is left of a chunk is address space only, no resident
 * memory: pages are faulted in as pools are carved. An arena is unmapped on its own when it
 * empties, as before. The chunk is protected by whatever serialises new_arena: the
 * pool lock with thread caches, else the GIL. */
enum { ARENAS_PER_CHUNK = 16 };
static char *chunk_next, *chunk_end; /* the current chunk's arenas not handed out */

static void *mmap_arena_alloc(void *ctx, size_t size) {
    (void)ctx;
    if (size != PM_ARENA_SIZE) return map_aligned(size);
    if (chunk_next == chunk_end) {
        char *fresh = map_aligned(ARENAS_PER_CHUNK * (size_t)PM_ARENA_SIZE);
        /* No room for a chunk: a lone arena may still fit. */
        if (fresh == NULL) return map_aligned(size);
        chunk_next = fresh;
        chunk_end = fresh + ARENAS_PER_CHUNK * (size_t)PM_ARENA_SIZE;
    }
    char *arena = chunk_next;
    chunk_next += PM_ARENA_SIZE;
    return arena;
}

static void mmap_arena_free(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    munmap(ptr, size);
}

static pm_arena_allocator arena_allocator = {
    .ctx = NULL,
    .alloc = mmap_arena_alloc,
    .free = mmap_arena_free,
};

int pm_get_arena_allocator(pm_arena_allocator *out) {
    if (out == NULL) {
        errno = EINVAL;
        return -1;
    }
    pm_pool_lock();
    *out = arena_allocator;
    pm_pool_unlock();
    return 0;
}

int pm_set_arena_allocator(const pm_arena_allocator *in) {
    if (in == NULL || in->alloc == NULL || in->free == NULL) {
        errno = EINVAL;
        return -1;
    }
    pm_pool_lock();
    arena_allocator = *in;
    pm_pool_unlock();
    return 0;
}

size_t pm_arena_size(void) {
    return PM_ARENA_SIZE;
}

/* ---- descriptors --------------------------------------------------------------------- */

enum { DESCRIPTOR_SLAB_BYTES = 64 * 1024 };

static pm_arena *unused_descriptors;  /* given back, linked through next */
static pm_arena *all_descriptors;     /* linked through all_next; never shrinks */
/* The newest slab's descriptors that were never handed out: [fresh_next, fresh_end). They
 * are left untouched until needed, so a slab costs resident memory only for the
 * descriptors in use (linking a whole slab at once faulted in all 64 KiB of it). */
static pm_arena *fresh_next, *fresh_end;

enum { DESCRIPTORS_PER_SLAB = DESCRIPTOR_SLAB_BYTES / sizeof(pm_arena) };
static_assert(DESCRIPTORS_PER_SLAB >= 1, "a slab holds a descriptor");

/* Every slab, so that a pointer can be shown to be a pool header without reading it
 * (pm_arena_of_header). The table grows by doubling in mmap'd memory; slabs are few (one
 * per ~14 MiB of arenas in the default geometry). Like the descriptors, it is written and
 * read under the pool lock (the GIL in GIL mode). */
static pm_arena **slabs;
static size_t slab_count, slab_capacity;

static bool slab_register(pm_arena *slab) {
    if (slab_count == slab_capacity) {
        size_t capacity = slab_capacity == 0 ? PM_OS_PAGE_SIZE / sizeof *slabs : 2 * slab_capacity;
        pm_arena **grown = map_anonymous(capacity * sizeof *slabs);
        if (grown == NULL) return false;
        if (slab_count != 0) {
            memcpy(grown, slabs, slab_count * sizeof *slabs);
            munmap(slabs, slab_capacity * sizeof *slabs);
        }
        slabs = grown;
        slab_capacity = capacity;
    }
    slabs[slab_count++] = slab;
    return true;
}

static pm_arena *descriptor_get(void) {
    pm_arena *arena = unused_descriptors;
    if (arena != NULL) {
        unused_descriptors = arena->next;
        return arena;
    }
    if (fresh_next == fresh_end) {
        pm_arena *slab = map_anonymous(DESCRIPTOR_SLAB_BYTES);
        if (slab == NULL) return NULL;
        if (!slab_register(slab)) {
            munmap(slab, DESCRIPTOR_SLAB_BYTES);
            return NULL;
        }
        fresh_next = slab;
        fresh_end = slab + DESCRIPTORS_PER_SLAB;
    }
    arena = fresh_next++;
    arena->all_next = all_descriptors;
    all_descriptors = arena;
    return arena;
}

static void descriptor_put(pm_arena *arena) {
    arena->address = 0;
    arena->next = unused_descriptors;
    unused_descriptors = arena;
}

/* ---- the arena map ------------------------------------------------------------------- */

/* The map word of the pool unit at `address`; NULL when there is no leaf for it and
 * `create` is false, or one cannot be mapped, or the address lies above the 48-bit space. */
static uintptr_t *map_word(uintptr_t address, bool create) {
    uintptr_t key = address >> PM_POOL_BITS;
    uintptr_t root_index = key >> PM_MAP_LEAF_BITS;
    if (root_index >= PM_MAP_ROOT_LENGTH) return NULL;
    uintptr_t *offset = &pm_arena_map.leaf_offset[root_index];
    uintptr_t none = (uintptr_t)&pm_arena_map.none;
    pm_map_leaf *leaf = (pm_map_leaf *)(none + pm_atomic_load_size_acquire(offset));
    if (leaf == &pm_arena_map.none) {
        if (!create) return NULL;
        leaf = map_anonymous(sizeof(pm_map_leaf)); /* zero-filled: owns nothing */
        if (leaf == NULL) return NULL;
        pm_atomic_store_size_release(offset, (uintptr_t)leaf - none);
        pm_counters.map_leaf_nodes++;
    }
    return &leaf->pool_offset[key & (PM_MAP_LEAF_LENGTH - 1)];
}

/* Marks the arena's pools ours (mark: each unit's word names its header, stored with
 * release after the header was reset) or no longer ours (!mark). Returns false only when
 * mark needs a leaf and none can be mapped (or a pool lies above the 48-bit address
 * space); nothing is left marked then. */
static bool map_update(const pm_arena *arena, bool mark) {
    for (uint32_t i = 0; i < arena->total_pools; i++) {
        uintptr_t *word = map_word(arena->pools_start + (uintptr_t)i * PM_POOL_SIZE, mark);
        if (word == NULL) {
            if (!mark) continue;
            for (uint32_t j = 0; j < i; j++) {
                pm_atomic_store_size_release(
                    map_word(arena->pools_start + (uintptr_t)j * PM_POOL_SIZE, false), 0);
            }
            return false;
        }
        uintptr_t value = mark ? (uintptr_t)&arena->pools[i] - (uintptr_t)&pm_arena_map : 0;
        pm_atomic_store_size_release(word, value);
    }
    return true;
}

static uintptr_t arena_pools_end(const pm_arena *arena) {
    return arena->pools_start + (uintptr_t)arena->total_pools * PM_POOL_SIZE;
}

/* ---- buckets and reserve ------------------------------------------------------------- */

#define BITMAP_WORDS ((PM_POOLS_PER_ARENA + 64) / 64)

static pm_arena *buckets[PM_POOLS_PER_ARENA + 1];
static uint64_t bucket_bitmap[BITMAP_WORDS];

static pm_arena *reserve;        /* wholly free arenas kept mapped, linked through next */
static size_t reserve_count;
/* Three 256 KiB arenas (one in the 1 MiB geometry): enough to absorb a program oscillating
 * around an arena boundary, and the swing in wholly free arenas of a producer/consumer
 * queue (bench --kernel=prodcons in GIL mode: 2,657 munmaps in 10M blocks with two arenas,
 * 5 with three, at 8 pools an arena), small enough that freeing everything returns memory
 * to within 1 MiB of where it started (rss32: 0.83 MiB). Larger reserves buy nothing until
 * they approach the working set (README, "Arena reserve"). */
#define DEFAULT_RESERVE_BYTES \
    (PM_ARENA_SIZE > ((size_t)768 << 10) ? PM_ARENA_SIZE : ((size_t)768 << 10))
static size_t reserve_limit_bytes = DEFAULT_RESERVE_BYTES;

static void bucket_insert(pm_arena *arena, uint32_t k) {
    arena->prev = NULL;
    arena->next = buckets[k];
    if (buckets[k] != NULL) buckets[k]->prev = arena;
    buckets[k] = arena;
    bucket_bitmap[k / 64] |= (uint64_t)1 << (k % 64);
}

static void bucket_remove(pm_arena *arena, uint32_t k) {
    if (arena->prev != NULL) arena->prev->next = arena->next;
    else buckets[k] = arena->next;
    if (arena->next != NULL) arena->next->prev = arena->prev;
    if (buckets[k] == NULL) bucket_bitmap[k / 64] &= ~((uint64_t)1 << (k % 64));
}

static bool in_a_bucket(const pm_arena *arena, uint32_t free_count) {
    return free_count > 0 && free_count < arena->total_pools;
}

static void set_free_count(pm_arena *arena, uint32_t free_count) {
    if (in_a_bucket(arena, arena->free_count)) bucket_remove(arena, arena->free_count);
    arena->free_count = free_count;
    if (in_a_bucket(arena, free_count)) bucket_insert(arena, free_count);
}

static pm_arena *busiest_arena_with_room(void) {
    for (size_t w = 0; w < BITMAP_WORDS; w++) {
        if (bucket_bitmap[w] != 0) return buckets[w * 64 + (size_t)__builtin_ctzll(bucket_bitmap[w])];
    }
    return NULL;
}

/* ---- arenas in and out --------------------------------------------------------------- */

static pm_arena *new_arena(void) {
    if (pm_stats_on_new_arena) pm_stats_print_on_new_arena();
    pm_arena *arena = descriptor_get();
    if (arena == NULL) return NULL;
    pm_arena_allocator allocator = arena_allocator;
    void *memory = allocator.alloc(allocator.ctx, PM_ARENA_SIZE);
    if (memory == NULL) {
        descriptor_put(arena);
        return NULL;
    }
    uintptr_t address = (uintptr_t)memory;
    uintptr_t first = (address + PM_POOL_MASK) & ~(uintptr_t)PM_POOL_MASK;
    uint32_t total = (uint32_t)((address + PM_ARENA_SIZE - first) / PM_POOL_SIZE);
    /* A reused descriptor still holds the headers of the arena it described before: none
     * of them may claim a block of this one, and all are ready before the map says that
     * a block is ours. */
    for (uint32_t i = 0; i < total; i++) {
        pm_pool *pool = &arena->pools[i];
        pool->free = NULL;
        pool->used_state = 0;
        pool->carve_offset = 0;
        pool->size_class = PM_NO_CLASS;
        pm_pool_set_owner(pool, NULL);
        pool->next = pool->prev = NULL;
        pool->arena = arena;
        pool->memory = first + (uintptr_t)i * PM_POOL_SIZE;
    }
    arena->pools_start = first;
    arena->total_pools = total;
    if (!map_update(arena, true)) {
        allocator.free(allocator.ctx, memory, PM_ARENA_SIZE);
        descriptor_put(arena);
        return NULL;
    }
    arena->address = address;
    arena->allocator = allocator;
    arena->free_pools = NULL;
    arena->carved_pools = 0;
    arena->free_count = total;
    arena->in_reserve = 0;
    arena->next = arena->prev = NULL;
    pm_counters.arenas_allocated_total++;
    pm_counters.arenas_current++;
    if (pm_counters.arenas_current > pm_counters.arenas_highwater) {
        pm_counters.arenas_highwater = pm_counters.arenas_current;
    }
    return arena;
}

/* Releasing. With thread caches, arenas are released under the pool lock, and an munmap
 * there took 32-53 us (mt_churn's workers emptying their pools at the end), a wait for any
 * thread that needed a pool meanwhile. So an arena of the default allocator is only taken
 * off the books under the lock: its address waits here and pm_pool_unlock unmaps it after
 * unlocking, before it returns, so the caller still finds the memory gone. munmap needs no
 * lock of ours; another arena allocator is called under the lock, as CPython calls its
 * under the GIL. Nothing else may use a pending range: its map entries are cleared and no
 * descriptor names it. Should more than PM_UNMAPS_PENDING_MAX wait at once, the rest are
 * unmapped at once, under the lock. */
static uintptr_t unmaps_pending[PM_UNMAPS_PENDING_MAX];
static size_t unmaps_pending_count;

static bool may_unmap_later(const pm_arena *arena) {
    return pm_threading.caches && arena->allocator.alloc == mmap_arena_alloc &&
           unmaps_pending_count < PM_UNMAPS_PENDING_MAX;
}

void pm_arena_take_unmaps(pm_arena_unmaps *out) {
    out->count = unmaps_pending_count;
    memcpy(out->address, unmaps_pending, unmaps_pending_count * sizeof *unmaps_pending);
    unmaps_pending_count = 0;
}

void pm_arena_unmap(const pm_arena_unmaps *unmaps) {
    for (size_t i = 0; i < unmaps->count; i++) munmap((void *)unmaps->address[i], PM_ARENA_SIZE);
}

static void release_arena(pm_arena *arena) {
    /* Unmark first: once the memory is gone the OS may give the range to anyone. */
    map_update(arena, false);
    if (may_unmap_later(arena)) {
        unmaps_pending[unmaps_pending_count++] = arena->address;
    } else {
        arena->allocator.free(arena->allocator.ctx, (void *)arena->address, PM_ARENA_SIZE);
    }
    pm_counters.arenas_reclaimed++;
    pm_counters.arenas_current--;
    descriptor_put(arena);
}

static void reserve_push(pm_arena *arena) {
    arena->in_reserve = 1;
    arena->next = reserve;
    reserve = arena;
    reserve_count++;
}

static pm_arena *reserve_pop(void) {
    pm_arena *arena = reserve;
    if (arena == NULL) return NULL;
    reserve = arena->next;
    reserve_count--;
    arena->in_reserve = 0;
    return arena;
}

static void trim_reserve(void) {
    while (reserve_count * PM_ARENA_SIZE > reserve_limit_bytes) release_arena(reserve_pop());
}

void pm_set_arena_reserve(size_t bytes) {
    pm_pool_lock();
    reserve_limit_bytes = bytes;
    trim_reserve();
    pm_pool_unlock();
}

size_t pm_get_arena_reserve(void) {
    pm_pool_lock();
    size_t limit = pm_arena_reserve_limit();
    pm_pool_unlock();
    return limit;
}

size_t pm_arena_descriptor_bytes(void) {
    return slab_count * DESCRIPTOR_SLAB_BYTES + slab_capacity * sizeof *slabs;
}

size_t pm_arena_reserve_count(void) {
    return reserve_count;
}

size_t pm_arena_reserve_limit(void) {
    return reserve_limit_bytes;
}

/* ---- pools in and out ---------------------------------------------------------------- */

pm_pool *pm_arena_take_pool(void) {
    pm_arena *arena = busiest_arena_with_room();
    if (arena == NULL) arena = reserve_pop();
    if (arena == NULL) arena = new_arena();
    if (arena == NULL) return NULL;

    pm_pool *pool = arena->free_pools;
    if (pool != NULL) {
        arena->free_pools = pool->next;
    } else {
        /* Never carved: its header is ready (new_arena); its memory stays untouched. */
        pool = &arena->pools[arena->carved_pools++];
    }
    pool->next = pool->prev = NULL;
    set_free_count(arena, arena->free_count - 1);
    return pool;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

static int populate_unsupported; /* the kernel refused MADV_POPULATE_WRITE once */

void pm_arena_populate_pool(const pm_pool *pool) {
    if (pool->arena->allocator.alloc != mmap_arena_alloc ||
        pm_atomic_load_int_relaxed(&populate_unsupported)) {
        return;
    }
    /* A hint: if it fails, the pages fault in one by one as blocks are carved. The malloc
     * it runs in succeeds either way, so the caller's errno is left as it was. */
    int saved_errno = errno;
    if (madvise((void *)pool->memory, PM_POOL_SIZE, MADV_POPULATE_WRITE) != 0 &&
        errno == EINVAL) {
        pm_atomic_store_int_relaxed(&populate_unsupported, 1);
    }
    errno = saved_errno;
}

void pm_arena_return_pool(pm_pool *pool) {
    pm_arena *arena = pool->arena;
    pm_pool_set_owner(pool, NULL); /* in the arena: nobody's */
    pool->next = arena->free_pools;
    arena->free_pools = pool;
    set_free_count(arena, arena->free_count + 1);
    if (arena->free_count == arena->total_pools) {
        reserve_push(arena);
        trim_reserve();
    }
}

/* ---- walks and checks ---------------------------------------------------------------- */

void pm_arena_for_each(void (*fn)(const pm_arena *arena, void *arg), void *arg) {
    for (pm_arena *a = all_descriptors; a != NULL; a = a->all_next) {
        if (a->address != 0) fn(a, arg);
    }
}

bool pm_arena_has_header(const pm_arena *arena, const pm_pool *pool, uint32_t count) {
    uintptr_t at = (uintptr_t)pool, first = (uintptr_t)arena->pools;
    return at >= first && at < first + (uintptr_t)count * sizeof(pm_pool) &&
           (at - first) % sizeof(pm_pool) == 0;
}

const pm_arena *pm_arena_of_header(const pm_pool *pool) {
    uintptr_t at = (uintptr_t)pool;
    for (size_t i = 0; i < slab_count; i++) {
        uintptr_t first = (uintptr_t)slabs[i];
        if (at < first || at >= first + DESCRIPTORS_PER_SLAB * sizeof(pm_arena)) continue;
        const pm_arena *a = &slabs[i][(at - first) / sizeof(pm_arena)];
        return a->address != 0 && pm_arena_has_header(a, pool, a->carved_pools) ? a : NULL;
    }
    return NULL;
}

#define FAIL(...) (snprintf(buf, size, __VA_ARGS__), buf)

static const char *check_one_arena(const pm_arena *a, char *buf, size_t size) {
    if (a->carved_pools > a->total_pools || a->free_count > a->total_pools) {
        return FAIL("arena %p: %u pools carved, %u free, of %u", (void *)a->address,
                    a->carved_pools, a->free_count, a->total_pools);
    }
    uint32_t listed = 0;
    for (const pm_pool *p = a->free_pools; p != NULL; p = p->next) {
        if (!pm_arena_has_header(a, p, a->carved_pools)) {
            return FAIL("arena %p: free pool %p is not one of its carved pools",
                        (void *)a->address, (const void *)p);
        }
        if (p->used_state != 0 || p->arena != a) {
            return FAIL("arena %p: free pool %p has used state %#x", (void *)a->address,
                        (const void *)p, p->used_state);
        }
        if (++listed > a->carved_pools) {
            return FAIL("arena %p: free-pool list longer than the pools carved (cycle?)",
                        (void *)a->address);
        }
    }
    if (a->free_count != listed + (a->total_pools - a->carved_pools)) {
        return FAIL("arena %p: free count %u but %u listed + %u never carved", (void *)a->address,
                    a->free_count, listed, a->total_pools - a->carved_pools);
    }
    uintptr_t lo = a->pools_start, hi = arena_pools_end(a);
    if (pm_pool_of((void *)lo) != &a->pools[0] ||
        pm_pool_of((void *)(hi - 1)) != &a->pools[a->total_pools - 1]) {
        return FAIL("arena %p: the arena map does not lead to its pools [%p, %p)",
                    (void *)a->address, (void *)lo, (void *)hi);
    }
    return NULL;
}

const char *pm_arena_check(char *buf, size_t size) {
    size_t in_use = 0, bucketed_expected = 0, reserve_expected = 0;
    for (const pm_arena *a = all_descriptors; a != NULL; a = a->all_next) {
        if (a->address == 0) continue;
        in_use++;
        const char *problem = check_one_arena(a, buf, size);
        if (problem != NULL) return problem;
        if (in_a_bucket(a, a->free_count)) bucketed_expected++;
        if (a->in_reserve) {
            reserve_expected++;
            if (a->free_count != a->total_pools) {
                return FAIL("arena %p is in the reserve with %u of %u pools free",
                            (void *)a->address, a->free_count, a->total_pools);
            }
        } else if (a->free_count == a->total_pools) {
            return FAIL("arena %p is wholly free but neither released nor in the reserve",
                        (void *)a->address);
        }
    }
    if (in_use != pm_counters.arenas_current) {
        return FAIL("%zu arenas in use but the counter says %zu", in_use, pm_counters.arenas_current);
    }
    size_t bucketed = 0;
    for (uint32_t k = 0; k <= PM_POOLS_PER_ARENA; k++) {
        bool bit = (bucket_bitmap[k / 64] >> (k % 64)) & 1;
        if (bit != (buckets[k] != NULL)) {
            return FAIL("bucket %u: bitmap bit %d disagrees with the list", k, (int)bit);
        }
        const pm_arena *prev = NULL;
        for (const pm_arena *a = buckets[k]; a != NULL; prev = a, a = a->next) {
            if (a->address == 0 || a->free_count != k || a->prev != prev) {
                return FAIL("bucket %u holds arena %p with %u free pools (links %s)", k,
                            (void *)a->address, a->free_count, a->prev == prev ? "ok" : "broken");
            }
            if (++bucketed > in_use) return FAIL("bucket %u: list longer than the arenas (cycle?)", k);
        }
    }
    if (bucketed != bucketed_expected) {
        return FAIL("%zu arenas in buckets, %zu partly used arenas", bucketed, bucketed_expected);
    }
    size_t reserved = 0;
    for (const pm_arena *a = reserve; a != NULL; a = a->next) {
        if (!a->in_reserve || ++reserved > in_use) return FAIL("reserve list is corrupt");
    }
    if (reserved != reserve_expected || reserved != reserve_count) {
        return FAIL("reserve: %zu listed, %zu marked, count %zu", reserved, reserve_expected,
                    reserve_count);
    }
    if (reserve_count * PM_ARENA_SIZE > reserve_limit_bytes) {
        return FAIL("reserve holds %zu arenas, over its limit of %zu bytes", reserve_count,
                    reserve_limit_bytes);
    }
    return NULL;
}
