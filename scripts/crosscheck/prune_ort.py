#!/usr/bin/env python3
"""Cross-check adaptc's `prune-channels` in onnxruntime.

    cargo build --bin adaptc
    <venv with onnx, onnxruntime, numpy>/bin/python scripts/crosscheck/prune_ort.py \
        [--adaptc target/debug/adaptc]

For bert6 (`ffn=0.25`, `ffn=0.25 heads=1`) and llama4 (`ffn=0.25`; its attention is GQA, which
the pass refuses): prune with `adaptc rewrite -p prune-channels{… report=…}`, then run in
onnxruntime (CPU, graph optimizations disabled, then all enabled) the pruned model and the
ORIGINAL model with the removed channels' consumer rows (and removed heads' output-projection
rows) zeroed, taken from the report. The outputs must be equal (pruning removes exactly what
the zeroed rows no longer read); the parameter counts are printed. Exits non-zero on a mismatch.
"""
import argparse, json, os, subprocess, sys, tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def zeroed_original(path, report, ffn_consumers, o_projs):
    """The original model with the pruned channels' consumer rows zeroed."""
    m = onnx.load(path)
    inits = {i.name: i for i in m.graph.initializer}
    consumers, outs = ffn_consumers(m.graph, inits), o_projs(m.graph, inits)
    for b in report["blocks"]:
        i = b["block"]
        for f in b["ffn"]:
            w = numpy_helper.to_array(inits[consumers[i]]).copy()
            w[f["removed"], :] = 0  # [in, out] (the dynamo exporter's folded Wᵀ)
            inits[consumers[i]].CopyFrom(numpy_helper.from_array(w, consumers[i]))
        for h in b["attention"]:
            w = numpy_helper.to_array(inits[outs[i]]).copy()
            for r in h["removed"]:
                w[r * h["head_size"]:(r + 1) * h["head_size"], :] = 0
            inits[outs[i]].CopyFrom(numpy_helper.from_array(w, outs[i]))
    return m


def matmuls_after(graph, inits, op_type):
    """Weights of constant-weight MatMuls whose activation comes from an `op_type` node."""
    producer = {o: n for n in graph.node for o in n.output}
    return [n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits
            and n.input[0] in producer and producer[n.input[0]].op_type == op_type]


MODELS = {
    "bert6": dict(
        path="tests/fixtures/models/bert6.onnx",
        pipelines=["ffn=0.25", "ffn=0.25 heads=1"],
        ffn=lambda g, i: matmuls_after(g, i, "Gelu"),
        o=lambda g, i: matmuls_after(g, i, "Reshape"),
        feeds=lambda rng: {"input_ids": rng.integers(0, 1000, (2, 16)).astype(np.int64),
                           "attention_mask": np.repeat([[1] * 12 + [0] * 4], 2, axis=0).astype(np.int64),
                           "token_type_ids": np.zeros((2, 16), np.int64)},
    ),
    "llama4": dict(
        path="tests/fixtures/models/llama4/model.onnx",
        pipelines=["ffn=0.25"],
        # down_proj [128, 64] (q_proj, k/v_proj and lm_head read RMSNorm's Mul too).
        ffn=lambda g, i: [w for w in matmuls_after(g, i, "Mul") if list(i[w].dims) == [128, 64]],
        o=lambda g, i: matmuls_after(g, i, "Reshape"),
        feeds=lambda rng: {"input_ids": rng.integers(0, 100, (2, 12)).astype(np.int64),
                           "attention_mask": np.ones((2, 12), np.int64)},
    ),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--adaptc", default=os.path.join(ROOT, "target/debug/adaptc"))
    args = ap.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in MODELS.items():
            src = os.path.join(ROOT, spec["path"])
            for options in spec["pipelines"]:
                out, rep = os.path.join(tmp, f"{name}.onnx"), os.path.join(tmp, f"{name}.json")
                subprocess.run([args.adaptc, "rewrite", src, "-p", f"prune-channels{{{options} report={rep}}}",
                                "-o", out], check=True, capture_output=True)
                report = json.load(open(rep))
                ref = zeroed_original(src, report, spec["ffn"], spec["o"])
                for level in [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]:
                    so = ort.SessionOptions()
                    so.graph_optimization_level = level
                    feeds = spec["feeds"](np.random.default_rng(0))
                    a = ort.InferenceSession(ref.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
                    b = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"]).run(None, feeds)
                    diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
                    ok = diff <= 1e-5
                    failed |= not ok
                    print(f"{name} {{{options}}} {level.name}: max|pruned - zeroed original| = {diff:.3e} "
                          f"{'ok' if ok else 'MISMATCH'}")
                print(f"{name} {{{options}}}: params {report['params_before']} -> {report['params_after']} "
                      f"({report['channels_removed']} channels, {report['heads_removed']} heads removed)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
