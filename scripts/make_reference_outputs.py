#!/usr/bin/env python3
"""Reference outputs of the fixture models, computed by onnxruntime (an independent ONNX
implementation), for fixed inputs. Rust tests compare what adaptc's rewrites compute (run by
tract) against these.

    python scripts/make_reference_outputs.py      # needs numpy + onnxruntime

Writes tests/fixtures/reference/<model>/<name>.npy for every input and output.
"""

import os

import numpy as np
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")


def token_inputs(batch, seq, vocab, seed, padded_rows=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for r in range(min(padded_rows, batch)):
        mask[batch - 1 - r, seq - 4:] = 0  # right padding on the last rows
    return ids, mask


def write(name, arrays):
    out = os.path.join(FIX, "reference", name)
    os.makedirs(out, exist_ok=True)
    for k, v in arrays.items():
        np.save(os.path.join(out, k + ".npy"), np.ascontiguousarray(v))


def run(model, feeds):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def main():
    ids, mask = token_inputs(2, 16, 1000, seed=1)
    types = np.zeros_like(ids)
    types[:, 8:] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    write("bert6", {**feeds, **run(os.path.join(FIX, "models", "bert6.onnx"), feeds)})

    ids, mask = token_inputs(2, 12, 1000, seed=2, padded_rows=0)
    feeds = {"input_ids": ids, "attention_mask": mask}
    write("llama4", {**feeds, **run(os.path.join(FIX, "models", "llama4", "model.onnx"), feeds)})


if __name__ == "__main__":
    main()
