#!/usr/bin/env python3
"""fuzz/make_seeds.py — writes the hand-made seed inputs of fuzz/corpus/.

The seeds are tape programs spelled with the encoding documented at the top of
fuzz/tape.c (this file mirrors it: keep the two in step), plus names for fuzz_names,
fuzz_trace programs and fuzz_threads operations (each encoding at the top of its .c).
Each seed aims at one area, so that the fuzzer starts from inputs that already reach
it: every size class, bursts that fill whole pools and several arenas, realloc across
the pool/raw boundary, calloc splits, objects, refused sizes, the arena reserve, the
configuration switch, (fuzz_failures) each failure policy on each allocator,
(fuzz_debug) the sizes where the debug hooks' 24 bytes move a block across pymalloc's
limits, realloc across the hooks' 128-byte save-and-restore, and the debug names,
(fuzz_threads) tracing sessions started, cleared and stopped by one worker while the
others allocate, free each other's blocks, detach and exit.
Merged inputs found by the fuzzer and regression crashers live beside them; this script
only (re)writes the files named seed-*.

    fuzz/make_seeds.py            # from the repository root
"""

import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# kinds
MALLOC, CALLOC, REALLOC, RESIZE, FREE, REALLOC_ZERO = 0, 2, 3, 5, 6, 8
OBJECT, REFUSED, BURST, BURST_FREE, CHECK, RESERVE, MODE = 9, 10, 11, 12, 13, 14, 15
RAW, MEM, OBJ = 0, 1, 2

BOUNDARY = [
    0, 1, 2, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 47, 48, 49, 63, 64, 65, 96, 127, 128,
    129, 192, 255, 256, 257, 384, 448, 480, 496, 497, 504, 511, 512, 513, 514, 520, 767,
    768, 1000, 1023, 1024, 1025, 2048, 4095, 4096, 4097, 8191, 8192, 8193, 16384, 16385,
    32767, 32768, 32769, 65535, 65536, 12, 20, 100, 200, 300, 400,
]


def code(kind, domain=0, variant=0):
    return bytes([kind | domain << 4 | variant << 6])


def size(n):
    """The shortest encoding of n bytes (exact for 0..4096 and the boundary table)."""
    if n in BOUNDARY:
        return bytes([BOUNDARY.index(n)])
    if 1 <= n <= 512:
        v = n - 1
        return bytes([0x40 | v >> 8, v & 0xFF])
    if 513 <= n <= 4096:
        v = n - 513
        return bytes([0x80 | v >> 8, v & 0xFF])
    v = (n - 4097) * 16383 // 61439  # large: approximately n
    return bytes([0xC0 | v >> 8, v & 0xFF])


def op(kind, domain=0, variant=0, slot=None, *args):
    out = code(kind, domain, variant)
    if slot is not None:
        out += bytes([slot])
    for a in args:
        out += a if isinstance(a, bytes) else bytes([a])
    return out


def malloc(slot, n, domain=MEM):
    return op(MALLOC, domain, 0, slot, size(n))


def calloc(slot, n, domain=MEM, variant=0, split=None):
    return op(CALLOC, domain, variant, slot, size(n), *([split] if split is not None else []))


def realloc(slot, n, domain=MEM):
    return op(REALLOC, domain, 0, slot, size(n))


def resize(slot, variant, arg, domain=MEM):
    return op(RESIZE, domain, variant, slot, arg)


def free(slot, domain=MEM):
    return op(FREE, domain, 0, slot)


def burst(count_byte, n, domain=OBJ, use_calloc=False):
    return op(BURST, domain, 1 if use_calloc else 0, None, count_byte, size(n))


def burst_free(stride, offset=0, backwards=False):
    return op(BURST_FREE, 0, 1 if backwards else 0, None, ((offset << 3) | (stride - 1)) & 0xFF)


def check(free_all=False):
    return code(CHECK, 0, 3 if free_all else 0)


def reserve(choice):  # 0, 1 arena, 1 MiB, everything
    return op(RESERVE, 0, 0, None, choice)


def mode(arg, *more):
    return op(MODE, 0, 0, None, arg, *more)


