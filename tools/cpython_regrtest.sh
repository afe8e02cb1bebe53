#!/usr/bin/env bash
# tools/cpython_regrtest.sh — CPython's own regression tests (Debian's libpython3.11-testsuite)
# run by stock /usr/bin/python3.11 and by pmpython (python3.11 on pymalloc-mt, built -c opt),
# test case by test case; the exit status is 1 if any case ends differently.
#
#   tools/cpython_regrtest.sh                            # the larger set below, ~5 min on 2 cores
#   tools/cpython_regrtest.sh --all                      # every module regrtest knows (long)
#   tools/cpython_regrtest.sh test_dict test_set         # chosen modules
#   tools/cpython_regrtest.sh --env PYTHONMALLOC=debug   # CPython's debug hooks vs ours
#   tools/cpython_regrtest.sh --env PMPYTHON_ALLOCATOR=mimalloc   # a peer allocator instead
#
# BAZEL_OUTPUT_BASE, if set, is passed to bazel as --output_base. The CI part of this is
# //tests/cpython:regrtest_test (a smaller set, about 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

# Every test module whose outcome must match: containers, strings, serialisation, threads,
# the collector, weak references, tracing, the C-level types, I/O and decimal.
default_modules=(
  test_list test_tuple test_dict test_set test_unicode test_bytes test_json test_pickle
  test_threading test_gc test_weakref test_weakset test_tracemalloc test_sys test_struct
  test_array test_deque test_collections test_memoryview test_re test_itertools test_long
  test_float test_descr test_class test_copy test_marshal test_builtin test_exceptions
  test_functools test_heapq test_ordered_dict test_defaultdict test_finalization
  test_threading_local test_thread test_queue test_xml_etree test_xml_etree_c test_zlib
  test_hash test_dataclasses test_string test_userdict test_userlist test_io test_decimal
)

# Cases that read CPython's own pymalloc, which serves nothing under pmpython:
# sys.getallocatedblocks() is 0 and sys._debugmallocstats() prints no pymalloc table.
known_differences=(
  test.test_sys.SysModuleTest.test_getallocatedblocks
  test.test_sys.SysModuleTest.test_debugmallocstats
)

compare_args=()
modules=()
all=0
while (($#)); do
  case $1 in
    --all) all=1 ;;
    --env) compare_args+=(--env "$2"); shift ;;
    --env=*) compare_args+=("$1") ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "cpython_regrtest.sh: unknown option $1" >&2; exit 2 ;;
    *) modules+=("$1") ;;
  esac
  shift
done
if ((all)); then
  modules=()
elif ((${#modules[@]} == 0)); then
  modules=("${default_modules[@]}")
fi

bazel_startup=()
[[ -n ${BAZEL_OUTPUT_BASE:-} ]] && bazel_startup=(--output_base="$BAZEL_OUTPUT_BASE")
bazel "${bazel_startup[@]}" build --config=opt //tools:pmpython
launcher="$(bazel "${bazel_startup[@]}" info --config=opt bazel-bin 2>/dev/null)/tools/pmpython"

for case in "${known_differences[@]}"; do compare_args+=(--known-difference "$case"); done
exec /usr/bin/python3.11 tests/cpython/regrtest_compare.py --launcher "$launcher" \
  --jobs "$(nproc)" "${compare_args[@]}" "${modules[@]}"
