"""The learner's policy as a vLLM ``WeightSource`` (``rlvr_temp.weight_sync`` sends it): ``(HF name, tensor)`` pairs
computed one module at a time on the learner's device, the same pairs as ``Learner.export_weights`` (LoRA deltas
merged into the dequantised NF4 or plain base, never packed 4-bit tensors) without a host copy of the model.

Left out: sharded (FSDP) policies (each rank would need ``full_tensor()`` gathers) and adapters other than peft's
``default`` LoRA (as ``export_weights``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import vllm.distributed.weight_transfer.base as wt


class PolicySource(wt.WeightSource):
    """The learner's policy as ``(HF name, tensor)`` pairs in ``dtype``, computed one module at a time on the
    policy's device: the same pairs as ``Learner.export_weights`` (``full``: the state dict; a peft model
    (``lora`` / ``qlora``): each module's base weight, dequantised if NF4, plus ``scaling * B @ A``; then the TTM
    head as ``ttm_head.*``), never a host copy of the whole model."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, *, ttm_head: torch.nn.Module | None = None):
        from peft import PeftModel

        self.model, self.dtype, self.ttm_head = model, dtype, ttm_head
        self.peft = isinstance(model, PeftModel)

    @classmethod
    def from_learner(cls, learner: Any) -> PolicySource:
        """Over a :class:`rlvr_temp.learner.Learner`'s policy, export dtype and TTM head."""
        return cls(learner.model, learner.export_dtype, ttm_head=learner.ttm_head)

    def _entries(self) -> Iterator[tuple[str, tuple[int, ...], Any]]:
        """``(name, shape, thunk)``: the thunk computes the tensor, so metadata() never materialises one."""
        cast = self._cast
        if not self.peft:
            for name, t in self.model.state_dict().items():
                yield name, tuple(t.shape), lambda t=t: cast(t)
        else:
            import bitsandbytes as bnb
            from peft.tuners.lora import LoraLayer

            for name, module in self.model.get_base_model().named_modules():
                if name.endswith(".base_layer") or ".lora_" in name:  # peft's internals, as export_weights skips
                    continue
                base = getattr(module, "base_layer", module)
                lora = module if isinstance(module, LoraLayer) and "default" in module.lora_A else None
                if isinstance(base, bnb.nn.Linear4bit):
                    yield f"{name}.weight", tuple(base.weight.quant_state.shape), lambda b=base, m=lora: self._nf4(b, m)
                    if base.bias is not None:
                        yield f"{name}.bias", tuple(base.bias.shape), lambda p=base.bias: cast(p)
                    continue
                for pname, p in base.named_parameters(recurse=False):
                    merge = lora if pname == "weight" else None
                    yield f"{name}.{pname}" if name else pname, tuple(p.shape), lambda p=p, m=merge: cast(p, m)
        for name, p in self.ttm_head.named_parameters() if self.ttm_head is not None else ():
            yield f"ttm_head.{name}", tuple(p.shape), lambda p=p: cast(p)

    @torch.no_grad()
    def _cast(self, w: torch.Tensor, lora: Any = None) -> torch.Tensor:
        w = w.detach().to(self.dtype)
        if lora is None:
            return w
        a, b = lora.lora_A["default"].weight.float(), lora.lora_B["default"].weight.float()
        delta = (b @ a) * lora.scaling["default"]
        # the same ops in the same order as Learner.export_weights: base in the export dtype, merged in fp32
        return (w.float() + delta).to(self.dtype)

    def _nf4(self, base: Any, lora: Any) -> torch.Tensor:
        from bitsandbytes.functional import dequantize_4bit

        return self._cast(dequantize_4bit(base.weight.data, base.weight.quant_state), lora)

    def metadata(self) -> list[wt.ParamMeta]:
        return [wt.ParamMeta(name, self.dtype, shape) for name, shape, _ in self._entries()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, _, make in self._entries():
            yield name, make()
