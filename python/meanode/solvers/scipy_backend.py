"""SciPy backend: the ``scipy.integrate`` solver classes stepped by hand.

Stepping by hand (rather than ``solve_ivp``) lets every requested output point be taken
from the dense output of the step that contains it, counts steps, and turns any failure
into a :class:`~meanode.solvers.SolverError` with the solver's status and message.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy import integrate as si

from .base import ODEStats, SolverChoice, SolverError, check_progress


def integrate_scipy(rhs, y0: torch.Tensor, t0: float, t1: float, t_eval, choice: SolverChoice,
                    rtol: float, atol: float, max_rhs: int | None = None, bound: float | None = None):
    t_start = time.perf_counter()
    shape, dtype, device = y0.shape, y0.dtype, y0.device
    if dtype != torch.float64:
        raise TypeError("the scipy backend integrates in float64; pass float64 state")

    def fun(t, y):
        yt = torch.from_numpy(np.ascontiguousarray(y)).reshape(shape).to(device)
        return rhs(float(t), yt).reshape(-1).cpu().numpy()

    cls = getattr(si, choice.method)
    solver = cls(fun, t0, y0.reshape(-1).cpu().numpy(), t1, rtol=rtol, atol=atol)
    t_eval = np.asarray(t_eval, dtype=float)
    out = np.empty((len(t_eval), y0.numel()))
    direction = np.sign(t1 - t0)
    i, nsteps = 0, 0
    while i < len(t_eval) and direction * (t_eval[i] - t0) <= 0:  # points at t0
        out[i] = y0.reshape(-1).cpu().numpy()
        i += 1
    while solver.status == "running":
        msg = solver.step()
        if solver.status == "failed":
            raise SolverError(choice, "failed", str(msg), float(solver.t))
        nsteps += 1
        check_progress(choice, solver.y, float(solver.t), int(solver.nfev), max_rhs, bound)
        j = i
        while j < len(t_eval) and direction * (t_eval[j] - solver.t) <= 0:
            j += 1
        if j > i:
            dense = solver.dense_output()
            out[i:j] = dense(t_eval[i:j]).T
            if direction * (t_eval[j - 1] - solver.t) == 0:
                out[j - 1] = solver.y  # exact at the end of the step
            i = j
    if i < len(t_eval):
        raise SolverError(choice, solver.status, "stopped before the last output point", float(solver.t))
    if not np.all(np.isfinite(out)):
        raise SolverError(choice, "nonfinite", "the solution became non-finite", float(solver.t))
    stats = ODEStats(nfev=int(solver.nfev), njev=int(getattr(solver, "njev", 0)),
                     nlu=int(getattr(solver, "nlu", 0)), nsteps=nsteps, nsolves=1,
                     wall_time=time.perf_counter() - t_start)
    Y = torch.from_numpy(out).reshape((len(t_eval),) + tuple(shape)).to(device)
    return Y, stats
