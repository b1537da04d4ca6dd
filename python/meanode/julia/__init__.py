"""The optional Julia backend (DifferentialEquations.jl's OrdinaryDiffEq through juliacall).

Use it with ``backend="julia"`` (or a ``"julia:Vern9"``-style solver name) in
:func:`meanode.limit.mean_ode_limit` / :func:`meanode.limit.lazy_limit`. The Julia code is
``MeanODE.jl`` beside this module; :mod:`meanode.julia.bridge` starts Julia on first use and calls it.

Importing this package never imports ``juliacall`` or starts Julia.
:func:`julia_available` is a cheap check (see :func:`julia_status` for the rule); where the
Julia path cannot run, the limit functions raise :class:`JuliaUnavailableError` (they never fall
back silently to another backend).
"""

from .bridge import (
    INSTALL_HINT,
    JULIA_SOLVERS,
    JuliaError,
    JuliaSolverError,
    JuliaUnavailableError,
    find_julia_executable,
    julia_available,
    julia_method_label,
    julia_solver_name,
    julia_source_path,
    julia_status,
    resolve_auto_backend,
    start,
)

__all__ = [
    "INSTALL_HINT", "JULIA_SOLVERS", "JuliaError", "JuliaSolverError", "JuliaUnavailableError",
    "find_julia_executable", "julia_available", "julia_method_label", "julia_solver_name", "julia_source_path", "julia_status",
    "resolve_auto_backend", "start",
]
