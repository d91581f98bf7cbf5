#!/usr/bin/env bash
# Where a GPU training step's memory traffic goes, measured on the CPU: the operand bytes per
# op type (ADAPTC_PROFILE) of one LoRA training step (r=16 on all linear layers, autocast
# bf16, fused attention: `adaptc train`'s defaults) of a Llama-shaped model with issue 5's
# dims (d 2048, ffn 5632, 32 heads, 4 KV heads, vocab 32000), exported with 1 and with 2
# layers and run at batch 1 and 2 (rows of 1024 tokens): the differences split the bytes into
# one layer's and the rest, each into what grows with the tokens (activations) and what a step
# moves once (the products' weights, the optimizer). Added up for 22 layers and 16 × the tokens
# (batch 8 × 2048), they give the benchmark step's traffic, and divided by a card's bandwidth,
# a lower bound on its memory time; the runs' peak activation memory, scaled with layers and
# tokens, estimates the step's peak.
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
lora="insert-lora{rank=16 alpha=32 targets=all-linear}"
# train MODEL_LAYERS BATCH NAME [adaptc train flags…]: one step, its profile in $work/NAME.txt.
step() {
    local layers=$1 batch=$2 name=$3
    shift 3
    ADAPTC_PROFILE=1 "$BIN" train "$work/l$layers/llama/model.onnx" --data "$work/rows.jsonl" --task causal-lm \
        -p "$lora" --steps 1 --batch-size "$batch" --lr 1e-4 --out "$work/run-$name" "$@" > "$work/$name.txt" 2>&1
}
for layers in 1 2; do
    LAYERS=$layers "$PY" scripts/gpu/export_models.py "$work/l$layers" llama > "$work/export-$layers.log" 2>&1
    # Batch 1 and 2 (1024 tokens each): what grows with the tokens, and what does not (the
    # products' weights, the optimizer), separately.
    for batch in 1 2; do
        step $layers $batch "profile-$layers-$batch" --autocast bf16
        # The same step node by node (no plan-time fusions): what the fusions save.
        ADAPTC_NO_FUSE=1 step $layers $batch "plain-$layers-$batch" --autocast bf16
        # The same step with activations stored in bf16 too (a bf16 model's storage).
        step $layers $batch "act-$layers-$batch" --autocast bf16-activations
    done
    # The same step recomputing each block's activations in the backward: its peak memory.
    step $layers 1 "ckpt-$layers" --autocast bf16 --checkpoint-activations
done
"$PY" - "$work" "$OUT" "$(git rev-parse --short HEAD)" <<'PY'
import re, sys, datetime, platform
work, out_path, commit = sys.argv[1:4]
def table(name):
    rows = {}
    for line in open(f"{work}/{name}.txt"):
        m = re.match(r"^(\S+)\s+([\d.]+)\s+[\d.]+%\s+(\d+)\s+([\d.]+)\s+[\d.]+%$", line.strip())
        if m:
            rows[m.group(1)] = (int(m.group(3)), float(m.group(4)))
    return rows
def total(name):
    return sum(b for _, b in table(name).values())
def peak(name):
    for line in open(f"{work}/{name}.txt"):
        m = re.search(r"peak activation memory ([\d.]+) MiB", line)
        if m:
            return float(m.group(1)) / 1024
    return float("nan")
LAYERS, UNITS = 22, 16  # the benchmark: 22 layers, batch 8 × 2048 tokens = 16 × 1024
def split(config):
    """Bytes of `config` split four ways from its 1/2-layer × batch 1/2 runs (GiB): per layer
    per 1024 tokens, per layer per step (weights: the same whatever the tokens), outside the
    layers per 1024 tokens and per step; and the benchmark step's total."""
    t = {(l, b): total(f"{config}-{l}-{b}") for l in (1, 2) for b in (1, 2)}
    layer_tok = (t[2, 2] - t[1, 2]) - (t[2, 1] - t[1, 1])
    layer_fixed = (t[2, 1] - t[1, 1]) - layer_tok
    out_tok = (t[1, 2] - t[1, 1]) - layer_tok
    out_fixed = t[1, 1] - layer_tok - layer_fixed - out_tok
    step = LAYERS * (layer_fixed + UNITS * layer_tok) + out_fixed + UNITS * out_tok
    return layer_tok, layer_fixed, out_tok, out_fixed, step
def ms(gib, tbs):
    return gib * 2**30 / (tbs * 1e12) * 1e3
