/*
 * fuzz/fuzz_names.c — fuzz target: configuration by name, pm_setup_allocators().
 *
 * The input, cut at its first NUL or at NAME_MAX_BYTES, is a name. It is tried from four
 * starting states, each set up from (and put back to) the state the input found:
 *
 *   state        set up                                       what the name must do
 *   pymalloc     "pymalloc", nothing live                     malloc/pymalloc names: 0
 *   busy         "pymalloc", one pymalloc block live          "malloc": EBUSY (it could
 *                                                             not free the block)
 *   malloc       "malloc", one mem block of malloc's live     every known name: 0 (moving
 *                                                             to pymalloc is safe)
 *   wrapped      "pymalloc", raw wrapped by a pass-through    known names: 0, the wrapper
 *                allocator (the name reads back NULL)         replaced; unknown: nothing
 *                                                             changes, still NULL
 *
 * In every state: "default", "", "pymalloc" and "malloc" are accepted as above; "debug",
 * "pymalloc_debug" and "malloc_debug" likewise, except EBUSY in the busy state (hooks over
 * pymalloc's live block); any other name gives -1 with EINVAL. A refusal changes nothing (all three tables and the name
 * read back as before); a success reads back the documented name ("pymalloc" for
 * "default" and "", "pymalloc_debug" for "debug"), after which one small and one large
 * block are allocated and freed in each domain. The empty input also tries NULL.
 *
 * The GIL is held throughout; every block is freed and every table put back before the
 * next state, so nothing leaks from one input to the next.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/pymalloc_mt.h"
#include "fuzz/fuzz_target.h"
#include "gil/gil.h"
#include "tests/support/failing_allocators.h"

enum { NAME_MAX_BYTES = 64 };

typedef enum expected_kind { NAME_PYMALLOC, NAME_MALLOC, NAME_DEBUG, NAME_UNKNOWN } expected_kind;

typedef enum start_state {
    STATE_PYMALLOC,
    STATE_BUSY,
    STATE_MALLOC,
    STATE_WRAPPED,
    STATE_COUNT
} start_state;

static const char *const state_names[STATE_COUNT] = {"pymalloc", "busy", "malloc", "wrapped"};

/* The documented names, independently of alloc/config.c. */
static expected_kind classify(const char *name) {
    if (name == NULL) return NAME_UNKNOWN;
    if (strcmp(name, "") == 0 || strcmp(name, "default") == 0 || strcmp(name, "pymalloc") == 0) {
        return NAME_PYMALLOC;
    }
    if (strcmp(name, "malloc") == 0) return NAME_MALLOC;
    if (strcmp(name, "debug") == 0 || strcmp(name, "pymalloc_debug") == 0 ||
        strcmp(name, "malloc_debug") == 0) {
        return NAME_DEBUG;
    }
    return NAME_UNKNOWN;
}

static const char *shown(const char *s) {
    return s != NULL ? s : "(null)";
}

__attribute__((noreturn, format(printf, 3, 4))) static void violation(const char *name,
                                                                       start_state state,
                                                                       const char *format, ...) {
    fprintf(stderr, "\npymalloc-mt fuzz_names: VIOLATION for name \"%s\" from state %s: ",
            shown(name), state_names[state]);
    va_list ap;
    va_start(ap, format);
    vfprintf(stderr, format, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

static bool same(const pm_allocator *a, const pm_allocator *b) {
    return a->ctx == b->ctx && a->malloc == b->malloc && a->calloc == b->calloc &&
           a->realloc == b->realloc && a->free == b->free;
}

static void get_all(pm_allocator out[PM_DOMAIN_COUNT]) {
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (pm_get_allocator((pm_domain)d, &out[d]) != 0) abort();
    }
}

static void set_all(const pm_allocator in[PM_DOMAIN_COUNT]) PM_GIL_REQUIRED {
    for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
        if (pm_set_allocator((pm_domain)d, &in[d]) != 0) abort();
    }
}

/* One small and one large block in every domain, after a successful switch. */
static void exercise(const char *name, start_state state) PM_GIL_REQUIRED {
    static const size_t sizes[2] = {24, 4000};
    for (int i = 0; i < 2; i++) {
        void *r = pm_raw_malloc(sizes[i]);
        void *m = pm_mem_malloc(sizes[i]);
        void *o = pm_obj_malloc(sizes[i]);
        if (r == NULL || m == NULL || o == NULL) {
            violation(name, state, "an allocation of %zu bytes failed after the switch", sizes[i]);
        }
        memset(r, 0xA5, sizes[i]);
        memset(m, 0xA5, sizes[i]);
        memset(o, 0xA5, sizes[i]);
        pm_obj_free(o);
        pm_mem_free(m);
        pm_raw_free(r);
    }
}

