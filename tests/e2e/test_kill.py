"""``kill -9`` of ``rlvr-temp train`` leaves no process of its run behind: not Ray's (GCS, raylet, dashboard and
runtime-env agents, log monitor, actors) and not vLLM's (``EngineCore``, ``Worker``), whichever phase the driver
dies in (rlvr_temp.driver.reaper, rlvr_temp.engine.extension; docs/loop.md, "What a killed run leaves").

One real run per phase on the tiny model, killed as soon as it reaches the phase: start-up (the first vLLM engine
process exists), generation (the driver has just asked the engines for the step's rollouts), update (the driver
has just asked the learner for the step's update). The driver is the CLI, run by a two-line wrapper that marks the
last two phases with a file as it enters them. The run's processes are every process seen descended from the
driver before the kill, and every process carrying the run's token (``RLVR_TEMP_RUN_TOKEN``) after it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.gpu_contract]

ROOT = Path(__file__).resolve().parents[2]
TOKEN_ENV = "RLVR_TEMP_RUN_TOKEN"  # rlvr_temp.driver.reaper.TOKEN_ENV (a literal: this test predates the module)
# the cheapest run that still reaches an update, with a generation and an update long enough to be killed in
OVERRIDES = [
    "rollout.prompts_per_step=8",
    "rollout.group_size=8",
    "rollout.max_response_len=160",
    "learner.mini_batch_size=64",
    "learner.micro_batch_size=64",
    "algorithm.dynamic_sampling=false",
    "logging.progress=false",
    "logging.tensorboard=false",
    "trainer.total_steps=1",
    "checkpoint.every=0",
    "eval.every=0",
]
# the CLI, with a file in argv[1] marking the start of each step's generation and update
DRIVER = """
import sys
from pathlib import Path
from rlvr_temp import cli
from rlvr_temp.driver.trainer import Trainer

def marked(name, method):
    def wrapper(self, *args, **kwargs):
        (Path(sys.argv[1]) / name).touch()
        return method(self, *args, **kwargs)
    return wrapper

Trainer.generate = marked("generation", Trainer.generate)
Trainer.learn = marked("update", Trainer.learn)
sys.exit(cli.main(sys.argv[2:]))
"""
REAPED_WITHIN_S = 30.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[1]), int(fields[19])) if fields[0] != "Z" else None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live process under ``root`` (``root`` included)."""
    stats = {pid: s for pid in _pids() if (s := _stat(pid)) is not None}
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in found:
            found[pid] = stats[pid][1]
            frontier.extend(child for child, (ppid, _) in stats.items() if ppid == pid)
    return found


def _token(pids) -> str | None:
    for pid in pids:
        try:
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(TOKEN_ENV.encode() + b"="):
                    return item.split(b"=", 1)[1].decode()
        except OSError:
            continue
    return None


def _marked(token: str | None) -> dict[int, int]:
    """{pid: start time} of every live process whose environment carries the run's token."""
    if not token:
        return {}
    needle = f"{TOKEN_ENV}={token}".encode()
    out = {}
    for pid in _pids():
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and (s := _stat(pid)):
                out[pid] = s[1]
        except OSError:
            continue
    return out


def _alive(procs: dict[int, int]) -> dict[int, int]:
    return {pid: t for pid, t in procs.items() if (s := _stat(pid)) is not None and s[1] == t}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"


def _engine_started(procs: dict[int, int]) -> bool:
    return any("EngineCore" in _cmdline(pid) for pid in procs)


@pytest.mark.parametrize("phase", ["startup", "generation", "update"])
def test_kill_9_of_the_driver_leaves_no_process(phase, tmp_path, tiny_model_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-c", DRIVER, str(tmp_path), "train", "recipes/demo/base.yaml", *OVERRIDES]
    cmd += [f"trainer.run_dir={run}", f"model.path={tiny_model_path}"]
    log = (tmp_path / "driver.log").open("wb")
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen: dict[int, int] = {}
    token = None
    try:
        deadline = time.monotonic() + 600
        while True:
            assert driver.poll() is None, (
                f"the run ended before {phase}: {(tmp_path / 'driver.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"no {phase} within 600 s"
            seen |= _descendants(driver.pid)
            if (phase == "startup" and _engine_started(seen)) or (tmp_path / phase).exists():
                break
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        killed_at = time.monotonic()
        # from the driver's children: /proc/<driver>/environ is the environment it was started with (this test's,
        # which may carry the token of a run an earlier test started in this process), not the one it set itself
        token = _token(pid for pid in seen if pid != driver.pid)
        while time.monotonic() - killed_at < REAPED_WITHIN_S:
            left = _alive(seen) | _marked(token)
            if not left:
                break
            time.sleep(0.5)
        assert not left, (
            f"{len(left)} processes of the run alive {REAPED_WITHIN_S:.0f} s after kill -9 of its driver in "
            f"{phase}: " + "; ".join(f"{pid} {_cmdline(pid)}" for pid in sorted(left))
        )
        print(f"{phase}: no process left {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in _alive(seen) | _marked(token):  # what the run left: this test's own processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
