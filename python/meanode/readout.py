"""The readout ``f = W_U^T pool(h^L) / D`` and its adjoint ``b^L``: one definition for the trainer
(:mod:`meanode.resnet`) and the limit engine (:mod:`meanode.limit.engine`).

Vector data (2LP blocks): ``pool`` is the identity, ``f = W_U^T h^L / D`` and
``b^L = (1/N) W_U (f - y) / D`` (SPEC §1), computed by the very expressions the package always used.

Sequence data (``block.sequence``; hidden states ``(..., n, T, D)``): ``pool`` is the **mean over
tokens**, ``pool(H) = (1/T) sum_t h_t``, so ``f = W_U^T pool(h^L) / D`` and, for every token t,
``b^L_t = (1/(N T)) W_U (f - y) / D``. Why the mean and not the last token: (i) without positional
encodings or a causal mask the attention block is permutation-equivariant in the tokens, so the
mean makes ``f`` a function of the *set* of tokens, while "the last token" would single one out
arbitrarily; (ii) every token's stream receives the loss gradient directly (``b^L_t != 0`` for
all t), not only through the attention scores, which keeps the adjoint of every token O(1/T) and
the training signal of W_Q, W_K alive from the first step; (iii) ``f`` stays O(1) for any T and
at T = 1 both choices coincide with the vector readout (an attention head with T = 1 is the
linear 2LP unit; see :mod:`meanode.attention`).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["pool", "pool_adjoint", "readout", "readout_adjoint"]


def pool(h: Tensor, sequence: bool) -> Tensor:
    """``(..., n, T, D) -> (..., n, D)``, the mean over tokens (``sequence``), else ``h`` itself."""
    return h.mean(dim=-2) if sequence else h


def pool_adjoint(g: Tensor, T: int | None) -> Tensor:
    """The adjoint of :func:`pool`: ``g (..., n, D) -> (..., n, T, D)``, ``g / T`` on every token
    (``T`` given), else ``g`` itself (``T=None``: vector data)."""
    if T is None:
        return g
    return (g / T).unsqueeze(-2).expand(*g.shape[:-1], T, g.shape[-1]).contiguous()


def readout(hL: Tensor, W_U: Tensor, sequence: bool) -> Tensor:
    """``f = W_U^T pool(h^L) / D``: ``hL (..., n, [T,] D), W_U (D, d_out) -> (..., n, d_out)``."""
    return pool(hL, sequence) @ W_U / W_U.shape[0]


def readout_adjoint(r: Tensor, W_U: Tensor, N: int, T: int | None) -> Tensor:
    """``b^L = dR/dh^L`` for ``R = (1/N) sum_n |r_n|^2 / 2``, ``r = f - y (..., N, d_out)``:
    ``(1/N) W_U r / D`` pulled back through :func:`pool` -> ``(..., N, [T,] D)``."""
    return pool_adjoint((r @ W_U.T) / (N * W_U.shape[0]), T)
