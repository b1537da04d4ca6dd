"""Python side of the Julia backend: start Julia once, call ``MeanODE.solve_limit``, package results.

``import meanode`` (and importing this module) never imports :mod:`juliacall`; Julia starts on the
first limit computation with ``backend="julia"`` (or a ``"julia:..."`` solver name) and stays up
for the rest of the process.

Start (:func:`start`, cached): ``import juliacall`` (on its first use juliapkg downloads Julia if
none is found and installs and precompiles the packages of ``meanode/juliapkg.json``: minutes),
then ``juliacall.newmodule("MeanODEBridge")`` and ``include`` of ``MeanODE.jl`` (beside this module) into that
private module, so nothing lands in Julia's ``Main``. One Julia thread unless
``PYTHON_JULIACALL_THREADS`` is already set (then also Julia's BLAS is left alone). A failed start
raises :class:`JuliaUnavailableError` and is remembered: later calls in the same process raise
the same error without trying again.

Calls: every call into Julia (the solve and the conversion of its results) holds one
``threading.Lock``, so threads never enter Julia concurrently. float64 C-contiguous numpy arrays
go to Julia as they are (juliacall wraps them as ``PyArray`` without copying); results are copied
out into numpy. A Julia exception becomes :class:`JuliaError` (``julia_type`` names the Julia type),
and a failed ODE solve (``MeanODE.SolverFailure``: a retcode that is not
``SciMLBase.successful_retcode``, or a non-finite solution) becomes :class:`JuliaSolverError`,
which is also a :class:`meanode.solvers.SolverError`.

Nothing here falls back to another backend: where the Julia path cannot run it raises
:class:`JuliaUnavailableError`. Choosing a backend automatically is :func:`resolve_auto_backend`'s
business. :class:`JuliaBackend` is the :class:`meanode.limit.backends.Backend` of this module.

Test seam: :func:`_set_runtime_for_tests` installs a fake runtime (an object with ``module`` —
having ``solve_limit`` — and ``describe(exc)``), or with ``None`` forgets the runtime and any
remembered start failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..limit.result import Run
from ..solvers import ODEStats, SolverChoice, SolverError, warn_if_remapped

__all__ = [
    "JuliaUnavailableError", "JuliaError", "JuliaSolverError", "JULIA_SOLVERS", "INSTALL_HINT",
    "julia_available", "julia_status", "julia_solver_name", "julia_method_label", "julia_source_path",
    "find_julia_executable",
    "resolve_auto_backend", "start", "solve_raw", "JuliaBackend",
]

INSTALL_HINT = (
    "To enable it: pip install 'meanode[julia]' (juliacall; its first start downloads Julia if none is "
    "found and installs and precompiles the Julia packages of meanode's juliapkg.json: minutes). To use "
    "a Julia you already have, set PYTHON_JULIACALL_EXE (or PYTHON_JULIAPKG_EXE) to its julia binary, and "
    "PYTHON_JULIACALL_PROJECT (or PYTHON_JULIAPKG_PROJECT) to a Julia project that holds those packages; "
    "PYTHON_JULIAPKG_OFFLINE=yes stops juliapkg from downloading or installing anything. "
    "MEANODE_JULIA_SOURCE may point at MeanODE.jl. Or use backend='scipy'."
)

#: Requested solver name -> the OrdinaryDiffEq method that runs (nearest where Julia lacks it).
JULIA_SOLVERS: dict[str, str] = {
    "Vern7": "Vern7", "Vern8": "Vern8", "Vern9": "Vern9", "Tsit5": "Tsit5",
    "Rodas5P": "Rodas5P", "Rodas5": "Rodas5", "Rodas4": "Rodas4", "KenCarp4": "KenCarp4", "TRBDF2": "TRBDF2",
    "auto": "auto", "LSODA": "auto",
    "DOP853": "Vern9",
    "RK45": "Tsit5", "DP5": "Tsit5", "dopri5": "Tsit5", "RK23": "Tsit5", "BS3": "Tsit5",
    "Radau": "Rodas5P", "RadauIIA5": "Rodas5P", "BDF": "Rodas5P", "QNDF": "Rodas5P", "FBDF": "Rodas5P",
}


def julia_method_label(solver: str) -> str:
    """How ``MeanODE.solve_limit`` names the method it ran for ``solver`` (a name it accepts, as
    :data:`JULIA_SOLVERS` gives it): the name itself, except ``"auto"``, which runs
    ``AutoVern9(Rodas5P())`` (``algorithm`` in ``MeanODE.jl``)."""
    return "AutoVern9(Rodas5P())" if solver == "auto" else solver


class JuliaUnavailableError(RuntimeError):
    """The Julia backend cannot run here; the message says why and how to enable it."""


class JuliaError(RuntimeError):
    """An exception raised in Julia. ``julia_type``: its type name (e.g. ``"ArgumentError"``,
    ``"MeanODE.SolverFailure"``); ``julia_message``: Julia's ``showerror`` text."""

    def __init__(self, message: str, julia_type: str = "", julia_message: str = ""):
        super().__init__(message)
        self.julia_type = julia_type
        self.julia_message = julia_message or message


