"""Faults as they come on a cluster: a rollout worker or the learner killed in the middle of a step is restarted by
Ray, the run is put back where it was (the step's boundary, or the newest checkpoint) and the step is retried; the
finished run's metrics equal an undisturbed run's. Errors that end a run arrive as one line."""

from __future__ import annotations

import json

import pytest
import ray

from rlvr_temp.config.schema import load_config
from rlvr_temp.driver.trainer import Trainer

pytestmark = pytest.mark.slow

BASE = [
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_response_len=24",
    "learner.mini_batch_size=16",
    "learner.micro_batch_size=8",
    "logging.progress=false",
    "logging.tensorboard=false",
    "algorithm.dynamic_sampling=false",
    "trainer.total_steps=3",
    "checkpoint.every=1",
]


class KillingTrainer(Trainer):
    """Kills an actor just as one of its calls of a chosen step is made (Ray restarts it with a fresh state)."""

    kill: frozenset[tuple[str, int]] = frozenset()

    def _maybe_kill(self, what: str, actor) -> None:
        if (what, self.step) in self.kill:
            self.kill = self.kill - {(what, self.step)}
            ray.kill(actor, no_restart=False)

    def generate(self, rows, base_t, seed, strategy=None):
        self._maybe_kill("worker", self.workers[0])
        return super().generate(rows, base_t, seed, strategy)

    def learn(self, groups, base_t):
        self._maybe_kill("learner", self.learner.ranks[0])  # the learner group's one rank
        return super().learn(groups, base_t)


def _run(tmp_path, name: str, kill: frozenset[tuple[str, int]]) -> list[dict]:
    cfg = load_config("recipes/demo/base.yaml", [*BASE, f"trainer.run_dir={tmp_path / name}"])
    trainer = KillingTrainer(cfg)
    trainer.kill = kill
    try:
        trainer.run()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return rows


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time") and k != "train/retries"} for r in rows]


def _same_run(a: list[dict], b: list[dict]) -> None:
    """The two runs' metrics are equal, bitwise: the same steps and keys, sampled tokens, rewards, learner statistics
    and rollout/learner log-prob gaps (``logprob/mismatch_*``, worst token included). A restarted engine redoes its
    step's rollout as one batch with the same per-request seeds and weights, so the same decode schedule (and
    kernels: log-probs bitwise), and the learner comes back from its checkpoint bitwise (as in test_resume_e2e)."""
    a, b = _comparable(a), _comparable(b)
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            assert v == rb[k], (ra["step"], k, v, rb[k])


def _same_policy(a, b) -> None:
    """The final checkpoints' policy weights are equal, tensor by tensor."""
    import torch
    from safetensors.torch import load_file

    wa = load_file(str(a / "checkpoints" / "step_00000003" / "policy.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step_00000003" / "policy.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_killed_worker_and_learner_are_recovered_and_the_metrics_are_unchanged(ray_cluster, tmp_path):
    clean = _run(tmp_path, "clean", frozenset())
    assert [r["step"] for r in clean] == [0, 1, 2] and all(r["train/retries"] == 0 for r in clean)
    # one run, two faults: the worker in step 1 (retried from the step's boundary), the learner in step 2 (back to
    # the checkpoint after step 2: its state is gone); train/retries counts them
    killed = _run(tmp_path, "killed", frozenset({("worker", 1), ("learner", 2)}))
    assert [r["train/retries"] for r in killed] == [0, 1, 2]
    _same_run(killed, clean)
    _same_policy(tmp_path / "killed", tmp_path / "clean")


def test_an_error_inside_an_actor_ends_the_run_in_one_line(ray_cluster, tmp_path):
    from rlvr_temp.driver.recovery import RunError

    cfg = load_config("recipes/demo/base.yaml", [*BASE, f"trainer.run_dir={tmp_path / 'bad'}", "trainer.total_steps=1"])
    trainer = Trainer(cfg)
    try:
        trainer.cfg.rollout.__dict__["top_p"] = 2.0  # past the schema's check: the worker refuses it in its actor
        with pytest.raises(RunError) as exc:
            trainer.run()
    finally:
        trainer.close()
    message = str(exc.value)
    assert len(message.splitlines()) == 1
    assert "step 0" in message and "RolloutWorker" in message and "top_p must lie in (0, 1]" in message
    path = message.split("traceback: ")[1].split(")")[0]
    with open(path) as fh:
        assert "Traceback" in fh.read()
