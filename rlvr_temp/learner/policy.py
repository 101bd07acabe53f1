"""Loading the learner's policy: a transformers causal LM in one of three modes (``learner.mode``), ready to train.
Runs where a policy is trained: in each learner rank (:class:`rlvr_temp.learner.learner.Learner`), in the TGR
supervised trainer (``rlvr_temp.learner.tgr``) and in ``export``; imports neither vLLM nor Ray.

* ``full``: all weights, in ``model.dtype``;
* ``lora``: LoRA adapters (peft) on a plain-dtype base;
* ``qlora``: LoRA on an NF4, double-quantised base (Dettmers et al. 2023, bitsandbytes -- the seeds' 4-bit setup),
  prepared for k-bit training, with bitsandbytes' CPU repacking of 4-bit weights switched off
  (:func:`disable_cpu_4bit_repacking`: it silently breaks LoRA gradients on the CPU, docs/stack.md).

Loaded as transformers and peft make it (``full`` in ``model.dtype``; k-bit preparation upcasts the non-4-bit
base to fp32; LoRA adapters fp32); the learner then applies its precision (``rlvr_temp.learner.precision``: fp32
master weights, and on CUDA a bf16 base and bf16 compute). Left out: adapters other than LoRA, and 8-bit bases.
"""

from __future__ import annotations

from typing import Any, Protocol

import bitsandbytes as bnb
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelSettings(Protocol):
    """What :func:`load_policy` reads of a ``model`` config section (the RL and the TGR recipes both have one)."""

    dtype: str
    trust_remote_code: bool


class PolicySettings(Protocol):
    """What :func:`load_policy` reads of a policy section (``config.PolicyConfig`` and its subclasses)."""

    mode: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: list[str]
    gradient_checkpointing: bool


def load_policy(model_path: str, model: ModelSettings, policy: PolicySettings, device: torch.device) -> torch.nn.Module:
    """Load the policy in ``policy.mode`` (``full`` / ``lora`` / ``qlora``) with ``model.dtype`` compute."""

    dtype = DTYPES[model.dtype]
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model.trust_remote_code}
    if policy.mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else "cpu"
    net = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if policy.mode != "qlora":
        net.to(device)
    if policy.mode == "full":
        if policy.gradient_checkpointing:
            net.gradient_checkpointing_enable()
        return net

    if policy.mode == "qlora":
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=policy.gradient_checkpointing)
        disable_cpu_4bit_repacking(net)
    elif policy.gradient_checkpointing:
        net.gradient_checkpointing_enable()
        net.enable_input_require_grads()
    lora = LoraConfig(
        r=policy.lora_r,
        lora_alpha=policy.lora_alpha,
        lora_dropout=policy.lora_dropout,
        target_modules=list(policy.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(net, lora)


def disable_cpu_4bit_repacking(model: torch.nn.Module) -> int:
    """Work around silently wrong LoRA gradients on CPU (docs/stack.md): bitsandbytes repacks 4-bit weights on the
    first no-grad forward, after which backward runs through a kernel without autograd. Returns modules touched."""

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n
