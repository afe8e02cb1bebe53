/*
 * fuzz/fuzz_threads.c — fuzz target: the per-thread caches in free-threaded mode, and the
 * tracer across them, with the tape choosing which of three worker threads makes each call.
 *
 * Real concurrency is the TSan stress tests' job (tests/thread_cache_test.cc); what a fuzzer
 * can do that they cannot is explore *which* thread frees *which* block in *which* state,
 * reproducibly. So the workers take turns: the main thread reads one operation from the
 * input, hands a baton (mutex + condition) to the worker the operation names, and waits
 * for it back. Each call therefore runs on a real, distinct thread with its own cache, and
 * every interleaving is the input's. The tracer is here for the same reason: its sessions
 * change the routes of every attached thread (while sampling over pymalloc, sampled blocks
 * come from the raw domain and pool frees skip the hook), and whether a thread that was
 * detached, exited or idle when a session started or stopped follows the change is a
 * question of which thread does what when.
 *
 * Input: a sequence of 4-byte operations [op, thread, a, b], run by worker thread % 3.
 * When op & 0x38 is 0x08 (op bytes 8..15, 72..79, 136..143, 200..207) the operation
 * controls the tracer; otherwise op % 8 means what it did before the tracer ops existed
 * (the inputs from then have op bytes 0..7 only):
 *
 *   op % 8   action
 *   0, 1     allocate a + 256 * (b & 3) bytes (0..1023: every class and the raw fallback)
 *            from domain b >> 6 (raw, mem, obj; 3 means obj) with malloc (or calloc when
 *            b & 4), fill it with a tag
 *   2, 3     free live block a % live (any thread may free any block)
 *   4        realloc live block a % live to a + 256 * (b & 3) bytes
 *   5        the worker detaches (pm_thread_detach); its next call attaches again
 *   6        the worker exits and a new one replaces it (pthread key destructor)
 *   7        pm_collect() on the worker
 *
 *   tracer operations (op & 0x38 == 0x08), op % 8:
 *   0        pm_trace_start(1): full tracing, one frame
 *   1, 2     pm_trace_start_sampling(1, mean), mean 1, 64, 4096 or 0 (the default) by a & 3
 *   3        pm_trace_stop()
 *   4        pm_trace_clear_traces()
 *   5        install the frame provider (once per input; until then, native frames)
 *   6        check every live block's trace from this worker
 *   7        pm_trace_reset_peak(), then peak == current
 *
 * Each worker's sampler is seeded from the input and the worker's incarnation, so a
 * crashing input replays exactly.
 *
 * Checks: every block keeps its tag until it is freed (realloc keeps the common prefix);
 * calloc memory is zero; every 32 operations, with all workers parked, pm_heap_check()
 * passes. The tracer, against a model of which live blocks are traced:
 *   - full session: every block allocated or reallocated since the session start or the
 *     last clear is traced, with one frame (the provider's, naming the worker and the
 *     operation, or a native one), and no block from before is;
 *   - sampling: whether a new block is traced is observed once, by the thread that made
 *     it, and must then hold until it is freed; at a mean of 1 byte, a block of 40 bytes
 *     or more is always traced, whatever rate the thread's countdown had before;
 *   - a freed block (by any thread), or the old address of a block realloc moved, is not
 *     traced; nothing is traced when not tracing; a start in another mode or at another
 *     rate while tracing fails with EBUSY;
 *   - the provider is called once for each trace stored and never otherwise, with
 *     max_frames 1; what it allocates itself (now and then) is neither traced nor
 *     charged to the sampler;
 *   - after every operation, workers parked: current traced memory is exactly the sum of
 *     the traced blocks' sizes (sampling: their weights s / (1 - exp(-s/mean)), rounded as
 *     alloc/trace.c does), 0 when not tracing, and the peak is at least current; every 32
 *     operations and after each tracer operation, every live block is looked up.
 * At the end the blocks are freed by round-robin workers, still tracing (current must come
 * to 0), tracing stops, the workers exit, and after pm_collect() the heap check passes and
 * pm_allocated_blocks() and the raw domain's live count are back where the input found
 * them (exact conservation, remote-free lists and sampled raw blocks included). Any
 * violation aborts with a message.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/internal/trace.h" /* pm_trace_test_seed_sampler */
