"""Weight sync between the learner and the rollout engines, both ends of it.

Driver (:class:`EngineSync`): connects the learner (rank 0 of its group) to every engine through vLLM's
weight-transfer API -- ``rollout.engine.weight_sync`` resolved by ``RunConfig.weight_sync_backend``: ``gloo`` on
CPU (rlvr_temp.weights.transfer), ``nccl`` between GPUs, ``ipc`` on a shared GPU -- and runs one round after each
update. A transfer group's members are fixed at its rendezvous, so when Ray has restarted the learner or an engine since
(rlvr_temp.driver.recovery), the survivors leave the old group and a new one is formed before the next round.
``object_store`` keeps the earlier path: one merged state dict through Ray's object store, loaded by every engine.
With vLLM's sleep mode (``colocated`` on GPUs, ``RunConfig.engines_sleep``) the engines free their memory before
each update (:meth:`EngineSync.release`) and wake their weights, then their KV cache, around the sync, as verl
does.

Learner (:func:`trainer_engine`, :func:`send`): the trainer-side engine for a backend over the learner's policy
(``rlvr_temp.weights.source.PolicySource``: tensors computed module by module on the learner's device), and one
measured round. Imported by the learner only when it sends (vLLM's classes are needed there, not at import).

Left out: LoRA-only updates through vLLM's adapters (every round sends the merged weights).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import ray

from rlvr_temp.config.schema import RunConfig

log = logging.getLogger("rlvr_temp.weights.sync")

#: bytes per broadcast bucket (gloo) / packed buffer (nccl, ipc): a few layers of a 7B model at bf16
BUCKET_BYTES = 256 << 20


class EngineSync:
    """The driver's handle on the learner -> engines weight sync of one run."""

    def __init__(self, cfg: RunConfig, learner: Any, workers: list[Any]) -> None:
        self.backend = cfg.weight_sync_backend()
        self.tp_sizes = [cfg.rollout.engine.tensor_parallel_size] * len(workers)
        self.learner, self.workers = learner, workers
        self._members: tuple[Any, ...] | None = None  # (learner id, worker ids) the current group was formed with
        self.sleep, self.asleep = cfg.engines_sleep(), False

    def release(self) -> None:
        """Before an update: with sleep mode (colocated GPUs) the engines give the learner their memory."""
        if self.sleep:
            ray.get([w.sleep.remote(1) for w in self.workers])
            self.asleep = True

    def _connect(self, members: tuple[Any, ...]) -> None:
        from rlvr_temp.weights.transfer import RayEnginesClient  # the driver needs vLLM only when it syncs this way

        # engines leave the group they are in (an earlier one of this run, or of a run that reused them); a
        # restarted actor has none
        for w in self.workers:
            try:
                ray.get(w.shutdown_weight_transfer_engine.remote())
            except Exception as exc:  # a dead or never-joined engine: nothing to leave
                log.debug("leaving the weight-transfer group: %s", exc)
        client = RayEnginesClient(self.workers, self.tp_sizes)
        ray.get(self.learner.init_weight_sync.remote(client, self.backend, BUCKET_BYTES))
        self._members = members

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
            stats = ray.get(self.learner.sync_weights.remote(incarnation=learner_id))
        if self.asleep:
            ray.get([w.wake_up.remote(["kv_cache"]) for w in self.workers])
            self.asleep = False
        return {f"sync/{k}": float(v) for k, v in stats.items() if k != "seconds"}


# ---------------------------------------------------------------------------------------------- learner side
def trainer_engine(backend: str, client: Any, source: Any, bucket_bytes: int = BUCKET_BYTES, rank: int = 0) -> Any:
    """Learner rank ``rank``'s trainer-side weight-transfer engine for ``backend``: rank 0 is the sender (after its
    rendezvous with every engine behind ``client``) and streams ``source`` (a vLLM ``WeightSource``) each round;
    another rank (a sharded learner) only iterates ``source`` alongside, for its gathers."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    from vllm.utils.network_utils import get_ip, get_open_port

    from rlvr_temp.weights import transfer as weight_sync

    weight_sync.register()
    # the TCP rendezvous of the gloo and nccl groups; the sender (rank 0) opens it
    rendezvous = {"master_address": get_ip(), "master_port": get_open_port(), "world_size": client.world_size}
    if backend == "gloo":
        info: Any = weight_sync.GlooTrainerInitInfo(**rendezvous, rank=rank, bucket_bytes=bucket_bytes)
    elif backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        info = NCCLTrainerInitInfo(**rendezvous, rank=rank, packed_buffer_size_bytes=bucket_bytes)
    elif backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        info = IPCTrainerInitInfo(rank=rank, packed=True, packed_buffer_size_bytes=bucket_bytes)
    else:
        raise ValueError(f"weight sync backend {backend!r}: expected gloo, nccl or ipc")
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)


def send(engine: Any) -> dict[str, float]:
    """One round of ``engine``'s source to the engines: wall seconds and payload bytes."""
    t0 = time.perf_counter()
    engine.send_weights()
    meta = engine.source.metadata()
    n_bytes = sum(m.dtype.itemsize * math.prod(m.shape) for m in meta)
    return {"seconds": time.perf_counter() - t0, "bytes": float(n_bytes), "params": float(len(meta))}
