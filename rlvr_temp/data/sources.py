"""Prompt data: bundled benchmark / training sets, file loaders, the prompt template and a resumable stream.

``load_prompts`` returns a Hugging Face ``datasets.Dataset`` with string columns ``id``, ``question``,
``ground_truth`` (normalised), ``data_source`` and ``ground_truth_raw`` (as in the file), from a bundled set
(``BUNDLED``), a ``.jsonl`` / ``.json`` / ``.parquet`` file (field names auto-detected or given), or a parquet
file in verl's schema (``prompt`` chat list, ``reward_model.ground_truth``, ``data_source``), or a hub dataset
(``org/name[:config]``, rlvr_temp.data.hub). JSON is parsed here (exact row numbers in errors; a column's type may
change from row to row); parquet and hub datasets go through ``datasets``, offline unless the user set
``HF_DATASETS_OFFLINE`` (parquet's cache: ``$RLVR_TEMP_CACHE``, default ``~/.cache/rlvr_temp``).
"""

from __future__ import annotations

import json
import logging
import os
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rlvr_temp.config.schema import DEFAULT_SUFFIX
from rlvr_temp.data.hub import HubDataset, hub_dataset, hub_rows

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
DEFAULT_TEMPLATE = "{question} {suffix}"
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
def _last_boxed_fallback(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, braces matched; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


def _normalize_fallback(gt: Any) -> str:
    """Ground truth to str when rlvr_temp.reward.answers is unavailable: lists joined, 27.0 -> '27'."""
    if isinstance(gt, (list, tuple)):
        return ", ".join(_normalize_fallback(x) for x in gt if x is not None)
    if isinstance(gt, float) and gt.is_integer():
        return str(int(gt))
    return str(gt).strip()


def _verify_helpers() -> tuple[Callable[[Any], str], Callable[[str], str | None]]:
    try:
        from rlvr_temp.reward.answers import last_boxed, normalize_ground_truth
    except ImportError:
        return _normalize_fallback, _last_boxed_fallback
    return normalize_ground_truth, last_boxed


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
    normalize, last_boxed = _verify_helpers()
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
                value = last_boxed(_normalize_fallback(value))
            elif how == "gsm8k" or (how == "auto" and isinstance(value, str) and "####" in value):
                value = gsm8k_answer(value)
            try:
                gt = None if _empty(value) else normalize(value)
            except ValueError as e:  # e.g. "$ $", a bool: not usable as a ground truth
                bad = bad or f"; {k!r} unusable: {e}"
                continue
            if gt is not None and gt.strip():  # normalised (notation -> LaTeX); the raw form is kept too
                answer, raw = gt, _normalize_fallback(value)
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


# ----------------------------------------------------------------------------------------------- prompt
def check_template(template: str) -> None:
    """Raise ValueError unless ``template`` is a format string using only ``{question}`` and ``{suffix}``."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"bad prompt template {template!r}: {e} (literal braces: {{{{ and }}}})") from e
    unknown = sorted({f for f in fields if f not in ("question", "suffix")})
    if unknown:
        raise ValueError(
            f"bad prompt template {template!r}: unknown field(s) {unknown}; only {{question}} "
            "and {suffix} are allowed (write literal braces as {{ and }})"
        )
    if "question" not in fields:
        raise ValueError(f"bad prompt template {template!r}: it must contain {{question}}")


def format_prompt(
    question: str,
    tokenizer: Any = None,
    *,
    template: str = DEFAULT_TEMPLATE,
    suffix: str = DEFAULT_SUFFIX,
    use_chat_template: bool | None = None,
) -> str:
    """The prompt text for one question.

    ``template.format(question=..., suffix=...)`` is the user message. With a tokenizer that has a chat
    template (and ``use_chat_template`` not False) it is wrapped by
    ``apply_chat_template(add_generation_prompt=True)``; ``use_chat_template=True`` without a chat template is
    an error; otherwise the plain text is returned.
    """
    check_template(template)
    text = template.format(question=question, suffix=suffix)
    has_chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template and not has_chat:
        raise ValueError("use_chat_template=True but the tokenizer has no chat template")
    if use_chat_template is False or not has_chat:
        return text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


# ----------------------------------------------------------------------------------------------- stream
class PromptStream:
    """Endless, deterministic batches of rows over epochs, resumable through ``state_dict()``.

    Epoch ``e`` visits the rows in ``numpy.random.default_rng([seed, e]).permutation(n)`` order (or file order
    when ``shuffle`` is False); a batch that crosses the end of an epoch continues into the next one, so every
    row is seen once per epoch and batches are always full. ``batch_size`` may exceed the dataset size.
    """

    def __init__(
        self, dataset: datasets.Dataset | Sequence[Any], batch_size: int, seed: int = 0, shuffle: bool = True
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("PromptStream needs a non-empty dataset")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, int(seed), shuffle
        self.epoch, self.cursor = 0, 0
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Number of rows in one epoch."""
        return len(self.dataset)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            n = len(self.dataset)
            self._order = (
                np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
            )
        return self._order

    def next_indices(self) -> list[int]:
        """Dataset indices of the next batch (advances the stream)."""
        idx: list[int] = []
        while len(idx) < self.batch_size:
            order = self._epoch_order()
            take = order[self.cursor : self.cursor + self.batch_size - len(idx)]
            idx.extend(int(i) for i in take)
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        return idx

    def __iter__(self) -> PromptStream:
        return self

    def __next__(self) -> list[Any]:
        """The next batch: a list of ``batch_size`` rows (dicts for a ``datasets.Dataset``)."""
        return [self.dataset[i] for i in self.next_indices()]

    def state_dict(self) -> dict[str, Any]:
        """Position of the stream: epoch, cursor within the epoch, seed, shuffle flag and dataset size."""
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_rows": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``; the dataset must have the same number of rows."""
        if int(state["num_rows"]) != len(self.dataset):
            raise ValueError(
                f"PromptStream state is for {state['num_rows']} rows, this dataset has {len(self.dataset)}"
            )
        if not 0 <= int(state["cursor"]) < len(self.dataset):
            raise ValueError(f"PromptStream state has cursor {state['cursor']} out of range")
        self.epoch, self.cursor, self.seed = int(state["epoch"]), int(state["cursor"]), int(state["seed"])
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self._order = None
