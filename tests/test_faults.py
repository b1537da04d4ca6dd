"""Fault injection: what a hostile user, a crash or a full disk can do, and that meanode survives it.

Never hang (an exploding limit stops within seconds; large grids validate in linear time), never stay
stuck on a damaged file (it is moved aside, reported and recomputed; the merge equals an undamaged
run), refuse nonsense with a message that names the right argument, in one bounded line at the CLI.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import meanode as mn
from meanode import sweep as S
from meanode.limit.engine import Dynamics
from meanode.sweep import store

TINY = dict(D=2, K=2, N=4, N_eval=2, activation="identity")


def _spec(name="faults", **kw):
    base = dict(grid={"L": [2, 4], "M": [1, 2]}, fixed=dict(TINY), seeds=2, reference={"method": "closure"})
    base.update(kw)
    return S.SweepSpec.create(name, **base)


def _same(a, b):
    xr.testing.assert_equal(a.drop_vars("wall_time"), b.drop_vars("wall_time"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The undamaged run every recovery is compared with."""
    return S.run_sweep(_spec(), tmp_path_factory.mktemp("clean"), executor="serial", progress=False).dataset


# --- hangs ---------------------------------------------------------------------------------------------

def test_exploding_identity_limit_stops_within_seconds_naming_the_cap():
    prob = mn.Problem.default(D=1)
    t0 = time.perf_counter()
    with pytest.raises(mn.SolverError, match="max_rhs") as e:
        mn.mean_ode_limit(**prob.arrays(), alpha=1.0, eta=1e6, steps=2, activation="identity")
    assert e.value.status == "max_rhs"
    assert time.perf_counter() - t0 < 60  # minutes before the cap existed; a few seconds here


class _Growing(Dynamics):
    """dh/ds = k h at step k: h_k(1) = e^k h_0, so the trainer's rule (RMS > threshold) trips at a
    known step; the adjoint is zero and the update counts steps."""

    name = "growing"

    def __init__(self):
        self.k = 0

    def forward(self, s, h):
        return self.k * h

    def adjoint(self, s, h, b):
        return torch.zeros_like(b)

    def update(self, H, B):
        self.k += 1


def test_the_engine_flags_the_step_where_the_state_passes_the_threshold_and_records_nan_after():
    from meanode.limit.depth import DepthGrid
    from meanode.limit.engine import run_limit
    from meanode.solvers import resolve_solver

    prob = mn.Problem.default(D=2, N=4)
    X, Y, W_E, W_U = (torch.as_tensor(a) for a in (prob.X, prob.Y, prob.W_E, prob.W_U))
    rms0 = float((X @ W_E.T).pow(2).mean().sqrt())
    run = run_limit(_Growing(), X, Y, W_E, W_U, None, 5, resolve_solver("DOP853"), 1e-10, 1e-12, DepthGrid(9),
                    divergence_threshold=5.0 * rms0)  # e^1 < 5 < e^2: step 2 diverges
    assert run.diverged_step == 2
    f = run.f.numpy()
    assert np.isfinite(f[:2]).all() and np.isnan(f[2:]).all() and np.isnan(run.H[2:].numpy()).all()
    assert np.isnan(run.B[2:].numpy()).all() and np.isfinite(run.B[:2].numpy()).all()
    np.testing.assert_allclose(f[1], np.e * f[0], rtol=1e-9)  # the step before is the exact solution


def test_tanh_quadrature_with_a_huge_rate_stops_within_seconds():
    prob = mn.Problem.default(D=2)
    t0 = time.perf_counter()
    try:
        res = mn.mean_ode_limit(**prob.arrays(), alpha=1.0, eta=25.0, steps=3, rule="gauss_hermite", level=4,
                                max_rhs=3000, depth_nodes=9)
    except mn.SolverError as e:
        assert e.status in ("max_rhs", "diverged")
    else:
        assert res.stats.nfev <= 3000 * res.stats.nsolves
    assert time.perf_counter() - t0 < 120


def test_a_diverging_reference_is_recorded_and_its_points_have_no_errors(tmp_path):
    spec = S.SweepSpec.create("divref", grid={"eta": [0.2, 5.0]}, fixed=dict(TINY, L=4, M=2, divergence_threshold=3.0),
                              seeds=2, reference={"method": "closure"})
    ds = S.run_sweep(spec, tmp_path, executor="serial", progress=False).dataset
    bad, good = ds.sel(eta=5.0), ds.sel(eta=0.2)
    assert int(bad["ref_diverged"]) == 1 and int(good["ref_diverged"]) == 0
    assert np.isnan(bad["total_f"].values).all() and np.isfinite(good["total_f"].values).all()
    ref = S.load_reference(next((tmp_path / "references").glob("ref__*.nc")))  # either is fine: check both
    statuses = {S.load_reference(p)["status"] for p in (tmp_path / "references").glob("ref__*.nc")}
    assert statuses == {"ok", "diverged"} and ref["error_norm"].startswith("max-abs")


