#!/usr/bin/env python3
"""Generate the ONNX test fixtures and the example model used by adaptc.

What it makes (paths relative to the repository root):

  tests/fixtures/models/bert6.onnx            random-initialised transformers.BertModel
                                              (with pooler): 6 layers, hidden 64, 4 heads,
                                              intermediate 128, vocab 1000, max_position 128.
                                              Inputs input_ids, attention_mask, token_type_ids
                                              (int64, dynamic [batch, seq]); outputs
                                              last_hidden_state, pooler_output. All weights
                                              inline (one file).
  tests/fixtures/models/bert6.expected.json   oracle: the 37 linear layers (36 MatMul + the
                                              pooler Gemm) and the 12 attention MatMuls.
  tests/fixtures/models/llama4/model.onnx     random-initialised transformers.LlamaForCausalLM:
  tests/fixtures/models/llama4/model.onnx.data  4 layers, hidden 64, 4 heads, 2 kv heads (GQA),
                                              intermediate 128, vocab 1000, use_cache=False.
                                              Inputs input_ids, attention_mask; output logits.
                                              Every initializer > 256 bytes lives in the one
                                              external file `model.onnx.data`.
  tests/fixtures/models/llama4/expected.json  oracle: 29 linear layers + 8 attention MatMuls.
  tests/fixtures/models/linear_forms/*.onnx   hand-built (onnx.helper) graphs, one linear-layer
                                              form per file, and expected.json describing them.
  examples/models/tiny_bert.onnx              a copy of bert6.onnx.

Both exported models come from `torch.onnx.export(..., dynamo=True, opset_version=20)`;
the exporter accepts opset 20, so no fallback to its default is needed. All parameters
(including biases and norm weights, which transformers initialises to 0/1) are re-drawn
from torch.manual_seed(0) so that every parameter is distinct: the exporter deduplicates
initializers with equal values, which would otherwise make every zero bias one shared
tensor. The expected.json oracles are derived from the torch module tree (every
nn.Linear: path, in/out features, bias) and then located in the exported graph through
the nodes' `pkg.torch.onnx.name_scopes` metadata; the script checks that the graph's
weight (and bias) values equal the module's (transposed where stored [in, out]).

Each model is also run once in onnxruntime; bert6 and llama4 are compared to PyTorch.

How to run (from anywhere; it writes into the repository that contains this script):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    /work/venv-fixtures/bin/python scripts/make_fixtures.py [--only bert6,llama4,linear_forms]

No network access is needed at run time (models are built from configs, not downloaded).

Versions used (see scripts/requirements-fixtures.txt): Python 3.11.7, torch 2.15.0
(PyPI wheel, run on CPU), transformers 5.24.0, onnxscript 0.7.2, onnx 1.23.2,
onnx_ir 1.1.0, onnxruntime 1.32.0, numpy 2.4.6.

Note: the exporter stores a `pkg.torch.onnx.stack_trace` metadata entry on each node
that contains the absolute path of the venv's site-packages; the files are therefore
byte-identical across runs only when generated from the same venv path.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "models"
EXAMPLES = REPO / "examples" / "models"

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"
OPSET = 20


# --------------------------------------------------------------------------------------
# Graph helpers
# --------------------------------------------------------------------------------------


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    c = collections.Counter(n.op_type for n in model.graph.node)
    return dict(sorted(c.items()))


def print_histogram(title: str, model: onnx.ModelProto) -> None:
    h = op_histogram(model)
    print(f"--- op histogram: {title} ({sum(h.values())} nodes) ---")
    for k, v in sorted(h.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {k:22s} {v}")


def metadata(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def const_arrays(model: onnx.ModelProto, base_dir: Path | None) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs, as numpy arrays (external data loaded)."""
    out = {}
    for t in model.graph.initializer:
        out[t.name] = numpy_helper.to_array(t, base_dir=str(base_dir) if base_dir else "")
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def analyse_linear_layers(model: onnx.ModelProto, base_dir: Path | None):
    """Find MatMul/Gemm nodes whose weight operand is a constant (linear layers) and
    MatMuls between two activations (attention). Returns (linear, attention, consts)."""
    g = model.graph
    consts = const_arrays(model, base_dir)
    consumers = collections.defaultdict(list)
    for n in g.node:
        for x in n.input:
            consumers[x].append(n)
    linear, attention = [], []
    for n in g.node:
        if n.op_type == "MatMul":
            a, b = n.input
            if b in consts:
                w = consts[b]
                assert w.ndim == 2, (n.name, w.shape)
                bias_node, bias_name = None, None
                users = consumers[n.output[0]]
                if len(users) == 1 and users[0].op_type == "Add":
                    add = users[0]
                    other = [x for x in add.input if x != n.output[0]]
                    if len(other) == 1 and other[0] in consts and consts[other[0]].shape == (w.shape[1],):
                        bias_node, bias_name = add, other[0]
                linear.append(
                    dict(
                        node=n,
                        weight=b,
                        weight_shape=list(w.shape),
                        layout="in_out",
                        in_features=int(w.shape[0]),
                        out_features=int(w.shape[1]),
                        bias_node=bias_node,
                        bias=bias_name,
                    )
                )
            elif a not in consts and b not in consts:
                attention.append(n)
            else:
                raise AssertionError(f"unexpected MatMul form {n.name}: {list(n.input)}")
        elif n.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            assert attrs.get("transA", 0) == 0
            w = consts[n.input[1]]
            transb = attrs.get("transB", 0)
            in_f, out_f = (w.shape[1], w.shape[0]) if transb else (w.shape[0], w.shape[1])
            bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
            linear.append(
                dict(
                    node=n,
                    weight=n.input[1],
                    weight_shape=list(w.shape),
                    layout="out_in" if transb else "in_out",
                    in_features=int(in_f),
                    out_features=int(out_f),
                    bias_node=n if bias else None,
                    bias=bias,
                )
            )
    return linear, attention, consts


