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
    from rlvr_temp.data.tiny_model import ensure_tiny_model

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


def the_error_line(stderr: str) -> str:
    """The CLI's one error line in ``stderr`` (``rlvr-temp: error: ...``), which must be its last line.

    The contract is the project's own message: one line, last. Lines a library prints at import (a warning that
    appears on some CPUs only, say) do not count here; tests/unit/core/test_benign_logs.py checks what a start
    prints."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("rlvr-temp: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-2000:]
    return errors[0]


@pytest.fixture
def error_line():
    """:func:`the_error_line` for tests that check the CLI's error output."""
    return the_error_line
