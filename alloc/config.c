/*
 * config.c — choosing the allocators by name: pm_setup_allocators(), PYTHONMALLOC and
 * PYTHONMALLOCSTATS.
 *
 * What it owns. The mapping from CPython's PYTHONMALLOC names to what each domain holds,
 * the reverse mapping (pm_current_allocator_name), and the one-time reading of the
 * environment. It owns no allocator: every change goes through pm_set_allocator(), whose
 * interning hands back the canonical records (pm_system_allocator, pm_pymalloc_allocator),
 * so after a round trip through "malloc" the mem and object domains are on pymalloc's
 * inline fast path again. The debug hooks are alloc/debug_hooks.c's; a "_debug" name asks
 * it for the hook that wraps the plain name's allocator in each domain (pm_debug_hook_make:
 * interned, so the same name always gives the same records).
 *
 *   name                         raw           mem              obj
 *   "default", "", "pymalloc"    system        pymalloc         pymalloc
 *   "malloc"                     system        system           system
 *   "debug", "pymalloc_debug"    hook(system)  hook(pymalloc)   hook(pymalloc)
 *   "malloc_debug"               hook(system)  hook(system)     hook(system)
 *
 * as CPython's _PyMem_SetupAllocators (its "debug" is the default allocators plus hooks).
 *
 * Reading back. "default" and "pymalloc" install the same thing, so the name reads back as
 * "pymalloc", as CPython's _PyMem_GetCurrentAllocatorName() does; likewise "debug" reads
 * back as "pymalloc_debug". A hooked name is recognised when every domain holds its own
 * domain's hook (API id 'r', 'm', 'o'; the GIL-checking variant in mem and object) and the
 * wrapped allocators spell a plain name. Anything else in any domain (a tracing hook, a
 * failing allocator in a test, a user's own, hooks over a user's allocator) reads back as
 * NULL: a name would claim a configuration that is not the one running.
 *
 * The one refusal: stranding live blocks (EBUSY). Blocks are freed by whatever the domain
 * holds at free time, so a change is refused, with nothing changed, when blocks known to be
 * live could not be freed by the new allocator:
 *   - pymalloc's blocks (pm_allocated_blocks() > 0) when the mem or object domain would
 *     hold anything but plain pymalloc. pymalloc's free recognises a pointer it did not
 *     make (the arena map answers "is this ours?" exactly) and passes it to the raw domain,
 *     so moving a domain *to* pymalloc while the C library's blocks are live is safe. The C
 *     library's free() has no such test: given a block carved from a pymalloc arena it
 *     would read a malloc chunk header that is not there and corrupt its heap. A debug hook
 *     would read a header that is not there either (and report "bad ID").
 *   - a debug hook's own blocks (it counts them) when the hook would be removed or
 *     replaced: their pointers are 16 bytes into an allocation, which no other allocator
 *     can free.
 * Plain blocks of the C library are counted by nobody, in any domain, so adding the hooks
 * over them ("malloc" -> "malloc_debug", or the raw domain's blocks) is allowed; the hook
 * then reports their free as a fatal "bad ID" (the id byte it reads is the C library's
 * chunk header, which is never an API id). The raw domain's call counters
 * (pm_get_raw_stats) cannot stand in for a count: pymalloc passes pointers it does not own
 * to the raw domain, so blocks the C library made for the mem domain are freed there too
 * and "live" there can even go below zero. A domain that already holds the
 * requested allocator is not a change, so repeating the current name always succeeds.
 * Otherwise the raw domain is replaced unconditionally, as CPython does: the blocks of a
 * hook that passes calls through are the C library's own.
 *
 * Atomicity. Each domain switches atomically (alloc/domain.c), but the three switches are
 * three stores: a thread allocating from the raw domain meanwhile sees either allocator
 * whole. The mem and object domains, and the live-block count, belong to the GIL holder,
 * so callers hold the GIL (in practice: call it at start-up, before any other thread).
 * If a switch fails (pm_set_allocator can only fail for want of memory to intern a new
 * record), the domains already switched are put back, so failure leaves everything as it
 * was.
 *
 * Environment. pm_init_from_env() applies PYTHONMALLOC (unset or empty: nothing to do)
 * and refuses to guess: an unknown name or a refusal prints one line to stderr, starting
 * "pymalloc-mt: PYTHONMALLOC=<value>: ", and returns -1 with nothing changed.
 * PYTHONMALLOCSTATS (non-empty) turns on the statistics printed before each new arena
 * (alloc/stats.c) and registers one atexit handler that prints them again at exit, when
 * pymalloc is installed then, hooked or not (CPython prints nothing under
 * PYTHONMALLOC=malloc).
 */
