"""Temperature-Guided Reasoning (TGR): supervised fine-tuning of a policy together with a TTM head on WikiQA.

Method: Gomaa & Salah, "Guidance is All You Need: Temperature-Guided Reasoning in Large Language Models"
(Quasar-1, arXiv 2412.06822) -- a Token Temperature Mechanism (TTM) head gives every token a temperature in
``[t_min, t_max]``, a regulariser keeps it near ``t0`` and Guided Sequence of Thought (GSoT) treats tokens below a
threshold as *cold*. The pieces live in :mod:`rlvr_temp.temperature.ttm`, the recipe's schema and its WikiQA data in
:mod:`rlvr_temp.learner.tgr_recipe`; this module is the trainer, run in the process of ``rlvr-temp sft``:

* :func:`train_sft` -- trains the policy (``full``, ``lora`` or NF4 ``qlora``) and the head together. The loss is
  ``lm + calibration_weight * calibration + regularisation``: ``lm`` is the cross-entropy of the answer tokens
  (prompt and padding labels are -100), weighted per token by GSoT (cold tokens get ``gsot.cold_weight``);
  ``calibration`` is the cross-entropy of the answer tokens under the *detached* logits divided by the head's
  temperature mapped into ``[ttm.sampling_low, ttm.sampling_high]`` -- the signal that makes the head learn
  which tokens to sample hot or cold (without it the head never leaves ``t0``); the regulariser is
  ``reg_weight * mean((t - t0)^2)`` over real tokens. The head reads the last element of
  ``output_hidden_states`` (the LM head's input); the model's own forward pass is left untouched.

Run directory (``trainer.run_dir``): ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per step),
``base_model/`` (``tiny-wikiqa`` only: the random-init model and tokenizer the adapters refer to), ``eval.json``
and ``checkpoint/`` with ``policy/`` (``full``) or ``adapter/`` (``lora``/``qlora``) safetensors, the tokenizer,
``ttm_head.safetensors`` (:func:`rlvr_temp.temperature.load_head`), ``config.yaml`` and ``checkpoint.json``.
See ``docs/tgr.md`` for what differs from the seed script and why.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from rlvr_temp.config.schema import ConfigError
from rlvr_temp.data.sft import collate_sft
from rlvr_temp.data.tiny_model import TinyModelSettings, build_tokenizer, make_model
from rlvr_temp.learner.policy import load_policy
from rlvr_temp.learner.tgr_recipe import TINY_WIKIQA, TGRConfig, encode_examples, load_tgr_config, load_wikiqa
from rlvr_temp.temperature.ttm import (
    TokenTemperatureHead,
    gsot_mask,
    gsot_weights,
    save_head,
    temperature_regularization,
    to_sampling_range,
)
from rlvr_temp.utils import atomic_dir, lr_factor


# ----------------------------------------------------------------------------------------------------- model
def _prepare_base(cfg: TGRConfig, run_dir: Path) -> str:
    """Model directory to load: ``cfg.model.path``, or the random-init tiny Llama written to ``base_model/``."""
    if cfg.model.path != TINY_WIKIQA:
        return cfg.model.path
    base = run_dir / "base_model"
    tokenizer = build_tokenizer()
    make_model(TinyModelSettings(seed=cfg.trainer.seed), tokenizer).save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    return str(base)


def _batches(examples: list[tuple[list[int], int]], batch_size: int, seed: int) -> Iterator[list]:
    """Endless, seeded, reshuffled-every-epoch micro-batches (the last partial batch of an epoch is kept)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order), batch_size):
            yield [examples[i] for i in order[start : start + batch_size]]