/* Runs `name` from one starting state; returns with the outer state put back. */
static void try_from(const char *name, start_state state, const pm_allocator outer[PM_DOMAIN_COUNT])
    PM_GIL_REQUIRED {
    static pm_failing_allocator wrapper; /* static: its record is interned by the domain */
    void *held = NULL;
    size_t start_blocks = pm_allocated_blocks();
    switch (state) {
    case STATE_PYMALLOC:
        if (pm_setup_allocators("pymalloc") != 0) violation(name, state, "cannot set up");
        break;
    case STATE_BUSY:
        if (pm_setup_allocators("pymalloc") != 0) violation(name, state, "cannot set up");
        held = pm_mem_malloc(16);
        break;
    case STATE_MALLOC:
        if (pm_setup_allocators("malloc") != 0) violation(name, state, "cannot set up");
        held = pm_mem_malloc(16);
        break;
    default:
        if (pm_setup_allocators("pymalloc") != 0) violation(name, state, "cannot set up");
        if (pm_failing_allocator_install(&wrapper, PM_DOMAIN_RAW) != 0) {
            violation(name, state, "cannot install the wrapper");
        }
        break;
    }
    if (state != STATE_PYMALLOC && state != STATE_WRAPPED && held == NULL) {
        violation(name, state, "cannot allocate the held block");
    }

    pm_allocator before[PM_DOMAIN_COUNT];
    get_all(before);
    const char *name_before = pm_current_allocator_name();
    expected_kind kind = classify(name);
    bool busy = state == STATE_BUSY;

    errno = 0;
    int r = pm_setup_allocators(name);
    int error = errno;

    switch (kind) {
    case NAME_PYMALLOC:
        if (r != 0) violation(name, state, "refused (errno %d); it must be accepted", error);
        break;
    case NAME_MALLOC:
        if (busy && (r != -1 || error != EBUSY)) {
            violation(name, state, "returned %d (errno %d) with a pymalloc block live; expected "
                      "-1 with EBUSY", r, error);
        }
        if (!busy && r != 0) violation(name, state, "refused (errno %d)", error);
        break;
    case NAME_DEBUG:
        /* The hooks over pymalloc while it has a block would strand it (EBUSY); over
         * malloc's blocks they are allowed, as is moving from malloc to pymalloc under
         * hooks. */
        if (busy && (r != -1 || error != EBUSY)) {
            violation(name, state, "returned %d (errno %d) with a pymalloc block live; expected "
                      "-1 with EBUSY", r, error);
        }
        if (!busy && r != 0) violation(name, state, "refused (errno %d)", error);
        break;
    default:
        if (r != -1 || error != EINVAL) {
            violation(name, state, "returned %d (errno %d); expected -1 with EINVAL", r, error);
        }
        break;
    }

    const char *name_after = pm_current_allocator_name();
    if (r != 0) {
        pm_allocator after[PM_DOMAIN_COUNT];
        get_all(after);
        for (int d = 0; d < PM_DOMAIN_COUNT; d++) {
            if (!same(&before[d], &after[d])) {
                violation(name, state, "refused, yet domain %d's allocator changed", d);
            }
        }
        if (name_before != name_after &&
            (name_before == NULL || name_after == NULL || strcmp(name_before, name_after) != 0)) {
            violation(name, state, "refused, yet the current name went from %s to %s",
                      shown(name_before), shown(name_after));
        }
    } else {
        const char *expected = kind == NAME_MALLOC ? "malloc"
                               : kind != NAME_DEBUG ? "pymalloc"
                               : strcmp(name, "malloc_debug") == 0 ? "malloc_debug"
                                                                   : "pymalloc_debug";
        if (name_after == NULL || strcmp(name_after, expected) != 0) {
            violation(name, state, "accepted, but the current name is %s, expected %s",
                      shown(name_after), expected);
        }
        exercise(name, state);
    }

    /* Put everything back: the held block is freed by the allocator that made it. */
    if (state == STATE_WRAPPED && r != 0) {
        if (pm_failing_allocator_uninstall(&wrapper) != 0) {
            violation(name, state, "cannot uninstall the wrapper");
        }
    }
    if (held != NULL) {
        set_all(before);
        pm_mem_free(held);
    }
    set_all(outer);
    if (pm_allocated_blocks() != start_blocks) {
        violation(name, state, "pm_allocated_blocks() is %zu, was %zu", pm_allocated_blocks(),
                  start_blocks);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char name[NAME_MAX_BYTES + 1];
    size_t length = size < NAME_MAX_BYTES ? size : NAME_MAX_BYTES;
    memcpy(name, data, length);
    name[length] = '\0';

    pm_gil_acquire();
    pm_allocator outer[PM_DOMAIN_COUNT];
    get_all(outer);
    const char *outer_name = pm_current_allocator_name();
    for (int s = 0; s < STATE_COUNT; s++) {
        try_from(name, (start_state)s, outer);
        if (size == 0) try_from(NULL, (start_state)s, outer);
    }
    const char *now = pm_current_allocator_name();
    if (outer_name != now && (outer_name == NULL || now == NULL || strcmp(outer_name, now) != 0)) {
        violation(name, STATE_PYMALLOC, "the configuration was not restored (%s, was %s)",
                  shown(now), shown(outer_name));
    }
    pm_gil_release();
    return 0;
}
