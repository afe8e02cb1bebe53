/*
 * trace_snapshot.c — tracemalloc's Snapshot: a copy of every trace, statistics grouped by
 * traceback, by file and line, or by file, the difference of two snapshots, and their text
 * and JSON forms.
 *
 * A snapshot is taken under the tracer's control mutex, one trace shard lock at a time
 * (pm_trace_visit), so tracebacks cannot be freed while it copies them. It copies each
 * distinct traceback once (a map from the interned traceback to its copy) and symbolises
 * native frames after the locks are released. Its memory, like the tables', comes from
 * pm_trace_mem_alloc (anonymous mappings): a snapshot may be taken from inside code that
 * the traced domains would otherwise record, and it shows up in pm_trace_get_memory.
 *
 *   snapshot { traces: {traceback index, bytes}... | tracebacks: {first frame, nframes}...
 *              | frames: pm_trace_frame... }
 *
 * Grouping hashes each trace's key (the frames' file names by content, and lines) into an
 * open-addressing table of groups; statistics own nothing but their array (and, grouped
 * by file, one {file, 0} frame per group), and point into the snapshots for frames.
 */
#include "alloc/internal/trace.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct snap_trace {
    size_t tb;   /* index into tbs */
    size_t size; /* accounted bytes */
} snap_trace;

typedef struct snap_tb {
    size_t first; /* index into frames */
    size_t nframes;
} snap_tb;

struct pm_trace_snapshot {
    snap_trace *traces;
    size_t ntraces, traces_cap;
    snap_tb *tbs;
    size_t ntbs, tbs_cap;
    pm_trace_frame *frames;
    size_t nframes, frames_cap;
    /* Interned traceback -> index + 1 in tbs; only while taking the snapshot. */
    const pm_trace_tb **map_keys;
    size_t *map_values;
    size_t map_cap;
    size_t total;
};

/* ---- growable arrays in tracer memory -------------------------------------------------- */

static bool grow(void **array, size_t *cap, size_t elem_size, size_t need) {
    if (need <= *cap) return true;
    size_t fresh_cap = *cap ? *cap : 4096 / elem_size;
    while (fresh_cap < need) fresh_cap *= 2;
    void *fresh = pm_trace_mem_alloc(fresh_cap * elem_size);
    if (fresh == NULL) return false;
    if (*cap) memcpy(fresh, *array, *cap * elem_size);
    pm_trace_mem_free(*array, *cap * elem_size);
    *array = fresh;
    *cap = fresh_cap;
    return true;
}

#define GROW(array, cap, need) grow((void **)&(array), &(cap), sizeof *(array), (need))

/* ---- taking a snapshot ----------------------------------------------------------------- */

static size_t map_slot(const pm_trace_snapshot *s, const pm_trace_tb *tb) {
    size_t mask = s->map_cap - 1;
    size_t i = ((uintptr_t)tb >> 4) * 0x9E3779B97F4A7C15ull >> 20 & mask;
    while (s->map_keys[i] != NULL && s->map_keys[i] != tb) i = (i + 1) & mask;
    return i;
}

static bool map_grow(pm_trace_snapshot *s) {
    if (s->map_cap != 0 && (s->ntbs + 1) * 2 <= s->map_cap) return true;
    size_t cap = s->map_cap ? s->map_cap * 2 : 1024;
    const pm_trace_tb **keys = pm_trace_mem_alloc(cap * sizeof *keys);
    size_t *values = pm_trace_mem_alloc(cap * sizeof *values);
    if (keys == NULL || values == NULL) {
        pm_trace_mem_free(keys, keys ? cap * sizeof *keys : 0);
        pm_trace_mem_free(values, values ? cap * sizeof *values : 0);
        return false;
    }
    pm_trace_snapshot old = *s;
    s->map_keys = keys;
    s->map_values = values;
    s->map_cap = cap;
    for (size_t i = 0; i < old.map_cap; i++) {
        if (old.map_keys[i] == NULL) continue;
        size_t j = map_slot(s, old.map_keys[i]);
        keys[j] = old.map_keys[i];
        values[j] = old.map_values[i];
    }
    pm_trace_mem_free(old.map_keys, old.map_cap * sizeof *old.map_keys);
    pm_trace_mem_free(old.map_values, old.map_cap * sizeof *old.map_values);
    return true;
}

