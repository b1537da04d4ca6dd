"""Public entry points: :func:`mean_ode_limit` and :func:`lazy_limit`.

Every input goes through one check (:func:`_check_inputs`, as torchdiffeq's ``_check_inputs``);
the backend and solver are chosen once (:func:`~meanode.limit.backends.choose_backend`); a limit
is then one or more *runs* of that backend — the exact closure, the lazy ODE, or quadrature
nodes at two levels (or RQMC replicates) — combined here into a
:class:`~meanode.limit.result.LimitResult` with its error estimate. The quadrature options are
objects (:mod:`meanode.limit.options`) that validate themselves and fill in their defaults.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .._checks import check_problem, integer, nonnegative_int, positive_float, resolve_device
from ..blocks import Block, TwoLayerBlock, check_block
from ..solvers import ODEStats
from .backends import Backend, RunSpec, choose_backend
from .depth import DepthGrid
from .options import RQMC, Lattice, RuleFamily, RuleOptions, Smolyak, as_rule
from .result import LimitResult, Run

__all__ = ["mean_ode_limit", "lazy_limit", "resolve_method", "METHODS"]

METHODS = ("auto", "closure", "quadrature", "lazy")
#: depth_nodes="auto": start here and double (2Q - 1, nested Chebyshev-Lobatto nodes) while the
#: depth-interpolation allowance exceeds the quadrature part, up to the maximum
AUTO_DEPTH = (17, 65)
#: depth nodes of the exact closure and of the lazy ODE with depth_nodes="auto" (cheap to solve)
CHEAP_DEPTH = 33
#: right-hand-side evaluations allowed per ODE solve by default (a normal solve takes hundreds to
#: a few thousand; an exploding trajectory would take millions)
MAX_RHS = 20_000


@dataclass(frozen=True, eq=False)
class _Inputs:
    """The checked inputs of a limit: float64 tensors on ``device``, the block, the settings."""

    X: torch.Tensor
    Y: torch.Tensor
    W_E: torch.Tensor
    W_U: torch.Tensor
    X_eval: torch.Tensor | None
    block: Block
    alpha: float
    eta: float
    K: int
    rtol: float
    atol: float
    device: torch.device
    depth_nodes: int | str
    max_rhs: int
    divergence_threshold: float

    def spec(self, choice, Q: int, progress: bool) -> RunSpec:
        return RunSpec(self.X, self.Y, self.W_E, self.W_U, self.X_eval, self.block, self.alpha, self.eta, self.K,
                       choice, self.rtol, self.atol, DepthGrid(Q), progress, self.max_rhs, self.divergence_threshold)


def _check_inputs(X, Y, W_E, W_U, X_eval, *, alpha, eta, steps, rtol, atol, device, depth_nodes, block,
                  activation, max_rhs=MAX_RHS, divergence_threshold=1e6) -> _Inputs:
    """The one check of every argument of :func:`mean_ode_limit` / :func:`lazy_limit`."""
    device = resolve_device(device)
    K = nonnegative_int("steps", steps)
    alpha = positive_float("alpha", alpha)
    eta = positive_float("eta", eta, allow_zero=True)
    rtol, atol = positive_float("rtol", rtol), positive_float("atol", atol)
    if depth_nodes != "auto":
        integer("depth_nodes", depth_nodes, 3)
    max_rhs = integer("max_rhs", max_rhs, 100)
    divergence_threshold = positive_float("divergence_threshold", divergence_threshold)
    Xt, Yt, WE, WU, Xe = check_problem(X, Y, W_E, W_U, X_eval, torch.float64, device,
                                       dtype_hint="the limit computes in float64: pass float64 arrays")
    D = WE.shape[0]
    block = TwoLayerBlock(D, activation) if block is None else check_block(block, D)
    return _Inputs(Xt, Yt, WE, WU, Xe, block, alpha, eta, K, rtol, atol, device, depth_nodes, max_rhs,
                   divergence_threshold)


def _solver_error(f: np.ndarray, rtol: float, atol: float) -> float:
    """Global error allowance of an adaptive solve: 10 x the local tolerance at the output scale."""
    return 10.0 * (rtol * float(np.max(np.abs(f))) + atol)


def _finish(inp: _Inputs, spec: RunSpec, runs: list[Run], combined: Run | None, method: str, parts: dict,
            config: dict, t0: float, rule: RuleOptions | None = None, lazy: bool = False) -> LimitResult:
    """Package ``combined`` (default ``runs[0]``) with the error ``parts`` measured from ``runs``;
    the depth and solver allowances are added here."""
    stats = ODEStats()
    for r in runs:
        stats.add(r.stats)
    stats.wall_time = time.perf_counter() - t0
    main = runs[0] if combined is None else combined
    N = inp.X.shape[0]
    H = main.H.cpu().numpy()
    f_all = main.f.cpu().numpy()
    h_all = H[:, -1]
    diverged = [r.diverged_step for r in runs if r.diverged_step >= 0]
    diverged_step = min(diverged) if diverged else -1
    parts = dict(parts)
    if diverged:  # nothing honest to say about the error of a diverged limit
        parts = {k: float("nan") for k in parts}
        if diverged_step < f_all.shape[0]:
            f_all[diverged_step:] = np.nan
            H[diverged_step:] = np.nan
            h_all = H[:, -1]
    finite = f_all[np.isfinite(f_all)]
    parts["depth_interpolation"] = (max(r.depth_tail for r in runs) * float(np.max(np.abs(finite)))
                                    if finite.size and not diverged else float("nan"))
    parts["solver"] = _solver_error(finite, inp.rtol, inp.atol) if finite.size and not diverged else float("nan")
    loss = 0.5 * np.sum((f_all[:, :N] - inp.Y.cpu().numpy()) ** 2, axis=(1, 2)) / N
    has_eval = f_all.shape[1] > N
    choice = runs[0].choice or spec.choice
    config = dict(config, backend=choice.backend, depth_nodes=spec.grid.Q)
    return LimitResult(
        f=f_all[:, :N], h=h_all[:, :N],
        f_eval=f_all[:, N:] if has_eval else None, h_eval=h_all[:, N:] if has_eval else None,
        loss=loss, error_estimate=float(sum(parts.values())), error_parts=parts, method=method,
        solver=choice, stats=stats, depth=spec.grid, H=H, B=main.B.cpu().numpy(),
        alpha=None if lazy else inp.alpha, eta=inp.eta, rule=rule, diverged_step=diverged_step, config=config)


def _mean_run(runs: list[Run]) -> Run:
    """The replicate mean of every trajectory (RQMC): ``f``, ``H``, ``B`` averaged alike, so the
    result's ``h`` belongs to its ``f`` (``f = W_U^T h / D`` is linear)."""
    mean = lambda name: torch.stack([getattr(r, name) for r in runs]).mean(0)  # noqa: E731
    return Run(H=mean("H"), B=mean("B"), f=mean("f"), stats=ODEStats(), depth_tail=max(r.depth_tail for r in runs),
               choice=runs[0].choice)


