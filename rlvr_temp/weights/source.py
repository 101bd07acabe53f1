"""The learner's policy as a vLLM ``WeightSource`` (``rlvr_temp.weights.transfer`` sends it): the ``(HF name, tensor)``
pairs of :func:`rlvr_temp.weights.policy_tensors.policy_entries`, computed one module at a time on the learner's device
as each bucket is packed (LoRA deltas merged into the dequantised NF4 or plain base), never a host copy of the model.

A sharded (FSDP2) policy's tensors are gathered as they are yielded (vLLM's ``materialize_full_tensor``, a
collective): every learner rank iterates the source in the same order (the non-sender ranks' trainer engines only
iterate it). Left out: adapters other than peft's ``default`` LoRA (as ``export_weights``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import vllm.distributed.weight_transfer.base as wt

from rlvr_temp.weights.policy_tensors import Entry, policy_entries


class PolicySource(wt.WeightSource):
    """The learner's policy as ``(HF name, tensor)`` pairs in ``dtype``, computed one module at a time on the
    policy's device: the same pairs as ``Learner.export_weights`` (``full``: the state dict; a peft model
    (``lora`` / ``qlora``): each module's base weight, dequantised if NF4, plus ``scaling * B @ A``; then the TTM
    head as ``ttm_head.*``), never a host copy of the whole model."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, *, ttm_head: torch.nn.Module | None = None):
        self.model, self.dtype, self.ttm_head = model, dtype, ttm_head

    @classmethod
    def from_learner(cls, learner: Any) -> PolicySource:
        """Over a :class:`rlvr_temp.learner.policy.Learner`'s policy, export dtype and TTM head."""
        return cls(learner.model, learner.export_dtype, ttm_head=learner.ttm_head)

    def metadata(self) -> list[wt.ParamMeta]:
        return [wt.ParamMeta(name, self.dtype, shape) for name, shape, _ in self._entries()]

    def _entries(self) -> Iterator[Entry]:
        return policy_entries(self.model, self.dtype, self.ttm_head)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, _, make in self._entries():
            # cast first (make), then gather: a sharded weight crosses the ranks in the export dtype
            yield name, wt.materialize_full_tensor(make())
