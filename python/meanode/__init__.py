"""meanode: deep ResNets and their infinite-depth Neural Mean ODE limit.

Finite networks (:func:`train_resnet`) and their limits (:func:`mean_ode_limit`,
:func:`lazy_limit`) are computed from the same data, embeddings and block definitions.
"""

from .attention import AttentionHeadBlock
from .blocks import ACTIVATIONS, Activation, Block, TwoLayerBlock, get_activation
from .data import Problem, coupled_embeddings, default_data, sequence_data
from .limit import LimitResult, lazy_limit, mean_ode_limit
from .resnet import MLU, Scaling, TrainResult, init_weights, resnet_gradient, train_resnet
from .solvers import SolverError

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Activation", "Block", "TwoLayerBlock", "AttentionHeadBlock", "get_activation",
    "Problem", "coupled_embeddings", "default_data", "sequence_data",
    "MLU", "Scaling", "TrainResult", "init_weights", "resnet_gradient", "train_resnet",
    "LimitResult", "lazy_limit", "mean_ode_limit", "SolverError",
]