def test_large_grids_validate_in_linear_time():
    t0 = time.perf_counter()
    spec = S.SweepSpec.create("big", grid={"L": list(range(1, 61)), "M": list(range(1, 61))}, fixed=dict(TINY),
                              seeds=1, reference={"method": "none"})
    pts = spec.points()
    for p in pts:
        spec.settings(p)
    S.plan_summary(spec)
    assert len(pts) == 3600 and time.perf_counter() - t0 < 60  # quadratic: over 120 s on a quiet machine


# --- damaged or foreign files ---------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "flip"])
def test_a_damaged_point_file_is_moved_aside_and_recomputed(damage, tmp_path, clean):
    spec = _spec()
    S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    victim = S.point_file(spec, spec.points()[1], tmp_path)
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        victim.write_bytes(b"")
    elif damage == "garbage":
        victim.write_bytes(os.urandom(len(data)))
    else:  # one flipped byte in the data section (the last variables' values)
        b = bytearray(data)
        b[-20] ^= 0xFF
        victim.write_bytes(bytes(b))
    damaged = victim.read_bytes()
    res = S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    assert res.computed == [spec.points()[1].label] and len(res.damaged) == 1
    moved = list((victim.parent / "damaged").iterdir())
    assert len(moved) == 1 and moved[0].read_bytes() == damaged  # kept, never deleted
    _same(res.dataset, clean)


def test_a_damaged_reference_is_recomputed(tmp_path, clean):
    spec = _spec()
    S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    (ref,) = list((tmp_path / "references").glob("ref__*.nc"))
    ref.write_bytes(ref.read_bytes()[:100])
    for p in (tmp_path / "points").glob("*.nc"):  # the points must be recomputed too, against the new reference
        p.unlink()
    res = S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    assert res.references_computed == 1 and any("ref__" in d for d in res.damaged)
    _same(res.dataset, clean)


