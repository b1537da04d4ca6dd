"""Gaussian pair expectations ``E[sigma^(k1)(a) sigma^(k2)(a')]`` of the activations (SPEC section 4.2).

These are the activations' *lazy kernels*: each :class:`~meanode.activations.Activation` carries
``pair_expectations`` built from this module (closed forms, or the quadrature below), and
:func:`meanode.limit.kernels.theta` assembles the lazy-limit kernel from them.

In the lazy limit (alpha -> infinity) the drift of the Neural Mean ODE is a kernel sum
(SPEC 4.2)::

    d/ds h_k(s,x) = -eta * D * sum_{j<k} sum_n theta(h_k(s,x), h_j(s,x_n)) b_j(s,x_n)
    theta(h, h')  = E[sigma(a) sigma(a')] + E[sigma'(a) sigma'(a')] (h . h') / D

with ``(a, a')`` a centred Gaussian pair, ``Var a = |h|^2/D``, ``Var a' = |h'|^2/D`` and
``Cov(a, a') = h . h'/D``.  This module evaluates the two Gaussian expectations in float64,
differentiably (torch autograd, with respect to both ``h`` and ``h'``):

* ``identity``, ``erf``, ``relu``: closed forms (linear kernel, arcsine kernel, arc-cosine
  kernels of degree 1 and 0), differentiated by plain autograd.
* ``tanh``, ``gelu``: quadrature over the Cholesky factorisation
  ``a = sqrt(q1) g1``, ``a' = m g1 + r g2``, ``m = c/sqrt(q1)``, ``r = sqrt(max(q2 - m^2, 0))``,
  with ``g1, g2`` iid standard normal:  ``E[F(a) G(a')] = E_g1[F(sqrt(q1) g1) Ghat(m g1)]``,
  ``Ghat(mu) = E_g2[G(mu + r g2)]``.

Why not plain 2-D Gauss-Hermite.  ``sigma(sqrt(q) g)`` is sharp near ``g = 0`` when the
variance is large (tanh has poles at ``a = i pi/2``, at distance ``pi/(2 sqrt q)`` from the real
``g`` axis), and Gauss-Hermite spreads its nodes over ``|g| <= sqrt(2n)``.  Measured against a
fine reference: 64 nodes per dimension are 1e-13 accurate only for ``q <~ 0.5``; for tanh they
give 1e-9 to 5e-8 at ``q = 1`` (``rho = 0.99``), 2e-5 at ``(q1, q2) = (4, 9)`` and 2e-2 to
5e-2 at ``q = 25``; even 256 nodes give 2e-3 at ``q = 25``.  A uniform 2-D trapezoid needs
step ``0.2/sqrt(1 + q)`` (2 x 10^5 nodes at ``q = 25``).  The rules used instead:

* outer (``g1``): trapezoid in ``t`` for ``g1 = beta sinh(t)``, step 0.12, which clusters the
  nodes where both factors are sharp (``g1 = 0``); ``beta = min(1.5, pi / (2 max(sqrt q1,
  |m|)))`` for tanh and ``min(1.5, 1 / max(sqrt q1, |m|/sqrt(1 + r^2)))`` for gelu.
* inner, gelu: closed form, ``E[X Phi(X)] = mu Phi(z) + (r^2/s) phi(z)`` for
  ``X ~ N(mu, r^2)``, ``s = sqrt(1 + r^2)``, ``z = mu/s``, and its ``mu``-derivatives.  (So gelu
  is a 1-D quadrature.  A full closed form for the gelu kernel also exists; it is not used.)
* inner, tanh, the cheaper of: the uniform trapezoid on ``[-9.5, 9.5]`` with step
  ``min(0.4, 0.23/r)`` (good for small ``r``), or the Fourier representation
  ``tanh^(k)(x) = int_0^inf t^k sin(x t + k pi/2) / sinh(pi t/2) dt``, under which the Gaussian
  smoothing is the factor ``exp(-r^2 t^2/2)``; trapezoid in ``t`` with step
  ``2 pi / (9.5 |m| + X(r))``, truncated where the integrand is below ``exp(-40)`` (good for
  large ``r``).

Per element this is 23-36 outer nodes (tanh uses ``g1 >= 0`` only: every pair needed here
has an integrand even under ``g -> -g``) times 25-75 inner nodes for tanh, and 45-77 nodes in
all for gelu, for ``q`` from 0.1 to 25; elements are grouped by node count.  Accuracy
(relative to ``max(1, |value|)``) against a uniform 2-D trapezoid at 4x the step found
sufficient above, for every derivative pair up to ``(sigma''', sigma')`` and
``(sigma'', sigma'')``: worst 6e-16 (tanh) and 1e-15 (gelu) on a grid ``q1 in [0, 30]``,
``q2 in [0.05, 30]``, ``rho`` in -0.999..1; 4e-16 and 7e-16 at 40 random points with
``q`` up to 60 and ``|rho|`` up to ``1 - 1e-12``; doubling every node count (``refine=2``)
changes results by at most 1.1e-15.  Loosening the parameters to (step 0.13, inner
``0.25/r``) still gave 5e-15.

Gradients of the quadrature are *not* taken through the quadrature sum (the Cholesky
factor ``r`` is not differentiable at ``h = h'``); Price's theorem gives them as further
Gaussian expectations::

    d E[F(a) G(a')] / d q1 = 1/2 E[F''(a) G(a')]
    d E[F(a) G(a')] / d q2 = 1/2 E[F(a) G''(a')]
    d E[F(a) G(a')] / d c  =     E[F'(a) G'(a')]

evaluated with the same quadrature by a custom ``torch.autograd.Function`` whose backward
(and forward-mode ``jvp``, and ``vmap`` rule) calls itself, so derivatives of any order
exist, also on the diagonal ``h = h'``.  ``torch.autograd.grad``, ``torch.func.grad``,
``vjp``, ``jacrev``, ``jacfwd`` and ``hessian`` work.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["CLOSED_FORMS", "QUADRATURE_ACTIVATIONS", "gaussian_pair_expectations"]

#: activations whose pair expectations are integrated by the quadrature below (derivative
#: tables of every order and tuned inner rules exist for these)
QUADRATURE_ACTIVATIONS = ("tanh", "gelu")

_DTYPE = torch.float64

# --- quadrature parameters (measured; see the module docstring) --------------------------
_HALF_WIDTH = 9.5  # Gaussian variables are integrated over [-9.5, 9.5] (outside: 2e-21)
_T_STEP = 0.12  # step in t of the outer rule g1 = beta sinh(t)
_BETA_CAP = 1.5  # largest beta of the outer rule
_GELU_BETA = 1.0  # gelu outer beta = 1 / max(sqrt(q1), |m|/sqrt(1 + r^2))
_DIRECT_KAPPA = 0.23  # tanh inner, direct: uniform step min(0.4, 0.23/r)
_DIRECT_CAP = 0.4
_FOURIER_LOG_TOL = 40.0  # tanh inner, Fourier: truncation and step for about exp(-40)
_CHUNK_POINTS = 1 << 20  # elements * nodes per evaluation chunk (8 MB per array)


def _activation_name(activation) -> str:
    """The name of ``activation`` (a name or an :class:`~meanode.activations.Activation`),
    checked against the closed forms and the quadrature tables."""
    name = getattr(activation, "name", activation)
    if name not in CLOSED_FORMS and name not in QUADRATURE_ACTIVATIONS:
        known = sorted(set(CLOSED_FORMS) | set(QUADRATURE_ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r} for the Gaussian pair expectations; expected one of {known}")
    return name


def _as_f64(x, device: torch.device | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x if x.dtype == _DTYPE else x.to(_DTYPE)
    return torch.as_tensor(x, dtype=_DTYPE, device=device)


# ============================================================================================
# closed forms
# ============================================================================================


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt(max(x, 0)) with gradient 0 (instead of inf/nan) where x <= 0."""
    pos = x > 0
    root = torch.sqrt(torch.where(pos, x, torch.ones_like(x)))
    return torch.where(pos, root, torch.zeros_like(x))


