"""Sweeps on Dask (meanode.distributed): a real LocalCluster on loopback gives the serial run's
numbers bit for bit, survives a worker killed mid-point, and resumes from what is on disk."""

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'meanode[dask]')")

import concurrent.futures as cf  # noqa: E402

from meanode import sweep as sw  # noqa: E402
from meanode.distributed import DaskExecutor, ThreadLimits  # noqa: E402

# Four cheap points (identity activation, exact closure reference computed once), three seeds each.
SPEC = sw.SweepSpec.create("dask-tiny", grid={"L": [2, 8], "M": [1, 2]},
                           fixed=dict(D=2, K=2, N=4, N_eval=2, activation="identity"), seeds=3,
                           reference={"method": "closure"})
LABELS = [p.label for p in SPEC.points()]
WAIT_S = 120  # generous: two loaded cores shared with other jobs


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster (2 worker processes, 1 thread each, 127.0.0.1) for the whole module."""
    import cloudpickle
    # the tracking wrapper below travels by value, so workers need not import this test module
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = DaskExecutor.local(2)
    try:
        ex.client.wait_for_workers(2, timeout=WAIT_S)
        yield ex
    finally:
        ex.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The reference: the same sweep run in this process, one point after another."""
    out = tmp_path_factory.mktemp("serial")
    return sw.run_sweep(SPEC, out, executor="serial", progress=False).dataset


