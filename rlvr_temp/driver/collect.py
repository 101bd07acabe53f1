"""Phases 1-2 of a training step in the driver: the step's sampling settings (schedule, or the temperature
controller's knob), generation on the rollout workers, verification, DAPO's dynamic sampling, the rollout metrics
and the controller's update -- one :class:`Collected` per step.

:class:`~rlvr_temp.driver.trainer.Trainer` calls :func:`collect` once per step: synchronously at the start of the
step, or (``trainer.off_policy_steps: 1``) for step k+1 while the learner updates on step k. Either way the steps
are collected in order, so the controller sees the same sequence of measurements, and a run resumed from a
checkpoint (which holds the collection made ahead) continues bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from rlvr_temp.batch import Groups, select_groups, write_rollout_dump
from rlvr_temp.metrics import rollout_metrics
from rlvr_temp.temperature import TemperatureStrategy, make_strategy
from rlvr_temp.temperature.control import apply_knob, measure
from rlvr_temp.utils import derive_seed, timed

log = logging.getLogger("rlvr_temp.driver.collect")

__all__ = ["Collected", "collect", "overlaps", "sampling"]


@dataclass
class Collected:
    """One step's rollouts, scored and selected (phases 1-2), with the metrics of their collection."""

    step: int
    base_t: float
    kept: Groups
    policy_version: int  # learner updates the engines held when these were sampled
    metrics: dict[str, float] = field(default_factory=dict)


def overlaps(cfg: Any) -> bool:
    """Whether step k+1 is collected while the learner updates on step k: ``trainer.off_policy_steps: 1`` in the
    ``split`` layout. A ``colocated`` run goes synchronously, and says so in one line."""
    if cfg.trainer.off_policy_steps and cfg.resources.layout != "split":
        log.warning(
            "trainer.off_policy_steps 1 runs synchronously: in the colocated layout engines and learner share "
            "their devices (and sleep in turn), so generation cannot overlap the update (resources.layout split)"
        )
        return False
    return cfg.trainer.off_policy_steps == 1


def sampling(trainer: Any, step: int) -> tuple[float, TemperatureStrategy]:
    """The base temperature and the strategy step ``step`` samples with: the schedule's and the recipe's, or
    with ``temperature.control`` the controller's knob in place of the configured value."""
    c = trainer.controller
    if c is None:
        return trainer.strategy.base_temperature(step), trainer.strategy
    knob = trainer.cfg.temperature.control.knob
    if knob == "base":
        return c.knob, trainer.strategy
    return trainer.strategy.base_temperature(step), make_strategy(apply_knob(trainer.cfg.temperature, knob, c.knob))


def collect(trainer: Any, step: int) -> Collected:
    """Phases 1-2 of ``step``: generate + verify (DAPO dynamic sampling: more rounds, bounded, until enough
    groups are informative); the rollout metrics, then the controller's update from them."""
    cfg, ac = trainer.cfg, trainer.cfg.algorithm
    base_t, strategy = sampling(trainer, step)
    metrics: dict[str, float] = {"temperature/base": base_t}
    timing: dict[str, float] = {}

    def next_round(k: int) -> Groups:
        rows = next(trainer.stream)
        with timed(timing, "generate"):
            groups = trainer.generate(rows, base_t, derive_seed(cfg.trainer.seed, "rollout", step, k), strategy)
        with timed(timing, "verify"):
            for key, v in trainer.score(groups, {r["id"]: r["ground_truth"] for r in rows}).items():
                metrics[key] = metrics.get(key, 0.0) + v
        return groups

    kept, seen, rounds = select_groups(
        next_round, cfg.rollout.prompts_per_step, ac.dynamic_sampling, ac.max_refill_rounds
    )
    metrics.update(rollout_metrics(seen, hot_bounds=strategy.hot_bounds(base_t), base_temperature=base_t))
    for r in (r for g in seen for r in g):
        r.extra["policy_version"] = trainer.version  # learner updates behind these weights (off-policy: one old)
    informative = sum(len({r.reward for r in g}) > 1 for g in seen)
    metrics.update(
        {
            "train/groups_generated": len(seen),
            "train/groups_used": len(kept),
            "train/informative_share": informative / max(1, len(seen)),
        }
    )
    if cfg.rollout.dump:
        write_rollout_dump(trainer.run_dir / "rollouts" / f"step_{step:06d}.jsonl", seen, step)
    if trainer.controller is not None:  # this step's measurement sets the next step's knob
        knob = trainer.controller.knob
        trainer.controller.update(measure(cfg.temperature.control.target, metrics))
        metrics.update(trainer.controller.metrics() | {"control/knob": knob})
    if not kept:
        log.warning("step %d: no informative group after %d rounds; update skipped", step, rounds)
        metrics["train/skipped"] = 1.0
    metrics.update({f"time/{k}": v for k, v in timing.items()})
    return Collected(step, base_t, kept, trainer.version, metrics)
