"""The training loop, in one file: rollouts -> verifier -> advantages -> learner update -> weight sync -> metrics.

Per step ``s``:

1. the temperature schedule gives the base temperature ``T_s`` (SPEC §4); each prompt's ``G`` responses get
   their rollout temperatures (all ``T_s``, or the mixture around it, SPEC §3);
2. rollout workers (Ray actors around vLLM) sample them; in ``token`` modes the entropy rule sets every token's
   temperature inside vLLM (SPEC §1) and every token's temperature, entropy and log-prob come back;
3. the verifier (math-verify in worker processes, hard time bound) scores the last ``\\boxed{}``; rewards are
   shaped (binary / signed, format penalty, DAPO overlong penalty);
4. DAPO dynamic sampling keeps groups whose rewards differ, generating more prompts (bounded) to fill the batch;
5. group-normalised advantages (GRPO / Dr.GRPO) over each prompt's whole group, all temperatures together;
6. the learner recomputes log-probs at the same per-token temperatures (on-policy, SPEC §2) and updates;
7. merged plain-dtype weights go to every rollout worker (in place, no engine restart);
8. metrics go to ``metrics.jsonl`` / TensorBoard, and a progress bar shows reward and ETA.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from rlvr_temp import losses
from rlvr_temp.checkpoint import (
    check_compatible,
    find_resume,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlvr_temp.config import RunConfig, save_config
from rlvr_temp.metrics import MetricsLogger, rollout_metrics
from rlvr_temp.rollout import Rollout, write_rollout_dump
from rlvr_temp.temperature import make_schedule, rollout_temperatures

log = logging.getLogger("rlvr_temp.trainer")


# ------------------------------------------------------------------------------------------------- set-up
def resolve_model(path: str) -> str:
    """``tiny`` -> the embedded model (built if missing); otherwise a local Hugging Face directory."""
    if path == "tiny":
        from rlvr_temp.tiny_model import ensure_tiny_model

        return str(ensure_tiny_model())
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model.path {path!r}: no such directory (models load from local paths only)")
    return path


def load_train_rows(cfg: RunConfig) -> list[dict[str, Any]]:
    """Training prompts as rows with ``id``, ``question``, ``ground_truth``."""
    d = cfg.data
    if d.train == "synthetic":
        from rlvr_temp import synthetic

        s = d.synthetic
        rows = synthetic.generate(s.n_train, levels=s.levels, seed=s.seed, split="train")
        rows = [{"id": r["id"], "question": r["question"], "ground_truth": r["answer"]} for r in rows]
    else:
        from rlvr_temp.data import load_prompts

        ds = load_prompts(d.train, question_key=d.question_key, answer_key=d.answer_key, limit=d.limit)
        rows = [dict(r) for r in ds]
    if d.limit is not None:
        rows = rows[: d.limit]
    if not rows:
        raise ValueError(f"data.train {d.train!r} gave no rows")
    return rows


def init_ray(cfg: RunConfig) -> None:
    """Join ``ray.address`` / ``RAY_ADDRESS`` if given, else start a local cluster (no dashboard)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "RLVR_TEMP_CACHE") if k in os.environ}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env={"env_vars": env})


def ttm_settings(cfg: RunConfig) -> dict[str, Any] | None:
    """Engine-side TTM head settings in ``learned`` mode (None otherwise)."""
    if cfg.temperature.mode != "learned":
        return None
    lc = cfg.temperature.learned
    return {"heads": lc.heads, "t_min": lc.t_min, "t_max": lc.t_max, "init_temperature": lc.init_temperature}


