"""The CUDA-only calls of the weight sync, proven on CPU through vLLM's own code (docs/cluster.md, "What is proven
where"). Each test is named after the failure it guards against; vLLM's classes run as they would on a GPU, with
only the device queries shimmed where a constructor asks for a CUDA device:

* IPC init: each engine gets exactly its backend's init fields, parsed by vLLM's own engine (``parse_init_info``);
* IPC update: the update, CUDA-IPC rebuild arguments included, crosses vLLM's msgpack encoder and decoder in the
  environment the rollout worker gives its engine processes;
* buckets: vLLM's packed IPC producer takes a tensor larger than the configured bucket, and an engine whose
  update began and did not finish refuses to generate;
* sleep level 2, colocated layouts resolving to ``ipc`` for any number of learner ranks, every replicated rank
  joining an ``ipc`` sync, and the engines starting before the learner on GPUs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from vllm.distributed.weight_transfer import ipc_engine, packed_tensor
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine, NCCLWeightTransferInitInfo

from rlvr_temp.config.schema import load_config
from rlvr_temp.weights import sender
from rlvr_temp.weights import sync as sync_mod
from rlvr_temp.weights.clients import ENGINE_ENV, LocalLLMClient, PartlyLoadedError, RayEnginesClient

pytestmark = pytest.mark.gpu_contract
ROOT = Path(__file__).resolve().parents[3]


class _Remote:
    """An actor method stand-in: ``.remote(*args)`` calls it at once and returns its result."""

    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeEngineActor:
    """A rollout worker as the client sees it: ``init_weight_transfer_engine`` hands the dict to vLLM's worker-side
    engine class, parsed as vLLM's worker parses it (``WeightTransferEngine.parse_init_info``)."""

    def __init__(self, engine_cls: type) -> None:
        self.engine = object.__new__(engine_cls)  # parse_init_info needs no model or device
        self.got: list[Any] = []
        self.init_weight_transfer_engine = _Remote(lambda info: self.got.append(self.engine.parse_init_info(info)))


@pytest.fixture
def ray_get_identity(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda refs, **_: refs)


def _cuda_shim(monkeypatch) -> None:
    """What vLLM's IPC trainer engine asks of the device when it is built: an index and a GPU UUID."""
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="GPU-0"))


class DictSource(WeightSource):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.tensors.items()]

    def __iter__(self):
        return iter(self.tensors.items())


def _source() -> DictSource:
    g = torch.Generator().manual_seed(0)
    return DictSource(
        {
            "model.embed_tokens.weight": torch.randn(300, 64, generator=g).to(torch.bfloat16),  # 38,400 bytes
            "model.layers.0.mlp.up_proj.weight": torch.randn(16, 64, generator=g).to(torch.bfloat16),
            "model.norm.weight": torch.ones(64, dtype=torch.bfloat16),
        }
    )


# ---------------------------------------------------------------------------------------------- IPC init (B1)
def test_ipc_engines_get_no_rank_offset_their_init_info_rejects(monkeypatch, ray_get_identity):
    """vLLM's IPC trainer sends ``{"packed": ...}``; every engine must parse exactly that (on the old client each got
    ``rank_offset`` too: "unexpected keyword argument 'rank_offset'" at the first sync of a one-GPU run)."""
    _cuda_shim(monkeypatch)
    actors = [FakeEngineActor(ipc_engine.IPCWeightTransferEngine) for _ in range(2)]
    client = RayEnginesClient(actors, [1, 1], "ipc")
    info = ipc_engine.IPCTrainerInitInfo(rank=0, packed=True, packed_buffer_size_bytes=1 << 20)
    ipc_engine.IPCTrainerWeightTransferEngine.trainer_init(info, client=client, source=_source())
    assert [a.got for a in actors] == [[ipc_engine.IPCWeightTransferInitInfo(packed=True)]] * 2


def test_nccl_engines_still_get_their_rank_offsets(ray_get_identity):
    """A backend whose engines join a transfer group keeps its per-engine rank offsets (1 + earlier TP sizes)."""
    actors = [FakeEngineActor(NCCLWeightTransferEngine) for _ in range(2)]
    client = RayEnginesClient(actors, [2, 1], "nccl")
    payload = {"master_address": "10.0.0.1", "master_port": 29500, "world_size": client.world_size}
    client.init_weight_transfer_engine(payload)
    got = [a.got[0] for a in actors]
    assert all(isinstance(g, NCCLWeightTransferInitInfo) for g in got)
    assert [g.rank_offset for g in got] == [1, 3]


