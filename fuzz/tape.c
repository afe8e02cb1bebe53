/*
 * fuzz/tape.c — the operation tape: decoder, interpreter and shadow model (see tape.h).
 *
 * ENCODING. An input is a sequence of operations; decoding stops at the end of the input
 * or after TAPE_MAX_STEPS operations. An operation that runs past the end reads the missing
 * bytes as 0, so every byte string (the empty one included) is a valid program.
 *
 *   op      = code slot? args...
 *   code    = kind (bits 0-3) | domain (bits 4-5: raw, mem, obj, mem) | variant (bits 6-7)
 *   slot    = one byte, modulo TAPE_SLOTS (64)
 *   size    = one byte k, then by k's top two bits:
 *               00  k & 63 indexes a table of boundary sizes (0, 1, 15, 16, 17, ..., 511,
 *                   512, 513, ..., 65536)                                   1 byte
 *               01  1 + (14-bit value % 512)        a small size            2 bytes
 *               10  513 + (14-bit value % 3584)     a medium size           2 bytes
 *               11  4097 + v x 61439 / 16383        a large raw block, up   2 bytes
 *                                                   to 64 KiB (v: 14 bits)
 *
 *   kind  name          operands         what it does
 *    0,1  MALLOC        slot size        malloc in `domain` (frees the slot's block first)
 *    2    CALLOC        slot size        calloc; variant: (1, n), (n, 1), (k, n/k) split
 *                                        with k from one more byte, or a zero count/size
 *    3,4  REALLOC       slot size        realloc to size: grow, shrink, or from NULL in
 *                                        `domain` when the slot is empty
 *    5    RESIZE        slot byte        realloc relative to the current size; variant:
 *                                        shrink by < 1/4 (pymalloc's in-place case), shrink
 *                                        to < 1/4, grow by 1..256, grow x2 (capped)
 *    6,7  FREE          slot             free (free(NULL) in `domain` when empty)
 *    8    REALLOC_ZERO  slot             realloc(p, 0) (realloc(NULL, 0) when empty)
 *    9    OBJECT        slot byte u16    pm_object_new / pm_object_new_var in the object
 *                                        domain: type = byte % 5, nitems = u16 % 4096
 *   10    REFUSED       slot byte        a request the API refuses without allocating;
 *                                        variant: malloc > PTRDIFF_MAX, calloc overflow,
 *                                        realloc > PTRDIFF_MAX (block must survive), an
 *                                        invalid object type or item count
 *   11    BURST         byte size        1 + 5 x byte blocks (at most 16 above 4096 bytes)
 *                                        into free bulk slots; variant bit 0: calloc
 *   12    BURST_FREE    byte             frees bulk slots i with i % stride == offset
 *                                        (stride 1..8 and offset from the byte); variant
 *                                        bit 0: backwards
 *   13    CHECK                          heap check, counters, every live block's contents;
 *                                        variant 1: and the statistics (pm_stats_json in
 *                                        full and truncated, pm_print_stats); variant 3:
 *                                        free everything first
 *   14    RESERVE       byte             pm_set_arena_reserve(0 / 1 arena / 1 MiB / all)
 *   15    MODE          byte (size)      without faults, by byte & 3: 1 = set up "malloc",
 *                                        2 = install / remove a pass-through hook over mem
 *                                        (bit 2 clear) or obj (set), 0 and 3 = set up a
 *                                        pymalloc name ((byte >> 2) % 3: "pymalloc",
 *                                        "default", ""); with faults: arm a policy: bit 0 =
 *                                        arena (else raw), bits 1-2 = never / Nth / from Nth
 *                                        / size >= threshold (then a size follows), N = 1 +
 *                                        (byte >> 3); with debug hooks: see DEBUG HOOKS
 *
 * THE MODEL. Slots 0..63 are addressed by the tape; slots 64.. are the bulk area that
 * BURST fills (enough to fill whole pools of the smallest class, and so to reach "pool
 * full", "free into a full pool" and several arenas, which 64 slots cannot). Each live
 * block records its domain, the size requested, the extent the allocator reserved as far
 * as we know (the class size for a pool block, else max(size, 1)), its placement (a pool,
 * the raw domain through pymalloc's fallback, the raw domain itself, or an allocator other
 * than pymalloc in mem/obj), and a content seed: byte i of the block is pattern(seed, i).
 * mem and obj hold pymalloc or the C library ("malloc"), either possibly under a
 * pass-through hook (MODE), which changes the route a call takes but not where blocks come
 * from; any other allocator found there at the start is refused (a new mode to model).
 * Seeds come from the slot and a generation counter, so a stale or swapped block shows.
 *
 * CHECKS, each a violation that aborts with the step and the details:
 *   - every allocation returns non-NULL unless a failure policy ordered a failure during
 *     that call, and returns NULL whenever one did (failures surface, nothing swallows
 *     them); refused requests return NULL without any allocator call;
 *   - alignment (16 for pool blocks, 8 otherwise) and placement: pymalloc serves 1..512
 *     bytes from pools, 0 bytes and larger requests from raw, and a raw block stays raw
 *     across realloc (CPython's rules); pm_pymalloc_owns() must agree;
 *   - calloc memory is zero; realloc keeps min(old, new) bytes; a failed realloc leaves the
 *     old block valid with its contents; a pymalloc shrink by less than a quarter is in
 *     place (and so cannot fail); contents are verified in full before every free and
 *     realloc and on CHECK;
 *   - no two live blocks overlap (pm_live_set, sized by extent, one byte at least: so
 *     zero-size results are non-NULL and distinct);
 *   - every TAPE_CHECK_EVERY steps, on CHECK and at the end: pm_heap_check() is NULL,
 *     pm_allocated_blocks() = start + live pymalloc blocks (pool or fallback), and the raw
 *     domain's live count = start + live raw blocks (raw domain or fallback);
 *   - at the end, after freeing everything: both counters back to their start values, and
 *     with the reserve at 0 no arena left (when pymalloc had no block at the start).
 *
 * One deliberate gap: MODE does not switch mem/obj back to pymalloc while blocks made by
 * "malloc" are live. pymalloc would free them correctly (through the raw domain), but those
 * frees are counted as raw frees with no matching raw allocation, and they decrement
 * pymalloc's fallback count, so both counters checked here drift; see fuzz/README.md.
 *
 * DEBUG HOOKS (options->debug_hooks: the fuzz_debug target). Every domain holds CPython's
 * debug hook (alloc/internal/debug_hooks.h): a request of n bytes is n + 24 bytes to the
 * allocator under the hook, laid out [size: 8 bytes big-endian | API id | 0xFD x 7 | data,
 * n bytes | 0xFD x 8]. What changes:
 *   - placement counts the 24 bytes (the plain rules applied to n + 24): pymalloc serves
 *     0..488-byte requests from pools (0 too: 24 bytes underneath) and 489 and up from
 *     raw, and the in-place shrink rule reads n + 24. A fallback block is decorated twice:
 *     pymalloc passes n + 24 bytes to the raw domain, whose hook adds 24 more. Extents
 *     cover the whole allocation, from the header (p - 16; p - 32 under a fallback's
 *     second header) to the end of the trailer, so the overlap check covers decorations;
 *   - after every allocation, and wherever contents are verified (before free and realloc,
 *     after realloc, on CHECK): the size field is the size requested, the id byte is the
 *     domain's ('r', 'm', 'o'; an object's is 'o'), the 7 bytes before p and the 8 at
 *     exactly p + n are 0xFD; for a fallback block also the raw hook's decoration around
 *     it (n + 24 bytes, 'r');
 *   - new data reads 0xCD over the whole request before the pattern is written (calloc:
 *     zero; an object: past the header pm_object_new* writes), and so do the bytes a
 *     realloc gains; realloc keeps the prefix, across the hook's save-and-restore of up to
 *     64 bytes at each end;
 *   - on every counter check: each domain still holds its hook, over the allocator the
 *     model expects, and each hook's live-block count is the model's (raw: raw and
 *     fallback blocks; mem, obj: the domain's blocks); the current name reads
 *     "pymalloc_debug" or "malloc_debug" (NULL under a pass-through hook);
 *   - MODE, by byte & 3: 1 = "malloc_debug"; 0 and 3 = by (byte >> 2) % 3:
 *     "pymalloc_debug", "debug", or a round trip: the plain name of what is installed
 *     ("pymalloc" / "malloc"), then pm_setup_debug_hooks(), nothing allocated between the
 *     two; 2 = the pass-through hook, over the debug hook. EBUSY is expected exactly where
 *     alloc/config.c's rule gives it: a mem/obj domain changes while pymalloc has blocks
 *     (the target is a hook, never plain pymalloc, except in the round trip) or while its
 *     debug hook, on top or covered by the pass-through hook, has live blocks and would be
 *     replaced or removed; the round trip also while the raw hook has live blocks. So no
 *     block can be stranded and the gap above does not apply.
 * Not checked: that a freed block reads 0xDD (reading it is a use after free; the hooks'
 * own checks on free and realloc are the test there). Every report of the hooks is a fatal
 * error, which the target turns into an abort: on a valid program any report is a crash.
 *
 * State: one static tape, reset per input (everything runs under the GIL, one input at a
 * time). The live-set storage is static too: nothing here allocates through the library
 * except the operations themselves.
 */
