"""Sweeps (meanode.sweep) and rate fits (meanode.report): validation, resume, merged layout, fits."""

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr
from meanode import analysis as R
from meanode import sweep as S

TINY = dict(D=2, K=2, N=6, N_eval=2)


def _spec(name="t", **kw):
    args = dict(grid={"L": [2, 4], "M": [1, 3]}, fixed=TINY, seeds=3, reference={"method": "quadrature", "level": 6})
    args.update(kw)
    return S.SweepSpec.create(name, **args)


# --- validation ------------------------------------------------------------------------------------

BAD = [
    ("name: x\ngrid: {L: [2, 0]}\nfixed: {M: 2}\n", "grid.L"),
    ("name: x\ngrid: {Q: [1]}\nfixed: {L: 2, M: 2}\n", "grid.Q"),
    ("name: x\ngrid: {K: [1, 2]}\nfixed: {L: 2, M: 2}\n", "grid.K"),
    ("name: x\ngrid: {L: 4}\nfixed: {M: 2}\n", "grid.L"),
    ("name: x\nzip: {L: [2, 4], M: [1]}\n", "zip"),
    ("name: x\ngrid: {L: [2]}\n", "fixed.M"),
    ("name: x\nfixed: {L: 2, M: 2, K: two}\n", "fixed.K"),
    ("name: x\nfixed: {L: 2, M: 2, activation: sigmoid}\n", "fixed.activation"),
    ("name: x\nfixed: {L: 2, M: 2, alpha: -1}\n", "fixed.alpha"),
    ("name: x\ngrid: {L: [2]}\nfixed: {L: 2, M: 2}\n", "fixed.L"),
    ("name: x\nfixed: {L: 2, M: 2}\nseeds: 0\n", "seeds"),
    ("name: x\nfixed: {L: 2, M: 2}\nreference: {method: exact}\n", "reference.method"),
    ("name: x\nfixed: {L: 2, M: 2}\nreference: {level: 16, coarse: 20}\n", "reference.coarse"),
    ("name: x\nfixed: {L: 2, M: 2, a: 0.5}\nreference: {method: quadrature}\n", "reference.method"),
    ("name: x\nfixed: {L: 2, M: 2}\nmeasure: {store_hidden: true}\n", "measure.store_hidden"),
    ("name: x\nfixed: {L: 2, M: 2}\ncolour: red\n", "colour"),
    ("grid: {L: [2]}\nfixed: {M: 2}\n", "name"),
    ("name: x\ngrid: {D: [2, 8]}\nfixed: {L: 2, M: 2}\n", "reference.method"),  # tanh quadrature in 16 dims
]


@pytest.mark.parametrize("text,field", BAD)
def test_bad_sweep_file_names_the_field(tmp_path, text, field):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(S.SweepSpecError) as e:
        S.SweepSpec.from_yaml(p)
    msg = str(e.value)
    assert str(p) in msg and f"{field}:" in msg, msg


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(S.SweepSpecError, match="cannot read"):
        S.SweepSpec.from_yaml(tmp_path / "missing.yaml")
    p = tmp_path / "x.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(S.SweepSpecError, match="not valid YAML"):
        S.SweepSpec.from_yaml(p)


def test_yaml_round_trip_and_points(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent("""\
        name: demo
        fixed: {D: 2, K: 1}
        grid: {alpha: [1.0, 2]}
        zip: [{L: 2, M: 8}, {L: 8, M: 2}]
        seeds: [3, 5]
        reference: {method: lazy}
    """))
    spec = S.SweepSpec.from_yaml(p)
    assert spec.swept == ("alpha", "L", "M")
    assert len(spec.points()) == 4 and spec.seeds == (3, 5)
    assert S.SweepSpec.from_dict(spec.to_dict()) == spec
    hash(spec)  # frozen and hashable: safe to ship to workers
    # the residual-scale exponent maps to the multiplier: alpha_eff = alpha D^(gamma - 1/2)
    g = S.SweepSpec.create("g", grid={"gamma": [0.0, 1.0]}, fixed=dict(L=2, M=2, D=4), reference={"method": "none"})
    assert [g.settings(q)["alpha_eff"] for q in g.points()] == [0.5, 2.0]


