"""The learner's policy as the engines load it: Hugging Face ``(name, tensor)`` pairs in the engine's dtype,
computed one module at a time on the policy's device, never a host copy of the model.

* ``full``: the state dict as it is (cast);
* a peft model (``lora`` / ``qlora``): each module's base weight -- dequantised if it is bitsandbytes NF4, never
  the packed 4-bit tensor (trl#4973) -- plus its LoRA delta ``scaling * B @ A``, merged in fp32 and cast back;
* then the TTM head (``learned`` mode) as ``ttm_head.*``, last (rlvr_temp.engine.ttm reads it after the model's
  weights).

A tied LM head (``tie_word_embeddings``) is left out when the policy is on a GPU (467 MB less per sync at 1.5B in
bf16): it is the embedding, which is sent, and a GPU engine's LM head shares the embedding's parameter, which its
in-place reload refills (transformers' ``load_state_dict`` in ``export`` re-ties it too). On the CPU it is sent:
vLLM's CPU engines compute the LM head from a prepacked copy that a reload refreshes only when ``lm_head.weight``
arrives (without it the engine kept the previous sync's head, tests/unit/weights/test_source.py).

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
#: the LM head's weight, left out when tied and on a GPU (:func:`tied_head`)
TIED_HEAD = "lm_head.weight"


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


def tied_head(model: torch.nn.Module, skip: bool | None = None) -> str | None:
    """The name of the LM head's weight to leave out: when the model ties it to the input embedding
    (``tie_word_embeddings``, as vLLM reads it) and ``skip`` (``None``: when the policy is on a GPU, module
    docstring); else ``None``."""
    config = getattr(model, "config", None)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    if skip is None:
        skip = next(model.parameters()).device.type == "cuda"
    return TIED_HEAD if skip and getattr(config, "tie_word_embeddings", False) else None


def policy_entries(
    model: torch.nn.Module,
    dtype: torch.dtype,
    ttm_head: torch.nn.Module | None = None,
    skip_tied_head: bool | None = None,
    merge_lora: bool = True,
) -> Iterator[Entry]:
    """Every weight the engines load, in a fixed order, as :data:`Entry` thunks; a tied LM head as
    :func:`tied_head` says. ``merge_lora=False``: the bases without their LoRA deltas (what an engine serving the
    adapters as vLLM LoRA requests applies them to: ``rollout.engine.lora_updates``)."""
    from peft import PeftModel

    skip = tied_head(model, skip_tied_head)
    if not isinstance(model, PeftModel):
        for name, t in model.state_dict().items():
            if name != skip:
                yield name, tuple(t.shape), lambda t=t: merged(t, dtype)
    else:
        import bitsandbytes as bnb
        from peft.tuners.lora import LoraLayer

        for name, module in model.get_base_model().named_modules():
            if name.endswith(".base_layer") or ".lora_" in name:  # peft's internals: their weights come below
                continue
            base = getattr(module, "base_layer", module)
            lora = module if merge_lora and isinstance(module, LoraLayer) and "default" in module.lora_A else None
            if isinstance(base, bnb.nn.Linear4bit):
                yield f"{name}.weight", tuple(base.weight.quant_state.shape), lambda b=base, m=lora: _nf4(b, dtype, m)
                if base.bias is not None:
                    yield f"{name}.bias", tuple(base.bias.shape), lambda p=base.bias: merged(p, dtype)
                continue
            for pname, p in base.named_parameters(recurse=False):
                full = f"{name}.{pname}" if name else pname
                if full != skip:
                    merge = lora if pname == "weight" else None
                    yield full, tuple(p.shape), lambda p=p, m=merge: merged(p, dtype, m)
    for name, p in ttm_head.named_parameters() if ttm_head is not None else ():
        yield f"ttm_head.{name}", tuple(p.shape), lambda p=p: merged(p, dtype)


def export_state(
    model: torch.nn.Module,
    dtype: torch.dtype,
    ttm_head: torch.nn.Module | None = None,
    skip_tied_head: bool | None = None,
    merge_lora: bool = True,
) -> dict:
    """The whole :func:`policy_entries` as a CPU state dict (copies, never views of live parameters); a sharded
    weight gathered (``full_tensor()``) in ``dtype``."""
    out = {}
    for name, _, make in policy_entries(model, dtype, ttm_head, skip_tied_head, merge_lora):
        t = make()
        out[name] = (t.full_tensor() if hasattr(t, "full_tensor") else t).to("cpu", copy=True)
    return out


@functools.cache
def _policy_source_class() -> type:
    import vllm.distributed.weight_transfer.base as wt

    class PolicySource(wt.WeightSource):
        """The learner's policy as ``(HF name, tensor)`` pairs in ``dtype``, computed one module at a time on the
        policy's device: the same pairs as ``Learner.export_weights`` (:func:`policy_entries`), never a host copy
        of the whole model. ``skip_tied_head``: leave a tied LM head out (``None``: on a GPU, :func:`tied_head`)."""

        def __init__(
            self,
            model: torch.nn.Module,
            dtype: torch.dtype,
            *,
            ttm_head: torch.nn.Module | None = None,
            skip_tied_head: bool | None = None,
            merge_lora: bool = True,
        ):
            self.model, self.dtype, self.ttm_head, self.skip_tied_head = model, dtype, ttm_head, skip_tied_head
            self.merge_lora = merge_lora

        @classmethod
        def from_learner(cls, learner: Any, merge_lora: bool = True) -> Any:
            """Over a :class:`rlvr_temp.learner.learner.Learner`'s policy, export dtype and TTM head."""
            return cls(learner.model, learner.export_dtype, ttm_head=learner.ttm_head, merge_lora=merge_lora)

        def metadata(self) -> list[wt.ParamMeta]:
            return [wt.ParamMeta(name, self.dtype, shape) for name, shape, _ in self._entries()]

        def _entries(self) -> Iterator[Entry]:
            return policy_entries(self.model, self.dtype, self.ttm_head, self.skip_tied_head, self.merge_lora)

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