def _refine_depth(solve: Callable[[int], LimitResult], depth_nodes) -> LimitResult:
    """``solve(Q)`` on Q depth nodes; with ``depth_nodes="auto"`` start at Q = 17 and repeat on
    2Q - 1 nodes (nested: the old nodes are kept) while the depth-interpolation allowance exceeds
    the quadrature and solver parts, up to Q = 65. The depth part is a tail of Chebyshev
    coefficients, known after one solve. Cost ~ Q (the unit states are interpolated in depth at
    every right-hand side); measured at D = 2: 13 nodes agree with 33 to 1.5e-8, 2.5x cheaper."""
    Q = AUTO_DEPTH[0] if depth_nodes == "auto" else depth_nodes
    while True:
        res = solve(Q)
        parts = res.error_parts
        if (depth_nodes != "auto" or Q >= AUTO_DEPTH[1] or res.diverged
                or parts["depth_interpolation"] <= max(parts["quadrature"], parts["solver"])):
            return res
        Q = 2 * Q - 1


def _pilot_ridges(inp: _Inputs, backend: Backend, choice, rule: Lattice, var: float, fold: bool, config: dict,
                  t0: float):
    """Ridges of a cheap pilot: one lattice run at ~0.6 x the level (no error estimate needed)
    on the fixed grid of ``AUTO_DEPTH[0]`` nodes (so the orientation does not depend on
    ``depth_nodes``), whose trajectories give the ridge directions that orient the lattices of the
    real runs (:mod:`meanode.limit.adapt`)."""
    from .adapt import ridge_samples

    spec = inp.spec(choice, AUTO_DEPTH[0], False)
    node_set = rule.family()(rule.pilot_level(), inp.block.dz, var)
    pilot = backend.run(spec, "quadrature", node_set.fold_odd_symmetry() if fold else node_set)
    res = _finish(inp, spec, [pilot], None, "pilot", {"quadrature": 0.0}, config, t0, rule)
    return ridge_samples(res, node_set, block=inp.block, seed=rule.seed)