# --- running, resuming, merging ----------------------------------------------------------------------

def test_merged_dataset_has_documented_dims_and_fill_values(tmp_path):
    spec = S.SweepSpec.create("z", zip={"L": [2, 4], "M": [3, 1]}, fixed=TINY, seeds=3,
                              reference={"method": "quadrature", "level": 6})
    res = S.run_sweep(spec, tmp_path, executor="serial", progress=False)
    ds = S.load_sweep(tmp_path)
    assert set(ds.dims) == {"L", "M", "seed", "step", "sample", "sample_eval", "out", "coord"}
    assert ds["f"].dims == ("L", "M", "seed", "step", "sample", "out")
    assert ds["err_h"].dims == ("L", "M", "seed", "step") and ds["total_f"].dims == ("L", "M", "step")
    for v in ("loss", "f_ref", "ref_error", "euler_f", "fluct_f", "init_dev", "unit_movement", "diverged",
              "diverged_step", "total_h_eval", "wall_time"):
        assert v in ds, v
    # the zip is sparse in (L, M): cells without a point are marked, never zero
    assert ds["computed"].sel(L=2, M=3).item() and not ds["computed"].sel(L=2, M=1).item()
    assert int(ds["diverged"].sel(L=2, M=1, seed=0)) == -1 and int(ds["diverged_step"].sel(L=2, M=1, seed=0)) == -2
    assert np.isnan(ds["total_f"].sel(L=2, M=1)).all()
    assert int(ds["diverged"].sel(L=2, M=3, seed=0)) == 0
    # the reference was computed once and stored beside the results with its error estimate
    assert len(list((tmp_path / "references").glob("ref__*.nc"))) == 1
    assert float(ds["ref_error"].sel(L=2, M=3)) > 0
    # total^2 = euler^2 + (E-1)/E fluct^2, per step (SPEC §7 split)
    t, e, f = (ds[v].sel(L=4, M=1).values for v in ("total_f", "euler_f", "fluct_f"))
    np.testing.assert_allclose(t ** 2, e ** 2 + (2 / 3) * f ** 2, rtol=1e-10)
    assert res.references_computed == 1 and len(res.computed) == 2


def test_sweeping_seed_equals_batching_seeds(tmp_path):
    base = dict(fixed=dict(TINY, M=2), reference={"method": "quadrature", "level": 6})
    one = S.SweepSpec.create("s", grid={"seed": [3, 5, 7], "L": [2, 4]}, **base)
    batched = S.SweepSpec.create("s", grid={"L": [2, 4]}, seeds=[3, 5, 7], **base)
    a = S.run_sweep(one, tmp_path / "a", executor="serial", progress=False).dataset
    b = S.run_sweep(batched, tmp_path / "b", executor="serial", progress=False).dataset
    assert a.sizes["seed"] == 3 and a["computed"].dims == ("L",)
    for v in ("f", "err_h", "total_f", "euler_f", "fluct_f", "total_h_eval", "euler_h", "ref_error", "f_ref"):
        np.testing.assert_allclose(a[v].values, b[v].transpose(*a[v].dims).values, rtol=1e-12, err_msg=v)


def test_point_is_deterministic_and_idempotent(tmp_path):
    spec = _spec(reference={"method": "none"})
    p = spec.points()[3]
    a = S.run_point(spec, p, tmp_path / "a")
    b = S.run_point(spec, p, tmp_path / "b")
    assert a.name == b.name
    with xr.open_dataset(a) as da, xr.open_dataset(b) as db:
        np.testing.assert_array_equal(da["f"].values, db["f"].values)
    mtime = a.stat().st_mtime_ns
    assert S.run_point(spec, p, tmp_path / "a") == a and a.stat().st_mtime_ns == mtime


