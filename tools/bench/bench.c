/*
 * bench.c — one allocator, one kernel, one process: the measuring half of tools/bench.
 *
 *   bench --allocator=NAME --kernel=NAME [options]
 *
 * prints one line "RESULT {json}" per run. tools/bench/compare.py runs it for every
 * allocator and kernel, repeatedly and interleaved, and under callgrind; this file only
 * measures. The allocators are the rows of `variants[]` below (one entry each):
 *
 *   pymalloc-mt        pm_obj_malloc / pm_obj_realloc / pm_obj_free, GIL mode: the object
 *                      domain with its default allocator and no per-thread cache.
 *   pymalloc-mt-mem    the same pymalloc through the mem domain (pm_mem_*).
 *   pymalloc-mt-raw    the raw domain (pm_raw_*): the C library's malloc behind our
 *                      lock-free domain table; thread-safe without any lock.
 *   pymalloc-mt-debug  the object domain under CPython's debug hooks
 *                      (PYTHONMALLOC=pymalloc_debug); their overhead is the ratio of rows.
 *   cpython            PyObject_Malloc / _Realloc / _Free of Debian's libpython3.11 after
 *                      Py_Initialize (cpython_ops.c); in the multi-thread kernels each
 *                      thread holds CPython's own GIL.
 *   cpython-mutex      the same pymalloc made thread-safe by one pthread mutex locked around
 *                      every call (multi-thread kernels only).
 *   malloc             the C library's malloc / realloc / free: glibc, or mimalloc, jemalloc
 *                      or tcmalloc when compare.py puts one in LD_PRELOAD (the "malloc_impl"
 *                      field says which one actually answered, so a preload that did not
 *                      take is seen).
 *   noop               functions that return a static buffer and do nothing: the loop alone.
 *
 * How the GIL-bound domains are held. Single-thread kernels: the thread takes the GIL once
 * before a pass and releases it after, so no GIL call is inside a timed loop. Multi-thread
 * kernels: each worker holds the GIL while it works and offers it every GIL_SLICE_OPS
 * operations (pm_gil_yield for pm_gil, which hands over only when a waiter has asked, after
 * the 5 ms switch interval; for CPython, PyEval_SaveThread + PyEval_RestoreThread, the
 * closest the public API has), and lets go of it whenever it must wait for another thread.
 * That is how threads of an interpreter share a GIL: the domain is never used by two
 * threads at once, and a second thread adds no throughput. The mutex rows lock around
 * every single call instead, which is what a thread-safe malloc built from pymalloc and a
 * lock would do.
 *
 * The kernels (sizes are uniform in 1..512 unless fixed; all random numbers, indices and
 * permutations are drawn before the timed region, which only allocates, writes one byte
 * into each new block, as initialising an object would, and frees):
 *
 *   pair16 / pair64 / pair256 / pair512  malloc(n) + free in a loop, one other block of
 *                  the same size kept live (as any program has); ns and instructions per pair.
 *   pair4096       the same above pymalloc's 512-byte limit: pymalloc passes it to the raw
 *                  domain, so this row measures the large-block route.
 *   pair64_empty   the same with nothing else live in the size class: for a pool allocator
 *                  every free empties the pool (CPython's classes are never empty after
 *                  start-up, so for it this is the same as pair64).
 *   churn          100,000 live slots of random sizes; each step frees a random slot and
 *                  allocates a new random size into it. Per step.
 *   batch          1,000,000 blocks allocated, then freed in random order; per block
 *                  (alloc + free), in a fresh process. RSS while live and after.
 *   batch_rounds   the same, --rounds times in one process; the rounds after the first show
 *                  what re-using (or re-faulting) released memory costs. RSS after the end.
 *   rss32          1,000,000 live 32-byte blocks: RSS growth while live, RSS after freeing.
 *   realloc_grow   a buffer grown from 1 to 4096 bytes by random steps of 1..16, freed,
 *                  again and again; per realloc call.
 *
 * Multi-thread kernels (worker threads; the main thread only starts, times and joins them):
 *
 *   mt_churn       --threads workers, each churning a private set of --slots live blocks
 *                  (10,000 by default) as churn does, --iters steps each. ns per step per
 *                  thread (wall time of the whole run / steps of one thread) and total
 *                  throughput; compare.py divides 2-thread by 1-thread throughput. Where the
 *                  wall time goes beyond CPU time, the result says: context switches in
 *                  the timed loops, each thread's own loop time, how late the last loop
 *                  started after the main thread's go (on this VM, 1-5 ms at times), and on
 *                  how many CPUs the loops started (two workers on one CPU at the go wait
 *                  for the scheduler to move one: that is most of such a lag).
 *   prodcons       one producer allocates --blocks blocks and passes each through a ring of
 *                  RING_SLOTS pointers to one consumer, which reads and frees it: every block
 *                  is freed by the thread that did not allocate it. ns per block.
 *   rss_threads    --threads workers each allocate --blocks blocks and keep them live; RSS
 *                  growth with all of them live, and after all are freed (8 x 10,000 against
 *                  1 x 80,000 shows what spreading blocks over threads costs in memory).
 *   thread_life    --iters short-lived threads, one after another: each allocates
 *                  LIFE_BLOCKS blocks, frees them and exits, as a runtime's helper threads
 *                  do. ns per thread from create to join, and the median over the threads
 *                  of their first malloc (the cost of a cache's start: attaching a heap,
 *                  taking a first pool; and at exit, giving them back).
 *
 * The kernel functions are noinline so that callgrind's per-function output names them (the
 * loop's own instructions show there, not under main).
 *
 * Timing. CLOCK_MONOTONIC around the timed region only; no averaging inside the process:
 * compare.py takes medians over processes run in interleaved rounds, so that machine noise
 * (the other core's load, frequency changes) falls on every allocator alike.
 *
 * Instructions. Every timed region is bracketed by CALLGRIND_TOGGLE_COLLECT, so under
 * `valgrind --tool=callgrind --collect-atstart=no` only the kernel's loop is counted, not
 * start-up (CPython's Py_Initialize alone is tens of millions of instructions) nor the
 * drawing of random numbers. The loop itself (reading precomputed sizes, storing pointers,
 * the indirect calls) is not the allocator's cost, so with --loop the same kernel runs
 * again, with the same inputs, on the no-op functions and without any lock, and compare.py
 * reports (real - loop) / ops: the allocator's own instructions per operation, including
 * what it takes to make it thread-safe (a mutex, GIL hand-offs). CALLGRIND_DUMP_STATS after
 * each run puts the two counts in separate dump files. Callgrind's collection state is per
 * thread, so in the multi-thread kernels each worker brackets its own timed loop and the
 * counts are summed over the workers. Callgrind runs threads one at a time; the few
 * instructions of a thread waiting for another (a bounded spin, then sched_yield) are
 * counted too. Outside valgrind the client requests
 * are a few no-op instructions outside the timed loops.
 *
 * Memory. Anonymous RSS (resident minus file-backed and shared pages) from /proc/self/statm,
 * read with open/read (fopen would allocate through the allocator being measured): the
 * heap's memory, without the library code a first call happens to page in (64 KiB of the
 * C library's text showed up in one pymalloc-mt rss32 round, where CPython's interpreter
 * had paged the same code in during start-up). The benchmark's own arrays are mmap'd and
 * pre-faulted before the first reading, so deltas are the allocator's alone. Every result
 * also carries the process's peak RSS (getrusage ru_maxrss, all pages) and the RSS just
 * before the kernel ran.
 */
