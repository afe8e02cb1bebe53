/*
 * demo.c — pymalloc-mt at work, for README's first command (`bazel run //tools:demo`).
 *
 * Four threads share the allocator the way a multithreaded runtime would:
 *   - raw domain: each thread allocates and frees I/O-sized buffers with no lock at all;
 *   - object and mem domains: each thread builds and tears down small "objects" in batches
 *     under the modelled GIL (gil/gil.h), yielding it inside long batches as CPython's eval
 *     loop does, so the switch interval shares the GIL fairly between threads.
 * Then it prints pymalloc's statistics while the objects are alive (in CPython's
 * sys._debugmallocstats() layout), frees everything, checks the heap and shows that the
 * arenas went back to the OS.
 *
 * `--free-threaded` runs the same work in free-threaded mode (pm_init): the mem and object
 * domains are called with no GIL at all, each thread from its own cache, and the
 * statistics gain their "thread caches" section.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc/pymalloc_mt.h"
#include "gil/gil.h"

enum { THREADS = 4, BATCHES = 400, OBJECTS_PER_BATCH = 500, LIVE_SLOTS = 4096 };

static bool free_threaded;
static pthread_barrier_t all_built;
static pthread_barrier_t stats_printed;

typedef struct worker {
    unsigned seed;
    void *live[LIVE_SLOTS]; /* object-domain blocks kept alive until the end */
    uint64_t operations;
} worker;

/* What the mem and object domains require: the GIL, or in free-threaded mode nothing (the
 * analysis is told so by pm_assert_free_threaded). These two are the demo's lock wrappers,
 * hence the one place the analysis is switched off. */
static void domains_enter(void) PM_ACQUIRE(pm_gil) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (free_threaded) {
        pm_assert_free_threaded();
    } else {
        pm_gil_acquire();
    }
}

static void domains_leave(void) PM_RELEASE(pm_gil) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (!free_threaded) pm_gil_release();
}

static void raw_buffers(worker *w) {
    /* Lock-free: no GIL, no lock; just the raw domain's table pointer and the C library. */
    for (int i = 0; i < 64; i++) {
        size_t n = 1024 + (size_t)rand_r(&w->seed) % 65536;
        char *buffer = pm_raw_malloc(n);
        if (buffer == NULL) abort();
        memset(buffer, 'x', n);
        buffer = pm_raw_realloc(buffer, n / 2);
        pm_raw_free(buffer);
        w->operations += 3;
    }
}

static void object_batch(worker *w) {
    domains_enter();
    for (int i = 0; i < OBJECTS_PER_BATCH; i++) {
        /* Let a waiting thread in after its interval (GIL mode). */
        if (!free_threaded && i % 100 == 0) pm_gil_yield();
        unsigned r = (unsigned)rand_r(&w->seed);
        unsigned slot = r % LIVE_SLOTS;
        if (w->live[slot] != NULL) {
            pm_obj_free(w->live[slot]);
            w->live[slot] = NULL;
        } else {
            size_t n = 16 + r % 240; /* typical small-object sizes */
            w->live[slot] = pm_obj_malloc(n);
            if (w->live[slot] == NULL) abort();
            memset(w->live[slot], 0, n);
        }
        char *scratch = pm_mem_malloc(32 + r % 480); /* a temporary buffer */
        pm_mem_free(scratch);
        w->operations += 3;
    }
    domains_leave();
}

static void *run_worker(void *arg) {
    worker *w = arg;
    for (int b = 0; b < BATCHES; b++) {
        object_batch(w);
        raw_buffers(w);
    }
    pthread_barrier_wait(&all_built);
    pthread_barrier_wait(&stats_printed);
    domains_enter();
    for (int i = 0; i < LIVE_SLOTS; i++) pm_obj_free(w->live[i]);
    domains_leave();
    return NULL;
}

static double seconds_since(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--free-threaded") == 0) {
            free_threaded = true;
        } else {
            fprintf(stderr, "usage: %s [--free-threaded]\n", argv[0]);
            return 2;
        }
    }
    if (free_threaded) {
        pm_config config;
        pm_config_init(&config);
        config.free_threaded = 1;
        if (pm_init(&config) != 0) {
            perror("pm_init");
            return 1;
        }
    }
    pm_gil_acquire();
    int configured = pm_init_from_env(); /* PYTHONMALLOC / PYTHONMALLOCSTATS, if set */
    pm_gil_release();
    if (configured != 0) return 1;

    static worker workers[THREADS];
    pthread_t threads[THREADS];
    pthread_barrier_init(&all_built, NULL, THREADS + 1);
    pthread_barrier_init(&stats_printed, NULL, THREADS + 1);

    printf("pymalloc-mt demo: %d threads, %s; allocator \"%s\"; arenas of %zu KiB\n\n",
           THREADS, free_threaded ? "free-threaded (a cache per thread, no GIL)" : "GIL mode",
           pm_current_allocator_name() ? pm_current_allocator_name() : "(custom)",
           pm_arena_size() / 1024);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int t = 0; t < THREADS; t++) {
        workers[t].seed = 1234u + (unsigned)t;
        pthread_create(&threads[t], NULL, run_worker, &workers[t]);
    }
    pthread_barrier_wait(&all_built);
    double elapsed = seconds_since(&start);

    uint64_t operations = 0;
    for (int t = 0; t < THREADS; t++) operations += workers[t].operations;
    pm_gil_acquire();
    printf("%llu allocator calls in %.3f s; %zu blocks alive in pymalloc\n\n",
           (unsigned long long)operations, elapsed, pm_allocated_blocks());
    pm_print_stats(stdout);
    pm_gil_release();
    pthread_barrier_wait(&stats_printed);

    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);

    pm_gil_acquire();
    pm_raw_stats raw;
    pm_get_raw_stats(&raw);
    const char *problem = pm_heap_check();
    printf("\nAfter freeing everything:\n");
    printf("  pymalloc blocks alive: %zu\n", pm_allocated_blocks());
    printf("  raw domain: %llu mallocs, %llu reallocs, %llu frees, %llu failures, %llu live\n",
           (unsigned long long)(raw.mallocs + raw.callocs), (unsigned long long)raw.reallocs,
           (unsigned long long)raw.frees, (unsigned long long)raw.failures,
           (unsigned long long)raw.live);
    printf("  heap check: %s\n\n", problem ? problem : "consistent");
    pm_print_stats(stdout);
    pm_gil_release();
    return problem == NULL ? 0 : 1;
}
