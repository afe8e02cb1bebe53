/*
 * fuzz/fuzz_threads.c — fuzz target: the per-thread caches in free-threaded mode, with the
 * tape choosing which of three worker threads makes each call.
 *
 * Real concurrency is the TSan stress tests' job (tests/thread_cache_test.cc); what a fuzzer
 * can do that they cannot is explore *which* thread frees *which* block in *which* state,
 * reproducibly. So the workers take turns: the main thread reads one operation from the
 * input, hands a baton (mutex + condition) to the worker the operation names, and waits
 * for it back. Each call therefore runs on a real, distinct thread with its own cache, and
 * every interleaving is the input's.
 *
 * Input: a sequence of 4-byte operations [op, thread, a, b]:
 *
 *   op % 8   action (by worker thread % 3)
 *   0, 1     allocate a + 256 * (b & 3) bytes (0..1023: every class and the raw fallback)
 *            from domain b >> 6 (raw, mem, obj; 3 means obj) with malloc (or calloc when
 *            b & 4), fill it with a tag
 *   2, 3     free live block a % live (any thread may free any block)
 *   4        realloc live block a % live to a + 256 * (b & 3) bytes
 *   5        the worker detaches (pm_thread_detach); its next call attaches again
 *   6        the worker exits and a new one replaces it (pthread key destructor)
 *   7        pm_collect() on the worker
 *
 * Checks: every block keeps its tag until it is freed (realloc keeps the common prefix);
 * calloc memory is zero; every 32 operations, with all workers parked, pm_heap_check()
 * passes; at the end, after freeing everything and pm_collect(), the heap check passes and
 * pm_allocated_blocks() is back where the input found it (exact conservation, remote-free
 * lists included). Any violation aborts with a message.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/pymalloc_mt.h"
#include "fuzz/fuzz_target.h"

enum { WORKERS = 3, MAX_LIVE = 512, CHECK_EVERY = 32 };

typedef struct live_block {
    unsigned char *ptr;
    size_t size;
    pm_domain domain;
    unsigned char tag;
} live_block;

typedef enum action {
    ACT_NONE,
    ACT_ALLOC,
    ACT_FREE,
    ACT_REALLOC,
    ACT_DETACH,
    ACT_EXIT,
    ACT_COLLECT,
} action;

typedef struct request {
    action what;
    uint8_t a, b;
} request;

/* Everything below is touched only by the thread holding the baton (the main thread or the
 * one worker it handed it to); the mutex orders the hand-overs. */
static pthread_mutex_t baton_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t baton_cond = PTHREAD_COND_INITIALIZER;
static int baton = -1; /* the worker whose turn it is; -1: the main thread's */
static request pending[WORKERS];
static live_block live[MAX_LIVE];
static size_t live_count;
static unsigned char next_tag;

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fputs("fuzz_threads: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    abort();
}

static size_t size_of(uint8_t a, uint8_t b) {
    return (size_t)a + 256 * (size_t)(b & 3);
}

static pm_domain domain_of(uint8_t b) {
    unsigned d = b >> 6;
    return d == 0 ? PM_DOMAIN_RAW : d == 1 ? PM_DOMAIN_MEM : PM_DOMAIN_OBJ;
}

PM_FUZZ_NO_COVERAGE static void check_contents(const live_block *block, size_t size, const char *when) {
    for (size_t i = 0; i < size; i++) {
        if (block->ptr[i] != block->tag) {
            fail("%s: block %p (%zu bytes, domain %d) byte %zu is %#x, expected %#x", when,
                 (void *)block->ptr, block->size, (int)block->domain, i, block->ptr[i],
                 block->tag);
        }
    }
}

/* The calls themselves. Free-threaded mode: no GIL (pm_assert_free_threaded states it). */

static void *domain_malloc(pm_domain d, size_t size, bool zeroed) {
    pm_assert_free_threaded();
    switch (d) {
    case PM_DOMAIN_RAW:
        return zeroed ? pm_raw_calloc(size, 1) : pm_raw_malloc(size);
    case PM_DOMAIN_MEM:
        return zeroed ? pm_mem_calloc(size, 1) : pm_mem_malloc(size);
    default:
        return zeroed ? pm_obj_calloc(size, 1) : pm_obj_malloc(size);
    }
}

static void *domain_realloc(pm_domain d, void *p, size_t size) {
    pm_assert_free_threaded();
    switch (d) {
    case PM_DOMAIN_RAW:
        return pm_raw_realloc(p, size);
    case PM_DOMAIN_MEM:
        return pm_mem_realloc(p, size);
    default:
        return pm_obj_realloc(p, size);
    }
}

static void domain_free(pm_domain d, void *p) {
    pm_assert_free_threaded();
    switch (d) {
    case PM_DOMAIN_RAW:
        pm_raw_free(p);
        break;
    case PM_DOMAIN_MEM:
        pm_mem_free(p);
        break;
    default:
        pm_obj_free(p);
        break;
    }
}

static void free_live(size_t index) {
    live_block block = live[index];
    check_contents(&block, block.size, "free");
    domain_free(block.domain, block.ptr);
    live[index] = live[--live_count];
}

