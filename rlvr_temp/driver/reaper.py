"""Nothing left behind: once the driver is gone, however it went (``kill -9`` included), every process of its run goes.

Two halves, in two processes:

* in the driver, :func:`start` (called by the CLI before a run-starting command does anything, and by
  rlvr_temp.driver.launch.init_ray; once per process) puts a fresh token in the driver's environment,
  ``RLVR_TEMP_RUN_TOKEN=<uuid>``, which every process started from the driver from then on inherits: the local Ray
  cluster's own (GCS, raylet, dashboard and runtime-env agents, log monitor), its actors (raylet starts them with
  its environment), their vLLM processes (``EngineCore``, ``Worker``), the verifier's pool. It then starts the
  reaper: this file run as a script, in a session of its own (a signal to the driver's process group does not
  reach it), with stdlib imports only and without the token itself;
* the reaper (:func:`main`) waits until the driver has exited, noting once a second every process whose
  environment carries the token (``/proc/<pid>/environ``) and every process under one of those (Ray's dashboard
  and runtime-env agents carry none: raylet starts them with an environment of its own), with its start time;
  then it SIGKILLs every noted process still alive (same pid, same start time: an agent whose raylet died first is
  no longer under any token carrier) and every process carrying the token or under one, scanning again until none
  is left (raylet may start a worker while it dies), and exits. It calls nothing of Ray's, so it works whether or
  not Ray still answers. After a normal exit Ray has already stopped its processes and the reaper finds nothing;
  it prints nothing either way.

What it leaves out, on purpose: processes of a cluster the driver did not start (``ray.address`` /
``RAY_ADDRESS``): they are started by their own raylet and do not carry the token; there Ray kills the job's
actors when its driver dies, and each engine's processes follow their actor (rlvr_temp.engine.extension,
:func:`~rlvr_temp.engine.extension.exit_with_owner`). Other machines of a cluster (the token lives in one
machine's processes). A second run on the same machine (another token). Files: Ray's session directory under
``/tmp/ray`` and shared-memory segments a killed vLLM leaves in ``/dev/shm`` stay. Processes that clear their
environment, and children a process forks without exec before it received the token (none in this project).
Linux only (``/proc``); elsewhere :func:`start` does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

#: environment variable marking every process of one run (a fresh uuid per driver process)
TOKEN_ENV = "RLVR_TEMP_RUN_TOKEN"
#: how long the reaper keeps scanning for late processes of the run after its first pass
RESCAN_S = 5.0

_started: dict[int, str] = {}  # driver pid -> its token (a forked child of the driver starts its own)


def start() -> str | None:
    """In the driver: mark this process's environment with a fresh run token and start its reaper; returns the
    token (the same on later calls in this process), or None where there is no ``/proc`` (no reaper)."""
    pid = os.getpid()
    if pid in _started:
        return _started[pid]
    if not os.path.isdir("/proc/self"):
        return None
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}  # the reaper is no process of the run
    subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), str(pid), token],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.environ[TOKEN_ENV] = token
    _started[pid] = token
    return token


def marked(token: str, exclude: int | None = None) -> dict[int, int]:
    """{pid: start time} of the live processes whose environment carries ``token``, and of every process under one
    of them (Ray's dashboard and runtime-env agents: raylet starts them with an environment of its own);
    ``exclude``: a pid left out."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found, parent, started = set(), {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            parent[int(name)], started[int(name)] = int(fields[1]), int(fields[19])
            with open(f"/proc/{name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.add(int(name))
        except (OSError, IndexError, ValueError):  # gone, a zombie, or not ours to read
            continue
    grown = True
    while grown:
        more = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= more
        grown = bool(more)
    return {pid: started[pid] for pid in sorted(found)}


def start_time(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot), else None: with its pid, it names the process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def reap(token: str, rescan_s: float = RESCAN_S, known: dict[int, int] | None = None) -> int:
    """SIGKILL every process carrying ``token`` or under one (not this one), and every process of ``known``
    ({pid: start time}, noted while the driver lived) still alive, scanning again until none has shown up for a
    second (at most ``rescan_s``); returns how many were killed."""
    me, killed = os.getpid(), set()
    start = last_seen = time.monotonic()
    while True:
        still = [pid for pid, t in (known or {}).items() if pid != me and start_time(pid) == t]
        pids = sorted(set(marked(token, exclude=me)) | set(still))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
        now = time.monotonic()
        last_seen = now if pids else last_seen
        if now - start >= rescan_s or now - last_seen >= min(1.0, rescan_s):
            return len(killed)
        time.sleep(0.1)


def wait_for_exit(pid: int, tick: Callable[[], None] = lambda: None, every_s: float = 1.0) -> None:
    """Block until process ``pid`` -- this process's parent -- has exited, calling ``tick`` every ``every_s``."""
    if os.getppid() != pid:  # already gone: this process has been handed to init (or a subreaper)
        return
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3
        fd = None
    if fd is not None:
        # the pidfd is the driver's: its pid cannot have been reused while it is our parent
        while os.getppid() == pid and not select.select([fd], [], [], every_s)[0]:
            tick()
        os.close(fd)
        return
    while os.getppid() == pid:
        tick()
        time.sleep(every_s)


def main(argv: list[str]) -> int:
    """The reaper process: ``reaper.py DRIVER_PID TOKEN``."""
    driver, token = int(argv[0]), argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver (started in its session) is not ours
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    known: dict[int, int] = {}
    wait_for_exit(driver, lambda: known.update(marked(token, exclude=os.getpid())))
    reap(token, known=known)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
