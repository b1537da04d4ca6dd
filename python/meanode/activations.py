"""Activations ``sigma``: the function, its derivative and its lazy kernel, defined together.

As neural-tangents keeps a layer's finite function beside its infinite-width kernel, each
:class:`Activation` carries both what a finite network needs (``sigma``, ``dsigma``) and what
the lazy limit needs (SPEC §4.2): its Gaussian pair expectations

    pair_expectations(q1, q2, c) = (E[sigma(a) sigma(a')], E[sigma'(a) sigma'(a')]),
    (a, a') centred Gaussian, Var a = q1, Var a' = q2, Cov(a, a') = c,

in closed form (identity, erf, relu) or by the quadrature of :mod:`meanode.gaussian` (tanh,
gelu). :data:`ACTIVATIONS` is the one registry of the package; a user-defined activation
without ``pair_expectations`` trains and has a quadrature Mean ODE limit, but no lazy limit.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from .gaussian import CLOSED_FORMS, gaussian_pair_expectations

__all__ = ["Activation", "ACTIVATIONS", "get_activation"]


@dataclass(frozen=True)
class Activation:
    """A scalar activation ``sigma`` with its derivative ``dsigma`` and its lazy kernel.

    ``odd`` records ``sigma(-x) = -sigma(x)``: then the 2LP unit map commutes with
    ``z -> -z`` and a symmetric node set can be folded in half (SPEC §4.3).
    ``smooth`` is False for activations outside the theory (relu).
    ``dsigma_of_sigma``, when given, computes ``sigma'(x)`` from ``sigma(x)`` (tanh: ``1 - s^2``),
    which saves the trainer from keeping pre-activations.
    ``pair_expectations``: ``(q1, q2, c, *, refine=1.0, s2=None) -> (E[sigma sigma'], E[sigma' sigma'])``
    (broadcasting float64 tensors, differentiable), or None when there is no lazy kernel;
    ``closed_form_kernel`` says whether it is exact (True) or a quadrature (~1e-15).
    """

    name: str
    sigma: Callable[[Tensor], Tensor]
    dsigma: Callable[[Tensor], Tensor]
    odd: bool
    smooth: bool = True
    dsigma_of_sigma: Callable[[Tensor], Tensor] | None = None
    pair_expectations: Callable[..., tuple[Tensor, Tensor]] | None = None
    closed_form_kernel: bool = False

    @property
    def has_lazy_kernel(self) -> bool:
        return self.pair_expectations is not None


def _tanh_prime(x: Tensor) -> Tensor:
    t = torch.tanh(x)
    return 1.0 - t * t


_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / _SQRT2))


def _gelu_prime(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / _SQRT2)) + x * _INV_SQRT_2PI * torch.exp(-0.5 * x * x)


def _kernel(name: str) -> dict:
    """``pair_expectations`` and ``closed_form_kernel`` of a built-in activation."""
    return dict(pair_expectations=partial(gaussian_pair_expectations, name), closed_form_kernel=name in CLOSED_FORMS)


ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation("tanh", torch.tanh, _tanh_prime, odd=True, dsigma_of_sigma=lambda s: 1.0 - s * s,
                       **_kernel("tanh")),
    "identity": Activation("identity", lambda x: x, torch.ones_like, odd=True, **_kernel("identity")),
    "erf": Activation("erf", torch.erf, lambda x: _TWO_OVER_SQRT_PI * torch.exp(-x * x), odd=True, **_kernel("erf")),
    "gelu": Activation("gelu", _gelu, _gelu_prime, odd=False, **_kernel("gelu")),
    "relu": Activation("relu", torch.relu, lambda x: (x > 0).to(x.dtype), odd=False, smooth=False, **_kernel("relu")),
}


def get_activation(name: str | Activation, *, warn: bool = True) -> Activation:
    """Look an activation up by name (an :class:`Activation` is returned as is); relu warns
    (unless ``warn=False``) that it lies outside the smooth theory."""
    if isinstance(name, Activation):
        act = name
    elif not isinstance(name, str):
        raise TypeError(f"activation must be a name (str) or an Activation, got {type(name).__name__}")
    elif name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    else:
        act = ACTIVATIONS[name]
    if warn and not act.smooth:
        warnings.warn(
            f"activation {act.name!r} is not smooth: the O(1/L + sqrt(D/(LM))) rates of the theory "
            "assume a smooth sigma",
            stacklevel=3,
        )
    return act
