"""Attention heads as units: finite attention ResNets approach their Neural Mean ODE limit.

    python examples/attention_heads.py [--out DIR] [--D 2] [--K 3] [--level 16] [--seeds 32] [--no-2lp]

Cost at the defaults: ~4 CPU-minutes on one core, of which the limit (RQMC 2^16 x 8, dz = 8) ~3.
``--D 1 --level 0`` (dz = 4, default lattice, accurate to ~1e-4) is the case where the limit's
max-abs estimate sits 20x below every finite error. At D = 2 that margin takes
``--K 2 --LM 16 32 64 128 256 512 1024 --fit-min 64 --replicates 176`` (~50 CPU-minutes, the
limit nearly all of it; docs/attention_block.md §7: 24.6x output, 37.6x hidden).

D = 2, d_head = 1 (dz = 8 unit dimensions), T = 3 tokens, N = 10 sequences, d_in = d_out = 5,
alpha = 1, eta = 0.2 (docs/attention_block.md). Steps:

1. the limit, ``mean_ode_limit(block=AttentionHeadBlock(D))`` by RQMC (2^level scrambled Sobol
   points, 8 scramblings; the estimate is 3 standard errors of their mean, max over steps,
   samples and outputs); ``--level 0`` uses the default rule (a lattice; at D = 1, dz = 4,
   the default lattice is accurate to ~1e-4);
2. finite networks, ``train_resnet(block=...)``, ``--seeds`` seeds per shape, L*M = 16 .. 4096
   in three splits: one head per layer (L*M, 1), four heads per layer (L*M/4, 4) and square
   (sqrt, sqrt);
3. output and hidden errors at step K (RMS over seeds, samples, outputs/tokens/coordinates), their
   log-log slopes vs L*M (over L*M >= --fit-min) with 95% CIs (meanode.measure.loglog_slope), the
   deep/square ratio, the Euler part (RMS of the seed mean, SPEC §7) vs L at M = 256, 48 seeds;
4. the 2LP block (tanh) on default data of the same sizes beside it (its own lattice limit);
5. a figure ``attention_heads.png`` and the numbers in ``attention_heads.json`` under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

import meanode as mn
from meanode import measure


#: depths of the Euler-part sweep (M = 256 heads per layer, 48 seeds)
EULER_L = (2, 4, 8, 16)


def limit(prob, block, K: int, level: int, replicates: int = 8, **kw):
    t = time.perf_counter()
    if level > 0:
        kw.update(rule="rqmc", level=level, replicates=replicates)
    lim = mn.mean_ode_limit(**prob.arrays(), alpha=1.0, eta=0.2, steps=K, block=block, depth_nodes=13,
                            rtol=1e-7, atol=1e-9, **kw)
    return lim, time.perf_counter() - t


def errors(prob, block, lim, shapes, K: int, seeds: int) -> list[dict]:
    rows = []
    for L, M in shapes:
        t = time.perf_counter()
        r = mn.train_resnet(**prob.arrays(), L=L, M=M, alpha=1.0, eta=0.2, steps=K, block=block, seeds=range(seeds))
        if r.diverged.any():
            rows.append(dict(L=L, M=M, diverged=int(r.diverged.sum())))
            continue
        fs, hs = measure.error_split(r.f[:, K], lim.f[K]), measure.error_split(r.h[:, K], lim.h[K])
        f_k = [float(measure.rms(r.f[:, k] - lim.f[k])) for k in range(K + 1)]
        rows.append(dict(L=L, M=M, LM=L * M, f=fs.total, h=hs.total, euler_f=fs.euler, fluct_f=fs.fluctuation,
                         euler_h=hs.euler, f_per_step=f_k, time=time.perf_counter() - t))
    return rows


def fit(rows, key: str, select) -> measure.Fit:
    pts = [r for r in rows if "f" in r and select(r)]
    return measure.loglog_slope([r["LM"] for r in pts], [r[key] for r in pts])


def sweep(prob, block, lim, K: int, seeds: int, LMs, fit_min: int) -> dict:
    splits = {"one head per layer (L*M, 1)": [(n, 1) for n in LMs],
              "four heads per layer (L*M/4, 4)": [(n // 4, 4) for n in LMs],
              "square (sqrt(L*M), sqrt(L*M))": [(math.isqrt(n), math.isqrt(n)) for n in LMs]}
    out = {}
    for name, shapes in splits.items():
        rows = errors(prob, block, lim, shapes, K, seeds)
        out[name] = dict(rows=rows, fit_f=fit(rows, "f", lambda r: r["LM"] >= fit_min),
                         fit_h=fit(rows, "h", lambda r: r["LM"] >= fit_min))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="examples-out/attention_heads")
    ap.add_argument("--D", type=int, default=2)
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--level", type=int, default=16, help="RQMC log2 node count (0: the default rule)")
    ap.add_argument("--replicates", type=int, default=8, help="RQMC scramblings (the estimate: 3 standard errors)")
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--LM", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    ap.add_argument("--fit-min", type=int, default=64, help="fit slopes over L*M >= this")
    ap.add_argument("--no-2lp", action="store_true", help="skip the 2LP comparison")
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()
    K = a.K
    prob, block = mn.Problem.sequences(D=a.D, T=3), mn.AttentionHeadBlock(a.D)
    lim, t_lim = limit(prob, block, K, a.level, a.replicates)
    print(f"limit: {lim.method}, {lim.config.get('nodes')} nodes, estimate {lim.error_estimate:.2e} "
          f"({', '.join(f'{k} {v:.1e}' for k, v in lim.error_parts.items())}), {t_lim:.0f} s; "
          f"loss {lim.loss[0]:.4f} -> {lim.loss[-1]:.4f}")
    res = sweep(prob, block, lim, K, a.seeds, a.LM, a.fit_min)
    smallest = min(r["f"] for s in res.values() for r in s["rows"] if "f" in r)
    smallest_h = min(r["h"] for s in res.values() for r in s["rows"] if "h" in r)
    for name, s in res.items():
        print(f"{name}: output slope {s['fit_f']}, hidden slope {s['fit_h']}")
        for r in s["rows"]:
            if "f" in r:
                print(f"   L={r['L']:5d} M={r['M']:4d}  output {r['f']:.4e}  hidden {r['h']:.4e}  "
                      f"(Euler part {r['euler_f']:.1e}, fluctuation {r['fluct_f']:.1e}, {r['time']:.1f} s)")
            else:
                print(f"   L={r['L']:5d} M={r['M']:4d}  {r['diverged']} of {a.seeds} seeds diverged")
    deep, square = (res[k]["rows"] for k in ("one head per layer (L*M, 1)", "square (sqrt(L*M), sqrt(L*M))"))
    # only where both splits have the same number of heads (L*M a perfect square)
    pairs = [(d, s) for d, s in zip(deep, square) if "f" in d and "f" in s and d["LM"] == s["LM"]]
    ratios = [d["f"] / s["f"] for d, s in pairs]
    print("deep / square output error at each common L*M: "
          + ", ".join(f"{d['LM']}: {x:.3f}" for (d, _), x in zip(pairs, ratios)))
    rms_se = lim.config.get("quadrature_rms_se")
    print(f"smallest finite output error / limit estimate (max-abs): {smallest / lim.error_estimate:.1f}"
          + ("" if rms_se is None else f"; / RMS standard error of the limit: {smallest / rms_se:.0f}"))
    print(f"smallest finite hidden error / limit h estimate (max-abs): {smallest_h / lim.h_error_estimate:.1f}")

    # Euler part: RMS of the seed mean at a wide layer (M = 256), small L, 48 seeds
    e_rows = errors(prob, block, lim, [(L, 256) for L in EULER_L], K, 48)
    e_fit = measure.loglog_slope([r["L"] for r in e_rows], [r["euler_f"] for r in e_rows])
    print("Euler part (output) vs L at M = 256, 48 seeds: " + ", ".join(f"L={r['L']}: {r['euler_f']:.2e} "
          f"(seed noise of the mean {r['fluct_f'] / math.sqrt(48):.1e})" for r in e_rows) + f"; slope {e_fit}")

    two = None
    if not a.no_2lp:
        vec = mn.Problem.default(D=a.D)
        t = time.perf_counter()
        lim2 = mn.mean_ode_limit(**vec.arrays(), alpha=1.0, eta=0.2, steps=K, depth_nodes=13, rtol=1e-7, atol=1e-9)
        t2 = time.perf_counter() - t
        rows2 = errors(vec, None, lim2, [(n, 1) for n in a.LM], K, a.seeds) + \
            errors(vec, None, lim2, [(math.isqrt(n), math.isqrt(n)) for n in a.LM], K, a.seeds)
        two = dict(rows=rows2, estimate=lim2.error_estimate, time=t2,
                   fit_f=fit(rows2, "f", lambda r: r["M"] == r["L"]), fit_f_deep=fit(rows2, "f", lambda r: r["M"] == 1))
        print(f"2LP (tanh) on default data: limit estimate {lim2.error_estimate:.1e} ({t2:.0f} s); output slope "
              f"square {two['fit_f']}, deep {two['fit_f_deep']}")

    summary = dict(D=a.D, K=K, seeds=a.seeds, LM=a.LM, fit_min=a.fit_min,
                   limit=dict(method=lim.method, estimate=lim.error_estimate, parts=lim.error_parts,
                              h_estimate=lim.h_error_estimate, rms_se=rms_se, time=t_lim),
                   smallest_error=dict(f=smallest, h=smallest_h, f_over_estimate=smallest / lim.error_estimate,
                                       h_over_estimate=smallest_h / lim.h_error_estimate),
                   splits={k: dict(rows=v["rows"], slope_f=v["fit_f"].slope, ci_f=v["fit_f"].ci,
                                   slope_h=v["fit_h"].slope, ci_h=v["fit_h"].ci) for k, v in res.items()},
                   deep_over_square=ratios, euler=dict(rows=e_rows, slope=e_fit.slope, ci=e_fit.ci),
                   two_layer=None if two is None else dict(rows=two["rows"], estimate=two["estimate"],
                                                           slope_square=two["fit_f"].slope,
                                                           slope_deep=two["fit_f_deep"].slope),
                   wall_time=time.perf_counter() - t0)
    with open(os.path.join(a.out, "attention_heads.json"), "w") as fh:
        json.dump(summary, fh, indent=1, default=float)
    figure(res, e_rows, lim, two, os.path.join(a.out, "attention_heads.png"), a)
    print(f"wrote {a.out}/attention_heads.png and .json; total {time.perf_counter() - t0:.0f} s")


def deep_rows(res):
    return res["one head per layer (L*M, 1)"]["rows"]


def figure(res, e_rows, lim, two, path: str, a) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    marks = dict(zip(res, "os^"))
    for name, s in res.items():
        rows = [r for r in s["rows"] if "f" in r]
        x = [r["LM"] for r in rows]
        ax.loglog(x, [r["f"] for r in rows], marks[name] + "-", label=f"{name}: output, slope {s['fit_f'].slope:+.2f}")
        ax.loglog(x, [r["h"] for r in rows], marks[name] + ":", mfc="none", color=ax.lines[-1].get_color(),
                  label=f"hidden, slope {s['fit_h'].slope:+.2f}")
    if two is not None:
        rows = [r for r in two["rows"] if "f" in r and r["M"] == r["L"]]
        ax.loglog([r["LM"] for r in rows], [r["f"] for r in rows], "kx--",
                  label=f"2LP tanh (square): output, slope {two['fit_f'].slope:+.2f}")
    x0 = np.array([min(a.LM), max(a.LM)], dtype=float)
    first = [r for r in deep_rows(res) if "f" in r][0]
    ax.loglog(x0, first["f"] * (x0 / first["LM"]) ** -0.5, color="0.6", lw=0.8, label="slope -1/2")
    ax.axhline(lim.error_estimate, color="r", lw=0.8, ls="--", label="limit's error estimate (max-abs)")
    if lim.config.get("quadrature_rms_se"):
        ax.axhline(lim.config["quadrature_rms_se"], color="r", lw=0.8, ls=":", label="limit's RMS standard error")
    ax.set_xlabel("L M (heads in the network)")
    ax.set_ylabel(f"RMS error vs the limit at step K = {a.K}")
    ax.set_title(f"attention heads as units: D = {a.D}, d_head = 1, T = 3, N = 10 (slopes: L M >= {a.fit_min})",
                 fontsize=9)
    ax.legend(fontsize=6.5)
    L = np.array([r["L"] for r in e_rows], dtype=float)
    bx.loglog(L, [r["euler_f"] for r in e_rows], "o-", label="Euler part: RMS of the seed mean (output)")
    bx.loglog(L, [r["fluct_f"] / math.sqrt(48) for r in e_rows], "s:", label="seed noise of the mean")
    bx.loglog(L, e_rows[0]["euler_f"] * L[0] / L, color="0.6", lw=0.8, label="slope -1")
    bx.axhline(lim.error_estimate, color="r", lw=0.8, ls="--", label="limit's error estimate")
    bx.set_xlabel("L (M = 256 heads per layer, 48 seeds)")
    bx.set_title("Euler part vs depth", fontsize=10)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
