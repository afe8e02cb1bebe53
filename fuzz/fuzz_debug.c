/*
 * fuzz/fuzz_debug.c — fuzz target: the operation tape under CPython's debug hooks.
 *
 * The same programs as fuzz_tape (fuzz/tape.c), run with the debug hooks of
 * alloc/debug_hooks.c in every domain (PYTHONMALLOC=debug: raw over the C library, mem and
 * object over pymalloc). Two things are fuzzed:
 *
 *   - a valid program never triggers a report of the hooks. Every report ends in a fatal
 *     error; the handler installed here aborts with the hooks' function and reason, so
 *     libFuzzer (and the replay test) see it as a crash. The block report, if any, is on
 *     stderr just before.
 *   - the layout and fill bytes are CPython's, and what the hooks change underneath is
 *     what the model expects (pm_tape_options.debug_hooks, "DEBUG HOOKS" in tape.c): the
 *     size, API id and 0xFD pads around every block, 0xCD in new and grown data, the 24
 *     bytes of overhead in pymalloc's pool/raw placement (a request of n bytes is n + 24
 *     underneath: 0..488 bytes from pools, 489 and up from raw) and in its in-place
 *     realloc rule, each hook's live-block count, and the name reading "pymalloc_debug"
 *     or "malloc_debug". Opcode 15 switches between the debug names, or round-trips
 *     through the plain name and pm_setup_debug_hooks(); the hooks never stay off.
 *
 * Per input, with the GIL held throughout (the mem and object hooks check it): the fatal
 * handler goes in, the configuration must be plain "pymalloc" with no pymalloc block live,
 * pm_setup_debug_hooks() installs the hooks ("pymalloc_debug"), the tape runs (it frees
 * everything, restores "pymalloc_debug" and checks every counter), then
 * pm_setup_allocators("default") takes the hooks off — which also proves that no hook
 * still counts a live block (it is refused with EBUSY otherwise) — and the counters must
 * be back to their starting values. The next input starts from exactly the same state.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc/pymalloc_mt.h"
#include "fuzz/fuzz_target.h"
#include "fuzz/tape.h"
#include "gil/gil.h"

__attribute__((noreturn)) static void fail(const char *what, const char *detail) {
    fprintf(stderr, "\npymalloc-mt fuzz_debug: VIOLATION: %s%s\n", what, detail);
    abort();
}

/* pm_set_fatal_handler: every report of the debug hooks on a valid program is a bug. */
__attribute__((noreturn)) static void on_fatal(const char *func, const char *message) {
    fprintf(stderr,
            "\npymalloc-mt fuzz_debug: VIOLATION: the debug hooks reported an error on a "
            "valid program: %s: %s\n",
            func != NULL ? func : "(null)", message != NULL ? message : "(null)");
    abort();
}

static void expect_name(const char *expected, const char *when) {
    const char *name = pm_current_allocator_name();
    if (name != NULL && strcmp(name, expected) == 0) return;
    fprintf(stderr,
            "\npymalloc-mt fuzz_debug: VIOLATION %s: current allocator name \"%s\", expected "
            "\"%s\"\n",
            when, name != NULL ? name : "(null)", expected);
    abort();
}

static void run(const uint8_t *data, size_t size) PM_GIL_REQUIRED {
    pm_set_fatal_handler(on_fatal);
    expect_name("pymalloc", "before the input");
    size_t blocks = pm_allocated_blocks();
    pm_raw_stats raw_before, raw_after;
    pm_get_raw_stats(&raw_before);
    if (blocks != 0) fail("pymalloc has live blocks before the input", "");

    if (pm_setup_debug_hooks() != 0) fail("pm_setup_debug_hooks() failed", "");
    expect_name("pymalloc_debug", "after pm_setup_debug_hooks()");
    const pm_tape_options options = {.raw_faults = NULL, .arena_faults = NULL,
                                     .debug_hooks = true};
    pm_tape_run(data, size, &options);
    expect_name("pymalloc_debug", "after the tape");

    errno = 0;
    if (pm_setup_allocators("default") != 0) {
        fail("pm_setup_allocators(\"default\") failed after the tape: ",
             errno == EBUSY ? "EBUSY, a debug hook still counts live blocks" : strerror(errno));
    }
    expect_name("pymalloc", "after the input");
    if (pm_allocated_blocks() != blocks) fail("pm_allocated_blocks() is not back to 0", "");
    pm_get_raw_stats(&raw_after);
    if (raw_after.live != raw_before.live) {
        fail("the raw domain's live count is not back to its value before the input", "");
    }
    pm_set_fatal_handler(NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pm_gil_acquire();
    run(data, size);
    pm_gil_release();
    return 0;
}