#define _GNU_SOURCE /* RTLD_DEFAULT */

#include "tools/bench/bench.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <valgrind/callgrind.h>

#include "alloc/pymalloc_mt.h"
#include "gil/gil.h"

/* ---- the no-op allocator ------------------------------------------------------------- */

/* Large enough for realloc_grow's largest request (4096 bytes). */
static _Alignas(64) char noop_block[8192];

/* noinline and called through a pointer chosen at run time: the compiler cannot inline or
 * remove the call, so the loop run executes exactly the real loop minus the allocator. */
__attribute__((noinline)) static void *noop_malloc(size_t size) {
    (void)size;
    __asm__ volatile("" ::: "memory");
    return noop_block;
}

__attribute__((noinline)) static void *noop_realloc(void *ptr, size_t size) {
    (void)ptr;
    (void)size;
    __asm__ volatile("" ::: "memory");
    return noop_block;
}

__attribute__((noinline)) static void noop_free(void *ptr) {
    (void)ptr;
    __asm__ volatile("" ::: "memory");
}

static const bench_ops noop_ops = {noop_malloc, noop_realloc, noop_free};

/* ---- the allocators under test -------------------------------------------------------- */

typedef enum family {
    FAMILY_PYMALLOC_MT,
    FAMILY_CPYTHON,
    FAMILY_LIBC,
    FAMILY_NOOP,
} family;

/* What makes an allocator safe to call from several threads. */
typedef enum sync_kind {
    SYNC_NONE,        /* thread-safe by itself: the C allocators, pymalloc-mt's raw domain */
    SYNC_PM_GIL,      /* pymalloc-mt's mem and object domains in GIL mode: pm_gil */
    SYNC_CPYTHON_GIL, /* CPython's pymalloc behind CPython's own GIL */
    SYNC_MUTEX,       /* one pthread mutex locked around every call */
} sync_kind;

/* One row of compare.py's tables. Adding an allocator variant is one entry here and one
 * Row in compare.py's ROWS. */
typedef struct variant {
    const char *name; /* --allocator= */
    family family;
    pm_domain domain;   /* FAMILY_PYMALLOC_MT: whose entry points */
    bool debug_hooks;   /* FAMILY_PYMALLOC_MT: CPython's debug hooks installed first */
    bool free_threaded; /* FAMILY_PYMALLOC_MT: free-threaded mode (see setup_pymalloc_mt) */
    sync_kind sync;
    bool threaded_only; /* meaningful only in the multi-thread kernels */
    bool thread_caches; /* FAMILY_PYMALLOC_MT: per-thread caches (pm_init) */
} variant;

static const variant variants[] = {
    {"pymalloc-mt", FAMILY_PYMALLOC_MT, PM_DOMAIN_OBJ, false, false, SYNC_PM_GIL, false, false},
    {"pymalloc-mt-mem", FAMILY_PYMALLOC_MT, PM_DOMAIN_MEM, false, false, SYNC_PM_GIL, false, false},
    {"pymalloc-mt-raw", FAMILY_PYMALLOC_MT, PM_DOMAIN_RAW, false, false, SYNC_NONE, false, false},
    {"pymalloc-mt-debug", FAMILY_PYMALLOC_MT, PM_DOMAIN_OBJ, true, false, SYNC_PM_GIL, false, false},
    /* Free-threaded mode needs no lock at all; GIL mode with thread caches still takes the
     * GIL (issue 6 asks for GIL mode measured with and without the cache). */
    {"pymalloc-mt-ft", FAMILY_PYMALLOC_MT, PM_DOMAIN_OBJ, false, true, SYNC_NONE, false, true},
    {"pymalloc-mt-cached", FAMILY_PYMALLOC_MT, PM_DOMAIN_OBJ, false, false, SYNC_PM_GIL, false,
     true},
    {"cpython", FAMILY_CPYTHON, PM_DOMAIN_OBJ, false, false, SYNC_CPYTHON_GIL, false, false},
    {"cpython-mutex", FAMILY_CPYTHON, PM_DOMAIN_OBJ, false, false, SYNC_MUTEX, true, false},
    {"malloc", FAMILY_LIBC, PM_DOMAIN_RAW, false, false, SYNC_NONE, false, false},
    {"noop", FAMILY_NOOP, PM_DOMAIN_RAW, false, false, SYNC_NONE, false, false},
};

static const variant noop_variant = {"noop", FAMILY_NOOP, PM_DOMAIN_RAW, false, false,
                                     SYNC_NONE, false, false};

/* ---- holding what a domain requires, in worker threads ------------------------------- */

/* Operations between two offers of the GIL: small enough that a waiter's drop request
 * (after 5 ms) is honoured within microseconds, large enough that the offer costs nothing
 * per operation (one relaxed load for pm_gil). */
enum { GIL_SLICE_OPS = 1024 };

static pthread_mutex_t call_mutex = PTHREAD_MUTEX_INITIALIZER;

/* The GIL functions are called conditionally on the sync kind, which clang's analysis
 * cannot follow; the kernels call the domains through plain function pointers, so the
 * analysis has nothing to check in them either. */
static void sync_thread_begin(sync_kind sync) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (sync == SYNC_PM_GIL) pm_gil_acquire();
    else if (sync == SYNC_CPYTHON_GIL) bench_cpython_thread_enter();
}

static void sync_thread_end(sync_kind sync) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (sync == SYNC_PM_GIL) pm_gil_release();
    else if (sync == SYNC_CPYTHON_GIL) bench_cpython_thread_exit();
}

/* Before waiting for another thread (a barrier, a full or empty ring): let go of the GIL,
 * or the other thread could never run. */
static void sync_pause(sync_kind sync) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (sync == SYNC_PM_GIL) pm_gil_release();
    else if (sync == SYNC_CPYTHON_GIL) bench_cpython_gil_drop();
}

static void sync_resume(sync_kind sync) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (sync == SYNC_PM_GIL) pm_gil_acquire();
    else if (sync == SYNC_CPYTHON_GIL) bench_cpython_gil_take();
}

/* Called after every operation i: every GIL_SLICE_OPS, offer the GIL. */
static inline void sync_slice(sync_kind sync, uint64_t i) PM_NO_THREAD_SAFETY_ANALYSIS {
    if ((i & (GIL_SLICE_OPS - 1)) != GIL_SLICE_OPS - 1) return;
    if (sync == SYNC_PM_GIL) {
        pm_gil_yield();
    } else if (sync == SYNC_CPYTHON_GIL) {
        bench_cpython_gil_drop();
        bench_cpython_gil_take();
    }
}

