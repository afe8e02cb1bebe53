/*
 * stats.c — what pymalloc holds, counted: sys.getallocatedblocks(), the report of
 * sys._debugmallocstats() / PYTHONMALLOCSTATS, and the same numbers as JSON.
 *
 * Every number comes from one walk of the arenas (pm_arena_for_each) into a snapshot:
 *
 *   arena ─┬─ carved pools [0, carved)   used > 0: counted per class (pools, blocks in use,
 *          │                             blocks still available = capacity - used)
 *          │                             used == 0: empty, on the arena's free list
 *          └─ never carved [carved, total)
 *
 * and the report is printed from the snapshot, so the text and the JSON cannot disagree.
 * The byte accounting is CPython's and closes exactly: for every arena,
 *
 *   PM_ARENA_SIZE = pools in use   x (capacity x block size + quantization)
 *                 + free_count     x PM_POOL_SIZE            (empty + never carved)
 *                 + (PM_POOLS_PER_ARENA - total_pools) x PM_POOL_SIZE   (alignment)
 *
 * provided free_count + pools in use == total_pools, which pm_heap_check() verifies; the
 * "Total" line therefore equals arenas x arena size, as CPython's does. Pool headers take
 * none of an arena's bytes (they live in the arena descriptors, alloc/internal/pymalloc.h),
 * so "bytes lost to pool headers" is 0; the descriptors' memory is reported with the
 * lines of our own at the end.
 *
 * The layout is CPython 3.11's, line for line, so that tools which read its output read
 * ours: the class table, then "label = value" lines (label padded to 35 columns, value
 * right-aligned in 21 with thousands separators), then the arena map's cost (our map has
 * one level of leaves where CPython's has mid and bottom nodes). Lines CPython does not
 * print (the arena reserve) come last, after everything a CPython reader looks for.
 *
 * Contract: the GIL is held (nothing else mutates pymalloc meanwhile); with thread caches
 * the walk locks are taken and other threads must be quiescent, as for pm_heap_check(). Nothing here
 * allocates from the mem or object domains: the snapshot lives on the stack and the text is
 * written straight to the FILE or the caller's buffer.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "alloc/internal/pymalloc.h"

int pm_stats_on_new_arena;

/* ---- the snapshot -------------------------------------------------------------------- */

typedef struct class_stats {
    size_t pools;         /* used or full pools of the class */
    size_t blocks_in_use; /* sum of their `used` */
    size_t avail_blocks;  /* capacity x pools - blocks_in_use: free and never carved */
} class_stats;

typedef struct stats_snapshot {
    class_stats classes[PM_NUM_CLASSES];
    size_t arenas;             /* arenas in use, reserve included (CPython's narenas) */
    size_t unused_pools;       /* sum of free_count: empty pools + pools never carved */
    size_t pools_in_use;       /* used + full pools */
    size_t pool_blocks;        /* blocks handed out from pools */
    size_t allocated_bytes;    /* blocks in use x their block size */
    size_t available_bytes;    /* available blocks x their block size */
    size_t quantization_bytes; /* per pool in use: the tail too small for another block */
    size_t alignment_bytes;    /* per arena: the part before its first aligned pool */
    size_t stashed_pools;      /* empty pools held by thread caches (among unused_pools) */
    /* Thread caches (all zero in GIL mode without caches). */
    size_t heaps, threads_attached, cached_pools, thread_full_pools, shared_pools;
    pm_heap_counters cache; /* summed over every heap */
} stats_snapshot;

