"""Batched trainer vs a per-seed torch.autograd ResNet, and achieved bandwidth vs a copy.

    python benchmarks/bench_trainer.py [--threads 2] [--E 8 --L 256 --M 64 --D 8 --K 15]

The baseline is what one writes first: an ``nn.Module`` per seed with one ``nn.Parameter``
pair (u_l, v_l) per layer, loss.backward(), a manual SGD step, seeds one after another.
Both start from the same weights; the script checks they give the same outputs.

Bytes counted for the batched trainer (the traffic it cannot avoid): every forward pass reads
all units once, every backward pass reads them and writes them back (the update is applied
in place, layer by layer): ``(K+1) |z| + 2 K |z|`` bytes. The roofline is a large
out-of-cache ``copy_`` (read + write) measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import meanode as mn


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


def baseline(X, Y, W_E, W_U, U, V, alpha, eta, K):
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


def copy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    a = torch.empty(nbytes // 8, dtype=torch.float64).normal_()
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best  # read + write


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--E", type=int, default=8)
    p.add_argument("--L", type=int, default=256)
    p.add_argument("--M", type=int, default=64)
    p.add_argument("--D", type=int, default=8)
    p.add_argument("--K", type=int, default=15)
    p.add_argument("--eta", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    E, L, M, D, K = args.E, args.L, args.M, args.D, args.K

    prob = mn.Problem.default(D=D)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    X, Y, W_E, W_U = map(t, (prob.X, prob.Y, prob.W_E, prob.W_U))
    z = mn.init_weights(mn.TwoLayerBlock(D), L, M, range(E))
    U, V = z[..., :D].contiguous(), z[..., D:].contiguous()

    def batched():
        return mn.train_resnet(X, Y, W_E, W_U, L=L, M=M, alpha=1.0, eta=args.eta, steps=K,
                               seeds=range(E), init=(U, V))

    batched()  # warm-up
    t_batched = min(_timed(batched) for _ in range(args.repeats))
    res = batched()
    t0 = time.perf_counter()
    f_ref = baseline(X, Y, W_E, W_U, U, V, 1.0, args.eta, K)
    t_base = time.perf_counter() - t0
    agree = float(np.abs(res.f - f_ref.numpy()).max())

    zbytes = z.numel() * 8
    traffic = (K + 1) * zbytes + 2 * K * zbytes
    bw = copy_bandwidth()
    achieved = traffic / t_batched
    print(f"shape: E={E} L={L} M={M} D={D} N={X.shape[0]} K={K} float64, torch threads={args.threads}")
    print(f"batched trainer        : {t_batched:8.3f} s")
    print(f"per-seed autograd      : {t_base:8.3f} s")
    print(f"speed-up               : {t_base / t_batched:8.1f} x   (target >= 5x)")
    print(f"max |f_batched - f_ref|: {agree:.2e}")
    print(f"units |z|              : {zbytes / 2**20:.1f} MiB; traffic {traffic / 2**30:.2f} GiB")
    print(f"achieved bandwidth     : {achieved / 1e9:8.2f} GB/s")
    print(f"copy bandwidth         : {bw / 1e9:8.2f} GB/s")
    print(f"fraction of roofline   : {achieved / bw:8.1%}   (target >= 30%)")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