def _identity_pair(q1: Tensor, q2: Tensor, c: Tensor, s2: Tensor | None = None) -> tuple[Tensor, Tensor]:
    # sigma(x) = x: E[a a'] = c; sigma' = 1: E[1] = 1.
    return c, torch.ones_like(c)


def _erf_pair(q1: Tensor, q2: Tensor, c: Tensor, s2: Tensor | None = None) -> tuple[Tensor, Tensor]:
    # det(I + 2 Sigma) = (1 + 2 q1)(1 + 2 q2) - 4 c^2, expanded so that it stays >= 1 (up to
    # rounding) when c^2 = q1 q2.
    det = 1.0 + 2.0 * (q1 + q2) + 4.0 * (q1 * q2 - c * c)
    root = torch.sqrt(det)
    # E[erf(a) erf(a')] = (2/pi) asin(2c / sqrt((1+2q1)(1+2q2))) = (2/pi) atan2(2c, sqrt(det))
    ess = (2.0 / math.pi) * torch.atan2(2.0 * c, root)
    # E[erf'(a) erf'(a')] = (4/pi) E[exp(-a^2 - a'^2)] = (4/pi) det(I + 2 Sigma)^(-1/2)
    edd = (4.0 / math.pi) / root
    return ess, edd


def _relu_pair(
    q1: Tensor, q2: Tensor, c: Tensor, s2: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    # Arc-cosine kernels (Cho & Saul): with cos(t) = c / sqrt(q1 q2) and s = sqrt(q1 q2 - c^2)
    #   E[relu(a) relu(a')] = (sqrt(q1 q2) sin t + (pi - t) c) / (2 pi) = (s + (pi - t) c)/(2 pi)
    #   E[step(a) step(a')] = P(a > 0, a' > 0) = (pi - t) / (2 pi)
    # t = atan2(s, c) avoids acos at |cos| = 1; s uses a zero-gradient sqrt at the boundary
    # (exact for the degree-1 kernel, whose derivative there is finite; for the degree-0
    # kernel, which has a kink at h = h', it is the symmetric subgradient, which central
    # differences also give).  q1 q2 = 0 (then c = 0) is taken as t = pi/2.  ``s2``, if
    # given, is q1 q2 - c^2 computed without cancellation (theta passes it): from q1, q2, c
    # alone, t near 0 or pi is only accurate to about sqrt(machine epsilon).
    s = _safe_sqrt(q1 * q2 - c * c if s2 is None else s2)
    degenerate = (s == 0) & (c == 0)
    c_safe = torch.where(degenerate, torch.ones_like(c), c)
    t = torch.where(degenerate, torch.full_like(c, math.pi / 2), torch.atan2(s, c_safe))
    ess = (s + (math.pi - t) * c) / (2.0 * math.pi)
    edd = (math.pi - t) / (2.0 * math.pi)
    nan_in = torch.isnan(q1) | torch.isnan(q2)  # the safe sqrt would hide them
    if bool(nan_in.any()):
        ess = torch.where(nan_in, torch.full_like(ess, math.nan), ess)
        edd = torch.where(nan_in, torch.full_like(edd, math.nan), edd)
    return ess, edd


#: closed-form pair expectations ``(q1, q2, c, s2=None) -> (E[sigma sigma'], E[sigma' sigma'])``
CLOSED_FORMS = {"identity": _identity_pair, "erf": _erf_pair, "relu": _relu_pair}


# ============================================================================================
# derivatives of sigma of any order (for the quadrature and for Price's theorem)
# ============================================================================================


@lru_cache(maxsize=None)
def _tanh_poly(k: int) -> tuple[float, ...]:
    """Coefficients (lowest degree first) of p_k with tanh^(k)(x) = p_k(tanh x)."""
    p = np.polynomial.Polynomial([0.0, 1.0])
    one_minus_t2 = np.polynomial.Polynomial([1.0, 0.0, -1.0])
    for _ in range(k):
        p = p.deriv() * one_minus_t2
    return tuple(float(v) for v in p.coef)


@lru_cache(maxsize=None)
def _gelu_poly(k: int) -> tuple[float, ...]:
    """For k >= 2: coefficients of P_k with gelu^(k)(x) = P_k(x) phi(x) (phi: normal pdf)."""
    if k < 2:
        raise ValueError("gelu derivatives of order < 2 are not of the form P(x) phi(x)")
    p = np.polynomial.Polynomial([2.0, 0.0, -1.0])  # gelu'' = (2 - x^2) phi
    x = np.polynomial.Polynomial([0.0, 1.0])
    for _ in range(k - 2):
        p = p.deriv() - x * p
    return tuple(float(v) for v in p.coef)


def _horner(coef: tuple[float, ...], x: Tensor) -> Tensor:
    if len(coef) == 1:
        return torch.full_like(x, coef[0])
    out = x * coef[-1] if coef[-1] != 1.0 else x
    if coef[-2] != 0.0:
        out = out + coef[-2]
    for a in reversed(coef[:-2]):
        out = out * x
        if a != 0.0:
            out = out + a
    return out


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _derivatives(activation: str, x: Tensor, orders: set[int]) -> dict[int, Tensor]:
    """{k: sigma^(k)(x)} for k in orders, sharing the expensive transcendental evaluations."""
    out: dict[int, Tensor] = {}
    if activation == "tanh":
        t = torch.tanh(x)
        for k in orders:
            out[k] = _horner(_tanh_poly(k), t)
    elif activation == "gelu":
        pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
        cdf = 0.5 * torch.erfc(-x * (1.0 / math.sqrt(2.0))) if (orders & {0, 1}) else None
        for k in orders:
            if k == 0:
                out[k] = x * cdf
            elif k == 1:
                out[k] = cdf + x * pdf
            else:
                out[k] = _horner(_gelu_poly(k), x) * pdf
    else:  # pragma: no cover - guarded by callers
        raise ValueError(f"no derivative table for activation {activation!r}")
    return out


# ============================================================================================
# quadrature (tanh, gelu)
# ============================================================================================


def _geometry(q1: Tensor, q2: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cholesky factor: a = s1 g1, a' = m g1 + r g2 (q1 = 0 gives m = 0, r = sqrt(q2))."""
    pos = q1 > 0
    one = torch.ones_like(q1)
    s1 = torch.sqrt(torch.clamp(q1, min=0.0))
    m = torch.where(pos, c / torch.where(pos, s1, one), torch.zeros_like(c))
    r2 = torch.where(pos, q2 - c * c / torch.where(pos, q1, one), q2)
    return s1, m, torch.sqrt(torch.clamp(r2, min=0.0))


def _phi(x: Tensor) -> Tensor:
    return torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def _Phi(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(x * (-1.0 / math.sqrt(2.0)))


def _round_up(n: int) -> int:
    """Round a node count up to a coarse level (at most ~12% extra) to keep buckets few."""
    n = max(int(n), 1)
    if n <= 16:
        return n
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


def _outer_rule(beta: Tensor, n_t: int, step: float, half: bool) -> tuple[Tensor, Tensor]:
    """sinh-mapped trapezoid for N(0,1): g = beta sinh(t), t = j*step; (B, n) nodes, weights.

    With ``half`` only t >= 0 is kept and the t > 0 weights are doubled (exact for
    integrands even in g).
    """
    j = torch.arange(0 if half else -n_t, n_t + 1, dtype=_DTYPE, device=beta.device)
    t = j * step
    g = beta[:, None] * torch.sinh(t)[None, :]
    w = step * beta[:, None] * torch.cosh(t)[None, :] * _phi(g)
    if half:
        w[:, 1:] *= 2.0
    return g, w


def _tanh_inner_direct(mu: Tensor, r: Tensor, half_n: int, orders: set[int]) -> dict[int, Tensor]:
    """E_g[tanh^(k)(mu + r g)] by the uniform trapezoid on [-L, L] with 2*half_n+1 nodes."""
    step = _HALF_WIDTH / half_n
    g = torch.arange(-half_n, half_n + 1, dtype=_DTYPE, device=mu.device) * step
    w = step * _phi(g)
    t = torch.tanh(mu[:, :, None] + r[:, None, None] * g)
    return {k: _horner(_tanh_poly(k), t) @ w for k in orders}


def _tanh_inner_fourier(
    mu: Tensor, r: Tensor, step: Tensor, n: int, orders: set[int]
) -> dict[int, Tensor]:
    """E_g[tanh^(k)(mu + r g)] from tanh^(k)(x) = int_0^inf t^k sin(x t + k pi/2) / sinh(pi t/2) dt.

    Smoothing by N(0, r^2) multiplies the integrand by exp(-r^2 t^2 / 2); the integrand is
    even and analytic in |Im t| < 2, so the trapezoid rule (per-element ``step``, t = j*step,
    j = 0..n, the j = 0 term by its limit) converges geometrically.
    """
    t = step[:, None] * torch.arange(1, n + 1, dtype=_DTYPE, device=mu.device)[None, :]  # (B, n)
    base = step[:, None] * torch.exp(-0.5 * (r[:, None] * t) ** 2) / torch.sinh((0.5 * math.pi) * t)
    x = mu[:, :, None] * t[:, None, :]  # (B, n1, n)
    sin_x = torch.sin(x) if any(k % 2 == 0 for k in orders) else None
    cos_x = torch.cos(x) if any(k % 2 == 1 for k in orders) else None
    out = {}
    for k in orders:
        v = base * t**k if k else base
        trig = sin_x if k % 2 == 0 else cos_x
        val = torch.bmm(trig, v[:, :, None])[:, :, 0]
        if k % 4 in (2, 3):
            val = -val
        if k == 0:  # limit of sin(mu t)/sinh(pi t/2) at t = 0, half weight
            val = val + (step / math.pi)[:, None] * mu
        elif k == 1:
            val = val + (step / math.pi)[:, None]
        out[k] = val
    return out


@lru_cache(maxsize=None)
def _gelu_smooth_polys(k: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """For k >= 2: E[gelu^(k)(X)], X ~ N(mu, r^2), is s^(1-k) (A P_k(z) + B Q_k(z)) phi(z)
    with s^2 = 1 + r^2, z = mu/s, A = 1 + 1/s^2, B = 1/s^2; returns (P_k, Q_k) coefficients."""
    pa = np.polynomial.Polynomial([1.0])
    pb = np.polynomial.Polynomial([0.0, 0.0, -1.0])
    x = np.polynomial.Polynomial([0.0, 1.0])
    for _ in range(k - 2):
        pa, pb = pa.deriv() - x * pa, pb.deriv() - x * pb
    return tuple(float(v) for v in pa.coef), tuple(float(v) for v in pb.coef)


def _gelu_inner(mu: Tensor, r: Tensor, orders: set[int]) -> dict[int, Tensor]:
    """E[gelu^(k)(X)], X ~ N(mu, r^2), in closed form (Gaussian smoothing of x Phi(x)):
    E[X Phi(X)] = mu Phi(z) + (r^2/s) phi(z), E[gelu'(X)] = Phi(z) + z phi(z)/s^2."""
    s2 = (1.0 + r * r)[:, None]
    s = torch.sqrt(s2)
    z = mu / s
    pdf = _phi(z)
    out = {}
    for k in orders:
        if k == 0:
            out[k] = mu * _Phi(z) + (r * r)[:, None] / s * pdf
        elif k == 1:
            out[k] = _Phi(z) + z * pdf / s2
        else:
            pa, pb = _gelu_smooth_polys(k)
            poly = (1.0 + 1.0 / s2) * _horner(pa, z) + _horner(pb, z) / s2
            out[k] = s ** (1 - k) * poly * pdf
    return out


def _plan(activation: str, s1: Tensor, m: Tensor, r: Tensor, refine: float):
    """Per-element rule parameters (see the module docstring for where they come from)."""
    if activation == "tanh":
        scale = torch.maximum(s1, m.abs())
        beta = torch.clamp((0.5 * math.pi) / torch.clamp(scale, min=1e-300), max=_BETA_CAP)
    else:
        scale = torch.maximum(s1, m.abs() / torch.sqrt(1.0 + r * r))
        beta = torch.clamp(_GELU_BETA / torch.clamp(scale, min=1e-300), max=_BETA_CAP)
    t_step = _T_STEP / refine
    n_outer = torch.ceil(torch.asinh(_HALF_WIDTH / beta) / t_step)
    if activation != "tanh":
        return beta, t_step, n_outer, None, None, None
    # inner, direct: uniform step min(cap, kappa/r)
    h_dir = torch.clamp(_DIRECT_KAPPA / torch.clamp(r, min=1e-300), max=_DIRECT_CAP) / refine
    n_dir = torch.ceil(_HALF_WIDTH / h_dir)  # half count; 2n+1 nodes
    # inner, Fourier: 2 pi / step >= |mu|_max + X(r),  X = min_y (A + r^2 y^2/2)/y over y <= 1.5
    a = _FOURIER_LOG_TOL
    x_r = torch.where(
        1.5 * r >= math.sqrt(2.0 * a), r * math.sqrt(2.0 * a), (a + 1.125 * r * r) / 1.5
    )
    h_f = 2.0 * math.pi / (m.abs() * _HALF_WIDTH + x_r) / refine
    rr = torch.clamp(r, min=1e-300) ** 2
    t_max = (-0.5 * math.pi + torch.sqrt(0.25 * math.pi**2 + 2.0 * a * rr)) / rr
    n_f = torch.where(r > 0, torch.ceil(t_max / h_f), torch.full_like(r, math.inf))
    use_fourier = 2.0 * n_f < 2.0 * n_dir + 1.0  # a Fourier node costs sin + cos
    return beta, t_step, n_outer, use_fourier, torch.where(use_fourier, n_f, n_dir), h_f


def _quad_block(
    activation: str,
    pairs: tuple[tuple[int, int], ...],
    s1: Tensor,
    m: Tensor,
    r: Tensor,
    beta: Tensor,
    t_step: float,
    n_outer: int,
    inner: tuple[str, int],
    h_f: Tensor | None,
) -> Tensor:
    """E[sigma^(k1)(a) sigma^(k2)(a')] for one bucket of elements -> (len(pairs), B)."""
    half = activation == "tanh"  # odd sigma: integrands of even total order are even
    out = torch.zeros(len(pairs), s1.shape[0], dtype=_DTYPE, device=s1.device)
    live = [i for i, (k1, k2) in enumerate(pairs) if not (half and (k1 + k2) % 2 == 1)]
    if not live:  # odd sigma: pairs of odd total order vanish by symmetry
        return out
    k1s = {pairs[i][0] for i in live}
    k2s = {pairs[i][1] for i in live}
    n1 = n_outer + 1 if half else 2 * n_outer + 1
    kind, n_in = inner
    per_elem = n1 * (1 if kind == "gelu" else (2 * n_in + 1 if kind == "direct" else 2 * n_in))
    chunk = max(1, _CHUNK_POINTS // per_elem)
    for start in range(0, s1.shape[0], chunk):
        sl = slice(start, start + chunk)
        g1, w1 = _outer_rule(beta[sl], n_outer, t_step, half)
        outer = _derivatives(activation, s1[sl, None] * g1, k1s)
        mu = m[sl, None] * g1
        if kind == "gelu":
            inner_vals = _gelu_inner(mu, r[sl], k2s)
        elif kind == "direct":
            inner_vals = _tanh_inner_direct(mu, r[sl], n_in, k2s)
        else:
            inner_vals = _tanh_inner_fourier(mu, r[sl], h_f[sl], n_in, k2s)
        for i in live:
            k1, k2 = pairs[i]
            out[i, sl] = (outer[k1] * inner_vals[k2] * w1).sum(-1)
    return out


def _quad_expectations(
    activation: str,
    q1: Tensor,
    q2: Tensor,
    c: Tensor,
    pairs: tuple[tuple[int, int], ...],
    refine: float,
) -> Tensor:
    """Stacked quadrature values, shape (len(pairs), *q1.shape); q1, q2, c of one shape."""
    shape = q1.shape
    f1, f2, fc = q1.reshape(-1), q2.reshape(-1), c.reshape(-1)
    out = torch.full((len(pairs), f1.shape[0]), math.nan, dtype=_DTYPE, device=f1.device)
    ok = torch.isfinite(f1) & torch.isfinite(f2) & torch.isfinite(fc)
    idx_ok = torch.nonzero(ok).reshape(-1)
    if idx_ok.numel() == 0:
        return out.reshape(len(pairs), *shape)
    s1, m, r = _geometry(f1[idx_ok], f2[idx_ok], fc[idx_ok])
    beta, t_step, n_outer, use_f, n_in, h_f = _plan(activation, s1, m, r, refine)
    if activation == "tanh":
        keys = [
            ("fourier" if f else "direct", _round_up(n))
            for f, n in zip(use_f.tolist(), n_in.tolist())
        ]
    else:
        keys = [("gelu", 0)] * idx_ok.numel()
    buckets: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(keys):
        buckets.setdefault(key, []).append(i)
    for key, members in buckets.items():
        sel = torch.tensor(members, dtype=torch.long, device=f1.device)
        block = _quad_block(
            activation,
            pairs,
            s1[sel],
            m[sel],
            r[sel],
            beta[sel],
            t_step,
            int(n_outer[sel].max().item()),
            key,
            None if h_f is None else h_f[sel],
        )
        out[:, idx_ok[sel]] = block
    return out.reshape(len(pairs), *shape)


class _GaussPairQuadrature(torch.autograd.Function):
    """(q1, q2, c) -> stacked E[sigma^(k1)(a) sigma^(k2)(a')] for (k1, k2) in pairs.

    Backward by Price's theorem, via this same Function (so it is differentiable again).
    """

    @staticmethod
    def forward(q1, q2, c, activation, pairs, refine):  # type: ignore[override]
        return _quad_expectations(activation, q1, q2, c, pairs, refine)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        q1, q2, c, activation, pairs, refine = inputs
        ctx.save_for_backward(q1, q2, c)
        ctx.save_for_forward(q1, q2, c)
        ctx.activation, ctx.pairs, ctx.refine = activation, pairs, refine

    @staticmethod
    def vmap(info, in_dims, q1, q2, c, activation, pairs, refine):  # type: ignore[override]
        # elementwise in (q1, q2, c): move the vmapped dim to the front and evaluate once
        def front(x: Tensor, d: int | None) -> Tensor:
            if d is None:
                return x.unsqueeze(0).expand(info.batch_size, *x.shape)
            return x.movedim(d, 0)

        q1, q2, c = (front(x, d) for x, d in zip((q1, q2, c), in_dims[:3]))
        q1, q2, c = torch.broadcast_tensors(q1, q2, c)
        return _GaussPairQuadrature.apply(q1, q2, c, activation, pairs, refine), 1

    @staticmethod
    def _price_terms(ctx) -> tuple[Tensor, dict[tuple[int, int], int]]:
        """Values of the pairs that Price's theorem needs, and their index."""
        q1, q2, c = ctx.saved_tensors
        need = []
        for k1, k2 in ctx.pairs:
            need += [(k1 + 2, k2), (k1, k2 + 2), (k1 + 1, k2 + 1)]
        need = tuple(dict.fromkeys(need))
        vals = _GaussPairQuadrature.apply(q1, q2, c, ctx.activation, need, ctx.refine)
        return vals, {p: i for i, p in enumerate(need)}

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        # d/dq1 = E[F'' G]/2, d/dq2 = E[F G'']/2, d/dc = E[F' G'] (Price's theorem)
        vals, index = _GaussPairQuadrature._price_terms(ctx)
        gq1 = gq2 = gc = 0.0
        for j, (k1, k2) in enumerate(ctx.pairs):
            g = grad[j]
            gq1 = gq1 + 0.5 * g * vals[index[(k1 + 2, k2)]]
            gq2 = gq2 + 0.5 * g * vals[index[(k1, k2 + 2)]]
            gc = gc + g * vals[index[(k1 + 1, k2 + 1)]]
        return gq1, gq2, gc, None, None, None

    @staticmethod
    def jvp(ctx, dq1, dq2, dc, *_):  # type: ignore[override]
        vals, index = _GaussPairQuadrature._price_terms(ctx)
        rows = []
        for k1, k2 in ctx.pairs:
            row = torch.zeros_like(vals[0])
            if dq1 is not None:
                row = row + 0.5 * vals[index[(k1 + 2, k2)]] * dq1
            if dq2 is not None:
                row = row + 0.5 * vals[index[(k1, k2 + 2)]] * dq2
            if dc is not None:
                row = row + vals[index[(k1 + 1, k2 + 1)]] * dc
            rows.append(row)
        return torch.stack(rows)


# ============================================================================================
# public API
# ============================================================================================


def gaussian_pair_expectations(
    activation, q1, q2, c, *, refine: float = 1.0, s2=None
) -> tuple[Tensor, Tensor]:
    """(E[sigma(a) sigma(a')], E[sigma'(a) sigma'(a')]) for a centred Gaussian pair.

    ``activation``: a name or an :class:`~meanode.activations.Activation`. ``Var a = q1``,
    ``Var a' = q2``, ``Cov(a, a') = c`` (SPEC 4.2).  ``q1``, ``q2``, ``c``
    are broadcastable (tensors or numbers, promoted to float64); both outputs have the
    broadcast shape and are differentiable by autograd in ``q1``, ``q2``, ``c`` (at
    ``c^2 = q1 q2`` too).  ``(q1, q2, c)`` must be a covariance: ``q1, q2 >= 0``,
    ``c^2 <= q1 q2`` up to rounding.  ``s2``, when given, is ``q1 q2 - c^2`` computed without
    cancellation (relu uses it near ``|c| = sqrt(q1 q2)``).

    ``identity``, ``erf``, ``relu`` use closed forms; ``tanh`` and ``gelu`` quadrature rules
    chosen per element for about 1e-14 accuracy (see the module docstring); ``refine``
    divides every quadrature step by that factor (``refine=2``: twice the nodes in each
    dimension), for convergence checks.  The ``relu`` derivative is the step function.
    Raises ``ValueError`` for an unknown activation.
    """
    activation = _activation_name(activation)
    device = next((x.device for x in (q1, q2, c) if isinstance(x, Tensor)), None)
    q1, q2, c = (_as_f64(x, device) for x in (q1, q2, c))
    q1, q2, c = torch.broadcast_tensors(q1, q2, c)
    if activation in CLOSED_FORMS:
        return CLOSED_FORMS[activation](q1, q2, c, s2=None if s2 is None else torch.broadcast_to(_as_f64(s2, device), q1.shape))
    vals = _GaussPairQuadrature.apply(q1, q2, c, activation, ((0, 0), (1, 1)), float(refine))
    return vals[0], vals[1]
