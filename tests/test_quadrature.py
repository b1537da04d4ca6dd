"""Tests for meanode.limit.quadrature: Gaussian node sets for E[f(z)], z ~ N(0, var I_d)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import integrate

from _mp_hermite import construct_nested_hermite_mp
from meanode.limit.quadrature import (
    LATTICES,
    NESTED_DEGREES,
    NESTED_SIZES,
    SMOLYAK_MAX_LEVEL,
    Rule,
    gauss_hermite,
    lattice,
    lattice_family,
    lattice_points,
    nested_hermite_1d,
    lattice_size,
    rqmc,
    rqmc_replicates,
    smolyak,
    smolyak_exactness,
    trapezoid,
)

# ----------------------------------------------------------------------------- helpers


def _dfact(k: int) -> int:
    return 1 if k <= 0 else k * _dfact(k - 2)


def _gauss_moment(a: int, var: float) -> float:
    """E[z^a], z ~ N(0, var): 0 for odd a, var^(a/2) (a-1)!! for even a."""
    return 0.0 if a % 2 else var ** (a // 2) * _dfact(a - 1)


def _exponents_total_degree(d: int, deg: int) -> np.ndarray:
    """All exponent vectors (M, d) with total degree <= deg."""
    out: list[list[int]] = []

    def rec(prefix: list[int], left: int) -> None:
        if len(prefix) == d:
            out.append(prefix)
            return
        for a in range(left + 1):
            rec(prefix + [a], left - a)

    rec([], deg)
    return np.array(out, dtype=np.int64)


def _monomial_errors(rule: Rule, exps: np.ndarray, var: float) -> np.ndarray:
    """|rule(z^a) - E[z^a]| / sqrt(E[z^(2a)]) for each exponent row a: shape (M,)."""
    z = rule.nodes
    vals = np.ones((z.shape[0], exps.shape[0]))
    for k in range(z.shape[1]):
        vals *= z[:, k : k + 1] ** exps[:, k]
    approx = rule.weights @ vals
    exact = np.array([np.prod([_gauss_moment(int(a), var) for a in row]) for row in exps])
    scale = np.array([np.prod([math.sqrt(_gauss_moment(2 * int(a), var)) for a in row]) for row in exps])
    return np.abs(approx - exact) / scale


def _measured_total_degree(rule: Rule, var: float, max_deg: int, tol: float = 1e-11) -> int:
    """Largest t <= max_deg such that every monomial of total degree <= t is exact."""
    exps = _exponents_total_degree(rule.dim, max_deg)
    err = _monomial_errors(rule, exps, var)
    tot = exps.sum(axis=1)
    t = -1
    for deg in range(max_deg + 1):
        if np.max(err[tot == deg]) > tol:
            break
        t = deg
    return t


def _tanh_sq_reference(var: float) -> float:
    """E[tanh(z1 + 0.5 z2)^2] = E[tanh(s x)^2], x ~ N(0,1), s^2 = 1.25 var (1-D adaptive quad)."""
    s = math.sqrt(1.25 * var)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val, _ = integrate.quad(
            lambda x: np.tanh(s * x) ** 2 * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
            -np.inf,
            np.inf,
            epsabs=1e-15,
            epsrel=1e-13,
            limit=400,
        )
    return val


def _tanh_sq(z: np.ndarray) -> np.ndarray:
    return np.tanh(z[:, 0] + 0.5 * z[:, 1]) ** 2


A4 = np.array([0.3, -0.2, 0.25, 0.1])


def _cos_exact(a: np.ndarray, var: float) -> float:
    return math.exp(-var * float(a @ a) / 2)


# ----------------------------------------------------------------------------- basics


@pytest.mark.parametrize(
    "rule",
    [
        gauss_hermite(1, 3),
        gauss_hermite(7, 2, var=3.0),
        gauss_hermite(6, 4, var=2.0).fold_odd_symmetry(),
        smolyak(0, 5),
        smolyak(4, 4, var=2.0),
        smolyak(6, 8, var=2.0),
        smolyak(5, 6).fold_odd_symmetry(),
        rqmc(256, 4, var=2.0, seed=3),
        rqmc(128, 3, antithetic=False),
        *[nested_hermite_1d(k, var=0.7) for k in range(len(NESTED_SIZES))],
    ],
    ids=lambda r: r.name,
)
def test_weights_sum_to_one_and_shapes_match(rule):
    assert rule.nodes.dtype == np.float64 and rule.weights.dtype == np.float64
    assert rule.nodes.ndim == 2 and rule.weights.shape == (rule.nodes.shape[0],)
    scale = max(1.0, float(np.abs(rule.weights).sum()))
    assert abs(float(np.sum(rule.weights)) - 1.0) < 1e-14 * scale


def test_rule_arrays_are_read_only_and_rule_is_frozen():
    r = gauss_hermite(3, 2)
    with pytest.raises(ValueError):
        r.nodes[0, 0] = 1.0
    with pytest.raises(ValueError):
        r.weights[0] = 1.0
    with pytest.raises(AttributeError):
        r.name = "x"


def test_rule_rejects_weights_not_summing_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        Rule(np.zeros((2, 1)), np.array([0.5, 0.6]), "bad")
    with pytest.raises(ValueError, match="shape"):
        Rule(np.zeros((2, 1)), np.array([1.0]), "bad")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: gauss_hermite(0, 2), r"\bn\b"),
        (lambda: gauss_hermite(2.5, 2), r"\bn\b"),
        (lambda: gauss_hermite(3, 0), r"\bd\b"),
        (lambda: gauss_hermite(3, 2, var=0.0), r"\bvar\b"),
        (lambda: gauss_hermite(3, 2, var=-1.0), r"\bvar\b"),
        (lambda: gauss_hermite(3, 2, var=float("nan")), r"\bvar\b"),
        (lambda: gauss_hermite(100, 8), r"\bn\b"),
        (lambda: smolyak(-1, 2), r"\blevel\b"),
        (lambda: smolyak(SMOLYAK_MAX_LEVEL + 1, 2), r"\blevel\b"),
        (lambda: smolyak(2, 0), r"\bd\b"),
        (lambda: smolyak(2, 3, var=0), r"\bvar\b"),
        (lambda: rqmc(0, 2), r"\bn\b"),
        (lambda: rqmc(7, 2), r"\bn\b.*even"),
        (lambda: rqmc(8, 0), r"\bd\b"),
        (lambda: rqmc(8, 2, var=-2), r"\bvar\b"),
        (lambda: rqmc(8, 2, seed=-1), r"\bseed\b"),
        (lambda: rqmc_replicates(8, 2, 1.0, 0, 0), r"\bn_rep\b"),
        (lambda: nested_hermite_1d(5), r"\bk\b"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- Gauss-Hermite


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_gauss_hermite_exact_for_monomials_up_to_degree_2n_minus_1_per_dimension(n):
    var = 2.0
    d = 2
    rule = gauss_hermite(n, d, var)
    assert rule.num_nodes == n**d
    exps = np.array([(a, b) for a in range(2 * n) for b in range(2 * n)])
    assert np.max(_monomial_errors(rule, exps, var)) < 1e-13
    # Sharp: z1^(2n) is not integrated exactly.
    assert _monomial_errors(rule, np.array([[2 * n, 0]]), var)[0] > 1e-3


def test_gauss_hermite_exact_in_three_dimensions_with_scaled_variance():
    var, n = 0.37, 3
    rule = gauss_hermite(n, 3, var)
    exps = np.array([(a, b, c) for a in range(6) for b in range(6) for c in range(6)])
    assert np.max(_monomial_errors(rule, exps, var)) < 1e-13


# ----------------------------------------------------------------------------- nested 1-D rules


def test_nested_rules_are_nested_and_symmetric():
    prev: set[float] = set()
    for k, size in enumerate(NESTED_SIZES):
        r = nested_hermite_1d(k)
        x = r.nodes[:, 0]
        assert x.size == size
        assert prev <= set(x.tolist())
        np.testing.assert_array_equal(x, -x[::-1])
        np.testing.assert_array_equal(r.weights, r.weights[::-1])
        prev = set(x.tolist())


@pytest.mark.parametrize("k", range(len(NESTED_SIZES)))
def test_nested_rule_exactness_degree_is_as_stated(k):
    deg = NESTED_DEGREES[k]
    var = 1.3
    r = nested_hermite_1d(k, var)
    x = r.nodes[:, 0]
    # Odd moments vanish by symmetry; even moments relative to E[z^j].
    rel = {j: abs(float(r.weights @ x**j) / _gauss_moment(j, var) - 1.0) for j in range(0, deg + 2, 2)}
    odd = max(abs(float(r.weights @ x**j)) for j in range(1, deg + 1, 2)) if deg > 1 else abs(float(r.weights @ x))
    assert odd < 1e-13 * _gauss_moment(deg + 1, var)
    assert max(v for j, v in rel.items() if j <= deg) < 1e-14
    assert rel[deg + 1] > 1e-8  # next (even) degree is not exact


def test_nested_rules_match_published_genz_keister_values():
    # Burkardt / Genz-Keister tables (standard normal weight).
    r9 = nested_hermite_1d(2)
    pos = r9.nodes[4:, 0]
    np.testing.assert_allclose(
        pos, [0.0, 0.741095349994540853, 1.73205080756887719, 2.86127957605705818, 4.18495601767273229], rtol=1e-15
    )
    np.testing.assert_allclose(
        r9.weights[4:],
        [0.253968253968254065, 0.270074329577937755, 0.0948509485094851251, 0.00799632547089352934, 9.42694575565174701e-05],
        rtol=1e-14,
    )
    r19 = nested_hermite_1d(3)
    i = int(np.argmin(np.abs(r19.nodes[:, 0] - 2.86127957605705818)))
    assert r19.weights[i] == pytest.approx(-0.00633722479337375712, rel=1e-13)  # negative, as published
    assert r19.nodes[-1, 0] == pytest.approx(6.36339449433636961, rel=1e-15)
    r35 = nested_hermite_1d(4)
    assert r35.nodes[-1, 0] == pytest.approx(9.0169397898903032, rel=1e-15)
    assert r35.weights[-1] == pytest.approx(1.05413265823340136e-18, rel=1e-12)
    assert np.all(r35.weights > 0)


def test_high_precision_construction_reproduces_the_stored_tables():
    pytest.importorskip("mpmath")
    rules = construct_nested_hermite_mp(dps=40)
    for k, (pos, w) in enumerate(rules):
        r = nested_hermite_1d(k)
        m = NESTED_SIZES[k] // 2
        np.testing.assert_allclose(r.nodes[m:, 0], [0.0] + [float(x) for x in pos], rtol=2e-16, atol=0)
        np.testing.assert_allclose(r.weights[m:], [float(x) for x in w], rtol=4e-16, atol=0)


# ----------------------------------------------------------------------------- Smolyak


@pytest.mark.parametrize(
    "d, levels",
    [(1, range(0, 26, 5)), (2, range(0, 7)), (3, range(0, 7)), (4, range(0, 7)), (8, range(0, 4))],
)
def test_smolyak_exact_for_all_polynomials_up_to_total_degree_2l_plus_1(d, levels):
    var = 2.0
    for level in levels:
        rule = smolyak(level, d, var)
        stated = smolyak_exactness(level)
        assert stated == 2 * level + 1
        measured = _measured_total_degree(rule, var, stated + 1)
        assert measured >= stated, (d, level, measured)
        if d >= level + 1:
            # z1^2 ... z_{l+1}^2 (degree 2l+2) is not exact: the stated degree is sharp.
            assert measured == stated, (d, level, measured)


def test_smolyak_nodes_are_distinct_and_symmetric_with_negative_weights_exposed():
    r = smolyak(5, 4)
    assert np.unique(r.nodes, axis=0).shape[0] == r.num_nodes
    assert np.any(r.weights < 0)
    folded = r.fold_odd_symmetry()  # would raise if not symmetric
    assert folded.num_nodes == (r.num_nodes + 1) // 2


def test_smolyak_node_counts_are_stable():
    counts = {d: [smolyak(level, d).num_nodes for level in range(1, 7)] for d in (4, 8)}
    assert counts[4] == [9, 25, 89, 225, 537, 945]
    assert counts[8] == [17, 129, 625, 2417, 8241, 22689]


@pytest.mark.parametrize("d", [4, 8])
def test_smolyak_uses_far_fewer_nodes_than_tensor_grid_of_same_exactness(d):
    # Tensor GH with n = l+1 per dimension is the smallest tensor grid exact to total degree 2l+1.
    for level in range(1, 7):
        p_sparse = smolyak(level, d).num_nodes
        p_tensor = (level + 1) ** d
        ratio = p_sparse / p_tensor
        assert ratio < 0.6
        if d == 4 and level >= 3:
            assert ratio < 0.45
        if d == 8 and level >= 2:
            assert ratio < 0.03
        if d == 8 and level >= 4:
            assert ratio < 0.01


def test_smolyak_scales_nodes_with_variance():
    r1 = smolyak(3, 3, var=1.0)
    r2 = smolyak(3, 3, var=4.0)
    np.testing.assert_allclose(r2.nodes, 2.0 * r1.nodes, rtol=0, atol=0)
    np.testing.assert_array_equal(r2.weights, r1.weights)


# ----------------------------------------------------------------------------- smooth integrands


def test_cos_integrand_error_decreases_with_gauss_hermite_n_and_smolyak_level():
    var = 2.0
    exact = _cos_exact(A4, var)
    f = lambda z: np.cos(z @ A4)  # noqa: E731
    gh = [abs(gauss_hermite(n, 4, var).expect(f) - exact) for n in range(2, 9)]
    assert all(b < 0.2 * a for a, b in zip(gh[:-1], gh[1:]))
    assert gh[-1] < 1e-13
    sm = [abs(smolyak(level, 4, var).expect(f) - exact) for level in range(0, 7)]
    assert all(b < 0.1 * a for a, b in zip(sm[:-1], sm[1:]))
    assert sm[-1] < 1e-9


def test_cos_integrand_in_eight_dimensions_smolyak_beats_tensor_at_equal_node_count():
    a = np.array([0.3, -0.2, 0.25, 0.1, 0.15, -0.1, 0.05, 0.2])
    var = 2.0
    exact = _cos_exact(a, var)
    f = lambda z: np.cos(z @ a)  # noqa: E731
    sm = smolyak(4, 8, var)  # 2417 nodes
    gh = gauss_hermite(3, 8, var)  # 6561 nodes
    assert sm.num_nodes < gh.num_nodes
    assert abs(sm.expect(f) - exact) < 0.1 * abs(gh.expect(f) - exact)


def test_tanh_squared_error_decreases_with_gauss_hermite_n():
    var = 1.0
    ref = _tanh_sq_reference(var)
    errs = [abs(gauss_hermite(n, 2, var).expect(_tanh_sq) - ref) for n in range(1, 13)]
    assert all(b < a for a, b in zip(errs[:-1], errs[1:]))
    assert errs[-1] < 1e-4


def test_tanh_squared_error_decreases_with_smolyak_level_overall():
    # Not monotone level by level: the 9 -> 19 point step (levels 7 -> 8) makes it worse
    # for this ridge integrand (the 19-point rule has a negative weight and wide nodes);
    # the overall trend over the levels is still down.
    var = 1.0
    ref = _tanh_sq_reference(var)
    errs = [abs(smolyak(level, 3, var).expect(_tanh_sq) - ref) for level in range(0, 12)]
    assert errs[6] < 0.05 * errs[1] and errs[7] < 0.05 * errs[1]
    assert max(errs[6:]) < 0.2 * max(errs[:3])
    assert errs[11] < 1e-4


# ----------------------------------------------------------------------------- folding


@pytest.mark.parametrize("n, d", [(2, 3), (4, 4), (6, 2), (10, 3)])
def test_fold_halves_tensor_gauss_hermite_with_even_n_exactly(n, d):
    r = gauss_hermite(n, d)
    assert r.fold_odd_symmetry().num_nodes == n**d // 2


@pytest.mark.parametrize("n, d", [(1, 3), (3, 2), (5, 3)])
def test_fold_of_odd_n_tensor_keeps_the_origin(n, d):
    r = gauss_hermite(n, d)
    folded = r.fold_odd_symmetry()
    assert folded.num_nodes == (n**d + 1) // 2
    assert np.any(np.all(folded.nodes == 0.0, axis=1))


@pytest.mark.parametrize(
    "rule",
    [gauss_hermite(6, 4, 2.0), gauss_hermite(5, 3, 2.0), smolyak(5, 4, 2.0), smolyak(3, 8, 2.0), rqmc(512, 4, 2.0)],
    ids=lambda r: r.name,
)
def test_fold_gives_same_expectation_for_even_integrands(rule):
    d = rule.dim
    a = np.linspace(0.4, -0.3, d)
    evens = [
        lambda z: np.cos(z @ a),
        lambda z: np.tanh(z @ a) ** 2,
        lambda z: np.tanh(z[:, 0]) * np.tanh(z[:, 1] + 0.3 * z[:, -1]),
        lambda z: z[:, 0] ** 2 * z[:, 1] ** 4 + z[:, 0] * z[:, -1],
    ]
    folded = rule.fold_odd_symmetry()
    assert "folded" in folded.name
    assert folded.num_nodes == (rule.num_nodes + int(np.any(np.all(rule.nodes == 0, axis=1)))) // 2
    for f in evens:
        full = rule.expect(f)
        half = folded.expect(f)
        scale = float(np.abs(rule.weights) @ np.abs(f(rule.nodes))) + 1e-300
        assert abs(full - half) < 1e-14 * scale


def test_fold_keeps_representatives_with_positive_leading_coordinate():
    folded = smolyak(4, 3).fold_odd_symmetry()
    for z in folded.nodes:
        nz = z[np.abs(z) > 0]
        assert nz.size == 0 or nz[0] > 0


def test_fold_rejects_non_symmetric_rules():
    with pytest.raises(ValueError, match="not symmetric"):
        rqmc(64, 3, antithetic=False).fold_odd_symmetry()
    r = gauss_hermite(4, 2)
    w = r.weights.copy()
    w[0] += 1e-3
    w[1] -= 1e-3
    with pytest.raises(ValueError, match="not symmetric"):
        Rule(r.nodes, w, "perturbed").fold_odd_symmetry()


# ----------------------------------------------------------------------------- RQMC


def test_rqmc_antithetic_pairs_are_exact_for_odd_integrands():
    d, var = 4, 2.0
    r = rqmc(1024, d, var, seed=7)
    half = r.num_nodes // 2
    np.testing.assert_array_equal(r.nodes[half:], -r.nodes[:half])
    assert np.all(r.weights == r.weights[0])
    a = np.array([0.7, -0.4, 0.2, 1.1])
    odds = [
        lambda z: z[:, 0],
        lambda z: z[:, 0] ** 3 * z[:, 1] ** 2,
        lambda z: np.sin(z @ a),
        lambda z: np.tanh(z @ a) * np.cos(z[:, 2]),
    ]
    for f in odds:
        vals = f(r.nodes)
        assert abs(r.expect(f)) < 1e-14 * float(np.abs(vals).mean() + 1)


def test_rqmc_replicates_are_distinct_and_reproducible():
    a = rqmc_replicates(64, 3, 1.0, 4, 11)
    b = rqmc_replicates(64, 3, 1.0, 4, 11)
    assert len(a) == 4
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra.nodes, rb.nodes)
    assert not np.array_equal(a[0].nodes, a[1].nodes)


def test_rqmc_replicate_spread_shrinks_with_n():
    d, var = 4, 2.0
    spreads = []
    for p in (6, 8, 10, 12):
        est = [r.expect(_tanh_sq) for r in rqmc_replicates(2**p, d, var, 16, 3)]
        spreads.append(float(np.std(est, ddof=1)))
    assert all(b < a for a, b in zip(spreads[:-1], spreads[1:]))
    assert spreads[-1] < spreads[0] / 20


def test_rqmc_replicate_mean_agrees_with_reference_within_spread():
    var = 2.0
    ref = _tanh_sq_reference(var)
    est = np.array([r.expect(_tanh_sq) for r in rqmc_replicates(2**12, 4, var, 16, 5)])
    sem = est.std(ddof=1) / math.sqrt(est.size)
    assert abs(est.mean() - ref) < 5 * sem


# ----------------------------------------------------------------------------- trapezoid and lattice rules


def _tanh_ridge_reference(s: float, mu: float) -> float:
    """E[tanh(s x + mu)^2], x ~ N(0, 1), by adaptive 1-D quadrature."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val, _ = integrate.quad(
            lambda x: np.tanh(s * x + mu) ** 2 * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
            -14.0, 14.0, epsabs=1e-15, epsrel=1e-14, limit=500,
        )
    return val


