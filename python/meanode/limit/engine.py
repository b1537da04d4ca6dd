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

import torch
from torch import Tensor

from ..readout import readout, readout_adjoint
from ..solvers import ODEStats, SolverChoice, SolverError, integrate
from .depth import DepthGrid
from .result import Run

__all__ = ["Dynamics", "run_limit"]


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


def run_limit(dyn: Dynamics, X: Tensor, Y: Tensor, W_E: Tensor, W_U: Tensor, X_eval: Tensor | None,
              K: int, choice: SolverChoice, rtol: float, atol: float, grid: DepthGrid,
              progress: bool = False, max_rhs: int | None = None, divergence_threshold: float | None = None) -> Run:
    """Drive ``dyn`` through K steps; returns the :class:`~meanode.limit.result.Run`: tensors
    ``H (K+1, Q, n, D)``, ``B (K, Q, N, D)``, ``f (K+1, n, d_out)``, the summed :class:`ODEStats`
    and ``depth_tail``, the largest relative Chebyshev tail of any trajectory (its interpolation
    error relative to its size).

    Divergence (the trainer's rule, SPEC §7): when the forward state of step k becomes non-finite
    or its RMS exceeds ``divergence_threshold``, the loop stops; ``diverged_step = k`` and every
    record from step k on is NaN (never a number). ``max_rhs`` caps the right-hand-side
    evaluations of each solve (a :class:`~meanode.solvers.SolverError` naming the cap).
    ``X (N, T, d_in)`` (3-D) is sequence data: token-wise embedding, pooled readout (:mod:`meanode.readout`)."""
    t0 = time.perf_counter()
    N = X.shape[0]
    seq = X.dim() == 3
    X_all = X if X_eval is None else torch.cat([X, X_eval])
    h0 = X_all @ W_E.T
    s_fwd, s_bwd = grid.s, grid.s[::-1].copy()
    stats = ODEStats()
    Hs, Bs, fs = [], [], []
    tail = 0.0
    diverged_step = -1
    for k in range(K + 1):
        try:
            H, st = integrate(dyn.forward, h0, 0.0, 1.0, s_fwd, choice, rtol, atol, max_rhs, divergence_threshold)
        except SolverError as e:
            if e.status != "diverged":
                raise
            diverged_step = k
            if progress:
                print(f"  [{dyn.name}] step {k}/{K}: diverged ({e})", file=sys.stderr, flush=True)
            break
        stats.add(st)
        f = readout(H[-1], W_U, seq)
        Hs.append(H)
        fs.append(f)
        tail = max(tail, grid.relative_tail(H))
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

        B_rev, st = integrate(adjoint, b1, 1.0, 0.0, s_bwd, choice, rtol, atol, max_rhs)
        stats.add(st)
        B = B_rev.flip(0)
        Bs.append(B)
        tail = max(tail, grid.relative_tail(B))
        dyn.update(H_train, B)
    stats.wall_time = time.perf_counter() - t0
    n, d_out = h0.shape[0], W_U.shape[1]
    nan = float("nan")
    while len(Hs) < K + 1:  # after a divergence: NaN, never zeros
        Hs.append(torch.full((grid.Q, *h0.shape), nan, dtype=h0.dtype, device=h0.device))
        fs.append(torch.full((n, d_out), nan, dtype=h0.dtype, device=h0.device))
    while len(Bs) < K:
        Bs.append(torch.full((grid.Q, N, *h0.shape[1:]), nan, dtype=h0.dtype, device=h0.device))
    B_all = torch.stack(Bs) if Bs else torch.empty((0, grid.Q, N, *h0.shape[1:]), dtype=h0.dtype, device=h0.device)
    return Run(H=torch.stack(Hs), B=B_all, f=torch.stack(fs), stats=stats, depth_tail=tail,
               diverged_step=diverged_step)
