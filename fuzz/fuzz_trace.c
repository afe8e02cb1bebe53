/*
 * fuzz/fuzz_trace.c — fuzz target: the tracer (alloc/trace.c, alloc/trace_snapshot.c) under
 * a program of allocations, tracing sessions, tracking, snapshots and statistics.
 *
 * One input is one program, run under the modelled GIL over 32 slots of live blocks in the
 * raw, mem and object domains (pymalloc installed). A frame provider is installed for the
 * input; it reports frames derived from the index of the operation being run, so the
 * traceback every trace must carry is known. The sampler is seeded per input, so a
 * crashing input replays exactly. At the end everything is freed, tracking undone and
 * tracing stopped.
 *
 * Input: a sequence of operations `code [slot] args`; bytes past the end read as 0, so
 * every byte string is a program. code = kind (bits 0-3) | domain (bits 4-5: raw, mem,
 * obj, obj) | variant (bits 6-7). A size is one byte (< 0x40: an entry of BOUNDARY) or two
 * (0x40..0x7F: 1..512, 0x80..0xBF: 513..4096, 0xC0..: 4097..~69000).
 *
 *   kind  args          action
 *   0     slot size     malloc into the slot (a live block there is freed first)
 *   1     slot size     calloc: variant 0 (1, n), 1 (n, 1), 2 (n/4, 4), 3 (0, n)
 *   2     slot size     realloc the slot's block (from NULL when empty; variant 3: to 0)
 *   3     slot          free the slot's block
 *   4     -             pm_trace_start(variant + 1); variant 3: an invalid count (EINVAL)
 *   5     mean          pm_trace_start_sampling(variant + 1, MEANS[mean & 7]); variant 3 as 4
 *   6     -             pm_trace_stop
 *   7     -             pm_trace_clear_traces
 *   8     -             pm_trace_reset_peak, then peak == current
 *   9     -             query: traced memory, is_tracing, traceback limit, lost traces
 *   10    arg           snapshot; statistics grouped by arg % 3 and, with a previous
 *                       snapshot, the diff against it; arg & 4: keep it as the previous
 *   11    slot arg      pm_trace_track (domain bits: 3, 1000, UINT_MAX, or an allocator
 *                       domain at an odd address): size TRACK_SIZES[arg & 3]; arg & 4: ptr
 *                       0, arg & 8: size > PTRDIFF_MAX (both refused with -1); arg & 16:
 *                       the slot's own block in its own domain instead, in a full session
 *                       and when the session made it: its trace and size are replaced (a
 *                       size its block's mark cannot say is kept in its record), and its
 *                       free removes them
 *   12    slot          pm_trace_untrack, same addressing
 *   13    -             variant 0: install the provider; 1: remove it (native frames)
 *   14    -             heap check and every block's contents; variant 3: free every slot
 *   15    count size    churn: count % 32 + 1 blocks allocated, then freed (variant 1:
 *                       in reverse), each checked while live
 *
 * The model and what is checked after each operation:
 *   - every live block and every tracked address: pm_trace_get_traceback finds a trace
 *     exactly when the model says it is traced, with the frames the provider gave when it
 *     was recorded (with no provider: the native frames read back when it was made, 1 to
 *     nframes of them); freed and moved-from addresses are not traced;
 *   - full tracing: every block allocated or reallocated since the session start or the
 *     last clear is traced; sampling: a new block is traced or not at random (observed once,
 *     when it is made), never one made before the session or the last clear, and at a mean
 *     of 1 byte always when it is 40 bytes or more (p = 1 - exp(-40)); the provider is
 *     called once per trace stored and never otherwise, with max_frames = nframes;
 *   - traced memory (query, reset, snapshot, end): current == the sum over traces of the
 *     size asked for (sampling: its weight s / (1 - exp(-s/mean))) plus tracked sizes; the
 *     peak lies in (true peak - 16 KiB, true peak], the true peak being the model's since
 *     start, clear or reset; after reset, peak == current; not tracing, both 0;
 *   - snapshots: count and size are the model's; statistics by traceback, line or file
 *     have exactly the model's groups (size, count), sorted largest first; a diff against
 *     the previous snapshot has every key of either with the right differences; the text
 *     and JSON forms have the length they report;
 *   - not tracing: is_tracing 0, track/untrack -2, a snapshot fails with EINVAL; a start
 *     in another mode or rate while tracing fails with EBUSY and changes nothing;
 *   - blocks keep their fill until freed (realloc keeps the prefix), calloc zeroes;
 *     pm_heap_check() passes every 8 operations; at the end pm_allocated_blocks(),
 *     the raw domain's live count and pm_trace_lost_traces() are back to their start.
 * Any violation aborts with the operation's index, what was expected and what was found.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/internal/trace.h" /* pm_trace_test_seed_sampler */
#include "alloc/pymalloc_mt.h"
#include "fuzz/domain_calls.h"
#include "fuzz/fuzz_target.h"
#include "gil/gil.h"

enum {
    SLOTS = 32,
    MAX_TRACKED = 16,
    MAX_FRAMES = 3,   /* sessions keep 1..3 frames; the provider offers 3 */
    CHECK_HEAP_EVERY = 8,
    MAX_OPS = 4096,
    CHURN_MAX = 32,
    MAX_ENTRIES = SLOTS + MAX_TRACKED,
};