/* Runs under a shard lock: copies, never allocates from the traced domains. */
static int add_trace(void *ctx, const pm_trace_tb *tb, size_t size) {
    pm_trace_snapshot *s = ctx;
    if (!map_grow(s)) return 1;
    size_t slot = map_slot(s, tb);
    if (s->map_keys[slot] == NULL) {
        if (!GROW(s->tbs, s->tbs_cap, s->ntbs + 1) ||
            !GROW(s->frames, s->frames_cap, s->nframes + tb->nframes)) {
            return 1;
        }
        memcpy(s->frames + s->nframes, tb->frames, tb->nframes * sizeof *tb->frames);
        s->tbs[s->ntbs] = (snap_tb){s->nframes, tb->nframes};
        s->nframes += tb->nframes;
        s->map_keys[slot] = tb;
        s->map_values[slot] = ++s->ntbs;
    }
    if (!GROW(s->traces, s->traces_cap, s->ntraces + 1)) return 1;
    s->traces[s->ntraces++] = (snap_trace){s->map_values[slot] - 1, size};
    s->total += size;
    return 0;
}

void pm_trace_snapshot_free(pm_trace_snapshot *s) {
    if (s == NULL) return;
    pm_trace_mem_free(s->traces, s->traces_cap * sizeof *s->traces);
    pm_trace_mem_free(s->tbs, s->tbs_cap * sizeof *s->tbs);
    pm_trace_mem_free(s->frames, s->frames_cap * sizeof *s->frames);
    pm_trace_mem_free(s->map_keys, s->map_cap * sizeof *s->map_keys);
    pm_trace_mem_free(s->map_values, s->map_cap * sizeof *s->map_values);
    pm_trace_mem_free(s, sizeof *s);
}

