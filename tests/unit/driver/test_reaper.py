"""The reaper (rlvr_temp.driver.reaper) picks a run's processes by their token: a dead driver's processes go,
another run's and unmarked ones stay; a normally exiting driver's reaper exits too. Plain ``sleep`` processes
stand for Ray's and vLLM's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rlvr_temp.driver import reaper

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux only (/proc)")


def _sleep(token: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != reaper.TOKEN_ENV}
    if token:
        env[reaper.TOKEN_ENV] = token
    return subprocess.Popen(["sleep", "60"], env=env)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` has exited (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_reap_kills_the_runs_processes_and_no_other():
    mine = [_sleep("run-a"), _sleep("run-a")]
    others = [_sleep("run-b"), _sleep(None)]
    try:
        assert sorted(reaper.marked("run-a")) == sorted(p.pid for p in mine)
        assert reaper.reap("run-a", rescan_s=1.0) == 2
        assert all(p.wait(timeout=5) == -signal.SIGKILL for p in mine)
        assert all(p.poll() is None for p in others)
        assert reaper.marked("run-a") == {}
    finally:
        for p in mine + others:
            p.kill()
            p.wait()


DRIVER = """
import os, subprocess, sys, time
from rlvr_temp.driver import reaper
token = reaper.start()
assert reaper.start() == token  # once per process
child = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])  # a tree, as Ray's and vLLM's are
# raylet's agents: started by a process of the run with an environment of their own (no token)
raylet = subprocess.Popen(["sh", "-c", "env -i sleep 60 & wait"])
time.sleep(0.3)
print(token, raylet.pid, flush=True)
if sys.argv[1] == "exit":
    child.kill()
    raylet.kill()
    sys.exit(0)
time.sleep(60)
"""


def _reaper_of(driver: int) -> int | None:
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"reaper.py") for a in args) and str(driver).encode() in args:
            return int(name)
    return None


def test_a_killed_drivers_processes_go_and_another_runs_stay():
    other = _sleep("another-run")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "kill"], stdout=subprocess.PIPE, text=True)
    token = None
    try:
        token, raylet = driver.stdout.readline().split()
        run = reaper.marked(token)
        # two sh and three sleeps (the agent by descent); not the reaper, not the driver (token set after its exec)
        assert len(run) == 5
        reaper_pid = _reaper_of(driver.pid)
        assert reaper_pid is not None and reaper_pid not in reaper.marked(token)
        time.sleep(1.5)  # the reaper notes the run's processes once a second
        os.kill(int(raylet), signal.SIGKILL)  # raylet dies first: its agent is no longer under a token carrier
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert all(_gone(pid) for pid in run), [pid for pid in run if not _gone(pid, 0)]
        assert _gone(reaper_pid)
        assert other.poll() is None
    finally:
        driver.kill()
        driver.wait()
        other.kill()
        other.wait()
        for pid in reaper.marked(token) if token else []:
            os.kill(pid, signal.SIGKILL)


def test_the_reaper_of_a_normally_exiting_driver_exits():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "exit"], stdout=subprocess.PIPE, text=True)
    token = driver.stdout.readline().split()[0]
    reaper_pid = _reaper_of(driver.pid)
    assert driver.wait(timeout=30) == 0
    assert reaper_pid is not None and _gone(reaper_pid)
    assert reaper.marked(token) == {}
