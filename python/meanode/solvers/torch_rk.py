"""Torch backend: adaptive Dormand–Prince 5(4) written in torch (CPU or CUDA, any batch shape).

The state stays a tensor on its device for the whole solve: the right-hand side is called
with tensors, and only the accept/reject decision (one scalar) crosses to the host per step.
Steps are shortened to land exactly on every output point, so no interpolant is needed and
the outputs carry the local accuracy of the method (error control as in Hairer–Nørsett–Wanner:
RMS of ``err / (atol + rtol * max(|y|, |y_new|))``, PI-free standard controller, safety 0.9).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .base import ODEStats, SolverChoice, SolverError, check_progress

# Dormand–Prince 5(4) tableau (FSAL): nodes c, stages a, 5th-order weights b, b - b_hat as e.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = _A[6] + (0.0,)
_B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b - bh for b, bh in zip(_B, _B_HAT))

_SAFETY, _MIN_FACTOR, _MAX_FACTOR, _MAX_STEPS = 0.9, 0.2, 5.0, 1_000_000


def _norm(err, y, y_new, rtol, atol) -> float:
    scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
    return float(torch.sqrt(torch.mean((err / scale) ** 2)))


def integrate_torch(rhs, y0: torch.Tensor, t0: float, t1: float, t_eval, choice: SolverChoice,
                    rtol: float, atol: float, max_rhs: int | None = None, bound: float | None = None):
    t_start = time.perf_counter()
    t_eval = np.asarray(t_eval, dtype=float)
    direction = 1.0 if t1 >= t0 else -1.0
    out = torch.empty((len(t_eval),) + tuple(y0.shape), dtype=y0.dtype, device=y0.device)
    stats = ODEStats(nsolves=1)
    t, y = float(t0), y0.clone()
    k1 = rhs(t, y)
    stats.nfev += 1
    i = 0
    while i < len(t_eval) and direction * (t_eval[i] - t) <= 0:
        out[i] = y
        i += 1
    # initial step (Hairer–Wanner II.4 heuristic, one extra evaluation)
    scale = atol + rtol * y.abs()
    d0, d1 = float(torch.sqrt(torch.mean((y / scale) ** 2))), float(torch.sqrt(torch.mean((k1 / scale) ** 2)))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    y1 = y + direction * h0 * k1
    d2 = float(torch.sqrt(torch.mean(((rhs(t + direction * h0, y1) - k1) / scale) ** 2))) / h0
    stats.nfev += 1
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    h = min(100 * h0, h1, abs(t1 - t0))

    while i < len(t_eval):
        if stats.nsteps + stats.nrejected > _MAX_STEPS:
            raise SolverError(choice, "maxiters", f"more than {_MAX_STEPS} steps", t)
        target = t_eval[i]
        last = abs(target - t) <= h * (1 + 1e-12)
        step = abs(target - t) if last else h
        hs = direction * step
        ks = [k1]
        for s in range(1, 7):
            yi = y
            for a, k in zip(_A[s], ks):
                if a != 0.0:
                    yi = yi + (hs * a) * k
            ks.append(rhs(t + _C[s] * hs, yi))
        stats.nfev += 6
        y_new = y
        for b, k in zip(_B, ks[:6]):
            if b != 0.0:
                y_new = y_new + (hs * b) * k
        err = sum((hs * e) * k for e, k in zip(_E, ks) if e != 0.0)
        en = _norm(err, y, y_new, rtol, atol)
        if not np.isfinite(en):
            raise SolverError(choice, "nonfinite", "the state or its error estimate became non-finite", t)
        if en <= 1.0:
            stats.nsteps += 1
            t = float(target) if last else t + hs
            y, k1 = y_new, ks[6]
            check_progress(choice, y, t, stats.nfev, max_rhs, bound)
            if last:
                out[i] = y
                i += 1
            factor = _MAX_FACTOR if en == 0 else min(_MAX_FACTOR, _SAFETY * en ** (-1 / 5))
            h = max(step, h) * factor if last else step * factor
        else:
            stats.nrejected += 1
            check_progress(choice, y, t, stats.nfev, max_rhs, None)
            h = step * max(_MIN_FACTOR, _SAFETY * en ** (-1 / 5))
            if h < 1e-14 * max(1.0, abs(t)):
                raise SolverError(choice, "dtmin", f"step size {h:.3g} underflow", t)
    stats.wall_time = time.perf_counter() - t_start
    return out, stats
