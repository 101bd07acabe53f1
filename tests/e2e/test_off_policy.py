"""One step off-policy (``trainer.off_policy_steps: 1``, split layout) with a temperature controller and importance
correction: the run trains, step k learns from rollouts one policy version old, and a run resumed from a mid-run
checkpoint (which holds the rollouts collected ahead) continues bit for bit -- metrics and final weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlvr_temp.config.schema import load_config

pytestmark = pytest.mark.slow

OVERRIDES = [
    "rollout.prompts_per_step=4",
    "rollout.group_size=8",
    "rollout.max_response_len=24",
    "temperature.mode=token",
    "temperature.token.window=300",
    "temperature.token.t_low=0.8",
    "temperature.token.t_high=1.3",
    "temperature.control.target=entropy",
    "temperature.control.knob=t_high",
    "temperature.control.kp=1.0",
    "resources.layout=split",
    "trainer.off_policy_steps=1",
    "trainer.total_steps=4",
    "checkpoint.every=1",
    "checkpoint.keep=10",
    "learner.mini_batch_size=16",
    "learner.micro_batch_size=16",
    "learner.warmup_steps=0",
    "eval.every=0",
    "logging.progress=false",
    "logging.tensorboard=false",
]


def _run(tmp_path, name: str, *extra: str):
    from rlvr_temp.driver.trainer import Trainer

    cfg = load_config("recipes/demo/base.yaml", [*OVERRIDES, f"trainer.run_dir={tmp_path / name}", *extra])
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer.run_dir, rows


def _no_time(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("time", "sync/")) and k != "train/retries"}


def test_one_step_off_policy_trains_logs_staleness_and_resumes_bitwise(ray_cluster, tmp_path, tiny_model_path):
    run, rows = _run(tmp_path, "straight")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r["train/staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]  # step 0 is generated before any update
    assert all("time/collect_ahead" in r for r in rows[:3]) and "time/collect_ahead" not in rows[3]
    assert sum(r["actor/grad_norm"] > 0 for r in rows) >= 3  # a step whose groups all tie has no gradient
    for r in rows:
        assert math.isfinite(r["actor/grad_norm"]) and (r["actor/grad_norm"] > 0) == (r["train/informative_share"] > 0)
        # importance correction is on (auto: off-policy run), at the per-token temperatures
        assert r["correction/ratio_mean"] > 0 and r["correction/ratio_max"] >= 1.0
        assert r["control/knob"] >= 0.8 and math.isfinite(r["control/measured"])
    # stale rollouts: the learner's log-probs now differ from the engine's by a policy update, not by round-off
    assert min(r["logprob/mismatch_max"] for r in rows[1:]) > 100 * rows[0]["logprob/mismatch_max"]
    assert len({r["control/knob"] for r in rows}) > 1  # the controller moved t_high

    resumed, again = _run(tmp_path, "resumed", f"trainer.resume={run / 'checkpoints' / 'step_00000002'}")
    assert [r["step"] for r in again] == [2, 3]
    assert [_no_time(r) for r in again] == [_no_time(r) for r in rows[2:]]
    from safetensors.torch import load_file

    a = load_file(str(run / "checkpoints" / "step_00000004" / "policy.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_00000004" / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
