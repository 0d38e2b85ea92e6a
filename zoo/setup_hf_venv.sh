#!/usr/bin/env bash
# Create the Python environment that builds the transformer zoo models:
# transformers (CLIP / ViT / BERT / Qwen2-VL architectures, random init, trained
# here) and timm, on Debian's torch 1.13 (python3-torch): the re-ID, attention
# and VLM scripts of zoo/ need it. Nothing is downloaded but these packages: the
# models are built from their configs, never fetched from a hub.
#
# usage: zoo/setup_hf_venv.sh [VENV_DIR]   (default: <repo>/.venv-hf)
#
# transformers 4.49.0 is the newest release that still runs on torch 1.13 (the
# 4.47.1-4.49.0 range is tested); timm 0.6.13 both traces and scripts there.
# Running it again is a no-op once the pinned versions are installed.
set -euo pipefail

TRANSFORMERS_VERSION=4.49.0
TIMM_VERSION=0.6.13
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-hf}"

. "$repo_root/zoo/venv_common.sh"
apt_install_missing setup_hf_venv python3-torch python3-torchvision python3-numpy python3-opencv python3-venv python3-jinja2
make_venv "$venv"

have() { "$venv/bin/python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p' || true; }
if [[ "$(have transformers)" != "$TRANSFORMERS_VERSION" || "$(have timm)" != "$TIMM_VERSION" ]]; then
    # --no-deps for timm: its torch / torchvision requirement is Debian's.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "transformers==$TRANSFORMERS_VERSION"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "timm==$TIMM_VERSION"
fi

"$venv/bin/python" -c 'import torch, transformers, timm; print("hf venv ready:", "'"$venv"'", "transformers", transformers.__version__, "timm", timm.__version__, "torch", torch.__version__)'
