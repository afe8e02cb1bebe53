/*
 * pymalloc_mt.h — the public API of pymalloc-mt.
 *
 * CPython's memory manager as a standalone, thread-safe library. Three allocator domains,
 * each with malloc / calloc / realloc / free:
 *
 *   raw     pm_raw_*   general buffers; callable from any thread, no GIL, lock-free.
 *   mem     pm_mem_*   Python buffers; the GIL must be held (see gil/gil.h).
 *   object  pm_obj_*   Python objects; the GIL must be held.
 *
 * Semantics are CPython's ("ANSI plus"):
 *   - 0 bytes gives a distinct non-NULL pointer (as does calloc with a zero count or size);
 *   - a request above PTRDIFF_MAX bytes (CPython's PY_SSIZE_T_MAX), or a calloc whose
 *     count x size would exceed it, returns NULL without calling the allocator;
 *   - realloc(NULL, n) is malloc(n); realloc(p, 0) resizes p to zero bytes and returns a
 *     non-NULL pointer, it never frees; a failed realloc returns NULL and p stays valid;
 *   - free(NULL) does nothing.
 *
 * A block must be freed (or reallocated) through the domain that allocated it, and by the
 * allocator that made it: an allocator installed with pm_set_allocator() must be able to
 * free the blocks that were live when it was installed, which in practice means it wraps
 * the allocator it replaced (get, then set a wrapper that calls the saved one).
 *
 * Threads: see pm_init() below for per-thread caches and free-threaded mode, in which mem
 * and object need no GIL.
 *
 * The GIL contract (GIL mode) is checked twice: at compile time, functions marked PM_GIL_REQUIRED are
 * clang thread-safety requirements on the capability pm_gil (gil/gil.h), so a caller built
 * with -Wthread-safety must hold it (pm_gil_acquire(), or pm_gil_assert_held() where an
 * embedder's own GIL is installed with pm_gil_set_check()); at run time, the debug hooks
 * report a call made without it, as CPython does.
 *
 * Thread-safety of the tables: pm_set_allocator() may run while other threads allocate
 * through the same domain; every call sees either the old allocator or the new one as a
 * whole, never a mix of the two (see alloc/domain.c).
 */
#ifndef PYMALLOC_MT_H
#define PYMALLOC_MT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gil/gil.h" /* PM_GIL_REQUIRED: mem and object calls need the GIL */

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden visibility; only what is marked PM_API is exported from
 * libpymalloc_mt.so (and internal symbols can be reached without the GOT). */
#if defined(__GNUC__)
#define PM_API __attribute__((visibility("default")))
#else
#define PM_API
#endif

/* The three domains, numbered as CPython's PyMemAllocatorDomain. */
typedef enum pm_domain {
    PM_DOMAIN_RAW = 0,
    PM_DOMAIN_MEM = 1,
    PM_DOMAIN_OBJ = 2,
} pm_domain;

#define PM_DOMAIN_COUNT 3

/* An allocator: four functions and the context they are given (CPython's
 * PyMemAllocatorEx). Every function must be non-NULL. malloc(ctx, 0) and calloc with a zero
 * count or size must return a distinct non-NULL pointer; realloc(ctx, p, 0) must not free. */
typedef struct pm_allocator {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
} pm_allocator;

/* Copies the allocator installed in `domain` to *out. Returns 0, or -1 with errno = EINVAL
 * for an unknown domain or a NULL out (then *out, if any, is zeroed). */
PM_API int pm_get_allocator(pm_domain domain, pm_allocator *out);

/* Installs a copy of *in in `domain`, atomically with respect to concurrent calls. Returns 0,
 * or -1 with errno = EINVAL (and nothing changed) for an unknown domain, a NULL `in` or a
 * NULL function pointer in it. Each distinct allocator ever installed costs one small
 * record that is never freed (readers hold no reference count; see alloc/domain.c). */
PM_API int pm_set_allocator(pm_domain domain, const pm_allocator *in);