# MODE without faults
SET_PYMALLOC, SET_DEFAULT, SET_EMPTY, SET_MALLOC = 0, 4, 8, 1
HOOK_MEM, HOOK_OBJ = 2, 6  # install, or remove when installed


def stats():
    return code(CHECK, 0, 1)


def fault(arena, how, n=1, threshold=None):
    """how: 0 never, 1 Nth, 2 from Nth, 3 size >= threshold."""
    arg = (1 if arena else 0) | how << 1 | (n - 1) << 3
    return mode(arg, *([size(threshold)] if how == 3 else []))


TAPE_SEEDS = {
    # Every boundary size in the three domains, then realloc each one up and down.
    "seed-sizes": b"".join(malloc(i, n, d) for d, ns in
                           ((MEM, BOUNDARY[:32]), (OBJ, BOUNDARY[32:]), (RAW, BOUNDARY[::4]))
                           for i, n in enumerate(ns))
    + b"".join(resize(i, v, 40) for v in range(4) for i in range(0, 32, 3))
    + check(),
    # Realloc across the pool/raw boundary, to zero and back, from NULL.
    "seed-realloc": b"".join([
        realloc(1, 16), realloc(1, 24), realloc(1, 12), realloc(1, 512), realloc(1, 513),
        realloc(1, 100), op(REALLOC_ZERO, MEM, 0, 1), realloc(1, 48), free(1),
        realloc(2, 0, RAW), realloc(2, 65536, RAW), realloc(2, 1, RAW), free(2, RAW),
        realloc(3, 400, OBJ), resize(3, 0, 60, OBJ), resize(3, 1, 10, OBJ),
        resize(3, 2, 200, OBJ), resize(3, 3, 0, OBJ), check(),
    ]),
    # calloc: plain, transposed, split, zero count or size, in every domain.
    "seed-calloc": b"".join(calloc(i, n, d, v, 3) for i, (n, d, v) in enumerate(
        [(16, MEM, 0), (512, MEM, 1), (513, OBJ, 2), (0, OBJ, 3), (33, RAW, 2),
         (4096, RAW, 0), (7, MEM, 3), (200, OBJ, 2)])) + check(True),
    # Fill a whole 16-byte pool and more, free every other block (full -> used), refill.
    "seed-burst-pool": burst(250, 16) + burst_free(2) + burst(120, 16) + check()
    + burst_free(3, 1, True) + burst(50, 24, MEM, True) + check(True),
    # Pools of many classes: several arenas, then drain with the reserve at 0 and refill.
    "seed-burst-arenas": reserve(0) + burst(250, 512) + burst(250, 496, MEM) + check()
    + burst_free(1) + reserve(3) + burst(250, 256) + burst_free(1, 0, True) + reserve(1)
    + check(True),
    # Objects of every type, then the refused requests of every kind.
    "seed-objects": b"".join(op(OBJECT, 0, 0, i, i, bytes([0, i * 7])) for i in range(5))
    + op(OBJECT, 0, 0, 5, 3, bytes([0x0F, 0xFF])) + b"".join(
        op(REFUSED, d, v, 1, a) for d in (RAW, MEM, OBJ) for v in range(4) for a in (0, 1, 2))
    + free(0, OBJ) + free(1, OBJ) + check(),
    # Configuration: "malloc" refused while pymalloc blocks live, then allowed, then back.
    "seed-config": malloc(0, 64) + malloc(1, 2000, OBJ) + mode(SET_MALLOC) + free(0)
    + free(1, OBJ) + mode(SET_MALLOC) + malloc(2, 64) + calloc(3, 600, OBJ) + realloc(2, 10)
    + free(2) + free(3, OBJ) + mode(SET_DEFAULT) + malloc(4, 32) + mode(SET_EMPTY)
    + mode(SET_PYMALLOC) + free(4) + stats(),
    # Pass-through hooks over pymalloc and over malloc: the table routes of mem and obj.
    "seed-hooks": mode(HOOK_MEM) + mode(HOOK_OBJ) + malloc(0, 16) + calloc(1, 700, OBJ)
    + realloc(0, 600) + op(REFUSED, MEM, 0, 2, 0) + op(REFUSED, OBJ, 2, 1, 1) + stats()
    + mode(SET_MALLOC) + mode(HOOK_MEM) + free(0) + free(1, OBJ) + mode(SET_MALLOC)
    + mode(HOOK_MEM) + malloc(2, 64) + burst(20, 100, MEM) + free(2) + burst_free(1)
    + mode(HOOK_MEM) + mode(SET_PYMALLOC) + mode(HOOK_OBJ) + burst(100, 48, OBJ) + stats()
    + check(True),
}

