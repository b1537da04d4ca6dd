"""The sweep driver: check what is on disk, submit what is missing, merge.

:func:`run_sweeps` submits the missing references first (with the points that need none) and
each dependent point as soon as its reference is on disk; points already on disk are skipped, so
a killed sweep restarted with the same spec computes only what is missing. Before anything is
submitted it removes the temporary files of dead processes, moves damaged point and reference
files aside (``damaged/``; they are recomputed), refuses a directory that holds another sweep of
the same name, and refuses points that cannot fit in memory.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cost import estimate_point_seconds, estimate_reference_seconds, memory_limit_bytes, point_memory_bytes
from .executors import call_task, ensure_executor
from .merge import merge_points
from .point import point_file, run_point
from .references import reference_file, reference_identity, run_reference
from .spec import Point, SweepError, SweepSpec, SweepSpecError
from .store import (MERGED_ENGINE, DamagedFile, atomic_write, check_free_space, quarantine, read_checked,
                    remove_stale_temporaries)

__all__ = ["SweepResult", "run_sweeps", "run_sweep"]

#: the most characters of one failure's traceback kept in a SweepError message (the whole text
#: goes to ``OUT/failures.log``)
FAILURE_TEXT_LIMIT = 2000


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the merged dataset and its path, and the bookkeeping.
    ``damaged``: files found damaged and moved aside (then recomputed)."""

    spec: SweepSpec
    out_dir: Path
    dataset: Any
    merged_path: Path
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    references_computed: int = 0
    wall_time: float = 0.0
    damaged: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Job:
    """One sweep of a :func:`run_sweeps` call and what happened to its points."""

    spec: SweepSpec
    out: Path
    ref_dir: Path
    paths: list[Path]
    computed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    refs: int = 0


@dataclass(frozen=True, eq=False)
class _Task:
    """One unit of work: a point, or the reference some points wait for."""

    kind: str  # "point" | "reference"
    job: _Job
    point: Point
    cost: float

    def submit(self, ex: cf.Executor) -> cf.Future:
        if self.kind == "reference":
            return ex.submit(call_task, run_reference, self.job.spec, self.point, str(self.job.ref_dir))
        return ex.submit(call_task, run_point, self.job.spec, self.point, str(self.job.out), str(self.job.ref_dir))


def _check_not_another_sweep(spec: SweepSpec, out: Path, overwrite: bool) -> None:
    """Refuse ``out`` when it holds a different sweep of the same name (unless ``overwrite``)."""
    existing = out / "sweep.yaml"
    if overwrite or not existing.exists():
        return
    try:
        same = SweepSpec.from_yaml(existing).to_dict() == spec.to_dict()
    except SweepSpecError:
        same = False
    if not same:
        raise SweepError(f"{out} already holds a different sweep named {spec.name!r} ({existing}); its merged.nc "
                         "would be replaced. Use another output directory, or pass overwrite=True "
                         "(--overwrite) to replace it")


def _valid(path: Path, job: _Job) -> bool:
    """True when ``path`` holds a checksummed, readable file; a damaged one is moved aside."""
    if not path.exists():
        return False
    try:
        read_checked(path)
    except DamagedFile as e:
        moved = quarantine(path)
        job.damaged.append(f"{e} -> moved to {moved}")
        return False
    return True


def _too_large(job: _Job) -> list[str]:
    limit = memory_limit_bytes()
    out = []
    for p in job.spec.points():
        need = point_memory_bytes(job.spec.settings(p), 1)
        if need > limit:
            out.append(f"{job.spec.name}/{p.label}: about {need / 2**30:.1f} GiB for one seed, limit "
                       f"{limit / 2**30:.1f} GiB")
    return out


def _short(text: str) -> str:
    return text if len(text) <= FAILURE_TEXT_LIMIT else "...\n" + text[-FAILURE_TEXT_LIMIT:]


