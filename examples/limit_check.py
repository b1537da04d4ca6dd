"""Limit check (like muP's coordinate check): per-step error vs L*M along L = M, one line per GD step,
at toy size. Usage: python examples/limit_check.py [OUT_DIR]"""

import sys

import torch
from meanode import plots
from meanode.sweep import SweepSpec, run_sweep

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "examples-out/limit_check"
    spec = SweepSpec.create("limitcheck", zip=dict(L=[4, 8, 16, 32, 64], M=[4, 8, 16, 32, 64]),
                            fixed=dict(D=2, K=3, alpha=1.0, eta=0.2, N=10), seeds=8,
                            reference=dict(method="quadrature"))
    ds = run_sweep(spec, f"{out}/sweep", executor="serial").dataset
    for f in plots.limit_check(ds, out):
        print("wrote", f)
