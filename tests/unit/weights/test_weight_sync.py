"""The gloo weight-sync backend (rlvr_temp.weights.gloo): bucketed bytes-exact transfers and clean aborts with
in-process fake engines, the learner's PolicySource against export_weights, fan-out over Ray actors
(rlvr_temp.weights.clients), and real vLLM CPU engines (in-process and tensor-parallel) whose greedy output after
two sends equals transformers'."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vllm.config import WeightTransferConfig
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory
from vllm.utils.network_utils import get_open_port

from rlvr_temp.weights import gloo as ws
from rlvr_temp.weights.clients import LocalLLMClient, RayEnginesClient
from rlvr_temp.weights.source import PolicySource

ROOT = Path(__file__).resolve().parents[3]
PROMPTS = ["Q: 12+7\nA:", "Q: 47+38\nA:", "Q: 3*4\nA:", "Q: 83-47\nA:"]


# ---------------------------------------------------------------------------------------------- fakes
class DictSource(WeightSource):
    """Named tensors in order; ``lie`` = {name: tensor} yields another tensor than metadata() declares."""

    def __init__(self, tensors: dict[str, torch.Tensor], lie: dict[str, torch.Tensor] | None = None):
        self.tensors, self.lie = tensors, lie or {}

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.tensors.items()]

    def __iter__(self):
        for n, t in self.tensors.items():
            yield n, self.lie.get(n, t)


class FakeModel(torch.nn.Module):
    """Records what load_weights receives, one call per bucket; ``refuse`` makes loading that name raise."""

    def __init__(self, refuse: str | None = None):
        super().__init__()
        self.got: dict[str, torch.Tensor] = {}
        self.calls = 0
        self.refuse = refuse

    def load_weights(self, weights):
        self.calls += 1
        for n, t in weights:
            if n == self.refuse:
                raise KeyError(f"no parameter {n}")
            self.got[n] = t.clone()
        return set(self.got)


class FakeEngine(ws.GlooWeightTransferEngine):
    """The real worker engine on a fake model, without vLLM's layerwise reload."""

    def __init__(self, model: FakeModel, rank: int = 0):
        cfg = SimpleNamespace(
            parallel_config=SimpleNamespace(data_parallel_index=0, world_size=1, rank=rank), model_config=None
        )
        super().__init__(WeightTransferConfig(backend="gloo"), cfg, torch.device("cpu"), model)
        self.rank_offset: int | None = None

    def start_weight_update(self) -> None:
        pass

    def finish_weight_update(self) -> None:
        pass


class FakeClient:
    """VLLMWeightSyncClient over fake engines in this process (each engine in its own thread, as in vLLM)."""

    def __init__(self, engines: list[FakeEngine]):
        self.engines = engines
        self.errors: list[BaseException] = []

    def _all(self, fn) -> None:
        with ThreadPoolExecutor(len(self.engines)) as exe:
            futures = [exe.submit(fn, k, e) for k, e in enumerate(self.engines)]
        self.errors = [f.exception() for f in futures if f.exception() is not None]
        if self.errors:
            raise self.errors[0]

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._all(lambda k, e: e.init_transfer_engine(e.parse_init_info({**init_info, "rank_offset": 1 + k})))

    def start_weight_update(self) -> None:
        pass

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._all(lambda k, e: e.update_weights(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        pass


class GlooWorkerExtension:
    """A ``worker_extension_cls`` whose import (this module imports rlvr_temp.weights.gloo) registers ``gloo`` in
    spawned vLLM worker processes before their model loads. Adds no methods."""


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"embed.weight": torch.randn(64, 32, generator=g).to(torch.bfloat16)}
    for i in range(4):
        out[f"layers.{i}.w"] = torch.randn(32, 32, generator=g)
        out[f"layers.{i}.b"] = torch.randn(32, generator=g).to(torch.float16)
    out["steps"] = torch.tensor(7, dtype=torch.int64)  # 0-dim, integer: any dtype travels as its bytes
    return out


def _trainer(client, source, bucket_bytes: int = ws.DEFAULT_BUCKET_BYTES, world_size: int = 2):
    info = ws.GlooTrainerInitInfo("127.0.0.1", get_open_port(), world_size, bucket_bytes=bucket_bytes, rank=0)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)


# ---------------------------------------------------------------------------------------------- fast
def test_register_is_idempotent_and_reaches_both_factories():
    ws.register()
    ws.register()
    assert WeightTransferEngineFactory._registry["gloo"]() is ws.GlooWeightTransferEngine
    assert WeightTransferTrainerFactory._registry["gloo"]() is ws.GlooTrainerWeightTransferEngine


