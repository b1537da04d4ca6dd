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
* :func:`trapezoid` -- tensor trapezoid (sinc) rule: step ``h``, truncated at ``|z_k| <= cutoff``,
  weights ``~ exp(-|z|^2/2)`` renormalised.
* :func:`lattice` / :func:`lattice_family` -- a rotated lattice (the best known packing duals:
  hexagonal, D4*, E8) with a radial stretch, for integrands that are analytic only in a strip
  (tanh networks); see :func:`lattice`. The recommended rule for the Mean ODE of tanh
  networks.
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
    "trapezoid",
    "lattice",
    "lattice_family",
    "lattice_size",
    "lattice_points",
    "LATTICES",
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


# --------------------------------------------------------------------------------------
# Trapezoid and lattice rules for integrands analytic in a strip
# --------------------------------------------------------------------------------------
#
# Why not Gauss-Hermite for tanh networks. A rule exact for polynomials converges like the
# best polynomial approximation of the integrand in the Gaussian-weighted sense. tanh has poles
# at +-i pi/2, so tanh(a) with a = u.h/D of standard deviation sigma_a is analytic only in a
# strip of half-width a_s = pi/(2 sigma_a) in the standard-normal coordinate; then n-point
# Gauss-Hermite converges only like exp(-c a_s sqrt(n)) per dimension (measured on the default
# 2LP problem, D=2, one step: 2.2e-3, 3.0e-4, 4.0e-5 for n = 10, 20, 28 in each u direction).
# The trapezoid (sinc) rule with step h converges like exp(-2 pi a_s / h) for every function
# analytic in that strip (Trefethen & Weideman, SIAM Review 56 (2014), section 5), so it is
# the right 1-D building block. In d dimensions a lattice rule sum_{y in Lambda} g(y) det(Lambda)
# has error sum_{m in Lambda*, m != 0} g^(2 pi m) (Poisson summation): only the dual lattice
# points where the Fourier transform of the weighted integrand is large alias.

#: Lattice kinds for :func:`lattice`: the integer lattice, the hexagonal lattice (d=2), the
#: checkerboard dual ``D_d* = Z^d u (Z^d + 1/2)`` (d >= 2; d=3: body-centred cubic, d=4: the
#: densest known 4-D dual) and Gosset's E8 (d=8).
LATTICES = ("Z", "A2", "D*", "E8")

