"""Building blocks for the follow-up paper's linear (identity) large-D experiment (SPEC §6, issue 12).

Setup (from the paper's public code): N = 1, d_in = d_out = 3; x a standard Gaussian draw
rescaled to norm 0.8; y = A x + 0.05 xi with A (3 x 3) and xi standard Gaussian; W_E and W_U
with N(0, 1) entries, drawn once at D_max and coupled across D by row prefixes; alpha = 1,
eta = 0.1 (SPEC's convention), K = 15 steps, errors at step 5. References are exact: the
D = infinity limit (:func:`~meanode.limit.infinite_d.infinite_d_limit`, var_E = var_U = 1) and
the fixed-D closure of the same embeddings (:func:`~meanode.limit.infinite_d.embedded_closure`).

Errors at a step k (:func:`step_errors`), per seed:
- hidden, the paper's: ``max over layers l = 0..L (s = l/L) of mean over coordinates (and samples)
  of |h^l_d(x) - H_d(s, x)|``;
- hidden, SPEC §7: RMS over coordinates and samples of ``h^L - H(1)``;
- output: RMS over samples and outputs of ``f - f_ref``.

Fits (:func:`fit_hidden_model`, :func:`fit_output_model`): non-negative least squares of the
seed-mean squared error on ``err_h^2 = a D/(L M) + b/D + c/L^2`` and
``err_f^2 = a' (D/(L M))^2 + b'/D``, with bootstrap confidence intervals over seeds; the best
shapes at fixed P = L M D (:func:`envelope_slope`) should give slopes -1/6 (hidden) and -1/5
(output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from . import measure
from ._checks import positive_float, positive_int
from .data import Problem
from .limit import LimitResult
from .limit.infinite_d import InfiniteDResult
from .resnet import TrainResult

__all__ = ["linear_experiment_problem", "linear_experiment_embeddings", "StepErrors", "step_errors",
           "ErrorModelFit", "fit_error_model", "fit_hidden_model", "fit_output_model", "envelope_slope",
           "LINEAR_EXPERIMENT"]

#: the published configuration (SPEC's conventions): training and measurement
LINEAR_EXPERIMENT = dict(alpha=1.0, eta=0.1, steps=15, step=5, sizes=(10, 499, 15), seeds=5)


def linear_experiment_embeddings(D: int, d_in: int = 3, d_out: int = 3, seed: int = 0,
                                 D_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``W_E (D, d_in)``, ``W_U (D, d_out)`` with iid N(0, 1) entries (the follow-up paper's
    variances, not SPEC §1's 1/d_in), drawn at ``D_max`` (default D) and cut to their first D rows."""
    D = positive_int("D", D)
    D_max = D if D_max is None else positive_int("D_max", D_max)
    if D_max < D:
        raise ValueError(f"D_max={D_max} must be >= D={D}")
    rng = np.random.default_rng([int(seed), 12])  # a stream of its own, independent of the data's
    W_E = rng.standard_normal((D_max, d_in))
    W_U = rng.standard_normal((D_max, d_out))
    return W_E[:D].copy(), W_U[:D].copy()


def linear_experiment_problem(D: int, *, D_max: int | None = None, data_seed: int = 0, embed_seed: int = 0,
                              d_in: int = 3, d_out: int = 3, x_norm: float = 0.8,
                              noise: float = 0.05) -> Problem:
    """The follow-up paper's linear-experiment data (N = 1) and coupled N(0, 1) embeddings.

    From ``numpy.random.default_rng(data_seed)``, in this order: ``x ~ N(0, I_{d_in})``
    rescaled to ``|x| = x_norm``; ``A (d_out, d_in)`` standard Gaussian; ``xi ~ N(0, I_{d_out})``;
    ``y = A x + noise * xi``. Embeddings from :func:`linear_experiment_embeddings` with
    ``embed_seed`` (separate streams: changing one seed never changes the other draws).
    Returns a :class:`~meanode.Problem` with ``X (1, d_in)``, ``Y (1, d_out)``.
    """
    d_in, d_out = positive_int("d_in", d_in), positive_int("d_out", d_out)
    x_norm = positive_float("x_norm", x_norm)
    noise = positive_float("noise", noise, allow_zero=True)
    rng = np.random.default_rng(int(data_seed))
    x = rng.standard_normal(d_in)
    x = x_norm * x / np.linalg.norm(x)
    A = rng.standard_normal((d_out, d_in))
    y = A @ x + noise * rng.standard_normal(d_out)
    W_E, W_U = linear_experiment_embeddings(D, d_in, d_out, seed=embed_seed, D_max=D_max)
    return Problem(x[None, :], y[None, :], W_E, W_U)


@dataclass(frozen=True)
class StepErrors:
    """Errors of E finite networks against a reference at step k, one value per seed (E,).

    hidden_max_mean: max over layers l = 0..L of the mean over coordinates and samples of
        ``|h^l - H(l/L)|`` (the follow-up paper's hidden error).
    hidden_rms: RMS over coordinates and samples of ``h^L - H(1)`` (SPEC §7).
    output_rms: RMS over samples and outputs of ``f - f_ref``.
    A diverged seed gives NaN (never zero, never dropped).
    """

    hidden_max_mean: np.ndarray
    hidden_rms: np.ndarray
    output_rms: np.ndarray
    k: int


