#!/usr/bin/env python3
"""compare.py — pymalloc-mt's object domain side by side with CPython 3.11's pymalloc,
glibc malloc, mimalloc, jemalloc and tcmalloc, in one command.

What it measures. tools/bench/bench.c runs one kernel on one allocator in a fresh process
and prints its numbers; this driver runs every (allocator, kernel) pair several times and
prints one Markdown table per kernel: the median ns per operation, the ratio to CPython's
pymalloc, callgrind's instruction count per operation, and RSS where memory is the point.
The peers are the `malloc` allocator of bench under LD_PRELOAD of their Debian libraries;
bench reports which malloc actually answered, and a row whose preload did not take is an
error, not a silently mislabelled glibc row.

Noise. Timings on a 2-core machine drift with the other core's load and the clock. Runs
are therefore interleaved: each repetition runs every kernel on every allocator once, in a
shuffled order, so a slow minute hurts every row alike instead of one allocator's whole
series; the tables show medians over repetitions and the min-max range beside them.
Ratios to CPython's pymalloc, measured in the same rounds, are the numbers to compare
across machines; absolute ns are this machine's. Each run also reports its thread CPU time
(user + system): when the load average is above the CPU count, wall time includes waiting
for a core, and the CPU columns are the ones to read.

Instructions. callgrind counts are exact and immune to noise, but a kernel's loop (reading
precomputed sizes, storing pointers, the indirect calls) is not the allocator's cost. bench
brackets each timed loop with CALLGRIND_TOGGLE_COLLECT (valgrind runs with
--collect-atstart=no, so start-up and input generation are not counted) and, with --loop,
runs the identical loop again on no-op functions and dumps the two counts separately. The
reported figure is (real - loop) / operations: the allocator's own instructions per call
pair, comparable with the issue's "≤ 40 per pair". callgrind runs use fewer iterations
(per-operation counts are stable) and see no kernel time: page faults and mmap cost show
in ns only.

Usage (from the workspace root, after `bazel build -c opt //tools/bench:bench`, or through
`bazel run -c opt //tools/bench:compare -- OPTIONS`):

    python3 tools/bench/compare.py [--quick] [--kernels=pair64,churn] [--reps=N]
                                   [--allocators=pymalloc-mt,cpython,...] [--no-callgrind]
"""

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

LIBDIR = "/usr/lib/x86_64-linux-gnu"


class Row:
    """One line of a table: an allocator variant as bench runs it."""

    def __init__(self, key, label, allocator, preload=None, impl=None, extra=(), package=None,
                 threaded_only=False, targets=False):
        self.key = key              # for --allocators
        self.label = label
        self.allocator = allocator  # bench --allocator (a name in bench.c's variants[])
        self.preload = preload      # library for LD_PRELOAD
        self.impl = impl            # the malloc_impl bench must report for this row
        self.extra = list(extra)
        self.package = package      # Debian package, for the version line
        self.threaded_only = threaded_only  # shown in the multi-thread kernels only
        self.targets = targets      # checked against the issues' targets


# Adding an allocator variant: one entry in bench.c's variants[] and one Row here.
PYMALLOC_MT = Row("pymalloc-mt", "pymalloc-mt GIL (obj)", "pymalloc-mt", targets=True)
PYMALLOC_MT_FT = Row("pymalloc-mt-ft", "pymalloc-mt free-threaded (obj)", "pymalloc-mt-ft",
                     targets=True)
PYMALLOC_MT_CACHED = Row("pymalloc-mt-cached", "pymalloc-mt GIL + thread caches (obj)",
                         "pymalloc-mt-cached")
PYMALLOC_MT_DEBUG = Row("pymalloc-mt-debug", "pymalloc-mt GIL + debug hooks (obj)",
                        "pymalloc-mt-debug")
CPYTHON = Row("cpython", "CPython 3.11 pymalloc (GIL)", "cpython", package="libpython3.11")
BASE_ROWS = [
    PYMALLOC_MT,
    PYMALLOC_MT_FT,
    PYMALLOC_MT_CACHED,
    Row("pymalloc-mt-mem", "pymalloc-mt GIL (mem)", "pymalloc-mt-mem"),
    Row("pymalloc-mt-raw", "pymalloc-mt raw (libc behind it)", "pymalloc-mt-raw"),
    PYMALLOC_MT_DEBUG,
    CPYTHON,
    Row("cpython-mutex", "CPython 3.11 pymalloc + mutex", "cpython-mutex",
        package="libpython3.11", threaded_only=True),
    Row("glibc", "glibc malloc", "malloc", impl="glibc", package="libc6"),
    Row("mimalloc", "mimalloc", "malloc", f"{LIBDIR}/libmimalloc.so.2", "mimalloc",
        package="libmimalloc2.0"),
    Row("jemalloc", "jemalloc", "malloc", f"{LIBDIR}/libjemalloc.so.2", "jemalloc",
        package="libjemalloc2"),
    Row("tcmalloc", "tcmalloc", "malloc", f"{LIBDIR}/libtcmalloc_minimal.so.4", "tcmalloc",
        package="libgoogle-perftools4"),
]
PEER_ROWS = [r for r in BASE_ROWS if r.allocator == "malloc"]
RESERVE_ROWS = [  # batch_rounds and rss32: the arena reserve's trade-off
    Row("pymalloc-mt", "pymalloc-mt reserve=0", "pymalloc-mt", extra=["--reserve=0"]),
    Row("pymalloc-mt", "pymalloc-mt reserve=inf", "pymalloc-mt", extra=["--reserve=inf"]),
]
LOOP_ROW = Row("loop", "loop only (no-op calls)", "noop")


