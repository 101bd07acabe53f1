"""What several test areas build: stand-ins for a Hugging Face hub cache (models and datasets), written as the hub's
own clients write them, so the offline loading paths run for real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

SHA = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_model(cache: Path, repo_id: str, model_dir: str | Path) -> Path:
    """``model_dir``'s files as hub repo ``repo_id`` in a hub cache (``models--org--name/snapshots/<sha>`` and
    ``refs/main``, as ``huggingface_hub`` writes them); returns the snapshot directory."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / SHA
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return snapshot


def fake_hub_dataset(cache: Path, repo_id: str, rows: list[dict], tmp: Path) -> None:
    """``rows`` as hub dataset ``repo_id`` (config ``default``, split ``train``) in a ``datasets`` cache: what
    ``load_dataset(repo_id)`` leaves there online (``org___name/default/0.0.0/<sha>``), written by the same builder."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.json.json import Json

    src = tmp / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    name = repo_id.split("/")[1]
    builder = Json(cache_dir=str(cache), dataset_name=name, repo_id=repo_id, hash=SHA, config_name="default")
    # the hub's builder gets its files as hf:// URLs of the repo; a local file stands in for them
    builder.config.data_files = DataFilesDict.from_patterns({"train": [str(src)]})
    builder.download_and_prepare()


def policy_settings(mode: str, lora_r: int = 8) -> Any:
    """The learner-config fields ``rlvr_temp.learner.policy.load_policy`` reads, for a small test policy."""
    from types import SimpleNamespace

    return SimpleNamespace(
        mode=mode,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        lora_dropout=0.0,
        lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        gradient_checkpointing=False,
    )


def worst_token(m: dict[str, float]) -> str:
    """Where a step's largest rollout/learner log-prob gap is (the learner's ``logprob/mismatch_worst_*`` metrics),
    for an assertion's message."""
    w = {k.rsplit("_", 1)[-1]: v for k, v in m.items() if k.startswith("logprob/mismatch_worst_")}
    return (
        f"mean {m.get('logprob/mismatch_mean')}, max {m.get('logprob/mismatch_max')} at response "
        f"{w.get('response', -1):.0f} token {w.get('position', -1):.0f} (id {w.get('token', -1):.0f}, "
        f"T={w.get('temperature', 0.0)}): rollout {w.get('rollout')} vs learner {w.get('learner')}"
    )
