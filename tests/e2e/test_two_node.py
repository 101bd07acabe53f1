"""A real two-node Ray cluster on one machine (`ray start --head` with the dashboard, and a second raylet joining it),
and training launched the way a cluster user launches it: `ray job submit --working-dir ... -- rlvr-temp train`.

One CPU per node and one CPU per actor, so the rollout engine and the learner cannot share a node; the cluster's
state API says which node each actor ran on. The model is named by a hub id (a hub cache laid out in tmp_path, the
job offline), the run directory is relative and lands under ``RLVR_TEMP_RUN_ROOT``. The first job is stopped with
`ray job stop` after its second checkpoint; a second submission resumes from the newest checkpoint and finishes, and
``metrics.jsonl`` holds each step once, the rows before the checkpoint as the first job wrote them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlvr_temp.config.schema import RunConfig
from tests.helpers import fake_hub_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the environment's `ray` and `rlvr-temp`
HUB_ID = "rlvr-test/tiny-math"
RUN = "runs/two_node"  # relative: resolved under RLVR_TEMP_RUN_ROOT by the job's driver
OVERRIDES = [
    f"model.path={HUB_ID}",
    f"trainer.run_dir={RUN}",
    "data.synthetic.n_train=8",
    "rollout.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_response_len=16",
    "algorithm.dynamic_sampling=false",
    "learner.mini_batch_size=8",
    "learner.micro_batch_size=8",
    "learner.warmup_steps=0",
    "checkpoint.every=1",
    "checkpoint.keep=10",
    "eval.every=0",
    "reward.num_workers=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "ray.rollout_cpus=1",
    "ray.learner_cpus=1",
]
if "resources" in RunConfig.model_fields:  # placement-group layouts: engine and learner in bundles of their own
    OVERRIDES += ["resources.layout=split", "resources.strategy=STRICT_SPREAD"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class TwoNodes:
    """A head node (1 CPU, resource ``head``, dashboard) and a second raylet (1 CPU, resource ``node2``), each
    started by `ray start` in a process group of its own, stopped by signalling those groups (never `ray stop`,
    which would stop every Ray on the machine)."""

    def __init__(self, temp_dir: Path, env: dict[str, str]) -> None:
        self.temp_dir, self.env, self.groups = temp_dir, env, []
        self.gcs = self.dashboard = ""

    def start(self) -> None:
        gcs, dash, client, *agent = _free_ports(11)
        self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        common = ["--num-cpus=1", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        common += ["--min-worker-port=0", "--max-worker-port=0"]  # several raylets on one machine
        head = ["--head", f"--port={gcs}", "--include-dashboard=true", f"--dashboard-port={dash}"]
        head += [f"--ray-client-server-port={client}", '--resources={"head": 1}']
        self._start([*head, *self._agent_ports(agent[:4]), *common])
        self._start([f"--address={self.gcs}", '--resources={"node2": 1}', *self._agent_ports(agent[4:]), *common])

    @staticmethod
    def _agent_ports(ports: list[int]) -> list[str]:
        # the defaults are fixed ports: two raylets on one machine (or another test's cluster) would collide
        names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port")
        return [f"--{name}={port}" for name, port in zip(names, ports)] + [f"--runtime-env-agent-port={ports[-1]}"]

    def _start(self, args: list[str]) -> None:
        cmd = [str(BIN / "ray"), "start", *args]
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.groups.append(proc.pid)  # `ray start` returns once its daemons run; they stay in the group it led
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-5000:]

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in self.groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, sig)
            deadline = time.time() + 15
            while time.time() < deadline and any(_group_alive(g) for g in self.groups):
                time.sleep(0.5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster():
    # Ray's unix sockets live under the temp dir and their paths are limited to 107 bytes: pytest's basetemp (long
    # on macOS and CI runners) would not do, so a short folder of its own under /tmp, removed afterwards
    temp_dir = Path(tempfile.mkdtemp(prefix="rt2n_", dir="/tmp" if os.path.isdir("/tmp") else None))
    assert len(str(temp_dir)) <= 40, f"temp dir {temp_dir} too long for Ray's socket paths"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update({"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    env.update({"TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("RAY_ADDRESS", None)
    nodes = TwoNodes(temp_dir, env)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(cluster: TwoNodes, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ray"), "job", *args]
    return subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=timeout)


def _submit(cluster: TwoNodes, job_dir: Path, env_vars: dict[str, str], sub_id: str, steps: int, wait: bool):
    runtime_env = json.dumps({"env_vars": env_vars})
    args = ["submit", f"--address={cluster.dashboard}", f"--submission-id={sub_id}", f"--working-dir={job_dir}"]
    args += [f"--runtime-env-json={runtime_env}", *([] if wait else ["--no-wait"])]
    return _ray(cluster, *args, "--", "rlvr-temp", "train", "recipe.yaml", *OVERRIDES, f"trainer.total_steps={steps}")


def _latest_step(run: Path) -> int:
    latest = run / "checkpoints" / "latest"
    name = latest.read_text().strip() if latest.is_file() else ""
    return int(name.split("_")[1]) if name.startswith("step_") else 0


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _actor_nodes(cluster: TwoNodes) -> dict[str, set[str]]:
    """{head / node2: class names of the live actors on it}, from the cluster's state API (the dashboard)."""
    from ray.util.state import list_actors, list_nodes

    names = {}
    for node in list_nodes(address=cluster.dashboard):
        names[node.node_id] = "head" if "head" in node.resources_total else "node2"
    out: dict[str, set[str]] = {"head": set(), "node2": set()}
    for actor in list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")]):
        out[names[actor.node_id]].add(actor.class_name)
    return out