/* The raw domain. Lock-free and GIL-free: safe from any thread at any time. */
PM_API void *pm_raw_malloc(size_t size);
PM_API void *pm_raw_calloc(size_t nelem, size_t elsize);
PM_API void *pm_raw_realloc(void *ptr, size_t new_size);
PM_API void pm_raw_free(void *ptr);

/* The mem domain. The caller must hold the GIL. */
PM_API void *pm_mem_malloc(size_t size) PM_GIL_REQUIRED;
PM_API void *pm_mem_calloc(size_t nelem, size_t elsize) PM_GIL_REQUIRED;
PM_API void *pm_mem_realloc(void *ptr, size_t new_size) PM_GIL_REQUIRED;
PM_API void pm_mem_free(void *ptr) PM_GIL_REQUIRED;

/* The object domain. The caller must hold the GIL. */
PM_API void *pm_obj_malloc(size_t size) PM_GIL_REQUIRED;
PM_API void *pm_obj_calloc(size_t nelem, size_t elsize) PM_GIL_REQUIRED;
PM_API void *pm_obj_realloc(void *ptr, size_t new_size) PM_GIL_REQUIRED;
PM_API void pm_obj_free(void *ptr) PM_GIL_REQUIRED;

/* Call counters of the raw domain's public entry points, summed over every thread that
 * ever called them. Kept per thread without atomic read-modify-writes, so reading them is
 * a snapshot, exact once the threads being counted are quiet. */
typedef struct pm_raw_stats {
    uint64_t mallocs;   /* pm_raw_malloc calls, and pm_raw_realloc calls with ptr == NULL */
    uint64_t callocs;   /* pm_raw_calloc calls */
    uint64_t reallocs;  /* pm_raw_realloc calls with ptr != NULL */
    uint64_t frees;     /* pm_raw_free calls with ptr != NULL */
    uint64_t failures;  /* calls that returned NULL (refused sizes included) */
    uint64_t live;      /* blocks allocated and not yet freed: mallocs + callocs - failed
                           allocations - frees */
} pm_raw_stats;

PM_API void pm_get_raw_stats(pm_raw_stats *out);

/* ---- pymalloc: the default allocator of the mem and object domains ------------------ *
 * Requests of 1..512 bytes come from pools of 32 size classes carved from arenas; 0 bytes
 * and larger requests go to the raw domain through its current allocator. */

/* Where pymalloc gets its arenas (CPython's PyObjectArenaAllocator). alloc is always asked
 * for exactly one arena size and free is given the same size back. A NULL from alloc makes
 * the allocation that needed the arena return NULL; the heap stays consistent. */
typedef struct pm_arena_allocator {
    void *ctx;
    void *(*alloc)(void *ctx, size_t size);
    void (*free)(void *ctx, void *ptr, size_t size);
} pm_arena_allocator;

/* Get and set the arena allocator (the GIL must be held). Each arena is given back to the
 * allocator that made it. Set returns -1 with errno = EINVAL for NULL or a NULL function. */
PM_API int pm_get_arena_allocator(pm_arena_allocator *out) PM_GIL_REQUIRED;
PM_API int pm_set_arena_allocator(const pm_arena_allocator *in) PM_GIL_REQUIRED;

/* The arena size in bytes (256 KiB by default). */
PM_API size_t pm_arena_size(void);

/* Wholly free arenas are kept mapped, up to this many bytes, so that a program that frees
 * everything and allocates again does not pay for unmapping and re-faulting; the rest go
 * back to the OS at once. Default 768 KiB (at least one arena); 0 releases every free arena
 * immediately. Lowering it releases the excess now. (GIL held.) */
PM_API void pm_set_arena_reserve(size_t bytes) PM_GIL_REQUIRED;
PM_API size_t pm_get_arena_reserve(void) PM_GIL_REQUIRED;

/* Live blocks allocated by pymalloc, including those it passed to the raw domain: CPython's
 * sys.getallocatedblocks(). (GIL held.) */
