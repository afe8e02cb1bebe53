/*
 * trace.c — tracemalloc for pymalloc-mt: a hook on every domain that records, for each live
 * block, its domain, the size asked for at the outermost call and a traceback.
 *
 * Hooks. pm_trace_start wraps each domain's allocator with a hook (pm_set_allocator), as
 * CPython's tracemalloc does. The hook adds no header, so a block allocated before start
 * or while tracing may be freed after stop by whatever is installed then. A per-thread
 * depth counter makes nested calls (pymalloc's fall-back to raw, an allocation inside a
 * frame provider, a hook buried under another) pass straight through: only the outermost
 * call is traced. Hook contexts {domain, wrapped allocator} are interned and never freed
 * (domain.c's rule: a caller may still be inside a hook long after it was replaced).
 * Stop restores a domain only if the hook is still on top; a buried hook stays and passes
 * through. A hook's common case (nested; or skipped by sampling and unable to reach
 * another domain) is a tail call with no stack frame; the rest is in noinline functions.
 *
 * Tables. Traces live in 64 shards chosen by a multiplicative hash of the pointer:
 *
 *   shard[h >> 58] { spinlock | slots: open addressing, linear probing, backward-shift
 *                    delete, home = the next bits of h | used | current bytes }
 *   slot { ptr, size (top bit: sampled), traceback* }            24 bytes
 *
 * The domain is part of the interned traceback, so a slot is 24 bytes; at the 3/4 maximum
 * load and doubling, a table averages about 56% full: ~43 bytes of table per trace. The
 * table is far bigger than a core's cache, so each insert and remove misses: both first
 * prefetch the home slot, before the lock (see prefetch_home). Tracebacks are interned in
 * 16 shards by frame hash (same slot scheme, frames in 64 KiB bump chunks). Each thread
 * keeps a 2-way cache of the tracebacks of up to 2 frames it interned recently, with
 * copies of their frames (tb_cache_entry), so a call site seen again skips that lock. A
 * 1-frame traceback is 32 bytes, shared by every block from its call site.
 *
 * Fork. A child goes on tracing from empty tables, with every lock free (see fork_child).
 *
 * Locking. No hook takes the GIL (CPython's raw hook takes it, which has deadlocked
 * programs; only stop, clear, snapshots and track/untrack take it, and only while records
 * live in blocks): a traced allocation takes its traceback shard's lock (unless the thread
 * cache hits) and its trace shard's lock, each alone, never nested; a block that keeps its
 * record (see "Records in blocks") takes no trace shard's lock, in malloc or free. Any
 * other free while tracing everything takes its trace shard's lock (nearly every block is
 * traced then); while sampling, only if a
 * 2 KiB filter (one bit per bucket of addresses: "some trace here") says the pointer may
 * be traced: the bits live in L1, the counts behind them (64 KiB) are only touched by
 * traced blocks. A shard owns its buckets' bits and counts, and keeps them only for
 * traces stored by a sampling session (trace_shard.filtered). Start, stop,
 * clear and snapshots take a control mutex; no allocation path does. Tracer memory comes
 * from mmap (pm_trace_mem_alloc), never from a traced domain, and no lock is held across
 * a call into the wrapped allocator or a frame provider.
 *
 * Sessions. active_session is 0 when not tracing, else a number that start and clear
 * renew, whose low bit says whether the session samples (keeps the filter). A hook reads
 * it on entry and inserts only if it is unchanged, checked under the shard lock; stop and
 * clear zero it before emptying the shards (under each lock) and only then free the
 * tracebacks, so a trace whose traceback was freed is never stored, and a thread's cached
 * traceback is used only in the session it was interned for. A free that reads a
 * sampling session and finds no filter bit skips the lookup: a trace stored before that
 * session was emptied with its session, and one stored in it set its bit under the
 * shard lock before the block was handed out.
 *
 * Counters. Each shard keeps its traced bytes under its lock, so current (their sum) is
 * exact when threads are quiet. Peak: each thread counts how far its own traced bytes
 * have risen since its last peak check, clamped at 0 when it frees; past 8 KiB it sums
 * the shards and raises the peak (a CAS). Records in blocks (below), all under the GIL,
 * have one such accumulator for all threads: their count, and a trigger 8 KiB above the
 * lowest the count has been since its last check (in_block_add). Why the bound is the sum
 * of the accumulators' limits: at the true peak, take the latest check of any of them;
 * it folded in every trace, and since then each accumulator's part has risen by at most
 * its own rise since its own (earlier or same) check, which is less than 8 KiB. So the peak
 * reported is at most 8 KiB per allocating thread plus 8 KiB for the records below the
 * true one (16 KiB per thread at most), exact for a single block of 8 KiB or more, and a
 * query always folds in the current value. No shared counter is written on every
 * allocation outside the GIL. (Two accumulators that do not follow their lows, such as
 * a trigger only ever set at checks, are not bounded at all: one part may fall while the
 * other rises and is checked, then rise again unseen. fuzz_trace found that.)
 *
 * Failure. A trace that cannot be stored (no tracer memory: tests inject it with
 * pm_trace_test_fail_memory) makes a fresh allocation fail: the block goes back to the
 * wrapped allocator and the caller gets NULL with errno = ENOMEM; the tables never hold a
 * half-stored entry. A realloc takes the old trace out before calling down (so a thread
 * that receives the freed address cannot have its new trace removed by us), and puts it
 * back if the realloc fails. If the new trace of a successful realloc cannot be stored,
 * CPython aborts (Py_FatalError "tracemalloc_realloc() failed to allocate a trace"); we
 * keep the block valid and untraced and count it (pm_trace_lost_traces).
 *
 * Sampling. Sample points form a Poisson process of rate 1/N over the bytes a thread
 * allocates: each thread counts down an exponential(N) number of bytes; a block that
 * takes the count to 0 or below is traced and a fresh count drawn. A block of s bytes is
 * thus traced with probability p(s) = 1 - exp(-s/N), whatever came before (the
 * exponential is memoryless), and a traced one is accounted as w(s) = s / p(s) bytes:
 * E[w(s) * [traced]] = s, so sums of weights are unbiased estimates of bytes (the
 * Horvitz-Thompson estimator; w(s) ~ N + s/2 for s << N and ~ s for s >> N; weighting
 * by max(N, s) instead would be low by about s/2 per sample). The fast path of an
 * unsampled call is a thread-local subtract and compare; it still counts as the outermost
 * call, so pymalloc's fall-back to raw inside it is neither sampled nor charged again.
 * pymalloc's malloc charges every small call, sampling or not (see below): a point that
 * falls in a call the session does not sample (nested in a hook, or through pymalloc's
 * own record) is lost and the countdown redrawn. That biases nothing: points in disjoint
 * byte ranges are independent, so every sampled call keeps its p(s). While no session
 * samples, pymalloc parks the countdown (PM_COUNTDOWN_PARKED). A countdown that is parked
 * or was drawn at another rate is never used: the hooks compare the rate it was drawn at
 * (tls.countdown_mean) whenever they charge one, and pymalloc's routes send each thread's
 * first malloc of a session through pm_trace_pymalloc_sample_point, which compares too.
 *
 * Sampling over pymalloc. A hook alone costs more than the 1.1x that sampling may cost
 * (see Cost), so while a sampling session's hook sits directly over pymalloc in mem or
 * object, pymalloc serves the domain itself and the hook is only the way in for what is
 * sampled. The hook's sampled calls take their new blocks from the raw domain
 * (hook_ctx.sampled: pm_pymalloc_unpooled_allocator), so no pool block is ever traced
 * while sampling. Then free's fast path may take pool blocks without asking the tracer
 * (the domain's route keeps the arena map; a sampled block, not in a pool, still reaches
 * the hook through free's slow path). malloc's fast path charges the countdown in the
 * thread's gate (pm_trace_gate, in alloc/internal/pymalloc.h) and leaves only when it runs
 * out; pm_trace_pymalloc_sample_point then decides, and pm_trace_sampled_malloc serves a
 * sample through the hook. A thread's route names the sampling stand-in from the session's
 * start until its first malloc there, which redraws a stale countdown and puts the
 * thread's own heap back (pm_thread_route_arm); 0 and more than 512 bytes still go
 * through the hook (pm_domain_route.sampling). Routes follow the mode: start stores it
 * before installing the hooks, so a full session's frees reach the hook before its first
 * trace exists, and stop clears it last. One consequence: a pool block tracked by hand
 * (pm_trace_track) in domain mem or object while sampling is not untracked by its free
 * (tracemalloc's track is meant for memory its allocators did not hand out).
 *
 * Records in blocks. A table costs a full session two cache misses a step (see Cost), so
 * while a full session's hook sits directly over pymalloc in mem or object, in GIL mode
 * without thread caches, the trace of a block of up to 480 bytes lives in the block:
 *
 *   traced heap block:  [ record: tb | size ][ the caller's bytes ... ]
 *                         16 bytes           ^ what malloc returns
 *   its pool's marks:   [ .. | mark | .. ]   a byte a block: counted? and the size
 *
 * The block comes from pm_traced_heap, a heap of its own (alloc/internal/pymalloc.h), one
 * class up (n + 16 bytes; 0 bytes take 1, so that the pointer stays inside its pool).
 * 481-512 bytes take the largest class, whose pools keep the records beside them (see
 * Records beside) and hand out the block itself. The
 * domain's route names pm_traced_route_heap, so malloc's slow path calls
 * pm_trace_route_malloc, which captures the traceback first (a trace that cannot be stored
 * then costs no block) and writes the record and the block's mark. Free needs no hook: a
 * traced heap's pool fails the owner test, and pm_pymalloc_free_other_heap hands the block
 * to pm_trace_free_in_block, which takes the block's size out of the count if its mark
 * says it counts; it reads the mark, not the record (see Marks, below). So:
 *   - blocks allocated before start are main heap blocks, freed as before; and no block
 *     of the main heap's pools is traced (more than 512 bytes come from the raw domain,
 *     hook_ctx.sampled, traced in the table), so free's fast path may skip us
 *     (as while sampling, a block from before start tracked by hand in mem or object is
 *     then not untracked by its free);
 *   - clear and stop renew or end the session and zero the marks: records left behind stop
 *     counting, and their blocks, which outlive the session, are freed by pymalloc as usual;
 *   - realloc always moves a block out of the main heap, or keeps it in place with a new
 *     record when the size stays in its class;
 *   - snapshots walk the traced heap's pools: a block carved and not on its pool's free
 *     list is live, and its record counts if its mark is set.
 * Everything here runs under the GIL: the mem and object domains require it, and stop,
 * clear, reset_peak, snapshots and track/untrack of such a block take it when the caller
 * does not hold it (hold_gil_for_records). Free-threaded mode and thread caches keep the tables: records
 * there would need a traced heap per thread and snapshots of other threads' pools.
 *
 * Native tracebacks. backtrace(3), then skip the tracer's own frames and the library's
 * entry point. How many that is depends on inlining, so start calibrates it: a probe
 * records its own stack, allocates through each domain and operation, and the hook finds
 * the probe's frame in what it captured.
 *
 * Cost (tools/bench/trace_cost.c: object-domain churn over 100,000 live blocks, -O2; a
 * 2-core machine shared with other builds, ratios moving by 0.5 between runs; instruction
 * counts from callgrind). Every "+N instructions" below until the correction at the end
 * is 47 too low: it took as the untraced step a count that included the benchmark's
 * drawing of its inputs (47 a step); the untraced step is 64 instructions, 44 of them the
 * allocator's. With pool headers out of the pools the untraced step takes 33-38
 * ns and 119 instructions (now 28-35 ns and 108). Any hook at all cost 1.35-1.45x (+28
 * instructions, +14-19 ns a step; now 1.6-1.8x and +100 instructions, through the bypass
 * route's slow path), because pymalloc's inline paths are bypassed while one is installed.
 * Sampling at
 * the default rate cost 1.4-1.7x through the hook (+46 instructions a step over a
 * pass-through hook: the countdown on malloc, a filter bit on free). Over pymalloc's
 * sampling route it cost 1.14x (median of 15 rounds; 1.15x with no sample ever taken,
 * so the route itself was the cost) while malloc left its fast path for a frameless one
 * that charged the countdown and popped from the thread's heap, about 18 instructions
 * more. With the countdown in malloc's own fast path (two instructions on every pair,
 * paid for by the arena map of one word per pool, alloc/internal/pymalloc.h) sampling
 * costs 1.00-1.04x (medians of 11-15 rounds): an unsampled call is what every call pays.
 * Full tracing with one provider frame and records in blocks cost 3.6-4.2x (3.2-3.4x in
 * a quieter run), +208 instructions a step (old and new binaries interleaved: the table
 * took 6.7-8.5x), with one miss a step: free read the record of a block the benchmark had
 * not touched since it allocated it. With marks free reads none: 3.04-3.11x in five
 * interleaved runs in which the record-reading binary took 3.2-4.4x, at +222
 * instructions a step (the block's index, a multiplication, on both sides) and 2 bytes
 * more of bookkeeping a block. A cheaper index for the thread's traceback cache and the
 * provider's NULL-filename fix-up moved to a miss then took 29 instructions off (+190
 * over an untraced 111): 2.76-3.04x, against 2.95-3.27x for the binary before, in six
 * interleaved pairs, each pair in its favour. What is left is the provider and the
 * traceback cache (~50 instructions), the route, record and mark (~85), free's (~55; ~43
 * since free reaches us through a dispatch without register saves, +178 in all, no change
 * in time measurable here): a step too long to overlap its misses with the next one's.
 * Corrected counts: the untraced step 64 instructions, a pass-through hook +148, full
 * tracing +225; one GIL-protected count for the records' bytes with a peak trigger
 * (in_block_add), instead of a record count and per-thread growth counters, made it +211
 * and 2.73x -> 2.59x (medians of 41 interleaved runs); the trigger's following the count
 * down on free, which its bound needs, made it +216. Records beside for 481-512 bytes,
 * which had gone to the table, made it +204 and 2.52x -> 2.40x (medians of 41 interleaved
 * runs); skipping the traceback cache altogether (a fixed traceback, the provider still
 * called) took only 0.07x more off. Taking the marks out would take 0.26x off, but the
 * exact way to do it, a traced heap per slack value so that the pool says the size, took
 * a prototype to 2.14x with 21% more memory (README's Tracing section has the figures).
 * trace_cost --decref reads each block before its free, as a runtime's decref does: the
 * untraced step grows by ~20 ns, the traced one by ~90 (3.4-3.7x, before the cheaper
 * cache). With the table, full tracing with one
 * provider frame cost 6.2-7.1x, +544 instructions and +210-230 ns a step (8.1-9.3x and
 * +681 before the cheap paths: the traceback cache, no filter, prefetch, frameless hooks;
 * on the older pymalloc, whose step took 50 ns, 3.8-4.3x against 5.3x). What dominates is
 * memory: each remove and each insert touches a random slot of a 6 MiB table (on this
 * machine a dependent miss costs 20 ns within 4 MiB, 70 ns at 8 MiB), and the work between
 * them is too long for the core to overlap one step's misses with the next one's. Measured
 * by taking parts out (older pymalloc, runs where full tracing took 4.6x): no table, 2.5x;
 * without the traceback capture (one fixed traceback), 3.9x; without the two spinlock RMWs,
 * no measurable change; with 16-byte slots (a 4 MiB table), or 32-byte ones that never
 * straddle a line, no gain; at a 7/8 maximum load (a 3 MiB table), 4.7x (longer probe
 * runs). The prefetch hides the insert's miss behind the capture; the remove's has nothing
 * to hide behind. CPython's tracemalloc costs ~10x on object churn. One native frame costs
 * ~1.1 us a step: backtrace(3) unwinds through libgcc's DWARF tables. With records in
 * blocks the tracer holds about 30 bytes per traced block on the benchmark (the 16-byte
 * record, counted by pm_trace_get_memory, and the tables of blocks too large for one); with
 * the table about 73 bytes per traced block (CPython: about 53 plus a 16-byte record),
 * plus 64 KiB of
 * traceback cache per tracing thread.
 * Alternatives rejected: a header on every block (a hook could not free blocks allocated
 * before it, nor could blocks cross a stop: records in blocks avoid both by giving traced
 * blocks a heap of their own that pymalloc's free recognises); one global table (one lock
 * for every thread);
 * freeing in per-thread batches, so that a batch's table misses overlap (a freed block
 * would stay allocated and traced after free returned: current would not be exact, and
 * the debug hooks would report a bad free late, from another call).
 */
