#!/usr/bin/env bash
# Fetches NVRTC for CUDA 13 (the `nvidia-cuda-nvrtc` wheel from PyPI, ~60 MB) into
# tests/data/nvrtc, so the CUDA suite can compile every kernel on machines without a GPU or a
# CUDA toolkit. Prints the library folder to put on LD_LIBRARY_PATH. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=tests/data/nvrtc
lib="$dest/nvidia/cu13/lib"
if [ ! -f "$lib/libnvrtc.so.13" ]; then
    mkdir -p "$dest/wheel"
    python3 -m pip download --quiet --no-deps --no-cache-dir --dest "$dest/wheel" "nvidia-cuda-nvrtc>=13,<14" >&2
    python3 - "$dest" >&2 <<'PY'
import glob, sys, zipfile
dest = sys.argv[1]
wheel = sorted(glob.glob(f"{dest}/wheel/nvidia_cuda_nvrtc-*.whl"))[-1]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("nvidia/cu13/lib/")]
    z.extractall(dest, names)
print(f"extracted {len(names)} NVRTC libraries from {wheel}")
PY
    rm -rf "$dest/wheel"
fi
echo "$PWD/$lib"
