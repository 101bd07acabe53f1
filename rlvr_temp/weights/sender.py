"""The learner's end of the weight sync: the backend named by the driver, and one measured round.

Runs in each learner rank (rlvr_temp.learner.learner.Learner calls it when the driver connects the engines,
rlvr_temp.weights.sync). :func:`transport` picks the backend module by name (the interface is
rlvr_temp.weights.base); :func:`trainer_engine` builds vLLM's trainer-side engine for it over the learner's
policy (rlvr_temp.weights.source: tensors computed module by module on the learner's device); :func:`send` runs a
round. Imports vLLM only when called (a learner that never sends does not need it).

Left out: the adapters of LoRA-only updates, which go through the run directory (rlvr_temp.learner.adapters).
"""

from __future__ import annotations

import math
import time
from typing import Any

from rlvr_temp.weights.base import BUCKET_BYTES, Transport

#: the backends of vLLM's weight-transfer API, one module each (``object_store`` is the driver's: weights.sync)
BACKENDS = ("gloo", "nccl", "ipc")


def transport(backend: str) -> Transport:
    """The :class:`~rlvr_temp.weights.base.Transport` named ``backend`` (its module is imported here)."""
    if backend == "gloo":
        from rlvr_temp.weights.gloo import GlooTransport

        return GlooTransport()
    if backend == "nccl":
        from rlvr_temp.weights.nccl import NcclTransport

        return NcclTransport()
    if backend == "ipc":
        from rlvr_temp.weights.ipc import IpcTransport

        return IpcTransport()
    raise ValueError(f"weight sync backend {backend!r}: expected {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")


def bucket_size(source: Any, minimum: int = BUCKET_BYTES) -> int:
    """The bucket / packed-buffer size for ``source``: ``minimum``, or its largest tensor's bytes where that is more.
    vLLM's packed IPC producer refuses a tensor bigger than its buffer after the engines have begun the update
    (their layers are then unloaded); the embedding alone is 467 MB at 1.5B and 1.09 GB at 7B."""
    largest = max((m.dtype.itemsize * math.prod(m.shape) for m in source.metadata()), default=0)
    return max(int(minimum), int(largest))


def trainer_engine(backend: str, client: Any, source: Any, bucket_bytes: int = BUCKET_BYTES, rank: int = 0) -> Any:
    """Learner rank ``rank``'s trainer-side weight-transfer engine for ``backend``: rank 0 is the sender (after its
    rendezvous with every engine behind ``client``) and streams ``source`` (a vLLM ``WeightSource``) each round;
    another rank (a sharded learner, or a replicated one whose GPU's engines take ``ipc`` handles) iterates
    ``source`` alongside, for its gathers or its handles. Buckets hold at least ``source``'s largest tensor."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    chosen = transport(backend)
    chosen.register()
    info = chosen.init_info(client.world_size, rank, bucket_size(source, bucket_bytes))
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)


def send(engine: Any) -> dict[str, float]:
    """One round of ``engine``'s source to the engines: wall seconds and payload bytes."""
    t0 = time.perf_counter()
    engine.send_weights()
    meta = engine.source.metadata()
    n_bytes = sum(m.dtype.itemsize * math.prod(m.shape) for m in meta)
    return {"seconds": time.perf_counter() - t0, "bytes": float(n_bytes), "params": float(len(meta))}
