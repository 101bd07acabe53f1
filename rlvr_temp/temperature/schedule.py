"""Schedules of the base sampling temperature over training steps (see docs/temperature.md).

Wu et al. (arXiv 2510.08892) leave open how the temperature should move during training (their open
question 2) and try a linear ramp (1.2 -> 1.4 over 300 steps) and periodic raises (+0.1 every 50 steps). A
schedule moves the *base* temperature; rollout mixtures and the token rule apply around it.

Schedules are small immutable objects with ``value(step) -> float`` (also callable); ``step`` counts training
steps from 0. They are registered by name in :data:`SCHEDULES` (verl style) and built with
:func:`make_schedule` (``make_schedule("linear", start=1.2, end=1.4, steps=300)``). New kinds can be added
with the :func:`register_schedule` decorator. Every value must stay > 0: construction checks what it can, and
``value`` raises :class:`ValueError` if a schedule would go to or below 0 (e.g. a negative ``spike``
increment).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rlvr_temp.utils import register

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "CosineSchedule",
    "LinearSchedule",
    "Schedule",
    "SpikeSchedule",
    "make_schedule",
    "register_schedule",
]

_DECIMALS = 10


def _positive(name: str, value: float) -> float:
    if _finite(name, value) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class Schedule:
    """Base class: a base temperature as a function of the training step."""

    name = "schedule"

    def _value(self, step: int) -> float:
        raise NotImplementedError

    def value(self, step: int) -> float:
        """The temperature at training step ``step`` (>= 0), rounded to 10 decimals; always > 0."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"schedule step must be an integer >= 0, got {step!r}")
        out = round(self._value(step), _DECIMALS) + 0.0
        if not math.isfinite(out) or out <= 0:
            raise ValueError(f"{self!r} gives temperature {out} at step {step}; temperatures must be > 0")
        return out

    __call__ = value

    def config(self) -> dict[str, Any]:
        """Name and arguments: ``make_schedule(**s.config())`` rebuilds the schedule."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.config().items())))


SCHEDULES: dict[str, type[Schedule]] = {}
"""Registry: schedule name -> class."""


def register_schedule(name: str) -> Callable[[type[Schedule]], type[Schedule]]:
    """Class decorator adding a :class:`Schedule` subclass to :data:`SCHEDULES` under ``name``."""
    return register(SCHEDULES, name, "schedule")


@register_schedule("constant")
class ConstantSchedule(Schedule):
    """The same temperature at every step (the paper's main runs)."""

    def __init__(self, start: float = 1.0) -> None:
        self.start = _positive("start", start)

    def _value(self, step: int) -> float:
        return self.start


class _RampSchedule(Schedule):
    """A move from ``start`` to ``end`` over ``steps`` steps, then held at ``end`` (the shape is the subclass')."""

    def __init__(self, start: float = 1.2, end: float = 1.4, steps: int = 300) -> None:
        self.start = _positive("start", start)
        self.end = _positive("end", end)
        self.steps = _count("steps", steps, 1)


@register_schedule("linear")
class LinearSchedule(_RampSchedule):
    """``start`` -> ``end`` linearly over ``steps`` steps, then held at ``end``.

    The authors' run: ``start=1.2, end=1.4, steps=300`` (arXiv 2510.08892).
    """

    def _value(self, step: int) -> float:
        frac = min(step, self.steps) / self.steps
        return self.start + (self.end - self.start) * frac


@register_schedule("cosine")
class CosineSchedule(_RampSchedule):
    """``start`` -> ``end`` along half a cosine over ``steps`` steps (flat at both ends), then ``end``."""

    def _value(self, step: int) -> float:
        frac = min(step, self.steps) / self.steps
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * frac))


@register_schedule("spike")
class SpikeSchedule(Schedule):
    """Raise the temperature by ``increment`` every ``every`` steps (the authors: +0.1 every 50 steps).

    By default the raises accumulate (a staircase: ``start + increment * (step // every)``), optionally capped
    at ``max_value``. With ``duration`` set, each raise is a transient spike instead: the temperature is
    ``start + increment`` for ``duration`` steps starting at every positive multiple of ``every``, else
    ``start``.
    """

    def __init__(
        self,
        start: float = 1.0,
        increment: float = 0.1,
        every: int = 50,
        max_value: float | None = None,
        duration: int | None = None,
    ) -> None:
        self.start = _positive("start", start)
        self.increment = _finite("increment", increment)
        self.every = _count("every", every, 1)
        self.max_value = None if max_value is None else _positive("max_value", max_value)
        self.duration = None if duration is None else _count("duration", duration, 1)
        if self.duration is not None and self.duration > self.every:
            raise ValueError(f"spike duration {self.duration} must not exceed its period every={self.every}")

    def _value(self, step: int) -> float:
        if self.duration is None:
            out = self.start + self.increment * (step // self.every)
        else:
            spiking = step >= self.every and step % self.every < self.duration
            out = self.start + (self.increment if spiking else 0.0)
        if self.max_value is not None:
            out = min(out, self.max_value)
        return out


def make_schedule(name: str = "constant", **kwargs: Any) -> Schedule:
    """Build the schedule registered as ``name`` (``constant``, ``linear``, ``spike``, ``cosine``).

    ``value`` is accepted as an alias of ``start``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown temperature schedule {name!r}; known: {sorted(SCHEDULES)}")
    if "value" in kwargs:
        if "start" in kwargs:
            raise ValueError("give either 'value' or 'start', not both")
        kwargs["start"] = kwargs.pop("value")
    try:
        return SCHEDULES[name](**kwargs)
    except TypeError as exc:  # unexpected / missing keyword
        raise ValueError(f"bad arguments for the {name!r} schedule: {exc}") from None
