#!/usr/bin/env python3
"""Cross-check adaptc's `prune-weights` and `factorize-lowrank` in onnxruntime.

    python3 -m venv /tmp/venv-quant
    /tmp/venv-quant/bin/pip install -r scripts/crosscheck/requirements-quantize.txt
    cargo build --release --bin adaptc
    /tmp/venv-quant/bin/python scripts/crosscheck/compress_ort.py [--adaptc target/release/adaptc]
        [--models bert6,minilm,llama4]

For every model (skipped, and said so, when its file is missing) and pipeline, `adaptc rewrite`
writes the model, then:

  1. `onnx.checker.check_model(full_check=True)` (strict shape inference: no stale value_info);
  2. the model runs in onnxruntime (CPU) with graph optimizations off and on, and its outputs are
     compared with the original model's: max |a − b| / max |a| per output. Full-rank
     factorization must stay within 1e-5 (it only rounds); the lossy pipelines are reported;
  3. `prune-weights{pattern=2:4}`: every pruned `[in, out]` MatMul weight read back from the ONNX
     file has exactly 2 non-zeros in each group of 4 input features of each output channel.

Exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[2]

MODELS = {
    "bert6": REPO / "tests/fixtures/models/bert6.onnx",
    "minilm": REPO / "tests/data/minilm/model.onnx",
    "llama4": REPO / "tests/fixtures/models/llama4/model.onnx",
}

# (pipeline, tolerance on the output difference or None when lossy)
PIPELINES = [
    ("factorize-lowrank{rank=100000}", 1e-5),
    ("factorize-lowrank{energy=0.9}", None),
    ("prune-weights{pattern=2:4}", None),
    ("prune-weights{sparsity=0.5}", None),
    ("prune-weights{pattern=2:4},factorize-lowrank{rank=100000}", None),
]

STAT = re.compile(r"([a-z_]+\.[a-z_0-9]+)=(-?\d+)")


def adaptc(binary: str, src: Path, dst: Path, pipeline: str) -> dict:
    cmd = [binary, "rewrite", str(src), "-o", str(dst), "-p", pipeline, "--stats"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return {k: int(v) for k, v in STAT.findall(p.stderr)}


def feeds(sess: ort.InferenceSession) -> dict:
    """Token ids in [1, 90), masks of ones, token types of zeros; batch 2, sequence 7."""
    rng = np.random.RandomState(0)
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else (2 if "batch" in str(d) else 7) for d in i.shape]
        if "int" not in i.type:
            out[i.name] = rng.randn(*shape).astype(np.float32)
        elif "mask" in i.name:
            out[i.name] = np.ones(shape, np.int64)
        elif "type" in i.name:
            out[i.name] = np.zeros(shape, np.int64)
        else:
            out[i.name] = rng.randint(1, 90, size=shape).astype(np.int64)
    return out


def run(path: Path, level: ort.GraphOptimizationLevel) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds(sess))


def two_of_four(path: Path) -> tuple[int, list[str]]:
    """(weights checked, problems) over the MatMul weights [in, out] with any zero."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    checked, problems = 0, []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]], base_dir=str(path.parent))
        if w.ndim != 2 or w.shape[0] % 4 or not (w == 0).any():
            continue
        checked += 1
        nz = (w.reshape(w.shape[0] // 4, 4, w.shape[1]) != 0).sum(axis=1)
        if not (nz == 2).all():
            problems.append(f"{node.input[1]}: groups with {sorted(set(nz.ravel().tolist()))} non-zeros")
    return checked, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adaptc", default=str(REPO / "target/release/adaptc"))
    ap.add_argument("--models", default="bert6,minilm,llama4")
    args = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            src = MODELS[name]
            if not src.exists():
                print(f"{name}: skipped, {src} is missing")
                continue
            base = {lvl: run(src, lvl) for lvl in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL)}
            for i, (pipeline, tol) in enumerate(PIPELINES):
                dst = Path(tmp) / f"{name}_{i}" / "model.onnx"
                dst.parent.mkdir()
                try:
                    stats = adaptc(args.adaptc, src, dst, pipeline)
                    onnx.checker.check_model(str(dst), full_check=True)
                    diffs = []
                    for lvl, ref in base.items():
                        out = run(dst, lvl)
                        diffs.append(max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30))
                                         for a, b in zip(ref, out)))
                except Exception as e:  # noqa: BLE001 - every failure is reported
                    failures.append(f"{name} {pipeline}: {e}")
                    print(f"{name:7} {pipeline}: FAILED {e}")
                    continue
                shown = {k: v for k, v in stats.items() if k.startswith(("prune.", "lowrank."))}
                line = f"{name:7} {pipeline}: max rel diff {diffs[0]:.2e} (ORT optimizations on: {diffs[1]:.2e}) {shown}"
                if tol is not None and max(diffs) > tol:
                    failures.append(f"{name} {pipeline}: difference {max(diffs):.2e} > {tol}")
                    line += "  FAILED"
                if pipeline == "prune-weights{pattern=2:4}":
                    checked, problems = two_of_four(dst)
                    line += f"; 2:4 checked on {checked} weights"
                    failures.extend(f"{name} {pipeline}: {p}" for p in problems)
                print(line)
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