def assert_identical(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.coords:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    for name in a.data_vars:
        if name == "wall_time":  # measured, not computed
            continue
        x, y = a[name], b[name]
        assert x.dims == y.dims and x.dtype == y.dtype, name
        assert np.array_equal(x.values, y.values, equal_nan=x.dtype.kind == "f"), f"{name} differs"


# --- tracking what the workers really do ---------------------------------------------------------

def _tracked(fn, log_dir, crash, *args, **kwargs):
    """Run ``fn`` in a worker and leave a record of it in ``log_dir``. ``crash``: None;
    ``("once", marker)``: the first point that starts computing anywhere in the cluster leaves a
    half-written temporary file and SIGKILLs its own worker process mid-point; ``("always", label)``:
    that point kills every worker that tries it."""
    spec, point = args[0], args[1]
    existed = False
    if fn is sw.run_point:
        path = sw.point_path(spec, point, args[2])
        existed = path.exists()
        die = False
        if crash is not None and not existed and crash[0] == "once":
            try:
                fd = os.open(crash[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, f"{os.getpid()} {point.label}".encode())
                os.close(fd)
                die = True
        elif crash is not None and crash[0] == "always" and point.label == crash[1]:
            die = True
        if die:
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / f".tmp-{os.getpid()}-{path.name}").write_bytes(b"\x89HDF\r\n half a file")
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
            time.sleep(60)  # never reached on POSIX
    result = fn(*args, **kwargs)
    what = "found" if existed else "computed"
    Path(log_dir, f"{fn.__name__}--{point.label}--{what}--{os.getpid()}--{uuid.uuid4().hex[:8]}").touch()
    return result


class Tracked(cf.Executor):
    """Delegates to a DaskExecutor, wrapping every task (``call_task(fn, *args)``) in :func:`_tracked`
    and noting what the driver submitted."""

    def __init__(self, inner, log_dir, crash=None):
        self.inner, self.log_dir, self.crash = inner, Path(log_dir), crash
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.workers = inner.workers
        self.submitted = []

    def submit(self, call, fn, *args, **kwargs):
        assert call is sw.call_task
        self.submitted.append((fn.__name__, args[1].label))
        return self.inner.submit(sw.call_task, _tracked, fn, str(self.log_dir), self.crash, *args, **kwargs)

    def records(self, fn_name="run_point", what="computed"):
        out = {}
        for f in self.log_dir.iterdir():
            name, label, kind = f.name.split("--")[:3]
            if name == fn_name and kind == what:
                out[label] = out.get(label, 0) + 1
        return out


def _wait_for_replacement(cluster, dead_pid):
    cluster.client.wait_for_workers(2, timeout=WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while dead_pid in set(cluster.worker_pids().values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    cluster.client.wait_for_workers(2, timeout=WAIT_S)
    return set(cluster.worker_pids().values())


# --- the tests ---------------------------------------------------------------------------------------

def test_local_cluster_on_loopback_with_limited_threads(cluster):
    assert cluster.cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    info = cluster.client.scheduler_info()["workers"]
    assert len(info) == 2
    for addr, w in info.items():
        assert addr.startswith("tcp://127.0.0.1:") and w["nthreads"] == 1
    assert cluster.cluster.scheduler.WORKER_SATURATION == 1.0  # one point per worker at a time
    for addr, s in cluster.thread_settings().items():
        assert s["torch_threads"] == 1, (addr, s)
        assert s["OMP_NUM_THREADS"] == s["MKL_NUM_THREADS"] == s["OPENBLAS_NUM_THREADS"] == "1", (addr, s)
    assert len(set(cluster.worker_pids().values())) == 2  # processes, not threads
    # dashboard off: the scheduler's HTTP server (health checks only) is on a free loopback port
    (host, port), = [sock.getsockname()[:2] for sock in cluster.cluster.scheduler.http_server._sockets.values()]
    assert host == "127.0.0.1" and port != 8787
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30)


def test_dask_sweep_is_bit_identical_to_serial(cluster, serial, tmp_path):
    res = sw.run_sweep(SPEC, tmp_path, executor=cluster, progress=False)
    assert sorted(res.computed) == sorted(LABELS) and res.skipped == []
    assert cluster.client is not None  # an executor passed in is not closed by the sweep
    assert_identical(serial, sw.load_sweep(tmp_path))
    # the point files themselves, merged again, also agree with the serial merge
    paths = sorted((tmp_path / "points").glob("*.nc"))
    assert len(paths) == len(LABELS) and not list((tmp_path / "points").glob(".tmp-*"))
    assert_identical(serial, sw.merge_points(SPEC, [sw.point_path(SPEC, p, tmp_path) for p in SPEC.points()]))


def test_scheduler_address_attaches_to_a_running_cluster(cluster):
    address = cluster.cluster.scheduler_address  # "tcp://127.0.0.1:PORT": two ':' in it
    point = SPEC.points()[0]
    for name in (address, "dask:" + address):
        ex = sw.make_executor(name)
        try:
            assert isinstance(ex, DaskExecutor) and ex.cluster is None and ex.workers == 2
            result, error = ex.submit(sw.call_task, sw.point_path, SPEC, point, "out").result(timeout=WAIT_S)
            assert error is None and result == sw.point_path(SPEC, point, "out")
        finally:
            ex.close()
        assert len(cluster.client.scheduler_info()["workers"]) == 2  # detaching left the cluster running


def test_task_errors_are_reported_not_retried(cluster):
    good, bad = (cluster.submit(sw.call_task, int, x).result(timeout=WAIT_S) for x in ("7", "seven"))
    assert good == (7, None)
    assert bad[0] is None and "ValueError" in bad[1]


def test_resume_computes_only_missing_points(cluster, serial, tmp_path):
    pts = SPEC.points()
    half = len(pts) // 2
    ref_dir = tmp_path / "references"
    first = [cluster.submit(sw.call_task, sw.run_point, SPEC, p, str(tmp_path), str(ref_dir)) for p in pts[:half]]
    assert all(f.result(timeout=WAIT_S)[1] is None for f in first)
    before = {p.label: os.stat(sw.point_path(SPEC, p, tmp_path)) for p in pts[:half]}
    # what a worker killed while writing leaves behind: a temporary name, which never counts
    missing = sw.point_path(SPEC, pts[-1], tmp_path)
    (missing.parent / f".tmp-99999-{missing.name}").write_bytes(b"\x89HDF partial")
    assert not missing.exists()

    tracked = Tracked(cluster, tmp_path / "log")
    res = sw.run_sweep(SPEC, tmp_path, executor=tracked, progress=False)
    todo = [p.label for p in pts[half:]]
    assert res.skipped == [p.label for p in pts[:half]]
    assert sorted(res.computed) == sorted(todo)
    assert sorted(lab for fn, lab in tracked.submitted if fn == "run_point") == sorted(todo)
    assert tracked.records() == {lab: 1 for lab in todo}  # each missing point computed once, no other
    assert res.references_computed == 0  # the first half already cached the closure reference
    for p in pts[:half]:  # untouched
        st = os.stat(sw.point_path(SPEC, p, tmp_path))
        assert (st.st_ino, st.st_mtime_ns) == (before[p.label].st_ino, before[p.label].st_mtime_ns)
    assert_identical(serial, res.dataset)

    again = sw.run_sweep(SPEC, tmp_path, executor=Tracked(cluster, tmp_path / "log2"), progress=False)
    assert again.computed == [] and sorted(again.skipped) == sorted(LABELS)
    assert_identical(serial, again.dataset)


def test_worker_killed_mid_point_loses_only_that_point(cluster, serial, tmp_path):
    pids_before = set(cluster.worker_pids().values())
    marker = tmp_path / "crashed"
    tracked = Tracked(cluster, tmp_path / "log", crash=("once", str(marker)))
    res = sw.run_sweep(SPEC, tmp_path, executor=tracked, progress=False)

    assert marker.exists(), "no worker was killed"
    pid, victim = marker.read_text().split()
    assert int(pid) in pids_before and victim in LABELS
    # every point finished exactly once; the killed point was rescheduled, nothing else was redone
    assert sorted(res.computed) == sorted(LABELS)
    assert tracked.records() == {lab: 1 for lab in LABELS}
    assert len([s for s in tracked.submitted if s[0] == "run_point"]) == len(LABELS)
    assert list((tmp_path / "points").glob(".tmp-*"))  # the dead worker's half file is there, and ignored
    assert_identical(serial, res.dataset)
    # the nanny replaced the dead worker process, and the replacement got the thread limits too
    pids_after = _wait_for_replacement(cluster, int(pid))
    assert int(pid) not in pids_after and len(pids_after) == 2
    assert all(s["torch_threads"] == 1 for s in cluster.thread_settings().values())


def test_point_that_keeps_killing_workers_fails_the_sweep_and_a_rerun_finishes(cluster, serial, tmp_path):
    scheduler = cluster.cluster.scheduler  # in this process for a LocalCluster
    saved = scheduler.allowed_failures
    scheduler.allowed_failures = 0  # the first death is final (the default, 3, would cost 4 restarts)
    bad = LABELS[-1]
    try:
        with pytest.raises(sw.SweepError, match="KilledWorker") as info:
            sw.run_sweep(SPEC, tmp_path, executor=Tracked(cluster, tmp_path / "log", crash=("always", bad)),
                         progress=False)
    finally:
        scheduler.allowed_failures = saved
    done = {p.label for p in SPEC.points() if sw.point_path(SPEC, p, tmp_path).exists()}
    missing = set(LABELS) - done
    # the bad point fails; so may one innocent point queued on the same worker when it died
    # (a worker holds up to ceil(threads x worker-saturation) = 2 tasks, and allowed_failures = 0)
    assert bad in missing and len(missing) <= 2, missing
    msg = str(info.value)
    assert f"{len(missing)} task(s) failed" in msg and all(f"/{lab}" in msg for lab in missing), msg
    assert not (tmp_path / "merged.nc").exists()
    _wait_for_replacement(cluster, -1)
    tracked = Tracked(cluster, tmp_path / "log2")
    res = sw.run_sweep(SPEC, tmp_path, executor=tracked, progress=False)
    assert sorted(res.computed) == sorted(missing) and tracked.records() == {lab: 1 for lab in missing}
    assert_identical(serial, res.dataset)


def test_scheduler_names():
    for name in ("dask-local", "dask", "tcp", "tls", "local"):
        assert name in sw.EXECUTORS
    with pytest.raises(ValueError, match="worker count"):
        sw.make_executor("dask-local:many")
    with pytest.raises(ValueError, match="at least|>= 1"):
        sw.make_executor("dask-local:0")
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        sw.make_executor("tcp:nohost")
    assert ThreadLimits(2).threads == 2
    ex = sw.make_executor("local:1")  # one worker: no cluster needed
    assert isinstance(ex, sw.LocalExecutor) and ex.workers == 1
