"""Run configuration: one typed, documented schema, loaded from YAML recipes with inheritance and overrides.

A recipe is a YAML file whose top-level keys are the sections below (``model``, ``data``, ``rollout``,
``temperature``, ``algorithm``, ``reward``, ``learner``, ``trainer``, ``checkpoint``, ``logging``, ``ray``).
A recipe may name a parent with ``base: other.yaml`` (a path relative to the recipe, or a list of them);
parents are merged first, children override. Dotted overrides from the command line
(``trainer.total_steps=50``) are applied last. YAML parsing, merging and override syntax are OmegaConf's;
types, ranges and unknown keys are checked by pydantic, and every failure becomes one :class:`ConfigError`
whose message names the file and the key path.

Loaded in the driver (the command line, the trainer, the sweep); the learner actors get the typed ``RunConfig`` as
it is, the engines their typed sections. The sections live by area: ``model`` / ``data`` / ``logging`` / ``eval``
here, ``rollout`` / ``temperature`` in :mod:`rlvr_temp.config.sampling`, ``algorithm`` / ``reward`` / ``learner`` /
``trainer`` / ``checkpoint`` in :mod:`rlvr_temp.config.training`, ``ray`` / ``resources`` / ``rollout.engine`` in
:mod:`rlvr_temp.config.cluster`; all of them are importable from here.

Defaults follow the multi-temperature paper (Wu et al., arXiv 2510.08892) where it gives a value, DAPO
(Yu et al., arXiv 2503.14476) for clip-higher / dynamic sampling / overlong shaping, and otherwise what fits the
embedded tiny model on a 2-core CPU.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, Field, ValidationError, model_validator

from rlvr_temp.config.cluster import EngineConfig, RayConfig, ResourcesConfig
from rlvr_temp.config.recipe import ConfigError, Section, apply_overrides, format_validation, read_yaml
from rlvr_temp.config.sampling import (
    LearnedConfig,
    MixtureConfig,
    RolloutConfig,
    ScheduleConfig,
    TemperatureConfig,
    TokenRuleConfig,
)
from rlvr_temp.config.training import (
    FULL_FT_LR_MAX,
    AlgorithmConfig,
    CheckpointConfig,
    LearnerConfig,
    OverlongConfig,
    PolicyConfig,
    RewardConfig,
    TrainerBase,
    TrainerConfig,
)
from rlvr_temp.temperature.strategy import MODES
from rlvr_temp.utils import atomic_write_text

# the recipe's face: RunConfig and its loaders, and every section class (defined by area in config/cluster.py,
# config/sampling.py and config/training.py), so that callers import them all from here
__all__ = [
    "DEFAULT_SUFFIX",
    "FULL_FT_LR_MAX",
    "AlgorithmConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "EngineConfig",
    "EvalConfig",
    "LearnedConfig",
    "LearnerConfig",
    "LoggingConfig",
    "MixtureConfig",
    "ModelConfig",
    "OverlongConfig",
    "PolicyConfig",
    "RayConfig",
    "ResourcesConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "ScheduleConfig",
    "Section",
    "SyntheticDataConfig",
    "TemperatureConfig",
    "TokenRuleConfig",
    "TrainerBase",
    "TrainerConfig",
    "format_validation",
    "load_config",
    "save_config",
]

DEFAULT_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."


# --------------------------------------------------------------------------------------------------- sections
class ModelConfig(Section):
    path: str = Field(
        "tiny",
        description="Hugging Face model directory, a hub id (`Qwen/Qwen2.5-1.5B-Instruct`: its snapshot in the hub "
        "cache, downloaded unless `HF_HUB_OFFLINE=1`), or `tiny` for the embedded character-level Qwen2 model "
        "(built by `rlvr-temp make-tiny-model` on first use and cached).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype of the rollout engine and of the learner's compute."
    )
    max_model_len: int | None = Field(
        512, ge=16, description="Prompt + response token budget of the rollout engine (None: the model's own limit)."
    )
    trust_remote_code: bool = Field(False, description="Passed to transformers and vLLM.")


class SyntheticDataConfig(Section):
    levels: list[int] = Field([1, 2, 3], min_length=1, description="Difficulty levels of the arithmetic task.")
    n_train: int = Field(2000, ge=1, description="Number of generated training problems.")
    seed: int = Field(0, description="Generator seed.")


class DataConfig(Section):
    train: str = Field(
        "synthetic",
        description="Training prompts: `synthetic` (the arithmetic task), a bundled set name (`gsm8k_train`, "
        "`math_train`, ...), a path to .jsonl/.json/.parquet (verl's parquet schema included), or a hub dataset "
        "`org/name[:config]` (split `train`, from the `datasets` cache unless `HF_DATASETS_OFFLINE=0`).",
    )
    question_key: str | None = Field(None, description="Field holding the question (auto-detected if unset).")
    answer_key: str | None = Field(None, description="Field holding the answer (auto-detected if unset).")
    limit: int | None = Field(None, ge=1, description="Use only the first N training rows.")
    shuffle: bool = Field(True, description="Shuffle prompts each epoch (seeded by `trainer.seed`).")
    prompt_template: str = Field(
        "{question} {suffix}",
        description="Python format string with `{question}` and optional `{suffix}`; wrapped in the "
        "tokenizer's chat template when it has one (see `use_chat_template`).",
    )
    prompt_suffix: str = Field(
        DEFAULT_SUFFIX,
        description="Boxed-answer instruction appended to questions (the paper's suffix, docs/evaluation.md).",
    )
    use_chat_template: bool | None = Field(
        None, description="Apply the tokenizer's chat template: None = when the tokenizer has one."
    )
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)


class LoggingConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard scalars beside metrics.jsonl.")
    wandb: bool = Field(False, description="Log to Weights & Biases (needs `wandb` installed and configured).")
    progress: bool = Field(True, description="Rich progress bar with reward and ETA.")
    engine_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Level of the vLLM engines' own logs (INFO shows start-up and every weight sync)."
    )


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="Evaluate every N steps and after the last one (0 = off).")
    datasets: list[str] = Field(["synthetic"], description="Bundled set names or `synthetic` (held-out split).")
    n: int = Field(4, ge=1, description="Samples per problem (avg@n, pass@k, maj@n); paper: 256 AIME, 32 AMC.")
    temperature: float = Field(0.6, gt=0, description="Evaluation temperature, token rule off (paper: 0.6).")
    top_p: float = Field(0.95, gt=0, le=1, description="Evaluation nucleus sampling (paper: 0.95).")
    limit: int | None = Field(64, ge=1, description="Problems per dataset (None = all).")
    max_tokens: int | None = Field(None, ge=1, description="Response budget (None = rollout.max_response_len).")


class RunConfig(Section):
    """The whole run. Each section is documented field by field in docs/configuration.md."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    temperature: TemperatureConfig = Field(default_factory=TemperatureConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        mix = self.temperature.mixture
        if MODES[self.temperature.mode].mixture and mix.kind == "explicit":
            if not mix.counts:
                raise ValueError("temperature.mixture.counts is required when mixture.kind is 'explicit'")
            if sum(mix.counts.values()) != self.rollout.group_size:
                raise ValueError(
                    f"temperature.mixture.counts sum to {sum(mix.counts.values())}, "
                    f"rollout.group_size is {self.rollout.group_size}"
                )
        if self.temperature.schedule.kind in ("linear", "cosine") and self.temperature.schedule.end is None:
            raise ValueError("temperature.schedule.end is required for linear and cosine schedules")
        if self.learner.micro_batch_size > self.learner.mini_batch_size:
            raise ValueError("learner.micro_batch_size must be <= learner.mini_batch_size")
        tok, ro = self.temperature.token, self.rollout
        per_engine = min(ro.engine.max_num_seqs, -(-ro.prompts_per_step // ro.num_workers) * ro.group_size)
        if MODES[self.temperature.mode].token_rule and tok.scope == "global" and tok.window < per_engine:
            raise ValueError(
                f"temperature.token.window ({tok.window}) is smaller than one decode step of an engine ({per_engine} "
                "sequences): each step would overwrite the whole window"
            )
        if ro.engine.lora_updates:
            why = (
                "learner.mode is full (no adapters)"
                if self.learner.mode == "full"
                else "the learned temperature mode (its head is not an adapter)"
                if self.temperature.mode == "learned"
                else "object_store weight sync"
                if ro.engine.weight_sync == "object_store"
                else "sleep mode (level 2 discards the base the adapters apply to)"
                if self.engines_sleep()
                else None
            )
            if why:
                raise ValueError(f"rollout.engine.lora_updates is not possible with {why}")
        if ro.engine.tensor_parallel_size > 1 and not ro.engine.multiprocess:
            raise ValueError(
                "rollout.engine.tensor_parallel_size > 1 needs rollout.engine.multiprocess: true (one vLLM worker "
                "process per rank)"
            )
        return self

    def weight_sync_backend(self) -> str:
        """``rollout.engine.weight_sync`` with ``auto`` resolved from the recipe's devices: ``gloo`` without GPUs;
        on GPUs ``ipc`` for the ``colocated`` layout (every learner rank shares its GPU with its engines: each
        replicated rank hands its own GPU's engines their weights, and NCCL would refuse a group with two ranks on
        one GPU), ``nccl`` for ``split`` (learner and engines on disjoint GPUs). ``rlvr-temp plan`` checks the
        result against a cluster shape (rlvr_temp.driver.plan)."""
        ws, res = self.rollout.engine.weight_sync, self.resources
        if ws != "auto":
            return ws
        if not self.uses_gpus():
            return "gloo"
        return "ipc" if res.layout == "colocated" else "nccl"

    def uses_gpus(self) -> bool:
        """Whether any actor of the run reserves a GPU (``ray.*_gpus``, ``resources.bundle_gpus``)."""
        return max(self.ray.rollout_gpus, self.ray.learner_gpus, self._bundle_gpus()) > 0

    def _bundle_gpus(self) -> float:
        res = self.resources
        return res.bundle_gpus if res.bundle_gpus is not None else max(self.ray.rollout_gpus, self.ray.learner_gpus)

    def engines_sleep(self) -> bool:
        """``rollout.engine.sleep_mode`` resolved: ``auto`` is on for the ``colocated`` layout on GPUs."""
        mode = self.rollout.engine.sleep_mode
        if mode != "auto":
            return bool(mode)
        return self.resources.layout == "colocated" and max(self.ray.rollout_gpus, self._bundle_gpus()) > 0

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what the author meant (printed by `validate` and `train`)."""
        out = []
        lc = self.learner
        if lc.mode in ("lora", "qlora") and lc.lr <= FULL_FT_LR_MAX:
            out.append(
                f"learner.lr={lc.lr:g} is a full fine-tuning rate, but learner.mode={lc.mode} trains LoRA adapters, "
                "which need about 10x more for the same update size (docs/recipes.md, 'Learning rates')"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-serialisable dict of the resolved config."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """Stable short hash of the resolved config."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, schema: type[BaseModel] | None = None
) -> Any:
    """Load a recipe (or the defaults when `path` is None), apply dotted overrides, validate against ``schema``
    (default :class:`RunConfig`; other recipe kinds, e.g. the TGR supervised recipe, pass theirs).

    Raises :class:`ConfigError` with a one-line message naming the file and key path.
    """
    overrides = list(overrides or [])
    origin = str(path) if path is not None else "<defaults>"
    node = read_yaml(Path(path).resolve(), ()) if path is not None else OmegaConf.create({})
    node = apply_overrides(node, overrides)
    try:
        data = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{origin}: {' '.join(str(exc).split())}") from None
    try:
        return (schema or RunConfig).model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, origin)) from None


def save_config(cfg: RunConfig, run_dir: str | Path) -> Path:
    """Write the resolved config (and its hash) into a run directory."""
    return atomic_write_text(Path(run_dir) / "config.yaml", f"# resolved config, hash {cfg.hash()}\n" + cfg.to_yaml())