/* The tracer's documented peak tolerance: at most 16 KiB per allocating thread below. */
#define PEAK_SLACK ((size_t)16 * 1024)

static const size_t BOUNDARY[] = {0,   1,   2,   8,   15,   16,   17,   24,   32,   33,   39,
                                  40,  41,  48,  63,  64,   100,  128,  255,  256,  257,  448,
                                  496, 511, 512, 513, 1000, 1024, 4095, 4096, 4097, 65536};
#define BOUNDARY_COUNT (sizeof BOUNDARY / sizeof BOUNDARY[0])

static const size_t MEANS[8] = {1, 1, 64, 4096, 0, 16, 512, 100000};
static const size_t TRACK_SIZES[4] = {0, 17, 4096, (size_t)1 << 20};
static const unsigned USER_DOMAINS[3] = {3, 1000, UINT_MAX};
static const char *const FILES[4] = {"alpha.py", "beta.py", "gamma.py", "delta.py"};
static const char UNKNOWN[] = "<unknown>"; /* what the tracer reports for a missing file */

typedef enum kind {
    K_MALLOC, K_CALLOC, K_REALLOC, K_FREE, K_START, K_START_SAMPLING, K_STOP, K_CLEAR,
    K_RESET_PEAK, K_QUERY, K_SNAPSHOT, K_TRACK, K_UNTRACK, K_PROVIDER, K_CHECK, K_CHURN,
} kind;

typedef enum mode { MODE_OFF, MODE_FULL, MODE_SAMPLING } mode;

typedef struct frames {
    size_t n;
    pm_trace_frame f[MAX_FRAMES];
} frames;

typedef struct slot {
    unsigned char *ptr; /* NULL: empty */
    size_t size;
    pm_domain domain;
    unsigned char fill;
    bool traced;
    frames tb; /* when traced */
    bool retracked;      /* tracked again by hand (K_TRACK, arg & 16): counts tracked_size */
    size_t tracked_size;
} slot;

typedef struct tracked {
    unsigned domain;
    uintptr_t ptr;
    size_t size;
    frames tb;
} tracked;

/* One trace as a snapshot should show it. */
typedef struct entry {
    frames tb;
    size_t bytes;
} entry;

static struct {
    mode mode;
    size_t mean; /* sampling: the effective mean */
    int nframes;
    bool provider_on;
    size_t op;             /* index of the operation running: the provider's frames */
    size_t provider_calls; /* since the operation started */
    slot slots[SLOTS];
    tracked tracked[MAX_TRACKED];
    size_t ntracked;
    size_t true_peak; /* the model's peak since start, clear or reset */
    pm_trace_snapshot *previous;
    entry previous_entries[MAX_ENTRIES];
    size_t nprevious;
    const uint8_t *data;
    size_t size, at;
    const char *what; /* the operation's name, for reports */
} st;

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "fuzz_trace: step %zu (%s): ", st.op, st.what ? st.what : "end");
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    abort();
}

static uint8_t next_byte(void) {
    return st.at < st.size ? st.data[st.at++] : 0;
}

static size_t next_size(void) {
    uint8_t b = next_byte();
    if (b < 0x40) return BOUNDARY[b % BOUNDARY_COUNT];
    size_t v = (size_t)(b & 0x3F) << 8 | next_byte();
    if (b < 0x80) return 1 + v % 512;
    if (b < 0xC0) return 513 + v % 3584;
    return 4097 + v * 4;
}

/* ---- the frame provider and the tracebacks it implies -------------------------------- */

static size_t provided_count(size_t op) {
    return op % 8 == 7 ? 0 : MAX_FRAMES;
}

static pm_trace_frame provided_frame(size_t op, size_t i) {
    /* Now and then a frame without a file: the tracer must show it as "<unknown>". */
    const char *file = op % 16 == 5 && i == 1 ? NULL : FILES[(op + i) % 4];
    return (pm_trace_frame){file, op * 8 + i + 1};
}

/* Called inside traced allocations and pm_trace_track, with the GIL held by the harness. */
static size_t provide(void *ctx, pm_trace_frame *out, size_t max_frames) {
    (void)ctx;
    pm_gil_assert_held();
    st.provider_calls++;
    if (st.mode == MODE_OFF || max_frames != (size_t)st.nframes) {
        fail("provider asked for %zu frames (session keeps %d, mode %d)", max_frames,
             st.nframes, (int)st.mode);
    }
    /* What a provider allocates is not traced, nor charged to the sampler. */
    if (st.op % 3 == 0) {
        void *p = pm_mem_malloc(24 + st.op % 100);
        if (p == NULL) fail("provider's own allocation failed");
        memset(p, 0x5A, 24);
        pm_mem_free(p);
    }
    size_t n = provided_count(st.op);
    if (n > max_frames) n = max_frames;
    for (size_t i = 0; i < n; i++) out[i] = provided_frame(st.op, i);
    return n;
}

/* The traceback the tracer must store for a trace made now with the provider on. */
static frames expected_frames(void) {
    frames e = {0, {{NULL, 0}}};
    size_t n = provided_count(st.op);
    if (n > (size_t)st.nframes) n = (size_t)st.nframes;
    for (size_t i = 0; i < n; i++) {
        e.f[i] = provided_frame(st.op, i);
        if (e.f[i].filename == NULL) e.f[i].filename = UNKNOWN;
    }
    if (n == 0) e.f[n++] = (pm_trace_frame){UNKNOWN, 0};
    e.n = n;
    return e;
}

