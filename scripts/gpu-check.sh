#!/usr/bin/env bash
# The CUDA check, on a GPU machine (CUDA 13 driver, PyTorch, PEFT, transformers; no Rust):
# runs what scripts/gpu-bundle.sh prepared in .gpu/ and prints a short table last.
#   1. the CUDA suite (tests/cuda.rs): NVRTC, node-test parity with the CPU backend, training
#      graphs (loss and every gradient) of BERT and Llama with LoRA, device-op coverage;
#   2. a MiniLM-shaped LoRA classification run (random init: no model hub there) on the CPU and
#      on CUDA: the loss curves must agree;
#   3. a LoRA training-step benchmark of a Llama-shaped model, adaptc on CUDA against PyTorch +
#      PEFT (../shared/anchors/peft_gpu_baseline.py) on the same card, same dims (env D, LAYERS,
#      FFN, HEADS, KV, VOCAB, B, S; small defaults so the whole check stays under 8 minutes),
#      adaptc with --autocast bf16-activations (bf16 products and activations stored in bf16, as
#      PEFT's bf16 model; AUTOCAST=bf16: f32 activations; AUTOCAST=none: fp32) and fused
#      attention (its default); GRAPHS_AB=1 (default) adds a run with --cuda-graphs (each step
#      replayed as one CUDA graph), CHAIN_AB=1 one with the chain interpreter instead of each
#      chain program's own kernel.
# Logs go to $OUT (when set) or .gpu/out.
set -uo pipefail
cd "$(dirname "$0")/.."
G=$PWD/.gpu
OUT=${OUT:-$G/out}
mkdir -p "$OUT" "$G/work"
for f in adaptc cuda-suite; do
    if [ ! -x "$G/bin/$f" ] && [ -f "$G/bin/$f.xz" ]; then
        python3 -c 'import lzma, sys; open(sys.argv[1][:-3], "wb").write(lzma.open(sys.argv[1]).read())' "$G/bin/$f.xz"
        chmod +x "$G/bin/$f"
    fi
done
[ -x "$G/bin/adaptc" ] || { echo "run scripts/gpu-bundle.sh first (here: no .gpu/bin/adaptc)"; exit 2; }
export ADAPTC_REPO=$PWD ADAPTC_NODE_DIR=$G/node PYTHONUNBUFFERED=1
# cuBLAS and NVRTC: the toolkit's, else the CUDA wheels beside PyTorch.
for d in /usr/local/cuda/lib64 $(python3 - <<'PY' 2>/dev/null
import os, nvidia
for p in nvidia.__path__:
    for sub in ("cu13/lib", "cublas/lib", "cuda_nvrtc/lib"):
        if os.path.isdir(os.path.join(p, sub)):
            print(os.path.join(p, sub))
PY
); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
nvidia-smi -L || true
start=$(date +%s)

echo "== 1. CUDA suite"
timeout 240 "$G/bin/cuda-suite" 2>&1 | tee "$OUT/suite.log"
suite=$(grep '^cuda suite:' "$OUT/suite.log" | tail -1)

echo "== 2. MiniLM-shaped LoRA training, CPU vs CUDA"
curve="not run"
if timeout 120 python3 scripts/gpu/export_models.py "$G/work" minilm > "$OUT/export-minilm.log" 2>&1; then
    for dev in cpu cuda; do
        rm -rf "$G/work/run-$dev"
        timeout 120 "$G/bin/adaptc" train "$G/work/minilm/model.onnx" --data "$G/data/sentiment/train.jsonl" \
            --task classification --labels 2 -p "insert-lora{rank=8 alpha=16 targets=query,value}" \
            --steps 40 --batch-size 16 --lr 2e-3 --seed 0 --device "$dev" --out "$G/work/run-$dev" \
            > "$OUT/train-$dev.log" 2>&1 || echo "train on $dev failed (see train-$dev.log)"
    done
    python3 scripts/gpu/compare_runs.py "$G/work/run-cpu" "$G/work/run-cuda" | tee "$OUT/curves.log"
    curve=$(tail -1 "$OUT/curves.log")
else
    curve="export failed (see export-minilm.log)"
fi

echo "== 3. LoRA training step, Llama-shaped, adaptc (CUDA) vs PyTorch + PEFT"
export D=${D:-1024} LAYERS=${LAYERS:-4} FFN=${FFN:-2816} HEADS=${HEADS:-16} KV=${KV:-4} VOCAB=${VOCAB:-32000}
export B=${B:-4} S=${S:-512} STEPS=${STEPS:-10}
# adaptc's precision: bf16 products and bf16 activations like the PEFT side's bf16 model
# (AUTOCAST=bf16 keeps activations f32; AUTOCAST=none for fp32).
export AUTOCAST=${AUTOCAST:-bf16-activations}
precision=()
[ "$AUTOCAST" != none ] && precision=(--autocast "$AUTOCAST")
# CHECKPOINT=1: recompute each block's activations in the backward (bench/results/traffic.md
# estimates the full benchmark shape's activations at ~64 GiB without it, ~21 GiB with it).
[ "${CHECKPOINT:-0}" = 1 ] && precision+=(--checkpoint-activations)
bench="not run"
if timeout 150 python3 scripts/gpu/export_models.py "$G/work" llama > "$OUT/export-llama.log" 2>&1; then
    python3 - "$G/work/bench.jsonl" <<'PY'
import json, os, random, sys
random.seed(0)
n = int(os.environ["B"]) * (int(os.environ["STEPS"]) + 2)
with open(sys.argv[1], "w") as f:
    for _ in range(n):
        f.write(json.dumps({"input_ids": [random.randrange(int(os.environ["VOCAB"])) for _ in range(int(os.environ["S"]))]}) + "\n")
