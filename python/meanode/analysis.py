"""Analysis of merged sweep datasets (SPEC §7): per-point quantities, slope and rate-model fits
with bootstrap-over-seeds confidence intervals, the phase-diagram and residual-scale tables.

It reads only the merged datasets (:mod:`meanode.sweep`); :mod:`meanode.report` words its results.

Quantities (``X`` is ``f``, ``h``, ``f_eval`` or ``h_eval``; values at one step, default K):

* ``total_X``  RMS over seeds, samples and coordinates of ``X - X_ref`` (SPEC §7 "error")
* ``euler_X``  RMS of the seed mean of ``X - X_ref`` (the deterministic 1/L part)
* ``fluct_X``  RMS of the seed standard deviation of ``X`` (reference-free)
* ``noise_X``  ``fluct_X / sqrt(E)``: the statistical floor of ``euler_X``
* per-seed observables (``init_dev``, ``out_change``, ``unit_movement``, ``feature_change``,
  ``lin_dist``, ``preact_move``, ``err_X``): RMS over seeds.

Bootstrap: seeds are resampled with replacement (the same draw for every point of a sweep, since
the points share their seeds), the quantities recomputed and the fit redone; the 95% interval is
the 2.5–97.5 percentile range. It covers the seed noise, not a misspecified model (the ``t``
interval of the least-squares fit is given beside it).

Exclusions are explicit and listed: a point whose value is non-finite (a diverged seed makes
every aggregate NaN, SPEC §7/§8) or, for reference-based quantities, below ``floor_factor``
times the reference's own error estimate, does not enter a fit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .measure import fit_rate_model, loglog_slope, loglog_slopes

__all__ = ["stack", "param", "quantity", "FitSpec", "SlopeFit", "fit_slope", "RateFit", "fit_rate",
           "phase_table", "residual_table", "lazy_gap", "lazy_gap_fit", "local_slopes", "ref_floor", "labels",
           "diverged_points", "divergences", "reference_rows", "bootstrap_indices", "BOOTSTRAP"]

BOOTSTRAP = 200
_PER_SEED = ("init_dev", "out_change", "unit_movement", "feature_change", "lin_dist", "preact_move")


def stack(ds):
    """The computed points of a merged dataset along one dimension ``point`` (swept params become
    coordinates of ``point``)."""
    swept = json.loads(ds.attrs.get("swept", "[]"))
    if swept:
        st = ds.stack(point=swept)
        keep = np.flatnonzero(st["computed"].values.astype(bool))
        st = st.isel(point=keep)
    else:
        st = ds.expand_dims(point=[0])
    return st.transpose("point", ...)


def _spec(st) -> dict:
    return json.loads(st.attrs["spec"])


def param(st, name: str) -> np.ndarray:
    """Per-point values of a parameter: swept ones from the coordinates, fixed ones from the spec
    and the defaults stored in the dataset; ``LM`` = L*M, ``P`` = L*M*D, ``alpha_eff`` (the
    multiplier with the residual-scale exponent gamma, :func:`meanode.sweep.alpha_eff`)."""
    n = st.sizes["point"]
    if name == "LM":
        return param(st, "L") * param(st, "M")
    if name == "P":
        return param(st, "L") * param(st, "M") * param(st, "D")
    if name == "alpha_eff":
        from .sweep.spec import alpha_eff
        g = param(st, "gamma").astype(float)
        return np.array([alpha_eff(a, D, None if np.isnan(gi) else gi)
                         for a, D, gi in zip(param(st, "alpha"), param(st, "D"), g)])
    if name in st.coords and "point" in st[name].dims:
        return np.asarray(st[name].values)
    fixed = _spec(st)["fixed"]
    val = fixed.get(name, _defaults(st).get(name))
    if val is None:
        return np.full(n, np.nan)
    return np.full(n, val, dtype=object if isinstance(val, str) else float)


def _defaults(st) -> dict:
    """The sweep defaults the dataset was merged with (older files: the current ones)."""
    if "defaults" in st.attrs:
        return json.loads(st.attrs["defaults"])
    from .sweep import DEFAULTS
    return DEFAULTS


def _n_coords(st, i: int) -> int:
    return int(param(st, "D")[i])


def _per_point(st, var: str, i: int, step: int | None):
    """Array of ``var`` for point i (hidden coords trimmed to D), at ``step`` if it has one."""
    a = st[var].isel(point=i)
    if step is not None and "step" in a.dims:
        a = a.isel(step=step)
    if "coord" in a.dims:
        a = a.isel(coord=slice(0, _n_coords(st, i)))
    if "seed" in a.dims:
        a = a.transpose("seed", ...)
    return np.asarray(a.values, dtype=float)


def quantity(st, name: str, step: int = -1, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-point values ``(P,)`` of ``name`` at ``step`` and bootstrap replicates ``(B, P)`` for the
    seed resamplings ``idx (B, E)`` (None without ``idx`` or when not bootstrappable)."""
    P = st.sizes["point"]
    vals = np.full(P, np.nan)
    boot = None if idx is None else np.full((idx.shape[0], P), np.nan)
    kind, _, X = name.partition("_")
    if name in _PER_SEED or kind == "err":
        var = name
        if var not in st:
            return vals, boot
        for i in range(P):
            v = _per_point(st, var, i, step)
            vals[i] = np.sqrt(np.mean(v ** 2))
            if idx is not None:
                boot[:, i] = np.sqrt(np.mean(v[idx] ** 2, axis=1))
        return vals, boot
    if kind not in ("total", "euler", "fluct", "noise"):
        raise ValueError(f"unknown quantity {name!r}")
    for i in range(P):
        raw = X in st
        if raw:
            x = _per_point(st, X, i, step)  # (E, n, c)
            raw = not np.all(np.isnan(x))  # not stored for this point (e.g. h at large D): use aggregates
        if kind == "total":
            if f"err_{X}" not in st:
                continue
            e = _per_point(st, f"err_{X}", i, step)
            vals[i] = np.sqrt(np.mean(e ** 2))
            if idx is not None:
                boot[:, i] = np.sqrt(np.mean(e[idx] ** 2, axis=1))
            continue
        if kind == "euler":
            if f"{X}_ref" not in st or not raw:
                if f"euler_{X}" in st:
                    vals[i] = float(st[f"euler_{X}"].isel(point=i, step=step))
                continue
            d = x - _per_point(st, f"{X}_ref", i, step)[None]
            vals[i] = np.sqrt(np.mean(d.mean(axis=0) ** 2))
            if idx is not None:
                boot[:, i] = np.sqrt(np.mean(d[idx].mean(axis=1) ** 2, axis=tuple(range(1, d.ndim))))
            continue
        # fluct / noise: reference-free
        E = st.sizes["seed"]
        if not raw:
            if f"fluct_{X}" in st:
                vals[i] = float(st[f"fluct_{X}"].isel(point=i, step=step))
                if kind == "noise":
                    vals[i] /= math.sqrt(E)
            continue
        scale = 1.0 / math.sqrt(x.shape[0]) if kind == "noise" else 1.0
        vals[i] = np.sqrt(np.mean(x.var(axis=0, ddof=1))) * scale
        if idx is not None:
            boot[:, i] = np.sqrt(np.mean(x[idx].var(axis=1, ddof=1), axis=tuple(range(1, x.ndim)))) * scale
    return vals, boot