class JuliaSolverError(JuliaError, SolverError):
    """A Julia ODE solve failed (``MeanODE.SolverFailure``); also a :class:`~meanode.solvers.SolverError`
    with ``status`` = the SciMLBase retcode (or ``"NonFinite"``) and ``t`` = the depth reached."""

    def __init__(self, choice: SolverChoice, status: str, message: str, t: float,
                 julia_type: str = "MeanODE.SolverFailure"):
        self.choice, self.status, self.t = choice, status, t
        self.julia_type, self.julia_message = julia_type, message
        RuntimeError.__init__(self, f"ODE solver {choice} failed at s = {t:.6g} with return code {status!r}: "
                                    f"{message} [Julia {julia_type}]")


class Runtime(Protocol):
    """What the bridge needs from a started Julia (the real one, or a test fake).

    ``module``: has ``solve_limit(kind, X, Y, W_E, W_U, X_eval, **kw)`` returning a mapping
    (``res["H"]`` ...) as documented in ``MeanODE.jl``.
    ``describe(exc)``: ``(type_name, message, retcode, s)`` when ``exc`` is a Julia exception,
    else ``None`` (then the exception passes through unchanged).
    """

    module: Any

    def describe(self, exc: BaseException) -> tuple[str, str, str, float] | None: ...


# --------------------------------------------------------------------------------------------
# availability: cheap checks that never start Julia
# --------------------------------------------------------------------------------------------

def _option(env: str, xopt: str) -> str | None:
    """An option given as ``-X xopt=value`` or in the environment variable ``env``."""
    value = sys._xoptions.get(xopt)
    if isinstance(value, str):
        return value
    return os.environ.get(env) or None


