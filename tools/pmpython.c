/*
 * pmpython.c — python3.11 (Debian's libpython3.11) with pymalloc-mt serving its three
 * allocator domains.
 *
 * `pmpython ARGS...` is `python3.11 ARGS...`: main() hands its arguments to Py_BytesMain()
 * and returns its status, and the interpreter finds the same standard library. What
 * changes is what CPython's PyMem_RawMalloc, PyMem_Malloc and PyObject_Malloc call: the
 * launcher installs wrappers with CPython's own PyMem_SetAllocator() before the interpreter
 * is initialised, i.e. before the first block is allocated from any domain.
 *
 *   PMPYTHON_ALLOCATOR   raw            mem            obj            PYTHONMALLOC
 *   pymalloc-mt (unset)  pm_raw_*       pm_mem_*       pm_obj_*       pymalloc-mt's, by name
 *   pymalloc-mt-cached   the same, with per-thread caches (GIL mode)   pymalloc-mt's
 *   pymalloc-mt-free     the same, free-threaded mode (no GIL needed)  pymalloc-mt's
 *   stock                CPython's own, nothing installed              CPython's own
 *   malloc               glibc          glibc          glibc          *_debug: CPython's hooks
 *   mimalloc             mi_malloc...   mi_malloc...   mi_malloc...   on top; base name ignored
 *   jemalloc             jemalloc       jemalloc       jemalloc
 *
 * Any other value: a one-line error on stderr and exit status 2, before Python starts.
 *
 * Start-up, in order:
 *   1. CPython's pre-initialisation, Py_PreInitializeFromBytesArgs(), with the arguments
 *      and the PyPreConfig that Py_BytesMain would use. It parses PYTHONMALLOC, -E, -I,
 *      -X dev and PYTHONDEVMODE with CPython's own rules (PYTHONMALLOC beats dev mode; -E
 *      and -I ignore it), reports an unknown name in its own words with its own status
 *      (1), and installs the allocators it resolved.
 *   2. The launcher reads that resolution back by name (_PyMem_GetCurrentAllocatorName:
 *      "pymalloc", "pymalloc_debug", "malloc" or "malloc_debug"), configures pymalloc-mt
 *      with the same name (pm_setup_allocators: CPython's meaning, pymalloc-mt's
 *      implementation of it, debug hooks included) and installs its wrappers in place of
 *      what CPython installed.
 *   3. Py_BytesMain(): CPython ignores a second pre-initialisation, so nothing in it
 *      touches the allocators again. Initialisation then allocates everything through ours.
 *
 * Why CPython resolves PYTHONMALLOC and not the launcher. Hiding the variable from the
 * pre-initialisation (an allocator of PYMEM_ALLOCATOR_NOT_SET in PyPreConfig does not
 * hide it: NOT_SET means "read PYTHONMALLOC") would have meant re-implementing -E, -I,
 * dev mode and their priorities, and the exact fatal error for an unknown name. Letting
 * CPython resolve it keeps all of that CPython's, and the variable stays in the
 * environment, so children started with sys.executable (which is this launcher) see it.
 * What CPython installs in step 1 serves no allocation: between _PyPreConfig_Write()
 * installing it and the end of pre-initialisation nothing allocates, and everything
 * allocated before it used CPython's default raw allocator explicitly, which frees it the
 * same way at finalisation. The proof is in the tests: sys.getallocatedblocks(), which
 * counts CPython's own pymalloc, reads 0 under this launcher.
 *
 * The GIL. pymalloc-mt's mem and object entry points are PM_GIL_REQUIRED. CPython holds
 * its GIL whenever it calls those two domains (that is its API contract, and extension
 * code that breaks it is what the debug hooks catch). So:
 *   - pm_gil_set_check(PyGILState_Check) makes pm_gil_held() CPython's answer. That
 *     function answers 1 before initialisation and after finalisation (its thread-state
 *     key does not exist then: one thread, nothing to race), and 1 once subinterpreters
 *     exist (it gives up), as it does for CPython's own debug hooks.
 *   - The hot wrappers state the contract to clang's analysis with a no-op assertion and
 *     check nothing at run time, as CPython's own allocators do; with PYTHONMALLOC=debug
 *     (or *_debug, or -X dev), pymalloc-mt's debug hooks check pm_gil_held() on every mem
 *     and object call and report a violation in CPython's words.
 *   - Fatal errors from the debug hooks go to CPython's _Py_FatalErrorFunc, which adds
 *     the runtime state, the Python traceback of every thread and the extension modules,
 *     exactly as a stock interpreter reports them.
 *
 * Peer allocators (for the benchmarks). mimalloc's and jemalloc's Debian libraries both
 * export malloc/free themselves: linked in (or LD_PRELOADed) they would replace glibc for
 * the whole process, pymalloc-mt's raw domain and the "malloc" rows included. So they
 * are dlopen()ed with RTLD_LOCAL and only the functions the wrappers call are looked up;
 * like pymalloc-mt, they serve CPython's three domains and nothing else, and every other
 * malloc in the process (libc, extension modules' own buffers) stays glibc's in every row.
 * jemalloc keeps 2.6 KiB of initial-exec TLS, more than the 512 bytes glibc sets aside for
 * libraries loaded later, so its dlopen fails ("cannot allocate memory in static TLS
 * block") unless the process starts with more: the launcher re-executes itself once with
 * GLIBC_TUNABLES=glibc.rtld.optional_static_tls=16384 added (the variable stays set, so
 * children started with sys.executable need no second exec).
 *
 * Thread caches and free-threaded mode (pm_init) are chosen in configure_pymalloc_mt(),
 * before the first allocation. CPython still serialises its own calls with its GIL, so
 * free-threaded mode changes what pymalloc-mt does, not what CPython does: the caches are
 * per thread and the debug hooks stop asking for the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc/pymalloc_mt.h"
#include "gil/gil.h"

/* Exported by libpython3.11 but declared only in its internal headers (pycore_pymem.h),
 * which need Py_BUILD_CORE: the name of the allocators installed in CPython's domains,
 * or NULL when they are not one of its own configurations. */