def ref_floor(st, quantity: str = "total_f") -> np.ndarray:
    """Per-point error estimate of the reference in the space of ``quantity``: the hidden-state
    estimate (``ref_h_error``) for ``*_h*`` quantities, the output one (``ref_error``) otherwise;
    NaN without a reference."""
    name = "ref_h_error" if "_h" in quantity and "ref_h_error" in st else "ref_error"
    if name not in st:
        return np.full(st.sizes["point"], np.nan)
    return np.asarray(st[name].values, dtype=float)


def labels(st) -> list[str]:
    swept = json.loads(st.attrs.get("swept", "[]"))
    out = []
    for i in range(st.sizes["point"]):
        parts = []
        for k in swept:
            v = st[k].values[i]
            parts.append(f"{k}={v:g}" if isinstance(v, (float, np.floating)) else f"{k}={v}")
        out.append(",".join(parts) or "point")
    return out


def diverged_points(st) -> np.ndarray:
    if "diverged" not in st:
        return np.zeros(st.sizes["point"], bool)
    d = np.asarray(st["diverged"].values)
    return (d == 1).any(axis=tuple(range(1, d.ndim))) if d.ndim > 1 else d == 1


def bootstrap_indices(E: int, B: int | None = None, seed: int = 0) -> np.ndarray:
    B = BOOTSTRAP if B is None else B
    rng = np.random.default_rng(seed)
    return rng.integers(0, E, size=(B, E))


