#!/usr/bin/env bash
# Soak benchmark (not a test): one `xcam run` of >= 20,000 maps across
# methods and layer sets on the bundled shapes CNN, its resident memory
# sampled every second against the maps written so far. Prints, for each
# method and layer set, the RSS growth per 1,000 maps (a least-squares slope
# over the second half of that segment, after its warm-up) and the whole
# run's RSS; a slope of 1 MiB per 1,000 maps or more within a method is a
# leak and fails the script.
# usage: benchmarks/soak.sh [BUILD_DIR] [SAMPLES_PER_RUN (default 1000)] [IO_THREADS (default 2)]
# Each of the 6 methods x 2 layer sets writes 2 maps per sample: 24,000 maps
# with the default. Work files go to BUILD_DIR/soak (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/rss_sampler.sh
build=$(realpath "${1:-build/${XCAM_PRESET:-cpu-release}}")
samples=${2:-1000}
io=${3:-2}
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
methods: [gradcam, gradcam++, xgradcam, layercam, eigencam, scorecam]
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
sample_rss $pid "$work/rss.tsv" count_per_run
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
def slope(pts):
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return 1000.0 * sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else 0.0
worst, total_maps = 0.0, 0
print(f"{'method/layers':<28} {'maps':>6} {'RSS MiB (start-end)':>20} {'MiB per 1,000 maps':>19}")
for key in sorted(segments, key=lambda k: segments[k][0][2]):
    pts = segments[key]
    tail = pts[len(pts) // 2:]
    s = slope(tail) if len(tail) >= 3 else float("nan")
    worst = max(worst, s) if s == s else worst
    print(f"{key:<28} {pts[-1][0]:>6} {pts[0][1]:>9.0f} - {pts[-1][1]:<8.0f} {s:>+19.3f}")
total_maps = sum(rows[-1][1].values()) if rows else 0
all_rss = [r[0] for r in rows]
print(f"whole run: {total_maps} maps, RSS {all_rss[0]:.0f} MiB at start, {max(all_rss):.0f} MiB max, "
      f"{all_rss[-1]:.0f} MiB at the end; worst growth within a method {worst:+.3f} MiB per 1,000 maps")
if total_maps < 20000:
    sys.exit(f"soak: only {total_maps} maps; give more samples")
if worst >= 1.0:
    sys.exit("soak: RSS grows within a method (>= 1 MiB per 1,000 maps)")
PY
