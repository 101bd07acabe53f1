"""The step's records in-process: building the learner's batch, DAPO dynamic sampling, rollout metrics and the
metrics log (no Ray, no vLLM)."""

from __future__ import annotations

import json
import math

import pytest

from rlvr_temp.batch import Rollout, TrainBatch, informative, select_groups
from rlvr_temp.metrics import MetricsLogger, read_metrics, rollout_metrics, truncate_metrics


def _r(pid: str, reward: float, n: int = 3, t: float = 1.0, temps: list[float] | None = None) -> Rollout:
    return Rollout(
        prompt_id=pid,
        prompt_token_ids=[1, 2],
        token_ids=list(range(n)),
        token_temperatures=temps or [t] * n,
        token_entropies=[0.5] * n,
        token_logprobs=[-1.0] * n,
        finish_reason="stop",
        temperature=t,
        text="",
        reward=reward,
        extra={"correct": float(reward > 0)},
    )


def test_train_batch_from_groups_normalises_within_each_group():
    groups = [[_r("a", 1.0), _r("a", 0.0)], [_r("b", 1.0, t=1.2), _r("b", 1.0, t=0.8)]]
    batch = TrainBatch.from_groups(groups, "grpo")
    assert len(batch) == 4 and batch.response_temperatures == [1.0, 1.0, 1.2, 0.8]
    assert batch.advantages[0] == pytest.approx(-batch.advantages[1]) and batch.advantages[0] > 0
    assert batch.advantages[2:] == [0.0, 0.0]  # equal rewards: zero advantage, never NaN
    drgrpo = TrainBatch.from_groups(groups, "drgrpo")
    assert drgrpo.advantages == pytest.approx([0.5, -0.5, 0.0, 0.0])


def _rounds(spec: list[list[bool]]):
    """next_round(k) for rounds whose groups are informative (True) or not (False); records the calls."""
    calls: list[int] = []

    def next_round(k: int):
        calls.append(k)
        return [[_r(f"{k}-{i}", 1.0), _r(f"{k}-{i}", 0.0 if inf else 1.0)] for i, inf in enumerate(spec[k])]

    return next_round, calls


def test_dynamic_sampling_refills_truncates_and_is_bounded():
    next_round, calls = _rounds([[True, False, False], [True, True, True], [True] * 3])
    kept, seen, rounds = select_groups(next_round, batch_size=3, dynamic=True, max_refill_rounds=2)
    assert calls == [0, 1] and rounds == 2 and len(seen) == 6
    assert [g[0].prompt_id for g in kept] == ["0-0", "1-0", "1-1"]  # filled in order, the surplus dropped

    next_round, calls = _rounds([[False] * 3] * 4)
    kept, seen, rounds = select_groups(next_round, batch_size=3, dynamic=True, max_refill_rounds=2)
    assert kept == [] and calls == [0, 1, 2] and rounds == 3 and len(seen) == 9  # skip path, after the bound

    next_round, calls = _rounds([[False, True, False]])
    kept, seen, rounds = select_groups(next_round, batch_size=3, dynamic=False, max_refill_rounds=2)
    assert len(kept) == 3 and calls == [0] and rounds == 1  # off: one round, used as it is


def test_informative_matches_the_loss_module_filter():
    groups = [[_r("a", 1.0), _r("a", 1.0)], [_r("b", 0.0), _r("b", 1.0)], [_r("c", -1.0)]]
    assert informative(groups) == [False, True, False]
    assert informative([]) == []


def test_rollout_metrics_per_temperature_and_hot_share():
    groups = [
        [_r("a", 1.0, t=1.0, temps=[1.4, 0.8, 0.8]), _r("a", 0.0, t=1.2, temps=[1.6, 1.6, 1.0])],
    ]
    m = rollout_metrics(groups, hot_bounds=(0.8, 1.4), base_temperature=1.0)
    assert m["reward/mean"] == 0.5 and m["acc/mean"] == 0.5
    assert m["acc/T=1"] == 1.0 and m["acc/T=1.2"] == 0.0
    assert m["rollout/hot_token_share"] == pytest.approx(3 / 6)
    assert m["response/length_mean"] == 3 and m["rollout/entropy_mean"] == 0.5
    assert "rollout/hot_token_share" not in rollout_metrics(groups)
    assert rollout_metrics([]) == {}


def test_metrics_logger_appends_merges_and_truncates(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log(0, {"reward/mean": 0.25})
    log.log(1, {"reward/mean": 0.5})
    log.log(1, {"eval/acc": 0.75}, merge=True)
    log.log(2, {"reward/mean": math.nan})
    log.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[1]["reward/mean"] == 0.5 and rows[1]["eval/acc"] == 0.75
    assert math.isnan(rows[2]["reward/mean"])
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "torn')  # a killed run's last line
    truncate_metrics(tmp_path, 2)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]
