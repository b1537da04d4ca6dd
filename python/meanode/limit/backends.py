"""Backends: who runs the K-step loop of a limit. One protocol, two implementations.

* :class:`EngineBackend` — the Python engine (:func:`~meanode.limit.engine.run_limit` with the
  dynamics of :mod:`.closure`, :mod:`.nodes` or :mod:`.lazy`), integrating each ODE with SciPy or
  the batched torch Runge–Kutta (:mod:`meanode.solvers`).
* :class:`meanode.julia.bridge.JuliaBackend` — Julia's OrdinaryDiffEq, which replaces the whole
  engine (not one ODE solve), for the 2LP block on the CPU.

Both take a :class:`RunSpec` and return a :class:`~meanode.limit.result.Run`, so the choice of
method, rule, levels and error estimate in :mod:`meanode.limit.api` is written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch

from ..blocks import Block, TwoLayerBlock
from ..solvers import SolverChoice, resolve_solver
from .depth import DepthGrid
from .quadrature import Rule
from .result import Run

__all__ = ["RunSpec", "Backend", "EngineBackend", "choose_backend", "KINDS"]

#: what a run computes: the exact closure (SPEC §4.1), particles on nodes (§4.3), the lazy ODE (§4.2)
KINDS = ("closure", "quadrature", "lazy")


@dataclass(frozen=True, eq=False)
class RunSpec:
    """Everything one run needs (checked tensors, float64, on one device).

    X (N, d_in), Y (N, d_out), W_E (D, d_in), W_U (D, d_out), X_eval (N_eval, d_in) or None;
    block; alpha, eta, K; choice (the solver); rtol, atol; grid (depth nodes); progress;
    max_rhs (right-hand-side evaluations allowed per solve) and divergence_threshold (the largest RMS
    of a forward state before the run counts as diverged; see :func:`~meanode.limit.engine.run_limit`);
    kernel_refine (lazy): the resolution of the kernel's quadrature (2: every step halved).
    """

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
    max_rhs: int | None = None
    divergence_threshold: float | None = None
    kernel_refine: float = 1.0

    def with_grid(self, Q: int) -> "RunSpec":
        return dataclasses.replace(self, grid=DepthGrid(Q))


class Backend(Protocol):
    """Runs one limit: ``run(spec, kind, rule) -> Run`` (``rule``: the node set, already folded,
    for ``kind == "quadrature"``; else None)."""

    name: str

    def run(self, spec: RunSpec, kind: str, rule: Rule | None = None) -> Run: ...


class EngineBackend:
    """The Python engine with SciPy or torch solvers (``spec.choice.backend``)."""

    name = "python"

    def run(self, spec: RunSpec, kind: str, rule: Rule | None = None) -> Run:
        from .engine import run_limit

        D = spec.W_E.shape[0]
        dev = spec.X.device
        if kind == "closure":
            from .closure import ClosureDynamics
            dyn = ClosureDynamics(D, spec.alpha, spec.eta, spec.grid, torch.float64, dev)
        elif kind == "lazy":
            from .lazy import LazyDynamics
            dyn = LazyDynamics(spec.block.lazy_activation, D, spec.eta, spec.grid, refine=spec.kernel_refine)
        elif kind == "quadrature":
            from .nodes import NodeDynamics
            z0 = torch.tensor(rule.nodes, dtype=torch.float64, device=dev)
            w = torch.tensor(rule.weights, dtype=torch.float64, device=dev)
            dyn = NodeDynamics(spec.block, z0, w, spec.alpha, spec.eta, spec.grid)
        else:
            raise ValueError(f"unknown run kind {kind!r}; one of {KINDS}")
        run = run_limit(dyn, spec.X, spec.Y, spec.W_E, spec.W_U, spec.X_eval, spec.K, spec.choice, spec.rtol,
                        spec.atol, spec.grid, spec.progress, spec.max_rhs, spec.divergence_threshold)
        return dataclasses.replace(run, choice=spec.choice)


class _JuliaOrFallback:
    """``backend="auto"`` with Julia usable: Julia, and SciPy for the rest of the computation if
    Julia fails to start (the reason goes into ``note``)."""

    name = "auto"

    def __init__(self, julia, note: str):
        self.julia, self.note, self.failed = julia, note, False

    def run(self, spec: RunSpec, kind: str, rule: Rule | None = None) -> Run:
        from ..julia import JuliaUnavailableError
        if not self.failed:
            try:
                return self.julia.run(spec, kind, rule)
            except JuliaUnavailableError as e:
                self.failed, self.note = True, f"auto: Julia failed to start, SciPy ran instead ({e})"
        scipy_spec = dataclasses.replace(spec, choice=resolve_solver(spec.choice.requested, "scipy"))
        return EngineBackend().run(scipy_spec, kind, rule)


def choose_backend(solver: str, backend: str | None, block: Block, device: torch.device
                   ) -> tuple[Backend, SolverChoice, str | None]:
    """The backend and solver for a limit: ``backend`` None/``"scipy"``/``"torch"``/``"julia"``/``"auto"``
    or a ``"name:solver"`` prefix. ``"auto"`` takes Julia when it is usable (never starting it
    here) for the 2LP block on the CPU, else SciPy, and says why in the returned note."""
    if not isinstance(solver, str) or not solver:
        raise TypeError(f"solver must be a non-empty string, got {solver!r}")
    prefix = solver.split(":", 1)[0] if ":" in solver else None
    if prefix is not None and backend not in (None, "auto", prefix):
        raise ValueError(f"solver prefix {prefix!r} contradicts backend={backend!r}")
    wanted = prefix or backend
    note = None
    julia_ok_for_block = type(block) is TwoLayerBlock and device.type == "cpu"
    if wanted == "auto":
        from ..julia import resolve_auto_backend
        wanted, note = resolve_auto_backend()
        if wanted == "julia" and not julia_ok_for_block:
            wanted, note = "scipy", "auto: the julia backend solves the 2LP block on the CPU only"
        if wanted == "julia":
            from ..julia.bridge import JuliaBackend
            jb = JuliaBackend()
            return _JuliaOrFallback(jb, note), jb.choice(solver.split(":", 1)[-1]), note
    if wanted == "julia":
        if type(block) is not TwoLayerBlock:
            raise ValueError(f"the julia backend solves the 2LP block only, got {block!r}; use backend='scipy'")
        if device.type != "cpu":
            raise ValueError("the julia backend runs on the CPU; use device='cpu' or another backend")
        from ..julia.bridge import JuliaBackend
        jb = JuliaBackend()
        return jb, jb.choice(solver.split(":", 1)[-1]), note
    name = solver.split(":", 1)[-1]
    return EngineBackend(), resolve_solver(name, wanted), note