FAILURE_SEEDS = {
    # The next arena fails: the first small block cannot be had; then it can.
    "seed-arena-nth": reserve(0) + fault(True, 1, 1) + malloc(0, 16) + malloc(1, 16)
    + burst(250, 512) + fault(True, 2, 1) + burst(250, 512, MEM) + fault(True, 0) + check(True),
    # Every raw request fails from now: large mem blocks and raw blocks fail, small ones not;
    # a failed realloc keeps the block.
    "seed-raw-from-nth": malloc(0, 100) + malloc(1, 5000, RAW) + fault(False, 2, 1)
    + malloc(2, 1000) + malloc(3, 100) + realloc(0, 600) + realloc(1, 9000, RAW)
    + resize(0, 0, 10) + op(REALLOC_ZERO, MEM, 0, 3) + fault(False, 0) + realloc(0, 600)
    + check(True),
    # Size threshold on the raw allocator, then the Nth raw call.
    "seed-raw-size": fault(False, 3, 1, 4097) + malloc(0, 4096, RAW) + malloc(1, 4097, RAW)
    + malloc(2, 65536) + calloc(3, 8192, OBJ) + fault(False, 1, 2) + malloc(4, 600)
    + malloc(5, 600) + malloc(6, 600) + check(True),
    # Arenas released mid-run (reserve 0) and re-requested under "fail from the 2nd".
    "seed-arena-churn": reserve(0) + burst(250, 512, OBJ) + burst_free(1) + fault(True, 2, 2)
    + burst(250, 512, OBJ) + burst(100, 16, MEM, True) + fault(True, 0) + burst_free(2)
    + reserve(2) + check(True),
}

# MODE under the debug hooks (fuzz_debug): the same bytes mean debug names.
DEBUG_PYMALLOC, DEBUG_DEBUG, ROUND_TRIP, DEBUG_MALLOC = 0, 4, 8, 1

