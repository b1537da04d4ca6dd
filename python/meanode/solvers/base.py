"""The types every solver backend shares: what ran, the work it did, and how it failed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SolverChoice", "ODEStats", "SolverError"]


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
