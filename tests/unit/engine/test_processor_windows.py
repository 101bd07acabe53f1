"""Entropy windows in the vLLM processor: one window per window setting for a whole run (a schedule or a mixture
moves temperatures, never the window), and no per-sequence window outlives its request."""

from __future__ import annotations

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from rlvr_temp.config.schema import TemperatureConfig
from rlvr_temp.engine.processor_v1 import TemperatureProcessor
from rlvr_temp.temperature import make_strategy
from rlvr_temp.temperature.request import EXTRA_KEY


def _proc() -> TemperatureProcessor:
    return TemperatureProcessor(None, torch.device("cpu"), False)


def _params(uid: str, spec: dict) -> SamplingParams:
    return SamplingParams(temperature=1.0, extra_args={EXTRA_KEY: {"uid": uid, **spec}})


def _token_strategy(scope: str = "global", schedule: dict | None = None):
    cfg = TemperatureConfig.model_validate(
        {
            "mode": "token+mixture",
            "base": 1.0,
            "token": {"t_low": 0.8, "t_high": 1.4, "hot_fraction": 0.25, "window": 1000, "scope": scope},
            "schedule": schedule or {"kind": "constant"},
        }
    )
    return make_strategy(cfg)


def test_a_schedule_keeps_one_window_that_keeps_growing():
    """Linear schedule over 3 steps, mixture temperatures within each: one window, 3 x 2 rows x 5 tokens long."""
    strategy = _token_strategy(schedule={"kind": "linear", "end": 1.3, "steps": 2})
    proc = _proc()
    torch.manual_seed(0)
    lengths = []
    for step in range(3):
        base_t = strategy.base_temperature(step)
        temps = strategy.group_temperatures(base_t, 2)
        outs: list[list[int]] = [[], []]
        added = [(i, _params(f"s{step}r{i}", strategy.request_spec(t)), [1], outs[i]) for i, t in enumerate(temps)]
        proc.update_state(BatchUpdate(2, [], added, []))
        for _ in range(5):
            proc.apply(torch.randn(2, 16) * 3)
            for o in outs:
                o.append(1)
        records = proc.drain()
        proc.update_state(BatchUpdate(2, [0, 1], [], []))
        assert len(proc.rules) == 1
        lengths.append(len(next(iter(proc.rules.values())).window))
        # each response's temperatures are the rule's two, shifted by its rollout temperature - the configured base
        for i, t in enumerate(temps):
            shift = t - 1.0
            assert {round(x, 5) for x in records[f"s{step}r{i}"][0]} <= {round(0.8 + shift, 5), round(1.4 + shift, 5)}
    assert lengths == [10, 20, 30]
    assert len(proc.state_dict()["rules"]) == 1


def test_rules_with_other_temperatures_share_the_window_and_keep_their_own_temperatures():
    strategy = _token_strategy()
    other = {**strategy.request_spec(1.0)}
    other["token_rule"] = {**other["token_rule"], "t_low": 0.5, "t_high": 2.0}
    proc = _proc()
    outs: list[list[int]] = [[], []]
    proc.update_state(
        BatchUpdate(
            2,
            [],
            [(0, _params("a", strategy.request_spec(1.0)), [1], outs[0]), (1, _params("b", other), [1], outs[1])],
            [],
        )
    )
    torch.manual_seed(1)
    for _ in range(20):
        proc.apply(torch.randn(2, 16) * 3)
        for o in outs:
            o.append(1)
    rec = proc.drain()
    assert len(proc.rules) == 1
    assert {round(x, 5) for x in rec["a"][0]} == {0.8, 1.4}
    assert {round(x, 5) for x in rec["b"][0]} == {0.5, 2.0}


def test_a_one_way_move_onto_an_occupied_row_releases_its_window():
    """vLLM condenses its batch by moving a request onto the row of one that finished, without listing that
    removal: the finished request's per-sequence window must go."""
    strategy = _token_strategy(scope="sequence")
    proc = _proc()
    outs: list[list[int]] = [[], []]
    added = [(i, _params(u, strategy.request_spec(1.0)), [1], outs[i]) for i, u in enumerate("ab")]
    proc.update_state(BatchUpdate(2, [], added, []))
    proc.apply(torch.randn(2, 16))
    assert proc.open_windows() == 2
    proc.update_state(BatchUpdate(2, [], [], [(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))  # b onto a's row
    assert proc.open_windows() == 1
    outs[1].append(1)
    proc.apply(torch.randn(2, 16))
    assert set(proc.drain()) == {"a", "b"}
    proc.release(["b"])
    assert proc.open_windows() == 0


@pytest.mark.slow
def test_real_engine_keeps_one_window_and_leaks_none(tiny_model_path):
    """A real engine: a linear schedule over 3 generate calls keeps one global window that grows, and no
    per-sequence window outlives its generate call."""
    from rlvr_temp.config.schema import EngineConfig, ModelConfig
    from rlvr_temp.engine.worker import RolloutWorker

    worker = RolloutWorker(
        tiny_model_path, ModelConfig(path=tiny_model_path, max_model_len=128), EngineConfig(), seed=0
    )
    prompts = ["Q: 3+4\nA:", "Q: 12-5\nA:", "Q: 7*6\nA:"]
    scheduled = _token_strategy(schedule={"kind": "linear", "end": 1.3, "steps": 2})
    lengths = []
    for step in range(3):
        base_t = scheduled.base_temperature(step)
        temps = [scheduled.group_temperatures(base_t, 4)] * len(prompts)
        groups = worker.generate(prompts, temps, max_tokens=12, strategy=scheduled, seed=step)
        rules = worker.temperature_state()["rules"]  # from the engine's worker process (rlvr_temp.engine.extension)
        assert len(rules) == 1
        _config, rule_state = next(iter(rules.values()))
        lengths.append(len(rule_state["window"]["values"]))
        assert lengths[-1] == sum(len(r.token_ids) for g in groups for r in g) + (lengths[-2] if step else 0)
    assert lengths[0] < lengths[1] < lengths[2]
    assert len(worker.temperature_state()["rules"]) == 1

    per_sequence = _token_strategy(scope="sequence")
    for step in range(3):
        worker.generate(prompts, [[1.0, 1.1]] * len(prompts), max_tokens=12, strategy=per_sequence, seed=step)
        assert worker.open_windows() == 0  # every request of the call has finished and given its window back