def _reference_hidden(ref, s: np.ndarray, k: int, W_E: np.ndarray, W_U: np.ndarray, N: int) -> np.ndarray:
    """``H_k(s, x_n)`` for the D coordinates of (W_E, W_U): ``(S, N, D)``."""
    if isinstance(ref, InfiniteDResult):
        if ref.D != float("inf") and ref.D != W_E.shape[0]:
            raise ValueError(f"ref is the closure of a D = {ref.D} embedding, the rows W_E have D = {W_E.shape[0]}")
        return ref.coordinates(W_E, W_U, s=s).h[k, :, :N]
    if ref.h.shape[2] != W_E.shape[0]:
        raise ValueError(f"ref has D = {ref.h.shape[2]}, the rows W_E have D = {W_E.shape[0]}")
    return ref.h_at(s, k=k)[:, :N]


def step_errors(train: TrainResult, ref, k: int, W_E, W_U) -> StepErrors:
    """Errors at step k of a :func:`~meanode.train_resnet` ensemble trained with
    ``record_hidden=True`` against a reference with the same data and embeddings.

    ``ref``: :func:`~meanode.limit.infinite_d.infinite_d_limit` (the finite-vs-D = infinity
    errors, coordinates of the rows ``W_E (D, d_in)``, ``W_U (D, d_out)``);
    :func:`~meanode.limit.infinite_d.embedded_closure` built from these very W_E, W_U, or
    ``mean_ode_limit(..., method="closure")`` (the finite-vs-fixed-D-closure errors).
    """
    if not isinstance(train, TrainResult):
        raise TypeError(f"train must be a TrainResult, got {type(train).__name__}")
    if train.hidden is None:
        raise ValueError("train has no hidden states: train with record_hidden=True")
    if not isinstance(ref, (InfiniteDResult, LimitResult)):
        raise TypeError(f"ref must be an InfiniteDResult or a LimitResult, got {type(ref).__name__}")
    K = train.f.shape[1] - 1
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= K:
        raise ValueError(f"k must be a step in 0..{K}, got {k!r}")
    if ref.f.shape[0] - 1 < k:
        raise ValueError(f"ref has {ref.f.shape[0] - 1} steps, fewer than k = {k}")
    W_E, W_U = np.asarray(W_E, dtype=float), np.asarray(W_U, dtype=float)
    _, _, Lp1, N, D = train.hidden.shape
    if W_E.shape[0] != D or W_U.shape[0] != D:
        raise ValueError(f"W_E and W_U must have D = {D} rows (the network's), got {W_E.shape[0]}, {W_U.shape[0]}")
    L = Lp1 - 1
    s = np.arange(L + 1) / L
    H = _reference_hidden(ref, s, k, W_E, W_U, N)  # (L+1, N, D)
    dh = train.hidden[:, k] - H[None]  # (E, L+1, N, D)
    hidden_max_mean = np.abs(dh).mean(axis=(2, 3)).max(axis=1)  # NaN (diverged) propagates through max
    hidden_rms = measure.rms(dh[:, -1], axis=(1, 2))
    output_rms = measure.rms(train.f[:, k] - ref.f[k][None], axis=(1, 2))
    return StepErrors(hidden_max_mean, hidden_rms, output_rms, int(k))


@dataclass(frozen=True)
class ErrorModelFit:
    """``err^2 ~ sum_i coef_i * feature_i`` by non-negative least squares on the seed mean of err^2.

    coef (m,), ci (m, 2) bootstrap percentile interval at ``level`` (seeds resampled with
    replacement, the same seeds for every point), boot (n_boot, m) the replicates.
    """

    names: tuple[str, ...]
    coef: np.ndarray
    ci: np.ndarray
    boot: np.ndarray
    level: float
    n_points: int
    n_seeds: int
    weights: str

    def __str__(self) -> str:
        return ", ".join(f"{n} = {c:.3g} [{lo:.3g}, {hi:.3g}]"
                         for n, c, (lo, hi) in zip(self.names, self.coef, self.ci))


_IRLS_ITERATIONS = 4


def _nnls_fit(F: np.ndarray, y: np.ndarray, relative: bool) -> np.ndarray:
    """NNLS of ``y ~ F coef``; relative: iteratively reweighted by the *fitted* values (weights
    taken from the data themselves would favour the points whose noise happened to be low and
    bias the coefficients down: measured 5% on 10 seeds, CIs covering the truth less than half
    the time)."""
    if not relative:
        return nnls(F, y)[0]
    w = 1.0 / y
    for _ in range(_IRLS_ITERATIONS):
        coef = nnls(F * w[:, None], y * w)[0]
        fit = F @ coef
        w = 1.0 / np.where(fit > 0, fit, y)
    return coef


