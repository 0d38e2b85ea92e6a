#!/usr/bin/env bash
# Remakes the re-ID zoo: the synthetic pedestrians (zoo/reid_data.py), the
# PromptSG-shaped model trained on their training split (zoo/reid_model.py,
# ~1.5 min on 2 cores), and the committed parts: zoo/models/reid_promptsg_*
# and the held-out test split in zoo/data/reid (queries, gallery, their part
# masks, the identities). The training split stays in WORK.
#
# usage: zoo/reid_zoo.sh [WORK]   (default: a temporary folder)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$(mktemp -d)}"
"$repo/zoo/setup_hf_venv.sh" >/dev/null
/usr/bin/python3 "$repo/zoo/reid_data.py" --out "$work/data" --test-ids 30 --per-camera 1 --distractors 20 --junk 10
"$repo/.venv-hf/bin/python" "$repo/zoo/reid_model.py" --data "$work/data" --out-models "$repo/zoo/models" --epochs 60
dest="$repo/zoo/data/reid"
rm -rf "$dest/query" "$dest/bounding_box_test" "$dest/masks"
mkdir -p "$dest/masks"
cp -r "$work/data/query" "$work/data/bounding_box_test" "$dest/"
cp -r "$work/data/masks/query" "$work/data/masks/bounding_box_test" "$dest/masks/"
cp "$work/data/identities.json" "$dest/"
echo "reid zoo: model in zoo/models, test split in $dest (training split in $work/data)"
