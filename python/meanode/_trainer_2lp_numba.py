"""The numba functions behind :mod:`meanode._trainer_2lp` (imported only when numba is present).

Shapes: the units are stored transposed, ``UT, VT (L, E, D, M)`` (row ``d`` of ``UT[l, e]`` holds
coordinate d of every unit of the layer, so the inner loops run over the M units, contiguous);
``hs (L+1, E, n, D)``, ``A, S (L, E, n, M)`` the pre-activations and ``sigma(a)``, ``b (E, N, D)``
with ``N <= n``, ``c, step (E,)``, ``act`` an activation code (see ``ACTIVATION_CODES`` in
:mod:`meanode._trainer_2lp`). All C-contiguous, one dtype (float32 or float64).

Each backward layer reads every row of ``VT`` (then ``UT``) once and writes it once: row d
first feeds the products that need the weights of before the update, then is updated.

Kept at module level (not built in a closure) so that ``cache=True`` keeps the machine code on
disk and later processes load it instead of compiling.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Reassociation lets LLVM vectorise the reductions; FMA contraction is allowed; no 'nnan' or
# 'ninf': a diverging member must produce inf/NaN as the torch kernel does. error_model="numpy"
# drops Python's ZeroDivisionError checks, which would keep the loops from vectorising.
_OPTS = dict(fastmath={"reassoc", "contract"}, error_model="numpy", cache=True)

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# tanh without a libm call, so that a loop of them vectorises (libm's tanh costs ~20 ns a call).
# |x| <= 0.625: Cephes' rational x + x^3 P(x^2)/Q(x^2); above: 1 - 2/(exp(2|x|) + 1), exp by
# exp(w) = 2^k exp(r), w = k ln2 + r, |r| <= ln2/2, Taylor to degree 13 (truncation < 1e-17
# relative), 2^k from a table; |x| is clamped at 20 (tanh(20) rounds to 1). Max relative error
# against numpy's tanh: 4e-16 (2 ulp) over normal(0, 1), normal(0, 10) and a grid on [-25, 25].
_P0, _P1, _P2 = -9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3
_Q0, _Q1, _Q2 = 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3
_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 6.93145751953125e-1, 1.42860682030941723212e-6
_TWO_POW = np.array([2.0**k for k in range(64)])
(_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12,
 _C13) = (1.0 / math.factorial(k) for k in range(14))


@njit(inline="always", **_OPTS)
def _tanh(a):
    z = abs(a)
    zc = z if z < 20.0 else 20.0
    w = zc + zc
    kf = np.float64(np.int64(w * _LOG2E + 0.5))
    r = (w - kf * _LN2_HI) - kf * _LN2_LO
    p = _C13 * r + _C12
    p = p * r + _C11
    p = p * r + _C10
    p = p * r + _C9
    p = p * r + _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _C1
    p = p * r + _C0
    big = 1.0 - 2.0 / (p * _TWO_POW[np.int64(kf)] + 1.0)
    big = big if a >= 0.0 else -big
    z2 = a * a
    small = a + a * z2 * (((_P0 * z2 + _P1) * z2 + _P2) / (((z2 + _Q0) * z2 + _Q1) * z2 + _Q2))
    t = big if z > 0.625 else small
    return t if a == a else a  # nan stays nan


@njit(**_OPTS)
def tanh_array(x, y):
    """``y = tanh(x)`` elementwise (1-D arrays): the vectorised tanh, exposed for tests."""
    for i in range(x.shape[0]):
        y[i] = _tanh(x[i])


@njit(**_OPTS)
def _sigma_flat(a, s, act):
    """``s = sigma(a)`` on 1-D arrays (a whole (n, M) block at once: one loop that vectorises
    even when M is a handful of units)."""
    m = a.shape[0]
    if act == 0:
        for j in range(m):
            s[j] = _tanh(a[j])
    elif act == 1:
        for j in range(m):
            s[j] = a[j]
    elif act == 2:
        for j in range(m):
            s[j] = math.erf(a[j])
    elif act == 3:
        for j in range(m):
            x = a[j]
            s[j] = 0.5 * x * (1.0 + math.erf(x * _INV_SQRT2))
    else:
        for j in range(m):
            x = a[j]
            s[j] = x if x > 0.0 else (0.0 if x <= 0.0 else x)  # relu(nan) = nan, as torch


@njit(**_OPTS)
def _times_dsigma_flat(g, a, s, act):
    """``g *= sigma'(a)`` on 1-D arrays; for tanh from ``s`` as ``1 - s^2`` (as the torch kernel)."""
    m = g.shape[0]
    if act == 0:
        for j in range(m):
            g[j] *= 1.0 - s[j] * s[j]
    elif act == 2:
        for j in range(m):
            g[j] *= _TWO_OVER_SQRT_PI * math.exp(-a[j] * a[j])
    elif act == 3:
        for j in range(m):
            x = a[j]
            g[j] *= 0.5 * (1.0 + math.erf(x * _INV_SQRT2)) + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x)
    elif act == 4:
        for j in range(m):
            g[j] *= 1.0 if a[j] > 0.0 else 0.0


