#!/usr/bin/env python3
"""Baseline: how long onnx_ir takes (and how much memory) to load a model and save it
again with its weights in an external file.

    python bench/onnx_ir_baseline.py IN.onnx OUT.onnx

Loads IN with onnx_ir.load (external tensors stay lazy/memory-mapped), saves with
onnx_ir.save(model, OUT, external_data="<OUT name>.data"), i.e. weights go to one file
next to OUT. Prints one JSON line: load_s, save_s, total_s (wall), peak_rss_mib
(resource.getrusage(RUSAGE_SELF).ru_maxrss, KiB on Linux), and output sizes.
OUT must not be IN (onnx_ir would overwrite the data IN's tensors point at).
"""

import json
import os
import resource
import sys
import time

import onnx_ir as ir


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    if os.path.abspath(src) == os.path.abspath(dst):
        print("OUT must differ from IN", file=sys.stderr)
        return 2
    data_name = os.path.basename(dst) + ".data"
    t0 = time.perf_counter()
    model = ir.load(src)
    t1 = time.perf_counter()
    ir.save(model, dst, external_data=data_name)
    t2 = time.perf_counter()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data_path = os.path.join(os.path.dirname(os.path.abspath(dst)), data_name)
    print(json.dumps({
        "tool": "onnx_ir", "onnx_ir_version": ir.__version__, "in": src, "out": dst,
        "load_s": round(t1 - t0, 4), "save_s": round(t2 - t1, 4), "total_s": round(t2 - t0, 4),
        "peak_rss_mib": round(rss_kib / 1024, 1),
        "out_bytes": os.path.getsize(dst),
        "out_data_bytes": os.path.getsize(data_path) if os.path.exists(data_path) else 0,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
