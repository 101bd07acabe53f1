"""The driver's handle on the learner: :class:`LearnerGroup`, ``resources.learner_ranks`` learner actors joined in
one ``torch.distributed`` process group (data parallel, ``rlvr_temp.learner.parallel``), used as the trainer used the
single learner actor.

``group.<method>.remote(...)`` returns one ``ObjectRef``, as an actor method does, and ``group.<method>(...)``
waits for it. With one rank both go straight to the actor (exactly the single-learner behaviour). With more:

* ``train_step``, ``ping`` and ``set_state`` run on every rank (the batch is put in the object store once); the
  ref resolves to rank 0's result once every rank has finished, and fails if any rank failed;
* ``identity`` joins the ranks' incarnation tokens (``"a|b"``) and carries rank 0's update count; a call given such
  a token passes each rank its own part, so that a restarted rank refuses it (``recovery``);
* anything else (``export_weights``, ``trainable_state``, ``get_state``, ...) runs on rank 0 alone: the ranks'
  weights and optimizer states are the same -- except with a sharded (FSDP2, ``learner.mode=full``) policy, where
  the calls that gather its weights (``trainable_state``, ``get_state``, ``export_weights``, ``init_weight_sync``,
  ``sync_weights``: the ranks' ``collective_methods``) run on every rank too, rank 0's result returned.

Checkpoints: :meth:`write_parts` / :meth:`restore` let each rank write / read its own part from its actor
(``checkpoint.write_learner_part``); with one rank the state goes through the driver as before. Colocated GPU
engines sleep while the ranks train (vLLM sleep mode, rlvr_temp.weights.sync). A sharded policy cannot be re-formed
around one restarted rank (the survivors hold shards of the old group): every rank is restarted instead, and the
checkpoint then restored. Left out: re-forming the group while a rank is blocked in a collective (it fails after
``resources.dist_timeout_s``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from rlvr_temp.checkpoint import ResumeError, write_learner_part

#: methods every rank runs (the others run on rank 0 only)
ALL_RANKS = frozenset({"train_step", "ping", "set_state"})


@ray.remote(num_cpus=0)
def _first(*results: Any) -> Any:
    """Rank 0's result, once every rank's is there (a failed rank's error is this task's)."""
    return results[0]


@ray.remote(num_cpus=0)
def _identity(*ids: tuple[str, int]) -> tuple[str, int]:
    return "|".join(i[0] for i in ids), ids[0][1]


class _Method:
    """``group.name``: ``.remote(...)`` -> ObjectRef, a call -> the result."""

    def __init__(self, group: LearnerGroup, name: str) -> None:
        self.group, self.name = group, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.group._call(self.name, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return ray.get(self.remote(*args, **kwargs))


class LearnerGroup:
    """``ranks``: the learner actors, rank 0 first (started by ``launch.start_learner``); joined on creation."""

    def __init__(self, ranks: list[Any], dist_timeout_s: float = 600.0) -> None:
        if not ranks:
            raise ValueError("a learner group needs at least one rank")
        self.ranks = list(ranks)
        self.world = len(self.ranks)
        self.dist_timeout_s = dist_timeout_s
        self.backend: str | None = None
        self._joined: list[str] = []
        self._collective: frozenset[str] = frozenset()  # methods every rank must run (sharded policy)
        self.on_release: Callable[[], None] | None = None
        if self.world > 1:
            self.join()

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    # ------------------------------------------------------------------------------------------ calls
    def _call(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.world == 1:
            return getattr(self.ranks[0], name).remote(*args, **kwargs)
        if name == "identity":
            return _identity.remote(*[r.identity.remote() for r in self.ranks])
        tokens = self._tokens(kwargs)
        if name not in ALL_RANKS and name not in self._collective:
            return getattr(self.ranks[0], name).remote(*args, **(kwargs | tokens[0]))
        if name == "train_step" and args:
            args = (ray.put(args[0]), *args[1:])  # one copy of the batch in the object store for every rank
        refs = [getattr(r, name).remote(*args, **(kwargs | t)) for r, t in zip(self.ranks, tokens)]
        return _first.remote(*refs)

    def _tokens(self, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """Each rank's ``incarnation`` keyword (its part of the group's token), or nothing when none was given."""
        if "incarnation" not in kwargs:
            return [{}] * self.world
        token = kwargs.pop("incarnation")
        parts = token.split("|") if token else [None] * self.world
        if len(parts) != self.world:  # a token of another group: every rank refuses it
            parts = [token] * self.world
        return [{"incarnation": p} for p in parts]

    # ------------------------------------------------------------------------------------------ process group
    def join(self) -> str | None:
        """Form (or re-form, after a rank restarted) the ranks' process group; rank 0 picks the address."""
        if self.world == 1:
            return None
        ids = ray.get([r.identity.remote() for r in self.ranks])
        addr, port = ray.get(self.ranks[0].rendezvous.remote())
        backends = ray.get(
            [r.join.remote(addr, port, k, self.world, self.dist_timeout_s) for k, r in enumerate(self.ranks)]
        )
        self.backend, self._joined = backends[0], [i[0] for i in ids]
        self._collective = ray.get(self.ranks[0].collective_methods.remote())
        return self.backend

    def _ensure_joined(self) -> None:
        if self.world > 1 and [i[0] for i in ray.get([r.identity.remote() for r in self.ranks])] != self._joined:
            if self._collective:  # the survivors' shards belong to the old group: every rank starts afresh
                self.restart()
            else:
                self.join()

    # ------------------------------------------------------------------------------------------ state
    def write_parts(self, directory: Path) -> list[str]:
        """Write the learner's part of a checkpoint into ``directory``; returns the file names. Several ranks each
        write their own from their actor (the directory must be visible to them: same node or shared storage)."""
        if self.world == 1:
            return write_learner_part(directory, 0, 1, ray.get(self.ranks[0].get_state.remote()))
        parts = ray.get([r.write_part.remote(str(directory)) for r in self.ranks])
        return sorted({name for names in parts for name in names})

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Load a checkpoint (``checkpoint.load_checkpoint``'s dict) written by as many ranks."""
        saved = int(ckpt.get("learner_ranks", 1))
        if saved != self.world:
            raise ResumeError(
                f"{ckpt.get('path')}: written by {saved} learner rank(s), this run has {self.world}; resume with "
                f"resources.learner_ranks={saved} (or start a new run directory)"
            )
        if self.world == 1:
            ray.get(self.ranks[0].set_state.remote(ckpt["learner_state"]))
            return
        self._ensure_joined()
        ray.get([r.read_part.remote(str(ckpt["path"])) for r in self.ranks])

    def to_start(self) -> None:
        """Every rank at its initial state, in one process group (a rewind to the run's start, without a checkpoint):
        every rank is restarted fresh when any has updated -- each rank's count, not rank 0's alone: a restarted rank
        0 counts 0 beside a trained rank 1 -- and otherwise the group is re-formed if a rank restarted."""
        if any(n != 0 for _, n in ray.get([r.identity.remote() for r in self.ranks])):
            self.restart()
        else:
            self._ensure_joined()

    def restart(self) -> None:
        """Restart every rank fresh (Ray re-runs their constructors: the initial weights), then re-form the group."""
        for r in self.ranks:
            ray.kill(r, no_restart=False)
        ray.get([r.ping.remote() for r in self.ranks])
        self.join()

    # ------------------------------------------------------------------------------------------ colocation hooks
    def close(self, release: bool = True) -> None:
        """Stop every rank; with ``release``, also remove the run's placement group (``on_release``, set by
        ``launch.start_learner``), which ends any engine still placed in it: only when the run owns its engines."""
        for r in self.ranks:
            ray.kill(r)
        if release and self.on_release is not None:
            self.on_release()
