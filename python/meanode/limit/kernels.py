"""The lazy-limit kernel theta (SPEC §4.2), assembled from an activation's pair expectations.

    theta(h, h') = E[sigma(a) sigma(a')] + E[sigma'(a) sigma'(a')] (h . h') / D,
    (a, a') centred Gaussian, Var a = |h|^2/D, Var a' = |h'|^2/D, Cov = h . h'/D.

The two expectations are the activation's lazy kernel,
:attr:`meanode.activations.Activation.pair_expectations` (closed forms or the quadrature of
:mod:`meanode.gaussian`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..activations import Activation, get_activation

__all__ = ["theta"]

# above this many h_p * h'_q products, c = h . h' / D is taken by matmul instead
_ELEMENTWISE_DOT_LIMIT = 1 << 24


def theta(activation: str | Activation, h: Tensor, hp: Tensor, *, refine: float = 1.0) -> Tensor:
    """Lazy-limit kernel matrix (SPEC 4.2).

    ``h``: (..., P, D), ``hp``: (..., Q, D) (batch dims broadcast) -> (..., P, Q) with::

        theta[p, q] = E[sigma(a) sigma(a')] + E[sigma'(a) sigma'(a')] * c,
        q1 = |h_p|^2 / D,  q2 = |h'_q|^2 / D,  c = h_p . h'_q / D,

    ``(a, a')`` centred Gaussian with variances ``q1, q2`` and covariance ``c``.  float64,
    differentiable by autograd with respect to both ``h`` and ``hp`` (finite on the diagonal
    ``h_p = h'_q``).  For ``identity`` this is exactly ``2 h.h'/D``.  ``c`` is summed the same
    way as ``q1, q2`` (elementwise products), so ``h_p = h'_q`` gives ``c^2 = q1 q2``
    exactly (for ``relu`` this keeps the gradient at the kink finite); for more than 2^24
    products it falls back to matmul.  ``refine`` is passed to the activation's
    ``pair_expectations`` (quadrature kernels: every step divided by it).
    """
    act = get_activation(activation, warn=False)
    if act.pair_expectations is None:
        raise ValueError(f"activation {act.name!r} has no lazy kernel (pair_expectations); the lazy limit needs one")
    h, hp = torch.as_tensor(h, dtype=torch.float64), torch.as_tensor(hp, dtype=torch.float64)
    if h.dim() < 2 or hp.dim() < 2:
        raise ValueError("theta expects h of shape (..., P, D) and hp of shape (..., Q, D)")
    if h.shape[-1] != hp.shape[-1]:
        raise ValueError(f"embedding dims differ: h has D={h.shape[-1]}, hp has D={hp.shape[-1]}")
    D = h.shape[-1]
    q1 = (h * h).sum(-1)[..., :, None] / D
    q2 = (hp * hp).sum(-1)[..., None, :] / D
    batch = torch.broadcast_shapes(h.shape[:-2], hp.shape[:-2])
    n_products = math.prod(batch) * h.shape[-2] * hp.shape[-2] * D
    if n_products > _ELEMENTWISE_DOT_LIMIT:
        c = (h @ hp.transpose(-1, -2)) / D
        ess, edd = act.pair_expectations(q1, q2, c, refine=refine)
        return ess + edd * c
    c = (h[..., :, None, :] * hp[..., None, :, :]).sum(-1) / D
    # q1 q2 - c^2 = q1 |h' - (c/q1) h|^2 / D without cancellation (exactly 0 for h' = h); the relu
    # kernel needs it near its kink, the smooth ones ignore it
    pos = q1 > 0
    ratio = torch.where(pos, c / torch.where(pos, q1, torch.ones_like(q1)), torch.zeros_like(c))
    resid = hp[..., None, :, :] - ratio[..., None] * h[..., :, None, :]
    s2 = q1 * (resid * resid).sum(-1) / D
    ess, edd = act.pair_expectations(q1, q2, c, refine=refine, s2=s2)
    return ess + edd * c
