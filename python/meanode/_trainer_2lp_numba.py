"""The numba functions behind :mod:`meanode._trainer_2lp` (imported only when numba is present).

Shapes: ``U, V, tU, tV (L, E, M, D)``, ``hs (L+1, E, n, D)``, ``A, S (L, E, n, M)``,
``b (E, N, D)`` with ``N <= n``, ``c, step (E,)``; ``act`` an activation code
(:data:`meanode._trainer_2lp.ACTIVATION_CODES`). All C-contiguous, one dtype (float32 or float64;
sums are carried in float64).

Kept at module level (not built in a closure) so that ``cache=True`` stores the machine code on
disk and later processes load it instead of compiling again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Reassociation lets LLVM vectorise the dot products; FMA contraction is allowed. No 'nnan' /
# 'ninf': a diverging member must produce inf/NaN exactly as the torch kernel does.
_FM = {"reassoc", "contract"}
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(inline="always", fastmath=_FM, cache=True)
def _sigma(a, act):
    if act == 0:
        return math.tanh(a)
    if act == 1:
        return a
    if act == 2:
        return math.erf(a)
    if act == 3:
        return 0.5 * a * (1.0 + math.erf(a * _INV_SQRT2))
    if a > 0.0:
        return a
    if a <= 0.0:
        return 0.0
    return a  # relu(nan) = nan, as torch.relu


@njit(inline="always", fastmath=_FM, cache=True)
def _dsigma(a, s, act):
    """``sigma'(a)``; for tanh from ``s = sigma(a)`` as ``1 - s^2`` (as the torch kernel)."""
    if act == 0:
        return 1.0 - s * s
    if act == 1:
        return 1.0
    if act == 2:
        return _TWO_OVER_SQRT_PI * math.exp(-a * a)
    if act == 3:
        return 0.5 * (1.0 + math.erf(a * _INV_SQRT2)) + a * _INV_SQRT_2PI * math.exp(-0.5 * a * a)
    if a > 0.0:
        return 1.0
    return 0.0


@njit(fastmath=_FM, cache=True)
def _forward_one(U, V, hs, A, S, e, c, act, acc):
    """Member ``e``: ``h^{l+1} = h^l + c sum_j sigma(u_j . h^l / D) v_j`` for l = 0..L-1 (``acc (n, D)`` scratch)."""
    L, _, M, D = U.shape
    n = hs.shape[2]
    inv_d = 1.0 / D
    for l in range(L):
        h = hs[l, e]
        u_l, v_l, a_l, s_l = U[l, e], V[l, e], A[l, e], S[l, e]
        acc[:, :] = 0.0
        for j in range(M):
            u, v = u_l[j], v_l[j]
            for i in range(n):
                hi = h[i]
                t = 0.0
                for d in range(D):
                    t += hi[d] * u[d]
                a = t * inv_d
                s = _sigma(a, act)
                a_l[i, j] = a
                s_l[i, j] = s
                ai = acc[i]
                for d in range(D):
                    ai[d] += s * v[d]
        hn = hs[l + 1, e]
        for i in range(n):
            for d in range(D):
                hn[i, d] = h[i, d] + c * acc[i, d]


@njit(fastmath=_FM, cache=True)
def _backward_one(U, V, hs, A, S, b, e, c, step, tU, tV, act, bacc, g, w):
    """Member ``e``, layers L-1..0: ``b <- b^l`` and ``tV += step S^T b``, ``tU += (step/D) g^T h``
    unit by unit; each row of U, V is read before its target row is written (``tU is U`` allowed)."""
    L, _, M, D = U.shape
    N = b.shape[0]
    c_d = c / D
    step_d = step / D
    for l in range(L - 1, -1, -1):
        h = hs[l, e]
        u_l, v_l, a_l, s_l, tu_l, tv_l = U[l, e], V[l, e], A[l, e], S[l, e], tU[l, e], tV[l, e]
        bacc[:, :] = 0.0
        for j in range(M):
            u, v = u_l[j], v_l[j]
            for i in range(N):
                bi = b[i]
                t = 0.0
                for d in range(D):
                    t += bi[d] * v[d]
                g[i] = t * _dsigma(a_l[i, j], s_l[i, j], act)  # sigma'(a_ij) (v_j . b_i)
            w[:] = 0.0
            for i in range(N):
                s, bi = s_l[i, j], b[i]
                for d in range(D):
                    w[d] += s * bi[d]
            tv = tv_l[j]
            for d in range(D):
                tv[d] += step * w[d]
            for i in range(N):
                gi, ai = g[i], bacc[i]
                for d in range(D):
                    ai[d] += gi * u[d]
            w[:] = 0.0
            for i in range(N):
                gi, hi = g[i], h[i]
                for d in range(D):
                    w[d] += gi * hi[d]
            tu = tu_l[j]
            for d in range(D):
                tu[d] += step_d * w[d]
        for i in range(N):
            for d in range(D):
                b[i, d] += c_d * bacc[i, d]


@njit(fastmath=_FM, cache=True)
def forward_serial(U, V, hs, A, S, c, act):
    for e in range(U.shape[1]):
        _forward_one(U, V, hs, A, S, e, c[e], act, np.empty_like(hs[0, 0]))


@njit(fastmath=_FM, cache=True, parallel=True)
def forward_parallel(U, V, hs, A, S, c, act):
    for e in prange(U.shape[1]):
        _forward_one(U, V, hs, A, S, e, c[e], act, np.empty_like(hs[0, 0]))


@njit(fastmath=_FM, cache=True)
def backward_serial(U, V, hs, A, S, b0, c, step, tU, tV, act):
    for e in range(U.shape[1]):
        b = b0[e].copy()
        _backward_one(U, V, hs, A, S, b, e, c[e], step[e], tU, tV, act, np.empty_like(b), np.empty_like(b[:, 0]),
                      np.empty_like(b[0]))


@njit(fastmath=_FM, cache=True, parallel=True)
def backward_parallel(U, V, hs, A, S, b0, c, step, tU, tV, act):
    for e in prange(U.shape[1]):
        b = b0[e].copy()
        _backward_one(U, V, hs, A, S, b, e, c[e], step[e], tU, tV, act, np.empty_like(b), np.empty_like(b[:, 0]),
                      np.empty_like(b[0]))
