"""The infinite-depth limit: the Neural Mean ODE training dynamics and its lazy limit.

:func:`mean_ode_limit` and :func:`lazy_limit` (:mod:`.api`) drive one engine loop
(:mod:`.engine`) over small dynamics (:mod:`.nodes`, :mod:`.closure`, :mod:`.lazy`) on a Chebyshev
depth grid (:mod:`.depth`); the quadrature options are objects (:mod:`.options`) over the node
rules of :mod:`.quadrature`; :mod:`.backends` runs the loop in Python or Julia; :mod:`.infinite_d`
is the exact D = infinity limit of the identity closure.
"""

from .api import METHODS, lazy_limit, mean_ode_limit, resolve_method
from .depth import DepthGrid
from .infinite_d import InfiniteDResult, embedded_closure, infinite_d_limit
from .options import RQMC, RULES, GaussHermite, Lattice, RuleFamily, RuleOptions, Smolyak
from .result import LimitResult

__all__ = ["mean_ode_limit", "lazy_limit", "resolve_method", "LimitResult", "DepthGrid", "METHODS", "RULES",
           "RuleOptions", "Lattice", "GaussHermite", "Smolyak", "RQMC", "RuleFamily", "infinite_d_limit",
           "embedded_closure", "InfiniteDResult"]