def test_job_submit_two_nodes_stop_and_resume(cluster, tmp_path, tiny_model_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    hub = tmp_path / "hub"
    fake_hub_model(hub, HUB_ID, tiny_model_path)
    job_dir = tmp_path / "job"  # what --working-dir uploads: just the recipe
    job_dir.mkdir()
    shutil.copy(ROOT / "recipes/demo/base.yaml", job_dir / "recipe.yaml")
    shared = tmp_path / "shared"
    # HF_HUB_OFFLINE is in the raylets' environment too: the driver must leave it to the job (launch.init_ray)
    env_vars = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "RLVR_TEMP_RUN_ROOT": str(shared)}
    run = shared / RUN

    first = _submit(cluster, job_dir, env_vars, "two-node-1", steps=50, wait=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    placed: dict[str, set[str]] = {}
    jobs = JobSubmissionClient(cluster.dashboard)
    deadline = time.time() + 900
    while time.time() < deadline and _latest_step(run) < 2:
        status = jobs.get_job_status("two-node-1")
        assert status in (JobStatus.PENDING, JobStatus.RUNNING), jobs.get_job_logs("two-node-1")[-5000:]
        if not ({"RolloutWorker", "Learner"} <= placed.get("head", set()) | placed.get("node2", set())):
            placed = _actor_nodes(cluster)
        time.sleep(2)
    assert _latest_step(run) >= 2, jobs.get_job_logs("two-node-1")[-5000:]
    if not ({"RolloutWorker", "Learner"} <= placed["head"] | placed["node2"]):
        placed = _actor_nodes(cluster)
    # one CPU per node and per actor: the engine and the learner ran on different nodes, each found where it ran
    engine_node = "head" if "RolloutWorker" in placed["head"] else "node2"
    learner_node = "head" if "Learner" in placed["head"] else "node2"
    assert "RolloutWorker" in placed[engine_node] and "Learner" in placed[learner_node], placed
    assert engine_node != learner_node, placed

    stop = _ray(cluster, "stop", f"--address={cluster.dashboard}", "two-node-1", timeout=300)
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    assert jobs.get_job_status("two-node-1") == JobStatus.STOPPED
    step = _latest_step(run)  # the newest complete checkpoint when the job stopped (maybe one saved on SIGTERM)
    before = {r["step"]: r for r in _rows(run) if r["step"] < step}
    assert sorted(before) == list(range(step))

    second = _submit(cluster, job_dir, env_vars, "two-node-2", steps=step + 2, wait=True)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-5000:]
    assert f"at step {step}" in out and "resumed from" in out, out[-5000:]
    rows = _rows(run)
    assert [r["step"] for r in rows] == list(range(step + 2))  # each step once: continued, not restarted
    assert all(rows[s] == before[s] for s in range(step))  # the rows before the checkpoint, as the first job wrote
    assert _latest_step(run) == step + 2
    saved = (run / "config.yaml").read_text()
    assert f"run_dir: {run}" in saved and f"path: {HUB_ID}" in saved  # absolute run dir under RLVR_TEMP_RUN_ROOT
