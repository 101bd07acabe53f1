"""The sections of a run's config that say how responses are sampled: ``rollout`` and ``temperature``.

Validated in the driver when a recipe loads (:mod:`rlvr_temp.config.schema` composes them into ``RunConfig``); the
rollout engines get ``rollout.engine`` typed, and the temperature strategy (rlvr_temp.temperature) is built from
``temperature``. Defaults follow the multi-temperature paper (Wu et al., arXiv 2510.08892) where it gives a value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rlvr_temp.config.cluster import EngineConfig
from rlvr_temp.config.recipe import Section
from rlvr_temp.temperature.control import CONTROLLERS, KNOBS, initial_knob, knob_bounds
from rlvr_temp.temperature.strategy import MODES

__all__ = [
    "ControlConfig",
    "LearnedConfig",
    "MixtureConfig",
    "RolloutConfig",
    "ScheduleConfig",
    "TemperatureConfig",
    "TokenRuleConfig",
]


def _registered(name: str, registry: dict[str, Any], what: str) -> str:
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; registered: {', '.join(sorted(registry))}")
    return name


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


class ControlConfig(Section):
    target: Literal["entropy", "informative_groups", "hot_entropy"] | None = Field(
        None,
        description='What the closed loop holds (docs/temperature.md, "Closed-loop control"): `entropy`, the mean '
        "entropy at T = 1 of the sampled tokens (`rollout/entropy_mean`); `informative_groups`, the share of groups "
        "whose rewards are not all equal (`train/informative_share`); `hot_entropy`, the mean entropy of the tokens "
        "sampled hot (token modes). None: no control, every temperature as configured.",
    )
    setpoint: float | None = Field(
        None, gt=0, description="The target's value; None: the first step's measurement (hold where the run starts)."
    )
    knob: Literal["base", "t_high", "hot_fraction", "mixture_spread"] = Field(
        "base",
        description="What the controller moves: `base`, the step's base temperature (every mode; it shifts the "
        "token rule's temperatures and a mixture's centre with it, and replaces the schedule); `t_high` or "
        "`hot_fraction`, the token rule's (token modes); `mixture_spread`, the offsets' increment d (mixture modes).",
    )
    controller: str = Field("pi", description="A controller registered in `rlvr_temp.temperature.control`.")
    kp: float = Field(
        0.2, ge=0, description="Proportional gain: knob units per unit of relative error (demo-tuned, docs)."
    )
    ki: float = Field(
        0.5, ge=0, description="Integral gain: knob units per unit of summed relative error (demo-tuned, docs)."
    )
    increasing: bool = Field(
        True, description="Whether the target rises with the knob (true for every target with `base` or `t_high`)."
    )
    min: float | None = Field(
        None,
        gt=0,
        description="Lower bound of the knob (None: base 0.3, t_high its t_low, hot_fraction 0.05, spread 0).",
    )
    max: float | None = Field(
        None, gt=0, description="Upper bound of the knob (None: base 2.0, t_high 3.0, hot_fraction 0.95, spread 0.5)."
    )
    max_change: float = Field(0.05, gt=0, description="Rate limit: the most the knob moves in one step.")
    warmup_steps: int = Field(0, ge=0, description="Steps measured before the controller acts.")

    @field_validator("controller")
    @classmethod
    def _registered(cls, name: str) -> str:
        return _registered(name, CONTROLLERS, "temperature controller")


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
    control: ControlConfig = Field(default_factory=ControlConfig)

    @field_validator("mode")
    @classmethod
    def _registered(cls, mode: str) -> str:
        return _registered(mode, MODES, "temperature mode")

    @model_validator(mode="after")
    def _control(self) -> TemperatureConfig:
        c = self.control
        if c.target is None:
            return self
        modes = KNOBS[c.knob]
        if modes is not None and self.mode not in modes:
            raise ValueError(f"control.knob {c.knob} needs temperature.mode in {modes}, not {self.mode!r}")
        if c.target == "hot_entropy" and self.mode not in ("token", "token+mixture"):
            raise ValueError(f"control.target hot_entropy needs a token mode, not {self.mode!r}")
        if c.knob == "base" and self.schedule.kind != "constant":
            raise ValueError("control.knob base replaces the schedule: set temperature.schedule.kind constant")
        if c.knob == "mixture_spread" and self.mixture.kind != "offsets":
            raise ValueError(
                "control.knob mixture_spread moves the offsets' step: set temperature.mixture.kind offsets"
            )
        lo, hi = knob_bounds(self)
        if c.knob == "t_high" and lo < self.token.t_low:
            raise ValueError(f"control.min ({lo}) must be >= token.t_low ({self.token.t_low}) for knob t_high")
        if c.knob == "hot_fraction" and not 0 < lo <= hi < 1:
            raise ValueError("control.min / max of hot_fraction must lie in (0, 1)")
        if not lo <= hi:
            raise ValueError(f"control.min ({lo}) must be <= control.max ({hi})")
        if not lo <= initial_knob(self) <= hi:
            raise ValueError(f"the knob's configured value {initial_knob(self)} lies outside [{lo}, {hi}]")
        return self
