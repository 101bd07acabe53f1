"""Several runs trained one after another in the driver's process, sharing rollout workers where they can.

Used by ``rlvr-temp sweep`` without a Ray cluster (rlvr_temp.driver.sweep) and by ``rlvr-temp demo``
(rlvr_temp.driver.demo). Runs whose model and engine settings match share one set of rollout workers, so the engines
start once (:func:`engine_groups`); each run gets a fresh learner, and its first weight sync resets the engines'
weights (its entropy windows are reset too). Every request carries its own seed, so a run on a shared engine logs the
same metrics as the same run alone (timings aside). A run is done when its ``metrics.jsonl`` has a row for each of its
``trainer.total_steps`` steps and its newest complete checkpoint is the final one (:func:`run_is_done`).

Left out: runs side by side (that is the sweep's cluster path, one Ray task per run).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rlvr_temp.config.schema import RunConfig
from rlvr_temp.utils import GracefulStop

#: the exit code of a sweep or demo that a signal stopped (after the run under way wrote its checkpoint)
EXIT_INTERRUPTED = 130


@dataclass
class SweepRun:
    """One planned run with its resolved config: a recipe x seed of a sweep, as its manifest lists it (``cfg`` is not
    written), or an arm of the demo."""

    recipe: str
    arm: str
    seed: int
    run_dir: str
    config_hash: str
    status: str = "pending"
    error: str | None = None
    cfg: RunConfig | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "cfg"}


def run_is_done(cfg: RunConfig) -> bool:
    """``metrics.jsonl`` has a row for every step below ``trainer.total_steps`` and the checkpoint a resume would
    take is the final one (or later)."""
    from rlvr_temp.checkpoint import find_resume
    from rlvr_temp.metrics import read_metrics

    total = cfg.trainer.total_steps
    try:
        steps = {row.get("step") for row in read_metrics(cfg.trainer.run_dir)}
    except FileNotFoundError:
        return False
    if not set(range(total)) <= steps:
        return False
    ckpt = find_resume(cfg.trainer.run_dir, "auto")
    return ckpt is not None and int(ckpt.name.removeprefix("step_")) >= total


def _engine_key(cfg: RunConfig) -> str:
    """What the rollout workers are built from: runs with equal keys can share them."""
    d = cfg.to_dict()
    shared = {
        "model": d["model"],
        "engine": d["rollout"]["engine"],
        "workers": d["rollout"]["num_workers"],
        "ray": {k: d["ray"][k] for k in ("rollout_cpus", "rollout_gpus", "max_restarts")},
        "log": d["logging"]["engine_log_level"],
    }
    return json.dumps(shared, sort_keys=True)


def engine_groups(runs: list[SweepRun]) -> list[tuple[RunConfig, list[SweepRun]]]:
    """Runs that can share one set of rollout workers, and the config to build those workers from: equal engine
    keys, and at most one kind of engine settings (the `learned` mode's TTM head; other modes need none and run on
    an engine that has it, as in the demo). Groups keep the runs' order."""
    from rlvr_temp.temperature import make_strategy

    settings = {id(r): make_strategy(r.cfg.temperature).engine_settings() for r in runs}
    first_tag: dict[str, str] = {}
    for run in runs:
        if settings[id(run)]:
            first_tag.setdefault(_engine_key(run.cfg), json.dumps(settings[id(run)], sort_keys=True))
    groups: dict[tuple[str, str], list[SweepRun]] = {}
    for run in runs:
        key, own = _engine_key(run.cfg), settings[id(run)]
        tag = json.dumps(own, sort_keys=True) if own else first_tag.get(key, "")
        groups.setdefault((key, tag), []).append(run)
    # the first run that needs engine settings builds the group's engines
    return [(next((r for r in g if settings[id(r)]), g[0]).cfg, g) for g in groups.values()]


def train_in_turn(
    runs: list[SweepRun],
    before: Callable[[SweepRun], None],
    after: Callable[[SweepRun, Exception | None], None],
    *,
    keep_going: bool = True,
) -> int:
    """Train ``runs`` one after another in this process, sharing rollout workers within each :func:`engine_groups`
    group (started for a group's first run). ``before(run)`` comes first; ``after(run, error)`` once the run ended
    (``error`` None: all its steps done). A failed run's workers may be in any state: they are replaced
    (``keep_going``), or the error is raised. Returns 0, or ``EXIT_INTERRUPTED`` when a signal stopped a run (after
    its checkpoint)."""
    # imported here: planning a sweep (and `rlvr-temp validate`) must not load Ray, torch's learner or vLLM
    import ray

    from rlvr_temp.data.models import resolve_model
    from rlvr_temp.driver.launch import init_ray, start_workers
    from rlvr_temp.driver.trainer import Trainer
    from rlvr_temp.temperature import make_strategy

    init_ray(runs[0].cfg)
    try:
        with GracefulStop() as stop:
            for engine_cfg, group in engine_groups(runs):
                workers: list[Any] | None = None
                for run in group:
                    if stop.signum is not None:
                        return EXIT_INTERRUPTED
                    before(run)
                    try:
                        if workers is None:
                            model = resolve_model(engine_cfg.model.path)
                            workers = start_workers(engine_cfg, model, make_strategy(engine_cfg.temperature))
                        trainer = Trainer(run.cfg, workers=workers)
                        try:
                            trainer.run()
                        finally:
                            trainer.close()
                    except Exception as exc:
                        after(run, exc)
                        if not keep_going:
                            raise
                        for w in workers or []:
                            ray.kill(w)
                        workers = None
                        continue
                    if not run_is_done(run.cfg):  # the trainer stopped on a signal, after a checkpoint
                        return EXIT_INTERRUPTED
                    after(run, None)
                for w in workers or []:
                    ray.kill(w)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return 0
