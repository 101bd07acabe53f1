"""Temperature-Guided Reasoning (TGR): supervised fine-tuning of a policy together with a TTM head on WikiQA.

Method: Gomaa & Salah, "Guidance is All You Need: Temperature-Guided Reasoning in Large Language Models"
(Quasar-1, arXiv 2412.06822) -- a Token Temperature Mechanism (TTM) head gives every token a temperature in
``[t_min, t_max]``, a regulariser keeps it near ``t0`` and Guided Sequence of Thought (GSoT) treats tokens below a
threshold as *cold*. The pieces live in :mod:`rlvr_temp.temperature.ttm`; this module is the recipe around them:

* :func:`load_wikiqa` -- the bundled WikiQA corpus (``rlvr_temp/data/bundled/wikiqa``, Microsoft Research Data
  License: research use only), ``label == 1`` pairs as ``{"question", "answer", "text"}`` with
  ``text = "Q: <question>\\nA: <answer>"``.
* :class:`TGRConfig` -- the typed recipe schema (``rlvr-temp sft RECIPE [key=value ...]``).
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from pydantic import Field, model_validator
from transformers import AutoTokenizer

from rlvr_temp.config.recipe import apply_overrides, read_yaml
from rlvr_temp.config.schema import ConfigError, PolicyConfig, Section, TrainerBase, load_config
from rlvr_temp.data.sources import BUNDLED_DIR
from rlvr_temp.data.tiny_model import TinyModelSettings, build_tokenizer, collate_sft, make_model
from rlvr_temp.learner.policy import load_policy
from rlvr_temp.temperature.ttm import (
    TokenTemperatureHead,
    gsot_mask,
    gsot_weights,
    save_head,
    temperature_regularization,
    to_sampling_range,
)
from rlvr_temp.utils import atomic_dir, lr_factor

WIKIQA_DIR = BUNDLED_DIR / "wikiqa"
WIKIQA_FILES = {"train": "WikiQA-train.txt", "dev": "WikiQA-dev.txt", "test": "WikiQA-test.txt"}
WIKIQA_POSITIVES = {"train": 1040, "dev": 140, "test": 293}  # label-1 pairs per split (1,473 in all)
TINY_WIKIQA = "tiny-wikiqa"
PROMPT_TEMPLATE = "Q: {question}\nA:"


# ------------------------------------------------------------------------------------------------------ data
def format_wikiqa(question: str, answer: str) -> str:
    """The seeds' training text: ``"Q: <question>\\nA: <answer>"``."""
    return f"{PROMPT_TEMPLATE.format(question=question)} {answer}"


