"""Run sweeps on Dask: :class:`DaskExecutor`, a :class:`concurrent.futures.Executor` over a ``distributed.Client``.

One task is one sweep point (its seeds are batched inside, as :func:`meanode.sweep.run_point`
does), so a Dask run computes exactly what a local run computes: each point writes its own file
(written to a temporary name, then renamed) and the files are merged by the same
:func:`meanode.sweep.merge_points`. With the same seeds, a local run and a Dask run give
identical numbers (only the measured ``wall_time`` differs).

Schedulers::

    DaskExecutor.local(4)                     # a LocalCluster: 4 worker processes on 127.0.0.1
    DaskExecutor.connect("tcp://HOST:8786")   # an existing scheduler (e.g. dask-jobqueue on Slurm)
    DaskExecutor.from_cluster(cluster)        # any Dask cluster object (SLURMCluster, ...)

and the scheduler names ``"local:N"``, ``"dask-local:N"``, ``"dask"`` / ``"dask:N"`` /
``"dask:tcp://HOST:PORT"`` and plain ``"tcp://HOST:PORT"`` (``"tls://..."`` too) of
:func:`meanode.sweep.make_executor` build them. A plain ``distributed.Client`` works as well
(:func:`meanode.sweep.ensure_executor` takes ``client.get_executor()``). ``dask[distributed]`` is a
dependency of meanode.

Threads: every worker runs one task at a time (``threads_per_worker=1``) and limits torch and
the BLAS/OpenMP pools to ``threads`` (default 1) through :class:`ThreadLimits`, a worker plugin
(plus the nanny environment for a LocalCluster, so the limits hold from the worker's start).

Fault tolerance: a worker that dies (killed, out of memory) loses only the point it was
computing; the scheduler hands that point to another worker. A point that kills
``allowed_failures + 1`` workers in a row is reported as failed (:class:`~distributed.KilledWorker`)
and the sweep raises :class:`~meanode.sweep.SweepError` after the others finished. Exceptions
raised inside a point are reported, not retried (a point is deterministic: a retry would fail
again). Re-running the sweep computes only the points whose file is missing; a half-written
temporary file never counts.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable
from typing import Any

import distributed
from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["THREAD_ENV_VARS", "DaskExecutor", "ThreadLimits"]

#: Environment variables that size the thread pools of OpenMP and the BLAS libraries.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS")

def _thread_env(threads: int) -> dict[str, str]:
    return {k: str(threads) for k in THREAD_ENV_VARS}


def _limit_threads(threads: int) -> dict:
    """Set this process's torch threads and the BLAS/OpenMP environment; returns what is set."""
    os.environ.update(_thread_env(threads))
    import torch
    torch.set_num_threads(threads)
    try:  # only possible before the first inter-op parallel work in the process
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    return _worker_thread_settings()


class ThreadLimits(WorkerPlugin):
    """Worker plugin: on every worker (present and future, restarted ones included) set
    ``torch.set_num_threads(threads)`` and ``OMP/MKL/OPENBLAS/NUMEXPR/VECLIB`` thread variables,
    so ``n`` workers on ``n`` cores do not oversubscribe them; then import the modules named in
    ``preload`` (the sweep's point code, by default), so the first task does not pay for them."""

    name = "meanode-thread-limits"

    def __init__(self, threads: int = 1, preload: tuple[str, ...] = ("meanode.sweep.point",)):
        self.threads = int(threads)
        self.preload = tuple(preload)

    def setup(self, worker=None):
        import importlib
        _limit_threads(self.threads)
        for name in self.preload:
            importlib.import_module(name)


