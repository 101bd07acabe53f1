"""What the trainer does when an actor dies: restart it, put the run back at a state it has seen, retry.

On a cluster, preemptions and out-of-memory kills are routine. Rollout workers and the learner are Ray actors
started with ``max_restarts`` (``ray.max_restarts``), so Ray brings a killed one back with its constructor
arguments -- that is, with the initial weights and empty entropy windows. A restarted actor must never be used as
if nothing happened, so every call that depends on an actor's state says which state it expects
(:class:`StaleActorError` otherwise). A step that fails because of a dead or restarted actor is then recovered:

* if the learner still holds the state it had at the start of the step, the step is retried from that boundary:
  the prompt stream, the RNG and every engine's entropy window are put back as they were (:class:`Boundary`), the
  learner's weights are synced to every engine, and the step runs again -- with the same seeds, so it produces what
  it would have produced undisturbed;
* otherwise (the learner died, or had already updated), the run goes back to its newest checkpoint (or its start)
  in-process, exactly as a resume would, and the metrics rows after it are dropped.

Retries are bounded (``trainer.max_retries`` per step) and counted (``train/retries``); past the bound the step's
error ends the run as before, with a resumable checkpoint. :func:`describe` turns an actor's error into the one
line the user sees; the full traceback goes to ``<run>/errors/``.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from rlvr_temp.checkpoint import rng_state, set_rng_state
from rlvr_temp.utils import StaleActorError, atomic_write_text

log = logging.getLogger("rlvr_temp.driver.recovery")


#: Errors after which a step is recovered and retried (a RayTaskError whose cause is a StaleActorError is one).
ACTOR_FAILURES = (RayActorError, ActorUnavailableError, StaleActorError)


class RunError(RuntimeError):
    """A training run stopped; the message is one line (step, actor, cause, where the traceback is)."""


@dataclass
class Boundary:
    """The driver-side state at the start of a step, enough to run the step again identically."""

    step: int
    stream: dict[str, Any]
    rng: dict[str, Any]
    windows: list[dict[str, Any]]
    learner: tuple[str, int]  # the learner's incarnation and update count
    loop: dict[str, Any]  # the controller's state, the policy version, the rollouts collected ahead


def snapshot(trainer: Any) -> Boundary:
    """The state at the start of ``trainer.step`` (one small ``ray.get`` of the engines' entropy windows)."""
    return Boundary(
        step=trainer.step,
        stream=trainer.stream.state_dict(),
        rng=rng_state(),
        windows=ray.get([w.temperature_state.remote() for w in trainer.workers]),
        learner=tuple(ray.get(trainer.learner.identity.remote())),
        loop=trainer.loop_state(),
    )


def recover(trainer: Any, boundary: Boundary, timeout_s: float = 600.0) -> str:
    """Wait for restarted actors, then put ``trainer`` back at ``boundary`` (``"step"``) or, when the learner no
    longer holds the boundary's state, at its newest checkpoint or its start (``"checkpoint"``); sync weights."""
    wait_alive([*trainer.workers, trainer.learner], timeout_s)
    trainer.worker_ids = ray.get([w.incarnation.remote() for w in trainer.workers])
    if tuple(ray.get(trainer.learner.identity.remote())) == boundary.learner:
        trainer.step = boundary.step
        trainer.stream.load_state_dict(boundary.stream)
        set_rng_state(boundary.rng)
        ray.get([w.load_temperature_state.remote(s) for w, s in zip(trainer.workers, boundary.windows)])
        trainer.set_loop_state(boundary.loop)
        how = "step"
    else:
        trainer.rewind()
        how = "checkpoint"
    trainer.learner_id = ray.get(trainer.learner.identity.remote())[0]
    trainer.sync_weights()
    return how


def run_step(trainer: Any) -> dict[str, float]:
    """``trainer.train_step()``, recovered and retried after an actor failure (at most ``trainer.max_retries``
    times); the step's metrics carry ``train/retries``, the run's total so far."""
    for attempt in range(trainer.cfg.trainer.max_retries + 1):
        boundary = snapshot(trainer)
        try:
            metrics = trainer.train_step()
        except Exception as exc:
            if not is_actor_failure(exc) or attempt == trainer.cfg.trainer.max_retries:
                raise
            trainer.retries += 1
            log.warning(
                "step %d: %s; recovering (retry %d of %d)",
                boundary.step,
                describe(exc),
                attempt + 1,
                trainer.cfg.trainer.max_retries,
            )
            log.warning("step %d: recovered from %s", boundary.step, recover(trainer, boundary))
            continue
        metrics["train/retries"] = float(trainer.retries)
        return metrics
    raise AssertionError("unreachable")


def wait_alive(actors: list[Any], timeout_s: float) -> None:
    """Wait until every actor answers (Ray refuses calls while it restarts one: ask again until the deadline);
    past it, a one-line :class:`TimeoutError` (how many did not answer, and Ray's last word)."""
    deadline = time.monotonic() + timeout_s
    while True:
        refs = [a.ping.remote() for a in actors]
        try:
            ray.get(refs, timeout=max(1.0, deadline - time.monotonic()))
            return
        except (ActorUnavailableError, GetTimeoutError) as exc:
            if isinstance(exc, GetTimeoutError) or time.monotonic() > deadline:
                late = _not_answering(refs)
                raise TimeoutError(
                    f"{late or '?'} of {len(actors)} actors did not answer within {timeout_s:g} s after a failure "
                    f"(Ray may still be restarting them; last: {describe(exc)})"
                ) from exc
            time.sleep(1.0)


def _not_answering(refs: list[Any]) -> int:
    """How many of ``refs`` fail or are not ready now (0: could not tell)."""
    late = 0
    for ref in refs:
        try:
            ray.get(ref, timeout=0)
        except Exception:
            late += 1
    return late


def is_actor_failure(exc: BaseException) -> bool:
    return isinstance(exc, ACTOR_FAILURES) or isinstance(getattr(exc, "cause", None), StaleActorError)


def describe(exc: BaseException) -> str:
    """One line for an error raised by (or about) an actor: which actor, which call, the cause."""
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None) or exc
        where = re.search(r"ray::(\S+)", str(exc))
        lines = [line for line in str(cause).strip().splitlines() if line.strip()]
        text = lines[-1] if cause is exc and lines else (lines[0] if lines else "")
        return f"{where.group(1) if where else 'a Ray task'}: {type(cause).__name__}: {text.strip()}"[:500]
    if isinstance(exc, RayActorError):
        text = " ".join(str(exc).split())
        return f"an actor died ({type(exc).__name__}): {text[:300]}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def write_traceback(run_dir: str | Path, step: int, exc: BaseException) -> Path:
    """The full traceback (driver side, and the actor's when Ray carried it) in ``<run>/errors/step_N.txt``."""
    text = "".join(traceback.format_exception(exc))
    return atomic_write_text(Path(run_dir) / "errors" / f"step_{step:06d}.txt", text)