def test_bucket_plan_and_update_info_validation():
    meta = [ParamMeta(f"p{i}", torch.float32, (n,)) for i, n in enumerate([4, 4, 10, 1, 1])]
    plan = ws.GlooWeightTransferUpdateInfo.plan
    assert plan(meta, 32).bucket_ends == [2, 3, 5]  # 16+16 | 40 alone (over the budget) | 4+4
    assert plan(meta, 1 << 20).bucket_ends == [5]
    with pytest.raises(ValueError, match="bucket_bytes must be >= 1"):
        plan(meta, 0)
    with pytest.raises(ValueError, match="do not split 5 parameters"):
        ws.GlooWeightTransferUpdateInfo([m.name for m in meta], ["float32"] * 5, [[4]] * 5, [2, 2, 5])
    with pytest.raises(ValueError, match="'p1' has unknown dtype 'float33'"):
        ws.GlooWeightTransferUpdateInfo(["p0", "p1"], ["float32", "float33"], [[1], [1]], [2])


@pytest.mark.parametrize("bucket_bytes", [1, 3000, ws.DEFAULT_BUCKET_BYTES])
def test_buckets_deliver_identical_bytes_to_every_engine(bucket_bytes: int):
    """One bucket per tensor, some (4 KiB tensors alone, small ones together), or one: every engine receives
    bitwise what the source holds (bf16, fp16, int); the engine is reusable for a second round."""
    models = [FakeModel(), FakeModel()]
    engine = _trainer(FakeClient([FakeEngine(m) for m in models]), DictSource({}), bucket_bytes, world_size=3)
    for seed in (0, 1):
        sent = _tensors(seed)
        engine.source = DictSource(sent)
        stats = engine.send()
        assert stats["bytes"] == sum(t.numel() * t.element_size() for t in sent.values())
        assert stats["params"] == len(sent)
        for m in models:
            assert list(m.got) == list(sent)
            assert all(m.got[n].dtype == t.dtype and torch.equal(m.got[n], t) for n, t in sent.items())
    expected_buckets = {1: len(sent), 3000: 9, ws.DEFAULT_BUCKET_BYTES: 1}[bucket_bytes]
    assert stats["buckets"] == expected_buckets and models[0].calls == 2 * expected_buckets
    engine.shutdown()


def test_source_disagreeing_with_metadata_aborts_everywhere_naming_the_parameter():
    """A tensor of another shape than declared: the trainer and the engine both raise a one-line ValueError naming
    the parameter (no hang); the next round on the same group succeeds."""
    model = FakeModel()
    client = FakeClient([FakeEngine(model)])
    sent = _tensors()
    engine = _trainer(client, DictSource(sent, lie={"layers.2.w": torch.zeros(32, 31)}), bucket_bytes=3000)
    with pytest.raises(ValueError, match=r"'layers\.2\.w'") as err:
        engine.send_weights()
    assert "\n" not in str(err.value) and "(32, 31)" in str(err.value)
    assert (
        len(client.errors) == 1 and isinstance(client.errors[0], ValueError) and "'layers.2.w'" in str(client.errors[0])
    )
    assert "layers.3.w" not in model.got  # nothing after the bad bucket was loaded
    engine.source = DictSource(sent)
    engine.send_weights()
    assert all(torch.equal(model.got[n], t) for n, t in sent.items())


def test_source_ending_early_or_yielding_extra_aborts():
    sent = _tensors()
    short = dict(list(sent.items())[:-1])
    client = FakeClient([FakeEngine(FakeModel())])
    engine = _trainer(client, DictSource(sent), bucket_bytes=3000)

    class Short(DictSource):
        def __iter__(self):
            yield from short.items()

    class Extra(DictSource):
        def __iter__(self):
            yield from sent.items()
            yield "surplus", torch.zeros(1)

    engine.source = Short(sent)
    with pytest.raises(ValueError, match=r"'steps'.*ended early"):
        engine.send_weights()
    engine.source = Extra(sent)
    with pytest.raises(ValueError, match="extra 'surplus'"):
        engine.send_weights()


def test_engine_failing_to_load_aborts_the_trainer_naming_the_parameter():
    client = FakeClient([FakeEngine(FakeModel()), FakeEngine(FakeModel(refuse="layers.1.b"))])
    engine = _trainer(client, DictSource(_tensors()), bucket_bytes=1, world_size=3)
    with pytest.raises(ValueError, match=r"'layers\.1\.b': an engine failed to load it"):
        engine.send_weights()
    assert any("KeyError" in str(e) and "layers.1.b" in str(e) for e in client.errors)


