"""The vLLM logits processor driven by hand-made batch updates (no engine): row bookkeeping, NaN safety,
rejection of bad settings, recording by output position."""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from rlvr_temp.engine.processor_v1 import TemperatureProcessor
from rlvr_temp.temperature.request import parse_request

RULE = {"t_low": 0.7, "t_high": 1.3, "hot_fraction": 0.25, "window": 64, "scope": "sequence"}


def _params(uid: str, t: float, rule: dict | None = None) -> SamplingParams:
    return SamplingParams(temperature=1.0, extra_args={"rlvr_temp": {"uid": uid, "temperature": t, "token_rule": rule}})


def _proc() -> TemperatureProcessor:
    return TemperatureProcessor(None, torch.device("cpu"), False)


def test_fixed_rows_divided_by_their_request_temperature_others_untouched():
    proc = _proc()
    outs = [[], [], []]
    proc.update_state(
        BatchUpdate(
            3,
            [],
            [
                (0, _params("a", 0.5), [1], outs[0]),
                (2, _params("c", 2.0), [1], outs[2]),
                (1, SamplingParams(temperature=0.8), [1], outs[1]),
            ],
            [],
        )
    )
    logits = torch.randn(3, 11)
    expected = logits.clone()
    out = proc.apply(logits.clone())
    assert torch.allclose(out[0], expected[0] / 0.5)
    assert torch.equal(out[1], expected[1])  # not ours: untouched
    assert torch.allclose(out[2], expected[2] / 2.0)
    outs[0].append(5)
    outs[2].append(6)
    proc.apply(torch.randn(3, 11))
    rec = proc.drain()
    assert rec["a"][0] == [0.5, 0.5] and rec["c"][0] == [2.0, 2.0]
    assert "b" not in rec and proc.drain() == {}


def test_nan_and_inf_logits_give_finite_outputs_and_temperatures():
    proc = _proc()
    proc.update_state(BatchUpdate(2, [], [(0, _params("a", 1.0, RULE), [1], []), (1, _params("b", 1.0), [1], [])], []))
    logits = torch.randn(2, 7)
    logits[0, 2] = float("nan")
    logits[0, 3] = float("inf")
    logits[1, :] = float("-inf")
    out = proc.apply(logits)
    assert torch.isfinite(out).all()
    temps, ents = proc.drain()["a"]
    assert all(math.isfinite(t) and t >= 1e-4 for t in temps) and all(math.isfinite(h) for h in ents)