#include "fuzz/tape.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/internal/debug_hooks.h"
#include "alloc/internal/domain.h"
#include "alloc/internal/pymalloc.h"
#include "alloc/pymalloc_mt.h"
#include "fuzz/domain_calls.h"
#include "fuzz/fuzz_target.h"
#include "fuzz/live_set.h"

enum {
    TAPE_SLOTS = 64,
    TAPE_BULK_SLOTS = 1280, /* > 1021, the blocks in one pool of the 16-byte class */
    TAPE_ALL_SLOTS = TAPE_SLOTS + TAPE_BULK_SLOTS,
    TAPE_MAX_STEPS = 4096,
    TAPE_CHECK_EVERY = 64,
    TAPE_MAX_SIZE = 65536,
};

typedef enum place {
    PLACE_NONE = 0,     /* slot empty */
    PLACE_POOL,         /* a pymalloc pool block (mem/obj) */
    PLACE_FALLBACK,     /* mem/obj block pymalloc passed to the raw domain (0 or > 512 B) */
    PLACE_RAW,          /* a raw-domain block */
    PLACE_OTHER,        /* mem/obj block from an allocator other than pymalloc ("malloc") */
    PLACE_COUNT
} place;

static const char *const place_names[PLACE_COUNT] = {"none", "pool", "raw fallback", "raw",
                                                      "other allocator"};
static const char *const domain_names[PM_DOMAIN_COUNT] = {"raw", "mem", "obj"};

typedef struct shadow_block {
    unsigned char *p; /* NULL: the slot is empty */
    size_t size;      /* bytes requested (by the last successful realloc) */
    size_t extent;    /* bytes the block covers as far as we know, from p - lead (>= 1) */
    size_t lead;      /* bytes of it before p: 0, or the debug hooks' header(s) */
    uint64_t seed;    /* byte i holds pattern(seed, i) for i < size */
    uint8_t domain;
    uint8_t place;
    bool object; /* made by pm_object_new*; freed with pm_object_del */
} shadow_block;

typedef struct tape {
    const uint8_t *data;
    size_t size, pos;
    const pm_tape_options *options;
    size_t step;
    const char *op; /* name of the operation running, for reports */
    uint64_t generation;
    bool pymalloc_in[PM_DOMAIN_COUNT]; /* mem/obj currently hold pymalloc (else the system) */
    bool wrapped[PM_DOMAIN_COUNT];     /* ... under a pass-through hook (MODE) */
    bool config_by_name;               /* MODE may switch by name (no faults, named config) */
    bool debug;                        /* debug hooks in every domain (options->debug_hooks) */
    size_t overhead;                   /* bytes a hook adds to a request: 0 or 24 */
    const pm_debug_ctx *hook[PM_DOMAIN_COUNT]; /* each domain's debug hook (debug only) */
    const char *start_name;            /* pm_current_allocator_name() at the start */
    size_t start_blocks;               /* pm_allocated_blocks() at the start */
    uint64_t start_raw_live;           /* pm_get_raw_stats().live at the start */
    size_t start_reserve;
    size_t in_place[PLACE_COUNT];      /* live blocks by placement */
    size_t in_domain[PM_DOMAIN_COUNT]; /* live blocks by domain */
    shadow_block slots[TAPE_ALL_SLOTS];
    pm_live_set live;
} tape;

static tape the_tape;
static pm_live_node live_storage[TAPE_ALL_SLOTS];

/* ---- reports --------------------------------------------------------------------------- */

