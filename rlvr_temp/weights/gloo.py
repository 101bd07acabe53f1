"""The ``gloo`` weight-sync backend: CPU tensors over TCP through vLLM's weight-transfer API, so that CPU runs make
the calls a GPU run makes. Both ends live here: :class:`GlooTrainerWeightTransferEngine` in the learner's process
(rank 0 of the group sends), :class:`GlooWeightTransferEngine` in every vLLM worker process.

vLLM 0.32 pairs a ``WeightTransferEngine`` in every vLLM worker (``LLM(weight_transfer_config=...)``) with a trainer
side ``TrainerWeightTransferEngine`` that drives ``start_weight_update`` / ``update_weights`` (concurrently with its
broadcasts) / ``finish_weight_update`` through a ``VLLMWeightSyncClient`` (rlvr_temp.weights.clients). vLLM ships
``nccl`` and ``ipc``; :func:`register` adds ``gloo`` (a stateless group that leaves the workers' default process
group alone). It must run in every vLLM worker process before its model loads: importing this module does it
(rlvr_temp.engine.extension imports it). Per round the update info lists every parameter's name, dtype and shape
and the bucket boundaries; per bucket all ranks all-reduce a status word (either side aborts the round with an
error naming the parameter, instead of a hang), then the trainer broadcasts the bucket packed bytes-exact into one
``uint8`` buffer, which every worker unpacks (vLLM's ``unpack_tensor``) into ``model.load_weights`` under vLLM's
layerwise reload (vLLM's packed NCCL producer/consumer need CUDA streams).

Left out: sharded (FSDP) trainers beyond "rank 0 sends, the others iterate", overlapping packing with sending, and
repairing a group after an engine failed outright (shut the engines' side down first: gloo keeps the trainer's
pending collective, and its teardown waits, until the peers' end is gone or ``timeout_s`` passes; then re-init).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch
import vllm.distributed.weight_transfer.base as wt
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

from rlvr_temp.weights.base import Transport, rendezvous

if TYPE_CHECKING:
    from torch._C._distributed_c10d import ProcessGroup

BACKEND = "gloo"
DEFAULT_BUCKET_BYTES = 64 << 20


# ---------------------------------------------------------------------------------------------- wire info
@dataclass(kw_only=True)
class GlooWeightTransferInitInfo(wt.WeightTransferInitInfo):
    """Worker-side init info: the TCP rendezvous, this engine's first rank in the group, the group's timeout."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    timeout_s: float = 600.0


@dataclass
class GlooWeightTransferUpdateInfo(wt.WeightTransferUpdateInfo):
    """One round: every parameter's name / dtype / shape in send order, and ``bucket_ends[b]`` = one past the last
    parameter of bucket ``b`` (bucket ``b`` is ``names[bucket_ends[b-1]:bucket_ends[b]]``)."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    bucket_ends: list[int]

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.dtype_names) != n or len(self.shapes) != n:
            raise ValueError(f"update info: {n} names, {len(self.dtype_names)} dtypes, {len(self.shapes)} shapes")
        for name, dtype in zip(self.names, self.dtype_names):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"update info: parameter {name!r} has unknown dtype {dtype!r}")
        ends = [0, *self.bucket_ends]
        if any(b <= a for a, b in itertools.pairwise(ends)) or ends[-1] != n:
            raise ValueError(f"update info: bucket_ends {self.bucket_ends} do not split {n} parameters")

    @classmethod
    def plan(cls, meta: Sequence[wt.ParamMeta], bucket_bytes: int) -> GlooWeightTransferUpdateInfo:
        """The round for ``meta``: buckets of consecutive tensors up to ``bucket_bytes`` (a larger tensor alone)."""
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        ends, size = [], 0
        for i, m in enumerate(meta):
            n = math.prod(m.shape) * m.dtype.itemsize
            if size and size + n > bucket_bytes:
                ends.append(i)
                size = 0
            size += n
        dtypes = [str(m.dtype).removeprefix("torch.") for m in meta]
        return cls([m.name for m in meta], dtypes, [list(m.shape) for m in meta], [*ends, len(meta)] if meta else [])

    def bucket(self, b: int) -> range:
        return range(self.bucket_ends[b - 1] if b else 0, self.bucket_ends[b])

    def nbytes(self, i: int) -> int:
        return math.prod(self.shapes[i]) * getattr(torch, self.dtype_names[i]).itemsize


@dataclass
class GlooTrainerInitInfo(wt.TrainerInitInfo):
    """Trainer-side init info: the sender is rank 0 of ``world_size`` = 1 + every engine's TP size. Buckets are
    planned per round (their boundaries travel in the update info)."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 600.0


