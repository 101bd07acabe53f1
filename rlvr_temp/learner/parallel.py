"""Rank mechanics of the data-parallel learner (``resources.learner_ranks``), Ray-free plain functions that run in
each learner rank: the rendezvous and process group, the token-balanced split of a mini-batch, lock-stepped
micro-batches, the gradient reduction and clipping, FSDP2 sharding for ``learner.mode=full`` (and moving sharded
state to and from the CPU), and the sums of per-rank statistics. The learner that uses them, and owns the state
they act on, is :class:`rlvr_temp.learner.learner.Learner`.

Each rank processes its share of every mini-batch, normalised by the GLOBAL mini-batch's token / response count,
so the sum of the ranks' gradients is the single-rank gradient.

* ``lora`` / ``qlora``: every rank holds the whole policy and the same optimizer state; the gradients are summed
  with one ``all_reduce`` of the flattened trainable gradients per optimizer step (what DDP does, without its
  wrapper: ranks may run different numbers of micro-batches, or none, and peft's module names stay as they are).
* ``full``: the policy is sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``: every decoder layer, then the
  root), so parameters, gradients and AdamW's state are split over the ranks (fp32 master weights; bf16 compute on
  GPUs through ``MixedPrecisionPolicy``). Gradients are reduce-scattered as sums on the last micro-batch of each
  optimizer step; ranks run the same number of forward / backward calls (:func:`lockstep`), since every one is a
  collective. Gathering the weights (checkpoint's ``policy.safetensors``, weight sync) is a collective too:
  ``LearnerGroup`` runs those calls on every rank (``Learner.collective_methods``).

Left out: sharding the LoRA modes' frozen base, and re-sharding to another number of ranks on resume.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def free_port() -> int:
    """A TCP port free on this host now (rank 0's rendezvous port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def rendezvous() -> tuple[str, int]:
    """(this node's address, a free port): rank 0's, for the process group the driver then forms."""
    from ray.util import get_node_ip_address  # imported here: the learner itself runs without Ray

    return get_node_ip_address(), free_port()


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


def lockstep(chunks: list[list[int]], sharded: bool) -> Iterator[tuple[list[int], bool, bool]]:
    """``(indices, real, last)`` per forward: the micro-batches ``chunks``, then, when ``sharded``, filler ones
    (response 0, to be weighted 0) until this rank has run as many as the busiest rank.

    Why: under FSDP2 every forward all-gathers each layer and the last backward reduce-scatters; a rank that
    ran fewer would leave the others waiting in a collective (ranks get different token-balanced shares,
    so different numbers of micro-batches). A zero-weight filler adds exact zeros to the gradients."""
    total = max_over_ranks(len(chunks)) if sharded else len(chunks)
    for n in range(total):
        yield (chunks[n], True, n == total - 1) if n < len(chunks) else ([0], False, n == total - 1)


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


def reduce_and_clip(params: Sequence[torch.nn.Parameter], world: int, max_norm: float) -> float:
    """After a mini-batch's backward passes: sum the replicated gradients over the ``world`` ranks (the sharded
    ones were reduce-scattered by FSDP2), then clip to ``max_norm``; the norm before clipping."""
    if world > 1:
        all_reduce_grads([p for p in params if not isinstance(p, DTensor)])
    return clip_grads(params, max_norm)


def held_bytes(params: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds of ``params`` and of the optimizer's state (its local shards when sharded)."""

    def size(t: torch.Tensor) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    opt = [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return {"params": sum(size(p) for p in params), "optimizer": sum(size(v) for v in opt)}


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


def gather(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order."""
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mismatch(
    old: Sequence[torch.Tensor],
    rollout: Sequence[Sequence[float]],
    index: Sequence[int],
    across: bool,
    tokens: Sequence[Sequence[int]] | None = None,
    temperatures: Sequence[Sequence[float]] | None = None,
) -> dict[str, float]:
    """Mean and max |learner old log-prob - rollout log-prob| over the tokens of the responses ``index`` (with
    ``across``: over every rank's ``index``, i.e. the whole batch), and where the max is: ``mismatch_worst_*``
    (response index, token position, both log-probs; with ``tokens`` / ``temperatures``, the responses' token ids
    and per-token temperatures, the token's id and temperature too). A NaN or infinite log-prob on either side raises
    ``ValueError`` naming the response, on every rank (after the gather, so no rank is left waiting in it): the
    metric never turns NaN silently."""
    diffs, bad, worst = [], "", (0.0, -1, -1, 0.0, 0.0, -1, 0.0)
    for i in index:
        theirs = torch.tensor(rollout[i], dtype=torch.float32)
        for side, values in (("rollout", theirs), ("learner", old[i])):
            finite = torch.isfinite(values)
            if not bad and not bool(finite.all()):
                p = int((~finite).nonzero()[0, 0])
                bad = (
                    f"response {i}: {side} log-prob at token {p} is {float(values[p])} (logprob/mismatch would be NaN)"
                )
        if not bad:
            diffs.append((old[i] - theirs).abs())
            if diffs[-1].numel() and float(diffs[-1].max()) > worst[0]:
                p = int(diffs[-1].argmax())
                token = tokens[i][p] if tokens is not None else -1
                temp = temperatures[i][p] if temperatures is not None else 0.0
                worst = (float(diffs[-1][p]), i, p, float(theirs[p]), float(old[i][p]), token, temp)
    total, count = float(sum(d.sum() for d in diffs)), sum(d.numel() for d in diffs)
    if across:
        parts = gather((total, count, worst, bad))
        total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
        worst = max((p[2] for p in parts), key=lambda w: w[0])
        bad = next((p[3] for p in parts if p[3]), "")
    if bad:
        raise ValueError(bad)
    names = ("response", "position", "rollout", "learner", "token", "temperature")
    return {
        "logprob/mismatch_mean": total / max(1, count),
        "logprob/mismatch_max": worst[0],
        **{f"logprob/mismatch_worst_{k}": float(v) for k, v in zip(names, worst[1:])},
    }
