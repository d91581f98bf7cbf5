#!/usr/bin/env bash
# Compiles runtime/src/cuda/kernels.cu as C++20 with g++ (through the CUDA shim in
# runtime/tests/cuda_emulated/shim.h) and runs every kernel on the CPU against double-precision
# references: an independent check of the kernels' index math, reductions and numerics on a
# machine without a GPU. Prints `ok <check>` / `FAIL <check>: …` and a summary; exits 1 when a
# check fails.
set -euo pipefail

cd "$(dirname "$0")/.."
mkdir -p target
g++ -std=c++20 -O1 -pthread -Wall -o target/emulate-kernels runtime/tests/cuda_emulated/emulate.cpp
target/emulate-kernels