def start_workers(cfg: RunConfig, model_path: str, ttm: dict[str, Any] | None = None) -> list[Any]:
    """Start ``rollout.num_workers`` rollout actors with the recipe's engine settings and resources."""
    from rlvr_temp.rollout import remote_worker

    rc, ec = cfg.ray, cfg.rollout.engine
    worker_cls = remote_worker(rc.rollout_cpus, rc.rollout_gpus)
    return [
        worker_cls.remote(
            model_path, dtype=cfg.model.dtype, max_model_len=cfg.model.max_model_len, seed=cfg.trainer.seed + i,
            kv_cache_gib=ec.kv_cache_gib, gpu_memory_utilization=ec.gpu_memory_utilization,
            enforce_eager=ec.enforce_eager, enable_prefix_caching=ec.enable_prefix_caching,
            max_num_seqs=ec.max_num_seqs, tensor_parallel_size=ec.tensor_parallel_size,
            num_threads=max(1, int(rc.rollout_cpus)), trust_remote_code=cfg.model.trust_remote_code, ttm=ttm,
            log_level=cfg.logging.engine_log_level,
        )
        for i in range(cfg.rollout.num_workers)
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Owns the actors and the loop state of one run."""

    def __init__(self, cfg: RunConfig, workers: list[Any] | None = None) -> None:
        """Start (or, with ``workers``, reuse — their entropy windows are reset) the rollout workers, start the
        learner, resume from a checkpoint when there is one, and sync the learner's weights to the engines."""
        import ray
        from transformers import AutoTokenizer

        from rlvr_temp.data import PromptStream, format_prompt
        from rlvr_temp.learner import LearnerSettings, remote_learner
        from rlvr_temp.verify import Verifier

        self.cfg = cfg
        self.run_dir = Path(cfg.trainer.run_dir)
        ckpt_path = find_resume(self.run_dir, cfg.trainer.resume)
        ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
        if ckpt is not None:
            check_compatible(ckpt["config"], cfg, ckpt_path)  # before anything is started or written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir)
        torch.manual_seed(cfg.trainer.seed)
        self.model_path = resolve_model(cfg.model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.rows = load_train_rows(cfg)
        self.prompts = {
            r["id"]: format_prompt(
                r["question"], self.tokenizer, template=cfg.data.prompt_template, suffix=cfg.data.prompt_suffix,
                use_chat_template=cfg.data.use_chat_template,
            )
            for r in self.rows
        }  # fmt: skip
        self.stream = PromptStream(self.rows, cfg.rollout.prompts_per_step, seed=cfg.trainer.seed,
                                   shuffle=cfg.data.shuffle)  # fmt: skip
        self.schedule = make_schedule(cfg.temperature.schedule.kind, **self._schedule_kwargs())
        self.verifier = Verifier(num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s)
        init_ray(cfg)
        rc = cfg.ray
        self._own_workers = workers is None
        if workers is None:
            self.workers = start_workers(cfg, self.model_path, ttm_settings(cfg))
        else:
            if len(workers) != cfg.rollout.num_workers:
                raise ValueError(f"{len(workers)} workers given, rollout.num_workers is {cfg.rollout.num_workers}")
            self.workers = list(workers)
            ray.get([w.reset_temperature_state.remote() for w in self.workers])
        self.learner = remote_learner(rc.learner_cpus, rc.learner_gpus).remote(
            self.model_path, LearnerSettings.from_config(cfg), num_threads=max(1, int(rc.learner_cpus))
        )
        self.step = 0
        self._stop_signal: int | None = None
        try:
            ray.get([w.ping.remote() for w in self.workers] + [self.learner.ping.remote()])
            if ckpt is not None:
                self.restore(ckpt)
                log.warning("resumed from %s at step %d", ckpt_path, self.step)
            self.sync_weights()  # the engines start from the learner's (e.g. NF4-quantised) weights
        except BaseException:
            self.close()  # do not leave actors or verifier processes behind
            raise

    # ------------------------------------------------------------------------------------------ checkpoints
    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a loaded checkpoint: learner, stream, RNG, entropy windows, step, metrics."""
        import ray

        ts = ckpt["trainer_state"]
        ray.get(self.learner.set_state.remote(ckpt["learner_state"]))
        self.stream.load_state_dict(ts["stream"])
        set_rng_state(ts["rng"])
        temps = ts["temperature"]
        if len(temps) != len(self.workers):
            raise ValueError(f"checkpoint has {len(temps)} rollout workers' state, this run has {len(self.workers)}")
        ray.get([w.load_temperature_state.remote(t) for w, t in zip(self.workers, temps)])
        self.step = int(ts["step"])
        self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics rows of steps after the checkpoint (written before a crash), atomically."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        import json

        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] < step:
                    keep.append(line)
            except (ValueError, KeyError):
                continue
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        tmp.replace(path)

    def save(self) -> Path:
        """Write a checkpoint of the current state (after ``self.step`` completed steps)."""
        import ray

        learner_state = ray.get(self.learner.get_state.remote())
        trainer_state = {
            "step": self.step, "stream": self.stream.state_dict(), "rng": rng_state(),
            "temperature": ray.get([w.temperature_state.remote() for w in self.workers]),
            "metrics_rows": self.step,
        }  # fmt: skip
        return save_checkpoint(self.run_dir, self.step, learner_state=learner_state, trainer_state=trainer_state,
                               config=self.cfg, keep=self.cfg.checkpoint.keep)  # fmt: skip

    def _schedule_kwargs(self) -> dict[str, Any]:
        s, base = self.cfg.temperature.schedule, self.cfg.temperature.base
        if s.kind == "constant":
            return {"start": base}
        if s.kind == "spike":
            return {"start": base, "every": s.every, "increment": s.increment}
        return {"start": base, "end": s.end, "steps": s.steps}

    # ------------------------------------------------------------------------------------------ phases
    def token_rule(self, base_t: float) -> dict[str, Any] | None:
        tc = self.cfg.temperature
        if tc.mode not in ("token", "token+mixture"):
            return None
        t = tc.token
        shift = base_t - tc.base  # the schedule moves the rule's temperatures with the base
        return {
            "t_low": t.t_low + shift, "t_high": t.t_high + shift, "hot_fraction": t.hot_fraction,
            "window": t.window, "scope": t.scope, "base_temperature": base_t, "warmup_tokens": t.warmup_tokens,
        }  # fmt: skip

    def learned_spec(self) -> dict[str, float] | None:
        """Per-request mapping of the head's output to sampling temperatures in ``learned`` mode."""
        tc = self.cfg.temperature
        if tc.mode != "learned":
            return None
        lc = tc.learned
        return {"t_low": lc.t_low, "t_high": lc.t_high, "t_min": lc.t_min, "t_max": lc.t_max, "base": tc.base}

    def group_temperatures(self, base_t: float) -> list[float]:
        tc, g = self.cfg.temperature, self.cfg.rollout.group_size
        if tc.mode in ("mixture", "token+mixture"):
            spec = "offsets" if tc.mixture.kind == "offsets" else tc.mixture.counts
            nominal = None if tc.mixture.kind == "offsets" else tc.base
            return rollout_temperatures(g, base_t, spec, offset_step=tc.mixture.step, nominal_base=nominal)
        return rollout_temperatures(g, base_t, None)

    def generate(self, rows: list[dict], base_t: float, seed: int) -> list[list[Rollout]]:
        import ray

        temps = self.group_temperatures(base_t)
        rule = self.token_rule(base_t)
        n_w = len(self.workers)
        shards = [rows[i::n_w] for i in range(n_w)]
        futures = [
            w.generate.remote(
                [self.prompts[r["id"]] for r in shard], [temps] * len(shard), prompt_ids=[r["id"] for r in shard],
                max_tokens=self.cfg.rollout.max_response_len, token_rule=rule, top_p=self.cfg.rollout.top_p,
                top_k=self.cfg.rollout.top_k, seed=seed * 101 + k, learned=self.learned_spec(),
            )
            for k, (w, shard) in enumerate(zip(self.workers, shards)) if shard
        ]  # fmt: skip
        groups: list[list[Rollout]] = [g for part in ray.get(futures) for g in part]
        return groups

    def score(self, groups: list[list[Rollout]], truth: dict[str, str]) -> dict[str, float]:
        from rlvr_temp.verify import last_boxed, shape_reward

        flat = [r for g in groups for r in g]
        before = dict(self.verifier.stats)
        correct = self.verifier.score_batch([r.text for r in flat], [truth[r.prompt_id] for r in flat])
        rc, ol = self.cfg.reward, self.cfg.algorithm.overlong
        max_len = self.cfg.rollout.max_response_len
        for r, c in zip(flat, correct):
            r.extra["correct"] = c
            r.reward = shape_reward(c, mode=rc.mode, has_boxed=last_boxed(r.text) is not None,
                                    format_penalty=rc.format_penalty)  # fmt: skip
            if ol.enabled:
                length = torch.tensor([float(len(r.token_ids))])
                r.reward += float(losses.overlong_penalty(length, max_len, ol.buffer, ol.penalty)[0])
        after = self.verifier.stats
        return {"verify/timeouts": after["timeouts"] - before["timeouts"],
                "verify/no_boxed": after["no_boxed"] - before["no_boxed"]}  # fmt: skip

    def build_batch(self, groups: list[list[Rollout]]) -> dict[str, list]:
        flat = [r for g in groups for r in g]
        rewards = torch.tensor([r.reward for r in flat], dtype=torch.float64)
        gid = torch.tensor([i for i, g in enumerate(groups) for _ in g])
        adv = losses.get_advantage(self.cfg.algorithm.advantage)(rewards, gid)
        return {
            "prompt_ids": [r.prompt_token_ids for r in flat],
            "response_ids": [r.token_ids for r in flat],
            "token_temperatures": [r.token_temperatures for r in flat],
            "rollout_logprobs": [r.token_logprobs for r in flat],
            "token_entropies": [r.token_entropies for r in flat],
            "advantages": adv.float().tolist(),
        }

    def sync_weights(self) -> float:
        import ray

        t0 = time.perf_counter()
        ref = self.learner.export_weights.remote()
        ray.get([w.update_weights.remote(ref) for w in self.workers])
        return time.perf_counter() - t0

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        import ray

        cfg, ac = self.cfg, self.cfg.algorithm
        step_start = time.perf_counter()
        base_t = float(self.schedule.value(self.step))
        metrics: dict[str, float] = {"temperature/base": base_t}
        timing = {"generate": 0.0, "verify": 0.0}
        kept: list[list[Rollout]] = []
        seen: list[list[Rollout]] = []
        for round_ in range(1 + (ac.max_refill_rounds if ac.dynamic_sampling else 0)):
            rows = next(self.stream)
            truth = {r["id"]: r["ground_truth"] for r in rows}
            t0 = time.perf_counter()
            groups = self.generate(rows, base_t, seed=cfg.trainer.seed * 1_000_003 + self.step * 17 + round_)
            t1 = time.perf_counter()
            for k, v in self.score(groups, truth).items():
                metrics[k] = metrics.get(k, 0) + v
            timing["generate"] += t1 - t0
            timing["verify"] += time.perf_counter() - t1
            seen += groups
            if not ac.dynamic_sampling:
                kept = groups
                break
            kept += [g for g in groups if len({r.reward for r in g}) > 1]
            if len(kept) >= cfg.rollout.prompts_per_step:
                break
        kept = kept[: cfg.rollout.prompts_per_step]
        rule = self.token_rule(base_t)
        metrics.update(rollout_metrics(seen, t_low=rule and rule["t_low"], t_high=rule and rule["t_high"],
                                       base_temperature=base_t))  # fmt: skip
        metrics["train/groups_generated"] = len(seen)
        metrics["train/groups_used"] = len(kept)
        if cfg.rollout.dump:
            write_rollout_dump(self.run_dir / "rollouts" / f"step_{self.step:06d}.jsonl", seen, self.step)
        t2 = time.perf_counter()
        if kept:
            batch = self.build_batch(kept)
            metrics.update(ray.get(self.learner.train_step.remote(batch, base_t)))
            timing["learn"] = time.perf_counter() - t2
            timing["sync"] = self.sync_weights()
        else:
            log.warning("step %d: no informative group after %d rounds; update skipped", self.step, round_ + 1)
            metrics["train/skipped"] = 1.0
        metrics.update({f"time/{k}": v for k, v in timing.items()})
        metrics["time/step"] = time.perf_counter() - step_start
        self.step += 1
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Periodic evaluation with the first rollout worker (current weights, token rule off)."""
        from rlvr_temp.evaluate import evaluate_with

        ev, d = self.cfg.eval, self.cfg.data
        t0 = time.perf_counter()
        results = evaluate_with(
            self.workers[0], self.tokenizer, self.verifier, ev.datasets, n=ev.n, temperature=ev.temperature,
            top_p=ev.top_p, max_tokens=ev.max_tokens or self.cfg.rollout.max_response_len, limit=ev.limit,
            template=d.prompt_template, suffix=d.prompt_suffix, use_chat_template=d.use_chat_template,
            seed=self.cfg.trainer.seed * 7919 + self.step,
        )  # fmt: skip
        out = {f"{name}/{k}": v for name, r in results.items() for k, v in r.items()}
        out["time"] = time.perf_counter() - t0
        return out

    def run(self) -> Path:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cfg = self.cfg
        logger = MetricsLogger(self.run_dir, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                               run_name=cfg.trainer.name, config=cfg.to_dict())  # fmt: skip
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TimeRemainingColumn()]  # fmt: skip
        name = cfg.trainer.name or self.run_dir.name
        every = cfg.checkpoint.every
        previous = self._install_signal_handlers()
        try:
            with Progress(*columns, disable=not cfg.logging.progress, transient=False) as bar:
                task = bar.add_task(name, total=cfg.trainer.total_steps, completed=self.step)
                while self.step < cfg.trainer.total_steps:
                    step = self.step
                    m = self.train_step()
                    logger.log(step, m)
                    bar.update(task, advance=1, description=f"{name} reward {m.get('reward/mean', 0):.3f} "
                               f"acc {m.get('acc/mean', 0):.3f}")  # fmt: skip
                    ev = cfg.eval
                    if ev.every and (self.step % ev.every == 0 or self.step == cfg.trainer.total_steps):
                        logger.log(step, {f"eval/{k}": v for k, v in self.evaluate().items()}, merge=True)
                    if self._stop_signal is not None:
                        log.warning("signal %d: checkpoint after step %d, then stop", self._stop_signal, step)
                        break
                    if every and self.step % every == 0 and self.step < cfg.trainer.total_steps:
                        self.save()
            self.save()
        except Exception as exc:
            log.error("training stopped during step %d (%s: %s); finished steps are in %s and the newest "
                      "checkpoint is resumed by running the same command again", self.step, type(exc).__name__,
                      exc, logger.path)  # fmt: skip
            raise
        finally:
            logger.close()
            self._restore_signal_handlers(previous)
        return self.run_dir

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM / SIGINT finish the current step, checkpoint, and stop (main thread only)."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, _frame: Any) -> None:
            if self._stop_signal is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        import signal

        for sig, h in previous.items():
            signal.signal(sig, h)

    def close(self) -> None:
        import ray

        self.verifier.close()
        for actor in [*(self.workers if self._own_workers else []), self.learner]:
            ray.kill(actor)


def train(cfg: RunConfig) -> Path:
    """Run a whole training job; returns the run directory."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.close()