PY
    rm -rf "$G/work/run-bench"
    timeout 150 "$G/bin/adaptc" train "$G/work/llama/model.onnx" --data "$G/work/bench.jsonl" --task causal-lm \
        -p "insert-lora{rank=16 alpha=32 targets=all-linear}" --steps "$STEPS" --batch-size "$B" --lr 1e-4 \
        --device cuda "${precision[@]}" --out "$G/work/run-bench" > "$OUT/bench-adaptc.log" 2>&1 || echo "adaptc bench failed (see bench-adaptc.log)"
    # A second adaptc run with a variant of the settings, its median step time in seconds.
    variant() {
        local name=$1; shift
        rm -rf "$G/work/run-bench-$name"
        env "$@" timeout 150 "$G/bin/adaptc" train "$G/work/llama/model.onnx" --data "$G/work/bench.jsonl" \
            --task causal-lm -p "insert-lora{rank=16 alpha=32 targets=all-linear}" --steps "$STEPS" --batch-size "$B" \
            --lr 1e-4 --device cuda "${precision[@]}" ${VARIANT_FLAGS:-} --out "$G/work/run-bench-$name" \
            > "$OUT/bench-adaptc-$name.log" 2>&1
        python3 - "$G/work/run-bench-$name/metrics.jsonl" <<'PY'
import json, statistics, sys
try:
    t = [r["step_time_s"] for r in map(json.loads, open(sys.argv[1])) if "step_time_s" in r and "eval_loss" not in r]
    print(f"{statistics.median(t[3:] if len(t) > 5 else t):.4f}" if t else "")
except OSError:
    pass
PY
    }
    # CHAIN_AB=1: the same run with the chain interpreter instead of each program's own
    # kernel (ADAPTC_CUDA_CHAIN=interpret), to measure what specialising them gives.
    interp=""
    [ "${CHAIN_AB:-0}" = 1 ] && interp=$(variant interp ADAPTC_CUDA_CHAIN=interpret)
    # GRAPHS_AB=1 (default): the same run with --cuda-graphs (steps 3.. replay one CUDA graph;
    # the median skips the two warm-up steps and the capture).
    graphs=""
    [ "${GRAPHS_AB:-1}" = 1 ] && graphs=$(VARIANT_FLAGS=--cuda-graphs variant graphs)
    peft=""
    if [ -f "$G/anchors/peft_gpu_baseline.py" ]; then
        peft=$(timeout 150 python3 "$G/anchors/peft_gpu_baseline.py" 2>&1 | tee "$OUT/bench-peft.log" | grep '^peft-gpu' | tail -1)
    fi
    adaptc_peak=$(grep -ho 'peak activation memory [0-9.]* MiB' "$OUT/bench-adaptc.log" 2>/dev/null | tail -1 | grep -o '[0-9.]*' | head -1)
    bench=$(python3 - "$G/work/run-bench/metrics.jsonl" "$peft" "${adaptc_peak:-}" <<'PY'
import json, os, re, statistics, sys
e = lambda k: int(os.environ[k])
L, D, F, H, KV = e("LAYERS"), e("D"), e("FFN"), e("HEADS"), e("KV")
params = L * (2 * D * D + 2 * D * (D * KV // H) + 3 * D * F)
tokens = e("B") * e("S")
times = []
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if "step_time_s" in r and "eval_loss" not in r:
            times.append(r["step_time_s"])
except OSError:
    pass
peak = 989e12
row = lambda name, s, extra="": f"{name}: step {s:.4f} s, {tokens / s:.0f} tokens/s, MFU {4 * params * tokens / s / peak:.3f}{extra}"
out = []
a = statistics.median(times[3:] if len(times) > 5 else times) if times else None
label = "adaptc " + ("fp32" if os.environ["AUTOCAST"] == "none" else os.environ["AUTOCAST"])
if os.environ.get("CHECKPOINT") == "1":
    label += " checkpointed"
mem = f", peak activations {float(sys.argv[3]) / 1024:.1f} GiB" if len(sys.argv) > 3 and sys.argv[3] else ""
out.append(row(label, a, mem) if a else "adaptc: no step times (see bench-adaptc.log)")
m = re.search(r"step_s=([0-9.]+).*peak_mem_gib=([0-9.]+)", sys.argv[2] or "")
if m:
    p = float(m.group(1))
    out.append(row("peft bf16", p, f", peak {m.group(2)} GiB"))
    if a:
        out.append(f"PEFT/adaptc step-time ratio {p / a:.2f} (>= 1.0 means adaptc is faster)")
print(" | ".join(out))
PY
)
else
    bench="export failed (see export-llama.log)"
fi

echo
echo "================ CUDA check ($(( $(date +%s) - start )) s) ================"
echo "suite      : ${suite:-no summary (see suite.log)}"
echo "loss curve : $curve"
echo "benchmark  : D=$D LAYERS=$LAYERS FFN=$FFN B=$B S=$S: $bench"
echo "last step  : $(grep -h '^last step:' "$OUT/bench-adaptc.log" 2>/dev/null | tail -1 | cut -c 12-)"
[ "${CHAIN_AB:-0}" = 1 ] && echo "chains interpreted (ADAPTC_CUDA_CHAIN=interpret): step ${interp:-failed} s"
if [ "${GRAPHS_AB:-1}" = 1 ]; then
    echo "with --cuda-graphs: step ${graphs:-failed} s; $(grep -h '^last step:' "$OUT/bench-adaptc-graphs.log" 2>/dev/null | tail -1 | grep -o 'CUDA graph: .*' || echo 'no report (see bench-adaptc-graphs.log)')"
fi