def test_seed_chunks_give_the_same_numbers(tmp_path, monkeypatch):
    spec = _spec(reference={"method": "none"}, seeds=5)
    p = spec.points()[3]
    whole = S.compute_point(spec, p, None)
    monkeypatch.setattr(S.training, "MAX_POINT_BYTES", 2 * S.point_memory_bytes(spec.settings(p), 1))
    assert S.seed_chunk(spec.settings(p), 5) == 2
    chunked = S.compute_point(spec, p, None)
    for v in ("f", "loss", "unit_movement", "fluct_f", "init_dev"):
        np.testing.assert_array_equal(whole[v].values, chunked[v].values)


def test_failed_point_then_restart_computes_only_the_missing_one(tmp_path, monkeypatch):
    spec = _spec()
    target = spec.points()[2].label
    real = S.compute_point

    def flaky(spec_, point, ref):
        if point.label == target:
            raise RuntimeError("simulated crash")
        return real(spec_, point, ref)

    monkeypatch.setattr(S.point, "compute_point", flaky)
    with pytest.raises(S.SweepError, match="simulated crash") as e:
        S.run_sweep(spec, tmp_path / "run", executor="serial", progress=False)
    assert "rerun computes only the rest" in str(e.value)
    assert len(list((tmp_path / "run" / "points").glob("*.nc"))) == 3
    assert not (tmp_path / "run" / "merged.nc").exists()
    monkeypatch.setattr(S.point, "compute_point", real)
    res = S.run_sweep(spec, tmp_path / "run", executor="serial", progress=False)
    assert res.computed == [target] and len(res.skipped) == 3 and res.references_computed == 0
    fresh = S.run_sweep(spec, tmp_path / "fresh", executor="serial", progress=False)
    xr.testing.assert_equal(res.dataset.drop_vars("wall_time"), fresh.dataset.drop_vars("wall_time"))


def _finished(out) -> set[str]:
    return {p.name for p in (out / "points").glob("*.nc") if not p.name.startswith(".tmp-")}