def _quadrature(inp: _Inputs, backend: Backend, choice, rule: RuleOptions, fold: bool, progress: bool,
                config: dict, t0: float) -> LimitResult:
    """Quadrature nodes over z ~ mu0 (SPEC §4.3): the ``level`` rule, its error estimated by the gap
    to the ``coarse`` rule (RQMC: 3 standard errors of the replicate mean)."""
    block = inp.block
    var = float(block.variance)
    prepare = (lambda r: r.fold_odd_symmetry()) if fold else (lambda r: r)
    if isinstance(rule, RQMC):
        reps = [prepare(r) for r in rule.replicate_rules(block.dz, var)]
        config.update(nodes=reps[0].num_nodes)

        def solve(Q: int) -> LimitResult:
            spec = inp.spec(choice, Q, progress)
            runs = [backend.run(spec, "quadrature", r) for r in reps]
            fs = torch.stack([r.f for r in runs])
            spread = 3.0 * float((fs.std(0, unbiased=True) / math.sqrt(len(runs))).max())
            return _finish(inp, spec, runs, _mean_run(runs), f"quadrature/{rule.label()}", {"quadrature": spread},
                           config, t0, rule)
        return _refine_depth(solve, inp.depth_nodes)

    if isinstance(rule, Lattice):
        ridges = None
        if rule.orient == "pilot":
            ridges = _pilot_ridges(inp, backend, choice, rule, var, fold, dict(config), t0)
            config.update(pilot_level=rule.pilot_level())
        family = rule.family(ridges)
        config.update(spacing=rule.spacing, orient=rule.orient)
    else:
        family = rule.family()
    fine_rule = prepare(family(rule.level, block.dz, var))
    coarse_rule = prepare(family(rule.coarse, block.dz, var))
    config.update(coarse=rule.coarse, nodes=fine_rule.num_nodes)

    def solve(Q: int) -> LimitResult:
        spec = inp.spec(choice, Q, progress)
        fine, coarse = backend.run(spec, "quadrature", fine_rule), backend.run(spec, "quadrature", coarse_rule)
        gap = float((fine.f - coarse.f).abs().max())
        return _finish(inp, spec, [fine, coarse], None, f"quadrature/{rule.label()}", {"quadrature": gap}, config,
                       t0, rule)
    return _refine_depth(solve, inp.depth_nodes)


