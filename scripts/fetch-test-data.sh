#!/usr/bin/env bash
# Fetches the ONNX backend test data (node test suite, light CNNs) that the round-trip tests
# read, from the onnx wheel on PyPI (no model hub needed). Idempotent.
#   tests/data/onnx/backend/test/data/{node,light,...}
set -euo pipefail
cd "$(dirname "$0")/.."
dest=tests/data
marker="$dest/onnx-1.22.0.ok"
[ -f "$marker" ] && exit 0
mkdir -p "$dest/wheel"
python3 -m pip download --quiet --no-deps --dest "$dest/wheel" onnx==1.22.0
wheel=$(ls "$dest"/wheel/onnx-1.22.0-*.whl | head -n1)
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnx/backend/test/data/")]
    z.extractall(dest, names)
print(f"extracted {len(names)} files of the ONNX backend test data")
PY
rm -rf "$dest/wheel"
touch "$marker"
