/*
 * sync/annotate.h — the two kinds of annotation every sync/ primitive carries.
 * Private to sync/: include "sync/sync.h".
 *
 * 1. Clang thread-safety attributes (PM_CAPABILITY, PM_ACQUIRE, ...). With --config=clang
 *    (-Wthread-safety) the compiler checks lock contracts written on functions: "this
 *    function needs the heap lock", "this one takes it". They expand to nothing on gcc, so
 *    they cost nothing and cannot change code generation. Clang 14 accepts them on C
 *    functions and on a typedef'd struct (the capability type); it does not reliably accept
 *    them on C struct fields, so contracts live on functions (shared/STYLE.md, point 8).
 *
 * 2. ThreadSanitizer hooks (PM_TSAN_ACQUIRE, PM_TSAN_RELEASE, PM_TSAN_MUTEX_*). Concurrency
 *    Kit's ck_pr operations are inline assembly, which TSan does not instrument: it sees
 *    neither the access nor the ordering. Without help, data published through a ck_pr
 *    release store and read after a ck_pr acquire load is reported as a data race
 *    (measured, shared/BUILDING.md; re-measured for this package, see tests/sync_publish_test.cc).
 *    So every ordering operation in sync/ tells TSan about the happens-before edge it
 *    creates: __tsan_release(addr) immediately BEFORE a releasing write or RMW on addr,
 *    __tsan_acquire(addr) immediately AFTER an acquiring read or RMW on addr. Locks use the
 *    richer __tsan_mutex_* interface so TSan also sees lock ownership (better reports,
 *    double-unlock and lock-order-inversion detection). The hooks compile to nothing
 *    unless the translation unit is built with -fsanitize=thread, so TSan checks the same
 *    ck code that ships; there is no "TSan variant" of any algorithm here.
 *
 * Why release goes before and acquire after: TSan snapshots the thread's vector clock at
 * __tsan_release. Any plain write the thread makes after that snapshot is not covered by
 * it, so the annotation must sit after the last write being published, i.e. right before
 * the store that publishes. Symmetrically, reads after __tsan_acquire are covered, so it
 * must sit right after the load that observes the publication.
 */
#ifndef PM_SYNC_ANNOTATE_H
#define PM_SYNC_ANNOTATE_H

/* ---- Clang thread-safety analysis ------------------------------------------------------ */

#if defined(__clang__)
#define PM_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define PM_THREAD_ANNOTATION(x)
#endif

/* On a typedef'd struct: objects of this type are locks ("mutex") for the analysis. */
#define PM_CAPABILITY(name) PM_THREAD_ANNOTATION(capability(name))
/* On a function: it acquires / releases / tries to acquire the named capabilities. */
#define PM_ACQUIRE(...) PM_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define PM_RELEASE(...) PM_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
/* First argument: the return value that means "acquired" (true for our bool trylocks). */
#define PM_TRY_ACQUIRE(...) PM_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
/* On a function: callers must hold / must not hold the capabilities. */
#define PM_REQUIRES(...) PM_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define PM_EXCLUDES(...) PM_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
/* On a lock object: it must be taken before the named locks (lock ranking). */
#define PM_ACQUIRED_BEFORE(...) PM_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
/* On a function that aborts unless the capability is held; the analysis then assumes it. */
#define PM_ASSERT_CAPABILITY(x) PM_THREAD_ANNOTATION(assert_capability(x))
/* On a function returning a reference to a lock, e.g. "the lock of this pool". */
#define PM_RETURN_CAPABILITY(x) PM_THREAD_ANNOTATION(lock_returned(x))
/* On a C++ class whose constructor acquires and destructor releases (an RAII guard). */
#define PM_SCOPED_CAPABILITY PM_THREAD_ANNOTATION(scoped_lockable)
/* On variables (globals in C; fields only in C++ with clang 14): protected by the lock. */
#define PM_GUARDED_BY(x) PM_THREAD_ANNOTATION(guarded_by(x))
#define PM_PT_GUARDED_BY(x) PM_THREAD_ANNOTATION(pt_guarded_by(x))
/* Only for the bodies of lock implementations (sync/, and the GIL in gil/), whose job is to
 * change lock state in ways the analysis cannot follow. Anywhere else it would hide real
 * bugs; tests that exercise misuse call through function pointers instead. */