@dataclass(frozen=True)
class FitSpec:
    """A log-log slope to fit: ``quantity`` (see :func:`quantity`) against parameter ``x`` over the
    points of sweep ``sweep`` matching ``where``, inside a data-driven window.

    ``where``: (param, value) pairs; a value is a number, a (lo, hi) range, ``"min"`` / ``"max"``
    (the smallest / largest value of that parameter in the sweep) or ``(">=", other)`` (at least
    the point's own ``other`` parameter).
    The window (stated in the report, the points used and excluded listed):
    * ``floor``: the value must be at least ``floor_factor`` x the reference's own error estimate
      (in the quantity's space: hidden quantities use the hidden-state estimate);
    * ``dominance="fluct"``: the seed fluctuation (the sqrt(D/(L M)) term) must be at least
      ``dominance_factor`` x the seed-mean error (the deterministic terms: Euler, alpha gaps);
      ``dominance="euler"``: the seed-mean error must be at least ``dominance_factor`` x its own
      seed noise ``fluct / sqrt(E)``;
    * ``last=n``: of what remains, the ``n`` points with the largest x (asymptotic laws).
    """

    key: str
    title: str
    sweep: str
    quantity: str
    x: str
    predicted: float | None
    where: tuple = ()
    step: int = -1
    floor: bool = True
    floor_factor: float = 2.0
    dominance: str | None = None
    dominance_factor: float = 2.0
    last: int | None = None
    note: str = ""

    def window(self) -> str:
        """The window rule in words."""
        parts = []
        if self.where:
            parts.append(", ".join(f"{k} {_where_text(v)}" for k, v in self.where))
        if self.floor:
            parts.append(f">= {self.floor_factor:g}x the reference's own estimate")
        if self.dominance == "fluct":
            parts.append(f"seed fluctuation >= {self.dominance_factor:g}x the seed-mean error")
        elif self.dominance == "euler":
            parts.append(f"seed-mean error >= {self.dominance_factor:g}x its seed noise")
        if self.last:
            parts.append(f"the {self.last} largest {self.x}")
        return "; ".join(parts) or "all points"


def _where_text(v) -> str:
    if isinstance(v, str):
        return f"= its {v}imum"
    if isinstance(v, tuple) and len(v) == 2 and v[0] == ">=":
        return f">= {v[1]}"
    if isinstance(v, tuple):
        return f"in [{v[0]:g}, {v[1]:g}]"
    return f"= {v:g}" if isinstance(v, (int, float)) else f"= {v}"


@dataclass
class SlopeFit:
    spec: FitSpec
    slope: float
    ci_boot: tuple[float, float]
    ci_t: tuple[float, float]
    intercept: float
    n_used: int
    n_total: int
    x: np.ndarray
    y: np.ndarray
    used: np.ndarray
    excluded: list[str] = field(default_factory=list)
    used_labels: list[str] = field(default_factory=list)

    @property
    def deviation(self) -> float:
        return float("nan") if self.spec.predicted is None else self.slope - self.spec.predicted

    @property
    def covers_prediction(self) -> bool | None:
        """Whether the bootstrap interval (else the t interval) contains the prediction."""
        ci = self.ci_boot if all(np.isfinite(self.ci_boot)) else self.ci_t
        if self.spec.predicted is None or not all(np.isfinite(ci)):
            return None
        return bool(ci[0] <= self.spec.predicted <= ci[1])


