"""The Model Runner V2 processor (rlvr_temp.engine.processor_v2) driven by synthetic V2 request states and logits
contexts (no engine: V2 does not run on the CPU build), checked against the V1 processor on the same logits."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState, interface, loader

from rlvr_temp import temperature as tt
from rlvr_temp.engine import processor_v2 as vllm_processor_v2
from rlvr_temp.engine import ttm as ttm_vllm
from rlvr_temp.engine.processor_v1 import TemperatureProcessor
from rlvr_temp.engine.processor_v2 import SUPPORTED_VLLM, TemperatureProcessorV2, check_v2_interface, installed_vllm

VOCAB = 23
MAX_REQS = 12
GLOBAL = {"t_low": 0.7, "t_high": 1.3, "hot_fraction": 0.25, "window": 16, "scope": "global"}
SEQUENCE = {"t_low": 0.8, "t_high": 1.5, "hot_fraction": 0.3, "window": 8, "scope": "sequence", "warmup_tokens": 3}
LEARNED = {"t_low": 0.6, "t_high": 1.4, "t_min": 0.01, "t_max": 0.99, "base": 1.0}


def _params(uid: str, **spec) -> SamplingParams:
    return SamplingParams(temperature=1.0, extra_args={"rlvr_temp": {"uid": uid, **spec}})


def _req_states(device: str = "cpu") -> LogitsProcRequestState:
    def host() -> SimpleNamespace:  # a UvaBackedTensor's host side
        return SimpleNamespace(np=np.zeros(MAX_REQS, dtype=np.int32))

    return LogitsProcRequestState(torch.device(device), MAX_REQS, VOCAB, None, host(), host(), None)


def _ctx(slots: list[int], seq_lens: list[int]) -> LogitsContext:
    idx = np.asarray(slots, dtype=np.intp)
    n = len(slots)
    return LogitsContext(
        expanded_idx_mapping=torch.as_tensor(idx),
        idx_mapping=torch.as_tensor(idx),
        idx_mapping_np=idx,
        expanded_local_pos=torch.zeros(n, dtype=torch.int32),
        input_ids=torch.zeros(n, dtype=torch.long),
        pos=torch.as_tensor(seq_lens) - 1,
        seq_lens_upper_bound_np=np.asarray(seq_lens, dtype=np.int32),
    )


@dataclasses.dataclass
class _Req:
    uid: str
    slot: int
    prompt_len: int
    out: list[int] = dataclasses.field(default_factory=list)  # V1's live output-id list


class _Twin:
    """A V1 and a V2 processor fed the same requests and logits, as their engines would: V1 rows are V1's condensed
    persistent batch (a finished row is filled by the last one), the V2 batch lists the same requests in the same
    order, V2 slots come from a free list (recycled, like vLLM's ``RequestState``)."""

    def __init__(self, device_windows: bool = False) -> None:
        self.states = _req_states()
        self.v1 = TemperatureProcessor(None, torch.device("cpu"), False)
        self.v2 = TemperatureProcessorV2(None, self.states)
        self.v2.device_windows = device_windows
        self.free = list(range(MAX_REQS))
        self.batch: list[_Req] = []
        self.generated: dict[str, int] = {}
        self.finished: list[str] = []

    def add(self, uid: str, params: SamplingParams, prompt_len: int = 5) -> None:
        req = _Req(uid, self.free.pop(), prompt_len)
        self.states.prompt_len.np[req.slot] = self.states.prefill_len.np[req.slot] = prompt_len
        mine = self.v2.add_request(req.slot, params)
        assert mine == ("rlvr_temp" in (params.extra_args or {}))
        index = len(self.batch)
        self.v1.update_state(BatchUpdate(index + 1, [], [(index, params, [1] * prompt_len, req.out)], []))
        self.batch.append(req)

    def finish(self, uid: str) -> None:
        row = next(i for i, r in enumerate(self.batch) if r.uid == uid)
        last = len(self.batch) - 1
        moved = [(last, row, MoveDirectionality.UNIDIRECTIONAL)] if row != last else []
        self.v1.update_state(BatchUpdate(last, [row], [], moved))
        req = self.batch.pop()
        if row != last:
            req, self.batch[row] = self.batch[row], req
        self.free.append(req.slot)  # V2 is not told: the slot is just free for reuse
        self.finished.append(uid)

    def step(self, logits: torch.Tensor) -> torch.Tensor:
        ctx = _ctx([r.slot for r in self.batch], [r.prompt_len + len(r.out) for r in self.batch])
        out1 = self.v1.apply(logits.clone())
        out2 = self.v2.apply(logits.clone(), ctx)
        torch.testing.assert_close(out2, out1, rtol=0, atol=0, equal_nan=True)  # the same bits
        for r in self.batch:
            r.out.append(0)
            self.generated[r.uid] = self.generated.get(r.uid, 0) + 1
        return out2


SPECS = {
    "fixed": lambda i: {"temperature": [0.6, 1.0, 1.45][i % 3]},
    "token_global": lambda i: {"temperature": 1.0, "token_rule": GLOBAL},
    "token_global_warmup": lambda i: {"temperature": 1.1, "token_rule": {**GLOBAL, "warmup_tokens": 10}},
    "token_sequence": lambda i: {"temperature": 1.0, "token_rule": SEQUENCE},
    "mixture_global": lambda i: {"temperature": [0.8, 1.0, 1.3][i % 3], "token_rule": GLOBAL},
    "mixture_sequence": lambda i: {"temperature": [0.9, 1.2][i % 2], "token_rule": SEQUENCE},
    # same window, other temperatures for some rows (V1's float64 cold / hot path)
    "mixture_rule_temps": lambda i: {"temperature": 1.1, "token_rule": {**GLOBAL, "t_low": [0.7, 0.5][i % 2]}},
    "top_p": lambda i: {"temperature": 1.2, "top_p": [0.9, 1.0, 0.6][i % 3], "top_k": [-1, 5, 0][i % 3]},
    "token_top_p": lambda i: {"temperature": 1.0, "token_rule": GLOBAL, "top_p": 0.8},
    # one window whose hot fraction each joining request moves (the last added wins; the device window follows)
    "hot_fraction_global": lambda i: {
        "temperature": 1.0,
        "token_rule": {**GLOBAL, "hot_fraction": [0.25, 0.6, 0.1][i % 3]},
    },
    "hot_fraction_sequence": lambda i: {
        "temperature": 1.0,
        "token_rule": {**SEQUENCE, "hot_fraction": [0.3, 0.7][i % 2]},
    },
    "learned": lambda i: {"temperature": [1.0, 1.2][i % 2], "learned": {**LEARNED, "t_high": [1.4, 1.8][i % 2]}},
}


def _run(twin: _Twin, kind: str, steps: int = 24, seed: int = 0) -> None:
    """Requests join and finish while decoding; one request is not ours (plain sampling) and stays untouched."""
    gen = torch.Generator().manual_seed(seed)
    count = 0

    def add() -> None:
        nonlocal count
        twin.add(f"r{count}", _params(f"r{count}", **SPECS[kind](count)), prompt_len=3 + count % 4)
        count += 1

    add()
    twin.add("plain", SamplingParams(temperature=0.8))
    add()
    add()
    for step in range(steps):
        if step in (4, 5, 15):
            add()
        if step == 9:
            twin.finish("r1")  # a middle row: V1 moves the last row into its place
        if step == 12:
            add()  # reuses r1's V2 slot
        if step == 18:
            twin.finish("r0")
            twin.finish("r4")
        logits = torch.randn(len(twin.batch), VOCAB, generator=gen) * 4
        if step % 5 == 2:
            logits[0, 3], logits[-1, 1] = float("nan"), float("inf")
        if kind == "learned":
            ttm_vllm.LAST["t"] = torch.rand(len(twin.batch), generator=gen)
        twin.step(logits)


def _assert_same_state(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b):  # type: ignore[call-overload]
            _assert_same_state(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a.double(), b.double())  # type: ignore[union-attr]
    else:
        assert a == b


@pytest.mark.parametrize("device_windows", [False, True])
@pytest.mark.parametrize("kind", list(SPECS))
@pytest.mark.filterwarnings("ignore:rlvr_temp. requests of one batch:RuntimeWarning")
def test_same_temperatures_and_logits_as_v1(kind, device_windows, monkeypatch):
    monkeypatch.setitem(ttm_vllm.LAST, "t", None)
    twin = _Twin(device_windows)
    _run(twin, kind)
    rec1, rec2 = twin.v1.drain(), twin.v2.drain()
    assert rec2 == rec1  # temperatures and entropies, exactly
    assert set(rec2) == {u for u in twin.generated if u != "plain"}
    for uid, (temps, ents) in rec2.items():
        assert len(temps) == len(ents) == twin.generated[uid]  # one record per generated token
    twin.v2.release(twin.finished)  # V1 freed their per-sequence windows at removal; V2 is told afterwards
    _assert_same_state(twin.v2.state_dict(), twin.v1.state_dict())  # also the device windows, copied back
    twin.v2.release(list(rec2))
    assert twin.v2.open_windows() == 0 and twin.v2.drain() == {}


def test_checkpoints_move_between_v1_and_v2():
    twin = _Twin(device_windows=True)
    _run(twin, "mixture_global", steps=10)
    resumed = _Twin(device_windows=True)
    resumed.v1.load_state_dict(twin.v2.state_dict())  # V2's checkpoint into V1 ...
    resumed.v2.load_state_dict(twin.v1.state_dict())  # ... and V1's into V2 (its device window is rebuilt from it)
    _run(resumed, "mixture_global", steps=6, seed=1)  # the same logits and temperatures, step by step
    assert resumed.v2.drain() == resumed.v1.drain()
    resumed.v2.reset()
    assert resumed.v2.rules == {} and resumed.v2.state_dict() == {"rules": {}}


def test_nan_and_inf_logits_give_finite_temperatures_and_logits():
    for device_windows in (False, True):
        states = _req_states()
        proc = TemperatureProcessorV2(None, states)
        proc.device_windows = device_windows
        for slot, (uid, spec) in enumerate(
            [("g", {"token_rule": GLOBAL}), ("s", {"token_rule": SEQUENCE}), ("f", {"temperature": 0.5})]
        ):
            states.prompt_len.np[slot] = states.prefill_len.np[slot] = 2
            proc.add_request(slot, _params(uid, **spec))
        for step in range(6):
            logits = torch.randn(3, VOCAB)
            logits[0, :4] = float("nan")
            logits[1, 2], logits[1, 5] = float("inf"), float("-inf")
            logits[2, :] = float("nan") if step % 2 else float("-inf")
            out = proc.apply(logits, _ctx([0, 1, 2], [2 + step] * 3))
            assert torch.isfinite(out).all()
        for temps, ents in proc.drain().values():
            assert len(temps) == 6
            assert all(math.isfinite(t) and t >= 1e-4 for t in temps) and all(math.isfinite(h) for h in ents)


def test_preemption_resume_and_chunked_prefill_keep_records_and_window_aligned():
    states = _req_states()
    proc = TemperatureProcessorV2(None, states)
    rule_spec = {**SEQUENCE, "window": 64}
    params = _params("a", token_rule=rule_spec)
    states.prompt_len.np[3] = states.prefill_len.np[3] = 4
    proc.add_request(3, params)
    for k in range(5):
        proc.apply(torch.randn(1, VOCAB), _ctx([3], [4 + k]))
    # preempted (V2 frees slot 3 without telling processors) and resumed in slot 7: prompt + 5 outputs refilled
    states.prompt_len.np[7], states.prefill_len.np[7] = 4, 9
    proc.add_request(7, params)
    x = torch.randn(2, VOCAB)
    out = proc.apply(x.clone(), _ctx([5, 7], [3, 6]))  # a refill chunk samples nothing: left alone, not recorded
    assert torch.equal(out, x)
    for k in range(5, 10):
        proc.apply(torch.randn(1, VOCAB), _ctx([7], [4 + k]))
    rule = next(iter(proc.rules.values()))
    assert rule.window.lengths(["a"]).tolist() == [10]  # the window survived the preemption
    states.prompt_len.np[3] = states.prefill_len.np[3] = 2
    proc.add_request(3, _params("b", token_rule=rule_spec))  # slot 3 reused: "a" lives in slot 7, keeps its window
    proc.apply(torch.randn(2, VOCAB), _ctx([7, 3], [14, 2]))
    assert proc.open_windows() == 2 and rule.window.lengths(["a", "b"]).tolist() == [11, 1]
    records = proc.drain()
    assert [len(records[u][0]) for u in "ab"] == [11, 1] and len(records["a"][1]) == 11
    proc.release(["a", "b"])
    assert proc.open_windows() == 0


def test_records_are_keyed_by_the_position_in_the_context():
    """Positions come from the step's context (seq_lens_upper_bound_np - prompt_len), not from host-side output
    lists, which lag behind under async scheduling: records land where they belong in whatever order steps come."""
    states = _req_states()
    proc = TemperatureProcessorV2(None, states)
    states.prompt_len.np[0] = states.prefill_len.np[0] = 2
    proc.add_request(0, _params("a", temperature=0.5))
    expected = {}
    for seq in (4, 2, 3):  # output positions 2, 0, 1
        logits = torch.zeros(1, VOCAB)
        logits[0, 0] = seq  # a different entropy at each position
        expected[seq - 2] = tt.entropy_from_logits(logits).item()
        proc.apply(logits, _ctx([0], [seq]))
    temps, ents = proc.drain()["a"]
    assert temps == [0.5] * 3 and ents == pytest.approx([expected[p] for p in range(3)], rel=1e-6)


class _NoHostSync(TorchFunctionMode):
    """Fails on the tensor calls that make the host wait for the device."""

    BANNED = frozenset({"cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.BANNED:
            raise AssertionError(f"host synchronisation in the per-step path: Tensor.{name}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "kind", ["fixed", "token_global", "mixture_global", "mixture_rule_temps", "top_p", "learned", "hot_fraction_global"]
)
@pytest.mark.filterwarnings("ignore:rlvr_temp. requests of one batch:RuntimeWarning")
def test_per_step_path_never_reads_tensors_on_the_host(kind, monkeypatch):
    """A CPU stand-in for "no GPU->CPU sync": with device windows and an unchanged batch layout, apply() makes none of
    the calls that would block on CUDA (scope ``sequence`` steps the shared rule's windows and is not covered)."""
    twin = _Twin(device_windows=True)
    monkeypatch.setitem(ttm_vllm.LAST, "t", torch.rand(MAX_REQS))
    for i in range(4):
        twin.add(f"r{i}", _params(f"r{i}", **SPECS[kind](i)))
    twin.add("plain", SamplingParams(temperature=0.8))
    ctx = _ctx([r.slot for r in twin.batch], [r.prompt_len for r in twin.batch])
    twin.v2.apply(torch.randn(5, VOCAB), ctx)  # builds the plan and the device window (host work allowed here)
    ctx = _ctx([r.slot for r in twin.batch], [r.prompt_len + 1 for r in twin.batch])
    with _NoHostSync():
        twin.v2.apply(torch.randn(5, VOCAB), ctx)
    assert all(len(t) == 2 for t, _ in twin.v2.drain().values())


def test_interface_guard_and_supported_version(monkeypatch):
    check_v2_interface(interface)  # the installed vLLM has what the module was written against
    # a new vLLM minor release must be re-checked against this module (and SUPPORTED_VLLM bumped)
    assert installed_vllm().split(".")[:2] == SUPPORTED_VLLM.split(".")

    @dataclasses.dataclass(frozen=True)
    class OldContext:  # a context without the host-side sequence lengths
        idx_mapping_np: np.ndarray

    broken = SimpleNamespace(
        LogitsProcessor=interface.LogitsProcessor,
        LogitsProcRequestState=interface.LogitsProcRequestState,
        LogitsContext=OldContext,
    )
    with pytest.raises(ImportError, match="VLLM_USE_V2_MODEL_RUNNER=0") as err:
        check_v2_interface(broken)
    assert "LogitsContext.seq_lens_upper_bound_np" in str(err.value) and SUPPORTED_VLLM in str(err.value)
    v1_style = SimpleNamespace(**{**vars(broken), "LogitsProcessor": V1LogitsProcessor, "LogitsContext": LogitsContext})
    with pytest.raises(ImportError, match=r"LogitsProcessor\.apply\(logits, ctx\)"):
        check_v2_interface(v1_style)
    monkeypatch.setattr(vllm_processor_v2, "V2_INTERFACE", "vllm.v1.worker.gpu.sample.no_such_module")
    with pytest.raises(ImportError, match="no_such_module"):
        vllm_processor_v2._load_interface()


def test_v2_loader_accepts_the_v2_class_and_rejects_v1():
    """vLLM's own V2 loading (what ``LLM(logits_processors=[...])`` does under V2) and request validation."""
    states = SimpleNamespace(**{f.name: getattr(_req_states(), f.name) for f in dataclasses.fields(_req_states())})
    (proc,) = loader.build_custom_logits_processors(None, states, False, [TemperatureProcessorV2])
    assert isinstance(proc, TemperatureProcessorV2) and proc in vllm_processor_v2.instances()
    with pytest.raises(ValueError, match="not a subclass"):
        loader.build_custom_logits_processors(None, states, False, [TemperatureProcessor])
    validate = loader.build_custom_logits_processors_params_validator([TemperatureProcessorV2])
    validate(_params("ok", temperature=1.3))
    bad = SamplingParams(temperature=0.7, extra_args={"rlvr_temp": {"uid": "x"}})
    with pytest.raises(VLLMValidationError, match=r"temperature=1\.0"):
        validate(bad)
    assert proc.add_request(0, SamplingParams(temperature=0.7)) is False  # not ours: vLLM may skip processing
    with pytest.raises(ValueError, match="speculative"):
        TemperatureProcessorV2(SimpleNamespace(speculative_config=object()), _req_states())
    proc.add_request(1, _params("a"))
    with pytest.raises(RuntimeError, match="speculative"):
        proc.apply(torch.zeros(3, VOCAB), _ctx([1, 0], [5, 5]))


def test_the_v2_runner_is_refused_on_cpu_before_an_engine_starts(tiny_model_path):
    from rlvr_temp.config.schema import EngineConfig, ModelConfig
    from rlvr_temp.engine.worker import RolloutWorker

    with pytest.raises(ValueError, match="model_runner=v2 needs a CUDA build"):
        RolloutWorker(tiny_model_path, ModelConfig(path=tiny_model_path), EngineConfig(model_runner="v2"))
