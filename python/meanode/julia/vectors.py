"""Conformance test vectors: small limit problems with the Python engine's answers.

``python -m meanode.julia.vectors OUT.json`` writes them; the committed copy is
``julia/test/vectors.json``, checked three ways:

* ``julia/test/runtests.jl`` runs ``MeanODE.solve_limit`` on every case and compares;
* ``tests/test_julia.py`` runs the Julia backend through the Python bridge on the same cases
  (both skipped, with the reason, where Julia is absent);
* ``tests/test_julia.py`` regenerates the cases with the current Python engine and checks the
  committed file still matches, so it cannot go stale.

A case is one call of the Julia entry point ``MeanODE.solve_limit(kind, X, Y, W_E, W_U, X_eval;
alpha, eta, steps, activation, solver, rtol, atol, depth_nodes, nodes, weights)``.
:func:`python_solve_limit` is the same call answered by the Python engine
(:func:`meanode.limit.engine.run_limit` with the dynamics of ``limit/closure.py``,
``limit/nodes.py`` or ``limit/lazy.py``); it also serves as the fake Julia module of the tests.

File format (JSON): ``{"format", "generator", "tolerance_rule", "cases": [...]}``; each case has
``name``, ``kind``, ``activation``, ``alpha``, ``eta``, ``steps``, ``depth_nodes``, ``solver``
(the Julia solver), ``python_solver``, ``rtol``, ``atol``, ``inputs`` (``X``, ``Y``, ``W_E``,
``W_U``, ``X_eval``, ``nodes``, ``weights``; arrays or null), ``expected`` (``H`` (K+1, Q, n, D),
``B`` (K, Q, N, D), ``f`` (K+1, n, d_out)) and ``tolerance`` (per expected array). An array is
``{"shape": [...], "data": [...]}`` with ``data`` in row-major (C) order; floats are written with
``repr`` precision, so they round-trip exactly.

Tolerance rule: each engine's own solver allowance is ``10 (rtol max|A| + atol)`` for an array A
(``error_parts["solver"]`` of :mod:`meanode.limit.api`); two engines may each use all of theirs,
so ``tolerance[A] = 20 (rtol max|A| + atol)``. Both engines interpolate in depth on the same
Chebyshev nodes, so that error is common to both and cancels; the lazy kernels of tanh and gelu
use different quadrature rules (Python: a sinh-mapped outer rule with a Fourier or closed-form
inner rule; Julia: a uniform trapezoid), each converged to ~1e-15, far below the tolerance.
Measured: DOP853, RK45, Radau and LSODA at rtol 1e-10 differ from a 1e-13 reference by at most
1.6e-10 on these problems, against tolerances of about 7e-9.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CASES", "FORMAT", "python_solve_limit", "generate", "write", "load", "default_path",
           "encode_array", "decode_array", "case_arguments", "tolerance", "compare"]

FORMAT = "meanode-julia-vectors/1"
TOLERANCE_RULE = "20 * (rtol * max|expected| + atol): twice one engine's solver allowance"

#: The cases: identity closure, lazy tanh, tanh on a fixed small (folded) Gauss–Hermite node set.
#: N = 3 training inputs plus 1 held-out input, d_in = 3, d_out = 2, D = 2, K = 2, Q = 17.
CASES: tuple[dict, ...] = (
    dict(name="closure_identity", kind="closure", activation="identity", alpha=1.0, eta=0.5),
    dict(name="lazy_tanh", kind="lazy", activation="tanh", alpha=1.0, eta=0.5),
    dict(name="quadrature_tanh_gh3", kind="quadrature", activation="tanh", alpha=1.0, eta=0.5,
         rule=dict(name="gauss_hermite", level=3, fold=True)),
)
_COMMON = dict(steps=2, depth_nodes=17, solver="Vern9", python_solver="DOP853", rtol=1e-10, atol=1e-12)
_PROBLEM = dict(D=2, N=3, d_in=3, d_out=2, N_eval=1, data_seed=0, embed_seed=0)


def default_path() -> Path:
    """``julia/test/vectors.json`` of the source tree this package was imported from."""
    return Path(__file__).resolve().parents[3] / "julia" / "test" / "vectors.json"


# --------------------------------------------------------------------------------------------
# the Python engine answering a MeanODE.solve_limit call
# --------------------------------------------------------------------------------------------

def _tensor(x, name: str) -> torch.Tensor:
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return torch.from_numpy(np.array(arr, dtype=np.float64, order="C"))


def python_solve_limit(kind: str, X, Y, W_E, W_U, X_eval=None, *, alpha: float = 1.0, eta: float,
                       steps: int, activation: str = "tanh", solver: str = "auto", rtol: float = 1e-10,
                       atol: float = 1e-12, depth_nodes: int = 33, nodes=None, weights=None,
                       python_solver: str = "DOP853", maxiters: int | None = None) -> dict[str, Any]:
    """``MeanODE.solve_limit`` answered by the Python engine (SciPy ``python_solver``).

    Same arguments and result keys as the Julia function: ``H (K+1, Q, n, D)``, ``B (K, Q, N, D)``,
    ``f (K+1, n, d_out)`` (numpy), ``method``, ``kind`` and the work counters. ``solver`` (a Julia
    name) and ``maxiters`` are accepted and ignored.
    """
    from ..blocks import TwoLayerBlock
    from ..limit import quadrature as q
    from ..limit.backends import EngineBackend, RunSpec
    from ..limit.depth import DepthGrid
    from ..solvers import resolve_solver

    Xt, Yt, WE, WU = (_tensor(a, n) for a, n in ((X, "X"), (Y, "Y"), (W_E, "W_E"), (W_U, "W_U")))
    Xe = None if X_eval is None else _tensor(X_eval, "X_eval")
    choice = resolve_solver(python_solver, "scipy")
    if kind == "closure" and activation != "identity":
        raise ValueError("kind 'closure' is exact only for activation 'identity'")
    if kind not in ("closure", "quadrature", "lazy"):
        raise ValueError(f"unknown kind {kind!r}")
    rule = None
    if kind == "quadrature":
        if nodes is None or weights is None:
            raise ValueError("kind 'quadrature' needs nodes and weights")
        rule = q.Rule(np.asarray(nodes, dtype=np.float64), np.asarray(weights, dtype=np.float64), "given")
    spec = RunSpec(Xt, Yt, WE, WU, Xe, TwoLayerBlock(WE.shape[0], activation), float(alpha), float(eta),
                   int(steps), choice, float(rtol), float(atol), DepthGrid(int(depth_nodes)))
    run = EngineBackend().run(spec, kind, rule)
    out: dict[str, Any] = {k: getattr(run, k).cpu().numpy() for k in ("H", "B", "f")}
    out.update(run.stats.as_dict())
    out.update(method=f"python:{choice.method}", kind=kind)
    return out


# --------------------------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------------------------

def encode_array(a) -> dict | None:
    """``{"shape": [...], "data": [...]}`` (row-major), or None."""
    if a is None:
        return None
    arr = np.asarray(a, dtype=np.float64)
    return {"shape": list(arr.shape), "data": [float(v) for v in arr.ravel(order="C")]}


def decode_array(obj) -> np.ndarray | None:
    """Inverse of :func:`encode_array`."""
    if obj is None:
        return None
    return np.asarray(obj["data"], dtype=np.float64).reshape(obj["shape"], order="C")


def _inputs(spec: dict) -> dict:
    from ..data import Problem
    from ..limit import quadrature as q

    prob = Problem.default(**_PROBLEM)
    nodes = weights = None
    rule = spec.get("rule")
    if rule is not None:
        D = prob.W_E.shape[0]
        r = q.gauss_hermite(rule["level"], 2 * D, float(D))
        if rule.get("fold"):
            r = r.fold_odd_symmetry()
        nodes, weights = r.nodes, r.weights
    return dict(X=prob.X, Y=prob.Y, W_E=prob.W_E, W_U=prob.W_U, X_eval=prob.X_eval, nodes=nodes, weights=weights)


def tolerance(expected: np.ndarray, rtol: float, atol: float) -> float:
    """The agreement allowed between two engines on one array (module docstring)."""
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return 20.0 * (rtol * scale + atol)


def case_arguments(case: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of the ``solve_limit`` call a decoded case describes."""
    inp = case["inputs"]
    args = (case["kind"], decode_array(inp["X"]), decode_array(inp["Y"]), decode_array(inp["W_E"]),
            decode_array(inp["W_U"]), decode_array(inp["X_eval"]))
    kwargs = dict(alpha=float(case["alpha"]), eta=float(case["eta"]), steps=int(case["steps"]),
                  activation=case["activation"], solver=case["solver"], rtol=float(case["rtol"]),
                  atol=float(case["atol"]), depth_nodes=int(case["depth_nodes"]),
                  nodes=decode_array(inp["nodes"]), weights=decode_array(inp["weights"]))
    return args, kwargs