def _is_executable(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and os.access(p, os.X_OK)


def _juliapkg_project() -> Path:
    """The Julia project juliapkg installs into (its rule: option, virtualenv, conda, depot)."""
    project = _option("PYTHON_JULIAPKG_PROJECT", "juliapkg-project")
    if project:
        return Path(project)
    prefix = sys.prefix if sys.prefix != sys.base_prefix else os.environ.get("CONDA_PREFIX")
    if prefix:
        return Path(prefix) / "julia_env"
    depot = os.environ.get("JULIA_DEPOT_PATH", "").split(";" if os.name == "nt" else ":")[0]
    depot_dir = Path(depot) if depot else Path.home() / ".julia"
    return depot_dir / "environments" / "pyjuliapkg"


def find_julia_executable() -> tuple[str | None, str]:
    """``(path, how it was found)`` of a Julia executable juliacall would use, or ``(None, reason)``.

    The rule, checked in order and without running anything:

    1. ``PYTHON_JULIACALL_EXE`` (or ``-X juliacall-exe``), then ``PYTHON_JULIAPKG_EXE``
       (or ``-X juliapkg-exe``): when set, it must be an executable file;
    2. the executable juliapkg recorded in ``<project>/pyjuliapkg/meta.json`` (``<project>``:
       ``PYTHON_JULIAPKG_PROJECT``, else ``<venv or conda prefix>/julia_env``, else
       ``<depot>/environments/pyjuliapkg``), or the copy it installed under ``<project>/pyjuliapkg/install``;
    3. ``julia`` on the PATH, then ``juliaup`` on the PATH.
    """
    for env, xopt in (("PYTHON_JULIACALL_EXE", "juliacall-exe"), ("PYTHON_JULIAPKG_EXE", "juliapkg-exe")):
        value = _option(env, xopt)
        if value:
            if _is_executable(value):
                return value, env
            return None, f"{env}={value} is not an executable file"
    project = _juliapkg_project()
    meta = project / "pyjuliapkg" / "meta.json"
    try:
        exe = json.loads(meta.read_text()).get("executable") if meta.is_file() else None
    except (OSError, ValueError):
        exe = None
    if exe and _is_executable(exe):
        return str(exe), f"juliapkg ({meta})"
    installed = project / "pyjuliapkg" / "install" / "bin" / ("julia.exe" if os.name == "nt" else "julia")
    if _is_executable(installed):
        return str(installed), "installed by juliapkg"
    for name in ("julia", "juliaup"):
        found = shutil.which(name)
        if found:
            return found, f"{name} on the PATH"
    return None, ("no Julia executable found (PYTHON_JULIACALL_EXE / PYTHON_JULIAPKG_EXE unset, nothing "
                  f"installed by juliapkg under {project}, no julia or juliaup on the PATH); juliacall's "
                  "first start would download one")


def julia_source_path() -> Path | None:
    """``MeanODE.jl``: ``$MEANODE_JULIA_SOURCE``, else the one next to this module (package data,
    the only copy in the repository). None when not found."""
    env = os.environ.get("MEANODE_JULIA_SOURCE")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates.append(here.parent / "MeanODE.jl")
    for c in candidates:
        if c.is_file():
            return c
    return None


def julia_status() -> tuple[bool, str]:
    """``(usable, reason)`` for the Julia backend, decided without starting Julia.

    Usable when Julia was already started in this process; or when no start has failed here,
    ``juliacall`` is installed (``importlib.util.find_spec``; not imported), ``MeanODE.jl`` is
    found (:func:`julia_source_path`) and a Julia executable exists (:func:`find_julia_executable`).
    Whether the Julia packages are installed is only known at the start (juliacall installs them
    then, unless offline).
    """
    if _RUNTIME is not None:
        return True, "Julia is running in this process"
    if _START_ERROR is not None:
        return False, f"an earlier start in this process failed (not retried): {_START_ERROR}"
    if importlib.util.find_spec("juliacall") is None:
        return False, "the Python package juliacall is not installed (pip install 'meanode[julia]')"
    source = julia_source_path()
    if source is None:
        return False, "MeanODE.jl not found (set MEANODE_JULIA_SOURCE to the meanode sources' python/meanode/julia/MeanODE.jl)"
    exe, how = find_julia_executable()
    if exe is None:
        return False, how
    try:
        from importlib.metadata import version
        jc = f"juliacall {version('juliacall')}"
    except Exception:  # pragma: no cover - metadata missing
        jc = "juliacall"
    return True, f"{jc}, Julia {exe} ({how}), {source}"


def julia_available() -> bool:
    """True when :func:`julia_status` finds the Julia backend usable. Never starts Julia."""
    return julia_status()[0]


def resolve_auto_backend() -> tuple[str, str]:
    """``("julia", reason)`` when the Julia backend is usable, else ``("scipy", reason)``."""
    ok, reason = julia_status()
    return ("julia", reason) if ok else ("scipy", f"julia unavailable: {reason}")


def julia_solver_name(name: str) -> str:
    """The OrdinaryDiffEq method for a requested solver name (see :data:`JULIA_SOLVERS`)."""
    if name not in JULIA_SOLVERS:
        raise ValueError(f"unknown solver {name!r} for the julia backend; known names: {sorted(JULIA_SOLVERS)}")
    return JULIA_SOLVERS[name]


# --------------------------------------------------------------------------------------------
# the runtime
# --------------------------------------------------------------------------------------------

_LOCK = threading.Lock()  # held for every call into Julia, and for the start
_RUNTIME: Runtime | None = None
_START_ERROR: str | None = None


class _JuliaRuntime:
    """The real runtime: juliacall and the ``MeanODE`` module loaded into a private module."""

    def __init__(self, juliacall_module: Any, module: Any, source: Path):
        self._jc = juliacall_module
        self.module = module
        self.source = source

    def describe(self, exc: BaseException) -> tuple[str, str, str, float] | None:
        jl_error = getattr(self._jc, "JuliaError", None)
        if jl_error is None or not isinstance(exc, jl_error):
            return None
        # unpacking iterates: works whether juliacall hands the Julia tuple back as a tuple or a wrapper
        type_name, message, retcode, s = self.module.describe_error(exc.exception)
        return str(type_name), str(message), str(retcode), float(s)

    def version(self) -> str:
        return str(self._jc.Main.seval("string(VERSION)"))


def _unavailable(reason: str) -> JuliaUnavailableError:
    return JuliaUnavailableError(f"the Julia backend is unavailable: {reason}. {INSTALL_HINT}")


def _load_runtime() -> Runtime:
    """Start Julia and load MeanODE.jl (minutes on the very first use; seconds later)."""
    if importlib.util.find_spec("juliacall") is None:
        raise _unavailable("the Python package juliacall is not installed")
    source = julia_source_path()
    if source is None:
        raise _unavailable("MeanODE.jl was not found (set MEANODE_JULIA_SOURCE to python/meanode/julia/MeanODE.jl)")
    single_thread = _option("PYTHON_JULIACALL_THREADS", "juliacall-threads") is None
    if single_thread:
        os.environ["PYTHON_JULIACALL_THREADS"] = "1"
    if "juliacall" not in sys.modules and "torch" in sys.modules:
        import warnings
        warnings.warn("torch was imported before juliacall, which PythonCall warns may segfault; set "
                      "MEANODE_IMPORT_JULIACALL_FIRST=1 (then `import meanode` imports juliacall first) or import "
                      "juliacall before torch and meanode", stacklevel=3)
    try:
        import juliacall
    except Exception as e:
        raise _unavailable(f"starting Julia through juliacall failed: {type(e).__name__}: {e}") from e
    try:
        private = juliacall.newmodule("MeanODEBridge")
        private.include(str(source))
        module = private.MeanODE
        if single_thread:
            juliacall.Main.seval("import LinearAlgebra; LinearAlgebra.BLAS.set_num_threads(1)")
    except Exception as e:
        raise _unavailable(f"loading {source} failed (are the packages of meanode's juliapkg.json installed?): "
                           f"{type(e).__name__}: {e}") from e
    return _JuliaRuntime(juliacall, module, source)


def _runtime_locked() -> Runtime:
    """The runtime, started on first use; the caller holds ``_LOCK``."""
    global _RUNTIME, _START_ERROR
    if _RUNTIME is not None:
        return _RUNTIME
    if _START_ERROR is not None:
        raise JuliaUnavailableError(f"{_START_ERROR} [an earlier start in this process failed; not retried]")
    try:
        runtime = _load_runtime()
    except JuliaUnavailableError as e:
        _START_ERROR = str(e)
        raise
    except Exception as e:
        err = _unavailable(f"starting Julia failed: {type(e).__name__}: {e}")
        _START_ERROR = str(err)
        raise err from e
    _RUNTIME = runtime
    return runtime


def start() -> Runtime:
    """Start Julia (cached) and return the runtime; raises :class:`JuliaUnavailableError`."""
    with _LOCK:
        return _runtime_locked()


def _set_runtime_for_tests(runtime: Runtime | None) -> None:
    """Test seam: install ``runtime`` (a fake), or with None forget the runtime and any start failure."""
    global _RUNTIME, _START_ERROR
    with _LOCK:
        _RUNTIME = runtime
        _START_ERROR = None


# --------------------------------------------------------------------------------------------
# marshalling
# --------------------------------------------------------------------------------------------

def _as_float64(x) -> np.ndarray:
    """A float64 C-contiguous numpy array; the very object when ``x`` already is one (no copy)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _to_numpy(value) -> np.ndarray:
    """A Julia array (or numpy array) copied into a new float64 C-ordered numpy array."""
    if not isinstance(value, np.ndarray):
        to_numpy = getattr(value, "to_numpy", None)
        value = to_numpy() if callable(to_numpy) else np.asarray(value)
    return np.array(value, dtype=np.float64, order="C", copy=True)


def _wrap(runtime: Runtime, exc: BaseException, choice: SolverChoice) -> BaseException | None:
    info = runtime.describe(exc)
    if info is None:
        return None
    type_name, message, retcode, s = info
    if type_name == "MeanODE.SolverFailure":
        return JuliaSolverError(choice, retcode, message, s, type_name)
    return JuliaError(f"Julia raised {type_name}: {message}", type_name, message)


def solve_raw(kind: str, X, Y, W_E, W_U, X_eval=None, *, choice: SolverChoice, **kwargs) -> dict[str, Any]:
    """One ``MeanODE.solve_limit`` call (``kwargs``: alpha, eta, steps, activation, rtol, atol,
    depth_nodes, nodes, weights); ``choice.requested`` is mapped by :func:`julia_solver_name`.

    Returns numpy ``H``, ``B``, ``f`` and the counters, converted while holding the lock.
    Raises :class:`JuliaUnavailableError`, :class:`JuliaError`, :class:`JuliaSolverError`.
    """
    solver = julia_solver_name(choice.requested)
    args = [_as_float64(a) for a in (X, Y, W_E, W_U)]
    args.append(None if X_eval is None else _as_float64(X_eval))
    for key in ("nodes", "weights"):
        if kwargs.get(key) is not None:
            kwargs[key] = _as_float64(kwargs[key])
    with _LOCK:
        runtime = _runtime_locked()
        try:
            res = runtime.module.solve_limit(kind, *args, solver=solver, **kwargs)
            out: dict[str, Any] = {k: _to_numpy(res[k]) for k in ("H", "B", "f")}
            for k in ("nfev", "njev", "nlu", "nsteps", "nrejected", "nsolves"):
                out[k] = int(res[k])
            out["wall_time"] = float(res["wall_time"])
            out["method"] = str(res["method"])
        except Exception as exc:
            wrapped = _wrap(runtime, exc, SolverChoice(choice.requested, "julia", solver))
            if wrapped is None:
                raise
            raise wrapped from exc
    return out


def _as_run(res: dict, grid, K: int, n: int, N: int, D: int, choice: SolverChoice) -> Run:
    """A Julia result as the :class:`~meanode.limit.result.Run` every backend returns."""
    shapes = {"H": (K + 1, grid.Q, n, D), "B": (K, grid.Q, N, D)}
    for key, shape in shapes.items():
        if res[key].shape != shape:
            raise RuntimeError(f"the Julia backend returned {key} of shape {res[key].shape}, expected {shape}")
    H, B, f = (torch.from_numpy(res[k]) for k in ("H", "B", "f"))
    tail = 0.0
    for V in list(H) + list(B):
        tail = max(tail, grid.relative_tail(V))
    stats = ODEStats(nfev=res["nfev"], njev=res["njev"], nlu=res["nlu"], nsteps=res["nsteps"],
                     nrejected=res["nrejected"], nsolves=res["nsolves"], wall_time=res["wall_time"])
    return Run(H=H, B=B, f=f, stats=stats, depth_tail=tail, choice=replace(choice, method=res["method"]))


# --------------------------------------------------------------------------------------------
# the backend (meanode.limit.backends.Backend)
# --------------------------------------------------------------------------------------------

class JuliaBackend:
    """Runs a whole limit in Julia (``MeanODE.solve_limit``): the 2LP block on the CPU.
    Implements :class:`meanode.limit.backends.Backend`."""

    name = "julia"

    def choice(self, solver: str) -> SolverChoice:
        """The OrdinaryDiffEq method for a requested name (warns once when it is another method)."""
        choice = SolverChoice(solver, "julia", julia_method_label(julia_solver_name(solver)))
        warn_if_remapped(choice)
        return choice

    def run(self, spec, kind: str, rule=None) -> Run:
        """One run of ``kind`` in {closure, quadrature, lazy}; ``rule`` the (already folded) node set."""
        K, grid = spec.K, spec.grid
        N, D = spec.X.shape[0], spec.W_E.shape[0]
        n = N + (0 if spec.X_eval is None else spec.X_eval.shape[0])
        kw = dict(alpha=float(spec.alpha), eta=float(spec.eta), steps=int(K), activation=spec.block.act.name,
                  rtol=float(spec.rtol), atol=float(spec.atol), depth_nodes=int(grid.Q))
        if rule is not None:
            kw.update(nodes=rule.nodes, weights=rule.weights)
        arrays = [a.numpy() for a in (spec.X, spec.Y, spec.W_E, spec.W_U)]
        X_eval = None if spec.X_eval is None else spec.X_eval.numpy()
        res = solve_raw(kind, *arrays, X_eval, choice=spec.choice, **kw)
        return _as_run(res, grid, K, n, N, D, spec.choice)
