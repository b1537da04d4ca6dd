"""Rules for integrands analytic in a strip: the tensor trapezoid and rotated, radially stretched lattices."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..._checks import real
from .rule import _MAX_TENSOR_NODES, Rule, _check_int, _check_var

__all__ = ["lattice", "lattice_family", "lattice_size", "lattice_points", "trapezoid", "LATTICES", "Ridges", "ridge_aliasing"]

# --------------------------------------------------------------------------------------
# Trapezoid and lattice rules for integrands analytic in a strip
# --------------------------------------------------------------------------------------
#
# Why not Gauss-Hermite for tanh networks. A rule exact for polynomials converges like the
# best polynomial approximation of the integrand in the Gaussian-weighted sense. tanh has poles
# at +-i pi/2, so tanh(a) with a = u.h/D of standard deviation sigma_a is analytic only in a
# strip of half-width a_s = pi/(2 sigma_a) in the standard-normal coordinate; then n-point
# Gauss-Hermite converges only like exp(-c a_s sqrt(n)) per dimension (measured on the default
# 2LP problem, D=2, one step: 2.2e-3, 3.0e-4, 4.0e-5 for n = 10, 20, 28 in each u direction).
# The trapezoid (sinc) rule with step h converges like exp(-2 pi a_s / h) for every function
# analytic in that strip (Trefethen & Weideman, SIAM Review 56 (2014), section 5), so it is
# the right 1-D building block. In d dimensions a lattice rule sum_{y in Lambda} g(y) det(Lambda)
# has error sum_{m in Lambda*, m != 0} g^(2 pi m) (Poisson summation): only the dual lattice
# points where the Fourier transform of the weighted integrand is large alias.

#: Lattice kinds for :func:`lattice`: the integer lattice, the hexagonal lattice (d=2), the
#: checkerboard dual ``D_d* = Z^d u (Z^d + 1/2)`` (d >= 2; d=3: body-centred cubic, d=4: the
#: densest known 4-D dual) and Gosset's E8 (d=8).
LATTICES = ("Z", "A2", "D*", "E8")

# Length of the shortest nonzero vector of the dual of each unit lattice below.
_DUAL_MIN = {"Z": 1.0, "A2": 2.0 / math.sqrt(3.0), "D*": math.sqrt(2.0), "E8": math.sqrt(2.0)}
_A2 = np.array([[1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])


def _check_kind(kind: str, d: int) -> str:
    if kind == "auto":
        return {1: "Z", 2: "A2", 8: "E8"}.get(d, "D*")
    if kind not in LATTICES:
        raise ValueError(f"lattice kind must be one of {LATTICES} or 'auto'; got {kind!r}")
    if kind == "A2" and d != 2:
        raise ValueError(f"lattice kind 'A2' needs d = 2; got d={d}")
    if kind == "E8" and d != 8:
        raise ValueError(f"lattice kind 'E8' needs d = 8; got d={d}")
    if kind == "D*" and d < 2:
        raise ValueError("lattice kind 'D*' needs d >= 2")
    return kind


def _ball_points_shifted(d: int, shift: float, radius: float) -> np.ndarray:
    """All y in Z^d + shift*(1,..,1) with |y| <= radius, built coordinate by coordinate with pruning."""
    m = int(math.floor(radius + abs(shift))) + 1
    vals = np.arange(-m, m + 1, dtype=np.float64) + shift
    vals = vals[np.abs(vals) <= radius + 1e-12]
    r2 = radius * radius * (1 + 1e-12)
    pts = np.zeros((1, 0))
    norm2 = np.zeros(1)
    for _ in range(d):
        n2 = norm2[:, None] + vals[None, :] ** 2
        keep = n2 <= r2
        i, j = np.nonzero(keep)
        pts = np.concatenate([pts[i], vals[j][:, None]], axis=1)
        norm2 = n2[i, j]
    return pts


def lattice_points(kind: str, d: int, radius: float, dual: bool = False) -> np.ndarray:
    """Points of a unit lattice (or of its dual) within ``radius``: shape ``(P, d)``, float64.

    Unit lattices: ``"Z"`` = Z^d; ``"A2"`` = hexagonal, basis (1, 0), (1/2, sqrt(3)/2);
    ``"D*"`` = Z^d u (Z^d + 1/2) (dual: D_d = integer vectors of even sum); ``"E8"`` =
    D_8 u (D_8 + 1/2) (self-dual). The point sets are symmetric under y -> -y.
    """
    d = _check_int(d, "d", 1)
    kind = _check_kind(kind, d)
    radius = float(radius)
    if kind == "Z" or (kind == "D*" and dual):
        pts = _ball_points_shifted(d, 0.0, radius)
        if kind == "D*":
            pts = pts[np.rint(pts.sum(axis=1)).astype(np.int64) % 2 == 0]
        return pts
    if kind == "D*":
        return np.concatenate([_ball_points_shifted(d, 0.0, radius), _ball_points_shifted(d, 0.5, radius)])
    if kind == "E8":
        out = []
        for shift in (0.0, 0.5):
            p = _ball_points_shifted(8, shift, radius)
            out.append(p[np.rint((p - shift).sum(axis=1)).astype(np.int64) % 2 == 0])
        return np.concatenate(out)
    # A2 (or its dual, spanned by the rows of B^{-T})
    B = np.linalg.inv(_A2).T if dual else _A2
    m = int(math.ceil(2.0 * radius / math.sqrt(3.0) * (1.2 if dual else 1.0))) + 2
    i, j = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
    pts = np.stack([i.ravel(), j.ravel()], axis=1).astype(np.float64) @ B
    return pts[(pts * pts).sum(axis=1) <= radius * radius * (1 + 1e-12)]


def _haar_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    g = rng.standard_normal((d, d))
    qm, rm = np.linalg.qr(g)
    return qm * np.sign(np.diag(rm))


def _dual_points_for_screening(kind: str, d: int, c: float, xi_max: float = 30.0,
                               max_points: float = 6e4) -> np.ndarray:
    """Nonzero dual points ``xi = 2 pi m / c`` with ``|xi| <= xi_max`` (fewer in high d)."""
    unit_ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
    rad = min(xi_max * c / (2.0 * math.pi), (max_points / unit_ball) ** (1.0 / d))
    rad = max(rad, 2.01 * _DUAL_MIN[kind])  # at least the two shortest shells (fine steps h)
    m = lattice_points(kind, d, rad, dual=True)
    m = m[(m * m).sum(axis=1) > 0.5 * _DUAL_MIN[kind] ** 2]
    return (2.0 * math.pi / c) * m


def _plane_aliasing(xi: np.ndarray, R: np.ndarray, split: int, a: float = 0.8) -> float:
    """Aliasing of ridge functions lying in the coordinate blocks z[:split] or z[split:].

    ``sum_xi exp(-a |xi_1| - |xi_2|^2 / 2) + (1 <-> 2)`` over the rotated nonzero dual points
    ``R xi`` (``xi_1, xi_2`` the two blocks): a ridge ``g(w . z)`` with ``w`` in block 1,
    analytic in a strip of half-width ``a``, has a Fourier transform of about that size.
    """
    y = xi @ R.T
    x1 = np.sqrt((y[:, :split] ** 2).sum(axis=1))
    x2 = np.sqrt((y[:, split:] ** 2).sum(axis=1))
    return float(np.sum(np.exp(-a * x1 - 0.5 * x2 * x2) + np.exp(-a * x2 - 0.5 * x1 * x1)))


def _screened_rotation(kind: str, d: int, c: float, seed, candidates: int = 32) -> np.ndarray:
    """A Haar-random rotation that is neither aligned with nor over-fitted to the (u, v) blocks.

    Of ``candidates`` random rotations (from ``seed``) take the one at the lower quartile of the
    block-plane aliasing :func:`_plane_aliasing`. Rationale (measured, D = 2, K = 5, same nodes):
    an axis-aligned lattice is 10-20x less accurate than a random rotation, because the ridges
    tanh(u . h / D) of the first steps lie in the u-plane, where an aligned lattice has short
    dual vectors; about one random rotation in 50 is as bad; and the rotation that *minimises*
    the plane aliasing pushes the short dual vectors to the u/v-balanced directions along which
    the trained units later expand, which costs another 10x at K >= 4.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    Rs = [_haar_rotation(d, rng) for _ in range(candidates)]
    xi = _dual_points_for_screening(kind, d, c)
    split = d // 2
    logm = np.log(np.maximum([_plane_aliasing(xi, R, split) for R in Rs], 1e-300))
    target = np.quantile(logm, 0.25)
    return Rs[int(np.argmin(np.abs(logm - target)))]