#include "alloc/pymalloc_mt.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/internal/debug_hooks.h"
#include "alloc/internal/domain.h"
#include "alloc/internal/pymalloc.h"
#include "sync/sync.h"

/* ---- names -------------------------------------------------------------------------- */

typedef enum setup_kind {
    SETUP_UNKNOWN,
    SETUP_PYMALLOC, /* raw: system, mem and obj: pymalloc */
    SETUP_MALLOC,   /* system everywhere */
} setup_kind;

/* Which plain configuration `name` means, and whether the debug hooks go on top. */
static setup_kind classify(const char *name, bool *debug) {
    *debug = false;
    if (name == NULL) return SETUP_UNKNOWN;
    if (strcmp(name, "") == 0 || strcmp(name, "default") == 0 || strcmp(name, "pymalloc") == 0)
        return SETUP_PYMALLOC;
    if (strcmp(name, "malloc") == 0) return SETUP_MALLOC;
    *debug = true;
    if (strcmp(name, "debug") == 0 || strcmp(name, "pymalloc_debug") == 0) return SETUP_PYMALLOC;
    if (strcmp(name, "malloc_debug") == 0) return SETUP_MALLOC;
    return SETUP_UNKNOWN;
}

/* The domain holds plain pymalloc, or pymalloc under the debug hook. */
static bool domain_holds_pymalloc(pm_domain domain) {
    pm_allocator current;
    if (pm_get_allocator(domain, &current) != 0) return false;
    const pm_debug_ctx *hook = pm_debug_hook_ctx(&current);
    return pm_allocator_equal(hook != NULL ? &hook->wrapped : &current, &pm_pymalloc_allocator);
}

/* Blocks that switching domain d to `target` would strand: those of every debug hook of the
 * domain, installed on top or buried under another hook, except the one `target` keeps. */
static size_t stranded_hook_blocks(pm_domain d, const pm_allocator *target) {
    return pm_debug_hooks_live_blocks(pm_debug_api_id(d), pm_debug_hook_ctx(target));
}

/* ---- pm_setup_allocators ------------------------------------------------------------- */

int pm_setup_allocators(const char *name) {
    bool debug;
    const pm_allocator *plain[PM_DOMAIN_COUNT];
    switch (classify(name, &debug)) {
    case SETUP_PYMALLOC:
        plain[PM_DOMAIN_RAW] = &pm_system_allocator;
        plain[PM_DOMAIN_MEM] = &pm_pymalloc_allocator;
        plain[PM_DOMAIN_OBJ] = &pm_pymalloc_allocator;
        break;
    case SETUP_MALLOC:
        plain[PM_DOMAIN_RAW] = &pm_system_allocator;
        plain[PM_DOMAIN_MEM] = &pm_system_allocator;
        plain[PM_DOMAIN_OBJ] = &pm_system_allocator;
        break;
    case SETUP_UNKNOWN:
    default:
        errno = EINVAL;
        return -1;
    }

    pm_allocator target[PM_DOMAIN_COUNT];
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (!debug) {
            target[d] = *plain[d];
        } else if (pm_debug_hook_make((pm_domain)d, plain[d], &target[d]) != 0) {
            return -1; /* ENOMEM, nothing changed */
        }
    }

    pm_allocator saved[PM_DOMAIN_COUNT];
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (pm_get_allocator((pm_domain)d, &saved[d]) != 0) return -1;
    }

    /* EBUSY (see "The one refusal" above). */
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (pm_allocator_equal(&saved[d], &target[d])) continue;
        bool busy = stranded_hook_blocks((pm_domain)d, &target[d]) > 0;
        if (d != PM_DOMAIN_RAW) {
            busy = busy || (!pm_allocator_equal(&target[d], &pm_pymalloc_allocator) &&
                            pm_allocated_blocks() > 0);
        }
        if (busy) {
            errno = EBUSY;
            return -1;
        }
    }

    return pm_domains_install(saved, target);
}

/* The plain name of (raw, mem, obj), or NULL. */
static const char *plain_name(const pm_allocator *const a[PM_DOMAIN_COUNT]) {
    if (!pm_allocator_equal(a[PM_DOMAIN_RAW], &pm_system_allocator)) return NULL;
    if (pm_allocator_equal(a[PM_DOMAIN_MEM], &pm_pymalloc_allocator) &&
        pm_allocator_equal(a[PM_DOMAIN_OBJ], &pm_pymalloc_allocator))
        return "pymalloc";
    if (pm_allocator_equal(a[PM_DOMAIN_MEM], &pm_system_allocator) &&
        pm_allocator_equal(a[PM_DOMAIN_OBJ], &pm_system_allocator))
        return "malloc";
    return NULL;
}

