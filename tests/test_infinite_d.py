"""The D = infinity limit of the identity closure (docs/infinite_d.md): exact reduction of the
fixed-D closure, exactness against independent computations, self-convergence to machine
precision, and the 1/sqrt(D) (RMS) and 1/D (mean over draws) convergence of the fixed-D
closure with coupled rows."""

import meanode as mn
import numpy as np
import pytest
import torch
from meanode import measure
from meanode.limit import mean_ode_limit
from meanode.limit.depth import DepthGrid
from meanode.limit.infinite_d import (
    _solve_frames,
    embedded_closure,
    embedding_frame,
    gram_drift,
    infinite_d_limit,
    infinite_frame,
)
from meanode.solvers import resolve_solver

D_IN, D_OUT, N = 3, 2, 3
VAR_E, VAR_U = 1.0 / D_IN, 1.0  # SPEC §1
KW = dict(alpha=1.0, eta=0.5, steps=4)


@pytest.fixture(scope="module")
def data():
    return mn.default_data(N=N, d_in=D_IN, d_out=D_OUT, seed=1)


@pytest.fixture(scope="module")
def limit(data):
    X, Y = data
    return infinite_d_limit(X, Y, var_E=VAR_E, var_U=VAR_U, **KW)


def _embeddings(D, seed, D_max=1024):
    return mn.coupled_embeddings(D, D_IN, D_OUT, seed=seed, D_max=D_max)


def _closure(X, Y, W_E, W_U, **kw):
    """The fixed-D closure of SPEC §4.1 (the 2D x 2D covariance), tight tolerances."""
    return mean_ode_limit(X, Y, W_E, W_U, activation="identity", method="closure", rtol=1e-13, atol=1e-15,
                          depth_nodes=17, **kw)


def test_reduced_closure_is_the_full_closure_exactly(data):
    """The closure's vectors stay in span(W_E, W_U), so the 2D x 2D closure reduces exactly to
    a frame of dimension min(D, d_in + d_out). Against mean_ode_limit (a different code path,
    D-dimensional): f, every h_k and D b_k at every depth node, at D = 4 (< d, rank-deficient
    frame) to 128. Both solve to rtol <= 1e-12 with DOP853, measured gaps <= 5e-13; 1e-11
    leaves room for the growth of h (|h| ~ 1) and the sum over ~10 solves."""
    X, Y = data
    for D in (4, 16, 64, 128):
        W_E, W_U = _embeddings(D, seed=3)
        ref = _closure(X, Y, W_E, W_U, **KW)
        red = embedded_closure(X, Y, W_E, W_U, depth_nodes=17, **KW)
        co = red.coordinates(W_E, W_U)
        assert np.abs(red.f - ref.f).max() < 1e-11, D
        assert np.abs(co.h - ref.H).max() < 1e-11, D
        assert np.abs(co.b - D * ref.B).max() < 1e-11, D
        assert red.error_estimate < 1e-10 and red.D == D


def test_limit_is_the_closure_of_any_orthogonal_embedding_exactly(data, limit):
    """Independent check of the limit: W_E, W_U with orthogonal columns of squared norm
    D var_E, D var_U have exactly the limiting Gram matrix diag(var_E I, var_U I), so the
    fixed-D closure (mean_ode_limit, D-dimensional) must equal the D = infinity limit at any
    D >= d_in + d_out, and its h_k(s, x) the coordinate processes of its rows."""
    X, Y = data
    rng = np.random.default_rng(7)
    for D in (5, 12, 40):
        Qm = np.linalg.qr(rng.standard_normal((D, D_IN + D_OUT)))[0]
        W_E, W_U = np.sqrt(D * VAR_E) * Qm[:, :D_IN], np.sqrt(D * VAR_U) * Qm[:, D_IN:]
        ref = _closure(X, Y, W_E, W_U, **KW)
        assert np.abs(ref.f - limit.f).max() < 1e-12, D
        co = limit.coordinates(W_E, W_U, s=ref.depth.s)
        assert np.abs(co.h - ref.H).max() < 1e-11, D
        assert np.abs(co.b - D * ref.B).max() < 1e-11, D


