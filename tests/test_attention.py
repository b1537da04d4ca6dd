"""Attention heads as units (docs/attention_block.md): the block's hand-written contractions against
autograd and finite differences, the sequence trainer against a plain autograd forward, the
one-token reduction to the linear 2LP unit (finite and limit, against the exact closure), the
symmetries and E phi = 0 on nodes, pooling, shapes and errors, and finite nets approaching the limit."""

import numpy as np
import pytest
import torch

import meanode as mn
from meanode import measure
from meanode.blocks import Block
from meanode.limit import quadrature as q
from meanode.readout import pool, pool_adjoint, readout, readout_adjoint

F64 = dict(dtype=torch.float64)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _units(block, shape, seed=0):
    return block.sample(shape, torch.Generator().manual_seed(seed))


class GenericAttention(mn.AttentionHeadBlock):
    """The attention block through the generic Block contractions (materialised torch.func Jacobians)."""

    drift = Block.drift
    vjp_h = Block.vjp_h
    vjp_z = Block.vjp_z
    vjp = Block.vjp


def _phi_reference(H, z, D, d):
    """phi written out from its definition, token by token and unit by unit (no shared code):
    H (N, T, D), z (P, 4 d D) -> (N, P, T, D)."""
    N, T, _ = H.shape
    out = torch.zeros(N, z.shape[0], T, D, **F64)
    for p in range(z.shape[0]):
        WQ, WK, WV, WO = (z[p, i * d * D:(i + 1) * d * D].reshape(d, D) for i in range(4))
        for n in range(N):
            qs, ks, vs = (H[n] @ W.T / D for W in (WQ, WK, WV))  # (T, d)
            for t in range(T):
                A = torch.softmax(ks @ qs[t] / d**0.5, dim=0)  # over tau
                out[n, p, t] = WO.T @ (A @ vs) / d**0.5
    return out


@pytest.mark.parametrize("d_head", [1, 2])
def test_phi_is_the_attention_head_of_its_definition(d_head):
    block = mn.AttentionHeadBlock(3, d_head)
    H = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1), **F64)
    z = _units(block, (3,))
    assert _rel(block.phi(H, z), _phi_reference(H, z, 3, d_head)) < 1e-14
    assert block.dz == 4 * d_head * 3 and block.kappa == 3.0 and block.variance == 3.0 and block.sequence


@pytest.mark.parametrize("d_head, lead", [(1, ()), (2, ()), (1, (2,)), (3, (2,))])
def test_fused_contractions_match_autograd(d_head, lead):
    """drift, vjp_h, vjp_z (hand-written, no grad: in-place path) equal the autograd derivatives
    of sum_p w_p phi to 1e-10 relative (float64; measured ~5e-16), for leading batch dims and with
    the node axis split into chunks."""
    D = 2
    gen = torch.Generator().manual_seed(2)
    block = mn.AttentionHeadBlock(D, d_head)
    h = torch.randn(*lead, 4, 3, D, generator=gen, **F64)
    b = torch.randn(*lead, 4, 3, D, generator=gen, **F64)
    z = _units(block, lead + (7,))
    w = torch.rand(*lead, 7, generator=gen, **F64)
    hh, zz = h.clone().requires_grad_(True), z.clone().requires_grad_(True)
    drift_ref = (block.phi(hh, zz) * w[..., None, :, None, None]).sum(-3)
    g_h, g_z_weighted = torch.autograd.grad((drift_ref * b).sum(), (hh, zz))
    (g_z,) = torch.autograd.grad((block.phi(hh, zz) * b.unsqueeze(-3)).sum(), zz)
    for chunk in (2**21, 30):  # one chunk / one or two units per chunk
        block.chunk = chunk
        with torch.no_grad():
            drift = block.drift(h, z, w)
            v_h, v_z = block.vjp(h, z, w, b)
        assert _rel(drift, drift_ref.detach()) < 1e-10
        assert _rel(v_h, g_h) < 1e-10 and _rel(block.vjp_h(h, z, w, b), g_h) < 1e-10
        assert _rel(v_z, g_z) < 1e-10 and _rel(block.vjp_z(h, z, b), g_z) < 1e-10
    assert block.vjp(h, z, None, b)[0] is None