# ---------------------------------------------------------------------------------------------- IPC update (B2)
def test_ipc_update_crosses_vllms_msgpack_encoder_in_the_engine_env():
    """The packed IPC update as vLLM's trainer builds it, with the rebuild arguments CUDA's ``reduce_tensor``
    returns, through vLLM's own ``MsgpackEncoder`` / ``MsgpackDecoder`` (the engine client's socket) and the IPC
    engine's ``parse_update_info``. Without the engine environment (the old worker) the encoder raises
    "Object of type <class 'torch._C._TensorMeta'> is not serializable"."""
    code = textwrap.dedent(
        """
        import json, os, sys
        from dataclasses import asdict
        import torch
        from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferEngine, IPCWeightTransferUpdateInfo
        from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

        # the tuple torch.multiprocessing.reductions.reduce_tensor returns for a CUDA tensor (rebuild_cuda_tensor's)
        args = (torch.Tensor, torch.Size([4096]), (1,), 0, torch.UntypedStorage, torch.uint8, 0, b"\\x01" * 64,
                4096, 0, False, b"ref", 0, b"\\x02" * 64, True)
        info = IPCWeightTransferUpdateInfo(names=["w"], dtype_names=["bfloat16"], shapes=[[2048]],
                                           ipc_handles={"GPU-0": args}, tensor_sizes=[4096])
        message = {"update_info": asdict(info)}
        try:
            MsgpackEncoder().encode(message)
            print("encoded without the engine env")
        except TypeError as exc:
            print("refused:", str(exc).splitlines()[0])
        os.environ.update(json.loads(sys.argv[1]))
        frames = MsgpackEncoder().encode(message)
        back = MsgpackDecoder().decode(frames)
        parsed = object.__new__(IPCWeightTransferEngine).parse_update_info(back["update_info"])
        got = parsed.ipc_handles["GPU-0"]
        # msgpack hands sequences back as lists (the consumer takes list(args) anyway); every element must survive
        same = len(got) == len(args) and all(
            g == a if not isinstance(a, tuple) else list(g) == list(a) for g, a in zip(got, args))
        print("types:", got[0] is torch.Tensor, got[4] is torch.UntypedStorage, got[5] is torch.uint8)
        print("same:", same, parsed.names, parsed.tensor_sizes)
        """
    )
    import json

    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(ENGINE_ENV["ipc"])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("refused: Object of type"), lines
    assert lines[-2:] == ["types: True True True", "same: True ['w'] [4096]"], lines
    assert "nccl" not in ENGINE_ENV and "gloo" not in ENGINE_ENV  # the switch stays off for plain metadata


# ---------------------------------------------------------------------------------------------- buckets (B3)
def test_ipc_bucket_fits_a_tensor_larger_than_the_configured_bucket(monkeypatch):
    """The learner's IPC trainer engine is built with a 1 KiB bucket and a 38,400-byte embedding; vLLM's packed IPC
    producer then runs over the source with the buffer size the engine got (its CUDA buffer on the CPU). On the old
    sender it raised "Tensor 'model.embed_tokens.weight' has size 38400 bytes, which exceeds
    buffer_size_bytes=1024" after the engines had begun the update."""
    _cuda_shim(monkeypatch)
    src = _source()
    client = types.SimpleNamespace(world_size=2, init_weight_transfer_engine=lambda info: None)
    engine = sender.trainer_engine("ipc", client, src, bucket_bytes=1024)
    assert engine.packed and engine.packed_buffer_size_bytes == 38_400

    class CpuTorch:  # vLLM's producer, with its CUDA buffer and stream on the CPU
        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

        @staticmethod
        def empty(*a: Any, device: Any = None, **k: Any) -> torch.Tensor:
            return torch.empty(*a, **k)

        cuda = types.SimpleNamespace(current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None))

    monkeypatch.setattr(packed_tensor, "torch", CpuTorch())
    chunks = list(
        packed_tensor.packed_ipc_producer(
            iter(src), "GPU-0", lambda item: item[1], buffer_size_bytes=engine.packed_buffer_size_bytes
        )
    )
    assert [n for c in chunks for n in c.names] == list(src.tensors)
    assert sender.bucket_size(src, 1 << 20) == 1 << 20  # a bucket larger than every tensor is kept


