"""The Neural Mean ODE training loop (SPEC §3), generic over how expectations are computed.

For k = 0..K (step k is taken *before* the k-th update):

    forward   d/ds h_k(s, x) = drift_k(s, h),                h_k(0, x) = W_E x        s: 0 -> 1
    output    f_k(x) = W_U^T h_k(1, x) / D
    adjoint   d/ds b_k(s, x_n) = adjoint_k(s, h_k(s, x_n), b), b_k(1, x_n) = (1/N) W_U (f_k(x_n) - y_n) / D
    update    the unit state (nodes, moments or kernel history) from h_k, b_k on the depth grid

What ``drift_k``, ``adjoint_k`` and the update are is the business of a *dynamics* object
(:class:`Dynamics`): particles on quadrature nodes (:mod:`.nodes`), the exact second-moment
closure for sigma = identity (:mod:`.closure`), or the lazy kernel ODE (:mod:`.lazy`).

Trajectories are recorded at the Chebyshev–Lobatto depth nodes of a :class:`DepthGrid`
(every solver lands on or interpolates to them), so ``h_k(s, x)`` and ``b_k(s, x)`` can be
evaluated at any s with spectral accuracy and the unit states updated on the same nodes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..readout import readout, readout_adjoint
from ..solvers import ODEStats, SolverChoice, integrate
from .depth import DepthGrid

__all__ = ["Dynamics", "LimitResult", "run_limit"]


class Dynamics:
    """Interface of a limit's dynamics; the engine calls, for each step k,
    ``forward`` during the forward solve, ``adjoint`` during the adjoint solve, then ``update``.

    ``forward(s, h)``: ``h (n, D) -> dh/ds (n, D)`` (n = training plus held-out inputs).
    ``adjoint(s, h, b)``: ``h, b (N, D) -> db/ds (N, D)`` (training inputs only).
    ``update(H, B)``: ``H, B (Q, N, D)`` = ``h_k, b_k`` at the depth nodes -> next unit state.
    Sequence data (``X (N, T, d_in)``, a sequence block) carry a token axis: ``h, b (n, T, D)``.
    """

    name: str = "dynamics"

    def forward(self, s: float, h: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, s: float, h: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, H: Tensor, B: Tensor) -> None:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class LimitResult:
    """A Mean ODE (or lazy ODE) limit over K steps, as numpy arrays.

    f: (K+1, N, d_out), h: (K+1, N, D) with ``h = h_k(1, x)`` ((K+1, N, T, D) for sequence data,
    ``f = W_U^T pool(h) / D``, :mod:`meanode.readout`); f_eval, h_eval on held-out inputs.
    loss: (K+1,).
    error_estimate: a bound on the max-abs error of ``f`` (all steps, samples, outputs), the sum
        of ``error_parts`` (quadrature gap or spread, depth interpolation, solver tolerance).
    H: (K+1, Q, n, D) ``h_k`` at the depth nodes (training inputs first, then held-out ones);
    B: (K, Q, N, D) ``b_k`` at the depth nodes. Use :meth:`h_at` / :meth:`b_at` for any s.
    solver: the solver that ran; stats: RHS evaluations, steps, Jacobians, wall time.
    """

    f: np.ndarray
    h: np.ndarray
    f_eval: np.ndarray | None
    h_eval: np.ndarray | None
    loss: np.ndarray
    error_estimate: float
    error_parts: dict
    method: str
    solver: SolverChoice
    stats: dict
    depth: DepthGrid
    H: np.ndarray
    B: np.ndarray
    config: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.f.shape[0] - 1

    def __repr__(self) -> str:
        return (f"LimitResult(method={self.method!r}, steps={self.steps}, N={self.f.shape[1]}, D={self.h.shape[2]}, "
                f"error_estimate={self.error_estimate:.2e}, solver='{self.solver}')")

    def summary(self) -> str:
        """A few lines: method, solver, the error bound and its parts, the work done."""
        parts = ", ".join(f"{k} {v:.1e}" for k, v in self.error_parts.items())
        st = self.stats
        return (f"{self.method}: K={self.steps}, loss {self.loss[0]:.6f} -> {self.loss[-1]:.6f}\n"
                f"  output error <= {self.error_estimate:.2e} (max-abs; {parts})\n"
                f"  solver {self.solver}: {st['nfev']} RHS evaluations, {st['nsteps']} steps, "
                f"{st['njev']} Jacobians, {st['nsolves']} solves, {st['wall_time']:.2f} s")

    def h_at(self, s, k: int | None = None) -> np.ndarray:
        """``h_k(s, x)``: ``(S, n, D)`` for s of shape (S,), or ``(n, D)`` for a scalar;
        all k (leading axis K+1) when ``k`` is None."""
        return self._at(self.H, s, k)

    def b_at(self, s, k: int | None = None) -> np.ndarray:
        """``b_k(s, x_n)`` on the training inputs, k = 0..K-1; shapes as :meth:`h_at`."""
        return self._at(self.B, s, k)

    def _at(self, V: np.ndarray, s, k):
        vals = torch.from_numpy(V if k is None else V[k])
        if k is None:
            vals = vals.movedim(0, 1)  # (Q, K, ...)
        out = self.depth.interp_many(vals, s).numpy()
        if np.ndim(s) == 0:
            out = out[0]
        elif k is None:
            out = np.moveaxis(out, 1, 0)
        return out


def run_limit(dyn: Dynamics, X: Tensor, Y: Tensor, W_E: Tensor, W_U: Tensor, X_eval: Tensor | None,
              K: int, choice: SolverChoice, rtol: float, atol: float, grid: DepthGrid,
              progress: bool = False) -> dict:
    """Drive ``dyn`` through K steps; returns tensors ``H (K+1, Q, n, D)``, ``B (K, Q, N, D)``,
    ``f (K+1, n, d_out)``, the summed :class:`ODEStats` and ``depth_tail``, the largest relative
    Chebyshev tail of any trajectory (its interpolation error relative to its size).
    ``X (N, T, d_in)`` (3-D) is sequence data: token-wise embedding, pooled readout."""
    t0 = time.perf_counter()
    N = X.shape[0]
    seq = X.dim() == 3
    X_all = X if X_eval is None else torch.cat([X, X_eval])
    h0 = X_all @ W_E.T
    s_fwd, s_bwd = grid.s, grid.s[::-1].copy()
    stats = ODEStats()
    Hs, Bs, fs = [], [], []
    tail = 0.0
    for k in range(K + 1):
        H, st = integrate(dyn.forward, h0, 0.0, 1.0, s_fwd, choice, rtol, atol)
        stats.add(st)
        f = readout(H[-1], W_U, seq)
        Hs.append(H)
        fs.append(f)
        tail = max(tail, _relative_tail(grid, H))
        if progress:
            loss = 0.5 * float((f[:N] - Y).pow(2).sum()) / N
            print(f"  [{dyn.name}] step {k}/{K}: loss {loss:.6f}, {stats.nfev} RHS evaluations, "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if k == K:
            break
        H_train = H[:, :N]
        b1 = readout_adjoint(f[:N] - Y, W_U, N, X.shape[1] if seq else None)

        def adjoint(s, b, H_train=H_train):
            return dyn.adjoint(s, grid.interp(H_train, s), b)

        B_rev, st = integrate(adjoint, b1, 1.0, 0.0, s_bwd, choice, rtol, atol)
        stats.add(st)
        B = B_rev.flip(0)
        Bs.append(B)
        tail = max(tail, _relative_tail(grid, B))
        dyn.update(H_train, B)
    stats.wall_time = time.perf_counter() - t0
    B_all = torch.stack(Bs) if Bs else torch.empty((0, grid.Q, N, *h0.shape[1:]), dtype=h0.dtype, device=h0.device)
    return dict(H=torch.stack(Hs), B=B_all, f=torch.stack(fs), stats=stats, depth_tail=tail)


def _relative_tail(grid: DepthGrid, V: Tensor) -> float:
    scale = float(V.abs().max())
    return grid.tail(V) / scale if scale > 0 else 0.0
