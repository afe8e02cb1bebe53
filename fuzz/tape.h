/*
 * fuzz/tape.h — the operation tape shared by fuzz_tape and fuzz_failures.
 *
 * An input is decoded into a program of allocator operations over a table of slots, run
 * against the three domains, and checked step by step against a shadow model that lives
 * outside the allocator. Every byte string is a valid program. The encoding, the model and
 * the checks are described at the top of fuzz/tape.c; fuzz/README.md has the short form.
 *
 * Who does what:
 *   pm_tape_run()   one input, start to finish: drops the arena reserve (so each input
 *                   starts with no arena and runs the same way whatever ran before),
 *                   interprets the tape, frees whatever the tape left live, checks that
 *                   every counter is back to its starting value and no arena remains, and
 *                   puts the arena reserve back. Aborts with a message on any violation.
 *   the target      installs what it wants tested around it (failing allocators, debug
 *                   hooks, later per-thread caches, tracing) and takes them away after.
 *
 * Extending: a new allocator mode (a cache, tracing) is a new target that sets it up
 * around pm_tape_run() and, if it changes what the model may assume, a new field in
 * pm_tape_options read by tape.c's expectations (expected_place, expect_in_place). New
 * operations take a free opcode in tape.c's table; old corpora stay valid programs.
 */
#ifndef PM_FUZZ_TAPE_H
#define PM_FUZZ_TAPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gil/gil.h"
#include "tests/support/failing_allocators.h"
#include "tests/support/failing_arena_allocator.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pm_tape_options {
    /* Fault injection. Both NULL: nothing may fail, a NULL from any allocation that is not
     * refused by size is a violation, and opcode 15 switches the configuration by name
     * ("malloc" / "pymalloc"). Either non-NULL: the failing allocator must be installed
     * (raw: in the raw domain; arena: as pymalloc's arena allocator) for the whole run,
     * opcode 15 arms its policy, and every allocation must return NULL exactly when the
     * policies ordered a failure during it. */
    pm_failing_allocator *raw_faults;
    pm_failing_arena_allocator *arena_faults;
    /* CPython's debug hooks are installed in every domain for the whole run (fuzz_debug;
     * not with faults): each domain must hold its hook, the raw one over the C library and
     * the mem and object ones over pymalloc or the C library ("pymalloc_debug" or
     * "malloc_debug"). The model then counts the hooks' 24 bytes per block in placement (a
     * request of n bytes is n + 24 bytes to the allocator under the hook, so 0..488 bytes
     * come from pools and 489 and up from raw), checks every block's decoration (size,
     * API id, pads) and fill bytes (0xCD when new or grown) and each hook's live-block
     * count, and opcode 15 switches between the debug names or round-trips through the
     * plain name and pm_setup_debug_hooks(): the hooks never stay off. See tape.c. */
    bool debug_hooks;
} pm_tape_options;

/* Runs one input. The caller holds the GIL (mem and object domains, pm_heap_check). On
 * return every block the tape allocated is freed, pymalloc has no arena (when it had no
 * live block at the start), the arena reserve is what it was, the configuration is what it
 * was, and every failure policy is disarmed (PM_FAIL_NEVER). */
void pm_tape_run(const uint8_t *data, size_t size, const pm_tape_options *options)
    PM_GIL_REQUIRED;

#ifdef __cplusplus
}
#endif

#endif /* PM_FUZZ_TAPE_H */