static inline void call_lock(sync_kind sync) {
    if (sync == SYNC_MUTEX) pthread_mutex_lock(&call_mutex);
}

static inline void call_unlock(sync_kind sync) {
    if (sync == SYNC_MUTEX) pthread_mutex_unlock(&call_mutex);
}

/* A thread waiting for another: spin briefly, then give the core away (two cores, shared
 * with other work: a waiter that only spins can keep the thread it waits for off the CPU). */
static inline void backoff(unsigned *spins) {
    if (++*spins < 64) __builtin_ia32_pause();
    else sched_yield();
}

/* ---- helpers ------------------------------------------------------------------------- */

__attribute__((noreturn, cold, noinline)) static void out_of_memory(void) {
    static const char message[] = "bench: the allocator returned NULL\n";
    (void)!write(2, message, sizeof message - 1);
    abort();
}

#define CHECK(p) \
    do { \
        if (__builtin_expect((p) == NULL, 0)) out_of_memory(); \
    } while (0)

static uint64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Time spent in timed regions: wall (CLOCK_MONOTONIC, the figure reported) and this thread's
 * CPU time (user + system, page faults included). On a loaded machine wall > cpu shows
 * how much of the wall time the process spent waiting for a core. */
typedef struct span {
    uint64_t wall;
    uint64_t cpu;
} span;

/* The clocks are read outside callgrind's collection window so that clock_gettime is not
 * counted (it would cancel out in real - loop anyway). */
static span region_start;

static void region_begin(void) {
    region_start.cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    region_start.wall = clock_ns(CLOCK_MONOTONIC);
    CALLGRIND_TOGGLE_COLLECT;
}

static span region_end(void) {
    CALLGRIND_TOGGLE_COLLECT;
    span elapsed;
    elapsed.wall = clock_ns(CLOCK_MONOTONIC) - region_start.wall;
    elapsed.cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID) - region_start.cpu;
    return elapsed;
}

/* The benchmark's own arrays: mapped and pre-faulted, never from the allocator under test. */
static void *bench_array(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                   -1, 0);
    if (p == MAP_FAILED) {
        perror("bench: mmap");
        exit(2);
    }
    memset(p, 0, bytes); /* in case MAP_POPULATE was ignored */
    return p;
}

/* Resident set size in KiB. */
static int64_t rss_kib(void) {
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    unsigned long long size_pages = 0, resident_pages = 0, shared_pages = 0;
    if (sscanf(buf, "%llu %llu %llu", &size_pages, &resident_pages, &shared_pages) != 3) return -1;
    unsigned long long anonymous_pages = resident_pages - shared_pages;
    return (int64_t)(anonymous_pages * (unsigned long long)sysconf(_SC_PAGESIZE) / 1024);
}

/* splitmix64: fast, good enough for sizes and indices, and reproducible from the seed. */
static uint64_t rng_state;

