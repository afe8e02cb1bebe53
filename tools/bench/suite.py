#!/usr/bin/env python3
"""suite.py — the whole benchmark suite in one command: micro, macro, charts, one report.

    bazel run -c opt //tools/bench:suite                  # full: for a quiet machine
    bazel run -c opt //tools/bench:suite -- --quick       # a few minutes
    bazel run -c opt //tools/bench:suite -- --launcher=/usr/bin/python3.11   # stand-in

Runs, in order, each with a progress line per finished run on stderr:
  1. compare.py: the micro kernels on every allocator variant (results/micro.md, .json);
  2. macro.py: the Python workloads through the launcher (results/macro.md, .json);
  3. charts.py: PNG charts from those two JSON files (results/*.png);
then writes results/latest.md: both reports and the charts, everything from this one run,
and (with --readme, as `bazel run` passes it) rewrites README's benchmarks block from the
same results, so no figure in README is typed by hand.

The launcher is //tools:pmpython when the suite's runfiles hold it, else --launcher.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

LOADED_NOTE = (": the machine was shared with other work, so absolute ns are noisy and the "
               "thread columns, which need two idle cores, mean little")
README_BEGIN = "<!-- benchmarks:begin (written by tools/bench/suite.py; do not edit) -->"
README_END = "<!-- benchmarks:end -->"
# Rows of README's headline table, by compare.py's Row.key; absent keys are skipped, so the
# free-threaded row appears once compare.py measures it.
README_ROWS = ["pymalloc-mt", "pymalloc-mt-ft", "cpython", "cpython-mutex", "glibc", "mimalloc",
               "jemalloc", "tcmalloc"]


def number(value, digits=1, suffix=""):
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def headline(micro, macro, pngs, quick):
    """README's Benchmarks block: a few columns of each report, and the charts."""
    lines = [README_BEGIN, ""]
    lines.append(f"From `tools/bench/results/latest.md`"
                 f"{' (a --quick run)' if quick else ''}; the full tables are there.")
    if micro:
        kernels = micro["kernels"]
        load = micro.get("load", [0, 0])
        lines.append(f"Micro run {micro.get('generated', '?')}, load average "
                     f"{load[0]:.1f}–{load[1]:.1f} on {os.cpu_count()} CPUs"
                     # The load at the start is other work's; by the end it includes
                     # the benchmark's own processes (up to two threads).
                     f"{LOADED_NOTE if load[0] > 0.5 else ''}.")
        lines.append("Single-thread columns are CPU ns per operation; thread columns are wall "
                     "time; instructions are callgrind's, net of the loop.")
        lines.append("")

        def cell(kernel, key, field, digits=1):
            for row in kernels.get(kernel, {}).get("rows", {}).values():
                if row["key"] == key:
                    return number(row.get(field), digits)
            return "—"

        threads = micro.get("threads", {})
        labels = {}
        for k in kernels.values():
            for label, row in k["rows"].items():
                labels.setdefault(row["key"], label)
        lines.append("| allocator | pair64 ns | pair64 instr | churn ns | batch ns | "
                     "prodcons ns | mt_churn 2 thr ns | 2-vs-1 thr | RSS 8×10k / 1×80k |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for key in README_ROWS:
            if key not in labels:
                continue
            t = threads.get(key, {})
            lines.append(
                f"| {labels[key]} | {cell('pair64', key, 'cpu_ns_per_op')} | "
                f"{cell('pair64', key, 'instructions', 0)} | "
                f"{cell('churn', key, 'cpu_ns_per_op')} | "
                f"{cell('batch', key, 'cpu_ns_per_op')} | {cell('prodcons', key, 'ns_per_op')} | "
                f"{cell('mt_churn2', key, 'ns_per_op')} | {number(t.get('scaling'), 2, '×')} | "
                f"{number(t.get('rss_ratio'), 2, '×')} |")
        lines.append("")
    if macro:
        load = macro.get("load", [0, 0])
        lines.append(f"Macro run {macro.get('generated', '?')}, scale {macro.get('scale', '?')}, "
                     f"load average {load[0]:.1f}–{load[1]:.1f}. Goal: pymalloc-mt at least 10% "
                     "faster than stock with no more peak memory.")
        if macro["stand_in"]:
            lines.append("**Run with a stand-in launcher** (Debian's python3.11, which ignores "
                         "PMPYTHON_ALLOCATOR): the rows are all CPython's own pymalloc and no "
                         "verdict is given.")
        lines.append("")
        lines.append("| workload | pymalloc-mt time × stock | peak RSS × stock | "
                     "mimalloc time × stock | goal |")
        lines.append("| --- | ---: | ---: | ---: | --- |")
        for w in macro["workloads"]:
            m = macro["median"]
            base = m[f"{w}|stock"]
            ours = m[f"{w}|pymalloc-mt"]
            mi = m.get(f"{w}|mimalloc")
            goal = macro["goal_met"].get(w)
            verdict = "n/a (stand-in)" if goal is None else ("met" if goal else "not met")
            lines.append(f"| {w} | {ours[0] / base[0]:.2f}× | {ours[1] / base[1]:.2f}× | "
                         f"{number(mi[0] / base[0] if mi else None, 2, '×')} | {verdict} |")
        lines.append("")
    for png in pngs:
        lines.append(f"![{png[:-4]}](tools/bench/results/{png})")
    lines += ["", README_END]
    return "\n".join(lines)


def update_readme(path, block):
    with open(path) as f:
        text = f.read()
    if README_BEGIN not in text or README_END not in text:
        sys.exit(f"suite: {path} has no benchmarks block ({README_BEGIN!r} ... {README_END!r})")
    before = text[:text.index(README_BEGIN)]
    after = text[text.index(README_END) + len(README_END):]
    with open(path, "w") as f:
        f.write(before + block + after)


def run(step, cmd):
    print(f"suite: {step}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.exit(f"suite: {step} failed (exit status {proc.returncode})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", required=True, help="the bench binary (-c opt)")
    parser.add_argument("--launcher", help="pmpython, or a python3.11 stand-in")
    parser.add_argument("--results", default=os.path.join(HERE, "results"),
                        help="folder for latest.md, the partial reports and the charts")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and iterations: a few minutes")
    parser.add_argument("--kernels", help="micro kernels only these (compare.py --kernels)")
    parser.add_argument("--workloads", help="macro workloads only these")
    parser.add_argument("--scale", type=float, help="macro workload size (macro.py --scale)")
    parser.add_argument("--reps", type=int, help="repetitions for both parts")
    parser.add_argument("--no-micro", action="store_true")
    parser.add_argument("--no-macro", action="store_true")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--readme", help="README.md whose benchmarks block to rewrite")
    opts = parser.parse_args()

    results = os.path.abspath(opts.results)
    os.makedirs(results, exist_ok=True)
    python = sys.executable
    common = (["--quick"] if opts.quick else []) + (
        [f"--reps={opts.reps}"] if opts.reps else [])
    parts = []
    charts = [python, os.path.join(HERE, "charts.py"), f"--outdir={results}"]
    if not opts.no_micro:
        cmd = [python, os.path.join(HERE, "compare.py"), f"--bench={opts.bench}",
               f"--output={results}/micro.md", f"--json={results}/micro.json"] + common
        if opts.kernels:
            cmd.append(f"--kernels={opts.kernels}")
        if opts.no_callgrind:
            cmd.append("--no-callgrind")
        run("micro", cmd)
        parts.append("micro.md")
        charts.append(f"--micro={results}/micro.json")
    if not opts.no_macro:
        if not opts.launcher:
            sys.exit("suite: no launcher: pass --launcher (pmpython, or /usr/bin/python3.11 "
                     "as a stand-in), or --no-macro")
        cmd = [python, os.path.join(HERE, "macro.py"), f"--launcher={opts.launcher}",
               f"--output={results}/macro.md", f"--json={results}/macro.json"] + common
        if opts.workloads:
            cmd.append(f"--workloads={opts.workloads}")
        if opts.scale:
            cmd.append(f"--scale={opts.scale}")
        run("macro", cmd)
        parts.append("macro.md")
        charts.append(f"--macro={results}/macro.json")
    proc = subprocess.run(charts, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"suite: charts failed:\n{proc.stderr}")
    pngs = [os.path.basename(line) for line in proc.stdout.split()]

    text = ["# pymalloc-mt benchmark suite", "",
            f"Produced by `tools/bench/suite.py{' --quick' if opts.quick else ''}` "
            "(`bazel run -c opt //tools/bench:suite`); every figure below comes from that one "
            "run.", ""]
    for png in pngs:
        text.append(f"![{png[:-4]}]({png})")
    for part in parts:
        with open(os.path.join(results, part)) as f:
            body = f.read()
        text.append("")
        # One level down: each part's title becomes a section of this report.
        text.extend("#" + line if line.startswith("#") else line
                    for line in body.rstrip("\n").split("\n"))
    with open(os.path.join(results, "latest.md"), "w") as f:
        f.write("\n".join(text) + "\n")
    print(f"suite: wrote {results}/latest.md and {', '.join(pngs)}", file=sys.stderr)
    if opts.readme:
        loaded = {}
        for part in ("micro", "macro"):
            if f"{part}.md" in parts:
                with open(os.path.join(results, f"{part}.json")) as f:
                    loaded[part] = json.load(f)
        update_readme(opts.readme, headline(loaded.get("micro"), loaded.get("macro"), pngs,
                                            opts.quick))
        print(f"suite: updated the benchmarks block of {opts.readme}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
