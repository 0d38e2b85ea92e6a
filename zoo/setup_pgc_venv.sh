#!/usr/bin/env bash
# Create the Python environment that runs pytorch-grad-cam ("pgc"), the peer xcam is
# compared against: zoo/golden_gradcam.py and benchmarks/pgc_bench.py need it.
#
# usage: zoo/setup_pgc_venv.sh [VENV_DIR]   (default: <repo>/.venv-pgc)
#
# The venv sees the system site-packages (Debian's python3-torch, -torchvision,
# -opencv, -scipy, -sklearn, -tqdm, -matplotlib), so only pgc itself and its small
# test-time-augmentation dependency come from PyPI, without pulling a second torch.
# Running it again is a no-op once the pinned version is installed.
set -euo pipefail

GRAD_CAM_VERSION=1.5.5
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-pgc}"

# The Debian packages pgc imports, installed when missing.
. "$repo_root/zoo/venv_common.sh"
apt_install_missing setup_pgc_venv python3-torch python3-torchvision python3-opencv python3-scipy python3-sklearn python3-tqdm \
         python3-matplotlib python3-venv
make_venv "$venv"

installed="$("$venv/bin/python" -m pip show grad-cam 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [[ "$installed" != "$GRAD_CAM_VERSION" ]] || ! "$venv/bin/python" -c 'import ttach' 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        "grad-cam==$GRAD_CAM_VERSION" ttach
fi

"$venv/bin/python" -c 'import pytorch_grad_cam, torch; print("pgc venv ready:", "'"$venv"'", "grad-cam '"$GRAD_CAM_VERSION"'", "torch", torch.__version__)'
