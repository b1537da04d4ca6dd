"""Polynomially exact rules: tensor Gauss-Hermite, the nested Genz-Keister 1-D rules and Smolyak sparse grids on them."""

from __future__ import annotations

import math

import numpy as np

from .rule import _MAX_TENSOR_NODES, Rule, _check_int, _check_var

__all__ = ["gauss_hermite", "nested_hermite_1d", "smolyak", "smolyak_exactness", "NESTED_SIZES", "NESTED_DEGREES", "SMOLYAK_MAX_LEVEL"]

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


