#!/usr/bin/env bash
# The project's test command (README, .ci/run): fetch the ONNX backend test data from PyPI,
# build the exported test models and training sets (scripts/make-test-data.sh), then check formatting (rustfmt.toml), lint and run every test of the workspace (profile `ci`:
# optimized, with debug assertions; it also builds target/ci/adaptc for the cross-check suite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-test-data.sh
bash scripts/make-test-data.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --profile ci
