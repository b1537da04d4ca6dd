"""References of a sweep: what determines one, computing it once, and reading it back.

A reference is a limit (:func:`meanode.limit.mean_ode_limit`, :func:`meanode.limit.lazy_limit`) or
the seed mean of a large finite network (SPEC §6, ``method: network``), cached on disk under a key
of everything that determines it, so sweeps sharing a reference directory compute it once.

A limit whose solve diverges or fails (a :class:`~meanode.solvers.SolverError`: an exploding
trajectory, a work cap) is recorded as such: the reference file then holds no arrays, only its
``status`` and the reason, and every point that needs it is measured without a reference (its
errors NaN, ``ref_status`` saying why), never against numbers that are not a limit.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import numpy as np

from .spec import DEFAULTS, Point, ReferenceSpec, SweepSpec, alpha_eff
from .store import POINT_ENGINE, atomic_write, read_checked, reference_path
from .training import device_name, problem, train

__all__ = ["reference_identity", "reference_file", "run_reference", "load_reference", "auto_tolerance",
           "REFERENCE_FORMAT", "ERROR_NORMS"]

REFERENCE_FORMAT = "meanode-reference/2"
#: the norm each reference method states its own error figure in
ERROR_NORMS = {"network": "rms (standard error of the seed mean over steps, samples, outputs)",
               "quadrature": "max-abs (over steps, samples, outputs)", "closure": "max-abs (over steps, samples, outputs)",
               "lazy": "max-abs (over steps, samples, outputs)"}


def _block_of(s: dict):
    from ..blocks import TwoLayerBlock
    from .training import block
    return block(s) or TwoLayerBlock(s["D"], s["activation"])


def _method(ref: ReferenceSpec, s: dict) -> str:
    if ref.method in ("network", "none"):
        return ref.method
    from ..limit import resolve_method
    return resolve_method(ref.method, _block_of(s))


#: prefactor of the predicted finite-network output error ``C alpha sqrt(D / (L M))`` used to set a
#: reference's tolerance before anything is trained: measured on the quick preset's widths (RMS output
#: error 0.1-0.15 sqrt(D/(L M)) at alpha = 1, K = 3..15); the smaller value makes the tolerance tighter
PREDICTED_ERROR_PREFACTOR = 0.1
#: the reference is asked for this fraction of the smallest error it will be compared with
TOLERANCE_FRACTION = 1 / 20


def _predicted_error(s: dict) -> float:
    """Predicted RMS output error of the finite network (before training), SPEC §3's fluctuation term."""
    return PREDICTED_ERROR_PREFACTOR * s["alpha_eff"] * math.sqrt(s["D"] / (s["L"] * s["M"]))


def auto_tolerance(spec: SweepSpec, point: Point) -> float:
    """1/20 of the smallest finite output error among the points of ``spec`` that share ``point``'s
    reference, predicted from their L*M (:data:`PREDICTED_ERROR_PREFACTOR`) before anything runs."""
    return _tolerances(spec)[_base_key(spec.settings(point))]


def _base_key(s: dict) -> tuple:
    return tuple(s[k] for k in ("N", "N_eval", "d_in", "d_out", "data_seed", "embed_seed", "D_max", "eta", "K",
                                "activation", "D", "alpha_eff", "block", "d_head", "T", "data"))


@functools.lru_cache(maxsize=64)
def _tolerances(spec: SweepSpec) -> dict:
    out: dict = {}
    for p in spec.points():
        s = spec.settings(p)
        key = _base_key(s)
        out[key] = min(out.get(key, math.inf), TOLERANCE_FRACTION * _predicted_error(s))
    return out


