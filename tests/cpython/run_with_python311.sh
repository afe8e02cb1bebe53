#!/usr/bin/env bash
# run_with_python311.sh SCRIPT PMPYTHON [ARGS...] — runs a test script of this folder with
# Debian's python3.11 (never a python3.11 that happens to come first on PATH), telling it
# where the launcher is: PMPYTHON in the environment and --launcher on the command line.
set -euo pipefail
script=$1 launcher=$2
shift 2
[[ -x /usr/bin/python3.11 ]] || { echo "no /usr/bin/python3.11: run tools/setup"; exit 1; }
[[ -x $launcher ]] || { echo "no launcher at $launcher"; exit 1; }
PMPYTHON=$launcher exec /usr/bin/python3.11 "$script" "$@"