@pytest.mark.parametrize(
    "kind, d, norm2, count",
    [("Z", 3, 1.0, 6), ("A2", 2, 1.0, 6), ("D*", 4, 1.0, 24), ("E8", 8, 2.0, 240)],
)
def test_lattice_points_shortest_shells(kind, d, norm2, count):
    # Z^3: 6 unit vectors; hexagonal: 6 neighbours; D4* = Z^4 u (Z^4 + 1/2): 8 + 16 vectors of
    # norm 1; E8: its 240 roots of norm^2 2.
    p = lattice_points(kind, d, math.sqrt(norm2) + 1e-9)
    n2 = (p * p).sum(axis=1)
    assert np.sum(np.abs(n2 - norm2) < 1e-12) == count
    assert np.sum(n2 < norm2 - 1e-12) == 1  # only the origin is shorter
    # dual of D4* is D4 (24 roots of norm^2 2); E8 is self-dual; both symmetric sets
    if kind in ("D*", "E8"):
        m = lattice_points(kind, d, math.sqrt(2.0) + 1e-9, dual=True)
        assert np.sum(np.abs((m * m).sum(axis=1) - 2.0) < 1e-12) == (24 if d == 4 else 240)
    key = {tuple(np.round(x, 12)) for x in p}
    assert all(tuple(np.round(-x, 12)) in key for x in p)


