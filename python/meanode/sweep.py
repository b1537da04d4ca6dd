"""Parameter sweeps: a frozen spec (YAML or Python), a pure point computation, pluggable executors,
one labelled file per point, and the merged dataset.

Spec
----
A :class:`SweepSpec` names the swept parameters and the fixed settings. Sweepable:
``L, M, D, alpha, eta, a, b, activation, seed`` and ``gamma`` (the residual-scale exponent in D,
see below). ``grid`` is a Cartesian product; ``zip`` rows vary together (e.g. the splits
``(L, M)`` of a fixed ``L M``); the points are ``product(grid) x zip rows``. Example file::

    name: width
    description: output error vs L for several M
    fixed: {D: 2, K: 3, alpha: 1.0, eta: 0.2, activation: tanh, N: 10, N_eval: 10}
    grid: {L: [4, 16, 64], M: [1, 4, 16]}
    zip: {L: [8, 64], M: [8, 64]}          # or a list of rows: [{L: 8, M: 8}, ...]
    seeds: 16                               # seeds 0..15 (or a list), batched on the ensemble axis
    reference: {method: quadrature}             # auto | quadrature | closure | lazy | network | none
    measure: {store_h: auto, linearisation: false, preactivation: false}

Fixed settings (defaults in :data:`DEFAULTS`): ``K`` (GD steps), ``N``, ``N_eval`` (held-out
inputs), ``d_in``, ``d_out``, ``data_seed``, ``embed_seed``, ``D_max`` (coupled embeddings are
drawn at ``D_max``, default the largest D of the sweep, SPEC §1), ``divergence_threshold``,
``device`` (``cpu``, ``cuda`` or ``auto``), ``dtype`` (``float64``). A bad file raises
:class:`SweepSpecError` naming the field (``grid.L: ...``).

``gamma`` (residual-scale exponent in D). SPEC §1's residual branch is ``(alpha/(L M)) sum_j v
sigma(u.h/D)`` with ``v ~ N(0, D I)``: per coordinate the residual scale is ``alpha sqrt(D)/(L M)``,
i.e. ``D^(1/2)/(L M)`` at ``alpha = 1``. A residual scale ``D^gamma/(L M)`` is obtained through the
multiplier: the point runs with ``alpha_eff = alpha D^(gamma - 1/2)`` (so ``gamma = 1/2`` is SPEC
§1). SPEC's rate ``eta L M D / alpha_eff^2`` keeps the per-step output change Theta(1) for every
gamma, so what gamma changes is how far the units must move: relative unit movement
``~ D^-gamma``, pre-activation movement ``~ D^(1/2 - gamma)`` (only gamma = 1/2 moves
pre-activations Theta(1) as D grows: complete feature learning), feature movement ``~ D^0``.

References (one per data, embedding, alpha, eta, K, activation, D, cached on disk): ``quadrature``
/ ``closure`` / ``auto`` call :func:`meanode.limit.mean_ode_limit`; ``lazy`` calls
:func:`meanode.limit.lazy_limit` (alpha-independent); ``network`` is the seed mean of a large
finite network ``(L, M, D)`` of the reference spec with its own seeds (SPEC §6: "the largest
network as reference"; hidden states are compared on the first D coordinates, the embeddings
being coupled), with error estimate its seed standard error; ``none`` measures only the
reference-free observables. The reference's ``error_estimate`` is stored with every point.

Point files (format ``meanode-sweep-point/1``; netCDF3 via scipy, see :data:`POINT_ENGINE`)
-------------------------------------------------------------------------------
``OUT/points/<label>__<key>.nc``; ``key`` hashes everything that determines the numbers
(settings, seeds, reference and measure specs, format version). A file is written to a
temporary name and moved into place with :func:`os.replace`, so a file that exists is complete.
Dimensions: one length-1 dimension per swept parameter (``seed`` excepted), ``seed``, ``step``
(0..K, before the k-th update), ``sample`` (N), ``sample_eval`` (N_eval), ``out`` (d_out),
``coord`` (D, only when hidden states are stored). Variables (``*_eval``: held-out inputs):

==================  =========================  ==================================================
name                dims                       meaning
==================  =========================  ==================================================
loss                seed, step                 training loss R
f, f_eval           seed, step, sample, out    outputs
h, h_eval           seed, step, sample, coord  h^L (``measure.store_h``; ``auto``: D <= 64)
diverged            seed                       int8, 1 if the run diverged (never dropped)
diverged_step       seed                       int32, step where detected, -1 never
init_dev            seed                       RMS of h^L - h^0 at k = 0 (exact: the limit is h^0)
out_change          seed                       RMS of f_K - f_0
feature_change      seed                       RMS(h^L_K - h^L_0) / RMS(h^0)
unit_movement       seed                       |z_K - z_0| / |z_0|
lin_dist            seed                       distance to own linearisation (``measure``)
preact_move         seed                       pre-activation movement (``measure``)
fluct_{f,h}[_eval]  step                       seed standard deviation, RMS over samples/coords
f_ref, f_eval_ref   step, sample, out          the reference (absent with method none)
h_ref, h_eval_ref   step, sample, coord        (when h is stored)
ref_error           ()                         the reference's own error estimate (max-abs)
err_{f,h}[_eval]    seed, step                 per-seed RMS error against the reference
total_{f,h}[_eval]  step                       RMS over seeds, samples, coords (SPEC §7)
euler_{f,h}[_eval]  step                       RMS of the seed mean of the error (SPEC §7)
wall_time           ()                         seconds for the point
computed            ()                         True (False where a merged cell has no point)
==================  =========================  ==================================================

Diverged seeds carry NaN after their divergence step, so every aggregate that involves them is
NaN: never zeroed or dropped (SPEC §7/§8). The merged dataset (``OUT/merged.nc``) has the same
variables with the swept parameters as full dimensions (cells not in the sweep: ``computed``
False, floats NaN, ``diverged`` -1, ``diverged_step`` -2).

Execution
---------
:func:`run_point` ``(spec, point, out_dir, ref_dir=None) -> path`` is a pure function of its
arguments (deterministic given the seeds) that writes one point file; :func:`run_reference` does
the same for a reference. An :class:`Executor` has two methods, ``submit(fn, *args)`` and
``wait(futures)`` (the ``concurrent.futures`` / ``dask.distributed`` shape); :class:`LocalExecutor`
(spawned processes, one torch thread each; ``workers <= 1`` runs in-process) is the default and
:class:`SerialExecutor` runs in-process. A Dask executor subclasses :class:`Executor` and
registers a factory with :func:`register_executor`, after which ``make_executor("dask:ADDRESS")``
and ``meanode sweep FILE --scheduler dask:ADDRESS`` work without touching the point computation.
:func:`run_sweeps` submits the missing references first (with the points that need none) and
each dependent point as soon as its reference is on disk; points already on disk are skipped, so
a killed sweep restarted with the same spec computes only what is missing.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import numbers
import os
import platform
import re
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SWEEPABLE", "DEFAULTS", "FORMAT", "SweepSpecError", "SweepError", "ReferenceSpec", "MeasureSpec", "SweepSpec",
    "Point", "run_point", "run_reference", "run_sweep", "SweepResult", "merge_points", "load_sweep",
    "run_sweeps", "Executor", "SerialExecutor", "LocalExecutor", "call_task", "make_executor", "register_executor",
    "EXECUTORS",
    "estimate_point_seconds", "estimate_reference_seconds", "point_memory_bytes", "plan_summary",
]

FORMAT = "meanode-sweep-point/1"
SWEEPABLE = ("L", "M", "D", "alpha", "eta", "a", "b", "activation", "seed", "gamma")
DEFAULTS: dict[str, Any] = dict(
    L=None, M=None, D=2, alpha=1.0, eta=0.2, a=1.0, b=1.0, activation="tanh", gamma=None,
    K=3, N=10, N_eval=0, d_in=5, d_out=5, data_seed=0, embed_seed=0, D_max=None,
    divergence_threshold=1e6, device="cpu", dtype="float64",
)
FIXED_ONLY = tuple(k for k in DEFAULTS if k not in SWEEPABLE)
_POS_INT = {"L", "M", "D", "N", "d_in", "d_out", "D_max"}
_NONNEG_INT = {"K", "N_eval", "data_seed", "embed_seed", "seed"}
_REAL = {"a", "b", "gamma"}
_POS_REAL = {"alpha", "divergence_threshold"}
_NONNEG_REAL = {"eta"}
_REF_METHODS = ("auto", "quadrature", "closure", "lazy", "network", "none")
_DIM_ORDER = ("seed", "step", "sample", "sample_eval", "out", "coord")


class SweepSpecError(ValueError):
    """A sweep description is invalid; the message names the offending field."""


class SweepError(RuntimeError):
    """Some points of a sweep failed; the completed ones are on disk and a rerun resumes."""


def _err(source: str, fieldname: str, msg: str) -> SweepSpecError:
    return SweepSpecError(f"{source}: {fieldname}: {msg}")


def _check_value(source: str, fieldname: str, key: str, value):
    """Validate and normalise one parameter value; raise naming ``fieldname``."""
    if key in _POS_INT | _NONNEG_INT:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise _err(source, fieldname, f"{key} must be an integer, got {value!r}")
        value = int(value)
        lo = 1 if key in _POS_INT else 0
        if value < lo:
            raise _err(source, fieldname, f"{key} must be >= {lo}, got {value}")
        return value
    if key in _REAL | _POS_REAL | _NONNEG_REAL:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _err(source, fieldname, f"{key} must be a real number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise _err(source, fieldname, f"{key} must be finite, got {value}")
        if key in _POS_REAL and value <= 0:
            raise _err(source, fieldname, f"{key} must be > 0, got {value}")
        if key in _NONNEG_REAL and value < 0:
            raise _err(source, fieldname, f"{key} must be >= 0, got {value}")
        return value
    if key == "activation":
        from .blocks import ACTIVATIONS
        if not isinstance(value, str) or value not in ACTIVATIONS:
            raise _err(source, fieldname, f"activation must be one of {sorted(ACTIVATIONS)}, got {value!r}")
        return value
    if key == "device":
        if not isinstance(value, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?", value):
            raise _err(source, fieldname, f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {value!r}")
        return value
    if key == "dtype":
        if value not in ("float64", "float32"):
            raise _err(source, fieldname, f"dtype must be 'float64' or 'float32', got {value!r}")
        return value
    raise _err(source, fieldname, f"unknown parameter {key!r}")


def _check_fields(cls, d, source: str, prefix: str) -> None:
    """``d`` must be a mapping whose keys are fields of the dataclass ``cls``."""
    if not isinstance(d, Mapping):
        raise _err(source, prefix, f"must be a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise _err(source, f"{prefix}.{sorted(unknown)[0]}", f"unknown field; allowed: {sorted(names)}")


def _frozen(d: Mapping) -> tuple:
    return tuple((k, d[k]) for k in d)


@dataclass(frozen=True)
class ReferenceSpec:
    """How the reference of a point is computed (see the module docstring).

    method: auto | quadrature | closure | lazy | network | none.
    level, coarse, rule: quadrature options of :func:`~meanode.limit.mean_ode_limit` (None: its defaults).
    depth_nodes, rtol, atol: limit solver settings.
    L, M, D, seeds: the network reference (method ``network``; D defaults to the sweep's D_max).
    """

    method: str = "auto"
    level: int | None = None
    coarse: int | None = None
    rule: str | None = None
    depth_nodes: int | str = "auto"
    rtol: float = 1e-10
    atol: float = 1e-12
    L: int | None = None
    M: int | None = None
    D: int | None = None
    seeds: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping | None, source: str = "<spec>") -> "ReferenceSpec":
        if d is None or isinstance(d, ReferenceSpec):
            return cls() if d is None else d
        _check_fields(cls, d, source, "reference")
        kw = dict(d)
        m = kw.get("method", "auto")
        if m not in _REF_METHODS:
            raise _err(source, "reference.method", f"must be one of {list(_REF_METHODS)}, got {m!r}")
        for k in ("level", "coarse", "L", "M", "D"):
            if kw.get(k) is not None:
                kw[k] = _check_value(source, f"reference.{k}", "L", kw[k])
        if "depth_nodes" in kw:
            v = kw["depth_nodes"]
            if v != "auto" and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 3):
                raise _err(source, "reference.depth_nodes", f"must be 'auto' or an integer >= 3, got {v!r}")
        for k in ("rtol", "atol"):
            if k in kw:
                kw[k] = _check_value(source, f"reference.{k}", "alpha", kw[k])
        from .limit import RULES

        if kw.get("rule") is not None and kw["rule"] not in RULES:
            raise _err(source, "reference.rule", f"must be one of {list(RULES)}, got {kw['rule']!r}")
        seeds = kw.get("seeds", ())
        if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
            seeds = tuple(range(10_000, 10_000 + int(seeds)))
        try:
            kw["seeds"] = tuple(_check_value(source, "reference.seeds", "seed", s) for s in seeds)
        except TypeError:
            raise _err(source, "reference.seeds", f"must be a count or a list of seeds, got {seeds!r}") from None
        if m == "network":
            if kw.get("L") is None or kw.get("M") is None:
                raise _err(source, "reference.L" if kw.get("L") is None else "reference.M",
                           "method 'network' needs the reference network's L and M")
            if not kw["seeds"]:
                kw["seeds"] = tuple(range(10_000, 10_005))
        elif kw.get("L") is not None or kw.get("M") is not None or kw.get("D") is not None:
            raise _err(source, "reference.L", f"L, M, D apply to method 'network' only, not {m!r}")
        if m != "quadrature" and m != "auto" and any(kw.get(k) is not None for k in ("level", "coarse", "rule")):
            raise _err(source, "reference.level", f"level/coarse/rule apply to the quadrature method only, not {m!r}")
        if kw.get("level") is not None and kw.get("coarse") is not None and kw["coarse"] >= kw["level"]:
            raise _err(source, "reference.coarse", f"must be < level={kw['level']}, got {kw['coarse']}")
        return cls(**kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d


@dataclass(frozen=True)
class MeasureSpec:
    """What is recorded beyond the standard variables.

    store_h: store hidden states ``h`` (and ``h_ref``): True, False or ``"auto"`` (D <= 64).
    linearisation / preactivation: the ``lin_dist`` / ``preact_move`` observables of
    :mod:`meanode.phase` (an extra training run with the weights kept; 2LP block only).
    """

    store_h: bool | str = "auto"
    linearisation: bool = False
    preactivation: bool = False

    @classmethod
    def from_dict(cls, d: Mapping | None, source: str = "<spec>") -> "MeasureSpec":
        if d is None or isinstance(d, MeasureSpec):
            return cls() if d is None else d
        _check_fields(cls, d, source, "measure")
        if "store_h" in d and d["store_h"] not in (True, False, "auto"):
            raise _err(source, "measure.store_h", f"must be true, false or auto, got {d['store_h']!r}")
        for k in ("linearisation", "preactivation"):
            if k in d and not isinstance(d[k], bool):
                raise _err(source, f"measure.{k}", f"must be true or false, got {d[k]!r}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Point:
    """One point of a sweep: the swept parameters' values, in the spec's order."""

    params: tuple[tuple[str, Any], ...]

    def as_dict(self) -> dict:
        return dict(self.params)

    def __getitem__(self, key: str):
        return dict(self.params)[key]

    @property
    def label(self) -> str:
        parts = []
        for k, v in self.params:
            s = f"{v:g}" if isinstance(v, float) else str(v)
            parts.append(f"{k}={s}")
        lab = "_".join(parts) or "point"
        return re.sub(r"[^A-Za-z0-9=._+-]", "-", lab)


def _sha(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: swept parameters (``grid`` product times ``zip`` rows), fixed settings, seeds per
    point, reference and measurement settings. Build with :meth:`create`, :meth:`from_dict` or
    :meth:`from_yaml` (they validate); the fields are normalised tuples so the spec is hashable."""

    name: str
    grid: tuple[tuple[str, tuple], ...] = ()
    zip: tuple[tuple[tuple[str, Any], ...], ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    seeds: tuple[int, ...] = (0,)
    reference: ReferenceSpec = ReferenceSpec()
    measure: MeasureSpec = MeasureSpec()
    description: str = ""

    # --- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, *, grid: Mapping | None = None, zip: Mapping | Sequence | None = None,
               fixed: Mapping | None = None, seeds: int | Sequence[int] = 8, reference: Mapping | ReferenceSpec | None = None,
               measure: Mapping | MeasureSpec | None = None, description: str = "", source: str = "<spec>") -> "SweepSpec":
        """Validate and normalise; raises :class:`SweepSpecError` naming the bad field."""
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
            raise _err(source, "name", f"must be a non-empty string of letters, digits, '_', '.', '-', got {name!r}")
        grid = {} if grid is None else grid
        fixed = {} if fixed is None else fixed
        if not isinstance(grid, Mapping):
            raise _err(source, "grid", f"must be a mapping parameter -> list of values, got {type(grid).__name__}")
        if not isinstance(fixed, Mapping):
            raise _err(source, "fixed", f"must be a mapping parameter -> value, got {type(fixed).__name__}")
        g: dict[str, tuple] = {}
        for k, vals in grid.items():
            if k not in SWEEPABLE:
                hint = " (a fixed setting: put it under 'fixed')" if k in FIXED_ONLY else ""
                raise _err(source, f"grid.{k}", f"not a sweepable parameter{hint}; sweepable: {list(SWEEPABLE)}")
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
                raise _err(source, f"grid.{k}", f"must be a list of values, got {vals!r}")
            vals = list(vals)
            if not vals:
                raise _err(source, f"grid.{k}", "must list at least one value")
            vals = [_check_value(source, f"grid.{k}", k, v) for v in vals]
            if len(set(vals)) != len(vals):
                raise _err(source, f"grid.{k}", f"repeated values in {vals}")
            g[k] = tuple(vals)
        rows = _zip_rows(zip, source)
        zkeys = list(rows[0].keys()) if rows else []
        for k in zkeys:
            if k in g:
                raise _err(source, f"zip.{k}", "is also in grid; a parameter is swept once")
        f: dict[str, Any] = {}
        for k, v in fixed.items():
            if k not in DEFAULTS:
                raise _err(source, f"fixed.{k}", f"unknown setting; known: {sorted(DEFAULTS)}")
            if k in g or k in zkeys:
                raise _err(source, f"fixed.{k}", "is also swept (grid/zip); remove one")
            if k == "seed":
                raise _err(source, "fixed.seed", "use 'seeds' (a count or list) for the seeds of every point")
            if v is None and k in ("D_max", "gamma"):
                continue
            f[k] = _check_value(source, f"fixed.{k}", k, v)
        swept = set(g) | set(zkeys)
        for k in ("L", "M"):
            if k not in swept and k not in f:
                raise _err(source, f"fixed.{k}", f"{k} is required: give it under 'fixed' or sweep it")
        if isinstance(seeds, bool):
            raise _err(source, "seeds", f"must be a count or a list of seeds, got {seeds!r}")
        if isinstance(seeds, numbers.Integral):
            if seeds < 1:
                raise _err(source, "seeds", f"count must be >= 1, got {seeds}")
            seeds_t = tuple(range(int(seeds)))
        elif isinstance(seeds, Iterable) and not isinstance(seeds, (str, bytes)):
            seeds_t = tuple(_check_value(source, "seeds", "seed", s) for s in seeds)
            if not seeds_t:
                raise _err(source, "seeds", "must name at least one seed")
            if len(set(seeds_t)) != len(seeds_t):
                raise _err(source, "seeds", f"repeated seeds in {list(seeds_t)}")
        else:
            raise _err(source, "seeds", f"must be a count or a list of seeds, got {seeds!r}")
        ref = ReferenceSpec.from_dict(reference, source)
        meas = MeasureSpec.from_dict(measure, source)
        spec = cls(name=name, grid=tuple(g.items()), zip=tuple(tuple(r.items()) for r in rows), fixed=tuple(f.items()),
                   seeds=seeds_t, reference=ref, measure=meas, description=str(description or ""))
        spec._validate_points(source)
        return spec

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "<dict>") -> "SweepSpec":
        if not isinstance(d, Mapping):
            raise SweepSpecError(f"{source}: the sweep must be a mapping with keys name, grid, zip, fixed, seeds, "
                                 f"reference, measure; got {type(d).__name__}")
        allowed = {"name", "grid", "zip", "fixed", "seeds", "reference", "measure", "description"}
        unknown = set(d) - allowed
        if unknown:
            raise _err(source, sorted(unknown)[0], f"unknown top-level field; allowed: {sorted(allowed)}")
        if "name" not in d:
            raise _err(source, "name", "missing (every sweep needs a name)")
        return cls.create(d["name"], grid=d.get("grid"), zip=d.get("zip"), fixed=d.get("fixed"),
                          seeds=d.get("seeds", 8), reference=d.get("reference"), measure=d.get("measure"),
                          description=d.get("description", ""), source=source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SweepSpec":
        import yaml
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise SweepSpecError(f"{path}: cannot read the sweep file ({e.strerror})") from None
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SweepSpecError(f"{path}: not valid YAML: {e}") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        d = dict(name=self.name, description=self.description, fixed=dict(self.fixed),
                 grid={k: list(v) for k, v in self.grid}, seeds=list(self.seeds),
                 reference=self.reference.to_dict(), measure=self.measure.to_dict())
        if self.zip:
            d["zip"] = [dict(r) for r in self.zip]
        return d

    def to_yaml(self) -> str:
        import yaml
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes) -> "SweepSpec":
        """A modified copy, validated again (e.g. ``spec.replace(seeds=4)``)."""
        d = self.to_dict()
        d.update(changes)
        return SweepSpec.from_dict(d, source=f"<{self.name}>")

    # --- points ------------------------------------------------------------------------------
    @property
    def swept(self) -> tuple[str, ...]:
        """The swept parameter names (grid then zip)."""
        return tuple(k for k, _ in self.grid) + (tuple(k for k, _ in self.zip[0]) if self.zip else ())

    def points(self) -> list[Point]:
        gkeys = [k for k, _ in self.grid]
        gvals = [v for _, v in self.grid]
        rows = [dict(r) for r in self.zip] or [{}]
        out = []
        for combo in itertools.product(*gvals):
            for r in rows:
                params = dict(zip(gkeys, combo))
                params.update(r)
                out.append(Point(tuple(params.items())))
        return out

    def _D_max(self) -> int:
        f = dict(self.fixed)
        if f.get("D_max") is not None:
            return f["D_max"]
        Ds = {dict(p.params).get("D", f.get("D", DEFAULTS["D"])) for p in self.points()}
        return max(Ds)

    def settings(self, point: Point) -> dict:
        """All settings of a point: defaults, then fixed, then the point's values; ``D_max``
        resolved; ``alpha_eff`` = ``alpha D^(gamma - 1/2)`` (= alpha when gamma is None)."""
        s = dict(DEFAULTS)
        s.update(dict(self.fixed))
        s.update(point.as_dict())
        s.pop("seed", None)
        s["D_max"] = self._D_max()
        g = s.get("gamma")
        s["alpha_eff"] = s["alpha"] * (float(s["D"]) ** (g - 0.5) if g is not None else 1.0)
        return s

    def point_seeds(self, point: Point) -> tuple[int, ...]:
        p = point.as_dict()
        return (p["seed"],) if "seed" in p else self.seeds

    def _validate_points(self, source: str) -> None:
        D_max = self._D_max()
        ref = self.reference
        for p in self.points():
            s = self.settings(p)
            if s["D"] > D_max:
                raise _err(source, "fixed.D_max", f"D_max={D_max} is below D={s['D']} of point {p.label}")
            method = ref.method
            if method == "network":
                Dr = ref.D if ref.D is not None else D_max
                if Dr > D_max:
                    raise _err(source, "reference.D", f"the reference D={Dr} exceeds D_max={D_max}")
                if s["D"] > Dr:
                    raise _err(source, "reference.D", f"point {p.label} has D={s['D']} > reference D={Dr}")
            if method not in ("none", "network") and (s["a"] != 1.0 or s["b"] != 1.0):
                raise _err(source, "reference.method",
                           f"a limit reference exists only for the MLU scaling a = b = 1 (point {p.label} has "
                           f"a={s['a']}, b={s['b']}); use method: none")
            if method == "closure" and s["activation"] != "identity":
                raise _err(source, "reference.method", "closure is exact only for activation 'identity'")
            if method in ("quadrature", "auto") and s["activation"] != "identity":
                if s["D"] > 3 and ref.rule == "gauss_hermite":
                    raise _err(source, "reference.method",
                               f"a tensor Gauss-Hermite reference in 2D = {2 * s['D']} dimensions (point {p.label}) "
                               "is out of reach; use the default rule (lattice), method: network, or none")
                if s["D"] > 4 and ref.rule in (None, "auto", "lattice"):
                    raise _err(source, "reference.method",
                               f"no lattice rule resolves 2D = {2 * s['D']} dimensions (point {p.label}); scrambled "
                               "Sobol (rule: rqmc) reaches ~1e-3 there: ask for it explicitly, or use method: "
                               "network, closure (identity), or none")