@dataclass(frozen=True)
class Ridges:
    """Equally weighted ridge samples (from :func:`meanode.limit.adapt.ridge_samples`) in standardised coordinates ``z / sqrt(var)``.

    directions: (S, dz) unit vectors; strips: (S,) analyticity half-widths ``pi / (2 |grad a|)``.
    """

    directions: np.ndarray
    strips: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.directions.shape[1])

    def resolution(self) -> np.ndarray:
        """``E[(e / a)(e / a)^T]`` over the samples: a ridge of half-width ``a`` along ``e`` asks for
        a step ``~ a`` along ``e``, so its eigenvalues say how fine each direction must be resolved.
        Shape ``(dz, dz)``."""
        W = self.directions / self.strips[:, None]
        return W.T @ W / W.shape[0]

    def principal_direction(self) -> np.ndarray:
        """The unit vector ``p`` of the largest eigenvalue of :meth:`resolution`: the direction
        along which the ridges need the finest step. Shape ``(dz,)``."""
        return np.linalg.eigh(self.resolution())[1][:, -1]

    def scale(self, anisotropy: float) -> np.ndarray:
        """``scale`` for :func:`lattice`: the step times ``anisotropy`` across :meth:`principal_direction`,
        ``I + (anisotropy - 1)(I - p p^T)``. Shape ``(dz, dz)``."""
        p = self.principal_direction()
        return np.eye(self.dim) + (float(anisotropy) - 1.0) * (np.eye(self.dim) - np.outer(p, p))


