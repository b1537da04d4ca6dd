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
  times the largest value.
* ``solver`` — the allowance ``10 (rtol max|x| + atol)`` (closure, lazy) or, for quadrature,
  ``UNMEASURED_FACTOR = 10`` times it or a measurement:
  replicate 0 of the returned level solved again at 10 x ``rtol`` and ``atol`` (the *solver
  twin*), the part being the larger of the allowance and twice the largest difference of the two
  solves. If the looser solve's error is ``c`` times the run's with the same sign, the
  difference is ``(c - 1)`` times the run's error, so the factor 2 covers ``c >= 1.5``; on D = 3,
  4 with K = 15 the difference was 1.1-32 times the run's error (``docs/error_estimates.md``,
  ``benchmarks/bench_solver_part.py``).
  Measured because the allowance alone under-reports at tight tolerances (D = 4 tanh, rtol
  1e-10: error 1.4e-8 against 1.7e-9, up to 10.2x below) and because the solver's error changes
  with the node set by up to 10x (so the twin is of the level itself, not of a cheaper one). The twin is run once,
  for the returned level, and only where the solver could matter: where 10 x the allowance (the
  allowance under-reported by at most 10.2x in every case measured) is at most a tenth of the
  quadrature part, that figure is the part and no twin is run (``solver_twin=True`` / ``False``
  forces it / skips it; ``config["solver_twin"]`` says which).
* ``kernel`` (lazy limit with a quadrature kernel) — the gap between two kernel resolutions.

**Convergence check.** The rule's convergence model says the ``coarse`` level is worse than the
``level``: when the replicates at the ``level`` disagree more than the two levels do, the estimate
stands on a single rotation's luck and the result is flagged ``verified = False`` with the reason.

These are estimates, not proven bounds; ``docs/error_estimates.md`` gives the battery of cases
(``benchmarks/bench_error_battery.py``) on which each was checked against a much finer,
independently rotated reference, and the worst ratio found.