def test_files_are_fsynced_before_they_are_renamed(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    store.atomic_write(xr.Dataset({"a": ("x", np.arange(3.0))}), tmp_path / "a.nc")
    assert events[:2] == ["fsync", "replace"]
    assert store.read_checked(tmp_path / "a.nc")["a"].values.tolist() == [0.0, 1.0, 2.0]


def test_a_full_disk_is_a_clear_error_and_leaves_no_temporary_file(tmp_path, monkeypatch, clean):
    spec = _spec()
    real = store.check_free_space

    def full(directory, needed, what):
        if what == "merged.nc":
            raise OSError(errno.ENOSPC, f"not enough free space in {directory} for {what}")
        return real(directory, needed, what)

    monkeypatch.setattr(store, "check_free_space", full)
    monkeypatch.setattr(S.driver, "check_free_space", full)
    with pytest.raises(S.SweepError, match="free some space"):
        S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    assert not (tmp_path / "merged.nc").exists() and not list(tmp_path.glob(".tmp-*"))
    # a writer that fails on ENOSPC mid-file (the check passed, the disk filled meanwhile)
    monkeypatch.setattr(S.driver, "check_free_space", real)
    real_to_netcdf = xr.Dataset.to_netcdf

    def filling(self, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", filling)
    with pytest.raises(S.SweepError, match="no space left"):
        S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    assert not list(tmp_path.glob(".tmp-*"))
    monkeypatch.setattr(xr.Dataset, "to_netcdf", real_to_netcdf)
    res = S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    assert res.computed == [] and (tmp_path / "merged.nc").exists()
    _same(res.dataset, clean)


def test_temporary_files_of_dead_processes_are_removed(tmp_path):
    spec = _spec()
    points = tmp_path / "points"
    points.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = points / f".tmp-{pid}-{store._HOST}-x.nc"
    alive = points / f".tmp-{os.getpid()}-{store._HOST}-y.nc"
    foreign = points / f".tmp-{pid}-otherhost-z.nc"
    for p in (stale, alive, foreign):
        p.write_bytes(b"half")
    S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    assert not stale.exists() and alive.exists() and foreign.exists()


def test_another_spec_with_the_same_name_is_refused_unless_overwrite(tmp_path):
    S.run_sweep(_spec(), tmp_path, executor="serial", progress=False)
    other = _spec(grid={"L": [2, 8], "M": [1]})
    with pytest.raises(S.SweepError, match="different sweep named 'faults'"):
        S.run_sweep(other, tmp_path, executor="serial", progress=False)
    res = S.run_sweep(other, tmp_path, executor="serial", progress=False, overwrite=True)
    assert res.dataset.sizes["L"] == 2 and res.dataset.sizes["M"] == 1


def test_a_point_too_large_for_memory_is_refused_before_anything_runs(tmp_path, monkeypatch):
    spec = _spec(grid={"L": [2, 1_000_000], "M": [1_000_000]})
    with pytest.raises(S.SweepError, match="cannot fit in memory.*GiB"):
        S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    assert not list((tmp_path / "points").glob("*.nc")) if (tmp_path / "points").exists() else True
    assert S.plan_summary(spec)["too_large"] == ["L=1000000_M=1000000"]


# --- executors ------------------------------------------------------------------------------------------

def _maybe_die(label: str, victim: str, marker: str):
    """A task that kills its own worker process: always (``marker`` empty) or the first time."""
    if label == victim and (not marker or not os.path.exists(marker)):
        if marker:
            Path(marker).write_text("died")
        os._exit(9)
    return label


def test_the_process_pool_loses_only_the_dead_workers_task(tmp_path):
    labels = [f"p{i}" for i in range(6)]
    with S.ProcessPool(2, max_failures=1) as pool:
        futs = {lab: pool.submit(_maybe_die, lab, "p2", "") for lab in labels}  # p2 always kills its worker
        out = {}
        for lab, f in futs.items():
            try:
                out[lab] = f.result(timeout=240)
            except S.WorkerDied:
                out[lab] = "died"
    assert out == {lab: ("died" if lab == "p2" else lab) for lab in labels}
    with S.ProcessPool(2) as pool:  # a worker killed once: its task is resubmitted and finishes
        futs = [pool.submit(_maybe_die, lab, "p3", str(tmp_path / "once")) for lab in labels]
        assert [f.result(timeout=240) for f in futs] == labels


def _die_now():
    os._exit(9)


def test_a_pool_that_broke_before_the_dispatcher_heard_still_takes_new_tasks():
    # the state a death leaves for a moment: the pool is broken, but its news is still queued
    # behind another event, and a submit (here or from the dispatcher) reaches the broken pool
    import concurrent.futures as cf
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool
    broken = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    with pytest.raises(BrokenProcessPool):
        broken.submit(_die_now).result(timeout=120)
    with S.ProcessPool(2) as pool:
        pool._pool = broken
        futs = [pool.submit(_maybe_die, lab, "none", "") for lab in ("a", "b", "c")]
        assert [f.result(timeout=120) for f in futs] == ["a", "b", "c"]


# --- bad input, named ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seeds, match", [([1.7], r"seeds\[0\]"), ("12", "seeds"), ([True], r"seeds\[0\]"),
                                          ([-1], r"seeds\[0\].*outside"), ([2**64 - 1], "outside"),
                                          ([0, 0], "repeats"), (5, "seeds"), ([None], r"seeds\[0\]"),
                                          ([2**64], "outside"), ([], "at least one")])
def test_bad_seeds_are_refused_naming_seeds(seeds, match):
    prob = mn.Problem.default(D=1, N=3)
    with pytest.raises((TypeError, ValueError), match=match):
        mn.train_resnet(**prob.arrays(), L=2, M=2, alpha=1.0, eta=0.1, steps=1, seeds=seeds)


@pytest.mark.parametrize("reference, match", [({"method": "closure", "rtol": 0}, "reference.rtol: rtol"),
                                              ({"method": "quadrature", "level": 0}, "reference.level: level"),
                                              ({"method": "closure", "depth_nodes": 2}, "reference.depth_nodes")])
def test_sweep_messages_name_the_field_and_the_key(reference, match):
    with pytest.raises(S.SweepSpecError, match=match):
        S.SweepSpec.create("m", fixed=dict(TINY, L=2, M=2), reference=reference)


def test_yaml_reads_exponent_floats_and_refuses_aliases_quickly(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: y\nfixed: {L: 2, M: 2, eta: 1e-1, D: 2, K: 1, N: 3, activation: identity}\nseeds: 1\n"
                 "reference: {method: none}\n")
    assert dict(S.SweepSpec.from_yaml(f).fixed)["eta"] == 0.1
    bomb = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    f.write_text("name: bomb\ndescription: " + "{" + bomb.replace("\n", ", ") + "}\n")
    t0 = time.perf_counter()
    with pytest.raises(S.SweepSpecError, match="aliases") as e:
        S.SweepSpec.from_yaml(f)
    assert time.perf_counter() - t0 < 5 and len(str(e.value)) < 500