static uint64_t rng_next(void) {
    uint64_t z = (rng_state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static uint32_t rng_below(uint32_t n) {
    return (uint32_t)(((rng_next() >> 32) * n) >> 32);
}

static uint16_t *random_sizes(size_t count, uint32_t lo, uint32_t hi) {
    uint16_t *sizes = bench_array(count * sizeof *sizes);
    for (size_t i = 0; i < count; i++) sizes[i] = (uint16_t)(lo + rng_below(hi - lo + 1));
    return sizes;
}

static uint32_t *random_permutation(size_t count) {
    uint32_t *perm = bench_array(count * sizeof *perm);
    for (size_t i = 0; i < count; i++) perm[i] = (uint32_t)i;
    for (size_t i = count - 1; i > 0; i--) { /* Fisher-Yates */
        size_t j = rng_below((uint32_t)(i + 1));
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    return perm;
}

/* ---- results ------------------------------------------------------------------------- */

/* One JSON object per run, built in a static buffer and written with write(2). */
static char result_text[4096];
static size_t result_length;

static void result_append(const char *text) {
    size_t n = strlen(text);
    if (result_length + n >= sizeof result_text) n = sizeof result_text - 1 - result_length;
    memcpy(result_text + result_length, text, n);
    result_length += n;
    result_text[result_length] = '\0';
}

/* value is escaped for JSON (CPython's version string has a newline in it). */
static void result_string(const char *key, const char *value) {
    char item[256];
    snprintf(item, sizeof item, "%s\"%s\": \"", result_length > 1 ? ", " : "", key);
    result_append(item);
    for (const char *c = value; *c != '\0'; c++) {
        char escaped[8];
        if (*c == '"' || *c == '\\') snprintf(escaped, sizeof escaped, "\\%c", *c);
        else if ((unsigned char)*c < 0x20)
            snprintf(escaped, sizeof escaped, "\\u%04x", (unsigned)*c);
        else snprintf(escaped, sizeof escaped, "%c", *c);
        result_append(escaped);
    }
    result_append("\"");
}

static void result_number(const char *key, double value) {
    char item[128];
    snprintf(item, sizeof item, "%s\"%s\": %.6g", result_length > 1 ? ", " : "", key, value);
    result_append(item);
}

static void result_integer(const char *key, int64_t value) {
    char item[128];
    snprintf(item, sizeof item, "%s\"%s\": %" PRId64, result_length > 1 ? ", " : "", key, value);
    result_append(item);
}

static void result_time(const span *t, uint64_t ops) {
    result_integer("ops", (int64_t)ops);
    result_integer("ns_total", (int64_t)t->wall);
    result_number("ns_per_op", (double)t->wall / (double)ops);
    result_number("cpu_ns_per_op", (double)t->cpu / (double)ops);
}

/* ---- kernels ------------------------------------------------------------------------- */

typedef struct run {
    const bench_ops *ops;
    sync_kind sync;   /* multi-thread kernels: what each worker holds */
    uint64_t iters;   /* pairs, churn steps (per thread), or realloc_grow buffers */
    size_t blocks;    /* batch, batch_rounds, rss32, prodcons; rss_threads: per thread */
    size_t slots;     /* churn; mt_churn: per thread */
    int rounds;       /* batch_rounds */
    unsigned threads; /* mt_churn, rss_threads */
} run;

enum { PAIR_WARMUP = 10000 };

/* anchored: one block of the same size stays live throughout, as in any real program (and
 * in CPython after start-up, whose classes all hold the interpreter's objects), so a
 * pool-based allocator stays on its fast path. Not anchored (pair64_empty): the pair's
 * block is the only one in its size class, and each free empties its pool. */
__attribute__((noinline)) static void kernel_pair(const run *r, size_t size, bool anchored) {
    void *(*m)(size_t) = r->ops->malloc;
    void (*f)(void *) = r->ops->free;
    char *anchor = NULL;
    if (anchored) {
        anchor = m(size);
        CHECK(anchor);
        anchor[0] = 1;
    }
    for (int i = 0; i < PAIR_WARMUP; i++) { /* first pool / arena out of the way */
        char *p = m(size);
        CHECK(p);
        p[0] = (char)i;
        f(p);
    }
    uint64_t n = r->iters;
    region_begin();
    for (uint64_t i = 0; i < n; i++) {
        char *p = m(size);
        CHECK(p);
        p[0] = (char)i;
        f(p);
    }
    span t = region_end();
    if (anchored) f(anchor);
    result_time(&t, n);
}

__attribute__((noinline)) static void kernel_churn(const run *r) {
    void *(*m)(size_t) = r->ops->malloc;
    void (*f)(void *) = r->ops->free;
    size_t slots = r->slots;
    uint64_t n = r->iters;
    char **slot = bench_array(slots * sizeof *slot);
    uint16_t *fill_sizes = random_sizes(slots, 1, 512);
    uint16_t *step_sizes = random_sizes(n, 1, 512);
    uint32_t *step_slots = bench_array(n * sizeof *step_slots);
    for (uint64_t s = 0; s < n; s++) step_slots[s] = rng_below((uint32_t)slots);

    for (size_t i = 0; i < slots; i++) {
        char *p = m(fill_sizes[i]);
        CHECK(p);
        p[0] = (char)i;
        slot[i] = p;
    }
    region_begin();
    for (uint64_t s = 0; s < n; s++) {
        uint32_t j = step_slots[s];
        f(slot[j]);
        char *p = m(step_sizes[s]);
        CHECK(p);
        p[0] = (char)s;
        slot[j] = p;
    }
    span t = region_end();
    for (size_t i = 0; i < slots; i++) f(slot[i]);
    result_time(&t, n);
}

typedef struct batch_inputs {
    uint16_t *sizes;
    uint32_t *free_order;
} batch_inputs;

typedef struct batch_outcome {
    span time;          /* allocation phase + free phase */
    int64_t rss_live;   /* KiB, with every block live */
} batch_outcome;

/* Allocates blocks[i] of sizes[i] for every i, then frees them in free_order. */
static batch_outcome batch_round(const bench_ops *ops, const batch_inputs *in, char **blocks,
                                 size_t count) {
    void *(*m)(size_t) = ops->malloc;
    void (*f)(void *) = ops->free;
    const uint16_t *sizes = in->sizes;
    const uint32_t *order = in->free_order;
    batch_outcome out;
    region_begin();
    for (size_t i = 0; i < count; i++) {
        char *p = m(sizes[i]);
        CHECK(p);
        p[0] = (char)i;
        blocks[i] = p;
    }
    out.time = region_end();
    out.rss_live = rss_kib();
    region_begin();
    for (size_t i = 0; i < count; i++) f(blocks[order[i]]);
    span freeing = region_end();
    out.time.wall += freeing.wall;
    out.time.cpu += freeing.cpu;
    return out;
}

/* batch (rounds == 1), batch_rounds and rss32 (fixed size 32). */
__attribute__((noinline)) static void kernel_batch(const run *r, int rounds, uint32_t fixed_size) {
    size_t count = r->blocks;
    char **blocks = bench_array(count * sizeof *blocks);
    batch_inputs *inputs = bench_array((size_t)rounds * sizeof *inputs);
    for (int k = 0; k < rounds; k++) {
        inputs[k].sizes = fixed_size ? random_sizes(count, fixed_size, fixed_size)
                                     : random_sizes(count, 1, 512);
        inputs[k].free_order = random_permutation(count);
    }
    /* One block allocated and freed before the start: every allocator's code is paged in
     * and its first-use set-up done, as CPython's already were during its start-up, so that
     * the growth measured is the blocks' memory (for pymalloc-mt, the cold start alone
     * faulted in about 90 KiB of code and set-up). */
    r->ops->free(r->ops->malloc(inputs[0].sizes[0]));
    int64_t rss_start = rss_kib();
    int64_t rss_peak = rss_start;
    span first = {0, 0}, later = {0, 0};
    char item[32];
    for (int k = 0; k < rounds; k++) {
        batch_outcome o = batch_round(r->ops, &inputs[k], blocks, count);
        if (o.rss_live > rss_peak) rss_peak = o.rss_live;
        snprintf(item, sizeof item, "round%d_ns_per_op", k + 1);
        result_number(item, (double)o.time.wall / (double)count);
        if (k == 0) {
            first = o.time;
        } else {
            later.wall += o.time.wall;
            later.cpu += o.time.cpu;
        }
    }
    int64_t rss_end = rss_kib();
    result_number("first_ns_per_op", (double)first.wall / (double)count);
    result_number("first_cpu_ns_per_op", (double)first.cpu / (double)count);
    /* batch and rss32: the one round; batch_rounds: rounds 2..N, per block and round. */
    if (rounds > 1) result_time(&later, count * (uint64_t)(rounds - 1));
    else result_time(&first, count);
    result_integer("rss_start_kib", rss_start);
    result_integer("rss_live_kib", rss_peak - rss_start);  /* growth at the peak */
    result_integer("rss_end_kib", rss_end - rss_start);    /* growth left after the last free */
}

enum { GROW_MAX = 4096, GROW_STEP_MAX = 16, GROW_STEPS = 1 << 16 };

__attribute__((noinline)) static void kernel_realloc_grow(const run *r) {
    void *(*m)(size_t) = r->ops->malloc;
    void *(*re)(void *, size_t) = r->ops->realloc;
    void (*f)(void *) = r->ops->free;
    uint16_t *steps = random_sizes(GROW_STEPS, 1, GROW_STEP_MAX);
    uint64_t buffers = r->iters;

    /* Count the realloc calls beforehand, so that the timed loop counts nothing. */
    uint64_t reallocs = 0;
    uint32_t k = 0;
    for (uint64_t b = 0; b < buffers; b++) {
        for (uint32_t size = 1; size < GROW_MAX; reallocs++) {
            size += steps[k++ & (GROW_STEPS - 1)];
            if (size > GROW_MAX) size = GROW_MAX;
        }
    }

    k = 0;
    region_begin();
    for (uint64_t b = 0; b < buffers; b++) {
        uint32_t size = 1;
        char *p = m(size);
        CHECK(p);
        p[0] = 1;
        while (size < GROW_MAX) {
            size += steps[k++ & (GROW_STEPS - 1)];
            if (size > GROW_MAX) size = GROW_MAX;
            p = re(p, size);
            CHECK(p);
            p[size - 1] = (char)size;
        }
        f(p);
    }
    span t = region_end();
    result_integer("buffers", (int64_t)buffers);
    result_time(&t, reallocs);
}


/* ---- multi-thread kernels ------------------------------------------------------------ *
 * Workers run in lock-step with the main thread through one barrier: each kernel names its
 * phases, and every thread passes each phase's barrier once. Workers let go of the GIL
 * (sync_pause) before every barrier. The main thread only reads clocks and RSS between
 * phases; it never allocates through the allocator under test. */

enum { MAX_THREADS = 64, RING_SLOTS = 1024 };

typedef struct worker {
    pthread_t thread;
    const run *r;
    pthread_barrier_t *barrier;
    unsigned index;
    /* inputs, drawn by the main thread before the workers start */
    char **blocks;
    uint16_t *fill_sizes;
    uint16_t *step_sizes;
    uint32_t *step_slots;
    /* outputs */
    uint64_t cpu_ns;  /* thread CPU time in the timed phase */
    long switches_voluntary, switches_involuntary; /* mt_churn: context switches, timed phase */
    uint64_t loop_start_ns, loop_end_ns; /* mt_churn: CLOCK_MONOTONIC around the timed loop */
    int cpu_at_start;                     /* mt_churn: the CPU the timed loop started on */
    uint64_t checksum; /* prodcons: bytes read by the consumer, so the reads are not dead */
    uint64_t first_malloc_ns; /* thread_life: the thread's first malloc */
} worker;

/* The producer/consumer ring: single producer, single consumer; head and tail on their
 * own cache lines, published with release stores and read with acquire loads. */
typedef struct ring {
    _Alignas(64) uint64_t head; /* written by the producer */
    _Alignas(64) uint64_t tail; /* written by the consumer */
    _Alignas(64) char *slot[RING_SLOTS];
} ring;

static ring *the_ring;

/* Callgrind's collection state is per thread: each worker counts its own timed loop. The
 * main thread reads only the wall clock around the phases. */
static void worker_count_begin(void) {
    CALLGRIND_TOGGLE_COLLECT;
}

static void worker_count_end(void) {
    CALLGRIND_TOGGLE_COLLECT;
}

static uint64_t wall_start_ns;

static void wall_begin(void) {
    wall_start_ns = clock_ns(CLOCK_MONOTONIC);
}

static uint64_t wall_end(void) {
    return clock_ns(CLOCK_MONOTONIC) - wall_start_ns;
}

static void phase(pthread_barrier_t *barrier) {
    pthread_barrier_wait(barrier);
}

/* This thread's context switches so far: voluntary (it blocked) and involuntary. */
static void thread_switches(long *voluntary, long *involuntary) {
    struct rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) != 0) {
        *voluntary = *involuntary = 0;
        return;
    }
    *voluntary = usage.ru_nvcsw;
    *involuntary = usage.ru_nivcsw;
}

static uint64_t thread_cpu_ns(void) {
    return clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

/* Starts r->threads workers running body, with per-thread inputs already in w[]. */
static void start_workers(worker *w, unsigned count, void *(*body)(void *)) {
    for (unsigned i = 0; i < count; i++) {
        int error = pthread_create(&w[i].thread, NULL, body, &w[i]);
        if (error != 0) {
            fprintf(stderr, "bench: pthread_create: %s\n", strerror(error));
            exit(2);
        }
    }
}

static void join_workers(worker *w, unsigned count) {
    for (unsigned i = 0; i < count; i++) pthread_join(w[i].thread, NULL);
}

static worker *make_workers(const run *r, unsigned count, pthread_barrier_t *barrier) {
    worker *w = bench_array(count * sizeof *w);
    pthread_barrier_init(barrier, NULL, count + 1); /* + the main thread */
    for (unsigned i = 0; i < count; i++) {
        w[i].r = r;
        w[i].barrier = barrier;
        w[i].index = i;
    }
    return w;
}

/* Fills n blocks of sizes[i] into blocks[], then frees them, under the worker's sync. */
static void fill_blocks(const run *r, char **blocks, const uint16_t *sizes, size_t n) {
    void *(*m)(size_t) = r->ops->malloc;
    sync_kind sync = r->sync;
    for (size_t i = 0; i < n; i++) {
        call_lock(sync);
        char *p = m(sizes[i]);
        call_unlock(sync);
        CHECK(p);
        p[0] = (char)i;
        blocks[i] = p;
        sync_slice(sync, i);
    }
}

static void free_blocks(const run *r, char **blocks, size_t n) {
    void (*f)(void *) = r->ops->free;
    sync_kind sync = r->sync;
    for (size_t i = 0; i < n; i++) {
        call_lock(sync);
        f(blocks[i]);
        call_unlock(sync);
        sync_slice(sync, i);
    }
}

/* Phases: filled, go, done. */
static void *mt_churn_worker(void *arg) {
    worker *w = arg;
    const run *r = w->r;
    void *(*m)(size_t) = r->ops->malloc;
    void (*f)(void *) = r->ops->free;
    sync_kind sync = r->sync;
    char **slot = w->blocks;
    const uint16_t *sizes = w->step_sizes;
    const uint32_t *slots = w->step_slots;
    uint64_t n = r->iters;

    sync_thread_begin(sync);
    fill_blocks(r, slot, w->fill_sizes, r->slots);
    sync_pause(sync);
    phase(w->barrier); /* filled */
    phase(w->barrier); /* go */
    long voluntary_start, involuntary_start;
    thread_switches(&voluntary_start, &involuntary_start);
    uint64_t cpu_start = thread_cpu_ns();
    w->loop_start_ns = clock_ns(CLOCK_MONOTONIC);
    w->cpu_at_start = sched_getcpu();
    worker_count_begin();
    sync_resume(sync);
    for (uint64_t s = 0; s < n; s++) {
        uint32_t j = slots[s];
        call_lock(sync);
        f(slot[j]);
        call_unlock(sync);
        call_lock(sync);
        char *p = m(sizes[s]);
        call_unlock(sync);
        CHECK(p);
        p[0] = (char)s;
        slot[j] = p;
        sync_slice(sync, s);
    }
    sync_pause(sync);
    worker_count_end();
    w->loop_end_ns = clock_ns(CLOCK_MONOTONIC);
    w->cpu_ns = thread_cpu_ns() - cpu_start;
    thread_switches(&w->switches_voluntary, &w->switches_involuntary);
    w->switches_voluntary -= voluntary_start;
    w->switches_involuntary -= involuntary_start;
    phase(w->barrier); /* done */
    sync_resume(sync);
    free_blocks(r, slot, r->slots);
    sync_thread_end(sync);
    return NULL;
}

__attribute__((noinline)) static void kernel_mt_churn(const run *r) {
    unsigned count = r->threads;
    pthread_barrier_t barrier;
    worker *w = make_workers(r, count, &barrier);
    for (unsigned i = 0; i < count; i++) {
        w[i].blocks = bench_array(r->slots * sizeof *w[i].blocks);
        w[i].fill_sizes = random_sizes(r->slots, 1, 512);
        w[i].step_sizes = random_sizes(r->iters, 1, 512);
        w[i].step_slots = bench_array(r->iters * sizeof *w[i].step_slots);
        for (uint64_t s = 0; s < r->iters; s++) w[i].step_slots[s] = rng_below((uint32_t)r->slots);
    }
    start_workers(w, count, mt_churn_worker);
    phase(&barrier); /* filled */
    wall_begin();
    phase(&barrier); /* go */
    phase(&barrier); /* done */
    uint64_t wall = wall_end();
    join_workers(w, count);
    pthread_barrier_destroy(&barrier);

    uint64_t cpu = 0;
    long voluntary = 0, involuntary = 0;
    uint64_t longest_loop = 0, shortest_loop = UINT64_MAX, latest_start = 0;
    uint64_t cpus_at_start = 0; /* a bit per CPU (the first 64) */
    for (unsigned i = 0; i < count; i++) {
        cpu += w[i].cpu_ns;
        voluntary += w[i].switches_voluntary;
        involuntary += w[i].switches_involuntary;
        uint64_t loop = w[i].loop_end_ns - w[i].loop_start_ns;
        if (loop > longest_loop) longest_loop = loop;
        if (loop < shortest_loop) shortest_loop = loop;
        uint64_t start = w[i].loop_start_ns - wall_start_ns;
        if (start > latest_start) latest_start = start;
        if (w[i].cpu_at_start >= 0 && w[i].cpu_at_start < 64) {
            cpus_at_start |= (uint64_t)1 << w[i].cpu_at_start;
        }
    }
    uint64_t total_ops = r->iters * count;
    result_integer("threads", count);
    result_integer("ops", (int64_t)total_ops);
    result_integer("ns_total", (int64_t)wall);
    /* Per step per thread: each thread did r->iters steps in the run's wall time. */
    result_number("ns_per_op", (double)wall / (double)r->iters);
    result_number("cpu_ns_per_op", (double)cpu / (double)total_ops);
    result_number("mops_per_s", (double)total_ops * 1e3 / (double)wall);
    /* Where wall time exceeds CPU time: blocking (voluntary) or preemption (involuntary). */
    result_integer("switches_voluntary", voluntary);
    result_integer("switches_involuntary", involuntary);
    /* ... or an unequal split: each thread's own loop, and how late the last one started. */
    result_number("thread_longest_ns_per_op", (double)longest_loop / (double)r->iters);
    result_number("thread_shortest_ns_per_op", (double)shortest_loop / (double)r->iters);
    result_integer("latest_start_us", (int64_t)(latest_start / 1000));
    /* Fewer than min(threads, cores): the scheduler had put workers on one CPU at the go. */
    result_integer("cpus_at_start", __builtin_popcountll(cpus_at_start));
}

/* Phases: ready, go, done. Worker 0 produces, worker 1 consumes. */
static void *prodcons_worker(void *arg) {
    worker *w = arg;
    const run *r = w->r;
    sync_kind sync = r->sync;
    ring *q = the_ring;
    size_t n = r->blocks;
    bool producer = w->index == 0;

    sync_thread_begin(sync);
    sync_pause(sync);
    phase(w->barrier); /* ready */
    phase(w->barrier); /* go */
    uint64_t cpu_start = thread_cpu_ns();
    worker_count_begin();
    sync_resume(sync);
    if (producer) {
        void *(*m)(size_t) = r->ops->malloc;
        const uint16_t *sizes = w->step_sizes;
        uint64_t head = 0;
        for (size_t i = 0; i < n; i++) {
            call_lock(sync);
            char *p = m(sizes[i]);
            call_unlock(sync);
            CHECK(p);
            p[0] = (char)i;
            if (head - __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE) == RING_SLOTS) {
                sync_pause(sync); /* the consumer may need the GIL to make room */
                unsigned spins = 0;
                while (head - __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE) == RING_SLOTS) {
                    backoff(&spins);
                }
                sync_resume(sync);
            }
            q->slot[head % RING_SLOTS] = p;
            __atomic_store_n(&q->head, ++head, __ATOMIC_RELEASE);
            sync_slice(sync, i);
        }
    } else {
        void (*f)(void *) = r->ops->free;
        uint64_t tail = 0, checksum = 0;
        for (size_t i = 0; i < n; i++) {
            if (__atomic_load_n(&q->head, __ATOMIC_ACQUIRE) == tail) {
                sync_pause(sync);
                unsigned spins = 0;
                while (__atomic_load_n(&q->head, __ATOMIC_ACQUIRE) == tail) backoff(&spins);
                sync_resume(sync);
            }
            char *p = q->slot[tail % RING_SLOTS];
            __atomic_store_n(&q->tail, ++tail, __ATOMIC_RELEASE);
            checksum += (unsigned char)p[0];
            call_lock(sync);
            f(p);
            call_unlock(sync);
            sync_slice(sync, i);
        }
        w->checksum = checksum;
    }
    sync_pause(sync);
    worker_count_end();
    w->cpu_ns = thread_cpu_ns() - cpu_start;
    phase(w->barrier); /* done */
    sync_resume(sync);
    sync_thread_end(sync);
    return NULL;
}