DEBUG_SEEDS = {
    # Requests whose n + 24 bytes cross pymalloc's limits: 0 (a pool block under the hooks),
    # 488 / 489 (the last pool size / the first raw one), 512 / 513, in mem and obj, and
    # the raw domain's own; then each one realloc'd across 488 / 489 and back.
    "seed-debug-boundary": b"".join(malloc(i, n, d) for i, (n, d) in enumerate(
        [(0, MEM), (1, MEM), (464, MEM), (472, OBJ), (480, MEM), (488, OBJ), (489, MEM),
         (496, OBJ), (504, MEM), (511, MEM), (512, OBJ), (513, MEM), (0, RAW), (489, RAW),
         (65536, OBJ)]))
    + b"".join(realloc(i, n) for i, n in ((1, 488), (1, 489), (1, 488), (6, 0), (7, 488),
                                           (0, 65536), (11, 16), (12, 512)))
    + calloc(20, 0, MEM, 3) + calloc(21, 489, OBJ, 1) + calloc(22, 488, MEM, 2, 8)
    + check(),
    # realloc across the hooks' save-and-restore (all of the data up to 128 bytes, else 64
    # at each end) and pymalloc's in-place rule on n + 24: shrinks by less than a quarter
    # stay put, larger ones move; growth reads 0xCD.
    "seed-debug-realloc": b"".join([
        malloc(0, 128), realloc(0, 129), realloc(0, 200), realloc(0, 150), realloc(0, 127),
        realloc(0, 64), realloc(0, 65), resize(0, 0, 40), resize(0, 1, 60), resize(0, 2, 255),
        resize(0, 3, 0), resize(0, 3, 0), resize(0, 0, 63), realloc(0, 0), realloc(0, 300),
        malloc(1, 400), resize(1, 0, 50), resize(1, 0, 60), realloc(1, 1000),
        realloc(1, 100), realloc(1, 5000), free(1), malloc(2, 4000, RAW), realloc(2, 64, RAW),
        realloc(2, 20000, RAW), op(REALLOC_ZERO, OBJ, 0, 3), realloc(3, 488, OBJ), check(),
    ]),
    # Objects (their header over the hooks' 0xCD), bursts of zero-size blocks (pool blocks
    # under the hooks) and of 488-byte ones (the last pool size), the statistics.
    "seed-debug-objects": b"".join(op(OBJECT, 0, 0, i, i, bytes([0, i * 9])) for i in range(5))
    + op(OBJECT, 0, 0, 5, 4, bytes([0x00, 0x14])) + op(OBJECT, 0, 0, 6, 3, bytes([0, 58]))
    + burst(100, 0, MEM) + burst(40, 488, OBJ, True) + burst(20, 489, MEM) + stats()
    + burst_free(2) + burst(30, 24, RAW) + check(True),
    # The debug names: "malloc_debug" refused while blocks live, allowed when none are;
    # blocks under it (hook over the C library); round trips through the plain name (refused
    # while a raw block lives) and pm_setup_debug_hooks(); "debug" reads back as
    # "pymalloc_debug".
    "seed-debug-config": malloc(0, 64) + mode(DEBUG_MALLOC) + free(0) + malloc(1, 100, RAW)
    + mode(DEBUG_MALLOC) + malloc(2, 64) + calloc(3, 600, OBJ) + mode(ROUND_TRIP)
    + mode(DEBUG_PYMALLOC) + free(2) + free(3, OBJ) + mode(DEBUG_PYMALLOC) + mode(ROUND_TRIP)
    + free(1, RAW) + mode(ROUND_TRIP) + malloc(4, 32) + mode(DEBUG_DEBUG) + free(4)
    + mode(DEBUG_MALLOC) + mode(ROUND_TRIP) + malloc(5, 10) + stats() + free(5)
    + mode(DEBUG_DEBUG) + check(True),
    # Pass-through hooks over the debug hooks; switching under a covered hook with live
    # blocks: refused while pymalloc has blocks, a round trip accepted, and the switch that
    # would strand a covered hook's blocks skipped (the tape's second gap); then without.
    "seed-debug-wrapped": mode(HOOK_MEM) + malloc(0, 16) + calloc(1, 700, OBJ)
    + realloc(0, 600) + mode(DEBUG_MALLOC) + mode(ROUND_TRIP) + free(0) + free(1, OBJ)
    + mode(DEBUG_MALLOC) + mode(HOOK_MEM) + malloc(2, 64) + mode(DEBUG_PYMALLOC)
    + mode(ROUND_TRIP) + mode(DEBUG_MALLOC) + free(2) + mode(HOOK_OBJ) + burst(20, 100, OBJ)
    + mode(DEBUG_PYMALLOC) + burst_free(1) + mode(HOOK_OBJ) + mode(DEBUG_PYMALLOC)
    + burst(50, 48, MEM) + stats() + check(True),
}

# fuzz_tape's seeds that fuzz_debug starts from too (same programs, hooked).
TAPE_SEEDS_FOR_DEBUG = ("seed-sizes", "seed-realloc", "seed-calloc", "seed-burst-arenas")

NAME_SEEDS = {
    "seed-default": b"default", "seed-empty-after-nul": b"\x00malloc",
    "seed-pymalloc": b"pymalloc", "seed-malloc": b"malloc", "seed-debug": b"debug",
    "seed-pymalloc_debug": b"pymalloc_debug", "seed-malloc_debug": b"malloc_debug",
    "seed-near-miss": b"mallocx", "seed-case": b"PyMalloc", "seed-nul-suffix": b"malloc\x00x",
}

