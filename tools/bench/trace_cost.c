/*
 * trace_cost.c — what tracing costs on the churn kernel: the object domain with 100,000
 * live blocks of random sizes 1..512; each step frees a random block and allocates a new
 * random size in its place. The GIL is held throughout, as the object domain requires.
 *
 *   bazel run -c opt //tools/bench:trace_cost [-- --steps=N --rounds=R --modes=full,...]
 *
 * Modes, each run once per round, rounds interleaved (each starting at the next mode) so
 * that machine noise and the state one run leaves behind fall on all:
 *
 *   untraced   no tracing
 *   hooked     a wrapper that only passes calls on, installed on the object domain: the floor
 *              any tracemalloc-style hook pays, since pymalloc's inline paths are bypassed
 *   full       pm_trace_start(1) with a frame provider, as a language runtime would install
 *              one: it hands over the current (file, line), drawn from 256 call sites
 *   native     pm_trace_start(1) without a provider: one native frame via backtrace(3)
 *   sampling   pm_trace_start_sampling(1, default rate) with the same provider
 *
 * --decref models object churn in a runtime: each step reads the first byte of the block it
 * is about to free, as a decref reads the object's count before the object is freed, so the
 * block's first cache line is in cache when free runs (without it, free of a block untouched
 * since its malloc finds it cold, which a runtime's free rarely does).
 *
 * For each mode: ns per step (median over rounds) and the median over rounds of the ratio
 * to that round's untraced run; for the traced modes, the tracer's memory (tables,
 * tracebacks, buffers: pm_trace_get_memory) per traced block at the end of the run. All
 * random sizes, slots and call sites are drawn before the timed region. Timings are CPU
 * time of this thread (CLOCK_THREAD_CPUTIME_ID). The last line is "RESULT {json}".
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc/pymalloc_mt.h"
#include "gil/gil.h"

enum { SLOTS = 100000, SITES = 256 };

typedef enum mode { UNTRACED, HOOKED, FULL, NATIVE, SAMPLING, MODES } mode;
static const char *const mode_names[MODES] = {"untraced", "hooked", "full", "native", "sampling"};

static pm_allocator below;
static void *pass_malloc(void *ctx, size_t n) { (void)ctx; return below.malloc(below.ctx, n); }
static void *pass_calloc(void *ctx, size_t n, size_t e) { (void)ctx; return below.calloc(below.ctx, n, e); }
static void *pass_realloc(void *ctx, void *p, size_t n) { (void)ctx; return below.realloc(below.ctx, p, n); }
static void pass_free(void *ctx, void *p) { (void)ctx; below.free(below.ctx, p); }

/* The "interpreter's" current file and line, set by the kernel before each allocation.
 * Two variables, as a runtime's frame keeps them in different places: copied as one
 * 16-byte struct just after the line was stored, the read could not be forwarded from
 * the store and stalled for about 13 ns a call, a cost of this benchmark, not tracing. */
static const char *current_file = "bench.py";
static size_t current_line;