def _match(st, where) -> np.ndarray:
    m = np.ones(st.sizes["point"], bool)
    for k, v in where:
        vals = param(st, k).astype(float)
        if isinstance(v, str):
            m &= vals == (np.nanmin(vals) if v == "min" else np.nanmax(vals))
        elif isinstance(v, tuple) and len(v) == 2 and v[0] == ">=":
            m &= vals >= param(st, v[1]).astype(float)
        elif isinstance(v, tuple):
            m &= (vals >= v[0]) & (vals <= v[1])
        else:
            m &= vals == v
    return m


def fit_slope(st, fs: FitSpec, B: int | None = None, seed: int = 0) -> SlopeFit:
    """Fit ``log y = c + slope log x`` with bootstrap and t intervals (see the module docstring),
    over the window of ``fs`` (:class:`FitSpec`)."""
    E = st.sizes["seed"]
    idx = bootstrap_indices(E, B, seed) if E > 1 else None
    y, yb = quantity(st, fs.quantity, fs.step, idx)
    x = param(st, fs.x).astype(float)
    sel = _match(st, fs.where)
    labs = labels(st)
    div = diverged_points(st)
    used = sel.copy()
    excluded = []
    floor = ref_floor(st, fs.quantity)
    X = fs.quantity.partition("_")[2]
    fluct = euler = noise = None
    if fs.dominance == "fluct":
        fluct, euler = quantity(st, "fluct_" + X, fs.step)[0], quantity(st, "euler_" + X, fs.step)[0]
    elif fs.dominance == "euler":
        euler, noise = quantity(st, "euler_" + X, fs.step)[0], quantity(st, "noise_" + X, fs.step)[0]
    for i in np.flatnonzero(sel):
        if div[i] or not np.isfinite(y[i]):
            used[i] = False
            excluded.append(f"{labs[i]}: diverged / non-finite")
        elif fs.floor and np.isfinite(floor[i]) and y[i] < fs.floor_factor * floor[i]:
            used[i] = False
            excluded.append(f"{labs[i]}: {y[i]:.2e} below {fs.floor_factor:g} x reference error {floor[i]:.1e}")
        elif fluct is not None and not fluct[i] >= fs.dominance_factor * euler[i]:
            used[i] = False
            excluded.append(f"{labs[i]}: seed fluctuation {fluct[i]:.2e} below {fs.dominance_factor:g} x seed-mean "
                            f"error {euler[i]:.2e}")
        elif noise is not None and not euler[i] >= fs.dominance_factor * noise[i]:
            used[i] = False
            excluded.append(f"{labs[i]}: {y[i]:.2e} below {fs.dominance_factor:g} x seed noise {noise[i]:.1e}")
    if fs.last is not None and used.sum() > fs.last:
        order = np.flatnonzero(used)[np.argsort(x[used])]
        for i in order[: len(order) - fs.last]:
            used[i] = False
            excluded.append(f"{labs[i]}: not among the {fs.last} largest {fs.x}")
    n_used = int(used.sum())
    used_labels = [labs[i] for i in np.flatnonzero(used)]
    nan2 = (float("nan"), float("nan"))
    if n_used < 2:
        return SlopeFit(fs, float("nan"), nan2, nan2, float("nan"), n_used, int(sel.sum()), x[sel], y[sel], used[sel],
                        excluded, used_labels)
    fit = loglog_slope(x[used], y[used])
    ci_b = nan2
    if yb is not None:
        slopes = loglog_slopes(x[used], yb[:, used])
        slopes = slopes[np.isfinite(slopes)]
        if len(slopes) >= 10:
            ci_b = (float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5)))
    return SlopeFit(fs, fit.slope, ci_b, fit.ci, fit.intercept, n_used, int(sel.sum()), x[sel], y[sel], used[sel],
                    excluded, used_labels)