@pytest.mark.parametrize("d, h", [(1, 0.5), (2, 0.5), (3, 0.6), (4, 0.6)])
def test_lattice_rule_is_a_symmetric_probability_rule(d, h):
    r = lattice(h, d, var=2.0)
    assert r.dim == d and np.all(r.weights > 0)
    assert abs(r.weights.sum() - 1.0) < 1e-14
    folded = r.fold_odd_symmetry()  # raises unless z -> -z maps the rule onto itself
    assert folded.num_nodes == (r.num_nodes + 1) // 2
    # second moments: E[z z^T] = var I to the truncation level (mass 5e-8 beyond radius
    # sqrt(2L), where z^2 ~ 2L var)
    cov = (r.nodes * r.weights[:, None]).T @ r.nodes
    np.testing.assert_allclose(cov, 2.0 * np.eye(d), atol=4e-5)


def test_lattice_options_and_determinism():
    a = lattice(0.6, 4, 2.0)
    b = lattice(0.6, 4, 2.0)
    np.testing.assert_array_equal(a.nodes, b.nodes)
    c = lattice(0.6, 4, 2.0, seed=1)
    assert not np.array_equal(a.nodes, c.nodes)
    rot = np.linalg.qr(np.random.default_rng(5).standard_normal((4, 4)))[0]
    g = lattice(0.6, 4, 2.0, rotation=rot)
    assert "rotation=given" in g.name
    aligned = lattice(0.6, 4, 2.0, rotation=None, stretch=None)  # the plain ball of D4*
    y = aligned.nodes / math.sqrt(2.0) / (math.sqrt(2.0) * 0.6)  # back to unit-lattice coordinates
    assert np.allclose(2 * y, np.rint(2 * y), atol=1e-9)
    fam = lattice_family()
    assert "h=0.3," in fam(10, 4, 2.0).name
    assert not np.array_equal(fam(5, 4, 2.0).nodes, lattice(0.6, 4, 2.0).nodes)  # own rotation per level
    for bad in (dict(kind="E8"), dict(rotation="best"), dict(stretch=-1.0), dict(rotation=np.eye(3))):
        with pytest.raises(ValueError):
            lattice(0.6, 4, 2.0, **bad)
    with pytest.raises(ValueError):
        lattice(0.0, 4)
    assert set(LATTICES) == {"Z", "A2", "D*", "E8"}