static bool same_frame(pm_trace_frame a, pm_trace_frame b) {
    return a.lineno == b.lineno && a.filename != NULL && b.filename != NULL &&
           strcmp(a.filename, b.filename) == 0;
}

static bool same_frames(const frames *a, const pm_trace_frame *b, size_t n) {
    if (a->n != n) return false;
    for (size_t i = 0; i < n; i++) {
        if (!same_frame(a->f[i], b[i])) return false;
    }
    return true;
}

/* Reads the trace of (domain, ptr): its frame count (-1: none), frames into *out. */
static int read_trace(unsigned domain, const void *ptr, frames *out) {
    pm_trace_frame got[MAX_FRAMES + 1];
    int n = pm_trace_get_traceback(domain, ptr, got, MAX_FRAMES + 1);
    if (n > MAX_FRAMES) fail("traceback of %p in domain %u has %d frames", ptr, domain, n);
    if (out != NULL && n > 0) {
        out->n = (size_t)n;
        memcpy(out->f, got, (size_t)n * sizeof got[0]);
    }
    return n;
}

/* A trace was just stored for (domain, ptr): its frames must be the ones expected now.
 * Returns them (read back when the provider is off). */
static frames check_new_trace(unsigned domain, const void *ptr) {
    frames got = {0, {{NULL, 0}}};
    int n = read_trace(domain, ptr, &got);
    if (n < 1 || n > st.nframes) {
        fail("new trace of %p in domain %u has %d frames, expected 1..%d", ptr, domain, n,
             st.nframes);
    }
    if (st.provider_on) {
        frames want = expected_frames();
        if (!same_frames(&want, got.f, got.n)) {
            fail("new trace of %p in domain %u: frames differ from the provider's (%zu frames, "
                 "first %s:%zu; expected %zu, first %s:%zu)",
                 ptr, domain, got.n, got.f[0].filename, got.f[0].lineno, want.n,
                 want.f[0].filename, want.f[0].lineno);
        }
        if (st.provider_calls != 1) fail("provider called %zu times for one trace", st.provider_calls);
    } else {
        for (size_t i = 0; i < got.n; i++) {
            if (got.f[i].filename == NULL) fail("native frame %zu has no file", i);
        }
    }
    return got;
}

/* ---- model arithmetic ------------------------------------------------------------------ */

/* Bytes a trace of `size` stands for: its size, or in a sampling session the
 * Horvitz-Thompson weight s / p(s), p(s) = 1 - exp(-s/mean), rounded (alloc/trace.c). */
static size_t accounted(size_t size) {
    if (st.mode != MODE_SAMPLING || size == 0) return size;
    double p = -expm1(-(double)size / (double)st.mean);
    return (size_t)((double)size / p + 0.5);
}

static size_t collect_entries(entry *out) {
    size_t n = 0;
    for (size_t i = 0; i < SLOTS; i++) {
        const slot *s = &st.slots[i];
        if (s->ptr != NULL && s->traced) {
            out[n++] = (entry){s->tb, s->retracked ? s->tracked_size : accounted(s->size)};
        }
    }
    for (size_t i = 0; i < st.ntracked; i++) out[n++] = (entry){st.tracked[i].tb, st.tracked[i].size};
    return n;
}

static size_t model_current(void) {
    entry entries[MAX_ENTRIES];
    size_t n = collect_entries(entries), sum = 0;
    for (size_t i = 0; i < n; i++) sum += entries[i].bytes;
    return sum;
}

static void note_peak(size_t extra) {
    size_t now = model_current() + extra;
    if (now > st.true_peak) st.true_peak = now;
}

static void forget_traces(void) {
    for (size_t i = 0; i < SLOTS; i++) st.slots[i].traced = st.slots[i].retracked = false;
    st.ntracked = 0;
    st.true_peak = 0;
}

/* ---- checks ------------------------------------------------------------------------------ */

static void check_memory(void) {
    size_t current = 1, peak = 1;
    pm_trace_get_traced_memory(&current, &peak);
    if (st.mode == MODE_OFF) {
        if (current != 0 || peak != 0) fail("not tracing, yet current %zu, peak %zu", current, peak);
        return;
    }
    size_t want = model_current();
    if (current != want) fail("traced memory %zu, expected %zu", current, want);
    if (peak < current || peak > st.true_peak || peak + PEAK_SLACK <= st.true_peak) {
        fail("peak %zu with current %zu: expected in (%zu - 16 KiB, %zu]", peak, current,
             st.true_peak, st.true_peak);
    }
}

static void check_trace_of(unsigned domain, const void *ptr, bool traced, const frames *tb,
                           const char *what) {
    frames got = {0, {{NULL, 0}}};
    int n = read_trace(domain, ptr, &got);
    if (!traced) {
        if (n != -1) fail("%s %p (domain %u) is not traced, yet a traceback of %d frames", what, ptr, domain, n);
        return;
    }
    if (n < 0) fail("%s %p (domain %u) lost its trace", what, ptr, domain);
    if (!same_frames(tb, got.f, got.n)) {
        fail("%s %p (domain %u): traceback changed (%zu frames, first %s:%zu; recorded %zu, "
             "first %s:%zu)",
             what, ptr, domain, got.n, got.f[0].filename, got.f[0].lineno, tb->n,
             tb->f[0].filename, tb->f[0].lineno);
    }
}