def ridge_aliasing(ridges: Ridges, xi: np.ndarray, R: np.ndarray, chunk: int = 128) -> float:
    """Score of the rotated dual points ``R xi`` (``xi``: (M, d), ``2 pi m / c``) against ridges:
    ``sum_xi mean_s exp(-strip_s |xi . e_s| - |xi_perp|^2 / 2)``, the size of the Fourier
    transform of a ridge of direction ``e_s`` and half-width ``strip_s`` under a unit Gaussian
    envelope, at the aliased frequencies.

    Evaluated in torch, ``chunk`` dual points at a time (an (S, chunk) block stays in cache), since
    the exponentials of the scoring (up to ~2e8 per lattice) cost more than the pilot run itself
    in numpy; ``|xi_perp|^2 = |xi|^2 - (xi . e_s)^2`` with ``|R xi| = |xi|``."""
    y = torch.from_numpy(np.ascontiguousarray(xi @ R.T, dtype=np.float64))
    e = torch.from_numpy(np.ascontiguousarray(ridges.directions, dtype=np.float64))
    st = torch.from_numpy(np.ascontiguousarray(ridges.strips, dtype=np.float64))[:, None]
    half_norm2 = 0.5 * (y * y).sum(dim=1)
    tot = 0.0
    for i in range(0, y.shape[0], chunk):
        p = e @ y[i:i + chunk].T  # (S, m): the components along each ridge direction
        x = p.abs().mul_(-st).addcmul_(p, p, value=0.5).sub_(half_norm2[i:i + chunk])
        # exp(-700) ~ 1e-304 adds nothing to the sum, and an exponent past the underflow (-745)
        # takes torch's slow path (25x the time, measured)
        tot += float(x.clamp_(min=-700.0).exp_().mean(dim=0).sum())
    return tot


