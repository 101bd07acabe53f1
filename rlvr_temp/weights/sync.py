"""The driver's handle on the weight sync between the learner and the rollout engines.

Runs in the driver (rlvr_temp.driver.trainer). :class:`EngineSync` connects the learner (rank 0 of its group) to
every engine through vLLM's weight-transfer API -- ``rollout.engine.weight_sync`` resolved by
``RunConfig.weight_sync_backend``: ``gloo`` on CPU, ``nccl`` between GPUs, ``ipc`` on a shared GPU, one module each
(rlvr_temp.weights.base) -- and runs one round after each update; the learner's end is rlvr_temp.weights.sender. A
transfer group's members are fixed at its rendezvous, so when Ray has restarted the learner or an engine since
(rlvr_temp.driver.recovery), the survivors leave the old group and a new one is formed before the next round.
``object_store`` keeps the earlier path, here: one merged state dict through Ray's object store, loaded by every
engine. With vLLM's sleep mode (``colocated`` on GPUs, ``RunConfig.engines_sleep``) the engines free their memory
before each update (:meth:`EngineSync.release`, level 2: nothing is copied to the host) and wake their weights, then
their KV cache, around the sync, as verl does.

With ``rollout.engine.lora_updates`` the group carries the learner's base once, when it forms, and each round only
the LoRA adapters: the learner writes them under ``<run_dir>/adapters/`` and every engine loads them as its LoRA
request (vLLM's adapters), as they are far fewer bytes than the merged model (docs/weight_sync.md).

Imports no vLLM: the driver needs none to sync.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from rlvr_temp.config.schema import RunConfig
from rlvr_temp.weights.base import BUCKET_BYTES
from rlvr_temp.weights.clients import RayEnginesClient

log = logging.getLogger("rlvr_temp.weights.sync")

#: vLLM's sleep level while the learner trains. Level 2 discards the weights (vLLM keeps its buffers) and the KV
#: cache; level 1 would first copy the weights to pinned host memory and back (2 x 3.1 GB per engine per step at
#: 1.5B, 15 GB pinned per engine at 7B) although the sync overwrites every one of them right after waking.
SLEEP_LEVEL = 2


class EngineSync:
    """The driver's handle on the learner -> engines weight sync of one run."""

    def __init__(self, cfg: RunConfig, learner: Any, workers: list[Any]) -> None:
        self.backend = cfg.weight_sync_backend()
        self.tp_sizes = [cfg.rollout.engine.tensor_parallel_size] * len(workers)
        self.learner, self.workers = learner, workers
        self._members: tuple[Any, ...] | None = None  # (learner id, worker ids) the current group was formed with
        self.sleep, self.asleep = cfg.engines_sleep(), False
        # LoRA-only updates: the base once per transfer group, then each round's adapters through the run directory
        self.lora = cfg.rollout.engine.lora_updates
        self.adapters = str(Path(cfg.trainer.run_dir).resolve() / "adapters")
        self.version = 0

    def release(self) -> None:
        """Before an update: with sleep mode (colocated GPUs) the engines give the learner their memory, at
        :data:`SLEEP_LEVEL`."""
        if self.sleep:
            ray.get([w.sleep.remote(SLEEP_LEVEL) for w in self.workers])
            self.asleep = True

    def _connect(self, members: tuple[Any, ...]) -> None:
        # engines leave the group they are in (an earlier one of this run, or of a run that reused them); a
        # restarted actor has none
        for w in self.workers:
            try:
                ray.get(w.shutdown_weight_transfer_engine.remote())
            except Exception as exc:  # a dead or never-joined engine: nothing to leave
                log.debug("leaving the weight-transfer group: %s", exc)
        client = RayEnginesClient(self.workers, self.tp_sizes, self.backend)
        base_only = {"base_only": True} if self.lora else {}
        ray.get(self.learner.init_weight_sync.remote(client, self.backend, BUCKET_BYTES, **base_only))
        self._members = members
        if self.lora:  # the base the adapters apply to (a restarted engine has the checkpoint's, not the learner's)
            ray.get(self.learner.sync_weights.remote(incarnation=members[0]))

    def _send_adapters(self, learner_id: Any) -> dict[str, float]:
        """LoRA-only round: the learner writes its adapters, every engine loads them as its next LoRA request."""
        self.version += 1
        path, stats = ray.get(self.learner.save_adapters.remote(self.adapters, self.version, incarnation=learner_id))
        ray.get([w.load_adapters.remote(path, self.version) for w in self.workers])
        return stats

    def sync(self, learner_id: Any, worker_ids: list[Any]) -> dict[str, float]:
        """Send the learner's current weights to every engine; ``sync/*`` metrics (bytes and tensors per round; its
        time is the trainer's ``time/sync``). Sleeping engines wake their weights first and their KV cache after."""
        if self.asleep:
            ray.get([w.wake_up.remote(["weights"]) for w in self.workers])
        if self.backend == "object_store":
            ref = self.learner.export_weights.remote(incarnation=learner_id)
            ray.get([w.load_weights.remote(ref) for w in self.workers])
            stats: dict[str, float] = {}
        else:
            members = (learner_id, *worker_ids)
            if members != self._members:
                self._connect(members)
            if self.lora:
                stats = self._send_adapters(learner_id)
            else:
                stats = ray.get(self.learner.sync_weights.remote(incarnation=learner_id))
        if self.asleep:
            ray.get([w.wake_up.remote(["kv_cache"]) for w in self.workers])
            self.asleep = False
        return {f"sync/{k}": float(v) for k, v in stats.items() if k != "seconds"}
