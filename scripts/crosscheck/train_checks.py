"""Cross-checks of `adaptc train` (check j of scripts/crosscheck/crosscheck.py).

  j  MiniLM: `adaptc train --task classification --labels 2` with LoRA r=8 alpha=16 on
     query,value, on the sentiment set of scripts/make_train_data.py: eval accuracy ≥ 90%, and
     onnxruntime running RUN/merged.onnx on every eval row predicts exactly the classes adaptc's
     own evaluation wrote (RUN/eval_predictions.jsonl); RUN/adapted.onnx (unmerged) agrees with
     merged.onnx in onnxruntime.
     Llama (external data): `--task causal-lm` with LoRA on every linear layer plus a trainable
     `lm_head` (PEFT's modules_to_save) lowers the eval loss on the corpus; merged.onnx agrees
     with adapted.onnx in onnxruntime within 1e-4. (LoRA alone barely moves this random-init
     fixture's near-uniform logits in 100 steps: its lm_head has std 0.02, so the check trains it
     too; the gradients of the LoRA-only graph were checked against finite differences.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common import DATA, Results, adaptc, ort_run, out_dir, worst_rel

TRAIN = DATA / "train"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def padded(batch: list[dict], names: list[str]) -> dict:
    longest = max(len(r["input_ids"]) for r in batch)
    feeds = {}
    for n in names:
        a = np.zeros((len(batch), longest), dtype=np.int64)
        for i, r in enumerate(batch):
            v = r.get(n, [1] * len(r["input_ids"]) if n == "attention_mask" else [0] * len(r["input_ids"]))
            a[i, : len(v)] = v
        feeds[n] = a
    return feeds


def metrics(run: Path) -> list[dict]:
    return rows(run / "metrics.jsonl")


def check_j_minilm(spec, res: Results):
    run = out_dir(spec, "j") / "run"
    data = TRAIN / "sentiment"
    _, dt = adaptc("train", spec.onnx, "--data", data / "train.jsonl", "--eval", data / "eval.jsonl",
                   "--task", "classification", "--labels", "2",
                   "-p", "insert-lora{rank=8 alpha=16 targets=query,value}",
                   "--epochs", "2", "--batch-size", "16", "--lr", "2e-3", "--seed", "0", "--out", run)
    evals = [m for m in metrics(run) if "eval_accuracy" in m]
    acc = evals[-1]["eval_accuracy"]
    res.add(spec.name, "j. adaptc train (LoRA q,v + head): eval accuracy", f"{acc:.1%}", "≥ 90%", acc >= 0.9,
            f"(2 epochs, {dt:.0f} s; first eval {evals[0]['eval_accuracy']:.1%})")
    eval_rows = rows(data / "eval.jsonl")
    want = [r["prediction"] for r in rows(run / "eval_predictions.jsonl")]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    got, worst = [], 0.0
    for i in range(0, len(eval_rows), 16):
        feeds = padded(eval_rows[i:i + 16], names)
        merged = ort_run(run / "merged.onnx", feeds)[0]
        unmerged = ort_run(run / "adapted.onnx", feeds)[0]
        worst = max(worst, worst_rel([unmerged], [merged]))
        got.extend(int(x) for x in merged.argmax(-1))
    same = sum(int(a == b) for a, b in zip(got, want))
    res.add(spec.name, "j. ORT(merged.onnx) predictions == adaptc eval predictions", f"{same}/{len(want)}",
            "all", same == len(want) == len(eval_rows))
    res.add(spec.name, "j. ORT: merged.onnx vs adapted.onnx logits", f"{worst:.2e}", "1e-4", worst <= 1e-4)


def check_j_llama(spec, res: Results):
    run = out_dir(spec, "j") / "run"
    data = TRAIN / "corpus"
    _, dt = adaptc("train", spec.onnx, "--data", data / "train.jsonl", "--eval", data / "eval.jsonl",
                   "--task", "causal-lm",
                   "-p", "insert-lora{rank=8 alpha=16 targets=all-linear},mark-trainable{targets=re:lm_head\\.weight}",
                   "--steps", "100", "--eval-every", "50", "--batch-size", "8", "--lr", "1e-2", "--seed", "0",
                   "--out", run)
    evals = [m for m in metrics(run) if "eval_loss" in m]
    steps = [m for m in metrics(run) if "step_time_s" in m]
    first, last = steps[0]["loss"], evals[-1]["eval_loss"]
    res.add(spec.name, "j. adaptc train --task causal-lm: eval loss after 100 steps", f"{last:.3f}",
            f"< first step's {first:.3f}", last < first, f"({dt:.0f} s; train loss at step 100 {steps[-1]['loss']:.3f})")
    feeds = padded(rows(data / "eval.jsonl")[:8], ["input_ids", "attention_mask"])
    merged = ort_run(run / "merged.onnx", feeds)
    unmerged = ort_run(run / "adapted.onnx", feeds)
    d = worst_rel(unmerged[:1], merged[:1])
    res.add(spec.name, "j. ORT: merged.onnx vs adapted.onnx logits", f"{d:.2e}", "1e-4", d <= 1e-4)


def run(spec, res: Results, only: str = "j"):
    if "j" not in only:
        return
    check = check_j_minilm if spec.name == "minilm" else check_j_llama
    try:
        check(spec, res)
    except Exception as e:  # noqa: BLE001 - reported, then the next check
        res.error(spec.name, "j.", e)