# fuzz_trace (fuzz/fuzz_trace.c, whose header documents the encoding: keep the two in step):
# code = kind | domain << 4 | variant << 6, then the kind's arguments.
(T_MALLOC, T_CALLOC, T_REALLOC, T_FREE, T_START, T_SAMPLE, T_STOP, T_CLEAR, T_RESET_PEAK,
 T_QUERY, T_SNAPSHOT, T_TRACK, T_UNTRACK, T_PROVIDER, T_CHECK, T_CHURN) = range(16)
T_BOUNDARY = [0, 1, 2, 8, 15, 16, 17, 24, 32, 33, 39, 40, 41, 48, 63, 64, 100, 128, 255, 256,
              257, 448, 496, 511, 512, 513, 1000, 1024, 4095, 4096, 4097, 65536]
T_MEANS = {1: 0, 64: 2, 4096: 3, 0: 4, 16: 5, 512: 6, 100000: 7}
BY_TRACEBACK, BY_LINENO, BY_FILENAME, KEEP = 0, 1, 2, 4
USER3, USER1000, USER_MAX, ALLOCATOR_ODD = 0, 1, 2, 3  # track/untrack addressing


def tsize(n):
    if n in T_BOUNDARY:
        return bytes([T_BOUNDARY.index(n)])
    if 1 <= n <= 512:
        return bytes([0x40 | (n - 1) >> 8, (n - 1) & 0xFF])
    if 513 <= n <= 4096:
        return bytes([0x80 | (n - 513) >> 8, (n - 513) & 0xFF])
    v = (n - 4097) // 4
    return bytes([0xC0 | v >> 8, v & 0xFF])


def t(kind, domain=0, variant=0, *args):
    out = bytes([kind | domain << 4 | variant << 6])
    for a in args:
        out += a if isinstance(a, bytes) else bytes([a])
    return out


def t_malloc(slot, n, domain=MEM):
    return t(T_MALLOC, domain, 0, slot, tsize(n))


def t_calloc(slot, n, domain=MEM, variant=0):
    return t(T_CALLOC, domain, variant, slot, tsize(n))


def t_realloc(slot, n, domain=MEM, to_zero=False):
    return t(T_REALLOC, domain, 3 if to_zero else 0, slot, tsize(n))


def t_free(slot):
    return t(T_FREE, 0, 0, slot)


def t_start(nframes=1):
    return t(T_START, 0, nframes - 1)


def t_sample(mean, nframes=1):
    return t(T_SAMPLE, 0, nframes - 1, T_MEANS[mean])


def t_snapshot(by, keep=True):
    return t(T_SNAPSHOT, 0, 0, by | (KEEP if keep else 0))


def t_track(slot, size_index, where=USER3, null=False, huge=False):
    return t(T_TRACK, where, 0, slot, size_index | (4 if null else 0) | (8 if huge else 0))


def t_churn(count, n, domain=OBJ, reverse=False):
    return t(T_CHURN, domain, 1 if reverse else 0, count - 1, tsize(n))


T_STOP_, T_CLEAR_, T_QUERY_, T_RESET_ = t(T_STOP), t(T_CLEAR), t(T_QUERY), t(T_RESET_PEAK)
T_CHECK_, T_FREE_ALL = t(T_CHECK), t(T_CHECK, 0, 3)
T_MIXED = [(16, MEM), (17, OBJ), (0, RAW), (512, OBJ), (513, MEM), (4096, RAW), (1, MEM),
           (100, OBJ), (65536, MEM), (40, RAW), (257, OBJ), (1000, MEM)]