def _zip_rows(z, source: str) -> list[dict]:
    if z is None:
        return []
    if isinstance(z, Mapping):
        if not z:
            return []
        lens = {}
        for k, vals in z.items():
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
                raise _err(source, f"zip.{k}", f"must be a list of values, got {vals!r}")
            lens[k] = len(list(vals))
        if len(set(lens.values())) != 1:
            raise _err(source, "zip", f"lists must have equal lengths, got {lens}")
        keys = list(z)
        rows = [dict(zip(keys, vals)) for vals in zip(*(list(z[k]) for k in keys))]
    elif isinstance(z, Sequence) and not isinstance(z, (str, bytes)):
        rows = [dict(r) if isinstance(r, Mapping) else None for r in z]
        if any(r is None for r in rows):
            raise _err(source, "zip", "a list of rows must hold mappings like {L: 8, M: 8}")
    else:
        raise _err(source, "zip", f"must be a mapping of equal-length lists or a list of rows, got {type(z).__name__}")
    if not rows:
        return []
    keys = list(rows[0])
    out = []
    for i, r in enumerate(rows):
        if list(r) != keys and set(r) != set(keys):
            raise _err(source, f"zip[{i}]", f"row keys {sorted(r)} differ from {sorted(keys)}")
        row = {}
        for k in keys:
            if k not in SWEEPABLE:
                hint = " (a fixed setting: put it under 'fixed')" if k in FIXED_ONLY else ""
                raise _err(source, f"zip.{k}", f"not a sweepable parameter{hint}; sweepable: {list(SWEEPABLE)}")
            row[k] = _check_value(source, f"zip.{k}", k, r[k])
        out.append(row)
    if len({tuple(r.items()) for r in out}) != len(out):
        raise _err(source, "zip", "repeated rows")
    return out


