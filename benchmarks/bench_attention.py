"""The attention block's fused contractions: hand-written vs autograd, chunk size, and vs the 2LP block.

    python benchmarks/bench_attention.py [--threads 1] [--P 64000] [--N 10] [--T 3] [--D 2] [--d-head 1]

Times (median of --reps calls) at a limit-like node count P:

* ``drift`` and ``vjp_h`` (the forward and adjoint right-hand sides of the Mean ODE) and ``vjp_z``
  (the unit update) of :class:`meanode.AttentionHeadBlock`, for several ``chunk`` sizes;
* the same ``vjp_h`` through ``torch.autograd.grad`` of the hand-written drift and through
  ``torch.func.vjp`` (what one would write without the hand derivation);
* the 2LP block's drift and vjp_h at the same P (one pre-activation per sample and unit instead of
  T^2 scores), and one training step of a finite attention network against a 2LP one.

Also checks that the hand-written and autograd vjp_h agree (relative difference printed).
"""

from __future__ import annotations

import argparse
import time

import torch

import meanode as mn


def median_time(f, reps: int) -> float:
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--P", type=int, default=64000)
    ap.add_argument("--N", type=int, default=10)
    ap.add_argument("--T", type=int, default=3)
    ap.add_argument("--D", type=int, default=2)
    ap.add_argument("--d-head", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    blk = mn.AttentionHeadBlock(a.D, a.d_head)
    z = blk.sample((a.P,), gen)
    w = torch.full((a.P,), 1.0 / a.P, dtype=torch.float64)
    h = torch.randn(a.N, a.T, a.D, generator=gen, dtype=torch.float64)
    b = torch.randn(a.N, a.T, a.D, generator=gen, dtype=torch.float64)
    print(f"AttentionHeadBlock(D={a.D}, d_head={a.d_head}), P={a.P}, N={a.N}, T={a.T}, threads={a.threads}; "
          f"median of {a.reps} (seconds)")
    for chunk in (2**15, 2**17, 2**19, 2**21, 2**23):
        blk.chunk = chunk
        print(f"  chunk 2^{chunk.bit_length() - 1:<2d}  drift {median_time(lambda: blk.drift(h, z, w), a.reps):.4f}"
              f"  vjp_h {median_time(lambda: blk.vjp_h(h, z, w, b), a.reps):.4f}"
              f"  vjp_z {median_time(lambda: blk.vjp_z(h, z, b), a.reps):.4f}")
    blk.chunk = 2**17  # the default

    def autograd_vjp_h():
        hh = h.clone().requires_grad_(True)
        return torch.autograd.grad((blk.drift(hh, z, w) * b).sum(), hh)[0]

    def func_vjp_h():
        return torch.func.vjp(lambda hh: blk.drift(hh, z, w), h)[1](b)[0]

    hand = blk.vjp_h(h, z, w, b)
    rel = float((autograd_vjp_h() - hand).norm() / hand.norm())
    print(f"  vjp_h by hand {median_time(lambda: blk.vjp_h(h, z, w, b), a.reps):.4f}, autograd.grad "
          f"{median_time(autograd_vjp_h, a.reps):.4f}, torch.func.vjp {median_time(func_vjp_h, a.reps):.4f} "
          f"(relative difference {rel:.1e})")
    two = mn.TwoLayerBlock(a.D)
    z2 = two.sample((a.P,), gen)
    h2, b2 = h[:, 0].contiguous(), b[:, 0].contiguous()
    print(f"  2LP block at the same P: drift {median_time(lambda: two.drift(h2, z2, w), a.reps):.4f}, "
          f"vjp_h {median_time(lambda: two.vjp_h(h2, z2, w, b2), a.reps):.4f}")
    seq, vec = mn.Problem.sequences(D=a.D, T=a.T, N=a.N), mn.Problem.default(D=a.D, N=a.N)
    kw = dict(L=64, M=16, alpha=1.0, eta=0.2, steps=3, seeds=range(8))
    t_att = median_time(lambda: mn.train_resnet(**seq.arrays(), block=blk, **kw), 3)
    t_2lp = median_time(lambda: mn.train_resnet(**vec.arrays(), **kw), 3)
    print(f"  train_resnet L=64, M=16, K=3, 8 seeds: attention {t_att:.3f} s, 2LP {t_2lp:.3f} s")


if __name__ == "__main__":
    main()
