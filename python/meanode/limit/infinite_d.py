"""The D = infinity limit of the identity-activation closure (SPEC §4.1, §6); derivation in
``docs/infinite_d.md``.

For sigma = id every vector of the closure lies in ``V = span(columns of W_E, W_U)``, a space
of dimension at most ``d = d_in + d_out`` whatever D is. Write ``Phi = [W_E, W_U] = sqrt(D) Q R``
(Q orthonormal D x r, R r x d, ``R^T R = Gamma = Phi^T Phi / D``) and, at every depth s,

    h_k(s, x) = sqrt(D) Q a_k(s, x),       b_k(s, x_n) = Q beta_k(s, x_n) / sqrt(D),

so that ``<h, h'>/D = a . a'``, ``<h, b> = a . beta``, ``D <b, b'> = beta . beta'``. The unit
features ``mu = Q^T u / sqrt(D)``, ``nu = Q^T v / sqrt(D)`` start as N(0, I_2r) and the closure
becomes, exactly at every D (``c = eta / alpha``, ``R = [R_E, R_U]``):

    d/ds a    =  alpha C_k(s) a,      a_k(0, x) = R_E x,            f_k(x) = R_U^T a_k(1, x)
    d/ds beta = -alpha C_k(s)^T beta,  beta_k(1, x_n) = R_U (f_k(x_n) - y_n) / N
    S_{k+1}   = T S_k T^T,  T = [[I, -c A_k], [-c A_k^T, I]],  A_k = sum_n a_k(x_n) beta_k(x_n)^T,
    S_0 = I_2r,  C_k = E[nu_k mu_k^T] = lower-left block of S_k.

The fixed-D closure depends on the embeddings only through Gamma; as D -> infinity with iid rows,
``Gamma -> diag(var_E I, var_U I)``, so the limit is this system with
``R_E = [sqrt(var_E) I; 0]``, ``R_U = [0; sqrt(var_U) I]`` (:func:`infinite_d_limit`), and the
fixed-D closure of given embeddings is the same system with R from a QR factorisation
(:func:`embedded_closure`; cost independent of D). A coordinate d of h is ``phi_d . R^{-1} a``
with ``phi_d = (W_E[d], W_U[d])`` (:meth:`InfiniteDResult.coordinates`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .._checks import as_tensor, check_problem, nonnegative_int, positive_float
from ..solvers import ODEStats, SolverChoice, integrate, resolve_solver
from .depth import DepthGrid

__all__ = ["InfiniteDResult", "Coordinates", "infinite_d_limit", "embedded_closure", "gram_drift"]

_F64 = torch.float64


@dataclass(frozen=True, eq=False)
class Coordinates:
    """Per-coordinate processes for m given rows ``(W_E[d], W_U[d])``, at depths ``s (S,)``.

    h: (K+1, S, n, m)  ``h_{k,d}(s, x)`` (training inputs first, then held-out ones).
    b: (K, S, N, m)    ``D * b_{k,d}(s, x_n)`` (the adjoint is O(1/D) per coordinate; D b is O(1)).
    """

    h: np.ndarray
    b: np.ndarray
    s: np.ndarray


@dataclass(frozen=True, eq=False)
class InfiniteDResult:
    """The identity closure in its reduced frame (``docs/infinite_d.md`` §2), K steps.

    f: (K+1, N, d_out) outputs (step k before the k-th update); f_eval: (K+1, N_eval, d_out) or None.
    loss: (K+1,) ``(1/N) sum_n |f_k(x_n) - y_n|^2 / 2``.
    error_estimate: max-abs error *estimate* of ``f`` (all steps, samples, outputs): the sum of
        ``error_parts`` = depth interpolation (Chebyshev tail), solver allowance (10 x the local
        tolerance at the output scale) and refinement (gap to a run on 2Q-1 depth nodes at a
        tenth of the tolerances; 0 when not run). Measured parts, not a proof of a bound.
    A: (K+1, Q, n, r) ``a_k(s_q, x)``; Bc: (K, Q, N, r) ``beta_k(s_q, x_n)``;
    Sigma: (K+1, Q, 2r, 2r) covariance of the unit features ``(mu, nu)`` at step k.
    R: (r, d) the frame, ``Gamma = R^T R``, columns ``[:d_in]`` for W_E and ``[d_in:]`` for W_U.
    D: the embedding dimension (``math.inf`` for :func:`infinite_d_limit`).
    """

    f: np.ndarray
    f_eval: np.ndarray | None
    loss: np.ndarray
    error_estimate: float
    error_parts: dict
    A: np.ndarray
    Bc: np.ndarray
    Sigma: np.ndarray
    R: np.ndarray
    D: float
    depth: DepthGrid
    solver: SolverChoice
    stats: ODEStats
    config: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.f.shape[0] - 1

    @property
    def d_in(self) -> int:
        return self.R.shape[1] - self.f.shape[2]

    def __repr__(self) -> str:
        return (f"InfiniteDResult(D={self.D}, steps={self.steps}, N={self.f.shape[1]}, r={self.R.shape[0]}, "
                f"error_estimate={self.error_estimate:.2e}, solver='{self.solver}')")

    def summary(self) -> str:
        """A few lines: what was solved, the loss, the error estimate and its parts, the work done."""
        parts = ", ".join(f"{k} {v:.1e}" for k, v in self.error_parts.items())
        st = self.stats
        what = "D = infinity limit" if self.D == float("inf") else f"fixed-D closure, D = {self.D}"
        return (f"identity closure ({what}, frame dimension r = {self.R.shape[0]}): K={self.steps}, "
                f"loss {self.loss[0]:.6f} -> {self.loss[-1]:.6f}\n"
                f"  output error estimate {self.error_estimate:.2e} (max-abs; {parts})\n"
                f"  solver {self.solver}: {st.nfev} RHS evaluations, {st.nsteps} steps, "
                f"{st.nsolves} solves, Q = {self.depth.Q} depth nodes, {st.wall_time:.2f} s")

    def _at(self, V: np.ndarray, s) -> tuple[np.ndarray, np.ndarray]:
        """``V (K', Q, ...)`` -> values at s: ``(K', S, ...)`` and the s used (nodes when None)."""
        if s is None:
            return V, self.depth.s.copy()
        s_arr = np.atleast_1d(np.asarray(s, dtype=float))
        if s_arr.ndim != 1 or np.any(~np.isfinite(s_arr)) or np.any(s_arr < 0) or np.any(s_arr > 1):
            raise ValueError(f"s must be depths in [0, 1] (a scalar or 1-D), got {s!r}")
        vals = torch.from_numpy(np.ascontiguousarray(V)).movedim(1, 0)  # (Q, K', ...)
        out = self.depth.interp_many(vals, s_arr).movedim(0, 1).numpy()  # (K', S, ...)
        return out, s_arr

    def coordinates(self, W_E_rows, W_U_rows, s=None) -> Coordinates:
        """Coordinate processes for given rows: ``h_{k,d}(s, x) = phi_d . R^+ a_k(s, x)`` and
        ``D b_{k,d}(s, x_n) = phi_d . R^+ beta_k(s, x_n)``, ``phi_d = (W_E[d], W_U[d])``.

        ``W_E_rows (m, d_in)``, ``W_U_rows (m, d_out)``: any rows at D = infinity; for
        :func:`embedded_closure`, rows of the very embedding it was built from (then
        ``coordinates(W_E, W_U)`` is the closure's full ``h_k(s, x)``). ``s``: depths (S,), or
        None for the depth nodes. Returns :class:`Coordinates` (shapes there).
        """
        d_in, d_out = self.d_in, self.f.shape[2]
        E = np.asarray(W_E_rows, dtype=float)
        U = np.asarray(W_U_rows, dtype=float)
        if E.ndim != 2 or E.shape[1] != d_in:
            raise ValueError(f"W_E_rows must have shape (m, d_in) = (m, {d_in}), got {E.shape}")
        if U.ndim != 2 or U.shape[1] != d_out or U.shape[0] != E.shape[0]:
            raise ValueError(f"W_U_rows must have shape (m, d_out) = ({E.shape[0]}, {d_out}), got {U.shape}")
        if not (np.all(np.isfinite(E)) and np.all(np.isfinite(U))):
            raise ValueError("W_E_rows and W_U_rows must be finite")
        P = np.concatenate([E, U], axis=1) @ np.linalg.pinv(self.R)  # (m, r)
        A, s_used = self._at(self.A, s)
        Bc, _ = self._at(self.Bc, s)
        return Coordinates(h=A @ P.T, b=Bc @ P.T, s=s_used)

    def gram(self, s=None) -> dict:
        """Gram kernels indexed by (step, sample) pairs at depths ``s (S,)`` (None: the nodes).

        ``hh (S, K+1, n, K+1, n)``: ``<h_j(s, x), h_k(s, x')> / D``;
        ``hb (S, K+1, n, K, N)``: ``<h_j(s, x), b_k(s, x_n)>``;
        ``bb (S, K, N, K, N)``: ``D <b_j(s, x_n), b_k(s, x_m)>``;
        ``hE (S, K+1, n, d_in)``, ``hU (S, K+1, n, d_out)``: ``W_E^T h_j / D``, ``W_U^T h_j / D``
        (``hU`` at s = 1 is f); ``bE (S, K, N, d_in)``, ``bU (S, K, N, d_out)``: ``W_E^T b_j``, ``W_U^T b_j``.
        Exact for :func:`embedded_closure`, the D -> infinity limits for :func:`infinite_d_limit`.
        """
        A, _ = self._at(self.A, s)
        Bc, _ = self._at(self.Bc, s)
        A = np.moveaxis(A, 1, 0)  # (S, K+1, n, r)
        Bc = np.moveaxis(Bc, 1, 0)
        RE, RU = self.R[:, : self.d_in], self.R[:, self.d_in:]
        return dict(hh=np.einsum("sjxr,skyr->sjxky", A, A), hb=np.einsum("sjxr,skyr->sjxky", A, Bc),
                    bb=np.einsum("sjxr,skyr->sjxky", Bc, Bc), hE=A @ RE, hU=A @ RU, bE=Bc @ RE, bU=Bc @ RU)


def gram_drift(Khh: np.ndarray, Kbb: np.ndarray, steps_of: np.ndarray, c: float) -> np.ndarray:
    """The step-sample form of the closure's drift (``docs/infinite_d.md`` §4).

    Over the pairs ``rho = (j, n)`` with ``j < k`` (``steps_of[rho] = j``), with the kernels
    ``Khh[rho, sigma] = <h_rho, h_sigma>/D`` and ``Kbb[rho, sigma] = D <b_rho, b_sigma>`` at one
    depth, returns ``Lambda (P, P)`` such that ``E[v_k u_k^T] = D sum_{rho, sigma} b_rho Lambda_{rho sigma}
    h_sigma^T``, i.e. ``d/ds h_k(x) = alpha sum D b_rho Lambda_{rho sigma} <h_sigma, h_k(x)>/D``:

        Lambda = -c M^T - c (I + c^2 L_h M L_b) - c^3 K_h L_b^T M^T - c^3 L_h M (K_b + c^2 L_b K_h L_b^T) M^T

    ``L_h, L_b``: Khh, Kbb restricted to strictly earlier steps (``j_sigma < j_rho``),
    ``M = (I - c^2 L_b L_h)^{-1}``.
    """
    Kh, Kb = np.asarray(Khh, dtype=float), np.asarray(Kbb, dtype=float)
    j = np.asarray(steps_of)
    earlier = j[None, :] < j[:, None]
    Lh, Lb = np.where(earlier, Kh, 0.0), np.where(earlier, Kb, 0.0)
    eye = np.eye(Kh.shape[0])
    M = np.linalg.inv(eye - c**2 * Lb @ Lh)
    return (-c * M.T - c * (eye + c**2 * Lh @ M @ Lb) - c**3 * Kh @ Lb.T @ M.T
            - c**3 * Lh @ M @ (Kb + c**2 * Lb @ Kh @ Lb.T) @ M.T)


def _check_solver(solver: str) -> SolverChoice:
    choice = resolve_solver(solver)
    if choice.backend == "julia":
        raise ValueError("solver: the julia backend does not run the D = infinity closure; use a scipy or "
                         "torch solver name")
    return choice


def _check_depth_nodes(depth_nodes) -> int:
    if isinstance(depth_nodes, bool) or not isinstance(depth_nodes, int) or depth_nodes < 3:
        raise ValueError(f"depth_nodes must be an integer >= 3, got {depth_nodes!r}")
    return depth_nodes


def _check_data(X, Y, X_eval) -> tuple[Tensor, Tensor, Tensor | None]:
    dev = torch.device("cpu")
    X = as_tensor("X", X, 2, _F64, dev)
    Y = as_tensor("Y", Y, 2, _F64, dev)
    if X.shape[0] < 1:
        raise ValueError("X must hold at least one sample")
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"X and Y disagree on the number of samples: {X.shape[0]} vs {Y.shape[0]}")
    if X.shape[1] < 1 or Y.shape[1] < 1:
        raise ValueError(f"X and Y need at least one column, got shapes {tuple(X.shape)}, {tuple(Y.shape)}")
    if X_eval is not None:
        X_eval = as_tensor("X_eval", X_eval, 2, _F64, dev)
        if X_eval.shape[1] != X.shape[1]:
            raise ValueError(f"X_eval has {X_eval.shape[1]} columns, expected d_in = {X.shape[1]}")
    return X, Y, X_eval


def infinite_frame(d_in: int, d_out: int, var_E: float = 1.0, var_U: float = 1.0) -> np.ndarray:
    """``R (d, d) = diag(sqrt(var_E) I_{d_in}, sqrt(var_U) I_{d_out})``: the frame of
    ``Gamma_inf = lim Phi^T Phi / D = diag(var_E I, var_U I)``."""
    return np.diag(np.r_[np.full(d_in, np.sqrt(var_E)), np.full(d_out, np.sqrt(var_U))])


def embedding_frame(W_E: np.ndarray, W_U: np.ndarray) -> np.ndarray:
    """``R (r, d)``, ``r = min(D, d)``, from the QR factorisation ``[W_E, W_U] / sqrt(D) = Q R``."""
    Phi = np.concatenate([np.asarray(W_E, dtype=float), np.asarray(W_U, dtype=float)], axis=1)
    return np.linalg.qr(Phi / np.sqrt(Phi.shape[0]), mode="r")


def _solve_frames(R: Tensor, X: Tensor, Y: Tensor, X_eval: Tensor | None, alpha: float, eta: float, K: int,
                  choice: SolverChoice, rtol: float, atol: float, grid: DepthGrid) -> dict:
    """The reduced closure for a batch of frames ``R (B, r, d)`` at once (one ODE solve per step
    and direction for the whole batch). Returns tensors ``A (K+1, Q, B, n, r)``,
    ``Bc (K, Q, B, N, r)``, ``Sigma (K+1, Q, B, 2r, 2r)``, ``f (K+1, B, n, d_out)``, the
    per-frame relative Chebyshev tail ``tail (B,)`` and the :class:`ODEStats`."""
    Bn, r, _ = R.shape
    N, d_in = X.shape
    RE, RU = R[..., :d_in], R[..., d_in:]
    X_all = X if X_eval is None else torch.cat([X, X_eval])
    Q, c = grid.Q, eta / alpha
    a0 = torch.einsum("bri,ni->bnr", RE, X_all)  # (B, n, r)
    S = torch.eye(2 * r, dtype=_F64).expand(Q, Bn, 2 * r, 2 * r).clone()
    stats = ODEStats()
    tail = torch.zeros(Bn, dtype=_F64)
    As, Bs, Ss, fs = [], [], [], []
    for k in range(K + 1):
        Ss.append(S)
        C = S[..., r:, :r].contiguous()  # E[nu mu^T] on the nodes, (Q, B, r, r)
        if k == 0:  # C = 0: the drift vanishes and h_0(s, x) = W_E x exactly
            A = a0.expand(Q, *a0.shape).clone()
        else:
            def forward(s, a, C=C):
                return alpha * torch.einsum("bij,bnj->bni", grid.interp(C, s), a)
            A, st = integrate(forward, a0, 0.0, 1.0, grid.s, choice, rtol, atol)
            stats.add(st)
            tail = torch.maximum(tail, _relative_tail(grid, A))
        f = torch.einsum("brc,bnr->bnc", RU, A[-1])
        As.append(A)
        fs.append(f)
        if k == K:
            break
        beta1 = torch.einsum("brc,bnc->bnr", RU, f[:, :N] - Y) / N
        if k == 0:
            Bk = beta1.expand(Q, *beta1.shape).clone()
        else:
            def adjoint(s, b, C=C):
                return -alpha * torch.einsum("bji,bnj->bni", grid.interp(C, s), b)
            Bk, st = integrate(adjoint, beta1, 1.0, 0.0, grid.s[::-1].copy(), choice, rtol, atol)
            stats.add(st)
            Bk = Bk.flip(0)
            tail = torch.maximum(tail, _relative_tail(grid, Bk))
        Bs.append(Bk)
        At = torch.einsum("qbnr,qbnt->qbrt", A[:, :, :N], Bk)  # sum_n a_n beta_n^T, (Q, B, r, r)
        T = torch.eye(2 * r, dtype=_F64).expand(Q, Bn, 2 * r, 2 * r).clone()
        T[..., :r, r:] = -c * At
        T[..., r:, :r] = -c * At.transpose(-1, -2)
        S = T @ S @ T.transpose(-1, -2)
        tail = torch.maximum(tail, _relative_tail(grid, S[..., r:, :r]))
    Bc = torch.stack(Bs) if Bs else torch.empty((0, Q, Bn, N, r), dtype=_F64)
    return dict(A=torch.stack(As), Bc=Bc, Sigma=torch.stack(Ss), f=torch.stack(fs), tail=tail, stats=stats)


def _relative_tail(grid: DepthGrid, V: Tensor) -> Tensor:
    """Per-frame Chebyshev tail of ``V (Q, B, ...)`` relative to its size, ``(B,)``."""
    coef = grid.coefficients(V).abs().flatten(2)  # (Q, B, rest)
    scale = V.abs().flatten(2).amax(dim=(0, 2))
    tail = 2.0 * coef[-3:].amax(dim=(0, 2))
    return torch.where(scale > 0, tail / torch.where(scale > 0, scale, 1.0), torch.zeros_like(tail))


def _solve(R: np.ndarray, D: float, X, Y, X_eval, alpha, eta, steps, solver, rtol, atol, depth_nodes,
           refine: bool) -> InfiniteDResult:
    """Validate the scalars, solve for frame ``R (r, d)``, estimate the error, package."""
    t0 = time.perf_counter()
    K = nonnegative_int("steps", steps)
    alpha = positive_float("alpha", alpha)
    eta = positive_float("eta", eta, allow_zero=True)
    rtol, atol = positive_float("rtol", rtol), positive_float("atol", atol)
    Q = _check_depth_nodes(depth_nodes)
    if not isinstance(refine, bool):
        raise TypeError(f"refine must be True or False, got {refine!r}")
    choice = _check_solver(solver)
    Rt = torch.as_tensor(R, dtype=_F64)[None]
    grid = DepthGrid(Q)
    raw = _solve_frames(Rt, X, Y, X_eval, alpha, eta, K, choice, rtol, atol, grid)
    f_all = raw["f"][:, 0].numpy()
    scale = float(np.max(np.abs(f_all))) if f_all.size else 0.0
    parts = {"depth_interpolation": float(raw["tail"][0]) * scale,
             "solver": 10.0 * (rtol * scale + atol), "refinement": 0.0}
    stats = raw["stats"]
    if refine:  # nested Chebyshev-Lobatto nodes (2Q - 1) and a tenth of the tolerances (SciPy floor 1e-13)
        fine = _solve_frames(Rt, X, Y, X_eval, alpha, eta, K, choice, max(rtol / 10, 1e-13), max(atol / 10, 1e-16),
                             DepthGrid(2 * Q - 1))
        parts["refinement"] = float(np.max(np.abs(fine["f"][:, 0].numpy() - f_all))) if f_all.size else 0.0
        stats.add(fine["stats"])
    stats.wall_time = time.perf_counter() - t0
    N = X.shape[0]
    loss = 0.5 * np.sum((f_all[:, :N] - Y.numpy()) ** 2, axis=(1, 2)) / N
    config = dict(alpha=alpha, eta=eta, steps=K, D=D, N=N, d_in=X.shape[1], d_out=Y.shape[1], rtol=rtol,
                  atol=atol, depth_nodes=Q, refine=refine)
    return InfiniteDResult(
        f=f_all[:, :N], f_eval=f_all[:, N:] if X_eval is not None else None, loss=loss,
        error_estimate=float(sum(parts.values())), error_parts=parts,
        A=raw["A"][:, :, 0].numpy(), Bc=raw["Bc"][:, :, 0].numpy(), Sigma=raw["Sigma"][:, :, 0].numpy(),
        R=np.asarray(R, dtype=float), D=D, depth=grid, solver=choice, stats=stats, config=config)


def infinite_d_limit(X, Y, *, alpha: float, eta: float, steps: int, var_E: float = 1.0, var_U: float = 1.0,
                     X_eval=None, solver: str = "DOP853", rtol: float = 1e-12, atol: float = 1e-14,
                     depth_nodes: int = 33, refine: bool = True) -> InfiniteDResult:
    """The exact D = infinity limit of the identity-activation Mean ODE closure (SPEC §4.1, §6).

    The entries of ``W_E (D, d_in)`` and ``W_U (D, d_out)`` are iid N(0, var_E) and N(0, var_U)
    (SPEC §1: var_E = 1/d_in, var_U = 1; the follow-up paper: both 1) and D -> infinity with
    N, K, d_in, d_out fixed; units ``(u, v) ~ N(0, D I_2D)`` at init, ``lam = eta L M D / alpha^2``.
    The limit is deterministic; ``f_0 = 0``; only the product var_E * var_U affects f.

    Arguments:
        X (N, d_in), Y (N, d_out): training data; X_eval (N_eval, d_in): held-out inputs.
        alpha, eta, steps: residual scale, normalised learning rate, K.
        var_E, var_U: variances of the embedding and readout entries.
        solver, rtol, atol: an explicit solver name of :mod:`meanode.solvers` (scipy or torch
            backend) and its tolerances.
        depth_nodes: Q Chebyshev–Lobatto nodes in depth carrying every depth-dependent quantity.
        refine: also solve on 2Q - 1 nodes at a tenth of the tolerances and count the gap in
            the error estimate (doubles the cost, which is milliseconds to seconds).

    Returns an :class:`InfiniteDResult` (``.f``, ``.error_estimate``, ``.gram()``,
    ``.coordinates(W_E_rows, W_U_rows)``).
    """
    X, Y, X_eval = _check_data(X, Y, X_eval)
    var_E, var_U = positive_float("var_E", var_E), positive_float("var_U", var_U)
    R = infinite_frame(X.shape[1], Y.shape[1], var_E, var_U)
    res = _solve(R, float("inf"), X, Y, X_eval, alpha, eta, steps, solver, rtol, atol, depth_nodes, refine)
    res.config.update(var_E=var_E, var_U=var_U)
    return res


def embedded_closure(X, Y, W_E, W_U, *, alpha: float, eta: float, steps: int, X_eval=None,
                     solver: str = "DOP853", rtol: float = 1e-12, atol: float = 1e-14, depth_nodes: int = 33,
                     refine: bool = True) -> InfiniteDResult:
    """The fixed-D identity closure (``mean_ode_limit(..., activation="identity",
    method="closure")``, SPEC §4.1) for these very embeddings, exactly, through its reduction to
    the span of the columns of W_E and W_U: the cost does not grow with D (the 2D x 2D closure
    costs O(D^3) per step). ``coordinates(W_E, W_U)`` gives the closure's ``h_k(s, x)``.

    Arguments as :func:`infinite_d_limit`, with ``W_E (D, d_in)``, ``W_U (D, d_out)`` instead of
    the variances.
    """
    X, Y, W_E, W_U, X_eval = check_problem(X, Y, W_E, W_U, X_eval, _F64, torch.device("cpu"))
    R = embedding_frame(W_E.numpy(), W_U.numpy())
    return _solve(R, int(W_E.shape[0]), X, Y, X_eval, alpha, eta, steps, solver, rtol, atol, depth_nodes, refine)
