#!/usr/bin/env bash
# The Debian package (docs/install.md), end to end: built with cpack from the
# release build, installed with apt-get (its dependencies, computed from the
# binaries by dpkg-shlibdeps, resolved from Debian's archive as on a fresh
# machine of this kind), `xcam explain` run from /usr/bin on the zoo's shapes
# CNN with the installed cnn plugin and its map compared with the build
# tree's; the package is purged afterwards. Needs root (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
root=$PWD
build=$root/build/${XCAM_PRESET:-cpu-release}
(cd "$build" && rm -f xcam_*.deb && cpack -G DEB >/dev/null)
deb=$(ls "$build"/xcam_*.deb)
echo "package: $(basename "$deb") ($(du -h "$deb" | cut -f1)); Depends: $(dpkg-deb -f "$deb" Depends)"
if dpkg-query -W -f='${Status}' xcam 2>/dev/null | grep -q "install ok installed"; then
  echo "package_test: a package 'xcam' is installed already; remove it first (apt-get remove xcam)" >&2
  exit 1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$deb" >/dev/null
work=$(mktemp -d)
trap 'DEBIAN_FRONTEND=noninteractive apt-get purge -y xcam >/dev/null; rm -rf "$work"' EXIT
cp zoo/models/shapes_cnn_scripted.pt zoo/data/shapes/val_003.png "$work/"
cd "$work"
args=(explain --model shapes_cnn_scripted.pt --size 128 128 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225
      --layer block4 --threads 1)
[ "$(command -v xcam)" = /usr/bin/xcam ] || { echo "FAIL: xcam is not /usr/bin/xcam"; exit 1; }
env -u XCAM_PLUGIN_PATH xcam --version
env -u XCAM_PLUGIN_PATH xcam "${args[@]}" --out pkg val_003.png >/dev/null
"$build/core/xcam" "${args[@]}" --out tree val_003.png >/dev/null
/usr/bin/python3 - pkg/val_003_*.npy tree/val_003_*.npy <<'PY'
import sys
import numpy as np
pkg, tree = (np.load(f) for f in sys.argv[1:3])
diff = float(np.abs(pkg - tree).max())
assert pkg.shape == tree.shape and diff < 1e-6, (pkg.shape, tree.shape, diff)
print(f"package: /usr/bin/xcam with /usr/lib/xcam/plugins gives the build tree's map ({sys.argv[1]}, max diff {diff})")
PY