def test_self_convergence_to_machine_precision(data):
    """Depth nodes: the gap to a 65-node run falls geometrically (Q = 7 -> 13) and is at
    round-off (< 1e-13) from Q = 13; tolerances: rtol = 1e-8 .. 1e-12 all within their error
    estimate of the reference, the default within 1e-13. Measured: 2e-11 (Q=7), 2e-14 (Q=9),
    1e-15 (Q >= 13); rtol 1e-8 -> ~1e-11, 1e-12 -> 2e-14."""
    X, Y = data
    kw = dict(var_E=VAR_E, var_U=VAR_U, alpha=1.0, eta=0.5, steps=6)
    ref = infinite_d_limit(X, Y, rtol=1e-13, atol=1e-16, depth_nodes=65, refine=False, **kw)
    gaps = {}
    for Q in (7, 9, 13, 17):
        r = infinite_d_limit(X, Y, rtol=1e-13, atol=1e-16, depth_nodes=Q, **kw)
        gaps[Q] = np.abs(r.f - ref.f).max()
        assert gaps[Q] <= r.error_estimate, (Q, gaps[Q], r.error_parts)
    assert gaps[7] > 30 * gaps[9] and gaps[13] < 1e-13 and gaps[17] < 1e-13, gaps
    for rtol in (1e-8, 1e-10, 1e-12):
        r = infinite_d_limit(X, Y, rtol=rtol, atol=rtol * 1e-2, **kw)
        gap = np.abs(r.f - ref.f).max()
        assert gap <= r.error_estimate, (rtol, gap, r.error_parts)
    assert gap < 1e-13 and r.error_estimate < 1e-10
    # another solver (torch dopri5, 5th order) reaches the same limit
    t = infinite_d_limit(X, Y, solver="torch:dopri5", **kw)
    assert np.abs(t.f - ref.f).max() < 1e-12


def _batched_raw(X, Y, frames, K, Q=17):
    """The reduced closure for a batch of frames (one solve per step for all): raw tensors."""
    return _solve_frames(torch.tensor(np.stack(frames)), torch.tensor(X), torch.tensor(Y), None, KW["alpha"],
                         KW["eta"], K, resolve_solver("DOP853"), 1e-12, 1e-14, DepthGrid(Q))


def _batched(X, Y, frames, K, Q=17):
    """f (K+1, B, N, d_out) of the reduced closure for a batch of frames."""
    return _batched_raw(X, Y, frames, K, Q)["f"].numpy()