extern const char *_PyMem_GetCurrentAllocatorName(void);

/* ---- pymalloc-mt in CPython's domains -------------------------------------------------- */

/* CPython calls the mem and object domains only with its GIL held. This tells clang's
 * thread-safety analysis so, at no run-time cost; the run-time check is the debug hooks'
 * (see the design note). */
static inline void cpython_holds_the_gil(void) PM_ASSERT_CAPABILITY(pm_gil) {}

static void *raw_malloc(void *ctx, size_t size) {
    (void)ctx;
    return pm_raw_malloc(size);
}
static void *raw_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    return pm_raw_calloc(nelem, elsize);
}
static void *raw_realloc(void *ctx, void *ptr, size_t new_size) {
    (void)ctx;
    return pm_raw_realloc(ptr, new_size);
}
static void raw_free(void *ctx, void *ptr) {
    (void)ctx;
    pm_raw_free(ptr);
}

static void *mem_malloc(void *ctx, size_t size) {
    (void)ctx;
    cpython_holds_the_gil();
    return pm_mem_malloc(size);
}
static void *mem_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    cpython_holds_the_gil();
    return pm_mem_calloc(nelem, elsize);
}
static void *mem_realloc(void *ctx, void *ptr, size_t new_size) {
    (void)ctx;
    cpython_holds_the_gil();
    return pm_mem_realloc(ptr, new_size);
}
static void mem_free(void *ctx, void *ptr) {
    (void)ctx;
    cpython_holds_the_gil();
    pm_mem_free(ptr);
}

static void *obj_malloc(void *ctx, size_t size) {
    (void)ctx;
    cpython_holds_the_gil();
    return pm_obj_malloc(size);
}
static void *obj_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    cpython_holds_the_gil();
    return pm_obj_calloc(nelem, elsize);
}
static void *obj_realloc(void *ctx, void *ptr, size_t new_size) {
    (void)ctx;
    cpython_holds_the_gil();
    return pm_obj_realloc(ptr, new_size);
}
static void obj_free(void *ctx, void *ptr) {
    (void)ctx;
    cpython_holds_the_gil();
    pm_obj_free(ptr);
}

/* Sets pymalloc-mt up as CPython resolved PYTHONMALLOC (`name` is one of CPython's four
 * names), with CPython's GIL and fatal-error reporting. Returns 0, or -1 after a message. */
static int configure_pymalloc_mt(const char *name, int thread_caches, int free_threaded) {
    pm_config config;
    pm_config_init(&config);
    config.thread_caches = thread_caches;
    config.free_threaded = free_threaded;
    if (pm_init(&config) != 0) {
        fprintf(stderr, "pmpython: pm_init: %s\n", strerror(errno));
        return -1;
    }
    pm_gil_set_check(PyGILState_Check);
    pm_set_fatal_handler(_Py_FatalErrorFunc);
    /* Not initialised yet: one thread, and PyGILState_Check() answers 1 (design note). */
    pm_gil_assert_held();
    if (pm_setup_allocators(name) != 0) {
        fprintf(stderr, "pmpython: cannot set pymalloc-mt up as PYTHONMALLOC=%s: %s\n", name,
                strerror(errno));
        return -1;
    }
    /* PYTHONMALLOCSTATS, unless -E or -I told CPython to ignore the environment. This also
     * applies PYTHONMALLOC again, which is the name just installed when the environment is
     * in use (installing what is installed changes nothing). */
    if (!Py_IgnoreEnvironmentFlag && pm_init_from_env() != 0) return -1;
    return 0;
}

