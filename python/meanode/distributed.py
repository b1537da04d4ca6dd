"""Run sweeps on Dask: a :class:`~meanode.sweep.Executor` backed by ``dask.distributed``.

One task is one sweep point (its seeds are batched inside, as :func:`meanode.sweep.run_point`
does), so a Dask run computes exactly what a local run computes: each point writes its own file
(written to a temporary name, then renamed) and the files are merged by the same
:func:`meanode.sweep.merge_points`. With the same seeds, a local run and a Dask run give
identical numbers (only the measured ``wall_time`` differs).

Schedulers::

    DaskExecutor.local(4)                     # a LocalCluster: 4 worker processes on 127.0.0.1
    DaskExecutor.connect("tcp://HOST:8786")   # an existing scheduler (e.g. dask-jobqueue on Slurm)
    DaskExecutor.from_cluster(cluster)        # any Dask cluster object (SLURMCluster, ...)

and, once :func:`register` has run (importing this module runs it), the scheduler names
``"dask-local:N"``, ``"dask"`` / ``"dask:N"`` / ``"dask:tcp://HOST:PORT"`` and plain
``"tcp://HOST:PORT"`` (``"tls://..."`` too) in :func:`meanode.sweep.make_executor`.

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

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .sweep import EXECUTORS, Executor, call_task, register_executor

try:
    from .sweep import TaskOutcome
except ImportError:  # sweep.py drives executors with submit/wait only; run() still yields these
    from dataclasses import dataclass as _dataclass

    @_dataclass
    class TaskOutcome:
        index: int
        result: Any = None
        error: str | None = None

__all__ = ["THREAD_ENV_VARS", "DaskExecutor", "ThreadLimits", "dask_available", "register"]

#: Environment variables that size the thread pools of OpenMP and the BLAS libraries.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS")

def dask_available() -> tuple[bool, str]:
    """(True, version) when ``dask.distributed`` imports, else (False, why and how to install)."""
    try:
        import distributed
    except ImportError as e:
        return False, f"dask.distributed is not installed ({e}); pip install 'meanode[dask]'"
    return True, str(distributed.__version__)


def _import_distributed():
    ok, why = dask_available()
    if not ok:
        raise ImportError(why)
    import distributed
    return distributed


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


try:  # the plugin base class, when distributed is installed (the class works without it too)
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - distributed absent
    _WorkerPluginBase = object


class ThreadLimits(_WorkerPluginBase):
    """Worker plugin: on every worker (present and future, restarted ones included) set
    ``torch.set_num_threads(threads)`` and ``OMP/MKL/OPENBLAS/NUMEXPR/VECLIB`` thread variables,
    so ``n`` workers on ``n`` cores do not oversubscribe them. Also imports the sweep code once,
    so the first point does not pay for it."""

    name = "meanode-thread-limits"

    def __init__(self, threads: int = 1):
        self.threads = int(threads)

    def setup(self, worker=None):
        _limit_threads(self.threads)
        import meanode.sweep  # noqa: F401 - warm the import in the worker


class DaskExecutor(Executor):
    """Runs sweep tasks on a Dask cluster through a :class:`distributed.Client`.

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
        distributed = _import_distributed()
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
        distributed = _import_distributed()
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"a Dask scheduler address looks like 'tcp://HOST:PORT', got {address!r}")
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
        return cls(client, threads=threads, close_client=True, description=address)

    @classmethod
    def from_cluster(cls, cluster, *, threads: int = 1, close_cluster: bool = False) -> DaskExecutor:
        """Use any Dask cluster object (e.g. ``dask_jobqueue.SLURMCluster``); the cluster is closed
        with the executor only when ``close_cluster``."""
        distributed = _import_distributed()
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

    # --- running ---------------------------------------------------------------------------------
    def submit(self, fn: Callable, *args, **kwargs):
        """``client.submit(call_task, fn, *args, **kwargs)``: a Dask future whose ``result()`` is
        ``(result, error_text)``. A task whose worker dies is rescheduled by the scheduler; after
        ``allowed_failures`` deaths ``result()`` raises :class:`distributed.KilledWorker`."""
        key = f"meanode-{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}"
        return self.client.submit(_call_packed, fn, args, kwargs, key=key, pure=False)

    def wait(self, futures):
        """Block until at least one of ``futures`` is done (finished, erred or cancelled);
        returns ``(done, not_done)`` as sets."""
        distributed = _import_distributed()
        futures = list(futures)
        if not futures:
            return set(), set()
        try:
            with self.client.as_current():  # distributed.wait uses the current client
                res = distributed.wait(futures, return_when="FIRST_COMPLETED")
            return set(res.done), set(res.not_done)
        except Exception as e:  # FuturesCancelledError: hand the cancelled ones back as done
            if "Cancelled" not in type(e).__name__:
                raise
            done = {f for f in futures if f.status != "pending"}
            return done, set(futures) - done

    def run(self, fn: Callable, tasks: Sequence[tuple[tuple, dict]]) -> Iterator[TaskOutcome]:
        """Submit every ``(args, kwargs)`` task and yield :class:`~meanode.sweep.TaskOutcome`
        as they complete (any order); a task lost for good (``KilledWorker``, cancelled, result
        unreachable) comes back with ``error`` set. Unfinished tasks are cancelled if the
        iteration stops early."""
        futs = {self.submit(fn, *args, **kwargs): i for i, (args, kwargs) in enumerate(tasks)}
        pending = set(futs)
        try:
            while pending:
                done, pending = self.wait(pending)
                for fut in sorted(done, key=futs.__getitem__):
                    try:
                        res, err = fut.result()
                    except Exception as e:  # KilledWorker, CancelledError, lost connection: report, keep going
                        res, err = None, f"{type(e).__name__}: {e}"
                    yield TaskOutcome(futs[fut], res, err)
                    fut.release()
        finally:
            if pending and self.client is not None:
                try:
                    self.client.cancel(list(pending))
                except Exception:  # pragma: no cover - the client may already be gone
                    pass

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

    def __repr__(self):
        return f"DaskExecutor({self.description}, workers={self.workers}, threads={self.threads})"


