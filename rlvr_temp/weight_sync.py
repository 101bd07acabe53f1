"""Weight sync from the learner to the vLLM engines through vLLM's weight-transfer API, with a ``gloo`` backend.

vLLM 0.32 moves trainer weights with a pair of engines: a worker-side ``WeightTransferEngine`` built inside every
vLLM worker (``LLM(weight_transfer_config=WeightTransferConfig(backend=...))``) and a trainer-side
``TrainerWeightTransferEngine`` that drives the round trip through a ``VLLMWeightSyncClient`` (``start_weight_update``
→ ``update_weights`` concurrently with the trainer's broadcasts → ``finish_weight_update``). vLLM ships ``nccl``
(GPU to GPU) and ``ipc`` (a shared GPU); this module adds ``gloo`` (CPU tensors over TCP), registered in both of
vLLM's factories by :func:`register`, so CPU tests run the very calls a GPU run makes with only the backend name
changed. The group is a stateless gloo process group (vLLM's ``stateless_init_torch_distributed_process_group``):
the default process group the workers use for tensor parallelism is never touched.

Wire protocol (one round): the update info lists every parameter's name, dtype and shape plus the bucket
boundaries; per bucket both sides run one tiny all-reduce (a status word: lets either side abort the round with an
error naming the parameter instead of hanging) and the trainer broadcasts the bucket's tensors packed into one flat
``uint8`` buffer (bytes-exact, any dtype); each worker unpacks the bucket (vLLM's ``unpack_tensor``) and hands it to
``model.load_weights`` under vLLM's layerwise reload. vLLM's packed NCCL producer/consumer are not used: they run
on CUDA streams.

:class:`PolicySource` yields the learner's policy as Hugging Face-named tensors one module at a time on the
learner's device (LoRA deltas merged into the dequantised NF4 / plain base), the same pairs as
``Learner.export_weights`` without a host copy of the model. :class:`RayEnginesClient` fans the four control calls
out to rollout-worker actors; :class:`LocalLLMClient` drives an in-process ``vllm.LLM``.

Left out: multi-rank trainers beyond "rank 0 sends, the others iterate" (no FSDP-specific gather), pipelining of
packing with sending (buckets go one at a time), GPU-direct transfer (use ``nccl`` / ``ipc`` for that), and
recovery of a broken group (after a failed round tear the engines down and re-init).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

if TYPE_CHECKING:
    from torch._C._distributed_c10d import ProcessGroup
    from vllm.config.parallel import ParallelConfig

BACKEND = "gloo"
DEFAULT_BUCKET_BYTES = 64 << 20


# ---------------------------------------------------------------------------------------------- wire info
@dataclass(kw_only=True)
class GlooWeightTransferInitInfo(WeightTransferInitInfo):
    """Worker-side init info: the TCP rendezvous, this engine's first rank in the group and the wire params."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 600.0


@dataclass
class GlooWeightTransferUpdateInfo(WeightTransferUpdateInfo):
    """One round: every parameter's name / dtype / shape in send order, and ``bucket_ends[b]`` = one past the last
    parameter of bucket ``b`` (so bucket ``b`` is ``names[bucket_ends[b-1]:bucket_ends[b]]``)."""

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

    def bucket(self, b: int) -> range:
        return range(self.bucket_ends[b - 1] if b else 0, self.bucket_ends[b])

    def nbytes(self, i: int) -> int:
        return _nbytes(self.shapes[i], getattr(torch, self.dtype_names[i]))


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer-side init info. The sender is rank 0 of a group of ``world_size`` = 1 + every engine's TP size;
    ``bucket_bytes`` and ``timeout_s`` are propagated to the workers at the handshake."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 600.0


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * dtype.itemsize