/* dladdr() is a GNU extension; the tracer's own header comes first all the same. */
#define _GNU_SOURCE 1
#include "alloc/internal/trace.h"

#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "alloc/internal/debug_hooks.h"
#include "alloc/internal/domain.h"
#include "alloc/internal/pymalloc.h" /* pm_pymalloc_allocator and its small-request limit */
#include "gil/gil.h"
#include "sync/sync.h"

#define TRACE_SHARDS 64
#define TB_SHARDS 16
#define TRACE_TABLE_MIN 128 /* slots: 3 KiB, the first page of a shard's table */
#define TB_TABLE_MIN 256
#define TB_CHUNK (64 * 1024)
/* Each accumulator of growth (a thread's table traces; the records in blocks) checks the
 * peak when it has risen this far; the peak may miss their sum (see Counters). */
#define PEAK_CHECK_BYTES ((size_t)8 * 1024)
#define FILTER_PER_SHARD 256 /* a multiple of 64: a shard's bits fill whole words */
#define SAMPLED_FLAG ((size_t)1 << 63)
#define MAX_SKIP 32 /* native frames a calibration may skip */
#define CALIBRATION_DEPTH 256
#define SAMPLING_SESSION ((size_t)1) /* bit of active_session: the filter is kept */
#define IN_BLOCK_SESSION ((size_t)2) /* bit of active_session: records in blocks */
#define SESSION_FLAG_BITS 2
/* Per-thread traceback cache: tracebacks of at most CACHED_FRAMES frames skip the traceback
 * shard's lock when the thread saw them recently. 2-way sets, the newer in way 0: 1024
 * entries in 64 KiB of address space, of which only the sets used become resident. On
 * the benchmark's 256 interleaved call sites, 256 2-way sets missed 15% of the time, 512
 * sets 5%. */
#define CACHED_FRAMES 2
#define TB_CACHE_SET_BITS 9
#define TB_CACHE_SETS (1 << TB_CACHE_SET_BITS)
#define TB_CACHE_WAYS 2

enum trace_op { OP_MALLOC, OP_CALLOC, OP_REALLOC, OP_COUNT };

/* ---- global state ---------------------------------------------------------------------- */

typedef struct trace_slot {
    uintptr_t ptr; /* 0: empty */
    size_t size;   /* bytes requested; SAMPLED_FLAG when recorded by sampling */
    const pm_trace_tb *tb;
} trace_slot;

typedef struct trace_shard {
    pm_spinlock lock;
    /* slots and mask change under the lock, with atomic stores: prefetch_home reads them
     * without it. */
    trace_slot *slots;
    size_t mask; /* capacity - 1; no table yet when slots is NULL */
    size_t used;
    size_t grow_at; /* used count at which the table doubles: 3/4 of capacity; 0: no table */
    bool filtered; /* the traces here were stored in a sampling session: the filter counts them */
    size_t current; /* accounted bytes; written under lock, read relaxed by anyone */
} __attribute__((aligned(64))) trace_shard;

typedef struct tb_chunk {
    struct tb_chunk *next;
    size_t size;
} tb_chunk;

typedef struct tb_shard {
    pm_spinlock lock;
    const pm_trace_tb **slots;
    size_t mask;
    size_t used;
    tb_chunk *chunks;
    char *bump;
    char *bump_end;
} __attribute__((aligned(64))) tb_shard;

typedef struct hook_ctx {
    pm_domain domain;
    /* Requests of 1..leaf_limit bytes cannot reach another domain through `wrapped`, so a
     * call that sampling skips needs no depth count and becomes a tail call: every size
     * for raw (it wraps the C library or a user's raw allocator), pymalloc's small sizes
     * for mem and object over pymalloc (it serves them from its pools), else none. */
    size_t leaf_limit;
    bool over_pymalloc; /* wrapped is pymalloc's record, in mem or object */
    pm_allocator wrapped;
    /* What a sampling session's sampled calls use: pymalloc's unpooled record over pymalloc
     * (so that no pool block is traced, and pool blocks can be freed without the hook: see
     * pm_trace_samples_over_pymalloc), `wrapped` itself over anything else. */
    const pm_allocator *sampled;
} hook_ctx;

typedef struct provider_record {
    pm_trace_frame_provider fn;
    void *ctx;
    const struct provider_record *next; /* on provider_records; immutable once there */
} provider_record;

static trace_shard trace_shards[TRACE_SHARDS];
static tb_shard tb_shards[TB_SHARDS];
static int filter_counts[TRACE_SHARDS * FILTER_PER_SHARD]; /* traces per bucket; shard lock */
/* Bit b: filter_counts[b] != 0. Written under the owning shard's lock (a shard's buckets
 * fill whole words), read by anyone with a relaxed load. */
static uint64_t filter_bits[TRACE_SHARDS * FILTER_PER_SHARD / 64];

/* 0: not tracing; else (n << SESSION_FLAG_BITS) | the session's flags: SAMPLING_SESSION
 * for a session of sampling, IN_BLOCK_SESSION for one that keeps records in blocks. */
static size_t active_session;
/* The next full session keeps records in blocks wherever it hooks pymalloc (set before its
 * hooks are installed, which reroutes the domains; cleared when they are taken out). */
static int in_block_mode;
/* Records in blocks of the session: the bytes they count, and the value past which a
 * malloc checks the peak (see in_block_add). Written under the GIL with a relaxed load and
 * store, read by anyone with a relaxed load. */
static size_t in_block_current;
static size_t in_block_peak_trigger = PEAK_CHECK_BYTES;
/* Some pool has served the traced heap (give_marks ran): only then are there marks to zero
 * and records to count. Set under the GIL, in GIL mode only. */
static int in_block_pools_exist;
static int max_frames;        /* nframes of the session (relaxed) */
static size_t sample_mean;    /* 0: trace everything; constant within a session */
static size_t peak_bytes;
static size_t lost_traces;
static size_t tracer_memory;
static int fail_memory;
static const provider_record *frame_provider;
static int native_skip[PM_DOMAIN_COUNT][OP_COUNT] = {{-1, -1, -1}, {-1, -1, -1}, {-1, -1, -1}};

/* Start, stop, clear and snapshots. Never taken on an allocation path. */
static pm_mutex control = PM_MUTEX_INITIALIZER;
static size_t session_counter;           /* under control */
static pm_allocator installed[PM_DOMAIN_COUNT]; /* our hooks as last installed; under control */
static bool hooks_installed;             /* under control */

/* A session number never used before, for the mode sample_mean says. */
static size_t new_session(void) PM_REQUIRES(control) {
    bool sampling = pm_atomic_load_size_relaxed(&sample_mean) != 0;
    bool in_block = pm_atomic_load_int_relaxed(&in_block_mode) != 0;
    return ++session_counter << SESSION_FLAG_BITS | (sampling ? SAMPLING_SESSION : 0) |
           (in_block ? IN_BLOCK_SESSION : 0);
}

enum { HOOK_POOL = 48, PROVIDER_POOL = 64 };
static hook_ctx hook_pool[HOOK_POOL];
static size_t hook_pool_used; /* under control */
static provider_record provider_pool[PROVIDER_POOL];
static size_t provider_pool_used; /* fetch-and-add */
/* Every provider record handed out, pushed by CAS: a provider installed again reuses its
 * record, as domain.c interns allocators (records are never freed, so without this each
 * re-install kept 24 bytes, and past the pool a page, for ever). */
static const provider_record *provider_records;

/* ---- per-thread state ------------------------------------------------------------------ */

/* A traceback this thread interned, with a copy of its frames: comparing against the copy
 * never touches the traceback, which a concurrent stop or clear may free. The pointer is
 * only used while `session` is the one the hook read on entry, and the insert that stores
 * it checks that session again under the trace shard's lock (stop and clear end the
 * session before freeing tracebacks; session numbers are never reused). One cache line. */
typedef struct tb_cache_entry {
    const pm_trace_tb *tb;
    size_t session; /* 0: empty */
    uint32_t domain;
    uint32_t nframes; /* tb_cache_key: the count, and whether the frames are native */
    uint64_t unused;  /* an entry is 64 bytes, a set two cache lines */
    pm_trace_frame frames[CACHED_FRAMES];
} tb_cache_entry;
static_assert(sizeof(tb_cache_entry) == 64, "a cache entry is one cache line");

/* The depth and the sampling countdown are in pm_trace_gate (alloc/internal/pymalloc.h), which
 * pymalloc's sampling route reads too. */
__thread struct pm_trace_gate pm_trace_gate __attribute__((tls_model(PM_TLS_MODEL)));

typedef struct trace_thread {
    size_t countdown_mean;      /* the mean it was drawn with; 0: not drawn */
    uint64_t rng;               /* xorshift64* state; 0: not seeded */
    size_t peak_growth;         /* traced bytes risen since this thread's last peak check */
    tb_cache_entry *tb_cache; /* TB_CACHE_SETS * TB_CACHE_WAYS entries; NULL until needed */
    bool exit_registered;     /* thread_exit_key set: the buffers are released at exit */
    pm_trace_frame *frames; /* capture buffer: frames_cap frames, then as many pcs */
    size_t frames_cap;
    /* The trace a free or realloc in progress took out, for the debug report. */
    uintptr_t removed_ptr;
    const pm_trace_tb *removed_tb;
    int calibrating; /* inside pm_trace_start's probes: hooks measure, not trace */
} trace_thread;

static __thread trace_thread tls __attribute__((tls_model("initial-exec")));
static pthread_key_t thread_exit_key;
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* ---- tracer memory --------------------------------------------------------------------- */

/* What a mapping of `size` bytes really takes: whole pages. */
static size_t mapped_bytes(size_t size) {
    return (size + 4095) & ~(size_t)4095;
}

void *pm_trace_mem_alloc(size_t size) {
    if (pm_atomic_load_int_relaxed(&fail_memory)) return NULL;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    pm_atomic_faa_size(&tracer_memory, mapped_bytes(size));
    return p;
}

void pm_trace_mem_free(void *p, size_t size) {
    if (p == NULL) return;
    munmap(p, size);
    pm_atomic_faa_size(&tracer_memory, (size_t)0 - mapped_bytes(size));
}

void pm_trace_test_fail_memory(int fail) {
    pm_atomic_store_int_relaxed(&fail_memory, fail);
}

static size_t records_in_blocks(void);

size_t pm_trace_get_memory(void) {
    return pm_atomic_load_size_relaxed(&tracer_memory) +
           records_in_blocks() * PM_TRACE_RECORD_BYTES;
}

size_t pm_trace_lost_traces(void) {
    return pm_atomic_load_size_relaxed(&lost_traces);
}

static void release_capture_buffer(void) {
    pm_trace_mem_free(tls.frames, tls.frames_cap * (sizeof(pm_trace_frame) + sizeof(void *)));
    tls.frames = NULL;
    tls.frames_cap = 0;
}

/* The thread-exit destructor of thread_exit_key. */
static void release_thread_buffers(void *unused) {
    (void)unused;
    release_capture_buffer();
    pm_trace_mem_free(tls.tb_cache, TB_CACHE_SETS * TB_CACHE_WAYS * sizeof(tb_cache_entry));
    tls.tb_cache = NULL;
    tls.exit_registered = false;
}

/* Makes thread exit release this thread's buffers. */
static void register_thread_exit(void) {
    if (tls.exit_registered) return;
    (void)pthread_setspecific(thread_exit_key, &tls);
    tls.exit_registered = true;
}

/* ---- hashing --------------------------------------------------------------------------- */

static inline uint64_t ptr_hash(uintptr_t ptr) {
    return (uint64_t)(ptr >> 4) * 0x9E3779B97F4A7C15ull;
}

static inline size_t shard_index(uint64_t h) {
    return (size_t)(h >> 58);
}

/* The bits just below the shard's, the best a multiplicative hash has: scaled to the
 * capacity (mask + 1, a power of 2 up to 2^32), they are its top log2(capacity) bits.
 * (Simulated on pymalloc-like addresses at the benchmark's load, probe runs were 8%
 * shorter than with bits 20 and up, used before.) */
static inline size_t home_slot(uint64_t h, size_t mask) {
    return (size_t)(((h >> 26) & 0xFFFFFFFFu) * (uint64_t)(mask + 1) >> 32);
}

