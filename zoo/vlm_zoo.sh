#!/usr/bin/env bash
# Remakes the VLM zoo: the counting scenes (zoo/vlm_data.py: red circles among
# distractors, 0-19 of them, several aspect ratios), the tiny transformers
# Qwen2-VL trained on their training split to answer "how many red circles?"
# (zoo/vlm_model.py --train, ~14 min on one CPU thread), then trained on
# (10 min) a split of whole scenes and crops of scenes (each crop's count: the
# circles whose centres lie in it), so that the vlm plugin's count task can
# ask it about crops (its dense, hybrid and box strategies), the grid-free traced
# exports of it and of a random-init Qwen2.5-VL with their sidecar and the
# reference inputs for the C++ tests (--export), the check of the traced files
# against the eager transformers models on grids the trace never saw
# (--verify, fails loudly), and the committed parts: zoo/models/vlm/ and the
# held-out split in zoo/data/vlm. The training split stays in WORK.
#
# usage: zoo/vlm_zoo.sh [WORK] [MINUTES] [CROP_MINUTES]   (default: a temporary folder, 14 and 10 minutes)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$(mktemp -d)}"
minutes="${2:-14}"
crop_minutes="${3:-10}"
py="$repo/.venv-hf/bin/python"
"$repo/zoo/setup_hf_venv.sh" >/dev/null
if [[ ! -f "$repo/zoo/models/tokenizers/qwen2/tokenizer.json" ]]; then
    "$py" "$repo/zoo/tokenizer_zoo.py"
fi
"$py" "$repo/zoo/vlm_data.py" --out "$work/data" --train 6000 --train-crops 6000 --test 60
"$py" "$repo/zoo/vlm_model.py" --data "$work/data" --work "$work" --train --minutes "$minutes"
"$py" "$repo/zoo/vlm_model.py" --data "$work/data" --work "$work" --train --resume --split train_crops \
    --minutes "$crop_minutes" --lr 1e-3
"$py" "$repo/zoo/vlm_model.py" --data "$work/data" --work "$work" --export --verify
dest="$repo/zoo/data/vlm"
rm -rf "$dest"
mkdir -p "$dest"
cp -r "$work/data/test/images" "$work/data/test/manifest.jsonl" "$work/data/test/counts.json" "$dest/"
echo "vlm zoo: models in zoo/models/vlm, held-out split in $dest (training split in $work/data)"
