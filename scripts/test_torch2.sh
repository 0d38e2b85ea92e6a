#!/usr/bin/env bash
# The test job against LibTorch 2.x: the cpu-torch2 preset (the CPU libraries
# of the PyPI torch wheel, downloaded once and cached by
# scripts/torch2_wheel.sh) built and its whole ctest suite run, which adds
# torch_versions_agree: maps of this build and of the LibTorch 1.13 build
# (scripts/test.sh's) compared, on models exported by both torches.
# Extra arguments go to ctest. With --cached-only, it does nothing (and says
# so) when the wheel is not cached: CI's way of running it.
set -euo pipefail
cd "$(dirname "$0")/.."
fetch=()
if [ "${1:-}" = "--cached-only" ]; then fetch=(--no-download); shift; fi
rc=0
root=$(scripts/torch2_wheel.sh "${fetch[@]}") || rc=$?
if [ $rc = 3 ]; then
  echo "test_torch2: skipped: the torch wheel is not cached (scripts/torch2_wheel.sh downloads it, once)"
  exit 0
fi
[ $rc = 0 ] || exit $rc
[ -f build/cpu-torch2/CMakeCache.txt ] || cmake --preset cpu-torch2 -DXCAM_TORCH2_ROOT="$root" >/dev/null
XCAM_PRESET=cpu-torch2 exec scripts/test.sh "$@"
