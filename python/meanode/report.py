"""``report.md``: the words around the numbers that :mod:`meanode.analysis` measured.

Every sentence about a result is built from this run's numbers (``verdict``, ``trend_sentence``,
the counts): nothing here states an expectation as if it were a measurement. Predictions appear
only as predictions (the "predicted" column, SPEC's rates).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .analysis import RateFit, SlopeFit, local_slopes

__all__ = ["write_report", "slope_table", "fmt_fit", "fmt_predicted", "verdict", "trend_sentence", "SLOPE_TOLERANCE"]

#: a fitted slope "agrees" with the prediction when within this of it (the issues' criterion)
SLOPE_TOLERANCE = 0.1


def fmt_fit(f: SlopeFit) -> str:
    return f"{f.slope:+.3f}"


def _ci(c) -> str:
    return "n/a" if not all(np.isfinite(c)) else f"[{c[0]:+.3f}, {c[1]:+.3f}]"


def fmt_predicted(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    fr = {0.5: "+1/2", -0.5: "-1/2", -1.0: "-1", 1.0: "+1", -2.0: "-2", 0.0: "0", -1 / 6: "-1/6", -0.2: "-1/5",
          -0.25: "-1/4", 0.25: "+1/4", -0.75: "-3/4", 0.75: "+3/4", -1.5: "-3/2", 1.5: "+3/2"}
    for k, v in fr.items():
        if abs(p - k) < 1e-9:
            return v
    return f"{p:+.3f}"


def verdict(f: SlopeFit, tol: float = SLOPE_TOLERANCE) -> str:
    """What this fit's numbers say about the prediction, in words."""
    if not np.isfinite(f.slope):
        return f"not fitted ({f.n_used} point(s) in the window)"
    if f.spec.predicted is None:
        return "no prediction"
    dev = f.deviation
    covers = f.covers_prediction
    near = abs(dev) <= tol
    ci_txt = "" if covers is None else ("; its 95% interval contains the prediction" if covers
                                        else "; its 95% interval excludes the prediction")
    if near:
        return f"agrees (within {tol:g}{ci_txt})"
    return f"differs by {dev:+.2f}{ci_txt}"


def trend_sentence(x, y, floor, predicted: float, what: str = "alpha", floor_factor: float = 2.0) -> str:
    """How the local slopes of ``y`` vs ``x`` (above ``floor_factor`` x ``floor``) move relative to
    an asymptotic ``predicted`` slope, computed and worded from the values."""
    x, y, floor = (np.asarray(v, float) for v in (x, y, floor))
    above = y >= floor_factor * floor
    below = [f"{v:g}" for v, a in zip(x, above) if not a]
    tail = (f" At {what} = {', '.join(below)} the value is below {floor_factor:g}x the references' floor and is not "
            "used." if below else "")
    s = local_slopes(x[above], y[above])
    if len(s) == 0:
        return f"Fewer than two points lie above {floor_factor:g}x the floor: no local slope.{tail}"
    if len(s) == 1:
        return f"One local slope above the floor: {s[0]:+.2f} (predicted asymptotically {fmt_predicted(predicted)}).{tail}"
    d0, d1 = abs(s[0] - predicted), abs(s[-1] - predicted)
    move = "approach" if d1 < d0 else ("move away from" if d1 > d0 else "stay as far from")
    close = "within" if d1 <= 2 * SLOPE_TOLERANCE else "farther than"
    return (f"Between successive {what} above {floor_factor:g}x the floor the local slopes go from {s[0]:+.2f} to "
            f"{s[-1]:+.2f}: they {move} the asymptotic prediction {fmt_predicted(predicted)} (the last one is {close} "
            f"{2 * SLOPE_TOLERANCE:g} of it).{tail}")


