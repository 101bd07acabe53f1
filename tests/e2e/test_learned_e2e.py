"""`learned` mode end to end on CPU: the TTM head runs inside vLLM on the engine's hidden states, its per-token
temperatures are recorded, the learner recomputes them with the head in the graph, and the head is trained."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr_temp.config.schema import load_config
from tests.helpers import worst_token

pytestmark = pytest.mark.slow


def test_learned_mode_records_trains_and_matches(tmp_path, tiny_model_path):
    import ray

    from rlvr_temp.driver.trainer import Trainer

    cfg = load_config(
        "recipes/demo/learned.yaml",
        [
            f"trainer.run_dir={tmp_path / 'learned'}",
            f"model.path={tiny_model_path}",
            "rollout.prompts_per_step=8",
            "rollout.group_size=8",
            "rollout.max_response_len=32",
            "algorithm.max_refill_rounds=3",
            "logging.progress=false",
            "logging.tensorboard=false",
            "learner.lr=0.01",
            "learner.warmup_steps=0",
        ],
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        trainer = Trainer(cfg)
    except BaseException:
        ray.shutdown()  # a failed start must not leave Ray up for the next test module
        raise
    try:
        lo, hi = cfg.temperature.learned.t_low, cfg.temperature.learned.t_high
        head_before = {k: v for k, v in ray.get(trainer.learner.trainable_state.remote()).items() if "ttm" in k}
        groups = trainer.generate(list(trainer.stream.dataset)[:4], cfg.temperature.base, seed=1)
        temps = [t for g in groups for r in g for t in r.token_temperatures]
        assert temps and all(lo - 1e-5 <= t <= hi + 1e-5 for t in temps)
        assert len({round(t, 7) for t in temps}) > 1  # the head's output varies across tokens
        m = trainer.train_step()
        assert m["logprob/mismatch_mean"] <= 2e-6 and m["logprob/mismatch_max"] <= 1e-4, worst_token(m)
        assert m["actor/grad_norm"] > 0, json.dumps(m)
        head_after = {k: v for k, v in ray.get(trainer.learner.trainable_state.remote()).items() if "ttm" in k}
        assert head_before.keys() == head_after.keys() and head_before
        assert any(not torch.equal(head_before[k], head_after[k]) for k in head_before)
        m2 = trainer.train_step()  # the engines received the new head: still on-policy
        assert m2["logprob/mismatch_mean"] <= 2e-6 and m2["logprob/mismatch_max"] <= 1e-4, worst_token(m2)
    finally:
        trainer.close()
        ray.shutdown()
