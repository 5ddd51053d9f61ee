#!/usr/bin/env bash
# Set up this project on a fresh machine: Debian's libusb (for Open3D), a virtual
# environment in .venv and the pinned packages. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's libusb-1.0-0 (needed by Open3D)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
  else
    echo "[setup] Open3D needs libusb-1.0-0: run 'sudo apt-get install -y libusb-1.0-0'" >&2
    exit 1
  fi
fi

# The reference SDFormat parser (libsdformat) and a C++ compiler: the export tests validate the Gazebo
# world with it (tests/recon/sdformat_check.cpp). About 2 MB; skipped with a note when not root.
if ! pkg-config --exists sdformat12 2>/dev/null || ! command -v g++ >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's libsdformat-dev, g++, pkg-config (SDFormat validation in the tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libsdformat-dev g++ pkg-config >/dev/null
  else
    echo "[setup] note: the Gazebo-export tests skip without libsdformat-dev g++ pkg-config (apt-get install)" >&2
  fi
fi

# Headless Chromium and its WebDriver: the viewer's browser test (tests/app/test_viewer.py) opens `run.py view`
# in a real browser. About 300 MB; skipped with a note when not root (the test then skips, except in CI).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's chromium and chromium-driver (the viewer's browser test)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null
  else
    echo "[setup] note: the viewer's browser test skips without chromium chromium-driver (apt-get install)" >&2
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-nodeps.txt requirements.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # The pinned packages take about 8 GB installed (PyPI's torch brings its CUDA libraries); pip also unpacks
  # each wheel in a temporary folder. Check the space first, so a full disk is named before minutes of work.
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  need_kb=$((9 * 1024 * 1024))
  if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
    echo "[setup] only $((free_kb / 1024)) MB free on the disk of $(pwd); .venv needs about 9 GB there" \
         "(free some space, or clone the project onto a larger disk)" >&2
    exit 1
  fi
  echo "[setup] installing pinned packages (requirements.txt, requirements-nodeps.txt, requirements.lock)"
  # --no-cache-dir: no second copy of every wheel in ~/.cache/pip (several GB for torch alone)
  .venv/bin/python -m pip install -q --no-cache-dir -r requirements.txt -c requirements.lock
  # GroundingDINO without the extras its metadata names (opencv-python needs libGL; supervision is unused)
  .venv/bin/python -m pip install -q --no-cache-dir --no-deps -r requirements-nodeps.txt -c requirements.lock
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import torch, torchvision.ops, open3d, mcubes, scipy, numba, segment_anything, groundingdino.util.slconfig, lzfse, pyrealsense2, viser, open_clip, pxr, yourdfpy, coacd, ray" \
  || { echo "[setup] import check failed" >&2; exit 1; }
echo "[setup] ready: .venv ($(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"

# ---------------------------------------------------------------------------------------------------
# Optional: gsplat, the CUDA rasteriser of the appearance Gaussians (fields/raster_gsplat.py; the
# pure-PyTorch rasteriser runs everywhere without it). RECON_WITH_GSPLAT=1 installs it, =0 skips it;
# unset, it is installed where nvcc is on PATH and nvidia-smi lists a GPU. Its CUDA kernels compile
# at first use (a few minutes, once, into ~/.cache/torch_extensions); `gsplat_available()` says why not.
want_gsplat=${RECON_WITH_GSPLAT:-auto}
if [ "$want_gsplat" = auto ]; then
  want_gsplat=0
  if command -v nvcc >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then want_gsplat=1; fi
fi
if [ "$want_gsplat" = 1 ]; then
  if ! .venv/bin/python -c "import gsplat" 2>/dev/null; then
    echo "[setup] installing gsplat (requirements-gsplat.txt; CUDA kernels compile at first use)"
    .venv/bin/python -m pip install -q --no-deps -r requirements-gsplat.txt
  fi
  command -v nvcc >/dev/null || echo "[setup] note: gsplat needs nvcc (the CUDA toolkit) on PATH to compile its kernels" >&2
fi