def test_materialised_jacobians_match_finite_differences_and_the_generic_contractions():
    """d_h_phi, d_z_phi (torch.func) against central differences (step 1e-5: error ~1e-10 x the
    third derivative, asserted 1e-7 relative), and the generic Block contractions built on them
    equal the hand-written fused ones to 1e-12."""
    D, d = 2, 2
    block = mn.AttentionHeadBlock(D, d)
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(2, 3, D, generator=gen, **F64)
    z = _units(block, (3,))
    Jh, Jz = block.d_h_phi(h, z), block.d_z_phi(h, z)
    assert Jh.shape == (2, 3, 3, D, 3, D) and Jz.shape == (2, 3, 3, D, block.dz)
    eps = 1e-5
    fd_h = torch.zeros_like(Jh)
    for t in range(3):
        for j in range(D):
            e = torch.zeros_like(h)
            e[:, t, j] = eps
            fd_h[..., t, j] = (block.phi(h + e, z) - block.phi(h - e, z)) / (2 * eps)
    fd_z = torch.zeros_like(Jz)
    for k in range(block.dz):
        e = torch.zeros_like(z)
        e[:, k] = eps
        fd_z[..., k] = (block.phi(h, z + e) - block.phi(h, z - e)) / (2 * eps)
    assert _rel(Jh, fd_h) < 1e-7 and _rel(Jz, fd_z) < 1e-7
    gen_block, w = GenericAttention(D, d), torch.rand(3, generator=gen, **F64)
    b = torch.randn(2, 3, D, generator=gen, **F64)
    assert _rel(gen_block.drift(h, z, w), block.drift(h, z, w)) < 1e-12
    assert _rel(gen_block.vjp_h(h, z, w, b), block.vjp_h(h, z, w, b)) < 1e-12
    assert _rel(gen_block.vjp_z(h, z, b), block.vjp_z(h, z, b)) < 1e-12


def _plain_loss(block, X, Y, W_E, W_U, z, alpha, scaling=mn.MLU):
    """The network written out with autograd-friendly ops: token-wise embedding, residual layers
    through phi (not the fused drift), mean over tokens, readout; R (E,)."""
    E, L, M, _ = z.shape
    D = W_E.shape[0]
    c = scaling.multiplier(alpha, L, M)
    h = (X @ W_E.T).expand(E, *X.shape[:-1], D)
    for l in range(L):
        h = h + c * block.phi(h, z[:, l]).sum(-3)
    f = h.mean(dim=-2) @ W_U / D
    return 0.5 * ((f - Y) ** 2).sum(dim=(1, 2)) / X.shape[0]


@pytest.mark.parametrize("generic", [False, True])
def test_network_gradient_matches_autograd_through_a_plain_forward(generic):
    """resnet_gradient (hand-written adjoint, pooled readout) against autograd through the plain
    forward: loss to 1e-13, gradient to 1e-10 relative, float64, non-MLU exponents, 3 seeds."""
    prob = mn.Problem.sequences(D=2, T=3, N=4)
    X, Y, W_E, W_U = (torch.as_tensor(a, **F64) for a in (prob.X, prob.Y, prob.W_E, prob.W_U))
    block = (GenericAttention if generic else mn.AttentionHeadBlock)(2)
    z = mn.init_weights(block, 4, 3, [0, 1, 2])
    scaling = mn.Scaling(0.8, 1.2)
    loss, grad = mn.resnet_gradient(X, Y, W_E, W_U, z, alpha=1.3, block=block, scaling=scaling)
    zz = z.clone().requires_grad_(True)
    ref = _plain_loss(block, X, Y, W_E, W_U, zz, 1.3, scaling)
    (g_ref,) = torch.autograd.grad(ref.sum(), zz)
    assert torch.allclose(loss, ref.detach(), rtol=1e-13, atol=0)
    assert _rel(grad, g_ref) < 1e-10


