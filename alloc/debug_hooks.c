/*
 * debug_hooks.c — CPython 3.11's debug hooks on the memory allocators (PYTHONMALLOC=debug,
 * PyMem_SetupDebugHooks), byte for byte: the same block layout, fill bytes, checks, report
 * text and fatal errors, so tools and tests written against CPython's hooks work unchanged.
 *
 * What it owns. The hook functions, their interned contexts (one per API id and wrapped
 * allocator), pm_setup_debug_hooks(), and the block report. Installing goes through
 * pm_set_allocator(); the fatal error itself is alloc/fatal.c's.
 *
 * The block. A hook asks the allocator it wraps for n + 24 bytes and hands out p:
 *
 *   [SSSS SSSS I FFFFFFF DDDD...DDDD FFFFFFFF]
 *    ^ p-16    ^ p-8     ^ p          ^ p+n (tail)
 *
 *   S  the n bytes requested, as 8 bytes big-endian (sizeof(size_t) on 64-bit)
 *   I  the API id of the domain that allocated: 'r' raw, 'm' mem, 'o' object
 *   F  FORBIDDENBYTE 0xFD: 7 before the data, 8 after it, starting exactly at p+n (no
 *      rounding, so a one-byte overflow is caught whatever n is)
 *   D  the data: 0xCD when new (CLEANBYTE; calloc's is zeroed instead), bytes gained by
 *      realloc 0xCD too; the whole block, header and trailer included, is set to 0xDD
 *      (DEADBYTE) just before it is given back, so use-after-free reads 0xDD...
 *
 * No serial number (CPython builds without PYMEM_DEBUG_SERIALNO by default). The data is
 * 16-byte aligned whenever the wrapped allocator's blocks are.
 *
 * Checks, on free and realloc, in CPython's order, each fatal: the API id (a block freed
 * through another domain than the one that made it), then the 7 leading pad bytes (an
 * underflow; checked before the size is trusted), then the 8 trailing ones (an overflow).
 * On failure the block is described on stderr (report_block: CPython's
 * _PyObject_DebugDumpAddress, line for line) and pm_fatal_error() runs with CPython's
 * function and reason: "_PyMem_DebugRawFree" for frees, "_PyMem_DebugRawRealloc" for
 * reallocs, whatever the domain (CPython's mem and object hooks call the raw ones), and
 * "bad ID: Allocated using API 'm', verified using API 'r'" (stored id first), "bad
 * leading pad byte" or "bad trailing pad byte". Nothing is changed before a check fails,
 * so a handler that longjmps out leaves the block exactly as it was.
 *
 * realloc follows CPython's _PyMem_DebugRawRealloc: check the block; refuse a size whose
 * total would exceed PY_SSIZE_T_MAX (NULL, old block untouched); then mark the old block
 * dead before the wrapped realloc moves or frees it: the header, the trailer and up to 64
 * data bytes at each end (all of it when the data is at most 128 bytes) are saved on the
 * stack and set to 0xDD, so a block left behind by a moving realloc reads as freed. After
 * the call the header and trailer are rewritten, the saved bytes put back, and growth set
 * to 0xCD. If the wrapped realloc fails, the old block is restored whole and NULL returned.
 *
 * The GIL. The mem and object hooks check pm_gil_held() before anything else, even for
 * free(NULL), and report CPython's "_PyMem_DebugMalloc: Python memory allocator called
 * without holding the GIL" (Calloc, Realloc, Free likewise; the object domain reports the
 * same names, as CPython's do) with no block report. The raw hooks never look at the GIL.
 *
 * Thread-safety. The raw hooks are as lock-free as the raw domain: a context is immutable
 * once published (its copy of the wrapped allocator never changes), and the only shared
 * write is the atomic live-block counter. Contexts are interned and never freed, like the
 * allocator records of alloc/domain.c, for the same reason: a caller may still be inside a
 * hook long after it was replaced. Re-installing the hooks over a different allocator
 * therefore publishes a different context rather than rewriting one in place, which a
 * concurrent raw call could see half-written (CPython rewrites its one static struct;
 * with its GIL that is safe for mem and object, not for raw). Cost: 64 bytes per distinct
 * (domain, wrapped allocator) pair ever hooked, from a static pool of 16, then a page each.
 *
 * The live-block counter (one atomic add per call) exists for pm_setup_allocators(): it
 * refuses (EBUSY) to take the hooks away from a domain whose hooked blocks are still live,
 * because nothing else can free a block whose pointer is 16 bytes into an allocation.
 *
 * Overhead, per call, on top of the wrapped allocator: one atomic add, the header and
 * trailer stores, and a memset of the data (CPython's cost too); free and realloc also
 * check 16 bytes and set the block to 0xDD. Slow paths (the report, the GIL failure) are
 * cold and out of line.
 */