__attribute__((noinline)) static void kernel_prodcons(const run *r) {
    pthread_barrier_t barrier;
    worker *w = make_workers(r, 2, &barrier);
    w[0].step_sizes = random_sizes(r->blocks, 1, 512);
    the_ring = bench_array(sizeof *the_ring);
    start_workers(w, 2, prodcons_worker);
    phase(&barrier); /* ready */
    wall_begin();
    phase(&barrier); /* go */
    phase(&barrier); /* done */
    uint64_t wall = wall_end();
    join_workers(w, 2);
    pthread_barrier_destroy(&barrier);
    result_integer("threads", 2);
    result_integer("ops", (int64_t)r->blocks);
    result_integer("ns_total", (int64_t)wall);
    result_number("ns_per_op", (double)wall / (double)r->blocks);
    result_number("cpu_ns_per_op", (double)(w[0].cpu_ns + w[1].cpu_ns) / (double)r->blocks);
    result_integer("checksum", (int64_t)w[1].checksum);
}

/* Phases: ready, go, live, measured. */
static void *rss_threads_worker(void *arg) {
    worker *w = arg;
    const run *r = w->r;
    sync_kind sync = r->sync;
    phase(w->barrier); /* ready: the main thread reads the starting RSS */
    phase(w->barrier); /* go */
    uint64_t cpu_start = thread_cpu_ns();
    worker_count_begin();
    sync_thread_begin(sync);
    fill_blocks(r, w->blocks, w->fill_sizes, r->blocks);
    sync_pause(sync);
    worker_count_end();
    w->cpu_ns = thread_cpu_ns() - cpu_start;
    phase(w->barrier); /* live: the main thread reads the RSS */
    phase(w->barrier); /* measured */
    sync_resume(sync);
    free_blocks(r, w->blocks, r->blocks);
    sync_thread_end(sync);
    return NULL;
}

