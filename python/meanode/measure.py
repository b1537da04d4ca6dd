"""Measurements of SPEC §7: errors against a limit, Euler/fluctuation split, rate fits.

Conventions: an *error* is an RMS over coordinates and samples (and over seeds where stated);
arrays carry the seed axis first, as returned by :func:`meanode.train_resnet`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Fit", "loglog_slope", "loglog_slopes", "rms", "init_deviation", "error_split", "fluctuation", "ErrorSplit", "fit_rate_model"]


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
    n = x.size
    dx, dy = lx - lx.mean(), ly - ly.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    if sxx == 0.0:
        raise ValueError("loglog_slope needs at least two distinct x")
    slope = sxy / sxx
    intercept = float(ly.mean() - slope * lx.mean())
    if n > 2:  # standard error of the slope from the residuals (as scipy.stats.linregress)
        resid = max(syy - slope * sxy, 0.0)
        stderr = math.sqrt(resid / (n - 2) / sxx)
        from scipy import stats  # imported here: scipy.stats alone costs ~1 s of every process start

        half = float(stats.t.ppf(0.5 + level / 2, n - 2)) * stderr
    else:
        stderr, half = 0.0, float("nan")
    return Fit(float(slope), intercept, float(stderr), (float(slope - half), float(slope + half)), n)


def loglog_slopes(x, Y) -> np.ndarray:
    """Least-squares slopes of ``log Y[b] = c_b + slope_b log x`` for every row ``b`` at once.

    ``x (n,)`` finite and positive, ``Y (B, n)``; a row with a non-positive or non-finite value
    gets NaN (bootstrap resamples: the caller decides what to do with them). Each slope is the
    one :func:`loglog_slope` fits to that row, to rounding.
    """
    x, Y = np.asarray(x, dtype=float), np.asarray(Y, dtype=float)
    if x.ndim != 1 or Y.ndim != 2 or Y.shape[1] != x.size or x.size < 2:
        raise ValueError(f"x must be (n,) with n >= 2 and Y (B, n), got {x.shape} and {Y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(x > 0)):
        raise ValueError("loglog_slopes needs finite positive x")
    ok = np.all(np.isfinite(Y) & (Y > 0), axis=1)
    lx = np.log(x)
    lx = lx - lx.mean()
    sxx = float(lx @ lx)
    if sxx == 0.0:
        raise ValueError("loglog_slopes needs at least two distinct x")
    ly = np.log(np.where(ok[:, None], Y, 1.0))
    slopes = (ly - ly.mean(axis=1, keepdims=True)) @ lx / sxx
    return np.where(ok, slopes, np.nan)


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