/* shard_index(h) * FILTER_PER_SHARD + the next 8 bits of h: so a shard owns its buckets. */
_Static_assert(TRACE_SHARDS == 64 && FILTER_PER_SHARD == 256,
               "filter_bucket takes h's top 14 bits");
static inline size_t filter_bucket(uint64_t h) {
    return (size_t)(h >> 50);
}

/* False: ptr is certainly not traced. True: it may be. No lock. A session of full tracing
 * keeps no filter (nearly every free finds a trace there), so every pointer may be. */
static inline bool maybe_traced(size_t session, uintptr_t ptr) {
    if (!(session & SAMPLING_SESSION)) return true;
    size_t bucket = filter_bucket(ptr_hash(ptr));
    return (pm_atomic_load_u64_relaxed(&filter_bits[bucket / 64]) >> (bucket % 64)) & 1;
}

/* One more (+1) or one fewer (-1) trace in h's bucket. Under h's shard lock. */
static void filter_update(uint64_t h, int delta) {
    size_t bucket = filter_bucket(h);
    int count = filter_counts[bucket] += delta;
    if (count == 0 || (count == 1 && delta > 0)) {
        uint64_t *word = &filter_bits[bucket / 64];
        uint64_t bit = (uint64_t)1 << (bucket % 64);
        uint64_t bits = pm_atomic_load_u64_relaxed(word);
        pm_atomic_store_u64_relaxed(word, count ? bits | bit : bits & ~bit);
    }
}

/* ---- accounting ------------------------------------------------------------------------ */

/* Bytes a trace stands for: its size, or its sampling weight s / (1 - exp(-s/N)). */
static size_t sampled_weight(size_t size_field);

static inline size_t accounted(size_t size_field) {
    if (__builtin_expect(!(size_field & SAMPLED_FLAG), 1)) return size_field;
    return sampled_weight(size_field);
}

__attribute__((noinline)) static size_t sampled_weight(size_t size_field) {
    size_t size = size_field & ~SAMPLED_FLAG;
    size_t mean = pm_atomic_load_size_relaxed(&sample_mean);
    if (mean == 0 || size == 0) return size;
    double p = -expm1(-(double)size / (double)mean);
    return (size_t)((double)size / p + 0.5);
}

static size_t current_bytes(void) {
    size_t sum = pm_atomic_load_size_relaxed(&in_block_current);
    for (size_t i = 0; i < TRACE_SHARDS; i++) sum += pm_atomic_load_size_relaxed(&trace_shards[i].current);
    return sum;
}

static void raise_peak(size_t value) {
    size_t old = pm_atomic_load_size_relaxed(&peak_bytes);
    while (value > old && !pm_atomic_cas_size(&peak_bytes, old, value)) {
        old = pm_atomic_load_size_relaxed(&peak_bytes);
    }
}

__attribute__((noinline)) static void check_peak(void) {
    tls.peak_growth = 0;
    raise_peak(current_bytes());
}

static inline void note_growth(size_t bytes) {
    tls.peak_growth += bytes;
    if (__builtin_expect(tls.peak_growth >= PEAK_CHECK_BYTES, 0)) check_peak();
}

static inline void note_shrink(size_t bytes) {
    tls.peak_growth = tls.peak_growth > bytes ? tls.peak_growth - bytes : 0;
}

/* ---- the trace shards ------------------------------------------------------------------ */

/* Starts loading the line of h's home slot before the shard lock is taken, so that the miss
 * overlaps other work (capturing the traceback; the wrapped free's own miss). Reads the
 * table without the lock: a table being replaced only makes the hint wrong, and a prefetch
 * never faults. A 24-byte slot may straddle two lines: both are asked for. */
static inline void prefetch_home(uint64_t h) {
    const trace_shard *s = &trace_shards[shard_index(h)];
    const trace_slot *slots = pm_atomic_load_ptr_relaxed(&s->slots);
    size_t mask = pm_atomic_load_size_relaxed(&s->mask);
    if (slots == NULL) return;
    /* Integer arithmetic: with a stale table the index may lie past its end. */
    uintptr_t home = (uintptr_t)slots + home_slot(h, mask) * sizeof(trace_slot);
    __builtin_prefetch((const void *)home, 1);
    __builtin_prefetch((const void *)(home + sizeof(trace_slot) - 1), 1);
}

/* The slot of (ptr, domain) (*found), or the empty slot that ends its probe run. The
 * table must exist. An empty slot is recognised before its traceback is read: it has none,
 * or a stale one (removal clears only ptr), and a probe for address 0, which is never
 * traced, would otherwise match it. */
static inline size_t shard_probe(const trace_shard *s, uintptr_t ptr, uint64_t h,
                                 unsigned domain, bool *found) PM_REQUIRES(s->lock) {
    const trace_slot *slots = s->slots;
    size_t mask = s->mask;
    for (size_t i = home_slot(h, mask);; i = (i + 1) & mask) {
        uintptr_t here = slots[i].ptr;
        if (here == 0) {
            *found = false;
            return i;
        }
        if (here == ptr && slots[i].tb->domain == domain) {
            *found = true;
            return i;
        }
    }
}

static inline ptrdiff_t shard_find(const trace_shard *s, uintptr_t ptr, uint64_t h,
                                   unsigned domain) PM_REQUIRES(s->lock) {
    if (s->slots == NULL) return -1;
    bool found;
    size_t i = shard_probe(s, ptr, h, domain, &found);
    return found ? (ptrdiff_t)i : -1;
}

static void shard_place(trace_slot *slots, size_t mask, trace_slot entry) {
    size_t i = home_slot(ptr_hash(entry.ptr), mask);
    while (slots[i].ptr != 0) i = (i + 1) & mask;
    slots[i] = entry;
}

/* Replaces the shard's table (both NULL/0: none). */
static void shard_set_table(trace_shard *s, trace_slot *slots, size_t mask) PM_REQUIRES(s->lock) {
    pm_atomic_store_ptr_relaxed(&s->slots, slots);
    pm_atomic_store_size_relaxed(&s->mask, mask);
}

/* Makes room for one more slot. Returns -1 (table unchanged) when no memory is left. */
static int shard_reserve(trace_shard *s) PM_REQUIRES(s->lock) {
    if (s->used < s->grow_at) return 0;
    size_t capacity = s->slots ? s->mask + 1 : 0;
    size_t new_capacity = capacity ? capacity * 2 : TRACE_TABLE_MIN;
    trace_slot *slots = pm_trace_mem_alloc(new_capacity * sizeof(trace_slot));
    if (slots == NULL) return -1;
    for (size_t i = 0; i < capacity; i++) {
        if (s->slots[i].ptr != 0) shard_place(slots, new_capacity - 1, s->slots[i]);
    }
    pm_trace_mem_free(s->slots, capacity * sizeof(trace_slot));
    shard_set_table(s, slots, new_capacity - 1);
    s->grow_at = new_capacity / 4 * 3;
    return 0;
}

/* Removes slot i, whose pointer hashes to h, shifting later members of its probe run back
 * (no tombstones). */
static inline void shard_remove_at(trace_shard *s, size_t i, uint64_t h) PM_REQUIRES(s->lock) {
    trace_slot *slots = s->slots;
    size_t mask = s->mask;
    size_t gone_size = slots[i].size;
    for (size_t j = (i + 1) & mask; slots[j].ptr != 0; j = (j + 1) & mask) {
        size_t home = home_slot(ptr_hash(slots[j].ptr), mask);
        /* Slot j may move back to i if its home is not in (i, j] (cyclically): j is at
         * least as far from its home as from i. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            slots[i] = slots[j];
            i = j;
        }
    }
    slots[i].ptr = 0;
    s->used--;
    if (s->filtered) filter_update(h, -1);
    pm_atomic_store_size_relaxed(&s->current, s->current - accounted(gone_size));
}

/* Stores (ptr -> size, tb) if the session is still `session`; h is ptr_hash(ptr). Returns
 * 0 (stored, or not tracing that session any more) or -1 when no memory is left (nothing
 * changed). */
__attribute__((always_inline)) static inline int trace_insert(uintptr_t ptr, uint64_t h,
                                                              size_t size_field,
                                                              const pm_trace_tb *tb,
                                                              size_t session) {
    trace_shard *s = &trace_shards[shard_index(h)];
    size_t bytes = accounted(size_field);
    pm_spinlock_lock(&s->lock);
    if (pm_atomic_load_size_relaxed(&active_session) != session) {
        pm_spinlock_unlock(&s->lock);
        return 0;
    }
    bool found = false;
    size_t i = s->slots != NULL ? shard_probe(s, ptr, h, tb->domain, &found) : 0;
    if (found) {
        trace_slot *slot = &s->slots[i];
        size_t current = s->current - accounted(slot->size) + bytes;
        slot->size = size_field;
        slot->tb = tb;
        pm_atomic_store_size_relaxed(&s->current, current);
    } else {
        const trace_slot *before = s->slots;
        if (shard_reserve(s) != 0) {
            pm_spinlock_unlock(&s->lock);
            return -1;
        }
        if (s->slots != before) i = shard_probe(s, ptr, h, tb->domain, &found); /* rehashed */
        s->slots[i] = (trace_slot){ptr, size_field, tb};
        s->used++;
        /* The shard is empty between sessions, so all its traces share one mode. */
        s->filtered = (session & SAMPLING_SESSION) != 0;
        if (s->filtered) filter_update(h, +1);
        pm_atomic_store_size_relaxed(&s->current, s->current + bytes);
    }
    pm_spinlock_unlock(&s->lock);
    note_growth(bytes);
    return 0;
}

/* Takes the trace of (domain, ptr) out; h is ptr_hash(ptr). Copies it to *out if asked.
 * Returns whether there was one. */
__attribute__((always_inline)) static inline bool trace_remove(unsigned domain, uintptr_t ptr,
                                                               uint64_t h, trace_slot *out) {
    trace_shard *s = &trace_shards[shard_index(h)];
    pm_spinlock_lock(&s->lock);
    ptrdiff_t found = shard_find(s, ptr, h, domain);
    trace_slot slot = {0, 0, NULL};
    if (found >= 0) {
        slot = s->slots[found];
        shard_remove_at(s, (size_t)found, h);
    }
    pm_spinlock_unlock(&s->lock);
    if (found < 0) return false;
    note_shrink(accounted(slot.size));
    if (out != NULL) *out = slot;
    return true;
}

/* ---- tracebacks ------------------------------------------------------------------------ */

/* Every bit of the result depends on every input bit: the low bits pick a traceback shard
 * and slot. (FNV-1a, used before, left the middle bits of frames that differ only in their
 * line number nearly alike, which made a cache indexed by them miss half the time on 256
 * sites.) */
static uint32_t frames_hash(unsigned domain, const pm_trace_frame *frames, size_t n) {
    uint64_t h = domain ^ ((uint64_t)n << 32);
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uintptr_t)frames[i].filename) * 0x9E3779B97F4A7C15ull;
        h = (h ^ frames[i].lineno) * 0x9E3779B97F4A7C15ull;
    }
    h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ull;
    return (uint32_t)(h >> 32);
}

static bool frames_equal(const pm_trace_frame *a, const pm_trace_frame *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (a[i].filename != b[i].filename || a[i].lineno != b[i].lineno) return false;
    }
    return true;
}

static bool tb_equal(const pm_trace_tb *tb, uint32_t hash, unsigned domain,
                     const pm_trace_frame *frames, size_t n) {
    return tb->hash == hash && tb->domain == domain && tb->nframes == n &&
           frames_equal(tb->frames, frames, n);
}

static void *tb_bump(tb_shard *s, size_t size) PM_REQUIRES(s->lock) {
    size = (size + 15) & ~(size_t)15;
    if ((size_t)(s->bump_end - s->bump) < size) {
        size_t chunk_size = size + sizeof(tb_chunk) + 16 > TB_CHUNK
                                ? (size + sizeof(tb_chunk) + 16 + 4095) & ~(size_t)4095
                                : TB_CHUNK;
        tb_chunk *chunk = pm_trace_mem_alloc(chunk_size);
        if (chunk == NULL) return NULL;
        chunk->next = s->chunks;
        chunk->size = chunk_size;
        s->chunks = chunk;
        s->bump = (char *)chunk + 16;
        s->bump_end = (char *)chunk + chunk_size;
    }
    void *p = s->bump;
    s->bump += size;
    return p;
}

static int tb_reserve(tb_shard *s) PM_REQUIRES(s->lock) {
    size_t capacity = s->slots ? s->mask + 1 : 0;
    if (s->slots != NULL && (s->used + 1) * 4 <= capacity * 3) return 0;
    size_t new_capacity = capacity ? capacity * 2 : TB_TABLE_MIN;
    const pm_trace_tb **slots = pm_trace_mem_alloc(new_capacity * sizeof *slots);
    if (slots == NULL) return -1;
    for (size_t i = 0; i < capacity; i++) {
        const pm_trace_tb *tb = s->slots[i];
        if (tb == NULL) continue;
        size_t j = tb->hash & (new_capacity - 1);
        while (slots[j] != NULL) j = (j + 1) & (new_capacity - 1);
        slots[j] = tb;
    }
    pm_trace_mem_free(s->slots, capacity * sizeof *slots);
    s->slots = slots;
    s->mask = new_capacity - 1;
    return 0;
}

/* The first entry of the set of (domain, frames) in a thread's traceback cache. Not
 * frames_hash: the cache needs only a set, which one multiplication a frame spreads well
 * (the top bits of a product depend on every bit of the multiplicand, so sites that differ
 * only in their line land in different sets), and frames_hash is then computed only on a
 * miss. With the NULL-filename fix-up also left to a miss (tb_intern_slow) that took 29
 * instructions off a traced step (trace_cost, full tracing, callgrind: +219 -> +190). */
static inline size_t tb_cache_set_index(unsigned domain, uint32_t key, const pm_trace_frame *frames,
                                        size_t n) {
    uint64_t h = domain + ((uint64_t)key << 32);
    for (size_t i = 0; i < n; i++) {
        h = (h + (uintptr_t)frames[i].filename + frames[i].lineno * 0x9E3779B97F4A7C15ull) *
            0xBF58476D1CE4E5B9ull;
    }
    return (size_t)(h >> (64 - TB_CACHE_SET_BITS)) * TB_CACHE_WAYS;
}

/* The cache's key for n frames: native frames (filename NULL, line a pc) and a provider's
 * frames as it gave them (filename NULL too at times) must not meet in one entry. */
