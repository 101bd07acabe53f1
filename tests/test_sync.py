"""The driver's side of the weight sync (rlvr_temp.weights.sync.EngineSync): which backend and sleep mode a recipe gets,
the order of sleep / wake / transfer calls, and re-forming the transfer group after an actor restart. Recording
Ray actors stand in for the learner and the engines (the real transfer is tests/test_weight_sync.py's and the
end-to-end tests')."""

from __future__ import annotations

import pytest
import ray

from rlvr_temp.config.schema import load_config
from rlvr_temp.weights.sync import EngineSync


def _cfg(*overrides: str):
    return load_config("recipes/demo/base.yaml", list(overrides))


@pytest.mark.parametrize(
    "overrides, backend, sleep",
    [
        ((), "gloo", False),  # CPU
        (("ray.rollout_gpus=1", "ray.learner_gpus=1"), "ipc", True),  # one GPU shared (colocated, one rank)
        (("ray.rollout_gpus=1", "ray.learner_gpus=1", "resources.layout=split"), "nccl", False),
        (("ray.rollout_gpus=1", "ray.learner_gpus=1", "resources.learner_ranks=2"), "nccl", True),
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
        "sleep1",
        "sleep1",
        "wake:weights",
        "wake:weights",
        "send",
        "wake:kv_cache",
        "wake:kv_cache",
        "sleep1",
        "sleep1",
        "wake:weights",
        "wake:weights",
        "leave",
        "leave",
        "connect:nccl:3",
        "send",
        "wake:kv_cache",
        "wake:kv_cache",
    ]
