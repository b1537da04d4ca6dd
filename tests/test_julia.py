"""The Julia backend: what runs everywhere (bridge against a fake Julia, availability, packaging,
conformance vectors kept fresh, Julia sources parse) and what needs Julia (skipped with the reason
where it is absent)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import meanode as mn
from meanode import doctor
from meanode.blocks import TwoLayerBlock
from meanode.julia import bridge, vectors
from meanode.julia import (JuliaError, JuliaSolverError, JuliaUnavailableError, julia_available,
                           julia_method_label, julia_solver_name, julia_status)
from meanode.limit import lazy_limit, mean_ode_limit
from meanode.solvers import SolverChoice, SolverError

REPO = Path(__file__).resolve().parents[1]
JULIA_DIR = REPO / "julia"
MEANODE_JL = REPO / "python" / "meanode" / "julia" / "MeanODE.jl"
VECTORS_PATH = JULIA_DIR / "test" / "vectors.json"
JULIACALL_INSTALLED = importlib.util.find_spec("juliacall") is not None


# --------------------------------------------------------------------------------------------
# a fake Julia: MeanODE.solve_limit answered by the Python engine
# --------------------------------------------------------------------------------------------

class FakeJuliaException(Exception):
    """Stands for a Julia exception crossing juliacall."""

    def __init__(self, type_name: str, message: str, retcode: str = "", s: float = float("nan")):
        super().__init__(message)
        self.type_name, self.message, self.retcode, self.s = type_name, message, retcode, s


class FakeMeanODE:
    """The ``MeanODE`` module: records calls, counts concurrent entries, can raise."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.raise_exc: BaseException | None = None
        self.delay = 0.0
        self.active = 0
        self.max_active = 0

    def solve_limit(self, kind, X, Y, W_E, W_U, X_eval=None, **kw):
        self.calls.append((kind, (X, Y, W_E, W_U, X_eval), dict(kw)))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            if self.raise_exc is not None:
                raise self.raise_exc
            res = vectors.python_solve_limit(kind, X, Y, W_E, W_U, X_eval, **kw)
            res["method"] = julia_method_label(kw["solver"])  # what the real module reports: the method that ran
            return res
        finally:
            self.active -= 1


class FakeRuntime:
    def __init__(self, module: FakeMeanODE):
        self.module = module

    def describe(self, exc):
        if isinstance(exc, FakeJuliaException):
            return exc.type_name, exc.message, exc.retcode, exc.s
        return None

    def version(self) -> str:
        return "fake"


@pytest.fixture
def fake():
    module = FakeMeanODE()
    bridge._set_runtime_for_tests(FakeRuntime(module))
    yield module
    bridge._set_runtime_for_tests(None)


@pytest.fixture
def fresh_bridge():
    bridge._set_runtime_for_tests(None)
    yield
    bridge._set_runtime_for_tests(None)


@pytest.fixture(scope="module")
def prob():
    return mn.Problem.default(D=2, N=3, d_in=3, d_out=2, N_eval=1)


KW = dict(alpha=1.0, eta=0.5, steps=2, depth_nodes=17)


def _same_result(a, b, tol=1e-13):
    for key in ("f", "h", "f_eval", "h_eval", "loss", "H", "B"):
        assert np.abs(getattr(a, key) - getattr(b, key)).max() <= tol, key
    assert a.method == b.method
    assert a.error_parts.keys() == b.error_parts.keys()
    for key in a.error_parts:
        assert a.error_parts[key] == pytest.approx(b.error_parts[key], rel=1e-9, abs=1e-15), key
    assert a.stats.nsolves == b.stats.nsolves and a.stats.nfev == b.stats.nfev


# --------------------------------------------------------------------------------------------
# runs everywhere
# --------------------------------------------------------------------------------------------

