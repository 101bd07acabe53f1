"""`rlvr-temp sweep`: train every recipe x seed as an ordinary run directory, resumably.

``rlvr-temp sweep recipes/demo/fixed.yaml recipes/demo/token.yaml --seeds 3 --out runs/study`` plans one run per
recipe and seed ``k`` in ``0..N-1``: run directory ``<out>/<recipe stem>/seed<k>``, with ``trainer.seed=k``,
``trainer.name=<recipe stem>`` (so that ``compare`` groups the seeds of an arm) and ``trainer.resume=auto``. The
overrides after the recipes apply to every run. ``<out>/sweep.json`` (written atomically) records the command
and each run's recipe, seed, run directory, config hash and status (pending / running / done / failed).

Running the same command again skips the runs that are done and resumes the others from their newest checkpoint
(``trainer.resume=auto``). A run is done when its ``metrics.jsonl`` has a row for each of its
``trainer.total_steps`` steps and its newest complete checkpoint (:func:`rlvr_temp.checkpoint.find_resume`) is the
final one. A different command for the same ``--out`` (other recipes or overrides, or a recipe whose content
changed) is refused in one line unless ``--force``.

Two ways to run:

* locally (no Ray address): one run after another in this process, runs whose model and engine settings match
  sharing one set of rollout workers (rlvr_temp.driver.local_runs, as ``rlvr-temp demo`` does).
* on a Ray cluster (``--ray-address`` or ``RAY_ADDRESS``): every run is a Ray task (``num_cpus=0``) running
  :func:`rlvr_temp.driver.trainer.train`, side by side, each in its own placement group (:func:`placement_bundles`:
  a bundle per rollout worker and one for the learner) that captures the run's actors. The manifest is updated as
  each task finishes; a failed run is reported in one line and does not stop the others. ``--out`` must then be on
  storage that the driver and every node see at the same path.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlvr_temp.config.schema import RunConfig, load_config
from rlvr_temp.driver.local_runs import EXIT_INTERRUPTED, SweepRun, run_is_done, train_in_turn
from rlvr_temp.utils import atomic_write_text

MANIFEST = "sweep.json"
#: keys the sweep sets for each run; an override of one of them is refused
RESERVED = ("trainer.seed", "trainer.run_dir", "trainer.name", "trainer.resume")
EXIT_FAILED = 1


class SweepError(ValueError):
    """A sweep cannot start (bad arguments, or a different sweep already lives in ``--out``); one line."""


# ------------------------------------------------------------------------------------------------- planning
def sweep_command(recipes: list[str], seeds: int, out: str, overrides: list[str]) -> str:
    """The command line that (re)runs this sweep (``--ray-address`` and ``--force`` change nothing in the runs)."""
    return shlex.join(["rlvr-temp", "sweep", *recipes, "--seeds", str(seeds), "--out", out, *overrides])


def plan(recipes: list[str], seeds: int, out: str | Path, overrides: list[str]) -> list[SweepRun]:
    """Every recipe x seed, recipe-major, each with its resolved config (recipe errors raise ConfigError)."""
    if not recipes:
        raise SweepError("sweep: no recipe given")
    if seeds < 1:
        raise SweepError(f"sweep: --seeds must be at least 1, got {seeds}")
    taken = [o for o in overrides if o.split("=", 1)[0].strip() in RESERVED]
    if taken:
        raise SweepError(f"sweep: {', '.join(taken)}: the sweep sets {', '.join(RESERVED)} itself")
    stems = [Path(r).stem for r in recipes]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise SweepError(f"sweep: two recipes share the name {dup[0]!r} (runs are grouped by recipe file name)")
    runs = []
    for recipe, stem in zip(recipes, stems):
        for k in range(seeds):
            run_dir = os.path.normpath(Path(out) / stem / f"seed{k}")
            mine = [f"trainer.seed={k}", f"trainer.run_dir={run_dir}", f"trainer.name={stem}", "trainer.resume=auto"]
            cfg = load_config(recipe, [*overrides, *mine])
            runs.append(SweepRun(recipe, stem, k, run_dir, cfg.hash(), cfg=cfg))
    return runs


def placement_bundles(cfg: RunConfig) -> list[dict[str, float]]:
    """A run's placement group: one bundle per rollout worker (``ray.rollout_cpus`` / ``ray.rollout_gpus``) and one
    for the learner (``ray.learner_cpus`` / ``ray.learner_gpus``); zero entries, and bundles left empty, dropped."""
    rc = cfg.ray
    worker = {"CPU": rc.rollout_cpus, "GPU": rc.rollout_gpus}
    learner = {"CPU": rc.learner_cpus, "GPU": rc.learner_gpus}
    bundles = [*([worker] * cfg.rollout.num_workers), learner]
    bundles = [{k: float(v) for k, v in b.items() if v > 0} for b in bundles]
    return [b for b in bundles if b]


# ------------------------------------------------------------------------------------------------- state on disk
def prepare_run(cfg: RunConfig) -> None:
    """Before a run (re)starts: without a checkpoint to resume it starts at step 0, so the rows a killed earlier
    attempt left in ``metrics.jsonl`` go (a resume from a checkpoint drops the later rows itself)."""
    from rlvr_temp.checkpoint import find_resume
    from rlvr_temp.metrics import truncate_metrics

    if find_resume(cfg.trainer.run_dir, "auto") is None:
        truncate_metrics(cfg.trainer.run_dir, 0)


class Manifest:
    """``<out>/sweep.json``: the command and the runs with their status, rewritten atomically on every change."""

    def __init__(self, out: str | Path, command: dict[str, Any], runs: list[SweepRun]) -> None:
        self.path = Path(out) / MANIFEST
        self.command, self.runs = command, runs

    @staticmethod
    def read(out: str | Path) -> dict[str, Any] | None:
        path = Path(out) / MANIFEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SweepError(f"{path}: unreadable sweep manifest ({exc}); remove it or use --force") from None

    def write(self) -> None:
        data = {**self.command, "updated": time.time(), "runs": [r.record() for r in self.runs]}
        atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")

    def set(self, run: SweepRun, status: str, error: str | None = None) -> None:
        run.status, run.error = status, error
        self.write()


def check_same_sweep(old: dict[str, Any], command: dict[str, Any], runs: list[SweepRun]) -> None:
    """Refuse, in one line, to continue a sweep in ``--out`` that another command started."""
    where = Path(command["out"]) / MANIFEST
    for key in ("recipes", "overrides"):
        before, now = list(old.get(key) or []), command[key]
        if before != now:
            diff = [f"-{w}" for w in before if w not in now] + [f"+{w}" for w in now if w not in before]
            raise SweepError(
                f"{where}: another sweep command started this directory ({key}: {' '.join(diff) or 'reordered'}); "
                "run that command again to resume it (it is in sweep.json), use another --out, or add --force"
            )
    hashes = {r.get("run_dir"): r.get("config_hash") for r in old.get("runs", [])}
    changed = [r.label for r in runs if hashes.get(r.run_dir, r.config_hash) != r.config_hash]
    if changed:
        raise SweepError(
            f"{where}: the resolved config of {', '.join(changed)} changed since the sweep started (a recipe was "
            "edited?); restore it, use another --out, or add --force"
        )


# ------------------------------------------------------------------------------------------------- running
def _describe(exc: BaseException) -> str:
    from rlvr_temp.driver.recovery import RunError, describe

    cause = getattr(exc, "cause", None)
    if isinstance(exc, RunError) or isinstance(cause, RunError):
        return str(cause if isinstance(cause, RunError) else exc)
    return describe(exc)


def run_local(runs: list[SweepRun], manifest: Manifest, say: Callable[[str], None]) -> int:
    """The sweep's runs in this process (:func:`train_in_turn`), their status in the manifest as they go."""
    started: dict[str, float] = {}

    def before(run: SweepRun) -> None:
        manifest.set(run, "running")
        say(f"sweep: {run.label} -> {run.run_dir}")
        started[run.run_dir] = time.perf_counter()
        prepare_run(run.cfg)

    def after(run: SweepRun, exc: Exception | None) -> None:
        if exc is not None:
            manifest.set(run, "failed", _describe(exc))
            say(f"sweep: {run.label} failed: {run.error}")
        else:
            manifest.set(run, "done")
            say(f"sweep: {run.label} done in {time.perf_counter() - started[run.run_dir]:.0f} s")

    try:
        return train_in_turn(runs, before, after)
    finally:
        for run in runs:  # interrupted: the run under way is pending again (its checkpoint lets it resume)
            if run.status == "running":
                manifest.set(run, "pending")