def test_fixed_d_closure_converges_like_inverse_sqrt_D_and_its_mean_like_inverse_D(data, limit):
    """32 embedding draws, coupled rows, D = 16 .. 1024 (the reduced closure, exactly the fixed-D
    closure by the first test; the 2D x 2D one would need 1 GB per state at D = 1024).
    f_D - f_inf = J[Gamma_D - Gamma_inf] + O(1/D) with E[Gamma_D] = Gamma_inf (docs §3):
    - the RMS gap (over draws, steps, samples, outputs) has log-log slope -1/2: within 0.1
      (over 20 sets of 32 draws the slope was -0.50 +- 0.025, extremes -0.55 and -0.45);
    - the mean over draws has slope -1. Its Monte-Carlo noise (~1/sqrt(32 D)) would hide the
      1/D bias, so the exactly-mean-zero linear term J[Gamma_D - Gamma_inf] is subtracted as a
      control variate (J by central differences at Gamma_inf); slope within 0.15 of -1
      (20 sets: -0.96 +- 0.06)."""
    X, Y = data
    K = KW["steps"]
    d = D_IN + D_OUT
    G_inf = np.diag(np.r_[np.full(D_IN, VAR_E), np.full(D_OUT, VAR_U)])
    f_inf = _batched(X, Y, [infinite_frame(D_IN, D_OUT, VAR_E, VAR_U)], K)[:, 0]
    assert np.abs(f_inf - limit.f).max() < 1e-12
    # J[dG] = sum_ij J_ij dG_ij, by central differences along symmetric unit directions
    eps, dirs = 1e-4, [(i, j) for i in range(d) for j in range(i, d)]
    E = np.zeros((len(dirs), d, d))
    for b, (i, j) in enumerate(dirs):
        E[b, i, j] = E[b, j, i] = 1.0
    fp = _batched(X, Y, [np.linalg.cholesky(G_inf + eps * e).T for e in E], K)
    fm = _batched(X, Y, [np.linalg.cholesky(G_inf - eps * e).T for e in E], K)
    J = np.einsum("kbnt,bij->kntij", (fp - fm) / (2 * eps), E / np.maximum(E.sum((1, 2), keepdims=True), 1))
    R_draws = 32
    embeds = [_embeddings(1024, seed=s) for s in range(R_draws)]
    Ds = [16, 32, 64, 128, 256, 512, 1024]
    rms_gap, mean_gap = [], []
    for D in Ds:
        frames = [embedding_frame(W_E[:D], W_U[:D]) for W_E, W_U in embeds]
        gap = _batched(X, Y, frames, K) - f_inf[:, None]
        dG = np.stack([R.T @ R for R in frames]) - G_inf
        rms_gap.append(measure.rms(gap))
        mean_gap.append(measure.rms((gap - np.einsum("kntij,bij->kbnt", J, dG)).mean(axis=1)))
    s_rms, s_mean = measure.loglog_slope(Ds, rms_gap), measure.loglog_slope(Ds, mean_gap)
    assert abs(s_rms.slope + 0.5) < 0.1, (s_rms, rms_gap)
    assert abs(s_mean.slope + 1.0) < 0.15, (s_mean, mean_gap)


def test_coordinates_agree_with_the_fixed_d_closure_to_inverse_sqrt_D(data, limit):
    """Closure coordinates h_{k,d}(1, x) and D b_{k,d}(0, x_n) (mean_ode_limit for D = 16, 32;
    the reduced closure, exact by the first test, for D = 64 .. 1024) against the
    D = infinity coordinate processes of the same rows: first 8 coordinates (fixed as D grows,
    coupled), 32 draws. RMS gap ~ 1/sqrt(D), slope within 0.1 of -1/2 (with 8 draws the slope
    scattered by 0.06 over 8 sets of draws; 32 draws halve that)."""
    X, Y = data
    Ds, rows, K = [16, 32, 64, 128, 256, 512, 1024], 8, KW["steps"]
    embeds = [_embeddings(1024, seed=s) for s in range(32)]
    inf = [limit.coordinates(W_E[:rows], W_U[:rows], s=[0.0, 1.0]) for W_E, W_U in embeds]
    h_inf = np.stack([c.h[:, 1, :N] for c in inf])  # (draws, K+1, N, rows)
    b_inf = np.stack([c.b[:, 0] for c in inf])  # (draws, K, N, rows)
    gh, gb = [], []
    for D in Ds:
        if D <= 32:
            runs = [_closure(X, Y, W_E[:D], W_U[:D], **KW) for W_E, W_U in embeds]
            h1 = np.stack([r.h[..., :rows] for r in runs])
            b0 = np.stack([D * r.B[:, 0, :, :rows] for r in runs])
        else:  # h = Phi R^{-1} a,  D b = Phi R^{-1} beta  (docs §2)
            frames = [embedding_frame(W_E[:D], W_U[:D]) for W_E, W_U in embeds]
            raw = _batched_raw(X, Y, frames, K)
            P = np.stack([np.concatenate([W_E[:rows], W_U[:rows]], 1) @ np.linalg.inv(R)
                          for (W_E, W_U), R in zip(embeds, frames)])  # (draws, rows, r)
            h1 = np.einsum("kbnr,bmr->bknm", raw["A"][:, -1].numpy(), P)
            b0 = np.einsum("kbnr,bmr->bknm", raw["Bc"][:, 0].numpy(), P)
        gh.append(measure.rms(h1 - h_inf))
        gb.append(measure.rms(b0 - b_inf))
    for gaps in (gh, gb):
        fit = measure.loglog_slope(Ds, gaps)
        assert abs(fit.slope + 0.5) < 0.1, (fit, gaps)


