#!/usr/bin/env bash
# compare.sh — what `bazel run -c opt //tools/bench:compare [-- options]` runs: compare.py
# (Debian's python3, standard library only) on the bench binary built with this target,
# writing the results file into the source tree (BUILD_WORKSPACE_DIRECTORY, set by
# `bazel run`). Without Bazel: `bazel build -c opt //tools/bench:bench &&
# python3 tools/bench/compare.py` from the workspace root does the same.
set -euo pipefail

runfiles=${RUNFILES_DIR:-}
if [[ -z $runfiles && -d "$0.runfiles" ]]; then runfiles="$0.runfiles"; fi
if [[ -n $runfiles ]]; then
  here="$runfiles/pymalloc_mt/tools/bench"
else
  here=$(cd "$(dirname "$0")" && pwd)
fi

python=/usr/bin/python3 # Debian's, whatever else is first on PATH
[[ -x $python ]] || python=python3

args=(--bench="$here/bench")
if [[ -n ${BUILD_WORKSPACE_DIRECTORY:-} ]]; then
  args+=(--output="$BUILD_WORKSPACE_DIRECTORY/tools/bench/results/latest.md")
fi
exec "$python" "$here/compare.py" "${args[@]}" "$@"
