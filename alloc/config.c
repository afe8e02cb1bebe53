/*
 * config.c — choosing the allocators by name: pm_setup_allocators(), PYTHONMALLOC and
 * PYTHONMALLOCSTATS.
 *
 * What it owns. The mapping from CPython's PYTHONMALLOC names to what each domain holds,
 * the reverse mapping (pm_current_allocator_name), and the one-time reading of the
 * environment. It owns no allocator: every change goes through pm_set_allocator(), whose
 * interning hands back the canonical records (pm_system_allocator, pm_pymalloc_allocator),
 * so after a round trip through "malloc" the mem and object domains are on pymalloc's
 * inline fast path again.
 *
 *   name                         raw      mem       obj
 *   "default", "", "pymalloc"    system   pymalloc  pymalloc
 *   "malloc"                     system   system    system
 *   "debug", "pymalloc_debug",   (the above plus CPython's debug hooks: not built yet, so
 *   "malloc_debug"                refused with ENOTSUP rather than silently run without)
 *
 * Reading back. "default" and "pymalloc" install the same thing, so the name reads back as
 * "pymalloc", as CPython's _PyMem_GetCurrentAllocatorName() does. Anything else in any
 * domain (a tracing hook, a failing allocator in a test, a user's own) reads back as NULL:
 * a name would claim a configuration that is not the one running.
 *
 * The one refusal: stranding pymalloc's blocks (EBUSY). The two allocators are not
 * symmetric. pymalloc's free recognises a pointer it did not make (the arena map answers
 * "is this ours?" exactly) and passes it to the raw domain, so moving a domain *to*
 * pymalloc while the C library's blocks are live is safe: they are freed where they came
 * from. The C library's free() has no such test: given a block carved from a pymalloc
 * arena it would read a malloc chunk header that is not there and corrupt its heap. So
 * while pm_allocated_blocks() > 0, a change that takes the mem or object domain from
 * pymalloc (or from a hook that may be wrapping pymalloc) to anything that is not pymalloc
 * is refused, and nothing is changed. A domain that already holds the requested allocator
 * is not a change, so repeating the current name always succeeds. The raw domain is
 * replaced unconditionally, as CPython does: the blocks of a hook that passes calls
 * through are the C library's own.
 *
 * Atomicity. Each domain switches atomically (alloc/domain.c), but the three switches are
 * three stores: a thread allocating from the raw domain meanwhile sees either allocator
 * whole. The mem and object domains, and the live-block count, belong to the GIL holder,
 * so callers hold the GIL (in practice: call it at start-up, before any other thread).
 * If a switch fails (pm_set_allocator can only fail for want of memory to intern a new
 * record, which the canonical records never need), the domains already switched are put
 * back, so failure leaves everything as it was.
 *
 * Environment. pm_init_from_env() applies PYTHONMALLOC (unset or empty: nothing to do)
 * and refuses to guess: an unknown name, a debug name or an EBUSY refusal prints one line
 * to stderr, starting "pymalloc-mt: PYTHONMALLOC=<value>: ", and returns -1 with nothing
 * changed. PYTHONMALLOCSTATS (non-empty) turns on the statistics printed before each new
 * arena (alloc/stats.c) and registers one atexit handler that prints them again at exit,
 * when pymalloc is installed then (CPython prints nothing under PYTHONMALLOC=malloc).
 */
#include "alloc/pymalloc_mt.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/internal/domain.h"
#include "alloc/internal/pymalloc.h"
#include "sync/sync.h"

/* ---- names -------------------------------------------------------------------------- */

typedef enum setup_kind {
    SETUP_UNKNOWN,
    SETUP_PYMALLOC,     /* raw: system, mem and obj: pymalloc */
    SETUP_MALLOC,       /* system everywhere */
    SETUP_NOT_BUILT,    /* a debug variant: needs the debug hooks (a later issue) */
} setup_kind;

static setup_kind classify(const char *name) {
    if (name == NULL) return SETUP_UNKNOWN;
    if (strcmp(name, "") == 0 || strcmp(name, "default") == 0 || strcmp(name, "pymalloc") == 0)
        return SETUP_PYMALLOC;
    if (strcmp(name, "malloc") == 0) return SETUP_MALLOC;
    if (strcmp(name, "debug") == 0 || strcmp(name, "pymalloc_debug") == 0 ||
        strcmp(name, "malloc_debug") == 0)
        return SETUP_NOT_BUILT;
    return SETUP_UNKNOWN;
}

