"""Checkpoints that make a run resumable exactly, written atomically and verified before they are trusted.

A checkpoint is a directory ``<run>/checkpoints/step_<N>/`` (N = steps completed) holding:

* ``policy.safetensors`` — the trainable weights (the LoRA adapter, or all weights for ``learner.mode=full``);
* ``learner.pt`` — optimizer, LR scheduler, learner step and torch RNG;
* ``learner_rank<k>.pt`` (k = 1 .. ``resources.learner_ranks`` - 1, data-parallel runs only) — rank k's own part,
  its step and torch RNG (the weights and optimizer state are the same on every rank: rank 0's files hold them).
  Each rank writes its part from its own actor (:func:`write_learner_part`) into the checkpoint's temporary
  directory, so with more than one rank the run directory must be visible to the learner ranks' nodes;
* ``trainer.pt`` — step counter, prompt-stream position (epoch, cursor, seed), python / numpy / torch RNG
  states, every rollout worker's temperature state (entropy windows), the metrics offset;
* ``config.yaml`` — the resolved config, with its hash;
* ``manifest.json`` — written last: every file's size and SHA-256, the step and the config hash.

It is written into a hidden temporary directory (:func:`rlvr_temp.utils.atomic_dir`), every file fsynced, and
renamed into place; then ``<run>/checkpoints/latest`` (a one-line pointer) is replaced atomically. A process
killed at any point (SIGKILL, or SIGTERM / SIGINT raising in the middle) leaves the previous checkpoints, and a
``latest`` that names a complete one (or no ``latest`` when there is none); the hidden leftovers are ignored, and
removed by the next save.

A checkpoint is trusted only when :func:`verify_checkpoint` finds nothing wrong: the manifest lists the four files
and each has the recorded size and checksum (a checkpoint written before checksums were recorded, with sizes only,
is checked by size); the manifest's ``learner_ranks`` names the rank files that must be there, and a resume with
another number of ranks is refused in one line. On ``trainer.resume=auto`` a damaged newest checkpoint is skipped
with one warning naming the directory, the file and the fault, and the previous complete one is used. Only the last
``checkpoint.keep`` checkpoints are kept. Dynamic sampling keeps no buffer between steps (surplus informative groups
are dropped, as in verl's DAPO recipe), so none is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from rlvr_temp.config.schema import RunConfig
from rlvr_temp.utils import atomic_dir, atomic_write_text, flatten, fsync_dir

log = logging.getLogger("rlvr_temp.checkpoint")

#: Config keys that may change between a run and its resumption (they do not change the experiment).
SAFE_KEYS = (
    "trainer.total_steps",
    "trainer.resume",
    "trainer.name",
    "trainer.run_dir",
    "trainer.max_retries",
    "checkpoint.",
    "logging.",
    "ray.",
    "resources.",  # where the actors run; a different resources.learner_ranks is refused by check_compatible
    "rollout.dump",
    "reward.num_workers",
)

#: The files of a checkpoint, besides ``manifest.json``.
FILES = ("policy.safetensors", "learner.pt", "trainer.pt", "config.yaml")
_STEP_DIR = re.compile(r"step_\d+")
# hidden leftovers of interrupted saves: atomic_dir's ``.step_N.tmp-*`` / ``.step_N.old-<pid>``, pruning's
# ``.step_N.del-<pid>``, atomic_write's ``.latest.*.tmp``, and the previous version's ``.tmp-step_N-<pid>``
_LEFTOVER = re.compile(r"\.(step_\d+\.(tmp|old|del)-.*|tmp-step_\d+-.*|latest\..*\.tmp)")
_CHUNK = 1 << 20
_RANK_FILE = re.compile(r"learner_rank\d+\.pt")


def rank_file(rank: int) -> str:
    """The file holding data-parallel rank ``rank``'s own part (rank 0's is ``learner.pt``)."""
    return "learner.pt" if rank == 0 else f"learner_rank{rank}.pt"


def write_learner_part(directory: str | Path, rank: int, world: int, state: dict[str, Any]) -> list[str]:
    """Write learner rank ``rank``'s part of ``state`` (:meth:`Learner.get_state`, CPU tensors) into ``directory``,
    each file fsynced; returns the names. Rank 0 writes the trainable weights (``policy.safetensors``) and
    ``learner.pt``; another rank only its step and RNG (its weights and optimizer state equal rank 0's)."""
    d = Path(directory)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in state["trainable"].items()}, str(d / "policy.safetensors"))
        torch.save({**{k: v for k, v in state.items() if k != "trainable"}, "world": world}, d / "learner.pt")
        names = ["policy.safetensors", "learner.pt"]
    else:
        torch.save({"step": state["step"], "torch_rng": state["torch_rng"], "world": world}, d / rank_file(rank))
        names = [rank_file(rank)]
    for name in names:
        _fsync(d / name)
    return names


