"""The driver's side of the weight sync (rlvr_temp.weights.sync.EngineSync): which backend and sleep mode a recipe gets,
the order of sleep / wake / transfer calls, and re-forming the transfer group after an actor restart. Recording
Ray actors stand in for the learner and the engines (the real transfer is tests/unit/weights/test_weight_sync.py's and
the end-to-end tests'). And the package's shape: one module per backend behind rlvr_temp.weights.base, and which ends
import without vLLM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray

from rlvr_temp.config.schema import load_config
from rlvr_temp.weights import sender
from rlvr_temp.weights.base import Transport
from rlvr_temp.weights.sync import EngineSync

ROOT = Path(__file__).resolve().parents[3]


def _cfg(*overrides: str):
    return load_config("recipes/demo/base.yaml", list(overrides))


@pytest.mark.parametrize(
    "overrides, backend, sleep",
    [
        ((), "gloo", False),  # CPU
        (("ray.rollout_gpus=1", "ray.learner_gpus=1"), "ipc", True),  # one GPU shared (colocated, one rank)
        (("ray.rollout_gpus=1", "ray.learner_gpus=1", "resources.layout=split"), "nccl", False),
        # several ranks, colocated: each rank's GPU shares its engines (NCCL would put two ranks on one GPU)
        (("ray.rollout_gpus=1", "ray.learner_gpus=1", "resources.learner_ranks=2"), "ipc", True),
        (
            ("rollout.engine.weight_sync=object_store", "rollout.engine.sleep_mode=false", "ray.rollout_gpus=1"),
            "object_store",
            False,
        ),
    ],
)
def test_auto_settings_follow_the_layout_and_devices(overrides, backend, sleep):
    cfg = _cfg(*overrides)
    assert cfg.weight_sync_backend() == backend
    assert cfg.engines_sleep() is sleep


@ray.remote(num_cpus=0)
class Log:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def add(self, call: str) -> None:
        self.calls.append(call)

    def get(self) -> list[str]:
        return self.calls


@ray.remote(num_cpus=0)
class FakeWorker:
    def __init__(self, log) -> None:
        self.log = log

    def _add(self, call: str) -> None:
        ray.get(self.log.add.remote(call))

    def sleep(self, level: int) -> None:
        self._add(f"sleep{level}")

    def wake_up(self, tags: list[str]) -> None:
        self._add("wake:" + ",".join(tags))

    def shutdown_weight_transfer_engine(self) -> None:
        self._add("leave")


@ray.remote(num_cpus=0)
class FakeLearner:
    def __init__(self, log) -> None:
        self.log = log

    def init_weight_sync(self, client, backend: str, bucket_bytes: int) -> None:
        ray.get(self.log.add.remote(f"connect:{backend}:{client.world_size}"))

    def sync_weights(self, incarnation: str | None = None) -> dict[str, float]:
        ray.get(self.log.add.remote("send"))
        return {"seconds": 0.5, "bytes": 10.0, "params": 2.0}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_sleep_wake_and_reconnect_order(local_ray):
    log = Log.remote()
    workers = [FakeWorker.remote(log) for _ in range(2)]
    cfg = _cfg("ray.rollout_gpus=1", "ray.learner_gpus=1", "rollout.engine.weight_sync=nccl", "rollout.num_workers=2")
    sync = EngineSync(cfg, FakeLearner.remote(log), workers)
    assert sync.sync("L0", ["w0", "w1"]) == {"sync/bytes": 10.0, "sync/params": 2.0}  # seconds: time/sync's
    sync.release()
    sync.sync("L0", ["w0", "w1"])  # same members: no new group
    sync.release()
    sync.sync("L0", ["w0", "w1-restarted"])  # an engine restarted: the survivors leave, a new group forms
    calls = ray.get(log.get.remote())
    assert calls == [
        "leave",
        "leave",
        "connect:nccl:3",
        "send",
        "sleep2",
        "sleep2",
        "wake:weights",
        "wake:weights",
        "send",
        "wake:kv_cache",
        "wake:kv_cache",
        "sleep2",
        "sleep2",
        "wake:weights",
        "wake:weights",
        "leave",
        "leave",
        "connect:nccl:3",
        "send",
        "wake:kv_cache",
        "wake:kv_cache",
    ]


def test_driver_and_learner_ends_import_without_vllm():
    """The driver's handle, the learner's sender, the clients and the policy's tensors import without vLLM (a
    learner that never sends needs none); ``PolicySource`` is vLLM's ``WeightSource`` once asked for."""
    code = (
        "import sys, pickle\n"
        "from rlvr_temp.weights import base, clients, sender, source, sync\n"
        "print('vllm' in sys.modules)\n"
        "from rlvr_temp.weights.source import PolicySource\n"
        "from vllm.distributed.weight_transfer.base import WeightSource\n"
        "print(issubclass(PolicySource, WeightSource), pickle.loads(pickle.dumps(PolicySource)) is PolicySource)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "True", "True"], out.stdout


def test_backends_by_name():
    """One module per backend behind one interface; each one's init info names it in vLLM's factories."""
    assert sender.BACKENDS == ("gloo", "nccl", "ipc")
    for name in sender.BACKENDS:
        transport = sender.transport(name)
        assert isinstance(transport, Transport) and transport.name == name
        info = transport.init_info(3, 0, 1 << 20)
        assert type(info).backend == name and info.rank == 0
    assert sender.transport("gloo").init_info(3, 0, 1 << 20).world_size == 3
    with pytest.raises(ValueError, match="'object_store': expected gloo, nccl or ipc"):
        sender.transport("object_store")
