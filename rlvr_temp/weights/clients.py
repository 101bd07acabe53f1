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


class RayEnginesClient:
    """``VLLMWeightSyncClient`` over rollout-worker Ray actors (each exposing ``init_weight_transfer_engine(dict)``,
    ``start_weight_update()``, ``update_weights(dict)``, ``finish_weight_update()``). Every call fans out to all
    workers and waits for all; engine ``k`` gets ``rank_offset`` 1 + the TP sizes of engines ``0..k-1``."""

    def __init__(self, workers: Sequence[Any], tp_sizes: Sequence[int]) -> None:
        if len(workers) != len(tp_sizes) or any(int(t) < 1 for t in tp_sizes):
            raise ValueError(f"{len(workers)} workers need as many TP sizes >= 1, got {list(tp_sizes)}")
        self.workers, self.tp_sizes = list(workers), [int(t) for t in tp_sizes]

    @property
    def world_size(self) -> int:
        """The transfer group's size: the trainer plus every engine's workers."""
        return 1 + sum(self.tp_sizes)

    def _all(self, method: str, args: Sequence[tuple] | None = None) -> None:
        import ray

        args = args or [()] * len(self.workers)
        ray.get([getattr(w, method).remote(*a) for w, a in zip(self.workers, args)])

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        offsets = [1 + sum(self.tp_sizes[:k]) for k in range(len(self.workers))]
        self._all("init_weight_transfer_engine", [({**init_info, "rank_offset": o},) for o in offsets])

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._all("update_weights", [(update_info,)] * len(self.workers))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")


class LocalLLMClient:
    """``VLLMWeightSyncClient`` over an in-process ``vllm.LLM`` (tests, benchmarks); resets its prefix cache after
    each update."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)
        self.llm.reset_prefix_cache()
