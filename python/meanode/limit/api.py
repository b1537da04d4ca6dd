"""Public entry points: :func:`mean_ode_limit` and :func:`lazy_limit`."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .._checks import check_problem, nonnegative_int, positive_float, resolve_device
from ..blocks import Block, TwoLayerBlock
from ..solvers import ODEStats, resolve_solver
from . import quadrature as q
from .closure import ClosureDynamics
from .depth import DepthGrid
from .engine import LimitResult, run_limit
from .nodes import NodeDynamics

__all__ = ["mean_ode_limit", "lazy_limit", "METHODS", "RULES"]

METHODS = ("auto", "closure", "quadrature", "lazy")
RULES = ("gauss_hermite", "smolyak", "rqmc")
_QUAD_OPTIONS = {"rule", "level", "coarse", "replicates", "fold", "seed"}


def _solver_error(f: np.ndarray, rtol: float, atol: float) -> float:
    """Global error allowance of an adaptive solve: 10 x the local tolerance at the output scale."""
    return 10.0 * (rtol * float(np.max(np.abs(f))) + atol)


def _finish(raw: list[dict], f_ref, N: int, D: int, Y, method: str, choice, rtol, atol, grid, parts: dict,
            config: dict, t0: float) -> LimitResult:
    """Package the main run ``raw[0]`` (whose output may be replaced by ``f_ref``, e.g. an RQMC mean)."""
    stats = ODEStats()
    for r in raw:
        stats.add(r["stats"])
    stats.wall_time = time.perf_counter() - t0
    main = raw[0]
    H = main["H"].cpu().numpy()
    f_all = (main["f"] if f_ref is None else f_ref).cpu().numpy()
    h_all = H[:, -1]
    parts = dict(parts)
    parts["depth_interpolation"] = max(r["depth_tail"] for r in raw) * float(np.max(np.abs(f_all)))
    parts["solver"] = _solver_error(f_all, rtol, atol)
    Yn = Y.cpu().numpy()
    loss = 0.5 * np.sum((f_all[:, :N] - Yn) ** 2, axis=(1, 2)) / N
    has_eval = f_all.shape[1] > N
    return LimitResult(
        f=f_all[:, :N], h=h_all[:, :N],
        f_eval=f_all[:, N:] if has_eval else None, h_eval=h_all[:, N:] if has_eval else None,
        loss=loss, error_estimate=float(sum(parts.values())), error_parts=parts, method=method,
        solver=choice, stats=stats.as_dict(), depth=grid, H=H, B=main["B"].cpu().numpy(), config=config)


def _rule(name, level: int, d: int, var: float, seed: int) -> q.Rule:
    """The node set of ``level``: a named rule, or a family ``rule(level, d, var) -> Rule``."""
    if callable(name):
        return name(level, d, var)
    if name == "gauss_hermite":
        return q.gauss_hermite(level, d, var)
    if name == "smolyak":
        return q.smolyak(level, d, var)
    return q.rqmc(2**level, d, var, seed=seed)


def _default_level(rule: str, dz: int) -> int:
    if rule == "gauss_hermite":
        return {1: 48, 2: 32, 3: 16, 4: 12}.get(dz, 6)
    if rule == "smolyak":
        return 6 if dz <= 4 else 4
    return 14


def mean_ode_limit(X, Y, W_E, W_U, *, alpha: float, eta: float, steps: int, activation: str = "tanh",
                   method: str = "auto", solver: str = "DOP853", rtol: float = 1e-10, atol: float = 1e-12,
                   backend: str | None = None, block: Block | None = None, X_eval=None, device="cpu",
                   depth_nodes: int = 33, progress: bool = False, **method_options) -> LimitResult:
    """The Neural Mean ODE training dynamics (SPEC §3) over ``steps`` GD steps, with an error bound.

    Arguments:
        X (N, d_in), Y (N, d_out), W_E (D, d_in), W_U (D, d_out): the very arrays the finite
            networks use (SPEC §8); X_eval: held-out inputs, evaluated but not trained on.
        alpha, eta, steps: residual scale, normalised learning rate, K.
        activation: sigma of the 2LP block; or ``block=`` any :class:`~meanode.blocks.Block`.
        method: ``"closure"`` (identity activation, exact, SPEC §4.1), ``"quadrature"`` (weighted
            nodes for z ~ mu0, SPEC §4.3), ``"lazy"`` (the alpha -> infinity kernel ODE, SPEC §4.2,
            alpha ignored) or ``"auto"`` (closure for the identity 2LP block, else quadrature).
        solver: a name from :mod:`meanode.solvers` (``"DOP853"``, ``"Radau"``, ``"torch:Tsit5"``...);
            rtol, atol: its tolerances. backend: ``"scipy"``, ``"torch"`` or ``"julia"``.
        device: where the expectations over nodes run (``"cpu"``, ``"cuda"``); state in float64.
        depth_nodes: Q, the Chebyshev–Lobatto nodes in depth carrying trajectories and units.
        progress: print one line per step to stderr.
        method_options (quadrature): ``rule`` in {"gauss_hermite", "smolyak", "rqmc"}; ``level``
            (nodes per dimension, sparse-grid level, or log2 of the node count); ``coarse`` (the
            level compared against for the error estimate; default one notch below);
            ``replicates`` (RQMC scramblings, default 8); ``fold`` (use the z -> -z symmetry;
            default: when the block allows it); ``seed`` (RQMC).

    Returns a :class:`~meanode.limit.engine.LimitResult`; ``error_estimate`` bounds the max-abs
    output error: quadrature gap between ``level`` and ``coarse`` (or 3 RQMC standard errors),
    plus depth-interpolation and solver allowances (``error_parts``).
    """
    t0 = time.perf_counter()
    device = resolve_device(device)
    K = nonnegative_int("steps", steps)
    alpha = positive_float("alpha", alpha)
    eta = positive_float("eta", eta, allow_zero=True)
    rtol, atol = positive_float("rtol", rtol), positive_float("atol", atol)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    Xt, Yt, WE, WU, Xe = check_problem(X, Y, W_E, W_U, X_eval, torch.float64, device)
    D, N = WE.shape[0], Xt.shape[0]
    if block is None:
        block = TwoLayerBlock(D, activation)
    elif getattr(block, "D", D) != D:
        raise ValueError(f"block has D = {block.D} but W_E has D = {D}")
    if not isinstance(depth_nodes, int) or depth_nodes < 3:
        raise ValueError(f"depth_nodes must be an integer >= 3, got {depth_nodes!r}")
    choice = resolve_solver(solver, backend)
    if choice.backend == "julia":
        from ..julia import bridge
        return bridge.mean_ode_limit(X=X, Y=Y, W_E=W_E, W_U=W_U, alpha=alpha, eta=eta, steps=K, block=block,
                                     method=method, choice=choice, rtol=rtol, atol=atol, X_eval=X_eval,
                                     depth_nodes=depth_nodes, **method_options)
    is_identity_2lp = type(block) is TwoLayerBlock and block.act.name == "identity"
    if method == "auto":
        method = "closure" if is_identity_2lp else "quadrature"
    if method == "lazy":
        return lazy_limit(X, Y, W_E, W_U, eta=eta, steps=K, activation=block.act.name, solver=solver,
                          rtol=rtol, atol=atol, backend=backend, X_eval=X_eval, device=device,
                          depth_nodes=depth_nodes, progress=progress)
    grid = DepthGrid(depth_nodes)
    config = dict(alpha=alpha, eta=eta, steps=K, D=D, N=N, block=repr(block), rtol=rtol, atol=atol,
                  depth_nodes=depth_nodes, device=str(device))
    args = (Xt, Yt, WE, WU, Xe, K, choice, rtol, atol, grid, progress)

    if method == "closure":
        if not is_identity_2lp:
            raise ValueError("method='closure' is exact only for the 2LP block with activation='identity'")
        if method_options:
            raise TypeError(f"method='closure' takes no options, got {sorted(method_options)}")
        raw = run_limit(ClosureDynamics(D, alpha, eta, grid, torch.float64, device), *args)
        return _finish([raw], None, N, D, Yt, "closure", choice, rtol, atol, grid, {"quadrature": 0.0},
                       config, t0)

    unknown = set(method_options) - _QUAD_OPTIONS
    if unknown:
        raise TypeError(f"unknown option(s) for method='quadrature': {sorted(unknown)}")
    rule = method_options.get("rule", "gauss_hermite")
    if not callable(rule) and rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES} or pass a family level -> Rule")
    if not isinstance(block, TwoLayerBlock) and not hasattr(block, "variance"):
        raise ValueError("quadrature needs mu0 = N(0, var I): give the block a 'variance' attribute")
    var = float(getattr(block, "variance", block.D))
    if callable(rule) and "level" not in method_options:
        raise ValueError("a rule family (callable) needs level= (and optionally coarse=)")
    level = method_options.get("level", _default_level(rule, block.dz))
    fold = method_options.get("fold", block.odd_symmetric)
    if fold and not block.odd_symmetric:
        raise ValueError("fold=True needs a block whose dynamics commute with z -> -z (odd sigma)")
    seed = method_options.get("seed", 0)
    config.update(rule=getattr(rule, "__name__", rule), level=level)

    def run(rule_obj: q.Rule) -> dict:
        if fold:
            rule_obj = rule_obj.fold_odd_symmetry()
        z0 = torch.tensor(rule_obj.nodes, dtype=torch.float64, device=device)
        w = torch.tensor(rule_obj.weights, dtype=torch.float64, device=device)
        return run_limit(NodeDynamics(block, z0, w, alpha, eta, grid), *args)

    if rule == "rqmc":
        R = method_options.get("replicates", 8)
        if not isinstance(R, int) or R < 2:
            raise ValueError(f"replicates must be an integer >= 2, got {R!r}")
        reps = q.rqmc_replicates(2**level, block.dz, var, n_rep=R, seed=seed)
        raws = [run(r) for r in reps]
        fs = torch.stack([r["f"] for r in raws])
        f_mean = fs.mean(0)
        spread = 3.0 * float((fs.std(0, unbiased=True) / math.sqrt(R)).max())
        config.update(replicates=R, nodes=reps[0].num_nodes)
        return _finish(raws, f_mean, N, D, Yt, f"quadrature/rqmc(2^{level} x {R})", choice, rtol, atol, grid,
                       {"quadrature": spread}, config, t0)

    coarse = method_options.get("coarse", level - (1 if rule == "smolyak" else 2))
    if not isinstance(level, int) or not isinstance(coarse, int) or coarse >= level or coarse < 1:
        raise ValueError(f"need integers 1 <= coarse < level, got level={level!r}, coarse={coarse!r}")
    fine_rule = _rule(rule, level, block.dz, var, seed)
    fine = run(fine_rule)
    coarse_run = run(_rule(rule, coarse, block.dz, var, seed))
    gap = float((fine["f"] - coarse_run["f"]).abs().max())
    config.update(coarse=coarse, nodes=fine_rule.num_nodes // (2 if fold else 1))
    return _finish([fine, coarse_run], None, N, D, Yt, f"quadrature/{config['rule']}({level} vs {coarse})", choice, rtol,
                   atol, grid, {"quadrature": gap}, config, t0)


def lazy_limit(X, Y, W_E, W_U, *, eta: float, steps: int, activation: str = "tanh", solver: str = "DOP853",
               rtol: float = 1e-10, atol: float = 1e-12, backend: str | None = None, X_eval=None, device="cpu",
               depth_nodes: int = 33, progress: bool = False) -> LimitResult:
    """The lazy (alpha -> infinity) limit: the kernel ODE of SPEC §4.2 over ``steps`` steps.

    ``theta`` is in closed form for identity, erf and relu, and a 2-D Gauss–Hermite rule
    (accurate to ~1e-13) otherwise; the adjoint uses the exact derivative of the drift.
    Arguments and result as :func:`mean_ode_limit` (no alpha, no quadrature over units).
    """
    from .lazy import LazyDynamics

    t0 = time.perf_counter()
    device = resolve_device(device)
    K = nonnegative_int("steps", steps)
    eta = positive_float("eta", eta, allow_zero=True)
    rtol, atol = positive_float("rtol", rtol), positive_float("atol", atol)
    Xt, Yt, WE, WU, Xe = check_problem(X, Y, W_E, W_U, X_eval, torch.float64, device)
    D, N = WE.shape[0], Xt.shape[0]
    block = TwoLayerBlock(D, activation)  # validates the activation name
    choice = resolve_solver(solver, backend)
    if choice.backend == "julia":
        from ..julia import bridge
        return bridge.lazy_limit(X=X, Y=Y, W_E=W_E, W_U=W_U, eta=eta, steps=K, activation=activation,
                                 choice=choice, rtol=rtol, atol=atol, X_eval=X_eval, depth_nodes=depth_nodes)
    grid = DepthGrid(depth_nodes)
    raw = run_limit(LazyDynamics(block.act.name, D, eta, grid), Xt, Yt, WE, WU, Xe, K, choice, rtol, atol,
                    grid, progress)
    config = dict(eta=eta, steps=K, D=D, N=N, activation=activation, rtol=rtol, atol=atol,
                  depth_nodes=depth_nodes, device=str(device))
    return _finish([raw], None, N, D, Yt, "lazy", choice, rtol, atol, grid, {"kernel": 1e-12}, config, t0)