def test_killed_sweep_process_resumes_without_loss(tmp_path):
    spec = _spec("killed", grid={"L": [2, 4, 8], "M": [1, 2, 3]}, reference={"method": "none"})
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import time, torch
        torch.set_num_threads(1)
        from meanode import sweep as S
        real = S.point.compute_point
        def slow(*a):
            ds = real(*a)
            time.sleep(0.4)
            return ds
        S.point.compute_point = slow
        import json
        spec = S.SweepSpec.from_dict(json.loads({json.dumps(spec.to_dict())!r}))
        S.run_sweep(spec, {str(out)!r}, executor="serial", progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(_finished(out)) < 2:
            time.sleep(0.05)
        proc.kill()
    finally:
        proc.wait()
    done = _finished(out)  # not the half-written .tmp-* file of the killed process
    assert 2 <= len(done) < 9, done
    res = S.run_sweep(spec, out, executor="serial", progress=False)
    assert len(res.computed) == 9 - len(done) and len(res.skipped) == len(done)
    assert int(res.dataset["computed"].sum()) == 9
    fresh = S.run_sweep(spec, tmp_path / "fresh", executor="serial", progress=False)
    xr.testing.assert_equal(res.dataset.drop_vars("wall_time"), fresh.dataset.drop_vars("wall_time"))


def test_divergence_is_recorded_and_never_fitted_silently(tmp_path):
    spec = S.SweepSpec.create("div", grid={"eta": [0.2, 200.0]}, fixed=dict(TINY, L=4, M=4, K=4), seeds=3,
                              reference={"method": "none"})
    ds = S.run_sweep(spec, tmp_path, executor="serial", progress=False).dataset
    bad = ds.sel(eta=200.0)
    assert (bad["diverged"] == 1).all() and (bad["diverged_step"] > 0).all()
    # records after the divergence step are NaN, so every aggregate over seeds is NaN (never zeroed)
    assert np.isnan(bad["loss"].isel(step=-1)).any() and np.isnan(bad["fluct_f"].isel(step=-1))
    assert (ds.sel(eta=0.2)["diverged"] == 0).all() and np.isfinite(ds.sel(eta=0.2)["fluct_f"]).all()
    fit = R.fit_slope(R.stack(ds), R.FitSpec("k", "t", "div", "fluct_f", "eta", None, floor=False))
    assert fit.n_used == 1 and any("diverged" in e for e in fit.excluded)


def test_executors_and_registry():
    assert isinstance(S.make_executor("pool:2"), S.LocalExecutor) and S.make_executor("pool:2").workers == 2
    assert isinstance(S.make_executor("serial"), S.SerialExecutor)
    assert isinstance(S.make_executor("local:1"), S.LocalExecutor)  # one worker needs no cluster
    with pytest.raises(ValueError, match="unknown scheduler 'nosuch'"):
        S.make_executor("nosuch:1")
    S.register_executor("echo", lambda arg: S.SerialExecutor())
    try:
        ex = S.make_executor("echo:anything")
        fut = ex.submit(S.call_task, divmod, 7, 2)
        done, pending = cf.wait([fut])
        assert fut in done and not pending and fut.result() == ((3, 1), None)
        res, err = ex.submit(S.call_task, divmod, 1, 0).result()
        assert res is None and "ZeroDivisionError" in err
    finally:
        S.EXECUTORS.pop("echo")


def test_process_executor_runs_points(tmp_path):
    spec = _spec(reference={"method": "none"}, grid={"L": [2, 3]}, fixed=dict(TINY, M=2))
    res = S.run_sweep(spec, tmp_path, executor="pool:2", progress=False)
    assert sorted(res.computed) == ["L=2", "L=3"]


def test_dry_run_plan():
    spec = _spec(grid={"L": [2, 4], "M": [1, 3]})
    s = S.plan_summary(spec)
    assert s["points"] == 4 and s["references"] == 1 and s["point_seconds"] > 0 and s["max_point_memory"] > 0


# --- fits on synthetic data -------------------------------------------------------------------------

def _synthetic(Ls, E=64, K=1, seed=0, euler_c=0.3, fluct_c=0.2, M=4, D=2):
    """f = f_ref + euler_c / L (deterministic) + fluct_c sqrt(D/(L M)) * noise (per seed)."""
    rng = np.random.default_rng(seed)
    N, d = 5, 3
    f_ref = rng.standard_normal((K + 1, N, d))
    shift = rng.standard_normal((K + 1, N, d))
    shift /= np.sqrt(np.mean(shift ** 2, axis=(1, 2), keepdims=True))
    f = np.empty((len(Ls), E, K + 1, N, d))
    for i, L in enumerate(Ls):
        noise = rng.standard_normal((E, K + 1, N, d))
        f[i] = f_ref + euler_c / L * shift + fluct_c * np.sqrt(D / (L * M)) * noise
    dev = f - f_ref
    ds = xr.Dataset(
        {"f": (("L", "seed", "step", "sample", "out"), f),
         "f_ref": (("L", "step", "sample", "out"), np.broadcast_to(f_ref, (len(Ls),) + f_ref.shape).copy()),
         "err_f": (("L", "seed", "step"), np.sqrt(np.mean(dev ** 2, axis=(3, 4)))),
         "ref_error": (("L",), np.full(len(Ls), 1e-9)),
         "diverged": (("L", "seed"), np.zeros((len(Ls), E), np.int8)),
         "computed": (("L",), np.ones(len(Ls), bool))},
        coords={"L": list(Ls), "seed": np.arange(E), "step": np.arange(K + 1)},
        attrs={"swept": json.dumps(["L"]), "spec": json.dumps({"fixed": {"M": M, "D": D}, "seeds": list(range(E))})})
    return R.stack(ds)


def test_fits_recover_known_slopes():
    Ls = [2, 4, 8, 16, 32, 64]
    st = _synthetic(Ls, euler_c=0.0, fluct_c=0.2)
    fl = R.fit_slope(st, R.FitSpec("a", "fluct", "s", "fluct_f", "L", -0.5, floor=False), B=100)
    assert abs(fl.slope + 0.5) < 0.05 and fl.ci_boot[0] < -0.5 < fl.ci_boot[1]
    tot = R.fit_slope(st, R.FitSpec("b", "total", "s", "total_f", "LM", -0.5), B=100)
    assert abs(tot.slope + 0.5) < 0.05 and tot.n_used == len(Ls)
    st = _synthetic(Ls, euler_c=0.3, fluct_c=0.02, E=200)
    eu = R.fit_slope(st, R.FitSpec("c", "euler", "s", "euler_f", "L", -1.0, dominance="euler"), B=100)
    assert abs(eu.slope + 1.0) < 0.05 and eu.ci_boot[0] < -1.0 < eu.ci_boot[1]
    # the rate model err ~ a/L + b sqrt(D/(LM)) recovers each term alone
    rate = R.fit_rate(_synthetic(Ls, euler_c=0.0, fluct_c=0.2, E=400), B=50)
    assert rate.rel_rms_residual < 0.05 and rate.a < 0.02 and abs(rate.b - 0.2) < 0.01
    assert rate.ci_b[0] <= rate.b <= rate.ci_b[1]
    rate = R.fit_rate(_synthetic(Ls, euler_c=0.3, fluct_c=1e-4, E=50), B=50)
    assert rate.rel_rms_residual < 0.05 and abs(rate.a - 0.3) < 0.01 and rate.b < 0.01


def test_floor_excludes_points_with_a_reason():
    st = _synthetic([2, 4, 8, 16], euler_c=0.0, fluct_c=0.2)
    st["ref_error"][:] = 0.02  # pretend the reference is poor
    fit = R.fit_slope(st, R.FitSpec("a", "total", "s", "total_f", "L", -0.5), B=20)
    assert fit.n_used < 4 and all("reference error" in e for e in fit.excluded)


# --- observables that need the weights (meanode.phase) -----------------------------------------------

def test_returned_weights_reproduce_the_trained_outputs_and_jvp_matches_autodiff():
    import torch

    import meanode as mn
    from meanode import phase

    prob = mn.Problem.default(D=2, N=6)
    A = {k: v for k, v in prob.arrays().items()}
    sc = mn.Scaling(0.75, 0.5)
    res = mn.train_resnet(**A, L=5, M=3, alpha=1.3, eta=0.4, steps=3, seeds=[0, 1], scaling=sc, return_weights=True)
    z0, zK, ok = res.z0, res.zK, ~res.diverged
    assert torch.equal(z0, mn.init_weights(mn.TwoLayerBlock(2), 5, 3, [0, 1]))
    X, W_E, W_U = (torch.as_tensor(a) for a in (prob.X, prob.W_E, prob.W_U))
    blk = mn.TwoLayerBlock(2)
    c = sc.multiplier(1.3, 5, 3)
    f = phase.network_outputs(zK, X, W_E, W_U, c, blk)
    assert ok.all() and np.abs(f.numpy() - res.f[:, 3]).max() < 1e-12
    np.testing.assert_allclose(res.unit_movement, ((zK - z0).flatten(1).norm(dim=1) / z0.flatten(1).norm(dim=1)).numpy(),
                               rtol=1e-10)
    dz = zK - z0
    ref = torch.func.jvp(lambda z: phase.network_outputs(z, X, W_E, W_U, c, blk), (z0,), (dz,))[1]
    assert (phase.output_jvp(z0, dz, X, W_E, W_U, c, blk) - ref).abs().max() < 1e-12
    ex = phase.extra_observables(**A, L=5, M=3, alpha=1.3, eta=1e-6, steps=2, seeds=[0, 1], scaling=sc)
    assert ex["lin_dist"].max() < 1e-9 and np.all(ex["preact_move"] > 0)
