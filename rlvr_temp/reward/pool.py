"""A hang-proof pool of worker processes: every job has a hard deadline, and a worker that overruns or dies is
killed and the pool rebuilt. Runs in the calling process (the driver's Verifier, an evaluation); the jobs run in
the workers.

Used by :class:`rlvr_temp.reward.verify.Verifier`, whose jobs call math-verify: its timeouts use ``signal.alarm``
(main thread only) and some LaTeX makes sympy run for a very long time, so no call may be trusted to return. At
most ``num_workers`` jobs are in flight, so that each deadline counts from when its job really starts; the jobs
that were in flight when the pool is rebuilt run again; a pool that keeps dying without finishing a job is an error,
not a loop. Workers are launched while ``__main__``'s ``__file__`` / ``__spec__`` are hidden, so they never re-run
the caller's main module (a script without ``if __name__ == "__main__":``, ``python -``, a notebook, a Ray actor).
See docs/verifier.md, "Calling contexts". Left out: growing or shrinking the pool with the load.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import context as mp_ctx
from typing import Any

#: Pool restarts in a row, without any job finishing, after which :meth:`WorkerPool.run` fails instead of retrying.
MAX_IDLE_RESTARTS = 5


# ------------------------------------------------------------------------------------ starting workers
_MAIN_LOCK = threading.Lock()


@contextmanager
def _main_hidden() -> Iterator[None]:
    """Hide ``__main__.__file__`` / ``__spec__`` while one worker is launched.

    ``spawn.get_preparation_data`` (used by the spawn and forkserver start methods) puts
    ``init_main_from_path`` / ``init_main_from_name`` into each child's preparation data when the main module
    has a file or a spec, and the child then re-runs that module before it unpickles anything. That fails
    for ``python -`` (``<stdin>`` is no file), re-runs a script without a main guard (which creates another
    Verifier inside the half-started worker), and is never needed here: workers only run functions of importable
    modules (rlvr_temp.reward.verify's). With both attributes hidden, the preparation data has no main entry. The
    window is the few microseconds of ``Process.start()``; the attributes are restored even if the start fails.
    """
    with _MAIN_LOCK:
        main = sys.modules.get("__main__")
        if main is None:
            yield
            return
        d = main.__dict__
        saved = {k: d[k] for k in ("__file__", "__spec__") if k in d}
        d.pop("__file__", None)
        d["__spec__"] = None
        try:
            yield
        finally:
            d.pop("__file__", None)
            d.pop("__spec__", None)
            d.update(saved)


class _ForkServerWorker(mp_ctx.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _main_hidden():
            return mp_ctx.ForkServerProcess._Popen(process_obj)


class _SpawnWorker(mp_ctx.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _main_hidden():
            return mp_ctx.SpawnProcess._Popen(process_obj)


class _ForkServerContext(mp_ctx.ForkServerContext):
    Process = _ForkServerWorker


class _SpawnContext(mp_ctx.SpawnContext):
    Process = _SpawnWorker


def _mp_context(start_method: str) -> Any:
    """A multiprocessing context whose workers do not re-import ``__main__`` (forkserver / spawn)."""
    if start_method == "forkserver":
        return _ForkServerContext()
    if start_method == "spawn":
        return _SpawnContext()
    return mp.get_context(start_method)  # "fork": inherits everything, nothing is re-imported


# ------------------------------------------------------------------------------------------ the pool
class WorkerPool:
    """``num_workers`` processes, each started with ``initializer(*initargs)``, that run picklable jobs under a hard
    per-job deadline (:meth:`run`). Workers start once (in the constructor) and are reused; after a fork the child
    starts its own. ``restarts`` counts the rebuilds. Thread-safe: concurrent calls are serialized."""

    def __init__(
        self,
        num_workers: int,
        *,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        start_method: str = "forkserver",
        startup_timeout_s: float = 120.0,
        name: str = "worker",
    ) -> None:
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.num_workers, self.start_method, self.startup_timeout_s = num_workers, start_method, startup_timeout_s
        self.initializer, self.initargs, self.name = initializer, initargs, name
        self.restarts = 0
        self.closed = False
        self._lock = threading.RLock()
        self._pool: ProcessPoolExecutor | None = None
        self._pool_pid = -1
        with self._lock:
            self._ensure()

    def _ensure(self) -> ProcessPoolExecutor:
        if self.closed:
            raise RuntimeError(f"the {self.name} pool is closed")
        if self._pool is not None and self._pool_pid == os.getpid():
            return self._pool
        pool = ProcessPoolExecutor(
            self.num_workers,
            mp_context=_mp_context(self.start_method),
            initializer=self.initializer,
            initargs=self.initargs,
        )
        pings = [pool.submit(os.getpid) for _ in range(self.num_workers)]  # each submit spawns one worker
        done, _ = wait(pings, timeout=self.startup_timeout_s)
        errors = [e for f in done if (e := f.exception()) is not None]
        if len(done) < len(pings) or errors:
            self._kill(pool)
            why = f"{type(errors[0]).__name__}: {errors[0]}" if errors else f"no reply in {self.startup_timeout_s} s"
            raise RuntimeError(
                f"{self.name} workers ({self.start_method}) failed to start: {why.splitlines()[0][:300]} "
                "(a worker's own error, if any, is on stderr); see docs/verifier.md, 'Calling contexts'"
            )
        self._pool, self._pool_pid = pool, os.getpid()
        return pool

    @staticmethod
    def _kill(pool: ProcessPoolExecutor) -> None:  # no public way to kill the workers before Python 3.14
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            if p.is_alive():
                p.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=5)

    def _restart(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._kill(self._pool)
        self._pool = None
        self.restarts += 1

    def pids(self) -> list[int]:
        """The process ids of the live pool's workers (none while it is down). Does not wait for a running
        :meth:`run` (it reads a snapshot), so another thread can watch the workers mid-batch."""
        pool = self._pool if self._pool_pid == os.getpid() else None
        return list(dict(getattr(pool, "_processes", None) or {}))

    def run(self, fn: Callable[..., Any], jobs: Sequence[tuple], timeout_s: float) -> list[tuple[str, Any]]:
        """Runs ``fn(*job)`` for each job in the workers; returns ("ok", value) / ("timeout" | "error", None) per job.

        A job gets ``timeout_s`` seconds from its dispatch to a worker; one that overruns is killed with the pool,
        and the innocent jobs then in flight run again. A job whose worker died (crash, OOM kill) is retried once,
        then is an error.
        """
        results: list[tuple[str, Any]] = [("error", None)] * len(jobs)
        with self._lock:
            pending = deque(range(len(jobs)))
            retries = [0] * len(jobs)
            inflight: dict[Future, tuple[int, float]] = {}
            idle_restarts = 0  # pool restarts since a job last finished: a pool that keeps dying is an error
            while pending or inflight:
                if idle_restarts > MAX_IDLE_RESTARTS:
                    raise RuntimeError(
                        f"the {self.name} pool died {idle_restarts} times in a row without finishing a job "
                        "(out of memory? see reward.num_workers and docs/verifier.md)"
                    )
                pool = self._ensure()
                while pending and len(inflight) < self.num_workers:
                    i = pending.popleft()
                    try:
                        fut = pool.submit(fn, *jobs[i])
                    except BrokenProcessPool:
                        pending.appendleft(i)
                        break
                    inflight[fut] = (i, time.monotonic() + timeout_s)
                if not inflight:  # the pool broke before anything could be submitted
                    self._restart()
                    idle_restarts += 1
                    continue
                first_deadline = min(d for _, d in inflight.values())
                done, _ = wait(list(inflight), max(0.0, first_deadline - time.monotonic()), FIRST_COMPLETED)
                broken = False
                for fut in done:
                    i, _ = inflight.pop(fut)
                    try:
                        results[i] = ("ok", fut.result())
                        idle_restarts = 0
                    except BrokenProcessPool:  # a worker died (crash, OOM kill): retry once, then error
                        broken = True
                        retries[i] += 1
                        if retries[i] <= 1:
                            pending.appendleft(i)
                    except Exception:
                        results[i] = ("error", None)
                now = time.monotonic()
                overdue = [f for f, (_, d) in inflight.items() if d <= now]
                for fut in overdue:
                    results[inflight.pop(fut)[0]] = ("timeout", None)
                if overdue or broken:
                    pending.extendleft(i for i, _ in inflight.values())  # innocent jobs: run again
                    inflight.clear()
                    self._restart()
                    idle_restarts += int(broken)
        return results

    def close(self) -> None:
        """Stop the worker processes. Idempotent."""
        with self._lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._kill(self._pool)
            self._pool, self.closed = None, True
