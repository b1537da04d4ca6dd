"""Files of a sweep: keys and paths, and crash-safe, checksummed netCDF files.

* Every point and reference file is written to a temporary name (``.tmp-<pid>-<host>-<name>``),
  flushed to disk (``fsync``) and renamed into place, then its directory is synced: a file that
  exists under its final name is complete, even after a machine crash.
* Every such file carries ``checksum``, a SHA-256 of its variables and coordinates (names, dtypes,
  shapes, bytes). :func:`read_checked` recomputes it: a file that cannot be read or does not match
  (truncated, emptied, bytes flipped, foreign) raises :class:`DamagedFile`;
  :func:`quarantine` moves it aside into ``damaged/`` beside it (never deleting it) so that it is
  recomputed.
* :func:`remove_stale_temporaries` removes the temporary files of dead processes of this host.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from .spec import FORMAT, Point, SweepSpec

__all__ = ["POINT_ENGINE", "MERGED_ENGINE", "DamagedFile", "sha", "point_key", "point_path", "reference_key",
           "reference_path", "atomic_write", "read_checked", "quarantine", "checksum", "remove_stale_temporaries",
           "check_free_space"]

#: netCDF flavour of the small per-point and reference files: netCDF3 (64-bit offset) through
#: scipy. h5netcdf/HDF5 costs ~0.5 s per small file in dimension-scale bookkeeping (35x more),
#: minutes of a quick run; the merged dataset, one file per sweep, is netCDF4 via h5netcdf.
#: ``xarray.open_dataset`` reads both without an ``engine`` argument.
POINT_ENGINE = dict(engine="scipy", format="NETCDF3_64BIT")
MERGED_ENGINE = dict(engine="h5netcdf")


class DamagedFile(OSError):
    """A sweep file that cannot be read, or whose checksum does not match its contents."""


def sha(obj) -> str:
    """A short stable hash of a JSON-able object (keys sorted)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def point_key(spec: SweepSpec, point: Point, reference_identity: dict | None) -> str:
    """Hash of everything that determines a point's numbers (settings, seeds, reference, measurements)."""
    s = spec.settings(point)
    s.pop("device", None)  # where it ran does not change what it means
    return sha(dict(v=FORMAT, settings=s, seeds=list(spec.point_seeds(point)), reference=reference_identity,
                    measure=spec.measure.to_dict()))


def point_path(spec: SweepSpec, point: Point, out_dir, reference_identity: dict | None) -> Path:
    return Path(out_dir) / "points" / f"{point.label}__{point_key(spec, point, reference_identity)}.nc"


def reference_key(reference_identity: dict | None) -> str | None:
    return None if reference_identity is None else sha(dict(v=FORMAT, **reference_identity))


def reference_path(reference_identity: dict | None, ref_dir) -> Path | None:
    key = reference_key(reference_identity)
    return None if key is None else Path(ref_dir) / f"ref__{key}.nc"


def _canonical(v: np.ndarray) -> np.ndarray:
    """Values as the file format gives them back: integers as int64, booleans as int8, reals as
    float64, text as unicode (netCDF3 stores int64 as int32 and bool as int8)."""
    kind = v.dtype.kind
    if kind in "iu":
        return v.astype(np.int64)
    if kind == "b":
        return v.astype(np.int8)
    if kind == "f":
        return v.astype(np.float64)
    return np.asarray([str(x) for x in v.ravel()], dtype=str).reshape(v.shape)


def checksum(ds) -> str:
    """SHA-256 over the dataset's variables and coordinates: name, kind, shape and canonical bytes."""
    h = hashlib.sha256()
    for name in sorted(list(ds.coords) + list(ds.data_vars)):
        v = _canonical(np.asarray(ds[name].values))
        h.update(f"{name}|{v.dtype.kind}|{v.shape}|".encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


_HOST = hashlib.sha1(platform.node().encode()).hexdigest()[:8]


def _tmp_name(path: Path) -> Path:
    """``.tmp-<pid>-<host hash>-<name>``: the pid and host tell whether its writer is gone."""
    return path.with_name(f".tmp-{os.getpid()}-{_HOST}-{path.name}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(ds, path: Path, engine: dict = POINT_ENGINE, *, with_checksum: bool = True) -> None:
    """Write ``ds`` to ``path``: a temporary file, fsynced, renamed into place, directory fsynced.
    ``with_checksum`` stores :func:`checksum` as the attribute ``checksum``. A full disk raises
    ``OSError(ENOSPC)`` with the path named; the temporary file is always removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    if with_checksum:
        ds = ds.copy()
        ds.attrs["checksum"] = checksum(ds)
    try:
        try:
            ds.to_netcdf(tmp, **engine)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"no space left on the device while writing {path}") from e
            raise
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_checked(path: Path, engine: str = POINT_ENGINE["engine"]):
    """The dataset at ``path``, loaded into memory, after its checksum was verified; raises
    :class:`DamagedFile` (unreadable, no checksum, or a mismatch)."""
    import xarray as xr
    try:
        with xr.open_dataset(path, engine=engine) as ds:
            ds.load()
    except Exception as e:  # noqa: BLE001 - any failure to parse is damage
        raise DamagedFile(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    stored = ds.attrs.get("checksum")
    if stored is None:
        raise DamagedFile(f"{path}: no checksum (not written by this version of meanode)")
    if checksum(ds) != stored:
        raise DamagedFile(f"{path}: contents do not match the stored checksum")
    return ds


def quarantine(path: Path) -> Path:
    """Move a damaged file into ``damaged/`` beside it (kept, never deleted); returns where it went."""
    dest_dir = path.parent / "damaged"
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    os.replace(path, dest)
    return dest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove ``.tmp-<pid>-<host>-*`` files of this host whose process is gone; returns them."""
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.glob(".tmp-*"):
        parts = p.name.split("-", 3)
        if len(parts) < 4 or parts[2] != _HOST or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid != os.getpid() and not _pid_alive(pid):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_free_space(directory: Path, needed_bytes: int, what: str) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``what`` when ``directory`` has less than ``needed_bytes``
    plus a 64 MiB margin free."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed_bytes + (64 << 20):
        raise OSError(errno.ENOSPC, f"not enough free space in {directory} for {what}: about "
                                    f"{needed_bytes / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free")
