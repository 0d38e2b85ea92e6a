#!/usr/bin/env bash
# The same `xcam bench` runs with two builds: against Debian's LibTorch 1.13
# (cpu-release) and against LibTorch 2.x (cpu-torch2, scripts/test_torch2.sh),
# one after the other on the same machine, 2 threads. Prints a table: each
# case's explanation time and its ratio to the baseline of the same build
# (a forward, two forwards for a pair, the first word alone for a caption).
# usage: benchmarks/torch_versions.sh [BUILD_1 [BUILD_2]]
#        (default build/cpu-release build/cpu-torch2; run from the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
b1=${1:-build/cpu-release} b2=${2:-build/cpu-torch2}
zm=$b1/zoo-models
[ -f "$zm/resnet18_traced.pt" ] || { echo "torch_versions: no $zm/resnet18_traced.pt (run $b1's ctest once)"; exit 2; }
caption="a yellow cross above a green square below a blue circle"
# run_case NAME ARGS...: the case with both builds, one table row each.
run_case() {
  local name=$1 b line ver
  shift
  for b in "$b1" "$b2"; do
    line=$("$b/core/xcam" bench "$@" --threads 2 --json 2>/dev/null | tail -n 1)
    ver=$("$b/core/xcam" doctor 2>/dev/null | sed -n 's/^LibTorch: \([0-9.]*\).*/\1/p')
    /usr/bin/python3 - "$name" "$ver" "$line" <<'PY'
import json, sys
name, ver, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
base = next(j[k] for k in ("forward_ms", "two_forwards_ms", "one_ms") if k in j)
expl = next(j[k] for k in ("explain_ms", "pair_ms", "all_ms") if k in j)
print(f"| {name} | {ver} | {base:.2f} | {expl:.2f} | {expl / base:.3f} |")
PY
  done
}
printf '| case | LibTorch | baseline ms | explanation ms | ratio |\n|---|---|---:|---:|---:|\n'
run_case "resnet18 Grad-CAM layer4, batch 1" --model "$zm/resnet18_traced.pt" --layer layer4 --batch 1 --repeats 15
run_case "resnet18 Grad-CAM layer4, batch 8" --model "$zm/resnet18_traced.pt" --layer layer4 --batch 8 --repeats 7
run_case "resnet18 Score-CAM layer4, batch 1" --model "$zm/resnet18_traced.pt" --layer layer4 --method scorecam \
  --repeats 2 --warmup 1
run_case "shapes CNN Grad-CAM block4, batch 16" --model zoo/models/shapes_cnn_scripted.pt --layer block4 \
  --size 128 128 --batch 16 --repeats 15
run_case "captioner, the 11 words of a caption" --model zoo/models/captioner_scripted.pt --plugin captioner \
  --layer encoder --each --image zoo/data/captioner/images/scene_001.png --text "$caption" --size 128 128 --repeats 20
