"""Checkpoint files: atomic layout, interrupted saves, auto-resume choice, config compatibility."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr_temp.checkpoint import (
    ResumeError,
    changed_experiment_keys,
    check_compatible,
    complete_checkpoints,
    find_resume,
    load_checkpoint,
    save_checkpoint,
)
from rlvr_temp.config import load_config


def _states(step: int):
    learner = {
        "trainable": {"lora_A": torch.full((2, 3), float(step)), "lora_B": torch.zeros(3, 2)},
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {"last_epoch": step},
        "step": step,
        "torch_rng": torch.get_rng_state(),
    }
    trainer = {"step": step, "stream": {"epoch": 0, "cursor": step}, "rng": None, "temperature": [{}]}
    return learner, trainer


def _save(run, step, cfg, keep=3):
    learner, trainer = _states(step)
    return save_checkpoint(run, step, learner_state=learner, trainer_state=trainer, config=cfg, keep=keep)


def test_save_load_round_trip_and_latest_pointer(tmp_path):
    cfg = load_config()
    path = _save(tmp_path, 4, cfg)
    assert path.name == "step_00000004"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == path.name
    ck = load_checkpoint(path)
    assert ck["step"] == 4 and ck["trainer_state"]["stream"]["cursor"] == 4
    assert torch.equal(ck["learner_state"]["trainable"]["lora_A"], torch.full((2, 3), 4.0))
    assert ck["config"] == cfg.to_dict()
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())


def test_keep_prunes_oldest(tmp_path):
    cfg = load_config()
    for step in (2, 4, 6, 8):
        _save(tmp_path, step, cfg, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000006", "step_00000008"]


def test_interrupted_save_leaves_previous_usable(tmp_path):
    cfg = load_config()
    good = _save(tmp_path, 2, cfg)
    root = tmp_path / "checkpoints"
    # a crash half-way through a save: the temporary directory is left behind, without a manifest
    half = root / ".tmp-step_00000004-999"
    half.mkdir()
    (half / "policy.safetensors").write_bytes(b"\0" * 10)
    assert find_resume(tmp_path, "auto") == good
    # a crash after the rename but with a damaged file, and `latest` already pointing at it
    bad = _save(tmp_path, 4, cfg)
    with (bad / "trainer.pt").open("ab") as fh:
        fh.write(b"garbage")
    assert find_resume(tmp_path, "auto") == good
    (root / "latest").unlink()
    assert find_resume(tmp_path, "auto") == good
    with pytest.raises(ResumeError, match="not a complete checkpoint"):
        find_resume(tmp_path, str(bad))
    assert find_resume(tmp_path, "never") is None
    assert find_resume(tmp_path / "nowhere", "auto") is None


def test_manifest_lists_sizes(tmp_path):
    path = _save(tmp_path, 1, load_config())
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"policy.safetensors", "learner.pt", "trainer.pt", "config.yaml"}


def test_changed_experiment_refused_safe_keys_allowed(tmp_path):
    saved = load_config(None, ["trainer.total_steps=10"]).to_dict()
    ok = load_config(None, ["trainer.total_steps=50", "logging.tensorboard=false", "checkpoint.every=5"])
    assert changed_experiment_keys(saved, ok) == []
    check_compatible(saved, ok, "ck")
    bad = load_config(None, ["temperature.mode=token", "learner.lr=0.1"])
    assert changed_experiment_keys(saved, bad) == ["learner.lr", "temperature.mode"]
    with pytest.raises(ResumeError, match=r"learner\.lr.*temperature\.mode"):
        check_compatible(saved, bad, "ck")
    model = load_config(None, ["model.path=/other"])
    with pytest.raises(ResumeError, match=r"model\.path"):
        check_compatible(saved, model, "ck")


def test_lr_schedule_values_and_picklable_scheduler_state():
    import functools
    import pickle

    from rlvr_temp.utils import lr_factor

    f = functools.partial(lr_factor, warmup_steps=4, total_steps=12, decay="cosine")
    assert [f(k) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)
    assert lr_factor(100, warmup_steps=0) == 1.0
    assert lr_factor(30, warmup_steps=10, total_steps=50, decay="cosine", floor=0.1) == pytest.approx(0.55)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)  # the learner's scheduler: a partial of a plain function
    state = sched.state_dict()
    # nothing but the partial's (empty) attribute dict travels into checkpoints: no actor or method wrappers
    assert state["lr_lambdas"] == [{}]
    pickle.dumps(state)
