"""Where a run's actors go: one Ray placement group per run, in the layout ``resources.layout`` names.

* ``colocated`` (default): one bundle per learner rank; bundle ``b`` holds learner rank ``b`` and the engines
  ``e`` with ``e % ranks == b``. The phases take turns (generate, then learn), so each actor reserves only a share
  of its bundle (so that all fit: ``bundle / actors in it``) but runs with all of it: the learner sets its torch
  threads, and each engine its OpenMP threads, to the bundle's CPUs (divided among the bundle's engines). On GPUs
  the engine and the learner rank share the bundle's GPU; vLLM's sleep mode would free the engine's memory while
  the learner works (``rollout.engine.sleep_mode``, rlvr_temp.weights.sync).
* ``split``: one bundle per engine (``ray.rollout_cpus`` / ``ray.rollout_gpus``) and one per learner rank
  (``ray.learner_cpus`` / ``ray.learner_gpus``): nothing shared, for models too big to share a GPU.

The group is created once per driver process and resource plan (:func:`layout_for`), waited for at most
``resources.timeout_s``, and removed when it cannot be met, with one line saying what is missing
(:class:`PlacementError`). A run started inside another placement group that captures its children (a sweep's
run task) uses that group as it is. Left out: tensor-parallel engines spanning several bundles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlvr_temp.config.schema import RunConfig
from rlvr_temp.utils import atomic_write_text


class PlacementError(ValueError):
    """The cluster cannot hold the recipe's placement group; the message is one line."""


@dataclass(frozen=True)
class Slot:
    """One actor's place: its bundle, the resources it reserves there, and how many threads it runs with."""

    bundle: int
    num_cpus: float
    num_gpus: float
    threads: int


@dataclass
class Layout:
    """A run's bundles and each engine's / learner rank's slot; ``pg`` is None inside a captured group."""

    kind: str
    bundles: list[dict[str, float]]
    engines: list[Slot]
    learners: list[Slot]
    strategy_name: str = "PACK"
    pg: PlacementGroup | None = None
    placed: list[dict[str, Any]] = field(default_factory=list)

    def options(self, slot: Slot) -> dict[str, Any]:
        """Ray actor options for ``slot``: its resources and, with a group of our own, its bundle."""
        opts: dict[str, Any] = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus}
        if self.pg is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.pg, placement_group_bundle_index=slot.bundle
            )
        return opts

    def record(self, role: str, actors: list[Any], slots: list[Slot]) -> None:
        """Remember where the actors of ``role`` (``engine`` / ``learner``) were placed, replacing that role's
        earlier ones (written by :func:`write_placement`)."""
        self.placed = [p for p in self.placed if p["role"] != role]
        self.placed += [{"role": role, "index": i, "slot": s} for i, (_, s) in enumerate(zip(actors, slots))]


def _share(x: float, n: int) -> float:
    """``x / n`` rounded down to Ray's resource granularity (1e-4), so that ``n`` shares fit in ``x``."""
    return math.floor(x / n * 1e4) / 1e4


def plan(cfg: RunConfig) -> Layout:
    """The bundles and slots ``cfg`` asks for (no Ray call)."""
    rc, res = cfg.ray, cfg.resources
    n_eng, ranks = cfg.rollout.num_workers, res.learner_ranks
    if res.layout == "split":
        bundles = [{"CPU": rc.rollout_cpus, "GPU": rc.rollout_gpus}] * n_eng
        bundles += [{"CPU": rc.learner_cpus, "GPU": rc.learner_gpus}] * ranks
        eng_t, learn_t = max(1, int(rc.rollout_cpus)), max(1, int(rc.learner_cpus))
        engines = [Slot(i, rc.rollout_cpus, rc.rollout_gpus, eng_t) for i in range(n_eng)]
        learners = [Slot(n_eng + r, rc.learner_cpus, rc.learner_gpus, learn_t) for r in range(ranks)]
    else:
        members = [[e for e in range(n_eng) if e % ranks == b] for b in range(ranks)]
        most = max(len(m) for m in members)
        cpus = res.bundle_cpus if res.bundle_cpus is not None else rc.learner_cpus + most * rc.rollout_cpus
        gpus = res.bundle_gpus if res.bundle_gpus is not None else max(rc.rollout_gpus, rc.learner_gpus)
        bundles = [{"CPU": cpus, "GPU": gpus}] * ranks
        engines, learners = [None] * n_eng, []
        for b, engs in enumerate(members):
            n = 1 + len(engs)  # actors in the bundle, each reserving an equal share of it
            learners.append(Slot(b, _share(cpus, n), _share(gpus, n), max(1, int(cpus))))
            for e in engs:
                engines[e] = Slot(b, _share(cpus, n), _share(gpus, n), max(1, int(cpus / len(engs))))
    bundles = [{k: float(v) for k, v in b.items() if v > 0} for b in bundles]
    empty = [i for i, b in enumerate(bundles) if not b]
    if empty:
        raise PlacementError(f"resources: bundle {empty[0]} reserves no CPU and no GPU (ray.* / resources.bundle_*)")
    return Layout(res.layout, bundles, list(engines), learners, res.strategy)