#define NATIVE_CACHE_KEY ((uint32_t)1 << 16)
static inline uint32_t tb_cache_key(size_t n, bool provided) {
    return (uint32_t)n | (provided ? 0 : NATIVE_CACHE_KEY);
}

/* The set of this thread's traceback cache where (domain, frames) lives; NULL when the
 * traceback is too long to cache or the cache has no memory (tracing goes on without it). */
static tb_cache_entry *tb_cache_set(unsigned domain, uint32_t key, const pm_trace_frame *frames,
                                    size_t n) {
    if (n > CACHED_FRAMES) return NULL;
    if (__builtin_expect(tls.tb_cache == NULL, 0)) {
        tls.tb_cache = pm_trace_mem_alloc(TB_CACHE_SETS * TB_CACHE_WAYS * sizeof(tb_cache_entry));
        if (tls.tb_cache == NULL) return NULL;
        register_thread_exit();
    }
    return &tls.tb_cache[tb_cache_set_index(domain, key, frames, n)];
}

static void tb_cache_fill(tb_cache_entry *set, const pm_trace_tb *tb, size_t session,
                          unsigned domain, uint32_t key, const pm_trace_frame *frames, size_t n) {
    set[1] = set[0];
    set[0] = (tb_cache_entry){tb, session, domain, key, 0, {{NULL, 0}}};
    memcpy(set[0].frames, frames, n * sizeof *frames);
}

/* tb_intern's slow half: the thread's cache did not have it. A provider's frames are keyed
 * in the cache as it gave them, and stored with "<unknown>" for a NULL filename: the fix-up
 * is then paid on a miss only. */
__attribute__((noinline)) static const pm_trace_tb *tb_intern_slow(unsigned domain,
                                                                   pm_trace_frame *frames,
                                                                   size_t n, size_t session,
                                                                   bool provided) {
    uint32_t key = tb_cache_key(n, provided);
    tb_cache_entry *set = tb_cache_set(domain, key, frames, n);
    pm_trace_frame as_given[CACHED_FRAMES];
    if (set != NULL) memcpy(as_given, frames, n * sizeof *frames);
    if (provided) {
        for (size_t i = 0; i < n; i++) {
            if (frames[i].filename == NULL) frames[i].filename = "<unknown>";
        }
    }
    uint32_t hash = frames_hash(domain, frames, n);
    tb_shard *s = &tb_shards[hash % TB_SHARDS];
    const pm_trace_tb *result = NULL;
    pm_spinlock_lock(&s->lock);
    if (s->slots != NULL) {
        for (size_t i = hash & s->mask; s->slots[i] != NULL; i = (i + 1) & s->mask) {
            if (tb_equal(s->slots[i], hash, domain, frames, n)) {
                result = s->slots[i];
                break;
            }
        }
    }
    if (result == NULL && tb_reserve(s) == 0) {
        pm_trace_tb *tb = tb_bump(s, sizeof(pm_trace_tb) + n * sizeof(pm_trace_frame));
        if (tb != NULL) {
            tb->hash = hash;
            tb->domain = domain;
            tb->nframes = (uint32_t)n;
            tb->unused = 0;
            memcpy(tb->frames, frames, n * sizeof *frames);
            size_t i = hash & s->mask;
            while (s->slots[i] != NULL) i = (i + 1) & s->mask;
            s->slots[i] = tb;
            s->used++;
            result = tb;
        }
    }
    pm_spinlock_unlock(&s->lock);
    if (result != NULL && set != NULL) {
        tb_cache_fill(set, result, session, domain, key, as_given, n);
    }
    return result;
}

/* The interned traceback equal to (domain, frames), or NULL when no memory is left.
 * `provided`: the frames are a provider's (see tb_intern_slow); a constant at each call. */
__attribute__((always_inline)) static inline const pm_trace_tb *tb_intern(
    unsigned domain, pm_trace_frame *frames, size_t n, size_t session, bool provided) {
    uint32_t key = tb_cache_key(n, provided);
    if (n <= CACHED_FRAMES && tls.tb_cache != NULL) {
        const tb_cache_entry *set = &tls.tb_cache[tb_cache_set_index(domain, key, frames, n)];
        for (size_t way = 0; way < TB_CACHE_WAYS; way++) {
            const tb_cache_entry *e = &set[way];
            if (e->session == session && e->domain == domain && e->nframes == key &&
                frames_equal(e->frames, frames, n)) {
                return e->tb;
            }
        }
    }
    return tb_intern_slow(domain, frames, n, session, provided);
}

/* Makes the capture buffer hold `frames` frames and as many pcs. */
static bool ensure_capture_buffer(size_t frames) {
    if (tls.frames_cap >= frames) return true;
    size_t cap = frames < 64 ? 64 : frames;
    void *buffer = pm_trace_mem_alloc(cap * (sizeof(pm_trace_frame) + sizeof(void *)));
    if (buffer == NULL) return false;
    register_thread_exit();
    release_capture_buffer();
    tls.frames = buffer;
    tls.frames_cap = cap;
    return true;
}

static void **capture_pcs(void) {
    return (void **)(void *)(tls.frames + tls.frames_cap);
}

/* The provider's frames, interned. A short traceback is captured on the stack. Always
 * inlined: in a traced malloc it saves a frame's worth of register saves and moves. */
__attribute__((always_inline)) static inline const pm_trace_tb *capture_provided(
    const provider_record *provider,
                                                  unsigned domain, size_t nframes,
                                                  size_t session) {
    pm_trace_frame small[CACHED_FRAMES];
    pm_trace_frame *frames = small;
    if (nframes > CACHED_FRAMES) {
        if (!ensure_capture_buffer(nframes)) return NULL;
        frames = tls.frames;
    }
    size_t n = provider->fn(provider->ctx, frames, nframes);
    if (n > nframes) n = nframes;
    if (n == 0) {
        frames[0] = (pm_trace_frame){"<unknown>", 0};
        n = 1;
    }
    return tb_intern(domain, frames, n, session, true);
}

/* The native stack, skipping `skip` frames from this function's own, interned. Its
 * callers are fixed (see capture), so the stack above it has the depth calibrate()
 * measured. */
__attribute__((noinline)) static const pm_trace_tb *capture_native(unsigned domain, int skip,
                                                                   size_t nframes,
                                                                   size_t session) {
    if (!ensure_capture_buffer(nframes + MAX_SKIP)) return NULL;
    void **pcs = capture_pcs();
    int depth = backtrace(pcs, (int)(nframes + (size_t)skip));
    size_t n = depth > skip ? (size_t)(depth - skip) : 0;
    for (size_t i = 0; i < n; i++) {
        tls.frames[i] = (pm_trace_frame){NULL, (size_t)(uintptr_t)pcs[(size_t)skip + i]};
    }
    if (n == 0) {
        tls.frames[0] = (pm_trace_frame){"<unknown>", 0};
        n = 1;
    }
    return tb_intern(domain, tls.frames, n, session, false);
}

/* capture's `op` for pm_trace_track: capture's frame and the function's own are skipped. */
#define OP_TRACK (-1)

/* The caller's traceback for a call of `op` in `domain`, or NULL (no memory, or tracing
 * stopped meanwhile). Always inlined: capture_native is then called from record's caller
 * or pm_trace_track itself, a fixed depth. The frames to skip are read only for native
 * tracebacks (an atomic load the compiler would not move past the provider's). */
__attribute__((always_inline)) static inline const pm_trace_tb *capture(unsigned domain, int op,
                                                                       size_t session) {
    size_t nframes = (size_t)pm_atomic_load_int_relaxed(&max_frames);
    if (nframes == 0) return NULL; /* stopped meanwhile; the insert would be refused anyway */
    const provider_record *provider = pm_atomic_load_ptr_acquire(&frame_provider);
    if (provider != NULL) return capture_provided(provider, domain, nframes, session);
    int skip = op == OP_TRACK ? 2 : pm_atomic_load_int_relaxed(&native_skip[domain][op]);
    return capture_native(domain, skip < 0 ? 0 : skip, nframes, session);
}

/* The probe's own stack and what calibrate_here found; only start() calibrates, holding
 * the control mutex, so plain statics do. */
static void *calibration_reference[CALIBRATION_DEPTH];
static int calibration_reference_depth;
static int calibrated_skip;

/* Called instead of capture_native() while calibrating, from the same place in record(), so
 * its stack has capture_native()'s depth: the frames it shares with the probe's own stack, counted
 * from the outermost, are the probe's callers; the frame just inside them is the probe
 * (the caller a real trace wants), and everything before it is ours to skip. Comparing
 * from the outer end makes frames that a runtime adds at the top (a sanitizer's
 * backtrace interceptor) count as ours too. */
__attribute__((noinline)) static void calibrate_here(void) {
    void *pcs[CALIBRATION_DEPTH];
    int depth = backtrace(pcs, CALIBRATION_DEPTH);
    int reference_depth = calibration_reference_depth;
    if (depth == CALIBRATION_DEPTH || reference_depth == CALIBRATION_DEPTH) return; /* truncated */
    int shared = 0;
    while (shared < depth && shared < reference_depth &&
           pcs[depth - 1 - shared] == calibration_reference[reference_depth - 1 - shared]) {
        shared++;
    }
    int probe = depth - 1 - shared;
    if (shared > 0 && probe >= 1 && probe <= MAX_SKIP) calibrated_skip = probe;
}

/* The trace of a new block. Returns 0 (stored, or tracing stopped meanwhile) or -1. Always
 * inlined into traced_alloc and traced_realloc, both called straight from a hook, so that
 * capture_native and calibrate_here run at the same depth for every operation. */
__attribute__((always_inline)) static inline int record(unsigned domain, int op, uintptr_t ptr,
                                                        size_t size_field, size_t session) {
    uint64_t h = ptr_hash(ptr);
    prefetch_home(h); /* the table's miss overlaps the capture */
    if (tls.calibrating) {
        calibrate_here();
        return 0;
    }
    const pm_trace_tb *tb = capture(domain, op, session);
    if (tb == NULL) return pm_atomic_load_size_relaxed(&active_session) == session ? -1 : 0;
    return trace_insert(ptr, h, size_field, tb, session);
}

/* ---- sampling -------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t next_random(void) {
    uint64_t x = tls.rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    tls.rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static void draw_countdown(size_t mean) {
    if (tls.rng == 0) {
        static size_t threads_seeded;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        uint64_t seed = (uint64_t)now.tv_nsec ^ ((uint64_t)now.tv_sec << 30) ^ (uintptr_t)&tls;
        tls.rng = splitmix64(seed ^ splitmix64(pm_atomic_faa_size(&threads_seeded, 1))) | 1;
    }
    /* u uniform in (0, 1]: -log(u) is exponential with mean 1. */
    double u = (double)((next_random() >> 11) + 1) * 0x1.0p-53;
    double bytes = -log(u) * (double)mean;
    pm_trace_gate.countdown = bytes >= 0x1.0p62 ? INT64_MAX / 2 : (int64_t)bytes + 1;
    tls.countdown_mean = mean;
}

void pm_trace_test_seed_sampler(uint64_t seed) {
    tls.rng = splitmix64(seed) | 1;
    pm_trace_gate.countdown = 0;
    tls.countdown_mean = 0;
}

/* Sampling's slow half: the countdown ran out (or was never drawn). Returns whether a
 * block of `size` bytes is sampled. */
__attribute__((noinline)) static bool sample_slow(size_t size, size_t mean) {
    if (tls.calibrating) return true;
    if (tls.countdown_mean != mean) {
        /* First use in this thread, or a new rate: draw, then charge this block. */
        draw_countdown(mean);
        pm_trace_gate.countdown -= (int64_t)size;
        if (pm_trace_gate.countdown > 0) return false;
    }
    draw_countdown(mean);
    return true;
}

/* Charges `size` bytes to the countdown of a sampling session at `mean`; true when
 * sample_slow must decide: the countdown ran out, or it was not drawn at this rate (parked
 * by pymalloc while no session sampled, or left from a session at another rate). */
static inline bool countdown_runs_out(size_t size, size_t mean) {
    pm_trace_gate.countdown -= (int64_t)(size > INT64_MAX ? INT64_MAX : size);
    return __builtin_expect(pm_trace_gate.countdown <= 0, 0) ||
           __builtin_expect(tls.countdown_mean != mean, 0);
}

/* Whether this call is skipped by sampling. */
static inline bool sampled_out(size_t size) {
    size_t mean = pm_atomic_load_size_relaxed(&sample_mean);
    if (mean == 0) return false;
    return !countdown_runs_out(size, mean) || !sample_slow(size, mean);
}

bool pm_trace_pymalloc_sample_point(size_t size, int route) {
    size_t mean = pm_atomic_load_size_relaxed(&sample_mean);
    if (mean == 0) {
        pm_trace_gate.countdown = PM_COUNTDOWN_PARKED;
        tls.countdown_mean = 0;
        return false;
    }
    bool here = route != PM_ROUTE_PYMALLOC && pm_trace_gate.depth == 0 &&
                pm_trace_samples_over_pymalloc(pm_domain_current((pm_domain)route));
    if (!here) {
        /* Not a call this session samples: a point in it is lost, which biases nothing
         * (points in disjoint byte ranges are independent); a countdown of another rate is
         * redrawn so that the next sampled call finds this rate. */
        if (pm_trace_gate.countdown <= 0 || tls.countdown_mean != mean) draw_countdown(mean);
        return false;
    }
    if (tls.calibrating) return true;
    if (tls.countdown_mean != mean) {
        /* Parked, or drawn at another rate: draw at this one, then charge this call. */
        draw_countdown(mean);
        pm_trace_gate.countdown -= (int64_t)size;
    }
    /* pm_trace_sampled_malloc's sample_slow draws the next countdown. */
    return pm_trace_gate.countdown <= 0;
}

/* ---- records in blocks ------------------------------------------------------------------ */

/* The trace of a traced heap's block, in the block's first bytes; the caller's pointer is
 * just after it. Whether it counts is the block's mark (below): a record whose session
 * has ended stays where it is, and its traceback, freed with the session's tables, is
 * never read again. */
typedef struct in_block_record {
    const pm_trace_tb *tb;
    size_t size; /* asked for */
} in_block_record;

_Static_assert(sizeof(in_block_record) == PM_TRACE_RECORD_BYTES,
               "the record pymalloc leaves room for");