PM_API size_t pm_allocated_blocks(void) PM_GIL_REQUIRED;

/* Prints pymalloc's state in the layout of CPython 3.11's sys._debugmallocstats(). */
PM_API void pm_print_stats(FILE *out) PM_GIL_REQUIRED;

/* The same numbers as one JSON object. Writes at most `size` bytes including the NUL and
 * returns the length the whole text needs (as snprintf does), or 0 on error. */
PM_API size_t pm_stats_json(char *buf, size_t size) PM_GIL_REQUIRED;

/* Walks every arena, pool and free list and checks pymalloc's invariants. Returns NULL when
 * the heap is consistent, else a description of the first violation (valid until the next
 * call from the same thread). (GIL held.) */
PM_API const char *pm_heap_check(void) PM_GIL_REQUIRED;

/* ---- threads: GIL mode, thread caches, free-threaded mode --------------------------- *
 * By default (GIL mode) the mem and object domains share one heap and the caller holds the
 * GIL, as in CPython. pm_init() can instead give every thread a cache of pools of its own
 * (alloc/thread_cache.c): its own blocks are allocated and freed without a lock or an
 * atomic read-modify-write, blocks freed by other threads come back through a lock-free
 * list, and the arenas and shared pools sit behind locks taken only when a cache needs or
 * returns a pool. With free_threaded set, mem and object need no GIL at all. */
typedef struct pm_config {
    int free_threaded;  /* 1: mem/object callable from any thread without the GIL (implies
                           thread caches); the debug hooks stop asking for the GIL */
    int thread_caches;  /* 1: per-thread caches in GIL mode too */
    /* Bounds on the memory a cache keeps beyond live blocks: the empty pools it holds for
     * reuse, per size class, and in bytes per thread and over all threads (each thread may
     * keep at most total / threads). A pool emptied beyond them goes back to its arena.
     * (Partly used pools stay with the thread whose blocks they hold, until it detaches.) */
    size_t cache_pools_per_class;   /* default 8 */
    size_t cache_bytes_per_thread;  /* default 1 MiB */
    size_t cache_bytes_total;       /* default 64 MiB */
} pm_config;

/* Fills *config with GIL mode and the default bounds. */
PM_API void pm_config_init(pm_config *config);

/* Selects the mode. Only before the first mem or object call (the first one fixes the
 * mode): returns 0, or -1 with errno = EBUSY after that, EINVAL for NULL or a bound that
 * does not fit. May be called again until then; the last call wins. */
PM_API int pm_init(const pm_config *config);

/* The configuration in force (pm_config_init's defaults if pm_init never ran). */
PM_API void pm_get_config(pm_config *out);
PM_API int pm_is_free_threaded(void);

/* Returns the calling thread's cache: its pools go to the shared lists (partly used or full)
 * or their arenas (empty), and blocks other threads freed into them are applied first.
 * Runs by itself at thread exit (a pthread key destructor); runtimes that manage threads
 * themselves call it when a thread stops allocating. The thread may allocate again later
 * (it gets a cache again). No-op for a thread that never allocated. */
PM_API void pm_thread_detach(void);

/* Applies the blocks other threads freed and that are still waiting on remote-free lists:
 * the calling thread's own, the shared pools' and those of exited threads. A cache applies
 * its own list whenever it runs out of a size class, so this is for quiet points (a
 * runtime's GC, before statistics); it takes the pool lock. No-op in GIL mode without
 * caches, which has no remote frees. */
PM_API void pm_collect(void);

/* For callers built with -Wthread-safety: in free-threaded mode, states that the mem and
 * object calls that follow need no GIL (the analysis then treats pm_gil as held). Aborts
 * with a message if pm_init() did not select free-threaded mode. */
PM_API void pm_assert_free_threaded(void) PM_ASSERT_CAPABILITY(pm_gil);

