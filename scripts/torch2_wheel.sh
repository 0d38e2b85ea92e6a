#!/usr/bin/env bash
# The LibTorch 2.x that xcam is checked against: the torch wheel from PyPI,
# downloaded once and cached, unpacked into $XCAM_CACHE/torch-VERSION:
#   include/                    the headers (scripts/check_torch2.sh)
#   lib/libtorch_cpu.so ...     the CPU libraries (the cpu-torch2 preset)
# The wheel is a CUDA build: its libtorch.so only forwards to libtorch_cpu.so
# and libtorch_cuda.so, and its CMake config goes through CUDA detection; the
# CPU part needs neither, so the preset links libtorch_cpu.so and libc10.so
# through cmake/torch2/TorchConfig.cmake. libtorch_cpu.so itself loads the
# CUDA runtime (libcudart.so.13, libcupti.so.13), which /usr/local/cuda has.
# Usage: scripts/torch2_wheel.sh [--no-download] [torch version]
# Prints the unpacked folder; exits 3 when the wheel is not cached and
# --no-download was given.
set -euo pipefail
download=1
if [ "${1:-}" = "--no-download" ]; then download=0; shift; fi
VERSION=${1:-${XCAM_TORCH2_VERSION:-2.15.0}}
CACHE=${XCAM_CACHE:-$HOME/.cache/xcam}
ROOT="$CACHE/torch-$VERSION"
# Not the wheel's libgomp.so.1: libtorch_cpu.so asks for GOMP_4.0 at most, which
# the system's (GCC 12) has, and one OpenMP runtime in a process is the safe number.
LIBS="libtorch_cpu.so libc10.so"
need=0
[ -f "$ROOT/include/ATen/cuda/CUDAContext.h" ] || need=1
for l in $LIBS; do [ -f "$ROOT/lib/$l" ] || need=1; done
if [ $need = 1 ]; then
  wheel=$(ls "$CACHE"/wheels/torch-"$VERSION"-cp*-manylinux*_x86_64.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    if [ $download = 0 ]; then
      echo "torch2_wheel: the torch $VERSION wheel is not cached in $CACHE/wheels" >&2
      exit 3
    fi
    echo "torch2_wheel: downloading the torch $VERSION wheel (once; cached in $CACHE/wheels)" >&2
    mkdir -p "$CACHE/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_x86_64 -d "$CACHE/wheels" "torch==$VERSION" >&2
    wheel=$(ls "$CACHE"/wheels/torch-"$VERSION"-cp*-manylinux*_x86_64.whl | head -n 1)
  fi
  echo "torch2_wheel: unpacking $(basename "$wheel")" >&2
  rm -rf "$ROOT.tmp" && mkdir -p "$ROOT.tmp"
  python3 - "$wheel" "$ROOT.tmp" $LIBS <<'PY'
import sys, zipfile
wheel, dest, libs = sys.argv[1], sys.argv[2], set(sys.argv[3:])
z = zipfile.ZipFile(wheel)
for n in z.namelist():
    if n.startswith("torch/include/") or n.startswith("torch/lib/") and n[len("torch/lib/"):] in libs:
        z.extract(n, dest)
PY
  chmod +x "$ROOT.tmp"/torch/lib/*.so*
  rm -rf "$ROOT" && mv "$ROOT.tmp/torch" "$ROOT" && rm -rf "$ROOT.tmp"
fi
echo "$ROOT"