#include "alloc/internal/debug_hooks.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc/internal/domain.h"
#include "alloc/internal/fatal.h"
#include "alloc/internal/pymalloc.h"
#include "gil/gil.h"
#include "sync/sync.h"

#define SST PM_DEBUG_SST
#define EXTRA_BYTES PM_DEBUG_EXTRA_BYTES

/* realloc saves and marks this many data bytes at each end of the old block. */
#define ERASED_SIZE 64

pm_debug_traceback_fn pm_debug_traceback_printer;

static const uint8_t forbidden_bytes[SST] = {
    PM_DEBUG_FORBIDDENBYTE, PM_DEBUG_FORBIDDENBYTE, PM_DEBUG_FORBIDDENBYTE,
    PM_DEBUG_FORBIDDENBYTE, PM_DEBUG_FORBIDDENBYTE, PM_DEBUG_FORBIDDENBYTE,
    PM_DEBUG_FORBIDDENBYTE, PM_DEBUG_FORBIDDENBYTE,
};
static_assert(sizeof(size_t) == 8, "forbidden_bytes and the report assume 8-byte size_t");

/* ---- the block ----------------------------------------------------------------------- */

static inline void write_size(uint8_t *at, size_t n) {
    for (size_t i = SST; i-- > 0;) {
        at[i] = (uint8_t)n;
        n >>= 8;
    }
}

static inline size_t read_size(const uint8_t *at) {
    size_t n = 0;
    for (size_t i = 0; i < SST; i++) n = (n << 8) | at[i];
    return n;
}

/* Writes the header and trailer of a block of n data bytes at head; returns the data. */
static inline uint8_t *decorate(uint8_t *head, size_t n, char api_id) {
    write_size(head, n);
    head[SST] = (uint8_t)api_id;
    memset(head + SST + 1, PM_DEBUG_FORBIDDENBYTE, SST - 1);
    uint8_t *data = head + 2 * SST;
    memset(data + n, PM_DEBUG_FORBIDDENBYTE, SST);
    return data;
}

static inline void count_live(pm_debug_ctx *ctx, size_t delta) {
    (void)pm_atomic_faa_size(&ctx->live_blocks, delta);
}

/* ---- the report ---------------------------------------------------------------------- */

/* CPython's _PyObject_DebugDumpAddress, then its _PyMem_DumpTraceback, to stderr. */
__attribute__((cold, noinline)) static void report_block(const uint8_t *p) {
    pm_report r;
    pm_report_init(&r, STDERR_FILENO);
    pm_report_str(&r, "Debug memory block at address p=");
    pm_report_pointer(&r, p);
    pm_report_str(&r, ": API '");
    pm_report_char(&r, (char)p[-(ptrdiff_t)SST]);
    pm_report_str(&r, "'\n");

    size_t n = read_size(p - 2 * SST);
    pm_report_str(&r, "    ");
    pm_report_size(&r, n);
    pm_report_str(&r, " bytes originally requested\n");

    /* The leading pad first: if it is damaged, the size may be too. */
    pm_report_str(&r, "    The 7 pad bytes at p-7 are ");
    if (memcmp(p - (SST - 1), forbidden_bytes, SST - 1) == 0) {
        pm_report_str(&r, "FORBIDDENBYTE, as expected.\n");
    } else {
        pm_report_str(&r, "not all FORBIDDENBYTE (0xfd):\n");
        for (size_t i = SST - 1; i >= 1; i--) {
            uint8_t byte = p[-(ptrdiff_t)i];
            pm_report_str(&r, "        at p-");
            pm_report_size(&r, i);
            pm_report_str(&r, ": 0x");
            pm_report_hex_byte(&r, byte);
            if (byte != PM_DEBUG_FORBIDDENBYTE) pm_report_str(&r, " *** OUCH");
            pm_report_char(&r, '\n');
        }
        pm_report_str(&r, "    Because memory is corrupted at the start, the count of bytes "
                          "requested\n"
                          "       may be bogus, and checking the trailing pad bytes may "
                          "segfault.\n");
    }

    const uint8_t *tail = p + n;
    pm_report_str(&r, "    The 8 pad bytes at tail=");
    pm_report_pointer(&r, tail);
    pm_report_str(&r, " are ");
    if (memcmp(tail, forbidden_bytes, SST) == 0) {
        pm_report_str(&r, "FORBIDDENBYTE, as expected.\n");
    } else {
        pm_report_str(&r, "not all FORBIDDENBYTE (0xfd):\n");
        for (size_t i = 0; i < SST; i++) {
            pm_report_str(&r, "        at tail+");
            pm_report_size(&r, i);
            pm_report_str(&r, ": 0x");
            pm_report_hex_byte(&r, tail[i]);
            if (tail[i] != PM_DEBUG_FORBIDDENBYTE) pm_report_str(&r, " *** OUCH");
            pm_report_char(&r, '\n');
        }
    }

    /* Up to 8 bytes from the start, then " ..." and the last 8 if more than 8 remain. */
    if (n > 0) {
        pm_report_str(&r, "    Data at p:");
        const uint8_t *q = p;
        for (int i = 0; q < tail && i < 8; i++, q++) {
            pm_report_char(&r, ' ');
            pm_report_hex_byte(&r, *q);
        }
        if (q < tail) {
            if (tail - q > 8) {
                pm_report_str(&r, " ...");
                q = tail - 8;
            }
            for (; q < tail; q++) {
                pm_report_char(&r, ' ');
                pm_report_hex_byte(&r, *q);
            }
        }
        pm_report_char(&r, '\n');
    }
    pm_report_char(&r, '\n');

    pm_debug_traceback_fn printer = (pm_debug_traceback_fn)(uintptr_t)pm_atomic_load_ptr_acquire(
        &pm_debug_traceback_printer);
    if (printer == NULL) {
        pm_report_str(&r, "Enable tracemalloc to get the memory block allocation traceback\n\n");
        pm_report_flush(&r);
    } else {
        pm_report_flush(&r);
        printer(STDERR_FILENO, p);
    }
}