pm_trace_snapshot *pm_trace_take_snapshot(void) {
    pm_trace_snapshot *s = pm_trace_mem_alloc(sizeof *s);
    if (s == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    memset(s, 0, sizeof *s);
    int result = pm_trace_visit(add_trace, s);
    if (result != 0) {
        int error = result < 0 ? errno : ENOMEM;
        pm_trace_snapshot_free(s);
        errno = error;
        return NULL;
    }
    pm_trace_mem_free(s->map_keys, s->map_cap * sizeof *s->map_keys);
    pm_trace_mem_free(s->map_values, s->map_cap * sizeof *s->map_values);
    s->map_keys = NULL;
    s->map_values = NULL;
    s->map_cap = 0;
    for (size_t i = 0; i < s->nframes; i++) s->frames[i] = pm_trace_symbolize(s->frames[i]);
    return s;
}

size_t pm_trace_snapshot_count(const pm_trace_snapshot *s) {
    return s ? s->ntraces : 0;
}

size_t pm_trace_snapshot_size(const pm_trace_snapshot *s) {
    return s ? s->total : 0;
}

/* ---- grouping -------------------------------------------------------------------------- */

typedef struct group {
    const pm_trace_frame *frames;
    size_t nframes;
    uint64_t hash;
    size_t size;
    size_t count;
} group;

typedef struct grouping {
    group *groups;
    size_t ngroups;
    size_t groups_bytes;
    size_t *index; /* group + 1; 0: empty */
    size_t mask;
    pm_trace_frame *file_frames; /* by file: each group's {file, 0} */
} grouping;

static uint64_t key_hash(const pm_trace_frame *frames, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    for (size_t i = 0; i < n; i++) {
        for (const char *c = frames[i].filename; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001b3ull;
        h = (h ^ frames[i].lineno) * 0x100000001b3ull;
    }
    return h;
}

static int key_compare(const pm_trace_frame *a, size_t na, const pm_trace_frame *b, size_t nb) {
    for (size_t i = 0; i < na && i < nb; i++) {
        int c = strcmp(a[i].filename, b[i].filename);
        if (c != 0) return c;
        if (a[i].lineno != b[i].lineno) return a[i].lineno < b[i].lineno ? -1 : 1;
    }
    return na == nb ? 0 : (na < nb ? -1 : 1);
}

static void grouping_free(grouping *g) {
    pm_trace_mem_free(g->groups, g->groups_bytes);
    pm_trace_mem_free(g->index, g->index ? (g->mask + 1) * sizeof *g->index : 0);
    pm_trace_mem_free(g->file_frames, g->file_frames ? g->groups_bytes / sizeof(group) * sizeof(pm_trace_frame) : 0);
}

static const group *grouping_find(const grouping *g, const pm_trace_frame *frames, size_t n,
                                  uint64_t hash, size_t *slot) {
    size_t i = hash & g->mask;
    for (; g->index[i] != 0; i = (i + 1) & g->mask) {
        const group *candidate = &g->groups[g->index[i] - 1];
        if (candidate->hash == hash && key_compare(candidate->frames, candidate->nframes, frames, n) == 0) {
            break;
        }
    }
    if (slot != NULL) *slot = i;
    return g->index[i] ? &g->groups[g->index[i] - 1] : NULL;
}

static bool group_snapshot(const pm_trace_snapshot *s, pm_trace_group by, grouping *g) {
    memset(g, 0, sizeof *g);
    size_t capacity = s->ntraces ? s->ntraces : 1;
    size_t index_cap = 16;
    while (index_cap < capacity * 2) index_cap *= 2;
    g->groups_bytes = capacity * sizeof(group);
    g->groups = pm_trace_mem_alloc(g->groups_bytes);
    g->index = pm_trace_mem_alloc(index_cap * sizeof *g->index);
    g->mask = index_cap - 1;
    if (by == PM_TRACE_BY_FILENAME) g->file_frames = pm_trace_mem_alloc(capacity * sizeof(pm_trace_frame));
    if (g->groups == NULL || g->index == NULL || (by == PM_TRACE_BY_FILENAME && g->file_frames == NULL)) {
        if (g->index == NULL) g->mask = 0;
        grouping_free(g);
        return false;
    }
    for (size_t t = 0; t < s->ntraces; t++) {
        const snap_tb *tb = &s->tbs[s->traces[t].tb];
        const pm_trace_frame *frames = &s->frames[tb->first];
        size_t n = by == PM_TRACE_BY_TRACEBACK ? tb->nframes : 1;
        pm_trace_frame file_key;
        if (by == PM_TRACE_BY_FILENAME) {
            file_key = (pm_trace_frame){frames[0].filename, 0};
            frames = &file_key;
        }
        uint64_t hash = key_hash(frames, n);
        size_t slot;
        group *found = (group *)grouping_find(g, frames, n, hash, &slot);
        if (found == NULL) {
            found = &g->groups[g->ngroups];
            if (by == PM_TRACE_BY_FILENAME) {
                g->file_frames[g->ngroups] = file_key;
                frames = &g->file_frames[g->ngroups];
            }
            *found = (group){frames, n, hash, 0, 0};
            g->index[slot] = ++g->ngroups;
        }
        found->size += s->traces[t].size;
        found->count++;
    }
    return true;
}

/* ---- statistics ------------------------------------------------------------------------ */

typedef struct stats_block {
    pm_trace_stats stats; /* first: what the caller holds */
    size_t bytes;
} stats_block;

static pm_trace_stats *stats_new(size_t count, bool own_frames, pm_trace_frame **owned) {
    size_t bytes = sizeof(stats_block) + count * sizeof(pm_trace_stat) +
                   (own_frames ? count * sizeof(pm_trace_frame) : 0);
    stats_block *block = pm_trace_mem_alloc(bytes);
    if (block == NULL) return NULL;
    block->bytes = bytes;
    block->stats.items = (pm_trace_stat *)(void *)(block + 1);
    block->stats.count = 0;
    block->stats.is_diff = 0;
    *owned = own_frames ? (pm_trace_frame *)(void *)(block->stats.items + count) : NULL;
    return &block->stats;
}

void pm_trace_stats_free(pm_trace_stats *stats) {
    if (stats == NULL) return;
    stats_block *block = (stats_block *)(void *)stats;
    pm_trace_mem_free(block, block->bytes);
}

static int compare_keys_descending(const pm_trace_stat *a, const pm_trace_stat *b) {
    return -key_compare(a->frames, a->nframes, b->frames, b->nframes);
}

/* Largest first: tracemalloc sorts (size, count, traceback) in reverse. */
static int compare_stats(const void *pa, const void *pb) {
    const pm_trace_stat *a = pa, *b = pb;
    if (a->size != b->size) return a->size > b->size ? -1 : 1;
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    return compare_keys_descending(a, b);
}

static size_t magnitude(ptrdiff_t v) {
    return v < 0 ? (size_t)0 - (size_t)v : (size_t)v;
}

/* (|size_diff|, size, |count_diff|, count, traceback) in reverse, as tracemalloc. */
static int compare_diffs(const void *pa, const void *pb) {
    const pm_trace_stat *a = pa, *b = pb;
    if (magnitude(a->size_diff) != magnitude(b->size_diff)) {
        return magnitude(a->size_diff) > magnitude(b->size_diff) ? -1 : 1;
    }
    if (a->size != b->size) return a->size > b->size ? -1 : 1;
    if (magnitude(a->count_diff) != magnitude(b->count_diff)) {
        return magnitude(a->count_diff) > magnitude(b->count_diff) ? -1 : 1;
    }
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    return compare_keys_descending(a, b);
}

static bool valid_group(pm_trace_group by) {
    return by == PM_TRACE_BY_TRACEBACK || by == PM_TRACE_BY_LINENO || by == PM_TRACE_BY_FILENAME;
}

static void set_key(pm_trace_stat *item, const group *g, pm_trace_frame *owned, size_t i) {
    item->nframes = g->nframes;
    item->frames = g->frames;
    if (owned != NULL) {
        owned[i] = g->frames[0];
        item->frames = &owned[i];
    }
}

pm_trace_stats *pm_trace_snapshot_statistics(const pm_trace_snapshot *snapshot, pm_trace_group by) {
    if (snapshot == NULL || !valid_group(by)) {
        errno = EINVAL;
        return NULL;
    }
    grouping g;
    if (!group_snapshot(snapshot, by, &g)) {
        errno = ENOMEM;
        return NULL;
    }
    pm_trace_frame *owned;
    pm_trace_stats *stats = stats_new(g.ngroups, by == PM_TRACE_BY_FILENAME, &owned);
    if (stats != NULL) {
        for (size_t i = 0; i < g.ngroups; i++) {
            pm_trace_stat *item = &stats->items[i];
            memset(item, 0, sizeof *item);
            set_key(item, &g.groups[i], owned, i);
            item->size = g.groups[i].size;
            item->count = g.groups[i].count;
        }
        stats->count = g.ngroups;
        qsort(stats->items, stats->count, sizeof *stats->items, compare_stats);
    }
    grouping_free(&g);
    if (stats == NULL) errno = ENOMEM;
    return stats;
}

pm_trace_stats *pm_trace_snapshot_compare(const pm_trace_snapshot *now, const pm_trace_snapshot *old,
                                          pm_trace_group by) {
    if (now == NULL || old == NULL || !valid_group(by)) {
        errno = EINVAL;
        return NULL;
    }
    grouping g_now, g_old;
    if (!group_snapshot(now, by, &g_now)) {
        errno = ENOMEM;
        return NULL;
    }
    if (!group_snapshot(old, by, &g_old)) {
        grouping_free(&g_now);
        errno = ENOMEM;
        return NULL;
    }
    pm_trace_frame *owned;
    pm_trace_stats *stats = stats_new(g_now.ngroups + g_old.ngroups, by == PM_TRACE_BY_FILENAME, &owned);
    if (stats != NULL) {
        size_t n = 0;
        for (size_t i = 0; i < g_now.ngroups; i++) {
            const group *g = &g_now.groups[i];
            const group *before = grouping_find(&g_old, g->frames, g->nframes, g->hash, NULL);
            pm_trace_stat *item = &stats->items[n];
            set_key(item, g, owned, n++);
            item->size = g->size;
            item->count = g->count;
            item->size_diff = (ptrdiff_t)g->size - (ptrdiff_t)(before ? before->size : 0);
            item->count_diff = (ptrdiff_t)g->count - (ptrdiff_t)(before ? before->count : 0);
        }
        for (size_t i = 0; i < g_old.ngroups; i++) {
            const group *g = &g_old.groups[i];
            if (grouping_find(&g_now, g->frames, g->nframes, g->hash, NULL) != NULL) continue;
            pm_trace_stat *item = &stats->items[n];
            set_key(item, g, owned, n++);
            item->size = 0;
            item->count = 0;
            item->size_diff = -(ptrdiff_t)g->size;
            item->count_diff = -(ptrdiff_t)g->count;
        }
        stats->count = n;
        stats->is_diff = 1;
        qsort(stats->items, n, sizeof *stats->items, compare_diffs);
    }
    grouping_free(&g_now);
    grouping_free(&g_old);
    if (stats == NULL) errno = ENOMEM;
    return stats;
}

/* ---- text and JSON --------------------------------------------------------------------- */

typedef struct writer {
    char *buf;
    size_t size;
    size_t len;
} writer;

__attribute__((format(printf, 2, 3))) static void emit(writer *w, const char *format, ...) {
    va_list args;
    va_start(args, format);
    bool room = w->len < w->size;
    int n = vsnprintf(room ? w->buf + w->len : NULL, room ? w->size - w->len : 0, format, args);
    va_end(args);
    if (n > 0) w->len += (size_t)n;
}

/* tracemalloc's _format_size: "12 B", "10.5 KiB", "1536 KiB" (with a sign: "+512 KiB"). */
static void format_size(char out[32], double size, bool sign) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    for (size_t u = 0; u < 5; u++) {
        double magnitude_now = size < 0 ? -size : size;
        if (magnitude_now < 100 && u != 0) {
            snprintf(out, 32, sign ? "%+.1f %s" : "%.1f %s", size, units[u]);
            return;
        }
        if (magnitude_now < 10 * 1024 || u == 4) {
            snprintf(out, 32, sign ? "%+.0f %s" : "%.0f %s", size, units[u]);
            return;
        }
        size /= 1024;
    }
}

size_t pm_trace_stats_format(const pm_trace_stats *stats, size_t limit, char *buf, size_t size) {
    writer w = {buf, size, 0};
    if (size > 0) buf[0] = '\0';
    if (stats == NULL) return 0;
    size_t n = limit && limit < stats->count ? limit : stats->count;
    for (size_t i = 0; i < n; i++) {
        const pm_trace_stat *item = &stats->items[i];
        char total[32], diff[32], average[32];
        format_size(total, (double)item->size, false);
        emit(&w, "%s:%zu: size=%s", item->frames[0].filename, item->frames[0].lineno, total);
        if (stats->is_diff) {
            format_size(diff, (double)item->size_diff, true);
            emit(&w, " (%s), count=%zu (%+td)", diff, item->count, item->count_diff);
        } else {
            emit(&w, ", count=%zu", item->count);
        }
        if (item->count != 0) {
            format_size(average, (double)item->size / (double)item->count, false);
            emit(&w, ", average=%s", average);
        }
        emit(&w, "\n");
    }
    return w.len;
}

static void emit_json_string(writer *w, const char *s) {
    emit(w, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            emit(w, "\\%c", c);
        } else if (c < 0x20) {
            emit(w, "\\u%04x", c);
        } else {
            emit(w, "%c", c);
        }
    }
    emit(w, "\"");
}

size_t pm_trace_stats_json(const pm_trace_stats *stats, size_t limit, char *buf, size_t size) {
    writer w = {buf, size, 0};
    if (size > 0) buf[0] = '\0';
    if (stats == NULL) return 0;
    size_t n = limit && limit < stats->count ? limit : stats->count;
    emit(&w, "[");
    for (size_t i = 0; i < n; i++) {
        const pm_trace_stat *item = &stats->items[i];
        emit(&w, "%s{\"file\":", i ? "," : "");
        emit_json_string(&w, item->frames[0].filename);
        emit(&w, ",\"line\":%zu,\"size\":%zu,\"count\":%zu", item->frames[0].lineno, item->size,
             item->count);
        if (stats->is_diff) emit(&w, ",\"size_diff\":%td,\"count_diff\":%td", item->size_diff, item->count_diff);
        emit(&w, ",\"traceback\":[");
        for (size_t f = 0; f < item->nframes; f++) {
            emit(&w, "%s{\"file\":", f ? "," : "");
            emit_json_string(&w, item->frames[f].filename);
            emit(&w, ",\"line\":%zu}", item->frames[f].lineno);
        }
        emit(&w, "]}");
    }
    emit(&w, "]");
    return w.len;
}