static void install_pymalloc_mt(void) {
    PyMemAllocatorEx raw = {NULL, raw_malloc, raw_calloc, raw_realloc, raw_free};
    PyMemAllocatorEx mem = {NULL, mem_malloc, mem_calloc, mem_realloc, mem_free};
    PyMemAllocatorEx obj = {NULL, obj_malloc, obj_calloc, obj_realloc, obj_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &raw);
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &mem);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &obj);
}

/* ---- peer allocators: glibc, mimalloc, jemalloc ----------------------------------------- */

typedef struct peer_allocator {
    void *(*malloc)(size_t size);
    void *(*calloc)(size_t nelem, size_t elsize);
    void *(*realloc)(void *ptr, size_t new_size);
    void (*free)(void *ptr);
} peer_allocator;

/* CPython's rule for its raw allocator: 0 bytes is 1 byte, so that every request gets a
 * distinct non-NULL pointer whatever the C library does with 0. */
static void *peer_malloc(void *ctx, size_t size) {
    const peer_allocator *peer = ctx;
    return peer->malloc(size == 0 ? 1 : size);
}
static void *peer_calloc(void *ctx, size_t nelem, size_t elsize) {
    const peer_allocator *peer = ctx;
    if (nelem == 0 || elsize == 0) nelem = elsize = 1;
    return peer->calloc(nelem, elsize);
}
static void *peer_realloc(void *ctx, void *ptr, size_t new_size) {
    const peer_allocator *peer = ctx;
    return peer->realloc(ptr, new_size == 0 ? 1 : new_size);
}
static void peer_free(void *ctx, void *ptr) {
    const peer_allocator *peer = ctx;
    peer->free(ptr);
}

/* Looks the four functions up in a library loaded privately (see the design note).
 * Returns 0, or -1 after a message. The library stays loaded for the life of the process. */
static int load_peer(const char *library, const char *const names[4], peer_allocator *out) {
    void *handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        fprintf(stderr, "pmpython: cannot load %s: %s\n", library, dlerror());
        return -1;
    }
    void *found[4];
    for (int i = 0; i < 4; i++) {
        found[i] = dlsym(handle, names[i]);
        if (found[i] == NULL) {
            fprintf(stderr, "pmpython: %s has no %s: %s\n", library, names[i], dlerror());
            return -1;
        }
    }
    /* dlsym returns object pointers; POSIX guarantees they convert to function pointers. */
    out->malloc = (void *(*)(size_t))(uintptr_t)found[0];
    out->calloc = (void *(*)(size_t, size_t))(uintptr_t)found[1];
    out->realloc = (void *(*)(void *, size_t))(uintptr_t)found[2];
    out->free = (void (*)(void *))(uintptr_t)found[3];
    return 0;
}

/* glibc's room for initial-exec TLS of libraries loaded later: jemalloc needs 2632 bytes,
 * and extension modules loaded later may want some too. */
#define STATIC_TLS_TUNABLE "glibc.rtld.optional_static_tls"
#define STATIC_TLS_TUNABLE_SETTING STATIC_TLS_TUNABLE "=16384"

/* For jemalloc: unless GLIBC_TUNABLES already sets the static TLS room (this process was
 * re-executed, or the user chose a size), re-executes this program with the same
 * arguments and the setting added. Returns only if that is not needed, or after a message
 * if it failed. */
static void reexec_with_static_tls_room(char **argv) {
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (tunables != NULL && strstr(tunables, STATIC_TLS_TUNABLE) != NULL) return;
    char setting[4096];
    int n = snprintf(setting, sizeof setting, "%s%s%s", tunables != NULL ? tunables : "",
                     tunables != NULL && tunables[0] != '\0' ? ":" : "", STATIC_TLS_TUNABLE_SETTING);
    if (n < 0 || (size_t)n >= sizeof setting || setenv("GLIBC_TUNABLES", setting, 1) != 0) {
        fputs("pmpython: cannot add " STATIC_TLS_TUNABLE_SETTING " to GLIBC_TUNABLES\n", stderr);
        return;
    }
    execv("/proc/self/exe", argv); /* argv[0] unchanged, so sys.executable is unchanged */
    fprintf(stderr, "pmpython: cannot re-execute /proc/self/exe: %s\n", strerror(errno));
}

/* Installs `peer` in all three domains; CPython's debug hooks go on top when CPython
 * resolved PYTHONMALLOC (or dev mode) to a debug configuration. */
