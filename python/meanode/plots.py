"""Figures of the scaling measurements (matplotlib, Agg canvas, PNG and PDF, no LaTeX).

Every function takes merged sweep datasets (:func:`meanode.sweep.load_sweep`), draws the
measured points, the predicted slope beside them (dashed) and the reference's own error
estimate as a floor (dotted, shaded below), and writes ``NAME.png`` and ``NAME.pdf`` into
``out_dir``; it returns the written paths. Error bars are the 16–84% bootstrap-over-seeds
range. Nothing here touches pyplot's global state: figures are plain ``Figure`` objects.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from . import analysis as R
from .report import fmt_predicted

__all__ = ["STYLE", "error_vs_L", "hidden_width", "euler_fluctuation", "sqrt_D", "residual_scale", "lazy",
           "limit_check", "phase_diagram", "shapes_MD", "shapes_P", "attention", "large_d"]

STYLE = {
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "legend.fontsize": 8, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.35, "grid.linestyle": ":", "savefig.dpi": 150,
    "lines.markersize": 5, "lines.linewidth": 1.4, "text.usetex": False,
    "legend.framealpha": 0.85, "figure.constrained_layout.use": True,
}
_FLOOR_KW = dict(color="0.45", ls=":", lw=1.3)
#: File formats written for every figure.
FORMATS = ("png", "pdf")


def _fig(w=6.4, h=4.6, ncols=1):
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(w, h))
        axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, out_dir, name) -> list[str]:
    for ax in fig.axes:
        _tidy_log(ax)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(STYLE):
        for ext in FORMATS:
            p = out_dir / f"{name}.{ext}"
            fig.savefig(p, bbox_inches="tight", pad_inches=0.08)
            paths.append(str(p))
    return paths


def _frac(p: float) -> str:
    return fmt_predicted(p)


def _guide(ax, x, y, slope, label=None, color="k", factor=0.55, lw=1.2, ls="--"):
    """A dashed line of the predicted slope over the data's x range, below the data by ``factor``."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 1:
        return
    x, y = x[ok], y[ok]
    lx = np.log(x)
    c = np.mean(np.log(y) - slope * lx)
    xs = np.geomspace(x.min(), x.max(), 50)
    label = label if label is not None else f"predicted slope {_frac(slope)}"
    ax.plot(xs, factor * np.exp(c) * xs ** slope, ls=ls, color=color, lw=lw, label=label, zorder=1)


def _floor(ax, value, label="reference error estimate", xlim=None):
    if value is None or not np.isfinite(value) or value <= 0:
        return
    ax.axhline(value, **_FLOOR_KW, label=label, zorder=0)
    ax.axhspan(value * 1e-3, value, color="0.5", alpha=0.08, zorder=0)


def _keep_ylim_to_data(ax, ys, pad=2.5):
    ys = np.asarray([v for v in np.ravel(ys) if np.isfinite(v) and v > 0])
    if ys.size:
        ax.set_ylim(ys.min() / pad, ys.max() * pad)


def _settings(st, skip=()) -> str:
    spec = json.loads(st.attrs["spec"])
    fx = spec["fixed"]
    keys = [k for k in ("D", "K", "alpha", "eta", "activation", "a", "b") if k in fx and k not in skip]
    parts = [f"{k}={fx[k]:g}" if isinstance(fx[k], float) else f"{k}={fx[k]}" for k in keys]
    parts.append(f"{len(spec['seeds'])} seeds")
    return ", ".join(parts)


def _band(st, qty, step=-1, B=None):
    """Values and the 16–84% bootstrap range (P,) each."""
    E = st.sizes["seed"]
    idx = R.bootstrap_indices(E, B) if E > 1 else None
    y, yb = R.quantity(st, qty, step, idx)
    if yb is None:
        return y, y, y
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanpercentile(yb, 16, axis=0), np.nanpercentile(yb, 84, axis=0)
    return y, lo, hi


def _series(group: np.ndarray, value, x: np.ndarray) -> np.ndarray:
    """Indices of one plotted series: the points with ``group == value``, ordered by ``x``."""
    s = np.flatnonzero(group == value)
    return s[np.argsort(x[s])]


def _errbar(ax, x, y, lo, hi, **kw):
    yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
    yerr = np.where(np.isfinite(yerr), yerr, 0)
    return ax.errorbar(x, y, yerr=yerr, capsize=2, **kw)


def _legend_below(ax, ncol=2, **kw):
    """Legend under the axes (never over the data); constrained layout makes room. Beside another
    panel at most 2 columns: 3 columns of labels are wider than a panel of an 11-inch, 2-panel
    figure and ran into the neighbour's legend."""
    if len(ax.figure.axes) > 1:
        ncol = min(ncol, 2)
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False, **kw)


