"""Rank-side helpers of the data-parallel learner (``resources.learner_ranks``), Ray-free: the process group, the
balanced split of a mini-batch, the gradient reduction, FSDP2 sharding for ``learner.mode=full``, the sums of
per-rank statistics, and each rank's part of a checkpoint.

Each rank processes its share of every mini-batch, normalised by the GLOBAL mini-batch's token / response count,
so the sum of the ranks' gradients is the single-rank gradient.

* ``lora`` / ``qlora``: every rank holds the whole policy and the same optimizer state; the gradients are summed
  with one ``all_reduce`` of the flattened trainable gradients per optimizer step (what DDP does, without its
  wrapper: ranks may run different numbers of micro-batches, or none, and peft's module names stay as they are).
* ``full``: the policy is sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``: every decoder layer, then the
  root), so parameters, gradients and AdamW's state are split over the ranks (fp32 master weights; bf16 compute on
  GPUs through ``MixedPrecisionPolicy``). Gradients are reduce-scattered as sums on the last micro-batch of each
  optimizer step; ranks run the same number of forward / backward calls (:meth:`RankMixin._lockstep`), since
  every one is a collective. Gathering the weights (checkpoint's ``policy.safetensors``, weight sync) is a
  collective too: ``LearnerGroup`` runs those calls on every rank (:meth:`RankMixin.collective_methods`).

Left out: sharding the LoRA modes' frozen base, and re-sharding to another number of ranks on resume.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save as safetensors_bytes
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from rlvr_temp.checkpoint import ResumeError, rank_file, read_learner_part, write_learner_part
from rlvr_temp.utils import atomic_write, check_incarnation


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


def shard_policy(model: torch.nn.Module, world: int, device: torch.device, dtype: torch.dtype) -> None:
    """Shard ``model`` over the ``world`` ranks of the default group with FSDP2, in place: every decoder layer (the
    classes in transformers' ``_no_split_modules``) is one unit, the root (embeddings, final norm, LM head) another.
    Master weights (and so AdamW's state) are fp32; on CUDA a lower ``dtype`` is the compute dtype, with gradients
    reduced in fp32; on the CPU everything stays fp32 (gloo). Gradients are summed, not averaged."""
    mesh = init_device_mesh(device.type, (world,))
    low = device.type == "cuda" and dtype != torch.float32
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    # cast one layer, shard it: its full fp32 copy is freed at once, so the peak is the loaded model plus one layer
    for module in [m for m in model.modules() if type(m).__name__ in blocks]:
        fully_shard(module.float(), mesh=mesh, mp_policy=mp)
    with torch.no_grad():
        for p in model.parameters():
            if not isinstance(p, DTensor):  # the root's own (tied embeddings count once: parameters() dedups)
                p.data = p.data.float()
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # the loss is already normalised by the GLOBAL mini-batch: the ranks' gradients must be summed (FSDP
            # averages by default), and gloo has no PREMUL_SUM, hence a plain SUM with a divide factor of 1
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def max_over_ranks(n: int) -> int:
    """The largest ``n`` of any rank."""
    t = torch.tensor([n], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def clip_grads(params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` over a mix of sharded (DTensor: FSDP2) and replicated gradients: the norm is the whole
    model's, as on a single rank (each DTensor norm is reduced over its shards), and every gradient is scaled
    by the same coefficient. Returns the norm before clipping."""
    live = [p for p in params if p.grad is not None]
    sharded = [p for p in live if isinstance(p.grad, DTensor)]
    if not sharded:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    plain = [p for p in live if not isinstance(p.grad, DTensor)]
    norms = [torch.nn.utils.get_total_norm([p.grad for p in sharded]).full_tensor()]
    if plain:
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in plain]).to(norms[0].device))
    total = torch.linalg.vector_norm(torch.stack(norms))
    for group in (sharded, plain):
        if group:
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total.to(group[0].grad.device))
    return float(total)


