#!/usr/bin/env bash
# Runs bench_blas twice in one go: on the BLAS libblas.so.3 resolves to (after
# scripts/setup.sh: OpenBLAS) and on Debian's reference BLAS (netlib, forced
# with LD_LIBRARY_PATH), then prints each benchmark's time and GFLOP/s side by
# side with the speed-up. Exports vit_small first if it is missing.
# usage: benchmarks/blas_compare.sh [BUILD_DIR] [extra bench_blas flags]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/${XCAM_PRESET:-cpu-release}}
shift || true
bench=$build/benchmarks/bench_blas
[ -x "$bench" ] || { echo "blas_compare: no $bench; build first (scripts/build.sh)" >&2; exit 1; }
models=$build/zoo-models
reference_dir=/usr/lib/$(gcc -print-multiarch)/blas
[ -f "$reference_dir/libblas.so.3" ] || { echo "blas_compare: no reference BLAS in $reference_dir (apt-get install libblas3)" >&2; exit 1; }
/usr/bin/python3 zoo/export_torchvision.py --arch vit_small --out "$models" >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
XCAM_ZOO_MODELS=$models "$bench" --benchmark_format=json "$@" >"$tmp/installed.json"
XCAM_ZOO_MODELS=$models LD_LIBRARY_PATH="$reference_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  "$bench" --benchmark_format=json "$@" >"$tmp/reference.json"
/usr/bin/python3 - "$tmp/installed.json" "$tmp/reference.json" <<'PY'
import json, sys
fast, ref = (json.load(open(p)) for p in sys.argv[1:3])
print(f"installed: {fast['context'].get('blas', '?')}")
print(f"reference: {ref['context'].get('blas', '?')}")
print(f"threads: {fast['context'].get('threads', '?')}")
rows = {b["name"]: b for b in ref["benchmarks"] if "error_message" not in b}
print(f"{'benchmark':<34} {'reference':>12} {'installed':>12} {'GFLOP/s ref':>12} {'GFLOP/s inst':>12} {'speed-up':>9}")
for b in fast["benchmarks"]:
    r = rows.get(b["name"])
    if r is None or "error_message" in b:
        print(f"{b['name']:<34} skipped: {b.get('error_message', 'no reference run')}")
        continue
    key = "GFLOP" if "GFLOP" in b else "matmul_GFLOP"
    print(f"{b['name']:<34} {r['real_time']:>9.2f} ms {b['real_time']:>9.2f} ms "
          f"{r[key]:>12.1f} {b[key]:>12.1f} {r['real_time'] / b['real_time']:>8.2f}x")
PY