static void snapshot_arena(const pm_arena *arena, void *arg) {
    stats_snapshot *s = arg;
    s->arenas++;
    s->unused_pools += arena->free_count;
    s->alignment_bytes += PM_ARENA_SIZE - (size_t)arena->total_pools * PM_POOL_SIZE;
    for (uint32_t i = 0; i < arena->carved_pools; i++) {
        const pm_pool *pool = &arena->pools[i];
        /* Empty pools are unused pools; a class out of range is corruption that
         * pm_heap_check() reports, and counting it would index past the table. */
        if (pm_pool_used(pool) == 0 && pm_pool_owner(pool) != NULL) {
            /* Empty but in a thread's stash rather than its arena's free list: unused all
             * the same, and counted with the unused pools so that the bytes still add up. */
            s->stashed_pools++;
            s->unused_pools++;
            continue;
        }
        if (pm_pool_used(pool) == 0 || pool->size_class >= PM_NUM_CLASSES) continue;
        const pm_heap *owner = pm_pool_owner(pool);
        if (pm_pool_full(pool) && owner != NULL && owner->kind == PM_HEAP_THREAD) {
            s->thread_full_pools++;
        }
        size_t size = pm_class_block_size(pool->size_class);
        size_t capacity = pm_class_capacity(pool->size_class);
        size_t avail = capacity >= pm_pool_used(pool) ? capacity - pm_pool_used(pool) : 0;
        class_stats *c = &s->classes[pool->size_class];
        c->pools++;
        c->blocks_in_use += pm_pool_used(pool);
        c->avail_blocks += avail;
        s->pools_in_use++;
        s->pool_blocks += pm_pool_used(pool);
        s->allocated_bytes += (size_t)pm_pool_used(pool) * size;
        s->available_bytes += avail * size;
        s->quantization_bytes += PM_POOL_SIZE % size;
    }
}

static void sum_counter(uint64_t *total, const uint64_t *counter) {
    *total += pm_atomic_load_u64_relaxed(counter);
}

static void snapshot_heap(pm_heap *heap, void *arg) {
    stats_snapshot *s = arg;
    const pm_heap_counters *c = &heap->counters;
    sum_counter(&s->cache.remote_frees, &c->remote_frees);
    sum_counter(&s->cache.remote_received, &c->remote_received);
    sum_counter(&s->cache.drains, &c->drains);
    sum_counter(&s->cache.pools_adopted, &c->pools_adopted);
    sum_counter(&s->cache.pools_given, &c->pools_given);
    sum_counter(&s->cache.pools_from_arena, &c->pools_from_arena);
    sum_counter(&s->cache.pools_to_arena, &c->pools_to_arena);
    sum_counter(&s->cache.stash_hits, &c->stash_hits);
    size_t listed = 0;
    for (unsigned k = 0; k < PM_NUM_CLASSES; k++) {
        if (heap->used[k] == &pm_no_pool) continue;
        for (const pm_pool *p = heap->used[k]; p != NULL; p = p->next) listed++;
    }
    if (heap->kind == PM_HEAP_SHARED) s->shared_pools += listed;
    if (heap->kind != PM_HEAP_THREAD) return;
    s->heaps++;
    if (pm_atomic_load_int_relaxed(&heap->attached)) s->threads_attached++;
    s->cached_pools += listed;
}

/* Walks the arenas and heaps. The caller holds the GIL or, with thread caches, the walk
 * locks, and other threads are quiescent (see pm_heap_check). */
static void take_snapshot(stats_snapshot *s) {
    memset(s, 0, sizeof *s);
    pm_arena_for_each(snapshot_arena, s);
    pm_for_each_heap(snapshot_heap, s);
}

static size_t raw_blocks(void) {
    return pm_atomic_load_size_relaxed(&pm_counters.raw_allocated_blocks);
}

static size_t snapshot_total(const stats_snapshot *s) {
    return s->allocated_bytes + s->available_bytes + s->unused_pools * PM_POOL_SIZE +
           s->quantization_bytes + s->alignment_bytes;
}

static size_t map_root_bytes(void) {
    return sizeof(pm_arena_map.leaf_offset);
}

static size_t map_leaf_bytes(void) {
    return pm_counters.map_leaf_nodes * sizeof(pm_map_leaf);
}

size_t pm_allocated_blocks(void) {
    stats_snapshot s;
    pm_heap_walk_lock();
    take_snapshot(&s);
    pm_heap_walk_unlock();
    return s.pool_blocks + raw_blocks();
}