/* Marks. Free must know whether a record counts, and its size, but reading the record is
 * a miss when the block has gone cold since its malloc (the benchmark's free took 3.2-3.4x
 * with that read, 2.7-2.8x without it). So a traced heap's pool has a byte a block apart
 * from the blocks, pool->marks, where its blocks' marks sit together and usually in cache:
 *
 *   0               not counted: untraced, freed, or left from an ended session
 *   1..254          counted; the size is the block's usable size less (mark - 1)
 *   MARK_IN_RECORD  counted; the size is the record's (a tracked size the slack cannot say)
 *
 * A malloc's slack is at most 32 bytes (0 bytes take a 16-byte slot; the class whose
 * records sit beside serves 481 to 512 bytes), so its mark always says the size. Marks are
 * nonzero only for live blocks counted in the active session: free and untrack zero them,
 * and reset_tables zeroes every pool's when a session ends or is cleared. A pool gets
 * marks for its class's blocks with its first traced block (a power of two from 64 bytes
 * up, that holds them; in the class whose records sit beside, the records follow the marks,
 * see record_beside), and gives them back, all zero, when it goes back to its arena
 * (pm_trace_pool_leaves_traced_heap); they are kept for the next pool on free lists, one a
 * size, and never go back to the OS. */
#define MARK_IN_RECORD 0xFF
#define MARK_BUCKETS 7 /* 64 << 0 .. 64 << 6 bytes */
#define MARK_CHUNK_BYTES ((size_t)64 << 10)

/* Records beside. The largest class has no room for a record in front of more than
 * PM_TRACED_MAX_IN_BLOCK bytes, so its traced pools keep their records in an array after
 * their marks, a record a block, and hand out the block itself. Without them, requests of
 * 497-512 bytes would go to the raw domain and the table (0.2-0.3x of the untraced step on
 * trace_cost). The array is written on malloc and read only for a snapshot, a tracked size
 * (MARK_IN_RECORD) or a lookup: free reads the mark, as elsewhere. */
#define BESIDE_CAPACITY (PM_POOL_SIZE / PM_SMALL_REQUEST_THRESHOLD)
#define BESIDE_MARKS_BYTES ((BESIDE_CAPACITY + 15) & ~(size_t)15)
#define BESIDE_BYTES (BESIDE_MARKS_BYTES + BESIDE_CAPACITY * PM_TRACE_RECORD_BYTES)
_Static_assert(PM_POOL_SIZE / (2 * PM_ALIGNMENT) <= (size_t)64 << (MARK_BUCKETS - 1) &&
                   BESIDE_BYTES <= (size_t)64 << (MARK_BUCKETS - 1),
               "the largest bucket holds the marks of the smallest traced class, and the "
               "marks and records of the class whose records sit beside");

/* The index of a block in its pool: offset / block size, as a multiplication by
 * 2^32 / (size / 16) rounded up, exact for every offset in a pool (offset / 16 < 2^12,
 * and the rounding error times that stays below 2^32). Pools are aligned to their size,
 * so the offset is the address's low bits. */
static uint32_t block_index_multiplier[PM_NUM_CLASSES];

static void init_block_index_multipliers(void) {
    for (unsigned c = 0; c < PM_NUM_CLASSES; c++) {
        uint64_t units = c + 1;
        block_index_multiplier[c] = (uint32_t)(((uint64_t)1 << 32) / units + 1);
    }
}

static inline size_t block_index(const pm_pool *pool, const void *block) {
    uint64_t units = ((uintptr_t)block & PM_POOL_MASK) >> PM_ALIGNMENT_SHIFT;
    return (size_t)((units * block_index_multiplier[pool->size_class]) >> 32);
}

/* Chunks of tracer memory cut into marks; the GIL is held. */
static uint8_t *marks_next, *marks_end;
static uint8_t *spare_marks[MARK_BUCKETS]; /* linked through their first word */
#define MARK_LINK_BYTES 8
_Static_assert(sizeof(uint8_t *) == MARK_LINK_BYTES, "a spare array's link");

static void push_spare_marks(unsigned bucket, uint8_t *marks) {
    memcpy(marks, &spare_marks[bucket], MARK_LINK_BYTES);
    spare_marks[bucket] = marks;
}

/* A spare array of the bucket, all zero, or NULL. */
static uint8_t *pop_spare_marks(unsigned bucket) {
    uint8_t *marks = spare_marks[bucket];
    if (marks != NULL) {
        memcpy(&spare_marks[bucket], marks, MARK_LINK_BYTES);
        memset(marks, 0, MARK_LINK_BYTES);
    }
    return marks;
}

static unsigned marks_bucket(unsigned size_class) {
    size_t bytes = size_class == PM_TRACED_CLASS_BESIDE ? BESIDE_BYTES
                                                        : pm_class_capacity(size_class);
    unsigned bucket = 0;
    while (((size_t)64 << bucket) < bytes) bucket++;
    return bucket;
}

/* The record of the block at `index` of `pool`, a pool of the class whose records sit
 * beside. */
static inline in_block_record *record_beside(const pm_pool *pool, size_t index) {
    return (in_block_record *)(void *)(pool->marks + BESIDE_MARKS_BYTES) + index;
}

/* The record of the block at `index` of `pool`, a traced heap's pool with marks, whose
 * caller's pointer is p. */
static inline in_block_record *record_of(const pm_pool *pool, const void *p, size_t index) {
    return pm_traced_pool_records_in_block(pool) ? (in_block_record *)(uintptr_t)p - 1
                                                 : record_beside(pool, index);
}

/* Gives a pool that has none marks for its class, all zero; false when there is no memory. */
static bool give_marks(pm_pool *pool) {
    unsigned bucket = marks_bucket(pool->size_class);
    uint8_t *marks = pop_spare_marks(bucket);
    if (marks == NULL) {
        size_t bytes = (size_t)64 << bucket;
        if ((size_t)(marks_end - marks_next) < bytes) {
            /* The rest of the old chunk (a multiple of 64) goes to the spare lists. */
            while (marks_next != marks_end) {
                size_t left = (size_t)(marks_end - marks_next);
                unsigned b = 0;
                while (b + 1 < MARK_BUCKETS && ((size_t)64 << (b + 1)) <= left) b++;
                push_spare_marks(b, marks_next);
                marks_next += (size_t)64 << b;
            }
            uint8_t *chunk = pm_trace_mem_alloc(MARK_CHUNK_BYTES);
            if (chunk == NULL) return false;
            marks_next = chunk;
            marks_end = chunk + MARK_CHUNK_BYTES;
        }
        marks = marks_next;
        marks_next += bytes;
    }
    pool->marks = marks;
    pm_atomic_store_int_relaxed(&in_block_pools_exist, 1);
    return true;
}

void pm_trace_pool_leaves_traced_heap(pm_pool *pool) {
    uint8_t *marks = pool->marks;
    if (marks == NULL) return;
    /* Spare marks are all zero but their link: the records go too. */
    if (!pm_traced_pool_records_in_block(pool)) {
        memset(marks + BESIDE_MARKS_BYTES, 0, BESIDE_BYTES - BESIDE_MARKS_BYTES);
    }
    push_spare_marks(marks_bucket(pool->size_class), marks);
    pool->marks = NULL;
}

/* The caller's bytes of a traced heap's block: the block less its record, one class down
 * (PM_TRACE_RECORD_BYTES is one class), or all of it where the records sit beside. */
static inline size_t traced_usable_size(const pm_pool *pool) {
    size_t below = (size_t)pool->size_class << PM_ALIGNMENT_SHIFT;
    return pm_traced_pool_records_in_block(pool) ? below : below + PM_TRACE_RECORD_BYTES;
}

/* The traced heap's class for a request of `size` bytes, at most PM_TRACED_MAX_REQUEST: one
 * up for the record in front (0 bytes take 1, so that the caller's pointer stays inside
 * the block, where the arena map finds its pool), or the class whose records sit beside. */
static inline size_t traced_class(size_t size) {
    if (size > PM_TRACED_MAX_IN_BLOCK) return PM_TRACED_CLASS_BESIDE;
    return pm_size_class((size != 0 ? size : 1) + PM_TRACE_RECORD_BYTES);
}

static inline uint8_t mark_for(const pm_pool *pool, size_t size) {
    size_t usable = traced_usable_size(pool);
    return size <= usable && usable - size < MARK_IN_RECORD - 1 ? (uint8_t)(usable - size + 1)
                                                               : MARK_IN_RECORD;
}

static inline size_t marked_size(const pm_pool *pool, uint8_t mark, const in_block_record *r) {
    return mark != MARK_IN_RECORD ? traced_usable_size(pool) - (size_t)(mark - 1) : r->size;
}

static void zero_marks_of(const pm_arena *arena, void *unused) {
    (void)unused;
    for (uint32_t i = 0; i < arena->carved_pools; i++) {
        const pm_pool *pool = &arena->pools[i];
        if (pool->marks != NULL) memset(pool->marks, 0, pm_class_capacity(pool->size_class));
    }
}

/* The in-block count's peak check, from in_block_add: the peak folds in every trace, and
 * the next check waits until the count has risen PEAK_CHECK_BYTES beyond its lowest since
 * this one (in_block_sub lowers the trigger). */
__attribute__((noinline)) static void in_block_check_peak(size_t now) {
    pm_atomic_store_size_relaxed(&in_block_peak_trigger, now + PEAK_CHECK_BYTES);
    raise_peak(current_bytes());
}

/* Accounting of records in blocks; the GIL is held (they exist only in GIL mode without
 * thread caches). One count for all threads, so the peak check needs no thread-local
 * counter. The trigger is PEAK_CHECK_BYTES above the lowest the count has been since the
 * last check: a check sets it above the count, and a free lowers it with the count. So it
 * is note_growth's clamped counter, kept as the value that sets it off, and has the same
 * bound (see Counters). A trigger that a free did not lower would leave the peak unbounded
 * once table traces mix in (fuzz_trace found that). The thread-local counter and a count
 * of records that this replaced cost 0.2-0.3x of the untraced step on trace_cost. */
static inline void in_block_add(size_t bytes) {
    size_t now = pm_atomic_load_size_relaxed(&in_block_current) + bytes;
    pm_atomic_store_size_relaxed(&in_block_current, now);
    if (__builtin_expect(now >= pm_atomic_load_size_relaxed(&in_block_peak_trigger), 0)) {
        in_block_check_peak(now);
    }
}

static inline void in_block_sub(size_t bytes) {
    size_t now = pm_atomic_load_size_relaxed(&in_block_current) - bytes;
    pm_atomic_store_size_relaxed(&in_block_current, now);
    size_t lowered = now + PEAK_CHECK_BYTES;
    if (lowered < pm_atomic_load_size_relaxed(&in_block_peak_trigger)) {
        pm_atomic_store_size_relaxed(&in_block_peak_trigger, lowered);
    }
}

/* Blocks the traced heap has handed out and not got back, counting or not: each holds a
 * record. Walks the arenas under the GIL. */
static void count_records_of(const pm_arena *arena, void *arg) {
    size_t *records = arg;
    for (uint32_t i = 0; i < arena->carved_pools; i++) {
        const pm_pool *pool = &arena->pools[i];
        /* Records beside are in the marks' memory, which tracer_memory counts. */
        if (pm_pool_owner(pool) == &pm_traced_heap && pm_traced_pool_records_in_block(pool)) {
            *records += pm_pool_used(pool);
        }
    }
}

/* Makes r (in pool, whose mark for it is *mark and zero) count `size` bytes with tb. */
static inline void in_block_trace(const pm_pool *pool, uint8_t *mark, in_block_record *r,
                                  const pm_trace_tb *tb, size_t size) {
    r->tb = tb;
    r->size = size;
    *mark = mark_for(pool, size);
    in_block_add(size);
}

/* A block of `size_class` from the traced heap, and its pool, which has marks; NULL when
 * pymalloc has no memory, or no marks can be had for a new pool. */
__attribute__((always_inline)) static inline pm_block *take_traced_block(size_t size_class,
                                                                         pm_pool **pool_out) {
    pm_pool *pool = pm_traced_heap.used[size_class];
    pm_block *block = pool->free;
    if (__builtin_expect(block != NULL, 1)) {
        /* A pool on the traced heap's list has served it before: it has marks. */
        pm_pool_take(pool, block);
    } else {
        block = pm_pymalloc_malloc_slow(pm_class_block_size((unsigned)size_class),
                                        &pm_traced_heap, PM_ROUTE_PYMALLOC);
        if (block == NULL) return NULL;
        pool = pm_pool_of(block);
        if (pool->marks == NULL && !give_marks(pool)) {
            pm_pool_free_block(pool, block);
            errno = ENOMEM;
            return NULL;
        }
    }
    *pool_out = pool;
    return block;
}

/* place_in_block for PM_TRACED_MAX_IN_BLOCK < size <= PM_TRACED_MAX_REQUEST: the block
 * itself, its record beside. Apart, so that the common path keeps one test for it. */
__attribute__((noinline)) static void *place_beside(const pm_trace_tb *tb, size_t size) {
    pm_pool *pool;
    pm_block *block = take_traced_block(PM_TRACED_CLASS_BESIDE, &pool);
    if (block == NULL) return NULL;
    size_t index = block_index(pool, block);
    in_block_record *r = record_beside(pool, index);
    r->tb = tb;
    r->size = size;
    pool->marks[index] = tb != NULL ? mark_for(pool, size) : 0;
    if (tb != NULL) in_block_add(size);
    return block;
}

/* `size` bytes (at most PM_TRACED_MAX_REQUEST) from the traced heap, with the record
 * {tb, size} in front of them or beside; tb NULL: untraced. NULL when pymalloc has no
 * memory, or no marks can be had for a new pool. */
__attribute__((always_inline)) static inline void *place_in_block(const pm_trace_tb *tb,
                                                                  size_t size) {
    if (__builtin_expect(size > PM_TRACED_MAX_IN_BLOCK, 0)) return place_beside(tb, size);
    pm_pool *pool;
    pm_block *block = take_traced_block(traced_class(size), &pool);
    if (block == NULL) return NULL;
    in_block_record *r = (in_block_record *)(void *)block;
    r->tb = tb;
    r->size = size;
    /* The slack, at most 16 bytes: mark_for's common case, without its tests. */
    uint8_t mark = tb != NULL ? (uint8_t)(((size_t)pool->size_class << PM_ALIGNMENT_SHIFT) -
                                          size + 1)
                              : 0;
    pool->marks[block_index(pool, block)] = mark;
    if (tb != NULL) in_block_add(size);
    return r + 1;
}