__attribute__((cold, noinline, noreturn)) static void fail_bad_id(const char *func,
                                                                   const uint8_t *p,
                                                                   char stored, char expected) {
    report_block(p);
    /* "%c" of whatever byte is stored, NUL included, as CPython prints it. */
    static const char part1[] = "bad ID: Allocated using API '";
    static const char part2[] = "', verified using API '";
    char message[sizeof part1 + sizeof part2 + 4];
    size_t used = 0;
    memcpy(message + used, part1, sizeof part1 - 1);
    used += sizeof part1 - 1;
    message[used++] = stored;
    memcpy(message + used, part2, sizeof part2 - 1);
    used += sizeof part2 - 1;
    message[used++] = expected;
    message[used++] = '\'';
    pm_fatal_error_n(func, message, used);
}

__attribute__((cold, noinline, noreturn)) static void fail_bad_pad(const char *func,
                                                                    const uint8_t *p,
                                                                    const char *reason) {
    report_block(p);
    pm_fatal_error(func, reason);
}

/* CPython's _PyMem_DebugCheckAddress. Returns only if the block is intact. */
static inline void check_block(const char *func, const pm_debug_ctx *ctx, const uint8_t *p) {
    char stored = (char)p[-(ptrdiff_t)SST];
    if (PM_SYNC_UNLIKELY(stored != ctx->api_id)) fail_bad_id(func, p, stored, ctx->api_id);
    if (PM_SYNC_UNLIKELY(memcmp(p - (SST - 1), forbidden_bytes, SST - 1) != 0))
        fail_bad_pad(func, p, "bad leading pad byte");
    const uint8_t *tail = p + read_size(p - 2 * SST);
    if (PM_SYNC_UNLIKELY(memcmp(tail, forbidden_bytes, SST) != 0))
        fail_bad_pad(func, p, "bad trailing pad byte");
}

/* ---- the hooks ------------------------------------------------------------------------ */

static void *debug_alloc(pm_debug_ctx *ctx, bool zeroed, size_t n) {
    /* The total must fit PY_SSIZE_T_MAX, as CPython requires. */
    if (n > (size_t)PTRDIFF_MAX - EXTRA_BYTES) return NULL;
    size_t total = n + EXTRA_BYTES;
    uint8_t *head = zeroed ? ctx->wrapped.calloc(ctx->wrapped.ctx, 1, total)
                           : ctx->wrapped.malloc(ctx->wrapped.ctx, total);
    if (head == NULL) return NULL;
    uint8_t *data = decorate(head, n, ctx->api_id);
    if (!zeroed) memset(data, PM_DEBUG_CLEANBYTE, n);
    count_live(ctx, 1);
    return data;
}

static void *debug_calloc(pm_debug_ctx *ctx, size_t nelem, size_t elsize) {
    /* The entry points refuse this already; a caller of the table directly may not. */
    if (elsize != 0 && nelem > (size_t)PTRDIFF_MAX / elsize) return NULL;
    return debug_alloc(ctx, true, nelem * elsize);
}