def sft_loss(
    model: torch.nn.Module, head: TokenTemperatureHead, batch: dict[str, torch.Tensor], cfg: TGRConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The TGR training loss of one batch (see the module docstring) and its parts as floats."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]
    temps = head(hidden.detach() if cfg.ttm.detach_hidden else hidden)  # [B, L, heads], fp32
    token_t = temps.mean(dim=-1)
    targets = batch["labels"][:, 1:]
    valid = targets != -100  # position i predicts token i + 1; the head's temperature at i is that token's
    logits = out.logits[:, :-1][valid].float()
    tgt, t_pred = targets[valid], token_t[:, :-1][valid]
    nll = F.cross_entropy(logits, tgt, reduction="none")
    if cfg.gsot.enabled:
        w = gsot_weights(token_t[:, :-1], valid, cfg.gsot.threshold, cfg.gsot.cold_weight)[valid]
        lm = (w * nll).sum() / w.sum() if float(w.sum()) > 0 else nll.sum() * 0.0
    else:
        lm = nll.mean()
    t_sample = to_sampling_range(t_pred, cfg.ttm.sampling_low, cfg.ttm.sampling_high, cfg.ttm.t_min, cfg.ttm.t_max)
    calib = F.cross_entropy(logits.detach() / t_sample.unsqueeze(-1), tgt)
    reg = temperature_regularization(temps, cfg.ttm.t0, cfg.ttm.reg_weight, batch["attention_mask"])
    loss = lm + cfg.ttm.calibration_weight * calib + reg
    real, tt = batch["attention_mask"].bool(), token_t.detach()
    cold = gsot_mask(tt[:, :-1], valid, cfg.gsot.threshold)
    scalars = {
        "loss": loss,
        "lm_loss": nll.mean(),
        "lm_loss_gsot": lm,
        "calib_loss": calib,
        "reg": reg,
        "temp_mean": tt[real].mean(),
        "temp_std": tt[real].std(),
        "answer_temp_mean": t_pred.mean(),
        "sampling_temp_mean": t_sample.mean(),
        "cold_share": cold.sum() / valid.sum().clamp(min=1),
    }
    parts = {k: float(v.detach()) for k, v in scalars.items()}
    parts["answer_tokens"] = int(valid.sum())
    return loss, parts


def _mean_parts(parts: list[dict[str, float]]) -> dict[str, float]:
    out = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
    out["answer_tokens"] = int(sum(p["answer_tokens"] for p in parts))
    return out


@torch.no_grad()
def evaluate_sft(
    model: torch.nn.Module, head: TokenTemperatureHead, examples: list, cfg: TGRConfig, pad_id: int
) -> dict[str, float]:
    """Mean loss parts over ``examples`` (eval mode, batches of ``learner.micro_batch_size``)."""
    model.eval()
    device = next(head.parameters()).device
    parts, size = [], cfg.learner.micro_batch_size
    for start in range(0, len(examples), size):
        batch = collate_sft(examples[start : start + size], pad_id)
        parts.append(sft_loss(model, head, {k: v.to(device) for k, v in batch.items()}, cfg)[1])
    model.train()
    return _mean_parts(parts) if parts else {}


def save_sft_checkpoint(
    model: torch.nn.Module, head: TokenTemperatureHead, tokenizer: Any, cfg: TGRConfig, ckpt_dir: Path, info: dict
) -> Path:
    """Write policy (``full``) or adapter safetensors, tokenizer, head, config and info; replaces ``ckpt_dir``
    atomically (written beside it, then renamed into place)."""
    with atomic_dir(ckpt_dir) as tmp:
        sub = tmp / ("policy" if cfg.learner.mode == "full" else "adapter")
        model.save_pretrained(sub, safe_serialization=True)
        tokenizer.save_pretrained(sub)
        save_head(head, tmp / "ttm_head.safetensors")
        (tmp / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        (tmp / "checkpoint.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return ckpt_dir


# --------------------------------------------------------------------------------------------------- trainer
def train_sft(cfg: TGRConfig) -> Path:
    """Train policy and TTM head on WikiQA as configured; returns the checkpoint directory."""
    tr, lc, max_len, steps = cfg.trainer, cfg.learner, cfg.data.max_len, cfg.trainer.total_steps
    if tr.num_threads:
        torch.set_num_threads(tr.num_threads)
    torch.manual_seed(tr.seed)
    run_dir = Path(tr.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_path = _prepare_base(cfg, run_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    train = encode_examples(load_wikiqa(cfg.data.split, cfg.data.limit), tokenizer, max_len)
    if not train:
        raise ValueError(f"no WikiQA {cfg.data.split} example fits data.max_len={max_len}")
    model = load_policy(model_path, cfg.model, cfg.learner, device)
    hidden_size = model.get_input_embeddings().embedding_dim
    t = cfg.ttm
    head = TokenTemperatureHead(hidden_size, t.heads, t.t_min, t.t_max, t.t0, t.init_std).to(device)
    policy_params = [p for p in model.parameters() if p.requires_grad]
    if not policy_params:
        raise RuntimeError(f"the policy has no trainable parameters (learner.mode={cfg.learner.mode})")
    policy_group = {"params": policy_params, "lr": lc.lr, "weight_decay": lc.weight_decay}
    head_group = {"params": list(head.parameters()), "lr": t.lr or lc.lr, "weight_decay": 0.0}
    optimizer = torch.optim.AdamW([policy_group, head_group])
    warmup = functools.partial(lr_factor, warmup_steps=lc.warmup_steps, total_steps=steps)  # then constant
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
    batches = _batches(train, lc.micro_batch_size, tr.seed)
    info = {"base_model": model_path, "mode": cfg.learner.mode, "train_examples": len(train), "step": 0}
    ckpt_dir = run_dir / "checkpoint"
    model.train()
    t_start = time.time()
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as log:
        for step in range(1, steps + 1):
            t_step = time.time()
            parts = []
            for _ in range(lc.grad_accum):
                batch = {k: v.to(device) for k, v in collate_sft(next(batches), pad_id).items()}
                loss, p = sft_loss(model, head, batch, cfg)
                if not math.isfinite(p["loss"]):
                    raise FloatingPointError(f"non-finite loss at step {step}: {p}")
                (loss / lc.grad_accum).backward()
                parts.append(p)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy_params, lc.grad_clip)
            head_norm = torch.nn.utils.clip_grad_norm_(head.parameters(), lc.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            row = {"step": step, **_mean_parts(parts), "lr": scheduler.get_last_lr()[0]}
            row |= {"grad_norm": float(grad_norm), "head_grad_norm": float(head_norm)}
            row["step_time_s"] = round(time.time() - t_step, 4)
            scheduler.step()
            log.write(json.dumps(row) + "\n")
            log.flush()
            if tr.log_every and (step % tr.log_every == 0 or step == 1):
                msg = f"loss {row['loss']:.4f} lm {row['lm_loss']:.4f} calib {row['calib_loss']:.4f}"
                print(f"step {step}/{steps} {msg} T {row['temp_mean']:.3f} cold {row['cold_share']:.2f}", flush=True)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < steps:
                save_sft_checkpoint(model, head, tokenizer, cfg, ckpt_dir, info | {"step": step})
    info |= {"step": steps, "train_seconds": round(time.time() - t_start, 2)}
    if cfg.data.eval_limit:
        held_out = encode_examples(load_wikiqa(cfg.data.eval_split, cfg.data.eval_limit), tokenizer, max_len)
        scores = evaluate_sft(model, head, held_out, cfg, pad_id)
        result = {"split": cfg.data.eval_split, "examples": len(held_out), **scores}
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        info["eval"] = result
    return save_sft_checkpoint(model, head, tokenizer, cfg, ckpt_dir, info)


def main_sft(recipe: str, overrides: list[str]) -> int:
    """``rlvr-temp sft RECIPE [key=value ...]``: train and print the checkpoint directory. A bad recipe raises
    :class:`ConfigError` (one line naming the file and key), which the CLI reports with exit code 2."""
    ckpt = train_sft(load_tgr_config(recipe, overrides))
    print(f"TGR checkpoint: {ckpt}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m rlvr_temp.learner.tgr RECIPE [key.path=value ...]")
    try:
        sys.exit(main_sft(sys.argv[1], sys.argv[2:]))
    except ConfigError as exc:
        sys.exit(f"rlvr-temp: error: {exc}")