/* Untraces r, a block of pool whose mark is *mark: its bytes leave the count if it counted. */
static inline void in_block_untrace(const pm_pool *pool, uint8_t *mark, const in_block_record *r) {
    uint8_t m = *mark;
    if (m == 0) return;
    /* Before the store, through which the compiler would reload the pool's class. */
    size_t size = marked_size(pool, m, r);
    *mark = 0;
    in_block_sub(size);
}

/* pm_trace_free_in_block in the class whose records sit beside: p is the block. */
__attribute__((noinline)) static void free_beside(pm_pool *pool, void *p) {
    size_t index = block_index(pool, p);
    in_block_untrace(pool, &pool->marks[index], record_beside(pool, index));
    pm_pool_free_block(pool, p);
}

void pm_trace_free_in_block(pm_pool *pool, void *p) {
    if (__builtin_expect(!pm_traced_pool_records_in_block(pool), 0)) {
        free_beside(pool, p);
        return;
    }
    pm_block *block = (pm_block *)(void *)((in_block_record *)p - 1);
    uint8_t *mark = &pool->marks[block_index(pool, block)];
    in_block_untrace(pool, mark, (const in_block_record *)(void *)block);
    pm_pool_free_block(pool, block);
}

/* The record in front of p when p is a block the traced heap handed out, else NULL; *pool_out
 * and *mark_out get its pool and mark. Reads only the map and the header of p's pool, which do
 * not change while p is allocated. */
static in_block_record *in_block_record_of(const void *p, pm_pool **pool_out, uint8_t **mark_out) {
    pm_pool *pool = pm_pool_of(p);
    if (pool == NULL || pm_pool_owner(pool) != &pm_traced_heap || pool->marks == NULL) return NULL;
    size_t offset = (uintptr_t)p - pool->memory;
    size_t in_front = pm_traced_pool_records_in_block(pool) ? PM_TRACE_RECORD_BYTES : 0;
    if (offset % pm_class_block_size(pool->size_class) != in_front) return NULL;
    size_t index = block_index(pool, p);
    *pool_out = pool;
    *mark_out = &pool->marks[index];
    return record_of(pool, p, index);
}

/* The traceback of p's record if it is traced in the active session. */
static const pm_trace_tb *in_block_traceback(const void *p) {
    pm_pool *pool;
    uint8_t *mark;
    const in_block_record *r = in_block_record_of(p, &pool, &mark);
    return r != NULL && *mark != 0 ? r->tb : NULL;
}

/* Records in blocks change only under the GIL; start holds it, and stop, clear, snapshots
 * and track/untrack of such a block take it if the caller does not hold it. Returns
 * whether it took it. A no-op with thread caches, where no record is kept in a block. */
static bool hold_gil_for_records(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (pm_threading.caches || pm_gil_held()) return false;
    pm_gil_acquire();
    return true;
}

static void release_gil_for_records(bool taken) PM_NO_THREAD_SAFETY_ANALYSIS {
    if (taken) pm_gil_release();
}

static size_t records_in_blocks(void) {
    if (!pm_atomic_load_int_relaxed(&in_block_pools_exist)) return 0;
    bool gil_taken = hold_gil_for_records();
    size_t records = 0;
    pm_arena_for_each(count_records_of, &records);
    release_gil_for_records(gil_taken);
    return records;
}

/* ---- the hooks ------------------------------------------------------------------------- */

static void *call_alloc(const pm_allocator *a, int op, size_t nelem, size_t size) {
    switch (op) {
    case OP_CALLOC: return a->calloc(a->ctx, nelem, size);
    case OP_REALLOC: return a->realloc(a->ctx, NULL, size);
    default: return a->malloc(a->ctx, size);
    }
}

/* A traced block with its record in front (see "Records in blocks"); total is at most
 * PM_TRACED_MAX_REQUEST. The traceback comes first: a trace that cannot be stored then
 * costs no block. Always inlined into its callers, each called straight from a hook or
 * route, so that capture_native runs at the depth calibrate() measured. */
__attribute__((always_inline)) static inline void *alloc_in_block(const hook_ctx *h, int op,
                                                                  size_t total, size_t session) {
    const pm_trace_tb *tb = NULL;
    pm_trace_gate.depth++; /* a frame provider's own allocations are not traced */
    if (__builtin_expect(tls.calibrating, 0)) {
        calibrate_here();
    } else {
        tb = capture(h->domain, op, session);
        if (__builtin_expect(tb == NULL, 0)) {
            pm_trace_gate.depth--;
            errno = ENOMEM;
            return NULL;
        }
    }
    pm_trace_gate.depth--;
    void *p = place_in_block(tb, total);
    if (op == OP_CALLOC && p != NULL) memset(p, 0, total);
    return p;
}

/* malloc, calloc and realloc(NULL, n) when traced. */
__attribute__((noinline)) static void *traced_alloc(const hook_ctx *h, int op, size_t nelem,
                                                    size_t elsize, size_t total) {
    size_t session = pm_atomic_load_size_acquire(&active_session);
    if (session == 0) return call_alloc(&h->wrapped, op, nelem, elsize);
    if ((session & IN_BLOCK_SESSION) && h->over_pymalloc && total <= PM_TRACED_MAX_REQUEST) {
        return alloc_in_block(h, op, total, session);
    }
    bool sampling = session & SAMPLING_SESSION;
    size_t flags = sampling ? SAMPLED_FLAG : 0;
    pm_trace_gate.depth++;
    /* Over pymalloc, sampled blocks and those too large for records in blocks come from the
     * raw domain: then no block of the main heap's pools is traced, and its frees skip us. */
    const pm_allocator *a =
        session & (SAMPLING_SESSION | IN_BLOCK_SESSION) ? h->sampled : &h->wrapped;
    void *p = call_alloc(a, op, nelem, elsize);
    if (p != NULL && record(h->domain, op, (uintptr_t)p, total | flags, session) != 0) {
        h->wrapped.free(h->wrapped.ctx, p);
        p = NULL;
        errno = ENOMEM;
    }
    pm_trace_gate.depth--;
    return p;
}

/* A call that sampling skipped is still the outermost one: what it calls (pymalloc handing
 * 0 or more than 512 bytes to the raw domain) is nested, neither sampled again nor charged
 * to the countdown twice; hook_ctx.leaf_limit says when there can be no such call.
 *
 * Each hook's common case (nested, or skipped by sampling and unable to reach another
 * domain) ends in a tail call and needs no stack frame; everything else is in a noinline
 * *_slow function, so that the common case saves no registers (that alone was a third of
 * the unsampled path's instructions). */
/* An untraced outermost call that may reach another domain. */
__attribute__((noinline)) static void *outer_malloc(const hook_ctx *h, size_t size) {
    pm_trace_gate.depth++;
    void *p = h->wrapped.malloc(h->wrapped.ctx, size);
    pm_trace_gate.depth--;
    return p;
}

__attribute__((noinline)) static void *outer_calloc(const hook_ctx *h, size_t nelem,
                                                    size_t elsize) {
    pm_trace_gate.depth++;
    void *p = h->wrapped.calloc(h->wrapped.ctx, nelem, elsize);
    pm_trace_gate.depth--;
    return p;
}

/* Sampling's countdown ran out. */
__attribute__((noinline)) static void *malloc_slow(const hook_ctx *h, size_t size, size_t mean) {
    if (sample_slow(size, mean)) return traced_alloc(h, OP_MALLOC, 1, size, size);
    if (size - 1 < h->leaf_limit) return h->wrapped.malloc(h->wrapped.ctx, size);
    return outer_malloc(h, size);
}

static void *hook_malloc(void *ctx, size_t size) {
    const hook_ctx *h = ctx;
    if (__builtin_expect(pm_trace_gate.depth == 0, 1)) {
        size_t mean = pm_atomic_load_size_relaxed(&sample_mean);
        if (mean == 0) return traced_alloc(h, OP_MALLOC, 1, size, size);
        if (countdown_runs_out(size, mean)) return malloc_slow(h, size, mean);
        if (size - 1 >= h->leaf_limit) return outer_malloc(h, size);
    }
    return h->wrapped.malloc(h->wrapped.ctx, size);
}

__attribute__((noinline)) static void *calloc_slow(const hook_ctx *h, size_t nelem,
                                                   size_t elsize, size_t total, size_t mean) {
    if (sample_slow(total, mean)) return traced_alloc(h, OP_CALLOC, nelem, elsize, total);
    if (total - 1 < h->leaf_limit) return h->wrapped.calloc(h->wrapped.ctx, nelem, elsize);
    return outer_calloc(h, nelem, elsize);
}

static void *hook_calloc(void *ctx, size_t nelem, size_t elsize) {
    const hook_ctx *h = ctx;
    size_t total;
    if (__builtin_expect(pm_trace_gate.depth == 0, 1) &&
        !__builtin_mul_overflow(nelem, elsize, &total)) {
        size_t mean = pm_atomic_load_size_relaxed(&sample_mean);
        if (mean == 0) return traced_alloc(h, OP_CALLOC, nelem, elsize, total);
        if (countdown_runs_out(total, mean)) return calloc_slow(h, nelem, elsize, total, mean);
        if (total - 1 >= h->leaf_limit) return outer_calloc(h, nelem, elsize);
    }
    return h->wrapped.calloc(h->wrapped.ctx, nelem, elsize);
}

/* realloc of a pool block (traced in its record, or from the main heap and untraced) in a
 * session of records in blocks: the block always moves, to the traced heap or, when too
 * large for it, to the raw domain with a trace in the table; or stays, with a new record,
 * when the new size has the block's class. The traceback is captured by the caller, at the
 * depth calibrate() measured. */
static void *realloc_pool_block(const hook_ctx *h, void *ptr, pm_pool *pool, size_t new_size,
                                const pm_trace_tb *tb, size_t session) {
    in_block_record *old = NULL;
    uint8_t *mark = NULL;
    if (pm_pool_owner(pool) == &pm_traced_heap) {
        size_t index = block_index(pool, ptr);
        old = record_of(pool, ptr, index);
        mark = &pool->marks[index];
    }
    size_t usable = pm_pool_usable_size(pool);
    if (old != NULL && new_size <= PM_TRACED_MAX_REQUEST &&
        traced_class(new_size) == pool->size_class) {
        in_block_untrace(pool, mark, old); /* same class: a new record in place */
        if (tb != NULL) in_block_trace(pool, mark, old, tb, new_size);
        return ptr;
    }
    /* The old trace goes first, as in traced_realloc: current and the peak never count
     * the old block and the new one together (found by fuzz/fuzz_trace.c). */
    uint8_t saved_mark = 0;
    if (old != NULL) {
        saved_mark = *mark;
        in_block_untrace(pool, mark, old);
    }
    void *q;
    if (new_size <= PM_TRACED_MAX_REQUEST) {
        q = place_in_block(tb, new_size);
    } else {
        q = h->sampled->malloc(h->sampled->ctx, new_size);
        if (q != NULL && tb != NULL &&
            trace_insert((uintptr_t)q, ptr_hash((uintptr_t)q), new_size, tb, session) != 0) {
            h->sampled->free(h->sampled->ctx, q);
            q = NULL;
            errno = ENOMEM;
        }
    }
    if (q == NULL) {
        /* ptr is untouched, record and all: it counts again if it counted before. */
        if (saved_mark != 0) {
            *mark = saved_mark;
            in_block_add(marked_size(pool, saved_mark, old));
        }
        return NULL;
    }
    memcpy(q, ptr, new_size < usable ? new_size : usable);
    h->wrapped.free(h->wrapped.ctx, ptr);
    return q;
}

__attribute__((noinline)) static void *traced_realloc(const hook_ctx *h, void *ptr,
                                                      size_t new_size, bool sampled) {
    size_t session = pm_atomic_load_size_acquire(&active_session);
    pm_pool *pool;
    if ((session & IN_BLOCK_SESSION) && h->over_pymalloc && (pool = pm_pool_of(ptr)) != NULL) {
        const pm_trace_tb *tb = NULL;
        pm_trace_gate.depth++;
        if (__builtin_expect(tls.calibrating, 0)) {
            calibrate_here();
        } else {
            tb = capture(h->domain, OP_REALLOC, session);
        }
        void *q = NULL;
        if (tb == NULL && !tls.calibrating) {
            errno = ENOMEM;
        } else {
            q = realloc_pool_block(h, ptr, pool, new_size, tb, session);
        }
        pm_trace_gate.depth--;
        return q;
    }
    trace_slot old = {0, 0, NULL};
    bool had_old =
        session != 0 && trace_remove(h->domain, (uintptr_t)ptr, ptr_hash((uintptr_t)ptr), &old);
    pm_trace_gate.depth++;
    tls.removed_ptr = (uintptr_t)ptr;
    tls.removed_tb = old.tb;
    /* A sampled block moves out of any pool (h->sampled); an unsampled one whose old
     * block was traced is a raw block that stays raw. With records in blocks, ptr is not
     * a pool block (see above) and stays raw. */
    const pm_allocator *a =
        sampled && (session & (SAMPLING_SESSION | IN_BLOCK_SESSION)) ? h->sampled : &h->wrapped;
    void *q = a->realloc(a->ctx, ptr, new_size);
    tls.removed_ptr = 0;
    if (q == NULL) {
        /* The old block is intact: so is its trace. The slot it left may be gone. */
        uint64_t hash = ptr_hash((uintptr_t)ptr);
        if (had_old && trace_insert((uintptr_t)ptr, hash, old.size, old.tb, session) != 0) {
            pm_atomic_faa_size(&lost_traces, 1);
        }
    } else if (sampled && session != 0) {
        size_t flags = session & SAMPLING_SESSION ? SAMPLED_FLAG : 0;
        if (record(h->domain, OP_REALLOC, (uintptr_t)q, new_size | flags, session) != 0) {
            /* CPython aborts here. The block is the caller's now: keep it, untraced. */
            pm_atomic_faa_size(&lost_traces, 1);
        }
    }
    pm_trace_gate.depth--;
    return q;
}

static void *hook_realloc(void *ctx, void *ptr, size_t new_size) {
    const hook_ctx *h = ctx;
    if (pm_trace_gate.depth != 0) return h->wrapped.realloc(h->wrapped.ctx, ptr, new_size);
    bool sampled = !sampled_out(new_size);
    if (sampled && ptr == NULL) return traced_alloc(h, OP_REALLOC, 1, new_size, new_size);
    /* The old block may be traced even when the new one is not sampled. */
    if (sampled || maybe_traced(pm_atomic_load_size_relaxed(&active_session), (uintptr_t)ptr)) {
        return traced_realloc(h, ptr, new_size, sampled);
    }
    pm_trace_gate.depth++; /* as in hook_malloc: what it calls is nested */
    void *q = h->wrapped.realloc(h->wrapped.ctx, ptr, new_size);
    pm_trace_gate.depth--;
    return q;
}

