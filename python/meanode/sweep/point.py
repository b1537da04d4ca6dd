"""One sweep point: train its seed ensemble and measure it (SPEC §7) into one dataset and one file."""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from .references import load_reference, reference_identity, run_reference
from .spec import FORMAT, Point, SweepSpec
from .store import atomic_write, point_key, point_path
from .training import problem, train

__all__ = ["compute_point", "key", "point_file", "run_point"]


def compute_point(spec: SweepSpec, point: Point, ref: dict | None):
    """Train the point's seed ensemble and measure it (SPEC §7): an :class:`xarray.Dataset`."""
    import torch
    import xarray as xr

    from .. import phase
    from ..measure import error_split, fluctuation, rms
    from ..resnet import Scaling

    t0 = time.perf_counter()
    s = spec.settings(point)
    seeds = spec.point_seeds(point)
    prob = problem(s)
    scaling = Scaling(s["a"], s["b"])
    res = train(prob, s, seeds, s["L"], s["M"], s["alpha_eff"], scaling, record_hidden=spec.measure.large_d)
    res = _from_divergence_on_nan(res)
    store_h = spec.measure.store_h
    store_h = (s["D"] <= 64) if store_h == "auto" else bool(store_h)
    h0 = prob.X @ prob.W_E.T
    tok = ("token",) if res.h.ndim == 5 else ()  # sequence data: a token axis before the coordinates
    S, SK, SSN = ("seed",), ("seed", "step"), ("seed", "step", "sample", "out")
    SSC = ("seed", "step", "sample", *tok, "coord")
    rest = tuple(range(1, res.h.ndim - 1))  # everything but the seed axis of h at one step
    v: dict[str, tuple] = {
        "loss": (SK, res.loss),
        "f": (SSN, res.f),
        "diverged": (S, res.diverged.astype(np.int8)),
        "diverged_step": (S, res.diverged_step.astype(np.int32)),
        "init_dev": (S, rms(res.h[:, 0] - h0[None], axis=rest)),
        "out_change": (S, rms(res.f[:, -1] - res.f[:, 0], axis=(1, 2))),
        "feature_change": (S, rms(res.h[:, -1] - res.h[:, 0], axis=rest) / rms(h0)),
        "unit_movement": (S, res.unit_movement),
        "fluct_f": (("step",), fluctuation(res.f, keep=1)),
        "fluct_h": (("step",), fluctuation(res.h, keep=1)),
    }
    has_eval = res.f_eval is not None
    if has_eval:
        v["f_eval"] = (("seed", "step", "sample_eval", "out"), res.f_eval)
        v["fluct_f_eval"] = (("step",), fluctuation(res.f_eval, keep=1))
        v["fluct_h_eval"] = (("step",), fluctuation(res.h_eval, keep=1))
    if store_h:
        v["h"] = (SSC, res.h)
        if has_eval:
            v["h_eval"] = (("seed", "step", "sample_eval", *tok, "coord"), res.h_eval)
    if spec.measure.linearisation or spec.measure.preactivation:
        ex = phase.extra_observables(**{k: a for k, a in prob.arrays().items() if k != "X_eval"}, L=s["L"], M=s["M"],
                                     alpha=s["alpha_eff"], eta=s["eta"], steps=s["K"], activation=s["activation"],
                                     seeds=seeds, scaling=scaling, linearisation=spec.measure.linearisation,
                                     preactivation=spec.measure.preactivation,
                                     divergence_threshold=s["divergence_threshold"])
        for k, a in ex.items():
            v[k] = (S, a)
    if spec.measure.large_d:
        v.update(_large_d_errors(s, prob, res))
    attrs = {}
    if ref is not None and ref["status"] != "ok":  # no limit to measure against: errors stay absent (NaN merged)
        v["ref_diverged"] = ((), np.int8(1 if ref["status"] == "diverged" else 2))
        attrs.update(reference_status=ref["status"], reference_reason=ref["reason"][:500], reference_file=ref["path"])
        ref = None
    if ref is not None:
        if s["dtype"] != "float64":
            warnings.warn(f"point {point.label} trains in {s['dtype']} against a float64 reference: errors below "
                          "~1e-6 are not resolved (SPEC §8)", stacklevel=2)
            attrs.update(precision_note=f"{s['dtype']} network vs float64 reference")
        D = s["D"]
        pairs = [("f", res.f, ref["f"], ("step", "sample", "out")),
                 ("h", res.h, ref["h"][..., :D], ("step", "sample", *tok, "coord"))]
        if has_eval:
            pairs += [("f_eval", res.f_eval, ref["f_eval"], ("step", "sample_eval", "out")),
                      ("h_eval", res.h_eval, ref["h_eval"][..., :D], ("step", "sample_eval", *tok, "coord"))]
        for name, x, xr_, dims in pairs:
            split = error_split(x, xr_, keep=1)
            v[f"err_{name}"] = (SK, split.per_seed)
            v[f"total_{name}"] = (("step",), split.total)
            v[f"euler_{name}"] = (("step",), split.euler)
            if name.startswith("f") or store_h:
                v[f"{name}_ref"] = (dims, xr_)
        v["ref_error"] = ((), ref["error_estimate"])
        v["ref_h_error"] = ((), ref["h_error_estimate"])
        attrs.update(reference_method=ref["method"], reference_file=ref["path"],
                     reference_error_parts=json.dumps(ref["error_parts"]), reference_error_norm=ref["error_norm"],
                     reference_tol=ref["tol"], reference_tol_met=ref["tol_met"], reference_verified=int(ref["verified"]))
    v["wall_time"] = ((), time.perf_counter() - t0)
    v["computed"] = ((), True)
    coords = {"seed": list(seeds), "step": np.arange(s["K"] + 1)}
    ds = xr.Dataset(v, coords=coords)
    if "seed" in dict(point.params):
        # one point per seed: every variable gets the seed axis; the merge recomputes the
        # aggregates over all seeds (see merge_points)
        for name in list(ds.data_vars):
            if "seed" not in ds[name].dims:
                ds[name] = ds[name].expand_dims(seed=ds["seed"].values)
    expand = {k: [val] for k, val in point.params if k != "seed"}
    if expand:
        ds = ds.expand_dims(expand)
    from .. import __version__
    ds.attrs.update(attrs, format=FORMAT, sweep=spec.name, point_key=key(spec, point),
                    label=point.label,
                    settings=json.dumps(s, default=str), seeds=json.dumps(list(seeds)), swept=json.dumps(list(spec.swept)),
                    meanode_version=__version__, torch_version=str(torch.__version__), host=platform.node(),
                    training_wall_time=float(res.wall_time))
    return ds


