"""The V1 processor's sampled-token log-probs under vLLM 0.32's output-list semantics, asynchronous or not, and what
the rollout and the learner do with a log-prob that is missing (GPU-review findings B4, S1, S2, W2).

:class:`_Engine` mirrors what vLLM's V1 model runner and scheduler do to a request's live output list (the list the
processor is handed in ``BatchUpdate.added``):

* async scheduling (on by default on CUDA; ``vllm/platforms/cpu.py`` forces it off on the CPU): after sampling, the
  runner appends a placeholder ``-1`` (``v1/worker/gpu_model_runner.py`` ~3563) and replaces it with the sampled
  token only right before the next sampling, and only for rows of the previous step that are scheduled again
  (``gpu_input_batch.py`` ``update_async_output_token_ids``). The scheduler learns of a stop one step late, so an
  EOS-finished request has one surplus step; it schedules no step after ``max_tokens``
  (``v1/core/sched/scheduler.py`` ~664-678); an unscheduled request leaves the persistent batch
  (``gpu_model_runner.py`` ``_update_states``) and a resumed one gets a new list of its real tokens
  (``req_state.output_token_ids = resumed_token_ids[-num_output_tokens:]``).
* sync scheduling: the sampled token is appended right after sampling; a finished or capped request leaves the batch
  at the next step.

A preemption removes a request for a few steps and re-adds it; the batch is condensed as vLLM's is (a removed row is
filled by the last row, a one-way move).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field

import pytest
import torch
from torch.overrides import TorchFunctionMode
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from rlvr_temp.engine.processor_v1 import TemperatureProcessor

pytestmark = pytest.mark.gpu_contract

VOCAB = 41
GLOBAL = {"t_low": 0.7, "t_high": 1.3, "hot_fraction": 0.25, "window": 32, "scope": "global"}


def _params(uid: str, max_tokens: int, **spec) -> SamplingParams:
    spec.setdefault("temperature", 1.0)
    return SamplingParams(temperature=1.0, max_tokens=max_tokens, extra_args={"rlvr_temp": {"uid": uid, **spec}})


@dataclass
class _Req:
    uid: str
    max_tokens: int
    stop_len: int  # the response stops (EOS) after this many tokens, unless capped first
    spec: dict = field(default_factory=dict)
    out: list[int] = field(default_factory=list)  # the runner's live list (what the processor holds)
    tokens: list[int] = field(default_factory=list)  # the real tokens (what RequestOutput returns)
    done_at: int | None = None  # the step at which the scheduler knows it finished
    last_sampled: int | None = None  # the step whose token is the latest

    @property
    def final_len(self) -> int:
        return min(self.max_tokens, self.stop_len)


class _Engine:
    """A V1 persistent batch of at most ``max_rows`` requests, stepped with vLLM's list semantics."""

    def __init__(self, proc: TemperatureProcessor, async_: bool, max_rows: int = 6, seed: int = 0) -> None:
        self.proc, self.async_, self.max_rows = proc, async_, max_rows
        self.gen = torch.Generator().manual_seed(seed)
        self.waiting: list[_Req] = []
        self.batch: list[_Req] = []  # row index = position
        self.prev: dict[str, int] = {}  # uid -> token sampled at the previous step (prev_req_id_to_index)
        self.expected: dict[str, dict[int, float]] = {}
        self.held: list[int] = []  # full-vocabulary rows the record holds after each step
        self.preempted: dict[str, int] = {}  # uid -> step at which it is resumed
        self.step_no = 0

    def submit(self, req: _Req) -> None:
        self.waiting.append(req)

    def _schedulable(self, r: _Req) -> bool:
        if r.done_at is not None and self.step_no >= r.done_at:
            return False  # the scheduler knows it finished
        n = len(r.tokens)  # sampled so far (the in-flight one included)
        if n >= r.max_tokens:
            return False  # no step after max_tokens (async: the placeholder count says so; sync: finished)
        # sync: a stop is seen before the next step is scheduled
        return self.async_ or n < r.stop_len

    def step(self, preempt: str | None = None) -> None:
        removed, added, moved = [], [], []
        keep = []
        for i, r in enumerate(self.batch):
            if self._schedulable(r) and r.uid != preempt:
                keep.append(r)
            else:
                removed.append(i)
                if r.uid == preempt:
                    self.preempted[r.uid] = self.step_no + 3
        # condense as vLLM does: rows above a hole move down (one-way moves)
        rows = {i: r for i, r in enumerate(self.batch) if i not in removed}
        holes = sorted(removed)
        for resume_uid, at in list(self.preempted.items()):
            if at <= self.step_no:
                del self.preempted[resume_uid]
                r = next(x for x in self._all if x.uid == resume_uid)
                r.out = list(r.tokens)  # a new list of its real tokens
                self.waiting.insert(0, r)
        while self.waiting and len(rows) < self.max_rows:
            r = self.waiting.pop(0)
            idx = holes.pop(0) if holes else max(rows, default=-1) + 1
            rows[idx] = r
            added.append((idx, _params(r.uid, r.max_tokens, **r.spec), [1, 2, 3], r.out))
        while holes and max(rows, default=-1) > holes[0]:
            last = max(rows)
            hole = holes.pop(0)
            rows[hole] = rows.pop(last)
            moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
            holes.append(last)
            holes.sort()
        self.batch = [rows[i] for i in sorted(rows)]
        assert sorted(rows) == list(range(len(rows)))
        self.proc.update_state(BatchUpdate(len(self.batch), removed, added, moved))
        # the runner repairs the placeholders of the previous step's rows that are scheduled again
        for r in self.batch:
            if r.uid in self.prev and r.out and r.out[-1] == -1:
                r.out[-1] = self.prev[r.uid]
        self.prev = {}
        if self.batch:
            logits = torch.randn(len(self.batch), VOCAB, generator=self.gen) * 3
            out = self.proc.apply(logits)
            lsm = out.float().log_softmax(-1)
            toks = torch.multinomial(lsm.exp(), 1, generator=self.gen).squeeze(1).tolist()
            for i, (r, tok) in enumerate(zip(self.batch, toks)):
                pos = len(r.out)
                r.out.append(-1 if self.async_ else tok)
                self.prev[r.uid] = tok
                if pos < r.final_len:  # a real token (not the surplus step after the stop)
                    r.tokens.append(tok)
                    self.expected.setdefault(r.uid, {})[pos] = float(lsm[i, tok])
                    if len(r.tokens) == r.stop_len:
                        # the scheduler sees the stop with this step's output: async already scheduled one more
                        r.done_at = self.step_no + (2 if self.async_ else 1)
        self.held.append(_held_rows(self.proc))
        self.step_no += 1

    def run(self, reqs: list[_Req], preempt: dict[int, str] | None = None, limit: int = 400) -> None:
        self._all = list(reqs)
        for r in reqs:
            self.submit(r)
        while (self.waiting or self.batch or self.preempted) and self.step_no < limit:
            self.step((preempt or {}).get(self.step_no))
        self.step()  # the last removals
        assert not self.batch and not self.waiting


