"""The runs that ``rlvr-temp compare`` reads, and the arms it groups them into. Runs in the process of the
``compare`` command (or of ``rlvr-temp demo`` after training); reads files only.

A path given to ``compare`` is a run directory (``metrics.jsonl``, ``config.yaml``, ``eval/step_*.json``), a sweep
directory (``sweep.json``, written by rlvr_temp.driver.sweep: its runs live at ``<out>/<recipe>/seed<k>``), or a
directory of run directories (``rlvr-temp demo``'s ``runs/demo/<arm>``). A sweep's runs that have not finished a
step are left out with a note, so a sweep in progress can be compared.

Arms: ``group_by`` (a dotted config key such as ``temperature.mode``) when given; else ``trainer.name``, else the
run directory's name; either with a seed suffix stripped (``_seed<k>``, ``-seed<k>``, ``_s<k>``, ``-s<k>``; a
directory named ``seed<k>`` takes its parent's name). Config differences leave out the settings of temperature
modes a run does not use (``temperature.token.*`` of a ``fixed`` run). Left out: runs on remote storage (paths are
local).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rlvr_temp.metrics import read_metrics
from rlvr_temp.utils import flatten

#: the manifest a sweep writes in its ``--out`` (rlvr_temp.driver.sweep.MANIFEST; the driver is not imported here)
SWEEP_MANIFEST = "sweep.json"
#: sections of ``temperature`` that only some modes read (``base``, ``logprobs`` and ``schedule``: every mode)
MODE_SECTIONS = ("token", "mixture", "learned")
_SAFE_DIFF_SKIP = ("trainer.run_dir", "trainer.name", "trainer.resume", "logging.", "checkpoint.")
_SEED_SUFFIX = re.compile(r"[_-](?:seed|s)\d+$")
_SEED_DIR = re.compile(r"^seed\d+$")


# ------------------------------------------------------------------------------------------------- loading
def load_run(path: str | Path) -> dict[str, Any]:
    """A run's metrics rows and resolved config. Raises ``FileNotFoundError`` with a clear message."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    rows = read_metrics(path)
    if not rows:
        raise FileNotFoundError(f"{path}: metrics.jsonl is empty (no step finished yet)")
    cfg_file = path / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
    return {"path": path, "rows": rows, "config": flatten(cfg or {})}


