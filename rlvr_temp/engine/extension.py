"""The rollout side's hook into vLLM's worker processes: a ``worker_extension_cls`` mixed into vLLM's worker class.

vLLM runs the model (and so our temperature processor) in its own worker process(es): one engine-core process
in its normal multiprocess mode, one process per rank under tensor parallelism. The rollout worker reaches the
processor there only through ``LLM.collective_rpc("rlvr_<method>")``, which calls the methods below on every
rank; records and entropy windows are read from rank 0 (every rank samples from the same gathered logits, so
every rank's processor holds the same windows) and written to all ranks. The same calls work with the engine in
the worker's own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so there is one code path.

Importing this module in a worker process also registers the project's weight-transfer backends with vLLM's
factory (``rlvr_temp.weights.gloo``), before vLLM builds the worker's transfer engine, and shortens how long the
worker busy-waits for its next call once idle (:func:`shorten_idle_spin`; CPU engines).

Left out: pipeline parallelism (the processor would run on the last stage only; refused by the config).
"""

from __future__ import annotations

import io
import os
import socket
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


weight_sync.register()  # vLLM creates the worker's weight-transfer engine when it loads the model
shorten_idle_spin()

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
