"""Weighted node sets for Gaussian expectations ``E[f(z)]``, ``z ~ N(0, var * I_d)``.

In the Neural Mean ODE engine ``d = 2D``, ``var = D`` and ``z = (u0, v0)`` (SPEC section 4.3).
Every constructor returns a :class:`Rule`: float64 ``nodes`` of shape ``(P, d)`` and float64
``weights`` of shape ``(P,)`` summing to one, so that ``E[f(z)] ~= weights @ f(nodes)``.

Rules
-----
* :func:`gauss_hermite` -- tensor-product Gauss-Hermite, ``n`` nodes per dimension
  (``n**d`` nodes, exact for every monomial whose exponents are all ``<= 2n-1``).
* :func:`smolyak` -- sparse grid (Smolyak combination technique) on the nested
  Genz-Keister / Kronrod-Patterson 1-D rules below; level ``l`` is exact for every
  polynomial of *total* degree ``<= 2l+1`` (:func:`smolyak_exactness`). Weights can be negative.
* :func:`rqmc` / :func:`rqmc_replicates` -- scrambled Sobol points through the normal
  inverse CDF, optionally antithetic; equal weights.
* :meth:`Rule.fold_odd_symmetry` -- for integrands even under ``z -> -z`` keep half a
  symmetric node set.

Nested 1-D rules (Genz & Keister 1996, "Fully symmetric interpolatory rules for multiple
integrals over infinite regions with Gaussian weight", J. Comput. Appl. Math. 71)
-------------------------------------------------------------------------------------
For the standard normal weight the sequence is built by repeated Kronrod-Patterson
extension, starting from the 1-point rule at 0::

    rule k      : 0     1     2     3     4
    points      : 1     3     9    19    35     (added: 2, 6, 10, 16)
    exact degree: 1     5    15    29    51

Construction of extension k (existing symmetric nodes with node polynomial ``p``,
``n_add`` new nodes): the new nodes are the roots of the even polynomial ``q`` of degree
``n_add`` with ``E[p(x) q(x) x^j] = 0`` for ``j < n_add``. The combined interpolatory rule
on the ``m + n_add`` nodes then has degree ``m + 2 n_add - 1`` (one more by symmetry), and
its weights solve the moment equations ``sum_i w_i x_i^(2j) = (2j-1)!!``. Solving these
systems in float64 is ill-conditioned (the node polynomial and the Vandermonde-type moment
matrix lose ~1e-8 relative accuracy on the small weights of the 35-point rule), so the
tables below were produced by exactly this construction in 80-digit arithmetic
(:func:`construct_nested_hermite_mp`, needs ``mpmath``) and are stored as 25-digit decimal
strings; float64 values are their correct roundings. The tests re-derive them when mpmath
is available, compare with the published Genz-Keister values, and check the exactness
degrees in float64. The 19-point rule has a negative weight (at +-2.8613), as published.

1-D accuracy index ``i`` (used by Smolyak) maps to the smallest nested rule of degree
``>= 2i+1`` ("slow growth", as in Heiss & Winschel's KPN sparse grids): ``i = 0 -> 1``
point, ``1..2 -> 3``, ``3..7 -> 9``, ``8..14 -> 19``, ``15..25 -> 35``. Hence
:data:`SMOLYAK_MAX_LEVEL` ``= 25``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Rule",
    "gauss_hermite",
    "smolyak",
    "smolyak_exactness",
    "nested_hermite_1d",
    "rqmc",
    "rqmc_replicates",
    "construct_nested_hermite_mp",
    "NESTED_SIZES",
    "NESTED_DEGREES",
    "SMOLYAK_MAX_LEVEL",
]

# --------------------------------------------------------------------------------------
# Rule
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A weighted node set for ``E[f(z)]``.

    Attributes
    ----------
    nodes : np.ndarray, shape (P, d), float64, read-only
        Quadrature nodes (already scaled by ``sqrt(var)``).
    weights : np.ndarray, shape (P,), float64, read-only
        Weights; they sum to 1 (some may be negative for sparse grids).
    name : str
        Human-readable description, e.g. ``"gauss_hermite(n=10, d=4, var=2, folded)"``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    name: str

    def __post_init__(self) -> None:
        nodes = np.array(self.nodes, dtype=np.float64, copy=True)
        weights = np.array(self.weights, dtype=np.float64, copy=True)
        if nodes.ndim != 2:
            raise ValueError(f"nodes must have shape (P, d); got shape {nodes.shape}")
        if weights.ndim != 1 or weights.shape[0] != nodes.shape[0]:
            raise ValueError(
                f"weights must have shape (P,) = ({nodes.shape[0]},); got shape {weights.shape}"
            )
        if nodes.shape[0] < 1 or nodes.shape[1] < 1:
            raise ValueError(f"nodes must be non-empty; got shape {nodes.shape}")
        if not (np.all(np.isfinite(nodes)) and np.all(np.isfinite(weights))):
            raise ValueError("nodes and weights must be finite")
        total = float(np.sum(weights))  # pairwise summation
        scale = max(1.0, float(np.sum(np.abs(weights))))
        if abs(total - 1.0) > 1e-12 * scale:
            raise ValueError(f"weights must sum to 1; they sum to {total!r}")
        nodes.setflags(write=False)
        weights.setflags(write=False)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "weights", weights)

    @property
    def num_nodes(self) -> int:
        """Number of nodes ``P``."""
        return int(self.nodes.shape[0])

    @property
    def dim(self) -> int:
        """Dimension ``d``."""
        return int(self.nodes.shape[1])

    def expect(self, f) -> np.ndarray:
        """``sum_p weights[p] * f(nodes)[p]``.

        ``f`` maps the ``(P, d)`` node array to an array of shape ``(P, ...)``; the result
        has shape ``(...)``.
        """
        vals = np.asarray(f(self.nodes), dtype=np.float64)
        if vals.shape[:1] != (self.num_nodes,):
            raise ValueError(f"f(nodes) must have leading dimension P={self.num_nodes}; got {vals.shape}")
        return np.tensordot(self.weights, vals, axes=(0, 0))

    def fold_odd_symmetry(self, rtol: float = 1e-12) -> "Rule":
        """Half of a symmetric rule, for integrands even under ``z -> -z``.

        Requires that for every node ``z`` the node ``-z`` is present (to ``rtol`` relative
        to the largest node norm) with the same weight (to ``rtol`` relative to the largest
        |weight|). Each pair ``{z, -z}`` is replaced by one representative -- the one whose
        first coordinate that is not ~0 is positive -- carrying the summed weight; a node at
        the origin stays with its own weight. The result integrates every even integrand
        exactly as the unfolded rule does (odd integrands are no longer integrated).

        Returns a Rule with ``(P + #origin) / 2`` nodes, shape ``(P', d)``.
        Raises ValueError if the rule is not symmetric (or has duplicate nodes).
        """
        from scipy.spatial import cKDTree

        z = self.nodes
        w = self.weights
        P = z.shape[0]
        xscale = max(1.0, float(np.max(np.abs(z))))
        xtol = rtol * xscale * math.sqrt(z.shape[1])
        wtol = rtol * max(float(np.max(np.abs(w))), np.finfo(float).tiny)
        dist, partner = cKDTree(z).query(-z, k=1)
        bad = np.nonzero(dist > xtol)[0]
        if bad.size:
            raise ValueError(
                f"rule {self.name!r} is not symmetric: -z is missing for {bad.size} of {P} nodes "
                f"(e.g. z = {z[bad[0]].tolist()})"
            )
        if np.any(partner[partner] != np.arange(P)):
            raise ValueError(
                f"rule {self.name!r}: the pairing z <-> -z is not one-to-one (duplicate nodes?)"
            )
        if np.any(np.abs(w - w[partner]) > wtol):
            i = int(np.argmax(np.abs(w - w[partner])))
            raise ValueError(
                f"rule {self.name!r} is not symmetric: weight {w[i]!r} at z differs from "
                f"weight {w[partner[i]]!r} at -z"
            )
        idx = np.arange(P)
        origin = partner == idx
        # Representative: the first coordinate with |z_k| > xtol is positive.
        significant = np.abs(z) > xtol
        first = np.argmax(significant, axis=1)
        lead = z[idx, first]
        keep = origin | (lead > 0)
        # Every non-origin pair must have exactly one kept member.
        pair_ok = keep[~origin] ^ keep[partner[~origin]]
        if not np.all(pair_ok):
            raise ValueError(f"rule {self.name!r}: could not split the nodes into pairs z, -z")
        new_w = np.where(origin, w, w + w[partner])[keep]
        return Rule(z[keep], new_w, _with_tag(self.name, "folded"))


def _with_tag(name: str, tag: str) -> str:
    if name.endswith(")"):
        return name[:-1] + f", {tag})"
    return f"{name} [{tag}]"


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def _check_var(var) -> float:
    try:
        v = float(var)
    except (TypeError, ValueError):
        raise ValueError(f"var must be a positive number; got {var!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"var must be a positive finite number; got {var!r}")
    return v


_MAX_TENSOR_NODES = 20_000_000


# --------------------------------------------------------------------------------------
# Tensor Gauss-Hermite
# --------------------------------------------------------------------------------------


def _gauss_hermite_1d(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n-point Gauss-Hermite rule for N(0, 1): nodes (n,), weights (n,) summing to 1.

    Made exactly symmetric (x_i = -x_{n-1-i} bitwise, equal mirrored weights).
    """
    x, w = np.polynomial.hermite_e.hermegauss(n)
    x = 0.5 * (x - x[::-1])
    w = 0.5 * (w + w[::-1])
    if n % 2 == 1:
        x[n // 2] = 0.0
    return x, w / math.fsum(w.tolist())


def gauss_hermite(n: int, d: int, var: float = 1.0) -> Rule:
    """Tensor-product Gauss-Hermite rule for ``z ~ N(0, var I_d)``.

    ``n`` nodes per dimension, ``P = n**d`` nodes in all; nodes shape ``(n**d, d)``,
    weights shape ``(n**d,)``, all positive. Exact for every monomial ``prod z_k^{a_k}`` with
    all ``a_k <= 2n - 1``. Nodes are ordered with the last coordinate varying fastest.
    """
    n = _check_int(n, "n", 1)
    d = _check_int(d, "d", 1)
    v = _check_var(var)
    if n**d > _MAX_TENSOR_NODES:
        raise ValueError(
            f"n**d = {n}**{d} nodes exceeds {_MAX_TENSOR_NODES}; use smolyak() or rqmc() (arguments n, d)"
        )
    x, w = _gauss_hermite_1d(n)
    x = x * math.sqrt(v)
    grids = np.meshgrid(*([x] * d), indexing="ij")
    nodes = np.stack([g.reshape(-1) for g in grids], axis=1)
    wgrid = w
    for _ in range(d - 1):
        wgrid = np.multiply.outer(wgrid, w)
    weights = np.asarray(wgrid, dtype=np.float64).reshape(-1)
    return Rule(nodes, weights, f"gauss_hermite(n={n}, d={d}, var={v:g})")


# --------------------------------------------------------------------------------------
# Nested Genz-Keister / Kronrod-Patterson rules
# --------------------------------------------------------------------------------------

# Positive nodes added at each extension (1 -> 3 -> 9 -> 19 -> 35 points), standard normal.
_GK_NEW_NODES = (
    ("1.732050807568877293527446",),
    (
        "0.7410953499945408418617966",
        "2.861279576057058117331474",
        "4.184956017672731860688908",
    ),
    (
        "1.230423634027306007751144",
        "2.596083115049202159357846",
        "3.205333794499194518718378",
        "5.187016039913656065991777",
        "6.363394494336369987632579",
    ),
    (
        "0.2489922975799606118065578",
        "2.233626061676941652009594",
        "3.635318519037278245218972",
        "4.736433085952297084098720",
        "5.698177768488109589329650",
        "7.122106700804616658218977",
        "7.980771798590560880180006",
        "9.016939789890302517459804",
    ),
)
# Weights of rule k at [0, positive nodes in increasing order] (each positive node's weight
# applies to +x and to -x).
_GK_WEIGHTS = (
    ("1",),
    ("0.6666666666666666666666667", "0.1666666666666666666666667"),
    (
        "0.2539682539682539682539683",
        "0.270074329577937870762767",
        "0.09485094850948509485094851",
        "0.007996325470893532769855266",
        "0.00009426945755651748944507794",
    ),
    (
        "0.3034671998542058664311657",
        "0.2083249916496088778093513",
        "0.06115173012524767711418338",
        "0.06409605468680758871147003",
        "0.01808523425479845277249607",
        "-0.00633722479337373585413936",
        "0.00288488043650675129122203",
        "0.00006012336945984781849906134",
        "0.0000006094808731468983460398372",
        "8.629684602229885768008062e-10",
    ),
    (
        "0.0005148945080687842937972842",
        "0.1917601158880444295909162",
        "0.1480708311552160061537056",
        "0.09236472671698630592763836",
        "0.04527368546515051586473787",
        "0.01567347375185115154155796",
        "0.003155446269187563805096278",
        "0.00231134524035221012072342",
        "0.0008189539275022649090616772",
        "0.0002752421411678515749951638",
        "0.0000357293481989751002281842",
        "0.000002734220680118782981670691",
        "0.0000002467642134579807867116043",
        "2.139419447956110630667388e-8",
        "4.601176034865618701082641e-10",
        "3.097222357606316171279446e-12",
        "5.450041265063689917075897e-15",
        "1.054132658233334118940046e-18",
    ),
)

#: Number of points of the nested 1-D rules k = 0..4.
NESTED_SIZES = (1, 3, 9, 19, 35)
#: Polynomial degree of exactness of the nested 1-D rules k = 0..4.
NESTED_DEGREES = (1, 5, 15, 29, 51)
#: Largest supported Smolyak level (1-D accuracy index i needs degree 2i+1 <= 51).
SMOLYAK_MAX_LEVEL = (NESTED_DEGREES[-1] - 1) // 2


def _build_nested_tables() -> tuple[np.ndarray, list[np.ndarray]]:
    """Nested node list (35,) ordered so that rule k uses the first NESTED_SIZES[k] entries,
    and for each rule k its weights (NESTED_SIZES[k],) in that order."""
    order: list[float] = [0.0]
    for new in _GK_NEW_NODES:
        for s in new:
            x = float(s)
            order.extend((-x, x))
    nodes = np.array(order, dtype=np.float64)
    weights = []
    pos_sorted: list[float] = []
    for k, wk in enumerate(_GK_WEIGHTS):
        if k > 0:
            pos_sorted = sorted(pos_sorted + [float(s) for s in _GK_NEW_NODES[k - 1]])
        wmap = {0.0: float(wk[0])}
        for x, ws in zip(pos_sorted, wk[1:]):
            wmap[x] = float(ws)
        size = NESTED_SIZES[k]
        weights.append(np.array([wmap[abs(float(v))] for v in nodes[:size]], dtype=np.float64))
    return nodes, weights


_NESTED_NODES, _NESTED_WEIGHTS = _build_nested_tables()


def _rule_index_for_accuracy(i: int) -> int:
    """Nested rule k used for 1-D accuracy index i: the smallest with degree >= 2i+1."""
    for k, deg in enumerate(NESTED_DEGREES):
        if deg >= 2 * i + 1:
            return k
    raise ValueError(f"1-D accuracy index {i} exceeds the nested table (max {SMOLYAK_MAX_LEVEL})")


def nested_hermite_1d(k: int, var: float = 1.0) -> Rule:
    """The k-th nested Genz-Keister rule (k = 0..4: 1, 3, 9, 19, 35 points; exact degree
    1, 5, 15, 29, 51) for ``N(0, var)``; nodes shape ``(NESTED_SIZES[k], 1)``, sorted."""
    k = _check_int(k, "k", 0)
    if k >= len(NESTED_SIZES):
        raise ValueError(f"k must be <= {len(NESTED_SIZES) - 1}; got {k}")
    v = _check_var(var)
    m = NESTED_SIZES[k]
    x = _NESTED_NODES[:m]
    w = _NESTED_WEIGHTS[k]
    order = np.argsort(x, kind="stable")
    return Rule(
        (x[order] * math.sqrt(v))[:, None],
        w[order],
        f"genz_keister(points={m}, degree={NESTED_DEGREES[k]}, var={v:g})",
    )


def smolyak_exactness(level: int) -> int:
    """Total polynomial degree integrated exactly by ``smolyak(level, d)`` (any d): 2*level+1."""
    level = _check_int(level, "level", 0)
    return 2 * level + 1


def _jump_indices(max_level: int) -> list[tuple[int, int]]:
    """(accuracy index i, rule k) for the indices where the 1-D rule changes (Delta_i != 0)."""
    out = []
    prev = None
    for i in range(max_level + 1):
        k = _rule_index_for_accuracy(i)
        if k != prev:
            out.append((i, k))
            prev = k
    return out


def _compositions(budget: int, d: int, jumps: list[int]):
    """All tuples (i_1..i_d) with entries in `jumps` (sorted, contains 0) and sum <= budget."""
    if d == 0:
        yield ()
        return
    for j in jumps:
        if j > budget:
            break
        for rest in _compositions(budget - j, d - 1, jumps):
            yield (j,) + rest


def smolyak(level: int, d: int, var: float = 1.0) -> Rule:
    """Smolyak sparse grid on the nested Genz-Keister rules for ``z ~ N(0, var I_d)``.

    ``A(level, d) = sum_{|i| <= level} Delta_{i_1} x ... x Delta_{i_d}``, with
    ``Delta_i = U_i - U_{i-1}`` (``U_{-1} = 0``) and ``U_i`` the nested 1-D rule of degree
    ``>= 2i+1`` (see the module docstring). Because the rules are nested, every ``Delta_i``
    lives on the nodes of ``U_i``; node identity is tracked by integer index into the nested
    node list, so duplicates are merged exactly (weights summed). Merged weights that cancel
    to rounding level (``|w| <= 64 eps * sum |contributions|``) are dropped.

    Exact for every polynomial of total degree ``<= 2*level+1``. Weights can be negative;
    they are returned as computed. Nodes shape ``(P, d)``, weights ``(P,)``; ``level = 0``
    gives the single node at the origin. The rule is symmetric under ``z -> -z``.
    """
    level = _check_int(level, "level", 0)
    d = _check_int(d, "d", 1)
    v = _check_var(var)
    if level > SMOLYAK_MAX_LEVEL:
        raise ValueError(f"level must be <= {SMOLYAK_MAX_LEVEL}; got {level}")

    jumps = _jump_indices(level)
    jump_i = [i for i, _ in jumps]
    rule_of = dict(jumps)
    # Delta weights per rule k on the first NESTED_SIZES[k] nested nodes.
    delta = {}
    for k in range(len(NESTED_SIZES)):
        dw = _NESTED_WEIGHTS[k].copy()
        if k > 0:
            dw[: NESTED_SIZES[k - 1]] -= _NESTED_WEIGHTS[k - 1]
        delta[k] = dw

    idx_blocks: list[np.ndarray] = []
    w_blocks: list[np.ndarray] = []
    for multi in _compositions(level, d, jump_i):
        active = [(pos, rule_of[i]) for pos, i in enumerate(multi) if i > 0]
        if not active:
            idx_blocks.append(np.zeros((1, d), dtype=np.int16))
            w_blocks.append(np.ones(1))
            continue
        sizes = [NESTED_SIZES[k] for _, k in active]
        grids = np.meshgrid(*[np.arange(s, dtype=np.int16) for s in sizes], indexing="ij")
        block = np.zeros((grids[0].size, d), dtype=np.int16)
        wprod = np.ones(1)
        for (pos, k), g in zip(active, grids):
            block[:, pos] = g.reshape(-1)
            wprod = np.multiply.outer(wprod, delta[k])
        idx_blocks.append(block)
        w_blocks.append(wprod.reshape(-1))
    idx = np.concatenate(idx_blocks, axis=0)
    contrib = np.concatenate(w_blocks)
    uniq, inverse = np.unique(idx, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    weights = np.bincount(inverse, weights=contrib, minlength=uniq.shape[0])
    abs_sum = np.bincount(inverse, weights=np.abs(contrib), minlength=uniq.shape[0])
    keep = np.abs(weights) > 64 * np.finfo(np.float64).eps * abs_sum
    uniq = uniq[keep]
    weights = weights[keep]
    nodes = _NESTED_NODES[uniq.astype(np.intp)] * math.sqrt(v)
    return Rule(nodes, weights, f"smolyak(level={level}, d={d}, var={v:g}, exact_degree={2 * level + 1})")


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


# --------------------------------------------------------------------------------------
# High-precision reconstruction of the nested tables (documentation / tests)
# --------------------------------------------------------------------------------------


def construct_nested_hermite_mp(added=(2, 6, 10, 16), dps: int = 80):
    """Rebuild the nested Genz-Keister rules by Kronrod-Patterson extension in ``dps``-digit
    arithmetic (requires ``mpmath``).

    Returns a list, one entry per rule, of ``(positive_nodes, weights)`` as mpmath numbers:
    ``positive_nodes`` sorted increasing, ``weights`` for ``[0] + positive_nodes``.
    Each extension adds ``added[k]`` (even) nodes: the roots of the even polynomial ``q`` of
    that degree with ``E[p q x^j] = 0`` (j < degree), p the current node polynomial; weights
    solve the even moment equations of the standard normal.
    """
    import mpmath as mp

    with mp.workdps(dps):

        def mom(k: int):
            if k % 2:
                return mp.mpf(0)
            return mp.fac2(k - 1) if k > 0 else mp.mpf(1)

        def polymul(a, b):
            r = [mp.mpf(0)] * (len(a) + len(b) - 1)
            for i, x in enumerate(a):
                for j, y in enumerate(b):
                    r[i + j] += x * y
            return r

        def expect(poly):
            return mp.fsum(c * mom(k) for k, c in enumerate(poly))

        pos: list = []
        out = [([], [mp.mpf(1)])]
        for nadd in added:
            if nadd % 2:
                raise ValueError(f"added sizes must be even; got {nadd}")
            p = [mp.mpf(0), mp.mpf(1)]
            for a in pos:
                p = polymul(p, [-a * a, mp.mpf(0), mp.mpf(1)])
            m = nadd // 2
            A = mp.matrix(m, m)
            b = mp.matrix(m, 1)
            for r, k in enumerate(range(1, nadd, 2)):
                pk = [mp.mpf(0)] * k + p
                for j in range(m):
                    A[r, j] = expect(polymul(pk, [mp.mpf(0)] * (2 * j) + [mp.mpf(1)]))
                b[r] = -expect(polymul(pk, [mp.mpf(0)] * (2 * m) + [mp.mpf(1)]))
            c = mp.lu_solve(A, b)
            ts = mp.polyroots([mp.mpf(1)] + [c[j] for j in range(m - 1, -1, -1)], maxsteps=500, extraprec=4 * dps)
            tol = mp.mpf(10) ** (-dps // 2)
            if any(abs(mp.im(t)) > tol or mp.re(t) <= 0 for t in ts):
                raise ArithmeticError(f"extension by {nadd} nodes has non-real nodes")
            pos = sorted(pos + [mp.sqrt(mp.re(t)) for t in ts])
            npos = len(pos)
            M = mp.matrix(npos + 1, npos + 1)
            rhs = mp.matrix(npos + 1, 1)
            for k in range(npos + 1):
                M[k, 0] = mp.mpf(1) if k == 0 else mp.mpf(0)
                for i, x in enumerate(pos):
                    M[k, i + 1] = 2 * x ** (2 * k)
                rhs[k] = mom(2 * k)
            w = mp.lu_solve(M, rhs)
            out.append((list(pos), [w[i] for i in range(npos + 1)]))
        return out
