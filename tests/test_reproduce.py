"""``meanode reproduce`` / ``meanode sweep``: the tiny preset end to end, figures, report, CLI, full plan."""

import argparse
import io
import textwrap

import numpy as np
import pytest
from meanode import plots
from meanode import analysis as R
from meanode import reproduce as rp
from meanode.sweep import load_sweep

FAMILIES = ("error_vs_L", "hidden_width", "euler_fluctuation", "sqrt_D", "residual_scale", "lazy", "limit_check",
            "phase_diagram", "shapes_MD", "shapes_P", "attention_heads", "large_d")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "FORMATS", ("png",))  # PDFs are the same drawing; keep the suite fast
    mp.setattr(R, "BOOTSTRAP", 20)
    try:
        report = rp.reproduce("tiny", out, workers=1, progress=False)
    finally:
        mp.undo()
    return out, report


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_tiny_preset_writes_every_figure(tiny_run):
    out, _ = tiny_run
    for name in FAMILIES:
        p = out / "figures" / f"{name}.png"
        assert p.exists(), name
        w, h = _png_size(p)
        assert w >= 800 and h >= 500, (name, w, h)


def test_tiny_preset_report_and_data(tiny_run):
    out, report = tiny_run
    text = report.read_text()
    for heading in ("## Fitted vs predicted slopes", "## Rate model", "## References", "## Divergences", "## Timing",
                    "## Phase diagram", "## Residual scale", "## Lazy regime"):
        assert heading in text, heading
    assert "| output fluctuation part (seed std) vs L*M | width |" in text
    assert "figures/phase_diagram.png" in text
    assert "closure" in text and "quadrature/gauss_hermite" in text and "network(" in text and "lazy" in text
    ds = load_sweep(out / "sweeps" / "width")
    assert {"L", "M", "seed", "step"} <= set(ds.dims) and ds.attrs["sweep"] == "width"
    assert len(list((out / "references").glob("ref__*.nc"))) >= 5
    # a second run finds every point on disk and computes nothing
    from meanode.sweep import run_sweeps
    pre = rp.preset("tiny")
    res = run_sweeps([(spec, out / "sweeps" / role) for role, spec in pre.sweeps], executor="serial",
                     ref_dir=out / "references", progress=False)
    assert all(not r.computed and r.references_computed == 0 for r in res)


def test_full_preset_plan_matches_published_sizes():
    pre = rp.preset("full")
    md = pre.sweep("md")
    fx = dict(md.fixed)
    vals = dict(md.grid)["M"]
    assert fx["L"] == 50 and fx["K"] == 15 and len(md.seeds) == 5 and fx["activation"] == "tanh"
    assert vals[0] == 1 and vals[-1] == 2000 and len(vals) >= 19 and dict(md.grid)["D"] == vals
    assert md.reference.method == "network" and (md.reference.L, md.reference.M, md.reference.D) == (50, 2000, 2000)
    p = pre.sweep("psweep")
    P = [r["L"] * r["M"] * r["D"] for r in (dict(x) for x in p.zip)]
    assert P == sorted(P) and P[-1] / P[0] > 1e5
    buf = io.StringIO()
    plan = rp.dry_run("full", file=buf)
    text = buf.getvalue()
    assert "md" in text and "psweep" in text and "total" in text and "GiB" in text
    assert plan["points"] > 400 and plan["cpu_seconds"] > 3600


def _parser():
    p = argparse.ArgumentParser(prog="meanode")
    rp.add_parsers(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_sweep_command(tmp_path, capsys):
    f = tmp_path / "mini.yaml"
    f.write_text(textwrap.dedent("""\
        name: mini
        fixed: {D: 2, K: 1, N: 6, M: 2}
        grid: {L: [2, 4]}
        seeds: 2
        reference: {method: quadrature, level: 6}
    """))
    args = _parser().parse_args(["sweep", str(f), "--scheduler", "serial", "--no-progress"])
    assert args.func(args) == 0
    assert "2 points computed" in capsys.readouterr().out
    ds = load_sweep(tmp_path / "mini")
    assert ds.sizes["L"] == 2 and np.isfinite(ds["total_f"]).all()
    args = _parser().parse_args(["sweep", str(f), "--dry-run"])
    assert args.func(args) == 0
    assert "2 done" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nfixed: {M: 2}\ngrid: {L: [2, -4]}\n")
    args = _parser().parse_args(["sweep", str(bad)])
    assert args.func(args) == 2
    assert "grid.L" in capsys.readouterr().err


def test_cli_reproduce_dry_run(capsys):
    args = _parser().parse_args(["reproduce", "--preset", "quick", "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "width" in out and "phase" in out and "est. CPU time" in out


def test_report_wording_follows_the_measured_values(tiny_run, tmp_path):
    """The report's verdicts are computed: perturb the measured values of the tiny run (make one
    error fall like L^-1 instead of L^-1/2; make the lazy gap steepen or flatten) and its words follow."""
    from meanode import report as W
    from meanode.presets import preset

    out, _ = tiny_run
    pre = preset("tiny")
    datasets = {role: load_sweep(out / "sweeps" / role) for role, _ in pre.sweeps}
    rows = [dict(name=r, points=1, seeds=1, reference="-", wall_time=0.0, data=f"sweeps/{r}/merged.nc") for r, _ in pre.sweeps]
    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "FORMATS", ("png",))
    mp.setattr(R, "BOOTSTRAP", 20)
    try:
        def report(ds_map, name):
            return rp.analyse(pre, ds_map, tmp_path / name, {"sweeps": 0.0}, rows, 1, progress=False,
                              figures=False).read_text()

        # the fluctuation part (reference-free, exact formula) scaled to fall like (L M)^-1: the fit must say "differs"
        width = datasets["width"].copy(deep=True)
        LM = (width["L"] * width["M"]).astype(float)
        width["f"] = width["f"] * 0 + width["f"].mean("seed") + (width["f"] - width["f"].mean("seed")) / np.sqrt(LM)
        base = report(datasets, "base")
        pert = report(dict(datasets, width=width), "pert")
        line = lambda text: next(l for l in text.splitlines() if l.startswith("| output fluctuation part (seed std) vs L*M"))  # noqa: E731
        fitted = float(line(pert).split("|")[3])
        assert abs(fitted + 1.0) < 0.05  # the perturbation is an exact power law
        assert "differs by" in line(pert) and "agrees" not in line(pert)
        assert line(base) != line(pert)
        # the lazy-gap trend sentence is worded from the values
        gap = dict(alpha=np.array([1.0, 2.0, 4.0, 8.0]), floor=np.full(4, 1e-9))
        approach = W.trend_sentence(gap["alpha"], [1.0, 0.3, 0.06, 0.0155], gap["floor"], -2.0)
        away = W.trend_sentence(gap["alpha"], [1.0, 0.26, 0.12, 0.09], gap["floor"], -2.0)
        assert "they approach the asymptotic prediction -2" in approach and "within" in approach
        assert "they move away from" in away and "farther than" in away
        floor = W.trend_sentence(gap["alpha"], [1.0, 0.3, 0.06, 1e-9], gap["floor"], -2.0)
        assert "alpha = 8 the value is below 2x" in floor
    finally:
        mp.undo()
