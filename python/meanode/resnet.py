"""The finite ResNet (SPEC §1, §2, §5): batched seed ensembles, hand-written adjoint, full-batch GD.

Forward, layer l = 1..L, for E seeds at once (one batched product per layer):

    h^l = h^{l-1} + c * sum_j phi(h^{l-1}; z_{lj}),         c = alpha * (L M)^(-a)
    f   = W_U^T h^L / D,     R = (1/N) sum_n |f(x_n) - y_n|^2 / 2

Backward is the exact discrete adjoint (SPEC §1), ``b^l = dR/dh^l``:

    b^L = (1/N) W_U (f - y) / D,     b^{l-1} = b^l + c * sum_j d_h phi(h^{l-1}; z_{lj})^T b^l
    dR/dz_{lj} = c * sum_n d_z phi(h^{l-1}_n; z_{lj})^T b^l_n

and GD is ``z <- z - lam * dR/dz`` with ``lam = eta * kappa * (L M)^b / alpha^2``. The maximal
local update scaling (a, b) = (1, 1) gives SPEC §1 exactly: ``c = alpha/(L M)`` and
``lam = eta L M D / alpha^2``. The ``1/alpha^2`` is kept for every (a, b) so that alpha only
rescales the MLU point; with alpha = 1 this is SPEC §5's ``lam = eta D (L M)^b``.

Each layer's update is applied as soon as its gradient is known (the gradient of layer l
needs only ``h^{l-1}``, stored in the forward pass, and ``b^l``), so the backward pass reads
the weights once and no gradient buffer is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ._checks import (all_finite, check_problem, check_seeds, nonnegative_int, positive_float, positive_int, real,
                      resolve_device, resolve_dtype, warn_outside_regime)
from . import _trainer_2lp
from .blocks import Block, TwoLayerBlock, check_block
from .readout import readout, readout_adjoint

__all__ = ["Scaling", "MLU", "TrainResult", "train_resnet", "init_weights", "resnet_gradient", "diverged"]


def diverged(loss: torch.Tensor, hL: torch.Tensor, threshold: float) -> torch.Tensor:
    """The divergence rule of every trainer path (SPEC §7): per member, True when the loss
    ``(E,)`` or the last hidden state ``hL (E, n, D)`` is non-finite, or the RMS per coordinate
    of ``hL`` exceeds ``threshold``."""
    rms = hL.pow(2).mean(dim=tuple(range(1, hL.dim()))).sqrt()
    return ~(torch.isfinite(loss) & torch.isfinite(rms) & (rms <= threshold))


@dataclass(frozen=True)
class Scaling:
    """Exponents of SPEC §5: multiplier ``alpha (L M)^-a``, rate ``eta kappa (L M)^b / alpha^2``."""

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self) -> None:
        real("Scaling.a", self.a)
        real("Scaling.b", self.b)

    def multiplier(self, alpha: float, L: int, M: int) -> float:
        return alpha * float(L * M) ** (-self.a)

    def learning_rate(self, eta: float, alpha: float, L: int, M: int, kappa: float) -> float:
        """``eta kappa (L M)^b / alpha^2``; a ValueError naming alpha when that is not a finite number."""
        a2 = alpha * alpha
        rate = eta * kappa * float(L * M) ** self.b / a2 if a2 > 0 else math.inf
        if not math.isfinite(rate):
            raise ValueError(f"alpha = {alpha:g} gives the learning rate eta kappa (L M)^b / alpha^2 = {rate}: "
                             "not a finite number (alpha too small for float64)")
        return rate


MLU = Scaling(1.0, 1.0)


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What :func:`train_resnet` records, as numpy arrays (E = number of seeds).

    Step ``k = 0..K`` is recorded *before* the k-th update (k = 0 is the initialisation).

    f:        (E, K+1, N, d_out) outputs on the training inputs
    h:        (E, K+1, N, D)     last hidden state ``h^L`` ((E, K+1, N, T, D) for a sequence block)
    loss:     (E, K+1)           ``R`` on the training set
    f_eval, h_eval: the same on held-out inputs ``X_eval`` (None without them)
    hidden:   (E, K+1, L+1, N, D) every ``h^l`` when ``record_hidden=True`` (else None)
    unit_movement: (E,) ``|z_K - z_0| / |z_0|`` over all units (Frobenius norms)
    diverged: (E,) bool;  diverged_step: (E,) the step k where it was detected, -1 if never.
        A diverged seed stops training; its records after that step are NaN (never zeroed).
        The rule (:func:`diverged`): the loss or ``h^L`` is non-finite, or the RMS per
        coordinate of ``h^L`` exceeds ``divergence_threshold``; it is checked after every update,
        the last one included (step K).
    z0, zK: (E, L, M, dz) float64 tensors, the units at initialisation and after the last update
        (``return_weights=True``; else None). A diverged seed's ``zK`` is NaN.
    """

    f: np.ndarray
    h: np.ndarray
    loss: np.ndarray
    f_eval: np.ndarray | None
    h_eval: np.ndarray | None
    hidden: np.ndarray | None
    unit_movement: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray
    seeds: tuple[int, ...]
    config: dict = field(default_factory=dict)
    wall_time: float = 0.0
    z0: torch.Tensor | None = None
    zK: torch.Tensor | None = None