static size_t provide_frame(void *ctx, pm_trace_frame *frames, size_t max_frames) {
    (void)ctx;
    if (max_frames == 0) return 0;
    frames[0].filename = current_file;
    frames[0].lineno = current_line;
    return 1;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

typedef struct inputs {
    size_t steps;
    uint32_t *slot;  /* per step */
    uint16_t *size;  /* per step, and the SLOTS initial sizes after them */
    uint16_t *site;  /* per step */
} inputs;

typedef struct measurement {
    double ns_per_step;
    double tracer_bytes_per_block;
} measurement;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int start_mode(mode m) PM_GIL_REQUIRED {
    static const pm_allocator pass = {NULL, pass_malloc, pass_calloc, pass_realloc, pass_free};
    switch (m) {
    case HOOKED: return pm_get_allocator(PM_DOMAIN_OBJ, &below) || pm_set_allocator(PM_DOMAIN_OBJ, &pass);
    case FULL: return pm_trace_start(1);
    case NATIVE: return pm_trace_start(1);
    case SAMPLING: return pm_trace_start_sampling(1, 0);
    default: return 0;
    }
}

static bool decref; /* --decref: read a block before freeing it */
static volatile unsigned decref_sink;

static measurement run_mode(mode m, const inputs *in, char **blocks) PM_GIL_REQUIRED {
    measurement out = {0, 0};
    if (pm_trace_set_frame_provider(m == NATIVE ? NULL : provide_frame, NULL) != 0 ||
        start_mode(m) != 0) {
        fprintf(stderr, "trace_cost: cannot start %s: %s\n", mode_names[m], strerror(errno));
        exit(1);
    }
    for (size_t i = 0; i < SLOTS; i++) {
        current_line = i % SITES;
        blocks[i] = pm_obj_malloc(in->size[in->steps + i]);
        if (blocks[i] == NULL) exit(1);
        blocks[i][0] = 1;
    }
    double begin = now_ns();
    unsigned counts = 0;
    for (size_t i = 0; i < in->steps; i++) {
        uint32_t slot = in->slot[i];
        if (decref) counts += (unsigned char)blocks[slot][0];
        pm_obj_free(blocks[slot]);
        current_line = in->site[i];
        char *p = pm_obj_malloc(in->size[i]);
        if (p == NULL) exit(1);
        p[0] = (char)i;
        blocks[slot] = p;
    }
    out.ns_per_step = (now_ns() - begin) / (double)in->steps;
    decref_sink = counts;
    if (m != UNTRACED && m != HOOKED) {
        pm_trace_snapshot *snapshot = pm_trace_take_snapshot();
        size_t traced = snapshot ? pm_trace_snapshot_count(snapshot) : 0;
        pm_trace_snapshot_free(snapshot);
        /* Snapshot freed first: its memory is not the tracer's steady state. */
        out.tracer_bytes_per_block = traced ? (double)pm_trace_get_memory() / (double)traced : 0;
    }
    for (size_t i = 0; i < SLOTS; i++) pm_obj_free(blocks[i]);
    if (m == HOOKED) (void)pm_set_allocator(PM_DOMAIN_OBJ, &below);
    pm_trace_stop();
    return out;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *values, size_t n) {
    qsort(values, n, sizeof *values, compare_doubles);
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

int main(int argc, char **argv) {
    size_t steps = 1000000;
    size_t rounds = 5;
    bool enabled[MODES] = {true, true, true, true, true};
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--steps=", 8) == 0) {
            steps = strtoull(argv[i] + 8, NULL, 10);
        } else if (strncmp(argv[i], "--rounds=", 9) == 0) {
            rounds = strtoull(argv[i] + 9, NULL, 10);
        } else if (strcmp(argv[i], "--decref") == 0) {
            decref = true;
        } else if (strncmp(argv[i], "--modes=", 8) == 0) {
            /* untraced always runs: the ratios need it */
            for (int m = 1; m < MODES; m++) enabled[m] = strstr(argv[i] + 8, mode_names[m]) != NULL;
        } else {
            fprintf(stderr, "usage: trace_cost [--steps=N] [--rounds=R] "
                            "[--modes=hooked,full,native,sampling] [--decref]\n");
            return 2;
        }
    }
    if (steps == 0 || rounds == 0 || rounds > 100) {
        fprintf(stderr, "trace_cost: steps and rounds (at most 100) must be positive\n");
        return 2;
    }
    inputs in = {steps, malloc(steps * sizeof(uint32_t)), malloc((steps + SLOTS) * sizeof(uint16_t)),
                 malloc(steps * sizeof(uint16_t))};
    char **blocks = malloc(SLOTS * sizeof *blocks);
    if (!in.slot || !in.size || !in.site || !blocks) return 1;
    for (size_t i = 0; i < steps; i++) {
        in.slot[i] = (uint32_t)(next_random() % SLOTS);
        in.site[i] = (uint16_t)(next_random() % SITES);
    }
    for (size_t i = 0; i < steps + SLOTS; i++) in.size[i] = (uint16_t)(1 + next_random() % 512);

    double ns[MODES][100], ratio[MODES][100], bytes[MODES][100];
    pm_gil_acquire();
    for (size_t r = 0; r < rounds; r++) {
        /* Each round starts at another mode: what a mode leaves in pymalloc's pools (and
         * the page cache) must not always fall on the same next mode. */
        for (int k = 0; k < MODES; k++) {
            int m = (int)((r + (size_t)k) % MODES);
            measurement result = {0, 0};
            if (enabled[m]) result = run_mode((mode)m, &in, blocks);
            ns[m][r] = result.ns_per_step;
            bytes[m][r] = result.tracer_bytes_per_block;
        }
        for (int m = 0; m < MODES; m++) ratio[m][r] = ns[m][r] / ns[UNTRACED][r];
        fprintf(stderr, "round %zu:", r + 1);
        for (int m = 0; m < MODES; m++) fprintf(stderr, " %s %.1f", mode_names[m], ns[m][r]);
        fprintf(stderr, " ns/step\n");
    }
    pm_gil_release();

    printf("churn, 100,000 live blocks of 1..512 B, object domain, %zu steps x %zu rounds%s\n",
           steps, rounds, decref ? ", each block read before its free" : "");
    printf("%-10s %12s %14s %22s\n", "mode", "ns/step", "x untraced", "tracer bytes/block");
    char json[1024];
    size_t used = (size_t)snprintf(json, sizeof json, "{\"steps\":%zu,\"rounds\":%zu,\"decref\":%s",
                                   steps, rounds, decref ? "true" : "false");
    for (int m = 0; m < MODES; m++) {
        double ns_median = median(ns[m], rounds);
        double ratio_median = median(ratio[m], rounds);
        double bytes_median = median(bytes[m], rounds);
        printf("%-10s %12.1f %13.2fx %22.1f\n", mode_names[m], ns_median, ratio_median, bytes_median);
        used += (size_t)snprintf(json + used, sizeof json - used,
                                 ",\"%s\":{\"ns_per_step\":%.2f,\"ratio\":%.3f,\"tracer_bytes_per_block\":%.1f}",
                                 mode_names[m], ns_median, ratio_median, bytes_median);
    }
    printf("RESULT %s}\n", json);
    free(in.slot);
    free(in.size);
    free(in.site);
    free(blocks);
    return 0;
}