def load_wikiqa(split: str = "train", limit: int | None = None) -> list[dict[str, str]]:
    """Question/answer pairs with ``label == 1`` from the bundled, tokenized WikiQA split, in file order.

    Each row is ``{"question", "answer", "text"}``. Counts: train 1,040, dev 140, test 293. The text is the
    corpus's tokenized form (``"how are glacier caves formed ?"``). ``limit`` keeps the first N pairs.
    """
    if split not in WIKIQA_FILES:
        raise ValueError(f"WikiQA split must be one of {sorted(WIKIQA_FILES)}, got {split!r}")
    path = WIKIQA_DIR / WIKIQA_FILES[split]
    rows: list[dict[str, str]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3 or fields[2] not in ("0", "1"):
                raise ValueError(f"{path}:{lineno}: expected question<TAB>sentence<TAB>0|1")
            question, answer, label = (f.strip() for f in fields)
            if label == "1" and question and answer:
                rows.append({"question": question, "answer": answer, "text": format_wikiqa(question, answer)})
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def encode_examples(rows: Sequence[dict[str, str]], tokenizer: Any, max_len: int) -> list[tuple[list[int], int]]:
    """``(ids of prompt + " answer" + EOS, prompt length)`` per row, cut to ``max_len``; rows whose answer gets
    no token inside ``max_len`` are dropped. The prompt gets the tokenizer's special tokens (e.g. BOS)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for row in rows:
        prompt = tokenizer(PROMPT_TEMPLATE.format(question=row["question"]))["input_ids"]
        answer = tokenizer(" " + row["answer"], add_special_tokens=False)["input_ids"] + eos
        ids = (prompt + answer)[:max_len]
        if len(ids) > len(prompt):
            out.append((ids, len(prompt)))
    return out


# ---------------------------------------------------------------------------------------------------- config
class TGRModelConfig(Section):
    path: str = Field(
        TINY_WIKIQA,
        description="Hugging Face model directory (or hub name in the local cache), or `tiny-wikiqa`: a character-"
        "level Llama of the embedded tiny model's architecture, randomly initialised (seed `trainer.seed`); its "
        "tokenizer covers ASCII, other characters become `<unk>`.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype; the compute dtype of the NF4 layers in `qlora` mode."
    )
    trust_remote_code: bool = Field(False, description="Passed to transformers.")

    @model_validator(mode="after")
    def _path_set(self) -> TGRModelConfig:
        if not self.path.strip() or self.path.strip() == "???":
            raise ValueError("model.path is required: a Hugging Face model directory or `tiny-wikiqa`")
        return self


class TGRLearnerConfig(PolicyConfig):
    """The RL learner's policy settings (``config.PolicyConfig``) and optimizer keys; all weights trained by default."""

    mode: Literal["full", "lora", "qlora"] = Field(
        "full",
        description="`full`: all weights; `lora`: LoRA on a plain base; `qlora`: LoRA on an NF4, "
        "double-quantised base (bitsandbytes, the seed script's 4-bit setup).",
    )
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate of the policy's trainable weights.")
    warmup_steps: int = Field(5, ge=0, description="Linear warm-up steps, then constant.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the policy (none on the head).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping, policy and head separately.")
    micro_batch_size: int = Field(8, ge=1, description="Examples per forward/backward (micro-batch).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")


class TTMConfig(Section):
    heads: int = Field(8, ge=1, description="Temperature heads; a token's temperature is their mean (seed: 8).")
    t_min: float = Field(0.01, ge=0, lt=1, description="Lower clamp of the head's sigmoid output (seed: 0.01).")
    t_max: float = Field(0.99, gt=0, le=1, description="Upper clamp of the head's sigmoid output (seed: 0.99).")
    t0: float = Field(0.5, gt=0, lt=1, description="Initial temperature and regularisation target (seed: 0.5).")
    reg_weight: float = Field(0.01, ge=0, description="Weight w of `w * mean((t - t0)^2)` (seed: 0.01).")
    init_std: float | None = Field(
        None, ge=0, description="Std of the head's initial weights (None: 0.01 / sqrt(hidden)); bias is logit(t0)."
    )
    lr: float | None = Field(None, gt=0, description="Learning rate of the head (None: `learner.lr`).")
    calibration_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the calibration loss that trains the head (0: only the regulariser acts "
        "on it, so it stays at t0).",
    )
    sampling_low: float = Field(0.5, gt=0, description="Sampling temperature the head's `t_min` maps to.")
    sampling_high: float = Field(1.5, gt=0, description="Sampling temperature the head's `t_max` maps to.")
    detach_hidden: bool = Field(
        True, description="The head reads detached hidden states: its losses do not change the policy."
    )

    @model_validator(mode="after")
    def _ranges(self) -> TTMConfig:
        if not self.t_min < self.t0 < self.t_max:
            raise ValueError(f"need t_min < t0 < t_max, got {self.t_min}, {self.t0}, {self.t_max}")
        if self.sampling_high < self.sampling_low:
            raise ValueError(f"sampling_high ({self.sampling_high}) must be >= sampling_low ({self.sampling_low})")
        return self


class GSoTConfig(Section):
    enabled: bool = Field(True, description="Down-weight the LM loss of cold tokens (Guided Sequence of Thought).")
    threshold: float = Field(
        0.4, gt=0, lt=1, description="Tokens whose mean TTM temperature is below are cold (seed: 0.4)."
    )
    cold_weight: float = Field(
        0.1,
        ge=0,
        le=1,
        description="LM-loss weight of cold tokens (0: excluded; 1: GSoT off). The weighted loss "
        "is normalised by the weights' sum, so with 0 a batch whose tokens are all cold teaches the policy nothing.",
    )


class TGRDataConfig(Section):
    dataset: Literal["wikiqa"] = Field("wikiqa", description="Bundled WikiQA, label-1 pairs (research use only).")
    split: Literal["train", "dev", "test"] = Field("train", description="Training split.")
    limit: int | None = Field(None, ge=1, description="Use only the first N pairs.")
    eval_split: Literal["train", "dev", "test"] = Field("dev", description="Split of the final evaluation.")
    eval_limit: int = Field(64, ge=0, description="Pairs evaluated after training (0: no evaluation).")
    max_len: int = Field(256, ge=8, description="Tokens per example (prompt + answer + EOS), longer ones cut.")


class TGRTrainerConfig(TrainerBase):
    """The keys shared with the RL recipe (``config.TrainerBase``) with TGR's defaults, and TGR's own."""

    total_steps: int = Field(40, ge=1, description="Optimizer steps.")
    seed: int = Field(0, description="Seed of initialisation and data order.")
    run_dir: str = Field("runs/tgr/wikiqa_sft", description="Run directory (its metrics.jsonl is overwritten).")
    log_every: int = Field(10, ge=0, description="Print a progress line every N steps (0: never).")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: leave as is).")