def test_gram_kernels_close_the_drift(limit):
    """docs §4: the closure's E[v_k u_k^T] is sum D b_rho Lambda_{rho sigma} h_sigma^T with
    Lambda a function of the (step, sample) Gram kernels at the same depth (gram_drift).
    At every node and step, the matrix built from the kernels equals the covariance block that
    was propagated by T S T^T, to round-off."""
    g = limit.gram()
    K, r = limit.steps, limit.R.shape[0]
    c = limit.config["eta"] / limit.config["alpha"]
    for k in range(1, K + 1):
        steps_of = np.repeat(np.arange(k), N)
        for q in range(limit.depth.Q):
            Khh = g["hh"][q, :k, :N, :k, :N].reshape(k * N, k * N)
            Kbb = g["bb"][q, :k, :, :k, :].reshape(k * N, k * N)
            Lam = gram_drift(Khh, Kbb, steps_of, c)
            Bm = limit.Bc[:k, q].reshape(k * N, r)  # beta_rho as rows
            Am = limit.A[:k, q, :N].reshape(k * N, r)
            C = limit.Sigma[k, q][r:, :r]
            assert np.abs(Bm.T @ Lam @ Am - C).max() < 1e-12 * max(1.0, np.abs(C).max()), (k, q)
    # the kernels' boundary values (docs §4): hh(0) = var_E x.x', hU(1) = f, D <b(1), b(1)> = var_U r.r' / N^2
    X = g["hE"][0, 0] / VAR_E  # W_E^T h_0(0, x) / D = var_E x
    assert np.abs(g["hh"][0, 2, :, 1] - VAR_E * X @ X.T).max() < 1e-13  # steps 2 and 1 at s = 0
    assert np.abs(g["hU"][-1, :, :N] - limit.f).max() < 1e-14


