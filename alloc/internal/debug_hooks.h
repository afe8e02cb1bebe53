/*
 * debug_hooks.h — CPython's debug hooks (alloc/debug_hooks.c), for the library's own layers:
 * configuration by name (alloc/config.c) and, later, tracing.
 *
 * The block each hook hands out (p is what the caller gets; alloc/debug_hooks.c has more):
 *
 *   [SSSS SSSS I FFFFFFF DDDD...DDDD FFFFFFFF]   S size (big-endian), I API id, F 0xFD,
 *    ^ p-16    ^ p-8     ^ p          ^ p+n      D data (0xCD new, 0xDD once freed)
 *
 * A hook is an ordinary pm_allocator whose functions are the debug hook's and whose ctx is
 * a pm_debug_ctx: the API id of the domain it serves and a copy of the allocator it wraps.
 * Contexts are interned and never freed or changed after they are published (only their
 * live-block counter moves), so a caller that loaded a hook from a table may use it for as
 * long as it likes, whatever pm_set_allocator() does meanwhile (see alloc/domain.c).
 */
#ifndef PM_ALLOC_INTERNAL_DEBUG_HOOKS_H
#define PM_ALLOC_INTERNAL_DEBUG_HOOKS_H

#include <stddef.h>

#include "alloc/pymalloc_mt.h"

/* Internal symbols: hidden, like the rest of alloc/internal. */
#pragma GCC visibility push(hidden)

#ifdef __cplusplus
extern "C" { /* white-box tests are C++ */
#endif

/* The block layout, CPython's (see alloc/debug_hooks.c). */
#define PM_DEBUG_SST sizeof(size_t)               /* bytes of the size field */
#define PM_DEBUG_EXTRA_BYTES (3 * PM_DEBUG_SST)   /* header 2*SST + trailer SST */
#define PM_DEBUG_CLEANBYTE 0xCD                   /* new data */
#define PM_DEBUG_DEADBYTE 0xDD                    /* freed (and realloc's old) block */
#define PM_DEBUG_FORBIDDENBYTE 0xFD               /* the pads around the data */

typedef struct pm_debug_ctx {
    char api_id;          /* 'r', 'm' or 'o': written into each block, checked on free */
    pm_allocator wrapped; /* what the hook calls for the memory itself */
    size_t live_blocks;   /* blocks this hook handed out and has not freed (atomic) */
    struct pm_debug_ctx *next; /* the intern list; immutable once published */
} pm_debug_ctx;

/* The API id CPython uses for each domain. */
char pm_debug_api_id(pm_domain domain);

/* Live blocks of every debug hook of this API id except `except` (NULL: of all of them),
 * installed or buried under other hooks. Configuration by name refuses a switch that would
 * strand them (alloc/config.c). */
size_t pm_debug_hooks_live_blocks(char api_id, const pm_debug_ctx *except);

/* The hook's context if `a` is one of the debug hooks (of any domain), else NULL. */
const pm_debug_ctx *pm_debug_hook_ctx(const pm_allocator *a);

/* Fills *out with the debug hook that `domain` uses to wrap `wrapped`: the raw variant for
 * PM_DOMAIN_RAW (no GIL check), the GIL-checking one for mem and object. Equal arguments
 * give an equal allocator (the context is interned). Returns 0, or -1 with errno = ENOMEM
 * when no context can be made, or EINVAL for an unknown domain. */
int pm_debug_hook_make(pm_domain domain, const pm_allocator *wrapped, pm_allocator *out);

/* Where a block report asks for the allocation traceback. NULL (today): the report prints
 * CPython's "Enable tracemalloc to get the memory block allocation traceback" and an empty
 * line. Tracing installs a printer (with pm_atomic_store_ptr_release) that writes, to fd,
 * what CPython's _PyMem_DumpTraceback writes for ptr: that line when not tracing, nothing
 * when ptr is untraced, else "Memory block allocated at (most recent call first):", one
 * line per frame and an empty line. It must not allocate. */
typedef void (*pm_debug_traceback_fn)(int fd, const void *ptr);
extern pm_debug_traceback_fn pm_debug_traceback_printer;

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif /* PM_ALLOC_INTERNAL_DEBUG_HOOKS_H */