def test_engines_that_fail_outright_fail_the_trainer_at_once():
    """An engine that cannot join, or rejects a round before its first collective: the trainer raises now, instead
    of waiting in the rendezvous or a collective until the group's timeout."""

    class NoJoin(FakeClient):
        def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
            raise ConnectionError("engine 1 is gone")

    class Rejecting(FakeEngine):
        def receive_weights(self, update_info) -> None:
            raise RuntimeError("not today")

    with pytest.raises(RuntimeError, match=r"failed to join.*engine 1 is gone"):
        _trainer(NoJoin([FakeEngine(FakeModel())]), DictSource(_tensors()))
    rejecting = Rejecting(FakeModel())
    engine = _trainer(FakeClient([rejecting]), DictSource(_tensors()))
    with pytest.raises(RuntimeError, match="rejected the weight update: not today"):
        engine.send_weights()
    # the trainer's status all-reduce is still pending: gloo only lets go of it once the peers' end is gone
    rejecting.shutdown()
    engine.shutdown()


def _learner(tiny_model_path: str, mode: str):
    from rlvr_temp.config.schema import RunConfig
    from rlvr_temp.learner.learner import Learner

    cfg = RunConfig.model_validate(
        {"model": {"path": tiny_model_path}, "learner": {"mode": mode, "mini_batch_size": 2, "micro_batch_size": 2}}
    )
    learner = Learner(tiny_model_path, cfg, num_threads=2)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # peft starts lora_B at zero: make the merged deltas non-zero; full: move the weights
        for n, p in learner.model.named_parameters():
            if p.requires_grad and ("lora_B" in n or mode == "full"):
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))
    return learner


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_policy_source_equals_export_weights(tiny_model_path: str, mode: str):
    """Same names, shapes and dtypes in metadata() as in iteration, and bitwise the values of export_weights()."""
    learner = _learner(tiny_model_path, mode)
    source = PolicySource.from_learner(learner)
    pairs = list(source)
    exported = learner.export_weights()
    assert [m.name for m in source.metadata()] == [n for n, _ in pairs]
    assert all(m.dtype == t.dtype and m.shape == tuple(t.shape) for m, (_, t) in zip(source.metadata(), pairs))
    assert sorted(n for n, _ in pairs) == sorted(exported) and len(pairs) == len(exported)
    for name, t in pairs:
        assert torch.equal(t.cpu(), exported[name]), name
    if mode != "full":
        assert not any("lora_" in n or "base_layer" in n or n.startswith("base_model.") for n, _ in pairs)


# ---------------------------------------------------------------------------------------------- Ray fan-out
@pytest.mark.slow
def test_ray_engines_client_fans_out_with_rank_offsets(ray_cluster):
    @ray_cluster.remote(num_cpus=0)
    class Holder:
        def __init__(self):
            self.model = FakeModel()
            self.engine = FakeEngine(self.model)
            self.offset = None

        def init_weight_transfer_engine(self, init_info: dict) -> None:
            self.offset = init_info["rank_offset"]
            self.engine.init_transfer_engine(self.engine.parse_init_info(init_info))

        def start_weight_update(self) -> None:
            self.engine.start_weight_update()

        def update_weights(self, update_info: dict) -> None:
            self.engine.update_weights(update_info)

        def finish_weight_update(self) -> None:
            self.engine.finish_weight_update()

        def report(self):
            return self.offset, self.model.got

    # the actors unpickle this module's fakes by reference: put the tests folder on their path
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)])}}
    holders = [Holder.options(runtime_env=env).remote() for _ in range(2)]
    client = RayEnginesClient(holders, [1, 1], "gloo")
    assert client.world_size == 3
    sent = _tensors()
    _trainer(client, DictSource(sent), bucket_bytes=3000, world_size=client.world_size).send_weights()
    reports = ray_cluster.get([h.report.remote() for h in holders])
    assert [r[0] for r in reports] == [1, 2]
    for _, got in reports:
        assert all(torch.equal(got[n], t) for n, t in sent.items())
    with pytest.raises(ValueError, match="TP sizes"):
        RayEnginesClient(holders, [1], "gloo")


# ---------------------------------------------------------------------------------------------- real engines
def _perturbed(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))


def _hf_greedy(model: torch.nn.Module, tokenizer: Any, n: int = 16) -> list[list[int]]:
    out = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out.append(model.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1] :].tolist())
    return out


