"""The infinite-depth limit: the Neural Mean ODE training dynamics and its lazy limit."""

from .api import METHODS, RULES, lazy_limit, mean_ode_limit
from .depth import DepthGrid
from .engine import LimitResult
from .infinite_d import InfiniteDResult, embedded_closure, infinite_d_limit

__all__ = ["mean_ode_limit", "lazy_limit", "LimitResult", "DepthGrid", "METHODS", "RULES",
           "infinite_d_limit", "embedded_closure", "InfiniteDResult"]