def read_learner_part(directory: str | Path, rank: int, world: int) -> dict[str, Any]:
    """Learner rank ``rank``'s state from a checkpoint directory (rank 0's weights and optimizer, its own RNG);
    :class:`ResumeError` when the checkpoint was written by another number of ranks."""
    d = Path(directory)
    state = torch.load(d / "learner.pt", weights_only=False)
    saved = int(state.pop("world", 1))
    if saved != world:
        raise ResumeError(
            f"{d}: written by {saved} learner rank(s), this run has {world}; resume with resources.learner_ranks="
            f"{saved} (or start a new run directory)"
        )
    state["trainable"] = load_file(str(d / "policy.safetensors"))
    if rank:
        own = torch.load(d / rank_file(rank), weights_only=False)
        state["step"], state["torch_rng"] = own["step"], own["torch_rng"]
    return state


class ResumeError(RuntimeError):
    """A checkpoint cannot be used to resume this run (missing, corrupt, or a different experiment)."""


def _fsync(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (checkpoints may be many GB)."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    learner_state: dict[str, Any] | Callable[[Path], list[str]],
    trainer_state: dict[str, Any],
    config: RunConfig,
    keep: int = 2,
) -> Path:
    """Write ``step_<step>`` atomically, point ``latest`` at it, prune old ones; return its path. ``learner_state``:
    the learner's state (written as rank 0 of 1), or a callable that writes every rank's part into the directory
    it is given and returns the files' names (``LearnerGroup.write_parts``)."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = root / f"step_{step:08d}"
    with atomic_dir(final) as tmp:
        _write_files(tmp, step, learner_state, trainer_state, config)
        if final.exists() and _latest_name(root) == final.name:
            _point_latest_before(root, step)
    atomic_write_text(root / "latest", final.name + "\n")
    fsync_dir(root)
    _prune(root, step, keep)
    return final


def _write_files(
    tmp: Path,
    step: int,
    learner_state: dict[str, Any] | Callable[[Path], list[str]],
    trainer_state: dict[str, Any],
    config: RunConfig,
) -> None:
    """The checkpoint's files, each fsynced, then the manifest of their sizes and checksums, then the directory."""
    write = learner_state if callable(learner_state) else lambda d: write_learner_part(d, 0, 1, learner_state)
    learner_files = write(tmp)
    torch.save(trainer_state, tmp / "trainer.pt")
    _fsync(tmp / "trainer.pt")
    atomic_write_text(tmp / "config.yaml", f"# resolved config, hash {config.hash()}\n" + config.to_yaml())
    names = [*FILES, *sorted(set(learner_files) - set(FILES))]
    files = {n: {"size": (tmp / n).stat().st_size, "sha256": sha256_file(tmp / n)} for n in names}
    ranks = 1 + sum(1 for n in names if _RANK_FILE.fullmatch(n))
    manifest = {"step": step, "config_hash": config.hash(), "learner_ranks": ranks, "files": files}
    atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
    fsync_dir(tmp)


