#!/usr/bin/env bash
# Compiles (syntax and types only, no link, no GPU) the LibTorch translation
# units against the headers of a current CUDA-enabled LibTorch 2.x: the
# torch wheel from PyPI, downloaded once and cached. Checks that
#   - the at::Tensor kernel dispatch compiles with its CUDA branch
#     (XCAM_WITH_CUDA: current stream, caching allocator), which Debian's
#     CPU-only LibTorch 1.13 cannot check;
#   - the runtime and plugins keep to API that LibTorch 1.13 and 2.x share.
# LibTorch 2.x headers require C++20; xcam code is C++17 that also compiles
# as C++20, and a CMake build against LibTorch 2.x gets C++20 from it.
# Usage: scripts/check_torch2.sh [torch version]   (XCAM_TORCH2_VERSION too)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-${XCAM_TORCH2_VERSION:-2.15.0}}
ROOT=$(scripts/torch2_wheel.sh "$VERSION")
INC="$ROOT/include"
CUDA_INC=${CUDA_HOME:-/usr/local/cuda}/include
FLAGS=(-std=c++20 -fsyntax-only -DFMT_HEADER_ONLY -Wall -Wextra -Wno-unused-parameter -D_GLIBCXX_USE_CXX11_ABI=1
       -isystem "$INC" -isystem "$INC/torch/csrc/api/include" -isystem "$CUDA_INC"
       -isystem /usr/include/opencv4 -Icore/include -Ikernels/include)
status=0
check() {
  echo "check_torch2: torch $VERSION: $*"
  g++ "${FLAGS[@]}" "$@" || status=1
}
check -DXCAM_WITH_CUDA kernels/src/dispatch.cpp
check core/src/model.cpp
check core/src/explain.cpp
check core/src/batching.cpp
check core/src/perturb.cpp
check core/src/task_host.cpp
check core/src/runtime_info.cpp
check core/src/methods.cpp
check core/src/views.cpp
check -DXCAM_WITH_ONEDNN core/src/onednn_convs.cpp
check plugins/cnn/cnn_plugin.cpp
check plugins/reid/reid_plugin.cpp
check plugins/reid/reid_task.cpp
[ $status -eq 0 ] && echo "check_torch2: torch $VERSION: all translation units compile"
exit $status