def slope_table(fits: list[SlopeFit], tol: float = SLOPE_TOLERANCE) -> str:
    lines = ["| measurement | sweep | fitted slope | 95% CI (bootstrap over seeds) | 95% CI (fit, t) | predicted | "
             "fitted - predicted | verdict | points used |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in fits:
        lines.append(f"| {f.spec.title} | {f.spec.sweep} | {f.slope:+.3f} | {_ci(f.ci_boot)} | {_ci(f.ci_t)} | "
                     f"{fmt_predicted(f.spec.predicted)} | {f.deviation:+.3f} | {verdict(f, tol)} | "
                     f"{f.n_used}/{f.n_total} |")
    return "\n".join(lines)


def _summary(fits: list[SlopeFit], tol: float) -> str:
    pred = [f for f in fits if f.spec.predicted is not None]
    fitted = [f for f in pred if np.isfinite(f.slope)]
    agree = [f for f in fitted if abs(f.deviation) <= tol]
    differ = [f for f in fitted if abs(f.deviation) > tol]
    out = (f"Of {len(pred)} slopes with a prediction, {len(fitted)} could be fitted; {len(agree)} agree with the "
           f"prediction within {tol:g}")
    if differ:
        out += "; these do not: " + "; ".join(f"{f.spec.title} ({f.slope:+.2f} vs {fmt_predicted(f.spec.predicted)})"
                                              for f in differ)
    not_fitted = [f for f in pred if not np.isfinite(f.slope)]
    if not_fitted:
        out += ". Not fitted (too few points in the window): " + "; ".join(f.spec.title for f in not_fitted)
    return out + "."


def _fmt(v: float, spec: str = ".1e") -> str:
    return "–" if v is None or not np.isfinite(v) else format(v, spec)


def _interval(fit) -> str:
    return _ci(fit.ci) if hasattr(fit, "ci") else "n/a"


def large_d_section(res: dict, tol: float = SLOPE_TOLERANCE) -> str:
    """The large-D section (SPEC §6): fitted coefficients with intervals, the 1/sqrt(D) gap slopes and
    the best-shape P slopes, each with its computed verdict."""
    L = ["\n## Large D (SPEC §6): the follow-up's linear experiment with exact references\n",
         "Fits of the seed-mean squared error (non-negative least squares, relative weights; 95% bootstrap "
         "intervals over model seeds and embeddings):\n",
         "| error | points x runs | coefficients [95% CI] |", "| --- | --- | --- |"]
    for m in res["models"]:
        f = m["fit"]
        coefs = "; ".join(f"{n} = {c:.3g} [{lo:.3g}, {hi:.3g}]" for n, c, (lo, hi) in zip(f.names, f.coef, f.ci))
        L.append(f"| {m['title']} | {m['n']} x {m['seeds']} | {coefs} |")
    zero = [f"{m['title']}: {n}" for m in res["models"] for n, (lo, hi) in zip(m["fit"].names, m["fit"].ci) if hi <= 0]
    L.append("\n" + (("Terms whose interval is [0, 0] (not resolved by these sizes): " + "; ".join(zero) + ".")
                     if zero else "Every fitted term has a positive interval.") + "\n")
    L.append("| term | fitted slope [95% CI] | predicted | verdict |")
    L.append("| --- | --- | --- | --- |")
    for g in res["gap"]:
        fit = g["fit"]
        dev = fit.slope - g["predicted"]
        word = f"agrees (within {tol:g})" if abs(dev) <= tol else f"differs by {dev:+.2f}"
        L.append(f"| fixed-D closure vs D = infinity, {g['title']}, vs D | {fit.slope:+.3f} {_ci(fit.ci)} | "
                 f"{fmt_predicted(g['predicted'])} | {word} |")
    for p in res["p_slopes"]:
        if p.get("fit") is None:
            L.append(f"| best shapes, {p['title']}, vs P | not fitted ({p.get('why', '')}) | "
                     f"{fmt_predicted(p['predicted'])} | – |")
            continue
        fit = p["fit"]
        dev = fit.slope - p["predicted"]
        word = f"agrees (within {tol:g})" if abs(dev) <= tol else f"differs by {dev:+.2f}"
        L.append(f"| best shapes, {p['title']}, vs P over {p['decades']:.1f} decades | {fit.slope:+.3f} {_ci(fit.ci)} | "
                 f"{fmt_predicted(p['predicted'])} | {word} |")
    if res["excluded"]:
        L.append("\nShapes left out of the fits (diverged runs are never zeroed):\n")
        L.extend(f"* {e}" for e in res["excluded"])
    return "\n".join(L) + "\n"


def attention_section(fits: list[SlopeFit], ratios: list[tuple], tol: float = SLOPE_TOLERANCE,
                      skipped: tuple = ()) -> str:
    """The attention-heads section (issue 13): its slopes (from the main table) and, at each L*M,
    one head per layer against the square split (``skipped``: L*M left out, a seed diverged)."""
    L = ["\n## Attention heads as units\n"]
    att = [f for f in fits if f.spec.sweep.startswith("attention")]
    for f in att:
        L.append(f"* {f.spec.title}: {f.slope:+.3f} {_ci(f.ci_boot)} vs {fmt_predicted(f.spec.predicted)}: {verdict(f, tol)}.")
    if ratios:
        L.append("\n| L*M | one head per layer | square split | ratio |")
        L.append("| --- | --- | --- | --- |")
        for lm, deep, sq, r in ratios:
            L.append(f"| {lm:g} | {deep:.3e} | {sq:.3e} | {r:.3f} |")
        worst = max(abs(r - 1) for *_, r in ratios)
        L.append(f"\nAt the {len(ratios)} L*M shown the two splits differ by at most {worst:.0%} "
                 f"({'within' if worst <= 0.1 else 'more than'} 10%).")
    if skipped:
        L.append(f"Left out (a seed of one split diverged or its error is not finite): L*M = "
                 f"{', '.join(f'{lm:g}' for lm in skipped)}.")
    return "\n".join(L) + "\n"


def write_report(path, *, preset: str, fits: list[SlopeFit], rate: RateFit | None, phase_rows: list[dict] | None,
                 residual_rows: list[dict] | None, references: list[dict], divergences: list[str], figures: list[str],
                 sweeps: list[dict], timing: dict, machine: dict, notes: list[str], lazy: dict | None = None,
                 extra_sections: list[str] | None = None) -> Path:
    """Write ``report.md``."""
    path = Path(path)
    L = []
    L.append(f"# meanode reproduce — preset `{preset}`\n")
    L.append(f"Generated {machine.get('date', '')} on `{machine.get('host', '')}` "
             f"({machine.get('platform', '')}; {machine.get('cpus', '?')} CPU cores visible, {machine.get('workers', '?')} "
             f"worker processes with 1 torch thread each; torch {machine.get('torch', '')}, device "
             f"{machine.get('device', 'cpu')}). Total wall time **{timing.get('total', float('nan')):.0f} s**.\n")
    L.append("Conventions: SPEC §1 (MLU, float64); step K is the last recorded step; errors are RMS over seeds, "
             "samples and coordinates (SPEC §7). Each reference's own error estimate is its floor, in the space "
             "of the quantity (hidden-state estimates for hidden errors): points below 2x the floor are not "
             "fitted. Every fit has a stated window (below) and lists the points it used and excluded. Diverged "
             "runs are never dropped silently: any point with a diverged seed has NaN aggregates and is listed "
             "and excluded by name.\n")
    L.append("## Fitted vs predicted slopes\n")
    L.append(slope_table(fits))
    L.append("\n" + _summary(fits, SLOPE_TOLERANCE) + "\n")
    L.append("### Windows and points\n")
    for f in fits:
        L.append(f"* **{f.spec.title}** — window: {f.spec.window()}. Used ({f.n_used}): "
                 f"{', '.join(f.used_labels) if f.used_labels else 'none'}."
                 + (f" {f.spec.note}" if f.spec.note else ""))
        for e in f.excluded:
            L.append(f"  * excluded {e}")
    if rate is not None:
        L.append("\n## Rate model  err ≈ a/L + b·sqrt(D/(L M))  (output error at step K, sweep width)\n")
        L.append("| coefficient | fitted | 95% CI (bootstrap) | predicted |")
        L.append("| --- | --- | --- | --- |")
        L.append(f"| a (Euler, 1/L) | {rate.a:.3e} | [{rate.ci_a[0]:.3e}, {rate.ci_a[1]:.3e}] | > 0, O(1) |")
        L.append(f"| b (fluctuation, sqrt(D/(LM))) | {rate.b:.3e} | [{rate.ci_b[0]:.3e}, {rate.ci_b[1]:.3e}] | > 0, O(alpha) |")
        L.append(f"\nRelative RMS residual of the model over {rate.n} points: {rate.rel_rms_residual:.1%}.\n")
        L.append("<details><summary>measured vs model per point</summary>\n")
        L.append("| point | L | M | D | measured | model |")
        L.append("| --- | --- | --- | --- | --- | --- |")
        for lab, l, m, d, y, mo in rate.table:
            L.append(f"| {lab} | {l} | {m} | {d} | {y:.3e} | {mo:.3e} |")
        L.append("\n</details>\n")
    if lazy is not None:
        L.append("\n## Lazy regime\n")
        L.append("| alpha | alpha-Mean-ODE gap to the lazy ODE (RMS output, step K) | floor (sum of the references' "
                 "error estimates, max-abs) | local slope from the previous alpha |")
        L.append("| --- | --- | --- | --- |")
        prev = None
        for a, g, fl in zip(lazy["alpha"], lazy["gap"], lazy["floor"]):
            loc = "" if prev is None else f"{math.log(g / prev[1]) / math.log(a / prev[0]):+.2f}"
            L.append(f"| {a:g} | {g:.3e} | {fl:.1e} | {loc} |")
            prev = (a, g)
        L.append("\n" + trend_sentence(lazy["alpha"], lazy["gap"], lazy["floor"], -2.0) + "\n")
    if residual_rows:
        L.append("\n## Residual scale D^gamma/(L M): exponents vs D\n")
        L.append("| gamma | observable | fitted | 95% CI (bootstrap) | predicted | verdict |")
        L.append("| --- | --- | --- | --- | --- | --- |")
        for r in residual_rows:
            for q, f in r["fits"].items():
                L.append(f"| {r['gamma']:g} | {q} | {f.slope:+.3f} | {_ci(f.ci_boot)} | {fmt_predicted(f.spec.predicted)} | "
                         f"{verdict(f)} |")
        L.append("")
    if phase_rows:
        L.append("\n## Phase diagram (SPEC §5): exponents vs L*M per cell\n")
        L.append("| a | b | init dev | output change | unit movement | dist. to linearisation | diverged | measured regime | predicted regime |")
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in phase_rows:
            e, p = r["exponents"], r["predicted_exponents"]

            def cell(o):
                return f"{e[o]:+.2f} ({fmt_predicted(p[o])})" if np.isfinite(e[o]) else f"– ({fmt_predicted(p[o])})"
            agree = "" if r["regime"] == r["predicted"] else " ✗"
            L.append(f"| {r['a']:g} | {r['b']:g} | {cell('init_dev')} | {cell('out_change')} | {cell('unit_movement')} | "
                     f"{cell('lin_dist')} | {r['diverged_fraction']:.0%} | {r['regime']}{agree} | {r['predicted']} |")
        n_agree = sum(r["regime"] == r["predicted"] for r in phase_rows)
        L.append(f"\nIn parentheses: scale-counting predictions. Measured regime = predicted in {n_agree}/{len(phase_rows)} "
                 "cells (✗ marks the others).\n")
    for sec in extra_sections or []:
        L.append(sec)
    L.append("\n## References (each computed once, cached beside the results)\n")
    L.append("| file | method | settings | status | estimate f | estimate h | norm of the estimates | tol asked | met | "
             "convergence check | wall time |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in references:
        met = {1: "yes", 0: "no", -1: "–"}.get(r.get("tol_met", -1), "–")
        L.append(f"| {r['file']} | {r['method']} | {r['settings']} | {r.get('status', 'ok')} | {_fmt(r['error_estimate'])} | "
                 f"{_fmt(r.get('h_error_estimate', float('nan')))} | {r.get('norm', '')} | {_fmt(r.get('tol', float('nan')))} | "
                 f"{met} | {'passed' if r.get('verified', True) else 'FAILED'} | {r['wall_time']:.1f} s |")
    flagged = [r for r in references if r.get("tol_met") == 0 or not r.get("verified", True) or r.get("status") != "ok"]
    if flagged:
        L.append("\nReferences that did not reach what was asked of them, and why:\n")
        for r in flagged:
            why = "; ".join(r.get("warnings", [])) or r.get("reason", "") or "no reason recorded"
            L.append(f"* {r['file']} ({r['settings']}): {why}")
    elif references:
        L.append(f"\nAll {len(references)} references met their tolerance (where one was asked) and passed their "
                 "convergence check.")
    L.append("\n## Divergences\n")
    if divergences:
        L.extend(f"* {d}" for d in divergences)
    else:
        L.append("No run diverged.")
    L.append("\n## Sweeps\n")
    L.append("| sweep | points | seeds | reference | compute time (sum over points) | merged data |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    for s in sweeps:
        L.append(f"| {s['name']} | {s['points']} | {s['seeds']} | {s['reference']} | {s['wall_time']:.1f} s | `{s['data']}` |")
    L.append("\n## Figures\n")
    L.extend(f"* `{f}`" for f in figures)
    if notes:
        L.append("\n## Notes\n")
        L.extend(f"* {n}" for n in notes)
    L.append("\n## Timing\n")
    L.extend(f"* {k}: {v:.1f} s" for k, v in timing.items())
    path.write_text("\n".join(L) + "\n")
    return path
