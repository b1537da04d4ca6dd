"""Weighted node sets for Gaussian expectations ``E[f(z)]``, ``z ~ N(0, var * I_d)``.

In the Neural Mean ODE engine ``d = 2D``, ``var = D`` and ``z = (u0, v0)`` (SPEC section 4.3).
Every constructor returns a :class:`Rule`: float64 ``nodes`` of shape ``(P, d)`` and float64
``weights`` of shape ``(P,)`` summing to one, so that ``E[f(z)] ~= weights @ f(nodes)``.

Rules
-----
* :func:`gauss_hermite` -- tensor-product Gauss-Hermite, ``n`` nodes per dimension
  (``n**d`` nodes, exact for every monomial whose exponents are all ``<= 2n-1``).
* :func:`smolyak` -- sparse grid (Smolyak combination technique) on the nested
  Genz-Keister / Kronrod-Patterson 1-D rules below; level ``l`` is exact for every
  polynomial of *total* degree ``<= 2l+1`` (:func:`smolyak_exactness`). Weights can be negative.
* :func:`rqmc` / :func:`rqmc_replicates` -- scrambled Sobol points through the normal
  inverse CDF, optionally antithetic; equal weights.
* :func:`trapezoid` -- tensor trapezoid (sinc) rule: step ``h``, truncated at ``|z_k| <= cutoff``,
  weights ``~ exp(-|z|^2/2)`` renormalised.
* :func:`lattice` / :func:`lattice_family` -- a rotated lattice (the best known packing duals:
  hexagonal, D4*, E8) with a radial stretch, for integrands that are analytic only in a strip
  (tanh networks); see :func:`lattice`. The recommended rule for the Mean ODE of tanh
  networks.
* :meth:`Rule.fold_odd_symmetry` -- for integrands even under ``z -> -z`` keep half a
  symmetric node set.

Modules: :mod:`.rule` (the :class:`Rule` type), :mod:`.hermite` (Gauss-Hermite, nested
Genz-Keister, Smolyak), :mod:`.rqmc`, :mod:`.lattice` (trapezoid and lattice rules, their
rotation screening). The limit's options (:mod:`meanode.limit.options`) build these.

Nested 1-D rules (Genz & Keister 1996, "Fully symmetric interpolatory rules for multiple
integrals over infinite regions with Gaussian weight", J. Comput. Appl. Math. 71)
-------------------------------------------------------------------------------------
For the standard normal weight the sequence is built by repeated Kronrod-Patterson
extension, starting from the 1-point rule at 0::

    rule k      : 0     1     2     3     4
    points      : 1     3     9    19    35     (added: 2, 6, 10, 16)
    exact degree: 1     5    15    29    51

Construction of extension k (existing symmetric nodes with node polynomial ``p``,
``n_add`` new nodes): the new nodes are the roots of the even polynomial ``q`` of degree
``n_add`` with ``E[p(x) q(x) x^j] = 0`` for ``j < n_add``. The combined interpolatory rule
on the ``m + n_add`` nodes then has degree ``m + 2 n_add - 1`` (one more by symmetry), and
its weights solve the moment equations ``sum_i w_i x_i^(2j) = (2j-1)!!``. Solving these
systems in float64 is ill-conditioned (the node polynomial and the Vandermonde-type moment
matrix lose ~1e-8 relative accuracy on the small weights of the 35-point rule), so the
tables below were produced by exactly this construction in 80-digit arithmetic
(``tests/_mp_hermite.py``, needs ``mpmath``) and are stored as 25-digit decimal
strings; float64 values are their correct roundings. The tests re-derive them when mpmath
is available, compare with the published Genz-Keister values, and check the exactness
degrees in float64. The 19-point rule has a negative weight (at +-2.8613), as published.

1-D accuracy index ``i`` (used by Smolyak) maps to the smallest nested rule of degree
``>= 2i+1`` ("slow growth", as in Heiss & Winschel's KPN sparse grids): ``i = 0 -> 1``
point, ``1..2 -> 3``, ``3..7 -> 9``, ``8..14 -> 19``, ``15..25 -> 35``. Hence
:data:`SMOLYAK_MAX_LEVEL` ``= 25``.
"""

from .hermite import (NESTED_DEGREES, NESTED_SIZES, SMOLYAK_MAX_LEVEL, gauss_hermite, nested_hermite_1d, smolyak,
                      smolyak_exactness)
from .lattice import LATTICES, Ridges, lattice, lattice_family, lattice_points, lattice_size, ridge_aliasing, trapezoid
from .rqmc import rqmc, rqmc_replicates
from .rule import Rule

__all__ = [
    "Rule", "gauss_hermite", "smolyak", "smolyak_exactness", "nested_hermite_1d", "rqmc", "rqmc_replicates",
    "NESTED_SIZES", "NESTED_DEGREES", "SMOLYAK_MAX_LEVEL", "trapezoid", "lattice", "lattice_family",
    "lattice_size", "lattice_points", "LATTICES", "Ridges", "ridge_aliasing",
]