@njit(**_OPTS)
def _forward_one(UT, VT, hs, A, S, e, c, act):
    """Member ``e``: ``h^{l+1} = h^l + c sum_j sigma(u_j . h^l / D) v_j`` for l = 0..L-1.

    Rows of ``UT``, ``VT`` are swept in order (sequential memory), four at a time: the (n, M)
    block of ``A`` is read and written once per four rows of ``UT`` (``a_i += sum_k h_ik u_k``),
    and each sample's ``sigma`` row once per four rows of ``VT`` (register blocking). Blocks
    run over D only, never over samples, so a sample's numbers do not depend on how many others
    (held-out inputs) pass with it."""
    L, _, D, M = UT.shape
    n = hs.shape[2]
    inv_d = 1.0 / D
    D4 = D - D % 4
    for l in range(L):
        h, hn = hs[l, e], hs[l + 1, e]
        ut, vt, a_l, s_l = UT[l, e], VT[l, e], A[l, e], S[l, e]
        a_l[:, :] = 0.0
        for d in range(0, D4, 4):
            u0, u1, u2, u3 = ut[d], ut[d + 1], ut[d + 2], ut[d + 3]
            for i in range(n):
                h0, h1, h2, h3, ai = h[i, d], h[i, d + 1], h[i, d + 2], h[i, d + 3], a_l[i]
                for j in range(M):
                    ai[j] += (h0 * u0[j] + h1 * u1[j]) + (h2 * u2[j] + h3 * u3[j])
        for d in range(D4, D):
            u = ut[d]
            for i in range(n):
                hid, ai = h[i, d], a_l[i]
                for j in range(M):
                    ai[j] += hid * u[j]
        a_flat = a_l.reshape(n * M)
        for j in range(n * M):
            a_flat[j] *= inv_d
        _sigma_flat(a_l.reshape(n * M), s_l.reshape(n * M), act)
        for d in range(0, D4, 4):
            v0, v1, v2, v3 = vt[d], vt[d + 1], vt[d + 2], vt[d + 3]
            for i in range(n):
                si = s_l[i]
                t0 = t1 = t2 = t3 = 0.0
                for j in range(M):
                    sj = si[j]
                    t0 += sj * v0[j]
                    t1 += sj * v1[j]
                    t2 += sj * v2[j]
                    t3 += sj * v3[j]
                hn[i, d] = h[i, d] + c * t0
                hn[i, d + 1] = h[i, d + 1] + c * t1
                hn[i, d + 2] = h[i, d + 2] + c * t2
                hn[i, d + 3] = h[i, d + 3] + c * t3
        for d in range(D4, D):
            v = vt[d]
            for i in range(n):
                si = s_l[i]
                t = 0.0
                for j in range(M):
                    t += si[j] * v[j]
                hn[i, d] = h[i, d] + c * t


@njit(inline="always", **_OPTS)
def _add_scaled_rows(t, d0, k, scale, w):
    """``t[d0 + r] += scale * w[r]`` for r < k: a block's update of rows of ``UT`` or ``VT``."""
    for r in range(k):
        row, wr = t[d0 + r], w[r]
        for j in range(row.shape[0]):
            row[j] += scale * wr[j]


