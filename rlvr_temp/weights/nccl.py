"""The ``nccl`` weight-sync backend: vLLM's own NCCL engines, between GPUs (the learner's and the engines').

Runs in the learner's process. vLLM ships both ends (``vllm.distributed.weight_transfer.nccl_engine``), so this
module only builds the trainer's init info: the TCP rendezvous the sender opens, its rank, and the packed buffer
size. Left out: NCCL between ranks that share one GPU (NCCL refuses it: ``ipc`` is the backend for that).
"""

from __future__ import annotations

from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

from rlvr_temp.weights.base import Transport, rendezvous


class NcclTransport(Transport):
    """``nccl`` (rlvr_temp.weights.base): packed buffers of ``bucket_bytes`` broadcast from the learner's GPU."""

    name = "nccl"

    def init_info(self, world_size: int, rank: int, bucket_bytes: int) -> NCCLTrainerInitInfo:
        return NCCLTrainerInitInfo(**rendezvous(world_size), rank=rank, packed_buffer_size_bytes=bucket_bytes)
