"""The one wire format of a request's temperature settings, from the driver's strategy to the engine's processor.

A vLLM request takes part in the rlvr_temp logits processor when its ``SamplingParams.extra_args[EXTRA_KEY]``
holds::

    {"uid": str,                  # key under which the token temperatures are recorded
     "temperature": float,        # the response's rollout-level temperature T_req
     "token_rule": None | {...},  # kwargs of TokenTemperatureRule (token modes): RULE_KEYS
     "learned": None | {...},     # the TTM head's sampling range (learned mode): LEARNED_KEYS
     "top_p": float, "top_k": int}  # optional truncation of the tempered distribution (default: none)

Written only through this module: a temperature strategy's ``request_spec`` builds the spec with
:func:`request_spec`, :func:`token_rule_spec` and :func:`learned_spec`; the rollout worker adds the truncation
(:func:`with_truncation`), checks it once (:func:`check_spec`) and wraps it per request (:func:`extra_args`).
Read only through it: the processors validate with :func:`parse_request` and hold :class:`RequestSettings`. Entropy
windows are keyed by ``(scope, window, warmup_tokens)`` alone (:func:`window_key`: never by temperatures nor by the
hot fraction, so one window serves a whole run whatever its schedule, mixture or a controller of ``t_high`` /
``hot_fraction`` does; a request's ``hot_fraction`` sets its window's quantile rank, the window's contents stay). The
processors' checkpoint (:func:`rules_state`, :func:`load_rules`) is one format for V1 and V2, so a checkpoint written
by one loads into the other; it carries each window's current hot fraction.

Left out: versioning the format (the driver and the engines always run the same checkout).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

from .logits import MIN_TEMPERATURE
from .token_rule import TokenTemperatureRule

__all__ = [
    "EXTRA_KEY",
    "LEARNED_KEYS",
    "MIN_TEMPERATURE",
    "RULE_KEYS",
    "RequestSettings",
    "check_spec",
    "extra_args",
    "learned_spec",
    "load_rules",
    "parse_request",
    "request_spec",
    "rule_temperatures",
    "rules_state",
    "token_rule_spec",
    "window_key",
    "with_truncation",
]

EXTRA_KEY = "rlvr_temp"
"""The key of ``SamplingParams.extra_args`` that holds a request's spec."""
RULE_KEYS = frozenset({"t_low", "t_high", "hot_fraction", "window", "scope", "base_temperature", "warmup_tokens"})
LEARNED_KEYS = frozenset({"t_low", "t_high", "t_min", "t_max", "base"})
# what an entropy window's identity depends on (its hot fraction is settable: TokenTemperatureRule.set_hot_fraction)
_WINDOW_KEYS = ("scope", "window", "warmup_tokens")
_RULE_DEFAULTS = {k: p.default for k, p in inspect.signature(TokenTemperatureRule).parameters.items()}
# token rules already validated (keys carry the value types, so that e.g. window=True never matches window=1):
# vLLM's validate_params and the processors parse every request, and building a rule allocates its whole window
_VALID_RULES: set[tuple] = set()
_VALID_RULES_MAX = 1024


# ------------------------------------------------------------------------------------------ writing
def token_rule_spec(
    *,
    t_low: float,
    t_high: float,
    base_temperature: float,
    hot_fraction: float,
    window: int,
    scope: str,
    warmup_tokens: int,
) -> dict[str, Any]:
    """The ``token_rule`` part of a spec: the :class:`TokenTemperatureRule` arguments."""
    return {
        "t_low": t_low,
        "t_high": t_high,
        "base_temperature": base_temperature,
        "hot_fraction": hot_fraction,
        "window": window,
        "scope": scope,
        "warmup_tokens": warmup_tokens,
    }


def learned_spec(*, t_low: float, t_high: float, t_min: float, t_max: float, base: float) -> dict[str, Any]:
    """The ``learned`` part of a spec: the head's output range ``[t_min, t_max]`` is mapped onto
    ``[t_low, t_high]`` and shifted by ``T_req - base``."""
    return {"t_low": t_low, "t_high": t_high, "t_min": t_min, "t_max": t_max, "base": base}