def reference_identity(spec: SweepSpec, point: Point) -> dict | None:
    """What determines a point's reference (None for method ``none``)."""
    s = spec.settings(point)
    ref = spec.reference
    method = _method(ref, s)
    if method == "none":
        return None
    ident = dict(method=method, N=s["N"], N_eval=s["N_eval"], d_in=s["d_in"], d_out=s["d_out"],
                 data_seed=s["data_seed"], embed_seed=s["embed_seed"], D_max=s["D_max"], eta=s["eta"], K=s["K"],
                 activation=s["activation"], depth_nodes=ref.depth_nodes, rtol=ref.rtol, atol=ref.atol)
    for k in ("block", "d_head", "T", "data"):  # recorded where they differ from the 2LP defaults (stable keys)
        if s.get(k, DEFAULTS[k]) != DEFAULTS[k] or (k in ("d_head", "T") and s.get("block") == "attention"):
            ident[k] = s[k]
    if method == "network":
        ident.update(D=ref.D if ref.D is not None else s["D_max"], L=ref.L, M=ref.M, seeds=list(ref.seeds),
                     alpha=s["alpha_eff"] if s.get("gamma") is None else None, gamma=s.get("gamma"),
                     alpha0=s["alpha"], divergence_threshold=s["divergence_threshold"], dtype=s["dtype"])
        for k in ("depth_nodes", "rtol", "atol"):
            ident.pop(k)
    else:
        ident["D"] = s["D"]
        if method != "lazy":
            ident["alpha"] = s["alpha_eff"]
        if method == "quadrature":
            tol = auto_tolerance(spec, point) if ref.tol == "auto" else ref.tol
            ident.update(level=ref.level, coarse=ref.coarse, rule=ref.rule,
                         tol=None if tol is None else float(f"{tol:.3g}"), max_time=ref.max_time if tol else None)
    return ident


def reference_file(spec: SweepSpec, point: Point, ref_dir) -> Path | None:
    """Where the reference of ``point`` is cached (None: method ``none``)."""
    return reference_path(reference_identity(spec, point), ref_dir)


def _network(spec: SweepSpec, s: dict, ident: dict):
    ref = spec.reference
    Dr = ident["D"]
    rs = dict(s, D=Dr, L=ref.L, M=ref.M)
    rs["alpha_eff"] = alpha_eff(s["alpha"], Dr, s.get("gamma"))
    res = train(problem(rs), rs, tuple(ref.seeds), ref.L, ref.M, rs["alpha_eff"])
    if res.diverged.any():
        raise RuntimeError(f"the reference network (L={ref.L}, M={ref.M}, D={Dr}) diverged for seeds "
                           f"{np.asarray(ref.seeds)[res.diverged].tolist()}: choose a smaller eta")
    E = len(ref.seeds)
    # statistical error of the seed mean: the standard error, RMS over samples and outputs,
    # largest over the steps (the Euler bias of the reference's own L is not included)
    se = lambda x: (float(np.max(np.sqrt(np.mean(x.var(axis=0, ddof=1), axis=tuple(range(1, x.ndim - 1))) / E)))  # noqa: E731
                    if E > 1 else float("nan"))
    err = se(res.f)
    mean = lambda x: None if x is None else x.mean(0)  # noqa: E731
    arrays = dict(f=mean(res.f), h=mean(res.h), f_eval=mean(res.f_eval), h_eval=mean(res.h_eval))
    extra = dict(h_error_estimate=se(res.h), verified=1, warnings="[]", tol=float("nan"), tol_met=-1)
    return arrays, err, {"seed_mean_standard_error": err}, f"network(L={ref.L}, M={ref.M}, D={Dr}, {E} seeds)", extra


