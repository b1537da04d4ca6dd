"""Residual scale D^gamma/(L M) for gamma = 0, 1/2, 1 (alpha = D^(gamma - 1/2) in SPEC §1): unit,
pre-activation and feature movement vs D, at toy size. Usage: python examples/residual_scale.py [OUT_DIR]

Predicted exponents in D: unit movement -gamma, pre-activation movement 1/2 - gamma, features 0;
only gamma = 1/2 keeps the pre-activations moving Theta(1) (complete feature learning).
"""

import sys

import torch
from meanode import plots
from meanode.sweep import SweepSpec, run_sweep

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "examples-out/residual_scale"
    spec = SweepSpec.create("residual", grid=dict(D=[4, 8, 16, 32], gamma=[0.0, 0.5, 1.0]),
                            fixed=dict(K=2, eta=0.2, N=10, L=32, M=32), seeds=4, reference=dict(method="none"),
                            measure=dict(preactivation=True))
    ds = run_sweep(spec, f"{out}/sweep", executor="serial").dataset
    for f in plots.residual_scale(ds, out):
        print("wrote", f)
