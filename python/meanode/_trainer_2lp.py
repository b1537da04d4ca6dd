"""Compiled training loops of the 2LP block (SPEC §1) on the CPU: one numba call per pass.

The torch kernel (:class:`meanode.resnet._TwoLayerKernel`) issues about eight torch operations
per layer and step; at small and deep-narrow shapes (M, D of a few units) their dispatch costs
far more than the arithmetic. Here the whole layer loop of a forward pass, and of a backward
pass, is one compiled function, the seeds of the ensemble split over threads (``prange``).

Per seed and layer ``l`` (0-based), with ``h = h^l (n, D)``, ``u_j, v_j`` the units:

    forward    a_ij = (u_j . h_i) / D,   s_ij = sigma(a_ij),   h^{l+1}_i = h_i + c sum_j s_ij v_j
    backward   g_ij = sigma'(a_ij) (v_j . b_i)                                       (b = b^{l+1})
               v_j += step sum_i s_ij b_i;   b^l_i = b_i + (c/D) sum_j g_ij u_j;   u_j += (step/D) sum_i g_ij h_i

which is the exact discrete adjoint of :mod:`meanode.resnet` with the update fused in: each
unit's row of ``U`` and ``V`` is read once and written once per backward pass, and every
product uses the weights of before the update (``g`` and ``b^l`` are formed from ``v_j``, ``u_j``
before they move). ``step = -lam c`` (or 0 for a stopped member) and ``c`` are one value per
member. Reductions are vectorised (``fastmath`` reassociation and FMA contraction, never the
no-NaN/no-inf flags: divergence must stay visible), so results agree with the torch kernel to
rounding (~1e-15 relative), not bit for bit.

numba is an optional dependency (``pip install numba``; a wheel, no compiler needed). Without it,
or with ``MEANODE_NUMBA=0`` in the environment, the torch kernel runs. Compiled code is cached
on disk (``cache=True``) so later processes skip the compile (see :func:`warm_up`).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

from .blocks import ACTIVATIONS, TwoLayerBlock

__all__ = ["available", "usable", "NumbaTwoLayerKernel", "warm_up", "ACTIVATION_CODES"]

#: Activation -> code understood by the compiled kernels (only the built-in objects qualify).
ACTIVATION_CODES = {"tanh": 0, "identity": 1, "erf": 2, "gelu": 3, "relu": 4}

#: Below this many multiply-adds per pass (E L M D n) the serial kernel runs: a parallel launch
#: costs more than it saves (measured, benchmarks/bench_trainer.py).
PARALLEL_MIN_WORK = 200_000

_numba = None
_kernels = None
_import_error: str | None = None
_lock = threading.Lock()


def _disabled() -> bool:
    return os.environ.get("MEANODE_NUMBA", "1").strip().lower() in ("0", "false", "no", "off")


def available() -> bool:
    """True when numba can be imported (and ``MEANODE_NUMBA`` does not switch it off)."""
    global _numba, _import_error
    if _disabled():
        return False
    if _numba is None and _import_error is None:
        try:
            import numba
        except ImportError as err:  # optional dependency: the torch kernel is the fallback
            _import_error = str(err)
        else:
            _numba = numba
    return _numba is not None


def usable(block, z: torch.Tensor) -> bool:
    """Whether the compiled kernel can train ``block`` on units ``z (L, E, M, 2D)``."""
    if type(block) is not TwoLayerBlock or z.device.type != "cpu" or z.dtype not in (torch.float32, torch.float64):
        return False
    name = block.act.name
    if name not in ACTIVATION_CODES or ACTIVATIONS.get(name) is not block.act:
        return False
    return available()


def _load():
    """The compiled kernels (numba compiles them on first use, or loads them from its disk cache)."""
    global _kernels
    if _kernels is None:
        from . import _trainer_2lp_numba as k

        _kernels = k
    return _kernels


class NumbaTwoLayerKernel:
    """Drop-in for :class:`meanode.resnet._TwoLayerKernel`: the same ``params``, ``units``,
    ``forward`` and ``backward``.

    ``params = (U, V)``, each of shape ``(L, E, M, D)`` as for the torch kernel, are transposed
    views of contiguous ``(L, E, D, M)`` storage (the compiled loops run over the M units of a
    layer); the kernels read and update that storage in place through numpy views.
    ``torch.zeros_like(p)`` keeps the layout, so gradient targets made that way are filled in
    place too; a target of any other layout is accumulated through a temporary.
    """

    def __init__(self, block: TwoLayerBlock, U: torch.Tensor, V: torch.Tensor):
        """``U, V (L, E, M, D)``, any strides, never written to: copied once into the kernel's
        own ``(L, E, D, M)`` storage, which it trains in place."""
        if not usable(block, U):
            raise ValueError("NumbaTwoLayerKernel needs numba, a built-in activation and float32/64 units on the CPU")
        self.block = block
        UT, VT = (torch.empty(p.transpose(-1, -2).shape, dtype=p.dtype) for p in (U, V))  # (L, E, D, M)
        UT.copy_(U.transpose(-1, -2))
        VT.copy_(V.transpose(-1, -2))
        self.params = (UT.transpose(-1, -2), VT.transpose(-1, -2))  # (L, E, M, D) views
        self.splits = ((0, block.D), (block.D, 2 * block.D))  # the columns of z each param holds
        self._np = (UT.numpy(), VT.numpy())
        self._act = ACTIVATION_CODES[block.act.name]
        self._a = self._s = None
        self._consts: dict[float, np.ndarray] = {}
        k = _load()
        L, E, M, D = self.params[0].shape
        self._threads = min(torch.get_num_threads(), _numba.config.NUMBA_NUM_THREADS)
        self._parallel = E > 1 and self._threads > 1 and E * L * M * D * 10 >= PARALLEL_MIN_WORK
        mode = "parallel" if self._parallel else "serial"
        self._forward, self._backward = getattr(k, f"forward_{mode}"), getattr(k, f"backward_{mode}")

    def units(self) -> torch.Tensor:
        """``z (L, E, M, 2D)``, contiguous (a copy)."""
        return torch.cat(self.params, dim=-1)

    def _call(self, fn, *args) -> None:
        if self._parallel:
            with _lock:  # one parallel region at a time, with this kernel's thread count
                _numba.set_num_threads(self._threads)
                fn(*args)
        else:
            fn(*args)

    def _member(self, x) -> np.ndarray:
        """``c`` or ``step`` as an ``(E,)`` array (a float's array is cached: it is called every step)."""
        if isinstance(x, torch.Tensor):
            return x.detach().reshape(-1).to(device="cpu").numpy().astype(self._np[0].dtype, copy=True)
        arr = self._consts.get(x)
        if arr is None:
            arr = self._consts[x] = np.full(self._np[0].shape[1], float(x), dtype=self._np[0].dtype)
        return arr

    def forward(self, c, h0: torch.Tensor, hs: torch.Tensor) -> None:
        """Fill ``hs (L+1, E, n, D)`` (contiguous) with ``h^0..h^L``; keeps ``a`` and ``sigma(a)``
        ``(L, E, n, M)`` for the backward pass."""
        UT, VT = self._np
        L, E, _, M = UT.shape
        n = hs.shape[2]
        if not hs.is_contiguous():
            raise ValueError("hs must be contiguous")
        if self._a is None or self._a.shape[2] != n:
            self._a = np.empty((L, E, n, M), dtype=UT.dtype)
            self._s = np.empty_like(self._a)
        hs[0] = h0
        self._call(self._forward, UT, VT, hs.numpy(), self._a, self._s, self._member(c), self._act)

    def backward(self, c, hs: torch.Tensor, b: torch.Tensor, N: int, step, target) -> None:
        """Exact adjoint from ``b = b^L (E, N, D)`` down to layer 1, adding ``step * g_l`` to
        ``target[0][l]``, ``target[1][l]`` as :meth:`meanode.resnet._GenericKernel.backward`
        (``dR/du_l = c g_l``); ``target = self.params`` updates the units in place."""
        UT, VT = self._np
        if b.shape[1] != N:
            raise ValueError(f"b has {b.shape[1]} samples, expected N = {N}")
        direct, tnp = [True, True], list(self._np)
        if target is not self.params:
            for q, (t, own) in enumerate(zip(target, self._np)):
                tt = t.transpose(-1, -2)
                if t.device.type == "cpu" and t.dtype == self.params[0].dtype and tt.is_contiguous():
                    tnp[q] = tt.numpy()
                else:  # another layout: accumulate into a zeroed temporary, added below
                    tnp[q], direct[q] = np.zeros_like(own), False
        bb = b.detach().numpy()
        if bb.dtype != UT.dtype or not bb.flags.c_contiguous:
            bb = np.ascontiguousarray(bb, dtype=UT.dtype)
        self._call(self._backward, UT, VT, hs.numpy(), self._a, self._s, bb, self._member(c), self._member(step),
                   tnp[0], tnp[1], self._act)
        for t, arr, ok in zip(target, tnp, direct):
            if not ok:
                t.add_(torch.from_numpy(arr).transpose(-1, -2).to(device=t.device, dtype=t.dtype))


def warm_up(dtypes=(torch.float64,)) -> float:
    """Compile the serial and parallel kernels for ``dtypes`` now (or load them from numba's
    disk cache); returns the seconds it took (0 without numba). Costs a few seconds the first
    time on a machine, a fraction of a second in later processes."""
    import time

    t0 = time.perf_counter()
    if not available():
        return 0.0
    k = _load()
    for dtype in dtypes:
        dt = np.dtype(str(dtype).replace("torch.", ""))
        U = np.ones((1, 1, 1, 1), dtype=dt)
        hs, A = np.ones((2, 1, 1, 1), dtype=dt), np.ones((1, 1, 1, 1), dtype=dt)
        one = np.ones(1, dtype=dt)
        for mode in ("serial", "parallel"):
            getattr(k, f"forward_{mode}")(U, U.copy(), hs, A, A.copy(), one, 0)
            getattr(k, f"backward_{mode}")(U, U.copy(), hs, A, A.copy(), hs[0].copy(), one, one * 0, U.copy(),
                                           U.copy(), 0)
    return time.perf_counter() - t0