def _limit(spec: SweepSpec, s: dict, method: str, ident: dict):
    from ..limit import lazy_limit, mean_ode_limit
    ref = spec.reference
    prob = problem(s)
    common = dict(activation=s["activation"], rtol=ref.rtol, atol=ref.atol, depth_nodes=ref.depth_nodes,
                  device=device_name(s["device"]) if method == "quadrature" else "cpu")
    from .training import block
    if block(s) is not None:
        common["block"] = block(s)
    if method == "lazy":
        lim = lazy_limit(**prob.arrays(), eta=s["eta"], steps=s["K"], divergence_threshold=s["divergence_threshold"],
                         **common)
    else:
        opts = {k: getattr(ref, k) for k in ("level", "coarse", "rule") if getattr(ref, k) is not None}
        if method == "quadrature" and ident.get("tol") is not None:
            opts.update(tol=ident["tol"], max_time=ident["max_time"])
        lim = mean_ode_limit(**prob.arrays(), alpha=s["alpha_eff"], eta=s["eta"], steps=s["K"], method=method,
                             divergence_threshold=s["divergence_threshold"], **common, **opts)
    if lim.diverged:
        from ..solvers import SolverError
        raise SolverError(lim.solver, "diverged", f"the limit diverged at step {lim.diverged_step} (the trainer's "
                          "rule: a non-finite state or an RMS above the divergence threshold)", 1.0)
    arrays = dict(f=lim.f, h=lim.h, f_eval=lim.f_eval, h_eval=lim.h_eval)
    extra = dict(h_error_estimate=float(lim.h_error_estimate), verified=int(lim.verified),
                 warnings=json.dumps(list(lim.warnings)), tol=float("nan") if lim.tol is None else lim.tol,
                 tol_met=-1 if lim.tol_met is None else int(lim.tol_met))
    return arrays, float(lim.error_estimate), {k: float(v) for k, v in lim.error_parts.items()}, lim.method, extra


def run_reference(spec: SweepSpec, point: Point, ref_dir) -> Path | None:
    """Compute the reference of ``point`` unless a valid file is cached; returns its path (None:
    method none). A damaged cached file is left for the caller to quarantine (the driver does)."""
    import xarray as xr

    from ..solvers import SolverError

    ident = reference_identity(spec, point)
    path = reference_path(ident, ref_dir)
    if path is None or path.exists():
        return path
    s = spec.settings(point)
    method = ident["method"]
    t0 = time.perf_counter()
    status, reason = "ok", ""
    try:
        arrays, err, parts, label, extra = (_network(spec, s, ident) if method == "network"
                                            else _limit(spec, s, method, ident))
    except SolverError as e:  # an exploding trajectory or a work cap: recorded, never a number
        status, reason = ("diverged" if getattr(e, "status", None) == "diverged" else "failed"), str(e)
        arrays, err, parts, label = {}, float("nan"), {}, method
        extra = dict(h_error_estimate=float("nan"), verified=0, warnings="[]", tol=float("nan"), tol_met=-1)
    data = {}
    if status == "ok":
        tok = ("token",) if arrays["h"].ndim == 4 else ()  # sequence data
        data = {"f": (("step", "sample", "out"), arrays["f"]), "h": (("step", "sample", *tok, "coord"), arrays["h"])}
        if arrays["f_eval"] is not None:
            data["f_eval"] = (("step", "sample_eval", "out"), arrays["f_eval"])
            data["h_eval"] = (("step", "sample_eval", *tok, "coord"), arrays["h_eval"])
    ds = xr.Dataset(data, attrs=dict(format=REFERENCE_FORMAT, method=label, status=status, reason=reason,
                                     error_estimate=err, error_norm=ERROR_NORMS[method],
                                     error_parts=json.dumps(parts), identity=json.dumps(ident, default=str),
                                     wall_time=time.perf_counter() - t0, **extra))
    atomic_write(ds, path)
    return path


def load_reference(path: Path) -> dict:
    """A reference file's arrays and attributes (checksum verified: raises
    :class:`~meanode.sweep.store.DamagedFile`)."""
    ds = read_checked(path, POINT_ENGINE["engine"])
    out = {k: ds[k].values for k in ds.data_vars}
    out.update(error_estimate=float(ds.attrs["error_estimate"]), method=str(ds.attrs["method"]),
               error_parts=json.loads(ds.attrs["error_parts"]), wall_time=float(ds.attrs["wall_time"]),
               status=str(ds.attrs.get("status", "ok")), reason=str(ds.attrs.get("reason", "")),
               error_norm=str(ds.attrs.get("error_norm", "")), path=path.name,
               h_error_estimate=float(ds.attrs.get("h_error_estimate", float("nan"))),
               verified=bool(int(ds.attrs.get("verified", 1))), tol=float(ds.attrs.get("tol", float("nan"))),
               tol_met=int(ds.attrs.get("tol_met", -1)), warnings=json.loads(ds.attrs.get("warnings", "[]")))
    return out