def _train_task(cfg: RunConfig) -> str:
    """The body of a run's Ray task on a cluster."""
    from rlvr_temp.driver.trainer import train

    return str(train(cfg))


def run_cluster(
    runs: list[SweepRun],
    manifest: Manifest,
    say: Callable[[str], None],
    address: str,
    target: Callable[[RunConfig], Any] = _train_task,
) -> int:
    """Every run as a Ray task in its own placement group, side by side; waits for all of them."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from rlvr_temp.driver.launch import init_ray

    probe = runs[0].cfg.model_copy(deep=True)
    probe.ray.address = address
    init_ray(probe)
    task = ray.remote(num_cpus=0, max_retries=0)(target)
    pending: dict[Any, tuple[SweepRun, Any]] = {}
    try:
        for run in runs:
            prepare_run(run.cfg)
            bundles = placement_bundles(run.cfg)
            pg = placement_group(bundles, strategy="PACK", name=f"sweep:{run.run_dir}") if bundles else None
            opts: dict[str, Any] = {"name": f"sweep:{run.label}"}
            if pg is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    pg, placement_group_capture_child_tasks=True
                )
            pending[task.options(**opts).remote(run.cfg)] = (run, pg)
            run.status = "running"
            say(f"sweep: {run.label} -> {run.run_dir} (placement group {bundles})")
        manifest.write()
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            run, pg = pending.pop(ref)
            try:
                ray.get(ref)
                error = None if run_is_done(run.cfg) else "stopped before trainer.total_steps (signal?)"
            except Exception as exc:
                error = _describe(exc)
            if pg is not None:
                remove_placement_group(pg)
            manifest.set(run, "failed" if error else "done", error)
            say(f"sweep: {run.label} failed: {error}" if error else f"sweep: {run.label} done")
    finally:
        for ref, (run, pg) in pending.items():  # interrupted: the runs' checkpoints let the next sweep resume them
            ray.cancel(ref, force=True)
            if pg is not None:
                remove_placement_group(pg)
            run.status = "pending"
        if pending:
            manifest.write()
        ray.shutdown()
    return 0


def run_sweep(
    recipes: list[str],
    seeds: int,
    overrides: list[str] | None = None,
    *,
    out: str | Path = "runs/sweep",
    ray_address: str | None = None,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> int:
    """Plan, check against ``<out>/sweep.json``, run what is not done, report; returns the exit code (0: all done,
    1: some run failed, 130: interrupted)."""
    overrides = list(overrides or [])
    out = os.path.normpath(out)
    runs = plan(recipes, seeds, out, overrides)
    line = sweep_command(recipes, seeds, out, overrides)
    command = {"command": line, "recipes": list(recipes), "seeds": seeds, "overrides": overrides, "out": out}
    old = None if force else Manifest.read(out)
    if old is not None:
        check_same_sweep(old, command, runs)
    manifest = Manifest(out, command, runs)
    for run in runs:
        run.status = "done" if run_is_done(run.cfg) else "pending"
    manifest.write()
    todo = [r for r in runs if r.status != "done"]
    address = ray_address or os.environ.get("RAY_ADDRESS") or runs[0].cfg.ray.address
    where = f"on the Ray cluster at {address}" if address else "here, one after another"
    say(f"sweep: {len(runs)} runs in {out}: {len(runs) - len(todo)} done, {len(todo)} to run {where}")
    code = 0
    if todo:
        code = run_cluster(todo, manifest, say, address) if address else run_local(todo, manifest, say)
    if code == EXIT_INTERRUPTED:
        say(f"sweep: interrupted; run the same command again to resume: {line}")
        return code
    failed = [r for r in runs if r.status == "failed"]
    for run in failed:
        say(f"sweep: FAILED {run.label}: {run.error}")
    done = sum(r.status == "done" for r in runs)
    say(f"sweep: {done} of {len(runs)} runs done ({MANIFEST}: {manifest.path})")
    run_dirs = [r.run_dir for r in runs]
    say(
        "compare: "
        + shlex.join(["rlvr-temp", "compare", *run_dirs, "--baseline", runs[0].arm, "--out", f"{out}/compare"])
    )
    if failed:
        say(f"sweep: {len(failed)} run(s) failed; running the same command again retries them: {line}")
        return EXIT_FAILED
    return code
