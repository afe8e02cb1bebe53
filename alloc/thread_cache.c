/*
 * thread_cache.c — per-thread pool caches: the mem and object domains from many threads.
 *
 * Modes (pm_init, before the first mem/object call):
 *
 *   GIL mode (default)        one heap, pm_main_heap, for every thread; the GIL protects it
 *   GIL mode + thread caches  a heap per thread, as below; the GIL is still required
 *   free-threaded             a heap per thread; mem/object need no GIL at all
 *
 * A thread heap is the thread's cache: its used-pool lists, its full pools and a stash of
 * empty pools. Only its thread touches them, so malloc and free of its own blocks take no
 * lock and make no atomic read-modify-write (alloc/internal/pymalloc.h has the fast paths).
 * Everything shared sits behind two sync/ mutexes, taken only when a cache needs a pool
 * or gives one back:
 *
 *   registry lock (rank 1)  the list of thread heaps, attach/detach, every thread's routes
 *   pool lock     (rank 2)  the arenas and the shared heap (pools no thread owns)
 *
 * Lock order is registry before pool; debug builds check it on every acquisition.
 *
 * Remote frees. A block freed by a thread that does not own its pool goes onto the owner
 * heap's `remote` list (sync/lifo.h: no lock), batched: the freeing thread links such
 * blocks into a chain for one owner (its outbox) and pushes the chain with one CAS when it
 * holds PM_OUTBOX_BLOCKS, when a block for another owner comes, or when the freeing thread
 * refills, collects or detaches. The owner takes the whole
 * list with one exchange when its malloc finds a class empty, and applies each block as a
 * local free. A pool's owner may change while a block is in flight to the old one (the
 * owner gave the pool to the shared heap, or exited); the drain then forwards the block to
 * the pool's current owner. Nothing is lost because (1) a block in flight still counts as
 * in use, so its pool cannot empty, go back to its arena and be reused meanwhile, and (2)
 * heaps are never freed, only recycled, so a remote list stays valid forever. The lists of
 * the shared heap and of detached heaps are drained by whoever holds the pool lock: the
 * freeing thread itself when a trylock succeeds, else the next refill or pm_collect().
 *
 * Thread exit (pthread key destructor) and pm_thread_detach() drain the heap's remote list,
 * give its partly used pools to the shared heap (where any thread's refill adopts them),
 * return its stash to the arenas, and leave the heap for the next thread to recycle. Its
 * full pools stay where they are: a thread heap does not list its full pools (that would
 * cost every full/not-full transition a list update); the first block freed into one
 * brings it to the shared heap, under the pool lock, and a thread that recycles the heap
 * simply owns them again.
 *
 * Bounds. A cache keeps at most `pools_per_class` non-full pools per class and as many
 * empty pools in its stash, and at most min(bytes_per_thread, bytes_total / threads) bytes
 * of such pools; a pool beyond the bound goes to the shared heap (partly used) or its arena
 * (empty). Full pools hold only live data and are not bounded.
 *
 * fork(). The locks are taken around fork() (pthread_atfork), so the arenas and the shared
 * heap are consistent in the child. The parent's other threads do not exist there, and
 * their heaps may have been mid-update; the child rebuilds them from the one thing it can
 * trust, each pool's own free list: every pool owned by a vanished thread is recounted and
 * goes to the shared heap (or its arena if empty), and their remote lists are drained.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc/internal/domain.h"
#include "alloc/internal/fatal.h"
#include "alloc/internal/pymalloc.h"
#include "alloc/internal/trace.h"

#define ALL_LISTS_EMPTY {[0 ... PM_NUM_CLASSES - 1] = &pm_no_pool}

pm_heap pm_shared_heap = {.used = ALL_LISTS_EMPTY, .kind = PM_HEAP_SHARED};

__thread pm_heap *pm_thread_heaps[PM_DOMAIN_COUNT] __attribute__((tls_model(PM_TLS_MODEL))) = {
    &pm_unattached_heap, &pm_unattached_heap, &pm_unattached_heap};

enum {
    DEFAULT_POOLS_PER_CLASS = 8,
    DEFAULT_BYTES_PER_THREAD = 1 << 20,  /* 32 pools of 32 KiB */
    DEFAULT_BYTES_TOTAL = 64 << 20,
};

