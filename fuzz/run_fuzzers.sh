#!/usr/bin/env bash
# fuzz/run_fuzzers.sh — build the libFuzzer targets and run each for a fixed time.
#
#   fuzz/run_fuzzers.sh SECONDS [TARGET...]     (default: every target in FUZZERS below)
#
# What .ci/run calls after the tests (60 s per target). For each target, one after the
# other (the machines have 2 cores, so one fuzzing process at a time, no -jobs/-workers):
# copy its checked-in corpus to a scratch directory, fuzz for SECONDS, and keep the scratch
# corpus out of the repository. Any crash, leak, timeout or out-of-memory fails the run:
# the log tail, the crashing input (base64, so it can be recovered from a CI log) and the
# commands to reproduce and minimise it are printed. The exit status is 0 only if the
# build succeeded and every target ran clean; the last line is a one-line summary.
#
# Environment:
#   BAZEL            the bazel command, with startup options if any
#                    (e.g. BAZEL="bazel --output_base=/tmp/bazel-fuzz"); default "bazel"
#   FUZZ_WORK_DIR    where scratch corpora, logs and crash artifacts go (default: mktemp -d;
#                    kept when something failed, removed otherwise)
#   FUZZ_BUILD_FLAGS more flags for `bazel build` (CI: --curses=no --color=no ...)
#   FUZZ_EXTRA_ARGS  more libFuzzer flags for every target (e.g. "-seed=1")
set -uo pipefail
cd "$(dirname "$0")/.."

FUZZERS=(fuzz_tape fuzz_failures fuzz_names fuzz_debug fuzz_threads fuzz_trace)

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ || $1 -eq 0 ]]; then
  echo "usage: $0 SECONDS [TARGET...]" >&2
  exit 2
fi
seconds=$1
shift
if [[ $# -gt 0 ]]; then FUZZERS=("$@"); fi

read -r -a bazel <<<"${BAZEL:-bazel}"
read -r -a build_flags <<<"${FUZZ_BUILD_FLAGS:-}"
start=$SECONDS
work=${FUZZ_WORK_DIR:-$(mktemp -d -t pm-fuzz.XXXXXX)}
mkdir -p "$work"

echo "=== fuzz: building ${FUZZERS[*]} with --config=fuzz"
targets=()
for f in "${FUZZERS[@]}"; do targets+=("//fuzz:$f"); done
if ! "${bazel[@]}" build "${build_flags[@]}" --config=fuzz "${targets[@]}"; then
  echo "fuzz: build FAILED after $((SECONDS - start)) s"
  exit 1
fi
bin=$("${bazel[@]}" info --config=fuzz bazel-bin 2>/dev/null)/fuzz

crashed=()
for f in "${FUZZERS[@]}"; do
  corpus="$work/$f/corpus"
  artifacts="$work/$f/artifacts"
  log="$work/$f/log"
  rm -rf "${work:?}/$f"
  mkdir -p "$corpus" "$artifacts"
  cp -r "fuzz/corpus/$f/." "$corpus/"
  echo "=== fuzz: $f for $seconds s ($(ls "$corpus" | wc -l) corpus files)"
  status=0
  # -timeout: one input taking 30 s is a hang; -rss_limit_mb: ASan's quarantine and the
  # tape's 64 KiB blocks stay far below it, a leak across inputs does not.
  # shellcheck disable=SC2086
  "$bin/$f" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" ${FUZZ_EXTRA_ARGS:-} "$corpus" >"$log" 2>&1 || status=$?
  # The last status line: "#N DONE cov: C ft: F corp: ... exec/s: E rss: R".
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
  echo "fuzz: $f: ${done_line:-no DONE line} (exit $status)"
  if [[ $status -ne 0 ]] || compgen -G "$artifacts/*" >/dev/null; then
    crashed+=("$f")
    echo "fuzz: $f FAILED; last lines of its log:"
    tail -n 60 "$log"
    for a in "$artifacts"/*; do
      [[ -e $a ]] || continue
      echo "fuzz: crashing input $a ($(stat -c %s "$a") bytes), base64:"
      head -c 65536 "$a" | base64 -w 100
      echo "fuzz: reproduce: $bin/$f $a"
      echo "fuzz: minimise:  $bin/$f -minimize_crash=1 -runs=100000 $a"
      echo "fuzz: then check the minimised input in as fuzz/corpus/$f/regression-<what>"
    done
  fi
done

elapsed=$((SECONDS - start))
if [[ ${#crashed[@]} -eq 0 ]]; then
  [[ -n ${FUZZ_WORK_DIR:-} ]] || rm -rf "$work"
  echo "fuzz: ${#FUZZERS[@]} targets x $seconds s: all clean, $elapsed s in total"
  exit 0
fi
echo "fuzz: ${#FUZZERS[@]} targets x $seconds s: ${#crashed[@]} FAILED (${crashed[*]})," \
  "$elapsed s in total; work dir $work"
exit 1