TRACE_SEEDS = {
    # A full session: blocks of every kind traced at their size with the provider's frames;
    # realloc within and across the pool/raw boundary, to zero and from NULL; snapshots by
    # each key and diffs; the peak; a clear mid-way; a churn of pool blocks; stop.
    "seed-full-churn": t_malloc(0, 24) + t_start(2)
    + b"".join(t_malloc(i + 1, n, d) for i, (n, d) in enumerate(T_MIXED))
    + t_realloc(0, 48) + t_realloc(1, 600) + t_realloc(2, 12, OBJ) + t_realloc(3, 0, RAW, True)
    + t_realloc(20, 300, OBJ) + t_calloc(21, 64, MEM, 1) + t_calloc(22, 700, OBJ, 2)
    + t_calloc(23, 10, RAW, 3) + T_QUERY_ + t_snapshot(BY_TRACEBACK) + t_free(4) + t_free(5)
    + t_snapshot(BY_LINENO) + t_snapshot(BY_FILENAME) + T_RESET_ + t_churn(32, 4096, MEM)
    + T_QUERY_ + t_churn(20, 48, OBJ, True) + T_CLEAR_ + t_malloc(24, 33) + t_realloc(6, 2000)
    + t_snapshot(BY_TRACEBACK) + T_QUERY_ + T_CHECK_ + t(T_STOP),
    # Sampling at a mean of 1 byte: every block of 40 bytes or more is traced, smaller ones
    # at random, through pymalloc's sampling route (mem, obj) and the raw hook; realloc
    # moves or drops the sample; freeing the traced blocks leaves nothing; then a session
    # at the default rate, and mean 1 again after it.
    "seed-sampling-mean1": t_malloc(0, 64) + t_sample(1, 1)
    + b"".join(t_malloc(i + 1, n, d) for i, (n, d) in enumerate(T_MIXED))
    + b"".join(t_malloc(16 + i, n, d) for i, (n, d) in enumerate(
        [(1, MEM), (2, OBJ), (8, MEM), (15, OBJ), (24, MEM), (33, OBJ), (39, RAW)]))
    + t_realloc(0, 41) + t_realloc(1, 8) + t_realloc(2, 100, OBJ) + t_calloc(25, 48, OBJ)
    + t_churn(32, 40, MEM) + t_churn(32, 1, OBJ, True) + T_QUERY_ + t_snapshot(BY_LINENO)
    + T_FREE_ALL + T_QUERY_ + t_snapshot(BY_FILENAME) + t(T_STOP) + t_sample(0, 2)
    + t_churn(32, 4096, OBJ) + t_malloc(3, 100) + T_QUERY_ + t(T_STOP) + t_sample(1, 3)
    + t_malloc(4, 64) + t_malloc(5, 48, OBJ) + t_malloc(6, 40, RAW) + T_QUERY_ + T_FREE_ALL
    + t(T_STOP),
    # Start, stop and clear interleaved with live blocks: blocks from before a session or a
    # clear are untraced until reallocated; a second start changes the frames kept; starts
    # in the other mode or at another rate are refused (EBUSY), invalid counts too
    # (EINVAL); nothing answers while stopped.
    "seed-start-stop": t_malloc(0, 16) + t_malloc(1, 600, OBJ) + t_snapshot(0) + T_QUERY_
    + t_track(0, 1) + t_start(1) + t_malloc(2, 32) + t_realloc(0, 20) + t_start(3)
    + t_malloc(3, 32, RAW) + t_sample(1) + t_sample(0) + t(T_START, 0, 3) + t(T_START, 1, 3)
    + T_CLEAR_ + t_realloc(1, 900, OBJ) + t_free(2) + T_QUERY_ + t(T_STOP) + t_free(1)
    + t_sample(64, 2) + t_start(1) + t_sample(4096) + t_sample(64, 3) + t_churn(32, 64)
    + t_malloc(4, 512) + T_CLEAR_ + T_RESET_ + t_malloc(5, 4097) + t(T_STOP) + t_start(2)
    + t(T_STOP) + t(T_STOP) + T_CLEAR_ + T_QUERY_,
    # Tracking foreign memory: user domains and odd addresses in the allocator domains,
    # replaced, untracked, refused (address 0, size above PTRDIFF_MAX), counted in the
    # traced memory and the snapshots, forgotten by clear; then under sampling (exact).
    "seed-track": t_malloc(0, 100) + t_malloc(1, 5000, RAW) + t_start(2)
    + b"".join(t_track(i, i % 4, w) for i in range(6) for w in (USER3, USER1000, USER_MAX,
                                                                ALLOCATOR_ODD))
    + t_track(0, 3) + t_track(2, 0, USER3, null=True) + t_track(3, 1, USER1000, huge=True)
    + t_snapshot(BY_TRACEBACK) + t(T_UNTRACK, USER3, 0, 0) + t(T_UNTRACK, ALLOCATOR_ODD, 0, 1)
    + t(T_UNTRACK, USER_MAX, 0, 9) + t_snapshot(BY_FILENAME) + T_QUERY_ + T_RESET_ + T_CLEAR_
    + t_track(4, 2) + t_free(0) + t_track(0, 1, ALLOCATOR_ODD) + T_QUERY_ + t(T_STOP)
    + t_sample(1, 2) + t_track(5, 2, USER1000) + t_malloc(6, 64) + t_track(6, 1)
    + t_snapshot(BY_LINENO) + t_free(6) + T_QUERY_ + t(T_STOP),
    # The peak between queries: rises that are not multiples of the tracer's 16 KiB check
    # step, a reset, one block larger than the step, then the same under sampling.
    "seed-peak": t_start(2) + t_malloc(0, 100) + t_churn(20, 4096, MEM) + T_QUERY_ + T_RESET_
    + t_churn(5, 4095, OBJ) + T_QUERY_ + t_malloc(1, 65536, RAW) + t_free(1) + T_QUERY_
    + t_churn(32, 1000, MEM, True) + t_track(2, 3) + t_malloc(3, 4097) + T_QUERY_ + t(T_STOP)
    + t_sample(4096, 1) + t_churn(32, 2000, OBJ) + T_QUERY_ + t_churn(32, 513, MEM) + T_QUERY_
    + t(T_STOP),
    # Without a provider (native frames, read back), then with it again; three frames.
    "seed-native": t(T_PROVIDER, 0, 1) + t_start(3) + t_malloc(0, 16) + t_calloc(1, 600, OBJ)
    + t_realloc(2, 77, RAW) + t_track(3, 1) + t_snapshot(BY_TRACEBACK) + t(T_PROVIDER)
    + t_malloc(4, 48) + t_snapshot(BY_LINENO) + T_QUERY_ + t(T_STOP),
}


