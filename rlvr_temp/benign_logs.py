"""Library log lines that need no action, dropped by logger and message prefix in every process of the project.

Importing the package (``rlvr_temp/__init__``) installs the filters, so they are in place before any of the
project's modules imports the library that logs them: the driver, every Ray actor and every vLLM worker process
import the package first (an actor's class, vLLM's ``worker_extension_cls``). A filter drops only its logger's
records whose message starts with its text; everything else those libraries log still shows. Installing a filter
imports nothing but :mod:`logging`, so ``rlvr-temp validate`` and the other light commands stay light.
"""

from __future__ import annotations

import logging

#: logger name -> start of the message dropped from it
BENIGN_WARNINGS = {
    # bitsandbytes, on CPUs with AVX512-BF16 only: importing it tries to fetch a fused 4-bit GEMM from the Hugging
    # Face hub (the `kernels` package, "kernels-community/quantization-bitsandbytes"), which can never succeed
    # offline, and warns when it fails at every start of every process. The fallback is bitsandbytes' own kernel,
    # and that kernel only runs on weights repacked for inference, which the learner turns off for correct LoRA
    # gradients (rlvr_temp.learner.policy.disable_cpu_4bit_repacking; docs/stack.md, which also measures both paths).
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    # vLLM, at every in-place weight reload: the rotary cos/sin cache is computed, not loaded, and is kept as it
    # was (greedy outputs after a sync equal a fresh engine's, tests/e2e/test_rollout_e2e.py).
    "vllm.model_executor.model_loader.reload.layerwise": "RotaryEmbedding: Failed to load weights",
    # vLLM's CPU worker refuses torch.set_num_threads: it pins its own OpenMP threads (docs/stack.md).
    "vllm.v1.worker.cpu_worker": "CPU backend doesn't allow to use `torch.set_num_threads`",
    # vLLM's CPU build at import, in every process that imports it (the engine's and, through vLLM's weight-transfer
    # API, the learner's): PyPI's `triton` has no CPU backend and `triton-cpu` is not published, so vLLM runs its
    # own CPU kernels, as it does on every CPU install (the engine's throughput in docs/benchmarks.md is with them).
    "vllm.triton_utils.importing": "Triton is installed, but doesn't include CPU backend",
    "vllm.platforms.cpu": "Triton is not installed. triton-cpu is expected on x86 CPUs",
}


class DropPrefix(logging.Filter):
    """Drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def drop_benign_warnings() -> None:
    """Filter the :data:`BENIGN_WARNINGS` out of their loggers in this process (idempotent)."""
    for name, prefix in BENIGN_WARNINGS.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, DropPrefix) and f.prefix == prefix for f in log.filters):
            log.addFilter(DropPrefix(prefix))
