#!/usr/bin/env bash
# The test job: installs what is missing, builds, and runs every test suite.
# Extra arguments go to ctest (e.g. -L kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
exec ctest --preset "${XCAM_PRESET:-cpu-release}" "$@"
