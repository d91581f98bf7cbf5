"""Cross-checks of the compression passes (checks f–i of scripts/crosscheck/crosscheck.py).

Each adaptc result runs in onnxruntime (optimisations off) and is compared with a reference
built independently in PyTorch/numpy from the Hugging Face model:

  f  prune-layers: the PyTorch model with its block list cut (BERT: `encoder.layer[:4]`,
     Llama: `model.layers[:2]`) — outputs within 1e-4 relative; MiniLM keeps 32 MatMuls and
     no initializer that only the removed blocks read; prune-layers{drop=2 by=angular} picks
     the blocks PyTorch's hidden states (forward hooks, same calibration rows) rank lowest and
     reports the same distances within 1e-3;
  g  prune-channels{ffn=0.25}: the PyTorch model with the FFN's lowest-scoring 25% intermediate
     channels sliced out of its Linear layers (score of channel j: the product of the L2 norms
     of the producers' row j — intermediate.dense, or gate_proj and up_proj — and the consumer's
     column j — output.dense / down_proj; ties by index), so the channel choice and the
     shrinking are both checked — within 1e-4; the parameter count reported; and
     prune-channels{heads=2} on MiniLM against the PyTorch model with the heads the pass's rule
     picks sliced out of q/k/v/o (Llama's grouped-query attention must be refused with a reason);
  h  prune-weights: unstructured 50% (per layer, smallest |w| zeroed; equal |w| by position in
     the [out, in] weight, earlier first — all-MiniLM-L6-v2 has many exact ties) and 2:4 (per
     output row, the two largest |w| of every 4 consecutive inputs kept, earlier first among
     equals), references pruned in numpy —
     outputs within 1e-4, sparsity measured on the written weights;
  i  factorize-lowrank: at full rank the outputs equal the base model's within 1e-4; with
     energy=0.95 the parameter reduction and the output cosine are reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import Failed, Results, adaptc, load_meta, ort_run, out_dir, worst_rel

# --------------------------------------------------------------------------------------
# the two architectures, as far as these checks need them
# --------------------------------------------------------------------------------------


def blocks(spec, model):
    return model.encoder.layer if spec.name == "minilm" else model.model.layers


def keep_blocks(spec, model, n: int):
    """Cuts the model to its first n blocks, the way adaptc's prune-layers should."""
    if spec.name == "minilm":
        model.encoder.layer = model.encoder.layer[:n]
    else:
        model.model.layers = model.model.layers[:n]
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:n]
    model.config.num_hidden_layers = n
    return model


def ffn(spec, block):
    """(producers, consumer) nn.Linear modules of a block's FFN."""
    if spec.name == "minilm":
        return [block.intermediate.dense], block.output.dense
    return [block.mlp.gate_proj, block.mlp.up_proj], block.mlp.down_proj


def linear_modules(spec, model):
    """The Linear layers `all-linear` selects (every linear layer but an output head)."""
    import torch

    return [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")]


def onnx_params(path) -> int:
    m = load_meta(path)
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in m.graph.initializer)


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------


def check_f(spec, res: Results):
    import onnx

    d = out_dir(spec, "f")
    n = len(blocks(spec, spec.hf()))
    keep = n - 2
    removed = list(range(keep, n))
    out = d / "pruned.onnx"
    msg, dt = adaptc("rewrite", spec.onnx, "-o", out, "--stats", "-p", f"prune-layers{{layers={','.join(map(str, removed))}}}")
    feeds = spec.feeds()
    ref = spec.torch_out(keep_blocks(spec, spec.hf(), keep), feeds)
    r = worst_rel(ref, ort_run(out, feeds))
    res.add(spec.name, f"f. prune-layers{{layers={','.join(map(str, removed))}}}: ORT vs PyTorch cut to {keep} blocks",
            f"{r:.2e}", "≤ 1e-4", r <= 1e-4, f"({onnx_params(spec.onnx):,} → {onnx_params(out):,} parameters; {dt:.2f} s)")

    base = onnx.load(str(spec.onnx), load_external_data=False)
    pruned = onnx.load(str(out), load_external_data=False)
    only_removed = initializers_only_read_by(base, removed)
    left = sorted(only_removed & {t.name for t in pruned.graph.initializer})
    res.add(spec.name, "f. initializers only the removed blocks read: left", f"{len(left)} of {len(only_removed)}", "= 0",
            not left and len(only_removed) > 0, f"({', '.join(left[:3])})" if left else "")
    if spec.name == "minilm":
        mm = sum(node.op_type == "MatMul" for node in pruned.graph.node)
        res.add(spec.name, "f. MatMul nodes left", str(mm), "= 32", mm == 32)


