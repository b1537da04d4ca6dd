"""Tests for meanode.limit.kernels: the lazy-limit kernel theta of SPEC 4.2,

    theta(h, h') = E[sigma(a) sigma(a')] + E[sigma'(a) sigma'(a')] (h . h') / D,
    (a, a') centred Gaussian, Var a = |h|^2/D, Var a' = |h'|^2/D, Cov = h . h'/D.

References are computed here independently of the module: nested adaptive scipy quadrature
(split at the kinks of relu/step) for the closed forms, and a brute-force uniform 2-D
trapezoid (at half the step found sufficient in the module's measurements) for tanh/gelu.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from meanode.activations import ACTIVATIONS
from meanode.gaussian import gaussian_pair_expectations
from meanode.limit.kernels import theta

ACTIVATIONS_WITH_CLOSED_FORM_KERNEL = {a.name for a in ACTIVATIONS.values() if a.closed_form_kernel}

torch.set_num_threads(min(2, torch.get_num_threads()))

ALL_ACTIVATIONS = ["identity", "erf", "relu", "tanh", "gelu"]
SQRT_2PI = math.sqrt(2.0 * math.pi)


# ------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------


def _cholesky(q1: float, q2: float, c: float) -> tuple[float, float, float]:
    s1 = math.sqrt(q1)
    m = c / s1
    return s1, m, math.sqrt(max(q2 - m * m, 0.0))


def _quad(fun, lo: float, hi: float) -> float:
    return integrate.quad(fun, lo, hi, epsabs=1e-15, epsrel=1e-13, limit=200)[0]


def nested_quad_expectation(f, g, q1: float, q2: float, c: float, half_width: float = 9.0) -> float:
    """E[f(a) g(a')] by nested scipy.integrate.quad over (g1, g2) ~ N(0, I_2), with
    a = sqrt(q1) g1, a' = m g1 + r g2, split where a = 0 and a' = 0 (kinks of relu/step)."""
    s1, m, r = _cholesky(q1, q2, c)

    def pdf(x: float) -> float:
        return math.exp(-0.5 * x * x) / SQRT_2PI

    def inner(x: float) -> float:
        cuts = [-half_width, half_width]
        if r > 0 and abs(m * x / r) < half_width:
            cuts.insert(1, -m * x / r)
        return sum(
            _quad(lambda y: pdf(y) * g(m * x + r * y), lo, hi)
            for lo, hi in zip(cuts[:-1], cuts[1:])
        )

    return sum(
        _quad(lambda x: pdf(x) * f(s1 * x) * inner(x), lo, hi)
        for lo, hi in [(-half_width, 0.0), (0.0, half_width)]
    )


def _tanh(x):
    return np.tanh(x)


def _dtanh(x):
    return 1.0 - np.tanh(x) ** 2


def _gelu(x):
    return x * special.ndtr(x)


def _dgelu(x):
    return special.ndtr(x) + x * np.exp(-0.5 * x * x) / SQRT_2PI


QUADRATURE_FUNCTIONS = {"tanh": (_tanh, _dtanh), "gelu": (_gelu, _dgelu)}


def brute_force_trapezoid(f, g, q1: float, q2: float, c: float) -> float:
    """E[f(a) g(a')] by a uniform 2-D trapezoid in (g1, g2) on [-10, 10]^2, step 0.1/sqrt(1+q)."""
    s1, m, r = (0.0, 0.0, math.sqrt(q2)) if q1 == 0 else _cholesky(q1, q2, c)
    n = int(math.ceil(10.0 / (0.1 / math.sqrt(1.0 + max(q1, q2)))))
    x = np.linspace(-10.0, 10.0, 2 * n + 1)
    w = (x[1] - x[0]) * np.exp(-0.5 * x * x) / SQRT_2PI
    inner = g(m * x[:, None] + r * x[None, :]) @ w
    return float(np.sum(w * f(s1 * x) * inner))


# (q1, q2, rho): moderate, strongly correlated, anti-correlated, unequal variances
CLOSED_FORM_COVARIANCES = [
    (0.5, 1.5, 0.3),
    (2.0, 1.0, 0.95),
    (1.0, 1.0, -0.99),
    (3.0, 0.2, 0.999),
    (1.0, 4.0, -0.3),
    (6.0, 6.0, 0.0),
]
QUADRATURE_COVARIANCES = [
    (0.5, 1.5, 0.3),
    (1.0, 1.0, 0.99),
    (1.0, 1.0, 1.0),
    (4.0, 9.0, 0.7),
    (25.0, 25.0, 0.999),
    (25.0, 16.0, -0.5),
    (25.0, 0.1, 0.5),
    (0.0, 2.0, 0.0),
]


def _erf_derivative(x: float) -> float:
    return 2.0 / math.sqrt(math.pi) * math.exp(-x * x)


CLOSED_FORM_FUNCTIONS = {
    "identity": (lambda x: x, lambda x: 1.0),
    "erf": (special.erf, _erf_derivative),
    "relu": (lambda x: max(x, 0.0), lambda x: 1.0 if x > 0 else 0.0),
}


def _fd_gradient(fun, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        xp, xm = x.clone(), x.clone()
        xp.view(-1)[i] += eps
        xm.view(-1)[i] -= eps
        grad.view(-1)[i] = (fun(xp) - fun(xm)) / (2.0 * eps)
    return grad


# ------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------


def test_closed_form_set_is_identity_erf_relu():
    assert ACTIVATIONS_WITH_CLOSED_FORM_KERNEL == {"identity", "erf", "relu"}


@pytest.mark.parametrize("activation", ["identity", "erf", "relu"])
@pytest.mark.parametrize("q1,q2,rho", CLOSED_FORM_COVARIANCES)
def test_closed_form_matches_nested_quadrature(activation, q1, q2, rho):
    c = rho * math.sqrt(q1 * q2)
    f, df = CLOSED_FORM_FUNCTIONS[activation]
    ess, edd = gaussian_pair_expectations(activation, q1, q2, c)
    ref_ss = nested_quad_expectation(f, f, q1, q2, c)
    ref_dd = nested_quad_expectation(df, df, q1, q2, c)
    assert ess.dtype == torch.float64 and edd.dtype == torch.float64
    assert ess.item() == pytest.approx(ref_ss, rel=1e-10, abs=1e-14)
    assert edd.item() == pytest.approx(ref_dd, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("activation", ["tanh", "gelu"])
@pytest.mark.parametrize("q1,q2,rho", QUADRATURE_COVARIANCES)
def test_quadrature_matches_brute_force_trapezoid(activation, q1, q2, rho):
    c = rho * math.sqrt(q1 * q2)
    f, df = QUADRATURE_FUNCTIONS[activation]
    ess, edd = gaussian_pair_expectations(activation, q1, q2, c)
    ref_ss = brute_force_trapezoid(f, f, q1, q2, c)
    ref_dd = brute_force_trapezoid(df, df, q1, q2, c)
    assert abs(ess.item() - ref_ss) <= 1e-12 * max(1.0, abs(ref_ss))
    assert abs(edd.item() - ref_dd) <= 1e-12 * max(1.0, abs(ref_dd))


@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_quadrature_converged_under_doubling_of_nodes(activation):
    q1 = torch.tensor([0.05, 0.5, 1.0, 1.0, 4.0, 9.0, 25.0, 25.0, 25.0, 0.0], dtype=torch.float64)
    q2 = torch.tensor([0.3, 1.5, 1.0, 1.0, 9.0, 1.0, 25.0, 16.0, 0.1, 2.0], dtype=torch.float64)
    rho = torch.tensor([0.5, 0.3, 0.99, 1.0, 0.7, -0.9, 0.999, -0.5, 0.5, 0.0], dtype=torch.float64)
    c = rho * torch.sqrt(q1 * q2)
    base = gaussian_pair_expectations(activation, q1, q2, c)
    fine = gaussian_pair_expectations(activation, q1, q2, c, refine=2.0)
    for coarse_value, fine_value in zip(base, fine):
        gap = (coarse_value - fine_value).abs() / fine_value.abs().clamp(min=1.0)
        assert gap.max().item() <= 1e-12


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_expectations_broadcast_their_arguments(activation):
    q1 = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    q2 = torch.tensor([1.0, 3.0, 0.7], dtype=torch.float64)
    c = 0.3 * torch.sqrt(q1 * q2)
    ess, edd = gaussian_pair_expectations(activation, q1, q2, c)
    assert ess.shape == (2, 3) and edd.shape == (2, 3)
    one_ss, one_dd = gaussian_pair_expectations(activation, 2.0, 0.7, c[1, 2].item())
    assert ess[1, 2].item() == pytest.approx(one_ss.item(), rel=1e-14, abs=1e-15)
    assert edd[1, 2].item() == pytest.approx(one_dd.item(), rel=1e-14, abs=1e-15)


# ------------------------------------------------------------------------------------------
# theta
# ------------------------------------------------------------------------------------------


def test_theta_identity_is_exactly_twice_the_normalised_dot_product():
    gen = torch.Generator().manual_seed(0)
    h = torch.randint(-4, 5, (4, 3), generator=gen).to(torch.float64)
    hp = torch.randint(-4, 5, (5, 3), generator=gen).to(torch.float64)
    assert torch.equal(theta("identity", h, hp), 2.0 * (h @ hp.T) / 3)
    h = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    hp = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    expected = 2.0 * (h @ hp.T) / 3
    torch.testing.assert_close(theta("identity", h, hp), expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_theta_is_symmetric_in_its_arguments(activation):
    gen = torch.Generator().manual_seed(1)
    h = 1.5 * torch.randn(4, 2, generator=gen, dtype=torch.float64)
    hp = torch.cat([h[:2], 1.5 * torch.randn(3, 2, generator=gen, dtype=torch.float64)])
    forward, backward = theta(activation, h, hp), theta(activation, hp, h).T
    assert forward.shape == (4, 5)
    torch.testing.assert_close(forward, backward, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_theta_matches_definition_from_pair_expectations(activation):
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)  # batch dim broadcasts
    hp = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    out = theta(activation, h, hp)
    assert out.shape == (2, 3, 5) and out.dtype == torch.float64
    q1 = (h * h).sum(-1)[..., None] / 4
    q2 = (hp * hp).sum(-1) / 4
    c = h @ hp.T / 4
    ess, edd = gaussian_pair_expectations(activation, q1, q2, c)
    torch.testing.assert_close(out, ess + edd * c, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_theta_gradient_wrt_both_arguments_matches_central_differences(activation):
    gen = torch.Generator().manual_seed(3)
    h = 1.3 * torch.randn(3, 3, generator=gen, dtype=torch.float64)
    # h' holds a copy of h[0] (diagonal h = h'), -h[1] and 2 h[2] (|c| = sqrt(q1 q2)), and two
    # generic vectors
    generic = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    hp = torch.cat([h[:1], -h[1:2], 2.0 * h[2:3], generic])
    weights = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    h_var, hp_var = h.clone().requires_grad_(), hp.clone().requires_grad_()
    loss = (theta(activation, h_var, hp_var) * weights).sum()
    grad_h, grad_hp = torch.autograd.grad(loss, (h_var, hp_var))
    fd_h = _fd_gradient(lambda x: (theta(activation, x, hp) * weights).sum(), h)
    fd_hp = _fd_gradient(lambda x: (theta(activation, h, x) * weights).sum(), hp)
    assert torch.isfinite(grad_h).all() and torch.isfinite(grad_hp).all()
    assert (grad_h - fd_h).abs().max() <= 1e-6 * fd_h.abs().max()
    assert (grad_hp - fd_hp).abs().max() <= 1e-6 * fd_hp.abs().max()


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_theta_gradient_on_the_diagonal_matches_central_differences(activation):
    # theta(h, h) with one tensor in both slots: the gradient flows through both arguments
    gen = torch.Generator().manual_seed(4)
    h = 1.2 * torch.randn(3, 2, generator=gen, dtype=torch.float64)
    weights = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    h_var = h.clone().requires_grad_()
    (grad,) = torch.autograd.grad((theta(activation, h_var, h_var) * weights).sum(), h_var)
    fd = _fd_gradient(lambda x: (theta(activation, x, x) * weights).sum(), h)
    assert torch.isfinite(grad).all()
    assert (grad - fd).abs().max() <= 1e-6 * fd.abs().max()


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_theta_gradient_is_finite_at_zero_input(activation):
    h = torch.tensor([[0.0, 0.0], [0.3, -1.0]], dtype=torch.float64, requires_grad=True)
    hp = torch.tensor([[0.0, 0.0], [1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    out = theta(activation, h, hp)
    grads = torch.autograd.grad(out.sum(), (h, hp))
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_quadrature_second_derivatives_by_price_theorem_pass_gradgradcheck(activation):
    args = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.7, 0.6, -0.8)]

    def fun(q1, q2, c):
        return gaussian_pair_expectations(activation, q1, q2, c)

    assert torch.autograd.gradcheck(
        fun, args, eps=1e-6, atol=1e-8, rtol=1e-6, check_forward_ad=True
    )
    assert torch.autograd.gradgradcheck(fun, args, eps=1e-6, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------


def test_unknown_activation_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="'softsign'"):
        gaussian_pair_expectations("softsign", 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="'softsign'"):
        ones = torch.ones(2, 3, dtype=torch.float64)
        theta("softsign", ones, ones)