/* A free that may untrace: tracing is on and the filter, if kept, says the pointer may be
 * traced. The wrapped free runs one level deeper, so a free nested in it (pymalloc handing
 * a large block to the raw domain) passes straight through. */
__attribute__((noinline)) static void traced_free(const hook_ctx *h, void *ptr) {
    /* With records in blocks no pool block is in the table: pymalloc's free takes a traced
     * heap's block out of its record (pm_trace_free_in_block). */
    if ((pm_atomic_load_size_relaxed(&active_session) & IN_BLOCK_SESSION) && h->over_pymalloc &&
        pm_pool_of(ptr) != NULL) {
        h->wrapped.free(h->wrapped.ctx, ptr);
        return;
    }
    uint64_t hash = ptr_hash((uintptr_t)ptr);
    prefetch_home(hash);
    /* Most allocators write into a block they free (pymalloc links it into its pool's free
     * list): that miss then overlaps the table's instead of following it. */
    __builtin_prefetch(ptr, 1);
    trace_slot old;
    /* Untrace first: once freed, the address may be handed to another thread. */
    bool had_trace = trace_remove(h->domain, (uintptr_t)ptr, hash, &old);
    pm_trace_gate.depth++;
    tls.removed_ptr = (uintptr_t)ptr;
    tls.removed_tb = had_trace ? old.tb : NULL;
    h->wrapped.free(h->wrapped.ctx, ptr);
    tls.removed_ptr = 0;
    pm_trace_gate.depth--;
}

/* The common untraced free (not tracing, nested, or the filter of a sampling session says
 * no trace) is a tail call. */
static void hook_free(void *ctx, void *ptr) {
    const hook_ctx *h = ctx;
    size_t session = pm_atomic_load_size_relaxed(&active_session);
    if (pm_trace_gate.depth == 0 && ptr != NULL && session != 0 &&
        maybe_traced(session, (uintptr_t)ptr)) {
        traced_free(h, ptr);
        return;
    }
    h->wrapped.free(h->wrapped.ctx, ptr);
}

static bool is_hook(const pm_allocator *a) {
    return a->malloc == hook_malloc;
}

void *pm_trace_sampled_malloc(size_t size, int route) {
    const pm_allocator *a = pm_domain_current((pm_domain)route);
    size_t mean = pm_atomic_load_size_relaxed(&sample_mean);
    /* pm_trace_pymalloc_sample_point said yes, so the countdown is charged already and of
     * this rate: straight to the decision. */
    if (is_hook(a) && mean != 0) return malloc_slow(a->ctx, size, mean);
    /* The session ended meanwhile: whatever is installed now. */
    return a->malloc(a->ctx, size);
}

/* The interned hook context for (domain, wrapped), or NULL when the pool is full. */
static const hook_ctx *hook_ctx_for(pm_domain domain, const pm_allocator *wrapped)
    PM_REQUIRES(control) {
    for (size_t i = 0; i < hook_pool_used; i++) {
        if (hook_pool[i].domain == domain && pm_allocator_equal(&hook_pool[i].wrapped, wrapped)) {
            return &hook_pool[i];
        }
    }
    if (hook_pool_used == HOOK_POOL) return NULL;
    hook_ctx *h = &hook_pool[hook_pool_used++];
    h->domain = domain;
    h->wrapped = *wrapped;
    bool over_pymalloc =
        domain != PM_DOMAIN_RAW && pm_allocator_equal(wrapped, &pm_pymalloc_allocator);
    h->over_pymalloc = over_pymalloc;
    h->leaf_limit = domain == PM_DOMAIN_RAW ? SIZE_MAX
                    : over_pymalloc         ? PM_SMALL_REQUEST_THRESHOLD
                                            : 0;
    h->sampled = over_pymalloc ? &pm_pymalloc_unpooled_allocator : &h->wrapped;
    return h;
}

bool pm_trace_records_in_blocks(const pm_allocator *record) {
    return is_hook(record) && ((const hook_ctx *)record->ctx)->over_pymalloc &&
           pm_atomic_load_int_relaxed(&in_block_mode) != 0;
}

/* pm_trace_route_malloc's common case, apart from traced_alloc's other paths, whose
 * registers it would otherwise save and restore. */
__attribute__((noinline)) static void *route_malloc_in_block(const hook_ctx *h, size_t size,
                                                             size_t session) {
    return alloc_in_block(h, OP_MALLOC, size, session);
}

void *pm_trace_route_malloc(size_t nbytes, int route) {
    const pm_allocator *a = pm_domain_current((pm_domain)route);
    if (pm_trace_gate.depth == 0 && is_hook(a)) {
        const hook_ctx *h = a->ctx;
        size_t session = pm_atomic_load_size_acquire(&active_session);
        /* Both calls are the same depth from here, which calibrate() measures. */
        if ((session & IN_BLOCK_SESSION) && nbytes <= PM_TRACED_MAX_REQUEST && h->over_pymalloc) {
            return route_malloc_in_block(h, nbytes, session);
        }
        return traced_alloc(h, OP_MALLOC, 1, nbytes, nbytes);
    }
    /* Nested in a hook (a frame provider allocating), or the hook was replaced meanwhile. */
    if (nbytes > (size_t)PTRDIFF_MAX) return NULL;
    return a->malloc(a->ctx, nbytes);
}

bool pm_trace_samples_over_pymalloc(const pm_allocator *record) {
    if (!is_hook(record)) return false;
    const hook_ctx *h = record->ctx;
    return h->sampled == &pm_pymalloc_unpooled_allocator &&
           pm_atomic_load_size_relaxed(&sample_mean) != 0;
}

/* ---- the debug hooks' report ----------------------------------------------------------- */

static void put(int fd, const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static void put_decimal(int fd, size_t v) {
    char text[24];
    char *p = text + sizeof text;
    *--p = '\0';
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    put(fd, p);
}

static void print_tb(int fd, const pm_trace_tb *tb) {
    put(fd, "Memory block allocated at (most recent call first):\n");
    for (uint32_t i = 0; i < tb->nframes; i++) {
        pm_trace_frame f = pm_trace_symbolize(tb->frames[i]);
        put(fd, "  File \"");
        put(fd, f.filename);
        put(fd, "\", line ");
        put_decimal(fd, f.lineno);
        put(fd, "\n");
    }
    put(fd, "\n");
}

/* CPython's _PyMem_DumpTraceback, for alloc/debug_hooks.c's block report. */
static void print_allocation_traceback(int fd, const void *ptr) {
    if (pm_atomic_load_size_acquire(&active_session) == 0) {
        put(fd, "Enable tracemalloc to get the memory block allocation traceback\n\n");
        return;
    }
    /* A free or realloc of this thread took the trace out just before calling down. */
    if (tls.removed_ptr == (uintptr_t)ptr && tls.removed_tb != NULL) {
        print_tb(fd, tls.removed_tb);
        return;
    }
    const pm_trace_tb *in_block = in_block_traceback(ptr);
    if (in_block != NULL) {
        print_tb(fd, in_block);
        return;
    }
    uint64_t h = ptr_hash((uintptr_t)ptr);
    trace_shard *s = &trace_shards[shard_index(h)];
    pm_spinlock_lock(&s->lock);
    for (unsigned d = 0; d < PM_DOMAIN_COUNT; d++) {
        ptrdiff_t found = shard_find(s, (uintptr_t)ptr, h, d);
        if (found >= 0) {
            print_tb(fd, s->slots[found].tb);
            break;
        }
    }
    pm_spinlock_unlock(&s->lock);
}

pm_trace_frame pm_trace_symbolize(pm_trace_frame frame) {
    if (frame.filename != NULL) return frame;
    Dl_info info;
    uintptr_t pc = (uintptr_t)frame.lineno;
    /* pc - 1: a return address may be the first byte after the calling function. */
    if (dladdr((void *)(pc - 1), &info) != 0 && info.dli_fname != NULL && info.dli_fname[0]) {
        return (pm_trace_frame){info.dli_fname, pc - (uintptr_t)info.dli_fbase};
    }
    return (pm_trace_frame){"<unknown>", pc};
}

/* ---- tables: clearing ------------------------------------------------------------------ */

/* Empties every shard and frees the tracebacks. active_session must be 0 or a session
 * no hook has read yet, so nothing refers to a traceback once its shard is empty. Records
 * in blocks are left where they are: their session has ended, so they no longer count
 * (the caller holds the GIL, or is a fork's child, alone). */
static void reset_tables(bool release_memory) PM_REQUIRES(control) {
    if (pm_atomic_load_int_relaxed(&in_block_pools_exist)) pm_arena_for_each(zero_marks_of, NULL);
    pm_atomic_store_size_relaxed(&in_block_current, 0);
    pm_atomic_store_size_relaxed(&in_block_peak_trigger, PEAK_CHECK_BYTES);
    for (size_t i = 0; i < TRACE_SHARDS; i++) {
        trace_shard *s = &trace_shards[i];
        pm_spinlock_lock(&s->lock);
        size_t capacity = s->slots ? s->mask + 1 : 0;
        if (release_memory) {
            pm_trace_mem_free(s->slots, capacity * sizeof(trace_slot));
            shard_set_table(s, NULL, 0);
            s->grow_at = 0;
        } else if (s->slots != NULL) {
            memset(s->slots, 0, capacity * sizeof(trace_slot));
        }
        s->used = 0;
        pm_atomic_store_size_relaxed(&s->current, 0);
        memset(&filter_counts[i * FILTER_PER_SHARD], 0, FILTER_PER_SHARD * sizeof *filter_counts);
        for (size_t w = 0; w < FILTER_PER_SHARD / 64; w++) {
            pm_atomic_store_u64_relaxed(&filter_bits[i * FILTER_PER_SHARD / 64 + w], 0);
        }
        pm_spinlock_unlock(&s->lock);
    }
    for (size_t i = 0; i < TB_SHARDS; i++) {
        tb_shard *s = &tb_shards[i];
        pm_spinlock_lock(&s->lock);
        pm_trace_mem_free(s->slots, s->slots ? (s->mask + 1) * sizeof *s->slots : 0);
        s->slots = NULL;
        s->mask = 0;
        s->used = 0;
        while (s->chunks != NULL) {
            tb_chunk *next = s->chunks->next;
            pm_trace_mem_free(s->chunks, s->chunks->size);
            s->chunks = next;
        }
        s->bump = s->bump_end = NULL;
        pm_spinlock_unlock(&s->lock);
    }
    pm_atomic_store_size_relaxed(&peak_bytes, 0);
}

/* ---- fork ------------------------------------------------------------------------------ */

/* fork() while another thread is inside a shard leaves the child a lock nobody will release
 * and perhaps a half-updated table. Holding every shard lock across fork() would avoid
 * that, but 81 locks held at once exceed what ThreadSanitizer can follow (64). So the
 * prepare handler holds only the control mutex (no start, stop, clear or snapshot is
 * under way), and the child, alone, makes every shard lock free again and starts a fresh
 * session from empty tables: it keeps tracing, without the parent's traces. */
static void fork_prepare(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    pm_mutex_lock(&control);
}

static void fork_parent(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    pm_mutex_unlock(&control);
}

static void fork_child(void) PM_NO_THREAD_SAFETY_ANALYSIS {
    for (size_t i = 0; i < TRACE_SHARDS; i++) pm_spinlock_init(&trace_shards[i].lock);
    for (size_t i = 0; i < TB_SHARDS; i++) pm_spinlock_init(&tb_shards[i].lock);
    if (pm_atomic_load_size_relaxed(&active_session) != 0) {
        pm_atomic_store_size_release(&active_session, 0);
        reset_tables(true);
        pm_atomic_store_size_release(&active_session, new_session());
    }
    pm_mutex_unlock(&control);
}

/* ---- calibration ----------------------------------------------------------------------- */

/* Allocates through (domain, op) from a frame whose stack it recorded first. */
__attribute__((noinline)) static int calibrate_probe(pm_domain domain, int op) PM_GIL_REQUIRED {
    calibration_reference_depth = backtrace(calibration_reference, CALIBRATION_DEPTH);
    calibrated_skip = -1;
    tls.calibrating = 1;
    int64_t saved_countdown = pm_trace_gate.countdown;
    pm_trace_gate.countdown = 0; /* sampling: take the slow path, which samples while calibrating */
    void *p = NULL;
    switch (domain * OP_COUNT + op) {
    case PM_DOMAIN_RAW * OP_COUNT + OP_MALLOC: p = pm_raw_malloc(16); break;
    case PM_DOMAIN_RAW * OP_COUNT + OP_CALLOC: p = pm_raw_calloc(1, 16); break;
    case PM_DOMAIN_RAW * OP_COUNT + OP_REALLOC: p = pm_raw_realloc(NULL, 16); break;
    case PM_DOMAIN_MEM * OP_COUNT + OP_MALLOC: p = pm_mem_malloc(16); break;
    case PM_DOMAIN_MEM * OP_COUNT + OP_CALLOC: p = pm_mem_calloc(1, 16); break;
    case PM_DOMAIN_MEM * OP_COUNT + OP_REALLOC: p = pm_mem_realloc(NULL, 16); break;
    case PM_DOMAIN_OBJ * OP_COUNT + OP_MALLOC: p = pm_obj_malloc(16); break;
    case PM_DOMAIN_OBJ * OP_COUNT + OP_CALLOC: p = pm_obj_calloc(1, 16); break;
    default: p = pm_obj_realloc(NULL, 16); break;
    }
    tls.calibrating = 0;
    pm_trace_gate.countdown = saved_countdown;
    switch (domain) {
    case PM_DOMAIN_RAW: pm_raw_free(p); break;
    case PM_DOMAIN_MEM: pm_mem_free(p); break;
    default: pm_obj_free(p); break;
    }
    return calibrated_skip;
}

static void calibrate(void) PM_GIL_REQUIRED {
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        for (int op = 0; op < OP_COUNT; op++) {
            int skip = calibrate_probe((pm_domain)d, op);
            pm_atomic_store_int_relaxed(&native_skip[d][op], skip < 0 ? 0 : skip);
        }
    }
}

