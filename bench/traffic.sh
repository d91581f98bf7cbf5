#!/usr/bin/env bash
# Where a GPU training step's memory traffic goes, measured on the CPU: the operand bytes per
# op type (ADAPTC_PROFILE) of one LoRA training step (r=16 on all linear layers, autocast
# bf16, fused attention: `adaptc train`'s defaults) of a Llama-shaped model with issue 5's
# dims (d 2048, ffn 5632, 32 heads, 4 KV heads, vocab 32000), exported with 1 and with 2
# layers: the difference is one layer's traffic. Bytes scale with tokens (and layers), so the
# per-layer figures times 22 layers × 16 (batch 8 × 2048 tokens vs the 1 × 1024 run here) give
# the benchmark step's traffic, and divided by a card's bandwidth, a lower bound on its memory
# time; the runs' peak activation memory, scaled the same way, estimates the step's peak.
# Writes bench/results/traffic.md. An estimate of bytes, not a timing.
#
#   bash bench/traffic.sh        # needs target/release/adaptc and a python with torch + transformers
#
# Environment: PY (default target/venv-crosscheck/bin/python, made by scripts/make-test-data.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-target/venv-crosscheck/bin/python}
BIN=${BIN:-target/release/adaptc}
OUT=bench/results/traffic.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export D=2048 FFN=5632 HEADS=32 KV=4 VOCAB=32000 S=1024 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" - "$work/rows.jsonl" <<'PY'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as f:
    for _ in range(2):
        f.write(json.dumps({"input_ids": [random.randrange(32000) for _ in range(1024)]}) + "\n")
PY
for layers in 1 2; do
    LAYERS=$layers "$PY" scripts/gpu/export_models.py "$work/l$layers" llama > "$work/export-$layers.log" 2>&1
    ADAPTC_PROFILE=1 "$BIN" train "$work/l$layers/llama/model.onnx" --data "$work/rows.jsonl" --task causal-lm \
        -p "insert-lora{rank=16 alpha=32 targets=all-linear}" --steps 1 --batch-size 1 --lr 1e-4 \
        --autocast bf16 --out "$work/run$layers" > "$work/profile-$layers.txt" 2>&1
    # The same step node by node (no plan-time fusions): what the elementwise chains save.
    ADAPTC_NO_FUSE=1 ADAPTC_PROFILE=1 "$BIN" train "$work/l$layers/llama/model.onnx" --data "$work/rows.jsonl" --task causal-lm \
        -p "insert-lora{rank=16 alpha=32 targets=all-linear}" --steps 1 --batch-size 1 --lr 1e-4 \
        --autocast bf16 --out "$work/plain$layers" > "$work/plain-$layers.txt" 2>&1
    # The same step with activations stored in bf16 too (a bf16 model's storage).
    ADAPTC_PROFILE=1 "$BIN" train "$work/l$layers/llama/model.onnx" --data "$work/rows.jsonl" --task causal-lm \
        -p "insert-lora{rank=16 alpha=32 targets=all-linear}" --steps 1 --batch-size 1 --lr 1e-4 \
        --autocast bf16-activations --out "$work/act$layers" > "$work/act-$layers.txt" 2>&1
    # The same step recomputing each block's activations in the backward: its peak memory.
    "$BIN" train "$work/l$layers/llama/model.onnx" --data "$work/rows.jsonl" --task causal-lm \
        -p "insert-lora{rank=16 alpha=32 targets=all-linear}" --steps 1 --batch-size 1 --lr 1e-4 \
        --autocast bf16 --checkpoint-activations --out "$work/ckpt$layers" > "$work/ckpt-$layers.txt" 2>&1
done
"$PY" - "$work/profile-1.txt" "$work/profile-2.txt" "$OUT" "$(git rev-parse --short HEAD)" "$work/ckpt-1.txt" "$work/ckpt-2.txt" \
    "$work/plain-1.txt" "$work/plain-2.txt" "$work/act-1.txt" "$work/act-2.txt" <<'PY'
import re, sys, datetime, platform
def table(path):
    rows = {}
    for line in open(path):
        m = re.match(r"^(\S+)\s+([\d.]+)\s+[\d.]+%\s+(\d+)\s+([\d.]+)\s+[\d.]+%$", line.strip())
        if m:
            rows[m.group(1)] = (int(m.group(3)), float(m.group(4)))
    return rows
one, two = table(sys.argv[1]), table(sys.argv[2])
def peak(path):
    for line in open(path):
        m = re.search(r"peak activation memory ([\d.]+) MiB", line)
        if m:
            return float(m.group(1)) / 1024
    return float("nan")
