"""Entropy windows in the vLLM processor: one window per window setting for a whole run (a schedule or a mixture
moves temperatures, a controller moves the hot fraction, never the window), and no per-sequence window outlives its
request."""

from __future__ import annotations

import warnings
from collections import deque

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from rlvr_temp.config.schema import TemperatureConfig
from rlvr_temp.engine.processor_v1 import TemperatureProcessor
from rlvr_temp.temperature import make_strategy
from rlvr_temp.temperature.request import EXTRA_KEY, window_key


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


def _with_hot_fraction(spec: dict, p: float) -> dict:
    return {**spec, "token_rule": {**spec["token_rule"], "hot_fraction": p}}


def test_the_window_key_leaves_out_temperatures_and_the_hot_fraction():
    rule = _token_strategy().request_spec(1.0)["token_rule"]
    key = window_key(rule)
    assert key == (("scope", "global"), ("window", 1000), ("warmup_tokens", 0))
    assert window_key({**rule, "hot_fraction": 0.6, "t_high": 2.0}) == key
    assert window_key({k: v for k, v in rule.items() if k != "warmup_tokens"}) == key  # the rule's default
    assert window_key({**rule, "warmup_tokens": 5}) != key


def _run_steps(proc: TemperatureProcessor, strategy, hot_fractions: list[float], logits: torch.Tensor) -> list:
    """One "training step" per hot fraction: 2 requests of it join, decode 6 tokens, finish. The records."""
    out = []
    for step, p in enumerate(hot_fractions):
        outs: list[list[int]] = [[], []]
        spec = _with_hot_fraction(strategy.request_spec(1.0), p)
        added = [(i, _params(f"s{step}r{i}", spec), [1], outs[i]) for i in range(2)]
        proc.update_state(BatchUpdate(2, [], added, []))
        for j in range(6):
            proc.apply(logits[step, j].clone())
            for o in outs:
                o.append(1)
        out.append(proc.drain())
        proc.update_state(BatchUpdate(2, [0, 1], [], []))
    return out


@pytest.mark.parametrize("device_windows", [False, True])
def test_a_moving_hot_fraction_keeps_one_window_and_its_contents(device_windows):
    """A controller moves hot_fraction between steps: one window and its contents for the whole run, and each row is
    hot iff its entropy is at or above the new rank's threshold of the whole window (a brute-force sorted())."""
    strategy = _token_strategy()
    proc = _proc()
    proc.device_windows = device_windows  # the CUDA path (DeviceEntropyWindow), on the CPU
    hot_fractions = [0.25, 0.1, 0.6, 0.6, 0.33]
    logits = torch.randn(len(hot_fractions), 6, 2, 16, generator=torch.Generator().manual_seed(2)) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one hot fraction per step: no conflict warning
        records = _run_steps(proc, strategy, hot_fractions, logits)
    ref: list[float] = []
    for step, (p, rec) in enumerate(zip(hot_fractions, records, strict=True)):
        for j in range(6):
            h = [rec[f"s{step}r{i}"][1][j] for i in range(2)]
            ref.extend(h)  # the rows' entropies, pushed in row order
            th = sorted(ref)[int((1 - p) * (len(ref) - 1))]
            for i in range(2):
                expected = float(np.float32(1.4 if h[i] >= th else 0.8))
                assert rec[f"s{step}r{i}"][0][j] == expected, (step, j, i)
    assert len(proc.rules) == 1 and len(proc._dev) == int(device_windows)
    state = proc.state_dict()  # copies a device window back into its rule
    ((config, rule_state),) = state["rules"].values()
    assert config["hot_fraction"] == rule_state["window"]["hot_fraction"] == 0.33
    assert rule_state["window"]["values"].tolist() == ref  # every step's entropies, in order: the window was kept
    (rule,) = proc.rules.values()
    assert rule.hot_fraction == rule.window.hot_fraction == 0.33


@pytest.mark.parametrize("device_windows", [False, True])
def test_state_round_trip_after_a_hot_fraction_change(device_windows):
    strategy = _token_strategy()
    logits = torch.randn(4, 6, 2, 16, generator=torch.Generator().manual_seed(3)) * 3
    a = _proc()
    a.device_windows = device_windows
    _run_steps(a, strategy, [0.25, 0.4], logits[:2])
    state = a.state_dict()
    b = _proc()
    b.device_windows = device_windows
    b.load_state_dict(state)
    (rule_a,), (rule_b,) = a.rules.values(), b.rules.values()
    assert rule_b.hot_fraction == rule_b.window.hot_fraction == 0.4
    assert torch.equal(rule_b.window.values(), rule_a.window.values())
    # both go on with the controller's next values: the same windows, the same temperatures
    assert _run_steps(a, strategy, [0.15, 0.7], logits[2:]) == _run_steps(b, strategy, [0.15, 0.7], logits[2:])
    assert len(b.rules) == 1 and _same_state(b.state_dict(), a.state_dict())


def _same_state(x: dict, y: dict) -> bool:
    ((cx, sx),), ((cy, sy),) = x["rules"].values(), y["rules"].values()
    return cx == cy and torch.equal(sx["window"]["values"], sy["window"]["values"])


def test_requests_of_one_batch_with_other_hot_fractions_share_the_window_and_the_last_wins():
    """The controller changes hot_fraction between steps only; should live requests of one window disagree, the
    last one added sets the rank for all its rows, with a warning."""
    strategy = _token_strategy(scope="sequence")
    proc = _proc()
    outs: list[list[int]] = [[], []]
    specs = [_with_hot_fraction(strategy.request_spec(1.0), p) for p in (0.25, 0.5)]
    added = [(i, _params(u, specs[i]), [1], outs[i]) for i, u in enumerate("ab")]
    with pytest.warns(RuntimeWarning, match=r"hot fractions 0\.25 and 0\.5: 0\.5 \(the last added\)"):
        proc.update_state(BatchUpdate(2, [], added, []))
    (rule,) = proc.rules.values()
    assert len(proc.rules) == 1 and rule.hot_fraction == rule.window.hot_fraction == 0.5
    refs = {u: deque() for u in "ab"}
    torch.manual_seed(4)
    for _ in range(8):
        proc.apply(torch.randn(2, 16) * 3)
        for o in outs:
            o.append(1)
    rec = proc.drain()
    for u in "ab":  # both requests' rows use 0.5
        for t, h in zip(*rec[u], strict=True):
            refs[u].append(h)
            th = sorted(refs[u])[int(0.5 * (len(refs[u]) - 1))]
            assert t == float(np.float32(1.4 if h >= th else 0.8))


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
