/*
 * fuzz/fuzz_target.h — the one entry point every fuzz target defines.
 *
 * libFuzzer (--config=fuzz) calls LLVMFuzzerTestOneInput once per input, many inputs per
 * process; fuzz/replay_main.c calls the same function for every file of a checked-in corpus
 * in the plain, TSan and ASan builds. Declared here so that each definition has a prototype
 * (-Wmissing-prototypes) and the replay main and the targets cannot disagree on it.
 *
 * Contract for a target: never keep state from one input to the next (free everything,
 * put every allocator back), abort() with a message on stderr on any violation, return 0.
 */
#ifndef PM_FUZZ_FUZZ_TARGET_H
#define PM_FUZZ_FUZZ_TARGET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* For the harnesses' own bookkeeping loops (shadow contents, the live-range tree): keeps
 * them out of libFuzzer's coverage instrumentation, so that their comparisons neither cost
 * a trace call each nor count as "new coverage" of the library. ASan still checks them. */
#if defined(__clang__)
#define PM_FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define PM_FUZZ_NO_COVERAGE
#endif

#ifdef __cplusplus
}
#endif

#endif /* PM_FUZZ_FUZZ_TARGET_H */
