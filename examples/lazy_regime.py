"""Lazy regime: distance of finite nets and of the alpha-Mean-ODE to the lazy ODE (alpha -> inf) vs
alpha, at toy size (erf activation: closed-form lazy kernel). Usage: python examples/lazy_regime.py [OUT_DIR]"""

import sys

import torch
from meanode import plots
from meanode.sweep import SweepSpec, run_sweeps

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "examples-out/lazy_regime"
    base = dict(D=2, K=2, eta=0.2, N=10, activation="erf")
    alphas = [0.5, 1, 2, 4, 8]
    lazy = SweepSpec.create("lazy", grid=dict(alpha=alphas), zip=dict(L=[8, 32], M=[8, 32]), fixed=base, seeds=8,
                            reference=dict(method="lazy"))
    gap = SweepSpec.create("lazy_gap", grid=dict(alpha=alphas), fixed=dict(base, L=32, M=32), seeds=8,
                           reference=dict(method="quadrature"))
    r_l, r_g = run_sweeps([(lazy, f"{out}/lazy"), (gap, f"{out}/gap")], executor="serial", ref_dir=f"{out}/references")
    for f in plots.lazy(r_l.dataset, r_g.dataset, out):
        print("wrote", f)