def test_import_meanode_does_not_load_juliacall():
    code = ("import sys, meanode, meanode.limit, meanode.julia, meanode.julia.bridge, meanode.doctor; "
            "meanode.julia.julia_available(); print('juliacall' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_julia_available_is_cheap_and_false_without_juliacall(fresh_bridge):
    t0 = time.perf_counter()
    ok = julia_available()
    assert time.perf_counter() - t0 < 0.5
    ok2, reason = julia_status()
    assert ok == ok2 and reason
    if not JULIACALL_INSTALLED:
        assert ok is False and "juliacall is not installed" in reason
    assert "juliacall" not in sys.modules or JULIACALL_INSTALLED


def test_unavailable_path_raises_with_the_fix(fresh_bridge, prob):
    if JULIACALL_INSTALLED:
        pytest.skip("juliacall is installed here: starting it could download Julia; covered where it is absent")
    with pytest.raises(JuliaUnavailableError) as err:
        mean_ode_limit(**prob.arrays(), activation="identity", backend="julia", **KW)
    msg = str(err.value)
    for needle in ("juliacall is not installed", "pip install 'meanode[julia]'", "PYTHON_JULIACALL_EXE",
                   "PYTHON_JULIAPKG_OFFLINE", "backend='scipy'"):
        assert needle in msg
    with pytest.raises(JuliaUnavailableError):
        lazy_limit(prob.X, prob.Y, prob.W_E, prob.W_U, eta=0.5, steps=1, solver="julia:Vern9")
    assert "juliacall" not in sys.modules


def test_failed_start_is_not_retried(fresh_bridge, monkeypatch, prob):
    attempts = []

    def loader():
        attempts.append(1)
        raise RuntimeError("juliacall exploded")

    monkeypatch.setattr(bridge, "_load_runtime", loader)
    for _ in range(3):
        with pytest.raises(JuliaUnavailableError, match="juliacall exploded"):
            mean_ode_limit(**prob.arrays(), activation="identity", backend="julia", **KW)
    assert len(attempts) == 1
    ok, reason = julia_status()
    assert not ok and "earlier start" in reason and not julia_available()
    with pytest.raises(JuliaUnavailableError, match="not retried"):
        bridge.start()
    assert len(attempts) == 1


def test_bad_requests_fail_before_julia_starts(fresh_bridge, monkeypatch, prob):
    attempts = []
    monkeypatch.setattr(bridge, "_load_runtime", lambda: attempts.append(1))

    class MyBlock(TwoLayerBlock):
        pass

    common = dict(X=prob.X, Y=prob.Y, W_E=prob.W_E, W_U=prob.W_U, alpha=1.0, eta=0.5, steps=1, method="auto",
                  rtol=1e-8, atol=1e-10, backend="julia")
    with pytest.raises(ValueError, match="2LP block only"):
        mean_ode_limit(block=MyBlock(2), solver="Vern9", **common)
    with pytest.raises(ValueError, match="unknown solver"):
        mean_ode_limit(solver="Euler", **common)
    with pytest.raises(TypeError, match="unknown option"):
        mean_ode_limit(solver="Vern9", bogus=1, **common)
    assert attempts == []
    assert julia_solver_name("DOP853") == "Vern9" and julia_solver_name("auto") == "auto"
    assert julia_solver_name("Radau") == "Rodas5P" and julia_solver_name("KenCarp4") == "KenCarp4"


def test_fake_julia_round_trip_matches_python_engine(fake, prob):
    """The bridge's marshalling into a LimitResult: a fake MeanODE answering with the Python engine
    must give the Python path's result, with the solver reported as the Julia method."""
    cases = [
        dict(activation="identity"),
        dict(activation="tanh", rule="gauss_hermite", level=3, coarse=2),
        dict(activation="erf", rule="rqmc", level=4, replicates=2),
    ]
    for opts in cases:
        ref = mean_ode_limit(**prob.arrays(), solver="DOP853", **KW, **opts)
        got = mean_ode_limit(**prob.arrays(), solver="DOP853", backend="julia", **KW, **opts)
        _same_result(got, ref)
        assert got.solver == SolverChoice("DOP853", "julia", "Vern9")
        assert got.config["backend"] == "julia" and got.config.get("nodes") == ref.config.get("nodes")
        assert np.abs(got.h_at(0.3, k=1) - ref.h_at(0.3, k=1)).max() < 1e-13
    ref = lazy_limit(**prob.arrays(), eta=0.5, steps=2, activation="erf", depth_nodes=17)
    got = lazy_limit(**prob.arrays(), eta=0.5, steps=2, activation="erf", depth_nodes=17, solver="julia:auto")
    _same_result(got, ref)
    assert got.solver == SolverChoice("auto", "julia", "AutoVern9(Rodas5P())") and got.method == "lazy"
    assert [c[0] for c in fake.calls] == ["closure"] + ["quadrature"] * 4 + ["lazy"]


def test_arrays_are_passed_without_copies(fake, prob):
    X, Y, W_E, W_U = (np.ascontiguousarray(a, dtype=np.float64) for a in (prob.X, prob.Y, prob.W_E, prob.W_U))
    X_eval = np.ascontiguousarray(prob.X_eval)
    mean_ode_limit(X=X, Y=Y, W_E=W_E, W_U=W_U, X_eval=X_eval, alpha=1.0, eta=0.5, steps=1, activation="identity",
                   method="closure", solver="Vern9", backend="julia", rtol=1e-8, atol=1e-10, depth_nodes=9)
    kind, args, kw = fake.calls[-1]
    assert kind == "closure"
    assert all(np.shares_memory(a, b) for a, b in zip(args, (X, Y, W_E, W_U, X_eval)))
    assert kw == dict(alpha=1.0, eta=0.5, steps=1, activation="identity", solver="Vern9", rtol=1e-8,
                      atol=1e-10, depth_nodes=9)
    # torch tensors, Fortran-ordered inputs arrive as float64 C-contiguous numpy arrays
    lazy_limit(X=torch.from_numpy(X), Y=np.asfortranarray(Y), W_E=W_E, W_U=W_U, eta=0.5, steps=1,
               activation="identity", solver="julia:Tsit5", rtol=1e-8, atol=1e-10, depth_nodes=9)
    kind, args, kw = fake.calls[-1]
    assert kind == "lazy" and args[4] is None and kw["solver"] == "Tsit5"
    for a in args[:4]:
        assert isinstance(a, np.ndarray) and a.dtype == np.float64 and a.flags.c_contiguous


def test_julia_exceptions_are_wrapped(fake, prob):
    run = lambda: mean_ode_limit(**prob.arrays(), activation="identity", backend="julia", **KW)  # noqa: E731
    fake.raise_exc = FakeJuliaException("DimensionMismatch", "W_U has 3 rows but W_E has D = 2")
    with pytest.raises(JuliaError) as err:
        run()
    assert err.value.julia_type == "DimensionMismatch" and "W_U has 3 rows" in str(err.value)
    assert "DimensionMismatch" in str(err.value) and not isinstance(err.value, SolverError)

    fake.raise_exc = FakeJuliaException("MeanODE.SolverFailure",
                                        "MeanODE.SolverFailure: Vern9 failed in the adjoint solve of step 1 "
                                        "at s = 0.25 with return code MaxIters", "MaxIters", 0.25)
    with pytest.raises(SolverError) as err:
        run()
    e = err.value
    assert isinstance(e, JuliaSolverError) and isinstance(e, JuliaError)
    assert e.status == "MaxIters" and e.t == 0.25 and e.julia_type == "MeanODE.SolverFailure"
    assert e.choice.backend == "julia" and "MaxIters" in str(e)

    fake.raise_exc = KeyError("not from Julia")  # anything else passes through untouched
    with pytest.raises(KeyError):
        run()


def test_calls_into_julia_are_serialised(fake, prob):
    fake.delay = 0.05
    barrier = threading.Barrier(4)
    errors = []

    def worker():
        try:
            barrier.wait()
            bridge.solve_raw("closure", prob.X, prob.Y, prob.W_E, prob.W_U, choice=bridge.JuliaBackend().choice("Vern9"),
                             alpha=1.0, eta=0.5, steps=0, activation="identity", rtol=1e-8, atol=1e-10,
                             depth_nodes=5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(fake.calls) == 4 and fake.max_active == 1
    assert isinstance(bridge._LOCK, type(threading.Lock()))


def test_resolve_auto_backend_reports_the_reason(fresh_bridge):
    backend, reason = bridge.resolve_auto_backend()
    assert backend in ("julia", "scipy") and reason
    if not JULIACALL_INSTALLED:
        assert backend == "scipy" and "juliacall" in reason


def test_doctor_reports_backends(capsys, fresh_bridge):
    parser = argparse.ArgumentParser(prog="meanode")
    doctor.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["doctor"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "scipy" in out and "torch" in out and "CUDA available" in out and "julia" in out
    julia_line = next(line for line in out.splitlines() if line.strip().startswith("julia"))
    ok, reason = julia_status()
    assert ("NOT usable" in julia_line) == (not ok) and reason.split(" (")[0] in julia_line


# --- conformance vectors -----------------------------------------------------------------------

def test_committed_vectors_match_the_current_python_engine():
    """julia/test/vectors.json must be what ``python -m meanode.julia.vectors`` writes today
    (outputs to 1% of the cross-engine tolerance), so it cannot go stale."""
    committed = vectors.load(VECTORS_PATH)
    fresh = vectors.generate()
    assert [c["name"] for c in committed["cases"]] == [c["name"] for c in fresh["cases"]]
    for old, new in zip(committed["cases"], fresh["cases"]):
        for key in ("kind", "activation", "alpha", "eta", "steps", "depth_nodes", "solver", "rtol", "atol"):
            assert old[key] == new[key], (old["name"], key)
        for key, arr in new["inputs"].items():
            a, b = vectors.decode_array(old["inputs"][key]), vectors.decode_array(arr)
            assert (a is None) == (b is None), key
            if a is not None:
                assert a.shape == b.shape and np.allclose(a, b, rtol=1e-13, atol=1e-14), (old["name"], key)
        for key in ("H", "B", "f"):
            tol = old["tolerance"][key]
            assert tol == pytest.approx(new["tolerance"][key], rel=1e-6)
            diff = np.abs(vectors.decode_array(old["expected"][key]) - vectors.decode_array(new["expected"][key]))
            assert diff.max() <= tol / 100, (
                f"{old['name']} {key}: the committed vectors differ from the Python engine by {diff.max():.2e} "
                f"(allowed {tol / 100:.2e}); regenerate: python -m meanode.julia.vectors julia/test/vectors.json")


def _check_vectors_through_bridge(tol_factor: float) -> None:
    """solve_raw on every conformance case; each array within ``tol_factor`` x its tolerance."""
    data = vectors.load(VECTORS_PATH)
    for case in data["cases"]:
        args, kwargs = vectors.case_arguments(case)
        solver = kwargs.pop("solver")
        res = bridge.solve_raw(*args, choice=SolverChoice(solver, "julia", solver), **kwargs)
        for key, (diff, tol) in vectors.compare(case, res).items():
            assert diff <= tol * tol_factor, (case["name"], key, diff, tol)


def test_vector_harness_with_fake_julia(fake):
    """The path the real Julia check takes (solve_raw on each case, vectors.compare), on the fake:
    the fake answers with the Python engine, so it must agree to 1% of the tolerance."""
    _check_vectors_through_bridge(1 / 100)


def test_julia_backend_reproduces_the_vectors():
    """Needs Julia: the real MeanODE.jl through juliacall on every conformance case."""
    ok, reason = julia_status()
    if not ok:
        pytest.skip(f"Julia backend unavailable: {reason}")
    _check_vectors_through_bridge(1.0)


# --- Julia sources and packaging -----------------------------------------------------------------

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading Project.toml needs tomllib (3.11+) or tomli")
    return tomllib.loads(path.read_text())


def test_juliapkg_json_and_project_toml_declare_the_same_packages():
    project = _toml(REPO / "Project.toml")
    pkg = json.loads((REPO / "python" / "meanode" / "juliapkg.json").read_text())
    deps, compat = project["deps"], project["compat"]
    assert project["name"] == "MeanODE" and UUID.match(project["uuid"])
    assert set(deps) == set(pkg["packages"])
    assert pkg["julia"] == compat["julia"]
    for name, uuid in deps.items():
        assert UUID.match(uuid), name
        assert pkg["packages"][name]["uuid"] == uuid, name
        assert pkg["packages"][name]["version"] == compat[name], name
    assert len(set(deps.values())) == len(deps)
    # every package the engine loads is declared; the tests' own packages only in the test environment
    used = set(re.findall(r"^\s*(?:import|using)\s+([A-Za-z][A-Za-z0-9_]*)", MEANODE_JL.read_text(), re.M))
    assert used <= set(deps), used - set(deps)
    test_project = _toml(JULIA_DIR / "test" / "Project.toml")
    assert {k: v for k, v in test_project["deps"].items() if k in deps} == deps
    for path in sorted(JULIA_DIR.rglob("*.jl")):
        used = set(re.findall(r"^\s*(?:import|using)\s+([A-Za-z][A-Za-z0-9_]*)", path.read_text(), re.M))
        assert used <= set(test_project["deps"]), (path.name, used - set(test_project["deps"]))
    assert "JSON3" not in deps and "JSON3" in test_project["deps"]  # not installed into every user's environment
    assert project.get("extras", {}).get("Test") == "8dfed614-e22c-5e08-85e1-65c5234f0b40"


def _julia_parser():
    ts = pytest.importorskip("tree_sitter", reason="pip install 'meanode[test]' (tree-sitter)")
    tsj = pytest.importorskip("tree_sitter_julia", reason="pip install 'meanode[test]' (tree-sitter-julia)")
    return ts.Parser(ts.Language(tsj.language()))


def test_julia_sources_parse():
    parser = _julia_parser()
    files = sorted(JULIA_DIR.rglob("*.jl")) + [MEANODE_JL]
    assert JULIA_DIR / "test" / "runtests.jl" in files
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "*.jl"], capture_output=True, text=True).stdout.split()
    if tracked:  # in a checkout: one MeanODE.jl, no copy or link beside it
        assert [t for t in tracked if t.endswith("MeanODE.jl")] == ["python/meanode/julia/MeanODE.jl"]
    for path in files:
        tree = parser.parse(path.read_bytes())
        bad, stack = [], [tree.root_node]
        while stack:
            node = stack.pop()
            if node.type == "ERROR" or node.is_missing:
                bad.append(f"{node.type} at line {node.start_point[0] + 1}: {node.text[:60]!r}")
            stack.extend(node.children)
        assert not bad, f"{path.name}: {bad[:5]}"


def test_julia_module_defines_what_the_bridge_calls():
    parser = _julia_parser()
    src = MEANODE_JL.read_bytes()
    root = parser.parse(src).root_node
    modules = [c for c in root.children if c.type == "module_definition"]
    assert len(modules) == 1 and modules[0].child_by_field_name("name").text == b"MeanODE"
    text = src.decode()
    for name in ("solve_limit", "describe_error", "algorithm", "SolverFailure"):
        assert re.search(rf"^(function|struct)\s+{name}\b", text, re.M), name
    assert "SciMLBase.successful_retcode" in text
    for solver in ("Vern7", "Vern8", "Vern9", "Tsit5", "Rodas5P", "KenCarp4", "AutoVern9(Rodas5P())"):
        assert solver in text
    used = set(bridge.JULIA_SOLVERS.values())
    declared = set(re.search(r"const SOLVERS = \(([^)]*)\)", text).group(1).replace('"', "").replace(" ", "").split(","))
    assert used <= declared
