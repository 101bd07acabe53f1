"""Recovery after an actor failure (rlvr_temp.driver.recovery), branch by branch, with fake actors: no Ray cluster, no
vLLM. The fakes keep what recovery depends on: incarnation tokens (a restarted actor has a new one and refuses calls
meant for the old one), the learner's update count and weights, a process group that a restarted rank is no longer
in, checkpoints written and read by the real ``save_checkpoint`` / ``load_checkpoint``. Everything else is the real
``Trainer.run`` / ``rewind`` / ``restore`` / ``save``, ``recovery`` and ``LearnerGroup``; only ``train_step`` is a
small stand-in (draw from the stream and the RNG, one learner update, one weight sync)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

from rlvr_temp.checkpoint import find_resume, read_learner_part, write_learner_part
from rlvr_temp.config.schema import load_config
from rlvr_temp.driver import recovery
from rlvr_temp.driver import trainer as trainer_mod
from rlvr_temp.learner import group as group_mod
from rlvr_temp.metrics import read_metrics
from rlvr_temp.utils import check_incarnation, new_incarnation


# ------------------------------------------------------------------------------------------ fake Ray
class Ref:
    """What ``.remote()`` returns: the call runs when ``ray.get`` resolves it (where Ray raises its errors)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn


def _resolve(x: Any) -> Any:
    return x.fn() if isinstance(x, Ref) else x


def fake_get(refs: Any, timeout: float | None = None) -> Any:
    return [_resolve(r) for r in refs] if isinstance(refs, list) else _resolve(refs)


