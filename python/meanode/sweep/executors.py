"""Where sweep tasks run: any :class:`concurrent.futures.Executor`, or a Dask ``distributed.Client``.

As in python-adaptive's runner, the driver takes whatever the user has — a
``ProcessPoolExecutor``, a ``ThreadPoolExecutor``, ``client.get_executor()`` of a Dask client, an
MPI pool — and waits on its futures with :func:`concurrent.futures.wait`. :func:`ensure_executor`
turns the other accepted forms into one: ``None`` (the default local executor), an int (local
workers), a ``distributed.Client``, or a scheduler string of the command line:

* ``serial`` — in this process, one task at a time (:class:`SerialExecutor`);
* ``pool:N`` — N spawned processes (:class:`ProcessPool`: one torch thread each; a worker that
  dies loses only its own task, the pool is rebuilt and the others resubmitted);
* ``local:N`` — a Dask LocalCluster of N single-threaded workers on 127.0.0.1 (``local:1``:
  in this process); ``local`` alone: one worker per core;
* ``tcp://HOST:PORT`` (``tls://``), ``dask:tcp://...`` — an existing Dask scheduler;
  ``dask:N``, ``dask-local:N`` — a LocalCluster.

Every task is :func:`call_task` around a module-level function with picklable arguments, so
it returns ``(result, error_text)`` and no exception object ever needs pickling; a task that
kills its worker for good comes back as the executor's exception (``KilledWorker``,
:class:`WorkerDied`).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import numbers
import os
import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

__all__ = ["call_task", "SerialExecutor", "ProcessPool", "LocalExecutor", "WorkerDied", "EXECUTORS",
           "register_executor", "make_executor", "ensure_executor", "executor_workers"]


def _worker_init(threads: int = 1) -> None:
    import torch
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def call_task(fn: Callable, *args, **kwargs) -> tuple[Any, str | None]:
    """Run ``fn`` and return ``(result, None)`` or ``(None, traceback text)``."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:  # noqa: BLE001 - reported to the driver, never swallowed
        return None, "".join(traceback.format_exception(type(e), e, e.__traceback__))


class SerialExecutor(cf.Executor):
    """In-process, each task run when submitted (debugging, tests, tiny sweeps)."""

    workers = 1

    def submit(self, fn, /, *args, **kwargs):
        fut: cf.Future = cf.Future()
        fut.set_running_or_notify_cancel()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future, as any executor does
            fut.set_exception(e)
        return fut

    def __repr__(self):
        return "SerialExecutor()"


class WorkerDied(RuntimeError):
    """A task whose worker process died more than ``max_failures`` times (:class:`ProcessPool`)."""


@dataclass(eq=False)
class _Task:
    fn: Callable
    args: tuple
    kwargs: dict
    outer: cf.Future
    failures: int = 0
    started: bool = False


class ProcessPool(cf.Executor):
    """``workers`` spawned processes (torch and BLAS limited to ``threads`` threads each); ``workers <= 1``
    runs in this process.

    Unlike a plain ``ProcessPoolExecutor``, whose every pending future fails once one worker dies
    (``BrokenProcessPool``), a dead worker here costs only the tasks that were running: the pool
    is rebuilt and they are resubmitted. A task that was running when a worker died runs alone
    afterwards (so its next death is its own, and an innocent task is not blamed twice); after
    ``max_failures`` + 1 deaths it fails with :class:`WorkerDied`. At most ``workers`` tasks are in
    the pool at a time (the rest wait here), so a death can only involve tasks that were running.
    """

    def __init__(self, workers: int | None = None, threads: int = 1, max_failures: int = 3):
        self.workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
        self.threads, self.max_failures = int(threads), int(max_failures)
        self._serial = SerialExecutor() if self.workers <= 1 else None
        self._pool: cf.ProcessPoolExecutor | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._waiting: deque[_Task] = deque()
        self._running: dict[cf.Future, tuple[_Task, int]] = {}
        self._events: queue.Queue = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._shutdown = False

    def __repr__(self):
        return f"ProcessPool(workers={self.workers}, threads={self.threads})"

    # --- the pool -----------------------------------------------------------------------------
    def _get_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(self.threads,))
        return self._pool

    def _rebuild(self) -> None:
        """Drop the broken pool (lock held); the next submit starts a fresh one."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._generation += 1

    def _pump(self) -> None:
        """Hand waiting tasks to the pool (lock held): up to ``workers``; a task with a death on
        its record only when nothing else runs, and nothing beside it."""
        while self._waiting and len(self._running) < self.workers:
            task = self._waiting[0]
            alone = task.failures > 0 or any(t.failures > 0 for t, _ in self._running.values())
            if alone and self._running:
                return
            self._waiting.popleft()
            if not task.started:
                if not task.outer.set_running_or_notify_cancel():
                    continue  # cancelled while it waited
                task.started = True
            try:
                pf = self._get_pool().submit(task.fn, *task.args, **task.kwargs)
            except BrokenProcessPool:
                # a worker died and the dispatcher has not heard yet (its news is queued behind
                # this call): rebuild now; the old pool's futures still arrive as BrokenProcessPool
                # with the old generation and are resubmitted then
                self._rebuild()
                pf = self._get_pool().submit(task.fn, *task.args, **task.kwargs)
            self._running[pf] = (task, self._generation)
            pf.add_done_callback(self._events.put)
            if task.failures > 0:
                return

    def _dispatch(self) -> None:
        while True:
            pf = self._events.get()
            if pf is None:
                return
            with self._lock:
                task, gen = self._running.pop(pf)
                exc = None if pf.cancelled() else pf.exception()
                if pf.cancelled() and gen != self._generation:
                    self._waiting.appendleft(task)  # cancelled with a broken pool it never ran in: not its fault
                elif isinstance(exc, BrokenProcessPool):
                    if gen == self._generation:  # first news of this break: rebuild
                        self._rebuild()
                    task.failures += 1
                    if task.failures > self.max_failures:
                        task.outer.set_exception(WorkerDied(
                            f"the task killed its worker process {task.failures} times ({exc})"))
                    else:
                        self._waiting.appendleft(task)
                elif pf.cancelled():
                    task.outer.cancel()
                elif exc is not None:
                    task.outer.set_exception(exc)
                else:
                    task.outer.set_result(pf.result())
                if not self._shutdown:
                    self._pump()

    # --- concurrent.futures.Executor ---------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs):
        if self._serial is not None:
            return self._serial.submit(fn, *args, **kwargs)
        if self._shutdown:
            raise RuntimeError("cannot schedule new tasks after shutdown")
        outer: cf.Future = cf.Future()
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="meanode-pool-dispatch", daemon=True)
                self._dispatcher.start()
            self._waiting.append(_Task(fn, args, kwargs, outer))
            self._pump()
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for task in self._waiting:
                    task.outer.cancel()
                self._waiting.clear()
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        if self._dispatcher is not None:
            self._events.put(None)
            if wait:
                self._dispatcher.join()


#: the old name of :class:`ProcessPool`
LocalExecutor = ProcessPool


# --- scheduler strings ------------------------------------------------------------------------------

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


def _local(arg: str | None) -> cf.Executor:
    """``local:N``: a Dask LocalCluster of N workers (N > 1); ``local:1`` in this process."""
    n = _count(arg, "local") or (os.cpu_count() or 1)
    if n <= 1:
        return ProcessPool(1)
    from ..distributed import DaskExecutor
    return DaskExecutor.local(n)


def _dask(arg: str | None) -> cf.Executor:
    """``dask`` / ``dask:N`` (a LocalCluster) or ``dask:tcp://HOST:PORT`` (connect)."""
    from ..distributed import DaskExecutor
    if arg and "://" in arg:
        return DaskExecutor.connect(arg)
    return DaskExecutor.local(_count(arg, "dask"))