@dataclass
class RateFit:
    """``err ~ a/L + b sqrt(D/(L M))`` (non-negative least squares) with bootstrap intervals."""

    a: float
    b: float
    ci_a: tuple[float, float]
    ci_b: tuple[float, float]
    rel_rms_residual: float
    n: int
    table: list[tuple]  # (label, L, M, D, measured, model)


def fit_rate(st, qty: str = "total_f", step: int = -1, where=(), B: int | None = None, floor_factor: float = 2.0) -> RateFit:
    E = st.sizes["seed"]
    idx = bootstrap_indices(E, B) if E > 1 else None
    y, yb = quantity(st, qty, step, idx)
    L, M, D = (param(st, k).astype(float) for k in ("L", "M", "D"))
    m = _match(st, where) & np.isfinite(y) & ~diverged_points(st)
    floor = ref_floor(st, qty)
    m &= ~(np.isfinite(floor) & (y < floor_factor * floor))
    a, b = fit_rate_model(L[m], M[m], D[m], y[m])
    model = a / L + b * np.sqrt(D / (L * M))
    cia = cib = (float("nan"), float("nan"))
    if yb is not None:
        ab = np.array([fit_rate_model(L[m], M[m], D[m], yb[j, m]) for j in range(yb.shape[0])
                       if np.all(np.isfinite(yb[j, m]))])
        if len(ab) >= 10:
            cia = tuple(float(v) for v in np.percentile(ab[:, 0], [2.5, 97.5]))
            cib = tuple(float(v) for v in np.percentile(ab[:, 1], [2.5, 97.5]))
    rel = float(np.sqrt(np.mean(((y[m] - model[m]) / y[m]) ** 2)))
    labs = labels(st)
    table = [(labs[i], int(L[i]), int(M[i]), int(D[i]), float(y[i]), float(model[i])) for i in np.flatnonzero(m)]
    return RateFit(a, b, cia, cib, rel, int(m.sum()), table)


# --- phase diagram -------------------------------------------------------------------------------

def phase_table(st, margin: float = 0.15) -> list[dict]:
    """One row per (a, b) cell: measured exponents vs L*M, diverged fraction, measured and
    predicted regimes, predicted exponents."""
    from .phase import OBSERVABLES, classify, predicted_exponents, predicted_regime
    a_all, b_all = param(st, "a").astype(float), param(st, "b").astype(float)
    LM = param(st, "LM").astype(float)
    rows = []
    vals = {o: quantity(st, o)[0] for o in OBSERVABLES}
    div = np.asarray(st["diverged"].values) == 1  # (P, E)
    for a, b in sorted({(x, y) for x, y in zip(a_all, b_all)}):
        m = (a_all == a) & (b_all == b)
        order = np.argsort(LM[m])
        x = LM[m][order]
        exps, errs = {}, {}
        for o in OBSERVABLES:
            y = vals[o][m][order]
            if len(x) >= 2 and np.all(np.isfinite(y)) and np.all(y > 0):
                f = loglog_slope(x, y)
                exps[o], errs[o] = f.slope, f.stderr
            else:
                exps[o], errs[o] = float("nan"), float("nan")
        dfrac = float(div[m].mean())
        init_level = float(vals["init_dev"][m][order][-1])
        c = classify(exps, dfrac, margin, init_level=init_level)
        rows.append(dict(a=float(a), b=float(b), exponents=exps, stderr=errs, diverged_fraction=dfrac,
                         regime=c.regime, reason=c.reason, predicted=predicted_regime(a, b),
                         predicted_exponents=predicted_exponents(a, b), sizes=x.tolist()))
    return rows