**Accuracy on request.** With ``tol``, the rule is refined (depth nodes as ``depth_nodes="auto"``)
until both estimates are at most ``tol``, or until the next level would not finish within
``max_time`` seconds (predicted from the last level's time and the node counts), would not fit in
memory, or until two refinements in a row fail to halve the estimate and, with several replicates,
their spread (a floor of the rule; a falling spread under a flat estimate is a converging rule
whose gap is the coarse level's error);
``result.tol_met`` says which. The next level is the rule's own step
(:meth:`~.options.RuleOptions.refined`; a lattice: x 1.25, compared with the level below it as the
default levels are) or, for rules whose estimates fall geometrically in the level (lattices, RQMC)
and once two levels are known, the level at which a log-linear fit of the estimates so far reaches
``tol / 2`` (:func:`model_level`), at most ``MAX_JUMP_NODES`` x the nodes; where that level would
not fit ``max_time``, the finest one between it and the rule's step that does. The fit only
chooses where to look: the returned estimate is always measured at the level returned. A
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

__all__ = ["package", "quadrature_limit", "mean_run", "model_level", "AUTO_DEPTH"]

#: the solver twin's tolerances, relative to the run's (module docstring)
TWIN_FACTOR = 10.0
#: the solver part is this many times the twin's gap (module docstring)
TWIN_SAFETY = 2.0
#: without ``tol``, where this many times the allowance is at most a tenth of the quadrature part
#: the twin is not run and that is the solver part (the allowance under-reported by up to 10.2x)
UNMEASURED_FACTOR = 10.0

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
            tol_met=None, solver_measured: tuple[float, float] | None = None, extra_runs: tuple = (),
            solver_factor: float = 1.0) -> LimitResult:
    """A :class:`LimitResult` of ``main`` (e.g. a replicate mean) with the parts ``quad = (f_parts,
    h_parts)`` measured on ``runs``; the depth and solver allowances of ``f`` and ``h`` are added here,
    the solver part is ``solver_factor`` x the allowance, or with ``solver_measured = (f, h)`` (the
    solver twin's) the larger of that and the allowance;
    ``extra_runs`` (the twin) count in the stats only."""
    stats = ODEStats()
    for r in (*runs, *extra_runs):
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
    for i, (parts, x) in enumerate(((fparts, f_all), (hparts, h_all))):
        ok = not diverged and np.isfinite(x).all() and x.size
        parts["depth_interpolation"] = tail * float(np.max(np.abs(x))) if ok else math.nan
        parts["solver"] = _solver_error(x, inp.rtol, inp.atol) if ok else math.nan
        if ok and solver_measured is not None:
            parts["solver"] = max(parts["solver"], float(solver_measured[i]))
        elif ok:
            parts["solver"] *= solver_factor
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


def _quad_parts(fine: list[Run], coarse: Run | None, rqmc: bool) -> tuple[dict, dict, bool, str, float]:
    """(f part, h part, verified, reason, spread) of the quadrature estimate (module docstring);
    ``spread``: the larger of the f and h ranges over the replicates (0 with one; RQMC: the part)."""
    if rqmc:
        R = len(fine)
        fs, hs = torch.stack([r.f for r in fine]), torch.stack([_h1(r) for r in fine])
        se = lambda x: 3.0 * float((x.std(0, unbiased=True) / math.sqrt(R)).max())  # noqa: E731
        return {"quadrature": se(fs)}, {"quadrature": se(hs)}, True, "", max(se(fs), se(hs))

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
    return ({"quadrature": max(gap_f, spread_f)}, {"quadrature": max(gap_h, spread_h)}, verified, reason,
            max(spread_f, spread_h))


class _Cache:
    """Runs by (level, replicate, depth nodes): a refined level reuses the previous one as its coarse."""

    def __init__(self, inp, backend, choice, rule, fold, ridges, progress):
        self.inp, self.backend, self.choice, self.rule = inp, backend, choice, rule
        self.fold, self.ridges, self.progress = fold, ridges, progress
        self.runs: dict[tuple, Run] = {}
        self.nodes: dict[int, int] = {}
        self.twin: Run | None = None

    def node_set(self, level: int, rep: int, coarse: bool = False) -> q.Rule:
        block = self.inp.block
        var = float(block.variance)
        if hasattr(self.rule, "replicate_rules"):  # RQMC: a set of scramblings per level
            rule = self.rule.replicate_rules(block.dz, var, level)[rep]
        else:
            rule = self.rule.node_set(level, rep, block.dz, var, self.ridges, coarse=coarse)
        return rule.fold_odd_symmetry() if self.fold else rule

    def get(self, level: int, rep: int, Q: int, coarse: bool = False, loose: bool = False) -> Run:
        """The run of a node set; ``loose``: its solver twin (10 x rtol and atol)."""
        key = (level, rep, Q, coarse and hasattr(self.rule, "tail"), loose)
        if key not in self.runs:
            rule = self.node_set(level, rep, coarse)
            if not coarse:
                self.nodes[level] = rule.num_nodes
            _check_fits(rule, Q, self.inp.block, level)
            spec = self.inp.spec(self.choice, Q, self.progress)
            if loose:
                spec = replace(spec, rtol=TWIN_FACTOR * spec.rtol, atol=TWIN_FACTOR * spec.atol)
            self.runs[key] = self.backend.run(spec, "quadrature", rule)
        return self.runs[key]

    def solver_twin(self, rule, Q: int) -> tuple[float, float]:
        """(f, h) solver parts: ``TWIN_SAFETY`` x the max-abs gaps between the run of replicate 0 at
        the level and its solver twin (module docstring). A twin that diverges or
        fails where the run did not gives ``inf`` (the solve is not stable to its tolerance)."""
        from ..solvers import SolverError

        args = (rule.level, 0, Q, False)
        run = self.get(*args)
        try:
            twin = self.get(*args, loose=True)
        except SolverError:
            return math.inf, math.inf
        if twin.diverged_step >= 0 and run.diverged_step < 0:
            return math.inf, math.inf
        self.twin = twin
        return (TWIN_SAFETY * _max_abs(run.f - twin.f), TWIN_SAFETY * _max_abs(_h1(run) - _h1(twin)))


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
                     tol: float | None = None, max_time: float | None = None,
                     solver_twin: bool | None = None) -> LimitResult:
    """Quadrature nodes over z ~ mu0 (SPEC §4.3) with the estimates of the module docstring; with
    ``tol`` the rule is refined until both estimates meet it or ``max_time`` would be exceeded."""
    from .options import RQMC, Lattice

    ridges = None
    if isinstance(rule, Lattice):
        if rule.orient == "pilot":
            ridges = _pilot_ridges(inp, backend, choice, rule, fold, dict(config), t0)
            config.update(pilot_level=rule.pilot_level())
        config.update(spacing=rule.spacing, orient=rule.orient)
        if rule.anisotropy != 1.0:
            config.update(anisotropy=rule.anisotropy)
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
            fq, hq, verified, reason, spread = _quad_parts(fine, coarse, rqmc)
            runs = fine + ([] if coarse is None else [coarse])
            config.update(level=rule.level, coarse=None if rqmc else rule.coarse, nodes=cache.nodes[rule.level],
                          replicates=rule.replicates)
            if rqmc:
                config["quadrature_rms_se"] = rms_standard_error(fine)
            label = rule.label() if rqmc else f"{rule.label()}" + (f" x {rule.replicates} rotations"
                                                                    if rule.replicates > 1 else "")
            args = (inp, inp.spec(choice, Q, progress), runs, mean_run(fine), f"quadrature/{label}", (fq, hq), config,
                    t0, rule)
            kw = dict(verified=verified, warnings=(reason,) if reason else (), tol=tol)
            res = package(*args, **kw, solver_factor=UNMEASURED_FACTOR)
            p = res.error_parts
            if (inp.depth_nodes != "auto" or Q >= AUTO_DEPTH[1] or res.diverged
                    or p["depth_interpolation"] <= max(p["quadrature"], p["solver"])):
                break
            Q = 2 * Q - 1
        tried.append(dict(level=rule.level, coarse=rule.coarse, depth_nodes=Q, error_estimate=res.error_estimate,
                          h_error_estimate=res.h_error_estimate, spread=spread, replicates=rule.replicates,
                          seconds=time.perf_counter() - t_level))
        met, why, nxt = _next_level(res, inp, rule, tried, tol, max_time, t0)
        if nxt is None:
            break
        rule = nxt
    if res.diverged:
        return res
    res = _with_solver_part(res, cache, rule, Q, solver_twin, args, kw, config)
    if tol is None:
        return res
    if met and not (res.error_estimate <= tol and res.h_error_estimate <= tol):
        met, why = False, (f"tol = {tol:g} not met: the measured solver part (f {res.error_parts['solver']:.1e}, h "
                           f"{res.h_error_parts['solver']:.1e}) takes the estimates over it (lower rtol and atol)")
    return _with_tol(res, tol, met, tried, why)


