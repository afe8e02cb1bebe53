/*
 * fuzz/fuzz_tape.c — fuzz target: the operation tape on the installed configuration.
 *
 * Every input is a program of malloc / calloc / realloc / free / object operations over
 * the raw, mem and object domains, checked against a shadow model (fuzz/tape.c has the
 * encoding and the list of checks). Nothing fails on purpose here: any NULL from an
 * allocation the API does not refuse is a violation. Opcode 15 switches between the
 * "malloc" and "pymalloc" configurations by name, so the mem/obj routes that bypass
 * pymalloc are fuzzed too, together with the EBUSY rule of pm_setup_allocators().
 *
 * State between inputs: pm_tape_run() frees everything, restores the configuration and the
 * arena reserve, and starts each input with no arena, so an input behaves the same whatever
 * ran before it. The GIL is held for the whole input (the mem and object domains need it).
 */
#include "fuzz/fuzz_target.h"
#include "fuzz/tape.h"
#include "gil/gil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const pm_tape_options options = {.raw_faults = NULL, .arena_faults = NULL};
    pm_gil_acquire();
    pm_tape_run(data, size, &options);
    pm_gil_release();
    return 0;
}
