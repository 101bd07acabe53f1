"""The rollout side's hook into vLLM's worker processes: a ``worker_extension_cls`` mixed into vLLM's worker class.

vLLM runs the model (and so our temperature processor) in its own worker process(es): one engine-core process
in its normal multiprocess mode, one process per rank under tensor parallelism. The rollout worker reaches the
processor there only through ``LLM.collective_rpc("rlvr_<method>")``, which calls the methods below on every
rank; records and entropy windows are read from rank 0 (every rank samples from the same gathered logits, so
every rank's processor holds the same windows) and written to all ranks. The same calls work with the engine in
the worker's own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so there is one code path.

Importing this module in a worker process also registers the project's weight-transfer backends with vLLM's
factory (``rlvr_temp.weights.gloo``), before vLLM builds the worker's transfer engine, and shortens how long the
worker busy-waits for its next call once idle (:func:`shorten_idle_spin`; CPU engines), and makes the engine's
processes exit when the rollout actor that owns them dies (:func:`exit_with_owner`).

Left out: pipeline parallelism (the processor would run on the last stage only; refused by the config).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import threading
import time
from typing import Any

import torch

from rlvr_temp.weights import gloo as weight_sync

#: environment variable with the seconds a CPU engine's worker busy-waits for its next call after the last one
#: (set by ``rlvr_temp.engine.worker`` for CPU engines; read when vLLM imports this module in the worker process)
IDLE_SPIN_ENV = "RLVR_TEMP_VLLM_IDLE_SPIN_S"


def shorten_idle_spin() -> float | None:
    """Make vLLM's shared-memory queue readers created from now on in this process busy-wait ``$IDLE_SPIN_ENV``
    seconds after their last read (vLLM: 1 s, fixed); returns the value, or None where the variable is unset.

    A vLLM worker reads each step's call from that queue and, after it, spins on ``sched_yield`` for a second
    before it sleeps on a socket. Between decode steps (tens of ms apart) that saves a wake-up; after the last
    call of a generation it takes a core from a colocated CPU learner for a second: measured 0.1-0.4 core-s, and
    about 0.15 s of a 4 s update, per step (docs/benchmarks.md). vLLM builds the worker's queues after it has
    imported this module (the ``worker_extension_cls``), so its readers get the shorter spin."""
    value = os.environ.get(IDLE_SPIN_ENV)
    if not value:
        return None
    from vllm.distributed.device_communicators import shm_broadcast

    spin = float(value)
    base = getattr(shm_broadcast.SpinCondition, "_rlvr_base", shm_broadcast.SpinCondition)

    class ShortSpin(base):  # type: ignore[misc,valid-type]
        _rlvr_base = base

        def __init__(self, is_reader: bool, context: Any, notify_address: str, busy_loop_s: float = spin) -> None:
            super().__init__(is_reader, context, notify_address, busy_loop_s=busy_loop_s)

    shm_broadcast.SpinCondition = ShortSpin
    return spin


#: environment variable naming the process that owns this engine, ``<pid>:<start time>``: the rollout actor
OWNER_ENV = "RLVR_TEMP_ENGINE_OWNER"


def _start_time(pid: int) -> int | None:
    """Start time (clock ticks after boot) of live process ``pid``; None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _carries(pid: int, item: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return item in fh.read().split(b"\0")
    except OSError:
        return False


def exit_with_owner(poll_s: float = 1.0) -> str | None:
    """Make an engine's processes exit when the process that owns the engine (its rollout actor) dies; returns
    what this process did: ``"owner"``, ``"watching"`` or None (no ``/proc``, or an owner that is no ancestor).

    Called on import. In a process that multiprocessing did not start (the rollout actor, which imports this module
    through rlvr_temp.engine.worker before it builds its engine) it records the process in ``$OWNER_ENV``, which
    the vLLM processes it starts inherit. In those (``EngineCore``, and ``Worker``, which imports this module: the
    ``worker_extension_cls``) a daemon thread checks the owner every ``poll_s`` seconds; once it has gone, the
    thread SIGKILLs the processes between this one and the owner (the ``EngineCore`` above a ``Worker``: those
    whose environment carries the same owner) and then this one.

    vLLM alone leaves them running when the actor dies (SIGKILLed by Ray when its driver dies, or by the OOM
    killer): a ``Worker`` notices its ``EngineCore``'s death (a pipe), but an ``EngineCore``'s only link to the
    actor is a ZMQ socket, which waits for a peer that will never come back. ``PR_SET_PDEATHSIG`` would need code
    in the ``EngineCore`` (none of ours runs there) and fires when the *thread* that started the process exits."""
    import multiprocessing

    if not os.path.isdir("/proc/self"):
        return None
    if multiprocessing.parent_process() is None:
        os.environ[OWNER_ENV] = f"{os.getpid()}:{_start_time(os.getpid())}"
        return "owner"
    owner = os.environ.get(OWNER_ENV, "")
    if ":" not in owner:
        return None
    owner_pid, owner_start = (int(x) if x.isdigit() else -1 for x in owner.split(":", 1))
    item = f"{OWNER_ENV}={owner}".encode()
    between, pid = [], _parent(os.getpid())
    while pid > 1 and pid != owner_pid and _carries(pid, item):
        between.append((pid, _start_time(pid)))
        pid = _parent(pid)
    if pid != owner_pid and _start_time(owner_pid) == owner_start:
        return None  # the owner lives but is no ancestor: not ours to follow

    def watch() -> None:
        while _start_time(owner_pid) == owner_start:
            time.sleep(poll_s)
        for p, start in [*between, (os.getpid(), _start_time(os.getpid()))]:
            if start is not None and _start_time(p) == start:
                os.kill(p, signal.SIGKILL)

    threading.Thread(target=watch, name="rlvr-exit-with-owner", daemon=True).start()
    return "watching"


weight_sync.register()  # vLLM creates the worker's weight-transfer engine when it loads the model
shorten_idle_spin()
exit_with_owner()

#: the names vLLM imports by string in each worker process: this extension (``worker_extension_cls``) and the
#: temperature processor of each model runner (``logits_processors``); the TTM plugin's are in rlvr_temp.engine.ttm
EXTENSION = "rlvr_temp.engine.extension.TemperatureWorkerExtension"
PROCESSOR_V1 = "rlvr_temp.engine.processor_v1:TemperatureProcessor"
PROCESSOR_V2 = "rlvr_temp.engine.processor_v2:TemperatureProcessorV2"


def pack(obj: Any) -> bytes:
    """``obj`` as bytes for vLLM's RPC, whose encoder keeps plain containers of numbers and strings only."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unpack(blob: bytes) -> Any:
    """The object :func:`pack` made (our own bytes, from our own worker process)."""
    return torch.load(io.BytesIO(blob), weights_only=False)


class TemperatureWorkerExtension:
    """Methods vLLM adds to its worker class; called through ``LLM.collective_rpc``. ``self`` is vLLM's worker."""

    def _rlvr_processor(self) -> Any:
        found = getattr(self, "_rlvr_found", None)
        if found is not None:
            return found
        runner = self.model_runner  # type: ignore[attr-defined]
        candidates: list[Any] = []
        batch = getattr(runner, "input_batch", None)  # Model Runner V1: the persistent batch owns the processors
        if batch is not None and getattr(batch, "logitsprocs", None) is not None:
            candidates += list(batch.logitsprocs.all)
        sampler = getattr(runner, "sampler", None)  # Model Runner V2: the sampler's processor pipeline
        candidates += list(getattr(sampler, "logits_processors", None) or [])
        mine = [p for p in candidates if getattr(p, "RLVR_TEMP_PROCESSOR", False)]
        if len(mine) != 1:
            raise RuntimeError(f"expected one rlvr_temp processor in the vLLM worker, found {len(mine)}")
        self._rlvr_found = mine[0]
        return mine[0]

    def _rlvr_rank(self) -> int:
        return int(getattr(self, "rank", 0))

    def rlvr_collect(self, uids: list[str]) -> dict[str, tuple[list[float], list[float], list[float] | None]] | None:
        """The per-token (temperatures, entropies, sampled log-probs) of every request since the last call (log-probs
        None where the processor records none: the V2 one), then forget ``uids`` (finished requests: their rows and
        per-sequence windows). Rank 0 returns the records, the others None."""
        proc = self._rlvr_processor()
        records = proc.drain()
        logprobs = proc.drain_logprobs()
        proc.release(list(uids))
        if self._rlvr_rank() != 0:
            return None
        return {uid: (temps, ents, logprobs.get(uid)) for uid, (temps, ents) in records.items()}

    def rlvr_state_dict(self) -> bytes | None:
        """The entropy windows, :func:`pack`ed (rank 0; None elsewhere)."""
        return pack(self._rlvr_processor().state_dict()) if self._rlvr_rank() == 0 else None

    def rlvr_load_state_dict(self, blob: bytes) -> None:
        """Load what :meth:`rlvr_state_dict` returned (on every rank)."""
        self._rlvr_processor().load_state_dict(unpack(blob))

    def rlvr_reload_weights(self, blob: bytes) -> None:
        """Load :func:`pack`ed ``[(HF name, tensor), ...]`` in place (the object-store sync path; the weight-transfer
        engines of rlvr_temp.weights stream instead)."""
        self.reload_weights(weights_iterator=iter(unpack(blob)))  # type: ignore[attr-defined]

    def rlvr_reset(self) -> None:
        self._rlvr_processor().reset()

    def rlvr_open_windows(self) -> int:
        return int(self._rlvr_processor().open_windows())

    def rlvr_apply_timer(self, start: bool) -> dict[str, float]:
        """Benchmarks: ``start=True`` wraps the processor's ``apply`` in a wall-clock timer (this rank), ``False``
        removes it and returns ``{"s": seconds, "calls": n}`` since the start."""
        proc = self._rlvr_processor()
        if start:
            spent = self._rlvr_spent = {"s": 0.0, "calls": 0.0}
            inner = type(proc).apply.__get__(proc)

            def timed_apply(*args: Any) -> Any:
                t = time.perf_counter()
                try:
                    return inner(*args)
                finally:
                    spent["s"] += time.perf_counter() - t
                    spent["calls"] += 1

            proc.apply = timed_apply
            return dict(spent)
        proc.__dict__.pop("apply", None)  # back to the class's method
        return dict(getattr(self, "_rlvr_spent", {"s": 0.0, "calls": 0.0}))

    def rlvr_info(self) -> dict[str, Any]:
        """Where this rank runs and with which processor and model runner (recorded in ``engines.json``)."""
        proc = self._rlvr_processor()
        return {
            "rank": self._rlvr_rank(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "processor": type(proc).__name__,
            "model_runner": type(self.model_runner).__module__,  # type: ignore[attr-defined]
        }
