"""One object per temperature mode that answers everything mode-specific, for every process of a run.

``make_strategy(cfg.temperature)`` builds the :class:`TemperatureStrategy` registered under ``cfg.temperature.mode``.
The driver, the rollout workers and the learner ask it, and nothing else, about temperatures:

* :meth:`~TemperatureStrategy.base_temperature` -- the scheduled base temperature ``T_s`` of a step
  (``docs/temperature.md``, "Schedules");
* :meth:`~TemperatureStrategy.group_temperatures` -- the rollout-level temperature of each of a prompt's ``G``
  responses (all ``T_s``, or a mixture around it: "Rollout-level mixtures");
* :meth:`~TemperatureStrategy.request_spec` -- what one vLLM request carries in ``extra_args["rlvr_temp"]`` for the
  rlvr_temp logits processor (its rollout temperature, the token rule's settings, the learned head's range);
* :meth:`~TemperatureStrategy.engine_settings` -- what the engine itself must be built with (the TTM head);
* :meth:`~TemperatureStrategy.learner_temperatures` / :meth:`~TemperatureStrategy.head_temperatures` -- the
  per-token temperatures at which the learner recomputes log-probs (on- or off-policy, "On-policy vs off-policy");
* :meth:`~TemperatureStrategy.hot_bounds` -- the cold / hot temperatures of a step, for the hot-token metric.

A new mode is a subclass registered with :func:`register_mode` (the config accepts any registered name), so adding
one touches ``temperature/`` and, for new settings, the config schema -- nothing else.

This module reads the config's ``temperature`` section duck-typed (``mode``, ``base``, ``logprobs``, ``token``,
``mixture``, ``schedule``, ``learned``) and does not import :mod:`rlvr_temp.config.schema`, which imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from rlvr_temp.utils import register

from . import request
from .mixture import rollout_temperatures
from .schedule import Schedule, make_schedule
from .ttm import to_sampling_range

__all__ = ["MODES", "TemperatureStrategy", "make_strategy", "register_mode"]

MODES: dict[str, type[TemperatureStrategy]] = {}
"""Registry: ``temperature.mode`` name -> strategy class."""


def register_mode(name: str) -> Callable[[type[TemperatureStrategy]], type[TemperatureStrategy]]:
    """Class decorator: make ``temperature.mode: <name>`` build this strategy."""
    return register(MODES, name, "temperature mode")


def make_strategy(cfg: Any) -> TemperatureStrategy:
    """The strategy of ``cfg.mode`` built from the config's ``temperature`` section."""
    if cfg.mode not in MODES:
        raise ValueError(f"unknown temperature.mode {cfg.mode!r}; known: {', '.join(sorted(MODES))}")
    return MODES[cfg.mode](cfg)


def _schedule(cfg: Any) -> Schedule:
    s = cfg.schedule
    if s.kind == "constant":
        return make_schedule("constant", start=cfg.base)
    if s.kind == "spike":
        return make_schedule("spike", start=cfg.base, every=s.every, increment=s.increment)
    return make_schedule(s.kind, start=cfg.base, end=s.end, steps=s.steps)


class TemperatureStrategy:
    """Fixed temperature: every response and every token at the scheduled base ``T_s``. The base of all modes.

    Picklable (plain attributes), so one is built per process from the same config section.
    """

    name: ClassVar[str] = "fixed"
    #: whether responses of one prompt differ in temperature (the rollout-level mixture)
    mixture: ClassVar[bool] = False
    #: whether the processor applies the entropy rule (``temperature.token``) to this mode's requests
    token_rule: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.schedule = _schedule(cfg)

    # ------------------------------------------------------------------------------------------ driver
    def base_temperature(self, step: int) -> float:
        """The scheduled base temperature ``T_s`` of training step ``step`` (0-based)."""
        return float(self.schedule.value(step))

    def group_temperatures(self, base_t: float, group_size: int) -> list[float]:
        """Rollout-level temperature of each of one prompt's ``group_size`` responses at base ``base_t``."""
        if not self.mixture:
            return rollout_temperatures(group_size, base_t, None)
        mix = self.cfg.mixture
        if mix.kind == "offsets":
            return rollout_temperatures(group_size, base_t, "offsets", offset_step=mix.step)
        # explicit temperatures are written for the configured base; a schedule moves them with it
        return rollout_temperatures(group_size, base_t, mix.counts, nominal_base=self.cfg.base)

    def hot_bounds(self, base_t: float) -> tuple[float, float] | None:
        """(cold, hot) temperature of a response at ``base_t`` in per-token modes, else None (no hot-token metric)."""
        return None

    # ------------------------------------------------------------------------------------------ engines
    def engine_settings(self) -> dict[str, Any] | None:
        """Settings the engine's model must be built with (the TTM head's, in ``learned`` mode), else None."""
        return None

    def request_spec(self, temperature: float) -> dict[str, Any]:
        """The processor's part of one request (``extra_args["rlvr_temp"]`` without its ``uid``): the response's
        rollout temperature and, in per-token modes, the rule the processor applies on top of it (the format:
        :mod:`rlvr_temp.temperature.request`)."""
        return request.request_spec(temperature)

    # ------------------------------------------------------------------------------------------ learner
    @property
    def uses_head(self) -> bool:
        """Whether the learner's temperatures come from its TTM head (``learned`` mode, on-policy)."""
        return False

    def learner_temperatures(self, recorded: torch.Tensor, base_t: float) -> torch.Tensor | float:
        """Per-token temperatures of the learner's log-probs: the ones the rollout recorded (``on_policy``), or the
        step's base temperature (``off_policy`` ablation)."""
        return recorded if self.cfg.logprobs == "on_policy" else float(base_t)

    def head_temperatures(self, head_t: torch.Tensor, response_t: torch.Tensor) -> torch.Tensor:
        """``learned`` mode: the TTM head's output ``[B, L]`` mapped to sampling temperatures (in the graph)."""
        raise NotImplementedError(f"temperature mode {self.name!r} has no TTM head")


