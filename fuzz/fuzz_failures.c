/*
 * fuzz/fuzz_failures.c — fuzz target: the operation tape with injected failures.
 *
 * The same tape as fuzz_tape (fuzz/tape.c), run with a failing allocator in the raw domain
 * (which pymalloc also uses for 0-byte and > 512-byte requests) and a failing arena
 * allocator under pymalloc (tests/support/). Opcode 15 arms either policy: fail the Nth
 * call from now, every call from the Nth, every request of at least some size, or never.
 * The tape then requires that every allocation returns NULL exactly when a failure was
 * ordered during it, that a failed realloc leaves its block valid and unchanged, that the
 * shadow model stays intact and that pm_heap_check() passes; at the end, that every arena
 * the failing arena allocator handed out has come back to it.
 *
 * Arenas: pymalloc asks for one only when no partly used or reserved arena has a free
 * pool, so the reserve is emptied before the failing arena allocator goes in (every arena
 * of this input is then its own), and the tape's RESERVE opcode can set it to 0 again so
 * that arenas are really released and re-requested in the middle of a run.
 *
 * Lifetime: pymalloc gives each arena back to the allocator that made it, even after that
 * one is uninstalled, so the failing arena allocator is static (see
 * failing_arena_allocator.h). Per input: the reserve is emptied, both failing allocators
 * installed, the tape run (it frees everything and empties the reserve), the arena count
 * checked, both uninstalled and the reserve restored, all with the GIL held.
 */
#include <stdio.h>
#include <stdlib.h>

#include "alloc/pymalloc_mt.h"
#include "fuzz/fuzz_target.h"
#include "fuzz/tape.h"
#include "gil/gil.h"
#include "tests/support/failing_allocators.h"
#include "tests/support/failing_arena_allocator.h"

static pm_failing_allocator raw_faults;
static pm_failing_arena_allocator arena_faults;

__attribute__((noreturn)) static void fail(const char *what) {
    fprintf(stderr, "\npymalloc-mt fuzz_failures: VIOLATION: %s\n", what);
    abort();
}

static void run(const uint8_t *data, size_t size) PM_GIL_REQUIRED {
    size_t reserve = pm_get_arena_reserve();
    pm_set_arena_reserve(0);
    if (pm_failing_allocator_install(&raw_faults, PM_DOMAIN_RAW) != 0) {
        fail("cannot install the failing raw allocator");
    }
    if (pm_failing_arena_allocator_install(&arena_faults) != 0) {
        fail("cannot install the failing arena allocator");
    }
    const pm_tape_options options = {.raw_faults = &raw_faults, .arena_faults = &arena_faults};
    pm_tape_run(data, size, &options);

    pm_failing_arena_counts arenas = pm_failing_arena_allocator_counts(&arena_faults);
    if (arenas.live != 0 && pm_allocated_blocks() == 0) {
        fprintf(stderr, "arena allocator: %llu allocs, %llu failures, %llu frees\n",
                (unsigned long long)arenas.allocs, (unsigned long long)arenas.failures,
                (unsigned long long)arenas.frees);
        fail("arenas handed out during the input were not all given back");
    }
    if (arenas.odd_sizes != 0) fail("pymalloc asked the arena allocator for another size");
    if (pm_failing_arena_allocator_uninstall(&arena_faults) != 0) {
        fail("cannot uninstall the failing arena allocator");
    }
    if (pm_failing_allocator_uninstall(&raw_faults) != 0) {
        fail("cannot uninstall the failing raw allocator");
    }
    pm_set_arena_reserve(reserve);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pm_gil_acquire();
    run(data, size);
    pm_gil_release();
    return 0;
}
