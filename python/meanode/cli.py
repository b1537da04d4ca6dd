"""Command line: ``meanode reproduce | sweep | demo | doctor``.

``meanode demo`` trains a small seed ensemble on the default data and measures how the
initial deviation ``|h^L - h^0|`` scales with L, M and D (predicted ``sqrt(D/(L M))``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from . import doctor, measure, reproduce
from .data import Problem
from .resnet import train_resnet
from .solvers import SolverError
from .sweep import SweepError, SweepSpecError


def _init_deviation(L: int, M: int, D: int, seeds, D_max: int) -> float:
    prob = Problem.default(D=D, D_max=D_max)
    res = train_resnet(**prob.arrays(), L=L, M=M, alpha=1.0, eta=0.2, steps=0, seeds=seeds)
    return measure.init_deviation(res.h[:, 0], prob.X @ prob.W_E.T)


def demo(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    seeds = tuple(range(args.seeds))
    prob = Problem.default(D=args.D)
    print(f"meanode demo: 2LP ResNet, tanh, D={args.D}, L={args.L}, M={args.M}, alpha=1, eta={args.eta}, "
          f"{len(seeds)} seeds, N={prob.X.shape[0]}")
    res = train_resnet(**prob.arrays(), L=args.L, M=args.M, alpha=1.0, eta=args.eta, steps=args.steps,
                       seeds=seeds)
    print("\nstep   loss (mean over seeds)   seed spread")
    for k in range(args.steps + 1):
        lk = res.loss[:, k]
        print(f"{k:4d}   {np.nanmean(lk):22.6f}   {np.nanstd(lk):11.2e}")
    if res.diverged.any():
        print(f"diverged seeds: {np.array(seeds)[res.diverged].tolist()} at steps "
              f"{res.diverged_step[res.diverged].tolist()}")

    print("\ninit deviation |h^L - h^0| (RMS), predicted ~ sqrt(D/(L M)):")
    ens = tuple(range(32))
    Ls, Ms, Ds = [8, 32, 128], [2, 8, 32], [1, 2, 4, 8]
    rows = [("L", Ls, lambda v: _init_deviation(v, 8, 2, ens, 8), -0.5),
            ("M", Ms, lambda v: _init_deviation(32, v, 2, ens, 8), -0.5),
            ("D", Ds, lambda v: _init_deviation(32, 8, v, ens, 8), +0.5)]
    for name, vals, fn, predicted in rows:
        devs = [fn(v) for v in vals]
        fit = measure.loglog_slope(vals, devs)
        pts = ", ".join(f"{v}: {d:.3e}" for v, d in zip(vals, devs))
        print(f"  vs {name}: slope {fit} (predicted {predicted:+.1f});  {pts}")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meanode", description="Deep ResNets and their Neural Mean ODE limit.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a small seed ensemble; print losses and init-deviation slopes")
    d.add_argument("--L", type=int, default=32)
    d.add_argument("--M", type=int, default=8)
    d.add_argument("--D", type=int, default=2)
    d.add_argument("--eta", type=float, default=0.2)
    d.add_argument("--steps", type=int, default=10)
    d.add_argument("--seeds", type=int, default=8)
    d.add_argument("--threads", type=int, default=2, help="torch threads")
    d.set_defaults(func=demo)
    doctor.add_parser(sub)
    reproduce.add_parsers(sub)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("meanode: interrupted; what finished is on disk and a rerun continues", file=sys.stderr)
        return 130
    except (SweepError, SweepSpecError, OSError, ValueError, TypeError, SolverError) as e:
        # one bounded line for the user; full tracebacks of failed points are in OUT/failures.log
        print(f"meanode {args.command}: error: {reproduce.one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
