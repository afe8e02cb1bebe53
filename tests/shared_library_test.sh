#!/usr/bin/env bash
# shared_library_test.sh — what an embedder linking libpymalloc_mt.so relies on: the library
# exports the pm_* API (pm_gil_* included) and nothing else of ours, so it cannot clash with
# a libpython or another allocator loaded in the same process.
set -euo pipefail

lib=$1
[[ -f $lib ]] || { echo "no library at $lib"; exit 1; }

# Global and weak definitions only (upper-case nm types): the linker also lists local TLS
# symbols in .dynsym for their relocations, but nothing can bind to those.
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[A-Z]$/ {print $3}')
# Ours must carry the pm_ prefix; the linker's own markers and sanitizer runtime hooks
# (present only in sanitizer builds) are not ours.
stray=$(grep -vE '^(pm_|_edata$|_end$|__bss_start$|_init$|_fini$|__(asan|tsan|ubsan|sancov|odr_asan)|___asan)' <<<"$exported" || true)
if [[ -n $stray ]]; then
  echo "libpymalloc_mt.so exports symbols outside the pm_ API:"
  echo "$stray"
  exit 1
fi

for required in pm_raw_malloc pm_mem_malloc pm_obj_free pm_set_allocator pm_get_allocator \
                pm_setup_allocators pm_setup_debug_hooks pm_print_stats pm_heap_check \
                pm_object_new pm_gil_acquire pm_gil_release pm_gil_set_check; do
  grep -qx "$required" <<<"$exported" || { echo "missing export: $required"; exit 1; }
done
# Internal machinery stays hidden.
for hidden in pm_main_heap pm_map_root pm_domain_tables pm_arena_take_pool pm_counter_tls; do
  if grep -qx "$hidden" <<<"$exported"; then echo "internal symbol exported: $hidden"; exit 1; fi
done
echo "libpymalloc_mt.so: $(wc -l <<<"$exported") exported symbols, all pm_*"
echo "1 passed, 0 failed"