# fuzz_threads (fuzz/fuzz_threads.c, whose header documents the encoding: keep the two in
# step): 4-byte operations [op, thread, a, b]; op bytes 8..15 control the tracer. Only the
# tracer seeds are written here; the older seeds in its corpus were made by hand.
W_ALLOC, W_FREE, W_REALLOC, W_DETACH, W_EXIT, W_COLLECT = 0, 2, 4, 5, 6, 7
W_TRACE = 0x08
(TR_FULL, TR_SAMPLE, TR_STOP, TR_CLEAR, TR_PROVIDER, TR_CHECK,
 TR_RESET_PEAK) = 0, 1, 3, 4, 5, 6, 7
TR_MEANS = {1: 0, 64: 1, 4096: 2, 0: 3}


def w(op, thread, a=0, b=0):
    return bytes([op, thread, a, b])


def w_alloc(thread, n, domain=MEM, zeroed=False):
    return w(W_ALLOC, thread, n & 0xFF, n >> 8 | (4 if zeroed else 0) | domain << 6)


def w_free(thread, index=0):
    return w(W_FREE, thread, index)


def w_realloc(thread, index, n):
    # The new size is a + 256 * (b & 3): its low byte is also the block's index.
    assert n & 0xFF == index
    return w(W_REALLOC, thread, index, n >> 8)


def w_trace(thread, kind, a=0):
    return w(W_TRACE | kind, thread, a)


def w_sample(thread, mean):
    return w_trace(thread, TR_SAMPLE, TR_MEANS[mean])


def w_spread(sizes):
    """Each worker in turn allocates the next size, in mem, obj and raw in turn."""
    return b"".join(w_alloc(i % 3, n, (MEM, OBJ, RAW)[i % 3]) for i, n in enumerate(sizes))


W_SIZES = [40, 41, 64, 100, 256, 511, 512, 513, 1000, 1023, 48, 300, 0, 16, 39, 700]

