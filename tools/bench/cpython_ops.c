/*
 * cpython_ops.c — the CPython 3.11 side of the benchmark: Debian's libpython3.11, started
 * in-process, its object domain called exactly as an extension module would call it.
 *
 * The only file of tools/bench that includes Python.h (alloc/pymem_compat.h spells the
 * same names over pymalloc-mt and must never meet it; bench.c never includes either).
 *
 * What is measured is PyObject_Malloc / PyObject_Realloc / PyObject_Free after
 * Py_InitializeFromConfig(), with the main thread holding the GIL, as in any C extension:
 * the public entry point, its indirect call through the domain table, and pymalloc behind
 * it, with whatever arenas the interpreter's own start-up left in use. The isolated
 * configuration ignores PYTHONMALLOC, so a stray environment variable cannot swap in the
 * debug hooks or malloc and silently change what the "CPython pymalloc" row means.
 *
 * The multi-thread kernels make pymalloc thread-safe the two ways CPython can be: behind a
 * mutex (bench.c, no Python state involved) or behind CPython's own GIL, which the
 * functions at the end of this file take and give with the public C API, as a C extension
 * that runs threads of its own would.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "tools/bench/bench.h"

#include <stdio.h>
#include <stdlib.h>

int bench_cpython_init(bench_ops *out) {
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;             /* fewer allocations at start-up; nothing needs it */
    config.install_signal_handlers = 0; /* leave SIGINT to the benchmark's default */
    PyStatus status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        fprintf(stderr, "bench: Py_InitializeFromConfig failed: %s\n",
                status.err_msg != NULL ? status.err_msg : "(no message)");
        return -1;
    }
    if (!PyGILState_Check()) {
        fprintf(stderr, "bench: the main thread does not hold the GIL after initialisation\n");
        return -1;
    }
    out->malloc = PyObject_Malloc;
    out->realloc = PyObject_Realloc;
    out->free = PyObject_Free;
    return 0;
}

const char *bench_cpython_version(void) {
    return Py_GetVersion();
}

/* The main thread's state while workers run, and each worker's own. */
static PyThreadState *main_state;
static _Thread_local PyThreadState *worker_state;
static _Thread_local PyGILState_STATE worker_gilstate;

void bench_cpython_main_release(void) {
    main_state = PyEval_SaveThread();
}

void bench_cpython_main_reacquire(void) {
    PyEval_RestoreThread(main_state);
    main_state = NULL;
}

void bench_cpython_thread_enter(void) {
    worker_gilstate = PyGILState_Ensure();
}

void bench_cpython_thread_exit(void) {
    PyGILState_Release(worker_gilstate);
}

void bench_cpython_gil_drop(void) {
    worker_state = PyEval_SaveThread();
}

void bench_cpython_gil_take(void) {
    if (worker_state == NULL) {
        fprintf(stderr, "bench: bench_cpython_gil_take without bench_cpython_gil_drop\n");
        abort();
    }
    PyEval_RestoreThread(worker_state);
    worker_state = NULL;
}