def calibration_rows(spec) -> Path:
    """The calibration rows for `spec` (scripts/make_train_data.py, made on first use)."""
    import subprocess
    import sys

    from common import DATA, REPO

    path = DATA / "train" / ("sentiment" if spec.name == "minilm" else "corpus") / "train.jsonl"
    if not path.exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_train_data.py")], check=True)
    return path


def check_f_angular(spec, res: Results):
    """prune-layers{drop=2 by=angular} against angular distances computed in PyTorch: each
    block's input and output hidden states captured with forward hooks on the same calibration
    rows (first 32, batches of 8, padding skipped)."""
    import json
    import re

    import torch

    d = out_dir(spec, "f_angular")
    calib = calibration_rows(spec)
    out = d / "angular.onnx"
    msg, dt = adaptc("rewrite", spec.onnx, "-o", out, "--stats", "-p",
                     f"prune-layers{{drop=2 by=angular calib={calib} samples=32 batch=8}}")
    m = re.search(r"angular distance per block of `[^`]*` \([^)]*\): ([^;]*); removing \{([^}]*)\}", msg)
    if not m:
        raise Failed(f"no angular-distance note in adaptc's output:\n{msg}")
    theirs = {int(k): float(v) for k, v in (p.split(": ") for p in m.group(1).split(", "))}
    removed = sorted(int(x) for x in m.group(2).split(", "))

    model = spec.hf()
    rows = [json.loads(line) for line in calib.read_text().splitlines()[:32]]
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in rows[0]]
    seen = {}
    hooks = [blk.register_forward_hook(
        lambda mod, args, kwargs, out, i=i: seen.__setitem__(i, (kwargs.get("hidden_states", args[0] if args else None),
                                                                out[0] if isinstance(out, tuple) else out)),
        with_kwargs=True) for i, blk in enumerate(blocks(spec, model))]
    sums, tokens = np.zeros(len(blocks(spec, model))), 0
    with torch.no_grad():
        for start in range(0, len(rows), 8):
            chunk = rows[start:start + 8]
            longest = max(len(r["input_ids"]) for r in chunk)
            feeds = {n: torch.tensor([r[n] + [0] * (longest - len(r[n])) for r in chunk]) for n in names}
            model(**feeds)
            for i, (x, y) in seen.items():
                for row, r in enumerate(chunk):
                    n = len(r["input_ids"])
                    a, b = x[row, :n].double(), y[row, :n].double()
                    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
                    sums[i] += float((cos.clamp(-1, 1).acos() / np.pi).sum())
            tokens += sum(len(r["input_ids"]) for r in chunk)
    for h in hooks:
        h.remove()
    ours = sums / tokens
    want = sorted(np.lexsort((np.arange(len(ours)), ours))[:2].tolist())
    worst = max(abs(ours[i] - theirs[i]) for i in theirs)
    res.add(spec.name, "f. prune-layers{drop=2 by=angular}: blocks and distances vs PyTorch",
            f"{worst:.1e}", "same blocks, ≤ 1e-3", removed == want and worst <= 1e-3,
            f"(adaptc removed {removed}, PyTorch ranks {want}; distances "
            f"{', '.join(f'{i}: {v:.3f}' for i, v in enumerate(ours))}; {dt:.2f} s)")


def initializers_only_read_by(model, removed: list[int]) -> set[str]:
    """Initializers every reader of which lies in one of the `removed` blocks (by name_scopes)."""
    import ast
    import re

    def block(node):
        md = {p.key: p.value for p in node.metadata_props}
        for scope in ast.literal_eval(md.get("pkg.torch.onnx.name_scopes", "[]")):
            m = re.search(r"(?:^|\.)(?:layer|layers|h)\.(\d+)(?:\.|$)", scope)
            if m:
                return int(m.group(1))
        return None

    readers: dict[str, set] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, set()).add(block(node))
    inits = {t.name for t in model.graph.initializer}
    return {name for name in inits if readers.get(name) and readers[name] <= set(removed)}