class DaskExecutor(cf.Executor):
    """Runs sweep tasks on a Dask cluster through a :class:`distributed.Client` (its futures are
    ``concurrent.futures`` futures, from ``client.get_executor()``).

    Build with :meth:`local` (a LocalCluster that this executor owns and closes),
    :meth:`connect` (an existing scheduler; closing detaches, the cluster keeps running) or
    :meth:`from_cluster`; or wrap a client of your own, ``DaskExecutor(client)`` (left open by
    :meth:`close` unless ``close_client``). Use as a context manager, or call :meth:`close`.
    Every worker of the cluster, present and future, gets the :class:`ThreadLimits` plugin.
    """

    name = "dask"

    def __init__(self, client, *, cluster=None, threads: int = 1, close_client: bool = False,
                 description: str = ""):
        self.client = client
        self.cluster = cluster  # closed by close() when given (the executor owns it)
        self.threads = int(threads)
        self._close_client = close_client
        self.description = description or str(getattr(client.scheduler, "address", ""))
        client.register_plugin(ThreadLimits(self.threads), name=ThreadLimits.name)
        self._executor = client.get_executor(pure=False)
        self.workers = max(1, self.n_workers())

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def local(cls, n_workers: int | None = None, *, threads: int = 1, memory_limit: str | float = "auto",
              allowed_failures: int = 3, worker_saturation: float = 1.0, silence_logs: int | bool = 30,
              **cluster_kwargs) -> DaskExecutor:
        """Start a :class:`distributed.LocalCluster` of ``n_workers`` processes (default: one per
        core) on the loopback interface, one thread each, dashboard off, and connect to it.

        memory_limit: per worker (``"auto"``: the machine's memory divided by the workers; a
            worker above 95 % of it is restarted by its nanny and its point rescheduled).
        allowed_failures: how many worker deaths one task may cause before it is reported failed.
        worker_saturation: tasks handed to a worker per thread (Dask's default, 1.1, hands a
            second point to a busy worker; at 1.0 a point waits on the scheduler until a worker is
            free, so a dying worker takes only the point it was computing and long points balance).
            Dask queues only "root-ish" task groups, larger than twice the worker threads: the
            points of a smaller sweep are handed out at once, and a worker that dies takes the
            points waiting on it too (rescheduled unless ``allowed_failures`` is exhausted).
        """
        n = max(1, int(n_workers if n_workers is not None else (os.cpu_count() or 1)))
        kw: dict[str, Any] = dict(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  protocol="tcp://", scheduler_port=0, dashboard_address=None,
                                  memory_limit=memory_limit, silence_logs=silence_logs,
                                  env=_thread_env(threads),
                                  # no dashboard; the scheduler's small HTTP server (health checks) on a
                                  # free loopback port rather than 8787
                                  scheduler_kwargs=dict(allowed_failures=int(allowed_failures), dashboard=False,
                                                        dashboard_address="127.0.0.1:0"))
        kw.update(cluster_kwargs)
        import dask
        with dask.config.set({"distributed.scheduler.worker-saturation": float(worker_saturation)}):
            cluster = distributed.LocalCluster(**kw)
        try:
            client = distributed.Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        return cls(client, cluster=cluster, threads=threads, close_client=True,
                   description=f"LocalCluster({n} workers, {cluster.scheduler_address})")

    @classmethod
    def connect(cls, address: str, *, threads: int = 1, timeout: float | str = "30s") -> DaskExecutor:
        """Attach to a running scheduler at ``address`` (``"tcp://HOST:PORT"``). Closing the
        executor detaches; the cluster and its workers keep running."""
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"a Dask scheduler address looks like 'tcp://HOST:PORT', got {address!r}")
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
        return cls(client, threads=threads, close_client=True, description=address)

    @classmethod
    def from_cluster(cls, cluster, *, threads: int = 1, close_cluster: bool = False) -> DaskExecutor:
        """Use any Dask cluster object (e.g. ``dask_jobqueue.SLURMCluster``); the cluster is closed
        with the executor only when ``close_cluster``."""
        client = distributed.Client(cluster, set_as_default=False)
        return cls(client, cluster=cluster if close_cluster else None, threads=threads, close_client=True,
                   description=f"{type(cluster).__name__}({cluster.scheduler_address})")

    # --- introspection ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.client.scheduler.address

    def n_workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> process id (for tests and diagnostics)."""
        return self.client.run(os.getpid)

    def thread_settings(self) -> dict[str, dict]:
        """Worker address -> the torch/BLAS thread settings in force there."""
        return self.client.run(_worker_thread_settings)

    # --- concurrent.futures.Executor -------------------------------------------------------------
    def submit(self, fn: Callable, /, *args, **kwargs) -> cf.Future:
        """A ``concurrent.futures.Future`` of ``fn(*args, **kwargs)`` on the cluster. A task whose worker
        dies is rescheduled by the scheduler; after ``allowed_failures`` deaths its future raises
        :class:`distributed.KilledWorker`. The task's keyword arguments travel packed, so none can
        collide with ``client.submit``'s."""
        return self._executor.submit(_call_packed, fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.client is not None and cancel_futures:
            self._executor.shutdown(wait=False)
        self.close()

    def close(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        if client is not None and self._close_client:
            try:
                client.close()
            except Exception:  # pragma: no cover
                pass
        if cluster is not None:
            cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"DaskExecutor({self.description}, workers={self.workers}, threads={self.threads})"


def _call_packed(fn: Callable, args: tuple, kwargs: dict):
    return fn(*args, **kwargs)


def _worker_thread_settings() -> dict:
    import torch
    return dict(torch_threads=torch.get_num_threads(), pid=os.getpid(),
                **{k: os.environ.get(k) for k in THREAD_ENV_VARS})
