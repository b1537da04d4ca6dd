"""Randomised quasi-Monte Carlo: scrambled Sobol points through the normal inverse CDF."""

from __future__ import annotations

import math

import numpy as np

from .rule import Rule, _check_int, _check_var

__all__ = ["rqmc", "rqmc_replicates"]

# --------------------------------------------------------------------------------------
# Randomised QMC
# --------------------------------------------------------------------------------------

_SOBOL_BITS = 30


def rqmc(n: int, d: int, var: float = 1.0, seed: int = 0, antithetic: bool = True) -> Rule:
    """Scrambled Sobol points mapped to ``N(0, var I_d)`` by the normal inverse CDF.

    ``n`` nodes in all with equal weights ``1/n``; nodes shape ``(n, d)``. With
    ``antithetic=True`` (n must be even) the first ``n/2`` nodes are the mapped Sobol points
    ``z`` and the last ``n/2`` are ``-z``, so every odd integrand is integrated exactly (to
    rounding). Sobol points are taken as ``k/2^30`` plus half a cell (never 0 or 1).
    ``scipy.stats.qmc`` warns when the number of Sobol points (``n/2`` or ``n``) is not a
    power of two; the balance properties then do not hold.
    """
    from scipy.special import ndtri
    from scipy.stats import qmc

    n = _check_int(n, "n", 1)
    d = _check_int(d, "d", 1)
    v = _check_var(var)
    seed = _check_int(seed, "seed", 0)
    if antithetic and n % 2:
        raise ValueError(f"n must be even when antithetic=True; got n={n}")
    m = n // 2 if antithetic else n
    sampler = qmc.Sobol(d, scramble=True, bits=_SOBOL_BITS, rng=np.random.default_rng(seed))
    if m & (m - 1) == 0:
        u = sampler.random_base2(int(m).bit_length() - 1)
    else:
        u = sampler.random(m)
    u = u + 0.5 ** (_SOBOL_BITS + 1)
    z = ndtri(u) * math.sqrt(v)
    if antithetic:
        z = np.concatenate([z, -z], axis=0)
    weights = np.full(n, 1.0 / n)
    return Rule(z, weights, f"rqmc(n={n}, d={d}, var={v:g}, seed={seed}, antithetic={bool(antithetic)})")


def rqmc_replicates(
    n: int, d: int, var: float = 1.0, n_rep: int = 8, seed: int = 0, antithetic: bool = True
) -> list[Rule]:
    """``n_rep`` independent scramblings: ``[rqmc(n, d, var, seed=s_r, antithetic) ...]``.

    The seeds ``s_r`` come from ``np.random.SeedSequence(seed)``. The spread (std / sqrt(n_rep))
    of the replicate estimates is an error estimate for their mean.
    """
    n_rep = _check_int(n_rep, "n_rep", 1)
    seed = _check_int(seed, "seed", 0)
    seeds = np.random.SeedSequence(seed).generate_state(n_rep, dtype=np.uint32)
    return [rqmc(n, d, var, seed=int(s), antithetic=antithetic) for s in seeds]