def fit_error_model(features, err, names, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                    weights: str = "relative") -> ErrorModelFit:
    """Fit ``err^2 ~ features @ coef`` (coef >= 0) with bootstrap CIs over seeds.

    features (P, m): the model's terms at P points; err (P, S): the error of S seeds at each
    point (positive, finite: a diverged run must be handled by the caller, not dropped here).
    weights: ``"relative"`` (least squares in relative error, so that errors spread over
    decades all count: rows divided by the fitted err^2, iterated from the observed one) or
    ``"none"`` (absolute).
    """
    F = np.asarray(features, dtype=float)
    e = np.asarray(err, dtype=float)
    if F.ndim != 2 or e.ndim != 2 or F.shape[0] != e.shape[0]:
        raise ValueError(f"features must be (P, m) and err (P, S) with the same P, got {F.shape} and {e.shape}")
    if len(names) != F.shape[1]:
        raise ValueError(f"names has {len(names)} entries for {F.shape[1]} features")
    if not (np.all(np.isfinite(F)) and np.all(np.isfinite(e))):
        raise ValueError("features and err must be finite (diverged runs: decide explicitly, never zero them)")
    if np.any(e < 0) or np.any(F < 0):
        raise ValueError("errors and features must be non-negative")
    if weights not in ("relative", "none"):
        raise ValueError(f"weights must be 'relative' or 'none', got {weights!r}")
    n_boot = positive_int("n_boot", n_boot)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    P, S = e.shape
    y = np.mean(e**2, axis=1)
    relative = weights == "relative"
    if relative and np.any(y <= 0):
        raise ValueError("weights='relative' needs a positive mean squared error at every point")
    coef = _nnls_fit(F, y, relative)
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, F.shape[1]))
    for i in range(n_boot):
        cols = rng.integers(0, S, size=S)
        yb = np.mean(e[:, cols] ** 2, axis=1)
        boot[i] = _nnls_fit(F, yb, relative and bool(np.all(yb > 0)))
    q = 100 * (1 - level) / 2
    ci = np.stack([np.percentile(boot, q, axis=0), np.percentile(boot, 100 - q, axis=0)], axis=1)
    return ErrorModelFit(tuple(names), coef, ci, boot, float(level), P, S, weights)


def _shapes(L, M, D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    L, M, D = (np.asarray(v, dtype=float).ravel() for v in (L, M, D))
    if not (L.shape == M.shape == D.shape):
        raise ValueError(f"L, M, D must have the same length, got {L.shape}, {M.shape}, {D.shape}")
    if np.any(L < 1) or np.any(M < 1) or np.any(D < 1):
        raise ValueError("L, M, D must be >= 1")
    return L, M, D


def fit_hidden_model(L, M, D, err, **kw) -> ErrorModelFit:
    """``err_h^2 = a D/(L M) + b/D + c/L^2`` (embedding space, SPEC §6); err (P, S)."""
    L, M, D = _shapes(L, M, D)
    F = np.stack([D / (L * M), 1.0 / D, 1.0 / L**2], axis=1)
    return fit_error_model(F, err, ("a [D/(LM)]", "b [1/D]", "c [1/L^2]"), **kw)


def fit_output_model(L, M, D, err, **kw) -> ErrorModelFit:
    """``err_f^2 = a' (D/(L M))^2 + b'/D`` (output space, SPEC §6); err (P, S)."""
    L, M, D = _shapes(L, M, D)
    F = np.stack([(D / (L * M)) ** 2, 1.0 / D], axis=1)
    return fit_error_model(F, err, ("a' [(D/(LM))^2]", "b' [1/D]"), **kw)


def envelope_slope(P, err, *, bins_per_decade: float = 2.0, level: float = 0.95) -> measure.Fit:
    """Log-log slope of the best shapes: ``log P`` cut into bins (``bins_per_decade``), the
    smallest error in each bin (the best shape at that size), then a least-squares line
    through those minima (:func:`meanode.measure.loglog_slope`, Student-t CI). Predicted
    -1/6 for the hidden error and -1/5 for the output error (SPEC §6). ``P (n,)``, ``err (n,)``
    (e.g. seed means); non-finite errors raise."""
    P, err = np.asarray(P, dtype=float).ravel(), np.asarray(err, dtype=float).ravel()
    if P.shape != err.shape or P.size < 3:
        raise ValueError(f"P and err must be 1-D of equal length >= 3, got {P.shape} and {err.shape}")
    if not (np.all(np.isfinite(err)) and np.all(err > 0) and np.all(P > 0)):
        raise ValueError("envelope_slope needs finite positive P and err")
    bins_per_decade = positive_float("bins_per_decade", bins_per_decade)
    lp = np.log10(P)
    idx = np.floor((lp - lp.min()) * bins_per_decade + 1e-9).astype(int)
    xs, ys = [], []
    for b in np.unique(idx):
        sel = np.flatnonzero(idx == b)
        j = sel[np.argmin(err[sel])]
        xs.append(P[j])
        ys.append(err[j])
    if len(xs) < 3:
        raise ValueError(f"only {len(xs)} P bins: need P over a wider range or more bins_per_decade")
    return measure.loglog_slope(np.array(xs), np.array(ys), level=level)
