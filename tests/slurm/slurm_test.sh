#!/usr/bin/env bash
# A sharded run through a real Slurm (docs/scaling.md): a single-node Slurm
# from Debian's packages (munged, slurmctld and slurmd, started here with
# their own configuration, sockets, ports and state in a temporary folder,
# stopped at the end); `xcam slurm CONFIG --shards 4` submits the array job
# and the dependent merge; shard 2 is cancelled half-way (scancel) and
# resubmitted (sbatch --array=2: it resumes), the merge submitted after it;
# the merged records and maps must equal a single-process run byte for byte
# (records without their timings; sorted), nothing lost or twice. Prints the
# wall times of both.
#
# usage: tests/slurm/slurm_test.sh BUILD_DIR     (root; scripts/setup.sh installs slurm and munge)
set -euo pipefail
build=$(realpath "$1")
src=$(cd "$(dirname "$0")/../.." && pwd)
xcam=$build/core/xcam
for exe in munged slurmctld slurmd sbatch; do
  command -v "$exe" >/dev/null || { echo "slurm_test: $exe is missing; run scripts/setup.sh"; exit 1; }
done
T=$(mktemp -d /tmp/xcam-slurm.XXXXXX)
chmod 755 "$T"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
host=$(hostname -s)
mkdir -p "$T/state" "$T/spool" "$T/out"
# Munge with its own socket and key.
dd if=/dev/urandom of="$T/munge.key" bs=1024 count=1 status=none
chmod 400 "$T/munge.key"
munged --force --foreground --socket="$T/munge.sock" --key-file="$T/munge.key" --pid-file="$T/munged.pid" \
       --log-file="$T/munged.log" --seed-file="$T/munge.seed" &
pids+=($!)
port=$((20000 + RANDOM % 20000))
cat > "$T/slurm.conf" <<CONF
ClusterName=xcamtest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge.sock
CredType=cred/munge
SlurmctldPort=$port
SlurmdPort=$((port + 1))
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=xcam Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$T/slurm.conf
for _ in $(seq 50); do [ -S "$T/munge.sock" ] && break; sleep 0.1; done
slurmctld -D -f "$SLURM_CONF" >"$T/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$T/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && break
  sleep 0.2
done
sinfo -h -o %T | grep -q idle || { cat "$T"/*.log "$T"/*.out; echo "FAIL: the node did not come up"; exit 1; }

# The experiment: 30 of the demo's images, Score-CAM (a few seconds a shard).
config() {
  cat > "$T/$1.yaml" <<YAML
name: slurm-$1
model: $src/zoo/models/shapes_cnn_scripted.pt
labels: $src/zoo/models/shapes_labels.txt
plugin_options: {activation: sigmoid}
preprocess: {size: [128, 128]}
layers: [block4]
methods: [scorecam]
targets: annotated
inputs:
  images: $src/zoo/data/shapes/val_0[0-2]*.png
  boxes: $src/zoo/data/shapes/boxes.json
batch_size: 2
threads: 1
io_threads: 0
outputs: {dir: $T/out/$1, save: [map, overlay]}
YAML
}
config whole
config split
t0=$(date +%s.%N)
"$xcam" run "$T/whole.yaml" >"$T/whole.log"
t_whole=$(echo "$(date +%s.%N) - $t0" | bc)

t0=$(date +%s.%N)
(cd "$T" && "$xcam" slurm "$T/split.yaml" --shards 4 --cpus-per-task 1) | tee "$T/submit.log"
job=$(sed -n 's/.* as array job \([0-9]*\) and the merge as job \([0-9]*\);.*/\1/p' "$T/submit.log")
merge_job=$(sed -n 's/.* as array job \([0-9]*\) and the merge as job \([0-9]*\);.*/\2/p' "$T/submit.log")
[ -n "$job" ] && [ -n "$merge_job" ] || { echo "FAIL: no job ids"; exit 1; }
# Cancel shard 2 once it has written a few items.
items() { find "$T/out/split/shards/2-of-4" -path '*/.items/*.json' 2>/dev/null | wc -l; }
for _ in $(seq 600); do [ "$(items)" -ge 3 ] && break; sleep 0.05; done
scancel "${job}_2"
for _ in $(seq 100); do squeue -h -j "${job}_2" 2>/dev/null | grep -q . || break; sleep 0.1; done
cut=$(items)
[ -f "$T/out/split/shards/2-of-4/summary.json" ] && { echo "FAIL: shard 2 finished before it was cancelled"; exit 1; }
echo "shard 2 cancelled after $cut items"
# The merge waited on every shard (afterok) and never runs now: cancelled; shard 2 again, and the merge
# after the array has ended (afterany) and the new shard 2 has succeeded (afterok).
scancel "$merge_job" 2>/dev/null || true
again=$(sbatch --parsable --array=2 "$T/out/split/slurm/shards.sbatch")
sbatch --parsable --dependency="afterany:${job},afterok:${again%%;*}" "$T/out/split/slurm/merge.sbatch" >"$T/merge.id"
for _ in $(seq 1200); do
  grep -q "^merged 4 shards" "$T/out/split/slurm/merge.log" 2>/dev/null && break
  sleep 0.1
done
t_split=$(echo "$(date +%s.%N) - $t0" | bc)
grep -q "^merged 4 shards" "$T/out/split/slurm/merge.log" ||
  { cat "$T"/out/split/slurm/*.log "$T/slurmctld.log"; echo "FAIL: no merge"; exit 1; }
cat "$T/out/split/slurm/shard-2.log" | grep -E "^done" | tail -1

/usr/bin/python3 - "$T/out/whole" "$T/out/split" "$cut" <<'PY'
import json, os, sys
whole, split, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])
def rows(d):
    out = []
    for r in json.load(open(os.path.join(d, "results.json"))):
        for k in ("forward_ms", "backward_ms", "cam_ms"):
            r.pop(k)
        out.append(json.dumps(r, sort_keys=True))
    return out
a, b = rows(whole), rows(split)
assert len(a) == len(b) == len(set(b)), (len(a), len(b), len(set(b)))
assert sorted(a) == sorted(b), "the merged records differ from the single run's"
files = 0
for r in json.load(open(os.path.join(whole, "results.json"))):
    for o in r["outputs"]:
        assert open(os.path.join(whole, o), "rb").read() == open(os.path.join(split, o), "rb").read(), o
        files += 1
shards = json.load(open(os.path.join(split, "shards.json")))
assert shards[2]["resumed"] == cut // 2 * 2, (shards[2], cut)
s = json.load(open(os.path.join(split, "summary.json")))
assert s["done"] + s["resumed"] == 30 and s["failed"] == 0, s
print(f"slurm: merged = single run: {len(b)} records, {files} files byte for byte; shard 2 resumed {shards[2]['resumed']}")
w = json.load(open(os.path.join(whole, "summary.json")))
print(f"slurm: single process {w['maps_per_second']:.2f} maps/s; per shard " +
      ", ".join(f"{x['shard']} {x['maps']} maps {x['maps_per_second']:.2f} maps/s" for x in shards))
PY
echo "slurm: wall time, single process $t_whole s, 4 shards through Slurm (cancel and resubmit included) $t_split s"