def test_training_step_is_gradient_descent_with_rate_eta_L_M_D():
    """One step of train_resnet equals z - lam dR/dz with lam = eta L M D / alpha^2 (kappa = D),
    the second step's forward recomputed by the plain forward (1e-13)."""
    prob = mn.Problem.sequences(D=2, T=3, N=5)
    X, Y, W_E, W_U = (torch.as_tensor(a, **F64) for a in (prob.X, prob.Y, prob.W_E, prob.W_U))
    block, L, M, alpha, eta = mn.AttentionHeadBlock(2), 4, 3, 1.4, 0.3
    z0 = mn.init_weights(block, L, M, [5])
    _, grad = mn.resnet_gradient(X, Y, W_E, W_U, z0, alpha=alpha, block=block)
    z1 = z0 - eta * L * M * 2 / alpha**2 * grad
    res = mn.train_resnet(**prob.arrays(), L=L, M=M, alpha=alpha, eta=eta, steps=1, seeds=[5], block=block,
                          return_weights=True)
    assert torch.allclose(res.zK, z1, rtol=0, atol=1e-13)
    h = (X @ W_E.T)[None]
    for l in range(L):
        h = h + alpha / (L * M) * block.phi(h, z1[:, l]).sum(-3)
    assert np.allclose(res.h[:, 1], h.numpy(), rtol=0, atol=1e-13)
    assert np.allclose(res.f[:, 1], (h.mean(-2) @ W_U / 2).numpy(), rtol=0, atol=1e-13)


def test_one_token_head_is_the_linear_2lp_unit_finite_and_limit():
    """T = 1, d = 1: softmax of one score is 1 and phi = W_O^T (W_V . h / D), the 2LP unit with
    sigma = id, u = W_V, v = W_O, same mu0 and kappa. Finite nets (same units): equal to 1e-12.
    Limit: a 2-node-per-dimension Gauss-Hermite rule is exact for the identity dynamics (units stay
    linear in z, the integrands are quadratic) and must reproduce the exact closure (SPEC §4.1) to 1e-10."""
    seq, vec = mn.Problem.sequences(D=2, T=1), mn.Problem.default(D=2)
    assert np.array_equal(seq.X[:, 0], vec.X)
    block = mn.AttentionHeadBlock(2)
    z = mn.init_weights(block, 6, 4, [0, 1])
    _, _, WV, WO = block.split(z)
    z_2lp = torch.cat([WV.flatten(-2), WO.flatten(-2)], dim=-1)
    kw = dict(L=6, M=4, alpha=1.0, eta=0.3, steps=3, seeds=[0, 1])
    a = mn.train_resnet(**seq.arrays(), block=block, init=z, **kw)
    b = mn.train_resnet(**vec.arrays(), activation="identity", init=z_2lp, **kw)
    assert np.abs(a.f - b.f).max() < 1e-12 and np.abs(a.h[:, :, :, 0] - b.h).max() < 1e-12
    lkw = dict(alpha=1.0, eta=0.3, steps=3)
    lim = mn.mean_ode_limit(**seq.arrays(), block=block, rule="gauss_hermite", level=2, **lkw)
    closure = mn.mean_ode_limit(**vec.arrays(), activation="identity", **lkw)
    assert np.abs(lim.f - closure.f).max() < 1e-10 and np.abs(lim.h[:, :, 0] - closure.h).max() < 1e-10


