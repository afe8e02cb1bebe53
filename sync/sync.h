/*
 * sync/sync.h — the one public header of sync/, the bottom layer of pymalloc-mt.
 *
 * sync/ owns every piece of concurrency machinery the project uses, and is the only
 * folder that includes Concurrency Kit. Layers above (gil/, alloc/, tests, fuzz, tools)
 * include this header and nothing from ck or <stdatomic.h>:
 *
 *   sync/annotate.h  clang thread-safety attribute macros (PM_ACQUIRE, PM_REQUIRES, ...)
 *                    and the ThreadSanitizer hooks every primitive below uses
 *   sync/atomic.h    pm_atomic_* over ck_pr: relaxed / acquire / release / acq_rel
 *                    loads, stores, CAS, swap, fetch-and-add; fences; pm_cpu_relax
 *   sync/lock.h      pm_spinlock (ck FAS lock, spin then yield), pm_mutex and pm_cond
 *                    (pthread, CLOCK_MONOTONIC timeouts)
 *   sync/lifo.h      pm_lifo, a lock-free multi-producer multi-consumer LIFO with
 *                    push / push_chain / pop_all, for batched cross-thread hand-offs
 *
 * Why a wrapper layer instead of ck directly: ThreadSanitizer cannot see ck's inline
 * assembly, so every ck operation that orders memory needs a TSan annotation next to it
 * (shared/BUILDING.md). Putting the annotations in one place means the rest of the
 * project is checked by TSan exactly as it ships, and no code outside sync/ needs to know
 * TSan exists. Each sub-header opens with its own design note: ordering semantics, why
 * each annotation sits where it does, and the alternatives rejected.
 *
 * Rules for users:
 *  - A shared variable is accessed either only through pm_atomic_* or only under a lock.
 *    Mixing in plain accesses is a data race that TSan cannot report (it does not see the
 *    ck side), so review for it.
 *  - Nothing in sync/ allocates; all of it may be used inside the allocator.
 *  - Usable from C (gnu11) and C++ (the tests).
 */
#ifndef PM_SYNC_SYNC_H
#define PM_SYNC_SYNC_H

#include "sync/annotate.h"
#include "sync/atomic.h"
#include "sync/lifo.h"
#include "sync/lock.h"

#endif /* PM_SYNC_SYNC_H */