def module_path_from_scopes(node: onnx.NodeProto) -> str:
    scopes = ast.literal_eval(metadata(node)[NAME_SCOPES])
    # [..., '<module path>', '<fx node name>'], e.g. [..., 'encoder.layer.0.attention.self.query', 'linear']
    return scopes[-2]


def build_oracle(torch_model, onnx_model, base_dir, model_file: str, expect_linear: int, expect_attn: int):
    """Derive the expected linear layers from the torch module tree, locate each in the
    exported graph and check weights/biases numerically."""
    import torch

    torch_linears = {
        name: mod for name, mod in torch_model.named_modules() if isinstance(mod, torch.nn.Linear)
    }
    linear, attention, consts = analyse_linear_layers(onnx_model, base_dir)
    assert len(torch_linears) == expect_linear, (len(torch_linears), expect_linear)
    assert len(linear) == expect_linear, f"graph has {len(linear)} linear MatMul/Gemm, want {expect_linear}"
    assert len(attention) == expect_attn, f"graph has {len(attention)} attention MatMuls, want {expect_attn}"

    by_path = {}
    for rec in linear:
        path = module_path_from_scopes(rec["node"])
        assert path not in by_path, f"two graph nodes for module {path}"
        by_path[path] = rec
    assert set(by_path) == set(torch_linears), set(by_path) ^ set(torch_linears)

    entries = []
    for path, mod in torch_linears.items():  # module-tree order
        rec = by_path[path]
        node = rec["node"]
        W = mod.weight.detach().numpy()  # [out, in]
        assert rec["in_features"] == mod.in_features and rec["out_features"] == mod.out_features, path
        w_graph = consts[rec["weight"]]
        w_expected = W if rec["layout"] == "out_in" else W.T
        assert np.array_equal(w_graph, w_expected), f"weight values differ for {path}"
        has_bias = mod.bias is not None
        assert has_bias == (rec["bias"] is not None), f"bias presence differs for {path}"
        if has_bias:
            assert np.array_equal(consts[rec["bias"]], mod.bias.detach().numpy()), f"bias values differ for {path}"
        entries.append(
            dict(
                module_path=path,
                node_name=node.name,
                op_type=node.op_type,
                in_features=mod.in_features,
                out_features=mod.out_features,
                has_bias=has_bias,
                weight=rec["weight"],
                weight_shape=rec["weight_shape"],
                weight_layout=rec["layout"],
                bias=rec["bias"],
                bias_node=rec["bias_node"].name if rec["bias_node"] is not None else None,
            )
        )
    attn = []
    for n in attention:
        scopes = ast.literal_eval(metadata(n)[NAME_SCOPES])
        attn.append(dict(node_name=n.name, module_path=scopes[-2], inputs=list(n.input)))
    return dict(
        model=model_file,
        note=(
            "Derived by scripts/make_fixtures.py from the torch module tree (nn.Linear) and "
            "located in the graph via pkg.torch.onnx.name_scopes; weight/bias values checked. "
            "weight_layout in_out = initializer is W^T [in,out] (MatMul or Gemm transB=0); "
            "out_in = [out,in] (Gemm transB=1). bias_node = the Add (or the Gemm itself) "
            "that adds the bias initializer."
        ),
        linear_layers=entries,
        attention_matmuls=attn,
    )