/* Every live block and tracked address has exactly the trace the model says. */
static void check_traces(void) {
    for (size_t i = 0; i < SLOTS; i++) {
        const slot *s = &st.slots[i];
        if (s->ptr != NULL) check_trace_of(s->domain, s->ptr, s->traced, &s->tb, "block");
    }
    for (size_t i = 0; i < st.ntracked; i++) {
        const tracked *t = &st.tracked[i];
        check_trace_of(t->domain, (const void *)t->ptr, true, &t->tb, "tracked address");
    }
}

PM_FUZZ_NO_COVERAGE static void check_fill(const slot *s, size_t n, const char *when) {
    for (size_t i = 0; i < n; i++) {
        if (s->ptr[i] != s->fill) {
            fail("%s: block %p (%zu bytes, domain %d) byte %zu is %#x, expected %#x", when,
                 (void *)s->ptr, s->size, (int)s->domain, i, s->ptr[i], s->fill);
        }
    }
}

PM_FUZZ_NO_COVERAGE static void check_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0) fail("calloc byte %zu of %zu is %#x", i, n, p[i]);
    }
}

static void check_heap(void) PM_GIL_REQUIRED {
    const char *problem = pm_heap_check();
    if (problem != NULL) fail("heap check: %s", problem);
}

/* ---- the domains ------------------------------------------------------------------------- */

static pm_domain domain_of(uint8_t code) {
    unsigned d = (code >> 4) & 3;
    return d == 0 ? PM_DOMAIN_RAW : d == 1 ? PM_DOMAIN_MEM : PM_DOMAIN_OBJ;
}

/* ---- blocks ------------------------------------------------------------------------------- */

/* A block of `size` bytes was just made (allocated, or reallocated to p) in this
 * operation: decide from the mode, and check, whether it is traced. Returns whether. */
static bool note_new_block(pm_domain d, const void *p, size_t size, frames *tb) {
    switch (st.mode) {
    case MODE_OFF:
        if (read_trace(d, p, NULL) != -1) fail("block %p traced while not tracing", p);
        if (st.provider_calls != 0) fail("provider called while not tracing");
        return false;
    case MODE_FULL:
        if (read_trace(d, p, NULL) < 0) fail("block %p (%zu bytes, domain %d) not traced in a full session", p, size, (int)d);
        *tb = check_new_trace(d, p);
        return true;
    case MODE_SAMPLING:
        if (read_trace(d, p, NULL) < 0) {
            if (st.mean == 1 && size >= 40) {
                fail("block %p of %zu bytes (domain %d) not sampled at a mean of 1 byte", p, size, (int)d);
            }
            if (st.provider_calls != 0) fail("provider called for a block that was not sampled");
            return false;
        }
        *tb = check_new_trace(d, p);
        return true;
    }
    return false;
}

static unsigned char fill_for(size_t index) {
    return (unsigned char)((index * 37 + st.op * 11) | 1);
}

static void release(size_t index) PM_GIL_REQUIRED {
    slot *s = &st.slots[index];
    if (s->ptr == NULL) return;
    check_fill(s, s->size, "free");
    unsigned char *p = s->ptr;
    domain_free(s->domain, p);
    s->ptr = NULL;
    s->traced = s->retracked = false;
    if (read_trace(s->domain, p, NULL) != -1) fail("freed block %p (domain %d) still traced", (void *)p, (int)s->domain);
}

static void place(size_t index, pm_domain d, unsigned char *p, size_t size, size_t requested) {
    slot *s = &st.slots[index];
    if (p == NULL) fail("allocation of %zu bytes in domain %d failed", size, (int)d);
    s->ptr = p;
    s->size = size;
    s->domain = d;
    s->retracked = false;
    s->traced = note_new_block(d, p, requested, &s->tb);
    s->fill = fill_for(index);
    memset(p, s->fill, size);
}

static void op_malloc(size_t index, pm_domain d, size_t size) PM_GIL_REQUIRED {
    release(index);
    st.provider_calls = 0;
    place(index, d, domain_malloc(d, size), size, size);
}

static void op_calloc(size_t index, pm_domain d, unsigned variant, size_t size) PM_GIL_REQUIRED {
    release(index);
    size_t nelem = 1, elsize = size;
    switch (variant) {
    case 1: nelem = size; elsize = 1; break;
    case 2: nelem = size / 4; elsize = 4; break;
    case 3: nelem = 0; break;
    default: break;
    }
    size_t total = nelem * elsize;
    st.provider_calls = 0;
    unsigned char *p = domain_calloc(d, nelem, elsize);
    if (p != NULL) check_zero(p, total);
    place(index, d, p, total, total);
}

static void op_realloc(size_t index, pm_domain d, size_t size) PM_GIL_REQUIRED {
    slot *s = &st.slots[index];
    if (s->ptr == NULL) {
        st.provider_calls = 0;
        place(index, d, domain_realloc(d, NULL, size), size, size);
        return;
    }
    check_fill(s, s->size, "realloc (before)");
    unsigned char *old = s->ptr;
    st.provider_calls = 0;
    unsigned char *q = domain_realloc(s->domain, old, size);
    if (q == NULL) fail("realloc of %p to %zu bytes failed", (void *)old, size);
    size_t keep = s->size < size ? s->size : size;
    s->ptr = q;
    check_fill(s, keep, "realloc (after)");
    if (q != old && read_trace(s->domain, old, NULL) != -1) {
        fail("block %p moved to %p by realloc, the old address is still traced", (void *)old, (void *)q);
    }
    s->size = size;
    s->retracked = false;
    s->traced = note_new_block(s->domain, q, size, &s->tb);
    s->fill = fill_for(index);
    memset(q, s->fill, size);
}