__attribute__((noinline)) static void kernel_rss_threads(const run *r) {
    unsigned count = r->threads;
    pthread_barrier_t barrier;
    worker *w = make_workers(r, count, &barrier);
    for (unsigned i = 0; i < count; i++) {
        w[i].blocks = bench_array(r->blocks * sizeof *w[i].blocks);
        w[i].fill_sizes = random_sizes(r->blocks, 1, 512);
    }
    start_workers(w, count, rss_threads_worker);
    phase(&barrier); /* ready: every thread exists, its stack is mapped */
    int64_t rss_start = rss_kib();
    wall_begin();
    phase(&barrier); /* go */
    phase(&barrier); /* live */
    uint64_t wall = wall_end();
    int64_t rss_live = rss_kib();
    phase(&barrier); /* measured */
    join_workers(w, count);
    pthread_barrier_destroy(&barrier);
    int64_t rss_end = rss_kib();
    uint64_t total = r->blocks * count;
    result_integer("threads", count);
    result_integer("ops", (int64_t)total);
    result_integer("ns_total", (int64_t)wall);
    uint64_t cpu = 0;
    for (unsigned i = 0; i < count; i++) cpu += w[i].cpu_ns;
    result_number("ns_per_op", (double)wall / (double)total); /* allocation phase */
    result_number("cpu_ns_per_op", (double)cpu / (double)total);
    result_integer("rss_start_kib", rss_start);
    result_integer("rss_live_kib", rss_live - rss_start);
    result_integer("rss_end_kib", rss_end - rss_start);
}

