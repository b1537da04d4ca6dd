"""meanode: deep ResNets and their infinite-depth Neural Mean ODE limit.

Finite networks (:func:`train_resnet`) and their limits (:func:`mean_ode_limit`,
:func:`lazy_limit`) are computed from the same data, embeddings and block definitions.
"""

import os as _os

if _os.environ.get("MEANODE_IMPORT_JULIACALL_FIRST", "").lower() in ("1", "yes", "true"):
    # PythonCall's advice: juliacall before torch (torch first can segfault); this starts Julia
    import juliacall  # noqa: F401

from . import measure
from .activations import ACTIVATIONS, Activation, get_activation
from .attention import AttentionHeadBlock
from .blocks import Block, TwoLayerBlock, check_block
from .data import Problem, coupled_embeddings, default_data, sequence_data
from .limit import GaussHermite, Lattice, LimitResult, RQMC, RuleFamily, Smolyak, lazy_limit, mean_ode_limit
from .limit import InfiniteDResult, embedded_closure, infinite_d_limit
from .resnet import MLU, Scaling, TrainResult, init_weights, resnet_gradient, train_resnet
from .solvers import SolverError

__version__ = "0.1.0"

__all__ = [
    "measure", "ACTIVATIONS", "Activation", "Block", "TwoLayerBlock", "AttentionHeadBlock", "check_block",
    "get_activation", "Problem", "coupled_embeddings", "default_data", "sequence_data",
    "MLU", "Scaling", "TrainResult", "init_weights", "resnet_gradient", "train_resnet",
    "LimitResult", "lazy_limit", "mean_ode_limit", "Lattice", "GaussHermite", "Smolyak", "RQMC", "RuleFamily",
    "SolverError",
    "InfiniteDResult", "embedded_closure", "infinite_d_limit",
]
