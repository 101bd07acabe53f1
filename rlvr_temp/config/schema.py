"""Run configuration: one typed, documented schema, loaded from YAML recipes with inheritance and overrides.

A recipe is a YAML file whose top-level keys are the sections below (``model``, ``data``, ``rollout``,
``temperature``, ``algorithm``, ``reward``, ``learner``, ``trainer``, ``checkpoint``, ``logging``, ``ray``).
A recipe may name a parent with ``base: other.yaml`` (a path relative to the recipe, or a list of them);
parents are merged first, children override. Dotted overrides from the command line
(``trainer.total_steps=50``) are applied last. YAML parsing, merging and override syntax are OmegaConf's;
types, ranges and unknown keys are checked by pydantic, and every failure becomes one :class:`ConfigError`
whose message names the file and the key path.

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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlvr_temp.config.cluster import EngineConfig, RayConfig, ResourcesConfig
from rlvr_temp.config.recipe import ConfigError, Section, apply_overrides, format_validation, read_yaml
from rlvr_temp.config.run_root import RUN_ROOT_ENV, resolve_run_dir
from rlvr_temp.temperature.strategy import MODES
from rlvr_temp.utils import atomic_write_text

__all__ = ["ConfigError", "RunConfig", "format_validation", "load_config", "save_config"]

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


class RolloutConfig(Section):
    num_workers: int = Field(1, ge=1, description="Number of vLLM rollout workers (Ray actors).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per training step (paper: 512).")
    group_size: int = Field(8, ge=1, description="Responses per prompt, G (paper: 8).")
    max_response_len: int = Field(64, ge=1, description="Maximum generated tokens per response.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (1.0 = off; on-policy needs 1.0).")
    top_k: int = Field(-1, description="Top-k sampling (-1 = off).")
    dump: bool = Field(False, description="Write one jsonl of rollouts per step into `<run>/rollouts/`.")
    engine: EngineConfig = Field(default_factory=EngineConfig)


class TokenRuleConfig(Section):
    t_low: float = Field(1.2, gt=0, description="Temperature of low-entropy (knowledge) tokens (paper: 1.2).")
    t_high: float = Field(1.6, gt=0, description="Temperature of high-entropy (reasoning) tokens (paper: 1.6).")
    hot_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of tokens above the entropy threshold (paper: top 20%)."
    )
    window: int = Field(100_000, ge=1, description="Entropy window length (paper: 100,000, global scope).")
    scope: Literal["global", "sequence"] = Field(
        "global", description="`global`: one window per engine (paper); `sequence`: one window per response."
    )
    warmup_tokens: int = Field(
        0,
        ge=0,
        description="While the window holds fewer entropies than this, every token is cold (t_low); 0 = authors'.",
    )

    @model_validator(mode="after")
    def _order(self) -> TokenRuleConfig:
        if self.t_high < self.t_low:
            raise ValueError(f"t_high ({self.t_high}) must be >= t_low ({self.t_low})")
        return self


class MixtureConfig(Section):
    kind: Literal["offsets", "explicit"] = Field(
        "offsets", description="`offsets`: the authors' [0, 0, -d, +d, -2d, +2d, ...]; `explicit`: `counts`."
    )
    step: float = Field(0.1, gt=0, description="Offset increment d for `offsets` (paper: 0.1).")
    counts: dict[float, int] | None = Field(
        None, description="Explicit {temperature: count} list, counts summing to `rollout.group_size`."
    )


class ScheduleConfig(Section):
    kind: Literal["constant", "linear", "spike", "cosine"] = Field(
        "constant", description="How the base temperature moves over steps (paper §4: linear 1.2->1.4 / 300)."
    )
    end: float | None = Field(None, gt=0, description="Final base temperature for `linear` / `cosine`.")
    steps: int = Field(300, ge=1, description="Steps over which `linear` / `cosine` move (paper: 300).")
    every: int = Field(50, ge=1, description="`spike`: raise the temperature every N steps (paper: 50).")
    increment: float = Field(0.1, description="`spike`: amount added every `every` steps (paper: 0.1).")


class LearnedConfig(Section):
    t_low: float = Field(0.8, gt=0, description="Sampling temperature at the TTM head's minimum output.")
    t_high: float = Field(1.4, gt=0, description="Sampling temperature at the TTM head's maximum output.")
    heads: int = Field(4, ge=1, description="TTM heads (Quasar-1, arXiv 2412.06822; averaged per token).")
    t_min: float = Field(0.01, ge=0, lt=1, description="Lower clamp of the head's sigmoid (Quasar-1: 0.01).")
    t_max: float = Field(0.99, gt=0, le=1, description="Upper clamp of the head's sigmoid (Quasar-1: 0.99).")
    init_temperature: float = Field(0.5, gt=0, lt=1, description="Head output at initialisation, t0.")
    reg_weight: float = Field(0.0, ge=0, description="Regulariser weight * mean((t - t0)^2) (Quasar-1).")

    @model_validator(mode="after")
    def _ranges(self) -> LearnedConfig:
        if self.t_high < self.t_low:
            raise ValueError(f"t_high ({self.t_high}) must be >= t_low ({self.t_low})")
        if not self.t_min < self.init_temperature < self.t_max:
            raise ValueError("init_temperature must lie strictly between t_min and t_max")
        return self


class TemperatureConfig(Section):
    mode: str = Field(
        "fixed",
        description="Sampling temperature strategy, a mode registered in `rlvr_temp.temperature.strategy` (paper "
        "arms: `fixed`, `token`, `mixture`, `token+mixture`; `learned`: the TTM head's per-token temperature, "
        "trained by the policy gradient).",
    )
    base: float = Field(1.0, gt=0, description="Base (rollout-level) temperature.")
    logprobs: Literal["on_policy", "off_policy"] = Field(
        "on_policy",
        description="Learner log-probs at the per-token temperatures the rollout used (on_policy, paper's best) "
        "or at the base temperature (off_policy ablation).",
    )
    token: TokenRuleConfig = Field(default_factory=TokenRuleConfig)
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    learned: LearnedConfig = Field(default_factory=LearnedConfig)

    @field_validator("mode")
    @classmethod
    def _registered(cls, mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"unknown temperature mode {mode!r}; registered: {', '.join(sorted(MODES))}")
        return mode


class OverlongConfig(Section):
    enabled: bool = Field(False, description="DAPO soft overlong punishment.")
    buffer: int = Field(16, ge=1, description="Penalty ramps linearly over the last N tokens (DAPO: 4096).")
    penalty: float = Field(1.0, ge=0, description="Penalty at the maximum length.")


class AlgorithmConfig(Section):
    advantage: Literal["grpo", "drgrpo"] = Field(
        "grpo", description="`grpo`: (r - mean) / (std + eps); `drgrpo`: r - mean (Liu et al. 2025)."
    )
    loss: Literal["grpo", "dapo", "drgrpo"] = Field("dapo", description="Policy loss from the loss registry.")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] | None = Field(
        None,
        description="Loss aggregation; None = the loss's own (dapo: token-mean, grpo: seq-mean-token-mean).",
    )
    clip_eps_low: float = Field(0.2, ge=0, description="PPO clip lower epsilon (DAPO: 0.2).")
    clip_eps_high: float = Field(0.28, ge=0, description="PPO clip upper epsilon, clip-higher (DAPO: 0.28).")
    dual_clip_c: float | None = Field(None, gt=1, description="Dual-clip constant for negative advantages.")
    kl_coef: float = Field(0.0, ge=0, description="`low_var_kl` coefficient against the frozen base (paper: 0).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus coefficient (paper: 0).")
    archer: bool = Field(False, description="Archer dual-token constraint (arXiv 2507.15778).")
    dynamic_sampling: bool = Field(True, description="DAPO: drop groups whose rewards are all equal, refill.")
    max_refill_rounds: int = Field(2, ge=0, description="Bound on extra generation rounds per step.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each step's batch.")
    overlong: OverlongConfig = Field(default_factory=OverlongConfig)


class RewardConfig(Section):
    mode: Literal["binary", "signed"] = Field("binary", description="1/0 (GRPO) or +1/-1 (DAPO).")
    format_penalty: float = Field(0.0, ge=0, description="Subtracted when a response has no \\boxed{}.")
    timeout_s: float = Field(5.0, gt=0, description="Hard time bound per verification.")
    num_workers: int = Field(2, ge=1, description="Verifier worker processes.")


class PolicyConfig(Section):
    """How the trained policy is built (shared by the RL learner and the TGR supervised recipe)."""

    mode: Literal["full", "lora", "qlora"] = Field(
        "qlora",
        description="`full`: all weights; `lora`: LoRA on a plain base; `qlora`: LoRA on an NF4, double-quantised "
        "base (bitsandbytes), computed in `model.dtype`.",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (0 keeps log-probs deterministic).")
    lora_targets: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get LoRA adapters.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")


#: A LoRA learner needs roughly 10x the full fine-tuning learning rate for the same update size (Schulman et al.,
#: "LoRA Without Regret", Thinking Machines Lab 2025, also for RL); rates at or under this look copied from a
#: full fine-tuning recipe (the paper's 1e-6), and `validate` warns.
FULL_FT_LR_MAX = 5e-6


class LearnerConfig(PolicyConfig):
    lr: float = Field(
        1e-6,
        gt=0,
        description="AdamW peak learning rate (paper, full fine-tuning: 1e-6; LoRA / QLoRA need about 10x: "
        "docs/recipes.md).",
    )
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps (paper: 10).")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="After warm-up.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (paper: 0.1).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping (paper: 1.0).")
    mini_batch_size: int = Field(64, ge=1, description="Responses per optimizer step (paper: 64-128 prompts).")
    micro_batch_size: int = Field(
        16, ge=1, description="Responses per forward/backward; gradients accumulate exactly over a mini-batch."
    )
    micro_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Form micro-batches by a padded-token budget instead of `micro_batch_size` (verl's dynamic "
        "batch size): responses sorted by length and packed; the gradient is the same (exact accumulation).",
    )
    share_prompts: bool = Field(
        True,
        description="Run each distinct prompt of a mini-batch once and let its responses attend to its cached "
        "keys / values (the gradient is the same, summed over the group; docs/loop.md). Off: every response "
        "recomputes its prompt. Not used with a learned-temperature head, FSDP2 or gradient checkpointing.",
    )


class TrainerBase(Section):
    """The `trainer` keys every recipe kind shares (RL: :class:`TrainerConfig`; TGR: ``tgr.TGRTrainerConfig``)."""

    model_config = ConfigDict(validate_default=True)  # the default run_dir is made absolute too

    total_steps: int = Field(20, ge=1, description="Training steps (paper: 400).")
    seed: int = Field(0, description="Seed of data order, sampling and initialisation.")
    run_dir: str = Field(
        "runs/default",
        description=f"Where metrics, checkpoints and the resolved config go. A relative path is taken from "
        f"`${RUN_ROOT_ENV}` if set, else from the directory the command runs in, and saved absolute; inside a Ray "
        f"job it needs `${RUN_ROOT_ENV}` (the job's working dir is a temporary copy; docs/cluster.md).",
    )

    @field_validator("run_dir")
    @classmethod
    def _absolute(cls, run_dir: str) -> str:
        return resolve_run_dir(run_dir)


class TrainerConfig(TrainerBase):
    name: str | None = Field(None, description="Arm name in comparisons (default: the run directory's name).")
    resume: str = Field("auto", description="`auto` (newest complete checkpoint), `never`, or a path.")
    max_retries: int = Field(
        2, ge=0, description="Retries of a step after a rollout worker or the learner died (docs/loop.md, faults)."
    )


class CheckpointConfig(Section):
    every: int = Field(0, ge=0, description="Save every N steps (0 = only at the end / on signal).")
    keep: int = Field(2, ge=1, description="Keep the last N checkpoints.")


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
        if ro.engine.tensor_parallel_size > 1 and not ro.engine.multiprocess:
            raise ValueError(
                "rollout.engine.tensor_parallel_size > 1 needs rollout.engine.multiprocess: true (one vLLM worker "
                "process per rank)"
            )
        return self

    def weight_sync_backend(self) -> str:
        """``rollout.engine.weight_sync`` with ``auto`` resolved from the recipe's devices: ``gloo`` without GPUs;
        ``ipc`` when the learner and every engine share one GPU (``colocated``, one learner rank, a 1-GPU bundle);
        else ``nccl``."""
        ws, res = self.rollout.engine.weight_sync, self.resources
        if ws != "auto":
            return ws
        bundle_gpus = self._bundle_gpus()
        if max(self.ray.rollout_gpus, self.ray.learner_gpus, bundle_gpus) == 0:
            return "gloo"
        return "ipc" if res.layout == "colocated" and res.learner_ranks == 1 and bundle_gpus <= 1 else "nccl"

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