def test_bad_arguments_name_themselves():
    prob = mn.Problem.default(D=2, N=3)
    A = prob.arrays()
    with pytest.raises(TypeError, match="float64: pass float64 arrays"):
        mn.mean_ode_limit(**{k: torch.as_tensor(v, dtype=torch.float32) for k, v in A.items()}, alpha=1.0, eta=0.2,
                          steps=1, activation="identity")
    with pytest.raises(ValueError, match="alpha"):
        mn.train_resnet(**A, L=2, M=2, alpha=1e-300, eta=0.2, steps=1)
    for kw, name in ((dict(N_eval=-1), "N_eval"), (dict(data_seed=-1), "data_seed"), (dict(D_max=2.5), "D_max")):
        with pytest.raises(ValueError, match=name):
            mn.Problem.default(**kw)
    X = torch.as_tensor(prob.X).requires_grad_(True)
    with pytest.raises(ValueError, match="X requires grad"):
        mn.train_resnet(X, prob.Y, prob.W_E, prob.W_U, L=2, M=2, alpha=1.0, eta=0.2, steps=1)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda"):
        mn.train_resnet(**A, L=2, M=2, alpha=1.0, eta=0.2, steps=1, device="meta")
    with pytest.raises(TypeError, match="Scaling.a"):
        mn.Scaling("x", 1)
    with pytest.raises(ValueError, match="Scaling.a must be finite"):
        mn.Scaling(float("nan"), 1)
    lim = mn.mean_ode_limit(**A, alpha=1.0, eta=0.2, steps=1, activation="identity")
    with pytest.raises(ValueError, match=r"s must lie in \[0, 1\]"):
        lim.h_at(2.0)


# --- the command line -------------------------------------------------------------------------------------

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "meanode", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_errors_are_one_bounded_line(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: c\nfixed: {L: 2, M: 2, D: 2, K: 1, N: 3, activation: identity}\nseeds: 1\n"
                    "reference: {method: none}\n")
    locked = tmp_path / "locked"
    locked.write_text("a file, not a directory")
    out = _cli("sweep", str(spec), "--out", str(locked / "sub"), "--scheduler", "serial", "--no-progress")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    err = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and len(err[0]) < 400, out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: c\ngrid: {L: [" + ", ".join(["x"] * 100_000) + "]}\n")
    out = _cli("sweep", str(bad), "--dry-run")
    assert out.returncode == 2 and len(out.stderr) < 600 and "grid.L" in out.stderr


def test_cli_dry_run_flags_points_that_cannot_fit(tmp_path):
    spec = tmp_path / "huge.yaml"
    spec.write_text("name: h\nfixed: {L: 1000000, M: 1000000, D: 2, K: 1, N: 3, activation: identity}\nseeds: 1\n"
                    "reference: {method: none}\n")
    out = _cli("sweep", str(spec), "--dry-run")
    assert out.returncode == 1 and "cannot fit in memory" in out.stderr


def test_a_killed_sweep_resumes_and_matches_an_uninterrupted_run(tmp_path, clean):
    spec = _spec()
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import json, os, pathlib, signal
        from meanode import sweep as S
        real = S.point.compute_point
        def die_at_the_third(*a):
            if len(list(pathlib.Path({str(out)!r}, "points").glob("*.nc"))) >= 2:
                os.kill(os.getpid(), signal.SIGKILL)  # mid-sweep, two points on disk
            return real(*a)
        S.point.compute_point = die_at_the_third
        spec = S.SweepSpec.from_dict(json.loads({json.dumps(spec.to_dict())!r}))
        S.run_sweep(spec, {str(out)!r}, executor="serial", progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    res = S.run_sweep(spec, out, executor="serial", progress=False)
    assert len(res.skipped) == 2 and len(res.computed) == 2
    _same(res.dataset, clean)


def test_a_points_aggregates_are_nan_from_the_step_a_seed_diverged():
    """The trainer keeps the diverging step's record (the evidence); a sweep point's errors and
    aggregates use NaN from that step on, like the limit engine (a 1e120 never enters an RMS)."""
    from meanode.sweep.point import _from_divergence_on_nan

    prob = mn.Problem.default(D=2, N=4)
    res = mn.train_resnet(**prob.arrays(), L=4, M=2, alpha=1.0, eta=400.0, steps=3, seeds=[0, 1],
                          divergence_threshold=10.0)
    assert res.diverged.any()
    k = int(res.diverged_step[res.diverged][0])
    e = int(np.flatnonzero(res.diverged)[0])
    assert np.isfinite(res.f[e, k]).all()  # recorded as it was
    masked = _from_divergence_on_nan(res)
    assert np.isnan(masked.f[e, k:]).all() and np.isnan(masked.h[e, k:]).all()
    assert np.array_equal(masked.f[e, :k], res.f[e, :k])
    ok = ~res.diverged
    assert np.array_equal(masked.f[ok], res.f[ok], equal_nan=True)