#include "alloc/pymalloc_mt.h"
#include "fuzz/fuzz_target.h"

enum { WORKERS = 3, MAX_LIVE = 512, CHECK_EVERY = 32, SAMPLE_EVERY_BYTE_FROM = 40 };

static const size_t MEANS[4] = {1, 64, 4096, 0};
static const char *const WORKER_FILES[WORKERS] = {"worker0.py", "worker1.py", "worker2.py"};

typedef struct live_block {
    unsigned char *ptr;
    size_t size;
    pm_domain domain;
    unsigned char tag;
    bool traced;      /* the model: the tracer holds a trace of this block */
    const char *file; /* the trace's frame: the provider's file, NULL for a native frame */
    size_t line;
} live_block;

typedef enum action {
    ACT_NONE,
    ACT_ALLOC,
    ACT_FREE,
    ACT_REALLOC,
    ACT_DETACH,
    ACT_EXIT,
    ACT_COLLECT,
    ACT_TRACE_FULL,
    ACT_TRACE_SAMPLE,
    ACT_TRACE_STOP,
    ACT_TRACE_CLEAR,
    ACT_TRACE_PROVIDER,
    ACT_TRACE_CHECK,
    ACT_TRACE_RESET_PEAK,
} action;

typedef struct request {
    action what;
    uint8_t a, b;
} request;

typedef enum trace_mode { TRACE_OFF, TRACE_FULL, TRACE_SAMPLING } trace_mode;

/* Everything below is touched only by the thread holding the baton (the main thread or the
 * one worker it handed it to); the mutex orders the hand-overs. */
static pthread_mutex_t baton_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t baton_cond = PTHREAD_COND_INITIALIZER;
static int baton = -1; /* the worker whose turn it is; -1: the main thread's */
static request pending[WORKERS];
static live_block live[MAX_LIVE];
static size_t live_count;
static unsigned char next_tag;
static size_t step; /* index of the operation running: the provider's line */
static uint64_t worker_seed[WORKERS]; /* written before the worker is created */

/* The tracer's model. */
static trace_mode mode;
static size_t mean;          /* of the sampling session, PM_TRACE_DEFAULT_SAMPLE_BYTES for 0 */
static bool provider_on;
static size_t provider_calls; /* during the operation running */

static _Thread_local int worker_self = -1;

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "fuzz_threads (operation %zu): ", step);
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

/* ---- the tracer's model ---------------------------------------------------------------- */

/* Called inside traced allocations, on the worker making them. */
static size_t provide(void *ctx, pm_trace_frame *frames, size_t max_frames) {
    (void)ctx;
    if (worker_self < 0) fail("frame provider called outside a worker");
    if (max_frames != 1) fail("frame provider asked for %zu frames; sessions keep 1", max_frames);
    provider_calls++;
    /* What a provider allocates is neither traced nor charged to the sampler: were it
     * either, the traced memory or the mean-1 rule would be off. */
    if (step % 3 == 0) {
        pm_domain d = step % 2 ? PM_DOMAIN_OBJ : PM_DOMAIN_MEM;
        void *p = domain_malloc(d, 48 + step % 64, false);
        if (p == NULL) fail("the provider's own allocation failed");
        memset(p, 0x5A, 48);
        domain_free(d, p);
    }
    frames[0] = (pm_trace_frame){WORKER_FILES[worker_self], step + 1};
    return 1;
}

/* Bytes a trace of `size` stands for: its size, or in a sampling session the
 * Horvitz-Thompson weight s / p(s), p(s) = 1 - exp(-s/mean), rounded (alloc/trace.c). */
static size_t accounted(size_t size) {
    if (mode != TRACE_SAMPLING || size == 0) return size;
    double p = -expm1(-(double)size / (double)mean);
    return (size_t)((double)size / p + 0.5);
}