static void debug_free(pm_debug_ctx *ctx, void *p) {
    if (p == NULL) return;
    uint8_t *data = p;
    check_block("_PyMem_DebugRawFree", ctx, data);
    uint8_t *head = data - 2 * SST;
    memset(head, PM_DEBUG_DEADBYTE, read_size(head) + EXTRA_BYTES);
    ctx->wrapped.free(ctx->wrapped.ctx, head);
    count_live(ctx, (size_t)-1);
}

static inline size_t min_size(size_t a, size_t b) {
    return a < b ? a : b;
}

static void *debug_realloc(pm_debug_ctx *ctx, void *p, size_t n) {
    if (p == NULL) return debug_alloc(ctx, false, n);
    uint8_t *data = p;
    check_block("_PyMem_DebugRawRealloc", ctx, data);
    uint8_t *head = data - 2 * SST;
    size_t old_n = read_size(head);
    if (n > (size_t)PTRDIFF_MAX - EXTRA_BYTES) return NULL;
    size_t total = n + EXTRA_BYTES;

    /* Mark the old block dead (header, trailer, up to ERASED_SIZE bytes at each end),
     * keeping a copy of the data bytes overwritten. */
    uint8_t saved[2 * ERASED_SIZE];
    uint8_t *tail = data + old_n;
    if (old_n <= sizeof saved) {
        memcpy(saved, data, old_n);
        memset(head, PM_DEBUG_DEADBYTE, old_n + EXTRA_BYTES);
    } else {
        memcpy(saved, data, ERASED_SIZE);
        memset(head, PM_DEBUG_DEADBYTE, 2 * SST + ERASED_SIZE);
        memcpy(saved + ERASED_SIZE, tail - ERASED_SIZE, ERASED_SIZE);
        memset(tail - ERASED_SIZE, PM_DEBUG_DEADBYTE, ERASED_SIZE + SST);
    }

    uint8_t *moved = ctx->wrapped.realloc(ctx->wrapped.ctx, head, total);
    if (moved == NULL) {
        n = old_n; /* failed: the old block is still ours; restore it whole */
    } else {
        head = moved;
    }
    data = decorate(head, n, ctx->api_id);
    if (old_n <= sizeof saved) {
        memcpy(data, saved, min_size(n, old_n));
    } else {
        memcpy(data, saved, min_size(n, ERASED_SIZE));
        size_t last = old_n - ERASED_SIZE; /* where the saved last bytes were */
        if (n > last) memcpy(data + last, saved + ERASED_SIZE, min_size(n - last, ERASED_SIZE));
    }
    if (moved == NULL) return NULL;
    if (n > old_n) memset(data + old_n, PM_DEBUG_CLEANBYTE, n - old_n);
    return data;
}

/* The raw domain's hooks: no GIL check. */
static void *raw_hook_malloc(void *ctx, size_t size) {
    return debug_alloc(ctx, false, size);
}

static void *raw_hook_calloc(void *ctx, size_t nelem, size_t elsize) {
    return debug_calloc(ctx, nelem, elsize);
}

static void *raw_hook_realloc(void *ctx, void *ptr, size_t new_size) {
    return debug_realloc(ctx, ptr, new_size);
}

static void raw_hook_free(void *ctx, void *ptr) {
    debug_free(ctx, ptr);
}

/* The mem and object domains' hooks: the GIL first, then as raw. */
static const char no_gil_message[] = "Python memory allocator called without holding the GIL";

/* In free-threaded mode (pm_init) the mem and object domains need no GIL, so there is
 * nothing to check. */
static inline void require_gil(const char *func) {
    if (PM_SYNC_UNLIKELY(!pm_threading.free_threaded && !pm_gil_held())) {
        pm_fatal_error(func, no_gil_message);
    }
}

static void *gil_hook_malloc(void *ctx, size_t size) {
    require_gil("_PyMem_DebugMalloc");
    return debug_alloc(ctx, false, size);
}

static void *gil_hook_calloc(void *ctx, size_t nelem, size_t elsize) {
    require_gil("_PyMem_DebugCalloc");
    return debug_calloc(ctx, nelem, elsize);
}

static void *gil_hook_realloc(void *ctx, void *ptr, size_t new_size) {
    require_gil("_PyMem_DebugRealloc");
    return debug_realloc(ctx, ptr, new_size);
}

static void gil_hook_free(void *ctx, void *ptr) {
    require_gil("_PyMem_DebugFree");
    debug_free(ctx, ptr);
}

/* ---- contexts ------------------------------------------------------------------------ */

