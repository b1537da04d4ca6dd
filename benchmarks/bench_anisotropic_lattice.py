"""A lattice coarser across the direction of the sharpest ridges, on the hardest data draw of issue 15.

Draw 2 of ``benchmarks/bench_tol_draws.py`` (D = 2, tanh, alpha = 1, eta = 0.2, K = 15, default-shaped
data from seed 2) converges slowly under the default lattice (its estimate falls 3.8x from level 10
to 12). This script measures why and one remedy:

1. a pilot run (screened lattice, ``--pilot-level``) gives the ridge samples of
   :func:`meanode.limit.adapt.ridge_samples` (directions ``e`` and analyticity half-widths ``a`` in
   standard units); it prints the strips' quantiles and the eigenvalues of ``E[(e/a)(e/a)^T]``;
2. for each ``h:s`` of ``--configs``, two lattices of step ``h`` with independent Haar rotations
   and the step multiplied by ``s`` across the principal direction ``p`` of that matrix
   (:func:`meanode.limit.quadrature.lattice` with ``scale = I + (s - 1)(I - p p^T)``), solved with
   17 depth nodes; their largest difference of ``f`` (the gap) is an error figure of either (the
   ``h`` column is the whole estimate of ``h``: gap, depth and solver parts).

    python benchmarks/bench_anisotropic_lattice.py --threads 1 --configs 0.375:1 0.3:2 0.2:2 0.2:1.5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import meanode as mn
from meanode.limit.adapt import ridge_samples
from meanode.limit.options import RuleFamily
from meanode.limit.quadrature import Ridges, lattice

KW = dict(alpha=1.0, eta=0.2, steps=15, activation="tanh")


def pilot_ridges(prob: mn.Problem, level: int) -> tuple[Ridges, dict]:
    t0 = time.perf_counter()
    pilot = mn.mean_ode_limit(**prob.arrays(), **KW, rule=mn.Lattice(level=level, coarse=level - 1, replicates=1,
                                                                     orient="screened"))
    rd = ridge_samples(pilot, lattice(3.0 / level, 4, 2.0), max_samples=50_000)
    info = dict(pilot_seconds=time.perf_counter() - t0, pilot_estimate=pilot.error_estimate,
                strip_quantiles={q: float(np.quantile(rd.strips, q)) for q in (0.01, 0.05, 0.25, 0.5)},
                eigenvalues=np.linalg.eigvalsh(rd.resolution()).tolist(), direction=rd.principal_direction().tolist())
    return rd, info


def pair_gap(prob: mn.Problem, h: float, s: float, ridges: Ridges) -> dict:
    S = None if s == 1.0 else ridges.scale(s)

    def fn(level, d, var):  # level 1 and 2: two independent Haar rotations of the same lattice
        return lattice(h, d, var, rotation=1000 * level + 17, scale=S)

    fn.__name__ = f"scaled_lattice(h={h:g}, s={s:g})"
    t0 = time.perf_counter()
    res = mn.mean_ode_limit(**prob.arrays(), **KW, rule=RuleFamily(fn=fn, level=2, coarse=1), depth_nodes=17)
    return dict(h=h, s=s, nodes=res.config["nodes"], gap_f=res.error_parts["quadrature"],
                estimate_h=res.h_error_estimate, depth=res.error_parts["depth_interpolation"],
                seconds=time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draw", type=int, default=2)
    ap.add_argument("--pilot-level", type=int, default=6)
    ap.add_argument("--configs", nargs="+", default=["0.375:1", "0.3:2", "0.2:2", "0.2:1.5"], help="h:s pairs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    prob = mn.Problem.default(D=2, data_seed=args.draw, embed_seed=args.draw)
    ridges, info = pilot_ridges(prob, args.pilot_level)
    print(f"pilot {info['pilot_seconds']:.0f} s; strip quantiles {info['strip_quantiles']}; "
          f"eigenvalues of E[(e/a)(e/a)^T] {np.round(info['eigenvalues'], 3).tolist()}", flush=True)
    rows = []
    for cfg in args.configs:
        h, s = (float(x) for x in cfg.split(":"))
        r = pair_gap(prob, h, s, ridges)
        rows.append(r)
        print(f"h = {h:g}, s = {s:g}: {r['nodes']:,} nodes, gap f {r['gap_f']:.2e}, estimate h {r['estimate_h']:.2e}, "
              f"{r['seconds']:.0f} s", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(dict(draw=args.draw, pilot=info, rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