def plan_buckets(meta: Sequence[ParamMeta], bucket_bytes: int) -> list[int]:
    """Bucket ends over ``meta`` in order: consecutive tensors up to ``bucket_bytes`` (a larger tensor alone)."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    ends: list[int] = []
    size = 0
    for i, m in enumerate(meta):
        n = _nbytes(m.shape, m.dtype)
        if i and size and size + n > bucket_bytes:
            ends.append(i)
            size = 0
        size += n
    if meta:
        ends.append(len(meta))
    return ends


def update_info_for(meta: Sequence[ParamMeta], bucket_bytes: int) -> GlooWeightTransferUpdateInfo:
    return GlooWeightTransferUpdateInfo(
        names=[m.name for m in meta],
        dtype_names=[str(m.dtype).removeprefix("torch.") for m in meta],
        shapes=[list(m.shape) for m in meta],
        bucket_ends=plan_buckets(meta, bucket_bytes),
    )


# ---------------------------------------------------------------------------------------------- the group
def open_group(address: str, port: int, rank: int, world_size: int, timeout_s: float) -> ProcessGroup:
    """A gloo group outside torch.distributed's global state (the default group is left alone)."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(
        address, port, rank, world_size, backend="gloo", timeout=timedelta(seconds=timeout_s)
    )