# ---------------------------------------------------------------------------------------------- the group
def open_group(info: GlooTrainerInitInfo | GlooWeightTransferInitInfo, rank: int) -> ProcessGroup:
    """A gloo group outside torch.distributed's global state (the default group is left alone)."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    address, port, size, timeout = info.master_address, info.master_port, info.world_size, info.timeout_s
    return stateless_init_torch_distributed_process_group(
        address, port, rank, size, "gloo", timeout=timedelta(seconds=timeout)
    )


@contextlib.contextmanager
def _keep_stdout() -> Iterator[None]:
    """Restore fd 1 afterwards: vLLM opens gloo groups inside ``suppress_stdout`` (fd 1 to /dev/null and back), so two
    threads of one process (an in-process engine and the trainer) rendezvousing at once can leave it on /dev/null."""
    saved = os.dup(1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _watch(done: Any, rpc: Future | None, what: str) -> None:
    """Wait until ``done()``; if the engines' RPC ``rpc`` fails first, raise at once (not at the group's timeout)."""
    while rpc is not None and not done():
        if rpc.done() and rpc.exception() is not None:
            raise RuntimeError(f"{what}: {rpc.exception()}") from rpc.exception()
        time.sleep(0.002)


class TransferAborted(ValueError):
    """A round was aborted at a parameter; raised on the trainer and on every worker (one line)."""


def _status(group: ProcessGroup, names: Sequence[str], trainer_bad: int, worker_bad: int, why: str = "", rpc=None):
    """All-reduce (max) the status word ``[trainer's bad index + 1, a worker's bad index + 1]``; raise
    :class:`TransferAborted` on every rank if either is set. The trainer watches ``rpc`` (its ``update_weights``
    future) meanwhile: an engine that rejected the round outright would leave this waiting until the timeout."""
    from torch._C._distributed_c10d import ReduceOp

    word = torch.tensor([trainer_bad + 1, worker_bad + 1], dtype=torch.int64)
    work = group.allreduce([word], op=ReduceOp.MAX)
    _watch(work.is_completed, rpc, "the engines rejected the weight update")
    work.wait()
    trainer_bad, worker_bad = int(word[0]) - 1, int(word[1]) - 1
    if trainer_bad >= 0:
        at = names[trainer_bad] if trainer_bad < len(names) else "<past the last parameter>"
        raise TransferAborted(f"weight update aborted at {at!r}: the trainer's source disagrees with it{why}")
    if worker_bad >= 0:
        raise TransferAborted(f"weight update aborted at {names[worker_bad]!r}: an engine failed to load it{why}")


# ---------------------------------------------------------------------------------------------- worker side
class GlooWeightTransferEngine(wt.WeightTransferEngine[GlooWeightTransferInitInfo, GlooWeightTransferUpdateInfo]):
    """Worker side: joins the gloo group, receives each bucket and loads it under vLLM's layerwise reload."""

    init_info_cls = GlooWeightTransferInitInfo
    update_info_cls = GlooWeightTransferUpdateInfo
    group: ProcessGroup | None = None

    def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:
        # unique across data-parallel replicas and TP/PP ranks, as vLLM's nccl_common.worker_init_process_group has it
        pc = self.parallel_config
        self.group = open_group(init_info, init_info.rank_offset + pc.data_parallel_index * pc.world_size + pc.rank)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        try:
            self.receive_weights(self.parse_update_info(update_info))
            if torch.accelerator.is_available():  # as vLLM's base engine: the next step sees the new weights
                torch.accelerator.synchronize()
        except Exception:
            # vLLM's worker will not call finish_weight_update after a failed update: finalize here, so that no
            # layer stays on the meta device (layers not loaded yet keep their previous weights)
            self.finish_weight_update()
            raise

    def receive_weights(self, update_info: GlooWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialized: call init_weight_transfer_engine first")
        from vllm.distributed.weight_transfer.packed_tensor import unpack_tensor
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        info, failed, why = update_info, -1, ""
        with disable_mtp_completeness_check():
            for b in range(len(info.bucket_ends)):
                _status(self.group, info.names, -1, failed, why)
                idx = info.bucket(b)
                buf = torch.empty(sum(info.nbytes(i) for i in idx), dtype=torch.uint8)
                self.group.broadcast(buf, root=0).wait()
                names, shapes = info.names[idx.start : idx.stop], info.shapes[idx.start : idx.stop]
                dtypes, sizes = [getattr(torch, info.dtype_names[i]) for i in idx], [info.nbytes(i) for i in idx]
                try:  # views into the buffer, reinterpreted with the declared dtypes; load_weights copies them
                    self.model.load_weights(unpack_tensor(buf.to(self.device), names, shapes, dtypes, sizes))
                except Exception as e:  # reported to every rank at the next status word
                    failed, why = idx[0], f" ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
            _status(self.group, info.names, -1, failed, why)

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.shutdown()
            self.group = None


# ---------------------------------------------------------------------------------------------- trainer side
class GlooTrainerWeightTransferEngine(wt.TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side: rank 0 of the gloo group; replays its ``WeightSource`` every :meth:`send_weights`.

    After each send :attr:`last_stats` holds ``{"bytes", "buckets", "params", "seconds"}`` (payload bytes and the
    whole round trip's wall time); :meth:`send` returns them."""

    init_info_cls = GlooTrainerInitInfo
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    group: ProcessGroup | None = None
    last_stats: ClassVar[dict[str, float]] = {}  # replaced per instance by each send

    @classmethod
    def trainer_init(
        cls, init_info: GlooTrainerInitInfo, *, client: wt.VLLMWeightSyncClient, source: wt.WeightSource | None = None
    ) -> Self:
        if source is None:
            raise ValueError("gloo trainer weight transfer requires a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        engine.bucket_bytes = init_info.bucket_bytes
        if not engine.is_sender:
            return engine
        # the workers follow the single sender (a multi-engine client shifts rank_offset per engine)
        keys = ("master_address", "master_port", "world_size", "timeout_s")
        worker_info = GlooWeightTransferInitInfo(rank_offset=1, **{k: getattr(init_info, k) for k in keys})
        opened: dict[str, Any] = {}

        def _open() -> None:
            try:
                opened["group"] = open_group(init_info, 0)
            except BaseException as e:
                opened["error"] = e

        # both ends block until the rendezvous completes: the engines' RPC on a side thread as vLLM's NCCL engine
        # does, this end on a daemon thread, so that an engine that cannot join fails the call now, not at the timeout
        exe, opener = ThreadPoolExecutor(max_workers=1), threading.Thread(target=_open, daemon=True)
        with _keep_stdout():
            try:
                rpc = exe.submit(client.init_weight_transfer_engine, asdict(worker_info))
                opener.start()
                _watch(lambda: not opener.is_alive(), rpc, "the engines failed to join the gloo weight-transfer group")
            finally:
                exe.shutdown(wait=False)
        if "error" in opened:
            raise opened["error"]
        rpc.result()
        engine.group = opened["group"]
        return engine

    def send(self) -> dict[str, float]:
        """:meth:`send_weights`, returning its stats."""
        self.send_weights()
        return dict(self.last_stats)

    def send_weights(self) -> None:
        assert self.source is not None
        t0 = time.perf_counter()
        meta = self.source.metadata()
        if not self.is_sender:  # only replays the iteration (a collective for sharded sources)
            for _ in self.source:
                pass
            return
        if self.group is None:
            raise RuntimeError("trainer_init() must run before send_weights()")
        info = GlooWeightTransferUpdateInfo.plan(meta, self.bucket_bytes)
        self.client.start_weight_update()
        exe = ThreadPoolExecutor(max_workers=1)
        try:
            # the engines receive inside update_weights: it must run while this thread broadcasts
            rpc = exe.submit(self.client.update_weights, asdict(info))
            try:
                sent = self._broadcast(info, meta, rpc)
            except TransferAborted:
                with contextlib.suppress(Exception):  # the engines abort at the same status word: let them finish
                    rpc.result()
                raise
            rpc.result()
        finally:
            exe.shutdown(wait=False)  # never join an RPC that may be stuck in a collective this side has left
        self.client.finish_weight_update()
        seconds = time.perf_counter() - t0
        self.last_stats = {"bytes": sent, "buckets": len(info.bucket_ends), "params": len(meta), "seconds": seconds}

    def _broadcast(self, info: GlooWeightTransferUpdateInfo, meta: list[wt.ParamMeta], rpc: Future) -> int:
        assert self.group is not None and self.source is not None
        it, sent = iter(self.source), 0
        for b in range(len(info.bucket_ends)):
            bad, why, packed = _pack(it, meta, info.bucket(b))
            _status(self.group, info.names, bad, -1, why, rpc)
            self.group.broadcast(packed, root=0).wait()
            sent += packed.numel()
        extra = next(it, None)
        why = f" (it yielded an extra {extra[0]!r})" if extra is not None else ""
        _status(self.group, info.names, len(meta) if extra is not None else -1, -1, why, rpc)
        return sent


def _pack(it: Iterator[tuple[str, torch.Tensor]], meta: list[wt.ParamMeta], idx: range) -> tuple[int, str, Any]:
    """(-1, "", the bucket's tensors as one CPU ``uint8`` buffer), or (bad index, why, None) where the source
    disagrees with ``meta`` (which the engines sized their buffers from)."""
    parts: list[torch.Tensor] = []
    for i in idx:
        m, item = meta[i], next(it, None)
        if item is None:
            return i, " (the source ended early)", None
        name, t = item
        if name != m.name or t.dtype != m.dtype or tuple(t.shape) != tuple(m.shape):
            return i, f" (declared {m.dtype} {tuple(m.shape)}, got {name!r} {t.dtype} {tuple(t.shape)})", None
        # bytes-exact: the engines reinterpret the same bytes with the declared dtype and shape
        parts.append(t.detach().contiguous().view(-1).view(torch.uint8))
    # packed on the learner's device, then one host copy of the bucket (gloo sends CPU tensors)
    return -1, "", torch.cat(parts).cpu()


# ---------------------------------------------------------------------------------------------- registration
def register() -> None:
    """Register ``gloo`` in vLLM's worker and trainer factories (idempotent). Must run in every vLLM worker
    process before its model loads; importing this module does it."""
    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, GlooTrainerWeightTransferEngine)


class GlooTransport(Transport):
    """``gloo`` (rlvr_temp.weights.base): registered here, init info with a TCP rendezvous the sender opens."""

    name = BACKEND

    def register(self) -> None:
        register()

    def init_info(self, world_size: int, rank: int, bucket_bytes: int) -> GlooTrainerInitInfo:
        return GlooTrainerInitInfo(**rendezvous(world_size), rank=rank, bucket_bytes=bucket_bytes)


register()
