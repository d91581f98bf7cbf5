#!/usr/bin/env python3
"""Build a large ONNX model for load/save benchmarks, without holding it in memory.

    python bench/make_big_model.py OUT_DIR [--gib 1.0] [--dim 4096] [--seed 0]

Writes OUT_DIR/model.onnx and OUT_DIR/model.onnx.data. The graph is a chain of MatMuls
    x[1, dim] -> MatMul(., W_0) -> MatMul(., W_1) -> ... -> y[1, dim]
with W_i float32 [dim, dim] (64 MiB each at dim=4096; --gib 1.0 gives 16 of them).
Every weight lives in the ONE external file `model.onnx.data` (relative location),
packed back to back. Weights are drawn from numpy's default_rng(seed) scaled by
1/sqrt(dim) (so activations stay O(1)) and written a block of rows at a time: at most
one block (a few MiB) is in memory, never a whole weight, let alone the model.

Needs only numpy and onnx (scripts/requirements-fixtures.txt). Prints one JSON line.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

DATA_NAME = "model.onnx.data"
ROWS_PER_BLOCK = 256  # 256 x 4096 x 4 B = 4 MiB


def main() -> int:
    ap = argparse.ArgumentParser(description="chain-of-MatMuls model with streamed external data")
    ap.add_argument("out_dir")
    ap.add_argument("--gib", type=float, default=1.0, help="approximate total weight size in GiB")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    dim = args.dim
    wbytes = dim * dim * 4
    n = max(1, round(args.gib * (1 << 30) / wbytes))
    os.makedirs(args.out_dir, exist_ok=True)
    data_path = os.path.join(args.out_dir, DATA_NAME)
    model_path = os.path.join(args.out_dir, "model.onnx")

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    scale = np.float32(1.0 / np.sqrt(dim))
    inits, nodes = [], []
    offset = 0
    with open(data_path, "wb") as f:
        for i in range(n):
            for r in range(0, dim, ROWS_PER_BLOCK):
                rows = min(ROWS_PER_BLOCK, dim - r)
                block = rng.standard_normal((rows, dim), dtype=np.float32)
                block *= scale
                f.write(block.astype("<f4", copy=False).tobytes())
            t = TensorProto()
            t.name = f"W_{i}"
            t.data_type = TensorProto.FLOAT
            t.dims.extend([dim, dim])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", DATA_NAME), ("offset", str(offset)), ("length", str(wbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            offset += wbytes
            src = "x" if i == 0 else f"h_{i - 1}"
            dst = "y" if i == n - 1 else f"h_{i}"
            nodes.append(helper.make_node("MatMul", [src, f"W_{i}"], [dst], name=f"matmul_{i}"))

    graph = helper.make_graph(
        nodes,
        "big_matmul_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10,
                              producer_name="adaptc-bench-make_big_model")
    # the protobuf holds only metadata here; don't let onnx.save touch external data
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString())
    onnx.checker.check_model(model_path)  # path form: checks external-data references too
    print(json.dumps({
        "model": model_path, "data": data_path, "matmuls": n, "dim": dim,
        "data_bytes": os.path.getsize(data_path), "seconds": round(time.perf_counter() - t0, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