@register_mode("fixed")
class FixedTemperature(TemperatureStrategy):
    """Every token at the scheduled base temperature (the paper's baseline arm)."""


@register_mode("mixture")
class MixtureTemperature(TemperatureStrategy):
    """A prompt's responses spread over temperatures around the base (authors' offsets or explicit counts)."""

    mixture = True


@register_mode("token")
class TokenTemperature(TemperatureStrategy):
    """The entropy rule inside vLLM: hot tokens at ``t_high``, cold ones at ``t_low``, both shifted by the response's
    rollout temperature minus the configured base (so a schedule or a mixture moves them)."""

    token_rule = True

    def hot_bounds(self, base_t: float) -> tuple[float, float]:
        shift = base_t - self.cfg.base
        return self.cfg.token.t_low + shift, self.cfg.token.t_high + shift

    def request_spec(self, temperature: float) -> dict[str, Any]:
        t = self.cfg.token
        # The rule's own temperatures stay at their configured values; the request temperature carries the
        # schedule's and the mixture's shift. The processor keys entropy windows by (scope, window, warmup_tokens)
        # only, so one window lives through a whole run whatever the schedule does; hot_fraction sets its rank.
        rule = request.token_rule_spec(
            t_low=t.t_low,
            t_high=t.t_high,
            base_temperature=self.cfg.base,
            hot_fraction=t.hot_fraction,
            window=t.window,
            scope=t.scope,
            warmup_tokens=t.warmup_tokens,
        )
        return request.request_spec(temperature, token_rule=rule)


@register_mode("token+mixture")
class TokenMixtureTemperature(TokenTemperature):
    """The token rule around each response's mixture temperature."""

    mixture = True


@register_mode("learned")
class LearnedTemperature(TemperatureStrategy):
    """Every token at the TTM head's output mapped into ``[t_low, t_high]`` (``docs/tgr.md``), shifted by the
    response's rollout temperature minus the configured base; the policy gradient trains the head."""

    def engine_settings(self) -> dict[str, Any]:
        lc = self.cfg.learned
        return {"heads": lc.heads, "t_min": lc.t_min, "t_max": lc.t_max, "init_temperature": lc.init_temperature}

    def hot_bounds(self, base_t: float) -> tuple[float, float] | None:
        return None

    def request_spec(self, temperature: float) -> dict[str, Any]:
        lc = self.cfg.learned
        learned = request.learned_spec(
            t_low=lc.t_low, t_high=lc.t_high, t_min=lc.t_min, t_max=lc.t_max, base=self.cfg.base
        )
        return request.request_spec(temperature, learned=learned)

    @property
    def uses_head(self) -> bool:
        return self.cfg.logprobs == "on_policy"

    def head_temperatures(self, head_t: torch.Tensor, response_t: torch.Tensor) -> torch.Tensor:
        lc = self.cfg.learned
        mapped = to_sampling_range(head_t, lc.t_low, lc.t_high, lc.t_min, lc.t_max)
        # [B, 1] rollout shift of each response, as the processor adds it at sampling time
        return (mapped + (response_t - self.cfg.base).unsqueeze(-1)).clamp(min=request.MIN_TEMPERATURE)
