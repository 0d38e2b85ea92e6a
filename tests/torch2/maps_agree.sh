#!/usr/bin/env bash
# The same experiments run by two xcam builds: one against Debian's LibTorch
# 1.13 and one against LibTorch 2.x (the cpu-torch2 preset), on models exported
# by torch 1.13 (zoo/models) and by torch 2.x (zoo/models/torch2, from the same
# weights: zoo/export_torch2.py). Checks that
#   - each build loads every model file, whichever torch exported it;
#   - both builds write the same outputs, every map (.npy) within 1e-5;
#   - a 2.x export gives the maps of its 1.13 twin, in each build (1e-5).
# Families: the CNN (traced and scripted; five methods), the captioner (traced
# and scripted; per-step targets), re-ID similarity and the VLM (1.13 exports).
# usage: tests/torch2/maps_agree.sh XCAM_1 XCAM_2 [WORK_DIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
x1=$1 x2=$2
work=${3:-$(mktemp -d)}
if [ ! -x "$x1" ]; then
  echo "maps_agree: skipped: no xcam binary at $x1 (build the cpu-release preset first: scripts/build.sh)"
  exit 77
fi
[ -x "$x2" ] || { echo "maps_agree: no xcam binary at $x2"; exit 2; }
rm -rf "$work" && mkdir -p "$work"
z="$repo/zoo"

# manifest SRC N: the first N lines of a manifest, its paths made absolute.
manifest() {
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, os, sys
src, n = sys.argv[1], int(sys.argv[2])
base = os.path.dirname(os.path.abspath(src))
for line in open(src).read().splitlines()[:n]:
    item = json.loads(line)
    item["image"] = os.path.join(base, item["image"])
    for k, v in item.get("images", {}).items():
        item["images"][k] = os.path.join(base, v)
    print(json.dumps(item))
PY
}
manifest "$z/data/reid/pairs.jsonl" 4 > "$work/reid.jsonl"
manifest "$z/data/vlm/manifest.jsonl" 3 > "$work/vlm.jsonl"

# config NAME MODEL: writes $work/NAME.yaml from the case's body on stdin.
config() {
  { echo "name: $1"; echo "model: $2"; cat; echo "threads: 2"; echo "outputs:"; echo "  dir: OUT"; echo "  save: [map]"; } \
    > "$work/$1.yaml"
}
cases=()
for m in shapes_cnn_traced shapes_cnn_scripted; do
  for src in 113 torch2; do
    dir=$z/models; [ $src = torch2 ] && dir=$z/models/torch2
    config "${m}_$src" "$dir/$m.pt" <<EOF2
plugin: cnn
plugin_options: {activation: sigmoid}
labels: $z/models/shapes_labels.txt
preprocess: {size: [128, 128], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
layers: [block4, block3]
methods: [gradcam, gradcam++, layercam, scorecam, eigencam]
targets: top2
inputs: {images: "$z/data/shapes/val_00[0-5].png"}
batch_size: 4
EOF2
    cases+=("${m}_$src")
  done
done
for m in captioner_traced captioner_scripted; do
  # The traced decoder is unrolled for 16 tokens (configs/captioner_batch.yaml).
  pad=""; [ $m = captioner_traced ] && pad=", pad_to: 16"
  for src in 113 torch2; do
    dir=$z/models; [ $src = torch2 ] && dir=$z/models/torch2
    config "${m}_$src" "$dir/$m.pt" <<EOF2
plugin: captioner
plugin_options: {vocab: $z/models/captioner_vocab.txt$pad}
preprocess: {size: [128, 128]}
layers: [encoder, encoder.layer2]
methods: [gradcam, hirescam]
targets: "step:1"
inputs: {images: "$z/data/captioner/images/scene_00[0-3].png"}
batch_size: 4
EOF2
    cases+=("${m}_$src")
  done
done
config reid_113 "$z/models/reid_promptsg_traced.pt" <<EOF2
plugin: reid
preprocess: {size: [128, 64]}
layers: [vit_last, mim]
methods: [gradcam, gradcam++]
targets: similarity
inputs: {manifest: $work/reid.jsonl}
batch_size: 4
EOF2
cases+=(reid_113)
config vlm_113 "$z/models/vlm/qwen2_vl_count_traced.pt" <<EOF2
plugin: vlm
plugin_options: {tokenizer: $z/models/tokenizers/qwen2/tokenizer.json}
layers: [vision_last, decoder_middle]
methods: [gradcam]
inputs: {manifest: $work/vlm.jsonl}
EOF2
cases+=(vlm_113)

for c in "${cases[@]}"; do
  for b in 1 2; do
    x=$x1; [ $b = 2 ] && x=$x2
    sed "s|  dir: OUT|  dir: $work/out$b/$c|" "$work/$c.yaml" > "$work/$c.$b.yaml"
    "$x" run "$work/$c.$b.yaml" > "$work/$c.$b.log" 2>&1 || { cat "$work/$c.$b.log"; echo "maps_agree: $c failed with $x"; exit 1; }
  done
done

/usr/bin/python3 - "$work" "${cases[@]}" <<'PY'
import glob, os, sys
import numpy as np
work, cases = sys.argv[1], sys.argv[2:]
TOL = 1e-5
bad = []

def maps(folder):
    return {os.path.relpath(p, folder): np.load(p)
            for p in glob.glob(os.path.join(folder, "**", "*.npy"), recursive=True)}

def agree(what, a, b):
    if not a:
        bad.append(f"{what}: no maps written")
        return
    if sorted(a) != sorted(b):
        bad.append(f"{what}: different maps: {sorted(set(a) ^ set(b))[:4]}")
        return
    diff = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    print(f"maps_agree: {what}: {len(a)} maps, max |diff| {diff:.2e}")
    if diff > TOL:
        bad.append(f"{what}: max |diff| {diff:.2e} > {TOL}")

out = {b: {c: maps(os.path.join(work, f"out{b}", c)) for c in cases} for b in (1, 2)}
for c in cases:
    agree(f"{c}: LibTorch 1.13 vs 2.x", out[1][c], out[2][c])
for c in cases:
    if c.endswith("_torch2"):
        twin = c[:-len("_torch2")] + "_113"
        for b, name in ((1, "1.13"), (2, "2.x")):
            agree(f"{c} vs {twin} (LibTorch {name})", out[b][c], out[b][twin])
if bad:
    print("maps_agree: FAILED\n  " + "\n  ".join(bad))
    sys.exit(1)
print("maps_agree: every map agrees")
PY