def local_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts / lists / tuples) copied to the CPU; a DTensor as its local
    shard (a checkpoint part holds this rank's shards only)."""
    if isinstance(obj, DTensor):
        return obj.to_local().detach().cpu().clone()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: local_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(local_cpu(v) for v in obj)
    return obj


def reshard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` of local shards (:func:`local_cpu`): each per-element state tensor of a DTensor
    parameter (AdamW's moments) becomes a DTensor laid out as its parameter; scalars (``step``) stay plain."""
    for p, st in optimizer.state.items():
        if not isinstance(p, DTensor):
            continue
        shape = p.to_local().shape
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.dim() and v.shape == shape:
                st[k] = DTensor.from_local(
                    v, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
                )


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
    """The learner's data-parallel side (mixed into :class:`rlvr_temp.learner.policy.Learner`): rendezvous, joining the
    process group (sharding a ``full`` policy), lock-stepped micro-batches, gradient reduction and clipping, the
    learner's state and its part of a checkpoint, and weight sync (every rank takes part when sharded). Expects
    ``model``, ``ttm_head``, ``optimizer``, ``scheduler``, ``step``, ``lc``, ``device``, ``export_dtype``,
    ``_sender``, ``_incarnation`` and ``_trainable`` on the class."""

    rank: int = 0
    world: int = 1
    sharded: bool = False  # FSDP2 (learner.mode=full on more than one rank)
    model: torch.nn.Module
    ttm_head: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int
    lc: Any
    device: torch.device
    export_dtype: torch.dtype
    _sender: Any
    _incarnation: str

    def _trainable(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def rendezvous(self) -> tuple[str, int]:
        """(this node's address, a free port): rank 0's, for the process group the driver then forms."""
        from ray.util import get_node_ip_address  # imported here: the learner itself runs without Ray

        return get_node_ip_address(), free_port()

    def join(self, addr: str, port: int, rank: int, world: int, timeout_s: float = 600.0) -> str:
        """Join the learner ranks' process group as ``rank`` of ``world`` (every rank at once); rank 0's trainable
        weights are then everyone's, and a ``full`` policy is then sharded over the ranks with a new optimizer.
        Returns the backend (``gloo`` / ``nccl``). A rank whose policy was sharded over an earlier group (another
        rank restarted) cannot re-shard it: it refuses, and ``LearnerGroup`` restarts every rank instead."""
        if self.sharded:
            raise RuntimeError("a sharded (FSDP2) learner rank cannot join a new group; restart every rank")
        self.rank, self.world = rank, world
        backend = init_group(addr, port, rank, world, timeout_s)
        broadcast_params(self._trainable())
        if self.lc.mode == "full" and world > 1:
            shard_policy(self.model, world, self.device, self.export_dtype)
            self.sharded = True
            # AdamW over the sharded parameters (its state is then per shard); the schedule carries over, at step 0
            schedule = self.scheduler.lr_lambdas[0]
            self.optimizer = torch.optim.AdamW(self._trainable(), lr=self.lc.lr, weight_decay=self.lc.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        return backend

    def collective_methods(self) -> frozenset[str]:
        """The methods that are collectives here (they gather sharded weights): ``LearnerGroup`` runs them on every
        rank and returns rank 0's result."""
        if not self.sharded:
            return frozenset()
        return frozenset({"trainable_state", "get_state", "export_weights", "init_weight_sync", "sync_weights"})

    # ------------------------------------------------------------------------------------------ micro-batches
    def _lockstep(self, chunks: list[list[int]]) -> Iterator[tuple[list[int], bool, bool]]:
        """``(indices, real, last)`` per forward: the micro-batches ``chunks``, then, when sharded, filler ones
        (response 0, to be weighted 0) until this rank has run as many as the busiest rank.

        Why: under FSDP2 every forward all-gathers each layer and the last backward reduce-scatters; a rank that
        ran fewer would leave the others waiting in a collective (ranks get different token-balanced shares,
        so different numbers of micro-batches). A zero-weight filler adds exact zeros to the gradients."""
        total = max_over_ranks(len(chunks)) if self.sharded else len(chunks)
        for n in range(total):
            yield (chunks[n], True, n == total - 1) if n < len(chunks) else ([0], False, n == total - 1)

    def _grad_sync(self, last: bool) -> None:
        """FSDP2: accumulate the micro-batches' gradients unsharded, reduce-scatter them on the last only."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last)  # type: ignore[operator]

    def _reduce_and_clip(self) -> float:
        """After a mini-batch's backward passes: sum the replicated gradients over the ranks (the sharded ones
        were reduce-scattered by FSDP2), then clip to ``learner.grad_clip``; the norm before clipping."""
        params = self._trainable()
        if self.world > 1:
            all_reduce_grads([p for p in params if not isinstance(p, DTensor)])
        return clip_grads(params, self.lc.grad_clip)

    def shard_bytes(self) -> dict[str, int]:
        """Bytes this rank holds of the trainable parameters and of the optimizer state (its shards when sharded)."""

        def size(t: torch.Tensor) -> int:
            t = t.to_local() if isinstance(t, DTensor) else t
            return t.numel() * t.element_size()

        opt = [v for st in self.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
        return {"params": sum(size(p) for p in self._trainable()), "optimizer": sum(size(v) for v in opt)}

    # ------------------------------------------------------------------------------------------ state
    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if self.ttm_head is not None:
            named.update({f"ttm_head.{n}": p for n, p in self.ttm_head.named_parameters()})
        return named

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Trainable parameters only (adapter or full weights, TTM head), for checkpoints and tests. Sharded: a
        collective (each parameter gathered in turn); rank 0 gets them, the others an empty dict."""
        out = {}
        for n, p in self._named_trainable().items():
            full = p.full_tensor() if isinstance(p, DTensor) else p
            if self.rank == 0 or not self.sharded:
                out[n] = full.detach().cpu().clone()
        return out

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: trainable weights, optimizer, LR schedule, step, RNG. Sharded:
        ``trainable`` is gathered on rank 0 (a collective) and ``shard`` holds this rank's parameter shards;
        the optimizer state holds its own shards."""
        state = {
            "trainable": self.trainable_state(),
            # on the CPU: the state crosses process boundaries (Ray) and goes to disk; load_state_dict moves it back
            "optimizer": local_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
        }
        if self.sharded:
            state["shard"] = {n: local_cpu(p) for n, p in self._named_trainable().items()}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s output (the policy must have been built with the same settings; sharded:
        over as many ranks, from this rank's ``shard``)."""
        params = self._named_trainable()
        values = state["shard"] if self.sharded else state["trainable"]
        missing = [k for k in values if k not in params]
        if missing:
            raise ValueError(f"checkpoint has parameters this policy lacks: {missing[:3]}...")
        with torch.no_grad():
            for name, value in values.items():
                p = params[name]
                target = p.to_local() if isinstance(p, DTensor) else p
                target.copy_(value.to(target.device, target.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        reshard_optimizer_state(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])

    def write_part(self, directory: str) -> list[str]:
        """Write this rank's part of a checkpoint into ``directory`` (``checkpoint.write_learner_part``). Sharded:
        every rank writes its shards and optimizer state into its own file, rank 0 also the gathered weights
        (``policy.safetensors``, full HF names: what export and evaluation read)."""
        state = self.get_state()
        if not self.sharded:
            return write_learner_part(directory, self.rank, self.world, state)
        d, names = Path(directory), [rank_file(self.rank)]
        if self.rank == 0:
            with atomic_write(d / "policy.safetensors", "wb") as fh:
                fh.write(safetensors_bytes({k: v.contiguous() for k, v in state["trainable"].items()}))
            names.insert(0, "policy.safetensors")
        with atomic_write(d / names[-1], "wb") as fh:
            torch.save({k: v for k, v in state.items() if k != "trainable"} | {"world": self.world}, fh)
        return names

    def read_part(self, directory: str) -> None:
        """Restore this rank's part of the checkpoint in ``directory`` (written by as many ranks)."""
        if not self.sharded:
            self.set_state(read_learner_part(directory, self.rank, self.world))
            return
        path = Path(directory) / rank_file(self.rank)
        state = torch.load(path, weights_only=False)
        if int(state.get("world", 1)) != self.world or "shard" not in state:
            raise ResumeError(
                f"{path}: not a part written by {self.world} sharded learner ranks; resume with the run's "
                "resources.learner_ranks and learner.mode"
            )
        self.set_state(state)

    # ------------------------------------------------------------------------------------------ weight sync
    def init_weight_sync(self, client: Any, backend: str, bucket_bytes: int) -> None:
        """Join the engines' weight-transfer group (rlvr_temp.weights.sync), replacing an earlier group: rank 0 as its
        sender; when sharded every rank is called, the others only gather their shards when rank 0 sends."""
        from rlvr_temp.weights import (
            sync,  # vLLM's weight-transfer classes: only a learner that sends weights needs them
        )
        from rlvr_temp.weights.source import PolicySource

        if self._sender is not None:
            self._sender.shutdown()
        source = PolicySource.from_learner(self)
        self._sender = sync.trainer_engine(backend, client, source, bucket_bytes, rank=self.rank)

    @torch.no_grad()
    def sync_weights(self, incarnation: str | None = None) -> dict[str, float]:
        """Stream the current policy to every engine, module by module from this device; seconds and bytes."""
        check_incarnation(self._incarnation, incarnation, "learner")
        if self._sender is None:
            raise RuntimeError("sync_weights before init_weight_sync")
        from rlvr_temp.weights import sync

        return sync.send(self._sender)
