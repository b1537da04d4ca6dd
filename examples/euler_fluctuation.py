"""The error split of SPEC §7: Euler part (seed mean, slope -1 vs L) and fluctuation part (seed
std, slope -1/2 vs L*M), at toy size. Usage: python examples/euler_fluctuation.py [OUT_DIR]

The Euler part (~0.05/L here) is only visible where it beats the seed noise of the mean,
~0.3/sqrt(L M E): small L, a wide layer, many seeds.
"""

import sys

import torch
from meanode import plots
from meanode import analysis as R
from meanode.sweep import SweepSpec, run_sweeps

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "examples-out/euler_fluctuation"
    base = dict(D=2, K=2, alpha=1.0, eta=0.2, N=10)
    ref = dict(method="quadrature")
    euler = SweepSpec.create("euler", grid=dict(L=[2, 4, 8]), fixed=dict(base, M=256), seeds=48, reference=ref)
    width = SweepSpec.create("width", grid=dict(L=[4, 16, 64], M=[1, 4, 16]), fixed=base, seeds=8, reference=ref)
    r_e, r_w = run_sweeps([(euler, f"{out}/euler"), (width, f"{out}/width")], executor="serial",
                          ref_dir=f"{out}/references")
    fit = R.fit_slope(R.stack(r_e.dataset), R.FitSpec("e", "Euler part", "euler", "euler_f", "L", -1.0))
    print(f"Euler slope vs L: {fit.slope:+.3f} (predicted -1), {fit.n_used} points fitted")
    for e in fit.excluded:
        print("  not fitted:", e)
    for f in plots.euler_fluctuation(r_e.dataset, r_w.dataset, out):
        print("wrote", f)
