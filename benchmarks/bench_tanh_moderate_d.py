"""What accuracy the tanh limit reaches at moderate D in a fixed time (issue 12, item 5).

* D = 4 (dz = 8 unit dimensions), default data, alpha = 1, eta = 0.2, K = 15: the default call,
  then ``tol`` (default 1e-4) with ``max_time`` (default 540 s): the estimate reached and the time;
  then one direct call (``--direct``, default level 16): ``Lattice(level, coarse=level - 1,
  replicates=1, spacing=10.6)`` at the tolerances ``tol`` sets (rtol 1e-8, atol 1e-10), i.e. one
  rotation at the level (802,200 folded nodes: the step just inside an E8 shell) and the gap to the
  level below, no spread check (the refinement's x 1.25 steps spend the
  budget on levels whose coarse partner is a step behind; this is the one level that fits).
* D = 8 (dz = 16, RQMC by default), K = 5: RQMC with 2^level points x 8 scramblings, the level
  raised while the next one fits in the time left; the estimate is 3 standard errors of the mean
  (max-abs over steps, samples, outputs) and the RMS standard error is printed beside it.

Figures are estimates (the gap of independently rotated levels or the scramblings' spread), not
bounds.

    python benchmarks/bench_tanh_moderate_d.py --threads 2 --json tanh_moderate_d.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import meanode as mn


def _direct(prob, kw, level: int, spacing: float | None, seed: int = 0):
    """One rotation at ``level`` against ``level - 1`` (the module docstring's direct call)."""
    rule = mn.Lattice(level=level, coarse=level - 1, replicates=1, spacing=spacing, seed=seed)
    t0 = time.perf_counter()
    res = mn.mean_ode_limit(**prob.arrays(), rule=rule, rtol=1e-8, atol=1e-10, **kw)
    return res, time.perf_counter() - t0


def d4(tol: float, max_time: float, direct: int = 16, skip_tol: bool = False, spacing: float | None = 10.6,
       check_seed: int | None = None) -> dict:
    prob = mn.Problem.default(D=4)
    kw = dict(alpha=1.0, eta=0.2, steps=15)
    t0 = time.perf_counter()
    default = mn.mean_ode_limit(**prob.arrays(), **kw)
    t_default = time.perf_counter() - t0
    print(f"D=4 default: {default.error_estimate:.2e} (h {default.h_error_estimate:.2e}) in {t_default:.0f} s, "
          f"{default.method}", flush=True)
    res, t = None, 0.0
    if not skip_tol:
        t0 = time.perf_counter()
        res = mn.mean_ode_limit(**prob.arrays(), tol=tol, max_time=max_time, **kw)
        t = time.perf_counter() - t0
        print(f"D=4 tol={tol:g}: {res.error_estimate:.2e} (h {res.h_error_estimate:.2e}) in {t:.0f} s, "
              f"met={res.tol_met}, {res.method}; {list(res.warnings)}", flush=True)
    direct_row = None
    if direct:
        dres, td = _direct(prob, kw, direct, spacing)
        direct_row = dict(level=direct, coarse=direct - 1, spacing=dres.rule.spacing, estimate=dres.error_estimate, h_estimate=dres.h_error_estimate,
                          seconds=td, parts=dres.error_parts, h_parts=dres.h_error_parts, nodes=dres.config.get("nodes"),
                          solver_twin=dres.config.get("solver_twin"), verified=dres.verified)
        print(f"D=4 {dres.method}, rtol 1e-8: {dres.error_estimate:.2e} (h {dres.h_error_estimate:.2e}) in {td:.0f} s, "
              f"{dres.config.get('nodes')} nodes; parts {dres.error_parts}", flush=True)
        if check_seed is not None:
            # an independent computation of the same size: the same level and spacing with other
            # rotations (pilot and levels), whose distance to the first is at most the sum of the two
            # estimates if both are honest (a necessary condition, not a proof)
            cres, tc = _direct(prob, kw, direct, spacing, seed=check_seed)
            dist_f, dist_h = float(abs(dres.f - cres.f).max()), float(abs(dres.h - cres.h).max())
            direct_row["check"] = dict(seed=check_seed, estimate=cres.error_estimate, h_estimate=cres.h_error_estimate,
                                       seconds=tc, distance_f=dist_f, distance_h=dist_h,
                                       covered_f=dist_f <= dres.error_estimate + cres.error_estimate,
                                       covered_h=dist_h <= dres.h_error_estimate + cres.h_error_estimate)
            print(f"D=4 check, seed {check_seed}: {cres.error_estimate:.2e} (h {cres.h_error_estimate:.2e}) in {tc:.0f} s; "
                  f"distance to the first {dist_f:.2e} (h {dist_h:.2e}) against the sum of the estimates "
                  f"{dres.error_estimate + cres.error_estimate:.2e} (h {dres.h_error_estimate + cres.h_error_estimate:.2e})",
                  flush=True)
    return dict(direct=direct_row, default_estimate=default.error_estimate, default_h=default.h_error_estimate, default_seconds=t_default,
                default_method=default.method, tol=tol, **({} if res is None else dict(
                    estimate=res.error_estimate, h_estimate=res.h_error_estimate, seconds=t, tol_met=bool(res.tol_met),
                    method=res.method, levels=res.config.get("levels_tried"), warnings=list(res.warnings))))


def d8(budget: float, start_level: int) -> dict:
    prob = mn.Problem.default(D=8)
    kw = dict(alpha=1.0, eta=0.2, steps=5)
    rows, t_all, level, last = [], time.perf_counter(), start_level, None
    while True:
        t0 = time.perf_counter()
        res = mn.mean_ode_limit(**prob.arrays(), rule=mn.RQMC(level=level, replicates=8), **kw)
        t = time.perf_counter() - t0
        row = dict(level=level, points=2**level, estimate=res.error_estimate, h_estimate=res.h_error_estimate,
                   rms_se=res.config.get("quadrature_rms_se"), seconds=t)
        rows.append(row)
        print(f"D=8 RQMC 2^{level} x 8: estimate {res.error_estimate:.2e} (RMS SE {row['rms_se']:.2e}) in {t:.0f} s",
              flush=True)
        last = row
        if time.perf_counter() - t_all + 2.2 * t > budget:  # the next level doubles the points
            break
        level += 1
    return dict(rows=rows, best=last, total_seconds=time.perf_counter() - t_all)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--max-time", type=float, default=540.0)
    ap.add_argument("--direct", type=int, default=16, help="D = 4 direct level (0: none)")
    ap.add_argument("--direct-spacing", type=float, default=10.6,
                    help="its lattice spacing (10.6: level 16 has 802,200 folded nodes, just inside an E8 shell; "
                         "the default 10 gives 1,437,480)")
    ap.add_argument("--skip-tol", action="store_true", help="D = 4: no tol= call")
    ap.add_argument("--check-seed", type=int, default=None,
                    help="D = 4: repeat the direct call with this rotation seed and compare the two")
    ap.add_argument("--d8-budget", type=float, default=600.0)
    ap.add_argument("--d8-start", type=int, default=12)
    ap.add_argument("--only", choices=["d4", "d8"], default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = dict(threads=a.threads)
    if a.only in (None, "d4"):
        out["d4"] = d4(a.tol, a.max_time, a.direct, a.skip_tol, a.direct_spacing, a.check_seed)
    if a.only in (None, "d8"):
        out["d8"] = d8(a.d8_budget, a.d8_start)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