@pytest.mark.parametrize("d, h", [(2, 0.075), (4, 0.3), (4, 0.25), (6, 0.667), (8, 0.909)])
def test_lattice_size_predicts_the_node_count_within_ten_percent(d, h):
    """lattice_size (ball volume over the lattice covolume, used to plan sweeps) against the built
    rule: the only discrepancy is the lattice points near the truncation sphere."""
    built = lattice(h, d, rotation=None).num_nodes
    assert abs(lattice_size(h, d) / built - 1) < 0.1, (lattice_size(h, d), built)


def test_lattice_converges_geometrically_on_a_tanh_ridge_where_gauss_hermite_is_slow():
    # 2-D: E[tanh(w . z + mu)^2], w . z of std 1.5 (poles pi/3 from the real axis in x).
    w = np.array([1.2, 0.9])
    ex = _tanh_ridge_reference(1.5, 0.3)
    f = lambda z: np.tanh(z @ w + 0.3) ** 2  # noqa: E731
    errs = [abs(lattice(h, 2, 1.0).expect(f) - ex) for h in (0.8, 0.6, 0.4, 0.3)]
    assert errs[0] > 1e-5 and errs[2] < 1e-6 and errs[3] < 5e-8
    assert errs[1] < 0.2 * errs[0] and errs[2] < 0.05 * errs[1]
    # Gauss-Hermite with as many nodes as lattice(h=0.3) (21^2 = 441 vs 451) is 100x less accurate
    gh = abs(gauss_hermite(21, 2, 1.0).expect(f) - ex)
    assert gh > 100 * errs[3]
    # 4-D, var = 2: the truncation (mass beyond sqrt(2 L) ~ 5e-8) is the floor
    w4 = np.array([0.8, -0.5, 0.35, 0.2])
    ex4 = _tanh_ridge_reference(math.sqrt(2.0 * w4 @ w4), 0.3)
    assert abs(lattice(0.5, 4, 2.0).expect(lambda z: np.tanh(z @ w4 + 0.3) ** 2) - ex4) < 2e-7