def _point_latest_before(root: Path, step: int) -> None:
    """Point ``latest`` at the newest complete checkpoint before ``step`` (or remove it): done just before the
    checkpoint it names is replaced (a finished run started again), which atomic_dir moves aside for a moment."""
    older = [p for p in _step_dirs(root) if _step_of(p) < step and verify_checkpoint(p, checksums=False) is None]
    if older:
        atomic_write_text(root / "latest", older[-1].name + "\n")
    else:
        (root / "latest").unlink(missing_ok=True)
    fsync_dir(root)


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _step_dirs(root: Path) -> list[Path]:
    """``step_<N>`` directories, oldest first (hidden leftovers of interrupted saves are not among them)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()), key=_step_of)


def _latest_name(root: Path) -> str | None:
    try:
        name = (root / "latest").read_text().strip()
    except OSError:
        return None
    return name if _STEP_DIR.fullmatch(name) else None


def _remove(path: Path) -> None:
    """Delete a checkpoint: renamed to a hidden name first, so that a kill part-way leaves no half checkpoint."""
    hidden = path.parent / f".{path.name}.del-{os.getpid()}"
    try:
        os.rename(path, hidden)
    except OSError:
        hidden = path
    shutil.rmtree(hidden, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Remove what interrupted saves left behind (hidden temporary / moved-aside directories and files)."""
    for p in root.iterdir():
        if _LEFTOVER.fullmatch(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted save", p)


def _prune(root: Path, step: int, keep: int) -> None:
    """Keep the checkpoint of ``step`` and the ``keep - 1`` newest complete ones before it; delete older ones.
    Checkpoints of later steps (an earlier run in the same directory, ``trainer.resume=never``) are left alone."""
    kept = 1
    for p in reversed([p for p in _step_dirs(root) if _step_of(p) < step]):
        if kept < keep and verify_checkpoint(p, checksums=False) is None:
            kept += 1
        else:
            _remove(p)


def _entry(value: Any) -> tuple[int, str | None]:
    """A manifest's file entry as (size, sha256): ``{"size", "sha256"}``, or a bare size (written before checksums
    were recorded)."""
    size, digest = (value.get("size"), value.get("sha256")) if isinstance(value, dict) else (value, None)
    if not isinstance(size, int) or isinstance(size, bool) or not isinstance(digest, (str, type(None))):
        raise TypeError(f"bad file entry {value!r}")
    return size, digest


def verify_checkpoint(path: str | Path, *, checksums: bool = True) -> str | None:
    """None when ``path`` is a complete checkpoint, else what is wrong, naming the file (``"trainer.pt is 812 bytes,
    the manifest says 1604 (truncated)"``). Complete: the manifest lists every file, and each has its recorded size
    and (unless ``checksums=False``) SHA-256. A manifest without checksums (an older version's) is checked by size."""
    path = Path(path)
    if not path.is_dir():
        return "no such directory"
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        entries = {str(n): _entry(v) for n, v in manifest["files"].items()}
        int(manifest["step"])
    except FileNotFoundError:
        return "manifest.json is missing (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"manifest.json is unreadable ({type(exc).__name__}: {exc})"
    ranks = manifest.get("learner_ranks", 1) if isinstance(manifest, dict) else 1
    missing = [n for n in [*FILES, *(rank_file(k) for k in range(1, int(ranks)))] if n not in entries]
    if missing or any("/" in n or n.startswith(".") for n in entries):
        return f"manifest.json lists {sorted(entries)}, not the checkpoint's files {list(FILES)}"
    for name, (size, _) in entries.items():
        try:
            actual = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            how = "truncated" if actual < size else "longer than written"
            return f"{name} is {actual} bytes, the manifest says {size} ({how})"
    if not checksums:
        return None
    if all(digest is None for _, digest in entries.values()):
        log.debug("%s: manifest without checksums (an older version's); sizes checked", path)
    for name, (_, digest) in entries.items():
        if digest is None:
            continue
        try:
            actual_digest = sha256_file(path / name)
        except OSError as exc:
            return f"{name} is unreadable ({exc})"
        if actual_digest != digest:
            return f"{name} does not match its SHA-256 checksum (corrupt)"
    return None


def is_complete(path: str | Path) -> bool:
    """True when :func:`verify_checkpoint` finds nothing wrong (every file has its recorded size and checksum)."""
    return verify_checkpoint(path) is None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (each one verified; the others are named in a warning)."""
    found = []
    for p in _step_dirs(checkpoints_dir(run_dir)):
        problem = verify_checkpoint(p)
        if problem is None:
            found.append(p)
        else:
            log.warning("skipping checkpoint %s: %s", p, problem)
    return found


def find_resume(run_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from: ``never`` -> None; a path -> it (must be complete); ``auto`` -> the one
    ``latest`` names if complete, else the newest complete one, else None. Each checkpoint found unusable on the
    way is reported in one warning line (directory, file, fault); hidden leftovers of interrupted saves are
    ignored."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        problem = verify_checkpoint(path)
        if problem is not None:
            raise ResumeError(f"trainer.resume={resume}: not a complete checkpoint directory ({problem})")
        return path
    root = checkpoints_dir(run_dir)
    named = _latest_name(root)
    first = [root / named] if named else []
    for p in first + [p for p in reversed(_step_dirs(root)) if p.name != named]:
        problem = verify_checkpoint(p)
        if problem is None:
            return p
        log.warning("skipping checkpoint %s: %s; trying an older one", p, problem)
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (verified first): ``learner_state``, ``trainer_state``, ``config`` (dict), ``step``."""
    path = Path(path)
    problem = verify_checkpoint(path)
    if problem is not None:
        raise ResumeError(f"{path}: incomplete or corrupt checkpoint ({problem})")
    learner_state = torch.load(path / "learner.pt", weights_only=False)
    learner_state.pop("world", None)
    learner_state["trainable"] = load_file(str(path / "policy.safetensors"))
    trainer_state = torch.load(path / "trainer.pt", weights_only=False)
    config = yaml.safe_load((path / "config.yaml").read_text())
    manifest = json.loads((path / "manifest.json").read_text())
    return {
        "learner_state": learner_state,
        "trainer_state": trainer_state,
        "config": config,
        "step": int(manifest["step"]),
        "path": path,
        "learner_ranks": int(manifest.get("learner_ranks", 1)),
    }


def changed_experiment_keys(saved: dict[str, Any], current: RunConfig) -> list[str]:
    """Keys that differ between a checkpoint's config and the current one, safe keys excepted."""
    a, b = flatten(saved), flatten(current.to_dict())
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not any(k == s or k.startswith(s) for s in SAFE_KEYS)]


def check_compatible(saved: dict[str, Any], current: RunConfig, where: str | Path) -> None:
    """Refuse to resume a checkpoint of a different experiment, naming the keys that changed, or one written by
    another number of learner ranks (``resources.learner_ranks``)."""
    saved_ranks = int(((saved.get("resources") or {}).get("learner_ranks")) or 1)
    if saved_ranks != current.resources.learner_ranks:
        raise ResumeError(
            f"{where}: written by {saved_ranks} learner rank(s), this run has {current.resources.learner_ranks}; "
            f"resume with resources.learner_ranks={saved_ranks} (or start a new run directory)"
        )
    changed = changed_experiment_keys(saved, current)
    if changed:
        a, b = flatten(saved), flatten(current.to_dict())
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:6])
        raise ResumeError(
            f"{where}: the config changes the experiment ({detail}); resume with the original values, "
            "or start a new run directory (trainer.resume=never)"
        )