/* ---- configuration by name ---------------------------------------------------------- *
 * Names as PYTHONMALLOC takes them, with CPython's meanings:
 *
 *   "default" (or ""), "pymalloc"   the C library's allocator in raw, pymalloc in mem and obj
 *   "malloc"                        the C library's allocator in all three domains
 *   "debug", "pymalloc_debug"       "pymalloc" with the debug hooks on every domain
 *   "malloc_debug"                  "malloc" with the debug hooks on every domain
 *
 * Returns 0, or -1 with nothing changed and errno = EINVAL for an unknown name (or NULL),
 * ENOMEM if a hook cannot be made, or EBUSY when the change would strand live blocks that
 * the new allocator could not free: taking the mem or object domain away from pymalloc
 * while pymalloc has live blocks (pm_allocated_blocks() > 0), which covers adding the
 * debug hooks over pymalloc too; removing or replacing the hooks in a domain while blocks
 * they made are live (their pointers are 16 bytes into an allocation, which nothing else
 * can free). The C library's own blocks are counted by nobody, so adding the hooks over
 * them is allowed, and freeing such a block through the hooks later is a fatal "bad ID"
 * report. Installing what is already installed always succeeds. (GIL held; see
 * alloc/config.c.) */
PM_API int pm_setup_allocators(const char *name) PM_GIL_REQUIRED;

/* The name of what is installed: "pymalloc" (also after "default"), "malloc",
 * "pymalloc_debug" (also after "debug") or "malloc_debug"; NULL when some domain holds
 * anything else (a hook, a user's allocator, debug hooks over something else), as CPython's
 * _PyMem_GetCurrentAllocatorName(). */
PM_API const char *pm_current_allocator_name(void);

/* Applies PYTHONMALLOC and PYTHONMALLOCSTATS from the environment. PYTHONMALLOC unset or
 * empty changes nothing; otherwise as pm_setup_allocators(). PYTHONMALLOCSTATS non-empty
 * prints pm_print_stats() to stderr before each new arena and once at exit (when pymalloc
 * is installed then). Returns 0, or -1 after printing the reason to stderr on one line,
 * "pymalloc-mt: PYTHONMALLOC=<value>: <reason>" for a refused name, which changes nothing
 * (an unknown or unavailable name is never silently replaced). Call it at start-up, before
 * any other thread runs. */
PM_API int pm_init_from_env(void) PM_GIL_REQUIRED;

/* ---- CPython's debug hooks (PYTHONMALLOC=debug, PyMem_SetupDebugHooks) ------------- *
 * Each domain's allocator is wrapped by a hook that surrounds every block with pad bytes
 * and checks them, exactly as CPython 3.11 does (alloc/debug_hooks.c has the layout):
 *
 *   [SSSS SSSS I FFFFFFF DDDD...DDDD FFFFFFFF]   S size, I API id, F 0xFD, D data
 *
 * New data reads 0xCD (calloc's is zeroed), bytes gained by realloc 0xCD, a freed block
 * 0xDD. free and realloc check, in this order, that the block was allocated through the
 * same domain, that the 7 pad bytes before it and the 8 after it are intact; if not, the
 * block is described on stderr in CPython's words and a fatal error follows, e.g.
 *
 *   Fatal Python error: _PyMem_DebugRawFree: bad trailing pad byte
 *
 * The mem and object hooks also check that the caller holds the GIL (pm_gil_held(), see
 * gil/gil.h), before anything else and even for free(NULL):
 *
 *   Fatal Python error: _PyMem_DebugMalloc: Python memory allocator called without holding the GIL
 *
 * The raw hooks stay lock-free and never look at the GIL. */

/* Wraps the allocator currently installed in each domain with the debug hook, as CPython's
 * PyMem_SetupDebugHooks(). A domain that already holds the hook is left alone (installing
 * twice never wraps twice); after pm_set_allocator() replaces the hook in a domain, calling
 * this again wraps the new allocator. Blocks allocated before the hooks were installed
 * must not be freed through them (they would be reported as "bad ID"), so install before
 * allocating, like pm_setup_allocators(). Returns 0, or -1 with errno = ENOMEM (nothing
 * changed) when no memory is left for a hook's context. */