def test_symmetries_declared_by_the_block_hold():
    """phi(-z) = phi(z) and d_z phi(-z) = -d_z phi(z) (odd_symmetric: fold z -> -z); flipping W_O
    alone flips phi (hence E phi = 0); flipping (W_Q, W_K) or (W_V, W_O) leaves phi unchanged."""
    block = mn.AttentionHeadBlock(2, 2)
    h = torch.randn(3, 3, 2, generator=torch.Generator().manual_seed(4), **F64)
    b = torch.randn(3, 3, 2, generator=torch.Generator().manual_seed(5), **F64)
    z = _units(block, (5,))
    WQ, WK, WV, WO = block.split(z)
    p = block.phi(h, z)
    assert torch.allclose(block.phi(h, -z), p, rtol=0, atol=1e-14)
    assert torch.allclose(block.vjp_z(h, -z, b), -block.vjp_z(h, z, b), rtol=0, atol=1e-13)
    assert torch.allclose(block.phi(h, block.join(WQ, WK, WV, -WO)), -p, rtol=0, atol=1e-14)
    assert torch.allclose(block.phi(h, block.join(-WQ, -WK, WV, WO)), p, rtol=0, atol=1e-14)
    assert torch.allclose(block.phi(h, block.join(WQ, WK, -WV, -WO)), p, rtol=0, atol=1e-14)
    assert block.odd_symmetric


