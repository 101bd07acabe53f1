"""The ``ipc`` weight-sync backend: vLLM's own CUDA-IPC engines, when the learner and the engines share one GPU.

Runs in the learner's process. vLLM ships both ends (``vllm.distributed.weight_transfer.ipc_engine``): the engines
map the learner's packed buffers through CUDA IPC handles, with no transfer group and so no rendezvous. This
module only builds the trainer's init info. ``weight_sync: auto`` picks it for the colocated layout on GPUs, with
any number of learner ranks: each exports its own GPU's copy (``RunConfig.weight_sync_backend``).
Left out: engines on another GPU than the learner (``nccl``).
"""

from __future__ import annotations

from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

from rlvr_temp.weights.base import Transport


class IpcTransport(Transport):
    """``ipc`` (rlvr_temp.weights.base): packed buffers of ``bucket_bytes``, shared with the engines by handle."""

    name = "ipc"

    def init_info(self, world_size: int, rank: int, bucket_bytes: int) -> IPCTrainerInitInfo:
        return IPCTrainerInitInfo(rank=rank, packed=True, packed_buffer_size_bytes=bucket_bytes)
