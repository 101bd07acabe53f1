"""The Temperature-Guided Reasoning (TGR) recipe: its typed schema and its data. Read by the TGR supervised trainer
(:mod:`rlvr_temp.learner.tgr`, in the process of ``rlvr-temp sft``) and by ``rlvr-temp validate`` for a TGR recipe;
imports no model code.

* :class:`TGRConfig` -- the typed recipe schema (``rlvr-temp sft RECIPE [key=value ...]``, documented in
  docs/tgr.md), loaded by :func:`load_tgr_config`; a key the recipe had before it took the RL recipe's names fails
  with one line naming its replacement (:data:`RENAMED_KEYS`).
* :func:`load_wikiqa` -- the bundled WikiQA corpus (``rlvr_temp/data/bundled/wikiqa``, Microsoft Research Data
  License: research use only), ``label == 1`` pairs as ``{"question", "answer", "text"}`` with
  ``text = "Q: <question>\\nA: <answer>"``; :func:`encode_examples` tokenizes them for training.

Left out: datasets other than WikiQA.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from pydantic import Field, model_validator

from rlvr_temp.config.recipe import apply_overrides, read_yaml
from rlvr_temp.config.schema import ConfigError, PolicyConfig, Section, TrainerBase, load_config
from rlvr_temp.data.sources import BUNDLED_DIR

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