enum { LIFE_BLOCKS = 16 };

static void *thread_life_worker(void *arg) {
    worker *w = arg;
    const run *r = w->r;
    void *(*m)(size_t) = r->ops->malloc;
    sync_kind sync = r->sync;
    char *blocks[LIFE_BLOCKS];
    sync_thread_begin(sync);
    for (size_t i = 0; i < LIFE_BLOCKS; i++) {
        uint64_t start = i == 0 ? clock_ns(CLOCK_MONOTONIC) : 0;
        call_lock(sync);
        blocks[i] = m(w->fill_sizes[i]);
        call_unlock(sync);
        if (i == 0) w->first_malloc_ns = clock_ns(CLOCK_MONOTONIC) - start;
        CHECK(blocks[i]);
        blocks[i][0] = (char)i;
    }
    free_blocks(r, blocks, LIFE_BLOCKS);
    sync_thread_end(sync);
    return NULL;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) static void kernel_thread_life(const run *r) {
    uint64_t n = r->iters;
    uint16_t *sizes = random_sizes(n * LIFE_BLOCKS, 1, 512);
    uint64_t *first = bench_array(n * sizeof *first);
    worker w = {.r = r};
    wall_begin();
    for (uint64_t t = 0; t < n; t++) {
        w.fill_sizes = sizes + t * LIFE_BLOCKS;
        start_workers(&w, 1, thread_life_worker);
        join_workers(&w, 1);
        first[t] = w.first_malloc_ns;
    }
    uint64_t wall = wall_end();
    qsort(first, n, sizeof *first, compare_u64);
    result_integer("threads", (int64_t)n);
    result_integer("ops", (int64_t)n);
    result_integer("ns_total", (int64_t)wall);
    result_number("ns_per_op", (double)wall / (double)n);
    result_number("first_malloc_median_ns", (double)first[n / 2]);
    result_number("first_malloc_p90_ns", (double)first[n * 9 / 10]);
}

/* ---- kernel table -------------------------------------------------------------------- */

typedef struct kernel {
    const char *name;
    void (*body)(const run *r);
    uint64_t default_iters; /* 0: the kernel has a fixed size instead */
    bool threaded;          /* runs worker threads: the domain's sync applies per thread */
} kernel;

static void pair16(const run *r) { kernel_pair(r, 16, true); }
static void pair64(const run *r) { kernel_pair(r, 64, true); }
static void pair256(const run *r) { kernel_pair(r, 256, true); }
static void pair512(const run *r) { kernel_pair(r, 512, true); }
static void pair4096(const run *r) { kernel_pair(r, 4096, true); }
static void pair64_empty(const run *r) { kernel_pair(r, 64, false); }
static void batch(const run *r) { kernel_batch(r, 1, 0); }
static void batch_rounds(const run *r) { kernel_batch(r, r->rounds, 0); }
static void rss32(const run *r) { kernel_batch(r, 1, 32); }

static const kernel kernels[] = {
    {"pair16", pair16, 10000000, false},
    {"pair64", pair64, 10000000, false},
    {"pair256", pair256, 10000000, false},
    {"pair512", pair512, 10000000, false},
    {"pair4096", pair4096, 10000000, false},
    {"pair64_empty", pair64_empty, 10000000, false},
    {"churn", kernel_churn, 4000000, false},
    {"batch", batch, 0, false},
    {"batch_rounds", batch_rounds, 0, false},
    {"rss32", rss32, 0, false},
    {"realloc_grow", kernel_realloc_grow, 10000, false},
    {"mt_churn", kernel_mt_churn, 4000000, true},
    {"prodcons", kernel_prodcons, 0, true},
    {"rss_threads", kernel_rss_threads, 0, true},
    {"thread_life", kernel_thread_life, 2000, true},
};

/* ---- pymalloc-mt's checks ------------------------------------------------------------ */

/* Correctness alongside speed, after a real pass: everything freed, and the heap
 * consistent. Adds the counts to the result; returns 0, or 1 after a message on stderr. */
static int pymalloc_checks(void) PM_GIL_REQUIRED {
    const char *problem = pm_heap_check();
    result_integer("pm_live_blocks", (int64_t)pm_allocated_blocks());
    size_t limit = pm_get_arena_reserve();
    result_integer("pm_arena_reserve", limit == SIZE_MAX ? -1 : (int64_t)limit);
    if (problem != NULL) {
        fprintf(stderr, "bench: heap check failed: %s\n", problem);
        return 1;
    }
    return 0;
}

/* ---- main ---------------------------------------------------------------------------- */

/* Which malloc answers calls to malloc: LD_PRELOAD peers export their own API too. */
static const char *malloc_implementation(void) {
    if (dlsym(RTLD_DEFAULT, "mi_malloc") != NULL) return "mimalloc";
    if (dlsym(RTLD_DEFAULT, "mallctl") != NULL) return "jemalloc";
    if (dlsym(RTLD_DEFAULT, "tc_malloc") != NULL) return "tcmalloc";
    return "glibc";
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench --allocator=NAME --kernel=NAME\n"
            "             [--iters=N] [--blocks=N] [--slots=N] [--rounds=N] [--threads=N]\n"
            "             [--seed=N] [--reserve=default|0|inf|BYTES] [--loop]\n"
            "allocators:");
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        fprintf(stderr, " %s", variants[i].name);
    }
    fprintf(stderr, "\nkernels:");
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++) {
        fprintf(stderr, " %s", kernels[i].name);
    }
    fprintf(stderr, "\n");
    exit(2);
}

static const char *option_value(const char *arg, const char *name) {
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && arg[n] == '=' ? arg + n + 1 : NULL;
}

static uint64_t parse_count(const char *text) {
    char *end;
    unsigned long long value = strtoull(text, &end, 10);
    if (*end != '\0' || value == 0) usage();
    return value;
}

/* Sets up a pymalloc-mt variant: the arena reserve, the debug hooks, and which domain's
 * entry points the kernels call. Returns 0, or 2 after a message. */
