"""Models and datasets named as on the Hugging Face hub (``Qwen/Qwen2.5-1.5B-Instruct``, ``openai/gsm8k:main``).

A hub model resolves to its snapshot directory in the hub's cache (``huggingface_hub.snapshot_download``: downloaded
when online, the cached snapshot with ``HF_HUB_OFFLINE=1``); a hub dataset loads through ``datasets.load_dataset``
and its cache (``HF_DATASETS_CACHE``; ``rlvr_temp.data.sources`` keeps ``datasets`` offline unless the user says
otherwise). Not cached while offline -> one line naming the id and the cache directory. Local directories and files, the
embedded tiny model and the bundled sets are handled by the callers (``rlvr_temp.driver.launch``,
``rlvr_temp.data.sources``) before a name gets here; revisions other than the default branch are not supported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: a hub repository id, ``org/name``
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: a hub dataset: ``org/name`` with an optional ``:config``
HUB_DATASET = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")


def hub_model_dir(repo_id: str) -> str:
    """The snapshot directory of hub model ``repo_id`` (downloaded when online; from the cache when offline).

    Raises FileNotFoundError in one line naming the id and the cache directory when it is neither cached nor
    reachable (or does not exist / is gated)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"model.path {repo_id!r}: not in the Hugging Face cache {constants.HF_HUB_CACHE}"
    try:
        return snapshot_download(repo_id)
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"{where} and HF_HUB_OFFLINE is set (download it first: `hf download {repo_id}`, or unset "
                "HF_HUB_OFFLINE)"
            ) from None
        raise FileNotFoundError(f"{where} and the hub is not reachable") from None
    except HfHubHTTPError as exc:  # no such repository, gated, private without a token
        raise FileNotFoundError(f"model.path {repo_id!r}: {str(exc).splitlines()[0]}") from None


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
    """(row number from 1, row) of a hub dataset split; ``rlvr_temp.data.sources.DataError`` in one line when it cannot
    load."""
    from rlvr_temp.data.sources import DataError, offline_datasets

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
