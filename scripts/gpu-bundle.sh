#!/usr/bin/env bash
# Prepares .gpu/ for scripts/gpu-check.sh on a GPU machine that has CUDA 13, PyTorch, PEFT and
# transformers but no Rust toolchain: builds (here) the release CLI and the CUDA suite with the
# `cuda` feature, strips them, and copies what the check reads that git does not track (the ONNX
# node tests that exercise device ops, the training sets, the PEFT GPU anchor).
# Then run the check with .gpu carried, e.g. device run: carry [".gpu"], command
# `bash scripts/gpu-check.sh`. The working tree that travels must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu
rm -rf "$out"
mkdir -p "$out/bin" "$out/node" "$out/data" "$out/anchors"

cargo build --release --locked --features cuda --bin adaptc
suite=$(cargo test --release --locked --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
cp target/release/adaptc "$out/bin/adaptc"
cp "$suite" "$out/bin/cuda-suite"
strip "$out/bin/adaptc" "$out/bin/cuda-suite"

# The node tests the CPU passes whose models hold an op the device implements.
bash scripts/fetch-test-data.sh
devops=$(ADAPTC_LIST_DEVICE_OPS=1 "$out/bin/cuda-suite")
node=tests/data/onnx/backend/test/data/node
kept=0
while read -r t; do
    [ -z "$t" ] && continue
    ops=$("$out/bin/adaptc" inspect "$node/$t/model.onnx" 2>/dev/null | awk '/^ops \(/ {on=1; next} on && NF==2 {print $2}')
    for op in $ops; do
        if grep -qx "$op" <<<"$devops"; then
            mkdir -p "$out/node/$t"
            cp "$node/$t/model.onnx" "$out/node/$t/"
            cp -r "$node/$t/test_data_set_0" "$out/node/$t/"
            kept=$((kept + 1))
            break
        fi
    done
done < runtime/tests/node_suite_passing.txt
echo "node tests with device ops: $kept"

cp -r tests/data/train/sentiment tests/data/train/corpus "$out/data/"
cp ../shared/anchors/peft_gpu_baseline.py "$out/anchors/" 2>/dev/null || echo "note: ../shared/anchors/peft_gpu_baseline.py not found; the bench runs without the PEFT side"
# Compressed for the trip (gpu-check.sh unpacks them with Python's lzma).
xz -T2 -6 "$out/bin/adaptc" "$out/bin/cuda-suite"
du -sh "$out"
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
bundle=$(du -sb "$out" | cut -f1)
echo "travels: $(( (tracked + bundle) >> 20 )) MiB (limit 64)"
