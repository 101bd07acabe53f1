"""Saves killed by SIGKILL or SIGTERM at many points never leave a ``latest`` that cannot be loaded.

One ``python -c`` process imports torch once, builds a fake but realistic learner / trainer state (a LoRA adapter
of a few MB, a real AdamW state and LR scheduler, RNG states, entropy windows) and a ``RunConfig``; for every kill
it forks a saver that writes checkpoints back to back (every third save replaces the step saved just before, as
a finished run started again does) until the test kills it ``delay`` seconds into a save. The delays are spread
over the save duration, measured first by a saver left to finish. SIGTERM is handled the way the trainer's
second SIGTERM is (``KeyboardInterrupt`` raised wherever the save is), SIGKILL ends the process on the spot.

After each kill: ``latest``, when present, names a verified checkpoint; ``find_resume(run, "auto")`` returns one
(None only when no save finished) that ``load_checkpoint`` reads, consistent across its files, without a warning;
the hidden leftovers are ignored, and the next save removes them.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from rlvr_temp.checkpoint import find_resume, load_checkpoint, save_checkpoint, verify_checkpoint
from rlvr_temp.config.schema import load_config

ROOT = Path(__file__).resolve().parents[3]

SAVER = r"""
import functools, os, signal, sys, time
import torch
torch.set_num_threads(1)  # the savers are forked: no thread pools to lose
from rlvr_temp.checkpoint import rng_state, save_checkpoint
from rlvr_temp.config.schema import load_config
from rlvr_temp.utils import lr_factor

def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\n").encode())  # unbuffered: nothing to duplicate on fork

torch.manual_seed(0)
params = {}
for layer in range(4):
    for proj in ("q_proj", "v_proj"):
        pre = f"base_model.model.layers.{layer}.self_attn.{proj}"
        params[f"{pre}.lora_A.weight"] = torch.nn.Parameter(torch.randn(32, 2048) * 0.01)
        params[f"{pre}.lora_B.weight"] = torch.nn.Parameter(torch.zeros(2048, 32))
opt = torch.optim.AdamW(params.values(), lr=1e-4)
sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, warmup_steps=4, total_steps=100))
sum((p * p).sum() for p in params.values()).backward()
opt.step()
sched.step()
cfg = load_config(None)

