"""The learner's state and its rank's part of a checkpoint, as plain functions over the policy's trainable
parameters, its optimizer and its LR schedule; they run in a learner rank, called by
:class:`rlvr_temp.learner.learner.Learner` with its own (it owns them: the functions keep nothing).

The state is what continuing exactly needs: trainable weights (adapter or full weights, TTM head), optimizer,
LR schedule, step and torch's RNG, every tensor on the CPU (it crosses process boundaries through Ray and goes to
disk). Unsharded, the ranks' parts go through ``checkpoint.write_learner_part`` / ``read_learner_part``. Sharded
(FSDP2, ``learner.mode=full`` on several ranks): every rank writes its parameter and optimizer shards into its own
file, and rank 0 also the gathered weights (``policy.safetensors``, full HF names: what export and evaluation read).

Left out: re-sharding a part to another number of ranks (``read_rank_part`` refuses it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch.distributed.tensor import DTensor

from rlvr_temp.checkpoint import ResumeError, rank_file, read_learner_part, write_learner_part
from rlvr_temp.learner.parallel import local_cpu, reshard_optimizer_state
from rlvr_temp.utils import atomic_write


def named_trainable(model: torch.nn.Module, ttm_head: torch.nn.Module | None) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters by name: the policy's, then the TTM head's as ``ttm_head.*``."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if ttm_head is not None:
        named.update({f"ttm_head.{n}": p for n, p in ttm_head.named_parameters()})
    return named


def gather_trainable(named: dict[str, torch.nn.Parameter], keep: bool) -> dict[str, torch.Tensor]:
    """CPU copies of ``named``'s full values. A DTensor is gathered whatever ``keep`` says (a collective: every
    rank must call this, in the same order); only a ``keep`` rank gets the copies, the others an empty dict."""
    out = {}
    for n, p in named.items():
        full = p.full_tensor() if isinstance(p, DTensor) else p
        if keep:
            out[n] = full.detach().cpu().clone()
    return out


def collect_state(
    named: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    *,
    keep: bool,
    sharded: bool,
) -> dict[str, Any]:
    """The learner's state (module docstring): ``trainable`` as :func:`gather_trainable` gives it; sharded, also
    ``shard``, this rank's parameter shards (the optimizer state holds its own shards)."""
    state = {
        "trainable": gather_trainable(named, keep),
        # on the CPU: the state crosses process boundaries (Ray) and goes to disk; load_state_dict moves it back
        "optimizer": local_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
    }
    if sharded:
        state["shard"] = {n: local_cpu(p) for n, p in named.items()}
    return state


def restore_state(
    state: dict[str, Any],
    named: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    sharded: bool,
) -> int:
    """Load :func:`collect_state`'s output into the parameters, the optimizer, the schedule and torch's RNG (the
    policy must have been built with the same settings; sharded: over as many ranks, from this rank's ``shard``).
    Returns the step to continue from."""
    values = state["shard"] if sharded else state["trainable"]
    missing = [k for k in values if k not in named]
    if missing:
        raise ValueError(f"checkpoint has parameters this policy lacks: {missing[:3]}...")
    with torch.no_grad():
        for name, value in values.items():
            p = named[name]
            # a DTensor's local shard takes this rank's part as it was written (local_cpu kept the shards)
            target = p.to_local() if isinstance(p, DTensor) else p
            target.copy_(value.to(target.device, target.dtype))
    optimizer.load_state_dict(state["optimizer"])
    reshard_optimizer_state(optimizer)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def write_rank_part(directory: str, state: dict[str, Any], rank: int, world: int, sharded: bool) -> list[str]:
    """Write rank ``rank``'s part of a checkpoint (``state``: :func:`collect_state`) into ``directory``; returns
    the files' names."""
    if not sharded:
        return write_learner_part(directory, rank, world, state)
    d, names = Path(directory), [rank_file(rank)]
    if rank == 0:
        with atomic_write(d / "policy.safetensors", "wb") as fh:
            fh.write(safetensors_bytes({k: v.contiguous() for k, v in state["trainable"].items()}))
        names.insert(0, "policy.safetensors")
    with atomic_write(d / names[-1], "wb") as fh:
        torch.save({k: v for k, v in state.items() if k != "trainable"} | {"world": world}, fh)
    return names


def read_rank_part(directory: str, rank: int, world: int, sharded: bool) -> dict[str, Any]:
    """Rank ``rank``'s state from the checkpoint in ``directory`` (written by ``world`` ranks, as sharded)."""
    if not sharded:
        return read_learner_part(directory, rank, world)
    path = Path(directory) / rank_file(rank)
    state = torch.load(path, weights_only=False)
    if int(state.get("world", 1)) != world or "shard" not in state:
        raise ResumeError(
            f"{path}: not a part written by {world} sharded learner ranks; resume with the run's "
            "resources.learner_ranks and learner.mode"
        )
    return state