/* The number of frames of the trace of (domain, ptr), -1 when it has none; frame[0] set. */
static int traceback_of(pm_domain domain, const void *ptr, pm_trace_frame *frame) {
    pm_trace_frame got[2];
    int n = pm_trace_get_traceback((unsigned)domain, ptr, got, 2);
    if (n == 0 || n > 1) fail("trace of %p (domain %d) has %d frames, sessions keep 1", ptr, (int)domain, n);
    if (n == 1) *frame = got[0];
    return n;
}

static void check_not_traced(pm_domain domain, const void *ptr, const char *what) {
    pm_trace_frame frame;
    if (traceback_of(domain, ptr, &frame) != -1) {
        fail("%s %p (domain %d) is traced (%s:%zu)", what, ptr, (int)domain, frame.filename,
             frame.lineno);
    }
}

/* A live block's trace agrees with the model, looked up from the calling thread. */
static void check_trace(const live_block *block) {
    pm_trace_frame frame;
    int n = traceback_of(block->domain, block->ptr, &frame);
    if (!block->traced) {
        if (n != -1) {
            fail("block %p (%zu bytes, domain %d, mode %d) is traced (%s:%zu) but was not "
                 "allocated in this session since the last clear, or was not sampled",
                 (void *)block->ptr, block->size, (int)block->domain, (int)mode, frame.filename,
                 frame.lineno);
        }
        return;
    }
    if (n == -1) {
        fail("block %p (%zu bytes, domain %d, mode %d) lost its trace", (void *)block->ptr,
             block->size, (int)block->domain, (int)mode);
    }
    if (frame.filename == NULL) fail("trace of %p has a frame without a file", (void *)block->ptr);
    if (block->file != NULL &&
        (strcmp(frame.filename, block->file) != 0 || frame.lineno != block->line)) {
        fail("trace of %p is %s:%zu, expected %s:%zu (the worker and operation that made it)",
             (void *)block->ptr, frame.filename, frame.lineno, block->file, block->line);
    }
}

static void check_all_traces(void) {
    for (size_t i = 0; i < live_count; i++) check_trace(&live[i]);
}

/* A block was just allocated or reallocated by worker `who`: what the tracer must have
 * done with it, and, when sampling, what it did (observed once, checked from then on). */
static void observe_new_block(live_block *block, int who) {
    pm_trace_frame frame;
    int n = traceback_of(block->domain, block->ptr, &frame);
    block->traced = n == 1;
    if (provider_on && provider_calls != (block->traced ? 1u : 0u)) {
        fail("frame provider called %zu times for a block %s", provider_calls,
             block->traced ? "traced" : "not traced");
    }
    block->file = provider_on ? WORKER_FILES[who] : NULL;
    block->line = step + 1;
    switch (mode) {
    case TRACE_OFF:
        if (block->traced) fail("block %p traced while not tracing", (void *)block->ptr);
        return;
    case TRACE_FULL:
        if (!block->traced) {
            fail("block %p (%zu bytes, domain %d) made by worker %d in a full session is not "
                 "traced", (void *)block->ptr, block->size, (int)block->domain, who);
        }
        break;
    case TRACE_SAMPLING: {
        /* Every thread's countdown follows the session's rate, however the thread came
         * (attached, detached, new, idle across sessions). */
        if (!block->traced && mean == 1 && block->size >= SAMPLE_EVERY_BYTE_FROM) {
            fail("block %p (%zu bytes, domain %d) made by worker %d sampling at a mean of 1 "
                 "byte is not traced", (void *)block->ptr, block->size, (int)block->domain, who);
        }
        break;
    }
    }
    if (block->traced) check_trace(block);
}

/* With the workers parked: current traced memory is exactly the model's. */
static void check_traced_memory(void) {
    size_t current, peak;
    pm_trace_get_traced_memory(&current, &peak);
    size_t want = 0;
    for (size_t i = 0; i < live_count; i++) {
        if (live[i].traced) want += accounted(live[i].size);
    }
    if (current != want) {
        fail("traced memory is %zu bytes, the traced blocks add up to %zu (mode %d, mean %zu)",
             current, want, (int)mode, mean);
    }
    if (mode == TRACE_OFF ? peak != 0 : peak < current) {
        fail("peak %zu with current %zu (mode %d)", peak, current, (int)mode);
    }
}

