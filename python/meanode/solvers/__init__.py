"""ODE solvers by name: SciPy (default), a batched torch Runge–Kutta, and the Julia bridge.

Names follow DifferentialEquations.jl where it has one; each maps onto the nearest method a
backend has, and the method that actually ran is reported (:class:`SolverChoice`):

=============================  ==============  =================================
requested                      scipy           torch
=============================  ==============  =================================
DOP853, Vern7, Vern8, Vern9    DOP853          dopri5 (nearest explicit)
Tsit5, RK45, DP5, dopri5       RK45            dopri5
RK23, BS3                      RK23            dopri5
Radau, RadauIIA5, Rodas5P,     Radau           (stiff: not available, error)
Rodas5, Rodas4, KenCarp4,
TRBDF2
BDF, QNDF, FBDF                BDF             (error)
LSODA, auto                    LSODA           (error)
=============================  ==============  =================================

A backend is chosen with a prefix (``"torch:Tsit5"``, ``"scipy:Radau"``) or by the ``backend=``
argument of the limit functions; no prefix means SciPy. A name that maps to another method warns
once (and ``str(choice)`` says "asked ..."). Julia (``"julia:Vern9"``) does not integrate single
ODEs from Python: it replaces the whole limit engine (:mod:`meanode.limit.backends`,
:mod:`meanode.julia`).
"""

from __future__ import annotations

import warnings

from .base import ODEStats, SolverChoice, SolverError, check_progress

__all__ = ["SolverChoice", "ODEStats", "SolverError", "check_progress", "resolve_solver", "warn_if_remapped",
           "integrate", "SCIPY_METHODS", "BACKENDS"]

SCIPY_METHODS = {
    "DOP853": "DOP853", "Vern7": "DOP853", "Vern8": "DOP853", "Vern9": "DOP853",
    "Tsit5": "RK45", "RK45": "RK45", "DP5": "RK45", "dopri5": "RK45",
    "RK23": "RK23", "BS3": "RK23",
    "Radau": "Radau", "RadauIIA5": "Radau", "Rodas5P": "Radau", "Rodas5": "Radau", "Rodas4": "Radau",
    "KenCarp4": "Radau", "TRBDF2": "Radau",
    "BDF": "BDF", "QNDF": "BDF", "FBDF": "BDF",
    "LSODA": "LSODA", "auto": "LSODA",
}
_TORCH_EXPLICIT = {"DOP853", "Vern7", "Vern8", "Vern9", "Tsit5", "RK45", "DP5", "dopri5", "RK23", "BS3"}
BACKENDS = ("scipy", "torch")
_WARNED: set[tuple[str, str]] = set()


def resolve_solver(name: str, backend: str | None = None) -> SolverChoice:
    """Map a solver name (optionally ``backend:name``) to the method that will run on the SciPy or
    torch backend; a remapped name warns once per (name, backend)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"solver must be a non-empty string, got {name!r}")
    if ":" in name:
        prefix, name = name.split(":", 1)
        if backend not in (None, "auto", prefix):
            raise ValueError(f"solver prefix {prefix!r} contradicts backend={backend!r}")
        backend = prefix
    if backend in (None, "auto"):
        backend = "scipy"
    if backend not in BACKENDS:
        raise ValueError(f"unknown solver backend {backend!r}; choose one of {BACKENDS} (or 'julia' in the limit "
                         "functions)")
    if backend == "scipy":
        if name not in SCIPY_METHODS:
            raise ValueError(f"unknown solver {name!r}; known names: {sorted(SCIPY_METHODS)}")
        choice = SolverChoice(name, "scipy", SCIPY_METHODS[name])
    else:
        if name not in _TORCH_EXPLICIT:
            raise ValueError(f"the torch backend has explicit Runge–Kutta only (dopri5); {name!r} is not "
                             f"available there: use scipy:{name} or julia:{name}")
        choice = SolverChoice(name, "torch", "dopri5")
    warn_if_remapped(choice)
    return choice


def warn_if_remapped(choice: SolverChoice) -> None:
    """Warn (once per requested name and backend) when the method that runs is not the one asked for."""
    key = (choice.requested, choice.backend)
    if choice.method != choice.requested and choice.requested != "auto" and key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"solver {choice.requested!r} is not available on the {choice.backend} backend; "
                      f"{choice.backend}:{choice.method} runs instead (the nearest method)", stacklevel=4)


def integrate(rhs, y0, t0: float, t1: float, t_eval, choice: SolverChoice, rtol: float, atol: float,
              max_rhs: int | None = None, bound: float | None = None):
    """Solve ``dy/dt = rhs(t, y)`` from ``t0`` to ``t1`` (either direction) and return
    ``(Y, stats)`` with ``Y (len(t_eval), *y0.shape)`` the solution at ``t_eval`` (ordered from
    t0 towards t1; every point must lie in the interval). Raises :class:`SolverError`; with
    ``max_rhs`` / ``bound`` also when the solve uses more right-hand-side evaluations than that
    (status ``"max_rhs"``) or the state's RMS exceeds ``bound`` (status ``"diverged"``)."""
    if choice.backend == "scipy":
        from .scipy_backend import integrate_scipy
        return integrate_scipy(rhs, y0, t0, t1, t_eval, choice, rtol, atol, max_rhs, bound)
    if choice.backend == "torch":
        from .torch_rk import integrate_torch
        return integrate_torch(rhs, y0, t0, t1, t_eval, choice, rtol, atol, max_rhs, bound)
    raise ValueError(f"backend {choice.backend!r} does not integrate single ODEs from Python")  # pragma: no cover
