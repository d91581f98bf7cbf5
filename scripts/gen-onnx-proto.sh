#!/usr/bin/env bash
# Regenerates ir/src/onnx/proto.rs from ir/proto/onnx.proto (copied from the onnx wheel) with
# rust-protobuf's pure-Rust code generator, keeping proto2 field presence (an explicit `i: 0`
# stays distinguishable from an absent `i`, which lossless round trips need).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
cargo run --quiet --manifest-path scripts/gen-onnx-proto/Cargo.toml --target-dir target/gen-onnx-proto -- "$PWD/ir/proto" "$out"
{ echo "// Generated from ir/proto/onnx.proto (ONNX 1.22.0) by scripts/gen-onnx-proto.sh; do not edit."; sed 's/^#!\[allow(box_pointers)\]$//' "$out/onnx.rs"; } > ir/src/onnx/proto.rs
rm -rf "$out"