static void op_churn(pm_domain d, unsigned variant, size_t count, size_t size) PM_GIL_REQUIRED {
    unsigned char *blocks[CHURN_MAX];
    size_t extra = 0;
    for (size_t i = 0; i < count; i++) {
        st.provider_calls = 0;
        blocks[i] = domain_malloc(d, size);
        if (blocks[i] == NULL) fail("churn allocation of %zu bytes failed", size);
        frames tb;
        if (note_new_block(d, blocks[i], size, &tb)) extra += accounted(size);
        note_peak(extra);
        memset(blocks[i], 0xC3, size);
    }
    for (size_t k = 0; k < count; k++) {
        size_t i = variant == 1 ? count - 1 - k : k;
        domain_free(d, blocks[i]);
        if (read_trace(d, blocks[i], NULL) != -1) fail("churned block %p still traced after free", (void *)blocks[i]);
    }
}

/* ---- tracking ------------------------------------------------------------------------------ */

/* The (domain, address) a track or untrack operation names. */
static void track_target(uint8_t code, size_t index, unsigned *domain, uintptr_t *ptr) {
    const slot *s = &st.slots[index];
    uintptr_t base = s->ptr != NULL ? (uintptr_t)s->ptr : (uintptr_t)0x10000 * (index + 1);
    unsigned which = (code >> 4) & 3;
    if (which < 3) {
        *domain = USER_DOMAINS[which];
        *ptr = base;
    } else {
        /* An allocator domain, at an odd address: never a block's, so never freed by one. */
        *domain = (unsigned)(index % PM_DOMAIN_COUNT);
        *ptr = base + 1 + 2 * (index % 7);
    }
}

static ptrdiff_t find_tracked(unsigned domain, uintptr_t ptr) {
    for (size_t i = 0; i < st.ntracked; i++) {
        if (st.tracked[i].domain == domain && st.tracked[i].ptr == ptr) return (ptrdiff_t)i;
    }
    return -1;
}

/* K_TRACK with arg & 16. Only for a block the full session made: one from before it may be
 * freed without the tracer (pymalloc's fast path), which would leave the trace behind. */
static void op_retrack(size_t index, uint8_t arg) {
    slot *s = &st.slots[index];
    if (st.mode != MODE_FULL || s->ptr == NULL || !s->traced) return;
    size_t size = TRACK_SIZES[arg & 3];
    st.provider_calls = 0;
    int result = pm_trace_track(s->domain, (uintptr_t)s->ptr, size);
    if (result != 0) {
        fail("track of the slot's own block %p (domain %d) as %zu bytes returned %d",
             (void *)s->ptr, (int)s->domain, size, result);
    }
    s->retracked = true;
    s->tracked_size = size;
    s->tb = check_new_trace(s->domain, s->ptr);
}

static void op_track(uint8_t code, size_t index, uint8_t arg) {
    if (arg & 16) {
        op_retrack(index, arg);
        return;
    }
    unsigned domain;
    uintptr_t ptr;
    track_target(code, index, &domain, &ptr);
    size_t size = TRACK_SIZES[arg & 3];
    if (arg & 4) ptr = 0;
    if (arg & 8) size = (size_t)PTRDIFF_MAX + 1;
    ptrdiff_t existing = find_tracked(domain, ptr);
    if (existing < 0 && st.ntracked == MAX_TRACKED && st.mode != MODE_OFF && ptr != 0 &&
        size <= (size_t)PTRDIFF_MAX) {
        return; /* the model's table is full */
    }
    st.provider_calls = 0;
    int result = pm_trace_track(domain, ptr, size);
    int want = st.mode == MODE_OFF ? -2 : (ptr == 0 || size > (size_t)PTRDIFF_MAX) ? -1 : 0;
    if (result != want) fail("track(%u, %#lx, %zu) returned %d, expected %d", domain, (unsigned long)ptr, size, result, want);
    if (result != 0) {
        if (st.provider_calls != 0) fail("provider called by a refused track");
        return;
    }
    tracked t = {domain, ptr, size, {0, {{NULL, 0}}}};
    t.tb = check_new_trace(domain, (const void *)ptr);
    if (existing >= 0) {
        st.tracked[existing] = t;
    } else {
        st.tracked[st.ntracked++] = t;
    }
}

static void op_untrack(uint8_t code, size_t index) {
    unsigned domain;
    uintptr_t ptr;
    track_target(code, index, &domain, &ptr);
    int result = pm_trace_untrack(domain, ptr);
    int want = st.mode == MODE_OFF ? -2 : 0;
    if (result != want) fail("untrack(%u, %#lx) returned %d, expected %d", domain, (unsigned long)ptr, result, want);
    ptrdiff_t existing = find_tracked(domain, ptr);
    if (existing >= 0) st.tracked[existing] = st.tracked[--st.ntracked];
    if (read_trace(domain, (const void *)ptr, NULL) != -1) fail("untracked address %#lx still traced", (unsigned long)ptr);
}