@functools.lru_cache(maxsize=8)
def _infinite_d(data_seed: int, alpha: float, eta: float, K: int):
    """The D = infinity limit of the linear experiment's data (it depends on no embedding)."""
    from ..large_d import linear_experiment_problem
    from ..limit import infinite_d_limit
    p = linear_experiment_problem(1, data_seed=data_seed)
    return infinite_d_limit(p.X, p.Y, alpha=alpha, eta=eta, steps=K, var_E=1.0, var_U=1.0)


@functools.lru_cache(maxsize=32)
def _closure(D: int, D_max: int, data_seed: int, embed_seed: int, alpha: float, eta: float, K: int):
    """The fixed-D closure of the point's very embedding (exact, reduced: its cost does not grow with D)."""
    from ..large_d import linear_experiment_problem
    from ..limit import embedded_closure
    p = linear_experiment_problem(D, D_max=D_max, data_seed=data_seed, embed_seed=embed_seed)
    return embedded_closure(p.X, p.Y, p.W_E, p.W_U, alpha=alpha, eta=eta, steps=K)


def _large_d_errors(s: dict, prob, res) -> dict:
    """SPEC §6's three-term split with exact references (:mod:`meanode.large_d`) at the last step:
    finite vs D = infinity (``ld_*_inf``), finite vs the fixed-D closure (``ld_*_cl``), per seed; and
    the closure vs D = infinity gap (``ld_gap_*``). ``hd``: the follow-up's max over depth of the
    mean over coordinates of |h_d - H_d|; ``h``: RMS at s = 1 (SPEC §7); ``f``: RMS output."""
    from ..large_d import step_errors
    K = s["K"]
    inf = _infinite_d(s["data_seed"], s["alpha_eff"], s["eta"], K)
    cl = _closure(s["D"], s["D_max"], s["data_seed"], s["embed_seed"], s["alpha_eff"], s["eta"], K)
    a, b = step_errors(res, inf, K, prob.W_E, prob.W_U), step_errors(res, cl, K, prob.W_E, prob.W_U)
    S = ("seed",)
    out = {f"ld_err_{name}_{which}": (S, getattr(e, attr)) for which, e in (("inf", a), ("cl", b))
           for name, attr in (("hd", "hidden_max_mean"), ("h", "hidden_rms"), ("f", "output_rms"))}
    L = res.hidden.shape[2] - 1
    depth = np.arange(L + 1) / L
    H_cl = cl.coordinates(prob.W_E, prob.W_U, s=depth).h[K][:, : prob.X.shape[0]]
    H_inf = inf.coordinates(prob.W_E, prob.W_U, s=depth).h[K][:, : prob.X.shape[0]]
    out["ld_gap_hd"] = ((), float(np.abs(H_cl - H_inf).mean(axis=(1, 2)).max()))
    out["ld_gap_h"] = ((), float(np.sqrt(np.mean((H_cl[-1] - H_inf[-1]) ** 2))))
    out["ld_gap_f"] = ((), float(np.sqrt(np.mean((cl.f[K] - inf.f[K]) ** 2))))
    out["ld_ref_error"] = ((), float(inf.error_estimate + cl.error_estimate))
    return out


