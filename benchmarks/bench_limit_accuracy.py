"""Accuracy per second of the Mean ODE limit of a tanh 2LP ResNet: node rules compared.

    python benchmarks/bench_limit_accuracy.py [--threads 2] [--D 2] [--K 5 15]
        [--d4] [--finite] [--no-pilot] [--reference-extra 3] [--json out.json]

Problem: ``meanode.Problem.default(D)`` (N = 10, d_in = d_out = 5), tanh, alpha = 1, eta = 0.2.
For each (D, K) it reports, for

* ``lattice``: what ``mean_ode_limit(method="quadrature")`` does by default (``rule="auto"``): a
  pilot run at ~0.6 x the level whose ridges orient the rotated A2/D4*/E8 lattices
  (``--no-pilot``: ``orient="screened"``), ``level`` vs ``coarse`` and the spacing from
  ``LEVELS`` (step h = spacing / level);
* ``gauss_hermite``: tensor Gauss-Hermite, n vs ~2n/3 with n chosen for about the same wall time;
* ``rqmc``: scrambled Sobol, 8 replicates of 2^m nodes, m chosen for about the same wall time;

the error estimate (``LimitResult.error_estimate``: level gap or 3 RQMC standard errors plus
solver and depth allowances), the true error against a finer reference (max-abs over all
steps, samples and outputs), the folded node count of the finer level (RQMC: of all
replicates) and the wall time (pilot included). The reference is the lattice family
``--reference-extra`` levels finer than the recommended one (screened rotations, seed 1, 2,
...); its uncertainty is its own level gap and, with ``--reference-seeds`` > 1, 3 standard errors
over the rotation seeds. With ``--reference-single`` (default for D = 4, where a second fine
level costs ~10 minutes) the reference is one level only, its uncertainty unknown but far below
the recommended rule's (two levels finer). The honesty check is ``true error <= estimate``.

``--finite``: the "largest finite network as the limit" practice: ``train_resnet(L=50,
M=2000, steps=K, seeds=(0,))`` against the reference, RMS per output coordinate.
All solves use depth_nodes="auto" (17 Chebyshev nodes, refined when the depth allowance exceeds
the quadrature gap), rtol = 1e-9, atol = 1e-11 (1e-8 / 1e-10 for D = 4, whose target is 1e-4).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

import meanode as mn
from meanode.limit import mean_ode_limit
from meanode.limit import quadrature as q

ALPHA, ETA = 1.0, 0.2
SOLVE = {D: dict(rtol=1e-9, atol=1e-11) for D in (1, 2, 3)}
SOLVE[4] = dict(rtol=1e-8, atol=1e-10)
# (D, K) -> (spacing, level, coarse) of the lattice rule (step h = spacing / level). For D = 4 the
# E8 node counts jump by shells (spacing 10.2: 397,080 folded nodes at level 14, 556,920 at 15)
LEVELS = {(1, 5): (3.0, 60, 50), (1, 15): (3.0, 60, 50),
          (2, 5): (3.0, 13, 12), (2, 15): (3.0, 12, 11),
          (3, 5): (6.0, 10, 9), (3, 15): (6.0, 10, 9),
          (4, 5): (10.0, 13, 12), (4, 15): (10.2, 15, 14)}


def _limit(prob, K, **opts):
    t0 = time.perf_counter()
    res = mean_ode_limit(**prob.arrays(), alpha=ALPHA, eta=ETA, steps=K, method="quadrature", **SOLVE[prob.D],
                         **opts)
    t = time.perf_counter() - t0
    print(f"  ... D={prob.D} K={K} {res.method}: {res.config['nodes']} nodes, estimate {res.error_estimate:.2e}, "
          f"{t:.1f} s", file=sys.stderr, flush=True)
    return res, t


def lattice_method(prob, K, spacing, level, coarse, pilot=True):
    """The default rule; returns (result, wall seconds including the pilot)."""
    return _limit(prob, K, rule="lattice", spacing=spacing, level=level, coarse=coarse,
                  orient="pilot" if pilot else "screened")


def _gh_cost(n, dz):
    """Folded nodes of tensor Gauss-Hermite n and its default coarse level ~2n/3."""
    c = max(1, min(n - 1, 2 * round(n / 3)))
    return ((n**dz + 1) // 2) + ((c**dz + 1) // 2)


def equal_time_gh(prob, K, seconds, per_node):
    dz = 2 * prob.D
    n = 4
    while _gh_cost(n + 1, dz) * per_node <= seconds and n < 64:
        n += 1
    return _limit(prob, K, rule="gauss_hermite", level=n)


def equal_time_rqmc(prob, K, seconds, per_node, replicates=8):
    m = 4  # 2^m antithetic nodes per replicate, 2^(m-1) after folding
    while 2 ** m * replicates * per_node <= seconds and m < 22:
        m += 1
    return _limit(prob, K, rule="rqmc", level=m, replicates=replicates)


def reference(prob, K, spacing, level, extra, seeds=1, single=False):
    """Finer lattice computations with ``seeds`` independent rotation seeds.

    Returns (f: mean of their outputs, uncertainty, list of results, wall seconds). The
    uncertainty is the largest of their own level gaps (NaN with ``single``: one level each)
    and, for several seeds, 3 standard errors of their mean."""
    t0 = time.perf_counter()
    res = []
    for sd in range(1, seeds + 1):
        fam = q.lattice_family(spacing, seed=sd)
        coarse = 1 if single else level + extra - 1  # level 1: a handful of nodes, no information
        r, _ = _limit(prob, K, rule=fam, level=level + extra, coarse=coarse)
        res.append(r)
    fs = np.stack([r.f for r in res])
    unc = float("nan") if single else max(r.error_parts["quadrature"] for r in res)
    if seeds > 1:
        unc = max(unc, 3.0 * float(np.max(fs.std(0, ddof=1))) / math.sqrt(seeds))
    return fs.mean(0), unc, res, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--D", type=int, nargs="+", default=[2])
    ap.add_argument("--K", type=int, nargs="+", default=[5, 15])
    ap.add_argument("--d4", action="store_true", help="also D = 4, K = 15 (slow: ~10 min per method)")
    ap.add_argument("--finite", action="store_true", help="also train_resnet(L=50, M=2000) against the reference")
    ap.add_argument("--no-pilot", action="store_true", help="lattice rotations without the pilot's ridges")
    ap.add_argument("--no-baselines", action="store_true", help="skip Gauss-Hermite and RQMC")
    ap.add_argument("--level", type=int, default=None, help="override the lattice level (coarse = level-1)")
    ap.add_argument("--reference-extra", type=int, default=None,
                    help="reference: this many lattice levels finer (default 3; 1 for D = 4)")
    ap.add_argument("--reference-seeds", type=int, default=1,
                    help="average the reference over this many rotation seeds (uncertainty: their spread)")
    ap.add_argument("--reference-single", action="store_true",
                    help="one reference level (no gap); default for D = 4")
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    ap.add_argument("--save", default=None, help="write every run's outputs f (npz) here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [(D, K) for D in args.D for K in args.K]
    if args.d4:
        cases.append((4, 15))
    rows = []
    saved = {}
    print(f"threads={args.threads}  alpha={ALPHA} eta={ETA}  solve={SOLVE}")
    hdr = f"{'D':>2} {'K':>3} {'method':<34} {'nodes':>8} {'estimate':>9} {'true err':>9} {'wall s':>7}"
    for D, K in cases:
        prob = mn.Problem.default(D=D)
        spacing, level, coarse = LEVELS[(D, K)]
        if args.level is not None:
            level, coarse = args.level, args.level - 1
        best, t_best = lattice_method(prob, K, spacing, level, coarse, pilot=not args.no_pilot)
        nodes_best = best.config["nodes"]
        nodes_coarse = q.lattice_size(spacing / coarse, 2 * D) // 2
        per_node = t_best / (nodes_best + nodes_coarse)
        runs = [(f"lattice{' (pilot ridges)' if not args.no_pilot else ''} {level} vs {coarse}", best, t_best,
                 nodes_best)]
        if not args.no_baselines:
            gh, t = equal_time_gh(prob, K, t_best, per_node)
            runs.append((f"gauss_hermite {gh.config['level']} vs {gh.config['coarse']}", gh, t, gh.config["nodes"]))
            rq, t = equal_time_rqmc(prob, K, t_best, per_node)
            runs.append((f"rqmc 2^{rq.config['level']} x {rq.config['replicates']}", rq, t,
                         rq.config["nodes"] * rq.config["replicates"] // 2))
        extra = args.reference_extra if args.reference_extra is not None else (1 if D >= 4 else 3)
        single = args.reference_single or D >= 4
        f_ref, ref_unc, refs, t_ref = reference(prob, K, spacing, level, extra, args.reference_seeds, single)
        ref = refs[0]
        ref_name = f"{ref.config['level']}" + ("" if single else f" vs {ref.config['coarse']}")
        runs.append((f"reference lattice {ref_name} x{len(refs)}", ref, t_ref,
                     ref.config["nodes"] * len(refs)))
        print(f"\nD={D} K={K}: reference uncertainty {ref_unc:.2e} (level gaps; 3 s.e. over rotation seeds)")
        print(hdr)
        for name, res, t, nodes in runs:
            true = float(np.max(np.abs(res.f - f_ref))) if res is not ref else float("nan")
            if res is ref:
                honest = ""
            elif true <= res.error_estimate:
                honest = "ok"
            elif math.isfinite(ref_unc) and true <= res.error_estimate + ref_unc:
                honest = "ok within reference uncertainty"
            else:
                honest = "NOT HONEST"
            est = float("nan") if res is ref and single else res.error_estimate  # one level: no estimate
            print(f"{D:>2} {K:>3} {name:<34} {nodes:>8} {est:>9.2e} {true:>9.2e} {t:>7.1f} {honest}")
            rows.append(dict(D=D, K=K, method=name, nodes=int(nodes), estimate=est,
                             parts=res.error_parts, true_error=true, reference_uncertainty=ref_unc, wall_s=t,
                             honest=honest))
            saved[f"D{D}_K{K}_{name}"] = res.f
        saved[f"D{D}_K{K}_reference_mean"] = f_ref
        if args.finite:
            t0 = time.perf_counter()
            tr = mn.train_resnet(**prob.arrays(), L=50, M=2000, alpha=ALPHA, eta=ETA, steps=K, seeds=(0,))
            t = time.perf_counter() - t0
            diff = tr.f[0] - f_ref
            rms = float(np.sqrt(np.mean(diff**2)))
            rms_k = np.sqrt(np.mean(diff**2, axis=(1, 2)))
            print(f"{D:>2} {K:>3} {'finite L=50 M=2000 seed 0':<34} {'':>8} {'':>9} {rms:>9.2e} {t:>7.1f} "
                  f"(RMS per output coordinate; at k=K {rms_k[-1]:.2e}; max-abs {np.max(np.abs(diff)):.2e})")
            rows.append(dict(D=D, K=K, method="finite L=50 M=2000", rms=rms, rms_last=float(rms_k[-1]),
                             max_abs=float(np.max(np.abs(diff))), wall_s=t))
    if args.save:
        np.savez(args.save, **saved)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
