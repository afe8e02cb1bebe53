#!/usr/bin/env bash
# Long stress runs of the per-thread caches: the CI-sized stress test of
# tests/thread_cache_test.cc, scaled up, in every mode, under ThreadSanitizer and then
# AddressSanitizer (with LeakSanitizer). Each run ends with the heap check and exact block
# conservation, as in CI.
#
#   tools/stress_thread_caches.sh [WAVES [OPERATIONS]]     # default 40 waves x 30,000 ops
set -euo pipefail
cd "$(dirname "$0")/.."
waves="${1:-40}"
operations="${2:-30000}"
targets=(//tests:thread_cache_test //tests:thread_cache_gil_test //tests:thread_cache_debug_test)
for config in tsan asan; do
    echo "== --config=$config: $waves waves x $operations operations per thread"
    bazel test --config="$config" --test_output=errors --cache_test_results=no \
        --test_timeout=3600 --test_arg=--gtest_filter='*Stress*' \
        --test_env=PM_STRESS_WAVES="$waves" --test_env=PM_STRESS_OPERATIONS="$operations" \
        "${targets[@]}"
done
bazel test --config=asan --cache_test_results=no --runs_per_test=50 //tests:thread_cache_fork_test
