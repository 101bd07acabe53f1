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

Left out on purpose: no buffer of surplus groups between steps (verl's DAPO recipe drops them too), no asynchronous
(off-by-one-step) rollouts. docs/loop.md walks through a step with the files involved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import AutoTokenizer

from rlvr_temp.batch import Groups, TrainBatch, select_groups, set_rewards, write_rollout_dump
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
from rlvr_temp.driver.launch import init_ray, record_engines, start_learner, start_workers
from rlvr_temp.driver.placement import release
from rlvr_temp.driver.plan import PlanError, check_ray_cluster
from rlvr_temp.evaluation.evaluate import evaluate_run
from rlvr_temp.metrics import MetricsLogger, rollout_metrics, truncate_metrics
from rlvr_temp.reward.verify import Verifier
from rlvr_temp.temperature import make_strategy
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
        self._start = {"stream": self.stream.state_dict(), "rng": rng_state()}
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
        self.step = int(ts["step"])
        truncate_metrics(self.run_dir, self.step)

    def rewind(self) -> None:
        """Back to the newest checkpoint, or to the run's start: what a resume would do, in-process (recovery.py)."""
        path = find_resume(self.run_dir, "auto")
        if path is not None:
            return self.restore(load_checkpoint(path))
        self.learner.to_start()  # fresh ranks (restarted if any has updated), in one process group
        self.stream.load_state_dict(self._start["stream"])
        set_rng_state(self._start["rng"])
        ray.get([w.reset_temperature_state.remote() for w in self.workers])
        self.step = 0
        truncate_metrics(self.run_dir, 0)

    def save(self) -> Path:
        """Write a checkpoint of the state after ``self.step`` completed steps (learner state comes from its actor)."""
        trainer_state = {
            "step": self.step,
            "stream": self.stream.state_dict(),
            "rng": rng_state(),
            "temperature": ray.get([w.temperature_state.remote() for w in self.workers]),
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
    def generate(self, rows: list[dict[str, Any]], base_t: float, seed: int) -> Groups:
        """Rollout workers (in parallel, prompts split round-robin) sample each row's ``G`` responses at the
        strategy's rollout temperatures around ``base_t``. Returns one group of :class:`Rollout` per row."""
        temps = self.strategy.group_temperatures(base_t, self.cfg.rollout.group_size)
        n_w = len(self.workers)
        shards = [rows[i::n_w] for i in range(n_w)]
        futures = [
            w.generate.remote(
                [self.prompts[r["id"]] for r in shard],
                [temps] * len(shard),
                prompt_ids=[r["id"] for r in shard],
                max_tokens=self.cfg.rollout.max_response_len,
                strategy=self.strategy,
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

    def learn(self, groups: Groups, base_t: float) -> dict[str, float]:
        """Advantages within each group, then one learner update on the resulting batch (learner actor)."""
        batch = TrainBatch.from_groups(groups, self.cfg.algorithm.advantage)
        self.engine_sync.release()  # colocated GPUs: the engines' memory to the learner (vLLM sleep mode)
        return ray.get(self.learner.train_step.remote(batch, base_t, incarnation=self.learner_id))

    def sync_weights(self) -> dict[str, float]:
        """The learner's weights to every engine (rlvr_temp.weights.sync: vLLM's weight-transfer engines);
        ``sync/*``."""
        return self.engine_sync.sync(self.learner_id, self.worker_ids)

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One training step (driver): generate + verify (with dynamic sampling), learn, sync; returns metrics."""
        cfg, ac = self.cfg, self.cfg.algorithm
        base_t = self.strategy.base_temperature(self.step)
        metrics: dict[str, float] = {"temperature/base": base_t}
        timing: dict[str, float] = {}

        def next_round(k: int) -> Groups:
            rows = next(self.stream)
            with timed(timing, "generate"):
                groups = self.generate(rows, base_t, seed=derive_seed(cfg.trainer.seed, "rollout", self.step, k))
            with timed(timing, "verify"):
                for key, v in self.score(groups, {r["id"]: r["ground_truth"] for r in rows}).items():
                    metrics[key] = metrics.get(key, 0.0) + v
            return groups

        with timed(timing, "step"):
            kept, seen, rounds = select_groups(
                next_round, cfg.rollout.prompts_per_step, ac.dynamic_sampling, ac.max_refill_rounds
            )
            metrics.update(rollout_metrics(seen, hot_bounds=self.strategy.hot_bounds(base_t), base_temperature=base_t))
            metrics.update({"train/groups_generated": len(seen), "train/groups_used": len(kept)})
            if cfg.rollout.dump:
                write_rollout_dump(self.run_dir / "rollouts" / f"step_{self.step:06d}.jsonl", seen, self.step)
            if kept:
                with timed(timing, "learn"):
                    metrics.update(self.learn(kept, base_t))
                with timed(timing, "sync"):
                    metrics.update(self.sync_weights())
            else:
                log.warning("step %d: no informative group after %d rounds; update skipped", self.step, rounds)
                metrics["train/skipped"] = 1.0
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
