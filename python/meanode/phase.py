"""Phase diagram of the scaling family (SPEC §5) and the observables that need the trained weights.

SPEC §5 generalises the multiplier and the learning rate with exponents ``(a, b)``::

    h^l = h^{l-1} + alpha (L M)^(-a) sum_j phi(h^{l-1}; z_lj),      lam = eta kappa (L M)^b / alpha^2

(:class:`meanode.Scaling`). Each cell of an ``(a, b)`` grid is trained at several sizes
``L = M`` and every observable is fitted as a power of ``L M``; the cell is classified from the
*measured* exponents (with a margin), and the predicted boundaries are drawn on top.

Observables (per seed, all from the same networks):

* ``init_dev``     RMS of ``h^L - h^0`` at k = 0                 (scale counting: ``(LM)^(1/2 - a)``)
* ``out_change``   RMS of ``f_K - f_0``                            (``(LM)^min(0, b - 2a + 1)``)
* ``unit_movement`` ``|z_K - z_0| / |z_0|`` (Frobenius, all units)  (``(LM)^(b - a)``)
* ``lin_dist``     RMS distance between the outputs after K steps of the network and of its own
  linearisation at initialisation trained by the same GD (``f_0 + J (z - z_0)``, J the Jacobian
  of the outputs at ``z_0``); the second-order Taylor term predicts ``(LM)^(1 + 2b - 3a)``
  (0 at MLU, negative in the lazy and trivial regimes).
* ``preact_move``  RMS over units, samples and layers of ``(u_K - u_0) . h^{l-1}_0(x_n) / D``: how
  far the pre-activations of the units move (used for the residual-scale experiment).

The trained weights come from :func:`meanode.train_resnet` (``return_weights=True``), so a
seed counts as diverged by the one rule of the trainer (:func:`meanode.resnet.diverged`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .blocks import TwoLayerBlock
from .resnet import MLU, Scaling, resnet_gradient, train_resnet

__all__ = ["network_outputs", "output_jvp", "linearised_outputs", "extra_observables",
           "REGIMES", "REGIME_COLOURS", "predicted_regime", "predicted_exponents", "classify",
           "OBSERVABLES"]

#: Observables fitted per cell, in table order.
OBSERVABLES = ("init_dev", "out_change", "unit_movement", "lin_dist")

#: Regime labels (SPEC §5) and their colours in the phase figure.
REGIMES = ("unstable init (a<1/2)", "noisy init (a=1/2)", "diverges", "trivial (frozen)", "lazy ODE", "MLU",
           "over-updated")
REGIME_COLOURS = {
    "unstable init (a<1/2)": "#b2182b",
    "noisy init (a=1/2)": "#ef8a62",
    "diverges": "#7f0000",
    "trivial (frozen)": "#bdbdbd",
    "lazy ODE": "#67a9cf",
    "MLU": "#1a9850",
    "over-updated": "#fdb863",
    "unclassified": "#ffffff",
}


def _tensor(x, dtype=torch.float64):
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype)


def network_outputs(z: torch.Tensor, X: torch.Tensor, W_E: torch.Tensor, W_U: torch.Tensor, c: float,
                    block: TwoLayerBlock, return_hidden: bool = False):
    """Forward pass of E networks ``z (E, L, M, 2D)``: outputs ``f (E, n, d_out)`` (and every
    ``h^{l}``, l = 0..L-1, stacked ``(L, E, n, D)`` when ``return_hidden``). Differentiable."""
    E, L = z.shape[0], z.shape[1]
    D = W_E.shape[0]
    h = (X @ W_E.T).expand(E, -1, -1)
    hs = []
    for l in range(L):
        if return_hidden:
            hs.append(h)
        h = h + c * block.drift(h, z[:, l], 1.0)
    f = h @ W_U / D
    return (f, torch.stack(hs)) if return_hidden else f


def linearised_outputs(X, Y, W_E, W_U, z0: torch.Tensor, *, alpha: float, eta: float, steps: int,
                       activation: str = "tanh", scaling: Scaling = MLU) -> torch.Tensor:
    """Outputs on ``X`` after ``steps`` GD steps on the network linearised at ``z0``.

    ``f_lin(z) = f(z0) + J (z - z0)``; GD on ``R = |f_lin - Y|^2 / (2N)`` with the same rate, i.e.
    ``dz <- dz - lam J^T (f_lin - Y) / N``. Returns ``f_lin (E, N, d_out)`` after the last step.
    """
    X, Y, W_E, W_U = (_tensor(a) for a in (X, Y, W_E, W_U))
    E, L, M, _ = z0.shape
    D = W_E.shape[0]
    block = TwoLayerBlock(D, activation)
    c = scaling.multiplier(alpha, L, M)
    lam = scaling.learning_rate(eta, alpha, L, M, block.kappa)

    with torch.no_grad():
        f0 = network_outputs(z0, X, W_E, W_U, c, block)
    dz = torch.zeros_like(z0)
    f = f0
    for _ in range(steps):
        # J^T (f - Y) / N by the hand-written adjoint: resnet_gradient at z0 with targets
        # Y' = f0 - (f - Y) has the residual f0 - Y' = f - Y.
        _, g = resnet_gradient(X, f0 - (f - Y), W_E, W_U, z0, alpha=alpha, block=block, scaling=scaling)
        dz = dz - lam * g
        f = f0 + output_jvp(z0, dz, X, W_E, W_U, c, block)
    return f


def output_jvp(z: torch.Tensor, dz: torch.Tensor, X, W_E, W_U, c: float, block: TwoLayerBlock) -> torch.Tensor:
    """Forward-mode derivative ``J(z) dz`` of the outputs ``(E, n, d_out)`` (2LP block, by hand:
    ``a = h u^T / D``, ``dh' = dh + c [(sigma'(a) da) v + sigma(a) dv]``, ``da = (dh u^T + h du^T) / D``)."""
    E, L = z.shape[0], z.shape[1]
    D = W_E.shape[0]
    act = block.act
    h = (X @ W_E.T).expand(E, -1, -1)
    dh = torch.zeros_like(h)
    for l in range(L):
        u, v = z[:, l, :, :D], z[:, l, :, D:]
        du, dv = dz[:, l, :, :D], dz[:, l, :, D:]
        a = h @ u.transpose(1, 2) / D
        da = (dh @ u.transpose(1, 2) + h @ du.transpose(1, 2)) / D
        s = act.sigma(a)
        dh = dh + c * ((act.dsigma(a) * da) @ v + s @ dv)
        h = h + c * (s @ v)
    return dh @ W_U / D


def extra_observables(X, Y, W_E, W_U, *, L: int, M: int, alpha: float, eta: float, steps: int,
                      activation: str = "tanh", seeds=(0,), scaling: Scaling = MLU, linearisation: bool = True,
                      preactivation: bool = True, divergence_threshold: float = 1e6) -> dict[str, np.ndarray]:
    """``lin_dist`` and/or ``preact_move`` per seed (E,) (see the module docstring); NaN for a
    seed that diverged (never zero)."""
    torch_arrays = [_tensor(a) for a in (X, Y, W_E, W_U)]
    Xt, Yt, WEt, WUt = torch_arrays
    D = WEt.shape[0]
    block = TwoLayerBlock(D, activation)
    res = train_resnet(Xt, Yt, WEt, WUt, L=L, M=M, alpha=alpha, eta=eta, steps=steps, activation=activation,
                       seeds=seeds, scaling=scaling, divergence_threshold=divergence_threshold, return_weights=True)
    z0, zK, ok = res.z0, res.zK, ~res.diverged
    c = scaling.multiplier(alpha, L, M)
    out: dict[str, np.ndarray] = {}
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    with torch.no_grad():
        if preactivation:
            _, hs = network_outputs(z0, Xt, WEt, WUt, c, block, return_hidden=True)  # (L, E, N, D)
            du = (zK - z0)[..., :D]  # (E, L, M, D)
            da = torch.einsum("lend,elmd->elnm", hs, du) / D
            pm = da.pow(2).mean(dim=(1, 2, 3)).sqrt()
            out["preact_move"] = torch.where(torch.as_tensor(ok), pm, nan).numpy()
    if linearisation:
        f_lin = linearised_outputs(Xt, Yt, WEt, WUt, z0, alpha=alpha, eta=eta, steps=steps, activation=activation,
                                   scaling=scaling)
        with torch.no_grad():
            zs = torch.where(torch.as_tensor(ok)[:, None, None, None], zK, z0)
            f_net = network_outputs(zs, Xt, WEt, WUt, c, block)
            d = (f_net - f_lin.detach()).pow(2).mean(dim=(1, 2)).sqrt()
            ok_lin = torch.as_tensor(ok) & torch.isfinite(d)
            out["lin_dist"] = torch.where(ok_lin, d, nan).numpy()
    return out


# --- predictions and classification ----------------------------------------------------------

def _eq(x: float, y: float, tol: float = 1e-9) -> bool:
    return abs(x - y) <= tol


def predicted_regime(a: float, b: float) -> str:
    """The regime scale counting predicts for ``(a, b)`` (SPEC §5)."""
    if a < 0.5 - 1e-9:
        return "unstable init (a<1/2)"
    if _eq(a, 0.5):
        return "noisy init (a=1/2)"
    crit = 2 * a - 1
    if b < crit - 1e-9:
        return "trivial (frozen)"
    if b > crit + 1e-9:
        return "diverges"
    if a < 1 - 1e-9:
        return "lazy ODE"
    if _eq(a, 1.0):
        return "MLU"
    return "over-updated"


def predicted_exponents(a: float, b: float) -> dict[str, float]:
    """Scale-counting exponents vs ``L M`` of the observables (module docstring); ``nan`` where
    scale counting says nothing useful (a diverging cell)."""
    grow = b - 2 * a + 1
    out = {
        "init_dev": 0.5 - a,
        "out_change": min(0.0, grow) if grow <= 1e-9 else float("nan"),
        "unit_movement": b - a,
        "lin_dist": 1 + 2 * b - 3 * a if grow <= 1e-9 else float("nan"),
    }
    return out


@dataclass(frozen=True)
class Classification:
    regime: str
    reason: str


def classify(exponents: dict[str, float], diverged_fraction: float, margin: float = 0.15,
             init_level: float | None = None) -> Classification:
    """Classify a cell from its measured exponents vs ``L M`` (SPEC §5), with a ``margin``.

    Order: a growing init deviation (exponent > margin) -> unstable init; a flat one
    (|exponent| <= margin, level ``init_level`` not small) -> noisy init; any diverged seed or a
    growing output change -> diverges; a shrinking output change (< -margin) -> trivial; then by
    the unit movement exponent: < -margin lazy, > +margin over-updated, else MLU.
    """
    e_init = exponents.get("init_dev", float("nan"))
    e_out = exponents.get("out_change", float("nan"))
    e_mov = exponents.get("unit_movement", float("nan"))
    if math.isfinite(e_init) and e_init > margin:
        return Classification("unstable init (a<1/2)", f"init deviation exponent {e_init:+.2f} > {margin}")
    if math.isfinite(e_init) and abs(e_init) <= margin and (init_level is None or init_level > 0.05):
        return Classification("noisy init (a=1/2)", f"init deviation exponent {e_init:+.2f} ~ 0")
    if diverged_fraction > 0:
        return Classification("diverges", f"{diverged_fraction:.0%} of the runs diverged")
    if not math.isfinite(e_out):
        return Classification("unclassified", "output change exponent not measurable")
    if e_out > margin:
        return Classification("diverges", f"output change exponent {e_out:+.2f} > {margin}")
    if e_out < -margin:
        return Classification("trivial (frozen)", f"output change exponent {e_out:+.2f} < -{margin}")
    if not math.isfinite(e_mov):
        return Classification("unclassified", "unit movement exponent not measurable")
    if e_mov < -margin:
        return Classification("lazy ODE", f"unit movement exponent {e_mov:+.2f} < -{margin}")
    if e_mov > margin:
        return Classification("over-updated", f"unit movement exponent {e_mov:+.2f} > {margin}")
    return Classification("MLU", f"output change {e_out:+.2f}, unit movement {e_mov:+.2f} ~ 0")
