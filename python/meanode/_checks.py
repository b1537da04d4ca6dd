"""Input validation shared by the trainer and the limit engine: clear errors naming the argument."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch

__all__ = ["as_tensor", "check_problem", "positive_int", "positive_float", "nonnegative_int"]


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def positive_float(name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return value


def as_tensor(name: str, x, ndim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """numpy/array-like -> tensor of ``dtype`` on ``device``; a tensor must already match both."""
    if isinstance(x, torch.Tensor):
        if x.dtype != dtype:
            raise TypeError(f"{name} has dtype {x.dtype}, expected {dtype} (convert it, or pass dtype=)")
        if x.device != device:
            raise ValueError(f"{name} is on device {x.device}, expected {device} (move it, or pass device=)")
        t = x
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}") from e
        t = torch.as_tensor(arr, dtype=dtype, device=device)
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values")
    return t


def check_problem(X, Y, W_E, W_U, X_eval, dtype, device, sequence: bool = False):
    """Validate and convert the data/embedding arrays; returns tensors ``X, Y, W_E, W_U, X_eval``.

    ``X (N, d_in)``, ``Y (N, d_out)``, ``W_E (D, d_in)``, ``W_U (D, d_out)``, ``X_eval (N_eval, d_in)``;
    for a sequence block (``sequence=True``) ``X (N, T, d_in)`` and ``X_eval (N_eval, T, d_in)``
    with the same T.
    """
    if sequence and np.ndim(X) == 2:
        raise ValueError(f"X has shape {tuple(np.shape(X))}: a sequence block (e.g. AttentionHeadBlock) needs "
                         "X of shape (N, T, d_in), T tokens per sample (for one token use X[:, None, :])")
    if not sequence and np.ndim(X) == 3:
        raise ValueError(f"X has shape {tuple(np.shape(X))}, sequence data (N, T, d_in), but the block is not a "
                         "sequence block: pass block=AttentionHeadBlock(...) (or X of shape (N, d_in))")
    X = as_tensor("X", X, 3 if sequence else 2, dtype, device)
    Y = as_tensor("Y", Y, 2, dtype, device)
    W_E = as_tensor("W_E", W_E, 2, dtype, device)
    W_U = as_tensor("W_U", W_U, 2, dtype, device)
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"X and Y disagree on the number of samples: {X.shape[0]} vs {Y.shape[0]}")
    if X.shape[0] < 1:
        raise ValueError("X must hold at least one sample")
    if sequence and X.shape[1] < 1:
        raise ValueError("X must hold at least one token per sample (T >= 1)")
    if W_E.shape[1] != X.shape[-1]:
        raise ValueError(f"W_E has shape {tuple(W_E.shape)}, expected (D, d_in) with d_in = {X.shape[-1]}")
    if W_U.shape[0] != W_E.shape[0]:
        raise ValueError(f"W_U has {W_U.shape[0]} rows but W_E has D = {W_E.shape[0]}")
    if W_U.shape[1] != Y.shape[1]:
        raise ValueError(f"W_U has shape {tuple(W_U.shape)}, expected (D, d_out) with d_out = {Y.shape[1]}")
    if X_eval is not None:
        X_eval = as_tensor("X_eval", X_eval, 3 if sequence else 2, dtype, device)
        if X_eval.shape[-1] != X.shape[-1]:
            raise ValueError(f"X_eval has {X_eval.shape[-1]} features per input, expected d_in = {X.shape[-1]}")
        if sequence and X_eval.shape[1] != X.shape[1]:
            raise ValueError(f"X_eval has T = {X_eval.shape[1]} tokens per sample but X has T = {X.shape[1]}: "
                             "train and held-out sequences must have the same length")
    return X, Y, W_E, W_U, X_eval


def resolve_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a valid torch device") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def resolve_dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float64, torch.float32):
        raise TypeError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
    return dtype


def warn_outside_regime(D: int, L: int, M: int) -> None:
    if D > L * M:
        warnings.warn(
            f"D = {D} > L*M = {L * M}: outside the regime of the theory (the initial fluctuation "
            "is sqrt(D/(L M)))",
            stacklevel=3,
        )