def residual_table(st, B: int | None = None) -> list[dict]:
    """Exponents vs D of unit movement, pre-activation movement and feature movement for each
    residual-scale exponent gamma (predicted -gamma, 1/2 - gamma, 0)."""
    out = []
    g_all = param(st, "gamma").astype(float)
    for g in sorted(set(g_all[np.isfinite(g_all)])):
        row = dict(gamma=float(g), fits={})
        for q, pred in (("unit_movement", -g), ("preact_move", 0.5 - g), ("feature_change", 0.0)):
            if q not in st:
                continue
            fs = FitSpec(f"residual-{q}-{g}", q, "residual", q, "D", pred, where=(("gamma", g),), floor=False)
            row["fits"][q] = fit_slope(st, fs, B)
        out.append(row)
    return out


def lazy_gap(st_gap, st_lazy, step: int = -1) -> dict:
    """The alpha-Mean-ODE's RMS output gap to the lazy ODE per alpha, with the floor (sum of the
    two references' error estimates)."""
    a_gap = param(st_gap, "alpha").astype(float)
    alphas = sorted(set(a_gap))
    lazy_f = np.asarray(st_lazy["f_ref"].isel(point=0, step=step).values)
    lazy_err = float(st_lazy["ref_error"].isel(point=0))
    gaps, floors = [], []
    for a in alphas:
        i = int(np.flatnonzero(a_gap == a)[0])
        fr = np.asarray(st_gap["f_ref"].isel(point=i, step=step).values)
        gaps.append(float(np.sqrt(np.mean((fr - lazy_f) ** 2))))
        floors.append(float(st_gap["ref_error"].isel(point=i)) + lazy_err)
    return dict(alpha=np.array(alphas), gap=np.array(gaps), floor=np.array(floors))


def lazy_gap_fit(gap: dict, last: int = 3, floor_factor: float = 2.0) -> SlopeFit:
    """Slope of the alpha-Mean-ODE's gap to the lazy ODE vs alpha (predicted -2 asymptotically,
    SPEC §4.2), over the ``last`` largest alphas whose gap is at least ``floor_factor`` x the floor
    (the two references' summed estimates); no seeds, so only the t interval."""
    a, g, fl = gap["alpha"], gap["gap"], gap["floor"]
    above = g >= floor_factor * fl
    order = np.flatnonzero(above)[np.argsort(a[above])]
    use = np.zeros(a.shape, bool)
    use[order[-last:]] = True
    fs = FitSpec("lazy_gap_slope", "alpha-Mean-ODE gap to the lazy ODE vs alpha", "lazy_gap + lazy", "gap", "alpha",
                 -2.0, floor=True, floor_factor=floor_factor, last=last)
    excl = [f"alpha={x:g}: gap {y:.1e} below {floor_factor:g} x the floor {f:.1e}" for x, y, f in zip(a, g, fl)
            if not y >= floor_factor * f]
    excl += [f"alpha={x:g}: not among the {last} largest alphas above the floor" for x, ok, u in zip(a, above, use)
             if ok and not u]
    nan2 = (float("nan"), float("nan"))
    labs = [f"alpha={x:g}" for x in a[use]]
    if use.sum() < 2:
        return SlopeFit(fs, float("nan"), nan2, nan2, float("nan"), int(use.sum()), len(a), a, g, use, excl, labs)
    f = loglog_slope(a[use], g[use])
    return SlopeFit(fs, f.slope, nan2, f.ci, f.intercept, int(use.sum()), len(a), a, g, use, excl, labs)


