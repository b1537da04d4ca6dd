"""The measurement plan of ``meanode reproduce``: each preset's sweeps and the fits made on them.

Presets hold data only (frozen :class:`~meanode.sweep.SweepSpec` and
:class:`~meanode.analysis.FitSpec`); :mod:`meanode.reproduce` runs them.

The measurement plan and why its settings were chosen:

* ``width`` (L x M grid, tanh, D = 2, alpha = 1, eta = 0.2, K = 3; lattice quadrature reference, level 9):
  error vs L for several M, the hidden-width figure (fixed L M, splits down to M = 1), the
  fluctuation part vs L M and the rate model ``a/L + b sqrt(D/(LM))``.
* ``limitcheck`` (L = M): per-step errors vs L M (a muP-style coordinate check).
* ``euler``: the Euler part is ~ 0.05/L here, so it is resolved where it dominates the seed noise
  of the mean, ``fluct / sqrt(E) ~ 0.3/sqrt(L M E)``: small L (2..32), a wide layer (M = 256,
  making the fluctuation small) and many seeds (64); the reference floor (~5e-4) bounds L <= 32.
* ``dsweep_identity`` / ``dsweep_tanh`` (L = M = 64, D = 8..128): the sqrt(D) law. A tanh limit
  for D >= 8 is out of reach of quadrature (a 2D >= 16-dimensional integral; lattice rules reach
  D = 4 at ~2e-4 in minutes, docs/limit_quadrature.md), so the total error is
  measured with the identity activation, whose limit is exact (moment closure, SPEC §4.1), and
  the tanh fluctuation part (seed std) needs no reference. D < 8 is left out: with N = 10 inputs
  in d_in = 5 dimensions, the first coordinates of the coupled embedding are not yet typical.
* ``residual``: residual scale D^gamma/(L M) for gamma = 0, 1/2, 1 (see :mod:`meanode.sweep`).
* ``lazy`` (reference: the lazy ODE) and ``lazy_gap`` (reference: the alpha-Mean-ODE at each alpha).
* ``phase`` ((a, b) grid, L = M = 8..64, D = 2, K = 4, eta = 0.5 as in SPEC §5's probe).
* ``md`` and ``psweep``: the shapes of SPEC §6 with the largest network as reference (tiny here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .analysis import FitSpec
from .sweep import SweepSpec

__all__ = ["Preset", "preset", "PRESETS"]

PRESETS = ("quick", "full", "tiny")


@dataclass(frozen=True)
class Preset:
    name: str
    sweeps: tuple[tuple[str, SweepSpec], ...]
    fits: tuple[FitSpec, ...]
    notes: tuple[str, ...] = ()
    workers: int = 2

    def sweep(self, role: str) -> SweepSpec | None:
        return dict(self.sweeps).get(role)


def _pow2(lo: int, hi: int) -> list[int]:
    return [2 ** k for k in range(lo, hi + 1)]


def _logspace_int(lo: float, hi: float, n: int) -> list[int]:
    return sorted({int(round(v)) for v in np.geomspace(lo, hi, n)})


def _fits(roles: set[str]) -> tuple[FitSpec, ...]:
    F = FitSpec
    fluct = dict(dominance="fluct")  # the sqrt(D/(L M)) term measured where it dominates the deterministic ones
    fits = [
        F("lm_fluct", "output fluctuation part (seed std) vs L*M", "width", "fluct_f", "LM", -0.5, floor=False),
        F("lm_m1", "output error vs L*M, M = 1 (depth as hidden width)", "width", "total_f", "LM", -0.5,
          where=(("M", 1),), **fluct),
        F("lm_diag_f", "output error vs L*M, L = M", "limitcheck", "total_f", "LM", -0.5, **fluct),
        F("lm_diag_h", "hidden error vs L*M, L = M", "limitcheck", "total_h", "LM", -0.5, **fluct),
        F("lm_diag_eval", "held-out output error vs L*M, L = M", "limitcheck", "total_f_eval", "LM", -0.5, **fluct),
        F("init_dev", "init deviation |h^L - h^0| vs L*M (exact limit)", "width", "init_dev", "LM", -0.5, floor=False),
        F("euler_f", "Euler part (seed mean), output, vs L", "euler", "euler_f", "L", -1.0, dominance="euler"),
        F("euler_h", "Euler part (seed mean), hidden, vs L", "euler", "euler_h", "L", -1.0, dominance="euler"),
        F("fluct_L", "output fluctuation part vs L at fixed M", "euler", "fluct_f", "L", -0.5, floor=False),
        F("d_identity", "hidden error vs D at fixed L*M (identity, exact reference)", "dsweep_identity", "total_h", "D",
          0.5, **fluct),
        F("d_tanh", "hidden fluctuation part vs D at fixed L*M (tanh)", "dsweep_tanh", "fluct_h", "D", 0.5, floor=False),
        F("alpha_gap", "error vs own alpha-Mean-ODE vs alpha (L = M fixed)", "lazy_gap", "total_f", "alpha", 1.0,
          **fluct),
        F("lazy_far", "distance to the lazy ODE vs alpha, smallest L*M", "lazy", "total_f", "alpha", 1.0,
          where=(("LM", "min"),), **fluct),
        F("md_M", "hidden error vs M at the largest D, L*M >= D (L fixed)", "md", "total_h", "M", -0.5,
          where=(("D", "max"), ("LM", (">=", "D"))), **fluct),
        F("p_h", "hidden error vs P = L M D, best shapes", "psweep", "total_h", "P", -1 / 6),
        F("p_f", "output error vs P = L M D, best shapes", "psweep", "total_f", "P", -0.2),
        F("attn_m1", "attention: output error vs L*M, one head per layer (M = 1)", "attention", "total_f", "LM",
          -0.5, where=(("M", 1),), **fluct),
        F("attn_sq", "attention: output error vs L*M, L = M", "attention", "total_f", "LM", -0.5,
          where=(("M", (">=", "L")), ("L", (">=", "M"))), **fluct),
        F("attn_h", "attention: hidden error vs L*M, one head per layer", "attention", "total_h", "LM", -0.5,
          where=(("M", 1),), **fluct),
        F("attn_euler", "attention: Euler part (seed mean), output, vs L", "attention_euler", "euler_f", "L", -1.0,
          dominance="euler"),
    ]
    return tuple(f for f in fits if f.sweep in roles)


def _splits(LMs: list[int]) -> list[dict]:
    """(L, M) rows at each L*M: one head per layer (L M, 1), four per layer, and the square split."""
    rows = []
    for lm in LMs:
        r = int(round(np.sqrt(lm)))
        for L, M in ((lm, 1), (lm // 4, 4), (r, lm // r)):
            if L >= 1 and dict(L=L, M=M) not in rows:
                rows.append(dict(L=L, M=M))
    return rows


def _attention(fixed: dict, LMs: list[int], seeds: int, reference: dict, euler_L: list[int], euler_M: int,
               euler_seeds: int) -> list[tuple[str, SweepSpec]]:
    """The attention-head sweeps (issue 13): error vs L*M for several splits, and the Euler part vs L."""
    att = dict(fixed, block="attention", activation="tanh")
    return [("attention", S("attention", zip=_splits(LMs), fixed=att, seeds=seeds, reference=reference,
                            description="attention heads as units: error vs L*M, splits down to one head per layer")),
            ("attention_euler", S("attention_euler", grid=dict(L=euler_L), fixed=dict(att, M=euler_M), seeds=euler_seeds,
                                  reference=reference))]


def _large_d(sizes: list[int], embed_seeds: list[int], seeds: int, K: int = 5) -> tuple[str, SweepSpec]:
    """The follow-up paper's linear experiment (SPEC §6, issue 12): L, M, D on a grid, the identity
    activation, exact references (the fixed-D closure and D = infinity), errors at step K (the
    published step 5: later steps cannot change it)."""
    fixed = dict(data="linear", activation="identity", alpha=1.0, eta=0.1, K=K, N=1, N_eval=0, d_in=3, d_out=3,
                 D_max=max(sizes))
    return ("large_d", S("large_d", grid=dict(L=sizes, M=sizes, D=sizes, embed_seed=embed_seeds), fixed=fixed,
                         seeds=seeds, reference=dict(method="none"), measure=dict(large_d=True, store_h=False),
                         description="linear experiment of the follow-up paper with exact references"))


def S(name: str, *, grid=None, zip=None, fixed=None, **kw) -> SweepSpec:
    """:meth:`SweepSpec.create` with the swept parameters dropped from ``fixed`` (shared base settings)."""
    swept = set(grid or {})
    if isinstance(zip, dict):
        swept |= set(zip)
    elif zip:
        swept |= set().union(*(set(r) for r in zip))
    fixed = {k: v for k, v in (fixed or {}).items() if k not in swept}
    return SweepSpec.create(name, grid=grid, zip=zip, fixed=fixed, **kw)


def preset(name: str) -> Preset:
    """The measurement plan at ``quick``, ``full`` or ``tiny`` sizes."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    base = dict(D=2, K=3, alpha=1.0, eta=0.2, activation="tanh", N=10, N_eval=10)
    # lattice rule: ~1e-6 at K <= 5 for D = 2 where tensor Gauss-Hermite level 16 gives ~1e-3 (and
    # underestimates it); see benchmarks/bench_limit_accuracy.py
    ref16 = dict(method="quadrature", rule="lattice", level=9)
    if name == "full":
        K = 15
        ref16 = dict(method="quadrature", rule="lattice", level=11)
        base = dict(base, K=K, device="auto")
        vals = _logspace_int(1, 2000, 20)
        p_j = [1.0 + 0.5 * i for i in range(7)]  # P = 2^(6j): D = 2^(2j), M = 2^(3j), L = 2^j
        shapes = [(max(1, round(2 ** j)), round(2 ** (3 * j)), round(2 ** (2 * j))) for j in p_j]
        ref_shape = (round(2 ** 4.5), round(2 ** 13.5), round(2 ** 9))
        sweeps = [
            ("width", S("width", grid=dict(L=_pow2(1, 12), M=[1, 4, 16, 64, 256]), fixed=base, seeds=32, reference=ref16)),
            ("limitcheck", S("limitcheck", zip=dict(L=_pow2(2, 10), M=_pow2(2, 10)), fixed=base, seeds=16, reference=ref16)),
            ("euler", S("euler", grid=dict(L=_pow2(1, 7)), fixed=dict(base, M=4096), seeds=256, reference=ref16)),
            ("dsweep_identity", S("dsweep_identity", grid=dict(D=_pow2(3, 10)), fixed=dict(base, L=256, M=256,
                                  activation="identity", D_max=1024), seeds=16, reference=dict(method="closure"), measure=dict(store_h=True))),
            ("dsweep_tanh", S("dsweep_tanh", grid=dict(D=_pow2(3, 10)), fixed=dict(base, L=256, M=256, D_max=1024),
                              seeds=16, reference=dict(method="none"), measure=dict(store_h=True))),
            ("residual", S("residual", grid=dict(D=_pow2(3, 9), gamma=[0.0, 0.5, 1.0]), fixed=dict(base, L=256, M=256, K=5),
                           seeds=8, reference=dict(method="none"), measure=dict(preactivation=True))),
            ("lazy", S("lazy", grid=dict(alpha=[0.25, 0.5, 1, 2, 4, 8, 16, 32]), zip=dict(L=[16, 64, 256, 1024], M=[16, 64, 256, 1024]),
                       fixed=dict(base, K=5), seeds=16, reference=dict(method="lazy"))),
            ("lazy_gap", S("lazy_gap", grid=dict(alpha=[0.25, 0.5, 1, 2, 4, 8, 16]), fixed=dict(base, K=5, L=256, M=256),
                           seeds=16, reference=dict(method="quadrature", rule="lattice", level=12))),
            ("phase", S("phase", grid=dict(a=[0.25, 0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25], b=[-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]),
                        zip=dict(L=_pow2(3, 8), M=_pow2(3, 8)), fixed=dict(base, K=4, eta=0.5), seeds=8,
                        reference=dict(method="none"), measure=dict(linearisation=True))),
            ("md", S("md", grid=dict(M=vals, D=vals), fixed=dict(base, L=50, N_eval=0, D_max=2000), seeds=5,
                     reference=dict(method="network", L=50, M=2000, D=2000, seeds=5), measure=dict(store_h=False))),
            ("psweep", S("psweep", zip=[dict(L=l, M=m, D=d) for l, m, d in shapes], fixed=dict(base, N_eval=0, D_max=ref_shape[2]),
                         seeds=5, reference=dict(method="network", L=ref_shape[0], M=ref_shape[1], D=ref_shape[2], seeds=2),
                         measure=dict(store_h=False))),
            *_attention(dict(base, D=2, T=3, K=5), _pow2(4, 14), 32, dict(method="quadrature", rule="rqmc", level=17),
                        _pow2(1, 6), 1024, 128),
            _large_d(_logspace_int(10, 499, 15), [0, 1, 2], 5),
        ]
        notes = ("full preset: published sizes of SPEC §6 (md: L = 50, M and D on 20 log-spaced values in [1, 2000], "
                 "5 seeds, K = 15, the largest network as reference); meant for a GPU or a cluster.",)
        return Preset("full", tuple(sweeps), _fits({r for r, _ in sweeps}), notes, workers=1)
    if name == "quick":
        sweeps = [
            ("width", S("width", grid=dict(L=_pow2(2, 10), M=[1, 4, 16, 64]), fixed=base, seeds=32, reference=ref16,
                        description="error vs L for several M; hidden width")),
            ("limitcheck", S("limitcheck", zip=dict(L=_pow2(2, 8), M=_pow2(2, 8)), fixed=base, seeds=16, reference=ref16)),
            ("euler", S("euler", grid=dict(L=_pow2(1, 5)), fixed=dict(base, M=256), seeds=64, reference=ref16)),
            ("dsweep_identity", S("dsweep_identity", grid=dict(D=_pow2(3, 7)), fixed=dict(base, L=64, M=64,
                                  activation="identity", D_max=128), seeds=32, reference=dict(method="closure"), measure=dict(store_h=True))),
            ("dsweep_tanh", S("dsweep_tanh", grid=dict(D=_pow2(3, 7)), fixed=dict(base, L=64, M=64, D_max=128), seeds=32,
                              reference=dict(method="none"), measure=dict(store_h=True))),
            ("residual", S("residual", grid=dict(D=_pow2(3, 6), gamma=[0.0, 0.5, 1.0]), fixed=dict(base, L=64, M=64),
                           seeds=8, reference=dict(method="none"), measure=dict(preactivation=True))),
            ("lazy", S("lazy", grid=dict(alpha=[0.25, 0.5, 1, 2, 4, 8, 16]), zip=dict(L=[16, 64, 256], M=[16, 64, 256]),
                       fixed=base, seeds=16, reference=dict(method="lazy"))),
            ("lazy_gap", S("lazy_gap", grid=dict(alpha=[0.25, 0.5, 1, 2, 4, 8]), fixed=dict(base, L=64, M=64), seeds=16,
                           reference=ref16)),
            ("phase", S("phase", grid=dict(a=[0.25, 0.5, 0.75, 1.0, 1.25], b=[-0.5, 0.0, 0.5, 1.0, 1.5]),
                        zip=dict(L=_pow2(3, 6), M=_pow2(3, 6)), fixed=dict(base, K=4, eta=0.5, N_eval=0), seeds=8,
                        reference=dict(method="none"), measure=dict(linearisation=True))),
            ("md", S("md", grid=dict(M=[1, 4, 16, 64], D=[2, 8, 32]), fixed=dict(base, L=8, N_eval=0, D_max=32), seeds=4,
                     reference=dict(method="network", L=8, M=1024, D=32, seeds=4))),
            ("psweep", S("psweep", zip=[dict(L=2, M=8, D=4), dict(L=3, M=23, D=8), dict(L=4, M=64, D=16), dict(L=6, M=181, D=32)],
                         fixed=dict(base, N_eval=0, D_max=64), seeds=4,
                         reference=dict(method="network", L=8, M=512, D=64, seeds=4))),
            *_attention(dict(base, D=1, T=2, N=6, N_eval=0, K=2), [16, 64, 256, 1024], 16, dict(method="quadrature"),
                        [2, 4, 8, 16], 64, 32),
            _large_d(_logspace_int(10, 160, 4), [0, 1], 3),
        ]
        return Preset("quick", tuple(sweeps), _fits({r for r, _ in sweeps}), (), workers=2)
    # tiny: the same plan at toy sizes (seconds), for tests and examples
    base = dict(base, K=2, N_eval=3)
    ref8 = dict(method="quadrature", rule="gauss_hermite", level=8)
    sweeps = [
        ("width", S("width", grid=dict(L=[4, 16, 64], M=[1, 4]), fixed=base, seeds=4, reference=ref8)),
        ("limitcheck", S("limitcheck", zip=dict(L=[4, 8, 16], M=[4, 8, 16]), fixed=base, seeds=4, reference=ref8)),
        ("euler", S("euler", grid=dict(L=[2, 4, 8]), fixed=dict(base, M=16), seeds=4, reference=ref8)),
        ("dsweep_identity", S("dsweep_identity", grid=dict(D=[2, 4, 8]), fixed=dict(base, L=8, M=8, activation="identity",
                              D_max=8), seeds=4, reference=dict(method="closure"), measure=dict(store_h=True))),
        ("dsweep_tanh", S("dsweep_tanh", grid=dict(D=[2, 4, 8]), fixed=dict(base, L=8, M=8, D_max=8), seeds=4,
                          reference=dict(method="none"))),
        ("residual", S("residual", grid=dict(D=[2, 4, 8], gamma=[0.0, 0.5, 1.0]), fixed=dict(base, L=8, M=8), seeds=3,
                       reference=dict(method="none"), measure=dict(preactivation=True))),
        ("lazy", S("lazy", grid=dict(alpha=[0.5, 2, 8]), zip=dict(L=[4, 8], M=[4, 8]), fixed=dict(base, activation="erf"),
                   seeds=3, reference=dict(method="lazy"))),
        ("lazy_gap", S("lazy_gap", grid=dict(alpha=[0.5, 2, 8]), fixed=dict(base, L=8, M=8, activation="erf"), seeds=3,
                       reference=ref8)),
        ("phase", S("phase", grid=dict(a=[0.5, 1.0], b=[0.0, 1.0]), zip=dict(L=[4, 8], M=[4, 8]),
                    fixed=dict(base, K=2, eta=0.5, N_eval=0), seeds=3, reference=dict(method="none"),
                    measure=dict(linearisation=True))),
        ("md", S("md", grid=dict(M=[1, 4], D=[2, 4]), fixed=dict(base, L=4, N_eval=0, D_max=4), seeds=3,
                 reference=dict(method="network", L=4, M=32, D=4, seeds=2))),
        ("psweep", S("psweep", zip=[dict(L=2, M=4, D=2), dict(L=2, M=8, D=4)], fixed=dict(base, N_eval=0, D_max=4), seeds=3,
                     reference=dict(method="network", L=4, M=32, D=4, seeds=2))),
        *_attention(dict(base, D=1, T=2, N=3, N_eval=0, K=1), [4, 16], 3, dict(method="quadrature", rule="gauss_hermite",
                                                                              level=4), [2, 4], 8, 3),
        _large_d([10, 20], [0], 2, K=2),
    ]
    return Preset("tiny", tuple(sweeps), _fits({r for r, _ in sweeps}), (), workers=1)


