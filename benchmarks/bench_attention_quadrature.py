"""How well the node rules integrate the attention Mean ODE over z ~ N(0, D I_dz) (dz = 8 at D = 2).

    python benchmarks/bench_attention_quadrature.py [--K 2] [--D 2] [--rules lattice:9 lattice:10 ...]

For each rule (``name:level``; ``gh`` = tensor Gauss-Hermite, ``smolyak``, ``lattice``, ``rqmc``
with 8 scramblings) it runs ``mean_ode_limit(block=AttentionHeadBlock(D))`` on
``Problem.sequences(D, T=3)``, alpha = 1, eta = 0.2, K steps, and prints the folded node count,
the max-abs error estimate (gap to the next coarser level, or 3 RQMC standard errors), the RMS
standard error for RQMC, the wall time, and the max-abs gaps between all the runs. First it prints
the node mean of phi at k = 0 on the default lattice family (exactly 0 under mu0, so a pure
quadrature error) at levels 6, 8, 10. See docs/attention_block.md §6.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

import meanode as mn
from meanode.limit import quadrature as q
from meanode.limit.options import LATTICE_DEFAULTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--D", type=int, default=2)
    ap.add_argument("--K", type=int, default=2)
    ap.add_argument("--rules", nargs="+", default=["lattice:9", "lattice:10", "lattice:11", "rqmc:12", "rqmc:14",
                                                   "gh:3", "gh:4", "smolyak:4", "smolyak:5"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    prob, block = mn.Problem.sequences(D=a.D, T=3), mn.AttentionHeadBlock(a.D)
    h = torch.as_tensor(prob.X @ prob.W_E.T)
    if block.dz in LATTICE_DEFAULTS:
        fam = q.lattice_family(LATTICE_DEFAULTS[block.dz][0])
        for level in (6, 8, 10):
            r = fam(level, block.dz, block.variance)
            z, w = torch.as_tensor(np.array(r.nodes)), torch.as_tensor(np.array(r.weights))
            with torch.no_grad():
                err = float(block.drift(h, z, w).abs().max())
            print(f"k = 0 node mean of phi, default lattice level {level} ({r.num_nodes} nodes): max-abs {err:.2e}")
    fs = {}
    for spec in a.rules:
        name, level = spec.split(":")
        level = int(level)
        kw = dict(rule={"gh": "gauss_hermite"}.get(name, name), level=level)
        if name in ("gh", "smolyak"):
            kw["coarse"] = level - 1
        if name == "rqmc":
            kw["replicates"] = 8
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the Smolyak warning for dz > 4 is the point being measured
            lim = mn.mean_ode_limit(**prob.arrays(), alpha=1.0, eta=0.2, steps=a.K, block=block, depth_nodes=17, **kw)
        fs[spec] = lim.f
        rms = lim.config.get("quadrature_rms_se")
        print(f"{spec:12s} nodes {lim.config.get('nodes'):>7}  estimate {lim.error_estimate:.1e}"
              + ("" if rms is None else f" (RMS s.e. {rms:.1e})") + f"  {time.perf_counter() - t:.0f} s", flush=True)
    names = list(fs)
    print("max-abs gaps between runs:")
    for x in names:
        print(f"  {x:12s} " + " ".join(f"{np.abs(fs[x] - fs[y]).max():.1e}" for y in names))


if __name__ == "__main__":
    main()