def init_weights(block: Block, L: int, M: int, seeds: Sequence[int], dtype=torch.float64,
                 device="cpu") -> torch.Tensor:
    """Initial units ``z (E, L, M, dz)``: seed s draws ``block.sample((L, M))`` from
    ``torch.Generator().manual_seed(s)`` on the CPU (so every device sees the same weights).

    For the 2LP block ``z = sqrt(D) * randn(L, M, 2D)``, ``u = z[..., :D]``, ``v = z[..., D:]``.
    """
    zs = [block.sample((L, M), torch.Generator().manual_seed(int(s)), torch.float64, "cpu") for s in seeds]
    return torch.stack(zs).to(dtype=dtype, device=device)


def _init_from_arrays(init, block: Block, E: int, L: int, M: int, dtype, device) -> tuple[torch.Tensor, ...]:
    """Accept ``init = (U, V)`` for the 2LP block (each ``(E, L, M, D)``) or ``z (E, L, M, dz)``.

    Returns the parts as given, ``(U, V)`` or ``(z,)`` (converted to ``dtype``/``device``, so the
    caller's tensors themselves when they already match: never written to, the kernel trains on
    its own copy), whose last axes, concatenated, are the units ``z``."""
    if isinstance(init, (tuple, list)):
        if not isinstance(block, TwoLayerBlock) or len(init) != 2:
            raise ValueError("init=(U, V) is for the 2LP block; pass z of shape (E, L, M, dz) otherwise")
        items, shape = tuple(zip(("init[0] (U)", "init[1] (V)"), init)), (E, L, M, block.D)
    else:
        items, shape = (("init", init),), (E, L, M, block.dz)
    parts = []
    for name, arr in items:
        t = torch.as_tensor(np.asarray(arr, dtype=np.float64) if not isinstance(arr, torch.Tensor) else arr)
        if tuple(t.shape) != shape:
            label = "(E, L, M, D)" if len(items) == 2 else "(E, L, M, dz)"
            raise ValueError(f"{name} must have shape {label} = {shape}, got {tuple(t.shape)}")
        t = t.detach().to(dtype=dtype, device=device)
        if not all_finite(t):
            raise ValueError("init contains non-finite values")
        parts.append(t)
    return tuple(parts)


