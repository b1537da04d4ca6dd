"""Error vs depth L for several hidden widths M, and the hidden-width figure (error vs L*M for
splits down to M = 1), at toy size (seconds). Usage: python examples/width.py [OUT_DIR]

The quick/full presets of ``meanode reproduce`` run the same sweep at real sizes.
"""

import sys

import torch
from meanode import plots
from meanode import analysis as R
from meanode.sweep import SweepSpec, run_sweep

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "examples-out/width"
    spec = SweepSpec.create(
        "width", grid=dict(L=[4, 16, 64, 256], M=[1, 4, 16]),
        fixed=dict(D=2, K=2, alpha=1.0, eta=0.2, activation="tanh", N=10, N_eval=3), seeds=8,
        reference=dict(method="quadrature"))
    ds = run_sweep(spec, f"{out}/sweep", executor="serial").dataset
    st = R.stack(ds)
    rate = R.fit_rate(st)
    fit = R.fit_slope(st, R.FitSpec("m1", "output error vs L*M, M = 1", "width", "total_f", "LM", -0.5,
                                    where=(("M", 1),)))
    print(f"slope vs L*M at M = 1: {fit.slope:+.3f} (predicted -1/2); rate model a = {rate.a:.3g}, b = {rate.b:.3g}")
    for f in plots.error_vs_L(ds, out, rate=rate) + plots.hidden_width(ds, out):
        print("wrote", f)