def save(run_dir, i):
    step = 1 + i - i // 3  # 1, 2, 3, 3, 4, 5, 5, ...: every third save replaces the step saved just before
    learner = {
        "trainable": {k: p.detach() for k, p in params.items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
    }
    trainer = {
        "step": step,
        "stream": {"epoch": step // 5, "cursor": step * 4 % 20, "seed": 7},
        "rng": rng_state(),
        "temperature": [{"window": [0.5 + 1e-4 * j for j in range(4096)], "step": step} for _ in range(2)],
        "metrics_rows": step,
    }
    SAVES[0] = i
    t0 = time.perf_counter()
    save_checkpoint(run_dir, step, learner_state=learner, trainer_state=trainer, config=cfg, keep=2)
    say("saved", step, time.perf_counter() - t0)

def handler(signum, frame):
    raise KeyboardInterrupt  # the trainer's GracefulStop does this on a second SIGTERM

def pause_in(n):
    # block inside save n (after its first file is written and fsynced, in the hidden directory) until killed:
    # a kill that lands inside a save for certain, however fast or slow the machine
    import rlvr_temp.checkpoint as ck
    real = ck._fsync
    def fsync(path):
        real(path)
        if SAVES[0] == n:
            say("paused")
            while True:
                time.sleep(1)
    ck._fsync = fsync

SAVES = [-1]

say("ready")
for line in sys.stdin:
    run_dir, term, n, pause = line.split()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if int(pause) >= 0:
                pause_in(int(pause))
            if term == "raise":
                signal.signal(signal.SIGTERM, handler)
            for i in range(int(n)):
                save(run_dir, i)
        except KeyboardInterrupt:
            code = 130
        finally:
            os._exit(code)
    say("pid", pid)
    say("exit", pid, os.waitpid(pid, 0)[1])
"""


class Savers:
    """The ``python -c`` process and its stdout, read line by line in a thread."""

    def __init__(self, tmp_path: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.stderr = (tmp_path / "savers.err").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SAVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[list[str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.expect("ready", timeout=120) == []

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.split())

    def next(self, timeout: float = 30) -> list[str]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.stderr.seek(0)
            pytest.fail(f"nothing from the savers within {timeout}s; stderr:\n{self.stderr.read()[-3000:]}")

    def expect(self, word: str, timeout: float = 30) -> list[str]:
        parts = self.next(timeout)
        assert parts[0] == word, (word, parts)
        return parts[1:]

    def start(self, run_dir: Path, term: str, n: int, pause: int = -1) -> int:
        """A saver of ``n`` saves (``pause`` >= 0: blocked inside that save until killed); its pid."""
        self.proc.stdin.write(f"{run_dir} {term} {n} {pause}\n")
        self.proc.stdin.flush()
        return int(self.expect("pid")[0])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.stderr.close()


def _assert_resumable(run_dir: Path, saves_seen: list[int]) -> int | None:
    """The checks after a kill; returns the step resumed (None: no checkpoint)."""
    root = run_dir / "checkpoints"
    latest = root / "latest"
    if latest.exists():
        named = root / latest.read_text().strip()
        assert verify_checkpoint(named) is None, f"`latest` names {named}: {verify_checkpoint(named)}"
    found = find_resume(run_dir, "auto")
    if found is None:
        assert not saves_seen, f"saves of steps {saves_seen} finished but no checkpoint is found"
        return None
    ck = load_checkpoint(found)
    step = ck["step"]
    assert found.name == f"step_{step:08d}"
    assert ck["learner_state"]["step"] == ck["trainer_state"]["step"] == step
    assert len(ck["learner_state"]["trainable"]) == 16 and len(ck["learner_state"]["optimizer"]["state"]) == 16
    if saves_seen:  # at worst the step before the last one finished (a replaced step is moved aside meanwhile)
        assert step >= saves_seen[-1] - 1, (step, saves_seen)
    return step


def test_killed_saves_leave_a_loadable_latest(tmp_path, caplog):
    t0 = time.perf_counter()
    savers = Savers(tmp_path)
    try:
        # measure a save (and check that uninterrupted saves, including a replaced step, resume as expected)
        calib = tmp_path / "calibrate"
        pid = savers.start(calib, "raise", 4)
        durations = [float(savers.expect("saved")[1]) for _ in range(4)]
        assert savers.expect("exit") == [str(pid), "0"]
        assert _assert_resumable(calib, [1, 2, 3, 3]) == 3
        save_time = statistics.median(durations)

        caplog.set_level(logging.INFO, logger="rlvr_temp.checkpoint")
        left_behind = 0
        resumed = []
        for sig, term in ((signal.SIGKILL, "default"), (signal.SIGTERM, "raise")):
            # kills at delays spread over a save (where they land depends on the machine's speed), then two kills
            # certain to land inside a save: the saver blocks there until killed (inside save 0, and inside save
            # 3, which replaces step 3)
            for i in range(12):
                run_dir = tmp_path / f"{sig.name}-{i}"
                pause = {10: 0, 11: 3}.get(i, -1)
                before = pause if pause >= 0 else i % 4  # saves left to finish before the one killed
                delay = save_time * (i + 0.5 if sig == signal.SIGKILL else i + 0.25) / 10
                pid = savers.start(run_dir, term, 1000, pause)
                saves_seen = [int(savers.expect("saved")[0]) for _ in range(before)]
                if pause >= 0:
                    assert savers.expect("paused") == []
                else:
                    time.sleep(delay)
                os.kill(pid, sig)
                while (parts := savers.next())[0] == "saved":  # a save may finish before the signal lands
                    saves_seen.append(int(parts[1]))
                assert parts[0] == "exit", parts
                exited_pid, status = parts[1:]
                assert int(exited_pid) == pid and int(status) != 0, f"the saver was not killed: {status}"
                root = run_dir / "checkpoints"
                hidden = [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []
                left_behind += bool(hidden)
                if pause >= 0 and sig == signal.SIGKILL:  # killed inside a save: its hidden directory is left
                    assert hidden, f"a kill inside save {pause} left nothing behind"
                caplog.clear()
                resumed.append(_assert_resumable(run_dir, saves_seen))
                assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
                # the next save (the resumed run's) removes what the killed one left behind
                state = load_checkpoint(find_resume(run_dir, "auto")) if resumed[-1] else None
                learner = state["learner_state"] if state else {"trainable": {"w": torch.zeros(2)}, "step": 0}
                trainer = state["trainer_state"] if state else {"step": 0}
                next_step = (resumed[-1] or 0) + 1
                save_checkpoint(
                    run_dir, next_step, learner_state=learner, trainer_state=trainer, config=load_config(None)
                )
                assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []
                assert find_resume(run_dir, "auto").name == f"step_{next_step:08d}"
    finally:
        savers.close()
    elapsed = time.perf_counter() - t0
    print(
        f"save {save_time * 1000:.0f} ms; resumed steps {resumed}; {left_behind} kills left leftovers; {elapsed:.1f}s"
    )
