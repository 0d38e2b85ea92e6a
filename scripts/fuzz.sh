#!/usr/bin/env bash
# libFuzzer over xcam's parsers (fuzz/): builds the fuzz preset (clang-14,
# AddressSanitizer + UBSan) and runs each harness for SECONDS (default 600)
# from its committed seed corpus, after replaying every input kept in
# fuzz/regressions/<name>/ (crashes found before, which must stay fixed).
#   scripts/fuzz.sh [SECONDS] [NAME...]     NAME: config manifest image plugin_descriptor tokenizer
# New inputs that reach new code go to build/fuzz/corpus/<name>/; a crash is
# written to build/fuzz/crashes/<name>/ and fails the script: copy it into
# fuzz/regressions/<name>/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CCACHE_BASEDIR="$PWD"
SECONDS_EACH=${1:-600}
shift || true
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(config manifest image plugin_descriptor tokenizer)
[ -f build/fuzz/CMakeCache.txt ] || cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
# The harnesses link LibTorch (through libxcam), which is not instrumented:
# its allocations living until exit are not leaks of ours.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1}
# OpenCV allocates what a forged header claims, up to 2^30 pixels (3 GB),
# past libFuzzer's malloc limit; 100 megapixels keep its refusals in reach.
export OPENCV_IO_MAX_IMAGE_PIXELS=${OPENCV_IO_MAX_IMAGE_PIXELS:-100000000}
# XCAM_FUZZ_SEED fixes libFuzzer's seed (CI does, so that its short run
# tries the same inputs each time); unset, every run explores anew.
seed=()
[ -z "${XCAM_FUZZ_SEED:-}" ] || seed=(-seed="$XCAM_FUZZ_SEED")
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
status=0
for name in "${NAMES[@]}"; do
  bin=build/fuzz/fuzz/fuzz_$name
  work=build/fuzz/corpus/$name
  crashes=build/fuzz/crashes/$name
  mkdir -p "$work" "$crashes"
  if compgen -G "fuzz/regressions/$name/*" >/dev/null; then
    "$bin" -runs=0 fuzz/regressions/"$name"/* >"build/fuzz/$name-regressions.log" 2>&1 ||
      { echo "fuzz $name: a kept regression input fails again (build/fuzz/$name-regressions.log)"; status=1; continue; }
  fi
  log=build/fuzz/$name.log
  if "$bin" "${seed[@]}" -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=2560 -malloc_limit_mb=2048 \
       -print_final_stats=1 -artifact_prefix="$crashes/" "$work" "fuzz/corpus/$name" >"$log" 2>&1; then
    verdict="0 crashes" span="in ${SECONDS_EACH} s"
  else
    verdict="CRASH: $(ls -t "$crashes" | head -1) (log: $log)" span="before the crash"
    status=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "fuzz $name: ${runs:-?} executions $span, ${cov:-cov: ?} edges, corpus $(ls "$work" | wc -l) new + $(ls "fuzz/corpus/$name" | wc -l) seeds, $verdict"
done
exit $status