class Kernel:
    def __init__(self, name, unit, title, full, quick, cg_full=None, cg_quick=None,
                 memory=False, loop_row=True, reserve_rows=False, bench_kernel=None,
                 threaded=False):
        self.name = name
        self.bench_kernel = bench_kernel or name  # bench --kernel
        self.unit = unit            # "pair", "step", "block", "realloc"
        self.title = title
        self.full = full            # bench arguments for timed runs
        self.quick = quick
        self.cg_full = cg_full      # bench arguments under callgrind; None: not measured
        self.cg_quick = cg_quick
        self.memory = memory        # RSS columns
        self.loop_row = loop_row    # show the no-op loop's own time
        self.reserve_rows = reserve_rows  # pymalloc-mt with arena reserve 0 and unlimited too
        self.threaded = threaded    # worker threads; threaded_only rows appear


def pair(size, note):
    return Kernel(f"pair{size}", "pair", f"{size}-byte malloc + free pair ({note})",
                  ["--iters=10000000"], ["--iters=1000000"], ["--iters=100000"],
                  ["--iters=20000"] if size == 64 else None)


KERNELS = [
    pair(16, "one other 16-byte block live"),
    pair(64, "one other 64-byte block live"),
    pair(256, "one other 256-byte block live"),
    pair(512, "one other 512-byte block live"),
    pair(4096, "above pymalloc's 512-byte limit: the raw domain's route"),
    Kernel("pair64_empty", "pair",
           "64-byte pair, nothing else live in the size class (each free empties the pool)",
           ["--iters=10000000"], ["--iters=1000000"], ["--iters=100000"]),
    Kernel("churn", "step",
           "churn: 100,000 live slots of 1..512 bytes; free a random slot, allocate into it",
           ["--iters=4000000"], ["--iters=500000"], ["--iters=300000"], ["--iters=50000"]),
    Kernel("batch", "block",
           "batch: allocate 1,000,000 blocks of 1..512 bytes, free in random order (fresh process)",
           [], ["--blocks=200000"], [], memory=True),
    Kernel("batch_rounds", "block",
           "batch_rounds: the same, 5 rounds in one process; ns for rounds 2-5",
           [], ["--blocks=200000"], memory=True, loop_row=False, reserve_rows=True),
    Kernel("rss32", "block", "rss32: 1,000,000 live 32-byte blocks, freed in random order",
           [], [], memory=True, loop_row=False, reserve_rows=True),
    Kernel("realloc_grow", "realloc",
           "realloc_grow: grow a buffer from 1 to 4096 bytes by steps of 1..16 bytes, free, repeat",
           ["--iters=10000"], ["--iters=1000"], ["--iters=400"]),
    Kernel("mt_churn1", "step",
           "mt_churn, 1 thread: a private set of 10,000 live blocks of 1..512 bytes churned "
           "(free a random slot, allocate into it); ns per step per thread",
           ["--threads=1", "--iters=4000000"], ["--threads=1", "--iters=500000"],
           ["--threads=1", "--iters=200000"], ["--threads=1", "--iters=30000"],
           bench_kernel="mt_churn", threaded=True),
    Kernel("mt_churn2", "step",
           "mt_churn, 2 threads, each churning its own 10,000 blocks; ns per step per thread "
           "(wall time / one thread's steps)",
           ["--threads=2", "--iters=4000000"], ["--threads=2", "--iters=500000"],
           ["--threads=2", "--iters=200000"], bench_kernel="mt_churn", threaded=True),
    Kernel("prodcons", "block",
           "prodcons: one thread allocates, another frees every block (1..512 bytes, through a "
           "1024-slot ring)",
           ["--blocks=10000000"], ["--blocks=1000000"], ["--blocks=200000"],
           ["--blocks=30000"], threaded=True),
    Kernel("rss_threads1", "block",
           "rss_threads: 1 thread holding 80,000 live blocks of 1..512 bytes",
           ["--threads=1", "--blocks=80000"], ["--threads=1", "--blocks=80000"], memory=True,
           loop_row=False, bench_kernel="rss_threads", threaded=True),
    Kernel("rss_threads8", "block",
           "rss_threads: 8 threads each holding 10,000 live blocks of 1..512 bytes",
           ["--threads=8", "--blocks=10000"], ["--threads=8", "--blocks=10000"], memory=True,
           loop_row=False, bench_kernel="rss_threads", threaded=True),
]
KERNEL_BY_NAME = {k.name: k for k in KERNELS}
RSS_LAYOUT = ("rss32", "rss_threads1", "rss_threads8")  # memory first, no instructions


