"""Closed-loop temperature control: one knob of the active mode, adjusted every step to hold one measured target.

The driver measures the step's rollouts (:func:`measure`), the controller moves the knob, and the next step samples
with the strategy :func:`apply_knob` returns. Targets (``temperature.control.target``):

* ``entropy`` -- the mean policy entropy (at T = 1, as the logits processor records it) of the sampled tokens,
  ``rollout/entropy_mean``; EntroPIC (arXiv 2511.15248) holds it with a PI controller on the loss, AceReason picks
  the temperature that keeps it near 0.3;
* ``informative_groups`` -- the share of generated groups whose rewards are not all equal
  (``train/informative_share``): the groups GRPO learns from and DAPO's dynamic sampling keeps;
* ``hot_entropy`` -- the mean entropy of the tokens the token rule sampled hot (``rollout/hot_entropy_mean``).

Knobs (``temperature.control.knob``): ``base`` (every mode: the step's base temperature, which also shifts the token
rule's t_low / t_high and a mixture's centre), ``t_high`` (token modes), ``hot_fraction`` (token modes) and
``mixture_spread`` (the mixture offsets' increment d).

Controllers are registered like the temperature modes (:func:`register_controller`); ``pi`` is a
proportional-integral controller on the relative error ``e = (target - measured) / |target|`` with bounds, a rate
limit and conditional-integration anti-windup: the knob is ``u0 + s (kp e + ki sum(e))`` (``s = +1`` when the
target rises with the knob), clipped to ``max_change`` from the previous value and to ``[min, max]``; an error that
would push a saturated output further is not integrated, so the integral never winds up while the knob sits at a
bound. Its state (integral, knob, last terms) is a plain dict in checkpoints. docs/temperature.md,
"Closed-loop control", explains each target and knob.

This module reads the config's ``temperature`` section duck-typed and imports no config module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rlvr_temp.utils import register

__all__ = [
    "CONTROLLERS",
    "KNOBS",
    "KNOB_BOUNDS",
    "TARGETS",
    "Controller",
    "PIController",
    "apply_knob",
    "initial_knob",
    "knob_bounds",
    "make_controller",
    "measure",
    "register_controller",
]

#: target name -> the step metric it reads
TARGETS: dict[str, str] = {
    "entropy": "rollout/entropy_mean",
    "informative_groups": "train/informative_share",
    "hot_entropy": "rollout/hot_entropy_mean",
}
#: knob name -> the modes it applies to (None: every mode)
KNOBS: dict[str, tuple[str, ...] | None] = {
    "base": None,
    "t_high": ("token", "token+mixture"),
    "hot_fraction": ("token", "token+mixture"),
    "mixture_spread": ("mixture", "token+mixture"),
}

#: (min, max) of each knob when ``control.min`` / ``control.max`` are unset (None: the token rule's t_low)
KNOB_BOUNDS: dict[str, tuple[float | None, float]] = {
    "base": (0.3, 2.0),
    "t_high": (None, 3.0),
    "hot_fraction": (0.05, 0.95),
    "mixture_spread": (0.0, 0.5),
}

CONTROLLERS: dict[str, type[Controller]] = {}
"""Registry: ``temperature.control.controller`` name -> controller class."""


def register_controller(name: str) -> Callable[[type[Controller]], type[Controller]]:
    """Class decorator: make ``temperature.control.controller: <name>`` build this controller."""
    return register(CONTROLLERS, name, "temperature controller")


class Controller:
    """Base of the controllers: the knob's value, moved by :meth:`update` once per step from one measurement."""

    def __init__(self, cfg: Any, initial: float, bounds: tuple[float, float]) -> None:
        self.cfg = cfg
        self.lo, self.hi = bounds
        self.initial = float(initial)
        self.knob = float(initial)
        #: the target value; ``setpoint: null`` takes the first measurement (hold where the run starts)
        self.setpoint: float | None = None if cfg.setpoint is None else float(cfg.setpoint)

    def update(self, measured: float) -> float:
        """The knob for the next step, given this step's measured target."""
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        """``control/*`` metrics of the last update: the target, the knob for the next step (the driver adds
        ``control/knob``, the value this step sampled at, and the controller its measurement and terms)."""
        target = float("nan") if self.setpoint is None else self.setpoint
        return {"control/target": target, "control/next_knob": self.knob}

    def state_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "setpoint": self.setpoint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.knob = float(state["knob"])
        self.setpoint = state["setpoint"]


