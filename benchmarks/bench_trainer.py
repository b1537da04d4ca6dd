"""The 2LP trainer side by side, in one run: meanode against the trainers a sceptic would write.

    python benchmarks/bench_trainer.py [--threads 2] [--shapes tiny,current,wide,deep] [--K 15]
                                       [--repeats 5] [--json OUT.json] [--skip-baselines-above 20]
    pip install -e ".[bench]"     # JAX (CPU); without it the JAX column says why it is absent

Every implementation trains the same ensemble (same ``W_E``, ``W_U``, data and initial units
``U, V (E, L, M, D)`` from :func:`meanode.init_weights`), float64, tanh, N = 10, K steps of full-batch
GD at the MLU rate, and records ``f`` at k = 0..K:

* ``meanode``: :func:`meanode.train_resnet` (the compiled numba kernel where numba is installed);
* ``meanode-torch``: the same with ``MEANODE_NUMBA=0`` (the pure-torch 2LP kernel);
* ``jax``: ``jax.jit(jax.vmap(train))`` over seeds (compiled ahead of time, timed apart), ``jax.lax.scan`` over layers and steps,
  ``jax.value_and_grad`` for the update (about thirty lines, below);
* ``torch-ensemble``: torch autograd, one ``nn.Parameter`` pair per layer holding all E members
  (``bmm`` over the ensemble axis), ``loss.backward()``, a manual SGD step;
* ``torch-per-seed``: one ``nn.Module`` per seed, seeds one after another (what one writes first).

Timing: one untimed warm-up call (for JAX: the compile), then ``--repeats`` rounds, each round
timing every implementation once in turn (so drift on a shared machine hits all alike); medians
are reported. An implementation whose warm-up exceeds ``--skip-baselines-above`` seconds (the
torch baselines, JAX) is timed from that single call only. Output agreement: max |f - f_meanode|
over members, steps, samples, outputs, relative to max |f_meanode|.

Bandwidth: the unit bytes a trainer cannot avoid moving with the update applied in place,
``(K+1)|z| + 2K|z|`` (every forward pass reads U, V once; every backward pass reads them and
writes them back), over the time, against a large out-of-cache ``copy_`` (read + write) measured
in the same run.

Compile costs (separate from the steady state): numba's first call in a fresh process with an
empty cache directory (``NUMBA_CACHE_DIR``), and again with that cache filled (what every later
process of a sweep pays); JAX's compile is ``jit(...).lower(...).compile()``, timed apart. ``point_cost_s`` is
the cost of one sweep point with that included (JAX compiles again for every new shape; numba's
machine code serves every shape of a dtype).

The cost model: ``seconds_per_unit`` is the median meanode time divided by
``E (K+1) N L M (D+4)`` (the work unit of meanode.sweep's ``CPU_SECONDS_PER_UNIT``, which is per
core: run with ``--threads 1`` to measure it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SHAPES = {  # name: (E, L, M, D)
    "tiny": (5, 50, 4, 4),
    "current": (8, 256, 64, 8),
    "wide": (2, 50, 1000, 1000),
    "deep": (8, 1000, 4, 4),
}
ROOT = Path(__file__).resolve().parents[1]


# --- the contenders ------------------------------------------------------------------------
class PerSeedResNet(nn.Module):
    def __init__(self, U: torch.Tensor, V: torch.Tensor, alpha: float):
        super().__init__()
        L, M, D = U.shape
        self.u = nn.ParameterList([nn.Parameter(U[l].clone()) for l in range(L)])
        self.v = nn.ParameterList([nn.Parameter(V[l].clone()) for l in range(L)])
        self.c, self.D = alpha / (L * M), D

    def forward(self, h):
        for u, v in zip(self.u, self.v):
            h = h + self.c * torch.tanh(h @ u.T / self.D) @ v
        return h


def torch_per_seed(X, Y, W_E, W_U, U, V, alpha, eta, K):
    """One nn.Module per seed, autograd, seeds in turn: f (E, K+1, N, d_out)."""
    E, L, M, D = U.shape
    lam = eta * L * M * D / alpha**2
    fs = []
    for e in range(E):
        net = PerSeedResNet(U[e], V[e], alpha)
        out = []
        for k in range(K + 1):
            f = net(X @ W_E.T) @ W_U / D
            out.append(f.detach())
            if k == K:
                break
            loss = 0.5 * ((f - Y) ** 2).sum() / X.shape[0]
            net.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in net.parameters():
                    p -= lam * p.grad
        fs.append(torch.stack(out))
    return torch.stack(fs)


def torch_ensemble(X, Y, W_E, W_U, U, V, alpha, eta, K):
    """Autograd with per-layer parameters carrying the ensemble axis: ``u_l, v_l (E, M, D)``."""
    E, L, M, D = U.shape
    lam, c = eta * L * M * D / alpha**2, alpha / (L * M)
    us = [nn.Parameter(U[:, l].clone()) for l in range(L)]
    vs = [nn.Parameter(V[:, l].clone()) for l in range(L)]
    h0 = (X @ W_E.T).expand(E, -1, -1)
    out = []
    for k in range(K + 1):
        h = h0
        for u, v in zip(us, vs):
            h = h + c * torch.bmm(torch.tanh(torch.bmm(h, u.transpose(1, 2)) / D), v)
        f = h @ W_U / D
        out.append(f.detach())
        if k == K:
            break
        loss = 0.5 * ((f - Y) ** 2).sum() / X.shape[0]  # members independent: grad of the sum
        grads = torch.autograd.grad(loss, us + vs)
        with torch.no_grad():
            for p, g in zip(us + vs, grads):
                p -= lam * g
    return torch.stack(out, dim=1)


def make_jax_trainer(X, Y, W_E, W_U, L, M, D, alpha, eta, K):
    """The sceptic's JAX trainer: jit(vmap(train)) over seeds, scan over layers and steps."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    N = X.shape[0]
    c, lam = alpha / (L * M), eta * L * M * D / alpha**2
    Y, W_U = jnp.asarray(Y), jnp.asarray(W_U)
    h0 = jnp.asarray(X) @ jnp.asarray(W_E).T

    def output(UV):
        def layer(h, uv):
            u, v = uv
            return h + c * jnp.tanh(h @ u.T / D) @ v, None

        hL, _ = lax.scan(layer, h0, UV)
        return hL @ W_U / D

    def loss(UV):
        f = output(UV)
        return 0.5 * jnp.sum((f - Y) ** 2) / N, f

    def train(U, V):
        def step(UV, _):
            (_, f), g = jax.value_and_grad(loss, has_aux=True)(UV)
            return (UV[0] - lam * g[0], UV[1] - lam * g[1]), f

        UV, fs = lax.scan(step, (U, V), None, length=K)
        return jnp.concatenate([fs, output(UV)[None]])

    return jax.jit(jax.vmap(train))


