"""Particles on quadrature nodes: the Mean ODE of SPEC §3 for any block.

The expectation over ``z ~ mu0`` is replaced by a weighted node set ``{(z_i, w_i)}`` (a
:class:`~meanode.limit.quadrature.Rule`). Each node is a unit whose trained value
``Z_k(s, z_i)`` is kept at the Q depth nodes ``s_q`` and interpolated in between:

    drift_k(s, h)      = alpha * sum_i w_i phi(h; Z_k(s, z_i))
    adjoint_k(s, h, b) = -alpha * sum_i w_i d_h phi(h; Z_k(s, z_i))^T b
    Z_{k+1}(s_q, z_i)  = Z_k(s_q, z_i) - (eta kappa / alpha) sum_n d_z phi(h_k(s_q, x_n); Z_k(s_q, z_i))^T b_k(s_q, x_n)

The update at the depth nodes costs O(1) per step (no replay of earlier steps). It runs a few
depth nodes at a time (:data:`UPDATE_ELEMENTS`): its per-(input, unit) intermediates over all Q
depth nodes at once were what ran a 1.7-million-node D = 3 lattice out of 24 GiB.
"""

from __future__ import annotations

from torch import Tensor

from ..blocks import Block
from .depth import DepthGrid
from .engine import Dynamics


#: the update's intermediates hold about this many elements per (input x unit) array: depth nodes are
#: updated in chunks of ``max(1, UPDATE_ELEMENTS // (inputs x units x tokens))`` (a chunk of depth
#: nodes runs the same operations as all of them; results agree to rounding)
UPDATE_ELEMENTS = 1 << 23


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
        Q = self.grid.Q
        Z = self.z0.expand(Q, *self.z0.shape).clone() if self.Z is None else self.Z  # owned: updated in place
        per_node = max(1, H[0].numel() // H.shape[-1]) * self.z0.shape[0]  # inputs (x tokens) x units
        chunk = max(1, UPDATE_ELEMENTS // per_node)
        for q0 in range(0, Q, chunk):
            sl = slice(q0, min(Q, q0 + chunk))
            Z[sl] -= self.rate * self.block.vjp_z(H[sl], Z[sl], B[sl])
        self.Z = Z
