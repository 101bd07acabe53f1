"""The learner's policy as the engines load it: Hugging Face ``(name, tensor)`` pairs in the engine's dtype,
computed one module at a time on the policy's device, never a host copy of the model.

* ``full``: the state dict as it is (cast);
* a peft model (``lora`` / ``qlora``): each module's base weight -- dequantised if it is bitsandbytes NF4, never
  the packed 4-bit tensor (trl#4973) -- plus its LoRA delta ``scaling * B @ A``, merged in fp32 and cast back;
* then the TTM head (``learned`` mode) as ``ttm_head.*``, last (rlvr_temp.engine.ttm reads it after the model's
  weights).

Runs in the learner's process. Two users: ``PolicySource``, the vLLM ``WeightSource`` that the weight-sync backends
stream per bucket (rlvr_temp.weights.sender), and :func:`export_state`, behind ``Learner.export_weights`` (the
object-store path, checkpoint export). A sharded (FSDP2) policy's entries are DTensors: ``PolicySource`` gathers
them as it yields them (vLLM's ``materialize_full_tensor``, a collective: every learner rank iterates the source in
the same order; the non-sender ranks' trainer engines only iterate it), and :func:`export_state` gathers each in
turn. Importing this module needs neither vLLM nor Ray: ``PolicySource`` subclasses vLLM's ``WeightSource``, so
the class is made on first use (``rlvr_temp.weights.source.PolicySource`` works as a name). Left out: adapters
other than peft's ``default`` LoRA.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: one entry: (HF name, shape, a thunk computing the tensor -- so listing names and shapes materialises nothing)
Entry = tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]


@torch.no_grad()
def merged(w: torch.Tensor, dtype: torch.dtype, lora: Any = None) -> torch.Tensor:
    """``w`` in ``dtype``, plus ``lora``'s delta (``scaling * B @ A``, added in fp32) when given."""
    w = w.detach().to(dtype)
    if lora is None:
        return w
    a, b = lora.lora_A["default"].weight.float(), lora.lora_B["default"].weight.float()
    return (w.float() + (b @ a) * lora.scaling["default"]).to(dtype)


def _nf4(base: Any, dtype: torch.dtype, lora: Any) -> torch.Tensor:
    from bitsandbytes.functional import dequantize_4bit

    with torch.no_grad():
        return merged(dequantize_4bit(base.weight.data, base.weight.quant_state), dtype, lora)


def policy_entries(
    model: torch.nn.Module, dtype: torch.dtype, ttm_head: torch.nn.Module | None = None
) -> Iterator[Entry]:
    """Every weight the engines load, in a fixed order, as :data:`Entry` thunks."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        for name, t in model.state_dict().items():
            yield name, tuple(t.shape), lambda t=t: merged(t, dtype)
    else:
        import bitsandbytes as bnb
        from peft.tuners.lora import LoraLayer

        for name, module in model.get_base_model().named_modules():
            if name.endswith(".base_layer") or ".lora_" in name:  # peft's internals: their weights come below
                continue
            base = getattr(module, "base_layer", module)
            lora = module if isinstance(module, LoraLayer) and "default" in module.lora_A else None
            if isinstance(base, bnb.nn.Linear4bit):
                yield f"{name}.weight", tuple(base.weight.quant_state.shape), lambda b=base, m=lora: _nf4(b, dtype, m)
                if base.bias is not None:
                    yield f"{name}.bias", tuple(base.bias.shape), lambda p=base.bias: merged(p, dtype)
                continue
            for pname, p in base.named_parameters(recurse=False):
                merge = lora if pname == "weight" else None
                yield f"{name}.{pname}" if name else pname, tuple(p.shape), lambda p=p, m=merge: merged(p, dtype, m)
    for name, p in ttm_head.named_parameters() if ttm_head is not None else ():
        yield f"ttm_head.{name}", tuple(p.shape), lambda p=p: merged(p, dtype)


def export_state(model: torch.nn.Module, dtype: torch.dtype, ttm_head: torch.nn.Module | None = None) -> dict:
    """The whole :func:`policy_entries` as a CPU state dict (copies, never views of live parameters); a sharded
    weight gathered (``full_tensor()``) in ``dtype``."""
    out = {}
    for name, _, make in policy_entries(model, dtype, ttm_head):
        t = make()
        out[name] = (t.full_tensor() if hasattr(t, "full_tensor") else t).to("cpu", copy=True)
    return out


@functools.cache
def _policy_source_class() -> type:
    import vllm.distributed.weight_transfer.base as wt

    class PolicySource(wt.WeightSource):
        """The learner's policy as ``(HF name, tensor)`` pairs in ``dtype``, computed one module at a time on the
        policy's device: the same pairs as ``Learner.export_weights`` (:func:`policy_entries`), never a host copy
        of the whole model."""

        def __init__(self, model: torch.nn.Module, dtype: torch.dtype, *, ttm_head: torch.nn.Module | None = None):
            self.model, self.dtype, self.ttm_head = model, dtype, ttm_head

        @classmethod
        def from_learner(cls, learner: Any) -> Any:
            """Over a :class:`rlvr_temp.learner.learner.Learner`'s policy, export dtype and TTM head."""
            return cls(learner.model, learner.export_dtype, ttm_head=learner.ttm_head)

        def metadata(self) -> list[wt.ParamMeta]:
            return [wt.ParamMeta(name, self.dtype, shape) for name, shape, _ in self._entries()]

        def _entries(self) -> Iterator[Entry]:
            return policy_entries(self.model, self.dtype, self.ttm_head)

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            for name, _, make in self._entries():
                # cast first (make), then gather: a sharded weight crosses the ranks in the export dtype
                yield name, wt.materialize_full_tensor(make())

    PolicySource.__module__, PolicySource.__qualname__ = __name__, "PolicySource"  # pickles by this name
    return PolicySource


def __getattr__(name: str) -> Any:
    """``PolicySource``: the class, made on first use (it needs vLLM)."""
    if name == "PolicySource":
        return _policy_source_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