int pm_trace_test_native_skip(pm_domain domain, int op) {
    if ((unsigned)domain >= PM_DOMAIN_COUNT || op < 0 || op >= OP_COUNT) return -1;
    return pm_atomic_load_int_relaxed(&native_skip[domain][op]);
}

/* ---- start and stop -------------------------------------------------------------------- */

static void init_once(void) {
    init_block_index_multipliers();
    (void)pthread_key_create(&thread_exit_key, release_thread_buffers);
    (void)pthread_atfork(fork_prepare, fork_parent, fork_child);
    pm_atomic_store_ptr_release(&pm_debug_traceback_printer,
                                (const void *)(uintptr_t)print_allocation_traceback);
}

static int start(int nframes, size_t mean) PM_GIL_REQUIRED {
    if (nframes < 1 || nframes > PM_TRACE_MAX_FRAMES) {
        errno = EINVAL;
        return -1;
    }
    pthread_once(&once, init_once);
    pm_mutex_lock(&control);
    if (pm_atomic_load_size_relaxed(&active_session) != 0) {
        bool same_mode = pm_atomic_load_size_relaxed(&sample_mean) == mean;
        if (same_mode) pm_atomic_store_int_relaxed(&max_frames, nframes);
        pm_mutex_unlock(&control);
        if (!same_mode) errno = EBUSY;
        return same_mode ? 0 : -1;
    }
    /* The mode first: installing the hooks sets the routes from it (a full session's
     * frees of pool blocks must reach the hook before its first trace is stored). A hook
     * called before the session begins passes the call on, whatever mode it reads. */
    pm_atomic_store_size_relaxed(&sample_mean, mean);
    pm_atomic_store_int_relaxed(&in_block_mode, mean == 0 && !pm_threading.caches);
    pm_allocator saved[PM_DOMAIN_COUNT], target[PM_DOMAIN_COUNT];
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        (void)pm_get_allocator((pm_domain)d, &saved[d]);
        target[d] = saved[d];
        if (is_hook(&saved[d])) continue; /* left on top by a stop that could not unwind */
        const hook_ctx *h = hook_ctx_for((pm_domain)d, &saved[d]);
        if (h == NULL) {
            pm_atomic_store_size_relaxed(&sample_mean, 0);
            pm_atomic_store_int_relaxed(&in_block_mode, 0);
            pm_mutex_unlock(&control);
            errno = ENOMEM;
            return -1;
        }
        target[d] = (pm_allocator){(void *)(uintptr_t)h, hook_malloc, hook_calloc, hook_realloc,
                                   hook_free};
    }
    if (pm_domains_install(saved, target) != 0) {
        pm_atomic_store_size_relaxed(&sample_mean, 0);
        pm_atomic_store_int_relaxed(&in_block_mode, 0);
        pm_domain_routes_refresh();
        pm_mutex_unlock(&control);
        return -1;
    }
    memcpy(installed, target, sizeof installed);
    hooks_installed = true;
    pm_domain_routes_refresh(); /* for a hook left on top, which was not installed again */
    pm_atomic_store_int_relaxed(&max_frames, nframes);
    pm_atomic_store_size_relaxed(&peak_bytes, 0);
    /* This thread's countdown may be left from a session at another rate (which the rate
     * check would catch too); zero makes its next call draw at this session's rate. */
    pm_trace_gate.countdown = 0;
    tls.countdown_mean = 0;
    pm_atomic_store_size_release(&active_session, new_session());
    calibrate();
    pm_mutex_unlock(&control);
    return 0;
}

int pm_trace_start(int nframes) {
    return start(nframes, 0);
}

int pm_trace_start_sampling(int nframes, size_t mean_bytes) {
    return start(nframes, mean_bytes ? mean_bytes : PM_TRACE_DEFAULT_SAMPLE_BYTES);
}

void pm_trace_stop(void) {
    bool gil_taken = hold_gil_for_records();
    pm_mutex_lock(&control);
    if (pm_atomic_load_size_relaxed(&active_session) != 0) {
        pm_atomic_store_size_release(&active_session, 0);
        pm_atomic_store_int_relaxed(&max_frames, 0);
        if (hooks_installed) {
            for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
                pm_allocator now;
                (void)pm_get_allocator((pm_domain)d, &now);
                /* Someone wrapped our hook: it stays, passing calls through. */
                if (!pm_allocator_equal(&now, &installed[d])) continue;
                const hook_ctx *h = installed[d].ctx;
                /* Interned records: setting one installed before cannot fail. */
                (void)pm_set_allocator((pm_domain)d, &h->wrapped);
            }
            hooks_installed = false;
        }
        reset_tables(true);
        /* Last, so that a weight computed during the stop still sees the session's mean. */
        pm_atomic_store_size_relaxed(&sample_mean, 0);
        pm_atomic_store_int_relaxed(&in_block_mode, 0);
        pm_domain_routes_refresh();
    }
    pm_mutex_unlock(&control);
    release_gil_for_records(gil_taken);
}

int pm_trace_is_tracing(void) {
    return pm_atomic_load_size_acquire(&active_session) != 0;
}

int pm_trace_get_traceback_limit(void) {
    return pm_trace_is_tracing() ? pm_atomic_load_int_relaxed(&max_frames) : 0;
}

/* The record for (fn, ctx): the one handed out before, else a new one (NULL: no memory).
 * Two threads installing the same new pair at once may make two records; both are valid,
 * so that race costs one record and nothing else. */
static const provider_record *provider_record_for(pm_trace_frame_provider fn, void *ctx) {
    for (const provider_record *r = pm_atomic_load_ptr_acquire(&provider_records); r != NULL;
         r = r->next) {
        if (r->fn == fn && r->ctx == ctx) return r;
    }
    size_t index = pm_atomic_faa_size(&provider_pool_used, 1);
    provider_record *fresh = NULL;
    if (index < PROVIDER_POOL) {
        fresh = &provider_pool[index];
    } else {
        fresh = mmap(NULL, sizeof *fresh, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
        if (fresh == MAP_FAILED) return NULL;
    }
    fresh->fn = fn;
    fresh->ctx = ctx;
    for (;;) {
        const provider_record *head = pm_atomic_load_ptr_relaxed(&provider_records);
        fresh->next = head;
        if (pm_atomic_cas_ptr(&provider_records, head, fresh)) return fresh;
    }
}

int pm_trace_set_frame_provider(pm_trace_frame_provider fn, void *ctx) {
    const provider_record *record = NULL;
    if (fn != NULL) {
        record = provider_record_for(fn, ctx);
        if (record == NULL) {
            errno = ENOMEM;
            return -1;
        }
    }
    pm_atomic_store_ptr_release(&frame_provider, record);
    return 0;
}

/* ---- queries --------------------------------------------------------------------------- */

void pm_trace_get_traced_memory(size_t *current, size_t *peak) {
    size_t now = 0, top = 0;
    if (pm_trace_is_tracing()) {
        now = current_bytes();
        raise_peak(now);
        top = pm_atomic_load_size_relaxed(&peak_bytes);
    }
    if (current != NULL) *current = now;
    if (peak != NULL) *peak = top;
}

void pm_trace_reset_peak(void) {
    size_t session = pm_atomic_load_size_acquire(&active_session);
    if (session == 0) return;
    /* The records' count and trigger change only under the GIL (in_block_add). */
    bool gil_taken = (session & IN_BLOCK_SESSION) && hold_gil_for_records();
    tls.peak_growth = 0;
    pm_atomic_store_size_relaxed(&in_block_peak_trigger,
                                 pm_atomic_load_size_relaxed(&in_block_current) + PEAK_CHECK_BYTES);
    pm_atomic_store_size_relaxed(&peak_bytes, current_bytes());
    release_gil_for_records(gil_taken);
}

void pm_trace_clear_traces(void) {
    bool gil_taken = hold_gil_for_records();
    pm_mutex_lock(&control);
    if (pm_atomic_load_size_relaxed(&active_session) != 0) {
        /* Close the session first: an insert racing with the clear is refused rather than
         * stored with a traceback about to be freed. */
        pm_atomic_store_size_release(&active_session, 0);
        reset_tables(false);
        pm_atomic_store_size_release(&active_session, new_session());
    }
    pm_mutex_unlock(&control);
    release_gil_for_records(gil_taken);
}

/* Visits the live records of the session in the traced heap's pools: the blocks carved and
 * not on their pool's free list. The GIL and the control mutex are held. */
typedef struct in_block_walk {
    pm_trace_visit_fn visit;
    void *ctx;
    int result;
} in_block_walk;

static void visit_arena_records(const pm_arena *arena, void *arg) {
    in_block_walk *walk = arg;
    for (uint32_t i = 0; i < arena->carved_pools && walk->result == 0; i++) {
        const pm_pool *pool = &arena->pools[i];
        if (pm_pool_owner(pool) != &pm_traced_heap || pool->size_class == PM_NO_CLASS ||
            pool->marks == NULL) {
            continue;
        }
        size_t size = pm_class_block_size(pool->size_class);
        uint64_t free_blocks[PM_POOL_SIZE / PM_ALIGNMENT / 64] = {0};
        for (const pm_block *b = pool->free; b != NULL; b = b->next) {
            size_t index = ((uintptr_t)b - pool->memory) / size;
            free_blocks[index / 64] |= (uint64_t)1 << (index % 64);
        }
        for (size_t index = 0; (index + 1) * size <= pool->carve_offset && walk->result == 0;
             index++) {
            if (free_blocks[index / 64] >> (index % 64) & 1) continue;
            uint8_t mark = pool->marks[index];
            if (mark != 0) {
                const in_block_record *r =
                    pm_traced_pool_records_in_block(pool)
                        ? (const in_block_record *)(pool->memory + index * size)
                        : record_beside(pool, index);
                walk->result = walk->visit(walk->ctx, r->tb, marked_size(pool, mark, r));
            }
        }
    }
}

int pm_trace_visit(pm_trace_visit_fn visit, void *ctx) {
    bool gil_taken = hold_gil_for_records();
    pm_mutex_lock(&control);
    size_t session = pm_atomic_load_size_relaxed(&active_session);
    if (session == 0) {
        pm_mutex_unlock(&control);
        release_gil_for_records(gil_taken);
        errno = EINVAL;
        return -1;
    }
    int result = 0;
    if (session & IN_BLOCK_SESSION) {
        in_block_walk walk = {visit, ctx, 0};
        pm_arena_for_each(visit_arena_records, &walk);
        result = walk.result;
    }
    for (size_t i = 0; i < TRACE_SHARDS && result == 0; i++) {
        trace_shard *s = &trace_shards[i];
        pm_spinlock_lock(&s->lock);
        size_t capacity = s->slots ? s->mask + 1 : 0;
        for (size_t j = 0; j < capacity && result == 0; j++) {
            const trace_slot *slot = &s->slots[j];
            if (slot->ptr != 0) result = visit(ctx, slot->tb, accounted(slot->size));
        }
        pm_spinlock_unlock(&s->lock);
    }
    pm_mutex_unlock(&control);
    release_gil_for_records(gil_taken);
    return result;
}

static int copy_traceback(const pm_trace_tb *tb, pm_trace_frame *out, size_t max) {
    for (size_t i = 0; i < max && i < tb->nframes; i++) out[i] = pm_trace_symbolize(tb->frames[i]);
    return (int)tb->nframes;
}

int pm_trace_get_traceback(unsigned int domain, const void *ptr, pm_trace_frame *out, size_t max) {
    if (!pm_trace_is_tracing()) return -1;
    /* A block of the caller's: its record does not change under us. */
    const pm_trace_tb *in_block = in_block_traceback(ptr);
    if (in_block != NULL && in_block->domain == domain) return copy_traceback(in_block, out, max);
    uint64_t h = ptr_hash((uintptr_t)ptr);
    trace_shard *s = &trace_shards[shard_index(h)];
    int n = -1;
    pm_spinlock_lock(&s->lock);
    ptrdiff_t found = shard_find(s, (uintptr_t)ptr, h, domain);
    if (found >= 0) n = copy_traceback(s->slots[found].tb, out, max);
    pm_spinlock_unlock(&s->lock);
    return n;
}

/* ---- PyTraceMalloc_Track / Untrack ------------------------------------------------------- */

/* A block traced in its record is tracked again: the record takes the new trace. The GIL
 * is held. */
static void retrack_in_block(pm_pool *pool, uint8_t *mark, in_block_record *r,
                             const pm_trace_tb *tb, size_t size) {
    in_block_untrace(pool, mark, r);
    in_block_trace(pool, mark, r, tb, size);
}

int pm_trace_track(unsigned int domain, uintptr_t ptr, size_t size) {
    size_t session = pm_atomic_load_size_acquire(&active_session);
    if (session == 0) return -2;
    if (ptr == 0 || size > (size_t)PTRDIFF_MAX) return -1;
    pm_trace_gate.depth++; /* a frame provider allocating here is not traced */
    /* Native frames: capture's own and this function's. */
    const pm_trace_tb *tb = capture(domain, OP_TRACK, session);
    int result = -1;
    if (tb != NULL) {
        pm_pool *pool;
        uint8_t *mark;
        in_block_record *r = in_block_record_of((const void *)ptr, &pool, &mark);
        bool gil_taken = r != NULL && hold_gil_for_records();
        const pm_trace_tb *old = r != NULL && *mark != 0 ? r->tb : NULL;
        /* Traces are keyed by (domain, ptr): another domain's trace goes to the table. */
        if (old != NULL && old->domain == domain) {
            /* Still the session the traceback was interned for (clear takes the GIL). */
            if (pm_atomic_load_size_relaxed(&active_session) == session) {
                retrack_in_block(pool, mark, r, tb, size);
            }
            result = 0;
        } else {
            result = trace_insert(ptr, ptr_hash(ptr), size, tb, session);
        }
        release_gil_for_records(gil_taken);
    }
    pm_trace_gate.depth--;
    return result;
}

int pm_trace_untrack(unsigned int domain, uintptr_t ptr) {
    if (!pm_trace_is_tracing()) return -2;
    pm_pool *pool;
    uint8_t *mark;
    in_block_record *r = in_block_record_of((const void *)ptr, &pool, &mark);
    if (r != NULL) {
        bool gil_taken = hold_gil_for_records();
        if (*mark != 0 && r->tb->domain == domain) in_block_untrace(pool, mark, r);
        release_gil_for_records(gil_taken);
    }
    (void)trace_remove(domain, ptr, ptr_hash(ptr), NULL);
    return 0;
}
