/*
 * trace.h — the tracer's internals (alloc/trace.c), shared with its snapshots
 * (alloc/trace_snapshot.c) and reachable by white-box tests.
 *
 * A traceback is interned once per distinct (domain, frames) and never changes until the
 * tables are cleared (pm_trace_clear_traces, pm_trace_stop):
 *
 *   pm_trace_tb { hash, domain, nframes | frames[0] frames[1] ... }   most recent first
 *
 * A frame is a pm_trace_frame. A native frame has filename NULL and the return address in
 * lineno; pm_trace_symbolize turns it into (object file, offset in it).
 */
#ifndef PM_ALLOC_INTERNAL_TRACE_H
#define PM_ALLOC_INTERNAL_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloc/internal/pymalloc.h" /* PM_TLS_MODEL */
#include "alloc/pymalloc_mt.h"

#pragma GCC visibility push(hidden)

#ifdef __cplusplus
extern "C" { /* white-box tests are C++ */
#endif

typedef struct pm_trace_tb {
    uint32_t hash;
    uint32_t domain;
    uint32_t nframes;
    uint32_t unused;
    pm_trace_frame frames[];
} pm_trace_tb;

/* The tracer's own memory: anonymous mappings, never the traced domains (a trace stored
 * with memory from a traced domain would trace itself). Counted in pm_trace_get_memory. */
void *pm_trace_mem_alloc(size_t size);
void pm_trace_mem_free(void *p, size_t size);

/* Calls visit(ctx, tb, accounted_size) for every trace, each shard under its lock, with
 * clear/stop/start held off for the whole walk. Stops at, and returns, the first nonzero
 * value visit returns; 0 otherwise; -1 with errno = EINVAL when not tracing. visit must
 * not allocate from the traced domains (it runs under a shard lock). */
typedef int (*pm_trace_visit_fn)(void *ctx, const pm_trace_tb *tb, size_t accounted_size);
int pm_trace_visit(pm_trace_visit_fn visit, void *ctx);

/* A native frame {NULL, pc} as {object file, pc - object base}; other frames unchanged. An
 * address no object contains reads as {"<unknown>", pc}. Never allocates. */
pm_trace_frame pm_trace_symbolize(pm_trace_frame frame);

/* Whether `record` (a mem or object domain's) is the tracer's hook over pymalloc in a
 * sampling session. Its sampled blocks then come from the raw domain
 * (pm_pymalloc_unpooled_allocator) and no pool block is traced, so pymalloc serves the
 * domain itself (alloc/internal/pymalloc.h, routes): free's fast path takes pool blocks
 * without calling the hook, and malloc's fast path counts down to the next sample point
 * with the thread's gate (pm_trace_gate, alloc/internal/pymalloc.h); when it runs out,
 * pm_trace_pymalloc_sample_point decides and pm_trace_sampled_malloc serves a sample. */
bool pm_trace_samples_over_pymalloc(const pm_allocator *record);

/* pymalloc's malloc charged `size` (1..512 bytes) to the calling thread's countdown and it
 * ran out, or the thread's route for `route` still named pm_sampling_heap (its first call
 * since a sampling session began). Returns true when this call is a sample: the caller
 * then serves it with pm_trace_sampled_malloc. Otherwise the countdown was redrawn (at a
 * new session's rate, or because the point fell in a call that is not sampled: nested in a
 * hook, or pymalloc's own record) or parked (no sampling session), and pymalloc serves the
 * call itself, without charging it again. */
bool pm_trace_pymalloc_sample_point(size_t size, int route);

/* Serves a sample of pm_trace_pymalloc_sample_point: traced, from the raw domain. */
void *pm_trace_sampled_malloc(size_t size, int route);

/* Whether `record` (a mem or object domain's) is the tracer's hook over pymalloc in a
 * session that traces every call and keeps the traces of small blocks in the blocks
 * themselves (GIL mode without thread caches; alloc/trace.c, "Records in blocks"). The
 * domain's route then names pm_traced_route_heap, and malloc's slow path calls
 * pm_trace_route_malloc. */
bool pm_trace_records_in_blocks(const pm_allocator *record);

/* A mem or object malloc on pm_traced_route_heap: traced, from the traced heap when small. */
void *pm_trace_route_malloc(size_t nbytes, int route);

/* Frees p, a block of the traced heap's `pool`: its bytes leave the traced bytes (if its
 * mark says they count), then the block goes back to its pool. GIL held. */
void pm_trace_free_in_block(pm_pool *pool, void *p);
/* A traced heap's pool, now empty, goes back to its arena: its marks (zero) are kept for
 * the next pool. The GIL is held. */
void pm_trace_pool_leaves_traced_heap(pm_pool *pool);

/* ---- test hooks ---------------------------------------------------------------------- */

/* While nonzero, every request for tracer memory fails (table growth, traceback storage,
 * snapshots): the injected failure of issue #7. */
void pm_trace_test_fail_memory(int fail);

/* Reseeds the calling thread's sampler, for deterministic sampling tests: its next
 * countdown is drawn from this seed. */
void pm_trace_test_seed_sampler(uint64_t seed);

/* Frames each (domain, operation) skips at the top of a native stack, as calibrated by
 * the last start: the tracer's own frames and the library's entry point. -1: never
 * calibrated. op: 0 malloc, 1 calloc, 2 realloc. */
int pm_trace_test_native_skip(pm_domain domain, int op);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif /* PM_ALLOC_INTERNAL_TRACE_H */
