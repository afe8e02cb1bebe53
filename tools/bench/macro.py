#!/usr/bin/env python3
"""macro.py — CPython 3.11 running whole Python programs on each allocator, side by side.

Every workload in tools/bench/workloads/ runs under the launcher (//tools:pmpython) as

    PMPYTHON_ALLOCATOR=<name> <launcher> workloads/<script>.py <scale>

for <name> in pymalloc-mt, stock (CPython's own pymalloc, installed by nothing: the
baseline), malloc (glibc), mimalloc and jemalloc. The same launcher binary for every row
is what makes the comparison fair: Debian's /usr/bin/python3.11 is linked statically and is
about 15% faster than any program linked with libpython3.11.so whatever the allocator, so
it is shown in a column of its own and never used as the baseline.

Measured per process: wall time (time.monotonic around the run) and peak RSS (ru_maxrss, as
GNU time's %M reports it). Runs are interleaved (every repetition runs every workload on
every row, in a shuffled order) and the tables show medians. Every run of a workload must
print the same checksum, whatever the allocator: a row that computes something else is an
error.

Until the launcher exists, any python3.11 can stand in (--launcher=/usr/bin/python3.11): it
ignores PMPYTHON_ALLOCATOR, so its rows differ by noise only, and the report says so.
"""

import argparse
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # importing compare.py must leave no __pycache__ in the tree
from compare import Progress, cpu_model, now_utc  # noqa: E402 (same folder)

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD_DIR = os.path.join(HERE, "workloads")
TIME = "/usr/bin/time"  # GNU time (Debian package time), for the peak RSS

# (PMPYTHON_ALLOCATOR value, label). "stock" is the baseline.
ALLOCATORS = [
    ("pymalloc-mt", "pymalloc-mt"),
    ("pymalloc-mt-free", "pymalloc-mt free-threaded"),
    ("stock", "stock (CPython pymalloc)"),
    ("malloc", "glibc malloc"),
    ("mimalloc", "mimalloc"),
    ("jemalloc", "jemalloc"),
]
SYSTEM = "system"  # Debian's /usr/bin/python3.11, a column apart
GOAL_SPEEDUP = 1.10  # "at least 10% faster than stock", i.e. time ≤ stock / 1.1


def workloads():
    return sorted(f[:-3] for f in os.listdir(WORKLOAD_DIR) if f.endswith(".py"))


