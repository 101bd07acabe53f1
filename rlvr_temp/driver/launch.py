"""Set-up of a run's processes, in the driver: the Ray cluster, the rollout actors and the learner actors.

Each helper takes the run's typed config (or the section it needs) as it is. Used by the trainer, the demo and the
sweep; the model directory and the training prompts they start from come from rlvr_temp.data (models, prompts).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import ray

from rlvr_temp.config.schema import RunConfig
from rlvr_temp.driver import reaper
from rlvr_temp.driver.placement import layout_for, release, write_placement
from rlvr_temp.learner.group import LearnerGroup
from rlvr_temp.temperature import TemperatureStrategy
from rlvr_temp.utils import atomic_write_text, derive_seed

#: environment passed from the driver to every actor (offline hubs, the tiny model's cache)
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "RLVR_TEMP_CACHE")


def init_ray(cfg: RunConfig) -> None:
    """Join ``ray.address`` / ``RAY_ADDRESS`` if given, else start a local cluster (no dashboard).

    Inside a Ray job (``ray job submit``) Ray sets ``RAY_ADDRESS`` and the job's runtime environment (working dir,
    env vars); the actors inherit both. Of the variables the driver forwards to its actors (``FORWARDED_ENV``),
    those the job already sets are left to the job: Ray refuses a driver that sets the same variable twice.

    Starts the run's reaper first (rlvr_temp.driver.reaper): the local cluster's processes carry the run's token
    and go when the driver goes, however it dies; a cluster's own processes (``address``) carry none."""
    if ray.is_initialized():
        return
    reaper.start()  # a killed driver leaves no process of its run (a no-op if the CLI has started it)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    job_env = _job_env_vars()
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ and k not in job_env}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env={"env_vars": env})


def _job_env_vars() -> dict[str, str]:
    """The ``env_vars`` of the Ray job this driver runs in (``ray job submit --runtime-env-json``), else {}."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}")
    return dict((job.get("runtime_env") or {}).get("env_vars") or {})


def start_workers(cfg: RunConfig, model_path: str, strategy: TemperatureStrategy) -> list[Any]:
    """Start ``rollout.num_workers`` rollout actors with the recipe's engine settings, each in its slot of the
    run's placement group (``resources.layout``, rlvr_temp.driver.placement), with its slot's OpenMP thread count."""
    # imported here, not at the top: rlvr_temp.engine.worker imports vLLM, which only the engines' processes need
    from rlvr_temp.engine.worker import remote_worker

    rc = cfg.ray
    layout = layout_for(cfg)
    worker_cls = remote_worker(rc.rollout_cpus, rc.rollout_gpus, rc.max_restarts)
    env = dict(worker_cls._default_options.get("runtime_env", {}).get("env_vars", {}))
    # the engine section with its "auto" settings resolved for this recipe's layout and devices
    resolved = {"weight_sync": cfg.weight_sync_backend(), "sleep_mode": cfg.engines_sleep()}
    engine = cfg.rollout.engine.model_copy(update=resolved)
    workers = []
    for i, slot in enumerate(layout.engines):
        # Ray sets OMP_NUM_THREADS to the CPUs an actor reserves; a colocated engine reserves a share of its bundle
        # but runs alone in it while generating: its thread count goes in through the actor's environment
        options = layout.options(slot) | {"runtime_env": {"env_vars": env | {"OMP_NUM_THREADS": str(slot.threads)}}}
        worker = worker_cls.options(**options).remote(
            model_path,
            cfg.model,
            engine,
            seed=derive_seed(cfg.trainer.seed, "engine", i),
            num_threads=slot.threads,
            engine_settings=strategy.engine_settings(),
            log_level=cfg.logging.engine_log_level,
            cpu_slot=i,
            lora_rank=cfg.learner.lora_r if engine.lora_updates else None,
        )
        workers.append(worker)
    layout.record("engine", workers, layout.engines)
    return workers


def remote_learner(
    num_cpus: float = 1.0, num_gpus: float = 0.0, max_restarts: int = 0, num_threads: int | None = None
) -> Any:
    """The learner as a Ray actor class with these resources (``num_threads``: its OpenMP threads, default the
    CPUs it reserves); Ray restarts a killed one up to ``max_restarts`` times (rlvr_temp.driver.recovery)."""
    env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(num_threads or max(1, int(num_cpus or 1)))}
    env.update({k: os.environ[k] for k in ("HF_HUB_OFFLINE",) if k in os.environ})
    options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": max_restarts}
    # here, not at the top: the learner's module imports peft and bitsandbytes, which the driver never needs (and
    # whose import-time lines it should not print); Ray pickles the class by reference
    from rlvr_temp.learner.learner import Learner

    return ray.remote(**options, runtime_env={"env_vars": env})(Learner)


def start_learner(cfg: RunConfig, model_path: str, strategy: TemperatureStrategy) -> LearnerGroup:
    """Start ``resources.learner_ranks`` learner actors in their slots of the run's placement group, joined in one
    process group; each gets the typed config and the strategy as they are. Writes ``<run>/placement.json``."""
    layout = layout_for(cfg)
    ranks = []
    for slot in layout.learners:
        cls = remote_learner(slot.num_cpus, slot.num_gpus, cfg.ray.max_restarts, num_threads=slot.threads)
        options = layout.options(slot)
        ranks.append(cls.options(**options).remote(model_path, cfg, strategy=strategy, num_threads=slot.threads))
    layout.record("learner", ranks, layout.learners)
    try:
        group = LearnerGroup(ranks, cfg.resources.dist_timeout_s)
        group.on_release = functools.partial(release, cfg)
        write_placement(cfg.trainer.run_dir, layout)
    except BaseException:
        for r in ranks:
            ray.kill(r)
        raise
    return group


def record_engines(run_dir: str | Path, workers: list[Any]) -> None:
    """Write what each rollout engine runs (vLLM version, model runner, ...) to ``<run>/engines.json``."""
    atomic_write_text(Path(run_dir) / "engines.json", json.dumps(ray.get([w.engine_info.remote() for w in workers])))
