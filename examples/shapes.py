"""Shapes of SPEC §6 with the largest network as reference: error vs M for several D at fixed L, and
error vs P = L M D along the optimal shapes (P^(-1/6) hidden, P^(-1/5) output), at toy size.
Usage: python examples/shapes.py [OUT_DIR]   (the full preset runs L = 50, M, D in [1, 2000])"""

import sys

import torch
from meanode import plots
from meanode.sweep import SweepSpec, run_sweeps

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "examples-out/shapes"
    base = dict(K=2, alpha=1.0, eta=0.2, N=10)
    md = SweepSpec.create("md", grid=dict(M=[1, 4, 16], D=[2, 8, 16]), fixed=dict(base, L=8, D_max=16), seeds=3,
                          reference=dict(method="network", L=8, M=256, D=16, seeds=3))
    ps = SweepSpec.create("psweep", zip=[dict(L=2, M=8, D=4), dict(L=3, M=23, D=8), dict(L=4, M=64, D=16)],
                          fixed=dict(base, D_max=32), seeds=3, reference=dict(method="network", L=6, M=181, D=32, seeds=3))
    r_md, r_p = run_sweeps([(md, f"{out}/md"), (ps, f"{out}/psweep")], executor="serial", ref_dir=f"{out}/references")
    for f in plots.shapes_MD(r_md.dataset, out) + plots.shapes_P(r_p.dataset, out):
        print("wrote", f)
