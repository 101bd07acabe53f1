"""Checkpoints that make a run resumable exactly, written atomically.

A checkpoint is a directory ``<run>/checkpoints/step_<N>/`` (N = steps completed) holding:

* ``policy.safetensors`` — the trainable weights (the LoRA adapter, or all weights for ``learner.mode=full``);
* ``learner.pt`` — optimizer, LR scheduler, learner step and torch RNG;
* ``trainer.pt`` — step counter, prompt-stream position (epoch, cursor, seed), python / numpy / torch RNG
  states, every rollout worker's temperature state (entropy windows), the metrics offset;
* ``config.yaml`` — the resolved config, with its hash;
* ``manifest.json`` — written last: the file list with sizes, the step and the config hash.

It is first written into a hidden temporary directory, every file flushed and fsynced, then renamed into place;
then ``<run>/checkpoints/latest`` (a one-line pointer) is replaced atomically. A crash at any point leaves the
previous checkpoints untouched; a directory without a valid manifest is incomplete and is skipped on resume
with a warning. Only the last ``checkpoint.keep`` checkpoints are kept. Dynamic sampling keeps no buffer
between steps (surplus informative groups are dropped, as in verl's DAPO recipe), so none is saved.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rlvr_temp.config import RunConfig
from rlvr_temp.utils import atomic_write_text, flatten, fsync_dir

log = logging.getLogger("rlvr_temp.checkpoint")

#: Config keys that may change between a run and its resumption (they do not change the experiment).
SAFE_KEYS = (
    "trainer.total_steps",
    "trainer.resume",
    "trainer.name",
    "trainer.run_dir",
    "checkpoint.",
    "logging.",
    "ray.",
    "rollout.dump",
    "reward.num_workers",
)


class ResumeError(RuntimeError):
    """A checkpoint cannot be used to resume this run (missing, corrupt, or a different experiment)."""


def _flush(path: Path) -> None:
    with path.open("rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    learner_state: dict[str, Any],
    trainer_state: dict[str, Any],
    config: RunConfig,
    keep: int = 2,
) -> Path:
    """Write ``step_<step>`` atomically, point ``latest`` at it, prune old ones; return its path."""
    from safetensors.torch import save_file

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    trainable = {k: v.contiguous() for k, v in learner_state["trainable"].items()}
    save_file(trainable, str(tmp / "policy.safetensors"))
    learner_rest = {k: v for k, v in learner_state.items() if k != "trainable"}
    torch.save(learner_rest, tmp / "learner.pt")
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "config.yaml").write_text(f"# resolved config, hash {config.hash()}\n" + config.to_yaml())
    files = ["policy.safetensors", "learner.pt", "trainer.pt", "config.yaml"]
    for name in files:
        _flush(tmp / name)
    manifest = {"step": step, "config_hash": config.hash(), "files": {n: (tmp / n).stat().st_size for n in files}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _flush(tmp / "manifest.json")
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(root)
    atomic_write_text(root / "latest", final.name + "\n")
    fsync_dir(root)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def is_complete(path: str | Path) -> bool:
    """True when the manifest exists and every file it lists has the recorded size."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        return all((path / n).stat().st_size == size for n, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.glob("step_*")):
        if is_complete(p):
            found.append(p)
        else:
            log.warning("skipping incomplete or corrupt checkpoint %s", p)
    return found


def find_resume(run_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from: ``never`` -> None; a path -> it (must be complete); ``auto`` -> the one
    ``latest`` names if complete, else the newest complete one, else None."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not is_complete(path):
            raise ResumeError(f"trainer.resume={resume}: not a complete checkpoint directory")
        return path
    root = checkpoints_dir(run_dir)
    latest = root / "latest"
    if latest.is_file():
        named = root / latest.read_text().strip()
        if is_complete(named):
            return named
        log.warning("checkpoint %s named by 'latest' is incomplete; looking for an older one", named)
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint: ``learner_state``, ``trainer_state``, ``config`` (dict), ``step``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not is_complete(path):
        raise ResumeError(f"{path}: incomplete or corrupt checkpoint")
    learner_state = torch.load(path / "learner.pt", weights_only=False)
    learner_state["trainable"] = load_file(str(path / "policy.safetensors"))
    trainer_state = torch.load(path / "trainer.pt", weights_only=False)
    config = yaml.safe_load((path / "config.yaml").read_text())
    manifest = json.loads((path / "manifest.json").read_text())
    return {
        "learner_state": learner_state,
        "trainer_state": trainer_state,
        "config": config,
        "step": int(manifest["step"]),
    }


def changed_experiment_keys(saved: dict[str, Any], current: RunConfig) -> list[str]:
    """Keys that differ between a checkpoint's config and the current one, safe keys excepted."""
    a, b = flatten(saved), flatten(current.to_dict())
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not any(k == s or k.startswith(s) for s in SAFE_KEYS)]


def check_compatible(saved: dict[str, Any], current: RunConfig, where: str | Path) -> None:
    """Refuse to resume a checkpoint of a different experiment, naming the keys that changed."""
    changed = changed_experiment_keys(saved, current)
    if changed:
        a, b = flatten(saved), flatten(current.to_dict())
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:6])
        raise ResumeError(
            f"{where}: the config changes the experiment ({detail}); resume with the original values, "
            "or start a new run directory (trainer.resume=never)"
        )
