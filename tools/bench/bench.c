/*
 * bench.c — one allocator, one kernel, one process: the measuring half of tools/bench.
 *
 *   bench --allocator=pymalloc-mt|cpython|malloc|noop --kernel=NAME [options]
 *
 * prints one line "RESULT {json}" per run. tools/bench/compare.py runs it for every
 * allocator and kernel, repeatedly and interleaved, and under callgrind; this file only
 * measures. The allocators:
 *
 *   pymalloc-mt  pm_obj_malloc / pm_obj_realloc / pm_obj_free: the object domain with its
 *                default allocator, single thread (GIL mode: no per-thread cache), the
 *                caller holding the modelled GIL (gil/gil.h), taken once before each pass
 *                and released after it: no GIL call inside a timed loop.
 *                --reserve=0|inf|default|BYTES sets the arena reserve; --debug-hooks
 *                installs CPython's debug hooks first (their overhead is the ratio of the
 *                two rows).
 *   cpython      PyObject_Malloc / _Realloc / _Free of Debian's libpython3.11 after
 *                Py_Initialize, the GIL held by this thread (cpython_ops.c).
 *   malloc       the C library's malloc / realloc / free: glibc, or mimalloc, jemalloc or
 *                tcmalloc when compare.py puts one in LD_PRELOAD (the "malloc_impl" field
 *                says which one actually answered, so a preload that did not take is seen).
 *   noop         functions that return a static buffer and do nothing: the loop alone.
 *
 * The kernels (sizes are uniform in 1..512 unless fixed; all random numbers, indices and
 * permutations are drawn before the timed region, which only allocates, writes one byte
 * into each new block, as initialising an object would, and frees):
 *
 *   pair16 / pair64 / pair512  malloc(n) + free in a loop, one other block of the same size
 *                  kept live (as any program has); ns and instructions per pair.
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
 * again, with the same inputs, on the no-op functions, and compare.py reports
 * (real - loop) / ops: the allocator's own instructions per operation. CALLGRIND_DUMP_STATS
 * after each run puts the two counts in separate dump files. Outside valgrind the client
 * requests are a few no-op instructions outside the timed loops.
 *
 * RSS from /proc/self/statm, read with open/read (fopen would allocate through the
 * allocator being measured). The benchmark's own arrays are mmap'd and pre-faulted before
 * the first reading, so RSS deltas are the allocator's alone.
 */
#define _GNU_SOURCE /* RTLD_DEFAULT */

#include "tools/bench/bench.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
    unsigned long long size_pages = 0, resident_pages = 0;
    if (sscanf(buf, "%llu %llu", &size_pages, &resident_pages) != 2) return -1;
    return (int64_t)(resident_pages * (unsigned long long)sysconf(_SC_PAGESIZE) / 1024);
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
    uint64_t iters;  /* pairs, churn steps, or realloc_grow buffers */
    size_t blocks;   /* batch, batch_rounds, rss32 */
    size_t slots;    /* churn */
    int rounds;      /* batch_rounds */
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

/* ---- kernel table -------------------------------------------------------------------- */

typedef struct kernel {
    const char *name;
    uint64_t default_iters; /* 0: the kernel has a fixed size instead */
} kernel;

static const kernel kernels[] = {
    {"pair16", 10000000},
    {"pair64", 10000000},
    {"pair512", 10000000},
    {"pair64_empty", 10000000},
    {"churn", 4000000},
    {"batch", 0},
    {"batch_rounds", 0},
    {"rss32", 0},
    {"realloc_grow", 10000},
};

static void run_kernel(const char *name, const run *r) {
    if (strcmp(name, "pair16") == 0) kernel_pair(r, 16, true);
    else if (strcmp(name, "pair64") == 0) kernel_pair(r, 64, true);
    else if (strcmp(name, "pair512") == 0) kernel_pair(r, 512, true);
    else if (strcmp(name, "pair64_empty") == 0) kernel_pair(r, 64, false);
    else if (strcmp(name, "churn") == 0) kernel_churn(r);
    else if (strcmp(name, "batch") == 0) kernel_batch(r, 1, 0);
    else if (strcmp(name, "batch_rounds") == 0) kernel_batch(r, r->rounds, 0);
    else if (strcmp(name, "rss32") == 0) kernel_batch(r, 1, 32);
    else if (strcmp(name, "realloc_grow") == 0) kernel_realloc_grow(r);
}

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
            "usage: bench --allocator=pymalloc-mt|cpython|malloc|noop --kernel=NAME\n"
            "             [--iters=N] [--blocks=N] [--slots=N] [--rounds=N] [--seed=N]\n"
            "             [--reserve=default|0|inf|BYTES] [--debug-hooks] [--loop]\n"
            "kernels:");
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

