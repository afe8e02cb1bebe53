/*
 * bench.h — what the benchmark kernels call, and the one thing the CPython adapter exports.
 *
 * Every allocator under test is reduced to three function pointers taken straight from its
 * public entry points (pm_obj_malloc, PyObject_Malloc, malloc, ...), never wrapped: a
 * wrapper would add a call of its own to one side. The kernels copy the pointers into
 * locals and call through them, so every allocator pays the same indirect call, and the
 * "loop" run of tools/bench/compare.py (no-op functions behind the same pointers) measures
 * exactly the part of the loop that is not the allocator.
 *
 * This header must stay free of Python.h and of alloc/pymem_compat.h: bench.c includes it
 * with pymalloc_mt.h, cpython_ops.c with Python.h, and the two API spellings never meet.
 */
#ifndef PM_TOOLS_BENCH_BENCH_H
#define PM_TOOLS_BENCH_BENCH_H

#include <stddef.h>

typedef struct bench_ops {
    void *(*malloc)(size_t size);
    void *(*realloc)(void *ptr, size_t size);
    void (*free)(void *ptr);
} bench_ops;

/* Starts an embedded CPython (isolated configuration: PYTHONMALLOC and the rest of the
 * environment are ignored, so its object domain is its own pymalloc; no site import, to
 * keep start-up short under valgrind), leaves the GIL held by the calling thread and fills
 * *out with PyObject_Malloc, PyObject_Realloc and PyObject_Free. Returns 0, or -1 with a
 * message on stderr. Defined in cpython_ops.c. */
int bench_cpython_init(bench_ops *out);

/* Py_GetVersion() of the embedded interpreter (valid after bench_cpython_init). */
const char *bench_cpython_version(void);

/* CPython's own GIL, for the multi-thread kernels' "CPython pymalloc behind its GIL" rows.
 * The main thread lets go of the GIL before it starts workers (main_release) and takes it
 * back after joining them (main_reacquire). A worker enters with thread_enter (a thread
 * state of its own and the GIL, PyGILState_Ensure) and leaves with thread_exit; in
 * between it may let other threads run with drop followed by take (PyEval_SaveThread /
 * PyEval_RestoreThread on its own thread state). */
void bench_cpython_main_release(void);
void bench_cpython_main_reacquire(void);
void bench_cpython_thread_enter(void);
void bench_cpython_thread_exit(void);
void bench_cpython_gil_drop(void);
void bench_cpython_gil_take(void);

#endif /* PM_TOOLS_BENCH_BENCH_H */
