#!/usr/bin/env bash
# Soak benchmark (not a test): one `xcam run` of >= 20,000 maps across
# methods and layer sets on the bundled shapes CNN, its resident memory
# sampled 4 times a second against the maps written so far. Memory within a
# run is a saw-tooth (batches allocate and free); a leak raises its peaks.
# So for each method and layer set, after the first quarter of its maps
# (warm-up), the peak RSS of the second quarter is compared with the peak of
# the last quarter: the difference per 1,000 maps between them is the growth.
# 1 MiB per 1,000 maps or more within a method fails the script.
# usage: benchmarks/soak.sh [BUILD_DIR] [SAMPLES (default 2500)] [IO_THREADS (default 2)] [METHODS]
# 5 methods x 2 layer sets x 2 maps (top2) per sample: 50,000 maps with the
# default. METHODS (a YAML list) can add the slow ones, e.g.
# "[gradcam, scorecam]". Work files go to BUILD_DIR/soak (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/rss_sampler.sh
build=$(realpath "${1:-build/${XCAM_PRESET:-cpu-release}}")
samples=${2:-2500}
io=${3:-2}
methods=${4:-[gradcam, gradcam++, xgradcam, layercam, eigencam]}
xcam=$build/core/xcam
[ -x "$xcam" ] || { echo "soak: no $xcam; build first (scripts/build.sh)" >&2; exit 1; }
work=$build/soak
root=$(pwd)
rm -rf "$work" && mkdir -p "$work"

/usr/bin/python3 - "$work/samples.jsonl" "$samples" <<PY
import glob, json, sys
src = sorted(glob.glob("$root/zoo/data/shapes/*.png"))
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"image": src[i % len(src)], "id": f"s{i:05d}"}) + "\n")
PY
cat >"$work/soak.yaml" <<YAML
name: soak
model: $root/zoo/models/shapes_cnn_scripted.pt
plugin: cnn
labels: $root/zoo/models/shapes_labels.txt
preprocess: {size: [128, 128]}
layers: [block4, [block3, block4]]
methods: $methods
targets: top2
inputs: {manifest: $work/samples.jsonl}
batch_size: 16
threads: 2
perturb_chunk: 64
outputs: {dir: $work/out, save: [map, overlay]}
YAML

"$xcam" run "$work/soak.yaml" --io-threads "$io" >"$work/soak.log" 2>&1 &
pid=$!
# maps written so far in each <method>/<layers> folder
count_per_run() {
  (cd "$work/out" 2>/dev/null && for d in */*/; do
     [ -d "$d" ] && printf '%s=%s ' "${d%/}" "$(find "$d" -maxdepth 1 -name '*.npy' | wc -l)"
   done) || true
}
sample_rss $pid "$work/rss.tsv" count_per_run 0.25
wait $pid || { tail -5 "$work/soak.log"; exit 1; }
tail -1 "$work/soak.log"

/usr/bin/python3 - "$work/rss.tsv" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t")
    counts = dict(kv.split("=") for kv in parts[2].split()) if len(parts) > 2 else {}
    rows.append((int(parts[1]) / 1024.0, {k: int(v) for k, v in counts.items()}))
# A sample belongs to the segment whose map count grew since the one before.
segments, prev = {}, {}
for rss, counts in rows:
    grown = [k for k, v in counts.items() if v > prev.get(k, 0)]
    total = sum(counts.values())
    if len(grown) == 1:
        segments.setdefault(grown[0], []).append((counts[grown[0]], rss, total))
    prev = counts
def growth(pts):
    """MiB per 1,000 maps between the peaks of the 2nd and the last quarter."""
    n_maps = pts[-1][0]
    q2 = [p for p in pts if n_maps * 0.25 <= p[0] < n_maps * 0.5]
    q4 = [p for p in pts if p[0] >= n_maps * 0.75]
    if len(q2) < 2 or len(q4) < 2:
        return float("nan")
    a, b = max(q2, key=lambda p: p[1]), max(q4, key=lambda p: p[1])
    return 1000.0 * (b[1] - a[1]) / max(1, b[0] - a[0])
worst = 0.0
print(f"{'method/layers':<28} {'maps':>6} {'samples':>7} {'peak RSS MiB q2 / q4':>21} {'MiB per 1,000 maps':>19}")
for key in sorted(segments, key=lambda k: segments[k][0][2]):
    pts = segments[key]
    n_maps = pts[-1][0]
    g = growth(pts)
    if g == g:
        worst = max(worst, g)
    q2 = max((p[1] for p in pts if n_maps * 0.25 <= p[0] < n_maps * 0.5), default=float("nan"))
    q4 = max((p[1] for p in pts if p[0] >= n_maps * 0.75), default=float("nan"))
    print(f"{key:<28} {n_maps:>6} {len(pts):>7} {q2:>10.0f} / {q4:<8.0f} {g:>+19.3f}")
total_maps = sum(rows[-1][1].values()) if rows else 0
all_rss = [r[0] for r in rows]
print(f"whole run: {total_maps} maps, RSS {all_rss[0]:.0f} MiB at start, {max(all_rss):.0f} MiB max, "
      f"{all_rss[-1]:.0f} MiB at the end; worst growth within a method {worst:+.3f} MiB per 1,000 maps")
if total_maps < 20000:
    sys.exit(f"soak: only {total_maps} maps; give more samples")
if worst >= 1.0:
    sys.exit("soak: RSS grows within a method (>= 1 MiB per 1,000 maps)")
PY
