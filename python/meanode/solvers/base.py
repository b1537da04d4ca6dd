"""The types every solver backend shares: what ran, the work it did, and how it failed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SolverChoice", "ODEStats", "SolverError", "check_progress"]


@dataclass(frozen=True)
class SolverChoice:
    """What was asked for and what runs: ``backend`` in {scipy, torch, julia}, ``method`` its name."""

    requested: str
    backend: str
    method: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.method}" + ("" if self.method == self.requested else f" (asked {self.requested})")


@dataclass
class ODEStats:
    """Work done by the solves of one limit computation (summed over all solves)."""

    nfev: int = 0
    njev: int = 0
    nlu: int = 0
    nsteps: int = 0
    nrejected: int = 0
    nsolves: int = 0
    wall_time: float = 0.0

    def add(self, other: "ODEStats") -> None:
        for k in ("nfev", "njev", "nlu", "nsteps", "nrejected", "nsolves"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.wall_time += other.wall_time

    def as_dict(self) -> dict:
        return dict(nfev=self.nfev, njev=self.njev, nlu=self.nlu, nsteps=self.nsteps,
                    nrejected=self.nrejected, nsolves=self.nsolves, wall_time=self.wall_time)


class SolverError(RuntimeError):
    """An ODE solve failed; ``status`` is the backend's return code, ``message`` its reason."""

    def __init__(self, choice: SolverChoice, status, message: str, t: float):
        self.choice, self.status, self.t = choice, status, t
        super().__init__(f"ODE solver {choice} failed at s = {t:.6g} with return code {status!r}: {message}")


def check_progress(choice: SolverChoice, y, t: float, nfev: int, max_rhs: int | None, bound: float | None) -> None:
    """After a solver step: raise :class:`SolverError` with status ``"max_rhs"`` when the solve has
    used more than ``max_rhs`` right-hand-side evaluations, ``"diverged"`` when the state is
    non-finite or its RMS exceeds ``bound`` (the trainer's divergence rule, SPEC §7)."""
    if max_rhs is not None and nfev > max_rhs:
        raise SolverError(choice, "max_rhs", f"more than max_rhs = {max_rhs} right-hand-side evaluations in one "
                          "solve (raise max_rhs, or the trajectory is exploding: a smaller eta)", t)
    if bound is not None:
        import math
        if hasattr(y, "detach"):  # a tensor: one scalar crosses to the host
            rms = float(y.detach().pow(2).mean().sqrt()) if y.numel() else 0.0
        else:
            import numpy as np
            rms = float(np.sqrt(np.mean(np.square(y)))) if np.size(y) else 0.0
        if not math.isfinite(rms) or rms > bound:
            raise SolverError(choice, "diverged", f"the state's RMS reached {rms:.3g} > divergence_threshold = "
                              f"{bound:g}", t)
