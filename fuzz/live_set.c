/*
 * fuzz/live_set.c — disjoint live ranges in a treap (see live_set.h).
 *
 * Invariants: the tree is a binary search tree on range.start (left < node < right), a
 * max-heap on priority, and its ranges are pairwise disjoint. Because they are disjoint and
 * ordered, a new range can only overlap its two would-be neighbours: the live range with
 * the greatest start below it and the one with the least start at or above it. One descent
 * finds both; then split/merge insert or remove in O(depth), O(log n) in expectation.
 * Recursion depth is the tree depth: a few dozen for the two thousand nodes we use.
 */
#include "fuzz/live_set.h"

#include <assert.h>

#include "fuzz/fuzz_target.h"

void pm_live_set_init(pm_live_set *set, pm_live_node *storage, size_t capacity) {
    set->nodes = storage;
    set->capacity = capacity;
    set->count = 0;
    set->root = PM_LIVE_NIL;
    set->random = 0x2545F4914F6CDD1Du;
}

PM_FUZZ_NO_COVERAGE
static uint32_t next_priority(pm_live_set *set) {
    uint64_t x = set->random;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    set->random = x;
    return (uint32_t)(x >> 32);
}

/* Splits tree t into the nodes with start < key (*lo) and those with start >= key (*hi). */
PM_FUZZ_NO_COVERAGE
static void split(pm_live_node *n, uint32_t t, uintptr_t key, uint32_t *lo, uint32_t *hi) {
    if (t == PM_LIVE_NIL) {
        *lo = *hi = PM_LIVE_NIL;
    } else if (n[t].range.start < key) {
        split(n, n[t].right, key, &n[t].right, hi);
        *lo = t;
    } else {
        split(n, n[t].left, key, lo, &n[t].left);
        *hi = t;
    }
}

/* Joins two trees where every start in a is below every start in b. */
PM_FUZZ_NO_COVERAGE
static uint32_t merge(pm_live_node *n, uint32_t a, uint32_t b) {
    if (a == PM_LIVE_NIL) return b;
    if (b == PM_LIVE_NIL) return a;
    if (n[a].priority > n[b].priority) {
        n[a].right = merge(n, n[a].right, b);
        return a;
    }
    n[b].left = merge(n, a, n[b].left);
    return b;
}

PM_FUZZ_NO_COVERAGE
bool pm_live_set_insert(pm_live_set *set, uintptr_t start, uintptr_t end, uint32_t slot,
                        pm_live_range *conflict) {
    assert(start < end && slot < set->capacity);
    pm_live_node *n = set->nodes;
    uint32_t below = PM_LIVE_NIL, above = PM_LIVE_NIL;
    for (uint32_t t = set->root; t != PM_LIVE_NIL;) {
        if (n[t].range.start < start) {
            below = t;
            t = n[t].right;
        } else {
            above = t;
            t = n[t].left;
        }
    }
    if (below != PM_LIVE_NIL && n[below].range.end > start) {
        *conflict = n[below].range;
        return false;
    }
    if (above != PM_LIVE_NIL && n[above].range.start < end) {
        *conflict = n[above].range;
        return false;
    }
    n[slot] = (pm_live_node){.range = {.start = start, .end = end, .slot = slot},
                             .left = PM_LIVE_NIL,
                             .right = PM_LIVE_NIL,
                             .priority = next_priority(set)};
    uint32_t lo, hi;
    split(n, set->root, start, &lo, &hi);
    set->root = merge(n, merge(n, lo, slot), hi);
    set->count++;
    return true;
}

PM_FUZZ_NO_COVERAGE
bool pm_live_set_remove(pm_live_set *set, uintptr_t start) {
    pm_live_node *n = set->nodes;
    uint32_t lo, rest, match, hi;
    split(n, set->root, start, &lo, &rest);
    split(n, rest, start + 1, &match, &hi);
    set->root = merge(n, lo, hi);
    if (match == PM_LIVE_NIL) return false;
    assert(n[match].left == PM_LIVE_NIL && n[match].right == PM_LIVE_NIL);
    set->count--;
    return true;
}