enum { STATIC_CONTEXTS = 16 };
static pm_debug_ctx static_contexts[STATIC_CONTEXTS];
static size_t static_contexts_used;  /* fetch-and-add index */
static pm_debug_ctx *context_list;   /* append-only, pushed by CAS */

static pm_debug_ctx *find_context(pm_debug_ctx *from, char api_id, const pm_allocator *wrapped) {
    for (pm_debug_ctx *c = from; c != NULL; c = c->next) {
        if (c->api_id == api_id && pm_allocator_equal(&c->wrapped, wrapped)) return c;
    }
    return NULL;
}

/* The one context for (api_id, wrapped), made on first use. Unlike allocator records, two
 * racing threads must not publish two equal contexts (each would count half the live
 * blocks), so a thread whose push loses the race looks again before retrying; the slot it
 * took is then wasted, which a race between two installs of new hooks can afford. */
static pm_debug_ctx *intern_context(char api_id, const pm_allocator *wrapped) {
    pm_debug_ctx *head = pm_atomic_load_ptr_acquire(&context_list);
    pm_debug_ctx *found = find_context(head, api_id, wrapped);
    if (found != NULL) return found;

    pm_debug_ctx *c;
    size_t index = pm_atomic_faa_size(&static_contexts_used, 1);
    if (index < STATIC_CONTEXTS) {
        c = &static_contexts[index];
    } else {
        void *page = mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
        if (page == MAP_FAILED) return NULL;
        c = page;
    }
    c->api_id = api_id;
    c->wrapped = *wrapped;
    c->live_blocks = 0;
    for (;;) {
        c->next = head;
        if (pm_atomic_cas_ptr(&context_list, head, c)) return c;
        pm_debug_ctx *newer = pm_atomic_load_ptr_acquire(&context_list);
        /* Only the contexts pushed since `head` are new to us. */
        for (pm_debug_ctx *n = newer; n != head; n = n->next) {
            if (n->api_id == api_id && pm_allocator_equal(&n->wrapped, wrapped)) return n;
        }
        head = newer;
    }
}

size_t pm_debug_hooks_live_blocks(char api_id, const pm_debug_ctx *except) {
    size_t live = 0;
    for (pm_debug_ctx *c = pm_atomic_load_ptr_acquire(&context_list); c != NULL; c = c->next) {
        if (c->api_id == api_id && c != except) live += pm_atomic_load_size_relaxed(&c->live_blocks);
    }
    return live;
}

char pm_debug_api_id(pm_domain domain) {
    switch (domain) {
    case PM_DOMAIN_RAW:
        return 'r';
    case PM_DOMAIN_MEM:
        return 'm';
    case PM_DOMAIN_OBJ:
        return 'o';
    default:
        return '\0';
    }
}

const pm_debug_ctx *pm_debug_hook_ctx(const pm_allocator *a) {
    bool raw = a->malloc == raw_hook_malloc && a->calloc == raw_hook_calloc &&
               a->realloc == raw_hook_realloc && a->free == raw_hook_free;
    bool gil = a->malloc == gil_hook_malloc && a->calloc == gil_hook_calloc &&
               a->realloc == gil_hook_realloc && a->free == gil_hook_free;
    return raw || gil ? (const pm_debug_ctx *)a->ctx : NULL;
}

int pm_debug_hook_make(pm_domain domain, const pm_allocator *wrapped, pm_allocator *out) {
    char api_id = pm_debug_api_id(domain);
    if (api_id == '\0') {
        errno = EINVAL;
        return -1;
    }
    pm_debug_ctx *ctx = intern_context(api_id, wrapped);
    if (ctx == NULL) {
        errno = ENOMEM;
        return -1;
    }
    if (domain == PM_DOMAIN_RAW) {
        *out = (pm_allocator){ctx, raw_hook_malloc, raw_hook_calloc, raw_hook_realloc,
                              raw_hook_free};
    } else {
        *out = (pm_allocator){ctx, gil_hook_malloc, gil_hook_calloc, gil_hook_realloc,
                              gil_hook_free};
    }
    return 0;
}

/* ---- installing ---------------------------------------------------------------------- */

int pm_setup_debug_hooks(void) {
    pm_allocator saved[PM_DOMAIN_COUNT];
    pm_allocator target[PM_DOMAIN_COUNT];
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (pm_get_allocator((pm_domain)d, &saved[d]) != 0) return -1;
        if (pm_debug_hook_ctx(&saved[d]) != NULL) {
            target[d] = saved[d]; /* hooked already: never twice */
        } else if (pm_debug_hook_make((pm_domain)d, &saved[d], &target[d]) != 0) {
            return -1;
        }
    }
    return pm_domains_install(saved, target);
}