def _ridge_rotation(kind: str, d: int, c: float, seed, ridges, candidates: int, scale=None) -> np.ndarray:
    """Of ``candidates`` Haar-random rotations (from ``seed``), the one whose dual lattice
    aliases the pilot's ridges least (:func:`meanode.limit.adapt.ridge_aliasing`). With ``scale``
    ``S`` (symmetric) the nodes are ``S R t`` and the dual points ``S^{-1} R xi``."""
    if ridges.dim != d:
        raise ValueError(f"ridges have dimension {ridges.dim}, the rule {d}")
    candidates = _check_int(candidates, "candidates", 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    Rs = [_haar_rotation(d, rng) for _ in range(candidates)]
    xi = _dual_points_for_screening(kind, d, c, xi_max=40.0, max_points=2e4 if d <= 4 else 3e3)
    # keep the scoring to ~2e8 exponentials: fewer ridge samples when there are many dual points
    S = min(ridges.directions.shape[0], max(1000, int(2e8 / (xi.shape[0] * candidates))))
    if S < ridges.directions.shape[0]:
        ridges = type(ridges)(ridges.directions[:S], ridges.strips[:S])
    Sinv = None if scale is None else np.linalg.inv(scale)
    scores = [ridge_aliasing(ridges, xi, R if Sinv is None else Sinv @ R) for R in Rs]
    return Rs[int(np.argmin(scores))]


#: Gaussian mass left out by the default radial map of :func:`lattice`
DEFAULT_TAIL = 5e-8


def _default_stretch(d: int, tail: float = DEFAULT_TAIL) -> float:
    """L with P(chi^2_d > 2L) = tail: the radial map reaches radius sqrt(2L) (standard units)."""
    from scipy.special import gammaincc  # chi2.sf(x, d) = gammaincc(d/2, x/2)

    lo, hi = 0.5, 500.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if gammaincc(0.5 * d, mid) > tail:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def lattice(h: float, d: int, var: float = 1.0, *, kind: str = "auto", stretch: float | None = 0.0,
            rotation="screened", seed=0, ridges=None, candidates: int = 32, tail: float | None = None,
            scale=None) -> Rule:
    """Rotated, radially stretched lattice rule for ``z ~ N(0, var I_d)``.

    Nodes ``z = sqrt(var) * x``, ``x = rho(|t|) t / |t|`` for the points ``t`` of a rotated
    lattice ``c h R Lambda`` (``Lambda`` of :data:`LATTICES`, ``c`` such that the shortest dual
    vector has length ``1/h``, as for the integer grid of step ``h``); weights
    ``~ J(t) exp(-|x|^2 / 2)`` with ``J`` the Jacobian of ``t -> x``, renormalised to sum 1.
    Symmetric under ``z -> -z`` (can be folded).

    Why it converges (for integrands analytic in a strip around R^d, such as the tanh Mean ODE):

    * *Trapezoid core.* For ``g`` analytic in ``|Im t| < a`` with Gaussian decay the lattice sum
      errs by ``sum_{m in Lambda*, m != 0} g^(2 pi m)`` ~ ``exp(-2 pi a / h)``: geometric in
      ``1/h``, unlike Gauss-Hermite's ``exp(-c sqrt(n))`` for such integrands.
    * *Lattice.* ``kind="auto"`` takes the densest known dual packings (hexagonal for d=2, D4*
      for d=4, E8 for d=8): same shortest dual vector as ``Z^d`` of step ``h`` with
      1.15x / 2x / 16x fewer nodes.
    * *Radial stretch* (``stretch = L``). The map ``|t| = s(r) = r - r^3 / (6L)`` spaces the nodes
      by ``h / (1 - r^2/(2L))`` at radius ``r``: the aliasing from a region is damped by its
      Gaussian weight ``exp(-r^2/2)``, so the step may grow where the weight is small, and the
      map ends at ``r = sqrt(2L)`` (the truncation, chosen so that ``P(|x| > sqrt(2L)) = tail``,
      default :data:`DEFAULT_TAIL` = 5e-8, when ``stretch=0.0``; ``stretch=None``: no map, a ball
      of that radius). The smaller ``L``, the fewer nodes: in 8-D, 89% of the nodes of the
      5e-8 map lie at ``|x| > 4``, where 6% of the weight is, and a tail of 1e-6 has 1.8x fewer
      nodes for the same central step (measured error and bias: ``docs/limit_quadrature.md``). In 4-D this uses
      ``(2/3)^4 = 0.2`` times the nodes of the ball-truncated lattice of the same central step.
      Nodes whose Jacobian exceeds 50 (a sliver at the edge, Gaussian weight < e^{-0.98L}) are
      dropped.
    * *Rotation* (``rotation="screened"``): the 2LP integrand is structured along the u and v
      coordinate blocks (first steps: ridges ``tanh(u . h / D)`` in the u-plane), and an
      axis-aligned lattice has dual vectors exactly there. A random rotation removes them;
      see :func:`_screened_rotation`. ``rotation`` may also be ``None`` (axis-aligned), an int
      (a plain Haar-random rotation from that seed) or a ``(d, d)`` orthogonal matrix. ``seed``
      (int or tuple of ints) seeds the screened candidates. With ``ridges`` (a
      :class:`meanode.limit.adapt.Ridges` from a pilot run) the screened rotation is instead
      the one of ``candidates`` random rotations with the least aliasing of those ridges
      (:func:`meanode.limit.adapt.ridge_aliasing`).
    * *Scale* (``scale``, a ``(d, d)`` matrix with singular values >= 1, applied after the
      rotation): a coarser lattice along directions where the integrand is smooth. A ridge
      ``g(e . z)`` aliases only through dual vectors nearly parallel to ``e`` (its transform is
      Gaussian across ``e``), so the step across ``e`` need only resolve the Gaussian envelope:
      on ``tanh(w . z + 0.3)^2`` in 4-D, ``h = 0.3`` with twice the step across ``w`` has 1/8 of
      the nodes and the same error, 3e-8 (``tests/test_quadrature.py``).

    Measured (default problem, D = 2, tanh, eta = 0.2, K = 5, 47,425 folded nodes at
    ``h = 0.3``): max-abs output error 0.5-2.5e-6 for most random rotations, 5.0e-6 axis
    aligned, tensor Gauss-Hermite with 80,000 folded nodes 3.5e-4; but about one rotation in
    five is 10-100x worse (up to 8.7e-5), and at K = 15 errors of 3e-6..3e-5 at h = 0.21-0.3
    depend more on the rotation than on h. Hence two levels with independent rotations for
    the error estimate (:func:`lattice_family`), and ``ridges`` to orient them.
    """
    v = _check_var(var)
    kind, d, L, use_map, c, s_max, n_est = _lattice_geometry(h, d, kind, stretch, tail)
    S = None if scale is None else _check_scale(scale, d)
    if n_est > _MAX_TENSOR_NODES:
        raise ValueError(f"lattice(h={h}, d={d}) would have ~{int(n_est):,} nodes; increase h")
    t = lattice_points(kind, d, s_max / c) * c
    if d >= 2 and rotation is not None:
        if isinstance(rotation, str):
            if rotation != "screened":
                raise ValueError(f"rotation must be 'screened', None, an int seed or a matrix; got {rotation!r}")
            if ridges is None:
                R = _screened_rotation(kind, d, c, seed)
                rot_name = "screened"
            else:
                R = _ridge_rotation(kind, d, c, seed, ridges, candidates, S)
                rot_name = "ridge-screened"
        elif isinstance(rotation, (int, np.integer)) and not isinstance(rotation, bool):
            R = _haar_rotation(d, np.random.default_rng(int(rotation)))
            rot_name = f"haar{int(rotation)}"
        else:
            R = np.asarray(rotation, dtype=np.float64)
            if R.shape != (d, d) or not np.allclose(R @ R.T, np.eye(d), atol=1e-12):
                raise ValueError(f"rotation must be an orthogonal ({d}, {d}) matrix")
            rot_name = "given"
        t = t @ R.T
    else:
        rot_name = "none"
    if S is not None:
        t = t @ S.T
        rot_name += ", scaled"
    s = np.sqrt((t * t).sum(axis=1))
    if use_map:
        inside = s < s_max
        t, s = t[inside], s[inside]
        # closed-form root of r^3 - 6L r + 6L s = 0 in [0, sqrt(2L)) (trigonometric cubic formula)
        r = 2.0 * math.sqrt(2.0 * L) * np.cos(np.arccos(-s / s_max) / 3.0 - 2.0 * math.pi / 3.0)
        r = np.clip(r, 0.0, None)
        slope = 1.0 - r * r / (2.0 * L)  # ds/dr
        ok = slope > 0.02
        t, s, r, slope = t[ok], s[ok], r[ok], slope[ok]
        ratio = np.where(s > 0, r / np.where(s > 0, s, 1.0), 1.0)
        x = t * ratio[:, None]
        logw = -np.log(slope) + (d - 1) * np.log(ratio) - 0.5 * r * r
    else:
        inside = s <= s_max
        x = t[inside]
        logw = -0.5 * (x * x).sum(axis=1)
    w = np.exp(logw - logw.max())
    keep = w > 1e-300
    x, w = x[keep], w[keep]
    w = w / math.fsum(w.tolist())
    name = f"lattice({kind}, h={h:g}, d={d}, var={v:g}, stretch={L:.3g}{'' if use_map else ' (ball)'}, rotation={rot_name})"
    return Rule(x * math.sqrt(v), w, name)


def _check_scale(scale, d: int) -> np.ndarray:
    """``scale`` of :func:`lattice`: a finite ``(d, d)`` matrix whose singular values are all >= 1
    (the lattice points are generated in the ball the scaled ones must come from)."""
    S = np.asarray(scale, dtype=np.float64)
    if S.shape != (d, d) or not np.all(np.isfinite(S)):
        raise ValueError(f"scale must be a finite ({d}, {d}) matrix, got shape {S.shape}")
    if np.linalg.svd(S, compute_uv=False).min() < 1.0 - 1e-12:
        raise ValueError("scale must not shrink any direction (all its singular values >= 1)")
    return S


def _check_tail(tail) -> float:
    if tail is None:
        return DEFAULT_TAIL
    t = real("tail", tail, minimum=0.0, strict=True)
    if t >= 1e-2:
        raise ValueError(f"tail must be below 1e-2 (the Gaussian mass left out by the radial map), got {tail!r}")
    return t


def _lattice_geometry(h: float, d: int, kind: str, stretch, tail=None):
    """Checked arguments of :func:`lattice` and its geometry:
    ``(kind, d, L, use_map, c, s_max, estimated node count before folding)``."""
    h = float(h)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive number; got {h!r}")
    d = _check_int(d, "d", 1)
    kind = _check_kind(kind, d)
    tail = _check_tail(tail)
    if stretch == 0.0:
        L = _default_stretch(d, tail)
        use_map = True
    elif stretch is None:
        L = _default_stretch(d, tail)
        use_map = False
    else:
        L = float(stretch)
        if not (math.isfinite(L) and L > 0):
            raise ValueError(f"stretch must be a positive number, 0.0 (default) or None; got {stretch!r}")
        use_map = True
    c = _DUAL_MIN[kind] * h
    s_max = (2.0 / 3.0) * math.sqrt(2.0 * L) if use_map else math.sqrt(2.0 * L)
    ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1) * (s_max / c) ** d  # in units of the scaled lattice
    covolume = {"Z": 1.0, "A2": math.sqrt(3.0) / 2.0, "D*": 0.5, "E8": 1.0}[kind]
    return kind, d, L, use_map, c, s_max, ball / covolume


