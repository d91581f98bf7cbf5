"""Compares the loss curves of two `adaptc train` runs (metrics.jsonl): prints a table of the
steps and exits non-zero when any step's losses differ by more than TOL relative (default 1e-3;
fp32 on both backends, summation order differs).  Usage: compare_runs.py CPU_RUN CUDA_RUN"""
import json
import os
import sys


def losses(run):
    out = {}
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        print(f"loss curves: {path} is missing (the run failed): FAILED")
        sys.exit(1)
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r and "step" in r and "eval_loss" not in r:
                out[r["step"]] = (r["loss"], r.get("step_time_s"))
    return out


a, b = losses(sys.argv[1]), losses(sys.argv[2])
tol = float(os.environ.get("TOL", "1e-3"))
worst = 0.0
print(f"{'step':>5} {'cpu loss':>12} {'cuda loss':>12} {'rel diff':>10} {'cpu s':>8} {'cuda s':>8}")
for step in sorted(set(a) & set(b)):
    (la, ta), (lb, tb) = a[step], b[step]
    rel = abs(la - lb) / max(abs(la), 1e-12)
    worst = max(worst, rel)
    print(f"{step:>5} {la:>12.6f} {lb:>12.6f} {rel:>10.2e} {ta or 0:>8.4f} {tb or 0:>8.4f}")
steps = len(set(a) & set(b))
ok = steps > 0 and steps == len(a) == len(b) and worst <= tol
print(f"loss curves: {steps} steps compared, largest relative difference {worst:.2e} (tolerance {tol:g}): {'ok' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
