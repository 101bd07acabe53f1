"""The sections of a run's config that say where and how it executes: the rollout engines, the Ray cluster and the
placement of actors. Re-exported by :mod:`rlvr_temp.config.schema` (recipes and ``RunConfig`` are there)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlvr_temp.config.recipe import Section

__all__ = ["EngineConfig", "RayConfig", "ResourcesConfig"]


class EngineConfig(Section):
    enforce_eager: bool = Field(True, description="Disable CUDA graphs / compilation (faster start-up).")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM GPU memory share (GPU only).")
    kv_cache_gib: float = Field(
        1.0,
        gt=0,
        description="KV-cache size in GiB on CPU (`VLLM_CPU_KVCACHE_SPACE`); auto would take most RAM.",
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="vLLM tensor parallelism per rollout worker (GPUs, or CPU core groups: each rank gets an "
        "equal share of the worker's cores unless `VLLM_CPU_OMP_THREADS_BIND` is set).",
    )
    cpu_bind: bool = Field(
        True,
        description="CPU engines with `tensor_parallel_size: 1`: pin the engine's OpenMP threads to cores of their "
        "own (`VLLM_CPU_OMP_THREADS_BIND`; the worker's index picks a disjoint range of the node's cores where "
        "there are enough; about 20% faster decoding on 2 cores). `false` lets them float (several runs on one "
        "machine). Unused on GPUs or when `VLLM_CPU_OMP_THREADS_BIND` is set.",
    )
    multiprocess: bool = Field(
        True,
        description="vLLM's normal multiprocess mode: the engine core (and one worker per tensor-parallel rank) in "
        "their own processes, the temperature processor reached through `collective_rpc` (rlvr_temp.engine.extension). "
        "`false` runs the engine inside the rollout worker's process (TP 1 only; debugging).",
    )
    enable_prefix_caching: bool = Field(True, description="vLLM prefix caching (reset after each weight sync).")
    max_num_seqs: int = Field(256, ge=1, description="Maximum concurrent sequences in the engine.")
    weight_sync: Literal["auto", "gloo", "nccl", "ipc", "object_store"] = Field(
        "auto",
        description="How the learner's weights reach the engines after each step (docs/weight_sync.md): vLLM's "
        "weight-transfer engines, streamed layer by layer in buckets from the learner's device -- `gloo` (CPU), "
        "`nccl` (learner and engines on different GPUs), `ipc` (on the same GPU); `auto` picks one of those from "
        "the devices; `object_store`: one merged state dict through Ray's object store (the old path).",
    )
    sleep_mode: Literal["auto"] | bool = Field(
        "auto",
        description="vLLM sleep mode while the learner trains (as verl's colocated rollout): the engines discard "
        "their weights and KV cache (level 2: nothing is copied to the host, the sync resends every weight) before "
        "each update, then wake the weights, receive the sync and wake the KV cache. `auto`: on (true) for the "
        "`colocated` layout on GPUs; CUDA only.",
    )
    lora_updates: bool = Field(
        False,
        description="Send only the LoRA adapters after each update (vLLM LoRA adapters; 148 MB at 1.5B r=64 instead "
        "of the 3.1 GB merged model), after one sync of the learner's base (dequantised for `qlora`) whenever the "
        "transfer group forms. `lora` / `qlora` only; not with sleep mode (level 2 discards the base), "
        "`object_store` or the `learned` temperature mode. The run directory must be readable by the engines (one "
        "node, or shared storage): adapters go through `<run_dir>/adapters/`. Default false: colocated runs move "
        "merged weights GPU to GPU (ipc) at no cost in bytes, and an engine serving adapters decodes slower (docs/"
        'weight_sync.md, "LoRA-only updates").',
    )
    model_runner: Literal["v1", "v2"] = Field(
        "v1",
        description="vLLM model runner on CUDA: `v1` until the V2 processor has passed on a real CUDA install "
        "(vLLM 0.32 would pick V2 there); `v2` uses rlvr_temp.engine.processor_v2 (docs/cluster.md). CPU: v1 only.",
    )


class RayConfig(Section):
    address: str | None = Field(
        None,
        description="Ray cluster to join (`auto`, `ray://...`); None starts a local one (or RAY_ADDRESS).",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster (None: all).")
    rollout_cpus: float = Field(1.0, ge=0, description="CPUs reserved per rollout worker.")
    rollout_gpus: float = Field(0.0, ge=0, description="GPUs per rollout worker.")
    learner_cpus: float = Field(1.0, ge=0, description="CPUs reserved for the learner.")
    learner_gpus: float = Field(0.0, ge=0, description="GPUs for the learner.")
    max_restarts: int = Field(3, ge=0, description="How often Ray restarts a killed rollout worker or learner.")


class ResourcesConfig(Section):
    """Where the actors go (``rlvr_temp.driver.placement``, docs/cluster.md "Layouts") and how many learner ranks
    train."""

    layout: Literal["colocated", "split"] = Field(
        "colocated",
        description="`colocated`: each bundle holds one learner rank and its share of the engines, which take the "
        "bundle's CPUs/GPUs in turn; `split`: engines and learner ranks in separate bundles (`ray.*_cpus/_gpus`).",
    )
    learner_ranks: int = Field(1, ge=1, description="Data-parallel learner ranks (torch.distributed: gloo / nccl).")
    bundle_cpus: float | None = Field(
        None, gt=0, description="`colocated`: CPUs per bundle (None: `ray.learner_cpus` + its engines' `rollout_cpus`)."
    )
    bundle_gpus: float | None = Field(
        None, ge=0, description="`colocated`: GPUs per bundle (None: max of `ray.rollout_gpus`, `ray.learner_gpus`)."
    )
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy of the bundles."
    )
    timeout_s: float = Field(60.0, gt=0, le=600, description="Wait at most this long for the placement group.")
    dist_timeout_s: float = Field(
        600.0, gt=0, description="torch.distributed timeout of a collective (a dead rank fails the others after it)."
    )
