#!/usr/bin/env bash
# Create the Python environment with a LibTorch 2.x: the PyPI torch wheel that
# scripts/torch2_wheel.sh caches (installed from that file, its dependencies
# from PyPI), apart from Debian's torch 1.13 (no system site packages).
# zoo/export_torch2.py uses it to export zoo models with torch 2.x, which the
# tests load in both builds (docs/install.md, "LibTorch 2.x").
#
# usage: zoo/setup_torch2_venv.sh [VENV_DIR]   (default: <repo>/.venv-torch2)
#
# The wheel is a CUDA build: pip brings the CUDA runtime wheels it imports
# (about 3 GB); nothing of them runs on a machine without a GPU.
# Running it again is a no-op once the pinned version is installed.
set -euo pipefail

TORCH_VERSION=${XCAM_TORCH2_VERSION:-2.15.0}
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-torch2}"

. "$repo_root/zoo/venv_common.sh"
apt_install_missing setup_torch2_venv python3-venv
[[ -x "$venv/bin/python" ]] || /usr/bin/python3 -m venv "$venv"

have() { "$venv/bin/python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p' || true; }
if [[ "$(have torch)" != "$TORCH_VERSION" ]]; then
    "$repo_root/scripts/torch2_wheel.sh" "$TORCH_VERSION" >/dev/null
    cache=${XCAM_CACHE:-$HOME/.cache/xcam}
    wheel=$(ls "$cache"/wheels/torch-"$TORCH_VERSION"-cp*-manylinux*_x86_64.whl | head -n 1)
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel" numpy opencv-python-headless
fi

"$venv/bin/python" -c 'import torch; print("torch2 venv ready:", "'"$venv"'", "torch", torch.__version__)'
