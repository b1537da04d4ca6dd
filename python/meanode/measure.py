"""Measurements of SPEC §7: errors against a limit, Euler/fluctuation split, rate fits.

Conventions: an *error* is an RMS over coordinates and samples (and over seeds where stated);
arrays carry the seed axis first, as returned by :func:`meanode.train_resnet`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Fit", "loglog_slope", "rms", "init_deviation", "error_split", "ErrorSplit", "fit_rate_model"]


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
    """Error of an ensemble against a limit, split as in SPEC §7.

    total: RMS over seeds, samples, coordinates of ``x - x_inf``.
    euler: RMS of the seed mean of ``x - x_inf`` (the deterministic 1/L part).
    fluctuation: RMS over samples/coordinates of the seed standard deviation (ddof=1).
    """

    total: float
    euler: float
    fluctuation: float


def error_split(x: np.ndarray, x_inf: np.ndarray) -> ErrorSplit:
    """``x (E, ...)`` ensemble values, ``x_inf (...)`` the limit at the same step."""
    d = np.asarray(x) - np.asarray(x_inf)[None]
    fl = float(rms(d.std(axis=0, ddof=1))) if d.shape[0] > 1 else float("nan")
    return ErrorSplit(float(rms(d)), float(rms(d.mean(axis=0))), fl)


def fit_rate_model(L, M, D, err) -> tuple[float, float]:
    """Non-negative least squares for ``err ~ a / L + b * sqrt(D / (L M))`` (SPEC §7)."""
    from scipy.optimize import nnls

    L, M, D, err = (np.asarray(v, dtype=float) for v in (L, M, D, err))
    A = np.stack([1.0 / L, np.sqrt(D / (L * M))], axis=1)
    coef, _ = nnls(A, err)
    return float(coef[0]), float(coef[1])