__attribute__((noreturn, format(printf, 1, 2))) static void violation(const char *format, ...) {
    const tape *t = &the_tape;
    fprintf(stderr, "\npymalloc-mt fuzz tape: VIOLATION at step %zu (%s, input byte %zu of %zu): ",
            t->step, t->op != NULL ? t->op : "-", t->pos, t->size);
    va_list ap;
    va_start(ap, format);
    vfprintf(stderr, format, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

/* PM_TAPE_TRACE=1 in the environment prints every allocation and every MODE/RESERVE
 * operation to stderr: how to read what a crashing or a seed input does. */
static bool tracing;

__attribute__((format(printf, 1, 2))) static void trace(const char *format, ...) {
    if (!tracing) return;
    const tape *t = &the_tape;
    fprintf(stderr, "tape %4zu %-12s ", t->step, t->op != NULL ? t->op : "-");
    va_list ap;
    va_start(ap, format);
    vfprintf(stderr, format, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ---- decoding -------------------------------------------------------------------------- */

static uint8_t next_u8(tape *t) {
    return t->pos < t->size ? t->data[t->pos++] : 0;
}

static unsigned next_u16(tape *t) {
    unsigned hi = next_u8(t);
    return hi << 8 | next_u8(t);
}

static unsigned next_slot(tape *t) {
    return next_u8(t) % TAPE_SLOTS;
}

static const uint32_t boundary_sizes[64] = {
    0,    1,    2,    7,    8,    9,     15,    16,    17,    24,    31,    32,    33,
    47,   48,   49,   63,   64,   65,    96,    127,   128,   129,   192,   255,   256,
    257,  384,  448,  480,  496,  497,   504,   511,   512,   513,   514,   520,   767,
    768,  1000, 1023, 1024, 1025, 2048,  4095,  4096,  4097,  8191,  8192,  8193,  16384,
    16385, 32767, 32768, 32769, 65535, 65536, 12,   20,    100,   200,   300,   400,
};

static size_t next_size(tape *t) {
    uint8_t k = next_u8(t);
    if (k >> 6 == 0) return boundary_sizes[k & 63];
    unsigned v = (unsigned)(k & 63) << 8 | next_u8(t);
    switch (k >> 6) {
    case 1: return 1 + v % 512;
    case 2: return 513 + v % 3584;
    default: return 4097 + (size_t)v * (TAPE_MAX_SIZE - 4097) / 16383; /* up to 64 KiB */
    }
}

static pm_domain decode_domain(uint8_t code) {
    static const pm_domain domains[4] = {PM_DOMAIN_RAW, PM_DOMAIN_MEM, PM_DOMAIN_OBJ,
                                         PM_DOMAIN_MEM};
    return domains[(code >> 4) & 3];
}

/* ---- faults ---------------------------------------------------------------------------- */

/* The pass-through allocators MODE can install over the mem and object domains: the shape
 * of every hook to come (debug hooks, tracing). Static, because the domain interns their
 * records and blocks made through them may be freed after they are gone. */
static pm_failing_allocator wrappers[PM_DOMAIN_COUNT];

typedef struct fault_mark {
    uint64_t failures; /* failures ordered by both policies so far */
    uint64_t calls;    /* allocating calls that reached either failing allocator */
} fault_mark;

static fault_mark faults_now(const tape *t) {
    fault_mark m = {0, 0};
    if (t->options->raw_faults != NULL) {
        m.failures += pm_fail_policy_failures(&t->options->raw_faults->policy);
        m.calls += pm_fail_policy_calls(&t->options->raw_faults->policy);
    }
    if (t->options->arena_faults != NULL) {
        m.failures += pm_fail_policy_failures(&t->options->arena_faults->policy);
        m.calls += pm_fail_policy_calls(&t->options->arena_faults->policy);
    }
    for (int d = PM_DOMAIN_MEM; d <= PM_DOMAIN_OBJ; d++) { /* they never fail, only count */
        m.calls += pm_fail_policy_calls(&wrappers[d].policy);
    }
    return m;
}

/* An allocating call returned `result`: NULL exactly when a failure was ordered during it. */
static void expect_outcome(const tape *t, const char *call, const void *result, fault_mark before,
                           size_t size) {
    uint64_t injected = faults_now(t).failures - before.failures;
    trace("%s(%zu) -> %p%s", call, size, result, injected != 0 ? " (failure injected)" : "");
    if (result == NULL && injected == 0) {
        violation("%s(%zu bytes) returned NULL but no failure was injected", call, size);
    }
    if (result != NULL && injected != 0) {
        violation("%s(%zu bytes) returned %p although %llu injected failure(s) happened during "
                  "it: the failure did not surface",
                  call, size, result, (unsigned long long)injected);
    }
}

/* A refused request: NULL, and no allocator was asked. */
static void expect_refused(const tape *t, const char *call, const void *result, fault_mark before) {
    if (result != NULL) violation("%s returned %p for a request the API must refuse", call, result);
    if (faults_now(t).calls != before.calls) {
        violation("%s: refused request reached an allocator (%llu calls)", call,
                  (unsigned long long)(faults_now(t).calls - before.calls));
    }
}

/* ---- contents -------------------------------------------------------------------------- */

/* Byte i of a block is byte (i % 8) of the little-endian word seed + (i / 8) x golden, so
 * fill and verify work a word at a time. These loops touch every byte the tape allocates:
 * they are kept out of libFuzzer's coverage instrumentation (which would otherwise trace a
 * comparison per byte and dominate the run time), not out of ASan's. */

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the pattern is laid out little-endian");

#define PATTERN_STEP 0x9E3779B97F4A7C15u

static inline uint8_t pattern(uint64_t seed, size_t i) {
    uint64_t word = seed + (uint64_t)(i >> 3) * PATTERN_STEP;
    return (uint8_t)(word >> ((i & 7) * 8));
}

static uint64_t new_seed(tape *t, unsigned slot) {
    uint64_t x = (uint64_t)slot << 40 ^ ++t->generation;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9u;
    x ^= x >> 29;
    return x;
}

PM_FUZZ_NO_COVERAGE
static void fill(unsigned char *p, size_t from, size_t to, uint64_t seed) {
    size_t i = from;
    for (; i < to && (i & 7) != 0; i++) p[i] = pattern(seed, i);
    for (; i + 8 <= to; i += 8) {
        uint64_t word = seed + (uint64_t)(i >> 3) * PATTERN_STEP;
        memcpy(p + i, &word, 8);
    }
    for (; i < to; i++) p[i] = pattern(seed, i);
}

/* The index of the first byte in [from, to) that differs from the pattern, or `to`. With
 * `zero`, the expected contents are all zero instead. */
PM_FUZZ_NO_COVERAGE
static size_t first_mismatch(const unsigned char *p, size_t from, size_t to, uint64_t seed,
                             bool zero) {
    size_t i = from;
    for (; i < to && (i & 7) != 0; i++) {
        if (p[i] != (zero ? 0 : pattern(seed, i))) return i;
    }
    for (; i + 8 <= to; i += 8) {
        uint64_t word, expected = zero ? 0 : seed + (uint64_t)(i >> 3) * PATTERN_STEP;
        memcpy(&word, p + i, 8);
        if (word != expected) break; /* the byte loop below finds which one */
    }
    for (; i < to; i++) {
        if (p[i] != (zero ? 0 : pattern(seed, i))) return i;
    }
    return to;
}

/* The index of the first byte in [from, to) that is not `byte`, or `to`. */
PM_FUZZ_NO_COVERAGE
static size_t first_not(const unsigned char *p, size_t from, size_t to, uint8_t byte) {
    size_t i = from;
    for (; i < to && (i & 7) != 0; i++) {
        if (p[i] != byte) return i;
    }
    const uint64_t expected = 0x0101010101010101u * byte;
    for (; i + 8 <= to; i += 8) {
        uint64_t word;
        memcpy(&word, p + i, 8);
        if (word != expected) break;
    }
    for (; i < to; i++) {
        if (p[i] != byte) return i;
    }
    return to;
}

/* ---- the debug hooks' decoration (DEBUG HOOKS above) ------------------------------------ */

/* CPython's API ids, by domain: what the hooks must write (alloc/ is not asked). */
static const char api_ids[PM_DOMAIN_COUNT] = {'r', 'm', 'o'};

enum {
    DEBUG_SST = 8,                  /* the size field; also the trailer's length */
    DEBUG_HEADER = 2 * DEBUG_SST,   /* size, id, 7 pad bytes: p - 16 .. p - 1 */
    DEBUG_OVERHEAD = 3 * DEBUG_SST, /* header and trailer */
    DEBUG_CLEAN = 0xCD,
    DEBUG_FORBIDDEN = 0xFD,
};
static_assert(DEBUG_OVERHEAD == PM_DEBUG_EXTRA_BYTES, "the hooks' layout changed");

/* " xx xx ..." for n bytes, into out (3n + 1 bytes). */
static void hex_bytes(char *out, const unsigned char *p, size_t n) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[3 * i] = ' ';
        out[3 * i + 1] = digits[p[i] >> 4];
        out[3 * i + 2] = digits[p[i] & 15];
    }
    out[3 * n] = '\0';
}

/* One decoration: data of n bytes at p, made by the hook with API id `id`. */
static void check_decoration(const shadow_block *b, unsigned slot, const unsigned char *p,
                             size_t n, char id, const char *which, const char *when) {
    size_t stored = 0;
    for (int i = 0; i < DEBUG_SST; i++) stored = stored << 8 | p[i - DEBUG_HEADER];
    const char *problem = NULL;
    if (stored != n) problem = "the size field is not the size requested";
    else if ((char)p[-DEBUG_SST] != id) problem = "the API id byte is not the domain's";
    else if (first_not(p - (DEBUG_SST - 1), 0, DEBUG_SST - 1, DEBUG_FORBIDDEN) != DEBUG_SST - 1)
        problem = "a leading pad byte is not 0xFD";
    else if (first_not(p + n, 0, DEBUG_SST, DEBUG_FORBIDDEN) != DEBUG_SST)
        problem = "a trailing pad byte (at p + n) is not 0xFD";
    if (problem == NULL) return;
    char head[3 * DEBUG_HEADER + 1], tail[3 * DEBUG_SST + 1];
    hex_bytes(head, p - DEBUG_HEADER, DEBUG_HEADER);
    hex_bytes(tail, p + n, DEBUG_SST);
    violation("slot %u (%s, %zu bytes at %p, %s) %s: %s's decoration is wrong: %s (size field "
              "%zu, expected %zu; id '%c', expected '%c'); header at %p:%s; trailer at %p:%s",
              slot, domain_names[b->domain], b->size, (void *)b->p, place_names[b->place], when,
              which, problem, stored, n, p[-DEBUG_SST], id, (const void *)(p - DEBUG_HEADER),
              head, (const void *)(p + n), tail);
}

/* The hooks' decoration of block b: its own, and the raw hook's under a fallback block. */
static void check_layout(const shadow_block *b, unsigned slot, const char *when) {
    if (!the_tape.debug) return;
    check_decoration(b, slot, b->p, b->size, api_ids[b->domain], "the block", when);
    if (b->place == PLACE_FALLBACK) {
        check_decoration(b, slot, b->p - DEBUG_HEADER, b->size + DEBUG_OVERHEAD, 'r',
                         "the raw block pymalloc passed it to", when);
    }
}

/* Bytes [from, to) of block b are what the hooks wrote into new data: 0xCD. */
static void expect_clean(const shadow_block *b, unsigned slot, size_t from, size_t to,
                         const char *what) {
    size_t i = first_not(b->p, from, to, DEBUG_CLEAN);
    if (i != to) {
        violation("slot %u (%s, %zu bytes at %p, %s): byte %zu of the %s [%zu, %zu) is 0x%02x, "
                  "expected the debug hooks' 0x%02x",
                  slot, domain_names[b->domain], b->size, (void *)b->p, place_names[b->place], i,
                  what, from, to, b->p[i], DEBUG_CLEAN);
    }
}

static void verify(const shadow_block *b, unsigned slot, size_t from, size_t to, const char *when) {
    check_layout(b, slot, when);
    size_t i = first_mismatch(b->p, from, to, b->seed, false);
    if (i != to) {
        violation("slot %u (%s, %zu bytes at %p, %s): byte %zu is 0x%02x, expected 0x%02x %s",
                  slot, domain_names[b->domain], b->size, (void *)b->p, place_names[b->place], i,
                  b->p[i], pattern(b->seed, i), when);
    }
}

/* ---- placement ------------------------------------------------------------------------- */

/* pymalloc serves a request of n bytes from a pool; under the debug hooks it is asked for
 * n + 24 bytes (t->overhead). */
static bool pool_size(const tape *t, size_t n) {
    n += t->overhead;
    return n >= 1 && n <= PM_SMALL_REQUEST_THRESHOLD;
}

static size_t round_to_class(size_t n) {
    return (n + PM_ALIGNMENT - 1) & ~(size_t)(PM_ALIGNMENT - 1);
}

/* Where a new block of n bytes in domain d must come from. */
static place place_for_new(const tape *t, pm_domain d, size_t n) {
    if (d == PM_DOMAIN_RAW) return PLACE_RAW;
    if (!t->pymalloc_in[d]) return PLACE_OTHER;
    return pool_size(t, n) ? PLACE_POOL : PLACE_FALLBACK;
}

/* Where block b must be after a successful realloc to n bytes. CPython: a pool block moves
 * to raw for 0 or > 512 bytes; a raw block stays raw whatever its new size. */
static place place_after_realloc(const tape *t, const shadow_block *b, size_t n) {
    if (b->place == PLACE_POOL) return pool_size(t, n) ? PLACE_POOL : PLACE_FALLBACK;
    return (place)b->place;
}

/* pymalloc reallocates in place when n fits the block and 4n > 3 x block size (n: what
 * pymalloc is asked for, n + 24 under the hooks; a pool block's extent is its class). */
static bool expect_in_place(const tape *t, const shadow_block *b, size_t n) {
    n += t->overhead;
    return b->place == PLACE_POOL && n <= b->extent && 4 * n > 3 * b->extent;
}

/* Bytes of the allocation before the data: the hook's header, and under a fallback block
 * also the raw hook's (pymalloc's raw request is itself decorated). */
static size_t lead_for(const tape *t, place where) {
    if (!t->debug) return 0;
    return where == PLACE_FALLBACK ? 2 * DEBUG_HEADER : DEBUG_HEADER;
}

/* Bytes the allocation covers from p - lead_for(): the class size of a pool block (of the
 * n + 24 bytes pymalloc was asked for, under the hooks), else the data and decorations. */
static size_t extent_for(const tape *t, place where, size_t n) {
    if (where == PLACE_POOL) return round_to_class(n + t->overhead);
    if (!t->debug) return n == 0 ? 1 : n;
    return n + (where == PLACE_FALLBACK ? 2 : 1) * DEBUG_OVERHEAD;
}

static void check_placement(const shadow_block *b, unsigned slot) {
    bool owned = pm_pymalloc_owns(b->p);
    if (owned != (b->place == PLACE_POOL)) {
        violation("slot %u (%s, %zu bytes at %p): expected %s but pm_pymalloc_owns() says %s",
                  slot, domain_names[b->domain], b->size, (void *)b->p, place_names[b->place],
                  owned ? "a pool block" : "not a pool block");
    }
    uintptr_t alignment = b->place == PLACE_POOL ? PM_ALIGNMENT : 8;
    if ((uintptr_t)b->p % alignment != 0) {
        violation("slot %u: %p is not %u-byte aligned", slot, (void *)b->p, (unsigned)alignment);
    }
}

/* ---- the model ------------------------------------------------------------------------- */

static void live_insert(tape *t, unsigned slot) {
    const shadow_block *b = &t->slots[slot];
    pm_live_range other;
    uintptr_t start = (uintptr_t)b->p - b->lead;
    if (!pm_live_set_insert(&t->live, start, start + b->extent, slot, &other)) {
        const shadow_block *o = &t->slots[other.slot];
        violation("slot %u: [%p, +%zu) (%s, %s) overlaps slot %u: [%p, +%zu) (%s, %s)", slot,
                  (void *)(b->p - b->lead), b->extent, domain_names[b->domain],
                  place_names[b->place], (unsigned)other.slot, (void *)(o->p - o->lead),
                  o->extent, domain_names[o->domain], place_names[o->place]);
    }
}

static void live_remove(tape *t, unsigned slot) {
    if (!pm_live_set_remove(&t->live, (uintptr_t)t->slots[slot].p - t->slots[slot].lead)) {
        violation("slot %u: block %p missing from the live set (model bug)", slot,
                  (void *)t->slots[slot].p);
    }
}

/* Takes a new block into an empty slot: checks it, then writes its pattern. */
static void adopt(tape *t, unsigned slot, void *p, size_t size, pm_domain d, place where,
                  bool zeroed, bool object) {
    shadow_block *b = &t->slots[slot];
    *b = (shadow_block){.p = p, .size = size, .extent = extent_for(t, where, size),
                        .lead = lead_for(t, where), .seed = new_seed(t, slot),
                        .domain = (uint8_t)d, .place = (uint8_t)where, .object = object};
    check_placement(b, slot);
    live_insert(t, slot);
    check_layout(b, slot, "when new");
    if (zeroed) {
        size_t i = first_mismatch(b->p, 0, size, 0, true);
        if (i != size) {
            violation("slot %u: calloc'd %zu bytes at %p (%s): byte %zu is 0x%02x", slot, size, p,
                      domain_names[d], i, b->p[i]);
        }
    } else if (t->debug) {
        /* pm_object_new* has written the object's header over the hooks' fill. */
        size_t header = !object                                ? 0
                        : ((pm_object *)p)->ob_type->tp_itemsize ? sizeof(pm_var_object)
                                                                 : sizeof(pm_object);
        expect_clean(b, slot, header, size, "new data");
    }
    fill(b->p, 0, size, b->seed);
    t->in_place[where]++;
    t->in_domain[d]++;
}

static void release(tape *t, unsigned slot) PM_GIL_REQUIRED {
    shadow_block *b = &t->slots[slot];
    verify(b, slot, 0, b->size, "before free");
    live_remove(t, slot);
    t->in_place[b->place]--;
    t->in_domain[b->domain]--;
    if (b->object) pm_object_del(b->p);
    else domain_free((pm_domain)b->domain, b->p);
    *b = (shadow_block){0};
}

static void release_all(tape *t) PM_GIL_REQUIRED {
    for (unsigned s = 0; s < TAPE_ALL_SLOTS; s++) {
        if (t->slots[s].p != NULL) release(t, s);
    }
}

/* ---- whole-state checks ---------------------------------------------------------------- */

static bool same_allocator(const pm_allocator *a, const pm_allocator *b) {
    return a->ctx == b->ctx && a->malloc == b->malloc && a->calloc == b->calloc &&
           a->realloc == b->realloc && a->free == b->free;
}

/* Debug hooks: t->hook[d] := the hook domain d holds (a violation if it holds none). Under
 * a pass-through hook, the one remembered when that went on. */
static void load_hooks(tape *t) {
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (t->wrapped[d]) continue;
        pm_allocator a;
        const pm_debug_ctx *hook =
            pm_get_allocator((pm_domain)d, &a) == 0 ? pm_debug_hook_ctx(&a) : NULL;
        if (hook == NULL) violation("the %s domain does not hold a debug hook", domain_names[d]);
        t->hook[d] = hook;
    }
}

/* Debug hooks: each domain holds its own hook, over the allocator the model expects, and
 * each hook's live-block count is the model's: the raw hook's the raw and fallback blocks
 * (pymalloc's raw requests go through it), the mem and obj hooks' the domain's blocks. */
static void check_hooks(tape *t) {
    load_hooks(t);
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        const pm_debug_ctx *hook = t->hook[d];
        const pm_allocator *under = d != PM_DOMAIN_RAW && t->pymalloc_in[d]
                                        ? &pm_pymalloc_allocator
                                        : &pm_system_allocator;
        if (hook->api_id != api_ids[d] || !same_allocator(&hook->wrapped, under)) {
            violation("the %s domain's debug hook has API id '%c' (expected '%c') and wraps %s "
                      "(expected %s)",
                      domain_names[d], hook->api_id, api_ids[d],
                      same_allocator(&hook->wrapped, &pm_pymalloc_allocator) ? "pymalloc"
                      : same_allocator(&hook->wrapped, &pm_system_allocator)
                          ? "the C library"
                          : "something else",
                      under == &pm_pymalloc_allocator ? "pymalloc" : "the C library");
        }
        size_t expected = d == PM_DOMAIN_RAW
                              ? t->in_place[PLACE_RAW] + t->in_place[PLACE_FALLBACK]
                              : t->in_domain[d];
        size_t live = hook->live_blocks; /* this thread's own atomic adds: no race */
        if (live != expected) {
            violation("the %s domain's debug hook counts %zu live blocks, the model %zu",
                      domain_names[d], live, expected);
        }
    }
}

