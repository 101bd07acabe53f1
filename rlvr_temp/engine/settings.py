"""What the rollout worker (rlvr_temp.engine.worker) settles before it starts a vLLM engine, from the recipe: vLLM's
log level, a CPU engine's OpenMP thread binding, and the LoRA rank slot of an engine serving the policy's adapters.
Runs in the rollout worker's process; imports no vLLM."""

from __future__ import annotations

import logging
import os


def quiet_vllm_logs(level: str | None) -> None:
    """Set the level of vLLM's logs (None keeps ``VLLM_LOGGING_LEVEL``'s), so the trainer's progress bar stays
    readable. (vLLM's benign warnings are dropped in every process of the project: rlvr_temp.benign_logs.)"""
    if level:
        # vLLM re-applies its logging config from VLLM_LOGGING_LEVEL when an engine starts: set both
        os.environ["VLLM_LOGGING_LEVEL"] = level.upper()
        logging.getLogger("vllm").setLevel(level.upper())


def lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds a LoRA of rank ``rank`` (it takes set values only)."""
    slots = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
    fits = [s for s in slots if s >= rank]
    if not fits:
        raise ValueError(f"learner.lora_r {rank} is above vLLM's largest LoRA rank ({slots[-1]})")
    return fits[0]


def cpu_thread_binding(tensor_parallel_size: int, threads: int | None = None, slot: int = 0) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for a CPU engine. One rank: ``threads`` cores of this process's, the
    ``slot``-th range of them (modulo how many ranges fit), or ``nobind`` (OpenMP threads float;
    ``OMP_NUM_THREADS``) without ``threads`` or with fewer cores. Several ranks: this process's cores split into
    equal groups, one per rank (vLLM's CPU worker binds each rank's threads to its group and refuses to start
    tensor parallelism unbound)."""
    cores = sorted(os.sched_getaffinity(0))
    if tensor_parallel_size == 1:
        if not threads or threads > len(cores):
            return "nobind"
        k = slot % (len(cores) // threads)
        return ",".join(map(str, cores[k * threads : (k + 1) * threads]))
    if len(cores) < tensor_parallel_size:
        raise ValueError(
            f"rollout.engine.tensor_parallel_size={tensor_parallel_size} needs as many CPU cores, this process may "
            f"use {len(cores)}"
        )
    per = len(cores) // tensor_parallel_size
    return "|".join(",".join(map(str, cores[r * per : (r + 1) * per])) for r in range(tensor_parallel_size))