def _tidy_log(ax):
    """Readable tick labels on log axes that span less than ~1.5 decades (plain numbers at 1, 2, 5 x 10^k)."""
    from matplotlib.ticker import (
        FixedLocator,
        FormatStrFormatter,
        LogLocator,
        NullFormatter,
    )
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or lim[0] <= 0:
            continue
        fixed = isinstance(axis.get_major_locator(), FixedLocator)
        if fixed or math.log10(lim[1] / lim[0]) < 2.0:
            if not fixed:
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())


def _cmap(n, name="viridis"):
    cm = matplotlib.colormaps[name]
    return [cm(v) for v in np.linspace(0.0, 0.85, max(n, 1))]


_MARKERS = "osD^vP*Xh<>"


def _floor_value(st) -> float:
    f = R.ref_floor(st)
    f = f[np.isfinite(f)]
    return float(np.max(f)) if f.size else float("nan")


# --- families --------------------------------------------------------------------------------------

def error_vs_L(ds_width, out_dir, rate: R.RateFit | None = None, name="error_vs_L") -> list[str]:
    """Error vs L for several M (output and hidden, step K), the rate model a/L + b sqrt(D/(LM))
    (fitted) as thin lines, predicted slopes -1 (Euler) and -1/2 (fluctuation)."""
    st = R.stack(ds_width)
    fig, axes = _fig(11, 5.6, 2)
    L, M = R.param(st, "L"), R.param(st, "M")
    Ms = sorted(set(M))
    cols = _cmap(len(Ms))
    floor = _floor_value(st)
    D = float(R.param(st, "D")[0])
    for ax, q, title in ((axes[0], "total_f", "output error |f - f_inf| (RMS)"),
                         (axes[1], "total_h", "hidden error |h^L - h(1)| (RMS per coordinate)")):
        y, lo, hi = _band(st, q)
        for j, m in enumerate(Ms):
            s = _series(M, m, L)
            _errbar(ax, L[s], y[s], lo[s], hi[s], color=cols[j], marker=_MARKERS[j % len(_MARKERS)], ls="-",
                    label=f"M = {m}")
            if rate is not None and q == "total_f":
                Ls = np.geomspace(L[s].min(), L[s].max(), 40)
                ax.plot(Ls, rate.a / Ls + rate.b * np.sqrt(D / (Ls * m)), color=cols[j], lw=0.8, ls="-.", alpha=0.8)
        big = np.flatnonzero(M == Ms[0])
        _guide(ax, L[big], y[big], -0.5, color="k")
        small = np.flatnonzero(M == Ms[-1])
        _guide(ax, L[small], y[small], -1.0, color="tab:red", label="predicted slope -1 (Euler)", factor=0.5)
        _floor(ax, floor)
        ax.set(xscale="log", yscale="log", xlabel="depth L", ylabel="RMS error at step K", title=title)
        _keep_ylim_to_data(ax, np.concatenate([y, [floor]]))
    if rate is not None:
        axes[0].plot([], [], color="0.3", lw=0.8, ls="-.", label="fit a/L + b sqrt(D/(LM))")
    for ax in axes:
        _legend_below(ax, ncol=3)
    fig.suptitle(f"Error vs depth for several hidden widths M ({_settings(st)})")
    return _save(fig, out_dir, name)