#define PM_NO_THREAD_SAFETY_ANALYSIS PM_THREAD_ANNOTATION(no_thread_safety_analysis)

/* ---- ThreadSanitizer ----------------------------------------------------------------- */

/* gcc defines __SANITIZE_THREAD__; clang 14 only answers __has_feature. */
#if defined(__SANITIZE_THREAD__)
#define PM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PM_TSAN 1
#endif
#endif
#ifndef PM_TSAN
#define PM_TSAN 0
#endif

#if PM_TSAN
#include <sanitizer/tsan_interface.h>
#include <stdint.h>

/* The TSan interface takes void *; our acquiring loads have const addresses. The
 * uintptr_t round trip drops const without a qualifier-cast warning. TSan only uses the
 * address as a key for its synchronisation object and never writes through it. */
#define PM_TSAN_ADDR(addr) ((void *)(uintptr_t)(const void *)(addr))
#define PM_TSAN_ACQUIRE(addr) __tsan_acquire(PM_TSAN_ADDR(addr))
#define PM_TSAN_RELEASE(addr) __tsan_release(PM_TSAN_ADDR(addr))
#define PM_TSAN_MUTEX_CREATE(m, flags) __tsan_mutex_create(PM_TSAN_ADDR(m), (flags))
#define PM_TSAN_MUTEX_DESTROY(m, flags) __tsan_mutex_destroy(PM_TSAN_ADDR(m), (flags))
#define PM_TSAN_MUTEX_PRE_LOCK(m, flags) __tsan_mutex_pre_lock(PM_TSAN_ADDR(m), (flags))
#define PM_TSAN_MUTEX_POST_LOCK(m, flags, rec) \
    __tsan_mutex_post_lock(PM_TSAN_ADDR(m), (flags), (rec))
#define PM_TSAN_MUTEX_PRE_UNLOCK(m, flags) (void)__tsan_mutex_pre_unlock(PM_TSAN_ADDR(m), (flags))
#define PM_TSAN_MUTEX_POST_UNLOCK(m, flags) __tsan_mutex_post_unlock(PM_TSAN_ADDR(m), (flags))
#define PM_TSAN_MUTEX_NOT_STATIC __tsan_mutex_not_static
#define PM_TSAN_MUTEX_TRY_LOCK __tsan_mutex_try_lock
#define PM_TSAN_MUTEX_TRY_LOCK_FAILED __tsan_mutex_try_lock_failed
#else
/* Evaluate nothing, but keep the arguments "used" so no build warns differently. */
#define PM_TSAN_ACQUIRE(addr) ((void)sizeof(addr))
#define PM_TSAN_RELEASE(addr) ((void)sizeof(addr))
#define PM_TSAN_MUTEX_CREATE(m, flags) ((void)sizeof(m), (void)(flags))
#define PM_TSAN_MUTEX_DESTROY(m, flags) ((void)sizeof(m), (void)(flags))
#define PM_TSAN_MUTEX_PRE_LOCK(m, flags) ((void)sizeof(m), (void)(flags))
#define PM_TSAN_MUTEX_POST_LOCK(m, flags, rec) ((void)sizeof(m), (void)(flags), (void)(rec))
#define PM_TSAN_MUTEX_PRE_UNLOCK(m, flags) ((void)sizeof(m), (void)(flags))
#define PM_TSAN_MUTEX_POST_UNLOCK(m, flags) ((void)sizeof(m), (void)(flags))
#define PM_TSAN_MUTEX_NOT_STATIC 0u
#define PM_TSAN_MUTEX_TRY_LOCK 0u
#define PM_TSAN_MUTEX_TRY_LOCK_FAILED 0u
#endif

/* Branch hints for fast paths (no-ops where unsupported). */
#if defined(__GNUC__)
#define PM_SYNC_LIKELY(x) __builtin_expect(!!(x), 1)
#define PM_SYNC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define PM_SYNC_LIKELY(x) (x)
#define PM_SYNC_UNLIKELY(x) (x)
#endif

#endif /* PM_SYNC_ANNOTATE_H */