static void forget_traces(void) {
    for (size_t i = 0; i < live_count; i++) live[i].traced = false;
}

static void start_tracing(bool sampling, uint8_t a) {
    pm_assert_free_threaded();
    size_t asked = sampling ? MEANS[a & 3] : 0;
    size_t effective = sampling && asked == 0 ? PM_TRACE_DEFAULT_SAMPLE_BYTES : asked;
    trace_mode wanted = sampling ? TRACE_SAMPLING : TRACE_FULL;
    errno = 0;
    int result = sampling ? pm_trace_start_sampling(1, asked) : pm_trace_start(1);
    if (mode == TRACE_OFF) {
        if (result != 0) fail("start (sampling %d, mean %zu) failed: errno %d", sampling, asked, errno);
        mode = wanted;
        mean = effective;
    } else if (mode == wanted && mean == effective) {
        if (result != 0) fail("start again in the same mode failed: errno %d", errno);
    } else if (result != -1 || errno != EBUSY) {
        fail("start (sampling %d, mean %zu) while tracing in mode %d (mean %zu) returned %d, "
             "errno %d; expected EBUSY", sampling, effective, (int)mode, mean, result, errno);
    }
    if (!pm_trace_is_tracing()) fail("not tracing after a start");
}

/* ---- the operations -------------------------------------------------------------------- */

static void free_live(size_t index) {
    live_block block = live[index];
    check_contents(&block, block.size, "free");
    domain_free(block.domain, block.ptr);
    live[index] = live[--live_count];
    check_not_traced(block.domain, block.ptr, "freed block");
    if (provider_calls != 0) fail("frame provider called by a free");
}

static void run_request(const request *r, int who) {
    provider_calls = 0;
    switch (r->what) {
    case ACT_ALLOC: {
        if (live_count == MAX_LIVE) {
            free_live(r->a % live_count);
            return;
        }
        bool zeroed = (r->b & 4) != 0;
        live_block block = {NULL, size_of(r->a, r->b), domain_of(r->b), next_tag++, false, NULL, 0};
        block.ptr = domain_malloc(block.domain, block.size, zeroed);
        if (block.ptr == NULL) fail("allocation of %zu bytes failed", block.size);
        if (zeroed) {
            for (size_t i = 0; i < block.size; i++) {
                if (block.ptr[i] != 0) fail("calloc byte %zu of %zu is not zero", i, block.size);
            }
        }
        memset(block.ptr, block.tag, block.size);
        observe_new_block(&block, who);
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
        unsigned char *old = block->ptr;
        unsigned char *q = domain_realloc(block->domain, block->ptr, size);
        if (q == NULL) fail("realloc to %zu bytes failed", size);
        block->ptr = q;
        check_contents(block, block->size < size ? block->size : size, "realloc (after)");
        block->size = size;
        memset(block->ptr, block->tag, size);
        if (q != old) check_not_traced(block->domain, old, "old address of a moved block");
        observe_new_block(block, who);
        return;
    }
    case ACT_DETACH:
        pm_thread_detach();
        return;
    case ACT_COLLECT:
        pm_collect();
        return;
    case ACT_TRACE_FULL:
    case ACT_TRACE_SAMPLE:
        start_tracing(r->what == ACT_TRACE_SAMPLE, r->a);
        return;
    case ACT_TRACE_STOP:
        pm_trace_stop();
        mode = TRACE_OFF;
        forget_traces();
        if (pm_trace_is_tracing()) fail("still tracing after stop");
        return;
    case ACT_TRACE_CLEAR:
        pm_trace_clear_traces();
        forget_traces();
        return;
    case ACT_TRACE_PROVIDER:
        if (!provider_on && pm_trace_set_frame_provider(provide, NULL) != 0) {
            fail("pm_trace_set_frame_provider failed: errno %d", errno);
        }
        provider_on = true;
        return;
    case ACT_TRACE_CHECK:
        check_all_traces();
        return;
    case ACT_TRACE_RESET_PEAK: {
        pm_trace_reset_peak();
        size_t current, peak;
        pm_trace_get_traced_memory(&current, &peak);
        if (peak != current) fail("peak %zu after reset, current %zu", peak, current);
        return;
    }
    case ACT_EXIT:
    case ACT_NONE:
        return;
    }
}

