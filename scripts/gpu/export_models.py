"""Exports the models the GPU check trains, on the GPU machine (it has PyTorch and transformers
but no model hub, so the weights are random, seeded):

  minilm  a BertModel with all-MiniLM-L6-v2's configuration (6 layers, hidden 384, 12 heads,
          vocab 30522) -> OUT/minilm/model.onnx
  llama   a LlamaForCausalLM of the benchmark's shape (env D, LAYERS, FFN, HEADS, KV, VOCAB as
          in peft_gpu_baseline.py; small defaults) -> OUT/llama/model.onnx (+ external data)

Both with torch.onnx.export(dynamo=True, opset 20), as scripts/make_fixtures.py exports the
test fixtures.  Usage: python3 scripts/gpu/export_models.py OUT [minilm] [llama]
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import make_fixtures  # noqa: E402


def env(k, d):
    return int(os.environ.get(k, d))


def minilm(out: Path):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, attn_implementation="sdpa")
    model = BertModel(cfg).eval()
    b, s = 2, 16
    kwargs = {"input_ids": torch.randint(0, 30522, (b, s)), "attention_mask": torch.ones(b, s, dtype=torch.long),
              "token_type_ids": torch.zeros(b, s, dtype=torch.long)}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = {k: {0: batch, 1: seq} for k in kwargs}
    prog = make_fixtures.export(model, kwargs, dyn, list(kwargs), ["last_hidden_state", "pooler_output"])
    (out / "minilm").mkdir(parents=True, exist_ok=True)
    prog.save(str(out / "minilm" / "model.onnx"), external_data=False)
    print(f"exported {out / 'minilm' / 'model.onnx'}")


def llama(out: Path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=env("D", 256), intermediate_size=env("FFN", 704), num_hidden_layers=env("LAYERS", 2),
                      num_attention_heads=env("HEADS", 8), num_key_value_heads=env("KV", 2),
                      vocab_size=env("VOCAB", 32000), max_position_embeddings=max(env("S", 512), 2048),
                      use_cache=False, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    b, s = 2, 16
    kwargs = {"input_ids": torch.randint(0, cfg.vocab_size, (b, s)), "attention_mask": torch.ones(b, s, dtype=torch.long)}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = {k: {0: batch, 1: seq} for k in kwargs}
    prog = make_fixtures.export(model, kwargs, dyn, list(kwargs), ["logits"])
    (out / "llama").mkdir(parents=True, exist_ok=True)
    prog.save(str(out / "llama" / "model.onnx"), external_data=True)
    print(f"exported {out / 'llama' / 'model.onnx'}")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    which = sys.argv[2:] or ["minilm", "llama"]
    for w in which:
        {"minilm": minilm, "llama": llama}[w](out)