def check_g(spec, res: Results):
    import torch

    d = out_dir(spec, "g")
    out = d / "ffn.onnx"
    msg, dt = adaptc("rewrite", spec.onnx, "-o", out, "--stats", "-p", "prune-channels{ffn=0.25}")
    model = spec.hf()
    removed_total = 0
    with torch.no_grad():
        for block in blocks(spec, model):
            producers, consumer = ffn(spec, block)
            f = consumer.weight.shape[1]
            score = consumer.weight.double().norm(dim=0)
            for p in producers:
                score = score * p.weight.double().norm(dim=1)
            drop = int(round(0.25 * f))
            order = np.lexsort((np.arange(f), score.numpy()))  # by score, then index
            keep = torch.from_numpy(np.sort(order[drop:]))
            removed_total += drop
            for p in producers:
                p.weight = torch.nn.Parameter(p.weight[keep].clone())
                if p.bias is not None:
                    p.bias = torch.nn.Parameter(p.bias[keep].clone())
                p.out_features = len(keep)
            consumer.weight = torch.nn.Parameter(consumer.weight[:, keep].clone())
            consumer.in_features = len(keep)
    feeds = spec.feeds()
    r = worst_rel(spec.torch_out(model, feeds), ort_run(out, feeds))
    before, after = onnx_params(spec.onnx), onnx_params(out)
    res.add(spec.name, "g. prune-channels{ffn=0.25}: ORT vs PyTorch with channels sliced", f"{r:.2e}", "≤ 1e-4",
            r <= 1e-4 and after < before,
            f"({removed_total} channels removed; parameters {before:,} → {after:,}, {after / before:.1%}; {dt:.2f} s)")


def check_g_heads(spec, res: Results):
    """prune-channels{heads=2} on MiniLM against the PyTorch model with the same heads sliced out, given the
    heads the pass's rule picks (per layer, the lowest sum of the head's q/k/v row-block and
    o column-block Frobenius norms). Llama's grouped-query attention must be refused."""
    import torch

    d = out_dir(spec, "g_heads")
    out = d / "heads.onnx"
    if spec.name != "minilm":
        try:
            adaptc("rewrite", spec.onnx, "-o", out, "-p", "prune-channels{heads=1}")
            refused, why = False, "ran"
        except Failed as e:
            refused, why = "grouped-query" in str(e), str(e).strip().splitlines()[-1][:120]
        res.add(spec.name, "g. prune-channels{heads=1} on GQA is refused with a reason", "refused" if refused else "ran",
                "refused", refused, f"({why})")
        return
    msg, dt = adaptc("rewrite", spec.onnx, "-o", out, "--stats", "-p", "prune-channels{heads=2}")
    model = spec.hf()
    heads, size = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    plan = {}
    with torch.no_grad():
        for i, block in enumerate(blocks(spec, model)):
            att = block.attention
            score = np.zeros(heads)
            for h in range(heads):
                rows = slice(h * size, (h + 1) * size)
                for lin in (att.self.query, att.self.key, att.self.value):
                    score[h] += float(lin.weight[rows].double().norm())
                score[h] += float(att.output.dense.weight[:, rows].double().norm())
            plan[i] = sorted(np.lexsort((np.arange(heads), score))[:2].tolist())
    cut_heads(model, plan, size)
    feeds = spec.feeds()
    r = worst_rel(spec.torch_out(model, feeds), ort_run(out, feeds))
    before, after = onnx_params(spec.onnx), onnx_params(out)
    res.add(spec.name, "g. prune-channels{heads=2}: ORT vs PyTorch with heads sliced", f"{r:.2e}", "≤ 1e-4", r <= 1e-4,
            f"(heads removed per layer {plan[0]}…; parameters {before:,} → {after:,}; {dt:.2f} s)")


def cut_heads(model, plan: dict, size: int):
    """Removes heads from a BertModel's self-attention by slicing its Linear layers (what
    `prune_heads` did before transformers 5 dropped it)."""
    import torch

    with torch.no_grad():
        for i, gone in plan.items():
            att = model.encoder.layer[i].attention
            n = att.self.num_attention_heads
            keep = torch.tensor([h * size + j for h in range(n) if h not in gone for j in range(size)])
            for lin in (att.self.query, att.self.key, att.self.value):
                lin.weight = torch.nn.Parameter(lin.weight[keep].clone())
                lin.bias = torch.nn.Parameter(lin.bias[keep].clone())
                lin.out_features = len(keep)
            o = att.output.dense
            o.weight = torch.nn.Parameter(o.weight[:, keep].clone())
            o.in_features = len(keep)
            att.self.num_attention_heads = n - len(gone)
            att.self.all_head_size = len(keep)