@register_controller("pi")
class PIController(Controller):
    """Proportional-integral control with bounds, a rate limit and conditional-integration anti-windup."""

    def __init__(self, cfg: Any, initial: float, bounds: tuple[float, float]) -> None:
        super().__init__(cfg, initial, bounds)
        self.integral = 0.0
        self.steps = 0
        self.last: dict[str, float] = {}

    def update(self, measured: float) -> float:
        c = self.cfg
        self.steps += 1
        if not math.isfinite(measured):  # nothing measured (e.g. no hot token): hold the knob, integrate nothing
            self.last = {"measured": float("nan"), "error": 0.0, "p": 0.0, "i": 0.0, "saturated": 0.0}
            return self.knob
        if self.setpoint is None:
            self.setpoint = float(measured)
        if self.steps <= c.warmup_steps or self.setpoint == 0:  # let the run settle before acting
            self.last = {"measured": measured, "error": 0.0, "p": 0.0, "i": 0.0, "saturated": 0.0}
            return self.knob
        sign = 1.0 if c.increasing else -1.0
        error = (self.setpoint - measured) / abs(self.setpoint)
        integral = self.integral + error
        raw = self.initial + sign * (c.kp * error + c.ki * integral)
        out = min(max(raw, self.knob - c.max_change), self.knob + c.max_change)  # rate limit
        out = min(max(out, self.lo), self.hi)  # bounds
        # anti-windup: while the output is held (bound or rate limit) in the direction the error pushes, the
        # error is not integrated; the integral keeps what it had and the knob leaves the bound as soon as the
        # error changes sign (no windup to unwind)
        saturated = out != raw
        if not (saturated and (raw - out) * sign * error > 0):
            self.integral = integral
        self.knob = out
        self.last = {
            "measured": measured,
            "error": error,
            "p": sign * c.kp * error,
            "i": sign * c.ki * self.integral,
            "saturated": float(saturated),
        }
        return out

    def metrics(self) -> dict[str, float]:
        return super().metrics() | {f"control/{k}": v for k, v in self.last.items()}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"integral": self.integral, "steps": self.steps, "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.integral = float(state["integral"])
        self.steps = int(state["steps"])
        self.last = dict(state["last"])


def initial_knob(tcfg: Any) -> float:
    """The knob's configured value in a ``temperature`` section (the controller starts there)."""
    knob = tcfg.control.knob
    if knob == "base":
        return float(tcfg.base)
    if knob == "t_high":
        return float(tcfg.token.t_high)
    if knob == "hot_fraction":
        return float(tcfg.token.hot_fraction)
    if knob == "mixture_spread":
        return float(tcfg.mixture.step)
    raise ValueError(f"unknown control knob {knob!r}; known: {', '.join(KNOBS)}")


def knob_bounds(tcfg: Any) -> tuple[float, float]:
    """The knob's ``(min, max)``: ``control.min`` / ``control.max``, else :data:`KNOB_BOUNDS`."""
    c = tcfg.control
    lo, hi = KNOB_BOUNDS[c.knob]
    lo = c.min if c.min is not None else (tcfg.token.t_low if lo is None else lo)
    return float(lo), float(c.max if c.max is not None else hi)


def make_controller(tcfg: Any) -> Controller | None:
    """The controller of a ``temperature`` section, or None when ``control.target`` is unset."""
    c = tcfg.control
    if c.target is None:
        return None
    if c.controller not in CONTROLLERS:
        raise ValueError(f"unknown temperature controller {c.controller!r}; known: {', '.join(sorted(CONTROLLERS))}")
    return CONTROLLERS[c.controller](c, initial_knob(tcfg), knob_bounds(tcfg))


def apply_knob(tcfg: Any, knob: str, value: float) -> Any:
    """A copy of the ``temperature`` section with the knob at ``value`` (``base`` is not written here: the driver
    passes it as the step's base temperature, so the token rule and a mixture shift around it)."""
    if knob == "t_high":
        return tcfg.model_copy(update={"token": tcfg.token.model_copy(update={"t_high": value})})
    if knob == "hot_fraction":
        return tcfg.model_copy(update={"token": tcfg.token.model_copy(update={"hot_fraction": value})})
    if knob == "mixture_spread":
        return tcfg.model_copy(update={"mixture": tcfg.mixture.model_copy(update={"step": value})})
    return tcfg


def measure(target: str, metrics: dict[str, float]) -> float:
    """The target's value in a step's metrics (nan when the step has none, e.g. no hot token)."""
    return float(metrics.get(TARGETS[target], float("nan")))
