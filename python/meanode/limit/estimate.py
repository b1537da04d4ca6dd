"""Error estimates of a limit, for ``f`` and for ``h``, and accuracy on request (``tol=``, ``max_time=``).

A limit is computed from one or more engine :class:`~meanode.limit.result.Run` s. Its error
estimate has parts, each measured on the runs at hand, for the outputs ``f_k(x)`` (max-abs over
steps, samples, outputs) and, separately, the hidden states ``h_k(1, x)`` (max-abs over steps,
samples, coordinates):

* ``quadrature`` — node rules (SPEC §4.3). The ``level`` is computed with ``R`` independent node
  sets (lattice rotations; RQMC scramblings) and the result is their mean. For lattices and the
  deterministic rules the part is ``max(gap, spread)``: ``gap`` the largest difference to the
  ``coarse`` level (an independent rotation: errors shared by the levels do not cancel in it only
  when they are the rotation's), ``spread`` the largest range over the ``R`` replicates (what the
  rotation alone changes). For RQMC, 3 standard errors of the replicate mean.
* ``depth_interpolation`` — the Chebyshev tail of the trajectories (:class:`~.depth.DepthGrid`),
  times the largest value; ``solver`` — 10 x the local tolerance at the output scale.
* ``kernel`` (lazy limit with a quadrature kernel) — the gap between two kernel resolutions.

**Convergence check.** The rule's convergence model says the ``coarse`` level is worse than the
``level``: when the replicates at the ``level`` disagree more than the two levels do, the estimate
stands on a single rotation's luck and the result is flagged ``verified = False`` with the reason.

These are estimates, not proven bounds; ``docs/error_estimates.md`` gives the battery of cases
(``benchmarks/bench_error_battery.py``) on which each was checked against a much finer,
independently rotated reference, and the worst ratio found.

**Accuracy on request.** With ``tol``, the rule is refined (:meth:`~.options.RuleOptions.refined`:
the level becomes the coarse one; depth nodes as ``depth_nodes="auto"``) until both estimates are
at most ``tol``, or until the next level would not finish within ``max_time`` seconds (predicted
from the last level's time and the node counts), would not fit in memory, or until two refinements
in a row fail to halve the estimate (a floor of the rule); ``result.tol_met`` says which. A
lattice's ``tail`` (the Gaussian mass its radial map leaves out: the default 5e-8 floors the error
near 1e-7 at D = 1, measured) is set to at most ``tol / 1000``.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch

from ..solvers import ODEStats
from . import quadrature as q
from .result import LimitResult, Run

__all__ = ["package", "quadrature_limit", "mean_run", "AUTO_DEPTH"]

#: depth_nodes="auto": start here and double (2Q - 1, nested Chebyshev-Lobatto nodes) while the
#: depth-interpolation allowance exceeds the quadrature part, up to the maximum
AUTO_DEPTH = (17, 65)


def _solver_error(x: np.ndarray, rtol: float, atol: float) -> float:
    """Global error allowance of an adaptive solve: 10 x the local tolerance at the output scale."""
    return 10.0 * (rtol * float(np.max(np.abs(x))) + atol)


def mean_run(runs: list[Run]) -> Run:
    """The replicate mean of every trajectory: ``f``, ``H``, ``B`` averaged alike, so the result's
    ``h`` belongs to its ``f`` (``f = W_U^T h / D`` is linear)."""
    if len(runs) == 1:
        return runs[0]
    mean = lambda name: torch.stack([getattr(r, name) for r in runs]).mean(0)  # noqa: E731
    div = [r.diverged_step for r in runs if r.diverged_step >= 0]
    return Run(H=mean("H"), B=mean("B"), f=mean("f"), stats=ODEStats(), depth_tail=max(r.depth_tail for r in runs),
               choice=runs[0].choice, diverged_step=min(div) if div else -1)


def package(inp, spec, runs: list[Run], main: Run, method: str, quad: tuple[dict, dict], config: dict, t0: float,
            rule=None, lazy: bool = False, verified: bool = True, warnings: tuple = (), tol=None,
            tol_met=None) -> LimitResult:
    """A :class:`LimitResult` of ``main`` (e.g. a replicate mean) with the parts ``quad = (f_parts,
    h_parts)`` measured on ``runs``; the depth and solver allowances of ``f`` and ``h`` are added here."""
    stats = ODEStats()
    for r in runs:
        stats.add(r.stats)
    stats.wall_time = time.perf_counter() - t0
    N = inp.X.shape[0]
    H = main.H.cpu().numpy().copy()
    f_all = main.f.cpu().numpy().copy()
    diverged = [r.diverged_step for r in runs if r.diverged_step >= 0]
    diverged_step = min(diverged) if diverged else -1
    fparts, hparts = dict(quad[0]), dict(quad[1])
    if diverged:  # nothing honest to say about the error of a diverged limit
        fparts = {k: math.nan for k in fparts}
        hparts = {k: math.nan for k in hparts}
        f_all[diverged_step:] = np.nan
        H[diverged_step:] = np.nan
    h_all = H[:, -1]
    tail = max(r.depth_tail for r in runs)
    for parts, x in ((fparts, f_all), (hparts, h_all)):
        ok = not diverged and np.isfinite(x).all() and x.size
        parts["depth_interpolation"] = tail * float(np.max(np.abs(x))) if ok else math.nan
        parts["solver"] = _solver_error(x, inp.rtol, inp.atol) if ok else math.nan
    loss = 0.5 * np.sum((f_all[:, :N] - inp.Y.cpu().numpy()) ** 2, axis=(1, 2)) / N
    has_eval = f_all.shape[1] > N
    choice = runs[0].choice or spec.choice
    config = dict(config, backend=choice.backend, depth_nodes=spec.grid.Q)
    return LimitResult(
        f=f_all[:, :N], h=h_all[:, :N],
        f_eval=f_all[:, N:] if has_eval else None, h_eval=h_all[:, N:] if has_eval else None,
        loss=loss, error_estimate=float(sum(fparts.values())), error_parts=fparts,
        h_error_estimate=float(sum(hparts.values())), h_error_parts=hparts, method=method,
        solver=choice, stats=stats, depth=spec.grid, H=H, B=main.B.cpu().numpy(),
        alpha=None if lazy else inp.alpha, eta=inp.eta, rule=rule, diverged_step=diverged_step,
        verified=verified, warnings=tuple(warnings), tol=tol, tol_met=tol_met, config=config)


def _max_abs(a: torch.Tensor) -> float:
    return float(a.abs().max()) if a.numel() else 0.0


def _h1(run: Run) -> torch.Tensor:
    return run.H[:, -1]


def rms_standard_error(runs: list[Run]) -> float:
    """RMS over steps, samples and outputs of the standard error of the replicate mean of ``f``
    (the RQMC figure in the norm of RMS errors; the estimate itself is max-abs)."""
    fs = torch.stack([r.f for r in runs])
    return float((fs.std(0, unbiased=True) / math.sqrt(len(runs))).pow(2).mean().sqrt())


def _quad_parts(fine: list[Run], coarse: Run | None, rqmc: bool) -> tuple[dict, dict, bool, str]:
    """(f part, h part, verified, reason) of the quadrature estimate (module docstring)."""
    if rqmc:
        R = len(fine)
        fs, hs = torch.stack([r.f for r in fine]), torch.stack([_h1(r) for r in fine])
        se = lambda x: 3.0 * float((x.std(0, unbiased=True) / math.sqrt(R)).max())  # noqa: E731
        return {"quadrature": se(fs)}, {"quadrature": se(hs)}, True, ""

    m = mean_run(fine)
    gap_f = _max_abs(m.f - coarse.f)
    gap_h = _max_abs(_h1(m) - _h1(coarse))
    spread_f = spread_h = 0.0
    if len(fine) > 1:
        fs, hs = torch.stack([r.f for r in fine]), torch.stack([_h1(r) for r in fine])
        spread_f = _max_abs(fs.max(0).values - fs.min(0).values)
        spread_h = _max_abs(hs.max(0).values - hs.min(0).values)
    verified, reason = True, ""
    if len(fine) > 1 and spread_f > gap_f:
        verified = False
        reason = (f"the {len(fine)} rotations at the level disagree by {spread_f:.2e}, more than the gap "
                  f"{gap_f:.2e} to the coarse level: the levels do not behave as the rule's convergence "
                  "model says (raise the level, or tol=)")
    return ({"quadrature": max(gap_f, spread_f)}, {"quadrature": max(gap_h, spread_h)}, verified, reason)


class _Cache:
    """Runs by (level, replicate, depth nodes): a refined level reuses the previous one as its coarse."""

    def __init__(self, inp, backend, choice, rule, fold, ridges, progress):
        self.inp, self.backend, self.choice, self.rule = inp, backend, choice, rule
        self.fold, self.ridges, self.progress = fold, ridges, progress
        self.runs: dict[tuple, Run] = {}
        self.nodes: dict[int, int] = {}

    def node_set(self, level: int, rep: int, coarse: bool = False) -> q.Rule:
        block = self.inp.block
        var = float(block.variance)
        if hasattr(self.rule, "replicate_rules"):  # RQMC: a set of scramblings per level
            rule = self.rule.replicate_rules(block.dz, var, level)[rep]
        else:
            rule = self.rule.node_set(level, rep, block.dz, var, self.ridges, coarse=coarse)
        return rule.fold_odd_symmetry() if self.fold else rule

    def get(self, level: int, rep: int, Q: int, coarse: bool = False) -> Run:
        key = (level, rep, Q, coarse and hasattr(self.rule, "tail"))
        if key not in self.runs:
            rule = self.node_set(level, rep, coarse)
            if not coarse:
                self.nodes[level] = rule.num_nodes
            self.runs[key] = self.backend.run(self.inp.spec(self.choice, Q, self.progress), "quadrature", rule)
        return self.runs[key]


def _pilot_ridges(inp, backend, choice, rule, fold: bool, config: dict, t0: float):
    """Ridges of a cheap pilot: one lattice run at ~0.6 x the level (no error estimate needed)
    on the fixed grid of ``AUTO_DEPTH[0]`` nodes (so the orientation does not depend on
    ``depth_nodes``), whose trajectories give the ridge directions that orient the lattices of the
    real runs (:mod:`meanode.limit.adapt`)."""
    from .adapt import ridge_samples

    spec = inp.spec(choice, AUTO_DEPTH[0], False)
    node_set = rule.family()(rule.pilot_level(), inp.block.dz, float(inp.block.variance))
    pilot = backend.run(spec, "quadrature", node_set.fold_odd_symmetry() if fold else node_set)
    res = package(inp, spec, [pilot], pilot, "pilot", ({"quadrature": 0.0}, {"quadrature": 0.0}), config, t0, rule)
    return ridge_samples(res, node_set, block=inp.block, seed=rule.seed)


def quadrature_limit(inp, backend, choice, rule, fold: bool, progress: bool, config: dict, t0: float,
                     tol: float | None = None, max_time: float | None = None) -> LimitResult:
    """Quadrature nodes over z ~ mu0 (SPEC §4.3) with the estimates of the module docstring; with
    ``tol`` the rule is refined until both estimates meet it or ``max_time`` would be exceeded."""
    from .options import RQMC, Lattice

    ridges = None
    if isinstance(rule, Lattice):
        if rule.orient == "pilot":
            ridges = _pilot_ridges(inp, backend, choice, rule, fold, dict(config), t0)
            config.update(pilot_level=rule.pilot_level())
        config.update(spacing=rule.spacing, orient=rule.orient)
    if tol is not None and isinstance(rule, Lattice):  # the truncated tail is a floor of the lattice's error
        rule = replace(rule, tail=max(min(rule.tail, tol / 1000), MIN_TAIL))
    rqmc = isinstance(rule, RQMC)
    cache = _Cache(inp, backend, choice, rule, fold, ridges, progress)
    Q = AUTO_DEPTH[0] if inp.depth_nodes == "auto" else inp.depth_nodes
    tried: list[dict] = []
    while True:
        t_level = time.perf_counter()
        cache.rule = rule
        while True:  # depth nodes: refine while the depth allowance dominates (depth_nodes="auto")
            fine = [cache.get(rule.level, r, Q) for r in range(rule.replicates)]
            coarse = None if rqmc else cache.get(rule.coarse, 0, Q, coarse=True)
            fq, hq, verified, reason = _quad_parts(fine, coarse, rqmc)
            runs = fine + ([] if coarse is None else [coarse])
            config.update(level=rule.level, coarse=None if rqmc else rule.coarse, nodes=cache.nodes[rule.level],
                          replicates=rule.replicates)
            if rqmc:
                config["quadrature_rms_se"] = rms_standard_error(fine)
            label = rule.label() if rqmc else f"{rule.label()}" + (f" x {rule.replicates} rotations"
                                                                    if rule.replicates > 1 else "")
            res = package(inp, inp.spec(choice, Q, progress), runs, mean_run(fine), f"quadrature/{label}", (fq, hq),
                          config, t0, rule, verified=verified, warnings=(reason,) if reason else (), tol=tol)
            p = res.error_parts
            if (inp.depth_nodes != "auto" or Q >= AUTO_DEPTH[1] or res.diverged
                    or p["depth_interpolation"] <= max(p["quadrature"], p["solver"])):
                break
            Q = 2 * Q - 1
        tried.append(dict(level=rule.level, coarse=rule.coarse, depth_nodes=Q, error_estimate=res.error_estimate,
                          h_error_estimate=res.h_error_estimate, seconds=time.perf_counter() - t_level))
        if tol is None or res.diverged:
            return res
        met = res.error_estimate <= tol and res.h_error_estimate <= tol
        if met:
            return _with_tol(res, tol, True, tried, "")
        floor = max(res.error_parts["solver"], res.h_error_parts["solver"])
        if floor > tol:  # no level can help: the solver's own allowance is above the tolerance
            return _with_tol(res, tol, False, tried, f"tol = {tol:g} not met: the solver allowance {floor:.1e} alone "
                             "exceeds it (lower rtol and atol)")
        best = [max(t["error_estimate"], t["h_error_estimate"]) for t in tried]
        if len(tried) >= 3 and min(best[-2:]) > 0.5 * best[-3]:
            return _with_tol(res, tol, False, tried, f"tol = {tol:g} not met: the estimates stalled near "
                             f"{best[-1]:.1e} (max of f and h) over the last two refinements (a floor of the rule "
                             "at these options; try another rule or a smaller tail)")
        nxt = rule.refined(inp.block)
        ratio = nxt.num_nodes(inp.block.dz) / max(rule.num_nodes(inp.block.dz), 1)
        predicted = tried[-1]["seconds"] * ratio * (nxt.replicates + 1) / (rule.replicates + 1)
        elapsed = time.perf_counter() - t0
        if max_time is not None and elapsed + predicted > max_time:
            why = (f"tol = {tol:g} not met: estimates {res.error_estimate:.2e} (f), {res.h_error_estimate:.2e} (h) "
                   f"after {elapsed:.0f} s; the next level ({nxt.level}) would take ~{predicted:.0f} s more than "
                   f"max_time = {max_time:g} s allows")
            return _with_tol(res, tol, False, tried, why)
        if nxt.num_nodes(inp.block.dz) > q.rule._MAX_TENSOR_NODES:
            return _with_tol(res, tol, False, tried, f"tol = {tol:g} not met: the next level exceeds the node limit")
        avail = _available_bytes()  # None where /proc/meminfo is absent: no memory guard there
        need = _level_bytes(ratio) if avail is not None else 0.0
        if avail is not None and need > 0.5 * avail:
            return _with_tol(res, tol, False, tried, f"tol = {tol:g} not met: the next level ({nxt.level}) needs "
                             f"~{need / 2**30:.1f} GiB, more than half the {avail / 2**30:.1f} GiB available")
        rule = nxt


#: smallest lattice tail that ``tol`` asks for (below it the radius grows without a measurable gain)
MIN_TAIL = 1e-16


def _level_bytes(ratio: float) -> float:
    """Memory of the next level, on the safe side: this process's peak resident size so far (which
    holds the last level's runs and everything else) times the growth of the node count. Called
    only where :func:`_available_bytes` reads ``/proc/meminfo`` (Linux: ``resource`` exists and
    ``ru_maxrss`` is in KiB)."""
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024 * max(ratio, 1.0)


def _available_bytes() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _with_tol(res: LimitResult, tol: float, met: bool, tried: list, why: str) -> LimitResult:
    config = dict(res.config, levels_tried=tried)
    warnings = res.warnings + ((why,) if why else ())
    return replace(res, tol=tol, tol_met=met, warnings=warnings, config=config)
