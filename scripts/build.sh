#!/usr/bin/env bash
# Configures (once) and builds the cpu-release preset with two jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/setup.sh"
PRESET=${XCAM_PRESET:-cpu-release}
[ -f "build/$PRESET/CMakeCache.txt" ] || cmake --preset "$PRESET" >/dev/null
cmake --build --preset "$PRESET"