def run_sweeps(jobs: Sequence[tuple[SweepSpec, os.PathLike | str]], *, executor=None, ref_dir=None,
               progress: bool = True, merge: bool = True, overwrite: bool = False) -> list[SweepResult]:
    """Run the missing points of several sweeps with one executor, then merge each sweep.

    ``executor``: a :class:`concurrent.futures.Executor` or a ``distributed.Client`` (used, left
    open), or a scheduler string / worker count / None (built here and shut down at the end; see
    :mod:`meanode.sweep.executors`). Missing references are submitted first, together with the
    points that need none (largest first); a point that needs a reference is submitted as soon as
    that reference is on disk. A failed task does not stop the others; :class:`SweepError` is
    raised at the end and nothing is merged for the sweeps it touched. ``ref_dir`` (default
    ``<out_dir>/references`` of each sweep) is where references are cached; share it between
    sweeps to compute each reference once. ``overwrite``: replace a different sweep of the same
    name in an output directory (refused otherwise).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    prepared: list[_Job] = []
    for spec, out in jobs:
        out = Path(out)
        _check_not_another_sweep(spec, out, overwrite)
        rdir = Path(ref_dir) if ref_dir is not None else out / "references"
        pts = spec.points()
        prepared.append(_Job(spec, out, rdir, [point_file(spec, p, out) for p in pts]))
    too_large = [msg for job in prepared for msg in _too_large(job)]
    if too_large:
        raise SweepError(f"{len(too_large)} point(s) cannot fit in memory (set MEANODE_MAX_MEMORY_GB to change the "
                         f"limit): " + "; ".join(too_large[:5]) + (" ..." if len(too_large) > 5 else ""))

    ref_tasks: dict[Path, _Task] = {}
    waiting: dict[Path, list[_Task]] = {}
    ready: list[_Task] = []
    checked_refs: dict[Path, bool] = {}
    for job in prepared:
        job.out.mkdir(parents=True, exist_ok=True)
        for d in (job.out / "points", job.ref_dir, job.out):
            remove_stale_temporaries(d)
        (job.out / "sweep.yaml").write_text(job.spec.to_yaml())
        for p, path in zip(job.spec.points(), job.paths):
            if _valid(path, job):
                job.skipped.append(p.label)
                continue
            task = _Task("point", job, p, estimate_point_seconds(job.spec.settings(p), len(job.spec.point_seeds(p)),
                                                                 job.spec.measure))
            rp = reference_file(job.spec, p, job.ref_dir)
            if rp is not None and rp not in checked_refs:
                checked_refs[rp] = _valid(rp, job)
            if rp is None or checked_refs[rp]:
                ready.append(task)
            else:
                if rp not in ref_tasks:
                    ref_tasks[rp] = _Task("reference", job, p,
                                          estimate_reference_seconds(reference_identity(job.spec, p)))
                    job.refs += 1
                waiting.setdefault(rp, []).append(task)
    n_refs = len(ref_tasks)
    n_pts = len(ready) + sum(len(ts) for ts in waiting.values())
    total = sum(t.cost for t in ref_tasks.values()) + sum(t.cost for t in ready) + \
        sum(t.cost for ts in waiting.values() for t in ts)
    ex, own = ensure_executor(executor) if (n_refs or n_pts) else (None, False)
    failures: list[str] = []
    names = ", ".join(job.spec.name for job in prepared)
    bar = tqdm(total=max(total, 1e-9), disable=not progress or not (n_refs or n_pts), dynamic_ncols=True, leave=True,
               desc=names if len(names) < 40 else f"{len(prepared)} sweeps",
               bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")
    futures: dict[cf.Future, tuple[_Task, Path | None]] = {}
    done_refs = done_pts = 0

    def advance(cost: float) -> None:
        bar.update(min(cost, max(bar.total - bar.n, 0.0)))

    try:
        for rp, task in sorted(ref_tasks.items(), key=lambda kv: -kv[1].cost):
            futures[task.submit(ex)] = (task, rp)
        for task in sorted(ready, key=lambda t: -t.cost):
            futures[task.submit(ex)] = (task, None)
        while futures:
            done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                task, rp = futures.pop(fut)
                try:
                    _, err = fut.result()
                except Exception as e:  # a worker died (killed, out of memory): report, keep going
                    err = f"{type(e).__name__}: {e}"
                advance(task.cost)
                if task.kind == "reference":
                    done_refs += 1
                    deps = waiting.pop(rp, [])
                    if err:
                        failures.append(f"reference for {task.job.spec.name}/{task.point.label}:\n{err}")
                        for t in deps:
                            t.job.failed.append(t.point.label)
                            advance(t.cost)
                    else:
                        for t in sorted(deps, key=lambda t: -t.cost):
                            futures[t.submit(ex)] = (t, None)
                else:
                    done_pts += 1
                    if err:
                        failures.append(f"point {task.job.spec.name}/{task.point.label}:\n{err}")
                        task.job.failed.append(task.point.label)
                    else:
                        task.job.computed.append(task.point.label)
                bar.set_postfix_str(f"references {done_refs}/{n_refs}, points {done_pts}/{n_pts}"
                                    + (f", {len(failures)} failed" if failures else ""))
    finally:
        bar.close()
        if own and ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
    results = []
    for job in prepared:
        ds = None
        merged_path = job.out / "merged.nc"
        if merge and not job.failed and not failures:
            ds = merge_points(job.spec, job.paths)
            ds.attrs["wall_time_last_run"] = time.perf_counter() - t0
            _write_merged(ds, merged_path)
        results.append(SweepResult(spec=job.spec, out_dir=job.out, dataset=ds, merged_path=merged_path,
                                   computed=job.computed, skipped=job.skipped, references_computed=job.refs,
                                   wall_time=time.perf_counter() - t0, damaged=job.damaged))
    if failures:
        n_done = sum(len(job.paths) - len(job.failed) for job in prepared)
        failed = ", ".join(f"{job.spec.name}/{lab}" for job in prepared for lab in job.failed)
        log = prepared[0].out / "failures.log"
        try:
            log.write_text("\n\n".join(failures) + "\n")
            where = f" (all tracebacks: {log})"
        except OSError:
            where = ""
        raise SweepError(f"{len(failures)} task(s) failed ({names}); the {n_done} finished points are kept on disk "
                         f"and a rerun computes only the rest{where}.\nPoints not computed: {failed}\n"
                         f"First failure: {_short(failures[0])}")
    return results


def _write_merged(ds, path: Path) -> None:
    """``merged.nc``, after checking the disk has room for it (a full disk must be a clear error,
    not a crash inside HDF5)."""
    need = int(sum(v.nbytes for v in ds.variables.values()) * 1.2) + (1 << 20)
    try:
        check_free_space(path.parent, need, "merged.nc")
        atomic_write(ds, path, MERGED_ENGINE, with_checksum=False)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SweepError(f"cannot write {path}: {e.strerror or e}. The point files are complete; free some space "
                             "and rerun (only the merge is redone)") from None
        raise


def run_sweep(spec: SweepSpec, out_dir, *, executor=None, ref_dir=None, progress: bool = True, merge: bool = True,
              overwrite: bool = False) -> SweepResult:
    """Run every missing point of ``spec`` into ``out_dir`` and merge all points into
    ``out_dir/merged.nc`` (see :func:`run_sweeps`)."""
    return run_sweeps([(spec, out_dir)], executor=executor, ref_dir=ref_dir, progress=progress, merge=merge,
                      overwrite=overwrite)[0]