def _held_rows(obj: object, seen: set | None = None) -> int:
    """Full-vocabulary rows held by ``obj`` (the processor and its record), whatever their layout."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.reshape(-1, obj.shape[-1]).shape[0] if obj.dim() and obj.shape[-1] == VOCAB else 0
    if isinstance(obj, dict):
        return sum(_held_rows(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(_held_rows(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("rlvr_temp"):
        return _held_rows(vars(obj), seen)
    return 0


def _requests(n: int, max_tokens: int = 12, **spec) -> list[_Req]:
    # every third request is capped by max_tokens, the others stop (EOS) at staggered lengths
    return [
        _Req(f"q{i}", max_tokens, max_tokens + 5 if i % 3 == 0 else 2 + (i * 5) % (max_tokens - 2), spec)
        for i in range(n)
    ]


def _proc() -> TemperatureProcessor:
    return TemperatureProcessor(None, torch.device("cpu"), False)


def test_async_scheduling_record_stays_bounded():
    """Under async scheduling the surplus step of every EOS-finished request, the last token of every capped one and
    the token before a preemption are never filled in: the record may not hold their steps until drain."""
    proc = _proc()
    eng = _Engine(proc, async_=True, max_rows=6)
    eng.run(_requests(30), preempt={5: "q1", 11: "q4"})
    assert max(eng.held) <= 2 * eng.max_rows, f"record held up to {max(eng.held)} full-vocabulary rows"
    proc.drain_logprobs()
    assert _held_rows(proc) == 0


def test_async_capped_response_has_no_silent_nan_logprob():
    """Under async scheduling, every real token's recorded log-prob is either vLLM's exact value or marked missing
    (NaN), and every missing one is the last token of a capped or preempted response: the rollout refuses those
    (test_nan_logprob_fails_the_rollout_loudly); the engine runs without async scheduling (test below)."""
    proc = _proc()
    eng = _Engine(proc, async_=True, max_rows=6)
    reqs = _requests(18)
    eng.run(reqs, preempt={5: "q1"})
    got = proc.drain_logprobs()
    for r in reqs:
        lps = got[r.uid][: len(r.tokens)]
        assert len(lps) == len(r.tokens) == r.final_len
        for p, lp in enumerate(lps):
            if math.isnan(lp):
                assert (r.max_tokens <= r.stop_len and p == r.final_len - 1) or r.uid == "q1", (r.uid, p)
            else:
                assert lp == pytest.approx(eng.expected[r.uid][p], rel=1e-6, abs=1e-6), (r.uid, p)


def test_sync_scheduling_capped_and_preempted_responses_are_exact():
    """Sync scheduling (what the worker runs, on CUDA too): every real token's log-prob is exact, none NaN, and the
    record holds at most one step's rows."""
    proc = _proc()
    eng = _Engine(proc, async_=False, max_rows=5, seed=3)
    reqs = _requests(20)
    eng.run(reqs, preempt={4: "q2", 9: "q0", 10: "q5"})
    assert max(eng.held) <= eng.max_rows
    got = proc.drain_logprobs()
    for r in reqs:
        assert got[r.uid] == pytest.approx([eng.expected[r.uid][p] for p in range(r.final_len)], rel=1e-6, abs=1e-6)


