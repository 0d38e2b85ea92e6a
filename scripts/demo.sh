#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs the demo
# experiment (Grad-CAM on the bundled shapes CNN and held-out images), which
# writes overlays and panels to out/shapes-demo/ and prints the pointing game.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
exec build/${XCAM_PRESET:-cpu-release}/core/xcam run configs/shapes_demo.yaml "$@"
