"""Depth grid: Chebyshev–Lobatto nodes on s in [0, 1] and barycentric interpolation.

Everything that depends on depth in the limit — the trajectories ``h_k(s, x)``, ``b_k(s, x)``
and the unit states ``Z_k(s, z)`` — is analytic in s (ODE solutions with analytic right-hand
sides, and finitely many updates built from them). It is stored at Q Chebyshev–Lobatto
nodes and evaluated anywhere by barycentric interpolation, whose error decays geometrically
in Q (SPEC §4.3: "storing them on Chebyshev nodes in depth and interpolating costs O(1) in
k"; §8: linear interpolation on a grid would cap the accuracy at O(ds^2)).

The interpolation error is estimated from the tail of the Chebyshev coefficients
(:meth:`DepthGrid.tail`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["DepthGrid"]


class DepthGrid:
    """Q Chebyshev–Lobatto nodes ``s_q = (1 - cos(pi q / (Q-1))) / 2`` (``s_0 = 0``, ``s_{Q-1} = 1``)."""

    def __init__(self, Q: int = 33):
        if not isinstance(Q, int) or Q < 3:
            raise ValueError(f"depth_nodes must be an integer >= 3, got {Q!r}")
        self.Q = Q
        q = np.arange(Q)
        self.s = (1.0 - np.cos(np.pi * q / (Q - 1))) / 2.0
        self.s[0], self.s[-1] = 0.0, 1.0
        w = (-1.0) ** q
        w[0] *= 0.5
        w[-1] *= 0.5
        self._w = w

    def __repr__(self) -> str:
        return f"DepthGrid(Q={self.Q})"

    def weights(self, s: float) -> np.ndarray:
        """Interpolation weights ``ell_q(s)`` (Q,) with ``p(s) = sum_q ell_q(s) p(s_q)``."""
        d = s - self.s
        hit = np.flatnonzero(d == 0.0)
        if hit.size:
            ell = np.zeros(self.Q)
            ell[hit[0]] = 1.0
            return ell
        t = self._w / d
        return t / t.sum()

    def interp(self, values: Tensor, s: float) -> Tensor:
        """``values (Q, ...)`` at the nodes -> the interpolant at ``s``, shape ``(...)``."""
        ell = torch.as_tensor(self.weights(float(s)), dtype=values.dtype, device=values.device)
        return torch.tensordot(ell, values, dims=1)

    def interp_many(self, values: Tensor, s) -> Tensor:
        """``values (Q, ...)`` -> interpolants at every ``s`` (S,): ``(S, ...)``."""
        ells = np.stack([self.weights(float(si)) for si in np.atleast_1d(s)])
        ell = torch.as_tensor(ells, dtype=values.dtype, device=values.device)
        return torch.tensordot(ell, values, dims=1)

    def coefficients(self, values: Tensor) -> Tensor:
        """Chebyshev coefficients ``(Q, ...)`` of the interpolant (a DCT-I, as a matrix product)."""
        Q = self.Q
        j = np.arange(Q)
        # values at nodes ordered by s ascending correspond to x = -cos(pi q/(Q-1)) = cos(pi (Q-1-q)/(Q-1))
        C = np.cos(np.pi * np.outer(j, (Q - 1 - j)) / (Q - 1))
        C[:, 0] *= 0.5
        C[:, -1] *= 0.5
        C *= 2.0 / (Q - 1)
        C[0] *= 0.5
        C[-1] *= 0.5
        Ct = torch.as_tensor(C, dtype=values.dtype, device=values.device)
        return torch.tensordot(Ct, values, dims=1)

    def tail(self, values: Tensor) -> float:
        """Interpolation error estimate: the largest of the last three coefficient magnitudes
        (times 2 for safety), in the units of ``values``. Geometric decay makes this an upper
        bound on the interpolation error once the coefficients are resolved."""
        c = self.coefficients(values)
        return 2.0 * float(c[-3:].abs().max())

    def relative_tail(self, values: Tensor) -> float:
        """:meth:`tail` relative to the largest magnitude of ``values`` (0 for all-zero values)."""
        scale = float(values.abs().max())
        return self.tail(values) / scale if scale > 0 else 0.0
