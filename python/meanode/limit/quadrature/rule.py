"""The weighted node set :class:`Rule` and the argument checks shared by the rule families."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..._checks import integer, real

__all__ = ["Rule"]

# --------------------------------------------------------------------------------------
# Rule
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A weighted node set for ``E[f(z)]``.

    Attributes
    ----------
    nodes : np.ndarray, shape (P, d), float64, read-only
        Quadrature nodes (already scaled by ``sqrt(var)``).
    weights : np.ndarray, shape (P,), float64, read-only
        Weights; they sum to 1 (some may be negative for sparse grids).
    name : str
        Human-readable description, e.g. ``"gauss_hermite(n=10, d=4, var=2, folded)"``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    name: str

    def __post_init__(self) -> None:
        nodes = np.array(self.nodes, dtype=np.float64, copy=True)
        weights = np.array(self.weights, dtype=np.float64, copy=True)
        if nodes.ndim != 2:
            raise ValueError(f"nodes must have shape (P, d); got shape {nodes.shape}")
        if weights.ndim != 1 or weights.shape[0] != nodes.shape[0]:
            raise ValueError(
                f"weights must have shape (P,) = ({nodes.shape[0]},); got shape {weights.shape}"
            )
        if nodes.shape[0] < 1 or nodes.shape[1] < 1:
            raise ValueError(f"nodes must be non-empty; got shape {nodes.shape}")
        if not (np.all(np.isfinite(nodes)) and np.all(np.isfinite(weights))):
            raise ValueError("nodes and weights must be finite")
        total = float(np.sum(weights))  # pairwise summation
        scale = max(1.0, float(np.sum(np.abs(weights))))
        if abs(total - 1.0) > 1e-12 * scale:
            raise ValueError(f"weights must sum to 1; they sum to {total!r}")
        nodes.setflags(write=False)
        weights.setflags(write=False)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "weights", weights)

    @property
    def num_nodes(self) -> int:
        """Number of nodes ``P``."""
        return int(self.nodes.shape[0])

    @property
    def dim(self) -> int:
        """Dimension ``d``."""
        return int(self.nodes.shape[1])

    def expect(self, f) -> np.ndarray:
        """``sum_p weights[p] * f(nodes)[p]``.

        ``f`` maps the ``(P, d)`` node array to an array of shape ``(P, ...)``; the result
        has shape ``(...)``.
        """
        vals = np.asarray(f(self.nodes), dtype=np.float64)
        if vals.shape[:1] != (self.num_nodes,):
            raise ValueError(f"f(nodes) must have leading dimension P={self.num_nodes}; got {vals.shape}")
        return np.tensordot(self.weights, vals, axes=(0, 0))

    def fold_odd_symmetry(self, rtol: float = 1e-12) -> "Rule":
        """Half of a symmetric rule, for integrands even under ``z -> -z``.

        Requires that for every node ``z`` the node ``-z`` is present (to ``rtol`` relative
        to the largest node norm) with the same weight (to ``rtol`` relative to the largest
        |weight|). Each pair ``{z, -z}`` is replaced by one representative -- the one whose
        first coordinate that is not ~0 is positive -- carrying the summed weight; a node at
        the origin stays with its own weight. The result integrates every even integrand
        exactly as the unfolded rule does (odd integrands are no longer integrated).

        Returns a Rule with ``(P + #origin) / 2`` nodes, shape ``(P', d)``.
        Raises ValueError if the rule is not symmetric (or has duplicate nodes).
        """
        from scipy.spatial import cKDTree

        z = self.nodes
        w = self.weights
        P = z.shape[0]
        xscale = max(1.0, float(np.max(np.abs(z))))
        xtol = rtol * xscale * math.sqrt(z.shape[1])
        wtol = rtol * max(float(np.max(np.abs(w))), np.finfo(float).tiny)
        dist, partner = cKDTree(z).query(-z, k=1)
        bad = np.nonzero(dist > xtol)[0]
        if bad.size:
            raise ValueError(
                f"rule {self.name!r} is not symmetric: -z is missing for {bad.size} of {P} nodes "
                f"(e.g. z = {z[bad[0]].tolist()})"
            )
        if np.any(partner[partner] != np.arange(P)):
            raise ValueError(
                f"rule {self.name!r}: the pairing z <-> -z is not one-to-one (duplicate nodes?)"
            )
        if np.any(np.abs(w - w[partner]) > wtol):
            i = int(np.argmax(np.abs(w - w[partner])))
            raise ValueError(
                f"rule {self.name!r} is not symmetric: weight {w[i]!r} at z differs from "
                f"weight {w[partner[i]]!r} at -z"
            )
        idx = np.arange(P)
        origin = partner == idx
        # Representative: the first coordinate with |z_k| > xtol is positive.
        significant = np.abs(z) > xtol
        first = np.argmax(significant, axis=1)
        lead = z[idx, first]
        keep = origin | (lead > 0)
        # Every non-origin pair must have exactly one kept member.
        pair_ok = keep[~origin] ^ keep[partner[~origin]]
        if not np.all(pair_ok):
            raise ValueError(f"rule {self.name!r}: could not split the nodes into pairs z, -z")
        new_w = np.where(origin, w, w + w[partner])[keep]
        return Rule(z[keep], new_w, _with_tag(self.name, "folded"))


def _with_tag(name: str, tag: str) -> str:
    if name.endswith(")"):
        return name[:-1] + f", {tag})"
    return f"{name} [{tag}]"


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------


def _check_int(value, name: str, minimum: int) -> int:
    return integer(name, value, minimum)


def _check_var(var) -> float:
    return real("var", var, minimum=0.0, strict=True)


_MAX_TENSOR_NODES = 20_000_000