PM_API int pm_setup_debug_hooks(void) PM_GIL_REQUIRED;

/* Installs the function that fatal errors call, with CPython's function name and reason:
 * handler("_PyMem_DebugRawFree", "bad trailing pad byte"). The block report, if any, has
 * been written to stderr already; the "Fatal Python error: <func>: <message>" line is the
 * default handler's, which then aborts. NULL restores the default. The handler must not
 * return (abort, exit, or longjmp out: nothing was changed before the check failed); if it
 * returns, the default runs. Safe to call from any thread at any time. */
PM_API void pm_set_fatal_handler(void (*handler)(const char *func, const char *message));

/* ---- the object family -------------------------------------------------------------- *
 * A minimal object model, as CPython's PyObject_New family uses it. */
typedef struct pm_type {
    const char *tp_name;
    size_t tp_basicsize; /* bytes of a fixed-size object, header included */
    size_t tp_itemsize;  /* bytes per item of a variable-size object, else 0 */
} pm_type;

typedef struct pm_object {
    ptrdiff_t ob_refcnt;
    const pm_type *ob_type;
} pm_object;

typedef struct pm_var_object {
    pm_object ob_base;
    ptrdiff_t ob_size; /* number of items */
} pm_var_object;

/* From the object domain (the GIL must be held); reference count 1 and type set (and
 * ob_size = nitems), the rest uninitialised. pm_object_new takes tp_basicsize bytes;
 * pm_object_new_var takes tp_basicsize + nitems * tp_itemsize rounded up to a multiple of
 * sizeof(void *), as CPython's _PyObject_VAR_SIZE. NULL with errno = ENOMEM when memory is
 * short or that size overflows or exceeds PTRDIFF_MAX (nitems too: ob_size must hold it),
 * in which case the allocator is not called; NULL with errno = EINVAL for a NULL type or a
 * tp_basicsize smaller than the header (sizeof(pm_object), or sizeof(pm_var_object)). */
PM_API pm_object *pm_object_new(const pm_type *type) PM_GIL_REQUIRED;
PM_API pm_var_object *pm_object_new_var(const pm_type *type, size_t nitems) PM_GIL_REQUIRED;
/* Frees an object made by the two above: pm_obj_free (NULL does nothing). */
PM_API void pm_object_del(void *op) PM_GIL_REQUIRED;

/* ---- tracing (CPython's tracemalloc) ------------------------------------------------ *
 * While tracing, every block allocated through any domain is recorded with its domain, the
 * size asked for at the outermost call (pymalloc's fall-back to the raw domain is not
 * traced twice) and a traceback of at most nframes frames. The hooks are ordinary
 * allocators installed with pm_set_allocator() over whatever each domain held, and add no
 * header to blocks, so blocks cross the start and the stop of tracing freely. The raw hook
 * never takes the GIL and no hook puts all threads behind one lock (alloc/trace.c).
 *
 * Tracebacks come from the frame provider when one is installed (how a language runtime
 * hands over its own stack), else from the native stack: a native frame reads as the
 * object file that holds the return address and the address's offset in it, so
 * `addr2line -e <file> <offset>` names the line. Frames are most recent first. */

#define PM_TRACE_MAX_FRAMES 65535

/* One frame. `filename` is never NULL; provider filenames are stored as pointers, not
 * copied, so they must stay valid while any trace or snapshot may refer to them (static
 * or interned strings, as a runtime's code objects hold). */
typedef struct pm_trace_frame {
    const char *filename;
    size_t lineno;
} pm_trace_frame;

/* Writes up to max_frames frames of the calling thread's stack, most recent first, and
 * returns how many. Called inside an allocation, with no tracer lock held; what it
 * allocates through the domains is not traced. */
typedef size_t (*pm_trace_frame_provider)(void *ctx, pm_trace_frame *frames, size_t max_frames);