@contextlib.contextmanager
def _keep_stdout() -> Iterator[None]:
    """Restore fd 1 afterwards. vLLM creates gloo groups inside ``suppress_stdout`` (fd 1 to /dev/null and back):
    when an in-process engine and the trainer rendezvous in two threads of one process, the second saves the
    first's /dev/null as "stdout" and restores it last, silencing the process for good."""
    saved = os.dup(1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def worker_rank(init_info: GlooWeightTransferInitInfo, parallel_config: ParallelConfig) -> int:
    """This worker's rank in the transfer group, computed as vLLM's ``nccl_common.worker_init_process_group`` does:
    unique across data-parallel replicas and TP/PP ranks, after ``rank_offset``."""
    dp_rank = parallel_config.data_parallel_index
    return init_info.rank_offset + dp_rank * parallel_config.world_size + parallel_config.rank


class TransferAborted(ValueError):
    """A round was aborted at a parameter; raised on the trainer and on every worker (one line)."""


def _status(group: ProcessGroup, trainer_bad: int, worker_bad: int, pending: Future | None = None) -> list[int]:
    """All-reduce (max) the status word ``[trainer's bad index + 1, a worker's bad index + 1]`` (0 = fine).

    While waiting, the trainer watches ``pending`` (its ``update_weights`` RPC): a worker that rejected the round
    before joining would otherwise leave this collective waiting until the group's timeout."""
    from torch._C._distributed_c10d import ReduceOp

    word = torch.tensor([trainer_bad + 1, worker_bad + 1], dtype=torch.int64)
    work = group.allreduce([word], op=ReduceOp.MAX)
    while pending is not None and not work.is_completed():
        if pending.done() and pending.exception() is not None:
            raise RuntimeError(f"the engines rejected the weight update: {pending.exception()}")
        time.sleep(0.001)
    work.wait()
    return [int(word[0]) - 1, int(word[1]) - 1]


def _abort_message(names: Sequence[str], status: list[int], detail: str = "") -> str:
    trainer_bad, worker_bad = status
    if trainer_bad >= 0:
        what = names[trainer_bad] if trainer_bad < len(names) else "<past the last parameter>"
        return f"weight update aborted at {what!r}: the trainer's source disagrees with the update info{detail}"
    return f"weight update aborted at {names[worker_bad]!r}: an engine failed to load it{detail}"


# ---------------------------------------------------------------------------------------------- worker side
class GlooWeightTransferEngine(WeightTransferEngine[GlooWeightTransferInitInfo, GlooWeightTransferUpdateInfo]):
    """Worker side: joins the gloo group, receives each bucket and loads it under vLLM's layerwise reload."""

    init_info_cls = GlooWeightTransferInitInfo
    update_info_cls = GlooWeightTransferUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group: ProcessGroup | None = None

    def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:
        rank = worker_rank(init_info, self.parallel_config)
        self.group = open_group(
            init_info.master_address, init_info.master_port, rank, init_info.world_size, init_info.timeout_s
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        try:
            typed = self.parse_update_info(update_info)
        except ValueError:
            self.finish_weight_update()  # no layer may stay on the meta device: the worker will not finish
            raise
        self.receive_weights(typed)

    def receive_weights(self, update_info: GlooWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialized: call init_weight_transfer_engine first")
        from vllm.distributed.weight_transfer.packed_tensor import unpack_tensor
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        info, failed, error = update_info, -1, ""
        with disable_mtp_completeness_check():
            for b in range(len(info.bucket_ends) + 1):
                status = _status(self.group, -1, failed)
                if max(status) >= 0:
                    # the worker will not get finish_weight_update: finalize here so that no layer is left on the
                    # meta device (layers not yet loaded keep their previous weights)
                    self.finish_weight_update()
                    raise TransferAborted(_abort_message(info.names, status, error))
                if b == len(info.bucket_ends):
                    return
                idx = info.bucket(b)
                buf = torch.empty(sum(info.nbytes(i) for i in idx), dtype=torch.uint8)
                self.group.broadcast(buf, root=0).wait()
                try:
                    # views into `buf` (vLLM's unpacker reinterprets the bytes); load_weights copies them
                    self.model.load_weights(
                        unpack_tensor(
                            buf.to(self.device),
                            [info.names[i] for i in idx],
                            [info.shapes[i] for i in idx],
                            [getattr(torch, info.dtype_names[i]) for i in idx],
                            [info.nbytes(i) for i in idx],
                        )
                    )
                except Exception as e:  # reported to every rank at the next status word
                    failed, error = idx[0], f" ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.shutdown()
            self.group = None


# ---------------------------------------------------------------------------------------------- trainer side
class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side: rank 0 of the gloo group; replays its :class:`WeightSource` every :meth:`send_weights`.

    After each send :attr:`last_stats` holds ``{"bytes", "buckets", "params", "seconds"}`` (payload bytes and the
    whole round trip's wall time); :meth:`send` returns them."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(
        self,
        *,
        client: VLLMWeightSyncClient,
        source: WeightSource,
        is_sender: bool = True,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.bucket_bytes = bucket_bytes
        self.group: ProcessGroup | None = None
        self.last_stats: dict[str, float] = {}

    @classmethod
    def trainer_init(
        cls, init_info: GlooTrainerInitInfo, *, client: VLLMWeightSyncClient, source: WeightSource | None = None
    ) -> Self:
        if source is None:
            raise ValueError("gloo trainer weight transfer requires a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, bucket_bytes=init_info.bucket_bytes)
        if not engine.is_sender:
            return engine
        worker_info = GlooWeightTransferInitInfo(
            master_address=init_info.master_address,
            master_port=init_info.master_port,
            rank_offset=1,  # the workers follow the single sender (a multi-engine client shifts it per engine)
            world_size=init_info.world_size,
            bucket_bytes=init_info.bucket_bytes,
            timeout_s=init_info.timeout_s,
        )
        # the workers block in init_weight_transfer_engine until the rendezvous completes: run it on a side thread
        # while this rank opens its end
        with _keep_stdout(), ThreadPoolExecutor(max_workers=1) as exe:
            future = exe.submit(client.init_weight_transfer_engine, asdict(worker_info))
            engine.group = open_group(
                init_info.master_address, init_info.master_port, 0, init_info.world_size, init_info.timeout_s
            )
            future.result()
        return engine

    def send(self) -> dict[str, float]:
        """:meth:`send_weights` and its stats."""
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
        info = update_info_for(meta, self.bucket_bytes)
        self.client.start_weight_update()
        exe = ThreadPoolExecutor(max_workers=1)
        try:
            # the engines receive inside update_weights: it must run while this thread broadcasts
            future = exe.submit(self.client.update_weights, asdict(info))
            try:
                sent = self._broadcast(info, meta, future)
            except TransferAborted:
                with contextlib.suppress(Exception):  # the engines abort at the same status word: let them finish
                    future.result()
                raise
            future.result()
        finally:
            # never join a worker RPC that may be stuck in a collective this side has left
            exe.shutdown(wait=False)
        self.client.finish_weight_update()
        seconds = time.perf_counter() - t0
        self.last_stats = {"bytes": sent, "buckets": len(info.bucket_ends), "params": len(meta), "seconds": seconds}

    def _broadcast(self, info: GlooWeightTransferUpdateInfo, meta: list[ParamMeta], future: Future) -> int:
        assert self.group is not None and self.source is not None
        it = iter(self.source)
        sent = 0
        for b in range(len(info.bucket_ends)):
            bad, detail, packed = _pack(it, meta, info.bucket(b))
            status = _status(self.group, bad, -1, future)
            if max(status) >= 0:
                raise TransferAborted(_abort_message(info.names, status, detail))
            assert packed is not None
            self.group.broadcast(packed, root=0).wait()
            sent += packed.numel()
        extra = next(it, None)
        detail = f" (it yielded an extra {extra[0]!r})" if extra is not None else ""
        status = _status(self.group, len(meta) if extra is not None else -1, -1, future)
        if max(status) >= 0:
            raise TransferAborted(_abort_message(info.names, status, detail))
        return sent


def _pack(
    it: Iterator[tuple[str, torch.Tensor]], meta: list[ParamMeta], idx: range
) -> tuple[int, str, torch.Tensor | None]:
    """(-1, "", the bucket's tensors as one CPU ``uint8`` buffer), or (bad index, why, None) when the source
    disagrees with ``meta`` (the engines sized their buffers from it)."""
    parts: list[torch.Tensor] = []
    for i in idx:
        m = meta[i]
        item = next(it, None)
        if item is None:
            return i, " (the source ended early)", None
        name, t = item
        if name != m.name or t.dtype != m.dtype or tuple(t.shape) != tuple(m.shape):
            return i, f" (declared {m.dtype} {tuple(m.shape)}, got {name!r} {t.dtype} {tuple(t.shape)})", None
        # bytes-exact: the worker reinterprets the same bytes with the declared dtype and shape
        parts.append(t.detach().contiguous().view(-1).view(torch.uint8))
    # packed on the learner's device, then one host copy of the bucket (gloo sends CPU tensors)
    return -1, "", torch.cat(parts).cpu()


# ---------------------------------------------------------------------------------------------- the learner's weights
def _skipped(name: str) -> bool:
    """peft's wrapper internals (the wrapped base layer, adapters, dropouts): not exported by name."""
    return name.endswith(".base_layer") or ".lora_" in name


class PolicySource(WeightSource):
    """The learner's policy as ``(HF name, tensor)`` pairs in ``dtype``, computed one module at a time on the
    policy's device — the same pairs as ``Learner.export_weights`` (``full``: the state dict; ``lora`` / ``qlora``:
    the dequantised base plus ``scaling * B @ A``; then the TTM head's parameters as ``ttm_head.*``)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, *, ttm_head: torch.nn.Module | None = None):
        from peft import PeftModel

        self.model, self.dtype, self.ttm_head = model, dtype, ttm_head
        self.peft = isinstance(model, PeftModel)

    @classmethod
    def from_learner(cls, learner: Any) -> PolicySource:
        """Over a :class:`rlvr_temp.learner.Learner`'s policy, export dtype and TTM head."""
        return cls(learner.model, learner.export_dtype, ttm_head=learner.ttm_head)

    def _entries(self) -> Iterator[tuple[str, tuple[int, ...], Any]]:
        """``(name, shape, thunk)``; the thunk computes the tensor (so metadata() never materialises anything)."""
        if not self.peft:
            for name, t in self.model.state_dict().items():
                yield name, tuple(t.shape), lambda t=t: t.detach().to(self.dtype)
        else:
            import bitsandbytes as bnb
            from peft.tuners.lora import LoraLayer

            for name, module in self.model.get_base_model().named_modules():
                if _skipped(name):
                    continue
                base = getattr(module, "base_layer", module)
                lora = isinstance(module, LoraLayer) and "default" in module.lora_A
                if isinstance(base, bnb.nn.Linear4bit):
                    shape = tuple(base.weight.quant_state.shape)
                    yield f"{name}.weight", shape, lambda m=module, b=base, lo=lora: self._weight(m, b, lo)
                    if base.bias is not None:
                        yield f"{name}.bias", tuple(base.bias.shape), lambda p=base.bias: p.detach().to(self.dtype)
                    continue
                for pname, p in base.named_parameters(recurse=False):
                    key = f"{name}.{pname}" if name else pname
                    merge = lora and pname == "weight"
                    yield key, tuple(p.shape), lambda m=module, b=base, p=p, mg=merge: self._weight(m, b, mg, p)
        for name, p in self.ttm_head.named_parameters() if self.ttm_head is not None else ():
            yield f"ttm_head.{name}", tuple(p.shape), lambda p=p: p.detach().to(self.dtype)

    @torch.no_grad()
    def _weight(self, module: Any, base: Any, merge: bool, param: torch.Tensor | None = None) -> torch.Tensor:
        if param is None:  # NF4: dequantised on the device it lives on
            from bitsandbytes.functional import dequantize_4bit

            w = dequantize_4bit(base.weight.data, base.weight.quant_state).to(self.dtype)
        else:
            w = param.detach().to(self.dtype)
        if not merge:
            return w
        a = module.lora_A["default"].weight.float()
        b = module.lora_B["default"].weight.float()
        # the same ops in the same order as Learner.export_weights (base in the export dtype, then fp32 merge)
        return (w.float() + (b @ a) * module.scaling["default"]).to(self.dtype)

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, self.dtype, shape) for name, shape, _ in self._entries()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, _, make in self._entries():
            yield name, make()


# ---------------------------------------------------------------------------------------------- clients
class RayEnginesClient:
    """``VLLMWeightSyncClient`` over rollout-worker Ray actors (each exposing ``init_weight_transfer_engine(dict)``,
    ``start_weight_update()``, ``update_weights(dict)``, ``finish_weight_update()``). Every call fans out to all
    workers and waits for all; engine ``k`` gets ``rank_offset`` 1 + the TP sizes of engines ``0..k-1``."""

    def __init__(self, workers: Sequence[Any], tp_sizes: Sequence[int]) -> None:
        if len(workers) != len(tp_sizes) or any(int(t) < 1 for t in tp_sizes):
            raise ValueError(f"{len(workers)} workers need as many TP sizes >= 1, got {list(tp_sizes)}")
        self.workers, self.tp_sizes = list(workers), [int(t) for t in tp_sizes]

    @property
    def world_size(self) -> int:
        """The transfer group's size: the trainer plus every engine's workers."""
        return 1 + sum(self.tp_sizes)

    def _all(self, method: str, *args: Any) -> None:
        import ray

        ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        import ray

        offsets = [1 + sum(self.tp_sizes[:k]) for k in range(len(self.workers))]
        refs = [
            w.init_weight_transfer_engine.remote({**init_info, "rank_offset": o}) for w, o in zip(self.workers, offsets)
        ]
        ray.get(refs)

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._all("update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")


class LocalLLMClient:
    """``VLLMWeightSyncClient`` over an in-process ``vllm.LLM`` (tests, benchmarks). ``rank_offset`` overrides the
    trainer's (for several local engines in one group). The prefix cache is reset after each update."""

    def __init__(self, llm: Any, rank_offset: int | None = None) -> None:
        self.llm, self.rank_offset = llm, rank_offset

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        if self.rank_offset is not None:
            init_info = {**init_info, "rank_offset": self.rank_offset}
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)
        self.llm.reset_prefix_cache()


# ---------------------------------------------------------------------------------------------- registration
def register() -> None:
    """Register ``gloo`` in vLLM's worker and trainer factories (idempotent). Must run in every vLLM worker
    process before its model loads; importing this module does it."""
    for factory, cls in (
        (WeightTransferEngineFactory, GlooWeightTransferEngine),
        (WeightTransferTrainerFactory, GlooTrainerWeightTransferEngine),
    ):
        loader = factory._registry.get(BACKEND)
        if loader is None:
            factory.register_engine(BACKEND, cls)
        elif loader().__qualname__ != cls.__qualname__:
            raise RuntimeError(f"weight transfer backend {BACKEND!r} is already registered as {loader()!r}")


class GlooWorkerExtension:
    """A ``worker_extension_cls`` (``"rlvr_temp.weight_sync.GlooWorkerExtension"``) whose import registers
    ``gloo`` in spawned vLLM worker processes before their model loads. Adds no methods."""


register()