# --- keys and paths ------------------------------------------------------------------------

def _resolve_method(ref: ReferenceSpec, activation: str) -> str:
    if ref.method == "auto":
        return "closure" if activation == "identity" else "quadrature"
    return ref.method


def reference_identity(spec: SweepSpec, point: Point) -> dict | None:
    """What determines a point's reference (None for method ``none``)."""
    s = spec.settings(point)
    ref = spec.reference
    method = _resolve_method(ref, s["activation"])
    if method == "none":
        return None
    ident = dict(method=method, N=s["N"], N_eval=s["N_eval"], d_in=s["d_in"], d_out=s["d_out"],
                 data_seed=s["data_seed"], embed_seed=s["embed_seed"], D_max=s["D_max"], eta=s["eta"], K=s["K"],
                 activation=s["activation"], depth_nodes=ref.depth_nodes, rtol=ref.rtol, atol=ref.atol)
    if method == "network":
        ident.update(D=ref.D if ref.D is not None else s["D_max"], L=ref.L, M=ref.M, seeds=list(ref.seeds),
                     alpha=s["alpha_eff"] if s.get("gamma") is None else None, gamma=s.get("gamma"),
                     alpha0=s["alpha"], divergence_threshold=s["divergence_threshold"], dtype=s["dtype"])
        for k in ("depth_nodes", "rtol", "atol"):
            ident.pop(k)
    else:
        ident["D"] = s["D"]
        if method != "lazy":
            ident["alpha"] = s["alpha_eff"]
        if method == "quadrature":
            ident.update(level=ref.level, coarse=ref.coarse, rule=ref.rule)
    return ident


