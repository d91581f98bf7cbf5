#!/usr/bin/env python3
"""PEFT-made adapter fixtures for adaptc's Rust tests (tests/fixtures/peft/).

Rebuilds bert6 (the random-initialised BertModel of scripts/make_fixtures.py, same seed and
steps), checks that it is the model in tests/fixtures/models/bert6.onnx (onnxruntime on the
ONNX file vs PyTorch, on the reference inputs of tests/fixtures/reference/bert6), then lets
PEFT create, initialise (init_lora_weights=False: A and B random, so the output moves) and
save two adapters on it:

  tests/fixtures/peft/bert6-rslora/      r=4, lora_alpha=8, use_rslora, target_modules
                                         query,key,dense (31 modules: query, key and every
                                         `*.dense`, the pooler's Gemm included)
  tests/fixtures/peft/bert6-dora/        DoRA, r=2, lora_alpha=4, target_modules query,value,
                                         rank_pattern {layer 1 query: 4}, alpha_pattern {value: 2}

Each folder holds what `save_pretrained` wrote (adapter_config.json,
adapter_model.safetensors; the README.md model card is dropped) plus PEFT's outputs on the
bert6 reference inputs (last_hidden_state.npy, pooler_output.npy), which the Rust tests
compare with tract running adaptc's `import-peft` result.

    /work/venv-fixtures/bin/python scripts/crosscheck/make_peft_fixtures.py

Versions: see scripts/crosscheck/requirements.txt (torch 2.15.0, transformers 5.24.0,
peft 0.21.2, onnxruntime 1.32.0).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import make_fixtures  # noqa: E402  (randomise_parameters, ort_run)


def bert6():
    import torch
    from transformers import BertConfig, BertModel

    # The same steps as make_fixtures.make_bert6, so the weights are bert6.onnx's.
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
    make_fixtures.randomise_parameters(model)
    return model


def reference_inputs() -> dict[str, np.ndarray]:
    d = REPO / "tests" / "fixtures" / "reference" / "bert6"
    return {k: np.load(d / f"{k}.npy") for k in ("input_ids", "attention_mask", "token_type_ids")}


def torch_outputs(model, feeds):
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def make(name: str, lora_kwargs: dict, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    model = bert6()
    feeds = reference_inputs()
    ort_out = make_fixtures.ort_run(REPO / "tests" / "fixtures" / "models" / "bert6.onnx", feeds)
    base = torch_outputs(model, feeds)
    d = max(float(np.abs(a - b).max()) for a, b in zip(ort_out, base))
    assert d < 1e-4, f"the rebuilt bert6 is not bert6.onnx (max |diff| {d}); torch/transformers versions differ?"

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs)).eval()
    out_dir = REPO / "tests" / "fixtures" / "peft" / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    peft_model.save_pretrained(str(out_dir))
    (out_dir / "README.md").unlink(missing_ok=True)
    last, pooled = torch_outputs(peft_model, feeds)
    moved = float(np.abs(last - base[0]).max())
    assert moved > 1e-3, f"{name}: the adapter does not change the output ({moved})"
    np.save(out_dir / "last_hidden_state.npy", last)
    np.save(out_dir / "pooler_output.npy", pooled)
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"{name}: {sorted(p.name for p in out_dir.iterdir())}, {size} bytes; output moved by {moved:.3e}")


def main() -> int:
    make(
        "bert6-rslora",
        dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["query", "key", "dense"], init_lora_weights=False),
        seed=1,
    )
    make(
        "bert6-dora",
        dict(
            r=2,
            lora_alpha=4,
            use_dora=True,
            target_modules=["query", "value"],
            rank_pattern={"encoder.layer.1.attention.self.query": 4},
            alpha_pattern={"value": 2},
            init_lora_weights=False,
        ),
        seed=2,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
