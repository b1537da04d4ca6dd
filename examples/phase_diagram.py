"""Phase diagram of SPEC §5 over (a, b) (Scaling(a, b)): each cell classified from exponents vs L*M
measured on L = M = 4..16, predicted boundaries overlaid, at toy size.
Usage: python examples/phase_diagram.py [OUT_DIR]

At these toy sizes the boundaries blur (SPEC §5: classify with margins); ``meanode reproduce
--preset quick`` uses L = M = 8..64 on a 5 x 5 grid and recovers the predicted regime in 24 of 25 cells.
"""

import sys

import torch
from meanode import plots
from meanode import analysis as R
from meanode.sweep import SweepSpec, run_sweep

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "examples-out/phase_diagram"
    spec = SweepSpec.create("phase", grid=dict(a=[0.5, 0.75, 1.0], b=[0.0, 0.5, 1.0]), zip=dict(L=[4, 8, 16], M=[4, 8, 16]),
                            fixed=dict(D=2, K=3, eta=0.5, N=10), seeds=4, reference=dict(method="none"),
                            measure=dict(linearisation=True))
    ds = run_sweep(spec, f"{out}/sweep", executor="serial").dataset
    rows = R.phase_table(R.stack(ds))
    for r in rows:
        print(f"a={r['a']:<5g} b={r['b']:<5g} measured {r['regime']:<22} predicted {r['predicted']}")
    for f in plots.phase_diagram(ds, out, rows=rows):
        print("wrote", f)
