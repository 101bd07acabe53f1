"""Rank-side helpers of the data-parallel learner (``resources.learner_ranks``), Ray-free: the process group, the
balanced split of a mini-batch, the gradient all-reduce and the sums of per-rank statistics.

Every rank holds the whole policy (LoRA adapters, or all weights for ``learner.mode=full``) and the same optimizer
state; each processes its share of every mini-batch, normalised by the GLOBAL mini-batch's token / response count,
so the sum of the ranks' gradients is the single-rank gradient. The gradients are summed with one
``all_reduce`` of the flattened trainable gradients per optimizer step (what DDP does, without its wrapper: ranks
may run different numbers of micro-batches, or none, and peft's module names stay as they are). Left out: sharded
parameters / optimizer state (FSDP2), so every rank needs the whole model's memory (docs/cluster.md).
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from rlvr_temp.checkpoint import read_learner_part, write_learner_part


def free_port() -> int:
    """A TCP port free on this host now (rank 0's rendezvous port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def init_group(addr: str, port: int, rank: int, world: int, timeout_s: float) -> str:
    """Join the process group at ``tcp://addr:port`` (leaving any earlier one first: a re-formed group after a
    rank restarted); ``nccl`` on CUDA, ``gloo`` otherwise. Returns the backend."""
    if dist.is_initialized():
        dist.destroy_process_group()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://{addr}:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return backend


def split_by_tokens(lengths: Sequence[int], index: Sequence[int], world: int) -> list[list[int]]:
    """``index`` split into ``world`` parts of about equal token counts (longest first, each to the lightest part;
    ties to the lower rank), each part in ``index``'s order. Deterministic: every rank computes the same split."""
    parts: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(index, key=lambda i: (-lengths[i], i)):
        k = min(range(world), key=lambda r: (load[r], r))
        parts[k].append(i)
        load[k] += lengths[i]
    pos = {i: n for n, i in enumerate(index)}
    return [sorted(p, key=pos.__getitem__) for p in parts]


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum ``.grad`` over the ranks in one flat buffer. A parameter that has a gradient on some rank gets the sum
    everywhere (zeros stand in where a rank has none: no responses in this mini-batch); one with a gradient on no
    rank keeps ``None``, so that the optimizer skips it exactly as a single rank would."""
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in live]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for g, new in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(new)


def broadcast_params(params: Sequence[torch.nn.Parameter]) -> None:
    """Rank 0's values into every rank's parameters (they start equal already: same seed; this makes it certain)."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def sum_dicts(local: dict[str, float]) -> dict[str, float]:
    """Key-wise sum of every rank's ``local`` (keys a rank lacks count as 0)."""
    out: dict[str, float] = {}
    for part in gather(local):
        for k, v in part.items():  # type: ignore[attr-defined]
            out[k] = out.get(k, 0.0) + v
    return out


def gather(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order."""
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mismatch(
    old: Sequence[torch.Tensor], rollout: Sequence[Sequence[float]], index: Sequence[int], across: bool
) -> dict[str, float]:
    """Mean and max |learner old log-prob - rollout log-prob| over the tokens of the responses ``index`` (with
    ``across``: over every rank's ``index``, i.e. the whole batch)."""
    diffs = [(old[i] - torch.tensor(rollout[i], dtype=torch.float32)).abs() for i in index]
    total, count = float(sum(d.sum() for d in diffs)), sum(d.numel() for d in diffs)
    top = max((float(d.max()) for d in diffs if d.numel()), default=0.0)
    if across:
        parts = gather((total, count, top))
        total, count, top = sum(p[0] for p in parts), sum(p[1] for p in parts), max(p[2] for p in parts)
    return {"logprob/mismatch_mean": total / max(1, count), "logprob/mismatch_max": top}


class RankMixin:
    """The learner's data-parallel side (mixed into :class:`rlvr_temp.learner.Learner`): rendezvous, joining the
    process group, and its part of a checkpoint. Expects ``rank``, ``world``, ``_trainable``, ``get_state`` and
    ``set_state`` on the class."""

    rank: int
    world: int

    def rendezvous(self) -> tuple[str, int]:
        """(this node's address, a free port): rank 0's, for the process group the driver then forms."""
        from ray.util import get_node_ip_address  # imported here: the learner itself runs without Ray

        return get_node_ip_address(), free_port()

    def join(self, addr: str, port: int, rank: int, world: int, timeout_s: float = 600.0) -> str:
        """Join the learner ranks' process group as ``rank`` of ``world`` (every rank at once); rank 0's trainable
        weights are then everyone's. Returns the backend (``gloo`` / ``nccl``)."""
        self.rank, self.world = rank, world
        backend = init_group(addr, port, rank, world, timeout_s)
        broadcast_params(self._trainable())  # type: ignore[attr-defined]
        return backend

    def write_part(self, directory: str) -> list[str]:
        """Write this rank's part of a checkpoint into ``directory`` (``checkpoint.write_learner_part``)."""
        return write_learner_part(directory, self.rank, self.world, self.get_state())  # type: ignore[attr-defined]

    def read_part(self, directory: str) -> None:
        """Restore this rank's part of the checkpoint in ``directory`` (written by as many ranks)."""
        self.set_state(read_learner_part(directory, self.rank, self.world))  # type: ignore[attr-defined]
