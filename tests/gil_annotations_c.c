/*
 * tests/gil_annotations_c.c — C code written against the GIL's clang thread-safety
 * annotations (gil/gil.h): a counter guarded by the GIL, functions that require it, and
 * the three correct ways to call them. Built in every configuration; under --config=clang
 * (-Wthread-safety -Werror) this file is the proof that the annotations compose: every call
 * below is checked, and it compiles clean.
 *
 * The negative half was checked by hand (it cannot live in the repo: it does not compile).
 * Appending these to this file (with prototypes, for -Wmissing-prototypes)
 *
 *     void forgot(void)        { gil_annot_bump(); }
 *     int peek(void)           { return gil_counter; }
 *     void yield_unheld(void)  { pm_gil_yield(); }
 *     void leak(void)          { pm_gil_acquire(); }
 *     void twice(void)         { pm_gil_acquire(); pm_gil_release(); pm_gil_release(); }
 *
 * makes `bazel build --config=clang //tests:gil_annotations_test` fail with, in order,
 *
 *     error: calling function 'gil_annot_bump' requires holding mutex 'pm_gil' exclusively
 *     error: reading variable 'gil_counter' requires holding mutex 'pm_gil'
 *     error: calling function 'pm_gil_yield' requires holding mutex 'pm_gil' exclusively
 *     error: mutex 'pm_gil' is still held at the end of function
 *     error: releasing mutex 'pm_gil' that was not held
 *            [-Werror,-Wthread-safety-analysis]
 *
 * and the same first error from C++ (a call to gil_annot_bump() added to
 * tests/gil_annotations_test.cc). The default gcc build accepts all of it: the macros
 * expand to nothing there.
 */
#include "tests/gil_annotations_c.h"

static int gil_counter PM_GUARDED_BY(pm_gil);

void gil_annot_bump(void) {
    gil_counter++;
}

int gil_annot_count(void) {
    return gil_counter;
}

void gil_annot_acquire_and_bump(int times) {
    pm_gil_acquire();
    for (int i = 0; i < times; i++) {
        gil_annot_bump();
        pm_gil_yield(); /* requires the GIL too */
    }
    pm_gil_release();
}

void gil_annot_bump_twice(void) {
    gil_annot_bump();
    gil_annot_bump();
}

void gil_annot_bump_after_assert(void) {
    pm_gil_assert_held();
    gil_annot_bump();
}