peak1, peak2 = peak(sys.argv[1]), peak(sys.argv[2])
scale = 22 * 16
per_layer = {op: (two[op][0] - one.get(op, (0, 0))[0], two[op][1] - one.get(op, (0, 0))[1]) for op in two}
fixed = {op: (one[op][0] - per_layer.get(op, (0, 0))[0], one[op][1] - per_layer.get(op, (0, 0))[1]) for op in one}
layer_total = sum(b for _, b in per_layer.values())
fixed_total = sum(b for _, b in fixed.values())
step = layer_total * scale + fixed_total * 16
# The node-by-node plan (ADAPTC_NO_FUSE=1), scaled the same way.
p1, p2 = table(sys.argv[7]), table(sys.argv[8])
plain_layer = sum(b for _, b in p2.values()) - sum(b for _, b in p1.values())
plain_fixed = sum(b for _, b in p1.values()) - plain_layer
plain_step = plain_layer * scale + plain_fixed * 16
# Activations stored in bf16 (`--autocast bf16-activations`), scaled the same way.
a1, a2 = table(sys.argv[9]), table(sys.argv[10])
act_layer = sum(b for _, b in a2.values()) - sum(b for _, b in a1.values())
act_fixed = sum(b for _, b in a1.values()) - act_layer
act_step = act_layer * scale + act_fixed * 16
ap1, ap2 = peak(sys.argv[9]), peak(sys.argv[10])
out = open(sys.argv[3], "w")
w = lambda s="": out.write(s + "\n")
w("# Memory traffic of a Llama-shaped LoRA training step, by op type (operand bytes)")
w()
w(f"- machine: {platform.node()} (CPU run; bytes do not depend on the backend that moves them), commit {sys.argv[4]}, {datetime.date.today()}")
w("- command: `bash bench/traffic.sh` (ADAPTC_PROFILE operand bytes of one `adaptc train` step, batch 1 × 1024 tokens,")
w("  LoRA r=16 all-linear, `--autocast bf16`, fused attention; Llama d=2048, ffn 5632, 32/4 heads, vocab 32000,")
w("  exported with 1 and 2 layers: per layer = 2-layer run − 1-layer run; outside the layers = 1-layer run − one layer)")
w("- operand bytes: every input and output of an instruction once (views and `Shape`'s input excluded); a fused")
w("  instruction (an elementwise chain) keeps its intermediates in registers, so this is what the plan asks of memory")
w()
w(f"Per layer per 1024 tokens: {layer_total:.3f} GiB; outside the layers (embedding, final norm, LM head, loss): {fixed_total:.3f} GiB.")
w(f"At the benchmark shape (22 layers, batch 8 × 2048 = 16× the tokens): **{step:.0f} GiB per step**, so at least")
w(f"{step * 2**30 / 3.35e12 * 1e3:.0f} ms of memory time on an H100 SXM (3.35 TB/s) and {step * 2**30 / 4.8e12 * 1e3:.0f} ms on an H200 (4.8 TB/s), beside the GEMMs'")
w("arithmetic. PEFT's step on the H200 took 353 ms in all (bench/results/gpu-anchor.md).")
w()
w(f"The same step node by node (`ADAPTC_NO_FUSE=1`, same run): {plain_layer:.3f} GiB per layer per 1024 tokens, {plain_step:.0f} GiB")
w(f"per step at the benchmark shape ({plain_step * 2**30 / 4.8e12 * 1e3:.0f} ms on an H200): the plan's fusions (elementwise chains, mostly)")
w(f"move **{plain_step / step:.2f}×** fewer bytes.")
w()
w(f"With activations stored in bf16 too (`--autocast bf16-activations`, `autocast{{activations=bf16}}`: a bf16")
w(f"model's storage, as PEFT's bf16 model has), same run: {act_layer:.3f} GiB per layer per 1024 tokens, **{act_step:.0f} GiB per step**")
w(f"at the benchmark shape ({act_step * 2**30 / 3.35e12 * 1e3:.0f} ms on an H100, {act_step * 2**30 / 4.8e12 * 1e3:.0f} ms on an H200), {step / act_step:.2f}× fewer bytes than f32")
w(f"activations; peak {ap1:.2f} GiB with 1 layer and {ap2:.2f} GiB with 2, about **{((ap2 - ap1) * 22 + 2 * ap1 - ap2) * 16:.0f} GiB** at the benchmark shape.")
w()
peak_layer, peak_fixed = peak2 - peak1, 2 * peak1 - peak2
w(f"Peak activation memory (the plan's live buffers, weights not counted): {peak1:.2f} GiB with 1 layer, {peak2:.2f} GiB")
w(f"with 2; {peak_layer:.3f} GiB per layer per 1024 tokens. Scaled the same way, the benchmark step would hold about")
w(f"**{(peak_layer * 22 + peak_fixed) * 16:.0f} GiB** of activations at its peak (f32 activations; PEFT's bf16 step peaked at 40.2 GiB in all),")
w("plus the bf16 base weights (2.0 GiB) and the adapters' f32 weights and moments.")
c1, c2 = peak(sys.argv[5]), peak(sys.argv[6])
cl, cf = c2 - c1, 2 * c1 - c2
w(f"With `--checkpoint-activations` (each block recomputed in the backward): {c1:.2f} GiB with 1 layer, {c2:.2f} GiB with 2,")
w(f"so about **{(cl * 22 + cf) * 16:.0f} GiB** at the benchmark shape (a layer's growth is then its saved input and the")
w("recomputed block's working set, which does not add up across layers: this linear scaling overestimates it).")
w()
w("| op (per layer) | calls | GiB per 1024 tokens | share |")
w("|---|---|---|---|")
for op, (n, b) in sorted(per_layer.items(), key=lambda kv: -kv[1][1]):
    if b > 0.0005:
        w(f"| {op} | {n} | {b:.3f} | {100 * b / layer_total:.1f}% |")
w()
w("Raw profiles (1 layer, then 2 layers):")
w()
for p in sys.argv[1:3]:
    w("```")
    w("".join(l for l in open(p) if not l.startswith("trained")).rstrip())
    w("```")
PY
cat "$OUT"
