"""Prompt data: the bundled benchmark / training sets, file loaders and hub datasets, read into one table.

Runs in the driver (a run's training rows, ``rlvr-temp eval``'s problems). ``load_prompts`` returns a Hugging Face
``datasets.Dataset`` with string columns ``id``, ``question``, ``ground_truth`` (normalised by
:func:`rlvr_temp.reward.answers.normalize_ground_truth`), ``data_source`` and ``ground_truth_raw`` (as in the file),
from a bundled set (``BUNDLED``), a ``.jsonl`` / ``.json`` / ``.parquet`` file (field names auto-detected or given),
or a parquet file in verl's schema (``prompt`` chat list, ``reward_model.ground_truth``, ``data_source``), or a hub
dataset (``org/name[:config]``, :class:`HubDataset`: ``datasets.load_dataset`` and its cache, ``HF_DATASETS_CACHE``).
JSON is parsed here (exact row numbers in errors; a column's type may change from row to row); parquet and hub
datasets go through ``datasets``, offline unless the user set ``HF_DATASETS_OFFLINE`` (parquet's cache:
``$RLVR_TEMP_CACHE``, default ``~/.cache/rlvr_temp``). A hub dataset that is not cached while offline -> one line
naming the id and the cache directory. Prompt templates and the stream of batches are in rlvr_temp.data.prompts.

Left out: hub dataset revisions other than the default branch; streaming (``datasets``' ``streaming=True``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rlvr_temp.reward.answers import last_boxed, normalize_ground_truth

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
QUESTION_KEYS = ("question", "problem", "prompt", "query", "input")
ANSWER_KEYS = (
    "reward_model.ground_truth",
    "answer",
    "final_answer",
    "ground_truth",
    "gt_answer",
    "target",
    "solution",
)
ID_KEYS = ("id", "idx", "unique_id", "uid", "extra_info.index")
COLUMNS = ("id", "question", "ground_truth", "data_source", "ground_truth_raw")
OnMissing = Literal["error", "skip"]
#: a hub dataset: ``org/name`` with an optional ``:config``
HUB_DATASET = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")


class DataError(ValueError):
    """A data file is missing, unreadable, or has a row without a usable question or answer."""


@dataclass(frozen=True)
class BundledSet:
    """One data file shipped in ``rlvr_temp/data/bundled`` (see its README.md for origin, licence and sha256)."""

    path: str  # relative to BUNDLED_DIR
    rows: int  # rows returned by load_prompts (after skipping, where skip_missing)
    split: str  # "test" or "train"
    family: str  # groups the splits of one dataset, e.g. gsm8k / gsm8k_train
    question_key: str = "problem"
    answer_key: str = "answer"
    answer_from: Literal["field", "gsm8k", "last_boxed"] = "field"
    licence: str = "MIT"
    skip_missing: bool = False  # the file has rows without an answer; they are dropped

    @property
    def file(self) -> Path:
        """Absolute path of the bundled file."""
        return BUNDLED_DIR / self.path


_Q = "qwen25math_eval/"
_MAA = "MIT (repo); problems (c) MAA"
BUNDLED: dict[str, BundledSet] = {
    "aime24": BundledSet(_Q + "aime24_test.jsonl", 30, "test", "aime24", licence=_MAA),
    "aime25": BundledSet(_Q + "aime25_test_pr65.jsonl", 30, "test", "aime25", licence=_MAA),
    "amc23": BundledSet(_Q + "amc23_test.jsonl", 40, "test", "amc23", licence=_MAA),
    "math500": BundledSet("math500/test.jsonl", 500, "test", "math500"),
    "minerva": BundledSet(
        _Q + "minerva_math_test.jsonl",
        272,
        "test",
        "minerva",
        answer_key="solution",
        answer_from="last_boxed",
        licence="MIT (repo); MIT OCW text CC BY-NC-SA 4.0",
    ),
    "olympiadbench": BundledSet(
        _Q + "olympiadbench_test.jsonl",
        675,
        "test",
        "olympiadbench",
        question_key="question",
        answer_key="final_answer",
        licence="Apache-2.0 (OlympiadBench); repo MIT",
    ),
    "gsm8k": BundledSet("gsm8k/test.jsonl", 1319, "test", "gsm8k", "question", answer_from="gsm8k"),
    "gsm8k_train": BundledSet("gsm8k/train.jsonl", 7473, "train", "gsm8k", "question", answer_from="gsm8k"),
    "math_train": BundledSet("deepscaler/train/math.json", 7470, "train", "math", skip_missing=True),
    "aime_train": BundledSet("deepscaler/train/aime.json", 975, "train", "aime", licence=_MAA),
}


def cache_dir() -> Path:
    """The datasets cache: ``$RLVR_TEMP_CACHE/datasets`` (default ``~/.cache/rlvr_temp/datasets``)."""
    root = os.environ.get("RLVR_TEMP_CACHE") or os.path.join("~", ".cache", "rlvr_temp")
    return Path(root).expanduser() / "datasets"


def offline_datasets() -> Any:
    """Import ``datasets`` in offline mode (unless the user set HF_DATASETS_OFFLINE themselves)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    return datasets