/* Installs the provider (NULL: native stacks). Safe at any time from any thread; each
 * (fn, ctx) pair ever installed keeps 24 bytes for ever (readers take no reference);
 * installing one again reuses them.
 * Returns 0, or -1 with errno = ENOMEM. */
PM_API int pm_trace_set_frame_provider(pm_trace_frame_provider fn, void *ctx);

/* Starts tracing every allocation, keeping nframes frames per trace (CPython's
 * tracemalloc.start(nframes)). Already tracing: sets nframes for new traces. Returns 0, or
 * -1 with errno = EINVAL (nframes outside 1..65535), EBUSY (tracing in sampling mode), or
 * ENOMEM (no memory for a hook).
 *
 * In GIL mode without thread caches, a mem or object block of up to 480 bytes traced by
 * such a session is 16 bytes larger than asked (the trace lives in it, see alloc/trace.c),
 * and one of 481 to 512 bytes is a 512-byte block (its trace lives beside its pool);
 * and pm_trace_stop, pm_trace_clear_traces, pm_trace_reset_peak, snapshots, and
 * track/untrack of such a block take the GIL when the calling thread does not hold it. */
PM_API int pm_trace_start(int nframes) PM_GIL_REQUIRED;

/* Starts tracing a sample of allocations: on average one per mean_bytes bytes allocated
 * (a Poisson process over bytes, per thread). A sampled block of s bytes stands for
 * s / (1 - exp(-s / mean_bytes)) bytes, an unbiased estimate of what its unsampled
 * neighbours add up to; current and peak memory and snapshot sizes are such estimates,
 * and snapshot counts are of sampled blocks. 0 means PM_TRACE_DEFAULT_SAMPLE_BYTES.
 * Errors as pm_trace_start, plus EBUSY when tracing with another mode or rate. */
#define PM_TRACE_DEFAULT_SAMPLE_BYTES ((size_t)512 * 1024)
PM_API int pm_trace_start_sampling(int nframes, size_t mean_bytes) PM_GIL_REQUIRED;

/* Stops tracing and forgets every trace. Each domain whose allocator is still the hook
 * gets back what the hook wrapped; a hook that someone else has wrapped since stays in
 * place and passes calls straight through. */
PM_API void pm_trace_stop(void);

PM_API int pm_trace_is_tracing(void);
/* nframes of the running session, 0 when not tracing. */
PM_API int pm_trace_get_traceback_limit(void);

/* Bytes of traced blocks now, and the peak since start, clear or reset (both 0 when not
 * tracing). current is exact once the threads allocating are quiet; peak is at most 16 KiB
 * per allocating thread below the true peak (see alloc/trace.c). */
PM_API void pm_trace_get_traced_memory(size_t *current, size_t *peak);
/* Sets the peak to the current traced memory. */
PM_API void pm_trace_reset_peak(void);
/* Forgets every trace (tracing goes on). Blocks being allocated while it runs may stay
 * untraced. */
PM_API void pm_trace_clear_traces(void);
/* Bytes the tracer itself holds for its tables and tracebacks (tracemalloc's
 * get_tracemalloc_memory()), the records kept in blocks, and the marks of the pools that
 * served such blocks: a byte a block, kept from one session to the next (at most about 3%
 * of the pools' memory). */
PM_API size_t pm_trace_get_memory(void);
/* Traces that could not be stored (no memory for the tables) after a realloc had already
 * succeeded: those blocks are valid and untraced. */
PM_API size_t pm_trace_lost_traces(void);

/* Copies the traceback of a traced block to out (up to max frames, most recent first) and
 * returns the number of frames it has, or -1 when the block is not traced. Native frames
 * are symbolised. domain: 0..2 for the allocator domains, or a pm_trace_track domain. */
PM_API int pm_trace_get_traceback(unsigned int domain, const void *ptr, pm_trace_frame *out,
                                  size_t max);

