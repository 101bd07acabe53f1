"""Fail the install (not a user's first run) when a piece of the stack is missing or broken."""

from __future__ import annotations

import importlib
import sys

MODULES = [
    "rlvr_temp",  # first: importing it drops the libraries' benign warnings (rlvr_temp.benign_logs) before they load
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "bitsandbytes",
    "ray",
    "ray.dashboard.optional_deps",  # ray[default]: the dashboard that `ray job submit` talks to
    "datasets",
    "math_verify",
    "pydantic",
    "omegaconf",
    "matplotlib",
    "rich",
    "safetensors",
    "pyarrow",
    "vllm",
]


def main() -> int:
    bad = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:
            bad.append(f"{name}: {type(exc).__name__}: {exc}")
    try:  # the trap of PyPI's torchvision beside a +cpu torch (docs/stack.md)
        from transformers import Qwen2ForCausalLM  # noqa: F401
    except Exception as exc:
        bad.append(f"transformers.Qwen2ForCausalLM: {exc}")
    if bad:
        print("install check failed:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    import torch
    import vllm

    print(f"install ok: torch {torch.__version__}, vllm {vllm.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