# ----------------------------------------------------------------------------------------------- answers
def _as_text(gt: Any) -> str:
    """A raw answer value as text, as the file holds it: lists joined, 27.0 -> '27'."""
    if isinstance(gt, (list, tuple)):
        return ", ".join(_as_text(x) for x in gt if x is not None)
    if isinstance(gt, float) and gt.is_integer():
        return str(int(gt))
    return str(gt).strip()


def gsm8k_answer(text: str) -> str:
    """GSM8K final answer: the text after the last ``####``, commas removed (``#### 1,000`` -> ``1000``)."""
    return text.rsplit("####", 1)[-1].strip().replace(",", "")


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)):
        items = value.values() if isinstance(value, dict) else value
        return all(_empty(v) for v in items)
    return False


def _get(row: dict, key: str) -> Any:
    """``row[key]``, following dots into nested dicts (``reward_model.ground_truth``); None when absent."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _question_text(value: Any) -> str | None:
    """A question string, or the content of the last user message of a chat list (verl's ``prompt``)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        value = users[-1] if users else None
    if isinstance(value, str) and value.strip():
        return value
    return None


# ----------------------------------------------------------------------------------------------- reading
def _read_json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, record) of a .jsonl file (row number = line number) or a .json list / {"data": [...]}."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if "Extra data" not in str(e):  # else: JSON Lines named .json
                raise DataError(f"{path}: invalid JSON: {e}") from e
        else:
            if isinstance(obj, dict) and isinstance(obj.get("data"), list):
                obj = obj["data"]
            if not isinstance(obj, list):
                raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
            yield from enumerate(obj, start=1)
            return
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {n}: invalid JSON: {e}") from e


def _read_parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    ds = offline_datasets().load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(cache_dir()))
    yield from enumerate(ds, start=1)


# ----------------------------------------------------------------------------------------------- hub datasets
@dataclass(frozen=True)
class HubDataset:
    """A hub dataset split: ``datasets.load_dataset(repo, config, split=split)``."""

    repo: str
    config: str | None
    split: str

    def __str__(self) -> str:
        return f"{self.repo}{':' + self.config if self.config else ''} (split {self.split})"


def hub_dataset(name: str, split: str | None) -> HubDataset | None:
    """``name`` as a hub dataset (``org/name[:config]``, split ``train`` unless given), or None when it is not one:
    another form, a data-file suffix, or an existing local path."""
    if not HUB_DATASET.match(name) or name.endswith((".jsonl", ".json", ".parquet")) or Path(name).exists():
        return None
    repo, _, config = name.partition(":")
    return HubDataset(repo, config or None, split or "train")


def hub_rows(src: HubDataset) -> Iterator[tuple[int, Any]]:
    """(row number from 1, row) of a hub dataset split; :class:`DataError` in one line when it cannot load."""
    ds = offline_datasets()
    try:
        data = ds.load_dataset(src.repo, src.config, split=src.split)
    except ConnectionError:  # offline (or unreachable), and not in the cache
        raise DataError(
            f"data {src.repo!r}: hub dataset not in the datasets cache {ds.config.HF_DATASETS_CACHE} and the hub is "
            "not reachable (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE): load it once with HF_DATASETS_OFFLINE=0, or point "
            "HF_DATASETS_CACHE at a cache that holds it"
        ) from None
    except (ValueError, FileNotFoundError) as exc:  # unknown config or split, no such dataset
        raise DataError(f"data {src}: {'; '.join(str(exc).splitlines())}") from None
    yield from enumerate(data, start=1)


def _read_rows(path: Path | HubDataset) -> Iterator[tuple[int, Any]]:
    if isinstance(path, HubDataset):
        return hub_rows(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix in (".jsonl", ".json"):
        return _read_json_rows(path)
    if path.suffix == ".parquet":
        return _read_parquet_rows(path)
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected .jsonl, .json or .parquet)")


