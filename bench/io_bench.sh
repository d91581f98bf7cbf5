#!/usr/bin/env bash
# Load+save benchmark on a model with GIB of external fp32 weights: `adaptc rewrite` (identity)
# against onnx_ir (Python, lazy load) doing the same work, alternating, on a quiet machine.
#
#   bench/io_bench.sh [GIB=1.0] [RUNS=3]
#
# Prints a markdown table (wall seconds and peak RSS per run) and the ratio of medians; paste
# it into bench/results/. Do not run anything else meanwhile: on 2 cores that skews times.
set -euo pipefail
cd "$(dirname "$0")/.."
gib=${1:-1.0}
runs=${2:-3}
venv=${ADAPTC_BENCH_VENV:-target/bench-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet numpy onnx onnx_ir
fi
cargo build --release --quiet
work=$(mktemp -d /tmp/adaptc-io.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in" "$work/adaptc" "$work/onnx_ir"
"$venv/bin/python" bench/make_big_model.py "$work/in" --gib "$gib" >/dev/null
in="$work/in/model.onnx"
# Warm the page cache for both tools alike.
cat "$work/in/model.onnx.data" >/dev/null

echo "| run | tool | wall s | peak RSS MiB |"
echo "|---|---|---|---|"
a_times=(); b_times=()
for i in $(seq "$runs"); do
  rm -f "$work"/adaptc/* "$work"/onnx_ir/*
  /usr/bin/time -o "$work/time.txt" -f "%e %M" target/release/adaptc rewrite "$in" -o "$work/adaptc/out.onnx" 2>/dev/null
  set -- $(tail -n1 "$work/time.txt"); echo "| $i | adaptc rewrite | $1 | $(( $2 / 1024 )) |"; a_times+=("$1")
  j=$("$venv/bin/python" bench/onnx_ir_baseline.py "$in" "$work/onnx_ir/out.onnx")
  w=$(echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["total_s"], d["peak_rss_mib"])')
  set -- $w; echo "| $i | onnx_ir load+save | $1 | $2 |"; b_times+=("$1")
done
cmp "$work/adaptc/out.onnx.data" "$work/in/model.onnx.data" && echo "(adaptc's data file is byte-identical to the input's)"
python3 - "${a_times[*]}" "${b_times[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"\nmedian: adaptc {ma:.3f} s, onnx_ir {mb:.3f} s (wall, load+save incl. process start for adaptc); onnx_ir/adaptc = {mb/ma:.2f}x")
PY