def reference_key(spec: SweepSpec, point: Point) -> str | None:
    ident = reference_identity(spec, point)
    return None if ident is None else _sha(dict(v=FORMAT, **ident))


def point_key(spec: SweepSpec, point: Point) -> str:
    s = spec.settings(point)
    s.pop("device", None)  # where it ran does not change what it means
    return _sha(dict(v=FORMAT, settings=s, seeds=list(spec.point_seeds(point)), reference=reference_identity(spec, point),
                     measure=spec.measure.to_dict()))


def point_path(spec: SweepSpec, point: Point, out_dir) -> Path:
    return Path(out_dir) / "points" / f"{point.label}__{point_key(spec, point)}.nc"


def reference_path(spec: SweepSpec, point: Point, ref_dir) -> Path | None:
    key = reference_key(spec, point)
    return None if key is None else Path(ref_dir) / f"ref__{key}.nc"


#: netCDF flavour of the small per-point and reference files: netCDF3 (64-bit offset) through
#: scipy. h5netcdf/HDF5 costs ~0.5 s per small file in dimension-scale bookkeeping (35x more),
#: minutes of a quick run; the merged dataset, one file per sweep, is netCDF4 via h5netcdf.
#: ``xarray.open_dataset`` reads both without an ``engine`` argument.
POINT_ENGINE = dict(engine="scipy", format="NETCDF3_64BIT")
MERGED_ENGINE = dict(engine="h5netcdf")


