"""The lazy limit alpha -> infinity (SPEC §4.2): a kernel ODE in depth.

Units move by ``W_k / alpha``; the drift becomes a sum over the history of the training
trajectories at the same depth s:

    d/ds h_k(s, x) = -eta D sum_{j<k} sum_n theta(h_k(s, x), h_j(s, x_n)) b_j(s, x_n)
    theta(h, h')   = E[sigma(a) sigma(a')] + E[sigma'(a) sigma'(a')] (h . h') / D

with ``(a, a')`` centred Gaussian, ``Var a = |h|^2/D``, ``Var a' = |h'|^2/D``, ``Cov = h . h'/D``.
The adjoint is ``d/ds b = -(d_h drift)^T b``, the exact vector-Jacobian product of the drift
(taken by autograd through :func:`~meanode.limit.kernels.theta`). The history ``h_j, b_j`` is
kept at the depth nodes and interpolated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .depth import DepthGrid
from .engine import Dynamics
from .kernels import theta


class LazyDynamics(Dynamics):
    """History ``Hh, Bh (Q, k*N, D)`` of the training trajectories of steps ``j < k``."""

    name = "lazy"

    def __init__(self, activation, D: int, eta: float, grid: DepthGrid, refine: float = 1.0):
        """``activation``: an :class:`~meanode.activations.Activation` with a lazy kernel (or its name);
        ``refine``: the kernel quadrature's resolution (:func:`~meanode.limit.kernels.theta`)."""
        self.activation, self.D, self.eta, self.grid, self.refine = activation, D, eta, grid, refine
        self.Hh: Tensor | None = None
        self.Bh: Tensor | None = None

    def _drift(self, s: float, h: Tensor) -> Tensor:
        if self.Hh is None:
            return torch.zeros_like(h)
        Hs, Bs = self.grid.interp(self.Hh, s), self.grid.interp(self.Bh, s)
        return -self.eta * self.D * theta(self.activation, h, Hs, refine=self.refine) @ Bs

    def forward(self, s, h):
        return self._drift(s, h)

    def adjoint(self, s, h, b):
        if self.Hh is None:
            return torch.zeros_like(b)
        with torch.enable_grad():
            hh = h.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._drift(s, hh), hh, grad_outputs=b)
        return -g

    def update(self, H, B):
        self.Hh = H if self.Hh is None else torch.cat([self.Hh, H], dim=1)
        self.Bh = B if self.Bh is None else torch.cat([self.Bh, B], dim=1)
