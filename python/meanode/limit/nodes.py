"""Particles on quadrature nodes: the Mean ODE of SPEC §3 for any block.

The expectation over ``z ~ mu0`` is replaced by a weighted node set ``{(z_i, w_i)}`` (a
:class:`~meanode.limit.quadrature.Rule`). Each node is a unit whose trained value
``Z_k(s, z_i)`` is kept at the Q depth nodes ``s_q`` and interpolated in between:

    drift_k(s, h)      = alpha * sum_i w_i phi(h; Z_k(s, z_i))
    adjoint_k(s, h, b) = -alpha * sum_i w_i d_h phi(h; Z_k(s, z_i))^T b
    Z_{k+1}(s_q, z_i)  = Z_k(s_q, z_i) - (eta kappa / alpha) sum_n d_z phi(h_k(s_q, x_n); Z_k(s_q, z_i))^T b_k(s_q, x_n)

The update at the depth nodes costs O(1) per step (no replay of earlier steps).
"""

from __future__ import annotations

from torch import Tensor

from ..blocks import Block
from .depth import DepthGrid
from .engine import Dynamics


class NodeDynamics(Dynamics):
    """Units ``Z (Q, P, dz)`` on depth nodes; ``z0 (P, dz)``, ``w (P,)`` tensors on one device."""

    name = "quadrature"

    def __init__(self, block: Block, z0: Tensor, w: Tensor, alpha: float, eta: float, grid: DepthGrid):
        self.block, self.w, self.alpha, self.grid = block, w, alpha, grid
        self.rate = eta * block.kappa / alpha
        self.z0 = z0
        self.Z: Tensor | None = None  # None while Z_k(s, z) = z0 for every s (k = 0)

    def _units(self, s: float) -> Tensor:
        return self.z0 if self.Z is None else self.grid.interp(self.Z, s)

    def forward(self, s, h):
        return self.alpha * self.block.drift(h, self._units(s), self.w)

    def adjoint(self, s, h, b):
        return -self.alpha * self.block.vjp_h(h, self._units(s), self.w, b)

    def update(self, H, B):
        Z = self.z0.expand(self.grid.Q, *self.z0.shape) if self.Z is None else self.Z
        self.Z = Z - self.rate * self.block.vjp_z(H, Z, B)