@pytest.mark.slow
def test_tensor_parallel_engine_receives_on_both_ranks(tiny_model_path: str, tmp_path):
    """TP=2 (multiprocess, one worker per core): both workers join the group (world 3) and load their shards; the
    engine's greedy output after the send equals transformers'. In a subprocess: its own env and engine processes."""
    script = tmp_path / "tp2.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from vllm import LLM, SamplingParams
        from vllm.config import WeightTransferConfig
        from rlvr_temp.weights.clients import LocalLLMClient
        from rlvr_temp.weights.source import PolicySource
        from tests.unit.weights.test_weight_sync import PROMPTS, GlooWorkerExtension, _hf_greedy, _perturbed, _trainer
        if __name__ == "__main__":
            path = {tiny_model_path!r}
            llm = LLM(model=path, dtype="float32", max_model_len=128, enforce_eager=True, tensor_parallel_size=2,
                      worker_extension_cls=f"{{GlooWorkerExtension.__module__}}.GlooWorkerExtension",
                      weight_transfer_config=WeightTransferConfig(backend="gloo"))
            greedy = lambda: [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS,
                SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)]
            before = greedy()
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            _perturbed(model, 0)
            engine = _trainer(LocalLLMClient(llm), PolicySource(model, torch.float32), 1 << 16, world_size=3)
            stats = engine.send()
            after = greedy()
            ref = _hf_greedy(model, AutoTokenizer.from_pretrained(path))
            print("RESULT" + json.dumps(dict(before=before, after=after, ref=ref, buckets=stats["buckets"])))
            llm.llm_engine.engine_core.shutdown()
        """)
    )
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    import json

    res = json.loads(lines[-1][len("RESULT") :])
    assert res["buckets"] > 1
    assert res["after"] == res["ref"]
    assert res["after"] != res["before"]


@pytest.fixture(scope="module")
def engine(tiny_model_path: str):
    """An in-process vLLM CPU engine on the tiny model with the gloo weight-transfer backend."""
    yield _inprocess_llm(tiny_model_path, seed=0)


def _inprocess_llm(model: str, **kwargs: Any) -> Any:
    """``vllm.LLM`` in this process (no engine-core process) on ``model``, CPU, with gloo weight transfer."""
    from vllm import LLM

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        return LLM(
            model=model,
            dtype="float32",
            max_model_len=128,
            enforce_eager=True,
            weight_transfer_config=WeightTransferConfig(backend="gloo"),
            **kwargs,
        )


def _greedy(llm: Any) -> list[list[int]]:
    from vllm import SamplingParams

    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.slow
def test_engine_greedy_equals_transformers_after_each_of_two_sends(engine, tiny_model_path: str):
    """Two rounds of perturbed weights (small buckets, then one bucket): after each send the engine's greedy tokens
    equal transformers' on the same weights and differ from what the engine produced before; then a round whose
    source lies about one parameter aborts with its name, the engine still generates, and a good round recovers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    source = PolicySource(model, torch.float32)
    trainer = _trainer(LocalLLMClient(engine), source, bucket_bytes=1 << 16)
    previous = _greedy(engine)
    for seed, bucket_bytes in ((0, 1 << 16), (1, ws.DEFAULT_BUCKET_BYTES)):
        _perturbed(model, seed)
        trainer.bucket_bytes = bucket_bytes
        stats = trainer.send()
        assert (stats["buckets"] > 1) == (bucket_bytes == 1 << 16)
        assert stats["bytes"] == sum(t.numel() * t.element_size() for t in model.state_dict().values())
        now = _greedy(engine)
        assert now == _hf_greedy(model, tokenizer)
        assert now != previous
        previous = now

    name = "model.layers.2.mlp.down_proj.weight"
    trainer.source = DictSource(dict(model.state_dict()), lie={name: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=f"'{name}'"):
        trainer.send_weights()
    assert len(_greedy(engine)) == len(PROMPTS)  # no layer left on the meta device
    _perturbed(model, 2)
    trainer.source = source
    trainer.send_weights()
    assert _greedy(engine) == _hf_greedy(model, tokenizer)


@pytest.mark.slow
def test_ttm_head_travels_last_and_survives_small_buckets(tiny_model_path: str):
    """Learned mode: the engine's model runs a TTM head whose load_weights fills in initial head values for any
    call without them (rlvr_temp.engine.ttm). The source yields the head last, so with one bucket per layer the head
    still ends up bitwise equal to the learner's, send after send."""
    from transformers import AutoModelForCausalLM

    from rlvr_temp.engine import ttm as ttm_vllm
    from rlvr_temp.temperature import TokenTemperatureHead

    settings = {"heads": 4, "t_min": 0.01, "t_max": 0.99, "init_temperature": 0.5}
    llm = _inprocess_llm(tiny_model_path, hf_overrides=ttm_vllm.hf_overrides(tiny_model_path, settings))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    head = TokenTemperatureHead(model.config.hidden_size, **settings, init_std=0.3)
    source = PolicySource(model, torch.float32, ttm_head=head)
    assert [m.name for m in source.metadata()][-2:] == ["ttm_head.proj.weight", "ttm_head.proj.bias"]
    trainer = _trainer(LocalLLMClient(llm), source, bucket_bytes=1 << 16)
    for _ in range(2):
        with torch.no_grad():
            head.proj.bias.add_(0.1)
        assert trainer.send()["buckets"] > 1
        weight, bias = llm.apply_model(lambda m: (m.ttm_head.proj.weight.clone(), m.ttm_head.proj.bias.clone()))[0]
        assert torch.equal(weight, head.proj.weight) and torch.equal(bias, head.proj.bias)
    llm.llm_engine.engine_core.shutdown()
