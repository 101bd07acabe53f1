"""Rollout-level temperature mixtures: how the ``G`` responses to one prompt are spread over temperatures.

Wu et al. (arXiv 2510.08892; docs/temperature.md) sample the group of one prompt at several temperatures around the base
temperature with the offsets ``[0, 0, -d, +d, -2d, +2d, ...]`` (``d = 0.1``) truncated to ``G`` -- for
``G = 8`` and ``T = 1.0``: ``[1.0, 1.0, 0.9, 1.1, 0.8, 1.2, 0.7, 1.3]``. An explicit ``{temperature: count}``
mixture (e.g. ``{1.0: 4, 1.2: 4}``) is also supported. Advantages stay normalised over the whole group.

Temperatures are rounded to 10 decimals, so ``1.0 + 0.3`` is ``1.3`` and not ``1.3000000000000003``.
Every resulting temperature must be > 0 (a :class:`ValueError` says which one is not).

Entry point: :func:`rollout_temperatures` with ``spec``

* ``None`` / ``"fixed"``: every response at the base temperature;
* ``"offsets"``: the authors' offsets around the base (step ``offset_step``);
* a mapping ``{temperature: count}`` (keys may be strings, as YAML / JSON give them) or a sequence of
  ``(temperature, count)`` pairs: **absolute** temperatures, in the order given. Pass ``nominal_base`` to make
  them move with a schedule: each is then shifted by ``base_temperature - nominal_base`` (e.g. ``{1.0: 4,
  1.2: 4}`` with ``nominal_base=1.0`` and a scheduled base of 1.1 gives ``{1.1: 4, 1.3: 4}``);
* a sequence of ``G`` plain numbers: absolute temperatures, one per response (same ``nominal_base`` rule).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "authors_offsets",
    "expand_counts",
    "group_by_temperature",
    "offset_pattern",
    "rollout_temperatures",
]

_DECIMALS = 10


def _round(value: float) -> float:
    out = round(float(value), _DECIMALS)
    return out + 0.0  # turn -0.0 into 0.0


def _check_group_size(group_size: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    return group_size


def _check_positive(temps: Iterable[float], what: str) -> list[float]:
    out = list(temps)
    for i, t in enumerate(out):
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"{what}: temperature #{i} is {t}; temperatures must be finite numbers > 0")
    return out


def offset_pattern(group_size: int, step: float = 0.1) -> list[float]:
    """The authors' offsets ``[0, 0, -step, +step, -2 step, +2 step, ...]`` truncated to ``group_size``.

    arXiv 2510.08892 (rollout-level mixture; ``step = 0.1``).
    """
    _check_group_size(group_size)
    if not math.isfinite(step) or step <= 0:
        raise ValueError(f"offset step must be a finite number > 0, got {step}")
    out: list[float] = []
    k = 0
    while len(out) < group_size:
        if k == 0:
            out.extend([0.0, 0.0])
        else:
            out.extend([_round(-k * step), _round(k * step)])
        k += 1
    return out[:group_size]


def authors_offsets(group_size: int, base: float, step: float = 0.1) -> list[float]:
    """Temperatures ``base + offset`` for the authors' offsets (arXiv 2510.08892), rounded, all checked > 0.

    ``authors_offsets(8, 1.0) == [1.0, 1.0, 0.9, 1.1, 0.8, 1.2, 0.7, 1.3]``.
    """
    temps = [_round(base + off) for off in offset_pattern(group_size, step)]
    return _check_positive(temps, f"offsets around base {base} with step {step} for group size {group_size}")


def expand_counts(counts: Mapping[Any, int] | Sequence[tuple[Any, int]], group_size: int | None = None) -> list[float]:
    """``{1.0: 4, 1.2: 4}`` (or ``[(1.0, 4), (1.2, 4)]``) -> ``[1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2, 1.2]``.

    Keys may be numbers or numeric strings. Counts must be integers >= 0 and, with ``group_size``, sum to
    it.
    """
    items = list(counts.items()) if isinstance(counts, Mapping) else list(counts)
    if not items:
        raise ValueError("an explicit temperature mixture needs at least one {temperature: count} entry")
    out: list[float] = []
    for entry in items:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f"mixture entry {entry!r} is not a (temperature, count) pair")
        key, count = entry
        try:
            temp = float(key)
        except (TypeError, ValueError):
            raise ValueError(f"mixture temperature {key!r} is not a number") from None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"mixture count for temperature {key!r} must be an integer >= 0, got {count!r}")
        out.extend([_round(temp)] * count)
    if group_size is not None and len(out) != group_size:
        raise ValueError(f"mixture counts sum to {len(out)}, but the group size is {group_size}")
    return _check_positive(out, "explicit mixture")


def rollout_temperatures(
    group_size: int,
    base_temperature: float,
    spec: str | Mapping[Any, int] | Sequence[Any] | None = None,
    *,
    offset_step: float = 0.1,
    nominal_base: float | None = None,
) -> list[float]:
    """Temperatures of the ``group_size`` responses to one prompt (see the module docstring and docs/temperature.md).

    Args:
        group_size: ``G``, responses per prompt.
        base_temperature: the (possibly scheduled) base temperature.
        spec: ``None`` / ``"fixed"`` (all at the base), ``"offsets"`` (authors' offsets around the base), a
            ``{temperature: count}`` mapping or ``(temperature, count)`` pairs, or ``G`` plain temperatures.
        offset_step: the offset increment of ``"offsets"`` (paper: 0.1).
        nominal_base: for explicit temperatures only: if given, shift them by ``base_temperature -
            nominal_base`` (so that a schedule moves them); if ``None`` they are absolute.

    Raises:
        ValueError: bad group size or spec, counts not summing to ``G``, or a temperature <= 0.
    """
    _check_group_size(group_size)
    if not isinstance(base_temperature, (int, float)) or not math.isfinite(base_temperature):
        raise ValueError(f"base_temperature must be a finite number, got {base_temperature!r}")
    if spec is None or (isinstance(spec, str) and spec in ("fixed", "constant", "none")):
        return _check_positive([_round(base_temperature)] * group_size, "fixed temperature")
    if isinstance(spec, str):
        if spec == "offsets":
            return authors_offsets(group_size, base_temperature, offset_step)
        raise ValueError(f"unknown mixture spec {spec!r}: use None, 'fixed', 'offsets' or {{temp: count}}")
    pairs = isinstance(spec, Sequence) and bool(spec) and all(isinstance(e, (tuple, list)) for e in spec)
    if isinstance(spec, Mapping) or pairs:
        temps = expand_counts(spec, group_size)
    elif isinstance(spec, Sequence):
        if len(spec) != group_size:
            raise ValueError(f"explicit temperature list has {len(spec)} entries, group size is {group_size}")
        try:
            temps = [_round(float(t)) for t in spec]
        except (TypeError, ValueError):
            raise ValueError(f"explicit temperature list {list(spec)!r} holds a non-number") from None
    else:
        raise ValueError(f"unsupported mixture spec {spec!r}")
    if nominal_base is not None:
        shift = float(base_temperature) - float(nominal_base)
        temps = [_round(t + shift) for t in temps]
    return _check_positive(temps, "explicit mixture" + ("" if nominal_base is None else " (shifted)"))


def group_by_temperature(temperatures: Sequence[float]) -> dict[float, list[int]]:
    """Indices of the responses at each temperature (for per-temperature accuracy / length / entropy)."""
    groups: dict[float, list[int]] = {}
    for i, t in enumerate(temperatures):
        groups.setdefault(_round(t), []).append(i)
    return groups