def generate(cases=CASES) -> dict:
    """Build every case and answer it with the Python engine; returns the JSON-able dict."""
    out_cases = []
    for spec in cases:
        params = {**_COMMON, **{k: v for k, v in spec.items() if k != "rule"}}
        inputs = _inputs(spec)
        case = dict(params, inputs={k: encode_array(v) for k, v in inputs.items()})
        if "rule" in spec:
            case["rule"] = dict(spec["rule"])
        args, kwargs = case_arguments(case)
        res = python_solve_limit(*args, **kwargs, python_solver=params["python_solver"])
        case["expected"] = {k: encode_array(res[k]) for k in ("H", "B", "f")}
        case["tolerance"] = {k: tolerance(res[k], params["rtol"], params["atol"]) for k in ("H", "B", "f")}
        out_cases.append(case)
    return dict(format=FORMAT, generator="python -m meanode.julia.vectors julia/test/vectors.json",
                tolerance_rule=TOLERANCE_RULE, cases=out_cases)


def write(path: str | Path, cases=CASES) -> dict:
    """Generate and write the vectors to ``path`` (one line per case key, stable order)."""
    data = generate(cases)
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return data


def load(path: str | Path | None = None) -> dict:
    """Read a vectors file (default: :func:`default_path`); checks the format tag."""
    data = json.loads(Path(default_path() if path is None else path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file: format = {data.get('format')!r}")
    return data


def compare(case: dict, result: dict) -> dict[str, tuple[float, float]]:
    """``{array: (max abs difference, tolerance)}`` of a result against a case's expectations."""
    out = {}
    for key in ("H", "B", "f"):
        exp = decode_array(case["expected"][key])
        got = np.asarray(result[key], dtype=np.float64)
        if got.shape != exp.shape:
            out[key] = (math.inf, float(case["tolerance"][key]))
            continue
        diff = float(np.max(np.abs(got - exp))) if exp.size else 0.0
        out[key] = (diff, float(case["tolerance"][key]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meanode.julia.vectors", description=__doc__.splitlines()[0])
    p.add_argument("out", help="where to write the JSON (the committed copy is julia/test/vectors.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = write(args.out)
    for case in data["cases"]:
        shapes = {k: tuple(v["shape"]) for k, v in case["expected"].items()}
        print(f"{case['name']}: {shapes}, tolerance f {case['tolerance']['f']:.2e}")
    print(f"wrote {len(data['cases'])} cases to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