static void check_counters(tape *t) PM_GIL_REQUIRED {
    size_t blocks = pm_allocated_blocks();
    size_t expected_blocks =
        t->start_blocks + t->in_place[PLACE_POOL] + t->in_place[PLACE_FALLBACK];
    if (blocks != expected_blocks) {
        violation("pm_allocated_blocks() = %zu, expected %zu (%zu at start + %zu pool + %zu "
                  "fallback blocks live)",
                  blocks, expected_blocks, t->start_blocks, t->in_place[PLACE_POOL],
                  t->in_place[PLACE_FALLBACK]);
    }
    pm_raw_stats raw;
    pm_get_raw_stats(&raw);
    uint64_t expected_raw =
        t->start_raw_live + t->in_place[PLACE_RAW] + t->in_place[PLACE_FALLBACK];
    if (raw.live != expected_raw) {
        violation("raw domain live count = %llu, expected %llu (%llu at start + %zu raw + %zu "
                  "fallback blocks live)",
                  (unsigned long long)raw.live, (unsigned long long)expected_raw,
                  (unsigned long long)t->start_raw_live, t->in_place[PLACE_RAW],
                  t->in_place[PLACE_FALLBACK]);
    }
    if (t->debug) check_hooks(t);
}

static void check_heap(void) PM_GIL_REQUIRED {
    const char *problem = pm_heap_check();
    if (problem != NULL) violation("pm_heap_check(): %s", problem);
}

