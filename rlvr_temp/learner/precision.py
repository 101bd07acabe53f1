"""The learner's numeric precision: in which dtype the policy's weights are kept and in which its forward computes.
One function decides it from the device, the policy mode and ``model.dtype`` (:func:`compute_precision`: plain
data, testable anywhere), another applies it to a built policy (:func:`apply_precision`). Runs in a learner rank:
:class:`rlvr_temp.learner.learner.Learner` applies it right after loading its policy (the TGR trainer and the
engines are not concerned).

* Trainable weights (LoRA adapters; ``full``'s whole model) are fp32 everywhere: the optimizer's master weights,
  as FSDP2 keeps them (``rlvr_temp.learner.parallel.shard_policy``). In bf16 weights an AdamW step at lr 1e-6 is
  below the ulp and rounds away.
* CUDA with a lower ``model.dtype`` (bf16; fp16 likewise, without loss scaling, as under FSDP2): the policy's
  forward runs under ``torch.autocast`` in that dtype, and the frozen float base weights (embeddings and the tied
  LM head, norms, biases, which peft's k-bit preparation upcasts to fp32) are cast back to it; TF32 matmuls on.
  The log-probs are still computed in fp32 from the (bf16) logits, outside the autocast region
  (``rlvr_temp.temperature.token_logprobs``); gradient checkpointing recomputes under the same autocast state.
* CPU: as loaded (fp32 compute for an fp32 model, no autocast, no recast): only ``full`` in a lower dtype changes,
  to fp32 masters and fp32 compute (as FSDP2 on the CPU).

Left out: loss scaling for fp16.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Precision:
    """Where the policy's precision differs from what loading gave it."""

    #: the device type the forward's autocast runs on
    device_type: str
    #: compute dtype of the forward (``torch.autocast``); ``None``: no autocast
    autocast: torch.dtype | None
    #: dtype of the frozen floating-point parameters (the LoRA modes' base); ``None``: as loaded
    frozen: torch.dtype | None
    #: dtype of the trainable parameters, the optimizer's master weights; ``None``: as loaded
    trainable: torch.dtype | None
    #: TF32 for fp32 matmuls and convolutions (process-wide: the learner's process only)
    tf32: bool


def compute_precision(device: torch.device | str, mode: str, dtype: torch.dtype) -> Precision:
    """The precision of a ``mode`` (``full`` / ``lora`` / ``qlora``) policy of ``model.dtype`` ``dtype`` on
    ``device`` (module docstring). ``mode`` does not change the decision today: ``full`` has no frozen weights,
    ``lora``'s are loaded in ``dtype`` already, and peft creates LoRA adapters in fp32."""
    del mode  # the same rule fits all three (docstring)
    device_type = torch.device(device).type
    if device_type != "cuda":
        return Precision(device_type, autocast=None, frozen=None, trainable=torch.float32, tf32=False)
    low = dtype if dtype != torch.float32 else None
    return Precision("cuda", autocast=low, frozen=low, trainable=torch.float32, tf32=True)


def apply_precision(model: torch.nn.Module, precision: Precision) -> None:
    """Apply ``precision`` to a built policy in place: recast its floating-point parameters (trainable ones to
    ``precision.trainable``, frozen ones to ``precision.frozen``; packed 4-bit weights are integers and stay),
    wrap its forward in autocast, set TF32. Call it after peft's k-bit preparation and ``get_peft_model``."""
    with torch.no_grad():
        for p in model.parameters():  # tied weights (embeddings = LM head) are one parameter, cast once
            target = precision.trainable if p.requires_grad else precision.frozen
            if p.is_floating_point() and target is not None and p.dtype != target:
                p.data = p.data.to(target)
    set_autocast(model, precision.device_type, precision.autocast)
    if precision.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_autocast(model: torch.nn.Module, device_type: str, dtype: torch.dtype | None) -> None:
    """Run every call of ``model`` (its top-level forward: the policy forwards of the learner and the shared
    prompts) under ``torch.autocast(device_type, dtype)``; ``None`` removes that, restoring the class's forward.
    Only the model: what its callers compute from the outputs (log-probs, entropies, the TTM head, the loss) runs
    in the outputs' dtype, upcast where they ask for it. The wrapper is an instance attribute bound to ``model``:
    a copy of the model must set its own."""
    model.__dict__.pop("forward", None)
    if dtype is not None:
        model.forward = _under_autocast(model.forward, device_type, dtype)


def autocast_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype :func:`set_autocast` runs ``model``'s forward in (``None``: no autocast)."""
    return getattr(model.__dict__.get("forward"), "autocast_dtype", None)


def _under_autocast(forward: Callable[..., Any], device_type: str, dtype: torch.dtype) -> Callable[..., Any]:
    @functools.wraps(forward)  # keeps the signature that transformers / peft inspect
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    run.autocast_dtype = dtype  # type: ignore[attr-defined]
    return run