def local_slopes(x, y) -> np.ndarray:
    """Slopes of log y vs log x between successive points (sorted by x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    o = np.argsort(x)
    x, y = x[o], y[o]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.diff(np.log(y)) / np.diff(np.log(x))


def divergences(role: str, ds) -> list[str]:
    """One line per point of a merged dataset with diverged seeds: which, and at which steps."""
    st = stack(ds)
    d = np.asarray(st["diverged"].values) == 1
    steps = np.asarray(st["diverged_step"].values)
    labs = labels(st)
    seeds = st["seed"].values
    out = []
    for i in np.flatnonzero(d.any(axis=1)):
        bad = np.flatnonzero(d[i])
        if len(bad) <= 3:
            ss = ", ".join(f"seed {seeds[e]} at step {steps[i, e]}" for e in bad)
        else:
            ss = f"{len(bad)}/{len(seeds)} seeds, at steps {int(steps[i, bad].min())}-{int(steps[i, bad].max())}"
        out.append(f"{role} / {labs[i]}: {ss}")
    return out


def reference_rows(ref_dir: Path) -> list[dict]:
    """What every cached reference says of itself: method, settings, its error estimates and their
    norm, the tolerance it was asked for and whether it met it, its checks, its time."""
    import xarray as xr
    out = []
    for p in sorted(Path(ref_dir).glob("ref__*.nc")):
        with xr.open_dataset(p, engine="scipy") as ds:
            a = ds.attrs
            ident = json.loads(a["identity"])
            keys = ("activation", "D", "alpha", "eta", "K", "level", "L", "M")
            settings = ", ".join(f"{k}={ident[k]}" for k in keys if ident.get(k) is not None)
            out.append(dict(file=p.name, method=str(a["method"]), settings=settings, status=str(a.get("status", "ok")),
                            error_estimate=float(a["error_estimate"]),
                            h_error_estimate=float(a.get("h_error_estimate", float("nan"))),
                            norm=str(a.get("error_norm", "max-abs")), tol=float(a.get("tol", float("nan"))),
                            tol_met=int(a.get("tol_met", -1)), verified=bool(int(a.get("verified", 1))),
                            warnings=json.loads(a.get("warnings", "[]")), reason=str(a.get("reason", "")),
                            wall_time=float(a["wall_time"])))
    return out


# --- large D (SPEC §6, the follow-up's linear experiment) -------------------------------------------

#: (name, variable, what, reference) of the large-D errors a ``measure.large_d`` sweep records
LARGE_D_ERRORS = (("hidden (max over depth of the mean abs(h_d - H_d))", "ld_err_hd"),
                  ("hidden (RMS at s = 1)", "ld_err_h"), ("output (RMS)", "ld_err_f"))
#: the same errors' short names, for figure legends
LARGE_D_LABELS = {"ld_err_hd": "hidden (max over depth)", "ld_err_h": "hidden (RMS at s = 1)", "ld_err_f": "output (RMS)"}


def _large_d_table(st, var: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(L, M, D, err (P, S), excluded)``: the shapes (L, M, D) with every seed of every embedding
    (S = seeds x embeddings); shapes with a non-finite (diverged) error are left out and named."""
    L, M, D = (param(st, k).astype(float) for k in ("L", "M", "D"))
    shapes = sorted(set(zip(L, M, D)))
    rows, keep, excluded = [], [], []
    vals = np.asarray(st[var].values, dtype=float)  # (point, seed)
    for shape in shapes:
        sel = np.flatnonzero((L == shape[0]) & (M == shape[1]) & (D == shape[2]))
        e = vals[sel].reshape(-1)
        if not np.all(np.isfinite(e)) or np.any(e <= 0):
            excluded.append(f"L={shape[0]:g},M={shape[1]:g},D={shape[2]:g}: {int(np.sum(~np.isfinite(e)))} of "
                            f"{e.size} runs diverged / non-finite")
            continue
        rows.append(e)
        keep.append(shape)
    if not keep:
        return np.array([]), np.array([]), np.array([]), np.zeros((0, 0)), excluded
    width = min(len(r) for r in rows)
    k = np.array(keep)
    return k[:, 0], k[:, 1], k[:, 2], np.stack([r[:width] for r in rows]), excluded