class Actor:
    """An actor handle. ``restart()`` is what Ray does to a killed actor: its constructor runs again (a fresh
    state, a new incarnation); ``unavailable`` calls are refused first, as while Ray restarts it; ``hung``: no call
    ever answers."""

    def __init__(self, cls: type, *args: Any) -> None:
        self.cls, self.args = cls, args
        self.impl = cls(*args)
        self.unavailable = 0
        self.hung = False

    def restart(self) -> None:
        self.impl.dead = True
        self.impl = self.cls(*self.args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        actor = self

        class Method:
            @staticmethod
            def remote(*args: Any, **kwargs: Any) -> Ref:
                def run() -> Any:
                    if actor.hung:
                        raise GetTimeoutError("Get timed out: some object(s) not ready.")
                    if actor.unavailable:
                        actor.unavailable -= 1
                        raise ActorUnavailableError("the actor is restarting", None)
                    return getattr(actor.impl, name)(*args, **kwargs)

                return Ref(run)

        return Method()


def fake_kill(actor: Actor, no_restart: bool = True) -> None:
    if not no_restart:
        actor.restart()


class RemoteFn:
    """A ``@ray.remote`` function: runs once its argument refs resolve (any failed one fails it)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *refs: Any) -> Ref:
        return Ref(lambda: self.fn(*[_resolve(r) for r in refs]))


# ------------------------------------------------------------------------------------------ fake actors
_ports = itertools.count(1000)
GROUPS: dict[int, list[Any]] = {}  # a process group's members, by rendezvous port


class FakeLearner:
    """One learner rank: weights ``w`` (a step adds the batch to them), the update count, an incarnation token; with
    ``world`` > 1, a step is a collective of the process group the rank joined (a restarted rank is in none)."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world
        self.incarnation = new_incarnation()
        self.step = 0
        self.w = torch.zeros(3)
        self.port: int | None = None
        self.dead = False

    def identity(self) -> tuple[str, int]:
        return self.incarnation, self.step

    def ping(self) -> str:
        return "ok"

    def train_step(self, batch: torch.Tensor, base_t: float, incarnation: str | None = None) -> dict[str, float]:
        check_incarnation(self.incarnation, incarnation, "learner")
        if self.world > 1:  # the gradient all-reduce: every member of this rank's group must still be there
            if self.port is None:
                raise RuntimeError("Default process group has not been initialized")
            members = GROUPS[self.port]
            if any(m.dead for m in members) or len(members) != self.world:
                raise RuntimeError("gloo: connection closed by peer")
        self.w += batch
        self.step += 1
        return {"actor/loss": float(self.w.sum()), "actor/grad_norm": float(batch.norm())}

    def export(self, incarnation: str | None = None) -> torch.Tensor:
        check_incarnation(self.incarnation, incarnation, "learner")
        return self.w.clone()

    def get_state(self) -> dict[str, Any]:
        return {"trainable": {"w": self.w.clone()}, "step": self.step, "torch_rng": torch.get_rng_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.w, self.step = state["trainable"]["w"].clone(), int(state["step"])

    # data parallel (LearnerGroup)
    def rendezvous(self) -> tuple[str, int]:
        port = next(_ports)
        GROUPS[port] = []
        return "127.0.0.1", port

    def join(self, addr: str, port: int, rank: int, world: int, timeout_s: float) -> str:
        self.port = port
        GROUPS[port].append(self)
        return "gloo"

    def collective_methods(self) -> frozenset[str]:
        return frozenset()

    def write_part(self, directory: str) -> list[str]:
        return write_learner_part(directory, self.rank, self.world, self.get_state())

    def read_part(self, directory: str) -> None:
        state = read_learner_part(directory, self.rank, self.world)
        self.w, self.step = (state["trainable"]["w"].clone() if "trainable" in state else self.w), state["step"]
        if self.rank:  # rank k's part holds no weights: they are rank 0's (replicated)
            self.w = read_learner_part(directory, 0, self.world)["trainable"]["w"].clone()


class FakeWorker:
    """A rollout engine: the weights it samples with (synced), its entropy window, an incarnation token."""

    def __init__(self) -> None:
        self.incarnation_token = new_incarnation()
        self.w = torch.zeros(3)
        self.window: list[float] = []
        self.dead = False

    def incarnation(self) -> str:
        return self.incarnation_token

    def ping(self) -> str:
        return "ok"

    def temperature_state(self) -> dict[str, Any]:
        return {"window": list(self.window)}

    def load_temperature_state(self, state: dict[str, Any]) -> None:
        self.window = list(state["window"])

    def reset_temperature_state(self) -> None:
        self.window = []

    def load_weights(self, w: torch.Tensor, incarnation: str | None = None) -> None:
        check_incarnation(self.incarnation_token, incarnation, "rollout worker")
        self.w = w.clone()


class FakeSync:
    """EngineSync: the learner's weights to every engine; ``fail``: a hook that may break the next sync."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.fail: Any = None

    def sync(self, learner_id: str, worker_ids: list[str]) -> dict[str, float]:
        if self.fail is not None:
            fail, self.fail = self.fail, None
            fail()
        w = ray.get(self.trainer.learner.ranks[0].export.remote(incarnation=learner_id.split("|")[0]))
        ray.get([wk.load_weights.remote(w, incarnation=i) for wk, i in zip(self.trainer.workers, worker_ids)])
        return {"sync/params": float(w.numel())}


class Stream:
    """The prompt stream: step k's batch is k + 1 (what the learner adds to its weights)."""

    def __init__(self) -> None:
        self.pos = 0

    def __next__(self) -> int:
        self.pos += 1
        return self.pos

    def state_dict(self) -> dict[str, int]:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pos = state["pos"]


class FakeTrainer(trainer_mod.Trainer):
    """The real Trainer's loop, recovery, checkpoints and rewind over the fakes; ``faults[step]``: a hook run in that
    step before the update (``"learn"``) or in its weight sync (``"sync"``)."""

    def __init__(self, cfg: Any, ranks: int = 1) -> None:  # no super().__init__: no Ray, no engines
        self.cfg, self.run_dir = cfg, Path(cfg.trainer.run_dir)
        torch.manual_seed(0)  # as the real Trainer seeds the driver's RNG
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stream = Stream()
        self.workers = [Actor(FakeWorker), Actor(FakeWorker)]
        self.learner = group_mod.LearnerGroup([Actor(FakeLearner, k, ranks) for k in range(ranks)])
        self.engine_sync = FakeSync(self)
        self.step, self.retries = 0, 0
        self.controller, self.version, self.pending = None, 0, None  # no temperature controller, synchronous
        self._start = {"stream": self.stream.state_dict(), "rng": trainer_mod.rng_state(), "loop": self.loop_state()}
        self.worker_ids = ray.get([w.incarnation.remote() for w in self.workers])
        self.learner_id = ray.get(self.learner.identity.remote())[0]
        self.faults: dict[tuple[int, str], Any] = {}
        self.attempts = 0
        self.sync_weights()

    def train_step(self) -> dict[str, float]:
        self.attempts += 1
        batch = torch.full((3,), float(next(self.stream)))
        noise = float(torch.rand(()))  # the driver's RNG: put back by a step retry, so the metric repeats
        ray.get(
            [
                w.load_temperature_state.remote({"window": [*self.window_of(k), self.step]})
                for k, w in enumerate(self.workers)
            ]
        )
        if (hook := self.faults.pop((self.step, "learn"), None)) is not None:
            hook()
        metrics = ray.get(self.learner.train_step.remote(batch, 1.0, incarnation=self.learner_id))
        if (hook := self.faults.pop((self.step, "sync"), None)) is not None:
            self.engine_sync.fail = hook
        metrics.update(self.sync_weights())
        metrics["noise"] = noise
        self.step += 1
        return metrics

    def window_of(self, k: int) -> list[float]:
        return ray.get(self.workers[k].temperature_state.remote())["window"]

    def learner_weights(self) -> list[torch.Tensor]:
        return [r.impl.w for r in self.learner.ranks]


@pytest.fixture
def fake_ray(monkeypatch):
    GROUPS.clear()
    monkeypatch.setattr(ray, "get", fake_get)
    monkeypatch.setattr(ray, "put", lambda x: x)
    monkeypatch.setattr(ray, "kill", fake_kill)
    monkeypatch.setattr(group_mod, "_first", RemoteFn(lambda *r: r[0]))
    monkeypatch.setattr(group_mod, "_identity", RemoteFn(lambda *ids: ("|".join(i[0] for i in ids), ids[0][1])))
    monkeypatch.setattr(recovery.time, "sleep", lambda s: None)


def _cfg(tmp_path: Path, name: str = "run", **over: Any) -> Any:
    values = {"total_steps": 3, "max_retries": 2, "every": 0} | over
    return load_config(
        "recipes/demo/base.yaml",
        [
            f"trainer.run_dir={tmp_path / name}",
            f"trainer.total_steps={values['total_steps']}",
            f"trainer.max_retries={values['max_retries']}",
            f"checkpoint.every={values['every']}",
            "eval.every=0",
            "logging.progress=false",
            "logging.tensorboard=false",
        ],
    )


def _undisturbed(tmp_path: Path, ranks: int = 1, **over: Any) -> tuple[list[dict], FakeTrainer]:
    t = FakeTrainer(_cfg(tmp_path, "undisturbed", **over), ranks)
    t.run()
    return read_metrics(t.run_dir), t


def _same_rows(got: list[dict], want: list[dict]) -> None:
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time", "train/retries"))} for r in rows]  # noqa: E731
    assert strip(got) == strip(want)


# ------------------------------------------------------------------------------------------ (a) the retry bound
def test_past_the_retry_bound_the_run_stops_in_one_line_with_its_state_intact(fake_ray, tmp_path):
    """Every try of step 1 fails: two recoveries (``max_retries``), then the step's error ends the run as one line
    (step, actor, cause, traceback file); step 0's checkpoint and metrics row are as they were; a resume goes on
    from there."""
    t = FakeTrainer(_cfg(tmp_path, every=1))
    calls = []

    def always_dies() -> None:
        calls.append(t.step)
        t.faults[(1, "learn")] = always_dies  # set again for the next try
        raise ActorDiedError()

    t.faults[(1, "learn")] = always_dies
    with pytest.raises(recovery.RunError) as err:
        t.run()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("training stopped in step 1: an actor died (ActorDiedError): ")
    assert "errors/step_000001.txt" in msg and "resumes from the newest checkpoint" in msg
    assert (t.run_dir / "errors" / "step_000001.txt").read_text().count("ActorDiedError") >= 1
    assert calls == [1, 1, 1] and t.retries == 2  # the first try and two retries, no more
    # state intact: the newest checkpoint is step 1's (after step 0), untouched; one metrics row (step 0)
    assert find_resume(t.run_dir, "auto").name == "step_00000001"
    assert [r["step"] for r in read_metrics(t.run_dir)] == [0]
    assert torch.equal(t.learner_weights()[0], torch.ones(3))  # step 0's update only
    # the same command again: resumes at step 1 and finishes as an undisturbed run does
    again = FakeTrainer(_cfg(tmp_path, every=1))
    again.restore(trainer_mod.load_checkpoint(find_resume(again.run_dir, "auto")))
    again.sync_weights()
    again.run()
    want, ref = _undisturbed(tmp_path, every=1)
    _same_rows(read_metrics(again.run_dir), want)
    assert torch.equal(again.learner_weights()[0], ref.learner_weights()[0])


def test_a_failure_that_is_not_an_actors_is_not_retried(fake_ray, tmp_path):
    t = FakeTrainer(_cfg(tmp_path))

    def bug() -> None:
        raise ValueError("a bug in the step")

    t.faults[(0, "learn")] = bug
    with pytest.raises(recovery.RunError, match=r"^training stopped in step 0: ValueError: a bug in the step \("):
        t.run()
    assert t.retries == 0 and t.attempts == 1


# ------------------------------------------------------------------------------------------ retry from the boundary
def test_a_worker_lost_before_the_update_retries_the_step_identically(fake_ray, tmp_path):
    """A rollout worker restarted during step 1's generation: the learner is as it was, so the step runs again from
    its boundary (stream, RNG, entropy windows put back) and the run's metrics equal an undisturbed run's."""
    t = FakeTrainer(_cfg(tmp_path))

    def worker_dies() -> None:
        t.workers[1].restart()
        t.workers[1].unavailable = 2  # Ray refuses calls while it restarts the actor: wait_alive asks again
        raise ActorDiedError()

    t.faults[(1, "learn")] = worker_dies
    t.run()
    want, ref = _undisturbed(tmp_path)
    _same_rows(read_metrics(t.run_dir), want)
    assert read_metrics(t.run_dir)[1]["train/retries"] == 1.0 and t.retries == 1
    assert torch.equal(t.learner_weights()[0], ref.learner_weights()[0])
    assert t.window_of(0) == ref.window_of(0) and t.window_of(1) == [0, 1, 2]  # the restarted engine's window too
    assert all(torch.equal(w.impl.w, ref.learner_weights()[0]) for w in t.workers)


# ------------------------------------------------------------------------------------------ (b) rewind, no checkpoint
def test_no_checkpoint_a_dead_learner_rewinds_the_run_to_its_start(fake_ray, tmp_path):
    """The learner restarted in step 2 with ``checkpoint.every=0``: no checkpoint to go back to, so the run goes
    back to its start (stream, RNG, windows, step 0; the metrics rows after it dropped) and trains again."""
    t = FakeTrainer(_cfg(tmp_path))

    def learner_dies() -> None:
        t.learner.ranks[0].restart()
        raise ActorDiedError()

    t.faults[(2, "learn")] = learner_dies
    t.run()
    want, ref = _undisturbed(tmp_path)
    _same_rows(read_metrics(t.run_dir), want)
    assert t.attempts == 3 + 2 + 1  # steps 0, 1, the failed 2, then 0, 1, 2 again
    assert t.learner.ranks[0].impl.step == 3 and torch.equal(t.learner_weights()[0], ref.learner_weights()[0])


def test_no_checkpoint_an_updated_learner_is_restarted_fresh_for_the_rewind(fake_ray, tmp_path):
    """A worker lost in step 2's sync, after the learner's update, and no checkpoint: the learner no longer holds
    the step's start, so the run rewinds to its start; the learner (updated, alive) is restarted fresh
    (``LearnerGroup.restart``) rather than trained on from its current weights."""
    t = FakeTrainer(_cfg(tmp_path))
    first = t.learner.ranks[0].impl

    def worker_dies() -> None:
        t.workers[0].restart()
        raise ActorDiedError()

    t.faults[(2, "sync")] = worker_dies
    t.run()
    want, ref = _undisturbed(tmp_path)
    _same_rows(read_metrics(t.run_dir), want)
    assert first.dead and t.learner.ranks[0].impl is not first
    assert torch.equal(t.learner_weights()[0], ref.learner_weights()[0])  # 1 + 2 + 3: each update once


# ------------------------------------------------------------------------------------------ (c) failure in the sync
@pytest.mark.parametrize("every", [1, 0])
def test_a_sync_failure_after_the_update_neither_repeats_nor_loses_it(fake_ray, tmp_path, every):
    """A worker dies in step 1's weight sync, after the learner applied step 1's update. Retrying the step on that
    learner would apply the update twice (and skipping it would lose the engines' copy): recovery sees the changed
    update count and goes back to step 1's checkpoint (or the start), so the learner and every engine end with
    each update applied exactly once, as undisturbed."""
    t = FakeTrainer(_cfg(tmp_path, every=every))

    def worker_dies() -> None:
        t.workers[1].restart()
        raise ActorDiedError()

    t.faults[(1, "sync")] = worker_dies
    t.run()
    want, ref = _undisturbed(tmp_path, every=every)
    _same_rows(read_metrics(t.run_dir), want)
    expected = ref.learner_weights()[0]
    assert torch.equal(expected, torch.full((3,), 6.0))  # 1 + 2 + 3
    assert torch.equal(t.learner_weights()[0], expected) and t.learner.ranks[0].impl.step == 3
    assert all(torch.equal(w.impl.w, expected) for w in t.workers)
    assert t.retries == 1


# ------------------------------------------------------------------------------------------ (d) wait_alive
def test_wait_alive_asks_again_while_actors_restart(fake_ray):
    a, b = Actor(FakeWorker), Actor(FakeWorker)
    b.unavailable = 3
    recovery.wait_alive([a, b], timeout_s=60)
    assert b.unavailable == 0


def test_wait_alive_past_its_deadline_is_a_one_line_timeout(fake_ray):
    a, b = Actor(FakeWorker), Actor(FakeWorker)
    b.unavailable = 10**9  # Ray never finishes restarting it
    with pytest.raises(TimeoutError, match=r"^1 of 2 actors did not answer within 0 s .*ActorUnavailableError"):
        recovery.wait_alive([a, b], timeout_s=0.0)
    b.unavailable, b.hung = 0, True  # alive but never answering: ray.get's own timeout
    with pytest.raises(TimeoutError, match=r"^1 of 2 actors did not answer within 0.5 s") as err:
        recovery.wait_alive([a, b], timeout_s=0.5)
    assert "\n" not in str(err.value)


def test_a_recovery_that_times_out_ends_the_run_in_one_line(fake_ray, tmp_path, monkeypatch):
    t = FakeTrainer(_cfg(tmp_path))
    monkeypatch.setattr(recovery, "recover", lambda trainer, boundary: recovery.wait_alive(t.workers, 0.0))

    def worker_gone() -> None:
        t.workers[0].unavailable = 10**9
        raise ActorDiedError()

    t.faults[(0, "learn")] = worker_gone
    with pytest.raises(recovery.RunError, match=r"^training stopped in step 0: TimeoutError: 1 of 2 actors did not"):
        t.run()


# ------------------------------------------------------------------------------------------ (e) two learner ranks
def test_two_ranks_one_restarted_rewinds_to_the_checkpoint_and_reforms_the_group(fake_ray, tmp_path):
    """Learner rank 1 restarted in step 2 (a checkpoint after every step): the group's identity changed, so the run
    goes back to step 2's checkpoint; ``restore`` re-forms the process group with the new rank
    (``_ensure_joined``) and each rank reads its part; both ranks end as undisturbed."""
    t = FakeTrainer(_cfg(tmp_path, every=1), ranks=2)
    old_group = t.learner.ranks[0].impl.port

    def rank1_dies() -> None:
        t.learner.ranks[1].restart()
        raise ActorDiedError()

    t.faults[(2, "learn")] = rank1_dies
    t.run()
    want, ref = _undisturbed(tmp_path, ranks=2, every=1)
    _same_rows(read_metrics(t.run_dir), want)
    new_group = t.learner.ranks[0].impl.port
    assert new_group != old_group and [m.rank for m in GROUPS[new_group]] == [0, 1]
    assert all(torch.equal(w, ref.learner_weights()[0]) for w in t.learner_weights())


@pytest.mark.parametrize("lost", [0, 1])
@pytest.mark.parametrize("fault_step", [0, 2])
def test_two_ranks_no_checkpoint_rewind_gives_one_group_of_fresh_ranks(fake_ray, tmp_path, lost, fault_step):
    """Learner rank ``lost`` restarted, no checkpoint: the run goes back to its start with every rank fresh and in
    one process group. (Before: only rank 0's update count was looked at, and the group never re-formed, so a
    restarted rank 0 left rank 1 with its trained weights, and a restarted rank before any update left the group
    broken: the retried step failed with "Default process group has not been initialized".)"""
    t = FakeTrainer(_cfg(tmp_path), ranks=2)

    def rank_dies() -> None:
        t.learner.ranks[lost].restart()
        raise ActorDiedError()

    t.faults[(fault_step, "learn")] = rank_dies
    t.run()
    want, ref = _undisturbed(tmp_path, ranks=2)
    _same_rows(read_metrics(t.run_dir), want)
    assert all(torch.equal(w, ref.learner_weights()[0]) for w in t.learner_weights())
    assert len({r.impl.port for r in t.learner.ranks}) == 1