static int setup_pymalloc_mt(const variant *v, const char *reserve, bench_ops *ops) {
    /* The mode is chosen before anything allocates from mem or object. */
    pm_config config;
    pm_config_init(&config);
    config.free_threaded = v->free_threaded;
    config.thread_caches = v->thread_caches;
    if (pm_init(&config) != 0) {
        fprintf(stderr, "bench: %s: pm_init: %s\n", v->name, strerror(errno));
        return 2;
    }
    const char *installed = pm_current_allocator_name();
    if (installed == NULL || strcmp(installed, "pymalloc") != 0) {
        fprintf(stderr, "bench: the domains are not on pymalloc\n");
        return 2;
    }
    pm_gil_acquire(); /* pm_set_arena_reserve and pm_setup_debug_hooks require the GIL */
    if (strcmp(reserve, "inf") == 0) pm_set_arena_reserve(SIZE_MAX);
    else if (strcmp(reserve, "0") == 0) pm_set_arena_reserve(0);
    else if (strcmp(reserve, "default") != 0) pm_set_arena_reserve(parse_count(reserve));
    int status = 0;
    if (v->debug_hooks && pm_setup_debug_hooks() != 0) {
        fprintf(stderr, "bench: cannot install the debug hooks\n");
        status = 2;
    }
    pm_gil_release();
    switch (v->domain) {
    case PM_DOMAIN_RAW: *ops = (bench_ops){pm_raw_malloc, pm_raw_realloc, pm_raw_free}; break;
    case PM_DOMAIN_MEM: *ops = (bench_ops){pm_mem_malloc, pm_mem_realloc, pm_mem_free}; break;
    case PM_DOMAIN_OBJ: *ops = (bench_ops){pm_obj_malloc, pm_obj_realloc, pm_obj_free}; break;
    }
    return status;
}

/* What the calling thread holds around a single-thread pass, and what the main thread
 * lets go of while workers run: conditional on the sync kind (see sync_thread_begin). */
static void pass_begin(const variant *v, bool threaded) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (v->sync == SYNC_PM_GIL && !threaded) pm_gil_acquire();
    /* The main thread holds CPython's GIL since Py_Initialize; workers need it. */
    if (v->sync == SYNC_CPYTHON_GIL && threaded) bench_cpython_main_release();
}

static void pass_end(const variant *v, bool threaded) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (v->sync == SYNC_PM_GIL && !threaded) pm_gil_release();
    if (v->sync == SYNC_CPYTHON_GIL && threaded) bench_cpython_main_reacquire();
}

/* The process's peak resident set, in KiB. */
static int64_t peak_rss_kib(void) {
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0) return -1;
    return (int64_t)usage.ru_maxrss;
}

int main(int argc, char **argv) {
    const char *allocator = NULL, *kernel_name = NULL, *reserve = "default";
    uint64_t iters = 0, seed = 1;
    run r = {.blocks = 1000000, .slots = 0, .rounds = 5, .threads = 1};
    bool with_loop = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if ((v = option_value(argv[i], "--allocator")) != NULL) allocator = v;
        else if ((v = option_value(argv[i], "--kernel")) != NULL) kernel_name = v;
        else if ((v = option_value(argv[i], "--iters")) != NULL) iters = parse_count(v);
        else if ((v = option_value(argv[i], "--blocks")) != NULL) r.blocks = parse_count(v);
        else if ((v = option_value(argv[i], "--slots")) != NULL) r.slots = parse_count(v);
        else if ((v = option_value(argv[i], "--rounds")) != NULL) r.rounds = (int)parse_count(v);
        else if ((v = option_value(argv[i], "--threads")) != NULL)
            r.threads = (unsigned)parse_count(v);
        else if ((v = option_value(argv[i], "--seed")) != NULL) seed = parse_count(v);
        else if ((v = option_value(argv[i], "--reserve")) != NULL) reserve = v;
        else if (strcmp(argv[i], "--loop") == 0) with_loop = true;
        else usage();
    }
    const kernel *k = NULL;
    for (size_t i = 0; kernel_name != NULL && i < sizeof kernels / sizeof kernels[0]; i++) {
        if (strcmp(kernel_name, kernels[i].name) == 0) k = &kernels[i];
    }
    const variant *v = NULL;
    for (size_t i = 0; allocator != NULL && i < sizeof variants / sizeof variants[0]; i++) {
        if (strcmp(allocator, variants[i].name) == 0) v = &variants[i];
    }
    if (v == NULL || k == NULL || r.blocks > UINT32_MAX || r.threads > MAX_THREADS) usage();
    if (r.slots == 0) r.slots = k->threaded ? 10000 : 100000;
    if (r.slots > UINT32_MAX) usage();
    if (strcmp(k->name, "prodcons") == 0) {
        if (r.threads != 1) usage(); /* always one producer and one consumer */
        r.threads = 2;
    }
    if (v->threaded_only && !k->threaded) {
        fprintf(stderr, "bench: %s is for the multi-thread kernels only\n", v->name);
        return 2;
    }
    if (strcmp(reserve, "default") != 0 && v->family != FAMILY_PYMALLOC_MT) usage();
    r.iters = iters != 0 ? iters : k->default_iters;

    bench_ops ops = noop_ops;
    const char *version = "";
    switch (v->family) {
    case FAMILY_PYMALLOC_MT: {
        int status = setup_pymalloc_mt(v, reserve, &ops);
        if (status != 0) return status;
        version = v->name;
        break;
    }
    case FAMILY_CPYTHON:
        if (bench_cpython_init(&ops) != 0) return 2;
        version = bench_cpython_version();
        break;
    case FAMILY_LIBC:
        ops = (bench_ops){malloc, realloc, free};
        version = malloc_implementation();
        break;
    case FAMILY_NOOP:
        version = "noop";
        break;
    }

    for (int pass = 0; pass < (with_loop ? 2 : 1); pass++) {
        bool loop = pass == 1;
        /* The loop pass: the same inputs, no-op functions, no lock. */
        const variant *pv = loop ? &noop_variant : v;
        rng_state = seed;
        r.ops = loop ? &noop_ops : &ops;
        r.sync = pv->sync;
        result_length = 0;
        result_append("{");
        result_string("kernel", k->name);
        result_string("allocator", allocator);
        result_string("mode", loop ? "loop" : "real");
        result_string("malloc_impl", malloc_implementation());
        result_string("version", version);
        result_integer("rss_before_kib", rss_kib());
        pass_begin(pv, k->threaded);
        k->body(&r);
        pass_end(pv, k->threaded);
        result_integer("peak_rss_kib", peak_rss_kib());
        if (!loop && v->family == FAMILY_PYMALLOC_MT) {
            /* Correctness alongside speed: everything freed, and the heap consistent. */
            pm_gil_acquire();
            int status = pymalloc_checks();
            pm_gil_release();
            if (status != 0) return status;
        }
        result_append("}\n");
        /* Separate dump files for the real and the loop pass (no-op outside valgrind). */
        CALLGRIND_DUMP_STATS_AT(loop ? "loop" : "real");
        fputs("RESULT ", stdout);
        fputs(result_text, stdout);
        fflush(stdout);
    }
    return 0;
}
