"""LoRA-only weight updates, the learner's end (``rollout.engine.lora_updates``): the policy's LoRA adapters as a
peft adapter directory, which every engine loads as its vLLM LoRA request (rlvr_temp.engine.worker).

Runs in the learner's process (rank 0). The engines' base is the learner's own, sent once through the transfer
group when it forms (``PolicySource`` with ``base_only``: NF4 bases dequantised, no delta merged), so base +
adapter on the engine is the merged policy the full sync would send. A round writes ``<root>/v<version>`` with
peft's ``save_pretrained`` (``adapter_config.json`` + ``adapter_model.safetensors``, atomically) and keeps the one
before it; the engines read it from there, so ``root`` must be on a filesystem they see (one node, or the run
directory on shared storage). Left out: sending adapter tensors over the transfer group (vLLM loads LoRA adapters
from a path).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from rlvr_temp.utils import atomic_dir

#: adapter versions kept on disk: the newest, which the engines load, and the one before it
KEEP = 2


def write_adapters(model: torch.nn.Module, root: str | Path, version: int) -> tuple[str, dict[str, float]]:
    """Write ``model``'s (a peft model) adapters as version ``version`` under ``root``; its path, and the bytes and
    tensors of the round (``sync/bytes``, ``sync/params``)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ValueError("rollout.engine.lora_updates needs learner.mode lora or qlora (a peft model)")
    root = Path(root)
    final = root / f"v{version:06d}"
    with atomic_dir(final) as tmp, torch.no_grad():
        model.save_pretrained(tmp, safe_serialization=True)
    for old in sorted(root.glob("v*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    tensors = [p for n, p in model.named_parameters() if "lora_" in n]
    n_bytes = (final / "adapter_model.safetensors").stat().st_size
    return str(final), {"bytes": float(n_bytes), "params": float(len(tensors))}