def test_window_holds_only_generated_tokens_entropies_without_async_scheduling():
    """W2: the entropy of an EOS-finished request's surplus step (a position after its stop) is not a token of any
    response. Async scheduling is off in the worker, so the window holds exactly the generated tokens' entropies;
    with sync semantics this is checked here (the real-engine test checks it end to end on the CPU)."""
    proc = _proc()
    eng = _Engine(proc, async_=False, max_rows=4, seed=5)
    reqs = _requests(10, token_rule=GLOBAL | {"window": 10_000})
    eng.run(reqs)
    (rule,) = proc.rules.values()
    assert len(rule.window) == sum(len(r.tokens) for r in reqs)


# ---------------------------------------------------------------------------------------- the rollout worker
def _fake_worker(monkeypatch, records, outputs, cuda: bool):
    from rlvr_temp.engine import worker as worker_mod

    monkeypatch.setattr(worker_mod.torch.cuda, "is_available", lambda: cuda)
    w = object.__new__(worker_mod.RolloutWorker)
    w._incarnation, w._uid, w.model_runner, w.has_ttm = "inc", 0, "v1", False
    seen: list[SamplingParams] = []

    def gen(requests, params):
        seen.extend(params)
        return outputs

    w._generate_as_one_batch = gen
    w._rank0 = lambda method, *args: records
    return w, seen


def _output(tokens: list[int], reason: str = "length"):
    comp = types.SimpleNamespace(token_ids=tokens, logprobs=None, finish_reason=reason, text="x")
    return types.SimpleNamespace(outputs=[comp], prompt_token_ids=[1, 2])


def test_nan_logprob_fails_the_rollout_loudly(monkeypatch):
    nan = float("nan")
    records = {"r1": ([1.0] * 3, [0.5] * 3, [-0.1, -0.2, nan])}  # a capped response's last token never filled in
    w, _ = _fake_worker(monkeypatch, records, [_output([5, 6, 7])], cuda=False)
    with pytest.raises(RuntimeError, match=r"request r1.*log-prob.*position 2"):
        w.generate(["p"], [[1.0]], max_tokens=3)
    # a NaN past the response (the surplus step after EOS) is not part of it: trimmed, no error
    records = {"r2": ([1.0] * 3, [0.5] * 3, [-0.1, -0.2, nan])}
    w, _ = _fake_worker(monkeypatch, records, [_output([5, 6], "stop")], cuda=False)
    w._uid = 1
    (group,) = w.generate(["p"], [[1.0]], max_tokens=3)
    assert group[0].token_logprobs == [-0.1, -0.2]
    # a missing record is refused the same way
    w, _ = _fake_worker(monkeypatch, {"r1": ([1.0] * 3, [0.5] * 3, [-0.1, -0.2])}, [_output([5, 6, 7])], cuda=False)
    with pytest.raises(RuntimeError, match=r"request r1"):
        w.generate(["p"], [[1.0]], max_tokens=3)


@pytest.mark.parametrize("cuda", [False, True])
def test_per_request_seeds_only_on_cpu(monkeypatch, cuda):
    """S2: seeded requests make vLLM's V1 sampler draw noise row by row on CUDA (topk_topp_sampler.py); there the
    engine's seed and the worker's one-batch scheduling make runs reproducible instead."""
    records = {"r1": ([1.0], [0.5], [-0.1]), "r2": ([1.0], [0.5], [-0.2])}
    w, seen = _fake_worker(monkeypatch, records, [_output([5]), _output([6])], cuda=cuda)
    w.generate(["p"], [[1.0, 0.0]], max_tokens=1, seed=7)
    assert len(seen) == 2
    if cuda:
        assert all(p.seed is None for p in seen)
    else:
        assert all(isinstance(p.seed, int) for p in seen) and seen[0].seed != seen[1].seed


