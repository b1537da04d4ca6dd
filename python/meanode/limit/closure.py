"""Exact second-moment closure for the identity activation (SPEC §4.1).

With sigma = id the 2LP unit update is linear in ``(u, v)``:

    u' = u - c G^T v,   v' = v - c G u,   c = eta / alpha,   G_k(s) = sum_n b_k(s, x_n) h_k(s, x_n)^T

so the law of the units stays Gaussian and only its covariance matters:
``Sigma_{k+1}(s) = T Sigma_k(s) T^T`` with ``T = [[I, -c G^T], [-c G, I]]``, ``Sigma_0 = D I_{2D}``.
The Mean ODE then reads, with ``C_vu = E[v u^T]`` (the lower-left block of Sigma),

    d/ds h = (alpha / D) C_vu h,       d/ds b = -(alpha / D) C_vu^T b.

Linear ODEs in s with analytic coefficients: a high-order solver gives machine-precision
references. ``Sigma_k`` is kept at the depth nodes and interpolated like any unit state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .depth import DepthGrid
from .engine import Dynamics


class ClosureDynamics(Dynamics):
    """Covariance ``Sigma (Q, 2D, 2D)`` of ``[u; v]`` on the depth nodes."""

    name = "closure"

    def __init__(self, D: int, alpha: float, eta: float, grid: DepthGrid, dtype=torch.float64, device="cpu"):
        self.D, self.alpha, self.grid = D, alpha, grid
        self.c = eta / alpha
        self.sigma0 = D * torch.eye(2 * D, dtype=dtype, device=device)
        self.Sigma: Tensor | None = None

    def _C_vu(self, s: float) -> Tensor:
        S = self.sigma0 if self.Sigma is None else self.grid.interp(self.Sigma, s)
        return S[self.D:, : self.D]

    def forward(self, s, h):
        return (self.alpha / self.D) * h @ self._C_vu(s).T

    def adjoint(self, s, h, b):
        return -(self.alpha / self.D) * b @ self._C_vu(s)

    def update(self, H, B):
        D = self.D
        G = torch.einsum("qni,qnj->qij", B, H)  # sum_n b_n h_n^T, (Q, D, D)
        T = torch.eye(2 * D, dtype=H.dtype, device=H.device).repeat(self.grid.Q, 1, 1)
        T[:, :D, D:] = -self.c * G.transpose(1, 2)
        T[:, D:, :D] = -self.c * G
        S = self.sigma0.expand(self.grid.Q, 2 * D, 2 * D) if self.Sigma is None else self.Sigma
        self.Sigma = T @ S @ T.transpose(1, 2)