static void install_peer(peer_allocator *peer, bool debug_hooks) {
    PyMemAllocatorEx wrapper = {peer, peer_malloc, peer_calloc, peer_realloc, peer_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &wrapper);
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &wrapper);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &wrapper);
    if (debug_hooks) PyMem_SetupDebugHooks();
}

/* ---- choosing --------------------------------------------------------------------------- */

typedef enum launcher_allocator {
    USE_PYMALLOC_MT,
    USE_PYMALLOC_MT_CACHED,
    USE_PYMALLOC_MT_FREE,
    USE_STOCK,
    USE_GLIBC,
    USE_MIMALLOC,
    USE_JEMALLOC,
} launcher_allocator;

static const struct {
    const char *name;
    launcher_allocator which;
} allocator_names[] = {
    {"pymalloc-mt", USE_PYMALLOC_MT}, {"pymalloc-mt-cached", USE_PYMALLOC_MT_CACHED},
    {"pymalloc-mt-free", USE_PYMALLOC_MT_FREE}, {"stock", USE_STOCK}, {"malloc", USE_GLIBC},
    {"mimalloc", USE_MIMALLOC},       {"jemalloc", USE_JEMALLOC},
};

#define ALLOCATOR_NAME_COUNT (sizeof allocator_names / sizeof allocator_names[0])

/* PMPYTHON_ALLOCATOR, unset or empty meaning pymalloc-mt. Returns false for another value. */
static bool choose_allocator(launcher_allocator *out) {
    const char *value = getenv("PMPYTHON_ALLOCATOR");
    if (value == NULL || value[0] == '\0') {
        *out = USE_PYMALLOC_MT;
        return true;
    }
    for (size_t i = 0; i < ALLOCATOR_NAME_COUNT; i++) {
        if (strcmp(value, allocator_names[i].name) == 0) {
            *out = allocator_names[i].which;
            return true;
        }
    }
    fprintf(stderr, "pmpython: PMPYTHON_ALLOCATOR=%s: unknown allocator (known:", value);
    for (size_t i = 0; i < ALLOCATOR_NAME_COUNT; i++)
        fprintf(stderr, " %s", allocator_names[i].name);
    fputs(")\n", stderr);
    return false;
}

/* Installs `which` as CPython resolved PYTHONMALLOC to `name`. Returns 0 or -1. */
static int install(launcher_allocator which, const char *name) {
    static peer_allocator peer; /* the wrappers' context: must outlive the interpreter */
    bool debug_hooks = strstr(name, "_debug") != NULL;
    switch (which) {
    case USE_PYMALLOC_MT:
    case USE_PYMALLOC_MT_CACHED:
    case USE_PYMALLOC_MT_FREE:
        if (configure_pymalloc_mt(name, which != USE_PYMALLOC_MT, which == USE_PYMALLOC_MT_FREE) != 0) {
            return -1;
        }
        install_pymalloc_mt();
        return 0;
    case USE_GLIBC:
        peer = (peer_allocator){malloc, calloc, realloc, free};
        break;
    case USE_MIMALLOC: {
        static const char *const names[4] = {"mi_malloc", "mi_calloc", "mi_realloc", "mi_free"};
        if (load_peer("libmimalloc.so.2", names, &peer) != 0) return -1;
        break;
    }
    case USE_JEMALLOC: {
        static const char *const names[4] = {"malloc", "calloc", "realloc", "free"};
        if (load_peer("libjemalloc.so.2", names, &peer) != 0) return -1;
        break;
    }
    case USE_STOCK:
    default:
        return 0;
    }
    install_peer(&peer, debug_hooks);
    return 0;
}

int main(int argc, char **argv) {
    launcher_allocator which;
    if (!choose_allocator(&which)) return 2;
    if (which == USE_STOCK) return Py_BytesMain(argc, argv);
    if (which == USE_JEMALLOC) reexec_with_static_tls_room(argv);

    /* Step 1 of the design note: the pre-initialisation Py_BytesMain would do. */
    PyPreConfig preconfig;
    PyPreConfig_InitPythonConfig(&preconfig);
    PyStatus status = Py_PreInitializeFromBytesArgs(&preconfig, argc, argv);
    if (PyStatus_Exception(status)) Py_ExitStatusException(status); /* as Py_BytesMain */

    /* Step 2. */
    const char *name = _PyMem_GetCurrentAllocatorName();
    if (name == NULL) {
        fputs("pmpython: CPython's pre-initialisation installed allocators it cannot name\n",
              stderr);
        return 1;
    }
    if (install(which, name) != 0) return 1;

    /* Step 3. */
    return Py_BytesMain(argc, argv);
}
