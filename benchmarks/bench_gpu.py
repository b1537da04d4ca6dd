"""The GPU path: the batched trainer and the Mean ODE limit on CUDA against the CPU, in one run.

    python benchmarks/bench_gpu.py [--E 8 --L 256 --M 64 --D 8 --K 15] [--dtype float64|float32|both]
                                   [--limit-D 2 --limit-K 5 --limit-level 16] [--json OUT.json]

Where no CUDA device is visible the script says so and exits 0 (nothing to measure).
``--smoke`` runs the very same code with the CPU standing in for the GPU on tiny shapes (to check
the script itself on a machine without one; its numbers mean nothing).

Measured, all in the same process:

* trainer: :func:`meanode.train_resnet` with ``device="cuda"`` (float64 by default, float32 on
  request) against the CPU path on the same shapes and the same initial units; wall time,
  throughput (unit-steps per second: E L M K / t), agreement of the outputs with the CPU's
  (max-abs, float64 should agree to ~1e-12);
* achieved bandwidth: the bytes of units the trainer cannot avoid moving, ``(K+1)|z| + 2K|z|``
  (every forward pass reads all units, every backward pass reads them and writes them back),
  divided by the time, against a large device-to-device ``copy_`` (read + write) measured in
  the same run; every GPU timing is bracketed by ``torch.cuda.synchronize()``;
* limit: :func:`meanode.mean_ode_limit` (tensor Gauss-Hermite quadrature, the nodes living on
  the device) with ``device="cuda"`` against ``device="cpu"``, for the solvers ``torch:Tsit5``
  (state stays on the device) and ``DOP853`` (SciPy: the state goes to the host at each RHS
  evaluation); wall time and max-abs difference of the outputs.

GPU timings are the best of ``--repeats`` after a warm-up run (CUDA context, kernel caches); the
CPU runs are long and timed once, without warm-up. ``--threads`` sets the CPU's torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import meanode as mn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1, warmup: int = 1):
    """Best wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs; synchronized on
    the device around each run. Returns ``(seconds, last result)``."""
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    best = float("inf")
    for _ in range(max(1, repeats)):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 5) -> float:
    """Bytes per second of ``b.copy_(a)`` on ``device`` (read + write counted)."""
    a = torch.empty(nbytes // 8, dtype=torch.float64, device=device).normal_()
    b = torch.empty_like(a)
    t, _ = timed(lambda: b.copy_(a), device, repeats=repeats, warmup=2)
    a = b = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * nbytes / t


def bench_trainer(args, gpu: torch.device, cpu: torch.device, dtypes) -> dict:
    E, L, M, D, K = args.E, args.L, args.M, args.D, args.K
    prob = mn.Problem.default(D=D)
    z = mn.init_weights(mn.TwoLayerBlock(D), L, M, range(E))  # float64 on the CPU: both sides start equal
    U, V = z[..., :D].contiguous(), z[..., D:].contiguous()

    def run(device, dtype):
        return mn.train_resnet(**prob.arrays(), L=L, M=M, alpha=1.0, eta=args.eta, steps=K, seeds=range(E),
                               init=(U, V), device=device, dtype=dtype)

    out: dict = dict(shape=dict(E=E, L=L, M=M, D=D, K=K, N=int(prob.X.shape[0])), runs={})
    t_cpu, res_cpu = timed(lambda: run(cpu, torch.float64), cpu, repeats=args.cpu_repeats, warmup=0)
    ref = res_cpu.f
    out["runs"]["cpu float64"] = dict(seconds=t_cpu)
    for dt in dtypes:
        dtype = getattr(torch, dt)
        t, res = timed(lambda dtype=dtype: run(gpu, dtype), gpu, repeats=args.repeats, warmup=1)
        zbytes = E * L * M * 2 * D * torch.finfo(dtype).bits // 8
        traffic = (K + 1) * zbytes + 2 * K * zbytes
        diff = float(np.nanmax(np.abs(res.f - ref)))
        out["runs"][f"{'cuda' if gpu.type == 'cuda' else 'stand-in'} {dt}"] = dict(
            seconds=t, speedup_vs_cpu=t_cpu / t, unit_steps_per_s=E * L * M * K / t, units_MiB=zbytes / 2**20,
            traffic_GiB=traffic / 2**30, achieved_GBps=traffic / t / 1e9, max_abs_diff_vs_cpu=diff,
            diverged=int(res.diverged.sum()))
    zbytes64 = E * L * M * 2 * D * 8
    out["cpu float64"] = dict(unit_steps_per_s=E * L * M * K / t_cpu,
                              achieved_GBps=((K + 1) + 2 * K) * zbytes64 / t_cpu / 1e9)
    return out


def bench_limit(args, gpu: torch.device, cpu: torch.device) -> dict:
    prob = mn.Problem.default(D=args.limit_D)
    out: dict = dict(shape=dict(D=args.limit_D, K=args.limit_K, level=args.limit_level,
                                quadrature_dims=2 * args.limit_D), runs={})
    label = "cuda" if gpu.type == "cuda" else "stand-in"
    for solver in ("torch:Tsit5", "DOP853"):
        def run(device, solver=solver):
            return mn.mean_ode_limit(**prob.arrays(), alpha=1.0, eta=args.eta, steps=args.limit_K,
                                     method="quadrature", rule="gauss_hermite", level=args.limit_level,
                                     solver=solver, rtol=args.limit_rtol, atol=args.limit_atol, device=str(device))
        t_c, r_c = timed(lambda: run(cpu), cpu, repeats=1, warmup=0)
        t_g, r_g = timed(lambda: run(gpu), gpu, repeats=1, warmup=1 if gpu.type == "cuda" else 0)
        for name, t, r in ((f"{solver} cpu", t_c, r_c), (f"{solver} {label}", t_g, r_g)):
            out["runs"][name] = dict(seconds=t, rhs_evaluations=int(r.stats.nfev),
                                     error_estimate=float(r.error_estimate), solver=str(r.solver),
                                     device=str(r.config.get("device")))
        out["runs"][f"{solver} {label}"].update(speedup_vs_cpu=t_c / t_g,
                                                max_abs_diff_vs_cpu=float(np.max(np.abs(r_g.f - r_c.f))))
    return out


def report(res: dict, gpu_name: str) -> None:
    tr = res["trainer"]
    s = tr["shape"]
    print(f"device: {gpu_name}; torch {torch.__version__}; CPU threads {torch.get_num_threads()}")
    print(f"trainer: E={s['E']} L={s['L']} M={s['M']} D={s['D']} N={s['N']} K={s['K']}")
    cpu = tr["runs"]["cpu float64"]["seconds"]
    print(f"  {'cpu float64':<16}: {cpu:8.3f} s  {tr['cpu float64']['unit_steps_per_s']:10.3e} unit-steps/s"
          f"  {tr['cpu float64']['achieved_GBps']:8.2f} GB/s")
    for name, r in tr["runs"].items():
        if name == "cpu float64":
            continue
        print(f"  {name:<16}: {r['seconds']:8.3f} s  {r['unit_steps_per_s']:10.3e} unit-steps/s"
              f"  {r['achieved_GBps']:8.2f} GB/s  x{r['speedup_vs_cpu']:.1f} vs CPU  max|f - f_cpu| {r['max_abs_diff_vs_cpu']:.1e}")
    bw = res["copy_bandwidth_GBps"]
    print(f"  device copy_ bandwidth: {bw:8.2f} GB/s (read + write, same run)")
    for name, r in tr["runs"].items():
        if name != "cpu float64":
            print(f"  {name}: {r['achieved_GBps'] / bw:6.1%} of the copy roofline")
    lim = res["limit"]
    s = lim["shape"]
    print(f"limit: mean_ode_limit, Gauss-Hermite level {s['level']} in {s['quadrature_dims']} dims, D={s['D']} K={s['K']}")
    for name, r in lim["runs"].items():
        extra = (f"  x{r['speedup_vs_cpu']:.1f} vs CPU  max|f - f_cpu| {r['max_abs_diff_vs_cpu']:.1e}"
                 if "speedup_vs_cpu" in r else "")
        print(f"  {name:<22}: {r['seconds']:8.3f} s  {r['rhs_evaluations']:6d} RHS evals  ({r['solver']}){extra}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--E", type=int, default=8)
    p.add_argument("--L", type=int, default=256)
    p.add_argument("--M", type=int, default=64)
    p.add_argument("--D", type=int, default=8)
    p.add_argument("--K", type=int, default=15)
    p.add_argument("--eta", type=float, default=0.2)
    p.add_argument("--dtype", choices=("float64", "float32", "both"), default="float64",
                   help="trainer precision on the GPU (the CPU reference is float64)")
    p.add_argument("--repeats", type=int, default=3, help="GPU timing repeats (best is kept)")
    p.add_argument("--cpu-repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU torch threads (default: torch's)")
    p.add_argument("--copy-MiB", type=int, default=1024, help="size of the device copy_ for the roofline")
    p.add_argument("--limit-D", type=int, default=2)
    p.add_argument("--limit-K", type=int, default=5)
    p.add_argument("--limit-level", type=int, default=16, help="Gauss-Hermite nodes per dimension")
    p.add_argument("--limit-rtol", type=float, default=1e-8)
    p.add_argument("--limit-atol", type=float, default=1e-10)
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--smoke", action="store_true",
                   help="no GPU needed: the CPU stands in for it, tiny shapes (checks the script only)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.smoke:
        args.E, args.L, args.M, args.D, args.K = 2, 8, 4, 2, 2
        args.limit_K, args.limit_level, args.copy_MiB, args.repeats = 1, 4, 8, 1
        gpu, gpu_name = torch.device("cpu"), "CPU standing in for a GPU (--smoke: the numbers mean nothing)"
    else:
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else f"torch (CUDA {torch.version.cuda}) sees no CUDA device"
                        f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
            print(f"bench_gpu: no GPU here ({why}); nothing to measure. Run it on a machine with a CUDA GPU "
                  "(or --smoke to check the script on the CPU).")
            return 0
        gpu = torch.device("cuda", torch.cuda.current_device())
        gpu_name = torch.cuda.get_device_name(gpu)
    cpu = torch.device("cpu")
    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)

    res = dict(device=gpu_name, torch=str(torch.__version__), cpu_threads=torch.get_num_threads())
    res["trainer"] = bench_trainer(args, gpu, cpu, dtypes)
    res["copy_bandwidth_GBps"] = copy_bandwidth(gpu, args.copy_MiB * 2**20) / 1e9
    res["limit"] = bench_limit(args, gpu, cpu)
    report(res, gpu_name)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