def lattice_size(h: float, d: int, *, kind: str = "auto", stretch: float | None = 0.0,
                 tail: float | None = None) -> int:
    """About how many nodes :func:`lattice` has (before folding), without building it."""
    return int(round(_lattice_geometry(h, d, kind, stretch, tail)[-1]))


def lattice_family(spacing: float = 3.0, *, kind: str = "auto", stretch: float | None = 0.0,
                   rotation="screened", seed: int = 0, ridges=None, candidates: int = 32,
                   tail: float | None = None, anisotropy: float = 1.0):
    """A rule family ``rule(level, d, var)`` for :func:`meanode.limit.mean_ode_limit`:
    :func:`lattice` with step ``h = spacing / level`` (level 10 -> h = 0.3) and a rotation
    screened from seed ``(seed, level)``, so that two levels have independent orientations
    (their gap then measures the error rather than a shared aliasing term); ``replicate = r > 0``
    gives further independent rotations of the same level (seed ``(seed, level, r)``). ``ridges``,
    ``candidates``: orient each level by a pilot run's ridges; ``tail``: the Gaussian mass left out
    by the radial map (see :func:`lattice`); ``anisotropy``: with ``ridges``, the step times this
    across their principal direction (:meth:`Ridges.scale`; 1/anisotropy^(d-1) of the nodes).
    """
    spacing = float(spacing)
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing must be a positive number; got {spacing!r}")
    anisotropy = real("anisotropy", anisotropy, minimum=1.0)
    scale = None if ridges is None or anisotropy == 1.0 else ridges.scale(anisotropy)

    def rule(level: int, d: int, var: float, replicate: int = 0) -> Rule:
        level = _check_int(level, "level", 1)
        rseed = (int(seed), level) if replicate == 0 else (int(seed), level, int(replicate))
        return lattice(spacing / level, d, var, kind=kind, stretch=stretch, rotation=rotation,
                       seed=rseed, ridges=ridges, candidates=candidates, tail=tail, scale=scale)

    rule.__name__ = (f"lattice_family(spacing={spacing:g}" + ("" if tail is None else f", tail={tail:g}")
                     + ("" if scale is None else f", anisotropy={anisotropy:g}") + ")")
    return rule