/* ---- workers and the baton ----------------------------------------------------------- */

static void *worker_main(void *arg) {
    int me = (int)(intptr_t)arg;
    worker_self = me;
    pm_trace_test_seed_sampler(worker_seed[me]);
    pthread_mutex_lock(&baton_mutex);
    for (;;) {
        while (baton != me) pthread_cond_wait(&baton_cond, &baton_mutex);
        request r = pending[me];
        run_request(&r, me);
        baton = -1;
        pthread_cond_broadcast(&baton_cond);
        if (r.what == ACT_EXIT) break;
    }
    pthread_mutex_unlock(&baton_mutex);
    return NULL;
}

static void start_worker(pthread_t *threads, int who) {
    worker_seed[who] = worker_seed[who] * 0x100000001B3ull + (uint64_t)who + 1;
    if (pthread_create(&threads[who], NULL, worker_main, (void *)(intptr_t)who) != 0) {
        fail("pthread_create failed");
    }
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
        start_worker(threads, who);
    }
}

static void heap_check(const char *when) {
    pm_assert_free_threaded();
    const char *problem = pm_heap_check();
    if (problem != NULL) fail("heap check (%s): %s", when, problem);
}

static action decode(uint8_t op) {
    static const action actions[8] = {ACT_ALLOC, ACT_ALLOC, ACT_FREE, ACT_FREE,
                                      ACT_REALLOC, ACT_DETACH, ACT_EXIT, ACT_COLLECT};
    static const action trace_actions[8] = {
        ACT_TRACE_FULL,  ACT_TRACE_SAMPLE,   ACT_TRACE_SAMPLE, ACT_TRACE_STOP,
        ACT_TRACE_CLEAR, ACT_TRACE_PROVIDER, ACT_TRACE_CHECK,  ACT_TRACE_RESET_PEAK};
    return (op & 0x38) == 0x08 ? trace_actions[op % 8] : actions[op % 8];
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
    pm_raw_stats raw;
    pm_get_raw_stats(&raw);
    uint64_t raw_live_before = raw.live;
    if (pm_trace_is_tracing()) fail("tracing at the start of the input");
    mode = TRACE_OFF;
    mean = 0;
    provider_on = false;
    step = 0;

    /* Reproducible sampling: the workers' seeds depend on the input only. */
    uint64_t seed = 0x9E3779B97F4A7C15ull * (size + 1);
    for (size_t i = 0; i < size && i < 8; i++) seed = (seed ^ data[i]) * 0x100000001B3ull;
    pthread_t threads[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        worker_seed[i] = seed;
        start_worker(threads, i);
    }
    for (size_t at = 0; at + 4 <= size; at += 4, step++) {
        request r = {decode(data[at]), data[at + 2], data[at + 3]};
        hand_over(threads, data[at + 1] % WORKERS, r);
        check_traced_memory();
        if (r.what >= ACT_TRACE_FULL || (step + 1) % CHECK_EVERY == 0) check_all_traces();
        if ((step + 1) % CHECK_EVERY == 0) heap_check("during the tape");
    }
    /* Everything left is freed round-robin by the workers, so by threads that did not all
     * allocate it; a session still running then holds no trace. */
    for (int who = 0; live_count > 0; who = (who + 1) % WORKERS) {
        hand_over(threads, who, (request){ACT_FREE, 0, 0});
    }
    check_traced_memory();
    pm_trace_stop();
    mode = TRACE_OFF;
    if (pm_trace_set_frame_provider(NULL, NULL) != 0) fail("removing the frame provider failed");
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
    pm_get_raw_stats(&raw);
    if (raw.live != raw_live_before) {
        fail("raw live count %llu at the end, %llu at the start", (unsigned long long)raw.live,
             (unsigned long long)raw_live_before);
    }
    return 0;
}
