"""The training loop, in one file: rollouts -> verifier -> advantages -> learner update -> weight sync -> metrics.

The driver process runs :class:`Trainer`; rollout workers (vLLM engines) and the learner are Ray actors. A step,
phase by phase (each phase is a method, timed under its name in the ``time/*`` metrics):

1. ``generate``: the temperature strategy gives the step's base temperature ``T_s`` and each response's rollout
   temperature; the rollout workers sample the responses and record every token's temperature, entropy and
   log-prob (docs/temperature.md);
2. ``verify``: the verifier scores the last ``\\boxed{}``; rewards are shaped (binary / signed, format penalty, DAPO
   overlong penalty). DAPO dynamic sampling repeats 1-2 for more prompts (bounded) until the batch holds enough
   groups whose rewards differ;
3. ``learn``: group-normalised advantages over each prompt's whole group make a :class:`~rlvr_temp.batch.TrainBatch`;
   the learner recomputes log-probs at the recorded temperatures (on-policy) and updates;
4. ``sync``: the learner's merged plain-dtype weights go to every rollout worker (in place, no engine restart);
5. metrics go to ``metrics.jsonl`` / TensorBoard, a progress bar shows reward and ETA; checkpoints as configured.

With ``temperature.control`` a controller moves one temperature knob after each step's rollouts are measured
(rlvr_temp.temperature.control). With ``trainer.off_policy_steps: 1`` (split layout) phases 1-2 of step k+1 run
while the learner updates on step k (:meth:`Trainer.train_step`); the rollouts carry the policy version they came
from, and a checkpoint holds the one collected ahead.

Left out on purpose: no buffer of surplus groups between steps (verl's DAPO recipe drops them too), no staleness
beyond one step. docs/loop.md walks through a step with the files involved.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import ray
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import AutoTokenizer

from rlvr_temp.batch import Groups, TrainBatch, set_rewards
from rlvr_temp.checkpoint import (
    check_compatible,
    find_resume,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlvr_temp.config.schema import RunConfig, save_config
from rlvr_temp.data.models import resolve_model
from rlvr_temp.data.prompts import PromptStream, load_train_prompts
from rlvr_temp.driver import recovery
from rlvr_temp.driver.collect import Collected, collect, overlaps
from rlvr_temp.driver.launch import init_ray, record_engines, start_learner, start_workers
from rlvr_temp.driver.placement import release
from rlvr_temp.driver.plan import PlanError, check_ray_cluster
from rlvr_temp.evaluation.evaluate import evaluate_run
from rlvr_temp.metrics import MetricsLogger, truncate_metrics
from rlvr_temp.reward.verify import Verifier
from rlvr_temp.temperature import TemperatureStrategy, make_strategy
from rlvr_temp.temperature.control import make_controller
from rlvr_temp.utils import GracefulStop, derive_seed, timed
from rlvr_temp.weights.sync import EngineSync

log = logging.getLogger("rlvr_temp.driver.trainer")


class Trainer:
    """Owns the actors and the loop state of one run (driver process)."""

    def __init__(self, cfg: RunConfig, workers: list[Any] | None = None) -> None:
        """Start (or, with ``workers``, reuse -- their entropy windows are reset) the rollout workers, start the
        learner, resume from a checkpoint when there is one, and sync the learner's weights to the engines."""
        self.cfg = cfg
        self.run_dir = Path(cfg.trainer.run_dir)
        ckpt_path = find_resume(self.run_dir, cfg.trainer.resume)
        ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
        if ckpt is not None:
            check_compatible(ckpt["config"], cfg, ckpt_path)  # before anything is started or written
        for warning in cfg.warnings():
            log.warning("%s", warning)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir)
        torch.manual_seed(derive_seed(cfg.trainer.seed, "driver"))
        self.strategy = make_strategy(cfg.temperature)
        self.controller = make_controller(cfg.temperature)  # None without temperature.control
        self.overlap = overlaps(cfg)  # off-policy pipelining, where the layout allows it
        self.version = 0  # learner updates synced to the engines (the policy version of new rollouts)
        self.pending: Collected | None = None  # off-policy: the next step's rollouts, collected during this one
        self.model_path = resolve_model(cfg.model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        rows, self.prompts = load_train_prompts(cfg, self.tokenizer)
        self.stream = PromptStream(rows, cfg.rollout.prompts_per_step, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle)
        self.verifier = Verifier(num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s)
        init_ray(cfg)
        try:  # GPU recipes: `rlvr-temp plan`'s structural checks on the joined cluster, before any actor starts
            check_ray_cluster(cfg)
        except PlanError:
            self.verifier.close()
            raise
        self._own_workers = workers is None
        if workers is None:
            self.workers = start_workers(cfg, self.model_path, self.strategy)
        elif len(workers) != cfg.rollout.num_workers:
            raise ValueError(f"{len(workers)} workers given, rollout.num_workers is {cfg.rollout.num_workers}")
        else:
            self.workers = list(workers)
            ray.get([w.reset_temperature_state.remote() for w in self.workers])
        self.learner: Any = None  # a LearnerGroup once the engines are up
        self.step, self.retries = 0, 0
        self._start = {"stream": self.stream.state_dict(), "rng": rng_state(), "loop": self.loop_state()}
        try:
            if cfg.uses_gpus():
                # the engines are up before the learner starts: vLLM sizes its KV cache from the GPU memory it
                # finds free while it profiles, and a learner allocating meanwhile (on the same GPU when colocated)
                # would shrink the cache or trip vLLM's start-up check, differently run to run. (On CPU the cache
                # has a set size, and both start at once.)
                ray.get([w.incarnation.remote() for w in self.workers])
            self.learner = start_learner(cfg, self.model_path, self.strategy)
            self.engine_sync = EngineSync(cfg, self.learner, self.workers)
            # incarnation tokens: a call meant for an actor that Ray has restarted since is refused (recovery.py)
            self.worker_ids = ray.get([w.incarnation.remote() for w in self.workers])
            self.learner_id = ray.get(self.learner.identity.remote())[0]
            record_engines(self.run_dir, self.workers)
            if ckpt is not None:
                self.restore(ckpt)
                log.warning("resumed from %s at step %d", ckpt_path, self.step)
            self.sync_weights()  # the engines start from the learner's (e.g. NF4-quantised) weights
        except BaseException:
            self.close()  # do not leave actors or verifier processes behind
            raise

    # ------------------------------------------------------------------------------------------ checkpoints
    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a loaded checkpoint: learner, stream, RNG, entropy windows, step; later metrics rows go."""
        ts = ckpt["trainer_state"]
        temps = ts["temperature"]
        if len(temps) != len(self.workers):
            raise ValueError(f"checkpoint has {len(temps)} rollout workers' state, this run has {len(self.workers)}")
        self.learner.restore(ckpt)  # every learner rank its own part
        self.stream.load_state_dict(ts["stream"])
        set_rng_state(ts["rng"])
        ray.get([w.load_temperature_state.remote(t) for w, t in zip(self.workers, temps)])
        self.set_loop_state(ts.get("loop", self._start["loop"]))
        self.step = int(ts["step"])
        truncate_metrics(self.run_dir, self.step)

    def loop_state(self) -> dict[str, Any]:
        """The driver's own loop state besides step, stream and RNG: the controller's state (copied), the policy
        version and the rollouts collected ahead (off-policy; shared, not copied: a :class:`Collected` is never
        changed once made, and copying a large step's rollouts at every step boundary would cost seconds)."""
        control = copy.deepcopy(self.controller.state_dict()) if self.controller else None
        return {"control": control, "version": self.version, "pending": self.pending}

    def set_loop_state(self, state: dict[str, Any]) -> None:
        if self.controller is not None and state["control"] is not None:
            self.controller.load_state_dict(copy.deepcopy(state["control"]))
        self.version, self.pending = int(state["version"]), state["pending"]

    def rewind(self) -> None:
        """Back to the newest checkpoint, or to the run's start: what a resume would do, in-process (recovery.py)."""
        path = find_resume(self.run_dir, "auto")
        if path is not None:
            return self.restore(load_checkpoint(path))
        self.learner.to_start()  # fresh ranks (restarted if any has updated), in one process group
        self.stream.load_state_dict(self._start["stream"])
        set_rng_state(self._start["rng"])
        ray.get([w.reset_temperature_state.remote() for w in self.workers])
        self.set_loop_state(self._start["loop"])
        self.step = 0
        truncate_metrics(self.run_dir, 0)

    def save(self) -> Path:
        """Write a checkpoint of the state after ``self.step`` completed steps (learner state comes from its actor)."""
        trainer_state = {
            "step": self.step,
            "stream": self.stream.state_dict(),
            "rng": rng_state(),
            "temperature": ray.get([w.temperature_state.remote() for w in self.workers]),
            "loop": self.loop_state(),  # off-policy: the rollouts collected ahead are saved, not regenerated
            "metrics_rows": self.step,
        }
        return save_checkpoint(
            self.run_dir,
            self.step,
            learner_state=self.learner.write_parts,  # each learner rank writes its own part
            trainer_state=trainer_state,
            config=self.cfg,
            keep=self.cfg.checkpoint.keep,
        )

    # ------------------------------------------------------------------------------------------ phases
    def generate(
        self, rows: list[dict[str, Any]], base_t: float, seed: int, strategy: TemperatureStrategy | None = None
    ) -> Groups:
        """Rollout workers (in parallel, prompts split round-robin) sample each row's ``G`` responses at the
        strategy's (default: the run's) rollout temperatures around ``base_t``. Returns one group per row."""
        strategy = strategy or self.strategy
        temps = strategy.group_temperatures(base_t, self.cfg.rollout.group_size)
        n_w = len(self.workers)
        shards = [rows[i::n_w] for i in range(n_w)]
        futures = [
            w.generate.remote(
                [self.prompts[r["id"]] for r in shard],
                [temps] * len(shard),
                prompt_ids=[r["id"] for r in shard],
                max_tokens=self.cfg.rollout.max_response_len,
                strategy=strategy,
                top_p=self.cfg.rollout.top_p,
                top_k=self.cfg.rollout.top_k,
                incarnation=self.worker_ids[k],
                seed=derive_seed(seed, "worker", k),
            )
            for k, (w, shard) in enumerate(zip(self.workers, shards))
            if shard
        ]
        groups: Groups = [[] for _ in rows]
        for k, part in enumerate(ray.get(futures)):
            for j, group in enumerate(part):
                groups[k + j * n_w] = group  # worker k got rows k, k + n_w, k + 2 n_w, ...
        return groups

    def score(self, groups: Groups, truth: dict[str, str]) -> dict[str, float]:
        """Verify every response against its prompt's ground truth (driver's verifier pool) and set its shaped
        reward; returns the verifier's counters for this call."""
        flat = [r for g in groups for r in g]
        before = dict(self.verifier.stats)
        correct = self.verifier.score_batch([r.text for r in flat], [truth[r.prompt_id] for r in flat])
        set_rewards(flat, correct, self.cfg.reward, self.cfg.algorithm.overlong, self.cfg.rollout.max_response_len)
        after = self.verifier.stats
        return {f"verify/{k}": after[k] - before[k] for k in ("timeouts", "no_boxed")}

    def learn(self, groups: Groups, base_t: float) -> Any:
        """Advantages within each group, then one learner update on the resulting batch (learner actor); returns
        the update's metrics as a Ray object reference (the driver may collect the next step meanwhile)."""
        batch = TrainBatch.from_groups(groups, self.cfg.algorithm.advantage)
        self.engine_sync.release()  # colocated GPUs: the engines' memory to the learner (vLLM sleep mode)
        return self.learner.train_step.remote(batch, base_t, incarnation=self.learner_id)

    def sync_weights(self) -> dict[str, float]:
        """The learner's weights to every engine (rlvr_temp.weights.sync: vLLM's weight-transfer engines);
        ``sync/*``."""
        return self.engine_sync.sync(self.learner_id, self.worker_ids)

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One training step (driver): collect (or take the rollouts collected ahead), learn, sync; returns metrics.

        Off-policy (``trainer.off_policy_steps: 1``, split layout): the learner's update of step k is started, step
        k+1 is collected meanwhile with the engines' weights of the step before, and then the new weights are synced:
        each step learns from rollouts one policy version old (``train/staleness``)."""
        timing: dict[str, float] = {}
        with timed(timing, "step"):
            cur = self.pending if self.pending is not None else collect(self, self.step)
            assert cur.step == self.step, f"rollouts of step {cur.step} collected for step {self.step}"
            self.pending = None
            metrics = dict(cur.metrics) | {"train/staleness": float(self.version - cur.policy_version)}
            ahead = self.overlap and self.step + 1 < self.cfg.trainer.total_steps
            if cur.kept:
                with timed(timing, "learn"):
                    update = self.learn(cur.kept, cur.base_t)
                    if ahead:  # generation of the next step overlaps the update (the engines' weights are older)
                        with timed(timing, "collect_ahead"):
                            self.pending = collect(self, self.step + 1)
                    metrics.update(ray.get(update))
                with timed(timing, "sync"):
                    metrics.update(self.sync_weights())
                self.version += 1
            elif ahead:
                self.pending = collect(self, self.step + 1)
        metrics.update({f"time/{k}": v for k, v in timing.items()})
        self.step += 1
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Periodic held-out evaluation on the first rollout worker (``eval`` section; current weights)."""
        timing: dict[str, float] = {}
        with timed(timing, "time/eval"):
            out = evaluate_run(self.workers[0], self.tokenizer, self.verifier, self.cfg, step=self.step)
        return {f"eval/{k}": v for k, v in out.items()} | timing

    def run(self) -> Path:
        """Train until ``trainer.total_steps`` (or a signal: finish the step, checkpoint, stop); returns the run dir."""
        cfg = self.cfg
        logger = MetricsLogger(
            self.run_dir,
            tensorboard=cfg.logging.tensorboard,
            wandb=cfg.logging.wandb,
            run_name=cfg.trainer.name,
            config=cfg.to_dict(),
        )
        name = cfg.trainer.name or self.run_dir.name
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}")]
        try:
            with (
                GracefulStop() as stop,
                Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), disable=not cfg.logging.progress) as bar,
            ):
                task = bar.add_task(name, total=cfg.trainer.total_steps, completed=self.step)
                while self.step < cfg.trainer.total_steps:
                    step = self.step
                    m = recovery.run_step(self)  # train_step, retried after an actor failure
                    step = self.step - 1  # a recovery may have gone back to a checkpoint
                    logger.log(step, m)
                    reward, acc = m.get("reward/mean", 0), m.get("acc/mean", 0)
                    bar.update(task, completed=self.step, description=f"{name} reward {reward:.3f} acc {acc:.3f}")
                    every = cfg.eval.every
                    if every and (self.step % every == 0 or self.step == cfg.trainer.total_steps):
                        logger.log(step, self.evaluate(), merge=True)
                    if stop.signum is not None:
                        log.warning("signal %d: checkpoint after step %d, then stop", stop.signum, step)
                        break
                    ck = cfg.checkpoint.every
                    if ck and self.step % ck == 0 and self.step < cfg.trainer.total_steps:
                        self.save()
            self.save()
        except Exception as exc:
            where = recovery.write_traceback(self.run_dir, self.step, exc)
            raise recovery.RunError(
                f"training stopped in step {self.step}: {recovery.describe(exc)} (traceback: {where}); finished "
                f"steps are in {logger.path}, and running the same command again resumes from the newest checkpoint"
            ) from exc
        finally:
            logger.close()
        return self.run_dir

    def close(self) -> None:
        """Stop the verifier pool and this run's actors (workers passed in by the caller are left running)."""
        self.verifier.close()
        for actor in self.workers if self._own_workers else []:
            ray.kill(actor)
        if self.learner is not None:
            self.learner.close(release=self._own_workers)  # the placement group goes with the run's own engines
        elif self._own_workers:
            release(self.cfg)  # the engines failed to start: their placement group goes too


def train(cfg: RunConfig) -> Path:
    """Run a whole training job; returns the run directory."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.close()
