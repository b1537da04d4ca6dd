"""Device handling of the GPU code paths: the trainer, the limit (quadrature nodes on the device,
torch and SciPy solvers), sweep points and benchmarks/bench_gpu.py.

Every check runs with ``device="cpu"`` given explicitly through the same functions; the
``cuda`` parametrisations compare against the CPU and are skipped, with the reason, where no
CUDA device is visible."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import meanode as mn
from meanode import sweep as sw
from meanode.limit import nodes as limit_nodes

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "needs a CUDA device (torch.cuda.is_available() is False here)"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA))]
ROOT = Path(__file__).resolve().parents[1]


def _train(device, dtype=torch.float64, **kw):
    prob = mn.Problem.default(D=3, N_eval=4)
    args = dict(L=6, M=3, alpha=1.0, eta=0.2, steps=3, seeds=[0, 1, 2], activation="tanh")
    args.update(kw)
    return mn.train_resnet(**prob.arrays(), device=device, dtype=dtype, **args)


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_on_device_matches_cpu(device):
    ref = _train("cpu")
    res = _train(torch.device(device))  # a torch.device works as well as a string
    assert res.config["device"].startswith(device)
    for name in ("f", "h", "f_eval", "h_eval", "loss", "unit_movement"):
        a, b = getattr(res, name), getattr(ref, name)
        assert isinstance(a, np.ndarray) and a.dtype == np.float64, name  # results come back to the host
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-11 if device == "cuda" else 0.0, err_msg=name)
    f32 = _train(device, torch.float32)
    np.testing.assert_allclose(f32.f, ref.f, rtol=0, atol=1e-4)


def test_explicit_cpu_is_the_default_path():
    a, b = _train("cpu"), _train(torch.device("cpu"))
    np.testing.assert_array_equal(a.f, b.f)
    assert a.config["device"] == b.config["device"] == "cpu"


def test_tensor_inputs_must_be_on_the_requested_device():
    prob = mn.Problem.default(D=2)
    arrays = prob.arrays()
    arrays["X"] = torch.empty(tuple(prob.X.shape), dtype=torch.float64, device="meta")  # not on the CPU
    with pytest.raises(ValueError, match="X is on device meta, expected cpu"):
        mn.train_resnet(**arrays, L=2, M=2, alpha=1.0, eta=0.2, steps=1, device="cpu")
    with pytest.raises(ValueError, match="X is on device meta, expected cpu"):
        mn.mean_ode_limit(**arrays, alpha=1.0, eta=0.2, steps=1, device="cpu")
    # tensors already on the device (and of the dtype) are taken as they are
    t = {k: torch.as_tensor(v, dtype=torch.float64, device="cpu") for k, v in prob.arrays().items()}
    res = mn.train_resnet(**t, L=2, M=2, alpha=1.0, eta=0.2, steps=1, device="cpu")
    assert np.isfinite(res.f).all()


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised where CUDA is absent")
def test_cuda_requests_without_cuda_are_clear_errors():
    prob = mn.Problem.default(D=2)
    with pytest.raises(ValueError, match="CUDA is not available"):
        mn.mean_ode_limit(**prob.arrays(), alpha=1.0, eta=0.2, steps=1, device="cuda")
    assert sw.device_name("auto") == "cpu"


@pytest.mark.parametrize("solver", ["torch:Tsit5", "DOP853"])
@pytest.mark.parametrize("device", DEVICES)
def test_limit_quadrature_nodes_live_on_the_device(device, solver, monkeypatch):
    seen = []
    real = limit_nodes.NodeDynamics

    def spy(block, z0, w, *args, **kw):
        seen.append((z0.device.type, w.device.type, z0.dtype, w.dtype))
        return real(block, z0, w, *args, **kw)

    prob = mn.Problem.default(D=2, N=4)
    common = dict(alpha=1.0, eta=0.2, steps=2, method="quadrature", rule="gauss_hermite", level=4, solver=solver,
                  rtol=1e-9, atol=1e-11)
    ref = mn.mean_ode_limit(**prob.arrays(), device="cpu", **common)
    monkeypatch.setattr(limit_nodes, "NodeDynamics", spy)
    res = mn.mean_ode_limit(**prob.arrays(), device=device, **common)
    assert seen and all(s == (device, device, torch.float64, torch.float64) for s in seen), seen
    assert res.config["device"].startswith(device)
    assert isinstance(res.f, np.ndarray) and isinstance(res.H, np.ndarray) and isinstance(res.B, np.ndarray)
    tol = 1e-9 if device == "cuda" else 0.0  # same operations; a GPU may sum in another order
    np.testing.assert_allclose(res.f, ref.f, rtol=0, atol=tol)
    np.testing.assert_allclose(res.h, ref.h, rtol=0, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_closure_limit_on_device(device):
    prob = mn.Problem.default(D=2, N=4)
    common = dict(alpha=1.0, eta=0.2, steps=2, activation="identity", solver="torch:Tsit5", rtol=1e-10, atol=1e-12)
    ref = mn.mean_ode_limit(**prob.arrays(), device="cpu", **common)
    res = mn.mean_ode_limit(**prob.arrays(), device=device, **common)
    np.testing.assert_allclose(res.f, ref.f, rtol=0, atol=1e-10 if device == "cuda" else 0.0)


@pytest.mark.parametrize("device", ["auto"] + DEVICES)
def test_sweep_point_device_setting(device, tmp_path):
    """``fixed: {device: ...}`` runs the point there; the point's key (its file name) and its
    numbers do not depend on where it ran."""
    base = dict(D=2, K=2, N=4, L=4, M=2)
    cpu = sw.SweepSpec.create("dev", fixed=dict(base, device="cpu"), seeds=2, reference={"method": "none"})
    spec = sw.SweepSpec.create("dev", fixed=dict(base, device=device), seeds=2, reference={"method": "none"})
    (p,) = spec.points()
    assert sw.point_key(spec, p) == sw.point_key(cpu, p)
    a = sw.compute_point(cpu, p, None)
    b = sw.compute_point(spec, p, None)
    tol = 1e-11 if sw.device_name(device) != "cpu" else 0.0
    for name in ("f", "loss", "h", "unit_movement"):
        np.testing.assert_allclose(b[name].values, a[name].values, rtol=0, atol=tol, err_msg=name)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_gpu_without_a_gpu_says_so_and_exits_0(monkeypatch, capsys):
    bench = _bench()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 0
    out = capsys.readouterr().out
    assert "no GPU here" in out and "nothing to measure" in out


def test_bench_gpu_smoke_runs_every_measurement(tmp_path, capsys):
    import json
    bench = _bench()
    assert bench.main(["--smoke", "--threads", "1", "--dtype", "both", "--json", str(tmp_path / "b.json")]) == 0
    res = json.loads((tmp_path / "b.json").read_text())
    runs = res["trainer"]["runs"]
    assert set(runs) == {"cpu float64", "stand-in float64", "stand-in float32"}
    assert runs["stand-in float64"]["max_abs_diff_vs_cpu"] == 0.0
    assert runs["stand-in float32"]["max_abs_diff_vs_cpu"] < 1e-4
    assert res["copy_bandwidth_GBps"] > 0
    assert set(res["limit"]["runs"]) == {"torch:Tsit5 cpu", "torch:Tsit5 stand-in", "DOP853 cpu", "DOP853 stand-in"}
    for name in ("torch:Tsit5 stand-in", "DOP853 stand-in"):
        assert res["limit"]["runs"][name]["max_abs_diff_vs_cpu"] == 0.0
    assert "copy roofline" in capsys.readouterr().out