pm_threading_state pm_threading = {
    .caches = false,
    .free_threaded = false,
    .pools_per_class = DEFAULT_POOLS_PER_CLASS,
    .bytes_per_thread = DEFAULT_BYTES_PER_THREAD,
    .bytes_total = DEFAULT_BYTES_TOTAL,
};

/* ---- locks and their order ----------------------------------------------------------- */

static pm_mutex registry_mutex = PM_MUTEX_INITIALIZER;
static pm_mutex pool_mutex = PM_MUTEX_INITIALIZER;

enum { RANK_REGISTRY = 1, RANK_POOL = 2 };

/* How long a thread that finds either lock taken polls before it sleeps. Both are held
 * for microseconds (taking a pool; only one new arena in 16 makes an mmap, arena.c), so a
 * 20 us window covers nearly every wait, and a waiter whose holder was preempted gives up
 * soon. Sleeping was what cost: on this 2-vCPU VM a woken waiter was often placed on the
 * CPU of the thread that unlocked it, and two workers that met at a lock while filling
 * their caches went on sharing one CPU for milliseconds, then started their timed loops
 * late (mt_churn, 2 threads: both workers ended their fills on one CPU in 9 of 16 and 8 of
 * 14 runs; with the spin and the chunks 2 of 16 and 2 of 14, tcmalloc 1 of 16 and 2 of 14).
 * Either change alone, in one set each, did not help: 9 of 14 and 8 of 14. */
#define LOCK_SPIN_NS 20000

#ifndef NDEBUG
static _Thread_local unsigned held_ranks; /* bit r: this thread holds the lock of rank r */

static void order_acquire(unsigned rank, const char *name) {
    if ((held_ranks >> rank) != 0) {
        pm_fatal_error(name, "lock order violated (registry, then pool; never recursive)");
    }
    held_ranks |= 1u << rank;
}

static void order_release(unsigned rank) {
    held_ranks &= ~(1u << rank);
}
#else
static void order_acquire(unsigned rank, const char *name) {
    (void)rank;
    (void)name;
}
static void order_release(unsigned rank) {
    (void)rank;
}
#endif

static void registry_lock(void) PM_ACQUIRE(registry_mutex) {
    order_acquire(RANK_REGISTRY, "pymalloc-mt registry lock");
    pm_mutex_lock_spinning(&registry_mutex, LOCK_SPIN_NS);
}

static void registry_unlock(void) PM_RELEASE(registry_mutex) {
    pm_mutex_unlock(&registry_mutex);
    order_release(RANK_REGISTRY);
}

/* The pool lock exists only with caches: in GIL mode the GIL already orders everything, and
 * GIL mode must not pay for a second lock. The condition is fixed before the first call. */
void pm_pool_lock(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (!pm_threading.caches) return;
    order_acquire(RANK_POOL, "pymalloc-mt pool lock");
    pm_mutex_lock_spinning(&pool_mutex, LOCK_SPIN_NS);
}

/* Only with caches (the callers are thread-cache paths). */
static bool pool_trylock(void) PM_NO_THREAD_SAFETY_ANALYSIS {
#ifndef NDEBUG
    if ((held_ranks >> RANK_POOL) != 0) {
        pm_fatal_error("pymalloc-mt pool lock", "trylock while holding it");
    }
#endif
    if (!pm_mutex_trylock(&pool_mutex)) return false;
    order_acquire(RANK_POOL, "pymalloc-mt pool lock");
    return true;
}

/* Arenas released under the lock are unmapped after it (arena.c, "Releasing"). */
void pm_pool_unlock(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (!pm_threading.caches) return;
    pm_arena_unmaps unmaps;
    pm_arena_take_unmaps(&unmaps);
    pm_mutex_unlock(&pool_mutex);
    order_release(RANK_POOL);
    pm_arena_unmap(&unmaps);
}