def test_engine_refuses_to_generate_after_an_update_that_failed_midway():
    """An update that raises after its start leaves vLLM's layers partly reloaded: the engine refuses to generate
    (one line) until a whole update has gone through. (Before: it served the half-loaded model.)"""

    class FailingLLM:
        def start_weight_update(self) -> None:
            pass

        def update_weights(self, request: dict) -> None:
            raise ValueError("Tensor 'model.embed_tokens.weight' exceeds buffer_size_bytes")

        def finish_weight_update(self, version: Any = None) -> None:
            pass

        def reset_prefix_cache(self) -> None:
            pass

    client = LocalLLMClient(FailingLLM())
    client.check_loaded()
    client.start_weight_update()
    with pytest.raises(ValueError):
        client.update_weights({})
    with pytest.raises(PartlyLoadedError, match="did not finish") as err:
        client.check_loaded()
    assert "\n" not in str(err.value)
    client.start_weight_update()
    client.finish_weight_update()
    client.check_loaded()  # a whole update: serving again


# ---------------------------------------------------------------------------------------------- sleep (S3)
def test_colocated_engines_sleep_at_level_2_so_no_weights_cross_to_the_host(monkeypatch):
    """Level 1 copied 3.1 GB per engine to pinned host memory and back every step at 1.5B, then the sync overwrote
    it; level 2 discards. (Before: ``sleep(1)``.)"""
    import ray

    levels: list[int] = []
    worker = types.SimpleNamespace(sleep=_Remote(levels.append))
    monkeypatch.setattr(ray, "get", lambda refs, **_: refs)
    cfg = load_config("recipes/gpu/qwen_math_token_1gpu.yaml", [])
    assert cfg.engines_sleep()
    sync = sync_mod.EngineSync(cfg, learner=None, workers=[worker, worker])
    sync.release()
    assert levels == [2, 2] and sync_mod.SLEEP_LEVEL == 2


# ---------------------------------------------------------------------------------------------- colocated (B5)
@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes/gpu").glob("*gpu.yaml")))
def test_colocated_gpu_recipes_sync_over_ipc_never_nccl_on_a_shared_gpu(recipe):
    """Colocated with several learner ranks resolved to NCCL, with learner rank 0 and engine 0 on one GPU in one
    group ("Duplicate GPU detected"); colocated is ``ipc`` now for any number of ranks, split ``nccl``."""
    cfg = load_config(f"recipes/gpu/{recipe}", [])
    assert cfg.weight_sync_backend() == ("ipc" if cfg.resources.layout == "colocated" else "nccl")
    split = load_config(f"recipes/gpu/{recipe}", ["resources.layout=split"])
    assert split.weight_sync_backend() == "nccl"


def test_every_replicated_rank_joins_an_ipc_sync(monkeypatch):
    """vLLM's IPC trainer all-gathers each rank's handles over the learner group, and each engine maps its own GPU's:
    every replicated rank must build a trainer engine for ``ipc`` (before: rank 0 only, so engines on the other GPUs
    found no handle for their GPU), while for ``nccl`` a replicated rank other than 0 has no part."""
    from rlvr_temp.learner import learner as learner_mod
    from rlvr_temp.weights import source

    built: list[tuple[str, int]] = []
    monkeypatch.setattr(
        sender, "trainer_engine", lambda backend, client, policy, b, rank: built.append((backend, rank))
    )
    monkeypatch.setattr(source.PolicySource, "from_learner", lambda learner, merge_lora=True: "policy", raising=False)
    rank1 = types.SimpleNamespace(rank=1, sharded=False, _sender=None, _incarnation=None)
    assert {"init_weight_sync", "sync_weights"} <= learner_mod.Learner.collective_methods(rank1)
    learner_mod.Learner.init_weight_sync(rank1, client=None, backend="nccl", bucket_bytes=1)
    assert built == [] and learner_mod.Learner.sync_weights(rank1) == {}
    learner_mod.Learner.init_weight_sync(rank1, client=None, backend="ipc", bucket_bytes=1)
    assert built == [("ipc", 1)]