def resolve_method(method: str, block: Block) -> str:
    """``method`` checked; ``"auto"`` becomes ``"closure"`` where it is exact (``block.closure_exact``),
    else ``"quadrature"``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "auto":
        return "closure" if block.closure_exact else "quadrature"
    return method


def mean_ode_limit(X, Y, W_E, W_U, *, alpha: float, eta: float, steps: int, activation: str = "tanh",
                   block: Block | None = None, method: str = "auto", rule: str | RuleOptions | Callable = "auto",
                   fold: bool | None = None, solver: str = "DOP853", rtol: float = 1e-10, atol: float = 1e-12,
                   backend: str | None = None, X_eval=None, device="cpu", depth_nodes: int | str = "auto",
                   progress: bool = False, max_rhs: int = MAX_RHS, divergence_threshold: float = 1e6,
                   **rule_options) -> LimitResult:
    """The Neural Mean ODE training dynamics (SPEC §3) over ``steps`` GD steps, with an error estimate.

    Arguments:
        X (N, d_in), Y (N, d_out), W_E (D, d_in), W_U (D, d_out): the very arrays the finite
            networks use (SPEC §8); X_eval: held-out inputs, evaluated but not trained on.
        alpha, eta, steps: residual scale, normalised learning rate, K.
        activation: sigma of the 2LP block; or ``block=`` any :class:`~meanode.blocks.Block`.
        method: ``"closure"`` (exact, SPEC §4.1; blocks with ``closure_exact``, i.e. 2LP identity),
            ``"quadrature"`` (weighted nodes for z ~ mu0, SPEC §4.3), ``"lazy"`` (the alpha -> infinity
            kernel ODE, SPEC §4.2, alpha ignored) or ``"auto"`` (the closure where exact, else quadrature).
        rule (quadrature): an options object of :mod:`meanode.limit.options` — ``Lattice(...)``,
            ``GaussHermite(...)``, ``Smolyak(...)``, ``RQMC(...)``, ``RuleFamily(fn=...)`` — or its name
            (``"lattice"``, ...), or a callable family ``rule(level, d, var) -> Rule``; ``"auto"``
            (default): lattice rules up to dz = 8 unit dimensions, RQMC beyond. ``rule_options``
            are shortcuts for the fields of a named rule (``level=``, ``coarse=``, ``spacing=``,
            ``orient=``, ``replicates=``, ``seed=``); each rule checks its own.
        fold (quadrature): use the z -> -z symmetry (half the nodes); default when the block allows it.
        solver: a name from :mod:`meanode.solvers` (``"DOP853"``, ``"Radau"``, ``"torch:Tsit5"``,
            ``"julia:Vern9"``...); a name mapped to another method warns once; rtol, atol: tolerances.
        backend: ``"scipy"`` (default), ``"torch"``, ``"julia"`` or ``"auto"`` (Julia when usable,
            else SciPy; ``result.solver.backend`` and ``config["backend_note"]`` say which ran).
        device: where the expectations over nodes run (``"cpu"``, ``"cuda"``); state in float64.
        depth_nodes: Q, the Chebyshev–Lobatto nodes in depth carrying trajectories and units;
            ``"auto"``: 33 for the closure, for quadrature 17 raised to 33, 65 while the
            depth-interpolation allowance exceeds the quadrature gap.
        progress: print one line per step to stderr.
        max_rhs: right-hand-side evaluations allowed per ODE solve; more raises
            :class:`~meanode.solvers.SolverError` (status ``"max_rhs"``) naming the cap.
        divergence_threshold: the trainer's rule (SPEC §7): a forward state that becomes non-finite
            or whose RMS exceeds this stops the computation; ``result.diverged_step`` says where, the
            records from there on and the error estimate are NaN.

    Returns a :class:`~meanode.limit.result.LimitResult`; ``error_estimate`` estimates the max-abs
    output error: quadrature gap between ``level`` and ``coarse`` (or 3 RQMC standard errors),
    plus depth-interpolation and solver allowances (``error_parts``).
    """
    t0 = time.perf_counter()
    inp = _check_inputs(X, Y, W_E, W_U, X_eval, alpha=alpha, eta=eta, steps=steps, rtol=rtol, atol=atol,
                        device=device, depth_nodes=depth_nodes, block=block, activation=activation,
                        max_rhs=max_rhs, divergence_threshold=divergence_threshold)
    block = inp.block
    method = resolve_method(method, block)
    if method != "quadrature" and (rule != "auto" or rule_options or fold is not None):
        given = sorted(set(rule_options) | ({"rule"} if rule != "auto" else set()) | ({"fold"} if fold is not None else set()))
        raise TypeError(f"method={method!r} takes no quadrature options, got {given}")
    if method == "lazy":
        return lazy_limit(X, Y, W_E, W_U, eta=eta, steps=steps, block=block, solver=solver, rtol=rtol, atol=atol,
                          backend=backend, X_eval=X_eval, device=device, depth_nodes=depth_nodes, progress=progress,
                          max_rhs=max_rhs, divergence_threshold=divergence_threshold)
    if method == "closure" and not block.closure_exact:
        raise ValueError("method='closure' is exact only for the 2LP block with activation='identity'")
    be, choice, note = choose_backend(solver, backend, block, inp.device)
    D, N = inp.W_E.shape[0], inp.X.shape[0]
    config = dict(alpha=inp.alpha, eta=inp.eta, steps=inp.K, D=D, N=N, block=repr(block), rtol=inp.rtol,
                  atol=inp.atol, device=str(inp.device))
    if note:
        config["backend_note"] = note
    if method == "closure":
        Q = CHEAP_DEPTH if depth_nodes == "auto" else depth_nodes
        spec = inp.spec(choice, Q, progress)
        return _finish(inp, spec, [be.run(spec, "closure")], None, "closure", {"quadrature": 0.0}, config, t0)

    if block.variance is None:
        raise ValueError(f"quadrature needs mu0 = N(0, variance I): {block!r} declares no variance")
    ropt = as_rule(rule, block, **rule_options)
    if isinstance(ropt, Smolyak) and block.dz > 4 and not block.closure_exact:
        warnings.warn(f"Smolyak grids in dz = {block.dz} dimensions have large negative weights; with "
                      "nonlinear dynamics the nodes' errors are amplified and the level gap may miss them. "
                      "Prefer rule='lattice' (dz <= 8) or 'rqmc'", stacklevel=2)
    if fold is None:
        fold = block.odd_symmetric
    elif fold and not block.odd_symmetric:
        raise ValueError("fold=True needs a block whose dynamics commute with z -> -z (odd sigma)")
    config.update(rule=getattr(ropt.fn, "__name__", "family") if isinstance(ropt, RuleFamily) else ropt.name,
                  level=ropt.level)
    if isinstance(ropt, RQMC):
        config.update(replicates=ropt.replicates)
    if note is not None and hasattr(be, "note"):
        config["backend_note"] = be.note
    return _quadrature(inp, be, choice, ropt, bool(fold), progress, config, t0)


def lazy_limit(X, Y, W_E, W_U, *, eta: float, steps: int, activation: str = "tanh", block: Block | None = None,
               solver: str = "DOP853", rtol: float = 1e-10, atol: float = 1e-12, backend: str | None = None,
               X_eval=None, device="cpu", depth_nodes: int | str = "auto", progress: bool = False,
               max_rhs: int = MAX_RHS, divergence_threshold: float = 1e6) -> LimitResult:
    """The lazy (alpha -> infinity) limit: the kernel ODE of SPEC §4.2 over ``steps`` steps.

    ``theta`` comes from the block's activation (``block.lazy_activation``, its
    ``pair_expectations``): closed forms for identity, erf and relu, a 2-D quadrature accurate to
    ~1e-15 for tanh and gelu (:mod:`meanode.gaussian`); the adjoint uses the exact derivative of the
    drift. Arguments and result as :func:`mean_ode_limit` (no alpha, no quadrature over units;
    ``depth_nodes="auto"`` is 33).
    """
    t0 = time.perf_counter()
    inp = _check_inputs(X, Y, W_E, W_U, X_eval, alpha=1.0, eta=eta, steps=steps, rtol=rtol, atol=atol,
                        device=device, depth_nodes=depth_nodes, block=block, activation=activation,
                        max_rhs=max_rhs, divergence_threshold=divergence_threshold)
    if inp.block.lazy_activation is None:
        raise ValueError(f"{inp.block!r} has no lazy limit (it declares no lazy_activation with a kernel)")
    Q = CHEAP_DEPTH if depth_nodes == "auto" else depth_nodes
    be, choice, note = choose_backend(solver, backend, inp.block, inp.device)
    spec = inp.spec(choice, Q, progress)
    act = inp.block.lazy_activation
    config = dict(eta=inp.eta, steps=inp.K, D=inp.W_E.shape[0], N=inp.X.shape[0], activation=act.name,
                  rtol=inp.rtol, atol=inp.atol, device=str(inp.device))
    run = be.run(spec, "lazy")
    if note:
        config["backend_note"] = getattr(be, "note", note)
    return _finish(inp, spec, [run], None, "lazy", {"kernel": 1e-12}, config, t0, lazy=True)