void pm_heap_walk_lock(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (!pm_threading.caches) return;
    registry_lock();
    pm_pool_lock();
}

void pm_heap_walk_unlock(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (!pm_threading.caches) return;
    pm_pool_unlock();
    registry_unlock();
}

/* ---- the registry -------------------------------------------------------------------- */

pm_heap *pm_thread_heaps_registry; /* push-front, published with release; never shrinks */
static size_t attached_threads; /* written under the registry lock; read without it */
static bool threading_frozen;            /* a thread has attached: pm_init may not run */
/* What serves each domain's malloc (see the routes in alloc/internal/pymalloc.h). */
typedef enum route_kind { ROUTE_TABLE, ROUTE_PYMALLOC, ROUTE_SAMPLING, ROUTE_TRACED } route_kind;
static route_kind route_kinds[PM_DOMAIN_COUNT] = {ROUTE_TABLE, ROUTE_PYMALLOC, ROUTE_PYMALLOC};
static pthread_key_t heap_key;
static pthread_once_t heap_key_once = PTHREAD_ONCE_INIT;

static void counter_add(uint64_t *counter, uint64_t delta) {
    pm_atomic_store_u64_relaxed(counter, pm_atomic_load_u64_relaxed(counter) + delta);
}

static bool heap_attached(const pm_heap *heap) {
    return pm_atomic_load_int_acquire(&heap->attached) != 0;
}

static pm_heap *registry_first(void) {
    return (pm_heap *)pm_atomic_load_ptr_acquire(&pm_thread_heaps_registry);
}

/* Heaps are mapped, not malloc'd: the raw domain may be hooked by the embedder, and a
 * heap must outlive everything (blocks in flight may still name it). */
