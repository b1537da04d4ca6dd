"""Sweep specifications: a frozen :class:`SweepSpec` (YAML or Python) of swept parameters, fixed
settings, seeds, reference and measurements; validated once, in time linear in the points.

See :mod:`meanode.sweep` for the file format and the meaning of every field.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .._checks import integer, real

__all__ = ["FORMAT", "SWEEPABLE", "DEFAULTS", "FIXED_ONLY", "SweepSpecError", "SweepError", "ReferenceSpec",
           "MeasureSpec", "Point", "SweepSpec", "alpha_eff", "load_yaml"]

FORMAT = "meanode-sweep-point/1"
SWEEPABLE = ("L", "M", "D", "alpha", "eta", "a", "b", "activation", "seed", "gamma", "embed_seed", "data_seed")
#: the blocks a sweep can train (``fixed: {block: ...}``) and the data sets (``fixed: {data: ...}``)
BLOCKS = ("2lp", "attention")
DATA = ("default", "linear")
DEFAULTS: dict[str, Any] = dict(
    L=None, M=None, D=2, alpha=1.0, eta=0.2, a=1.0, b=1.0, activation="tanh", gamma=None,
    K=3, N=10, N_eval=0, d_in=5, d_out=5, data_seed=0, embed_seed=0, D_max=None,
    divergence_threshold=1e6, device="cpu", dtype="float64", block="2lp", d_head=1, T=3, data="default",
)
FIXED_ONLY = tuple(k for k in DEFAULTS if k not in SWEEPABLE)
_POS_INT = {"L", "M", "D", "N", "d_in", "d_out", "D_max", "d_head", "T"}
_NONNEG_INT = {"K", "N_eval", "data_seed", "embed_seed", "seed"}
_REAL = {"a", "b", "gamma"}
_POS_REAL = {"alpha", "divergence_threshold"}
_NONNEG_REAL = {"eta"}
_REF_METHODS = ("auto", "quadrature", "closure", "lazy", "network", "none")


class SweepSpecError(ValueError):
    """A sweep description is invalid; the message names the offending field."""


class SweepError(RuntimeError):
    """Some points of a sweep failed; the completed ones are on disk and a rerun resumes."""


#: the longest message of a SweepSpecError (a bad value's repr can be huge)
MAX_MESSAGE = 400


def _err(source: str, fieldname: str, msg: str) -> SweepSpecError:
    text = f"{source}: {fieldname}: {msg}"
    return SweepSpecError(text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "...")


def _check_value(source: str, fieldname: str, key: str, value):
    """Validate and normalise one parameter value with the package's checks; raise naming ``fieldname``."""
    try:
        if key in _POS_INT | _NONNEG_INT:
            return integer(key, value, 1 if key in _POS_INT else 0, integral_float=True)
        if key in _REAL | _POS_REAL | _NONNEG_REAL:
            minimum = None if key in _REAL else 0.0
            return real(key, value, minimum=minimum, strict=key in _POS_REAL)
    except (TypeError, ValueError) as e:
        raise _err(source, fieldname, str(e)) from None
    if key == "activation":
        from ..activations import ACTIVATIONS
        if not isinstance(value, str) or value not in ACTIVATIONS:
            raise _err(source, fieldname, f"activation must be one of {sorted(ACTIVATIONS)}, got {value!r}")
        return value
    if key == "device":
        if not isinstance(value, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?", value):
            raise _err(source, fieldname, f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {value!r}")
        return value
    if key == "block":
        if value not in BLOCKS:
            raise _err(source, fieldname, f"block must be one of {list(BLOCKS)}, got {value!r}")
        return value
    if key == "data":
        if value not in DATA:
            raise _err(source, fieldname, f"data must be one of {list(DATA)} (linear: the follow-up paper's "
                                          f"large-D setup, meanode.large_d), got {value!r}")
        return value
    if key == "dtype":
        if value not in ("float64", "float32"):
            raise _err(source, fieldname, f"dtype must be 'float64' or 'float32', got {value!r}")
        return value
    raise _err(source, fieldname, f"unknown parameter {key!r}")


def _checked(source: str, fieldname: str, fn, *args, **kwargs):
    """``fn(*args)`` of :mod:`meanode._checks`, its error re-raised as a SweepSpecError naming ``fieldname``."""
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise _err(source, fieldname, str(e)) from None


def alpha_eff(alpha: float, D: int, gamma: float | None) -> float:
    """The multiplier a point runs with for the residual scale ``D^gamma / (L M)`` (module docstring of
    :mod:`meanode.sweep`): ``alpha D^(gamma - 1/2)``; ``gamma = None`` (or 1/2) is SPEC §1's ``alpha``."""
    return alpha * (float(D) ** (gamma - 0.5) if gamma is not None else 1.0)


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
    tol: accuracy asked of a quadrature reference (``tol=`` of the limit): a number, ``"auto"`` (the
    default: 1/20 of the smallest finite error the reference will be compared with, predicted from
    L*M before training, :func:`meanode.sweep.references.auto_tolerance`) or None (the rule's
    levels as given). max_time: seconds the reference may take to meet it (then it says why not).
    depth_nodes, rtol, atol: limit solver settings (rtol, atol None: the limit's, which follow ``tol``,
    :func:`meanode.limit.api.solver_tolerances`).
    L, M, D, seeds: the network reference (method ``network``; D defaults to the sweep's D_max).
    """

    method: str = "auto"
    level: int | None = None
    coarse: int | None = None
    rule: str | None = None
    depth_nodes: int | str = "auto"
    rtol: float | None = None
    atol: float | None = None
    L: int | None = None
    M: int | None = None
    D: int | None = None
    seeds: tuple[int, ...] = ()
    tol: float | str | None = "auto"
    max_time: float = 600.0

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
                kw[k] = _checked(source, f"reference.{k}", integer, k, kw[k], 1, integral_float=True)
        if "depth_nodes" in kw and kw["depth_nodes"] != "auto":
            kw["depth_nodes"] = _checked(source, "reference.depth_nodes", integer, "depth_nodes (or 'auto')",
                                         kw["depth_nodes"], 3)
        for k in ("rtol", "atol", "max_time"):
            if k in kw and (kw[k] is not None or k == "max_time"):
                kw[k] = _checked(source, f"reference.{k}", real, k, kw[k], minimum=0.0, strict=True)
        if kw.get("tol") not in (None, "auto"):
            kw["tol"] = _checked(source, "reference.tol", real, "tol (a number, 'auto' or null)", kw["tol"],
                                 minimum=0.0, strict=True)
        from ..limit import RULES

        if kw.get("rule") is not None and kw["rule"] != "auto" and kw["rule"] not in RULES:
            raise _err(source, "reference.rule", f"must be one of {['auto', *RULES]}, got {kw['rule']!r}")
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
    large_d: the large-D errors of SPEC §6 against the exact references of the identity activation
    (:mod:`meanode.large_d`): the fixed-D closure of the point's embedding and the D = infinity limit,
    hidden (max over depth of the mean over coordinates, and RMS at s = 1) and output, at the last step.
    """

    store_h: bool | str = "auto"
    linearisation: bool = False
    preactivation: bool = False
    large_d: bool = False

    @classmethod
    def from_dict(cls, d: Mapping | None, source: str = "<spec>") -> "MeasureSpec":
        if d is None or isinstance(d, MeasureSpec):
            return cls() if d is None else d
        _check_fields(cls, d, source, "measure")
        if "store_h" in d and d["store_h"] not in (True, False, "auto"):
            raise _err(source, "measure.store_h", f"must be true, false or auto, got {d['store_h']!r}")
        for k in ("linearisation", "preactivation", "large_d"):
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
        """Read and validate a sweep file (see :func:`load_yaml` for the YAML rules)."""
        return cls.from_dict(load_yaml(path), source=str(path))

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

    @cached_property
    def D_max(self) -> int:
        """The D at which the coupled embeddings are drawn: ``fixed.D_max``, else the largest D of
        the points (computed once: validation and settings stay linear in the number of points)."""
        f = dict(self.fixed)
        if f.get("D_max") is not None:
            return f["D_max"]
        Ds = {dict(p.params).get("D", f.get("D", DEFAULTS["D"])) for p in self.points()}
        return max(Ds)

    @cached_property
    def _base_settings(self) -> dict:
        s = dict(DEFAULTS)
        s.update(dict(self.fixed))
        return s

    def settings(self, point: Point) -> dict:
        """All settings of a point: defaults, then fixed, then the point's values; ``D_max``
        resolved; ``alpha_eff`` (:func:`alpha_eff`)."""
        s = dict(self._base_settings)
        s.update(point.as_dict())
        s.pop("seed", None)
        s["D_max"] = self.D_max
        s["alpha_eff"] = alpha_eff(s["alpha"], s["D"], s.get("gamma"))
        return s

    def point_seeds(self, point: Point) -> tuple[int, ...]:
        p = point.as_dict()
        return (p["seed"],) if "seed" in p else self.seeds

    def _validate_points(self, source: str) -> None:
        D_max = self.D_max
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
            if s["block"] == "attention" and method in ("closure", "lazy", "network"):
                raise _err(source, "reference.method", f"method {method!r} is for the 2LP block; an attention "
                           "block takes quadrature (or auto) or none")
            if s["data"] == "linear" and (s["block"] != "2lp" or s["activation"] != "identity"):
                raise _err(source, "fixed.data", "data 'linear' is the follow-up paper's identity experiment: "
                           "activation identity, block 2lp")
            if self.measure.large_d and s["data"] != "linear":
                raise _err(source, "measure.large_d", "large_d errors need fixed: {data: linear}")
            if method == "closure" and s["activation"] != "identity":
                raise _err(source, "reference.method", "closure is exact only for activation 'identity'")
            if s["block"] == "2lp" and method in ("quadrature", "auto") and s["activation"] != "identity":
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




#: largest sweep file read (a sweep description is a few kB; this bounds what a bad file can cost)
MAX_YAML_BYTES = 1 << 20


def _yaml_loader():
    """A safe loader that reads ``1e-1`` as a float (YAML 1.2; PyYAML's 1.1 resolver wants ``1.0e-1``)
    and refuses anchors and aliases (a sweep file needs none, and aliases can expand exponentially)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in sweep files",
                                                  event.start_mark)
            return super().compose_node(parent, index)

    float_re = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FloatPattern(float_re), list("-+0123456789."))
    return Loader


class _FloatPattern:
    """A resolver pattern: numbers with an exponent or a point that YAML 1.1 leaves as strings."""

    def __init__(self, rx):
        self.rx = rx

    def match(self, text: str) -> bool:
        return bool(self.rx.match(text)) and any(c in text for c in ".eE") and any(c.isdigit() for c in text)


def load_yaml(path: str | os.PathLike):
    """The mapping of a sweep file; every error a :class:`SweepSpecError` of one line naming the file."""
    import yaml
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise SweepSpecError(f"{path}: {size} bytes; a sweep file is at most {MAX_YAML_BYTES} bytes")
        text = path.read_text()
    except OSError as e:
        raise SweepSpecError(f"{path}: cannot read the sweep file ({e.strerror})") from None
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SweepSpecError(f"{path}: not valid YAML{at}: {what}") from None