static void check_everything(tape *t) PM_GIL_REQUIRED {
    check_heap();
    check_counters(t);
    for (unsigned s = 0; s < TAPE_ALL_SLOTS; s++) {
        const shadow_block *b = &t->slots[s];
        if (b->p != NULL) verify(b, s, 0, b->size, "on check");
    }
}

/* ---- operations ------------------------------------------------------------------------ */

static void op_malloc(tape *t, unsigned slot, pm_domain d, size_t n) PM_GIL_REQUIRED {
    if (t->slots[slot].p != NULL) release(t, slot);
    fault_mark before = faults_now(t);
    void *p = domain_malloc(d, n);
    expect_outcome(t, "malloc", p, before, n);
    if (p != NULL) adopt(t, slot, p, n, d, place_for_new(t, d, n), false, false);
}

static void op_calloc(tape *t, unsigned slot, pm_domain d, size_t n, unsigned variant)
    PM_GIL_REQUIRED {
    if (t->slots[slot].p != NULL) release(t, slot);
    size_t nelem, elsize;
    switch (variant) {
    case 0: nelem = 1, elsize = n; break;
    case 1: nelem = n, elsize = 1; break;
    case 2: {
        size_t k = 1 + next_u8(t) % 16;
        nelem = k, elsize = n / k;
        break;
    }
    default:
        if (n % 2 == 0) nelem = 0, elsize = n;
        else nelem = n, elsize = 0;
        break;
    }
    size_t total = nelem * elsize;
    fault_mark before = faults_now(t);
    void *p = domain_calloc(d, nelem, elsize);
    expect_outcome(t, "calloc", p, before, total);
    if (p != NULL) adopt(t, slot, p, total, d, place_for_new(t, d, total), true, false);
}

static void op_realloc(tape *t, unsigned slot, pm_domain d, size_t n) PM_GIL_REQUIRED {
    shadow_block *b = &t->slots[slot];
    if (b->p == NULL) { /* realloc(NULL, n) is malloc(n) */
        fault_mark before = faults_now(t);
        void *p = domain_realloc(d, NULL, n);
        expect_outcome(t, "realloc(NULL)", p, before, n);
        if (p != NULL) adopt(t, slot, p, n, d, place_for_new(t, d, n), false, false);
        return;
    }
    verify(b, slot, 0, b->size, "before realloc");
    bool in_place = expect_in_place(t, b, n);
    fault_mark before = faults_now(t);
    unsigned char *q = domain_realloc((pm_domain)b->domain, b->p, n);
    expect_outcome(t, "realloc", q, before, n);
    if (q == NULL) {
        if (in_place) violation("slot %u: a shrink to %zu bytes of a %zu-byte pool block "
                                "failed; it must be done in place", slot, n, b->extent);
        verify(b, slot, 0, b->size, "after a failed realloc");
        return;
    }
    if (in_place && q != b->p) {
        violation("slot %u: realloc of a %zu-byte pool block to %zu bytes moved it (%p -> %p); "
                  "pymalloc keeps it in place when 4n > 3 x block size",
                  slot, b->extent, n, (void *)b->p, (void *)q);
    }
    live_remove(t, slot);
    t->in_place[b->place]--;
    size_t old = b->size;
    place where = place_after_realloc(t, b, n);
    b->extent = in_place ? b->extent : extent_for(t, where, n);
    b->lead = lead_for(t, where);
    b->p = q;
    b->size = n;
    b->place = (uint8_t)where;
    t->in_place[where]++;
    check_placement(b, slot);
    live_insert(t, slot);
    verify(b, slot, 0, old < n ? old : n, "after realloc (the kept prefix)");
    if (n > old && t->debug) expect_clean(b, slot, old, n, "bytes realloc added");
    if (n > old) fill(b->p, old, n, b->seed);
}

