"""One helper for each chore the package repeats: atomic writes (files and directories), seeds, LR warm-up,
phase timers and graceful stops.

Nothing here imports another ``rlvr_temp`` module, so every module may import it.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np


# ------------------------------------------------------------------------------------------------- atomic writes
def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | Path, mode: Literal["w", "wb"] = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is flushed, fsynced and renamed onto
    ``path`` (so readers see the old file or the new one, never a torn one). On an exception it is removed and
    ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Replace ``path``'s contents with ``text`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as fh:
        fh.write(text)
    return Path(path)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``final``; on a clean exit it replaces ``final`` (an existing
    ``final`` is moved aside first and deleted after the rename). On an exception the temporary directory is
    deleted and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- seeds
def derive_seed(base: int, *parts: int | str) -> int:
    """A seed in ``[0, 2**31)`` for one use of a run's seed (``derive_seed(seed, "rollout", step, round)``).

    Every seed in the package comes from here, derived from ``trainer.seed`` and the names / counters of its use,
    through numpy's ``SeedSequence`` (well mixed: nearby inputs give unrelated seeds, unlike ``seed * k + i``).
    """
    words = [int(base) % 2**63]
    for p in parts:
        words.append(int.from_bytes(p.encode(), "little") % 2**63 if isinstance(p, str) else int(p) % 2**63)
    return int(np.random.SeedSequence(words).generate_state(1)[0]) % 2**31


# ------------------------------------------------------------------------------------------------- LR schedule
def lr_factor(
    step: int,
    warmup_steps: int,
    total_steps: int = 0,
    decay: Literal["constant", "cosine"] = "constant",
    floor: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): linear warm-up over
    ``warmup_steps`` (``(step + 1) / warmup_steps``), then constant, or a half cosine from 1 down to ``floor`` at
    ``total_steps``. A plain function, so a ``LambdaLR`` over ``functools.partial(lr_factor, ...)`` pickles cleanly."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


# ------------------------------------------------------------------------------------------------- configs
def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (nested dicts with string keys only; other values are leaves)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------------------------------------- run control
@contextmanager
def timed(store: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` body to ``store[name]`` (a step's phase timers)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        store[name] = store.get(name, 0.0) + time.perf_counter() - t0


class GracefulStop:
    """While active (``with GracefulStop() as stop``), SIGTERM / SIGINT set ``stop.signum`` so that a loop can finish
    its step, checkpoint and stop; a second signal raises ``KeyboardInterrupt``. Signal handlers can only be
    installed in the main thread: elsewhere this does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------------------- registries
def register(table: dict[str, Any], name: str, what: str) -> Callable[[Any], Any]:
    """Decorator adding a function or class to a name registry (losses, advantages, schedules, temperature modes,
    verl style). A class gets ``name`` as its ``name`` attribute; another object under a taken name is an error."""

    def deco(obj: Any) -> Any:
        if name in table and table[name] is not obj:
            raise ValueError(f"a {what} named {name!r} is already registered ({getattr(table[name], '__name__', '?')})")
        if isinstance(obj, type):
            obj.name = name
        table[name] = obj
        return obj

    return deco


# ------------------------------------------------------------------------------------------------- actor identity
class StaleActorError(RuntimeError):
    """An actor's state is not the one the driver expects (it was restarted since)."""


def new_incarnation() -> str:
    """A token an actor draws in its constructor: a restarted actor has another one."""
    return uuid.uuid4().hex


def check_incarnation(actual: str, expected: str | None, what: str) -> None:
    """Refuse a call meant for an earlier incarnation of this actor (``expected`` None: no check)."""
    if expected is not None and expected != actual:
        raise StaleActorError(f"the {what} was restarted since the driver last synced it (its state is gone)")