def hidden_width(ds_width, out_dir, name="hidden_width") -> list[str]:
    """Error vs L*M for splits down to M = 1 (depth is a hidden width) and, at fixed L*M, error vs M."""
    st = R.stack(ds_width)
    fig, axes = _fig(11, 5.6, 2)
    L, M = R.param(st, "L"), R.param(st, "M")
    LM = L * M
    Ms = sorted(set(M))
    cols = _cmap(len(Ms))
    floor = _floor_value(st)
    y, lo, hi = _band(st, "total_f")
    ax = axes[0]
    for j, m in enumerate(Ms):
        s = _series(M, m, LM)
        _errbar(ax, LM[s], y[s], lo[s], hi[s], color=cols[j], marker=_MARKERS[j % len(_MARKERS)], ls="-",
                label=f"M = {m} (L = LM/{m})")
    _guide(ax, LM[M == Ms[0]], y[M == Ms[0]], -0.5)
    _floor(ax, floor)
    ax.set(xscale="log", yscale="log", xlabel="L*M (depth x hidden width)", ylabel="output RMS error at step K",
           title="error vs L*M: every split on one line")
    _keep_ylim_to_data(ax, np.concatenate([y, [floor]]))
    _legend_below(ax, ncol=2)
    ax = axes[1]
    groups = [v for v in sorted(set(LM)) if (LM == v).sum() >= 3] or [v for v in sorted(set(LM)) if (LM == v).sum() >= 2]
    if not groups:
        ax.text(0.5, 0.5, "no L*M value with several splits in this sweep", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        fig.suptitle(f"Depth acts as a hidden width ({_settings(st)})")
        return _save(fig, out_dir, name)
    gcols = _cmap(len(groups), "plasma")
    for j, v in enumerate(groups):
        s = _series(LM, v, M)
        _errbar(ax, M[s], y[s], lo[s], hi[s], color=gcols[j], marker="o", ls="-", label=f"L*M = {v:g}")
        ax.plot(M[s], np.full(s.size, np.exp(np.mean(np.log(y[s])))), color=gcols[j], ls="--", lw=0.9)
    ax.plot([], [], color="0.3", ls="--", label="predicted: flat in M (slope 0)")
    _floor(ax, floor)
    ax.set(xscale="log", yscale="log", xlabel="hidden width M (L = L*M / M)", ylabel="output RMS error at step K",
           title="fixed L*M, several splits: error does not depend on the split")
    _keep_ylim_to_data(ax, np.concatenate([y, [floor]]))
    _legend_below(ax, ncol=3)
    fig.suptitle(f"Depth acts as a hidden width ({_settings(st)})")
    return _save(fig, out_dir, name)


def euler_fluctuation(ds_euler, ds_width, out_dir, name="euler_fluctuation") -> list[str]:
    """Euler part (seed mean) vs L, slope -1, with its seed-noise level; fluctuation part (seed
    std) vs L*M, slope -1/2."""
    fig, axes = _fig(11, 5.4, 2)
    st = R.stack(ds_euler)
    L = R.param(st, "L")
    o = np.argsort(L)
    floor = _floor_value(st)
    ax = axes[0]
    for q, lab, c, mk in (("euler_f", "Euler part, output", "tab:red", "o"), ("euler_h", "Euler part, hidden", "tab:purple", "s")):
        y, lo, hi = _band(st, q)
        if np.all(np.isnan(y)):
            continue
        _errbar(ax, L[o], y[o], lo[o], hi[o], color=c, marker=mk, ls="-", label=lab)
        if q == "euler_f":
            _guide(ax, L[o], y[o], -1.0, color="k")
    noise, _ = R.quantity(st, "noise_f")
    ax.plot(L[o], noise[o], color="0.5", ls="-", marker=".", lw=0.9, label="seed noise of the mean, output (std/sqrt(E))")
    _floor(ax, floor)
    M = R.param(st, "M")[0]
    ax.set(xscale="log", yscale="log", xlabel="depth L", ylabel="RMS of the seed mean of (x - x_inf), step K",
           title=f"Euler part vs L (M = {M:g}, {st.sizes['seed']} seeds)")
    _keep_ylim_to_data(ax, np.concatenate([R.quantity(st, "euler_f")[0], noise, [floor]]))
    ax.set_xticks(np.sort(L))
    _legend_below(ax, ncol=2)
    ax = axes[1]
    st2 = R.stack(ds_width)
    L2, M2 = R.param(st2, "L"), R.param(st2, "M")
    LM = L2 * M2
    Ms = sorted(set(M2))
    cols = _cmap(len(Ms))
    y, lo, hi = _band(st2, "fluct_f")
    for j, m in enumerate(Ms):
        s = _series(M2, m, LM)
        _errbar(ax, LM[s], y[s], lo[s], hi[s], color=cols[j], marker=_MARKERS[j % len(_MARKERS)], ls="none",
                label=f"M = {m}")
    _guide(ax, LM, y, -0.5)
    ax.set(xscale="log", yscale="log", xlabel="L*M", ylabel="seed std of f, RMS over samples (step K)",
           title="fluctuation part vs L*M (no reference involved)")
    _keep_ylim_to_data(ax, y)
    _legend_below(ax, ncol=3)
    fig.suptitle(f"Error split of SPEC §7 ({_settings(st, skip=('D',))}, D={R.param(st, 'D')[0]:g})")
    return _save(fig, out_dir, name)


def sqrt_D(ds_identity, ds_tanh, out_dir, name="sqrt_D") -> list[str]:
    """Error vs D at fixed L*M: hidden (slope +1/2) and output, identity (exact closure reference)
    and tanh (fluctuation part: no reference needed)."""
    fig, axes = _fig(11, 5.6, 2)
    series = []
    if ds_identity is not None:
        st = R.stack(ds_identity)
        series.append((st, "identity: total error (exact closure reference)", "total", "tab:blue", "o"))
    if ds_tanh is not None:
        st = R.stack(ds_tanh)
        series.append((st, "tanh: fluctuation part (seed std)", "fluct", "tab:orange", "s"))
    for ax, X, title in ((axes[0], "h", "hidden error per coordinate"), (axes[1], "f", "output error")):
        ys = []
        floors = []
        for st, lab, kind, c, mk in series:
            D = R.param(st, "D")
            o = np.argsort(D)
            y, lo, hi = _band(st, f"{kind}_{X}")
            if kind == "total" and X == "h" and np.all(np.isnan(y)):
                continue
            _errbar(ax, D[o], y[o], lo[o], hi[o], color=c, marker=mk, ls="-", label=lab)
            ys.append(y)
            if X == "h":
                _guide(ax, D[o], y[o], 0.5, color=c, label=f"predicted slope +1/2 ({lab.split(':')[0]})")
            if kind == "total":
                floors.append(_floor_value(st))
        if floors and np.isfinite(floors[0]):
            fl = max(floors)
            ax.plot([], [], **_FLOOR_KW, label=f"reference error estimate {fl:.0e} (closure: far below the axis)")
        if X == "f":
            ax.text(0.02, 0.97, "output space scales differently in D (SPEC §6, §8):\nno +1/2 law is predicted here",
                    transform=ax.transAxes, va="top", fontsize=8, color="0.3")
        ax.set(xscale="log", yscale="log", xlabel="embedding dimension D", ylabel="RMS at step K", title=title)
        if ys:
            _keep_ylim_to_data(ax, np.concatenate(ys), pad=3)
        _legend_below(ax, ncol=1)
    st0 = series[0][0]
    LM = R.param(st0, "LM")[0]
    fig.suptitle(f"sqrt(D) law at fixed L*M = {LM:g} ({_settings(st0, skip=('activation', 'D'))})")
    return _save(fig, out_dir, name)


def residual_scale(ds_res, out_dir, name="residual_scale") -> list[str]:
    """Unit, pre-activation and feature movement vs D for residual scales D^gamma/(L M)."""
    st = R.stack(ds_res)
    fig, axes = _fig(13, 5.8, 3)
    D, g = R.param(st, "D"), R.param(st, "gamma").astype(float)
    gs = sorted(set(g))
    cols = ["tab:red", "tab:green", "tab:blue", "tab:purple", "tab:orange"]
    for ax, q, title, pred in ((axes[0], "unit_movement", "relative unit movement |z_K - z_0| / |z_0|", lambda x: -x),
                               (axes[1], "preact_move", "pre-activation movement (u_K - u_0).h / D", lambda x: 0.5 - x),
                               (axes[2], "feature_change", "feature movement RMS(h_K - h_0) / RMS(h^0)", lambda x: 0.0)):
        if q not in st:
            ax.set_visible(False)
            continue
        y, lo, hi = _band(st, q)
        for j, gv in enumerate(gs):
            s = _series(g, gv, D)
            _errbar(ax, D[s], y[s], lo[s], hi[s], color=cols[j % 5], marker=_MARKERS[j], ls="-",
                    label=f"gamma = {gv:g} (scale D^{gv:g}/(LM))")
            _guide(ax, D[s], y[s], pred(gv), color=cols[j % 5], factor=0.7,
                   label=f"gamma = {gv:g}: predicted slope {_frac(pred(gv))}")
        ax.set(xscale="log", yscale="log", xlabel="embedding dimension D", title=title)
        ax.set_xticks(sorted(set(D)))
        _keep_ylim_to_data(ax, y, pad=3)
        _legend_below(ax, ncol=1)
    axes[0].set_ylabel("after K steps (RMS over seeds)")
    LM = R.param(st, "LM")[0]
    fig.suptitle(f"Residual scale D^gamma/(L M), i.e. alpha = D^(gamma - 1/2) in SPEC §1 (L*M = {LM:g}; "
                 f"{_settings(st, skip=('D', 'alpha'))})\nonly gamma = 1/2 keeps the pre-activation movement Theta(1) "
                 "as D grows (complete feature learning)")
    return _save(fig, out_dir, name)


def lazy(ds_lazy, ds_gap, out_dir, name="lazy") -> list[str]:
    """Distance to the lazy ODE vs alpha (finite nets for several L*M; the alpha-Mean-ODE) and the
    finite nets' error against their own alpha-Mean-ODE (alpha sqrt(D/(LM)))."""
    fig, axes = _fig(11, 6.6, 2)
    st = R.stack(ds_lazy)
    alpha, LM = R.param(st, "alpha"), R.param(st, "LM")
    ax = axes[0]
    LMs = sorted(set(LM))
    cols = _cmap(len(LMs))
    y, lo, hi = _band(st, "total_f")
    for j, v in enumerate(LMs):
        s = _series(LM, v, alpha)
        _errbar(ax, alpha[s], y[s], lo[s], hi[s], color=cols[j], marker=_MARKERS[j], ls="-",
                label=f"finite nets, L = M = {int(round(math.sqrt(v)))}")
    ys = [y]
    if ds_gap is not None:
        gap = R.lazy_gap(R.stack(ds_gap), st)
        ax.plot(gap["alpha"], gap["gap"], color="k", marker="s", ls="-", lw=1.8, label="alpha-Mean-ODE (L, M = inf)")
        ax.plot(gap["alpha"], gap["floor"], **_FLOOR_KW, label="its reference error estimate (floor)")
        big = gap["alpha"] >= 2
        if big.sum() >= 1:
            _guide(ax, gap["alpha"][big], gap["gap"][big], -2.0, color="k", factor=0.6,
                   label="predicted slope -2 (SPEC §4.2)")
        ys.append(gap["gap"])
    s = np.flatnonzero(LM == LMs[0])
    hi_a = s[alpha[s] >= np.sort(alpha[s])[-3]]
    _guide(ax, alpha[hi_a], y[hi_a], 1.0, color=cols[0], factor=1.6, label="predicted slope +1 (alpha sqrt(D/(LM)))")
    ax.set(xscale="log", yscale="log", xlabel="residual scale alpha", ylabel="RMS output distance to the lazy ODE, step K",
           title="distance to the lazy ODE (alpha -> inf)")
    _keep_ylim_to_data(ax, np.concatenate(ys), pad=3)
    _legend_below(ax, ncol=1)
    ax = axes[1]
    if ds_gap is not None:
        st2 = R.stack(ds_gap)
        a2 = R.param(st2, "alpha")
        o = np.argsort(a2)
        y2, lo2, hi2 = _band(st2, "total_f")
        _errbar(ax, a2[o], y2[o], lo2[o], hi2[o], color="tab:blue", marker="o", ls="-", label="finite nets vs alpha-Mean-ODE")
        e2, _ = R.quantity(st2, "euler_f")
        ax.plot(a2[o], e2[o], color="tab:red", marker="^", ls="-", lw=1, label="its Euler part (seed mean)")
        _guide(ax, a2[o], y2[o], 1.0, label="predicted slope +1 (alpha sqrt(D/(LM)))")
        fl = R.ref_floor(st2)
        ax.plot(a2[o], fl[o], **_FLOOR_KW, label="reference error estimate (per alpha)")
        L2 = R.param(st2, "L")[0]
        ax.set(xscale="log", yscale="log", xlabel="residual scale alpha", ylabel="RMS output error, step K",
               title=f"finite nets (L = M = {L2:g}) vs their alpha-Mean-ODE")
        _keep_ylim_to_data(ax, np.concatenate([y2, fl]), pad=3)
        _legend_below(ax, ncol=1)
    else:
        ax.set_visible(False)
    fig.suptitle(f"Lazy regime ({_settings(st, skip=('alpha',))})")
    return _save(fig, out_dir, name)


def limit_check(ds, out_dir, name="limit_check") -> list[str]:
    """Per-step error vs L*M, one line per step (like muP's coordinate check): each line should fall
    with slope -1/2 and none should blow up with k."""
    st = R.stack(ds)
    LM = R.param(st, "LM")
    o = np.argsort(LM)
    K = st.sizes["step"] - 1
    cols = _cmap(K + 1, "plasma")
    fig, axes = _fig(11, 5.4, 2)
    floor = _floor_value(st)
    for ax, X, title in ((axes[0], "f", "output error per step"), (axes[1], "h", "hidden error per step")):
        ys = []
        for k in range(K + 1):
            y, _ = R.quantity(st, f"total_{X}", step=k)
            ys.append(y)
            ax.plot(LM[o], y[o], color=cols[k], marker="o", label=f"step k = {k}")
        _guide(ax, LM[o], ys[-1][o], -0.5)
        _floor(ax, floor)
        ax.set(xscale="log", yscale="log", xlabel="L*M (L = M)", ylabel="RMS error vs the limit", title=title)
        _keep_ylim_to_data(ax, np.concatenate(ys + [[floor]]))
        _legend_below(ax, ncol=3)
    fig.suptitle(f"Limit check ({_settings(st)})")
    return _save(fig, out_dir, name)


def phase_diagram(ds_phase, out_dir, rows: list[dict] | None = None, margin: float = 0.15, name="phase_diagram") -> list[str]:
    """The (a, b) grid coloured by the regime measured from the exponents vs L*M, predicted
    boundaries (b = 2a - 1, a = 1/2, the MLU point) overlaid, exponents annotated."""
    from .phase import REGIME_COLOURS
    st = R.stack(ds_phase)
    rows = rows if rows is not None else R.phase_table(st, margin)
    As = sorted({r["a"] for r in rows})
    Bs = sorted({r["b"] for r in rows})
    da = min(np.diff(As)) if len(As) > 1 else 0.25
    db = min(np.diff(Bs)) if len(Bs) > 1 else 0.5
    fig, axes = _fig(10.5, 7.2, 1)
    ax = axes[0]
    for r in rows:
        c = REGIME_COLOURS.get(r["regime"], "white")
        bad = r["regime"] != r["predicted"]
        ax.add_patch(Rectangle((r["a"] - da / 2, r["b"] - db / 2), da, db, facecolor=c, edgecolor="k" if bad else "white",
                               lw=2.2 if bad else 1.0, alpha=0.9, hatch="//" if bad else None, zorder=1))
        e = r["exponents"]

        def f(o):
            v = e.get(o, float("nan"))
            return "  – " if not np.isfinite(v) else f"{v:+.2f}"
        txt = f"init {f('init_dev')}\nf    {f('out_change')}\nz    {f('unit_movement')}\nlin  {f('lin_dist')}"
        if r["diverged_fraction"] > 0:
            txt += f"\ndiv {r['diverged_fraction']:.0%}"
        ax.text(r["a"], r["b"], txt, ha="center", va="center", multialignment="left", fontsize=6.8, family="monospace", zorder=5,
                bbox=dict(boxstyle="round,pad=0.25", facecolor="white", alpha=0.72, edgecolor="none"))
    a_line = np.linspace(min(As) - da / 2, max(As) + da / 2, 50)
    ax.plot(a_line, 2 * a_line - 1, color="k", lw=2.2, label="b = 2a - 1 (predicted boundary)", zorder=3)
    ax.axvline(0.5, color="k", ls="--", lw=1.8, label="a = 1/2", zorder=3)
    if 1.0 in As and 1.0 in Bs:
        ax.add_patch(Rectangle((1 - da / 2, 1 - db / 2), da, db, fill=False, edgecolor="gold", lw=4, zorder=4))
        ax.plot([1 - da * 0.38], [1 + db * 0.36], marker="*", ms=15, color="gold", mec="k", ls="none", zorder=6)
    ax.set(xlim=(min(As) - da / 2, max(As) + da / 2), ylim=(min(Bs) - db / 2, max(Bs) + db / 2),
           xlabel="a  (multiplier alpha (L M)^-a)", ylabel="b  (learning rate eta D (L M)^b)")
    ax.set_xticks(As)
    ax.set_yticks(Bs)
    ax.grid(False)
    handles = [Patch(facecolor=REGIME_COLOURS[k], edgecolor="0.5", label=k) for k in REGIME_COLOURS if k != "unclassified"]
    handles += [Patch(facecolor="white", edgecolor="k", hatch="//", label="measured != predicted")]
    handles += [Line2D([], [], color="k", lw=2, label="b = 2a - 1"), Line2D([], [], color="k", ls="--", label="a = 1/2"),
                Line2D([], [], marker="*", color="gold", mec="k", ms=12, ls="none", label="MLU point (1, 1), gold frame")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, title="measured regime")
    sizes = rows[0]["sizes"]
    ax.set_title(f"Phase diagram: exponents vs L*M (L = M, L*M = {', '.join(f'{s:g}' for s in sizes)}); margin {margin}\n"
                 "cell text: fitted exponents of init deviation, output change |f_K - f_0|, unit movement, "
                 "distance to own linearisation", fontsize=9)
    fig.suptitle(f"SPEC §5 scaling family ({_settings(st, skip=('a', 'b'))})")
    return _save(fig, out_dir, name)


def shapes_MD(ds_md, out_dir, name="shapes_MD") -> list[str]:
    """SPEC §6 sweep at fixed L: error vs M for several D (slope -1/2 while D << L M) and
    vs D for several M, hidden and output (reference: the largest network)."""
    st = R.stack(ds_md)
    M, D = R.param(st, "M"), R.param(st, "D")
    fig, axes = _fig(11, 5.4, 2)
    floor = _floor_value(st)
    Ds = sorted(set(D))
    if len(Ds) > 6:
        Ds = Ds[:: max(1, len(Ds) // 6)]
    cols = _cmap(len(Ds))
    for ax, X, title in ((axes[0], "h", "hidden error (first D coordinates)"), (axes[1], "f", "output error")):
        y, lo, hi = _band(st, f"total_{X}")
        for j, d in enumerate(Ds):
            s = _series(D, d, M)
            _errbar(ax, M[s], y[s], lo[s], hi[s], color=cols[j], marker=_MARKERS[j % len(_MARKERS)], ls="-", label=f"D = {d:g}")
        s = np.flatnonzero(D == Ds[-1])
        _guide(ax, M[s], y[s], -0.5, label=f"predicted slope -1/2 (at D = {Ds[-1]:g})")
        _floor(ax, floor, "reference error estimate")
        ax.set(xscale="log", yscale="log", xlabel="hidden width M", ylabel="RMS error at step K", title=title)
        _keep_ylim_to_data(ax, np.concatenate([y, [floor]]))
        _legend_below(ax, ncol=2)
    L = R.param(st, "L")[0]
    fig.suptitle(f"Shapes: L = {L:g}, M and D swept ({_settings(st, skip=('D',))})\nat small D the O(1/sqrt(D)) gap "
                 "to the large-D reference dominates and does not fall with M")
    return _save(fig, out_dir, name)


def shapes_P(ds_p, out_dir, name="shapes_P") -> list[str]:
    """Error vs the parameter count P = L M D along the optimal shapes, with the P^(-1/6)
    (hidden) and P^(-1/5) (output) lines of SPEC §6."""
    st = R.stack(ds_p)
    P = R.param(st, "P")
    o = np.argsort(P)
    fig, axes = _fig(6.6, 5.6, 1)
    ax = axes[0]
    ys = []
    for X, lab, c, mk, slope in (("h", "hidden (embedding space)", "tab:blue", "o", -1 / 6),
                                 ("f", "output", "tab:red", "s", -0.2)):
        y, lo, hi = _band(st, f"total_{X}")
        _errbar(ax, P[o], y[o], lo[o], hi[o], color=c, marker=mk, ls="-", label=lab)
        _guide(ax, P[o], y[o], slope, color=c, factor=0.6, label=f"predicted P^{_frac(slope)}")
        ys.append(y)
    floor = _floor_value(st)
    _floor(ax, floor, "reference (largest network) error estimate")
    ax.set(xscale="log", yscale="log", xlabel="parameters P = L M D", ylabel="RMS error at step K")
    _keep_ylim_to_data(ax, np.concatenate(ys + [[floor]]))
    _legend_below(ax, ncol=2)
    shapes = ", ".join(f"({int(l)},{int(m)},{int(d)})" for l, m, d in zip(R.param(st, "L")[o], R.param(st, "M")[o], R.param(st, "D")[o]))
    ax.set_title(f"Optimal shapes (L, M, D): {shapes}", fontsize=8)
    fig.suptitle(f"Error vs parameter count ({_settings(st, skip=('D',))})")
    return _save(fig, out_dir, name)


def attention(ds_att, ds_euler, out_dir, name="attention_heads") -> list[str]:
    """Attention heads as units (issue 13): output and hidden error vs L*M for each split (one head
    per layer to square), and the Euler part vs L."""
    st = R.stack(ds_att)
    fig, axes = _fig(15, 5.2, 3)
    L, M = R.param(st, "L").astype(float), R.param(st, "M").astype(float)
    LM = L * M
    kind = np.where(M == 1, "one head per layer (M = 1)", np.where(M == 4, "4 heads per layer",
                                                                    "square (L = M)"))
    for ax, qty, what in ((axes[0], "total_f", "output"), (axes[1], "total_h", "hidden")):
        y, lo, hi = _band(st, qty)
        floor = R.ref_floor(st, qty)
        groups = [k for k in ("one head per layer (M = 1)", "4 heads per layer", "square (L = M)") if (kind == k).any()]
        for j, g in enumerate(groups):
            s = _series(kind, g, LM)
            _errbar(ax, LM[s], y[s], lo[s], hi[s], color=_cmap(len(groups))[j], marker=_MARKERS[j], ls="-", label=g)
        _guide(ax, LM, y, -0.5)
        f = floor[np.isfinite(floor)]
        _floor(ax, float(f.max()) if f.size else None, "limit's own error estimate")
        ax.set(xscale="log", yscale="log", xlabel="L*M (depth x heads per layer)", ylabel=f"{what} RMS error at step K",
               title=f"{what} error vs L*M")
        _keep_ylim_to_data(ax, y)
        _legend_below(ax, ncol=2)
    ax = axes[2]
    if ds_euler is not None:
        se = R.stack(ds_euler)
        Le = R.param(se, "L").astype(float)
        o = np.argsort(Le)
        eu, lo, hi = _band(se, "euler_f")
        noise, _ = R.quantity(se, "noise_f")
        _errbar(ax, Le[o], eu[o], lo[o], hi[o], marker="o", ls="-", color="C3", label="Euler part (seed mean)")
        ax.plot(Le[o], noise[o], ls=":", color="0.4", label="its seed noise fluct / sqrt(E)")
        _guide(ax, Le, eu, -1.0)
        ax.set(xscale="log", yscale="log", xlabel="depth L", ylabel="output RMS of the seed mean",
               title=f"Euler part vs L (M = {int(R.param(se, 'M')[0])})")
        _legend_below(ax, ncol=1)
    else:
        ax.set_axis_off()
    fig.suptitle(f"Attention heads as the units of a residual block ({_settings(st)}, T = "
                 f"{json.loads(st.attrs['spec'])['fixed'].get('T', 3)} tokens)")
    return _save(fig, out_dir, name)


def large_d(ds, out_dir, res: dict | None = None, name="large_d") -> list[str]:
    """SPEC §6 with exact references: finite vs the fixed-D closure against D/(L M) (the
    sqrt(D/(LM)) term), the closure vs D = infinity gap against D (the 1/sqrt(D) term), and the
    error vs P = L M D with the best shapes' envelope."""
    st = R.stack(ds)
    res = res if res is not None else R.large_d_analysis(st, n_boot=50)
    fig, axes = _fig(16, 5.6, 3)
    L, M, D = (R.param(st, k).astype(float) for k in ("L", "M", "D"))
    ax = axes[0]
    for j, (var, lab) in enumerate((("ld_err_h_cl", "hidden RMS"), ("ld_err_f_cl", "output RMS"))):
        e = np.sqrt(np.nanmean(np.asarray(st[var].values, float) ** 2, axis=1))
        ok = np.isfinite(e)
        ax.scatter((D / (L * M))[ok], e[ok], s=10, alpha=0.6, color=f"C{j}", label=f"{lab}, finite vs fixed-D closure")
        _guide(ax, (D / (L * M))[ok], e[ok], 0.5 if j == 0 else 1.0, label=f"slope {'+1/2' if j == 0 else '+1'}",
               color=f"C{j}")
    ax.set(xscale="log", yscale="log", xlabel="D / (L M)", ylabel="error at step K (seed RMS)",
           title="the fluctuation term: finite vs its own fixed-D limit")
    _legend_below(ax, ncol=1, fontsize="small")
    ax = axes[1]
    for j, g in enumerate(res["gap"]):
        ax.plot(g["D"], g["gap"], marker=_MARKERS[j], color=f"C{j}",
                label=f"{R.LARGE_D_LABELS[g['var']]}: slope {g['fit'].slope:+.2f}")
    if res["gap"]:
        _guide(ax, res["gap"][0]["D"], res["gap"][0]["gap"], -0.5)
    ax.set(xscale="log", yscale="log", xlabel="embedding dimension D", ylabel="closure vs D = inf (RMS over embeddings)",
           title="the 1/sqrt(D) term (exact references)")
    _legend_below(ax, ncol=1, fontsize="small")
    ax = axes[2]
    P = L * M * D
    for j, (var, lab, slope) in enumerate((("ld_err_hd", "hidden (max over depth)", -1 / 6),
                                           ("ld_err_f", "output", -0.2))):
        e = np.sqrt(np.nanmean(np.asarray(st[f"{var}_inf"].values, float) ** 2, axis=1))
        ok = np.isfinite(e) & (e > 0)
        ax.scatter(P[ok], e[ok], s=8, alpha=0.35, color=f"C{j}", label=f"{lab}, every shape")
        env = next((p for p in res["p_slopes"] if p["var"] == var and p.get("fit")), None)
        _guide(ax, P[ok], e[ok], slope, label=f"predicted {fmt_predicted(slope)}", color=f"C{j}", factor=0.3)
        if env is not None:
            ax.plot([], [], " ", label=f"best-shape slope {env['fit'].slope:+.3f}")
    ax.set(xscale="log", yscale="log", xlabel="P = L M D", ylabel="error vs D = infinity at step K",
           title="error vs parameter count")
    _legend_below(ax, ncol=1, fontsize="small")
    fig.suptitle(f"Large D, the follow-up's linear experiment with exact references ({_settings(st)})")
    return _save(fig, out_dir, name)