/* ---- sessions ------------------------------------------------------------------------------ */

static int frames_arg(unsigned variant, uint8_t code) {
    if (variant < 3) return (int)variant + 1;
    return (code & 0x10) ? PM_TRACE_MAX_FRAMES + 1 : 0; /* invalid */
}

static void op_start(unsigned variant, uint8_t code, bool sampling, uint8_t mean_arg) PM_GIL_REQUIRED {
    int nframes = frames_arg(variant, code);
    size_t mean = MEANS[mean_arg & 7];
    size_t effective = sampling ? (mean ? mean : PM_TRACE_DEFAULT_SAMPLE_BYTES) : 0;
    errno = 0;
    int result = sampling ? pm_trace_start_sampling(nframes, mean) : pm_trace_start(nframes);
    mode wanted_mode = sampling ? MODE_SAMPLING : MODE_FULL;
    if (variant == 3) {
        if (result != -1 || errno != EINVAL) fail("start with %d frames: %d (errno %d), expected EINVAL", nframes, result, errno);
    } else if (st.mode == MODE_OFF) {
        if (result != 0) fail("start (sampling %d, mean %zu) failed: errno %d", sampling, mean, errno);
        st.mode = wanted_mode;
        st.mean = effective;
        st.nframes = nframes;
        st.true_peak = 0;
    } else if (st.mode == wanted_mode && st.mean == effective) {
        if (result != 0) fail("start again in the same mode failed: errno %d", errno);
        st.nframes = nframes;
    } else if (result != -1 || errno != EBUSY) {
        fail("start (sampling %d, mean %zu) while tracing in mode %d (mean %zu): %d, errno %d; "
             "expected EBUSY", sampling, effective, (int)st.mode, st.mean, result, errno);
    }
    if (pm_trace_is_tracing() != (st.mode != MODE_OFF)) fail("is_tracing disagrees after start");
    if (pm_trace_get_traceback_limit() != (st.mode == MODE_OFF ? 0 : st.nframes)) {
        fail("traceback limit %d, expected %d", pm_trace_get_traceback_limit(), st.nframes);
    }
}

static void op_stop(void) {
    pm_trace_stop();
    st.mode = MODE_OFF;
    forget_traces();
    if (pm_trace_is_tracing()) fail("still tracing after stop");
}

static void op_clear(void) {
    pm_trace_clear_traces();
    if (st.mode != MODE_OFF) forget_traces();
}

static void op_reset_peak(void) {
    pm_trace_reset_peak();
    if (st.mode != MODE_OFF) st.true_peak = model_current();
    check_memory();
    size_t current, peak;
    pm_trace_get_traced_memory(&current, &peak);
    if (peak != current) fail("after reset_peak: peak %zu, current %zu", peak, current);
}

static void op_query(size_t lost_at_start) {
    check_memory();
    int tracing = pm_trace_is_tracing();
    if (tracing != (st.mode != MODE_OFF)) fail("is_tracing %d, mode %d", tracing, (int)st.mode);
    int limit = pm_trace_get_traceback_limit();
    if (limit != (st.mode == MODE_OFF ? 0 : st.nframes)) fail("traceback limit %d, expected %d", limit, st.nframes);
    if (pm_trace_lost_traces() != lost_at_start) fail("%zu traces lost", pm_trace_lost_traces() - lost_at_start);
}

/* ---- snapshots and statistics ------------------------------------------------------------ */

/* The key of an entry's group, as frames. */
static frames group_key(const frames *tb, pm_trace_group by) {
    frames key = *tb;
    if (by != PM_TRACE_BY_TRACEBACK) key.n = 1;
    if (by == PM_TRACE_BY_FILENAME) key.f[0].lineno = 0;
    return key;
}

static bool key_matches(const frames *key, const pm_trace_stat *item) {
    return same_frames(key, item->frames, item->nframes);
}

/* The model's total size and count for the group `item` names. */
static void group_totals(const entry *entries, size_t n, pm_trace_group by,
                         const pm_trace_stat *item, size_t *size, size_t *count) {
    *size = 0;
    *count = 0;
    for (size_t i = 0; i < n; i++) {
        frames key = group_key(&entries[i].tb, by);
        if (key_matches(&key, item)) {
            *size += entries[i].bytes;
            (*count)++;
        }
    }
}

static size_t magnitude(ptrdiff_t v) {
    return v < 0 ? (size_t)0 - (size_t)v : (size_t)v;
}

/* Lexicographic order of two sort keys: statistics come largest first. */
static int compare_tuples(const size_t *a, const size_t *b, size_t n) {
    for (size_t k = 0; k < n; k++) {
        if (a[k] != b[k]) return a[k] < b[k] ? -1 : 1;
    }
    return 0;
}

