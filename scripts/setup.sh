#!/usr/bin/env bash
# Installs what xcam needs from Debian's packages, only what is missing.
# Safe to re-run. Needs root (or sudo) the first time.
set -euo pipefail

PACKAGES=(
  build-essential cmake ccache pkg-config
  libtorch-dev libdnnl-dev libyaml-cpp-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libopencv-imgcodecs-dev libopencv-imgproc-dev libdeflate-dev libjpeg-dev
  # core's tokenizer: Unicode categories, normalization and regexes
  libicu-dev
  googletest libgtest-dev libbenchmark-dev
  python3-torch python3-torchvision python3-numpy python3-opencv python3-venv
  # the attention page's test: headless Chromium, driven over the DevTools
  # protocol (tests/e2e/attention_page_test.py)
  chromium python3-websocket
  # scripts/fuzz.sh: libFuzzer comes with clang 14; the fuzz preset builds
  # libxcam with it (and its OpenMP runtime).
  clang libomp-dev
  # LibTorch's linear layers and matmuls call whatever libblas.so.3 is: the
  # OpenMP build of OpenBLAS shares LibTorch's thread pool and is ~6x faster
  # than the reference BLAS that libtorch-dev pulls in (docs/results.md).
  libopenblas0-openmp
  # The reference BLAS stays installed beside it: benchmarks/blas_compare.sh
  # and the slow-BLAS warning test run against it.
  libblas3
  # Sharded runs through Slurm (tests/slurm/slurm_test.sh starts a private
  # single-node Slurm); dpkg-dev: cpack's dependency list (dpkg-shlibdeps).
  slurmctld slurmd slurm-client munge bc dpkg-dev
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

# Installing OpenBLAS switches the libblas.so.3 alternative to it unless
# someone pinned another one by hand; say so rather than override them.
blas_alt=libblas.so.3-$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
blas_now=$(update-alternatives --query "$blas_alt" 2>/dev/null | sed -n 's/^Value: //p')
case "$blas_now" in
  *openblas*|"") ;;
  *) echo "xcam setup: warning: libblas.so.3 points to $blas_now, not OpenBLAS; linear layers will be slow." \
          "Fix: sudo update-alternatives --auto $blas_alt" >&2 ;;
esac
