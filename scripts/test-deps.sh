#!/usr/bin/env bash
# Install what the tests need on a Debian/Ubuntu machine, skipping what is there already (root or
# sudo for apt). The appliance and `demo` need none of it: only a C compiler and rustup.
#   dcmtk + GDCM: independent encoders the codec tests compress with, and dcmtk's DICOM peers;
#   dicom3tools: dciodvfy; mosquitto: the broker of the daemon tests; a TrueType font for the
#   evaluation plots; systemd-analyze for the unit checks; pydicom + pylibjpeg: an independent
#   reader of the phantoms; onnx + onnxruntime: checks of the exported model and the int8 step;
#   PyTorch 2.9.0: LibTorch, the trainer's fast backend (feature `libtorch`).
#   chromium + chromium-driver: the dashboard page in a real browser (tests/it/dashboard.rs);
#   postgresql: the server binaries the dashboard's PostgreSQL test starts a throw-away server with.
set -euo pipefail
sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
pkgs=()
command -v c++ >/dev/null || pkgs+=(g++)
command -v dcmcjpeg >/dev/null || pkgs+=(dcmtk)
command -v gdcmconv >/dev/null || pkgs+=(libgdcm-tools)
command -v dciodvfy >/dev/null || pkgs+=(dicom3tools)
[ -x /usr/sbin/mosquitto ] || pkgs+=(mosquitto)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || pkgs+=(fonts-dejavu-core)
command -v systemd-analyze >/dev/null || pkgs+=(systemd)
command -v setpriv >/dev/null || pkgs+=(util-linux)
# the dashboard's browser test: headless Chromium driven by chromedriver (WebDriver)
[ -x /usr/bin/chromium ] || pkgs+=(chromium)
[ -x /usr/bin/chromedriver ] || pkgs+=(chromium-driver)
# the dashboard's PostgreSQL backend: initdb + postgres (the test runs its own server)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || pkgs+=(postgresql)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "== apt-get install ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
if ! python3 -c "import pydicom, numpy, pylibjpeg, libjpeg, openjpeg, onnx, onnxruntime" 2>/dev/null; then
  echo "== pip install pydicom onnx onnxruntime"
  python3 -m pip install --quiet --disable-pip-version-check \
    pydicom numpy pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg onnx onnxruntime
fi
# PyPI's wheel, with its CUDA libraries (about 3 GB; they also serve `fit --device cuda`);
# torch-sys finds it through python3 (LIBTORCH_USE_PYTORCH=1 in .cargo/config.toml).
if ! python3 -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.9.0')" 2>/dev/null; then
  echo "== pip install torch==2.9.0"
  python3 -m pip install --quiet --disable-pip-version-check torch==2.9.0
fi

# the default-features daemon (no LibTorch linked), which the permission tests run as nobody:
# <target>/mammo-edge-default
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --bin mammo-edge
cp "$target/debug/mammo-edge" "$target/mammo-edge-default"