/* Every item is a distinct key, and the text and JSON forms are as long as they say. */
static void check_items(const pm_trace_stats *stats) {
    for (size_t i = 0; i < stats->count; i++) {
        const pm_trace_stat *a = &stats->items[i];
        if (a->nframes < 1 || a->nframes > MAX_FRAMES) fail("statistic %zu has %zu frames", i, a->nframes);
        for (size_t j = 0; j < i; j++) {
            const pm_trace_stat *b = &stats->items[j];
            if (a->nframes == b->nframes) {
                frames key = {a->nframes, {{NULL, 0}}};
                memcpy(key.f, a->frames, a->nframes * sizeof key.f[0]);
                if (key_matches(&key, b)) fail("statistics %zu and %zu have the same key", j, i);
            }
        }
    }
    char text[8192];
    size_t limit = stats->count > 2 ? 2 : 0;
    size_t need = pm_trace_stats_format(stats, limit, NULL, 0);
    size_t len = pm_trace_stats_format(stats, limit, text, sizeof text);
    if (len != need || (len < sizeof text && strlen(text) != len)) {
        fail("stats text: %zu bytes reported, %zu without a buffer, %zu written", len, need, strlen(text));
    }
    need = pm_trace_stats_json(stats, limit, NULL, 0);
    len = pm_trace_stats_json(stats, limit, text, sizeof text);
    if (len != need || (len < sizeof text && (strlen(text) != len || text[0] != '[' || text[len - 1] != ']'))) {
        fail("stats JSON: %zu bytes reported, %zu without a buffer", len, need);
    }
}

static void check_statistics(const pm_trace_snapshot *snap, const entry *entries, size_t n,
                             pm_trace_group by) {
    pm_trace_stats *stats = pm_trace_snapshot_statistics(snap, by);
    if (stats == NULL) fail("statistics by %d failed: errno %d", (int)by, errno);
    if (stats->is_diff) fail("statistics marked as a diff");
    size_t counted = 0;
    for (size_t i = 0; i < stats->count; i++) {
        const pm_trace_stat *item = &stats->items[i];
        size_t size, count;
        group_totals(entries, n, by, item, &size, &count);
        if (item->size != size || item->count != count || count == 0) {
            fail("statistic %zu by %d (%s:%zu): size %zu count %zu, expected %zu and %zu", i,
                 (int)by, item->frames[0].filename, item->frames[0].lineno, item->size,
                 item->count, size, count);
        }
        if (by == PM_TRACE_BY_FILENAME && item->frames[0].lineno != 0) fail("by file, a line of %zu", item->frames[0].lineno);
        if (i > 0) {
            const pm_trace_stat *b = &stats->items[i - 1];
            size_t before[2] = {b->size, b->count}, here[2] = {item->size, item->count};
            if (compare_tuples(before, here, 2) < 0) fail("statistics %zu and %zu out of order", i - 1, i);
        }
        counted += count;
    }
    if (counted != n) fail("statistics by %d count %zu traces, the snapshot has %zu", (int)by, counted, n);
    check_items(stats);
    pm_trace_stats_free(stats);
}

static void check_diff(const pm_trace_snapshot *now, const entry *now_entries, size_t n_now,
                       pm_trace_group by) {
    pm_trace_stats *stats = pm_trace_snapshot_compare(now, st.previous, by);
    if (stats == NULL) fail("compare by %d failed: errno %d", (int)by, errno);
    if (!stats->is_diff) fail("a diff not marked as one");
    size_t counted_now = 0, counted_old = 0;
    for (size_t i = 0; i < stats->count; i++) {
        const pm_trace_stat *item = &stats->items[i];
        size_t size, count, old_size, old_count;
        group_totals(now_entries, n_now, by, item, &size, &count);
        group_totals(st.previous_entries, st.nprevious, by, item, &old_size, &old_count);
        if (item->size != size || item->count != count ||
            item->size_diff != (ptrdiff_t)size - (ptrdiff_t)old_size ||
            item->count_diff != (ptrdiff_t)count - (ptrdiff_t)old_count || count + old_count == 0) {
            fail("diff %zu by %d (%s:%zu): size %zu (%+td) count %zu (%+td), expected %zu (was %zu) "
                 "and %zu (was %zu)",
                 i, (int)by, item->frames[0].filename, item->frames[0].lineno, item->size,
                 item->size_diff, item->count, item->count_diff, size, old_size, count, old_count);
        }
        if (i > 0) {
            const pm_trace_stat *b = &stats->items[i - 1];
            size_t before[4] = {magnitude(b->size_diff), b->size, magnitude(b->count_diff), b->count};
            size_t here[4] = {magnitude(item->size_diff), item->size, magnitude(item->count_diff), item->count};
            if (compare_tuples(before, here, 4) < 0) fail("diffs %zu and %zu out of order", i - 1, i);
        }
        counted_now += count;
        counted_old += old_count;
    }
    if (counted_now != n_now || counted_old != st.nprevious) {
        fail("diff by %d covers %zu and %zu traces, the snapshots have %zu and %zu", (int)by,
             counted_now, counted_old, n_now, st.nprevious);
    }
    check_items(stats);
    pm_trace_stats_free(stats);
}

static void op_snapshot(uint8_t arg) {
    errno = 0;
    pm_trace_snapshot *snap = pm_trace_take_snapshot();
    if (st.mode == MODE_OFF) {
        if (snap != NULL || errno != EINVAL) fail("snapshot while not tracing: %p, errno %d", (void *)snap, errno);
        return;
    }
    if (snap == NULL) fail("snapshot failed: errno %d", errno);
    entry entries[MAX_ENTRIES];
    size_t n = collect_entries(entries), total = 0;
    for (size_t i = 0; i < n; i++) total += entries[i].bytes;
    if (pm_trace_snapshot_count(snap) != n || pm_trace_snapshot_size(snap) != total) {
        fail("snapshot has %zu traces of %zu bytes, expected %zu of %zu", pm_trace_snapshot_count(snap),
             pm_trace_snapshot_size(snap), n, total);
    }
    check_memory(); /* the snapshot's size is the traced memory */
    pm_trace_group by = (pm_trace_group)(arg % 3);
    check_statistics(snap, entries, n, by);
    if (st.previous != NULL) check_diff(snap, entries, n, by);
    if (arg & 4) {
        pm_trace_snapshot_free(st.previous);
        st.previous = snap;
        memcpy(st.previous_entries, entries, n * sizeof entries[0]);
        st.nprevious = n;
    } else {
        pm_trace_snapshot_free(snap);
    }
}