def _resolve(source: str | os.PathLike, split: str | None) -> tuple[Path | HubDataset, str, BundledSet | None]:
    """(file or hub dataset, display name, bundled entry or None) for a bundled name, a file path or a hub name."""
    name = os.fspath(source)
    if name in BUNDLED:
        if split is None:
            return BUNDLED[name].file, name, BUNDLED[name]
        family = BUNDLED[name].family
        for key, entry in BUNDLED.items():
            if entry.family == family and entry.split == split:
                return entry.file, key, entry
        splits = sorted(e.split for e in BUNDLED.values() if e.family == family)
        raise DataError(f"bundled set {name!r} has no split {split!r} (has: {', '.join(splits)})")
    if (hub := hub_dataset(name, split)) is not None:
        return hub, hub.repo.rsplit("/", 1)[-1], None
    if name.endswith((".jsonl", ".json", ".parquet")) or os.sep in name or "/" in name:
        if split is not None:
            raise DataError(f"{name}: split={split!r} applies to bundled sets and hub datasets, not to files")
        return Path(name).expanduser(), Path(name).stem, None
    raise DataError(
        f"unknown data source {name!r}: not a .jsonl/.json/.parquet path, a hub dataset nor a bundled set "
        f"(known: {', '.join(sorted(BUNDLED))})"
    )


# ----------------------------------------------------------------------------------------------- loading
def load_prompts(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    question_key: str | None = None,
    answer_key: str | None = None,
    limit: int | None = None,
    on_missing: OnMissing | None = None,
) -> datasets.Dataset:
    """Load prompts: str columns ``id``, ``question``, ``ground_truth``, ``data_source``, ``ground_truth_raw``.

    ``source``: a bundled name (``BUNDLED``; ``split`` picks a sibling, e.g. ``("gsm8k", split="train")``)
    or a ``.jsonl`` / ``.json`` / ``.parquet`` path. Fields are looked up among ``QUESTION_KEYS`` /
    ``ANSWER_KEYS`` unless given (dotted keys reach into dicts, e.g. ``reward_model.ground_truth``); a chat
    list question takes its last user message; an answer from ``solution`` is its last ``\\boxed{}``, one
    containing ``####`` its GSM8K tail. ``limit`` keeps the first rows. A row without question or answer
    raises ``DataError`` naming file and row, unless ``on_missing="skip"`` (the default for bundled sets
    marked ``skip_missing``).
    """
    path, name, entry = _resolve(source, split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if on_missing is None:
        on_missing = "skip" if entry is not None and entry.skip_missing else "error"
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    q_keys = (question_key,) if question_key else (entry.question_key,) if entry else QUESTION_KEYS
    a_keys = (answer_key,) if answer_key else (entry.answer_key,) if entry else ANSWER_KEYS
    how = entry.answer_from if entry and not answer_key else "auto"
    out: dict[str, list[str]] = {c: [] for c in COLUMNS}
    skipped = 0
    for n, row in _read_rows(path):
        if limit is not None and len(out["id"]) >= limit:
            break
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {n}: expected an object, got {type(row).__name__}")
        question = next((q for k in q_keys if (q := _question_text(_get(row, k))) is not None), None)
        answer, raw, bad = None, None, ""
        for k in a_keys:
            value = _get(row, k)
            if _empty(value):
                continue
            if how == "last_boxed" or (how == "auto" and k.rsplit(".", 1)[-1] == "solution"):
                value = last_boxed(_as_text(value))
            elif how == "gsm8k" or (how == "auto" and isinstance(value, str) and "####" in value):
                value = gsm8k_answer(value)
            try:
                gt = None if _empty(value) else normalize_ground_truth(value)
            except ValueError as e:  # e.g. "$ $", a bool: not usable as a ground truth
                bad = bad or f"; {k!r} unusable: {e}"
                continue
            if gt is not None and gt.strip():  # normalised (notation -> LaTeX); the raw form is kept too
                answer, raw = gt, _as_text(value)
                break
        if question is None or answer is None:
            what, keys = ("question", q_keys) if question is None else ("answer", a_keys)
            if on_missing == "skip":
                skipped += 1
                continue
            looked = ", ".join(repr(k) for k in keys) + (bad if what == "answer" else "")
            raise DataError(f"{path}: row {n}: missing {what} (looked for {looked})")
        rid = next((v for k in ID_KEYS if not _empty(v := _get(row, k))), n - 1)
        src = row.get("data_source") if entry is None else None
        out["id"].append(str(rid))
        out["question"].append(question)
        out["ground_truth"].append(answer)
        out["data_source"].append(src if isinstance(src, str) and src else name)
        out["ground_truth_raw"].append(raw)
    if skipped:
        log.warning("%s: skipped %d row(s) without a question or answer", path, skipped)
    if entry is not None and limit is None and not question_key and not answer_key and len(out["id"]) != entry.rows:
        raise DataError(
            f"{path}: bundled set {name!r} has {len(out['id'])} rows, expected {entry.rows} (package data damaged?)"
        )
    ds = offline_datasets()
    return ds.Dataset.from_dict(out, features=ds.Features({c: ds.Value("string") for c in COLUMNS}))
