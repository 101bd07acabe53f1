"""The engines' end of vLLM's weight-transfer API, for every backend: ``VLLMWeightSyncClient`` implementations that
the learner's trainer-side engine (rlvr_temp.weights.sender) calls.

:class:`RayEnginesClient` runs in the learner's process and fans each call out to the rollout-worker Ray actors
(the driver builds it, rlvr_temp.weights.sync, and hands it to the learner). :class:`LocalLLMClient` wraps an
in-process ``vllm.LLM``; the rollout worker (rlvr_temp.engine.worker) inherits it, tests and benchmarks use it
directly. Imports neither vLLM nor Ray at import time. Left out: vLLM's HTTP client (no engine runs as a server).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlvr_temp.weights.base import GROUP_BACKENDS


class RayEnginesClient:
    """``VLLMWeightSyncClient`` over rollout-worker Ray actors (each exposing ``init_weight_transfer_engine(dict)``,
    ``start_weight_update()``, ``update_weights(dict)``, ``finish_weight_update()``). Every call fans out to all
    workers and waits for all. Each engine gets exactly its backend's init fields: for a backend whose engines join
    a transfer group (``GROUP_BACKENDS``), engine ``k`` also gets ``rank_offset`` 1 + the TP sizes of engines
    ``0..k-1``; ``ipc`` engines get the trainer's fields only."""

    def __init__(self, workers: Sequence[Any], tp_sizes: Sequence[int], backend: str) -> None:
        if len(workers) != len(tp_sizes) or any(int(t) < 1 for t in tp_sizes):
            raise ValueError(f"{len(workers)} workers need as many TP sizes >= 1, got {list(tp_sizes)}")
        self.workers, self.tp_sizes = list(workers), [int(t) for t in tp_sizes]
        self.backend = backend

    @property
    def world_size(self) -> int:
        """The transfer group's size: the trainer plus every engine's workers."""
        return 1 + sum(self.tp_sizes)

    def _all(self, method: str, args: Sequence[tuple] | None = None) -> None:
        import ray

        args = args or [()] * len(self.workers)
        ray.get([getattr(w, method).remote(*a) for w, a in zip(self.workers, args)])

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        if self.backend not in GROUP_BACKENDS:
            self._all("init_weight_transfer_engine", [(dict(init_info),)] * len(self.workers))
            return
        offsets = [1 + sum(self.tp_sizes[:k]) for k in range(len(self.workers))]
        self._all("init_weight_transfer_engine", [({**init_info, "rank_offset": o},) for o in offsets])

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._all("update_weights", [(update_info,)] * len(self.workers))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")


#: what the engine's processes need in their environment per backend (set before ``vllm.LLM`` starts them). vLLM's
#: IPC update carries CUDA-IPC rebuild arguments (the tensor and storage classes, a dtype, handle bytes) across the
#: engine client's msgpack socket, whose encoder refuses them unless insecure serialization is allowed (its
#: ``ipc_handles_pickled`` form needs the same switch to be unpickled). Every other backend's update is plain names,
#: dtypes and shapes: the switch stays off there.
ENGINE_ENV: dict[str, dict[str, str]] = {"ipc": {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}}


class PartlyLoadedError(RuntimeError):
    """An engine whose weight update began and did not finish: its layers are partly reloaded (vLLM's layerwise
    reload leaves the rest unloaded), so it must not serve until a whole update has gone through."""


class LocalLLMClient:
    """``VLLMWeightSyncClient`` over an in-process ``vllm.LLM`` (tests, benchmarks); resets its prefix cache after
    each update, and refuses to generate (:meth:`check_loaded`) between an update's start and its finish."""

    partly_loaded = False  # between start_weight_update and finish_weight_update

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.partly_loaded = True
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)
        self.llm.reset_prefix_cache()
        self.partly_loaded = False

    def check_loaded(self) -> None:
        """Raise :class:`PartlyLoadedError` (one line) if a weight update started here and did not finish."""
        if self.partly_loaded:
            raise PartlyLoadedError(
                "this engine's weight update started and did not finish (a failed sync): its model is partly "
                "loaded, so it does not generate until a whole update has gone through"
            )
