#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer over the test suites: builds
# the asan preset (build/asan) and runs ctest under it. Extra arguments go to
# ctest; with none, every suite runs (about 40 min to build cold on 2 cores,
# then ~8 min of tests). CI runs every suite but the LibTorch 2.x header check
# (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Paths relative to the checkout in ccache's keys (and, through
# -fdebug-prefix-map in the preset, in the debug info), so clones share it.
export CCACHE_BASEDIR="$PWD"
[ -f build/asan/CMakeCache.txt ] || cmake --preset asan >/dev/null
cmake --build --preset asan
exec ctest --preset asan "$@"