def trapezoid(h: float, d: int, var: float = 1.0, cutoff: float = 6.0) -> Rule:
    """Tensor trapezoid (sinc) rule for ``z ~ N(0, var I_d)``: nodes ``sqrt(var) h j``,
    ``j in Z^d`` with ``|h j_k| <= cutoff``; weights ``prod_k exp(-(h j_k)^2 / 2)`` renormalised to
    sum 1 (the plain sum ``h / sqrt(2 pi) sum exp(-x^2/2)`` is ``1 + O(exp(-2 pi^2 / h^2))``).

    Converges like ``exp(-2 pi a / h)`` for integrands analytic in ``|Im z_k| < a sqrt(var)``
    plus the truncated Gaussian mass beyond ``cutoff`` (1.97e-9 per dimension at 6). Pitfalls
    seen on the tanh Mean ODE (why it looked erratic): (1) a cutoff tied to ``h`` (e.g. a
    fixed number of points, or ``floor(X/h) h``) moves with ``h``, and the truncation error,
    not small there because the integrand grows like ``|v|``, jumps by ~1e-6 at X = 5; keep
    ``cutoff`` fixed and >= 6; (2) the grid is aligned with the u and v coordinate planes, where
    the integrand's ridges lie, so it aliases 10-20x more than a rotated lattice
    (:func:`lattice`); (3) its corners carry nodes of negligible weight: (2 cutoff / h)^d nodes.
    """
    h = float(h)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive number; got {h!r}")
    d = _check_int(d, "d", 1)
    v = _check_var(var)
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive number; got {cutoff!r}")
    m = int(math.floor(cutoff / h + 1e-12))
    n = 2 * m + 1
    if n**d > _MAX_TENSOR_NODES:
        raise ValueError(f"trapezoid(h={h}, d={d}) has {n}**{d} nodes, more than {_MAX_TENSOR_NODES}")
    x = h * np.arange(-m, m + 1, dtype=np.float64)
    w = np.exp(-0.5 * x * x)
    w = w / math.fsum(w.tolist())
    grids = np.meshgrid(*([x * math.sqrt(v)] * d), indexing="ij")
    nodes = np.stack([g.reshape(-1) for g in grids], axis=1)
    wgrid = w
    for _ in range(d - 1):
        wgrid = np.multiply.outer(wgrid, w)
    return Rule(nodes, np.asarray(wgrid).reshape(-1), f"trapezoid(h={h:g}, d={d}, var={v:g}, cutoff={cutoff:g})")

