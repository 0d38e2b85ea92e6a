#!/usr/bin/env bash
# The installed tree, seen from outside (docs/install.md): `cmake --install`
# into a fresh prefix; the consumer program (tests/install/consumer) copied
# out of the source tree and built from a clean directory against that
# prefix, once with find_package(xcam) and once with pkg-config, nothing of
# the build tree on its paths; both explain one image, and their maps equal
# the installed CLI's for the same image (which finds the installed plugins
# by itself).
#
# usage: tests/install/install_test.sh BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset XCAM_PLUGIN_PATH

cmake --install "$build" --prefix "$work/prefix" >/dev/null
cp -r "$src/tests/install/consumer" "$work/consumer"
cp "$src/zoo/models/shapes_cnn_scripted.pt" "$src/zoo/data/shapes/val_003.png" "$work/"
cd "$work"
# LibTorch is found through its own config: the system's, or the one the build used (a wheel's LibTorch 2.x).
# (A preset's cache variables are typed UNINITIALIZED, a -D one PATH or STRING.)
cache() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }
torch_args=(-DTorch_DIR="$(cache Torch_DIR)")
[ -z "$(cache XCAM_TORCH2_ROOT)" ] || torch_args+=(-DXCAM_TORCH2_ROOT="$(cache XCAM_TORCH2_ROOT)")
cmake -S consumer -B consumer-build -DCMAKE_PREFIX_PATH="$work/prefix" "${torch_args[@]}" \
      -DCMAKE_BUILD_TYPE=Release >consumer-configure.log
grep -q "xcam 0.1.0, plugins in $work/prefix/lib/xcam/plugins" consumer-configure.log ||
  { cat consumer-configure.log; echo "FAIL: find_package(xcam) did not find the installed package"; exit 1; }
cmake --build consumer-build >/dev/null
PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig" pkg-config --exists xcam
# shellcheck disable=SC2046
g++ -std=c++17 -O1 consumer/explain_one.cpp -o explain_pc $(PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig" pkg-config --cflags --libs xcam)

for exe in consumer-build/explain_one explain_pc; do
  if ldd "$exe" | grep -q "$build" || readelf -d "$exe" | grep -q "$build"; then
    echo "FAIL: $exe reaches into the build tree"; ldd "$exe"; exit 1
  fi
  lib=$(ldd "$exe" | awk '$1 ~ /^libxcam\.so/ {print $3}')
  [ -n "$lib" ] && [ "$(realpath "$lib")" = "$(realpath "$work/prefix/lib/libxcam.so")" ] ||
    { echo "FAIL: $exe loads '$lib', not the installed libxcam.so"; exit 1; }
  # The LibTorch libxcam.so was built against, not another one on the system.
  torch_lib() { ldd "$1" | awk '$1 ~ /^libtorch_cpu\.so/ {print $3}' | xargs -r realpath; }
  [ "$(torch_lib "$exe")" = "$(torch_lib "$work/prefix/lib/libxcam.so")" ] ||
    { echo "FAIL: $exe loads $(torch_lib "$exe"), libxcam.so $(torch_lib "$work/prefix/lib/libxcam.so")"; exit 1; }
done
./consumer-build/explain_one shapes_cnn_scripted.pt val_003.png block4 api.npy
./explain_pc shapes_cnn_scripted.pt val_003.png block4 pc.npy
"$work/prefix/bin/xcam" plugins >plugins.txt
for arch in cnn reid captioner vlm; do
  grep -q "$work/prefix/lib/xcam/plugins/libxcam_plugin_$arch.so" plugins.txt ||
    { echo "FAIL: the installed CLI does not find the installed plugin $arch"; exit 1; }
done
"$work/prefix/bin/xcam" explain --model shapes_cnn_scripted.pt --size 128 128 --mean 0.485 0.456 0.406 \
    --std 0.229 0.224 0.225 --layer block4 --threads 1 --out cli val_003.png >/dev/null
/usr/bin/python3 - api.npy pc.npy cli/val_003_*.npy <<'PY'
import sys
import numpy as np
api, pc, cli = (np.load(f) for f in sys.argv[1:4])
assert api.shape == (128, 128) and api.max() > 0.99 and api.min() < 0.01, (api.shape, api.min(), api.max())
for name, other in (("pkg-config build", pc), ("installed CLI", cli)):
    diff = float(np.abs(api - other).max())
    assert diff < 1e-6, f"{name}: the maps differ by {diff}"
print(f"install: find_package and pkg-config consumers and the installed CLI give the same map ({sys.argv[3]})")
PY
