"""Measurements of SPEC §7: errors against a limit, Euler/fluctuation split, rate fits.

Conventions: an *error* is an RMS over coordinates and samples (and over seeds where stated);
arrays carry the seed axis first, as returned by :func:`meanode.train_resnet`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Fit", "loglog_slope", "rms", "init_deviation", "error_split", "fluctuation", "ErrorSplit", "fit_rate_model"]


def rms(x: np.ndarray, axis=None) -> np.ndarray:
    """Root mean square (NaN propagates: diverged runs are never silently dropped)."""
    return np.sqrt(np.mean(np.square(x), axis=axis))


@dataclass(frozen=True)
class Fit:
    """A least-squares fit ``log y = intercept + slope * log x`` with a confidence interval."""

    slope: float
    intercept: float
    stderr: float
    ci: tuple[float, float]
    n: int

    def __str__(self) -> str:
        return f"{self.slope:+.3f} [{self.ci[0]:+.3f}, {self.ci[1]:+.3f}]"


def loglog_slope(x, y, level: float = 0.95) -> Fit:
    """Fit ``y ~ C x^slope`` by least squares in log-log space; ``level`` CI from Student's t.

    Raises ``ValueError`` on non-positive or non-finite values (a diverged point must be
    handled by the caller, not silently dropped).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"x and y must be 1-D of equal length >= 2, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ValueError("loglog_slope needs finite positive x and y")
    lx, ly = np.log(x), np.log(y)
    res = stats.linregress(lx, ly)
    n = x.size
    if n > 2:
        t = stats.t.ppf(0.5 + level / 2, n - 2)
        half = t * res.stderr
    else:
        half = float("nan")
    return Fit(float(res.slope), float(res.intercept), float(res.stderr),
               (float(res.slope - half), float(res.slope + half)), n)


def init_deviation(h: np.ndarray, h0: np.ndarray) -> float:
    """RMS over seeds, samples and coordinates of ``h^L - h^0`` at step 0.

    ``h (E, N, D)`` (e.g. ``TrainResult.h[:, 0]``), ``h0 (N, D)`` = ``X W_E^T``. Predicted
    ``O(alpha sqrt(D/(L M)))`` (SPEC §3, §7).
    """
    return float(rms(h - h0[None]))


@dataclass(frozen=True)
class ErrorSplit:
    """Error of an ensemble against a limit, split as in SPEC §7 (floats, or arrays over kept axes).

    total: RMS over seeds, samples, coordinates of ``x - x_inf``.
    euler: RMS of the seed mean of ``x - x_inf`` (the deterministic 1/L part).
    fluctuation: RMS over samples/coordinates of the seed standard deviation (ddof=1); NaN for one seed.
    per_seed: RMS over samples/coordinates of ``x - x_inf`` for each seed (seed axis first).
    """

    total: float | np.ndarray
    euler: float | np.ndarray
    fluctuation: float | np.ndarray
    per_seed: np.ndarray | None = None


def fluctuation(x: np.ndarray, keep: int = 0) -> np.ndarray | float:
    """Seed standard deviation (ddof=1), RMS over the axes after the first ``keep`` (after the seed
    axis): ``x (E, *kept, ...)`` -> ``kept`` shape; NaN with one seed. Needs no reference."""
    x = np.asarray(x)
    rest = tuple(range(keep, x.ndim - 1))
    if x.shape[0] < 2:
        return np.full(x.shape[1:1 + keep], np.nan) if keep else float("nan")
    out = np.sqrt(np.mean(x.var(axis=0, ddof=1), axis=rest))
    return out if keep else float(out)


def error_split(x: np.ndarray, x_inf: np.ndarray, keep: int = 0) -> ErrorSplit:
    """SPEC §7's split of ``x (E, *kept, ...)`` (an ensemble, seed axis first) against the limit
    ``x_inf (*kept, ...)``; the first ``keep`` axes after the seed axis (e.g. the step) are kept,
    the others (samples, coordinates) averaged. The one implementation of the split: sweep points,
    merges and reports call it."""
    x = np.asarray(x)
    d = x - np.asarray(x_inf)[None]
    rest = tuple(range(1 + keep, d.ndim))
    per_seed = rms(d, axis=rest)
    total = rms(d, axis=(0,) + rest)
    euler = rms(d.mean(axis=0), axis=tuple(a - 1 for a in rest))
    fl = fluctuation(x, keep)
    if not keep:
        total, euler = float(total), float(euler)
    return ErrorSplit(total, euler, fl, per_seed)


def fit_rate_model(L, M, D, err) -> tuple[float, float]:
    """Non-negative least squares for ``err ~ a / L + b * sqrt(D / (L M))`` (SPEC §7)."""
    from scipy.optimize import nnls

    L, M, D, err = (np.asarray(v, dtype=float) for v in (L, M, D, err))
    A = np.stack([1.0 / L, np.sqrt(D / (L * M))], axis=1)
    coef, _ = nnls(A, err)
    return float(coef[0]), float(coef[1])
