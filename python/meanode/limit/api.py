"""Public entry points: :func:`mean_ode_limit` and :func:`lazy_limit`.

Both reduce to one or more *runs* of the engine: a run is ``(kind, rule)`` with kind in
{"closure", "quadrature", "lazy"} and, for quadrature, the node set. :class:`Runner` executes a
run on the chosen backend — the Python engine (:func:`~meanode.limit.engine.run_limit` with
SciPy or torch solvers) or Julia (:mod:`meanode.julia.bridge`) — so the choice of method,
rule, levels and error estimate below is written once for every backend.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._checks import check_problem, nonnegative_int, positive_float, resolve_device
from ..blocks import Block, TwoLayerBlock
from ..solvers import ODEStats, SolverChoice, resolve_solver
from . import quadrature as q
from .closure import ClosureDynamics
from .depth import DepthGrid
from .engine import LimitResult, run_limit
from .nodes import NodeDynamics

__all__ = ["mean_ode_limit", "lazy_limit", "METHODS", "RULES", "ORIENTS", "LATTICE_DEFAULTS", "Runner"]

METHODS = ("auto", "closure", "quadrature", "lazy")
RULES = ("auto", "lattice", "gauss_hermite", "smolyak", "rqmc")
ORIENTS = ("pilot", "screened")
_QUAD_OPTIONS = {"rule", "level", "coarse", "replicates", "fold", "seed", "spacing", "orient"}
#: depth_nodes="auto": start here and double (2Q - 1, nested Chebyshev-Lobatto nodes) while the
#: depth-interpolation allowance exceeds the quadrature part, up to the maximum
_AUTO_DEPTH = (17, 65)


@dataclass(frozen=True, eq=False)
class Runner:
    """Everything a run needs; ``__call__(kind, rule)`` returns the engine's raw dict
    (``H, B, f`` tensors, ``stats``, ``depth_tail`` and, from Julia, ``method``)."""

    X: torch.Tensor
    Y: torch.Tensor
    W_E: torch.Tensor
    W_U: torch.Tensor
    X_eval: torch.Tensor | None
    block: Block
    alpha: float
    eta: float
    K: int
    choice: SolverChoice
    rtol: float
    atol: float
    grid: DepthGrid
    progress: bool = False

    def __call__(self, kind: str, rule: q.Rule | None = None) -> dict:
        if self.choice.backend == "julia":
            from ..julia import bridge
            return bridge.run(self, kind, rule)
        D = self.W_E.shape[0]
        dev = self.X.device
        if kind == "closure":
            dyn = ClosureDynamics(D, self.alpha, self.eta, self.grid, torch.float64, dev)
        elif kind == "lazy":
            from .lazy import LazyDynamics
            dyn = LazyDynamics(self.block.act.name, D, self.eta, self.grid)
        else:
            z0 = torch.tensor(rule.nodes, dtype=torch.float64, device=dev)
            w = torch.tensor(rule.weights, dtype=torch.float64, device=dev)
            dyn = NodeDynamics(self.block, z0, w, self.alpha, self.eta, self.grid)
        return run_limit(dyn, self.X, self.Y, self.W_E, self.W_U, self.X_eval, self.K, self.choice, self.rtol,
                         self.atol, self.grid, self.progress)


def _check_depth_nodes(depth_nodes) -> None:
    if depth_nodes != "auto" and (not isinstance(depth_nodes, int) or isinstance(depth_nodes, bool) or depth_nodes < 3):
        raise ValueError(f"depth_nodes must be 'auto' or an integer >= 3, got {depth_nodes!r}")


def _solver_error(f: np.ndarray, rtol: float, atol: float) -> float:
    """Global error allowance of an adaptive solve: 10 x the local tolerance at the output scale."""
    return 10.0 * (rtol * float(np.max(np.abs(f))) + atol)


def _finish(run: Runner, raws: list[dict], f_ref, method: str, parts: dict, config: dict, t0: float) -> LimitResult:
    """Package the main run ``raws[0]`` (its output replaced by ``f_ref`` when given, e.g. an RQMC mean)."""
    stats = ODEStats()
    for r in raws:
        stats.add(r["stats"])
    stats.wall_time = time.perf_counter() - t0
    main = raws[0]
    N = run.X.shape[0]
    H = main["H"].cpu().numpy()
    f_all = (main["f"] if f_ref is None else f_ref).cpu().numpy()
    h_all = H[:, -1]
    parts = dict(parts)
    parts["depth_interpolation"] = max(r["depth_tail"] for r in raws) * float(np.max(np.abs(f_all)))
    parts["solver"] = _solver_error(f_all, run.rtol, run.atol)
    loss = 0.5 * np.sum((f_all[:, :N] - run.Y.cpu().numpy()) ** 2, axis=(1, 2)) / N
    has_eval = f_all.shape[1] > N
    choice = run.choice
    if "method" in main:  # the backend names the method that actually ran
        choice = replace(choice, method=main["method"])
    config = dict(config, backend=choice.backend)
    return LimitResult(
        f=f_all[:, :N], h=h_all[:, :N],
        f_eval=f_all[:, N:] if has_eval else None, h_eval=h_all[:, N:] if has_eval else None,
        loss=loss, error_estimate=float(sum(parts.values())), error_parts=parts, method=method,
        solver=choice, stats=stats.as_dict(), depth=run.grid, H=H, B=main["B"].cpu().numpy(), config=config)


def _rule(name, level: int, d: int, var: float, seed: int) -> q.Rule:
    """The node set of ``level``: a named rule, or a family ``rule(level, d, var) -> Rule``."""
    if callable(name):
        return name(level, d, var)
    if name == "gauss_hermite":
        return q.gauss_hermite(level, d, var)
    if name == "smolyak":
        return q.smolyak(level, d, var)
    return q.rqmc(2**level, d, var, seed=seed)


#: lattice rule defaults by unit dimension dz: (spacing, level), step h = spacing / level. Chosen
#: on the default problem (tanh, alpha = 1, eta = 0.2): about 1e-6 (dz = 4, K = 5) to 2e-3
#: (dz = 8, K = 15) in seconds to a minute; the coarser the lattice in high dz, the larger the
#: spacing that keeps the node count (~ (level / spacing)^dz) in reach
LATTICE_DEFAULTS = {1: (3.0, 40), 2: (3.0, 40), 3: (3.0, 12), 4: (3.0, 10), 5: (6.0, 10), 6: (6.0, 9),
                     7: (10.0, 12), 8: (10.0, 11)}


def _default_level(rule: str, dz: int) -> int:
    if rule == "gauss_hermite":
        return {1: 48, 2: 32, 3: 16, 4: 12}.get(dz, 6)
    if rule == "smolyak":
        return 6 if dz <= 4 else 4
    if rule == "lattice":
        return _lattice_defaults(dz)[1]
    return 14


def _lattice_defaults(dz: int) -> tuple[float, int]:
    if dz not in LATTICE_DEFAULTS:
        raise ValueError(f"no default lattice for dz = {dz} > 8 unit dimensions: pass spacing= and level= "
                         "(quadrature.lattice_size gives the node count) or use rule='rqmc'")
    return LATTICE_DEFAULTS[dz]


def _auto_rule(block: Block) -> str:
    """Lattice rules up to dz = 8 (they converge geometrically for analytic integrands such as
    the tanh Mean ODE, where Gauss-Hermite stalls; see :func:`~meanode.limit.quadrature.lattice`),
    scrambled-Sobol RQMC beyond (no lattice of reasonable size resolves more dimensions)."""
    return "lattice" if block.dz <= 8 else "rqmc"


def _pilot_ridges(run: Runner, call, block: TwoLayerBlock, spacing: float, level: int, seed: int, var: float,
                  config: dict, t0: float):
    """Ridges of a cheap pilot: one lattice run at ~0.6 x the level (no error estimate needed)
    whose trajectories give the ridge directions that orient the lattices of the real runs
    (:mod:`meanode.limit.adapt`). Returns (ridges, pilot level)."""
    from .adapt import ridge_samples

    pilot_level = max(2, round(0.6 * level))
    fam = q.lattice_family(spacing, seed=seed)
    rule = fam(pilot_level, block.dz, var)
    raw = call(rule)
    pilot = _finish(run, [raw], None, "pilot", {"quadrature": 0.0}, config, t0)
    return ridge_samples(pilot, rule, block=block, seed=seed), pilot_level


def _choose_backend(solver: str, backend: str | None, block: Block, device: torch.device) -> tuple[SolverChoice, str | None]:
    """Resolve the solver; ``backend="auto"`` takes Julia when it is usable (never starting it
    here) and the 2LP block on the CPU is asked for, else SciPy. Returns the choice and a note
    saying why, for ``auto``."""
    note = None
    if backend == "auto" and ":" not in solver:
        from ..julia import resolve_auto_backend
        backend, note = resolve_auto_backend()
        if backend == "julia" and (type(block) is not TwoLayerBlock or device.type != "cpu"):
            backend, note = "scipy", "auto: the julia backend solves the 2LP block on the CPU only"
    choice = resolve_solver(solver, backend)
    if choice.backend == "julia":
        from ..julia import julia_solver_name
        if type(block) is not TwoLayerBlock:
            raise ValueError(f"the julia backend solves the 2LP block only, got {block!r}; use backend='scipy'")
        if device.type != "cpu":
            raise ValueError("the julia backend runs on the CPU; use device='cpu' or another backend")
        choice = replace(choice, method=julia_solver_name(choice.requested))
    return choice, note


def _call(run: Runner, note: str | None, kind: str, rule: q.Rule | None = None) -> tuple[Runner, dict]:
    """One run; with ``backend="auto"`` a Julia start that fails falls back to SciPy (said in the note)."""
    try:
        return run, run(kind, rule)
    except Exception as e:
        from ..julia import JuliaUnavailableError
        if note is None or not isinstance(e, JuliaUnavailableError):
            raise
    run = replace(run, choice=resolve_solver(run.choice.requested, "scipy"))
    return run, run(kind, rule)


def mean_ode_limit(X, Y, W_E, W_U, *, alpha: float, eta: float, steps: int, activation: str = "tanh",
                   method: str = "auto", solver: str = "DOP853", rtol: float = 1e-10, atol: float = 1e-12,
                   backend: str | None = None, block: Block | None = None, X_eval=None, device="cpu",
                   depth_nodes: int | str = "auto", progress: bool = False, **method_options) -> LimitResult:
    """The Neural Mean ODE training dynamics (SPEC §3) over ``steps`` GD steps, with an error bound.

    Arguments:
        X (N, d_in), Y (N, d_out), W_E (D, d_in), W_U (D, d_out): the very arrays the finite
            networks use (SPEC §8); X_eval: held-out inputs, evaluated but not trained on.
            A sequence block (``block.sequence``) takes ``X (N, T, d_in)``, ``X_eval (N_eval, T, d_in)``.
        alpha, eta, steps: residual scale, normalised learning rate, K.
        activation: sigma of the 2LP block; or ``block=`` any :class:`~meanode.blocks.Block`.
        method: ``"closure"`` (identity activation, exact, SPEC §4.1), ``"quadrature"`` (weighted
            nodes for z ~ mu0, SPEC §4.3), ``"lazy"`` (the alpha -> infinity kernel ODE, SPEC §4.2,
            alpha ignored) or ``"auto"`` (closure for the identity 2LP block, else quadrature).
        solver: a name from :mod:`meanode.solvers` (``"DOP853"``, ``"Radau"``, ``"torch:Tsit5"``,
            ``"julia:Vern9"``...); rtol, atol: its tolerances.
        backend: ``"scipy"`` (default), ``"torch"``, ``"julia"`` or ``"auto"`` (Julia when usable,
            else SciPy; ``result.solver.backend`` and ``config["backend_note"]`` say which ran).
        device: where the expectations over nodes run (``"cpu"``, ``"cuda"``); state in float64.
        depth_nodes: Q, the Chebyshev–Lobatto nodes in depth carrying trajectories and units;
            ``"auto"``: 33 for the closure, for quadrature 17 raised to 33, 65 while the
            depth-interpolation allowance exceeds the quadrature gap.
        progress: print one line per step to stderr.
        method_options (quadrature):
            ``rule``: ``"auto"`` (default: ``"lattice"`` up to dz = 8 unit dimensions, ``"rqmc"``
            beyond), ``"lattice"``, ``"gauss_hermite"``, ``"smolyak"``, ``"rqmc"``, or a family
            ``rule(level, d, var) -> Rule``.
            ``level``: lattice step ``spacing / level``; Gauss–Hermite nodes per dimension;
            sparse-grid level; RQMC log2 node count. Defaults by dz (lattice: 40, 10, 9, 11 at
            dz = 2, 4, 6, 8).
            ``coarse``: the level compared against for the error estimate (default one notch
            below; ``~2 level / 3`` for Gauss–Hermite, whose gap to ``level - 2`` is not honest
            for tanh).
            ``spacing`` (lattice; default 3 up to dz = 4, 6 at dz = 6, 10 at dz = 8).
            ``orient`` (lattice): ``"pilot"`` (default for 2LP blocks with a nonlinear sigma):
            a cheap run at ~0.6 x the level finds the directions of the integrand's ridges and
            each level's rotation is picked among 32 to alias them least
            (:mod:`meanode.limit.adapt`); ``"screened"``: rotations screened against the u/v
            coordinate planes only.
            ``replicates`` (RQMC scramblings, default 8; ``config["quadrature_rms_se"]`` records
            the RMS over entries of the standard error of their mean, beside the max-abs 3 standard
            errors of the estimate); ``fold`` (use the z -> -z symmetry; default: when the block
            allows it); ``seed`` (rotations, scramblings).

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
    seq = block is not None and getattr(block, "sequence", False) is True
    Xt, Yt, WE, WU, Xe = check_problem(X, Y, W_E, W_U, X_eval, torch.float64, device, sequence=seq)
    D, N = WE.shape[0], Xt.shape[0]
    if block is None:
        block = TwoLayerBlock(D, activation)
    elif getattr(block, "D", D) != D:
        raise ValueError(f"block has D = {block.D} but W_E has D = {D}")
    _check_depth_nodes(depth_nodes)
    is_identity_2lp = type(block) is TwoLayerBlock and block.act.name == "identity"
    if method == "auto":
        method = "closure" if is_identity_2lp else "quadrature"
    if method == "lazy":
        if not isinstance(block, TwoLayerBlock):
            raise ValueError(f"method='lazy' is the kernel limit of the 2LP block (SPEC §4.2), not of {block!r}")
        if method_options:
            raise TypeError(f"method='lazy' takes no options, got {sorted(method_options)}")
        return lazy_limit(X, Y, W_E, W_U, eta=eta, steps=K, activation=block.act.name, solver=solver,
                          rtol=rtol, atol=atol, backend=backend, X_eval=X_eval, device=device,
                          depth_nodes=depth_nodes, progress=progress)
    if method == "closure":
        if not is_identity_2lp:
            raise ValueError("method='closure' is exact only for the 2LP block with activation='identity'")
        if method_options:
            raise TypeError(f"method='closure' takes no options, got {sorted(method_options)}")
    else:
        unknown = set(method_options) - _QUAD_OPTIONS
        if unknown:
            raise TypeError(f"unknown option(s) for method='quadrature': {sorted(unknown)}")
    choice, note = _choose_backend(solver, backend, block, device)
    # depth_nodes="auto": 33 for the (cheap) closure; quadrature starts at 17 and refines (_refine_depth)
    Q = depth_nodes if depth_nodes != "auto" else (33 if method == "closure" else _AUTO_DEPTH[0])
    run = Runner(Xt, Yt, WE, WU, Xe, block, alpha, eta, K, choice, rtol, atol, DepthGrid(Q), progress)
    config = dict(alpha=alpha, eta=eta, steps=K, D=D, N=N, block=repr(block), rtol=rtol, atol=atol,
                  depth_nodes=Q, device=str(device))
    if note:
        config["backend_note"] = note

    if method == "closure":
        run, raw = _call(run, note, "closure")
        return _finish(run, [raw], None, "closure", {"quadrature": 0.0}, config, t0)

    rule = method_options.get("rule", "auto")
    if not callable(rule) and rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES} or pass a family level -> Rule")
    if callable(rule) and "level" not in method_options:
        raise ValueError("a rule family (callable) needs level= (and optionally coarse=)")
    if not isinstance(block, TwoLayerBlock) and not hasattr(block, "variance"):
        raise ValueError("quadrature needs mu0 = N(0, var I): give the block a 'variance' attribute")
    if rule == "auto":
        rule = _auto_rule(block)
    if rule != "lattice" and ({"spacing", "orient"} & set(method_options)):
        raise TypeError("spacing= and orient= apply to rule='lattice' only")
    if rule == "smolyak" and block.dz > 4 and not is_identity_2lp:
        warnings.warn(f"Smolyak grids in dz = {block.dz} dimensions have large negative weights; with "
                      "nonlinear dynamics the nodes' errors are amplified and the level gap may miss them. "
                      "Prefer rule='lattice' (dz <= 8) or 'rqmc'", stacklevel=2)
    var = float(getattr(block, "variance", block.D))
    level = method_options["level"] if "level" in method_options else _default_level(rule, block.dz)
    fold = method_options.get("fold", block.odd_symmetric)
    if fold and not block.odd_symmetric:
        raise ValueError("fold=True needs a block whose dynamics commute with z -> -z (odd sigma)")
    seed = method_options.get("seed", 0)
    config.update(rule=getattr(rule, "__name__", rule), level=level)

    def quad(r: q.Rule) -> dict:
        nonlocal run
        run, raw = _call(run, note, "quadrature", r.fold_odd_symmetry() if fold else r)
        return raw

    if rule == "rqmc":
        R = method_options.get("replicates", 8)
        if not isinstance(R, int) or R < 2:
            raise ValueError(f"replicates must be an integer >= 2, got {R!r}")
        reps = q.rqmc_replicates(2**level, block.dz, var, n_rep=R, seed=seed)
        config.update(replicates=R, nodes=reps[0].num_nodes)

        def solve(Q: int) -> LimitResult:
            nonlocal run
            run = replace(run, grid=DepthGrid(Q))
            raws = [quad(r) for r in reps]
            fs = torch.stack([r["f"] for r in raws])
            se = fs.std(0, unbiased=True) / math.sqrt(R)  # standard error of the mean, per entry
            spread = 3.0 * float(se.max())
            config["quadrature_rms_se"] = float(se.pow(2).mean().sqrt())  # its RMS over steps, samples, outputs
            return _finish(run, raws, fs.mean(0), f"quadrature/rqmc(2^{level} x {R})", {"quadrature": spread},
                           config, t0)
        return _refine_depth(solve, depth_nodes, config)

    # Gauss–Hermite converges only like exp(-c sqrt(n)) for tanh (poles near the real axis), so the
    # gap to n - 2 underestimates its error (measured 2x at D = 2, 13x at D = 1); the gap to ~2n/3 does not
    # (an even coarse level keeps the rule free of a node at 0, like the even levels used by default)
    if rule == "gauss_hermite" and isinstance(level, int):
        default_coarse = max(1, min(level - 1, 2 * round(level / 3)))
    else:
        default_coarse = level - 1 if rule in ("smolyak", "lattice") or callable(rule) else level - 2
    coarse = method_options.get("coarse", default_coarse)
    if not isinstance(level, int) or not isinstance(coarse, int) or coarse >= level or coarse < 1:
        raise ValueError(f"need integers 1 <= coarse < level, got level={level!r}, coarse={coarse!r}")
    if rule == "lattice":
        run = replace(run, grid=DepthGrid(_AUTO_DEPTH[0]))  # the pilot's grid, whatever depth_nodes: one orientation
        family = _lattice_family(run, quad, block, method_options, level, seed, var, config, t0)
    else:
        def family(lv: int, d: int, v: float) -> q.Rule:
            return _rule(rule, lv, d, v, seed)
    fine_rule, coarse_rule = family(level, block.dz, var), family(coarse, block.dz, var)
    config.update(coarse=coarse, nodes=fine_rule.num_nodes // (2 if fold else 1))

    def solve(Q: int) -> LimitResult:
        nonlocal run
        run = replace(run, grid=DepthGrid(Q))
        fine, coarse_run = quad(fine_rule), quad(coarse_rule)
        gap = float((fine["f"] - coarse_run["f"]).abs().max())
        return _finish(run, [fine, coarse_run], None, f"quadrature/{config['rule']}({level} vs {coarse})",
                       {"quadrature": gap}, config, t0)
    return _refine_depth(solve, depth_nodes, config)


def _lattice_family(run: Runner, quad, block: Block, options: dict, level: int, seed: int, var: float,
                    config: dict, t0: float):
    """The lattice family of ``rule="lattice"``: step ``spacing / level``, each level with its
    own rotation, oriented by a pilot's ridges (``orient="pilot"``, 2LP blocks) or screened
    against the u/v coordinate planes (``orient="screened"``); see :mod:`meanode.limit.adapt`."""
    spacing = positive_float("spacing", options["spacing"] if "spacing" in options else _lattice_defaults(block.dz)[0])
    is_2lp = isinstance(block, TwoLayerBlock)
    orient = options.get("orient", "pilot" if is_2lp and block.act.name != "identity" else "screened")
    if orient not in ORIENTS:
        raise ValueError(f"orient must be one of {ORIENTS}, got {orient!r}")
    if orient == "pilot" and not is_2lp:
        raise ValueError("orient='pilot' reads the ridges of 2LP units; use orient='screened' for other blocks")
    ridges = None
    if orient == "pilot":
        ridges, pilot_level = _pilot_ridges(run, quad, block, spacing, level, seed, var, dict(config), t0)
        config.update(pilot_level=pilot_level)
    config.update(spacing=spacing, orient=orient)
    return q.lattice_family(spacing, seed=seed, ridges=ridges)


def _refine_depth(solve, depth_nodes, config: dict) -> LimitResult:
    """``solve(Q)`` on Q depth nodes; with ``depth_nodes="auto"`` start at Q = 17 and repeat on
    2Q - 1 nodes (nested: the old nodes are kept) while the depth-interpolation allowance exceeds
    the quadrature and solver parts, up to Q = 65. The depth part is a tail of Chebyshev
    coefficients, known after one solve. Cost ~ Q (the unit states are interpolated in depth at
    every right-hand side); measured at D = 2: 13 nodes agree with 33 to 1.5e-8, 2.5x cheaper."""
    Q = _AUTO_DEPTH[0] if depth_nodes == "auto" else depth_nodes
    while True:
        config["depth_nodes"] = Q
        res = solve(Q)
        parts = res.error_parts
        if (depth_nodes != "auto" or Q >= _AUTO_DEPTH[1]
                or parts["depth_interpolation"] <= max(parts["quadrature"], parts["solver"])):
            return res
        Q = 2 * Q - 1


def lazy_limit(X, Y, W_E, W_U, *, eta: float, steps: int, activation: str = "tanh", solver: str = "DOP853",
               rtol: float = 1e-10, atol: float = 1e-12, backend: str | None = None, X_eval=None, device="cpu",
               depth_nodes: int | str = "auto", progress: bool = False) -> LimitResult:
    """The lazy (alpha -> infinity) limit: the kernel ODE of SPEC §4.2 over ``steps`` steps.

    ``theta`` is in closed form for identity, erf and relu, and a 2-D quadrature accurate to
    ~1e-13 otherwise (:mod:`meanode.limit.kernels`); the adjoint uses the exact derivative of the
    drift. Arguments and result as :func:`mean_ode_limit` (no alpha, no quadrature over units).
    """
    t0 = time.perf_counter()
    device = resolve_device(device)
    K = nonnegative_int("steps", steps)
    eta = positive_float("eta", eta, allow_zero=True)
    rtol, atol = positive_float("rtol", rtol), positive_float("atol", atol)
    Xt, Yt, WE, WU, Xe = check_problem(X, Y, W_E, W_U, X_eval, torch.float64, device)
    D, N = WE.shape[0], Xt.shape[0]
    _check_depth_nodes(depth_nodes)
    depth_nodes = 33 if depth_nodes == "auto" else depth_nodes
    block = TwoLayerBlock(D, activation)  # validates the activation name
    choice, note = _choose_backend(solver, backend, block, device)
    run = Runner(Xt, Yt, WE, WU, Xe, block, 1.0, eta, K, choice, rtol, atol, DepthGrid(depth_nodes), progress)
    config = dict(eta=eta, steps=K, D=D, N=N, activation=block.act.name, rtol=rtol, atol=atol,
                  depth_nodes=depth_nodes, device=str(device))
    if note:
        config["backend_note"] = note
    run, raw = _call(run, note, "lazy")
    return _finish(run, [raw], None, "lazy", {"kernel": 1e-12}, config, t0)