def test_a_lattice_coarser_across_a_ridge_keeps_its_accuracy_with_an_eighth_of_the_nodes():
    """Poisson summation: a ridge g(e . z) under a Gaussian has a transform that is Gaussian across
    e, so only dual vectors nearly parallel to e alias. Doubling the step across e (``scale``)
    leaves the error of h = 0.3 unchanged at 1/8 of the nodes, while the isotropic lattice with
    about as many nodes (h = 0.6) is 1e4x worse."""
    w4 = np.array([2.4, -1.5, 1.05, 0.6])  # w . z of std 4.1: poles 0.38 from the real axis
    e = w4 / np.linalg.norm(w4)
    ex = _tanh_ridge_reference(math.sqrt(2.0 * w4 @ w4), 0.3)
    f = lambda z: np.tanh(z @ w4 + 0.3) ** 2  # noqa: E731
    S = np.eye(4) + (np.eye(4) - np.outer(e, e))  # step x 2 across e
    iso, scaled, iso_coarse = lattice(0.3, 4, 2.0), lattice(0.3, 4, 2.0, scale=S), lattice(0.6, 4, 2.0)
    assert 7.0 < iso.num_nodes / scaled.num_nodes < 9.0 and iso_coarse.num_nodes < scaled.num_nodes
    err_iso, err_scaled = abs(iso.expect(f) - ex), abs(scaled.expect(f) - ex)
    assert err_iso < 1e-7 and err_scaled < 2 * err_iso + 1e-8
    assert abs(iso_coarse.expect(f) - ex) > 1e4 * err_scaled
    assert "scaled" in scaled.name
    scaled.fold_odd_symmetry()  # still symmetric under z -> -z
    for bad in (0.5 * np.eye(4), np.eye(3), np.full((4, 4), np.nan)):
        with pytest.raises(ValueError, match="scale"):
            lattice(0.3, 4, 2.0, scale=bad)


def test_trapezoid_rule_converges_geometrically_in_one_dimension():
    ex = _tanh_ridge_reference(1.7, 0.3)
    f = lambda z: np.tanh(1.7 * z[:, 0] + 0.3) ** 2  # noqa: E731
    errs = [abs(trapezoid(h, 1).expect(f) - ex) for h in (0.8, 0.6, 0.4, 0.3)]
    assert all(b < 0.2 * a for a, b in zip(errs[:-1], errs[1:]))
    assert errs[-1] < 2e-6
    assert abs(gauss_hermite(40, 1).expect(f) - ex) > 10 * errs[-1]  # 40 points vs 41
    r = trapezoid(0.5, 2, var=3.0, cutoff=4.0)
    assert r.num_nodes == 17**2 and abs(r.weights.sum() - 1) < 1e-14
    assert np.max(np.abs(r.nodes)) == pytest.approx(4.0 * math.sqrt(3.0))
    r.fold_odd_symmetry()
    with pytest.raises(ValueError):
        trapezoid(0.5, 2, cutoff=0.0)
