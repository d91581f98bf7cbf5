"""Cross-checks of the rewrites that change how a model computes, not what (check k of
scripts/crosscheck/crosscheck.py), each on adaptc's own runtime (`adaptc run`):

  k  fuse-attention: the rewritten model (attention cores as ai.adaptc::SoftmaxAttention, whose
     kernels never store the scores) against onnxruntime on the unfused model: ≤ 1e-4 of the
     output's scale, with at least one core fused (MiniLM's inputs are padded, so masked keys
     count; Llama's mask is causal).
     autocast{dtype=bf16}: the rewritten model against PyTorch's own mixed precision
     (`torch.autocast("cpu", dtype=torch.bfloat16)`) on the same weights. adaptc's distance from
     the f32 output must be above 1e-4 (the products really ran in bf16) and at most 3×
     PyTorch's (no worse a bf16 than PyTorch's); and the two bf16 outputs, which round in
     different orders, agree within 2× PyTorch's own distance from f32 (+1e-3). The same
     after `fuse-attention,autocast{dtype=bf16}`, where the fused attention's products round
     their operands to bf16 too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import Results, adaptc, load_meta, ort_run, out_dir, worst_rel


def adaptc_run(model: Path, feeds: dict, d: Path) -> list[np.ndarray]:
    """`adaptc run` on `feeds`; the outputs in the graph's order."""
    d.mkdir(parents=True, exist_ok=True)
    args = []
    for name, value in feeds.items():
        path = d / f"in-{name}.npy"
        np.save(path, value)
        args += ["--input", f"{name}={path}"]
    adaptc("run", model, *args, "--out-dir", d / "out")
    return [np.load(d / "out" / f"{o.name}.npy") for o in load_meta(model).graph.output]


def torch_autocast_out(spec, feeds) -> list[np.ndarray]:
    """The spec's outputs from PyTorch under CPU bf16 autocast, widened to f32."""
    import torch

    model = spec.hf()
    kwargs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        if spec.name == "llama":
            out = model(**kwargs, use_cache=False)
            outs = [out.logits]
        else:
            out = model(**kwargs)
            outs = [out.last_hidden_state, out.pooler_output]
    return [t.float().numpy() for t in outs]


def check_k(spec, res: Results):
    d = out_dir(spec, "k")
    feeds = spec.feeds()
    reference = ort_run(spec.onnx, feeds)

    fused = d / "fused.onnx"
    adaptc("rewrite", spec.onnx, "-o", fused, "-p", "fuse-attention")
    cores = sum(n.op_type == "SoftmaxAttention" for n in load_meta(fused).graph.node)
    r = worst_rel(reference, adaptc_run(fused, feeds, d / "fused"))
    res.add(spec.name, "k. fuse-attention: adaptc run vs ORT(unfused)", f"{r:.2e}", "≤ 1e-4", r <= 1e-4 and cores > 0,
            f"({cores} attention cores fused)")

    theirs = torch_autocast_out(spec, feeds)
    e_theirs = worst_rel(reference, theirs)
    # autocast alone (attention products stay f32), and after fuse-attention (its products
    # marked bf16 too, as PyTorch runs attention under autocast).
    for label, pipeline in [("autocast bf16", "autocast{dtype=bf16}"),
                            ("fuse-attention + autocast bf16", "fuse-attention,autocast{dtype=bf16}")]:
        low = d / f"{pipeline.split('{')[0].replace(',', '-')}.onnx"
        adaptc("rewrite", spec.onnx, "-o", low, "-p", pipeline)
        ours = adaptc_run(low, feeds, d / low.stem)
        agree = worst_rel(theirs, ours)
        e_ours = worst_rel(reference, ours)
        limit = 2 * e_theirs + 1e-3
        ok = agree <= limit and 1e-4 < e_ours <= 3 * max(e_theirs, 1e-3)
        res.add(spec.name, f"k. {label}: adaptc run vs torch.autocast bf16", f"{agree:.2e}", f"≤ {limit:.1e}", ok,
                f"(distance from f32: adaptc {e_ours:.1e}, PyTorch {e_theirs:.1e})")


def run(spec, res: Results, only: str = "k"):
    if "k" not in only:
        return
    try:
        check_k(spec, res)
    except Exception as e:  # noqa: BLE001 - reported, then the next check
        res.error(spec.name, "k.", e)