THREAD_SEEDS = {
    # Full tracing started on one worker with the provider on: blocks from before it stay
    # untraced until reallocated; every worker allocates, others free (remote frees of
    # traced pool blocks); a detached worker attaches again inside the session, an exiting
    # one is replaced; clear and stop come from the other workers.
    "seed-trace-full": w_trace(0, TR_PROVIDER) + w_spread(W_SIZES[:6]) + w_trace(1, TR_FULL)
    + w_spread(W_SIZES) + w_free(2, 1) + w_free(0, 7) + w_realloc(1, 2, 2 + 256)
    + w(W_DETACH, 2) + w_alloc(2, 200, OBJ) + w_free(2, 9) + w_trace(2, TR_CHECK)
    + w(W_EXIT, 0) + w_alloc(0, 96, MEM) + w_free(0, 3) + w_trace(1, TR_RESET_PEAK)
    + w_trace(2, TR_CLEAR) + w_spread(W_SIZES[6:]) + w_free(1, 4) + w_realloc(0, 5, 5 + 512)
    + w(W_COLLECT, 1) + w_trace(0, TR_CHECK) + w_trace(0, TR_STOP) + w_free(2, 0) + w_free(1, 0)
    + w_trace(1, TR_FULL) + w_spread(W_SIZES[:8]) + w(W_EXIT, 2) + w_free(0, 2),
    # Sampling at a mean of 1 byte (every block of 40 bytes or more traced) started on
    # worker 1 while the others hold live blocks: sampled mem/obj blocks come from the raw
    # domain; they are freed and reallocated by other workers, a worker detaches and one
    # exits mid-session; a full start is refused (EBUSY); then other rates and the default.
    "seed-trace-sampling": w_spread(W_SIZES[:4]) + w_sample(1, 1) + w_spread(W_SIZES)
    + w_free(0, 5) + w_free(2, 6) + w_realloc(0, 3, 3 + 512) + w(W_DETACH, 0)
    + w_alloc(0, 64, OBJ) + w_alloc(0, 128, MEM) + w_trace(2, TR_FULL) + w_sample(2, 64)
    + w(W_EXIT, 2) + w_alloc(2, 80, MEM) + w_free(2, 1) + w_trace(0, TR_CHECK)
    + w_trace(1, TR_CLEAR) + w_spread(W_SIZES[4:]) + w_free(1, 8) + w_trace(2, TR_STOP)
    + w_sample(0, 64) + w_spread(W_SIZES * 2) + w_free(1, 2) + w_free(2, 3) + w_trace(1, TR_STOP)
    + w_sample(2, 4096) + w_spread(W_SIZES) + w(W_DETACH, 1) + w_free(1, 0) + w_trace(0, TR_STOP)
    + w_sample(1, 0) + w_spread(W_SIZES[:5]) + w_trace(1, TR_STOP),
    # Sessions in turn with native frames: full, stop, sampling, full again; blocks made in
    # one session are freed by other workers in the next, after an exit and a detach.
    "seed-trace-sessions": w_trace(2, TR_FULL) + w_spread(W_SIZES[:9]) + w_trace(0, TR_STOP)
    + w_sample(1, 1) + w_free(0, 0) + w_free(2, 1) + w(W_EXIT, 1) + w_spread(W_SIZES[9:])
    + w_free(1, 2) + w_trace(2, TR_CHECK) + w_trace(0, TR_STOP) + w_trace(0, TR_FULL)
    + w(W_DETACH, 2) + w_free(2, 0) + w_free(2, 1) + w_spread(W_SIZES[:6]) + w_trace(1, TR_CLEAR)
    + w_free(0, 0) + w_trace(2, TR_STOP) + w_sample(0, 1) + w_spread(W_SIZES[:6])
    + w(W_EXIT, 0) + w_trace(0, TR_STOP),
}


def write(target, seeds):
    directory = os.path.join(ROOT, target)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    write("fuzz_tape", TAPE_SEEDS)
    write("fuzz_failures", FAILURE_SEEDS)
    write("fuzz_names", NAME_SEEDS)
    write("fuzz_debug", {**DEBUG_SEEDS, **{k: TAPE_SEEDS[k] for k in TAPE_SEEDS_FOR_DEBUG}})
    write("fuzz_trace", TRACE_SEEDS)
    write("fuzz_threads", THREAD_SEEDS)
