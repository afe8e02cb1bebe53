/*
 * sync/lifo.h — pm_lifo, a lock-free LIFO for batched hand-offs. Private to sync/:
 * include "sync/sync.h".
 *
 * Use: many threads push single nodes or private chains (e.g. blocks freed by a thread
 * that does not own their pool); the owner takes everything at once with pm_lifo_pop_all
 * and walks the chain privately. There is deliberately no single-node pop.
 *
 *     lifo.head ──> [next]──> [next]──> [next]──> NULL
 *                   newest                oldest
 *
 * A node is one pointer, so the first word of a free memory block can be the node: the
 * block needs no header. The node belongs to the pushing thread until its push succeeds,
 * then to the lifo, then to whichever thread's pop_all returned it.
 *
 * Algorithm: Concurrency Kit's ck_stack_push_upmc and ck_stack_batch_pop_upmc, i.e. the
 * Treiber stack's push (link node->next to the head we saw, CAS head from it to node,
 * retry with the head the failed CAS returned) and a batch pop that is one XCHG of head
 * with NULL. Why this is safe without ABA protection (no generation counter, unlike
 * ck_stack_pop_mpmc): ABA hurts a pop that reads head->next and then CASes, because head
 * may have been popped and re-pushed in between with a different next. pop_all never reads
 * a node; it swaps the whole list out. A push's CAS only succeeds if head still equals the
 * value node->next was linked to, and then the link is correct whatever happened in
 * between. Any number of producers and consumers may run at once.
 *
 * Why ck_pr and not ck_stack.h itself, a deviation that was measured, not assumed:
 *  1. ck_stack_push_upmc writes entry->next inside its loop, after the last point where we
 *     could put __tsan_release. TSan snapshots the clock at the release, so that write is
 *     not covered and the consumer's read of node->next is reported as a data race (seen:
 *     clang 14 TSan, report at ck_stack.h:59 "Previous write ... ck_stack_push_upmc"). Our
 *     loop writes node->next, then annotates, then CASes: clean. Same instructions.
 *  2. ck_stack.h is not valid C++ (it assigns void * to typed pointers), and sync.h is
 *     included by the C++ tests. So pm_lifo holds its head pointer itself; ck_stack_t's
 *     second word (the generation for single pops) would be unused anyway.
 *
 * Ordering: push is a release (everything the producer wrote to the node and the memory
 * it owns before the push is visible to the popper), pop_all is an acquire. Both are
 * annotated for TSan; walking the returned chain is plain code.
 */
#ifndef PM_SYNC_LIFO_H
#define PM_SYNC_LIFO_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/annotate.h"
#include "sync/atomic.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pm_lifo_node {
    struct pm_lifo_node *next; /* written only by the node's current owner */
} pm_lifo_node;

typedef struct pm_lifo {
    pm_lifo_node *head; /* accessed only with ck_pr atomics once the lifo is shared */
} pm_lifo;

#define PM_LIFO_INITIALIZER { NULL }

static_assert(sizeof(pm_lifo_node) == sizeof(void *), "a node must fit in any free block");

/* Before the lifo is shared. */
static inline void pm_lifo_init(pm_lifo *lifo) {
    lifo->head = NULL;
}

/* Pushes the chain first -> ... -> last (linked through `next` by the caller, private to
 * the caller, last reachable from first). Overwrites last->next. Release. */
static inline void pm_lifo_push_chain(pm_lifo *lifo, pm_lifo_node *first, pm_lifo_node *last) {
    pm_lifo_node *head = (pm_lifo_node *)ck_pr_md_load_ptr(&lifo->head);
    for (;;) {
        last->next = head; /* plain store: `last` is still ours */
        PM_TSAN_RELEASE(&lifo->head);
        ck_pr_fence_store(); /* link before publish (a compiler barrier on x86-64) */
        if (PM_SYNC_LIKELY(ck_pr_cas_ptr_value(&lifo->head, head, first, &head))) return;
        /* Lost to another push or a pop_all; `head` now holds what it saw. */
    }
}

/* Pushes one node. Any number of threads may push concurrently. Release. */
static inline void pm_lifo_push(pm_lifo *lifo, pm_lifo_node *node) {
    pm_lifo_push_chain(lifo, node, node);
}

/* Takes every node, newest first, or NULL. Any number of threads may pop concurrently;
 * each node is returned to exactly one of them. Acquire. */
static inline pm_lifo_node *pm_lifo_pop_all(pm_lifo *lifo) {
    pm_lifo_node *chain = (pm_lifo_node *)ck_pr_fas_ptr(&lifo->head, NULL);
    ck_pr_fence_load(); /* as ck_stack_batch_pop_upmc: order the reads of the chain */
    PM_TSAN_ACQUIRE(&lifo->head);
    return chain;
}

/* A relaxed hint ("probably nothing to pop"), e.g. to skip a pop_all on a fast path. It
 * synchronises nothing: only nodes returned by pm_lifo_pop_all may be read. */
static inline bool pm_lifo_is_empty(const pm_lifo *lifo) {
    return ck_pr_md_load_ptr(&lifo->head) == NULL;
}

/* The node after `node` in a chain returned by pm_lifo_pop_all (plain read: the chain is
 * private to the thread that popped it). */
static inline pm_lifo_node *pm_lifo_node_next(const pm_lifo_node *node) {
    return node->next;
}

#ifdef __cplusplus
}
#endif

#endif /* PM_SYNC_LIFO_H */