def rows_for(kernel, selected):
    rows = [r for r in BASE_ROWS if kernel.threaded or not r.threaded_only]
    if kernel.reserve_rows:
        rows[1:1] = RESERVE_ROWS
    if kernel.loop_row:
        rows.append(LOOP_ROW)
    return [r for r in rows if r.key in selected]


def row_label(kernel, row):
    if kernel.reserve_rows and row is PYMALLOC_MT:
        return f"{row.label}, reserve 768 KiB (default)"
    return row.label


# ---- running bench -----------------------------------------------------------------------

def child_env(row):
    env = dict(os.environ)
    for name in ("LD_PRELOAD", "PYTHONMALLOC", "PYTHONMALLOCSTATS", "MALLOC_CONF",
                 "MIMALLOC_VERBOSE", "TCMALLOC_RELEASE_RATE"):
        env.pop(name, None)
    if row.preload:
        env["LD_PRELOAD"] = row.preload
    return env


def parse_results(text, what):
    results = [json.loads(line[len("RESULT "):]) for line in text.splitlines()
               if line.startswith("RESULT ")]
    if not results:
        raise RuntimeError(f"{what}: no RESULT line in the output:\n{text}")
    return results


def check_impl(row, result, what):
    if row.impl is not None and result["malloc_impl"] != row.impl:
        raise RuntimeError(f"{what}: expected malloc from {row.impl}, "
                           f"got {result['malloc_impl']} (did LD_PRELOAD take?)")


def run_timed(bench, row, kernel, args, seed, pin):
    cmd = [bench, f"--allocator={row.allocator}", f"--kernel={kernel.bench_kernel}",
           f"--seed={seed}"] + row.extra + args
    if pin is not None:
        cmd = ["taskset", "-c", str(pin)] + cmd
    proc = subprocess.run(cmd, env=child_env(row), capture_output=True, text=True)
    what = " ".join(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: exit status {proc.returncode}\n{proc.stderr}")
    result = parse_results(proc.stdout, what)[0]
    check_impl(row, result, what)
    return result


def resolve_name(spec, names):
    """callgrind name compression: "(id) name" defines, "(id)" refers."""
    spec = spec.strip()
    if spec.startswith("("):
        close = spec.index(")")
        ident = spec[1:close]
        rest = spec[close + 1:].strip()
        if rest:
            names[ident] = rest
        return names.get(ident, spec)
    return spec


def parse_callgrind(path):
    """Total Ir and self Ir per function of one callgrind dump file."""
    names = {}
    self_ir = defaultdict(int)
    total = None
    function = None
    skip_call_cost = False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            first = line[0]
            if first.isdigit() or first in "+-*":
                if skip_call_cost:  # the line after calls= is the callee's inclusive cost
                    skip_call_cost = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and function is not None:
                    self_ir[function] += int(parts[1])
                continue
            if line.startswith("fn="):
                function = resolve_name(line[3:], names)
            elif line.startswith("cfn="):
                resolve_name(line[4:], names)
            elif line.startswith("calls="):
                skip_call_cost = True
            elif line.startswith("totals:"):
                total = int(line.split()[1])
            elif line.startswith("summary:") and total is None:
                total = int(line.split()[1])
    if total is None:
        total = sum(self_ir.values())
    return total, dict(self_ir)


def run_callgrind(bench, row, kernel, args, workdir):
    """(net instructions per op, loop instructions per op, per-function self Ir per op)."""
    out = os.path.join(workdir, f"cg.{kernel.name}.{row.label.replace(' ', '_')}.out")
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
           f"--callgrind-out-file={out}", bench, f"--allocator={row.allocator}",
           f"--kernel={kernel.bench_kernel}", "--seed=1", "--loop"] + row.extra + args
    proc = subprocess.run(cmd, env=child_env(row), capture_output=True, text=True)
    what = " ".join(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: exit status {proc.returncode}\n{proc.stderr[-3000:]}")
    results = parse_results(proc.stdout, what)
    check_impl(row, results[0], what)
    ops = results[0]["ops"]
    real_total, real_functions = parse_callgrind(out + ".1")   # dumped after the real pass
    loop_total, _ = parse_callgrind(out + ".2")                # after the no-op loop pass
    per_function = {name: ir / ops for name, ir in real_functions.items()}
    return (real_total - loop_total) / ops, loop_total / ops, per_function, out + ".1"


# ---- formatting --------------------------------------------------------------------------

def fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(value, reference):
    if value is None or not reference:
        return "—"
    return f"{value / reference:.2f}×"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values, digits=1):
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return "—"
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def mib(kib):
    return None if kib is None else kib / 1024.0