static void op_resize(tape *t, unsigned slot, pm_domain d, unsigned variant, uint8_t arg)
    PM_GIL_REQUIRED {
    const shadow_block *b = &t->slots[slot];
    if (b->p == NULL) {
        op_realloc(t, slot, d, 1 + (size_t)arg);
        return;
    }
    size_t old = b->size, n;
    switch (variant) {
    case 0: n = old - old * (arg % 64) / 256; break; /* keeps > 3/4 */
    case 1: n = old * (arg % 64) / 256; break;       /* keeps < 1/4 */
    case 2: n = old + 1 + arg; break;
    default: n = 2 * old + arg; break;
    }
    if (n > TAPE_MAX_SIZE) n = TAPE_MAX_SIZE;
    op_realloc(t, slot, d, n);
}

static void op_free(tape *t, unsigned slot, pm_domain d, unsigned variant) PM_GIL_REQUIRED {
    if (t->slots[slot].p != NULL) {
        release(t, slot);
        return;
    }
    if (d == PM_DOMAIN_OBJ && variant & 1) pm_object_del(NULL);
    else domain_free(d, NULL); /* does nothing */
}

/* Object types of every shape pm_object_new* accepts. */
static const pm_type object_types[] = {
    {"fixed16", sizeof(pm_object), 0},
    {"fixed520", 520, 0},
    {"bytes", sizeof(pm_var_object) + 1, 1},
    {"tuple", sizeof(pm_var_object), sizeof(void *)},
    {"records", sizeof(pm_var_object) + 8, 24},
};
enum { OBJECT_TYPES = sizeof object_types / sizeof object_types[0] };

static void op_object(tape *t, unsigned slot, uint8_t arg, unsigned nitems) PM_GIL_REQUIRED {
    if (t->slots[slot].p != NULL) release(t, slot);
    const pm_type *type = &object_types[arg % OBJECT_TYPES];
    bool var = type->tp_itemsize != 0;
    size_t size = var ? (type->tp_basicsize + nitems * type->tp_itemsize + 7) & ~(size_t)7
                      : type->tp_basicsize;
    fault_mark before = faults_now(t);
    errno = 0;
    pm_object *op = var ? (pm_object *)pm_object_new_var(type, nitems) : pm_object_new(type);
    int error = errno;
    expect_outcome(t, var ? "pm_object_new_var" : "pm_object_new", op, before, size);
    if (op == NULL) {
        if (error != ENOMEM) violation("%s failed with errno %d, expected ENOMEM", t->op, error);
        return;
    }
    if (op->ob_refcnt != 1 || op->ob_type != type ||
        (var && ((pm_var_object *)op)->ob_size != (ptrdiff_t)nitems)) {
        violation("new %s object: refcnt %td, type %p (expected %p), size %td (expected %u)",
                  type->tp_name, op->ob_refcnt, (const void *)op->ob_type, (const void *)type,
                  var ? ((pm_var_object *)op)->ob_size : 0, nitems);
    }
    adopt(t, slot, op, size, PM_DOMAIN_OBJ, place_for_new(t, PM_DOMAIN_OBJ, size), false, true);
}

static void op_refused(tape *t, unsigned slot, pm_domain d, unsigned variant, uint8_t arg)
    PM_GIL_REQUIRED {
    const size_t huge = (size_t)PTRDIFF_MAX + 1 + arg;
    fault_mark before = faults_now(t);
    switch (variant) {
    case 0:
        expect_refused(t, "malloc(> PTRDIFF_MAX)", domain_malloc(d, arg & 1 ? SIZE_MAX : huge),
                       before);
        break;
    case 1:
        if (arg & 1) {
            expect_refused(t, "calloc(n, 16) > PTRDIFF_MAX",
                           domain_calloc(d, (size_t)PTRDIFF_MAX / 16 + 1 + arg, 16), before);
        } else {
            expect_refused(t, "calloc(2, SIZE_MAX / 2 + k)",
                           domain_calloc(d, 2, SIZE_MAX / 2 + 1 + arg), before);
        }
        break;
    case 2: {
        shadow_block *b = &t->slots[slot];
        pm_domain bd = b->p != NULL ? (pm_domain)b->domain : d;
        expect_refused(t, "realloc(p, > PTRDIFF_MAX)", domain_realloc(bd, b->p, huge), before);
        if (b->p != NULL) verify(b, slot, 0, b->size, "after a refused realloc");
        break;
    }
    default: {
        static const pm_type too_small = {"too_small", sizeof(pm_object) - 1, 0};
        static const pm_type fixed = {"fixed", sizeof(pm_object), 0};
        errno = 0;
        void *p;
        int expected;
        switch (arg % 3) {
        case 0: p = pm_object_new(&too_small), expected = EINVAL; break;
        case 1: p = pm_object_new_var(&fixed, 1), expected = EINVAL; break;
        default:
            p = pm_object_new_var(&object_types[4], (size_t)PTRDIFF_MAX / 8 + arg);
            expected = ENOMEM;
            break;
        }
        int error = errno;
        expect_refused(t, "an invalid object request", p, before);
        if (error != expected) {
            violation("invalid object request: errno %d, expected %d", error, expected);
        }
        break;
    }
    }
}

static void op_burst(tape *t, pm_domain d, unsigned variant, uint8_t arg, size_t n)
    PM_GIL_REQUIRED {
    unsigned count = 1 + 5u * arg;
    if (n > 4096 && count > 16) count = 16;
    for (unsigned s = TAPE_SLOTS; s < TAPE_ALL_SLOTS && count > 0; s++) {
        if (t->slots[s].p != NULL) continue;
        count--;
        if (variant & 1) {
            fault_mark before = faults_now(t);
            void *p = domain_calloc(d, 1, n);
            expect_outcome(t, "calloc (burst)", p, before, n);
            if (p != NULL) adopt(t, s, p, n, d, place_for_new(t, d, n), true, false);
        } else {
            fault_mark before = faults_now(t);
            void *p = domain_malloc(d, n);
            expect_outcome(t, "malloc (burst)", p, before, n);
            if (p != NULL) adopt(t, s, p, n, d, place_for_new(t, d, n), false, false);
        }
    }
}

static void op_burst_free(tape *t, unsigned variant, uint8_t arg) PM_GIL_REQUIRED {
    unsigned stride = 1 + (arg & 7);
    unsigned offset = (unsigned)(arg >> 3) % stride;
    for (unsigned k = 0; k < TAPE_BULK_SLOTS; k++) {
        unsigned i = variant & 1 ? TAPE_BULK_SLOTS - 1 - k : k;
        if (i % stride != offset) continue;
        if (t->slots[TAPE_SLOTS + i].p != NULL) release(t, TAPE_SLOTS + i);
    }
}

static void op_reserve(uint8_t arg) PM_GIL_REQUIRED {
    const size_t choices[4] = {0, pm_arena_size(), (size_t)1 << 20, SIZE_MAX};
    pm_set_arena_reserve(choices[arg & 3]);
    trace("pm_set_arena_reserve(%zu)", choices[arg & 3]);
}

static void expect_name(const char *expected, const char *after) {
    const char *current = pm_current_allocator_name();
    if (current == expected) return;
    if (current == NULL || expected == NULL || strcmp(current, expected) != 0) {
        violation("after %s: current name \"%s\", expected \"%s\"", after,
                  current != NULL ? current : "(null)", expected != NULL ? expected : "(null)");
    }
}

