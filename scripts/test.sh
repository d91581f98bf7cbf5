#!/usr/bin/env bash
# The project's test command (README, .ci/run): fetch the ONNX backend test data from PyPI,
# build the exported test models and training sets (scripts/make-test-data.sh), fetch NVRTC
# (scripts/fetch-nvrtc.sh), then check formatting (rustfmt.toml), lint and run every test of
# the workspace with the CUDA backend built in (profile `ci`:
# optimized, with debug assertions; it also builds target/ci/adaptc for the cross-check suite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-test-data.sh
bash scripts/make-test-data.sh
# NVRTC (no GPU needed) lets the CUDA suite compile every kernel here.
nvrtc_lib=$(bash scripts/fetch-nvrtc.sh)
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo fmt --all --check
# The CUDA kernels run on the CPU (g++ and a shim emulating blocks, barriers and warp
# shuffles) against double-precision references; only failures and the summary are printed.
bash scripts/emulate-kernels.sh | grep -v '^ok '
# The workspace is built and tested with the CUDA backend compiled in (it loads the CUDA
# libraries only when a session asks for the device); the runtime is linted without it too.
cargo clippy --workspace --all-targets --locked --features cuda -- -D warnings
cargo clippy -p adaptc-runtime --all-targets --locked -- -D warnings
cargo test --workspace --locked --profile ci --features cuda
