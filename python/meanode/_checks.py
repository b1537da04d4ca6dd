"""Input validation shared by the trainer and the limit engine: clear errors naming the argument."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch

__all__ = ["ArgumentTypeError", "all_finite", "integer", "real", "as_tensor", "check_problem", "check_seeds", "positive_int",
           "positive_float", "nonnegative_int", "resolve_device", "resolve_dtype"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. Both a TypeError and a ValueError, so a caller catching
    either sees it (the checks of the node rules have always raised ValueError)."""


def integer(name: str, value, minimum: int | None = None, *, integral_float: bool = False) -> int:
    """``value`` as an int (bool refused) that is ``>= minimum``; ``integral_float`` also accepts
    floats that are whole numbers (YAML files). Errors name ``name``."""
    if integral_float and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ArgumentTypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def real(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite float (bool and strings refused), ``>= minimum`` (``> minimum`` when
    ``strict``). Errors name ``name``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ArgumentTypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
    return value


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite, in one read pass and without a boolean temporary of
    ``t``'s size (a 1.6 GB unit array would need 200 MB and several seconds): the sum is finite
    exactly when no entry is NaN or +-inf and the sum does not overflow; only when it is not
    finite are the entries checked one by one (so an overflowing sum of finite entries is still
    accepted)."""
    if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def positive_int(name: str, value) -> int:
    return integer(name, value, 1)


def nonnegative_int(name: str, value) -> int:
    return integer(name, value, 0)


def positive_float(name: str, value, allow_zero: bool = False) -> float:
    return real(name, value, minimum=0.0, strict=not allow_zero)


def as_tensor(name: str, x, ndim: int, dtype: torch.dtype, device: torch.device,
              dtype_hint: str = "convert it, or pass dtype=") -> torch.Tensor:
    """numpy/array-like -> tensor of ``dtype`` on ``device``; a tensor must already match both and
    must not require grad (nothing here differentiates through its inputs)."""
    if isinstance(x, torch.Tensor):
        if x.requires_grad:
            raise ValueError(f"{name} requires grad; meanode does not differentiate through its inputs: pass "
                             f"{name}.detach()")
        if x.dtype != dtype:
            raise TypeError(f"{name} has dtype {x.dtype}, expected {dtype} ({dtype_hint})")
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
    if not all_finite(t):
        raise ValueError(f"{name} contains non-finite values")
    return t


def check_problem(X, Y, W_E, W_U, X_eval, dtype, device, dtype_hint: str = "convert it, or pass dtype=",
                  sequence: bool = False):
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
    X = as_tensor("X", X, 3 if sequence else 2, dtype, device, dtype_hint)
    Y = as_tensor("Y", Y, 2, dtype, device, dtype_hint)
    W_E = as_tensor("W_E", W_E, 2, dtype, device, dtype_hint)
    W_U = as_tensor("W_U", W_U, 2, dtype, device, dtype_hint)
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
        X_eval = as_tensor("X_eval", X_eval, 3 if sequence else 2, dtype, device, dtype_hint)
        if X_eval.shape[-1] != X.shape[-1]:
            raise ValueError(f"X_eval has {X_eval.shape[-1]} features per input, expected d_in = {X.shape[-1]}")
        if sequence and X_eval.shape[1] != X.shape[1]:
            raise ValueError(f"X_eval has T = {X_eval.shape[1]} tokens per sample but X has T = {X.shape[1]}: "
                             "train and held-out sequences must have the same length")
    return X, Y, W_E, W_U, X_eval


def resolve_device(device) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or such a torch.device); others are refused by name."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a valid torch device") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


#: seeds are the integers torch.Generator.manual_seed takes without wrapping around
MAX_SEED = 2**63 - 1


def check_seeds(seeds, name: str = "seeds", allow_repeats: bool = False) -> tuple[int, ...]:
    """A non-empty sequence of distinct integer seeds in [0, 2^63): ``range(8)``, ``[0, 3]``, a numpy
    integer array. Refused, naming ``name``: a bare int or string, floats and bools (``1.7`` is not
    a seed), negatives (``-1`` would be the same network as ``2^64 - 1``), too large, repeats."""
    if isinstance(seeds, (str, bytes)) or isinstance(seeds, numbers.Number) or not hasattr(seeds, "__iter__"):
        raise ArgumentTypeError(f"{name} must be a sequence of integer seeds (e.g. range(8) or [0, 3]), got {seeds!r}")
    out = []
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, (numbers.Integral, np.integer)):
            raise ArgumentTypeError(f"{name}[{i}] must be an integer seed, got {s!r}")
        if not 0 <= int(s) <= MAX_SEED:
            raise ValueError(f"{name}[{i}] = {int(s)} is outside [0, 2^63 - 1]")
        out.append(int(s))
    if not out:
        raise ValueError(f"{name} must name at least one seed")
    if not allow_repeats and len(set(out)) != len(out):
        dup = sorted({s for s in out if out.count(s) > 1})
        raise ValueError(f"{name} repeats seeds {dup}: each member of an ensemble needs its own seed")
    return tuple(out)


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