static void expect_current_name(const tape *t, const char *after) {
    static const char *const names[2][2] = {{"malloc", "pymalloc"},
                                            {"malloc_debug", "pymalloc_debug"}};
    expect_name(t->wrapped[PM_DOMAIN_MEM] || t->wrapped[PM_DOMAIN_OBJ]
                    ? NULL
                    : names[t->debug][t->pymalloc_in[PM_DOMAIN_MEM]],
                after);
}

/* Installs or removes the pass-through wrapper of domain d. */
static void toggle_wrapper(tape *t, pm_domain d) PM_GIL_REQUIRED {
    if (t->debug && !t->wrapped[d]) load_hooks(t); /* remember the hook it will cover */
    int r = t->wrapped[d] ? pm_failing_allocator_uninstall(&wrappers[d])
                          : pm_failing_allocator_install(&wrappers[d], d);
    trace("%s the pass-through hook of %s -> %d", t->wrapped[d] ? "remove" : "install",
          domain_names[d], r);
    if (r != 0) violation("cannot %s the hook of %s (errno %d)",
                          t->wrapped[d] ? "remove" : "install", domain_names[d], errno);
    t->wrapped[d] = !t->wrapped[d];
    expect_current_name(t, "a hook change");
}

/* pm_setup_allocators(name) returned r with errno `error`: 0 was expected, or -1 with
 * EBUSY when `busy`. */
static void expect_setup(const char *name, int r, int error, bool busy, size_t pymalloc_blocks) {
    if (!busy && r != 0) {
        violation("pm_setup_allocators(\"%s\") failed (errno %d) with %zu pymalloc blocks live",
                  name, error, pymalloc_blocks);
    }
    if (busy && (r != -1 || error != EBUSY)) {
        violation("pm_setup_allocators(\"%s\") returned %d (errno %d) with %zu pymalloc blocks "
                  "live; expected -1 with EBUSY",
                  name, r, error, pymalloc_blocks);
    }
}

/* Debug hooks (DEBUG HOOKS at the top): by debug name, or a round trip through the plain
 * name and pm_setup_debug_hooks(). */
static void op_config_debug(tape *t, uint8_t arg) PM_GIL_REQUIRED {
    static const char *const pymalloc_names[2] = {"pymalloc_debug", "debug"};
    bool to_malloc = (arg & 3) == 1;
    bool round_trip = !to_malloc && (arg >> 2) % 3 == 2;
    bool now_malloc = !t->pymalloc_in[PM_DOMAIN_MEM]; /* mem and obj switch together */
    bool new_malloc = round_trip ? now_malloc : to_malloc;
    const char *name = round_trip  ? (now_malloc ? "malloc" : "pymalloc")
                       : to_malloc ? "malloc_debug"
                                   : pymalloc_names[(arg >> 2) % 3];
    size_t pymalloc_blocks =
        t->start_blocks + t->in_place[PLACE_POOL] + t->in_place[PLACE_FALLBACK];
    /* alloc/config.c's rule, domain by domain: a domain whose debug hook changes (or goes)
     * is busy while that hook has live blocks, whether it is on top or covered by the
     * pass-through hook; and a domain that leaves plain pymalloc's hands is busy while
     * pymalloc has blocks. Removing only the pass-through hook keeps the same debug hook
     * (contexts are interned) and strands nothing. */
    bool busy = false;
    for (int d = PM_DOMAIN_MEM; d <= PM_DOMAIN_OBJ; d++) {
        bool under_changes = round_trip || new_malloc != now_malloc;
        if (!t->wrapped[d] && !under_changes) continue; /* the same hook: no change */
        busy |= under_changes && t->in_domain[d] > 0;
        busy |= !(round_trip && !new_malloc) && pymalloc_blocks > 0;
    }
    if (round_trip) busy |= t->in_place[PLACE_RAW] + t->in_place[PLACE_FALLBACK] > 0;
    errno = 0;
    int r = pm_setup_allocators(name);
    int error = errno;
    trace("pm_setup_allocators(\"%s\") -> %d (errno %d)", name, r, r != 0 ? error : 0);
    expect_setup(name, r, error, busy, pymalloc_blocks);
    if (r == 0) {
        for (int d = PM_DOMAIN_MEM; d <= PM_DOMAIN_OBJ; d++) {
            t->pymalloc_in[d] = !new_malloc;
            t->wrapped[d] = false; /* replaced, not uninstalled: nothing to undo */
        }
    }
    if (r == 0 && round_trip) {
        expect_name(name, "the plain half of a round trip");
        r = pm_setup_debug_hooks();
        trace("pm_setup_debug_hooks() -> %d", r);
        if (r != 0) violation("pm_setup_debug_hooks() failed (errno %d)", errno);
    }
    if (r == 0) load_hooks(t);
    expect_current_name(t, round_trip ? "pm_setup_debug_hooks()" : "pm_setup_allocators()");
}

/* Without faults: switch the configuration by name, or wrap / unwrap a domain. */
static void op_config(tape *t, uint8_t arg) PM_GIL_REQUIRED {
    static const char *const pymalloc_names[3] = {"pymalloc", "default", ""};
    if (!t->config_by_name) return;
    if ((arg & 3) == 2) {
        toggle_wrapper(t, arg & 4 ? PM_DOMAIN_OBJ : PM_DOMAIN_MEM);
        return;
    }
    if (t->debug) {
        op_config_debug(t, arg);
        return;
    }
    bool to_malloc = (arg & 3) == 1;
    const char *name = to_malloc ? "malloc" : pymalloc_names[(arg >> 2) % 3];
    /* The deliberate gap (see the top of this file): blocks of "malloc" live in mem/obj. */
    if (!to_malloc && t->in_place[PLACE_OTHER] > 0) return;
    size_t pymalloc_blocks =
        t->start_blocks + t->in_place[PLACE_POOL] + t->in_place[PLACE_FALLBACK];
    /* EBUSY when a mem/obj domain would move off pymalloc (or off a hook, which may wrap
     * it) to "malloc" while pymalloc has blocks. */
    bool changes = false;
    for (int d = PM_DOMAIN_MEM; d <= PM_DOMAIN_OBJ; d++) {
        changes |= t->pymalloc_in[d] || t->wrapped[d];
    }
    errno = 0;
    int r = pm_setup_allocators(name);
    int error = errno;
    trace("pm_setup_allocators(\"%s\") -> %d (errno %d)", name, r, r != 0 ? error : 0);
    expect_setup(name, r, error, to_malloc && changes && pymalloc_blocks > 0, pymalloc_blocks);
    if (r == 0) {
        for (int d = PM_DOMAIN_MEM; d <= PM_DOMAIN_OBJ; d++) {
            t->pymalloc_in[d] = !to_malloc;
            t->wrapped[d] = false; /* replaced, not uninstalled: nothing to undo */
        }
    }
    expect_current_name(t, "pm_setup_allocators()");
}

/* CHECK variant 1: the statistics report, in full and truncated (snprintf's contract). */
static void check_stats(const tape *t) PM_GIL_REQUIRED {
    static char full[16384];
    static FILE *devnull;
    size_t n = pm_stats_json(full, sizeof full);
    if (n == 0 || n >= sizeof full || strlen(full) != n || full[0] != '{' || full[n - 1] != '}') {
        violation("pm_stats_json: returned %zu for a %zu-byte text", n, strlen(full));
    }
    size_t k = 1 + t->step % n; /* a buffer too small by (n + 1 - k) bytes */
    char *cut = malloc(k);      /* exactly k bytes, so that ASan sees an overrun */
    if (cut == NULL) abort();
    size_t m = pm_stats_json(cut, k);
    if (m != n || strlen(cut) != k - 1 || memcmp(cut, full, k - 1) != 0) {
        violation("pm_stats_json into %zu bytes: returned %zu (expected %zu), wrote \"%s\"", k,
                  m, n, cut);
    }
    free(cut);
    if (devnull == NULL) devnull = fopen("/dev/null", "w");
    if (devnull != NULL) pm_print_stats(devnull);
}