def test_gram_kernel_odes_of_the_note_hold_along_the_solution():
    """docs §4's ODEs for the kernels H, X, B and the readouts U^h, U^b, checked by spectral
    differentiation of their Chebyshev interpolants (33 nodes) against the right-hand sides
    built from the kernels and gram_drift. Measured residuals <= 1e-11 (|H| up to 8);
    differentiating a 33-node interpolant amplifies its ~1e-14 node errors by ~Q^2 = 1e3."""
    X, Y = mn.default_data(N=2, d_in=2, d_out=2, seed=3)
    alpha, eta, n = 0.8, 0.3, 2
    res = infinite_d_limit(X, Y, alpha=alpha, eta=eta, steps=4, var_E=0.5, var_U=1.0, rtol=1e-13, atol=1e-15)
    g, s, Q, c = res.gram(), res.depth.s, res.depth.Q, eta / alpha
    w = res.depth._w
    Dm = np.where(np.eye(Q, dtype=bool), 0.0, (w[None, :] / w[:, None]) / (s[:, None] - s[None, :] + np.eye(Q)))
    Dm -= np.diag(Dm.sum(axis=1))  # Chebyshev differentiation matrix on the nodes
    H, Xk, B, Uh, Ub = g["hh"], g["hb"], g["bb"], g["hU"], g["bU"]

    def lam(k, q):
        return gram_drift(H[q, :k, :n, :k, :n].reshape(k * n, k * n), B[q, :k, :, :k, :].reshape(k * n, k * n),
                          np.repeat(np.arange(k), n), c)

    def flat(V):
        return V.reshape(-1, *V.shape[2:])

    def check(V, rhs):
        r = np.array([rhs(q) for q in range(Q)])
        assert np.abs(Dm @ V - r).max() < 1e-9 * max(1.0, np.abs(V).max())

    for j, x, i, xp in [(1, 0, 1, 1), (2, 0, 3, 1), (4, 1, 4, 1), (3, 1, 0, 0)]:
        check(H[:, j, x, i, xp], lambda q: alpha * (
            (flat(Xk[q, i, xp, :j]) @ lam(j, q) @ flat(H[q, :j, :n, j, x]) if j else 0.0)
            + (flat(Xk[q, j, x, :i]) @ lam(i, q) @ flat(H[q, :i, :n, i, xp]) if i else 0.0)))
    for j, x, i, m in [(1, 0, 1, 1), (3, 1, 2, 0), (0, 0, 3, 1), (4, 1, 3, 1)]:
        check(Xk[:, j, x, i, m], lambda q: alpha * (
            (flat(B[q, :j, :, i, m]) @ lam(j, q) @ flat(H[q, :j, :n, j, x]) if j else 0.0)
            - (flat(H[q, j, x, :i, :n]) @ lam(i, q).T @ flat(B[q, :i, :, i, m]) if i else 0.0)))
    for j, m, i, mp in [(1, 0, 1, 1), (3, 1, 2, 0), (2, 0, 3, 1)]:
        check(B[:, j, m, i, mp], lambda q: -alpha * (
            flat(Xk[q, :j, :n, i, mp]) @ lam(j, q).T @ flat(B[q, :j, :, j, m])
            + flat(Xk[q, :i, :n, j, m]) @ lam(i, q).T @ flat(B[q, :i, :, i, mp])))
    for j, x in [(2, 1), (4, 0)]:
        check(Uh[:, j, x], lambda q: alpha * flat(Ub[q, :j]).T @ lam(j, q) @ flat(H[q, :j, :n, j, x]))
        check(Ub[:, j - 1, x], lambda q: -alpha * flat(Uh[q, :j - 1, :n]).T @ lam(j - 1, q).T
              @ flat(B[q, :j - 1, :, j - 1, x]))


def test_only_the_product_of_the_variances_matters_and_f0_vanishes(data, limit):
    """(W_E, W_U) -> (W_E / t, t W_U) leaves the identity network's f and training unchanged and
    scales h by 1/t: the limit depends on var_E * var_U only; f_0 = W_U^T W_E x / D -> 0."""
    X, Y = data
    t2 = 4.0
    other = infinite_d_limit(X, Y, var_E=VAR_E / t2, var_U=VAR_U * t2, **KW)
    assert np.abs(other.f - limit.f).max() < 1e-12
    assert np.all(limit.f[0] == 0.0) and np.all(np.diff(limit.loss) < 0)
    rows_E, rows_U = np.ones((2, D_IN)), np.ones((2, D_OUT))
    a, b = limit.coordinates(rows_E, rows_U), other.coordinates(rows_E / np.sqrt(t2), rows_U * np.sqrt(t2))
    assert np.abs(a.h - b.h * np.sqrt(t2)).max() < 1e-11 * np.sqrt(t2)


def test_held_out_inputs_and_several_samples(data, limit):
    """N = 3 training samples; held-out inputs are evaluated, not trained on: f_eval on copies of
    training inputs equals their f; shapes as documented."""
    X, Y = data
    res = infinite_d_limit(X, Y, var_E=VAR_E, var_U=VAR_U, X_eval=X[:2], **KW)
    K = KW["steps"]
    assert res.f.shape == (K + 1, N, D_OUT) and res.f_eval.shape == (K + 1, 2, D_OUT)
    assert np.abs(res.f - limit.f).max() < 1e-13 and np.abs(res.f_eval - limit.f[:, :2]).max() < 1e-12
    co = res.coordinates(np.ones((4, D_IN)), np.ones((4, D_OUT)), s=[0.25, 1.0])
    assert co.h.shape == (K + 1, 2, N + 2, 4) and co.b.shape == (K, 2, N, 4)
    g = res.gram(s=0.5)
    assert g["hh"].shape == (1, K + 1, N + 2, K + 1, N + 2) and g["bb"].shape == (1, K, N, K, N)
    assert "error estimate" in res.summary() and "D = infinity" in res.summary()


