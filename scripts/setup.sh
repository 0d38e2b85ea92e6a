#!/usr/bin/env bash
# Installs what xcam needs from Debian's packages, only what is missing.
# Safe to re-run. Needs root (or sudo) the first time.
set -euo pipefail

PACKAGES=(
  build-essential cmake ccache pkg-config
  libtorch-dev libdnnl-dev libyaml-cpp-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libopencv-imgcodecs-dev libopencv-imgproc-dev
  googletest libgtest-dev libbenchmark-dev
  python3-torch python3-torchvision python3-numpy python3-opencv python3-venv
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "xcam setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
