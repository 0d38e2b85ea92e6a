#!/usr/bin/env bash
# Configures (once) and builds the cpu-release preset with two jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/setup.sh"
PRESET=${XCAM_PRESET:-cpu-release}
# ccache keys on paths relative to the checkout, so clones share the cache.
export CCACHE_BASEDIR="$PWD"
# The CUDA twins of the kernels are compiled (not run) when nvcc is there.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
[ -f "build/$PRESET/CMakeCache.txt" ] || cmake --preset "$PRESET" >/dev/null
cmake --build --preset "$PRESET"