static void run_request(const request *r) {
    switch (r->what) {
    case ACT_ALLOC: {
        if (live_count == MAX_LIVE) {
            free_live(r->a % live_count);
            return;
        }
        bool zeroed = (r->b & 4) != 0;
        live_block block = {NULL, size_of(r->a, r->b), domain_of(r->b), next_tag++};
        block.ptr = domain_malloc(block.domain, block.size, zeroed);
        if (block.ptr == NULL) fail("allocation of %zu bytes failed", block.size);
        if (zeroed) {
            for (size_t i = 0; i < block.size; i++) {
                if (block.ptr[i] != 0) fail("calloc byte %zu of %zu is not zero", i, block.size);
            }
        }
        memset(block.ptr, block.tag, block.size);
        live[live_count++] = block;
        return;
    }
    case ACT_FREE:
        if (live_count > 0) free_live(r->a % live_count);
        return;
    case ACT_REALLOC: {
        if (live_count == 0) return;
        live_block *block = &live[r->a % live_count];
        size_t size = size_of(r->a, r->b);
        check_contents(block, block->size, "realloc (before)");
        unsigned char *q = domain_realloc(block->domain, block->ptr, size);
        if (q == NULL) fail("realloc to %zu bytes failed", size);
        block->ptr = q;
        check_contents(block, block->size < size ? block->size : size, "realloc (after)");
        block->size = size;
        memset(block->ptr, block->tag, size);
        return;
    }
    case ACT_DETACH:
        pm_thread_detach();
        return;
    case ACT_COLLECT:
        pm_collect();
        return;
    case ACT_EXIT:
    case ACT_NONE:
        return;
    }
}

/* ---- workers and the baton ----------------------------------------------------------- */

static void *worker_main(void *arg) {
    int me = (int)(intptr_t)arg;
    pthread_mutex_lock(&baton_mutex);
    for (;;) {
        while (baton != me) pthread_cond_wait(&baton_cond, &baton_mutex);
        request r = pending[me];
        run_request(&r);
        baton = -1;
        pthread_cond_broadcast(&baton_cond);
        if (r.what == ACT_EXIT) break;
    }
    pthread_mutex_unlock(&baton_mutex);
    return NULL;
}

/* Runs r on worker `who` and waits until it is done (and, for ACT_EXIT, has exited). */
static void hand_over(pthread_t *threads, int who, request r) {
    pthread_mutex_lock(&baton_mutex);
    pending[who] = r;
    baton = who;
    pthread_cond_broadcast(&baton_cond);
    while (baton != -1) pthread_cond_wait(&baton_cond, &baton_mutex);
    pthread_mutex_unlock(&baton_mutex);
    if (r.what == ACT_EXIT) {
        pthread_join(threads[who], NULL); /* its key destructor has run: detached */
        if (pthread_create(&threads[who], NULL, worker_main, (void *)(intptr_t)who) != 0) {
            fail("pthread_create failed");
        }
    }
}

static void heap_check(const char *when) {
    pm_assert_free_threaded();
    const char *problem = pm_heap_check();
    if (problem != NULL) fail("heap check (%s): %s", when, problem);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool initialised;
    if (!initialised) {
        pm_config config;
        pm_config_init(&config);
        config.free_threaded = 1;
        config.cache_pools_per_class = 2; /* small bounds: reach the arena paths often */
        if (pm_init(&config) != 0) fail("pm_init failed");
        initialised = true;
    }
    pm_assert_free_threaded();
    size_t blocks_before = pm_allocated_blocks();

    pthread_t threads[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        if (pthread_create(&threads[i], NULL, worker_main, (void *)(intptr_t)i) != 0) {
            fail("pthread_create failed");
        }
    }
    static const action actions[8] = {ACT_ALLOC, ACT_ALLOC, ACT_FREE, ACT_FREE,
                                      ACT_REALLOC, ACT_DETACH, ACT_EXIT, ACT_COLLECT};
    size_t steps = 0;
    for (size_t at = 0; at + 4 <= size; at += 4) {
        request r = {actions[data[at] % 8], data[at + 2], data[at + 3]};
        hand_over(threads, data[at + 1] % WORKERS, r);
        if (++steps % CHECK_EVERY == 0) heap_check("during the tape");
    }
    /* Everything left is freed round-robin by the workers, so by threads that did not all
     * allocate it. */
    for (int who = 0; live_count > 0; who = (who + 1) % WORKERS) {
        hand_over(threads, who, (request){ACT_FREE, 0, 0});
    }
    /* The workers exit for good (their caches detach), then nothing may be left over. */
    for (int i = 0; i < WORKERS; i++) {
        pthread_mutex_lock(&baton_mutex);
        pending[i] = (request){ACT_EXIT, 0, 0};
        baton = i;
        pthread_cond_broadcast(&baton_cond);
        while (baton != -1) pthread_cond_wait(&baton_cond, &baton_mutex);
        pthread_mutex_unlock(&baton_mutex);
        pthread_join(threads[i], NULL);
    }
    pm_collect();
    heap_check("at the end");
    size_t blocks_after = pm_allocated_blocks();
    if (blocks_after != blocks_before) {
        fail("%zu blocks allocated at the end, %zu at the start: blocks lost or leaked",
             blocks_after, blocks_before);
    }
    return 0;
}
