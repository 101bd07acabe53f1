"""`rlvr-temp export RUN [--step N] OUT`: a checkpoint as a plain Hugging Face model directory.

The policy is rebuilt exactly as in the run (same base, same NF4 quantisation for ``qlora``), the checkpoint's
trainable weights are loaded, and the learner's own sync export is written: for LoRA / QLoRA the adapters merged
into the dequantised base in the model's dtype (never re-quantised: merging on the 4-bit model would round the
result back to NF4). transformers and vLLM load the result directly; its weights are the ones the run's rollout
engines held after that step.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from rlvr_temp.checkpoint import ResumeError, checkpoints_dir, find_resume, load_checkpoint
from rlvr_temp.config.schema import RunConfig
from rlvr_temp.data.models import resolve_model
from rlvr_temp.learner.learner import Learner
from rlvr_temp.learner.policy import DTYPES
from rlvr_temp.utils import atomic_dir


def checkpoint_for(run_dir: str | Path, step: int | None) -> Path:
    """The checkpoint of ``step`` (or the newest complete one) of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if step is not None:
        path = checkpoints_dir(run_dir) / f"step_{step:08d}"
        if not path.is_dir():
            raise ResumeError(f"{run_dir}: no checkpoint for step {step}")
        return path
    path = find_resume(run_dir, "auto")
    if path is None:
        raise ResumeError(f"{run_dir}: no complete checkpoint")
    return path


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Write a merged Hugging Face model (+ tokenizer) for a run's checkpoint; return ``out_dir``."""
    ck = load_checkpoint(checkpoint_for(run_dir, step))
    cfg = RunConfig.model_validate(ck["config"])
    base = resolve_model(cfg.model.path)
    learner = Learner(base, cfg)
    learner.set_state(ck["learner_state"])
    weights = learner.export_weights()
    hf_config = AutoConfig.from_pretrained(base, trust_remote_code=cfg.model.trust_remote_code)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=DTYPES[cfg.model.dtype])
    result = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise RuntimeError(f"export mismatch: missing {sorted(missing)[:3]}, unexpected {result.unexpected_keys[:3]}")
    with atomic_dir(out_dir) as tmp, torch.no_grad():
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
    return Path(out_dir)
