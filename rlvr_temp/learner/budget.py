"""``learner.micro_batch_tokens: auto``: the learner's micro-batch token budget (verl's dynamic batch size), sized
from the device and the model by :func:`auto_micro_batch_tokens`, and the memory estimates behind it, shared by
the learner (resolved once at start-up: :func:`learner_micro_batch_tokens`) and the GPU planner
(``rlvr_temp.driver.plan``), so that both give the same budget for the same free memory.

Pure Python (no torch at import): the planner runs without it. Bytes throughout; GiB = 2^30 bytes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from rlvr_temp.config.schema import RunConfig
from rlvr_temp.config.training import LearnerConfig

log = logging.getLogger("rlvr_temp.learner.budget")

GIB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_CONTEXT_GIB = 0.5  # per process on a GPU, outside what torch allocates
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # an NF4 weight with its double-quantised absmax
#: CPU: padded tokens per torch thread. Learn phase on a 2-core CPU (docs/loop.md, "Micro-batch token budget"):
#: 64 responses of <= 128 tokens on the 25M full model: 1,024 (= 512 per thread) the fastest budget without shared
#: prompts (4.4 s; 2,048: 4.8, 4,096: 5.1, micro_batch_size 64: 8.0), 512 = 1,024 with them (3.7 s; 2,048: 4.2)
CPU_TOKENS_PER_THREAD = 512
#: CUDA: the share of the free memory the budget's activations may take (the rest: the allocator's fragmentation,
#: the estimate's error, autograd's transient buffers)
CUDA_MEMORY_SHARE = 0.8
TOKENS_FLOOR, TOKENS_CEILING = 256, 32768  # never fewer (a budget below one sequence runs it alone anyway), or more
TOKENS_STEP = 256  # budgets are multiples of this


@dataclass(frozen=True)
class ModelDims:
    """The model's shape the estimates read (the planner's ``rlvr_temp.driver.plan.ModelShape`` extends it)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_hf(cls, config: Any) -> ModelDims:
        """From a transformers ``PretrainedConfig`` (a Llama / Qwen2-style decoder)."""
        h, heads = int(config.hidden_size), int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or h // heads)
        return cls(h, int(config.num_hidden_layers), heads, kv, head_dim, int(config.intermediate_size),
                   int(config.vocab_size))  # fmt: skip


@dataclass(frozen=True)
class Device:
    """Where the learner runs: ``threads`` (torch's intra-op threads) on CPU; on CUDA ``free_bytes``, the memory
    the update's activations may take (the GPU less the learner's weights, gradients, optimizer state and CUDA
    context, and what other processes on that GPU hold while it learns)."""

    kind: Literal["cpu", "cuda"]
    threads: int = 1
    free_bytes: float = 0.0


def activation_bytes_per_token(m: ModelDims, lc: LearnerConfig, dtype: str) -> int:
    """Bytes one padded micro-batch token costs at the update's peak: ``3 x V x 4`` (fp32 logits, their gradient,
    the temperature-scaled log-softmax: they dominate for large vocabularies) plus the layers' saved activations,
    ``a`` bytes each (4 for ``qlora``: fp32 residual stream after ``prepare_model_for_kbit_training``, else
    ``model.dtype``'s): with gradient checkpointing the layer inputs ``h x layers`` and one layer's recompute
    ``3 I + 4 h + (heads + 2 kv_heads) head_dim``, without it that layer term x layers. With ``share_prompts`` (off
    under gradient checkpointing) a chunk's prompts, up to one budget of tokens, keep their layers' activations too."""
    a = 4 if lc.mode == "qlora" else DTYPE_BYTES[dtype]
    layer = (3 * m.intermediate + 4 * m.hidden + (m.heads + 2 * m.kv_heads) * m.head_dim) * a
    if lc.gradient_checkpointing:
        return 3 * m.vocab * 4 + m.hidden * a * m.layers + layer
    return 3 * m.vocab * 4 + layer * m.layers * (2 if lc.share_prompts else 1)