def compile_jax(jitted, U, V):
    """Compile ahead of time for these shapes: ``(seconds, run)``, ``run()`` the compiled call."""
    t = time.perf_counter()
    compiled = jitted.lower(U, V).compile()
    seconds = time.perf_counter() - t
    return seconds, lambda: np.asarray(compiled(U, V).block_until_ready())


def _import_jax(threads: int):
    """JAX in float64 with ``threads`` CPU threads, or the reason it is not available."""
    if "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if threads == 1 and "multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    try:
        import jax
    except ImportError as err:
        return None, f"JAX is not installed ({err}); pip install -e '.[bench]' adds it"
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    return jax, None


# --- measurements ---------------------------------------------------------------------------
def copy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes per second of a large out-of-cache ``copy_`` (read + write counted)."""
    a = torch.empty(nbytes // 8, dtype=torch.float64).normal_()
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def first_call_seconds(threads: int, cache_dir: str, dtype: str = "float64") -> dict:
    """A fresh process: seconds to import meanode, and for its first and second tiny training."""
    code = (
        "import time; t0 = time.perf_counter(); import torch; torch.set_num_threads(%d); import meanode as mn;"
        "t1 = time.perf_counter(); p = mn.Problem.default(D=2);"
        "kw = dict(L=4, M=2, alpha=1.0, eta=0.2, steps=2, seeds=(0, 1), dtype=torch.%s);"
        "mn.train_resnet(**p.arrays(), **kw); t2 = time.perf_counter();"
        "mn.train_resnet(**p.arrays(), **kw); t3 = time.perf_counter();"
        "kw.update(L=1000, seeds=range(8)); mn.train_resnet(**p.arrays(), **kw); t4 = time.perf_counter();"
        "mn.train_resnet(**p.arrays(), **kw); t5 = time.perf_counter();"
        "print(t1 - t0, (t2 - t1) - (t3 - t2), (t4 - t3) - (t5 - t4))" % (threads, dtype)
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT / "python") + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    imp, serial, parallel = (float(x) for x in out.stdout.split())
    return dict(import_s=imp, first_call_extra_s=serial + parallel, serial_kernel_s=serial,
                parallel_kernel_s=parallel)


def numba_compile_costs(threads: int) -> dict:
    """numba: the first-call cost in a fresh process, cold (empty cache) then cached."""
    try:
        import numba  # noqa: F401
    except ImportError as err:
        return dict(skipped=f"numba is not installed ({err}): meanode runs its torch kernel")
    with tempfile.TemporaryDirectory() as d:
        cold = first_call_seconds(threads, d)
        cached = first_call_seconds(threads, d)
    return dict(cold=cold, cached=cached)


def bench_shape(name, E, L, M, D, args, jax_mod, jax_why) -> dict:
    import meanode as mn

    K = args.K
    prob = mn.Problem.default(D=D)
    t64 = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    X, Y, W_E, W_U = map(t64, (prob.X, prob.Y, prob.W_E, prob.W_U))
    z = mn.init_weights(mn.TwoLayerBlock(D), L, M, range(E))
    U, V = z[..., :D].contiguous(), z[..., D:].contiguous()
    z = None

    def meanode(numba: bool):
        def run():
            os.environ["MEANODE_NUMBA"] = "1" if numba else "0"
            try:
                return mn.train_resnet(X, Y, W_E, W_U, L=L, M=M, alpha=1.0, eta=args.eta, steps=K, seeds=range(E),
                                       init=(U, V)).f
            finally:
                os.environ.pop("MEANODE_NUMBA", None)
        return run

    impls = {"meanode": meanode(True), "meanode-torch": meanode(False)}
    skipped = {}
    if jax_mod is not None:
        jitted = make_jax_trainer(prob.X, prob.Y, prob.W_E, prob.W_U, L, M, D, 1.0, args.eta, K)
        jax_compile_s, impls["jax"] = compile_jax(jitted, jax_mod.numpy.asarray(U.numpy()),
                                                  jax_mod.numpy.asarray(V.numpy()))
    else:
        skipped["jax"] = jax_why
    impls["torch-ensemble"] = lambda: torch_ensemble(X, Y, W_E, W_U, U, V, 1.0, args.eta, K).numpy()
    impls["torch-per-seed"] = lambda: torch_per_seed(X, Y, W_E, W_U, U, V, 1.0, args.eta, K).numpy()
    for k in args.skip:
        if impls.pop(k, None) is not None:
            skipped[k] = "skipped (--skip)"

    first, times, outs = {}, {k: [] for k in impls}, {}
    for k, fn in impls.items():
        first[k], outs[k] = _timed(fn)
    slow = {k for k in impls if first[k] > args.skip_baselines_above and not k.startswith("meanode")}
    for _ in range(args.repeats):
        for k, fn in impls.items():
            if k not in slow:
                times[k].append(_timed(fn)[0])
    for k in slow:
        times[k] = [first[k]]  # too slow to repeat: its single (warm-up) call

    ref = outs["meanode"]
    scale = float(np.abs(ref).max())
    zbytes = 2 * E * L * M * D * 8
    traffic = ((K + 1) + 2 * K) * zbytes
    work = E * (K + 1) * X.shape[0] * L * M * (D + 4)
    res: dict = dict(shape=dict(E=E, L=L, M=M, D=D, N=int(X.shape[0]), K=K), units_MiB=zbytes / 2**20,
                     traffic_GiB=traffic / 2**30, runs={}, skipped=skipped)
    for k in impls:
        med = float(np.median(times[k]))
        r = dict(median_s=med, min_s=float(np.min(times[k])), n_timed=len(times[k]),
                 max_rel_diff_vs_meanode=float(np.abs(outs[k] - ref).max()) / scale,
                 achieved_GBps=traffic / med / 1e9)
        if k == "jax":
            r["compile_s"] = jax_compile_s  # jit(...).lower(...).compile(), timed apart
            r["point_cost_s"] = jax_compile_s + med  # a new shape compiles again
        res["runs"][k] = r
    res["seconds_per_unit"] = res["runs"]["meanode"]["median_s"] / work
    if "jax" in res["runs"]:
        res["meanode_over_jax"] = res["runs"]["meanode"]["median_s"] / res["runs"]["jax"]["median_s"]
    return res


def report(out: dict) -> None:
    bw = out["copy_bandwidth_GBps"]
    print(f"torch {out['torch']}, threads {out['threads']}, K = {out['K']}, float64, tanh; "
          f"copy_ bandwidth {bw:.1f} GB/s (read + write, same run)")
    names = ["meanode", "meanode-torch", "jax", "torch-ensemble", "torch-per-seed"]
    print(f"{'shape (E, L, M, D)':<22}" + "".join(f"{n:>16}" for n in names) + f"{'meanode/jax':>13}{'bw frac':>9}")
    for sname, r in out["shapes"].items():
        s = r["shape"]
        row = f"{sname + ' ' + str((s['E'], s['L'], s['M'], s['D'])):<22}"
        for n in names:
            row += f"{r['runs'][n]['median_s']:>15.4f}s" if n in r["runs"] else f"{'-':>16}"
        ratio = f"{r['meanode_over_jax']:.2f}" if "meanode_over_jax" in r else "-"
        row += f"{ratio:>13}{r['runs']['meanode']['achieved_GBps'] / bw:>9.1%}"
        print(row)
    print("max relative |f - f_meanode|: " + "; ".join(
        f"{sname}: " + ", ".join(f"{n} {v['max_rel_diff_vs_meanode']:.1e}" for n, v in r["runs"].items() if n != "meanode")
        for sname, r in out["shapes"].items()))
    jc = {sname: r["runs"]["jax"]["compile_s"] for sname, r in out["shapes"].items() if "jax" in r["runs"]}
    if jc:
        print("jax compile (s): " + ", ".join(f"{k} {v:.2f}" for k, v in jc.items()))
    nc = out["numba_compile"]
    if "cold" in nc:
        print(f"numba first call in a fresh process: cold cache {nc['cold']['first_call_extra_s']:.2f} s, "
              f"cached {nc['cached']['first_call_extra_s']:.2f} s (import meanode {nc['cached']['import_s']:.2f} s)")
    else:
        print(f"numba: {nc['skipped']}")
    print("seconds per unit (cost model, E (K+1) N L M (D+4)): " + ", ".join(
        f"{k} {r['seconds_per_unit']:.2e}" for k, r in out["shapes"].items()))
    for sname, r in out["shapes"].items():
        for k, why in r["skipped"].items():
            print(f"{sname}: {k} not run: {why}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shapes", default="tiny,current,wide,deep",
                   help=f"comma-separated names from {sorted(SHAPES)} or E,L,M,D quadruples joined by ':'")
    p.add_argument("--K", type=int, default=15)
    p.add_argument("--eta", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-baselines-above", type=float, default=20.0,
                   help="time a contender other than meanode from its one warm-up call when it exceeds this (s)")
    p.add_argument("--skip", default="", help="comma-separated contenders not to run (e.g. torch-per-seed)")
    p.add_argument("--no-compile-costs", action="store_true", help="skip the fresh-process numba measurements")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args(argv)
    args.skip = [s for s in args.skip.split(",") if s]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    torch.set_num_threads(args.threads)
    jax_mod, jax_why = _import_jax(args.threads)
    if jax_why:
        print(f"bench_trainer: {jax_why}; the JAX column is left out")

    shapes = {}
    for item in args.shapes.split(","):
        if item in SHAPES:
            shapes[item] = SHAPES[item]
        else:
            q = tuple(int(x) for x in item.split(":"))
            if len(q) != 4:
                raise SystemExit(f"--shapes: {item!r} is neither a known name nor E:L:M:D")
            shapes[item] = q
    out: dict = dict(torch=str(torch.__version__), threads=args.threads, K=args.K,
                     jax=None if jax_mod is None else jax_mod.__version__)
    out["copy_bandwidth_GBps"] = copy_bandwidth() / 1e9
    out["numba_compile"] = (dict(skipped="--no-compile-costs") if args.no_compile_costs
                            else numba_compile_costs(args.threads))
    out["shapes"] = {}
    for name, (E, L, M, D) in shapes.items():
        out["shapes"][name] = r = bench_shape(name, E, L, M, D, args, jax_mod, jax_why)
        r["runs"]["meanode"]["fraction_of_copy"] = r["runs"]["meanode"]["achieved_GBps"] / out["copy_bandwidth_GBps"]
        nc = out["numba_compile"]
        if "cached" in nc:
            r["runs"]["meanode"]["point_cost_s"] = r["runs"]["meanode"]["median_s"] + nc["cached"]["first_call_extra_s"]
            r["runs"]["meanode"]["point_cost_cold_s"] = r["runs"]["meanode"]["median_s"] + nc["cold"]["first_call_extra_s"]
        print(f"  {name}: " + ", ".join(f"{k} {v['median_s']:.4f} s" for k, v in r["runs"].items()), flush=True)
    out["copy_bandwidth_GBps_end"] = copy_bandwidth() / 1e9
    report(out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
