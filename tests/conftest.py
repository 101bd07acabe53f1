"""Shared test set-up: offline hubs, quiet Ray, and the embedded tiny model (built once, cached)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import pytest


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """Path of the embedded tiny model (built on first use, then reused from the cache).

    ``RLVR_TEMP_TEST_MODEL`` points the tests at another model directory instead.
    """
    from rlvr_temp.tiny_model import ensure_tiny_model

    if os.environ.get("RLVR_TEMP_TEST_MODEL"):
        return os.environ["RLVR_TEMP_TEST_MODEL"]
    return str(ensure_tiny_model())


@pytest.fixture(scope="module")
def ray_cluster():
    """A local two-CPU Ray cluster for one test module (the end-to-end tests' actors)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