def _dask_local(arg: str | None) -> cf.Executor:
    from ..distributed import DaskExecutor
    return DaskExecutor.local(_count(arg, "dask-local"))


def _address(protocol: str) -> Callable[[str | None], cf.Executor]:
    # make_executor splits "tcp://HOST:PORT" at its first ':' into name "tcp" and arg "//HOST:PORT"
    def factory(arg: str | None) -> cf.Executor:
        if not arg or not arg.startswith("//"):
            raise ValueError(f"a Dask scheduler address looks like '{protocol}://HOST:PORT', got {protocol}:{arg or ''}")
        from ..distributed import DaskExecutor
        return DaskExecutor.connect(f"{protocol}:{arg}")
    factory.__name__ = f"_{protocol}_factory"
    return factory


#: Executor constructors by scheduler name: ``"name"`` or ``"name:arg"`` -> ``factory(arg)``.
EXECUTORS: dict[str, Callable[[str | None], cf.Executor]] = {
    "serial": lambda arg: SerialExecutor(),
    "pool": lambda arg: ProcessPool(_count(arg, "pool")),
    "local": _local,
    "dask": _dask,
    "dask-local": _dask_local,
    "tcp": _address("tcp"),
    "tls": _address("tls"),
}


def register_executor(name: str, factory: Callable[[str | None], cf.Executor]) -> None:
    """Make ``make_executor("name:arg")`` (and ``--scheduler name:arg``) build ``factory(arg)``."""
    EXECUTORS[name] = factory


def make_executor(spec: str | int | None = None) -> cf.Executor:
    """An executor from a scheduler string (see the module docstring), an int (``local:N``) or
    None (``local``: one worker per core)."""
    if spec is None:
        return EXECUTORS["local"](None)
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        return EXECUTORS["local"](str(int(spec)))
    if not isinstance(spec, str):
        raise TypeError(f"a scheduler is a name like 'local:2', an int, a concurrent.futures.Executor or a "
                        f"distributed.Client, got {spec!r}")
    name, _, arg = spec.partition(":")
    if name not in EXECUTORS:
        raise ValueError(f"unknown scheduler {name!r}; known: {sorted(EXECUTORS)} (others register with "
                         "meanode.sweep.register_executor)")
    return EXECUTORS[name](arg or None)


def ensure_executor(executor) -> tuple[cf.Executor, bool]:
    """``(executor, owned)``: a :class:`concurrent.futures.Executor` as is (not owned: the caller
    shuts it down), a ``distributed.Client`` as ``client.get_executor()`` (not owned), anything
    else through :func:`make_executor` (owned: the driver shuts it down)."""
    if isinstance(executor, cf.Executor):
        return executor, False
    try:
        import distributed
    except ImportError:  # pragma: no cover - dask is a dependency of meanode
        distributed = None
    if distributed is not None and isinstance(executor, distributed.Client):
        from ..distributed import ThreadLimits
        executor.register_plugin(ThreadLimits(1), name=ThreadLimits.name)
        return executor.get_executor(pure=False), False
    return make_executor(executor), True


def executor_workers(executor: cf.Executor) -> int:
    """How many tasks the executor runs at once, as far as it says (default 1)."""
    for attr in ("workers", "_max_workers"):
        n = getattr(executor, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    client = getattr(executor, "_client", None)
    if client is not None:
        try:
            return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
        except Exception:  # noqa: BLE001 - best effort
            return 1
    return 1