@njit(**_OPTS)
def _backward_one(UT, VT, hs, A, S, b, e, c, step, tUT, tVT, act, G, bn, w):
    """Member ``e``, layers L-1..0: ``b <- b^l``, ``tVT += step (S^T b)^T``, ``tUT += (step/D) (G^T h)^T``
    with ``G = sigma'(A) (b V^T)``; ``tUT is UT`` allowed (each row is read before it is written,
    and only there). ``w (4, M)`` scratch.

    Rows are taken four at a time (register blocking as in :func:`_forward_one`): each block of
    four rows of ``VT`` (then ``UT``) is read for all N samples, then updated, so every row is
    still read once and written once per layer."""
    L, _, D, M = UT.shape
    N = b.shape[0]
    c_d = c / D
    step_d = step / D
    D4 = D - D % 4
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    for l in range(L - 1, -1, -1):
        h = hs[l, e]
        ut, vt, a_l, s_l, tut, tvt = UT[l, e], VT[l, e], A[l, e], S[l, e], tUT[l, e], tVT[l, e]
        G[:, :] = 0.0
        for d in range(0, D4, 4):
            v0, v1, v2, v3 = vt[d], vt[d + 1], vt[d + 2], vt[d + 3]
            w[:, :] = 0.0
            for i in range(N):
                b0, b1, b2, b3, gi, si = b[i, d], b[i, d + 1], b[i, d + 2], b[i, d + 3], G[i], s_l[i]
                for j in range(M):
                    gi[j] += (b0 * v0[j] + b1 * v1[j]) + (b2 * v2[j] + b3 * v3[j])  # v before its update
                    sj = si[j]
                    w0[j] += b0 * sj  # (S^T b)_jd
                    w1[j] += b1 * sj
                    w2[j] += b2 * sj
                    w3[j] += b3 * sj
            _add_scaled_rows(tvt, d, 4, step, w)
        for d in range(D4, D):
            v = vt[d]
            w0[:] = 0.0
            for i in range(N):
                bid, gi, si = b[i, d], G[i], s_l[i]
                for j in range(M):
                    gi[j] += bid * v[j]
                    w0[j] += bid * si[j]
            _add_scaled_rows(tvt, d, 1, step, w)
        NM = N * M  # the first N rows of the (n, M) blocks: the training samples
        _times_dsigma_flat(G.reshape(NM), a_l.reshape(a_l.size)[:NM], s_l.reshape(s_l.size)[:NM], act)
        for d in range(0, D4, 4):
            u0, u1, u2, u3 = ut[d], ut[d + 1], ut[d + 2], ut[d + 3]
            w[:, :] = 0.0
            for i in range(N):
                gi = G[i]
                t0 = t1 = t2 = t3 = 0.0
                for j in range(M):
                    gj = gi[j]
                    t0 += gj * u0[j]  # (G U)_id with u before its update
                    t1 += gj * u1[j]
                    t2 += gj * u2[j]
                    t3 += gj * u3[j]
                bn[i, d] = b[i, d] + c_d * t0
                bn[i, d + 1] = b[i, d + 1] + c_d * t1
                bn[i, d + 2] = b[i, d + 2] + c_d * t2
                bn[i, d + 3] = b[i, d + 3] + c_d * t3
                h0, h1, h2, h3 = h[i, d], h[i, d + 1], h[i, d + 2], h[i, d + 3]
                for j in range(M):
                    gj = gi[j]
                    w0[j] += h0 * gj  # (G^T h)_jd
                    w1[j] += h1 * gj
                    w2[j] += h2 * gj
                    w3[j] += h3 * gj
            _add_scaled_rows(tut, d, 4, step_d, w)
        for d in range(D4, D):
            u = ut[d]
            w0[:] = 0.0
            for i in range(N):
                gi = G[i]
                t = 0.0
                for j in range(M):
                    t += gi[j] * u[j]
                bn[i, d] = b[i, d] + c_d * t
                hid = h[i, d]
                for j in range(M):
                    w0[j] += hid * gi[j]
            _add_scaled_rows(tut, d, 1, step_d, w)
        b[:, :] = bn


@njit(**_OPTS)
def forward_serial(UT, VT, hs, A, S, c, act):
    for e in range(UT.shape[1]):
        _forward_one(UT, VT, hs, A, S, e, c[e], act)


@njit(parallel=True, **_OPTS)
def forward_parallel(UT, VT, hs, A, S, c, act):
    for e in prange(UT.shape[1]):  # prange's index is unsigned: int64 reuses the serial specialisation
        _forward_one(UT, VT, hs, A, S, np.int64(e), c[e], act)


@njit(**_OPTS)
def backward_serial(UT, VT, hs, A, S, b0, c, step, tUT, tVT, act):
    N, M = b0.shape[1], UT.shape[3]
    for e in range(UT.shape[1]):
        b = b0[e].copy()
        _backward_one(UT, VT, hs, A, S, b, e, c[e], step[e], tUT, tVT, act, np.empty((N, M), b.dtype),
                      np.empty_like(b), np.empty((4, M), b.dtype))


@njit(parallel=True, **_OPTS)
def backward_parallel(UT, VT, hs, A, S, b0, c, step, tUT, tVT, act):
    N, M = b0.shape[1], UT.shape[3]
    for e in prange(UT.shape[1]):  # np.int64(e): see forward_parallel
        b = b0[e].copy()
        _backward_one(UT, VT, hs, A, S, b, np.int64(e), c[e], step[e], tUT, tVT, act, np.empty((N, M), b.dtype),
                      np.empty_like(b), np.empty((4, M), b.dtype))
