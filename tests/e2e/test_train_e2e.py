"""The whole loop on CPU: real vLLM rollout workers and a QLoRA (bitsandbytes NF4) learner in Ray actors, the
real verifier, the tiny model. Checks metrics, weight updates and sync, and rollout-vs-learner log-prob
agreement in every temperature mode (on-policy) against the off-policy ablation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlvr_temp.config.sampling import ControlConfig
from rlvr_temp.config.schema import load_config
from rlvr_temp.temperature import make_strategy
from rlvr_temp.temperature.control import make_controller
from tests.helpers import worst_token

pytestmark = pytest.mark.slow

BASE = [
    "rollout.prompts_per_step=8",
    "rollout.group_size=4",
    "rollout.max_response_len=40",
    "learner.mode=qlora",
    "learner.mini_batch_size=32",
    "learner.micro_batch_size=16",
    "logging.progress=false",
    "logging.tensorboard=false",
    "algorithm.max_refill_rounds=1",
]


def _trainer(tmp_path, name: str, overrides: list[str]):
    from rlvr_temp.driver.trainer import Trainer

    cfg = load_config("recipes/demo/base.yaml", [*BASE, f"trainer.run_dir={tmp_path / name}", *overrides])
    return Trainer(cfg)


def test_three_steps_then_every_mode_on_policy(ray_cluster, tmp_path, tiny_model_path):
    trainer = _trainer(tmp_path, "fixed", ["temperature.mode=fixed", "trainer.total_steps=3"])
    try:
        before = ray_cluster.get(trainer.learner.trainable_state.remote())
        versions_before = ray_cluster.get([w.version.remote() for w in trainer.workers])
        trainer.run()
        after = ray_cluster.get(trainer.learner.trainable_state.remote())
        versions_after = ray_cluster.get([w.version.remote() for w in trainer.workers])
        rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1, 2]
        for row in rows:
            for key in (
                "reward/mean",
                "acc/mean",
                "response/length_mean",
                "logprob/mismatch_mean",
                "time/generate",
                "time/verify",
            ):
                assert math.isfinite(row[key]), key
        updated = [r for r in rows if "actor/grad_norm" in r]
        assert updated, "no step produced an update"
        for r in updated:
            assert math.isfinite(r["actor/grad_norm"]) and math.isfinite(r["actor/loss"])
            # on-policy: float32 round-off (measured: mean ~4e-7, max ~1e-5), against > 1e-2 off-policy (below)
            assert r["logprob/mismatch_mean"] <= 2e-6 and r["logprob/mismatch_max"] <= 1e-4, worst_token(r)
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert changed, "no trainable weight changed"
        assert versions_before == [1] * len(trainer.workers)  # the initial sync of the learner's NF4 weights
        assert all(a - b == len(updated) for a, b in zip(versions_after, versions_before))
        assert (trainer.run_dir / "config.yaml").is_file()
        engines = json.loads((trainer.run_dir / "engines.json").read_text())
        assert [e["model_runner"] for e in engines] == ["v1"] and engines[0]["device"] == "cpu"

        trainer.cfg.eval.limit, trainer.cfg.eval.n = 6, 2  # periodic evaluation, as `eval.every` runs it
        ev = trainer.evaluate()
        assert ev["eval/synthetic/problems"] == 6 and 0.0 <= ev["eval/synthetic/avg@2"] <= 1.0
        assert ev["eval/synthetic/pass@1"] <= ev["eval/synthetic/pass@2"]
        outcomes = json.loads((trainer.run_dir / "eval" / "step_000003.json").read_text())
        assert outcomes["n"] == 2 and len(outcomes["datasets"]["synthetic"]) == 6  # every problem, every sample
        assert all(len(p["correct"]) == 2 for p in outcomes["datasets"]["synthetic"].values())

        for mode in ("mixture", "token", "token+mixture"):
            trainer.cfg.temperature.mode = mode
            trainer.strategy = make_strategy(trainer.cfg.temperature)
            trainer.cfg.algorithm.dynamic_sampling = False
            m = trainer.train_step()
            assert m["logprob/mismatch_mean"] <= 2e-6 and m["logprob/mismatch_max"] <= 1e-4, (mode, worst_token(m))
            if "token" in mode:
                assert 0.0 < m["rollout/hot_token_share"] < 1.0
            if "mixture" in mode:
                assert any(k.startswith("acc/T=") for k in m)

        # temperature.control moving the hot fraction, then the mixture spread (token+mixture): the engines sample
        # with the moved knob (the learner, at the recorded temperatures, still matches them)
        for knob in ("hot_fraction", "mixture_spread"):
            control = {"target": "entropy", "setpoint": 1.0, "knob": knob}  # far above: the rate limit each step
            trainer.cfg.temperature.control = ControlConfig(**control)
            trainer.controller = make_controller(trainer.cfg.temperature)
            first, second = trainer.train_step(), trainer.train_step()
            assert second["control/knob"] == pytest.approx(first["control/knob"] + 0.05)
            for m in (first, second):
                assert m["logprob/mismatch_max"] <= 1e-4 and m["control/saturated"] == 1.0, (knob, worst_token(m))
            if knob == "mixture_spread":
                spread = sorted(float(k[len("acc/T=") :]) for k in second if k.startswith("acc/T="))
                assert spread[-1] - spread[0] == pytest.approx(2 * (first["control/knob"] + 0.05), abs=1e-3)  # G = 4
    finally:
        trainer.close()


def test_off_policy_token_mode_has_a_clear_mismatch(ray_cluster, tmp_path, tiny_model_path):
    trainer = _trainer(
        tmp_path,
        "offp",
        [
            "temperature.mode=token",
            "temperature.logprobs=off_policy",
            "algorithm.dynamic_sampling=false",
            "temperature.token.t_low=0.7",
            "temperature.token.t_high=1.3",
        ],
    )
    try:
        m = trainer.train_step()
        assert m["logprob/mismatch_mean"] > 1e-2
    finally:
        trainer.close()


def test_dead_rollout_worker_stops_the_run_and_keeps_what_was_written(ray_cluster, tmp_path, tiny_model_path):
    """A rollout worker that dies for good (Ray does not restart it): the run stops with one line naming the step,
    finished steps stay in metrics.jsonl, and the newest checkpoint is complete and picked by auto-resume."""
    from rlvr_temp.checkpoint import find_resume
    from rlvr_temp.driver.recovery import RunError

    trainer = _trainer(
        tmp_path,
        "dead",
        ["temperature.mode=token", "trainer.total_steps=1", "checkpoint.every=1", "algorithm.dynamic_sampling=false"],
    )
    try:
        trainer.run()
        trainer.cfg.trainer.total_steps = 3
        ray_cluster.kill(trainer.workers[0])  # no restart: the worker is gone for good, recovery cannot help
        with pytest.raises(RunError) as exc:
            trainer.run()
        message = str(exc.value)
        assert len(message.splitlines()) == 1 and "training stopped in step 1" in message
        assert "RolloutWorker" in message and "resumes from the newest checkpoint" in message
        rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0]
        ckpt = find_resume(trainer.run_dir, "auto")
        assert ckpt is not None and ckpt.name == "step_00000001"
    finally:
        trainer.close()


def test_two_rollout_workers_share_the_batch_and_each_keep_their_window(ray_cluster, tmp_path, tiny_model_path):
    """`rollout.num_workers=2`: prompts are sharded over both engines, both receive every weight update, the
    on-policy mismatch stays at fp32 round-off, and each engine's entropy window is checkpointed."""
    trainer = _trainer(
        tmp_path,
        "two",
        [
            "rollout.num_workers=2",
            "ray.rollout_cpus=0.5",
            "ray.learner_cpus=0.5",
            "temperature.mode=token",
            "trainer.total_steps=1",
            "checkpoint.every=1",
            "algorithm.dynamic_sampling=false",
        ],
    )
    try:
        assert len(trainer.workers) == 2
        trainer.run()
        rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 1, rows
        assert rows[0]["logprob/mismatch_mean"] <= 2e-6 and rows[0]["logprob/mismatch_max"] <= 1e-4, worst_token(
            rows[0]
        )
        assert 0.0 < rows[0]["rollout/hot_token_share"] < 1.0
        assert ray_cluster.get([w.version.remote() for w in trainer.workers]) == [2, 2]  # initial sync + update
        states = torch.load(trainer.run_dir / "checkpoints" / "step_00000001" / "trainer.pt", weights_only=False)
        windows = [[rule["window"]["values"] for _, rule in w["rules"].values()] for w in states["temperature"]]
        assert [len(w) for w in windows] == [1, 1]  # one token rule per engine
        sizes = [v[0].numel() for v in windows]
        assert min(sizes) > 0 and not torch.equal(windows[0][0], windows[1][0])  # each engine its own window
    finally:
        trainer.close()


