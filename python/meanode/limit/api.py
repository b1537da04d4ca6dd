"""Public entry points: :func:`mean_ode_limit` and :func:`lazy_limit`.

Every input goes through one check (:func:`_check_inputs`, as torchdiffeq's ``_check_inputs``);
the backend and solver are chosen once (:func:`~meanode.limit.backends.choose_backend`); a limit
is then one or more *runs* of that backend — the exact closure, the lazy ODE, or quadrature
nodes at two levels (or RQMC replicates) — combined here into a
:class:`~meanode.limit.result.LimitResult` with its error estimate. The quadrature options are
objects (:mod:`meanode.limit.options`) that validate themselves and fill in their defaults.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .._checks import check_problem, integer, nonnegative_int, positive_float, resolve_device
from ..blocks import Block, TwoLayerBlock, check_block
from .backends import RunSpec, choose_backend
from .depth import DepthGrid
from .estimate import package, quadrature_limit
from .options import RuleFamily, RuleOptions, Smolyak, as_rule
from .result import LimitResult

__all__ = ["mean_ode_limit", "lazy_limit", "resolve_method", "solver_tolerances", "METHODS"]

METHODS = ("auto", "closure", "quadrature", "lazy")
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
    seq = block is not None and getattr(block, "sequence", False) is True
    Xt, Yt, WE, WU, Xe = check_problem(X, Y, W_E, W_U, X_eval, torch.float64, device,
                                       dtype_hint="the limit computes in float64: pass float64 arrays", sequence=seq)
    D = WE.shape[0]
    block = TwoLayerBlock(D, activation) if block is None else check_block(block, D)
    return _Inputs(Xt, Yt, WE, WU, Xe, block, alpha, eta, K, rtol, atol, device, depth_nodes, max_rhs,
                   divergence_threshold)


#: the ODE tolerances without ``tol``
RTOL, ATOL = 1e-10, 1e-12
#: with ``tol`` and no ``rtol``: rtol = TOL_TO_RTOL x tol, clamped to RTOL_RANGE; atol = rtol / 100
TOL_TO_RTOL, RTOL_RANGE = 1e-4, (1e-12, 1e-8)


def solver_tolerances(rtol: float | None, atol: float | None, tol: float | None) -> tuple[float, float]:
    """(rtol, atol) of the ODE solves. Without ``tol``: the given ones, else ``RTOL, ATOL``. With
    ``tol``: a given ``rtol`` (``atol``) is tightened to at most ``tol / 100`` (``tol / 1000``), so
    the solver part stays an order below the tolerance; an absent one is ``1e-4 tol`` clamped to
    [1e-12, 1e-8] (``atol`` a hundredth of it): the solver error grows like ``rtol^0.65``
    (measured, ``docs/error_estimates.md``), so ``rtol = 1e-4 tol`` keeps it well under ``tol``
    while saving up to a third of the right-hand-side evaluations against 1e-10; the solver twin
    measures what it is."""
    if rtol is not None:
        rtol = positive_float("rtol", rtol)
    if atol is not None:
        atol = positive_float("atol", atol)
    if tol is None:
        return (RTOL if rtol is None else rtol), (ATOL if atol is None else atol)
    auto = min(max(TOL_TO_RTOL * tol, RTOL_RANGE[0]), RTOL_RANGE[1])
    rtol = auto if rtol is None else min(rtol, tol / 100)
    atol = rtol / 100 if atol is None else min(atol, tol / 1000)
    return rtol, atol


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
                   fold: bool | None = None, solver: str = "DOP853", rtol: float | None = None,
                   atol: float | None = None, backend: str | None = None, X_eval=None, device="cpu", depth_nodes: int | str = "auto",
                   progress: bool = False, max_rhs: int = MAX_RHS, divergence_threshold: float = 1e6,
                   tol: float | None = None, max_time: float | None = None, solver_twin: bool | None = None,
                   **rule_options) -> LimitResult:
    """The Neural Mean ODE training dynamics (SPEC §3) over ``steps`` GD steps, with an error estimate.

    Arguments:
        X (N, d_in), Y (N, d_out), W_E (D, d_in), W_U (D, d_out): the very arrays the finite
            networks use (SPEC §8); X_eval: held-out inputs, evaluated but not trained on.
            A sequence block (``block.sequence``) takes ``X (N, T, d_in)``, ``X_eval (N_eval, T, d_in)``.
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
            ``"julia:Vern9"``...); a name mapped to another method warns once; rtol, atol: the
            solves' tolerances (default 1e-10, 1e-12; with ``tol`` see below).
        backend: ``"scipy"`` (default), ``"torch"``, ``"julia"`` or ``"auto"`` (Julia when usable,
            else SciPy; ``result.solver.backend`` and ``config["backend_note"]`` say which ran).
        device: where the expectations over nodes run (``"cpu"``, ``"cuda"``); state in float64.
        depth_nodes: Q, the Chebyshev–Lobatto nodes in depth carrying trajectories and units;
            ``"auto"``: 33 for the closure, for quadrature 17 raised to 33, 65 while the
            depth-interpolation allowance exceeds the quadrature gap.
        solver_twin (quadrature): measure the solver part by re-solving the level's first node set
            at 10 x rtol and atol (:mod:`meanode.limit.estimate`): None (default) where the solver
            could matter (10 x its allowance above a tenth of the quadrature part), True always,
            False never (the part is then 10 x the allowance).
        progress: print one line per step to stderr.
        max_rhs: right-hand-side evaluations allowed per ODE solve; more raises
            :class:`~meanode.solvers.SolverError` (status ``"max_rhs"``) naming the cap.
        divergence_threshold: the trainer's rule (SPEC §7): a forward state that becomes non-finite
            or whose RMS exceeds this stops the computation; ``result.diverged_step`` says where, the
            records from there on and the error estimate are NaN.
        tol, max_time (quadrature): accuracy on request: the rule is refined until both estimates
            (``f`` and ``h``) are at most ``tol``, or until the next level would not finish within
            ``max_time`` seconds; ``result.tol_met`` says which (:mod:`meanode.limit.estimate`).
            ``tol`` also sets the ODE tolerances (:func:`solver_tolerances`: unless given, ``rtol =
            1e-4 tol`` clamped to [1e-12, 1e-8] and ``atol = rtol / 100``; given ones are tightened
            to ``tol / 100`` and ``tol / 1000``), and a lattice's ``tail`` (the Gaussian mass its
            radial map leaves out, a floor of its error) to at most ``tol / 1000``.
            Refinement also stops when two refinements in a row do not halve the estimate (a floor
            the rule cannot pass) or when the next level would not fit in memory.

    Returns a :class:`~meanode.limit.result.LimitResult`; ``error_estimate`` and
    ``h_error_estimate`` estimate the max-abs errors of ``f`` and ``h``: the quadrature part
    (the largest of the gap to the ``coarse`` level and the spread of the independent rotations
    at the ``level``; RQMC: 3 standard errors), plus a depth-interpolation allowance and a solver
    part (the allowance ``10 (rtol max|x| + atol)`` or, when larger, the measured gap of a solve at
    10 x the tolerances; ``error_parts``, ``h_error_parts``). Estimates, not proven bounds: see
    ``docs/error_estimates.md`` for how they were checked.
    """
    t0 = time.perf_counter()
    if tol is not None:
        tol = positive_float("tol", tol)
    rtol, atol = solver_tolerances(rtol, atol, tol)
    inp = _check_inputs(X, Y, W_E, W_U, X_eval, alpha=alpha, eta=eta, steps=steps, rtol=rtol, atol=atol,
                        device=device, depth_nodes=depth_nodes, block=block, activation=activation,
                        max_rhs=max_rhs, divergence_threshold=divergence_threshold)
    block = inp.block
    method = resolve_method(method, block)
    if method != "quadrature" and (rule != "auto" or rule_options or fold is not None or solver_twin is not None):
        given = sorted(set(rule_options) | ({"rule"} if rule != "auto" else set()) | ({"fold"} if fold is not None else set())
                       | ({"solver_twin"} if solver_twin is not None else set()))
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
        run = be.run(spec, "closure")
        return package(inp, spec, [run], run, "closure", ({"quadrature": 0.0}, {"quadrature": 0.0}), config, t0)

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
    config.update(rule=getattr(ropt.fn, "__name__", "family") if isinstance(ropt, RuleFamily) else ropt.name)
    if max_time is not None:
        max_time = positive_float("max_time", max_time)
    if solver_twin not in (None, True, False):
        raise TypeError(f"solver_twin must be None, True or False, got {solver_twin!r}")
    res = quadrature_limit(inp, be, choice, ropt, bool(fold), progress, config, t0, tol=tol, max_time=max_time,
                           solver_twin=solver_twin)
    if note is not None and hasattr(be, "note"):
        res.config["backend_note"] = be.note
    return res


def lazy_limit(X, Y, W_E, W_U, *, eta: float, steps: int, activation: str = "tanh", block: Block | None = None,
               solver: str = "DOP853", rtol: float | None = None, atol: float | None = None,
               backend: str | None = None, X_eval=None, device="cpu", depth_nodes: int | str = "auto", progress: bool = False,
               max_rhs: int = MAX_RHS, divergence_threshold: float = 1e6) -> LimitResult:
    """The lazy (alpha -> infinity) limit: the kernel ODE of SPEC §4.2 over ``steps`` steps.

    ``theta`` comes from the block's activation (``block.lazy_activation``, its
    ``pair_expectations``): closed forms for identity, erf and relu, a 2-D quadrature accurate to
    ~1e-15 for tanh and gelu (:mod:`meanode.gaussian`); the adjoint uses the exact derivative of the
    drift. Arguments and result as :func:`mean_ode_limit` (no alpha, no quadrature over units;
    ``depth_nodes="auto"`` is 33).
    """
    t0 = time.perf_counter()
    rtol, atol = solver_tolerances(rtol, atol, None)
    inp = _check_inputs(X, Y, W_E, W_U, X_eval, alpha=1.0, eta=eta, steps=steps, rtol=rtol, atol=atol,
                        device=device, depth_nodes=depth_nodes, block=block, activation=activation,
                        max_rhs=max_rhs, divergence_threshold=divergence_threshold)
    if inp.block.lazy_activation is None:
        raise ValueError(f"{inp.block!r} has no lazy limit: the lazy ODE (SPEC §4.2) is the kernel limit of the 2LP "
                         "block, whose activation carries the kernel (the block declares no lazy_activation)")
    Q = CHEAP_DEPTH if depth_nodes == "auto" else depth_nodes
    be, choice, note = choose_backend(solver, backend, inp.block, inp.device)
    spec = inp.spec(choice, Q, progress)
    act = inp.block.lazy_activation
    config = dict(eta=inp.eta, steps=inp.K, D=inp.W_E.shape[0], N=inp.X.shape[0], activation=act.name,
                  rtol=inp.rtol, atol=inp.atol, device=str(inp.device))
    run = be.run(spec, "lazy")
    runs = [run]
    kparts = ({"kernel": 0.0}, {"kernel": 0.0})
    if not act.closed_form_kernel:  # the kernel is a quadrature: measure it against twice the resolution
        fine = be.run(dataclasses.replace(spec, kernel_refine=2.0), "lazy")
        runs.append(fine)
        kparts = ({"kernel": float((fine.f - run.f).abs().max())},
                  {"kernel": float((fine.H[:, -1] - run.H[:, -1]).abs().max())})
    if note:
        config["backend_note"] = getattr(be, "note", note)
    return package(inp, spec, runs, run, "lazy", kparts, config, t0, lazy=True)
