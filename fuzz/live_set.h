/*
 * fuzz/live_set.h — the fuzzers' record of which address ranges are handed out.
 *
 * A set of disjoint half-open ranges [start, end), one per live block, each owned by a
 * shadow-model slot. Inserting a range that overlaps a live one is refused and names the
 * range it overlaps: that is how the tape fuzzers prove "no two live blocks overlap" (and,
 * with a length of at least one byte per block, "zero-size results are distinct").
 *
 * Deliberately built without the allocator under test: the caller provides the node
 * storage (a static array in practice), one node per slot, and nothing here allocates.
 * It is a treap keyed by start (a binary search tree kept balanced in expectation by
 * random heap priorities), so insertion and removal are O(log n). A sorted array was the
 * first version: its memmoves took 45% of the fuzzer's time once bursts of a thousand
 * blocks were freed in address order (every removal shifted the whole array).
 */
#ifndef PM_FUZZ_LIVE_SET_H
#define PM_FUZZ_LIVE_SET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pm_live_range {
    uintptr_t start;
    uintptr_t end; /* exclusive; end > start */
    uint32_t slot;
} pm_live_range;

/* One per slot; private. */
typedef struct pm_live_node {
    pm_live_range range;
    uint32_t left, right; /* node indices, or PM_LIVE_NIL */
    uint32_t priority;    /* max-heap order */
} pm_live_node;

#define PM_LIVE_NIL UINT32_MAX

typedef struct pm_live_set {
    pm_live_node *nodes; /* indexed by slot */
    size_t capacity;     /* slots 0 .. capacity-1 */
    size_t count;
    uint32_t root;
    uint64_t random; /* xorshift state for priorities */
} pm_live_set;

/* An empty set whose slots are 0 .. capacity-1, over caller-owned storage. */
void pm_live_set_init(pm_live_set *set, pm_live_node *storage, size_t capacity);

/* Inserts [start, end) for `slot`, which must not be in the set. Returns true; or false,
 * with *conflict set to a live range that overlaps it (nothing is inserted then). */
bool pm_live_set_insert(pm_live_set *set, uintptr_t start, uintptr_t end, uint32_t slot,
                        pm_live_range *conflict);

/* Removes the range that starts at `start`. Returns false if there is none. */
bool pm_live_set_remove(pm_live_set *set, uintptr_t start);

#endif /* PM_FUZZ_LIVE_SET_H */