def _with_solver_part(res, cache, rule, Q, twin, args, kw, config) -> LimitResult:
    """``res`` (whose solver part is ``UNMEASURED_FACTOR`` x the allowance) with that part measured
    by the solver twin (module docstring): with ``twin`` None, only where it exceeds a tenth of the
    quadrature part; True: always; False: never."""
    ratio = max(res.error_parts["solver"] / res.error_parts["quadrature"] if res.error_parts["quadrature"] else
                math.inf, res.h_error_parts["solver"] / res.h_error_parts["quadrature"] if
                res.h_error_parts["quadrature"] else math.inf)
    if twin is False or (twin is None and ratio <= 0.1):
        why = "solver_twin=False" if twin is False else (f"{UNMEASURED_FACTOR:g} x the allowance is under a tenth "
                                                         "of the quadrature part")
        return replace(res, config=dict(res.config, solver_twin=f"not run: {why}"))
    t_twin = time.perf_counter()
    measured = cache.solver_twin(rule, Q)
    config.update(solver_twin=dict(rtol=TWIN_FACTOR * cache.inp.rtol, atol=TWIN_FACTOR * cache.inp.atol,
                                   level=rule.level, f_part=measured[0], h_part=measured[1],
                                   seconds=time.perf_counter() - t_twin))
    return package(*args, **kw, solver_measured=measured, extra_runs=(cache.twin,) if cache.twin else ())


def model_level(tried: list[dict], tol: float) -> int | None:
    """The level at which the estimates reach ``tol / 2`` if they go on falling as over the levels
    tried: ``log(max(f, h estimate))`` fitted linearly in the level (least squares) and continued
    from the last level's estimate. None with fewer than two levels, a non-finite estimate, or
    estimates that do not fall (then the rule's own refinement step is taken)."""
    if len(tried) < 2:
        return None
    lv = np.array([t["level"] for t in tried], dtype=float)
    e = np.array([max(t["error_estimate"], t["h_error_estimate"]) for t in tried], dtype=float)
    if not (np.all(np.isfinite(e)) and np.all(e > 0)) or np.ptp(lv) == 0:
        return None
    slope = float(np.polyfit(lv, np.log(e), 1)[0])
    if slope >= 0:
        return None
    return int(math.ceil(lv[-1] + (math.log(tol / 2) - math.log(e[-1])) / slope - 1e-9))


def _stalled(tried: list[dict]) -> bool:
    """Two refinements in a row that did not halve the estimate (max of f and h) nor, where the
    levels have several replicates, the spread of the replicates. The spread measures the level's
    own rotation error: where it falls the rule is converging and a flat estimate is the coarse
    level's error (the gap), which the next refinement replaces."""
    if len(tried) < 3:
        return False
    best = [max(t["error_estimate"], t["h_error_estimate"]) for t in tried[-3:]]
    if min(best[-2:]) <= 0.5 * best[0]:
        return False
    if all(t.get("replicates", 1) > 1 for t in tried[-3:]):
        spread = [t["spread"] for t in tried[-3:]]
        return not (spread[0] > 0 and min(spread[-2:]) <= 0.5 * spread[0])
    return True