def run_once(launcher, allocator, workload, scale):
    """(wall seconds, peak RSS KiB, stdout) of one process."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in ("LD_PRELOAD", "PMPYTHON_ALLOCATOR")}
    env["PYTHONHASHSEED"] = "0"
    if allocator != SYSTEM:
        env["PMPYTHON_ALLOCATOR"] = allocator
    script = os.path.join(WORKLOAD_DIR, workload + ".py")
    # GNU time forks the workload from its own small process and reports the child's
    # ru_maxrss. Spawning the workload from this driver directly would not do: whether by
    # fork or by posix_spawn's vfork-style clone, the child's ru_maxrss starts from this
    # driver's resident set, which would hide small workloads' peaks under ours.
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = os.path.join(tmp, "rss")
        start = time.monotonic()
        proc = subprocess.run([TIME, "-f", "%M", "-o", rss_file, launcher, script, str(scale)],
                              env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        with open(rss_file) as f:
            lines = f.read().split()
        rss = int(lines[-1]) if lines and lines[-1].isdigit() else None
    out, err, code = proc.stdout, proc.stderr, proc.returncode
    if code != 0 or rss is None:
        raise RuntimeError(f"PMPYTHON_ALLOCATOR={allocator} {launcher} {script}: exit status "
                           f"{code}\n{err[-2000:]}")
    return wall, rss, out.strip()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launcher", required=True, help="pmpython, or a python3.11 stand-in")
    parser.add_argument("--system-python", default="/usr/bin/python3.11")
    parser.add_argument("--quick", action="store_true", help="scale 0.3, 3 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions (default 5, quick 3)")
    parser.add_argument("--scale", type=float, help="workload size (default 1, quick 0.3)")
    parser.add_argument("--workloads", help="comma-separated: " + ",".join(workloads()))
    parser.add_argument("--output", default=os.path.join(HERE, "results", "macro.md"))
    parser.add_argument("--json", help="also write the medians here, for charts.py")
    opts = parser.parse_args()

    launcher = os.path.abspath(opts.launcher)
    if not os.access(launcher, os.X_OK):
        sys.exit(f"macro.py: no launcher at {launcher}")
    stand_in = os.path.basename(launcher) != "pmpython"
    names = opts.workloads.split(",") if opts.workloads else workloads()
    unknown = set(names) - set(workloads())
    if unknown:
        sys.exit(f"macro.py: unknown workload(s) {sorted(unknown)}")
    reps = opts.reps or (3 if opts.quick else 5)
    scale = opts.scale or (0.3 if opts.quick else 1.0)
    rows = [a for a, _ in ALLOCATORS]
    if os.access(opts.system_python, os.X_OK):
        rows.append(SYSTEM)
    label = dict(ALLOCATORS)
    label[SYSTEM] = f"{opts.system_python} (static; not a fair baseline)"

    samples = {(w, a): [] for w in names for a in rows}
    checksums = {}
    shuffler = random.Random(54321)
    progress = Progress(reps * len(names) * len(rows), "macro")
    started = time.time()
    load_before = os.getloadavg()[0]
    for rep in range(reps):
        order = [(w, a) for w in names for a in rows]
        shuffler.shuffle(order)
        for w, a in order:
            exe = opts.system_python if a == SYSTEM else launcher
            wall, rss, out = run_once(exe, a, w, scale)
            if checksums.setdefault(w, out) != out:
                raise RuntimeError(f"{w} printed {out!r} under {a}, but {checksums[w]!r} "
                                   "elsewhere: the workload must compute the same everywhere")
            samples[(w, a)].append((wall, rss))
            progress.step(f"rep {rep + 1}/{reps} {w:18} {a:12} {wall:7.2f} s "
                          f"{rss / 1024:7.1f} MiB")
    elapsed = time.time() - started

    med = {(w, a): (median([s[0] for s in runs]), median([s[1] / 1024 for s in runs]))
           for (w, a), runs in samples.items()}
    out = ["# Macro benchmarks: CPython 3.11 on each allocator", ""]
    out.append(f"Generated by `tools/bench/macro.py{' --quick' if opts.quick else ''}` on "
               f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
               f"{elapsed:.0f} s. Machine: {cpu_model()}, {os.cpu_count()} CPUs; load average "
               f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. Scale "
               f"{scale:g}; medians of {reps} interleaved runs per cell.")
    out.append("")
    if stand_in:
        out.append(f"**Stand-in launcher** `{launcher}`: it ignores PMPYTHON_ALLOCATOR, so every "
                   "allocator row below ran the same interpreter on CPython's own pymalloc; "
                   "differences between rows are noise, and no verdict is given.")
    else:
        out.append(f"Launcher `{launcher}`, run as `PMPYTHON_ALLOCATOR=<allocator> pmpython "
                   "workloads/<name>.py <scale>`; `stock` is CPython's own pymalloc in the same "
                   "binary, the baseline of every ratio.")
    out.append("")
    header = ["workload"] + [label[a] for a in rows]
    for title, index, unit in (("Wall time", 0, "s"), ("Peak RSS", 1, "MiB")):
        out.append(f"## {title} ({unit}; × stock)")
        out.append("")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|")
        for w in names:
            base = med[(w, "stock")][index]
            cells = [w]
            for a in rows:
                v = med[(w, a)][index]
                cells.append(f"{v:.2f} ({v / base:.2f}×)" if base else f"{v:.2f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(f"## Goal: pymalloc-mt at least 10% faster than stock (time ≤ stock / "
               f"{GOAL_SPEEDUP:g}) with no more peak memory")
    out.append("")
    out.append("| workload | time × stock | peak RSS × stock | goal |")
    out.append("| --- | ---: | ---: | --- |")
    verdicts = {}
    for w in names:
        t, m = med[(w, "pymalloc-mt")]
        bt, bm = med[(w, "stock")]
        ok = t <= bt / GOAL_SPEEDUP and m <= bm
        verdicts[w] = None if stand_in else ok
        text = "n/a (stand-in launcher)" if stand_in else ("met" if ok else "not met")
        out.append(f"| {w} | {t / bt:.2f}× | {m / bm:.2f}× | {text} |")
    text = "\n".join(out) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(opts.output)), exist_ok=True)
    with open(opts.output, "w") as f:
        f.write(text)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"generated": now_utc(),
                       "load": [load_before, os.getloadavg()[0]], "scale": scale, "reps": reps,
                       "stand_in": stand_in, "rows": rows, "labels": label, "workloads": names,
                       "median": {f"{w}|{a}": v for (w, a), v in med.items()},
                       "goal_met": verdicts}, f, indent=1)
    print(f"macro.py: wrote {opts.output}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as error:
        sys.exit(f"macro.py: {error}")
    except KeyboardInterrupt:
        sys.exit(130)