def prune_numpy(w: np.ndarray, pattern: str) -> np.ndarray:
    """Magnitude pruning of a torch-layout [out, in] weight, as the reference."""
    w = w.copy()
    if pattern == "unstructured":
        flat = np.abs(w).ravel()
        k = int(np.floor(0.5 * flat.size))
        order = np.lexsort((np.arange(flat.size), flat))
        w.ravel()[order[:k]] = 0.0
        return w
    n, m = (int(x) for x in pattern.split(":"))
    out, inp = w.shape
    g = w.reshape(out, inp // m, m)
    order = np.argsort(-np.abs(g), axis=2, kind="stable")
    mask = np.zeros_like(g, dtype=bool)
    np.put_along_axis(mask, order[:, :, :n], True, axis=2)
    return (g * mask).reshape(out, inp)


def check_h(spec, res: Results):
    import torch

    d = out_dir(spec, "h")
    for pattern in ("unstructured", "2:4"):
        out = d / f"{pattern.replace(':', 'of')}.onnx"
        msg, dt = adaptc("rewrite", spec.onnx, "-o", out, "--stats", "-p", f"prune-weights{{sparsity=0.5 pattern={pattern}}}")
        model = spec.hf()
        zeros = total = 0
        with torch.no_grad():
            for lin in linear_modules(spec, model):
                w = prune_numpy(lin.weight.double().numpy(), pattern)
                lin.weight.copy_(torch.from_numpy(w).to(lin.weight.dtype))
                zeros += int((w == 0).sum())
                total += w.size
        feeds = spec.feeds()
        r = worst_rel(spec.torch_out(model, feeds), ort_run(out, feeds))
        res.add(spec.name, f"h. prune-weights{{sparsity=0.5 pattern={pattern}}}: ORT vs numpy-pruned PyTorch",
                f"{r:.2e}", "≤ 1e-4", r <= 1e-4, f"(reference sparsity {zeros / total:.4f} over {total:,} weights; {dt:.2f} s)")


def check_i(spec, res: Results):
    d = out_dir(spec, "i")
    feeds = spec.feeds()
    base = ort_run(spec.onnx, feeds)
    full = d / "full.onnx"
    msg, dt = adaptc("rewrite", spec.onnx, "-o", full, "--stats", "-p", "factorize-lowrank{rank=100000}")
    r = worst_rel(base, ort_run(full, feeds))
    res.add(spec.name, "i. factorize-lowrank at full rank: outputs vs base (ORT)", f"{r:.2e}", "≤ 1e-4", r <= 1e-4, f"({dt:.2f} s)")
    low = d / "energy.onnx"
    msg, dt = adaptc("rewrite", spec.onnx, "-o", low, "--stats", "-p", "factorize-lowrank{energy=0.95}")
    got = ort_run(low, feeds)
    a, b = base[0].reshape(-1, base[0].shape[-1]), got[0].reshape(-1, got[0].shape[-1])
    cos = float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    before, after = onnx_params(spec.onnx), onnx_params(low)
    # A figure to report, not a pass/fail check: at this energy small layers can even grow.
    res.add(spec.name, "i. factorize-lowrank{energy=0.95}: parameters vs base", f"{after / before:.1%}", "report",
            True, f"(runs in ORT; min per-token cosine of the first output {cos:.4f}; {dt:.2f} s)")


CHECKS = [("f", check_f), ("f", check_f_angular), ("g", check_g), ("g", check_g_heads), ("h", check_h), ("i", check_i)]


def run(spec, res: Results, only: str = "fghi"):
    """Runs checks f–i (those whose letter is in `only`) on `spec`; a failure is reported and
    the next check runs."""
    for label, check in CHECKS:
        if label not in only:
            continue
        try:
            check(spec, res)
        except Exception as e:  # noqa: BLE001 - reported, then the next check
            res.error(spec.name, f"{label}.", e)