lt, lf, ot, of, step = split("profile")
plt, plf, pot, pof, plain_step = split("plain")
alt, alf, aot, aof, act_step = split("act")
one, two = table("profile-1-1"), table("profile-2-1")
per_layer = {op: (two[op][0] - one.get(op, (0, 0))[0], two[op][1] - one.get(op, (0, 0))[1]) for op in two}
out = open(out_path, "w")
w = lambda s="": out.write(s + "\n")
w("# Memory traffic of a Llama-shaped LoRA training step, by op type (operand bytes)")
w()
w(f"- machine: {platform.node()} (CPU runs; bytes do not depend on the backend that moves them), commit {commit}, {datetime.date.today()}")
w("- command: `bash bench/traffic.sh` (ADAPTC_PROFILE operand bytes of one `adaptc train` step of 1024-token rows,")
w("  LoRA r=16 all-linear, `--autocast bf16`, fused attention; Llama d=2048, ffn 5632, 32/4 heads, vocab 32000,")
w("  exported with 1 and 2 layers and run at batch 1 and 2: the differences split the bytes into what grows with")
w("  the tokens and what a step moves once whatever the tokens (the products' weights, the optimizer), per layer and")
w("  outside the layers; the benchmark step (22 layers, batch 8 × 2048 = 16 × 1024 tokens) adds them up)")
w("- operand bytes: every input and output of an instruction once (views and `Shape`'s input excluded; a Gather")
w("  counts the rows it reads); a fused instruction (an elementwise chain) keeps its intermediates in registers, so")
w("  this is what the plan asks of memory")
w()
w(f"Per layer: {lt:.3f} GiB per 1024 tokens and {lf:.3f} GiB per step (its weights); outside the layers (embedding,")
w(f"final norm, LM head, loss): {ot:.3f} GiB per 1024 tokens and {of:.3f} GiB per step.")
w(f"At the benchmark shape: **{step:.0f} GiB per step**, so at least {ms(step, 3.35):.0f} ms of memory time on an H100 SXM")
w(f"(3.35 TB/s) and {ms(step, 4.8):.0f} ms on an H200 (4.8 TB/s), beside the GEMMs' arithmetic. PEFT's step on the H200")
w("took 353 ms in all (bench/results/gpu-anchor.md).")
w()
w(f"The same step node by node (`ADAPTC_NO_FUSE=1`, same run): {plt:.3f} GiB per layer per 1024 tokens, {plain_step:.0f} GiB")
w(f"per step at the benchmark shape ({ms(plain_step, 4.8):.0f} ms on an H200): the plan's fusions (elementwise chains,")
w(f"mostly) move **{plain_step / step:.2f}×** fewer bytes.")
w()
w("With activations stored in bf16 too (`--autocast bf16-activations`, `autocast{activations=bf16}`: a bf16")
w(f"model's storage, as PEFT's bf16 model has), same run: {alt:.3f} GiB per layer per 1024 tokens, **{act_step:.0f} GiB per")
w(f"step** at the benchmark shape ({ms(act_step, 3.35):.0f} ms on an H100, {ms(act_step, 4.8):.0f} ms on an H200), {step / act_step:.2f}× fewer bytes than f32")
ap1, ap2 = peak("act-1-1"), peak("act-2-1")
w(f"activations; peak {ap1:.2f} GiB with 1 layer and {ap2:.2f} GiB with 2, about **{((ap2 - ap1) * LAYERS + 2 * ap1 - ap2) * UNITS:.0f} GiB** at the benchmark shape.")
w()
peak1, peak2 = peak("profile-1-1"), peak("profile-2-1")
peak_layer, peak_fixed = peak2 - peak1, 2 * peak1 - peak2
w(f"Peak activation memory (the plan's live buffers, weights not counted): {peak1:.2f} GiB with 1 layer, {peak2:.2f} GiB")
w(f"with 2; {peak_layer:.3f} GiB per layer per 1024 tokens. Scaled the same way, the benchmark step would hold about")
w(f"**{(peak_layer * LAYERS + peak_fixed) * UNITS:.0f} GiB** of activations at its peak (f32 activations; PEFT's bf16 step peaked at 40.2 GiB in all),")
w("plus the bf16 base weights (2.0 GiB) and the adapters' f32 weights and moments.")
c1, c2 = peak("ckpt-1"), peak("ckpt-2")
cl, cf = c2 - c1, 2 * c1 - c2
w(f"With `--checkpoint-activations` (each block recomputed in the backward): {c1:.2f} GiB with 1 layer, {c2:.2f} GiB with 2,")
w(f"so about **{(cl * LAYERS + cf) * UNITS:.0f} GiB** at the benchmark shape (a layer's growth is then its saved input and the")
w("recomputed block's working set, which does not add up across layers: this linear scaling overestimates it).")
w()
layer_total = sum(b for _, b in per_layer.values())
w("One layer of the batch-1 step (1024 tokens, its weights included), by op type:")
w()
w("| op (per layer) | calls | GiB | share |")
w("|---|---|---|---|")
for op, (n, b) in sorted(per_layer.items(), key=lambda kv: -kv[1][1]):
    if b > 0.0005:
        w(f"| {op} | {n} | {b:.3f} | {100 * b / layer_total:.1f}% |")
w()
w("Raw profiles (batch 1; 1 layer, then 2 layers):")
w()
for name in ("profile-1-1", "profile-2-1"):
    w("```")
    w("".join(l for l in open(f"{work}/{name}.txt") if not l.startswith("trained")).rstrip())
    w("```")
PY
cat "$OUT"
