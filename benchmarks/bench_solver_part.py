"""The solver part of a quadrature limit, checked: the ODE solver's error on a fixed node set.

For each case (K = 15, default-shaped data, ``Lattice(level, replicates=1, orient="screened")``,
17 depth nodes) the same node set is solved at rtol 1e-13 (atol 1e-15), the reference, and at
rtol 1e-11 ... 1e-7 (atol = rtol / 100). Per rtol: the max-abs error of ``f`` and ``h`` against
the reference, the allowance ``10 (rtol max|f| + atol)``, the gap to the solve at 10 x rtol (what
the solver twin of :mod:`meanode.limit.estimate` measures) and the solver part the limit reports
with ``solver_twin=True``. The table in ``docs/error_estimates.md`` ("The solver part") came
from these cases.

    python benchmarks/bench_solver_part.py --threads 2 --json solver_part.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import meanode as mn

#: (D, data and embedding seed, lattice level, activation, eta)
CASES = [(4, 0, 9, "tanh", 0.2), (4, 0, 7, "tanh", 0.2), (3, 1, 9, "tanh", 0.5), (4, 2, 8, "erf", 0.3)]
RTOLS = (1e-11, 1e-10, 1e-9, 1e-8, 1e-7)


def run_case(D: int, seed: int, level: int, act: str, eta: float) -> list[dict]:
    prob = mn.Problem.default(D=D, data_seed=seed, embed_seed=seed)
    kw = dict(alpha=1.0, eta=eta, steps=15, activation=act, depth_nodes=17,
              rule=mn.Lattice(level=level, replicates=1, orient="screened"))
    ref = mn.mean_ode_limit(**prob.arrays(), rtol=1e-13, atol=1e-15, **kw)
    runs = {}
    for rtol in RTOLS:
        t0 = time.perf_counter()
        runs[rtol] = (mn.mean_ode_limit(**prob.arrays(), rtol=rtol, atol=rtol / 100, solver_twin=True, **kw),
                      time.perf_counter() - t0)
    rows = []
    for rtol, (r, seconds) in runs.items():
        looser = runs.get(rtol * 10)
        row = dict(D=D, seed=seed, level=level, activation=act, eta=eta, rtol=rtol, seconds=seconds,
                   error_f=float(np.abs(r.f - ref.f).max()), error_h=float(np.abs(r.h - ref.h).max()),
                   allowance_f=10 * (rtol * float(np.abs(r.f).max()) + rtol / 100),
                   solver_part_f=r.error_parts["solver"], solver_part_h=r.h_error_parts["solver"],
                   gap10_f=None if looser is None else float(np.abs(r.f - looser[0].f).max()),
                   gap10_h=None if looser is None else float(np.abs(r.h - looser[0].h).max()))
        rows.append(row)
        print(f"D={D} {act} seed {seed} level {level} rtol {rtol:.0e}: error f {row['error_f']:.1e} h "
              f"{row['error_h']:.1e}, allowance f {row['allowance_f']:.1e}, solver part f {row['solver_part_f']:.1e} "
              f"h {row['solver_part_h']:.1e} ({seconds:.1f} s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", type=int, nargs="*", help="case indices")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for i, case in enumerate(CASES):
        if args.only is None or i in args.only:
            rows += run_case(*case)
    covered = [r["solver_part_f"] >= r["error_f"] and r["solver_part_h"] >= r["error_h"] for r in rows]
    print(f"solver part >= error (f and h) in {sum(covered)} of {len(rows)} rows; the allowance alone in "
          f"{sum(r['allowance_f'] >= r['error_f'] for r in rows)} of {len(rows)} (f)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