int main(int argc, char **argv) {
    const char *allocator = NULL, *kernel_name = NULL, *reserve = "default";
    bool debug_hooks = false; /* pymalloc-mt under CPython's debug hooks, for their overhead */
    uint64_t iters = 0, seed = 1;
    run r = {.blocks = 1000000, .slots = 100000, .rounds = 5};
    bool with_loop = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if ((v = option_value(argv[i], "--allocator")) != NULL) allocator = v;
        else if ((v = option_value(argv[i], "--kernel")) != NULL) kernel_name = v;
        else if ((v = option_value(argv[i], "--iters")) != NULL) iters = parse_count(v);
        else if ((v = option_value(argv[i], "--blocks")) != NULL) r.blocks = parse_count(v);
        else if ((v = option_value(argv[i], "--slots")) != NULL) r.slots = parse_count(v);
        else if ((v = option_value(argv[i], "--rounds")) != NULL) r.rounds = (int)parse_count(v);
        else if ((v = option_value(argv[i], "--seed")) != NULL) seed = parse_count(v);
        else if ((v = option_value(argv[i], "--reserve")) != NULL) reserve = v;
        else if (strcmp(argv[i], "--loop") == 0) with_loop = true;
        else if (strcmp(argv[i], "--debug-hooks") == 0) debug_hooks = true;
        else usage();
    }
    const kernel *k = NULL;
    for (size_t i = 0; kernel_name != NULL && i < sizeof kernels / sizeof kernels[0]; i++) {
        if (strcmp(kernel_name, kernels[i].name) == 0) k = &kernels[i];
    }
    if (allocator == NULL || k == NULL || r.slots > UINT32_MAX || r.blocks > UINT32_MAX) usage();
    r.iters = iters != 0 ? iters : k->default_iters;

    bench_ops ops;
    const char *version = "";
    if (strcmp(allocator, "pymalloc-mt") == 0) {
        const char *installed = pm_current_allocator_name();
        if (installed == NULL || strcmp(installed, "pymalloc") != 0) {
            fprintf(stderr, "bench: the object domain is not on pymalloc\n");
            return 2;
        }
        pm_gil_acquire(); /* pm_set_arena_reserve requires the GIL */
        if (strcmp(reserve, "inf") == 0) pm_set_arena_reserve(SIZE_MAX);
        else if (strcmp(reserve, "0") == 0) pm_set_arena_reserve(0);
        else if (strcmp(reserve, "default") != 0) pm_set_arena_reserve(parse_count(reserve));
        if (debug_hooks && pm_setup_debug_hooks() != 0) {
            fprintf(stderr, "bench: cannot install the debug hooks\n");
            return 2;
        }
        pm_gil_release();
        ops = (bench_ops){pm_obj_malloc, pm_obj_realloc, pm_obj_free};
        version = debug_hooks ? "pymalloc-mt + debug hooks" : "pymalloc-mt";
    } else if (strcmp(allocator, "cpython") == 0) {
        if (bench_cpython_init(&ops) != 0) return 2;
        version = bench_cpython_version();
    } else if (strcmp(allocator, "malloc") == 0) {
        ops = (bench_ops){malloc, realloc, free};
        version = malloc_implementation();
    } else if (strcmp(allocator, "noop") == 0) {
        ops = noop_ops;
        version = "noop";
    } else {
        usage();
    }
    if ((strcmp(reserve, "default") != 0 || debug_hooks) && strcmp(allocator, "pymalloc-mt") != 0) {
        usage();
    }

    const bool pymalloc = strcmp(allocator, "pymalloc-mt") == 0;
    for (int pass = 0; pass < (with_loop ? 2 : 1); pass++) {
        bool loop = pass == 1;
        rng_state = seed; /* the loop pass sees exactly the same inputs */
        r.ops = loop ? &noop_ops : &ops;
        result_length = 0;
        result_append("{");
        result_string("kernel", k->name);
        result_string("allocator", allocator);
        result_string("mode", loop ? "loop" : "real");
        result_string("malloc_impl", malloc_implementation());
        result_string("version", version);
        if (pymalloc) {
            /* The object domain requires the GIL: taken once around the whole pass (the loop
             * pass too, so that both passes run alike), outside every timed region. */
            pm_gil_acquire();
            run_kernel(k->name, &r);
            int status = loop ? 0 : pymalloc_checks();
            pm_gil_release();
            if (status != 0) return status;
        } else {
            run_kernel(k->name, &r);
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
