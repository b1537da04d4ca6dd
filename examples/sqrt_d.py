"""The sqrt(D) law: error vs D at fixed L*M (slope +1/2 in embedding space), with the identity
activation (exact closure reference at any D) and the tanh fluctuation part (no reference needed),
at toy size. Usage: python examples/sqrt_d.py [OUT_DIR]"""

import sys

import torch
from meanode import plots
from meanode.sweep import SweepSpec, run_sweeps

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "examples-out/sqrt_d"
    base = dict(K=2, alpha=1.0, eta=0.2, N=10, L=32, M=32, D_max=64)
    ident = SweepSpec.create("dsweep_identity", grid=dict(D=[8, 16, 32, 64]), fixed=dict(base, activation="identity"),
                             seeds=8, reference=dict(method="closure"))
    tanh = SweepSpec.create("dsweep_tanh", grid=dict(D=[8, 16, 32, 64]), fixed=base, seeds=8,
                            reference=dict(method="none"))
    r_i, r_t = run_sweeps([(ident, f"{out}/identity"), (tanh, f"{out}/tanh")], executor="serial",
                          ref_dir=f"{out}/references")
    for f in plots.sqrt_D(r_i.dataset, r_t.dataset, out):
        print("wrote", f)
