"""Accuracy on request across data draws: one tolerance, several draws, time per draw.

Issue 15's case: D = 2, tanh, alpha = 1, eta = 0.2, K = 15, default-shaped data (N = 10,
d_in = d_out = 5), ``tol = 1e-6``. The default rule's own estimate varies by four orders of
magnitude across draws (one starts at loss 7.9 with |f| up to 5.5); with ``tol`` every draw should
meet the same tolerance, at a cost that grows with the difficulty of the draw. Each result is then
checked against a much finer, independently rotated lattice (1.25 x the last level, another
rotation seed, tail 1e-11), so the met tolerance is checked, not only claimed.

    python benchmarks/bench_tol_draws.py --draws 0 1 2 3 4 --json tol_draws.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

import meanode as mn


def run_draw(seed: int, tol: float, max_time: float, K: int, check: bool, default_call: bool = True,
             anisotropy: float = 1.0) -> dict:
    prob = mn.Problem.default(D=2, data_seed=seed, embed_seed=seed)
    kw = dict(alpha=1.0, eta=0.2, steps=K, activation="tanh")
    t0 = time.perf_counter()
    default = mn.mean_ode_limit(**prob.arrays(), **kw) if default_call else None
    t_default = time.perf_counter() - t0
    t0 = time.perf_counter()
    rule = "auto" if anisotropy == 1.0 else mn.Lattice(anisotropy=anisotropy)
    res = mn.mean_ode_limit(**prob.arrays(), tol=tol, max_time=max_time, rule=rule, **kw)
    seconds = time.perf_counter() - t0
    row = dict(seed=seed, default_estimate=default.error_estimate if default else math.nan,
               default_seconds=t_default if default else math.nan,
               estimate=res.error_estimate, h_estimate=res.h_error_estimate, tol_met=bool(res.tol_met),
               seconds=seconds, levels=[t["level"] for t in res.config.get("levels_tried", [])],
               coarse=[t["coarse"] for t in res.config.get("levels_tried", [])],
               levels_tried=res.config.get("levels_tried", []), nodes=res.config.get("nodes"), tail=getattr(res.rule, "tail", None), warnings=list(res.warnings),
               max_abs_f=float(np.abs(res.f).max()))
    if check:
        fine = max(res.rule.level + 2, math.ceil(1.25 * res.rule.level))
        rule = mn.Lattice(level=fine, coarse=res.rule.level + 1, seed=7919, replicates=2, tail=1e-11)
        t0 = time.perf_counter()
        ref = mn.mean_ode_limit(**prob.arrays(), rule=rule, rtol=1e-12, atol=1e-14, depth_nodes=33, **kw)
        row.update(ref_seconds=time.perf_counter() - t0, ref_estimate=ref.error_estimate,
                   err_f=float(np.abs(res.f - ref.f).max()), err_h=float(np.abs(res.h - ref.h).max()))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-time", type=float, default=1800.0)
    ap.add_argument("--K", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-check", action="store_true", help="skip the finer independent reference")
    ap.add_argument("--skip-default", type=int, nargs="*", default=[],
                    help="draws whose default call (the first column) is not run")
    ap.add_argument("--anisotropy", type=float, default=1.0,
                    help="Lattice(anisotropy=...) for the tol= call (default 1: the default rule)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    rows = []
    print(f"D = 2, tanh, alpha = 1, eta = 0.2, K = {a.K}, tol = {a.tol:g}, {a.threads} threads"
          + ("" if a.anisotropy == 1.0 else f", anisotropy {a.anisotropy:g}"), flush=True)
    print(f"{'seed':>4} {'default est':>11} {'est f':>9} {'est h':>9} {'met':>4} {'s':>7} {'levels':>14} "
          f"{'|f-ref|':>9} {'|h-ref|':>9} {'ref est':>9}", flush=True)
    for seed in a.draws:
        r = run_draw(seed, a.tol, a.max_time, a.K, not a.no_check, seed not in a.skip_default, a.anisotropy)
        rows.append(r)
        print(f"{seed:>4} {r['default_estimate']:>11.2e} {r['estimate']:>9.2e} {r['h_estimate']:>9.2e} "
              f"{str(r['tol_met']):>4} {r['seconds']:>7.1f} {str(r['levels']):>14} "
              f"{r.get('err_f', math.nan):>9.2e} {r.get('err_h', math.nan):>9.2e} {r.get('ref_estimate', math.nan):>9.2e}",
              flush=True)
        if a.json:  # after every draw: nothing lost if a later draw is interrupted
            with open(a.json, "w") as fh:
                json.dump(dict(tol=a.tol, K=a.K, threads=a.threads, anisotropy=a.anisotropy, rows=rows), fh, indent=1)
    met = sum(r["tol_met"] for r in rows)
    checked = [r for r in rows if "err_f" in r]
    within = sum(r["err_f"] <= a.tol and r["err_h"] <= a.tol for r in checked)
    print(f"tol met on {met} of {len(rows)} draws; within tol of the finer reference on {within} of {len(checked)}")
    return 0 if met == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
