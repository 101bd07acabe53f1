"""The sections of a run's config that say how the policy learns: ``algorithm``, ``reward``, ``learner``,
``trainer`` and ``checkpoint``.

Validated in the driver when a recipe loads (:mod:`rlvr_temp.config.schema` composes them into ``RunConfig``); the
learner actors get the whole typed config. ``PolicyConfig`` and ``TrainerBase`` are shared with the TGR supervised
recipe (rlvr_temp.learner.tgr). Defaults follow the paper (Wu et al., arXiv 2510.08892) where it gives a value and
DAPO (Yu et al., arXiv 2503.14476) for clip-higher / dynamic sampling / overlong shaping.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from rlvr_temp.config.recipe import RUN_ROOT_ENV, Section, resolve_run_dir

__all__ = [
    "FULL_FT_LR_MAX",
    "AlgorithmConfig",
    "CheckpointConfig",
    "LearnerConfig",
    "OverlongConfig",
    "PolicyConfig",
    "RewardConfig",
    "RolloutCorrectionConfig",
    "TrainerBase",
    "TrainerConfig",
]


class OverlongConfig(Section):
    enabled: bool = Field(False, description="DAPO soft overlong punishment.")
    buffer: int = Field(16, ge=1, description="Penalty ramps linearly over the last N tokens (DAPO: 4096).")
    penalty: float = Field(1.0, ge=0, description="Penalty at the maximum length.")


class RolloutCorrectionConfig(Section):
    """Importance correction of the rollout engine's policy against the learner's (docs/loop.md, "Importance
    correction"; verl's rollout correction, TRL's ``vllm_importance_sampling_correction``)."""

    mode: Literal["auto", "none", "tis", "mis"] = Field(
        "auto",
        description="Importance correction of the rollout/learner mismatch, both log-probs at the per-token "
        "temperatures sampled (docs/loop.md, importance correction). `tis`: truncated weights min(ratio, "
        "`threshold`); `mis`: masked, weight 0 outside [`lower`, `threshold`]; `none`: off. `auto`: `tis` (at "
        "`level`, by default token) when `trainer.off_policy_steps` >= 1 or `model.dtype` is not float32 (the "
        "engine's and the learner's kernels differ), else `none`.",
    )
    level: Literal["token", "sequence"] = Field(
        "token",
        description="`token`: one ratio per token; `sequence`: one per response (the product of its tokens' "
        "ratios), truncating or masking the whole response.",
    )
    threshold: float = Field(
        2.0, gt=1, description="Upper cap C of the ratio: truncated to it (tis), or masked above it (mis)."
    )
    lower: float | None = Field(
        None, gt=0, description="mis: mask ratios below this; null = 1 / `threshold`. Unused by tis."
    )

    @model_validator(mode="after")
    def _bounds(self) -> RolloutCorrectionConfig:
        if self.lower is not None and self.lower >= self.threshold:
            raise ValueError("rollout_correction.lower must be below rollout_correction.threshold")
        return self


class AlgorithmConfig(Section):
    """The policy update: advantages, loss, clipping, regularisers, DAPO's dynamic sampling and overlong shaping,
    and importance correction of the rollout/learner mismatch (``rollout_correction``: TIS / MIS, per token or per
    response; docs/loop.md)."""

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
    rollout_correction: RolloutCorrectionConfig = Field(
        default_factory=RolloutCorrectionConfig,
        description="Truncated / masked importance sampling of the rollout/learner mismatch (docs/loop.md).",
    )


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
        16,
        ge=1,
        description="Responses per forward/backward of the no-grad log-prob passes, and of the update when "
        "`micro_batch_tokens` is null; gradients accumulate exactly over a mini-batch.",
    )
    micro_batch_tokens: Literal["auto"] | int | None = Field(
        "auto",
        description="Micro-batches of the update by a padded-token budget (verl's dynamic batch size): responses "
        "sorted by length and packed into micro-batches of at most this many padded tokens (response tokens with "
        "`share_prompts`); the gradient is the same as with `micro_batch_size` (exact accumulation). `auto` "
        "(default): sized once at start-up from the device and the model (rlvr_temp/learner/budget.py: on CPU 512 "
        "tokens per torch thread, the fastest measured; on CUDA what 80% of the memory left after weights, "
        "gradients, optimizer state and colocated engines holds, in [256, 32768]); the learner logs it and reports "
        "it as `actor/micro_batch_tokens`. A number: that budget (e.g. the planned one of a GPU recipe, "
        "`rlvr-temp plan`). `null`: `micro_batch_size` responses per micro-batch, padded to the longest.",
    )
    share_prompts: bool = Field(
        True,
        description="Run each distinct prompt of a mini-batch once and let its responses attend to its cached "
        "keys / values (the gradient is the same, summed over the group; docs/loop.md). Off: every response "
        "recomputes its prompt. Not used with a learned-temperature head, FSDP2 or gradient checkpointing.",
    )

    @field_validator("micro_batch_tokens", mode="before")
    @classmethod
    def _budget(cls, value: object) -> object:
        if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("expected auto, a token count >= 1, or null")


class TrainerBase(Section):
    """The `trainer` keys every recipe kind shares (RL: :class:`TrainerConfig`; TGR:
    ``tgr_recipe.TGRTrainerConfig``)."""

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
    off_policy_steps: Literal[0, 1] = Field(
        0,
        description="1: generate step k+1's rollouts while the learner updates on step k (verl's one-step-off "
        "pipelining), then sync; the rollouts are one policy version stale (`train/staleness`) and importance "
        "correction (`algorithm.rollout_correction`) accounts for it. `split` layout only: a `colocated` run "
        "falls back to 0 with one line saying why. 0: synchronous (docs/loop.md).",
    )


class CheckpointConfig(Section):
    every: int = Field(0, ge=0, description="Save every N steps (0 = only at the end / on signal).")
    keep: int = Field(2, ge=1, description="Keep the last N checkpoints.")
