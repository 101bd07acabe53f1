"""The weight-sync backend interface: what one way of moving the learner's weights into the vLLM engines provides.

Runs in the learner's process (each learner rank). Every backend rides vLLM's weight-transfer API: a trainer-side
engine (``TrainerWeightTransferEngine``) drives ``init`` / ``start_weight_update`` / ``update_weights`` /
``finish_weight_update`` on the engines through a client (rlvr_temp.weights.clients), and vLLM's factories build
both ends from the init info's ``backend`` name. So a backend, as prime-rl's ``WeightBroadcast``, is small: a
:class:`Transport` naming it, registering it with vLLM's factories if vLLM does not ship it, and building the
trainer's init info. One module per backend: ``gloo`` (rlvr_temp.weights.gloo, CPU tensors over TCP, the project's
own), ``nccl`` (rlvr_temp.weights.nccl, between GPUs) and ``ipc`` (rlvr_temp.weights.ipc, a shared GPU), both
vLLM's. rlvr_temp.weights.sender picks one by name and runs the rounds.

Imports neither vLLM nor Ray at import time. Left out: ``object_store`` (a merged state dict through Ray's object
store, no transfer group) is not a transport of this API: the driver runs it (rlvr_temp.weights.sync).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from vllm.distributed.weight_transfer.base import TrainerInitInfo

#: bytes per broadcast bucket (gloo) / packed buffer (nccl, ipc): a few layers of a 7B model at bf16; raised to the
#: largest tensor of the policy where one is bigger (rlvr_temp.weights.sender.bucket_size)
BUCKET_BYTES = 256 << 20

#: the backends whose engines join a transfer group with the sender (a TCP rendezvous), their workers' ranks counted
#: from a ``rank_offset`` the client adds per engine; vLLM's ``ipc`` engines join none and their init info has no
#: such field (``IPCWeightTransferInitInfo(packed)`` raises a TypeError on any other)
GROUP_BACKENDS = frozenset({"gloo", "nccl"})


class Transport(ABC):
    """One weight-sync backend, as the learner opens it."""

    #: the backend's name in ``rollout.engine.weight_sync`` and in vLLM's weight-transfer factories
    name: ClassVar[str]

    def register(self) -> None:  # noqa: B027 (a hook: vLLM's own backends need nothing)
        """Make the backend known to vLLM's factories (idempotent). vLLM's own backends already are."""

    @abstractmethod
    def init_info(self, world_size: int, rank: int, bucket_bytes: int) -> TrainerInitInfo:
        """The trainer-side init info of learner rank ``rank`` (rank 0 sends) for a transfer group of
        ``world_size`` members (the sender plus every engine's workers), buckets of ``bucket_bytes``."""


def rendezvous(world_size: int) -> dict[str, Any]:
    """The TCP rendezvous of a transfer group that the sender opens: this host's address, a free port, the size."""
    from vllm.utils.network_utils import get_ip, get_open_port

    return {"master_address": get_ip(), "master_port": get_open_port(), "world_size": world_size}
