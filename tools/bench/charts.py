#!/usr/bin/env python3
"""charts.py — PNG charts of the suite's results, drawn by gnuplot (Debian's gnuplot-nox).

    python3 tools/bench/charts.py --micro=results/micro.json --macro=results/macro.json \\
                                  --outdir=results

Reads only the JSON medians that compare.py and macro.py wrote in the same run, and draws:

  micro_time.png   CPU ns per operation of each kernel, as a ratio to CPython's pymalloc
  micro_threads.png  mt_churn and prodcons ns per operation (absolute)
  macro_time.png   wall time of each workload, as a ratio to stock CPython
  macro_rss.png    peak RSS of each workload, as a ratio to stock CPython

Prints the names of the files written. Uses the pngcairo terminal, or png when cairo is
not in this gnuplot build.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

# Row keys (compare.py's Row.key) drawn; a key absent from the results is skipped, so the
# free-threaded row appears once compare.py measures it.
MICRO_ROWS = ["pymalloc-mt", "pymalloc-mt-ft", "cpython", "glibc", "mimalloc", "jemalloc",
              "tcmalloc"]
MICRO_KERNELS = ["pair16", "pair64", "pair256", "pair512", "pair4096", "churn", "batch",
                 "realloc_grow"]
THREAD_KERNELS = ["mt_churn1", "mt_churn2", "prodcons"]
THREAD_ROWS = MICRO_ROWS + ["cpython-mutex"]


def terminal():
    proc = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    listing = proc.stdout + proc.stderr
    return "pngcairo size 1000,520 font ',10'" if "pngcairo" in listing else "png size 1000,520"


def histogram(path, title, ylabel, columns, groups, values, reference_line):
    """Clustered bars: one cluster per group, one bar per column; values[group][column]."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.tsv")
        with open(data, "w") as f:
            f.write("group\t" + "\t".join(f'"{c}"' for c in columns) + "\n")
            for g in groups:
                cells = ["NaN" if values[g].get(c) is None else f"{values[g][c]:.4g}"
                         for c in columns]
                f.write(f"{g}\t" + "\t".join(cells) + "\n")
        script = [
            f"set terminal {terminal()}",
            f"set output '{path}'",
            "set termoption noenhanced",  # names like mt_churn are not subscripts
            f"set title '{title}'",
            f"set ylabel '{ylabel}'",
            "set style data histograms",
            "set style histogram clustered gap 1",
            "set style fill solid 0.85 border -1",
            "set key outside right top vertical",
            "set grid ytics",
            "set yrange [0:*]",
            "set xtics rotate by -30 nomirror",
        ]
        if reference_line:
            script.append("set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1.5")
        plots = [f"'{data}' using {i + 2}:xtic(1) title columnheader({i + 2})"
                 for i in range(len(columns))]
        script.append("plot " + ", ".join(plots))
        proc = subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True,
                              capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"gnuplot failed for {path}:\n{proc.stderr}")
    print(path)


def micro_charts(micro, outdir):
    kernels = micro["kernels"]

    def by_key(kernel):
        return {r["key"]: r for r in kernels.get(kernel, {}).get("rows", {}).values()}

    groups = [k for k in MICRO_KERNELS if k in kernels]
    values = {}
    labels = {}
    for k in groups:
        rows = by_key(k)
        base = rows.get("cpython", {}).get("cpu_ns_per_op")
        values[k] = {}
        for key in MICRO_ROWS:
            if key in rows and base and rows[key].get("cpu_ns_per_op"):
                values[k][key] = rows[key]["cpu_ns_per_op"] / base
        for label, r in kernels[k]["rows"].items():
            labels.setdefault(r["key"], label)
    columns = [r for r in MICRO_ROWS if any(r in values[g] for g in groups)]
    if groups and columns:
        histogram(os.path.join(outdir, "micro_time.png"),
                  "Single-thread kernels: CPU time per operation / CPython 3.11 pymalloc "
                  "(lower is better)", "× CPython", columns, groups, values, True)
    groups = [k for k in THREAD_KERNELS if k in kernels]
    values = {k: {key: r["ns_per_op"] for key, r in by_key(k).items() if key in THREAD_ROWS}
              for k in groups}
    columns = [r for r in THREAD_ROWS if any(r in values[g] for g in groups)]
    if groups and columns:
        histogram(os.path.join(outdir, "micro_threads.png"),
                  "Threads: ns per step per thread (mt_churn), ns per block (prodcons); "
                  "lower is better", "ns", columns, groups, values, False)


def macro_charts(macro, outdir):
    rows = [r for r in macro["rows"] if r != "stock"]
    groups = macro["workloads"]
    for index, name, what in ((0, "macro_time.png", "wall time"),
                              (1, "macro_rss.png", "peak RSS")):
        values = {}
        for w in groups:
            base = macro["median"][f"{w}|stock"][index]
            values[w] = {r: macro["median"][f"{w}|{r}"][index] / base for r in rows}
        suffix = " (STAND-IN LAUNCHER: rows are all stock)" if macro["stand_in"] else ""
        histogram(os.path.join(outdir, name),
                  f"CPython 3.11 workloads: {what} / stock pymalloc (lower is better){suffix}",
                  "× stock", rows, groups, values, True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro", help="compare.py --json output")
    parser.add_argument("--macro", help="macro.py --json output")
    parser.add_argument("--outdir", required=True)
    opts = parser.parse_args()
    if shutil.which("gnuplot") is None:
        sys.exit("charts.py: gnuplot not found (tools/setup installs gnuplot-nox)")
    os.makedirs(opts.outdir, exist_ok=True)
    if opts.micro:
        with open(opts.micro) as f:
            micro_charts(json.load(f), opts.outdir)
    if opts.macro:
        with open(opts.macro) as f:
            macro_charts(json.load(f), opts.outdir)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as error:
        sys.exit(f"charts.py: {error}")
