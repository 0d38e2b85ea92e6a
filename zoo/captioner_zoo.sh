#!/usr/bin/env bash
# Remakes the captioner zoo: the held-out scenes (zoo/captioner_data.py, 100
# images with their references and boxes, committed in zoo/data/captioner) and
# the CNN-LSTM trained on 12,000 fresh scenes (zoo/captioner_model.py, ~10 min
# on 2 cores), exported scripted and traced to zoo/models/captioner_*.
#
# usage: zoo/captioner_zoo.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/zoo/data/captioner"
rm -rf "$dest"
/usr/bin/python3 "$repo/zoo/captioner_data.py" --out "$dest" --count 100
/usr/bin/python3 "$repo/zoo/captioner_model.py" --data "$dest" --out-models "$repo/zoo/models" --epochs 12
echo "captioner zoo: models in zoo/models, held-out scenes in $dest"
