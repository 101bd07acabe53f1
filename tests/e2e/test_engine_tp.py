"""Rollout engines as vLLM runs them on GPUs, proven on vLLM's CPU backend: the engine core and one worker process
per tensor-parallel rank, the temperature processor reached through the worker extension (rlvr_temp.engine.extension).

TP=2 records (token ids, per-token temperatures, entropies, log-probs) match a TP=1 engine's for the same seed in
``token`` and ``token+mixture`` modes (per-response windows: the global window's first decode steps depend on how
requests reach the engine core, which is scheduling, not tensor parallelism); the whole loop trains with TP=2.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import worst_token

pytestmark = pytest.mark.slow

PROMPTS = ["Q: 12+7\nA:", "Q: 47+38\nA:", "Q: 3*4\nA:", "Q: 83-47\nA:"]
MODES = ["token", "token+mixture"]


def _strategy(mode: str, scope: str):
    from rlvr_temp.config.schema import MixtureConfig, TemperatureConfig, TokenRuleConfig
    from rlvr_temp.temperature import make_strategy

    token = TokenRuleConfig(t_low=0.9, t_high=1.4, hot_fraction=0.3, window=4096, scope=scope)
    return make_strategy(TemperatureConfig(mode=mode, token=token, mixture=MixtureConfig(step=0.1)))


def _records(tp: int, tiny_model_path: str) -> dict[str, list]:
    """Every mode's rollouts from one engine with this tensor-parallel size (then the engine is shut down)."""
    from rlvr_temp.config.schema import EngineConfig, ModelConfig
    from rlvr_temp.engine.worker import RolloutWorker

    worker = RolloutWorker(
        tiny_model_path, ModelConfig(path=tiny_model_path, max_model_len=256), EngineConfig(tensor_parallel_size=tp)
    )
    try:
        info = worker.engine_info()
        assert info["multiprocess"] and info["tensor_parallel_size"] == tp
        assert [r["rank"] for r in info["ranks"]] == list(range(tp))
        assert len({r["pid"] for r in info["ranks"]}) == tp  # one worker process per rank
        assert {r["processor"] for r in info["ranks"]} == {"TemperatureProcessor"}
        out: dict[str, list] = {}
        for mode in MODES:
            strategy = _strategy(mode, "sequence")
            temps = [strategy.group_temperatures(1.0, 4)] * len(PROMPTS)
            out[mode] = worker.generate(PROMPTS, temps, max_tokens=24, strategy=strategy, seed=7)
        glob = _strategy("token", "global")
        out["global"] = worker.generate(PROMPTS * 4, [[1.0] * 4] * 16, max_tokens=24, strategy=glob, seed=8)
        assert worker.open_windows() == 0
        # the global window holds every token of the global call (read from rank 0's worker process)
        windows = [st["window"] for _, st in worker.temperature_state()["rules"].values()]
        glob_windows = [w for w in windows if w["scope"] == "global"]
        assert [len(w["values"]) for w in glob_windows] == [sum(len(r.token_ids) for g in out["global"] for r in g)]
        return out
    finally:
        worker.close()


@pytest.fixture(scope="module")
def tp1(tiny_model_path):
    return _records(1, tiny_model_path)


@pytest.fixture(scope="module")
def tp2(tiny_model_path, tp1):  # after tp1: one engine at a time on a 2-core machine
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("tensor parallelism on CPU needs 2 cores")
    return _records(2, tiny_model_path)


@pytest.mark.parametrize("mode", MODES)
def test_tp2_records_match_tp1(tp1, tp2, mode):
    a = [r for g in tp1[mode] for r in g]
    b = [r for g in tp2[mode] for r in g]
    assert len(a) == len(b) == 4 * len(PROMPTS)
    assert len({r.temperature for r in a}) == (3 if mode == "token+mixture" else 1)  # [T, T, T - d, T + d]
    for x, y in zip(a, b):
        assert x.temperature == y.temperature
        assert x.token_ids == y.token_ids
        assert x.token_temperatures == y.token_temperatures
        assert len(y.token_entropies) == len(y.token_logprobs) == len(y.token_ids)
        assert y.token_entropies == pytest.approx(x.token_entropies, abs=1e-4)
        assert y.token_logprobs == pytest.approx(x.token_logprobs, abs=1e-4)
    # the rule ran: both temperatures of each response's rule appear
    assert len({t for r in b for t in r.token_temperatures}) >= 2


def test_tp2_global_window_records_are_aligned(tp2):
    rollouts = [r for g in tp2["global"] for r in g]
    n = sum(len(r.token_ids) for r in rollouts)
    hot = sum(t > 0.9 + 1e-6 for r in rollouts for t in r.token_temperatures)
    for r in rollouts:
        assert len(r.token_temperatures) == len(r.token_entropies) == len(r.token_logprobs) == len(r.token_ids)
        assert {round(t, 5) for t in r.token_temperatures} <= {0.9, 1.4}  # recorded as float32
    assert abs(hot / n - 0.3) <= 0.05  # the configured hot share


def test_tp2_trains_end_to_end(ray_cluster, tmp_path, tiny_model_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("tensor parallelism on CPU needs 2 cores")
    from rlvr_temp.config.schema import load_config
    from rlvr_temp.driver.trainer import train

    overrides = [
        "rollout.engine.tensor_parallel_size=2",
        "temperature.mode=token+mixture",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "rollout.max_response_len=24",
        "learner.mode=lora",
        "learner.mini_batch_size=16",
        "learner.micro_batch_size=16",
        "trainer.total_steps=2",
        "logging.progress=false",
        "logging.tensorboard=false",
        f"trainer.run_dir={tmp_path / 'tp2'}",
    ]
    run = train(load_config("recipes/demo/base.yaml", overrides))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    # step 1 sampled with the weights step 0's update streamed (gloo) into both TP ranks: the learner recomputes
    # the engine's log-probs
    assert rows[1]["sync/bytes"] > 0
    assert rows[1]["logprob/mismatch_mean"] <= 2e-6 and rows[1]["logprob/mismatch_max"] <= 1e-4, worst_token(rows[1])
    engines = json.loads((run / "engines.json").read_text())
    assert engines[0]["tensor_parallel_size"] == 2 and len(engines[0]["ranks"]) == 2


def test_cpu_thread_binding_pins_each_worker_to_its_own_cores(monkeypatch):
    from rlvr_temp.engine.settings import cpu_thread_binding

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6, 7})
    assert cpu_thread_binding(1) == "nobind"  # no thread count: threads float
    assert cpu_thread_binding(1, 2) == "4,5"
    assert [cpu_thread_binding(1, 2, slot) for slot in range(3)] == ["4,5", "6,7", "4,5"]  # disjoint, then wrap
    assert cpu_thread_binding(1, 8) == "nobind"  # more threads than cores: unbound rather than refused
    assert cpu_thread_binding(2) == "4,5|6,7"  # tensor parallelism: one group per rank
    with pytest.raises(ValueError, match="needs as many CPU cores"):
        cpu_thread_binding(8)
