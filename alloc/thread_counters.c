/*
 * thread_counters.c — per-thread counter blocks (design note in internal/thread_counters.h).
 *
 * Where blocks come from: a static array covers the first 256 threads alive at once; past
 * that, blocks are carved from mmap'd chunks. Neither path calls an allocator, so counting
 * can never recurse into the domain being counted.
 *
 * Thread exit: a pthread key destructor hands the block back (owned = 0, release). A thread
 * that touches a counter again later in its teardown simply attaches once more; glibc runs
 * key destructors again for keys set during destruction.
 *
 * fork(): only the forking thread survives in the child, so the child's atfork handler
 * releases every other block, or they would stay owned by threads that no longer exist.
 */
#include "alloc/internal/thread_counters.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "sync/sync.h"

__thread pm_counter_block *pm_counter_tls __attribute__((tls_model("initial-exec"), visibility("hidden")));

enum { STATIC_BLOCKS = 256, CHUNK_BLOCKS = 64 };

static pm_counter_block static_blocks[STATIC_BLOCKS];
static size_t static_blocks_used;     /* fetch-and-add index into static_blocks */
static pm_counter_block *block_list;  /* append-only, pushed by CAS */

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;

static void release_block(void *arg) {
    pm_counter_block *block = arg;
    pm_counter_tls = NULL;
    pm_atomic_store_int_release(&block->owned, 0);
}

static void release_other_threads_blocks_in_child(void) {
    for (pm_counter_block *b = pm_atomic_load_ptr_acquire(&block_list); b != NULL; b = b->next) {
        if (b != pm_counter_tls) pm_atomic_store_int_release(&b->owned, 0);
    }
}

static void create_exit_key(void) {
    if (pthread_key_create(&exit_key, release_block) != 0) abort();
    pthread_atfork(NULL, NULL, release_other_threads_blocks_in_child);
}

static void push_block(pm_counter_block *block) {
    for (;;) {
        pm_counter_block *head = pm_atomic_load_ptr_relaxed(&block_list);
        block->next = head;
        if (pm_atomic_cas_ptr(&block_list, head, block)) return;
    }
}

static pm_counter_block *adopt_unowned_block(void) {
    for (pm_counter_block *b = pm_atomic_load_ptr_acquire(&block_list); b != NULL; b = b->next) {
        if (pm_atomic_load_int_relaxed(&b->owned) == 0 && pm_atomic_cas_int(&b->owned, 0, 1)) {
            return b;
        }
    }
    return NULL;
}

static pm_counter_block *new_block(void) {
    size_t index = pm_atomic_faa_size(&static_blocks_used, 1);
    if (index < STATIC_BLOCKS) {
        pm_counter_block *block = &static_blocks[index];
        block->owned = 1;
        push_block(block);
        return block;
    }
    /* More threads alive at once than the static array covers: carve a chunk, keep one
     * block and offer the rest to later threads. */
    pm_counter_block *chunk = mmap(NULL, CHUNK_BLOCKS * sizeof *chunk, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (chunk == MAP_FAILED) abort(); /* no memory for 4 KiB of counters: nothing sane left */
    for (int i = 1; i < CHUNK_BLOCKS; i++) push_block(&chunk[i]);
    chunk[0].owned = 1;
    push_block(&chunk[0]);
    return &chunk[0];
}

pm_counter_block *pm_counter_attach_slow(void) {
    pthread_once(&key_once, create_exit_key);
    pm_counter_block *block = adopt_unowned_block();
    if (block == NULL) block = new_block();
    pm_counter_tls = block;
    pthread_setspecific(exit_key, block);
    return block;
}

uint64_t pm_counter_sum(pm_counter which) {
    uint64_t total = 0;
    for (pm_counter_block *b = pm_atomic_load_ptr_acquire(&block_list); b != NULL; b = b->next) {
        total += pm_atomic_load_u64_relaxed(&b->count[which]);
    }
    return total;
}