def test_monte_carlo_of_the_closure_agrees_within_its_own_error():
    """Independent small-N check: the 2D x 2D closure (mean_ode_limit) at D = 128 averaged over
    16 embedding draws, N = 1. Its own error: 4 standard errors of the mean (per entry) plus its
    bias, estimated as the change of the mean from D = 64 to 128 on the same (coupled) draws
    (a 1/D bias halves from 64 to 128). Monte Carlo over embeddings converges like
    1/sqrt(D R): this check resolves f to ~0.1 (measured own error <= 0.1 against |f| up to 0.5),
    where the exact checks above reach 1e-12."""
    X, Y = mn.default_data(N=1, d_in=2, d_out=2, seed=5)
    kw = dict(alpha=1.0, eta=0.5, steps=2)
    inf = infinite_d_limit(X, Y, var_E=0.5, var_U=1.0, **kw)
    fs = {64: [], 128: []}
    for s in range(16):
        W_E, W_U = mn.coupled_embeddings(128, 2, 2, seed=100 + s)
        for D in (64, 128):
            fs[D].append(mean_ode_limit(X, Y, W_E[:D], W_U[:D], activation="identity", method="closure",
                                        rtol=1e-12, atol=1e-14, depth_nodes=9, **kw).f)
    f64, f128 = np.array(fs[64]), np.array(fs[128])
    se = f128.std(axis=0, ddof=1) / np.sqrt(len(f128))
    own_error = 4 * se + np.abs(f128.mean(0) - f64.mean(0))
    assert np.all(np.abs(f128.mean(0) - inf.f) <= own_error)
    assert own_error.max() < 0.12 and np.abs(inf.f).max() > 0.3  # the check is not vacuous


def test_bad_input_is_named(data, limit):
    X, Y = data
    kw = dict(alpha=1.0, eta=0.5, steps=2)
    with pytest.raises(ValueError, match="X and Y disagree"):
        infinite_d_limit(X, Y[:2], **kw)
    with pytest.raises(ValueError, match="X must have 2 dimensions"):
        infinite_d_limit(X[0], Y, **kw)
    with pytest.raises(ValueError, match="var_E"):
        infinite_d_limit(X, Y, var_E=-1.0, **kw)
    with pytest.raises(TypeError, match="var_U"):
        infinite_d_limit(X, Y, var_U="1", **kw)
    with pytest.raises(ValueError, match="alpha"):
        infinite_d_limit(X, Y, alpha=0.0, eta=0.5, steps=2)
    with pytest.raises(ValueError, match="steps"):
        infinite_d_limit(X, Y, alpha=1.0, eta=0.5, steps=-1)
    with pytest.raises(ValueError, match="depth_nodes"):
        infinite_d_limit(X, Y, depth_nodes=2, **kw)
    with pytest.raises(ValueError, match="solver"):
        infinite_d_limit(X, Y, solver="julia:Vern9", **kw)
    with pytest.raises(ValueError, match="X_eval"):
        infinite_d_limit(X, Y, X_eval=np.ones((2, D_IN + 1)), **kw)
    with pytest.raises(ValueError, match="W_U has 3 rows"):
        embedded_closure(X, Y, np.ones((4, D_IN)), np.ones((3, D_OUT)), **kw)
    with pytest.raises(ValueError, match="W_E_rows"):
        limit.coordinates(np.ones((2, D_IN + 1)), np.ones((2, D_OUT)))
    with pytest.raises(ValueError, match="W_U_rows"):
        limit.coordinates(np.ones((2, D_IN)), np.ones((3, D_OUT)))
    with pytest.raises(ValueError, match="s must be"):
        limit.coordinates(np.ones((2, D_IN)), np.ones((2, D_OUT)), s=[1.5])
