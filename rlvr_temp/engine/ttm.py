"""The learned token temperature inside vLLM: causal-LM classes registered out of tree whose ``compute_logits``
also runs the TTM head (:class:`rlvr_temp.temperature.TokenTemperatureHead`) on the engine's own final hidden
states.

The head's per-row temperatures (in the head's range ``[t_min, t_max]``) are left in :data:`LAST` for the
rlvr_temp logits processor, which maps them into ``[t_low, t_high]`` for the requests in ``learned`` mode, divides
their logits and records the temperatures — so the one place that applies and records temperatures stays the
processor. Logits themselves are returned unchanged, so requests not in ``learned`` mode are unaffected.

The model and the processor run in the same vLLM worker process, which is where :data:`LAST` is shared.
Head weights travel with the model weights (``ttm_head.proj.weight``, ``ttm_head.proj.bias``); a checkpoint
without them starts from the head's initial values (bias ``logit(t0)``, zero weights).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from transformers import AutoConfig

from rlvr_temp.temperature import TokenTemperatureHead

PREFIX = "RlvrTempTTM"
#: ``{"t": Tensor[n_rows]}`` — the head temperatures of the last ``compute_logits`` call in this process.
LAST: dict[str, torch.Tensor | None] = {"t": None}


def _with_head_defaults(weights: Iterable[tuple[str, torch.Tensor]], head: TokenTemperatureHead):
    """Pass the weights through; at the end, add initial values for head parameters that did not come."""
    seen: set[str] = set()
    for name, w in weights:
        if name.startswith("ttm_head."):
            seen.add(name)
        yield name, w
    init = {
        "ttm_head.proj.weight": torch.zeros_like(head.proj.weight, device="cpu"),
        "ttm_head.proj.bias": torch.full_like(
            head.proj.bias, math.log(head.init_temperature / (1 - head.init_temperature)), device="cpu"
        ),
    }
    for name, w in init.items():
        if name not in seen:
            yield name, w


def make_ttm_class(base_cls: type) -> type:
    """A subclass of a vLLM causal-LM class with a TTM head read at ``compute_logits``."""

    class TTMForCausalLM(base_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *, vllm_config: Any, prefix: str = "", **kwargs: Any) -> None:
            super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
            cfg = vllm_config.model_config.hf_config
            s = dict(getattr(cfg, "rlvr_ttm", None) or {})
            self.ttm_head = TokenTemperatureHead(
                cfg.hidden_size,
                heads=int(s.get("heads", 4)),
                t_min=float(s.get("t_min", 0.01)),
                t_max=float(s.get("t_max", 0.99)),
                init_temperature=float(s.get("init_temperature", 0.5)),
                init_std=0.0,
            )

        def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
            logits = super().compute_logits(hidden_states)
            with torch.no_grad():
                LAST["t"] = self.ttm_head.token_temperature(hidden_states.float()).float()
            return logits

        def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
            return super().load_weights(_with_head_defaults(weights, self.ttm_head))

    TTMForCausalLM.__name__ = TTMForCausalLM.__qualname__ = PREFIX + base_cls.__name__
    return TTMForCausalLM


#: the vLLM architectures that have a TTM variant, and the modules of their classes
BASES = {
    "LlamaForCausalLM": "vllm.model_executor.models.llama",
    "Qwen2ForCausalLM": "vllm.model_executor.models.qwen2",
}


def register_plugin() -> None:
    """vLLM general plugin (``vllm.general_plugins`` entry point in pyproject.toml): vLLM runs it in each of its
    processes (engine core, one worker per rank), so the TTM variants are known wherever the model is built.
    Registered by name only; the classes are built on first use (:func:`__getattr__`)."""
    from vllm import ModelRegistry

    for base in BASES:
        if PREFIX + base not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(PREFIX + base, f"{__name__}:{PREFIX}{base}")


def __getattr__(name: str) -> type:
    """``RlvrTempTTM<Base>``: the TTM subclass of vLLM's ``<Base>``, built on first access (PEP 562)."""
    base = name[len(PREFIX) :] if name.startswith(PREFIX) else ""
    if base not in BASES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    cls = make_ttm_class(getattr(importlib.import_module(BASES[base]), base))
    cls.__name__ = cls.__qualname__ = name
    globals()[name] = cls
    return cls


def register(base_arch: str) -> str:
    """The name of the TTM variant of a vLLM architecture (e.g. ``LlamaForCausalLM``), registered in this
    process too (vLLM's other processes register it through :func:`register_plugin`)."""
    if base_arch not in BASES:
        raise ValueError(f"learned temperature mode supports {' and '.join(BASES)}, not {base_arch}")
    register_plugin()
    return PREFIX + base_arch


def hf_overrides(model_path: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``LLM(hf_overrides=...)`` that selects the TTM class and passes the head settings."""
    arch = (AutoConfig.from_pretrained(model_path).architectures or ["LlamaForCausalLM"])[0]
    return {"architectures": [register(arch)], "rlvr_ttm": dict(settings)}
