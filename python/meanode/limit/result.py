"""What a limit computation returns: one engine :class:`Run`, and the packaged :class:`LimitResult`.

Every backend (the Python engine with SciPy or torch solvers, the Julia bridge) returns a
:class:`Run` for one solve of the K-step loop; :mod:`meanode.limit.api` combines one or more runs
(two quadrature levels, RQMC replicates, refined depth grids) into a :class:`LimitResult` with
its error estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..solvers import ODEStats, SolverChoice
from .depth import DepthGrid

__all__ = ["Run", "LimitResult"]


@dataclass(frozen=True, eq=False)
class Run:
    """One solve of the limit's K-step loop (SPEC §3), as every backend returns it.

    H: (K+1, Q, n, D) ``h_k`` at the depth nodes (n = training then held-out inputs);
    B: (K, Q, N, D) ``b_k`` at the depth nodes; f: (K+1, n, d_out) outputs;
    stats: the summed solver work; depth_tail: the largest relative Chebyshev tail of any
    trajectory (its interpolation error relative to its size); choice: the solver that ran
    (set by the backend: Julia names the OrdinaryDiffEq method it used); diverged_step: the step
    whose forward state became non-finite or exceeded the divergence threshold (its records and
    all later ones NaN), -1 if none.
    """

    H: Tensor
    B: Tensor
    f: Tensor
    stats: ODEStats
    depth_tail: float
    choice: SolverChoice | None = None
    diverged_step: int = -1


@dataclass(frozen=True, eq=False)
class LimitResult:
    """A Mean ODE (or lazy ODE) limit over K steps, as numpy arrays.

    f: (K+1, N, d_out), h: (K+1, N, D) with ``h = h_k(1, x)``; f_eval, h_eval on held-out inputs.
    loss: (K+1,).
    error_estimate: an estimate (not a proven bound) of the max-abs error of ``f`` (all steps,
        samples, outputs), the sum of ``error_parts`` (quadrature gap or spread, depth
        interpolation, solver tolerance; :mod:`meanode.limit.estimate`).
    h_error_estimate, h_error_parts: the same for ``h`` (max-abs over steps, samples, coordinates).
    verified: False when the rule's convergence check failed (``warnings`` says why).
    tol, tol_met: the tolerance asked for (``tol=``) and whether both estimates meet it.
    H: (K+1, Q, n, D) ``h_k`` at the depth nodes (training inputs first, then held-out ones);
    B: (K, Q, N, D) ``b_k`` at the depth nodes. Use :meth:`h_at` / :meth:`b_at` for any s.
    solver: the solver that ran; stats: RHS evaluations, steps, Jacobians, solves, wall time.
    diverged_step: the step from which the records are NaN (the forward state became non-finite or
    its RMS exceeded the divergence threshold, the trainer's rule), -1 if it never diverged.
    alpha (None for the lazy limit), eta: the dynamics; rule: the quadrature options that ran
    (a :class:`~meanode.limit.options.RuleOptions` with every default filled in), or None.
    config: provenance (every setting, as a plain dict for files and reports); the package
    itself reads the typed fields.
    """

    f: np.ndarray
    h: np.ndarray
    f_eval: np.ndarray | None
    h_eval: np.ndarray | None
    loss: np.ndarray
    error_estimate: float
    error_parts: dict
    h_error_estimate: float
    h_error_parts: dict
    method: str
    solver: SolverChoice
    stats: ODEStats
    depth: DepthGrid
    H: np.ndarray
    B: np.ndarray
    alpha: float | None = None
    eta: float = 0.0
    rule: Any = None
    diverged_step: int = -1
    verified: bool = True
    warnings: tuple = ()
    tol: float | None = None
    tol_met: bool | None = None
    config: dict = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        """True when the dynamics diverged (SPEC §7): records from ``diverged_step`` on are NaN and
        the error estimate is NaN."""
        return self.diverged_step >= 0

    @property
    def steps(self) -> int:
        return self.f.shape[0] - 1

    @property
    def D(self) -> int:
        return int(self.h.shape[-1])

    @property
    def N(self) -> int:
        return int(self.f.shape[1])

    def __repr__(self) -> str:
        return (f"LimitResult(method={self.method!r}, steps={self.steps}, N={self.N}, D={self.D}, "
                f"error_estimate={self.error_estimate:.2e}, solver='{self.solver}')")

    def summary(self) -> str:
        """A few lines: method, solver, the error estimates and their parts, checks, the work done."""
        fparts = ", ".join(f"{k} {v:.1e}" for k, v in self.error_parts.items())
        hparts = ", ".join(f"{k} {v:.1e}" for k, v in self.h_error_parts.items())
        st = self.stats
        lines = [f"{self.method}: K={self.steps}, loss {self.loss[0]:.6f} -> {self.loss[-1]:.6f}",
                 f"  output error estimate {self.error_estimate:.2e} (max-abs over steps, samples, outputs; {fparts})",
                 f"  hidden error estimate {self.h_error_estimate:.2e} (max-abs of h_k(1, x); {hparts})",
                 f"  solver {self.solver}: {st.nfev} RHS evaluations, {st.nsteps} steps, "
                 f"{st.njev} Jacobians, {st.nsolves} solves, {st.wall_time:.2f} s"]
        if self.solver.method != self.solver.requested:
            lines.append(f"  note: solver {self.solver.requested!r} was mapped to {self.solver.backend}:{self.solver.method}")
        if self.tol is not None:
            lines.append(f"  tol {self.tol:g}: {'met' if self.tol_met else 'NOT met'}")
        if self.diverged:
            lines.append(f"  DIVERGED at step {self.diverged_step}: records from there on are NaN")
        if not self.verified:
            lines.append("  UNVERIFIED: the convergence check failed")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def h_at(self, s, k: int | None = None) -> np.ndarray:
        """``h_k(s, x)``: ``(S, n, D)`` for s of shape (S,), or ``(n, D)`` for a scalar;
        all k (leading axis K+1) when ``k`` is None. ``s`` must lie in [0, 1]."""
        return self._at(self.H, s, k)

    def b_at(self, s, k: int | None = None) -> np.ndarray:
        """``b_k(s, x_n)`` on the training inputs, k = 0..K-1; shapes as :meth:`h_at`."""
        return self._at(self.B, s, k)

    def _at(self, V: np.ndarray, s, k):
        s_arr = np.asarray(s, dtype=float)
        if not np.all(np.isfinite(s_arr)) or np.any(s_arr < 0.0) or np.any(s_arr > 1.0):
            raise ValueError(f"s must lie in [0, 1] (depth), got {s!r}")
        vals = torch.from_numpy(V if k is None else V[k])
        if k is None:
            vals = vals.movedim(0, 1)  # (Q, K, ...)
        out = self.depth.interp_many(vals, s).numpy()
        if np.ndim(s) == 0:
            out = out[0]
        elif k is None:
            out = np.moveaxis(out, 1, 0)
        return out