static pm_heap *new_heap(void) {
    pm_heap *heap = mmap(NULL, sizeof(pm_heap), PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (heap == MAP_FAILED) return NULL;
    for (unsigned c = 0; c < PM_NUM_CLASSES; c++) heap->used[c] = &pm_no_pool;
    heap->kind = PM_HEAP_THREAD;
    pm_lifo_init(&heap->remote);
    heap->registry_next = pm_thread_heaps_registry;
    pm_atomic_store_ptr_release(&pm_thread_heaps_registry, heap);
    return heap;
}

static void detach(pm_heap *heap);

static void heap_key_destructor(void *heap) {
    detach(heap);
}

static void make_heap_key(void) {
    if (pthread_key_create(&heap_key, heap_key_destructor) != 0) {
        pm_fatal_error("pm_thread_attach", "pthread_key_create failed");
    }
}

static pm_heap *route_target(pm_heap *own, int domain) {
    switch (route_kinds[domain]) {
    case ROUTE_PYMALLOC: return own;
    case ROUTE_SAMPLING: return &pm_sampling_heap;
    case ROUTE_TRACED: return &pm_traced_route_heap;
    default: return &pm_bypass_heap;
    }
}

pm_heap *pm_thread_attach(void) {
    pthread_once(&heap_key_once, make_heap_key);
    registry_lock();
    threading_frozen = true;
    pm_heap *heap = NULL;
    for (pm_heap *h = pm_thread_heaps_registry; h != NULL; h = h->registry_next) {
        if (!heap_attached(h)) {
            heap = h;
            break;
        }
    }
    if (heap == NULL) heap = new_heap();
    if (heap == NULL) {
        registry_unlock();
        return NULL;
    }
    heap->slots = pm_thread_heaps;
    pm_pool_lock(); /* claim_for_shared reads `attached` under it */
    pm_atomic_store_int_release(&heap->attached, 1);
    pm_pool_unlock();
    pm_atomic_store_size_relaxed(&attached_threads, attached_threads + 1);
    pm_heap *own = pm_threading.caches ? heap : &pm_main_heap;
    pm_thread_heaps[PM_ROUTE_PYMALLOC] = own;
    pm_atomic_store_ptr_relaxed(&pm_thread_heaps[PM_DOMAIN_MEM], route_target(own, PM_DOMAIN_MEM));
    pm_atomic_store_ptr_relaxed(&pm_thread_heaps[PM_DOMAIN_OBJ], route_target(own, PM_DOMAIN_OBJ));
    (void)pthread_setspecific(heap_key, heap);
    registry_unlock();
    return own;
}

/* A compare-and-swap, not a store: a route update (under the registry lock) may have
 * replaced the stand-in since the caller read it, and wins. */
pm_heap *pm_thread_route_arm(int route) {
    pm_heap *own = pm_own_heap();
    (void)pm_atomic_cas_ptr(&pm_thread_heaps[route], &pm_sampling_heap, own);
    return own;
}

void pm_domain_route_update(pm_domain domain, const pm_allocator *installed) {
    if (domain == PM_DOMAIN_RAW) return;
    route_kind kind = installed == &pm_pymalloc_allocator           ? ROUTE_PYMALLOC
                      : pm_trace_samples_over_pymalloc(installed) ? ROUTE_SAMPLING
                      : pm_trace_records_in_blocks(installed)     ? ROUTE_TRACED
                                                                  : ROUTE_TABLE;
    registry_lock();
    route_kinds[domain] = kind;
    pm_atomic_store_ptr_relaxed(&pm_domain_routes[domain].map,
                                kind != ROUTE_TABLE ? &pm_arena_map : &pm_bypass_map);
    pm_atomic_store_int_relaxed(&pm_domain_routes[domain].sampling, kind == ROUTE_SAMPLING);
    for (pm_heap *h = pm_thread_heaps_registry; h != NULL; h = h->registry_next) {
        if (!heap_attached(h)) continue;
        pm_heap *own = pm_threading.caches ? h : &pm_main_heap;
        pm_atomic_store_ptr_relaxed(&h->slots[domain], route_target(own, domain));
    }
    registry_unlock();
}

void pm_domain_routes_refresh(void) {
    pm_domain_route_update(PM_DOMAIN_MEM, pm_domain_current(PM_DOMAIN_MEM));
    pm_domain_route_update(PM_DOMAIN_OBJ, pm_domain_current(PM_DOMAIN_OBJ));
}

/* ---- bounds -------------------------------------------------------------------------- */

static size_t cache_byte_limit(void) {
    size_t threads = pm_atomic_load_size_relaxed(&attached_threads);
    size_t share = pm_threading.bytes_total / (threads > 0 ? threads : 1);
    return share < pm_threading.bytes_per_thread ? share : pm_threading.bytes_per_thread;
}

/* May the stash take one more empty pool of this class? */
static bool stash_has_room(const pm_heap *heap, unsigned size_class) {
    return heap->stash_per_class[size_class] < pm_threading.pools_per_class &&
           ((size_t)heap->stash_count + 1) * PM_POOL_SIZE <= cache_byte_limit();
}

/* ---- the shared heap (pool lock held) ------------------------------------------------ */

static void give_to_shared(pm_heap *heap, pm_pool *pool) {
    pm_pool_set_owner(pool, &pm_shared_heap);
    /* An exhausted list head is settled first: the shared lists hold only pools with room. */
    if (!pm_pool_full(pool) && !pm_pool_settle(pool)) pm_heap_push_front(&pm_shared_heap, pool);
    counter_add(&heap->counters.pools_given, 1);
}

/* A detached heap keeps its full pools (finding them at detach would take a walk of every
 * arena); the first block freed into one, by any thread, brings it to the shared heap here.
 * Returns the pool's owner now: the shared heap, or an attached heap to forward to. */
static pm_heap *claim_for_shared(pm_pool *pool) {
    pm_heap *owner = pm_pool_owner(pool);
    if (owner != &pm_shared_heap && owner != NULL && owner->kind == PM_HEAP_THREAD &&
        !heap_attached(owner)) {
        give_to_shared(owner, pool); /* full, so on no list until the block is applied */
        owner = &pm_shared_heap;
    }
    return owner;
}

static pm_pool *adopt_from_shared(pm_heap *heap, unsigned size_class) {
    pm_pool *pool = pm_shared_heap.used[size_class];
    if (pool == &pm_no_pool) return NULL;
    pm_heap_unlink(&pm_shared_heap, pool);
    pm_pool_set_owner(pool, heap);
    counter_add(&heap->counters.pools_adopted, 1);
    return pool;
}

static void forward(pm_heap *owner, pm_lifo_node *node) {
    if (owner == NULL || owner->kind == PM_HEAP_SENTINEL || owner->kind == PM_HEAP_MAIN) {
        pm_fatal_error("pm_free", "a block freed by another thread lies in a pool not in use "
                                  "(double free?)");
    }
    pm_lifo_push(&owner->remote, node);
}

/* Takes `heap`'s remote list (a detached heap's, or the shared heap's) and applies each
 * block whose pool the shared heap owns; anything else is forwarded to its pool's owner. */
static void drain_as_shared(pm_heap *heap) {
    pm_lifo_node *node = pm_lifo_pop_all(&heap->remote);
    uint64_t applied = 0;
    while (node != NULL) {
        pm_lifo_node *next = pm_lifo_node_next(node);
        pm_pool *pool = pm_pool_of(node);
        pm_heap *owner = claim_for_shared(pool);
        if (owner == &pm_shared_heap) {
            pm_pool_free_block(pool, (pm_block *)node); /* the pool lock stands in for an owner */
            applied++;
        } else {
            forward(owner, node);
        }
        node = next;
    }
    counter_add(&pm_shared_heap.counters.remote_received, applied);
}

/* A block of a pool no attached thread owns (the shared heap's, or a detached heap's full
 * pool). It goes on that heap's remote list, without a lock like every remote free; then,
 * if the pool lock happens to be free, the list is applied at once, so that the memory of
 * exited threads comes back as it is freed rather than at the next refill. Never waits. */
void pm_thread_cache_free_to_shared(pm_heap *owner, void *p) {
    pm_lifo_push(&owner->remote, (pm_lifo_node *)p);
    if (!pool_trylock()) return; /* the holder's refill, or a later call, will apply it */
    drain_as_shared(owner);
    pm_pool_unlock();
}

static void drain_unowned_lists(void) {
    if (!pm_lifo_is_empty(&pm_shared_heap.remote)) drain_as_shared(&pm_shared_heap);
    for (pm_heap *h = registry_first(); h != NULL; h = h->registry_next) {
        if (!heap_attached(h) && !pm_lifo_is_empty(&h->remote)) drain_as_shared(h);
    }
}

/* ---- a thread heap's own slow paths (no lock held on entry) -------------------------- */

void pm_outbox_flush(pm_heap *heap) {
    if (heap->outbox_to == NULL) return;
    pm_lifo_push_chain(&heap->outbox_to->remote, heap->outbox_first, heap->outbox_last);
    heap->outbox_to = NULL;
    heap->outbox_first = heap->outbox_last = NULL;
    heap->outbox_count = 0;
}

static void drain_own(pm_heap *heap) {
    pm_lifo_node *node = pm_lifo_pop_all(&heap->remote);
    uint64_t applied = 0;
    while (node != NULL) {
        pm_lifo_node *next = pm_lifo_node_next(node);
        pm_pool *pool = pm_pool_of(node);
        pm_heap *owner = pm_pool_owner(pool);
        if (owner == heap) {
            pm_pool_free_block(pool, (pm_block *)node);
            applied++;
        } else {
            forward(owner, node); /* the pool changed hands while the block was in flight */
        }
        node = next;
    }
    counter_add(&heap->counters.drains, 1);
    counter_add(&heap->counters.remote_received, applied);
}

static void stash_push(pm_heap *heap, pm_pool *pool) {
    pool->next = heap->stash;
    pool->prev = NULL;
    heap->stash = pool;
    heap->stash_count++;
    heap->stash_per_class[pool->size_class]++;
}

/* An empty pool from the stash, preferably one last used for `size_class` (its free list
 * is still linked). */
static pm_pool *stash_take(pm_heap *heap, unsigned size_class) {
    pm_pool **link = &heap->stash;
    if (*link == NULL) return NULL;
    for (pm_pool **l = &heap->stash; *l != NULL; l = &(*l)->next) {
        if ((*l)->size_class == size_class) {
            link = l;
            break;
        }
    }
    pm_pool *pool = *link;
    *link = pool->next;
    pool->next = NULL;
    heap->stash_count--;
    heap->stash_per_class[pool->size_class]--;
    counter_add(&heap->counters.stash_hits, 1);
    return pool;
}

void *pm_thread_cache_refill(pm_heap *heap, unsigned size_class) {
    /* A good moment to hand over this thread's remote frees too: it is on a slow path
     * already, and the blocks are not reusable until their owners get them. */
    pm_outbox_flush(heap);
    if (!pm_lifo_is_empty(&heap->remote)) {
        drain_own(heap);
        pm_pool *pool = pm_heap_usable_head(heap, size_class);
        if (pool != &pm_no_pool) return pm_pool_pop_first(pool);
    }
    pm_pool *pool = stash_take(heap, size_class);
    if (pool == NULL) {
        pm_pool_lock();
        drain_unowned_lists();
        pool = adopt_from_shared(heap, size_class);
        if (pool == NULL) {
            pool = pm_arena_take_pool();
            if (pool != NULL) {
                pm_pool_set_owner(pool, heap);
                counter_add(&heap->counters.pools_from_arena, 1);
            }
        }
        pm_pool_unlock();
        if (pool == NULL) return NULL;
        pm_pool_populate_if_growing(heap, pool, size_class);
    }
    pm_pool_prepare(pool, size_class);
    pm_heap_push_front(heap, pool);
    return pm_pool_pop_first(pool);
}

void pm_thread_cache_pool_empty(pm_heap *heap, pm_pool *pool) {
    if (heap->kind == PM_HEAP_SHARED) { /* the pool lock is held (drain_as_shared) */
        pm_arena_return_pool(pool);
        return;
    }
    if (stash_has_room(heap, pool->size_class)) {
        stash_push(heap, pool);
        return;
    }
    pm_pool_lock();
    pm_arena_return_pool(pool);
    pm_pool_unlock();
    counter_add(&heap->counters.pools_to_arena, 1);
}

void pm_collect(void) {
    if (!pm_threading.caches) return;
    pm_heap *own = pm_own_heap();
    bool attached = own != &pm_unattached_heap;
    if (attached) pm_outbox_flush(own);
    if (attached && !pm_lifo_is_empty(&own->remote)) drain_own(own);
    pm_pool_lock();
    drain_unowned_lists();
    pm_pool_unlock();
    /* The shared heap's drain may have forwarded blocks of our pools to us. */
    if (attached && !pm_lifo_is_empty(&own->remote)) drain_own(own);
}

/* ---- detach -------------------------------------------------------------------------- */

/* Pool lock held. Empties every list of `heap`: partly used pools to the shared heap,
 * stashed empty pools to their arenas. Full pools stay with the heap until a block is freed
 * into one (claim_for_shared) or a new thread recycles the heap. */
static void give_back_all(pm_heap *heap) {
    for (unsigned c = 0; c < PM_NUM_CLASSES; c++) {
        while (heap->used[c] != &pm_no_pool) {
            pm_pool *pool = heap->used[c];
            pm_heap_unlink(heap, pool);
            give_to_shared(heap, pool);
        }
    }
    while (heap->stash != NULL) {
        pm_pool *pool = heap->stash;
        heap->stash = pool->next;
        pm_arena_return_pool(pool);
        counter_add(&heap->counters.pools_to_arena, 1);
    }
    heap->stash_count = 0;
    memset(heap->stash_per_class, 0, sizeof heap->stash_per_class);
}

static void reset_routes(void) {
    pm_thread_heaps[PM_ROUTE_PYMALLOC] = &pm_unattached_heap;
    pm_atomic_store_ptr_relaxed(&pm_thread_heaps[PM_DOMAIN_MEM], &pm_unattached_heap);
    pm_atomic_store_ptr_relaxed(&pm_thread_heaps[PM_DOMAIN_OBJ], &pm_unattached_heap);
}

/* Runs in the heap's own thread (its key destructor, or pm_thread_detach). */
static void detach(pm_heap *heap) {
    if (pm_threading.caches) {
        pm_outbox_flush(heap);
        drain_own(heap);
    }
    registry_lock();
    pm_pool_lock();
    if (pm_threading.caches) give_back_all(heap);
    pm_atomic_store_int_release(&heap->attached, 0);
    pm_pool_unlock();
    heap->slots = NULL;
    pm_atomic_store_size_relaxed(&attached_threads, attached_threads - 1);
    reset_routes();
    registry_unlock();
}

void pm_thread_detach(void) {
    if (pm_own_heap() == &pm_unattached_heap) return;
    pm_heap *heap = pthread_getspecific(heap_key);
    if (heap == NULL) return;
    (void)pthread_setspecific(heap_key, NULL);
    detach(heap);
}

/* ---- fork ---------------------------------------------------------------------------- */

static void fork_prepare(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    registry_lock();
    pm_pool_lock();
}

static void fork_parent(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    pm_pool_unlock();
    registry_unlock();
}

/* A pool whose owner vanished mid-update: trust only its free list. Blocks on the list are
 * free; everything else carved is in use (a block the vanished thread was handing out or
 * taking back is lost to the child, but counted, so the pool stays consistent). */
static void recount_pool(pm_pool *pool) {
    size_t size = pm_class_block_size(pool->size_class);
    uintptr_t base = pool->memory;
    size_t carved_end = pool->carve_offset;
    uint32_t listed = 0;
    pm_block **link = &pool->free;
    while (*link != NULL) {
        uintptr_t at = (uintptr_t)*link;
        size_t offset = at - base;
        bool valid = at >= base && offset + size <= PM_POOL_SIZE && offset % size == 0 &&
                     listed < pm_class_capacity(pool->size_class);
        if (!valid) {
            *link = NULL; /* a torn link: drop the rest (those blocks count as in use) */
            break;
        }
        if (offset + size > carved_end) carved_end = offset + size;
        listed++;
        link = &(*link)->next;
    }
    pool->carve_offset = (uint16_t)carved_end;
    uint32_t carved = (uint32_t)(carved_end / size);
    uint32_t used = carved - listed;
    /* Caught between taking its last free block and carving more: carve now, as malloc
     * would have, so that "no free block" again means "full". */
    if (pool->free == NULL) pm_pool_carve(pool);
    pool->used_state = used | (pool->free == NULL && used > 0 ? PM_POOL_FULL : 0);
    pool->next = pool->prev = NULL;
}

static void reclaim_pool_of_vanished_thread(const pm_arena *arena, void *arg) {
    (void)arg;
    for (uint32_t i = 0; i < arena->carved_pools; i++) {
        pm_pool *pool = (pm_pool *)&arena->pools[i];
        pm_heap *owner = pm_pool_owner(pool);
        if (owner == NULL || owner->kind != PM_HEAP_THREAD || heap_attached(owner)) continue;
        if (pool->size_class >= PM_NUM_CLASSES) {
            pm_arena_return_pool(pool);
            continue;
        }
        recount_pool(pool);
        if (pm_pool_used(pool) == 0) {
            pm_arena_return_pool(pool);
        } else {
            give_to_shared(owner, pool);
        }
    }
}

static void fork_child(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    pm_mutex_reinit_after_fork(&pool_mutex);
    pm_mutex_reinit_after_fork(&registry_mutex);
#ifndef NDEBUG
    held_ranks = 0;
#endif
    pm_heap *mine = pthread_getspecific(heap_key);
    size_t survivors = 0;
    for (pm_heap *h = pm_thread_heaps_registry; h != NULL; h = h->registry_next) {
        if (h == mine || !heap_attached(h)) {
            if (h == mine) survivors++;
            continue;
        }
        /* A thread of the parent: its lists may be torn, so forget them. (Blocks in its
         * outbox stay counted in their pools: lost to the child, never double-counted.) */
        for (unsigned c = 0; c < PM_NUM_CLASSES; c++) {
            h->used[c] = &pm_no_pool;
            h->used_last[c] = NULL;
        }
        h->outbox_to = NULL;
        h->outbox_first = h->outbox_last = NULL;
        h->outbox_count = 0;
        h->stash = NULL;
        h->stash_count = 0;
        memset(h->stash_per_class, 0, sizeof h->stash_per_class);
        h->slots = NULL;
        pm_atomic_store_int_release(&h->attached, 0);
    }
    pm_atomic_store_size_relaxed(&attached_threads, survivors);
    pm_arena_for_each(reclaim_pool_of_vanished_thread, NULL);
    drain_unowned_lists();
    /* Arenas those released wait for an unlock, and the child took no lock. */
    pm_arena_unmaps unmaps;
    pm_arena_take_unmaps(&unmaps);
    pm_arena_unmap(&unmaps);
}

/* ---- configuration ------------------------------------------------------------------- */

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void register_atfork(void) {
    if (pthread_atfork(fork_prepare, fork_parent, fork_child) != 0) {
        pm_fatal_error("pm_init", "pthread_atfork failed");
    }
}

void pm_config_init(pm_config *config) {
    if (config == NULL) return;
    memset(config, 0, sizeof *config);
    config->cache_pools_per_class = DEFAULT_POOLS_PER_CLASS;
    config->cache_bytes_per_thread = DEFAULT_BYTES_PER_THREAD;
    config->cache_bytes_total = DEFAULT_BYTES_TOTAL;
}

int pm_init(const pm_config *config) {
    if (config == NULL || config->cache_pools_per_class > UINT32_MAX) {
        errno = EINVAL;
        return -1;
    }
    registry_lock();
    if (threading_frozen) {
        registry_unlock();
        errno = EBUSY;
        return -1;
    }
    bool caches = config->free_threaded || config->thread_caches;
    if (caches) pthread_once(&atfork_once, register_atfork);
    pm_threading.caches = caches;
    pm_threading.free_threaded = config->free_threaded != 0;
    pm_threading.pools_per_class = config->cache_pools_per_class;
    pm_threading.bytes_per_thread = config->cache_bytes_per_thread;
    pm_threading.bytes_total = config->cache_bytes_total;
    registry_unlock();
    return 0;
}

void pm_get_config(pm_config *out) {
    if (out == NULL) return;
    memset(out, 0, sizeof *out);
    out->free_threaded = pm_threading.free_threaded;
    out->thread_caches = pm_threading.caches;
    out->cache_pools_per_class = pm_threading.pools_per_class;
    out->cache_bytes_per_thread = pm_threading.bytes_per_thread;
    out->cache_bytes_total = pm_threading.bytes_total;
}

int pm_is_free_threaded(void) {
    return pm_threading.free_threaded;
}

void pm_assert_free_threaded(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (!pm_threading.free_threaded) {
        pm_fatal_error("pm_assert_free_threaded",
                       "the mem and object domains need the GIL: pm_init() did not select "
                       "free-threaded mode");
    }
}

/* ---- walks --------------------------------------------------------------------------- */

void pm_for_each_heap(void (*fn)(pm_heap *heap, void *arg), void *arg) {
    fn(&pm_main_heap, arg);
    fn(&pm_traced_heap, arg);
    fn(&pm_shared_heap, arg);
    for (pm_heap *h = registry_first(); h != NULL; h = h->registry_next) fn(h, arg);
}