static bool same_allocator(const pm_allocator *a, const pm_allocator *b) {
    return a->ctx == b->ctx && a->malloc == b->malloc && a->calloc == b->calloc &&
           a->realloc == b->realloc && a->free == b->free;
}

/* Compares field by field rather than by record address, so the answer does not depend on
 * interning having returned the canonical record. */
static bool domain_holds(pm_domain domain, const pm_allocator *expected) {
    pm_allocator current;
    if (pm_get_allocator(domain, &current) != 0) return false;
    return same_allocator(&current, expected);
}

/* ---- pm_setup_allocators ------------------------------------------------------------- */

int pm_setup_allocators(const char *name) {
    const pm_allocator *target[PM_DOMAIN_COUNT];
    switch (classify(name)) {
    case SETUP_PYMALLOC:
        target[PM_DOMAIN_RAW] = &pm_system_allocator;
        target[PM_DOMAIN_MEM] = &pm_pymalloc_allocator;
        target[PM_DOMAIN_OBJ] = &pm_pymalloc_allocator;
        break;
    case SETUP_MALLOC:
        target[PM_DOMAIN_RAW] = &pm_system_allocator;
        target[PM_DOMAIN_MEM] = &pm_system_allocator;
        target[PM_DOMAIN_OBJ] = &pm_system_allocator;
        break;
    case SETUP_NOT_BUILT:
        errno = ENOTSUP;
        return -1;
    case SETUP_UNKNOWN:
    default:
        errno = EINVAL;
        return -1;
    }

    pm_allocator saved[PM_DOMAIN_COUNT];
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (pm_get_allocator((pm_domain)d, &saved[d]) != 0) return -1;
    }

    /* EBUSY (see "The one refusal" above). Blocks are freed by whatever the domain holds
     * at free time. pymalloc hands pointers it does not own to the raw domain, but the C
     * library's free() cannot tell a pymalloc block from its own and would corrupt its
     * heap, so while pymalloc has live blocks no mem or object domain may move off it. */
    for (int d = PM_DOMAIN_MEM; d <= PM_DOMAIN_OBJ; d++) {
        bool changes = !same_allocator(&saved[d], target[d]);
        if (changes && target[d] != &pm_pymalloc_allocator && pm_allocated_blocks() > 0) {
            errno = EBUSY;
            return -1;
        }
    }

    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (same_allocator(&saved[d], target[d])) continue;
        if (pm_set_allocator((pm_domain)d, target[d]) != 0) {
            int error = errno;
            /* Put back what was switched; those records are interned, so this cannot fail. */
            for (int undo = 0; undo < d; undo++) {
                (void)pm_set_allocator((pm_domain)undo, &saved[undo]);
            }
            errno = error;
            return -1;
        }
    }
    return 0;
}

const char *pm_current_allocator_name(void) {
    if (!domain_holds(PM_DOMAIN_RAW, &pm_system_allocator)) return NULL;
    if (domain_holds(PM_DOMAIN_MEM, &pm_pymalloc_allocator) &&
        domain_holds(PM_DOMAIN_OBJ, &pm_pymalloc_allocator))
        return "pymalloc";
    if (domain_holds(PM_DOMAIN_MEM, &pm_system_allocator) &&
        domain_holds(PM_DOMAIN_OBJ, &pm_system_allocator))
        return "malloc";
    return NULL;
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

static void report_setup_failure(const char *value, int error) {
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
    case ENOTSUP:
        fputs(": debug hooks are not available in this build yet\n", stderr);
        break;
    case EBUSY:
        fprintf(stderr,
                ": pymalloc already has %zu live blocks that this allocator could not free; "
                "set PYTHONMALLOC before the first allocation\n",
                pm_allocated_blocks());
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
    if (!domain_holds(PM_DOMAIN_MEM, &pm_pymalloc_allocator) &&
        !domain_holds(PM_DOMAIN_OBJ, &pm_pymalloc_allocator))
        return;
    pm_print_stats(stderr);
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