/* CPython's PyTraceMalloc_Track / PyTraceMalloc_Untrack: record or forget foreign memory,
 * with the caller's traceback. Any domain number is its own namespace (0..2 are the
 * allocator domains). Track returns 0, -1 when the trace cannot be stored (no memory, or
 * ptr 0), -2 when not tracing; tracking a tracked (domain, ptr) replaces its trace.
 * Untrack returns 0 (an unknown pointer is fine) or -2 when not tracing. Meant for memory
 * the traced domains did not hand out: a block of pymalloc's pools that the tracer did not
 * trace itself (one allocated before the session, or any while sampling), tracked by hand
 * in domain mem or object, is not untracked by its free, which takes pymalloc's fast path;
 * untrack it before freeing it. */
PM_API int pm_trace_track(unsigned int domain, uintptr_t ptr, size_t size);
PM_API int pm_trace_untrack(unsigned int domain, uintptr_t ptr);

/* Snapshots: a copy of every trace at one moment, owned by the caller (tracemalloc's
 * take_snapshot()). NULL with errno = EINVAL when not tracing, ENOMEM. */
typedef struct pm_trace_snapshot pm_trace_snapshot;
PM_API pm_trace_snapshot *pm_trace_take_snapshot(void);
PM_API void pm_trace_snapshot_free(pm_trace_snapshot *snapshot);
/* Traces in the snapshot, and their total size. */
PM_API size_t pm_trace_snapshot_count(const pm_trace_snapshot *snapshot);
PM_API size_t pm_trace_snapshot_size(const pm_trace_snapshot *snapshot);

typedef enum pm_trace_group {
    PM_TRACE_BY_TRACEBACK = 0, /* whole tracebacks */
    PM_TRACE_BY_LINENO = 1,    /* the most recent frame: file and line */
    PM_TRACE_BY_FILENAME = 2,  /* the most recent frame's file (its line reads 0) */
} pm_trace_group;

/* One group. frames point into the snapshot(s) the statistics came from: keep them alive.
 * size_diff and count_diff are set by pm_trace_snapshot_compare only. */
typedef struct pm_trace_stat {
    const pm_trace_frame *frames; /* most recent first */
    size_t nframes;
    size_t size;
    size_t count;
    ptrdiff_t size_diff;
    ptrdiff_t count_diff;
} pm_trace_stat;

typedef struct pm_trace_stats {
    pm_trace_stat *items;
    size_t count;
    int is_diff; /* from pm_trace_snapshot_compare */
} pm_trace_stats;

/* Statistics of one snapshot, largest size first (ties: larger count first, then by key):
 * tracemalloc's Snapshot.statistics(key_type). NULL with errno = EINVAL or ENOMEM. */
PM_API pm_trace_stats *pm_trace_snapshot_statistics(const pm_trace_snapshot *snapshot,
                                                     pm_trace_group group);
/* now minus old, group by group (groups in either), largest |size_diff| first:
 * tracemalloc's Snapshot.compare_to(old, key_type). */
PM_API pm_trace_stats *pm_trace_snapshot_compare(const pm_trace_snapshot *now,
                                                 const pm_trace_snapshot *old,
                                                 pm_trace_group group);
PM_API void pm_trace_stats_free(pm_trace_stats *stats);

/* The first `limit` groups (0: all) as text, one per line, as tracemalloc prints them:
 *   file.py:12: size=1536 KiB, count=3, average=512 KiB
 *   file.py:12: size=1536 KiB (+512 KiB), count=3 (+1), average=512 KiB     (compare)
 * or as a JSON array of {"file","line","size","count"[,"size_diff","count_diff"],
 * "traceback":[{"file","line"}...]}. Both write at most `size` bytes including the NUL and
 * return the length the whole text needs, as snprintf does. */
PM_API size_t pm_trace_stats_format(const pm_trace_stats *stats, size_t limit, char *buf,
                                    size_t size);
PM_API size_t pm_trace_stats_json(const pm_trace_stats *stats, size_t limit, char *buf,
                                  size_t size);

#ifdef __cplusplus
}
#endif

#endif /* PYMALLOC_MT_H */