const char *pm_current_allocator_name(void) {
    pm_allocator current[PM_DOMAIN_COUNT];
    const pm_allocator *installed[PM_DOMAIN_COUNT];
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (pm_get_allocator((pm_domain)d, &current[d]) != 0) return NULL;
        installed[d] = &current[d];
    }
    const char *name = plain_name(installed);
    if (name != NULL) return name;

    /* Each domain's own hook (its API id, and the variant pm_debug_hook_make gives that
     * domain), over allocators that spell a plain name. */
    const pm_allocator *wrapped[PM_DOMAIN_COUNT];
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        const pm_debug_ctx *hook = pm_debug_hook_ctx(&current[d]);
        if (hook == NULL || hook->api_id != pm_debug_api_id((pm_domain)d)) return NULL;
        pm_allocator expected; /* found, not made: a context with this id and wrapped exists */
        if (pm_debug_hook_make((pm_domain)d, &hook->wrapped, &expected) != 0 ||
            !pm_allocator_equal(&expected, &current[d]))
            return NULL;
        wrapped[d] = &hook->wrapped;
    }
    name = plain_name(wrapped);
    if (name == NULL) return NULL;
    return strcmp(name, "pymalloc") == 0 ? "pymalloc_debug" : "malloc_debug";
}

/* ---- the environment ------------------------------------------------------------------ */

/* Prints `value` on one line whatever it holds: bytes outside printable ASCII as \xNN. */
static void print_value(FILE *out, const char *value) {
    for (const unsigned char *c = (const unsigned char *)value; *c != '\0'; c++) {
        if (*c >= 0x20 && *c < 0x7f && *c != '\\')
            fputc(*c, out);
        else
            fprintf(out, "\\x%02x", *c);
    }
}

static void report_setup_failure(const char *value, int error) PM_GIL_REQUIRED {
    fputs("pymalloc-mt: PYTHONMALLOC=", stderr);
    print_value(stderr, value);
    switch (error) {
    case EINVAL:
        /* CPython: "Fatal Python error: preconfig_init_allocator: PYTHONMALLOC: unknown
         * allocator". Same words, our prefix, and the value and the choices added. */
        fputs(": unknown allocator (known: default, debug, malloc, malloc_debug, pymalloc, "
              "pymalloc_debug)\n",
              stderr);
        break;
    case EBUSY:
        if (pm_allocated_blocks() > 0) {
            fprintf(stderr,
                    ": pymalloc already has %zu live blocks that this allocator could not "
                    "free; set PYTHONMALLOC before the first allocation\n",
                    pm_allocated_blocks());
        } else {
            fputs(": live blocks could not be freed after this change (the debug hooks' "
                  "blocks and plain ones cannot be freed by each other); set PYTHONMALLOC "
                  "before the first allocation\n",
                  stderr);
        }
        break;
    default:
        fprintf(stderr, ": cannot install the allocators: %s\n", strerror(error));
        break;
    }
    fflush(stderr);
}

/* Set once by the first pm_init_from_env() that sees PYTHONMALLOCSTATS, so the handler is
 * registered once however often the environment is applied. */
static int stats_at_exit_registered;

static void print_stats_at_exit(void) {
    /* As CPython: the statistics describe pymalloc, so say nothing when it is not in use. */
    if (!domain_holds_pymalloc(PM_DOMAIN_MEM) && !domain_holds_pymalloc(PM_DOMAIN_OBJ)) return;
    pm_stats_print_unchecked(stderr); /* at exit: see alloc/internal/pymalloc.h */
    fflush(stderr);
}

int pm_init_from_env(void) {
    const char *malloc_name = getenv("PYTHONMALLOC");
    if (malloc_name != NULL && malloc_name[0] != '\0') {
        if (pm_setup_allocators(malloc_name) != 0) {
            report_setup_failure(malloc_name, errno);
            return -1;
        }
    }

    const char *stats = getenv("PYTHONMALLOCSTATS");
    if (stats != NULL && stats[0] != '\0') {
        if (pm_atomic_cas_int(&stats_at_exit_registered, 0, 1)) {
            /* glibc's atexit allocates past its first 32 handlers, so it can fail. That is
             * the one failure that comes after PYTHONMALLOC was applied; the statistics
             * stay off, so the report is all or nothing. */
            if (atexit(print_stats_at_exit) != 0) {
                pm_atomic_store_int_relaxed(&stats_at_exit_registered, 0);
                fputs("pymalloc-mt: PYTHONMALLOCSTATS: cannot register the exit report\n",
                      stderr);
                return -1;
            }
        }
        pm_stats_on_new_arena = 1;
    }
    return 0;
}