def request_spec(
    temperature: float, *, token_rule: dict[str, Any] | None = None, learned: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A request's spec without its uid and truncation: what a temperature strategy returns."""
    spec: dict[str, Any] = {"temperature": float(temperature)}
    if token_rule is not None:
        spec["token_rule"] = token_rule
    if learned is not None:
        spec["learned"] = learned
    return spec


def with_truncation(spec: dict[str, Any], top_p: float, top_k: int) -> dict[str, Any]:
    """``spec`` with the top-p / top-k the processor applies after the temperature (1.0 / -1: none)."""
    return {**spec, "top_p": top_p, "top_k": top_k}


def extra_args(uid: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``SamplingParams.extra_args`` of the request ``uid`` with ``spec``."""
    return {EXTRA_KEY: {"uid": uid, **spec}}


def check_spec(spec: dict[str, Any]) -> None:
    """Raise ValueError where the processor would refuse ``spec`` (before any request of it runs)."""
    parse_request(extra_args("", spec))


# ------------------------------------------------------------------------------------------ reading
def _check_rule(rule: Any) -> None:
    if not isinstance(rule, dict):
        raise ValueError("token_rule must be a dict of TokenTemperatureRule arguments")
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise ValueError(f"token_rule: unknown keys {sorted(unknown)}")
    try:
        key: tuple | None = tuple(sorted((k, type(v).__name__, v) for k, v in rule.items()))
        seen = key in _VALID_RULES
    except TypeError:  # an unhashable value: validate it every time (the rule rejects it)
        key, seen = None, False
    if not seen:
        TokenTemperatureRule(**rule)  # raises ValueError on bad values
        if key is not None:
            if len(_VALID_RULES) >= _VALID_RULES_MAX:
                _VALID_RULES.clear()
            _VALID_RULES.add(key)


def _check_learned(v: Any) -> None:
    if not isinstance(v, dict) or set(v) != LEARNED_KEYS:
        raise ValueError(f"learned must be a dict with keys {sorted(LEARNED_KEYS)}")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v.values()):
        raise ValueError(f"learned: values must be finite numbers, got {v}")
    if not (0 < v["t_low"] <= v["t_high"] and v["t_min"] < v["t_max"] and v["base"] > 0):
        raise ValueError(f"learned: need 0 < t_low <= t_high, t_min < t_max, base > 0, got {v}")


def parse_request(extra_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate the ``rlvr_temp`` part of a request's extra_args; None when the request does not take part."""
    if not extra_args or EXTRA_KEY not in extra_args:
        return None
    spec = extra_args[EXTRA_KEY]
    if not isinstance(spec, dict) or "uid" not in spec:
        raise ValueError(f"extra_args[{EXTRA_KEY!r}] must be a dict with a 'uid'")
    t = spec.get("temperature", 1.0)
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"rollout temperature must be a finite number > 0, got {t!r}")
    top_p, top_k = spec.get("top_p", 1.0), spec.get("top_k", -1)
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool):
        raise ValueError(f"top_k must be an integer (-1 or 0: off), got {top_k!r}")
    rule = spec.get("token_rule")
    if rule is not None:
        _check_rule(rule)
    if spec.get("learned") is not None:
        if rule is not None:
            raise ValueError("token_rule and learned are exclusive")
        _check_learned(spec["learned"])
    return spec


def window_key(rule: dict[str, Any]) -> tuple:
    """The key of a token rule's entropy window: ``(scope, window, warmup_tokens)`` (the rule's defaults where the
    spec omits one), neither its temperatures nor its hot fraction (which sets the window's rank:
    ``RequestSettings.hot_fraction``)."""
    return tuple((k, rule.get(k, _RULE_DEFAULTS[k])) for k in _WINDOW_KEYS)


def rule_temperatures(rule: dict[str, Any]) -> tuple[float, float, float]:
    """A token rule's ``t_low``, ``t_high``, ``base_temperature`` (the rule's defaults where the spec omits one)."""
    return tuple(float(rule.get(k, _RULE_DEFAULTS[k])) for k in ("t_low", "t_high", "base_temperature"))  # type: ignore[return-value]


@dataclass
class RequestSettings:
    """One request's settings as the processors use them, read from a spec :func:`parse_request` accepted."""

    uid: str
    t_req: float  # the rollout temperature
    rule: dict[str, Any] | None = None  # the token rule's kwargs
    key: tuple | None = None  # window_key(rule): the entropy window the rule steps
    rule_temps: tuple[float, float, float] | None = None  # rule_temperatures(rule)
    hot_fraction: float | None = None  # the rule's hot fraction: the rank its window takes while the request runs
    top_p: float = 1.0  # nucleus / top-k truncation of the tempered distribution
    top_k: int = -1
    learned: tuple[float, float, float, float, float] | None = None  # t_low, t_high, t_min, t_max, T_req - base

    @classmethod
    def of(cls, spec: dict[str, Any]) -> RequestSettings:
        t_req = float(spec.get("temperature", 1.0))
        out = cls(spec["uid"], t_req, top_p=float(spec.get("top_p", 1.0)), top_k=int(spec.get("top_k", -1)))
        rule = spec.get("token_rule")
        if rule:  # an empty rule is no rule
            out.rule, out.key, out.rule_temps = rule, window_key(rule), rule_temperatures(rule)
            out.hot_fraction = float(rule.get("hot_fraction", _RULE_DEFAULTS["hot_fraction"]))
        lv = spec.get("learned")
        if lv is not None:
            out.learned = (lv["t_low"], lv["t_high"], lv["t_min"], lv["t_max"], t_req - lv["base"])
        return out


# ------------------------------------------------------------------------------------------ checkpoints
def rules_state(rules: dict[tuple, TokenTemperatureRule]) -> dict[str, Any]:
    """The processors' checkpoint format (V1 and V2 alike): each window key's rule settings and window."""
    return {"rules": {repr(k): (r.config(), r.state_dict()) for k, r in rules.items()}}


def load_rules(state: dict[str, Any]) -> dict[tuple, TokenTemperatureRule]:
    """The rules of a :func:`rules_state`, keyed by window key, each with its saved hot fraction. (A checkpoint written
    when windows were also keyed by hot fraction may hold several rules of one key: the last one wins.)"""
    out = {}
    for kwargs, rule_state in state.get("rules", {}).values():
        rule = TokenTemperatureRule(**kwargs)
        rule.load_state_dict(rule_state)
        out[window_key(kwargs)] = rule
    return out