# Length of the shortest nonzero vector of the dual of each unit lattice below.
_DUAL_MIN = {"Z": 1.0, "A2": 2.0 / math.sqrt(3.0), "D*": math.sqrt(2.0), "E8": math.sqrt(2.0)}
_A2 = np.array([[1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])


def _check_kind(kind: str, d: int) -> str:
    if kind == "auto":
        return {1: "Z", 2: "A2", 8: "E8"}.get(d, "D*")
    if kind not in LATTICES:
        raise ValueError(f"lattice kind must be one of {LATTICES} or 'auto'; got {kind!r}")
    if kind == "A2" and d != 2:
        raise ValueError(f"lattice kind 'A2' needs d = 2; got d={d}")
    if kind == "E8" and d != 8:
        raise ValueError(f"lattice kind 'E8' needs d = 8; got d={d}")
    if kind == "D*" and d < 2:
        raise ValueError("lattice kind 'D*' needs d >= 2")
    return kind


def _ball_points_shifted(d: int, shift: float, radius: float) -> np.ndarray:
    """All y in Z^d + shift*(1,..,1) with |y| <= radius, built coordinate by coordinate with pruning."""
    m = int(math.floor(radius + abs(shift))) + 1
    vals = np.arange(-m, m + 1, dtype=np.float64) + shift
    vals = vals[np.abs(vals) <= radius + 1e-12]
    r2 = radius * radius * (1 + 1e-12)
    pts = np.zeros((1, 0))
    norm2 = np.zeros(1)
    for _ in range(d):
        n2 = norm2[:, None] + vals[None, :] ** 2
        keep = n2 <= r2
        i, j = np.nonzero(keep)
        pts = np.concatenate([pts[i], vals[j][:, None]], axis=1)
        norm2 = n2[i, j]
    return pts


def lattice_points(kind: str, d: int, radius: float, dual: bool = False) -> np.ndarray:
    """Points of a unit lattice (or of its dual) within ``radius``: shape ``(P, d)``, float64.

    Unit lattices: ``"Z"`` = Z^d; ``"A2"`` = hexagonal, basis (1, 0), (1/2, sqrt(3)/2);
    ``"D*"`` = Z^d u (Z^d + 1/2) (dual: D_d = integer vectors of even sum); ``"E8"`` =
    D_8 u (D_8 + 1/2) (self-dual). The point sets are symmetric under y -> -y.
    """
    d = _check_int(d, "d", 1)
    kind = _check_kind(kind, d)
    radius = float(radius)
    if kind == "Z" or (kind == "D*" and dual):
        pts = _ball_points_shifted(d, 0.0, radius)
        if kind == "D*":
            pts = pts[np.rint(pts.sum(axis=1)).astype(np.int64) % 2 == 0]
        return pts
    if kind == "D*":
        return np.concatenate([_ball_points_shifted(d, 0.0, radius), _ball_points_shifted(d, 0.5, radius)])
    if kind == "E8":
        out = []
        for shift in (0.0, 0.5):
            p = _ball_points_shifted(8, shift, radius)
            out.append(p[np.rint((p - shift).sum(axis=1)).astype(np.int64) % 2 == 0])
        return np.concatenate(out)
    # A2 (or its dual, spanned by the rows of B^{-T})
    B = np.linalg.inv(_A2).T if dual else _A2
    m = int(math.ceil(2.0 * radius / math.sqrt(3.0) * (1.2 if dual else 1.0))) + 2
    i, j = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
    pts = np.stack([i.ravel(), j.ravel()], axis=1).astype(np.float64) @ B
    return pts[(pts * pts).sum(axis=1) <= radius * radius * (1 + 1e-12)]


def _haar_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    g = rng.standard_normal((d, d))
    qm, rm = np.linalg.qr(g)
    return qm * np.sign(np.diag(rm))


def _dual_points_for_screening(kind: str, d: int, c: float, xi_max: float = 30.0,
                               max_points: float = 6e4) -> np.ndarray:
    """Nonzero dual points ``xi = 2 pi m / c`` with ``|xi| <= xi_max`` (fewer in high d)."""
    unit_ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
    rad = min(xi_max * c / (2.0 * math.pi), (max_points / unit_ball) ** (1.0 / d))
    rad = max(rad, 2.01 * _DUAL_MIN[kind])  # at least the two shortest shells (fine steps h)
    m = lattice_points(kind, d, rad, dual=True)
    m = m[(m * m).sum(axis=1) > 0.5 * _DUAL_MIN[kind] ** 2]
    return (2.0 * math.pi / c) * m


def _plane_aliasing(xi: np.ndarray, R: np.ndarray, split: int, a: float = 0.8) -> float:
    """Aliasing of ridge functions lying in the coordinate blocks z[:split] or z[split:].

    ``sum_xi exp(-a |xi_1| - |xi_2|^2 / 2) + (1 <-> 2)`` over the rotated nonzero dual points
    ``R xi`` (``xi_1, xi_2`` the two blocks): a ridge ``g(w . z)`` with ``w`` in block 1,
    analytic in a strip of half-width ``a``, has a Fourier transform of about that size.
    """
    y = xi @ R.T
    x1 = np.sqrt((y[:, :split] ** 2).sum(axis=1))
    x2 = np.sqrt((y[:, split:] ** 2).sum(axis=1))
    return float(np.sum(np.exp(-a * x1 - 0.5 * x2 * x2) + np.exp(-a * x2 - 0.5 * x1 * x1)))


def _screened_rotation(kind: str, d: int, c: float, seed, candidates: int = 32) -> np.ndarray:
    """A Haar-random rotation that is neither aligned with nor over-fitted to the (u, v) blocks.

    Of ``candidates`` random rotations (from ``seed``) take the one at the lower quartile of the
    block-plane aliasing :func:`_plane_aliasing`. Rationale (measured, D = 2, K = 5, same nodes):
    an axis-aligned lattice is 10-20x less accurate than a random rotation, because the ridges
    tanh(u . h / D) of the first steps lie in the u-plane, where an aligned lattice has short
    dual vectors; about one random rotation in 50 is as bad; and the rotation that *minimises*
    the plane aliasing pushes the short dual vectors to the u/v-balanced directions along which
    the trained units later expand, which costs another 10x at K >= 4.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    Rs = [_haar_rotation(d, rng) for _ in range(candidates)]
    xi = _dual_points_for_screening(kind, d, c)
    split = d // 2
    logm = np.log(np.maximum([_plane_aliasing(xi, R, split) for R in Rs], 1e-300))
    target = np.quantile(logm, 0.25)
    return Rs[int(np.argmin(np.abs(logm - target)))]


def _ridge_rotation(kind: str, d: int, c: float, seed, ridges, candidates: int) -> np.ndarray:
    """Of ``candidates`` Haar-random rotations (from ``seed``), the one whose dual lattice
    aliases the pilot's ridges least (:func:`meanode.limit.adapt.ridge_aliasing`)."""
    from .adapt import ridge_aliasing

    if ridges.dim != d:
        raise ValueError(f"ridges have dimension {ridges.dim}, the rule {d}")
    candidates = _check_int(candidates, "candidates", 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    Rs = [_haar_rotation(d, rng) for _ in range(candidates)]
    xi = _dual_points_for_screening(kind, d, c, xi_max=40.0, max_points=2e4 if d <= 4 else 3e3)
    # keep the scoring to ~2e8 exponentials: fewer ridge samples when there are many dual points
    S = min(ridges.directions.shape[0], max(1000, int(2e8 / (xi.shape[0] * candidates))))
    if S < ridges.directions.shape[0]:
        ridges = type(ridges)(ridges.directions[:S], ridges.strips[:S])
    scores = [ridge_aliasing(ridges, xi, R) for R in Rs]
    return Rs[int(np.argmin(scores))]


def _default_stretch(d: int, tail: float = 5e-8) -> float:
    """L with P(chi^2_d > 2L) = tail: the radial map reaches radius sqrt(2L) (standard units)."""
    from scipy.special import gammaincc  # chi2.sf(x, d) = gammaincc(d/2, x/2)

    lo, hi = 0.5, 500.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if gammaincc(0.5 * d, mid) > tail:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def lattice(h: float, d: int, var: float = 1.0, *, kind: str = "auto", stretch: float | None = 0.0,
            rotation="screened", seed=0, ridges=None, candidates: int = 32) -> Rule:
    """Rotated, radially stretched lattice rule for ``z ~ N(0, var I_d)``.

    Nodes ``z = sqrt(var) * x``, ``x = rho(|t|) t / |t|`` for the points ``t`` of a rotated
    lattice ``c h R Lambda`` (``Lambda`` of :data:`LATTICES`, ``c`` such that the shortest dual
    vector has length ``1/h``, as for the integer grid of step ``h``); weights
    ``~ J(t) exp(-|x|^2 / 2)`` with ``J`` the Jacobian of ``t -> x``, renormalised to sum 1.
    Symmetric under ``z -> -z`` (can be folded).

    Why it converges (for integrands analytic in a strip around R^d, such as the tanh Mean ODE):

    * *Trapezoid core.* For ``g`` analytic in ``|Im t| < a`` with Gaussian decay the lattice sum
      errs by ``sum_{m in Lambda*, m != 0} g^(2 pi m)`` ~ ``exp(-2 pi a / h)``: geometric in
      ``1/h``, unlike Gauss-Hermite's ``exp(-c sqrt(n))`` for such integrands.
    * *Lattice.* ``kind="auto"`` takes the densest known dual packings (hexagonal for d=2, D4*
      for d=4, E8 for d=8): same shortest dual vector as ``Z^d`` of step ``h`` with
      1.15x / 2x / 16x fewer nodes.
    * *Radial stretch* (``stretch = L``). The map ``|t| = s(r) = r - r^3 / (6L)`` spaces the nodes
      by ``h / (1 - r^2/(2L))`` at radius ``r``: the aliasing from a region is damped by its
      Gaussian weight ``exp(-r^2/2)``, so the step may grow where the weight is small, and the
      map ends at ``r = sqrt(2L)`` (the truncation, chosen so that ``P(|x| > sqrt(2L)) = 5e-8``
      when ``stretch=0.0``; ``stretch=None``: no map, a ball of that radius). In 4-D this uses
      ``(2/3)^4 = 0.2`` times the nodes of the ball-truncated lattice of the same central step.
      Nodes whose Jacobian exceeds 50 (a sliver at the edge, Gaussian weight < e^{-0.98L}) are
      dropped.
    * *Rotation* (``rotation="screened"``): the 2LP integrand is structured along the u and v
      coordinate blocks (first steps: ridges ``tanh(u . h / D)`` in the u-plane), and an
      axis-aligned lattice has dual vectors exactly there. A random rotation removes them;
      see :func:`_screened_rotation`. ``rotation`` may also be ``None`` (axis-aligned), an int
      (a plain Haar-random rotation from that seed) or a ``(d, d)`` orthogonal matrix. ``seed``
      (int or tuple of ints) seeds the screened candidates. With ``ridges`` (a
      :class:`meanode.limit.adapt.Ridges` from a pilot run) the screened rotation is instead
      the one of ``candidates`` random rotations with the least aliasing of those ridges
      (:func:`meanode.limit.adapt.ridge_aliasing`).

    Measured (default problem, D = 2, tanh, eta = 0.2, K = 5, 47,425 folded nodes at
    ``h = 0.3``): max-abs output error 0.5-2.5e-6 for most random rotations, 5.0e-6 axis
    aligned, tensor Gauss-Hermite with 80,000 folded nodes 3.5e-4; but about one rotation in
    five is 10-100x worse (up to 8.7e-5), and at K = 15 errors of 3e-6..3e-5 at h = 0.21-0.3
    depend more on the rotation than on h. Hence two levels with independent rotations for
    the error estimate (:func:`lattice_family`), and ``ridges`` to orient them.
    """
    v = _check_var(var)
    kind, d, L, use_map, c, s_max, n_est = _lattice_geometry(h, d, kind, stretch)
    if n_est > _MAX_TENSOR_NODES:
        raise ValueError(f"lattice(h={h}, d={d}) would have ~{int(n_est):,} nodes; increase h")
    t = lattice_points(kind, d, s_max / c) * c
    if d >= 2 and rotation is not None:
        if isinstance(rotation, str):
            if rotation != "screened":
                raise ValueError(f"rotation must be 'screened', None, an int seed or a matrix; got {rotation!r}")
            if ridges is None:
                R = _screened_rotation(kind, d, c, seed)
                rot_name = "screened"
            else:
                R = _ridge_rotation(kind, d, c, seed, ridges, candidates)
                rot_name = "ridge-screened"
        elif isinstance(rotation, (int, np.integer)) and not isinstance(rotation, bool):
            R = _haar_rotation(d, np.random.default_rng(int(rotation)))
            rot_name = f"haar{int(rotation)}"
        else:
            R = np.asarray(rotation, dtype=np.float64)
            if R.shape != (d, d) or not np.allclose(R @ R.T, np.eye(d), atol=1e-12):
                raise ValueError(f"rotation must be an orthogonal ({d}, {d}) matrix")
            rot_name = "given"
        t = t @ R.T
    else:
        rot_name = "none"
    s = np.sqrt((t * t).sum(axis=1))
    if use_map:
        inside = s < s_max
        t, s = t[inside], s[inside]
        # closed-form root of r^3 - 6L r + 6L s = 0 in [0, sqrt(2L)) (trigonometric cubic formula)
        r = 2.0 * math.sqrt(2.0 * L) * np.cos(np.arccos(-s / s_max) / 3.0 - 2.0 * math.pi / 3.0)
        r = np.clip(r, 0.0, None)
        slope = 1.0 - r * r / (2.0 * L)  # ds/dr
        ok = slope > 0.02
        t, s, r, slope = t[ok], s[ok], r[ok], slope[ok]
        ratio = np.where(s > 0, r / np.where(s > 0, s, 1.0), 1.0)
        x = t * ratio[:, None]
        logw = -np.log(slope) + (d - 1) * np.log(ratio) - 0.5 * r * r
    else:
        inside = s <= s_max
        x = t[inside]
        logw = -0.5 * (x * x).sum(axis=1)
    w = np.exp(logw - logw.max())
    keep = w > 1e-300
    x, w = x[keep], w[keep]
    w = w / math.fsum(w.tolist())
    name = f"lattice({kind}, h={h:g}, d={d}, var={v:g}, stretch={L:.3g}{'' if use_map else ' (ball)'}, rotation={rot_name})"
    return Rule(x * math.sqrt(v), w, name)


def _lattice_geometry(h: float, d: int, kind: str, stretch):
    """Checked arguments of :func:`lattice` and its geometry:
    ``(kind, d, L, use_map, c, s_max, estimated node count before folding)``."""
    h = float(h)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive number; got {h!r}")
    d = _check_int(d, "d", 1)
    kind = _check_kind(kind, d)
    if stretch == 0.0:
        L = _default_stretch(d)
        use_map = True
    elif stretch is None:
        L = _default_stretch(d)
        use_map = False
    else:
        L = float(stretch)
        if not (math.isfinite(L) and L > 0):
            raise ValueError(f"stretch must be a positive number, 0.0 (default) or None; got {stretch!r}")
        use_map = True
    c = _DUAL_MIN[kind] * h
    s_max = (2.0 / 3.0) * math.sqrt(2.0 * L) if use_map else math.sqrt(2.0 * L)
    ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1) * (s_max / c) ** d  # in units of the scaled lattice
    covolume = {"Z": 1.0, "A2": math.sqrt(3.0) / 2.0, "D*": 0.5, "E8": 1.0}[kind]
    return kind, d, L, use_map, c, s_max, ball / covolume


def lattice_size(h: float, d: int, *, kind: str = "auto", stretch: float | None = 0.0) -> int:
    """About how many nodes :func:`lattice` has (before folding), without building it."""
    return int(round(_lattice_geometry(h, d, kind, stretch)[-1]))


def lattice_family(spacing: float = 3.0, *, kind: str = "auto", stretch: float | None = 0.0,
                   rotation="screened", seed: int = 0, ridges=None, candidates: int = 32):
    """A rule family ``rule(level, d, var)`` for :func:`meanode.limit.mean_ode_limit`:
    :func:`lattice` with step ``h = spacing / level`` (level 10 -> h = 0.3) and a rotation
    screened from seed ``(seed, level)``, so that two levels have independent orientations
    (their gap then measures the error rather than a shared aliasing term). ``ridges``,
    ``candidates``: orient each level by a pilot run's ridges (see :func:`lattice`).
    """
    spacing = float(spacing)
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing must be a positive number; got {spacing!r}")

    def rule(level: int, d: int, var: float) -> Rule:
        level = _check_int(level, "level", 1)
        return lattice(spacing / level, d, var, kind=kind, stretch=stretch, rotation=rotation,
                       seed=(int(seed), level), ridges=ridges, candidates=candidates)

    rule.__name__ = f"lattice_family(spacing={spacing:g})"
    return rule


def trapezoid(h: float, d: int, var: float = 1.0, cutoff: float = 6.0) -> Rule:
    """Tensor trapezoid (sinc) rule for ``z ~ N(0, var I_d)``: nodes ``sqrt(var) h j``,
    ``j in Z^d`` with ``|h j_k| <= cutoff``; weights ``prod_k exp(-(h j_k)^2 / 2)`` renormalised to
    sum 1 (the plain sum ``h / sqrt(2 pi) sum exp(-x^2/2)`` is ``1 + O(exp(-2 pi^2 / h^2))``).

    Converges like ``exp(-2 pi a / h)`` for integrands analytic in ``|Im z_k| < a sqrt(var)``
    plus the truncated Gaussian mass beyond ``cutoff`` (1.97e-9 per dimension at 6). Pitfalls
    seen on the tanh Mean ODE (why it looked erratic): (1) a cutoff tied to ``h`` (e.g. a
    fixed number of points, or ``floor(X/h) h``) moves with ``h``, and the truncation error,
    not small there because the integrand grows like ``|v|``, jumps by ~1e-6 at X = 5; keep
    ``cutoff`` fixed and >= 6; (2) the grid is aligned with the u and v coordinate planes, where
    the integrand's ridges lie, so it aliases 10-20x more than a rotated lattice
    (:func:`lattice`); (3) its corners carry nodes of negligible weight: (2 cutoff / h)^d nodes.
    """
    h = float(h)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive number; got {h!r}")
    d = _check_int(d, "d", 1)
    v = _check_var(var)
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive number; got {cutoff!r}")
    m = int(math.floor(cutoff / h + 1e-12))
    n = 2 * m + 1
    if n**d > _MAX_TENSOR_NODES:
        raise ValueError(f"trapezoid(h={h}, d={d}) has {n}**{d} nodes, more than {_MAX_TENSOR_NODES}")
    x = h * np.arange(-m, m + 1, dtype=np.float64)
    w = np.exp(-0.5 * x * x)
    w = w / math.fsum(w.tolist())
    grids = np.meshgrid(*([x * math.sqrt(v)] * d), indexing="ij")
    nodes = np.stack([g.reshape(-1) for g in grids], axis=1)
    wgrid = w
    for _ in range(d - 1):
        wgrid = np.multiply.outer(wgrid, w)
    return Rule(nodes, np.asarray(wgrid).reshape(-1), f"trapezoid(h={h:g}, d={d}, var={v:g}, cutoff={cutoff:g})")