def _atomic_write(ds, path: Path, engine: dict = POINT_ENGINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        ds.to_netcdf(tmp, **engine)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _device(name: str) -> str:
    if name == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _problem(s: dict):
    from .data import Problem
    return Problem.default(D=s["D"], N=s["N"], d_in=s["d_in"], d_out=s["d_out"], data_seed=s["data_seed"],
                           embed_seed=s["embed_seed"], D_max=s["D_max"], N_eval=s["N_eval"])


# --- references ------------------------------------------------------------------------------

def run_reference(spec: SweepSpec, point: Point, ref_dir) -> Path | None:
    """Compute (or find) the cached reference of ``point``; returns its path (None: method none)."""
    import xarray as xr

    path = reference_path(spec, point, ref_dir)
    if path is None or path.exists():
        return path
    s = spec.settings(point)
    ref = spec.reference
    ident = reference_identity(spec, point)
    method = ident["method"]
    t0 = time.perf_counter()
    if method == "network":
        Dr = ident["D"]
        rs = dict(s, D=Dr, L=ref.L, M=ref.M)
        rs["alpha_eff"] = s["alpha"] * (float(Dr) ** (s["gamma"] - 0.5) if s.get("gamma") is not None else 1.0)
        prob = _problem(rs)
        res = _train(prob, rs, tuple(ref.seeds), ref.L, ref.M, rs["alpha_eff"])
        if res.diverged.any():
            raise RuntimeError(f"the reference network (L={ref.L}, M={ref.M}, D={Dr}) diverged for seeds "
                               f"{np.asarray(ref.seeds)[res.diverged].tolist()}: choose a smaller eta")
        E = len(ref.seeds)
        # statistical error of the seed mean: the standard error, RMS over samples and outputs,
        # largest over the steps (the Euler bias of the reference's own L is not included)
        err = float(np.max(np.sqrt(np.mean(res.f.var(axis=0, ddof=1), axis=(1, 2)) / E))) if E > 1 else float("nan")
        f, h = res.f.mean(0), res.h.mean(0)
        f_eval = None if res.f_eval is None else res.f_eval.mean(0)
        h_eval = None if res.h_eval is None else res.h_eval.mean(0)
        parts = {"seed_mean_standard_error": err}
        label = f"network(L={ref.L}, M={ref.M}, D={Dr}, {E} seeds)"
    else:
        from .limit import lazy_limit, mean_ode_limit
        prob = _problem(s)
        common = dict(activation=s["activation"], rtol=ref.rtol, atol=ref.atol, depth_nodes=ref.depth_nodes,
                      device=_device(s["device"]) if method == "quadrature" else "cpu")
        if method == "lazy":
            lim = lazy_limit(**prob.arrays(), eta=s["eta"], steps=s["K"], **common)
        else:
            opts = {k: getattr(ref, k) for k in ("level", "coarse", "rule") if getattr(ref, k) is not None}
            lim = mean_ode_limit(**prob.arrays(), alpha=s["alpha_eff"], eta=s["eta"], steps=s["K"], method=method,
                                 **common, **opts)
        f, h, f_eval, h_eval = lim.f, lim.h, lim.f_eval, lim.h_eval
        err = float(lim.error_estimate)
        parts = {k: float(v) for k, v in lim.error_parts.items()}
        label = lim.method
    data = {"f": (("step", "sample", "out"), f), "h": (("step", "sample", "coord"), h)}
    if f_eval is not None:
        data["f_eval"] = (("step", "sample_eval", "out"), f_eval)
        data["h_eval"] = (("step", "sample_eval", "coord"), h_eval)
    ds = xr.Dataset(data, attrs=dict(format="meanode-reference/1", method=label, error_estimate=err,
                                     error_parts=json.dumps(parts), identity=json.dumps(ident, default=str),
                                     wall_time=time.perf_counter() - t0))
    _atomic_write(ds, path)
    return path


def _load_reference(path: Path) -> dict:
    import xarray as xr
    with xr.open_dataset(path, engine=POINT_ENGINE["engine"]) as ds:
        ds.load()
        out = {k: ds[k].values for k in ds.data_vars}
        out.update(error_estimate=float(ds.attrs["error_estimate"]), method=str(ds.attrs["method"]),
                   error_parts=json.loads(ds.attrs["error_parts"]), wall_time=float(ds.attrs["wall_time"]))
    return out


# --- the point computation ---------------------------------------------------------------------

def _rms(x, axis=None):
    return np.sqrt(np.mean(np.square(x), axis=axis))


def _fluct(x: np.ndarray) -> np.ndarray:
    """Seed standard deviation (ddof=1), RMS over all but (seed, step): ``x (E, K+1, ...)`` -> (K+1,)."""
    if x.shape[0] < 2:
        return np.full(x.shape[1], np.nan)
    axes = tuple(range(1, x.ndim - 1))
    return np.sqrt(np.mean(x.var(axis=0, ddof=1), axis=axes))


#: Memory budget of one training call; a point whose seed ensemble needs more is trained in seed
#: chunks (the results are concatenated; each seed's weights depend only on its own seed).
MAX_POINT_BYTES = int(float(os.environ.get("MEANODE_MAX_POINT_GB", "16")) * 2**30)


def seed_chunk(s: dict, n_seeds: int) -> int:
    """How many seeds one training call takes for settings ``s`` under :data:`MAX_POINT_BYTES`."""
    per_seed = point_memory_bytes(s, 1)
    return max(1, min(n_seeds, int(MAX_POINT_BYTES // max(per_seed, 1))))


def _train(prob, s: dict, seeds: tuple, L: int, M: int, alpha: float, scaling=None):
    """:func:`meanode.train_resnet` over ``seeds``, in chunks of :func:`seed_chunk` seeds."""
    import torch

    from .resnet import MLU, TrainResult, train_resnet
    kw = dict(L=L, M=M, alpha=alpha, eta=s["eta"], steps=s["K"], activation=s["activation"],
              device=_device(s["device"]), dtype=getattr(torch, s["dtype"]), scaling=scaling or MLU,
              divergence_threshold=s["divergence_threshold"])
    n = seed_chunk(dict(s, L=L, M=M), len(seeds))
    parts = [train_resnet(**prob.arrays(), seeds=seeds[i:i + n], **kw) for i in range(0, len(seeds), n)]
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: (None if getattr(parts[0], name) is None  # noqa: E731
                        else np.concatenate([getattr(p, name) for p in parts]))
    return TrainResult(f=cat("f"), h=cat("h"), loss=cat("loss"), f_eval=cat("f_eval"), h_eval=cat("h_eval"),
                       hidden=None, unit_movement=cat("unit_movement"), diverged=cat("diverged"),
                       diverged_step=cat("diverged_step"), seeds=tuple(seeds), config=dict(parts[0].config, seed_chunk=n),
                       wall_time=sum(p.wall_time for p in parts))


def compute_point(spec: SweepSpec, point: Point, ref: dict | None):
    """Train the point's seed ensemble and measure it (SPEC §7): an :class:`xarray.Dataset`."""
    import torch
    import xarray as xr

    from . import phase
    from .resnet import Scaling

    t0 = time.perf_counter()
    s = spec.settings(point)
    seeds = spec.point_seeds(point)
    prob = _problem(s)
    scaling = Scaling(s["a"], s["b"])
    res = _train(prob, s, seeds, s["L"], s["M"], s["alpha_eff"], scaling)
    store_h = spec.measure.store_h
    store_h = (s["D"] <= 64) if store_h == "auto" else bool(store_h)
    h0 = prob.X @ prob.W_E.T
    S, SK, SSN, SSC = ("seed",), ("seed", "step"), ("seed", "step", "sample", "out"), ("seed", "step", "sample", "coord")
    v: dict[str, tuple] = {
        "loss": (SK, res.loss),
        "f": (SSN, res.f),
        "diverged": (S, res.diverged.astype(np.int8)),
        "diverged_step": (S, res.diverged_step.astype(np.int32)),
        "init_dev": (S, _rms(res.h[:, 0] - h0[None], axis=(1, 2))),
        "out_change": (S, _rms(res.f[:, -1] - res.f[:, 0], axis=(1, 2))),
        "feature_change": (S, _rms(res.h[:, -1] - res.h[:, 0], axis=(1, 2)) / _rms(h0)),
        "unit_movement": (S, res.unit_movement),
        "fluct_f": (("step",), _fluct(res.f)),
        "fluct_h": (("step",), _fluct(res.h)),
    }
    has_eval = res.f_eval is not None
    if has_eval:
        v["f_eval"] = (("seed", "step", "sample_eval", "out"), res.f_eval)
        v["fluct_f_eval"] = (("step",), _fluct(res.f_eval))
        v["fluct_h_eval"] = (("step",), _fluct(res.h_eval))
    if store_h:
        v["h"] = (SSC, res.h)
        if has_eval:
            v["h_eval"] = (("seed", "step", "sample_eval", "coord"), res.h_eval)
    if spec.measure.linearisation or spec.measure.preactivation:
        ex = phase.extra_observables(**{k: a for k, a in prob.arrays().items() if k != "X_eval"}, L=s["L"], M=s["M"],
                                     alpha=s["alpha_eff"], eta=s["eta"], steps=s["K"], activation=s["activation"],
                                     seeds=seeds, scaling=scaling, linearisation=spec.measure.linearisation,
                                     preactivation=spec.measure.preactivation,
                                     divergence_threshold=s["divergence_threshold"])
        for k, a in ex.items():
            v[k] = (S, a)
    attrs = {}
    if ref is not None:
        D = s["D"]
        pairs = [("f", res.f, ref["f"], ("step", "sample", "out")),
                 ("h", res.h, ref["h"][..., :D], ("step", "sample", "coord"))]
        if has_eval:
            pairs += [("f_eval", res.f_eval, ref["f_eval"], ("step", "sample_eval", "out")),
                      ("h_eval", res.h_eval, ref["h_eval"][..., :D], ("step", "sample_eval", "coord"))]
        for name, x, xr_, dims in pairs:
            d = x - xr_[None]
            v[f"err_{name}"] = (SK, _rms(d, axis=(2, 3)))
            v[f"total_{name}"] = (("step",), _rms(d, axis=(0, 2, 3)))
            v[f"euler_{name}"] = (("step",), _rms(d.mean(axis=0), axis=(1, 2)))
            if name.startswith("f") or store_h:
                v[f"{name}_ref"] = (dims, xr_)
        v["ref_error"] = ((), ref["error_estimate"])
        attrs.update(reference_method=ref["method"], reference_file=ref["path"],
                     reference_error_parts=json.dumps(ref["error_parts"]))
    v["wall_time"] = ((), time.perf_counter() - t0)
    v["computed"] = ((), True)
    coords = {"seed": list(seeds), "step": np.arange(s["K"] + 1)}
    ds = xr.Dataset(v, coords=coords)
    if "seed" in dict(point.params):
        # one point per seed: every variable gets the seed axis; the merge recomputes the
        # aggregates over all seeds (see merge_points)
        for name in list(ds.data_vars):
            if "seed" not in ds[name].dims:
                ds[name] = ds[name].expand_dims(seed=ds["seed"].values)
    expand = {k: [val] for k, val in point.params if k != "seed"}
    if expand:
        ds = ds.expand_dims(expand)
    from . import __version__
    ds.attrs.update(attrs, format=FORMAT, sweep=spec.name, point_key=point_key(spec, point), label=point.label,
                    settings=json.dumps(s, default=str), seeds=json.dumps(list(seeds)), swept=json.dumps(list(spec.swept)),
                    meanode_version=__version__, torch_version=str(torch.__version__), host=platform.node(),
                    training_wall_time=float(res.wall_time))
    return ds


def run_point(spec: SweepSpec, point: Point, out_dir, ref_dir=None) -> Path:
    """Compute one point and write its file (atomically); returns the path.

    Pure and idempotent: the result depends only on ``spec`` and ``point`` (seeds fix the
    weights), and an existing file is returned as is. The reference is read from ``ref_dir``
    (default ``out_dir/references``), computed there first if missing.
    """
    out_dir = Path(out_dir)
    path = point_path(spec, point, out_dir)
    if path.exists():
        return path
    ref_dir = Path(ref_dir) if ref_dir is not None else out_dir / "references"
    ref = None
    rpath = run_reference(spec, point, ref_dir)
    if rpath is not None:
        ref = _load_reference(rpath)
        ref["path"] = str(rpath.name)
    ds = compute_point(spec, point, ref)
    _atomic_write(ds, path)
    return path


# --- merging -------------------------------------------------------------------------------------

_INT_FILL = {"diverged": -1, "diverged_step": -2}


def merge_points(spec: SweepSpec, paths: Sequence[os.PathLike]):
    """Merge point files into one :class:`xarray.Dataset` with the swept parameters as dimensions."""
    import xarray as xr

    dsets = []
    for p in paths:
        with xr.open_dataset(p, engine=POINT_ENGINE["engine"]) as ds:
            dsets.append(ds.load())
    swept = [k for k in spec.swept if k != "seed"]
    coords: dict[str, list] = {}
    for k in swept:
        seen = {}
        for ds in dsets:
            for x in ds[k].values.tolist():
                seen[x] = True
        try:
            vals = sorted(seen)
        except TypeError:
            vals = list(seen)
        coords[k] = vals
    seeds = sorted({int(x) for ds in dsets for x in ds["seed"].values})
    coords["seed"] = seeds
    sizes = {}
    for ds in dsets:
        for d, n in ds.sizes.items():
            if d not in coords:
                sizes[d] = max(sizes.get(d, 0), n)
    for d, n in sizes.items():
        coords[d] = list(range(n))
    names: dict[str, tuple] = {}
    dtypes: dict[str, np.dtype] = {}
    for ds in dsets:
        for name, var in ds.data_vars.items():
            dims = tuple(swept) + tuple(d for d in var.dims if d not in swept)
            names.setdefault(name, dims)
            dtypes.setdefault(name, var.dtype)
    order = {d: i for i, d in enumerate(list(swept) + list(_DIM_ORDER))}
    out = {}
    for name, dims in names.items():
        dims = tuple(sorted(dims, key=lambda d: order.get(d, len(order))))
        shape = tuple(len(coords[d]) for d in dims)
        dt = dtypes[name]
        if dt.kind == "f":
            arr = np.full(shape, np.nan, dtype=dt)
        elif dt.kind == "b":
            arr = np.zeros(shape, dtype=bool)
        elif dt.kind in "iu":
            arr = np.full(shape, _INT_FILL.get(name, -1), dtype=dt)
        else:
            arr = np.full(shape, "", dtype=object)
        out[name] = (dims, arr)
    index = {d: {v: i for i, v in enumerate(coords[d])} for d in coords}
    for ds in dsets:
        for name, var in ds.data_vars.items():
            dims = out[name][0]
            var = var.transpose(*[d for d in dims if d in var.dims])
            sel = []
            for d in dims:
                if d in swept or d == "seed":
                    sel.append([index[d][x] for x in ds[d].values.tolist()])
                else:
                    sel.append(list(range(var.sizes[d])))
            out[name][1][np.ix_(*sel)] = var.values
    merged = xr.Dataset(out, coords=coords)
    if "seed" in spec.swept:
        merged = _aggregate_over_seeds(merged)
    merged.attrs.update(format="meanode-sweep/1", sweep=spec.name, spec=json.dumps(spec.to_dict(), default=str),
                        swept=json.dumps(swept), n_points=len(dsets))
    return merged


def _aggregate_over_seeds(ds):
    """For sweeps with ``seed`` swept (one point per seed): collapse the per-seed copies of
    per-point variables and recompute the SPEC §7 aggregates over all seeds of each cell."""
    out = ds.copy()
    for name in list(ds.data_vars):
        if name.startswith(("total_", "euler_", "fluct_")) or name in ("computed", "wall_time"):
            out = out.drop_vars(name)
        elif name.endswith("_ref") or name == "ref_error":
            out[name] = ds[name].max("seed") if ds[name].dtype.kind == "f" else ds[name].isel(seed=0)
    out["computed"] = ds["computed"].all("seed")
    out["wall_time"] = ds["wall_time"].sum("seed", min_count=1)
    E = ds.sizes["seed"]
    for X, space in (("f", "out"), ("h", "coord"), ("f_eval", "out"), ("h_eval", "coord")):
        samples = "sample_eval" if X.endswith("_eval") else "sample"
        if X in ds:
            x = ds[X]
            fl = np.sqrt((x.var("seed", ddof=1) if E > 1 else x.isel(seed=0) * np.nan).mean((samples, space), skipna=False))
            out[f"fluct_{X}"] = fl
            if f"{X}_ref" in out:
                d = x - out[f"{X}_ref"]
                out[f"euler_{X}"] = np.sqrt((d.mean("seed", skipna=False) ** 2).mean((samples, space), skipna=False))
        if f"err_{X}" in ds:
            out[f"total_{X}"] = np.sqrt((ds[f"err_{X}"] ** 2).mean("seed", skipna=False))
    return out


def load_sweep(out_dir):
    """The merged dataset of a finished sweep directory (``OUT/merged.nc``)."""
    import xarray as xr
    with xr.open_dataset(Path(out_dir) / "merged.nc", engine="h5netcdf") as ds:
        return ds.load()


# --- executors -----------------------------------------------------------------------------------

def _worker_init(threads: int = 1) -> None:
    import torch
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def call_task(fn: Callable, *args, **kwargs) -> tuple[Any, str | None]:
    """Run ``fn`` and return ``(result, None)`` or ``(None, traceback text)``: what every executor
    ships back, so no exception object ever needs pickling."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:  # noqa: BLE001 - reported to the driver, never swallowed
        return None, "".join(traceback.format_exception(type(e), e, e.__traceback__))


class Executor:
    """Where tasks run. Two methods, modelled on ``concurrent.futures`` and ``dask.distributed``:

    * ``submit(fn, *args, **kwargs)`` -> a future whose ``result()`` is what
      :func:`call_task` returns, ``(result, error_text)``;
    * ``wait(futures)`` -> ``(done, not_done)``, blocking until at least one is done.

    ``fn`` is a module-level function (:func:`run_point`, :func:`run_reference`) and the arguments
    are picklable (frozen specs and points, strings), so the tasks can go to threads, processes or
    a cluster. A Dask executor wraps ``client.submit(call_task, fn, ...)`` and
    ``distributed.wait(..., return_when="FIRST_COMPLETED")`` and registers itself with
    :func:`register_executor`.
    """

    name = "executor"
    workers = 1

    def submit(self, fn: Callable, *args, **kwargs):
        raise NotImplementedError

    def wait(self, futures):
        done, not_done = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
        return set(done), set(not_done)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"{type(self).__name__}(workers={self.workers})"


class SerialExecutor(Executor):
    """In-process, each task run when submitted (debugging, tests, tiny sweeps)."""

    name = "serial"

    def submit(self, fn, *args, **kwargs):
        fut: cf.Future = cf.Future()
        fut.set_result(call_task(fn, *args, **kwargs))
        return fut


class LocalExecutor(Executor):
    """A pool of ``workers`` local processes (spawned; torch limited to ``threads`` threads each).
    ``workers <= 1`` runs in-process (:class:`SerialExecutor`)."""

    name = "local"

    def __init__(self, workers: int | None = None, threads: int = 1):
        self.workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
        self.threads = threads
        self._pool: cf.ProcessPoolExecutor | None = None
        self._serial = SerialExecutor() if self.workers <= 1 else None

    def submit(self, fn, *args, **kwargs):
        if self._serial is not None:
            return self._serial.submit(fn, *args, **kwargs)
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(self.threads,))
        return self._pool.submit(call_task, fn, *args, **kwargs)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _local_factory(arg: str | None) -> Executor:
    """``local:N``: a Dask LocalCluster of N worker processes on loopback when N > 1 (the default
    for parallel runs, issue 6), the in-process serial executor for N = 1; ``local`` alone uses
    every core. Without dask installed, a process pool (as ``pool:N``)."""
    if arg in (None, ""):
        n = os.cpu_count() or 1
    else:
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"the local scheduler takes a worker count, as in 'local:2', got {arg!r}") from None
    if n > 1:
        from .distributed import DaskExecutor, dask_available
        if dask_available()[0]:
            return DaskExecutor.local(n)
    return LocalExecutor(n)


#: Executor factories by scheduler name: ``"name"`` or ``"name:arg"`` -> ``factory(arg)``.
EXECUTORS: dict[str, Callable[[str | None], Executor]] = {
    "local": _local_factory,
    "pool": lambda arg: LocalExecutor(int(arg) if arg else None),
    "serial": lambda arg: SerialExecutor(),
}


def register_executor(name: str, factory: Callable[[str | None], Executor]) -> None:
    """Make ``make_executor("name:arg")`` build ``factory(arg)`` (e.g. a Dask client executor)."""
    EXECUTORS[name] = factory


def make_executor(spec: str | int | Executor | None = None) -> Executor:
    """``None`` (local, all cores), an int (local workers), ``"local:N"`` (Dask LocalCluster),
    ``"pool:N"`` (process pool), ``"serial"``, ``"tcp://HOST:PORT"`` (an existing Dask scheduler),
    a registered ``"name:arg"``, or an :class:`Executor` (returned as is)."""
    if isinstance(spec, Executor):
        return spec
    if spec is None:
        return EXECUTORS["local"](None)
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        return EXECUTORS["local"](str(int(spec)))
    if not isinstance(spec, str):
        raise TypeError(f"executor must be a name like 'local:2', an int or an Executor, got {spec!r}")
    name, _, arg = spec.partition(":")
    if name not in EXECUTORS:
        try:
            from . import distributed  # noqa: F401 - registers dask-local, dask, tcp, tls
        except ImportError:
            pass
    if name not in EXECUTORS:
        hint = " (pip install 'meanode[dask]')" if name in ("dask", "dask-local", "tcp", "tls") else ""
        raise ValueError(f"unknown scheduler {name!r}{hint}; known: {sorted(EXECUTORS)} (others register with "
                         "meanode.sweep.register_executor)")
    return EXECUTORS[name](arg or None)


# --- cost model ------------------------------------------------------------------------------------

#: Seconds per (seed x step x sample x unit x (D + 4)) for the batched trainer on one CPU core
#: (float64, measured on this project's machines; a GPU is typically 10-100x faster at large sizes).
CPU_SECONDS_PER_UNIT = 5e-9
POINT_OVERHEAD_S = 0.05


def estimate_point_seconds(s: dict, n_seeds: int, measure: MeasureSpec | None = None) -> float:
    n = s["N"] + s["N_eval"]
    work = n_seeds * (s["K"] + 1) * n * s["L"] * s["M"] * (s["D"] + 4)
    extra = 2.0 if measure is not None and (measure.linearisation or measure.preactivation) else 0.0
    return POINT_OVERHEAD_S + CPU_SECONDS_PER_UNIT * work * (1.0 + extra)


def estimate_reference_seconds(ident: dict) -> float:
    m = ident["method"]
    K1 = ident["K"] + 1
    n = ident["N"] + ident["N_eval"]
    if m == "closure":  # measured: 1.1 s at D = 64, K = 15 on one core, ~D^2
        return 0.3 + 1.1 * (ident["D"] / 64) ** 2 * K1 / 16
    if m == "lazy":
        return 1.0 * K1 ** 2 * n / 20
    if m == "network":
        s = dict(N=ident["N"], N_eval=ident["N_eval"], K=ident["K"], L=ident["L"], M=ident["M"], D=ident["D"])
        return estimate_point_seconds(s, len(ident["seeds"]))
    from .limit.api import LATTICE_DEFAULTS
    from .limit.quadrature import lattice_size

    dz = 2 * ident["D"]
    rule = ident.get("rule") or "auto"
    if rule == "auto":
        rule = "lattice" if dz <= 8 else "rqmc"
    if rule == "lattice":
        spacing, level = LATTICE_DEFAULTS[dz]
        nodes = lattice_size(spacing / (ident.get("level") or level), dz) / 2
    elif rule == "rqmc":
        nodes = 8 * 2 ** (ident.get("level") or 14) / 2
    else:
        level = ident.get("level") or {1: 48, 2: 32, 3: 16, 4: 12}.get(2 * ident["D"], 6)
        nodes = level ** (2 * ident["D"]) / 2
    return 0.5 + 2.5e-6 * nodes * K1 ** 2 * n / 20


def point_memory_bytes(s: dict, n_seeds: int) -> int:
    """Peak memory of the trainer for one point, roughly (float64): weights twice, hidden states,
    pre-activations and activations of every layer."""
    E, L, M, D = n_seeds, s["L"], s["M"], s["D"]
    n = s["N"] + s["N_eval"]
    words = 2 * E * L * M * 2 * D + (L + 1) * E * n * D + 2 * L * E * n * M + 2 * E * (s["K"] + 1) * n * (D + s["d_out"])
    return 8 * words


def plan_summary(spec: SweepSpec, out_dir=None) -> dict:
    """Points, references and estimated cost of a sweep (for ``--dry-run``)."""
    pts = spec.points()
    refs = {}
    cost = 0.0
    mem = 0
    done = 0
    for p in pts:
        s = spec.settings(p)
        E = len(spec.point_seeds(p))
        cost += estimate_point_seconds(s, E, spec.measure)
        mem = max(mem, point_memory_bytes(s, seed_chunk(s, E)))
        ident = reference_identity(spec, p)
        if ident is not None:
            refs[_sha(dict(v=FORMAT, **ident))] = ident
        if out_dir is not None and point_path(spec, p, out_dir).exists():
            done += 1
    ref_cost = sum(estimate_reference_seconds(i) for i in refs.values())
    return dict(name=spec.name, points=len(pts), done=done, seeds=len(spec.seeds), references=len(refs),
                reference_methods=sorted({i["method"] for i in refs.values()}), point_seconds=cost,
                reference_seconds=ref_cost, max_point_memory=mem)


# --- driver --------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the merged dataset and its path, and the bookkeeping."""

    spec: SweepSpec
    out_dir: Path
    dataset: Any
    merged_path: Path
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    references_computed: int = 0
    wall_time: float = 0.0


def run_sweeps(jobs: Sequence[tuple[SweepSpec, os.PathLike | str]], *, executor: str | int | Executor | None = None,
               ref_dir=None, progress: bool = True, merge: bool = True) -> list[SweepResult]:
    """Run the missing points of several sweeps with one executor, then merge each sweep.

    Missing references are submitted first, together with the points that need none (largest
    first); a point that needs a reference is submitted as soon as that reference is on disk.
    Points already on disk are skipped, so an interrupted run resumes where it stopped. A failed
    task does not stop the others; :class:`SweepError` is raised at the end and nothing is merged
    for the sweeps it touched. ``ref_dir`` (default ``<out_dir>/references`` of each sweep) is
    where references are cached; share it between sweeps to compute each reference once.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    prepared = []
    ref_tasks: dict[Path, tuple] = {}
    waiting: dict[Path, list] = {}
    ready = []
    for j, (spec, out) in enumerate(jobs):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        rdir = Path(ref_dir) if ref_dir is not None else out / "references"
        (out / "sweep.yaml").write_text(spec.to_yaml())
        pts = spec.points()
        paths = [point_path(spec, p, out) for p in pts]
        pending = [p for p, path in zip(pts, paths) if not path.exists()]
        prepared.append(dict(spec=spec, out=out, paths=paths, pending=pending, computed=[], failed=[],
                             skipped=[p.label for p, path in zip(pts, paths) if path.exists()], refs=0))
        for p in pending:
            cost = estimate_point_seconds(spec.settings(p), len(spec.point_seeds(p)), spec.measure)
            task = (j, p, cost, (spec, p, str(out), str(rdir)))
            rp = reference_path(spec, p, rdir)
            if rp is None or rp.exists():
                ready.append(task)
            else:
                if rp not in ref_tasks:
                    ref_tasks[rp] = (j, p, estimate_reference_seconds(reference_identity(spec, p)), (spec, p, str(rdir)))
                    prepared[j]["refs"] += 1
                waiting.setdefault(rp, []).append(task)
    total = sum(t[2] for t in ref_tasks.values()) + sum(t[2] for t in ready) + sum(t[2] for ts in waiting.values() for t in ts)
    n_refs, n_pts = len(ref_tasks), sum(len(p["pending"]) for p in prepared)
    own = not isinstance(executor, Executor)
    ex = make_executor(executor) if (n_refs or n_pts) else None
    failures: list[str] = []
    names = ", ".join(p["spec"].name for p in prepared)
    bar = tqdm(total=max(total, 1e-9), disable=not progress or not (n_refs or n_pts), dynamic_ncols=True, leave=True,
               desc=names if len(names) < 40 else f"{len(prepared)} sweeps",
               bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")
    futures: dict = {}
    done_refs = done_pts = 0

    def submit_point(task):
        j, p, cost, args = task
        futures[ex.submit(run_point, *args)] = ("point", task)

    try:
        for rp, task in sorted(ref_tasks.items(), key=lambda kv: -kv[1][2]):
            futures[ex.submit(run_reference, *task[3])] = ("reference", (rp, task))
        for task in sorted(ready, key=lambda t: -t[2]):
            submit_point(task)
        while futures:
            done, _ = ex.wait(list(futures))
            for fut in done:
                kind, info = futures.pop(fut)
                try:
                    _, err = fut.result()
                except Exception as e:  # a worker died (killed, out of memory): report, keep going
                    err = f"{type(e).__name__}: {e}"
                if kind == "reference":
                    rp, (j, p, cost, _) = info
                    done_refs += 1
                    bar.update(min(cost, max(bar.total - bar.n, 0.0)))
                    deps = waiting.pop(rp, [])
                    if err:
                        failures.append(f"reference for {prepared[j]['spec'].name}/{p.label}:\n{err}")
                        for t in deps:
                            prepared[t[0]]["failed"].append(t[1].label)
                            bar.update(min(t[2], max(bar.total - bar.n, 0.0)))
                    else:
                        for t in sorted(deps, key=lambda t: -t[2]):
                            submit_point(t)
                else:
                    j, p, cost, _ = info
                    done_pts += 1
                    bar.update(min(cost, max(bar.total - bar.n, 0.0)))
                    if err:
                        failures.append(f"point {prepared[j]['spec'].name}/{p.label}:\n{err}")
                        prepared[j]["failed"].append(p.label)
                    else:
                        prepared[j]["computed"].append(p.label)
                bar.set_postfix_str(f"references {done_refs}/{n_refs}, points {done_pts}/{n_pts}"
                                    + (f", {len(failures)} failed" if failures else ""))
    finally:
        bar.close()
        if own and ex is not None:
            ex.close()
    results = []
    for p in prepared:
        ds = None
        merged_path = p["out"] / "merged.nc"
        if merge and not p["failed"] and not failures:
            ds = merge_points(p["spec"], p["paths"])
            ds.attrs["wall_time_last_run"] = time.perf_counter() - t0
            _atomic_write(ds, merged_path, MERGED_ENGINE)
        results.append(SweepResult(spec=p["spec"], out_dir=p["out"], dataset=ds, merged_path=merged_path,
                                   computed=p["computed"], skipped=p["skipped"], references_computed=p["refs"],
                                   wall_time=time.perf_counter() - t0))
    if failures:
        n_done = sum(len(p["paths"]) - len(p["failed"]) for p in prepared)
        failed = ", ".join(f"{p['spec'].name}/{lab}" for p in prepared for lab in p["failed"])
        raise SweepError(f"{len(failures)} task(s) failed ({names}); the {n_done} finished points are kept on disk "
                         f"and a rerun computes only the rest.\nPoints not computed: {failed}\n"
                         f"First failure: {failures[0]}")
    return results


def run_sweep(spec: SweepSpec, out_dir, *, executor: str | int | Executor | None = None, ref_dir=None,
              progress: bool = True, merge: bool = True) -> SweepResult:
    """Run every missing point of ``spec`` into ``out_dir`` and merge all points into
    ``out_dir/merged.nc`` (see :func:`run_sweeps`)."""
    return run_sweeps([(spec, out_dir)], executor=executor, ref_dir=ref_dir, progress=progress, merge=merge)[0]
