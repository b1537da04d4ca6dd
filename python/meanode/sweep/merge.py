"""Merging point files into one dataset with the swept parameters as dimensions."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .spec import DEFAULTS, SweepSpec
from .store import MERGED_ENGINE, read_checked

__all__ = ["merge_points", "load_sweep", "DIM_ORDER"]

DIM_ORDER = ("seed", "step", "sample", "sample_eval", "out", "token", "coord")
_INT_FILL = {"diverged": -1, "diverged_step": -2, "ref_diverged": 0}


def merge_points(spec: SweepSpec, paths: Sequence[os.PathLike]):
    """Merge point files into one :class:`xarray.Dataset` with the swept parameters as dimensions
    (each file's checksum verified: a damaged one raises :class:`~meanode.sweep.store.DamagedFile`)."""
    import xarray as xr

    dsets = [read_checked(Path(p)) for p in paths]
    swept = [k for k in spec.swept if k != "seed"]
    coords: dict[str, list] = {}
    for k in swept:
        seen = {}
        for ds in dsets:
            for x in ds[k].values.tolist():
                seen[x] = True
        try:
            vals = sorted(seen)
        except TypeError:
            vals = list(seen)
        coords[k] = vals
    seeds = sorted({int(x) for ds in dsets for x in ds["seed"].values})
    coords["seed"] = seeds
    sizes = {}
    for ds in dsets:
        for d, n in ds.sizes.items():
            if d not in coords:
                sizes[d] = max(sizes.get(d, 0), n)
    for d, n in sizes.items():
        coords[d] = list(range(n))
    names: dict[str, tuple] = {}
    dtypes: dict[str, np.dtype] = {}
    for ds in dsets:
        for name, var in ds.data_vars.items():
            dims = tuple(swept) + tuple(d for d in var.dims if d not in swept)
            names.setdefault(name, dims)
            dtypes.setdefault(name, var.dtype)
    order = {d: i for i, d in enumerate(list(swept) + list(DIM_ORDER))}
    out = {}
    for name, dims in names.items():
        dims = tuple(sorted(dims, key=lambda d: order.get(d, len(order))))
        shape = tuple(len(coords[d]) for d in dims)
        dt = dtypes[name]
        if dt.kind == "f":
            arr = np.full(shape, np.nan, dtype=dt)
        elif dt.kind == "b":
            arr = np.zeros(shape, dtype=bool)
        elif dt.kind in "iu":
            arr = np.full(shape, _INT_FILL.get(name, -1), dtype=dt)
        else:
            arr = np.full(shape, "", dtype=object)
        out[name] = (dims, arr)
    index = {d: {v: i for i, v in enumerate(coords[d])} for d in coords}
    for ds in dsets:
        for name, var in ds.data_vars.items():
            dims = out[name][0]
            var = var.transpose(*[d for d in dims if d in var.dims])
            sel = []
            for d in dims:
                if d in swept or d == "seed":
                    sel.append([index[d][x] for x in ds[d].values.tolist()])
                else:
                    sel.append(list(range(var.sizes[d])))
            out[name][1][np.ix_(*sel)] = var.values
    merged = xr.Dataset(out, coords=coords)
    if "seed" in spec.swept:
        merged = _aggregate_over_seeds(merged)
    merged.attrs.update(format="meanode-sweep/1", sweep=spec.name, spec=json.dumps(spec.to_dict(), default=str),
                        swept=json.dumps(swept), n_points=len(dsets), defaults=json.dumps(DEFAULTS, default=str))
    return merged


def _aggregate_over_seeds(ds):
    """For sweeps with ``seed`` swept (one point per seed): collapse the per-seed copies of
    per-point variables and recompute the SPEC §7 aggregates over all seeds of each cell with
    :func:`meanode.measure.error_split` / :func:`~meanode.measure.fluctuation`."""
    from ..measure import fluctuation, rms

    out = ds.copy()
    for name in list(ds.data_vars):
        if name.startswith(("total_", "euler_", "fluct_")) or name in ("computed", "wall_time"):
            out = out.drop_vars(name)
        elif name.endswith("_ref") or name.startswith("ref_"):
            out[name] = ds[name].max("seed") if ds[name].dtype.kind == "f" else ds[name].isel(seed=0)
    out["computed"] = ds["computed"].all("seed")
    out["wall_time"] = ds["wall_time"].sum("seed", min_count=1)
    for X, space in (("f", "out"), ("h", "coord"), ("f_eval", "out"), ("h_eval", "coord")):
        samples = "sample_eval" if X.endswith("_eval") else "sample"
        if X in ds:
            x = ds[X].transpose("seed", ..., samples, space)  # (E, *kept, n, c)
            kept = x.dims[1:-2]
            out[f"fluct_{X}"] = (kept, fluctuation(x.values, keep=len(kept)))
            if f"{X}_ref" in out:
                ref = out[f"{X}_ref"].transpose(*kept, samples, space).values
                d = (x.values - ref[None]).mean(axis=0)
                out[f"euler_{X}"] = (kept, rms(d, axis=(-2, -1)))
        if f"err_{X}" in ds:
            e = ds[f"err_{X}"].transpose("seed", ...)
            out[f"total_{X}"] = (e.dims[1:], rms(e.values, axis=0))
    return out


def load_sweep(out_dir):
    """The merged dataset of a finished sweep directory (``OUT/merged.nc``)."""
    import xarray as xr
    with xr.open_dataset(Path(out_dir) / "merged.nc", engine=MERGED_ENGINE["engine"]) as ds:
        return ds.load()
