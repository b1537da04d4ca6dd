"""Training data and the fixed random embeddings (SPEC §1).

The limit is conditional on the data and on the fixed ``W_E``, ``W_U`` (SPEC §8): a finite
network and its limit must see the very same arrays. :class:`Problem` bundles them so one
object yields both (``train_resnet(**problem.arrays(), ...)``, ``mean_ode_limit(...)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import integer

__all__ = ["default_data", "sequence_data", "coupled_embeddings", "Problem"]


def default_data(N: int = 10, d_in: int = 5, d_out: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Default synthetic data: ``x_n, y_n`` iid ``N(0, I)``; returns ``X (N, d_in), Y (N, d_out)``.

    Drawn from ``numpy.random.default_rng(seed)``, a stream separate from the weight seeds.
    """
    for name, val in (("N", N), ("d_in", d_in), ("d_out", d_out)):
        integer(name, val, 1)
    rng = np.random.default_rng(integer("seed", seed, 0))
    X = rng.standard_normal((N, d_in))
    Y = rng.standard_normal((N, d_out))
    return X, Y


def sequence_data(N: int = 10, T: int = 3, d_in: int = 5, d_out: int = 5,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic sequence data for sequence blocks: tokens ``x_{n,t}`` and targets ``y_n`` iid
    ``N(0, I)``; returns ``X (N, T, d_in), Y (N, d_out)``.

    Drawn like :func:`default_data` (X first, then Y, from ``numpy.random.default_rng(seed)``),
    so ``T = 1`` gives exactly ``default_data``'s arrays with a token axis: ``X[:, 0]``.
    """
    for name, val in (("N", N), ("T", T), ("d_in", d_in), ("d_out", d_out)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive integer, got {val!r}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, T, d_in))
    Y = rng.standard_normal((N, d_out))
    return X, Y


def coupled_embeddings(D: int, d_in: int = 5, d_out: int = 5, seed: int = 0,
                       D_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fixed embedding ``W_E (D, d_in)``, entries ``N(0, 1/d_in)``, and readout ``W_U (D, d_out)``,
    entries ``N(0, 1)``.

    "Coupled" across D: both are drawn once at ``D_max`` (default ``D``) and every model takes
    their first ``D`` rows, so hidden states of different D compare coordinate by coordinate.
    """
    D = integer("D", D, 1)
    D_max = D if D_max is None else integer("D_max", D_max, 1)
    if D_max < D:
        raise ValueError(f"D_max={D_max} must be >= D={D}")
    d_in, d_out = integer("d_in", d_in, 1), integer("d_out", d_out, 1)
    rng = np.random.default_rng([integer("seed", seed, 0), 1])  # independent of default_data's stream
    W_E = rng.standard_normal((D_max, d_in)) / np.sqrt(d_in)
    W_U = rng.standard_normal((D_max, d_out))
    return W_E[:D].copy(), W_U[:D].copy()


@dataclass(frozen=True, eq=False)
class Problem:
    """Data and embeddings shared by a finite ResNet and its limit.

    ``X (N, d_in)``, ``Y (N, d_out)``, ``W_E (D, d_in)``, ``W_U (D, d_out)``, and optional
    held-out inputs ``X_eval (N_eval, d_in)`` that are evaluated but never trained on.
    Sequence problems (:meth:`sequences`) have ``X (N, T, d_in)``, ``X_eval (N_eval, T, d_in)``.
    """

    X: np.ndarray
    Y: np.ndarray
    W_E: np.ndarray
    W_U: np.ndarray
    X_eval: np.ndarray | None = None

    @property
    def D(self) -> int:
        return int(self.W_E.shape[0])

    @classmethod
    def default(cls, D: int = 2, *, N: int = 10, d_in: int = 5, d_out: int = 5, data_seed: int = 0,
                embed_seed: int = 0, D_max: int | None = None, N_eval: int = 0) -> "Problem":
        """SPEC §1 defaults: ``N = 10``, ``d_in = d_out = 5``, coupled embeddings at ``D_max``."""
        N_eval = integer("N_eval", N_eval, 0)
        X, Y = default_data(N, d_in, d_out, seed=integer("data_seed", data_seed, 0))
        W_E, W_U = coupled_embeddings(D, d_in, d_out, seed=integer("embed_seed", embed_seed, 0), D_max=D_max)
        # held-out inputs from their own stream: asking for them never changes the training set
        X_eval = np.random.default_rng([data_seed, 2]).standard_normal((N_eval, d_in)) if N_eval else None
        return cls(X, Y, W_E, W_U, X_eval)

    @property
    def T(self) -> int | None:
        """Tokens per sample for sequence data (``X`` 3-D), else None."""
        return int(self.X.shape[1]) if self.X.ndim == 3 else None

    @classmethod
    def sequences(cls, D: int = 2, T: int = 3, *, N: int = 10, d_in: int = 5, d_out: int = 5, data_seed: int = 0,
                  embed_seed: int = 0, D_max: int | None = None, N_eval: int = 0) -> "Problem":
        """Sequence data (:func:`sequence_data`) for a sequence block such as
        :class:`meanode.AttentionHeadBlock`, with the embeddings of :meth:`default` (same seeds,
        same ``W_E``, ``W_U``): ``X (N, T, d_in)``, tokens iid ``N(0, I)``, embedded token-wise."""
        X, Y = sequence_data(N, T, d_in, d_out, seed=data_seed)
        W_E, W_U = coupled_embeddings(D, d_in, d_out, seed=embed_seed, D_max=D_max)
        X_eval = np.random.default_rng([data_seed, 2]).standard_normal((N_eval, T, d_in)) if N_eval else None
        return cls(X, Y, W_E, W_U, X_eval)

    def arrays(self) -> dict:
        """Keyword arguments for :func:`meanode.train_resnet` and the limit functions."""
        out = dict(X=self.X, Y=self.Y, W_E=self.W_E, W_U=self.W_U)
        if self.X_eval is not None:
            out["X_eval"] = self.X_eval
        return out