def load_runs(paths: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """The runs that ``paths`` name (run, sweep or run-collection directories, see the module docstring), in order,
    and notes on the runs left out. Raises ``FileNotFoundError`` when a path names no run with a finished step."""
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    for path in map(Path, paths):
        if (path / "metrics.jsonl").is_file() or not path.is_dir():
            runs.append(load_run(path))
        elif (path / SWEEP_MANIFEST).is_file():
            found, left_out = sweep_runs(path)
            runs += [load_run(p) for p in found]
            notes += left_out
        elif (path / "config.yaml").is_file() or not (found := run_collection(path)):
            runs.append(load_run(path))  # a run that has not finished a step: load_run says so
        else:
            runs += [load_run(p) for p in found]
    return runs, notes


def sweep_runs(sweep_dir: Path) -> tuple[list[Path], list[str]]:
    """The run directories of the sweep in ``sweep_dir`` that have finished a step, in the manifest's order, and
    one note per run left out."""
    manifest = sweep_dir / SWEEP_MANIFEST
    try:
        planned = json.loads(manifest.read_text(encoding="utf-8"))["runs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FileNotFoundError(f"{manifest}: unreadable sweep manifest ({exc})") from None
    found, notes = [], []
    for run in planned:
        # the manifest's run_dir is relative to where the sweep ran; <sweep>/<recipe>/seed<k> is where it lives
        candidates = [sweep_dir / str(run.get("arm")) / f"seed{run.get('seed')}", Path(str(run.get("run_dir")))]
        done = next((c for c in candidates if _has_rows(c)), None)
        if done is None:
            notes.append(f"`{run.get('arm')}/seed{run.get('seed')}` ({run.get('status')}): no step finished, left out")
        else:
            found.append(done)
    if not found:
        raise FileNotFoundError(f"{sweep_dir}: a sweep of {len(planned)} runs, none of which has finished a step yet")
    return found, notes


def run_collection(path: Path) -> list[Path]:
    """Run directories (with a ``metrics.jsonl``) up to two levels below ``path``, sorted by path."""
    return sorted(p.parent for pattern in ("*/metrics.jsonl", "*/*/metrics.jsonl") for p in path.glob(pattern))


def _has_rows(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and bool(read_metrics(path))


def eval_files(run_dir: str | Path) -> dict[int, Path]:
    """Step -> ``eval/step_<N>.json`` of a run's held-out evaluations."""
    out = {}
    for path in (Path(run_dir) / "eval").glob("step_*.json"):
        try:
            out[int(path.stem.split("_", 1)[1])] = path
        except ValueError:
            continue
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------- config keys
@functools.cache
def mode_sections(mode: str | None) -> frozenset[str] | None:
    """The :data:`MODE_SECTIONS` that temperature mode ``mode`` reads; None for a mode not registered here."""
    from rlvr_temp.temperature.strategy import MODES, LearnedTemperature  # torch: only when a config has a mode

    cls = MODES.get(mode) if mode is not None else None
    if cls is None:
        return None
    used = {"token": cls.token_rule, "mixture": cls.mixture, "learned": issubclass(cls, LearnedTemperature)}
    return frozenset(s for s, on in used.items() if on)


def key_matters(run: dict[str, Any], key: str) -> bool:
    """Whether config key ``key`` affects ``run``: ``temperature.<section>.*`` only in the modes that read it."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "temperature" or parts[1] not in MODE_SECTIONS:
        return True
    mode = run["config"].get("temperature.mode")
    used = mode_sections(mode if isinstance(mode, str) else None)
    return used is None or parts[1] in used


def config_differences(runs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose values differ between the runs and that matter to at least one of them (run directory,
    logging, and the settings of temperature modes that no run uses, excluded)."""
    keys = sorted(set().union(*(r["config"] for r in runs)))
    diff = []
    for k in keys:
        if k.startswith(_SAFE_DIFF_SKIP):
            continue
        values = {repr(r["config"].get(k)) for r in runs}
        if len(values) > 1 and any(key_matters(r, k) for r in runs):
            diff.append(k)
    return diff


def run_labels(runs: list[dict[str, Any]]) -> list[str]:
    """One label per run: ``trainer.name``, else its first config differences (those that matter to it), else the
    directory name; seeds of one arm told apart."""
    diff = config_differences(runs)
    labels = []
    for r in runs:
        name = r["config"].get("trainer.name")
        if not name and diff and len(runs) > 1:
            mine = [k for k in diff if key_matters(r, k)][:3]
            name = ", ".join(f"{k.split('.')[-1]}={r['config'].get(k)}" for k in mine)
        labels.append(name or r["path"].name)
    original = list(labels)
    for i, (label, run) in enumerate(zip(original, runs)):  # the seeds of one arm: tell them apart
        if original.count(label) > 1 and run_seed(run) is not None and f"seed={run_seed(run)}" not in label:
            labels[i] = f"{label}, seed={run_seed(run)}"
    return labels


# ------------------------------------------------------------------------------------------------- arms
def strip_seed(name: str) -> str:
    """``fixed_seed1``, ``fixed-seed1``, ``fixed_s1``, ``fixed-s1`` -> ``fixed``; other names unchanged."""
    return _SEED_SUFFIX.sub("", name) or name


def arm_name(run: dict[str, Any], group_by: str | None = None) -> str:
    """The arm a run belongs to: ``str(config[group_by])`` when ``group_by`` is given (``<unset>`` if the run's
    config lacks the key); else ``trainer.name``, else the run directory's name (its parent's for a directory
    named ``seed<k>``), with a seed suffix stripped."""
    if group_by:
        value = run["config"].get(group_by, "<unset>")
        return str(value).lower() if isinstance(value, bool) else str(value)
    name = run["config"].get("trainer.name")
    if name:
        return strip_seed(str(name))
    path = Path(run["path"]).resolve()
    if _SEED_DIR.match(path.name) and path.parent.name:
        return path.parent.name
    return strip_seed(path.name)


def run_seed(run: dict[str, Any]) -> int | None:
    seed = run["config"].get("trainer.seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def group_runs(runs: list[dict[str, Any]], group_by: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Arm name -> its runs (arms in order of first appearance; runs sorted by ``trainer.seed``)."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        arms.setdefault(arm_name(run, group_by), []).append(run)
    for members in arms.values():
        members.sort(key=lambda r: (run_seed(r) is None, run_seed(r) or 0, str(r["path"])))
    return arms