def _from_divergence_on_nan(res):
    """The trainer records the step where a seed diverged as it was (the evidence, e.g. 1e120); the
    point's errors and aggregates use NaN from that step on, as the limit engine does, so that a point
    with a diverged seed has NaN aggregates from its diverged step (the stored ``loss`` keeps the value)."""
    if not bool(np.any(res.diverged)):
        return res
    K1 = res.f.shape[1]
    late = np.arange(K1)[None, :] >= np.where(res.diverged, res.diverged_step, K1)[:, None]  # (E, K+1)

    def mask(x):
        if x is None:
            return None
        x = np.array(x, copy=True)  # keeps the training dtype (float32 sweeps stay float32)
        x[np.broadcast_to(late.reshape(late.shape + (1,) * (x.ndim - 2)), x.shape)] = np.nan
        return x

    return dataclasses.replace(res, f=mask(res.f), h=mask(res.h), f_eval=mask(res.f_eval), h_eval=mask(res.h_eval),
                               hidden=mask(res.hidden))


def key(spec: SweepSpec, point: Point) -> str:
    """The hash naming ``point``'s file: everything that determines its numbers."""
    return point_key(spec, point, reference_identity(spec, point))


def point_file(spec: SweepSpec, point: Point, out_dir) -> Path:
    """Where ``point`` of ``spec`` is stored under ``out_dir``."""
    return point_path(spec, point, out_dir, reference_identity(spec, point))


def run_point(spec: SweepSpec, point: Point, out_dir, ref_dir=None) -> Path:
    """Compute one point and write its file (atomically, checksummed); returns the path.

    Pure and idempotent: the result depends only on ``spec`` and ``point`` (seeds fix the
    weights), and an existing file is returned as is (the driver checks and quarantines damaged
    ones before submitting). The reference is read from ``ref_dir`` (default
    ``out_dir/references``), computed there first if missing.
    """
    out_dir = Path(out_dir)
    path = point_file(spec, point, out_dir)
    if path.exists():
        return path
    ref_dir = Path(ref_dir) if ref_dir is not None else out_dir / "references"
    ref = None
    rpath = run_reference(spec, point, ref_dir)
    if rpath is not None:
        ref = load_reference(rpath)
    ds = compute_point(spec, point, ref)
    atomic_write(ds, path)
    return path
