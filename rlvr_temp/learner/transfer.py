"""The learner's end of the weight sync, as methods of :class:`rlvr_temp.learner.learner.Learner` (it inherits
:class:`WeightSyncEnd`): the merged policy streamed through vLLM's weight-transfer engines, its export as a state
dict, and LoRA-only updates.

Runs in each learner rank. The driver's end is rlvr_temp.weights.sync; the tensors are rlvr_temp.weights.source's
(LoRA merged into the dequantised base, never packed 4-bit); the backends rlvr_temp.weights.sender's. With
``rollout.engine.lora_updates`` the transfer group carries the bases once (``base_only``: no delta merged) and each
round writes the adapters instead (rlvr_temp.learner.adapters). The class holds no state of its own: it uses the
learner's ``model``, ``export_dtype``, ``ttm_head``, ``rank``, ``sharded``, ``cfg`` and its incarnation token.
"""

from __future__ import annotations

from typing import Any

import torch

from rlvr_temp.learner.adapters import write_adapters
from rlvr_temp.utils import check_incarnation
from rlvr_temp.weights import sender, source


class WeightSyncEnd:
    """The weight-sync methods of a learner rank (Ray actor methods of ``Learner``)."""

    _sender: Any = None  # the weight-transfer engine (init_weight_sync)

    def export_weights(self, incarnation: str | None = None) -> dict[str, torch.Tensor]:
        """Plain-dtype Hugging Face state dict of the current policy on the CPU (rlvr_temp.weights.source: LoRA
        merged into the dequantised base, never packed 4-bit)."""
        check_incarnation(self._incarnation, incarnation, "learner")
        return source.export_state(self.model, self.export_dtype, self.ttm_head)

    def init_weight_sync(self, client: Any, backend: str, bucket_bytes: int, base_only: bool = False) -> None:
        """Join the engines' weight-transfer group (the driver's rlvr_temp.weights.sync connects it; this end is
        rlvr_temp.weights.sender), replacing an earlier group: rank 0 as its sender. Every rank is called: when
        sharded the others gather their shards when rank 0 sends; with ``ipc`` each exports its own GPU's copy
        (vLLM's IPC trainer all-gathers the handles over the learner group, each engine maps its GPU's); otherwise
        a replicated rank other than 0 has no part. ``base_only``: the group carries the bases without their LoRA
        deltas (LoRA-only updates: :meth:`save_adapters` sends those). vLLM is imported here, on first use."""
        if self._sender is not None:
            self._sender.shutdown()
            self._sender = None
        if self.rank != 0 and not self.sharded and backend != "ipc":
            return
        policy = source.PolicySource.from_learner(self, merge_lora=not base_only)
        self._sender = sender.trainer_engine(backend, client, policy, bucket_bytes, rank=self.rank)

    @torch.no_grad()
    def sync_weights(self, incarnation: str | None = None) -> dict[str, float]:
        """Stream the current policy to every engine, module by module from this device; seconds and bytes."""
        check_incarnation(self._incarnation, incarnation, "learner")
        if self._sender is None:
            if self.rank != 0 and not self.sharded:
                return {}  # a replicated rank with no part in this backend (init_weight_sync)
            raise RuntimeError("sync_weights before init_weight_sync")
        return sender.send(self._sender)

    def save_adapters(self, root: str, version: int, incarnation: str | None = None) -> tuple[str, dict[str, float]]:
        """LoRA-only round: write the policy's adapters as ``version`` under ``root`` (rlvr_temp.learner.adapters);
        their path, and ``sync/bytes`` / ``sync/params``."""
        check_incarnation(self._incarnation, incarnation, "learner")
        return write_adapters(self.model, root, version)