def _columns(parts: Sequence[torch.Tensor], lo: int, hi: int) -> torch.Tensor:
    """Units ``z[..., lo:hi]`` of ``z`` given as ``parts`` split along the last axis: a view when
    the columns lie in one part (always, for the splits the kernels use)."""
    start = 0
    for p in parts:
        width = p.shape[-1]
        if start <= lo and hi <= start + width:
            return p[..., lo - start:hi - start]
        start += width
    return torch.cat(tuple(parts), dim=-1)[..., lo:hi]


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` that never shares its storage (``.contiguous()`` may return ``t``)."""
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def _chunked_sq_norm(pairs, L: int) -> torch.Tensor:
    """``sum over pairs (a, b) of |a - b|^2`` per member (``b`` None: ``|a|^2``), for tensors
    ``(L, E, ...)``, returned as ``(E,)``.

    Each member is reduced on its own, a few layers at a time, through one reused contiguous buffer
    of at most ~1 M entries (a fresh 1.6 GB difference would cost more than the training steps at
    wide shapes). The buffer's shape depends on the member's size only, never on ``E``, so a member
    gets the same bits whether it is trained alone or with others (sweeps split seeds into chunks
    by memory and must give the same numbers; a reduction over ``(L, E, ...)`` with ``E`` in the
    middle is summed in an order that depends on ``E`` and on the CPU's vector width).
    """
    total, buf = None, None
    for a, b in pairs:
        per = max(1, a[0, 0].numel())
        step = max(1, min(L, 1_000_000 // per))
        if buf is None or buf.dtype != a.dtype or buf.device != a.device or buf.shape != (step, *a.shape[2:]):
            buf = torch.empty((step, *a.shape[2:]), dtype=a.dtype, device=a.device)
        part = torch.zeros(a.shape[1], dtype=a.dtype, device=a.device)
        for e in range(a.shape[1]):
            for l0 in range(0, L, step):
                n = min(step, L - l0)
                out = buf[:n]
                if b is None:
                    out.copy_(a[l0:l0 + n, e])
                else:
                    torch.sub(a[l0:l0 + n, e], b[l0:l0 + n, e], out=out)
                part[e] += out.square_().sum()
        total = part if total is None else total + part
    return total


class _GenericKernel:
    """Training loops for any :class:`Block`: units ``z (L, E, M, dz)``, one slab per layer."""

    def __init__(self, block: Block, z: torch.Tensor):
        """``z (L, E, M, dz)``, any strides: the kernel trains its own contiguous copy."""
        self.block = block
        self.params = (_own(z),)
        self.splits = ((0, block.dz),)  # the columns of z each param holds

    def units(self) -> torch.Tensor:
        return self.params[0]

    def forward(self, c: float, h0: torch.Tensor, hs: torch.Tensor) -> None:
        """Fill ``hs (L+1, E, n, D)`` with ``h^0..h^L``."""
        z = self.params[0]
        hs[0] = h0
        for l in range(z.shape[0]):
            _axpy(hs[l], self.block.drift(hs[l], z[l], 1.0), c, out=hs[l + 1])

    def backward(self, c: float, hs: torch.Tensor, b: torch.Tensor, N: int, step, target) -> None:
        """Exact discrete adjoint from ``b = b^L (E, N, D)`` down to layer 1.

        For each layer l (0-based, L-1..0) adds ``step * g_l`` to ``target[0][l]``, with
        ``g_l = sum_n d_z phi(h^l_n; z_l)^T b^{l+1}_n`` (so ``dR/dz_l = c g_l``), after ``z_l``
        has been used for ``b^l``: ``target = self.params`` updates in place.
        """
        z, (tz,) = self.params[0], target
        for l in range(z.shape[0] - 1, -1, -1):
            v_h, grad_z = self.block.vjp(hs[l][:, :N], z[l], 1.0, b)
            b = _axpy(b, v_h, c)
            _accumulate(tz[l], grad_z, step)


class _TwoLayerKernel(_GenericKernel):
    """The 2LP block in torch (any device; the CPU fallback of the compiled kernel in
    :mod:`meanode._trainer_2lp`): ``U, V (L, E, M, D)`` stored apart, pre-activations and
    ``sigma`` kept from the forward pass; 2 batched products per layer forward, 4 backward,
    each layer's update applied in place as a rank-N ``baddbmm_`` (no gradient buffer) when
    ``c`` and ``step`` are floats. A per-member ``step`` (``(E, 1, 1)``: alphas per member, or
    a stopped member) goes through an ``(E, M, D)`` product first, rounded exactly as the
    float path, so that a member trains bit for bit as it would alone."""

    def __init__(self, block: TwoLayerBlock, U: torch.Tensor, V: torch.Tensor):
        """``U, V (L, E, M, D)``, any strides: the kernel trains its own contiguous copies."""
        self.block = block
        self.params = (_own(U), _own(V))
        self.splits = ((0, block.D), (block.D, 2 * block.D))
        self._a = self._s = None

    def units(self) -> torch.Tensor:
        return torch.cat(self.params, dim=-1)

    def forward(self, c, h0, hs):
        U, V = self.params
        L, E, M, D = U.shape
        n = hs.shape[2]
        if self._a is None or self._a.shape[2] != n:
            self._a = torch.empty(L, E, n, M, dtype=U.dtype, device=U.device)
            self._s = torch.empty_like(self._a)
        A, S, sigma = self._a, self._s, self.block.act.sigma
        hs[0] = h0
        for l in range(L):
            torch.baddbmm(A[l], hs[l], U[l].transpose(1, 2), beta=0.0, alpha=1.0 / D, out=A[l])
            S[l] = sigma(A[l])
            if isinstance(c, float):
                torch.baddbmm(hs[l], S[l], V[l], alpha=c, out=hs[l + 1])
            else:
                torch.addcmul(hs[l], c, torch.bmm(S[l], V[l]), out=hs[l + 1])

    def backward(self, c, hs, b, N, step, target):
        U, V = self.params
        tU, tV = target
        L, E, M, D = U.shape
        A, S = self._a[:, :, :N], self._s[:, :, :N]
        act = self.block.act
        SP = act.dsigma_of_sigma(S) if act.dsigma_of_sigma is not None else act.dsigma(A)
        scalar = isinstance(step, float) and isinstance(c, float)
        for l in range(L - 1, -1, -1):
            g = torch.bmm(b, V[l].transpose(1, 2)).mul_(SP[l])  # sigma'(a) (v . b): (E, N, M)
            h_prev = hs[l][:, :N]
            if scalar:
                tV[l].baddbmm_(S[l].transpose(1, 2), b, alpha=step)
                b = torch.baddbmm(b, g, U[l], alpha=c / D)
                tU[l].baddbmm_(g.transpose(1, 2), h_prev, alpha=step / D)
            else:  # per-member c or step (E, 1, 1): rounded as the float path, so a member's
                # trajectory does not depend on the others (the divergence mask relies on it)
                _accumulate(tV[l], torch.bmm(S[l].transpose(1, 2), b), step)
                b = _axpy(b, torch.bmm(g, U[l]), c / D)
                _accumulate(tU[l], torch.bmm(g.transpose(1, 2), h_prev), step / D)


def _axpy(x: torch.Tensor, y: torch.Tensor, c, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x + c y`` with ``c`` a float or a per-member ``(E, 1, 1)`` tensor."""
    if isinstance(c, float):
        return torch.add(x, y, alpha=c, out=out)
    return torch.addcmul(x, c, y, out=out)


def _accumulate(target: torch.Tensor, g: torch.Tensor, step) -> None:
    """``target += step * g``; ``step`` a float or a per-seed ``(E, 1, 1)`` tensor."""
    if isinstance(step, float):
        target.add_(g, alpha=step)
    else:
        target.add_(g * step)


def _alphas(alpha, E: int) -> tuple[float, ...]:
    """``alpha`` as one positive value per ensemble member."""
    if isinstance(alpha, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(alpha, str):
        vals = tuple(positive_float(f"alpha[{i}]", float(a)) for i, a in enumerate(alpha))
        if len(vals) != E:
            raise ValueError(f"alpha has {len(vals)} values but there are {E} seeds (one alpha per member)")
        return vals
    return (positive_float("alpha", alpha),) * E


def _scalar_or_list(x):
    return x if isinstance(x, float) else x.reshape(-1).tolist()


# Units per layer (M * D) from which the torch 2LP kernel (MKL GEMMs) beats the compiled loops,
# one thread, K = 15, N = 10 (benchmarks/bench_trainer.py, 2026-12-02): at (2, 50, 1000, 1000)
# 14.8 s against 21.7 s; below M * D ~ 1.6e5 the compiled loops took 0.49-0.95 of the torch
# kernel's time, from there on the two were within ~5 % (ratios 0.95-1.06, K = 5).
TORCH_KERNEL_FROM_MD = 250_000


def _kernel(block: Block, z):
    """The training loops for ``block`` on units ``z (L, E, M, dz)`` (a tensor, or a tuple of
    tensors whose last axes concatenate to ``z``; any strides, never written to: the kernel
    copies them once into its own layout): for the built-in 2LP block the compiled kernel
    (numba, CPU) where it can run and ``M D < TORCH_KERNEL_FROM_MD``, else the torch 2LP kernel;
    any other block the generic one."""
    parts = (z,) if isinstance(z, torch.Tensor) else tuple(z)
    if type(block) is not TwoLayerBlock:
        return _GenericKernel(block, _columns(parts, 0, block.dz))
    U, V = _columns(parts, 0, block.D), _columns(parts, block.D, 2 * block.D)
    if U.shape[2] * block.D < TORCH_KERNEL_FROM_MD and _trainer_2lp.usable(block, U):
        return _trainer_2lp.NumbaTwoLayerKernel(block, U, V)
    return _TwoLayerKernel(block, U, V)


def resnet_gradient(X, Y, W_E, W_U, z: torch.Tensor, *, alpha: float, block: Block,
                    scaling: Scaling = MLU) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss ``R (E,)`` and its gradient ``dR/dz (E, L, M, dz)`` by the hand-written adjoint.

    ``z (E, L, M, dz)`` and the arrays are tensors of one dtype/device; ``X (N, d_in)``, or
    ``X (N, T, d_in)`` for a sequence block. Used to check the adjoint against autograd;
    training runs the same kernel.
    """
    E, L, M, _ = z.shape
    c = scaling.multiplier(alpha, L, M)
    seq = block.sequence
    if X.dim() != (3 if seq else 2):
        raise ValueError(f"X must have shape {'(N, T, d_in)' if seq else '(N, d_in)'} for {block!r}, got {tuple(X.shape)}")
    N, D = X.shape[0], W_E.shape[0]
    kernel = _kernel(block, z.transpose(0, 1))
    hs = torch.empty(L + 1, E, *X.shape[:-1], D, dtype=z.dtype, device=z.device)
    kernel.forward(c, (X @ W_E.T).expand(E, *X.shape[:-1], D), hs)
    r = readout(hs[L], W_U, seq) - Y
    grads = tuple(torch.zeros_like(p) for p in kernel.params)
    kernel.backward(c, hs, readout_adjoint(r, W_U, N, X.shape[1] if seq else None), N, c, grads)
    grad = grads[0] if len(grads) == 1 else torch.cat(grads, dim=-1)
    return 0.5 * r.pow(2).sum(dim=(1, 2)) / N, grad.transpose(0, 1)


def train_resnet(X, Y, W_E, W_U, *, L: int, M: int, alpha: float | Sequence[float], eta: float, steps: int,
                 activation: str = "tanh", seeds: Sequence[int] = (0,), init=None, device="cpu",
                 dtype: torch.dtype = torch.float64, block: Block | None = None,
                 scaling: Scaling = MLU, X_eval=None, record_hidden: bool = False,
                 divergence_threshold: float = 1e6, return_weights: bool = False) -> TrainResult:
    """Train E = len(seeds) finite ResNets at once by full-batch GD (SPEC §1) for ``steps`` steps.

    Arguments:
        X (N, d_in), Y (N, d_out), W_E (D, d_in), W_U (D, d_out): numpy arrays or tensors
            (tensors must already have ``dtype`` and ``device``). A sequence block
            (``block.sequence``, e.g. :class:`~meanode.AttentionHeadBlock`) takes ``X (N, T, d_in)``,
            embeds it token-wise and reads out ``f = W_U^T pool(h^L) / D`` (mean over tokens,
            :mod:`meanode.readout`).
        L, M: depth and units per layer. eta: normalised learning rate.
        alpha: residual scale; a sequence of E values gives each ensemble member its own alpha
            (member e: seed ``seeds[e]``, alpha ``alpha[e]``), so alpha sweeps batch like seeds.
        steps: K, the number of GD steps; records hold K+1 entries.
        activation: sigma of the 2LP block (ignored when ``block`` is given).
        seeds: one weight seed per ensemble member (see :func:`init_weights`).
        init: initial units instead of seeds: ``(U, V)`` each (E, L, M, D) for 2LP, or
            ``z`` (E, L, M, dz); ``seeds`` then only labels the members.
        block: any :class:`~meanode.blocks.Block` (default: 2LP with ``activation``).
        scaling: exponents (a, b) of SPEC §5 (default MLU).
        X_eval (N_eval, d_in) (sequence: (N_eval, T, d_in), the same T): held-out inputs,
            recorded but not trained on.
        record_hidden: also record every ``h^l``.
        divergence_threshold: a seed whose loss or ``h^L`` is non-finite, or whose RMS
            per coordinate of ``h^L`` exceeds this, is marked diverged at that step and stops.
        return_weights: also return the initial and final units ``z0``, ``zK`` (E, L, M, dz).

    Returns a :class:`TrainResult`.
    """
    t0 = time.perf_counter()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    L = positive_int("L", L)
    M = positive_int("M", M)
    K = nonnegative_int("steps", steps)
    eta = positive_float("eta", eta, allow_zero=True)
    divergence_threshold = positive_float("divergence_threshold", divergence_threshold)
    if not isinstance(scaling, Scaling):
        raise TypeError(f"scaling must be a meanode.Scaling, got {type(scaling).__name__}")
    seq = block is not None and getattr(block, "sequence", False) is True
    X, Y, W_E, W_U, X_eval = check_problem(X, Y, W_E, W_U, X_eval, dtype, device, sequence=seq)
    D, N = W_E.shape[0], X.shape[0]
    block = TwoLayerBlock(D, activation) if block is None else check_block(block, D)
    T = X.shape[1] if seq else None
    warn_outside_regime(D, L, M)
    seeds = check_seeds(seeds, allow_repeats=True)
    E = len(seeds)
    alphas = _alphas(alpha, E)
    if len(set(zip(seeds, alphas))) != E:  # a repeated seed is a repeated network unless its alpha differs
        dup = sorted({s for s, a in zip(seeds, alphas) if list(zip(seeds, alphas)).count((s, a)) > 1})
        raise ValueError(f"seeds repeats seeds {dup} with the same alpha: each member of an ensemble needs its own "
                         "seed (or its own alpha, for an alpha sweep)")

    if init is None:
        parts = (init_weights(block, L, M, seeds, dtype, device),)
    else:
        parts = _init_from_arrays(init, block, E, L, M, dtype, device)
    # the initial units stay in ``parts`` (E, L, M, *), untouched; the kernel copies them once
    # into its own layout and trains that copy in place (no other pass over the units)
    parts_l = tuple(p.transpose(0, 1) for p in parts)  # (L, E, M, *) views
    kernel = _kernel(block, parts_l)
    z0_sq = _chunked_sq_norm(((p, None) for p in parts_l), L)

    if len(set(alphas)) == 1:
        c = scaling.multiplier(alphas[0], L, M)
        lam = scaling.learning_rate(eta, alphas[0], L, M, block.kappa)
    else:  # one value per member, broadcast over (E, n, *)
        c = torch.tensor([scaling.multiplier(a, L, M) for a in alphas], dtype=dtype,
                         device=device).reshape(E, *(1,) * (X.dim() if seq else 2))  # over (E, n, [T,] D)
        lam = torch.tensor([scaling.learning_rate(eta, a, L, M, block.kappa) for a in alphas], dtype=dtype,
                           device=device).reshape(E, 1, 1)

    X_all = X if X_eval is None else torch.cat([X, X_eval])
    n_all = X_all.shape[0]
    h0 = (X_all @ W_E.T).expand(E, *X_all.shape[:-1], D)  # (E, n, [T,] D)
    hs = torch.empty(L + 1, *h0.shape, dtype=dtype, device=device)

    f_rec = torch.full((E, K + 1, n_all, W_U.shape[1]), float("nan"), dtype=dtype, device=device)
    h_rec = torch.full((E, K + 1, *h0.shape[1:]), float("nan"), dtype=dtype, device=device)
    loss_rec = torch.full((E, K + 1), float("nan"), dtype=dtype, device=device)
    hidden_rec = (torch.full((E, K + 1, L + 1, *h0.shape[1:]), float("nan"), dtype=dtype, device=device)
                  if record_hidden else None)
    active = torch.ones(E, dtype=torch.bool, device=device)
    diverged_step = torch.full((E,), -1, dtype=torch.long, device=device)

    for k in range(K + 1):
        kernel.forward(c, h0, hs)
        hL = hs[L]
        f = readout(hL, W_U, seq)  # (E, n_all, d_out)
        r = f[:, :N] - Y
        loss = 0.5 * r.pow(2).sum(dim=(1, 2)) / N
        bad = active & diverged(loss, hL, divergence_threshold)
        diverged_step[bad] = k
        rec = active.clone()  # the diverging step itself is recorded, as it is
        active &= ~bad
        f_rec[rec, k] = f[rec]
        h_rec[rec, k] = hL[rec]
        loss_rec[rec, k] = loss[rec]
        if record_hidden:
            hidden_rec[rec, k] = hs.transpose(0, 1)[rec]
        if k == K or not bool(active.any()):
            break
        # backward: exact discrete adjoint, updating each layer as soon as its gradient is known
        step = -lam * (c if isinstance(c, float) else c.reshape(E, 1, 1))  # over units (E, M, dz)
        if not bool(active.all()):
            step = step * active.to(dtype).reshape(E, 1, 1)
        kernel.backward(c, hs, readout_adjoint(r, W_U, N, T), N, step, kernel.params)

    moved_sq = _chunked_sq_norm(((p, _columns(parts_l, lo, hi)) for p, (lo, hi) in zip(kernel.params, kernel.splits)), L)
    movement = (moved_sq / z0_sq).sqrt()
    weights = {}
    if return_weights:  # (E, L, M, dz) float64 on the CPU; a diverged member's final units are NaN
        zK = kernel.units()
        bad = (diverged_step >= 0).reshape(1, E, 1, 1)
        z0 = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0] if init is None else parts[0].clone()
        weights = dict(z0=z0.to(torch.float64).cpu(),
                       zK=torch.where(bad, torch.full_like(zK, float("nan")), zK).transpose(0, 1).to(torch.float64).cpu())
    f_np = f_rec.cpu().numpy()
    h_np = h_rec.cpu().numpy()
    return TrainResult(
        f=f_np[:, :, :N], h=h_np[:, :, :N], loss=loss_rec.cpu().numpy(),
        f_eval=f_np[:, :, N:] if X_eval is not None else None,
        h_eval=h_np[:, :, N:] if X_eval is not None else None,
        hidden=hidden_rec.cpu().numpy() if record_hidden else None,
        unit_movement=movement.cpu().numpy(),
        diverged=(diverged_step >= 0).cpu().numpy(), diverged_step=diverged_step.cpu().numpy(),
        seeds=seeds,
        config=dict(L=L, M=M, D=D, N=N, alpha=alphas[0] if len(set(alphas)) == 1 else alphas, eta=eta, steps=K,
                    block=repr(block), scaling=(scaling.a, scaling.b), multiplier=_scalar_or_list(c),
                    learning_rate=_scalar_or_list(lam),
                    dtype=str(dtype), device=str(device), divergence_threshold=divergence_threshold,
                    **({"T": T} if seq else {})),
        wall_time=time.perf_counter() - t0, **weights,
    )