/* ---- the text report ----------------------------------------------------------------- */

enum {
    LABEL_WIDTH = 35, /* CPython pads every label to this column, then prints '=' */
    VALUE_WIDTH = 21, /* and right-aligns the value, separators included, in this many */
    GROUPED_MAX = 27, /* "18,446,744,073,709,551,615" and its NUL */
};

/* Writes value in decimal with a comma between groups of three digits ("1,048,576") into
 * out, which has room for GROUPED_MAX bytes. Returns out. */
static char *format_grouped(size_t value, char out[GROUPED_MAX]) {
    char reversed[GROUPED_MAX];
    size_t n = 0;
    unsigned digits = 0;
    do {
        if (digits > 0 && digits % 3 == 0) reversed[n++] = ',';
        reversed[n++] = (char)('0' + value % 10);
        value /= 10;
        digits++;
    } while (value != 0);
    for (size_t i = 0; i < n; i++) out[i] = reversed[n - 1 - i];
    out[n] = '\0';
    return out;
}

static void print_value(FILE *out, const char *label, size_t value) {
    char grouped[GROUPED_MAX];
    fprintf(out, "%-*s=%*s\n", LABEL_WIDTH, label, VALUE_WIDTH, format_grouped(value, grouped));
}

void pm_stats_print_unchecked(FILE *out) {
    if (out == NULL) return;
    stats_snapshot s;
    take_snapshot(&s);
    char label[96];

    fprintf(out, "Small block threshold = %d, in %d size classes.\n", PM_SMALL_REQUEST_THRESHOLD,
            PM_NUM_CLASSES);
    fputs("\n"
          "class   size   num pools   blocks in use  avail blocks\n"
          "-----   ----   ---------   -------------  ------------\n",
          out);
    for (unsigned c = 0; c < PM_NUM_CLASSES; c++) {
        const class_stats *cs = &s.classes[c];
        if (cs->pools == 0) continue;
        fprintf(out, "%5u %6zu %11zu %15zu %13zu\n", c, pm_class_block_size(c), cs->pools,
                cs->blocks_in_use, cs->avail_blocks);
    }

    fputc('\n', out);
    print_value(out, "# arenas allocated total", pm_counters.arenas_allocated_total);
    print_value(out, "# arenas reclaimed", pm_counters.arenas_reclaimed);
    print_value(out, "# arenas highwater mark", pm_counters.arenas_highwater);
    print_value(out, "# arenas allocated current", s.arenas);
    snprintf(label, sizeof label, "%zu arenas * %zu bytes/arena", s.arenas, PM_ARENA_SIZE);
    print_value(out, label, s.arenas * PM_ARENA_SIZE);

    fputc('\n', out);
    print_value(out, "# bytes in allocated blocks", s.allocated_bytes);
    print_value(out, "# bytes in available blocks", s.available_bytes);
    snprintf(label, sizeof label, "%zu unused pools * %zu bytes", s.unused_pools, PM_POOL_SIZE);
    print_value(out, label, s.unused_pools * PM_POOL_SIZE);
    print_value(out, "# bytes lost to pool headers", 0); /* kept apart: see the design note */
    print_value(out, "# bytes lost to quantization", s.quantization_bytes);
    print_value(out, "# bytes lost to arena alignment", s.alignment_bytes);
    print_value(out, "Total", snapshot_total(&s));

    fputs("\narena map counts\n", out);
    print_value(out, "# arena map leaf nodes", pm_counters.map_leaf_nodes);
    fputc('\n', out);
    print_value(out, "# bytes lost to arena map root", map_root_bytes());
    print_value(out, "# bytes lost to arena map leaves", map_leaf_bytes());
    print_value(out, "Total", map_root_bytes() + map_leaf_bytes());

    /* pymalloc-mt only: wholly free arenas kept mapped (already counted above as arenas
     * allocated current, their pools as unused pools). */
    size_t reserve = pm_arena_reserve_count();
    fputs("\narena reserve\n", out);
    print_value(out, "# arenas in reserve", reserve);
    print_value(out, "# bytes in arena reserve", reserve * PM_ARENA_SIZE);
    print_value(out, "# bytes arena reserve limit", pm_arena_reserve_limit());

    /* pymalloc-mt only: arena descriptors, which hold the pool headers (CPython keeps those
     * inside the pools, where they count as "bytes lost to pool headers"). */
    fputs("\narena descriptors\n", out);
    print_value(out, "# bytes in arena descriptors", pm_arena_descriptor_bytes());

    /* pymalloc-mt only: the per-thread caches (pm_init). */
    if (!pm_threading.caches) return;
    fprintf(out, "\nthread caches (%s)\n",
            pm_threading.free_threaded ? "free-threaded" : "GIL mode");
    print_value(out, "# threads attached", s.threads_attached);
    print_value(out, "# thread heaps", s.heaps);
    print_value(out, "# pools cached (non-full)", s.cached_pools);
    print_value(out, "# pools stashed (empty)", s.stashed_pools);
    print_value(out, "# full pools in threads", s.thread_full_pools);
    print_value(out, "# pools on shared lists", s.shared_pools);
    print_value(out, "# remote frees sent", (size_t)s.cache.remote_frees);
    print_value(out, "# remote frees applied", (size_t)s.cache.remote_received);
    print_value(out, "# remote list drains", (size_t)s.cache.drains);
    print_value(out, "# pools adopted from shared", (size_t)s.cache.pools_adopted);
    print_value(out, "# pools given to shared", (size_t)s.cache.pools_given);
    print_value(out, "# pools taken from arenas", (size_t)s.cache.pools_from_arena);
    print_value(out, "# pools returned to arenas", (size_t)s.cache.pools_to_arena);
    print_value(out, "# pools reused from stash", (size_t)s.cache.stash_hits);
}

