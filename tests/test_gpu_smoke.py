"""scripts/gpu_smoke.py --small on the CPU: the command a lent GPU machine runs (docs/benchmarks.md, "GPU smoke
test") works end to end here, with every check of group 1 reported and group 2 (vLLM) SKIPPED with a reason.

The script runs in a subprocess with CUDA hidden, so this tests its CPU path whatever the machine: everything but the
no-host-synchronisation part of processor_math (which needs CUDA; its timing is still measured) must PASS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUP1 = ["import", "nf4_lora_grads", "learner_step_memory", "logprobs_fp64", "processor_math", "checkpoint_cpu"]
GROUP2 = [
    "vllm_engine_v1",
    "vllm_engine_v2",
    "records_aligned",
    "rollout_vs_transformers_logprobs",
    "rollout_throughput",
    "weight_transfer",
    "trainer_step",
]


def test_gpu_smoke_small_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--small", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    checks = {c["name"]: c for c in report["checks"]}

    assert [c["name"] for c in report["checks"] if c["group"] == 1] == GROUP1
    assert all(checks[n]["status"] in ("PASS", "SKIPPED") for n in GROUP1), [checks[n] for n in GROUP1]
    for name in GROUP1:
        if name != "processor_math":
            assert checks[name]["status"] == "PASS", checks[name]
    assert checks["import"]["metrics"]["vllm_or_ray_loaded"] == "no"
    nf4 = checks["nf4_lora_grads"]["metrics"]
    assert nf4["cosine"] >= 0.99 and nf4["linear4bit_modules"] > 0 and nf4["lora_tensors"] > 0
    step = checks["learner_step_memory"]["metrics"]
    assert step["tokens_per_s"] > 0 and step["process_peak_rss_gib"] > 0
    assert checks["logprobs_fp64"]["metrics"]["max_abs_diff"] <= 1e-4
    proc_math = checks["processor_math"]
    assert proc_math["status"] == "SKIPPED" and proc_math["reason"].startswith("no CUDA")
    assert proc_math["metrics"]["ms_per_step_median"] > 0  # the timing is measured even without CUDA
    ckpt = checks["checkpoint_cpu"]["metrics"]
    assert ckpt["tensors"] > 0 and ckpt["not_on_cpu"] == 0 and ckpt["not_on_cpu_after_load"] == 0

    assert [c["name"] for c in report["checks"] if c["group"] == 2] == GROUP2
    for name in GROUP2:
        assert checks[name]["status"] == "SKIPPED" and checks[name]["reason"], checks[name]
    assert report["summary"]["FAIL"] == 0 and report["summary"]["exit_code"] == 0

    lines = proc.stdout.splitlines()
    for name in GROUP1 + GROUP2:
        assert any(line.startswith(("[1] ", "[2] ")) and f" {name} " in line for line in lines), name
    assert sum("SKIPPED(" in line for line in lines) == len(GROUP2) + 1
    assert lines[-1].startswith("gpu_smoke: ") and " 0 FAIL" in lines[-1]