def test_moves_swaps_and_removals_keep_rows_attached_to_their_requests():
    proc = _proc()
    oa, ob = [], []
    proc.update_state(BatchUpdate(2, [], [(0, _params("a", 0.5), [1], oa), (1, _params("b", 2.0), [1], ob)], []))
    proc.update_state(BatchUpdate(2, [], [], [(0, 1, MoveDirectionality.SWAP)]))
    x = torch.ones(2, 4)
    out = proc.apply(x.clone())
    assert torch.allclose(out[0], x[0] / 2.0) and torch.allclose(out[1], x[1] / 0.5)
    proc.update_state(BatchUpdate(1, [0], [], [(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    out = proc.apply(torch.ones(2, 4))
    assert torch.allclose(out[0], torch.ones(4) / 0.5)
    assert torch.equal(out[1], torch.ones(4))


def test_token_rule_rows_take_two_values_shifted_by_request_temperature():
    proc = _proc()
    out_ids: list[int] = []
    proc.update_state(BatchUpdate(1, [], [(0, _params("a", 1.2, RULE), [1], out_ids)], []))
    torch.manual_seed(0)
    for _ in range(40):
        proc.apply(torch.randn(1, 9) * 3)
        out_ids.append(1)
    temps, _ = proc.drain()["a"]
    assert len(temps) == 40
    assert {round(t, 6) for t in temps} <= {round(0.7 + 0.2, 6), round(1.3 + 0.2, 6)}
    assert len(set(temps)) == 2


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"uid": "x", "temperature": -1.0}, "finite number > 0"),
        ({"uid": "x", "temperature": float("nan")}, "finite"),
        ({"temperature": 1.0}, "uid"),
        ({"uid": "x", "token_rule": {"t_low": 0}}, "t_low"),
        ({"uid": "x", "token_rule": {"bogus": 1}}, "unknown keys"),
    ],
)
def test_invalid_settings_rejected(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_request({"rlvr_temp": spec})


def test_request_temperature_must_be_one():
    with pytest.raises(ValueError, match=r"temperature=1\.0"):
        TemperatureProcessor.validate_params(
            SamplingParams(temperature=0.7, extra_args={"rlvr_temp": {"uid": "x", "temperature": 0.7}})
        )


def test_state_round_trip_restores_window():
    rule = {**RULE, "scope": "global"}
    a = _proc()
    out_ids: list[int] = []
    a.update_state(BatchUpdate(1, [], [(0, _params("a", 1.0, rule), [1], out_ids)], []))
    torch.manual_seed(1)
    for _ in range(30):
        a.apply(torch.randn(1, 9) * 2)
        out_ids.append(1)
    b = _proc()
    b.load_state_dict(a.state_dict())
    ob: list[int] = list(out_ids)
    b.update_state(BatchUpdate(1, [], [(0, _params("a", 1.0, rule), [1], ob)], []))
    a.drain()
    for _ in range(20):
        x = torch.randn(1, 9) * 2
        a.apply(x.clone())
        b.apply(x.clone())
        out_ids.append(1)
        ob.append(1)
    assert a.drain()["a"][0] == b.drain()["a"][0]


def test_quiet_vllm_logs_sets_vllms_level_in_the_env_and_the_logger(monkeypatch):
    from rlvr_temp.engine.settings import quiet_vllm_logs

    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")
    vllm_log = logging.getLogger("vllm")
    monkeypatch.setattr(vllm_log, "level", vllm_log.level)
    quiet_vllm_logs("warning")
    assert vllm_log.level == logging.WARNING
    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"


def test_idle_spin_is_shortened_for_queues_made_afterwards(monkeypatch, tmp_path):
    import zmq
    from vllm.distributed.device_communicators import shm_broadcast

    from rlvr_temp.engine.extension import IDLE_SPIN_ENV, shorten_idle_spin

    vllms = shm_broadcast.SpinCondition
    monkeypatch.setattr(shm_broadcast, "SpinCondition", vllms)  # restored afterwards
    monkeypatch.delenv(IDLE_SPIN_ENV, raising=False)
    assert shorten_idle_spin() is None  # unset: vLLM's own 1 s
    monkeypatch.setenv(IDLE_SPIN_ENV, "0.1")
    assert shorten_idle_spin() == 0.1
    assert shorten_idle_spin() == 0.1  # a second import wraps vLLM's class, not the wrapper
    assert shm_broadcast.SpinCondition.__mro__[1] is vllms
    ctx = zmq.Context()
    try:
        reader = shm_broadcast.SpinCondition(is_reader=True, context=ctx, notify_address=f"ipc://{tmp_path}/n")
        assert reader.busy_loop_s == 0.1
        reader.local_notify_socket.close(linger=0)
        for s in (reader.read_cancel_socket, reader.write_cancel_socket):
            s.close(linger=0)
    finally:
        ctx.term()


def test_sampled_logprobs_wait_for_vllms_tokens_then_gather_the_tempered_log_softmax():
    from rlvr_temp.engine.sampled_logprobs import SampledLogprobs

    rec = SampledLogprobs()
    out_a, out_b = [], [7]  # vLLM's live output lists: b already has one token
    s1 = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, -1.0]])
    rec.add(("a", "b"), [out_a, out_b], s1)
    s1.zero_()  # vLLM may modify its logits afterwards: the record keeps its own copy
    out_a.append(2)
    out_b.append(0)
    s2 = torch.tensor([[1.0, 1.0, float("-inf")]])
    rec.add(("a",), [out_a], s2)  # settles step 1: both tokens are there
    assert len(rec.pending) == 1 and len(rec.done) == 1
    out_a.append(1)
    got = rec.drain()
    lsm1 = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, -1.0]]), -1)
    assert got["a"] == pytest.approx([float(lsm1[0, 2]), math.log(0.5)])
    assert got["b"] == pytest.approx([float(lsm1[1, 0])])  # position 1: b's second token
    assert rec.drain() == {}
    rec.add(("c",), [[]], s2)  # a request whose token never arrives (aborted): NaN, not a wrong value
    assert math.isnan(rec.drain()["c"][0])
