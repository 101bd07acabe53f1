"""Checkpoint files: atomic layout, interrupted saves, checksums and damaged checkpoints, auto-resume choice, config
compatibility. (Saves killed by signals: test_checkpoint_kill.py.)"""

from __future__ import annotations

import hashlib
import json
import logging
import os

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
    verify_checkpoint,
)
from rlvr_temp.config.schema import load_config


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


def test_manifest_lists_sizes_and_checksums(tmp_path):
    path = _save(tmp_path, 1, load_config())
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"policy.safetensors", "learner.pt", "trainer.pt", "config.yaml"}
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert verify_checkpoint(path) is None


def _flip(path, offset, n=4):
    """Invert ``n`` bytes in place: same size, different content."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        data = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def _warnings(caplog):
    return [r for r in caplog.records if r.name == "rlvr_temp.checkpoint" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("damage", "name", "why"),
    [("flip", "policy.safetensors", "SHA-256"), ("truncate", "trainer.pt", "truncated")],
)
def test_damaged_newest_checkpoint_skipped_with_one_warning(tmp_path, caplog, damage, name, why):
    cfg = load_config()
    good = _save(tmp_path, 2, cfg)
    bad = _save(tmp_path, 4, cfg)
    target = bad / name
    if damage == "flip":  # the last bytes are tensor data: the file still parses, only the checksum tells
        _flip(target, target.stat().st_size - 4)
    else:
        os.truncate(target, target.stat().st_size // 2)
    caplog.set_level(logging.DEBUG, logger="rlvr_temp.checkpoint")
    assert find_resume(tmp_path, "auto") == good  # `latest` names the damaged one
    (warning,) = _warnings(caplog)
    msg = warning.getMessage()
    assert "\n" not in msg and str(bad) in msg and name in msg and why in msg
    assert load_checkpoint(good)["step"] == 2
    with pytest.raises(ResumeError, match=f"{name}.*{why}"):
        load_checkpoint(bad)
    with pytest.raises(ResumeError, match=f"not a complete checkpoint directory.*{name}"):
        find_resume(tmp_path, str(bad))
    assert not any(p.name.startswith(".") for p in bad.parent.iterdir())


def test_previous_version_manifest_with_sizes_only_still_loads(tmp_path, caplog):
    path = _save(tmp_path, 3, load_config())
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"] = {n: e["size"] for n, e in manifest["files"].items()}  # the previous version's format
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
    caplog.set_level(logging.DEBUG, logger="rlvr_temp.checkpoint")
    assert find_resume(tmp_path, "auto") == path
    assert load_checkpoint(path)["step"] == 3
    assert _warnings(caplog) == []
    with (path / "learner.pt").open("ab") as fh:  # sizes are still checked
        fh.write(b"x")
    assert "learner.pt is" in verify_checkpoint(path)
    assert find_resume(tmp_path, "auto") is None
    assert len(_warnings(caplog)) == 1


def test_leftovers_ignored_then_removed_by_next_save(tmp_path, caplog):
    cfg = load_config()
    good = _save(tmp_path, 2, cfg)
    root = tmp_path / "checkpoints"
    leftovers = [
        ".step_00000004.tmp-k3j2",
        ".step_00000002.old-4242",
        ".step_00000001.del-4242",
        ".tmp-step_00000004-9",
    ]
    for name in leftovers:  # atomic_dir's temporary / moved-aside dirs, pruning's, the previous version's
        (root / name).mkdir()
        (root / name / "policy.safetensors").write_bytes(b"\0" * 10)
    (root / ".latest.abcd.tmp").write_text("step_00000004\n")  # atomic_write's temporary file
    caplog.set_level(logging.DEBUG, logger="rlvr_temp.checkpoint")
    assert find_resume(tmp_path, "auto") == good
    assert complete_checkpoints(tmp_path) == [good]
    assert _warnings(caplog) == []
    new = _save(tmp_path, 4, cfg)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004"]
    assert find_resume(tmp_path, "auto") == new


def test_resaving_a_step_replaces_it_and_a_failed_resave_keeps_it(tmp_path, monkeypatch):
    cfg = load_config()
    _save(tmp_path, 2, cfg)
    path = _save(tmp_path, 4, cfg)
    learner, trainer = _states(4)
    learner["trainable"]["lora_A"] += 1.0
    assert save_checkpoint(tmp_path, 4, learner_state=learner, trainer_state=trainer, config=cfg) == path
    assert find_resume(tmp_path, "auto") == path
    assert torch.equal(load_checkpoint(path)["learner_state"]["trainable"]["lora_A"], torch.full((2, 3), 5.0))

    import rlvr_temp.checkpoint as ckmod

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. a second SIGTERM in the middle of the save

    monkeypatch.setattr(ckmod, "_write_files", fail)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 4, cfg)
    assert find_resume(tmp_path, "auto") == path
    assert torch.equal(load_checkpoint(path)["learner_state"]["trainable"]["lora_A"], torch.full((2, 3), 5.0))
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())


def test_interrupted_replacement_leaves_latest_on_a_complete_checkpoint(tmp_path, monkeypatch, caplog):
    """Re-saving the step `latest` names: atomic_dir moves the old directory aside, then renames the new one in.
    Interrupted between the two, `latest` names the previous checkpoint, not the missing one."""
    cfg = load_config()
    prev = _save(tmp_path, 2, cfg)
    path = _save(tmp_path, 4, cfg)
    rename = os.rename

    def interrupted(src, dst):
        if ".tmp-" in str(src) and str(dst) == str(path):
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 4, cfg)
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert not path.exists() and (root / "latest").read_text().strip() == prev.name
    caplog.set_level(logging.DEBUG, logger="rlvr_temp.checkpoint")
    assert find_resume(tmp_path, "auto") == prev
    assert _warnings(caplog) == []
    assert _save(tmp_path, 4, cfg) == path  # the next save removes the moved-aside directory
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004"]


def test_prune_keeps_the_new_checkpoint_beside_a_later_run(tmp_path):
    cfg = load_config()
    for step in (10, 20):  # an earlier run in the same directory, then one started over (trainer.resume=never)
        _save(tmp_path, step, cfg, keep=2)
    for step in (1, 2, 3):
        _save(tmp_path, step, cfg, keep=2)
    names = [p.name for p in complete_checkpoints(tmp_path)]
    assert names == ["step_00000002", "step_00000003", "step_00000010", "step_00000020"]
    assert find_resume(tmp_path, "auto").name == "step_00000003"


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