def auto_micro_batch_tokens(m: ModelDims, lc: LearnerConfig, dtype: str, device: Device) -> int:
    """The micro-batch token budget ``learner.micro_batch_tokens: auto`` resolves to: padded tokens per micro-batch
    (response tokens with ``share_prompts``), a multiple of 256 in [256, 32,768].

    * CPU: :data:`CPU_TOKENS_PER_THREAD` x ``device.threads``. Measured (docs/loop.md, "Micro-batch token
      budget"): on a 2-core CPU (2 threads) the learn phase of 64 responses (<= 128 tokens, mean ~56) on the 25M
      Llama of benchmarks/trl_grpo.py, full fine-tuning, was fastest at 512-1,024 tokens, and the demo's tiny
      qlora model learned faster at 512 than with micro_batch_size; larger budgets lose the caches, smaller ones
      pay per-micro-batch overhead. Only 2 threads were measured: the scaling with threads is the assumption
      that each thread's share of a micro-batch should stay the same.
    * CUDA: as many tokens as ``CUDA_MEMORY_SHARE`` (80%) of ``device.free_bytes`` holds at
      :func:`activation_bytes_per_token`; larger micro-batches fill the GPU better, so the budget is memory-bound.
    """
    if device.kind == "cuda":
        tokens = CUDA_MEMORY_SHARE * device.free_bytes / activation_bytes_per_token(m, lc, dtype)
    else:
        tokens = CPU_TOKENS_PER_THREAD * max(1, device.threads)
    tokens = TOKENS_STEP * math.floor(tokens / TOKENS_STEP) if math.isfinite(tokens) else TOKENS_CEILING
    return max(TOKENS_FLOOR, min(TOKENS_CEILING, tokens))


def resolve_micro_batch_tokens(m: ModelDims, lc: LearnerConfig, dtype: str, device: Device) -> int | None:
    """``learner.micro_batch_tokens`` as the learner uses it: ``auto`` sized by :func:`auto_micro_batch_tokens`, a
    number as given, ``None`` (micro-batches of ``micro_batch_size`` responses) as ``None``."""
    if lc.micro_batch_tokens == "auto":
        return auto_micro_batch_tokens(m, lc, dtype, device)
    return lc.micro_batch_tokens


# ------------------------------------------------------------------------------------------------- learner memory
def learner_static_bytes(lora_params: int, linear_params: int, params: int, lc: LearnerConfig, dtype: str,
                         ranks: int = 1) -> float:  # fmt: skip
    """What a learner rank holds outside the update's activations (the planner's estimate, module docstring of
    ``rlvr_temp.driver.plan``): ``qlora`` NF4 linear weights + the other params in fp32 + LoRA params, grads and
    AdamW in fp32 (16 bytes per LoRA param); ``lora`` the base at ``model.dtype`` + the same LoRA; ``full`` 18 bytes
    per param, / ``ranks`` under FSDP2. Plus a CUDA context."""
    lora = lora_params * 16
    if lc.mode == "qlora":
        static = linear_params * NF4_BYTES + (params - linear_params) * 4 + lora
    elif lc.mode == "lora":
        static = params * DTYPE_BYTES[dtype] + lora
    else:
        static = params * 18 / max(1, ranks)
    return static + CUDA_CONTEXT_GIB * GIB


def engines_learning_bytes(cfg: RunConfig, gpu_bytes: float, engines: int) -> float:
    """What ``engines`` rollout engines sharing a learner's GPU hold while it learns: a CUDA context each when they
    sleep (level 2), else their ``gpu_memory_utilization`` share too."""
    share = 0.0 if cfg.engines_sleep() else cfg.rollout.engine.gpu_memory_utilization * gpu_bytes
    return engines * (share + CUDA_CONTEXT_GIB * GIB)


def learner_micro_batch_tokens(cfg: RunConfig, model: Any, trainable_bytes: int, device: Any) -> int | None:
    """The learner's budget, resolved once at start-up (after its policy is loaded) and logged: on CUDA the free
    memory is the GPU's total less what this process holds now (its weights), the gradients and AdamW state still
    to come (2 x fp32 per trainable param, besides its fp32 gradient), a CUDA context, and the colocated engines in
    its bundle (``resources.layout: colocated``: ceil(engines / learner ranks)) at :func:`engines_learning_bytes`.
    A ``full`` policy sharded over N ranks (FSDP2) holds 1/N of all that."""
    import torch

    lc, dims = cfg.learner, ModelDims.from_hf(model.config)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        ranks = cfg.resources.learner_ranks
        shards = ranks if lc.mode == "full" and ranks > 1 else 1
        held = (torch.cuda.memory_allocated(device) + 3 * trainable_bytes) / shards + CUDA_CONTEXT_GIB * GIB
        colocated = cfg.resources.layout == "colocated"
        engines = -(-cfg.rollout.num_workers // ranks) if colocated else 0
        free = total - held - engines_learning_bytes(cfg, total, engines)
        where = Device("cuda", free_bytes=max(0.0, free))
    else:
        where = Device("cpu", threads=torch.get_num_threads())
    tokens = resolve_micro_batch_tokens(dims, lc, cfg.model.dtype, where)
    if lc.micro_batch_tokens == "auto":
        free = f", {where.free_bytes / GIB:.1f} GiB free to learn" if where.kind == "cuda" else ""
        log.info("learner.micro_batch_tokens auto: %d (%s, %d threads%s)", tokens, where.kind, where.threads, free)
    return tokens