#: ``tol=`` jumps at most to the level with this many times the last level's nodes
MAX_JUMP_NODES = 8.0


def _next_level(res, inp, rule, tried, tol, max_time, t0):
    """(met, why, next rule or None to stop) of accuracy on request (module docstring)."""
    if tol is None or res.diverged:
        return None, "", None
    if res.error_estimate <= tol and res.h_error_estimate <= tol:
        return True, "", None
    floor = max(res.error_parts["solver"], res.h_error_parts["solver"])
    if floor > tol:  # no level can help: the solver's own part is above the tolerance
        return False, (f"tol = {tol:g} not met: the solver part {floor:.1e} ({UNMEASURED_FACTOR:g} x its allowance) "
                       "alone exceeds it (lower rtol and atol)"), None
    if _stalled(tried):
        last = max(res.error_estimate, res.h_error_estimate)
        return False, (f"tol = {tol:g} not met: the estimates stalled near {last:.1e} (max of f and h) over the last "
                       "two refinements, and so did the spread of the replicates where there are several (a floor "
                       "of the rule at these options; try another rule or a smaller tail)"), None
    dz, step = inp.block.dz, rule.refined(inp.block)
    nodes = max(rule.num_nodes(dz), 1)
    candidates = [step]  # finest first: the model's level (capped), down to the rule's own step
    target = model_level(tried, tol) if rule.geometric else None
    if target is not None and target > step.level:
        for level in range(target, step.level, -1):
            cand = rule.at_level(level)
            if cand.num_nodes(dz) <= MAX_JUMP_NODES * nodes:
                candidates = [cand] + [rule.at_level(lv) for lv in range(level - 1, step.level, -1)] + [step]
                break
    elapsed = time.perf_counter() - t0
    avail = _available_bytes()  # None where /proc/meminfo is absent: no memory guard there
    why = ""
    for nxt in candidates:  # the finest that fits the time, the node limit and the memory
        ratio = nxt.num_nodes(dz) / nodes
        # the next level's replicates and coarse run, counted at the next level's size (the coarse is smaller:
        # the difference pays for a solver twin, 0.6-1 of one run, where it is run)
        predicted = tried[-1]["seconds"] * ratio * (nxt.replicates + 1) / (rule.replicates + 1)
        need = _level_bytes(ratio) if avail is not None else 0.0
        if max_time is not None and elapsed + predicted > max_time:
            why = (f"tol = {tol:g} not met: estimates {res.error_estimate:.2e} (f), {res.h_error_estimate:.2e} "
                   f"(h) after {elapsed:.0f} s; the next level ({nxt.level}) would take ~{predicted:.0f} s more "
                   f"than max_time = {max_time:g} s allows")
        elif nxt.num_nodes(dz) > q.rule._MAX_TENSOR_NODES:
            why = f"tol = {tol:g} not met: the next level exceeds the node limit"
        elif avail is not None and need > 0.5 * avail:
            why = (f"tol = {tol:g} not met: the next level ({nxt.level}) needs ~{need / 2**30:.1f} GiB, more "
                   f"than half the {avail / 2**30:.1f} GiB available")
        else:
            return None, "", nxt
    return False, why, None


#: smallest lattice tail that ``tol`` asks for (below it the radius grows without a measurable gain)
MIN_TAIL = 1e-16


def _level_bytes(ratio: float) -> float:
    """Memory of the next level, on the safe side: this process's peak resident size so far (which
    holds the last level's runs and everything else) times the growth of the node count. Called
    only where :func:`_available_bytes` reads ``/proc/meminfo`` (Linux: ``resource`` exists and
    ``ru_maxrss`` is in KiB)."""
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024 * max(ratio, 1.0)


def _check_fits(rule: q.Rule, Q: int, block, level: int) -> None:
    """A clear :class:`MemoryError` instead of the kernel's OOM killer: a run holds the units
    ``Z (Q, P, dz)`` in float64 and the copy its update writes, so ``16 Q P dz`` bytes is a lower
    bound on its memory (the update's intermediates are bounded separately,
    :data:`~meanode.limit.nodes.UPDATE_ELEMENTS`)."""
    avail = _available_bytes()
    need = 16.0 * Q * rule.num_nodes * block.dz
    if avail is not None and need > avail:
        raise MemoryError(f"the rule at level {level} has {rule.num_nodes:,} nodes: with depth_nodes = {Q} one run "
                          f"needs at least {need / 2**30:.1f} GiB, more than the {avail / 2**30:.1f} GiB available; "
                          "lower level= or depth_nodes=, or use tol= with max_time= (it stops at what fits)")


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
