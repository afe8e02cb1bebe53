#!/usr/bin/env bash
# run.sh — what `bazel run -c opt //tools/bench:suite` and `//tools/bench:compare` run: the
# Python driver named by the first argument (suite or compare; Debian's python3, standard
# library only) with the bench binary built by the target, and with results written into
# the source tree (BUILD_WORKSPACE_DIRECTORY, set by `bazel run`); the suite also rewrites the
# benchmarks block of README.md. The suite also gets the
# launcher //tools:pmpython when it is among the runfiles; a --launcher option overrides it.
# Without Bazel: `python3 tools/bench/suite.py --bench=PATH --launcher=PATH` does the same.
set -euo pipefail

driver=$1
shift

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
case $driver in
  suite)
    if [[ -x "$here/../pmpython" ]]; then args+=(--launcher="$(cd "$here/.." && pwd)/pmpython"); fi
    if [[ -n ${BUILD_WORKSPACE_DIRECTORY:-} ]]; then
      args+=(--results="$BUILD_WORKSPACE_DIRECTORY/tools/bench/results")
      args+=(--readme="$BUILD_WORKSPACE_DIRECTORY/README.md")
    fi
    ;;
  compare)
    if [[ -n ${BUILD_WORKSPACE_DIRECTORY:-} ]]; then
      args+=(--output="$BUILD_WORKSPACE_DIRECTORY/tools/bench/results/micro.md")
    fi
    ;;
  *) echo "run.sh: unknown driver $driver" >&2; exit 2 ;;
esac
# Later options win in argparse, so a --launcher given by the user replaces the default.
exec "$python" "$here/$driver.py" "${args[@]}" "$@"