static void set_provider(bool on) {
    if (pm_trace_set_frame_provider(on ? provide : NULL, NULL) != 0) fail("set_frame_provider failed");
    st.provider_on = on;
}

/* ---- the program ------------------------------------------------------------------------- */

static const char *const KIND_NAMES[16] = {
    "malloc", "calloc", "realloc", "free", "start", "start_sampling", "stop", "clear",
    "reset_peak", "query", "snapshot", "track", "untrack", "provider", "check", "churn",
};

static void run_op(size_t lost_at_start) PM_GIL_REQUIRED {
    uint8_t code = next_byte();
    kind k = (kind)(code & 15);
    unsigned variant = code >> 6;
    pm_domain d = domain_of(code);
    st.what = KIND_NAMES[k];
    switch (k) {
    case K_MALLOC: {
        size_t index = next_byte() % SLOTS;
        op_malloc(index, d, next_size());
        break;
    }
    case K_CALLOC: {
        size_t index = next_byte() % SLOTS;
        op_calloc(index, d, variant, next_size());
        break;
    }
    case K_REALLOC: {
        size_t index = next_byte() % SLOTS;
        size_t size = next_size();
        op_realloc(index, d, variant == 3 ? 0 : size);
        break;
    }
    case K_FREE: release(next_byte() % SLOTS); break;
    case K_START: op_start(variant, code, false, 0); break;
    case K_START_SAMPLING: op_start(variant, code, true, next_byte()); break;
    case K_STOP: op_stop(); break;
    case K_CLEAR: op_clear(); break;
    case K_RESET_PEAK: op_reset_peak(); break;
    case K_QUERY: op_query(lost_at_start); break;
    case K_SNAPSHOT: op_snapshot(next_byte()); break;
    case K_TRACK: {
        size_t index = next_byte() % SLOTS;
        op_track(code, index, next_byte());
        break;
    }
    case K_UNTRACK: op_untrack(code, next_byte() % SLOTS); break;
    case K_PROVIDER: set_provider(variant != 1); break;
    case K_CHECK:
        check_heap();
        for (size_t i = 0; i < SLOTS; i++) {
            if (st.slots[i].ptr != NULL) check_fill(&st.slots[i], st.slots[i].size, "check");
            if (variant == 3) release(i);
        }
        check_memory();
        break;
    case K_CHURN: {
        size_t count = next_byte() % CHURN_MAX + 1;
        op_churn(d, variant, count, next_size());
        break;
    }
    }
    note_peak(0);
    check_traces();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pm_gil_acquire();
    memset(&st, 0, sizeof st);
    st.data = data;
    st.size = size;
    size_t blocks_at_start = pm_allocated_blocks();
    pm_raw_stats raw;
    pm_get_raw_stats(&raw);
    uint64_t raw_live_at_start = raw.live;
    size_t lost_at_start = pm_trace_lost_traces();
    if (pm_trace_is_tracing()) fail("tracing at the start of the input");
    /* Reproducible sampling: the seed depends on the input only. */
    uint64_t seed = 0x9E3779B97F4A7C15ull * (size + 1);
    for (size_t i = 0; i < size && i < 8; i++) seed = (seed ^ data[i]) * 0x100000001B3ull;
    pm_trace_test_seed_sampler(seed);
    set_provider(true);

    for (st.op = 0; st.at < size && st.op < MAX_OPS; st.op++) {
        run_op(lost_at_start);
        if (st.op % CHECK_HEAP_EVERY == CHECK_HEAP_EVERY - 1) check_heap();
    }

    /* The end: everything freed and untracked leaves nothing traced, then stop. */
    st.what = NULL;
    check_memory();
    for (size_t i = 0; i < SLOTS; i++) release(i);
    check_memory();
    while (st.ntracked > 0) {
        tracked t = st.tracked[st.ntracked - 1];
        if (pm_trace_untrack(t.domain, t.ptr) != 0) fail("untrack at the end failed");
        st.ntracked--;
    }
    check_memory();
    if (st.mode != MODE_OFF) {
        size_t current;
        pm_trace_get_traced_memory(&current, NULL);
        if (current != 0) fail("%zu bytes traced with every block freed and nothing tracked", current);
    }
    pm_trace_stop();
    pm_trace_snapshot_free(st.previous);
    set_provider(false);
    check_heap();
    if (pm_allocated_blocks() != blocks_at_start) {
        fail("pm_allocated_blocks() is %zu, was %zu", pm_allocated_blocks(), blocks_at_start);
    }
    pm_get_raw_stats(&raw);
    if (raw.live != raw_live_at_start) fail("raw live count %llu, was %llu", (unsigned long long)raw.live, (unsigned long long)raw_live_at_start);
    if (pm_trace_lost_traces() != lost_at_start) fail("traces lost");
    pm_gil_release();
    return 0;
}