def _missing(bundles: list[dict[str, float]]) -> str | None:
    """What the cluster lacks for ``bundles`` in total, or for the largest bundle on any one node (None: fits)."""
    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for kind in ("GPU", "CPU"):
        need = sum(b.get(kind, 0.0) for b in bundles)
        per = max((b.get(kind, 0.0) for b in bundles), default=0.0)
        if need > total.get(kind, 0.0) + 1e-9:
            return (
                f"the recipe needs {need:g} {kind}s ({len(bundles)} bundle(s) of {per:g} {kind}s), "
                f"the cluster has {total.get(kind, 0.0):g} {kind}s"
            )
        biggest = max((n.get(kind, 0.0) for n in nodes), default=0.0)
        if per > biggest + 1e-9:
            return f"the recipe needs {per:g} {kind}s per node x 1 bundle, the largest node has {biggest:g} {kind}s"
    return None


def reserve(cfg: RunConfig) -> Layout:
    """Plan ``cfg``'s layout and reserve its placement group (waiting at most ``resources.timeout_s``); raises
    :class:`PlacementError` in one line, with nothing left pending, when the cluster cannot hold it."""
    layout = plan(cfg)
    if get_current_placement_group() is not None:  # a sweep's run task: its group captures our actors already
        return layout
    missing = _missing(layout.bundles)
    if missing:
        raise PlacementError(f"resources: {missing} (layout {layout.kind}; ray.*, resources.*)")
    pg = placement_group(layout.bundles, strategy=cfg.resources.strategy, name=f"rlvr_temp:{cfg.trainer.run_dir}")
    try:
        ray.get(pg.ready(), timeout=cfg.resources.timeout_s)
    except GetTimeoutError:
        remove_placement_group(pg)
        free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        raise PlacementError(
            f"resources: {len(layout.bundles)} bundle(s) {layout.bundles[0]} (strategy {cfg.resources.strategy}) "
            f"not placed within {cfg.resources.timeout_s:g} s; free now: {free} (held by other jobs?)"
        ) from None
    layout.pg = pg
    return layout


_LAYOUTS: dict[str, Layout] = {}


def _key(cfg: RunConfig) -> str:
    # the Ray job too: a group of an earlier ray.init (a test's, the demo's) is not this session's to reuse
    job = ray.get_runtime_context().get_job_id()
    parts = [cfg.resources.model_dump(mode="json"), cfg.ray.model_dump(mode="json"), cfg.rollout.num_workers, job]
    return json.dumps(parts, sort_keys=True)


def layout_for(cfg: RunConfig) -> Layout:
    """This driver's layout for ``cfg``'s resource plan, reserved on first use (engines and learner ranks started
    separately, and several runs reusing one set of engines, share it)."""
    key = _key(cfg)
    layout = _LAYOUTS.get(key)
    if layout is not None and layout.pg is not None and _removed(layout.pg):
        layout = None
    if layout is None:
        layout = _LAYOUTS[key] = reserve(cfg)
    return layout


def _removed(pg: PlacementGroup) -> bool:
    try:
        # an unknown group (another session's) has no state: as good as removed
        return placement_group_table(pg).get("state") not in ("CREATED", "PENDING", "RESCHEDULING")
    except Exception:  # a group of a Ray session that has ended
        return True


def release(cfg: RunConfig) -> None:
    """Remove ``cfg``'s placement group (this kills every actor still placed in it)."""
    layout = _LAYOUTS.pop(_key(cfg), None)
    if layout is not None and layout.pg is not None and not _removed(layout.pg):
        remove_placement_group(layout.pg)


def write_placement(run_dir: str | Path, layout: Layout) -> Path:
    """``<run>/placement.json``: the layout, its bundles (and the node each is on) and every actor's slot."""
    nodes: dict[Any, Any] = {}
    if layout.pg is not None:
        nodes = placement_group_table(layout.pg).get("bundles_to_node_id", {})
    actors = [
        {
            "role": p["role"],
            "index": p["index"],
            "bundle": p["slot"].bundle,
            "node_id": nodes.get(p["slot"].bundle),
            "num_cpus": p["slot"].num_cpus,
            "num_gpus": p["slot"].num_gpus,
            "threads": p["slot"].threads,
        }
        for p in layout.placed
    ]
    doc = {"layout": layout.kind, "strategy": layout.strategy_name, "bundles": layout.bundles, "actors": actors}
    doc["captured"] = layout.pg is None
    return atomic_write_text(Path(run_dir) / "placement.json", json.dumps(doc, indent=1))