def test_mean_of_phi_vanishes_on_the_quadrature_nodes():
    """E_mu0 phi(H; z) = 0 on the nodes: exactly (rounding) on a tensor Gauss-Hermite grid, which is
    symmetric under W_O -> -W_O; on the default lattice family (dz = 8) the node mean is a
    quadrature error, small against the RMS of phi (measured ~5e-3 relative at level 10) and
    shrinking with the level (measured 9e-2, 3e-2, 9e-3 at levels 6, 8, 10)."""
    block = mn.AttentionHeadBlock(2)
    prob = mn.Problem.sequences(D=2, T=3)
    h = torch.as_tensor(prob.X @ prob.W_E.T, **F64)
    gh = q.gauss_hermite(3, block.dz, block.variance)
    z, w = torch.as_tensor(np.array(gh.nodes)), torch.as_tensor(np.array(gh.weights))
    scale = float(block.phi(h, z).pow(2).mul(w[:, None, None]).sum(1).mean().sqrt())
    assert float(block.drift(h, z, w).abs().max()) < 1e-13 * scale
    fam = q.lattice_family(mn.limit.options.LATTICE_DEFAULTS[8][0])
    errs = []
    for level in (6, 8, 10):
        r = fam(level, block.dz, block.variance)
        z, w = torch.as_tensor(np.array(r.nodes)), torch.as_tensor(np.array(r.weights))
        errs.append(float(block.drift(h, z, w).abs().max()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 2e-2 * scale, errs


def test_pooling_and_its_adjoint():
    """<pool(h), g> = <h, pool_adjoint(g)>; readout_adjoint is the gradient of R through the
    pooled readout (autograd, 1e-14); vector data: pool is the identity."""
    gen = torch.Generator().manual_seed(6)
    h = torch.randn(2, 5, 3, 4, generator=gen, **F64)
    g = torch.randn(2, 5, 4, generator=gen, **F64)
    assert abs(float((pool(h, True) * g).sum() - (h * pool_adjoint(g, 3)).sum())) < 1e-13
    W_U, Y = torch.randn(4, 2, generator=gen, **F64), torch.randn(5, 2, generator=gen, **F64)
    hh = h[0].clone().requires_grad_(True)
    r = readout(hh, W_U, True) - Y
    (g_ref,) = torch.autograd.grad(0.5 * r.pow(2).sum() / 5, hh)
    assert _rel(readout_adjoint(r.detach(), W_U, 5, 3), g_ref) < 1e-14
    x = h[0, :, 0]
    assert pool(x, False) is x and pool_adjoint(g, None) is g


def test_shapes_records_and_seeds_batched_like_2lp():
    prob = mn.Problem.sequences(D=2, T=3, N=4, N_eval=2)
    block = mn.AttentionHeadBlock(2)
    r = mn.train_resnet(**prob.arrays(), L=3, M=2, alpha=1.0, eta=0.2, steps=2, seeds=[0, 1, 2], block=block,
                        record_hidden=True)
    assert r.f.shape == (3, 3, 4, 5) and r.h.shape == (3, 3, 4, 3, 2) and r.f_eval.shape == (3, 3, 2, 5)
    assert r.h_eval.shape == (3, 3, 2, 3, 2) and r.hidden.shape == (3, 3, 4, 6, 3, 2) and r.config["T"] == 3
    assert np.allclose(r.hidden[:, 0, 0, :4], prob.X @ prob.W_E.T) and np.allclose(r.hidden[:, :, -1, :4], r.h)
    one = mn.train_resnet(**prob.arrays(), L=3, M=2, alpha=1.0, eta=0.2, steps=2, seeds=[1], block=block)
    assert np.allclose(one.f[0], r.f[1], rtol=0, atol=1e-14) and np.all(np.diff(r.loss, axis=1) < 0)
    # per-member alphas batch on the ensemble axis like seeds
    both = mn.train_resnet(**prob.arrays(), L=3, M=2, alpha=[1.0, 2.0], eta=0.2, steps=2, seeds=[1, 1], block=block)
    two = mn.train_resnet(**prob.arrays(), L=3, M=2, alpha=2.0, eta=0.2, steps=2, seeds=[1], block=block)
    assert np.allclose(both.f[0], one.f[0], rtol=0, atol=1e-13) and np.allclose(both.f[1], two.f[0], rtol=0, atol=1e-13)
    f32 = mn.train_resnet(**prob.arrays(), L=3, M=2, alpha=1.0, eta=0.2, steps=2, seeds=[1], block=block,
                          dtype=torch.float32)
    assert f32.f.dtype == np.float32 and np.abs(f32.f[0] - one.f[0]).max() < 1e-5  # float32 resolution ~1e-7
    lim = mn.mean_ode_limit(**prob.arrays(), alpha=1.0, eta=0.2, steps=1, block=block, rule="gauss_hermite", level=2)
    assert lim.f.shape == (2, 4, 5) and lim.h.shape == (2, 4, 3, 2) and lim.h_eval.shape == (2, 2, 3, 2)
    assert lim.H.shape[-3:] == (6, 3, 2) and lim.B.shape[-3:] == (4, 3, 2)


def test_limit_at_step_zero_is_the_identity_map():
    """On a node set symmetric under W_O -> -W_O (tensor Gauss-Hermite) the k = 0 drift vanishes
    and h_0(s, x) = W_E x at every depth to rounding; b_1 is the pooled readout adjoint."""
    prob = mn.Problem.sequences(D=2, T=3, N=5)
    res = mn.mean_ode_limit(**prob.arrays(), alpha=1.0, eta=0.2, steps=1, block=mn.AttentionHeadBlock(2),
                            rule="gauss_hermite", level=3)
    h0 = prob.X @ prob.W_E.T
    assert np.abs(res.h_at([0.0, 0.4, 1.0], k=0) - h0).max() < 1e-12
    b1 = np.repeat(((res.f[0] - prob.Y) @ prob.W_U.T / (5 * 2 * 3))[:, None], 3, axis=1)
    assert np.abs(res.b_at(1.0, k=0) - b1).max() < 1e-13
    assert np.abs(res.h[1] - h0).max() > 1e-3  # and the first step moves it


def test_divergence_is_recorded_with_its_step():
    """A huge step diverges every seed: each is marked at the step where it happened, its records up
    to that step kept (finite before it), NaN after it (never zeroed)."""
    prob = mn.Problem.sequences(D=2, T=3, N=4)
    r = mn.train_resnet(**prob.arrays(), L=2, M=2, alpha=1.0, eta=2e3, steps=5, seeds=[0, 1],
                        block=mn.AttentionHeadBlock(2), divergence_threshold=1e3)
    assert r.diverged.all() and (r.diverged_step >= 1).all()
    for e, k in enumerate(r.diverged_step):
        assert np.isfinite(r.loss[e, :k]).all() and np.isnan(r.loss[e, k + 1:]).all()


def _train(prob, block, **kw):
    args = dict(prob.arrays(), L=2, M=2, alpha=1.0, eta=0.2, steps=1, block=block)
    args.update(kw)
    return mn.train_resnet(**args)


@pytest.mark.parametrize("make, exc, word", [
    (lambda s, v: dict(X=v.X), ValueError, "sequence block"),
    (lambda s, v: dict(X_eval=s.X[:, :2]), ValueError, "X_eval"),
    (lambda s, v: dict(X_eval=v.X), ValueError, "X_eval"),
    (lambda s, v: dict(X=s.X[:, :, :3]), ValueError, "W_E"),
    (lambda s, v: dict(init=np.zeros((1, 2, 2, 5))), ValueError, "init"),
    (lambda s, v: dict(block=mn.AttentionHeadBlock(3)), ValueError, "D"),
])
def test_bad_sequence_input_raises_naming_the_argument(make, exc, word):
    seq, vec = mn.Problem.sequences(D=2, T=3, N=4), mn.Problem.default(D=2, N=4)
    kw = make(seq, vec)
    block = kw.pop("block", mn.AttentionHeadBlock(2))
    with pytest.raises(exc, match=word):
        _train(seq, block, **kw)


def test_bad_limit_and_block_input_raises():
    seq, vec = mn.Problem.sequences(D=2, T=3, N=4), mn.Problem.default(D=2, N=4)
    block = mn.AttentionHeadBlock(2)
    kw = dict(alpha=1.0, eta=0.2, steps=1)
    with pytest.raises(ValueError, match="not a sequence block"):
        mn.train_resnet(**seq.arrays(), L=2, M=2, **kw)
    with pytest.raises(ValueError, match="not a sequence block"):
        mn.mean_ode_limit(**seq.arrays(), **kw)
    with pytest.raises(ValueError, match="sequence block"):
        mn.mean_ode_limit(**vec.arrays(), block=block, **kw)
    with pytest.raises(ValueError, match="X_eval"):
        mn.mean_ode_limit(**seq.arrays(), X_eval=seq.X[:, :1], block=block, **kw)
    for method, word in (("lazy", "2LP"), ("closure", "identity")):
        with pytest.raises(ValueError, match=word):
            mn.mean_ode_limit(**seq.arrays(), block=block, method=method, **kw)
    with pytest.raises(ValueError, match="pilot"):
        mn.mean_ode_limit(**seq.arrays(), block=block, orient="pilot", **kw)
    for bad in (dict(D=0), dict(D=2, d_head=0), dict(D=2.0)):
        with pytest.raises(ValueError):
            mn.AttentionHeadBlock(**bad)
    with pytest.raises(ValueError, match="T"):
        mn.Problem.sequences(D=2, T=0)


def test_finite_attention_resnets_approach_the_limit_at_rate_one_over_sqrt_LM():
    """D = 1, d_head = 1 (dz = 4: the default lattice is accurate, estimate ~3e-4 at level 6),
    T = 3, K = 2, one head per layer (L*M, 1) so the Euler part ~0.25/L stays below 1e-3:
    the output error at step K falls like (L M)^(-1/2) (fitted slope within 0.15 of -1/2: the
    per-seed errors are heavy-tailed, and segment slopes with 32 seeds were measured within
    +-0.1 of -1/2), the hidden error too, and the limit's estimate is 10x below every finite error."""
    prob, block, K = mn.Problem.sequences(D=1, T=3), mn.AttentionHeadBlock(1), 2
    lim = mn.mean_ode_limit(**prob.arrays(), alpha=1.0, eta=0.2, steps=K, block=block, level=6, depth_nodes=13,
                            rtol=1e-7, atol=1e-9)
    LM = [64, 256, 1024]
    f_err, h_err = [], []
    for n in LM:
        r = mn.train_resnet(**prob.arrays(), L=n, M=1, alpha=1.0, eta=0.2, steps=K, block=block, seeds=range(32))
        f_err.append(measure.rms(r.f[:, K] - lim.f[K]))
        h_err.append(measure.rms(r.h[:, K] - lim.h[K]))
    assert lim.error_estimate < 0.1 * min(f_err), (lim.error_estimate, f_err)
    for errs in (f_err, h_err):
        fit = measure.loglog_slope(LM, errs)
        assert abs(fit.slope + 0.5) < 0.15, (fit, errs)