def ort_run(path: Path, feeds: dict[str, np.ndarray]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_name_scopes(model: onnx.ModelProto) -> None:
    nodes = list(model.graph.node)
    with_scopes = sum(1 for n in nodes if NAME_SCOPES in metadata(n))
    print(f"nodes with {NAME_SCOPES}: {with_scopes}/{len(nodes)}")
    mm = [n for n in nodes if n.op_type in ("MatMul", "Gemm")]
    missing = [n.name for n in mm if NAME_SCOPES not in metadata(n)]
    assert not missing, f"MatMul/Gemm nodes without {NAME_SCOPES}: {missing}"
    for n in mm:
        v = metadata(n)[NAME_SCOPES]
        parsed = ast.literal_eval(v)
        assert isinstance(parsed, list) and all(isinstance(s, str) for s in parsed), v
        assert repr(parsed) == v, f"name_scopes is not a python list repr: {v!r}"


def randomise_parameters(model) -> None:
    """Give every parameter distinct random values (see module docstring)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "LayerNorm.weight" in name or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))


def export(model, kwargs, dynamic_shapes, input_names, output_names):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model,
            (),
            kwargs=kwargs,
            dynamo=True,
            opset_version=OPSET,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            verbose=False,
        )
    return prog


# --------------------------------------------------------------------------------------
# a/d/e. bert6
# --------------------------------------------------------------------------------------


def make_bert6() -> None:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    model = BertModel(cfg, add_pooling_layer=True).eval()
    randomise_parameters(model)

    B, S = 2, 16
    input_ids = torch.randint(0, cfg.vocab_size, (B, S))
    attention_mask = torch.ones(B, S, dtype=torch.int64)
    attention_mask[1, 12:] = 0  # some padding so the mask path is exercised
    token_type_ids = torch.zeros(B, S, dtype=torch.int64)
    token_type_ids[:, 8:] = 1
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = {k: {0: batch, 1: seq} for k in kwargs}
    prog = export(model, kwargs, dyn, list(kwargs), ["last_hidden_state", "pooler_output"])

    out = FIXTURES / "bert6.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    prog.save(str(out), external_data=False)
    assert not (FIXTURES / "bert6.onnx.data").exists()

    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert all(t.data_location == TensorProto.DEFAULT for t in m.graph.initializer), "bert6 must be single-file"
    print_histogram("bert6.onnx", m)
    print("opset:", [(o.domain, o.version) for o in m.opset_import])
    check_name_scopes(m)
    hist = op_histogram(m)
    assert hist.get("MatMul") == 48 and hist.get("Gemm") == 1, hist

    oracle = build_oracle(model, m, None, "bert6.onnx", expect_linear=37, expect_attn=12)
    n_mm = sum(1 for e in oracle["linear_layers"] if e["op_type"] == "MatMul")
    assert n_mm == 36, n_mm
    (FIXTURES / "bert6.expected.json").write_text(json.dumps(oracle, indent=1) + "\n")

    # onnxruntime vs torch, at the export shape and at another (dynamic dims) shape
    for b, s in [(B, S), (3, 7)]:
        if (b, s) == (B, S):
            feeds = {k: v.numpy() for k, v in kwargs.items()}
        else:
            g = torch.Generator().manual_seed(1)
            feeds = dict(
                input_ids=torch.randint(0, cfg.vocab_size, (b, s), generator=g).numpy(),
                attention_mask=np.ones((b, s), np.int64),
                token_type_ids=np.zeros((b, s), np.int64),
            )
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        got = ort_run(out, feeds)
        d0 = np.abs(got[0] - ref.last_hidden_state.numpy()).max()
        d1 = np.abs(got[1] - ref.pooler_output.numpy()).max()
        print(f"bert6 [{b}x{s}] ORT vs torch max|diff|: last_hidden_state {d0:.3e}, pooler_output {d1:.3e}")
        assert d0 < 1e-4 and d1 < 1e-4
    size = out.stat().st_size
    print(f"bert6.onnx: {size} bytes")
    assert size < 3 * 1024 * 1024

    EXAMPLES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, EXAMPLES / "tiny_bert.onnx")


# --------------------------------------------------------------------------------------
# b. llama4
# --------------------------------------------------------------------------------------


def make_llama4() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
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
    model = LlamaForCausalLM(cfg).eval()
    randomise_parameters(model)

    B, S = 2, 16
    input_ids = torch.randint(0, cfg.vocab_size, (B, S))
    attention_mask = torch.ones(B, S, dtype=torch.int64)
    attention_mask[1, :3] = 0  # left padding on the second row
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)

    # Export LlamaForCausalLM itself so the name scopes read model.layers.N..., lm_head;
    # cfg.use_cache=False keeps KV-cache inputs/outputs out of the graph.
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = {k: {0: batch, 1: seq} for k in kwargs}
    prog = export(model, kwargs, dyn, list(kwargs), ["logits"])

    d = FIXTURES / "llama4"
    d.mkdir(parents=True, exist_ok=True)
    for f in d.glob("model.onnx*"):
        f.unlink()
    out = d / "model.onnx"
    prog.save(str(out), external_data=True)
    files = sorted(p.name for p in d.iterdir() if p.name.startswith("model.onnx"))
    assert files == ["model.onnx", "model.onnx.data"], files

    m = onnx.load(str(out), load_external_data=False)
    locs = set()
    for t in m.graph.initializer:
        nbytes = int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        if t.data_location == TensorProto.EXTERNAL:
            locs.add({e.key: e.value for e in t.external_data}["location"])
        else:
            assert nbytes <= 1024, f"inline initializer {t.name} is {nbytes} bytes"
    assert locs == {"model.onnx.data"}, locs
    onnx.checker.check_model(str(out), full_check=True)
    print_histogram("llama4/model.onnx", m)
    print("opset:", [(o.domain, o.version) for o in m.opset_import])
    print("outputs:", [o.name for o in m.graph.output])
    check_name_scopes(m)

    # 7 per layer (q,k,v,o,gate,up,down) + lm_head; 2 attention MatMuls per layer
    oracle = build_oracle(model, m, d, "llama4/model.onnx", expect_linear=29, expect_attn=8)
    (d / "expected.json").write_text(json.dumps(oracle, indent=1) + "\n")

    for b, s in [(B, S), (1, 9)]:
        if (b, s) == (B, S):
            feeds = {k: v.numpy() for k, v in kwargs.items()}
        else:
            g = torch.Generator().manual_seed(2)
            feeds = dict(
                input_ids=torch.randint(0, cfg.vocab_size, (b, s), generator=g).numpy(),
                attention_mask=np.ones((b, s), np.int64),
            )
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, use_cache=False).logits.numpy()
        got = ort_run(out, feeds)[0]
        diff = np.abs(got - ref)
        if (b, s) == (B, S):
            # fully-padded query rows (row 1, positions 0..2) are garbage in both; compare valid ones
            valid = feeds["attention_mask"].astype(bool)
            dmax = diff[valid].max()
        else:
            dmax = diff.max()
        print(f"llama4 [{b}x{s}] ORT vs torch max|diff| logits: {dmax:.3e} (all positions: {diff.max():.3e})")
        assert dmax < 1e-4
    total = sum(p.stat().st_size for p in d.iterdir() if p.name.startswith("model.onnx"))
    print(f"llama4: model.onnx {out.stat().st_size} bytes, model.onnx.data {(d / 'model.onnx.data').stat().st_size} bytes")
    assert total < 5 * 1024 * 1024


# --------------------------------------------------------------------------------------
# c. linear_forms
# --------------------------------------------------------------------------------------


def _scopes_repr(path: str, fx_name: str) -> str:
    """The exporter's format: repr() of a python list holding '' (the root module), each
    enclosing module's path (a ModuleList index joins its container: 'encoder.layer.0',
    never 'encoder.layer'), then the fx node name (e.g. 'linear')."""
    parts = path.split(".")
    chain = [""]
    acc = []
    for p in parts:
        if p.isdigit() and acc:
            acc[-1] = acc[-1] + "." + p
        else:
            acc.append(p)
    for i in range(len(acc)):
        chain.append(".".join(acc[: i + 1]))
    chain.append(fx_name)
    return repr(chain)


def _model(nodes, inputs, outputs, inits, name) -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="adaptc-make_fixtures",
        ir_version=10,
    )
    onnx.checker.check_model(m, full_check=True)
    return m


def make_linear_forms() -> None:
    d = FIXTURES / "linear_forms"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    f32 = TensorProto.FLOAT
    IN, OUT = 16, 8

    def rand(*shape):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    expected: dict[str, dict] = {}
    refs: dict[str, tuple] = {}  # file -> (feeds, numpy reference output)

    # --- matmul.onnx: dynamo style, path only in metadata ---------------------------
    W = rand(IN, OUT)
    n = helper.make_node("MatMul", ["x", "val_1"], ["y"], name="node_MatMul_2")
    path = "encoder.layer.0.attention.self.query"
    helper.set_metadata_props(n, {NAME_SCOPES: _scopes_repr(path, "linear")})
    assert n.metadata_props[0].value == (
        "['', 'encoder', 'encoder.layer.0', 'encoder.layer.0.attention', "
        "'encoder.layer.0.attention.self', 'encoder.layer.0.attention.self.query', 'linear']"
    )
    m = _model(
        [n],
        [helper.make_tensor_value_info("x", f32, ["batch", "seq", IN])],
        [helper.make_tensor_value_info("y", f32, ["batch", "seq", OUT])],
        [numpy_helper.from_array(W, "val_1")],
        "matmul",
    )
    onnx.save(m, str(d / "matmul.onnx"))
    x = rand(2, 3, IN)
    refs["matmul.onnx"] = ({"x": x}, x @ W)
    expected["matmul.onnx"] = dict(
        form="MatMul(x, W[in,out]); module path only in metadata pkg.torch.onnx.name_scopes",
        linear_layers=[
            dict(module_path=path, node_name="node_MatMul_2", op_type="MatMul", in_features=IN,
                 out_features=OUT, has_bias=False, weight="val_1", weight_shape=[IN, OUT],
                 weight_layout="in_out", bias=None, bias_node=None)
        ],
        attention_matmuls=[],
    )

    # --- matmul_add.onnx: legacy (TorchScript) exporter style, path only in node name --
    W = rand(IN, OUT)
    b = rand(OUT)
    p = "/encoder/layer.0/attention/self/query"
    mm = helper.make_node("MatMul", ["x", "onnx::MatMul_101"], [f"{p}/MatMul_output_0"], name=f"{p}/MatMul")
    # the legacy exporter puts the bias first: Add(bias, MatMul_out)
    add = helper.make_node("Add", ["onnx::Add_102", f"{p}/MatMul_output_0"], ["y"], name=f"{p}/Add")
    m = _model(
        [mm, add],
        [helper.make_tensor_value_info("x", f32, ["batch", "seq", IN])],
        [helper.make_tensor_value_info("y", f32, ["batch", "seq", OUT])],
        [numpy_helper.from_array(W, "onnx::MatMul_101"), numpy_helper.from_array(b, "onnx::Add_102")],
        "matmul_add",
    )
    onnx.save(m, str(d / "matmul_add.onnx"))
    x = rand(2, 3, IN)
    refs["matmul_add.onnx"] = ({"x": x}, x @ W + b)
    expected["matmul_add.onnx"] = dict(
        form="MatMul(x, W[in,out]) then Add(bias, mm) (bias is the FIRST Add input); "
        "module path only in the node name (legacy exporter style), no metadata",
        linear_layers=[
            dict(module_path="encoder.layer.0.attention.self.query", node_name=f"{p}/MatMul", op_type="MatMul",
                 in_features=IN, out_features=OUT, has_bias=True, weight="onnx::MatMul_101",
                 weight_shape=[IN, OUT], weight_layout="in_out", bias="onnx::Add_102", bias_node=f"{p}/Add")
        ],
        attention_matmuls=[],
    )

    # --- gemm_transb.onnx: classifier head, path from initializer names, node unnamed --
    W = rand(OUT, IN)
    b = rand(OUT)
    n = helper.make_node("Gemm", ["x", "classifier.weight", "classifier.bias"], ["y"], transB=1)
    m = _model(
        [n],
        [helper.make_tensor_value_info("x", f32, ["batch", IN])],
        [helper.make_tensor_value_info("y", f32, ["batch", OUT])],
        [numpy_helper.from_array(W, "classifier.weight"), numpy_helper.from_array(b, "classifier.bias")],
        "gemm_transb",
    )
    onnx.save(m, str(d / "gemm_transb.onnx"))
    x = rand(4, IN)
    refs["gemm_transb.onnx"] = ({"x": x}, x @ W.T + b)
    expected["gemm_transb.onnx"] = dict(
        form="Gemm(x, W[out,in], b) transB=1; node unnamed; path from initializer names",
        linear_layers=[
            dict(module_path="classifier", node_name="", op_type="Gemm", in_features=IN, out_features=OUT,
                 has_bias=True, weight="classifier.weight", weight_shape=[OUT, IN], weight_layout="out_in",
                 bias="classifier.bias", bias_node="")
        ],
        attention_matmuls=[],
    )

    # --- gemm_notrans.onnx: GPT-2 Conv1D (fused QKV: out = 3*in) ------------------------
    C = 16
    W = rand(C, 3 * C)
    b = rand(3 * C)
    n = helper.make_node(
        "Gemm",
        ["x", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias"],
        ["y"],
        name="node_addmm",
        transB=0,
    )
    m = _model(
        [n],
        [helper.make_tensor_value_info("x", f32, ["batch", C])],
        [helper.make_tensor_value_info("y", f32, ["batch", 3 * C])],
        [
            numpy_helper.from_array(W, "transformer.h.0.attn.c_attn.weight"),
            numpy_helper.from_array(b, "transformer.h.0.attn.c_attn.bias"),
        ],
        "gemm_notrans",
    )
    onnx.save(m, str(d / "gemm_notrans.onnx"))
    x = rand(4, C)
    refs["gemm_notrans.onnx"] = ({"x": x}, x @ W + b)
    expected["gemm_notrans.onnx"] = dict(
        form="Gemm(x, W[in,out], b) transB=0 (GPT-2 Conv1D, fan_in_fan_out); path from initializer names",
        linear_layers=[
            dict(module_path="transformer.h.0.attn.c_attn", node_name="node_addmm", op_type="Gemm",
                 in_features=C, out_features=3 * C, has_bias=True, weight="transformer.h.0.attn.c_attn.weight",
                 weight_shape=[C, 3 * C], weight_layout="in_out", bias="transformer.h.0.attn.c_attn.bias",
                 bias_node="node_addmm")
        ],
        attention_matmuls=[],
    )

    # --- matmul_transpose.onnx: MatMul(x, Transpose(W[out,in])) --------------------------
    W = rand(OUT, IN)
    t = helper.make_node("Transpose", ["decoder.layers.0.mlp.up_proj.weight"], ["t"], name="node_t", perm=[1, 0])
    mm = helper.make_node("MatMul", ["x", "t"], ["y"], name="node_matmul")
    m = _model(
        [t, mm],
        [helper.make_tensor_value_info("x", f32, ["batch", "seq", IN])],
        [helper.make_tensor_value_info("y", f32, ["batch", "seq", OUT])],
        [numpy_helper.from_array(W, "decoder.layers.0.mlp.up_proj.weight")],
        "matmul_transpose",
    )
    onnx.save(m, str(d / "matmul_transpose.onnx"))
    x = rand(2, 3, IN)
    refs["matmul_transpose.onnx"] = ({"x": x}, x @ W.T)
    expected["matmul_transpose.onnx"] = dict(
        form="MatMul(x, Transpose(W[out,in], perm=[1,0])); path from the initializer name",
        linear_layers=[
            dict(module_path="decoder.layers.0.mlp.up_proj", node_name="node_matmul", op_type="MatMul",
                 in_features=IN, out_features=OUT, has_bias=False, weight="decoder.layers.0.mlp.up_proj.weight",
                 weight_shape=[OUT, IN], weight_layout="out_in", transpose_node="node_t", bias=None, bias_node=None)
        ],
        attention_matmuls=[],
    )

    # --- attention_only.onnx: no linear layers -----------------------------------------
    H, D = 2, 8
    shape = ["batch", H, "seq", D]
    scale = np.array(1.0 / np.sqrt(D), np.float32)
    nodes = [
        helper.make_node("Transpose", ["k"], ["kT"], name="node_transpose", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kT"], ["scores"], name="node_MatMul_qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="node_Mul_scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="node_softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["y"], name="node_MatMul_pv"),
    ]
    m = _model(
        nodes,
        [helper.make_tensor_value_info(nm, f32, shape) for nm in ("q", "k", "v")],
        [helper.make_tensor_value_info("y", f32, shape)],
        [numpy_helper.from_array(scale, "scale")],
        "attention_only",
    )
    onnx.save(m, str(d / "attention_only.onnx"))
    q, k, v = rand(2, H, 5, D), rand(2, H, 5, D), rand(2, H, 5, D)
    s = (q @ k.transpose(0, 1, 3, 2)) * scale
    e = np.exp(s - s.max(-1, keepdims=True))
    refs["attention_only.onnx"] = ({"q": q, "k": k, "v": v}, (e / e.sum(-1, keepdims=True)) @ v)
    expected["attention_only.onnx"] = dict(
        form="MatMul(q, Transpose(k)) -> Mul(scale) -> Softmax -> MatMul(probs, v); all activations",
        linear_layers=[],
        attention_matmuls=[
            dict(node_name="node_MatMul_qk", inputs=["q", "kT"]),
            dict(node_name="node_MatMul_pv", inputs=["probs", "v"]),
        ],
    )

    (d / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")

    # sanity: run each in onnxruntime and compare with numpy; cross-check the analysis
    for fname, (feeds, ref) in refs.items():
        got = ort_run(d / fname, feeds)[0]
        diff = float(np.abs(got - ref).max())
        print(f"linear_forms/{fname}: ORT vs numpy max|diff| {diff:.3e}")
        assert diff < 1e-5
        mp = onnx.load(str(d / fname))
        if fname != "matmul_transpose.onnx":  # Transpose(W) is not folded by the simple analysis
            lin, att, _ = analyse_linear_layers(mp, None)
            exp = expected[fname]
            assert [r["node"].name for r in lin] == [e["node_name"] for e in exp["linear_layers"]], fname
            assert [(r["in_features"], r["out_features"], r["bias"] is not None) for r in lin] == [
                (e["in_features"], e["out_features"], e["has_bias"]) for e in exp["linear_layers"]
            ], fname
            assert [n.name for n in att] == [e["node_name"] for e in exp["attention_matmuls"]], fname


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="bert6,llama4,linear_forms", help="comma-separated subset")
    args = ap.parse_args()
    which = set(args.only.split(","))
    unknown = which - {"bert6", "llama4", "linear_forms"}
    if unknown:
        ap.error(f"unknown fixture(s): {sorted(unknown)}")
    if "linear_forms" in which:
        make_linear_forms()
    if "bert6" in which:
        make_bert6()
    if "llama4" in which:
        make_llama4()
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