def _call_packed(fn: Callable, args: tuple, kwargs: dict):
    # the task's own keyword arguments travel packed, so none can collide with client.submit's
    return call_task(fn, *args, **kwargs)


def _worker_thread_settings() -> dict:
    import torch
    return dict(torch_threads=torch.get_num_threads(), pid=os.getpid(),
                **{k: os.environ.get(k) for k in THREAD_ENV_VARS})


# --- scheduler names ------------------------------------------------------------------------------

def _count(arg: str | None, what: str) -> int | None:
    if arg in (None, ""):
        return None
    try:
        n = int(arg)
    except ValueError:
        raise ValueError(f"{what} takes a worker count, as in '{what}:4', got {arg!r}") from None
    if n < 1:
        raise ValueError(f"{what}: the worker count must be >= 1, got {n}")
    return n


def _dask_local_factory(arg: str | None) -> DaskExecutor:
    return DaskExecutor.local(_count(arg, "dask-local"))


def _dask_factory(arg: str | None) -> DaskExecutor:
    """``dask`` / ``dask:N`` (a LocalCluster) or ``dask:tcp://HOST:PORT`` (connect)."""
    if arg and "://" in arg:
        return DaskExecutor.connect(arg)
    return DaskExecutor.local(_count(arg, "dask"))


def _address_factory(protocol: str) -> Callable[[str | None], DaskExecutor]:
    # make_executor splits "tcp://HOST:PORT" at its first ':' into name "tcp" and arg "//HOST:PORT"
    def factory(arg: str | None) -> DaskExecutor:
        if not arg or not arg.startswith("//"):
            raise ValueError(f"a Dask scheduler address looks like '{protocol}://HOST:PORT', got {protocol}:{arg or ''}")
        return DaskExecutor.connect(f"{protocol}:{arg}")
    factory.__name__ = f"_{protocol}_factory"
    return factory


def _local_dask_or_pool(arg: str | None) -> Executor:
    """``local:N``: a Dask LocalCluster of N workers when N > 1 and Dask is installed, else the
    in-process / process-pool :class:`~meanode.sweep.LocalExecutor`."""
    from .sweep import LocalExecutor
    n = _count(arg, "local")
    n = n if n is not None else (os.cpu_count() or 1)
    if n > 1 and dask_available()[0]:
        return DaskExecutor.local(n)
    return LocalExecutor(n)


def register(local: bool = False) -> None:
    """Register the Dask scheduler names with :func:`meanode.sweep.register_executor`:
    ``dask-local[:N]``, ``dask[:N]``, ``dask:tcp://...``, ``tcp://HOST:PORT``, ``tls://HOST:PORT``.
    ``local=True`` also makes ``local:N`` (N > 1) a Dask LocalCluster. Idempotent."""
    register_executor("dask-local", _dask_local_factory)
    register_executor("dask", _dask_factory)
    for proto in ("tcp", "tls"):
        register_executor(proto, _address_factory(proto))
    if local:
        register_executor("local", _local_dask_or_pool)


if "dask-local" not in EXECUTORS:
    register()
