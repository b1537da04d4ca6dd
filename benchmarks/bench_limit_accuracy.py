"""Accuracy per second of the Mean ODE limit of a tanh 2LP ResNet: node rules compared.

    python benchmarks/bench_limit_accuracy.py [--threads 1] [--D 2] [--K 5 15]
        [--d4] [--finite] [--no-pilot] [--reference-extra 3] [--json out.json]

Problem: ``meanode.Problem.default(D)`` (N = 10, d_in = d_out = 5), tanh, alpha = 1, eta = 0.2.
For each (D, K) it reports, for

* ``lattice``: the recommended rule: a pilot run (lattice level 7 vs 6) whose ridges orient
  the rotated D*/E8 lattices of :func:`meanode.limit.quadrature.lattice_family`
  (``--no-pilot``: plain screened rotations), ``level`` vs ``coarse`` from ``LEVELS``;
* ``gauss_hermite``: tensor Gauss-Hermite, levels n vs n-2 chosen for about the same wall time;
* ``rqmc``: scrambled Sobol, 8 replicates of 2^m nodes, m chosen for about the same wall time;

the error estimate (``LimitResult.error_estimate``: level gap or 3 RQMC standard errors plus
solver and depth allowances), the true error against a finer reference (max-abs over all
steps, samples and outputs), the folded node count of the finer level (RQMC: of all
replicates) and the wall time (pilot included). The reference is the lattice family ``--reference-extra`` levels finer than
the recommended one (1 for D = 4; two levels, with a different rotation seed; their own gap is
printed as its uncertainty). The honesty
check is ``true error <= estimate`` for every row.

``--finite``: the "largest finite network as the limit" practice: ``train_resnet(L=50,
M=2000, steps=K, seeds=(0,))`` against the reference, RMS per output coordinate.
All solves use depth_nodes = 13 (33 for D = 1), rtol = 1e-9, atol = 1e-11 (their allowances are
part of the estimates; at D = 2 depth_nodes = 13 agrees with 33 to 1.5e-8 at 2.5x less cost).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

import meanode as mn
from meanode.limit import mean_ode_limit
from meanode.limit import quadrature as q

ALPHA, ETA = 1.0, 0.2
SOLVE = dict(depth_nodes=13, rtol=1e-9, atol=1e-11)
# (D, K) -> (spacing, level, coarse) of the lattice family (step h = spacing / level)
LEVELS = {(1, 5): (3.0, 60, 50), (1, 15): (3.0, 60, 50),
          (2, 5): (3.0, 12, 11), (2, 15): (3.0, 11, 10),
          (3, 5): (6.0, 10, 9), (3, 15): (6.0, 10, 9),
          (4, 5): (10.0, 13, 12), (4, 15): (10.0, 14, 13)}
# D -> (spacing, level, coarse) of the pilot run
PILOT = {1: (3.0, 30, 25), 2: (3.0, 7, 6), 3: (6.0, 7, 6), 4: (10.0, 10, 9)}
# D = 1 trains violently (loss 13.3 -> 3.9 in one step): its depth profiles need 33 nodes
# (13 nodes: depth-interpolation allowance 6e-5)
DEPTH_NODES = {1: 33}


def _limit(prob, K, **opts):
    t0 = time.perf_counter()
    solve = dict(SOLVE, depth_nodes=DEPTH_NODES.get(prob.D, SOLVE["depth_nodes"]))
    res = mean_ode_limit(**prob.arrays(), alpha=ALPHA, eta=ETA, steps=K, method="quadrature", **solve, **opts)
    return res, time.perf_counter() - t0


def lattice_method(prob, K, spacing, level, coarse, pilot=True):
    """The recommended rule; returns (result, wall seconds including the pilot, family)."""
    from meanode.limit.adapt import ridge_samples

    t0 = time.perf_counter()
    dz = 2 * prob.D
    ridges = None
    if pilot:
        ps, pl, pc = PILOT[prob.D]
        fam0 = q.lattice_family(ps)
        pres, _ = _limit(prob, K, rule=fam0, level=pl, coarse=pc)
        ridges = ridge_samples(pres, fam0(pl, dz, float(prob.D)))
    fam = q.lattice_family(spacing, ridges=ridges)
    res, _ = _limit(prob, K, rule=fam, level=level, coarse=coarse)
    return res, time.perf_counter() - t0, fam


def _gh_nodes(n, dz):
    return (n**dz + 1) // 2


def equal_time_gh(prob, K, seconds, per_node):
    dz = 2 * prob.D
    n = 4
    while (_gh_nodes(n + 1, dz) + _gh_nodes(n - 1, dz)) * per_node <= seconds and n < 64:
        n += 1
    return _limit(prob, K, rule="gauss_hermite", level=n, coarse=n - 2)


def equal_time_rqmc(prob, K, seconds, per_node, replicates=8):
    m = 4  # 2^m antithetic nodes per replicate, 2^(m-1) after folding
    while 2 ** m * replicates * per_node <= seconds and m < 22:
        m += 1
    return _limit(prob, K, rule="rqmc", level=m, replicates=replicates)


def reference(prob, K, spacing, level, extra, seeds=1):
    """Finer lattice computations with ``seeds`` independent rotation seeds.

    Returns (f: mean of their outputs, uncertainty, list of results, wall seconds). The
    uncertainty is the largest of their own level gaps and, for several seeds, 3 standard
    errors of their mean."""
    t0 = time.perf_counter()
    res = []
    for sd in range(1, seeds + 1):
        fam = q.lattice_family(spacing, seed=sd)
        r, _ = _limit(prob, K, rule=fam, level=level + extra, coarse=level + extra - 1)
        res.append(r)
    fs = np.stack([r.f for r in res])
    unc = max(r.error_parts["quadrature"] for r in res)
    if seeds > 1:
        unc = max(unc, 3.0 * float(np.max(fs.std(0, ddof=1))) / math.sqrt(seeds))
    return fs.mean(0), unc, res, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
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
        best, t_best, fam = lattice_method(prob, K, spacing, level, coarse, pilot=not args.no_pilot)
        nodes_best = best.config["nodes"]
        nodes_coarse = (fam(coarse, 2 * D, float(D)).num_nodes + 1) // 2
        per_node = best.stats["wall_time"] / (nodes_best + nodes_coarse)
        runs = [(f"lattice{' (pilot ridges)' if not args.no_pilot else ''} {level} vs {coarse}", best, t_best,
                 nodes_best)]
        if not args.no_baselines:
            gh, t = equal_time_gh(prob, K, t_best, per_node)
            runs.append((f"gauss_hermite {gh.config['level']} vs {gh.config['coarse']}", gh, t, gh.config["nodes"]))
            rq, t = equal_time_rqmc(prob, K, t_best, per_node)
            runs.append((f"rqmc 2^{rq.config['level']} x {rq.config['replicates']}", rq, t,
                         rq.config["nodes"] * rq.config["replicates"] // 2))
        extra = args.reference_extra if args.reference_extra is not None else (1 if D >= 4 else 3)
        f_ref, ref_unc, refs, t_ref = reference(prob, K, spacing, level, extra, args.reference_seeds)
        ref = refs[0]
        runs.append((f"reference lattice {ref.config['level']} vs {ref.config['coarse']} x{len(refs)}", ref, t_ref,
                     ref.config["nodes"] * len(refs)))
        print(f"\nD={D} K={K}: reference uncertainty {ref_unc:.2e} (level gaps; 3 s.e. over rotation seeds)")
        print(hdr)
        for name, res, t, nodes in runs:
            true = float(np.max(np.abs(res.f - f_ref))) if res is not ref else float("nan")
            if res is ref:
                honest = ""
            elif true <= res.error_estimate:
                honest = "ok"
            elif true <= res.error_estimate + ref_unc:
                honest = "ok within reference uncertainty"
            else:
                honest = "NOT HONEST"
            print(f"{D:>2} {K:>3} {name:<34} {nodes:>8} {res.error_estimate:>9.2e} {true:>9.2e} {t:>7.1f} {honest}")
            rows.append(dict(D=D, K=K, method=name, nodes=int(nodes), estimate=res.error_estimate,
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