/* With faults: arm one of the policies. */
static void op_fault(tape *t, uint8_t arg) {
    pm_fail_policy *policy = arg & 1 ? (t->options->arena_faults != NULL
                                            ? &t->options->arena_faults->policy
                                            : NULL)
                                     : (t->options->raw_faults != NULL
                                            ? &t->options->raw_faults->policy
                                            : NULL);
    uint64_t n = 1 + (arg >> 3);
    unsigned how = (arg >> 1) & 3;
    size_t threshold = how == 3 ? next_size(t) : 0;
    if (policy == NULL) return;
    static const char *const how_names[4] = {"never", "Nth", "from Nth", "size >="};
    trace("%s faults: %s %llu", arg & 1 ? "arena" : "raw", how_names[how],
          how == 3 ? (unsigned long long)threshold : (unsigned long long)n);
    switch (how) {
    case 0: pm_fail_never(policy); break;
    case 1: pm_fail_nth(policy, n); break;
    case 2: pm_fail_from_nth(policy, n); break;
    default: pm_fail_size_at_least(policy, threshold); break;
    }
}

static void disarm_faults(const tape *t) {
    if (t->options->raw_faults != NULL) pm_fail_never(&t->options->raw_faults->policy);
    if (t->options->arena_faults != NULL) pm_fail_never(&t->options->arena_faults->policy);
}

/* ---- the run --------------------------------------------------------------------------- */

static bool holds(pm_domain d, const pm_allocator *expected) {
    pm_allocator a;
    if (pm_get_allocator(d, &a) != 0) return false;
    if (the_tape.debug) { /* the allocator under d's debug hook */
        const pm_debug_ctx *hook = pm_debug_hook_ctx(&a);
        return hook != NULL && same_allocator(&hook->wrapped, expected);
    }
    return same_allocator(&a, expected);
}

static void start(tape *t, const uint8_t *data, size_t size, const pm_tape_options *options)
    PM_GIL_REQUIRED {
    memset(t, 0, sizeof *t);
    t->data = data;
    t->size = size;
    t->options = options;
    t->op = "start";
    const char *trace_env = getenv("PM_TAPE_TRACE");
    tracing = trace_env != NULL && trace_env[0] != '\0' && trace_env[0] != '0';
    pm_live_set_init(&t->live, live_storage, TAPE_ALL_SLOTS);
    bool faults = options->raw_faults != NULL || options->arena_faults != NULL;
    t->debug = options->debug_hooks;
    t->overhead = t->debug ? DEBUG_OVERHEAD : 0;
    if (t->debug && faults) violation("debug hooks with injected failures: not modelled");
    /* The model knows two mem/obj allocators, each possibly under the debug hooks. Caches,
     * when they arrive, are a new option here and a new case in place_for_new(). */
    for (int d = PM_DOMAIN_MEM; d <= PM_DOMAIN_OBJ; d++) {
        if (holds((pm_domain)d, &pm_pymalloc_allocator)) t->pymalloc_in[d] = true;
        else if (!holds((pm_domain)d, &pm_system_allocator)) {
            violation("the %s domain holds an allocator the tape cannot model%s", domain_names[d],
                      t->debug ? " under a debug hook (or no debug hook)" : "");
        }
    }
    if (t->debug) check_hooks(t); /* in every domain, with no live block */
    t->start_name = pm_current_allocator_name();
    t->config_by_name = !faults && t->start_name != NULL;
    /* Release every wholly free arena so that the input runs the same whatever ran before. */
    t->start_reserve = pm_get_arena_reserve();
    pm_set_arena_reserve(0);
    t->start_blocks = pm_allocated_blocks();
    pm_raw_stats raw;
    pm_get_raw_stats(&raw);
    t->start_raw_live = raw.live;
    if (t->start_blocks == 0 && pm_counters.arenas_current != 0) {
        violation("no pymalloc block is live and the reserve is 0, yet %zu arenas remain",
                  pm_counters.arenas_current);
    }
}

static void finish(tape *t) PM_GIL_REQUIRED {
    t->op = "end";
    disarm_faults(t);
    release_all(t);
    check_heap();
    check_counters(t);
    for (int d = PM_DOMAIN_MEM; d <= PM_DOMAIN_OBJ; d++) {
        if (t->wrapped[d]) toggle_wrapper(t, (pm_domain)d);
    }
    if (t->config_by_name) {
        if (pm_setup_allocators(t->start_name) != 0) {
            violation("could not restore configuration \"%s\" (errno %d)", t->start_name, errno);
        }
    }
    pm_set_arena_reserve(0);
    if (t->start_blocks == 0 && pm_counters.arenas_current != 0) {
        violation("everything is freed and the reserve is 0, yet %zu arenas remain",
                  pm_counters.arenas_current);
    }
    check_heap();
    pm_set_arena_reserve(t->start_reserve);
}

void pm_tape_run(const uint8_t *data, size_t size, const pm_tape_options *options) {
    static const char *const kind_names[16] = {
        "MALLOC", "MALLOC",       "CALLOC", "REALLOC", "REALLOC", "RESIZE",  "FREE",    "FREE",
        "REALLOC_ZERO", "OBJECT", "REFUSED", "BURST",  "BURST_FREE", "CHECK", "RESERVE", "MODE",
    };
    tape *t = &the_tape;
    start(t, data, size, options);
    while (t->pos < t->size && t->step < TAPE_MAX_STEPS) {
        uint8_t code = next_u8(t);
        unsigned kind = code & 15, variant = code >> 6;
        pm_domain d = decode_domain(code);
        t->op = kind_names[kind];
        switch (kind) {
        case 0:
        case 1: {
            unsigned slot = next_slot(t);
            op_malloc(t, slot, d, next_size(t));
            break;
        }
        case 2: {
            unsigned slot = next_slot(t);
            op_calloc(t, slot, d, next_size(t), variant);
            break;
        }
        case 3:
        case 4: {
            unsigned slot = next_slot(t);
            op_realloc(t, slot, d, next_size(t));
            break;
        }
        case 5: {
            unsigned slot = next_slot(t);
            op_resize(t, slot, d, variant, next_u8(t));
            break;
        }
        case 6:
        case 7: op_free(t, next_slot(t), d, variant); break;
        case 8: op_realloc(t, next_slot(t), d, 0); break;
        case 9: {
            unsigned slot = next_slot(t);
            uint8_t arg = next_u8(t);
            op_object(t, slot, arg, next_u16(t) % 4096);
            break;
        }
        case 10: {
            unsigned slot = next_slot(t);
            op_refused(t, slot, d, variant, next_u8(t));
            break;
        }
        case 11: {
            uint8_t arg = next_u8(t);
            op_burst(t, d, variant, arg, next_size(t));
            break;
        }
        case 12: op_burst_free(t, variant, next_u8(t)); break;
        case 13:
            if (variant == 3) release_all(t);
            check_everything(t);
            if (variant == 1) check_stats(t);
            break;
        case 14: op_reserve(next_u8(t)); break;
        default:
            if (options->raw_faults != NULL || options->arena_faults != NULL) {
                op_fault(t, next_u8(t));
            } else {
                op_config(t, next_u8(t));
            }
            break;
        }
        t->step++;
        if (t->step % TAPE_CHECK_EVERY == 0) {
            t->op = "periodic check";
            check_heap();
            check_counters(t);
        }
    }
    finish(t);
}