def large_d_analysis(st, n_boot: int = 400) -> dict:
    """The three-term split of SPEC §6 with exact references: the fits
    ``err_h^2 = a D/(LM) + b/D + c/L^2`` and ``err_f^2 = a' (D/(LM))^2 + b'/D`` (finite vs D = infinity,
    bootstrap CIs over seeds and embeddings), the finite-vs-closure terms, the closure-vs-infinity
    gap vs D (predicted -1/2), and the best-shape slopes in P = L M D (-1/6 hidden, -1/5 output)."""
    from . import large_d as ld
    out: dict = dict(models=[], gap=[], p_slopes=[], excluded=[])
    for title, var in LARGE_D_ERRORS:
        L, M, D, e, excl = _large_d_table(st, f"{var}_inf")
        out["excluded"] += [f"{title}: {x}" for x in excl]
        if e.shape[0] < 4:
            continue
        fit = (ld.fit_output_model if var == "ld_err_f" else ld.fit_hidden_model)(L, M, D, e, n_boot=n_boot)
        out["models"].append(dict(title=f"{title}, finite vs D = infinity", fit=fit, n=e.shape[0], seeds=e.shape[1]))
        Lc, Mc, Dc, ec, _ = _large_d_table(st, f"{var}_cl")
        if ec.shape[0] >= 3:
            if var == "ld_err_f":
                F, names = np.stack([(Dc / (Lc * Mc)) ** 2, 1.0 / Lc ** 2], 1), ("a' [(D/(LM))^2]", "c' [1/L^2]")
            else:
                F, names = np.stack([Dc / (Lc * Mc), 1.0 / Lc ** 2], 1), ("a [D/(LM)]", "c [1/L^2]")
            fc = ld.fit_error_model(F, ec, names, n_boot=n_boot)
            out["models"].append(dict(title=f"{title}, finite vs the fixed-D closure", fit=fc, n=ec.shape[0],
                                      seeds=ec.shape[1]))
        P = L * M * D
        pred = -0.2 if var == "ld_err_f" else -1 / 6
        try:
            env = ld.envelope_slope(P, np.sqrt(np.mean(e ** 2, axis=1)))
            out["p_slopes"].append(dict(title=title, var=var, fit=env, predicted=pred,
                                        decades=float(np.log10(P.max() / P.min()))))
        except ValueError as err:
            out["p_slopes"].append(dict(title=title, var=var, fit=None, predicted=pred, why=str(err)))
    gvar = {"ld_err_hd": "ld_gap_hd", "ld_err_h": "ld_gap_h", "ld_err_f": "ld_gap_f"}
    D_all = param(st, "D").astype(float)
    for title, var in LARGE_D_ERRORS:
        g = np.asarray(st[gvar[var]].values, dtype=float)
        Ds = sorted(set(D_all))
        rms = np.array([np.sqrt(np.mean(g[D_all == d] ** 2)) for d in Ds])
        if len(Ds) >= 2 and np.all(np.isfinite(rms)) and np.all(rms > 0):
            out["gap"].append(dict(title=title, var=var, D=np.array(Ds), gap=rms, fit=loglog_slope(np.array(Ds), rms),
                                   predicted=-0.5))
    return out


def split_ratios(st, qty: str = "total_f") -> tuple[list[tuple[float, float, float, float]], list[float]]:
    """At each L*M with both: ``(LM, deep, square, deep / square)`` for the one-unit-per-layer split
    (M = 1) and the square one (L = M, or the nearest); second, the L*M left out because a seed of
    either split diverged or its value is not finite."""
    y, _ = quantity(st, qty)
    L, M = param(st, "L").astype(float), param(st, "M").astype(float)
    bad = diverged_points(st) | ~np.isfinite(y)
    out, skipped = [], []
    for lm in sorted(set(L * M)):
        sel = np.flatnonzero(L * M == lm)
        deep = [i for i in sel if M[i] == 1]
        sq = sorted(sel, key=lambda i: abs(np.log(L[i] / M[i])))
        if deep and sq and sq[0] != deep[0]:
            if bad[deep[0]] or bad[sq[0]]:
                skipped.append(float(lm))
                continue
            out.append((lm, float(y[deep[0]]), float(y[sq[0]]), float(y[deep[0]] / y[sq[0]])))
    return out, skipped
