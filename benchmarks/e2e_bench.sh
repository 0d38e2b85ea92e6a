#!/usr/bin/env bash
# End-to-end throughput of `xcam run`: `xcam bench --e2e` on the shapes demo
# config (threads 1 and 2, panels on and off) and on a ResNet-50 224 x 224
# config over 200 images, each against the same run with outputs off; then,
# with `rss`, the resident memory of one 20,000-map run sampled every second.
# Inputs and configs are made under BUILD_DIR/e2e-bench (not committed).
# usage: benchmarks/e2e_bench.sh [BUILD_DIR] [ratio|rss|all] [IO_THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/rss_sampler.sh
build=$(realpath "${1:-build/${XCAM_PRESET:-cpu-release}}")
what=${2:-all}
io=${3:-2}
xcam=$build/core/xcam
[ -x "$xcam" ] || { echo "e2e_bench: no $xcam; build first (scripts/build.sh)" >&2; exit 1; }
work=$build/e2e-bench
mkdir -p "$work"
root=$(pwd)

# The demo config with its paths made absolute and its outputs here; SAVE replaces outputs.save.
demo_config() {  # NAME SAVE
  sed -e "s|\.\./|$root/|g" -e "s|dir: $root/out/shapes-demo|dir: $work/out-$1|" \
      -e "s|save: \[map, overlay, panel\]|save: $2|" configs/shapes_demo.yaml >"$work/$1.yaml"
}

# 200 RGB images of 224 x 224 (the shapes images, resized, flipped and
# shifted in colour) and a ResNet-50 config over them.
resnet_config() {
  /usr/bin/python3 zoo/export_torchvision.py --arch resnet50 --out "$build/zoo-models" >/dev/null
  /usr/bin/python3 - "$work/images224" <<'PY'
import glob, os, sys
import cv2
import numpy as np
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
src = sorted(glob.glob("zoo/data/shapes/*.png"))
for i in range(200):
    im = cv2.resize(cv2.imread(src[i % len(src)]), (224, 224), interpolation=cv2.INTER_LINEAR)
    if (i // len(src)) % 2:
        im = im[:, ::-1]
    im = np.clip(im.astype(np.int16) + (i // len(src)) * 7, 0, 255).astype(np.uint8)
    cv2.imwrite(os.path.join(out, f"img_{i:03d}.png"), im)
PY
  cat >"$work/resnet50.yaml" <<EOF
name: resnet50-e2e
model: $build/zoo-models/resnet50_traced.pt
layers: [layer4]
methods: [gradcam]
targets: top1
inputs: $work/images224/*.png
batch_size: 8
threads: 2
outputs:
  dir: $work/out-resnet50
  save: [map, overlay, panel]
EOF
}

if [ "$what" = ratio ] || [ "$what" = all ]; then
  demo_config demo-panels "[map, overlay, panel]"
  demo_config demo-overlays "[map, overlay]"
  for cfg in demo-overlays demo-panels; do
    for threads in 1 2; do
      for pipeline in 0 "$io"; do
        echo "== $cfg, threads $threads, io_threads $pipeline"
        "$xcam" bench --e2e "$work/$cfg.yaml" --threads "$threads" --io-threads "$pipeline" --repeats 5 | tail -3 | head -2
      done
    done
  done
  resnet_config
  for pipeline in 0 "$io"; do
    echo "== resnet50 224, 200 images, threads 2, io_threads $pipeline"
    "$xcam" bench --e2e "$work/resnet50.yaml" --io-threads "$pipeline" --repeats 3 | tail -3 | head -2
  done
fi

if [ "$what" = rss ] || [ "$what" = all ]; then
  # 10,000 samples (the 48 shapes images, each under many ids), top2: 20,000 maps and overlays.
  /usr/bin/python3 - "$work/m20k.jsonl" <<PY
import glob, json, sys
src = sorted(glob.glob("$root/zoo/data/shapes/*.png"))
with open(sys.argv[1], "w") as f:
    for i in range(10000):
        f.write(json.dumps({"image": src[i % len(src)], "id": f"s{i:05d}"}) + "\n")
PY
  sed -e "s|\.\./|$root/|g" -e "s|dir: $root/out/shapes-demo|dir: $work/out-rss|" -e "s|save: \[map, overlay, panel\]|save: [map, overlay]|" \
      -e "s|  images: .*|  manifest: $work/m20k.jsonl|" -e "/boxes:/d" -e "s|targets: annotated.*|targets: top2|" \
      -e "/- \[block3, block4\]/d" configs/shapes_demo.yaml >"$work/rss.yaml"
  rm -rf "$work/out-rss"
  "$xcam" run "$work/rss.yaml" --io-threads "$io" >"$work/rss.log" 2>&1 &
  pid=$!
  count_rss_maps() { ls "$work/out-rss/gradcam/block4" 2>/dev/null | grep -c '\.npy$' || true; }
  sample_rss $pid "$work/rss.tsv" count_rss_maps
  wait $pid
  tail -2 "$work/rss.log"
  /usr/bin/python3 - "$work/rss.tsv" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if r[2] > 0]
if not rows:
    sys.exit("rss: no samples")
n = len(rows)
early, late = rows[n // 10], rows[-1]
print(f"RSS (MiB) by maps written: " + ", ".join(f"{r[2]}: {r[1] / 1024:.0f}" for r in rows[:: max(1, n // 8)]))
print(f"RSS at {early[2]} maps {early[1] / 1024:.0f} MiB, at {late[2]} maps {late[1] / 1024:.0f} MiB, "
      f"max {max(r[1] for r in rows) / 1024:.0f} MiB")
PY
fi
