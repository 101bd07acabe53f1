"""Step-by-step interleaving of benchmark processes: one step of one process at a time, order alternating.

Two systems that each own a process (their own threads, Ray cluster or engine) cannot share one timing loop;
run one after the other on a shared machine, a load change between them shows up as a speed difference. Here the
parent starts every process, then hands out steps one at a time through marker files in one folder, reversing
the order every step, so each system's step k runs under the load of the others' step k. What is left out: the
processes' start-ups overlap (they are not compared), and idle processes still cost a little (their threads wait).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the children run ``python -m benchmarks.<name>`` from here


def _wait_for(path: Path, alive: Callable[[], bool]) -> None:
    while not path.exists():
        if not alive():
            raise RuntimeError(f"gave up waiting for {path.name}: the other side has gone")
        time.sleep(0.05)


class Baton:
    """A process's side: before step k, write ``<name>.ready.k`` and wait for ``<name>.go.k``; after it, write
    ``<name>.done.k``. With ``folder`` None it does nothing (the process runs on its own)."""

    def __init__(self, folder: Path | None, name: str = "") -> None:
        self.folder, self.name, self.k = folder, name, 0

    def wait_turn(self) -> None:
        if self.folder is not None:
            (self.folder / f"{self.name}.ready.{self.k}").touch()
            _wait_for(self.folder / f"{self.name}.go.{self.k}", alive=lambda: os.getppid() != 1)  # orphaned: stop

    def done(self) -> None:
        if self.folder is not None:
            (self.folder / f"{self.name}.done.{self.k}").touch()
        self.k += 1


def conduct(folder: Path, procs: dict[str, subprocess.Popen], steps: int) -> None:
    """The parent's side: give each process in turn one step (order reversed every step), ``steps`` each."""

    def alive() -> bool:
        return all(p.poll() in (None, 0) for p in procs.values())

    for k in range(steps):
        for name in list(procs) if k % 2 == 0 else list(procs)[::-1]:
            _wait_for(folder / f"{name}.ready.{k}", alive)  # the first wait also covers the start-ups
            (folder / f"{name}.go.{k}").touch()
            _wait_for(folder / f"{name}.done.{k}", alive)


def run_interleaved(commands: dict[str, list[str]], folder: Path, steps: int) -> dict[str, Any]:
    """Start one process per command (each passes ``folder`` to its :class:`Baton`, and writes its result as JSON to
    ``folder/<name>.json``), interleave ``steps`` steps of each, and return the results by name."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    procs = {name: subprocess.Popen(cmd, env=env, cwd=ROOT) for name, cmd in commands.items()}
    try:
        conduct(folder, procs, steps)
    except BaseException:
        for p in procs.values():  # the others would wait for their turn for ever
            if p.poll() is None:
                p.terminate()
        raise
    finally:
        codes = {name: p.wait() for name, p in procs.items()}
    if any(codes.values()):
        raise RuntimeError(f"benchmark processes failed: {codes}")
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in commands}
