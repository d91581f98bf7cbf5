#!/usr/bin/env python3
"""Quantization speed: adaptc's `quantize-weights` against onnxruntime's MatMulNBitsQuantizer on
the same model and configuration, measured in one run (the two tools alternate, N runs each).

    cargo build --release --bin adaptc
    python bench/quantize_bench.py [--adaptc target/release/adaptc] [--runs 3] [--big-gib 0.25]
        [--out bench/results/quantize-speed.md]

Needs scripts/crosscheck/requirements-quantize.txt. Models: all-MiniLM-L6-v2
(tests/data/minilm/model.onnx, from scripts/crosscheck/crosscheck.py; skipped when missing) and a
chain of f32 [4096, 4096] MatMuls written by bench/make_big_model.py (--big-gib of weights, in
external data; 0 skips it).

Measured per run:
- adaptc: wall time of `adaptc rewrite IN -o OUT -p quantize-weights{…} --stats` (process start,
  mmap load, the pass, writing the output) and the pass's own time from `--stats`;
- onnxruntime: `MatMulNBitsQuantizer(model, …).process()` alone (the model already loaded by
  `onnx.load`, which is not timed), and the end-to-end time (`onnx.load` + process + `onnx.save`).
Weights/s = quantized weight elements / seconds. Both produce the same bytes
(scripts/crosscheck/quantize_ort.py checks it); adaptc also computes every layer's error report.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
STAT = re.compile(r"([a-z_]+\.[a-z_0-9]+)=(-?\d+)")
PASS_TIME = re.compile(r"^quantize-weights(?:\{[^}]*\})?\s+(?:yes|no)\s+([\d.]+)", re.M)

# (label, bits, block, ORT is_symmetric, adaptc scheme)
CONFIGS = [
    ("int4 block 32 asym", 4, 32, False, "asym"),
    ("int4 block 128 asym (ORT default)", 4, 128, False, "asym"),
    ("int8 block 128 sym-full", 8, 128, True, "sym-full"),
]


def run_adaptc(binary: str, src: Path, dst: Path, bits: int, block: int, scheme: str, targets: str):
    pipeline = f"quantize-weights{{bits={bits} block={block} scheme={scheme} format=matmulnbits targets={targets}}}"
    t = time.perf_counter()
    p = subprocess.run([binary, "rewrite", str(src), "-o", str(dst), "-p", pipeline, "--stats"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"adaptc failed: {p.stderr}")
    stats = {k: int(v) for k, v in STAT.findall(p.stderr)}
    return wall, float(PASS_TIME.search(p.stderr).group(1)) / 1000, stats["quant.weights"]


def run_ort(src: Path, dst: Path, bits: int, block: int, sym: bool):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    t0 = time.perf_counter()
    model = onnx.load(str(src))
    t1 = time.perf_counter()
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=sym)
    q.process()
    t2 = time.perf_counter()
    onnx.save(q.model.model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    t3 = time.perf_counter()
    attrs = [{a.name: a.i for a in n.attribute} for n in q.model.model.graph.node if n.op_type == "MatMulNBits"]
    weights = sum(a["K"] * a["N"] for a in attrs)
    return t3 - t0, t2 - t1, weights


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adaptc", default=str(REPO / "target/release/adaptc"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big-gib", type=float, default=0.25)
    ap.add_argument("--out", default=str(REPO / "bench/results/quantize-speed.md"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="adaptc-qbench-") as tmp:
        tmp = Path(tmp)
        models = []
        minilm = REPO / "tests/data/minilm/model.onnx"
        if minilm.exists():
            # all-linear: every linear layer but a head (MiniLM has none; ORT also takes them all).
            models.append(("all-MiniLM-L6-v2 (dynamo export)", minilm, "all-linear"))
        if args.big_gib > 0:
            big = tmp / "big"
            subprocess.run([sys.executable, str(REPO / "bench/make_big_model.py"), str(big), "--gib", str(args.big_gib)],
                           check=True, capture_output=True)
            # Name the MatMuls like an exporter would (`/layers.3/proj/MatMul`) so that they
            # have module paths; the weights stay where they are in model.onnx.data.
            m = onnx.load(str(big / "model.onnx"), load_external_data=False)
            for i, n in enumerate(m.graph.node):
                n.name = f"/layers.{i}/proj/MatMul"
            onnx.save(m, str(big / "model.onnx"))
            # The chain's last MatMul writes the graph output (a head, which all-linear leaves
            # out): target every layer so that both tools quantize the same weights.
            models.append((f"chain of f32 [4096, 4096] MatMuls, {args.big_gib} GiB external", big / "model.onnx", "re:.*"))

        rows = []
        for label, path, targets in models:
            for cname, bits, block, sym, scheme in CONFIGS:
                a_wall, a_pass, o_wall, o_proc = [], [], [], []
                for i in range(args.runs):
                    w, p, a_weights = run_adaptc(args.adaptc, path, tmp / f"a{i}.onnx", bits, block, scheme, targets)
                    a_wall.append(w)
                    a_pass.append(p)
                    w, p, o_weights = run_ort(path, tmp / f"o{i}.onnx", bits, block, sym)
                    o_wall.append(w)
                    o_proc.append(p)
                    for f in tmp.glob("[ao][0-9].onnx*"):
                        f.unlink()
                med = statistics.median
                rows.append(
                    f"| {label} | {cname} | {a_weights:,} / {o_weights:,} | {med(a_pass):.3f} ({a_weights / med(a_pass) / 1e6:.1f} M/s) "
                    f"| {med(o_proc):.3f} ({o_weights / med(o_proc) / 1e6:.1f} M/s) | {med(a_wall):.3f} | {med(o_wall):.3f} |"
                )
                print(rows[-1], file=sys.stderr)

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = "\n".join(
        [
            "# Quantization speed: adaptc quantize-weights vs onnxruntime MatMulNBitsQuantizer",
            "",
            f"- command: `python bench/quantize_bench.py --adaptc {os.path.relpath(args.adaptc, REPO)} --runs {args.runs} "
            f"--big-gib {args.big_gib}`",
            f"- machine: {cpu or platform.processor()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
            f"onnxruntime {ort.__version__}, onnx {onnx.__version__}; adaptc release build",
            f"- medians of {args.runs} runs, the tools alternating; seconds (quantized weights per second); "
            f"load average at the end {os.getloadavg()[0]:.1f} (a shared machine: expect ±30% noise)",
            "- adaptc pass: the `quantize-weights` pass alone (Rust, one weight per thread, as many threads as",
            "  CPUs: quantize, pack, and the per-layer error report). ORT process: `MatMulNBitsQuantizer.process()`",
            "  (MLAS, multi-threaded), the model already in memory. End-to-end: adaptc's whole process (mmap",
            "  load, pass, save) vs Python `onnx.load` + process + `onnx.save` (interpreter start and imports",
            "  not counted for onnxruntime).",
            "",
            "| model | configuration | weights quantized adaptc / ORT | adaptc pass s | ORT process s | adaptc end-to-end s | ORT end-to-end s |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