def kernel_table(kernel, rows, samples, instructions, loop_instructions):
    """One Markdown table: rows x the kernel's columns."""
    ref_ns = median([s["ns_per_op"] for s in samples.get((kernel.name, CPYTHON.label), [])])
    ref_cpu = median([s.get("cpu_ns_per_op")
                      for s in samples.get((kernel.name, CPYTHON.label), [])])
    ref_ir = instructions.get((kernel.name, CPYTHON.label))
    ref_rss = median([mib(s["rss_live_kib"]) for s in samples.get((kernel.name, CPYTHON.label), [])
                      if "rss_live_kib" in s])
    unit = kernel.unit
    lines = []
    if kernel.name == "batch_rounds":
        header = ["allocator", "round 1 ns/block", "rounds 2–5 ns/block", "× CPython", "range",
                  "CPU ns", "× CPython (CPU)", "peak RSS MiB", "RSS after final free MiB"]
    elif kernel.name in RSS_LAYOUT:
        header = ["allocator", "RSS growth while live MiB", "× CPython", "RSS after free MiB",
                  "ns/block (alloc + free)", "CPU ns"]
    else:
        header = ["allocator", f"ns/{unit}", "× CPython", "range", "CPU ns", "× CPython (CPU)"]
        if kernel.name.startswith("mt_churn"):
            header += ["Mops/s (all threads)"]
        if kernel.cg_full is not None:
            header += [f"instr/{unit} (net of loop)", "× CPython"]
        if kernel.memory:
            header += ["RSS growth while live MiB", "RSS after free MiB"]
    header += ["process peak RSS MiB"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|")
    for row in rows:
        label = row_label(kernel, row)
        runs = samples.get((kernel.name, label), [])
        if not runs:
            continue
        ns_values = [s["ns_per_op"] for s in runs]
        ns = median(ns_values)
        cpu = median([s.get("cpu_ns_per_op") for s in runs])
        live = median([mib(s.get("rss_live_kib")) for s in runs if "rss_live_kib" in s])
        end = median([mib(s.get("rss_end_kib")) for s in runs if "rss_end_kib" in s])
        peak = median([mib(s.get("peak_rss_kib")) for s in runs])
        if row is LOOP_ROW:
            ir = loop_instructions.get(kernel.name)
            cells = [label, fmt(ns), "", spread(ns_values), fmt(cpu), ""]
            if kernel.name.startswith("mt_churn"):
                cells += [""]
            if kernel.cg_full is not None:
                cells += [f"({fmt(ir)} loop)" if ir is not None else "—", ""]
            if kernel.memory:
                cells += ["", ""]
        elif kernel.name == "batch_rounds":
            first = median([s["first_ns_per_op"] for s in runs])
            cells = [label, fmt(first), fmt(ns), ratio(ns, ref_ns), spread(ns_values), fmt(cpu),
                     ratio(cpu, ref_cpu), fmt(live), fmt(end)]
        elif kernel.name in RSS_LAYOUT:
            cells = [label, fmt(live), ratio(live, ref_rss), fmt(end), fmt(ns), fmt(cpu)]
        else:
            cells = [label, fmt(ns), ratio(ns, ref_ns), spread(ns_values), fmt(cpu),
                     ratio(cpu, ref_cpu)]
            if kernel.name.startswith("mt_churn"):
                cells += [fmt(median([s.get("mops_per_s") for s in runs]))]
            if kernel.cg_full is not None:
                ir = instructions.get((kernel.name, label))
                cells += [fmt(ir), ratio(ir, ref_ir)]
            if kernel.memory:
                cells += [fmt(live), fmt(end)]
        cells += ["" if row is LOOP_ROW else fmt(peak)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def function_table(kernel_name, label, per_function, limit=12):
    """Self instructions per operation by function, from the real pass's dump."""
    items = sorted(per_function.items(), key=lambda kv: -kv[1])
    lines = [f"`{kernel_name}`, {label} (self Ir per op; the bench's own kernel function is "
             "the loop):", "", "| function | Ir/op |", "| --- | ---: |"]
    for name, value in items[:limit]:
        if value < 0.05:
            break
        lines.append(f"| `{name}` | {value:.1f} |")
    return "\n".join(lines)


def now_utc():
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"


def package_version(package):
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                              capture_output=True, text=True)
        return proc.stdout.strip() or "?"
    except OSError:
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


class Progress:
    """One line per finished step on stderr: count, elapsed time and an estimate of the rest."""

    def __init__(self, total, what):
        self.total = max(total, 1)
        self.done = 0
        self.what = what
        self.started = time.time()

    def step(self, text):
        self.done += 1
        elapsed = time.time() - self.started
        left = elapsed / self.done * (self.total - self.done)
        print(f"[{self.what} {self.done:4}/{self.total} {elapsed:5.0f} s, ~{left:4.0f} s left] "
              f"{text}", file=sys.stderr, flush=True)


# ---- main --------------------------------------------------------------------------------

def default_bench():
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(here, "bench"),
                  os.path.join(here, "..", "..", "bazel-bin", "tools", "bench", "bench")]
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return candidates[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default=default_bench(), help="path of the bench binary")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and iterations")
    parser.add_argument("--reps", type=int, help="timed repetitions (default 5, quick 3)")
    parser.add_argument("--kernels", help="comma-separated: " + ",".join(KERNEL_BY_NAME))
    parser.add_argument("--allocators",
                        help="comma-separated: " + ",".join(r.key for r in BASE_ROWS) + ",loop")
    parser.add_argument("--no-callgrind", action="store_true", help="timings and RSS only")
    parser.add_argument("--pin", type=int, metavar="CPU", help="run each process on this CPU")
    parser.add_argument("--output", help="also write the Markdown here "
                        "(default tools/bench/results/micro.md beside this script)")
    parser.add_argument("--json", help="also write the medians here, for charts.py")
    parser.add_argument("--keep-callgrind", metavar="DIR",
                        help="keep callgrind's dump files here (for callgrind_annotate)")
    opts = parser.parse_args()

    bench = os.path.abspath(opts.bench)
    if not os.access(bench, os.X_OK):
        sys.exit(f"compare.py: no bench binary at {bench}; "
                 "run `bazel build -c opt //tools/bench:bench` first or pass --bench")
    if "-opt/" not in os.path.realpath(bench):
        print(f"compare.py: warning: {os.path.realpath(bench)} does not look like a -c opt "
              "build; timings of an unoptimised build mean little", file=sys.stderr)
    kernels = KERNELS
    if opts.kernels:
        unknown = [k for k in opts.kernels.split(",") if k not in KERNEL_BY_NAME]
        if unknown:
            sys.exit(f"compare.py: unknown kernel(s) {unknown}; known: {list(KERNEL_BY_NAME)}")
        kernels = [KERNEL_BY_NAME[k] for k in opts.kernels.split(",")]
    selected = {r.key for r in BASE_ROWS} | {"loop"}
    if opts.allocators:
        selected = set(opts.allocators.split(","))
        unknown = selected - ({r.key for r in BASE_ROWS} | {"loop"})
        if unknown:
            sys.exit(f"compare.py: unknown allocator(s) {sorted(unknown)}")
    missing = [r for r in BASE_ROWS if r.preload and r.key in selected
               and not os.path.exists(r.preload)]
    for r in missing:
        print(f"compare.py: {r.preload} not found, skipping {r.label} "
              "(tools/setup installs it)", file=sys.stderr)
        selected.discard(r.key)
    use_callgrind = not opts.no_callgrind
    if use_callgrind and shutil.which("valgrind") is None:
        print("compare.py: valgrind not found, no instruction counts", file=sys.stderr)
        use_callgrind = False
    reps = opts.reps or (3 if opts.quick else 5)
    started = time.time()
    load_before = os.getloadavg()[0]

    # Timed runs: every repetition runs every kernel on every row, rows shuffled.
    samples = defaultdict(list)
    shuffler = random.Random(12345)
    cg_kernels = [k for k in kernels
                  if (k.cg_quick if opts.quick else k.cg_full) is not None] if use_callgrind else []
    progress = Progress(reps * sum(len(rows_for(k, selected)) for k in kernels)
                        + sum(len([r for r in rows_for(k, selected) if r is not LOOP_ROW])
                              for k in cg_kernels), "micro")
    for rep in range(reps):
        for kernel in kernels:
            rows = rows_for(kernel, selected)
            shuffler.shuffle(rows)
            args = kernel.quick if opts.quick else kernel.full
            for row in rows:
                label = row_label(kernel, row)
                result = run_timed(bench, row, kernel, args, seed=rep + 1, pin=opts.pin)
                samples[(kernel.name, label)].append(result)
                progress.step(f"rep {rep + 1}/{reps} {kernel.name:13} {label:40} "
                              f"{result['ns_per_op']:9.1f} ns/{kernel.unit}")

    # Instruction counts: one callgrind run per (kernel, allocator), real and loop passes.
    instructions = {}
    loop_instructions = {}
    functions = {}
    dumps = {}
    workdir = tempfile.mkdtemp(prefix="pm-bench-cg.")
    try:
        if use_callgrind:
            for kernel in cg_kernels:
                args = kernel.cg_quick if opts.quick else kernel.cg_full
                for row in rows_for(kernel, selected):
                    if row is LOOP_ROW:
                        continue
                    label = row_label(kernel, row)
                    net, loop, per_function, dump = run_callgrind(bench, row, kernel, args,
                                                                   workdir)
                    instructions[(kernel.name, label)] = net
                    loop_instructions.setdefault(kernel.name, loop)
                    functions[(kernel.name, label)] = per_function
                    dumps[(kernel.name, label)] = dump
                    progress.step(f"callgrind {kernel.name:13} {label:40} "
                                  f"{net:9.1f} instr/{kernel.unit}")
        if opts.keep_callgrind:
            os.makedirs(opts.keep_callgrind, exist_ok=True)
            for name in os.listdir(workdir):
                shutil.copy(os.path.join(workdir, name), opts.keep_callgrind)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.time() - started
    version = next((s["version"] for (k, l), runs in samples.items() for s in runs
                    if l == CPYTHON.label), "?")
    out = []
    out.append("# Micro benchmarks: pymalloc-mt vs CPython 3.11 pymalloc and C allocators")
    out.append("")
    out.append(f"Generated by `tools/bench/compare.py{' --quick' if opts.quick else ''}` on "
               f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
               f"{elapsed:.0f} s. Machine: {cpu_model()}, {os.cpu_count()} CPUs, "
               f"Linux {platform.release()}; load average {load_before:.1f} at the start, "
               f"{os.getloadavg()[0]:.1f} at the end (above the CPU count, other work shared "
               "the machine: trust ratios and instruction counts over absolute ns).")
    out.append("")
    out.append("- pymalloc-mt, built with `-c opt`, default geometry: `obj` = `pm_obj_*`, "
               "`mem` = `pm_mem_*` (both pymalloc, GIL mode, no per-thread cache), `raw` = "
               "`pm_raw_*` (the C library's malloc behind the lock-free domain table); "
               "`debug hooks` = CPython's debug hooks over `obj`.")
    out.append(f"- CPython: `PyObject_Malloc`/`PyObject_Free` of Debian's libpython3.11 "
               f"{package_version('libpython3.11')} ({version.splitlines()[0]}), after "
               "Py_Initialize. `(GIL)`: the calling thread holds CPython's GIL; `+ mutex`: "
               "one pthread mutex locked around every call (no GIL involved).")
    out.append("- Multi-thread kernels: GIL rows hold the GIL while working and offer it every "
               "1024 operations (`pm_gil_yield`; CPython: `PyEval_SaveThread` + "
               "`PyEval_RestoreThread`), releasing it whenever they wait for the other thread; "
               "so the domain is never used by two threads at once. The raw domain and the C "
               "allocators take no lock of ours.")
    peers = [f"{r.label} {package_version(r.package)}" for r in PEER_ROWS if r.key in selected]
    if peers:
        out.append(f"- Peers through `malloc`/`free` (glibc's own, or LD_PRELOAD): "
                   f"{', '.join(peers)}.")
    out.append(f"- ns: wall-clock (CLOCK_MONOTONIC) median of {reps} processes per row, run in "
               "interleaved shuffled rounds; range = min–max; × CPython: ratio of medians to "
               "the CPython (GIL) row (lower is better). CPU ns: the same runs' CPU time (user "
               "+ system, page faults included; all worker threads together, per operation), "
               "median; wall well above it means the process waited for a core.")
    out.append("- instr: callgrind Ir per operation inside the timed loop, minus the same loop "
               "on no-op functions without any lock (the `loop only` row shows that loop's own "
               "count); a mutex or GIL hand-off is part of the allocator's cost."
               + (" With --quick, only the kernels " + ", ".join(k.name for k in cg_kernels)
                  + " are counted." if opts.quick else "")
               if use_callgrind else "- instr: not measured (--no-callgrind).")
    out.append("- RSS: growth of anonymous RSS (resident minus file-backed pages, from "
               "/proc/self/statm) over its value at the start of the kernel, after the bench's "
               "own arrays are mapped and one warm-up block was allocated and freed, so library "
               "code paged in by a first call is not counted. Process peak RSS: getrusage "
               "ru_maxrss of the whole process, the bench's own arrays included (the same for "
               "every row of a kernel) and, for CPython rows, the interpreter's start-up.")
    for kernel in kernels:
        rows = rows_for(kernel, selected)
        out.append("")
        out.append(f"## {kernel.name}")
        out.append("")
        out.append(kernel.title + ".")
        out.append("")
        out.append(kernel_table(kernel, rows, samples, instructions, loop_instructions))

    def med(kernel_name, label, key):
        return median([s.get(key) for s in samples.get((kernel_name, label), [])])

    # Threads: what a second thread adds, and what spreading blocks over threads costs.
    names = {k.name for k in kernels}
    derived = {}
    if {"mt_churn1", "mt_churn2"} <= names or {"rss_threads1", "rss_threads8"} <= names:
        out.append("")
        out.append("## Threads")
        out.append("")
        out.append("Throughput with 2 threads / with 1 (mt_churn; 2.0 is perfect scaling), and "
                   "RSS growth of 8 threads × 10,000 live blocks / 1 thread × 80,000.")
        out.append("")
        out.append("| allocator | mt_churn 1 thread ns/step | 2 threads ns/step/thread | "
                   "2-vs-1 throughput | rss 1×80k MiB | rss 8×10k MiB | 8-vs-1 RSS |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in BASE_ROWS:
            if row.key not in selected:
                continue
            t1 = med("mt_churn1", row.label, "mops_per_s")
            t2 = med("mt_churn2", row.label, "mops_per_s")
            r1 = med("rss_threads1", row.label, "rss_live_kib")
            r8 = med("rss_threads8", row.label, "rss_live_kib")
            scaling = t2 / t1 if t1 and t2 else None
            rss_ratio = r8 / r1 if r1 and r8 else None
            derived[row.label] = {"scaling": scaling, "rss_ratio": rss_ratio}
            out.append(f"| {row.label} | {fmt(med('mt_churn1', row.label, 'ns_per_op'))} | "
                       f"{fmt(med('mt_churn2', row.label, 'ns_per_op'))} | "
                       f"{fmt(scaling, 2)}{'×' if scaling else ''} | {fmt(mib(r1))} | "
                       f"{fmt(mib(r8))} | {fmt(rss_ratio, 2)}{'×' if rss_ratio else ''} |")

    # The issues' targets, stated against what was measured (informative only).
    def verdict(ok, needs_idle=False):
        if ok is None:
            return "—"
        text = "met" if ok else "missed"
        if needs_idle and max(load_before, os.getloadavg()[0]) > 0.5:
            text += " (machine loaded: wall-time scaling unreliable)"
        return text

    targets = []
    if ("pair64", PYMALLOC_MT.label) in instructions:
        ir = instructions[("pair64", PYMALLOC_MT.label)]
        targets.append(f"| pair64 instructions per pair ≤ 40, {PYMALLOC_MT.label} | {ir:.1f} "
                       f"(CPython {fmt(instructions.get(('pair64', CPYTHON.label)))}) | "
                       f"{verdict(ir <= 40)} |")
    ft_ir = instructions.get(("pair64", PYMALLOC_MT_FT.label))
    if ft_ir is not None and ("pair64", PYMALLOC_MT.label) in instructions:
        gil_ir = instructions[("pair64", PYMALLOC_MT.label)]
        peers = [instructions.get(("pair64", r.label)) for r in PEER_ROWS
                 if r.key in ("mimalloc", "jemalloc", "tcmalloc")]
        peers = [p for p in peers if p is not None]
        targets.append(f"| pair64 instructions, free-threaded ≤ 1.25× GIL mode and fewer than "
                       f"mimalloc, jemalloc, tcmalloc | {ft_ir:.1f} (GIL {gil_ir:.1f}, peers "
                       f"{', '.join(f'{p:.1f}' for p in peers) or '—'}) | "
                       f"{verdict(ft_ir <= 1.25 * gil_ir and all(ft_ir < p for p in peers))} |")
    # Issue 3 (pymalloc): churn faster than every peer; the batch at least as fast as mimalloc.
    mine = med("churn", PYMALLOC_MT.label, "cpu_ns_per_op")
    peers = {r.label: med("churn", r.label, "cpu_ns_per_op") for r in PEER_ROWS + [CPYTHON]}
    peers = {k: v for k, v in peers.items() if v is not None}
    if mine is not None and peers:
        best = min(peers, key=peers.get)
        targets.append(f"| churn CPU ns/step below every peer's, {PYMALLOC_MT.label} | "
                       f"{mine:.1f} (best peer {best} {peers[best]:.1f}) | "
                       f"{verdict(all(mine < v for v in peers.values()))} |")
    mi_row = next((r for r in PEER_ROWS if r.key == "mimalloc"), None)
    mine = med("batch", PYMALLOC_MT.label, "cpu_ns_per_op")
    theirs = med("batch", mi_row.label, "cpu_ns_per_op") if mi_row else None
    if mine is not None and theirs is not None:
        targets.append(f"| batch CPU ns/block ≤ mimalloc's, {PYMALLOC_MT.label} | {mine:.1f} "
                       f"(mimalloc {theirs:.1f}) | {verdict(mine <= theirs)} |")
    pm_rss32 = row_label(KERNEL_BY_NAME["rss32"], PYMALLOC_MT)
    live_pm = med("rss32", pm_rss32, "rss_live_kib")
    live_cp = med("rss32", CPYTHON.label, "rss_live_kib")
    if live_pm is not None and live_cp is not None:
        targets.append(f"| rss32 RSS while live ≤ CPython's | {live_pm:,.0f} KiB "
                       f"(CPython {live_cp:,.0f}) | {verdict(live_pm <= live_cp)} |")
    for label in (pm_rss32, RESERVE_ROWS[0].label):
        end = med("rss32", label, "rss_end_kib")
        if end is not None:
            targets.append(f"| rss32 RSS after freeing within 1 MiB of the start, {label} | "
                           f"{end / 1024:.2f} MiB | {verdict(end <= 1024)} |")
    # Issue 6 (per-thread caches): the free-threaded row is the one these are written for.
    tc = next((r for r in PEER_ROWS if r.key == "tcmalloc"), None)
    mi = next((r for r in PEER_ROWS if r.key == "mimalloc"), None)
    # GIL mode cannot scale by design (one thread at a time), so these are judged on the
    # free-threaded row only; the GIL rows' figures stay in the tables above.
    for row in [r for r in BASE_ROWS if r.key == PYMALLOC_MT_FT.key and r.key in selected]:
        d = derived.get(row.label, {})
        if d.get("scaling") is not None:
            targets.append(f"| mt_churn 2-thread throughput ≥ 1.8× 1-thread, {row.label} | "
                           f"{d['scaling']:.2f}× | {verdict(d['scaling'] >= 1.8, True)} |")
        mine = med("mt_churn2", row.label, "ns_per_op")
        theirs = med("mt_churn2", tc.label, "ns_per_op") if tc else None
        if mine is not None and theirs is not None:
            targets.append(f"| mt_churn 2 threads ns/step ≤ tcmalloc's, {row.label} | "
                           f"{mine:.1f} (tcmalloc {theirs:.1f}) | "
                           f"{verdict(mine <= theirs, True)} |")
        mine = med("prodcons", row.label, "ns_per_op")
        theirs = med("prodcons", mi.label, "ns_per_op") if mi else None
        if mine is not None and theirs is not None:
            targets.append(f"| prodcons ns/block ≤ mimalloc's, {row.label} | {mine:.1f} "
                           f"(mimalloc {theirs:.1f}) | {verdict(mine <= theirs, True)} |")
        if d.get("rss_ratio") is not None:
            targets.append(f"| RSS 8×10k ≤ 1.5× 1×80k, {row.label} | {d['rss_ratio']:.2f}× | "
                           f"{verdict(d['rss_ratio'] <= 1.5)} |")
    if targets:
        out.append("")
        out.append("## The issues' targets")
        out.append("")
        out.append("| target | measured | |")
        out.append("| --- | ---: | --- |")
        out.extend(targets)

    if opts.json:
        summary = {"quick": opts.quick, "reps": reps, "kernels": {},
                   "generated": now_utc(),
                   "load": [load_before, os.getloadavg()[0]]}
        for kernel in kernels:
            entry = summary["kernels"][kernel.name] = {"unit": kernel.unit, "rows": {}}
            for row in rows_for(kernel, selected):
                label = row_label(kernel, row)
                runs = samples.get((kernel.name, label), [])
                if not runs:
                    continue
                entry["rows"][row.label] = {
                    "key": row.key,
                    "ns_per_op": median([s["ns_per_op"] for s in runs]),
                    "cpu_ns_per_op": median([s.get("cpu_ns_per_op") for s in runs]),
                    "rss_live_mib": mib(med(kernel.name, label, "rss_live_kib")),
                    "peak_rss_mib": mib(med(kernel.name, label, "peak_rss_kib")),
                    "instructions": instructions.get((kernel.name, label)),
                }
        summary["threads"] = {r.key: derived[r.label] for r in BASE_ROWS if r.label in derived}
        with open(opts.json, "w") as f:
            json.dump(summary, f, indent=1)

    breakdown = [(k, l) for k in ("pair64", "churn", "realloc_grow")
                 for l in (PYMALLOC_MT.label, CPYTHON.label)
                 if (k, l) in functions]
    if breakdown:
        out.append("")
        out.append("## Where the instructions go")
        out.append("")
        out.append("Self instructions per operation by function in the real pass, before "
                   "subtracting the loop (`callgrind_annotate` of the same dumps; keep them "
                   "with --keep-callgrind).")
        for k, l in breakdown:
            out.append("")
            out.append(function_table(k, l, functions[(k, l)]))

    text = "\n".join(out) + "\n"
    print(text)
    output = opts.output or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         "results", "micro.md")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        f.write(text)
    print(f"compare.py: wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as error:
        sys.exit(f"compare.py: {error}")
    except KeyboardInterrupt:
        sys.exit(130)
