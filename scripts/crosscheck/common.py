"""Helpers shared by the cross-check scripts: running adaptc and onnxruntime, comparing
outputs, reading model counts, and collecting results."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
WORK = DATA / "crosscheck"

ADAPTC: Path | None = None  # set by the script's main


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


class Failed(Exception):
    pass


def adaptc(*args) -> tuple[str, float]:
    """Runs adaptc; returns (stderr, seconds). Raises Failed with its message on error."""
    t = time.perf_counter()
    p = subprocess.run([str(ADAPTC), *map(str, args)], capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise Failed(f"adaptc {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p.stderr, dt


def ort_run(path: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def rel(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    assert ref.shape == got.shape, (ref.shape, got.shape)
    return float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-12))


def worst_rel(refs, gots) -> float:
    return max(rel(r, g) for r, g in zip(refs, gots))


def load_meta(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def counts(path: Path) -> dict:
    m = load_meta(path)
    numel = {t.name: int(np.prod(t.dims, dtype=np.int64)) for t in m.graph.initializer}
    meta = {p.key: p.value for p in m.metadata_props}
    state = json.loads(meta.get("adaptc.adapters", "{}") or "{}")
    trainable = state.get("trainable", [])
    return dict(
        nodes=len(m.graph.node),
        initializers=len(m.graph.initializer),
        params=sum(numel.values()),
        trainable=sum(numel[t] for t in trainable if t in numel),
        adapters=len(state.get("adapters", [])),
        state=state,
    )


def check_safetensors_bytes(path: Path) -> None:
    """The file equals what safetensors.torch.save writes for the same tensors."""
    from safetensors.torch import load_file, save

    tensors = load_file(str(path))
    want = save(tensors, metadata={"format": "pt"})
    got = path.read_bytes()
    if got != want:
        raise Failed(f"{path}: bytes differ from safetensors.torch.save ({len(got)} vs {len(want)} bytes)")


def check_peft_loaded(peft_model, adapter_dir: Path) -> int:
    """PEFT's adapter state dict equals the file, key for key (no missing/unexpected keys)."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    want = load_file(str(adapter_dir / "adapter_model.safetensors"))
    have = get_peft_model_state_dict(peft_model)
    if set(want) != set(have):
        raise Failed(f"PEFT state dict keys differ: only in file {sorted(set(want) - set(have))[:5]}, "
                     f"only in PEFT {sorted(set(have) - set(want))[:5]}")
    for k, v in want.items():
        if not torch.equal(v, have[k].detach().to(v.dtype)):
            raise Failed(f"PEFT loaded different values for {k}")
    return len(want)


class Results:
    def __init__(self):
        self.rows = []  # (model, check, figure, limit, ok, note)

    def add(self, model, check, figure, limit, ok, note=""):
        self.rows.append((model, check, figure, limit, ok, note))
        mark = "ok  " if ok else "FAIL"
        print(f"[{mark}] {model:7s} {check:55s} {figure:>14s}  (limit {limit}) {note}", flush=True)

    def error(self, model, check, exc):
        msg = str(exc).strip().splitlines()
        self.add(model, check, "error", "-", False, " / ".join(msg[:3])[:300])
        if not isinstance(exc, Failed):
            traceback.print_exc()

    @property
    def failed(self):
        return [r for r in self.rows if not r[4]]


def out_dir(spec, name) -> Path:
    d = WORK / spec.name / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d