class TGRCheckpointConfig(Section):
    every: int = Field(0, ge=0, description="Also save every N steps (0: only at the end); latest kept.")


class TGRConfig(Section):
    """A TGR supervised recipe (Quasar-1, arXiv 2412.06822); documented in docs/tgr.md."""

    model: TGRModelConfig = Field(default_factory=TGRModelConfig)
    learner: TGRLearnerConfig = Field(default_factory=TGRLearnerConfig)
    ttm: TTMConfig = Field(default_factory=TTMConfig)
    gsot: GSoTConfig = Field(default_factory=GSoTConfig)
    data: TGRDataConfig = Field(default_factory=TGRDataConfig)
    trainer: TGRTrainerConfig = Field(default_factory=TGRTrainerConfig)
    checkpoint: TGRCheckpointConfig = Field(default_factory=TGRCheckpointConfig)

    def to_yaml(self) -> str:
        """The resolved config as YAML (itself a valid recipe)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


#: Keys the TGR recipe had before it took the RL recipe's names; a recipe or override that still uses one fails.
RENAMED_KEYS = {
    "training.steps": "trainer.total_steps",
    "checkpoint.out_dir": "trainer.run_dir",
    **{f"training.{k}": f"trainer.{k}" for k in ("seed", "log_every", "num_threads")},
    "training.batch_size": "learner.micro_batch_size",
    **{f"training.{k}": f"learner.{k}" for k in ("grad_accum", "lr", "warmup_steps", "weight_decay", "grad_clip")},
    "training.max_len": "data.max_len",
    "checkpoint.save_every": "checkpoint.every",
}


def renamed_key(recipe: dict) -> str | None:
    """What is wrong with the first old key in a raw recipe mapping (:data:`RENAMED_KEYS`), or None."""
    for old, new in RENAMED_KEYS.items():
        section, key = old.split(".")
        if isinstance(recipe.get(section), dict) and key in recipe[section]:
            return f"{old} was renamed {new}"
    if "training" in recipe:
        return "the training section was removed: its keys moved to trainer, learner and data (docs/tgr.md)"
    return None


def load_tgr_config(path: str | Path | None = None, overrides: Sequence[str] | None = None) -> TGRConfig:
    """Load a TGR recipe (``base:`` inheritance, ``key.path=value`` overrides); raises :class:`ConfigError`, also
    (one line naming the new key) when the recipe or an override uses a key of :data:`RENAMED_KEYS`."""
    overrides = list(overrides or [])
    raw = [(str(path), read_yaml(Path(path).resolve(), ()))] if path is not None else []
    raw += [(f"override {item!r}", apply_overrides(OmegaConf.create({}), [item])) for item in overrides]
    for origin, node in raw:
        if problem := renamed_key(OmegaConf.to_container(node, resolve=False)):
            raise ConfigError(f"{origin}: {problem}")
    return load_config(path, overrides, schema=TGRConfig)


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