def test_demo_fixed_arm_learns_and_writes_the_comparison(tmp_path, tiny_model_path):
    """`make demo`'s driver on its fixed arm (20 steps): reward of the last 5 steps above the first 5."""
    import ray

    from rlvr_temp.driver.demo import run_demo
    from rlvr_temp.metrics import read_metrics

    if ray.is_initialized():
        ray.shutdown()
    paths = run_demo(out_dir=tmp_path / "demo", arms=("fixed",), extra_overrides=["logging.progress=false"])
    assert paths["plot"].stat().st_size > 10_000 and "| fixed | 20 |" in paths["table"].read_text()
    rewards = [r["reward/mean"] for r in read_metrics(tmp_path / "demo" / "fixed")]
    assert len(rewards) == 20
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5


def test_a_new_temperature_mode_is_one_registered_class(ray_cluster, tmp_path, tiny_model_path):
    """A toy mode registered from outside the package trains through the real loop (engine, verifier, learner):
    adding a mode touches temperature/ (here: this test) and nothing else."""
    from rlvr_temp.temperature import MODES, TemperatureStrategy, register_mode

    @register_mode("toy-alternate")
    class Alternate(TemperatureStrategy):
        """Odd responses 0.3 hotter than the base, even ones 0.3 colder."""

        mixture = True

        def group_temperatures(self, base_t: float, group_size: int) -> list[float]:
            return [round(base_t + (0.3 if j % 2 else -0.3), 6) for j in range(group_size)]

    try:
        trainer = _trainer(
            tmp_path,
            "toy",
            ["temperature.mode=toy-alternate", "trainer.total_steps=1", "algorithm.dynamic_sampling=false"],
        )
        try:
            trainer.run()
            rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
            assert len(rows) == 1
            assert {k for k in rows[0] if k.startswith("acc/T=")} == {"acc/T=0.7", "acc/T=1.3"}
            assert rows[0]["logprob/mismatch_mean"] <= 2e-6 and rows[0]["logprob/mismatch_max"] <= 1e-4, worst_token(
                rows[0]
            )
            assert "actor/grad_norm" in rows[0]
        finally:
            trainer.close()
    finally:
        MODES.pop("toy-alternate")