def test_cuda_engine_is_built_without_async_scheduling(monkeypatch, tiny_model_path):
    """B4: the V1 processor reads sampled tokens from vLLM's output lists, which async scheduling fills one step late
    or never (see above): the worker turns it off on CUDA."""
    from rlvr_temp.config.schema import EngineConfig, ModelConfig
    from rlvr_temp.engine import worker as worker_mod

    built = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            built.update(kwargs)

        def collective_rpc(self, *a, **k):
            return [{}]

        def get_tokenizer(self):
            return None

    monkeypatch.setattr(worker_mod, "LLM", FakeLLM)
    monkeypatch.setattr(worker_mod.torch.cuda, "is_available", lambda: True)
    for var in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_USE_V2_MODEL_RUNNER", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.setenv(var, "0")
    worker_mod.RolloutWorker(
        tiny_model_path, ModelConfig(path=tiny_model_path), EngineConfig(weight_sync="object_store"), log_level=None
    )
    assert built.get("async_scheduling") is False


# ---------------------------------------------------------------------------------------- the learner
def test_nan_rollout_logprob_fails_the_mismatch_metric_loudly():
    from rlvr_temp.learner.parallel import mismatch

    old = [torch.tensor([-0.5, -1.0]), torch.tensor([-0.2])]
    ok = mismatch(old, [[-0.4, -1.0], [-0.2]], [0, 1], across=False)
    assert ok["logprob/mismatch_mean"] == pytest.approx(0.1 / 3) and ok["logprob/mismatch_max"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"response 1.*rollout log-prob"):
        mismatch(old, [[-0.4, -1.0], [float("nan")]], [0, 1], across=False)


# ---------------------------------------------------------------------------------------- no host sync (S1)
class _NoHostSync(TorchFunctionMode):
    """Fails on the tensor calls that make the host wait for the device."""

    BANNED = frozenset({"cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero"})

    def __torch_function__(self, func, types=(), args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.BANNED:
            raise AssertionError(f"host synchronisation in the per-step path: Tensor.{name}")
        to_cpu = any(isinstance(a, (str, torch.device)) and torch.device(a).type == "cpu" for a in args[1:])
        if name == "to" and to_cpu and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
            raise AssertionError("host synchronisation in the per-step path: Tensor.to('cpu')")
        return func(*args, **(kwargs or {}))


KINDS = {
    "fixed": lambda i: {"temperature": [0.6, 1.0, 1.45][i % 3]},
    "token_global": lambda i: {"temperature": [0.8, 1.0, 1.3][i % 3], "token_rule": GLOBAL},
    "token_global_warmup": lambda i: {"temperature": 1.1, "token_rule": {**GLOBAL, "warmup_tokens": 10}},
    "mixture_rule_temps": lambda i: {"temperature": 1.1, "token_rule": {**GLOBAL, "t_low": [0.7, 0.5][i % 2]}},
    "top_p": lambda i: {"temperature": 1.2, "top_p": [0.9, 1.0, 0.6][i % 3], "top_k": [-1, 5, 0][i % 3]},
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_v1_decode_step_never_waits_for_the_device_and_keeps_its_values(kind):
    """S1: with the device window (what V1 runs on CUDA) a decode step with an unchanged batch layout reads nothing
    back to the host, and temperatures, entropies, logits and log-probs are bit for bit those of the rule's own CPU
    window (the implementation V1 ran before)."""
    procs = [_proc(), _proc()]
    procs[0].device_windows = True  # on the CPU device: the CUDA code path
    outs = [[[] for _ in range(4)] for _ in procs]
    for proc, lists in zip(procs, outs):
        added = [(i, _params(f"r{i}", 64, **KINDS[kind](i)), [1], lists[i]) for i in range(4)]
        proc.update_state(BatchUpdate(4, [], added, []))
    gen = torch.Generator().manual_seed(0)
    for step in range(40):
        logits = torch.randn(4, VOCAB, generator=gen) * 3
        if step % 7 == 3:
            logits[1, 2] = float("nan")
        if step == 0:
            got0 = procs[0].apply(logits.clone())  # builds the plan and the device window (host work allowed)
        else:
            with _NoHostSync():
                got0 = procs[0].apply(logits.clone())
        got1 = procs[1].apply(logits.clone())
        torch.testing.assert_close(got0, got1, rtol=0, atol=0)
        toks = got1.argmax(-1).tolist()
        for lists in outs:
            for out, tok in zip(lists, toks):
                out.append(tok)
    assert procs[0].drain() == procs[1].drain()
    a, b = procs[0].drain_logprobs(), procs[1].drain_logprobs()
    assert a == b and all(len(v) == 40 for v in a.values())
    if kind.startswith("token"):
        procs[0].state_dict()  # copies the device window back into its rule
        (w0,), (w1,) = ([r.window.values() for r in p.rules.values()] for p in procs)
        assert len(w0) == 32 and torch.equal(w0, w1)
