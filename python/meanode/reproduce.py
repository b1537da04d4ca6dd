"""``meanode reproduce`` and ``meanode sweep``: the scaling measurements end to end.

``meanode reproduce --preset quick`` runs every sweep of the measurement plan at small sizes
(about 5 minutes on 2 CPU cores), fits the rates, draws the figures and writes ``report.md``;
``--preset full`` has the published sizes (SPEC §6: L = 50, M and D on 20 log-spaced values in
[1, 2000], 5 seeds, K = 15, the fixed-D sweeps and the P = L M D sweeps) and is meant for a GPU
or a cluster (``--dry-run`` prints the plan and its estimated cost). ``--preset tiny`` is the
same plan at toy sizes (seconds; for tests and examples).

Output layout (``--out DIR``)::

    DIR/report.md                 fitted vs predicted rates, references, divergences, timing
    DIR/figures/*.png, *.pdf      one file per figure family
    DIR/sweeps/<role>/merged.nc   merged data of each sweep (points/ beside it: one file per point)
    DIR/references/ref__*.nc      the cached references (one per data/embedding/alpha/eta/K/activation/D)

``meanode sweep FILE.yaml [--out DIR] [--scheduler local:N]`` runs one sweep described in YAML
(see :mod:`meanode.sweep`) and writes ``DIR/merged.nc``; a rerun computes only missing points.

The measurement plan (sweeps and fits) is :mod:`meanode.presets`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import analysis as A
from . import report as R
from .presets import PRESETS, Preset, preset
from .sweep import SweepSpec, plan_summary, run_sweeps

__all__ = ["reproduce", "analyse", "add_parsers", "run_reproduce", "run_sweep_command", "dry_run", "one_line"]

# --- orchestration -----------------------------------------------------------------------------------

def _machine(workers: int, device: str = "cpu") -> dict:
    import torch
    return dict(date=_dt.datetime.now().isoformat(timespec="seconds"), host=platform.node(),
                platform=f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
                cpus=os.cpu_count(), workers=workers, torch=str(torch.__version__), device=device)


def analyse(pre: Preset, datasets: dict, out: Path, timing: dict, sweep_rows: list[dict], workers: int,
            progress: bool = True, figures: bool = True) -> Path:
    """Fits, figures and report.md from the merged datasets of a preset (``figures=False``: the fits
    and the report only, e.g. to re-word a report without redrawing its figures)."""
    from . import plots
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stacked = {k: A.stack(v) for k, v in datasets.items()}
    fits = []
    for fs in pre.fits:
        st = stacked.get(fs.sweep)
        if st is None:
            continue
        fits.append(A.fit_slope(st, fs))
    lazy = None
    if "lazy" in stacked and "lazy_gap" in stacked:
        lazy = A.lazy_gap(stacked["lazy_gap"], stacked["lazy"])
        fits.append(A.lazy_gap_fit(lazy))
    rate = None
    if "width" in stacked:
        rate = A.fit_rate(stacked["width"])
    phase_rows = A.phase_table(stacked["phase"]) if "phase" in stacked else None
    residual_rows = A.residual_table(stacked["residual"]) if "residual" in stacked else None
    extra = []
    large = A.large_d_analysis(stacked["large_d"]) if "large_d" in stacked else None
    if large is not None:
        extra.append(R.large_d_section(large))
    if "attention" in stacked:
        ratios, skipped = A.split_ratios(stacked["attention"])
        extra.append(R.attention_section(fits, ratios, skipped=skipped))
    timing["fits"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    fig_dir = out / "figures"
    figs: list[str] = []
    d = datasets
    jobs = [
        ("width", lambda: plots.error_vs_L(d["width"], fig_dir, rate=rate)),
        ("width", lambda: plots.hidden_width(d["width"], fig_dir)),
        ("euler", lambda: plots.euler_fluctuation(d["euler"], d["width"], fig_dir)),
        ("dsweep_identity", lambda: plots.sqrt_D(d.get("dsweep_identity"), d.get("dsweep_tanh"), fig_dir)),
        ("residual", lambda: plots.residual_scale(d["residual"], fig_dir)),
        ("lazy", lambda: plots.lazy(d["lazy"], d.get("lazy_gap"), fig_dir)),
        ("limitcheck", lambda: plots.limit_check(d["limitcheck"], fig_dir)),
        ("phase", lambda: plots.phase_diagram(d["phase"], fig_dir, rows=phase_rows)),
        ("md", lambda: plots.shapes_MD(d["md"], fig_dir)),
        ("psweep", lambda: plots.shapes_P(d["psweep"], fig_dir)),
        ("attention", lambda: plots.attention(d["attention"], d.get("attention_euler"), fig_dir)),
        ("large_d", lambda: plots.large_d(d["large_d"], fig_dir, res=large)),
    ]
    for role, fn in jobs:
        if figures and role in d and (role != "euler" or "width" in d):
            figs += fn()
    timing["figures"] = time.perf_counter() - t1
    divs = []
    for role, ds in datasets.items():
        divs += A.divergences(role, ds)
    notes = list(pre.notes)
    notes.append("Euler part: measured where the seed mean of the error exceeds its own seed noise "
                 "(fluctuation / sqrt(E)) by the factor stated in its window, which is why the euler sweep uses "
                 "small L, a wide layer and many seeds.")
    notes.append("sqrt(D) law: the total error is measured with the identity activation, whose limit is the exact "
                 "moment closure at any D (SPEC §4.1); the tanh sweep measures the fluctuation part (seed "
                 "standard deviation), which needs no reference, because the tanh limit's quadrature is a "
                 "2D-dimensional integral (docs/limit_quadrature.md measures how far it reaches).")
    notes.append("Phase diagram: classified from the measured exponents vs L*M with margin 0.15 (see meanode.phase.classify).")
    timing["total"] = sum(v for k, v in timing.items() if k in ("sweeps", "fits", "figures"))
    return R.write_report(out / "report.md", preset=pre.name, fits=fits, rate=rate, phase_rows=phase_rows,
                          residual_rows=residual_rows, references=A.reference_rows(out / "references"), divergences=divs,
                          figures=[str(Path(f).relative_to(out)) for f in figs if f.endswith(".png")]
                          + [str(Path(f).relative_to(out)) for f in figs if f.endswith(".pdf")],
                          sweeps=sweep_rows, timing=timing, machine=_machine(workers), notes=notes, lazy=lazy,
                          extra_sections=extra)


def dry_run(name: str, out=None, file=None) -> dict:
    """Print the plan of a preset: sweeps, points, references, estimated cost and memory."""
    file = file or sys.stdout
    pre = preset(name)
    tot_pts = tot_refs = 0
    tot_s = 0.0
    mem = 0
    too_large: list[str] = []
    print(f"meanode reproduce --preset {name}: plan", file=file)
    print(f"{'sweep':<16} {'points':>6} {'seeds':>5} {'refs':>4} {'reference':<12} {'est. CPU time':>15} {'max mem/point':>14}",
          file=file)
    for role, spec in pre.sweeps:
        s = plan_summary(spec, None if out is None else Path(out) / "sweeps" / role)
        secs = s["point_seconds"] + s["reference_seconds"]
        print(f"{role:<16} {s['points']:>6} {s['seeds']:>5} {s['references']:>4} {','.join(s['reference_methods']) or 'none':<12} "
              f"{_duration(secs):>15} {s['max_point_memory'] / 2**30:>10.2f} GiB", file=file)
        tot_pts += s["points"]
        tot_refs += s["references"]
        tot_s += s["point_seconds"] + s["reference_seconds"]
        mem = max(mem, s["max_point_memory"])
        too_large += [f"{role}/{lab}" for lab in s["too_large"]]
    print(f"{'total':<16} {tot_pts:>6} {'':>5} {tot_refs:>4} {'':<12} {_duration(tot_s):>15} {mem / 2**30:>10.2f} GiB", file=file)
    print("Estimated time: one CPU core running the batched float64 trainer (meanode.sweep.CPU_SECONDS_PER_UNIT, "
          "measured here) plus the references; divide by the workers; a GPU runs the large points 10-100x faster. "
          "Memory: weights (twice), hidden states and activations of the largest training call (seed ensembles "
          "above MEANODE_MAX_POINT_GB, default 16, are trained in seed chunks).", file=file)
    if too_large:
        print(f"NOT RUNNABLE HERE: {len(too_large)} point(s) need more memory for one seed than the limit "
              f"(MEANODE_MAX_MEMORY_GB, default the machine's): {', '.join(too_large[:5])}"
              + (" ..." if len(too_large) > 5 else ""), file=file)
    return dict(points=tot_pts, references=tot_refs, cpu_seconds=tot_s, max_point_memory=mem, too_large=too_large)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def reproduce(name: str = "quick", out="reproduce-out", *, workers: int | None = None, scheduler: str | None = None,
              progress: bool = True, overwrite: bool = False) -> Path:
    """Run a preset end to end; returns the path of ``report.md``."""
    import torch
    torch.set_num_threads(1)
    pre = preset(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers if workers is not None else pre.workers
    executor = scheduler if scheduler is not None else f"local:{workers}"
    t0 = time.perf_counter()
    jobs = [(spec, out / "sweeps" / role) for role, spec in pre.sweeps]
    results = run_sweeps(jobs, executor=executor, ref_dir=out / "references", progress=progress, overwrite=overwrite)
    timing = {"sweeps": time.perf_counter() - t0}
    datasets = {role: r.dataset for (role, _), r in zip(pre.sweeps, results)}
    rows = []
    for (role, spec), r in zip(pre.sweeps, results):
        wt = float(np.nansum(np.asarray(r.dataset["wall_time"].values, dtype=float)))
        rows.append(dict(name=role, points=len(spec.points()), seeds=len(spec.seeds), reference=spec.reference.method,
                         wall_time=wt, data=str(r.merged_path.relative_to(out))))
    return analyse(pre, datasets, out, timing, rows, workers, progress)


# --- command line ------------------------------------------------------------------------------------

def one_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, at most ``limit`` characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_reproduce(args: argparse.Namespace) -> int:
    """``meanode reproduce``."""
    if args.dry_run:
        plan = dry_run(args.preset, args.out)
        return 1 if plan["too_large"] else 0
    t0 = time.perf_counter()
    path = reproduce(args.preset, args.out, workers=args.workers, scheduler=args.scheduler, progress=not args.no_progress,
                     overwrite=args.overwrite)
    print(f"wrote {path} and figures in {Path(args.out) / 'figures'} ({time.perf_counter() - t0:.0f} s)")
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
    """``meanode sweep FILE``."""
    import torch
    torch.set_num_threads(1)
    from .sweep import SweepSpecError, run_sweep
    try:
        spec = SweepSpec.from_yaml(args.file)
    except SweepSpecError as e:
        print(f"meanode sweep: error: {one_line(e)}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.file).with_suffix("")
    if args.dry_run:
        s = plan_summary(spec, out)
        print(f"sweep {spec.name}: {s['points']} points ({s['done']} done), {s['seeds']} seeds each, {s['references']} "
              f"reference(s) ({', '.join(s['reference_methods']) or 'none'}); estimated "
              f"{(s['point_seconds'] + s['reference_seconds']) / 60:.1f} CPU core-minutes, largest point "
              f"{s['max_point_memory'] / 2**20:.0f} MiB")
        if s["too_large"]:
            print(f"meanode sweep: error: {len(s['too_large'])} point(s) cannot fit in memory "
                  f"({s['memory_limit'] / 2**30:.1f} GiB; MEANODE_MAX_MEMORY_GB sets it), e.g. {s['too_large'][0]}",
                  file=sys.stderr)
            return 1
        return 0
    executor = args.scheduler if args.scheduler else f"local:{args.workers}"
    res = run_sweep(spec, out, executor=executor, progress=not args.no_progress, overwrite=args.overwrite)
    ds = res.dataset
    n_div = int((np.asarray(ds["diverged"].values) == 1).sum())
    print(f"sweep {spec.name}: {len(res.computed)} points computed, {len(res.skipped)} already on disk, "
          f"{res.references_computed} reference(s) computed, {n_div} diverged run(s); merged data: {res.merged_path} "
          f"(dims {dict(ds.sizes)}) in {res.wall_time:.1f} s")
    return 0


def add_parsers(subparsers) -> None:
    """Register ``reproduce`` and ``sweep`` on an argparse subparsers object (``meanode.cli``)."""
    r = subparsers.add_parser("reproduce", help="run the scaling measurements, fit the rates, draw the figures, write report.md",
                              description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--preset", choices=PRESETS, default="quick",
                   help="quick: small sizes, ~5 min on 2 cores; full: published sizes (GPU/cluster); tiny: toy sizes")
    r.add_argument("--out", default="reproduce-out", help="output directory (default: reproduce-out)")
    r.add_argument("--workers", type=int, default=None, help="local worker processes (default: preset's, 2 for quick)")
    r.add_argument("--scheduler", default=None, help="executor, e.g. local:4 or serial (overrides --workers)")
    r.add_argument("--dry-run", action="store_true", help="print the plan (points, references, estimated cost) and exit")
    r.add_argument("--overwrite", action="store_true", help="replace sweeps of the same names but other specs in --out")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=run_reproduce)
    s = subparsers.add_parser("sweep", help="run a sweep described in a YAML file (one file per point, merged dataset)")
    s.add_argument("file", help="sweep description (YAML; see meanode.sweep)")
    s.add_argument("--out", default=None, help="output directory (default: the file's name without .yaml)")
    s.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    s.add_argument("--scheduler", default=None, help="executor, e.g. local:4 or serial (overrides --workers)")
    s.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    s.add_argument("--overwrite", action="store_true", help="replace a different sweep of the same name in --out")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_sweep_command)


def main(argv=None) -> int:
    """Standalone entry point (``python -m meanode.reproduce``) until ``meanode.cli`` wires the parsers."""
    p = argparse.ArgumentParser(prog="meanode")
    sub = p.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
