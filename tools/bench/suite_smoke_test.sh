#!/usr/bin/env bash
# The suite's driver end to end on the smallest input: one micro kernel, one Python workload
# (Debian's python3.11 standing in for the launcher), one repetition, no callgrind. Checks
# that the report has its tables and that the charts are PNG files; never looks at a timing.
set -euo pipefail

suite="$TEST_SRCDIR/pymalloc_mt/tools/bench/suite"
out="$TEST_TMPDIR/results"
RUNFILES_DIR="$TEST_SRCDIR" "$suite" suite --quick --reps=1 --no-callgrind \
  --kernels=pair64 --workloads=gc_cycles --scale=0.05 --launcher=/usr/bin/python3.11 \
  --results="$out" 2>"$TEST_TMPDIR/progress"

fail() { echo "suite_smoke_test: $*" >&2; cat "$TEST_TMPDIR/progress" >&2; exit 1; }

report="$out/latest.md"
[[ -s $report ]] || fail "no $report"
grep -q '^### pair64$' "$report" || fail "no pair64 section in the report"
# The pair64 table: a header, a separator and one row per allocator, every row with the
# header's number of cells.
awk '/^### pair64$/{on=1; next} on && /^### /{exit} on && /^\|/' "$report" >"$TEST_TMPDIR/table"
rows=$(wc -l <"$TEST_TMPDIR/table")
((rows >= 8)) || fail "pair64 table has $rows lines"
cells=$(awk -F'|' '{print NF}' "$TEST_TMPDIR/table" | sort -u | wc -l)
((cells == 1)) || fail "pair64 table rows have different numbers of cells"
grep -q '^| CPython 3.11 pymalloc (GIL) | [0-9.]* | 1.00× ' "$TEST_TMPDIR/table" ||
  fail "no CPython reference row"
grep -q '^| gc_cycles | ' "$report" || fail "no gc_cycles row in the macro tables"
grep -q 'n/a (stand-in launcher)' "$report" || fail "the stand-in launcher is not flagged"
for png in micro_time micro_threads macro_time macro_rss; do
  f="$out/$png.png"
  [[ $png == micro_threads ]] && continue # pair64 only: no thread kernel to draw
  [[ -s $f ]] || fail "no $f"
  [[ $(head -c 8 "$f" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] || fail "$f is not a PNG"
  grep -q "($png.png)" "$report" || fail "the report does not show $png.png"
done
echo "suite_smoke_test: ok ($rows table lines)"