void pm_print_stats(FILE *out) {
    pm_heap_walk_lock();
    pm_stats_print_unchecked(out);
    pm_heap_walk_unlock();
}

/* Runs inside malloc's slow path (under the pool lock with caches). In free-threaded mode
 * other threads are not quiescent, so their pools cannot be read: the report waits for
 * exit. */
void pm_stats_print_on_new_arena(void) {
    if (pm_threading.free_threaded) return;
    pm_stats_print_unchecked(stderr);
}

/* ---- JSON ---------------------------------------------------------------------------- */

/* snprintf semantics over several appends: `length` counts everything the text needs,
 * bytes are written while they fit, and the text stays NUL-terminated within `size`. */
typedef struct json_writer {
    char *buf;
    size_t size;
    size_t length;
    bool failed;
} json_writer;

__attribute__((format(printf, 2, 3))) static void json_append(json_writer *w, const char *fmt,
                                                               ...) {
    char *dst = NULL;
    size_t room = 0;
    if (w->length < w->size) {
        dst = w->buf + w->length;
        room = w->size - w->length;
    }
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(dst, room, fmt, args);
    va_end(args);
    if (n < 0) {
        w->failed = true;
        return;
    }
    w->length += (size_t)n;
}

size_t pm_stats_json(char *buf, size_t size) {
    if (buf == NULL && size != 0) return 0;
    stats_snapshot s;
    pm_heap_walk_lock();
    take_snapshot(&s);
    size_t reserve = pm_arena_reserve_count();
    size_t reserve_limit = pm_arena_reserve_limit();
    size_t descriptor_bytes = pm_arena_descriptor_bytes();
    pm_pymalloc_counters counters = pm_counters;
    pm_heap_walk_unlock();
    json_writer w = {.buf = buf, .size = size, .length = 0, .failed = false};
    if (size != 0) buf[0] = '\0';

    json_append(&w,
                "{\"small_block_threshold\":%d,\"size_classes\":%d,\"alignment\":%d,"
                "\"arena_size\":%zu,\"pool_size\":%zu,\"pool_header_size\":%zu,",
                PM_SMALL_REQUEST_THRESHOLD, PM_NUM_CLASSES, PM_ALIGNMENT, PM_ARENA_SIZE,
                PM_POOL_SIZE, sizeof(pm_pool));
    json_append(&w, "\"classes\":[");
    for (unsigned c = 0; c < PM_NUM_CLASSES; c++) {
        const class_stats *cs = &s.classes[c];
        json_append(&w,
                    "%s{\"class\":%u,\"size\":%zu,\"capacity\":%u,\"pools\":%zu,"
                    "\"blocks_in_use\":%zu,\"avail_blocks\":%zu}",
                    c == 0 ? "" : ",", c, pm_class_block_size(c), (unsigned)pm_class_capacity(c),
                    cs->pools, cs->blocks_in_use, cs->avail_blocks);
    }
    json_append(&w,
                "],\"arenas\":{\"allocated_total\":%zu,\"reclaimed\":%zu,\"highwater\":%zu,"
                "\"current\":%zu,\"bytes\":%zu},",
                counters.arenas_allocated_total, counters.arenas_reclaimed,
                counters.arenas_highwater, s.arenas, s.arenas * PM_ARENA_SIZE);
    json_append(&w,
                "\"bytes\":{\"allocated_blocks\":%zu,\"available_blocks\":%zu,"
                "\"unused_pools\":%zu,\"unused_pool_bytes\":%zu,\"pool_headers\":%zu,"
                "\"quantization\":%zu,\"arena_alignment\":%zu,\"total\":%zu},",
                s.allocated_bytes, s.available_bytes, s.unused_pools,
                s.unused_pools * PM_POOL_SIZE, (size_t)0, s.quantization_bytes,
                s.alignment_bytes, snapshot_total(&s));
    json_append(&w,
                "\"arena_map\":{\"leaf_nodes\":%zu,\"root_bytes\":%zu,\"leaf_bytes\":%zu,"
                "\"total\":%zu},",
                counters.map_leaf_nodes, map_root_bytes(), map_leaf_bytes(),
                map_root_bytes() + map_leaf_bytes());
    json_append(&w, "\"descriptor_bytes\":%zu,", descriptor_bytes);
    json_append(&w,
                "\"allocated_blocks\":%zu,\"raw_allocated_blocks\":%zu,"
                "\"reserve\":{\"arenas\":%zu,\"bytes\":%zu,\"limit_bytes\":%zu},",
                s.pool_blocks + raw_blocks(), raw_blocks(), reserve, reserve * PM_ARENA_SIZE,
                reserve_limit);
    json_append(&w,
                "\"thread_caches\":{\"enabled\":%s,\"free_threaded\":%s,"
                "\"threads_attached\":%zu,\"heaps\":%zu,\"cached_pools\":%zu,"
                "\"stashed_pools\":%zu,\"thread_full_pools\":%zu,\"shared_pools\":%zu,",
                pm_threading.caches ? "true" : "false",
                pm_threading.free_threaded ? "true" : "false", s.threads_attached, s.heaps,
                s.cached_pools, s.stashed_pools, s.thread_full_pools, s.shared_pools);
    json_append(&w,
                "\"remote_frees\":%llu,\"remote_applied\":%llu,\"drains\":%llu,"
                "\"pools_adopted\":%llu,\"pools_given\":%llu,\"pools_from_arena\":%llu,"
                "\"pools_to_arena\":%llu,\"stash_hits\":%llu}}",
                (unsigned long long)s.cache.remote_frees,
                (unsigned long long)s.cache.remote_received, (unsigned long long)s.cache.drains,
                (unsigned long long)s.cache.pools_adopted, (unsigned long long)s.cache.pools_given,
                (unsigned long long)s.cache.pools_from_arena,
                (unsigned long long)s.cache.pools_to_arena, (unsigned long long)s.cache.stash_hits);
    return w.failed ? 0 : w.length;
}
