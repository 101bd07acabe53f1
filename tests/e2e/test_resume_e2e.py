"""Exact resume: a run killed with SIGKILL and resumed gives the same metrics and final weights as an
uninterrupted run (token mode with a global entropy window, across an epoch boundary); a changed experiment is
refused; the exported model loads in transformers and decodes like the run's policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# 10 training prompts, 4 per step: epochs end inside steps 2 and 4.
COMMON = [
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_response_len=24",
    "data.synthetic.n_train=10",
    "temperature.mode=token",
    "temperature.token.window=300",
    "temperature.token.t_low=0.8",
    "temperature.token.t_high=1.3",
    "checkpoint.every=1",
    "checkpoint.keep=10",
    "logging.progress=false",
    "logging.tensorboard=false",
    "algorithm.dynamic_sampling=false",
    "learner.mini_batch_size=8",
    "learner.micro_batch_size=8",
    "learner.lr=0.01",
    "learner.warmup_steps=0",
]


def _cmd(run_dir: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlvr_temp.cli",
        "train",
        str(ROOT / "recipes/demo/base.yaml"),
        *COMMON,
        f"trainer.run_dir={run_dir}",
        f"trainer.total_steps={steps}",
        *extra,
    ]


def _env(model: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RLVR_TEMP_TEST_MODEL": model})
    return env


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path):
    run = tmp_path_factory.mktemp("ref") / "run"
    cmd = _cmd(run, 4, f"model.path={tiny_model_path}")
    proc = subprocess.run(cmd, env=_env(tiny_model_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_sigkill_then_resume_is_exact(reference, tmp_path, tiny_model_path):
    run = tmp_path / "run"
    env = _env(tiny_model_path)
    # longer total (a safe key), killed while step 3 runs
    proc = subprocess.Popen(
        _cmd(run, 6, f"model.path={tiny_model_path}"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step_00000002":
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        _cmd(run, 4, f"model.path={tiny_model_path}"), env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert _rows(run) == _rows(reference)
    from safetensors.torch import load_file

    a = load_file(str(reference / "checkpoints" / "step_00000004" / "policy.safetensors"))
    b = load_file(str(run / "checkpoints" / "step_00000004" / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_changed_experiment_refused(reference, tiny_model_path, error_line):
    proc = subprocess.run(
        _cmd(reference, 4, f"model.path={tiny_model_path}", "temperature.token.t_high=1.5"),
        env=_env(tiny_model_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "temperature.token.t_high" in error_line(proc.stderr)


def test_export_loads_and_decodes_like_the_policy(reference, tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr_temp.checkpoint import load_checkpoint
    from rlvr_temp.config.schema import RunConfig
    from rlvr_temp.learner.export import export_run
    from rlvr_temp.learner.learner import Learner

    out = export_run(reference, tmp_path / "exported")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ck = load_checkpoint(reference / "checkpoints" / "step_00000004")
    policy = Learner(tiny_model_path, RunConfig.model_validate(ck["config"]))
    policy.set_state(ck["learner_state"])
    policy.model.eval()
    for prompt in ["Q: 12+7\nA:", "Q: 47+38\nA:", "Q: 3*4\nA:"]:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        kw = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": tok.pad_token_id}
        with torch.no_grad():
            a = model.generate(ids, **kw)
            b = policy.model.generate(input_ids=ids, **kw)
        assert a.tolist() == b.tolist()
